/*
 * pop.c - the `pop` command: download over POP3 into the account's local
 * folder, without ever losing or duplicating a message.
 *
 * Layer: src/cmd.
 *
 * The order that loses nothing (issue "POP3 download"), per batch of
 * messages, each step durable before the next begins:
 *
 *   RETR into tmp/ files -> record PENDING (LMDB commit) -> one syncfs,
 *   rename into new/, fsync the directory -> record STORED (LMDB commit)
 *   -> only then DELE -> QUIT
 *
 * A crash anywhere leaves either tmp/ files (never counted as stored) or
 * PENDING records; the next run settles each PENDING record by looking for
 * its file: present means STORED, absent means the record goes and the
 * message is downloaded again. A message is deleted on the server only
 * when its STORED record is durable, and every run deletes what is STORED
 * and still on the server (delete mode), so an interrupted QUIT is repaired
 * by the next run. Two different messages that share a UIDL are kept apart
 * by their position among the duplicates; a server without UIDL gets keys
 * from a hash of the message content (and the result says so).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "pop3.h"

#include "account.h"
#include "cmd/commands.h"
#include "cmd/common.h"
#include "json.h"
#include "maildir.h"
#include "session.h"
#include "state.h"

/* A batch is this many messages: one sync and two LMDB commits each. */
#define POP_BATCH_MESSAGES 200
#define POP_KEY_MAX 70

struct pop_msg {
    uint32_t msgno;
    char key[POP_KEY_MAX + 1]; /* state key; "" until known (hash mode) */
    bool known;                /* a STORED record exists */
    int64_t downloaded_at;
    bool want; /* to download */
    bool dele; /* to delete on the server */
};

struct pop_run {
    struct tern_session *s;
    const struct tern_account *a;
    struct pop3_conn *c;
    struct state_db *db;
    struct maildir *md;
    struct maildir_batch *batch;
    bool keep;
    bool hash_mode;
    struct pop_msg *m;
    size_t n;
    /* the message being downloaded */
    size_t cur;
    size_t idx;
    int fd;
    EVP_MD_CTX *sha;
    enum tern_status st;
    size_t *batch_msgs; /* index into m of each batch entry */
    size_t nbatch;
    char **hashes; /* hash mode: the content keys stored before */
    size_t nhashes;
    unsigned downloaded, deleted;
};

/* ---- waiting for the engine ---- */

struct pop_wait {
    bool done;
    enum tern_status st;
    uint32_t count;
    struct pop3_uid *uids;
    char **uidstrs; /* owned copies the entries of UIDS point to */
    size_t nuids;
};

static void
pop_on_done(void *aux, enum tern_status st, const char *text)
{
    (void)text;
    struct pop_wait *w = aux;
    w->st = st;
    w->done = true;
}

static enum tern_status
pop_wait(struct tern_session *s, struct pop_wait *w)
{
    enum tern_status st = loop_run_until(s->loop, &w->done);
    return st ? st : w->st;
}

static void
pop_on_stat(void *aux, enum tern_status st, uint32_t count, uint64_t octets)
{
    (void)octets;
    struct pop_wait *w = aux;
    w->count = count;
    pop_on_done(aux, st, NULL);
}

static void
pop_on_uidl(void *aux, enum tern_status st, const struct pop3_uid *v, size_t n)
{
    struct pop_wait *w = aux;
    if (!st && n) {
        w->uids = calloc(n, sizeof(*w->uids));
        w->uidstrs = calloc(n, sizeof(*w->uidstrs));
        if (!w->uids || !w->uidstrs) {
            st = TERN_E_NOMEM;
        } else {
            for (size_t i = 0; i < n; i++) {
                w->uids[i] = v[i];
                w->uidstrs[i] = strndup(v[i].uid, v[i].len);
                w->uids[i].uid = w->uidstrs[i];
                if (!w->uidstrs[i])
                    st = TERN_E_NOMEM;
            }
            w->nuids = n;
        }
    }
    pop_on_done(aux, st, NULL);
}

/* ---- keys ---- */

static void
hex_key(char *out, const char *prefix, const unsigned char *md, size_t mdlen, unsigned dup)
{
    static const char hex[] = "0123456789abcdef";
    size_t p = strlen(prefix);
    memcpy(out, prefix, p);
    for (size_t i = 0; i < mdlen && p + 2 < 56; i++) {
        out[p++] = hex[md[i] >> 4];
        out[p++] = hex[md[i] & 15];
    }
    out[p] = '\0';
    if (dup)
        snprintf(out + p, POP_KEY_MAX + 1 - p, "#%u", dup);
}

/* The state key of a message with UIDL U: the UIDL itself when it is valid
 * and unique; otherwise a hash of it with the position among duplicates. */
static void
uidl_key(char *out, const struct pop3_uid *u, unsigned dup)
{
    if (u->valid && !u->duplicate) {
        memcpy(out, u->uid, u->len);
        out[u->len] = '\0';
        return;
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(u->uid, u->len, md, &mdlen, EVP_sha256(), NULL);
    hex_key(out, "u:", md, mdlen, dup + 1);
}

/* ---- state ---- */

static enum tern_status
pop_on_record(const char *uidl, size_t ulen, const struct state_pop3_rec *r, void *aux)
{
    struct pop_run *run = aux;
    for (size_t i = 0; i < run->n; i++) {
        struct pop_msg *m = &run->m[i];
        if (strlen(m->key) == ulen && memcmp(m->key, uidl, ulen) == 0 &&
            r->status == STATE_POP3_STORED) {
            m->known = true;
            m->downloaded_at = r->downloaded_at;
        }
    }
    return TERN_OK;
}

static enum tern_status
pop_on_hash_record(const char *uidl, size_t ulen, const struct state_pop3_rec *r, void *aux)
{
    struct pop_run *run = aux;
    if (r->status != STATE_POP3_STORED || ulen < 2 || memcmp(uidl, "h:", 2) != 0)
        return TERN_OK;
    char **v = realloc(run->hashes, (run->nhashes + 1) * sizeof(*v));
    if (!v)
        return TERN_E_NOMEM;
    run->hashes = v;
    if (!(v[run->nhashes] = strndup(uidl, ulen)))
        return TERN_E_NOMEM;
    run->nhashes++;
    return TERN_OK;
}

/* Settles PENDING records left by an interrupted run (see the top). */
struct pop_settle {
    struct pop_run *run;
    char **keys;
    bool *stored;
    char **files;
    size_t n, cap;
};

static enum tern_status
pop_collect_pending(const char *uidl, size_t ulen, const struct state_pop3_rec *r, void *aux)
{
    struct pop_settle *ps = aux;
    if (r->status != STATE_POP3_PENDING)
        return TERN_OK;
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 16;
        char **k = realloc(ps->keys, cap * sizeof(*k));
        if (k)
            ps->keys = k;
        char **f = k ? realloc(ps->files, cap * sizeof(*f)) : NULL;
        if (f)
            ps->files = f;
        bool *s = f ? realloc(ps->stored, cap * sizeof(*s)) : NULL;
        if (!s)
            return TERN_E_NOMEM;
        ps->stored = s;
        ps->cap = cap;
    }
    ps->keys[ps->n] = strndup(uidl, ulen);
    ps->files[ps->n] = strdup(r->file);
    ps->stored[ps->n] = false;
    ps->n++;
    return TERN_OK;
}

static enum tern_status
pop_settle_write(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct pop_settle *ps = aux;
    const char *acct = ps->run->a->name;
    for (size_t i = 0; i < ps->n; i++) {
        enum tern_status st;
        if (ps->stored[i]) {
            struct state_pop3_rec r = {STATE_POP3_STORED, ps->files[i], sess_now(), 0};
            st = state_pop3_put(t, acct, ps->keys[i], strlen(ps->keys[i]), &r, err);
        } else {
            st = state_pop3_del(t, acct, ps->keys[i], strlen(ps->keys[i]), err);
        }
        if (st)
            return st;
    }
    return TERN_OK;
}

static enum tern_status
pop_settle(struct pop_run *run)
{
    struct tern_session *s = run->s;
    struct pop_settle ps = {.run = run};
    struct state_txn *t = NULL;
    enum tern_status st = state_txn_begin(run->db, false, &t, &s->err);
    if (!st)
        st = state_pop3_each(t, run->a->name, pop_collect_pending, &ps, &s->err);
    state_txn_abort(t);
    for (size_t i = 0; !st && i < ps.n; i++) {
        char *file = NULL;
        if (!ps.keys[i] || !ps.files[i]) {
            st = TERN_E_NOMEM;
            break;
        }
        enum tern_status fst = maildir_msg_find(run->md, ps.files[i], &file, &s->err);
        ps.stored[i] = fst == TERN_OK;
        free(file);
        if (fst && fst != TERN_E_NOTFOUND)
            st = fst;
    }
    if (!st && ps.n)
        st = state_write(run->db, pop_settle_write, &ps, &s->err);
    for (size_t i = 0; i < ps.n; i++) {
        free(ps.keys[i]);
        free(ps.files[i]);
    }
    free(ps.keys);
    free(ps.files);
    free(ps.stored);
    return st;
}

/* ---- the sink: one message into the batch ---- */

static enum tern_status
pop_sink_begin(void *aux, uint32_t msgno)
{
    struct pop_run *run = aux;
    run->cur = run->n;
    for (size_t i = 0; i < run->n; i++)
        if (run->m[(msgno - 1 + i) % run->n].msgno == msgno) {
            run->cur = (msgno - 1 + i) % run->n;
            break;
        }
    if (run->cur == run->n)
        return TERN_E_PROTO;
    enum tern_status st =
        maildir_batch_add(run->batch, run->md, NULL, &run->idx, &run->fd, &run->s->err);
    if (st)
        return st;
    if (run->hash_mode) {
        if (!run->sha)
            run->sha = EVP_MD_CTX_new();
        if (!run->sha || EVP_DigestInit_ex(run->sha, EVP_sha256(), NULL) != 1)
            return TERN_E_NOMEM;
    }
    return TERN_OK;
}

static enum tern_status
pop_sink_data(void *aux, const char *p, size_t n)
{
    struct pop_run *run = aux;
    if (run->hash_mode)
        EVP_DigestUpdate(run->sha, p, n);
    return maildir_batch_write(run->batch, run->idx, p, n, &run->s->err);
}

static void
pop_sink_end(void *aux, bool ok, uint64_t size)
{
    (void)size;
    struct pop_run *run = aux;
    struct pop_msg *m = &run->m[run->cur];
    if (ok && run->hash_mode) {
        unsigned char md[32];
        unsigned int mdlen = 0;
        EVP_DigestFinal_ex(run->sha, md, &mdlen);
        hex_key(m->key, "h:", md, mdlen, 0);
        /* Content stored before (or twice on the server) is not stored again. */
        for (size_t i = 0; i < run->nhashes && ok; i++)
            if (strcmp(run->hashes[i], m->key) == 0)
                ok = false;
        for (size_t b = 0; b < run->nbatch && ok; b++)
            if (strcmp(run->m[run->batch_msgs[b]].key, m->key) == 0)
                ok = false;
        if (!ok)
            m->known = true;
    }
    if (ok && maildir_batch_finish(run->batch, run->idx, &run->s->err) == TERN_OK) {
        run->batch_msgs[run->nbatch++] = run->cur;
        return;
    }
    maildir_batch_discard(run->batch, run->idx);
}

static enum tern_status
pop_record(struct state_txn *t, void *aux, struct tern_err *err, enum state_pop3_status status)
{
    struct pop_run *run = aux;
    for (size_t b = 0; b < run->nbatch; b++) {
        struct pop_msg *m = &run->m[run->batch_msgs[b]];
        const char *name = maildir_batch_name(run->batch, b);
        struct state_pop3_rec r = {status, name, sess_now(), maildir_batch_size(run->batch, b)};
        enum tern_status st = state_pop3_put(t, run->a->name, m->key, strlen(m->key), &r, err);
        if (st)
            return st;
    }
    return TERN_OK;
}

static enum tern_status
pop_record_pending(struct state_txn *t, void *aux, struct tern_err *err)
{
    return pop_record(t, aux, err, STATE_POP3_PENDING);
}

static enum tern_status
pop_record_stored(struct state_txn *t, void *aux, struct tern_err *err)
{
    return pop_record(t, aux, err, STATE_POP3_STORED);
}

/* Downloads the messages marked WANT, a batch at a time. */
static enum tern_status
pop_download(struct pop_run *run)
{
    struct tern_session *s = run->s;
    enum tern_status st = TERN_OK;
    run->batch_msgs = calloc(POP_BATCH_MESSAGES, sizeof(*run->batch_msgs));
    if (!run->batch_msgs)
        return TERN_E_NOMEM;
    size_t i = 0;
    while (!st && i < run->n) {
        st = maildir_batch_new(&run->batch, &s->err);
        run->nbatch = 0;
        /* The batch's RETRs go out together (pipelined when the server
         * offers it); the sink finds each message by its number. */
        struct pop_wait waits[POP_BATCH_MESSAGES];
        size_t nwait = 0;
        struct pop3_sink sink = {pop_sink_begin, pop_sink_data, pop_sink_end, run};
        while (!st && i < run->n && nwait < POP_BATCH_MESSAGES) {
            struct pop_msg *m = &run->m[i++];
            if (!m->want)
                continue;
            memset(&waits[nwait], 0, sizeof(waits[nwait]));
            st = pop3_retr(run->c, m->msgno, &sink, pop_on_done, &waits[nwait]);
            if (!st)
                nwait++;
        }
        for (size_t k = 0; k < nwait; k++) {
            enum tern_status wst = pop_wait(s, &waits[k]);
            if (!st)
                st = wst;
        }
        sess_test_step("retrieved");
        if (!st && run->nbatch) {
            st = state_write(run->db, pop_record_pending, run, &s->err);
            sess_test_step("pending recorded");
            if (!st)
                st = maildir_batch_commit(run->batch, &s->err);
            sess_test_step("stored");
            if (!st)
                st = state_write(run->db, pop_record_stored, run, &s->err);
            sess_test_step("stored recorded");
            for (size_t b = 0; !st && b < run->nbatch; b++) {
                struct pop_msg *m = &run->m[run->batch_msgs[b]];
                m->known = true;
                m->downloaded_at = sess_now();
                run->downloaded++;
            }
        }
        if (st)
            maildir_batch_abort(run->batch);
        maildir_batch_free(run->batch);
        run->batch = NULL;
    }
    return st;
}

/* ---- the command ---- */

static enum tern_status
pop_connect(struct pop_run *run)
{
    struct tern_session *s = run->s;
    const struct tern_account *a = run->a;
    struct sess_conn c;
    enum tern_status st = sess_conn_opts(s, a->pop3, true, &c);
    if (st)
        return st;
    struct pop3_opts o;
    memset(&o, 0, sizeof(o));
    o.host = a->pop3->host;
    o.port = a->pop3->port;
    o.security = c.security == SESS_SEC_IMPLICIT ? POP3_SEC_IMPLICIT_TLS
                 : c.security == SESS_SEC_NONE   ? POP3_SEC_NONE
                                                 : POP3_SEC_STLS;
    o.verify = c.verify;
    memcpy(o.fingerprint, c.fingerprint, sizeof(o.fingerprint));
    o.ca_file = c.ca_file;
    o.user = c.user;
    o.secret = c.secret;
    o.mech = c.mech;
    o.timeout_ms = c.timeout_ms;
    pop3_limits_default(&o.limits);
    if (s->trace) {
        o.trace = sess_trace;
        o.trace_aux = s;
    }
    st = pop3_new(s->loop, &o, &s->err, &run->c);
    struct pop_wait w = {0};
    if (!st)
        st = pop3_open(run->c, pop_on_done, &w);
    if (!st)
        st = pop_wait(s, &w);
    return st;
}

/* Lists the messages on the server and decides what to fetch and delete. */
static enum tern_status
pop_plan(struct pop_run *run)
{
    struct tern_session *s = run->s;
    struct pop_wait w = {0};
    enum tern_status st = pop3_uidl(run->c, pop_on_uidl, &w);
    if (!st)
        st = pop_wait(s, &w);
    if (st == TERN_E_REFUSED) {
        /* RFC 1939 §7: UIDL is optional. Count with STAT and hash contents. */
        run->hash_mode = true;
        struct pop_wait sw = {0};
        st = pop3_stat(run->c, pop_on_stat, &sw);
        if (!st)
            st = pop_wait(s, &sw);
        if (!st) {
            run->n = sw.count;
            run->m = calloc(run->n ? run->n : 1, sizeof(*run->m));
            if (!run->m)
                st = TERN_E_NOMEM;
            for (size_t i = 0; !st && i < run->n; i++)
                run->m[i].msgno = (uint32_t)(i + 1);
        }
    } else if (!st) {
        run->n = w.nuids;
        run->m = calloc(run->n ? run->n : 1, sizeof(*run->m));
        if (!run->m)
            st = TERN_E_NOMEM;
        for (size_t i = 0; !st && i < run->n; i++) {
            unsigned dup = 0;
            for (size_t k = 0; k < i; k++)
                if (w.uids[k].len == w.uids[i].len &&
                    memcmp(w.uids[k].uid, w.uids[i].uid, w.uids[i].len) == 0)
                    dup++;
            run->m[i].msgno = w.uids[i].msgno;
            uidl_key(run->m[i].key, &w.uids[i], dup);
        }
    }
    for (size_t i = 0; i < w.nuids; i++)
        free(w.uidstrs[i]);
    free(w.uidstrs);
    free(w.uids);
    if (st)
        return st;
    if (!run->hash_mode) {
        struct state_txn *t = NULL;
        st = state_txn_begin(run->db, false, &t, &s->err);
        if (!st)
            st = state_pop3_each(t, run->a->name, pop_on_record, run, &s->err);
        state_txn_abort(t);
    } else {
        /* Known contents: every STORED hash record of the account. */
        struct state_txn *t = NULL;
        st = state_txn_begin(run->db, false, &t, &s->err);
        if (!st)
            st = state_pop3_each(t, run->a->name, pop_on_hash_record, run, &s->err);
        state_txn_abort(t);
    }
    for (size_t i = 0; !st && i < run->n; i++)
        run->m[i].want = !run->m[i].known;
    return st;
}

static enum tern_status
pop_delete(struct pop_run *run)
{
    struct tern_session *s = run->s;
    const struct tern_account *a = run->a;
    int64_t now = sess_now();
    struct pop_wait *waits = calloc(run->n ? run->n : 1, sizeof(*waits));
    if (!waits)
        return TERN_E_NOMEM;
    enum tern_status st = TERN_OK;
    size_t sent = 0;
    for (size_t i = 0; !st && i < run->n; i++) {
        struct pop_msg *m = &run->m[i];
        if (!m->known)
            continue;
        if (run->keep) {
            if (!a->pop3_keep_days || m->downloaded_at > now - (int64_t)a->pop3_keep_days * 86400)
                continue;
        }
        m->dele = true;
        st = pop3_dele(run->c, m->msgno, pop_on_done, &waits[i]);
        sent++;
    }
    for (size_t i = 0; i < run->n; i++) {
        if (!run->m[i].dele)
            continue;
        enum tern_status wst = pop_wait(s, &waits[i]);
        if (!st)
            st = wst;
    }
    free(waits);
    if (sent)
        sess_test_step("deleted");
    return st;
}

static enum tern_status
pop_forget_deleted(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct pop_run *run = aux;
    for (size_t i = 0; i < run->n; i++) {
        const struct pop_msg *m = &run->m[i];
        if (!m->dele || !m->key[0] || run->hash_mode)
            continue;
        enum tern_status st = state_pop3_del(t, run->a->name, m->key, strlen(m->key), err);
        if (st && st != TERN_E_NOTFOUND)
            return st;
    }
    return TERN_OK;
}

static enum tern_status
pop_emit(struct pop_run *run)
{
    struct tern_session *s = run->s;
    unsigned kept = 0;
    for (size_t i = 0; i < run->n; i++)
        if (!run->m[i].dele)
            kept++;
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    json_key(&j, "downloaded");
    json_int(&j, run->downloaded);
    json_key(&j, "kept");
    json_int(&j, kept);
    json_key(&j, "deleted");
    json_int(&j, run->deleted);
    if (run->hash_mode) {
        json_key(&j, "note");
        json_cstr(&j, "the server has no UIDL: messages are told apart by a hash of their "
                      "content, so each run downloads every message again");
    }
    json_obj_end(&j);
    return sess_obj_emit(s, &j);
}

enum tern_status
cmd_pop(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    const struct tern_account *a = s->acct;
    struct pop_run run = {.s = s, .a = a, .keep = a->pop3_keep, .fd = -1};
    for (size_t i = 1; i < w->n; i++) {
        if (strcmp(w->v[i].text, "--keep") == 0)
            run.keep = true;
        else
            return sess_fail(s, TERN_E_USAGE, "usage: pop [--keep]");
    }
    if (!a->pop3)
        return sess_fail(s, TERN_E_CONFIG, "account %s has no pop3 server configured", a->name);
    struct state_lock *lock = NULL;
    enum tern_status st = state_lock(a->cache_dir, &lock, &s->err);
    if (!st)
        st = state_open(a->cache_dir, 0, &run.db, &s->err);
    if (!st) {
        struct tbuf root;
        tbuf_init(&root, 0);
        st = tbuf_addf(&root, "%s/mail", a->cache_dir);
        const char *folder = a->pop3_folder ? a->pop3_folder : "Inbox";
        if (!st)
            st = maildir_open_folder(tbuf_ptr(&root), folder, strlen(folder), MAILDIR_CREATE,
                                     &run.md, &s->err);
        tbuf_free(&root);
    }
    if (!st)
        st = pop_settle(&run);
    if (!st)
        st = pop_connect(&run);
    if (!st)
        st = pop_plan(&run);
    if (!st)
        st = pop_download(&run);
    if (!st)
        st = pop_delete(&run);
    if (!st) {
        struct pop_wait qw = {0};
        st = pop3_quit(run.c, pop_on_done, &qw);
        if (!st)
            st = pop_wait(s, &qw);
        sess_test_step("quit");
        if (!st)
            for (size_t i = 0; i < run.n; i++)
                run.deleted += run.m[i].dele;
        /* The server has removed them: their records are no longer needed. */
        if (!st && run.deleted)
            st = state_write(run.db, pop_forget_deleted, &run, &s->err);
    }
    if (!st)
        st = pop_emit(&run);
    pop3_free(run.c);
    if (run.sha)
        EVP_MD_CTX_free(run.sha);
    free(run.m);
    free(run.batch_msgs);
    for (size_t i = 0; i < run.nhashes; i++)
        free(run.hashes[i]);
    free(run.hashes);
    maildir_close(run.md);
    state_close(run.db);
    state_unlock(lock);
    return st;
}
