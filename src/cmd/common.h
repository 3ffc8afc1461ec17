/*
 * common.h - helpers shared by the command handlers (private to src/cmd).
 *
 * Layer: src/cmd.
 */
#ifndef TERN_CMD_COMMON_H
#define TERN_CMD_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap_parse.h"
#include "uidset.h"

#include "session.h"

/* The most UIDs one command resolves (a whole mailbox of 10 million). */
#define CMD_UIDS_MAX 10000000

/* UIDs collected from SEARCH or ESEARCH responses. */
struct uid_list {
    uint32_t *v;
    size_t n, cap;
    enum tern_status st;
};

void uid_list_free(struct uid_list *l);
/* Untagged handler that collects "* SEARCH n..." and "* ESEARCH ... ALL set". */
bool uid_list_on_search(void *aux, const struct imap_response *r);
void uid_list_sort(struct uid_list *l, int descending);
/* Whether UID is in L, which must be sorted ascending. */
bool uid_list_has(const struct uid_list *l, uint32_t uid);

/*
 * Parses the UIDS word of a command. TERN_E_USAGE with a sentence naming it
 * when it is not a set.
 */
enum tern_status cmd_parse_uids(struct tern_session *s, const char *word, struct uidset *out);

/*
 * Resolves SET against the selected folder with UID SEARCH UID (so ranges
 * and '*' become the UIDs that exist). None existing is TERN_E_NOTFOUND
 * naming FOLDER. The result is sorted ascending.
 */
enum tern_status cmd_resolve_uids(struct tern_session *s, const char *folder,
                                  const struct uidset *set, struct uid_list *out);

/*
 * Parses the UIDS word, selects FOLDER (for writing when WRITE) and
 * resolves the set there (cmd_resolve_uids): the start of every command
 * that works on messages.
 */
enum tern_status cmd_open_uids(struct tern_session *s, const char *folder, const char *word,
                               bool write, struct uid_list *out);

/* Runs NAME " <set of L>" SUFFIX, e.g. UID STORE ... +FLAGS.SILENT (\Deleted). */
enum tern_status cmd_run_on_uids(struct tern_session *s, const char *name, const struct uid_list *l,
                                 const char *suffix);

/* Appends a set of the UIDs in L (sorted or not) as raw text to A. */
enum tern_status cmd_args_uids(struct imap_args *a, const struct uid_list *l);

/* Emits {"uid":N} or {"uid":N,"folder":...}. */
enum tern_status cmd_emit_uid(struct tern_session *s, uint32_t uid);

/* Emits {"folder":NAME}. */
enum tern_status cmd_emit_folder(struct tern_session *s, const char *name);

#endif
