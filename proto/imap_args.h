/*
 * imap_args.h - building the arguments of an IMAP command.
 *
 * Layer: proto/. A command is a sequence of raw pieces (atoms, parentheses,
 * spaces, sequence sets: sent exactly as given) and strings (sent as a
 * quoted string when that is possible, otherwise as a literal, with LITERAL+
 * when the server offers it). The engine serializes them; callers never
 * quote by hand.
 */
#ifndef TERN_IMAP_ARGS_H
#define TERN_IMAP_ARGS_H

#include <stdbool.h>
#include <stddef.h>

#include "tern.h"

#include "tbuf.h"

enum imap_arg_type {
    IMAP_ARG_RAW,    /* sent verbatim */
    IMAP_ARG_STRING, /* quoted or literal, chosen at send time */
};

struct imap_arg {
    enum imap_arg_type type;
    char *data; /* owned */
    size_t len;
};

struct imap_args {
    struct imap_arg *v; /* owned */
    size_t n, cap;
};

void imap_args_init(struct imap_args *a);
void imap_args_free(struct imap_args *a);

/* Appends raw text (formatted). It must not contain CR, LF or NUL. */
enum tern_status imap_args_raw(struct imap_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Appends a string argument of LEN bytes (it may not contain NUL). */
enum tern_status imap_args_string(struct imap_args *a, const char *s, size_t len);

/* Appends all of SRC to A (SRC is left as it was). */
enum tern_status imap_args_append(struct imap_args *a, const struct imap_args *src);

/* True when S can go as a quoted string: printable 7-bit, no CR/LF, short. */
bool imap_string_quotable(const char *s, size_t len);

/*
 * Renders the whole list as one line with every string quoted, or as a
 * literal shown as {N}; for logs and tests ("FROM \"bob\" LARGER 10").
 */
enum tern_status imap_args_render(const struct imap_args *a, struct tbuf *out);

#endif
