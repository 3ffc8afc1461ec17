/*
 * config.c - the INI config file of DESIGN.md "Config" (see config.h and
 * man/tern-config.5), and the config functions of include/tern.h.
 *
 * Layer: src/. Includes libc, inih, include/ and proto/ headers only; never
 * curses, sockets or OpenSSL.
 *
 * inih splits "key = value" lines and hands them to config_on_pair(). It
 * reads the text through config_reader(), which checks and cleans each line
 * first, because the library's own defaults do not fit a file that holds
 * URLs and shell commands:
 *
 * - A line longer than inih's buffer would be split and its tail parsed as
 *   a new line; config_reader() rejects any line over CONFIG_LINE_MAX bytes,
 *   and inih's buffer is sized to hold that.
 * - inih treats an indented line as the continuation of the previous value;
 *   multi-line values are turned off, so indentation means nothing.
 * - inih knows only ';' as an inline comment. Here '#' and ';' both start a
 *   comment at the start of a line or after a space or tab, anywhere in the
 *   line; elsewhere they are part of the value (password = a#b keeps "a#b").
 * - inih does not report section headers to the handler, so section lines
 *   are parsed here too: that is how an account with no keys, a reopened
 *   account or "[]" is noticed.
 * - NUL bytes, control characters and invalid UTF-8 are errors with a line
 *   number, where inih would silently cut the line.
 *
 * Debian's libinih exports its build options as variables, declared in its
 * ini.h; config_ini_setup() sets them before every parse. That makes parsing
 * not thread-safe with respect to other users of inih in the process (tern
 * has none).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "tern.h"

#include "tbuf.h"

#include "text.h"

/* The longest line accepted, without its line ending. */
#define CONFIG_LINE_MAX (64 * 1024)
/* The largest config file accepted. */
#define CONFIG_FILE_MAX (8 * 1024 * 1024)
/* The most [account] sections in one file. */
#define CONFIG_ACCOUNTS_MAX 1000
/* How much of a key, value or section name an error sentence quotes. */
#define CONFIG_QUOTE_MAX 64
#define CONFIG_TIMEOUT_DEFAULT 30
#define CONFIG_TIMEOUT_MAX 3600

enum config_key {
    CONFIG_KEY_FROM,
    CONFIG_KEY_IMAP,
    CONFIG_KEY_POP3,
    CONFIG_KEY_SMTP,
    CONFIG_KEY_PASSWORD_COMMAND,
    CONFIG_KEY_PASSWORD,
    CONFIG_KEY_AUTH,
    CONFIG_KEY_TLS,
    CONFIG_KEY_TLS_CA_FILE,
    CONFIG_KEY_CACHE_DIR,
    CONFIG_KEY_OFFLINE,
    CONFIG_KEY_SENT_FOLDER,
    CONFIG_KEY_TIMEOUT,
    CONFIG_KEY_COMPRESS,
    CONFIG_KEY_POP3_FOLDER,
    CONFIG_KEY_POP3_KEEP,
    CONFIG_KEY_POP3_KEEP_DAYS,
    CONFIG_KEY_DSN_NOTIFY,
    CONFIG_KEY_COUNT
};

static const char *const config_key_names[CONFIG_KEY_COUNT] = {
    [CONFIG_KEY_FROM] = "from",
    [CONFIG_KEY_IMAP] = "imap",
    [CONFIG_KEY_POP3] = "pop3",
    [CONFIG_KEY_SMTP] = "smtp",
    [CONFIG_KEY_PASSWORD_COMMAND] = "password_command",
    [CONFIG_KEY_PASSWORD] = "password",
    [CONFIG_KEY_AUTH] = "auth",
    [CONFIG_KEY_TLS] = "tls",
    [CONFIG_KEY_TLS_CA_FILE] = "tls_ca_file",
    [CONFIG_KEY_CACHE_DIR] = "cache_dir",
    [CONFIG_KEY_OFFLINE] = "offline",
    [CONFIG_KEY_SENT_FOLDER] = "sent_folder",
    [CONFIG_KEY_TIMEOUT] = "timeout",
    [CONFIG_KEY_COMPRESS] = "compress",
    [CONFIG_KEY_POP3_FOLDER] = "pop3_folder",
    [CONFIG_KEY_POP3_KEEP] = "pop3_keep",
    [CONFIG_KEY_POP3_KEEP_DAYS] = "pop3_keep_days",
    [CONFIG_KEY_DSN_NOTIFY] = "dsn_notify",
};

/*
 * URL schemes and their default ports: RFC 3501/9051 and RFC 8314 §3.3
 * (imap 143, imaps 993), RFC 1939 and RFC 8314 (pop3 110, pop3s 995),
 * RFC 6409 §3.1 (submission 587) and RFC 8314 §3.3 (submissions 465).
 */
struct config_scheme {
    const char *name;
    int port;
    bool implicit_tls;
};

static const struct config_scheme config_schemes[] = {
    {"imap", 143, false}, {"imaps", 993, true}, {"pop3", 110, false},
    {"pop3s", 995, true}, {"smtp", 587, false}, {"smtps", 465, true},
};

static const char *const config_auth_names[] = {"plain", "login", "xoauth2", "oauthbearer"};

/* The state of one parse; see config_parse_buf(). */
struct config_parser {
    const char *text; /* borrowed: the whole file */
    size_t len;
    size_t pos;  /* start of the next line */
    int lineno;  /* the line config_reader() handed out last */
    char *shown; /* owned: the file name for sentences, $HOME as ~ */
    struct tern_config *cfg;
    struct tern_account *cur;   /* borrowed from cfg: the open section */
    struct tern_account **tail; /* where the next account is linked */
    int account_count;
    int *account_lines;              /* owned: the header line of each account */
    int key_lines[CONFIG_KEY_COUNT]; /* lines of the open section's keys, 0 when unset */
    enum tern_status st;             /* the first error; TERN_OK until then */
    char *errmsg;                    /* owned: its sentence */
};

static int config_fail(struct config_parser *ps, enum tern_status st, int line, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));

/*
 * Records the first error of the parse as "FILE:LINE: sentence" (or
 * "FILE: sentence" when LINE is 0). Always returns 0, inih's "stop".
 */
static int
config_fail(struct config_parser *ps, enum tern_status st, int line, const char *fmt, ...)
{
    if (ps->st != TERN_OK)
        return 0;
    ps->st = st;
    struct tbuf b;
    tbuf_init(&b, 0);
    if (line > 0)
        tbuf_addf(&b, "%s:%d: ", ps->shown, line);
    else
        tbuf_addf(&b, "%s: ", ps->shown);
    va_list ap;
    va_start(ap, fmt);
    enum tern_status fst = tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    if (fst != TERN_OK) {
        tbuf_free(&b);
        ps->st = TERN_E_NOMEM;
        return 0;
    }
    ps->errmsg = tbuf_take(&b);
    if (!ps->errmsg)
        ps->st = TERN_E_NOMEM;
    return 0;
}

static int
config_nomem(struct config_parser *ps)
{
    if (ps->st == TERN_OK)
        ps->st = TERN_E_NOMEM;
    return 0;
}

/*
 * How many bytes of S (LEN long) an error sentence quotes: at most
 * CONFIG_QUOTE_MAX, never splitting a UTF-8 sequence. The caller prints
 * "..." when the result is shorter than LEN.
 */
static int
quote_len(const char *s, size_t len)
{
    if (len <= CONFIG_QUOTE_MAX)
        return (int)len;
    size_t n = CONFIG_QUOTE_MAX;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--;
    return (int)n;
}

#define QUOTE_FMT "'%.*s%s'"
#define QUOTE_ARGS(s)                                                                              \
    quote_len((s), strlen(s)), (s), (size_t)quote_len((s), strlen(s)) < strlen(s) ? "..." : ""

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool
is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * The home directory: $HOME when set, else the password database's entry
 * for the real user. Owned by the caller; NULL when neither exists or out
 * of memory.
 */
static char *
home_dir(void)
{
    const char *home = getenv("HOME");
    if (home && *home)
        return strdup(home);
    size_t size = 1024;
    for (;;) {
        char *buf = malloc(size);
        if (!buf)
            return NULL;
        struct passwd pw, *res = NULL;
        int rc = getpwuid_r(getuid(), &pw, buf, size, &res);
        if (rc == ERANGE && size < 1024 * 1024) {
            free(buf);
            size *= 2;
            continue;
        }
        char *dir = NULL;
        if (rc == 0 && res && res->pw_dir && *res->pw_dir)
            dir = strdup(res->pw_dir);
        free(buf);
        return dir;
    }
}

/* An XDG base directory variable counts only when it holds an absolute path. */
static const char *
xdg_dir(const char *var)
{
    const char *v = getenv(var);
    return v && v[0] == '/' ? v : NULL;
}

/* Joins A and B with one '/'; owned, NULL on NOMEM. */
static char *
path_join(const char *a, const char *b)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    size_t alen = strlen(a);
    while (alen > 1 && a[alen - 1] == '/')
        alen--;
    if (tbuf_add(&t, a, alen) || (!(alen == 1 && a[0] == '/') && tbuf_addc(&t, '/')) ||
        tbuf_adds(&t, b)) {
        tbuf_free(&t);
        return NULL;
    }
    return tbuf_take(&t);
}

/* Writes PATH for error sentences: $HOME/x becomes ~/x. Owned; NULL on NOMEM. */
static char *
shown_path(const char *path)
{
    const char *home = getenv("HOME");
    size_t hlen = home ? strlen(home) : 0;
    while (hlen > 1 && home[hlen - 1] == '/')
        hlen--;
    if (hlen > 1 && strncmp(path, home, hlen) == 0 && path[hlen] == '/') {
        struct tbuf t;
        tbuf_init(&t, 0);
        if (tbuf_addc(&t, '~') || tbuf_adds(&t, path + hlen)) {
            tbuf_free(&t);
            return NULL;
        }
        return tbuf_take(&t);
    }
    return strdup(path);
}

/*
 * Expands a leading "~" or "~/" to the home directory. The result must be
 * absolute. On failure *WHY says why.
 */
static enum tern_status
expand_path(const char *v, char **out, const char **why)
{
    *out = NULL;
    if (v[0] == '~') {
        if (v[1] != '\0' && v[1] != '/') {
            *why = "only ~ and ~/ are expanded, not ~user";
            return TERN_E_CONFIG;
        }
        char *home = home_dir();
        if (!home) {
            *why = "cannot find the home directory to expand ~";
            return TERN_E_CONFIG;
        }
        *out = v[1] && v[2] ? path_join(home, v + 2) : strdup(home);
        free(home);
        return *out ? TERN_OK : TERN_E_NOMEM;
    }
    if (v[0] != '/') {
        *why = "must be an absolute path or start with ~/";
        return TERN_E_CONFIG;
    }
    *out = strdup(v);
    return *out ? TERN_OK : TERN_E_NOMEM;
}

void
config_url_free(struct tern_url *u)
{
    if (!u)
        return;
    free(u->scheme);
    free(u->user);
    free(u->host);
    free(u);
}

/*
 * Percent-decodes a URL's user name (RFC 3986 §2.1). Decoded control
 * characters are refused: the name goes into protocol command lines.
 */
static enum tern_status
url_decode_user(const char *p, size_t len, char **out, struct tbuf *why)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    enum tern_status st = TERN_OK;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            int hi = i + 2 < len ? hex_value(p[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(p[i + 2]) : -1;
            if (lo < 0) {
                tbuf_adds(why, "bad percent-encoding in the user name");
                st = TERN_E_CONFIG;
                goto fail;
            }
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || c == ' ') {
            tbuf_adds(why, "control character or space in the user name");
            st = TERN_E_CONFIG;
            goto fail;
        }
        if ((st = tbuf_addc(&t, (char)c)) != TERN_OK)
            goto fail;
    }
    *out = tbuf_take(&t);
    return *out ? TERN_OK : TERN_E_NOMEM;
fail:
    tbuf_free(&t);
    return st;
}

/*
 * Parses SCHEME://[USER@]HOST[:PORT][/] (RFC 3986 §3; the forms of RFC 5092
 * and RFC 2384 without a path). A password in the URL is refused. On
 * TERN_E_CONFIG, WHY holds a phrase that never repeats the URL.
 */
static enum tern_status
url_parse(const char *p, size_t len, struct tern_url **out, struct tbuf *why)
{
    enum tern_status st = TERN_E_CONFIG;
    struct tern_url *u = NULL;
    *out = NULL;

    size_t i = 0;
    while (i < len && (is_alpha(p[i]) ||
                       (i > 0 && (is_digit(p[i]) || p[i] == '+' || p[i] == '-' || p[i] == '.'))))
        i++;
    if (i == 0 || len - i < 3 || memcmp(p + i, "://", 3) != 0) {
        tbuf_adds(why, "expected scheme://host, as in imaps://user@host");
        goto fail;
    }
    const struct config_scheme *scheme = NULL;
    for (size_t k = 0; k < sizeof config_schemes / sizeof config_schemes[0]; k++) {
        if (strlen(config_schemes[k].name) == i && strncasecmp(p, config_schemes[k].name, i) == 0)
            scheme = &config_schemes[k];
    }
    if (!scheme) {
        tbuf_addf(why, "unknown scheme '%.*s' (expected imap, imaps, pop3, pop3s, smtp or smtps)",
                  i > CONFIG_QUOTE_MAX ? CONFIG_QUOTE_MAX : (int)i, p);
        goto fail;
    }

    u = calloc(1, sizeof *u);
    if (!u || !(u->scheme = strdup(scheme->name))) {
        st = TERN_E_NOMEM;
        goto fail;
    }
    u->port = scheme->port;
    u->implicit_tls = scheme->implicit_tls;

    /* The authority runs to the first '/', '?' or '#'; only a lone "/" may follow. */
    const char *auth = p + i + 3;
    size_t alen = 0, rest = len - i - 3;
    while (alen < rest && auth[alen] != '/' && auth[alen] != '?' && auth[alen] != '#')
        alen++;
    if (alen < rest && !(auth[alen] == '/' && alen + 1 == rest)) {
        tbuf_adds(why, "a path, query or fragment is not allowed");
        goto fail;
    }

    /* USER@ ends at the last '@', so an unencoded address as user name works. */
    const char *host = auth;
    size_t hlen = alen;
    const char *at = NULL;
    for (size_t k = 0; k < alen; k++)
        if (auth[k] == '@')
            at = auth + k;
    if (at) {
        size_t ulen = (size_t)(at - auth);
        if (memchr(auth, ':', ulen)) {
            tbuf_adds(why, "a password in the URL is not allowed; use password or "
                           "password_command");
            goto fail;
        }
        if (ulen == 0) {
            tbuf_adds(why, "empty user name before '@'");
            goto fail;
        }
        if ((st = url_decode_user(auth, ulen, &u->user, why)) != TERN_OK)
            goto fail;
        st = TERN_E_CONFIG;
        host = at + 1;
        hlen = alen - ulen - 1;
    }

    const char *port = NULL;
    size_t plen = 0;
    if (hlen > 0 && host[0] == '[') {
        /* An IPv6 literal, RFC 3986 §3.2.2; zone identifiers are not accepted. */
        const char *close = memchr(host, ']', hlen);
        if (!close) {
            tbuf_adds(why, "missing ']' after the IPv6 address");
            goto fail;
        }
        size_t v6len = (size_t)(close - host - 1);
        char v6[INET6_ADDRSTRLEN + 1];
        unsigned char bin[sizeof(struct in6_addr)];
        if (v6len == 0 || v6len >= sizeof v6) {
            tbuf_adds(why, "bad IPv6 address");
            goto fail;
        }
        memcpy(v6, host + 1, v6len);
        v6[v6len] = '\0';
        if (inet_pton(AF_INET6, v6, bin) != 1) {
            tbuf_adds(why, "bad IPv6 address");
            goto fail;
        }
        if (!(u->host = strdup(v6))) {
            st = TERN_E_NOMEM;
            goto fail;
        }
        size_t after = (size_t)(close - host) + 1;
        if (after < hlen) {
            if (host[after] != ':') {
                tbuf_adds(why, "unexpected text after the IPv6 address");
                goto fail;
            }
            port = host + after + 1;
            plen = hlen - after - 1;
        }
    } else {
        size_t n = 0;
        while (n < hlen && host[n] != ':')
            n++;
        if (n == 0) {
            tbuf_adds(why, "missing host");
            goto fail;
        }
        if (n > 253) {
            tbuf_adds(why, "host name longer than 253 characters");
            goto fail;
        }
        for (size_t k = 0; k < n; k++) {
            char c = host[k];
            if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.' && c != '_') {
                tbuf_adds(why, "bad character in the host name");
                goto fail;
            }
        }
        if (!(u->host = strndup(host, n))) {
            st = TERN_E_NOMEM;
            goto fail;
        }
        if (n < hlen) {
            port = host + n + 1;
            plen = hlen - n - 1;
        }
    }

    if (port) {
        long value = 0;
        if (plen == 0 || plen > 5) {
            tbuf_adds(why, "bad port (expected a number from 1 to 65535)");
            goto fail;
        }
        for (size_t k = 0; k < plen; k++) {
            if (!is_digit(port[k])) {
                tbuf_adds(why, "bad port (expected a number from 1 to 65535)");
                goto fail;
            }
            value = value * 10 + (port[k] - '0');
        }
        if (value < 1 || value > 65535) {
            tbuf_adds(why, "bad port (expected a number from 1 to 65535)");
            goto fail;
        }
        u->port = (int)value;
    }
    *out = u;
    return TERN_OK;

fail:
    config_url_free(u);
    return st;
}

enum tern_status
config_parse_url(const char *s, struct tern_url **out, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    if (!out)
        return TERN_E_USAGE;
    *out = NULL;
    if (!s) {
        if (errmsg)
            *errmsg = strdup("bad URL: no URL given");
        return TERN_E_USAGE;
    }
    struct tbuf why;
    tbuf_init(&why, 0);
    enum tern_status st = url_parse(s, strlen(s), out, &why);
    if (st == TERN_E_CONFIG && errmsg) {
        struct tbuf msg;
        tbuf_init(&msg, 0);
        if (tbuf_adds(&msg, "bad URL: ") == TERN_OK &&
            tbuf_add(&msg, tbuf_ptr(&why), tbuf_len(&why)) == TERN_OK)
            *errmsg = tbuf_take(&msg);
        else
            tbuf_free(&msg);
    }
    tbuf_free(&why);
    return st;
}

/*
 * Parses HEX of "fingerprint:sha256:HEX": 64 hex digits, with an optional
 * ':' between byte pairs (the form `openssl x509 -fingerprint` prints).
 */
static bool
parse_fingerprint(const char *p, size_t len, unsigned char out[32])
{
    size_t nbytes = 0, i = 0;
    while (i < len) {
        if (nbytes == 32 || i + 2 > len)
            return false;
        int hi = hex_value(p[i]), lo = hex_value(p[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[nbytes++] = (unsigned char)(hi * 16 + lo);
        i += 2;
        if (i < len && p[i] == ':') {
            if (i + 1 == len)
                return false;
            i++;
        }
    }
    return nbytes == 32;
}

static void
account_free(struct tern_account *a)
{
    free(a->name);
    free(a->from);
    config_url_free(a->imap);
    config_url_free(a->pop3);
    config_url_free(a->smtp);
    if (a->password) {
        explicit_bzero(a->password, strlen(a->password));
        free(a->password);
    }
    free(a->password_command);
    free(a->auth);
    free(a->tls_ca_file);
    free(a->cache_dir);
    free(a->sent_folder);
    free(a->pop3_folder);
    free(a);
}

static void
config_free(struct tern_config *cfg)
{
    if (!cfg)
        return;
    struct tern_account *a = cfg->accounts;
    while (a) {
        struct tern_account *next = a->next;
        account_free(a);
        a = next;
    }
    free(cfg->path);
    free(cfg);
}

void
tern_config_free(struct tern_config *cfg)
{
    config_free(cfg);
}

/* Checks an account as a whole once its section has ended. */
static int
config_finish_account(struct config_parser *ps)
{
    struct tern_account *a = ps->cur;
    if (!a)
        return 1;
    int header = ps->account_lines[ps->account_count - 1];
    if (!a->imap && !a->pop3 && !a->smtp)
        return config_fail(ps, TERN_E_CONFIG, header, "[account %s] has no imap, pop3 or smtp key",
                           a->name);
    if (a->smtp && !a->from)
        return config_fail(ps, TERN_E_CONFIG, header, "[account %s] has smtp but no from key",
                           a->name);
    if (a->tls == TERN_TLS_OFF) {
        const struct tern_url *urls[] = {a->imap, a->pop3, a->smtp};
        for (size_t k = 0; k < 3; k++) {
            if (urls[k] && urls[k]->implicit_tls)
                return config_fail(ps, TERN_E_CONFIG, ps->key_lines[CONFIG_KEY_TLS],
                                   "key 'tls' in [account %s]: tls = off conflicts with "
                                   "%s:// (use %.4s:// for a cleartext connection)",
                                   a->name, urls[k]->scheme, urls[k]->scheme);
        }
    }
    if (!a->cache_dir) {
        /* $XDG_DATA_HOME/tern/NAME, else ~/.local/share/tern/NAME (XDG base dirs). */
        const char *xdg = xdg_dir("XDG_DATA_HOME");
        char *base = NULL;
        if (xdg) {
            base = path_join(xdg, "tern");
        } else {
            char *home = home_dir();
            if (!home)
                return config_fail(ps, TERN_E_CONFIG, header,
                                   "cannot find the home directory for the cache_dir of "
                                   "[account %s]; set cache_dir",
                                   a->name);
            base = path_join(home, ".local/share/tern");
            free(home);
        }
        if (!base)
            return config_nomem(ps);
        a->cache_dir = path_join(base, a->name);
        free(base);
        if (!a->cache_dir)
            return config_nomem(ps);
    }
    ps->cur = NULL;
    return 1;
}

/*
 * Account names become directory names and command words, so they are
 * kept to letters, digits, "-_.@+" and non-ASCII UTF-8, not starting with '.'.
 */
static bool
account_name_ok(const char *s, size_t len)
{
    if (len == 0 || s[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(c >= 0x80 || is_alpha((char)c) || is_digit((char)c) || strchr("-_.@+", c)))
            return false;
    }
    return true;
}

/* A section header line, brackets included and comments removed. */
static int
config_on_section(struct config_parser *ps, const char *line, size_t len)
{
    if (!config_finish_account(ps))
        return 0;
    const char *in = line + 1;
    size_t ilen = len - 2;
    while (ilen && is_blank(*in))
        in++, ilen--;
    while (ilen && is_blank(in[ilen - 1]))
        ilen--;
    if (ilen < 7 || memcmp(in, "account", 7) != 0 || (ilen > 7 && !is_blank(in[7])))
        return config_fail(
            ps, TERN_E_CONFIG, ps->lineno, "unknown section '[%.*s%s]' (expected [account NAME])",
            quote_len(in, ilen), in, (size_t)quote_len(in, ilen) < ilen ? "..." : "");
    const char *name = in + 7;
    size_t nlen = ilen - 7;
    while (nlen && is_blank(*name))
        name++, nlen--;
    if (nlen == 0)
        return config_fail(ps, TERN_E_CONFIG, ps->lineno, "empty account name in [account]");
    if (!account_name_ok(name, nlen))
        return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                           "bad account name '%.*s%s': use letters, digits and - _ . @ +, "
                           "not starting with '.'",
                           quote_len(name, nlen), name,
                           (size_t)quote_len(name, nlen) < nlen ? "..." : "");

    int k = 0;
    for (struct tern_account *a = ps->cfg->accounts; a; a = a->next, k++) {
        if (strlen(a->name) == nlen && memcmp(a->name, name, nlen) == 0)
            return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                               "duplicate account '%s' (first on line %d)", a->name,
                               ps->account_lines[k]);
    }
    if (ps->account_count == CONFIG_ACCOUNTS_MAX)
        return config_fail(ps, TERN_E_CONFIG, ps->lineno, "more than %d accounts",
                           CONFIG_ACCOUNTS_MAX);

    int *lines = realloc(ps->account_lines, sizeof *lines * (size_t)(ps->account_count + 1));
    if (!lines)
        return config_nomem(ps);
    ps->account_lines = lines;
    struct tern_account *a = calloc(1, sizeof *a);
    if (!a)
        return config_nomem(ps);
    if (!(a->name = strndup(name, nlen))) {
        free(a);
        return config_nomem(ps);
    }
    a->tls = TERN_TLS_VERIFY;
    a->offline = TERN_OFFLINE_FULL;
    a->timeout = CONFIG_TIMEOUT_DEFAULT;
    *ps->tail = a;
    ps->tail = &a->next;
    ps->account_lines[ps->account_count++] = ps->lineno;
    ps->cur = a;
    memset(ps->key_lines, 0, sizeof ps->key_lines);
    return 1;
}

/* Stores a copy of VALUE in *FIELD. */
static int
set_string(struct config_parser *ps, char **field, const char *value)
{
    if (!(*field = strdup(value)))
        return config_nomem(ps);
    return 1;
}

static int
set_url(struct config_parser *ps, enum config_key key, struct tern_url **field, const char *value)
{
    const char *name = config_key_names[key];
    struct tbuf why;
    tbuf_init(&why, 0);
    struct tern_url *u = NULL;
    enum tern_status st = url_parse(value, strlen(value), &u, &why);
    if (st == TERN_E_CONFIG) {
        config_fail(ps, st, ps->lineno, "bad URL for key '%s' in [account %s]: %s", name,
                    ps->cur->name, tbuf_ptr(&why));
        tbuf_free(&why);
        return 0;
    }
    tbuf_free(&why);
    if (st != TERN_OK)
        return config_nomem(ps);
    /* The key names its protocol: "imap" takes imap:// and imaps:// only. */
    size_t klen = strlen(name);
    if (strncmp(u->scheme, name, klen) != 0 ||
        !(u->scheme[klen] == '\0' || (u->scheme[klen] == 's' && u->scheme[klen + 1] == '\0'))) {
        config_fail(ps, TERN_E_CONFIG, ps->lineno,
                    "bad URL for key '%s' in [account %s]: the scheme must be %s or %ss, not %s",
                    name, ps->cur->name, name, name, u->scheme);
        config_url_free(u);
        return 0;
    }
    *field = u;
    return 1;
}

static int
bad_value(struct config_parser *ps, enum config_key key, const char *value, const char *expected)
{
    return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                       "bad value " QUOTE_FMT " for key '%s' in [account %s] (expected %s)",
                       QUOTE_ARGS(value), config_key_names[key], ps->cur->name, expected);
}

static int
bad_path(struct config_parser *ps, enum config_key key, enum tern_status st, const char *why)
{
    if (st == TERN_E_NOMEM)
        return config_nomem(ps);
    return config_fail(ps, st, ps->lineno, "bad path for key '%s' in [account %s]: %s",
                       config_key_names[key], ps->cur->name, why);
}

/* inih's handler: one "name = value" line of the open section. */
static int
config_on_pair(void *user, const char *section, const char *name, const char *value)
{
    struct config_parser *ps = user;
    struct tern_account *a = ps->cur;
    (void)section; /* config_reader() tracks sections itself */
    if (ps->st != TERN_OK)
        return 0;
    if (*name == '\0')
        return config_fail(ps, TERN_E_CONFIG, ps->lineno, "missing key before '='");
    if (!a)
        return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                           "key " QUOTE_FMT " outside any [account NAME] section",
                           QUOTE_ARGS(name));

    enum config_key key = CONFIG_KEY_COUNT;
    for (int k = 0; k < CONFIG_KEY_COUNT; k++) {
        if (strcmp(name, config_key_names[k]) == 0)
            key = (enum config_key)k;
    }
    if (key == CONFIG_KEY_COUNT)
        return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                           "unknown key " QUOTE_FMT " in [account %s]", QUOTE_ARGS(name), a->name);
    if (ps->key_lines[key])
        return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                           "duplicate key '%s' in [account %s] (first on line %d)", name, a->name,
                           ps->key_lines[key]);
    ps->key_lines[key] = ps->lineno;
    if (*value == '\0')
        return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                           "empty value for key '%s' in [account %s]", name, a->name);

    enum tern_status st;
    const char *why = NULL;
    switch (key) {
    case CONFIG_KEY_FROM:
        if (!strchr(value, '@'))
            return bad_value(ps, key, value, "an address such as Name <user@example.org>");
        return set_string(ps, &a->from, value);
    case CONFIG_KEY_IMAP: return set_url(ps, key, &a->imap, value);
    case CONFIG_KEY_POP3: return set_url(ps, key, &a->pop3, value);
    case CONFIG_KEY_SMTP: return set_url(ps, key, &a->smtp, value);
    case CONFIG_KEY_PASSWORD_COMMAND:
    case CONFIG_KEY_PASSWORD:
        if (ps->key_lines[CONFIG_KEY_PASSWORD] && ps->key_lines[CONFIG_KEY_PASSWORD_COMMAND])
            return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                               "key '%s' in [account %s]: set password or password_command, "
                               "not both",
                               name, a->name);
        return set_string(ps, key == CONFIG_KEY_PASSWORD ? &a->password : &a->password_command,
                          value);
    case CONFIG_KEY_AUTH:
        for (size_t k = 0; k < sizeof config_auth_names / sizeof config_auth_names[0]; k++) {
            if (strcmp(value, config_auth_names[k]) == 0)
                return set_string(ps, &a->auth, value);
        }
        return bad_value(ps, key, value, "plain, login, xoauth2 or oauthbearer");
    case CONFIG_KEY_TLS:
        if (strcmp(value, "verify") == 0) {
            a->tls = TERN_TLS_VERIFY;
            return 1;
        }
        if (strcmp(value, "off") == 0) {
            a->tls = TERN_TLS_OFF;
            return 1;
        }
        if (strncmp(value, "fingerprint:sha256:", 19) == 0 &&
            parse_fingerprint(value + 19, strlen(value + 19), a->fingerprint)) {
            a->tls = TERN_TLS_FINGERPRINT;
            return 1;
        }
        return bad_value(ps, key, value, "verify, off or fingerprint:sha256: and 64 hex digits");
    case CONFIG_KEY_TLS_CA_FILE:
        if ((st = expand_path(value, &a->tls_ca_file, &why)) != TERN_OK)
            return bad_path(ps, key, st, why);
        return 1;
    case CONFIG_KEY_CACHE_DIR:
        if ((st = expand_path(value, &a->cache_dir, &why)) != TERN_OK)
            return bad_path(ps, key, st, why);
        return 1;
    case CONFIG_KEY_OFFLINE:
        if (strcmp(value, "full") == 0)
            a->offline = TERN_OFFLINE_FULL;
        else if (strcmp(value, "headers") == 0)
            a->offline = TERN_OFFLINE_HEADERS;
        else if (strcmp(value, "none") == 0)
            a->offline = TERN_OFFLINE_NONE;
        else
            return bad_value(ps, key, value, "full, headers or none");
        return 1;
    case CONFIG_KEY_SENT_FOLDER: return set_string(ps, &a->sent_folder, value);
    case CONFIG_KEY_TIMEOUT: {
        long secs = 0;
        size_t n = strlen(value);
        bool ok = n > 0 && n <= 4;
        for (size_t k = 0; ok && k < n; k++) {
            ok = is_digit(value[k]);
            secs = secs * 10 + (value[k] - '0');
        }
        if (!ok || secs < 1 || secs > CONFIG_TIMEOUT_MAX)
            return bad_value(ps, key, value, "a number of seconds from 1 to 3600");
        a->timeout = (int)secs;
        return 1;
    }
    case CONFIG_KEY_COMPRESS:
    case CONFIG_KEY_POP3_KEEP: {
        bool *flag = key == CONFIG_KEY_COMPRESS ? &a->compress : &a->pop3_keep;
        if (strcmp(value, "yes") == 0)
            *flag = true;
        else if (strcmp(value, "no") == 0)
            *flag = false;
        else
            return bad_value(ps, key, value, "yes or no");
        return 1;
    }
    case CONFIG_KEY_POP3_FOLDER:
        if (!*value || value[0] == '/' || strstr(value, "..") || strchr(value, '\\'))
            return bad_value(ps, key, value, "a folder name, without '..' or a leading '/'");
        return set_string(ps, &a->pop3_folder, value);
    case CONFIG_KEY_POP3_KEEP_DAYS: {
        long days = 0;
        size_t n = strlen(value);
        bool ok = n > 0 && n <= 5;
        for (size_t k = 0; ok && k < n; k++) {
            ok = is_digit(value[k]);
            days = days * 10 + (value[k] - '0');
        }
        if (!ok || days < 1 || days > 36500)
            return bad_value(ps, key, value, "a number of days from 1 to 36500");
        a->pop3_keep_days = (int)days;
        return 1;
    }
    case CONFIG_KEY_DSN_NOTIFY: {
        /* RFC 3461 §4.1: NEVER, or any of SUCCESS, FAILURE, DELAY. */
        static const struct {
            const char *word;
            unsigned bit;
        } words[] = {{"never", CONFIG_DSN_NEVER},
                     {"success", CONFIG_DSN_SUCCESS},
                     {"failure", CONFIG_DSN_FAILURE},
                     {"delay", CONFIG_DSN_DELAY}};
        unsigned bits = 0;
        const char *p = value;
        while (*p) {
            size_t n = strcspn(p, ",");
            bool found = false;
            for (size_t k = 0; k < sizeof(words) / sizeof(words[0]); k++) {
                if (strlen(words[k].word) == n && strncmp(p, words[k].word, n) == 0) {
                    bits |= words[k].bit;
                    found = true;
                }
            }
            if (!found)
                bits = ~0u;
            p += n;
            if (*p == ',')
                p++;
        }
        if (!bits || bits == ~0u || ((bits & CONFIG_DSN_NEVER) && bits != CONFIG_DSN_NEVER))
            return bad_value(ps, key, value,
                             "never, or a comma-separated list of success, failure and delay");
        a->dsn_notify = bits;
        return 1;
    }
    case CONFIG_KEY_COUNT: break;
    }
    return config_fail(ps, TERN_E_CONFIG, ps->lineno, "unknown key '%s'", name);
}

/*
 * Checks the bytes of one line: no NUL, no control character but tab, and
 * valid UTF-8. Returns 1, or 0 with the error recorded.
 */
static int
config_check_bytes(struct config_parser *ps, const char *p, size_t len)
{
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\0')
            return config_fail(ps, TERN_E_CONFIG, ps->lineno, "NUL byte in the line");
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return config_fail(ps, TERN_E_CONFIG, ps->lineno,
                               "control character 0x%02x in the line", c);
        size_t n = text_utf8_seq(p + i, len - i);
        if (n == 0)
            return config_fail(ps, TERN_E_CONFIG, ps->lineno, "invalid UTF-8 in the line");
        i += n;
    }
    return 1;
}

/*
 * inih's reader: hands out the next line, checked and with its comment
 * removed, as "text\n" in STR (NUM bytes). Section headers are handled
 * here before inih sees them. Returns NULL at the end or after an error,
 * which ends the parse.
 */
static char *
config_reader(char *str, int num, void *stream)
{
    struct config_parser *ps = stream;
    if (ps->st != TERN_OK || ps->pos >= ps->len)
        return NULL;
    if (num < 3) {
        config_fail(ps, TERN_E_CONFIG, ps->lineno + 1, "the INI parser's line buffer is too small");
        return NULL;
    }

    const char *line = ps->text + ps->pos;
    size_t avail = ps->len - ps->pos;
    const char *nl = memchr(line, '\n', avail);
    size_t len = nl ? (size_t)(nl - line) : avail;
    ps->pos += nl ? len + 1 : len;
    ps->lineno++;
    if (len && line[len - 1] == '\r')
        len--;

    size_t limit = (size_t)num - 2 < CONFIG_LINE_MAX ? (size_t)num - 2 : CONFIG_LINE_MAX;
    if (len > limit) {
        config_fail(ps, TERN_E_CONFIG, ps->lineno, "line longer than %zu bytes", limit);
        return NULL;
    }
    if (ps->lineno == 1 && len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
        /* A UTF-8 byte order mark. */
        line += 3;
        len -= 3;
    }
    if (!config_check_bytes(ps, line, len))
        return NULL;

    /* '#' or ';' at the start or after a blank starts a comment. */
    for (size_t i = 0; i < len; i++) {
        if ((line[i] == '#' || line[i] == ';') && (i == 0 || is_blank(line[i - 1]))) {
            len = i;
            break;
        }
    }
    while (len && is_blank(*line))
        line++, len--;
    while (len && is_blank(line[len - 1]))
        len--;

    if (len > 0 && line[0] == '[') {
        if (line[len - 1] != ']' || len < 2) {
            config_fail(ps, TERN_E_CONFIG, ps->lineno,
                        "missing ']' at the end of the section line");
            return NULL;
        }
        if (memchr(line + 1, ']', len - 2) || memchr(line + 1, '[', len - 2)) {
            config_fail(ps, TERN_E_CONFIG, ps->lineno, "stray bracket in the section line");
            return NULL;
        }
        if (!config_on_section(ps, line, len))
            return NULL;
    } else if (len > 0) {
        /* inih would also split at ':'; only "key = value" is the syntax here. */
        size_t sep = 0;
        while (sep < len && line[sep] != '=' && line[sep] != ':')
            sep++;
        if (sep == len || line[sep] != '=') {
            config_fail(ps, TERN_E_CONFIG, ps->lineno,
                        "expected 'key = value' or '[account NAME]'");
            return NULL;
        }
    }
    memcpy(str, line, len);
    str[len] = '\n';
    str[len + 1] = '\0';
    return str;
}

/*
 * Debian's libinih reads these options at run time (see the top of this
 * file). The buffer holds CONFIG_LINE_MAX bytes, the line ending and a NUL.
 */
static void
config_ini_setup(void)
{
    ini_allow_multiline = false;
    ini_allow_bom = false;
    ini_allow_inline_comments = false;
    ini_allow_no_value = false;
    ini_stop_on_first_error = true;
    ini_use_stack = false;
    ini_allow_realloc = false;
    ini_initial_alloc = CONFIG_LINE_MAX + 3;
    ini_max_line = CONFIG_LINE_MAX + 3;
}

/*
 * Parses LEN bytes of TEXT (NUL bytes included, which are errors). PATH
 * names the file in sentences and in the result.
 */
static enum tern_status
config_parse_buf(const char *text, size_t len, const char *path, struct tern_config **out,
                 char **errmsg)
{
    struct config_parser ps;
    memset(&ps, 0, sizeof ps);
    ps.text = text;
    ps.len = len;
    ps.shown = shown_path(path);
    ps.cfg = calloc(1, sizeof *ps.cfg);
    if (!ps.shown || !ps.cfg || !(ps.cfg->path = strdup(path))) {
        ps.st = TERN_E_NOMEM;
        goto done;
    }
    ps.tail = &ps.cfg->accounts;

    config_ini_setup();
    int rc = ini_parse_stream(config_reader, &ps, config_on_pair, &ps);
    if (ps.st != TERN_OK)
        goto done;
    if (rc == -2) {
        ps.st = TERN_E_NOMEM;
        goto done;
    }
    if (rc != 0) {
        config_fail(&ps, TERN_E_CONFIG, rc, "syntax error");
        goto done;
    }
    if (!config_finish_account(&ps))
        goto done;
    if (!ps.cfg->accounts)
        config_fail(&ps, TERN_E_CONFIG, 0, "no [account NAME] section");

done:
    free(ps.shown);
    free(ps.account_lines);
    if (ps.st != TERN_OK) {
        config_free(ps.cfg);
        if (errmsg)
            *errmsg = ps.errmsg;
        else
            free(ps.errmsg);
        return ps.st;
    }
    *out = ps.cfg;
    return TERN_OK;
}

enum tern_status
config_parse_string(const char *text, const char *path, struct tern_config **out, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    if (!out)
        return TERN_E_USAGE;
    *out = NULL;
    if (!text)
        return TERN_E_USAGE;
    return config_parse_buf(text, strlen(text), path ? path : "config", out, errmsg);
}

/* Sets *ERRMSG to "PREFIX PATH: strerror(ERRNUM)" and returns ST. */
static enum tern_status
load_fail(char **errmsg, enum tern_status st, const char *what, const char *path, int errnum)
{
    if (errmsg) {
        struct tbuf b;
        tbuf_init(&b, 0);
        if (errnum)
            tbuf_addf(&b, "%s %s: %s", what, path, strerror(errnum));
        else
            tbuf_addf(&b, "%s: %s", path, what);
        *errmsg = tbuf_take(&b);
    }
    return st;
}

enum tern_status
tern_config_load(const char *path, struct tern_config **out, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    if (!out)
        return TERN_E_USAGE;
    *out = NULL;

    char *owned_path = NULL;
    if (!path) {
        if (!(owned_path = tern_config_default_path()))
            return TERN_E_NOMEM;
        path = owned_path;
    }
    char *shown = shown_path(path);
    if (!shown) {
        free(owned_path);
        return TERN_E_NOMEM;
    }

    enum tern_status st;
    struct tbuf data;
    tbuf_init(&data, CONFIG_FILE_MAX);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = load_fail(errmsg, TERN_E_IO, "cannot open", shown, errno);
        goto done;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = load_fail(errmsg, TERN_E_IO, "cannot read", shown, errno);
        goto done;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = load_fail(errmsg, TERN_E_IO, "cannot read", shown, EISDIR);
        goto done;
    }
    for (;;) {
        char chunk[16384];
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = load_fail(errmsg, TERN_E_IO, "cannot read", shown, errno);
            goto done;
        }
        if (n == 0)
            break;
        st = tbuf_add(&data, chunk, (size_t)n);
        if (st == TERN_E_PROTO) {
            st = load_fail(errmsg, TERN_E_CONFIG, "file larger than 8 MiB", shown, 0);
            goto done;
        }
        if (st != TERN_OK)
            goto done;
    }
    st = config_parse_buf(tbuf_ptr(&data), tbuf_len(&data), path, out, errmsg);

done:
    if (fd >= 0)
        close(fd);
    tbuf_free(&data);
    free(shown);
    free(owned_path);
    return st;
}

char *
tern_config_default_path(void)
{
    const char *env = getenv("TERN_CONFIG");
    if (env && *env)
        return strdup(env);
    const char *xdg = xdg_dir("XDG_CONFIG_HOME");
    if (xdg)
        return path_join(xdg, "tern/config");
    char *home = home_dir();
    if (!home)
        return NULL;
    char *path = path_join(home, ".config/tern/config");
    free(home);
    return path;
}

const struct tern_account *
config_account(const struct tern_config *cfg, const char *name)
{
    if (!cfg)
        return NULL;
    if (!name)
        return cfg->accounts;
    for (const struct tern_account *a = cfg->accounts; a; a = a->next) {
        if (strcmp(a->name, name) == 0)
            return a;
    }
    return NULL;
}
