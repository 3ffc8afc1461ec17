/*
 * state.h - tern's state in LMDB: $cache_dir/state.lmdb, its tables,
 * transactions, a versioned record encoding, the records of the POP3
 * download and the outbox, and the lock that keeps a second tern out.
 *
 * Layer: src/ (the store). Includes only libc and proto/ headers; LMDB
 * itself stays inside state.c, so callers never see an MDB_ type.
 *
 * The file is one LMDB environment (MDB_NOSUBDIR, mode 0600; LMDB keeps
 * its reader table in state.lmdb-lock beside it). A write transaction's
 * commit is durable when it returns (LMDB's default full sync). The map
 * starts at STATE_MAP_SIZE and doubles when it fills (see state_write).
 * Nothing read from the file is trusted: every record goes through a
 * decoder that rejects malformed values with TERN_E_PROTO.
 *
 * Thread safety: a struct state_db may be shared by threads (the job thread
 * commits while the loop reads). A transaction belongs to one thread at a
 * time; a write transaction to the thread that began it (LMDB's rule), and
 * one thread holds at most one transaction.
 *
 * The POP3 download keeps DESIGN.md's "Nothing is lost" with batches
 * (maildir.h) and records, and loses or duplicates nothing at a crash:
 *   1. each message of a batch: maildir_batch_add, stream RETR into it;
 *   2. one write transaction: every UIDL -> {PENDING, file name, size};
 *   3. maildir_batch_commit (one sync, renames, directory fsyncs);
 *   4. one write transaction: every UIDL -> {STORED, ...};
 *   5. only now DELE those messages (unless --keep).
 * At the start of the next run, each PENDING record is settled: its file
 * exists (maildir_msg_find) -> STORED; it does not -> the record is
 * deleted and the message downloaded again. A UIDL without a record is
 * new. A tmp/ file is never a stored message.
 */
#ifndef TERN_STATE_H
#define TERN_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"
#include "tbuf.h"

/* The first map size, and the largest that state_write grows it to. */
#define STATE_MAP_SIZE ((size_t)1 << 30)
#define STATE_MAP_MAX ((size_t)1 << 36)

/* The format of the tables and records this code reads and writes. */
#define STATE_FORMAT 1

/* The named databases (LMDB allows up to 32; more tables fit later). */
enum state_table {
    STATE_META,      /* "format" -> "1"; values of tern as a whole */
    STATE_POP3,      /* "<account>\0<uidl>" -> POP3 record */
    STATE_OUTBOX,    /* queue id -> outbox record */
    STATE_FOLDERS,   /* mirror: folder -> UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT */
    STATE_MESSAGES,  /* mirror: folder and UID -> file, last synced flags */
    STATE_SUMMARIES, /* mirror: folder and UID -> summary */
    STATE_JOURNAL,   /* offline changes, in order */
    STATE_TABLE_COUNT
};

struct state_db;
struct state_txn;

/*
 * Opens $CACHE_DIR/state.lmdb, creating CACHE_DIR (mode 0700) and the file
 * (mode 0600) when missing, with a map of MAP_SIZE bytes (0: STATE_MAP_SIZE;
 * an existing larger file keeps its size). Creates the tables and checks
 * the format. *OUT is owned (state_close).
 * Errors, each with a sentence naming the file: TERN_E_IO (not an LMDB
 * file or corrupt, "move it away to start over"; a format this tern does
 * not know; permission or other system errors), TERN_E_USAGE, TERN_E_NOMEM.
 * Opening does not take state_lock; a writer takes that first.
 */
enum tern_status state_open(const char *cache_dir, size_t map_size, struct state_db **out,
                            struct tern_err *err);

/* Closes DB (NULL is fine); every transaction must have ended. */
void state_close(struct state_db *db);

/* The file's path, borrowed from DB. */
const char *state_get_path(const struct state_db *db);

/*
 * Begins a transaction, read-only or WRITE. Only one write transaction runs
 * at a time (across processes too: a second one waits for the first).
 * *OUT is owned: end it with state_txn_commit or state_txn_abort.
 */
enum tern_status state_txn_begin(struct state_db *db, bool write, struct state_txn **out,
                                 struct tern_err *err);

/*
 * Commits T and frees it, whatever the outcome; for a write transaction the
 * data is on disk when this returns TERN_OK. A transaction whose put failed
 * is not committed: TERN_E_USAGE, and nothing of it is stored.
 */
enum tern_status state_txn_commit(struct state_txn *t, struct tern_err *err);

/* Discards T's changes and frees it (NULL is fine). */
void state_txn_abort(struct state_txn *t);

/*
 * Stores VAL (VLEN bytes, may be 0) under KEY (1 to 511 bytes) in TABLE,
 * replacing any value. A full map is TERN_E_IO ("state file ... is full")
 * and fails the transaction; after it ends the map is grown, so running
 * the transaction again succeeds (state_write does that by itself).
 * Errors: TERN_E_IO, TERN_E_USAGE (read-only transaction, bad key or table).
 */
enum tern_status state_put(struct state_txn *t, enum state_table table, const void *key,
                           size_t klen, const void *val, size_t vlen, struct tern_err *err);

/*
 * Finds KEY in TABLE. *VAL points into the map: valid until T ends or puts
 * or deletes anything. TERN_E_NOTFOUND (no sentence) when absent.
 */
enum tern_status state_get(struct state_txn *t, enum state_table table, const void *key,
                           size_t klen, const void **val, size_t *vlen, struct tern_err *err);

/* Deletes KEY from TABLE; TERN_E_NOTFOUND (no sentence) when absent. */
enum tern_status state_del(struct state_txn *t, enum state_table table, const void *key,
                           size_t klen, struct tern_err *err);

/*
 * Called for each key starting with the prefix, in key order; the bytes are
 * borrowed for the call. A status other than TERN_OK stops the iteration,
 * which returns it. FN must not put or delete in T (collect keys instead).
 */
typedef enum tern_status (*state_iter_fn)(const void *key, size_t klen, const void *val,
                                          size_t vlen, void *aux);

/* Calls FN for every key of TABLE that begins with PREFIX (PLEN may be 0). */
enum tern_status state_iterate(struct state_txn *t, enum state_table table, const void *prefix,
                               size_t plen, state_iter_fn fn, void *aux, struct tern_err *err);

/*
 * The body of a write transaction. It may run more than once: when the map
 * fills, the transaction is aborted, the map doubled (up to STATE_MAP_MAX)
 * and FN run again in a new one, so FN must do nothing but reads and writes
 * through T (and must not keep pointers from an earlier run).
 */
typedef enum tern_status (*state_write_fn)(struct state_txn *t, void *aux, struct tern_err *err);

/*
 * Runs FN in a write transaction and commits it (durable on TERN_OK). A
 * status from FN aborts the transaction and is returned.
 */
enum tern_status state_write(struct state_db *db, state_write_fn fn, void *aux,
                             struct tern_err *err);

/* ---- Records: a small versioned binary encoding ---- */

/*
 * A record is: one type byte, one version byte (1 to 255), then fields in an
 * order the type defines. A u64 is 8 bytes little-endian; a string is its
 * length as 4 bytes little-endian, the bytes (no NUL among them), and a NUL.
 * A decoder checks every length against what is left, the NUL, and that
 * nothing is left over; any failure is TERN_E_PROTO. Types and versions
 * are checked by the record's own decoder.
 */
enum tern_status state_rec_begin(struct tbuf *out, uint8_t type, uint8_t version);
enum tern_status state_rec_put_u64(struct tbuf *out, uint64_t v);
/* TERN_E_USAGE when S has a NUL among its LEN bytes or is 4 GiB or more. */
enum tern_status state_rec_put_str(struct tbuf *out, const char *s, size_t len);

/* A cursor over a record's bytes (borrowed; valid while they are). */
struct state_rec {
    const unsigned char *p;
    size_t len;
    size_t off;
};

/* Checks the type byte and gives the version; TERN_E_PROTO when wrong. */
enum tern_status state_rec_open(struct state_rec *r, const void *val, size_t len, uint8_t type,
                                uint8_t *version);
enum tern_status state_rec_get_u64(struct state_rec *r, uint64_t *v);
/* *S points into the record: NUL-terminated, LEN bytes, no NUL inside. */
enum tern_status state_rec_get_str(struct state_rec *r, const char **s, size_t *len);
/* TERN_E_PROTO when bytes are left over. */
enum tern_status state_rec_end(const struct state_rec *r);

/* ---- POP3 download: "<account>\0<uidl>" -> record ---- */

/* RFC 1939 §7: a UIDL is 1 to 70 characters from 0x21 to 0x7E. */
#define STATE_UIDL_MAX 70

enum state_pop3_status {
    STATE_POP3_PENDING = 1, /* being stored: settle at the next run */
    STATE_POP3_STORED = 2,  /* in the maildir; the server copy may go */
};

struct state_pop3_rec {
    enum state_pop3_status status;
    const char *file;      /* the maildir unique name; borrowed */
    int64_t downloaded_at; /* seconds since the epoch */
    uint64_t size;         /* bytes stored */
};

/*
 * Writes the key of ACCOUNT's message UIDL (ULEN bytes) into OUT (emptied
 * first). TERN_E_PROTO when UIDL breaks RFC 1939 §7 (TESTMATRIX P1);
 * TERN_E_USAGE when ACCOUNT is empty or the key would pass 511 bytes.
 */
enum tern_status state_pop3_key(const char *account, const char *uidl, size_t ulen,
                                struct tbuf *out, struct tern_err *err);

/* Record type 'P', version 1: status u64, file str, downloaded_at u64, size u64. */
enum tern_status state_pop3_encode(const struct state_pop3_rec *r, struct tbuf *out);
/* R's strings point into VAL. TERN_E_PROTO when malformed. */
enum tern_status state_pop3_decode(const void *val, size_t len, struct state_pop3_rec *r);

enum tern_status state_pop3_put(struct state_txn *t, const char *account, const char *uidl,
                                size_t ulen, const struct state_pop3_rec *r, struct tern_err *err);
/* TERN_E_NOTFOUND when absent; TERN_E_PROTO (with a sentence) when malformed. */
enum tern_status state_pop3_get(struct state_txn *t, const char *account, const char *uidl,
                                size_t ulen, struct state_pop3_rec *r, struct tern_err *err);
enum tern_status state_pop3_del(struct state_txn *t, const char *account, const char *uidl,
                                size_t ulen, struct tern_err *err);

typedef enum tern_status (*state_pop3_fn)(const char *uidl, size_t ulen,
                                          const struct state_pop3_rec *r, void *aux);

/*
 * Calls FN for every record of ACCOUNT, in UIDL order. A malformed record
 * stops it with TERN_E_PROTO and a sentence naming the UIDL: nothing is
 * DELEd on the strength of a record tern cannot read.
 */
enum tern_status state_pop3_each(struct state_txn *t, const char *account, state_pop3_fn fn,
                                 void *aux, struct tern_err *err);

/* ---- Outbox: queue id (the message's maildir unique name) -> record ---- */

enum state_outbox_status {
    STATE_OUTBOX_QUEUED = 1,  /* waiting for its next attempt */
    STATE_OUTBOX_SENDING = 2, /* an attempt began; a crash leaves it ambiguous */
    STATE_OUTBOX_FAILED = 3,  /* refused for good (5xx); kept for the user */
};

struct state_outbox_rec {
    enum state_outbox_status status;
    uint32_t attempts;
    int64_t next_attempt;   /* seconds since the epoch; 0: as soon as possible */
    const char *last_error; /* "" when none; borrowed */
};

/* Record type 'O', version 1: status u64, attempts u64, next_attempt u64, last_error str. */
enum tern_status state_outbox_encode(const struct state_outbox_rec *r, struct tbuf *out);
enum tern_status state_outbox_decode(const void *val, size_t len, struct state_outbox_rec *r);

/* ID: 1 to 255 bytes, no NUL (TERN_E_USAGE otherwise). */
enum tern_status state_outbox_put(struct state_txn *t, const char *id,
                                  const struct state_outbox_rec *r, struct tern_err *err);
enum tern_status state_outbox_get(struct state_txn *t, const char *id, struct state_outbox_rec *r,
                                  struct tern_err *err);
enum tern_status state_outbox_del(struct state_txn *t, const char *id, struct tern_err *err);

typedef enum tern_status (*state_outbox_fn)(const char *id, const struct state_outbox_rec *r,
                                            void *aux);

/* Calls FN for every outbox record in id order; malformed: TERN_E_PROTO. */
enum tern_status state_outbox_each(struct state_txn *t, state_outbox_fn fn, void *aux,
                                   struct tern_err *err);

/* ---- One tern per cache directory ---- */

/*
 * LMDB itself lets several processes share the file, but two terns on one
 * cache directory would download the same POP3 messages twice, send the
 * outbox twice and race in the mirror. So every command that changes the
 * state (pop, sync, flush, offline replay) first takes this lock: an
 * exclusive flock(2) on $CACHE_DIR/lock, which holds the owner's pid. The
 * kernel drops it when the process ends, so a crash leaves no stale lock.
 * Read-only commands need not take it.
 *
 * Errors: TERN_E_IO "the state in DIR is locked by another tern (pid N)"
 * when another process (or another open in this one) holds it; TERN_E_IO
 * for system errors; TERN_E_USAGE, TERN_E_NOMEM. *OUT is owned
 * (state_unlock). The descriptor is close-on-exec, so children such as
 * password_command do not inherit the lock.
 */
struct state_lock;
enum tern_status state_lock(const char *cache_dir, struct state_lock **out, struct tern_err *err);

/* Releases the lock (NULL is fine). The lock file stays. */
void state_unlock(struct state_lock *l);

#endif
