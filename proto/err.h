/*
 * err.h - the error slot: one human sentence beside a status code.
 *
 * Layer: proto/. The failing layer writes the sentence (including the
 * server's own text for NO/BAD/5xx); the front end prints it. Passwords and
 * tokens never go in it. Includes only libc and tern.h.
 */
#ifndef TERN_ERR_H
#define TERN_ERR_H

#include <stdarg.h>

#include "tern.h"

struct tern_err {
    char *msg; /* owned; NULL when no error was set */
};

/*
 * Sets the sentence (replacing any earlier one) and returns ST, so a caller
 * can write `return tern_err_set(err, TERN_E_PROTO, "...")`. ERR may be NULL.
 * Control characters in the formatted text are replaced by '?', so server
 * text copied into it cannot reach a terminal raw.
 */
enum tern_status tern_err_set(struct tern_err *err, enum tern_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes the existing sentence with "PREFIX: " (or sets it when empty). */
void tern_err_prefix(struct tern_err *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The sentence, borrowed; "" when none was set. */
const char *tern_err_msg(const struct tern_err *err);

void tern_err_clear(struct tern_err *err);

#endif
