/*
 * cmd.h - the one command language shared by the TUI's ':' prompt and the
 * headless front end (DESIGN.md "Commands").
 *
 * Layer: src/cmd. A command line is split into words: blanks separate
 * them, "double quotes" group (with \" and \\ inside), and every word keeps
 * its byte span in the line so that a command can take the rest of the line
 * verbatim (the QUERY of list and search).
 */
#ifndef TERN_CMD_H
#define TERN_CMD_H

#include <stddef.h>

#include "tern.h"

struct tern_session;

struct cmd_word {
    char *text;   /* unquoted, owned */
    size_t start; /* span in the line, quotes included */
    size_t end;
};

struct cmd_words {
    struct cmd_word *v;
    size_t n;
};

/* Splits LINE. TERN_E_USAGE for an unterminated quote (sentence in *ERRMSG,
 * owned) or a control character. */
enum tern_status cmd_split(const char *line, struct cmd_words *out, char **errmsg);
void cmd_words_free(struct cmd_words *w);

/* Runs one command line on S (see tern_session_run). */
enum tern_status cmd_run(struct tern_session *s, const char *line);

#endif
