/*
 * tern.h - public interface of libtern, the core library of tern.
 *
 * Layer: include/. The front ends (src/cli and ui/) see the core only through
 * this header. Every type here is opaque. It includes nothing but libc headers.
 */
#ifndef TERN_H
#define TERN_H

#include <stddef.h>
#include <stdio.h>

/*
 * Every function that can fail returns one of these classes. TERN_OK is 0;
 * results go out through out-parameters, and the human detail of a failure
 * goes into the error slot of the object the call was made on.
 */
enum tern_status {
    TERN_OK = 0,
    TERN_E_NOMEM,       /* an allocation failed */
    TERN_E_IO,          /* a socket or file operation failed */
    TERN_E_TLS,         /* handshake, certificate or pin failure */
    TERN_E_AUTH,        /* the server refused the credentials */
    TERN_E_PROTO,       /* malformed or out-of-limits data from the server */
    TERN_E_REFUSED,     /* the server answered NO, BAD, 4xx or 5xx */
    TERN_E_UNSUPPORTED, /* a capability the operation needs is missing */
    TERN_E_NOTFOUND,    /* no such folder, message, part or account */
    TERN_E_CONFIG,      /* bad configuration or bad command words */
    TERN_E_CANCELED,    /* the user canceled the operation */
    TERN_E_TIMEOUT,     /* the peer did not answer in time */
    TERN_E_USAGE,       /* a command was called with wrong arguments */
};

/*
 * The stable lower-case name of a status ("proto", "auth", ...). Headless
 * output prints it as the error's "code". Never returns NULL.
 */
const char *tern_status_name(enum tern_status st);

struct tern_config;
struct tern_session;

/*
 * Loads the config file PATH. On success *out is an owned config, freed with
 * tern_config_free(). On failure returns TERN_E_CONFIG (or TERN_E_IO,
 * TERN_E_NOMEM) and *errmsg holds an owned sentence naming the file, line and
 * key; the caller frees it.
 */
enum tern_status tern_config_load(const char *path, struct tern_config **out, char **errmsg);
void tern_config_free(struct tern_config *cfg);

/*
 * The default config path: $TERN_CONFIG, then $XDG_CONFIG_HOME/tern/config,
 * then ~/.config/tern/config. Owned by the caller; NULL when out of memory.
 */
char *tern_config_default_path(void);

/*
 * Opens a session on ACCOUNT of CFG (NULL: the first account). The config
 * must outlive the session. No network traffic happens until a command needs
 * it. Returns TERN_E_NOTFOUND when there is no such account (with *errmsg).
 */
enum tern_status tern_session_new(const struct tern_config *cfg, const char *account,
                                  struct tern_session **out, char **errmsg);
void tern_session_free(struct tern_session *s);

/*
 * One result object of a command, as one line of JSON without the newline.
 * The text is borrowed and valid only during the call.
 */
typedef void (*tern_emit_fn)(const char *json, size_t len, void *aux);

/*
 * Runs one command of the command language (DESIGN.md) on session S. Every
 * result object goes to EMIT as it is produced. On failure returns the
 * status; tern_session_error() then gives the human sentence.
 */
enum tern_status tern_session_run(struct tern_session *s, const char *line, tern_emit_fn emit,
                                  void *aux);

/* The last error sentence of S, borrowed; "" when there was none. */
const char *tern_session_error(const struct tern_session *s);

/*
 * Installs a protocol trace: FN receives every line sent (SENT true) and
 * received, without line ends, and state changes. Lines that carry
 * credentials arrive with the secret replaced by "<secret>". FN NULL stops
 * tracing. The text is borrowed for the call.
 */
typedef void (*tern_trace_fn)(void *aux, int sent, const char *line, size_t len);
void tern_session_set_trace(struct tern_session *s, tern_trace_fn fn, void *aux);

/* Closes the session's connections politely (LOGOUT); errors are ignored. */
void tern_session_close(struct tern_session *s);

#endif
