/*
 * config_test.c - unit tests of src/config.c: the INI config file, its
 * URLs, fingerprints, defaults and error sentences, and the config
 * functions of include/tern.h.
 *
 * Layer: tests of src/.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tern.h"

#include "config.h"

/* A scratch directory for files, made by the group setup. */
static char scratch[] = "/tmp/tern-config-test-XXXXXX";

/* A first section that is valid on its own; tests append lines to it. */
#define WORK "[account work]\nimap = imaps://alice@imap.example.org\n"

/* The example of DESIGN.md "Config", as a user would paste it. */
static const char design_example[] =
    "[account work]\n"
    "from       = Alice Example <alice@example.org>\n"
    "imap       = imaps://alice@imap.example.org          # imap:// = STARTTLS required\n"
    "pop3       = pop3s://alice@pop.example.org           # pop3:// = STLS required\n"
    "smtp       = smtps://alice@smtp.example.org          # smtp://host:587 = STARTTLS "
    "required\n"
    "password_command = pass show mail/work               # or: password = ...\n"
    "tls        = verify          # verify (default) | fingerprint:sha256:HEX | off "
    "(cleartext, explicit only)\n"
    "tls_ca_file = /path/ca.pem   # extra trust anchor (tests, private CAs)\n"
    "cache_dir  = ~/.local/share/tern/work                 # default "
    "$XDG_DATA_HOME/tern/NAME\n"
    "offline    = full            # full | headers | none: what the mirror keeps\n"
    "sent_folder = Sent           # default: the SPECIAL-USE \\Sent folder\n";

static void
write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

/* Parses TEXT as file "t.conf", expects status WANT, returns the sentence. */
static char *
parse_fail(const char *text, enum tern_status want)
{
    struct tern_config *cfg = (struct tern_config *)&cfg;
    char *msg = NULL;
    enum tern_status st = config_parse_string(text, "t.conf", &cfg, &msg);
    assert_int_equal(st, want);
    assert_null(cfg);
    assert_non_null(msg);
    return msg;
}

#define assert_parse_error(text, sentence)                                                         \
    do {                                                                                           \
        char *msg_ = parse_fail((text), TERN_E_CONFIG);                                            \
        assert_string_equal(msg_, (sentence));                                                     \
        free(msg_);                                                                                \
    } while (0)

static struct tern_config *
parse_ok(const char *text)
{
    struct tern_config *cfg = NULL;
    char *msg = NULL;
    enum tern_status st = config_parse_string(text, "t.conf", &cfg, &msg);
    if (st != TERN_OK)
        fail_msg("unexpected error: %s", msg ? msg : "(none)");
    assert_null(msg);
    assert_non_null(cfg);
    return cfg;
}

static int
group_setup(void **state)
{
    if (!mkdtemp(scratch))
        return -1;
    setenv("HOME", "/home/alice", 1);
    unsetenv("XDG_DATA_HOME");
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("TERN_CONFIG");
    return 0;
}

static int
group_teardown(void **state)
{
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", scratch);
    return system(cmd) == 0 ? 0 : -1;
}

/* Every test starts from the same environment. */
static int
test_setup(void **state)
{
    setenv("HOME", "/home/alice", 1);
    unsetenv("XDG_DATA_HOME");
    unsetenv("XDG_CONFIG_HOME");
    unsetenv("TERN_CONFIG");
    return 0;
}

static void
test_design_example(void **state)
{
    struct tern_config *cfg = parse_ok(design_example);
    assert_string_equal(cfg->path, "t.conf");
    const struct tern_account *a = cfg->accounts;
    assert_non_null(a);
    assert_null(a->next);
    assert_ptr_equal(config_account(cfg, NULL), a);
    assert_ptr_equal(config_account(cfg, "work"), a);
    assert_null(config_account(cfg, "home"));
    assert_string_equal(a->name, "work");
    assert_string_equal(a->from, "Alice Example <alice@example.org>");

    assert_string_equal(a->imap->scheme, "imaps");
    assert_string_equal(a->imap->user, "alice");
    assert_string_equal(a->imap->host, "imap.example.org");
    assert_int_equal(a->imap->port, 993);
    assert_true(a->imap->implicit_tls);
    assert_string_equal(a->pop3->scheme, "pop3s");
    assert_string_equal(a->pop3->host, "pop.example.org");
    assert_int_equal(a->pop3->port, 995);
    assert_true(a->pop3->implicit_tls);
    assert_string_equal(a->smtp->scheme, "smtps");
    assert_string_equal(a->smtp->host, "smtp.example.org");
    assert_int_equal(a->smtp->port, 465);

    assert_string_equal(a->password_command, "pass show mail/work");
    assert_null(a->password);
    assert_null(a->auth);
    assert_int_equal(a->tls, TERN_TLS_VERIFY);
    assert_string_equal(a->tls_ca_file, "/path/ca.pem");
    assert_string_equal(a->cache_dir, "/home/alice/.local/share/tern/work");
    assert_int_equal(a->offline, TERN_OFFLINE_FULL);
    assert_string_equal(a->sent_folder, "Sent");
    assert_int_equal(a->timeout, 30);
    tern_config_free(cfg);
}

static void
test_defaults_and_all_keys(void **state)
{
    struct tern_config *cfg = parse_ok("[account home]\n"
                                       "imap = imap://127.0.0.1:1143\n"
                                       "[account work]\n"
                                       "from = bob@example.org\n"
                                       "smtp = smtp://bob@mail.example.org\n"
                                       "password = hunter2\n"
                                       "auth = xoauth2\n"
                                       "offline = headers\n"
                                       "timeout = 3600\n"
                                       "[account x]\n"
                                       "pop3 = POP3://pop.example.org\n"
                                       "offline = none\n"
                                       "timeout = 1\n"
                                       "auth = oauthbearer\n");
    const struct tern_account *home = config_account(cfg, NULL);
    assert_string_equal(home->name, "home");
    assert_null(home->from);
    assert_null(home->imap->user);
    assert_string_equal(home->imap->host, "127.0.0.1");
    assert_int_equal(home->imap->port, 1143);
    assert_false(home->imap->implicit_tls);
    assert_null(home->pop3);
    assert_null(home->smtp);
    assert_null(home->password);
    assert_null(home->password_command);
    assert_null(home->tls_ca_file);
    assert_null(home->sent_folder);
    assert_int_equal(home->tls, TERN_TLS_VERIFY);
    assert_int_equal(home->offline, TERN_OFFLINE_FULL);
    assert_int_equal(home->timeout, 30);
    assert_string_equal(home->cache_dir, "/home/alice/.local/share/tern/home");

    const struct tern_account *work = config_account(cfg, "work");
    assert_ptr_equal(home->next, work);
    assert_string_equal(work->smtp->scheme, "smtp");
    assert_int_equal(work->smtp->port, 587);
    assert_false(work->smtp->implicit_tls);
    assert_string_equal(work->password, "hunter2");
    assert_string_equal(work->auth, "xoauth2");
    assert_int_equal(work->offline, TERN_OFFLINE_HEADERS);
    assert_int_equal(work->timeout, 3600);

    const struct tern_account *x = config_account(cfg, "x");
    assert_ptr_equal(work->next, x);
    assert_null(x->next);
    assert_string_equal(x->pop3->scheme, "pop3");
    assert_int_equal(x->pop3->port, 110);
    assert_int_equal(x->offline, TERN_OFFLINE_NONE);
    assert_int_equal(x->timeout, 1);
    assert_string_equal(x->auth, "oauthbearer");
    tern_config_free(cfg);

    cfg = parse_ok(WORK "auth = plain\n[account b]\nimap = imap://h\nauth = login\n");
    assert_string_equal(cfg->accounts->auth, "plain");
    assert_string_equal(cfg->accounts->next->auth, "login");
    tern_config_free(cfg);
}

static void
test_comments_and_layout(void **state)
{
    /* '#' and ';' start a comment only at the start or after a blank. */
    struct tern_config *cfg = parse_ok("\xef\xbb\xbf# a comment\r\n"
                                       "; another\r\n"
                                       "   # indented comment\r\n"
                                       "\r\n"
                                       "[account work]   ; trailing\r\n"
                                       "   imap=imaps://alice@imap.example.org/\r\n"
                                       "\tpassword = a#b;c ; the comment\r\n"
                                       "sent_folder = Sent # Items\r\n"
                                       "from = A <a@example.org>\t#\r\n"
                                       "tls_ca_file = /etc/ssl/ca#1.pem\n"
                                       "[account b] # x\n"
                                       "imap = imap://h");
    const struct tern_account *a = cfg->accounts;
    assert_string_equal(a->name, "work");
    assert_string_equal(a->imap->host, "imap.example.org");
    assert_string_equal(a->password, "a#b;c");
    assert_string_equal(a->sent_folder, "Sent");
    assert_string_equal(a->from, "A <a@example.org>");
    assert_string_equal(a->tls_ca_file, "/etc/ssl/ca#1.pem");
    assert_string_equal(a->next->name, "b");
    assert_string_equal(a->next->imap->host, "h");
    tern_config_free(cfg);

    /* Brackets and '=' inside a value are plain text. */
    cfg = parse_ok(WORK "sent_folder = [Gmail]/Sent Mail\npassword = a=b==\n");
    assert_string_equal(cfg->accounts->sent_folder, "[Gmail]/Sent Mail");
    assert_string_equal(cfg->accounts->password, "a=b==");
    tern_config_free(cfg);

    /* A value that starts with '#' is a comment, so the value is empty. */
    assert_parse_error(WORK "password = #secret\n",
                       "t.conf:3: empty value for key 'password' in [account work]");
    /* An indented line is a key of its own, not a continuation. */
    assert_parse_error(WORK "sent_folder = Sent\n  Items\n",
                       "t.conf:4: expected 'key = value' or '[account NAME]'");
    /* UTF-8 in values and account names is kept. */
    cfg = parse_ok("[account büro]\nimap = imap://h\nsent_folder = Gesendete Objekte ✓\n");
    assert_string_equal(cfg->accounts->name, "büro");
    assert_string_equal(cfg->accounts->sent_folder, "Gesendete Objekte ✓");
    assert_string_equal(cfg->accounts->cache_dir, "/home/alice/.local/share/tern/büro");
    tern_config_free(cfg);
}

static void
test_error_sentences(void **state)
{
    /* The sentence of the brief, with $HOME shown as ~. */
    struct tern_config *cfg = NULL;
    char *msg = NULL;
    assert_int_equal(config_parse_string("# tern\n\n[account work]\n"
                                         "from = Alice <alice@example.org>\n"
                                         "smtp = smtps://alice@smtp.example.org\n\n"
                                         "imapp = imaps://alice@imap.example.org\n",
                                         "/home/alice/.config/tern/config", &cfg, &msg),
                     TERN_E_CONFIG);
    assert_null(cfg);
    assert_string_equal(msg, "~/.config/tern/config:7: unknown key 'imapp' in [account work]");
    free(msg);

    assert_parse_error("imap = imaps://h\n[account work]\n",
                       "t.conf:1: key 'imap' outside any [account NAME] section");
    assert_parse_error(WORK "[account home]\nimap = imap://h\n[account work]\n",
                       "t.conf:5: duplicate account 'work' (first on line 1)");
    assert_parse_error(WORK "imap = imaps://other\n",
                       "t.conf:3: duplicate key 'imap' in [account work] (first on line 2)");
    assert_parse_error("[account]\nimap = imap://h\n", "t.conf:1: empty account name in [account]");
    assert_parse_error("[ account   ]\nimap = imap://h\n",
                       "t.conf:1: empty account name in [account]");
    assert_parse_error("[tern]\n", "t.conf:1: unknown section '[tern]' (expected [account NAME])");
    assert_parse_error(WORK "[]\n", "t.conf:3: unknown section '[]' (expected [account NAME])");
    assert_parse_error("[accounts x]\n",
                       "t.conf:1: unknown section '[accounts x]' (expected [account NAME])");
    assert_parse_error("[Account x]\n",
                       "t.conf:1: unknown section '[Account x]' (expected [account NAME])");
    assert_parse_error("[account my work]\n",
                       "t.conf:1: bad account name 'my work': use letters, digits and - _ . @ +, "
                       "not starting with '.'");
    assert_parse_error("[account ..]\n",
                       "t.conf:1: bad account name '..': use letters, digits and - _ . @ +, "
                       "not starting with '.'");
    assert_parse_error("[account a/b]\n",
                       "t.conf:1: bad account name 'a/b': use letters, digits and - _ . @ +, "
                       "not starting with '.'");
    assert_parse_error("[account work\n", "t.conf:1: missing ']' at the end of the section line");
    assert_parse_error("[account [work]]\n", "t.conf:1: stray bracket in the section line");
    assert_parse_error(WORK "offline\n", "t.conf:3: expected 'key = value' or '[account NAME]'");
    assert_parse_error(WORK "offline: full\n",
                       "t.conf:3: expected 'key = value' or '[account NAME]'");
    assert_parse_error(WORK " = full\n", "t.conf:3: missing key before '='");
    assert_parse_error(WORK "from =\n", "t.conf:3: empty value for key 'from' in [account work]");
    assert_parse_error(WORK "from = Alice\n",
                       "t.conf:3: bad value 'Alice' for key 'from' in [account work] (expected an "
                       "address such as Name <user@example.org>)");
    assert_parse_error(WORK "tls = verfy\n",
                       "t.conf:3: bad value 'verfy' for key 'tls' in [account work] (expected "
                       "verify, off or fingerprint:sha256: and 64 hex digits)");
    assert_parse_error(WORK "offline = some\n",
                       "t.conf:3: bad value 'some' for key 'offline' in [account work] (expected "
                       "full, headers or none)");
    assert_parse_error(WORK "auth = PLAIN\n",
                       "t.conf:3: bad value 'PLAIN' for key 'auth' in [account work] (expected "
                       "plain, login, xoauth2 or oauthbearer)");
    static const char *const bad_timeouts[] = {"0", "3601", "30s", "-1", "+5", "99999", "1 0"};
    for (size_t i = 0; i < sizeof bad_timeouts / sizeof bad_timeouts[0]; i++) {
        char text[200], want[300];
        snprintf(text, sizeof text, WORK "timeout = %s\n", bad_timeouts[i]);
        snprintf(want, sizeof want,
                 "t.conf:3: bad value '%s' for key 'timeout' in [account work] (expected a "
                 "number of seconds from 1 to 3600)",
                 bad_timeouts[i]);
        assert_parse_error(text, want);
    }
    assert_parse_error(WORK "password = x\npassword_command = pass x\n",
                       "t.conf:4: key 'password_command' in [account work]: set password or "
                       "password_command, not both");
    assert_parse_error(WORK "cache_dir = relative/dir\n",
                       "t.conf:3: bad path for key 'cache_dir' in [account work]: must be an "
                       "absolute path or start with ~/");
    assert_parse_error(WORK "tls_ca_file = ~bob/ca.pem\n",
                       "t.conf:3: bad path for key 'tls_ca_file' in [account work]: only ~ and ~/ "
                       "are expanded, not ~user");
    assert_parse_error("[account work]\nfrom = a@b\n",
                       "t.conf:1: [account work] has no imap, pop3 or smtp key");
    assert_parse_error(WORK "[account b]\n", "t.conf:3: [account b] has no imap, pop3 or smtp key");
    assert_parse_error("[account work]\nsmtp = smtp://h\n",
                       "t.conf:1: [account work] has smtp but no from key");
    assert_parse_error(WORK "tls = off\n",
                       "t.conf:3: key 'tls' in [account work]: tls = off conflicts with imaps:// "
                       "(use imap:// for a cleartext connection)");
    assert_parse_error("[account work]\ntls = off\nimap = imap://h\npop3 = pop3s://h\n",
                       "t.conf:2: key 'tls' in [account work]: tls = off conflicts with pop3s:// "
                       "(use pop3:// for a cleartext connection)");
    assert_parse_error(WORK "sent_folder = a\x1b[31m\n",
                       "t.conf:3: control character 0x1b in the line");
    assert_parse_error(WORK "sent_folder = caf\xe9\n", "t.conf:3: invalid UTF-8 in the line");
    assert_parse_error(WORK "sent_folder = \xc0\xaf\n", "t.conf:3: invalid UTF-8 in the line");
    assert_parse_error(WORK "sent_folder = \xed\xa0\x80\n", "t.conf:3: invalid UTF-8 in the line");
    assert_parse_error(WORK "sent_folder = a\rb\n", "t.conf:3: control character 0x0d in the line");
    assert_parse_error("", "t.conf: no [account NAME] section");
    assert_parse_error("# only comments\n\n; here\n", "t.conf: no [account NAME] section");

    /* The first error wins; later lines are not looked at. */
    assert_parse_error(WORK "imapp = x\nbogus\n[x]\n",
                       "t.conf:3: unknown key 'imapp' in [account work]");

    /* A long key is quoted in part. */
    char longkey[300];
    memset(longkey, 'k', 200);
    snprintf(longkey + 200, sizeof longkey - 200, " = v\n");
    char text[400];
    snprintf(text, sizeof text, WORK "%s", longkey);
    msg = parse_fail(text, TERN_E_CONFIG);
    char want[200];
    snprintf(want, sizeof want, "t.conf:3: unknown key '%.64s...' in [account work]", longkey);
    assert_string_equal(msg, want);
    free(msg);

    /* NULL arguments. */
    cfg = (struct tern_config *)&cfg;
    assert_int_equal(config_parse_string(NULL, "t.conf", &cfg, &msg), TERN_E_USAGE);
    assert_null(cfg);
    assert_null(msg);
    assert_int_equal(config_parse_string(WORK, "t.conf", NULL, &msg), TERN_E_USAGE);
    /* No errmsg slot: the status alone. */
    assert_int_equal(config_parse_string("[x]\n", "t.conf", &cfg, NULL), TERN_E_CONFIG);
    assert_null(cfg);
    /* No path: the sentence says "config". */
    assert_int_equal(config_parse_string("[x]\n", NULL, &cfg, &msg), TERN_E_CONFIG);
    assert_string_equal(msg, "config:1: unknown section '[x]' (expected [account NAME])");
    free(msg);
    assert_null(config_account(NULL, NULL));
    tern_config_free(NULL);
}

static void
test_url_errors_in_config(void **state)
{
    assert_parse_error("[account work]\nimap = pop3s://h\n",
                       "t.conf:2: bad URL for key 'imap' in [account work]: the scheme must be "
                       "imap or imaps, not pop3s");
    assert_parse_error("[account work]\npop3 = imap://h\n",
                       "t.conf:2: bad URL for key 'pop3' in [account work]: the scheme must be "
                       "pop3 or pop3s, not imap");
    assert_parse_error("[account work]\nsmtp = imaps://h\n",
                       "t.conf:2: bad URL for key 'smtp' in [account work]: the scheme must be "
                       "smtp or smtps, not imaps");
    assert_parse_error("[account work]\nimap = imaps://alice@\n",
                       "t.conf:2: bad URL for key 'imap' in [account work]: missing host");
    assert_parse_error("[account work]\nimap = imaps://h:99999\n",
                       "t.conf:2: bad URL for key 'imap' in [account work]: bad port (expected a "
                       "number from 1 to 65535)");
    assert_parse_error("[account work]\nimap = https://h\n",
                       "t.conf:2: bad URL for key 'imap' in [account work]: unknown scheme "
                       "'https' (expected imap, imaps, pop3, pop3s, smtp or smtps)");

    /* A password in a URL is refused and never repeated. */
    char *msg =
        parse_fail("[account work]\nimap = imaps://alice:s3cret@imap.example.org\n", TERN_E_CONFIG);
    assert_string_equal(msg, "t.conf:2: bad URL for key 'imap' in [account work]: a password in "
                             "the URL is not allowed; use password or password_command");
    assert_null(strstr(msg, "s3cret"));
    free(msg);
}

/* config_parse_url() on S must fail with "bad URL: WHY". */
static void
check_bad_url(const char *s, const char *why)
{
    struct tern_url *u = (struct tern_url *)&u;
    char *msg = NULL;
    assert_int_equal(config_parse_url(s, &u, &msg), TERN_E_CONFIG);
    assert_null(u);
    assert_non_null(msg);
    char want[300];
    snprintf(want, sizeof want, "bad URL: %s", why);
    assert_string_equal(msg, want);
    free(msg);
}

static void
test_url_parse(void **state)
{
    struct tern_url *u = NULL;
    char *msg = NULL;
    assert_int_equal(config_parse_url("imaps://alice@imap.example.org", &u, &msg), TERN_OK);
    assert_null(msg);
    assert_string_equal(u->scheme, "imaps");
    assert_string_equal(u->user, "alice");
    assert_string_equal(u->host, "imap.example.org");
    assert_int_equal(u->port, 993);
    assert_true(u->implicit_tls);
    config_url_free(u);

    assert_int_equal(config_parse_url("imaps://alice%40example.org@[::1]:1993", &u, &msg), TERN_OK);
    assert_string_equal(u->user, "alice@example.org");
    assert_string_equal(u->host, "::1");
    assert_int_equal(u->port, 1993);
    config_url_free(u);

    assert_int_equal(config_parse_url("imap://127.0.0.1:1143", &u, &msg), TERN_OK);
    assert_string_equal(u->scheme, "imap");
    assert_null(u->user);
    assert_string_equal(u->host, "127.0.0.1");
    assert_int_equal(u->port, 1143);
    assert_false(u->implicit_tls);
    config_url_free(u);

    /* Default ports; the scheme is case-insensitive; one trailing '/' is allowed. */
    static const struct {
        const char *url, *scheme;
        int port;
        bool tls;
    } defaults[] = {
        {"imap://h", "imap", 143, false},   {"IMAPS://h/", "imaps", 993, true},
        {"pop3://h", "pop3", 110, false},   {"pop3s://h", "pop3s", 995, true},
        {"smtp://h", "smtp", 587, false},   {"SmTpS://h", "smtps", 465, true},
        {"smtp://h:25", "smtp", 25, false}, {"imap://h:65535", "imap", 65535, false},
        {"imap://h:1", "imap", 1, false},
    };
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        assert_int_equal(config_parse_url(defaults[i].url, &u, &msg), TERN_OK);
        assert_string_equal(u->scheme, defaults[i].scheme);
        assert_string_equal(u->host, "h");
        assert_int_equal(u->port, defaults[i].port);
        assert_int_equal(u->implicit_tls, defaults[i].tls);
        config_url_free(u);
    }

    /* The user ends at the last '@'; percent-escapes are decoded. */
    assert_int_equal(config_parse_url("smtp://a@b.org@mail.b.org", &u, &msg), TERN_OK);
    assert_string_equal(u->user, "a@b.org");
    assert_string_equal(u->host, "mail.b.org");
    config_url_free(u);
    assert_int_equal(config_parse_url("imap://%41l%69ce%2b1@[2001:db8::1]", &u, &msg), TERN_OK);
    assert_string_equal(u->user, "Alice+1");
    assert_string_equal(u->host, "2001:db8::1");
    assert_int_equal(u->port, 143);
    config_url_free(u);
    assert_int_equal(config_parse_url("imap://j%C3%BCrgen@h", &u, &msg), TERN_OK);
    assert_string_equal(u->user, "jürgen");
    config_url_free(u);

    check_bad_url("", "expected scheme://host, as in imaps://user@host");
    check_bad_url("imap.example.org", "expected scheme://host, as in imaps://user@host");
    check_bad_url("imaps:/h", "expected scheme://host, as in imaps://user@host");
    check_bad_url("://h", "expected scheme://host, as in imaps://user@host");
    check_bad_url("http://h", "unknown scheme 'http' (expected imap, imaps, pop3, pop3s, smtp or "
                              "smtps)");
    check_bad_url("imaps://", "missing host");
    check_bad_url("imaps://alice@", "missing host");
    check_bad_url("imaps://:993", "missing host");
    check_bad_url("imaps://@h", "empty user name before '@'");
    check_bad_url("imaps://a:b@h", "a password in the URL is not allowed; use password or "
                                   "password_command");
    check_bad_url("imaps://a:@h", "a password in the URL is not allowed; use password or "
                                  "password_command");
    check_bad_url("imaps://h/INBOX", "a path, query or fragment is not allowed");
    check_bad_url("imaps://h//", "a path, query or fragment is not allowed");
    check_bad_url("imaps://h?x", "a path, query or fragment is not allowed");
    check_bad_url("imaps://h#x", "a path, query or fragment is not allowed");
    static const char *const bad_ports[] = {"imaps://h:",
                                            "imaps://h:0",
                                            "imaps://h:65536",
                                            "imaps://h:123456",
                                            "imaps://h:-1",
                                            "imaps://h:9a",
                                            "imaps://h:99999999999999999999",
                                            "imaps://h: 1",
                                            "imaps://[::1]:",
                                            "imaps://[::1]:0x10"};
    for (size_t i = 0; i < sizeof bad_ports / sizeof bad_ports[0]; i++)
        check_bad_url(bad_ports[i], "bad port (expected a number from 1 to 65535)");
    check_bad_url("imaps://h:1:2", "bad port (expected a number from 1 to 65535)");
    check_bad_url("imaps://[::1", "missing ']' after the IPv6 address");
    check_bad_url("imaps://[]", "bad IPv6 address");
    check_bad_url("imaps://[127.0.0.1]", "bad IPv6 address");
    check_bad_url("imaps://[fe80::1%25eth0]", "bad IPv6 address");
    check_bad_url("imaps://[::1]x", "unexpected text after the IPv6 address");
    check_bad_url("imaps://ho st", "bad character in the host name");
    check_bad_url("imaps://h%41", "bad character in the host name");
    check_bad_url("imaps://a%4@h", "bad percent-encoding in the user name");
    check_bad_url("imaps://a%zz@h", "bad percent-encoding in the user name");
    check_bad_url("imaps://a%@h", "bad percent-encoding in the user name");
    check_bad_url("imaps://a%00b@h", "control character or space in the user name");
    check_bad_url("imaps://a%0d%0aA1 LOGOUT@h", "control character or space in the user name");
    check_bad_url("imaps://a b@h", "control character or space in the user name");
    char longhost[400] = "imap://";
    memset(longhost + 7, 'a', 254);
    check_bad_url(longhost, "host name longer than 253 characters");

    /* NULL arguments. */
    assert_int_equal(config_parse_url(NULL, &u, &msg), TERN_E_USAGE);
    assert_null(u);
    free(msg);
    assert_int_equal(config_parse_url("imap://h", NULL, &msg), TERN_E_USAGE);
    assert_int_equal(config_parse_url("imap://", &u, NULL), TERN_E_CONFIG);
    config_url_free(NULL);
}

static void
test_fingerprint(void **state)
{
    static const unsigned char want[32] = {
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0x11, 0x22,
        0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
        0xee, 0xff, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
    };
    static const char *const good[] = {
        "0123456789ABCDEF00112233445566778899AABBCCDDEEFFFEDCBA9876543210",
        ("01:23:45:67:89:AB:CD:EF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:FE:DC:BA:98:76:"
         "54:32:10"),
        "0123:4567:89abcdef00112233445566778899aabbccddeeff:fedcba9876543210",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char text[400];
        snprintf(text, sizeof text, WORK "tls = fingerprint:sha256:%s\n", good[i]);
        struct tern_config *cfg = parse_ok(text);
        assert_int_equal(cfg->accounts->tls, TERN_TLS_FINGERPRINT);
        assert_memory_equal(cfg->accounts->fingerprint, want, 32);
        tern_config_free(cfg);
    }

    static const char *const bad[] = {
        "fingerprint:sha256:",
        "fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff fedcba9876543210",
        ("fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba987654321"), /* 63 digits */
        ("fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba987654321000"), /* 66 */
        ("fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba98765432:10:"), /* trailing colon */
        ("fingerprint:sha256::0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba9876543210"), /* leading colon */
        ("fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba98765432::10"), /* double colon */
        ("fingerprint:sha256:0:123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba9876543210"), /* colon inside a byte */
        ("fingerprint:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba987654321g"),
        "fingerprint:sha1:0123456789abcdef0123456789abcdef01234567",
        ("fingerprint:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba9876543210"),
        ("FINGERPRINT:sha256:0123456789abcdef00112233445566778899aabbccddeeff"
         "fedcba9876543210"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[400];
        snprintf(text, sizeof text, WORK "tls = %s\n", bad[i]);
        char *msg = parse_fail(text, TERN_E_CONFIG);
        assert_non_null(strstr(msg, "t.conf:3: bad value '"));
        assert_non_null(strstr(msg, "' for key 'tls' in [account work] (expected verify, off or "
                                    "fingerprint:sha256: and 64 hex digits)"));
        free(msg);
    }

    struct tern_config *cfg = parse_ok("[account work]\nimap = imap://h:1143\ntls = off\n");
    assert_int_equal(cfg->accounts->tls, TERN_TLS_OFF);
    tern_config_free(cfg);
}

static void
test_default_path(void **state)
{
    char *p;
    setenv("TERN_CONFIG", "/srv/tern.conf", 1);
    setenv("XDG_CONFIG_HOME", "/xdg", 1);
    p = tern_config_default_path();
    assert_string_equal(p, "/srv/tern.conf");
    free(p);

    setenv("TERN_CONFIG", "", 1);
    p = tern_config_default_path();
    assert_string_equal(p, "/xdg/tern/config");
    free(p);

    unsetenv("TERN_CONFIG");
    setenv("XDG_CONFIG_HOME", "/xdg/", 1);
    p = tern_config_default_path();
    assert_string_equal(p, "/xdg/tern/config");
    free(p);

    /* A relative XDG directory is ignored, as the XDG spec says. */
    setenv("XDG_CONFIG_HOME", "relative", 1);
    p = tern_config_default_path();
    assert_string_equal(p, "/home/alice/.config/tern/config");
    free(p);

    unsetenv("XDG_CONFIG_HOME");
    setenv("HOME", "/home/bob/", 1);
    p = tern_config_default_path();
    assert_string_equal(p, "/home/bob/.config/tern/config");
    free(p);

    /* Without $HOME, the password database is asked. */
    unsetenv("HOME");
    p = tern_config_default_path();
    assert_non_null(p);
    assert_non_null(strstr(p, "/.config/tern/config"));
    assert_true(p[0] == '/');
    free(p);
}

static void
test_default_cache_dir(void **state)
{
    setenv("XDG_DATA_HOME", "/data", 1);
    struct tern_config *cfg = parse_ok(WORK "[account b]\nimap = imap://h\ncache_dir = ~\n"
                                            "[account c]\nimap = imap://h\ncache_dir = ~/m/\n"
                                            "[account d]\nimap = imap://h\ncache_dir = /var/m\n");
    const struct tern_account *a = cfg->accounts;
    assert_string_equal(a->cache_dir, "/data/tern/work");
    assert_string_equal(a->next->cache_dir, "/home/alice");
    assert_string_equal(a->next->next->cache_dir, "/home/alice/m/");
    assert_string_equal(a->next->next->next->cache_dir, "/var/m");
    tern_config_free(cfg);

    setenv("XDG_DATA_HOME", "not/absolute", 1);
    cfg = parse_ok(WORK);
    assert_string_equal(cfg->accounts->cache_dir, "/home/alice/.local/share/tern/work");
    tern_config_free(cfg);

    unsetenv("XDG_DATA_HOME");
    setenv("HOME", "/", 1);
    cfg = parse_ok(WORK "tls_ca_file = ~/ca.pem\n");
    assert_string_equal(cfg->accounts->cache_dir, "/.local/share/tern/work");
    assert_string_equal(cfg->accounts->tls_ca_file, "/ca.pem");
    tern_config_free(cfg);
}

static void
test_load_file(void **state)
{
    char path[300];
    snprintf(path, sizeof path, "%s/config", scratch);
    write_file(path, design_example, strlen(design_example));
    struct tern_config *cfg = NULL;
    char *msg = NULL;
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_OK);
    assert_null(msg);
    assert_string_equal(cfg->path, path);
    assert_string_equal(config_account(cfg, NULL)->imap->host, "imap.example.org");
    tern_config_free(cfg);

    /* A path of NULL means the default path. */
    setenv("TERN_CONFIG", path, 1);
    assert_int_equal(tern_config_load(NULL, &cfg, &msg), TERN_OK);
    assert_string_equal(cfg->path, path);
    tern_config_free(cfg);
    unsetenv("TERN_CONFIG");

    /* Errors name the file as given. */
    const char bad[] = WORK "imapp = x\n";
    write_file(path, bad, sizeof bad - 1);
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    assert_null(cfg);
    char want[400];
    snprintf(want, sizeof want, "%s:3: unknown key 'imapp' in [account work]", path);
    assert_string_equal(msg, want);
    free(msg);

    /* ... with $HOME shown as ~. */
    setenv("HOME", scratch, 1);
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    assert_string_equal(msg, "~/config:3: unknown key 'imapp' in [account work]");
    free(msg);
    setenv("HOME", "/home/alice", 1);

    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing", scratch);
    assert_int_equal(tern_config_load(missing, &cfg, &msg), TERN_E_IO);
    assert_null(cfg);
    snprintf(want, sizeof want, "cannot open %s: No such file or directory", missing);
    assert_string_equal(msg, want);
    free(msg);

    assert_int_equal(tern_config_load(scratch, &cfg, &msg), TERN_E_IO);
    snprintf(want, sizeof want, "cannot read %s: Is a directory", scratch);
    assert_string_equal(msg, want);
    free(msg);

    assert_int_equal(tern_config_load(path, NULL, &msg), TERN_E_USAGE);
    assert_int_equal(tern_config_load(missing, &cfg, NULL), TERN_E_IO);
}

static void
test_nul_bytes(void **state)
{
    char path[300];
    snprintf(path, sizeof path, "%s/nul", scratch);
    static const char text[] = WORK "password = abc\0def\n";
    write_file(path, text, sizeof text - 1);
    struct tern_config *cfg = NULL;
    char *msg = NULL;
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    assert_null(cfg);
    char want[400];
    snprintf(want, sizeof want, "%s:3: NUL byte in the line", path);
    assert_string_equal(msg, want);
    free(msg);

    /* A NUL after the last newline is a line of its own. */
    static const char tail[] = WORK "\0";
    write_file(path, tail, sizeof tail - 1);
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    snprintf(want, sizeof want, "%s:3: NUL byte in the line", path);
    assert_string_equal(msg, want);
    free(msg);

    /* Through the string API, a NUL simply ends the text. */
    assert_int_equal(config_parse_string(text, "t.conf", &cfg, &msg), TERN_OK);
    assert_string_equal(cfg->accounts->password, "abc");
    tern_config_free(cfg);
}

static void
test_long_lines(void **state)
{
    /* A 1 MB line is refused whole, not split into lines. */
    size_t n = 1024 * 1024;
    char *text = malloc(n + 200);
    assert_non_null(text);
    int head = snprintf(text, 200, WORK "password = ");
    memset(text + head, 'x', n);
    memcpy(text + head + n, "\nimapp = y\n", 12);
    char *msg = parse_fail(text, TERN_E_CONFIG);
    assert_string_equal(msg, "t.conf:3: line longer than 65536 bytes");
    free(msg);

    char path[300];
    snprintf(path, sizeof path, "%s/long", scratch);
    write_file(path, text, strlen(text));
    struct tern_config *cfg = NULL;
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    char want[400];
    snprintf(want, sizeof want, "%s:3: line longer than 65536 bytes", path);
    assert_string_equal(msg, want);
    free(msg);

    /* The longest line accepted: 65536 bytes, with or without CR. */
    size_t key = strlen("password = ");
    memset(text + head, 'y', 65536 - key);
    memcpy(text + head + 65536 - key, "\r\n", 3);
    cfg = parse_ok(text);
    assert_int_equal(strlen(cfg->accounts->password), 65536 - key);
    tern_config_free(cfg);
    memcpy(text + head + 65536 - key, "y\n", 3);
    msg = parse_fail(text, TERN_E_CONFIG);
    assert_string_equal(msg, "t.conf:3: line longer than 65536 bytes");
    free(msg);

    /* A long comment line is fine too, without a newline at the end. */
    size_t start = strlen(WORK);
    memset(text + start, '#', 65536);
    text[start + 65536] = '\0';
    cfg = parse_ok(text);
    assert_null(cfg->accounts->password);
    tern_config_free(cfg);
    free(text);

    /* A file over 8 MiB is refused before parsing. */
    n = 9 * 1024 * 1024;
    text = malloc(n);
    assert_non_null(text);
    memset(text, '\n', n);
    write_file(path, text, n);
    free(text);
    assert_int_equal(tern_config_load(path, &cfg, &msg), TERN_E_CONFIG);
    snprintf(want, sizeof want, "%s: file larger than 8 MiB", path);
    assert_string_equal(msg, want);
    free(msg);
}

static void
test_many_accounts(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    for (int i = 0; i < 1001; i++)
        fprintf(f, "[account a%d]\nimap = imap://h\n", i);
    fclose(f);
    char *msg = parse_fail(text, TERN_E_CONFIG);
    assert_string_equal(msg, "t.conf:2001: more than 1000 accounts");
    free(msg);
    /* 1000 are fine, and the order is kept. */
    *strstr(text, "[account a1000]") = '\0';
    struct tern_config *cfg = parse_ok(text);
    int count = 0;
    for (const struct tern_account *a = cfg->accounts; a; a = a->next, count++) {
        char name[20];
        snprintf(name, sizeof name, "a%d", count);
        assert_string_equal(a->name, name);
    }
    assert_int_equal(count, 1000);
    assert_string_equal(config_account(cfg, "a999")->name, "a999");
    tern_config_free(cfg);
    free(text);
}

static void
test_compress_and_pop3_keys(void **state)
{
    struct tern_config *cfg = parse_ok("[account a]\n"
                                       "pop3 = pop3s://alice@pop.example.org\n"
                                       "compress = yes\n"
                                       "pop3_folder = Mail/POP\n"
                                       "pop3_keep = yes\n"
                                       "pop3_keep_days = 14\n");
    const struct tern_account *a = cfg->accounts;
    assert_true(a->compress);
    assert_string_equal(a->pop3_folder, "Mail/POP");
    assert_true(a->pop3_keep);
    assert_int_equal(a->pop3_keep_days, 14);
    tern_config_free(cfg);

    cfg = parse_ok("[account a]\npop3 = pop3s://alice@pop.example.org\n");
    a = cfg->accounts;
    assert_false(a->compress);
    assert_null(a->pop3_folder);
    assert_false(a->pop3_keep);
    assert_int_equal(a->pop3_keep_days, 0);
    tern_config_free(cfg);

    assert_parse_error("[account a]\nimap = imaps://a@h\ncompress = maybe\n",
                       "t.conf:3: bad value 'maybe' for key 'compress' in [account a] "
                       "(expected yes or no)");
    assert_parse_error("[account a]\nimap = imaps://a@h\npop3_keep_days = 0\n",
                       "t.conf:3: bad value '0' for key 'pop3_keep_days' in [account a] "
                       "(expected a number of days from 1 to 36500)");
    cfg = parse_ok("[account a]\nimap = imaps://a@h\ndsn_notify = failure,delay\n");
    assert_int_equal(cfg->accounts->dsn_notify, CONFIG_DSN_FAILURE | CONFIG_DSN_DELAY);
    tern_config_free(cfg);
    assert_parse_error("[account a]\nimap = imaps://a@h\ndsn_notify = never,success\n",
                       "t.conf:3: bad value 'never,success' for key 'dsn_notify' in [account a] "
                       "(expected never, or a comma-separated list of success, failure and "
                       "delay)");
    assert_parse_error("[account a]\nimap = imaps://a@h\npop3_folder = ../x\n",
                       "t.conf:3: bad value '../x' for key 'pop3_folder' in [account a] "
                       "(expected a folder name, without '..' or a leading '/')");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_design_example, test_setup),
        cmocka_unit_test_setup(test_defaults_and_all_keys, test_setup),
        cmocka_unit_test_setup(test_comments_and_layout, test_setup),
        cmocka_unit_test_setup(test_error_sentences, test_setup),
        cmocka_unit_test_setup(test_url_errors_in_config, test_setup),
        cmocka_unit_test_setup(test_url_parse, test_setup),
        cmocka_unit_test_setup(test_fingerprint, test_setup),
        cmocka_unit_test_setup(test_default_path, test_setup),
        cmocka_unit_test_setup(test_default_cache_dir, test_setup),
        cmocka_unit_test_setup(test_load_file, test_setup),
        cmocka_unit_test_setup(test_nul_bytes, test_setup),
        cmocka_unit_test_setup(test_long_lines, test_setup),
        cmocka_unit_test_setup(test_many_accounts, test_setup),
        cmocka_unit_test_setup(test_compress_and_pop3_keys, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
