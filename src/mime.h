/*
 * mime.h - reading messages for display with GMime: decoded headers, the
 * text to show, the list of parts, and saving a part.
 *
 * Layer: src/. Uses GMime 3 (RFC 2045-2049, 2047, 2231) and libxml2's HTML
 * parser for HTML-only mail; nothing here parses MIME by hand.
 */
#ifndef TERN_MIME_H
#define TERN_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tern.h"

struct mime_header {
    char *name;  /* lower-case field name, e.g. "subject" */
    char *value; /* decoded to UTF-8 (RFC 2047), sanitized single line */
};

struct mime_part {
    char *id;       /* IMAP-style part number: "1", "1.2", "2" */
    char *type;     /* lower-case "text/plain", "image/png", ... */
    char *filename; /* decoded (RFC 2231/2047), sanitized; NULL when none */
    uint64_t size;  /* decoded size in bytes */
};

struct mime_view {
    /* Every header field once, in first-seen order; repeated fields have
     * their values joined with "\n". */
    struct mime_header *headers;
    size_t nheaders;
    /*
     * The text to show, UTF-8, sanitized (see text.h; newlines and tabs
     * kept): the first text/plain part in reading order; failing that, the
     * first text/html part rendered to plain text. "" when there is none.
     */
    char *text;
    /* Every leaf part (multiparts themselves are not listed; an attached
     * message/rfc822 is listed as one part). */
    struct mime_part *parts;
    size_t nparts;
};

/* Call once before any other mime_ function (g_mime_init). Idempotent. */
void mime_init(void);

/*
 * Parses a whole message held in memory (LEN bytes) or in the file open as
 * FD (read from its start; the fd stays the caller's). Broken MIME is parsed
 * best-effort: a message GMime can read at all gives a view. *OUT is owned
 * (mime_view_free). Errors: TERN_E_PROTO (not a message at all), NOMEM, IO.
 */
enum tern_status mime_view_mem(const char *msg, size_t len, struct mime_view **out,
                               struct tern_err *err);
enum tern_status mime_view_fd(int fd, struct mime_view **out, struct tern_err *err);
void mime_view_free(struct mime_view *v);

/*
 * Writes part PART_ID of the message in memory (or in FD) decoded
 * (base64/quoted-printable undone, bytes otherwise as they are) to the open
 * file descriptor OUT_FD, and the byte count to *SIZE. TERN_E_NOTFOUND when
 * there is no such part (the sentence names it).
 */
enum tern_status mime_save_part_mem(const char *msg, size_t len, const char *part_id, int out_fd,
                                    uint64_t *size, struct tern_err *err);
enum tern_status mime_save_part_fd(int fd, const char *part_id, int out_fd, uint64_t *size,
                                   struct tern_err *err);

/*
 * Decodes a raw header value (RFC 2047 encoded-words, any charset, broken
 * ones best-effort) to sanitized single-line UTF-8. Owned result, NULL on
 * NOMEM. Used for ENVELOPE fields of IMAP summaries too.
 */
char *mime_decode_header(const char *raw, size_t len);

/*
 * A file name that is safe to create in a directory the user chose, made
 * from an attachment's NAME (struct mime_part.filename, or NULL): the last
 * path component only ('/' and '\\' both separate), no leading dots or
 * blanks, no trailing dots or blanks, no control characters (those and NUL
 * placeholders become '_'), ':' made '_', Windows device names ("CON",
 * "nul.txt") prefixed with '_', at most 200 bytes (a short extension kept),
 * and "attachment" when nothing is left (TESTMATRIX M9). Owned; NULL only
 * on NOMEM.
 */
char *mime_safe_filename(const char *name);

#endif
