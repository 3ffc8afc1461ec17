/*
 * local.h - folders kept on this machine: the POP3 inbox now, the offline
 * mirror later. Each is a Maildir under $cache_dir/mail/ whose messages
 * get UIDs from the state (so commands name them like IMAP messages).
 *
 * Layer: src/.
 */
#ifndef TERN_LOCAL_H
#define TERN_LOCAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "session.h"

struct local_msg {
    uint32_t uid;
    char *name;  /* maildir unique name, owned */
    char *flags; /* info letters, owned */
    uint64_t size;
    int64_t mtime;
};

struct local_folder {
    struct state_db *db;
    struct maildir *md;
    struct local_msg *v; /* sorted by UID, ascending */
    size_t n;
};

/*
 * Whether FOLDER of the session's account lives on this machine: every
 * folder of an account without IMAP, and the POP3 folder (pop3_folder,
 * default "Inbox") of one with IMAP.
 */
bool local_is_local(const struct tern_session *s, const char *folder);

/*
 * Opens FOLDER and lists its messages. Messages without a UID yet (new
 * downloads, files other programs put there) get the next UIDs, in the
 * order of their names (which begin with the delivery time); UIDs of files
 * that are gone are forgotten. TERN_E_NOTFOUND when there is no such folder.
 */
enum tern_status local_open(struct tern_session *s, const char *folder, struct local_folder *out);
void local_close(struct local_folder *f);

/* The message with UID, or NULL. */
const struct local_msg *local_find(const struct local_folder *f, uint32_t uid);

#endif
