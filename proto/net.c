/*
 * net.c - TCP + TLS + DEFLATE transport (see net.h).
 *
 * Layer: proto/. Includes libc, OpenSSL, zlib and proto headers only.
 *
 * States: RESOLVED -> CONNECTING -> OPEN [-> HANDSHAKE -> OPEN(tls)] -> DEAD.
 * Every failure moves to DEAD and reports NET_EV_ERROR once.
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <zlib.h>

#include "tbuf.h"

enum net_state {
    NET_ST_IDLE,
    NET_ST_CONNECTING,
    NET_ST_OPEN,
    NET_ST_HANDSHAKE,
    NET_ST_DEAD,
};

struct net_conn {
    struct loop *loop;
    struct net_opts opts;
    net_event_fn fn;
    void *aux;
    struct tern_err *err; /* borrowed */

    enum net_state state;
    int fd;
    struct loop_watch *watch;
    struct loop_timer *timer;
    struct addrinfo *addrs, *next_addr;
    int last_errno;

    SSL_CTX *ctx;
    SSL *ssl;
    bool ssl_read_wants_write;
    bool ssl_write_wants_read;
    char tls_desc[128];

    bool want_write;

    bool deflate;
    z_stream zin, zout;
    struct tbuf zraw;     /* compressed bytes read, not yet inflated */
    struct tbuf zpending; /* compressed bytes not yet written */
};

static void net_update_events(struct net_conn *c);
static void net_on_fd(void *aux, short revents);

static void
net_fail(struct net_conn *c, enum tern_status st)
{
    if (c->state == NET_ST_DEAD)
        return;
    c->state = NET_ST_DEAD;
    loop_timer_cancel(c->timer);
    c->timer = NULL;
    loop_unwatch(c->watch);
    c->watch = NULL;
    c->fn(c->aux, NET_EV_ERROR, st);
}

enum tern_status
net_new(struct loop *loop, const struct net_opts *opts, net_event_fn fn, void *aux,
        struct tern_err *err, struct net_conn **out)
{
    struct net_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return TERN_E_NOMEM;
    c->loop = loop;
    c->opts = *opts;
    c->fn = fn;
    c->aux = aux;
    c->err = err;
    c->fd = -1;
    tbuf_init(&c->zraw, 0);
    tbuf_init(&c->zpending, 0);
    *out = c;
    return TERN_OK;
}

void
net_free(struct net_conn *c)
{
    if (!c)
        return;
    loop_timer_cancel(c->timer);
    loop_unwatch(c->watch);
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    if (c->addrs)
        freeaddrinfo(c->addrs);
    if (c->deflate) {
        inflateEnd(&c->zin);
        deflateEnd(&c->zout);
    }
    tbuf_free(&c->zraw);
    tbuf_free(&c->zpending);
    free(c);
}

void
net_close(struct net_conn *c)
{
    c->state = NET_ST_DEAD;
    loop_timer_cancel(c->timer);
    c->timer = NULL;
    loop_unwatch(c->watch);
    c->watch = NULL;
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

struct loop *
net_loop(const struct net_conn *c)
{
    return c->loop;
}

bool
net_is_tls(const struct net_conn *c)
{
    return c->ssl != NULL && c->state == NET_ST_OPEN;
}

const char *
net_tls_desc(const struct net_conn *c)
{
    return c->tls_desc;
}

static void
net_on_timeout(void *aux)
{
    struct net_conn *c = aux;
    c->timer = NULL;
    if (c->state == NET_ST_CONNECTING)
        tern_err_set(c->err, TERN_E_TIMEOUT, "connecting to %s port %d timed out", c->opts.host,
                     c->opts.port);
    else
        tern_err_set(c->err, TERN_E_TIMEOUT, "TLS handshake with %s timed out", c->opts.host);
    net_fail(c, TERN_E_TIMEOUT);
}

/* Starts a non-blocking connect to the next address; false when none is left. */
static bool
net_try_next(struct net_conn *c)
{
    while (c->next_addr) {
        struct addrinfo *ai = c->next_addr;
        c->next_addr = ai->ai_next;
        if (c->fd >= 0) {
            loop_unwatch(c->watch);
            c->watch = NULL;
            close(c->fd);
            c->fd = -1;
        }
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            c->last_errno = errno;
            continue;
        }
        c->fd = fd;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            c->last_errno = errno;
            continue;
        }
        if (loop_watch(c->loop, fd, POLLOUT, net_on_fd, c, &c->watch)) {
            c->last_errno = ENOMEM;
            return false;
        }
        return true;
    }
    return false;
}

enum tern_status
net_connect(struct net_conn *c)
{
    char port[16];
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", c->opts.port);
    int rc = getaddrinfo(c->opts.host, port, &hints, &c->addrs);
    if (rc != 0)
        return tern_err_set(c->err, TERN_E_IO, "cannot resolve host %s: %s", c->opts.host,
                            gai_strerror(rc));
    c->next_addr = c->addrs;
    c->state = NET_ST_CONNECTING;
    if (c->opts.connect_timeout_ms > 0 &&
        loop_timer_add(c->loop, c->opts.connect_timeout_ms, net_on_timeout, c, &c->timer))
        return TERN_E_NOMEM;
    if (!net_try_next(c)) {
        c->state = NET_ST_DEAD;
        loop_timer_cancel(c->timer);
        c->timer = NULL;
        return tern_err_set(c->err, TERN_E_IO, "cannot connect to %s port %d: %s", c->opts.host,
                            c->opts.port, strerror(c->last_errno));
    }
    return TERN_OK;
}

static void
net_on_connected(struct net_conn *c)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr) {
        c->last_errno = soerr;
        if (net_try_next(c))
            return;
        tern_err_set(c->err, TERN_E_IO, "cannot connect to %s port %d: %s", c->opts.host,
                     c->opts.port, strerror(c->last_errno));
        net_fail(c, TERN_E_IO);
        return;
    }
    loop_timer_cancel(c->timer);
    c->timer = NULL;
    /*
     * Commands are small and pipelined: Nagle's algorithm would hold each
     * write back until the previous one is acknowledged (40 ms per message
     * with delayed ACKs, e.g. an SMTP body and its final ".").
     */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->state = NET_ST_OPEN;
    net_update_events(c);
    c->fn(c->aux, NET_EV_CONNECTED, TERN_OK);
}

/* Collects OpenSSL's error queue into one sentence fragment. */
static void
tls_error_text(char *buf, size_t cap)
{
    unsigned long e = ERR_get_error();
    if (!e) {
        snprintf(buf, cap, "%s", errno ? strerror(errno) : "no details from OpenSSL");
        return;
    }
    ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
}

static enum tern_status
net_tls_verify_pin(struct net_conn *c)
{
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    if (!cert)
        return tern_err_set(c->err, TERN_E_TLS, "%s sent no certificate", c->opts.host);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = X509_digest(cert, EVP_sha256(), md, &mdlen);
    X509_free(cert);
    if (!ok || mdlen != 32)
        return tern_err_set(c->err, TERN_E_TLS, "cannot compute the certificate fingerprint");
    if (memcmp(md, c->opts.fingerprint, 32) != 0) {
        char hex[65];
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        return tern_err_set(c->err, TERN_E_TLS,
                            "certificate of %s does not match the pinned fingerprint "
                            "(it is sha256:%s)",
                            c->opts.host, hex);
    }
    return TERN_OK;
}

static void
net_handshake_step(struct net_conn *c)
{
    ERR_clear_error();
    int rc = SSL_connect(c->ssl);
    if (rc == 1) {
        if (c->opts.verify == NET_VERIFY_FINGERPRINT) {
            enum tern_status st = net_tls_verify_pin(c);
            if (st) {
                net_fail(c, st);
                return;
            }
        }
        loop_timer_cancel(c->timer);
        c->timer = NULL;
        snprintf(c->tls_desc, sizeof(c->tls_desc), "%s %s", SSL_get_version(c->ssl),
                 SSL_get_cipher_name(c->ssl));
        c->state = NET_ST_OPEN;
        net_update_events(c);
        c->fn(c->aux, NET_EV_TLS_DONE, TERN_OK);
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        loop_watch_events(c->watch, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
        return;
    }
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK) {
        tern_err_set(c->err, TERN_E_TLS, "certificate of %s not trusted: %s", c->opts.host,
                     X509_verify_cert_error_string(vr));
    } else {
        char buf[256];
        tls_error_text(buf, sizeof(buf));
        tern_err_set(c->err, TERN_E_TLS, "TLS handshake with %s failed: %s", c->opts.host, buf);
    }
    net_fail(c, TERN_E_TLS);
}

static bool
is_ip_literal(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

enum tern_status
net_start_tls(struct net_conn *c)
{
    if (c->state != NET_ST_OPEN || c->ssl)
        return tern_err_set(c->err, TERN_E_TLS, "TLS started on a connection that is not open");
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        return TERN_E_NOMEM;
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (c->opts.verify == NET_VERIFY_CHAIN) {
        if (SSL_CTX_set_default_verify_paths(c->ctx) != 1)
            return tern_err_set(c->err, TERN_E_TLS, "cannot load the system CA store");
        if (c->opts.ca_file && SSL_CTX_load_verify_locations(c->ctx, c->opts.ca_file, NULL) != 1) {
            ERR_clear_error();
            return tern_err_set(c->err, TERN_E_TLS, "cannot load tls_ca_file %s", c->opts.ca_file);
        }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl)
        return TERN_E_NOMEM;
    SSL_set_fd(c->ssl, c->fd);
    bool ip = is_ip_literal(c->opts.host);
    if (!ip) {
        /* SNI (RFC 6066 §3); the macro wants a non-const pointer. */
        char *sni = strdup(c->opts.host);
        if (!sni)
            return TERN_E_NOMEM;
        SSL_set_tlsext_host_name(c->ssl, sni);
        free(sni);
    }
    if (c->opts.verify == NET_VERIFY_CHAIN) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->opts.host)
                    : SSL_set1_host(c->ssl, c->opts.host);
        if (ok != 1)
            return tern_err_set(c->err, TERN_E_TLS, "cannot set the host name to verify");
    }
    c->state = NET_ST_HANDSHAKE;
    if (c->opts.connect_timeout_ms > 0 &&
        loop_timer_add(c->loop, c->opts.connect_timeout_ms, net_on_timeout, c, &c->timer))
        return TERN_E_NOMEM;
    net_handshake_step(c);
    return TERN_OK;
}

enum tern_status
net_start_deflate(struct net_conn *c)
{
    if (c->deflate)
        return TERN_OK;
    memset(&c->zin, 0, sizeof(c->zin));
    memset(&c->zout, 0, sizeof(c->zout));
    /* RFC 4978 §4: raw DEFLATE, no zlib header. */
    if (inflateInit2(&c->zin, -15) != Z_OK)
        return TERN_E_NOMEM;
    if (deflateInit2(&c->zout, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK) {
        inflateEnd(&c->zin);
        return TERN_E_NOMEM;
    }
    c->deflate = true;
    return TERN_OK;
}

/* Reads raw transport bytes (TLS or plain). */
static enum tern_status
net_read_raw(struct net_conn *c, char *buf, size_t cap, size_t *got)
{
    *got = 0;
    if (c->state == NET_ST_DEAD)
        return TERN_E_IO;
    if (c->ssl) {
        size_t n = 0;
        ERR_clear_error();
        c->ssl_read_wants_write = false;
        if (SSL_read_ex(c->ssl, buf, cap, &n) == 1) {
            *got = n;
            return TERN_OK;
        }
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_WANT_READ)
            return TERN_OK;
        if (e == SSL_ERROR_WANT_WRITE) {
            c->ssl_read_wants_write = true;
            net_update_events(c);
            return TERN_OK;
        }
        if (e == SSL_ERROR_ZERO_RETURN ||
            (e == SSL_ERROR_SSL &&
             ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
            (e == SSL_ERROR_SYSCALL && errno == 0)) {
            ERR_clear_error();
            return tern_err_set(c->err, TERN_E_IO, "connection closed by the server");
        }
        if (e == SSL_ERROR_SYSCALL) {
            int saved = errno;
            ERR_clear_error();
            return tern_err_set(c->err, TERN_E_IO, "read from %s failed: %s", c->opts.host,
                                strerror(saved));
        }
        char msg[256];
        tls_error_text(msg, sizeof(msg));
        return tern_err_set(c->err, TERN_E_TLS, "TLS read from %s failed: %s", c->opts.host, msg);
    }
    ssize_t n = read(c->fd, buf, cap);
    if (n > 0) {
        *got = (size_t)n;
        return TERN_OK;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return TERN_OK;
    if (n == 0)
        return tern_err_set(c->err, TERN_E_IO, "connection closed by the server");
    return tern_err_set(c->err, TERN_E_IO, "read from %s failed: %s", c->opts.host,
                        strerror(errno));
}

static enum tern_status
net_write_raw(struct net_conn *c, const char *buf, size_t len, size_t *done)
{
    *done = 0;
    if (c->state == NET_ST_DEAD)
        return TERN_E_IO;
    if (len == 0)
        return TERN_OK;
    if (c->ssl) {
        size_t n = 0;
        ERR_clear_error();
        c->ssl_write_wants_read = false;
        if (SSL_write_ex(c->ssl, buf, len, &n) == 1) {
            *done = n;
            return TERN_OK;
        }
        int e = SSL_get_error(c->ssl, 0);
        if (e == SSL_ERROR_WANT_WRITE)
            return TERN_OK;
        if (e == SSL_ERROR_WANT_READ) {
            c->ssl_write_wants_read = true;
            return TERN_OK;
        }
        if (e == SSL_ERROR_SYSCALL) {
            int saved = errno;
            ERR_clear_error();
            return tern_err_set(c->err, TERN_E_IO, "write to %s failed: %s", c->opts.host,
                                saved ? strerror(saved) : "connection closed");
        }
        char msg[256];
        tls_error_text(msg, sizeof(msg));
        return tern_err_set(c->err, TERN_E_IO, "TLS write to %s failed: %s", c->opts.host, msg);
    }
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0) {
        *done = (size_t)n;
        return TERN_OK;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return TERN_OK;
    return tern_err_set(c->err, TERN_E_IO, "write to %s failed: %s", c->opts.host, strerror(errno));
}

enum tern_status
net_read(struct net_conn *c, char *buf, size_t cap, size_t *got)
{
    if (c->state == NET_ST_HANDSHAKE) {
        /* SSL_read would drive the handshake past our verification. */
        *got = 0;
        return TERN_OK;
    }
    if (!c->deflate)
        return net_read_raw(c, buf, cap, got);
    *got = 0;
    for (;;) {
        if (tbuf_len(&c->zraw) == 0) {
            char raw[16384];
            size_t n = 0;
            enum tern_status st = net_read_raw(c, raw, sizeof(raw), &n);
            if (st)
                return st;
            if (n == 0 && *got == 0) {
                /* zlib may still hold output from input it has consumed. */
                c->zin.next_in = NULL;
                c->zin.avail_in = 0;
            } else if (n == 0) {
                return TERN_OK;
            } else if (tbuf_add(&c->zraw, raw, n)) {
                return TERN_E_NOMEM;
            }
        }
        c->zin.next_in = (unsigned char *)tbuf_ptr(&c->zraw);
        c->zin.avail_in = (uInt)tbuf_len(&c->zraw);
        c->zin.next_out = (unsigned char *)buf + *got;
        c->zin.avail_out = (uInt)(cap - *got);
        int zr = inflate(&c->zin, Z_SYNC_FLUSH);
        size_t used = tbuf_len(&c->zraw) - c->zin.avail_in;
        tbuf_consume(&c->zraw, used);
        size_t produced = (cap - *got) - c->zin.avail_out;
        *got += produced;
        if (zr != Z_OK && zr != Z_BUF_ERROR && zr != Z_STREAM_END)
            return tern_err_set(c->err, TERN_E_PROTO, "the server's compressed stream is corrupt");
        if (*got == cap)
            return TERN_OK;
        if (produced == 0 && used == 0 && tbuf_len(&c->zraw) == 0)
            return TERN_OK; /* nothing more now */
    }
}

static enum tern_status
net_flush_pending(struct net_conn *c)
{
    while (tbuf_len(&c->zpending)) {
        size_t n = 0;
        enum tern_status st = net_write_raw(c, tbuf_ptr(&c->zpending), tbuf_len(&c->zpending), &n);
        if (st)
            return st;
        if (n == 0)
            break;
        tbuf_consume(&c->zpending, n);
    }
    net_update_events(c);
    return TERN_OK;
}

enum tern_status
net_write(struct net_conn *c, const char *buf, size_t len, size_t *done)
{
    if (c->state == NET_ST_HANDSHAKE) {
        *done = 0;
        c->want_write = true;
        return TERN_OK;
    }
    if (!c->deflate) {
        enum tern_status st = net_write_raw(c, buf, len, done);
        if (!st && *done < len) {
            c->want_write = true;
            net_update_events(c);
        }
        return st;
    }
    /* zlib's z_const is not enabled in Debian's build; it does not write. */
    memcpy(&c->zout.next_in, &buf, sizeof(buf));
    c->zout.avail_in = (uInt)len;
    do {
        unsigned char out[16384];
        c->zout.next_out = out;
        c->zout.avail_out = sizeof(out);
        if (deflate(&c->zout, Z_SYNC_FLUSH) == Z_STREAM_ERROR)
            return TERN_E_IO;
        if (tbuf_add(&c->zpending, out, sizeof(out) - c->zout.avail_out))
            return TERN_E_NOMEM;
    } while (c->zout.avail_out == 0 || c->zout.avail_in > 0);
    *done = len;
    return net_flush_pending(c);
}

void
net_want_write(struct net_conn *c, bool want)
{
    c->want_write = want;
    net_update_events(c);
}

static void
net_update_events(struct net_conn *c)
{
    if (c->state != NET_ST_OPEN || !c->watch)
        return;
    short ev = POLLIN;
    if (c->want_write || c->ssl_read_wants_write || tbuf_len(&c->zpending))
        ev |= POLLOUT;
    loop_watch_events(c->watch, ev);
}

static void
net_on_fd(void *aux, short revents)
{
    struct net_conn *c = aux;
    switch (c->state) {
    case NET_ST_CONNECTING: net_on_connected(c); return;
    case NET_ST_HANDSHAKE: net_handshake_step(c); return;
    case NET_ST_OPEN: break;
    default: return;
    }
    if (revents & POLLOUT) {
        if (tbuf_len(&c->zpending) && net_flush_pending(c)) {
            net_fail(c, TERN_E_IO);
            return;
        }
        if (c->want_write || c->ssl_read_wants_write) {
            c->fn(c->aux, NET_EV_WRITABLE, TERN_OK);
            if (c->state != NET_ST_OPEN)
                return;
        }
    }
    if (revents & (POLLIN | POLLHUP | POLLERR) || c->ssl_write_wants_read)
        c->fn(c->aux, NET_EV_READABLE, TERN_OK);
}
