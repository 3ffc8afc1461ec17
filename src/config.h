/*
 * config.h - the INI config file of DESIGN.md, parsed with inih.
 *
 * Layer: src/. The core and the engines receive configuration as these
 * structs; they never read the file themselves.
 */
#ifndef TERN_CONFIG_H
#define TERN_CONFIG_H

#include <stdbool.h>

#include "tern.h"

enum tern_tls_mode {
    TERN_TLS_VERIFY = 0,  /* chain + host name (default) */
    TERN_TLS_FINGERPRINT, /* the server certificate's SHA-256 must match */
    TERN_TLS_OFF,         /* cleartext allowed, explicit only */
};

/* A parsed server URL: imaps://alice@imap.example.org:993 */
struct tern_url {
    char *scheme;      /* "imaps", "imap", "pop3s", "pop3", "smtps", "smtp" */
    char *user;        /* percent-decoded; NULL when absent */
    char *host;        /* without brackets for IPv6 literals */
    int port;          /* explicit port, or the scheme's default */
    bool implicit_tls; /* imaps/pop3s/smtps */
};

enum tern_offline_mode { TERN_OFFLINE_FULL = 0, TERN_OFFLINE_HEADERS, TERN_OFFLINE_NONE };

/* Bits of dsn_notify. */
#define CONFIG_DSN_NEVER 0x1u
#define CONFIG_DSN_SUCCESS 0x2u
#define CONFIG_DSN_FAILURE 0x4u
#define CONFIG_DSN_DELAY 0x8u

struct tern_account {
    char *name;
    char *from;
    struct tern_url *imap; /* NULL when not configured */
    struct tern_url *pop3;
    struct tern_url *smtp;
    char *password;         /* NULL unless given in the file */
    char *password_command; /* NULL unless given */
    char *auth;             /* "plain", "login", "xoauth2", "oauthbearer"; NULL = automatic */
    enum tern_tls_mode tls;
    unsigned char fingerprint[32]; /* TERN_TLS_FINGERPRINT */
    char *tls_ca_file;
    char *cache_dir; /* expanded (~ and $XDG_DATA_HOME) */
    enum tern_offline_mode offline;
    char *sent_folder;   /* NULL: the SPECIAL-USE \Sent folder */
    int timeout;         /* seconds for connect/read; default 30 */
    bool compress;       /* COMPRESS=DEFLATE when the server offers it */
    char *pop3_folder;   /* local folder for POP3 mail; NULL: "Inbox" */
    unsigned dsn_notify; /* DSN requests (RFC 3461): CONFIG_DSN_* bits; 0: none asked */
    bool pop3_keep;      /* leave messages on the POP3 server */
    int pop3_keep_days;  /* with pop3_keep: delete after N days; 0: never */
    struct tern_account *next;
};

struct tern_config {
    char *path;
    struct tern_account *accounts; /* in file order; the first is the default */
};

/*
 * Parses config text (for tests and the fuzzer). PATH names the file in error
 * sentences. Errors name file, line and key: "config:7: unknown key 'imapp'".
 */
enum tern_status config_parse_string(const char *text, const char *path, struct tern_config **out,
                                     char **errmsg);

/* NULL when there is no account NAME. NAME NULL gives the first account. */
const struct tern_account *config_account(const struct tern_config *cfg, const char *name);

/* Parses a URL; TERN_E_CONFIG with a sentence in *errmsg when it is malformed. */
enum tern_status config_parse_url(const char *s, struct tern_url **out, char **errmsg);
void config_url_free(struct tern_url *u);

#endif
