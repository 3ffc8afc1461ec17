/*
 * commands.h - the handlers of the command table (private to src/cmd).
 *
 * Layer: src/cmd. Each handler gets the session, the split words (word 0
 * is the command name) and the raw line, and emits its result objects.
 */
#ifndef TERN_COMMANDS_H
#define TERN_COMMANDS_H

#include "tern.h"

#include "cmd/cmd.h"

typedef enum tern_status (*cmd_fn)(struct tern_session *s, const struct cmd_words *w,
                                   const char *line);

enum tern_status cmd_folders(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_list(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_search(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_show(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_save(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_flag(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_copy(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_move(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_delete(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_expunge(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_mkdir(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_rmdir(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_subscribe(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_unsubscribe(struct tern_session *s, const struct cmd_words *w,
                                 const char *line);
enum tern_status cmd_send(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_compose(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_outbox(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_flush(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_pop(struct tern_session *s, const struct cmd_words *w, const char *line);
enum tern_status cmd_rename(struct tern_session *s, const struct cmd_words *w, const char *line);

#endif
