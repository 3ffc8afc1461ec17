/*
 * changes.c - commands that change messages: flag, copy, move, delete,
 * expunge.
 *
 * Layer: src/cmd. Every command first resolves its UID set against the
 * folder (UID SEARCH UID), so that the objects it prints name exactly the
 * messages that exist, and a set that matches nothing is "notfound".
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd/commands.h"
#include "cmd/common.h"
#include "json.h"
#include "summary.h"

/* ---- flag ---- */

struct flag_row {
    uint32_t uid;
    char *json;
};

struct flag_run {
    struct tern_session *s;
    const struct uid_list *uids; /* sorted ascending */
    struct flag_row *v;
    size_t n, cap;
    struct tbuf scratch;
    enum tern_status st;
};

static bool
flag_on_fetch(void *aux, const struct imap_response *r)
{
    struct flag_run *fr = aux;
    if (!r->name || strcmp(r->name, "FETCH") != 0 || !r->items || r->items->type != IMAP_ITEM_LIST)
        return false;
    const struct imap_item *uid = fetch_item(r->items->child, "UID");
    const struct imap_item *flags = fetch_item(r->items->child, "FLAGS");
    if (!uid || !uid->is_number || uid->num > UINT32_MAX || !flags ||
        flags->type != IMAP_ITEM_LIST || !uid_list_has(fr->uids, (uint32_t)uid->num))
        return false;
    if (fr->st)
        return true;
    tbuf_reset(&fr->scratch);
    struct json j;
    json_init(&j, &fr->scratch);
    json_obj(&j);
    json_key(&j, "uid");
    json_int(&j, (int64_t)uid->num);
    json_key(&j, "flags");
    summary_flags_json(&j, flags);
    json_obj_end(&j);
    if (j.st) {
        fr->st = j.st;
        return true;
    }
    /* A later FETCH of the same message replaces the earlier one. */
    for (size_t i = 0; i < fr->n; i++) {
        if (fr->v[i].uid == uid->num) {
            free(fr->v[i].json);
            fr->v[i].json = tbuf_take(&fr->scratch);
            return true;
        }
    }
    if (fr->n == fr->cap) {
        size_t cap = fr->cap ? fr->cap * 2 : 64;
        struct flag_row *v = realloc(fr->v, cap * sizeof(*v));
        if (!v) {
            fr->st = TERN_E_NOMEM;
            return true;
        }
        fr->v = v;
        fr->cap = cap;
    }
    fr->v[fr->n].uid = (uint32_t)uid->num;
    fr->v[fr->n].json = tbuf_take(&fr->scratch);
    fr->n++;
    return true;
}

static int
flag_row_cmp(const void *a, const void *b)
{
    const struct flag_row *x = a, *y = b;
    return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* Appends " (\\Seen $x)" built from the +/- words with SIGN to A; *N counts. */
static enum tern_status
flag_list(struct tern_session *s, const struct cmd_words *w, char sign, struct tbuf *out, size_t *n)
{
    *n = 0;
    for (size_t i = 3; i < w->n; i++) {
        const char *word = w->v[i].text;
        if (word[0] != '+' && word[0] != '-')
            return sess_fail(s, TERN_E_USAGE, "'%s': flags start with + or - (e.g. +seen)", word);
        if (word[0] != sign)
            continue;
        const char *wire = summary_flag_wire(word + 1);
        if (!wire)
            return sess_fail(s, TERN_E_USAGE, "'%s' is not a valid flag", word + 1);
        enum tern_status st = tbuf_addf(out, "%s%s", *n ? " " : "", wire);
        if (st)
            return st;
        (*n)++;
    }
    return TERN_OK;
}

enum tern_status
cmd_flag(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    struct tbuf add, del;
    tbuf_init(&add, 0);
    tbuf_init(&del, 0);
    size_t nadd = 0, ndel = 0;
    enum tern_status st = flag_list(s, w, '+', &add, &nadd);
    if (!st)
        st = flag_list(s, w, '-', &del, &ndel);
    struct uid_list uids = {0};
    if (!st)
        st = cmd_open_uids(s, w->v[1].text, w->v[2].text, true, &uids);
    struct flag_run fr = {.s = s, .uids = &uids};
    tbuf_init(&fr.scratch, 0);
    struct sess_op ops[3] = {{0}};
    size_t nops = 0;
    for (int k = 0; k < 3 && !st; k++) {
        if ((k == 0 && !nadd) || (k == 1 && !ndel))
            continue;
        struct imap_args a;
        imap_args_init(&a);
        st = imap_args_raw(&a, " ");
        if (!st)
            st = cmd_args_uids(&a, &uids);
        if (!st && k < 2)
            st = imap_args_raw(&a, " %cFLAGS.SILENT (%s)", k == 0 ? '+' : '-',
                               tbuf_ptr(k == 0 ? &add : &del));
        if (!st && k == 2)
            st = imap_args_raw(&a, " (UID FLAGS)");
        if (!st)
            st = sess_submit(s, k < 2 ? "UID STORE" : "UID FETCH", &a,
                             k == 2 ? flag_on_fetch : NULL, &fr, &ops[nops++]);
        imap_args_free(&a);
    }
    if (nops) {
        enum tern_status wst = sess_wait(s, ops, nops);
        if (!st)
            st = wst;
    }
    if (!st)
        st = fr.st;
    if (!st && fr.n)
        qsort(fr.v, fr.n, sizeof(*fr.v), flag_row_cmp);
    for (size_t i = 0; i < fr.n; i++) {
        if (!st && s->emit && fr.v[i].json)
            s->emit(fr.v[i].json, strlen(fr.v[i].json), s->emit_aux);
        free(fr.v[i].json);
    }
    free(fr.v);
    tbuf_free(&fr.scratch);
    tbuf_free(&add);
    tbuf_free(&del);
    uid_list_free(&uids);
    return st;
}

/* ---- copy and move ---- */

struct copy_map {
    uint32_t *src, *dst;
    size_t n;
};

/* Reads [COPYUID uidvalidity src dst] (RFC 4315 §3) into MAP. */
static bool
copyuid_parse(struct copy_map *map, const struct imap_response *r)
{
    if (!r->code || strcmp(r->code, "COPYUID") != 0)
        return false;
    const struct imap_item *srcs = imap_item_nth(r->code_args, 1);
    const struct imap_item *dsts = imap_item_nth(r->code_args, 2);
    if (!imap_item_str(srcs) || !imap_item_str(dsts))
        return true;
    struct uidset a, b;
    if (uidset_parse(srcs->str, srcs->len, CMD_UIDS_MAX, &a))
        return true;
    if (uidset_parse(dsts->str, dsts->len, CMD_UIDS_MAX, &b)) {
        uidset_free(&a);
        return true;
    }
    uint32_t *va = NULL, *vb = NULL;
    size_t na = 0, nb = 0;
    if (!uidset_expand(&a, 0, CMD_UIDS_MAX, &va, &na) &&
        !uidset_expand(&b, 0, CMD_UIDS_MAX, &vb, &nb) && na == nb) {
        uint32_t *s2 = realloc(map->src, (map->n + na) * sizeof(uint32_t));
        uint32_t *d2 = s2 ? realloc(map->dst, (map->n + na) * sizeof(uint32_t)) : NULL;
        if (s2)
            map->src = s2;
        if (d2) {
            map->dst = d2;
            memcpy(map->src + map->n, va, na * sizeof(uint32_t));
            memcpy(map->dst + map->n, vb, na * sizeof(uint32_t));
            map->n += na;
        }
    }
    free(va);
    free(vb);
    uidset_free(&a);
    uidset_free(&b);
    return true;
}

static bool
copy_on_untagged(void *aux, const struct imap_response *r)
{
    /* MOVE sends COPYUID in an untagged OK before the expunges (RFC 6851 §4.3). */
    return r->cond == IMAP_COND_OK && copyuid_parse(aux, r);
}

static void
copy_on_tagged(struct sess_op *op, const struct imap_response *r)
{
    if (r->cond == IMAP_COND_OK)
        copyuid_parse(op->data, r);
}

static enum tern_status
copy_or_move(struct tern_session *s, const struct cmd_words *w, bool move)
{
    const char *dest = w->v[3].text;
    struct uid_list uids;
    enum tern_status st = cmd_open_uids(s, w->v[1].text, w->v[2].text, move, &uids);
    if (st)
        return st;
    struct copy_map map = {0};
    bool native_move = move && imap_has_cap(s->imap, "MOVE");
    struct imap_args a;
    imap_args_init(&a);
    st = imap_args_raw(&a, " ");
    if (!st)
        st = cmd_args_uids(&a, &uids);
    if (!st)
        st = imap_args_raw(&a, " ");
    if (!st)
        st = sess_arg_folder(s, &a, dest);
    struct sess_op op = {.on_tagged = copy_on_tagged, .data = &map};
    bool trycreate = false;
    if (!st) {
        st = sess_run(s, native_move ? "UID MOVE" : "UID COPY", &a, copy_on_untagged, &map, &op);
        if (st == TERN_E_REFUSED)
            trycreate = strstr(tern_err_msg(&s->err), "[TRYCREATE]") != NULL;
    }
    imap_args_free(&a);
    if (move && !native_move && !st) {
        /* RFC 6851's fallback: COPY, then mark and expunge exactly these. */
        st = cmd_run_on_uids(s, "UID STORE", &uids, " +FLAGS.SILENT (\\Deleted)");
        if (!st && imap_has_cap(s->imap, "UIDPLUS"))
            st = cmd_run_on_uids(s, "UID EXPUNGE", &uids, NULL);
    }
    if (trycreate)
        st = sess_fail(s, TERN_E_NOTFOUND, "no folder '%s'", dest);
    for (size_t i = 0; !st && i < uids.n; i++) {
        struct json j;
        sess_obj_begin(s, &j);
        json_obj(&j);
        json_key(&j, "uid");
        json_int(&j, uids.v[i]);
        json_key(&j, "dest_uid");
        bool found = false;
        for (size_t k = 0; k < map.n; k++) {
            if (map.src[k] == uids.v[i]) {
                json_int(&j, map.dst[k]);
                found = true;
                break;
            }
        }
        if (!found)
            json_null(&j);
        json_obj_end(&j);
        st = sess_obj_emit(s, &j);
    }
    free(map.src);
    free(map.dst);
    uid_list_free(&uids);
    return st;
}

enum tern_status
cmd_copy(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return copy_or_move(s, w, false);
}

enum tern_status
cmd_move(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    return copy_or_move(s, w, true);
}

/* ---- delete and expunge ---- */

enum tern_status
cmd_delete(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    struct uid_list uids;
    enum tern_status st = cmd_open_uids(s, w->v[1].text, w->v[2].text, true, &uids);
    if (st)
        return st;
    st = cmd_run_on_uids(s, "UID STORE", &uids, " +FLAGS.SILENT (\\Deleted)");
    for (size_t i = 0; !st && i < uids.n; i++)
        st = cmd_emit_uid(s, uids.v[i]);
    uid_list_free(&uids);
    return st;
}

enum tern_status
cmd_expunge(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    const char *folder = w->v[1].text;
    enum tern_status st = sess_select(s, folder, true);
    if (st)
        return st;
    struct uid_list uids = {0};
    struct imap_args a;
    imap_args_init(&a);
    st = imap_args_raw(&a, " DELETED");
    if (!st)
        st = sess_run(s, "UID SEARCH", &a, uid_list_on_search, &uids, NULL);
    imap_args_free(&a);
    if (!st && uids.st)
        st = sess_fail(s, uids.st, "malformed SEARCH reply from the server");
    if (!st && uids.n) {
        uid_list_sort(&uids, 0);
        /* UID EXPUNGE (RFC 4315) removes exactly what we report. */
        if (imap_has_cap(s->imap, "UIDPLUS"))
            st = cmd_run_on_uids(s, "UID EXPUNGE", &uids, NULL);
        else
            st = sess_run(s, "EXPUNGE", NULL, NULL, NULL, NULL);
    }
    for (size_t i = 0; !st && i < uids.n; i++)
        st = cmd_emit_uid(s, uids.v[i]);
    uid_list_free(&uids);
    return st;
}
