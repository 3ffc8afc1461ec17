/*
 * imap_test.c - unit tests of the IMAP engine (proto/imap.c) against an
 * in-process scripted peer.
 *
 * Layer: tests of proto/. The test opens a listening socket on 127.0.0.1
 * and registers it, then the accepted server-side socket, in the same
 * struct loop the engine runs in, so one thread drives both ends. The
 * scripted server records every byte the client sends (assertions are on
 * the exact bytes) and answers each line from a script: a list of steps,
 * each an expected line and the bytes to send back, with "$T" replaced by
 * the tag of the line received. Every wait has a deadline; a test never
 * hangs.
 *
 * References: RFC 3501 and RFC 9051 (IMAP), RFC 7888 (LITERAL+), RFC 4959
 * (SASL-IR), RFC 4616 (PLAIN), RFC 7628 (OAUTHBEARER), RFC 2177 (IDLE),
 * RFC 7162 (CONDSTORE), RFC 2342 (NAMESPACE), RFC 2971 (ID).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "tern.h"

#include "err.h"
#include "imap.h"
#include "imap_args.h"
#include "imap_parse.h"
#include "loop.h"
#include "sasl.h"
#include "tbuf.h"

#define WAIT_MS 5000 /* the deadline of every wait */
#define MAX_RECS 64

/* ---- the scripted server ---- */

enum {
    STEP_PREFIX = 1 << 0, /* EXPECT is a prefix of the line, not the whole line */
    STEP_CLOSE = 1 << 1,  /* close the connection once REPLY is written */
    STEP_RAW = 1 << 2,    /* send REPLY as it is, without "$T" substitution */
};

struct step {
    const char *expect; /* the line the client must send (without CRLF) */
    const char *reply;  /* NULL: answer nothing (the test body goes on) */
    size_t reply_len;   /* 0: strlen(reply) */
    unsigned flags;
};

#define S(e, r)                                                                                    \
    {                                                                                              \
        .expect = (e), .reply = (r)                                                                \
    }
#define SF(e, r, fl)                                                                               \
    {                                                                                              \
        .expect = (e), .reply = (r), .flags = (fl)                                                 \
    }

/* What the client does while a test runs, in order. */
enum claim {
    NO_HANDLER,   /* the command gets no untagged handler */
    CLAIM_NONE,   /* a handler that logs and never claims */
    CLAIM_NUMBER, /* claims FETCH responses with the given message number */
    CLAIM_FETCH,  /* claims every FETCH */
    CLAIM_ALL,    /* claims everything */
};

struct fx;

/* One command (or imap_open) seen from the caller's side. */
struct rec {
    struct fx *f;
    const char *name;
    enum claim claim;
    uint32_t number;
    int calls;
    enum tern_status st;
    bool had_tagged;
    char *text; /* the tagged reply's text, owned */
    /* What the untagged handler saw in FETCH items. */
    int nstreamed;
    uint64_t streamed_size;
    void *stream;
    char *inline_str; /* owned */
    size_t inline_len;
};

struct fx {
    struct loop *loop;

    /* server */
    int lfd, sfd;
    struct loop_watch *lw, *sw;
    int port;
    const char *greeting; /* NULL: send none */
    const struct step *steps;
    size_t nsteps, istep;
    struct tbuf in;  /* every byte the client sent */
    size_t pos;      /* start of the first unprocessed line in IN */
    size_t nlines;   /* lines received */
    struct tbuf out; /* bytes not yet written to the client */
    bool close_after;
    bool accepted;
    bool srv_closed;  /* the server closed its end */
    bool peer_closed; /* the client closed its end (EOF or reset seen) */
    char *mismatch;   /* owned: why the script failed */

    /* client */
    struct imap_opts opts;
    struct tern_err err;
    struct imap_conn *c;
    bool open_done;
    int open_calls;
    enum tern_status open_st;
    struct rec recs[MAX_RECS];
    size_t nrecs;
    struct tbuf log;        /* handler offers and completions, in order */
    struct tbuf trace;      /* the engine's protocol trace */
    struct tbuf expect_buf; /* test-built expected lines */

    /* literal sink */
    int sink_opens, sink_closes;
    bool sink_ok;
    uint64_t sink_size;
    struct tbuf sink_data;
};

/* Appends P (N bytes) to OUT with CR, LF and non-printables escaped. */
static void
esc(struct tbuf *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r')
            tbuf_adds(out, "\\r");
        else if (c == '\n')
            tbuf_adds(out, "\\n\n");
        else if (c < 0x20 || c >= 0x7f)
            tbuf_addf(out, "\\x%02x", c);
        else
            tbuf_addc(out, (char)c);
    }
}

static void
srv_mismatch(struct fx *f, const char *what, const char *line, size_t len)
{
    if (f->mismatch)
        return;
    struct tbuf b;
    tbuf_init(&b, 0);
    tbuf_addf(&b, "step %zu: %s '", f->istep, what);
    esc(&b, line, len);
    tbuf_adds(&b, "'");
    if (f->istep < f->nsteps) {
        tbuf_adds(&b, ", expected '");
        tbuf_adds(&b, f->steps[f->istep].expect);
        tbuf_adds(&b, "'");
    }
    f->mismatch = tbuf_take(&b);
    tbuf_free(&b);
}

/* Closes the server's end, first reading what is queued so the close is a FIN. */
static void
srv_close(struct fx *f)
{
    if (f->sfd < 0)
        return;
    char chunk[4096];
    ssize_t n;
    while ((n = read(f->sfd, chunk, sizeof(chunk))) > 0)
        tbuf_add(&f->in, chunk, (size_t)n);
    loop_unwatch(f->sw);
    f->sw = NULL;
    close(f->sfd);
    f->sfd = -1;
    f->srv_closed = true;
}

static void
srv_flush(struct fx *f)
{
    while (f->sfd >= 0 && tbuf_len(&f->out)) {
        ssize_t n = send(f->sfd, tbuf_ptr(&f->out), tbuf_len(&f->out), MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n <= 0) {
            f->peer_closed = true;
            srv_close(f);
            return;
        }
        tbuf_consume(&f->out, (size_t)n);
    }
    if (f->sfd < 0)
        return;
    if (!tbuf_len(&f->out) && f->close_after) {
        srv_close(f);
        return;
    }
    loop_watch_events(f->sw, POLLIN | (tbuf_len(&f->out) ? POLLOUT : 0));
}

/* Queues N bytes for the client (the test body may call it at any time). */
static void
srv_send(struct fx *f, const char *p, size_t n)
{
    assert_int_equal(tbuf_add(&f->out, p, n), TERN_OK);
    srv_flush(f);
}

static void
srv_sends(struct fx *f, const char *s)
{
    srv_send(f, s, strlen(s));
}

/* Matches one line against the script and answers it. */
static void
srv_on_line(struct fx *f, const char *line, size_t len)
{
    f->nlines++;
    if (f->mismatch)
        return;
    if (f->istep >= f->nsteps) {
        srv_mismatch(f, "the script is over but the client sent", line, len);
        return;
    }
    const struct step *s = &f->steps[f->istep];
    size_t elen = strlen(s->expect);
    bool ok = (s->flags & STEP_PREFIX) ? len >= elen && memcmp(line, s->expect, elen) == 0
                                       : len == elen && memcmp(line, s->expect, len) == 0;
    if (!ok) {
        srv_mismatch(f, "the client sent", line, len);
        return;
    }
    f->istep++;
    if (s->reply) {
        size_t rlen = s->reply_len ? s->reply_len : strlen(s->reply);
        if (s->flags & STEP_RAW) {
            assert_int_equal(tbuf_add(&f->out, s->reply, rlen), TERN_OK);
        } else {
            const char *sp = memchr(line, ' ', len);
            size_t taglen = sp ? (size_t)(sp - line) : len;
            for (size_t i = 0; i < rlen; i++) {
                if (s->reply[i] == '$' && i + 1 < rlen && s->reply[i + 1] == 'T') {
                    tbuf_add(&f->out, line, taglen);
                    i++;
                } else {
                    tbuf_addc(&f->out, s->reply[i]);
                }
            }
        }
    }
    if (s->flags & STEP_CLOSE)
        f->close_after = true;
    srv_flush(f);
}

static void
srv_read(struct fx *f)
{
    for (;;) {
        char chunk[65536];
        ssize_t n = read(f->sfd, chunk, sizeof(chunk));
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n <= 0) {
            f->peer_closed = true;
            srv_close(f);
            return;
        }
        assert_int_equal(tbuf_add(&f->in, chunk, (size_t)n), TERN_OK);
        for (;;) {
            const char *base = tbuf_ptr(&f->in);
            const char *nl = memchr(base + f->pos, '\n', tbuf_len(&f->in) - f->pos);
            if (!nl)
                break;
            size_t len = (size_t)(nl - (base + f->pos));
            size_t start = f->pos;
            f->pos += len + 1;
            if (len && base[start + len - 1] == '\r')
                len--;
            srv_on_line(f, base + start, len);
            if (f->sfd < 0)
                return;
        }
    }
}

static void
srv_on_io(void *aux, short revents)
{
    struct fx *f = aux;
    if (revents & POLLOUT)
        srv_flush(f);
    if (f->sfd >= 0 && (revents & (POLLIN | POLLHUP | POLLERR)))
        srv_read(f);
}

static void
srv_on_listen(void *aux, short revents)
{
    struct fx *f = aux;
    int fd = accept4(f->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    assert_false(f->accepted); /* the engine connects once */
    f->accepted = true;
    f->sfd = fd;
    assert_int_equal(loop_watch(f->loop, fd, POLLIN, srv_on_io, f, &f->sw), TERN_OK);
    if (f->greeting)
        srv_sends(f, f->greeting);
}

/* ---- client callbacks ---- */

static void
on_open(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct fx *f = aux;
    f->open_calls++;
    f->open_st = st;
    f->open_done = true;
    assert_null(r);
    tbuf_addf(&f->log, "open %s;", tern_status_name(st));
}

static void
on_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct rec *rc = aux;
    rc->calls++;
    rc->st = st;
    rc->had_tagged = r != NULL;
    free(rc->text);
    rc->text = r ? strdup(r->text) : NULL;
    if (r)
        assert_int_equal(r->kind, IMAP_RESP_TAGGED);
    tbuf_addf(&rc->f->log, "done %s %s;", rc->name, tern_status_name(st));
}

static void
describe(struct tbuf *b, const struct imap_response *r)
{
    if (r->has_number)
        tbuf_addf(b, "%u ", r->number);
    tbuf_adds(b, r->name ? r->name : "?");
}

/* Records what a FETCH carries after BODY[]: a streamed or an inline literal. */
static void
note_fetch_body(struct rec *rc, const struct imap_response *r)
{
    if (!r->name || strcmp(r->name, "FETCH") != 0 || !r->items || r->items->type != IMAP_ITEM_LIST)
        return;
    for (const struct imap_item *it = r->items->child; it && it->next; it = it->next) {
        if (!imap_item_is(it, "BODY[]"))
            continue;
        const struct imap_item *v = it->next;
        if (v->type == IMAP_ITEM_STREAMED) {
            rc->nstreamed++;
            rc->streamed_size = v->size;
            rc->stream = v->stream;
        } else if (v->type == IMAP_ITEM_STRING) {
            free(rc->inline_str);
            rc->inline_str = malloc(v->len + 1);
            assert_non_null(rc->inline_str);
            memcpy(rc->inline_str, v->str, v->len + 1);
            rc->inline_len = v->len;
        }
    }
}

static bool
on_untagged(void *aux, const struct imap_response *r)
{
    struct rec *rc = aux;
    bool fetch = r->name && strcmp(r->name, "FETCH") == 0;
    bool mine = false;
    switch (rc->claim) {
    case NO_HANDLER:
    case CLAIM_NONE: break;
    case CLAIM_NUMBER: mine = fetch && r->has_number && r->number == rc->number; break;
    case CLAIM_FETCH: mine = fetch; break;
    case CLAIM_ALL: mine = true; break;
    }
    tbuf_addf(&rc->f->log, "%s ", rc->name);
    describe(&rc->f->log, r);
    tbuf_adds(&rc->f->log, mine ? "+;" : "-;");
    if (mine)
        note_fetch_body(rc, r);
    return mine;
}

static bool
on_default(void *aux, const struct imap_response *r)
{
    struct fx *f = aux;
    tbuf_adds(&f->log, "default ");
    describe(&f->log, r);
    tbuf_adds(&f->log, ";");
    return true;
}

static void
on_trace(void *aux, bool sent, const char *line, size_t len)
{
    struct fx *f = aux;
    tbuf_adds(&f->trace, sent ? "> " : "< ");
    tbuf_add(&f->trace, line, len);
    tbuf_addc(&f->trace, '\n');
}

static enum tern_status
sink_open(void *aux, uint64_t size, void **stream)
{
    struct fx *f = aux;
    f->sink_opens++;
    f->sink_size = size;
    *stream = f;
    return TERN_OK;
}

static enum tern_status
sink_write(void *aux, void *stream, const char *p, size_t n)
{
    struct fx *f = aux;
    assert_ptr_equal(stream, f);
    return tbuf_add(&f->sink_data, p, n);
}

static void
sink_close(void *aux, void *stream, bool ok)
{
    struct fx *f = aux;
    assert_ptr_equal(stream, f);
    f->sink_closes++;
    f->sink_ok = ok;
}

/* ---- running the loop ---- */

typedef bool (*pred_fn)(struct fx *f, const void *arg);

static bool
pred_flag(struct fx *f, const void *arg)
{
    (void)f;
    return *(const bool *)arg;
}

static bool
pred_called(struct fx *f, const void *arg)
{
    (void)f;
    return ((const struct rec *)arg)->calls > 0;
}

static bool
pred_steps(struct fx *f, const void *arg)
{
    return f->istep >= *(const size_t *)arg;
}

static bool
pred_log(struct fx *f, const void *arg)
{
    return tbuf_len(&f->log) && strstr(tbuf_ptr(&f->log), (const char *)arg) != NULL;
}

static bool
pred_dead(struct fx *f, const void *arg)
{
    (void)arg;
    return imap_is_dead(f->c);
}

static bool
pred_peer_closed(struct fx *f, const void *arg)
{
    (void)arg;
    return f->peer_closed;
}

/* Runs the loop until PRED holds, the script fails or MS pass. */
static bool
run_until(struct fx *f, pred_fn pred, const void *arg, int ms)
{
    int64_t deadline = loop_now_ms() + ms;
    while (!pred(f, arg)) {
        if (f->mismatch)
            return false;
        int64_t left = deadline - loop_now_ms();
        if (left <= 0)
            return false;
        if (loop_run_once(f->loop, left > 20 ? 20 : (int)left) != TERN_OK)
            return false;
    }
    return true;
}

/* Runs the loop for MS milliseconds, whatever happens. */
static void
run_for(struct fx *f, int ms)
{
    int64_t deadline = loop_now_ms() + ms;
    for (;;) {
        int64_t left = deadline - loop_now_ms();
        if (left <= 0 || f->mismatch)
            return;
        if (loop_run_once(f->loop, left > 20 ? 20 : (int)left) != TERN_OK)
            return;
    }
}

static void
wait_for(struct fx *f, pred_fn pred, const void *arg, const char *what)
{
    if (run_until(f, pred, arg, WAIT_MS))
        return;
    fail_msg("waiting for %s: %s (error slot: '%s'; log: '%s'; step %zu of %zu)", what,
             f->mismatch ? f->mismatch : "deadline passed", tern_err_msg(&f->err),
             tbuf_len(&f->log) ? tbuf_ptr(&f->log) : "", f->istep, f->nsteps);
}

static void
wait_called(struct fx *f, struct rec *rc)
{
    wait_for(f, pred_called, rc, rc->name);
}

static void
wait_steps(struct fx *f, size_t n)
{
    wait_for(f, pred_steps, &n, "script step");
}

/* ---- assertions ---- */

static void
assert_script_done(struct fx *f)
{
    if (f->mismatch)
        fail_msg("script: %s", f->mismatch);
    if (f->istep != f->nsteps)
        fail_msg("script stopped at step %zu of %zu", f->istep, f->nsteps);
}

/* The client sent exactly EXP (all bytes since the connection opened). */
static void
assert_sent(struct fx *f, const char *exp)
{
    size_t n = tbuf_len(&f->in);
    if (n == strlen(exp) && memcmp(tbuf_ptr(&f->in), exp, n) == 0)
        return;
    struct tbuf a, b;
    tbuf_init(&a, 0);
    tbuf_init(&b, 0);
    esc(&a, tbuf_ptr(&f->in) ? tbuf_ptr(&f->in) : "", n);
    esc(&b, exp, strlen(exp));
    fail_msg("the client sent:\n%s\nexpected:\n%s", tbuf_ptr(&a) ? tbuf_ptr(&a) : "",
             tbuf_ptr(&b) ? tbuf_ptr(&b) : "");
}

/* The client's bytes from offset FROM on are exactly EXP. */
static void
assert_sent_from(struct fx *f, size_t from, const char *exp)
{
    size_t n = tbuf_len(&f->in);
    assert_true(n >= from);
    if (n - from == strlen(exp) && memcmp(tbuf_ptr(&f->in) + from, exp, n - from) == 0)
        return;
    struct tbuf a, b;
    tbuf_init(&a, 0);
    tbuf_init(&b, 0);
    esc(&a, tbuf_ptr(&f->in) + from, n - from);
    esc(&b, exp, strlen(exp));
    fail_msg("the client sent:\n%s\nexpected:\n%s", tbuf_ptr(&a) ? tbuf_ptr(&a) : "",
             tbuf_ptr(&b) ? tbuf_ptr(&b) : "");
}

static void
assert_log(struct fx *f, const char *exp)
{
    const char *got = tbuf_len(&f->log) ? tbuf_ptr(&f->log) : "";
    if (strcmp(got, exp) != 0)
        fail_msg("log:\n  %s\nexpected:\n  %s", got, exp);
}

static void
assert_err_has(struct fx *f, const char *needle)
{
    if (!strstr(tern_err_msg(&f->err), needle))
        fail_msg("error slot '%s' lacks '%s'", tern_err_msg(&f->err), needle);
}

/* ---- fixture ---- */

static int
fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->sfd = -1;
    tbuf_init(&f->in, 0);
    tbuf_init(&f->out, 0);
    tbuf_init(&f->log, 0);
    tbuf_init(&f->trace, 0);
    tbuf_init(&f->expect_buf, 0);
    tbuf_init(&f->sink_data, 0);
    f->loop = loop_new();
    if (!f->loop)
        return -1;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (f->lfd < 0)
        return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(f->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(f->lfd, 4) < 0 ||
        getsockname(f->lfd, (struct sockaddr *)&a, &alen) < 0)
        return -1;
    f->port = ntohs(a.sin_port);
    if (loop_watch(f->loop, f->lfd, POLLIN, srv_on_listen, f, &f->lw))
        return -1;

    f->opts.host = "127.0.0.1";
    f->opts.port = f->port;
    f->opts.security = IMAP_SEC_NONE;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    f->opts.mech = SASL_AUTO;
    f->opts.timeout_ms = 2000;
    imap_limits_default(&f->opts.limits);
    *state = f;
    return 0;
}

static int
fx_teardown(void **state)
{
    struct fx *f = *state;
    imap_free(f->c);
    srv_close(f);
    if (f->lfd >= 0)
        close(f->lfd);
    loop_free(f->loop);
    for (size_t i = 0; i < f->nrecs; i++) {
        free(f->recs[i].text);
        free(f->recs[i].inline_str);
    }
    free(f->mismatch);
    tbuf_free(&f->in);
    tbuf_free(&f->out);
    tbuf_free(&f->log);
    tbuf_free(&f->trace);
    tbuf_free(&f->expect_buf);
    tbuf_free(&f->sink_data);
    tern_err_clear(&f->err);
    free(f);
    return 0;
}

static struct rec *
rec_new(struct fx *f, const char *name, enum claim claim, uint32_t number)
{
    assert_true(f->nrecs < MAX_RECS);
    struct rec *rc = &f->recs[f->nrecs++];
    rc->f = f;
    rc->name = name;
    rc->claim = claim;
    rc->number = number;
    rc->st = TERN_E_USAGE;
    return rc;
}

/* Creates the engine and starts imap_open; the script runs from the greeting. */
static void
fx_start(struct fx *f, const char *greeting, const struct step *steps, size_t nsteps)
{
    f->greeting = greeting;
    f->steps = steps;
    f->nsteps = nsteps;
    assert_int_equal(imap_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    assert_int_equal(imap_open(f->c, on_open, f), TERN_OK);
}

static void
fx_open_ok(struct fx *f)
{
    wait_for(f, pred_flag, &f->open_done, "imap_open");
    if (f->open_st != TERN_OK)
        fail_msg("imap_open: %s: %s", tern_status_name(f->open_st), tern_err_msg(&f->err));
    assert_int_equal(f->open_calls, 1);
    assert_true(imap_is_ready(f->c));
    assert_false(imap_is_dead(f->c));
}

static void
fx_open_fails(struct fx *f, enum tern_status want)
{
    wait_for(f, pred_flag, &f->open_done, "imap_open");
    if (f->open_st != want)
        fail_msg("imap_open gave %s (%s), expected %s", tern_status_name(f->open_st),
                 tern_err_msg(&f->err), tern_status_name(want));
    assert_int_equal(f->open_calls, 1);
    assert_true(imap_is_dead(f->c));
    assert_false(imap_is_ready(f->c));
}

/* Submits NAME with raw ARGS (may be NULL). */
static struct rec *
submit(struct fx *f, const char *recname, const char *name, const char *args, enum claim claim,
       uint32_t number)
{
    struct rec *rc = rec_new(f, recname, claim, number);
    struct imap_args a;
    imap_args_init(&a);
    if (args)
        assert_int_equal(imap_args_raw(&a, "%s", args), TERN_OK);
    assert_int_equal(imap_submit(f->c, name, args ? &a : NULL,
                                 claim == NO_HANDLER ? NULL : on_untagged, rc, on_done, rc),
                     TERN_OK);
    imap_args_free(&a);
    return rc;
}

/* Submits NAME with raw PREFIX followed by one string argument S. */
static struct rec *
submit_string(struct fx *f, const char *recname, const char *name, const char *prefix,
              const char *s)
{
    struct rec *rc = rec_new(f, recname, NO_HANDLER, 0);
    struct imap_args a;
    imap_args_init(&a);
    assert_int_equal(imap_args_raw(&a, "%s", prefix), TERN_OK);
    assert_int_equal(imap_args_string(&a, s, strlen(s)), TERN_OK);
    assert_int_equal(imap_submit(f->c, name, &a, NULL, NULL, on_done, rc), TERN_OK);
    imap_args_free(&a);
    return rc;
}

/* Base64 (RFC 4648) written here, independently of sasl.c. */
static void
b64(struct tbuf *out, const char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned char)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned char)p[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)p[i + 2];
        tbuf_addc(out, tab[(v >> 18) & 63]);
        tbuf_addc(out, tab[(v >> 12) & 63]);
        tbuf_addc(out, i + 1 < n ? tab[(v >> 6) & 63] : '=');
        tbuf_addc(out, i + 2 < n ? tab[v & 63] : '=');
    }
}

/*
 * The usual start: the greeting lists AUTH=PLAIN and SASL-IR, so PLAIN goes
 * in one line; the tagged OK carries the post-login capabilities (CAPS),
 * with neither NAMESPACE nor ID nor CONDSTORE, so the last setup step is
 * LIST "" "". User commands start at T3.
 */
#define GREETING "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] fake ready\r\n"
#define PLAIN_B64 "AGFsaWNlAHNlY3JldA==" /* "\0alice\0secret" */
#define PRELUDE(caps)                                                                              \
    S("T1 AUTHENTICATE PLAIN " PLAIN_B64, "$T OK [CAPABILITY IMAP4rev1 " caps "] logged in\r\n"),  \
        S("T2 LIST \"\" \"\"", "* LIST (\\Noselect) \"/\" \"\"\r\n$T OK done\r\n")
#define PRELUDE_STEPS 2
#define PRELUDE_SENT "T1 AUTHENTICATE PLAIN " PLAIN_B64 "\r\nT2 LIST \"\" \"\"\r\n"

#define NSTEPS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- connection phases ---- */

static void
test_greeting_caps_skip_capability(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE("IDLE")};
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT);
    /* The SASL-IR line is traced without its credentials. */
    assert_non_null(strstr(tbuf_ptr(&f->trace), "> T1 AUTHENTICATE <secret>\n"));
    assert_null(strstr(tbuf_ptr(&f->trace), PLAIN_B64));
    assert_int_equal(imap_delimiter(f->c), '/');
    /* The tagged OK's list replaced the greeting's. */
    assert_true(imap_has_cap(f->c, "IDLE"));
    assert_true(imap_has_cap(f->c, "imap4REV1"));
    assert_false(imap_has_cap(f->c, "SASL-IR"));
    assert_false(imap_has_cap(f->c, "AUTH=PLAIN"));
    assert_false(imap_has_cap(f->c, ""));
    assert_false(imap_mailbox(f->c)->selected);
}

static void
test_greeting_without_caps_full_setup(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 CAPABILITY", "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n$T OK done\r\n"),
        S("T2 AUTHENTICATE PLAIN", "+ \r\n"),
        S(PLAIN_B64, "T2 OK logged in\r\n"),
        S("T3 CAPABILITY", "* CAPABILITY IMAP4rev1 CONDSTORE ID NAMESPACE\r\n$T OK done\r\n"),
        S("T4 ENABLE CONDSTORE", NULL),
        S("T5 ID (\"name\" \"tern\" \"version\" \"0.1\")", NULL),
        S("T6 NAMESPACE", "* ENABLED CONDSTORE\r\nT4 OK enabled\r\n"
                          "* ID (\"name\" \"fake\")\r\nT5 OK id\r\n"
                          "* NAMESPACE ((\"\" \".\")) NIL NIL\r\nT6 OK ns\r\n"),
    };
    fx_start(f, "* OK fake ready\r\n", steps, NSTEPS(steps));
    imap_set_default_handler(f->c, on_default, f);
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 CAPABILITY\r\n"
                   "T2 AUTHENTICATE PLAIN\r\n" PLAIN_B64 "\r\n"
                   "T3 CAPABILITY\r\n"
                   "T4 ENABLE CONDSTORE\r\n"
                   "T5 ID (\"name\" \"tern\" \"version\" \"0.1\")\r\n"
                   "T6 NAMESPACE\r\n");
    assert_int_equal(imap_delimiter(f->c), '.');
    assert_true(imap_has_cap(f->c, "CONDSTORE"));
    assert_false(imap_has_cap(f->c, "AUTH=PLAIN"));
    /* The NAMESPACE step claims its response; the others fall through. */
    assert_log(f, "default ENABLED;default ID;open ok;");
}

static void
test_postauth_caps_in_tagged_ok(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 AUTHENTICATE PLAIN " PLAIN_B64,
          "$T OK [CAPABILITY IMAP4rev1 CONDSTORE ID NAMESPACE] in\r\n"),
        S("T2 ENABLE CONDSTORE", NULL),
        S("T3 ID (\"name\" \"tern\" \"version\" \"0.1\")", NULL),
        /* ENABLE, ID and NAMESPACE are courtesies: refusals do not stop us. */
        S("T4 NAMESPACE", "T2 NO not now\r\nT3 BAD what\r\n"
                          "* NAMESPACE ((\"INBOX.\" \".\")) NIL NIL\r\nT4 OK ns\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 AUTHENTICATE PLAIN " PLAIN_B64 "\r\n"
                   "T2 ENABLE CONDSTORE\r\n"
                   "T3 ID (\"name\" \"tern\" \"version\" \"0.1\")\r\n"
                   "T4 NAMESPACE\r\n");
    assert_int_equal(imap_delimiter(f->c), '.');
}

static void
test_preauth_greeting(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 NAMESPACE", "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n$T OK ns\r\n"),
    };
    fx_start(f, "* PREAUTH [CAPABILITY IMAP4rev1 NAMESPACE] hello alice\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 NAMESPACE\r\n");
    assert_int_equal(imap_delimiter(f->c), '/');
}

static void
test_greeting_bye(void **state)
{
    struct fx *f = *state;
    fx_start(f, "* BYE Too many connections from your address\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "Too many connections from your address");
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_greeting_garbage(void **state)
{
    struct fx *f = *state;
    fx_start(f, "HTTP/1.1 400 Bad Request\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_PROTO);
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_connection_refused(void **state)
{
    struct fx *f = *state;
    /* A port nobody listens on: bind one, then close it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    f->opts.port = ntohs(a.sin_port);
    assert_int_equal(imap_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    enum tern_status st = imap_open(f->c, on_open, f);
    if (st == TERN_OK) {
        fx_open_fails(f, TERN_E_IO);
    } else {
        assert_int_equal(st, TERN_E_IO);
        assert_false(f->open_done);
        assert_true(imap_is_dead(f->c));
    }
    assert_err_has(f, "cannot connect");
}

/* ---- LOGIN and AUTHENTICATE ---- */

static void
test_login_quoted_password(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 LOGIN \"alice\" \"se cr\\\"et\\\\x\"", "$T OK [CAPABILITY IMAP4rev1] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.secret = "se cr\"et\\x";
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, "* OK [CAPABILITY IMAP4rev1] hi\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 LOGIN \"alice\" \"se cr\\\"et\\\\x\"\r\nT2 LIST \"\" \"\"\r\n");
    /* The trace shows the command but never the password. */
    const char *tr = tbuf_ptr(&f->trace);
    assert_non_null(strstr(tr, "> T1 LOGIN <secret>"));
    assert_null(strstr(tr, "se cr"));
    assert_non_null(strstr(tr, "> T2 LIST \"\" \"\""));
}

#define NONASCII "p\xc3\xa4ssw\xc3\xb6rd" /* 10 bytes of UTF-8 */

static void
test_login_literal_plus(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 LOGIN \"alice\" {10+}", NULL),
        S(NONASCII, "T1 OK [CAPABILITY IMAP4rev1 LITERAL+] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.secret = NONASCII;
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 LITERAL+] hi\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 LOGIN \"alice\" {10+}\r\n" NONASCII "\r\nT2 LIST \"\" \"\"\r\n");
}

static void
test_login_sync_literal_waits(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 LOGIN \"alice\" {10}", NULL),
        S(NONASCII, "T1 OK [CAPABILITY IMAP4rev1] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.secret = NONASCII;
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, "* OK [CAPABILITY IMAP4rev1] hi\r\n", steps, NSTEPS(steps));
    wait_steps(f, 1);
    /* RFC 3501 §4.3: no literal byte before the server's "+". */
    run_for(f, 150);
    assert_sent(f, "T1 LOGIN \"alice\" {10}\r\n");
    assert_false(f->open_done);
    srv_sends(f, "+ Ready for literal data\r\n");
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 LOGIN \"alice\" {10}\r\n" NONASCII "\r\nT2 LIST \"\" \"\"\r\n");
    assert_null(strstr(tbuf_ptr(&f->trace), "w\xc3\xb6rd"));
}

static void
test_auth_plain_without_sasl_ir_waits(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 AUTHENTICATE PLAIN", NULL),
        S(PLAIN_B64, "T1 OK [CAPABILITY IMAP4rev1] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    /* LOGINDISABLED does not matter when AUTH=PLAIN is there. */
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED] hi\r\n", steps,
             NSTEPS(steps));
    wait_steps(f, 1);
    run_for(f, 100);
    assert_sent(f, "T1 AUTHENTICATE PLAIN\r\n");
    srv_sends(f, "+\r\n");
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "T1 AUTHENTICATE PLAIN\r\n" PLAIN_B64 "\r\nT2 LIST \"\" \"\"\r\n");
    assert_null(strstr(tbuf_ptr(&f->trace), PLAIN_B64));
}

#define XOAUTH2_B64 "dXNlcj1hbGljZQFhdXRoPUJlYXJlciB5YTI5LnRvawEB" /* user=alice^Aauth=... */

static void
test_auth_xoauth2(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 AUTHENTICATE XOAUTH2 " XOAUTH2_B64, "$T OK [CAPABILITY IMAP4rev1] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.mech = SASL_XOAUTH2;
    f->opts.secret = "ya29.tok";
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR] hi\r\n", steps,
             NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    /* Check the payload independently of the constant above. */
    struct tbuf want;
    tbuf_init(&want, 0);
    tbuf_adds(&want, "T1 AUTHENTICATE XOAUTH2 ");
    static const char xo[] = "user=alice\1auth=Bearer ya29.tok\1\1";
    b64(&want, xo, sizeof(xo) - 1);
    tbuf_adds(&want, "\r\nT2 LIST \"\" \"\"\r\n");
    assert_sent(f, tbuf_ptr(&want));
    tbuf_free(&want);
}

static void
test_auth_xoauth2_error_challenge(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 AUTHENTICATE XOAUTH2 " XOAUTH2_B64,
          "+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29"
          "vZ2xlLmNvbS8ifQ==\r\n"),
        /* The client answers the error challenge with an empty response. */
        S("", "T1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"),
    };
    f->opts.mech = SASL_XOAUTH2;
    f->opts.secret = "ya29.tok";
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] hi\r\n", steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_AUTH);
    assert_script_done(f);
    assert_err_has(f, "Invalid credentials (Failure)");
    assert_err_has(f, "AUTHENTICATIONFAILED");
    assert_null(strstr(tern_err_msg(&f->err), "ya29"));
    run_for(f, 50);
    assert_sent(f, "T1 AUTHENTICATE XOAUTH2 " XOAUTH2_B64 "\r\n\r\n");
}

static void
test_auth_oauthbearer(void **state)
{
    struct fx *f = *state;
    /* RFC 7628 §3.1: gs2 header, host, port, auth, then two ^A. */
    struct tbuf raw;
    tbuf_init(&raw, 0);
    tbuf_addf(&raw, "n,a=alice,\1host=127.0.0.1\1port=%d\1auth=Bearer ya29.tok\1\1", f->port);
    b64(&f->expect_buf, tbuf_ptr(&raw), tbuf_len(&raw));
    tbuf_free(&raw);
    struct step steps[] = {
        S("T1 AUTHENTICATE OAUTHBEARER", "+ \r\n"),
        S(tbuf_ptr(&f->expect_buf), "T1 OK [CAPABILITY IMAP4rev1] in\r\n"),
        S("T2 LIST \"\" \"\"", "* LIST () \"/\" \"\"\r\n$T OK done\r\n"),
    };
    f->opts.mech = SASL_OAUTHBEARER;
    f->opts.secret = "ya29.tok";
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER] hi\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    f->steps = NULL; /* STEPS goes out of scope */
    f->nsteps = 0;
    f->istep = 0;
}

static void
test_auth_mech_not_offered(void **state)
{
    struct fx *f = *state;
    f->opts.mech = SASL_XOAUTH2;
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_UNSUPPORTED);
    assert_err_has(f, "AUTH=XOAUTH2");
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_login_refused(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("T1 LOGIN \"alice\" \"secret\"",
          "$T NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
    };
    fx_start(f, "* OK [CAPABILITY IMAP4rev1] hi\r\n", steps, NSTEPS(steps));
    /* A command submitted before the login waits, then fails with it. */
    struct rec *q = submit(f, "Q", "NOOP", NULL, NO_HANDLER, 0);
    fx_open_fails(f, TERN_E_AUTH);
    assert_script_done(f);
    assert_err_has(f, "Authentication failed.");
    assert_err_has(f, "[AUTHENTICATIONFAILED]");
    assert_null(strstr(tern_err_msg(&f->err), "secret"));
    assert_int_equal(q->calls, 1);
    assert_int_equal(q->st, TERN_E_AUTH);
    assert_false(q->had_tagged);
    run_for(f, 50);
    assert_sent(f, "T1 LOGIN \"alice\" \"secret\"\r\n");
}

static void
test_logindisabled_without_auth(void **state)
{
    struct fx *f = *state;
    fx_start(f, "* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_UNSUPPORTED);
    assert_err_has(f, "LOGINDISABLED");
    run_for(f, 50);
    assert_sent(f, "");
}

/* ---- pipelining and untagged responses ---- */

static void
test_pipeline_out_of_order(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 UID FETCH 1 (FLAGS)", NULL),
        S("T4 UID FETCH 2 (FLAGS)", NULL),
        S("T5 UID FETCH 3 (FLAGS)", NULL),
        S("T6 UID FETCH 4 (FLAGS)", NULL),
        /* Only now, with all five in, does the server answer. */
        S("T7 UID FETCH 5 (FLAGS)",
          "T7 OK e\r\nT5 OK c\r\nT3 OK a\r\nT6 NO [SERVERBUG] d failed\r\nT4 OK b\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *r[5];
    const char *names[] = {"A", "B", "C", "D", "E"};
    char args[5][16];
    for (int i = 0; i < 5; i++) {
        snprintf(args[i], sizeof(args[i]), " %d (FLAGS)", i + 1);
        r[i] = submit(f, names[i], "UID FETCH", args[i], NO_HANDLER, 0);
    }
    wait_called(f, r[1]);
    assert_script_done(f);
    assert_log(f, "open ok;done E ok;done C ok;done A ok;done D refused;done B ok;");
    const char *texts[] = {"a", "b", "c", "d failed", "e"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i]->calls, 1);
        assert_true(r[i]->had_tagged);
        assert_string_equal(r[i]->text, texts[i]);
    }
    assert_int_equal(r[3]->st, TERN_E_REFUSED);
    assert_err_has(f, "d failed");
    assert_err_has(f, "SERVERBUG");
    assert_false(imap_is_dead(f->c));
    assert_sent_from(f, strlen(PRELUDE_SENT),
                     "T3 UID FETCH 1 (FLAGS)\r\nT4 UID FETCH 2 (FLAGS)\r\n"
                     "T5 UID FETCH 3 (FLAGS)\r\nT6 UID FETCH 4 (FLAGS)\r\n"
                     "T7 UID FETCH 5 (FLAGS)\r\n");
}

static void
test_pipeline_depth_cap(void **state)
{
    struct fx *f = *state;
    /* 40 commands: at most 32 go out before the first reply. */
    enum { N = 40, CAP = 32 };
    struct step steps[PRELUDE_STEPS + N] = {PRELUDE("")};
    char lines[N][24];
    struct tbuf first, second;
    tbuf_init(&first, 0);
    tbuf_init(&second, 0);
    for (int i = 0; i < N; i++) {
        snprintf(lines[i], sizeof(lines[i]), "T%d NOOP", i + 3);
        steps[PRELUDE_STEPS + i].expect = lines[i];
        tbuf_addf(i < CAP ? &first : &second, "T%d OK noop\r\n", i + 3);
    }
    steps[PRELUDE_STEPS + N - 1].reply = tbuf_ptr(&second);
    fx_start(f, GREETING, steps, PRELUDE_STEPS + N);
    fx_open_ok(f);
    struct rec *last = NULL;
    for (int i = 0; i < N; i++)
        last = submit(f, "N", "NOOP", NULL, NO_HANDLER, 0);
    wait_steps(f, PRELUDE_STEPS + CAP);
    run_for(f, 100);
    assert_int_equal(f->nlines, PRELUDE_STEPS + CAP);
    srv_sends(f, tbuf_ptr(&first));
    wait_called(f, last);
    assert_script_done(f);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(f->recs[i].calls, 1);
        assert_int_equal(f->recs[i].st, TERN_OK);
    }
    tbuf_free(&first);
    tbuf_free(&second);
    f->steps = NULL;
    f->nsteps = f->istep = 0;
}

static void
test_untagged_claims(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 UID FETCH 1 (FLAGS)", NULL),
        S("T4 UID FETCH 1:* (FLAGS)", "* 1 FETCH (FLAGS (\\Seen))\r\n"
                                      "* 2 FETCH (FLAGS ())\r\n"
                                      "* 5 EXISTS\r\n"
                                      "T3 OK a\r\n"
                                      "* 3 FETCH (FLAGS ())\r\n"
                                      "* 1 FETCH (FLAGS ())\r\n"
                                      "T4 OK b\r\n"
                                      "* 6 EXISTS\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    imap_set_default_handler(f->c, on_default, f);
    submit(f, "A", "UID FETCH", " 1 (FLAGS)", CLAIM_NUMBER, 1);
    submit(f, "B", "UID FETCH", " 1:* (FLAGS)", CLAIM_FETCH, 0);
    wait_for(f, pred_log, "default 6 EXISTS;", "the last untagged response");
    assert_script_done(f);
    assert_log(f, "A 1 FETCH+;"
                  "A 2 FETCH-;B 2 FETCH+;"
                  "A 5 EXISTS-;B 5 EXISTS-;default 5 EXISTS;"
                  "done A ok;"
                  "B 3 FETCH+;"
                  "B 1 FETCH+;"
                  "done B ok;"
                  "default 6 EXISTS;");
    assert_int_equal(imap_mailbox(f->c)->exists, 6);
}

static void
test_unknown_tag_kills(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
        S("T4 NOOP", "T9 OK what\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    struct rec *b = submit(f, "B", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, b);
    assert_log(f, "done A proto;done B proto;");
    assert_int_equal(a->calls, 1);
    assert_true(imap_is_dead(f->c));
    assert_err_has(f, "T9");
    /* A dead connection takes nothing more. */
    struct imap_args none;
    imap_args_init(&none);
    assert_int_equal(imap_submit(f->c, "NOOP", &none, NULL, NULL, on_done, a), TERN_E_IO);
    assert_int_equal(imap_logout(f->c, on_done, a), TERN_E_IO);
    assert_int_equal(a->calls, 1);
}

/* The sentence of the first failure stays; a BYE seen earlier does not replace it. */
static void
test_failure_sentence_survives_bye(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", "* BYE going away\r\nT9 OK what\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    run_for(f, 50);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_err_has(f, "T9");
}

static void
test_duplicate_completion_kills(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
        S("T4 NOOP", "T3 OK a\r\nT3 OK again\r\nT4 OK b\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    struct rec *b = submit(f, "B", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, b);
    run_for(f, 50);
    assert_log(f, "done A ok;done B proto;");
    assert_true(imap_is_dead(f->c));
    assert_err_has(f, "T3");
}

static void
test_malformed_tagged_kills(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", "$T FINE thanks\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_true(imap_is_dead(f->c));
}

static void
test_unrequested_continuation_kills(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", "+ go on\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_err_has(f, "continuation");
    assert_true(imap_is_dead(f->c));
}

#define GRUSSE "gr\xc3\xbc\xc3\x9f\x65" /* "gr", u umlaut, sharp s, "e": 7 bytes */

static void
test_sync_literal_in_pipeline(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
        S("T4 SEARCH CHARSET UTF-8 TEXT {7}", NULL),
        S(GRUSSE, NULL),
        S("T5 NOOP", "T3 OK a\r\n* SEARCH 2 4\r\nT4 OK b\r\nT5 OK c\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    submit_string(f, "B", "SEARCH", " CHARSET UTF-8 TEXT ", GRUSSE);
    struct rec *c = submit(f, "C", "NOOP", NULL, NO_HANDLER, 0);
    wait_steps(f, PRELUDE_STEPS + 2);
    /* C waits behind B's literal, and B's literal waits for "+". */
    run_for(f, 150);
    assert_sent_from(f, strlen(PRELUDE_SENT), "T3 NOOP\r\nT4 SEARCH CHARSET UTF-8 TEXT {7}\r\n");
    srv_sends(f, "+ go ahead\r\n");
    wait_called(f, c);
    assert_script_done(f);
    assert_log(f, "done A ok;done B ok;done C ok;");
    assert_sent_from(f, strlen(PRELUDE_SENT),
                     "T3 NOOP\r\nT4 SEARCH CHARSET UTF-8 TEXT {7}\r\n" GRUSSE "\r\nT5 NOOP\r\n");
}

static void
test_literal_plus_in_pipeline(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE("LITERAL+"),
        S("T3 SEARCH CHARSET UTF-8 TEXT {7+}", NULL),
        S(GRUSSE, NULL),
        S("T4 NOOP", "T3 OK a\r\nT4 OK b\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    submit_string(f, "A", "SEARCH", " CHARSET UTF-8 TEXT ", GRUSSE);
    struct rec *b = submit(f, "B", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, b);
    assert_script_done(f);
    assert_int_equal(f->recs[0].st, TERN_OK);
}

/*
 * RFC 3501 §2.2.1: instead of the continuation the server
 * may reject the command with a tagged NO or BAD; the rest of the command
 * is then never sent and the connection goes on.
 */
static void
test_literal_rejected_instead_of_continuation(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 SEARCH CHARSET UTF-8 TEXT {7}", "$T NO [TOOBIG] literal too big\r\n"),
        S("T4 NOOP", "$T OK fine\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    submit_string(f, "A", "SEARCH", " CHARSET UTF-8 TEXT ", GRUSSE);
    struct rec *b = submit(f, "B", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, b);
    assert_script_done(f);
    assert_log(f, "done A refused;done B ok;");
    assert_err_has(f, "TOOBIG");
    assert_false(imap_is_dead(f->c));
    assert_sent_from(f, strlen(PRELUDE_SENT), "T3 SEARCH CHARSET UTF-8 TEXT {7}\r\nT4 NOOP\r\n");
}

static void
test_submit_before_ready_waits(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", "$T OK noop\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_script_done(f);
    assert_log(f, "open ok;done A ok;");
    assert_sent(f, PRELUDE_SENT "T3 NOOP\r\n");
}

static void
test_noop_capability_update(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE("IDLE"),
        S("T3 NOOP", "* CAPABILITY IMAP4rev1 MOVE UIDPLUS\r\n$T OK noop\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_true(imap_has_cap(f->c, "IDLE"));
    assert_false(imap_has_cap(f->c, "MOVE"));
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_string_equal(a->text, "noop");
    assert_true(imap_has_cap(f->c, "MOVE"));
    assert_true(imap_has_cap(f->c, "uidplus"));
    assert_false(imap_has_cap(f->c, "IDLE"));
}

/* ---- mailbox state ---- */

static void
test_select_state(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 EXAMINE A", "* 5 EXISTS\r\n"
                          "* OK [UIDVALIDITY 42] ok\r\n"
                          "* OK [UIDNEXT 6] ok\r\n"
                          "* OK [HIGHESTMODSEQ 12345678901] ok\r\n"
                          "$T OK [READ-ONLY] examined\r\n"),
        S("T4 NOOP", "* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n$T OK noop\r\n"),
        S("T5 SELECT B", "* 1 EXISTS\r\n"
                         "* OK [UIDVALIDITY 9] ok\r\n"
                         "* OK [UIDNEXT 2] ok\r\n"
                         "* OK [NOMODSEQ] no modseqs here\r\n"
                         "$T OK [READ-WRITE] selected\r\n"),
        S("T6 SELECT C", "$T NO [NONEXISTENT] no such mailbox\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const struct imap_mailbox *m = imap_mailbox(f->c);
    assert_false(m->selected);

    struct rec *a = submit(f, "A", "EXAMINE", " A", NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_true(m->selected);
    assert_true(m->read_only);
    assert_int_equal(m->exists, 5);
    assert_int_equal(m->uidvalidity, 42);
    assert_int_equal(m->uidnext, 6);
    assert_true(m->highestmodseq == UINT64_C(12345678901));

    struct rec *n = submit(f, "N", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, n);
    assert_int_equal(m->exists, 3);

    /* A mailbox without modseqs must not inherit the last one's. */
    struct rec *b = submit(f, "B", "SELECT", " B", NO_HANDLER, 0);
    wait_called(f, b);
    assert_true(m->selected);
    assert_false(m->read_only);
    assert_int_equal(m->exists, 1);
    assert_int_equal(m->uidvalidity, 9);
    assert_int_equal(m->uidnext, 2);
    assert_true(m->highestmodseq == 0);

    /* RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected. */
    struct rec *c = submit(f, "C", "SELECT", " C", NO_HANDLER, 0);
    wait_called(f, c);
    assert_int_equal(c->st, TERN_E_REFUSED);
    assert_false(m->selected);
    assert_script_done(f);
}

/* ---- IDLE ---- */

static void
test_idle(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE("IDLE"),
        S("T3 SELECT INBOX", "* 2 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 3] n\r\n"
                             "$T OK [READ-WRITE] selected\r\n"),
        S("T4 IDLE", "+ idling\r\n* 3 EXISTS\r\n"),
        S("DONE", "* 4 EXISTS\r\nT4 OK IDLE terminated\r\n"),
        S("T5 NOOP", "$T OK noop\r\n"),
    };
    /* Short, to show that waiting in IDLE is not a timeout. */
    f->opts.timeout_ms = 300;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *sel = submit(f, "S", "SELECT", " INBOX", NO_HANDLER, 0);
    wait_called(f, sel);
    assert_int_equal(imap_mailbox(f->c)->exists, 2);
    assert_int_equal(imap_idle_done(f->c), TERN_E_USAGE); /* not idling */

    tbuf_reset(&f->log);
    size_t mark = tbuf_len(&f->in);
    struct rec *idle = rec_new(f, "I", CLAIM_ALL, 0);
    assert_int_equal(imap_idle(f->c, on_untagged, on_done, idle), TERN_OK);
    wait_for(f, pred_log, "I 3 EXISTS+;", "the EXISTS during IDLE");
    assert_int_equal(imap_mailbox(f->c)->exists, 3);
    /* A command submitted while idling waits until IDLE ends. */
    struct rec *n = submit(f, "N", "NOOP", NULL, NO_HANDLER, 0);
    run_for(f, 700);
    assert_false(imap_is_dead(f->c));
    assert_int_equal(idle->calls, 0);
    assert_sent_from(f, mark, "T4 IDLE\r\n");

    assert_int_equal(imap_idle_done(f->c), TERN_OK);
    wait_called(f, idle);
    assert_int_equal(idle->st, TERN_OK);
    wait_called(f, n);
    assert_script_done(f);
    assert_sent_from(f, mark, "T4 IDLE\r\nDONE\r\nT5 NOOP\r\n");
    assert_log(f, "I 3 EXISTS+;I 4 EXISTS+;done I ok;done N ok;");
    assert_int_equal(imap_mailbox(f->c)->exists, 4);
}

static void
test_idle_unsupported(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE("")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *idle = rec_new(f, "I", CLAIM_ALL, 0);
    assert_int_equal(imap_idle(f->c, on_untagged, on_done, idle), TERN_E_UNSUPPORTED);
    assert_err_has(f, "IDLE");
    run_for(f, 50);
    assert_int_equal(idle->calls, 0);
    assert_sent(f, PRELUDE_SENT);
}

/* ---- literals ---- */

#define BIG (3 * 1024 * 1024)

static void
test_literal_sink(void **state)
{
    struct fx *f = *state;
    /* Bytes of every value, CR LF and NUL included. */
    char *body = malloc(BIG);
    assert_non_null(body);
    for (size_t i = 0; i < BIG; i++)
        body[i] = (char)((i * 7 + (i >> 13)) & 0xff);
    struct tbuf reply;
    tbuf_init(&reply, 0);
    tbuf_addf(&reply, "* 1 FETCH (UID 5 BODY[] {%d}\r\n", BIG);
    tbuf_add(&reply, body, BIG);
    tbuf_adds(&reply, ")\r\n* 2 FETCH (UID 6 BODY[] {5}\r\nhello)\r\nT3 OK fetched\r\n");
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "T3 UID FETCH 5:6 BODY.PEEK[]",
         .reply = tbuf_ptr(&reply),
         .reply_len = tbuf_len(&reply),
         .flags = STEP_RAW},
    };
    f->opts.limits.inline_max = 1024;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    struct imap_literal_sink sink = {sink_open, sink_write, sink_close, f};
    imap_set_literal_sink(f->c, &sink);
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "UID FETCH", " 5:6 BODY.PEEK[]", CLAIM_FETCH, 0);
    wait_called(f, a);
    assert_script_done(f);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(f->sink_opens, 1);
    assert_int_equal(f->sink_closes, 1);
    assert_true(f->sink_ok);
    assert_true(f->sink_size == BIG);
    assert_int_equal(a->nstreamed, 1);
    assert_true(a->streamed_size == BIG);
    assert_ptr_equal(a->stream, f);
    assert_int_equal(tbuf_len(&f->sink_data), BIG);
    assert_memory_equal(tbuf_ptr(&f->sink_data), body, BIG);
    /* Small literals stay in memory. */
    assert_int_equal(a->inline_len, 5);
    assert_string_equal(a->inline_str, "hello");
    free(body);
    tbuf_free(&reply);
    f->steps = NULL;
    f->nsteps = f->istep = 0;
}

static void
test_literal_too_big_without_sink(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 UID FETCH 5 BODY.PEEK[]", "* 1 FETCH (UID 5 BODY[] {2048}\r\n"),
    };
    f->opts.limits.inline_max = 1024;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "UID FETCH", " 5 BODY.PEEK[]", CLAIM_FETCH, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_true(imap_is_dead(f->c));
}

/* ---- timeouts and failures ---- */

static void
test_timeout_command(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
    };
    f->opts.timeout_ms = 1000;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    int64_t t0 = loop_now_ms();
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    int64_t took = loop_now_ms() - t0;
    assert_int_equal(a->st, TERN_E_TIMEOUT);
    assert_true(took >= 900 && took < 2500);
    assert_err_has(f, "did not answer");
    assert_true(imap_is_dead(f->c));
    assert_script_done(f);
}

static void
test_timeout_greeting(void **state)
{
    struct fx *f = *state;
    f->opts.timeout_ms = 1000;
    int64_t t0 = loop_now_ms();
    fx_start(f, NULL, NULL, 0);
    fx_open_fails(f, TERN_E_TIMEOUT);
    int64_t took = loop_now_ms() - t0;
    assert_true(f->accepted);
    assert_true(took >= 900 && took < 2500);
    assert_sent(f, "");
}

static void
test_close_mid_response(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 UID FETCH 5 BODY.PEEK[]", NULL),
        SF("T4 NOOP", "* 1 FETCH (UID 5 BODY[] {100}\r\n0123456789", STEP_CLOSE),
    };
    f->opts.limits.inline_max = 16;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    struct imap_literal_sink sink = {sink_open, sink_write, sink_close, f};
    imap_set_literal_sink(f->c, &sink);
    fx_open_ok(f);
    tbuf_reset(&f->log);
    submit(f, "A", "UID FETCH", " 5 BODY.PEEK[]", CLAIM_FETCH, 0);
    struct rec *b = submit(f, "B", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, b);
    assert_log(f, "done A io;done B io;");
    assert_true(imap_is_dead(f->c));
    assert_err_has(f, "closed");
    /* The half-written literal is abandoned, never reported complete. */
    assert_int_equal(f->sink_opens, 1);
    assert_int_equal(tbuf_len(&f->sink_data), 10);
    imap_free(f->c);
    f->c = NULL;
    assert_int_equal(f->sink_closes, 1);
    assert_false(f->sink_ok);
}

static void
test_bye_then_close(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        SF("T3 NOOP", "* BYE Server shutting down for maintenance\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_IO);
    assert_err_has(f, "Server shutting down for maintenance");
    assert_true(imap_is_dead(f->c));
    /* Later submissions are refused, still naming the reason. */
    struct imap_args none;
    imap_args_init(&none);
    assert_int_equal(imap_submit(f->c, "NOOP", &none, NULL, NULL, on_done, a), TERN_E_IO);
    assert_err_has(f, "Server shutting down for maintenance");
    assert_int_equal(a->calls, 1);
}

static void
test_logout(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        SF("T3 LOGOUT", "* BYE Logging out\r\n$T OK Logout completed.\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *l = rec_new(f, "L", NO_HANDLER, 0);
    assert_int_equal(imap_logout(f->c, on_done, l), TERN_OK);
    wait_called(f, l);
    assert_int_equal(l->st, TERN_OK);
    assert_true(l->had_tagged);
    wait_for(f, pred_dead, NULL, "the close after LOGOUT");
    run_for(f, 50);
    assert_int_equal(l->calls, 1);
    assert_log(f, "done L ok;");
    assert_sent(f, PRELUDE_SENT "T3 LOGOUT\r\n");
    assert_script_done(f);
}

static void
test_logout_close_without_ok(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        SF("T3 LOGOUT", "* BYE Logging out\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *l = rec_new(f, "L", NO_HANDLER, 0);
    assert_int_equal(imap_logout(f->c, on_done, l), TERN_OK);
    wait_called(f, l);
    assert_int_equal(l->st, TERN_OK);
    assert_false(l->had_tagged);
    assert_true(imap_is_dead(f->c));
}

/* A command queued behind LOGOUT never runs: it must not report success. */
static void
test_command_after_logout_fails(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        SF("T3 LOGOUT", "* BYE Logging out\r\n$T OK Logout completed.\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *l = rec_new(f, "L", NO_HANDLER, 0);
    assert_int_equal(imap_logout(f->c, on_done, l), TERN_OK);
    struct rec *n = submit(f, "N", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, n);
    assert_log(f, "done L ok;done N io;");
    assert_false(n->had_tagged);
    assert_sent(f, PRELUDE_SENT "T3 LOGOUT\r\n");
}

static void
test_cancel(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
        S("T4 SEARCH CHARSET UTF-8 TEXT {7}", NULL),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    submit_string(f, "B", "SEARCH", " CHARSET UTF-8 TEXT ", GRUSSE);
    submit(f, "C", "NOOP", NULL, NO_HANDLER, 0); /* still queued */
    wait_steps(f, PRELUDE_STEPS + 2);
    imap_cancel(f->c);
    /* Synchronously, in order: in flight first, then queued. */
    assert_log(f, "done A canceled;done B canceled;done C canceled;");
    assert_true(imap_is_dead(f->c));
    assert_err_has(f, "cancel");
    /* A late reply changes nothing. */
    srv_sends(f, "+ go ahead\r\nT3 OK late\r\n");
    run_for(f, 100);
    assert_log(f, "done A canceled;done B canceled;done C canceled;");
    assert_sent_from(f, strlen(PRELUDE_SENT), "T3 NOOP\r\nT4 SEARCH CHARSET UTF-8 TEXT {7}\r\n");
}

/*
 * Known defect, not fixed yet because the fix needs a new interface in
 * line.h and net.h: imap.h says imap_cancel() "drops the connection", but
 * imap_fail() only marks the engine DEAD. The socket stays open and watched
 * until imap_free(), so the server never sees the close, the inactivity
 * timer still fires and overwrites the error sentence with "did not
 * answer", and after a line-engine failure the still-readable socket makes
 * every poll() return at once (a busy loop, TESTMATRIX F3). Fixing it needs
 * a way to close the transport through the line engine (a line_close() in
 * line.h). The two tests below skip while the defect is there and pass
 * once it is fixed.
 */
static void
test_cancel_drops_connection(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("T3 NOOP", NULL),
    };
    f->opts.timeout_ms = 300;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_steps(f, PRELUDE_STEPS + 1);
    imap_cancel(f->c);
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_CANCELED);
    /* Run past the inactivity timeout: nothing may replace the reason. */
    run_until(f, pred_peer_closed, NULL, 600);
    run_for(f, 50);
    assert_int_equal(a->calls, 1);
    bool kept = strstr(tern_err_msg(&f->err), "cancel") != NULL;
    assert_true(f->peer_closed); /* the server saw the close */
    assert_true(kept);           /* no timer replaced the reason */
}

static void
test_dead_connection_no_busy_loop(void **state)
{
    struct fx *f = *state;
    enum { BIGLINE = 1024 * 1024 };
    char *line = malloc(BIGLINE);
    assert_non_null(line);
    memset(line, 'z', BIGLINE);
    memcpy(line, "* OK ", 5);
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "T3 NOOP", .reply = line, .reply_len = BIGLINE, .flags = STEP_RAW},
    };
    f->opts.limits.line_max = 4096;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    /* The dead connection must not wake the loop: about 6 rounds of 50 ms. */
    int rounds = 0;
    int64_t t0 = loop_now_ms();
    while (loop_now_ms() - t0 < 300) {
        assert_int_equal(loop_run_once(f->loop, 50), TERN_OK);
        rounds++;
    }
    free(line);
    f->steps = NULL;
    f->nsteps = f->istep = 0;
    assert_in_range(rounds, 1, 30);
}

static void
test_line_too_long(void **state)
{
    struct fx *f = *state;
    /* 16 MB without a line end, far more than the socket buffers hold. */
    enum { HUGE = 16 * 1024 * 1024 };
    char *huge = malloc(HUGE);
    assert_non_null(huge);
    memcpy(huge, "* OK ", 5);
    memset(huge + 5, 'x', HUGE - 5);
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "T3 NOOP", .reply = huge, .reply_len = HUGE, .flags = STEP_RAW},
    };
    f->opts.limits.line_max = 4096;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_err_has(f, "longer than 4096");
    assert_true(imap_is_dead(f->c));
    /* The client gave up long before reading it all (its buffer is capped). */
    run_for(f, 50);
    assert_true(tbuf_len(&f->out) > HUGE / 2);
    free(huge);
    f->steps = NULL;
    f->nsteps = f->istep = 0;
}

static void
test_line_at_limit_accepted(void **state)
{
    struct fx *f = *state;
    /* A response line of exactly line_max bytes is fine. */
    enum { MAX = 4096 };
    struct tbuf reply;
    tbuf_init(&reply, 0);
    tbuf_adds(&reply, "* OK ");
    while (tbuf_len(&reply) < MAX)
        tbuf_addc(&reply, 'y');
    tbuf_adds(&reply, "\r\nT3 OK noop\r\n");
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "T3 NOOP", .reply = tbuf_ptr(&reply), .flags = STEP_RAW},
    };
    f->opts.limits.line_max = MAX;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = submit(f, "A", "NOOP", NULL, NO_HANDLER, 0);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_OK);
    tbuf_free(&reply);
    f->steps = NULL;
    f->nsteps = f->istep = 0;
}

/* ---- API edges ---- */

static void
test_api_edges(void **state)
{
    struct fx *f = *state;
    imap_free(NULL);
    static const struct step steps[] = {PRELUDE("")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    assert_int_equal(imap_open(f->c, on_open, f), TERN_E_USAGE);
    assert_false(imap_is_ready(f->c));
    assert_int_equal(imap_delimiter(f->c), '\0');
    fx_open_ok(f);
    assert_int_equal(imap_open(f->c, on_open, f), TERN_E_USAGE);
    assert_int_equal(f->open_calls, 1);
    assert_int_equal(imap_idle_done(f->c), TERN_E_USAGE);
    /* A default handler can be removed again. */
    imap_set_default_handler(f->c, on_default, f);
    imap_set_default_handler(f->c, NULL, NULL);
    imap_set_literal_sink(f->c, NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
        T(test_greeting_caps_skip_capability),
        T(test_greeting_without_caps_full_setup),
        T(test_postauth_caps_in_tagged_ok),
        T(test_preauth_greeting),
        T(test_greeting_bye),
        T(test_greeting_garbage),
        T(test_connection_refused),
        T(test_login_quoted_password),
        T(test_login_literal_plus),
        T(test_login_sync_literal_waits),
        T(test_auth_plain_without_sasl_ir_waits),
        T(test_auth_xoauth2),
        T(test_auth_xoauth2_error_challenge),
        T(test_auth_oauthbearer),
        T(test_auth_mech_not_offered),
        T(test_login_refused),
        T(test_logindisabled_without_auth),
        T(test_pipeline_out_of_order),
        T(test_pipeline_depth_cap),
        T(test_untagged_claims),
        T(test_unknown_tag_kills),
        T(test_failure_sentence_survives_bye),
        T(test_duplicate_completion_kills),
        T(test_malformed_tagged_kills),
        T(test_unrequested_continuation_kills),
        T(test_sync_literal_in_pipeline),
        T(test_literal_plus_in_pipeline),
        T(test_literal_rejected_instead_of_continuation),
        T(test_submit_before_ready_waits),
        T(test_noop_capability_update),
        T(test_select_state),
        T(test_idle),
        T(test_idle_unsupported),
        T(test_literal_sink),
        T(test_literal_too_big_without_sink),
        T(test_timeout_command),
        T(test_timeout_greeting),
        T(test_close_mid_response),
        T(test_bye_then_close),
        T(test_logout),
        T(test_logout_close_without_ok),
        T(test_command_after_logout_fails),
        T(test_cancel),
        T(test_cancel_drops_connection),
        T(test_dead_connection_no_busy_loop),
        T(test_line_too_long),
        T(test_line_at_limit_accepted),
        T(test_api_edges),
#undef T
    };
    return cmocka_run_group_tests_name("imap", tests, NULL, NULL);
}
