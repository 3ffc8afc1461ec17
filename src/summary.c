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
    char *out = malloc(64);
    if (!out)
        return NULL;
    snprintf(out, 64, "%04ld-%02d-%02ldT%02d:%02d:%02d%c%02d:%02d", year, mon + 1, day, hh, mm,
             ss, sign < 0 ? '-' : '+', zh, zm);
    return out;
}

char *
summary_iso_date(const char *s, size_t len, int imap_format)
{
    if (imap_format)
        return imap_date_iso(s, len);
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
        char *decoded = nm && name->len ? mime_decode_header(nm, name->len) : NULL;
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

enum tern_status
summary_json(const struct imap_item *list, const char *folder, struct tbuf *out, uint32_t *uid)
{
    const struct imap_item *it_uid = fetch_item(list, "UID");
    if (!it_uid || !it_uid->is_number || !it_uid->num || it_uid->num > UINT32_MAX)
        return TERN_E_PROTO;
    *uid = (uint32_t)it_uid->num;
    const struct imap_item *env = fetch_item(list, "ENVELOPE");
    const struct imap_item *e = env && env->type == IMAP_ITEM_LIST ? env->child : NULL;
    const struct imap_item *size = fetch_item(list, "RFC822.SIZE");
    const struct imap_item *idate = fetch_item(list, "INTERNALDATE");

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
    if (imap_item_str(subj)) {
        char *s = mime_decode_header(subj->str, subj->len);
        json_cstr(&j, s ? s : "");
        free(s);
    } else {
        json_cstr(&j, "");
    }

    json_key(&j, "flags");
    summary_flags_json(&j, fetch_item(list, "FLAGS"));
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
    const struct imap_item *refs = fetch_item(list, SUMMARY_REFS_ITEM);
    const struct imap_item *irt = imap_item_nth(e, 8);
    if (!(imap_item_str(refs) && first_msgid(refs->str, refs->len, &root, &rootlen)) &&
        !(imap_item_str(irt) && first_msgid(irt->str, irt->len, &root, &rootlen))) {
        root = own;
        rootlen = ownlen;
    }
    json_key(&j, "thread");
    if (root && rootlen)
        json_net_str(&j, root, rootlen, false);
    else
        json_null(&j);
    json_obj_end(&j);
    return j.st;
}
