/*
 * mutf7_test.c - unit tests of proto/mutf7.c, IMAP modified UTF-7
 * (RFC 3501 §5.1.3).
 *
 * Layer: tests of proto/. Every invalid form the header lists has a case,
 * and the round trips cover the BMP, surrogate pairs and "&". Built with
 * -DMUTF7_TEST_WRAP and -Wl,--wrap=malloc,--wrap=realloc it also fails
 * every allocation in turn.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mutf7.h"

#ifdef MUTF7_TEST_WRAP
void *__real_malloc(size_t n);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *p, size_t n);

static long alloc_fail_at = -1; /* fail the allocation with this index */
static long alloc_count;

void *
__wrap_malloc(size_t n)
{
    if (alloc_fail_at >= 0 && alloc_count++ == alloc_fail_at)
        return NULL;
    return __real_malloc(n);
}

void *
__wrap_realloc(void *p, size_t n)
{
    if (alloc_fail_at >= 0 && alloc_count++ == alloc_fail_at)
        return NULL;
    return __real_realloc(p, n);
}
#endif

/* Encodes UTF8 (LEN bytes) and checks the result is WIRE; then decodes WIRE back. */
static void
check_pair(const char *utf8, size_t len, const char *wire)
{
    char *out = NULL;
    assert_int_equal(mutf7_encode(utf8, len, &out), TERN_OK);
    assert_non_null(out);
    assert_string_equal(out, wire);
    free(out);

    out = NULL;
    assert_int_equal(mutf7_decode(wire, strlen(wire), &out), TERN_OK);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    assert_memory_equal(out, utf8, len);
    free(out);
}

#define PAIR(u, w) check_pair((u), strlen(u), (w))

static void
test_roundtrip_ascii(void **state)
{
    PAIR("INBOX", "INBOX");
    PAIR("", "");
    PAIR("Sent Items", "Sent Items");
    PAIR("a-b_c.d/e~f", "a-b_c.d/e~f");
    /* Every printable ASCII character but "&" stands for itself. */
    char all[0x7f - 0x20 + 1];
    size_t n = 0;
    for (int c = 0x20; c < 0x7f; c++) {
        if (c != '&')
            all[n++] = (char)c;
    }
    all[n] = '\0';
    PAIR(all, all);
}

static void
test_roundtrip_ampersand(void **state)
{
    PAIR("&", "&-");
    PAIR("a&b", "a&-b");
    PAIR("&&", "&-&-");
    PAIR("Tom & Jerry", "Tom &- Jerry");
    /* "&-" right after a shifted run is an "&", not a null shift. */
    PAIR("\xc3\xa4&", "&AOQ-&-");
}

static void
test_roundtrip_international(void **state)
{
    PAIR("Entw\xc3\xbcrfe", "Entw&APw-rfe");
    PAIR("\xd0\x9e\xd1\x82\xd0\xbf\xd1\x80\xd0\xb0\xd0\xb2\xd0\xbb\xd0\xb5\xd0\xbd\xd0\xbd"
         "\xd1\x8b\xd0\xb5",
         "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-");
    PAIR("\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "&ZeVnLIqe-");
    /* RFC 3501 §5.1.3's own example. */
    PAIR("~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
         "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
    /* Adjacent non-ASCII characters share one run; a space splits runs. */
    PAIR("\xc3\xa4\xc3\xb6", "&AOQA9g-");
    PAIR("\xc3\xa4 \xc3\xb6", "&AOQ- &APY-");
    PAIR("Gr\xc3\xbc\xc3\x9f"
         "e/\xc3\x84rger & Co",
         "Gr&APwA3w-e/&AMQ-rger &- Co");
}

static void
test_roundtrip_astral(void **state)
{
    PAIR("\xf0\x9f\x98\x80", "&2D3eAA-"); /* U+1F600 as D83D DE00 */
    PAIR("a\xf0\x9f\x98\x80"
         "b",
         "a&2D3eAA-b");
    PAIR("\xf0\x9d\x84\x9e\xf0\x9d\x84\x9e", "&2DTdHtg03R4-"); /* two U+1D11E */
    PAIR("\xf4\x8f\xbf\xbf", "&2,,f,w-");                      /* U+10FFFF */
}

static void
test_roundtrip_controls(void **state)
{
    /* Controls other than NUL are not printable, so they are encoded. */
    PAIR("\x01", "&AAE-");
    PAIR("\x7f", "&AH8-");
    PAIR("a\tb", "a&AAk-b");
}

/* Every code point (in steps, with neighbours) survives encode + decode. */
static void
test_roundtrip_sweep(void **state)
{
    for (uint32_t cp = 1; cp <= 0x10ffff; cp += 13) {
        if (cp >= 0xd800 && cp <= 0xdfff)
            continue;
        char s[16];
        size_t n = 0;
        s[n++] = 'x';
        if (cp < 0x80) {
            s[n++] = (char)cp;
        } else if (cp < 0x800) {
            s[n++] = (char)(0xc0 | (cp >> 6));
            s[n++] = (char)(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            s[n++] = (char)(0xe0 | (cp >> 12));
            s[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            s[n++] = (char)(0x80 | (cp & 0x3f));
        } else {
            s[n++] = (char)(0xf0 | (cp >> 18));
            s[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
            s[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
            s[n++] = (char)(0x80 | (cp & 0x3f));
        }
        s[n++] = 'y';
        char *wire = NULL, *back = NULL;
        assert_int_equal(mutf7_encode(s, n, &wire), TERN_OK);
        for (const char *p = wire; *p; p++)
            assert_true(*p >= 0x20 && *p <= 0x7e);
        assert_int_equal(mutf7_decode(wire, strlen(wire), &back), TERN_OK);
        assert_int_equal(strlen(back), n);
        assert_memory_equal(back, s, n);
        free(wire);
        free(back);
    }
}

static void
expect_decode_fails(const char *wire, size_t len)
{
    char *out = (char *)"untouched";
    assert_int_equal(mutf7_decode(wire, len, &out), TERN_E_PROTO);
    assert_null(out);
}

#define BAD(w) expect_decode_fails((w), strlen(w))

static void
test_decode_unterminated(void **state)
{
    BAD("&");
    BAD("&AOQ");
    BAD("abc&AOQ");
    BAD("&ZeVnLIqe");
    /* The terminating "-" lies beyond LEN. */
    expect_decode_fails("&AOQ-", 4);
}

static void
test_decode_bad_base64(void **state)
{
    BAD("&AO=Q-");
    BAD("&A/Q-"); /* "/" is "," in modified BASE64 */
    BAD("&A.Q-");
    BAD("&AO Q-");
    BAD("&A&Q-");
    BAD("&AOQ\x80-");
}

static void
test_decode_padding(void **state)
{
    BAD("&AOR-");  /* non-zero padding bits (U+00E4 is AOQ) */
    BAD("&APx-");  /* non-zero padding bits (U+00FC is APw) */
    BAD("&AOQA-"); /* a whole extra character */
    BAD("&AA-");   /* 12 bits: not even one UTF-16 unit */
    BAD("&A-");
}

static void
test_decode_ampersand_misuse(void **state)
{
    BAD("&ACY-");  /* "&" must be "&-", never encoded */
    BAD("&&-");    /* "&" inside a run */
    BAD("&AOQ&-"); /* "&" inside a run, after a character */
}

static void
test_decode_ampersand_dash_valid(void **state)
{
    char *out = NULL;
    /* "&--" is "&" followed by "-". */
    assert_int_equal(mutf7_decode("&--", 3, &out), TERN_OK);
    assert_string_equal(out, "&-");
    free(out);
}

static void
test_decode_encoded_ascii(void **state)
{
    BAD("&AGE-");    /* "a" */
    BAD("&ACA-");    /* " " */
    BAD("&AH4-");    /* "~" */
    BAD("&AOQAYQ-"); /* "a" hidden after an "ä" */
    /* Every printable ASCII character, encoded alone, is refused. */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    for (unsigned c = 0x20; c <= 0x7e; c++) {
        char w[5] = {'&', b64[(c >> 10) & 0x3f], b64[(c >> 4) & 0x3f], b64[(c << 2) & 0x3f], '-'};
        expect_decode_fails(w, sizeof(w));
    }
}

static void
test_decode_null_shift(void **state)
{
    BAD("&AOQ-&APY-"); /* must be one run: &AOQA9g- */
    BAD("x&AOQ-&APY-y");
}

static void
test_decode_surrogates(void **state)
{
    BAD("&2D0-");      /* high surrogate alone */
    BAD("&3gA-");      /* low surrogate alone */
    BAD("&2D0A5A-");   /* high surrogate, then a BMP character */
    BAD("&3gDYPQ-");   /* low before high */
    BAD("&AOTYPQ-");   /* high surrogate at the end of the run */
    BAD("&2D0-&3gA-"); /* a pair split across two runs */
}

static void
test_decode_raw_bytes(void **state)
{
    BAD("Entw\xc3\xbcrfe"); /* raw 8-bit */
    BAD("\xff");
    expect_decode_fails("a\0b", 3); /* raw NUL */
    BAD("a\tb");                    /* raw control */
    BAD("\x7f");
    BAD("a\r\nb");
    BAD("&AAA-"); /* encoded NUL */
}

static void
test_decode_args(void **state)
{
    char *out = NULL;
    assert_int_equal(mutf7_decode("INBOX", 5, NULL), TERN_E_USAGE);
    assert_int_equal(mutf7_decode(NULL, 3, &out), TERN_E_USAGE);
    assert_int_equal(mutf7_decode(NULL, 0, &out), TERN_OK);
    assert_string_equal(out, "");
    free(out);
    /* LEN bounds the input: no NUL is needed after it. */
    assert_int_equal(mutf7_decode("INBOXjunk", 5, &out), TERN_OK);
    assert_string_equal(out, "INBOX");
    free(out);
}

static void
expect_encode_fails(const char *utf8, size_t len)
{
    char *out = (char *)"untouched";
    assert_int_equal(mutf7_encode(utf8, len, &out), TERN_E_USAGE);
    assert_null(out);
}

#define BADU(u) expect_encode_fails((u), strlen(u))

static void
test_encode_invalid_utf8(void **state)
{
    BADU("\xc0\xaf");         /* overlong "/" */
    BADU("\xc1\xbf");         /* overlong */
    BADU("\xe0\x80\xaf");     /* overlong, 3 bytes */
    BADU("\xe0\x9f\xbf");     /* overlong U+07FF */
    BADU("\xf0\x80\x80\xaf"); /* overlong, 4 bytes */
    BADU("\xf0\x8f\xbf\xbf"); /* overlong U+FFFF */
    BADU("\xed\xa0\x80");     /* surrogate D800 */
    BADU("\xed\xbf\xbf");     /* surrogate DFFF */
    BADU("\xf4\x90\x80\x80"); /* above U+10FFFF */
    BADU("\xf5\x80\x80\x80");
    BADU("\xff");
    BADU("\x80"); /* stray continuation */
    BADU("a\xbf"
         "b");
    BADU("\xc3"); /* truncated */
    BADU("\xe6\x97");
    BADU("\xf0\x9f\x98");
    BADU("\xc3\x28"); /* bad continuation */
    BADU("\xe6\x28\xa5");
    expect_encode_fails("a\0b", 3); /* NUL */
    expect_encode_fails("\0", 1);
    /* LEN cuts a valid sequence in half. */
    expect_encode_fails("\xc3\xa4", 1);
}

static void
test_encode_args(void **state)
{
    char *out = NULL;
    assert_int_equal(mutf7_encode("x", 1, NULL), TERN_E_USAGE);
    assert_int_equal(mutf7_encode(NULL, 1, &out), TERN_E_USAGE);
    assert_int_equal(mutf7_encode(NULL, 0, &out), TERN_OK);
    assert_string_equal(out, "");
    free(out);
    assert_int_equal(mutf7_encode("Entw\xc3\xbcrfeXYZ", 9, &out), TERN_OK);
    assert_string_equal(out, "Entw&APw-rfe");
    free(out);
}

#ifdef MUTF7_TEST_WRAP
/* Each allocation failure is TERN_E_NOMEM with nothing handed out. */
static void
test_alloc_failures(void **state)
{
    static const char *const names[] = {"Entw\xc3\xbcrfe", "\xf0\x9f\x98\x80&x", "&", ""};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        for (long n = 0;; n++) {
            char *wire = NULL, *back = NULL;
            enum tern_status st_dec = TERN_OK;
            alloc_count = 0;
            alloc_fail_at = n;
            enum tern_status st_enc = mutf7_encode(names[i], strlen(names[i]), &wire);
            if (st_enc == TERN_OK)
                st_dec = mutf7_decode(wire, strlen(wire), &back);
            bool failed = alloc_count > n;
            alloc_fail_at = -1;
            if (st_enc != TERN_OK) {
                assert_int_equal(st_enc, TERN_E_NOMEM);
                assert_null(wire);
            }
            if (st_dec != TERN_OK) {
                assert_int_equal(st_dec, TERN_E_NOMEM);
                assert_null(back);
            }
            if (!failed)
                assert_string_equal(back, names[i]);
            free(wire);
            free(back);
            if (!failed)
                break;
        }
    }
}
#endif

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_ascii),
        cmocka_unit_test(test_roundtrip_ampersand),
        cmocka_unit_test(test_roundtrip_international),
        cmocka_unit_test(test_roundtrip_astral),
        cmocka_unit_test(test_roundtrip_controls),
        cmocka_unit_test(test_roundtrip_sweep),
        cmocka_unit_test(test_decode_unterminated),
        cmocka_unit_test(test_decode_bad_base64),
        cmocka_unit_test(test_decode_padding),
        cmocka_unit_test(test_decode_ampersand_misuse),
        cmocka_unit_test(test_decode_ampersand_dash_valid),
        cmocka_unit_test(test_decode_encoded_ascii),
        cmocka_unit_test(test_decode_null_shift),
        cmocka_unit_test(test_decode_surrogates),
        cmocka_unit_test(test_decode_raw_bytes),
        cmocka_unit_test(test_decode_args),
        cmocka_unit_test(test_encode_invalid_utf8),
        cmocka_unit_test(test_encode_args),
#ifdef MUTF7_TEST_WRAP
        cmocka_unit_test(test_alloc_failures),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
