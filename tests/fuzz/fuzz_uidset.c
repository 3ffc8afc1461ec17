/*
 * fuzz_uidset.c - libFuzzer target for proto/uidset.c (RFC 3501 §9
 * sequence-set).
 *
 * Layer: tests. Checks, besides sanitizer reports, that a parsed set
 * formats to text that parses to the same ranges, that uidset_contains
 * agrees with the ranges, that expansion stays within its limit, and that
 * uidset_from_list of the expansion covers exactly the same UIDs.
 *
 * Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto \
 *     tests/fuzz/fuzz_uidset.c proto/uidset.c proto/tbuf.c -o /tmp/fuzz_uidset
 *   /tmp/fuzz_uidset -max_total_time=60 tests/fuzz/corpus/uidset
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tbuf.h"
#include "uidset.h"

#define FUZZ_MAX_RANGES 1000
#define FUZZ_MAX_UIDS 5000

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct uidset set, again, merged;
    struct tbuf b;
    enum tern_status st = uidset_parse((const char *)data, size, FUZZ_MAX_RANGES, &set);
    if (st != TERN_OK) {
        if (st != TERN_E_USAGE || set.r || set.n)
            abort();
        return 0;
    }
    if (set.n == 0 || set.n > FUZZ_MAX_RANGES)
        abort();
    for (size_t i = 0; i < set.n; i++) {
        if (set.r[i].lo == 0 || set.r[i].lo > set.r[i].hi)
            abort();
        if (!uidset_contains(&set, set.r[i].lo) || !uidset_contains(&set, set.r[i].hi))
            abort();
    }

    tbuf_init(&b, 0);
    if (uidset_format(&set, &b) != TERN_OK)
        abort();
    if (uidset_parse(tbuf_ptr(&b), tbuf_len(&b), FUZZ_MAX_RANGES, &again) != TERN_OK)
        abort();
    if (again.n != set.n || memcmp(again.r, set.r, set.n * sizeof(*set.r)) != 0)
        abort();
    uidset_free(&again);
    tbuf_free(&b);

    uint32_t star = size > 0 ? data[0] : 0;
    uint32_t *v = NULL;
    size_t n = 0;
    st = uidset_expand(&set, star, FUZZ_MAX_UIDS, &v, &n);
    if (st == TERN_OK) {
        if (n > FUZZ_MAX_UIDS)
            abort();
        if (uidset_from_list(v, n, &merged) != TERN_OK)
            abort();
        for (size_t i = 0; i < n; i++) {
            if (!uidset_contains(&merged, v[i]))
                abort();
        }
        /* Merged ranges are sorted, disjoint and not adjacent. */
        for (size_t i = 1; i < merged.n; i++) {
            if ((uint64_t)merged.r[i].lo <= (uint64_t)merged.r[i - 1].hi + 1)
                abort();
        }
        uidset_free(&merged);
        free(v);
    } else if (st != TERN_E_USAGE || v || n) {
        abort();
    }
    uidset_free(&set);
    return 0;
}
