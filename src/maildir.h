/*
 * maildir.h - local mail in Maildir: folder names to directories, batched
 * durable delivery, scanning, reading, flags and deletion.
 *
 * Layer: src/ (the store). Used by the POP3 download, the SMTP outbox and the
 * IMAP offline mirror. Includes only libc and proto/ headers; it knows
 * nothing of LMDB, curses or the protocols.
 *
 * The format is maildir(5) (https://cr.yp.to/proto/maildir.html): a folder is
 * a directory with cur/, new/ and tmp/; a message is written to tmp/ under a
 * unique name and renamed into new/ (or cur/, with flags in its "info"
 * ":2,FLAGS", letters in ASCII order: D draft, F flagged, P passed, R
 * replied, S seen, T trashed, and lower-case keyword letters of other
 * clients kept as they are).
 *
 * Durability (DESIGN.md "Nothing is lost") is batched: a batch writes many
 * messages to tmp/, makes them durable with one sync, renames them all,
 * fsyncs each target directory once, and only then reports their names. The
 * caller records them (one LMDB transaction, state.h) and only after that
 * may it DELE or expunge anything. A file in tmp/ is never a stored message.
 *
 * Thread safety: a struct maildir or a batch may be used by one thread at a
 * time; different objects may be used from different threads.
 */
#ifndef TERN_MAILDIR_H
#define TERN_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "err.h"

/* ---- Folder names ---- */

/* The longest folder name, in bytes, that the mapping accepts. */
#define MAILDIR_NAME_MAX 4096

/*
 * Maps a folder name (LEN bytes of UTF-8; "/" separates hierarchy levels) to
 * a relative directory path under the mail root, and back. The mapping is a
 * pure function; maildir_name_decode is its exact inverse and accepts only
 * what maildir_name_encode produces, so decode(encode(x)) == x and
 * encode(decode(y)) == y whenever decode accepts y (TESTMATRIX I10).
 *
 * The scheme (percent-encoding, upper-case hex):
 * - The name is split at every "/" into components; each component becomes
 *   one directory level (a "/" never appears inside a path element).
 * - An empty component (from "", "a//b", "/a" or "a/") becomes "%".
 * - These bytes become "%XX": "%" itself; C0 controls 0x00-0x1F and DEL 0x7F;
 *   both bytes of the C1 controls U+0080-U+009F; every byte that is not part
 *   of well-formed UTF-8 (RFC 3629); and a "." that begins a path element, so
 *   "." and ".." become "%2E" and "%2E." and no element is hidden.
 * - An element that would read "cur", "new" or "tmp" has its first letter
 *   encoded ("%63ur", "%6Eew", "%74mp"), so a subfolder never mixes with a
 *   maildir's own subdirectories.
 * - A component whose encoding is longer than 255 bytes (NAME_MAX) is split
 *   into several path elements; every element but the last ends with "%+",
 *   which marks that the component continues in the next element. Elements
 *   are filled greedily, never split inside an escape or a UTF-8 sequence,
 *   and the "." rule above applies to each element.
 * Everything else, including backquotes, "$()", spaces and non-ASCII
 * letters, is kept as it is: names are never given to a shell.
 *
 * maildir_name_encode: *OUT is an owned NUL-terminated path (never empty,
 * never absolute, no "." or ".." element). TERN_E_USAGE when NAME is NULL or
 * longer than MAILDIR_NAME_MAX; TERN_E_NOMEM.
 *
 * maildir_name_decode: *OUT is the owned name (NUL-terminated, but it may
 * contain NUL bytes: *OUTLEN is authoritative; OUTLEN may be NULL).
 * TERN_E_PROTO with a sentence when PATH is not the encoding of any name;
 * TERN_E_USAGE when PATH is NULL; TERN_E_NOMEM.
 */
enum tern_status maildir_name_encode(const char *name, size_t len, char **out,
                                     struct tern_err *err);
enum tern_status maildir_name_decode(const char *path, size_t len, char **out, size_t *outlen,
                                     struct tern_err *err);

/* ---- Opening ---- */

struct maildir;

/* Create the maildir (and missing parent directories, mode 0700). */
#define MAILDIR_CREATE 0x1u

/* Files in tmp/ untouched for this long are removed on open (maildir(5)). */
#define MAILDIR_TMP_MAX_AGE (36 * 3600)

/*
 * Opens the maildir at directory DIR (for the outbox: $cache_dir/outbox).
 * With MAILDIR_CREATE, DIR and its cur/, new/ and tmp/ are created with mode
 * 0700 when missing, and the directories that received a new entry are
 * fsynced. Then files in tmp/ not modified or read for MAILDIR_TMP_MAX_AGE
 * seconds are removed (best effort; they are leftovers of crashed writers).
 * *OUT is owned (maildir_close). The maildir keeps open descriptors of its
 * directories, so renaming DIR later does not affect it.
 * Errors: TERN_E_NOTFOUND (no maildir there and no MAILDIR_CREATE),
 * TERN_E_IO (a path element or cur/new/tmp exists but is not a directory,
 * or a system call failed; the sentence names the path and the errno text),
 * TERN_E_USAGE (NULL argument), TERN_E_NOMEM.
 */
enum tern_status maildir_open(const char *dir, unsigned flags, struct maildir **out,
                              struct tern_err *err);

/*
 * Opens the folder NAME (LEN bytes, see maildir_name_encode) under ROOT
 * ($cache_dir/mail). ROOT itself may be a symbolic link; the directories
 * below it are opened one level at a time without following symbolic
 * links, so the folder is always inside ROOT. Errors as maildir_open.
 */
enum tern_status maildir_open_folder(const char *root, const char *name, size_t len, unsigned flags,
                                     struct maildir **out, struct tern_err *err);

/* Closes the directories and frees MD (NULL is fine). Batches with
 * messages in MD must have been freed first. */
void maildir_close(struct maildir *md);

/* The directory path given at open, for messages; borrowed from MD. */
const char *maildir_get_path(const struct maildir *md);

/*
 * Removes files in tmp/ whose access and modification times are both older
 * than MAX_AGE seconds. *REMOVED (may be NULL) receives the count. Files
 * that vanish meanwhile are skipped. TERN_E_IO when tmp/ cannot be read.
 */
enum tern_status maildir_clean_tmp(struct maildir *md, int64_t max_age, unsigned *removed,
                                   struct tern_err *err);

/*
 * Removes the files in tmp/ whose unique name says this process made them
 * (this pid and host name); an earlier process with the same pid counts as
 * this one. For cleanup after an error or before exit; a batch still open
 * on MD would lose its files, so call it only when none is.
 */
enum tern_status maildir_clean_own_tmp(struct maildir *md, unsigned *removed, struct tern_err *err);

/*
 * A new unique name per maildir(5): "SEC.M<usec>P<pid>Q<n>.HOST", with n
 * counting the names made by this process and "/", ":", "\" and bytes
 * outside printable ASCII of the host name written as "\ooo" (octal; "/"
 * is "\057", ":" is "\072"). Owned; NULL when out of memory.
 */
char *maildir_unique_name(void);

/* ---- Writing: batches ---- */

struct maildir_batch;

/* An empty batch. *OUT is owned (maildir_batch_free). */
enum tern_status maildir_batch_new(struct maildir_batch **out, struct tern_err *err);

/*
 * Starts a message in MD: creates its file in tmp/ (mode 0600) under a new
 * unique name. FLAGS NULL delivers it to new/; otherwise (even "") to cur/
 * with info ":2,FLAGS" (letters only, stored sorted, duplicates dropped).
 * *IDX receives the message's index in the batch (0, 1, ...). *FD (FD may
 * be NULL) receives the file's descriptor, borrowed: the caller may write
 * the message to it directly (a GMime stream, splice) but must not close
 * it; it is valid until maildir_batch_finish, _discard, _commit or _abort.
 * MD must stay open until the batch is freed. One batch may hold messages
 * of several maildirs; the commit syncs each file system once.
 * Errors: TERN_E_USAGE (bad FLAGS, NULL argument, batch committed or
 * failed; nothing changes), TERN_E_IO (the sentence names the file and the
 * errno text), TERN_E_NOMEM. After TERN_E_IO or TERN_E_NOMEM the batch has
 * failed: all its tmp files are removed and only maildir_batch_free is
 * left to do. The same holds for _write, _finish and _commit below.
 */
enum tern_status maildir_batch_add(struct maildir_batch *b, struct maildir *md, const char *flags,
                                   size_t *idx, int *fd, struct tern_err *err);

/*
 * Appends LEN bytes to message IDX (writing all of them, across short
 * writes and EINTR). The bytes go straight to the file: a message of any
 * size streams through in the caller's chunks.
 */
enum tern_status maildir_batch_write(struct maildir_batch *b, size_t idx, const void *p, size_t len,
                                     struct tern_err *err);

/*
 * Ends message IDX: takes its size and closes its descriptor (a batch of
 * thousands of messages holds no descriptors). Commit finishes messages
 * that are still open.
 */
enum tern_status maildir_batch_finish(struct maildir_batch *b, size_t idx, struct tern_err *err);

/*
 * Drops message IDX (its tmp file is removed; it will not be committed),
 * for a download that broke off in the middle. The rest of the batch stays.
 */
void maildir_batch_discard(struct maildir_batch *b, size_t idx);

/*
 * Makes every message of the batch durable and visible:
 *  1. finishes open messages;
 *  2. one syncfs(2) per file system (data and inodes of all tmp files);
 *  3. renames each file into new/ or cur/ (RENAME_NOREPLACE; where the file
 *     system lacks it, link + unlink as maildir(5) describes);
 *  4. fsyncs each new/ and cur/ that received a message, once.
 * After TERN_OK, maildir_batch_name/_file give the final names: only now may
 * the caller record the messages as stored, and only after recording may
 * anything be deleted on a server.
 * Every failure (ENOSPC, EFBIG, EIO on write, sync, rename, directory
 * fsync) returns TERN_E_IO with a sentence naming the file (or directory)
 * and the errno text, and removes every file of this batch (still in tmp/,
 * or already renamed by this commit, since nothing records them); messages
 * of earlier batches are untouched. An empty batch commits trivially.
 * Errors: TERN_E_IO, TERN_E_USAGE (already committed or failed).
 */
enum tern_status maildir_batch_commit(struct maildir_batch *b, struct tern_err *err);

/* Removes the batch's tmp files; the batch is failed afterwards. */
void maildir_batch_abort(struct maildir_batch *b);

/* Frees B (NULL is fine); an uncommitted batch is aborted first. */
void maildir_batch_free(struct maildir_batch *b);

/*
 * The messages added so far (discarded ones included), and the bytes of
 * those not discarded: their size once finished, before that what went
 * through maildir_batch_write. A caller commits when either grows large.
 */
size_t maildir_batch_count(const struct maildir_batch *b);
uint64_t maildir_batch_bytes(const struct maildir_batch *b);

/*
 * The unique name of message IDX (known from maildir_batch_add on, so a
 * caller may log an intent before the commit); NULL for a discarded or
 * unknown index. Borrowed from B until maildir_batch_free or
 * maildir_batch_take_name.
 */
const char *maildir_batch_name(const struct maildir_batch *b, size_t idx);

/* The unique name of message IDX of a committed batch as an owned string
 * (NULL when the batch is not committed, or IDX is discarded, unknown or
 * taken already); maildir_batch_name gives NULL afterwards. */
char *maildir_batch_take_name(struct maildir_batch *b, size_t idx);

/* The file of message IDX relative to its maildir: "new/NAME" or
 * "cur/NAME:2,FLAGS". Borrowed from B; NULL when discarded. */
const char *maildir_batch_file(const struct maildir_batch *b, size_t idx);

/* The size in bytes of a finished message IDX (0 before finish). */
uint64_t maildir_batch_size(const struct maildir_batch *b, size_t idx);

/* ---- Reading ---- */

struct maildir_entry {
    const char *name;  /* the unique name, without the info */
    const char *file;  /* the file name in new/ or cur/, with the info */
    const char *flags; /* the letters after ":2,", "" when none */
    bool is_new;       /* in new/ (not yet seen by any client) */
    uint64_t size;     /* from stat */
    int64_t mtime;     /* seconds since the epoch */
};

/*
 * Called once per message; the entry is borrowed for the call. A status
 * other than TERN_OK stops the scan, which returns it.
 */
typedef enum tern_status (*maildir_scan_fn)(const struct maildir_entry *e, void *aux);

/*
 * Calls FN for every message in new/ and then cur/: regular files whose
 * names do not begin with ".". tmp/ is never read (nothing there is a
 * message). A file renamed by another client during the scan is reported
 * at most once in each directory; new/ goes first so that a message moving
 * from new/ to cur/ meanwhile is still seen. TERN_E_IO when a directory
 * cannot be read.
 */
enum tern_status maildir_scan(struct maildir *md, maildir_scan_fn fn, void *aux,
                              struct tern_err *err);

/*
 * The functions below take a message's NAME: its unique name, optionally
 * followed by the info last seen (":2,FS"), which makes finding it in cur/
 * one lookup; when the file was renamed since (another client changed its
 * flags), cur/ is searched. NAME must not contain "/" or begin with ".".
 * They return TERN_E_NOTFOUND (with a sentence) when there is no such
 * message and TERN_E_USAGE for a malformed NAME.
 */

/*
 * Finds message NAME. *FILE (may be NULL) receives its current file
 * relative to MD, owned: "new/NAME" or "cur/NAME:2,FLAGS".
 */
enum tern_status maildir_msg_find(struct maildir *md, const char *name, char **file,
                                  struct tern_err *err);

/* Opens message NAME read-only; *FD is the caller's to close. */
enum tern_status maildir_msg_open(struct maildir *md, const char *name, int *fd,
                                  struct tern_err *err);

/*
 * Gives message NAME exactly the flags FLAGS (letters; sorted, duplicates
 * dropped), moving it from new/ to cur/ when it is in new/. Nothing changes
 * when the file already has them. The rename is atomic, so the message
 * exists under its old or its new name after a crash; the directory is not
 * fsynced (see maildir_sync_dirs).
 */
enum tern_status maildir_msg_set_flags(struct maildir *md, const char *name, const char *flags,
                                       struct tern_err *err);

/* Deletes message NAME (unlink; the directory is not fsynced). */
enum tern_status maildir_msg_delete(struct maildir *md, const char *name, struct tern_err *err);

/* fsyncs new/ and cur/, making earlier flag changes and deletions durable. */
enum tern_status maildir_sync_dirs(struct maildir *md, struct tern_err *err);

/* ---- Test hook ---- */

/*
 * The points of maildir_batch_commit where a hook runs. Tests stop the
 * process there (_exit) to check crash safety, or inject a failure.
 */
enum maildir_step {
    MAILDIR_STEP_SYNC,    /* all tmp files written and closed; before the sync */
    MAILDIR_STEP_RENAME,  /* synced; before renaming message I */
    MAILDIR_STEP_DIRSYNC, /* all renamed; before the directory fsyncs */
    MAILDIR_STEP_DONE,    /* directories fsynced; before returning */
};

/*
 * The hook returns 0, or an errno value that the step then fails with (the
 * sync, the rename of message I, or the directory fsync; ignored at DONE).
 */
typedef int (*maildir_hook_fn)(enum maildir_step step, size_t i, void *aux);

/* Installs FN (NULL removes it). Process-wide; for tests only. */
void maildir_set_commit_hook(maildir_hook_fn fn, void *aux);

#endif
