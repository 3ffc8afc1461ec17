/*
 * pop3_test.c - unit tests of the POP3 engine (proto/pop3.c) against an
 * in-process scripted peer.
 *
 * Layer: tests of proto/. The test opens a listening socket on 127.0.0.1
 * and registers it, then the accepted server-side socket, in the same
 * struct loop the engine runs in, so one thread drives both ends. The
 * scripted server records every byte the client sends (after TLS, the
 * decrypted bytes; assertions are on the exact bytes) and answers each
 * line from a script: a list of steps, each an expected line and the bytes
 * to send back. The server can switch to TLS (a self-signed certificate
 * made at start-up, which the client pins by its SHA-256), and can "drip"
 * its output in writes of 1 byte to 64 KiB. Every wait has a deadline; a
 * test never hangs.
 *
 * References: RFC 1939 (POP3), RFC 2449 (CAPA, PIPELINING, response
 * codes), RFC 2595 (STLS), RFC 3206 (SYS and AUTH response codes), RFC 5034
 * (SASL AUTH), RFC 4616 (PLAIN), RFC 7628 (OAUTHBEARER).
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
#include "pop3.h"
#include "sasl.h"
#include "tbuf.h"

#define WAIT_MS 5000 /* the deadline of every wait */
#define MAX_RECS 64

/* ---- the server's certificate, made once ---- */

static SSL_CTX *g_server_ctx;
static unsigned char g_fingerprint[32];

static int
tls_group_setup(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!key || !x)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    unsigned int mdlen = 0;
    if (!X509_sign(x, key, EVP_sha256()) || !X509_digest(x, EVP_sha256(), g_fingerprint, &mdlen) ||
        mdlen != 32)
        return -1;
    g_server_ctx = SSL_CTX_new(TLS_server_method());
    if (!g_server_ctx || SSL_CTX_use_certificate(g_server_ctx, x) != 1 ||
        SSL_CTX_use_PrivateKey(g_server_ctx, key) != 1)
        return -1;
    SSL_CTX_set_mode(g_server_ctx,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    X509_free(x);
    EVP_PKEY_free(key);
    return 0;
}

static int
tls_group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(g_server_ctx);
    g_server_ctx = NULL;
    return 0;
}

/* ---- the scripted server ---- */

enum {
    STEP_PREFIX = 1 << 0, /* EXPECT is a prefix of the line, not the whole line */
    STEP_CLOSE = 1 << 1,  /* close the connection once REPLY is written */
    STEP_TLS = 1 << 2,    /* start TLS (server side) once REPLY is written */
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

struct fx;

/* One call (pop3_open or a command) seen from the caller's side. */
struct rec {
    struct fx *f;
    const char *name;
    int calls;
    enum tern_status st;
    char *text; /* owned; NULL when the callback got NULL */
    /* STAT */
    uint32_t count;
    uint64_t octets;
    /* LIST, UIDL: deep copies */
    struct pop3_size *sizes;
    struct pop3_uid *uids;
    size_t n;
    /* the RETR sink */
    int begins, ends;
    uint32_t begin_msgno;
    bool end_ok;
    uint64_t end_size;
    struct tbuf data;
    size_t nchunks;
    enum tern_status fail_begin, fail_data;
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
    struct tbuf in;  /* every byte the client sent (decrypted after TLS) */
    size_t pos;      /* start of the first unprocessed line in IN */
    size_t nlines;   /* lines received */
    struct tbuf out; /* bytes not yet written to the client */
    bool close_after;
    bool tls_after; /* start TLS once OUT is written */
    bool tls_on_accept;
    SSL *ssl;
    bool tls_accepting, tls_done, tls_failed;
    bool accepted;
    bool srv_closed;  /* the server closed its end */
    bool peer_closed; /* the client closed its end (EOF or reset seen) */
    char *mismatch;   /* owned: why the script failed */
    /* drip mode: one write of 1 byte to 64 KiB per loop round */
    bool drip;
    uint32_t rng;
    size_t writes, min_write, max_write;

    /* client */
    struct pop3_opts opts;
    struct tern_err err;
    struct pop3_conn *c;
    struct rec *open;
    struct rec recs[MAX_RECS];
    size_t nrecs;
    struct tbuf log;   /* callbacks, in order */
    struct tbuf trace; /* the engine's protocol trace */
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

/* A deterministic generator (xorshift32), so that every run drips alike. */
static uint32_t
rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Reads from the client: -1 with errno EAGAIN when nothing is there, 0 at the end. */
static ssize_t
srv_recv(struct fx *f, char *buf, size_t cap)
{
    if (!f->ssl)
        return read(f->sfd, buf, cap);
    int n = SSL_read(f->ssl, buf, (int)cap);
    if (n > 0)
        return n;
    int e = SSL_get_error(f->ssl, n);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

static ssize_t
srv_xmit(struct fx *f, const char *buf, size_t n)
{
    if (!f->ssl)
        return send(f->sfd, buf, n, MSG_NOSIGNAL);
    int w = SSL_write(f->ssl, buf, (int)n);
    if (w > 0)
        return w;
    int e = SSL_get_error(f->ssl, w);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

/* Closes the server's end, first reading what is queued so the close is a FIN. */
static void
srv_close(struct fx *f)
{
    if (f->sfd < 0)
        return;
    char chunk[4096];
    ssize_t n;
    if (!f->tls_accepting)
        while ((n = srv_recv(f, chunk, sizeof(chunk))) > 0)
            tbuf_add(&f->in, chunk, (size_t)n);
    if (f->ssl) {
        if (f->tls_done)
            SSL_shutdown(f->ssl);
        SSL_free(f->ssl);
        f->ssl = NULL;
        ERR_clear_error();
    }
    loop_unwatch(f->sw);
    f->sw = NULL;
    close(f->sfd);
    f->sfd = -1;
    f->srv_closed = true;
}

static void srv_read(struct fx *f);
static void srv_flush(struct fx *f);

/* One step of the server's TLS handshake. */
static void
srv_tls_step(struct fx *f)
{
    int rc = SSL_accept(f->ssl);
    if (rc == 1) {
        f->tls_accepting = false;
        f->tls_done = true;
        if (f->tls_on_accept && f->greeting)
            tbuf_adds(&f->out, f->greeting);
        srv_flush(f);
        if (f->sfd >= 0)
            srv_read(f);
        return;
    }
    int e = SSL_get_error(f->ssl, rc);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        loop_watch_events(f->sw, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
        return;
    }
    f->tls_failed = true;
    f->tls_accepting = false;
    f->peer_closed = true;
    srv_close(f);
}

static void
srv_start_tls(struct fx *f)
{
    f->ssl = SSL_new(g_server_ctx);
    assert_non_null(f->ssl);
    SSL_set_fd(f->ssl, f->sfd);
    f->tls_accepting = true;
    srv_tls_step(f);
}

static void
srv_flush(struct fx *f)
{
    if (f->sfd < 0 || f->tls_accepting)
        return;
    while (tbuf_len(&f->out)) {
        size_t want = tbuf_len(&f->out);
        if (f->drip) {
            uint32_t bits = rng_next(&f->rng) % 17;
            size_t lim = 1 + rng_next(&f->rng) % ((uint32_t)1 << bits);
            if (want > lim)
                want = lim;
        }
        ssize_t n = srv_xmit(f, tbuf_ptr(&f->out), want);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n <= 0) {
            f->peer_closed = true;
            srv_close(f);
            return;
        }
        tbuf_consume(&f->out, (size_t)n);
        if (f->drip) {
            f->writes++;
            if (!f->min_write || (size_t)n < f->min_write)
                f->min_write = (size_t)n;
            if ((size_t)n > f->max_write)
                f->max_write = (size_t)n;
            break; /* one write per loop round */
        }
    }
    if (!tbuf_len(&f->out) && f->close_after) {
        srv_close(f);
        return;
    }
    if (!tbuf_len(&f->out) && f->tls_after) {
        f->tls_after = false;
        srv_start_tls(f);
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
    if (s->reply)
        assert_int_equal(
            tbuf_add(&f->out, s->reply, s->reply_len ? s->reply_len : strlen(s->reply)), TERN_OK);
    if (s->flags & STEP_CLOSE)
        f->close_after = true;
    if (s->flags & STEP_TLS)
        f->tls_after = true;
    srv_flush(f);
}

static void
srv_read(struct fx *f)
{
    while (f->sfd >= 0 && !f->tls_accepting) {
        char chunk[65536];
        ssize_t n = srv_recv(f, chunk, sizeof(chunk));
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
            if (f->sfd < 0 || f->tls_accepting)
                return;
        }
    }
}

static void
srv_on_io(void *aux, short revents)
{
    struct fx *f = aux;
    if (f->tls_accepting) {
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
    if (f->tls_on_accept)
        srv_start_tls(f);
    else if (f->greeting)
        srv_sends(f, f->greeting);
}

/* ---- client callbacks ---- */

static void
rec_note(struct rec *rc, enum tern_status st, const char *text)
{
    rc->calls++;
    rc->st = st;
    free(rc->text);
    rc->text = text ? strdup(text) : NULL;
    tbuf_addf(&rc->f->log, "done %s %s;", rc->name, tern_status_name(st));
}

static void
on_done(void *aux, enum tern_status st, const char *text)
{
    struct rec *rc = aux;
    /* A reply carries text; a failed connection (or open) none. */
    if (st == TERN_OK || (st == TERN_E_REFUSED && rc != rc->f->open))
        assert_non_null(text);
    else if (rc == rc->f->open)
        assert_null(text);
    else if (!rc->fail_begin && !rc->fail_data)
        assert_null(text);
    rec_note(rc, st, text);
}

static void
on_stat(void *aux, enum tern_status st, uint32_t count, uint64_t octets)
{
    struct rec *rc = aux;
    rc->count = count;
    rc->octets = octets;
    rec_note(rc, st, NULL);
}

static void
on_list(void *aux, enum tern_status st, const struct pop3_size *v, size_t n)
{
    struct rec *rc = aux;
    if (st)
        assert_true(v == NULL && n == 0);
    free(rc->sizes);
    rc->sizes = NULL;
    rc->n = n;
    if (n) {
        rc->sizes = malloc(n * sizeof(*v));
        assert_non_null(rc->sizes);
        memcpy(rc->sizes, v, n * sizeof(*v));
    }
    rec_note(rc, st, NULL);
}

static void
on_uidl(void *aux, enum tern_status st, const struct pop3_uid *v, size_t n)
{
    struct rec *rc = aux;
    if (st)
        assert_true(v == NULL && n == 0);
    rc->n = n;
    if (n) {
        rc->uids = calloc(n, sizeof(*v));
        assert_non_null(rc->uids);
        for (size_t i = 0; i < n; i++) {
            rc->uids[i] = v[i];
            /* The string is NUL-terminated and LEN long. */
            assert_int_equal(v[i].uid[v[i].len], '\0');
            char *copy = malloc(v[i].len + 1);
            assert_non_null(copy);
            memcpy(copy, v[i].uid, v[i].len + 1);
            rc->uids[i].uid = copy;
        }
    }
    rec_note(rc, st, NULL);
}

static enum tern_status
sink_begin(void *aux, uint32_t msgno)
{
    struct rec *rc = aux;
    tbuf_addf(&rc->f->log, "begin %s %u;", rc->name, msgno);
    if (rc->fail_begin)
        return tern_err_set(&rc->f->err, rc->fail_begin, "the test sink refused to begin");
    assert_int_equal(rc->begins, 0);
    rc->begins++;
    rc->begin_msgno = msgno;
    return TERN_OK;
}

static enum tern_status
sink_data(void *aux, const char *p, size_t n)
{
    struct rec *rc = aux;
    assert_int_equal(rc->begins, 1);
    assert_int_equal(rc->ends, 0);
    assert_true(n > 0);
    if (rc->fail_data)
        return tern_err_set(&rc->f->err, rc->fail_data, "the test sink cannot write");
    rc->nchunks++;
    return tbuf_add(&rc->data, p, n);
}

static void
sink_end(void *aux, bool ok, uint64_t size)
{
    struct rec *rc = aux;
    assert_int_equal(rc->begins, 1);
    rc->ends++;
    rc->end_ok = ok;
    rc->end_size = size;
    tbuf_addf(&rc->f->log, "end %s %s %llu;", rc->name, ok ? "ok" : "fail",
              (unsigned long long)size);
}

static void
on_trace(void *aux, bool sent, const char *line, size_t len)
{
    struct fx *f = aux;
    tbuf_adds(&f->trace, sent ? "> " : "< ");
    tbuf_add(&f->trace, line, len);
    tbuf_addc(&f->trace, '\n');
}

/* ---- running the loop ---- */

typedef bool (*pred_fn)(struct fx *f, const void *arg);

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
pred_dead(struct fx *f, const void *arg)
{
    (void)arg;
    return pop3_is_dead(f->c);
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
             tbuf_ptr(&f->log), f->istep, f->nsteps);
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

static void
assert_bytes(const char *what, const char *got, size_t n, const char *exp, size_t elen)
{
    if (n == elen && memcmp(got, exp, n) == 0)
        return;
    struct tbuf a, b;
    tbuf_init(&a, 0);
    tbuf_init(&b, 0);
    esc(&a, got, n < 4096 ? n : 4096);
    esc(&b, exp, elen < 4096 ? elen : 4096);
    fail_msg("%s (%zu bytes):\n%s\nexpected (%zu bytes):\n%s", what, n, tbuf_ptr(&a), elen,
             tbuf_ptr(&b));
}

/* The client sent exactly EXP (all bytes since the connection opened). */
static void
assert_sent(struct fx *f, const char *exp)
{
    assert_bytes("the client sent", tbuf_ptr(&f->in), tbuf_len(&f->in), exp, strlen(exp));
}

static void
assert_log(struct fx *f, const char *exp)
{
    if (strcmp(tbuf_ptr(&f->log), exp) != 0)
        fail_msg("log:\n  %s\nexpected:\n  %s", tbuf_ptr(&f->log), exp);
}

static void
assert_err_has(struct fx *f, const char *needle)
{
    if (!strstr(tern_err_msg(&f->err), needle))
        fail_msg("error slot '%s' lacks '%s'", tern_err_msg(&f->err), needle);
}

static void
assert_trace_has(struct fx *f, const char *needle)
{
    if (!strstr(tbuf_ptr(&f->trace), needle))
        fail_msg("trace lacks '%s':\n%s", needle, tbuf_ptr(&f->trace));
}

static void
assert_data(struct rec *rc, const char *exp, size_t elen)
{
    assert_bytes("the sink got", tbuf_ptr(&rc->data), tbuf_len(&rc->data), exp, elen);
}

/* ---- fixture ---- */

static int
fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->sfd = -1;
    f->rng = 2463534242u;
    tbuf_init(&f->in, 0);
    tbuf_init(&f->out, 0);
    tbuf_init(&f->log, 0);
    tbuf_init(&f->trace, 0);
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
    f->opts.security = POP3_SEC_NONE;
    f->opts.verify = NET_VERIFY_FINGERPRINT;
    memcpy(f->opts.fingerprint, g_fingerprint, sizeof(g_fingerprint));
    f->opts.user = "alice";
    f->opts.secret = "hunter2";
    f->opts.mech = SASL_AUTO;
    f->opts.timeout_ms = 2000;
    *state = f;
    return 0;
}

static int
fx_teardown(void **state)
{
    struct fx *f = *state;
    pop3_free(f->c);
    srv_close(f);
    if (f->lfd >= 0)
        close(f->lfd);
    loop_free(f->loop);
    for (size_t i = 0; i < f->nrecs; i++) {
        struct rec *rc = &f->recs[i];
        free(rc->text);
        free(rc->sizes);
        for (size_t j = 0; rc->uids && j < rc->n; j++)
            free((void *)(uintptr_t)rc->uids[j].uid);
        free(rc->uids);
        tbuf_free(&rc->data);
    }
    free(f->mismatch);
    tbuf_free(&f->in);
    tbuf_free(&f->out);
    tbuf_free(&f->log);
    tbuf_free(&f->trace);
    tern_err_clear(&f->err);
    free(f);
    return 0;
}

static struct rec *
rec_new(struct fx *f, const char *name)
{
    assert_true(f->nrecs < MAX_RECS);
    struct rec *rc = &f->recs[f->nrecs++];
    rc->f = f;
    rc->name = name;
    rc->st = TERN_E_USAGE;
    tbuf_init(&rc->data, 0);
    return rc;
}

/* Creates the engine and starts pop3_open; the script runs from the greeting. */
static void
fx_start(struct fx *f, const char *greeting, const struct step *steps, size_t nsteps)
{
    f->greeting = greeting;
    f->steps = steps;
    f->nsteps = nsteps;
    assert_int_equal(pop3_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    f->open = rec_new(f, "open");
    assert_int_equal(pop3_open(f->c, on_done, f->open), TERN_OK);
}

static void
fx_open_ok(struct fx *f)
{
    wait_called(f, f->open);
    if (f->open->st != TERN_OK)
        fail_msg("pop3_open: %s: %s", tern_status_name(f->open->st), tern_err_msg(&f->err));
    assert_int_equal(f->open->calls, 1);
    assert_true(pop3_is_ready(f->c));
    assert_false(pop3_is_dead(f->c));
}

static void
fx_open_fails(struct fx *f, enum tern_status want)
{
    wait_called(f, f->open);
    if (f->open->st != want)
        fail_msg("pop3_open gave %s (%s), expected %s", tern_status_name(f->open->st),
                 tern_err_msg(&f->err), tern_status_name(want));
    assert_int_equal(f->open->calls, 1);
    assert_true(pop3_is_dead(f->c));
    assert_false(pop3_is_ready(f->c));
}

static struct rec *
retr(struct fx *f, const char *name, uint32_t msgno)
{
    struct rec *rc = rec_new(f, name);
    struct pop3_sink sink = {sink_begin, sink_data, sink_end, rc};
    assert_int_equal(pop3_retr(f->c, msgno, &sink, on_done, rc), TERN_OK);
    return rc;
}

static struct rec *
dele(struct fx *f, const char *name, uint32_t msgno)
{
    struct rec *rc = rec_new(f, name);
    assert_int_equal(pop3_dele(f->c, msgno, on_done, rc), TERN_OK);
    return rc;
}

static struct rec *
noop(struct fx *f, const char *name)
{
    struct rec *rc = rec_new(f, name);
    assert_int_equal(pop3_noop(f->c, on_done, rc), TERN_OK);
    return rc;
}

static struct rec *
uidl(struct fx *f, const char *name)
{
    struct rec *rc = rec_new(f, name);
    assert_int_equal(pop3_uidl(f->c, on_uidl, rc), TERN_OK);
    return rc;
}

static struct rec *
stat_(struct fx *f, const char *name)
{
    struct rec *rc = rec_new(f, name);
    assert_int_equal(pop3_stat(f->c, on_stat, rc), TERN_OK);
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

/* "\0alice\0" followed by PASSWORD, in base64. */
static char *
plain_b64(const char *password)
{
    struct tbuf raw, out;
    tbuf_init(&raw, 0);
    tbuf_init(&out, 0);
    tbuf_add(&raw, "\0alice\0", 7);
    tbuf_adds(&raw, password);
    b64(&out, tbuf_ptr(&raw), tbuf_len(&raw));
    tbuf_free(&raw);
    return tbuf_take(&out);
}

/*
 * The usual start: a greeting, CAPA (with the capability lines CAPS before
 * USER), USER and PASS. Everything after it is the test's own.
 */
#define GREETING "+OK POP3 server ready <1896.697170952@dbc.mailcom.com>\r\n"
#define PRELUDE(caps)                                                                              \
    S("CAPA", "+OK Capability list follows\r\nTOP\r\nUIDL\r\n" caps "USER\r\n.\r\n"),              \
        S("USER alice", "+OK\r\n"), S("PASS hunter2", "+OK maildrop has 2 messages\r\n")
#define PRELUDE_STEPS 3
#define PRELUDE_SENT "CAPA\r\nUSER alice\r\nPASS hunter2\r\n"

#define NSTEPS(a) (sizeof(a) / sizeof((a)[0]))

/* ---- connection phases and login ---- */

static void
test_user_pass(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE("RESP-CODES\r\n")};
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT);
    assert_string_equal(f->open->text, "maildrop has 2 messages");
    /* The password never shows in the trace. */
    assert_trace_has(f, "state GREETING -> AUTH\n");
    assert_trace_has(f, "> CAPA\n< +OK Capability list follows\n< TOP\n");
    assert_trace_has(f, "> USER alice\n< +OK\n> PASS <secret>\n");
    assert_trace_has(f, "state AUTH -> READY\n");
    assert_null(strstr(tbuf_ptr(&f->trace), "hunter2"));
    assert_true(pop3_has_cap(f->c, "UIDL"));
    assert_true(pop3_has_cap(f->c, "resp-codes"));
    assert_false(pop3_has_cap(f->c, "RESP"));
    assert_false(pop3_has_cap(f->c, "PIPELINING"));
    assert_false(pop3_has_cap(f->c, ""));
    assert_false(pop3_has_cap(f->c, NULL));
    assert_false(pop3_has_sasl(f->c, "PLAIN"));
}

static void
test_no_capa_user_pass(void **state)
{
    struct fx *f = *state;
    /* An RFC 1939 server without CAPA: USER/PASS is still tried. */
    static const struct step steps[] = {
        S("CAPA", "-ERR unknown command\r\n"),
        S("USER alice", "+OK\r\n"),
        S("PASS hunter2", "+OK\r\n"),
    };
    fx_start(f, "+OK\r\n", steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT);
    assert_false(pop3_has_cap(f->c, "USER"));
    assert_string_equal(f->open->text, "");
}

static void
test_auth_plain_initial_response(void **state)
{
    struct fx *f = *state;
    /* 173 characters: "AUTH PLAIN " + 240 base64 + CR LF = 253 octets fit. */
    char pw[174];
    memset(pw, 'p', 173);
    pw[173] = '\0';
    char *enc = plain_b64(pw);
    assert_int_equal(strlen(enc), 240);
    struct tbuf line;
    tbuf_init(&line, 0);
    tbuf_addf(&line, "AUTH PLAIN %s", enc);
    struct step steps[] = {
        S("CAPA", "+OK\r\nSASL LOGIN PLAIN\r\nUSER\r\n.\r\n"),
        S(tbuf_ptr(&line), "+OK welcome\r\n"),
    };
    f->opts.secret = pw;
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    assert_int_equal(tbuf_len(&line) + 2, 253);
    struct tbuf exp;
    tbuf_init(&exp, 0);
    tbuf_addf(&exp, "CAPA\r\n%s\r\n", tbuf_ptr(&line));
    assert_sent(f, tbuf_ptr(&exp));
    tbuf_free(&exp);
    assert_true(pop3_has_sasl(f->c, "plain"));
    assert_true(pop3_has_sasl(f->c, "LOGIN"));
    assert_false(pop3_has_sasl(f->c, "PLAI"));
    assert_trace_has(f, "> AUTH PLAIN <secret>\n");
    assert_null(strstr(tbuf_ptr(&f->trace), enc));
    free(enc);
    tbuf_free(&line);
}

static void
test_auth_plain_without_initial_response(void **state)
{
    struct fx *f = *state;
    /* 174 characters: 244 base64 would make the command 257 octets
     * (RFC 2449 §4 allows 255), so the response waits for "+ ". */
    char pw[175];
    memset(pw, 'q', 174);
    pw[174] = '\0';
    char *enc = plain_b64(pw);
    struct step steps[] = {
        S("CAPA", "+OK\r\nSASL PLAIN\r\n.\r\n"),
        S("AUTH PLAIN", "+ \r\n"),
        S(enc, "+OK welcome\r\n"),
    };
    f->opts.secret = pw;
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    struct tbuf exp;
    tbuf_init(&exp, 0);
    tbuf_addf(&exp, "CAPA\r\nAUTH PLAIN\r\n%s\r\n", enc);
    assert_sent(f, tbuf_ptr(&exp));
    assert_trace_has(f, "> AUTH PLAIN\n< + \n> <secret>\n");
    assert_null(strstr(tbuf_ptr(&f->trace), enc));
    free(enc);
    tbuf_free(&exp);
}

static void
test_auth_xoauth2_error_challenge(void **state)
{
    struct fx *f = *state;
    const char *raw = "user=alice\1auth=Bearer ya29.tok\1\1";
    struct tbuf enc, line, exp;
    tbuf_init(&enc, 0);
    tbuf_init(&line, 0);
    tbuf_init(&exp, 0);
    b64(&enc, raw, strlen(raw));
    tbuf_addf(&line, "AUTH XOAUTH2 %s", tbuf_ptr(&enc));
    /* The error arrives as a challenge; "*" cancels (RFC 5034 §4). */
    struct step steps[] = {
        S("CAPA", "+OK\r\nSASL PLAIN XOAUTH2\r\n.\r\n"),
        S(tbuf_ptr(&line), "+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"),
        S("*", "-ERR [AUTH] Invalid credentials\r\n"),
    };
    f->opts.mech = SASL_XOAUTH2;
    f->opts.secret = "ya29.tok";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_AUTH);
    assert_script_done(f);
    tbuf_addf(&exp, "CAPA\r\n%s\r\n*\r\n", tbuf_ptr(&line));
    assert_sent(f, tbuf_ptr(&exp));
    assert_err_has(f, "rejected the login of alice");
    assert_err_has(f, "[AUTH] Invalid credentials");
    assert_err_has(f, "credentials were not accepted");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_true(f->peer_closed);
    tbuf_free(&enc);
    tbuf_free(&line);
    tbuf_free(&exp);
}

static void
test_auth_oauthbearer(void **state)
{
    struct fx *f = *state;
    struct tbuf raw, enc, line;
    tbuf_init(&raw, 0);
    tbuf_init(&enc, 0);
    tbuf_init(&line, 0);
    tbuf_addf(&raw, "n,a=alice,\1host=127.0.0.1\1port=%d\1auth=Bearer tok\1\1", f->port);
    b64(&enc, tbuf_ptr(&raw), tbuf_len(&raw));
    tbuf_addf(&line, "AUTH OAUTHBEARER %s", tbuf_ptr(&enc));
    struct step steps[] = {
        S("CAPA", "+OK\r\nSASL OAUTHBEARER\r\n.\r\n"),
        S(tbuf_ptr(&line), "+OK\r\n"),
    };
    f->opts.mech = SASL_OAUTHBEARER;
    f->opts.secret = "tok";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_script_done(f);
    tbuf_free(&raw);
    tbuf_free(&enc);
    tbuf_free(&line);
}

static void
test_auth_mech_not_offered(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("CAPA", "+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n")};
    f->opts.mech = SASL_XOAUTH2;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_UNSUPPORTED);
    assert_err_has(f, "does not offer SASL XOAUTH2");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_sent(f, "CAPA\r\n");
}

static void
test_user_with_line_break(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("CAPA", "+OK\r\nUSER\r\n.\r\n")};
    f->opts.user = "alice\r\nDELE 1";
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_USAGE);
    assert_err_has(f, "line break");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_sent(f, "CAPA\r\n");
}

/* The login fails at STEP with REPLY; the sentence has each of NEEDLES. */
static void
login_refused(struct fx *f, const char *user_reply, const char *pass_reply, const char *needle1,
              const char *needle2)
{
    struct step steps[] = {
        S("CAPA", "+OK\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n.\r\n"),
        S("USER alice", user_reply),
        S("PASS hunter2", pass_reply),
    };
    fx_start(f, GREETING, steps, pass_reply ? 3 : 2);
    fx_open_fails(f, TERN_E_AUTH);
    assert_script_done(f);
    assert_err_has(f, needle1);
    assert_err_has(f, needle2);
    /* The password is not in the sentence. */
    assert_null(strstr(tern_err_msg(&f->err), "hunter2"));
    run_until(f, pred_peer_closed, NULL, 500);
    assert_true(f->peer_closed);
}

static void
test_login_in_use(void **state)
{
    login_refused(*state, "+OK\r\n", "-ERR [IN-USE] Mailbox locked by another session\r\n",
                  "(PASS): [IN-USE] Mailbox locked by another session",
                  "in use by another session");
}

static void
test_login_auth_code(void **state)
{
    login_refused(*state, "+OK\r\n", "-ERR [AUTH] Authentication failed.\r\n",
                  "rejected the login of alice (PASS): [AUTH] Authentication failed.",
                  "credentials were not accepted");
}

static void
test_login_sys_temp_at_user(void **state)
{
    login_refused(*state, "-ERR [SYS/TEMP] Try again later\r\n", NULL,
                  "(USER): [SYS/TEMP] Try again later", "temporary problem");
}

static void
test_login_plain_err(void **state)
{
    login_refused(*state, "+OK\r\n", "-ERR\r\n", "(PASS): no reason given", "alice");
}

static void
test_greeting_err(void **state)
{
    struct fx *f = *state;
    fx_start(f, "-ERR Too many connections from your address\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_REFUSED);
    assert_err_has(f, "refused the connection: Too many connections from your address");
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_greeting_garbage(void **state)
{
    struct fx *f = *state;
    fx_start(f, "* OK IMAP4rev1 ready\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "no valid greeting");
    run_for(f, 50);
    assert_sent(f, "");
}

static void
test_greeting_okay_is_not_ok(void **state)
{
    struct fx *f = *state;
    /* "+OKAY" is not "+OK" followed by the end or a space. */
    fx_start(f, "+OKAY\r\n", NULL, 0);
    fx_open_fails(f, TERN_E_PROTO);
    run_for(f, 50);
    assert_sent(f, "");
}

/* ---- STLS and implicit TLS ---- */

static void
test_stls_missing(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("CAPA", "+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n")};
    f->opts.security = POP3_SEC_STLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    /* Commands queued before the login never reach the wire. */
    struct rec *r = retr(f, "R", 1);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK);
    fx_open_fails(f, TERN_E_TLS);
    assert_err_has(f, "does not offer STLS");
    assert_log(f, "done R tls;done Q tls;done open tls;");
    assert_int_equal(r->begins, 0);
    run_until(f, pred_peer_closed, NULL, 500);
    assert_true(f->peer_closed);
    assert_sent(f, "CAPA\r\n");
}

static void
test_stls_no_capa(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {S("CAPA", "-ERR What?\r\n")};
    f->opts.security = POP3_SEC_STLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_TLS);
    assert_err_has(f, "does not offer STLS");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_sent(f, "CAPA\r\n");
}

static void
test_stls_refused(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        S("CAPA", "+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
        S("STLS", "-ERR TLS not available now\r\n"),
    };
    f->opts.security = POP3_SEC_STLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_TLS);
    assert_err_has(f, "refused STLS (TLS not available now)");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_sent(f, "CAPA\r\nSTLS\r\n");
}

static void
test_stls_injection(void **state)
{
    struct fx *f = *state;
    /* RFC 2595 §4, TESTMATRIX T3: a line behind the go-ahead, in one write. */
    static const struct step steps[] = {
        S("CAPA", "+OK\r\nSTLS\r\nUSER\r\n.\r\n"),
        S("STLS", "+OK Begin TLS\r\n* injected\r\n"),
    };
    f->opts.security = POP3_SEC_STLS;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_fails(f, TERN_E_PROTO);
    assert_err_has(f, "after its TLS go-ahead");
    run_until(f, pred_peer_closed, NULL, 500);
    assert_sent(f, "CAPA\r\nSTLS\r\n");
    assert_false(f->tls_done);
}

static void
test_stls_handshake_asks_capa_again(void **state)
{
    struct fx *f = *state;
    /*
     * Before TLS the server lists SASL PLAIN and PIPELINING; over TLS it
     * lists neither. Only the second list counts: USER/PASS follows, and
     * commands are not pipelined.
     */
    static const struct step steps[] = {
        S("CAPA", "+OK\r\nSTLS\r\nSASL PLAIN\r\nPIPELINING\r\n.\r\n"),
        SF("STLS", "+OK Begin TLS negotiation now\r\n", STEP_TLS),
        S("CAPA", "+OK\r\nUSER\r\nUIDL\r\n.\r\n"),
        S("USER alice", "+OK\r\n"),
        S("PASS hunter2", "+OK\r\n"),
        S("RETR 1", "+OK\r\nover TLS\r\n.\r\n"),
        S("DELE 1", "+OK\r\n"),
        SF("QUIT", "+OK bye\r\n", STEP_CLOSE),
    };
    f->opts.security = POP3_SEC_STLS;
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_true(f->tls_done);
    assert_false(pop3_has_sasl(f->c, "PLAIN"));
    assert_false(pop3_has_cap(f->c, "PIPELINING"));
    assert_false(pop3_has_cap(f->c, "STLS"));
    assert_true(pop3_has_cap(f->c, "UIDL"));
    assert_trace_has(f, "state PRETLS -> STLS_HANDSHAKE\n< state STLS_HANDSHAKE -> AUTH\n");
    struct rec *r = retr(f, "R", 1);
    struct rec *d = dele(f, "D", 1);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK);
    wait_called(f, q);
    assert_int_equal(r->st, TERN_OK);
    assert_data(r, "over TLS\r\n", 10);
    assert_int_equal(d->st, TERN_OK);
    assert_int_equal(q->st, TERN_OK);
    assert_script_done(f);
    assert_sent(f, "CAPA\r\nSTLS\r\nCAPA\r\nUSER alice\r\nPASS hunter2\r\nRETR 1\r\nDELE 1\r\n"
                   "QUIT\r\n");
}

static void
test_implicit_tls(void **state)
{
    struct fx *f = *state;
    char *enc = plain_b64("hunter2");
    struct tbuf line;
    tbuf_init(&line, 0);
    tbuf_addf(&line, "AUTH PLAIN %s", enc);
    struct step steps[] = {
        S("CAPA", "+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n"),
        S(tbuf_ptr(&line), "+OK\r\n"),
    };
    f->opts.security = POP3_SEC_IMPLICIT_TLS;
    f->tls_on_accept = true;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    assert_true(f->tls_done);
    assert_script_done(f);
    struct tbuf exp;
    tbuf_init(&exp, 0);
    tbuf_addf(&exp, "CAPA\r\n%s\r\n", tbuf_ptr(&line));
    assert_sent(f, tbuf_ptr(&exp));
    tbuf_free(&exp);
    free(enc);
    tbuf_free(&line);
}

static void
test_implicit_tls_pin_mismatch(void **state)
{
    struct fx *f = *state;
    f->opts.security = POP3_SEC_IMPLICIT_TLS;
    f->opts.fingerprint[0] ^= 0xff;
    f->tls_on_accept = true;
    fx_start(f, GREETING, NULL, 0);
    fx_open_fails(f, TERN_E_TLS);
    assert_err_has(f, "does not match the pinned fingerprint");
    run_for(f, 50);
    assert_sent(f, "");
}

/* ---- RETR ---- */

static void
test_retr_stuffing_and_line_ends(void **state)
{
    struct fx *f = *state;
    /* RFC 1939 §3: "..x" is ".x", ".." is ".", "..." is ".."; bare LF
     * lines come out with CR LF. */
    static const struct step steps[] = {
        PRELUDE(""),
        S("RETR 1", "+OK 60 octets\r\n"
                    "Subject: dots\r\n"
                    "\r\n"
                    "..x\r\n"
                    "..\r\n"
                    "...\r\n"
                    "bare\n"
                    "lf\n"
                    "..y\n"
                    "x.\r\n"
                    " .\r\n"
                    "end\r\n"
                    ".\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *r = retr(f, "R", 1);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_OK);
    assert_string_equal(r->text, "60 octets");
    static const char exp[] = "Subject: dots\r\n\r\n.x\r\n.\r\n..\r\nbare\r\nlf\r\n.y\r\nx.\r\n"
                              " .\r\nend\r\n";
    assert_data(r, exp, sizeof(exp) - 1);
    assert_int_equal(r->end_size, sizeof(exp) - 1);
    assert_true(r->end_ok);
    assert_int_equal(r->begin_msgno, 1);
    /* The size is what arrived, not the "60 octets" the server announced. */
    struct tbuf want;
    tbuf_init(&want, 0);
    tbuf_addf(&want, "begin R 1;end R ok %zu;done R ok;", sizeof(exp) - 1);
    assert_log(f, tbuf_ptr(&want));
    tbuf_free(&want);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT "RETR 1\r\n");
}

static void
test_retr_split_terminator(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("RETR 1", "+OK\r\nabc\r\n."),
        S("RETR 2", "+OK\r\nabc\r\n."),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = retr(f, "A", 1);
    wait_steps(f, PRELUDE_STEPS + 1);
    run_for(f, 100);
    /* "\r\n." is not the end yet: the "." line may still go on. */
    assert_int_equal(a->calls, 0);
    assert_int_equal(a->ends, 0);
    srv_sends(f, "\r\n");
    wait_called(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_data(a, "abc\r\n", 5);

    /* A stuffed line split after its first dot, and a CR LF split in two. */
    struct rec *b = retr(f, "B", 2);
    wait_steps(f, PRELUDE_STEPS + 2);
    run_for(f, 50);
    srv_sends(f, ".x\r");
    run_for(f, 50);
    srv_sends(f, "\n.\r");
    run_for(f, 50);
    assert_int_equal(b->calls, 0);
    srv_sends(f, "\n");
    wait_called(f, b);
    assert_int_equal(b->st, TERN_OK);
    assert_data(b, "abc\r\n.x\r\n", 9);
    assert_int_equal(b->end_size, 9);
}

static void
test_retr_empty_message(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("RETR 2", "+OK 0 octets\r\n.\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *r = retr(f, "R", 2);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_OK);
    assert_int_equal(r->nchunks, 0);
    assert_log(f, "begin R 2;end R ok 0;done R ok;");
}

/* Appends a pseudo-random message of about SIZE bytes to MSG (CR LF lines,
 * some starting with ".", some empty, some long). */
static void
make_message(struct tbuf *msg, size_t size, uint32_t seed)
{
    uint32_t s = seed;
    while (tbuf_len(msg) < size) {
        uint32_t kind = rng_next(&s) % 16;
        size_t len = kind == 0 ? 0 : kind == 1 ? 4000 + rng_next(&s) % 6000 : rng_next(&s) % 120;
        if (kind == 2 || kind == 3)
            tbuf_addc(msg, '.');
        if (kind == 3)
            tbuf_addc(msg, '.');
        for (size_t i = 0; i < len; i++)
            tbuf_addc(msg, (char)(0x20 + rng_next(&s) % 95));
        tbuf_adds(msg, "\r\n");
    }
}

/* Dot-stuffs MSG onto WIRE (RFC 1939 §3) and adds the terminator. */
static void
stuff(struct tbuf *wire, const char *msg, size_t len)
{
    bool bol = true;
    for (size_t i = 0; i < len; i++) {
        if (bol && msg[i] == '.')
            tbuf_addc(wire, '.');
        tbuf_addc(wire, msg[i]);
        bol = msg[i] == '\n';
    }
    tbuf_adds(wire, ".\r\n");
}

static void
test_retr_3mb_in_random_writes(void **state)
{
    struct fx *f = *state;
    struct tbuf msg, wire;
    tbuf_init(&msg, 0);
    tbuf_init(&wire, 0);
    make_message(&msg, 3 * 1024 * 1024, 12345);
    tbuf_adds(&wire, "+OK message follows\r\n");
    stuff(&wire, tbuf_ptr(&msg), tbuf_len(&msg));
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "RETR 7", .reply = tbuf_ptr(&wire), .reply_len = tbuf_len(&wire)},
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    f->drip = true;
    struct rec *r = retr(f, "R", 7);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_OK);
    assert_data(r, tbuf_ptr(&msg), tbuf_len(&msg));
    assert_int_equal(r->end_size, tbuf_len(&msg));
    assert_true(r->end_ok);
    /* The server wrote from single bytes up to 64 KiB at a time ... */
    assert_int_equal(f->min_write, 1);
    assert_true(f->max_write > 32768);
    assert_true(f->writes > 200);
    /* ... and the sink got large chunks, not one call per line. */
    assert_in_range(r->nchunks, tbuf_len(&msg) / (76 * 1024), tbuf_len(&msg) / 65536 + 1);
    tbuf_free(&msg);
    tbuf_free(&wire);
}

static void
test_retr_err_keeps_connection(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("RETR 9", "-ERR no such message, only 2 messages in maildrop\r\n"),
        S("NOOP", "+OK\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *r = retr(f, "R", 9);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_E_REFUSED);
    assert_string_equal(r->text, "no such message, only 2 messages in maildrop");
    assert_err_has(f, "said -ERR to RETR 9: no such message");
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    assert_int_equal(n->st, TERN_OK);
    assert_log(f, "done R refused;done N ok;");
}

static void
test_retr_drop_mid_message(void **state)
{
    struct fx *f = *state;
    /* 100 KB arrive (more than one chunk reaches the sink), then the close. */
    struct tbuf reply;
    tbuf_init(&reply, 0);
    tbuf_adds(&reply, "+OK\r\n");
    while (tbuf_len(&reply) < 100000)
        tbuf_adds(&reply, "0123456789012345678901234567890123456789\r\n");
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "RETR 1", .reply = tbuf_ptr(&reply), .flags = STEP_CLOSE},
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *r = retr(f, "R", 1);
    struct rec *d = dele(f, "D", 1);
    wait_called(f, d);
    assert_int_equal(r->st, TERN_E_IO);
    assert_null(r->text);
    assert_int_equal(r->ends, 1);
    assert_false(r->end_ok);
    assert_true(tbuf_len(&r->data) >= 65536);
    struct tbuf want;
    tbuf_init(&want, 0);
    tbuf_addf(&want, "begin R 1;end R fail %zu;done R io;done D io;", tbuf_len(&r->data));
    assert_log(f, tbuf_ptr(&want));
    assert_err_has(f, "in the middle of message 1");
    assert_true(pop3_is_dead(f->c));
    /* DELE was never sent. */
    assert_sent(f, PRELUDE_SENT "RETR 1\r\n");
    tbuf_free(&want);
    tbuf_free(&reply);
}

static void
test_retr_drop_before_terminator_line_end(void **state)
{
    struct fx *f = *state;
    /* TESTMATRIX P2: the last line lacks its CR LF and the "." never comes. */
    static const struct step steps[] = {
        PRELUDE(""),
        SF("RETR 1", "+OK\r\nlast line", STEP_CLOSE),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *r = retr(f, "R", 1);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_E_IO);
    assert_int_equal(r->ends, 1);
    assert_false(r->end_ok);
}

static void
test_retr_message_limit(void **state)
{
    struct fx *f = *state;
    /* 1000 bytes exactly are fine; 1002 are not. */
    struct tbuf at, over, body;
    tbuf_init(&at, 0);
    tbuf_init(&over, 0);
    tbuf_init(&body, 0);
    for (int i = 0; i < 998; i++)
        tbuf_addc(&body, 'a');
    tbuf_addf(&at, "+OK\r\n%s\r\n.\r\n", tbuf_ptr(&body));
    /* An empty line is two bytes too: 1002. */
    tbuf_addf(&over, "+OK\r\n%s\r\n\r\n.\r\n", tbuf_ptr(&body));
    struct step steps[] = {
        PRELUDE(""),
        S("RETR 1", tbuf_ptr(&at)),
        S("RETR 2", tbuf_ptr(&over)),
    };
    f->opts.limits.message_max = 1000;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *a = retr(f, "A", 1);
    wait_called(f, a);
    assert_int_equal(a->st, TERN_OK);
    assert_int_equal(a->end_size, 1000);
    struct rec *b = retr(f, "B", 2);
    wait_called(f, b);
    assert_int_equal(b->st, TERN_E_PROTO);
    assert_int_equal(b->ends, 1);
    assert_false(b->end_ok);
    assert_err_has(f, "message 2 larger than the limit of 1000 bytes");
    assert_true(pop3_is_dead(f->c));
    tbuf_free(&at);
    tbuf_free(&over);
    tbuf_free(&body);
}

static void
test_retr_line_too_long(void **state)
{
    struct fx *f = *state;
    struct tbuf reply;
    tbuf_init(&reply, 0);
    tbuf_adds(&reply, "+OK\r\n");
    for (int i = 0; i < 5000; i++)
        tbuf_addc(&reply, 'L');
    tbuf_adds(&reply, "\r\n.\r\n");
    struct step steps[] = {PRELUDE(""), S("RETR 1", tbuf_ptr(&reply))};
    f->opts.limits.line_max = 1024;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *r = retr(f, "R", 1);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_E_PROTO);
    assert_err_has(f, "longer than 1024");
    assert_int_equal(r->ends, 1);
    assert_false(r->end_ok);
    tbuf_free(&reply);
}

static void
test_retr_sink_fails(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("RETR 1", "+OK\r\nsome\r\ntext\r\n.\r\n"),
        S("RETR 2", "+OK\r\nmore\r\n.\r\n"),
        S("NOOP", "+OK\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    /* DATA fails (a full disk, say): END(false) at once, the RETR gets the
     * sink's status once the message has been read to its end. */
    struct rec *a = retr(f, "A", 1);
    a->fail_data = TERN_E_IO;
    wait_called(f, a);
    assert_int_equal(a->st, TERN_E_IO);
    assert_string_equal(a->text, "");
    assert_err_has(f, "the test sink cannot write");
    /* BEGIN fails: END is never called. */
    struct rec *b = retr(f, "B", 2);
    b->fail_begin = TERN_E_NOMEM;
    wait_called(f, b);
    assert_int_equal(b->st, TERN_E_NOMEM);
    assert_int_equal(b->ends, 0);
    /* The connection is still in step. */
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    assert_int_equal(n->st, TERN_OK);
    assert_log(f, "begin A 1;end A fail 0;done A io;begin B 2;done B nomem;done N ok;");
    assert_script_done(f);
}

/* ---- UIDL, LIST, STAT ---- */

static void
test_uidl_validation(void **state)
{
    struct fx *f = *state;
    /* TESTMATRIX P1: duplicates, 70 and 71 characters, spaces, controls,
     * 8-bit bytes, NUL, empty, "/". */
    static const char reply[] =
        "+OK unique-id listing follows\r\n"
        "1 whqtswO00WBw418f9t5JxYwZ\r\n"
        "2 QhdPYR:00WBw1Ph7x7\r\n"
        "3 whqtswO00WBw418f9t5JxYwZ\r\n"
        "4 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
        "5 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
        "6 has space\r\n"
        "7 ctl\x01x\r\n"
        "8 \r\n"
        "9\r\n"
        "10 ../../etc/passwd\r\n"
        "11 caf\xc3\xa9\r\n"
        "12 nul\0x\r\n"
        "13 tab\tx\r\n"
        "14 del\x7f\r\n"
        "15 ~!\r\n"
        ".\r\n";
    struct step steps[] = {
        PRELUDE(""),
        {.expect = "UIDL", .reply = reply, .reply_len = sizeof(reply) - 1},
    };
    f->opts.trace = on_trace;
    f->opts.trace_aux = f;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *u = uidl(f, "U");
    wait_called(f, u);
    assert_int_equal(u->st, TERN_OK);
    assert_int_equal(u->n, 15);
    static const struct {
        const char *uid;
        size_t len;
        bool valid, duplicate;
    } want[] = {
        {"whqtswO00WBw418f9t5JxYwZ", 24, true, true},
        {"QhdPYR:00WBw1Ph7x7", 18, true, false},
        {"whqtswO00WBw418f9t5JxYwZ", 24, true, true},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 70, true, false},
        {"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 71, false,
         false},
        {"has space", 9, false, false},
        {"ctl\x01x", 5, false, false},
        {"", 0, false, true},
        {"", 0, false, true},
        {"../../etc/passwd", 16, true, false},
        {"caf\xc3\xa9", 5, false, false},
        {"nul\0x", 5, false, false},
        {"tab\tx", 5, false, false},
        {"del\x7f", 4, false, false},
        {"~!", 2, true, false},
    };
    for (size_t i = 0; i < 15; i++) {
        const struct pop3_uid *e = &u->uids[i];
        if (e->msgno != i + 1 || e->len != want[i].len || memcmp(e->uid, want[i].uid, e->len) ||
            e->valid != want[i].valid || e->duplicate != want[i].duplicate)
            fail_msg("entry %zu: msgno %u len %zu valid %d duplicate %d", i, e->msgno, e->len,
                     e->valid, e->duplicate);
    }
    assert_trace_has(f, "< 2 QhdPYR:00WBw1Ph7x7\n");
}

static void
test_uidl_sorted_by_msgno(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("UIDL", "+OK\r\n3 c\r\n1 a\r\n2 b\r\n.\r\n"),
        S("UIDL", "+OK\r\n.\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *u = uidl(f, "U");
    wait_called(f, u);
    assert_int_equal(u->st, TERN_OK);
    assert_int_equal(u->n, 3);
    for (uint32_t i = 0; i < 3; i++) {
        assert_int_equal(u->uids[i].msgno, i + 1);
        assert_int_equal(u->uids[i].uid[0], 'a' + (char)i);
        assert_false(u->uids[i].duplicate);
    }
    /* An empty maildrop. */
    struct rec *e = uidl(f, "E");
    wait_called(f, e);
    assert_int_equal(e->st, TERN_OK);
    assert_int_equal(e->n, 0);
}

/* A UIDL answer with LINE among good ones fails the connection. */
static void
uidl_malformed(struct fx *f, const char *reply, const char *needle)
{
    struct step steps[] = {PRELUDE(""), S("UIDL", reply)};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *u = uidl(f, "U");
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    assert_int_equal(u->st, TERN_E_PROTO);
    assert_int_equal(u->n, 0);
    assert_int_equal(n->st, TERN_E_PROTO);
    assert_err_has(f, needle);
    assert_true(pop3_is_dead(f->c));
}

static void
test_uidl_not_a_number(void **state)
{
    uidl_malformed(*state, "+OK\r\n1 a\r\nx abc\r\n.\r\n", "malformed UIDL line: 'x abc'");
}

static void
test_uidl_msgno_zero(void **state)
{
    uidl_malformed(*state, "+OK\r\n0 abc\r\n.\r\n", "malformed UIDL line");
}

static void
test_uidl_msgno_overflow(void **state)
{
    uidl_malformed(*state, "+OK\r\n4294967296 abc\r\n.\r\n", "malformed UIDL line");
}

static void
test_uidl_msgno_twice(void **state)
{
    uidl_malformed(*state, "+OK\r\n2 a\r\n1 b\r\n2 c\r\n.\r\n", "listed message 2 twice");
}

static void
test_uidl_tab_separator(void **state)
{
    uidl_malformed(*state, "+OK\r\n1\tabc\r\n.\r\n", "malformed UIDL line");
}

static void
test_listing_limit(void **state)
{
    struct fx *f = *state;
    struct tbuf reply;
    tbuf_init(&reply, 0);
    tbuf_adds(&reply, "+OK\r\n");
    for (int i = 1; i <= 200; i++)
        tbuf_addf(&reply, "%d uid-%d\r\n", i, i);
    tbuf_adds(&reply, ".\r\n");
    struct step steps[] = {PRELUDE(""), S("UIDL", tbuf_ptr(&reply))};
    f->opts.limits.listing_max = 4096;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *u = uidl(f, "U");
    wait_called(f, u);
    assert_int_equal(u->st, TERN_E_PROTO);
    assert_err_has(f, "UIDL answer larger than the limit of 4096 bytes");
    tbuf_free(&reply);
}

static void
test_list_and_stat(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("STAT", "+OK 2 320\r\n"),
        S("LIST", "+OK 2 messages (320 octets)\r\n1 120\r\n2 200 extra\r\n.\r\n"),
        S("STAT", "+OK 4294967295 18446744073709551615 and more\r\n"),
        S("RSET", "+OK maildrop has 2 messages (320 octets)\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *s = stat_(f, "S");
    struct rec *l = rec_new(f, "L");
    assert_int_equal(pop3_list(f->c, on_list, l), TERN_OK);
    struct rec *s2 = stat_(f, "S2");
    struct rec *r = rec_new(f, "R");
    assert_int_equal(pop3_rset(f->c, on_done, r), TERN_OK);
    wait_called(f, r);
    assert_int_equal(s->st, TERN_OK);
    assert_int_equal(s->count, 2);
    assert_int_equal(s->octets, 320);
    assert_int_equal(l->st, TERN_OK);
    assert_int_equal(l->n, 2);
    assert_int_equal(l->sizes[0].msgno, 1);
    assert_int_equal(l->sizes[0].size, 120);
    assert_int_equal(l->sizes[1].msgno, 2);
    assert_int_equal(l->sizes[1].size, 200);
    assert_int_equal(s2->count, UINT32_MAX);
    assert_true(s2->octets == UINT64_MAX);
    assert_int_equal(r->st, TERN_OK);
    assert_string_equal(r->text, "maildrop has 2 messages (320 octets)");
    assert_script_done(f);
}

static void
test_stat_malformed(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("STAT", "+OK two 320\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *s = stat_(f, "S");
    wait_called(f, s);
    assert_int_equal(s->st, TERN_E_PROTO);
    assert_int_equal(s->count, 0);
    assert_err_has(f, "malformed STAT reply");
    assert_true(pop3_is_dead(f->c));
}

static void
test_list_malformed(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("LIST", "+OK\r\n1 -5\r\n.\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *l = rec_new(f, "L");
    assert_int_equal(pop3_list(f->c, on_list, l), TERN_OK);
    wait_called(f, l);
    assert_int_equal(l->st, TERN_E_PROTO);
    assert_err_has(f, "malformed LIST line: '1 -5'");
}

static void
test_list_err(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("LIST", "-ERR not now\r\n"),
                                        S("NOOP", "+OK\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *l = rec_new(f, "L");
    assert_int_equal(pop3_list(f->c, on_list, l), TERN_OK);
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    assert_int_equal(l->st, TERN_E_REFUSED);
    assert_int_equal(n->st, TERN_OK);
}

/* ---- pipelining ---- */

static void
test_pipelining(void **state)
{
    struct fx *f = *state;
    /* RFC 2449 §6.6: every command goes out before the first reply. */
    static const struct step steps[] = {
        PRELUDE("PIPELINING\r\n"),
        S("RETR 1", NULL),
        S("RETR 2", NULL),
        S("DELE 1", NULL),
        S("DELE 2", NULL),
        S("STAT", "+OK\r\none\r\n.\r\n"
                  "+OK\r\n..two\r\n.\r\n"
                  "+OK deleted\r\n"
                  "-ERR message 2 already deleted\r\n"
                  "+OK 0 0\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *a = retr(f, "A", 1);
    struct rec *b = retr(f, "B", 2);
    dele(f, "C", 1);
    struct rec *d = dele(f, "D", 2);
    struct rec *s = stat_(f, "S");
    wait_called(f, s);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT "RETR 1\r\nRETR 2\r\nDELE 1\r\nDELE 2\r\nSTAT\r\n");
    assert_log(f, "begin A 1;end A ok 5;done A ok;begin B 2;end B ok 6;done B ok;"
                  "done C ok;done D refused;done S ok;");
    assert_data(a, "one\r\n", 5);
    assert_data(b, ".two\r\n", 6);
    assert_string_equal(d->text, "message 2 already deleted");
}

static void
test_pipeline_cap(void **state)
{
    struct fx *f = *state;
    struct step steps[PRELUDE_STEPS + 20] = {PRELUDE("PIPELINING\r\n")};
    for (int i = 0; i < 20; i++)
        steps[PRELUDE_STEPS + i] = (struct step)S("NOOP", i < 16 ? NULL : "+OK\r\n");
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *n[20];
    for (int i = 0; i < 20; i++)
        n[i] = noop(f, "N");
    wait_steps(f, PRELUDE_STEPS + POP3_PIPELINE_MAX);
    run_for(f, 100);
    assert_int_equal(f->nlines, PRELUDE_STEPS + POP3_PIPELINE_MAX);
    for (int i = 0; i < 16; i++)
        srv_sends(f, "+OK\r\n");
    wait_called(f, n[19]);
    for (int i = 0; i < 20; i++)
        assert_int_equal(n[i]->st, TERN_OK);
    assert_script_done(f);
}

static void
test_no_pipelining_one_at_a_time(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("RETR 1", NULL),
        S("DELE 1", "+OK\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *r = retr(f, "R", 1);
    struct rec *d = dele(f, "D", 1);
    wait_steps(f, PRELUDE_STEPS + 1);
    run_for(f, 100);
    assert_sent(f, PRELUDE_SENT "RETR 1\r\n");
    srv_sends(f, "+OK\r\nbody\r\n.\r\n");
    wait_called(f, d);
    assert_int_equal(r->st, TERN_OK);
    assert_int_equal(d->st, TERN_OK);
    assert_sent(f, PRELUDE_SENT "RETR 1\r\nDELE 1\r\n");
}

static void
test_submit_before_ready_waits(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("STAT", "+OK 1 10\r\n")};
    assert_int_equal(pop3_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    /* Queued before pop3_open even starts. */
    struct rec *s = stat_(f, "S");
    f->greeting = GREETING;
    f->steps = steps;
    f->nsteps = NSTEPS(steps);
    f->open = rec_new(f, "open");
    assert_int_equal(pop3_open(f->c, on_done, f->open), TERN_OK);
    wait_called(f, s);
    assert_int_equal(s->st, TERN_OK);
    assert_int_equal(s->count, 1);
    assert_log(f, "done open ok;done S ok;");
    assert_sent(f, PRELUDE_SENT "STAT\r\n");
}

/* ---- DELE, QUIT ---- */

static void
test_dele_err(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""),
                                        S("DELE 3", "-ERR message 3 already deleted\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *d = dele(f, "D", 3);
    wait_called(f, d);
    assert_int_equal(d->st, TERN_E_REFUSED);
    assert_string_equal(d->text, "message 3 already deleted");
    assert_err_has(f, "POP3 server 127.0.0.1 said -ERR to DELE 3: message 3 already deleted");
    assert_false(pop3_is_dead(f->c));
}

static void
test_quit(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("DELE 1", "+OK message 1 deleted\r\n"),
        S("QUIT", "+OK dewey POP3 server signing off (maildrop empty)\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    dele(f, "D", 1);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK);
    struct rec *late = noop(f, "N"); /* queued behind QUIT: never sent */
    wait_called(f, late);
    assert_int_equal(q->st, TERN_OK);
    assert_string_equal(q->text, "dewey POP3 server signing off (maildrop empty)");
    assert_log(f, "done D ok;done Q ok;done N io;");
    assert_true(pop3_is_dead(f->c));
    /* The engine closes its end after the +OK. */
    wait_for(f, pred_peer_closed, NULL, "the close after QUIT");
    assert_sent(f, PRELUDE_SENT "DELE 1\r\nQUIT\r\n");
    struct rec *after = rec_new(f, "A");
    assert_int_equal(pop3_noop(f->c, on_done, after), TERN_E_IO);
    assert_err_has(f, "ended with QUIT");
    assert_int_equal(after->calls, 0);
}

static void
test_quit_close_without_ok(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), SF("QUIT", NULL, STEP_CLOSE)};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK);
    wait_called(f, q);
    assert_int_equal(q->st, TERN_E_IO);
    assert_err_has(f, "without answering QUIT");
}

static void
test_quit_err(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE(""),
        S("QUIT", "-ERR some deleted messages not removed\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK);
    wait_called(f, q);
    assert_int_equal(q->st, TERN_E_REFUSED);
    assert_err_has(f, "said -ERR to QUIT: some deleted messages not removed");
    assert_true(pop3_is_dead(f->c));
    wait_for(f, pred_peer_closed, NULL, "the close after QUIT");
}

/* ---- failures ---- */

static void
test_timeout(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("NOOP", NULL)};
    f->opts.timeout_ms = 500;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    int64_t t0 = loop_now_ms();
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    int64_t took = loop_now_ms() - t0;
    assert_int_equal(n->st, TERN_E_TIMEOUT);
    assert_in_range(took, 400, 2000);
    assert_err_has(f, "did not answer");
    assert_true(pop3_is_dead(f->c));
    wait_for(f, pred_peer_closed, NULL, "the close after the timeout");
}

static void
test_timeout_greeting(void **state)
{
    struct fx *f = *state;
    f->opts.timeout_ms = 500;
    int64_t t0 = loop_now_ms();
    fx_start(f, NULL, NULL, 0);
    fx_open_fails(f, TERN_E_TIMEOUT);
    assert_in_range(loop_now_ms() - t0, 400, 2000);
    assert_true(f->accepted);
    assert_sent(f, "");
}

static void
test_timeout_mid_retr(void **state)
{
    struct fx *f = *state;
    /* The server stalls in the middle of a message. */
    static const struct step steps[] = {PRELUDE(""), S("RETR 1", "+OK\r\nhalf a message\r\n")};
    f->opts.timeout_ms = 500;
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *r = retr(f, "R", 1);
    wait_called(f, r);
    assert_int_equal(r->st, TERN_E_TIMEOUT);
    assert_int_equal(r->ends, 1);
    assert_false(r->end_ok);
}

static void
test_garbage_reply(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE(""), S("NOOP", "OK fine\r\n")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    struct rec *n = noop(f, "N");
    wait_called(f, n);
    assert_int_equal(n->st, TERN_E_PROTO);
    assert_err_has(f, "malformed reply to NOOP: 'OK fine'");
    assert_true(pop3_is_dead(f->c));
    wait_for(f, pred_peer_closed, NULL, "the close");
}

static void
test_unsolicited_line(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {PRELUDE("")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    srv_sends(f, "+OK surprise\r\n");
    wait_for(f, pred_dead, NULL, "the engine to fail");
    assert_err_has(f, "a line no command asked for: '+OK surprise'");
    struct rec *n = rec_new(f, "N");
    assert_int_equal(pop3_noop(f->c, on_done, n), TERN_E_IO);
    assert_err_has(f, "is closed: ");
    assert_err_has(f, "no command asked for");
    assert_int_equal(n->calls, 0);
}

static void
test_cancel(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE("PIPELINING\r\n"),
        S("RETR 1", "+OK\r\nfirst line\r\n"),
        S("DELE 1", NULL),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *r = retr(f, "R", 1);
    dele(f, "D", 1);
    struct rec *q = rec_new(f, "Q");
    assert_int_equal(pop3_quit(f->c, on_done, q), TERN_OK); /* still queued */
    wait_steps(f, PRELUDE_STEPS + 2);
    run_for(f, 50);
    assert_int_equal(r->begins, 1);
    pop3_cancel(f->c);
    /* Synchronously, in order: in flight first, then queued. */
    assert_log(f, "begin R 1;end R fail 0;done R canceled;done D canceled;done Q canceled;");
    assert_true(pop3_is_dead(f->c));
    assert_err_has(f, "canceled");
    pop3_cancel(f->c); /* twice is harmless */
    /* A late reply changes nothing; the server sees the close. */
    srv_sends(f, ".\r\n+OK\r\n");
    wait_for(f, pred_peer_closed, NULL, "the close after the cancel");
    run_for(f, 50);
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->ends, 1);
    assert_err_has(f, "canceled");
}

static void
cancel_on_done(void *aux, enum tern_status st, const char *text)
{
    struct rec *rc = aux;
    on_done(aux, st, text);
    pop3_cancel(rc->f->c);
}

static void
test_cancel_from_callback(void **state)
{
    struct fx *f = *state;
    static const struct step steps[] = {
        PRELUDE("PIPELINING\r\n"),
        S("NOOP", NULL),
        S("NOOP", "+OK one\r\n+OK two\r\n"),
    };
    fx_start(f, GREETING, steps, NSTEPS(steps));
    fx_open_ok(f);
    tbuf_reset(&f->log);
    struct rec *a = rec_new(f, "A");
    assert_int_equal(pop3_noop(f->c, cancel_on_done, a), TERN_OK);
    struct rec *b = noop(f, "B");
    wait_called(f, b);
    assert_log(f, "done A ok;done B canceled;");
    assert_true(pop3_is_dead(f->c));
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
    assert_int_equal(pop3_new(f->loop, &f->opts, &f->err, &f->c), TERN_OK);
    f->open = rec_new(f, "open");
    enum tern_status st = pop3_open(f->c, on_done, f->open);
    if (st == TERN_OK) {
        fx_open_fails(f, TERN_E_IO);
    } else {
        assert_int_equal(st, TERN_E_IO);
        assert_int_equal(f->open->calls, 0);
        assert_true(pop3_is_dead(f->c));
    }
    assert_err_has(f, "cannot connect");
}

/* ---- API edges ---- */

static void
test_api_edges(void **state)
{
    struct fx *f = *state;
    pop3_free(NULL);
    struct pop3_limits lim;
    pop3_limits_default(&lim);
    pop3_limits_default(NULL);
    assert_int_equal(lim.line_max, POP3_LINE_MAX_DEFAULT);
    assert_true(lim.message_max == (uint64_t)1 << 30);
    assert_int_equal(lim.listing_max, POP3_LISTING_MAX_DEFAULT);
    struct pop3_conn *c = NULL;
    struct pop3_opts o = f->opts;
    o.host = NULL;
    assert_int_equal(pop3_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    o = f->opts;
    o.secret = NULL;
    assert_int_equal(pop3_new(f->loop, &o, &f->err, &c), TERN_E_USAGE);
    assert_null(c);

    static const struct step steps[] = {PRELUDE("")};
    fx_start(f, GREETING, steps, NSTEPS(steps));
    assert_int_equal(pop3_open(f->c, on_done, f->open), TERN_E_USAGE);
    assert_false(pop3_is_ready(f->c));
    struct rec *rc = rec_new(f, "X");
    struct pop3_sink sink = {sink_begin, sink_data, sink_end, rc};
    struct pop3_sink half = {sink_begin, NULL, sink_end, rc};
    assert_int_equal(pop3_retr(f->c, 0, &sink, on_done, rc), TERN_E_USAGE);
    assert_int_equal(pop3_retr(f->c, 1, NULL, on_done, rc), TERN_E_USAGE);
    assert_int_equal(pop3_retr(f->c, 1, &half, on_done, rc), TERN_E_USAGE);
    assert_int_equal(pop3_retr(f->c, 1, &sink, NULL, rc), TERN_E_USAGE);
    assert_int_equal(pop3_dele(f->c, 0, on_done, rc), TERN_E_USAGE);
    assert_int_equal(pop3_noop(f->c, NULL, rc), TERN_E_USAGE);
    assert_int_equal(pop3_stat(f->c, NULL, rc), TERN_E_USAGE);
    assert_int_equal(pop3_list(f->c, NULL, rc), TERN_E_USAGE);
    assert_int_equal(pop3_uidl(f->c, NULL, rc), TERN_E_USAGE);
    fx_open_ok(f);
    assert_int_equal(pop3_open(f->c, on_done, f->open), TERN_E_USAGE);
    assert_int_equal(f->open->calls, 1);
    assert_int_equal(rc->calls, 0);
    assert_script_done(f);
    assert_sent(f, PRELUDE_SENT);
}

int
main(void)
{
    /* The TLS server side writes with SSL_write, which can raise SIGPIPE;
     * tern's front ends ignore it too. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
        T(test_user_pass),
        T(test_no_capa_user_pass),
        T(test_auth_plain_initial_response),
        T(test_auth_plain_without_initial_response),
        T(test_auth_xoauth2_error_challenge),
        T(test_auth_oauthbearer),
        T(test_auth_mech_not_offered),
        T(test_user_with_line_break),
        T(test_login_in_use),
        T(test_login_auth_code),
        T(test_login_sys_temp_at_user),
        T(test_login_plain_err),
        T(test_greeting_err),
        T(test_greeting_garbage),
        T(test_greeting_okay_is_not_ok),
        T(test_stls_missing),
        T(test_stls_no_capa),
        T(test_stls_refused),
        T(test_stls_injection),
        T(test_stls_handshake_asks_capa_again),
        T(test_implicit_tls),
        T(test_implicit_tls_pin_mismatch),
        T(test_retr_stuffing_and_line_ends),
        T(test_retr_split_terminator),
        T(test_retr_empty_message),
        T(test_retr_3mb_in_random_writes),
        T(test_retr_err_keeps_connection),
        T(test_retr_drop_mid_message),
        T(test_retr_drop_before_terminator_line_end),
        T(test_retr_message_limit),
        T(test_retr_line_too_long),
        T(test_retr_sink_fails),
        T(test_uidl_validation),
        T(test_uidl_sorted_by_msgno),
        T(test_uidl_not_a_number),
        T(test_uidl_msgno_zero),
        T(test_uidl_msgno_overflow),
        T(test_uidl_msgno_twice),
        T(test_uidl_tab_separator),
        T(test_listing_limit),
        T(test_list_and_stat),
        T(test_stat_malformed),
        T(test_list_malformed),
        T(test_list_err),
        T(test_pipelining),
        T(test_pipeline_cap),
        T(test_no_pipelining_one_at_a_time),
        T(test_submit_before_ready_waits),
        T(test_dele_err),
        T(test_quit),
        T(test_quit_close_without_ok),
        T(test_quit_err),
        T(test_timeout),
        T(test_timeout_greeting),
        T(test_timeout_mid_retr),
        T(test_garbage_reply),
        T(test_unsolicited_line),
        T(test_cancel),
        T(test_cancel_from_callback),
        T(test_connection_refused),
        T(test_api_edges),
#undef T
    };
    return cmocka_run_group_tests_name("pop3", tests, tls_group_setup, tls_group_teardown);
}
