/*
 * smtp_test.c - unit tests of the SMTP submission engine (proto/smtp.c)
 * against an in-process scripted peer.
 *
 * Layer: tests of proto/. The test opens a listening socket on 127.0.0.1
 * and registers it, then the accepted server-side socket, in the same
 * struct loop the engine runs in, so one thread drives both ends. The
 * scripted server records every byte the client sends (assertions are on
 * the exact bytes) and answers each line from a script: a list of steps,
 * each an expected line and the bytes to send back. After a step marked
 * STEP_DATA the server collects message data until the "." line, which
 * the next step matches. The server can speak TLS (a key and self-signed
 * certificate made at start-up; the client pins its fingerprint), started
 * at once (implicit TLS) or after a step marked STEP_STARTTLS. Every wait
 * has a deadline; a test never hangs.
 *
 * References: RFC 5321 (SMTP), RFC 6409 (submission), RFC 3207 (STARTTLS),
 * RFC 8314 (implicit TLS), RFC 4954 (AUTH), RFC 4616 (PLAIN), RFC 7628
 * (OAUTHBEARER), RFC 2920 (PIPELINING), RFC 6152 (8BITMIME), RFC 6531
 * (SMTPUTF8), RFC 1870 (SIZE), RFC 3461 (DSN).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
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
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tern.h"

#include "err.h"
#include "loop.h"
#include "net.h"
#include "sasl.h"
#include "smtp.h"
#include "tbuf.h"

#define WAIT_MS 5000 /* the deadline of every wait */
#define MAX_RCPT 8

/* ---- TLS material, made once ---- */

static SSL_CTX *srv_ctx;
static unsigned char srv_fingerprint[32];

static int
group_setup(void **state)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    if (!X509_sign(x, key, EVP_sha256()))
        return -1;
    unsigned int len = 0;
    if (!X509_digest(x, EVP_sha256(), srv_fingerprint, &len) || len != 32)
        return -1;
    srv_ctx = SSL_CTX_new(TLS_server_method());
    if (!srv_ctx || SSL_CTX_use_certificate(srv_ctx, x) != 1 ||
        SSL_CTX_use_PrivateKey(srv_ctx, key) != 1)
        return -1;
    SSL_CTX_set_mode(srv_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    X509_free(x);
    EVP_PKEY_free(key);
    return 0;
}

static int
group_teardown(void **state)
{
    SSL_CTX_free(srv_ctx);
    return 0;
}

/* ---- the scripted server ---- */

enum {
    STEP_PREFIX = 1 << 0,   /* EXPECT is a prefix of the line, not the whole line */
    STEP_CLOSE = 1 << 1,    /* close the connection once REPLY is written */
    STEP_DATA = 1 << 2,     /* after REPLY, collect message data up to "." */
    STEP_STARTTLS = 1 << 3, /* after REPLY, start TLS as the server */
};

struct step {
    const char *expect; /* the line the client must send (without CRLF) */
    const char *reply;  /* NULL: answer nothing (the test body goes on) */
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

struct fx;

/* One transaction seen from the caller's side. */
struct srec {
    struct fx *f;
    const char *name;
    int calls;
    enum tern_status st;
    int code;
    char *text; /* owned */
    bool temporary;
    bool unknown;
    size_t nrcpt, naccepted;
    int rcode[MAX_RCPT];
    char *rtext[MAX_RCPT]; /* owned */
    char *raddr[MAX_RCPT]; /* owned */
    char *err;             /* owned: the error slot during the callback */
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
    struct tbuf in;   /* every byte the client sent (decrypted) */
    size_t pos;       /* start of the first unprocessed line in IN */
    size_t nlines;    /* lines received */
    struct tbuf out;  /* bytes not yet written to the client */
    struct tbuf data; /* message data received, as on the wire, without the "." line */
    bool in_data;
    bool close_after;
    bool accepted;
    bool srv_closed;  /* the server closed its end */
    bool peer_closed; /* the client closed its end (EOF or reset seen) */
    bool stalled;     /* the server reads nothing */
    char *mismatch;   /* owned: why the script failed */
    bool implicit_tls;
    bool starttls_pending;
    bool handshaking;
    bool tls_failed;
    SSL *ssl;

    /* client */
    struct smtp_opts opts;
    struct tern_err err;
    struct smtp_conn *c;
    bool open_done;
    int open_calls;
    enum tern_status open_st;
    bool quit_done;
    int quit_calls;
    enum tern_status quit_st;
    struct srec recs[8];
    size_t nrecs;
    struct tbuf trace;
    struct tbuf expect_buf; /* test-built expected text */
    char *scratch;          /* owned: a large test input */
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
    esc(&b, line, len > 200 ? 200 : len);
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
        if (!f->ssl)
            tbuf_add(&f->in, chunk, (size_t)n);
    if (f->ssl) {
        SSL_free(f->ssl);
        f->ssl = NULL;
    }
    loop_unwatch(f->sw);
    f->sw = NULL;
    close(f->sfd);
    f->sfd = -1;
    f->srv_closed = true;
}

/* Reads from the client: > 0 bytes, 0 nothing now, -1 closed or failed. */
static ssize_t
srv_recv(struct fx *f, char *buf, size_t cap)
{
    if (f->ssl) {
        size_t n = 0;
        ERR_clear_error();
        if (SSL_read_ex(f->ssl, buf, cap, &n) == 1)
            return (ssize_t)n;
        int e = SSL_get_error(f->ssl, 0);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t n = read(f->sfd, buf, cap);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    return n <= 0 ? -1 : n;
}

/* Writes to the client: bytes taken, 0 would block, -1 failed. */
static ssize_t
srv_xmit(struct fx *f, const char *p, size_t n)
{
    if (f->ssl) {
        size_t done = 0;
        ERR_clear_error();
        if (SSL_write_ex(f->ssl, p, n, &done) == 1)
            return (ssize_t)done;
        int e = SSL_get_error(f->ssl, 0);
        ERR_clear_error();
        return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
    }
    ssize_t w = send(f->sfd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    return w < 0 ? -1 : w;
}

static void srv_flush(struct fx *f);

static void
srv_tls_step(struct fx *f)
{
    ERR_clear_error();
    int rc = SSL_accept(f->ssl);
    if (rc == 1) {
        f->handshaking = false;
        if (f->implicit_tls && f->greeting)
            assert_int_equal(tbuf_adds(&f->out, f->greeting), TERN_OK);
        srv_flush(f);
        return;
    }
    int e = SSL_get_error(f->ssl, rc);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        loop_watch_events(f->sw, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
        return;
    }
    f->tls_failed = true;
    f->handshaking = false;
    srv_close(f);
}

static void
srv_start_tls(struct fx *f)
{
    f->ssl = SSL_new(srv_ctx);
    assert_non_null(f->ssl);
    SSL_set_fd(f->ssl, f->sfd);
    SSL_set_accept_state(f->ssl);
    f->handshaking = true;
    srv_tls_step(f);
}

static void
srv_flush(struct fx *f)
{
    if (f->handshaking)
        return;
    while (f->sfd >= 0 && tbuf_len(&f->out)) {
        ssize_t n = srv_xmit(f, tbuf_ptr(&f->out), tbuf_len(&f->out));
        if (n == 0)
            break;
        if (n < 0) {
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
    if (!tbuf_len(&f->out) && f->starttls_pending) {
        f->starttls_pending = false;
        srv_start_tls(f);
        return;
    }
    short ev = f->stalled ? 0 : POLLIN;
    loop_watch_events(f->sw, ev | (tbuf_len(&f->out) ? POLLOUT : 0));
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

/* Matches one line (RAW is LEN bytes plus its line end of RAWLEN) against the script. */
static void
srv_on_line(struct fx *f, const char *line, size_t len, size_t rawlen)
{
    f->nlines++;
    if (f->mismatch)
        return;
    if (f->in_data) {
        if (len == 1 && line[0] == '.') {
            f->in_data = false;
        } else {
            assert_int_equal(tbuf_add(&f->data, line, rawlen), TERN_OK);
            return;
        }
    }
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
    if (s->reply)
        assert_int_equal(tbuf_adds(&f->out, s->reply), TERN_OK);
    if (s->flags & STEP_CLOSE)
        f->close_after = true;
    if (s->flags & STEP_DATA)
        f->in_data = true;
    if (s->flags & STEP_STARTTLS)
        f->starttls_pending = true;
    srv_flush(f);
}

static void
srv_read(struct fx *f)
{
    while (f->sfd >= 0 && !f->handshaking && !f->stalled) {
        char chunk[65536];
        ssize_t n = srv_recv(f, chunk, sizeof(chunk));
        if (n == 0)
            return;
        if (n < 0) {
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
            size_t rawlen = (size_t)(nl - (base + f->pos)) + 1;
            size_t len = rawlen - 1;
            size_t start = f->pos;
            f->pos += rawlen;
            if (len && base[start + len - 1] == '\r')
                len--;
            srv_on_line(f, base + start, len, rawlen);
            /* A STARTTLS step switches the socket to TLS: read no more in clear. */
            if (f->sfd < 0 || f->handshaking)
                return;
        }
    }
}

static void
srv_on_io(void *aux, short revents)
{
    struct fx *f = aux;
    if (f->handshaking) {
        srv_tls_step(f);
        return;
    }
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
    if (f->implicit_tls)
        srv_start_tls(f);
    else if (f->greeting)
        srv_sends(f, f->greeting);
}

/* Stops (true) or resumes (false) reading from the client. */
static void
srv_stall(struct fx *f, bool stalled)
{
    f->stalled = stalled;
    if (f->sw)
        loop_watch_events(f->sw, (stalled ? 0 : POLLIN) | (tbuf_len(&f->out) ? POLLOUT : 0));
}

/* ---- client callbacks ---- */

static void
on_open(void *aux, enum tern_status st)
{
    struct fx *f = aux;
    f->open_calls++;
    f->open_st = st;
    f->open_done = true;
}

static void
on_quit(void *aux, enum tern_status st)
{
    struct fx *f = aux;
    f->quit_calls++;
    f->quit_st = st;
    f->quit_done = true;
}

static void
on_sent(void *aux, enum tern_status st, const struct smtp_result *r)
{
    struct srec *rc = aux;
    assert_non_null(r);
    rc->calls++;
    rc->st = st;
    rc->code = r->code;
    free(rc->text);
    rc->text = strdup(r->text);
    rc->temporary = r->temporary;
    rc->unknown = r->outcome_unknown;
    rc->nrcpt = r->nrcpt;
    rc->naccepted = r->naccepted;
    assert_true(r->nrcpt <= MAX_RCPT);
    for (size_t i = 0; i < r->nrcpt; i++) {
        rc->rcode[i] = r->rcpts[i].code;
        free(rc->rtext[i]);
        free(rc->raddr[i]);
        rc->rtext[i] = strdup(r->rcpts[i].text);
        rc->raddr[i] = strdup(r->rcpts[i].addr);
    }
    free(rc->err);
    rc->err = strdup(tern_err_msg(&rc->f->err));
}

static void
on_trace(void *aux, bool sent, const char *line, size_t len)
{
    struct fx *f = aux;
    tbuf_adds(&f->trace, sent ? "> " : "< ");
    tbuf_add(&f->trace, line, len);
    tbuf_addc(&f->trace, '\n');
}

/* ---- body sources ---- */

/* Scripted chunks, one per read. */
struct chunks {
    const char *const *v;
    size_t n, i;
    int reads;
};

static enum tern_status
chunks_read(void *aux, char *buf, size_t cap, size_t *got)
{
    struct chunks *ch = aux;
    ch->reads++;
    *got = 0;
    if (ch->i >= ch->n)
        return TERN_OK;
    size_t len = strlen(ch->v[ch->i]);
    assert_true(len <= cap);
    memcpy(buf, ch->v[ch->i], len);
    *got = len;
    ch->i++;
    return TERN_OK;
}

/* A buffer in memory, STEP bytes per read; FAIL_AT > 0 fails the read that would pass it. */
struct membody {
    const char *p;
    size_t len, pos, step;
    size_t fail_at;
    int reads;
};

static enum tern_status
mem_read(void *aux, char *buf, size_t cap, size_t *got)
{
    struct membody *m = aux;
    m->reads++;
    size_t n = m->len - m->pos;
    if (n > m->step)
        n = m->step;
    if (n > cap)
        n = cap;
    if (m->fail_at && m->pos + n > m->fail_at)
        return TERN_E_IO;
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    *got = n;
    return TERN_OK;
}

/* TOTAL bytes of generated lines, made as they are read (never held). */
struct lazybody {
    uint64_t total, produced;
};

static enum tern_status
lazy_read(void *aux, char *buf, size_t cap, size_t *got)
{
    static const char line[] = "The quick brown fox jumps over the lazy dog. 0123456789\n";
    struct lazybody *z = aux;
    size_t n = 0;
    while (n < cap && z->produced < z->total) {
        buf[n++] = line[z->produced % (sizeof(line) - 1)];
        z->produced++;
    }
    *got = n;
    return TERN_OK;
}

/*
 * The wire form of a message, written here independently of the engine:
 * every CR LF, bare CR and bare LF becomes CR LF, a "." at the start of a
 * line is doubled, a last line without a line end gets one, then ".".
 */
static void
ref_encode(const char *p, size_t n, struct tbuf *out)
{
    bool bol = true;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < n && p[i + 1] == '\n')
                i++;
            tbuf_add(out, "\r\n", 2);
            bol = true;
            continue;
        }
        if (bol && c == '.')
            tbuf_addc(out, '.');
        tbuf_addc(out, c);
        bol = false;
    }
    if (!bol)
        tbuf_add(out, "\r\n", 2);
    tbuf_add(out, ".\r\n", 3);
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
pred_sent(struct fx *f, const void *arg)
{
    (void)f;
    return ((const struct srec *)arg)->calls > 0;
}

static bool
pred_steps(struct fx *f, const void *arg)
{
    return f->istep >= *(const size_t *)arg;
}

static bool
pred_peer_closed(struct fx *f, const void *arg)
{
    (void)arg;
    return f->peer_closed || f->srv_closed;
}

static bool
pred_read_stalls(struct fx *f, const void *arg)
{
    const struct lazybody *z = arg;
    return z->produced > 0;
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
    fail_msg("waiting for %s: %s (error slot: '%s'; step %zu of %zu)", what,
             f->mismatch ? f->mismatch : "deadline passed", tern_err_msg(&f->err), f->istep,
             f->nsteps);
}

static void
wait_sent(struct fx *f, struct srec *rc)
{
    wait_for(f, pred_sent, rc, rc->name);
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

static void
assert_bytes(const char *what, const char *got, size_t n, const char *exp, size_t elen)
{
    if (n == elen && memcmp(got, exp, n) == 0)
        return;
    struct tbuf a, b;
    tbuf_init(&a, 0);
    tbuf_init(&b, 0);
    esc(&a, got, n > 4000 ? 4000 : n);
    esc(&b, exp, elen > 4000 ? 4000 : elen);
    fail_msg("%s (%zu bytes):\n%s\nexpected (%zu bytes):\n%s", what, n,
             tbuf_len(&a) ? tbuf_ptr(&a) : "", elen, tbuf_len(&b) ? tbuf_ptr(&b) : "");
}

/* The client sent exactly EXP (all bytes since the connection opened). */
static void
assert_sent(struct fx *f, const char *exp)
{
    assert_bytes("the client sent", tbuf_ptr(&f->in), tbuf_len(&f->in), exp, strlen(exp));
}

static void
assert_err_has(struct fx *f, const char *needle)
{
    if (!strstr(tern_err_msg(&f->err), needle))
        fail_msg("error slot '%s' lacks '%s'", tern_err_msg(&f->err), needle);
}

static void
assert_has(const char *hay, const char *needle)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("'%s' lacks '%s'", hay ? hay : "(null)", needle);
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
    tbuf_init(&f->data, 0);
    tbuf_init(&f->trace, 0);
    tbuf_init(&f->expect_buf, 0);
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
    f->opts.security = SMTP_SEC_NONE;
    f->opts.verify = NET_VERIFY_FINGERPRINT;
    memcpy(f->opts.fingerprint, srv_fingerprint, 32);
    f->opts.mech = SASL_AUTO;
    f->opts.timeout_ms = 3000;
    smtp_limits_default(&f->opts.limits);
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    *state = f;
    return 0;
}

static int
fx_teardown(void **state)
{
    struct fx *f = *state;
    smtp_free(f->c);
    srv_close(f);
    if (f->lfd >= 0)
        close(f->lfd);
    loop_free(f->loop);
    for (size_t i = 0; i < f->nrecs; i++) {
        struct srec *rc = &f->recs[i];
        free(rc->text);
        free(rc->err);
        for (size_t k = 0; k < MAX_RCPT; k++) {
            free(rc->rtext[k]);
            free(rc->raddr[k]);
        }
    }
    free(f->mismatch);
    free(f->scratch);
    tbuf_free(&f->in);
    tbuf_free(&f->out);
    tbuf_free(&f->data);
    tbuf_free(&f->trace);
    tbuf_free(&f->expect_buf);
    tern_err_clear(&f->err);
    free(f);
    return 0;
}

static struct srec *
srec_new(struct fx *f, const char *name)
{
    assert_true(f->nrecs < sizeof(f->recs) / sizeof(f->recs[0]));
    struct srec *rc = &f->recs[f->nrecs++];
    rc->f = f;
    rc->name = name;
    rc->st = TERN_E_USAGE;
    return rc;
}

/* Creates the engine and starts smtp_open; the script runs from the greeting. */
static void
fx_start(struct fx *f, const char *greeting, const struct step *steps, size_t nsteps)
{
    f->greeting = greeting;
    f->steps = steps;
    f->nsteps = nsteps;
    assert_int_equal(smtp_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    assert_int_equal(smtp_open(f->c, on_open, f), TERN_OK);
}

static void
fx_open_ok(struct fx *f)
{
    wait_for(f, pred_flag, &f->open_done, "smtp_open");
    if (f->open_st != TERN_OK)
        fail_msg("smtp_open: %s: %s", tern_status_name(f->open_st), tern_err_msg(&f->err));
    assert_int_equal(f->open_calls, 1);
    assert_true(smtp_is_ready(f->c));
    assert_false(smtp_is_dead(f->c));
}

static void
fx_open_fails(struct fx *f, enum tern_status want)
{
    wait_for(f, pred_flag, &f->open_done, "smtp_open");
    if (f->open_st != want)
        fail_msg("smtp_open gave %s (%s), expected %s", tern_status_name(f->open_st),
                 tern_err_msg(&f->err), tern_status_name(want));
    assert_int_equal(f->open_calls, 1);
    assert_true(smtp_is_dead(f->c));
    assert_false(smtp_is_ready(f->c));
}

/* Sends a message FROM -> RCPTS (NULL-terminated) with body chunks CH. */
static struct srec *
send_msg(struct fx *f, const char *name, struct smtp_envelope *env, const struct smtp_body *body)
{
    struct srec *rc = srec_new(f, name);
    enum tern_status st = smtp_send(f->c, env, body, on_sent, rc);
    if (st)
        fail_msg("smtp_send: %s: %s", tern_status_name(st), tern_err_msg(&f->err));
    return rc;
}

static void
env_init(struct smtp_envelope *env, const char *const *rcpts, size_t n)
{
    memset(env, 0, sizeof(*env));
    env->from = "alice@example.org";
    env->rcpts = rcpts;
    env->nrcpt = n;
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

#define NSTEPS(a) (sizeof(a) / sizeof((a)[0]))

#define GREETING "220 mx.example.org ESMTP ready\r\n"
#define PLAIN_B64 "AGFsaWNlAHNlY3JldA==" /* "\0alice\0secret" */
/* A submission server with everything tern uses. */
#define EHLO_FULL                                                                                  \
    "250-mx.example.org greets localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n"                    \
    "250-SMTPUTF8\r\n250-SIZE 1000000\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n"                   \
    "250 AUTH PLAIN LOGIN\r\n"
/* An old server: no PIPELINING, no SIZE. */
#define EHLO_BASIC "250-mx.example.org\r\n250 8BITMIME\r\n"
#define EHLO_STEP(caps) S("EHLO localhost", caps)
#define FROM_LINE "MAIL FROM:<alice@example.org>"
#define BOB "bob@example.org"
#define CAROL "carol@example.org"
#define SIMPLE_BODY "Subject: hi\r\n\r\nHello.\r\n"
#define SIMPLE_WIRE SIMPLE_BODY ".\r\n"

static const char *const simple_parts[] = {SIMPLE_BODY};

/* ---- connection phases ---- */

static void
test_greeting_ehlo_auth_plain(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S("AUTH PLAIN " PLAIN_B64, "235 2.7.0 Authentication successful\r\n"),
    };
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, "220-mx.example.org ESMTP\r\n220 no UCE\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nAUTH PLAIN " PLAIN_B64 "\r\n");
    assert_true(smtp_has_ext(f->c, "pipelining"));
    assert_true(smtp_has_ext(f->c, "8BITMIME"));
    assert_true(smtp_has_ext(f->c, "SMTPUTF8"));
    assert_true(smtp_has_ext(f->c, "DSN"));
    assert_true(smtp_has_ext(f->c, "AUTH"));
    assert_false(smtp_has_ext(f->c, "STARTTLS"));
    assert_false(smtp_has_ext(f->c, "mx.example.org"));
    assert_int_equal(smtp_size_limit(f->c), 1000000);
    /* The trace shows AUTH without its credentials, and the state changes. */
    const char *tr = tbuf_ptr(&f->trace);
    assert_has(tr, "> AUTH PLAIN <secret>\n");
    assert_null(strstr(tr, PLAIN_B64));
    assert_has(tr, "< 220-mx.example.org ESMTP\n");
    assert_has(tr, "state AUTH -> READY");
}

static void
test_ehlo_name_and_legacy_auth(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("EHLO client.example.net", "250-mx\r\n250-AUTH=LOGIN\r\n250-SIZE\r\n250 STARTTLS\r\n"),
        S("AUTH LOGIN", "334 VXNlcm5hbWU6\r\n"),
        S("YWxpY2U=", "334 UGFzc3dvcmQ6\r\n"),
        S("c2VjcmV0", "235 2.7.0 ok\r\n"),
    };
    f->opts.user = "alice";
    f->opts.secret = "secret";
    f->opts.ehlo_name = "client.example.net";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    /* SIZE without a number announces no limit (RFC 1870 §4). */
    assert_int_equal(smtp_size_limit(f->c), 0);
    assert_true(smtp_has_ext(f->c, "SIZE"));
    /* The old "AUTH=" form lists LOGIN too; its password never reaches the trace. */
    const char *tr = tbuf_ptr(&f->trace);
    assert_has(tr, "> AUTH LOGIN\n< 334 VXNlcm5hbWU6\n> YWxpY2U=\n");
    assert_has(tr, "> <secret>\n");
    assert_null(strstr(tr, "c2VjcmV0"));
}

static void
test_auth_login(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 AUTH LOGIN\r\n"),
        S("AUTH LOGIN", "334 VXNlcm5hbWU6\r\n"),
        S("YWxpY2U=", "334 UGFzc3dvcmQ6\r\n"),
        S("c2VjcmV0", "235 2.7.0 Authentication successful\r\n"),
    };
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n");
}

static void
test_auth_refused(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S("AUTH PLAIN " PLAIN_B64, "535-5.7.8 Username and Password not accepted.\r\n"
                                   "535 5.7.8 Learn more at https://example.org\r\n"),
        S("QUIT", NULL),
    };
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_AUTH);
    run_for(f, 50);
    assert_script_done(f);
    assert_err_has(f, "rejected the login of alice: 535 5.7.8 Username and Password not "
                      "accepted. 5.7.8 Learn more");
    assert_null(strstr(tern_err_msg(&f->err), "secret"));
    wait_for(f, pred_peer_closed, NULL, "the close");
}

static void
test_auth_xoauth2_error_challenge(void **state)
{
    struct fx *f = *state;
    static const char xo[] = "user=alice\1auth=Bearer ya29.tok\1\1";
    tbuf_adds(&f->expect_buf, "AUTH XOAUTH2 ");
    b64(&f->expect_buf, xo, sizeof(xo) - 1);
    struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 AUTH PLAIN XOAUTH2\r\n"),
        S(tbuf_ptr(&f->expect_buf), "334 eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
        /* The error challenge is answered with an empty response. */
        S("", "535 5.7.8 Invalid credentials\r\n"),
        S("QUIT", NULL),
    };
    f->opts.user = "alice";
    f->opts.secret = "ya29.tok";
    f->opts.mech = SASL_XOAUTH2;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_AUTH);
    run_for(f, 50);
    assert_script_done(f);
    assert_err_has(f, "535 5.7.8 Invalid credentials");
    assert_null(strstr(tern_err_msg(&f->err), "ya29"));
    assert_null(strstr(tbuf_ptr(&f->trace), "ya29"));
    f->steps = NULL; /* STEPS goes out of scope */
    f->nsteps = 0;
}

static void
test_auth_oauthbearer(void **state)
{
    struct fx *f = *state;
    struct tbuf raw;
    tbuf_init(&raw, 0);
    tbuf_addf(&raw, "n,a=alice,\1host=127.0.0.1\1port=%d\1auth=Bearer ya29.tok\1\1", f->port);
    tbuf_adds(&f->expect_buf, "AUTH OAUTHBEARER ");
    b64(&f->expect_buf, tbuf_ptr(&raw), tbuf_len(&raw));
    tbuf_free(&raw);
    struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 AUTH OAUTHBEARER\r\n"),
        S(tbuf_ptr(&f->expect_buf), "334 eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n"),
        /* RFC 7628 §3.2.3: the error challenge is answered with %x01. */
        S("AQ==", "535 5.7.8 token expired\r\n"),
        S("QUIT", NULL),
    };
    f->opts.user = "alice";
    f->opts.secret = "ya29.tok";
    f->opts.mech = SASL_OAUTHBEARER;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_AUTH);
    run_for(f, 50);
    assert_script_done(f);
    assert_err_has(f, "token expired");
    f->steps = NULL;
    f->nsteps = 0;
}

static void
test_auth_mech_not_offered(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 AUTH CRAM-MD5\r\n"),
        S("QUIT", NULL),
    };
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_UNSUPPORTED);
    run_for(f, 50);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nQUIT\r\n");
}

static void
test_auth_xoauth2_not_offered(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
        S("QUIT", NULL),
    };
    f->opts.user = "alice";
    f->opts.secret = "tok";
    f->opts.mech = SASL_XOAUTH2;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_UNSUPPORTED);
    assert_err_has(f, "does not offer AUTH XOAUTH2");
}

static void
test_helo_fallback_cleartext(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("502 5.5.2 Error: command not recognized\r\n"),
        S("HELO localhost", "250 mx.example.org\r\n"),
        S(FROM_LINE, "250 ok\r\n"),
        S("RCPT TO:<" BOB ">", "250 ok\r\n"),
        SF("DATA", "354 go ahead\r\n", STEP_DATA),
        S(".", "250 queued\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_false(smtp_has_ext(f->c, "PIPELINING"));
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    env.size = 100; /* no SIZE extension: no SIZE= */
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nHELO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB
                   ">\r\nDATA\r\n" SIMPLE_WIRE);
}

static void
test_helo_refused(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("500 what\r\n"),
        S("HELO localhost", "550 go away\r\n"),
        S("QUIT", NULL),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "refused HELO: 550 go away");
}

/* ---- STARTTLS (RFC 3207) and implicit TLS (RFC 8314) ---- */

static void
test_starttls_then_auth(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-X-PRETLS\r\n250-SIZE 10\r\n250 STARTTLS\r\n"),
        SF("STARTTLS", "220 2.0.0 Ready to start TLS\r\n", STEP_STARTTLS),
        /* Over TLS: EHLO again, and only this list counts. */
        EHLO_STEP("250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n"),
        S("AUTH PLAIN " PLAIN_B64, "235 2.7.0 ok\r\n"),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nSTARTTLS\r\nEHLO localhost\r\nAUTH PLAIN " PLAIN_B64 "\r\n");
    assert_non_null(f->ssl);
    assert_false(smtp_has_ext(f->c, "X-PRETLS"));
    assert_false(smtp_has_ext(f->c, "STARTTLS"));
    assert_true(smtp_has_ext(f->c, "PIPELINING"));
    assert_int_equal(smtp_size_limit(f->c), 0);
    assert_has(tbuf_ptr(&f->trace), "state STARTTLS_HANDSHAKE -> EHLO");
}

static void
test_starttls_missing(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"),
        S("QUIT", NULL),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    /* A message queued before the failure is never sent either. */
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    fx_open_fails(f, TERN_E_TLS);
    run_for(f, 50);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nQUIT\r\n");
    assert_err_has(f, "does not offer STARTTLS");
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_TLS);
    assert_int_equal(ch.reads, 0);
}

static void
starttls_refused(struct fx *f, const char *reply, const char *text)
{
    struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"),
        S("STARTTLS", reply),
        S("QUIT", NULL),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_TLS);
    run_for(f, 50);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nSTARTTLS\r\nQUIT\r\n");
    assert_err_has(f, text);
    f->steps = NULL;
    f->nsteps = 0;
}

static void
test_starttls_454(void **state)
{
    starttls_refused(*state, "454 4.7.0 TLS not available due to local problem\r\n",
                     "refused STARTTLS (454 4.7.0 TLS not available");
}

static void
test_starttls_502(void **state)
{
    starttls_refused(*state, "502 5.5.1 Unrecognized command\r\n",
                     "refused STARTTLS (502 5.5.1 Unrecognized command)");
}

static void
test_starttls_250_is_not_a_go_ahead(void **state)
{
    starttls_refused(*state, "250 ok whatever\r\n", "refused STARTTLS (250 ok whatever)");
}

static void
test_non_esmtp_on_starttls_account(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("500 5.5.1 Command unrecognized\r\n"),
        S("QUIT", NULL),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_TLS);
    run_for(f, 100);
    assert_script_done(f);
    /* No HELO: without ESMTP there is no STARTTLS. */
    assert_sent(f, "EHLO localhost\r\nQUIT\r\n");
    assert_err_has(f, "refused EHLO (500 5.5.1 Command unrecognized)");
}

static void
test_starttls_injection(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250 STARTTLS\r\n"),
        /* Bytes after the go-ahead, in the same segment (RFC 3207 §4.2). */
        S("STARTTLS", "220 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n"),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    run_for(f, 50);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nSTARTTLS\r\n");
    assert_err_has(f, "response injection");
    /* The injected lines were never parsed as replies. */
    assert_null(strstr(tbuf_ptr(&f->trace), "< 250 AUTH PLAIN"));
}

static void
test_implicit_tls(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n"),
        S("AUTH PLAIN " PLAIN_B64, "235 ok\r\n"),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 2.0.0 queued as 1234\r\n"),
        S("QUIT", "221 bye\r\n"),
    };
    f->implicit_tls = true;
    f->opts.security = SMTP_SEC_IMPLICIT_TLS;
    f->opts.user = "alice";
    f->opts.secret = "secret";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_OK);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(a->code, 250);
    assert_string_equal(a->text, "2.0.0 queued as 1234");
    wait_for(f, pred_flag, &f->quit_done, "quit");
    assert_int_equal(f->quit_st, TERN_OK);
    assert_int_equal(f->open_st, TERN_OK);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\nAUTH PLAIN " PLAIN_B64 "\r\n" FROM_LINE "\r\nRCPT TO:<" BOB
                   ">\r\nDATA\r\n" SIMPLE_WIRE "QUIT\r\n");
    assert_true(smtp_is_dead(f->c));
}

static void
test_tls_fingerprint_mismatch(void **state)
{
    struct fx *f = *state;
    f->implicit_tls = true;
    f->opts.security = SMTP_SEC_IMPLICIT_TLS;
    f->opts.fingerprint[0] ^= 0xff;
    fx_start(f, GREETING, NULL, 0);
    fx_open_fails(f, TERN_E_TLS);
    assert_err_has(f, "fingerprint");
    assert_sent(f, "");
}

/* ---- transactions ---- */

static void
test_pipelining_batch(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        /* Nothing is answered before DATA arrives: the client must not wait. */
        S(FROM_LINE " SIZE=25", NULL),
        S("RCPT TO:<" BOB ">", NULL),
        S("RCPT TO:<" CAROL ">", NULL),
        SF("DATA", "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n", STEP_DATA),
        S(".", "250 2.0.0 Ok: queued as 4F2\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB, CAROL};
    struct smtp_envelope env;
    env_init(&env, rcpts, 2);
    env.size = 25;
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE " SIZE=25\r\nRCPT TO:<" BOB ">\r\nRCPT TO:<" CAROL
                   ">\r\nDATA\r\n" SIMPLE_WIRE);
    assert_int_equal(a->naccepted, 2);
    assert_int_equal(a->nrcpt, 2);
    assert_string_equal(a->raddr[0], BOB);
    assert_string_equal(a->raddr[1], CAROL);
    assert_int_equal(a->rcode[1], 250);
    assert_string_equal(a->rtext[1], "2.1.5 ok");
    assert_false(a->temporary);
    assert_false(a->unknown);
    assert_has(tbuf_ptr(&f->trace), "> [23 bytes of message data]\n> .\n");
}

static void
test_no_pipelining_one_at_a_time(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_BASIC),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        S("RCPT TO:<" CAROL ">", "250 ok\r\n"),
        SF("DATA", "354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB, CAROL};
    struct smtp_envelope env;
    env_init(&env, rcpts, 2);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_steps(f, 2);
    run_for(f, 100);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\n");
    srv_sends(f, "250 ok\r\n");
    wait_steps(f, 3);
    run_for(f, 100);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\n");
    srv_sends(f, "250 ok\r\n");
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nRCPT TO:<" CAROL
                   ">\r\nDATA\r\n" SIMPLE_WIRE);
}

static void
test_body_line_ends_and_dots(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    /*
     * Bare LF, bare CR, CR LF split across chunks, a "." at the start of
     * a line (also right after a chunk boundary), a line of one ".", and
     * a last line without a line end.
     */
    static const char *const parts[] = {
        "Subject: dots\n\n", ".leading\r\n", "bare cr\rnext\r", "\n",    "split\n", ".",
        "after split\n",     ".\n",          "..two\r\r\n",     "tail.", "no end",
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {parts, NSTEPS(parts), 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_script_done(f);
    static const char wire[] = "Subject: dots\r\n\r\n"
                               "..leading\r\n"
                               "bare cr\r\nnext\r\n"
                               "split\r\n"
                               "..after split\r\n"
                               "..\r\n"
                               "...two\r\n\r\n"
                               "tail.no end\r\n";
    assert_bytes("data", tbuf_ptr(&f->data), tbuf_len(&f->data), wire, strlen(wire));
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nDATA\r\n"
                   "Subject: dots\r\n\r\n"
                   "..leading\r\nbare cr\r\nnext\r\nsplit\r\n..after split\r\n..\r\n...two\r\n\r\n"
                   "tail.no end\r\n.\r\n");
}

static void
test_body_empty(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {NULL, 0, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(tbuf_len(&f->data), 0);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nDATA\r\n.\r\n");
}

/* The encoder gives the same bytes wherever the input is split. */
static void
test_data_enc_every_split(void **state)
{
    static const char *const inputs[] = {
        "a\r\n.b\n.\r.\r\n..\n", ".", "\r", "\n.", "x\r\r\n\n\r.y", "line\r\n.\r\n", "",
        "no newline at all",
    };
    for (size_t k = 0; k < NSTEPS(inputs); k++) {
        const char *in = inputs[k];
        size_t n = strlen(in);
        struct tbuf want;
        tbuf_init(&want, 0);
        ref_encode(in, n, &want);
        for (size_t i = 0; i <= n; i++) {
            for (size_t j = i; j <= n; j++) {
                struct smtp_data_enc e;
                struct tbuf got;
                tbuf_init(&got, 0);
                smtp_data_enc_init(&e);
                assert_int_equal(smtp_data_enc_add(&e, in, i, &got), TERN_OK);
                assert_int_equal(smtp_data_enc_add(&e, in + i, j - i, &got), TERN_OK);
                assert_int_equal(smtp_data_enc_add(&e, in + j, n - j, &got), TERN_OK);
                assert_int_equal(smtp_data_enc_finish(&e, &got), TERN_OK);
                assert_bytes("encoded", tbuf_ptr(&got), tbuf_len(&got), tbuf_ptr(&want),
                             tbuf_len(&want));
                assert_int_equal(e.in_bytes, n);
                assert_int_equal(e.out_bytes, tbuf_len(&want));
                tbuf_free(&got);
            }
        }
        tbuf_free(&want);
    }
    /* A full output buffer is an error, not a truncation. */
    struct smtp_data_enc e;
    struct tbuf small;
    tbuf_init(&small, 4);
    smtp_data_enc_init(&e);
    assert_int_equal(smtp_data_enc_add(&e, "abcdefgh", 8, &small), TERN_E_PROTO);
    tbuf_free(&small);
}

static void
test_body_3mb(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-PIPELINING\r\n250 SIZE 3145728\r\n"),
        S(FROM_LINE " SIZE=3145728", NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    size_t len = 3u << 20;
    char *msg = f->scratch = malloc(len);
    assert_non_null(msg);
    /* Lines of varying length with every kind of line end and leading dots. */
    uint32_t x = 12345;
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyz .,.";
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245 + 12345;
        unsigned r = (x >> 16) % 100;
        msg[i] = r < 3 ? '\n' : r < 4 ? '\r' : r < 6 ? '.' : alpha[(x >> 8) % (sizeof(alpha) - 1)];
    }
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    env.size = len;
    struct membody m = {msg, len, 0, 7919, 0, 0};
    struct smtp_body body = {mem_read, &m};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_script_done(f);
    struct tbuf want;
    tbuf_init(&want, 0);
    ref_encode(msg, len, &want);
    /* DATA holds all but the final ".\r\n". */
    assert_bytes("data", tbuf_ptr(&f->data), tbuf_len(&f->data), tbuf_ptr(&want),
                 tbuf_len(&want) - 3);
    assert_int_equal(m.pos, len);
    tbuf_free(&want);
}

static void
test_body_streamed_bounded_then_cancel(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    /* 100 MB that the server does not read: the engine must stop reading too. */
    struct lazybody z = {100u << 20, 0};
    struct smtp_body body = {lazy_read, &z};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_steps(f, 4);
    srv_stall(f, true);
    wait_for(f, pred_read_stalls, &z, "body reads");
    run_for(f, 400);
    uint64_t read1 = z.produced;
    run_for(f, 200);
    assert_true(z.produced == read1); /* no progress while the server reads nothing */
    assert_true(read1 < (48u << 20));
    assert_int_equal(a->calls, 0);
    smtp_cancel(f->c);
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_CANCELED);
    assert_false(a->unknown); /* no "." went out */
    assert_true(smtp_is_dead(f->c));
    srv_stall(f, false);
    wait_for(f, pred_peer_closed, NULL, "the close");
    /* Whatever arrived, the end of data never did. */
    assert_null(memmem(tbuf_ptr(&f->in), tbuf_len(&f->in), "\r\n.\r\n", 5));
}

static void
test_body_read_error_drops(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    static const char text[] = "line one\nline two\nline three\n";
    struct membody m = {text, sizeof(text) - 1, 0, 9, 15, 0};
    struct smtp_body body = {mem_read, &m};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_IO);
    assert_false(a->unknown);
    assert_has(a->err, "reading the message to send failed");
    assert_true(smtp_is_dead(f->c));
    wait_for(f, pred_peer_closed, NULL, "the close");
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nDATA\r\nline one\r\n");
}

static void
test_partial_rcpt_failure(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        S("RCPT TO:<nobody@example.org>", NULL),
        S("RCPT TO:<" CAROL ">", NULL),
        SF("DATA",
           "250 ok\r\n250 2.1.5 ok\r\n550-5.1.1 The email account that you tried to reach\r\n"
           "550 5.1.1 does not exist.\r\n451 4.3.0 try later\r\n354 go\r\n",
           STEP_DATA),
        S(".", "250 2.0.0 queued\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB, "nobody@example.org", CAROL};
    struct smtp_envelope env;
    env_init(&env, rcpts, 3);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_script_done(f);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(a->naccepted, 1);
    assert_int_equal(a->nrcpt, 3);
    assert_int_equal(a->rcode[0], 250);
    assert_int_equal(a->rcode[1], 550);
    assert_string_equal(a->rtext[1],
                        "5.1.1 The email account that you tried to reach\n5.1.1 does not exist.");
    assert_int_equal(a->rcode[2], 451);
    assert_string_equal(a->raddr[2], CAROL);
    assert_int_equal(a->code, 250);
    assert_string_equal(a->text, "2.0.0 queued");
}

static void
test_all_rcpt_fail_rset_then_next(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        S("RCPT TO:<" CAROL ">", NULL),
        S("DATA", "250 ok\r\n550 5.1.1 no such user\r\n450 4.2.0 mailbox busy\r\n"
                  "554 5.5.1 Error: no valid recipients\r\n"),
        S("RSET", "250 2.0.0 Ok\r\n"),
        /* The next message starts clean. */
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB, CAROL};
    struct smtp_envelope env;
    env_init(&env, rcpts, 2);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    struct smtp_envelope env2;
    env_init(&env2, rcpts, 1);
    struct chunks ch2 = {simple_parts, 1, 0, 0};
    struct smtp_body body2 = {chunks_read, &ch2};
    struct srec *b = send_msg(f, "B", &env2, &body2);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_false(a->temporary); /* one refusal was permanent */
    assert_int_equal(a->naccepted, 0);
    assert_int_equal(a->rcode[0], 550);
    assert_int_equal(a->rcode[1], 450);
    assert_has(a->err, "refused every recipient");
    assert_int_equal(ch.reads, 0);
    wait_sent(f, b);
    assert_int_equal(b->st, TERN_OK);
    assert_script_done(f);
    assert_sent(f,
                "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nRCPT TO:<" CAROL
                ">\r\nDATA\r\nRSET\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nDATA\r\n" SIMPLE_WIRE);
}

static void
test_all_rcpt_fail_without_pipelining(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_BASIC),
        S(FROM_LINE, "250 ok\r\n"),
        S("RCPT TO:<" BOB ">", "450 4.2.1 try again later\r\n"),
        S("RSET", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_true(a->temporary); /* every refusal was temporary */
    assert_int_equal(a->code, 450);
    assert_script_done(f);
    /* RFC 5321 §3.3: no DATA without an accepted recipient. */
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nRSET\r\n");
    assert_true(smtp_is_ready(f->c));
}

static void
test_data_accepted_without_recipients(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n550 no\r\n354 go ahead anyway\r\n", STEP_DATA),
        /* The client ends the empty message at once, then resets. */
        S(".", "554 5.5.1 no valid recipients\r\n"),
        S("RSET", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_int_equal(a->code, 550);
    assert_false(a->unknown);
    assert_int_equal(ch.reads, 0);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB ">\r\nDATA\r\n.\r\nRSET\r\n");
}

static void
test_mail_refused_pipelined(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        S("DATA", "553 5.7.1 Sender address rejected: not owned by user\r\n"
                  "503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need RCPT command\r\n"),
        S("RSET", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_int_equal(a->code, 553);
    assert_has(a->err, "refused the sender <alice@example.org>: 553 5.7.1");
    assert_int_equal(a->rcode[0], 503);
    assert_script_done(f);
}

static void
final_reply(struct fx *f, const char *reply, bool temporary, const char *text)
{
    struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", reply),
        S("QUIT", "221 bye\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_int_equal(a->temporary, temporary);
    assert_false(a->unknown);
    assert_int_equal(a->naccepted, 1);
    assert_has(a->err, text);
    /* The transaction is over; no RSET is needed and the connection goes on. */
    assert_true(smtp_is_ready(f->c));
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_OK);
    wait_for(f, pred_flag, &f->quit_done, "quit");
    assert_script_done(f);
    f->steps = NULL;
    f->nsteps = 0;
}

static void
test_final_451(void **state)
{
    final_reply(*state, "451 4.3.0 Temporary lookup failure\r\n", true,
                "temporary failure): 451 4.3.0 Temporary lookup failure");
}

static void
test_final_554(void **state)
{
    final_reply(*state, "554 5.7.1 Message rejected as spam\r\n", false,
                "permanent failure): 554 5.7.1 Message rejected as spam");
}

static void
test_drop_after_dot_outcome_unknown(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        SF(".", NULL, STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_script_done(f);
    assert_int_equal(a->st, TERN_E_IO);
    assert_true(a->unknown);
    assert_int_equal(a->code, 0);
    assert_has(a->err, "may or may not have taken it");
    assert_true(smtp_is_dead(f->c));
}

static void
test_drop_mid_final_reply(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        SF(".", "250-2.0.0 queued\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    /* A reply without its final line decides nothing. */
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_true(a->unknown);
    assert_has(a->err, "in the middle of a reply");
}

static void
test_timeout_final_reply(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", NULL),
    };
    f->opts.timeout_ms = 500;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    int64_t t0 = loop_now_ms();
    wait_sent(f, a);
    int64_t took = loop_now_ms() - t0;
    assert_int_equal(a->st, TERN_E_TIMEOUT);
    assert_true(a->unknown);
    assert_true(took >= 400 && took < 2500);
    assert_script_done(f);
}

/* ---- 421 and malformed replies ---- */

static void
test_421_greeting(void **state)
{
    struct fx *f = *state;
    fx_start(f, "421 4.3.2 mx.example.org Service not available, closing channel\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "closed the connection: 421 4.3.2 mx.example.org Service not available");
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_554_greeting(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("QUIT", "221 bye\r\n")};
    fx_start(f, "554 5.3.2 no service for you\r\n", steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "refused the connection: 554 5.3.2 no service for you");
    run_for(f, 50);
    /* RFC 5321 §3.1: after a 554 greeting the client says QUIT. */
    assert_sent(f, "QUIT\r\n");
}

static void
test_421_after_ehlo(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        SF("EHLO localhost", "421 4.7.0 Too many connections\r\n", STEP_CLOSE),
    };
    f->opts.security = SMTP_SEC_STARTTLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "421 4.7.0 Too many connections");
    run_for(f, 50);
    assert_sent(f, "EHLO localhost\r\n");
}

static void
test_421_after_mail(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_BASIC),
        SF(FROM_LINE, "421 4.3.2 System shutting down\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    struct srec *b = send_msg(f, "B", &env, &body);
    wait_sent(f, b);
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_true(a->temporary);
    assert_int_equal(a->code, 421);
    assert_string_equal(a->text, "4.3.2 System shutting down");
    assert_false(a->unknown);
    assert_int_equal(b->st, TERN_E_REFUSED);
    assert_true(smtp_is_dead(f->c));
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\n");
    /* Later calls name the reason. */
    struct srec *c = srec_new(f, "C");
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, c), TERN_E_IO);
    assert_err_has(f, "System shutting down");
    assert_int_equal(c->calls, 0);
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_E_IO);
}

static void
test_421_mid_body(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct lazybody z = {100u << 20, 0};
    struct smtp_body body = {lazy_read, &z};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_steps(f, 4);
    srv_sends(f, "421 4.4.2 timeout exceeded\r\n");
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_true(a->temporary);
    assert_false(a->unknown);
    assert_int_equal(a->code, 421);
}

static void
test_overlong_reply_line(void **state)
{
    struct fx *f = *state;
    f->opts.limits.line_max = 256;
    struct tbuf g;
    tbuf_init(&g, 0);
    tbuf_adds(&g, "220 ");
    for (int i = 0; i < 300; i++)
        tbuf_addc(&g, 'x');
    tbuf_adds(&g, "\r\n");
    fx_start(f, tbuf_ptr(&g), NULL, 0);
    fx_open_fails(f, TERN_E_PROTO);
    tbuf_free(&g);
    assert_err_has(f, "longer than 256 bytes");
    assert_sent(f, "");
}

static void
test_reply_line_at_limit(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {EHLO_STEP("250 mx\r\n")};
    f->opts.limits.line_max = 64;
    struct tbuf g;
    tbuf_init(&g, 0);
    tbuf_adds(&g, "220 ");
    while (tbuf_len(&g) < 64)
        tbuf_addc(&g, 'y');
    tbuf_adds(&g, "\r\n");
    fx_start(f, tbuf_ptr(&g), steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_free(&g);
}

static void
test_multiline_mixed_codes(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx.example.org\r\n250-PIPELINING\r\n251 8BITMIME\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "mixed codes (250, then 251)");
}

static void
test_reply_too_many_lines(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-a\r\n250-b\r\n250-c\r\n250-d\r\n250 e\r\n"),
    };
    f->opts.limits.reply_lines_max = 4;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "more than 4 lines");
}

static void
test_reply_too_many_bytes(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-0123456789\r\n250-0123456789\r\n250 0123456789\r\n"),
    };
    f->opts.limits.reply_bytes_max = 25;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "longer than 25 bytes");
}

static void
test_missing_final_line(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        SF("EHLO localhost", "250-mx.example.org\r\n250-PIPELINING\r\n", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "in the middle of a reply");
}

static void
malformed(struct fx *f, const char *greeting, const char *text)
{
    fx_start(f, greeting, NULL, 0);
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, text);
    run_for(f, 20);
    assert_sent(f, "");
}

static void
test_malformed_replies(void **state)
{
    struct fx *f = *state;
    malformed(f, "HTTP/1.1 400 Bad Request\r\n", "malformed reply: 'HTTP/1.1 400 Bad Request'");
}

static void
test_malformed_reply_separator(void **state)
{
    malformed(*state, "220_mx ready\r\n", "malformed reply");
}

static void
test_malformed_reply_code_range(void **state)
{
    malformed(*state, "620 mx ready\r\n", "malformed reply");
}

static void
test_malformed_reply_short(void **state)
{
    malformed(*state, "22\r\n", "malformed reply");
}

static void
test_reply_with_nul(void **state)
{
    struct fx *f = *state;
    static const char g[] = "220 mx\0evil\r\n";
    f->greeting = NULL;
    fx_start(f, NULL, NULL, 0);
    wait_for(f, pred_flag, &f->accepted, "accept");
    srv_send(f, g, sizeof(g) - 1);
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "NUL");
}

static void
test_greeting_code_only_then_unexpected_reply(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {EHLO_STEP("250\r\n")};
    fx_start(f, "220\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    /* A reply nobody asked for is a protocol error. */
    srv_sends(f, "250 surprise\r\n");
    wait_for(f, pred_peer_closed, NULL, "the close");
    assert_true(smtp_is_dead(f->c));
    assert_err_has(f, "reply nothing asked for: 250 surprise");
}

static void
test_intermediate_reply_to_mail(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_BASIC),
        S(FROM_LINE, "354 what\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_PROTO);
    assert_int_equal(ch.reads, 0);
}

/* ---- envelope ---- */

static void
test_size_limit(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP("250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"),
        /* Only the second message goes out. */
        S(FROM_LINE " SIZE=1000", NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    env.size = 5000;
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_has(a->err, "message of 5000 bytes exceeds the server's limit of 1000");
    assert_int_equal(ch.reads, 0);
    run_for(f, 50);
    assert_sent(f, "EHLO localhost\r\n");
    env.size = 1000;
    struct srec *b = send_msg(f, "B", &env, &body);
    wait_sent(f, b);
    assert_int_equal(b->st, TERN_OK);
    assert_script_done(f);
}

static void
test_address_injection_rejected(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {EHLO_STEP(EHLO_FULL)};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *rc = srec_new(f, "bad");
    struct smtp_envelope env;
    static const char *const bad_rcpts[] = {
        "bob@example.org\r\nRCPT TO:<eve@example.org>",
        "bob@example.org\nDATA",
        "bob@example.org\r",
        "bob@exa\tmple.org",
        "<bob@example.org>",
        "bob@example.org> NOTIFY=NEVER",
        "",
    };
    for (size_t i = 0; i < NSTEPS(bad_rcpts); i++) {
        const char *const one[] = {BOB, bad_rcpts[i]};
        env_init(&env, one, 2);
        tern_err_clear(&f->err);
        assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
        assert_err_has(f, "bad recipient address 2");
    }
    const char *const good[] = {BOB};
    env_init(&env, good, 1);
    env.from = "alice@example.org\r\nRCPT TO:<eve@example.org>";
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    assert_err_has(f, "bad sender address");
    env.from = NULL;
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    /* No recipient, no body. */
    env_init(&env, good, 0);
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    env_init(&env, good, 1);
    struct smtp_body nobody = {NULL, NULL};
    assert_int_equal(smtp_send(f->c, &env, &nobody, on_sent, rc), TERN_E_USAGE);
    assert_int_equal(smtp_send(f->c, &env, NULL, on_sent, rc), TERN_E_USAGE);
    /* Bad flags and DSN combinations. */
    env.flags = 1u << 7;
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    env.flags = 0;
    env.dsn_notify = SMTP_DSN_NEVER | SMTP_DSN_FAILURE;
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    env.dsn_notify = 0;
    env.dsn_envid = "";
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    env.dsn_envid = NULL;
    env.dsn_ret = (enum smtp_dsn_ret)9;
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent, rc), TERN_E_USAGE);
    run_for(f, 100);
    /* Nothing after EHLO went out, and no callback ran. */
    assert_sent(f, "EHLO localhost\r\n");
    assert_int_equal(rc->calls, 0);
    assert_int_equal(ch.reads, 0);
    assert_script_done(f);
}

static void
test_addr_check(void **state)
{
    struct tern_err err = {0};
    assert_int_equal(smtp_addr_check("a@b", 3, false, &err), TERN_OK);
    assert_int_equal(smtp_addr_check("\"john doe\"@example.org", 22, false, &err), TERN_OK);
    assert_int_equal(smtp_addr_check("j\xc3\xb6rg@example.org", 17, false, &err), TERN_OK);
    assert_int_equal(smtp_addr_check("", 0, true, &err), TERN_OK);
    assert_int_equal(smtp_addr_check("", 0, false, &err), TERN_E_USAGE);
    assert_int_equal(smtp_addr_check(NULL, 0, true, &err), TERN_E_USAGE);
    /* An embedded NUL, CR, LF, DEL or brackets. */
    assert_int_equal(smtp_addr_check("a@b\0c", 5, false, &err), TERN_E_USAGE);
    assert_non_null(strstr(tern_err_msg(&err), "0x00"));
    assert_int_equal(smtp_addr_check("a@b\rc", 5, false, &err), TERN_E_USAGE);
    assert_int_equal(smtp_addr_check("a@b\nc", 5, false, &err), TERN_E_USAGE);
    assert_int_equal(smtp_addr_check("a@b\x7f", 4, false, &err), TERN_E_USAGE);
    assert_int_equal(smtp_addr_check("a>@b", 4, false, &err), TERN_E_USAGE);
    assert_int_equal(smtp_addr_check("a<@b", 4, false, NULL), TERN_E_USAGE);
    /* Length: 254 bytes is the most. */
    char longa[300];
    memset(longa, 'a', sizeof(longa));
    assert_int_equal(smtp_addr_check(longa, 254, false, &err), TERN_OK);
    assert_int_equal(smtp_addr_check(longa, 255, false, &err), TERN_E_USAGE);
    assert_non_null(strstr(tern_err_msg(&err), "255"));
    tern_err_clear(&err);
}

static void
test_8bitmime_smtputf8_dsn(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S("MAIL FROM:<alice@example.org> BODY=8BITMIME SMTPUTF8 SIZE=42 RET=HDRS "
          "ENVID=id+2Bx+3D1+20+C3+A9",
          NULL),
        S("RCPT TO:<j\xc3\xb6rg@example.org> NOTIFY=SUCCESS,FAILURE", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
        /* The null reverse-path and NOTIFY=NEVER. */
        S("MAIL FROM:<>", NULL),
        S("RCPT TO:<" BOB "> NOTIFY=NEVER", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {"j\xc3\xb6rg@example.org"};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    env.size = 42;
    env.flags = SMTP_ENV_8BIT;
    env.dsn_ret = SMTP_DSN_RET_HDRS;
    env.dsn_notify = SMTP_DSN_SUCCESS | SMTP_DSN_FAILURE;
    env.dsn_envid = "id+x=1 \xc3\xa9";
    static const char *const parts8[] = {"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n"};
    struct chunks ch = {parts8, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    const char *const rcpts2[] = {BOB};
    struct smtp_envelope env2;
    env_init(&env2, rcpts2, 1);
    env2.from = "";
    env2.dsn_notify = SMTP_DSN_NEVER;
    struct chunks ch2 = {simple_parts, 1, 0, 0};
    struct smtp_body body2 = {chunks_read, &ch2};
    struct srec *b = send_msg(f, "B", &env2, &body2);
    wait_sent(f, b);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(b->st, TERN_OK);
    assert_script_done(f);
    assert_string_equal(smtp_env_flag_name(SMTP_ENV_8BIT), "SMTP_ENV_8BIT");
    assert_string_equal(smtp_env_flag_name(SMTP_ENV_UTF8), "SMTP_ENV_UTF8");
    assert_string_equal(smtp_env_flag_name(1u << 9), "?");
    assert_string_equal(smtp_dsn_flag_name(SMTP_DSN_DELAY), "SMTP_DSN_DELAY");
    assert_string_equal(smtp_dsn_flag_name(0), "?");
}

static void
test_extensions_missing(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        /* No 8BITMIME, SMTPUTF8 or DSN: the DSN request is left out. */
        EHLO_STEP("250-mx\r\n250 PIPELINING\r\n"),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    const char *const utf8[] = {"j\xc3\xb6rg@example.org"};
    const char *const rcpts[] = {BOB};
    struct smtp_envelope e1, e2, e3, e4;
    env_init(&e1, rcpts, 1);
    e1.flags = SMTP_ENV_8BIT;
    env_init(&e2, utf8, 1);
    env_init(&e3, rcpts, 1);
    e3.flags = SMTP_ENV_UTF8;
    env_init(&e4, rcpts, 1);
    e4.dsn_notify = SMTP_DSN_FAILURE;
    e4.dsn_ret = SMTP_DSN_RET_FULL;
    struct srec *a = send_msg(f, "A", &e1, &body);
    struct srec *b = send_msg(f, "B", &e2, &body);
    struct srec *c = send_msg(f, "C", &e3, &body);
    struct srec *d = send_msg(f, "D", &e4, &body);
    wait_sent(f, d);
    assert_int_equal(a->st, TERN_E_UNSUPPORTED);
    assert_has(a->err, "8BITMIME");
    assert_int_equal(b->st, TERN_E_UNSUPPORTED);
    assert_has(b->err, "SMTPUTF8");
    assert_int_equal(c->st, TERN_E_UNSUPPORTED);
    assert_int_equal(d->st, TERN_OK);
    assert_script_done(f);
}

static void
test_two_messages_then_quit(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),           S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),   SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 2.0.0 first\r\n"),  S(FROM_LINE, NULL),
        S("RCPT TO:<" CAROL ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 2.0.0 second\r\n"), S("QUIT", "221 2.0.0 Bye\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    /* Queued before the connection is ready: they wait for it. */
    const char *const r1[] = {BOB};
    const char *const r2[] = {CAROL};
    struct smtp_envelope e1, e2;
    env_init(&e1, r1, 1);
    env_init(&e2, r2, 1);
    static const char *const p2[] = {"Subject: two\r\n\r\n.\r\n"};
    struct chunks c1 = {simple_parts, 1, 0, 0};
    struct chunks c2 = {p2, 1, 0, 0};
    struct smtp_body b1 = {chunks_read, &c1};
    struct smtp_body b2 = {chunks_read, &c2};
    struct srec *a = send_msg(f, "A", &e1, &b1);
    struct srec *b = send_msg(f, "B", &e2, &b2);
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_OK);
    wait_for(f, pred_flag, &f->quit_done, "quit");
    assert_int_equal(f->open_st, TERN_OK);
    assert_int_equal(a->st, TERN_OK);
    assert_string_equal(a->text, "2.0.0 first");
    assert_int_equal(b->st, TERN_OK);
    assert_string_equal(b->text, "2.0.0 second");
    assert_int_equal(f->quit_st, TERN_OK);
    assert_int_equal(f->quit_calls, 1);
    assert_script_done(f);
    assert_sent(f, "EHLO localhost\r\n" FROM_LINE "\r\nRCPT TO:<" BOB
                   ">\r\nDATA\r\n" SIMPLE_WIRE FROM_LINE "\r\nRCPT TO:<" CAROL
                   ">\r\nDATA\r\nSubject: two\r\n\r\n..\r\n.\r\n"
                   "QUIT\r\n");
    assert_true(smtp_is_dead(f->c));
    wait_for(f, pred_peer_closed, NULL, "the close");
}

static void
test_quit_without_reply(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        SF("QUIT", NULL, STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_OK);
    wait_for(f, pred_flag, &f->quit_done, "quit");
    assert_int_equal(f->quit_st, TERN_OK);
    assert_true(smtp_is_dead(f->c));
}

static void
test_open_failure_fails_queued(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("QUIT", NULL)};
    fx_start(f, "554 no\r\n", steps, NSTEPS(steps));
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    assert_int_equal(smtp_quit(f->c, on_quit, f), TERN_OK);
    fx_open_fails(f, TERN_E_REFUSED);
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_int_equal(f->quit_calls, 1);
    assert_int_equal(f->quit_st, TERN_E_REFUSED);
}

static void
test_timeout_greeting(void **state)
{
    struct fx *f = *state;
    f->opts.timeout_ms = 400;
    int64_t t0 = loop_now_ms();
    fx_start(f, NULL, NULL, 0);
    fx_open_fails(f, TERN_E_TIMEOUT);
    int64_t took = loop_now_ms() - t0;
    assert_true(f->accepted);
    assert_true(took >= 300 && took < 2500);
    assert_sent(f, "");
}

static void
test_cancel_after_dot_is_unknown(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),
        S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL),
        SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", NULL),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_steps(f, 5);
    run_for(f, 20);
    smtp_cancel(f->c);
    assert_int_equal(a->calls, 1);
    assert_int_equal(a->st, TERN_E_CANCELED);
    assert_true(a->unknown);
    smtp_cancel(f->c); /* a second cancel does nothing */
    assert_int_equal(a->calls, 1);
}

static void
test_rset_refused_kills(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_BASIC),
        S(FROM_LINE, "550 no\r\n"),
        S("RSET", "502 no RSET here\r\n"),
        S("QUIT", NULL),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = send_msg(f, "A", &env, &body);
    struct srec *b = send_msg(f, "B", &env, &body);
    wait_sent(f, b);
    /* A keeps its own reason; B never ran on the confused connection. */
    assert_int_equal(a->st, TERN_E_REFUSED);
    assert_has(a->err, "refused the sender");
    assert_int_equal(b->st, TERN_E_REFUSED);
    assert_has(b->err, "refused RSET");
    run_for(f, 50);
    assert_script_done(f);
    assert_true(smtp_is_dead(f->c));
}

/* A callback that queues the next message from inside the engine. */
struct chain {
    struct fx *f;
    struct smtp_envelope *env;
    struct smtp_body *body;
    struct srec *second;
};

static void
on_sent_chain(void *aux, enum tern_status st, const struct smtp_result *r)
{
    struct chain *ch = aux;
    assert_int_equal(st, TERN_OK);
    ch->second = srec_new(ch->f, "second");
    assert_int_equal(smtp_send(ch->f->c, ch->env, ch->body, on_sent, ch->second), TERN_OK);
}

static void
test_send_from_callback(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct chunks c1 = {simple_parts, 1, 0, 0};
    struct chunks c2 = {simple_parts, 1, 0, 0};
    struct smtp_body b1 = {chunks_read, &c1};
    struct smtp_body b2 = {chunks_read, &c2};
    struct chain chain = {f, &env, &b2, NULL};
    assert_int_equal(smtp_send(f->c, &env, &b1, on_sent_chain, &chain), TERN_OK);
    wait_steps(f, 6);
    assert_non_null(chain.second);
    wait_sent(f, chain.second);
    assert_int_equal(chain.second->st, TERN_OK);
    assert_script_done(f);
}

/* 150 recipients: at most 100 commands in flight (SMTP_PIPELINE_MAX). */
#define MANY 150
#define CAP 100

static void
on_sent_count(void *aux, enum tern_status st, const struct smtp_result *r)
{
    struct srec *rc = aux;
    rc->calls++;
    rc->st = st;
    rc->nrcpt = r->nrcpt;
    rc->naccepted = r->naccepted;
    rc->code = r->rcpts[MANY - 1].code;
}

static void
test_pipeline_depth_cap(void **state)
{
    struct fx *f = *state;
    static char addrs[MANY][32];
    static char lines[MANY][48];
    static const char *rcpts[MANY];
    static struct step steps[MANY + 4];
    size_t n = 0;
    steps[n++] = (struct step)EHLO_STEP(EHLO_FULL);
    steps[n++] = (struct step)S(FROM_LINE, NULL);
    for (int i = 0; i < MANY; i++) {
        snprintf(addrs[i], sizeof(addrs[i]), "r%d@example.org", i);
        snprintf(lines[i], sizeof(lines[i]), "RCPT TO:<r%d@example.org>", i);
        rcpts[i] = addrs[i];
        steps[n++] = (struct step)S(lines[i], NULL);
    }
    steps[n++] = (struct step)SF("DATA", NULL, STEP_DATA);
    steps[n++] = (struct step)S(".", "250 ok\r\n");
    fx_start(f, GREETING, steps, n);
    fx_open_ok(f);
    struct smtp_envelope env;
    env_init(&env, rcpts, MANY);
    struct chunks ch = {simple_parts, 1, 0, 0};
    struct smtp_body body = {chunks_read, &ch};
    struct srec *a = srec_new(f, "A");
    assert_int_equal(smtp_send(f->c, &env, &body, on_sent_count, a), TERN_OK);
    /* EHLO, then MAIL and 99 RCPT: 100 in flight, and no more. */
    wait_steps(f, 1 + CAP);
    run_for(f, 100);
    assert_int_equal(f->istep, 1 + CAP);
    /* Each reply lets one more command go. */
    srv_sends(f, "250 ok\r\n250 ok\r\n");
    wait_steps(f, 1 + CAP + 2);
    run_for(f, 50);
    assert_int_equal(f->istep, 1 + CAP + 2);
    for (int i = 2; i < MANY + 1; i++)
        srv_sends(f, i == MANY ? "550 not this one\r\n" : "250 ok\r\n");
    srv_sends(f, "354 go\r\n");
    wait_sent(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(a->nrcpt, MANY);
    assert_int_equal(a->naccepted, MANY - 1);
    assert_int_equal(a->code, 550);
    assert_script_done(f);
}

/* ---- API edges ---- */

static void
test_api_edges(void **state)
{
    struct fx *f = *state;
    struct smtp_conn *c = NULL;
    struct smtp_opts o = f->opts;
    o.host = NULL;
    assert_int_equal(smtp_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    o = f->opts;
    o.user = "alice";
    o.secret = NULL;
    assert_int_equal(smtp_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    o = f->opts;
    o.ehlo_name = "evil\r\nMAIL FROM:<x>";
    assert_int_equal(smtp_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    o.ehlo_name = "";
    assert_int_equal(smtp_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    o.ehlo_name = "[127.0.0.1]";
    assert_int_equal(smtp_new(f->loop, &o, NULL, &c), TERN_OK);
    assert_false(smtp_is_ready(c));
    assert_false(smtp_is_dead(c));
    assert_false(smtp_has_ext(c, "PIPELINING"));
    assert_int_equal(smtp_size_limit(c), 0);
    smtp_free(c);
    smtp_free(NULL);

    struct smtp_limits lim;
    smtp_limits_default(&lim);
    assert_int_equal(lim.line_max, 4096);
    assert_int_equal(lim.reply_lines_max, 256);
    assert_int_equal(lim.reply_bytes_max, 65536);

    /* smtp_open twice. */
    fx_start(f, NULL, NULL, 0);
    assert_int_equal(smtp_open(f->c, on_open, f), TERN_E_USAGE);

    /* The fd source reads a pipe to its end. */
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "abc", 3), 3);
    close(p[1]);
    char buf[8];
    size_t got = 99;
    assert_int_equal(smtp_read_fd(&p[0], buf, sizeof(buf), &got), TERN_OK);
    assert_int_equal(got, 3);
    assert_memory_equal(buf, "abc", 3);
    assert_int_equal(smtp_read_fd(&p[0], buf, sizeof(buf), &got), TERN_OK);
    assert_int_equal(got, 0);
    close(p[0]);
    int bad = -1;
    assert_int_equal(smtp_read_fd(&bad, buf, sizeof(buf), &got), TERN_E_IO);
}

static void
test_send_from_fd(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        EHLO_STEP(EHLO_FULL),         S(FROM_LINE, NULL),
        S("RCPT TO:<" BOB ">", NULL), SF("DATA", "250 ok\r\n250 ok\r\n354 go\r\n", STEP_DATA),
        S(".", "250 ok\r\n"),
    };
    char path[] = "/tmp/smtp_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    static const char msg[] = "Subject: fd\n\n.dot\nend";
    assert_int_equal(write(fd, msg, sizeof(msg) - 1), (ssize_t)(sizeof(msg) - 1));
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    const char *const rcpts[] = {BOB};
    struct smtp_envelope env;
    env_init(&env, rcpts, 1);
    struct smtp_body body = {smtp_read_fd, &fd};
    struct srec *a = send_msg(f, "A", &env, &body);
    wait_sent(f, a);
    close(fd);
    assert_int_equal(a->st, TERN_OK);
    static const char wire[] = "Subject: fd\r\n\r\n..dot\r\nend\r\n";
    assert_bytes("data", tbuf_ptr(&f->data), tbuf_len(&f->data), wire, strlen(wire));
}

int
main(void)
{
    /* Both ends write with OpenSSL to sockets the other end may have closed (net.h). */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
        T(test_greeting_ehlo_auth_plain),
        T(test_ehlo_name_and_legacy_auth),
        T(test_auth_login),
        T(test_auth_refused),
        T(test_auth_xoauth2_error_challenge),
        T(test_auth_oauthbearer),
        T(test_auth_mech_not_offered),
        T(test_auth_xoauth2_not_offered),
        T(test_helo_fallback_cleartext),
        T(test_helo_refused),
        T(test_starttls_then_auth),
        T(test_starttls_missing),
        T(test_starttls_454),
        T(test_starttls_502),
        T(test_starttls_250_is_not_a_go_ahead),
        T(test_non_esmtp_on_starttls_account),
        T(test_starttls_injection),
        T(test_implicit_tls),
        T(test_tls_fingerprint_mismatch),
        T(test_pipelining_batch),
        T(test_no_pipelining_one_at_a_time),
        T(test_body_line_ends_and_dots),
        T(test_body_empty),
        T(test_data_enc_every_split),
        T(test_body_3mb),
        T(test_body_streamed_bounded_then_cancel),
        T(test_body_read_error_drops),
        T(test_partial_rcpt_failure),
        T(test_all_rcpt_fail_rset_then_next),
        T(test_all_rcpt_fail_without_pipelining),
        T(test_data_accepted_without_recipients),
        T(test_mail_refused_pipelined),
        T(test_final_451),
        T(test_final_554),
        T(test_drop_after_dot_outcome_unknown),
        T(test_drop_mid_final_reply),
        T(test_timeout_final_reply),
        T(test_421_greeting),
        T(test_554_greeting),
        T(test_421_after_ehlo),
        T(test_421_after_mail),
        T(test_421_mid_body),
        T(test_overlong_reply_line),
        T(test_reply_line_at_limit),
        T(test_multiline_mixed_codes),
        T(test_reply_too_many_lines),
        T(test_reply_too_many_bytes),
        T(test_missing_final_line),
        T(test_malformed_replies),
        T(test_malformed_reply_separator),
        T(test_malformed_reply_code_range),
        T(test_malformed_reply_short),
        T(test_reply_with_nul),
        T(test_greeting_code_only_then_unexpected_reply),
        T(test_intermediate_reply_to_mail),
        T(test_size_limit),
        T(test_address_injection_rejected),
        T(test_addr_check),
        T(test_8bitmime_smtputf8_dsn),
        T(test_extensions_missing),
        T(test_two_messages_then_quit),
        T(test_quit_without_reply),
        T(test_open_failure_fails_queued),
        T(test_timeout_greeting),
        T(test_cancel_after_dot_is_unknown),
        T(test_rset_refused_kills),
        T(test_send_from_callback),
        T(test_pipeline_depth_cap),
        T(test_api_edges),
        T(test_send_from_fd),
#undef T
    };
    return cmocka_run_group_tests_name("smtp", tests, group_setup, group_teardown);
}
