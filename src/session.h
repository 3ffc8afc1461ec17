/*
 * session.h - the core's view of one session: an account, its event loop,
 * its IMAP connection (opened on first use), and the output of commands.
 * Private to src/; front ends use the tern_session_* API of include/tern.h.
 *
 * Layer: src/.
 */
#ifndef TERN_SESSION_H
#define TERN_SESSION_H

#include <stdbool.h>

#include "tern.h"

#include "err.h"
#include "imap.h"
#include "loop.h"
#include "tbuf.h"

#include "config.h"
#include "json.h"

/*
 * A second connection for reading a large folder in parallel: it opens in
 * the background and is used only once it has the same folder open with the
 * same UIDVALIDITY and message count as the main one.
 */
enum sess_extra_state {
    SESS_EXTRA_NONE,
    SESS_EXTRA_OPENING,
    SESS_EXTRA_SELECTING,
    SESS_EXTRA_READY,
    SESS_EXTRA_FAILED,
};

struct sess_extra {
    struct imap_conn *imap;
    struct tern_err err;
    enum sess_extra_state state;
    char *folder; /* UTF-8 */
};

struct tern_session {
    const struct tern_config *cfg;   /* borrowed */
    const struct tern_account *acct; /* borrowed from cfg */
    struct loop *loop;
    struct imap_conn *imap;
    struct tern_err err;
    char *secret;
    char *selected;   /* the selected folder (UTF-8), NULL when none */
    bool selected_rw; /* SELECT (true) or EXAMINE */
    tern_emit_fn emit;
    void *emit_aux;
    struct tbuf out; /* the object being written */
    tern_trace_fn trace;
    void *trace_aux;
    struct sess_extra extra;
};

/*
 * One IMAP command run to completion. ON_TAGGED (optional) sees the tagged
 * reply before it is freed; DATA is the caller's.
 */
struct sess_op {
    bool done;
    enum tern_status st;
    void (*on_tagged)(struct sess_op *op, const struct imap_response *r);
    void *data;
};

/* Seconds since the epoch; TERN_TEST_NOW replaces the clock in tests of
 * time-dependent rules (pop3_keep_days, the outbox's back-off). */
int64_t sess_now(void);

/*
 * A durable step of a journaled operation (pop, the outbox). With
 * TERN_TEST_KILL_AT=N the process kills itself with SIGKILL at the Nth
 * step, so that tests can interrupt every step.
 */
void sess_test_step(const char *what);

/* The protocol trace hook for engines (AUX is the session). */
void sess_trace(void *aux, bool sent, const char *line, size_t len);

/*
 * What every engine's options take from the account, for the server at URL:
 * whether TLS is implicit, off (cleartext allowed) or required by STARTTLS,
 * verification, credentials (the password is obtained once per session,
 * only when NEED_SECRET), SASL mechanism and timeout.
 */
enum sess_security { SESS_SEC_IMPLICIT, SESS_SEC_STARTTLS, SESS_SEC_NONE };

struct sess_conn {
    enum sess_security security;
    enum net_verify verify;
    unsigned char fingerprint[32];
    const char *ca_file; /* borrowed from the config */
    const char *user;    /* "" when the URL has none */
    const char *secret;  /* borrowed from the session; NULL when not needed */
    enum sasl_mech mech;
    int timeout_ms;
};

enum tern_status sess_conn_opts(struct tern_session *s, const struct tern_url *url,
                                bool need_secret, struct sess_conn *out);

/* Connects and logs in when not yet connected (or after a failure). */
enum tern_status sess_imap(struct tern_session *s);

/* Submits a command that completes into OP (OP must outlive it). */
enum tern_status sess_submit(struct tern_session *s, const char *name, const struct imap_args *args,
                             imap_untagged_fn on_untagged, void *aux, struct sess_op *op);

/* The same on connection C (the main one or the extra one). */
enum tern_status sess_submit_on(struct tern_session *s, struct imap_conn *c, const char *name,
                                const struct imap_args *args, imap_untagged_fn on_untagged,
                                void *aux, struct sess_op *op);

/*
 * Starts opening the extra connection on FOLDER, which the main connection
 * has selected (read-only use). Returns at once; failures are silent (the
 * extra connection is an optimisation, never a requirement).
 */
void sess_extra_start(struct tern_session *s, const char *folder);

/* The extra connection when it is ready on FOLDER, else NULL. */
struct imap_conn *sess_extra_ready(struct tern_session *s, const char *folder);

/* Whether the extra connection is still on its way (opening or selecting). */
bool sess_extra_pending(const struct tern_session *s);

/* Runs the loop until every one of the N ops is done; returns the first
 * failure (the error slot holds its sentence). */
enum tern_status sess_wait(struct tern_session *s, struct sess_op *ops, size_t n);

/* Submits and waits for one command. */
enum tern_status sess_run(struct tern_session *s, const char *name, const struct imap_args *args,
                          imap_untagged_fn on_untagged, void *aux, struct sess_op *op);

/*
 * Selects FOLDER (UTF-8): SELECT when WRITE, EXAMINE otherwise; nothing
 * when it is already selected that way. A folder the server does not know
 * is TERN_E_NOTFOUND "no folder 'X'".
 */
enum tern_status sess_select(struct tern_session *s, const char *folder, bool write);

/* Appends FOLDER (UTF-8) as a mailbox-name argument (modified UTF-7,
 * RFC 3501 §5.1.3; INBOX in any case is INBOX). */
enum tern_status sess_arg_folder(struct tern_session *s, struct imap_args *a, const char *folder);

/* Starts a result object: returns the writer over s->out, emptied. */
void sess_obj_begin(struct tern_session *s, struct json *j);
/* Hands the finished object to the front end. */
enum tern_status sess_obj_emit(struct tern_session *s, struct json *j);

/* Sets the error sentence and returns ST. */
enum tern_status sess_fail(struct tern_session *s, enum tern_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
