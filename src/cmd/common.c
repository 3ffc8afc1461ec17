/*
 * common.c - helpers shared by the command handlers (see common.h).
 *
 * Layer: src/cmd.
 */
#include "cmd/common.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"

void
uid_list_free(struct uid_list *l)
{
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static void
uid_list_push(struct uid_list *l, uint64_t uid)
{
    if (l->st || !uid || uid > UINT32_MAX)
        return;
    if (l->n >= CMD_UIDS_MAX) {
        l->st = TERN_E_PROTO;
        return;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        uint32_t *v = realloc(l->v, cap * sizeof(*v));
        if (!v) {
            l->st = TERN_E_NOMEM;
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (uint32_t)uid;
}

bool
uid_list_on_search(void *aux, const struct imap_response *r)
{
    struct uid_list *l = aux;
    if (!r->name)
        return false;
    if (strcmp(r->name, "SEARCH") == 0) {
        /* RFC 3501 §7.2.5; CONDSTORE may append "(MODSEQ n)". */
        for (const struct imap_item *it = r->items; it; it = it->next)
            if (it->type == IMAP_ITEM_ATOM && it->is_number)
                uid_list_push(l, it->num);
        return true;
    }
    if (strcmp(r->name, "ESEARCH") != 0)
        return false;
    /* RFC 4731: * ESEARCH (TAG "T1") UID ALL 1:3,5 */
    for (const struct imap_item *it = r->items; it; it = it->next) {
        if (!imap_item_is(it, "ALL") || !it->next)
            continue;
        const char *set = imap_item_str(it->next);
        if (!set)
            continue;
        struct uidset us;
        if (uidset_parse(set, it->next->len, CMD_UIDS_MAX, &us)) {
            l->st = TERN_E_PROTO;
            return true;
        }
        uint32_t *v = NULL;
        size_t n = 0;
        if (uidset_expand(&us, 0, CMD_UIDS_MAX, &v, &n) == TERN_OK) {
            for (size_t i = 0; i < n; i++)
                uid_list_push(l, v[i]);
            free(v);
        } else {
            l->st = TERN_E_PROTO;
        }
        uidset_free(&us);
    }
    return true;
}

static int
cmp_asc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int
cmp_desc(const void *a, const void *b)
{
    return cmp_asc(b, a);
}

void
uid_list_sort(struct uid_list *l, int descending)
{
    if (l->n)
        qsort(l->v, l->n, sizeof(*l->v), descending ? cmp_desc : cmp_asc);
    /* Drop duplicates. */
    size_t j = 0;
    for (size_t i = 0; i < l->n; i++)
        if (j == 0 || l->v[j - 1] != l->v[i])
            l->v[j++] = l->v[i];
    l->n = j;
}

enum tern_status
cmd_parse_uids(struct tern_session *s, const char *word, struct uidset *out)
{
    if (uidset_parse(word, strlen(word), 100000, out))
        return sess_fail(s, TERN_E_USAGE, "'%s' is not a UID set (examples: 12, 3,7,9, 100:200, *)",
                         word);
    return TERN_OK;
}

enum tern_status
cmd_args_uids(struct imap_args *a, const struct uid_list *l)
{
    struct uidset set;
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = uidset_from_list(l->v, l->n, &set);
    if (st)
        return st;
    st = uidset_format(&set, &b);
    if (!st)
        st = imap_args_raw(a, "%s", tbuf_ptr(&b));
    uidset_free(&set);
    tbuf_free(&b);
    return st;
}

enum tern_status
cmd_resolve_uids(struct tern_session *s, const char *folder, const struct uidset *set,
                 struct uid_list *out)
{
    memset(out, 0, sizeof(*out));
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = uidset_format(set, &b);
    struct imap_args a;
    imap_args_init(&a);
    if (!st)
        st = imap_args_raw(&a, " UID %s", tbuf_ptr(&b));
    tbuf_free(&b);
    if (!st)
        st = sess_run(s, "UID SEARCH", &a, uid_list_on_search, out, NULL);
    imap_args_free(&a);
    if (!st && out->st)
        st = sess_fail(s, out->st, "malformed SEARCH reply from the server");
    if (st) {
        uid_list_free(out);
        return st;
    }
    uid_list_sort(out, 0);
    if (out->n == 0) {
        struct tbuf sb;
        tbuf_init(&sb, 0);
        uidset_format(set, &sb);
        st = sess_fail(s, TERN_E_NOTFOUND, "no message with UID %s in folder '%s'", tbuf_ptr(&sb),
                       folder);
        tbuf_free(&sb);
        uid_list_free(out);
    }
    return st;
}

bool
uid_list_has(const struct uid_list *l, uint32_t uid)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->v[mid] == uid)
            return true;
        if (l->v[mid] < uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

enum tern_status
cmd_open_uids(struct tern_session *s, const char *folder, const char *word, bool write,
              struct uid_list *out)
{
    memset(out, 0, sizeof(*out));
    struct uidset set;
    enum tern_status st = cmd_parse_uids(s, word, &set);
    if (st)
        return st;
    st = sess_select(s, folder, write);
    if (!st)
        st = cmd_resolve_uids(s, folder, &set, out);
    uidset_free(&set);
    return st;
}

enum tern_status
cmd_run_on_uids(struct tern_session *s, const char *name, const struct uid_list *l,
                const char *suffix)
{
    struct imap_args a;
    imap_args_init(&a);
    enum tern_status st = imap_args_raw(&a, " ");
    if (!st)
        st = cmd_args_uids(&a, l);
    if (!st && suffix)
        st = imap_args_raw(&a, "%s", suffix);
    if (!st)
        st = sess_run(s, name, &a, NULL, NULL, NULL);
    imap_args_free(&a);
    return st;
}

enum tern_status
cmd_emit_uid(struct tern_session *s, uint32_t uid)
{
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    json_key(&j, "uid");
    json_int(&j, uid);
    json_obj_end(&j);
    return sess_obj_emit(s, &j);
}

enum tern_status
cmd_emit_folder(struct tern_session *s, const char *name)
{
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    json_key(&j, "folder");
    json_str(&j, name, strlen(name));
    json_obj_end(&j);
    return sess_obj_emit(s, &j);
}
