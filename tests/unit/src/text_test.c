/*
 * text_test.c - unit tests of src/text.c: UTF-8 validation, sanitizing for
 * the terminal and JSON, and charset conversion (TESTMATRIX M4, M5, M7).
 *
 * Layer: tests. Byte strings are written with explicit escapes; lengths
 * come from sizeof so that embedded NULs count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "text.h"

/* A string literal and its length without the terminating NUL. */
#define LIT(s) (s), (sizeof(s) - 1)

#define FFFD "\xEF\xBF\xBD"
#define NULSYM "\xE2\x90\x80"

static void
check_sanitize(const char *in, size_t len, bool multiline, const char *want)
{
    char *out = text_sanitize(in, len, multiline);
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
}

static void
check_to_utf8(const char *in, size_t len, const char *charset, const char *want)
{
    char *out = text_to_utf8(in, len, charset);
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
}

/* ---- text_valid_utf8 ---- */

static void
valid_utf8_accepts_well_formed(void **state)
{
    assert_true(text_valid_utf8(LIT("plain ascii")));
    assert_true(text_valid_utf8(LIT("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80")));
    assert_true(text_valid_utf8(LIT("\xEF\xBF\xBF")));     /* U+FFFF */
    assert_true(text_valid_utf8(LIT("\xF4\x8F\xBF\xBF"))); /* U+10FFFF */
    assert_true(text_valid_utf8(LIT("\xED\x9F\xBF")));     /* U+D7FF */
    assert_true(text_valid_utf8(LIT("a\0b")));             /* NUL is valid UTF-8 */
    assert_true(text_valid_utf8("", 0));
    assert_true(text_valid_utf8(NULL, 0));
}

static void
valid_utf8_rejects_malformed(void **state)
{
    assert_false(text_valid_utf8(LIT("\xC0\xAF")));         /* overlong '/' */
    assert_false(text_valid_utf8(LIT("\xC1\xBF")));         /* overlong */
    assert_false(text_valid_utf8(LIT("\xE0\x80\xAF")));     /* overlong 3-byte */
    assert_false(text_valid_utf8(LIT("\xF0\x80\x80\xAF"))); /* overlong 4-byte */
    assert_false(text_valid_utf8(LIT("\xED\xA0\x80")));     /* surrogate U+D800 */
    assert_false(text_valid_utf8(LIT("\xED\xBF\xBF")));     /* surrogate U+DFFF */
    assert_false(text_valid_utf8(LIT("\xF4\x90\x80\x80"))); /* above U+10FFFF */
    assert_false(text_valid_utf8(LIT("\xF5\x80\x80\x80")));
    assert_false(text_valid_utf8(LIT("\xFF")));
    assert_false(text_valid_utf8(LIT("\x80")));       /* lone continuation */
    assert_false(text_valid_utf8(LIT("ok\xE2\x82"))); /* truncated at the end */
    assert_false(text_valid_utf8(LIT("\xE2\x82"
                                     "A"))); /* truncated mid-string */
    assert_false(text_valid_utf8(NULL, 3));
    /* The length is honoured: the bad byte lies past it. */
    assert_true(text_valid_utf8("ok\xFF", 2));
}

/* ---- text_sanitize ---- */

static void
sanitize_keeps_printable_text(void **state)
{
    check_sanitize(LIT("Hello, world"), false, "Hello, world");
    check_sanitize(LIT("caf\xC3\xA9 \xF0\x9F\x98\x80"), false, "caf\xC3\xA9 \xF0\x9F\x98\x80");
    check_sanitize("", 0, true, "");
    check_sanitize(NULL, 5, true, "");
}

static void
sanitize_shows_nul_instead_of_truncating(void **state)
{
    check_sanitize(LIT("a\0b\0"), false, "a" NULSYM "b" NULSYM);
    check_sanitize(LIT("\0"), true, NULSYM);
}

static void
sanitize_replaces_terminal_controls(void **state)
{
    /* CSI clear screen, OSC 52 clipboard write, BEL, BS, DEL. */
    check_sanitize(LIT("\x1B[2Jx"), false, FFFD "[2Jx");
    check_sanitize(LIT("\x1B]52;c;aGk=\x07"), false, FFFD "]52;c;aGk=" FFFD);
    check_sanitize(LIT("ab\x08\x08xy\x7F"), true, "ab" FFFD FFFD "xy" FFFD);
    /* C1 controls: CSI as UTF-8 U+009B, and as a raw (invalid) byte. */
    check_sanitize(LIT("\xC2\x9B"
                       "31m"),
                   false, FFFD "31m");
    check_sanitize(LIT("\x9B"
                       "31m"),
                   false, FFFD "31m");
    check_sanitize(LIT("\xC2\x80\xC2\x9F\xC2\xA0"), false, FFFD FFFD "\xC2\xA0");
    /* DCS and the other C0 codes. */
    check_sanitize(LIT("\x1BP1$r\x1B\\"), false, FFFD "P1$r" FFFD "\\");
    check_sanitize(LIT("\x01\x1F"), true, FFFD FFFD);
}

static void
sanitize_drops_bidi_controls(void **state)
{
    check_sanitize(LIT("abc\xE2\x80\xAE"
                       "fdp.exe"),
                   false, "abcfdp.exe");
    check_sanitize(LIT("\xE2\x80\xAA\xE2\x80\xAB\xE2\x80\xAC\xE2\x80\xAD"), false, "");
    check_sanitize(LIT("x\xE2\x81\xA6y\xE2\x81\xA7z\xE2\x81\xA8\xE2\x81\xA9"), true, "xyz");
    /* Neighbours of the ranges stay. */
    check_sanitize(LIT("\xE2\x80\xA9\xE2\x80\xAF\xE2\x81\xA5\xE2\x81\xAA"), false,
                   "\xE2\x80\xA9\xE2\x80\xAF\xE2\x81\xA5\xE2\x81\xAA");
}

static void
sanitize_line_ends(void **state)
{
    check_sanitize(LIT("a\r\nb\rc\nd\te"), true, "a\nb\nc\nd\te");
    check_sanitize(LIT("a\r\nb\rc\nd\te"), false, "a b c d e");
    check_sanitize(LIT("\r\r\n\n"), true, "\n\n\n");
    check_sanitize(LIT("x\r"), false, "x ");
}

static void
sanitize_invalid_utf8(void **state)
{
    /* One U+FFFD per maximal subpart (Unicode chapter 3). */
    check_sanitize(LIT("\xC0\xAF"), false, FFFD FFFD);
    check_sanitize(LIT("\xE2\x82"), false, FFFD);
    check_sanitize(LIT("\xE2\x82"
                       "A"),
                   false, FFFD "A");
    check_sanitize(LIT("\xED\xA0\x80"), false, FFFD FFFD FFFD);
    check_sanitize(LIT("\xF4\x90\x80\x80"), false, FFFD FFFD FFFD FFFD);
    check_sanitize(LIT("\xFF\xFE"), true, FFFD FFFD);
    check_sanitize(LIT("\xF0\x9F\x98"), false, FFFD);
    /* The length is honoured. */
    check_sanitize("abc\x1B", 3, false, "abc");
}

static void
sanitize_output_is_always_clean(void **state)
{
    /* Every byte value, alone and after a lead byte, gives valid UTF-8 without controls. */
    for (int lead = -1; lead < 256; lead++) {
        for (int c = 0; c < 256; c++) {
            char in[2];
            size_t n = 0;
            if (lead >= 0)
                in[n++] = (char)lead;
            in[n++] = (char)c;
            char *out = text_sanitize(in, n, true);
            assert_non_null(out);
            size_t len = strlen(out);
            assert_true(text_valid_utf8(out, len));
            for (size_t i = 0; i < len; i++) {
                unsigned char b = (unsigned char)out[i];
                assert_false(b < 0x20 && b != '\n' && b != '\t');
                assert_false(b == 0x7F);
                if (b == 0xC2 && i + 1 < len)
                    assert_false((unsigned char)out[i + 1] >= 0x80 &&
                                 (unsigned char)out[i + 1] <= 0x9F);
            }
            free(out);
        }
    }
}

/* ---- text_to_utf8 ---- */

static void
to_utf8_latin1(void **state)
{
    check_to_utf8(LIT("caf\xE9"), "ISO-8859-1", "caf\xC3\xA9");
    check_to_utf8(LIT("caf\xE9"), "latin1", "caf\xC3\xA9");
    check_to_utf8(LIT("caf\xE9"), "\"iso-8859-1\"", "caf\xC3\xA9");
    check_to_utf8(LIT("caf\xE9"), "iso-8859-1*fr", "caf\xC3\xA9");
    /* Read as windows-1252: 0x80 is the euro sign, not a C1 control. */
    check_to_utf8(LIT("\x80 \x93q\x94"), "iso-8859-1", "\xE2\x82\xAC \xE2\x80\x9Cq\xE2\x80\x9D");
    /* 0x81 is undefined in windows-1252. */
    check_to_utf8(LIT("a\x81z"), "windows-1252", "a" FFFD "z");
}

static void
to_utf8_cyrillic_and_cjk(void **state)
{
    /* "Привет" in KOI8-R. */
    check_to_utf8(LIT("\xF0\xD2\xC9\xD7\xC5\xD4"), "KOI8-R",
                  "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82");
    /* "日本" in Shift_JIS, under its aliases; 0x5C stays a backslash (CP932). */
    check_to_utf8(LIT("\x93\xFA\x96\x7B\\"), "Shift_JIS", "\xE6\x97\xA5\xE6\x9C\xAC\\");
    check_to_utf8(LIT("\x93\xFA\x96\x7B"), "x-sjis", "\xE6\x97\xA5\xE6\x9C\xAC");
    /* NEC extension (circled 1), which plain SHIFT_JIS lacks. */
    check_to_utf8(LIT("\x87\x40"), "shift_jis", "\xE2\x91\xA0");
    /* "你好" labelled gb2312, read as GB18030. */
    check_to_utf8(LIT("\xC4\xE3\xBA\xC3"), "gb2312", "\xE4\xBD\xA0\xE5\xA5\xBD");
    /* ISO-2022-JP is stateful: "日本" between escapes. */
    check_to_utf8(LIT("\x1B$BF|K\\\x1B(B!"), "iso-2022-jp", "\xE6\x97\xA5\xE6\x9C\xAC!");
}

static void
to_utf8_utf7(void **state)
{
    /* RFC 2152's example "Hi Mom -☺-!". */
    check_to_utf8(LIT("Hi Mom -+Jjo--!"), "UTF-7", "Hi Mom -\xE2\x98\xBA-!");
    check_to_utf8(LIT("Hi Mom -+Jjo--!"), "unicode-1-1-utf-7", "Hi Mom -\xE2\x98\xBA-!");
}

static void
to_utf8_utf8_and_unknown(void **state)
{
    check_to_utf8(LIT("caf\xC3\xA9"), "utf-8", "caf\xC3\xA9");
    check_to_utf8(LIT("caf\xC3\xA9"), NULL, "caf\xC3\xA9");
    check_to_utf8(LIT("bad\xFF"
                      "byte"),
                  "UTF-8", "bad" FFFD "byte");
    /* us-ascii with 8-bit bytes: read as UTF-8. */
    check_to_utf8(LIT("caf\xC3\xA9\xE9"), "us-ascii", "caf\xC3\xA9" FFFD);
    /* Unknown and malicious labels: read as UTF-8, never an error. */
    check_to_utf8(LIT("caf\xC3\xA9\xE9"), "x-no-such-charset", "caf\xC3\xA9" FFFD);
    check_to_utf8(LIT("ok\xE9"), "UTF-8//TRANSLIT", "ok" FFFD);
    check_to_utf8(LIT("ok\xE9"), "", "ok" FFFD);
    check_to_utf8(LIT("ok"),
                  "a-very-long-charset-name-that-is-longer-than-any-real-one-"
                  "by-quite-a-bit-really",
                  "ok");
    /* "x-" prefixes are tried without it. */
    check_to_utf8(LIT("\xF0\xD2"), "x-koi8-r", "\xD0\x9F\xD1\x80");
    check_to_utf8("", 0, "koi8-r", "");
    check_to_utf8(NULL, 4, "koi8-r", "");
}

static void
to_utf8_nul_and_bad_input(void **state)
{
    /* NUL characters become U+2400 so the C string is not cut short. */
    check_to_utf8(LIT("a\0b"), NULL, "a" NULSYM "b");
    check_to_utf8(LIT("a\0b"), "iso-8859-1", "a" NULSYM "b");
    check_to_utf8(LIT("\0a\0\0"), "UTF-16BE", "a" NULSYM);
    /* A truncated multi-byte character at the end, and an invalid one inside. */
    check_to_utf8(LIT("\x93\xFA\x93"), "shift_jis", "\xE6\x97\xA5" FFFD);
    check_to_utf8(LIT("\xC4\xE3\xFF\xBA\xC3"), "gb2312", "\xE4\xBD\xA0" FFFD "\xE5\xA5\xBD");
    /* Bad UTF-7 ends in U+FFFD, not in an error. */
    char *out = text_to_utf8(LIT("a+\xFF-b"), "utf-7");
    assert_non_null(out);
    assert_true(strstr(out, FFFD) != NULL);
    assert_true(text_valid_utf8(out, strlen(out)));
    free(out);
}

static void
to_utf8_large_input(void **state)
{
    /* More than one iconv chunk, and every byte value. */
    size_t n = 100000;
    char *in = malloc(n);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++)
        in[i] = (char)(i % 256);
    char *out = text_to_utf8(in, n, "iso-8859-1");
    assert_non_null(out);
    assert_true(text_valid_utf8(out, strlen(out)));
    assert_true(strlen(out) > n);
    free(out);
    out = text_to_utf8(in, n, "koi8-r");
    assert_non_null(out);
    assert_true(text_valid_utf8(out, strlen(out)));
    free(out);
    free(in);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_utf8_accepts_well_formed),
        cmocka_unit_test(valid_utf8_rejects_malformed),
        cmocka_unit_test(sanitize_keeps_printable_text),
        cmocka_unit_test(sanitize_shows_nul_instead_of_truncating),
        cmocka_unit_test(sanitize_replaces_terminal_controls),
        cmocka_unit_test(sanitize_drops_bidi_controls),
        cmocka_unit_test(sanitize_line_ends),
        cmocka_unit_test(sanitize_invalid_utf8),
        cmocka_unit_test(sanitize_output_is_always_clean),
        cmocka_unit_test(to_utf8_latin1),
        cmocka_unit_test(to_utf8_cyrillic_and_cjk),
        cmocka_unit_test(to_utf8_utf7),
        cmocka_unit_test(to_utf8_utf8_and_unknown),
        cmocka_unit_test(to_utf8_nul_and_bad_input),
        cmocka_unit_test(to_utf8_large_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
