/*
 * imap_parse_test.c - unit tests of the IMAP response parser
 * (proto/imap_parse.c).
 *
 * Layer: tests of proto/. Every response kind, real-world FETCH lines from
 * Dovecot and Gmail, literals fed in every chunking, the literal sink, every
 * limit and a catalogue of hostile input. When built with
 * -DIMAP_PARSE_TEST_WRAP and -Wl,--wrap=malloc,--wrap=realloc it also fails
 * every allocation in turn and checks that no announced size is allocated.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "err.h"
#include "imap_parse.h"
#include "tbuf.h"

/* ---- allocation control (only with the --wrap link flags) ---- */

#ifdef IMAP_PARSE_TEST_WRAP
void *__real_malloc(size_t n);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *p, size_t n);

static long alloc_fail_at = -1; /* fail the allocation with this index */
static long alloc_count;
static size_t alloc_largest;

void *
__wrap_malloc(size_t n)
{
    if (alloc_fail_at >= 0 && alloc_count++ == alloc_fail_at)
        return NULL;
    if (n > alloc_largest)
        alloc_largest = n;
    return __real_malloc(n);
}

void *
__wrap_realloc(void *p, size_t n)
{
    if (alloc_fail_at >= 0 && alloc_count++ == alloc_fail_at)
        return NULL;
    if (n > alloc_largest)
        alloc_largest = n;
    return __real_realloc(p, n);
}
#endif

/* ---- helpers ---- */

/* Renders items as IMAP-like text: strings quoted with C escapes. */
static void
dump_items(struct tbuf *b, const struct imap_item *it)
{
    for (; it; it = it->next) {
        switch (it->type) {
        case IMAP_ITEM_ATOM:
            assert_non_null(it->str);
            assert_int_equal(it->str[it->len], '\0');
            tbuf_add(b, it->str, it->len);
            break;
        case IMAP_ITEM_STRING:
            assert_non_null(it->str);
            assert_int_equal(it->str[it->len], '\0');
            tbuf_addc(b, '"');
            for (size_t i = 0; i < it->len; i++) {
                unsigned char c = (unsigned char)it->str[i];
                if (c == '"' || c == '\\')
                    tbuf_addf(b, "\\%c", c);
                else if (c == '\r')
                    tbuf_adds(b, "\\r");
                else if (c == '\n')
                    tbuf_adds(b, "\\n");
                else if (c < 0x20 || c >= 0x7f)
                    tbuf_addf(b, "\\x%02x", c);
                else
                    tbuf_addc(b, (char)c);
            }
            tbuf_addc(b, '"');
            break;
        case IMAP_ITEM_NIL:
            assert_null(it->str);
            tbuf_adds(b, "NIL");
            break;
        case IMAP_ITEM_LIST: {
            size_t n = 0;
            for (const struct imap_item *c = it->child; c; c = c->next)
                n++;
            assert_int_equal(n, it->count);
            tbuf_addc(b, '(');
            dump_items(b, it->child);
            tbuf_addc(b, ')');
            break;
        }
        case IMAP_ITEM_STREAMED: tbuf_addf(b, "{stream %llu}", (unsigned long long)it->size); break;
        }
        if (it->next)
            tbuf_addc(b, ' ');
    }
}

static char *
dump(const struct imap_item *it)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    dump_items(&b, it);
    return tbuf_take(&b);
}

#define assert_dump(items, expected)                                                               \
    do {                                                                                           \
        char *d_ = dump(items);                                                                    \
        assert_string_equal(d_, expected);                                                         \
        free(d_);                                                                                  \
    } while (0)

/*
 * Feeds BUF (one whole response, lines ending in LF or CRLF) to P with the
 * line API, literals in chunks of CHUNK bytes (0: each literal whole).
 */
static enum tern_status
feed(struct imap_parser *p, const char *buf, size_t len, size_t chunk, struct imap_response **out,
     struct tern_err *err)
{
    size_t pos = 0;
    *out = NULL;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        assert_non_null(nl);
        size_t end = (size_t)(nl - buf);
        size_t n = end - pos;
        if (n && buf[end - 1] == '\r')
            n--;
        uint64_t lit = 99;
        enum tern_status st = imap_parser_line(p, buf + pos, n, out, &lit, err);
        pos = end + 1;
        if (st) {
            assert_null(*out);
            assert_int_equal(lit, 0);
            return st;
        }
        if (*out) {
            assert_int_equal(lit, 0);
            assert_int_equal(pos, len);
            return TERN_OK;
        }
        while (lit) {
            size_t take = chunk && chunk < lit ? chunk : (size_t)lit;
            assert_true(take <= len - pos);
            uint64_t left = 12345;
            st = imap_parser_literal(p, buf + pos, take, &left, err);
            if (st)
                return st;
            assert_int_equal(left, lit - take);
            pos += take;
            lit = left;
        }
    }
    fail_msg("the test data ended in the middle of a response");
    return TERN_E_PROTO;
}

static struct imap_response *
parse_chunked(const char *buf, size_t len, size_t chunk)
{
    struct imap_parser *p = imap_parser_new(NULL);
    assert_non_null(p);
    struct tern_err err = {0};
    struct imap_response *r = NULL;
    enum tern_status st = feed(p, buf, len, chunk, &r, &err);
    if (st)
        fail_msg("parse failed (%s): %s", tern_status_name(st), tern_err_msg(&err));
    tern_err_clear(&err);
    /* The response outlives its parser. */
    imap_parser_free(p);
    assert_non_null(r);
    return r;
}

static struct imap_response *
parse_ok(const char *s)
{
    return parse_chunked(s, strlen(s), 0);
}

/* Parses BUF with limits LIM (NULL: defaults) and expects ST and MSG in the error. */
static void
expect_error_n(const struct imap_limits *lim, const char *buf, size_t len, enum tern_status want,
               const char *msg)
{
    struct imap_parser *p = imap_parser_new(lim);
    assert_non_null(p);
    struct tern_err err = {0};
    struct imap_response *r = NULL;
    enum tern_status st = feed(p, buf, len, 0, &r, &err);
    if (st != want)
        fail_msg("expected %s, got %s (%s) for \"%.*s\"", tern_status_name(want),
                 tern_status_name(st), tern_err_msg(&err), (int)(len > 60 ? 60 : len), buf);
    assert_null(r);
    if (msg && !strstr(tern_err_msg(&err), msg))
        fail_msg("error \"%s\" does not contain \"%s\"", tern_err_msg(&err), msg);
    assert_true(strlen(tern_err_msg(&err)) > 10);
    /* After an error the parser insists on a reset, then works again. */
    uint64_t lit;
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, &lit, &err), TERN_E_USAGE);
    imap_parser_reset(p);
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, &lit, &err), TERN_OK);
    assert_non_null(r);
    imap_response_free(r);
    tern_err_clear(&err);
    imap_parser_free(p);
}

static void
expect_error(const struct imap_limits *lim, const char *s, const char *msg)
{
    expect_error_n(lim, s, strlen(s), TERN_E_PROTO, msg);
}

/* A recording literal sink. */
struct sink_log {
    int opens, writes, closes_ok, closes_fail;
    uint64_t size;
    struct tbuf data;
    int handle;
    enum tern_status open_st, write_st;
    void *closed_stream;
};

static enum tern_status
log_open(void *aux, uint64_t size, void **stream)
{
    struct sink_log *l = aux;
    l->opens++;
    l->size = size;
    if (l->open_st)
        return l->open_st;
    *stream = &l->handle;
    return TERN_OK;
}

static enum tern_status
log_write(void *aux, void *stream, const char *p, size_t n)
{
    struct sink_log *l = aux;
    assert_ptr_equal(stream, &l->handle);
    assert_true(n > 0);
    l->writes++;
    if (l->write_st)
        return l->write_st;
    return tbuf_add(&l->data, p, n);
}

static void
log_close(void *aux, void *stream, bool ok)
{
    struct sink_log *l = aux;
    l->closed_stream = stream;
    if (ok)
        l->closes_ok++;
    else
        l->closes_fail++;
}

static void
sink_init(struct sink_log *l, struct imap_literal_sink *s)
{
    memset(l, 0, sizeof *l);
    tbuf_init(&l->data, 0);
    *s = (struct imap_literal_sink){log_open, log_write, log_close, l};
}

static struct imap_limits
small_inline(size_t inline_max)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.inline_max = inline_max;
    return lim;
}

/* ---- limits and construction ---- */

static void
test_limits_default(void **state)
{
    struct imap_limits lim;
    memset(&lim, 0xff, sizeof lim);
    imap_limits_default(&lim);
    assert_int_equal(lim.line_max, 1024 * 1024);
    assert_int_equal(lim.literal_max, 1073741824ULL);
    assert_int_equal(lim.inline_max, 1024 * 1024);
    assert_int_equal(lim.response_max, 64 * 1024 * 1024);
    assert_int_equal(lim.depth_max, 64);
    assert_int_equal(lim.items_max, 4 * 1024 * 1024);
    imap_limits_default(NULL);
    imap_parser_free(NULL);
    imap_parser_reset(NULL);
    imap_parser_set_sink(NULL, NULL);
    imap_response_free(NULL);
}

/* ---- status responses ---- */

static void
test_tagged(void **state)
{
    struct imap_response *r = parse_ok("a001 OK [READ-WRITE] SELECT completed\r\n");
    assert_int_equal(r->kind, IMAP_RESP_TAGGED);
    assert_string_equal(r->tag, "a001");
    assert_int_equal(r->cond, IMAP_COND_OK);
    assert_string_equal(r->name, "OK");
    assert_string_equal(r->code, "READ-WRITE");
    assert_null(r->code_args);
    assert_string_equal(r->text, "SELECT completed");
    assert_null(r->items);
    assert_false(r->has_number);
    imap_response_free(r);

    r = parse_ok("A0002 NO [TRYCREATE] Mailbox doesn't exist: Foo\r\n");
    assert_int_equal(r->cond, IMAP_COND_NO);
    assert_string_equal(r->code, "TRYCREATE");
    assert_string_equal(r->text, "Mailbox doesn't exist: Foo");
    imap_response_free(r);

    r = parse_ok("x.y-z] BAD Error in IMAP command: Unknown command\r\n");
    assert_string_equal(r->tag, "x.y-z]");
    assert_int_equal(r->cond, IMAP_COND_BAD);
    assert_null(r->code);
    assert_string_equal(r->text, "Error in IMAP command: Unknown command");
    imap_response_free(r);

    /* Without text, with and without the space. */
    r = parse_ok("A1 OK\r\n");
    assert_int_equal(r->cond, IMAP_COND_OK);
    assert_string_equal(r->text, "");
    imap_response_free(r);
    r = parse_ok("A1 NO \r\n");
    assert_int_equal(r->cond, IMAP_COND_NO);
    assert_string_equal(r->text, "");
    imap_response_free(r);
    r = parse_ok("A1 OK [ALERT]\r\n");
    assert_string_equal(r->code, "ALERT");
    assert_string_equal(r->text, "");
    imap_response_free(r);
}

static void
test_case_insensitive(void **state)
{
    struct imap_response *r = parse_ok("a1 ok [read-write] Done\r\n");
    assert_int_equal(r->cond, IMAP_COND_OK);
    assert_string_equal(r->name, "OK");
    assert_string_equal(r->tag, "a1");
    assert_string_equal(r->code, "READ-WRITE");
    imap_response_free(r);

    r = parse_ok("* Bye logging out\r\n");
    assert_int_equal(r->cond, IMAP_COND_BYE);
    assert_string_equal(r->name, "BYE");
    imap_response_free(r);

    r = parse_ok("* 3 exists\r\n");
    assert_string_equal(r->name, "EXISTS");
    assert_int_equal(r->number, 3);
    imap_response_free(r);

    r = parse_ok("* capability imap4rev1 idle\r\n");
    assert_string_equal(r->name, "CAPABILITY");
    assert_true(imap_item_is(r->items, "IMAP4REV1"));
    assert_true(imap_item_is(r->items->next, "Idle"));
    assert_string_equal(imap_item_str(r->items), "imap4rev1"); /* as sent */
    imap_response_free(r);

    r = parse_ok("* 1 FETCH (ENVELOPE (nil Nil NIL \"NIL\"))\r\n");
    assert_dump(r->items, "(ENVELOPE (NIL NIL NIL \"NIL\"))");
    imap_response_free(r);
}

static void
test_untagged_status(void **state)
{
    static const struct {
        const char *line;
        enum imap_cond cond;
        const char *name, *code, *text;
    } cases[] = {
        {"* OK IMAP4rev1 Service Ready", IMAP_COND_OK, "OK", NULL, "IMAP4rev1 Service Ready"},
        {"* NO Disk is full", IMAP_COND_NO, "NO", NULL, "Disk is full"},
        {"* BAD Command line too long", IMAP_COND_BAD, "BAD", NULL, "Command line too long"},
        {"* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice", IMAP_COND_PREAUTH, "PREAUTH",
         "CAPABILITY", "Logged in as alice"},
        {"* BYE Logging out", IMAP_COND_BYE, "BYE", NULL, "Logging out"},
        {"* OK", IMAP_COND_OK, "OK", NULL, ""},
        {"* OK ", IMAP_COND_OK, "OK", NULL, ""},
        {"* BYE", IMAP_COND_BYE, "BYE", NULL, ""},
        {"* OK [ALERT] System shutdown in 10 minutes", IMAP_COND_OK, "OK", "ALERT",
         "System shutdown in 10 minutes"},
        {"* OK[ALERT]no space", IMAP_COND_OK, "OK", "ALERT", "no space"},
        {"* OK text with [brackets] later", IMAP_COND_OK, "OK", NULL, "text with [brackets] later"},
        /* A literal announcement in text is text, not a literal. */
        {"* OK [ALERT] {5}", IMAP_COND_OK, "OK", "ALERT", "{5}"},
        {"* NO {5}", IMAP_COND_NO, "NO", NULL, "{5}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct imap_parser *p = imap_parser_new(NULL);
        struct imap_response *r;
        uint64_t lit = 7;
        assert_int_equal(imap_parser_line(p, cases[i].line, strlen(cases[i].line), &r, &lit, NULL),
                         TERN_OK);
        assert_non_null(r);
        assert_int_equal(lit, 0);
        assert_int_equal(r->kind, IMAP_RESP_UNTAGGED);
        assert_null(r->tag);
        assert_int_equal(r->cond, cases[i].cond);
        assert_string_equal(r->name, cases[i].name);
        if (cases[i].code)
            assert_string_equal(r->code, cases[i].code);
        else
            assert_null(r->code);
        assert_string_equal(r->text, cases[i].text);
        assert_null(r->items);
        imap_response_free(r);
        imap_parser_free(p);
    }
}

static void
test_response_codes(void **state)
{
    struct imap_response *r =
        parse_ok("* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                 "Flags permitted.\r\n");
    assert_string_equal(r->code, "PERMANENTFLAGS");
    assert_dump(r->code_args, "(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)");
    assert_int_equal(r->code_args->count, 6);
    assert_true(imap_item_is(imap_item_nth(r->code_args->child, 5), "\\*"));
    assert_string_equal(r->text, "Flags permitted.");
    imap_response_free(r);

    r = parse_ok("A3 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n");
    assert_string_equal(r->code, "COPYUID");
    assert_dump(r->code_args, "38505 304,319:320 3956:3958");
    assert_true(r->code_args->is_number);
    assert_int_equal(r->code_args->num, 38505);
    assert_false(r->code_args->next->is_number);
    imap_response_free(r);

    r = parse_ok("* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n");
    assert_string_equal(r->code, "CAPABILITY");
    assert_dump(r->code_args, "IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN");
    assert_string_equal(r->text, "Dovecot ready.");
    imap_response_free(r);

    r = parse_ok("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n");
    assert_true(r->code_args->is_number);
    assert_int_equal(r->code_args->num, 3857529045U);
    assert_null(r->code_args->next);
    imap_response_free(r);

    r = parse_ok("* OK [HIGHESTMODSEQ 715194045007]\r\n");
    assert_int_equal(r->code_args->num, 715194045007ULL);
    assert_string_equal(r->text, "");
    imap_response_free(r);

    r = parse_ok("* NO [BADCHARSET (UTF-8 \"US-ASCII\")] unsupported\r\n");
    assert_dump(r->code_args, "(UTF-8 \"US-ASCII\")");
    imap_response_free(r);

    r = parse_ok("* NO [REFERRAL imap://user;AUTH=*@SERVER2/] Remote\r\n");
    assert_dump(r->code_args, "imap://user;AUTH=*@SERVER2/");
    imap_response_free(r);

    /* An empty argument list after the space. */
    r = parse_ok("* OK [X-FOO ] hi\r\n");
    assert_string_equal(r->code, "X-FOO");
    assert_null(r->code_args);
    assert_string_equal(r->text, "hi");
    imap_response_free(r);

    /* A code right before the end, a code with a NIL and nested lists. */
    r = parse_ok("A5 OK [METADATA (a (b NIL) ())]\r\n");
    assert_dump(r->code_args, "(a (b NIL) ())");
    assert_string_equal(r->text, "");
    imap_response_free(r);
}

static void
test_garbled_codes(void **state)
{
    static const struct {
        const char *line, *text;
    } cases[] = {
        {"* OK [UIDNEXT abc", "[UIDNEXT abc"},
        {"* OK [UIDNEXT 5)] hi", "[UIDNEXT 5)] hi"},
        {"* OK [UIDNEXT (5] hi", "[UIDNEXT (5] hi"},
        {"* OK [PERMANENTFLAGS (\\Seen)) ] x", "[PERMANENTFLAGS (\\Seen)) ] x"},
        {"* OK []", "[]"},
        {"* OK [ ALERT] x", "[ ALERT] x"},
        {"* OK [", "["},
        {"* NO [FOO \"unterminated] yes", "[FOO \"unterminated] yes"},
        {"A1 OK [FOO {abc}] no", "[FOO {abc}] no"},
        {"A1 OK [FOO {5} x] no", "[FOO {5} x] no"},
        {"* OK [FOO bar\x01] ctl", "[FOO bar\x01] ctl"},
        {"* BAD [FOO(x)] y", "[FOO(x)] y"},
        {"* OK [BODY[1 x", "[BODY[1 x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct imap_parser *p = imap_parser_new(NULL);
        struct imap_response *r;
        uint64_t lit = 7;
        struct tern_err err = {0};
        enum tern_status st =
            imap_parser_line(p, cases[i].line, strlen(cases[i].line), &r, &lit, &err);
        if (st)
            fail_msg("\"%s\": %s", cases[i].line, tern_err_msg(&err));
        assert_non_null(r);
        assert_int_equal(lit, 0);
        assert_null(r->code);
        assert_null(r->code_args);
        assert_string_equal(r->text, cases[i].text);
        imap_response_free(r);
        imap_parser_free(p);
    }
}

static void
test_text_bytes_kept(void **state)
{
    struct imap_response *r = parse_ok("* OK [ALERT] \x1b[31mred\x1b[0m Gr\xc3\xbc\xc3\x9f"
                                       "e\x7f\t\r\n");
    assert_string_equal(r->text, "\x1b[31mred\x1b[0m Gr\xc3\xbc\xc3\x9f"
                                 "e\x7f\t");
    imap_response_free(r);
}

static void
test_continuation(void **state)
{
    static const struct {
        const char *line, *text;
    } cases[] = {
        {"+ Ready for literal data", "Ready for literal data"},
        {"+", ""},
        {"+ ", ""},
        {"+ dGVzdA==", "dGVzdA=="},
        {"+idling", "idling"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s\r\n", cases[i].line);
        struct imap_response *r = parse_ok(buf);
        assert_int_equal(r->kind, IMAP_RESP_CONTINUATION);
        assert_int_equal(r->cond, IMAP_COND_NONE);
        assert_null(r->tag);
        assert_null(r->items);
        assert_string_equal(r->text, cases[i].text);
        imap_response_free(r);
    }
}

/* ---- untagged data ---- */

static void
test_untagged_data(void **state)
{
    static const struct {
        const char *in, *name, *items;
        long number; /* -1: none */
    } cases[] = {
        {"* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED", "CAPABILITY",
         "IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED", -1},
        {"* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"", "LIST",
         "(\\HasNoChildren \\Sent) \"/\" \"Sent Items\"", -1},
        {"* LIST (\\Noselect) NIL \"\"", "LIST", "(\\Noselect) NIL \"\"", -1},
        {"* LIST () \".\" INBOX.Drafts]", "LIST", "() \".\" INBOX.Drafts]", -1},
        {"* LSUB () \".\" #news.comp.mail.misc", "LSUB", "() \".\" #news.comp.mail.misc", -1},
        {"* STATUS \"INBOX\" (MESSAGES 17 UIDNEXT 4392 UNSEEN 3)", "STATUS",
         "\"INBOX\" (MESSAGES 17 UIDNEXT 4392 UNSEEN 3)", -1},
        {"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)", "STATUS",
         "blurdybloop (MESSAGES 231 UIDNEXT 44292)", -1},
        {"* SEARCH 2 3 6", "SEARCH", "2 3 6", -1},
        {"* SEARCH", "SEARCH", "", -1},
        {"* ESEARCH (TAG \"A1\") UID COUNT 3 ALL 1:3", "ESEARCH",
         "(TAG \"A1\") UID COUNT 3 ALL 1:3", -1},
        {"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)", "FLAGS",
         "(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded)", -1},
        {"* ENABLED CONDSTORE QRESYNC", "ENABLED", "CONDSTORE QRESYNC", -1},
        {"* NAMESPACE ((\"\" \"/\")) NIL NIL", "NAMESPACE", "((\"\" \"/\")) NIL NIL", -1},
        {"* NAMESPACE ((\"INBOX.\" \".\")) ((\"user.\" \".\")) ((\"\" \".\"))", "NAMESPACE",
         "((\"INBOX.\" \".\")) ((\"user.\" \".\")) ((\"\" \".\"))", -1},
        {"* ID (\"name\" \"Dovecot\" \"version\" NIL)", "ID",
         "(\"name\" \"Dovecot\" \"version\" NIL)", -1},
        {"* ID NIL", "ID", "NIL", -1},
        {"* VANISHED (EARLIER) 1:3,5", "VANISHED", "(EARLIER) 1:3,5", -1},
        {"* VANISHED 41", "VANISHED", "41", -1},
        {"* 3 EXISTS", "EXISTS", "", 3},
        {"* 0 EXISTS", "EXISTS", "", 0},
        {"* 2 EXPUNGE", "EXPUNGE", "", 2},
        {"* 1 RECENT", "RECENT", "", 1},
        {"* 4294967295 EXISTS", "EXISTS", "", 4294967295L},
        {"* 12 FETCH (FLAGS (\\Seen) UID 4827313)", "FETCH", "(FLAGS (\\Seen) UID 4827313)", 12},
        {"* 12 FETCH(FLAGS(\\Seen)UID 4)", "FETCH", "(FLAGS (\\Seen) UID 4)", 12},
        {"* 7 FETCH (MODSEQ (12121231000))", "FETCH", "(MODSEQ (12121231000))", 7},
        /* Unknown names are parsed generically. */
        {"* XAPPLEPUSHSERVICE aps-version \"2\" aps-topic \"com.apple.mail\"", "XAPPLEPUSHSERVICE",
         "aps-version \"2\" aps-topic \"com.apple.mail\"", -1},
        {"* 5 xfoo (a (b c)) NIL \"d\"", "XFOO", "(a (b c)) NIL \"d\"", 5},
        {"* OKAY then", "OKAY", "then", -1},
        {"* 3 OK", "OK", "", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s\r\n", cases[i].in);
        struct imap_response *r = parse_ok(buf);
        assert_int_equal(r->kind, IMAP_RESP_UNTAGGED);
        assert_int_equal(r->cond, IMAP_COND_NONE);
        assert_string_equal(r->name, cases[i].name);
        assert_null(r->code);
        assert_non_null(r->text);
        if (cases[i].number < 0) {
            assert_false(r->has_number);
        } else {
            assert_true(r->has_number);
            assert_int_equal(r->number, (uint32_t)cases[i].number);
        }
        assert_dump(r->items, cases[i].items);
        imap_response_free(r);
    }
}

static void
test_list_literal_name(void **state)
{
    static const char in[] = "* LIST (\\HasNoChildren) \"/\" {11}\r\n"
                             "foo \"bar\" )"
                             "\r\n";
    struct imap_response *r = parse_ok(in);
    assert_string_equal(r->name, "LIST");
    assert_dump(r->items, "(\\HasNoChildren) \"/\" \"foo \\\"bar\\\" )\"");
    const struct imap_item *name = imap_item_nth(r->items, 2);
    assert_int_equal(name->type, IMAP_ITEM_STRING);
    assert_int_equal(name->len, 11);
    assert_null(name->next);
    imap_response_free(r);
}

static void
test_numbers(void **state)
{
    struct imap_response *r = parse_ok("* SEARCH 0 18446744073709551615 18446744073709551616 007 "
                                       "123456789012345678901 12a -1 \"5\"\r\n");
    const struct imap_item *it = r->items;
    assert_true(it->is_number);
    assert_int_equal(it->num, 0);
    it = it->next;
    assert_true(it->is_number);
    assert_true(it->num == UINT64_MAX);
    it = it->next;
    assert_false(it->is_number); /* 2^64 */
    it = it->next;
    assert_true(it->is_number);
    assert_int_equal(it->num, 7);
    it = it->next;
    assert_false(it->is_number); /* 21 digits */
    it = it->next;
    assert_false(it->is_number);
    it = it->next;
    assert_false(it->is_number);
    it = it->next;
    assert_int_equal(it->type, IMAP_ITEM_STRING);
    assert_false(it->is_number);
    imap_response_free(r);
}

/* ---- FETCH from real servers ---- */

static const char dovecot_fetch[] =
    "* 1 FETCH (UID 1 RFC822.SIZE 2345 FLAGS (\\Seen $Forwarded) "
    "INTERNALDATE \"17-Jul-2023 10:00:00 +0000\" "
    "ENVELOPE (\"Mon, 17 Jul 2023 12:00:00 +0200\" \"Meeting \\\"notes\\\" in C:\\\\temp\" "
    "((\"Alice Example\" NIL \"alice\" \"example.org\")) "
    "((\"Alice Example\" NIL \"alice\" \"example.org\")) "
    "((\"Alice Example\" NIL \"alice\" \"example.org\")) "
    "((NIL NIL \"bob\" \"example.com\")(\"Carol\" NIL \"carol\" \"example.net\")) "
    "NIL NIL NIL \"<abc@example.org>\") "
    "BODYSTRUCTURE ((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 12 1 NIL NIL "
    "NIL NIL)(\"application\" \"pdf\" (\"name\" \"a.pdf\") NIL NIL \"base64\" 1234 NIL "
    "(\"attachment\" (\"filename\" \"a.pdf\")) NIL NIL) \"mixed\" (\"boundary\" \"xyz\") NIL "
    "NIL NIL))\r\n";

static void
test_fetch_dovecot(void **state)
{
    struct imap_response *r = parse_ok(dovecot_fetch);
    assert_string_equal(r->name, "FETCH");
    assert_int_equal(r->number, 1);
    const struct imap_item *att = r->items;
    assert_int_equal(att->type, IMAP_ITEM_LIST);
    assert_null(att->next);
    assert_int_equal(att->count, 12);
    assert_true(imap_item_is(imap_item_nth(att->child, 0), "UID"));
    assert_int_equal(imap_item_nth(att->child, 3)->num, 2345);

    const struct imap_item *env = imap_item_nth(att->child, 9);
    assert_true(imap_item_is(imap_item_nth(att->child, 8), "ENVELOPE"));
    assert_int_equal(env->count, 10);
    assert_string_equal(imap_item_str(imap_item_nth(env->child, 1)),
                        "Meeting \"notes\" in C:\\temp");
    const struct imap_item *to = imap_item_nth(env->child, 5);
    assert_int_equal(to->count, 2);
    assert_int_equal(to->child->child->type, IMAP_ITEM_NIL);
    assert_null(imap_item_str(to->child->child));
    assert_string_equal(imap_item_str(imap_item_nth(to->child->next->child, 2)), "carol");
    assert_int_equal(imap_item_nth(env->child, 6)->type, IMAP_ITEM_NIL);
    assert_string_equal(imap_item_str(imap_item_nth(env->child, 9)), "<abc@example.org>");

    const struct imap_item *bs = imap_item_nth(att->child, 11);
    assert_int_equal(bs->count, 7);
    assert_int_equal(bs->child->type, IMAP_ITEM_LIST);
    assert_string_equal(imap_item_str(bs->child->child), "text");
    assert_string_equal(imap_item_str(imap_item_nth(bs->child->next->child, 1)), "pdf");
    assert_string_equal(imap_item_str(imap_item_nth(bs->child, 2)), "mixed");
    imap_response_free(r);
}

/* Gmail style: extensions, labels with quotes, literals inside the envelope. */
static const char gmail_fetch[] =
    "* 5 FETCH (X-GM-THRID 1278455344230334865 X-GM-MSGID 1278455344230334865 "
    "X-GM-LABELS (\\Inbox \\Important \"Work/Project \\\"X\\\"\") UID 42 "
    "MODSEQ (8765) FLAGS (\\Seen $NotJunk) ENVELOPE (\"Sat, 01 Jan 2022 00:00:00 +0000\" {27}\r\n"
    "Re: (urgent) \"quote\" \\ done"
    " ((\"Bj\xc3\xb6rn\" NIL \"bjorn\" \"gmail.com\")) NIL NIL ((NIL NIL \"me\" \"gmail.com\")) "
    "NIL NIL NIL {19}\r\n"
    "<x)y(z@mail.gm.com>"
    ") BODY[] {0}\r\n"
    " BODY[HEADER.FIELDS (FROM TO)] {13}\r\n"
    "From: a@b.c\r\n"
    ")\r\n";

static const char gmail_dump[] =
    "(X-GM-THRID 1278455344230334865 X-GM-MSGID 1278455344230334865 "
    "X-GM-LABELS (\\Inbox \\Important \"Work/Project \\\"X\\\"\") UID 42 MODSEQ (8765) "
    "FLAGS (\\Seen $NotJunk) ENVELOPE (\"Sat, 01 Jan 2022 00:00:00 +0000\" "
    "\"Re: (urgent) \\\"quote\\\" \\\\ done\" ((\"Bj\\xc3\\xb6rn\" NIL \"bjorn\" \"gmail.com\")) "
    "NIL NIL ((NIL NIL \"me\" \"gmail.com\")) NIL NIL NIL \"<x)y(z@mail.gm.com>\") BODY[] \"\" "
    "BODY[HEADER.FIELDS (FROM TO)] \"From: a@b.c\\r\\n\")";

static void
test_fetch_gmail(void **state)
{
    struct imap_response *r = parse_ok(gmail_fetch);
    assert_int_equal(r->number, 5);
    assert_dump(r->items, gmail_dump);
    const struct imap_item *att = r->items->child;
    assert_true(att->next->is_number);
    assert_int_equal(att->next->num, 1278455344230334865ULL);
    const struct imap_item *env = imap_item_nth(att, 13);
    assert_int_equal(env->count, 10);
    assert_int_equal(env->child->next->len, 27);
    const struct imap_item *from = imap_item_nth(env->child, 2);
    assert_string_equal(imap_item_str(from->child->child), "Bj\xc3\xb6rn");
    imap_response_free(r);
}

/* Every chunking of the literals gives the same response. */
static void
test_literal_chunks(void **state)
{
    static const size_t chunks[] = {1, 2, 3, 5, 7, 13, 27, 28, 29, 1000};
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        struct imap_response *r = parse_chunked(gmail_fetch, sizeof gmail_fetch - 1, chunks[i]);
        assert_dump(r->items, gmail_dump);
        imap_response_free(r);
    }
}

static void
test_bodystructure_nested(void **state)
{
    static const char in[] =
        "* 9 FETCH (UID 9 BODYSTRUCTURE ("
        "((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 1 NIL NIL NIL NIL)"
        "(\"text\" \"html\" (\"charset\" \"us-ascii\") NIL NIL \"quoted-printable\" 20 1 NIL NIL "
        "NIL NIL) \"alternative\" (\"boundary\" \"b2\") NIL NIL NIL)"
        "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 300 "
        "(NIL \"inner\" NIL NIL NIL NIL NIL NIL NIL NIL) "
        "(\"text\" \"plain\" NIL NIL NIL \"8bit\" 5 1 NIL NIL NIL NIL) 12 NIL NIL NIL NIL)"
        "(\"image\" \"png\" NIL \"<cid@x>\" NIL \"base64\" 4096 NIL (\"inline\" NIL) NIL NIL)"
        " \"mixed\" (\"boundary\" \"b1\") NIL (\"en\" \"de\") NIL))\r\n";
    struct imap_response *r = parse_ok(in);
    const struct imap_item *bs = imap_item_nth(r->items->child, 3);
    assert_int_equal(bs->type, IMAP_ITEM_LIST);
    assert_int_equal(bs->count, 8);
    const struct imap_item *alt = bs->child;
    assert_int_equal(alt->type, IMAP_ITEM_LIST);
    assert_string_equal(imap_item_str(imap_item_nth(alt->child, 2)), "alternative");
    assert_string_equal(imap_item_str(imap_item_nth(alt->child->next->child, 1)), "html");
    const struct imap_item *msg = alt->next;
    assert_string_equal(imap_item_str(imap_item_nth(msg->child, 1)), "rfc822");
    const struct imap_item *inner_env = imap_item_nth(msg->child, 7);
    assert_int_equal(inner_env->count, 10);
    assert_string_equal(imap_item_str(inner_env->child->next), "inner");
    const struct imap_item *inner_body = imap_item_nth(msg->child, 8);
    assert_string_equal(imap_item_str(inner_body->child), "text");
    assert_int_equal(imap_item_nth(msg->child, 9)->num, 12);
    assert_string_equal(imap_item_str(imap_item_nth(bs->child, 3)), "mixed");
    assert_dump(imap_item_nth(bs->child, 6)->child, "\"en\" \"de\"");
    imap_response_free(r);
}

static void
test_bracket_atoms(void **state)
{
    static const char in[] = "* 3 FETCH (BODY[HEADER.FIELDS (FROM TO)]<0> {13}\r\n"
                             "From: a@b.c\r\n"
                             " BODY[1.2.MIME] NIL BINARY[1] ~{3}\r\n"
                             "abc BODY[]<10> {2+}\r\n"
                             "xy BINARY.SIZE[2] 44 BODY[HEADER.FIELDS.NOT (X-A (b))] \"\")\r\n";
    struct imap_response *r = parse_ok(in);
    assert_dump(r->items, "(BODY[HEADER.FIELDS (FROM TO)]<0> \"From: a@b.c\\r\\n\" "
                          "BODY[1.2.MIME] NIL BINARY[1] \"abc\" BODY[]<10> \"xy\" "
                          "BINARY.SIZE[2] 44 BODY[HEADER.FIELDS.NOT (X-A (b))] \"\")");
    const struct imap_item *a = r->items->child;
    assert_int_equal(a->type, IMAP_ITEM_ATOM);
    assert_int_equal(a->len, strlen("BODY[HEADER.FIELDS (FROM TO)]<0>"));
    imap_response_free(r);

    expect_error(NULL, "* 1 FETCH (BODY[HEADER\r\n", "unterminated '['");
}

static void
test_literal_in_code(void **state)
{
    static const char in[] = "* NO [BADCHARSET ({5}\r\n"
                             "UTF-8 US-ASCII)] unsupported charset\r\n";
    struct imap_response *r = parse_ok(in);
    assert_int_equal(r->cond, IMAP_COND_NO);
    assert_string_equal(r->code, "BADCHARSET");
    assert_dump(r->code_args, "(\"UTF-8\" US-ASCII)");
    assert_string_equal(r->text, "unsupported charset");
    assert_null(r->items);
    imap_response_free(r);

    /* Byte by byte too. */
    r = parse_chunked(in, sizeof in - 1, 1);
    assert_dump(r->code_args, "(\"UTF-8\" US-ASCII)");
    imap_response_free(r);

    /* A code that turns out garbled after a literal becomes text. */
    static const char bad[] = "A7 NO [BADCHARSET ({5}\r\n"
                              "UTF-8 US-ASCII\r\n";
    r = parse_ok(bad);
    assert_int_equal(r->kind, IMAP_RESP_TAGGED);
    assert_null(r->code);
    assert_null(r->code_args);
    assert_string_equal(r->text, "[BADCHARSET ({5} US-ASCII");
    imap_response_free(r);

    static const char two[] = "* OK [X-CODE {1}\r\na {0}\r\n ] done\r\n";
    r = parse_ok(two);
    assert_string_equal(r->code, "X-CODE");
    assert_dump(r->code_args, "\"a\" \"\"");
    assert_string_equal(r->text, "done");
    imap_response_free(r);
}

static void
test_zero_literal(void **state)
{
    struct imap_parser *p = imap_parser_new(NULL);
    struct imap_response *r;
    uint64_t lit = 5;
    const char *l1 = "* 1 FETCH (BODY[] {0}";
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, NULL), TERN_OK);
    assert_null(r);
    assert_int_equal(lit, 0);
    /* No literal bytes: the line API simply continues. */
    assert_int_equal(imap_parser_literal(p, "", 0, &lit, NULL), TERN_E_USAGE);
    assert_int_equal(imap_parser_line(p, " UID 3)", 7, &r, &lit, NULL), TERN_OK);
    assert_non_null(r);
    assert_dump(r->items, "(BODY[] \"\" UID 3)");
    assert_int_equal(r->items->child->next->type, IMAP_ITEM_STRING);
    assert_int_equal(r->items->child->next->len, 0);
    imap_response_free(r);

    /* A literal as the very last item; the continuation line is empty. */
    static const char in[] = "* 2 FETCH (BODY[] {3}\r\nabc)\r\n";
    r = parse_ok(in);
    assert_dump(r->items, "(BODY[] \"abc\")");
    imap_response_free(r);
    static const char last[] = "* SEARCH {2}\r\n12\r\n";
    r = parse_ok(last);
    assert_dump(r->items, "\"12\"");
    imap_response_free(r);
    imap_parser_free(p);
}

static void
test_literal_with_nul(void **state)
{
    static const char in[] = "* 4 FETCH (BODY[] {5}\r\na\0b\r\n)\r\n";
    struct imap_response *r = parse_chunked(in, sizeof in - 1, 2);
    const struct imap_item *s = r->items->child->next;
    assert_int_equal(s->type, IMAP_ITEM_STRING);
    assert_int_equal(s->len, 5);
    assert_memory_equal(s->str, "a\0b\r\n", 6);
    imap_response_free(r);
}

static void
test_quoted_strings(void **state)
{
    struct imap_response *r = parse_ok("* LIST () \"/\" \"Gr\xc3\xbc\xc3\x9f"
                                       "e \\\"x\\\" \\\\ \\a\"\r\n");
    const struct imap_item *s = imap_item_nth(r->items, 2);
    assert_int_equal(s->type, IMAP_ITEM_STRING);
    assert_string_equal(s->str, "Gr\xc3\xbc\xc3\x9f"
                                "e \"x\" \\ \\a");
    assert_int_equal(s->len, strlen(s->str));
    imap_response_free(r);

    r = parse_ok("* X \"\" \"\\\\\" \"a\"\"b\" \"(\" \")\"\r\n");
    assert_dump(r->items, "\"\" \"\\\\\" \"a\" \"b\" \"(\" \")\"");
    imap_response_free(r);

    expect_error(NULL, "* X \"abc\r\n", "unterminated quoted string");
    expect_error(NULL, "* X \"abc\\\"\r\n", "unterminated quoted string");
    expect_error(NULL, "* X \"abc\\\r\n", "unterminated quoted string");
}

/* ---- the literal sink ---- */

static void
test_sink_streaming(void **state)
{
    struct imap_limits lim = small_inline(16);
    struct sink_log log;
    struct imap_literal_sink sink;
    sink_init(&log, &sink);
    struct imap_parser *p = imap_parser_new(&lim);
    imap_parser_set_sink(p, &sink);

    char body[1000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (char)(i * 7);
    struct imap_response *r;
    uint64_t lit, left;
    const char *l1 = "* 1 FETCH (UID 5 BODY[] {1000}";
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, NULL), TERN_OK);
    assert_int_equal(lit, 1000);
    assert_int_equal(log.opens, 1);
    assert_int_equal(log.size, 1000);
    for (size_t off = 0; off < sizeof body; off += 7) {
        size_t n = sizeof body - off < 7 ? sizeof body - off : 7;
        assert_int_equal(imap_parser_literal(p, body + off, n, &left, NULL), TERN_OK);
        assert_int_equal(left, sizeof body - off - n);
    }
    assert_int_equal(log.writes, 143);
    assert_int_equal(tbuf_len(&log.data), 1000);
    assert_memory_equal(tbuf_ptr(&log.data), body, 1000);
    /* The stream is closed when the response is complete, not before. */
    assert_int_equal(log.closes_ok + log.closes_fail, 0);
    /* A small literal after it stays inline. */
    assert_int_equal(imap_parser_line(p, " X {3}", 6, &r, &lit, NULL), TERN_OK);
    assert_int_equal(imap_parser_literal(p, "abc", 3, &left, NULL), TERN_OK);
    assert_int_equal(log.opens, 1);
    assert_int_equal(imap_parser_line(p, ")", 1, &r, &lit, NULL), TERN_OK);
    assert_non_null(r);
    assert_int_equal(log.closes_ok, 1);
    assert_int_equal(log.closes_fail, 0);
    assert_ptr_equal(log.closed_stream, &log.handle);
    assert_dump(r->items, "(UID 5 BODY[] {stream 1000} X \"abc\")");
    const struct imap_item *it = imap_item_nth(r->items->child, 3);
    assert_int_equal(it->type, IMAP_ITEM_STREAMED);
    assert_int_equal(it->size, 1000);
    assert_ptr_equal(it->stream, &log.handle);
    assert_null(it->str);
    assert_null(imap_item_str(it));
    imap_response_free(r);

    /* Two streamed literals in one response: two opens, two closes. */
    memset(body, 'z', sizeof body);
    static const char two[] = "* 2 FETCH (BODY[1] {20}\r\nzzzzzzzzzzzzzzzzzzzz "
                              "BODY[2] {17}\r\nzzzzzzzzzzzzzzzzz)\r\n";
    struct tern_err err = {0};
    assert_int_equal(feed(p, two, sizeof two - 1, 4, &r, &err), TERN_OK);
    assert_int_equal(log.opens, 3);
    assert_int_equal(log.closes_ok, 3);
    assert_dump(r->items, "(BODY[1] {stream 20} BODY[2] {stream 17})");
    imap_response_free(r);

    /* The boundary: exactly inline_max is inline. */
    static const char edge[] = "* 3 FETCH (BODY[] {16}\r\n0123456789abcdef)\r\n";
    assert_int_equal(feed(p, edge, sizeof edge - 1, 0, &r, &err), TERN_OK);
    assert_int_equal(log.opens, 3);
    assert_dump(r->items, "(BODY[] \"0123456789abcdef\")");
    imap_response_free(r);

    imap_parser_free(p);
    tbuf_free(&log.data);
}

static void
test_sink_reset_mid_literal(void **state)
{
    struct imap_limits lim = small_inline(4);
    struct sink_log log;
    struct imap_literal_sink sink;
    sink_init(&log, &sink);
    struct imap_parser *p = imap_parser_new(&lim);
    imap_parser_set_sink(p, &sink);
    struct imap_response *r;
    uint64_t lit, left;

    const char *l1 = "* 1 FETCH (BODY[] {100}";
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, NULL), TERN_OK);
    assert_int_equal(imap_parser_literal(p, "0123456789", 10, &left, NULL), TERN_OK);
    assert_int_equal(left, 90);
    imap_parser_reset(p);
    assert_int_equal(log.opens, 1);
    assert_int_equal(log.closes_fail, 1);
    assert_int_equal(log.closes_ok, 0);
    /* A second reset closes nothing again. */
    imap_parser_reset(p);
    assert_int_equal(log.closes_fail, 1);

    /* Freed mid-literal. */
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, NULL), TERN_OK);
    imap_parser_free(p);
    assert_int_equal(log.opens, 2);
    assert_int_equal(log.closes_fail, 2);

    /* A complete streamed literal, then the response fails. */
    p = imap_parser_new(&lim);
    imap_parser_set_sink(p, &sink);
    struct tern_err err = {0};
    static const char bad[] = "* 1 FETCH (BODY[] {5}\r\nhello))\r\n";
    assert_int_equal(feed(p, bad, sizeof bad - 1, 0, &r, &err), TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&err), "unexpected ')'"));
    assert_int_equal(log.opens, 3);
    assert_int_equal(log.closes_fail, 3);
    assert_int_equal(log.closes_ok, 0);
    imap_parser_reset(p);
    assert_int_equal(log.closes_fail, 3);

    /* The sink refuses to open. */
    log.open_st = TERN_E_IO;
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, &err), TERN_E_IO);
    assert_int_equal(lit, 0);
    assert_non_null(strstr(tern_err_msg(&err), "100 bytes"));
    assert_int_equal(log.opens, 4);
    assert_int_equal(log.closes_fail, 3); /* nothing was opened */
    imap_parser_reset(p);

    /* A write fails. */
    log.open_st = TERN_OK;
    log.write_st = TERN_E_IO;
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, &err), TERN_OK);
    assert_int_equal(imap_parser_literal(p, "abc", 3, &left, &err), TERN_E_IO);
    assert_int_equal(log.closes_fail, 4);
    assert_int_equal(imap_parser_literal(p, "abc", 3, &left, &err), TERN_E_USAGE);
    imap_parser_reset(p);
    assert_int_equal(log.closes_fail, 4);

    /* Removing the sink (or giving an incomplete one) makes big literals an error. */
    log.write_st = TERN_OK;
    imap_parser_set_sink(p, NULL);
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, &err), TERN_E_PROTO);
    imap_parser_reset(p);
    struct imap_literal_sink half = sink;
    half.write = NULL;
    imap_parser_set_sink(p, &half);
    assert_int_equal(imap_parser_line(p, l1, strlen(l1), &r, &lit, &err), TERN_E_PROTO);
    assert_int_equal(log.opens, 5);

    tern_err_clear(&err);
    imap_parser_free(p);
    tbuf_free(&log.data);
}

static void
test_inline_without_sink(void **state)
{
    struct imap_limits lim = small_inline(16);
    expect_error(&lim, "* 1 FETCH (BODY[] {17}\r\n",
                 "IMAP literal of 17 bytes is larger than the inline limit of 16 bytes and no "
                 "literal sink is set");
    expect_error(NULL, "* 1 FETCH (BODY[] {1048577}\r\n", "1048577");
}

/* ---- limits ---- */

static void
test_line_limit(void **state)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.line_max = 100;
    char line[200];
    memset(line, 'a', sizeof line);
    memcpy(line, "* SEARCH ", 9);
    line[100] = '\r';
    line[101] = '\n';
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit;
    assert_int_equal(imap_parser_line(p, line, 100, &r, &lit, NULL), TERN_OK);
    assert_non_null(r);
    imap_response_free(r);
    imap_parser_free(p);

    line[100] = 'a';
    line[101] = '\r';
    line[102] = '\n';
    expect_error_n(&lim, line, 103, TERN_E_PROTO,
                   "IMAP response line of 101 bytes exceeds the limit of 100");

    /* The limit applies to every line of a response, not only the first. */
    static const char in[] = "* 1 FETCH (BODY[] {3}\r\nabc "
                             "X "
                             "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\")\r\n";
    expect_error(&lim, in, "exceeds the limit of 100");
}

static void
test_literal_limits(void **state)
{
    expect_error(NULL, "* 1 FETCH (BODY[] {4294967296}\r\n",
                 "IMAP literal of 4294967296 bytes exceeds the limit of 1073741824");
    expect_error(NULL, "* 1 FETCH (BODY[] {99999999999999999999999}\r\n",
                 "IMAP literal size of 23 digits is out of range");
    expect_error(NULL, "* 1 FETCH (BODY[] {18446744073709551616}\r\n",
                 "IMAP literal size 18446744073709551616 is out of range");
    expect_error(NULL, "* 1 FETCH (BODY[] {18446744073709551615}\r\n",
                 "IMAP literal of 18446744073709551615 bytes exceeds the limit of 1073741824");
    expect_error(NULL, "* 1 FETCH (BODY[] ~{1073741825}\r\n", "exceeds the limit");
    expect_error(NULL, "* 1 FETCH (BODY[] {-1}\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] {abc}\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] {}\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] {+5}\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] { 5}\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] {5\r\n", "malformed literal size");
    expect_error(NULL, "* 1 FETCH (BODY[] {5}x\r\n", "before the end of the line");
    expect_error(NULL, "* 1 FETCH (BODY[] {5} \r\n", "before the end of the line");
    expect_error(NULL, "* 1 FETCH (BODY[] {5}{5}\r\n", "before the end of the line");

    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.literal_max = 10;
    expect_error(&lim, "* SEARCH {11}\r\n", "IMAP literal of 11 bytes exceeds the limit of 10");
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit;
    assert_int_equal(imap_parser_line(p, "* SEARCH {10}", 13, &r, &lit, NULL), TERN_OK);
    assert_int_equal(lit, 10);
    imap_parser_free(p);
}

static void
test_response_limit(void **state)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.response_max = 2000;
    char buf[4000];
    memcpy(buf, "* X \"", 5);
    memset(buf + 5, 'q', 2500);
    memcpy(buf + 2505, "\"\r\n", 4);
    expect_error(&lim, buf, "IMAP response larger than the limit of 2000 bytes");

    /* An inline literal that cannot fit fails at its announcement. */
    lim.inline_max = 1000000;
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit = 9;
    struct tern_err err = {0};
    assert_int_equal(imap_parser_line(p, "* X {5000}", 10, &r, &lit, &err), TERN_E_PROTO);
    assert_int_equal(lit, 0);
    assert_non_null(strstr(tern_err_msg(&err), "2000 bytes"));
    imap_parser_reset(p);

    /* Many small lines joined by literals add up too. */
    static const char piece[] = " \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" {1}";
    assert_int_equal(imap_parser_line(p, "* X {1}", 7, &r, &lit, &err), TERN_OK);
    enum tern_status st = TERN_OK;
    uint64_t left;
    for (int i = 0; i < 100 && !st; i++) {
        st = imap_parser_literal(p, "z", 1, &left, &err);
        if (!st)
            st = imap_parser_line(p, piece, sizeof piece - 1, &r, &lit, &err);
    }
    assert_int_equal(st, TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&err), "larger than the limit"));
    tern_err_clear(&err);
    imap_parser_free(p);
}

static void
test_depth_limit(void **state)
{
    size_t depth = 100000;
    size_t len = 40 + 2 * depth;
    char *buf = malloc(len);
    size_t n = (size_t)snprintf(buf, len, "* 1 FETCH (BODYSTRUCTURE ");
    memset(buf + n, '(', depth);
    n += depth;
    memset(buf + n, ')', depth);
    n += depth;
    memcpy(buf + n, ")\r\n", 3);
    n += 3;

    clock_t t0 = clock();
    expect_error_n(NULL, buf, n, TERN_E_PROTO, "IMAP response nested deeper than 64 levels");
    assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 2.0);

    /* With the limit raised, the same input parses without recursion. */
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.depth_max = 200000;
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit;
    assert_int_equal(imap_parser_line(p, buf, n - 2, &r, &lit, NULL), TERN_OK);
    size_t levels = 0;
    for (const struct imap_item *it = r->items->child->next; it && it->type == IMAP_ITEM_LIST;
         it = it->child)
        levels++;
    assert_int_equal(levels, depth);
    imap_response_free(r);
    imap_parser_free(p);
    free(buf);

    /* Exactly depth_max levels are fine, one more is not. */
    imap_limits_default(&lim);
    lim.depth_max = 3;
    r = NULL;
    p = imap_parser_new(&lim);
    assert_int_equal(imap_parser_line(p, "* X (((a)))", 11, &r, &lit, NULL), TERN_OK);
    imap_response_free(r);
    imap_parser_free(p);
    expect_error(&lim, "* X ((((a))))\r\n", "nested deeper than 3 levels");
    /* Depth counts in response codes as well (an error, not a garbled code). */
    expect_error(&lim, "* OK [X ((((a))))] t\r\n", "nested deeper than 3 levels");
}

static void
test_items_limit(void **state)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.items_max = 5;
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit;
    assert_int_equal(imap_parser_line(p, "* SEARCH 1 2 3 4 5", 18, &r, &lit, NULL), TERN_OK);
    imap_response_free(r);
    assert_int_equal(imap_parser_line(p, "* X (1 (2)) 4", 13, &r, &lit, NULL), TERN_OK);
    imap_response_free(r);
    imap_parser_free(p);
    expect_error(&lim, "* SEARCH 1 2 3 4 5 6\r\n", "IMAP response has more than 5 items");
    expect_error(&lim, "* X (1 (2)) (4)\r\n", "more than 5 items");
    expect_error(&lim, "* X 1 2 3 4 5 {3}\r\n", "more than 5 items");
    expect_error(&lim, "* OK [X 1 2 3 4 5 6] t\r\n", "more than 5 items");

    /*
     * A million-item list: refused by the default limits (its line is 2 MB),
     * parsed once line and memory limits allow it, refused by items_max.
     */
    size_t count = 1000000;
    char *buf = malloc(16 + 2 * count);
    size_t n = (size_t)snprintf(buf, 16, "* SEARCH (");
    for (size_t i = 0; i < count; i++) {
        buf[n++] = 'x';
        buf[n++] = ' ';
    }
    buf[n - 1] = ')';
    buf[n++] = '\n';
    expect_error_n(NULL, buf, n, TERN_E_PROTO, "exceeds the limit of 1048576");
    imap_limits_default(&lim);
    lim.line_max = n;
    expect_error_n(&lim, buf, n, TERN_E_PROTO, "larger than the limit of 67108864 bytes");
    lim.response_max = SIZE_MAX;
    p = imap_parser_new(&lim);
    assert_int_equal(imap_parser_line(p, buf, n - 1, &r, &lit, NULL), TERN_OK);
    assert_int_equal(r->items->count, count);
    assert_true(imap_item_is(imap_item_nth(r->items->child, count - 1), "x"));
    imap_response_free(r);
    imap_parser_free(p);
    lim.items_max = count;
    expect_error_n(&lim, buf, n, TERN_E_PROTO, "more than 1000000 items");
    free(buf);
}

/* ---- hostile input ---- */

static void
test_unbalanced(void **state)
{
    expect_error(NULL, "* 1 FETCH (FLAGS (\\Seen)\r\n", "1 parenthesised lists left open");
    expect_error(NULL, "* 1 FETCH (FLAGS (\\Seen\r\n", "2 parenthesised lists left open");
    expect_error(NULL, "* 1 FETCH (FLAGS (\\Seen)))\r\n", "unexpected ')'");
    expect_error(NULL, "* SEARCH )\r\n", "unexpected ')'");
    expect_error(NULL, "* 1 FETCH (BODY[] {2}\r\nab\r\n", "left open");
    expect_error(NULL, "* 1 FETCH (BODY[] {2}\r\nab))\r\n", "unexpected ')'");
}

static void
test_nul_and_controls(void **state)
{
    static const char nul1[] = "* OK hel\0lo\r\n";
    expect_error_n(NULL, nul1, sizeof nul1 - 1, TERN_E_PROTO, "NUL byte");
    static const char nul2[] = "* 1 FETCH (FLAGS (\\Seen\0))\r\n";
    expect_error_n(NULL, nul2, sizeof nul2 - 1, TERN_E_PROTO, "NUL byte");
    static const char nul3[] = "* 1 FETCH (BODY[] {1}\r\nx \"a\0b\")\r\n";
    expect_error_n(NULL, nul3, sizeof nul3 - 1, TERN_E_PROTO, "NUL byte");
    static const char nul4[] = "\0\r\n";
    expect_error_n(NULL, nul4, sizeof nul4 - 1, TERN_E_PROTO, "NUL byte");
    expect_error(NULL, "* SEARCH 1\x01\r\n", "control character");
    expect_error(NULL, "* SEARCH 1\t2\r\n", "control character");
    expect_error(NULL, "* SEARCH 1 \x1b[2J\r\n", "control character");
}

static void
test_garbage_tags(void **state)
{
    static const char *const lines[] = {
        "",
        " A1 OK",
        "(A1 OK",
        "\"A1\" OK",
        "A1",
        "A1OK",
        "A1 ",
        "A1 FOO bar",
        "A1 BYE bye",
        "A1 PREAUTH x",
        "A1 3 EXISTS",
        "A+1 OK",
        "A{1} OK",
        "A\\1 OK",
        "A%1 OK",
        "\xc3\xa4\x31 OK",
        "*OK",
        "*",
        "* ",
        "*  OK",
        "* (x)",
        "* 12",
        "* 12 ",
        "* 4294967296 EXISTS",
        "* 99999999999999999999999 FETCH (UID 1)",
        "* 12FETCH",
        "** OK",
        "A1\tOK",
        "\r",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct imap_parser *p = imap_parser_new(NULL);
        struct imap_response *r = (struct imap_response *)1;
        uint64_t lit = 3;
        struct tern_err err = {0};
        enum tern_status st = imap_parser_line(p, lines[i], strlen(lines[i]), &r, &lit, &err);
        if (st != TERN_E_PROTO)
            fail_msg("\"%s\" gave %s", lines[i], tern_status_name(st));
        assert_null(r);
        assert_int_equal(lit, 0);
        assert_true(strlen(tern_err_msg(&err)) > 10);
        tern_err_clear(&err);
        imap_parser_free(p);
    }
}

static void
test_eight_bit(void **state)
{
    struct imap_response *r =
        parse_ok("* LIST (\\HasNoChildren) \"/\" \"Entw\xc3\xbcrfe/\xe6\x97\xa5\xe6\x9c\xac\"\r\n");
    assert_string_equal(imap_item_str(imap_item_nth(r->items, 2)),
                        "Entw\xc3\xbcrfe/\xe6\x97\xa5\xe6\x9c\xac");
    imap_response_free(r);
    /* 8-bit atoms (some servers send UTF-8 mailbox names unquoted). */
    r = parse_ok("* LIST () \"/\" Entw\xc3\xbcrfe\r\n");
    assert_int_equal(imap_item_nth(r->items, 2)->type, IMAP_ITEM_ATOM);
    assert_string_equal(imap_item_str(imap_item_nth(r->items, 2)), "Entw\xc3\xbcrfe");
    imap_response_free(r);
    /* Bytes 0x80-0xff anywhere in a quoted string. */
    char buf[300];
    size_t n = 0;
    memcpy(buf, "* X \"", 5);
    n = 5;
    for (int c = 0x80; c <= 0xff; c++)
        buf[n++] = (char)c;
    memcpy(buf + n, "\"\r\n", 3);
    n += 3;
    r = parse_chunked(buf, n, 0);
    assert_int_equal(r->items->len, 128);
    assert_memory_equal(r->items->str, buf + 5, 128);
    imap_response_free(r);
}

/* ---- the API's own rules ---- */

static void
test_usage_errors(void **state)
{
    struct imap_parser *p = imap_parser_new(NULL);
    struct imap_response *r;
    uint64_t lit, left;
    struct tern_err err = {0};

    assert_int_equal(imap_parser_line(NULL, "* OK", 4, &r, &lit, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_line(p, NULL, 4, &r, &lit, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_line(p, "* OK", 4, NULL, &lit, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, NULL, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_literal(NULL, "x", 1, &left, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_literal(p, "x", 1, NULL, &err), TERN_E_USAGE);
    /* Literal bytes while a line is expected. */
    assert_int_equal(imap_parser_literal(p, "x", 1, &left, &err), TERN_E_USAGE);

    assert_int_equal(imap_parser_line(p, "* X {4}", 7, &r, &lit, &err), TERN_OK);
    assert_int_equal(lit, 4);
    /* A line while literal bytes are due, too many bytes, NULL data: refused, state kept. */
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, &lit, &err), TERN_E_USAGE);
    assert_non_null(strstr(tern_err_msg(&err), "4 literal bytes"));
    assert_int_equal(imap_parser_literal(p, "abcde", 5, &left, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_literal(p, NULL, 2, &left, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_literal(p, NULL, 0, &left, &err), TERN_OK);
    assert_int_equal(left, 4);
    assert_int_equal(imap_parser_literal(p, "ab", 2, &left, &err), TERN_OK);
    assert_int_equal(left, 2);
    assert_int_equal(imap_parser_literal(p, "cd", 2, &left, &err), TERN_OK);
    assert_int_equal(left, 0);
    assert_int_equal(imap_parser_line(p, "", 0, &r, &lit, &err), TERN_OK);
    assert_non_null(r);
    assert_dump(r->items, "\"abcd\"");
    imap_response_free(r);

    /* After an error everything is refused until a reset. */
    assert_int_equal(imap_parser_line(p, "A1 WHAT", 7, &r, &lit, &err), TERN_E_PROTO);
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, &lit, &err), TERN_E_USAGE);
    assert_int_equal(imap_parser_literal(p, "x", 1, &left, &err), TERN_E_USAGE);
    imap_parser_reset(p);
    assert_int_equal(imap_parser_line(p, "* OK", 4, &r, &lit, &err), TERN_OK);
    imap_response_free(r);

    /* Reset mid-response drops it; the next line starts afresh. */
    assert_int_equal(imap_parser_line(p, "* X ({0}", 8, &r, &lit, &err), TERN_OK);
    assert_null(r);
    imap_parser_reset(p);
    assert_int_equal(imap_parser_line(p, "* 2 EXISTS", 10, &r, &lit, &err), TERN_OK);
    assert_string_equal(r->name, "EXISTS");
    imap_response_free(r);

    tern_err_clear(&err);
    imap_parser_free(p);
}

static void
test_item_helpers(void **state)
{
    struct imap_response *r = parse_ok("* 1 FETCH (UID \"FETCH\" NIL () x)\r\n");
    const struct imap_item *l = r->items;
    assert_false(imap_item_is(l, "FETCH"));
    assert_null(imap_item_str(l));
    const struct imap_item *c = l->child;
    assert_true(imap_item_is(c, "uid"));
    assert_false(imap_item_is(c, "UI"));
    assert_false(imap_item_is(c, "UIDS"));
    assert_false(imap_item_is(c, NULL));
    assert_false(imap_item_is(NULL, "UID"));
    assert_false(imap_item_is(c->next, "FETCH")); /* a string, not an atom */
    assert_string_equal(imap_item_str(c->next), "FETCH");
    assert_null(imap_item_str(imap_item_nth(c, 2)));
    assert_null(imap_item_str(NULL));
    const struct imap_item *empty = imap_item_nth(c, 3);
    assert_int_equal(empty->type, IMAP_ITEM_LIST);
    assert_int_equal(empty->count, 0);
    assert_null(empty->child);
    assert_ptr_equal(imap_item_nth(c, 0), c);
    assert_true(imap_item_is(imap_item_nth(c, 4), "X"));
    assert_null(imap_item_nth(c, 5));
    assert_null(imap_item_nth(c, 500));
    assert_null(imap_item_nth(NULL, 0));
    imap_response_free(r);
}

/* ---- imap_parse_buffer ---- */

struct collect {
    int count;
    struct tbuf out;
};

static void
collect_cb(const struct imap_response *r, void *aux)
{
    struct collect *c = aux;
    c->count++;
    const char *kind = r->kind == IMAP_RESP_TAGGED     ? r->tag
                       : r->kind == IMAP_RESP_UNTAGGED ? "*"
                                                       : "+";
    tbuf_addf(&c->out, "%s|%s|%s|%s|", kind, r->name ? r->name : "", r->code ? r->code : "",
              r->text);
    char *d = dump(r->items);
    tbuf_addf(&c->out, "%s\n", d);
    free(d);
}

static void
test_parse_buffer(void **state)
{
    static const char in[] = "* OK [CAPABILITY IMAP4rev1] ready\r\n"
                             "* 3 EXISTS\n"
                             "* 1 FETCH (BODY[] {4}\r\nab\r\n UID 7)\r\n"
                             "+ go\r\n"
                             "A1 OK done";
    struct collect c = {0};
    tbuf_init(&c.out, 0);
    struct tern_err err = {0};
    assert_int_equal(imap_parse_buffer(NULL, in, sizeof in - 1, collect_cb, &c, &err), TERN_OK);
    assert_int_equal(c.count, 5);
    assert_string_equal(tbuf_ptr(&c.out), "*|OK|CAPABILITY|ready|\n"
                                          "*|EXISTS|||\n"
                                          "*|FETCH|||(BODY[] \"ab\\r\\n\" UID 7)\n"
                                          "+|||go|\n"
                                          "A1|OK||done|\n");

    /* Stops at the first error; earlier responses were delivered. */
    tbuf_reset(&c.out);
    c.count = 0;
    static const char bad[] = "* 1 EXISTS\r\n* 2 FETCH (\r\n* 3 EXISTS\r\n";
    assert_int_equal(imap_parse_buffer(NULL, bad, sizeof bad - 1, collect_cb, &c, &err),
                     TERN_E_PROTO);
    assert_int_equal(c.count, 1);

    /* Truncated inside a literal, and after one. */
    static const char trunc1[] = "* 1 FETCH (BODY[] {10}\r\nabc";
    assert_int_equal(imap_parse_buffer(NULL, trunc1, sizeof trunc1 - 1, NULL, NULL, &err),
                     TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&err), "7 bytes before the end of a literal"));
    static const char trunc2[] = "* 1 FETCH (BODY[] {3}\r\nabc";
    assert_int_equal(imap_parse_buffer(NULL, trunc2, sizeof trunc2 - 1, NULL, NULL, &err),
                     TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&err), "middle of a response"));

    /* Limits are passed on; an empty buffer is fine; NULL with a length is not. */
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.line_max = 5;
    assert_int_equal(imap_parse_buffer(&lim, in, sizeof in - 1, NULL, NULL, &err), TERN_E_PROTO);
    assert_int_equal(imap_parse_buffer(NULL, "", 0, NULL, NULL, &err), TERN_OK);
    assert_int_equal(imap_parse_buffer(NULL, NULL, 0, NULL, NULL, &err), TERN_OK);
    assert_int_equal(imap_parse_buffer(NULL, NULL, 3, NULL, NULL, &err), TERN_E_USAGE);
    /* An empty line between responses is an error. */
    assert_int_equal(imap_parse_buffer(NULL, "* OK\r\n\r\n", 8, NULL, NULL, &err), TERN_E_PROTO);

    /* With a sink, large literals stream. */
    struct sink_log log;
    struct imap_literal_sink sink;
    sink_init(&log, &sink);
    lim = small_inline(2);
    tbuf_reset(&c.out);
    assert_int_equal(imap_parse_buffer_sink(&lim, &sink, in, sizeof in - 1, collect_cb, &c, &err),
                     TERN_OK);
    assert_int_equal(log.opens, 1);
    assert_int_equal(log.closes_ok, 1);
    assert_memory_equal(tbuf_ptr(&log.data), "ab\r\n", 4);
    assert_non_null(strstr(tbuf_ptr(&c.out), "(BODY[] {stream 4} UID 7)"));
    /* Streams of an unfinished response are closed as failed. */
    assert_int_equal(
        imap_parse_buffer_sink(&lim, &sink, trunc2, sizeof trunc2 - 1, NULL, NULL, &err),
        TERN_E_PROTO);
    assert_int_equal(log.opens, 2);
    assert_int_equal(log.closes_fail, 1);

    tbuf_free(&log.data);
    tbuf_free(&c.out);
    tern_err_clear(&err);
}

/* Many responses through one parser: the arena sizing adapts, nothing leaks. */
static void
test_many_responses(void **state)
{
    struct imap_parser *p = imap_parser_new(NULL);
    struct tern_err err = {0};
    for (int i = 0; i < 300; i++) {
        struct imap_response *r;
        const char *in = i % 3 == 0 ? dovecot_fetch : i % 3 == 1 ? gmail_fetch : "* 1 EXISTS\r\n";
        size_t len = i % 3 == 0   ? sizeof dovecot_fetch - 1
                     : i % 3 == 1 ? sizeof gmail_fetch - 1
                                  : strlen(in);
        assert_int_equal(feed(p, in, len, (size_t)(i % 5), &r, &err), TERN_OK);
        if (i % 3 == 1)
            assert_dump(r->items, gmail_dump);
        imap_response_free(r);
    }
    /* One big response: a literal near inline_max and a long line. */
    size_t big = 1024 * 1024;
    char *buf = malloc(big + 100);
    size_t n = (size_t)snprintf(buf, 100, "* 1 FETCH (BODY[] {%zu}\r\n", big);
    memset(buf + n, 'b', big);
    n += big;
    memcpy(buf + n, ")\r\n", 3);
    n += 3;
    struct imap_response *r;
    assert_int_equal(feed(p, buf, n, 0, &r, &err), TERN_OK);
    assert_int_equal(r->items->child->next->len, big);
    imap_response_free(r);
    assert_int_equal(feed(p, buf, n, 65536 + 3, &r, &err), TERN_OK);
    assert_int_equal(r->items->child->next->len, big);
    assert_int_equal(r->items->child->next->str[big - 1], 'b');
    imap_response_free(r);
    free(buf);
    tern_err_clear(&err);
    imap_parser_free(p);
}

#ifdef IMAP_PARSE_TEST_WRAP
/* Nothing the server announces is allocated before its bytes arrive. */
static void
test_no_announced_allocation(void **state)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.inline_max = lim.literal_max;
    lim.response_max = SIZE_MAX;
    struct imap_parser *p = imap_parser_new(&lim);
    struct imap_response *r;
    uint64_t lit, left;
    alloc_largest = 0;
    const char *l = "* 1 FETCH (BODY[] {1073741824}";
    assert_int_equal(imap_parser_line(p, l, strlen(l), &r, &lit, NULL), TERN_OK);
    assert_int_equal(lit, 1073741824);
    char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 16; i++)
        assert_int_equal(imap_parser_literal(p, chunk, sizeof chunk, &left, NULL), TERN_OK);
    assert_true(alloc_largest <= 2 * 16 * sizeof chunk);
    imap_parser_free(p);
}

/* Every allocation failure is TERN_E_NOMEM (or a NULL parser), never a crash or leak. */
static void
test_alloc_failures(void **state)
{
    static const char in[] = "* OK [BADCHARSET ({5}\r\nUTF-8 X)] t\r\n";
    struct sink_log log;
    struct imap_literal_sink sink;
    sink_init(&log, &sink);
    struct imap_limits lim = small_inline(20);
    bool done = false;
    long n;
    for (n = 0; !done; n++) {
        assert_true(n < 10000);
        done = true;
        for (int variant = 0; variant < 3; variant++) {
            const char *buf = variant == 0 ? in : variant == 1 ? gmail_fetch : dovecot_fetch;
            size_t len = variant == 0   ? sizeof in - 1
                         : variant == 1 ? sizeof gmail_fetch - 1
                                        : sizeof dovecot_fetch - 1;
            alloc_count = 0;
            alloc_fail_at = n;
            struct imap_parser *p = imap_parser_new(&lim);
            enum tern_status st = TERN_E_NOMEM;
            struct imap_response *r = NULL;
            struct tern_err err = {0};
            if (p) {
                imap_parser_set_sink(p, &sink);
                st = feed(p, buf, len, 3, &r, &err);
            }
            bool injected = alloc_count > n;
            alloc_fail_at = -1;
            if (injected)
                done = false;
            if (st == TERN_OK) {
                assert_non_null(r);
                imap_response_free(r);
            } else {
                assert_int_equal(st, TERN_E_NOMEM);
                assert_true(injected);
            }
            tern_err_clear(&err);
            imap_parser_free(p);
            assert_int_equal(log.opens, log.closes_ok + log.closes_fail);
        }
    }
    /*
     * Every allocation these responses need (parser, list stack, arena,
     * literal and code buffers, the sink's own) was failed once.
     */
    assert_true(n >= 5);
    assert_true(log.closes_fail > 0);
    tbuf_free(&log.data);
}
#endif

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_tagged),
        cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_untagged_status),
        cmocka_unit_test(test_response_codes),
        cmocka_unit_test(test_garbled_codes),
        cmocka_unit_test(test_text_bytes_kept),
        cmocka_unit_test(test_continuation),
        cmocka_unit_test(test_untagged_data),
        cmocka_unit_test(test_list_literal_name),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_fetch_dovecot),
        cmocka_unit_test(test_fetch_gmail),
        cmocka_unit_test(test_literal_chunks),
        cmocka_unit_test(test_bodystructure_nested),
        cmocka_unit_test(test_bracket_atoms),
        cmocka_unit_test(test_literal_in_code),
        cmocka_unit_test(test_zero_literal),
        cmocka_unit_test(test_literal_with_nul),
        cmocka_unit_test(test_quoted_strings),
        cmocka_unit_test(test_sink_streaming),
        cmocka_unit_test(test_sink_reset_mid_literal),
        cmocka_unit_test(test_inline_without_sink),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_literal_limits),
        cmocka_unit_test(test_response_limit),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_items_limit),
        cmocka_unit_test(test_unbalanced),
        cmocka_unit_test(test_nul_and_controls),
        cmocka_unit_test(test_garbage_tags),
        cmocka_unit_test(test_eight_bit),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_item_helpers),
        cmocka_unit_test(test_parse_buffer),
        cmocka_unit_test(test_many_responses),
#ifdef IMAP_PARSE_TEST_WRAP
        cmocka_unit_test(test_no_announced_allocation),
        cmocka_unit_test(test_alloc_failures),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
