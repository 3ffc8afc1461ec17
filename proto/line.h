/*
 * line.h - the line engine shared by IMAP, POP3 and SMTP: the send queue
 * (partial writes parked), the capped receive buffer, line splitting, the
 * "need N more bytes" mode for IMAP literals, and the inactivity timeout.
 *
 * Layer: proto/. Modeled on curl's pingpong.c and isync's socket layer.
 *
 * The owner must not free the engine from inside one of its callbacks; it
 * marks its own state and frees later.
 */
#ifndef TERN_LINE_H
#define TERN_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"
#include "loop.h"
#include "net.h"

enum line_event {
    LINE_EV_CONNECTED, /* TCP up */
    LINE_EV_TLS_DONE,  /* handshake done and verified */
    LINE_EV_ERROR,     /* fatal: the status and the error slot say why */
    LINE_EV_DRAINED,   /* the send queue, full before, has been written out */
};

struct line_handler {
    /* A complete line without its CR LF. A non-OK status is fatal. */
    enum tern_status (*on_line)(void *aux, const char *line, size_t len);
    /* Bytes asked for with line_expect_bytes(), in chunks. */
    enum tern_status (*on_bytes)(void *aux, const char *p, size_t n);
    void (*on_event)(void *aux, enum line_event ev, enum tern_status st);
};

struct line_opts {
    struct net_opts net;
    size_t line_max;   /* longest line accepted (without CR LF) */
    int timeout_ms;    /* inactivity timeout while a reply is awaited; 0: none */
    const char *proto; /* "IMAP", "POP3", "SMTP": for sentences and traces */
};

struct line_conn;

/* H is copied; ERR is borrowed and receives every failure sentence. */
enum tern_status line_new(struct loop *loop, const struct line_opts *opts,
                          const struct line_handler *h, void *aux, struct tern_err *err,
                          struct line_conn **out);
void line_free(struct line_conn *l);

enum tern_status line_connect(struct line_conn *l);

/* Drops the connection at once (no further events); see net_close(). */
void line_close(struct line_conn *l);

/*
 * Starts TLS on the open connection (STARTTLS/STLS after the server's
 * go-ahead). Bytes already received after the go-ahead line are never
 * parsed: their presence is TERN_E_PROTO ("response injection"), RFC 3207
 * §4.2 / RFC 2595 §3.1, as curl does.
 */
enum tern_status line_start_tls(struct line_conn *l);
enum tern_status line_start_deflate(struct line_conn *l);
bool line_is_tls(const struct line_conn *l);
const char *line_tls_desc(const struct line_conn *l);

/* Queues LEN bytes for sending and starts writing. */
enum tern_status line_send(struct line_conn *l, const char *data, size_t len);

/* The next N bytes go to on_bytes instead of being split into lines. */
void line_expect_bytes(struct line_conn *l, uint64_t n);

/* Whether a reply is awaited (arms the inactivity timeout). */
void line_set_waiting(struct line_conn *l, bool waiting);

/* Whether everything queued has been written. */
bool line_send_idle(const struct line_conn *l);

struct loop *line_loop(const struct line_conn *l);

#endif
