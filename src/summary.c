/*
 * summary.c - FETCH items to summary JSON (see summary.h).
 *
 * Layer: src/. Uses GMime for RFC 5322 dates and mime.h for encoded words.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <gmime/gmime.h>

#include "json.h"
#include "mime.h"
#include "summary.h"

/* ---- FETCH items ---- */

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
    snprintf(out, 128, "%04d-%02d-%02dT%02d:%02d:%02d%c%02d:%02d", (int)year, mon + 1, (int)day,
             hh, mm, ss, sign < 0 ? '-' : '+', zh, zm);
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

/* Appends one ENVELOPE address list as "Name <a@b>, c@d" to B. */
static void
address_list(struct tbuf *b, const struct imap_item *list)
{
    if (!list || list->type != IMAP_ITEM_LIST)
        return;
    bool first = true;
    for (const struct imap_item *a = list->child; a; a = a->next) {
        if (a->type != IMAP_ITEM_LIST)
            continue;
        const struct imap_item *name = imap_item_nth(a->child, 0);
        const struct imap_item *mailbox = imap_item_nth(a->child, 2);
        const struct imap_item *host = imap_item_nth(a->child, 3);
        const char *mb = imap_item_str(mailbox);
        const char *hs = imap_item_str(host);
        if (!hs)
            continue; /* RFC 3501 §7.4.2: group start/end markers */
        if (!first)
            tbuf_adds(b, ", ");
        first = false;
        const char *nm = imap_item_str(name);
        bool plain = nm != NULL;
        for (size_t i = 0; nm && i < name->len && plain; i++) {
            unsigned char c = (unsigned char)nm[i];
            plain = c >= 0x20 && c < 0x7f && !(c == '=' && nm[i + 1] == '?');
        }
        char *decoded = !nm || !name->len ? NULL
                        : plain           ? strndup(nm, name->len)
                                          : mime_decode_header(nm, name->len);
        if (decoded && *decoded) {
            tbuf_adds(b, decoded);
            tbuf_adds(b, " <");
        }
        tbuf_adds(b, mb ? mb : "");
        tbuf_addc(b, '@');
        tbuf_adds(b, hs);
        if (decoded && *decoded)
            tbuf_addc(b, '>');
        free(decoded);
    }
}

static void
json_envelope_addr(struct json *j, const char *key, const struct imap_item *list)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    address_list(&b, list);
    json_key(j, key);
    json_net_str(j, tbuf_ptr(&b), tbuf_len(&b), false);
    tbuf_free(&b);
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
    const struct imap_item *it_uid = NULL, *env = NULL, *size = NULL, *idate = NULL;
    const struct imap_item *flags = NULL, *refs = NULL;
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
        case 'e':
            if (strcasecmp(n, "ENVELOPE") == 0)
                env = v;
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
        case 'b':
            if (strcasecmp(n, SUMMARY_REFS_ITEM) == 0)
                refs = v;
            break;
        }
    }
    if (!it_uid || !it_uid->is_number || !it_uid->num || it_uid->num > UINT32_MAX)
        return TERN_E_PROTO;
    *uid = (uint32_t)it_uid->num;
    const struct imap_item *e = env && env->type == IMAP_ITEM_LIST ? env->child : NULL;

    tbuf_reset(out);
    struct json j;
    json_init(&j, out);
    json_obj(&j);
    json_key(&j, "uid");
    json_int(&j, *uid);
    if (folder) {
        json_key(&j, "folder");
        json_cstr(&j, folder);
    }

    char *date = NULL;
    const struct imap_item *edate = imap_item_nth(e, 0);
    if (imap_item_str(edate))
        date = summary_iso_date(edate->str, edate->len, 0);
    if (!date && imap_item_str(idate))
        date = summary_iso_date(idate->str, idate->len, 1);
    json_key(&j, "date");
    json_cstr(&j, date);
    free(date);

    json_envelope_addr(&j, "from", imap_item_nth(e, 2));
    json_envelope_addr(&j, "to", imap_item_nth(e, 5));

    const struct imap_item *subj = imap_item_nth(e, 1);
    json_key(&j, "subject");
    if (imap_item_str(subj))
        json_header_text(&j, subj->str, subj->len);
    else
        json_cstr(&j, "");

    json_key(&j, "flags");
    summary_flags_json(&j, flags);
    json_key(&j, "size");
    if (size && size->is_number)
        json_int(&j, (int64_t)size->num);
    else
        json_null(&j);

    const struct imap_item *mid = imap_item_nth(e, 9);
    json_key(&j, "message_id");
    const char *own = NULL;
    size_t ownlen = 0;
    if (imap_item_str(mid)) {
        own = mid->str;
        ownlen = mid->len;
        strip_msgid(&own, &ownlen);
        json_net_str(&j, own, ownlen, false);
    } else {
        json_null(&j);
    }

    const char *root = NULL;
    size_t rootlen = 0;
    const struct imap_item *irt = imap_item_nth(e, 8);
    if (!(imap_item_str(refs) && first_msgid(refs->str, refs->len, &root, &rootlen)) &&
        !(imap_item_str(irt) && first_msgid(irt->str, irt->len, &root, &rootlen))) {
        root = own;
        rootlen = ownlen;
    }
    json_key(&j, "thread");
    if (root && rootlen) {
        json_net_str(&j, root, rootlen, false);
    } else {
        /* No Message-ID anywhere: the message is a thread of its own. */
        char tid[24];
        snprintf(tid, sizeof(tid), "uid:%u", *uid);
        json_cstr(&j, tid);
    }
    json_obj_end(&j);
    return j.st;
}
