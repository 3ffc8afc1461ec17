/*
 * text.c - making text from the network safe to print and to put in JSON:
 * UTF-8 validation, conversion of other charsets to UTF-8 with iconv, and
 * removal of terminal controls (see text.h).
 *
 * Layer: src/. Includes only libc, iconv and proto/ headers; it must not
 * include GMime, curses or store headers, so every layer above proto/ can
 * use it (TESTMATRIX M4, M5, M7).
 *
 * UTF-8 is decoded as RFC 3629 defines it: no overlong forms, no surrogates,
 * nothing above U+10FFFF. Each invalid sequence becomes one U+FFFD per
 * "maximal subpart", the practice the Unicode Standard recommends (chapter 3,
 * "U+FFFD Substitution of Maximal Subparts").
 */
#include "text.h"

#include <errno.h>
#include <iconv.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tbuf.h"

/* Marks an invalid sequence in utf8_next's result. */
#define UTF8_BAD 0xFFFFFFFFu

/* U+FFFD REPLACEMENT CHARACTER and U+2400 SYMBOL FOR NULL in UTF-8. */
static const char REPLACEMENT[] = "\xEF\xBF\xBD";
static const char NUL_SYMBOL[] = "\xE2\x90\x80";

/* Longest charset name handed to iconv_open(); real names are far shorter. */
#define CHARSET_NAME_MAX 64

/* Bytes converted per iconv() call; the output grows in a tbuf. */
#define ICONV_CHUNK 4096

/*
 * Decodes one code point from P (LEN > 0 bytes). Returns the number of bytes
 * used, at least 1. On an invalid sequence *CP is UTF8_BAD and the count is
 * the length of the maximal subpart that was consumed.
 */
static size_t
utf8_next(const unsigned char *p, size_t len, uint32_t *cp)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    uint32_t v;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        *cp = UTF8_BAD;
        return 1;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= len || p[i] < lo || p[i] > hi) {
            *cp = UTF8_BAD;
            return i;
        }
        v = (v << 6) | (p[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

size_t
text_utf8_seq(const char *p, size_t len)
{
    uint32_t cp;
    if (!len)
        return 0;
    size_t n = utf8_next((const unsigned char *)p, len, &cp);
    return cp == UTF8_BAD ? 0 : n;
}

bool
text_valid_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    uint32_t cp;

    if (!s)
        return len == 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        i += utf8_next(p + i, len - i, &cp);
        if (cp == UTF8_BAD)
            return false;
    }
    return true;
}

/* True for code points that are dropped outright: bidi overrides and isolates. */
static bool
is_bidi_control(uint32_t cp)
{
    return (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

char *
text_sanitize(const char *s, size_t len, bool multiline)
{
    const unsigned char *p = (const unsigned char *)s;
    struct tbuf out;
    enum tern_status st = TERN_OK;
    size_t i = 0;

    tbuf_init(&out, 0);
    if (!s)
        len = 0;
    while (i < len && st == TERN_OK) {
        /* Printable ASCII is the common case: copy a whole run at once. */
        size_t run = i;
        while (run < len && p[run] >= 0x20 && p[run] < 0x7F)
            run++;
        if (run > i) {
            st = tbuf_add(&out, p + i, run - i);
            i = run;
            continue;
        }

        uint32_t cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (cp == UTF8_BAD) {
            st = tbuf_adds(&out, REPLACEMENT);
        } else if (cp == 0) {
            st = tbuf_adds(&out, NUL_SYMBOL);
        } else if (cp == '\r') {
            /* CR LF is one line end; a lone CR is one too. */
            if (i + 1 < len && p[i + 1] == '\n')
                n = 2;
            st = tbuf_addc(&out, multiline ? '\n' : ' ');
        } else if (cp == '\n') {
            st = tbuf_addc(&out, multiline ? '\n' : ' ');
        } else if (cp == '\t') {
            st = tbuf_addc(&out, multiline ? '\t' : ' ');
        } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) {
            /* C0 (ESC, BEL, BS...), DEL and C1 (CSI U+009B, OSC U+009D...). */
            st = tbuf_adds(&out, REPLACEMENT);
        } else if (is_bidi_control(cp)) {
            /* Dropped: they reorder what follows on the terminal line. */
        } else {
            st = tbuf_add(&out, p + i, n);
        }
        i += n;
    }
    if (st != TERN_OK) {
        tbuf_free(&out);
        return NULL;
    }
    return tbuf_take(&out);
}

/*
 * Appends N bytes of UTF-8 to OUT with each NUL replaced by U+2400: the
 * result of text_to_utf8 is a C string, and a NUL in it would cut it short.
 */
static enum tern_status
add_without_nul(struct tbuf *out, const char *p, size_t n)
{
    enum tern_status st = TERN_OK;
    while (n && st == TERN_OK) {
        const char *nul = memchr(p, 0, n);
        size_t run = nul ? (size_t)(nul - p) : n;
        st = tbuf_add(out, p, run);
        if (st == TERN_OK && nul) {
            st = tbuf_adds(out, NUL_SYMBOL);
            run++;
        }
        p += run;
        n -= run;
    }
    return st;
}

/*
 * Copies LEN bytes of S to OUT, replacing each invalid UTF-8 sequence with
 * U+FFFD and each NUL with U+2400. Nothing else changes (controls stay;
 * sanitizing is separate).
 */
static enum tern_status
utf8_repair(struct tbuf *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    enum tern_status st = TERN_OK;

    while (i < len && st == TERN_OK) {
        size_t run = i;
        while (run < len && p[run] < 0x80)
            run++;
        if (run > i) {
            st = add_without_nul(out, s + i, run - i);
            i = run;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        if (cp == UTF8_BAD)
            st = tbuf_adds(out, REPLACEMENT);
        else
            st = tbuf_add(out, p + i, n);
        i += n;
    }
    return st;
}

/*
 * Charset labels seen in mail that iconv does not know, or knows as a
 * narrower charset than senders mean. The choices follow the WHATWG
 * Encoding Standard's label table, where it has one:
 * - ISO-8859-1 and ASCII-labelled Latin text is really windows-1252 (the
 *   bytes 0x80-0x9F are printable there, instead of C1 controls);
 * - Shift_JIS mail is written by Windows code page 932 (NEC and IBM
 *   extensions; 0x5C is a backslash, not a yen sign);
 * - GB2312 and GBK are subsets of GB18030; EUC-KR of windows-949 (CP949).
 * "us-ascii" is read as UTF-8, its superset: 8-bit bytes in mail labelled
 * us-ascii then show as UTF-8 if they are, as U+FFFD if they are not.
 */
static const struct charset_alias {
    const char *label; /* lower case */
    const char *iconv_name;
} charset_aliases[] = {
    {"utf-8", "UTF-8"},
    {"utf8", "UTF-8"},
    {"us-ascii", "UTF-8"},
    {"ascii", "UTF-8"},
    {"ansi_x3.4-1968", "UTF-8"},
    {"iso-ir-6", "UTF-8"},
    {"us", "UTF-8"},
    {"iso-8859-1", "WINDOWS-1252"},
    {"iso8859-1", "WINDOWS-1252"},
    {"iso_8859-1", "WINDOWS-1252"},
    {"iso88591", "WINDOWS-1252"},
    {"latin1", "WINDOWS-1252"},
    {"latin-1", "WINDOWS-1252"},
    {"l1", "WINDOWS-1252"},
    {"cp819", "WINDOWS-1252"},
    {"iso-8859-9", "WINDOWS-1254"},
    {"latin5", "WINDOWS-1254"},
    {"iso-8859-11", "CP874"},
    {"tis-620", "CP874"},
    {"windows-874", "CP874"},
    {"iso-8859-8-i", "ISO-8859-8"},
    {"shift_jis", "CP932"},
    {"shift-jis", "CP932"},
    {"sjis", "CP932"},
    {"x-sjis", "CP932"},
    {"x-shift_jis", "CP932"},
    {"x-shift-jis", "CP932"},
    {"ms_kanji", "CP932"},
    {"csshiftjis", "CP932"},
    {"windows-31j", "CP932"},
    {"gb2312", "GB18030"},
    {"gbk", "GB18030"},
    {"x-gbk", "GB18030"},
    {"cp936", "GB18030"},
    {"euc-cn", "GB18030"},
    {"csgb2312", "GB18030"},
    {"chinese", "GB18030"},
    {"ks_c_5601-1987", "CP949"},
    {"ks_c_5601", "CP949"},
    {"ksc5601", "CP949"},
    {"euc-kr", "CP949"},
    {"x-euc-kr", "CP949"},
    {"unicode-1-1-utf-7", "UTF-7"},
    {"unicode-2-0-utf-7", "UTF-7"},
    {"x-unicode-2-0-utf-7", "UTF-7"},
    {"utf-7", "UTF-7"},
    {"x-mac-roman", "MACINTOSH"},
    {"macintosh", "MACINTOSH"},
    {"x-mac-cyrillic", "MAC-CYRILLIC"},
    {"unicode", "UTF-16LE"},
    {"ucs-2", "UTF-16"},
};

/* ASCII white space; <ctype.h> would depend on the locale. */
static bool
ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/*
 * Normalizes a charset label into OUT (CHARSET_NAME_MAX + 1 bytes): trimmed,
 * unquoted, lower case, an RFC 2231 language suffix ("utf-8*en") removed.
 * Returns false for a label that cannot be a charset name (empty, too long,
 * or with characters iconv would read as options, such as "//").
 */
static bool
charset_normalize(const char *label, char *out)
{
    size_t len = strlen(label);
    while (len && (ascii_space(*label) || *label == '"' || *label == '\'')) {
        label++;
        len--;
    }
    while (len && (ascii_space(label[len - 1]) || label[len - 1] == '"' || label[len - 1] == '\''))
        len--;
    const char *star = memchr(label, '*', len);
    if (star)
        len = (size_t)(star - label);
    if (len == 0 || len > CHARSET_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = label[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (!(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '-' && c != '_' &&
            c != '.' && c != ':' && c != '+')
            return false;
        out[i] = c;
    }
    out[len] = '\0';
    return true;
}

/*
 * Opens a converter from LABEL to UTF-8. Returns false when the label names
 * UTF-8 (or a subset read as UTF-8) or nothing iconv knows; the caller then
 * reads the bytes as UTF-8.
 */
static bool
charset_open(const char *label, iconv_t *cd)
{
    char name[CHARSET_NAME_MAX + 1];
    const char *iconv_name = NULL;

    if (!label || !charset_normalize(label, name))
        return false;
    for (size_t i = 0; i < sizeof charset_aliases / sizeof charset_aliases[0]; i++) {
        if (strcmp(name, charset_aliases[i].label) == 0) {
            iconv_name = charset_aliases[i].iconv_name;
            break;
        }
    }
    if (iconv_name && strcmp(iconv_name, "UTF-8") == 0)
        return false;
    *cd = iconv_open("UTF-8", iconv_name ? iconv_name : name);
    if (*cd != (iconv_t)-1)
        return true;
    /* "x-foo" labels are often plain "foo"; "cp-1250" is "cp1250". */
    if (!iconv_name && strncmp(name, "x-", 2) == 0) {
        *cd = iconv_open("UTF-8", name + 2);
        if (*cd != (iconv_t)-1)
            return true;
    }
    if (!iconv_name && strncmp(name, "cp-", 3) == 0) {
        char joined[CHARSET_NAME_MAX + 1];
        memcpy(joined, "cp", 2);
        memcpy(joined + 2, name + 3, strlen(name + 3) + 1);
        *cd = iconv_open("UTF-8", joined);
        if (*cd != (iconv_t)-1)
            return true;
    }
    return false;
}

/* Converts with an open CD into OUT; invalid input becomes U+FFFD. */
static enum tern_status
convert(iconv_t cd, struct tbuf *out, const char *s, size_t len)
{
    char chunk[ICONV_CHUNK];
    char *in = (char *)(uintptr_t)s; /* iconv's prototype lacks const */
    size_t inleft = len;
    enum tern_status st = TERN_OK;
    bool flushing = false;

    while (st == TERN_OK) {
        char *outp = chunk;
        size_t outleft = sizeof chunk;
        size_t r;
        if (flushing)
            r = iconv(cd, NULL, NULL, &outp, &outleft); /* back to the initial shift state */
        else
            r = iconv(cd, &in, &inleft, &outp, &outleft);
        int saved = errno;
        if (outp > chunk)
            st = add_without_nul(out, chunk, (size_t)(outp - chunk));
        if (st != TERN_OK)
            break;
        if (r != (size_t)-1) {
            if (flushing)
                break;
            if (inleft == 0)
                flushing = true;
            continue;
        }
        if (saved == E2BIG)
            continue;
        if (flushing)
            break;
        st = tbuf_adds(out, REPLACEMENT);
        if (saved == EILSEQ && inleft > 0) {
            /* Skip one byte and carry on from there. */
            in++;
            inleft--;
            if (inleft == 0)
                flushing = true;
        } else {
            /* EINVAL: the input ends inside a sequence. */
            flushing = true;
        }
    }
    return st;
}

char *
text_to_utf8(const char *s, size_t len, const char *charset)
{
    struct tbuf out;
    iconv_t cd;
    enum tern_status st;

    if (!s)
        len = 0;
    tbuf_init(&out, 0);
    if (len && charset_open(charset, &cd)) {
        st = convert(cd, &out, s, len);
        iconv_close(cd);
    } else {
        st = utf8_repair(&out, s, len);
    }
    if (st != TERN_OK) {
        tbuf_free(&out);
        return NULL;
    }
    return tbuf_take(&out);
}
