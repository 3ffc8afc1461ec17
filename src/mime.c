/*
 * mime.c - reading messages for display with GMime: decoded headers, the
 * text to show (text/plain, or text/html rendered to text with libxml2's
 * HTML parser), the list of leaf parts with IMAP part numbers, and saving
 * one part decoded (see mime.h).
 *
 * Layer: src/. Uses GMime 3 for MIME structure (RFC 2045-2049), RFC 2047
 * encoded-words and RFC 2231 parameters, libxml2 for HTML and text.c for
 * charsets and sanitizing. It must not include curses, socket, OpenSSL or
 * store headers, and it never prints.
 *
 * Where GMime 3.2.13 falls short, and what this file does about it:
 * - Header values are C strings, so a NUL byte cuts a value short. When a
 *   message holds a NUL anywhere, header values are re-read from the
 *   message bytes at the offset GMime recorded, and NULs are shown as
 *   U+2400 (TESTMATRIX M5).
 * - Joining adjacent "B" encoded-words loses the text after a padded one
 *   ("=?UTF-8?B?SGVsbG8=?= =?UTF-8?B?IHdvcmxk?=" gives "Hello"; upstream
 *   issue jstedfast/gmime#133), and its base64 decoder loses data after a
 *   '=' followed by more base64. Each B word is rewritten as a Q word with
 *   the same bytes before GMime decodes a header, and base64 bodies are
 *   decoded here (base64_step).
 * - Its address parser is quadratic on hostile input, and it runs on every
 *   address field of every GMimeMessage it builds. So the message is parsed
 *   as a MIME entity, not a GMimeMessage; attached messages are kept from
 *   becoming GMimeMessages (src_defuse_messages); and only bounded amounts
 *   of address text reach the parser (decode_address). TESTMATRIX M3.
 *
 * Header text that is raw 8-bit instead of encoded-words is decoded as
 * UTF-8 when it is valid UTF-8, else as windows-1252, the printable
 * superset of ISO-8859-1 that such mail is nearly always written in. This
 * is the fallback order NeoMutt users get from assumed_charset =
 * "utf-8:windows-1252"; GMime picks between the two per run of text.
 */
#include "mime.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <gmime/gmime.h>
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include "b64.h"
#include "err.h"
#include "tbuf.h"

#include "text.h"

/*
 * Multiparts nested deeper than this are not walked: their parts are not
 * listed and cannot be saved, but the rest of the message is shown
 * (TESTMATRIX M2). Part numbers therefore have at most this many levels.
 */
#define MIME_MAX_DEPTH 64

/* Longest header field re-read from the message bytes (the NUL path). */
#define RAW_FIELD_MAX (16u * 1024 * 1024)

/* Longest part number accepted by mime_save_part_*: 64 levels of 10 digits. */
#define PART_ID_MAX (MIME_MAX_DEPTH * 11)

/*
 * Multipart Content-Type fields past this many in one message are kept
 * from GMime (the parts stay leaves): GMime checks each line against every
 * enclosing boundary, so 200,000 nested multiparts (12 MB) would take it
 * minutes (TESTMATRIX M2).
 */
#define MULTIPART_MAX 1024

/* Reads from a message file happen in pieces of this size. */
#define READ_CHUNK 65536

/* U+2400 SYMBOL FOR NULL, shown where a NUL byte was. */
static const char NUL_SYMBOL[] = "\xE2\x90\x80";

static GMimeParserOptions *mime_options;

void
mime_init(void)
{
    static gsize initialized;

    if (g_once_init_enter(&initialized)) {
        static const char *fallback[] = {"UTF-8", "windows-1252", NULL};
        g_mime_init();
        xmlInitParser();
        mime_options = g_mime_parser_options_new();
        g_mime_parser_options_set_fallback_charsets(mime_options, fallback);
        g_once_init_leave(&initialized, 1);
    }
}

/* ---------------------------------------------------------------------------
 * The message source: the bytes GMime parses, in memory, kept so that header
 * fields can be re-read exactly where GMime's copy of them is not.
 */

/* What src_defuse_messages made of a Content-Type field. */
enum defused_kind {
    DEFUSED_MESSAGE,   /* message/... made xessage/... */
    DEFUSED_DIGEST,    /* multipart/digest made multipart/xigest */
    DEFUSED_MULTIPART, /* multipart/... made xultipart/..., past MULTIPART_MAX */
};

/* One byte src_defuse_messages changed in a Content-Type field. */
struct defused {
    gint64 field;       /* offset of the field's first byte */
    gint64 pos;         /* offset of the changed byte */
    unsigned char orig; /* its value */
    enum defused_kind kind;
};

struct mime_src {
    GByteArray *bytes;   /* the message; owned by STREAM */
    GMimeStream *stream; /* memory stream over BYTES */
    GMimeObject *top;    /* the parsed message: its header fields and its body */
    bool has_nul;        /* some byte of the message is NUL */
    GArray *defused;     /* struct defused, by ascending offset */
};

static void
src_close(struct mime_src *src)
{
    if (src->top)
        g_object_unref(src->top);
    if (src->stream)
        g_object_unref(src->stream);
    else if (src->bytes)
        g_byte_array_free(src->bytes, TRUE);
    if (src->defused)
        g_array_free(src->defused, TRUE);
    memset(src, 0, sizeof *src);
}

static bool
is_blank(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Skips folding white space and comments (RFC 5322 §3.2.2) from P up to END;
 * returns where the next token starts.
 */
static const unsigned char *
skip_cfws(const unsigned char *p, const unsigned char *end)
{
    int depth = 0;
    while (p < end) {
        if (depth) {
            if (*p == '\\' && p + 1 < end)
                p++;
            else if (*p == '(')
                depth++;
            else if (*p == ')')
                depth--;
            else if (*p == '\n' && !(p + 1 < end && is_blank(p[1])))
                return p; /* the field ended inside the comment */
            p++;
        } else if (is_blank(*p) || *p == '\r') {
            p++;
        } else if (*p == '\n' && p + 1 < end && is_blank(p[1])) {
            p++;
        } else if (*p == '(') {
            depth++;
            p++;
        } else {
            return p;
        }
    }
    return p;
}

/* True when the N bytes at P (before END) are WORD in any case, as a whole token. */
static bool
token_is(const unsigned char *p, const unsigned char *end, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(end - p) < n || g_ascii_strncasecmp((const char *)p, word, n) != 0)
        return false;
    return p + n == end || !(g_ascii_isalnum(p[n]) || p[n] == '-' || p[n] == '_' || p[n] == '.');
}

/*
 * Makes every "Content-Type: message/..." field at the start of a line look
 * like "xessage/..." to GMime, and every "multipart/digest" like
 * "multipart/xigest" (whose parts default to message/rfc822, RFC 2046
 * §5.1.5), and every multipart past the MULTIPART_MAXth like
 * "xultipart/...", and records where. GMime then keeps an attached message as a
 * leaf part whose content is the message's own bytes, instead of parsing it
 * into a GMimeMessage; that parse runs GMime's address parser, which takes
 * quadratic time on hostile address fields (40 KB of ',"' cost seconds,
 * 400 KB minutes: TESTMATRIX M3). We never show an attached message's
 * insides, and saving it wants its exact bytes. Lines in bodies that look
 * the same are changed too, and all of them are changed back as soon as
 * GMime has parsed (src_restore), before any byte of content is read.
 */
static void
src_defuse_messages(struct mime_src *src)
{
    static const char field[] = "content-type";
    unsigned char *data = src->bytes->data;
    const unsigned char *end = data + src->bytes->len;
    unsigned char *line = data;
    size_t multiparts = 0;

    while (line < end) {
        if ((size_t)(end - line) > sizeof field &&
            g_ascii_strncasecmp((const char *)line, field, sizeof field - 1) == 0) {
            const unsigned char *p = line + sizeof field - 1;
            while (p < end && is_blank(*p))
                p++;
            if (p < end && *p == ':') {
                struct defused d = {(gint64)(line - data), -1, 0, DEFUSED_MESSAGE};
                p = skip_cfws(p + 1, end);
                if (token_is(p, end, "message")) {
                    const unsigned char *slash = skip_cfws(p + 7, end);
                    if (slash < end && *slash == '/')
                        d.pos = (gint64)(p - data);
                } else if (token_is(p, end, "multipart")) {
                    const unsigned char *slash = skip_cfws(p + 9, end);
                    const unsigned char *sub =
                        slash < end && *slash == '/' ? skip_cfws(slash + 1, end) : end;
                    if (++multiparts > MULTIPART_MAX) {
                        d.pos = (gint64)(p - data);
                        d.kind = DEFUSED_MULTIPART;
                    } else if (token_is(sub, end, "digest")) {
                        d.pos = (gint64)(sub - data);
                        d.kind = DEFUSED_DIGEST;
                    }
                }
                if (d.pos >= 0) {
                    d.orig = data[d.pos];
                    data[d.pos] = (unsigned char)(g_ascii_isupper(d.orig) ? 'X' : 'x');
                    if (!src->defused)
                        src->defused = g_array_new(FALSE, FALSE, sizeof(struct defused));
                    g_array_append_val(src->defused, d);
                }
            }
        }
        unsigned char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            break;
        line = nl + 1;
    }
}

/* Changes back what src_defuse_messages changed. */
static void
src_restore(struct mime_src *src)
{
    for (guint i = 0; src->defused && i < src->defused->len; i++) {
        const struct defused *d = &g_array_index(src->defused, struct defused, i);
        src->bytes->data[d->pos] = d->orig;
    }
}

/* The change src_defuse_messages made in the header field starting at FIELD, or NULL. */
static const struct defused *
src_defused_at(const struct mime_src *src, gint64 field)
{
    if (!src->defused || field < 0)
        return NULL;
    guint lo = 0, hi = src->defused->len;
    while (lo < hi) {
        guint mid = lo + (hi - lo) / 2;
        const struct defused *d = &g_array_index(src->defused, struct defused, mid);
        if (d->field == field)
            return d;
        if (d->field < field)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/*
 * OBJ's last header field called NAME, or NULL. When a part has several
 * Content-Type or Content-Disposition fields, GMime goes by the last one.
 */
static GMimeHeader *
last_header(GMimeObject *obj, const char *name)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(obj);
    int count = list ? g_mime_header_list_get_count(list) : 0;

    for (int i = count - 1; i >= 0; i--) {
        GMimeHeader *h = g_mime_header_list_get_header_at(list, i);
        const char *hname = h ? g_mime_header_get_name(h) : NULL;
        if (hname && g_ascii_strcasecmp(hname, name) == 0)
            return h;
    }
    return NULL;
}

/* The change made to the Content-Type field GMime went by for OBJ, or NULL. */
static const struct defused *
src_defused_type(const struct mime_src *src, GMimeObject *obj)
{
    GMimeHeader *h = last_header(obj, "Content-Type");
    return h ? src_defused_at(src, g_mime_header_get_offset(h)) : NULL;
}

/*
 * Parses src->bytes with GMime (RFC 2045-2049) as a MIME entity rather than
 * as a GMimeMessage, for the same reason as src_defuse_messages: the
 * message's own address fields are then parsed only by decode_address,
 * which bounds what it hands to GMime.
 */
static enum tern_status
src_parse(struct mime_src *src, struct tern_err *err)
{
    src_defuse_messages(src);
    src->has_nul = src->bytes->len && memchr(src->bytes->data, 0, src->bytes->len) != NULL;
    src->stream = g_mime_stream_mem_new_with_byte_array(src->bytes);
    GMimeParser *parser = g_mime_parser_new();
    /* An mbox "From " line before the header is not part of the message. */
    if (src->bytes->len >= 5 && memcmp(src->bytes->data, "From ", 5) == 0) {
        const guint8 *nl = memchr(src->bytes->data, '\n', src->bytes->len);
        g_mime_stream_seek(src->stream,
                           nl ? (gint64)(nl - src->bytes->data) + 1 : (gint64)src->bytes->len,
                           GMIME_STREAM_SEEK_SET);
    }
    g_mime_parser_init_with_stream(parser, src->stream);
    g_mime_parser_set_format(parser, GMIME_FORMAT_MESSAGE);
    src->top = g_mime_parser_construct_part(parser, mime_options);
    g_object_unref(parser);
    src_restore(src);
    if (!src->top)
        return tern_err_set(err, TERN_E_PROTO, "not a mail message: no header fields found");
    return TERN_OK;
}

static enum tern_status
src_open_mem(struct mime_src *src, const char *msg, size_t len, struct tern_err *err)
{
    memset(src, 0, sizeof *src);
    if (!msg && len)
        return tern_err_set(err, TERN_E_USAGE, "no message given");
    /* GMime's memory streams hold less than G_MAXUINT bytes. */
    if (len >= G_MAXUINT)
        return tern_err_set(err, TERN_E_PROTO, "message too large (%zu bytes)", len);
    src->bytes = g_byte_array_sized_new((guint)len);
    if (len)
        g_byte_array_append(src->bytes, (const guint8 *)msg, (guint)len);
    return src_parse(src, err);
}

/*
 * Reads the message in FD into memory, from offset 0 for a regular file
 * (with pread, so the descriptor's offset does not move), to its end for a
 * pipe. The message is held once; GMime's streams point into that copy.
 */
static enum tern_status
src_open_fd(struct mime_src *src, int fd, struct tern_err *err)
{
    struct stat sb;
    bool regular;
    uint64_t off = 0;

    memset(src, 0, sizeof *src);
    if (fd < 0 || fstat(fd, &sb) != 0)
        return tern_err_set(err, TERN_E_IO, "cannot read the message: %s",
                            fd < 0 ? "no file" : strerror(errno));
    regular = S_ISREG(sb.st_mode);
    if (regular && (uint64_t)sb.st_size >= G_MAXUINT)
        return tern_err_set(err, TERN_E_PROTO, "message too large (%jd bytes)",
                            (intmax_t)sb.st_size);
    src->bytes = g_byte_array_sized_new(regular ? (guint)sb.st_size : READ_CHUNK);
    for (;;) {
        guint have = src->bytes->len;
        if ((uint64_t)have + READ_CHUNK >= G_MAXUINT)
            return tern_err_set(err, TERN_E_PROTO, "message too large (more than %u bytes)", have);
        g_byte_array_set_size(src->bytes, have + READ_CHUNK);
        ssize_t r = regular ? pread(fd, src->bytes->data + have, READ_CHUNK, (off_t)off)
                            : read(fd, src->bytes->data + have, READ_CHUNK);
        if (r < 0 && errno == EINTR) {
            g_byte_array_set_size(src->bytes, have);
            continue;
        }
        if (r < 0) {
            int saved = errno;
            g_byte_array_set_size(src->bytes, have);
            return tern_err_set(err, TERN_E_IO, "cannot read the message: %s", strerror(saved));
        }
        g_byte_array_set_size(src->bytes, have + (guint)r);
        if (r == 0)
            break;
        off += (uint64_t)r;
    }
    return src_parse(src, err);
}

/* ---------------------------------------------------------------------------
 * Header values.
 */

static bool
ascii_casecmp_n(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && g_ascii_strncasecmp(a, b, alen) == 0;
}

/*
 * Where the header field that includes offset AT of DATA (LEN bytes) ends:
 * after the line end of its last line (RFC 5322 §2.2.3 folding).
 */
static size_t
field_end(const char *data, size_t len, size_t at)
{
    for (;;) {
        const char *lf = memchr(data + at, '\n', len - at);
        if (!lf)
            return len;
        at = (size_t)(lf - data) + 1;
        if (at >= len || !is_blank((unsigned char)data[at]))
            return at;
    }
}

/*
 * Copies the value of the header field that starts at offset OFF of the
 * message (name, colon, value, folded lines) into OUT, NULs included, after
 * checking that the field there is named NAME. The value keeps its line
 * ends, like GMime's raw value.
 */
static enum tern_status
raw_field_value(const struct mime_src *src, gint64 off, const char *name, struct tbuf *out)
{
    const char *data = (const char *)src->bytes->data;
    size_t len = src->bytes->len, p = (size_t)off;

    if (off < 0 || (uint64_t)off >= len)
        return TERN_E_PROTO;
    const char *nl = memchr(data + p, '\n', len - p);
    size_t line_end = nl ? (size_t)(nl - data) : len;
    const char *colon = memchr(data + p, ':', line_end - p);
    if (!colon)
        return TERN_E_PROTO;
    size_t name_end = (size_t)(colon - data);
    while (name_end > p && is_blank((unsigned char)data[name_end - 1]))
        name_end--;
    if (!ascii_casecmp_n(data + p, name_end - p, name))
        return TERN_E_PROTO;
    size_t start = (size_t)(colon - data) + 1;
    return tbuf_add(out, data + start, field_end(data, len, start) - start);
}

/*
 * The raw value of header H into OUT (initialized here): the exact bytes of
 * the message when GMime's copy may differ from them (the message holds a
 * NUL somewhere, or H is a field src_defuse_messages changed), else GMime's
 * copy.
 */
static enum tern_status
header_raw(const struct mime_src *src, GMimeHeader *h, struct tbuf *out)
{
    const char *raw = g_mime_header_get_raw_value(h);
    gint64 off = g_mime_header_get_offset(h);

    tbuf_init(out, 0);
    if (off >= 0 && (src->has_nul || src_defused_at(src, off))) {
        struct tbuf exact;
        tbuf_init(&exact, RAW_FIELD_MAX);
        enum tern_status st = raw_field_value(src, off, g_mime_header_get_name(h), &exact);
        if (st == TERN_OK) {
            *out = exact;
            out->max = 0;
            return TERN_OK;
        }
        tbuf_free(&exact);
        if (st == TERN_E_NOMEM)
            return st;
        /* Not where GMime said, or too long: fall back to GMime's copy. */
    }
    return raw ? tbuf_adds(out, raw) : TERN_OK;
}

/*
 * Unfolds a header value (RFC 5322 §2.2.3): a line break followed by a
 * blank is removed, any other line break becomes one space.
 */
static enum tern_status
unfold(const char *s, size_t len, struct tbuf *out)
{
    enum tern_status st = TERN_OK;
    size_t i = 0;

    while (i < len && st == TERN_OK) {
        if (s[i] != '\r' && s[i] != '\n') {
            size_t run = i;
            while (run < len && s[run] != '\r' && s[run] != '\n')
                run++;
            st = tbuf_add(out, s + i, run - i);
            i = run;
            continue;
        }
        size_t j = i;
        while (j < len && (s[j] == '\r' || s[j] == '\n'))
            j++;
        if (j < len && s[j] != ' ' && s[j] != '\t')
            st = tbuf_addc(out, ' ');
        i = j;
    }
    return st;
}

/* The first occurrence of the M bytes of NEEDLE in the N bytes of HAY, or NULL. */
static const char *
find_bytes(const char *hay, size_t n, const char *needle, size_t m)
{
    while (m && n >= m) {
        const char *p = memchr(hay, needle[0], n - m + 1);
        if (!p)
            return NULL;
        if (memcmp(p, needle, m) == 0)
            return p;
        n -= (size_t)(p - hay) + 1;
        hay = p + 1;
    }
    return NULL;
}

/*
 * Lenient base64 decoding (RFC 2045 §6.8, RFC 2047 §4.1). Characters outside
 * the alphabet are skipped, as RFC 2045 says they must be, and '=' ends the
 * current quantum wherever it appears, so that several encodings run
 * together decode whole. GMime 3.2.13's decoder loses data after a '=' that
 * is followed by more base64 (the bug of jstedfast/gmime#133), so tern
 * decodes base64 itself.
 */
struct base64_state {
    uint32_t acc; /* bits not yet output */
    int bits;     /* how many */
};

/* Decodes N bytes of IN into OUT, which has room for N * 3 / 4 + 1 bytes; returns the count. */
static size_t
base64_step(struct base64_state *b, const char *in, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '=') {
            b->acc = 0;
            b->bits = 0;
            continue;
        }
        int v = b64_digit((unsigned char)in[i], '/');
        if (v < 0)
            continue;
        b->acc = (b->acc << 6) | (uint32_t)v;
        b->bits += 6;
        if (b->bits >= 8) {
            b->bits -= 8;
            out[o++] = (unsigned char)((b->acc >> b->bits) & 0xFF);
            b->acc &= (1u << b->bits) - 1;
        }
    }
    return o;
}

/* Appends one decoded byte in Q encoding (RFC 2047 §4.2). */
static enum tern_status
q_add_byte(struct tbuf *out, unsigned char c)
{
    static const char hex[] = "0123456789ABCDEF";
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
        return tbuf_addc(out, (char)c);
    char enc[3] = {'=', hex[c >> 4], hex[c & 15]};
    return tbuf_add(out, enc, 3);
}

/*
 * Copies S to OUT with every well-formed "B" encoded-word (RFC 2047 §2,
 * §4.1) rewritten as a "Q" word holding the same bytes in the same charset,
 * so that GMime's decoder never joins padded base64 (see the top of this
 * file). Malformed words are copied untouched for GMime to judge.
 */
static enum tern_status
rewrite_b_words(const char *s, size_t len, struct tbuf *out)
{
    enum tern_status st = TERN_OK;
    size_t i = 0;

    while (i < len && st == TERN_OK) {
        const char *q = find_bytes(s + i, len - i, "=?", 2);
        if (!q)
            return tbuf_add(out, s + i, len - i);
        size_t start = (size_t)(q - s);
        st = tbuf_add(out, s + i, start - i);
        if (st != TERN_OK)
            break;

        /* =?charset?B?payload?= */
        size_t p = start + 2, cs = p;
        while (p < len && p - cs < 76 && s[p] != '?' && (unsigned char)s[p] > ' ' &&
               (unsigned char)s[p] < 0x7F)
            p++;
        bool ok = p > cs && p + 2 < len && s[p] == '?' && (s[p + 1] == 'B' || s[p + 1] == 'b') &&
                  s[p + 2] == '?';
        size_t pay = p + 3, e = pay;
        if (ok) {
            while (e < len && (b64_digit((unsigned char)s[e], '/') >= 0 || s[e] == '='))
                e++;
            ok = e + 1 < len && s[e] == '?' && s[e + 1] == '=';
        }
        if (!ok) {
            st = tbuf_add(out, "=?", 2);
            i = start + 2;
            continue;
        }
        st = tbuf_add(out, s + start, p - start); /* "=?charset" */
        if (st == TERN_OK)
            st = tbuf_add(out, "?Q?", 3);
        struct base64_state b64 = {0, 0};
        for (size_t k = pay; k < e && st == TERN_OK; k++) {
            unsigned char byte[1];
            if (base64_step(&b64, s + k, 1, byte))
                st = q_add_byte(out, byte[0]);
        }
        if (st == TERN_OK)
            st = tbuf_add(out, "?=", 2);
        i = e + 2;
    }
    return st;
}

/* Removes leading and trailing spaces of the owned string S in place. */
static char *
trim_spaces(char *s)
{
    if (!s)
        return NULL;
    size_t len = strlen(s), start = 0;
    while (start < len && s[start] == ' ')
        start++;
    while (len > start && s[len - 1] == ' ')
        len--;
    memmove(s, s + start, len - start);
    s[len - start] = '\0';
    return s;
}

/* True when LEN bytes of S need GMime: encoded-words, 8-bit bytes or NULs. */
static bool
needs_decoding(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80 || c == 0 || (c == '=' && i + 1 < len && s[i + 1] == '?'))
            return true;
    }
    return false;
}

/*
 * Unfolds RAW and rewrites its B words into OUT (initialized here). With
 * NUL_AS_SYMBOL, NUL bytes become U+2400 in UTF-8 so the result is one C
 * string; otherwise they stay (the caller splits at them).
 */
static enum tern_status
prepare_header(const char *raw, size_t len, bool nul_as_symbol, struct tbuf *out)
{
    struct tbuf unfolded;
    enum tern_status st;

    tbuf_init(&unfolded, 0);
    tbuf_init(out, 0);
    st = unfold(raw, len, &unfolded);
    if (st == TERN_OK)
        st = rewrite_b_words(tbuf_ptr(&unfolded), tbuf_len(&unfolded), out);
    tbuf_free(&unfolded);
    if (st != TERN_OK || !nul_as_symbol || !memchr(tbuf_ptr(out), 0, tbuf_len(out)))
        return st;

    struct tbuf swapped;
    tbuf_init(&swapped, 0);
    const char *p = tbuf_ptr(out);
    size_t n = tbuf_len(out);
    for (size_t i = 0; i < n && st == TERN_OK; i++)
        st = p[i] ? tbuf_addc(&swapped, p[i]) : tbuf_adds(&swapped, NUL_SYMBOL);
    tbuf_free(out);
    *out = swapped;
    return st;
}

char *
mime_decode_header(const char *raw, size_t len)
{
    struct tbuf prepared, decoded;
    enum tern_status st = TERN_OK;

    if (!raw)
        len = 0;
    if (!needs_decoding(raw, len)) {
        struct tbuf unfolded;
        tbuf_init(&unfolded, 0);
        if (unfold(raw, len, &unfolded) != TERN_OK) {
            tbuf_free(&unfolded);
            return NULL;
        }
        char *out = text_sanitize(tbuf_ptr(&unfolded), tbuf_len(&unfolded), false);
        tbuf_free(&unfolded);
        return trim_spaces(out);
    }

    mime_init();
    if (prepare_header(raw, len, false, &prepared) != TERN_OK) {
        tbuf_free(&prepared);
        return NULL;
    }
    /*
     * GMime decodes C strings, so the text is decoded in pieces between NUL
     * bytes, and each NUL is shown as U+2400 (an encoded-word cannot span
     * a NUL anyway).
     */
    tbuf_init(&decoded, 0);
    const char *p = tbuf_ptr(&prepared);
    size_t n = tbuf_len(&prepared), i = 0;
    while (st == TERN_OK) {
        const char *nul = memchr(p + i, 0, n - i);
        size_t end = nul ? (size_t)(nul - p) : n;
        if (end > i) {
            char *piece = g_strndup(p + i, end - i);
            char *text = g_mime_utils_header_decode_text(mime_options, piece);
            st = tbuf_adds(&decoded, text ? text : "");
            g_free(text);
            g_free(piece);
        }
        if (!nul || st != TERN_OK)
            break;
        st = tbuf_adds(&decoded, NUL_SYMBOL);
        i = end + 1;
    }
    tbuf_free(&prepared);
    char *out = NULL;
    if (st == TERN_OK)
        out = trim_spaces(text_sanitize(tbuf_ptr(&decoded), tbuf_len(&decoded), false));
    tbuf_free(&decoded);
    return out;
}

/* Fields whose value is an address list (RFC 5322 §3.6.2, §3.6.3, §3.6.6). */
static bool
is_address_field(const char *lower_name)
{
    static const char *const names[] = {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "mail-followup-to",
        "mail-reply-to",
        "disposition-notification-to",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(lower_name, names[i]) == 0)
            return true;
    return false;
}

/*
 * GMime's address parser takes time quadratic in the length of a hostile
 * field (unclosed quotes or comments after commas: TESTMATRIX M3). It gets
 * fields up to ADDRESS_PARSE_MAX bytes, and per message no more than
 * ADDRESS_BUDGET bytes in all; longer ones are shown as decoded text, which
 * differs from the parsed form only in quoting and spacing.
 */
#define ADDRESS_PARSE_MAX (16u * 1024)
#define ADDRESS_BUDGET (32u * 1024)

/*
 * Decodes an address-list value for display: display names decoded (RFC
 * 2047 §5(3)), addr-specs as written. A value GMime finds no address in is
 * shown as decoded text instead, so nothing disappears. *BUDGET is what is
 * left of ADDRESS_BUDGET.
 */
static char *
decode_address(const char *raw, size_t len, size_t *budget)
{
    struct tbuf prepared;
    char *out = NULL;

    if (len > ADDRESS_PARSE_MAX || len > *budget)
        return mime_decode_header(raw, len);
    *budget -= len;
    if (prepare_header(raw, len, true, &prepared) != TERN_OK) {
        tbuf_free(&prepared);
        return NULL;
    }
    InternetAddressList *list = internet_address_list_parse(mime_options, tbuf_ptr(&prepared));
    char *text = NULL;
    if (list && internet_address_list_length(list) > 0)
        text = internet_address_list_to_string(list, NULL, FALSE);
    if (text && *text)
        out = trim_spaces(text_sanitize(text, strlen(text), false));
    else
        out = mime_decode_header(raw, len);
    g_free(text);
    if (list)
        g_object_unref(list);
    tbuf_free(&prepared);
    return out;
}

/* ---------------------------------------------------------------------------
 * Building the view.
 */

struct view_build {
    const struct mime_src *src;
    struct mime_view *view;
    size_t headers_cap;
    struct tbuf *values; /* one per view->headers entry while building */
    size_t parts_cap;
    GMimeObject *text_plain; /* borrowed from the message */
    GMimeObject *text_html;
    size_t address_budget; /* see decode_address */
};

void
mime_view_free(struct mime_view *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->nheaders; i++) {
        free(v->headers[i].name);
        free(v->headers[i].value);
    }
    free(v->headers);
    for (size_t i = 0; i < v->nparts; i++) {
        free(v->parts[i].id);
        free(v->parts[i].type);
        free(v->parts[i].filename);
    }
    free(v->parts);
    free(v->text);
    free(v);
}

/* Adds VALUE (owned, consumed) under NAME (owned, consumed). */
static enum tern_status
view_add_header(struct view_build *b, GHashTable *index, char *name, char *value)
{
    struct mime_view *v = b->view;
    gpointer found = g_hash_table_lookup(index, name);
    enum tern_status st;

    if (found) {
        size_t at = GPOINTER_TO_SIZE(found) - 1;
        st = tbuf_addc(&b->values[at], '\n');
        if (st == TERN_OK)
            st = tbuf_adds(&b->values[at], value);
        free(name);
        free(value);
        return st;
    }
    if (v->nheaders == b->headers_cap) {
        size_t cap = b->headers_cap ? b->headers_cap * 2 : 16;
        struct mime_header *h = realloc(v->headers, cap * sizeof *h);
        if (!h)
            goto nomem;
        v->headers = h;
        struct tbuf *vals = realloc(b->values, cap * sizeof *vals);
        if (!vals)
            goto nomem;
        b->values = vals;
        b->headers_cap = cap;
    }
    size_t at = v->nheaders;
    tbuf_init(&b->values[at], 0);
    st = tbuf_adds(&b->values[at], value);
    free(value);
    if (st != TERN_OK) {
        tbuf_free(&b->values[at]);
        free(name);
        return st;
    }
    v->headers[at].name = name;
    v->headers[at].value = NULL;
    v->nheaders++;
    g_hash_table_insert(index, name, GSIZE_TO_POINTER(at + 1));
    return TERN_OK;

nomem:
    free(name);
    free(value);
    return TERN_E_NOMEM;
}

/* Adds every header field of the message, in order, to the view. */
static enum tern_status
view_headers(struct view_build *b, GMimeObject *top)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(top);
    int count = list ? g_mime_header_list_get_count(list) : 0;
    GHashTable *index = g_hash_table_new(g_str_hash, g_str_equal);
    enum tern_status st = TERN_OK;

    for (int i = 0; i < count && st == TERN_OK; i++) {
        GMimeHeader *h = g_mime_header_list_get_header_at(list, i);
        const char *gname = h ? g_mime_header_get_name(h) : NULL;
        if (!gname)
            continue;
        char *lower = g_ascii_strdown(gname, -1);
        char *name = text_sanitize(lower, strlen(lower), false);
        g_free(lower);
        struct tbuf raw;
        st = header_raw(b->src, h, &raw);
        char *value = NULL;
        if (st == TERN_OK && name) {
            if (is_address_field(name))
                value = decode_address(tbuf_ptr(&raw), tbuf_len(&raw), &b->address_budget);
            else
                value = mime_decode_header(tbuf_ptr(&raw), tbuf_len(&raw));
        }
        tbuf_free(&raw);
        if (st == TERN_OK && (!name || !value))
            st = TERN_E_NOMEM;
        if (st != TERN_OK) {
            free(name);
            free(value);
            break;
        }
        st = view_add_header(b, index, name, value);
    }
    g_hash_table_destroy(index);
    return st;
}

/* ---------------------------------------------------------------------------
 * Part contents.
 */

/* Decodes base64 content from SOURCE to DEST; returns the bytes written, -1 on error. */
static gint64
base64_copy(GMimeStream *source, GMimeStream *dest)
{
    char in[4096];
    unsigned char out[sizeof in * 3 / 4 + 1];
    struct base64_state b64 = {0, 0};
    gint64 total = 0;

    g_mime_stream_reset(source);
    while (!g_mime_stream_eos(source)) {
        ssize_t n = g_mime_stream_read(source, in, sizeof in);
        if (n < 0) {
            total = -1;
            break;
        }
        size_t o = base64_step(&b64, in, (size_t)n, out);
        if (o && g_mime_stream_write(dest, (const char *)out, o) != (ssize_t)o) {
            total = -1;
            break;
        }
        total += (gint64)o;
        if (n == 0)
            break;
    }
    int saved = errno;
    g_mime_stream_reset(source);
    errno = saved;
    return total;
}

/* True when the first header field of message OBJ ends in CR LF. */
static bool
uses_crlf(GMimeObject *obj)
{
    GMimeHeaderList *list = g_mime_object_get_header_list(obj);
    GMimeHeader *h = list && g_mime_header_list_get_count(list) > 0
                         ? g_mime_header_list_get_header_at(list, 0)
                         : NULL;
    const char *raw = h ? g_mime_header_get_raw_value(h) : NULL;
    size_t len = raw ? strlen(raw) : 0;
    return len >= 2 && raw[len - 2] == '\r' && raw[len - 1] == '\n';
}

/*
 * Writes the decoded content of leaf OBJ to DEST: a part with its transfer
 * encoding undone (RFC 2045 §6), an attached message as its bytes. Returns
 * the number of bytes written, -1 on a stream error (errno set).
 */
static gint64
part_write(GMimeObject *obj, GMimeStream *dest)
{
    if (GMIME_IS_MESSAGE_PART(obj)) {
        GMimeMessage *inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(obj));
        if (!inner)
            return 0;
        /*
         * GMime writes the message out again from its parsed form; with the
         * line ends the message was written with, that gives back its bytes.
         */
        GMimeFormatOptions *format = g_mime_format_options_new();
        g_mime_format_options_set_newline_format(format, uses_crlf(GMIME_OBJECT(inner))
                                                             ? GMIME_NEWLINE_FORMAT_DOS
                                                             : GMIME_NEWLINE_FORMAT_UNIX);
        gint64 n = g_mime_object_write_to_stream(GMIME_OBJECT(inner), format, dest);
        int saved = errno;
        g_mime_format_options_free(format);
        errno = saved;
        return n;
    }
    if (!GMIME_IS_PART(obj))
        return 0;
    GMimeDataWrapper *content = g_mime_part_get_content(GMIME_PART(obj));
    if (!content)
        return 0;
    GMimeStream *source = g_mime_data_wrapper_get_stream(content);
    if (!source)
        return 0;
    if (g_mime_data_wrapper_get_encoding(content) == GMIME_CONTENT_ENCODING_BASE64)
        return base64_copy(source, dest);
    GMimeStream *filtered = g_mime_stream_filter_new(source);
    switch (g_mime_data_wrapper_get_encoding(content)) {
    case GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE:
    case GMIME_CONTENT_ENCODING_UUENCODE: {
        GMimeFilter *decoder =
            g_mime_filter_basic_new(g_mime_data_wrapper_get_encoding(content), FALSE);
        g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), decoder);
        g_object_unref(decoder);
        break;
    }
    default: break;
    }
    g_mime_stream_reset(source);
    gint64 n = g_mime_stream_write_to_stream(filtered, dest);
    int saved = errno;
    g_mime_stream_reset(source);
    g_object_unref(filtered);
    errno = saved;
    return n;
}

/* The decoded size of leaf OBJ. */
static uint64_t
part_size(GMimeObject *obj)
{
    GMimeStream *null = g_mime_stream_null_new();
    gint64 n = part_write(obj, null);
    size_t written = GMIME_STREAM_NULL(null)->written;
    g_object_unref(null);
    return n < 0 ? (uint64_t)written : (uint64_t)n;
}

/* The decoded content of leaf OBJ in memory; owned by the caller (g_byte_array_free). */
static GByteArray *
part_bytes(GMimeObject *obj)
{
    GMimeStream *mem = g_mime_stream_mem_new();
    part_write(obj, mem);
    GByteArray *bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
    g_mime_stream_mem_set_owner(GMIME_STREAM_MEM(mem), FALSE);
    g_object_unref(mem);
    return bytes;
}

/* True for a part with "Content-Disposition: attachment" (RFC 2183 §2.2). */
static bool
is_attachment(GMimeObject *obj)
{
    GMimeContentDisposition *d = g_mime_object_get_content_disposition(obj);
    return d && g_mime_content_disposition_is_attachment(d);
}

/* ---------------------------------------------------------------------------
 * File names.
 */

/* Replaces every "%00" of S by the RFC 2231 escape of U+2400 in UTF-8. */
static enum tern_status
escape_pct00(const char *s, size_t len, struct tbuf *out)
{
    enum tern_status st = TERN_OK;
    for (size_t i = 0; i < len && st == TERN_OK; i++) {
        if (s[i] == '%' && i + 2 < len && s[i + 1] == '0' && s[i + 2] == '0') {
            st = tbuf_adds(out, "%E2%90%80");
            i += 2;
        } else {
            st = tbuf_addc(out, s[i]);
        }
    }
    return st;
}

/* Parameter PARAM of a Content-Disposition or Content-Type value S (GMime parses). */
static char *
param_from(const char *s, bool disposition, const char *param)
{
    char *value = NULL;
    if (disposition) {
        GMimeContentDisposition *d = g_mime_content_disposition_parse(mime_options, s);
        if (d) {
            const char *p = g_mime_content_disposition_get_parameter(d, param);
            value = p ? g_strdup(p) : NULL;
            g_object_unref(d);
        }
    } else {
        GMimeContentType *ct = g_mime_content_type_parse(mime_options, s);
        if (ct) {
            const char *p = g_mime_content_type_get_parameter(ct, param);
            value = p ? g_strdup(p) : NULL;
            g_object_unref(ct);
        }
    }
    return value;
}

/*
 * PARAM of the header field FIELD of OBJ, decoded (RFC 2231, RFC 2047) with
 * the workarounds this file needs: exact bytes when the message holds NULs
 * (shown as U+2400), B words rewritten, and a "%00" in an RFC 2231 value
 * (which GMime's C strings end at) shown as U+2400 when that is what cut it
 * short. Returns a g_malloc'd string, NULL when there is no such parameter
 * or on NOMEM (*ST tells).
 */
static char *
header_param(const struct mime_src *src, GMimeObject *obj, const char *field, const char *param,
             enum tern_status *st)
{
    GMimeHeader *h = last_header(obj, field);
    bool disposition = g_ascii_strcasecmp(field, "Content-Disposition") == 0;
    struct tbuf raw, fixed;
    char *value;

    if (!h)
        return NULL;
    *st = header_raw(src, h, &raw);
    if (*st == TERN_OK)
        *st = prepare_header(tbuf_ptr(&raw), tbuf_len(&raw), true, &fixed);
    else
        tbuf_init(&fixed, 0);
    tbuf_free(&raw);
    if (*st != TERN_OK) {
        tbuf_free(&fixed);
        return NULL;
    }
    value = param_from(tbuf_ptr(&fixed), disposition, param);
    if (find_bytes(tbuf_ptr(&fixed), tbuf_len(&fixed), "%00", 3)) {
        struct tbuf escaped;
        tbuf_init(&escaped, 0);
        *st = escape_pct00(tbuf_ptr(&fixed), tbuf_len(&fixed), &escaped);
        char *longer = *st == TERN_OK ? param_from(tbuf_ptr(&escaped), disposition, param) : NULL;
        /* Only a value that was cut short at the NUL is replaced. */
        if (longer && (!value || (strlen(value) < strlen(longer) &&
                                  strncmp(value, longer, strlen(value)) == 0))) {
            g_free(value);
            value = longer;
        } else {
            g_free(longer);
        }
        tbuf_free(&escaped);
    }
    tbuf_free(&fixed);
    return value;
}

/*
 * The file name of leaf OBJ (RFC 2183 "filename", else the Content-Type
 * "name" parameter, as g_mime_part_get_filename does), sanitized; NULL when
 * it has none. *ST is TERN_E_NOMEM on allocation failure.
 */
static char *
part_filename(const struct mime_src *src, GMimeObject *obj, enum tern_status *st)
{
    char *name;

    *st = TERN_OK;
    name = header_param(src, obj, "Content-Disposition", "filename", st);
    if (!name && *st == TERN_OK)
        name = header_param(src, obj, "Content-Type", "name", st);
    if (!name && *st == TERN_OK && GMIME_IS_PART(obj)) {
        const char *gm = g_mime_part_get_filename(GMIME_PART(obj));
        name = gm ? g_strdup(gm) : NULL;
    }
    if (!name)
        return NULL;
    char *clean = trim_spaces(text_sanitize(name, strlen(name), false));
    g_free(name);
    if (!clean) {
        *st = TERN_E_NOMEM;
        return NULL;
    }
    if (!*clean) {
        free(clean);
        return NULL;
    }
    return clean;
}

/* The length of the UTF-8 sequence that starts with byte C (valid UTF-8 assumed). */
static size_t
utf8_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xF0)
        return 4;
    if (c >= 0xE0)
        return 3;
    return 2;
}

/* Windows device names: a file called "CON.txt" cannot be opened there. */
static bool
is_reserved_name(const char *s)
{
    static const char *const names[] = {"con", "prn", "aux", "nul"};
    size_t stem = strcspn(s, ".");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (stem == 3 && g_ascii_strncasecmp(s, names[i], 3) == 0)
            return true;
    if (stem == 4 &&
        (g_ascii_strncasecmp(s, "com", 3) == 0 || g_ascii_strncasecmp(s, "lpt", 3) == 0) &&
        s[3] >= '1' && s[3] <= '9')
        return true;
    return false;
}

/* Longest safe file name produced, in bytes (NAME_MAX is 255 on Linux). */
#define SAFE_NAME_MAX 200

char *
mime_safe_filename(const char *name)
{
    char *clean = NULL;
    struct tbuf out;

    tbuf_init(&out, 0);
    if (name) {
        clean = text_sanitize(name, strlen(name), false);
        if (!clean)
            return NULL;
    }
    /* The last path component, for both '/' and '\' separators. */
    const char *base = clean ? clean : "";
    for (const char *p = base; *p; p++)
        if (*p == '/' || *p == '\\')
            base = p + 1;
    /* No leading dots (hidden files, "..") or blanks. */
    while (*base == '.' || *base == ' ')
        base++;

    enum tern_status st = TERN_OK;
    for (const char *p = base; *p && st == TERN_OK;) {
        size_t n = utf8_len((unsigned char)*p);
        /*
         * The placeholders text_sanitize left for controls (U+FFFD) and NULs
         * (U+2400), and ':' (a stream separator on NTFS), become '_'.
         */
        bool replace =
            *p == ':' ||
            (n == 3 && (strncmp(p, "\xEF\xBF\xBD", 3) == 0 || strncmp(p, NUL_SYMBOL, 3) == 0));
        st = replace ? tbuf_addc(&out, '_') : tbuf_add(&out, p, n);
        p += n;
    }
    free(clean);
    if (st != TERN_OK) {
        tbuf_free(&out);
        return NULL;
    }
    char *safe = tbuf_take(&out);
    if (!safe)
        return NULL;
    /* No trailing dots or blanks either (Windows drops them silently). */
    size_t len = strlen(safe);
    while (len && (safe[len - 1] == '.' || safe[len - 1] == ' '))
        safe[--len] = '\0';
    if (len > SAFE_NAME_MAX) {
        /* Keep a short extension; cut the stem at a character boundary. */
        const char *dot = strrchr(safe, '.');
        size_t ext = dot && strlen(dot) <= 16 ? strlen(dot) : 0;
        size_t keep = SAFE_NAME_MAX - ext;
        while (keep && ((unsigned char)safe[keep] & 0xC0) == 0x80)
            keep--;
        memmove(safe + keep, safe + len - ext, ext + 1);
        len = keep + ext;
    }
    if (len == 0) {
        free(safe);
        return strdup("attachment");
    }
    if (is_reserved_name(safe)) {
        char *prefixed = malloc(len + 2);
        if (!prefixed) {
            free(safe);
            return NULL;
        }
        prefixed[0] = '_';
        memcpy(prefixed + 1, safe, len + 1);
        free(safe);
        return prefixed;
    }
    return safe;
}

/* ---------------------------------------------------------------------------
 * HTML to text, for mail that has no text/plain part.
 */

struct html_out {
    struct tbuf b;
    size_t want_nl;     /* line ends owed before the next text: 1 new line, 2 a blank line */
    size_t nl_run;      /* line ends at the end of the buffer */
    bool pending_space; /* collapsed white space owed before the next text */
    int pre;            /* depth of <pre> elements: white space kept */
    enum tern_status st;
};

static void
html_add(struct html_out *o, const char *s, size_t n)
{
    if (o->st == TERN_OK && n)
        o->st = tbuf_add(&o->b, s, n);
}

/* Emits owed line ends, never at the start of the text. */
static void
html_flush_breaks(struct html_out *o)
{
    if (tbuf_len(&o->b) > 0) {
        while (o->nl_run < o->want_nl) {
            html_add(o, "\n", 1);
            o->nl_run++;
        }
    }
    o->want_nl = 0;
}

static bool
html_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* Adds text, collapsing white space outside <pre>. */
static void
html_text(struct html_out *o, const char *s, size_t len)
{
    size_t i = 0;
    if (o->pre) {
        if (len)
            html_flush_breaks(o);
        html_add(o, s, len);
        for (size_t k = len; k > 0 && s[k - 1] == '\n'; k--)
            i++;
        o->nl_run = i == len ? o->nl_run + i : i;
        if (len)
            o->pending_space = false;
        return;
    }
    while (i < len) {
        if (html_space((unsigned char)s[i])) {
            o->pending_space = true;
            i++;
            continue;
        }
        size_t run = i;
        while (run < len && !html_space((unsigned char)s[run]))
            run++;
        html_flush_breaks(o);
        if (o->pending_space && o->nl_run == 0 && tbuf_len(&o->b) > 0)
            html_add(o, " ", 1);
        o->pending_space = false;
        html_add(o, s + i, run - i);
        o->nl_run = 0;
        i = run;
    }
}

static void
html_block(struct html_out *o, size_t lines)
{
    if (o->want_nl < lines)
        o->want_nl = lines;
    o->pending_space = false;
}

static bool
name_is(const xmlNode *n, const char *name)
{
    return n->name && g_ascii_strcasecmp((const char *)n->name, name) == 0;
}

static bool
name_in(const xmlNode *n, const char *const *names)
{
    for (; *names; names++)
        if (name_is(n, *names))
            return true;
    return false;
}

static const char *const html_skipped[] = {"script", "style", "head", "title", "template", NULL};
static const char *const html_paragraphs[] = {"p",  "h1",    "h2",         "h3",  "h4",
                                              "h5", "h6",    "blockquote", "pre", "ul",
                                              "ol", "table", "hr",         "dl",  NULL};
static const char *const html_lines[] = {
    "div",  "li",       "tr",     "section",    "article", "header",  "footer",
    "nav",  "aside",    "main",   "address",    "center",  "dt",      "dd",
    "form", "fieldset", "figure", "figcaption", "caption", "details", "summary",
    "body", "html",     "tbody",  "thead",      "tfoot",   NULL};

/*
 * Renders the start of node N: its text, or the line breaks, list marker
 * or image text of an element. For <a>, where its text starts in the output
 * is kept in the node's _private slot (libxml2 leaves it to applications)
 * for html_leave.
 */
static void
html_enter(struct html_out *o, xmlNode *n)
{
    if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) {
        if (n->content)
            html_text(o, (const char *)n->content, strlen((const char *)n->content));
        return;
    }
    if (n->type != XML_ELEMENT_NODE)
        return;
    if (name_is(n, "br")) {
        html_flush_breaks(o);
        if (tbuf_len(&o->b) > 0) {
            html_add(o, "\n", 1);
            o->nl_run++;
        }
        o->pending_space = false;
    } else if (name_in(n, html_paragraphs)) {
        html_block(o, 2);
    } else if (name_in(n, html_lines)) {
        html_block(o, 1);
    } else if (name_is(n, "td") || name_is(n, "th")) {
        o->pending_space = true;
    } else if (name_is(n, "a")) {
        n->_private = (void *)(uintptr_t)(tbuf_len(&o->b) + 1);
    } else if (name_is(n, "img")) {
        xmlChar *alt = xmlGetProp(n, (const xmlChar *)"alt");
        if (alt && *alt) {
            o->pending_space = true;
            html_text(o, "[", 1);
            html_text(o, (const char *)alt, strlen((const char *)alt));
            html_text(o, "]", 1);
        }
        xmlFree(alt);
    }
    if (name_is(n, "li")) {
        html_flush_breaks(o);
        html_add(o, "* ", 2);
        o->nl_run = 0;
        o->pending_space = false;
    }
    if (name_is(n, "pre"))
        o->pre++;
}

/* Compares S with the anchor text T, both without surrounding blanks. */
static bool
same_text(const char *t, size_t tlen, const char *s)
{
    while (tlen && html_space((unsigned char)*t)) {
        t++;
        tlen--;
    }
    while (tlen && html_space((unsigned char)t[tlen - 1]))
        tlen--;
    size_t slen = strlen(s);
    if (slen == tlen && memcmp(s, t, tlen) == 0)
        return true;
    if (g_ascii_strncasecmp(s, "mailto:", 7) == 0 && slen - 7 == tlen &&
        memcmp(s + 7, t, tlen) == 0)
        return true;
    /* "https://example.org/" shown as "https://example.org" or "example.org". */
    if (slen && s[slen - 1] == '/')
        slen--;
    if (slen == tlen && memcmp(s, t, tlen) == 0)
        return true;
    const char *scheme_end = strstr(s, "://");
    if (scheme_end && (size_t)(scheme_end + 3 - s) <= slen) {
        const char *rest = scheme_end + 3;
        size_t rlen = slen - (size_t)(rest - s);
        if (rlen == tlen && memcmp(rest, t, tlen) == 0)
            return true;
    }
    return false;
}

/* Renders the end of element N: line breaks, and a link's URL when its text is not the URL. */
static void
html_leave(struct html_out *o, xmlNode *n)
{
    if (n->type != XML_ELEMENT_NODE)
        return;
    if (name_in(n, html_paragraphs)) {
        html_block(o, 2);
    } else if (name_in(n, html_lines)) {
        html_block(o, 1);
    } else if (name_is(n, "a") && n->_private) {
        size_t start = (size_t)(uintptr_t)n->_private - 1;
        n->_private = NULL;
        xmlChar *href = xmlGetProp(n, (const xmlChar *)"href");
        if (href && *href && *href != '#' && o->st == TERN_OK) {
            size_t len = tbuf_len(&o->b);
            const char *text = tbuf_ptr(&o->b) + (start < len ? start : len);
            size_t tlen = start < len ? len - start : 0;
            if (!same_text(text, tlen, (const char *)href)) {
                bool had_text = false;
                for (size_t k = 0; k < tlen; k++)
                    if (!html_space((unsigned char)text[k]))
                        had_text = true;
                o->pending_space = had_text;
                if (had_text)
                    html_text(o, "<", 1);
                html_text(o, (const char *)href, strlen((const char *)href));
                if (had_text)
                    html_text(o, ">", 1);
            }
        }
        xmlFree(href);
    }
    if (name_is(n, "pre") && o->pre > 0)
        o->pre--;
}

/*
 * Renders UTF-8 HTML (LEN bytes, no NULs) to plain text: scripts, styles and
 * the head skipped; block elements on lines of their own; list items with
 * "* "; links as "text <url>" when the URL is not the text; entities decoded
 * by libxml2; white space collapsed except in <pre>. XML_PARSE_HUGE lifts
 * libxml2's nesting limit of 256, past which it would silently drop the
 * rest of the document; the walk is iterative, so deep nesting costs no
 * stack. The network stays off (HTML_PARSE_NONET). Owned result, NULL on
 * NOMEM.
 */
static char *
html_to_text(const char *html, size_t len)
{
    struct html_out o;
    htmlDocPtr doc;

    memset(&o, 0, sizeof o);
    tbuf_init(&o.b, 0);
    if (len == 0 || len > INT_MAX)
        return len ? text_sanitize(html, len, true) : strdup("");
    doc = htmlReadMemory(html, (int)len, NULL, "UTF-8",
                         HTML_PARSE_RECOVER | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING |
                             HTML_PARSE_NONET | XML_PARSE_HUGE);
    if (!doc)
        return strdup("");
    xmlNode *cur = doc->children;
    while (cur && o.st == TERN_OK) {
        bool skip = cur->type == XML_ELEMENT_NODE && name_in(cur, html_skipped);
        if (!skip) {
            html_enter(&o, cur);
            if (cur->children && cur->type == XML_ELEMENT_NODE) {
                cur = cur->children;
                continue;
            }
            html_leave(&o, cur);
        }
        while (cur && !cur->next) {
            cur = cur->parent;
            if (!cur || cur->type != XML_ELEMENT_NODE) {
                cur = NULL;
                break;
            }
            html_leave(&o, cur);
        }
        if (cur)
            cur = cur->next;
    }
    xmlFreeDoc(doc);
    if (o.st != TERN_OK) {
        tbuf_free(&o.b);
        return NULL;
    }
    /* End with exactly one line end, like a text/plain body. */
    while (tbuf_len(&o.b) && html_space((unsigned char)tbuf_ptr(&o.b)[tbuf_len(&o.b) - 1]))
        o.b.len--;
    if (tbuf_len(&o.b) && tbuf_addc(&o.b, '\n') != TERN_OK) {
        tbuf_free(&o.b);
        return NULL;
    }
    return tbuf_take(&o.b);
}

/*
 * The text of leaf OBJ as sanitized UTF-8: transfer encoding undone, the
 * charset parameter applied (RFC 2046 §4.1.2), HTML rendered when HTML is
 * set. NULL on NOMEM.
 */
static char *
part_text(GMimeObject *obj, bool html)
{
    GByteArray *bytes = part_bytes(obj);
    const char *charset = g_mime_object_get_content_type_parameter(obj, "charset");
    const char *data = bytes->len ? (const char *)bytes->data : "";

    if (html && !charset && !text_valid_utf8(data, bytes->len))
        charset = "windows-1252"; /* HTML's own default for unlabelled Latin text */
    /* text_to_utf8 shows NULs as U+2400, so its result has no NUL inside. */
    char *utf8 = text_to_utf8(data, bytes->len, charset);
    g_byte_array_free(bytes, TRUE);
    if (!utf8)
        return NULL;
    if (html) {
        char *rendered = html_to_text(utf8, strlen(utf8));
        free(utf8);
        if (!rendered)
            return NULL;
        utf8 = rendered;
    }
    char *out = text_sanitize(utf8, strlen(utf8), true);
    free(utf8);
    return out;
}

/*
 * Adds leaf OBJ, numbered ID, to the view's parts. IN_DIGEST: OBJ is a part
 * of a multipart/digest, where a part without a Content-Type field is a
 * message/rfc822 (RFC 2046 §5.1.5).
 */
static enum tern_status
view_add_part(struct view_build *b, GMimeObject *obj, const char *id, bool in_digest)
{
    struct mime_view *v = b->view;
    enum tern_status st = TERN_OK;

    if (v->nparts == b->parts_cap) {
        size_t cap = b->parts_cap ? b->parts_cap * 2 : 8;
        struct mime_part *p = realloc(v->parts, cap * sizeof *p);
        if (!p)
            return TERN_E_NOMEM;
        v->parts = p;
        b->parts_cap = cap;
    }
    struct mime_part *part = &v->parts[v->nparts];
    memset(part, 0, sizeof *part);

    GMimeContentType *ct = g_mime_object_get_content_type(obj);
    char *mime_type = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
    char *lower = g_ascii_strdown(mime_type ? mime_type : "application/octet-stream", -1);
    g_free(mime_type);
    const struct defused *d = src_defused_type(b->src, obj);
    bool message = d && d->kind == DEFUSED_MESSAGE;
    if (d && d->kind != DEFUSED_DIGEST && lower[0] == 'x') {
        /* "xessage/..." or "xultipart/..." is what src_defuse_messages made of it. */
        lower[0] = 'm';
    } else if (in_digest && !last_header(obj, "Content-Type")) {
        g_free(lower);
        lower = g_strdup("message/rfc822");
        message = true;
    }
    part->type = text_sanitize(lower, strlen(lower), false);
    g_free(lower);
    part->id = strdup(id);
    part->filename = part_filename(b->src, obj, &st);
    part->size = part_size(obj);
    v->nparts++;
    if (st == TERN_OK && (!part->type || !part->id))
        st = TERN_E_NOMEM;
    if (st != TERN_OK)
        return st;

    /* The text to show: the first inline text/plain, else the first inline text/html. */
    if (GMIME_IS_PART(obj) && ct && !message && !is_attachment(obj)) {
        if (!b->text_plain && g_mime_content_type_is_type(ct, "text", "plain"))
            b->text_plain = obj;
        else if (!b->text_html && g_mime_content_type_is_type(ct, "text", "html"))
            b->text_html = obj;
    }
    return TERN_OK;
}

/*
 * Lists the leaves under multipart MP, whose part number is ID (empty for
 * the message's own body), in reading order, numbering them as RFC 3501
 * §6.4.5 does. DEPTH counts the multiparts down to MP.
 */
static enum tern_status
view_walk(struct view_build *b, GMimeMultipart *mp, struct tbuf *id, int depth)
{
    int count = g_mime_multipart_get_count(mp);
    size_t id_len = id->len;
    enum tern_status st = TERN_OK;
    const struct defused *d = src_defused_type(b->src, GMIME_OBJECT(mp));
    bool digest = d && d->kind == DEFUSED_DIGEST;

    if (depth > MIME_MAX_DEPTH)
        return TERN_OK;
    for (int i = 0; i < count && st == TERN_OK; i++) {
        GMimeObject *child = g_mime_multipart_get_part(mp, i);
        st = tbuf_addf(id, "%s%d", id_len ? "." : "", i + 1);
        if (st != TERN_OK)
            break;
        if (GMIME_IS_MULTIPART(child))
            st = view_walk(b, GMIME_MULTIPART(child), id, depth + 1);
        else if (child)
            st = view_add_part(b, child, tbuf_ptr(id), digest);
        id->len = id_len;
        id->data[id_len] = '\0';
    }
    return st;
}

/*
 * The body of TOP as sanitized text, from the message bytes: for a
 * multipart in which GMime found no boundary line, so that what is there
 * is still shown (TESTMATRIX M1). GMime's own copy of it (the prologue) is
 * a C string and holds what src_defuse_messages changed. NULL on NOMEM.
 */
static char *
raw_body_text(const struct mime_src *src, GMimeObject *top)
{
    const char *data = (const char *)src->bytes->data;
    size_t len = src->bytes->len, at = 0;
    GMimeHeaderList *list = g_mime_object_get_header_list(top);
    int count = list ? g_mime_header_list_get_count(list) : 0;

    for (int i = 0; i < count; i++) {
        gint64 off = g_mime_header_get_offset(g_mime_header_list_get_header_at(list, i));
        if (off >= 0 && (uint64_t)off < len && (size_t)off >= at)
            at = field_end(data, len, (size_t)off);
    }
    /* The empty line that ends the header. */
    if (at < len && data[at] == '\r')
        at++;
    if (at < len && data[at] == '\n')
        at++;
    char *utf8 =
        text_to_utf8(data + at, len - at, g_mime_object_get_content_type_parameter(top, "charset"));
    char *out = utf8 ? text_sanitize(utf8, strlen(utf8), true) : NULL;
    free(utf8);
    return out;
}

/* Fills a view of the parsed message in SRC. */
static enum tern_status
view_build(const struct mime_src *src, struct mime_view **out, struct tern_err *err)
{
    struct view_build b;
    struct tbuf id;
    enum tern_status st;
    GMimeObject *body = src->top;

    memset(&b, 0, sizeof b);
    b.src = src;
    b.address_budget = ADDRESS_BUDGET;
    b.view = calloc(1, sizeof *b.view);
    if (!b.view)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory building the message view");
    tbuf_init(&id, 0);

    st = view_headers(&b, src->top);
    /* The values were built in tbufs; hand them over as strings. */
    for (size_t i = 0; i < b.view->nheaders; i++) {
        if (st == TERN_OK) {
            b.view->headers[i].value = tbuf_take(&b.values[i]);
            if (!b.view->headers[i].value)
                st = TERN_E_NOMEM;
        }
        tbuf_free(&b.values[i]);
    }
    free(b.values);

    if (st == TERN_OK && body) {
        if (GMIME_IS_MULTIPART(body))
            st = view_walk(&b, GMIME_MULTIPART(body), &id, 1);
        else
            st = view_add_part(&b, body, "1", false);
    }
    tbuf_free(&id);

    if (st == TERN_OK) {
        if (b.text_plain) {
            b.view->text = part_text(b.text_plain, false);
        } else if (b.text_html) {
            b.view->text = part_text(b.text_html, true);
        } else if (body && GMIME_IS_MULTIPART(body) &&
                   g_mime_multipart_get_count(GMIME_MULTIPART(body)) == 0) {
            b.view->text = raw_body_text(src, body);
        } else {
            b.view->text = strdup("");
        }
        if (!b.view->text)
            st = TERN_E_NOMEM;
    }
    if (st != TERN_OK) {
        mime_view_free(b.view);
        return tern_err_set(err, st,
                            st == TERN_E_NOMEM ? "out of memory building the message view"
                                               : "cannot build the message view");
    }
    *out = b.view;
    return TERN_OK;
}

enum tern_status
mime_view_mem(const char *msg, size_t len, struct mime_view **out, struct tern_err *err)
{
    struct mime_src src;
    enum tern_status st;

    if (!out)
        return tern_err_set(err, TERN_E_USAGE, "no place for the message view");
    *out = NULL;
    mime_init();
    st = src_open_mem(&src, msg, len, err);
    if (st == TERN_OK)
        st = view_build(&src, out, err);
    src_close(&src);
    return st;
}

enum tern_status
mime_view_fd(int fd, struct mime_view **out, struct tern_err *err)
{
    struct mime_src src;
    enum tern_status st;

    if (!out)
        return tern_err_set(err, TERN_E_USAGE, "no place for the message view");
    *out = NULL;
    mime_init();
    st = src_open_fd(&src, fd, err);
    if (st == TERN_OK)
        st = view_build(&src, out, err);
    src_close(&src);
    return st;
}

/* ---------------------------------------------------------------------------
 * Saving a part.
 */

/*
 * Finds the part numbered ID (RFC 3501 §6.4.5) the way view_walk numbers
 * them. TERN_E_NOTFOUND, with the sentence, when there is no such leaf.
 */
static enum tern_status
find_part(GMimeObject *top, const char *id, GMimeObject **found, struct tern_err *err)
{
    GMimeObject *cur = top;
    const char *p = id;
    int levels = 0;

    if (!id || !*id || strlen(id) > PART_ID_MAX)
        return tern_err_set(err, TERN_E_NOTFOUND, "no part %.32s%s in this message", id ? id : "",
                            id && strlen(id) > 32 ? "..." : "");
    if (cur && !GMIME_IS_MULTIPART(cur)) {
        /* A message that is not multipart has exactly one part, "1". */
        if (strcmp(id, "1") != 0)
            cur = NULL;
        p = "";
    }
    while (*p && cur) {
        uint64_t n = 0;
        size_t digits = 0;
        while (p[digits] >= '0' && p[digits] <= '9' && digits < 10) {
            n = n * 10 + (uint64_t)(p[digits] - '0');
            digits++;
        }
        bool last = p[digits] == '\0';
        if (digits == 0 || p[0] == '0' || (!last && p[digits] != '.') ||
            ++levels > MIME_MAX_DEPTH || !GMIME_IS_MULTIPART(cur) ||
            n > (uint64_t)g_mime_multipart_get_count(GMIME_MULTIPART(cur))) {
            cur = NULL;
            break;
        }
        cur = g_mime_multipart_get_part(GMIME_MULTIPART(cur), (int)n - 1);
        p += digits + (last ? 0 : 1);
        if (!last && !*p)
            cur = NULL; /* a trailing dot */
    }
    if (!cur)
        return tern_err_set(err, TERN_E_NOTFOUND, "no part %.32s%s in this message", id,
                            strlen(id) > 32 ? "..." : "");
    if (GMIME_IS_MULTIPART(cur))
        return tern_err_set(err, TERN_E_NOTFOUND,
                            "part %.32s of this message is a multipart; save one of its parts", id);
    *found = cur;
    return TERN_OK;
}

static enum tern_status
save_part(const struct mime_src *src, const char *part_id, int out_fd, uint64_t *size,
          struct tern_err *err)
{
    GMimeObject *part = NULL;
    enum tern_status st = find_part(src->top, part_id, &part, err);

    if (st != TERN_OK)
        return st;
    /* A pipe stream: it writes at the descriptor's offset and never fsyncs. */
    GMimeStream *out = g_mime_stream_pipe_new(out_fd);
    if (!out)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory saving part %s", part_id);
    g_mime_stream_pipe_set_owner(GMIME_STREAM_PIPE(out), FALSE);
    errno = 0;
    gint64 n = part_write(part, out);
    int saved = errno;
    g_object_unref(out);
    if (n < 0)
        return tern_err_set(err, TERN_E_IO, "cannot write part %s: %s", part_id,
                            saved ? strerror(saved) : "write failed");
    if (size)
        *size = (uint64_t)n;
    return TERN_OK;
}

enum tern_status
mime_save_part_mem(const char *msg, size_t len, const char *part_id, int out_fd, uint64_t *size,
                   struct tern_err *err)
{
    struct mime_src src;
    enum tern_status st;

    if (size)
        *size = 0;
    mime_init();
    st = src_open_mem(&src, msg, len, err);
    if (st == TERN_OK)
        st = save_part(&src, part_id, out_fd, size, err);
    src_close(&src);
    return st;
}

enum tern_status
mime_save_part_fd(int fd, const char *part_id, int out_fd, uint64_t *size, struct tern_err *err)
{
    struct mime_src src;
    enum tern_status st;

    if (size)
        *size = 0;
    mime_init();
    st = src_open_fd(&src, fd, err);
    if (st == TERN_OK)
        st = save_part(&src, part_id, out_fd, size, err);
    src_close(&src);
    return st;
}
