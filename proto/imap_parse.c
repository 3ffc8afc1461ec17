/*
 * imap_parse.c - resumable parser of IMAP server responses (RFC 3501 §7 and
 * §9, RFC 9051 §7 and §9, RFC 3516 for literal8); see imap_parse.h.
 *
 * Layer: proto/. Includes only libc and proto/ headers; never curses, files,
 * notmuch or the store.
 *
 * How it works. A response is read line by line. The first line of a
 * response goes through parse_head(), which recognises the three kinds
 * (tagged, untagged, continuation) and, for status responses, the response
 * code. Everything that can contain a literal (the items of a data response
 * and the arguments of a response code) goes through scan_items(), a loop
 * over tokens with an explicit stack of open lists: no recursion, so the
 * nesting depth costs no C stack and is limited only by depth_max. When a
 * line ends with a literal announcement the parser remembers where it was
 * (phase ITEMS or CODE plus the list stack), takes the literal's bytes, and
 * resumes the scan at the start of the next line.
 *
 * Memory. All of a response (the struct, its items, its strings) lives in
 * one arena: a chain of malloc'd blocks whose first block starts with the
 * response itself, so imap_response_free() needs nothing but the response.
 * The first block is sized from the previous response, so a stream of
 * similar FETCH responses costs one malloc each. Nothing is ever sized from
 * a number the server announced: an inline literal grows in a buffer as its
 * bytes arrive (or is copied straight into the arena when it arrives in one
 * piece), and a literal above inline_max never touches memory at all.
 *
 * Leniency toward real servers (deliberate): tokens need no space between
 * them where a delimiter makes the split clear ("FLAGS(\Seen)"); atoms may
 * contain 8-bit bytes and list wildcards ("\*", mailbox names); inside a
 * quoted string a backslash before anything but '"' or '\' is kept as is; a
 * status response may omit the space before its code or text; a garbled
 * response code is not an error but becomes part of the text.
 */
#include "imap_parse.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "tbuf.h"

/* Sizes of arena blocks: the first adapts to the previous response. */
#define FIRST_BLOCK_MIN 2048
#define FIRST_BLOCK_MAX (64 * 1024)
#define BLOCK_GROW_MAX (1024 * 1024)

/*
 * Sets the error sentence and yields ST. The comma expression lets static
 * analysers see that the status is ST without knowing tern_err_set().
 */
#define IMAP_ERR(err, st, ...) (tern_err_set((err), (st), __VA_ARGS__), (st))

/* An inline-literal buffer larger than this is released after use. */
#define LITBUF_KEEP (64 * 1024)

enum parse_phase {
    PH_IDLE,    /* the next line starts a response */
    PH_ITEMS,   /* the items of a data response continue on the next line */
    PH_CODE,    /* the arguments of a response code continue on the next line */
    PH_LITERAL, /* literal bytes are expected */
    PH_FAILED,  /* an error happened; imap_parser_reset() is needed */
};

/* Why scan_items() stopped. */
enum scan_end {
    SCAN_EOL,         /* the line ended */
    SCAN_LITERAL,     /* the line ended with a literal announcement */
    SCAN_CODE_CLOSED, /* the ']' that ends a response code */
    SCAN_GARBLED,     /* a response code that does not parse */
};

struct arena_block {
    struct arena_block *next;
    size_t cap;  /* usable bytes in data */
    size_t used; /* bytes handed out */
    max_align_t data[];
};

/* The start of every response's first arena block. */
struct resp_holder {
    struct arena_block *blocks; /* the chain, this block included */
    struct imap_response r;
};

/* One open list, or (frames[0]) the top level of items or code arguments. */
struct frame {
    struct imap_item *list; /* NULL at the top level */
    struct imap_item **tail;
};

/* A literal given to the sink; closed once, when the response ends. */
struct stream_rec {
    struct imap_literal_sink sink; /* the sink that opened it */
    void *stream;
    struct stream_rec *next;
};

struct imap_parser {
    struct imap_limits lim;
    struct imap_literal_sink sink;
    bool has_sink;

    enum parse_phase phase;
    enum parse_phase resume; /* the phase to return to after a literal */

    /* The response being built. */
    struct arena_block *blocks; /* current block first */
    struct resp_holder *holder;
    size_t kept; /* bytes counted against response_max */
    size_t hint; /* bytes kept by the previous response */
    size_t nitems;

    struct frame *frames; /* owned; frames[0] is the top level */
    size_t nframes;
    size_t frames_cap;

    struct stream_rec *streams; /* in the arena, in the order opened */
    struct stream_rec **streams_tail;

    /* The literal being received. */
    uint64_t lit_left;
    uint64_t lit_size;
    struct stream_rec *lit_rec; /* NULL when the literal is kept inline */
    struct tbuf litbuf;

    /*
     * A response code that spans literals: the earlier line segments, kept
     * so that a code found garbled later can still become the text.
     */
    struct tbuf coderaw;
    size_t code_start; /* where the code starts in the current line */
};

/* ---- small helpers ---- */

static bool
ascii_caseeq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'a' && x <= 'z')
            x = (unsigned char)(x - 'a' + 'A');
        if (y >= 'a' && y <= 'z')
            y = (unsigned char)(y - 'a' + 'A');
        if (x != y)
            return false;
    }
    return true;
}

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Digits only, at most 20 of them, value within 64 bits. */
static bool
parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!is_digit(c))
            return false;
        unsigned d = c - '0';
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/*
 * Characters of a response name or code name: ATOM-CHAR (RFC 9051 §9)
 * without '[' so that "OK[ALERT]" still splits, and without ']'.
 */
static bool
is_name_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && !strchr("(){%*\"\\[]", c);
}

/* RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">. */
static bool
is_tag_char(unsigned char c)
{
    return c > ' ' && c < 0x7f && !strchr("(){%*\"\\+", c);
}

/* ---- the arena ---- */

static struct arena_block *
block_new(size_t cap)
{
    if (cap > SIZE_MAX - offsetof(struct arena_block, data))
        return NULL;
    struct arena_block *b = malloc(offsetof(struct arena_block, data) + cap);
    if (!b)
        return NULL;
    b->next = NULL;
    b->cap = cap;
    b->used = 0;
    return b;
}

static void
blocks_free(struct arena_block *b)
{
    while (b) {
        struct arena_block *next = b->next;
        free(b);
        b = next;
    }
}

static enum tern_status
nomem(struct tern_err *err)
{
    return IMAP_ERR(err, TERN_E_NOMEM, "out of memory while parsing an IMAP response");
}

static enum tern_status
too_big(const struct imap_parser *p, struct tern_err *err)
{
    return IMAP_ERR(err, TERN_E_PROTO, "IMAP response larger than the limit of %zu bytes",
                    p->lim.response_max);
}

/*
 * Hands out SIZE bytes aligned to ALIGN (a power of two) from the current
 * response's arena, counting them against response_max.
 */
static enum tern_status
arena_alloc(struct imap_parser *p, size_t size, size_t align, void **out, struct tern_err *err)
{
    if (size > p->lim.response_max - p->kept)
        return too_big(p, err);
    struct arena_block *b = p->blocks;
    if (b) {
        size_t off = (b->used + align - 1) & ~(align - 1);
        if (off <= b->cap && size <= b->cap - off) {
            b->used = off + size;
            p->kept += size;
            *out = (char *)b->data + off;
            return TERN_OK;
        }
    }
    struct arena_block *nb;
    if (b && size > b->cap / 2) {
        /* A big piece is given a block of its own; the current one stays current. */
        nb = block_new(size);
        if (!nb)
            return nomem(err);
        nb->next = b->next;
        b->next = nb;
    } else {
        size_t cap;
        if (!b) {
            cap = p->hint + p->hint / 4;
            if (cap < FIRST_BLOCK_MIN)
                cap = FIRST_BLOCK_MIN;
            if (cap > FIRST_BLOCK_MAX)
                cap = FIRST_BLOCK_MAX;
        } else {
            cap = b->cap < BLOCK_GROW_MAX / 2 ? b->cap * 2 : BLOCK_GROW_MAX;
        }
        if (cap < size)
            cap = size;
        nb = block_new(cap);
        if (!nb)
            return nomem(err);
        nb->next = b;
        p->blocks = nb;
    }
    nb->used = size;
    p->kept += size;
    *out = nb->data;
    return TERN_OK;
}

/* Copies N bytes into the arena as a NUL-terminated string. */
static enum tern_status
arena_str(struct imap_parser *p, const char *s, size_t n, char **out, struct tern_err *err)
{
    void *mem = NULL;
    if (n == SIZE_MAX)
        return too_big(p, err);
    enum tern_status st = arena_alloc(p, n + 1, 1, &mem, err);
    if (st)
        return st;
    char *d = mem;
    if (n)
        memcpy(d, s, n);
    d[n] = '\0';
    *out = d;
    return TERN_OK;
}

/* Like arena_str, upper-casing ASCII letters (names and codes). */
static enum tern_status
arena_upper(struct imap_parser *p, const char *s, size_t n, const char **out, struct tern_err *err)
{
    char *d;
    enum tern_status st = arena_str(p, s, n, &d, err);
    if (st)
        return st;
    for (size_t i = 0; i < n; i++)
        if (d[i] >= 'a' && d[i] <= 'z')
            d[i] = (char)(d[i] - 'a' + 'A');
    *out = d;
    return TERN_OK;
}

/* ---- items and lists ---- */

static enum tern_status
add_item(struct imap_parser *p, enum imap_item_type type, struct imap_item **out,
         struct tern_err *err)
{
    if (p->nitems >= p->lim.items_max)
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP response has more than %zu items",
                        p->lim.items_max);
    void *mem = NULL;
    enum tern_status st =
        arena_alloc(p, sizeof(struct imap_item), _Alignof(struct imap_item), &mem, err);
    if (st)
        return st;
    struct imap_item *it = mem;
    *it = (struct imap_item){.type = type};
    struct frame *f = &p->frames[p->nframes - 1];
    *f->tail = it;
    f->tail = &it->next;
    if (f->list)
        f->list->count++;
    p->nitems++;
    *out = it;
    return TERN_OK;
}

static enum tern_status
open_list(struct imap_parser *p, struct tern_err *err)
{
    if (p->nframes - 1 >= p->lim.depth_max)
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP response nested deeper than %u levels",
                        p->lim.depth_max);
    if (p->nframes == p->frames_cap) {
        if (p->frames_cap > SIZE_MAX / 2 / sizeof(struct frame))
            return nomem(err);
        size_t cap = p->frames_cap * 2;
        struct frame *f = realloc(p->frames, cap * sizeof(struct frame));
        if (!f)
            return nomem(err);
        p->frames = f;
        p->frames_cap = cap;
    }
    struct imap_item *it;
    enum tern_status st = add_item(p, IMAP_ITEM_LIST, &it, err);
    if (st)
        return st;
    p->frames[p->nframes++] = (struct frame){.list = it, .tail = &it->child};
    return TERN_OK;
}

/* An atom of N bytes: NIL (RFC 9051 §9 "nil", case-insensitive) or ATOM. */
static enum tern_status
add_atom(struct imap_parser *p, const char *s, size_t n, struct tern_err *err)
{
    struct imap_item *it;
    enum tern_status st;
    if (n == 3 && ascii_caseeq(s, "NIL", 3))
        return add_item(p, IMAP_ITEM_NIL, &it, err);
    st = add_item(p, IMAP_ITEM_ATOM, &it, err);
    if (st)
        return st;
    char *d;
    st = arena_str(p, s, n, &d, err);
    if (st)
        return st;
    it->str = d;
    it->len = n;
    it->is_number = parse_u64(s, n, &it->num);
    return TERN_OK;
}

/*
 * A quoted string from S[0] (the opening '"') to S[N-1] (the closing one),
 * unescaped (RFC 9051 §9: quoted-specials are '"' and '\').
 */
static enum tern_status
add_quoted(struct imap_parser *p, const char *s, size_t n, bool escaped, struct tern_err *err)
{
    struct imap_item *it;
    enum tern_status st = add_item(p, IMAP_ITEM_STRING, &it, err);
    if (st)
        return st;
    const char *body = s + 1;
    size_t blen = n - 2;
    char *d;
    st = arena_str(p, body, blen, &d, err);
    if (st)
        return st;
    size_t o = blen;
    if (escaped) {
        o = 0;
        for (size_t i = 0; i < blen; i++) {
            if (body[i] == '\\' && i + 1 < blen && (body[i + 1] == '\\' || body[i + 1] == '"'))
                i++;
            d[o++] = body[i];
        }
        d[o] = '\0';
    }
    it->str = d;
    it->len = o;
    return TERN_OK;
}

/* ---- the scanner ---- */

/* A syntax error: inside a response code it only makes the code garbled. */
static enum tern_status
syntax(bool code, enum scan_end *end, const char *what, size_t pos, struct tern_err *err)
{
    if (code) {
        *end = SCAN_GARBLED;
        return TERN_OK;
    }
    return IMAP_ERR(err, TERN_E_PROTO, "malformed IMAP response: %s at byte %zu of the line", what,
                    pos);
}

/*
 * A literal announcement at S[POS] ("{N}", "{N+}" or "~{N}", RFC 9051 §9
 * literal and literal8, RFC 7888 for "+"), which must end the line.
 */
static enum tern_status
scan_literal(const struct imap_parser *p, const char *s, size_t len, size_t pos, bool code,
             enum scan_end *end, uint64_t *size, struct tern_err *err)
{
    size_t q = pos + (s[pos] == '~' ? 2 : 1);
    size_t d0 = q;
    while (q < len && is_digit((unsigned char)s[q]))
        q++;
    size_t nd = q - d0;
    if (q < len && s[q] == '+')
        q++;
    if (nd == 0 || q >= len || s[q] != '}')
        return syntax(code, end, "a malformed literal size", pos, err);
    if (q + 1 != len)
        return syntax(code, end, "a literal announced before the end of the line", pos, err);
    if (nd > 20)
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP literal size of %zu digits is out of range", nd);
    uint64_t v;
    if (!parse_u64(s + d0, nd, &v))
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP literal size %.*s is out of range", (int)nd,
                        s + d0);
    if (v > p->lim.literal_max)
        return IMAP_ERR(err, TERN_E_PROTO,
                        "IMAP literal of %" PRIu64 " bytes exceeds the limit of %" PRIu64, v,
                        p->lim.literal_max);
    *size = v;
    *end = SCAN_LITERAL;
    return TERN_OK;
}

/*
 * Reads items from S[*POSP] up to the end of the line, a literal
 * announcement or (in a response code) the closing ']'. Lists are kept on
 * p->frames, so the scan resumes where it stopped.
 */
static enum tern_status
scan_items(struct imap_parser *p, const char *s, size_t len, size_t *posp, enum scan_end *end,
           uint64_t *litsize, struct tern_err *err)
{
    bool code = p->phase == PH_CODE;
    size_t pos = *posp;
    enum tern_status st;

    for (;;) {
        while (pos < len && s[pos] == ' ')
            pos++;
        if (pos == len) {
            *end = code ? SCAN_GARBLED : SCAN_EOL;
            break;
        }
        unsigned char c = (unsigned char)s[pos];
        if (c == '(') {
            st = open_list(p, err);
            if (st)
                return st;
            pos++;
        } else if (c == ')') {
            if (p->nframes == 1)
                return syntax(code, end, "an unexpected ')'", pos, err);
            p->nframes--;
            pos++;
        } else if (c == '"') {
            size_t q = pos + 1;
            const char *close = memchr(s + q, '"', len - q);
            bool escaped = close && memchr(s + q, '\\', (size_t)(close - (s + q)));
            if (escaped) {
                /* Walk the escapes: an escaped '"' does not close. */
                for (;;) {
                    if (q >= len) {
                        close = NULL;
                        break;
                    }
                    if (s[q] == '"') {
                        close = s + q;
                        break;
                    }
                    q += s[q] == '\\' ? 2 : 1;
                }
            }
            if (!close)
                return syntax(code, end, "an unterminated quoted string", pos, err);
            size_t n = (size_t)(close - (s + pos)) + 1;
            st = add_quoted(p, s + pos, n, escaped, err);
            if (st)
                return st;
            pos += n;
        } else if (c == '{' || (c == '~' && pos + 1 < len && s[pos + 1] == '{')) {
            st = scan_literal(p, s, len, pos, code, end, litsize, err);
            if (st || *end == SCAN_GARBLED)
                return st;
            pos = len;
            break;
        } else if (c == ']' && code) {
            if (p->nframes > 1)
                return syntax(code, end, "a ']' inside a list", pos, err);
            pos++;
            *end = SCAN_CODE_CLOSED;
            break;
        } else if (c < ' ' || c == 0x7f) {
            return syntax(code, end, "a control character", pos, err);
        } else {
            /*
             * An atom. Inside "[...]" anything but ']' belongs to it, so
             * BODY[HEADER.FIELDS (FROM TO)]<0> is one atom (RFC 9051 §7.5.2
             * msg-att-static).
             */
            size_t a = pos;
            while (pos < len) {
                unsigned char ch = (unsigned char)s[pos];
                if (ch == '[') {
                    const char *rb = memchr(s + pos + 1, ']', len - pos - 1);
                    if (!rb)
                        return syntax(code, end, "an unterminated '['", pos, err);
                    pos = (size_t)(rb - s) + 1;
                    continue;
                }
                if (ch <= ' ' || ch == 0x7f || ch == '(' || ch == ')' || ch == '"' ||
                    (code && ch == ']'))
                    break;
                pos++;
            }
            st = add_atom(p, s + a, pos - a, err);
            if (st)
                return st;
        }
    }
    *posp = pos;
    return TERN_OK;
}

/* ---- responses ---- */

static enum tern_status
response_start(struct imap_parser *p, struct tern_err *err)
{
    void *mem = NULL;
    p->kept = 0;
    p->nitems = 0;
    enum tern_status st =
        arena_alloc(p, sizeof(struct resp_holder), _Alignof(struct resp_holder), &mem, err);
    if (st)
        return st;
    p->holder = mem;
    p->holder->blocks = NULL;
    p->holder->r = (struct imap_response){.kind = IMAP_RESP_UNTAGGED, .text = ""};
    p->frames[0] = (struct frame){.list = NULL, .tail = &p->holder->r.items};
    p->nframes = 1;
    p->streams = NULL;
    p->streams_tail = &p->streams;
    tbuf_reset(&p->coderaw);
    return TERN_OK;
}

/* The resp-text after a code or a status word: an optional SP, then text. */
static enum tern_status
set_text(struct imap_parser *p, const char *s, size_t len, size_t pos, struct tern_err *err)
{
    if (pos < len && s[pos] == ' ')
        pos++;
    char *t;
    enum tern_status st = arena_str(p, s + pos, len - pos, &t, err);
    if (st)
        return st;
    p->holder->r.text = t;
    return TERN_OK;
}

/*
 * A response code that does not parse: no code, and the text is everything
 * from its '[' on. Literals inside it appear as their announcement only.
 */
static enum tern_status
set_garbled(struct imap_parser *p, const char *s, size_t len, struct tern_err *err)
{
    struct imap_response *r = &p->holder->r;
    size_t raw = tbuf_len(&p->coderaw);
    size_t seg = len - p->code_start;
    void *mem = NULL;
    if (raw > SIZE_MAX - seg - 1)
        return too_big(p, err);
    enum tern_status st = arena_alloc(p, raw + seg + 1, 1, &mem, err);
    if (st)
        return st;
    char *t = mem;
    if (raw)
        memcpy(t, tbuf_ptr(&p->coderaw), raw);
    if (seg)
        memcpy(t + raw, s + p->code_start, seg);
    t[raw + seg] = '\0';
    r->code = NULL;
    r->code_args = NULL;
    r->text = t;
    p->nframes = 1;
    return TERN_OK;
}

/*
 * The first line of a response: the tag, "*" or "+", the number and name of
 * untagged data, and for status responses the code (RFC 9051 §7.1).
 * Sets *DONE when the response is complete; otherwise p->phase says what
 * scan_items() is to read from *POSP on.
 */
static enum tern_status
parse_head(struct imap_parser *p, const char *s, size_t len, size_t *posp, bool *done,
           struct tern_err *err)
{
    struct imap_response *r = &p->holder->r;
    enum tern_status st;
    size_t pos = 0;

    if (len == 0)
        return IMAP_ERR(err, TERN_E_PROTO, "empty IMAP response line");

    if (s[0] == '+') {
        /* RFC 9051 §7.6: continue-req = "+" SP (resp-text / base64). */
        r->kind = IMAP_RESP_CONTINUATION;
        *done = true;
        return set_text(p, s, len, 1, err);
    }

    if (s[0] == '*') {
        if (len < 2 || s[1] != ' ')
            return IMAP_ERR(err, TERN_E_PROTO,
                            "malformed IMAP response: '*' not followed by a space");
        r->kind = IMAP_RESP_UNTAGGED;
        pos = 2;
        if (pos < len && is_digit((unsigned char)s[pos])) {
            size_t d0 = pos;
            while (pos < len && is_digit((unsigned char)s[pos]))
                pos++;
            uint64_t v;
            if (!parse_u64(s + d0, pos - d0, &v) || v > UINT32_MAX)
                return IMAP_ERR(err, TERN_E_PROTO, "IMAP message number %.*s is out of range",
                                (int)(pos - d0 > 24 ? 24 : pos - d0), s + d0);
            if (pos >= len || s[pos] != ' ')
                return IMAP_ERR(err, TERN_E_PROTO,
                                "untagged IMAP response has a number but no name");
            r->has_number = true;
            r->number = (uint32_t)v;
            pos++;
        }
    } else {
        while (pos < len && is_tag_char((unsigned char)s[pos]))
            pos++;
        if (pos == 0 || pos >= len || s[pos] != ' ')
            return IMAP_ERR(err, TERN_E_PROTO, "malformed IMAP response tag");
        char *tag;
        st = arena_str(p, s, pos, &tag, err);
        if (st)
            return st;
        r->kind = IMAP_RESP_TAGGED;
        r->tag = tag;
        pos++;
    }

    size_t n0 = pos;
    while (pos < len && is_name_char((unsigned char)s[pos]))
        pos++;
    size_t nlen = pos - n0;
    if (nlen == 0)
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP response without a %s",
                        r->kind == IMAP_RESP_TAGGED ? "status" : "name");
    st = arena_upper(p, s + n0, nlen, &r->name, err);
    if (st)
        return st;

    static const struct {
        const char *word;
        enum imap_cond cond;
    } conds[] = {
        {"OK", IMAP_COND_OK},           {"NO", IMAP_COND_NO},   {"BAD", IMAP_COND_BAD},
        {"PREAUTH", IMAP_COND_PREAUTH}, {"BYE", IMAP_COND_BYE},
    };
    r->cond = IMAP_COND_NONE;
    if (!r->has_number)
        for (size_t i = 0; i < sizeof conds / sizeof conds[0]; i++)
            if (strlen(conds[i].word) == nlen && memcmp(conds[i].word, r->name, nlen) == 0)
                r->cond = conds[i].cond;

    if (r->kind == IMAP_RESP_TAGGED && r->cond != IMAP_COND_OK && r->cond != IMAP_COND_NO &&
        r->cond != IMAP_COND_BAD)
        return IMAP_ERR(err, TERN_E_PROTO, "tagged IMAP response with the unknown status \"%.*s\"",
                        (int)(nlen > 32 ? 32 : nlen), s + n0);

    if (r->cond == IMAP_COND_NONE) {
        /* Untagged data (RFC 9051 §7.2-7.5): generic items to the end. */
        p->phase = PH_ITEMS;
        *posp = pos;
        return TERN_OK;
    }

    /* resp-text = ["[" resp-text-code "]" SP] [text] (RFC 9051 §9). */
    if (pos < len && s[pos] == ' ')
        pos++;
    if (pos >= len || s[pos] != '[') {
        *done = true;
        return set_text(p, s, len, pos, err);
    }
    p->code_start = pos;
    size_t c0 = pos + 1, c = c0;
    while (c < len && is_name_char((unsigned char)s[c]))
        c++;
    if (c == c0 || c >= len || (s[c] != ' ' && s[c] != ']')) {
        *done = true;
        return set_garbled(p, s, len, err);
    }
    st = arena_upper(p, s + c0, c - c0, &r->code, err);
    if (st)
        return st;
    if (s[c] == ']') {
        *done = true;
        return set_text(p, s, len, c + 1, err);
    }
    p->frames[0].tail = &r->code_args;
    p->phase = PH_CODE;
    *posp = c + 1;
    return TERN_OK;
}

/* Closes every stream the response opened, in the order they were opened. */
static void
close_streams(struct imap_parser *p, bool ok)
{
    struct stream_rec *rec = p->streams;
    p->streams = NULL;
    p->streams_tail = &p->streams;
    while (rec) {
        struct stream_rec *next = rec->next;
        rec->sink.close(rec->sink.aux, rec->stream, ok);
        rec = next;
    }
}

static void
release_litbuf(struct imap_parser *p)
{
    if (p->litbuf.cap > LITBUF_KEEP)
        tbuf_free(&p->litbuf);
    else
        tbuf_reset(&p->litbuf);
}

/* Drops a partial response, telling the sink its streams failed. */
static void
drop_response(struct imap_parser *p)
{
    close_streams(p, false);
    blocks_free(p->blocks);
    p->blocks = NULL;
    p->holder = NULL;
    p->nframes = 1;
    p->nitems = 0;
    p->kept = 0;
    p->lit_left = 0;
    p->lit_rec = NULL;
    release_litbuf(p);
    tbuf_reset(&p->coderaw);
}

static enum tern_status
fail(struct imap_parser *p, enum tern_status st)
{
    drop_response(p);
    p->phase = PH_FAILED;
    return st;
}

/* Hands the finished response out, closing its streams as successful. */
static void
finish(struct imap_parser *p, struct imap_response **out)
{
    close_streams(p, true);
    p->holder->blocks = p->blocks;
    *out = &p->holder->r;
    p->hint = p->kept;
    p->blocks = NULL;
    p->holder = NULL;
    p->nframes = 1;
    p->nitems = 0;
    p->kept = 0;
    p->phase = PH_IDLE;
    tbuf_reset(&p->coderaw);
}

/* A literal of SIZE bytes was announced: check the limits, open the sink. */
static enum tern_status
literal_start(struct imap_parser *p, uint64_t size, struct tern_err *err)
{
    enum tern_status st;
    if (p->nitems >= p->lim.items_max)
        return IMAP_ERR(err, TERN_E_PROTO, "IMAP response has more than %zu items",
                        p->lim.items_max);
    p->lit_rec = NULL;
    if (size <= p->lim.inline_max) {
        if (size >= p->lim.response_max - p->kept)
            return too_big(p, err);
        if (size == 0) {
            struct imap_item *it;
            st = add_item(p, IMAP_ITEM_STRING, &it, err);
            if (st)
                return st;
            it->str = "";
            return TERN_OK;
        }
        tbuf_reset(&p->litbuf);
    } else {
        if (!p->has_sink)
            return IMAP_ERR(err, TERN_E_PROTO,
                            "IMAP literal of %" PRIu64 " bytes is larger than the inline "
                            "limit of %zu bytes and no literal sink is set",
                            size, p->lim.inline_max);
        void *mem = NULL;
        st = arena_alloc(p, sizeof(struct stream_rec), _Alignof(struct stream_rec), &mem, err);
        if (st)
            return st;
        struct stream_rec *rec = mem;
        rec->sink = p->sink;
        rec->stream = NULL;
        rec->next = NULL;
        st = rec->sink.open(rec->sink.aux, size, &rec->stream);
        if (st)
            return IMAP_ERR(err, st,
                            "the literal sink could not take a literal of %" PRIu64 " bytes", size);
        *p->streams_tail = rec;
        p->streams_tail = &rec->next;
        p->lit_rec = rec;
    }
    p->resume = p->phase;
    p->phase = PH_LITERAL;
    p->lit_size = size;
    p->lit_left = size;
    return TERN_OK;
}

/* The last byte of a literal arrived: it becomes an item. */
static enum tern_status
literal_done(struct imap_parser *p, const char *data, size_t n, struct tern_err *err)
{
    struct imap_item *it;
    enum tern_status st;
    if (p->lit_rec) {
        st = add_item(p, IMAP_ITEM_STREAMED, &it, err);
        if (st)
            return st;
        it->size = p->lit_size;
        it->stream = p->lit_rec->stream;
        p->lit_rec = NULL;
    } else {
        st = add_item(p, IMAP_ITEM_STRING, &it, err);
        if (st)
            return st;
        char *d;
        st = arena_str(p, data, n, &d, err);
        if (st)
            return st;
        it->str = d;
        it->len = n;
        release_litbuf(p);
    }
    p->phase = p->resume;
    return TERN_OK;
}

/* ---- public interface ---- */

void
imap_limits_default(struct imap_limits *lim)
{
    if (!lim)
        return;
    lim->line_max = 1024 * 1024;
    lim->literal_max = UINT64_C(1024) * 1024 * 1024;
    lim->inline_max = 1024 * 1024;
    lim->response_max = 64 * 1024 * 1024;
    lim->depth_max = 64;
    lim->items_max = 4 * 1024 * 1024;
}

struct imap_parser *
imap_parser_new(const struct imap_limits *lim)
{
    struct imap_parser *p = malloc(sizeof *p);
    if (!p)
        return NULL;
    *p = (struct imap_parser){.phase = PH_IDLE, .nframes = 1, .frames_cap = 16};
    if (lim)
        p->lim = *lim;
    else
        imap_limits_default(&p->lim);
    p->streams_tail = &p->streams;
    tbuf_init(&p->litbuf, 0);
    tbuf_init(&p->coderaw, p->lim.response_max);
    p->frames = malloc(p->frames_cap * sizeof(struct frame));
    if (!p->frames) {
        free(p);
        return NULL;
    }
    return p;
}

void
imap_parser_free(struct imap_parser *p)
{
    if (!p)
        return;
    drop_response(p);
    tbuf_free(&p->litbuf);
    tbuf_free(&p->coderaw);
    free(p->frames);
    free(p);
}

void
imap_parser_set_sink(struct imap_parser *p, const struct imap_literal_sink *sink)
{
    if (!p)
        return;
    if (sink && sink->open && sink->write && sink->close) {
        p->sink = *sink;
        p->has_sink = true;
    } else {
        p->sink = (struct imap_literal_sink){0};
        p->has_sink = false;
    }
}

void
imap_parser_reset(struct imap_parser *p)
{
    if (!p)
        return;
    drop_response(p);
    p->phase = PH_IDLE;
}

enum tern_status
imap_parser_line(struct imap_parser *p, const char *line, size_t len, struct imap_response **out,
                 uint64_t *literal, struct tern_err *err)
{
    enum tern_status st;
    if (out)
        *out = NULL;
    if (literal)
        *literal = 0;
    if (!p || !out || !literal || (!line && len))
        return IMAP_ERR(err, TERN_E_USAGE, "imap_parser_line called with a NULL argument");
    if (p->phase == PH_FAILED)
        return IMAP_ERR(err, TERN_E_USAGE, "IMAP parser used after an error without a reset");
    if (p->phase == PH_LITERAL)
        return IMAP_ERR(err, TERN_E_USAGE,
                        "IMAP parser given a line while %" PRIu64 " literal bytes are due",
                        p->lit_left);
    if (len > p->lim.line_max)
        return fail(p, IMAP_ERR(err, TERN_E_PROTO,
                                "IMAP response line of %zu bytes exceeds the limit of %zu", len,
                                p->lim.line_max));
    if (len && memchr(line, '\0', len))
        return fail(p, IMAP_ERR(err, TERN_E_PROTO, "IMAP response line contains a NUL byte"));

    size_t pos = 0;
    bool done = false;
    if (p->phase == PH_IDLE) {
        st = response_start(p, err);
        if (st)
            return fail(p, st);
        st = parse_head(p, line, len, &pos, &done, err);
        if (st)
            return fail(p, st);
    } else if (p->phase == PH_CODE) {
        p->code_start = 0;
    }

    if (!done) {
        enum scan_end end = SCAN_EOL;
        uint64_t size = 0;
        st = scan_items(p, line, len, &pos, &end, &size, err);
        if (st)
            return fail(p, st);
        switch (end) {
        case SCAN_EOL:
            if (p->nframes > 1)
                return fail(p, IMAP_ERR(err, TERN_E_PROTO,
                                        "malformed IMAP response: %zu parenthesised "
                                        "lists left open at the end",
                                        p->nframes - 1));
            break;
        case SCAN_CODE_CLOSED: st = set_text(p, line, len, pos, err); break;
        case SCAN_GARBLED: st = set_garbled(p, line, len, err); break;
        case SCAN_LITERAL:
            if (p->phase == PH_CODE) {
                st = tbuf_add(&p->coderaw, line + p->code_start, len - p->code_start);
                if (st)
                    return fail(p, st == TERN_E_NOMEM ? nomem(err) : too_big(p, err));
            }
            st = literal_start(p, size, err);
            if (st)
                return fail(p, st);
            if (p->phase == PH_LITERAL)
                *literal = size;
            return TERN_OK;
        }
        if (st)
            return fail(p, st);
    }
    finish(p, out);
    return TERN_OK;
}

enum tern_status
imap_parser_literal(struct imap_parser *p, const char *data, size_t len, uint64_t *left,
                    struct tern_err *err)
{
    enum tern_status st;
    if (left)
        *left = 0;
    if (!p || !left || (!data && len))
        return IMAP_ERR(err, TERN_E_USAGE, "imap_parser_literal called with a NULL argument");
    if (p->phase != PH_LITERAL)
        return IMAP_ERR(err, TERN_E_USAGE,
                        "IMAP parser given literal bytes while it expects a line");
    if (len > p->lit_left)
        return IMAP_ERR(err, TERN_E_USAGE,
                        "IMAP parser given %zu literal bytes while %" PRIu64 " are due", len,
                        p->lit_left);
    *left = p->lit_left;
    if (len == 0)
        return TERN_OK;

    if (p->lit_rec) {
        st = p->lit_rec->sink.write(p->lit_rec->sink.aux, p->lit_rec->stream, data, len);
        if (st)
            return fail(p, IMAP_ERR(err, st, "the literal sink failed to store %zu bytes", len));
        p->lit_left -= len;
        if (p->lit_left == 0)
            st = literal_done(p, NULL, 0, err);
    } else if (len == p->lit_left && tbuf_len(&p->litbuf) == 0) {
        /* The whole literal in one piece: straight into the arena. */
        p->lit_left = 0;
        st = literal_done(p, data, len, err);
    } else {
        st = tbuf_add(&p->litbuf, data, len);
        if (st)
            return fail(p, nomem(err));
        p->lit_left -= len;
        if (p->lit_left == 0)
            st = literal_done(p, tbuf_ptr(&p->litbuf), tbuf_len(&p->litbuf), err);
    }
    if (st)
        return fail(p, st);
    *left = p->lit_left;
    return TERN_OK;
}

void
imap_response_free(struct imap_response *r)
{
    if (!r)
        return;
    struct resp_holder *h = (struct resp_holder *)((char *)r - offsetof(struct resp_holder, r));
    blocks_free(h->blocks);
}

bool
imap_item_is(const struct imap_item *it, const char *atom)
{
    if (!it || !atom || it->type != IMAP_ITEM_ATOM)
        return false;
    size_t n = strlen(atom);
    return it->len == n && ascii_caseeq(it->str, atom, n);
}

const char *
imap_item_str(const struct imap_item *it)
{
    if (!it || (it->type != IMAP_ITEM_ATOM && it->type != IMAP_ITEM_STRING))
        return NULL;
    return it->str;
}

const struct imap_item *
imap_item_nth(const struct imap_item *first, size_t n)
{
    while (first && n--)
        first = first->next;
    return first;
}

enum tern_status
imap_parse_buffer_sink(const struct imap_limits *lim, const struct imap_literal_sink *sink,
                       const char *buf, size_t len,
                       void (*cb)(const struct imap_response *r, void *aux), void *aux,
                       struct tern_err *err)
{
    if (!buf && len)
        return IMAP_ERR(err, TERN_E_USAGE, "imap_parse_buffer called with a NULL buffer");
    struct imap_parser *p = imap_parser_new(lim);
    if (!p)
        return nomem(err);
    imap_parser_set_sink(p, sink);

    enum tern_status st = TERN_OK;
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        size_t n = end - pos;
        if (nl && n > 0 && buf[end - 1] == '\r')
            n--;
        struct imap_response *r;
        uint64_t lit;
        st = imap_parser_line(p, buf + pos, n, &r, &lit, err);
        pos = nl ? end + 1 : len;
        if (st)
            break;
        if (r) {
            if (cb)
                cb(r, aux);
            imap_response_free(r);
        } else if (lit) {
            uint64_t avail = len - pos;
            size_t take = (size_t)(lit < avail ? lit : avail);
            uint64_t left;
            st = imap_parser_literal(p, buf + pos, take, &left, err);
            if (st)
                break;
            pos += take;
            if (left) {
                st = IMAP_ERR(err, TERN_E_PROTO,
                              "IMAP data ends %" PRIu64 " bytes before the end of a literal", left);
                break;
            }
        }
    }
    if (!st && p->phase != PH_IDLE)
        st = IMAP_ERR(err, TERN_E_PROTO, "IMAP data ends in the middle of a response");
    imap_parser_free(p);
    return st;
}

enum tern_status
imap_parse_buffer(const struct imap_limits *lim, const char *buf, size_t len,
                  void (*cb)(const struct imap_response *r, void *aux), void *aux,
                  struct tern_err *err)
{
    return imap_parse_buffer_sink(lim, NULL, buf, len, cb, aux, err);
}
