/*
 * fuzz_mutf7.c - libFuzzer target for proto/mutf7.c (RFC 3501 §5.1.3).
 *
 * Layer: tests. Checks, besides sanitizer reports, that the decoder accepts
 * only canonical input (decoding then encoding gives back the very same
 * bytes) and that whatever the encoder accepts decodes back to itself.
 *
 * Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto \
 *     tests/fuzz/fuzz_mutf7.c proto/mutf7.c proto/tbuf.c -o /tmp/fuzz_mutf7
 *   /tmp/fuzz_mutf7 -max_total_time=60 tests/fuzz/corpus/mutf7
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mutf7.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    char *utf8 = NULL, *wire = NULL;

    enum tern_status st = mutf7_decode(in, size, &utf8);
    if (st == TERN_OK) {
        if (mutf7_encode(utf8, strlen(utf8), &wire) != TERN_OK)
            abort();
        if (strlen(wire) != size || memcmp(wire, in, size) != 0)
            abort();
        free(wire);
        free(utf8);
        wire = utf8 = NULL;
    } else if (st != TERN_E_PROTO || utf8) {
        abort();
    }

    st = mutf7_encode(in, size, &wire);
    if (st == TERN_OK) {
        for (const char *p = wire; *p; p++) {
            if (*p < 0x20 || *p > 0x7e)
                abort();
        }
        if (mutf7_decode(wire, strlen(wire), &utf8) != TERN_OK)
            abort();
        if (strlen(utf8) != size || memcmp(utf8, in, size) != 0)
            abort();
        free(utf8);
        free(wire);
    } else if (st != TERN_E_USAGE || wire) {
        abort();
    }
    return 0;
}
