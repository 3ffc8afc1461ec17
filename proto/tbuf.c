/*
 * tbuf.c - growable buffer with a maximum (see tbuf.h).
 *
 * Layer: proto/. Includes only libc and tbuf.h.
 */
#include "tbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
tbuf_init(struct tbuf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
    b->head = 0;
}

/* Makes room for N more bytes plus the terminating NUL. */
static enum tern_status
tbuf_reserve(struct tbuf *b, size_t n)
{
    size_t live = b->len - b->head;
    if (b->head && !live) {
        b->head = 0;
        b->len = 0;
    }
    if (b->max && (n > b->max || live > b->max - n))
        return TERN_E_PROTO;
    if (b->head && b->len + n + 1 > b->cap) {
        /* Reclaim the consumed front before growing. */
        memmove(b->data, b->data + b->head, live);
        b->len = live;
        b->head = 0;
        b->data[b->len] = '\0';
    }
    if (b->len + n + 1 <= b->cap)
        return TERN_OK;
    size_t want = b->cap ? b->cap : 64;
    while (want < b->len + n + 1) {
        if (want > SIZE_MAX / 2)
            return TERN_E_NOMEM;
        want *= 2;
    }
    char *p = realloc(b->data, want);
    if (!p)
        return TERN_E_NOMEM;
    b->data = p;
    b->cap = want;
    return TERN_OK;
}

enum tern_status
tbuf_add(struct tbuf *b, const void *p, size_t n)
{
    enum tern_status st = tbuf_reserve(b, n);
    if (st)
        return st;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return TERN_OK;
}

enum tern_status
tbuf_adds(struct tbuf *b, const char *s)
{
    return tbuf_add(b, s, strlen(s));
}

enum tern_status
tbuf_addc(struct tbuf *b, char c)
{
    return tbuf_add(b, &c, 1);
}

enum tern_status
tbuf_vaddf(struct tbuf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return TERN_E_IO;
    enum tern_status st = tbuf_reserve(b, (size_t)n);
    if (st)
        return st;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return TERN_OK;
}

enum tern_status
tbuf_addf(struct tbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum tern_status st = tbuf_vaddf(b, fmt, ap);
    va_end(ap);
    return st;
}

char *
tbuf_ptr(const struct tbuf *b)
{
    return b->data ? b->data + b->head : (char *)"";
}

size_t
tbuf_len(const struct tbuf *b)
{
    return b->len - b->head;
}

void
tbuf_consume(struct tbuf *b, size_t n)
{
    /*
     * The consumed bytes stay where they are until the next add, so a
     * pointer into them stays valid (the line engine hands out a line and
     * consumes it before calling back).
     */
    b->head += n;
    if (b->head > b->len)
        b->head = b->len;
}

void
tbuf_reset(struct tbuf *b)
{
    b->len = 0;
    b->head = 0;
    if (b->data)
        b->data[0] = '\0';
}

void
tbuf_free(struct tbuf *b)
{
    free(b->data);
    tbuf_init(b, b->max);
}

char *
tbuf_take(struct tbuf *b)
{
    char *out;
    if (!b->data)
        return strdup("");
    if (b->head) {
        memmove(b->data, b->data + b->head, b->len - b->head + 1);
        b->len -= b->head;
        b->head = 0;
    }
    out = b->data;
    tbuf_init(b, b->max);
    return out;
}
