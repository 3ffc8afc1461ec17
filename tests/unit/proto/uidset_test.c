/*
 * uidset_test.c - unit tests of proto/uidset.c, IMAP sequence sets of UIDs
 * (RFC 3501 §9 sequence-set).
 *
 * Layer: tests of proto/. Built with -DUIDSET_TEST_WRAP and
 * -Wl,--wrap=malloc,--wrap=realloc it also fails every allocation in turn.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tbuf.h"
#include "uidset.h"

#ifdef UIDSET_TEST_WRAP
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

#define MANY ((size_t)1000)

static void
parse_ok(const char *s, struct uidset *set)
{
    assert_int_equal(uidset_parse(s, strlen(s), MANY, set), TERN_OK);
}

/* Parses S and checks that formatting it gives WANT. */
static void
check_format(const char *s, const char *want)
{
    struct uidset set;
    struct tbuf b;
    parse_ok(s, &set);
    tbuf_init(&b, 0);
    assert_int_equal(uidset_format(&set, &b), TERN_OK);
    assert_string_equal(tbuf_ptr(&b), want);
    tbuf_free(&b);
    uidset_free(&set);
}

static void
test_parse_valid(void **state)
{
    struct uidset set;

    parse_ok("12", &set);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.r[0].lo, 12);
    assert_int_equal(set.r[0].hi, 12);
    uidset_free(&set);

    parse_ok("3,7,9", &set);
    assert_int_equal(set.n, 3);
    assert_int_equal(set.r[0].lo, 3);
    assert_int_equal(set.r[1].lo, 7);
    assert_int_equal(set.r[2].hi, 9);
    uidset_free(&set);

    parse_ok("100:200", &set);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.r[0].lo, 100);
    assert_int_equal(set.r[0].hi, 200);
    uidset_free(&set);

    /* A reversed range is stored in order. */
    parse_ok("9:3", &set);
    assert_int_equal(set.r[0].lo, 3);
    assert_int_equal(set.r[0].hi, 9);
    uidset_free(&set);

    /* Ranges stay in the order given, overlaps included. */
    parse_ok("50,1:3,2", &set);
    assert_int_equal(set.n, 3);
    assert_int_equal(set.r[0].lo, 50);
    assert_int_equal(set.r[1].lo, 1);
    assert_int_equal(set.r[1].hi, 3);
    assert_int_equal(set.r[2].lo, 2);
    uidset_free(&set);

    parse_ok("1", &set);
    assert_int_equal(set.r[0].lo, 1);
    uidset_free(&set);

    parse_ok("4294967295", &set);
    assert_int_equal(set.r[0].lo, UINT32_MAX);
    uidset_free(&set);

    parse_ok("1:4294967295", &set);
    assert_int_equal(set.r[0].lo, 1);
    assert_int_equal(set.r[0].hi, UINT32_MAX);
    uidset_free(&set);
}

static void
test_parse_star(void **state)
{
    struct uidset set;

    parse_ok("*", &set);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.r[0].lo, UIDSET_STAR);
    assert_int_equal(set.r[0].hi, UIDSET_STAR);
    uidset_free(&set);

    parse_ok("5:*", &set);
    assert_int_equal(set.r[0].lo, 5);
    assert_int_equal(set.r[0].hi, UIDSET_STAR);
    uidset_free(&set);

    parse_ok("*:5", &set);
    assert_int_equal(set.r[0].lo, 5);
    assert_int_equal(set.r[0].hi, UIDSET_STAR);
    uidset_free(&set);

    parse_ok("*:*", &set);
    assert_int_equal(set.r[0].lo, UIDSET_STAR);
    uidset_free(&set);

    parse_ok("1,*", &set);
    assert_int_equal(set.n, 2);
    assert_int_equal(set.r[1].lo, UIDSET_STAR);
    uidset_free(&set);
}

static void
expect_parse_fails(const char *s, size_t len, size_t max)
{
    struct uidset set = {(struct uid_range *)&set, 99};
    assert_int_equal(uidset_parse(s, len, max, &set), TERN_E_USAGE);
    /* A failed parse leaves an empty set that uidset_free accepts. */
    assert_null(set.r);
    assert_int_equal(set.n, 0);
    uidset_free(&set);
}

#define BAD(s) expect_parse_fails((s), strlen(s), MANY)

static void
test_parse_invalid(void **state)
{
    BAD("0");
    BAD("0:5");
    BAD("5:0");
    BAD("01"); /* nz-number has no leading zero */
    BAD("1,02");
    BAD("");
    BAD(",");
    BAD("1,");
    BAD(",1");
    BAD("1,,2");
    BAD("1::2");
    BAD("1:");
    BAD(":1");
    BAD("1:2:3");
    BAD("-1");
    BAD("+1");
    BAD("1-5");
    BAD("4294967296");
    BAD("99999999999999999999999");
    BAD("1:4294967296");
    BAD("abc");
    BAD("1a");
    BAD("1 ");
    BAD(" 1");
    BAD("1, 2");
    BAD("1 ,2");
    BAD("1\t");
    BAD("**");
    BAD("*1");
    BAD("1*");
    BAD("$");
    expect_parse_fails("1\0", 2, MANY);
    expect_parse_fails(NULL, 3, MANY);
    expect_parse_fails(NULL, 0, MANY);
    assert_int_equal(uidset_parse("1", 1, MANY, NULL), TERN_E_USAGE);
}

static void
test_parse_len_bounds_input(void **state)
{
    struct uidset set;
    /* LEN, not a NUL, ends the input. */
    assert_int_equal(uidset_parse("12,34", 2, MANY, &set), TERN_OK);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.r[0].lo, 12);
    uidset_free(&set);
    expect_parse_fails("12,34", 3, MANY);
}

static void
test_parse_max_ranges(void **state)
{
    struct uidset set;
    assert_int_equal(uidset_parse("1,2,3", 5, 3, &set), TERN_OK);
    assert_int_equal(set.n, 3);
    uidset_free(&set);
    expect_parse_fails("1,2,3", 5, 2);
    expect_parse_fails("1", 1, 0);
    assert_int_equal(uidset_parse("1:100", 5, 1, &set), TERN_OK);
    uidset_free(&set);

    /* A long hostile list is cut off at the limit. */
    struct tbuf b;
    tbuf_init(&b, 0);
    for (int i = 1; i <= 100000; i++)
        assert_int_equal(tbuf_addf(&b, i == 1 ? "%d" : ",%d", i), TERN_OK);
    expect_parse_fails(tbuf_ptr(&b), tbuf_len(&b), 99999);
    assert_int_equal(uidset_parse(tbuf_ptr(&b), tbuf_len(&b), 100000, &set), TERN_OK);
    assert_int_equal(set.n, 100000);
    assert_int_equal(set.r[99999].lo, 100000);
    uidset_free(&set);
    tbuf_free(&b);
}

static void
test_contains(void **state)
{
    struct uidset set;
    parse_ok("3,7:9,20:*", &set);
    assert_false(uidset_contains(&set, 0));
    assert_false(uidset_contains(&set, 1));
    assert_true(uidset_contains(&set, 3));
    assert_false(uidset_contains(&set, 4));
    assert_false(uidset_contains(&set, 6));
    assert_true(uidset_contains(&set, 7));
    assert_true(uidset_contains(&set, 8));
    assert_true(uidset_contains(&set, 9));
    assert_false(uidset_contains(&set, 10));
    assert_false(uidset_contains(&set, 19));
    assert_true(uidset_contains(&set, 20));
    assert_true(uidset_contains(&set, 1000000));
    assert_true(uidset_contains(&set, UIDSET_STAR));
    uidset_free(&set);

    /* '*' alone matches only UIDSET_STAR. */
    parse_ok("*", &set);
    assert_false(uidset_contains(&set, 1));
    assert_false(uidset_contains(&set, UINT32_MAX - 1));
    assert_true(uidset_contains(&set, UIDSET_STAR));
    uidset_free(&set);

    struct uidset empty = {NULL, 0};
    assert_false(uidset_contains(&empty, 1));
    assert_false(uidset_contains(NULL, 1));
}

static void
test_format(void **state)
{
    check_format("12", "12");
    check_format("3,7,9", "3,7,9");
    check_format("100:200", "100:200");
    check_format("9:3", "3:9");
    check_format("5:5", "5");
    check_format("*", "*");
    check_format("5:*", "5:*");
    check_format("*:5", "5:*");
    check_format("1:3,7,10:*", "1:3,7,10:*");
    check_format("4294967295", "*");
    check_format("4294967294", "4294967294");
    check_format("1:4294967294", "1:4294967294");

    /* Appends to what is already in the buffer. */
    struct uidset set;
    struct tbuf b;
    parse_ok("1:2", &set);
    tbuf_init(&b, 0);
    assert_int_equal(tbuf_adds(&b, "UID FETCH "), TERN_OK);
    assert_int_equal(uidset_format(&set, &b), TERN_OK);
    assert_string_equal(tbuf_ptr(&b), "UID FETCH 1:2");
    tbuf_free(&b);

    /* A buffer too small fails without changing what it held. */
    tbuf_init(&b, 12);
    assert_int_equal(tbuf_adds(&b, "UID FETCH "), TERN_OK);
    assert_int_equal(uidset_format(&set, &b), TERN_E_PROTO);
    assert_string_equal(tbuf_ptr(&b), "UID FETCH ");
    tbuf_free(&b);
    uidset_free(&set);

    /* An empty set, or a hand-made one with UID 0, has no IMAP spelling. */
    struct uidset empty = {NULL, 0};
    struct uid_range zero = {0, 5};
    struct uidset bad = {&zero, 1};
    tbuf_init(&b, 0);
    assert_int_equal(uidset_format(&empty, &b), TERN_E_USAGE);
    assert_int_equal(uidset_format(&bad, &b), TERN_E_USAGE);
    assert_int_equal(uidset_format(NULL, &b), TERN_E_USAGE);
    assert_int_equal(tbuf_len(&b), 0);
    tbuf_free(&b);
}

static void
check_from_list(const uint32_t *uids, size_t n, const char *want)
{
    struct uidset set;
    struct tbuf b;
    assert_int_equal(uidset_from_list(uids, n, &set), TERN_OK);
    tbuf_init(&b, 0);
    assert_int_equal(uidset_format(&set, &b), TERN_OK);
    assert_string_equal(tbuf_ptr(&b), want);
    tbuf_free(&b);
    uidset_free(&set);
}

static void
test_from_list(void **state)
{
    static const uint32_t sorted[] = {1, 2, 3, 5, 7, 8};
    check_from_list(sorted, 6, "1:3,5,7:8");
    static const uint32_t unsorted[] = {8, 3, 1, 7, 2, 5};
    check_from_list(unsorted, 6, "1:3,5,7:8");
    static const uint32_t dups[] = {4, 4, 4, 5, 3, 5, 3};
    check_from_list(dups, 7, "3:5");
    static const uint32_t one[] = {42};
    check_from_list(one, 1, "42");
    static const uint32_t top[] = {UINT32_MAX, UINT32_MAX - 1, 1, UINT32_MAX};
    check_from_list(top, 4, "1,4294967294:*");

    struct uidset set;
    assert_int_equal(uidset_from_list(NULL, 0, &set), TERN_OK);
    assert_int_equal(set.n, 0);
    uidset_free(&set);
    static const uint32_t zero[] = {3, 0};
    assert_int_equal(uidset_from_list(zero, 2, &set), TERN_E_USAGE);
    assert_int_equal(set.n, 0);
    assert_int_equal(uidset_from_list(one, 1, NULL), TERN_E_USAGE);
    assert_int_equal(uidset_from_list(NULL, 3, &set), TERN_E_USAGE);
}

static void
test_from_list_large(void **state)
{
    /* 1e5 UIDs, shuffled, every third one missing, each twice. */
    size_t n = 200000;
    uint32_t *uids = malloc(n * sizeof(*uids));
    assert_non_null(uids);
    size_t k = 0;
    for (uint32_t u = 1; k < n; u++) {
        if (u % 3 == 0)
            continue;
        uids[k++] = u;
        uids[k++] = u;
    }
    uint32_t seed = 12345;
    for (size_t i = n - 1; i > 0; i--) {
        seed = seed * 1103515245u + 12345u;
        size_t j = seed % (i + 1);
        uint32_t t = uids[i];
        uids[i] = uids[j];
        uids[j] = t;
    }
    struct uidset set;
    assert_int_equal(uidset_from_list(uids, n, &set), TERN_OK);
    assert_int_equal(set.n, 50000);
    assert_int_equal(set.r[0].lo, 1);
    assert_int_equal(set.r[0].hi, 2);
    assert_int_equal(set.r[49999].lo, 149998);
    assert_int_equal(set.r[49999].hi, 149999);
    assert_true(uidset_contains(&set, 149999));
    assert_false(uidset_contains(&set, 149997));
    uidset_free(&set);

    /* A dense run merges into one range. */
    for (size_t i = 0; i < 100000; i++)
        uids[i] = (uint32_t)(100000 - i);
    assert_int_equal(uidset_from_list(uids, 100000, &set), TERN_OK);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.r[0].lo, 1);
    assert_int_equal(set.r[0].hi, 100000);
    uidset_free(&set);
    free(uids);
}

static void
check_expand(const char *s, uint32_t star, size_t max, const uint32_t *want, size_t nwant)
{
    struct uidset set;
    uint32_t *v = NULL;
    size_t n = 99;
    parse_ok(s, &set);
    assert_int_equal(uidset_expand(&set, star, max, &v, &n), TERN_OK);
    assert_int_equal(n, nwant);
    for (size_t i = 0; i < nwant; i++)
        assert_int_equal(v[i], want[i]);
    free(v);
    uidset_free(&set);
}

static void
test_expand(void **state)
{
    static const uint32_t a[] = {3, 7, 8, 9};
    check_expand("3,7:9", 0, 10, a, 4);
    static const uint32_t b[] = {9, 1, 2, 2};
    check_expand("9,1:2,2", 0, 10, b, 4);
    static const uint32_t c[] = {3, 4, 5};
    check_expand("5:3", 0, 3, c, 3);
}

static void
test_expand_star(void **state)
{
    static const uint32_t a[] = {5, 6, 7};
    check_expand("5:*", 7, 10, a, 3);
    /* "5:*" when the largest UID is 3 means 3:5 (RFC 3501 §9). */
    static const uint32_t b[] = {3, 4, 5};
    check_expand("5:*", 3, 10, b, 3);
    static const uint32_t c[] = {12};
    check_expand("*", 12, 10, c, 1);
    static const uint32_t d[] = {1, 2};
    /* STAR_VALUE 0 skips the ranges that involve '*'. */
    check_expand("1:2,5:*,*", 0, 10, d, 2);
    check_expand("*", 0, 10, NULL, 0);
}

static void
test_expand_limits(void **state)
{
    struct uidset set;
    uint32_t *v = (uint32_t *)&set;
    size_t n = 99;

    parse_ok("1:10", &set);
    assert_int_equal(uidset_expand(&set, 0, 9, &v, &n), TERN_E_USAGE);
    assert_null(v);
    assert_int_equal(n, 0);
    assert_int_equal(uidset_expand(&set, 0, 10, &v, &n), TERN_OK);
    assert_int_equal(n, 10);
    free(v);
    uidset_free(&set);

    /* The whole UID space is refused before anything is allocated. */
    parse_ok("1:4294967294", &set);
    assert_int_equal(uidset_expand(&set, 0, 1000000, &v, &n), TERN_E_USAGE);
    uidset_free(&set);
    parse_ok("1:*", &set);
    assert_int_equal(uidset_expand(&set, UINT32_MAX - 1, 1000000, &v, &n), TERN_E_USAGE);
    /* Many ranges that each fit still add up past the limit. */
    uidset_free(&set);
    parse_ok("1:600,1:600", &set);
    assert_int_equal(uidset_expand(&set, 0, 1000, &v, &n), TERN_E_USAGE);
    uidset_free(&set);

    /* The top of the UID space expands without wrapping around. */
    parse_ok("4294967293:4294967294", &set);
    assert_int_equal(uidset_expand(&set, 0, 10, &v, &n), TERN_OK);
    assert_int_equal(n, 2);
    assert_int_equal(v[1], UINT32_MAX - 1);
    free(v);
    uidset_free(&set);

    struct uidset empty = {NULL, 0};
    assert_int_equal(uidset_expand(&empty, 0, 0, &v, &n), TERN_OK);
    assert_int_equal(n, 0);
    assert_null(v);
    assert_int_equal(uidset_expand(NULL, 0, 10, &v, &n), TERN_E_USAGE);
    assert_int_equal(uidset_expand(&empty, 0, 10, NULL, &n), TERN_E_USAGE);
    assert_int_equal(uidset_expand(&empty, 0, 10, &v, NULL), TERN_E_USAGE);
}

static void
test_free_twice(void **state)
{
    struct uidset set;
    parse_ok("1,2", &set);
    uidset_free(&set);
    uidset_free(&set);
    assert_null(set.r);
    uidset_free(NULL);
}

#ifdef UIDSET_TEST_WRAP
/*
 * Each allocation failure is TERN_E_NOMEM with an empty set (or nothing)
 * handed out and the output buffer as it was.
 */
static void
test_alloc_failures(void **state)
{
    static const char text[] = "1,3:5,7,9,11,13,15,17:*";
    static const uint32_t list[] = {9, 1, 2, 5, 3};
    for (long n = 0;; n++) {
        struct uidset set = {NULL, 0}, merged = {NULL, 0};
        struct tbuf b;
        uint32_t *v = NULL;
        size_t count = 0;
        enum tern_status st_fmt = TERN_OK, st_exp = TERN_OK;
        tbuf_init(&b, 0);
        alloc_count = 0;
        alloc_fail_at = n;
        enum tern_status st_parse = uidset_parse(text, strlen(text), 100, &set);
        if (st_parse == TERN_OK) {
            st_fmt = uidset_format(&set, &b);
            st_exp = uidset_expand(&set, 20, 100, &v, &count);
        }
        enum tern_status st_list = uidset_from_list(list, 5, &merged);
        bool failed = alloc_count > n;
        alloc_fail_at = -1;

        if (st_parse != TERN_OK) {
            assert_int_equal(st_parse, TERN_E_NOMEM);
            assert_null(set.r);
        }
        if (st_fmt != TERN_OK) {
            assert_int_equal(st_fmt, TERN_E_NOMEM);
            assert_int_equal(tbuf_len(&b), 0);
        }
        if (st_exp != TERN_OK) {
            assert_int_equal(st_exp, TERN_E_NOMEM);
            assert_null(v);
        }
        if (st_list != TERN_OK) {
            assert_int_equal(st_list, TERN_E_NOMEM);
            assert_null(merged.r);
        }
        if (!failed) {
            assert_string_equal(tbuf_ptr(&b), text);
            assert_int_equal(count, 1 + 3 + 5 + 4); /* 17:* is 17..20 */
            assert_int_equal(merged.n, 3);
        }
        free(v);
        tbuf_free(&b);
        uidset_free(&set);
        uidset_free(&merged);
        if (!failed)
            break;
    }
}
#endif

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),      cmocka_unit_test(test_parse_star),
        cmocka_unit_test(test_parse_invalid),    cmocka_unit_test(test_parse_len_bounds_input),
        cmocka_unit_test(test_parse_max_ranges), cmocka_unit_test(test_contains),
        cmocka_unit_test(test_format),           cmocka_unit_test(test_from_list),
        cmocka_unit_test(test_from_list_large),  cmocka_unit_test(test_expand),
        cmocka_unit_test(test_expand_star),      cmocka_unit_test(test_expand_limits),
        cmocka_unit_test(test_free_twice),
#ifdef UIDSET_TEST_WRAP
        cmocka_unit_test(test_alloc_failures),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
