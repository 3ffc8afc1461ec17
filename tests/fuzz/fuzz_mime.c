/*
 * fuzz_mime.c - libFuzzer target for the MIME entry points of src/mime.c:
 * mime_view_mem on the input, then every listed part saved to /dev/null,
 * mime_decode_header on the input and mime_safe_filename on every file name.
 *
 * Layer: tests. Besides crashes and sanitizer reports it aborts when an
 * invariant of mime.h does not hold: every string of a view is valid UTF-8
 * without terminal controls, every listed part can be saved, and saving
 * writes exactly the listed size.
 *
 * Build and run (seed corpus in tests/fuzz/corpus/mime/):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto -Isrc \
 *       tests/fuzz/fuzz_mime.c src/mime.c src/text.c proto/tbuf.c proto/err.c \
 *       $(pkg-config --cflags --libs gmime-3.0 libxml-2.0) -o /tmp/fuzz_mime
 *   /tmp/fuzz_mime -max_total_time=60 tests/fuzz/corpus/mime/
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"

#include "mime.h"
#include "text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless S is valid UTF-8 without controls (LF and TAB allowed when MULTILINE). */
static void
check_clean(const char *s, bool multiline)
{
    if (!s)
        abort();
    size_t len = strlen(s);
    if (!text_valid_utf8(s, len))
        abort();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && !(multiline && (c == '\n' || c == '\t'))) || c == 0x7F)
            abort();
        if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9F)
            abort();
        if (c == 0xE2 && i + 2 < len) {
            unsigned char c1 = (unsigned char)s[i + 1], c2 = (unsigned char)s[i + 2];
            if ((c1 == 0x80 && c2 >= 0xAA && c2 <= 0xAE) ||
                (c1 == 0x81 && c2 >= 0xA6 && c2 <= 0xA9))
                abort();
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int devnull = -1;
    const char *msg = (const char *)data;
    struct tern_err err = {0};
    struct mime_view *v = NULL;

    if (devnull < 0) {
        mime_init();
        devnull = open("/dev/null", O_WRONLY);
        if (devnull < 0)
            abort();
    }

    if (mime_view_mem(msg, size, &v, &err) == TERN_OK) {
        for (size_t i = 0; i < v->nheaders; i++) {
            check_clean(v->headers[i].name, false);
            check_clean(v->headers[i].value, true);
        }
        check_clean(v->text, true);
        for (size_t i = 0; i < v->nparts; i++) {
            uint64_t saved = 0;
            check_clean(v->parts[i].id, false);
            check_clean(v->parts[i].type, false);
            if (v->parts[i].filename)
                check_clean(v->parts[i].filename, false);
            if (mime_save_part_mem(msg, size, v->parts[i].id, devnull, &saved, &err) != TERN_OK)
                abort();
            if (saved != v->parts[i].size)
                abort();
            char *safe = mime_safe_filename(v->parts[i].filename);
            if (!safe || !*safe || safe[0] == '.' || strchr(safe, '/'))
                abort();
            check_clean(safe, false);
            free(safe);
        }
    }
    mime_view_free(v);

    char *decoded = mime_decode_header(msg, size < 65536 ? size : 65536);
    check_clean(decoded, false);
    free(decoded);
    tern_err_clear(&err);
    return 0;
}
