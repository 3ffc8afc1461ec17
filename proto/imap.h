/*
 * imap.h - the IMAP client engine (RFC 3501, RFC 9051 where offered): a
 * non-blocking state machine over the line engine, with tagged command
 * pipelining and untagged responses handled at any time.
 *
 * Layer: proto/. Knows nothing of curses, files on disk or notmuch; never
 * prompts, never prints. Results go to callbacks.
 *
 * Connection phases (each waits for the one before):
 *
 *   connect -> [implicit TLS] -> greeting -> CAPABILITY? -> [STARTTLS ->
 *   handshake -> CAPABILITY] -> LOGIN/AUTHENTICATE -> CAPABILITY? ->
 *   [COMPRESS] -> ENABLE? -> ID? -> NAMESPACE? -> ready
 *
 * On a connection that must be TLS (imap:// without tls = off) nothing but
 * CAPABILITY, STARTTLS and LOGOUT is ever sent before the handshake, and a
 * PREAUTH greeting there is refused. Commands submitted before "ready" wait
 * in the queue.
 *
 * Ownership: every string in struct imap_opts is borrowed and must outlive
 * the connection. A response handed to a callback is borrowed for the
 * duration of the call. A command's arguments are copied at submission.
 * The connection must not be freed from inside one of its callbacks.
 */
#ifndef TERN_IMAP_H
#define TERN_IMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"
#include "imap_args.h"
#include "imap_parse.h"
#include "loop.h"
#include "net.h"
#include "sasl.h"

enum imap_security {
    IMAP_SEC_IMPLICIT_TLS, /* imaps:// */
    IMAP_SEC_STARTTLS,     /* imap:// : STARTTLS required */
    IMAP_SEC_NONE,         /* imap:// with tls = off: cleartext, explicit only */
};

struct imap_opts {
    const char *host;
    int port;
    enum imap_security security;
    enum net_verify verify;
    unsigned char fingerprint[32];
    const char *ca_file;
    const char *user;
    const char *secret; /* password, or OAuth token for XOAUTH2/OAUTHBEARER */
    enum sasl_mech mech;
    int timeout_ms; /* connect, handshake and reply inactivity */
    bool compress;  /* use COMPRESS=DEFLATE when offered */
    struct imap_limits limits;
    /*
     * Optional protocol trace; lines tern sends that carry credentials are
     * shown with the secret replaced by "<secret>".
     */
    void (*trace)(void *aux, bool sent, const char *line, size_t len);
    void *trace_aux;
};

/* State of the selected mailbox, as the server reported it. */
struct imap_mailbox {
    bool selected;
    bool read_only;
    uint32_t exists;
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t highestmodseq;
};

struct imap_conn;

/* Called when a command completes: ST is TERN_OK for a tagged OK,
 * TERN_E_REFUSED for NO/BAD (the sentence carries the server's text), or the
 * connection's error. TAGGED is NULL when the connection failed. */
typedef void (*imap_done_fn)(void *aux, enum tern_status st, const struct imap_response *tagged);

/*
 * Offered each untagged response that arrives while the command is in
 * flight, oldest command first; returns true when the response is the
 * command's own (it is then offered to no one else). Servers may run
 * pipelined commands concurrently (RFC 9051 §5.5), so a handler claims only
 * what it can tell is its own (a FETCH for one of its UIDs, say).
 */
typedef bool (*imap_untagged_fn)(void *aux, const struct imap_response *r);

enum tern_status imap_new(struct loop *loop, const struct imap_opts *opts, struct tern_err *err,
                          struct imap_conn **out);
/* Frees without a goodbye; pending callbacks are not called. Accepts NULL. */
void imap_free(struct imap_conn *c);

/* Connects and logs in; DONE is called once the connection is ready or has
 * failed. */
enum tern_status imap_open(struct imap_conn *c, imap_done_fn done, void *aux);

/*
 * Queues a command: NAME ("UID FETCH", "LIST", ...) followed by ARGS (may be
 * NULL; they are copied, and should start with a space). ON_UNTAGGED (with
 * UNTAGGED_AUX) may be NULL. DONE is always called exactly once, unless the connection is freed
 * first.
 */
enum tern_status imap_submit(struct imap_conn *c, const char *name, const struct imap_args *args,
                             imap_untagged_fn on_untagged, void *untagged_aux, imap_done_fn done,
                             void *aux);

/* Untagged responses that no command claims go here (may be NULL). */
void imap_set_default_handler(struct imap_conn *c, imap_untagged_fn fn, void *aux);

/* Literals above limits.inline_max go to SINK (copied; NULL removes). */
void imap_set_literal_sink(struct imap_conn *c, const struct imap_literal_sink *sink);

/* True when the server advertised capability CAP (case-insensitive),
 * e.g. "UIDPLUS", "AUTH=PLAIN". Only capabilities learnt over the final
 * (TLS) connection count. */
bool imap_has_cap(const struct imap_conn *c, const char *cap);

bool imap_is_ready(const struct imap_conn *c);
bool imap_is_dead(const struct imap_conn *c);

/* The personal namespace's hierarchy delimiter ('\0' when unknown). */
char imap_delimiter(const struct imap_conn *c);

const struct imap_mailbox *imap_mailbox(const struct imap_conn *c);

/* Sends LOGOUT and waits for nothing: DONE follows when the server answers
 * or the connection closes. */
enum tern_status imap_logout(struct imap_conn *c, imap_done_fn done, void *aux);

/*
 * IDLE (RFC 2177): starts idling; untagged responses go to ON_UNTAGGED
 * until imap_idle_done(), after which DONE is called.
 */
enum tern_status imap_idle(struct imap_conn *c, imap_untagged_fn on_untagged, imap_done_fn done,
                           void *aux);
enum tern_status imap_idle_done(struct imap_conn *c);

/* Stops every queued and running command with TERN_E_CANCELED and drops the
 * connection (what was already handed out stays handed out). */
void imap_cancel(struct imap_conn *c);

#endif
