/*
 * mime_test.c - unit tests of src/mime.c: message views (headers, text,
 * parts), saving parts, header decoding and safe file names, with the
 * hostile inputs of TESTMATRIX M1-M9.
 *
 * Layer: tests. Messages are inline strings with explicit CR LF; lengths
 * come from sizeof so that embedded NULs count.
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "err.h"
#include "tbuf.h"

#include "mime.h"
#include "text.h"

#define LIT(s) (s), (sizeof(s) - 1)
#define FFFD "\xEF\xBF\xBD"
#define NULSYM "\xE2\x90\x80"

/* ---- helpers ---- */

/* Fails unless S is valid UTF-8 free of terminal controls (LF and TAB allowed when MULTILINE). */
static void
assert_clean(const char *s, bool multiline)
{
    assert_non_null(s);
    size_t len = strlen(s);
    assert_true(text_valid_utf8(s, len));
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '\t')
            assert_true(multiline);
        else
            assert_false(c < 0x20 || c == 0x7F);
        /* C1 controls U+0080-U+009F. */
        if (c == 0xC2 && i + 1 < len)
            assert_false((unsigned char)s[i + 1] >= 0x80 && (unsigned char)s[i + 1] <= 0x9F);
        /* Bidi overrides U+202A-U+202E and isolates U+2066-U+2069. */
        if (c == 0xE2 && i + 2 < len) {
            unsigned char c1 = (unsigned char)s[i + 1], c2 = (unsigned char)s[i + 2];
            assert_false(c1 == 0x80 && c2 >= 0xAA && c2 <= 0xAE);
            assert_false(c1 == 0x81 && c2 >= 0xA6 && c2 <= 0xA9);
        }
    }
}

static void
assert_view_clean(const struct mime_view *v)
{
    for (size_t i = 0; i < v->nheaders; i++) {
        assert_clean(v->headers[i].name, false);
        /* Repeated fields are joined with "\n"; each value is one line. */
        assert_clean(v->headers[i].value, true);
        assert_null(strchr(v->headers[i].value, '\t'));
    }
    assert_clean(v->text, true);
    for (size_t i = 0; i < v->nparts; i++) {
        assert_clean(v->parts[i].id, false);
        assert_clean(v->parts[i].type, false);
        if (v->parts[i].filename)
            assert_clean(v->parts[i].filename, false);
    }
}

static struct mime_view *
view_of(const char *msg, size_t len)
{
    struct tern_err err = {0};
    struct mime_view *v = NULL;
    enum tern_status st = mime_view_mem(msg, len, &v, &err);
    if (st != TERN_OK)
        fail_msg("mime_view_mem: %s: %s", tern_status_name(st), tern_err_msg(&err));
    assert_non_null(v);
    assert_view_clean(v);
    tern_err_clear(&err);
    return v;
}

static const char *
header(const struct mime_view *v, const char *name)
{
    for (size_t i = 0; i < v->nheaders; i++)
        if (strcmp(v->headers[i].name, name) == 0)
            return v->headers[i].value;
    return NULL;
}

static void
assert_part(const struct mime_view *v, size_t i, const char *id, const char *type,
            const char *filename)
{
    assert_true(i < v->nparts);
    assert_string_equal(v->parts[i].id, id);
    assert_string_equal(v->parts[i].type, type);
    if (filename)
        assert_string_equal(v->parts[i].filename, filename);
    else
        assert_null(v->parts[i].filename);
}

/* A temporary file holding LEN bytes of MSG, open for reading at offset 0. */
static int
temp_file_with(const char *msg, size_t len)
{
    char path[] = "/tmp/tern-mime-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, msg + off, len - off);
        assert_true(n > 0);
        off += (size_t)n;
    }
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    return fd;
}

/* Saves PART of MSG to a temporary file and returns its bytes (owned) and size. */
static char *
save_to_memory(const char *msg, size_t len, const char *part, size_t *out_len)
{
    struct tern_err err = {0};
    int out = temp_file_with("", 0);
    uint64_t size = 12345;
    enum tern_status st = mime_save_part_mem(msg, len, part, out, &size, &err);
    if (st != TERN_OK)
        fail_msg("mime_save_part_mem %s: %s", part, tern_err_msg(&err));
    off_t end = lseek(out, 0, SEEK_END);
    assert_true(end >= 0);
    assert_int_equal((uint64_t)end, size);
    char *bytes = malloc((size_t)end + 1);
    assert_non_null(bytes);
    assert_int_equal(pread(out, bytes, (size_t)end, 0), end);
    bytes[end] = '\0';
    close(out);
    *out_len = (size_t)end;
    return bytes;
}

static void
base64_encode(const unsigned char *in, size_t len, struct tbuf *out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t line = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        char q[4] = {alphabet[(v >> 18) & 63], alphabet[(v >> 12) & 63],
                     i + 1 < len ? alphabet[(v >> 6) & 63] : '=',
                     i + 2 < len ? alphabet[v & 63] : '='};
        assert_int_equal(tbuf_add(out, q, 4), TERN_OK);
        line += 4;
        if (line >= 76) {
            assert_int_equal(tbuf_adds(out, "\r\n"), TERN_OK);
            line = 0;
        }
    }
    assert_int_equal(tbuf_adds(out, "\r\n"), TERN_OK);
}

/* ---- plain messages and charsets ---- */

static const char plain_msg[] = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                                "From: Alice Example <alice@example.org>\r\n"
                                "To: bob@example.org\r\n"
                                "Subject: Hello\r\n"
                                "Received: from c by d; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
                                "X-Folded: one\r\n"
                                "\ttwo\r\n"
                                "MIME-Version: 1.0\r\n"
                                "Content-Type: text/plain; charset=utf-8\r\n"
                                "Content-Transfer-Encoding: 8bit\r\n"
                                "\r\n"
                                "Gr\xC3\xBC\xC3\x9F"
                                "e,\r\n"
                                "\tBob\r\n";

static void
view_plain_utf8(void **state)
{
    struct mime_view *v = view_of(LIT(plain_msg));

    /* Every field once, lower case, in first-seen order, repeats joined. */
    const char *names[] = {"received", "from",         "to",           "subject",
                           "x-folded", "mime-version", "content-type", "content-transfer-encoding"};
    assert_int_equal(v->nheaders, sizeof names / sizeof names[0]);
    for (size_t i = 0; i < v->nheaders; i++)
        assert_string_equal(v->headers[i].name, names[i]);
    assert_string_equal(header(v, "received"), "from a by b; Mon, 1 Jan 2024 00:00:00 +0000\n"
                                               "from c by d; Mon, 1 Jan 2024 00:00:01 +0000");
    assert_string_equal(header(v, "from"), "Alice Example <alice@example.org>");
    assert_string_equal(header(v, "x-folded"), "one two");
    assert_string_equal(header(v, "content-type"), "text/plain; charset=utf-8");

    assert_string_equal(v->text, "Gr\xC3\xBC\xC3\x9F"
                                 "e,\n\tBob\n");
    assert_int_equal(v->nparts, 1);
    assert_part(v, 0, "1", "text/plain", NULL);
    assert_int_equal(v->parts[0].size, strlen("Gr\xC3\xBC\xC3\x9F"
                                              "e,\r\n\tBob\r\n"));
    mime_view_free(v);
}

static void
view_latin1_quoted_printable(void **state)
{
    static const char msg[] = "Subject: QP\r\n"
                              "Content-Type: text/plain; charset=ISO-8859-1\r\n"
                              "Content-Transfer-Encoding: quoted-printable\r\n"
                              "\r\n"
                              "caf=E9 cr=E8me br=FBl=E9e, a soft=\r\n"
                              " break =3D done\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9"
                                 "e, a soft break = done\n");
    assert_int_equal(v->parts[0].size, strlen("caf\xE9 cr\xE8me br\xFBl\xE9"
                                              "e, a soft break = done\r\n"));
    mime_view_free(v);
}

static void
view_koi8r_base64(void **state)
{
    /* "Привет, мир!" in KOI8-R, base64. */
    static const char msg[] = "Subject: KOI8\r\n"
                              "Content-Type: text/plain; charset=\"koi8-r\"\r\n"
                              "Content-Transfer-Encoding: base64\r\n"
                              "\r\n"
                              "8NLJ18XULCDNydIhCg==\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, "
                                 "\xD0\xBC\xD0\xB8\xD1\x80!\n");
    assert_int_equal(v->parts[0].size, 13);
    mime_view_free(v);
}

static void
view_shift_jis(void **state)
{
    static const char msg[] = "Subject: =?ISO-2022-JP?B?GyRCRnxLXBsoQg==?=\r\n"
                              "Content-Type: text/plain; charset=Shift_JIS\r\n"
                              "Content-Transfer-Encoding: 8bit\r\n"
                              "\r\n"
                              "\x93\xFA\x96\x7B\x8C\xEA\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(header(v, "subject"), "\xE6\x97\xA5\xE6\x9C\xAC");
    assert_string_equal(v->text, "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\n");
    mime_view_free(v);
}

static void
view_bogus_charset(void **state)
{
    static const char msg[] = "Subject: bogus\r\n"
                              "Content-Type: text/plain; charset=x-no-such-charset-42\r\n"
                              "\r\n"
                              "caf\xC3\xA9 and a bad byte \xE9 and \x1B[2J\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "caf\xC3\xA9 and a bad byte " FFFD " and " FFFD "[2J\n");
    mime_view_free(v);
}

/* ---- RFC 2047 headers ---- */

static void
check_decode(const char *raw, size_t len, const char *want)
{
    char *out = mime_decode_header(raw, len);
    assert_non_null(out);
    assert_clean(out, false);
    assert_string_equal(out, want);
    free(out);
}

static void
decode_header_encoded_words(void **state)
{
    check_decode(LIT("=?UTF-8?B?w6l0w6k=?="), "\xC3\xA9t\xC3\xA9");
    check_decode(LIT("=?ISO-8859-1?Q?caf=E9_cr=E8me?="), "caf\xC3\xA9 cr\xC3\xA8me");
    check_decode(LIT("=?iso-8859-1?q?caf=e9?="), "caf\xC3\xA9");
    /* Adjacent words: the white space between them goes (RFC 2047 §6.2). */
    check_decode(LIT("=?UTF-8?Q?a?= =?UTF-8?Q?b?=\r\n =?ISO-8859-1?Q?=E9?="), "ab\xC3\xA9");
    check_decode(LIT("x =?UTF-8?Q?a?= y"), "x a y");
    /* Padded adjacent base64 words (GMime 3.2.13 alone gives "Hello"). */
    check_decode(LIT("=?UTF-8?B?SGVsbG8=?= =?UTF-8?B?IHdvcmxk?="), "Hello world");
    check_decode(LIT("=?UTF-8?B?YQ==?= =?UTF-8?B?Yg==?= =?UTF-8?B?Yw==?="), "abc");
    /* A character split across two words still decodes. */
    check_decode(LIT("=?UTF-8?B?w6nD?= =?UTF-8?B?qQ==?="), "\xC3\xA9\xC3\xA9");
    /* RFC 2231 language tag in the charset. */
    check_decode(LIT("=?UTF-8*en?Q?hi?="), "hi");
}

static void
decode_header_broken_words(void **state)
{
    /* Broken words are kept as text, never dropped. */
    check_decode(LIT("=?UTF-8?Q?unterminated"), "=?UTF-8?Q?unterminated");
    check_decode(LIT("=?UTF-8?X?abc?="), "=?UTF-8?X?abc?=");
    check_decode(LIT("=??Q?abc?="), "=??Q?abc?=");
    check_decode(LIT("a =? b ?= c"), "a =? b ?= c");
    /* Invalid base64 and QP payloads: best effort, clean output. */
    char *out = mime_decode_header(LIT("=?UTF-8?B?!!!*?= =?UTF-8?Q?=ZZ=4?="));
    assert_non_null(out);
    assert_clean(out, false);
    free(out);
    /* An unknown charset falls back to UTF-8, then windows-1252. */
    check_decode(LIT("=?x-bogus?Q?caf=E9?="), "caf\xC3\xA9");
    check_decode(LIT("=?x-bogus?Q?caf=C3=A9?="), "caf\xC3\xA9");
}

static void
decode_header_raw_8bit_and_controls(void **state)
{
    /* Raw UTF-8 stays; raw Latin-1 is read as windows-1252. */
    check_decode(LIT("caf\xC3\xA9"), "caf\xC3\xA9");
    check_decode(LIT("caf\xE9 \x80"), "caf\xC3\xA9 \xE2\x82\xAC");
    /* Encoded words decoding to CR, LF, TAB, ESC, C1 and bidi overrides. */
    check_decode(LIT("=?UTF-8?Q?a=0D=0Ab=09c?="), "a b c");
    check_decode(LIT("=?UTF-8?Q?=1B[2J=1B]52;c;aGk=3D=07x?="),
                 FFFD "[2J" FFFD "]52;c;aGk=" FFFD "x");
    check_decode(LIT("=?UTF-8?B?wpszMW0=?="), FFFD "31m");
    check_decode(LIT("=?UTF-8?B?4oCudHh0LmV4ZQ==?="), "txt.exe");
    check_decode(LIT("raw \x1B[2J"), "raw " FFFD "[2J");
    /* Folding and trimming. */
    check_decode(LIT(" a\r\n b\r\n"), "a b");
    check_decode(LIT("a\r\nb"), "a b");
    check_decode(NULL, 0, "");
    check_decode("", 0, "");
}

static void
decode_header_nul(void **state)
{
    /* NUL never truncates (M5): shown as U+2400; inside a word as a visible mark. */
    check_decode(LIT("a\0b"), "a" NULSYM "b");
    check_decode(LIT("caf\xE9\0=?UTF-8?Q?x?="), "caf\xC3\xA9" NULSYM "x");
    char *out = mime_decode_header(LIT("=?UTF-8?Q?p=00q?= end"));
    assert_non_null(out);
    assert_clean(out, false);
    assert_true(strncmp(out, "p", 1) == 0);
    assert_non_null(strstr(out, "q end"));
    free(out);
}

static void
decode_header_long(void **state)
{
    /* One long word, and many words: all of it decoded. */
    struct tbuf raw;
    tbuf_init(&raw, 0);
    assert_int_equal(tbuf_adds(&raw, "=?UTF-8?Q?"), TERN_OK);
    for (int i = 0; i < 500; i++)
        assert_int_equal(tbuf_adds(&raw, "=C3=A9"), TERN_OK);
    assert_int_equal(tbuf_adds(&raw, "?="), TERN_OK);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(tbuf_adds(&raw, " =?UTF-8?B?w6k=?="), TERN_OK);
    char *out = mime_decode_header(tbuf_ptr(&raw), tbuf_len(&raw));
    assert_non_null(out);
    assert_int_equal(strlen(out), 2 * 2500);
    for (size_t i = 0; i < 2500; i++)
        assert_memory_equal(out + 2 * i, "\xC3\xA9", 2);
    free(out);
    tbuf_free(&raw);
}

static void
view_decodes_header_fields(void **state)
{
    static const char msg[] =
        "From: =?UTF-8?Q?J=C3=B6rg?= =?UTF-8?B?IE3DvGxsZXI=?= <joerg@example.org>\r\n"
        "To: \"Doe, Jane\" <jane@example.org>, =?utf-8?q?x?=@example.org,\r\n"
        " undisclosed-recipients:;\r\n"
        "Cc: ;;;; <<<unbalanced (comment\r\n"
        "Subject: =?UTF-8?B?SGVsbG8=?= =?UTF-8?B?IHdvcmxk?= and =?ISO-8859-1?Q?caf=E9?=\r\n"
        "X-Raw: caf\xE9\r\n"
        "\r\n"
        "body\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(header(v, "from"), "J\xC3\xB6rg M\xC3\xBCller <joerg@example.org>");
    /* The encoded word in an addr-spec is not decoded (RFC 2047 §5). */
    const char *to = header(v, "to");
    assert_non_null(strstr(to, "Doe, Jane"));
    assert_non_null(strstr(to, "jane@example.org"));
    assert_non_null(strstr(to, "=?utf-8?q?x?=@example.org"));
    assert_non_null(strstr(to, "undisclosed-recipients"));
    assert_true(strlen(header(v, "cc")) > 0);
    assert_string_equal(header(v, "subject"), "Hello world and caf\xC3\xA9");
    assert_string_equal(header(v, "x-raw"), "caf\xC3\xA9");
    mime_view_free(v);
}

/* ---- structure ---- */

static const char alternative_msg[] = "Subject: alt\r\n"
                                      "Content-Type: multipart/alternative; boundary=\"alt\"\r\n"
                                      "\r\n"
                                      "This is a multi-part message in MIME format.\r\n"
                                      "--alt\r\n"
                                      "Content-Type: text/plain; charset=us-ascii\r\n"
                                      "\r\n"
                                      "plain version\r\n"
                                      "--alt\r\n"
                                      "Content-Type: text/html; charset=us-ascii\r\n"
                                      "\r\n"
                                      "<p>html version</p>\r\n"
                                      "--alt--\r\n";

static void
view_alternative_prefers_plain(void **state)
{
    struct mime_view *v = view_of(LIT(alternative_msg));
    assert_string_equal(v->text, "plain version");
    assert_int_equal(v->nparts, 2);
    assert_part(v, 0, "1", "text/plain", NULL);
    assert_part(v, 1, "2", "text/html", NULL);
    assert_int_equal(v->parts[0].size, strlen("plain version"));
    assert_int_equal(v->parts[1].size, strlen("<p>html version</p>"));
    mime_view_free(v);
}

static void
view_html_only(void **state)
{
    static const char msg[] =
        "Subject: html\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n"
        "<html><head><title>Title</title><style>p { color: red }</style>\r\n"
        "<script>document.write('x')</script></head>\r\n"
        "<body><h1>News</h1><p>Hello   &amp;\r\n  welcome,&nbsp;caf&eacute;</p>\r\n"
        "<ul><li>one</li><li>two <a href=\"https://example.org/x\">details</a></li></ul>\r\n"
        "<div>a<br>b</div><blockquote>quoted</blockquote>\r\n"
        "<pre>  keep\r\n    spaces</pre>\r\n"
        "<p><a href=\"https://example.org/\">https://example.org</a>\r\n"
        "<a href=\"mailto:me@example.org\">me@example.org</a></p>\r\n"
        "<table><tr><td>c1</td><td>c2</td></tr><tr><td>d1</td><td>d2</td></tr></table>\r\n"
        "<p>\x1B[2J&#27;[2J &#x202E;evil</p></body></html>\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "News\n"
                                 "\n"
                                 "Hello & welcome,\xC2\xA0"
                                 "caf\xC3\xA9\n"
                                 "\n"
                                 "* one\n"
                                 "* two details <https://example.org/x>\n"
                                 "\n"
                                 "a\n"
                                 "b\n"
                                 "\n"
                                 "quoted\n"
                                 "\n"
                                 "  keep\n"
                                 "    spaces\n"
                                 "\n"
                                 "https://example.org me@example.org\n"
                                 "\n"
                                 "c1 c2\n"
                                 "d1 d2\n"
                                 "\n"
                                 "[2J[2J evil\n");
    assert_part(v, 0, "1", "text/html", NULL);
    mime_view_free(v);
}

static void
view_html_edge_cases(void **state)
{
    /* Latin-1 HTML without a charset, NUL bytes, an empty body, deep nesting. */
    static const char msg[] = "Content-Type: text/html\r\n\r\n<p>caf\xE9 a\0b</p>";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "caf\xC3\xA9 a" NULSYM "b\n");
    mime_view_free(v);

    v = view_of(LIT("Content-Type: text/html\r\n\r\n"));
    assert_string_equal(v->text, "");
    mime_view_free(v);

    struct tbuf m;
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "Content-Type: text/html\r\n\r\n"), TERN_OK);
    for (int i = 0; i < 20000; i++)
        assert_int_equal(tbuf_adds(&m, "<div><b>"), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "deep"), TERN_OK);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_non_null(strstr(v->text, "deep"));
    mime_view_free(v);
    tbuf_free(&m);
}

static const char mixed_msg[] =
    "From: a@example.org\r\n"
    "Subject: mixed\r\n"
    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    "\r\n"
    "--outer\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Disposition: attachment; filename=\"notes.txt\"\r\n"
    "\r\n"
    "attached text, not the body\r\n"
    "--outer\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Disposition: inline\r\n"
    "\r\n"
    "the body\r\n"
    "--outer\r\n"
    "Content-Type: application/octet-stream\r\n"
    "Content-Disposition: attachment; filename*=UTF-8''na%C3%AFve.txt\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "AAEC/w==\r\n"
    "--outer\r\n"
    "Content-Type: application/pdf; name=\"=?UTF-8?Q?r=C3=A9sum=C3=A9?=.pdf\"\r\n"
    "\r\n"
    "%PDF\r\n"
    "--outer--\r\n";

static void
view_mixed_with_attachments(void **state)
{
    struct mime_view *v = view_of(LIT(mixed_msg));
    assert_string_equal(v->text, "the body");
    assert_int_equal(v->nparts, 4);
    assert_part(v, 0, "1", "text/plain", "notes.txt");
    assert_part(v, 1, "2", "text/plain", NULL);
    assert_part(v, 2, "3", "application/octet-stream", "na\xC3\xAFve.txt");
    assert_part(v, 3, "4", "application/pdf", "r\xC3\xA9sum\xC3\xA9.pdf");
    assert_int_equal(v->parts[2].size, 4);
    assert_int_equal(v->parts[3].size, 4);
    mime_view_free(v);
}

static const char nested_msg[] = "Subject: nested\r\n"
                                 "Content-Type: multipart/mixed; boundary=b1\r\n"
                                 "\r\n"
                                 "--b1\r\n"
                                 "Content-Type: multipart/alternative; boundary=b2\r\n"
                                 "\r\n"
                                 "--b2\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "\r\n"
                                 "outer text\r\n"
                                 "--b2\r\n"
                                 "Content-Type: multipart/related; boundary=b3\r\n"
                                 "\r\n"
                                 "--b3\r\n"
                                 "Content-Type: text/html\r\n"
                                 "\r\n"
                                 "<p>outer html</p>\r\n"
                                 "--b3\r\n"
                                 "Content-Type: IMAGE/PNG\r\n"
                                 "Content-Transfer-Encoding: base64\r\n"
                                 "\r\n"
                                 "iVBORw0KGgo=\r\n"
                                 "--b3--\r\n"
                                 "--b2--\r\n"
                                 "--b1\r\n"
                                 "Content-Type: message/rfc822\r\n"
                                 "Content-Disposition: attachment; filename=fwd.eml\r\n"
                                 "\r\n"
                                 "From: inner@example.org\r\n"
                                 "Subject: inner\r\n"
                                 "Content-Type: multipart/mixed; boundary=in\r\n"
                                 "\r\n"
                                 "--in\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "\r\n"
                                 "inner text\r\n"
                                 "line two\r\n"
                                 "--in--\r\n"
                                 "--b1\r\n"
                                 "Content-Type: application/pdf\r\n"
                                 "\r\n"
                                 "pdf\r\n"
                                 "--b1--\r\n";

static void
view_nested_numbering(void **state)
{
    struct mime_view *v = view_of(LIT(nested_msg));
    assert_int_equal(v->nparts, 5);
    assert_part(v, 0, "1.1", "text/plain", NULL);
    assert_part(v, 1, "1.2.1", "text/html", NULL);
    assert_part(v, 2, "1.2.2", "image/png", NULL);
    assert_part(v, 3, "2", "message/rfc822", "fwd.eml");
    assert_part(v, 4, "3", "application/pdf", NULL);
    assert_string_equal(v->text, "outer text");
    assert_int_equal(v->parts[2].size, 8);
    mime_view_free(v);
}

static void
save_embedded_message(void **state)
{
    const char *start = strstr(nested_msg, "From: inner@");
    const char *end = strstr(start, "\r\n--b1\r\n");
    size_t len;
    char *bytes = save_to_memory(LIT(nested_msg), "2", &len);
    assert_int_equal(len, (size_t)(end - start));
    assert_memory_equal(bytes, start, len);
    free(bytes);

    /* The listed size is what save writes. */
    struct mime_view *v = view_of(LIT(nested_msg));
    assert_int_equal(v->parts[3].size, (uint64_t)(end - start));
    mime_view_free(v);
}

static void
save_base64_attachment_exact(void **state)
{
    /* Every byte value, in a length that needs padding. */
    size_t n = 256 * 3 + 2;
    unsigned char *original = malloc(n);
    assert_non_null(original);
    for (size_t i = 0; i < n; i++)
        original[i] = (unsigned char)((i * 7 + 3) % 256);
    struct tbuf m;
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "Subject: bin\r\n"
                                   "Content-Type: multipart/mixed; boundary=zz\r\n\r\n"
                                   "--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
                                   "--zz\r\nContent-Type: application/octet-stream\r\n"
                                   "Content-Disposition: attachment; filename=data.bin\r\n"
                                   "Content-Transfer-Encoding: base64\r\n\r\n"),
                     TERN_OK);
    base64_encode(original, n, &m);
    assert_int_equal(tbuf_adds(&m, "--zz--\r\n"), TERN_OK);

    size_t len;
    char *bytes = save_to_memory(tbuf_ptr(&m), tbuf_len(&m), "2", &len);
    assert_int_equal(len, n);
    assert_memory_equal(bytes, original, n);
    free(bytes);

    /* The same through a file, and the listed size. */
    struct tern_err err = {0};
    int in = temp_file_with(tbuf_ptr(&m), tbuf_len(&m));
    int out = temp_file_with("", 0);
    uint64_t size = 0;
    assert_int_equal(mime_save_part_fd(in, "2", out, &size, &err), TERN_OK);
    assert_int_equal(size, n);
    unsigned char *again = malloc(n);
    assert_non_null(again);
    assert_int_equal(pread(out, again, n, 0), (ssize_t)n);
    assert_memory_equal(again, original, n);
    struct mime_view *v = NULL;
    assert_int_equal(mime_view_fd(in, &v, &err), TERN_OK);
    assert_int_equal(v->nparts, 2);
    assert_part(v, 1, "2", "application/octet-stream", "data.bin");
    assert_int_equal(v->parts[1].size, n);
    assert_string_equal(v->text, "see attached");
    mime_view_free(v);
    close(in);
    close(out);
    free(again);
    free(original);
    tbuf_free(&m);
}

static void
save_single_part_and_pipe(void **state)
{
    /* A non-multipart message has part "1"; saving to a pipe works. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    struct tern_err err = {0};
    uint64_t size = 0;
    assert_int_equal(mime_save_part_mem(LIT(plain_msg), "1", fds[1], &size, &err), TERN_OK);
    close(fds[1]);
    char buf[256];
    ssize_t got = read(fds[0], buf, sizeof buf);
    close(fds[0]);
    assert_int_equal(got, (ssize_t)size);
    assert_memory_equal(buf,
                        "Gr\xC3\xBC\xC3\x9F"
                        "e,\r\n\tBob\r\n",
                        (size_t)got);
}

static void
save_errors(void **state)
{
    struct tern_err err = {0};
    uint64_t size = 99;
    int out = temp_file_with("", 0);

    assert_int_equal(mime_save_part_mem(LIT(nested_msg), "3.2", out, &size, &err), TERN_E_NOTFOUND);
    assert_string_equal(tern_err_msg(&err), "no part 3.2 in this message");
    assert_int_equal(size, 0);

    const char *bad[] = {"0",    "4", "1.3", "1.2.3", "2.1", "1.",          ".1",        "01",
                         "1..1", "a", "-1",  "1.1.1", "",    "99999999999", "4294967297"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(mime_save_part_mem(LIT(nested_msg), bad[i], out, &size, &err),
                         TERN_E_NOTFOUND);
    assert_int_equal(mime_save_part_mem(LIT(nested_msg), NULL, out, &size, &err), TERN_E_NOTFOUND);
    /* A multipart is not a leaf. */
    assert_int_equal(mime_save_part_mem(LIT(nested_msg), "1.2", out, &size, &err), TERN_E_NOTFOUND);
    assert_non_null(strstr(tern_err_msg(&err), "1.2"));
    /* In a single-part message only "1" exists. */
    assert_int_equal(mime_save_part_mem(LIT(plain_msg), "2", out, &size, &err), TERN_E_NOTFOUND);
    assert_int_equal(mime_save_part_mem(LIT(plain_msg), "1.1", out, &size, &err), TERN_E_NOTFOUND);
    /* An id with control characters is named without them. */
    assert_int_equal(mime_save_part_mem(LIT(nested_msg), "1\x1B[2J", out, &size, &err),
                     TERN_E_NOTFOUND);
    assert_null(strchr(tern_err_msg(&err), '\x1B'));
    assert_int_equal(lseek(out, 0, SEEK_END), 0);
    close(out);

    /* Write failures are I/O errors. */
    int ro = open("/dev/null", O_RDONLY);
    assert_true(ro >= 0);
    assert_int_equal(mime_save_part_mem(LIT(nested_msg), "3", ro, &size, &err), TERN_E_IO);
    close(ro);
    /* Not a message at all. */
    assert_int_equal(mime_save_part_mem("", 0, "1", 1, &size, &err), TERN_E_PROTO);
    tern_err_clear(&err);
}

/* ---- bad input (TESTMATRIX M1-M8) ---- */

static void
view_not_a_message(void **state)
{
    struct tern_err err = {0};
    struct mime_view *v = (struct mime_view *)&err;
    assert_int_equal(mime_view_mem("", 0, &v, &err), TERN_E_PROTO);
    assert_null(v);
    assert_true(strlen(tern_err_msg(&err)) > 0);
    assert_int_equal(mime_view_mem(LIT("garbage without a colon"), &v, &err), TERN_E_PROTO);
    assert_int_equal(mime_view_mem(LIT("\x01\x02\xFF\xFE"), &v, &err), TERN_E_PROTO);
    assert_int_equal(mime_view_mem(NULL, 5, &v, &err), TERN_E_USAGE);
    assert_int_equal(mime_view_mem(LIT(plain_msg), NULL, &err), TERN_E_USAGE);
    assert_int_equal(mime_view_fd(-1, &v, &err), TERN_E_IO);
    tern_err_clear(&err);
    /* Headers and no body at all. */
    v = view_of(LIT("Subject: only"));
    assert_string_equal(header(v, "subject"), "only");
    assert_string_equal(v->text, "");
    mime_view_free(v);
    mime_view_free(NULL);
}

static void
view_broken_boundaries(void **state)
{
    /* No boundary parameter: what there is is shown (M1). */
    struct mime_view *v = view_of(LIT("Content-Type: multipart/mixed\r\n\r\n"
                                      "--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n"));
    assert_string_equal(v->text, "--x\nContent-Type: text/plain\n\nhi\n--x--\n");
    mime_view_free(v);

    /* No final boundary. */
    v = view_of(LIT("Content-Type: multipart/mixed; boundary=x\r\n\r\n"
                    "--x\r\n\r\nA\r\n--x\r\nContent-Type: image/gif\r\n\r\nGIF"));
    assert_int_equal(v->nparts, 2);
    assert_part(v, 0, "1", "text/plain", NULL);
    assert_part(v, 1, "2", "image/gif", NULL);
    assert_string_equal(v->text, "A");
    mime_view_free(v);

    /* The boundary inside the preamble, and duplicated boundary lines. */
    v = view_of(LIT("Content-Type: multipart/mixed; boundary=x\r\n\r\n"
                    "preamble --x here\r\n--x\r\n--x\r\n\r\nB\r\n--x--\r\n--x--\r\n"));
    assert_view_clean(v);
    assert_true(v->nparts >= 1);
    mime_view_free(v);

    /* A nested boundary that the outer one is a prefix of. */
    v = view_of(LIT("Content-Type: multipart/mixed; boundary=ab\r\n\r\n"
                    "--ab\r\nContent-Type: multipart/mixed; boundary=abc\r\n\r\n"
                    "--abc\r\n\r\nin\r\n--abc--\r\n--ab\r\n\r\nout\r\n--ab--\r\n"));
    assert_int_equal(v->nparts, 2);
    assert_part(v, 0, "1.1", "text/plain", NULL);
    assert_part(v, 1, "2", "text/plain", NULL);
    mime_view_free(v);

    /* No boundary line at all: the body is shown as it is, NULs and all. */
    v = view_of(LIT("Content-Type: multipart/mixed; boundary=x\r\nX-A: folded\r\n b\r\n\r\n"
                    "no parts here\r\nContent-Type: message/rfc822\r\na\0b\r\n"));
    assert_int_equal(v->nparts, 0);
    assert_string_equal(v->text, "no parts here\nContent-Type: message/rfc822\na" NULSYM "b\n");
    mime_view_free(v);
}

/* A message of DEPTH nested multiparts around one text part. */
static void
nested_multiparts(struct tbuf *m, int depth)
{
    tbuf_init(m, 0);
    assert_int_equal(tbuf_adds(m, "Subject: deep\r\n"), TERN_OK);
    for (int i = 0; i < depth; i++)
        assert_int_equal(
            tbuf_addf(m, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i),
            TERN_OK);
    assert_int_equal(tbuf_adds(m, "Content-Type: text/plain\r\n\r\ninner\r\n"), TERN_OK);
    for (int i = depth - 1; i >= 0; i--)
        assert_int_equal(tbuf_addf(m, "--b%d--\r\n", i), TERN_OK);
}

static void
view_deep_nesting(void **state)
{
    struct tbuf m;
    size_t len;

    /* Within the depth limit: listed, numbered, shown and saveable. */
    nested_multiparts(&m, 64);
    struct mime_view *v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nparts, 1);
    struct tbuf id;
    tbuf_init(&id, 0);
    for (int i = 0; i < 64; i++)
        assert_int_equal(tbuf_adds(&id, i ? ".1" : "1"), TERN_OK);
    assert_string_equal(v->parts[0].id, tbuf_ptr(&id));
    assert_string_equal(v->text, "inner");
    char *bytes = save_to_memory(tbuf_ptr(&m), tbuf_len(&m), tbuf_ptr(&id), &len);
    assert_int_equal(len, 5);
    free(bytes);
    mime_view_free(v);
    tbuf_free(&m);

    /* Past it: the view still comes, without the too-deep part. */
    nested_multiparts(&m, 65);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nparts, 0);
    assert_string_equal(header(v, "subject"), "deep");
    struct tern_err err = {0};
    uint64_t size;
    assert_int_equal(tbuf_adds(&id, ".1"), TERN_OK);
    assert_int_equal(mime_save_part_mem(tbuf_ptr(&m), tbuf_len(&m), tbuf_ptr(&id), 1, &size, &err),
                     TERN_E_NOTFOUND);
    tern_err_clear(&err);
    mime_view_free(v);
    tbuf_free(&m);
    tbuf_free(&id);

    /* 5,000 levels (M2). */
    nested_multiparts(&m, 5000);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nparts, 0);
    mime_view_free(v);
    tbuf_free(&m);

    /* 5,000 nested message/rfc822: one attached message. */
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "Subject: rfc\r\n"), TERN_OK);
    for (int i = 0; i < 5000; i++)
        assert_int_equal(tbuf_addf(&m, "Content-Type: message/rfc822\r\n\r\nSubject: l%d\r\n", i),
                         TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nend\r\n"), TERN_OK);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nparts, 1);
    assert_part(v, 0, "1", "message/rfc822", NULL);
    mime_view_free(v);
    tbuf_free(&m);
}

static void
view_many_multiparts(void **state)
{
    /*
     * Past 1,024 multiparts in a message the rest stay leaves, listed with
     * their multipart type; 50,000 nested levels take seconds, not minutes.
     */
    struct tbuf m;
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "Content-Type: multipart/mixed; boundary=top\r\n\r\n"), TERN_OK);
    for (int i = 0; i < 1100; i++)
        assert_int_equal(tbuf_addf(&m,
                                   "--top\r\nContent-Type: multipart/alternative; boundary=a%d\r\n"
                                   "\r\n--a%d\r\n\r\nt%d\r\n--a%d--\r\n",
                                   i, i, i, i),
                         TERN_OK);
    assert_int_equal(tbuf_adds(&m, "--top--\r\n"), TERN_OK);
    struct mime_view *v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nparts, 1100);
    assert_part(v, 0, "1.1", "text/plain", NULL);
    assert_part(v, 1022, "1023.1", "text/plain", NULL);
    assert_part(v, 1023, "1024", "multipart/alternative", NULL);
    assert_part(v, 1099, "1100", "multipart/alternative", NULL);
    assert_string_equal(v->text, "t0");
    mime_view_free(v);
    size_t len;
    char *bytes = save_to_memory(tbuf_ptr(&m), tbuf_len(&m), "1100", &len);
    assert_string_equal(bytes, "--a1099\r\n\r\nt1099\r\n--a1099--");
    free(bytes);
    tbuf_free(&m);

    time_t start = time(NULL);
    nested_multiparts(&m, 50000);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_string_equal(header(v, "subject"), "deep");
    mime_view_free(v);
    tbuf_free(&m);
    assert_true(time(NULL) - start < 60);
}

static void
view_huge_headers(void **state)
{
    struct tbuf m;
    time_t start = time(NULL);

    /* A 1 MB Subject (M3): all of it, one line. */
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "From: a@example.org\r\nSubject: "), TERN_OK);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(tbuf_adds(&m, "0123456789"), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\n\r\nbody\r\n"), TERN_OK);
    struct mime_view *v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(strlen(header(v, "subject")), 1000000);
    mime_view_free(v);
    tbuf_free(&m);

    /* 100,000 header fields, half of them repeats. */
    tbuf_init(&m, 0);
    for (int i = 0; i < 50000; i++)
        assert_int_equal(tbuf_addf(&m, "X-H%d: v\r\nReceived: r%d\r\n", i, i), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nbody\r\n"), TERN_OK);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(v->nheaders, 50001);
    assert_string_equal(v->headers[0].name, "x-h0");
    assert_string_equal(v->headers[1].name, "received");
    assert_int_equal(strncmp(header(v, "received"), "r0\nr1\nr2\n", 9), 0);
    mime_view_free(v);
    tbuf_free(&m);

    /* Endless folding and a huge address list of separators. */
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "Subject: x"), TERN_OK);
    for (int i = 0; i < 50000; i++)
        assert_int_equal(tbuf_adds(&m, "\r\n y"), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nTo: "), TERN_OK);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(tbuf_adds(&m, ";,<("), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\n\r\nbody\r\n"), TERN_OK);
    v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(strlen(header(v, "subject")), 1 + 2 * 50000);
    assert_non_null(header(v, "to"));
    mime_view_free(v);
    tbuf_free(&m);

    /* Bounded time, generously so under sanitizers. */
    assert_true(time(NULL) - start < 120);
}

static void
view_invalid_encodings(void **state)
{
    /* Invalid base64 and quoted-printable are decoded best-effort (M8). */
    static const char msg[] = "Content-Type: multipart/mixed; boundary=q\r\n\r\n"
                              "--q\r\nContent-Type: text/plain\r\n"
                              "Content-Transfer-Encoding: base64\r\n\r\n"
                              "aGVs*bG8!!\r\ngd29y\x01"
                              "bGQ=====\r\n=\r\n"
                              "--q\r\nContent-Type: text/plain\r\n"
                              "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                              "a=ZZb=4\r\nc=\r\n"
                              "--q\r\nContent-Type: text/plain\r\n"
                              "Content-Transfer-Encoding: x-uuencode\r\n\r\n"
                              "begin 644 f\r\nM86)C\r\n\x7F\x7F\x7F\r\nend\r\n"
                              "--q--\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "hello world");
    assert_int_equal(v->nparts, 3);
    for (size_t i = 0; i < v->nparts; i++) {
        size_t len;
        char *bytes = save_to_memory(LIT(msg), v->parts[i].id, &len);
        assert_int_equal(len, v->parts[i].size);
        free(bytes);
    }
    mime_view_free(v);
}

static void
view_invalid_utf8_and_unknown_charsets(void **state)
{
    static const char msg[] = "Subject: =?x-unknown?B?/w==?= \xFF\xFE =?UTF-8?Q?=C0=AF?=\r\n"
                              "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                              "overlong \xC0\xAF surrogate \xED\xA0\x80 end \xF4\x90\x80\x80\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(v->text, "overlong " FFFD FFFD " surrogate " FFFD FFFD FFFD
                                 " end " FFFD FFFD FFFD FFFD "\n");
    assert_true(strlen(header(v, "subject")) > 0);
    mime_view_free(v);

    /* UTF-7 body. */
    v = view_of(LIT("Content-Type: text/plain; charset=utf-7\r\n\r\nHi Mom -+Jjo--!\r\n"));
    assert_string_equal(v->text, "Hi Mom -\xE2\x98\xBA-!\n");
    mime_view_free(v);
}

static const char nul_msg[] = "From: \"Al\0ice\" <alice@example.org>\r\n"
                              "Subject: x\0y =?UTF-8?Q?p=00q?= z\r\n"
                              "Content-Type: multipart/mixed; boundary=zz\r\n"
                              "\r\n"
                              "--zz\r\n"
                              "Content-Type: text/plain\r\n"
                              "\r\n"
                              "body\0text\r\n"
                              "--zz\r\n"
                              "Content-Type: text/plain\r\n"
                              "Content-Disposition: attachment; filename*=UTF-8''a%00b.txt\r\n"
                              "\r\n"
                              "x\r\n"
                              "--zz\r\n"
                              "Content-Type: text/plain; name=\"n\0m.txt\"\r\n"
                              "\r\n"
                              "y\r\n"
                              "--zz\r\n"
                              "Content-Type: text/plain\r\n"
                              "Content-Disposition: attachment; filename=\"c\0d.txt\"\r\n"
                              "\r\n"
                              "z\r\n"
                              "--zz\r\n"
                              "Content-Type: text/plain\r\n"
                              "Content-Disposition: attachment; filename=\"100%00.txt\"\r\n"
                              "\r\n"
                              "w\r\n"
                              "--zz--\r\n";

static void
check_nul_view(const struct mime_view *v)
{
    assert_view_clean(v);
    assert_string_equal(header(v, "from"), "Al" NULSYM "ice <alice@example.org>");
    const char *subject = header(v, "subject");
    assert_int_equal(strncmp(subject, "x" NULSYM "y p", 6), 0);
    assert_non_null(strstr(subject, "q z"));
    assert_string_equal(v->text, "body" NULSYM "text");
    assert_int_equal(v->nparts, 5);
    assert_part(v, 1, "2", "text/plain", "a" NULSYM "b.txt");
    assert_part(v, 2, "3", "text/plain", "n" NULSYM "m.txt");
    assert_part(v, 3, "4", "text/plain", "c" NULSYM "d.txt");
    assert_part(v, 4, "5", "text/plain", "100%00.txt");
}

static void
view_nul_bytes(void **state)
{
    /* NUL in header values, an encoded word, the body and file names (M5). */
    struct mime_view *v = view_of(LIT(nul_msg));
    check_nul_view(v);
    mime_view_free(v);

    /* The same read from a file. */
    struct tern_err err = {0};
    int fd = temp_file_with(LIT(nul_msg));
    assert_int_equal(mime_view_fd(fd, &v, &err), TERN_OK);
    check_nul_view(v);
    mime_view_free(v);
    close(fd);

    /* And from a pipe (read into memory first). */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], nul_msg, sizeof nul_msg - 1), (ssize_t)(sizeof nul_msg - 1));
    close(fds[1]);
    assert_int_equal(mime_view_fd(fds[0], &v, &err), TERN_OK);
    check_nul_view(v);
    mime_view_free(v);
    close(fds[0]);

    size_t len;
    char *bytes = save_to_memory(LIT(nul_msg), "1", &len);
    assert_int_equal(len, 9);
    assert_memory_equal(bytes, "body\0text", 9);
    free(bytes);
}

static void
view_terminal_escapes(void **state)
{
    /* ESC, OSC 52, C1 CSI and bidi overrides in every displayed field (M7). */
    static const char msg[] =
        "From: =?UTF-8?Q?Eve=1B[2J?= <eve@example.org>\r\n"
        "Subject: \x1B]52;c;aGk=\x07 =?UTF-8?B?4oCu?=gnp.exe \xC2\x9B"
        "31m\r\n"
        "X-Evil\x1B: value\r\n"
        "Content-Type: multipart/mixed; boundary=e\r\n"
        "\r\n"
        "--e\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "clear\x1B[2J osc\x1B]52;c;aGk=\x07 c1\xC2\x9B"
        "31m bidi\xE2\x80\xAE"
        "txt bs\x08\r\n"
        "--e\r\n"
        "Content-Type: application/x-evil\x1B[31m\r\n"
        "Content-Disposition: attachment; filename=\"=?UTF-8?B?4oCuZmRwLmV4ZQ==?=\x1B[2J.txt\"\r\n"
        "\r\n"
        "x\r\n"
        "--e--\r\n";
    struct mime_view *v = view_of(LIT(msg));
    assert_string_equal(header(v, "from"), "Eve" FFFD "[2J <eve@example.org>");
    assert_string_equal(header(v, "subject"), FFFD "]52;c;aGk=" FFFD " gnp.exe " FFFD "31m");
    assert_string_equal(v->text, "clear" FFFD "[2J osc" FFFD "]52;c;aGk=" FFFD " c1" FFFD "31m bidi"
                                 "txt bs" FFFD);
    assert_int_equal(v->nparts, 2);
    assert_string_equal(v->parts[1].filename, "fdp.exe" FFFD "[2J.txt");
    mime_view_free(v);
}

static void
view_hostile_address_fields(void **state)
{
    /*
     * Unclosed quotes and comments after commas make GMime's address parser
     * quadratic (M3); at the top level and in an attached message alike,
     * the view must come back in bounded time, with nothing dropped.
     */
    time_t start = time(NULL);
    struct tbuf m;
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m, "From: a@example.org\r\nTo: first@example.org"), TERN_OK);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(tbuf_adds(&m, ",\""), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nCc: x@example.org"), TERN_OK);
    for (int i = 0; i < 50000; i++)
        assert_int_equal(tbuf_adds(&m, ",<("), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                                   "--b\r\nContent-Type: message/rfc822\r\n\r\n"),
                     TERN_OK);
    size_t inner_start = tbuf_len(&m);
    assert_int_equal(tbuf_adds(&m, "To: y@example.org"), TERN_OK);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(tbuf_adds(&m, ",\""), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\nSubject: inner\r\n\r\ninner body"), TERN_OK);
    size_t inner_end = tbuf_len(&m);
    assert_int_equal(tbuf_adds(&m, "\r\n--b--\r\n"), TERN_OK);

    struct mime_view *v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_int_equal(strncmp(header(v, "to"), "first@example.org,", 18), 0);
    assert_true(strlen(header(v, "to")) >= 200000);
    assert_true(strlen(header(v, "cc")) >= 150000);
    assert_int_equal(v->nparts, 1);
    assert_part(v, 0, "1", "message/rfc822", NULL);
    assert_int_equal(v->parts[0].size, inner_end - inner_start);
    mime_view_free(v);
    size_t len;
    char *bytes = save_to_memory(tbuf_ptr(&m), tbuf_len(&m), "1", &len);
    assert_int_equal(len, inner_end - inner_start);
    assert_memory_equal(bytes, tbuf_ptr(&m) + inner_start, len);
    free(bytes);
    tbuf_free(&m);
    assert_true(time(NULL) - start < 30);
}

static void
view_attached_message_forms(void **state)
{
    /* The whole message is an attached one; its Content-Type shows as written. */
    static const char fwd[] = "Subject: fwd\r\n"
                              "Content-Type:\r\n (a comment) MESSAGE/RFC822\r\n"
                              "\r\n"
                              "From: x@example.org\r\nSubject: inner\r\n\r\nbody\n";
    struct mime_view *v = view_of(LIT(fwd));
    assert_string_equal(header(v, "content-type"), "(a comment) MESSAGE/RFC822");
    assert_int_equal(v->nparts, 1);
    assert_part(v, 0, "1", "message/rfc822", NULL);
    assert_string_equal(v->text, "");
    mime_view_free(v);
    size_t len;
    char *bytes = save_to_memory(LIT(fwd), "1", &len);
    assert_string_equal(bytes, "From: x@example.org\r\nSubject: inner\r\n\r\nbody\n");
    free(bytes);

    /* A base64-encoded attached message (RFC 2046 forbids it; it happens) is saved decoded. */
    static const char b64[] = "Content-Type: multipart/mixed; boundary=q\r\n\r\n"
                              "--q\r\nContent-Type: message/rfc822; name=\"m.eml\"\r\n"
                              "Content-Transfer-Encoding: base64\r\n\r\n"
                              "U3ViamVjdDogaGkNCg0KYm9keQ0K\r\n--q--\r\n";
    v = view_of(LIT(b64));
    assert_part(v, 0, "1", "message/rfc822", "m.eml");
    assert_int_equal(v->parts[0].size, 21);
    mime_view_free(v);
    bytes = save_to_memory(LIT(b64), "1", &len);
    assert_string_equal(bytes, "Subject: hi\r\n\r\nbody\r\n");
    free(bytes);

    /* Two Content-Type fields: GMime goes by the last. */
    v = view_of(LIT("Content-Type: multipart/mixed; boundary=q\r\n\r\n"
                    "--q\r\nContent-Type: text/plain\r\nContent-Type: message/rfc822\r\n\r\n"
                    "Subject: in\r\n\r\nbody\r\n"
                    "--q\r\nContent-Type: message/rfc822\r\nContent-Type: text/plain\r\n\r\n"
                    "just text\r\n--q--\r\n"));
    assert_part(v, 0, "1", "message/rfc822", NULL);
    assert_part(v, 1, "2", "text/plain", NULL);
    assert_string_equal(v->text, "just text");
    mime_view_free(v);

    /* A body that quotes such a header line shows it unchanged. */
    static const char quoted[] =
        "Content-Type: text/plain\r\n\r\n"
        "see:\r\nContent-Type: message/rfc822\r\ncontent-type:message/x\r\n";
    v = view_of(LIT(quoted));
    assert_string_equal(v->text, "see:\nContent-Type: message/rfc822\ncontent-type:message/x\n");
    assert_int_equal(v->nparts, 1);
    mime_view_free(v);
}

static void
view_digest(void **state)
{
    /* In a multipart/digest a part without Content-Type is a message (RFC 2046 §5.1.5). */
    time_t start = time(NULL);
    struct tbuf m;
    tbuf_init(&m, 0);
    assert_int_equal(tbuf_adds(&m,
                               "Subject: digest\r\n"
                               "Content-Type: Multipart/Digest; boundary=d\r\n\r\n"
                               "--d\r\n\r\nFrom: one@example.org\r\nSubject: one\r\n\r\nfirst\r\n"
                               "--d\r\nContent-Type: text/plain\r\n\r\nexplicit text\r\n"
                               "--d\r\n\r\nTo: x@example.org"),
                     TERN_OK);
    for (int i = 0; i < 100000; i++)
        assert_int_equal(tbuf_adds(&m, ",\""), TERN_OK);
    assert_int_equal(tbuf_adds(&m, "\r\n\r\nsecond\r\n--d--\r\n"), TERN_OK);
    struct mime_view *v = view_of(tbuf_ptr(&m), tbuf_len(&m));
    assert_string_equal(header(v, "content-type"), "Multipart/Digest; boundary=d");
    assert_int_equal(v->nparts, 3);
    assert_part(v, 0, "1", "message/rfc822", NULL);
    assert_part(v, 1, "2", "text/plain", NULL);
    assert_part(v, 2, "3", "message/rfc822", NULL);
    assert_string_equal(v->text, "explicit text");
    mime_view_free(v);
    size_t len;
    char *bytes = save_to_memory(tbuf_ptr(&m), tbuf_len(&m), "1", &len);
    assert_string_equal(bytes, "From: one@example.org\r\nSubject: one\r\n\r\nfirst");
    free(bytes);
    tbuf_free(&m);
    assert_true(time(NULL) - start < 30);
}

static void
view_fd_reads_from_start(void **state)
{
    /* The message is read from offset 0, and the descriptor's offset is left alone. */
    struct tern_err err = {0};
    struct mime_view *v = NULL;
    int fd = temp_file_with(LIT(mixed_msg));
    assert_int_equal(lseek(fd, 7, SEEK_SET), 7);
    assert_int_equal(mime_view_fd(fd, &v, &err), TERN_OK);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 7);
    assert_string_equal(header(v, "subject"), "mixed");
    assert_int_equal(v->nparts, 4);
    mime_view_free(v);
    uint64_t size = 0;
    int out = temp_file_with("", 0);
    assert_int_equal(mime_save_part_fd(fd, "3", out, &size, &err), TERN_OK);
    assert_int_equal(size, 4);
    assert_int_equal(lseek(fd, 0, SEEK_CUR), 7);
    assert_int_equal(mime_save_part_fd(fd, "9", out, &size, &err), TERN_E_NOTFOUND);
    assert_string_equal(tern_err_msg(&err), "no part 9 in this message");
    close(out);
    close(fd);
    tern_err_clear(&err);

    /* An mbox "From " line before the header is skipped. */
    v = view_of(LIT("From alice@example.org Mon Jan  1 00:00:00 2024\r\n"
                    "Subject: mbox\r\n\r\nbody\r\n"));
    assert_string_equal(header(v, "subject"), "mbox");
    assert_string_equal(v->text, "body\n");
    mime_view_free(v);
}

/* ---- file names ---- */

static void
check_safe(const char *in, const char *want)
{
    char *out = mime_safe_filename(in);
    assert_non_null(out);
    assert_string_equal(out, want);
    assert_null(strchr(out, '/'));
    assert_true(out[0] != '.' && out[0] != '\0');
    assert_clean(out, false);
    free(out);
}

static void
safe_filename(void **state)
{
    check_safe("report.pdf", "report.pdf");
    check_safe("../../etc/passwd", "passwd");
    check_safe("/etc/passwd", "passwd");
    check_safe("C:\\Windows\\evil.exe", "evil.exe");
    check_safe(".bashrc", "bashrc");
    check_safe("...hidden", "hidden");
    check_safe("..", "attachment");
    check_safe("dir/", "attachment");
    check_safe("", "attachment");
    check_safe(NULL, "attachment");
    check_safe("  . ", "attachment");
    check_safe("trailing. . ", "trailing");
    check_safe("a\x1B[2Jb", "a_[2Jb");
    check_safe("a" NULSYM "b.txt", "a_b.txt");
    check_safe("x\xE2\x80\xAE"
               "fdp.exe",
               "xfdp.exe");
    check_safe("a:b", "a_b");
    check_safe("nul.txt", "_nul.txt");
    check_safe("CON", "_CON");
    check_safe("com1.log", "_com1.log");
    check_safe("console.txt", "console.txt");
    check_safe("na\xC3\xAFve.txt", "na\xC3\xAFve.txt");
    check_safe("bad\xFFutf8", "bad_utf8");

    /* Long names are cut at a character boundary, keeping the extension. */
    struct tbuf long_name;
    tbuf_init(&long_name, 0);
    for (int i = 0; i < 150; i++)
        assert_int_equal(tbuf_adds(&long_name, "\xC3\xA9"), TERN_OK);
    assert_int_equal(tbuf_adds(&long_name, ".pdf"), TERN_OK);
    char *out = mime_safe_filename(tbuf_ptr(&long_name));
    assert_non_null(out);
    assert_true(strlen(out) <= 200);
    assert_true(text_valid_utf8(out, strlen(out)));
    assert_string_equal(out + strlen(out) - 4, ".pdf");
    free(out);
    tbuf_free(&long_name);
}

static void
init_is_idempotent(void **state)
{
    mime_init();
    mime_init();
    struct mime_view *v = view_of(LIT(alternative_msg));
    mime_view_free(v);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(init_is_idempotent),
        cmocka_unit_test(view_plain_utf8),
        cmocka_unit_test(view_latin1_quoted_printable),
        cmocka_unit_test(view_koi8r_base64),
        cmocka_unit_test(view_shift_jis),
        cmocka_unit_test(view_bogus_charset),
        cmocka_unit_test(decode_header_encoded_words),
        cmocka_unit_test(decode_header_broken_words),
        cmocka_unit_test(decode_header_raw_8bit_and_controls),
        cmocka_unit_test(decode_header_nul),
        cmocka_unit_test(decode_header_long),
        cmocka_unit_test(view_decodes_header_fields),
        cmocka_unit_test(view_alternative_prefers_plain),
        cmocka_unit_test(view_html_only),
        cmocka_unit_test(view_html_edge_cases),
        cmocka_unit_test(view_mixed_with_attachments),
        cmocka_unit_test(view_nested_numbering),
        cmocka_unit_test(save_embedded_message),
        cmocka_unit_test(save_base64_attachment_exact),
        cmocka_unit_test(save_single_part_and_pipe),
        cmocka_unit_test(save_errors),
        cmocka_unit_test(view_not_a_message),
        cmocka_unit_test(view_broken_boundaries),
        cmocka_unit_test(view_deep_nesting),
        cmocka_unit_test(view_many_multiparts),
        cmocka_unit_test(view_huge_headers),
        cmocka_unit_test(view_invalid_encodings),
        cmocka_unit_test(view_invalid_utf8_and_unknown_charsets),
        cmocka_unit_test(view_nul_bytes),
        cmocka_unit_test(view_terminal_escapes),
        cmocka_unit_test(view_hostile_address_fields),
        cmocka_unit_test(view_attached_message_forms),
        cmocka_unit_test(view_digest),
        cmocka_unit_test(view_fd_reads_from_start),
        cmocka_unit_test(safe_filename),
    };
    mime_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
