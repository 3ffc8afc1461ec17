/*
 * mutf7.c - IMAP modified UTF-7 for mailbox names (RFC 3501 §5.1.3,
 * RFC 2152 for the underlying UTF-7).
 *
 * Layer: proto/. Includes only libc and proto headers; knows nothing of
 * the store or the terminal.
 *
 * The decoder is strict: it accepts only the one canonical spelling of a
 * name, so two different wire names can never decode to the same UTF-8
 * name (which would make two server folders share one Maildir directory).
 * The encoder emits that canonical spelling: printable US-ASCII except "&"
 * stands for itself, "&" is "&-", and every run of other characters is one
 * shift "&" + modified BASE64 of its UTF-16BE form (with "," for "/",
 * no "=" padding, zero padding bits) + "-".
 */
#include "mutf7.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "tbuf.h"

static const char mutf7_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/* RFC 3501 §5.1.3: these octets represent themselves (0x26 "&" aside). */
static bool
is_direct(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e;
}

/* Appends code point CP (already validated: not a surrogate, <= 0x10FFFF). */
static enum tern_status
put_utf8(struct tbuf *b, uint32_t cp)
{
    char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xc0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xe0 | (cp >> 12));
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[2] = (char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        s[0] = (char)(0xf0 | (cp >> 18));
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[3] = (char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return tbuf_add(b, s, n);
}

/*
 * Decodes one shifted run: P[0..LEN) are the characters between "&" and
 * "-" (LEN > 0). Every rule of RFC 3501 §5.1.3 that concerns the run is
 * checked here.
 */
static enum tern_status
decode_run(const char *p, size_t len, struct tbuf *out)
{
    uint32_t bits = 0;  /* pending bits, right-aligned */
    unsigned nbits = 0; /* how many of them */
    uint32_t high = 0;  /* a high surrogate waiting for its pair */
    for (size_t i = 0; i < len; i++) {
        int v = b64_digit((unsigned char)p[i], ',');
        if (v < 0)
            return TERN_E_PROTO;
        bits = (bits << 6) | (uint32_t)v;
        nbits += 6;
        if (nbits < 16)
            continue;
        nbits -= 16;
        uint32_t unit = (bits >> nbits) & 0xffff;
        bits &= (1u << nbits) - 1;
        if (high) {
            /* UTF-16 (RFC 2781): a high surrogate must be followed by a low one. */
            if (unit < 0xdc00 || unit > 0xdfff)
                return TERN_E_PROTO;
            uint32_t cp = 0x10000 + ((high - 0xd800) << 10) + (unit - 0xdc00);
            high = 0;
            enum tern_status st = put_utf8(out, cp);
            if (st)
                return st;
        } else if (unit >= 0xd800 && unit <= 0xdbff) {
            high = unit;
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
            return TERN_E_PROTO; /* a low surrogate on its own */
        } else if (unit == 0 || (unit < 0x80 && is_direct((unsigned char)unit))) {
            /* NUL, or printable ASCII that must represent itself. */
            return TERN_E_PROTO;
        } else {
            enum tern_status st = put_utf8(out, unit);
            if (st)
                return st;
        }
    }
    /*
     * The run must end exactly after the last UTF-16 unit: fewer than six
     * bits left over (a whole extra character means the encoding was not
     * the shortest), all of them zero, and no surrogate half pending.
     */
    if (high || nbits >= 6 || bits != 0)
        return TERN_E_PROTO;
    return TERN_OK;
}

enum tern_status
mutf7_decode(const char *mutf7, size_t len, char **out)
{
    if (!out || (!mutf7 && len))
        return TERN_E_USAGE;
    *out = NULL;
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = TERN_OK;
    bool after_run = false; /* the previous token was a shifted run */
    size_t i = 0;
    while (i < len && !st) {
        unsigned char c = (unsigned char)mutf7[i];
        if (c != '&') {
            /* 8-bit bytes, NUL and other controls never appear raw. */
            if (!is_direct(c)) {
                st = TERN_E_PROTO;
                break;
            }
            st = tbuf_addc(&b, (char)c);
            after_run = false;
            i++;
            continue;
        }
        const char *dash = memchr(mutf7 + i + 1, '-', len - i - 1);
        if (!dash) {
            st = TERN_E_PROTO; /* unterminated shift: names end in US-ASCII */
            break;
        }
        size_t runlen = (size_t)(dash - (mutf7 + i + 1));
        if (runlen == 0) {
            st = tbuf_addc(&b, '&'); /* "&-" is "&" */
            after_run = false;
        } else if (after_run) {
            st = TERN_E_PROTO; /* "-&": a null shift between two runs */
        } else {
            st = decode_run(mutf7 + i + 1, runlen, &b);
            after_run = true;
        }
        i += runlen + 2;
    }
    if (st) {
        tbuf_free(&b);
        return st;
    }
    *out = tbuf_take(&b);
    return *out ? TERN_OK : TERN_E_NOMEM;
}

/*
 * Reads one UTF-8 sequence at P[0..LEN) (LEN > 0) strictly (RFC 3629 §3-4:
 * no overlong forms, no surrogates, nothing above U+10FFFF, no NUL).
 * Returns its length, or 0 when it is invalid.
 */
static size_t
utf8_next(const unsigned char *p, size_t len, uint32_t *cp)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t v, min;
    if (c == 0)
        return 0;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        return 0; /* a continuation byte, C0/C1 (overlong) or F5..FF */
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

/* Appends one UTF-16 unit to the run, flushing whole BASE64 characters. */
static enum tern_status
run_add_unit(struct tbuf *b, uint32_t unit, uint32_t *bits, unsigned *nbits)
{
    *bits = (*bits << 16) | unit;
    *nbits += 16;
    while (*nbits >= 6) {
        *nbits -= 6;
        enum tern_status st = tbuf_addc(b, mutf7_b64[(*bits >> *nbits) & 0x3f]);
        if (st)
            return st;
    }
    *bits &= (1u << *nbits) - 1;
    return TERN_OK;
}

enum tern_status
mutf7_encode(const char *utf8, size_t len, char **out)
{
    if (!out || (!utf8 && len))
        return TERN_E_USAGE;
    *out = NULL;
    const unsigned char *p = (const unsigned char *)utf8;
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = TERN_OK;
    bool in_run = false;
    uint32_t bits = 0;
    unsigned nbits = 0;
    size_t i = 0;
    while (i < len && !st) {
        uint32_t cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (n == 0) {
            st = TERN_E_USAGE;
            break;
        }
        i += n;
        if (cp < 0x80 && is_direct((unsigned char)cp)) {
            if (in_run) {
                /* Close the run: pad the last character with zero bits. */
                if (nbits)
                    st = tbuf_addc(&b, mutf7_b64[(bits << (6 - nbits)) & 0x3f]);
                if (!st)
                    st = tbuf_addc(&b, '-');
                in_run = false;
                bits = 0;
                nbits = 0;
            }
            if (!st)
                st = cp == '&' ? tbuf_adds(&b, "&-") : tbuf_addc(&b, (char)cp);
            continue;
        }
        if (!in_run) {
            st = tbuf_addc(&b, '&');
            in_run = true;
        }
        if (st)
            break;
        if (cp >= 0x10000) {
            uint32_t v = cp - 0x10000;
            st = run_add_unit(&b, 0xd800 | (v >> 10), &bits, &nbits);
            if (!st)
                st = run_add_unit(&b, 0xdc00 | (v & 0x3ff), &bits, &nbits);
        } else {
            st = run_add_unit(&b, cp, &bits, &nbits);
        }
    }
    if (!st && in_run) {
        if (nbits)
            st = tbuf_addc(&b, mutf7_b64[(bits << (6 - nbits)) & 0x3f]);
        if (!st)
            st = tbuf_addc(&b, '-');
    }
    if (st) {
        tbuf_free(&b);
        return st;
    }
    *out = tbuf_take(&b);
    return *out ? TERN_OK : TERN_E_NOMEM;
}
