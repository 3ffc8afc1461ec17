/*
 * line.c - the line engine (see line.h).
 *
 * Layer: proto/. Includes libc and proto headers only.
 */
#include "line.h"

#include <stdlib.h>
#include <string.h>

#include "tbuf.h"

#define LINE_READ_CHUNK 65536

struct line_conn {
    struct loop *loop;
    struct line_opts opts;
    struct line_handler h;
    void *aux;
    struct tern_err *err;
    struct net_conn *net;

    struct tbuf rbuf;
    struct tbuf sbuf;
    uint64_t bytes_wanted; /* > 0: byte mode */
    bool waiting;
    bool dead;
    struct loop_timer *timer;
};

static void line_on_net(void *aux, enum net_event ev, enum tern_status st);

enum tern_status
line_new(struct loop *loop, const struct line_opts *opts, const struct line_handler *h, void *aux,
         struct tern_err *err, struct line_conn **out)
{
    struct line_conn *l = calloc(1, sizeof(*l));
    if (!l)
        return TERN_E_NOMEM;
    l->loop = loop;
    l->opts = *opts;
    l->h = *h;
    l->aux = aux;
    l->err = err;
    /* The receive buffer holds one line plus one read chunk at the most. */
    tbuf_init(&l->rbuf, opts->line_max + 2 + LINE_READ_CHUNK);
    tbuf_init(&l->sbuf, 0);
    enum tern_status st = net_new(loop, &opts->net, line_on_net, l, err, &l->net);
    if (st) {
        free(l);
        return st;
    }
    *out = l;
    return TERN_OK;
}

void
line_free(struct line_conn *l)
{
    if (!l)
        return;
    loop_timer_cancel(l->timer);
    net_free(l->net);
    tbuf_free(&l->rbuf);
    tbuf_free(&l->sbuf);
    free(l);
}

struct loop *
line_loop(const struct line_conn *l)
{
    return l->loop;
}

static void
line_fail(struct line_conn *l, enum tern_status st)
{
    if (l->dead)
        return;
    l->dead = true;
    loop_timer_cancel(l->timer);
    l->timer = NULL;
    l->h.on_event(l->aux, LINE_EV_ERROR, st);
}

static void
line_on_timeout(void *aux)
{
    struct line_conn *l = aux;
    l->timer = NULL;
    if (l->opts.timeout_ms % 1000)
        tern_err_set(l->err, TERN_E_TIMEOUT, "%s server %s did not answer for %d ms", l->opts.proto,
                     l->opts.net.host, l->opts.timeout_ms);
    else
        tern_err_set(l->err, TERN_E_TIMEOUT, "%s server %s did not answer for %d seconds",
                     l->opts.proto, l->opts.net.host, l->opts.timeout_ms / 1000);
    line_fail(l, TERN_E_TIMEOUT);
}

static void
line_arm_timer(struct line_conn *l)
{
    loop_timer_cancel(l->timer);
    l->timer = NULL;
    if (l->dead || !l->opts.timeout_ms)
        return;
    if (l->waiting || !line_send_idle(l))
        loop_timer_add(l->loop, l->opts.timeout_ms, line_on_timeout, l, &l->timer);
}

void
line_set_waiting(struct line_conn *l, bool waiting)
{
    if (l->waiting == waiting)
        return;
    l->waiting = waiting;
    line_arm_timer(l);
}

enum tern_status
line_connect(struct line_conn *l)
{
    enum tern_status st = net_connect(l->net);
    if (st)
        l->dead = true;
    return st;
}

void
line_close(struct line_conn *l)
{
    l->dead = true;
    loop_timer_cancel(l->timer);
    l->timer = NULL;
    net_close(l->net);
}

bool
line_is_tls(const struct line_conn *l)
{
    return net_is_tls(l->net);
}

const char *
line_tls_desc(const struct line_conn *l)
{
    return net_tls_desc(l->net);
}

enum tern_status
line_start_tls(struct line_conn *l)
{
    if (tbuf_len(&l->rbuf)) {
        tern_err_set(l->err, TERN_E_PROTO,
                     "%s server %s sent data after its TLS go-ahead; refusing to continue "
                     "(possible response injection)",
                     l->opts.proto, l->opts.net.host);
        tbuf_reset(&l->rbuf);
        return TERN_E_PROTO;
    }
    return net_start_tls(l->net);
}

enum tern_status
line_start_deflate(struct line_conn *l)
{
    if (tbuf_len(&l->rbuf))
        return tern_err_set(l->err, TERN_E_PROTO, "%s server sent data after its COMPRESS go-ahead",
                            l->opts.proto);
    return net_start_deflate(l->net);
}

bool
line_send_idle(const struct line_conn *l)
{
    return tbuf_len(&l->sbuf) == 0;
}

static enum tern_status
line_flush(struct line_conn *l)
{
    while (tbuf_len(&l->sbuf)) {
        size_t n = 0;
        enum tern_status st = net_write(l->net, tbuf_ptr(&l->sbuf), tbuf_len(&l->sbuf), &n);
        if (st)
            return st;
        if (n == 0)
            break;
        tbuf_consume(&l->sbuf, n);
    }
    net_want_write(l->net, tbuf_len(&l->sbuf) > 0);
    return TERN_OK;
}

enum tern_status
line_send(struct line_conn *l, const char *data, size_t len)
{
    if (l->dead)
        return TERN_E_IO;
    enum tern_status st = tbuf_add(&l->sbuf, data, len);
    if (st)
        return st;
    st = line_flush(l);
    if (st) {
        line_fail(l, st);
        return st;
    }
    line_arm_timer(l);
    return TERN_OK;
}

void
line_expect_bytes(struct line_conn *l, uint64_t n)
{
    l->bytes_wanted = n;
}

/* Hands out complete lines and wanted bytes from the receive buffer. */
static enum tern_status
line_process(struct line_conn *l)
{
    while (!l->dead && tbuf_len(&l->rbuf)) {
        char *p = tbuf_ptr(&l->rbuf);
        size_t avail = tbuf_len(&l->rbuf);
        if (l->bytes_wanted) {
            size_t n = avail < l->bytes_wanted ? avail : (size_t)l->bytes_wanted;
            l->bytes_wanted -= n;
            enum tern_status st = l->h.on_bytes(l->aux, p, n);
            tbuf_consume(&l->rbuf, n);
            if (st)
                return st;
            continue;
        }
        char *nl = memchr(p, '\n', avail);
        if (!nl) {
            if (avail > l->opts.line_max)
                return tern_err_set(l->err, TERN_E_PROTO,
                                    "%s server sent a line longer than %zu bytes", l->opts.proto,
                                    l->opts.line_max);
            break;
        }
        size_t len = (size_t)(nl - p);
        size_t used = len + 1;
        if (len && p[len - 1] == '\r')
            len--;
        if (len > l->opts.line_max)
            return tern_err_set(l->err, TERN_E_PROTO, "%s server sent a line longer than %zu bytes",
                                l->opts.proto, l->opts.line_max);
        /*
         * Consume before the callback so that a STARTTLS go-ahead sees
         * exactly the bytes that followed its line.
         */
        tbuf_consume(&l->rbuf, used);
        enum tern_status st = l->h.on_line(l->aux, p, len);
        if (st)
            return st;
    }
    return TERN_OK;
}

static void
line_on_readable(struct line_conn *l)
{
    for (;;) {
        if (l->dead)
            break;
        char chunk[LINE_READ_CHUNK];
        size_t got = 0;
        enum tern_status st = net_read(l->net, chunk, sizeof(chunk), &got);
        if (st) {
            line_fail(l, st);
            return;
        }
        if (got == 0)
            break;
        st = tbuf_add(&l->rbuf, chunk, got);
        if (st == TERN_E_PROTO)
            st = tern_err_set(l->err, TERN_E_PROTO, "%s server sent a line longer than %zu bytes",
                              l->opts.proto, l->opts.line_max);
        if (!st)
            st = line_process(l);
        if (st) {
            line_fail(l, st);
            return;
        }
        line_arm_timer(l);
    }
}

static void
line_on_net(void *aux, enum net_event ev, enum tern_status st)
{
    struct line_conn *l = aux;
    switch (ev) {
    case NET_EV_CONNECTED:
        line_arm_timer(l);
        l->h.on_event(l->aux, LINE_EV_CONNECTED, TERN_OK);
        break;
    case NET_EV_TLS_DONE: l->h.on_event(l->aux, LINE_EV_TLS_DONE, TERN_OK); break;
    case NET_EV_READABLE: line_on_readable(l); break;
    case NET_EV_WRITABLE: {
        bool was_full = tbuf_len(&l->sbuf) > 0;
        enum tern_status fst = line_flush(l);
        if (fst) {
            line_fail(l, fst);
            break;
        }
        line_arm_timer(l);
        if (was_full && tbuf_len(&l->sbuf) == 0)
            l->h.on_event(l->aux, LINE_EV_DRAINED, TERN_OK);
        break;
    }
    case NET_EV_ERROR: line_fail(l, st); break;
    }
}
