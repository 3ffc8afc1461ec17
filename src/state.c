/*
 * state.c - tern's state in LMDB, records, and the cache directory lock
 * (see state.h).
 *
 * Layer: src/ (the store). Includes libc, LMDB and proto/ headers; nothing
 * of curses or the protocols.
 *
 * LMDB notes that shaped this file:
 * - Named databases are opened once, at state_open, in one write
 *   transaction; their handles then serve every later transaction (LMDB
 *   forbids opening one from two transactions at a time, so doing it lazily
 *   would need a lock around every first use).
 * - MDB_MAP_FULL leaves the transaction unusable. It can only be aborted;
 *   the map may be grown (mdb_env_set_mapsize) only while this process has
 *   no transaction open, and then the work is done again. state_write wraps
 *   exactly that.
 * - MDB_MAP_RESIZED from mdb_txn_begin means another process grew the map:
 *   adopt its size (mdb_env_set_mapsize(env, 0)) and begin again.
 * - MDB_NOTLS: a read transaction is not tied to the thread that began it,
 *   so the job thread and the loop can hand one over.
 */
#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "tern.h"

#include "err.h"
#include "tbuf.h"

/* LMDB's key size limit with its default page size (mdb_env_get_maxkeysize). */
#define KEY_MAX 511

/* Named databases LMDB is told to expect: room for tables to come. */
#define MAX_TABLES 32

/* Attempts of state_write, each after doubling a full map. */
#define WRITE_TRIES 8

/* The names of the tables in the file: stable, part of the format. */
static const char *const TABLE_NAMES[STATE_TABLE_COUNT] = {
    [STATE_META] = "meta",       [STATE_POP3] = "pop3",         [STATE_OUTBOX] = "outbox",
    [STATE_FOLDERS] = "folders", [STATE_MESSAGES] = "messages", [STATE_SUMMARIES] = "summaries",
    [STATE_JOURNAL] = "journal",
};

struct state_db {
    MDB_env *env;
    MDB_dbi dbi[STATE_TABLE_COUNT];
    char *path;
    pthread_mutex_t mu; /* guards active and grow */
    unsigned active;    /* transactions open in this process */
    bool grow;          /* a transaction found the map full */
};

struct state_txn {
    struct state_db *db;
    MDB_txn *txn;
    bool write;
    bool failed;   /* a put or delete failed: commit is refused */
    bool map_full; /* the failure was a full map */
};

/* Whether RC says the file is damaged or not LMDB at all. */
static bool
is_corrupt(int rc)
{
    return rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PANIC ||
           rc == MDB_VERSION_MISMATCH || rc == MDB_PAGE_NOTFOUND;
}

/* Sets the sentence for LMDB (or errno) code RC while doing WHAT. */
static enum tern_status
mdb_fail(const char *path, int rc, const char *what, struct tern_err *err)
{
    if (rc == ENOMEM)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    if (rc == MDB_MAP_FULL)
        return tern_err_set(err, TERN_E_IO, "state file %s is full", path);
    if (is_corrupt(rc))
        return tern_err_set(err, TERN_E_IO,
                            "state file %s is corrupt or not a state file (%s); move it away "
                            "to start over",
                            path, mdb_strerror(rc));
    return tern_err_set(err, TERN_E_IO, "cannot %s state file %s: %s", what, path,
                        mdb_strerror(rc));
}

/* ---- Opening ---- */

/* Creates directory PATH and its missing parents with mode 0700. */
static enum tern_status
make_dirs(const char *path, struct tern_err *err)
{
    struct tbuf b;
    struct stat sb;
    enum tern_status st = TERN_OK;
    tbuf_init(&b, 0);
    for (const char *p = path;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        if (p > path) {
            tbuf_reset(&b);
            if (tbuf_add(&b, path, (size_t)(p - path))) {
                st = tern_err_set(err, TERN_E_NOMEM, "out of memory");
                break;
            }
            if (mkdir(tbuf_ptr(&b), 0700) != 0 && errno != EEXIST) {
                st = tern_err_set(err, TERN_E_IO, "cannot create directory %s: %s", tbuf_ptr(&b),
                                  strerror(errno));
                break;
            }
        }
        if (!*p)
            break;
    }
    tbuf_free(&b);
    if (!st && (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode)))
        st = tern_err_set(err, TERN_E_IO, "%s is not a directory", path);
    return st;
}

/* Checks (or, in a new file, writes) the format in STATE_META. */
static enum tern_status
check_format(struct state_db *db, MDB_txn *txn, struct tern_err *err)
{
    char want[16];
    int n = snprintf(want, sizeof(want), "%d", STATE_FORMAT);
    MDB_val k = {6, (void *)"format"}, v;
    int rc = mdb_get(txn, db->dbi[STATE_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        v.mv_size = (size_t)n;
        v.mv_data = want;
        rc = mdb_put(txn, db->dbi[STATE_META], &k, &v, 0);
        return rc ? mdb_fail(db->path, rc, "write", err) : TERN_OK;
    }
    if (rc)
        return mdb_fail(db->path, rc, "read", err);
    if (v.mv_size != (size_t)n || memcmp(v.mv_data, want, (size_t)n) != 0)
        return tern_err_set(err, TERN_E_IO, "state file %s has format '%.*s'; this tern knows %s",
                            db->path, v.mv_size > 16 ? 16 : (int)v.mv_size, (const char *)v.mv_data,
                            want);
    return TERN_OK;
}

enum tern_status
state_open(const char *cache_dir, size_t map_size, struct state_db **out, struct tern_err *err)
{
    enum tern_status st;
    struct tbuf b;
    MDB_txn *txn = NULL;
    int rc;

    if (!cache_dir || !*cache_dir || !out)
        return tern_err_set(err, TERN_E_USAGE, "no cache directory given");
    if ((st = make_dirs(cache_dir, err)))
        return st;
    struct state_db *db = calloc(1, sizeof(*db));
    if (!db)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    tbuf_init(&b, 0);
    if (tbuf_addf(&b, "%s/state.lmdb", cache_dir) || !(db->path = tbuf_take(&b))) {
        tbuf_free(&b);
        free(db);
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    }
    if (pthread_mutex_init(&db->mu, NULL) != 0) {
        free(db->path);
        free(db);
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    }
    if ((rc = mdb_env_create(&db->env))) {
        st = mdb_fail(db->path, rc, "create", err);
        goto fail;
    }
    if ((rc = mdb_env_set_maxdbs(db->env, MAX_TABLES)) ||
        (rc = mdb_env_set_mapsize(db->env, map_size ? map_size : STATE_MAP_SIZE))) {
        st = mdb_fail(db->path, rc, "configure", err);
        goto fail;
    }
    if ((rc = mdb_env_open(db->env, db->path, MDB_NOSUBDIR | MDB_NOTLS, 0600))) {
        st = mdb_fail(db->path, rc, "open", err);
        goto fail;
    }
    if ((rc = mdb_txn_begin(db->env, NULL, 0, &txn))) {
        st = mdb_fail(db->path, rc, "write", err);
        goto fail;
    }
    for (int i = 0; i < STATE_TABLE_COUNT; i++) {
        if ((rc = mdb_dbi_open(txn, TABLE_NAMES[i], MDB_CREATE, &db->dbi[i]))) {
            st = mdb_fail(db->path, rc, "open a table of", err);
            goto fail;
        }
    }
    if ((st = check_format(db, txn, err)))
        goto fail;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc) {
        st = mdb_fail(db->path, rc, "write", err);
        goto fail;
    }
    *out = db;
    return TERN_OK;
fail:
    if (txn)
        mdb_txn_abort(txn);
    state_close(db);
    return st;
}

void
state_close(struct state_db *db)
{
    if (!db)
        return;
    if (db->env)
        mdb_env_close(db->env);
    pthread_mutex_destroy(&db->mu);
    free(db->path);
    free(db);
}

const char *
state_get_path(const struct state_db *db)
{
    return db ? db->path : "";
}

/* ---- Transactions ---- */

/*
 * Doubles the map when a transaction found it full and none is open in
 * this process any more. Called with db->mu held.
 */
static void
maybe_grow(struct state_db *db)
{
    MDB_envinfo info;
    if (!db->grow || db->active)
        return;
    if (mdb_env_info(db->env, &info) == 0 && info.me_mapsize < STATE_MAP_MAX)
        mdb_env_set_mapsize(db->env, info.me_mapsize * 2 > STATE_MAP_MAX ? STATE_MAP_MAX
                                                                         : info.me_mapsize * 2);
    db->grow = false;
}

enum tern_status
state_txn_begin(struct state_db *db, bool write, struct state_txn **out, struct tern_err *err)
{
    int rc;
    if (!db || !out)
        return tern_err_set(err, TERN_E_USAGE, "no state given");
    struct state_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    t->db = db;
    t->write = write;
    for (int tries = 0;; tries++) {
        pthread_mutex_lock(&db->mu);
        maybe_grow(db);
        db->active++;
        pthread_mutex_unlock(&db->mu);
        rc = mdb_txn_begin(db->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
        if (!rc)
            break;
        pthread_mutex_lock(&db->mu);
        db->active--;
        /* Another process grew the map: take its size and begin again. */
        if (rc == MDB_MAP_RESIZED && !db->active && tries < 2)
            rc = mdb_env_set_mapsize(db->env, 0) ? rc : 0;
        pthread_mutex_unlock(&db->mu);
        if (rc) {
            free(t);
            return mdb_fail(db->path, rc, write ? "write" : "read", err);
        }
    }
    *out = t;
    return TERN_OK;
}

/* Frees T after its LMDB transaction ended. */
static void
txn_done(struct state_txn *t)
{
    struct state_db *db = t->db;
    pthread_mutex_lock(&db->mu);
    db->active--;
    if (t->map_full)
        db->grow = true;
    maybe_grow(db);
    pthread_mutex_unlock(&db->mu);
    free(t);
}

enum tern_status
state_txn_commit(struct state_txn *t, struct tern_err *err)
{
    if (!t)
        return tern_err_set(err, TERN_E_USAGE, "no transaction given");
    if (t->failed) {
        mdb_txn_abort(t->txn);
        txn_done(t);
        return tern_err_set(err, TERN_E_USAGE, "a failed transaction cannot be committed");
    }
    int rc = mdb_txn_commit(t->txn);
    if (rc == MDB_MAP_FULL)
        t->map_full = true;
    enum tern_status st = rc ? mdb_fail(t->db->path, rc, "write", err) : TERN_OK;
    txn_done(t);
    return st;
}

void
state_txn_abort(struct state_txn *t)
{
    if (!t)
        return;
    mdb_txn_abort(t->txn);
    txn_done(t);
}

/* Checks the common arguments of an operation on T. */
static enum tern_status
txn_check(struct state_txn *t, enum state_table table, size_t klen, bool write,
          struct tern_err *err)
{
    if (!t)
        return tern_err_set(err, TERN_E_USAGE, "no transaction given");
    if ((unsigned)table >= STATE_TABLE_COUNT)
        return tern_err_set(err, TERN_E_USAGE, "no state table %d", (int)table);
    if (klen == 0 || klen > KEY_MAX)
        return tern_err_set(err, TERN_E_USAGE, "state keys are 1 to %d bytes, not %zu", KEY_MAX,
                            klen);
    if (write && !t->write)
        return tern_err_set(err, TERN_E_USAGE, "a read-only transaction cannot write");
    if (t->failed)
        return tern_err_set(err, TERN_E_USAGE, "the transaction has failed");
    return TERN_OK;
}

enum tern_status
state_put(struct state_txn *t, enum state_table table, const void *key, size_t klen,
          const void *val, size_t vlen, struct tern_err *err)
{
    enum tern_status st = txn_check(t, table, klen, true, err);
    if (st)
        return st;
    if (!key || (!val && vlen))
        return tern_err_set(err, TERN_E_USAGE, "no key or value given");
    MDB_val k = {klen, (void *)(uintptr_t)key};
    MDB_val v = {vlen, (void *)(uintptr_t)(val ? val : "")};
    int rc = mdb_put(t->txn, t->db->dbi[table], &k, &v, 0);
    if (rc) {
        t->failed = true;
        t->map_full = rc == MDB_MAP_FULL;
        return mdb_fail(t->db->path, rc, "write", err);
    }
    return TERN_OK;
}

enum tern_status
state_get(struct state_txn *t, enum state_table table, const void *key, size_t klen,
          const void **val, size_t *vlen, struct tern_err *err)
{
    enum tern_status st = txn_check(t, table, klen, false, err);
    if (st)
        return st;
    if (!key || !val || !vlen)
        return tern_err_set(err, TERN_E_USAGE, "no key or value given");
    MDB_val k = {klen, (void *)(uintptr_t)key}, v;
    int rc = mdb_get(t->txn, t->db->dbi[table], &k, &v);
    if (rc == MDB_NOTFOUND)
        return TERN_E_NOTFOUND;
    if (rc)
        return mdb_fail(t->db->path, rc, "read", err);
    *val = v.mv_data;
    *vlen = v.mv_size;
    return TERN_OK;
}

enum tern_status
state_del(struct state_txn *t, enum state_table table, const void *key, size_t klen,
          struct tern_err *err)
{
    enum tern_status st = txn_check(t, table, klen, true, err);
    if (st)
        return st;
    if (!key)
        return tern_err_set(err, TERN_E_USAGE, "no key given");
    MDB_val k = {klen, (void *)(uintptr_t)key};
    int rc = mdb_del(t->txn, t->db->dbi[table], &k, NULL);
    if (rc == MDB_NOTFOUND)
        return TERN_E_NOTFOUND;
    if (rc) {
        t->failed = true;
        t->map_full = rc == MDB_MAP_FULL;
        return mdb_fail(t->db->path, rc, "write", err);
    }
    return TERN_OK;
}

enum tern_status
state_iterate(struct state_txn *t, enum state_table table, const void *prefix, size_t plen,
              state_iter_fn fn, void *aux, struct tern_err *err)
{
    MDB_cursor *cur;
    MDB_val k = {plen, (void *)(uintptr_t)(prefix ? prefix : "")}, v;
    enum tern_status st = txn_check(t, table, 1, false, err);
    if (st)
        return st;
    if (!fn || (!prefix && plen) || plen > KEY_MAX)
        return tern_err_set(err, TERN_E_USAGE, "no callback or a bad prefix given");
    int rc = mdb_cursor_open(t->txn, t->db->dbi[table], &cur);
    if (rc)
        return mdb_fail(t->db->path, rc, "read", err);
    rc = mdb_cursor_get(cur, &k, &v, plen ? MDB_SET_RANGE : MDB_FIRST);
    while (!rc) {
        if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0))
            break;
        if ((st = fn(k.mv_data, k.mv_size, v.mv_data, v.mv_size, aux)))
            break;
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!st && rc && rc != MDB_NOTFOUND)
        st = mdb_fail(t->db->path, rc, "read", err);
    return st;
}

enum tern_status
state_write(struct state_db *db, state_write_fn fn, void *aux, struct tern_err *err)
{
    enum tern_status st = TERN_OK;
    if (!db || !fn)
        return tern_err_set(err, TERN_E_USAGE, "no state or callback given");
    for (int tries = 0; tries < WRITE_TRIES; tries++) {
        struct state_txn *t = NULL;
        if ((st = state_txn_begin(db, true, &t, err)))
            return st;
        st = fn(t, aux, err);
        bool full = t->map_full;
        if (st || t->failed) {
            /* FN may have swallowed a failed put; LMDB would refuse the commit. */
            state_txn_abort(t);
            if (!st && !full)
                st = tern_err_set(err, TERN_E_USAGE, "a failed transaction cannot be committed");
        } else {
            /* As state_txn_commit, keeping whether the map was full. */
            int rc = mdb_txn_commit(t->txn);
            full = rc == MDB_MAP_FULL;
            t->map_full = full;
            st = rc ? mdb_fail(db->path, rc, "write", err) : TERN_OK;
            txn_done(t);
        }
        if (!full)
            return st;
        /* The map was full: it has been grown (see txn_done), so run FN again. */
        if (!st)
            st = tern_err_set(err, TERN_E_IO, "state file %s is full", db->path);
    }
    return st;
}

/* ---- Records ---- */

enum tern_status
state_rec_begin(struct tbuf *out, uint8_t type, uint8_t version)
{
    unsigned char h[2] = {type, version};
    if (!out || version == 0)
        return TERN_E_USAGE;
    tbuf_reset(out);
    return tbuf_add(out, h, 2);
}

enum tern_status
state_rec_put_u64(struct tbuf *out, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    return tbuf_add(out, b, 8);
}

enum tern_status
state_rec_put_str(struct tbuf *out, const char *s, size_t len)
{
    unsigned char b[4];
    if ((!s && len) || len >= UINT32_MAX || (len && memchr(s, '\0', len)))
        return TERN_E_USAGE;
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)(len >> (8 * i));
    enum tern_status st = tbuf_add(out, b, 4);
    if (!st && len)
        st = tbuf_add(out, s, len);
    if (!st)
        st = tbuf_addc(out, '\0');
    return st;
}

enum tern_status
state_rec_open(struct state_rec *r, const void *val, size_t len, uint8_t type, uint8_t *version)
{
    r->p = val;
    r->len = val ? len : 0;
    r->off = 2;
    if (r->len < 2 || r->p[0] != type || r->p[1] == 0)
        return TERN_E_PROTO;
    if (version)
        *version = r->p[1];
    return TERN_OK;
}

enum tern_status
state_rec_get_u64(struct state_rec *r, uint64_t *v)
{
    if (r->len - r->off < 8)
        return TERN_E_PROTO;
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x |= (uint64_t)r->p[r->off + (size_t)i] << (8 * i);
    r->off += 8;
    *v = x;
    return TERN_OK;
}

enum tern_status
state_rec_get_str(struct state_rec *r, const char **s, size_t *len)
{
    if (r->len - r->off < 4)
        return TERN_E_PROTO;
    uint64_t n = 0;
    for (int i = 0; i < 4; i++)
        n |= (uint64_t)r->p[r->off + (size_t)i] << (8 * i);
    size_t left = r->len - r->off - 4;
    if (n >= left) /* the bytes and the NUL must fit */
        return TERN_E_PROTO;
    const unsigned char *p = r->p + r->off + 4;
    if (p[n] != '\0' || memchr(p, '\0', (size_t)n))
        return TERN_E_PROTO;
    *s = (const char *)p;
    if (len)
        *len = (size_t)n;
    r->off += 4 + (size_t)n + 1;
    return TERN_OK;
}

enum tern_status
state_rec_end(const struct state_rec *r)
{
    return r->off == r->len ? TERN_OK : TERN_E_PROTO;
}

/* ---- POP3 records ---- */

#define POP3_TYPE 'P'
#define OUTBOX_TYPE 'O'

/* Whether ULEN bytes of UIDL are a UIDL by RFC 1939 §7. */
static bool
uidl_ok(const char *uidl, size_t ulen)
{
    if (!uidl || ulen == 0 || ulen > STATE_UIDL_MAX)
        return false;
    for (size_t i = 0; i < ulen; i++)
        if ((unsigned char)uidl[i] < 0x21 || (unsigned char)uidl[i] > 0x7E)
            return false;
    return true;
}

enum tern_status
state_pop3_key(const char *account, const char *uidl, size_t ulen, struct tbuf *out,
               struct tern_err *err)
{
    if (!account || !*account || !out)
        return tern_err_set(err, TERN_E_USAGE, "no account given");
    if (!uidl_ok(uidl, ulen))
        return tern_err_set(err, TERN_E_PROTO,
                            "bad UIDL: not 1 to %d printable characters without spaces",
                            STATE_UIDL_MAX);
    size_t alen = strlen(account);
    if (alen + 1 + ulen > KEY_MAX)
        return tern_err_set(err, TERN_E_USAGE, "account name too long for the state");
    tbuf_reset(out);
    if (tbuf_add(out, account, alen + 1) || tbuf_add(out, uidl, ulen))
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    return TERN_OK;
}

enum tern_status
state_pop3_encode(const struct state_pop3_rec *r, struct tbuf *out)
{
    enum tern_status st;
    if (!r || !out || !r->file || !*r->file ||
        (r->status != STATE_POP3_PENDING && r->status != STATE_POP3_STORED))
        return TERN_E_USAGE;
    if ((st = state_rec_begin(out, POP3_TYPE, 1)) ||
        (st = state_rec_put_u64(out, (uint64_t)r->status)) ||
        (st = state_rec_put_str(out, r->file, strlen(r->file))) ||
        (st = state_rec_put_u64(out, (uint64_t)r->downloaded_at)) ||
        (st = state_rec_put_u64(out, r->size)))
        return st;
    return TERN_OK;
}

enum tern_status
state_pop3_decode(const void *val, size_t len, struct state_pop3_rec *r)
{
    struct state_rec rec;
    uint8_t version;
    uint64_t status, at, size;
    const char *file;
    size_t flen;
    if (!r)
        return TERN_E_USAGE;
    if (state_rec_open(&rec, val, len, POP3_TYPE, &version) || version != 1 ||
        state_rec_get_u64(&rec, &status) || state_rec_get_str(&rec, &file, &flen) ||
        state_rec_get_u64(&rec, &at) || state_rec_get_u64(&rec, &size) || state_rec_end(&rec))
        return TERN_E_PROTO;
    if ((status != STATE_POP3_PENDING && status != STATE_POP3_STORED) || flen == 0 || flen > 255 ||
        memchr(file, '/', flen) || file[0] == '.')
        return TERN_E_PROTO;
    r->status = (enum state_pop3_status)status;
    r->file = file;
    r->downloaded_at = (int64_t)at;
    r->size = size;
    return TERN_OK;
}

enum tern_status
state_pop3_put(struct state_txn *t, const char *account, const char *uidl, size_t ulen,
               const struct state_pop3_rec *r, struct tern_err *err)
{
    struct tbuf key, val;
    tbuf_init(&key, 0);
    tbuf_init(&val, 0);
    enum tern_status st = state_pop3_key(account, uidl, ulen, &key, err);
    if (!st) {
        st = state_pop3_encode(r, &val);
        if (st == TERN_E_USAGE)
            tern_err_set(err, st, "bad POP3 record: no file name or an unknown status");
        else if (st)
            tern_err_set(err, st, "out of memory");
    }
    if (!st)
        st = state_put(t, STATE_POP3, key.data, key.len, val.data, val.len, err);
    tbuf_free(&key);
    tbuf_free(&val);
    return st;
}

enum tern_status
state_pop3_get(struct state_txn *t, const char *account, const char *uidl, size_t ulen,
               struct state_pop3_rec *r, struct tern_err *err)
{
    struct tbuf key;
    const void *val;
    size_t vlen;
    tbuf_init(&key, 0);
    enum tern_status st = state_pop3_key(account, uidl, ulen, &key, err);
    if (!st)
        st = state_get(t, STATE_POP3, key.data, key.len, &val, &vlen, err);
    tbuf_free(&key);
    if (!st && state_pop3_decode(val, vlen, r))
        st = tern_err_set(err, TERN_E_PROTO, "malformed POP3 record for UIDL %.*s in %s", (int)ulen,
                          uidl, t->db->path);
    return st;
}

enum tern_status
state_pop3_del(struct state_txn *t, const char *account, const char *uidl, size_t ulen,
               struct tern_err *err)
{
    struct tbuf key;
    tbuf_init(&key, 0);
    enum tern_status st = state_pop3_key(account, uidl, ulen, &key, err);
    if (!st)
        st = state_del(t, STATE_POP3, key.data, key.len, err);
    tbuf_free(&key);
    return st;
}

struct pop3_each {
    size_t plen;
    state_pop3_fn fn;
    void *aux;
    const char *path;
    struct tern_err *err;
};

static enum tern_status
pop3_each_cb(const void *key, size_t klen, const void *val, size_t vlen, void *aux)
{
    struct pop3_each *e = aux;
    struct state_pop3_rec r;
    const char *uidl = (const char *)key + e->plen;
    size_t ulen = klen - e->plen;
    if (!uidl_ok(uidl, ulen) || state_pop3_decode(val, vlen, &r))
        return tern_err_set(e->err, TERN_E_PROTO, "malformed POP3 record for UIDL %.*s in %s",
                            (int)(ulen > STATE_UIDL_MAX ? STATE_UIDL_MAX : ulen), uidl, e->path);
    return e->fn(uidl, ulen, &r, e->aux);
}

enum tern_status
state_pop3_each(struct state_txn *t, const char *account, state_pop3_fn fn, void *aux,
                struct tern_err *err)
{
    if (!t || !account || !*account || !fn)
        return tern_err_set(err, TERN_E_USAGE, "no transaction, account or callback given");
    struct pop3_each e = {strlen(account) + 1, fn, aux, t->db->path, err};
    if (e.plen > KEY_MAX)
        return tern_err_set(err, TERN_E_USAGE, "account name too long for the state");
    /* The prefix includes the NUL: "work" must not match "workshop". */
    return state_iterate(t, STATE_POP3, account, e.plen, pop3_each_cb, &e, err);
}

/* ---- Outbox records ---- */

enum tern_status
state_outbox_encode(const struct state_outbox_rec *r, struct tbuf *out)
{
    enum tern_status st;
    if (!r || !out || r->status < STATE_OUTBOX_QUEUED || r->status > STATE_OUTBOX_FAILED)
        return TERN_E_USAGE;
    const char *e = r->last_error ? r->last_error : "";
    if ((st = state_rec_begin(out, OUTBOX_TYPE, 1)) ||
        (st = state_rec_put_u64(out, (uint64_t)r->status)) ||
        (st = state_rec_put_u64(out, r->attempts)) ||
        (st = state_rec_put_u64(out, (uint64_t)r->next_attempt)) ||
        (st = state_rec_put_str(out, e, strlen(e))))
        return st;
    return TERN_OK;
}

enum tern_status
state_outbox_decode(const void *val, size_t len, struct state_outbox_rec *r)
{
    struct state_rec rec;
    uint8_t version;
    uint64_t status, attempts, next;
    const char *e;
    if (!r)
        return TERN_E_USAGE;
    if (state_rec_open(&rec, val, len, OUTBOX_TYPE, &version) || version != 1 ||
        state_rec_get_u64(&rec, &status) || state_rec_get_u64(&rec, &attempts) ||
        state_rec_get_u64(&rec, &next) || state_rec_get_str(&rec, &e, NULL) || state_rec_end(&rec))
        return TERN_E_PROTO;
    if (status < STATE_OUTBOX_QUEUED || status > STATE_OUTBOX_FAILED || attempts > UINT32_MAX)
        return TERN_E_PROTO;
    r->status = (enum state_outbox_status)status;
    r->attempts = (uint32_t)attempts;
    r->next_attempt = (int64_t)next;
    r->last_error = e;
    return TERN_OK;
}

static enum tern_status
outbox_id_check(const char *id, struct tern_err *err)
{
    size_t n = id ? strnlen(id, 256) : 0;
    if (n == 0 || n > 255)
        return tern_err_set(err, TERN_E_USAGE, "an outbox id is 1 to 255 bytes");
    return TERN_OK;
}

enum tern_status
state_outbox_put(struct state_txn *t, const char *id, const struct state_outbox_rec *r,
                 struct tern_err *err)
{
    struct tbuf val;
    enum tern_status st = outbox_id_check(id, err);
    if (st)
        return st;
    tbuf_init(&val, 0);
    st = state_outbox_encode(r, &val);
    if (st == TERN_E_USAGE)
        tern_err_set(err, st, "bad outbox record: unknown status");
    else if (st)
        tern_err_set(err, st, "out of memory");
    else
        st = state_put(t, STATE_OUTBOX, id, strlen(id), val.data, val.len, err);
    tbuf_free(&val);
    return st;
}

enum tern_status
state_outbox_get(struct state_txn *t, const char *id, struct state_outbox_rec *r,
                 struct tern_err *err)
{
    const void *val;
    size_t vlen;
    enum tern_status st = outbox_id_check(id, err);
    if (!st)
        st = state_get(t, STATE_OUTBOX, id, strlen(id), &val, &vlen, err);
    if (!st && state_outbox_decode(val, vlen, r))
        st = tern_err_set(err, TERN_E_PROTO, "malformed outbox record for %s in %s", id,
                          t->db->path);
    return st;
}

enum tern_status
state_outbox_del(struct state_txn *t, const char *id, struct tern_err *err)
{
    enum tern_status st = outbox_id_check(id, err);
    if (!st)
        st = state_del(t, STATE_OUTBOX, id, strlen(id), err);
    return st;
}

struct outbox_each {
    state_outbox_fn fn;
    void *aux;
    const char *path;
    struct tern_err *err;
    struct tbuf id;
};

static enum tern_status
outbox_each_cb(const void *key, size_t klen, const void *val, size_t vlen, void *aux)
{
    struct outbox_each *e = aux;
    struct state_outbox_rec r;
    tbuf_reset(&e->id);
    if (memchr(key, '\0', klen) || klen > 255 || state_outbox_decode(val, vlen, &r))
        return tern_err_set(e->err, TERN_E_PROTO, "malformed outbox record for %.*s in %s",
                            (int)(klen > 255 ? 255 : klen), (const char *)key, e->path);
    /* Keys are not NUL-terminated in the map: hand out a C string. */
    if (tbuf_add(&e->id, key, klen))
        return tern_err_set(e->err, TERN_E_NOMEM, "out of memory");
    return e->fn(tbuf_ptr(&e->id), &r, e->aux);
}

enum tern_status
state_outbox_each(struct state_txn *t, state_outbox_fn fn, void *aux, struct tern_err *err)
{
    if (!t || !fn)
        return tern_err_set(err, TERN_E_USAGE, "no transaction or callback given");
    struct outbox_each e = {fn, aux, t->db->path, err, {0}};
    tbuf_init(&e.id, 0);
    enum tern_status st = state_iterate(t, STATE_OUTBOX, NULL, 0, outbox_each_cb, &e, err);
    tbuf_free(&e.id);
    return st;
}

/* ---- The lock ---- */

struct state_lock {
    int fd;
};

/* The pid written in the lock file at FD, or 0 when it holds none. */
static long
lock_owner(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    long pid = 0;
    if (n <= 0)
        return 0;
    for (ssize_t i = 0; i < n && buf[i] != '\n'; i++) {
        if (buf[i] < '0' || buf[i] > '9' || pid > (LONG_MAX - 9) / 10)
            return 0;
        pid = pid * 10 + (buf[i] - '0');
    }
    return pid;
}

enum tern_status
state_lock(const char *cache_dir, struct state_lock **out, struct tern_err *err)
{
    struct tbuf path;
    enum tern_status st;
    if (!cache_dir || !*cache_dir || !out)
        return tern_err_set(err, TERN_E_USAGE, "no cache directory given");
    if ((st = make_dirs(cache_dir, err)))
        return st;
    tbuf_init(&path, 0);
    if (tbuf_addf(&path, "%s/lock", cache_dir)) {
        tbuf_free(&path);
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    }
    int fd = open(tbuf_ptr(&path), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        st = tern_err_set(err, TERN_E_IO, "cannot open lock file %s: %s", tbuf_ptr(&path),
                          strerror(errno));
        tbuf_free(&path);
        return st;
    }
    tbuf_free(&path);
    int rc;
    while ((rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (rc != 0) {
        int errnum = errno;
        long pid = errnum == EWOULDBLOCK ? lock_owner(fd) : 0;
        close(fd);
        if (errnum != EWOULDBLOCK)
            return tern_err_set(err, TERN_E_IO, "cannot lock the state in %s: %s", cache_dir,
                                strerror(errnum));
        if (pid)
            return tern_err_set(err, TERN_E_IO,
                                "the state in %s is locked by another tern (pid %ld)", cache_dir,
                                pid);
        return tern_err_set(err, TERN_E_IO, "the state in %s is locked by another tern", cache_dir);
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        st = tern_err_set(err, TERN_E_IO, "cannot write lock file in %s: %s", cache_dir,
                          strerror(errno));
        close(fd);
        return st;
    }
    struct state_lock *l = malloc(sizeof(*l));
    if (!l) {
        close(fd);
        return tern_err_set(err, TERN_E_NOMEM, "out of memory");
    }
    l->fd = fd;
    *out = l;
    return TERN_OK;
}

void
state_unlock(struct state_lock *l)
{
    if (!l)
        return;
    /* Closing drops the flock; the pid stays until the next owner writes. */
    close(l->fd);
    free(l);
}
