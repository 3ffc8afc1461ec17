/*
 * tbuf.h - a growable byte buffer with a maximum size given at init.
 *
 * Layer: proto/ (used by every layer above). Includes only libc.
 * The buffer owns its storage; data is always NUL-terminated (the NUL is not
 * counted in len), so text can be used as a C string, but binary data with
 * embedded NULs is kept whole: len is authoritative.
 */
#ifndef TERN_TBUF_H
#define TERN_TBUF_H

#include <stdarg.h>
#include <stddef.h>

#include "tern.h"

struct tbuf {
    char *data;  /* owned; NULL until the first add */
    size_t len;  /* bytes in use */
    size_t cap;  /* bytes allocated */
    size_t max;  /* growing past this is TERN_E_PROTO; 0 means no limit */
    size_t head; /* bytes consumed from the front but not yet moved out */
};

void tbuf_init(struct tbuf *b, size_t max);

/* Appends N bytes. TERN_E_PROTO when the result would exceed max, TERN_E_NOMEM. */
enum tern_status tbuf_add(struct tbuf *b, const void *p, size_t n);
enum tern_status tbuf_adds(struct tbuf *b, const char *s);
enum tern_status tbuf_addc(struct tbuf *b, char c);
enum tern_status tbuf_addf(struct tbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
enum tern_status tbuf_vaddf(struct tbuf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* The unconsumed bytes start at tbuf_ptr(b) and are tbuf_len(b) long. */
char *tbuf_ptr(const struct tbuf *b);
size_t tbuf_len(const struct tbuf *b);

/* Drops N bytes from the front (N <= tbuf_len). The bytes stay readable
 * until the next add. */
void tbuf_consume(struct tbuf *b, size_t n);

/* Empties the buffer, keeping its storage. */
void tbuf_reset(struct tbuf *b);

/* Releases the storage; the buffer may be used again after tbuf_init(). */
void tbuf_free(struct tbuf *b);

/*
 * Transfers the contents out as an owned NUL-terminated string (an empty
 * string when the buffer is empty) and resets the buffer. NULL on NOMEM.
 */
char *tbuf_take(struct tbuf *b);

#endif
