/*
 * pop3.h - the POP3 client engine (RFC 1939), with CAPA (RFC 2449), STLS
 * (RFC 2595), SASL AUTH (RFC 5034) and the extended response codes of
 * RFC 2449 §8 and RFC 3206: a non-blocking state machine over the line
 * engine, with a queue of commands and pipelining when the server offers
 * it.
 *
 * Layer: proto/. Knows nothing of curses, files on disk or notmuch; never
 * prompts, never prints. Results go to callbacks; messages stream to a
 * sink the caller supplies.
 *
 * Connection phases (each waits for the one before):
 *
 *   connect -> [implicit TLS] -> greeting -> CAPA -> [STLS -> handshake ->
 *   CAPA] -> AUTH or USER/PASS -> ready
 *
 * On a connection that must be TLS (pop3:// without tls = off) nothing but
 * CAPA and STLS is ever sent before the handshake: a server whose CAPA
 * lacks STLS (or that has no CAPA), or that answers -ERR to STLS, fails the
 * connection with TERN_E_TLS. Bytes that follow the +OK to STLS are never
 * parsed (line_start_tls refuses them: TERN_E_PROTO). Everything learnt
 * before the handshake is forgotten and CAPA is asked again over TLS.
 * Credentials never travel in cleartext unless the security is
 * POP3_SEC_NONE (tls = off).
 *
 * Commands submitted before "ready" wait in the queue. Without PIPELINING
 * one command is in flight at a time; with it (RFC 2449 §6.6) up to
 * POP3_PIPELINE_MAX, answered in order.
 *
 * Ownership: every string in struct pop3_opts is borrowed and must outlive
 * the connection. A sink is copied at submission; what its aux points to
 * must stay valid until its end function (or, when begin was never called,
 * the command's callback) has run. Results handed to a callback (text,
 * listing arrays and the strings in them) are borrowed for the duration of
 * the call. The connection must not be freed from inside one of its
 * callbacks; every other function may be called from them.
 */
#ifndef TERN_POP3_H
#define TERN_POP3_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"
#include "loop.h"
#include "net.h"
#include "sasl.h"

/* Commands in flight at once when the server offers PIPELINING. */
#define POP3_PIPELINE_MAX 16

/* Defaults of struct pop3_limits. */
#define POP3_LINE_MAX_DEFAULT ((size_t)1024 * 1024)
#define POP3_MESSAGE_MAX_DEFAULT ((uint64_t)1024 * 1024 * 1024)
#define POP3_LISTING_MAX_DEFAULT ((size_t)256 * 1024 * 1024)

/* RFC 1939 §7: a unique-id is 1 to 70 characters in 0x21-0x7E. */
#define POP3_UID_MAX 70

enum pop3_security {
    POP3_SEC_IMPLICIT_TLS, /* pop3s:// (port 995) */
    POP3_SEC_STLS,         /* pop3:// : STLS required */
    POP3_SEC_NONE,         /* pop3:// with tls = off: cleartext, explicit only */
};

/*
 * Named limits of one connection; a zero field takes its default.
 * Exceeding one fails the connection with TERN_E_PROTO and a sentence
 * that names the limit.
 */
struct pop3_limits {
    size_t line_max;      /* longest line, without CR LF, of any response */
    uint64_t message_max; /* bytes of one RETR as handed to the sink */
    size_t listing_max;   /* bytes of one CAPA, LIST or UIDL response */
};

/* Fills LIM with the defaults above. */
void pop3_limits_default(struct pop3_limits *lim);

struct pop3_opts {
    const char *host;
    int port;
    enum pop3_security security;
    enum net_verify verify;
    unsigned char fingerprint[32];
    const char *ca_file;
    const char *user;
    const char *secret; /* password, or OAuth token for XOAUTH2/OAUTHBEARER */
    /*
     * SASL_AUTO: AUTH PLAIN when CAPA lists "SASL ... PLAIN", otherwise
     * USER/PASS. SASL_LOGIN: USER/PASS. SASL_PLAIN, SASL_XOAUTH2,
     * SASL_OAUTHBEARER: AUTH with that mechanism, TERN_E_UNSUPPORTED when
     * the SASL capability does not list it.
     */
    enum sasl_mech mech;
    int timeout_ms; /* connect, handshake and reply inactivity; 0: none */
    struct pop3_limits limits;
    /*
     * Optional protocol trace: status and listing lines both ways and state
     * changes ("state OLD -> NEW"), never the lines of a message. Lines that
     * carry credentials are shown with the secret replaced by "<secret>".
     */
    void (*trace)(void *aux, bool sent, const char *line, size_t len);
    void *trace_aux;
};

/* One line of a LIST answer (RFC 1939 §5): the server's word, not a promise. */
struct pop3_size {
    uint32_t msgno;
    uint64_t size;
};

/*
 * One line of a UIDL answer (RFC 1939 §7). UID is NUL-terminated, but LEN
 * is authoritative (a hostile server may put a NUL in it). VALID is false
 * unless the uid is 1 to 70 bytes in 0x21-0x7E; an invalid uid is reported
 * as it came and must not be relied on. DUPLICATE is true on every entry
 * whose uid another entry of the same answer also has: such a uid names no
 * single message, and none of the messages that share it may be taken for
 * one already downloaded. Whatever VALID says, a uid is never fit for use
 * as a file name.
 */
struct pop3_uid {
    uint32_t msgno;
    const char *uid;
    size_t len;
    bool valid;
    bool duplicate;
};

/*
 * Where RETR streams a message. BEGIN is called when the +OK arrives; DATA
 * receives the message in order, in chunks, with dot-stuffing removed and
 * every line ending as CR LF (a bare LF from the server becomes CR LF; the
 * terminating "." line is not passed). END is called exactly once when
 * BEGIN returned TERN_OK: OK true with SIZE, the bytes handed to DATA, once
 * the whole message arrived; OK false when anything went wrong (the
 * connection dropped, a limit was hit, DATA failed), and then whatever was
 * handed out must be discarded. A failing BEGIN or DATA makes the RETR fail
 * with that status; the sink should write its sentence into the
 * connection's error slot. The rest of that message is read and dropped,
 * so the connection stays usable. Sink functions may submit commands but
 * must not call pop3_cancel() or pop3_free(): to stop, they return an
 * error.
 */
struct pop3_sink {
    enum tern_status (*begin)(void *aux, uint32_t msgno);
    enum tern_status (*data)(void *aux, const char *p, size_t n);
    void (*end)(void *aux, bool ok, uint64_t size);
    void *aux;
};

struct pop3_conn;

/*
 * Called when a command completes: ST is TERN_OK for +OK, TERN_E_REFUSED
 * for -ERR (the connection's error sentence carries the server's text), or
 * the connection's failure (TERN_E_IO, TERN_E_PROTO, TERN_E_TIMEOUT,
 * TERN_E_CANCELED, ...), or for RETR the status of a failing sink. TEXT
 * is the server's text after "+OK"/"-ERR" (possibly ""), or NULL when no
 * reply arrived because the connection failed.
 */
typedef void (*pop3_done_fn)(void *aux, enum tern_status st, const char *text);

/* STAT's answer: COUNT messages of OCTETS bytes (zeros when ST != TERN_OK). */
typedef void (*pop3_stat_fn)(void *aux, enum tern_status st, uint32_t count, uint64_t octets);

/* LIST's and UIDL's answers, sorted by message number (N is 0 and V NULL
 * when ST != TERN_OK). */
typedef void (*pop3_list_fn)(void *aux, enum tern_status st, const struct pop3_size *v, size_t n);
typedef void (*pop3_uidl_fn)(void *aux, enum tern_status st, const struct pop3_uid *v, size_t n);

/*
 * Creates a connection object; nothing happens until pop3_open(). OPTS is
 * copied (its strings are borrowed). ERR is borrowed and receives every
 * failure sentence. Returns TERN_OK, TERN_E_NOMEM, or TERN_E_USAGE when
 * host, user or secret is NULL.
 */
enum tern_status pop3_new(struct loop *loop, const struct pop3_opts *opts, struct tern_err *err,
                          struct pop3_conn **out);

/* Frees without a goodbye; pending callbacks and sinks are not called.
 * Accepts NULL. Never from inside one of the connection's callbacks. */
void pop3_free(struct pop3_conn *c);

/*
 * Connects and logs in; DONE is called once, when the connection is ready
 * (TERN_OK) or has failed: TERN_E_IO (connect, drop), TERN_E_TLS (handshake,
 * certificate, pin, STLS missing or refused), TERN_E_PROTO (malformed
 * greeting or reply, bytes after the STLS go-ahead), TERN_E_REFUSED (-ERR
 * greeting), TERN_E_AUTH (-ERR to USER, PASS or AUTH: the sentence gives
 * the server's text and explains an [AUTH], [IN-USE], [SYS/TEMP],
 * [SYS/PERM] or [LOGIN-DELAY] code), TERN_E_UNSUPPORTED (the configured
 * mechanism is not offered), TERN_E_TIMEOUT.
 * On success TEXT is the text of the server's last +OK (to PASS or AUTH);
 * on failure it is NULL. Returns TERN_OK when connecting started,
 * TERN_E_USAGE when called twice or without DONE, or TERN_E_IO when
 * connecting failed at once (DONE is then not called).
 */
enum tern_status pop3_open(struct pop3_conn *c, pop3_done_fn done, void *aux);

/*
 * The commands. Each queues its command and returns TERN_OK, after which
 * its callback is called exactly once (unless the connection is freed
 * first); TERN_E_IO when the connection is already closed (the sentence
 * says why), TERN_E_USAGE for a message number of 0 or a missing callback
 * or sink function, TERN_E_NOMEM. The callback is not called when
 * submission fails.
 */
enum tern_status pop3_stat(struct pop3_conn *c, pop3_stat_fn done, void *aux);
/* LIST and UIDL without an argument: every message. */
enum tern_status pop3_list(struct pop3_conn *c, pop3_list_fn done, void *aux);
enum tern_status pop3_uidl(struct pop3_conn *c, pop3_uidl_fn done, void *aux);
/* SINK is copied; see struct pop3_sink for the order of calls. */
enum tern_status pop3_retr(struct pop3_conn *c, uint32_t msgno, const struct pop3_sink *sink,
                           pop3_done_fn done, void *aux);
enum tern_status pop3_dele(struct pop3_conn *c, uint32_t msgno, pop3_done_fn done, void *aux);
enum tern_status pop3_rset(struct pop3_conn *c, pop3_done_fn done, void *aux);
enum tern_status pop3_noop(struct pop3_conn *c, pop3_done_fn done, void *aux);

/*
 * QUIT (RFC 1939 §6): sent once everything before it has been answered.
 * TERN_OK when the server answered +OK (its deletions are done; the engine
 * then closes the connection), TERN_E_REFUSED for -ERR (some deletions may
 * not have happened), TERN_E_IO when the connection closed before an
 * answer (whether the deletions happened is unknown). Commands queued after
 * QUIT fail with TERN_E_IO.
 */
enum tern_status pop3_quit(struct pop3_conn *c, pop3_done_fn done, void *aux);

/*
 * Stops every running and queued command with TERN_E_CANCELED (in flight
 * first, then queued, in order; an open sink gets end(false)) and drops the
 * connection. What was already handed out stays handed out.
 */
void pop3_cancel(struct pop3_conn *c);

/* True when CAPA listed capability NAME (its first word, any case), e.g.
 * "PIPELINING", "UIDL". Only capabilities learnt over the final (TLS)
 * connection count. */
bool pop3_has_cap(const struct pop3_conn *c, const char *name);

/* True when CAPA's SASL line lists mechanism MECH (any case). */
bool pop3_has_sasl(const struct pop3_conn *c, const char *mech);

bool pop3_is_ready(const struct pop3_conn *c);
bool pop3_is_dead(const struct pop3_conn *c);

#endif
