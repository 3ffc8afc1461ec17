/*
 * state_test.c - unit tests of src/state.c: tables, transactions, prefix
 * iteration, map growth, reopening, corrupt and foreign files, the record
 * encoding and its hostile inputs, the POP3 and outbox records, the cache
 * directory lock (F4), and the whole POP3 store sequence of state.h with a
 * crash at every step (F2), together with src/maildir.c.
 *
 * Layer: tests. Each test works in its own directory under /tmp, removed
 * afterwards. Other processes are real children (fork), since LMDB and
 * flock behave differently across processes than within one.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tern.h"

#include "err.h"
#include "tbuf.h"

#include "maildir.h"
#include "state.h"

/* A string literal and its length without the terminating NUL. */
#define LIT(s) (s), (sizeof(s) - 1)

struct fixture {
    char dir[64]; /* the cache directory's parent */
    char *cache;  /* DIR/cache */
    struct state_db *db;
    struct tern_err err;
};

static char *
path_join(const char *a, const char *b)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "%s/%s", a, b), TERN_OK);
    char *s = tbuf_take(&t);
    assert_non_null(s);
    return s;
}

static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    memcpy(f->dir, "/tmp/state_test.XXXXXX", sizeof("/tmp/state_test.XXXXXX"));
    assert_non_null(mkdtemp(f->dir));
    f->cache = path_join(f->dir, "cache");
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;
    maildir_set_commit_hook(NULL, NULL);
    state_close(f->db);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f->cache);
    tern_err_clear(&f->err);
    free(f);
    return 0;
}

static void
open_db(struct fixture *f)
{
    assert_int_equal(state_open(f->cache, 0, &f->db, &f->err), TERN_OK);
}

static void
reopen_db(struct fixture *f)
{
    state_close(f->db);
    f->db = NULL;
    open_db(f);
}

static void
put_str(struct fixture *f, enum state_table table, const char *key, size_t klen, const char *val)
{
    struct state_txn *t;
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_put(t, table, key, klen, val, strlen(val), &f->err), TERN_OK);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);
}

/* The value of KEY as an owned string, or NULL when absent. */
static char *
get_str(struct fixture *f, enum state_table table, const char *key, size_t klen)
{
    struct state_txn *t;
    const void *val;
    size_t vlen;
    char *out = NULL;
    assert_int_equal(state_txn_begin(f->db, false, &t, &f->err), TERN_OK);
    enum tern_status st = state_get(t, table, key, klen, &val, &vlen, &f->err);
    if (st == TERN_OK) {
        out = strndup(val, vlen);
        assert_non_null(out);
    } else
        assert_int_equal(st, TERN_E_NOTFOUND);
    state_txn_abort(t);
    return out;
}

/* ---- opening ---- */

static void
open_creates_file(void **state)
{
    struct fixture *f = *state;
    struct stat sb;
    open_db(f);
    char *p = path_join(f->cache, "state.lmdb");
    assert_string_equal(state_get_path(f->db), p);
    assert_int_equal(stat(p, &sb), 0);
    assert_true(S_ISREG(sb.st_mode)); /* MDB_NOSUBDIR: a file, not a directory */
    assert_int_equal(sb.st_mode & 0777, 0600);
    assert_int_equal(stat(f->cache, &sb), 0);
    assert_int_equal(sb.st_mode & 077, 0);
    free(p);
    assert_int_equal(state_open(NULL, 0, &f->db, &f->err), TERN_E_USAGE);
    assert_int_equal(state_open("", 0, &f->db, &f->err), TERN_E_USAGE);
    state_close(NULL);
}

static void
reopen_keeps_data(void **state)
{
    struct fixture *f = *state;
    open_db(f);
    put_str(f, STATE_META, LIT("hello"), "world");
    put_str(f, STATE_OUTBOX, LIT("hello"), "other table");
    reopen_db(f);
    char *v = get_str(f, STATE_META, LIT("hello"));
    assert_string_equal(v, "world");
    free(v);
    v = get_str(f, STATE_OUTBOX, LIT("hello"));
    assert_string_equal(v, "other table");
    free(v);
    assert_null(get_str(f, STATE_POP3, LIT("hello")));
}

static void
corrupt_file_is_clear_error(void **state)
{
    struct fixture *f = *state;
    char *p = path_join(f->cache, "state.lmdb");
    unsigned seed = 7;
    assert_int_equal(mkdir(f->cache, 0700), 0);

    /* Random bytes. */
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    for (int i = 0; i < 65536; i++)
        fputc(rand_r(&seed) & 0xFF, fp);
    fclose(fp);
    assert_int_equal(state_open(f->cache, 0, &f->db, &f->err), TERN_E_IO);
    assert_null(f->db);
    assert_non_null(strstr(tern_err_msg(&f->err), p));
    assert_non_null(strstr(tern_err_msg(&f->err), "corrupt or not a state file"));
    assert_non_null(strstr(tern_err_msg(&f->err), "move it away"));

    /* A text file that happens to be there. */
    fp = fopen(p, "w");
    assert_non_null(fp);
    for (int i = 0; i < 1000; i++)
        fputs("this is not a database at all\n", fp);
    fclose(fp);
    assert_int_equal(state_open(f->cache, 0, &f->db, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "corrupt or not a state file"));
    unlink(p);

    /* A directory where the file should be. */
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(state_open(f->cache, 0, &f->db, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), p));
    rmdir(p);

    /* The cache directory is a file. */
    char *file = path_join(f->dir, "plainfile");
    fp = fopen(file, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(state_open(file, 0, &f->db, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "not a directory"));
    free(file);

    /* A good file still opens after all that. */
    open_db(f);
    free(p);
}

static void
unknown_format_refused(void **state)
{
    struct fixture *f = *state;
    open_db(f);
    put_str(f, STATE_META, LIT("format"), "2");
    state_close(f->db);
    f->db = NULL;
    assert_int_equal(state_open(f->cache, 0, &f->db, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "has format '2'; this tern knows 1"));
}

/* ---- put, get, delete, iterate ---- */

static void
put_get_del(void **state)
{
    struct fixture *f = *state;
    struct state_txn *t;
    const void *val;
    size_t vlen;
    static char bigkey[600];
    open_db(f);

    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_put(t, STATE_FOLDERS, LIT("a\0b"), LIT("binary\0value"), &f->err),
                     TERN_OK);
    assert_int_equal(state_put(t, STATE_FOLDERS, LIT("empty"), NULL, 0, &f->err), TERN_OK);
    /* Visible inside the transaction before the commit. */
    assert_int_equal(state_get(t, STATE_FOLDERS, LIT("a\0b"), &val, &vlen, &f->err), TERN_OK);
    assert_int_equal(vlen, 12);
    assert_memory_equal(val, "binary\0value", 12);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);

    assert_int_equal(state_txn_begin(f->db, false, &t, &f->err), TERN_OK);
    assert_int_equal(state_get(t, STATE_FOLDERS, LIT("empty"), &val, &vlen, &f->err), TERN_OK);
    assert_int_equal(vlen, 0);
    assert_int_equal(state_get(t, STATE_FOLDERS, LIT("a"), &val, &vlen, &f->err), TERN_E_NOTFOUND);
    /* A read-only transaction writes nothing. */
    assert_int_equal(state_put(t, STATE_FOLDERS, LIT("x"), LIT("y"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_del(t, STATE_FOLDERS, LIT("empty"), &f->err), TERN_E_USAGE);
    state_txn_abort(t);

    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    /* Keys of 0 or more than 511 bytes, unknown tables. */
    memset(bigkey, 'k', sizeof(bigkey));
    assert_int_equal(state_put(t, STATE_FOLDERS, "", 0, LIT("v"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_put(t, STATE_FOLDERS, bigkey, 512, LIT("v"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_put(t, STATE_FOLDERS, bigkey, 511, LIT("v"), &f->err), TERN_OK);
    assert_int_equal(state_put(t, STATE_TABLE_COUNT, LIT("k"), LIT("v"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_put(t, (enum state_table) - 1, LIT("k"), LIT("v"), &f->err),
                     TERN_E_USAGE);
    assert_int_equal(state_put(t, STATE_FOLDERS, NULL, 3, LIT("v"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_put(t, STATE_FOLDERS, LIT("k"), NULL, 3, &f->err), TERN_E_USAGE);
    assert_int_equal(state_get(t, STATE_FOLDERS, LIT("k"), NULL, &vlen, &f->err), TERN_E_USAGE);
    assert_int_equal(state_del(t, STATE_FOLDERS, LIT("a\0b"), &f->err), TERN_OK);
    assert_int_equal(state_del(t, STATE_FOLDERS, LIT("a\0b"), &f->err), TERN_E_NOTFOUND);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);
    assert_null(get_str(f, STATE_FOLDERS, LIT("a\0b")));

    /* An aborted transaction leaves nothing behind. */
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_put(t, STATE_FOLDERS, LIT("gone"), LIT("v"), &f->err), TERN_OK);
    state_txn_abort(t);
    assert_null(get_str(f, STATE_FOLDERS, LIT("gone")));
    state_txn_abort(NULL);
    assert_int_equal(state_txn_commit(NULL, &f->err), TERN_E_USAGE);
    assert_int_equal(state_txn_begin(NULL, false, &t, &f->err), TERN_E_USAGE);
}

struct seen {
    char keys[8][16];
    int n;
    int stop_after;
};

static enum tern_status
seen_cb(const void *key, size_t klen, const void *val, size_t vlen, void *aux)
{
    struct seen *s = aux;
    assert_true(s->n < 8 && klen < 16);
    memcpy(s->keys[s->n], key, klen);
    s->keys[s->n][klen] = '\0';
    for (size_t i = 0; i < klen; i++)
        if (!s->keys[s->n][i])
            s->keys[s->n][i] = '|';
    s->n++;
    return s->stop_after && s->n == s->stop_after ? TERN_E_CANCELED : TERN_OK;
}

static void
iterate_by_prefix(void **state)
{
    struct fixture *f = *state;
    struct state_txn *t;
    open_db(f);
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    const char *keys[] = {"b", "a\0y", "ab\0z", "a\0x", "a", "c"};
    size_t lens[] = {1, 3, 4, 3, 1, 1};
    for (int i = 0; i < 6; i++)
        assert_int_equal(state_put(t, STATE_JOURNAL, keys[i], lens[i], "v", 1, &f->err), TERN_OK);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);

    assert_int_equal(state_txn_begin(f->db, false, &t, &f->err), TERN_OK);
    struct seen s = {0};
    assert_int_equal(state_iterate(t, STATE_JOURNAL, LIT("a\0"), seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.keys[0], "a|x");
    assert_string_equal(s.keys[1], "a|y");

    memset(&s, 0, sizeof(s));
    assert_int_equal(state_iterate(t, STATE_JOURNAL, NULL, 0, seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 6);
    assert_string_equal(s.keys[0], "a");
    assert_string_equal(s.keys[5], "c");

    memset(&s, 0, sizeof(s));
    assert_int_equal(state_iterate(t, STATE_JOURNAL, LIT("zz"), seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 0);
    assert_int_equal(state_iterate(t, STATE_OUTBOX, LIT("a"), seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 0);

    /* The callback's status stops the walk and comes back. */
    memset(&s, 0, sizeof(s));
    s.stop_after = 2;
    assert_int_equal(state_iterate(t, STATE_JOURNAL, LIT("a"), seen_cb, &s, &f->err),
                     TERN_E_CANCELED);
    assert_int_equal(s.n, 2);
    assert_int_equal(state_iterate(t, STATE_JOURNAL, LIT("a"), NULL, NULL, &f->err), TERN_E_USAGE);
    state_txn_abort(t);
}

/* ---- map growth ---- */

struct fill {
    int from, count;
    int runs;
};

static enum tern_status
fill_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct fill *fl = aux;
    char key[32], val[4096];
    fl->runs++;
    for (int i = fl->from; i < fl->from + fl->count; i++) {
        int n = snprintf(key, sizeof(key), "key%06d", i);
        memset(val, 'a' + i % 26, sizeof(val));
        enum tern_status st = state_put(t, STATE_SUMMARIES, key, (size_t)n, val, sizeof(val), err);
        if (st)
            return st;
    }
    return TERN_OK;
}

/* Like fill_fn, but ignores failed puts (a careless caller). */
static enum tern_status
fill_careless_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct fill *fl = aux;
    char key[32], val[4096];
    fl->runs++;
    for (int i = fl->from; i < fl->from + fl->count; i++) {
        int n = snprintf(key, sizeof(key), "care%06d", i);
        memset(val, 'z', sizeof(val));
        (void)state_put(t, STATE_SUMMARIES, key, (size_t)n, val, sizeof(val), err);
    }
    return TERN_OK;
}

static void
map_grows_when_full(void **state)
{
    struct fixture *f = *state;
    struct state_txn *t;
    /* A 256 KiB map; 1,000 values of 4 KiB need about 16 times that. */
    assert_int_equal(state_open(f->cache, 256 * 1024, &f->db, &f->err), TERN_OK);
    struct fill fl = {0, 1000, 0};
    assert_int_equal(state_write(f->db, fill_fn, &fl, &f->err), TERN_OK);
    assert_true(fl.runs > 1); /* it did fill up and run again */
    reopen_db(f);
    assert_int_equal(state_txn_begin(f->db, false, &t, &f->err), TERN_OK);
    for (int i = 0; i < 1000; i += 111) {
        char key[32];
        const void *val;
        size_t vlen;
        int n = snprintf(key, sizeof(key), "key%06d", i);
        assert_int_equal(state_get(t, STATE_SUMMARIES, key, (size_t)n, &val, &vlen, &f->err),
                         TERN_OK);
        assert_int_equal(vlen, 4096);
        assert_int_equal(((const char *)val)[4095], 'a' + i % 26);
    }
    state_txn_abort(t);

    /* By hand: the full map fails the transaction, the next one fits. */
    state_close(f->db);
    f->db = NULL;
    char *other = path_join(f->dir, "other");
    assert_int_equal(state_open(other, 128 * 1024, &f->db, &f->err), TERN_OK);
    fl = (struct fill){0, 200, 0};
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(fill_fn(t, &fl, &f->err), TERN_E_IO);
    assert_non_null(strstr(tern_err_msg(&f->err), "is full"));
    assert_int_equal(state_put(t, STATE_META, LIT("k"), LIT("v"), &f->err), TERN_E_USAGE);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_E_USAGE);
    for (int tries = 0; tries < 8; tries++) {
        assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
        if (fill_fn(t, &fl, &f->err) == TERN_OK)
            break;
        state_txn_abort(t);
        t = NULL;
    }
    assert_non_null(t);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);

    /* A body that ignores the full map still ends with everything stored. */
    fl = (struct fill){0, 300, 0};
    assert_int_equal(state_write(f->db, fill_careless_fn, &fl, &f->err), TERN_OK);
    assert_true(fl.runs > 1);
    assert_int_equal(state_txn_begin(f->db, false, &t, &f->err), TERN_OK);
    const void *val;
    size_t vlen;
    assert_int_equal(state_get(t, STATE_SUMMARIES, LIT("care000299"), &val, &vlen, &f->err),
                     TERN_OK);
    state_txn_abort(t);
    free(other);
}

static enum tern_status
failing_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    enum tern_status st = state_put(t, STATE_META, LIT("half"), LIT("done"), err);
    if (st)
        return st;
    return tern_err_set(err, TERN_E_CANCELED, "stopped on purpose");
}

static void
write_fn_error_aborts(void **state)
{
    struct fixture *f = *state;
    open_db(f);
    assert_int_equal(state_write(f->db, failing_fn, NULL, &f->err), TERN_E_CANCELED);
    assert_string_equal(tern_err_msg(&f->err), "stopped on purpose");
    assert_null(get_str(f, STATE_META, LIT("half")));
    assert_int_equal(state_write(f->db, NULL, NULL, &f->err), TERN_E_USAGE);
}

/* ---- records ---- */

static void
record_encoding(void **state)
{
    struct tbuf b;
    struct state_rec r;
    uint8_t version;
    uint64_t v;
    const char *s;
    size_t len;
    tbuf_init(&b, 0);
    assert_int_equal(state_rec_begin(&b, 'X', 3), TERN_OK);
    assert_int_equal(state_rec_put_u64(&b, 0x0102030405060708ull), TERN_OK);
    assert_int_equal(state_rec_put_str(&b, LIT("hi")), TERN_OK);
    assert_int_equal(state_rec_put_str(&b, "", 0), TERN_OK);
    /* The layout is fixed: type, version, LE u64, LE length, bytes, NUL. */
    assert_int_equal(b.len, 2 + 8 + 4 + 3 + 4 + 1);
    assert_memory_equal(b.data, "X\3\10\7\6\5\4\3\2\1\2\0\0\0hi\0\0\0\0\0\0", b.len);
    assert_int_equal(state_rec_open(&r, b.data, b.len, 'X', &version), TERN_OK);
    assert_int_equal(version, 3);
    assert_int_equal(state_rec_get_u64(&r, &v), TERN_OK);
    assert_true(v == 0x0102030405060708ull);
    assert_int_equal(state_rec_get_str(&r, &s, &len), TERN_OK);
    assert_string_equal(s, "hi");
    assert_int_equal(len, 2);
    assert_int_equal(state_rec_end(&r), TERN_E_PROTO); /* one string left */
    assert_int_equal(state_rec_get_str(&r, &s, &len), TERN_OK);
    assert_int_equal(len, 0);
    assert_int_equal(state_rec_end(&r), TERN_OK);
    assert_int_equal(state_rec_get_u64(&r, &v), TERN_E_PROTO);
    assert_int_equal(state_rec_get_str(&r, &s, &len), TERN_E_PROTO);

    assert_int_equal(state_rec_open(&r, b.data, b.len, 'Y', NULL), TERN_E_PROTO);
    assert_int_equal(state_rec_open(&r, b.data, 1, 'X', NULL), TERN_E_PROTO);
    assert_int_equal(state_rec_open(&r, NULL, 10, 'X', NULL), TERN_E_PROTO);
    assert_int_equal(state_rec_open(&r, "X\0", 2, 'X', NULL), TERN_E_PROTO); /* version 0 */
    assert_int_equal(state_rec_put_str(&b, LIT("a\0b")), TERN_E_USAGE);
    assert_int_equal(state_rec_begin(&b, 'X', 0), TERN_E_USAGE);

    /* Hostile string lengths: huge, one past the end, no NUL, NUL inside. */
    static const char *const bad[] = {
        "X\1\xFF\xFF\xFF\xFFhi\0", "X\1\3\0\0\0hi\0",  "X\1\3\0\0\0hix",
        "X\1\2\0\0\0hix",          "X\1\2\0\0\0h\0\0", "X\1\2\0\0",
    };
    static const size_t badlen[] = {9, 9, 9, 9, 9, 5};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        /* An exact copy, so that reading past the end is caught. */
        char *copy = malloc(badlen[i]);
        assert_non_null(copy);
        memcpy(copy, bad[i], badlen[i]);
        assert_int_equal(state_rec_open(&r, copy, badlen[i], 'X', NULL), TERN_OK);
        assert_int_equal(state_rec_get_str(&r, &s, &len), TERN_E_PROTO);
        free(copy);
    }
    tbuf_free(&b);
}

static void
pop3_record_rejects_malformed(void **state)
{
    struct tbuf b;
    struct state_pop3_rec in = {STATE_POP3_STORED, "1700000000.M5P6Q7.host", 1700000000, 1234};
    struct state_pop3_rec out;
    tbuf_init(&b, 0);
    assert_int_equal(state_pop3_encode(&in, &b), TERN_OK);
    assert_int_equal(state_pop3_decode(b.data, b.len, &out), TERN_OK);
    assert_int_equal(out.status, STATE_POP3_STORED);
    assert_string_equal(out.file, in.file);
    assert_int_equal(out.downloaded_at, in.downloaded_at);
    assert_int_equal(out.size, in.size);

    /* Every truncation, and one byte more, is rejected. */
    for (size_t n = 0; n < b.len; n++)
        assert_int_equal(state_pop3_decode(b.data, n, &out), TERN_E_PROTO);
    char *longer = malloc(b.len + 1);
    assert_non_null(longer);
    memcpy(longer, b.data, b.len);
    longer[b.len] = 0;
    assert_int_equal(state_pop3_decode(longer, b.len + 1, &out), TERN_E_PROTO);
    free(longer);

    /* Wrong type, a future version, a bad status, a file name with "/". */
    char *copy = malloc(b.len);
    assert_non_null(copy);
    struct {
        size_t off;
        char byte;
    } flips[] = {{0, 'O'}, {1, 2}, {1, 0}, {2, 0}, {2, 3}, {14, '/'}, {14, '.'}};
    for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
        memcpy(copy, b.data, b.len);
        copy[flips[i].off] = flips[i].byte;
        assert_int_equal(state_pop3_decode(copy, b.len, &out), TERN_E_PROTO);
    }
    /* Random damage never crashes and never reads outside the value. */
    unsigned seed = 99;
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, b.data, b.len);
        for (int k = 0; k < 1 + round % 4; k++)
            copy[rand_r(&seed) % b.len] = (char)rand_r(&seed);
        size_t n = (size_t)rand_r(&seed) % (b.len + 1);
        enum tern_status st = state_pop3_decode(copy, n, &out);
        assert_true(st == TERN_OK || st == TERN_E_PROTO);
        if (st == TERN_OK)
            assert_true(strlen(out.file) > 0 && out.file < copy + n);
    }
    free(copy);

    /* Encoding refuses records that could not be read back. */
    struct state_pop3_rec nofile = {STATE_POP3_STORED, "", 0, 0};
    struct state_pop3_rec badstatus = {(enum state_pop3_status)9, "x", 0, 0};
    assert_int_equal(state_pop3_encode(&nofile, &b), TERN_E_USAGE);
    assert_int_equal(state_pop3_encode(&badstatus, &b), TERN_E_USAGE);
    assert_int_equal(state_pop3_decode(b.data, b.len, NULL), TERN_E_USAGE);
    tbuf_free(&b);
}

static void
pop3_keys_validate_uidl(void **state)
{
    struct tbuf k;
    struct tern_err err = {0};
    char uidl[80];
    tbuf_init(&k, 0);
    assert_int_equal(state_pop3_key("work", LIT("abc/../x"), &k, &err), TERN_OK);
    assert_int_equal(k.len, 5 + 8);
    assert_memory_equal(k.data, "work\0abc/../x", 13);
    memset(uidl, '~', sizeof(uidl));
    assert_int_equal(state_pop3_key("work", uidl, 70, &k, &err), TERN_OK);
    assert_int_equal(state_pop3_key("work", uidl, 71, &k, &err), TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&err), "bad UIDL"));
    assert_int_equal(state_pop3_key("work", "", 0, &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("work", LIT("a b"), &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("work", LIT("a\x7f"), &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("work", LIT("a\0b"), &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("work", LIT("\xC3\xA9"), &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("work", NULL, 3, &k, &err), TERN_E_PROTO);
    assert_int_equal(state_pop3_key("", LIT("a"), &k, &err), TERN_E_USAGE);
    assert_int_equal(state_pop3_key(NULL, LIT("a"), &k, &err), TERN_E_USAGE);
    char account[500];
    memset(account, 'a', sizeof(account) - 1);
    account[sizeof(account) - 1] = '\0';
    assert_int_equal(state_pop3_key(account, uidl, 70, &k, &err), TERN_E_USAGE);
    tbuf_free(&k);
    tern_err_clear(&err);
}

struct pop3_seen {
    char uidls[8][80];
    int n;
};

static enum tern_status
pop3_seen_cb(const char *uidl, size_t ulen, const struct state_pop3_rec *r, void *aux)
{
    struct pop3_seen *s = aux;
    assert_true(s->n < 8);
    snprintf(s->uidls[s->n++], sizeof(s->uidls[0]), "%.*s=%s", (int)ulen, uidl, r->file);
    return TERN_OK;
}

static void
pop3_records_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct state_txn *t;
    struct state_pop3_rec r = {STATE_POP3_PENDING, "f1", 100, 10}, got;
    open_db(f);
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_pop3_put(t, "work", LIT("u2"), &r, &f->err), TERN_OK);
    r.file = "f1b";
    assert_int_equal(state_pop3_put(t, "work", LIT("u1"), &r, &f->err), TERN_OK);
    r.file = "f3";
    assert_int_equal(state_pop3_put(t, "workshop", LIT("u1"), &r, &f->err), TERN_OK);
    r.file = "";
    assert_int_equal(state_pop3_put(t, "work", LIT("u9"), &r, &f->err), TERN_E_USAGE);
    assert_int_equal(state_pop3_put(t, "work", LIT("bad uidl"), &r, &f->err), TERN_E_PROTO);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);

    reopen_db(f);
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_pop3_get(t, "work", LIT("u2"), &got, &f->err), TERN_OK);
    assert_int_equal(got.status, STATE_POP3_PENDING);
    assert_string_equal(got.file, "f1");
    assert_int_equal(state_pop3_get(t, "work", LIT("u3"), &got, &f->err), TERN_E_NOTFOUND);
    /* Only "work" itself: the key's NUL keeps "workshop" apart. */
    struct pop3_seen s = {0};
    assert_int_equal(state_pop3_each(t, "work", pop3_seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.uidls[0], "u1=f1b");
    assert_string_equal(s.uidls[1], "u2=f1");
    /* A record damaged in the file is refused, by get and by each. */
    assert_int_equal(state_put(t, STATE_POP3, LIT("work\0u5"), LIT("P\1garbage"), &f->err),
                     TERN_OK);
    assert_int_equal(state_pop3_get(t, "work", LIT("u5"), &got, &f->err), TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&f->err), "malformed POP3 record for UIDL u5"));
    memset(&s, 0, sizeof(s));
    assert_int_equal(state_pop3_each(t, "work", pop3_seen_cb, &s, &f->err), TERN_E_PROTO);
    assert_int_equal(s.n, 2); /* u1 and u2 came first */
    assert_int_equal(state_pop3_del(t, "work", LIT("u5"), &f->err), TERN_OK);
    /* A key with a broken UIDL (written by something else) is refused too. */
    assert_int_equal(state_put(t, STATE_POP3, LIT("work\0a b"), LIT("x"), &f->err), TERN_OK);
    memset(&s, 0, sizeof(s));
    assert_int_equal(state_pop3_each(t, "work", pop3_seen_cb, &s, &f->err), TERN_E_PROTO);
    assert_int_equal(state_del(t, STATE_POP3, LIT("work\0a b"), &f->err), TERN_OK);
    assert_int_equal(state_pop3_del(t, "work", LIT("u2"), &f->err), TERN_OK);
    assert_int_equal(state_pop3_del(t, "work", LIT("u2"), &f->err), TERN_E_NOTFOUND);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);
}

struct outbox_seen {
    char ids[4][64];
    int n;
};

static enum tern_status
outbox_seen_cb(const char *id, const struct state_outbox_rec *r, void *aux)
{
    struct outbox_seen *s = aux;
    assert_true(s->n < 4);
    snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s:%d:%u:%s", id, (int)r->status, r->attempts,
             r->last_error);
    return TERN_OK;
}

static void
outbox_records_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct state_txn *t;
    struct tbuf b;
    struct state_outbox_rec r = {STATE_OUTBOX_QUEUED, 0, 0, NULL}, got;
    open_db(f);
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_outbox_put(t, "q2", &r, &f->err), TERN_OK);
    r = (struct state_outbox_rec){STATE_OUTBOX_FAILED, 3, 1700000000,
                                  "550 5.1.1 <bob@example.org>: no such user"};
    assert_int_equal(state_outbox_put(t, "q1", &r, &f->err), TERN_OK);
    r.status = (enum state_outbox_status)0;
    assert_int_equal(state_outbox_put(t, "q3", &r, &f->err), TERN_E_USAGE);
    r.status = STATE_OUTBOX_SENDING;
    assert_int_equal(state_outbox_put(t, "", &r, &f->err), TERN_E_USAGE);
    assert_int_equal(state_outbox_put(t, NULL, &r, &f->err), TERN_E_USAGE);
    assert_int_equal(state_txn_commit(t, &f->err), TERN_OK);

    reopen_db(f);
    assert_int_equal(state_txn_begin(f->db, true, &t, &f->err), TERN_OK);
    assert_int_equal(state_outbox_get(t, "q1", &got, &f->err), TERN_OK);
    assert_int_equal(got.status, STATE_OUTBOX_FAILED);
    assert_int_equal(got.attempts, 3);
    assert_int_equal(got.next_attempt, 1700000000);
    assert_string_equal(got.last_error, "550 5.1.1 <bob@example.org>: no such user");
    struct outbox_seen s = {0};
    assert_int_equal(state_outbox_each(t, outbox_seen_cb, &s, &f->err), TERN_OK);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.ids[0], "q1:3:3:550 5.1.1 <bob@example.org>: no such user");
    assert_string_equal(s.ids[1], "q2:1:0:");
    assert_int_equal(state_outbox_del(t, "q2", &f->err), TERN_OK);
    assert_int_equal(state_outbox_get(t, "q2", &got, &f->err), TERN_E_NOTFOUND);
    assert_int_equal(state_put(t, STATE_OUTBOX, LIT("q4"), LIT("O\1short"), &f->err), TERN_OK);
    assert_int_equal(state_outbox_get(t, "q4", &got, &f->err), TERN_E_PROTO);
    assert_non_null(strstr(tern_err_msg(&f->err), "malformed outbox record for q4"));
    assert_int_equal(state_outbox_each(t, outbox_seen_cb, &s, &f->err), TERN_E_PROTO);
    state_txn_abort(t);

    /* Attempts past 32 bits and unknown states are malformed. */
    tbuf_init(&b, 0);
    assert_int_equal(state_rec_begin(&b, 'O', 1), TERN_OK);
    assert_int_equal(state_rec_put_u64(&b, 1), TERN_OK);
    assert_int_equal(state_rec_put_u64(&b, (uint64_t)1 << 32), TERN_OK);
    assert_int_equal(state_rec_put_u64(&b, 0), TERN_OK);
    assert_int_equal(state_rec_put_str(&b, "", 0), TERN_OK);
    assert_int_equal(state_outbox_decode(b.data, b.len, &got), TERN_E_PROTO);
    b.data[3] = 0; /* status 1, attempts 0 */
    b.data[10 + 4] = 0;
    assert_int_equal(state_outbox_decode(b.data, b.len, &got), TERN_OK);
    b.data[2] = 4;
    assert_int_equal(state_outbox_decode(b.data, b.len, &got), TERN_E_PROTO);
    tbuf_free(&b);
}

/* ---- processes: sharing the file, and the lock ---- */

static void
second_process_sees_commits(void **state)
{
    struct fixture *f = *state;
    int status;
    open_db(f);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct state_db *db;
        struct state_txn *t;
        struct tern_err err = {0};
        if (state_open(f->cache, 0, &db, &err) || state_txn_begin(db, true, &t, &err) ||
            state_put(t, STATE_META, LIT("from"), LIT("child"), &err) || state_txn_commit(t, &err))
            _exit(1);
        state_close(db);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *v = get_str(f, STATE_META, LIT("from"));
    assert_string_equal(v, "child");
    free(v);
}

static void
lock_contention(void **state)
{
    struct fixture *f = *state;
    struct state_lock *a = NULL, *b = NULL;
    char want[128];
    int to_child[2], to_parent[2], status;
    char c;

    /* Within one process: a second lock is refused until the first goes. */
    assert_int_equal(state_lock(f->cache, &a, &f->err), TERN_OK);
    assert_int_equal(state_lock(f->cache, &b, &f->err), TERN_E_IO);
    snprintf(want, sizeof(want), "the state in %s is locked by another tern (pid %ld)", f->cache,
             (long)getpid());
    assert_string_equal(tern_err_msg(&f->err), want);
    assert_null(b);
    state_unlock(a);
    assert_int_equal(state_lock(f->cache, &b, &f->err), TERN_OK);
    state_unlock(b);
    state_unlock(NULL);

    /* Another process holds it: its pid is named. */
    assert_int_equal(pipe(to_child), 0);
    assert_int_equal(pipe(to_parent), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct state_lock *l;
        if (state_lock(f->cache, &l, NULL))
            _exit(1);
        if (write(to_parent[1], "L", 1) != 1 || read(to_child[0], &c, 1) != 1)
            _exit(2);
        _exit(0); /* without unlocking: the kernel drops it */
    }
    assert_int_equal(read(to_parent[0], &c, 1), 1);
    assert_int_equal(state_lock(f->cache, &a, &f->err), TERN_E_IO);
    snprintf(want, sizeof(want), "(pid %ld)", (long)pid);
    assert_non_null(strstr(tern_err_msg(&f->err), want));
    assert_int_equal(write(to_child[1], "G", 1), 1);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(state_lock(f->cache, &a, &f->err), TERN_OK);

    /* A holder killed with SIGKILL leaves no stale lock either. */
    state_unlock(a);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct state_lock *l;
        if (state_lock(f->cache, &l, NULL))
            _exit(1);
        if (write(to_parent[1], "L", 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    assert_int_equal(read(to_parent[0], &c, 1), 1);
    assert_int_equal(state_lock(f->cache, &a, &f->err), TERN_E_IO);
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(state_lock(f->cache, &a, &f->err), TERN_OK);
    state_unlock(a);
    close(to_child[0]);
    close(to_child[1]);
    close(to_parent[0]);
    close(to_parent[1]);
    assert_int_equal(state_lock(NULL, &a, &f->err), TERN_E_USAGE);
}

/* ---- the POP3 store sequence of state.h, crashing at every step ---- */

#define ACCOUNT "work"
#define NMSG 12

/* The "server": message I has UIDL "uid-I" and this text. */
static char *
server_message(int i, size_t *len)
{
    struct tbuf t;
    tbuf_init(&t, 0);
    assert_int_equal(tbuf_addf(&t, "Subject: pop %d\r\n\r\n", i), TERN_OK);
    for (int k = 0; k < 200 + i * 53; k++)
        assert_int_equal(tbuf_addc(&t, (char)('A' + (i * 7 + k) % 26)), TERN_OK);
    assert_int_equal(tbuf_addf(&t, "\r\nend of %d\r\n", i), TERN_OK);
    *len = t.len;
    char *s = tbuf_take(&t);
    assert_non_null(s);
    return s;
}

/* Where a run stops: a maildir step, or a point between the steps. */
enum pop_stop {
    STOP_NONE,
    STOP_AFTER_WRITES,  /* tmp files written; nothing recorded */
    STOP_AFTER_INTENT,  /* PENDING records committed */
    STOP_MAILDIR,       /* inside the maildir commit (hook) */
    STOP_AFTER_MAILDIR, /* maildir committed; records still PENDING */
    STOP_AFTER_STORED,  /* STORED committed; before DELE */
};

struct pop_run {
    struct state_db *db;
    struct maildir *md;
    struct maildir_batch *b;
    int uidx[NMSG]; /* the server message of each batch index */
    size_t n;
    enum state_pop3_status status;
};

static enum tern_status
record_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct pop_run *run = aux;
    for (size_t i = 0; i < run->n; i++) {
        char uidl[16];
        int n = snprintf(uidl, sizeof(uidl), "uid-%d", run->uidx[i]);
        struct state_pop3_rec r = {run->status, maildir_batch_name(run->b, i), 1700000000,
                                   maildir_batch_size(run->b, i)};
        enum tern_status st = state_pop3_put(t, ACCOUNT, uidl, (size_t)n, &r, err);
        if (st)
            return st;
    }
    return TERN_OK;
}

struct settle {
    struct maildir *md;
    char uidls[NMSG][16];
    bool found[NMSG];
    int n;
};

static enum tern_status
settle_cb(const char *uidl, size_t ulen, const struct state_pop3_rec *r, void *aux)
{
    struct settle *s = aux;
    assert_true(s->n < NMSG);
    snprintf(s->uidls[s->n], sizeof(s->uidls[0]), "%.*s", (int)ulen, uidl);
    if (r->status == STATE_POP3_PENDING) {
        enum tern_status st = maildir_msg_find(s->md, r->file, NULL, NULL);
        assert_true(st == TERN_OK || st == TERN_E_NOTFOUND);
        s->found[s->n] = st == TERN_OK;
    } else
        s->found[s->n] = true;
    s->n++;
    return TERN_OK;
}

static enum tern_status
settle_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct settle *s = aux;
    s->n = 0;
    enum tern_status st = state_pop3_each(t, ACCOUNT, settle_cb, s, err);
    for (int i = 0; !st && i < s->n; i++) {
        size_t ulen = strlen(s->uidls[i]);
        if (!s->found[i]) {
            st = state_pop3_del(t, ACCOUNT, s->uidls[i], ulen, err);
            continue;
        }
        struct state_pop3_rec r;
        if ((st = state_pop3_get(t, ACCOUNT, s->uidls[i], ulen, &r, err)))
            break;
        if (r.status == STATE_POP3_PENDING) {
            /* Copy the name out: the put below may move the map's bytes. */
            char file[300];
            snprintf(file, sizeof(file), "%s", r.file);
            r.file = file;
            r.status = STATE_POP3_STORED;
            st = state_pop3_put(t, ACCOUNT, s->uidls[i], ulen, &r, err);
        }
    }
    return st;
}

/* A point of the maildir commit to stop at. */
struct crash_at_maildir {
    enum maildir_step step;
    size_t index;
};

static int
pop_crash_hook(enum maildir_step step, size_t i, void *aux)
{
    const struct crash_at_maildir *h = aux;
    if (step == h->step && (step != MAILDIR_STEP_RENAME || i == h->index))
        _exit(0);
    return 0;
}

/*
 * One run of the download: settle what an earlier run left, then fetch
 * every message without a record in one batch, stopping at STOP (at AT
 * inside the maildir commit for STOP_MAILDIR).
 */
static void
pop_run(const char *cache, enum pop_stop stop, struct crash_at_maildir *at)
{
    struct pop_run run = {0};
    struct tern_err err = {0};
    struct settle s = {0};
    struct state_txn *t;
    char *mail = path_join(cache, "mail");

    assert_int_equal(state_open(cache, 0, &run.db, &err), TERN_OK);
    assert_int_equal(maildir_open_folder(mail, LIT("INBOX"), MAILDIR_CREATE, &run.md, &err),
                     TERN_OK);
    s.md = run.md;
    assert_int_equal(state_write(run.db, settle_fn, &s, &err), TERN_OK);

    /* Which messages the store lacks. */
    assert_int_equal(state_txn_begin(run.db, false, &t, &err), TERN_OK);
    assert_int_equal(maildir_batch_new(&run.b, &err), TERN_OK);
    for (int i = 0; i < NMSG; i++) {
        char uidl[16];
        struct state_pop3_rec r;
        int n = snprintf(uidl, sizeof(uidl), "uid-%d", i);
        enum tern_status st = state_pop3_get(t, ACCOUNT, uidl, (size_t)n, &r, &err);
        if (st == TERN_OK) {
            assert_int_equal(r.status, STATE_POP3_STORED);
            continue;
        }
        assert_int_equal(st, TERN_E_NOTFOUND);
        size_t idx, len;
        char *text = server_message(i, &len);
        assert_int_equal(maildir_batch_add(run.b, run.md, NULL, &idx, NULL, &err), TERN_OK);
        assert_int_equal(maildir_batch_write(run.b, idx, text, len, &err), TERN_OK);
        assert_int_equal(maildir_batch_finish(run.b, idx, &err), TERN_OK);
        free(text);
        run.uidx[run.n++] = i;
    }
    state_txn_abort(t);
    if (stop == STOP_AFTER_WRITES)
        _exit(0);
    run.status = STATE_POP3_PENDING;
    assert_int_equal(state_write(run.db, record_fn, &run, &err), TERN_OK);
    if (stop == STOP_AFTER_INTENT)
        _exit(0);
    if (stop == STOP_MAILDIR)
        maildir_set_commit_hook(pop_crash_hook, at);
    assert_int_equal(maildir_batch_commit(run.b, &err), TERN_OK);
    maildir_set_commit_hook(NULL, NULL);
    if (stop == STOP_AFTER_MAILDIR)
        _exit(0);
    run.status = STATE_POP3_STORED;
    assert_int_equal(state_write(run.db, record_fn, &run, &err), TERN_OK);
    if (stop == STOP_AFTER_STORED)
        _exit(0);
    /* Here the real download would DELE the messages of the batch. */
    maildir_batch_free(run.b);
    maildir_close(run.md);
    state_close(run.db);
    tern_err_clear(&err);
    free(mail);
}

struct final_check {
    struct maildir *md;
    int count[NMSG];
    int total;
};

static enum tern_status
final_cb(const struct maildir_entry *e, void *aux)
{
    struct final_check *c = aux;
    int fd;
    size_t len, wantlen;
    char buf[8192];
    struct tbuf t;
    assert_int_equal(maildir_msg_open(c->md, e->file, &fd, NULL), TERN_OK);
    tbuf_init(&t, 0);
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        assert_int_equal(tbuf_add(&t, buf, (size_t)n), TERN_OK);
    close(fd);
    int i = (int)strtol(t.data + strlen("Subject: pop "), NULL, 10);
    assert_true(i >= 0 && i < NMSG);
    char *want = server_message(i, &wantlen);
    len = t.len;
    assert_int_equal(len, wantlen);
    assert_memory_equal(t.data, want, len);
    free(want);
    tbuf_free(&t);
    c->count[i]++;
    c->total++;
    return TERN_OK;
}

static void
pop_crash_case(struct fixture *f, enum pop_stop stop, struct crash_at_maildir *at)
{
    int status;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        pop_run(f->cache, stop, at);
        _exit(stop == STOP_NONE ? 0 : 3); /* a stop should have ended us */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The next run, uninterrupted; then nothing is lost or doubled. */
    pop_run(f->cache, STOP_NONE, NULL);
    char *mail = path_join(f->cache, "mail");
    struct final_check c = {0};
    struct tern_err err = {0};
    assert_int_equal(maildir_open_folder(mail, LIT("INBOX"), 0, &c.md, &err), TERN_OK);
    assert_int_equal(maildir_scan(c.md, final_cb, &c, &err), TERN_OK);
    assert_int_equal(c.total, NMSG);
    for (int i = 0; i < NMSG; i++)
        assert_int_equal(c.count[i], 1);
    /* Every record is STORED and names a file that is there. */
    struct state_db *db;
    struct state_txn *t;
    struct settle s = {.md = c.md};
    assert_int_equal(state_open(f->cache, 0, &db, &err), TERN_OK);
    assert_int_equal(state_txn_begin(db, false, &t, &err), TERN_OK);
    for (int i = 0; i < NMSG; i++) {
        char uidl[16];
        struct state_pop3_rec r;
        int n = snprintf(uidl, sizeof(uidl), "uid-%d", i);
        assert_int_equal(state_pop3_get(t, ACCOUNT, uidl, (size_t)n, &r, &err), TERN_OK);
        assert_int_equal(r.status, STATE_POP3_STORED);
        assert_int_equal(maildir_msg_find(c.md, r.file, NULL, &err), TERN_OK);
    }
    assert_int_equal(state_pop3_each(t, ACCOUNT, settle_cb, &s, &err), TERN_OK);
    assert_int_equal(s.n, NMSG);
    state_txn_abort(t);
    state_close(db);
    /* A third run finds nothing to do. */
    pop_run(f->cache, STOP_NONE, NULL);
    c.total = 0;
    memset(c.count, 0, sizeof(c.count));
    assert_int_equal(maildir_scan(c.md, final_cb, &c, &err), TERN_OK);
    assert_int_equal(c.total, NMSG);
    /* Leftovers in tmp/ are only ever leftovers. */
    assert_int_equal(maildir_clean_tmp(c.md, 0, NULL, &err), TERN_OK);
    maildir_close(c.md);
    tern_err_clear(&err);
    free(mail);

    /* Start the next case from nothing. */
    nftw(f->cache, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void
pop3_crash_at_every_step(void **state)
{
    struct fixture *f = *state;
    struct crash_at_maildir before_sync = {MAILDIR_STEP_SYNC, 0};
    struct crash_at_maildir after_sync = {MAILDIR_STEP_RENAME, 0};
    struct crash_at_maildir half = {MAILDIR_STEP_RENAME, NMSG / 2};
    struct crash_at_maildir before_dirsync = {MAILDIR_STEP_DIRSYNC, 0};
    struct crash_at_maildir after_dirsync = {MAILDIR_STEP_DONE, 0};
    pop_crash_case(f, STOP_AFTER_WRITES, NULL);
    pop_crash_case(f, STOP_AFTER_INTENT, NULL);
    pop_crash_case(f, STOP_MAILDIR, &before_sync);
    pop_crash_case(f, STOP_MAILDIR, &after_sync);
    pop_crash_case(f, STOP_MAILDIR, &half);
    pop_crash_case(f, STOP_MAILDIR, &before_dirsync);
    pop_crash_case(f, STOP_MAILDIR, &after_dirsync);
    pop_crash_case(f, STOP_AFTER_MAILDIR, NULL);
    pop_crash_case(f, STOP_AFTER_STORED, NULL);
    pop_crash_case(f, STOP_NONE, NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(open_creates_file, setup, teardown),
        cmocka_unit_test_setup_teardown(reopen_keeps_data, setup, teardown),
        cmocka_unit_test_setup_teardown(corrupt_file_is_clear_error, setup, teardown),
        cmocka_unit_test_setup_teardown(unknown_format_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(put_get_del, setup, teardown),
        cmocka_unit_test_setup_teardown(iterate_by_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(map_grows_when_full, setup, teardown),
        cmocka_unit_test_setup_teardown(write_fn_error_aborts, setup, teardown),
        cmocka_unit_test(record_encoding),
        cmocka_unit_test(pop3_record_rejects_malformed),
        cmocka_unit_test(pop3_keys_validate_uidl),
        cmocka_unit_test_setup_teardown(pop3_records_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(outbox_records_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(second_process_sees_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(lock_contention, setup, teardown),
        cmocka_unit_test_setup_teardown(pop3_crash_at_every_step, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
