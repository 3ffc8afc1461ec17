/*
 * imap_parse.h - resumable parser of IMAP server responses (RFC 3501 §9,
 * RFC 9051 §9).
 *
 * Layer: proto/. Knows nothing of sockets, files, curses or the store.
 *
 * The engine feeds the parser one line at a time (without its CRLF). When a
 * line ends with a literal announcement ({N}, {N+} or ~{N}), the parser
 * answers with the literal's size; the engine then feeds exactly that many
 * bytes in chunks of any size with imap_parser_literal(), then the next line,
 * which continues the same response. When a response is complete the parser
 * hands it out as one allocation (an arena) with pointers into it.
 *
 * Every limit is named in struct imap_limits; exceeding one is TERN_E_PROTO
 * with a sentence, never a truncation, and the parser never allocates the
 * size a server announces before the bytes arrive (literals that go to the
 * sink are never held in memory at all). After an error the parser must be
 * reset (imap_parser_reset) before it is fed again; the connection is
 * normally dropped.
 */
#ifndef TERN_IMAP_PARSE_H
#define TERN_IMAP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"

enum imap_item_type {
    IMAP_ITEM_ATOM,   /* includes flags (\Seen), numbers and bracketed
                       * atoms such as BODY[HEADER.FIELDS (FROM)]<0> */
    IMAP_ITEM_STRING, /* quoted string or literal held in memory */
    IMAP_ITEM_NIL,
    IMAP_ITEM_LIST,     /* parenthesised list */
    IMAP_ITEM_STREAMED, /* literal that went to the literal sink */
};

struct imap_item {
    enum imap_item_type type;
    /*
     * ATOM and STRING: the bytes, NUL-terminated for convenience; LEN is
     * authoritative (a literal may contain NUL bytes, a quoted string never).
     * Quoted strings are unescaped. NULL for NIL and LIST.
     */
    const char *str;
    size_t len;
    /* ATOM made only of digits (at most 20 of them, fitting in 64 bits): */
    bool is_number;
    uint64_t num;
    /* STREAMED: the literal's size and the handle the sink's open returned. */
    uint64_t size;
    void *stream;
    /* LIST: the first child and the number of children. */
    struct imap_item *child;
    size_t count;
    /* The next sibling, NULL at the end of a list or a response. */
    struct imap_item *next;
};

enum imap_resp_kind {
    IMAP_RESP_UNTAGGED,     /* "* ..." */
    IMAP_RESP_TAGGED,       /* "A0001 OK ..." */
    IMAP_RESP_CONTINUATION, /* "+ ..." */
};

enum imap_cond {
    IMAP_COND_NONE, /* not a status response (e.g. "* 3 EXISTS") */
    IMAP_COND_OK,
    IMAP_COND_NO,
    IMAP_COND_BAD,
    IMAP_COND_PREAUTH,
    IMAP_COND_BYE,
};

struct imap_response {
    enum imap_resp_kind kind;
    const char *tag; /* TAGGED: the tag as sent by the server */

    /*
     * Status responses, tagged or untagged (OK/NO/BAD/PREAUTH/BYE):
     * CODE is the response code's name upper-cased ("UIDVALIDITY",
     * "CAPABILITY", "COPYUID", "ALERT"...) or NULL; CODE_ARGS the items after
     * it up to the closing ']' (NULL when none); TEXT the human text after the
     * code, never NULL ("" when absent). A code the parser cannot parse as
     * items (e.g. "[UIDNEXT abc" without ']') makes CODE NULL and the whole
     * rest the TEXT: unknown or garbled codes are not errors.
     */
    enum imap_cond cond;
    const char *code;
    struct imap_item *code_args;
    const char *text;

    /*
     * Untagged data responses: "* 12 FETCH (...)" gives HAS_NUMBER, NUMBER=12,
     * NAME="FETCH", ITEMS = the list. "* CAPABILITY IMAP4rev1 ..." gives
     * NAME="CAPABILITY" and ITEMS = the atoms. NAME is upper-cased.
     * "* LIST (\HasNoChildren) "/" INBOX" gives NAME="LIST", ITEMS = list,
     * string, atom/string. For status responses NAME is "OK", "NO"... and
     * ITEMS is NULL.
     */
    bool has_number;
    uint32_t number;
    const char *name;
    struct imap_item *items; /* first item; siblings follow via next */

    /* CONTINUATION: the text after "+ " ("" when absent). */
    /* (uses TEXT above) */
};

struct imap_limits {
    size_t line_max;      /* longest line (between literals), bytes */
    uint64_t literal_max; /* largest literal accepted at all */
    size_t inline_max;    /* largest literal kept in memory; larger ones
                             go to the sink, or are an error without one */
    size_t response_max;  /* bytes held in memory for one response */
    unsigned depth_max;   /* deepest nesting of parenthesised lists */
    size_t items_max;     /* items in one response */
};

/* Defaults: line 1 MiB, literal 1 GiB, inline 1 MiB, response 64 MiB,
 * depth 64, items 4 Mi. */
void imap_limits_default(struct imap_limits *lim);

/*
 * The literal sink: where literals larger than inline_max go. OPEN is called
 * with the literal's size before the first byte and returns a handle in
 * *stream; WRITE gets every chunk; CLOSE is called once, with OK true when
 * the response holding the literal is complete (just before it is handed
 * out), with OK false when the response failed or the parser was reset or
 * freed mid-response. The handle stays owned by the sink (the response only
 * borrows it). A sink with any of the three functions NULL counts as none.
 */
struct imap_literal_sink {
    enum tern_status (*open)(void *aux, uint64_t size, void **stream);
    enum tern_status (*write)(void *aux, void *stream, const char *p, size_t n);
    void (*close)(void *aux, void *stream, bool ok);
    void *aux;
};

struct imap_parser;

/*
 * Returns an owned parser, or NULL when out of memory. LIM is copied (NULL:
 * the defaults).
 */
struct imap_parser *imap_parser_new(const struct imap_limits *lim);
void imap_parser_free(struct imap_parser *p);

/* Installs (or with NULL removes) the literal sink. It is copied. */
void imap_parser_set_sink(struct imap_parser *p, const struct imap_literal_sink *sink);

/* Drops any partial response (closing an open sink stream with ok=false). */
void imap_parser_reset(struct imap_parser *p);

/*
 * Feeds one line without its CRLF (LEN bytes; the line may contain any
 * byte: a NUL byte outside a literal is TERN_E_PROTO).
 * Returns TERN_OK and then exactly one of:
 *   *OUT set: a complete response, owned by the caller (imap_response_free);
 *   *LITERAL set to N > 0 (OUT NULL): feed N bytes with imap_parser_literal
 *     next. A zero-length literal {0} is handled inside the parser: then
 *     both *OUT is NULL and *LITERAL is 0, and the response continues on the
 *     next line.
 * Or TERN_E_PROTO / TERN_E_NOMEM with a sentence in ERR.
 */
enum tern_status imap_parser_line(struct imap_parser *p, const char *line, size_t len,
                                  struct imap_response **out, uint64_t *literal,
                                  struct tern_err *err);

/*
 * Feeds a chunk of the literal announced last (at most the bytes still
 * missing). *LEFT is set to the bytes still missing; when it reaches 0 the
 * caller feeds the next line.
 */
enum tern_status imap_parser_literal(struct imap_parser *p, const char *data, size_t len,
                                     uint64_t *left, struct tern_err *err);

void imap_response_free(struct imap_response *r);

/*
 * Helpers for consumers. imap_item_is(item, "FETCH") compares an ATOM
 * case-insensitively. imap_item_str() gives the text of an ATOM or STRING
 * and NULL for anything else (NIL included). imap_item_nth() walks siblings.
 */
bool imap_item_is(const struct imap_item *it, const char *atom);
const char *imap_item_str(const struct imap_item *it);
const struct imap_item *imap_item_nth(const struct imap_item *first, size_t n);

/*
 * Parses a whole byte buffer (lines with CRLF or LF, literals inline) and
 * calls CB for each complete response; stops at the first error. Used by
 * tests and the fuzzer; the engine feeds lines itself.
 */
enum tern_status imap_parse_buffer(const struct imap_limits *lim, const char *buf, size_t len,
                                   void (*cb)(const struct imap_response *r, void *aux), void *aux,
                                   struct tern_err *err);

/*
 * The same with a literal sink (copied; NULL for none), so that literals
 * above inline_max are streamed instead of being an error.
 */
enum tern_status imap_parse_buffer_sink(const struct imap_limits *lim,
                                        const struct imap_literal_sink *sink, const char *buf,
                                        size_t len,
                                        void (*cb)(const struct imap_response *r, void *aux),
                                        void *aux, struct tern_err *err);

#endif
