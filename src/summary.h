/*
 * summary.h - message summaries for `list` and `search`: from the items of
 * an IMAP FETCH response (UID FLAGS INTERNALDATE RFC822.SIZE, header fields) to
 * the JSON object of DESIGN.md.
 *
 * Layer: src/.
 */
#ifndef TERN_SUMMARY_H
#define TERN_SUMMARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "imap_parse.h"
#include "tbuf.h"

/*
 * The FETCH data items this module reads. The header fields are parsed
 * here rather than asked for as ENVELOPE: with References (which ENVELOPE
 * lacks) the server needs about half the CPU time for them.
 */
#define SUMMARY_HEADER_FIELDS "DATE FROM TO SUBJECT MESSAGE-ID IN-REPLY-TO REFERENCES"
#define SUMMARY_HEADERS_ITEM "BODY[HEADER.FIELDS (" SUMMARY_HEADER_FIELDS ")]"
#define SUMMARY_FETCH_ITEMS                                                                        \
    "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (" SUMMARY_HEADER_FIELDS ")])"

/* Whether FETCH items LIST carry the header fields of a summary. */
bool summary_has_headers(const struct imap_item *list);

/* The value of data item NAME ("UID", "FLAGS", "BODY[]") in a FETCH list. */
const struct imap_item *fetch_item(const struct imap_item *list, const char *name);

/*
 * Writes the summary object for FETCH items LIST (the parenthesised list
 * after "n FETCH") into OUT (emptied first). FOLDER, when not NULL, adds the
 * "folder" field (search results). *UID receives the UID. TERN_E_PROTO when
 * the response lacks UID.
 *
 * "thread" is the Message-ID of the thread's root, without brackets: the
 * first entry of References (RFC 5322 §3.6.4 makes it the root), else
 * In-Reply-To, else the message's own Message-ID; "uid:N" when it has none.
 * It needs no other message, so it is the same whatever part of the folder
 * is listed.
 */
enum tern_status summary_json(const struct imap_item *list, const char *folder, struct tbuf *out,
                              uint32_t *uid);

/* What a summary is written from, wherever the message lives. */
struct summary_src {
    uint32_t uid;
    const char *folder; /* adds "folder" when not NULL */
    const char *hdrs;   /* the header block (at least the fields above) */
    size_t hlen;
    const char *fallback_date;          /* ISO 8601, when Date is missing or bad; may be NULL */
    const struct imap_item *imap_flags; /* a FLAGS list, or NULL */
    const char *maildir_flags;          /* or Maildir info letters ("FS"), or NULL */
    bool has_size;
    uint64_t size;
};

/* Writes the summary object of SRC into OUT (emptied first). */
enum tern_status summary_write(const struct summary_src *src, struct tbuf *out);

/* Appends the flags of a FLAGS list as JSON array of names ("seen", ...). */
struct json;
void summary_flags_json(struct json *j, const struct imap_item *flags);

/* "+seen" -> "\\Seen"; keywords unchanged. NULL when NAME is not a valid
 * flag (empty, or with atom-specials). Borrowed static or NAME itself. */
const char *summary_flag_wire(const char *name);

/* Converts an IMAP date-time ("17-Jul-1996 02:44:25 -0700") or an RFC 5322
 * date to ISO 8601 with offset. Owned; NULL when unparseable. */
char *summary_iso_date(const char *s, size_t len, int imap_format);

#endif
