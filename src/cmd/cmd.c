/*
 * cmd.c - splitting command lines and dispatching them (see cmd.h).
 *
 * Layer: src/cmd. The command table is the single list of what tern can
 * do; the TUI binds keys to these same words.
 */
#include "cmd/cmd.h"

#include <stdlib.h>
#include <string.h>

#include "tbuf.h"

#include "cmd/commands.h"
#include "session.h"

void
cmd_words_free(struct cmd_words *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i].text);
    free(w->v);
    w->v = NULL;
    w->n = 0;
}

static char *
errf(const char *what, size_t pos)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    tbuf_addf(&b, "%s at offset %zu of the command", what, pos);
    return tbuf_take(&b);
}

enum tern_status
cmd_split(const char *line, struct cmd_words *out, char **errmsg)
{
    out->v = NULL;
    out->n = 0;
    *errmsg = NULL;
    size_t cap = 0;
    size_t i = 0, len = strlen(line);
    for (;;) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i >= len)
            return TERN_OK;
        struct tbuf w;
        tbuf_init(&w, 0);
        size_t start = i;
        bool quoted = false;
        while (i < len && (quoted || (line[i] != ' ' && line[i] != '\t'))) {
            unsigned char c = (unsigned char)line[i];
            if (c < 0x20 || c == 0x7f) {
                tbuf_free(&w);
                cmd_words_free(out);
                *errmsg = errf("control character", i);
                return TERN_E_USAGE;
            }
            if (c == '"') {
                quoted = !quoted;
                i++;
                continue;
            }
            if (quoted && c == '\\' && i + 1 < len && (line[i + 1] == '"' || line[i + 1] == '\\'))
                i++;
            if (tbuf_addc(&w, line[i])) {
                tbuf_free(&w);
                cmd_words_free(out);
                return TERN_E_NOMEM;
            }
            i++;
        }
        if (quoted) {
            tbuf_free(&w);
            cmd_words_free(out);
            *errmsg = errf("unterminated quote", start);
            return TERN_E_USAGE;
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 8;
            struct cmd_word *v = realloc(out->v, cap * sizeof(*v));
            if (!v) {
                tbuf_free(&w);
                cmd_words_free(out);
                return TERN_E_NOMEM;
            }
            out->v = v;
        }
        out->v[out->n].text = tbuf_take(&w);
        out->v[out->n].start = start;
        out->v[out->n].end = i;
        out->n++;
    }
}

struct cmd_def {
    const char *name;
    size_t min_args, max_args; /* words after the name; SIZE_MAX: any */
    cmd_fn fn;
    const char *usage;
};

static const struct cmd_def commands[] = {
    {"folders", 0, 0, cmd_folders, "folders"},
    {"list", 1, SIZE_MAX, cmd_list, "list FOLDER [QUERY] [--limit N]"},
    {"show", 2, 2, cmd_show, "show FOLDER UID"},
    {"save", 4, 4, cmd_save, "save FOLDER UID PART FILE"},
    {"flag", 3, SIZE_MAX, cmd_flag, "flag FOLDER UIDS +FLAG|-FLAG..."},
    {"copy", 3, 3, cmd_copy, "copy FOLDER UIDS DEST"},
    {"move", 3, 3, cmd_move, "move FOLDER UIDS DEST"},
    {"delete", 2, 2, cmd_delete, "delete FOLDER UIDS"},
    {"expunge", 1, 1, cmd_expunge, "expunge FOLDER"},
    {"mkdir", 1, 1, cmd_mkdir, "mkdir NAME"},
    {"rmdir", 1, 1, cmd_rmdir, "rmdir NAME"},
    {"subscribe", 1, 1, cmd_subscribe, "subscribe NAME"},
    {"unsubscribe", 1, 1, cmd_unsubscribe, "unsubscribe NAME"},
    {"rename", 2, 2, cmd_rename, "rename OLD NEW"},
    {"search", 1, SIZE_MAX, cmd_search, "search FOLDER QUERY | search --local QUERY"},
    {"pop", 0, 1, cmd_pop, "pop [--keep]"},
    {"send", 1, 1, cmd_send, "send FILE"},
    {"compose", 2, SIZE_MAX, cmd_compose,
     "compose --to ADDR [--cc ADDR] [--bcc ADDR] --subject S [--attach FILE]... --body-file F"},
    {"outbox", 0, 0, cmd_outbox, "outbox"},
    {"flush", 0, 1, cmd_flush, "flush [--now]"},
};

/* Commands of DESIGN.md that later parts of tern provide. */
static const char *const later[] = {"sync", "offline"};

enum tern_status
cmd_run(struct tern_session *s, const char *line)
{
    struct cmd_words w;
    char *errmsg = NULL;
    enum tern_status st = cmd_split(line, &w, &errmsg);
    if (st) {
        if (errmsg)
            sess_fail(s, st, "%s", errmsg);
        free(errmsg);
        return st;
    }
    if (w.n == 0) {
        cmd_words_free(&w);
        return sess_fail(s, TERN_E_USAGE, "empty command");
    }
    const char *name = w.v[0].text;
    st = TERN_E_USAGE;
    bool found = false;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct cmd_def *d = &commands[i];
        if (strcmp(d->name, name) != 0)
            continue;
        found = true;
        size_t nargs = w.n - 1;
        if (nargs < d->min_args || nargs > d->max_args)
            st = sess_fail(s, TERN_E_USAGE, "usage: %s", d->usage);
        else
            st = d->fn(s, &w, line);
        break;
    }
    for (size_t i = 0; !found && i < sizeof(later) / sizeof(later[0]); i++) {
        if (strcmp(later[i], name) == 0) {
            found = true;
            st = sess_fail(s, TERN_E_UNSUPPORTED, "'%s' is not available in this version of tern",
                           name);
        }
    }
    if (!found)
        st = sess_fail(s, TERN_E_USAGE, "unknown command '%s'", name);
    cmd_words_free(&w);
    return st;
}
