/*
 * smtp.h - the SMTP submission client engine: RFC 5321 (SMTP), RFC 6409
 * (message submission), RFC 3207 (STARTTLS), RFC 8314 (implicit TLS),
 * RFC 4954 (AUTH), RFC 2920 (PIPELINING), RFC 6152 (8BITMIME), RFC 6531
 * (SMTPUTF8), RFC 1870 (SIZE) and RFC 3461 (DSN). A non-blocking state
 * machine over the line engine, in the manner of OpenSMTPD's smtp_client.
 *
 * Layer: proto/. Knows nothing of curses, files on disk or notmuch; never
 * prompts, never prints. Results go to callbacks.
 *
 * Connection phases (each waits for the one before):
 *
 *   connect -> [implicit TLS] -> greeting 220 -> EHLO -> [STARTTLS 220 ->
 *   handshake -> EHLO] -> [AUTH] -> ready
 *
 * On a connection that must be TLS (smtp:// without tls = off) nothing but
 * EHLO, STARTTLS and QUIT is ever sent before the handshake: a server
 * without STARTTLS in its EHLO reply, one that answers STARTTLS with
 * anything but 220, and one that refuses EHLO (no HELO fallback there)
 * fail the connection with TERN_E_TLS. What the server said before the
 * handshake is forgotten; EHLO is asked again over TLS.
 *
 * Messages are sent one transaction at a time, in the order smtp_send()
 * was called: MAIL FROM, one RCPT TO per recipient, DATA, the message and
 * the final ".". With PIPELINING they go in one batch; without it one
 * command at a time. A failed transaction is followed by RSET so that the
 * next one starts clean. Transactions submitted before the connection is
 * ready wait for it.
 *
 * Ownership: every string in struct smtp_opts is borrowed and must outlive
 * the connection. The envelope passed to smtp_send() is copied; the body
 * source (its callback and aux) is borrowed until the transaction's
 * callback returns. A result handed to a callback is borrowed for the
 * duration of the call. The connection must not be freed from inside one
 * of its callbacks, and the body source's read callback must not call
 * into the engine.
 */
#ifndef TERN_SMTP_H
#define TERN_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"
#include "loop.h"
#include "net.h"
#include "sasl.h"
#include "tbuf.h"

enum smtp_security {
    SMTP_SEC_IMPLICIT_TLS, /* smtps://, port 465 (RFC 8314 §3.3) */
    SMTP_SEC_STARTTLS,     /* smtp://, port 587: STARTTLS required */
    SMTP_SEC_NONE,         /* smtp:// with tls = off: cleartext, explicit only */
};

/* Named limits on what the server may send, per connection. */
struct smtp_limits {
    size_t line_max;        /* longest reply line without CR LF */
    size_t reply_lines_max; /* lines in one (multi-line) reply */
    size_t reply_bytes_max; /* bytes of text in one reply */
};

/*
 * The defaults: lines of 4 KiB (RFC 5321 §4.5.3.1.5 asks for 512, real
 * servers send longer ones), 256 lines and 64 KiB of text per reply.
 */
void smtp_limits_default(struct smtp_limits *lim);

struct smtp_opts {
    const char *host;
    int port;
    enum smtp_security security;
    enum net_verify verify;
    unsigned char fingerprint[32];
    const char *ca_file;
    const char *user;   /* NULL: no AUTH */
    const char *secret; /* password, or OAuth token for XOAUTH2/OAUTHBEARER */
    enum sasl_mech mech;
    const char *ehlo_name; /* the name given in EHLO/HELO; NULL: "localhost" */
    /*
     * Connect, handshake and reply inactivity, for every wait, including
     * the reply to the end of DATA (RFC 5321 §4.5.3.2.6 suggests 10
     * minutes for that one; the caller chooses).
     */
    int timeout_ms;
    struct smtp_limits limits;
    /*
     * Optional protocol trace: every line sent and received without its
     * line end, and state changes. AUTH lines are shown with the secret
     * replaced by "<secret>", and message data as one summary line.
     */
    void (*trace)(void *aux, bool sent, const char *line, size_t len);
    void *trace_aux;
};

/*
 * Envelope flags. SMTP_ENV_8BIT: the message has 8-bit bytes, sent as
 * BODY=8BITMIME (RFC 6152); the server must offer 8BITMIME.
 * SMTP_ENV_UTF8: the message has UTF-8 header fields (RFC 6532), sent with
 * SMTPUTF8 (RFC 6531); the server must offer SMTPUTF8. SMTPUTF8 is also
 * used, without the flag, when an address is not ASCII.
 */
#define SMTP_ENV_FLAGS(X)                                                                          \
    X(SMTP_ENV_8BIT, 0)                                                                            \
    X(SMTP_ENV_UTF8, 1)

/*
 * DSN NOTIFY keywords (RFC 3461 §4.1), for every recipient. NEVER
 * excludes the others. 0 leaves it to the server.
 */
#define SMTP_DSN_FLAGS(X)                                                                          \
    X(SMTP_DSN_NEVER, 0)                                                                           \
    X(SMTP_DSN_SUCCESS, 1)                                                                         \
    X(SMTP_DSN_FAILURE, 2)                                                                         \
    X(SMTP_DSN_DELAY, 3)

#define SMTP_DEFINE_BIT(name, bit) name = 1u << (bit),
enum smtp_env_flag { SMTP_ENV_FLAGS(SMTP_DEFINE_BIT) };
enum smtp_dsn_flag { SMTP_DSN_FLAGS(SMTP_DEFINE_BIT) };
#undef SMTP_DEFINE_BIT

/* The name of one flag bit ("SMTP_ENV_8BIT", "SMTP_DSN_DELAY"); "?" when unknown. */
const char *smtp_env_flag_name(unsigned bit);
const char *smtp_dsn_flag_name(unsigned bit);

enum smtp_dsn_ret {
    SMTP_DSN_RET_DEFAULT = 0, /* no RET parameter */
    SMTP_DSN_RET_FULL,
    SMTP_DSN_RET_HDRS,
};

/*
 * The envelope of one message. Addresses are bare addr-specs without angle
 * brackets; FROM may be "" (the null reverse-path). DSN parameters are sent
 * only when the server offers DSN (as mutt does: they are a request, the
 * message still goes without them); ORCPT is never sent.
 */
struct smtp_envelope {
    const char *from;
    const char *const *rcpts;
    size_t nrcpt;
    uint64_t size;       /* the message's size for SIZE=, 0 when unknown */
    unsigned flags;      /* enum smtp_env_flag bits */
    unsigned dsn_notify; /* enum smtp_dsn_flag bits */
    enum smtp_dsn_ret dsn_ret;
    const char *dsn_envid; /* NULL: none; sent as xtext (RFC 3461 §4) */
};

/*
 * The message's bytes: READ fills BUF with up to CAP bytes and sets *GOT;
 * *GOT = 0 means the end. Line ends may be CR LF, bare LF or bare CR; the
 * engine sends CR LF and dot-stuffs. It reads only as fast as the server
 * takes the data, so a message is never held whole in memory. A non-OK
 * status aborts the transaction: the connection is dropped without the
 * final "." so the server discards what it got. READ must not block for
 * long (a regular file or memory).
 */
typedef enum tern_status (*smtp_read_fn)(void *aux, char *buf, size_t cap, size_t *got);

struct smtp_body {
    smtp_read_fn read;
    void *aux;
};

/* A READ for struct smtp_body that reads the file descriptor *(int *)AUX. */
enum tern_status smtp_read_fd(void *aux, char *buf, size_t cap, size_t *got);

struct smtp_rcpt_result {
    const char *addr; /* as given */
    int code;         /* the reply to its RCPT TO; 0 when it never got one */
    const char *text; /* that reply's text, lines joined by '\n'; "" when none */
};

/*
 * The outcome of one transaction, passed with its status:
 *
 *   TERN_OK          the server answered 2xx to the end of DATA; recipients
 *                    it refused are in RCPTS (NACCEPTED < NRCPT).
 *   TERN_E_REFUSED   a 4xx or 5xx stopped it (TEMPORARY says which), no
 *                    recipient was accepted, or the message is larger than
 *                    the server's SIZE limit (then nothing was sent).
 *   TERN_E_UNSUPPORTED  the message needs 8BITMIME or SMTPUTF8 and the
 *                    server does not offer it; nothing was sent.
 *   TERN_E_IO, TERN_E_TIMEOUT, TERN_E_PROTO, TERN_E_TLS, TERN_E_AUTH,
 *   TERN_E_NOMEM, TERN_E_CANCELED   the connection failed (at any phase).
 *
 * Only TERN_OK means the server took the message. When OUTCOME_UNKNOWN is
 * set, the final "." was sent and no complete reply came: the server may
 * have taken the message or not, so the caller keeps it queued (a later
 * attempt may duplicate it).
 */
struct smtp_result {
    int code;         /* the reply that decided it (the end of DATA, or the
                         command that stopped the transaction); 0 when none */
    const char *text; /* its text, lines joined by '\n'; "" when none */
    bool temporary;   /* CODE is 4xx: the same message may succeed later */
    bool outcome_unknown;
    const struct smtp_rcpt_result *rcpts; /* NRCPT entries, in envelope order */
    size_t nrcpt;
    size_t naccepted; /* recipients the server accepted */
};

struct smtp_conn;

/* Called when a connection step completes: TERN_OK, or the connection's error. */
typedef void (*smtp_done_fn)(void *aux, enum tern_status st);

/* Called once per transaction with its outcome; R is never NULL. */
typedef void (*smtp_sent_fn)(void *aux, enum tern_status st, const struct smtp_result *r);

/*
 * Creates a connection object; nothing happens until smtp_open(). ERR is
 * borrowed and receives every failure sentence. TERN_E_USAGE when the
 * options are inconsistent (no host, a user without a secret, an EHLO name
 * that is not a domain or address literal), TERN_E_NOMEM.
 */
enum tern_status smtp_new(struct loop *loop, const struct smtp_opts *opts, struct tern_err *err,
                          struct smtp_conn **out);

/* Frees without a goodbye; pending callbacks are not called. Accepts NULL. */
void smtp_free(struct smtp_conn *c);

/*
 * Connects, says EHLO, starts TLS as the security asks, and logs in when
 * opts.user is set. DONE is called once, when the connection is ready or
 * has failed: TERN_E_IO or TERN_E_TIMEOUT (network), TERN_E_TLS (handshake,
 * certificate, or STARTTLS required and not possible), TERN_E_PROTO
 * (malformed reply, bytes after the STARTTLS go-ahead), TERN_E_REFUSED
 * (the server refused the connection, or said 421), TERN_E_AUTH (login
 * refused), TERN_E_UNSUPPORTED (no usable AUTH mechanism). A second call
 * is TERN_E_USAGE; a connect that fails at once returns its status and
 * DONE is not called.
 */
enum tern_status smtp_open(struct smtp_conn *c, smtp_done_fn done, void *aux);

/*
 * Queues one message. ENV is copied; BODY is borrowed until SENT has been
 * called. SENT is called exactly once (unless the connection is freed
 * first), after the RSET that follows a failed transaction; it may run
 * before smtp_send() returns when the transaction cannot start (SIZE,
 * 8BITMIME, SMTPUTF8), and it may call smtp_send() or smtp_quit() itself.
 * Returns TERN_E_USAGE, with nothing queued or sent and SENT not called,
 * when there is no recipient, BODY has no read callback, an address is
 * invalid (see smtp_addr_check), the flags are unknown, NOTIFY=NEVER is
 * combined with another keyword, or the ENVID is empty or longer than 100
 * bytes; TERN_E_IO when the connection is already closed; TERN_E_NOMEM.
 */
enum tern_status smtp_send(struct smtp_conn *c, const struct smtp_envelope *env,
                           const struct smtp_body *body, smtp_sent_fn sent, void *aux);

/*
 * Sends QUIT after the queued transactions and closes. DONE is called with
 * TERN_OK when the server answers or closes the connection. TERN_E_IO when
 * the connection is already closed.
 */
enum tern_status smtp_quit(struct smtp_conn *c, smtp_done_fn done, void *aux);

/*
 * Drops the connection at once; every pending callback gets TERN_E_CANCELED
 * (a message whose final "." was already sent is reported with
 * outcome_unknown).
 */
void smtp_cancel(struct smtp_conn *c);

bool smtp_is_ready(const struct smtp_conn *c); /* logged in, idle or sending */
bool smtp_is_dead(const struct smtp_conn *c);

/*
 * True when the last EHLO reply listed KEYWORD (case-insensitive), e.g.
 * "PIPELINING", "8BITMIME". Only what was learnt over the final (TLS)
 * connection counts.
 */
bool smtp_has_ext(const struct smtp_conn *c, const char *keyword);

/* The SIZE the server announced (RFC 1870 §4); 0 when none or no limit. */
uint64_t smtp_size_limit(const struct smtp_conn *c);

/*
 * Checks one address of LEN bytes at P for use in MAIL FROM or RCPT TO:
 * TERN_E_USAGE (with a sentence in ERR, which may be NULL) when it holds a
 * CR, LF, NUL or other control character, angle brackets, or is longer
 * than RFC 5321 §4.5.3.1.3 allows, so that no envelope or command
 * injection is possible. An empty address is valid only when EMPTY_OK.
 */
enum tern_status smtp_addr_check(const char *p, size_t len, bool empty_ok, struct tern_err *err);

/*
 * The DATA encoder (RFC 5321 §4.5.2): turns message bytes, arriving in
 * chunks of any size, into what goes on the wire after DATA: every line
 * end CR LF (bare LF and bare CR included), a "." doubled at the start of
 * a line, and the terminating CR LF "." CR LF (with a CR LF first when the
 * message does not end with a line end).
 */
struct smtp_data_enc {
    bool at_line_start;
    bool pending_cr; /* the last byte seen was a CR */
    uint64_t in_bytes;
    uint64_t out_bytes;
};

void smtp_data_enc_init(struct smtp_data_enc *e);
/* Appends the encoding of N bytes at P to OUT; TERN_E_NOMEM/TERN_E_PROTO from OUT. */
enum tern_status smtp_data_enc_add(struct smtp_data_enc *e, const char *p, size_t n,
                                   struct tbuf *out);
/* Appends the end of the data, including the final "." line. */
enum tern_status smtp_data_enc_finish(struct smtp_data_enc *e, struct tbuf *out);

#endif
