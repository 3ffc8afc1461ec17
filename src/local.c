/*
 * local.c - local folders: Maildir plus UIDs kept in the state (see local.h).
 *
 * Layer: src/.
 *
 * State records (STATE_MESSAGES and STATE_FOLDERS):
 *   "L" FOLDER "\0" UID (4 bytes, big-endian) -> the maildir unique name
 *   "L" FOLDER                                -> the next UID (4 bytes, big-endian)
 */
#include "local.h"

#include <stdlib.h>
#include <string.h>

#include "maildir.h"
#include "state.h"

bool
local_is_local(const struct tern_session *s, const char *folder)
{
    const struct tern_account *a = s->acct;
    if (!a->imap)
        return true;
    const char *pop = a->pop3_folder ? a->pop3_folder : "Inbox";
    return a->pop3 && strcmp(folder, pop) == 0;
}

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t
get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

struct local_scan {
    struct local_folder *f;
    struct tbuf prefix; /* "L" FOLDER "\0" */
    enum tern_status st;
    bool *fresh; /* the messages of f that get a UID now */
    /* UID records read from the state */
    uint32_t *ruid;
    char **rname;
    size_t nrec, caprec;
};

static enum tern_status
local_on_entry(const struct maildir_entry *e, void *aux)
{
    struct local_scan *ls = aux;
    struct local_folder *f = ls->f;
    struct local_msg *v = realloc(f->v, (f->n + 1) * sizeof(*v));
    if (!v)
        return TERN_E_NOMEM;
    f->v = v;
    struct local_msg *m = &f->v[f->n];
    memset(m, 0, sizeof(*m));
    m->name = strdup(e->name);
    m->flags = strdup(e->flags);
    m->size = e->size;
    m->mtime = e->mtime;
    f->n++;
    return m->name && m->flags ? TERN_OK : TERN_E_NOMEM;
}

static enum tern_status
local_on_record(const void *key, size_t klen, const void *val, size_t vlen, void *aux)
{
    struct local_scan *ls = aux;
    size_t plen = tbuf_len(&ls->prefix);
    if (klen != plen + 4)
        return TERN_OK; /* a longer folder name sharing the prefix */
    if (ls->nrec == ls->caprec) {
        size_t cap = ls->caprec ? ls->caprec * 2 : 256;
        uint32_t *u = realloc(ls->ruid, cap * sizeof(*u));
        if (u)
            ls->ruid = u;
        char **n = u ? realloc(ls->rname, cap * sizeof(*n)) : NULL;
        if (!n)
            return TERN_E_NOMEM;
        ls->rname = n;
        ls->caprec = cap;
    }
    ls->ruid[ls->nrec] = get_be32((const unsigned char *)key + plen);
    ls->rname[ls->nrec] = strndup(val, vlen);
    if (!ls->rname[ls->nrec])
        return TERN_E_NOMEM;
    ls->nrec++;
    return TERN_OK;
}

static int
msg_by_name(const void *a, const void *b)
{
    return strcmp(((const struct local_msg *)a)->name, ((const struct local_msg *)b)->name);
}

static int
msg_by_uid(const void *a, const void *b)
{
    uint32_t x = ((const struct local_msg *)a)->uid, y = ((const struct local_msg *)b)->uid;
    return x < y ? -1 : x > y;
}

/* Writes the UIDs of new messages and forgets those of vanished ones. */
static enum tern_status
local_write(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct local_scan *ls = aux;
    struct local_folder *f = ls->f;
    const char *prefix = tbuf_ptr(&ls->prefix);
    size_t plen = tbuf_len(&ls->prefix);
    /* The folder key is the prefix without its NUL. */
    uint32_t next = 1;
    const void *val = NULL;
    size_t vlen = 0;
    enum tern_status st = state_get(t, STATE_FOLDERS, prefix, plen - 1, &val, &vlen, err);
    if (!st && vlen == 4)
        next = get_be32(val);
    else if (st && st != TERN_E_NOTFOUND)
        return st;
    unsigned char key[4096 + 8];
    if (plen + 4 > sizeof(key))
        return TERN_E_USAGE;
    memcpy(key, prefix, plen);
    for (size_t i = 0; i < f->n; i++) {
        struct local_msg *m = &f->v[i];
        if (!ls->fresh[i])
            continue; /* (this body may run twice: see state_write) */
        m->uid = next++;
        put_be32(key + plen, m->uid);
        st = state_put(t, STATE_MESSAGES, key, plen + 4, m->name, strlen(m->name), err);
        if (st)
            return st;
    }
    for (size_t r = 0; r < ls->nrec; r++) {
        if (!ls->rname[r])
            continue; /* still present (cleared below) */
        put_be32(key + plen, ls->ruid[r]);
        st = state_del(t, STATE_MESSAGES, key, plen + 4, err);
        if (st && st != TERN_E_NOTFOUND)
            return st;
    }
    unsigned char nb[4];
    put_be32(nb, next);
    return state_put(t, STATE_FOLDERS, prefix, plen - 1, nb, 4, err);
}

enum tern_status
local_open(struct tern_session *s, const char *folder, struct local_folder *out)
{
    memset(out, 0, sizeof(*out));
    const struct tern_account *a = s->acct;
    struct local_scan ls = {.f = out};
    tbuf_init(&ls.prefix, 0);
    struct tbuf root;
    tbuf_init(&root, 0);
    enum tern_status st = tbuf_addf(&root, "%s/mail", a->cache_dir);
    if (!st)
        st = maildir_open_folder(tbuf_ptr(&root), folder, strlen(folder), 0, &out->md, &s->err);
    tbuf_free(&root);
    if (st == TERN_E_NOTFOUND)
        st = sess_fail(s, st, "no folder '%s'", folder);
    if (!st)
        st = maildir_scan(out->md, local_on_entry, &ls, &s->err);
    if (!st)
        st = state_open(a->cache_dir, 0, &out->db, &s->err);
    if (!st && !(st = tbuf_addc(&ls.prefix, 'L')) && !(st = tbuf_adds(&ls.prefix, folder)))
        st = tbuf_add(&ls.prefix, "", 1);
    struct state_txn *t = NULL;
    if (!st)
        st = state_txn_begin(out->db, false, &t, &s->err);
    if (!st)
        st = state_iterate(t, STATE_MESSAGES, tbuf_ptr(&ls.prefix), tbuf_len(&ls.prefix),
                           local_on_record, &ls, &s->err);
    state_txn_abort(t);
    bool changed = false;
    if (!st) {
        /* Match files and records by name; what is left over changed. */
        if (out->n)
            qsort(out->v, out->n, sizeof(*out->v), msg_by_name);
        for (size_t r = 0; r < ls.nrec; r++) {
            struct local_msg key = {.name = ls.rname[r]};
            struct local_msg *m =
                out->n ? bsearch(&key, out->v, out->n, sizeof(*out->v), msg_by_name) : NULL;
            if (m && !m->uid) {
                m->uid = ls.ruid[r];
                free(ls.rname[r]);
                ls.rname[r] = NULL;
            } else {
                changed = true; /* the file is gone */
            }
        }
        ls.fresh = calloc(out->n ? out->n : 1, sizeof(*ls.fresh));
        if (!ls.fresh)
            st = TERN_E_NOMEM;
        for (size_t i = 0; !st && i < out->n; i++)
            if (!out->v[i].uid)
                changed = ls.fresh[i] = true;
    }
    if (!st && changed)
        st = state_write(out->db, local_write, &ls, &s->err);
    free(ls.fresh);
    if (!st && out->n)
        qsort(out->v, out->n, sizeof(*out->v), msg_by_uid);
    for (size_t r = 0; r < ls.nrec; r++)
        free(ls.rname[r]);
    free(ls.rname);
    free(ls.ruid);
    tbuf_free(&ls.prefix);
    if (st)
        local_close(out);
    return st;
}

void
local_close(struct local_folder *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].name);
        free(f->v[i].flags);
    }
    free(f->v);
    maildir_close(f->md);
    state_close(f->db);
    memset(f, 0, sizeof(*f));
}

const struct local_msg *
local_find(const struct local_folder *f, uint32_t uid)
{
    struct local_msg key = {.uid = uid};
    return f->n ? bsearch(&key, f->v, f->n, sizeof(*f->v), msg_by_uid) : NULL;
}
