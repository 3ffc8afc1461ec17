/*
 * mime.h - reading messages for display with GMime: decoded headers, the
 * text to show, the list of parts, and saving a part.
 *
 * Layer: src/. Uses GMime 3 (RFC 2045-2049, 2047, 2231) and libxml2's HTML
 * parser for HTML-only mail; nothing here parses MIME by hand. Every string
 * in a view is valid UTF-8 without terminal controls (text_sanitize).
 */
#ifndef TERN_MIME_H
#define TERN_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"

struct mime_header {
    char *name; /* lower-case field name, e.g. "subject" */
    /*
     * Decoded to UTF-8 (RFC 2047), sanitized, one line. Address fields
     * (from, to, cc, ...) are shown as GMime formats the parsed list, or as
     * decoded text when they are too long to parse safely (over 16 KiB, or
     * past 32 KiB of address text in the message).
     */
    char *value;
};

struct mime_part {
    char *id;       /* IMAP part number (RFC 3501 §6.4.5): "1", "1.2", "2" */
    char *type;     /* lower-case "text/plain", "image/png", ... */
    char *filename; /* decoded (RFC 2231/2047), sanitized; NULL when none */
    uint64_t size;  /* decoded size in bytes: what mime_save_part_* writes */
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
    /*
     * Every leaf part in reading order. Multiparts themselves are not
     * listed; an attached message (message/rfc822, or a part of a
     * multipart/digest without Content-Type) is one part. Parts inside more
     * than 64 nested multiparts are not listed (TESTMATRIX M2).
     */
    struct mime_part *parts;
    size_t nparts;
};

/*
 * Call once before any other mime_ function (g_mime_init, xmlInitParser).
 * Idempotent and thread-safe; the other functions call it too.
 */
void mime_init(void);

/*
 * Parses a whole message held in memory (LEN bytes) or in the file open as
 * FD (a regular file is read from offset 0 with pread, so its offset does
 * not move; a pipe is read to its end; the fd stays the caller's). The
 * message is held in memory once while parsing. Broken MIME is parsed
 * best-effort: a message GMime can read at all gives a view. An mbox
 * "From " line before the header is skipped. *OUT is owned
 * (mime_view_free). Errors: TERN_E_PROTO (not a message at all, or 4 GiB
 * or more), TERN_E_NOMEM, TERN_E_IO (FD unreadable), TERN_E_USAGE (MSG or
 * OUT NULL).
 */
enum tern_status mime_view_mem(const char *msg, size_t len, struct mime_view **out,
                               struct tern_err *err);
enum tern_status mime_view_fd(int fd, struct mime_view **out, struct tern_err *err);
void mime_view_free(struct mime_view *v);

/*
 * Writes part PART_ID of the message in memory (or in FD) decoded
 * (base64/quoted-printable/uuencode undone, bytes otherwise as they are) to
 * the open file descriptor OUT_FD at its current offset, and the byte count
 * to *SIZE (SIZE may be NULL). An attached message is written as the exact
 * bytes it has in the message. PART_ID is a part number of
 * mime_view.parts; part "0" (the raw message) is the caller's business.
 * TERN_E_NOTFOUND when there is no such leaf part, including a multipart's
 * number (the sentence names it: "no part 3.2 in this message");
 * TERN_E_IO when writing fails (OUT_FD may then hold part of the content);
 * and the errors of mime_view_*.
 */
enum tern_status mime_save_part_mem(const char *msg, size_t len, const char *part_id, int out_fd,
                                    uint64_t *size, struct tern_err *err);
enum tern_status mime_save_part_fd(int fd, const char *part_id, int out_fd, uint64_t *size,
                                   struct tern_err *err);

/*
 * Decodes a raw header value (RFC 2047 encoded-words, any charset, broken
 * ones best-effort) to sanitized single-line UTF-8: unfolded, trimmed.
 * Raw 8-bit text is read as UTF-8 when valid, else as windows-1252; a NUL
 * byte shows as U+2400. LEN bytes of RAW are used (RAW NULL: ""). Owned
 * result, NULL on NOMEM. Used for ENVELOPE fields of IMAP summaries too.
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
