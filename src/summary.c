/*
 * summary.c - FETCH items to summary JSON (see summary.h).
 *
 * Layer: src/. Uses GMime for RFC 5322 dates and mime.h for encoded words.
 */
#include "summary.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "json.h"
#include "mime.h"
#include "text.h"

/* ---- FETCH items ---- */

bool
summary_has_headers(const struct imap_item *list)
{
    for (const struct imap_item *it = list; it && it->next; it = it->next->next)
        if (it->type == IMAP_ITEM_ATOM && strncasecmp(it->str, "BODY[HEADER.FIELDS", 18) == 0)
            return true;
    return false;
}

const struct imap_item *
fetch_item(const struct imap_item *list, const char *name)
{
    for (const struct imap_item *it = list; it && it->next; it = it->next->next) {
        if (it->type == IMAP_ITEM_ATOM && strcasecmp(it->str, name) == 0)
            return it->next;
    }
    return NULL;
}

static const struct {
    const char *wire, *name;
} system_flags[] = {
    {"\\Seen", "seen"},       {"\\Answered", "answered"}, {"\\Flagged", "flagged"},
    {"\\Deleted", "deleted"}, {"\\Draft", "draft"},
};

void
summary_flags_json(struct json *j, const struct imap_item *flags)
{
    json_arr(j);
    for (const struct imap_item *f = flags ? flags->child : NULL; f; f = f->next) {
        const char *s = imap_item_str(f);
        if (!s || strcasecmp(s, "\\Recent") == 0)
            continue;
        const char *name = NULL;
        for (size_t i = 0; i < sizeof(system_flags) / sizeof(system_flags[0]); i++)
            if (strcasecmp(s, system_flags[i].wire) == 0)
                name = system_flags[i].name;
        if (name)
            json_cstr(j, name);
        else
            json_net_str(j, s, f->len, false);
    }
    json_arr_end(j);
}

const char *
summary_flag_wire(const char *name)
{
    for (size_t i = 0; i < sizeof(system_flags) / sizeof(system_flags[0]); i++)
        if (strcasecmp(name, system_flags[i].name) == 0)
            return system_flags[i].wire;
    if (!*name || *name == '\\')
        return NULL;
    /* A keyword is an atom (RFC 3501 §9 flag-keyword). */
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c))
            return NULL;
    }
    return name;
}

static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* "17-Jul-1996 02:44:25 -0700" (RFC 3501 date-time) */
static char *
imap_date_iso(const char *s, size_t len)
{
    char buf[40];
    if (len >= sizeof(buf))
        return NULL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *p = buf;
    while (*p == ' ')
        p++;
    char *end;
    long day = strtol(p, &end, 10);
    if (end == p || *end != '-' || day < 1 || day > 31)
        return NULL;
    p = end + 1;
    int mon = -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(p, months[i], 3) == 0)
            mon = i;
    if (mon < 0 || p[3] != '-')
        return NULL;
    p += 4;
    long year = strtol(p, &end, 10);
    if (end == p || *end != ' ')
        return NULL;
    p = end + 1;
    int hh, mm, ss, sign;
    if (strlen(p) < 14 || p[2] != ':' || p[5] != ':' || p[8] != ' ')
        return NULL;
    hh = (p[0] - '0') * 10 + (p[1] - '0');
    mm = (p[3] - '0') * 10 + (p[4] - '0');
    ss = (p[6] - '0') * 10 + (p[7] - '0');
    sign = p[9] == '-' ? -1 : 1;
    if (p[9] != '+' && p[9] != '-')
        return NULL;
    int zh = (p[10] - '0') * 10 + (p[11] - '0');
    int zm = (p[12] - '0') * 10 + (p[13] - '0');
    for (int i = 0; i < 14; i++)
        if (i != 2 && i != 5 && i != 8 && i != 9 && (p[i] < '0' || p[i] > '9'))
            return NULL;
    if (year < 1 || year > 9999)
        return NULL;
    char *out = malloc(128);
    if (!out)
        return NULL;
    snprintf(out, 128, "%04d-%02d-%02dT%02d:%02d:%02d%c%02d:%02d", (int)year, mon + 1, (int)day, hh,
             mm, ss, sign < 0 ? '-' : '+', zh, zm);
    return out;
}

/* Reads 1-4 digits at *P into *V. */
static bool
take_num(const char **p, const char *end, int min_digits, int max_digits, long *v)
{
    int n = 0;
    *v = 0;
    while (*p < end && **p >= '0' && **p <= '9' && n < max_digits) {
        *v = *v * 10 + (**p - '0');
        (*p)++;
        n++;
    }
    return n >= min_digits;
}

/*
 * The common RFC 5322 §3.3 form, "[Tue, ]5 Mar 2024 10:00[:00] +0100",
 * parsed by hand; anything else goes to GMime's lenient parser.
 */
static char *
rfc5322_date_fast(const char *s, size_t len)
{
    const char *p = s, *end = s + len;
    while (p < end && *p == ' ')
        p++;
    if (end - p > 4 && p[3] == ',')
        p += 4;
    while (p < end && *p == ' ')
        p++;
    long day, year, hh, mm, ss = 0, zone;
    if (!take_num(&p, end, 1, 2, &day) || p >= end || *p++ != ' ' || end - p < 4)
        return NULL;
    int mon = -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(p, months[i], 3) == 0)
            mon = i;
    p += 3;
    if (mon < 0 || p >= end || *p++ != ' ' || !take_num(&p, end, 4, 4, &year) || p >= end ||
        *p++ != ' ' || !take_num(&p, end, 2, 2, &hh) || p >= end || *p++ != ':' ||
        !take_num(&p, end, 2, 2, &mm))
        return NULL;
    if (p < end && *p == ':') {
        p++;
        if (!take_num(&p, end, 2, 2, &ss))
            return NULL;
    }
    if (p >= end || *p++ != ' ' || p >= end || (*p != '+' && *p != '-'))
        return NULL;
    char sign = *p++;
    if (!take_num(&p, end, 4, 4, &zone))
        return NULL;
    while (p < end && *p == ' ')
        p++;
    /* A trailing comment such as "(CET)" is allowed; anything else is not. */
    if (p < end && *p != '(')
        return NULL;
    if (day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 || zone % 100 > 59 ||
        zone / 100 > 23 || year < 1900)
        return NULL;
    /* Sized for any int so that no compiler sees a possible truncation. */
    char *out = malloc(128);
    if (!out)
        return NULL;
    snprintf(out, 128, "%04d-%02d-%02dT%02d:%02d:%02d%c%02d:%02d", (int)year, mon + 1, (int)day,
             (int)hh, (int)mm, (int)ss, sign, (int)(zone / 100), (int)(zone % 100));
    return out;
}

char *
summary_iso_date(const char *s, size_t len, int imap_format)
{
    if (imap_format)
        return imap_date_iso(s, len);
    char *fast = rfc5322_date_fast(s, len);
    if (fast)
        return fast;
    char *copy = strndup(s, len);
    if (!copy)
        return NULL;
    GDateTime *dt = g_mime_utils_header_decode_date(copy);
    free(copy);
    if (!dt)
        return NULL;
    gchar *txt = g_date_time_format(dt, "%Y-%m-%dT%H:%M:%S%:z");
    g_date_time_unref(dt);
    if (!txt)
        return NULL;
    char *out = strdup(txt);
    g_free(txt);
    return out;
}

/* True when LEN bytes of P are printable ASCII without encoded words. */
static bool
plain_ascii(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c >= 0x7f || (c == '=' && i + 1 < len && p[i + 1] == '?'))
            return false;
    }
    return true;
}

/*
 * The common address forms "Name <a@b>" and "a@b", formatted without
 * GMime; false for anything else (quotes, comments, groups, lists,
 * encoded words), which GMime's parser handles.
 */
static bool
address_fast(struct tbuf *b, const char *p, size_t len)
{
    while (len && (*p == ' ' || *p == '\t'))
        p++, len--;
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (!len || !plain_ascii(p, len))
        return false;
    for (size_t i = 0; i < len; i++)
        if (strchr(",;\"()\\:[]", p[i]))
            return false;
    const char *lt = memchr(p, '<', len);
    if (!lt) {
        if (memchr(p, ' ', len) || memchr(p, '>', len))
            return false;
        return tbuf_add(b, p, len) == TERN_OK;
    }
    if (p[len - 1] != '>' || memchr(lt + 1, '<', len - (size_t)(lt + 1 - p)))
        return false;
    size_t namelen = (size_t)(lt - p);
    while (namelen && p[namelen - 1] == ' ')
        namelen--;
    const char *addr = lt + 1;
    size_t addrlen = (size_t)(p + len - 1 - addr);
    if (memchr(addr, '>', addrlen))
        return false;
    enum tern_status st = TERN_OK;
    if (namelen) {
        st = tbuf_add(b, p, namelen);
        if (!st)
            st = tbuf_adds(b, " <");
    }
    if (!st)
        st = tbuf_add(b, addr, addrlen);
    if (!st && namelen)
        st = tbuf_addc(b, '>');
    return st == TERN_OK;
}

static void
address_gmime(struct tbuf *b, InternetAddressList *list, bool *first)
{
    int n = internet_address_list_length(list);
    for (int i = 0; i < n; i++) {
        InternetAddress *ia = internet_address_list_get_address(list, i);
        if (INTERNET_ADDRESS_IS_GROUP(ia)) {
            address_gmime(b, internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia)), first);
            continue;
        }
        const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
        const char *name = internet_address_get_name(ia);
        if (!*first)
            tbuf_adds(b, ", ");
        *first = false;
        if (name && *name) {
            tbuf_adds(b, name);
            tbuf_adds(b, " <");
        }
        tbuf_adds(b, addr ? addr : "");
        if (name && *name)
            tbuf_addc(b, '>');
    }
}

/* Writes an address header value as "Name <a@b>, c@d" (RFC 5322 §3.4). */
static void
json_address(struct json *j, const char *key, const char *raw, size_t len)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    json_key(j, key);
    if (!raw || address_fast(&b, raw, len)) {
        json_net_str(j, tbuf_ptr(&b), tbuf_len(&b), false);
        tbuf_free(&b);
        return;
    }
    tbuf_reset(&b);
    /* GMime wants UTF-8: raw 8-bit bytes go through the header decoder. */
    char *text = plain_ascii(raw, len) || text_valid_utf8(raw, len) ? strndup(raw, len)
                                                                    : mime_decode_header(raw, len);
    InternetAddressList *list = text ? internet_address_list_parse(NULL, text) : NULL;
    bool first = true;
    if (list && internet_address_list_length(list) > 0)
        address_gmime(&b, list, &first);
    else if (text)
        tbuf_adds(&b, text); /* unparseable: shown as it is (TESTMATRIX M3) */
    if (list)
        g_object_unref(list);
    free(text);
    json_net_str(j, tbuf_ptr(&b), tbuf_len(&b), false);
    tbuf_free(&b);
}

/* The header fields a summary needs, as raw values (unfolded). */
enum summary_field {
    SF_DATE,
    SF_FROM,
    SF_TO,
    SF_SUBJECT,
    SF_MESSAGE_ID,
    SF_IN_REPLY_TO,
    SF_REFERENCES,
    SF_COUNT,
};

static const char *const summary_field_names[SF_COUNT] = {
    "Date", "From", "To", "Subject", "Message-ID", "In-Reply-To", "References",
};

struct summary_headers {
    const char *v[SF_COUNT];
    size_t len[SF_COUNT];
    struct tbuf unfolded[SF_COUNT]; /* used only for folded values */
};

/*
 * Splits a header block (RFC 5322 §2.2) into the fields above. Values
 * point into P unless folded, in which case they are unfolded into a
 * buffer. The first occurrence of a field wins.
 */
static void
headers_split(struct summary_headers *h, const char *p, size_t len)
{
    const char *end = p + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        const char *next = eol ? eol + 1 : end;
        if (!colon || p == line_end || *p == ' ' || *p == '\t') {
            p = next;
            continue;
        }
        int f = -1;
        size_t nlen = (size_t)(colon - p);
        for (int i = 0; i < SF_COUNT; i++)
            if (strlen(summary_field_names[i]) == nlen &&
                strncasecmp(p, summary_field_names[i], nlen) == 0)
                f = i;
        /* The value runs on over continuation lines. */
        const char *vend = line_end;
        while (next < end && (*next == ' ' || *next == '\t')) {
            const char *e2 = memchr(next, '\n', (size_t)(end - next));
            vend = e2 ? e2 : end;
            next = e2 ? e2 + 1 : end;
        }
        if (f >= 0 && !h->v[f]) {
            const char *v = colon + 1;
            size_t vlen = (size_t)(vend - v);
            if (memchr(v, '\n', vlen)) {
                struct tbuf *u = &h->unfolded[f];
                for (size_t i = 0; i < vlen; i++)
                    if (v[i] != '\r' && v[i] != '\n')
                        tbuf_addc(u, v[i]);
                v = tbuf_ptr(u);
                vlen = tbuf_len(u);
            }
            while (vlen && (*v == ' ' || *v == '\t'))
                v++, vlen--;
            while (vlen && (v[vlen - 1] == '\r' || v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            h->v[f] = v;
            h->len[f] = vlen;
        }
        p = next;
    }
}

/* The first "<id>" in P (LEN bytes), without brackets; false when none. */
static bool
first_msgid(const char *p, size_t len, const char **id, size_t *idlen)
{
    const char *lt = memchr(p, '<', len);
    if (!lt)
        return false;
    const char *gt = memchr(lt, '>', len - (size_t)(lt - p));
    if (!gt || gt == lt + 1)
        return false;
    *id = lt + 1;
    *idlen = (size_t)(gt - lt - 1);
    return true;
}

/* Message-ID text without surrounding blanks and brackets. */
static void
strip_msgid(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '<'))
        (*p)++, (*n)--;
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '>'))
        (*n)--;
}

/* Decoded header text: the raw bytes when they hold no encoded word and
 * are printable ASCII (most subjects and names), else mime_decode_header. */
static void
json_header_text(struct json *j, const char *raw, size_t len)
{
    bool plain = true;
    for (size_t i = 0; i < len && plain; i++) {
        unsigned char c = (unsigned char)raw[i];
        plain = c >= 0x20 && c < 0x7f && !(c == '=' && i + 1 < len && raw[i + 1] == '?');
    }
    if (plain) {
        json_str(j, raw, len);
        return;
    }
    char *s = mime_decode_header(raw, len);
    json_cstr(j, s ? s : "");
    free(s);
}

enum tern_status
summary_json(const struct imap_item *list, const char *folder, struct tbuf *out, uint32_t *uid)
{
    const struct imap_item *it_uid = NULL, *hdrs = NULL, *size = NULL, *idate = NULL;
    const struct imap_item *flags = NULL;
    /* One pass over the name/value pairs (RFC 3501 §7.4.2). */
    for (const struct imap_item *it = list; it && it->next; it = it->next->next) {
        if (it->type != IMAP_ITEM_ATOM)
            continue;
        const char *n = it->str;
        const struct imap_item *v = it->next;
        switch (n[0] | 0x20) {
        case 'u':
            if (strcasecmp(n, "UID") == 0)
                it_uid = v;
            break;
        case 'b':
            if (strncasecmp(n, "BODY[HEADER.FIELDS", 18) == 0)
                hdrs = v; /* servers differ in how they echo the field list */
            break;
        case 'r':
            if (strcasecmp(n, "RFC822.SIZE") == 0)
                size = v;
            break;
        case 'i':
            if (strcasecmp(n, "INTERNALDATE") == 0)
                idate = v;
            break;
        case 'f':
            if (strcasecmp(n, "FLAGS") == 0)
                flags = v;
            break;
        }
    }
    if (!it_uid || !it_uid->is_number || !it_uid->num || it_uid->num > UINT32_MAX)
        return TERN_E_PROTO;
    *uid = (uint32_t)it_uid->num;
    char *idate_iso = imap_item_str(idate) ? summary_iso_date(idate->str, idate->len, 1) : NULL;
    struct summary_src src = {
        .uid = *uid,
        .folder = folder,
        .hdrs = imap_item_str(hdrs) ? hdrs->str : NULL,
        .hlen = imap_item_str(hdrs) ? hdrs->len : 0,
        .fallback_date = idate_iso,
        .imap_flags = flags,
        .has_size = size && size->is_number,
        .size = size && size->is_number ? size->num : 0,
    };
    enum tern_status st = summary_write(&src, out);
    free(idate_iso);
    return st;
}

/* Maildir info letters (maildir(5)) as flag names, in the order of the
 * IMAP system flags. */
static void
maildir_flags_json(struct json *j, const char *letters)
{
    static const struct {
        char letter;
        const char *name;
    } map[] = {
        {'S', "seen"}, {'R', "answered"}, {'F', "flagged"}, {'T', "deleted"}, {'D', "draft"}};
    json_arr(j);
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (letters && strchr(letters, map[i].letter))
            json_cstr(j, map[i].name);
    json_arr_end(j);
}

enum tern_status
summary_write(const struct summary_src *src, struct tbuf *out)
{
    struct summary_headers h;
    memset(&h, 0, sizeof(h));
    for (int i = 0; i < SF_COUNT; i++)
        tbuf_init(&h.unfolded[i], 0);
    if (src->hdrs)
        headers_split(&h, src->hdrs, src->hlen);

    tbuf_reset(out);
    struct json j;
    json_init(&j, out);
    json_obj(&j);
    json_key(&j, "uid");
    json_int(&j, src->uid);
    if (src->folder) {
        json_key(&j, "folder");
        json_cstr(&j, src->folder);
    }

    char *date = NULL;
    if (h.v[SF_DATE])
        date = summary_iso_date(h.v[SF_DATE], h.len[SF_DATE], 0);
    json_key(&j, "date");
    json_cstr(&j, date ? date : src->fallback_date);
    free(date);

    json_address(&j, "from", h.v[SF_FROM], h.len[SF_FROM]);
    json_address(&j, "to", h.v[SF_TO], h.len[SF_TO]);

    json_key(&j, "subject");
    if (h.v[SF_SUBJECT])
        json_header_text(&j, h.v[SF_SUBJECT], h.len[SF_SUBJECT]);
    else
        json_cstr(&j, "");

    json_key(&j, "flags");
    if (src->imap_flags || !src->maildir_flags)
        summary_flags_json(&j, src->imap_flags);
    else
        maildir_flags_json(&j, src->maildir_flags);
    json_key(&j, "size");
    if (src->has_size)
        json_int(&j, (int64_t)src->size);
    else
        json_null(&j);

    json_key(&j, "message_id");
    const char *own = NULL;
    size_t ownlen = 0;
    if (h.v[SF_MESSAGE_ID] &&
        !first_msgid(h.v[SF_MESSAGE_ID], h.len[SF_MESSAGE_ID], &own, &ownlen)) {
        own = h.v[SF_MESSAGE_ID];
        ownlen = h.len[SF_MESSAGE_ID];
        strip_msgid(&own, &ownlen);
    }
    if (own && ownlen)
        json_net_str(&j, own, ownlen, false);
    else
        json_null(&j);

    /* RFC 5322 §3.6.4: the first References entry is the thread's root. */
    const char *root = NULL;
    size_t rootlen = 0;
    if (!(h.v[SF_REFERENCES] &&
          first_msgid(h.v[SF_REFERENCES], h.len[SF_REFERENCES], &root, &rootlen)) &&
        !(h.v[SF_IN_REPLY_TO] &&
          first_msgid(h.v[SF_IN_REPLY_TO], h.len[SF_IN_REPLY_TO], &root, &rootlen))) {
        root = own;
        rootlen = ownlen;
    }
    json_key(&j, "thread");
    if (root && rootlen) {
        json_net_str(&j, root, rootlen, false);
    } else {
        /* No Message-ID anywhere: the message is a thread of its own. */
        char tid[24];
        snprintf(tid, sizeof(tid), "uid:%u", src->uid);
        json_cstr(&j, tid);
    }
    json_obj_end(&j);
    for (int i = 0; i < SF_COUNT; i++)
        tbuf_free(&h.unfolded[i]);
    return j.st;
}
