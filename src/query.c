/*
 * query.c - the query language of DESIGN.md: notmuch's words, parsed once
 * into a tree and translated for two engines, IMAP SEARCH (RFC 3501
 * §6.4.4, RFC 9051 §6.4.4) on the server and notmuch locally.
 *
 * Layer: src/. Includes libc, proto/ (err, tbuf, imap_args) and its own
 * header; never curses, sockets or the store.
 *
 * Syntax (a subset of notmuch-search-terms(7), with these decisions):
 *
 *   query   = [or]                       ; empty, or "*" alone: everything
 *   or      = and *("or" and)
 *   and     = unary *(["and"] unary)     ; adjacent terms: implicit AND
 *   unary   = ("not" / "-") unary / "(" or ")" / term
 *   term    = word / '"' phrase '"' / prefix ":" (value / '"' value '"')
 *
 * - Precedence is NOT > AND > OR. "and", "or" and "not" are operators in
 *   any case, as in notmuch (Xapian's FLAG_BOOLEAN_ANY_CASE); quote one to
 *   search for the word. Xapian's other operators (xor, near, adj) are
 *   rejected rather than silently searched for as words.
 * - "-term" means "not term" wherever a term may start ("a -b" is a and not
 *   b, "-a" alone is not a). A "-" inside a word ("e-mail") is part of the
 *   word, and a lone "-" is an error. Notmuch's "+term" has no special
 *   meaning here; "+" is part of the word.
 * - Adjacent terms are always joined by AND. Notmuch ORs adjacent terms
 *   that share a prefix ("tag:a tag:b"); tern does not, and the notmuch
 *   rendering below always writes its operators out, so both engines see
 *   the same tree.
 * - Inside quotes, "" stands for one '"' (notmuch's escape).
 * - A prefix is letters, digits, "_" and "-" before ":", in any case; an
 *   unknown one ("frm:x", also "re:") is TERN_E_USAGE. Quote the word to
 *   search for it as text. notmuch's subject:(a b) grouping is not
 *   supported (write subject:a subject:b).
 * - Prefixes: from: to: cc: bcc: subject: body: id: (mid:) tag: keyword:
 *   is: date: larger: smaller:, and notmuch-only thread: path: folder:
 *   mimetype: attachment: property: lastmod: query:, which parse and pass
 *   through to notmuch but are TERN_E_UNSUPPORTED for IMAP.
 * - A trailing "*" on an unquoted word is a notmuch wildcard; a value
 *   between slashes (from:/re/) is a notmuch regular expression. Neither
 *   can be evaluated by IMAP SEARCH (TERN_E_UNSUPPORTED there).
 * - is: names an IMAP state here (not notmuch's synonym of tag:): unread,
 *   read, seen, flagged, unflagged, answered, replied, deleted, draft.
 * - date:A..B, date:A..!, date:A (= A..A), date:A.. and date:..B with A, B
 *   each YYYY-MM-DD, YYYY-MM (the whole month), YYYY (the whole year),
 *   "today", "yesterday", or N followed by d, w, M or y: N days, weeks,
 *   months or years ago, rounded as notmuch's parse_time_string() rounds
 *   them (since = the start of that day, week (Sunday), month or year;
 *   until = its end). "today" is the current date in UTC. A lower-case
 *   "m" (like "h" and "s") is rejected: notmuch reads it as minutes, and
 *   IMAP dates have day precision. Years run from 1 to 9999.
 * - larger:N and smaller:N (N bytes, or with k/K = 1024, M = 1024^2,
 *   G = 1024^3; the unit letter is case-insensitive) mean size > N and
 *   size < N, like Gmail's operators of the same name. That is exactly IMAP
 *   LARGER and SMALLER, so nothing is lost in translation. N must fit
 *   IMAP's 32-bit number. notmuch has no size search: TERN_E_UNSUPPORTED.
 * - Nesting (parentheses and negations together) is limited to
 *   QUERY_MAX_DEPTH levels, so hostile input cannot exhaust the stack.
 *
 * Translations:
 * - IMAP: from: to: cc: bcc: subject: body: and bare words go as FROM, TO,
 *   CC, BCC, SUBJECT, BODY and TEXT with the value as a string argument
 *   (quoted or literal, chosen by the engine); id:X as HEADER Message-ID
 *   "<X>" (the brackets keep "1@x" from matching "11@x"); tag:/keyword:X
 *   as KEYWORD X, where X must be an IMAP atom (TERN_E_USAGE otherwise);
 *   is: as UNSEEN, SEEN, FLAGGED, UNFLAGGED, ANSWERED, DELETED, DRAFT;
 *   date: as SENTSINCE first-day SENTBEFORE last-day+1 (the Date header,
 *   like notmuch's date:); larger:/smaller: as LARGER/SMALLER. AND is keys
 *   side by side, OR is "OR a b" chained, NOT is "NOT a"; a group of keys
 *   in the place of one gets parentheses. An empty query is ALL.
 * - notmuch: is:unread/flagged/answered/deleted/draft become tag:unread,
 *   tag:flagged, tag:replied, tag:deleted, tag:draft (is:read and
 *   is:unflagged their negations), keyword: becomes tag:, dates become
 *   whole-day ISO ranges, and values are quoted or normalized so Xapian
 *   parses them (see nm_words). cc:, bcc:, larger: and smaller: have no
 *   notmuch form: TERN_E_UNSUPPORTED.
 *
 * Semantics on the server: IMAP SEARCH matches substrings, case-
 * insensitively, where notmuch matches words (with stemming). from:ann
 * finds "joanne@example.org" on the server and not in notmuch. This
 * difference is accepted and is not an error; what is refused is a term
 * whose meaning IMAP cannot express at all.
 */
#include "query.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "imap_args.h"
#include "tbuf.h"

#define QUERY_MAX_DEPTH 64
#define QNONE SIZE_MAX

/* The longest part of a user's term quoted back in an error sentence. */
#define QUERY_ERR_CLIP 60

enum qnode_kind {
    QN_AND,
    QN_OR,
    QN_NOT,
    QN_TERM,
};

enum qfield {
    QF_TEXT, /* bare word or phrase */
    QF_FROM,
    QF_TO,
    QF_CC,
    QF_BCC,
    QF_SUBJECT,
    QF_BODY,
    QF_ID,
    QF_KEYWORD,
    QF_FLAG,
    QF_DATE,
    QF_LARGER,
    QF_SMALLER,
    QF_NOTMUCH, /* a prefix only notmuch evaluates */
};

enum qflag {
    QFL_UNREAD,
    QFL_READ,
    QFL_FLAGGED,
    QFL_UNFLAGGED,
    QFL_ANSWERED,
    QFL_DELETED,
    QFL_DRAFT,
};

struct qnode {
    enum qnode_kind kind;
    size_t child, last; /* AND, OR, NOT: first and last child */
    size_t next;        /* next sibling */

    /* QN_TERM only. */
    enum qfield field;
    const char *prefix;      /* canonical prefix name, NULL for QF_TEXT */
    size_t src_off, src_len; /* the term as written, in query.src */
    size_t val_off, val_len; /* the value, unquoted, in query.vals */
    size_t raw_off, raw_len; /* the value as written (quotes included) */
    bool quoted, wildcard, regex;
    enum qflag flag;
    bool has_since, has_until;
    int64_t since, until; /* days since 1970-01-01, both inclusive */
    uint64_t size;
};

/*
 * A parsed query: the text, the unquoted values and the nodes, three
 * allocations in all, freed by query_free. Nodes refer to each other by
 * index, so the node array may grow while parsing.
 */
struct query {
    char *src; /* owned copy of the text */
    size_t src_len;
    struct tbuf vals; /* unquoted values, addressed by offset */
    struct qnode *nodes;
    size_t n, cap;
    size_t root; /* QNONE: the empty query */
};

/*
 * Error sentences.
 */

/* A term quoted back to the user: at most QUERY_ERR_CLIP bytes, cut on a UTF-8 boundary. */
struct clip {
    int n;
    const char *p;
    const char *more;
};

static struct clip
clip(const char *p, size_t len)
{
    struct clip c = {(int)len, p, ""};
    if (len > QUERY_ERR_CLIP) {
        size_t n = QUERY_ERR_CLIP;
        while (n > 0 && ((unsigned char)p[n] & 0xc0) == 0x80)
            n--;
        c.n = (int)n;
        c.more = "...";
    }
    return c;
}

#define CLIP_FMT "\"%.*s%s\""
#define CLIP_ARG(c) (c).n, (c).p, (c).more

/*
 * Lexical helpers.
 */

static bool
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool
is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char
lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* True when P[0..LEN) equals the lower-case WORD, in any case. */
static bool
word_is(const char *p, size_t len, const char *word)
{
    size_t wl = strlen(word);
    if (len != wl)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (lower(p[i]) != word[i])
            return false;
    }
    return true;
}

/* Strict UTF-8 (RFC 3629); returns the offset of the first bad byte, or LEN. */
static size_t
utf8_check(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        size_t n;
        uint32_t v, min;
        if (c == 0)
            return i;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 2, v = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3, v = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4, v = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i < n)
            return i;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return i;
            v = (v << 6) | (p[i + k] & 0x3f);
        }
        if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
            return i;
        i += n;
    }
    return len;
}

/*
 * Calendar arithmetic on day numbers (days since 1970-01-01, proleptic
 * Gregorian), without the C library's time zone.
 */

static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (int64_t)(m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static unsigned
days_in_month(int64_t y, unsigned m)
{
    static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return mdays[m - 1];
}

#define QUERY_MIN_YEAR 1
#define QUERY_MAX_YEAR 9999

static bool
day_in_range(int64_t day)
{
    return day >= days_from_civil(QUERY_MIN_YEAR, 1, 1) &&
           day <= days_from_civil(QUERY_MAX_YEAR, 12, 31);
}

/* 0 is Sunday, as in struct tm (1970-01-01 was a Thursday). */
static int
weekday(int64_t day)
{
    int64_t w = (day + 4) % 7;
    return (int)(w < 0 ? w + 7 : w);
}

/* Parses LEN > 0 decimal digits into *OUT, failing above MAX. */
static bool
parse_number(const char *p, size_t len, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!is_digit(p[i]))
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
        if (v > max)
            return false;
    }
    *out = v;
    return true;
}

/*
 * The parser.
 */

enum tok_kind {
    TK_END,
    TK_LPAREN,
    TK_RPAREN,
    TK_AND,
    TK_OR,
    TK_NOT,
    TK_TERM,
};

struct parser {
    struct query *q;
    struct tern_err *err;
    size_t pos;      /* next byte of q->src to lex */
    unsigned depth;  /* open parentheses and negations */
    bool have_today; /* today is computed on first use */
    int64_t today;

    enum tok_kind tok; /* the current token */
    size_t tok_off, tok_len;
    size_t tok_node; /* TK_TERM: its node */
};

static enum tern_status
node_new(struct query *q, enum qnode_kind kind, size_t *out)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        struct qnode *v = realloc(q->nodes, cap * sizeof(*v));
        if (!v)
            return TERN_E_NOMEM;
        q->nodes = v;
        q->cap = cap;
    }
    struct qnode *nd = &q->nodes[q->n];
    memset(nd, 0, sizeof(*nd));
    nd->kind = kind;
    nd->child = nd->last = nd->next = QNONE;
    *out = q->n++;
    return TERN_OK;
}

/*
 * Appends CHILD to the AND or OR node PARENT. A child of the same kind is
 * spliced in (its children are adopted), so "(a b) c" is one AND of three.
 */
static void
node_adopt(struct query *q, size_t parent, size_t child)
{
    struct qnode *p = &q->nodes[parent];
    struct qnode *c = &q->nodes[child];
    size_t first = child, last = child;
    if (c->kind == p->kind) {
        first = c->child;
        last = c->last;
    }
    if (p->last == QNONE)
        p->child = first;
    else
        q->nodes[p->last].next = first;
    p->last = last;
}

/* Combines LEFT and RIGHT under an AND or OR node; *OUT is the result. */
static enum tern_status
node_join(struct query *q, enum qnode_kind kind, size_t left, size_t right, size_t *out)
{
    size_t parent = left;
    if (q->nodes[left].kind != kind) {
        enum tern_status st = node_new(q, kind, &parent);
        if (st)
            return st;
        node_adopt(q, parent, left);
    }
    node_adopt(q, parent, right);
    *out = parent;
    return TERN_OK;
}

static enum tern_status
today_get(struct parser *ps, int64_t *out)
{
    if (!ps->have_today) {
        time_t now = time(NULL);
        struct tm tm;
        if (now == (time_t)-1 || !gmtime_r(&now, &tm))
            return tern_err_set(ps->err, TERN_E_IO, "cannot read the current date");
        ps->today = days_from_civil((int64_t)tm.tm_year + 1900, (unsigned)tm.tm_mon + 1,
                                    (unsigned)tm.tm_mday);
        ps->have_today = true;
    }
    *out = ps->today;
    return TERN_OK;
}

/*
 * Parses one end of a date range (P[0..LEN), LEN > 0) into the first and
 * last day it describes. On a format error returns TERN_E_USAGE and sets
 * *WHY to a clause for the sentence.
 */
static enum tern_status
parse_date_end(struct parser *ps, const char *p, size_t len, int64_t *first, int64_t *last,
               const char **why)
{
    enum tern_status st;
    int64_t today;
    *why = "dates are YYYY-MM-DD, YYYY-MM, YYYY, today, yesterday or Nd, Nw, NM, Ny";

    if (word_is(p, len, "today") || word_is(p, len, "yesterday")) {
        if ((st = today_get(ps, &today)))
            return st;
        *first = *last = today - (lower(p[0]) == 'y');
        return TERN_OK;
    }

    /* Relative: digits and one unit letter. */
    size_t nd = 0;
    while (nd < len && is_digit(p[nd]))
        nd++;
    if (nd > 0 && nd == len - 1 && is_alpha(p[nd])) {
        uint64_t n;
        char unit = p[nd];
        if (unit == 'm' || unit == 'h' || unit == 's' || unit == 'H' || unit == 'S') {
            *why = "date: has whole-day precision, so hours, minutes and seconds cannot be "
                   "searched (\"m\" is minutes, as in notmuch; months are \"M\")";
            return TERN_E_USAGE;
        }
        if (unit != 'd' && unit != 'w' && unit != 'M' && unit != 'y' && unit != 'D' &&
            unit != 'W' && unit != 'Y')
            return TERN_E_USAGE;
        if (!parse_number(p, nd, 3700000, &n)) {
            *why = "the date is out of range";
            return TERN_E_USAGE;
        }
        if ((st = today_get(ps, &today)))
            return st;
        int64_t y;
        unsigned m, d;
        civil_from_days(today, &y, &m, &d);
        switch (unit) {
        case 'd':
        case 'D': *first = *last = today - (int64_t)n; break;
        case 'w':
        case 'W': {
            /* notmuch rounds weeks to whole weeks that start on Sunday. */
            int64_t day = today - 7 * (int64_t)n;
            *first = day - weekday(day);
            *last = *first + 6;
            break;
        }
        case 'M': {
            int64_t months = y * 12 + (m - 1) - (int64_t)n;
            int64_t yy = months >= 0 ? months / 12 : -((-months + 11) / 12);
            unsigned mm = (unsigned)(months - yy * 12) + 1;
            if (yy < QUERY_MIN_YEAR) {
                *why = "the date is out of range";
                return TERN_E_USAGE;
            }
            *first = days_from_civil(yy, mm, 1);
            *last = days_from_civil(yy, mm, days_in_month(yy, mm));
            break;
        }
        default: /* years */
            if (y - (int64_t)n < QUERY_MIN_YEAR) {
                *why = "the date is out of range";
                return TERN_E_USAGE;
            }
            *first = days_from_civil(y - (int64_t)n, 1, 1);
            *last = days_from_civil(y - (int64_t)n, 12, 31);
            break;
        }
        if (!day_in_range(*first) || !day_in_range(*last)) {
            *why = "the date is out of range";
            return TERN_E_USAGE;
        }
        return TERN_OK;
    }

    /* Absolute: YYYY, YYYY-MM or YYYY-MM-DD (month and day of 1 or 2 digits). */
    uint64_t year, month = 0, day = 0;
    if (len < 4 || !parse_number(p, 4, 9999, &year) || (len > 4 && p[4] != '-'))
        return TERN_E_USAGE;
    if (year < QUERY_MIN_YEAR) {
        *why = "the date is out of range";
        return TERN_E_USAGE;
    }
    if (len == 4) {
        *first = days_from_civil((int64_t)year, 1, 1);
        *last = days_from_civil((int64_t)year, 12, 31);
        return TERN_OK;
    }
    const char *mp = p + 5;
    const char *end = p + len;
    const char *dash = memchr(mp, '-', (size_t)(end - mp));
    const char *mend = dash ? dash : end;
    if (mend - mp < 1 || mend - mp > 2 || !parse_number(mp, (size_t)(mend - mp), 12, &month) ||
        month < 1)
        return TERN_E_USAGE;
    if (!dash) {
        *first = days_from_civil((int64_t)year, (unsigned)month, 1);
        *last = days_from_civil((int64_t)year, (unsigned)month,
                                days_in_month((int64_t)year, (unsigned)month));
        return TERN_OK;
    }
    const char *dp = dash + 1;
    if (end - dp < 1 || end - dp > 2 || !parse_number(dp, (size_t)(end - dp), 31, &day) ||
        day < 1 || day > days_in_month((int64_t)year, (unsigned)month)) {
        return TERN_E_USAGE;
    }
    *first = *last = days_from_civil((int64_t)year, (unsigned)month, (unsigned)day);
    return TERN_OK;
}

/* The sentence for a date term that does not parse; WHY says what is expected. */
static enum tern_status
date_error(struct parser *ps, const struct qnode *nd, const char *why)
{
    struct clip c = clip(ps->q->src + nd->src_off, nd->src_len);
    return tern_err_set(ps->err, TERN_E_USAGE, "bad date in " CLIP_FMT ": %s", CLIP_ARG(c), why);
}

static enum tern_status
parse_date(struct parser *ps, struct qnode *nd, const char *v, size_t len)
{
    const char *a = v, *b = v;
    size_t alen = len, blen = len;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] == '.' && v[i + 1] == '.') {
            alen = i;
            b = v + i + 2;
            blen = len - i - 2;
            if (blen == 1 && b[0] == '!') { /* notmuch: A..! is A..A */
                b = a;
                blen = alen;
            }
            break;
        }
    }
    if (alen == 0 && blen == 0)
        return date_error(ps, nd, "give a date before or after \"..\"");
    const char *why = "";
    int64_t first, last;
    enum tern_status st;
    if (alen) {
        if ((st = parse_date_end(ps, a, alen, &first, &last, &why)))
            return st == TERN_E_USAGE ? date_error(ps, nd, why) : st;
        nd->has_since = true;
        nd->since = first;
    }
    if (blen) {
        if ((st = parse_date_end(ps, b, blen, &first, &last, &why)))
            return st == TERN_E_USAGE ? date_error(ps, nd, why) : st;
        nd->has_until = true;
        nd->until = last;
    }
    return TERN_OK;
}

static enum tern_status
parse_size(struct parser *ps, struct qnode *nd, const char *v, size_t len)
{
    uint64_t mult = 1, n;
    size_t digits = len;
    if (len > 1) {
        switch (lower(v[len - 1])) {
        case 'k':
            mult = 1024;
            digits--;
            break;
        case 'm':
            mult = 1024 * 1024;
            digits--;
            break;
        case 'g':
            mult = 1024 * 1024 * 1024;
            digits--;
            break;
        default: break;
        }
    }
    struct clip c = clip(ps->q->src + nd->src_off, nd->src_len);
    if (!parse_number(v, digits, UINT64_MAX / 10 - 10, &n))
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "bad size in " CLIP_FMT ": sizes are a number of bytes, "
                            "optionally followed by k, M or G",
                            CLIP_ARG(c));
    if (n > UINT32_MAX / mult || n * mult > UINT32_MAX)
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "size in " CLIP_FMT " is too large: IMAP sizes stop at "
                            "4294967295 bytes",
                            CLIP_ARG(c));
    nd->size = n * mult;
    return TERN_OK;
}

static const struct {
    const char *name;
    enum qflag flag;
} qflags[] = {
    {"unread", QFL_UNREAD},    {"read", QFL_READ},           {"seen", QFL_READ},
    {"flagged", QFL_FLAGGED},  {"unflagged", QFL_UNFLAGGED}, {"answered", QFL_ANSWERED},
    {"replied", QFL_ANSWERED}, {"deleted", QFL_DELETED},     {"draft", QFL_DRAFT},
};

static const struct {
    const char *name;
    enum qfield field;
} qprefixes[] = {
    {"from", QF_FROM},
    {"to", QF_TO},
    {"cc", QF_CC},
    {"bcc", QF_BCC},
    {"subject", QF_SUBJECT},
    {"body", QF_BODY},
    {"id", QF_ID},
    {"mid", QF_ID},
    {"tag", QF_KEYWORD},
    {"keyword", QF_KEYWORD},
    {"is", QF_FLAG},
    {"date", QF_DATE},
    {"larger", QF_LARGER},
    {"smaller", QF_SMALLER},
    {"thread", QF_NOTMUCH},
    {"path", QF_NOTMUCH},
    {"folder", QF_NOTMUCH},
    {"mimetype", QF_NOTMUCH},
    {"attachment", QF_NOTMUCH},
    {"property", QF_NOTMUCH},
    {"lastmod", QF_NOTMUCH},
    {"query", QF_NOTMUCH},
};

/* Stores VAL in the query's value buffer and points ND at it. */
static enum tern_status
set_value(struct query *q, struct qnode *nd, const char *val, size_t len)
{
    nd->val_off = tbuf_len(&q->vals);
    nd->val_len = len;
    /* A NUL keeps every value addressable as a C string. */
    enum tern_status st = tbuf_add(&q->vals, val, len);
    return st ? st : tbuf_addc(&q->vals, '\0');
}

/*
 * Reads a quoted string whose opening quote is at q->src[*pos]; "" is a
 * quote. The unquoted text goes to the value buffer; *POS ends after the
 * closing quote, which must be followed by a space, a parenthesis or the
 * end.
 */
static enum tern_status
lex_quoted(struct parser *ps, size_t start, size_t *pos, struct qnode *nd)
{
    struct query *q = ps->q;
    const char *s = q->src;
    size_t i = *pos + 1;
    size_t val_off = tbuf_len(&q->vals);
    enum tern_status st;
    for (;;) {
        const char *qt = i < q->src_len ? memchr(s + i, '"', q->src_len - i) : NULL;
        if (!qt) {
            struct clip c = clip(s + start, q->src_len - start);
            return tern_err_set(ps->err, TERN_E_USAGE, "unterminated quote in " CLIP_FMT,
                                CLIP_ARG(c));
        }
        size_t at = (size_t)(qt - s);
        bool doubled = at + 1 < q->src_len && s[at + 1] == '"';
        if ((st = tbuf_add(&q->vals, s + i, at - i + doubled)))
            return st;
        i = at + 1 + doubled;
        if (!doubled)
            break;
    }
    if (i < q->src_len && !is_space(s[i]) && s[i] != '(' && s[i] != ')') {
        struct clip c = clip(s + start, i + 1 - start);
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "unexpected text after the closing quote in " CLIP_FMT
                            " (put a space between terms)",
                            CLIP_ARG(c));
    }
    nd->val_off = val_off;
    nd->val_len = tbuf_len(&q->vals) - val_off;
    nd->quoted = true;
    *pos = i;
    return tbuf_addc(&q->vals, '\0');
}

static bool
is_regex(const char *v, size_t len)
{
    return len >= 2 && v[0] == '/' && v[len - 1] == '/';
}

/* True when C can be part of a word (ASCII letters and digits; any 8-bit byte). */
static bool
is_word_byte(char c)
{
    return is_alpha(c) || is_digit(c) || (unsigned char)c >= 0x80;
}

/* A trailing "*" after something with a word in it: "foo*" (but "**" is text). */
static bool
is_wildcard(const char *v, size_t len)
{
    if (len < 2 || v[len - 1] != '*')
        return false;
    for (size_t i = 0; i + 1 < len; i++) {
        if (is_word_byte(v[i]))
            return true;
    }
    return false;
}

/* Fills in a prefixed term once its value is known. */
static enum tern_status
finish_prefixed(struct parser *ps, struct qnode *nd)
{
    struct query *q = ps->q;
    const char *v = q->vals.data + nd->val_off;
    size_t len = nd->val_len;
    struct clip c = clip(q->src + nd->src_off, nd->src_len);

    if (len == 0 && !nd->quoted && nd->src_off + nd->src_len < q->src_len &&
        q->src[nd->src_off + nd->src_len] == '(')
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "%s: needs a value in " CLIP_FMT ": prefix:(...) groups are not "
                            "supported (write %s:a %s:b)",
                            nd->prefix, CLIP_ARG(c), nd->prefix, nd->prefix);
    /* "<>" is an empty Message-ID once its brackets are taken off. */
    if (len == 0 || (nd->field == QF_ID && !nd->regex && len == 2 && v[0] == '<' && v[1] == '>'))
        return tern_err_set(ps->err, TERN_E_USAGE, "%s: needs a value in " CLIP_FMT, nd->prefix,
                            CLIP_ARG(c));
    switch (nd->field) {
    case QF_FLAG:
        for (size_t i = 0; i < sizeof(qflags) / sizeof(qflags[0]); i++) {
            if (word_is(v, len, qflags[i].name)) {
                nd->flag = qflags[i].flag;
                return TERN_OK;
            }
        }
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "unknown state in " CLIP_FMT ": is: takes unread, read, seen, "
                            "flagged, unflagged, answered, replied, deleted or draft "
                            "(use tag: for keywords)",
                            CLIP_ARG(c));
    case QF_DATE: return parse_date(ps, nd, v, len);
    case QF_LARGER:
    case QF_SMALLER: return parse_size(ps, nd, v, len);
    default:
        nd->wildcard = !nd->quoted && is_wildcard(v, len);
        nd->regex = is_regex(v, len);
        return TERN_OK;
    }
}

static bool
prefix_char(char c)
{
    return is_alpha(c) || is_digit(c) || c == '_' || c == '-';
}

/* Lexes a word (bare or prefixed) starting at ps->pos into a TK_TERM or an operator. */
static enum tern_status
lex_word(struct parser *ps)
{
    struct query *q = ps->q;
    const char *s = q->src;
    size_t start = ps->pos, i = start;
    while (i < q->src_len && !is_space(s[i]) && s[i] != '(' && s[i] != ')' && s[i] != '"')
        i++;
    const char *w = s + start;
    size_t wlen = i - start;
    bool quote_follows = i < q->src_len && s[i] == '"';

    ps->tok_off = start;
    ps->tok_len = wlen;
    if (!quote_follows) {
        if (word_is(w, wlen, "and") || word_is(w, wlen, "or") || word_is(w, wlen, "not")) {
            ps->tok = lower(w[0]) == 'a' ? TK_AND : lower(w[0]) == 'o' ? TK_OR : TK_NOT;
            ps->pos = i;
            return TERN_OK;
        }
        size_t base = wlen;
        const char *slash = memchr(w, '/', wlen);
        if (slash)
            base = (size_t)(slash - w);
        if (word_is(w, wlen, "xor") || word_is(w, base, "near") || word_is(w, base, "adj")) {
            struct clip c = clip(w, wlen);
            return tern_err_set(ps->err, TERN_E_USAGE,
                                "the operator " CLIP_FMT " is not supported; quote it to "
                                "search for the word",
                                CLIP_ARG(c));
        }
        if (wlen == 1 && w[0] == '*')
            return tern_err_set(ps->err, TERN_E_USAGE,
                                "\"*\" (every message) must be the whole query");
    }

    size_t nidx;
    enum tern_status st = node_new(q, QN_TERM, &nidx);
    if (st)
        return st;
    struct qnode *nd = &q->nodes[nidx];
    nd->src_off = start;

    /* A prefix: [A-Za-z][A-Za-z0-9_-]* ":" */
    const char *colon = memchr(w, ':', wlen);
    bool prefixed = colon && colon > w && is_alpha(w[0]);
    for (const char *c = w; prefixed && c < colon; c++)
        prefixed = prefix_char(*c);

    if (!prefixed) {
        if (quote_follows) {
            struct clip c = clip(w, wlen + 1);
            return tern_err_set(ps->err, TERN_E_USAGE,
                                "unexpected quote in " CLIP_FMT
                                " (put a space before a quoted phrase)",
                                CLIP_ARG(c));
        }
        nd->field = QF_TEXT;
        nd->src_len = wlen;
        nd->raw_off = start;
        nd->raw_len = wlen;
        if ((st = set_value(q, nd, w, wlen)))
            return st;
        nd->wildcard = is_wildcard(w, wlen);
        nd->regex = is_regex(w, wlen);
        ps->tok = TK_TERM;
        ps->tok_node = nidx;
        ps->pos = i;
        return TERN_OK;
    }

    size_t nlen = (size_t)(colon - w);
    for (size_t k = 0; k < sizeof(qprefixes) / sizeof(qprefixes[0]); k++) {
        if (word_is(w, nlen, qprefixes[k].name)) {
            nd->field = qprefixes[k].field;
            nd->prefix = qprefixes[k].name;
            break;
        }
    }
    if (!nd->prefix) {
        size_t end = i;
        while (end < q->src_len && !is_space(s[end]))
            end++;
        struct clip cn = clip(w, nlen + 1);
        struct clip ct = clip(w, end - start);
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "unknown search prefix " CLIP_FMT " in " CLIP_FMT
                            " (quote the word to search for it as text)",
                            CLIP_ARG(cn), CLIP_ARG(ct));
    }

    size_t vstart = (size_t)(colon - s) + 1;
    nd->raw_off = vstart;
    if (quote_follows && vstart == i) {
        size_t pos = i;
        if ((st = lex_quoted(ps, start, &pos, nd)))
            return st;
        nd->src_len = pos - start;
        nd->raw_len = pos - vstart;
        i = pos;
    } else if (quote_follows) {
        struct clip c = clip(w, wlen + 1);
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "unexpected quote in " CLIP_FMT
                            " (quote the whole value: prefix:\"...\")",
                            CLIP_ARG(c));
    } else {
        nd->src_len = wlen;
        nd->raw_len = i - vstart;
        if ((st = set_value(q, nd, s + vstart, i - vstart)))
            return st;
    }
    if ((st = finish_prefixed(ps, nd)))
        return st;
    ps->tok = TK_TERM;
    ps->tok_node = nidx;
    ps->pos = i;
    return TERN_OK;
}

static enum tern_status
lex(struct parser *ps)
{
    struct query *q = ps->q;
    const char *s = q->src;
    while (ps->pos < q->src_len && is_space(s[ps->pos]))
        ps->pos++;
    size_t start = ps->pos;
    ps->tok_off = start;
    ps->tok_len = 1;
    if (start == q->src_len) {
        ps->tok = TK_END;
        ps->tok_len = 0;
        return TERN_OK;
    }
    switch (s[start]) {
    case '(':
        ps->tok = TK_LPAREN;
        ps->pos++;
        return TERN_OK;
    case ')':
        ps->tok = TK_RPAREN;
        ps->pos++;
        return TERN_OK;
    case '-':
        if (start + 1 < q->src_len && !is_space(s[start + 1]) && s[start + 1] != ')') {
            ps->tok = TK_NOT;
            ps->pos++;
            return TERN_OK;
        }
        return tern_err_set(ps->err, TERN_E_USAGE, "\"-\" must be followed by a term");
    case '"': {
        size_t nidx, pos = start;
        enum tern_status st = node_new(q, QN_TERM, &nidx);
        if (st)
            return st;
        if ((st = lex_quoted(ps, start, &pos, &q->nodes[nidx])))
            return st;
        struct qnode *nd = &q->nodes[nidx];
        nd->field = QF_TEXT;
        nd->src_off = nd->raw_off = start;
        nd->src_len = nd->raw_len = pos - start;
        if (nd->val_len == 0)
            return tern_err_set(ps->err, TERN_E_USAGE, "empty phrase \"\" in the query");
        ps->tok = TK_TERM;
        ps->tok_node = nidx;
        ps->tok_len = pos - start;
        ps->pos = pos;
        return TERN_OK;
    }
    default: return lex_word(ps);
    }
}

static bool
starts_operand(enum tok_kind k)
{
    return k == TK_TERM || k == TK_LPAREN || k == TK_NOT;
}

/* The sentence for an operator at the current token with nothing usable after it. */
static enum tern_status
err_missing_after(struct parser *ps, size_t op_off, size_t op_len)
{
    struct clip c = clip(ps->q->src + op_off, op_len);
    return tern_err_set(ps->err, TERN_E_USAGE, "the operator " CLIP_FMT " needs a term after it",
                        CLIP_ARG(c));
}

static enum tern_status parse_or(struct parser *ps, size_t *out);

static enum tern_status
depth_enter(struct parser *ps)
{
    if (++ps->depth > QUERY_MAX_DEPTH)
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "the query nests deeper than %d levels of parentheses and "
                            "negations",
                            QUERY_MAX_DEPTH);
    return TERN_OK;
}

static enum tern_status
parse_unary(struct parser *ps, size_t *out)
{
    enum tern_status st;
    switch (ps->tok) {
    case TK_NOT: {
        size_t op_off = ps->tok_off, op_len = ps->tok_len, child, nidx;
        if ((st = depth_enter(ps)) || (st = lex(ps)))
            return st;
        if (!starts_operand(ps->tok))
            return err_missing_after(ps, op_off, op_len);
        if ((st = parse_unary(ps, &child)) || (st = node_new(ps->q, QN_NOT, &nidx)))
            return st;
        ps->q->nodes[nidx].child = ps->q->nodes[nidx].last = child;
        ps->depth--;
        *out = nidx;
        return TERN_OK;
    }
    case TK_TERM: *out = ps->tok_node; return lex(ps);
    case TK_LPAREN: {
        size_t open = ps->tok_off;
        if ((st = depth_enter(ps)) || (st = lex(ps)))
            return st;
        if (ps->tok == TK_RPAREN)
            return tern_err_set(ps->err, TERN_E_USAGE, "empty parentheses \"()\" in the query");
        if ((st = parse_or(ps, out)))
            return st;
        if (ps->tok != TK_RPAREN) {
            struct clip c = clip(ps->q->src + open, ps->q->src_len - open);
            return tern_err_set(ps->err, TERN_E_USAGE, "unbalanced \"(\" in " CLIP_FMT,
                                CLIP_ARG(c));
        }
        ps->depth--;
        return lex(ps);
    }
    case TK_AND:
    case TK_OR: {
        struct clip c = clip(ps->q->src + ps->tok_off, ps->tok_len);
        return tern_err_set(ps->err, TERN_E_USAGE,
                            "the operator " CLIP_FMT " needs a term before it", CLIP_ARG(c));
    }
    case TK_RPAREN: return tern_err_set(ps->err, TERN_E_USAGE, "unbalanced \")\" in the query");
    case TK_END: break;
    }
    return tern_err_set(ps->err, TERN_E_USAGE, "the query ends where a term was expected");
}

static enum tern_status
parse_and(struct parser *ps, size_t *out)
{
    size_t node, right;
    enum tern_status st = parse_unary(ps, &node);
    while (!st) {
        if (ps->tok == TK_AND) {
            size_t op_off = ps->tok_off, op_len = ps->tok_len;
            if ((st = lex(ps)))
                break;
            if (!starts_operand(ps->tok))
                return err_missing_after(ps, op_off, op_len);
        } else if (!starts_operand(ps->tok)) {
            break;
        }
        if ((st = parse_unary(ps, &right)) || (st = node_join(ps->q, QN_AND, node, right, &node)))
            break;
    }
    *out = node;
    return st;
}

static enum tern_status
parse_or(struct parser *ps, size_t *out)
{
    size_t node, right;
    enum tern_status st = parse_and(ps, &node);
    while (!st && ps->tok == TK_OR) {
        size_t op_off = ps->tok_off, op_len = ps->tok_len;
        if ((st = lex(ps)))
            break;
        if (!starts_operand(ps->tok))
            return err_missing_after(ps, op_off, op_len);
        if ((st = parse_and(ps, &right)) || (st = node_join(ps->q, QN_OR, node, right, &node)))
            break;
    }
    *out = node;
    return st;
}

void
query_free(struct query *q)
{
    if (!q)
        return;
    free(q->src);
    tbuf_free(&q->vals);
    free(q->nodes);
    free(q);
}

enum tern_status
query_parse(const char *text, size_t len, struct query **out, struct tern_err *err)
{
    if (!out)
        return tern_err_set(err, TERN_E_USAGE, "query_parse needs somewhere to put the query");
    *out = NULL;
    if (!text && len)
        return tern_err_set(err, TERN_E_USAGE, "query_parse was given no text");

    size_t bad = utf8_check(text ? text : "", len);
    if (bad < len) {
        if (text[bad] == '\0')
            return tern_err_set(err, TERN_E_USAGE, "the query contains a NUL byte (at byte %zu)",
                                bad);
        return tern_err_set(err, TERN_E_USAGE, "the query is not valid UTF-8 (at byte %zu)", bad);
    }

    struct query *q = malloc(sizeof(*q));
    if (!q)
        return TERN_E_NOMEM;
    memset(q, 0, sizeof(*q));
    tbuf_init(&q->vals, 0);
    q->root = QNONE;
    q->src = malloc(len + 1);
    if (!q->src) {
        query_free(q);
        return TERN_E_NOMEM;
    }
    if (len)
        memcpy(q->src, text, len);
    q->src[len] = '\0';
    q->src_len = len;

    /* notmuch: a query of exactly "*" matches every message. */
    size_t a = 0, b = len;
    while (a < b && is_space(q->src[a]))
        a++;
    while (b > a && is_space(q->src[b - 1]))
        b--;
    if (b - a == 1 && q->src[a] == '*') {
        *out = q;
        return TERN_OK;
    }

    struct parser ps = {.q = q, .err = err};
    enum tern_status st = lex(&ps);
    if (!st && ps.tok != TK_END) {
        /* parse_or stops only at the end or at a ")" it did not open. */
        st = parse_or(&ps, &q->root);
        if (!st && ps.tok != TK_END)
            st = tern_err_set(err, TERN_E_USAGE, "unbalanced \")\" in the query");
    }
    if (st) {
        if (st == TERN_E_NOMEM && !tern_err_msg(err)[0])
            tern_err_set(err, st, "out of memory while parsing the query");
        query_free(q);
        return st;
    }
    *out = q;
    return TERN_OK;
}

/*
 * IMAP SEARCH (RFC 3501 §6.4.4, RFC 9051 §6.4.4). Search keys side by side
 * are ANDed; OR and NOT take exactly one key each, so a group of several
 * keys in their place gets parentheses.
 */

struct imap_emit {
    const struct query *q;
    struct imap_args args;
    struct tern_err *err;
    bool sep; /* a key came before: the next one needs a space */
};

/* Appends raw key text, preceded by a space when a key came before. */
static enum tern_status em_raw(struct imap_emit *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static enum tern_status
em_raw(struct imap_emit *e, const char *fmt, ...)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = e->sep ? tbuf_addc(&b, ' ') : TERN_OK;
    if (!st) {
        va_list ap;
        va_start(ap, fmt);
        st = tbuf_vaddf(&b, fmt, ap);
        va_end(ap);
    }
    if (!st)
        st = imap_args_raw(&e->args, "%s", tbuf_ptr(&b));
    tbuf_free(&b);
    e->sep = true;
    return st;
}

/* A key with a string argument: "FROM " then the string. */
static enum tern_status
em_key_string(struct imap_emit *e, const char *key, const char *v, size_t len)
{
    enum tern_status st = em_raw(e, "%s ", key);
    return st ? st : imap_args_string(&e->args, v, len);
}

static enum tern_status
em_date(struct imap_emit *e, const char *key, int64_t day)
{
    static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    /* RFC 3501 §9: date-text = date-day "-" date-month "-" date-year */
    return em_raw(e, "%s %u-%s-%04lld", key, d, months[m - 1], (long long)y);
}

/* RFC 3501 §9: flag-keyword = atom; ATOM-CHAR excludes atom-specials. */
static bool
imap_atom_ok(const char *v, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c))
            return false;
    }
    return true;
}

/* True when the node emits several keys side by side (OR and NOT emit one). */
static bool
emits_group(const struct qnode *nd)
{
    if (nd->kind == QN_AND)
        return true;
    return nd->kind == QN_TERM && nd->field == QF_DATE && nd->has_since && nd->has_until &&
           nd->until < days_from_civil(QUERY_MAX_YEAR, 12, 31);
}

static enum tern_status em_node(struct imap_emit *e, size_t idx);

/* Emits the node as exactly one search key, adding parentheses if needed. */
static enum tern_status
em_single(struct imap_emit *e, size_t idx)
{
    if (!emits_group(&e->q->nodes[idx]))
        return em_node(e, idx);
    enum tern_status st = em_raw(e, "(");
    if (st)
        return st;
    e->sep = false;
    if ((st = em_node(e, idx)))
        return st;
    st = imap_args_raw(&e->args, ")");
    e->sep = true;
    return st;
}

static enum tern_status
em_term(struct imap_emit *e, const struct qnode *nd)
{
    const struct query *q = e->q;
    const char *v = q->vals.data + nd->val_off;
    struct clip c = clip(q->src + nd->src_off, nd->src_len);

    if (nd->field == QF_NOTMUCH)
        return tern_err_set(e->err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched on an IMAP server: %s: is "
                                     "notmuch-only (use search --local)",
                            CLIP_ARG(c), nd->prefix);
    if (nd->wildcard)
        return tern_err_set(e->err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched on an IMAP server: IMAP SEARCH has "
                                     "no wildcards (quote the word to search for a literal \"*\")",
                            CLIP_ARG(c));
    if (nd->regex)
        return tern_err_set(e->err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched on an IMAP server: IMAP SEARCH has "
                                     "no regular expressions",
                            CLIP_ARG(c));

    switch (nd->field) {
    case QF_TEXT: return em_key_string(e, "TEXT", v, nd->val_len);
    case QF_FROM: return em_key_string(e, "FROM", v, nd->val_len);
    case QF_TO: return em_key_string(e, "TO", v, nd->val_len);
    case QF_CC: return em_key_string(e, "CC", v, nd->val_len);
    case QF_BCC: return em_key_string(e, "BCC", v, nd->val_len);
    case QF_SUBJECT: return em_key_string(e, "SUBJECT", v, nd->val_len);
    case QF_BODY: return em_key_string(e, "BODY", v, nd->val_len);
    case QF_ID: {
        /*
         * notmuch's id: is the Message-ID without its angle brackets. The
         * server matches substrings, so searching for "<id>" keeps
         * "1@x" from also matching "11@x".
         */
        if (nd->val_len >= 2 && v[0] == '<' && v[nd->val_len - 1] == '>')
            return em_key_string(e, "HEADER Message-ID", v, nd->val_len);
        struct tbuf b;
        tbuf_init(&b, 0);
        enum tern_status st = tbuf_addf(&b, "<%s>", v);
        if (!st)
            st = em_key_string(e, "HEADER Message-ID", tbuf_ptr(&b), tbuf_len(&b));
        tbuf_free(&b);
        return st;
    }
    case QF_KEYWORD:
        if (!imap_atom_ok(v, nd->val_len)) {
            struct clip cv = clip(v, nd->val_len);
            return tern_err_set(e->err, TERN_E_USAGE,
                                "bad keyword in " CLIP_FMT ": " CLIP_FMT " is not an IMAP "
                                "keyword (no spaces, controls, 8-bit or any of ( ) { %% * "
                                "\" \\ ])",
                                CLIP_ARG(c), CLIP_ARG(cv));
        }
        return em_raw(e, "KEYWORD %s", v);
    case QF_FLAG:
        switch (nd->flag) {
        case QFL_UNREAD: return em_raw(e, "UNSEEN");
        case QFL_READ: return em_raw(e, "SEEN");
        case QFL_FLAGGED: return em_raw(e, "FLAGGED");
        case QFL_UNFLAGGED: return em_raw(e, "UNFLAGGED");
        case QFL_ANSWERED: return em_raw(e, "ANSWERED");
        case QFL_DELETED: return em_raw(e, "DELETED");
        case QFL_DRAFT: return em_raw(e, "DRAFT");
        }
        break;
    case QF_DATE: {
        /* date: is the Date header, so SENTSINCE/SENTBEFORE (date >= A, < B+1). */
        enum tern_status st = TERN_OK;
        bool any = false;
        if (nd->has_since) {
            st = em_date(e, "SENTSINCE", nd->since);
            any = true;
        }
        if (!st && nd->has_until && nd->until < days_from_civil(QUERY_MAX_YEAR, 12, 31)) {
            st = em_date(e, "SENTBEFORE", nd->until + 1);
            any = true;
        }
        if (!st && !any)
            st = em_raw(e, "ALL"); /* date:..9999-12-31 bounds nothing */
        return st;
    }
    case QF_LARGER: return em_raw(e, "LARGER %llu", (unsigned long long)nd->size);
    case QF_SMALLER: return em_raw(e, "SMALLER %llu", (unsigned long long)nd->size);
    case QF_NOTMUCH: break;
    }
    return tern_err_set(e->err, TERN_E_USAGE, "internal error: unknown term in the query");
}

static enum tern_status
em_node(struct imap_emit *e, size_t idx)
{
    const struct qnode *nd = &e->q->nodes[idx];
    enum tern_status st = TERN_OK;
    switch (nd->kind) {
    case QN_TERM: return em_term(e, nd);
    case QN_AND:
        /* Keys side by side are ANDed already: no parentheses needed here. */
        for (size_t c = nd->child; c != QNONE && !st; c = e->q->nodes[c].next)
            st = em_node(e, c);
        return st;
    case QN_OR:
        /* OR is binary: a or b or c is "OR a OR b c". */
        for (size_t c = nd->child; c != QNONE && !st; c = e->q->nodes[c].next) {
            if (e->q->nodes[c].next != QNONE)
                st = em_raw(e, "OR");
            if (!st)
                st = em_single(e, c);
        }
        return st;
    case QN_NOT: st = em_raw(e, "NOT"); return st ? st : em_single(e, nd->child);
    }
    return TERN_E_USAGE;
}

enum tern_status
query_to_imap(const struct query *q, struct imap_args *args, struct tern_err *err)
{
    if (!q || !args)
        return tern_err_set(err, TERN_E_USAGE, "query_to_imap needs a query and an argument list");
    struct imap_emit e = {.q = q, .err = err};
    imap_args_init(&e.args);
    enum tern_status st = q->root == QNONE ? em_raw(&e, "ALL") : em_node(&e, q->root);
    if (!st) {
        size_t old_n = args->n;
        st = imap_args_append(args, &e.args);
        if (st) {
            /* Leave the caller's list as it was. */
            for (size_t i = old_n; i < args->n; i++)
                free(args->v[i].data);
            args->n = old_n;
        }
    }
    if (st == TERN_E_NOMEM && !tern_err_msg(err)[0])
        tern_err_set(err, st, "out of memory while translating the query");
    imap_args_free(&e.args);
    return st;
}

/*
 * notmuch (notmuch-search-terms(7)). Every operator is written out and
 * every group is parenthesized, so the result means the tree, whatever
 * Xapian's defaults are.
 */

/*
 * A value notmuch takes as one plain term without quotes: ASCII letters,
 * digits and "@._-" with at least one letter or digit (Xapian makes no term
 * of "@" alone, and an operator next to no term is a syntax error), no
 * ".." (a range to Xapian), no leading "-" or "+", not starting with an
 * operator's letters ("and", "or-x"). With
 * ALLOW_8BIT, bytes of 0x80 and above count as letters; that is only
 * used for wildcard stems, which cannot be quoted.
 */
static bool
notmuch_plain(const char *v, size_t len, bool allow_8bit)
{
    bool word = false;
    if (len == 0 || v[0] == '-' || v[0] == '+')
        return false;
    /* Xapian takes the letters of "and-x" or "or.y" as an operator too. */
    size_t lead = 0;
    while (lead < len && is_alpha(v[lead]))
        lead++;
    if (word_is(v, lead, "and") || word_is(v, lead, "or") || word_is(v, lead, "not") ||
        word_is(v, lead, "xor") || word_is(v, lead, "near") || word_is(v, lead, "adj"))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (is_alpha((char)c) || is_digit((char)c) || (allow_8bit && c >= 0x80))
            word = true;
        else if (c == '.' && i + 1 < len && v[i + 1] == '.')
            return false;
        else if (c != '@' && c != '.' && c != '_' && c != '-')
            return false;
    }
    return word;
}

/*
 * Appends a value of a boolean notmuch prefix (tag:, id:, and what passes
 * through): plain, or quoted with '"' doubled, which Xapian reads back as
 * one '"' in a boolean term.
 */
static enum tern_status
nm_boolean(struct tbuf *b, const char *v, size_t len)
{
    if (notmuch_plain(v, len, false))
        return tbuf_add(b, v, len);
    enum tern_status st = tbuf_addc(b, '"');
    for (size_t i = 0; i < len && !st; i++) {
        if (v[i] == '"')
            st = tbuf_addc(b, '"');
        if (!st)
            st = tbuf_addc(b, v[i]);
    }
    return st ? st : tbuf_addc(b, '"');
}

/*
 * Appends a value notmuch searches word by word (free text, from:, to:,
 * subject:, body:). Only words matter there, so the value is normalized in
 * ways that keep its words: quotes and control characters become spaces
 * (Xapian has no escape for '"' in a phrase and fails on a phrase of
 * blanks), runs of spaces shrink to one and the ends are trimmed, and ".."
 * becomes ". ." (Xapian reads ".." as a range even inside quotes).
 * TERN_E_UNSUPPORTED, with *WHY set, when nothing is left, or when the
 * result starts with "/" and SLASH_IS_REGEX says notmuch would read it as
 * a regular expression.
 */
static enum tern_status
nm_words(struct tbuf *b, const char *v, size_t len, bool slash_is_regex, const char **why)
{
    struct tbuf n;
    tbuf_init(&n, 0);
    enum tern_status st = TERN_OK;
    bool space = false;
    for (size_t i = 0; i < len && !st; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == ' ' || c < 0x20 || c == 0x7f) {
            space = tbuf_len(&n) > 0;
            continue;
        }
        if (space)
            st = tbuf_addc(&n, ' ');
        space = false;
        if (!st)
            st = tbuf_addc(&n, (char)c);
        if (!st && c == '.' && i + 1 < len && v[i + 1] == '.')
            st = tbuf_addc(&n, ' ');
    }
    if (!st && tbuf_len(&n) == 0) {
        *why = "it has no words in it";
        st = TERN_E_UNSUPPORTED;
    } else if (!st && ((slash_is_regex && tbuf_ptr(&n)[0] == '/') ||
                       (is_regex(tbuf_ptr(&n), tbuf_len(&n)) && !is_regex(v, len)))) {
        /* Dropping controls can turn "/x/\x17" into a "/x/" regular expression. */
        *why = "it reads a value that starts with \"/\" as a regular expression";
        st = TERN_E_UNSUPPORTED;
    }
    if (!st && notmuch_plain(tbuf_ptr(&n), tbuf_len(&n), false))
        st = tbuf_add(b, tbuf_ptr(&n), tbuf_len(&n));
    else if (!st)
        st = tbuf_addf(b, "\"%s\"", tbuf_ptr(&n));
    tbuf_free(&n);
    return st;
}

static enum tern_status
nm_iso(struct tbuf *b, int64_t day)
{
    int64_t y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    return tbuf_addf(b, "%04lld-%02u-%02u", (long long)y, m, d);
}

/* Terms notmuch writes as a negation. */
static bool
nm_negated(const struct qnode *nd)
{
    return nd->kind == QN_TERM && nd->field == QF_FLAG &&
           (nd->flag == QFL_READ || nd->flag == QFL_UNFLAGGED);
}

static enum tern_status
nm_term(const struct query *q, const struct qnode *nd, struct tbuf *b, struct tern_err *err)
{
    const char *v = q->vals.data + nd->val_off;
    size_t len = nd->val_len;
    struct clip c = clip(q->src + nd->src_off, nd->src_len);
    enum tern_status st;

    if (nd->field == QF_CC || nd->field == QF_BCC)
        return tern_err_set(err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched with notmuch: it has no %s: prefix "
                                     "(its to: matches To, Cc and Bcc)",
                            CLIP_ARG(c), nd->prefix);
    if (nd->field == QF_LARGER || nd->field == QF_SMALLER)
        return tern_err_set(err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched with notmuch: it has no size search",
                            CLIP_ARG(c));

    /*
     * notmuch's names: keyword: is its tag:. Its id: has no regular
     * expressions but its synonym mid: has.
     */
    const char *name = nd->prefix;
    if (nd->field == QF_KEYWORD)
        name = "tag";
    else if (nd->field == QF_ID)
        name = nd->regex ? "mid" : "id";

    /* notmuch-only terms go through as the user wrote them. */
    if (nd->field == QF_NOTMUCH) {
        if ((st = tbuf_addf(b, "%s:", name)))
            return st;
        return nd->quoted ? nm_boolean(b, v, len) : tbuf_add(b, q->src + nd->raw_off, nd->raw_len);
    }
    if (nd->wildcard && !nd->regex) {
        /* A wildcard cannot be quoted, so its stem must be a plain word. */
        if (!notmuch_plain(v, len - 1, true))
            return tern_err_set(err, TERN_E_UNSUPPORTED,
                                CLIP_FMT " cannot be searched with notmuch: a wildcard needs a "
                                         "plain word before the \"*\"",
                                CLIP_ARG(c));
        if (name && (st = tbuf_addf(b, "%s:", name)))
            return st;
        return tbuf_add(b, v, len);
    }

    /* notmuch has regular expressions for from:, subject:, tag: and mid: only. */
    bool regex_field = nd->field == QF_FROM || nd->field == QF_SUBJECT || nd->field == QF_KEYWORD ||
                       nd->field == QF_ID;
    if (nd->regex && nd->field != QF_TEXT && !regex_field)
        return tern_err_set(err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched with notmuch: it has regular "
                                     "expressions only for from:, subject:, tag: and id:",
                            CLIP_ARG(c));
    if (!nd->regex && nd->field == QF_KEYWORD && v[0] == '/')
        return tern_err_set(err, TERN_E_UNSUPPORTED,
                            CLIP_FMT " cannot be searched with notmuch: it reads a value "
                                     "that starts with \"/\" as a regular expression",
                            CLIP_ARG(c));

    switch (nd->field) {
    case QF_TEXT:
    case QF_FROM:
    case QF_TO:
    case QF_SUBJECT:
    case QF_BODY: {
        if (name && (st = tbuf_addf(b, "%s:", name)))
            return st;
        if (nd->regex && nd->field != QF_TEXT)
            return nm_boolean(b, v, len);
        /* A bare /x/ is a phrase to notmuch too. */
        const char *why = "";
        st = nm_words(b, v, len, nd->field == QF_FROM || nd->field == QF_SUBJECT, &why);
        if (st == TERN_E_UNSUPPORTED)
            return tern_err_set(err, st, CLIP_FMT " cannot be searched with notmuch: %s",
                                CLIP_ARG(c), why);
        return st;
    }
    case QF_ID:
    case QF_KEYWORD:
        if ((st = tbuf_addf(b, "%s:", name)))
            return st;
        if (!nd->regex && nd->field == QF_ID && len >= 2 && v[0] == '<' && v[len - 1] == '>') {
            v++;
            len -= 2;
        }
        return nm_boolean(b, v, len);
    case QF_FLAG:
        switch (nd->flag) {
        case QFL_UNREAD: return tbuf_adds(b, "tag:unread");
        case QFL_READ: return tbuf_adds(b, "not tag:unread");
        case QFL_FLAGGED: return tbuf_adds(b, "tag:flagged");
        case QFL_UNFLAGGED: return tbuf_adds(b, "not tag:flagged");
        case QFL_ANSWERED: return tbuf_adds(b, "tag:replied");
        case QFL_DELETED: return tbuf_adds(b, "tag:deleted");
        case QFL_DRAFT: return tbuf_adds(b, "tag:draft");
        }
        break;
    case QF_DATE: {
        /* notmuch's dates start in 1970 (parse_time_string rejects earlier years). */
        int64_t epoch = 0;
        if ((nd->has_since && nd->since < epoch) || (nd->has_until && nd->until < epoch))
            return tern_err_set(err, TERN_E_UNSUPPORTED,
                                CLIP_FMT " cannot be searched with notmuch: its dates start "
                                         "in 1970",
                                CLIP_ARG(c));
        st = tbuf_adds(b, "date:");
        if (!st && nd->has_since)
            st = nm_iso(b, nd->since);
        if (!st)
            st = tbuf_adds(b, "..");
        if (!st && nd->has_until)
            st = nm_iso(b, nd->until);
        return st;
    }
    case QF_CC:
    case QF_BCC:
    case QF_LARGER:
    case QF_SMALLER:
    case QF_NOTMUCH: break;
    }
    return tern_err_set(err, TERN_E_USAGE, "internal error: unknown term in the query");
}

static enum tern_status nm_node(const struct query *q, size_t idx, struct tbuf *b,
                                struct tern_err *err);

/* A node inside an operator: parenthesized unless it is a plain term. */
static enum tern_status
nm_child(const struct query *q, size_t idx, struct tbuf *b, struct tern_err *err)
{
    const struct qnode *nd = &q->nodes[idx];
    if (nd->kind == QN_TERM && !nm_negated(nd))
        return nm_node(q, idx, b, err);
    enum tern_status st = tbuf_addc(b, '(');
    if (!st)
        st = nm_node(q, idx, b, err);
    return st ? st : tbuf_addc(b, ')');
}

static enum tern_status
nm_node(const struct query *q, size_t idx, struct tbuf *b, struct tern_err *err)
{
    const struct qnode *nd = &q->nodes[idx];
    enum tern_status st = TERN_OK;
    switch (nd->kind) {
    case QN_TERM: return nm_term(q, nd, b, err);
    case QN_AND:
    case QN_OR:
        for (size_t c = nd->child; c != QNONE && !st; c = q->nodes[c].next) {
            if (c != nd->child)
                st = tbuf_adds(b, nd->kind == QN_AND ? " and " : " or ");
            if (!st)
                st = nm_child(q, c, b, err);
        }
        return st;
    case QN_NOT: st = tbuf_adds(b, "not "); return st ? st : nm_child(q, nd->child, b, err);
    }
    return TERN_E_USAGE;
}

enum tern_status
query_to_notmuch(const struct query *q, char **out, struct tern_err *err)
{
    if (!q || !out)
        return tern_err_set(err, TERN_E_USAGE, "query_to_notmuch needs a query and an output");
    *out = NULL;
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = q->root == QNONE ? tbuf_addc(&b, '*') : nm_node(q, q->root, &b, err);
    if (!st) {
        *out = tbuf_take(&b);
        if (!*out)
            st = TERN_E_NOMEM;
    }
    if (st == TERN_E_NOMEM && !tern_err_msg(err)[0])
        tern_err_set(err, st, "out of memory while translating the query");
    tbuf_free(&b);
    return st;
}
