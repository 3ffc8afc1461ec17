/*
 * fuzz_imap_response.c - libFuzzer target for the IMAP response parser
 * (proto/imap_parse.c).
 *
 * Layer: tests of proto/. The input is a stream of server bytes. It is
 * parsed twice: once whole by imap_parse_buffer_sink() with the default
 * limits, and once through the line API with tiny limits and literals fed in
 * small chunks whose size comes from the first input byte, so that the
 * limits, the sink and the chunked literal paths are all reached. Every
 * response is walked to its last byte; every opened stream must be closed
 * exactly once.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Iproto
 *   tests/fuzz/fuzz_imap_response.c proto/imap_parse.c proto/tbuf.c proto/err.c
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "imap_parse.h"

struct discard {
    long open_streams;
    int handle;
};

static enum tern_status
discard_open(void *aux, uint64_t size, void **stream)
{
    struct discard *d = aux;
    d->open_streams++;
    *stream = &d->handle;
    return TERN_OK;
}

static enum tern_status
discard_write(void *aux, void *stream, const char *p, size_t n)
{
    struct discard *d = aux;
    if (stream != &d->handle || !p || n == 0)
        abort();
    return TERN_OK;
}

static void
discard_close(void *aux, void *stream, bool ok)
{
    struct discard *d = aux;
    if (stream != &d->handle || d->open_streams <= 0)
        abort();
    d->open_streams--;
}

/* Touches every byte the response points to, without recursion. */
static unsigned
walk(const struct imap_item *it)
{
    unsigned sum = 0;
    const struct imap_item *stack[16];
    size_t depth = 0;
    while (it) {
        if (it->type == IMAP_ITEM_ATOM || it->type == IMAP_ITEM_STRING) {
            for (size_t i = 0; i < it->len; i++)
                sum += (unsigned char)it->str[i];
            if (it->str[it->len] != '\0')
                abort();
        }
        if (it->type == IMAP_ITEM_LIST && it->child && depth < 16) {
            stack[depth++] = it->next;
            it = it->child;
            continue;
        }
        it = it->next;
        while (!it && depth)
            it = stack[--depth];
    }
    return sum;
}

static void
on_response(const struct imap_response *r, void *aux)
{
    unsigned *sum = aux;
    *sum += walk(r->items) + walk(r->code_args);
    if (!r->text)
        abort();
    *sum += (unsigned)strlen(r->text);
    if (r->name)
        *sum += (unsigned)strlen(r->name);
    if (r->code)
        *sum += (unsigned)strlen(r->code);
    if (r->tag)
        *sum += (unsigned)strlen(r->tag);
}

/* The engine's way: lines, then literals in chunks of CHUNK bytes. */
static void
feed_lines(const char *buf, size_t len, size_t chunk, const struct imap_literal_sink *sink,
           unsigned *sum)
{
    struct imap_limits lim;
    imap_limits_default(&lim);
    lim.line_max = 256;
    lim.inline_max = 8;
    lim.response_max = 4096;
    lim.depth_max = 8;
    lim.items_max = 64;
    lim.literal_max = 100000;
    struct imap_parser *p = imap_parser_new(&lim);
    if (!p)
        return;
    imap_parser_set_sink(p, sink);
    struct tern_err err = {0};
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t n = end - pos;
        if (n && buf[end - 1] == '\r')
            n--;
        struct imap_response *r;
        uint64_t lit;
        enum tern_status st = imap_parser_line(p, buf + pos, n, &r, &lit, &err);
        pos = nl ? end + 1 : len;
        if (st) {
            imap_parser_reset(p);
            continue;
        }
        if (r) {
            on_response(r, sum);
            imap_response_free(r);
        }
        while (lit && pos < len) {
            size_t take = len - pos;
            if (take > chunk)
                take = chunk;
            if (take > lit)
                take = (size_t)lit;
            st = imap_parser_literal(p, buf + pos, take, &lit, &err);
            pos += take;
            if (st) {
                imap_parser_reset(p);
                break;
            }
        }
    }
    tern_err_clear(&err);
    imap_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Keeps the walks from being optimised away. */
static volatile unsigned fuzz_checksum;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct discard d = {0};
    struct imap_literal_sink sink = {discard_open, discard_write, discard_close, &d};
    struct tern_err err = {0};
    unsigned sum = 0;
    const char *buf = (const char *)data;

    imap_parse_buffer_sink(NULL, &sink, buf, size, on_response, &sum, &err);
    tern_err_clear(&err);
    if (d.open_streams != 0)
        abort();

    if (size > 0) {
        size_t chunk = (size_t)(data[0] % 17) + 1;
        feed_lines(buf + 1, size - 1, chunk, &sink, &sum);
        if (d.open_streams != 0)
            abort();
    }
    fuzz_checksum = sum;
    return 0;
}
