/*
 * fuzz_query.c - libFuzzer target for src/query.c: parse, translate to IMAP
 * SEARCH keys and to notmuch.
 *
 * Layer: tests. Besides crashes, leaks and sanitizer reports, it checks
 * invariants and aborts when one breaks:
 *   - every failure comes with a sentence;
 *   - the IMAP keys have balanced parentheses and raw pieces without
 *     CR, LF or quotes (user text only ever travels as strings);
 *   - the notmuch rendering is a fixed point: parsing it again and
 *     rendering gives the same text (when its extra parentheses still fit
 *     the nesting limit).
 *
 * Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto -Isrc \
 *     tests/fuzz/fuzz_query.c src/query.c proto/imap_args.c proto/tbuf.c \
 *     proto/err.c -o /tmp/fuzz_query
 *   /tmp/fuzz_query -max_total_time=60 tests/fuzz/corpus/query
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "imap_args.h"
#include "tbuf.h"

#include "query.h"

static void
check_imap(const struct query *q)
{
    struct imap_args args;
    struct tern_err err = {NULL};
    imap_args_init(&args);
    enum tern_status st = query_to_imap(q, &args, &err);
    if (st != TERN_OK) {
        if (st != TERN_E_UNSUPPORTED && st != TERN_E_USAGE && st != TERN_E_NOMEM)
            abort();
        if (!tern_err_msg(&err)[0] || args.n != 0)
            abort();
        /* USAGE at this stage is only ever a bad keyword. */
        if (st == TERN_E_USAGE && !strstr(tern_err_msg(&err), "bad keyword"))
            abort();
    } else {
        long depth = 0;
        if (args.n == 0)
            abort();
        for (size_t i = 0; i < args.n; i++) {
            const struct imap_arg *a = &args.v[i];
            if (a->type != IMAP_ARG_RAW)
                continue;
            if (memchr(a->data, '\r', a->len) || memchr(a->data, '\n', a->len) ||
                memchr(a->data, '"', a->len))
                abort();
            for (size_t k = 0; k < a->len; k++) {
                depth += a->data[k] == '(';
                depth -= a->data[k] == ')';
                if (depth < 0)
                    abort();
            }
        }
        if (depth != 0)
            abort();
        struct tbuf b;
        tbuf_init(&b, 0);
        if (imap_args_render(&args, &b) != TERN_OK)
            abort();
        tbuf_free(&b);
    }
    imap_args_free(&args);
    tern_err_clear(&err);
}

static void
check_notmuch(const struct query *q)
{
    struct tern_err err = {NULL};
    char *nm = NULL;
    enum tern_status st = query_to_notmuch(q, &nm, &err);
    if (st != TERN_OK) {
        if ((st != TERN_E_UNSUPPORTED && st != TERN_E_NOMEM) || nm || !tern_err_msg(&err)[0])
            abort();
        tern_err_clear(&err);
        return;
    }
    struct query *again = NULL;
    st = query_parse(nm, strlen(nm), &again, &err);
    if (st == TERN_OK) {
        char *nm2 = NULL;
        if (query_to_notmuch(again, &nm2, &err) != TERN_OK || strcmp(nm, nm2) != 0)
            abort();
        free(nm2);
        query_free(again);
    } else if (st != TERN_E_USAGE || !strstr(tern_err_msg(&err), "deeper than")) {
        abort();
    }
    free(nm);
    tern_err_clear(&err);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tern_err err = {NULL};
    struct query *q = NULL;
    enum tern_status st = query_parse((const char *)data, size, &q, &err);
    if (st != TERN_OK) {
        if (q || !tern_err_msg(&err)[0])
            abort();
        tern_err_clear(&err);
        return 0;
    }
    check_imap(q);
    check_notmuch(q);
    query_free(q);
    tern_err_clear(&err);
    return 0;
}
