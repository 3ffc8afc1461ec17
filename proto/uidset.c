/*
 * uidset.c - IMAP sequence sets of UIDs (RFC 3501 §9 "sequence-set",
 * RFC 9051 §9).
 *
 * Layer: proto/. Includes only libc and proto headers.
 *
 * The grammar is the RFC's, strictly:
 *
 *   sequence-set = (seq-number / seq-range) ["," sequence-set]
 *   seq-range    = seq-number ":" seq-number
 *   seq-number   = nz-number / "*"
 *   nz-number    = digit-nz *DIGIT        ; 1 .. 4294967295, no leading 0
 *
 * so "0", "01", signs, spaces, empty elements and "1::2" are errors.
 * Because "*" is stored as UIDSET_STAR (the largest 32-bit number), the
 * number 4294967295 and "*" are the same once parsed, and format writes
 * both as "*".
 *
 * Limits: MAX_RANGES of uidset_parse and MAX of uidset_expand are taken
 * literally (0 allows nothing), so a caller always states a bound and a
 * hostile "1:4294967295" or a million-element set cannot exhaust memory.
 */
#include "uidset.h"

#include <stdlib.h>
#include <string.h>

enum tern_status
uidset_parse(const char *s, size_t len, size_t max_ranges, struct uidset *out)
{
    if (!out)
        return TERN_E_USAGE;
    out->r = NULL;
    out->n = 0;
    if (!s || len == 0)
        return TERN_E_USAGE;

    struct uid_range *r = NULL;
    size_t n = 0, cap = 0;
    size_t i = 0;
    for (;;) {
        uint32_t num[2];
        int count = 0;
        for (;;) {
            /* One seq-number. */
            if (i < len && s[i] == '*') {
                num[count++] = UIDSET_STAR;
                i++;
            } else if (i < len && s[i] >= '1' && s[i] <= '9') {
                uint64_t v = 0;
                while (i < len && s[i] >= '0' && s[i] <= '9') {
                    v = v * 10 + (uint64_t)(s[i] - '0');
                    if (v > UINT32_MAX)
                        goto fail;
                    i++;
                }
                num[count++] = (uint32_t)v;
            } else {
                goto fail;
            }
            if (count == 2 || i >= len || s[i] != ':')
                break;
            i++; /* the ":" of a range */
        }
        if (n == max_ranges)
            goto fail;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            if (ncap > max_ranges)
                ncap = max_ranges;
            struct uid_range *nr = realloc(r, ncap * sizeof(*nr));
            if (!nr) {
                free(r);
                return TERN_E_NOMEM;
            }
            r = nr;
            cap = ncap;
        }
        uint32_t lo = num[0], hi = count == 2 ? num[1] : num[0];
        r[n].lo = lo < hi ? lo : hi;
        r[n].hi = lo < hi ? hi : lo;
        n++;
        if (i == len)
            break;
        if (s[i] != ',')
            goto fail;
        i++; /* a "," must be followed by another element */
    }
    out->r = r;
    out->n = n;
    return TERN_OK;

fail:
    free(r);
    return TERN_E_USAGE;
}

void
uidset_free(struct uidset *set)
{
    if (!set)
        return;
    free(set->r);
    set->r = NULL;
    set->n = 0;
}

bool
uidset_contains(const struct uidset *set, uint32_t uid)
{
    if (!set)
        return false;
    for (size_t i = 0; i < set->n; i++) {
        if (uid >= set->r[i].lo && uid <= set->r[i].hi)
            return true;
    }
    return false;
}

static enum tern_status
format_number(struct tbuf *out, uint32_t v)
{
    if (v == UIDSET_STAR)
        return tbuf_addc(out, '*');
    return tbuf_addf(out, "%lu", (unsigned long)v);
}

/*
 * An empty set has no IMAP spelling, and a range holding 0 came from a
 * caller's bug: both are TERN_E_USAGE. On any failure OUT keeps its old
 * contents.
 */
enum tern_status
uidset_format(const struct uidset *set, struct tbuf *out)
{
    if (!set || !out || set->n == 0)
        return TERN_E_USAGE;
    for (size_t i = 0; i < set->n; i++) {
        if (set->r[i].lo == 0 || set->r[i].lo > set->r[i].hi)
            return TERN_E_USAGE;
    }
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = TERN_OK;
    for (size_t i = 0; i < set->n && !st; i++) {
        if (i)
            st = tbuf_addc(&b, ',');
        if (!st)
            st = format_number(&b, set->r[i].lo);
        if (!st && set->r[i].hi != set->r[i].lo) {
            st = tbuf_addc(&b, ':');
            if (!st)
                st = format_number(&b, set->r[i].hi);
        }
    }
    if (!st)
        st = tbuf_add(out, tbuf_ptr(&b), tbuf_len(&b));
    tbuf_free(&b);
    return st;
}

static int
cmp_uid(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* UID 0 does not exist (RFC 3501 §2.3.1.1), so a list holding it is TERN_E_USAGE. */
enum tern_status
uidset_from_list(const uint32_t *uids, size_t n, struct uidset *out)
{
    if (!out)
        return TERN_E_USAGE;
    out->r = NULL;
    out->n = 0;
    if (n == 0)
        return TERN_OK;
    if (!uids || n > SIZE_MAX / sizeof(uint32_t))
        return TERN_E_USAGE;
    for (size_t i = 0; i < n; i++) {
        if (uids[i] == 0)
            return TERN_E_USAGE;
    }
    uint32_t *sorted = malloc(n * sizeof(*sorted));
    if (!sorted)
        return TERN_E_NOMEM;
    memcpy(sorted, uids, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_uid);

    size_t nr = 1;
    for (size_t i = 1; i < n; i++) {
        if ((uint64_t)sorted[i] > (uint64_t)sorted[i - 1] + 1)
            nr++;
    }
    struct uid_range *r = malloc(nr * sizeof(*r));
    if (!r) {
        free(sorted);
        return TERN_E_NOMEM;
    }
    size_t k = 0;
    r[0].lo = r[0].hi = sorted[0];
    for (size_t i = 1; i < n; i++) {
        if ((uint64_t)sorted[i] > (uint64_t)r[k].hi + 1) {
            k++;
            r[k].lo = r[k].hi = sorted[i];
        } else if (sorted[i] > r[k].hi) {
            r[k].hi = sorted[i];
        }
    }
    free(sorted);
    out->r = r;
    out->n = k + 1;
    return TERN_OK;
}

/*
 * Resolves '*' in range R against STAR_VALUE (RFC 3501 §9: "*" is the
 * largest UID in use, and "5:*" with 3 as the largest UID means 3:5).
 * Returns false when the range involves '*' and STAR_VALUE is 0 (skip it).
 */
static bool
resolve_range(const struct uid_range *r, uint32_t star_value, uint32_t *lo, uint32_t *hi)
{
    uint32_t a = r->lo, b = r->hi;
    if (b == UIDSET_STAR) {
        if (star_value == 0)
            return false;
        b = star_value;
        if (a == UIDSET_STAR)
            a = star_value;
    }
    *lo = a < b ? a : b;
    *hi = a < b ? b : a;
    return true;
}

/*
 * The UIDs come out in the order of the ranges and are not deduplicated:
 * "3,1:2,2" gives 3 1 2 2, as the set was written. An empty result is
 * TERN_OK with *OUT NULL and *N 0.
 */
enum tern_status
uidset_expand(const struct uidset *set, uint32_t star_value, size_t max, uint32_t **out, size_t *n)
{
    if (!set || !out || !n)
        return TERN_E_USAGE;
    *out = NULL;
    *n = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < set->n; i++) {
        uint32_t lo, hi;
        if (set->r[i].lo == 0)
            return TERN_E_USAGE;
        if (!resolve_range(&set->r[i], star_value, &lo, &hi))
            continue;
        total += (uint64_t)(hi - lo) + 1;
        if (total > max)
            return TERN_E_USAGE;
    }
    if (total == 0)
        return TERN_OK;
    if (total > SIZE_MAX / sizeof(uint32_t))
        return TERN_E_USAGE;
    uint32_t *v = malloc((size_t)total * sizeof(*v));
    if (!v)
        return TERN_E_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++) {
        uint32_t lo, hi;
        if (!resolve_range(&set->r[i], star_value, &lo, &hi))
            continue;
        for (uint32_t u = lo;; u++) {
            v[k++] = u;
            if (u == hi)
                break;
        }
    }
    *out = v;
    *n = k;
    return TERN_OK;
}
