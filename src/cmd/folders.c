/*
 * folders.c - folder commands: folders, mkdir, rmdir, subscribe,
 * unsubscribe, rename.
 *
 * Layer: src/cmd. Names are UTF-8 here and modified UTF-7 on the wire.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mutf7.h"

#include "cmd/commands.h"
#include "cmd/common.h"
#include "json.h"
#include "text.h"

struct folder_ent {
    char *wire; /* as the server sent it */
    char *name; /* UTF-8 */
    char delim;
    bool noselect;
    bool subscribed;
    const char *special;
    int64_t total, unseen; /* -1: unknown */
};

struct folder_list {
    struct folder_ent *v;
    size_t n, cap;
    bool lsub_phase; /* LSUB replies mark subscriptions */
    enum tern_status st;
};

static const struct {
    const char *attr, *special;
} specials[] = {
    {"\\Sent", "sent"},       {"\\Drafts", "drafts"}, {"\\Trash", "trash"},     {"\\Junk", "junk"},
    {"\\Archive", "archive"}, {"\\All", "all"},       {"\\Flagged", "flagged"},
};

static struct folder_ent *
folder_find(struct folder_list *fl, const char *wire, size_t len)
{
    for (size_t i = 0; i < fl->n; i++)
        if (strlen(fl->v[i].wire) == len && memcmp(fl->v[i].wire, wire, len) == 0)
            return &fl->v[i];
    return NULL;
}

static void
folder_on_list(struct folder_list *fl, const struct imap_response *r)
{
    const struct imap_item *attrs = r->items;
    const struct imap_item *delim = imap_item_nth(r->items, 1);
    const struct imap_item *name = imap_item_nth(r->items, 2);
    if (!attrs || attrs->type != IMAP_ITEM_LIST || !imap_item_str(name)) {
        fl->st = TERN_E_PROTO;
        return;
    }
    if (memchr(name->str, '\0', name->len))
        return; /* never a usable name (TESTMATRIX M5) */
    struct folder_ent *e = folder_find(fl, name->str, name->len);
    if (!e) {
        if (fl->lsub_phase)
            return;
        if (fl->n == fl->cap) {
            size_t cap = fl->cap ? fl->cap * 2 : 32;
            struct folder_ent *v = realloc(fl->v, cap * sizeof(*v));
            if (!v) {
                fl->st = TERN_E_NOMEM;
                return;
            }
            fl->v = v;
            fl->cap = cap;
        }
        e = &fl->v[fl->n++];
        memset(e, 0, sizeof(*e));
        e->total = e->unseen = -1;
        e->wire = strndup(name->str, name->len);
        if (strcasecmp(e->wire ? e->wire : "", "INBOX") == 0) {
            e->name = strdup("INBOX");
            e->special = "inbox";
        } else if (mutf7_decode(name->str, name->len, &e->name) != TERN_OK) {
            /* Not modified UTF-7 (TESTMATRIX I10): show it, sanitized. */
            e->name = text_sanitize(name->str, name->len, false);
        }
        if (!e->wire || !e->name) {
            fl->st = TERN_E_NOMEM;
            return;
        }
        const char *d = imap_item_str(delim);
        e->delim = d && delim->len == 1 ? d[0] : 0;
    }
    for (const struct imap_item *a = attrs->child; a; a = a->next) {
        const char *s = imap_item_str(a);
        if (!s)
            continue;
        if (fl->lsub_phase) {
            e->subscribed = true;
            break;
        }
        if (strcasecmp(s, "\\Noselect") == 0 || strcasecmp(s, "\\NonExistent") == 0)
            e->noselect = true;
        else if (strcasecmp(s, "\\Subscribed") == 0)
            e->subscribed = true;
        for (size_t i = 0; i < sizeof(specials) / sizeof(specials[0]); i++)
            if (strcasecmp(s, specials[i].attr) == 0 && !e->special)
                e->special = specials[i].special;
    }
    if (fl->lsub_phase && !attrs->child)
        e->subscribed = true;
}

static void
folder_on_status(struct folder_list *fl, const struct imap_response *r)
{
    /* RFC 3501 §7.2.4: * STATUS name (MESSAGES n UNSEEN m) */
    const struct imap_item *name = r->items;
    const struct imap_item *vals = name ? name->next : NULL;
    if (!imap_item_str(name) || !vals || vals->type != IMAP_ITEM_LIST)
        return;
    struct folder_ent *e = folder_find(fl, name->str, name->len);
    if (!e)
        return;
    for (const struct imap_item *k = vals->child; k && k->next; k = k->next->next) {
        if (!k->next->is_number)
            continue;
        if (imap_item_is(k, "MESSAGES"))
            e->total = (int64_t)k->next->num;
        else if (imap_item_is(k, "UNSEEN"))
            e->unseen = (int64_t)k->next->num;
    }
}

static bool
folder_on_untagged(void *aux, const struct imap_response *r)
{
    struct folder_list *fl = aux;
    if (!r->name)
        return false;
    if (strcmp(r->name, "LIST") == 0 || strcmp(r->name, "LSUB") == 0)
        folder_on_list(fl, r);
    else if (strcmp(r->name, "STATUS") == 0)
        folder_on_status(fl, r);
    else
        return false;
    return true;
}

static int
folder_cmp(const void *a, const void *b)
{
    const struct folder_ent *x = a, *y = b;
    bool xi = strcmp(x->name, "INBOX") == 0, yi = strcmp(y->name, "INBOX") == 0;
    if (xi != yi)
        return xi ? -1 : 1;
    return strcmp(x->name, y->name);
}

static void
folder_list_free(struct folder_list *fl)
{
    for (size_t i = 0; i < fl->n; i++) {
        free(fl->v[i].wire);
        free(fl->v[i].name);
    }
    free(fl->v);
}

enum tern_status
cmd_folders(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    enum tern_status st = sess_imap(s);
    if (st)
        return st;
    struct folder_list fl = {0};
    struct imap_args a;
    imap_args_init(&a);
    bool ext = imap_has_cap(s->imap, "LIST-EXTENDED");
    bool lstatus = ext && imap_has_cap(s->imap, "LIST-STATUS");
    if (ext) {
        /* RFC 5258 return options, RFC 6154 SPECIAL-USE, RFC 5819 STATUS. */
        st = imap_args_raw(&a, " \"\" \"*\" RETURN (SUBSCRIBED%s%s)",
                           imap_has_cap(s->imap, "SPECIAL-USE") ? " SPECIAL-USE" : "",
                           lstatus ? " STATUS (MESSAGES UNSEEN)" : "");
        if (!st)
            st = sess_run(s, "LIST", &a, folder_on_untagged, &fl, NULL);
    } else {
        st = imap_args_raw(&a, " \"\" \"*\"");
        if (!st)
            st = sess_run(s, "LIST", &a, folder_on_untagged, &fl, NULL);
        if (!st) {
            fl.lsub_phase = true;
            st = sess_run(s, "LSUB", &a, folder_on_untagged, &fl, NULL);
            fl.lsub_phase = false;
        }
    }
    imap_args_free(&a);
    if (!st && fl.st)
        st = sess_fail(s, fl.st, "malformed LIST reply from the server");
    if (!st && !lstatus) {
        /* STATUS for each selectable folder, pipelined. */
        struct sess_op *ops = calloc(fl.n ? fl.n : 1, sizeof(*ops));
        size_t nops = 0;
        if (!ops)
            st = TERN_E_NOMEM;
        for (size_t i = 0; !st && i < fl.n; i++) {
            if (fl.v[i].noselect)
                continue;
            imap_args_init(&a);
            st = imap_args_raw(&a, " ");
            if (!st)
                st = imap_args_string(&a, fl.v[i].wire, strlen(fl.v[i].wire));
            if (!st)
                st = imap_args_raw(&a, " (MESSAGES UNSEEN)");
            if (!st)
                st = sess_submit(s, "STATUS", &a, folder_on_untagged, &fl, &ops[nops++]);
            imap_args_free(&a);
        }
        if (!st)
            st = sess_wait(s, ops, nops);
        else if (nops)
            sess_wait(s, ops, nops);
        free(ops);
        if (st == TERN_E_REFUSED)
            st = TERN_OK; /* a folder that vanished meanwhile keeps null counts */
    }
    if (!st && fl.n)
        qsort(fl.v, fl.n, sizeof(*fl.v), folder_cmp);
    for (size_t i = 0; !st && i < fl.n; i++) {
        struct folder_ent *e = &fl.v[i];
        struct json j;
        sess_obj_begin(s, &j);
        json_obj(&j);
        json_key(&j, "name");
        json_cstr(&j, e->name);
        json_key(&j, "delimiter");
        if (e->delim) {
            char d[2] = {e->delim, 0};
            json_net_str(&j, d, 1, false);
        } else {
            json_null(&j);
        }
        json_key(&j, "special");
        json_cstr(&j, e->special);
        json_key(&j, "subscribed");
        json_bool(&j, e->subscribed);
        json_key(&j, "total");
        if (e->total >= 0)
            json_int(&j, e->total);
        else
            json_null(&j);
        json_key(&j, "unseen");
        if (e->unseen >= 0)
            json_int(&j, e->unseen);
        else
            json_null(&j);
        json_obj_end(&j);
        st = sess_obj_emit(s, &j);
    }
    folder_list_free(&fl);
    return st;
}

/* Runs NAME with one folder argument (and a second for RENAME). */
static enum tern_status
folder_simple(struct tern_session *s, const char *cmd, const char *folder, const char *folder2)
{
    enum tern_status st = sess_imap(s);
    if (st)
        return st;
    if (!*folder || (folder2 && !*folder2))
        return sess_fail(s, TERN_E_USAGE, "%s: empty folder name", cmd);
    struct imap_args a;
    imap_args_init(&a);
    st = imap_args_raw(&a, " ");
    if (!st)
        st = sess_arg_folder(s, &a, folder);
    if (!st && folder2) {
        st = imap_args_raw(&a, " ");
        if (!st)
            st = sess_arg_folder(s, &a, folder2);
    }
    bool missing = false;
    if (!st) {
        /* Renaming or deleting the selected folder must not leave it selected. */
        if (s->selected && (strcmp(cmd, "DELETE") == 0 || strcmp(cmd, "RENAME") == 0) &&
            strcmp(s->selected, folder) == 0) {
            free(s->selected);
            s->selected = NULL;
            if (imap_has_cap(s->imap, "UNSELECT"))
                sess_run(s, "UNSELECT", NULL, NULL, NULL, NULL);
        }
        st = sess_run(s, cmd, &a, NULL, NULL, NULL);
        if (st == TERN_E_REFUSED) {
            const char *msg = tern_err_msg(&s->err);
            missing = strstr(msg, "[NONEXISTENT]") != NULL;
        }
    }
    imap_args_free(&a);
    if (st == TERN_E_REFUSED && missing)
        return sess_fail(s, TERN_E_NOTFOUND, "no folder '%s'", folder);
    if (st)
        return st;
    return cmd_emit_folder(s, folder2 ? folder2 : folder);
}

enum tern_status
cmd_mkdir(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return folder_simple(s, "CREATE", w->v[1].text, NULL);
}

enum tern_status
cmd_rmdir(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    if (strcasecmp(w->v[1].text, "INBOX") == 0)
        return sess_fail(s, TERN_E_USAGE, "INBOX cannot be removed");
    return folder_simple(s, "DELETE", w->v[1].text, NULL);
}

enum tern_status
cmd_subscribe(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return folder_simple(s, "SUBSCRIBE", w->v[1].text, NULL);
}

enum tern_status
cmd_unsubscribe(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return folder_simple(s, "UNSUBSCRIBE", w->v[1].text, NULL);
}

enum tern_status
cmd_rename(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return folder_simple(s, "RENAME", w->v[1].text, w->v[2].text);
}
