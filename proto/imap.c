/*
 * imap.c - the IMAP client engine (see imap.h for the phase graph).
 *
 * Layer: proto/. Includes libc and proto headers only.
 *
 * Commands are queued objects with a tag and a callback, as in isync's
 * drv_imap.c. They move from PENDING (not yet sent) to INFLIGHT (sent,
 * awaiting their tagged reply). Sending stops at a command that waits for
 * a continuation (synchronizing literal, AUTHENTICATE, IDLE), before an
 * exclusive command (STARTTLS, AUTHENTICATE, COMPRESS, IDLE, LOGOUT) while
 * anything is in flight, and at IMAP_PIPELINE_MAX commands in flight.
 */
#include "imap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "line.h"
#include "tbuf.h"

#define IMAP_PIPELINE_MAX 32
#define IMAP_LITERAL_MINUS_MAX 4096 /* RFC 7888 §4 */

enum imap_state {
    IMAP_ST_NEW,
    IMAP_ST_CONNECTING,
    IMAP_ST_TLS_HANDSHAKE, /* implicit TLS */
    IMAP_ST_GREETING,
    IMAP_ST_PRETLS, /* CAPABILITY/STARTTLS before the handshake */
    IMAP_ST_STARTTLS_HANDSHAKE,
    IMAP_ST_AUTH,     /* capabilities known, logging in */
    IMAP_ST_POSTAUTH, /* COMPRESS, ENABLE, ID, NAMESPACE */
    IMAP_ST_READY,
    IMAP_ST_LOGOUT,
    IMAP_ST_DEAD,
};

static const char *const imap_state_names[] = {
    "NEW",  "CONNECTING", "TLS_HANDSHAKE", "GREETING", "PRETLS", "STARTTLS_HANDSHAKE",
    "AUTH", "POSTAUTH",   "READY",         "LOGOUT",   "DEAD",
};

enum imap_cmd_kind {
    IMAP_CMD_NORMAL,
    IMAP_CMD_SETUP, /* part of the connection phases: sent before READY */
    IMAP_CMD_STARTTLS,
    IMAP_CMD_AUTH, /* AUTHENTICATE or LOGIN */
    IMAP_CMD_COMPRESS,
    IMAP_CMD_IDLE,
    IMAP_CMD_LOGOUT,
};

struct imap_cmd {
    struct imap_cmd *next;
    enum imap_cmd_kind kind;
    char tag[16];
    char *name;
    struct imap_args args;
    struct tbuf wire; /* the serialized command */
    size_t *syncs;    /* offsets in WIRE after which "+" must be awaited */
    size_t nsync, isync;
    size_t sent; /* bytes of WIRE handed to the line engine */
    bool awaiting_cont;
    bool secret;           /* carries credentials: never traced raw */
    struct tbuf auth_next; /* AUTHENTICATE without SASL-IR: base64 to send on "+" */
    bool auth_sent;
    imap_untagged_fn on_untagged;
    void *untagged_aux;
    imap_done_fn done;
    void *aux;
};

struct imap_conn {
    struct loop *loop;
    struct imap_opts opts;
    struct tern_err *err;
    struct line_conn *line;
    struct imap_parser *parser;
    enum imap_state state;
    unsigned tagno;

    struct imap_cmd *pending, **pending_tail;
    struct imap_cmd *inflight, **inflight_tail;
    size_t ninflight;

    char **caps;
    size_t ncaps;
    bool caps_known;

    char delimiter;
    struct imap_mailbox mbox;
    char *bye_text;
    bool idling;

    imap_done_fn open_done;
    void *open_aux;
    imap_untagged_fn default_fn;
    void *default_aux;
};

static void imap_pump(struct imap_conn *c);
static void imap_fail(struct imap_conn *c, enum tern_status st);
static void imap_step_auth(struct imap_conn *c);
static void imap_step_postauth(struct imap_conn *c);
static void imap_on_auth_caps(void *aux, enum tern_status st, const struct imap_response *r);

static void
imap_set_state(struct imap_conn *c, enum imap_state st)
{
    if (c->opts.trace && c->state != st) {
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "state %s -> %s", imap_state_names[c->state],
                         imap_state_names[st]);
        c->opts.trace(c->opts.trace_aux, false, msg, (size_t)n);
    }
    c->state = st;
}

/* ---- capabilities ---- */

static void
imap_caps_clear(struct imap_conn *c)
{
    for (size_t i = 0; i < c->ncaps; i++)
        free(c->caps[i]);
    free(c->caps);
    c->caps = NULL;
    c->ncaps = 0;
    c->caps_known = false;
}

static enum tern_status
imap_caps_set(struct imap_conn *c, const struct imap_item *it)
{
    imap_caps_clear(c);
    size_t n = 0;
    for (const struct imap_item *i = it; i; i = i->next)
        n++;
    c->caps = calloc(n ? n : 1, sizeof(char *));
    if (!c->caps)
        return TERN_E_NOMEM;
    for (; it; it = it->next) {
        const char *s = imap_item_str(it);
        if (!s)
            continue;
        if (!(c->caps[c->ncaps] = strdup(s)))
            return TERN_E_NOMEM;
        c->ncaps++;
    }
    c->caps_known = true;
    return TERN_OK;
}

bool
imap_has_cap(const struct imap_conn *c, const char *cap)
{
    for (size_t i = 0; i < c->ncaps; i++)
        if (strcasecmp(c->caps[i], cap) == 0)
            return true;
    return false;
}

/* ---- public accessors ---- */

bool
imap_is_ready(const struct imap_conn *c)
{
    return c->state == IMAP_ST_READY;
}

bool
imap_is_dead(const struct imap_conn *c)
{
    return c->state == IMAP_ST_DEAD;
}

char
imap_delimiter(const struct imap_conn *c)
{
    return c->delimiter;
}

const struct imap_mailbox *
imap_mailbox(const struct imap_conn *c)
{
    return &c->mbox;
}

void
imap_set_default_handler(struct imap_conn *c, imap_untagged_fn fn, void *aux)
{
    c->default_fn = fn;
    c->default_aux = aux;
}

void
imap_set_literal_sink(struct imap_conn *c, const struct imap_literal_sink *sink)
{
    imap_parser_set_sink(c->parser, sink);
}

/* ---- commands ---- */

static void
imap_cmd_free(struct imap_cmd *cmd)
{
    if (!cmd)
        return;
    free(cmd->name);
    imap_args_free(&cmd->args);
    tbuf_free(&cmd->wire);
    tbuf_free(&cmd->auth_next);
    free(cmd->syncs);
    free(cmd);
}

/* Commands of the connection phases, sent before READY. */
static bool
imap_kind_is_setup(enum imap_cmd_kind kind)
{
    return kind != IMAP_CMD_NORMAL && kind != IMAP_CMD_IDLE && kind != IMAP_CMD_LOGOUT;
}

static enum tern_status
imap_enqueue(struct imap_conn *c, enum imap_cmd_kind kind, const char *name,
             const struct imap_args *args, imap_untagged_fn on_untagged, imap_done_fn done,
             void *aux, struct imap_cmd **out)
{
    if (c->state == IMAP_ST_DEAD)
        return tern_err_set(c->err, TERN_E_IO, "the IMAP connection is closed%s%s",
                            c->bye_text ? ": " : "", c->bye_text ? c->bye_text : "");
    struct imap_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return TERN_E_NOMEM;
    cmd->kind = kind;
    imap_args_init(&cmd->args);
    tbuf_init(&cmd->wire, 0);
    tbuf_init(&cmd->auth_next, 0);
    cmd->name = strdup(name);
    if (!cmd->name || (args && imap_args_append(&cmd->args, args))) {
        imap_cmd_free(cmd);
        return TERN_E_NOMEM;
    }
    cmd->on_untagged = on_untagged;
    cmd->untagged_aux = aux;
    cmd->done = done;
    cmd->aux = aux;
    /*
     * A connection-phase command goes ahead of the commands the caller
     * queued before the connection was ready: those wait for it.
     */
    struct imap_cmd **at = c->pending_tail;
    if (imap_kind_is_setup(kind)) {
        at = &c->pending;
        while (*at && imap_kind_is_setup((*at)->kind))
            at = &(*at)->next;
    }
    cmd->next = *at;
    *at = cmd;
    if (!cmd->next)
        c->pending_tail = &cmd->next;
    if (out)
        *out = cmd;
    return TERN_OK;
}

enum tern_status
imap_submit(struct imap_conn *c, const char *name, const struct imap_args *args,
            imap_untagged_fn on_untagged, void *untagged_aux, imap_done_fn done, void *aux)
{
    struct imap_cmd *cmd = NULL;
    enum tern_status st =
        imap_enqueue(c, IMAP_CMD_NORMAL, name, args, on_untagged, done, aux, &cmd);
    if (!st) {
        cmd->untagged_aux = untagged_aux;
        imap_pump(c);
    }
    return st;
}

/* Serializes tag, name and arguments, choosing quoted strings or literals
 * (RFC 3501 §4.3, LITERAL+/LITERAL- RFC 7888). */
static enum tern_status
imap_serialize(struct imap_conn *c, struct imap_cmd *cmd)
{
    bool plus = imap_has_cap(c, "LITERAL+");
    bool minus = imap_has_cap(c, "LITERAL-");
    struct tbuf *w = &cmd->wire;
    enum tern_status st = tbuf_addf(w, "%s %s", cmd->tag, cmd->name);
    for (size_t i = 0; i < cmd->args.n && !st; i++) {
        const struct imap_arg *a = &cmd->args.v[i];
        if (a->type == IMAP_ARG_RAW) {
            st = tbuf_add(w, a->data, a->len);
            continue;
        }
        if (imap_string_quotable(a->data, a->len)) {
            st = tbuf_addc(w, '"');
            for (size_t j = 0; j < a->len && !st; j++) {
                if (a->data[j] == '"' || a->data[j] == '\\')
                    st = tbuf_addc(w, '\\');
                if (!st)
                    st = tbuf_addc(w, a->data[j]);
            }
            if (!st)
                st = tbuf_addc(w, '"');
            continue;
        }
        bool nonsync = plus || (minus && a->len <= IMAP_LITERAL_MINUS_MAX);
        st = tbuf_addf(w, "{%zu%s}\r\n", a->len, nonsync ? "+" : "");
        if (!st && !nonsync) {
            size_t *s = realloc(cmd->syncs, (cmd->nsync + 1) * sizeof(*s));
            if (!s)
                return TERN_E_NOMEM;
            cmd->syncs = s;
            cmd->syncs[cmd->nsync++] = tbuf_len(w);
        }
        if (!st)
            st = tbuf_add(w, a->data, a->len);
    }
    if (!st)
        st = tbuf_add(w, "\r\n", 2);
    return st;
}

static void
imap_trace_sent(struct imap_conn *c, struct imap_cmd *cmd, const char *p, size_t n)
{
    if (!c->opts.trace)
        return;
    if (cmd && cmd->secret) {
        char msg[128];
        int len = snprintf(msg, sizeof(msg), "%s %s <secret>", cmd->tag, cmd->name);
        c->opts.trace(c->opts.trace_aux, true, msg, (size_t)len);
        return;
    }
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    c->opts.trace(c->opts.trace_aux, true, p, n);
}

/* Sends WIRE up to the next sync point (or to its end). */
static enum tern_status
imap_send_segment(struct imap_conn *c, struct imap_cmd *cmd)
{
    size_t end = cmd->isync < cmd->nsync ? cmd->syncs[cmd->isync] : tbuf_len(&cmd->wire);
    const char *p = tbuf_ptr(&cmd->wire) + cmd->sent;
    size_t n = end - cmd->sent;
    imap_trace_sent(c, cmd, p, n);
    enum tern_status st = line_send(c->line, p, n);
    if (st)
        return st;
    cmd->sent = end;
    cmd->awaiting_cont = cmd->isync < cmd->nsync;
    if (cmd->awaiting_cont)
        cmd->isync++;
    return TERN_OK;
}

static bool
imap_cont_pending(const struct imap_conn *c)
{
    for (const struct imap_cmd *i = c->inflight; i; i = i->next)
        if (i->awaiting_cont || i->kind == IMAP_CMD_IDLE ||
            (i->kind == IMAP_CMD_AUTH && i->auth_next.len && !i->auth_sent))
            return true;
    return false;
}

static bool
imap_cmd_exclusive(const struct imap_cmd *cmd)
{
    return cmd->kind == IMAP_CMD_STARTTLS || cmd->kind == IMAP_CMD_AUTH ||
           cmd->kind == IMAP_CMD_COMPRESS || cmd->kind == IMAP_CMD_IDLE ||
           cmd->kind == IMAP_CMD_LOGOUT;
}

static void
imap_pump(struct imap_conn *c)
{
    while (c->pending && c->state != IMAP_ST_DEAD) {
        struct imap_cmd *cmd = c->pending;
        bool setup = imap_kind_is_setup(cmd->kind);
        if (c->state != IMAP_ST_READY && !setup &&
            !(cmd->kind == IMAP_CMD_LOGOUT && c->state >= IMAP_ST_GREETING))
            break;
        if (imap_cont_pending(c))
            break;
        if (c->inflight && (imap_cmd_exclusive(cmd) || c->ninflight >= IMAP_PIPELINE_MAX))
            break;
        bool tail_exclusive = false;
        for (struct imap_cmd *i = c->inflight; i; i = i->next)
            tail_exclusive = imap_cmd_exclusive(i);
        if (tail_exclusive)
            break;

        c->pending = cmd->next;
        if (!c->pending)
            c->pending_tail = &c->pending;
        cmd->next = NULL;
        *c->inflight_tail = cmd;
        c->inflight_tail = &cmd->next;
        c->ninflight++;

        snprintf(cmd->tag, sizeof(cmd->tag), "T%u", ++c->tagno);
        /* RFC 3501 §6.3.1: SELECT/EXAMINE leaves the old mailbox behind. */
        if (strcmp(cmd->name, "SELECT") == 0 || strcmp(cmd->name, "EXAMINE") == 0)
            memset(&c->mbox, 0, sizeof(c->mbox));
        if (cmd->kind == IMAP_CMD_LOGOUT)
            imap_set_state(c, IMAP_ST_LOGOUT);
        enum tern_status st = imap_serialize(c, cmd);
        if (!st)
            st = imap_send_segment(c, cmd);
        if (st) {
            imap_fail(c, st);
            return;
        }
    }
    if (c->state != IMAP_ST_DEAD)
        line_set_waiting(c->line, c->ninflight > 0 && !c->idling);
}

/* Removes CMD from the in-flight list. */
static void
imap_unlink_inflight(struct imap_conn *c, struct imap_cmd *cmd)
{
    struct imap_cmd **pp = &c->inflight;
    while (*pp && *pp != cmd)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = cmd->next;
    if (c->inflight_tail == &cmd->next)
        c->inflight_tail = pp;
    c->ninflight--;
    cmd->next = NULL;
}

static void
imap_fail(struct imap_conn *c, enum tern_status st)
{
    if (c->state == IMAP_ST_DEAD)
        return;
    bool logging_out = c->state == IMAP_ST_LOGOUT;
    imap_set_state(c, IMAP_ST_DEAD);
    c->idling = false;
    /* Drop the socket now: the server sees the close, and a dead socket
     * cannot keep the loop busy (TESTMATRIX F3). */
    line_close(c->line);
    /* Detach both lists first: callbacks may try to submit more. */
    struct imap_cmd *lists[2] = {c->inflight, c->pending};
    c->inflight = c->pending = NULL;
    c->inflight_tail = &c->inflight;
    c->pending_tail = &c->pending;
    c->ninflight = 0;
    for (int k = 0; k < 2; k++) {
        for (struct imap_cmd *cmd = lists[k], *next; cmd; cmd = next) {
            next = cmd->next;
            if (cmd->done)
                cmd->done(cmd->aux, logging_out && cmd->kind == IMAP_CMD_LOGOUT ? TERN_OK : st,
                          NULL);
            imap_cmd_free(cmd);
        }
    }
    if (c->open_done) {
        imap_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, st, NULL);
    }
}

/* ---- responses ---- */

static void
imap_note_code(struct imap_conn *c, const struct imap_response *r)
{
    if (!r->code)
        return;
    const struct imap_item *a = r->code_args;
    if (strcmp(r->code, "CAPABILITY") == 0) {
        imap_caps_set(c, a);
    } else if (strcmp(r->code, "UIDVALIDITY") == 0 && a && a->is_number) {
        c->mbox.uidvalidity = (uint32_t)a->num;
    } else if (strcmp(r->code, "UIDNEXT") == 0 && a && a->is_number) {
        c->mbox.uidnext = (uint32_t)a->num;
    } else if (strcmp(r->code, "HIGHESTMODSEQ") == 0 && a && a->is_number) {
        c->mbox.highestmodseq = a->num;
    } else if (strcmp(r->code, "READ-ONLY") == 0) {
        c->mbox.read_only = true;
    } else if (strcmp(r->code, "READ-WRITE") == 0) {
        c->mbox.read_only = false;
    }
}

static struct imap_cmd *
imap_find_tag(struct imap_conn *c, const char *tag)
{
    for (struct imap_cmd *i = c->inflight; i; i = i->next)
        if (strcmp(i->tag, tag) == 0)
            return i;
    return NULL;
}

static void
imap_on_tagged(struct imap_conn *c, const struct imap_response *r)
{
    struct imap_cmd *cmd = imap_find_tag(c, r->tag);
    /*
     * Instead of a continuation the server may reject the command with a
     * tagged NO or BAD (RFC 3501 §2.2.1); the rest is never sent.
     */
    if (!cmd || (cmd->awaiting_cont && r->cond == IMAP_COND_OK)) {
        tern_err_set(c->err, TERN_E_PROTO, "IMAP server %s answered tag '%s' that %s", c->opts.host,
                     r->tag, cmd ? "still awaits a continuation" : "is not in flight");
        imap_fail(c, TERN_E_PROTO);
        return;
    }
    if (r->cond != IMAP_COND_OK && r->cond != IMAP_COND_NO && r->cond != IMAP_COND_BAD) {
        tern_err_set(c->err, TERN_E_PROTO, "IMAP server %s sent a malformed tagged reply",
                     c->opts.host);
        imap_fail(c, TERN_E_PROTO);
        return;
    }
    imap_note_code(c, r);
    imap_unlink_inflight(c, cmd);
    if (cmd->kind == IMAP_CMD_IDLE)
        c->idling = false;
    if (strcmp(cmd->name, "SELECT") == 0 || strcmp(cmd->name, "EXAMINE") == 0)
        c->mbox.selected = r->cond == IMAP_COND_OK;
    enum tern_status st = TERN_OK;
    if (r->cond != IMAP_COND_OK) {
        st = TERN_E_REFUSED;
        tern_err_set(c->err, st, "IMAP server said %s to %s: %s%s%s%s",
                     r->cond == IMAP_COND_NO ? "NO" : "BAD", cmd->name, r->code ? "[" : "",
                     r->code ? r->code : "", r->code ? "] " : "", r->text);
    }
    if (cmd->done)
        cmd->done(cmd->aux, st, r);
    imap_cmd_free(cmd);
}

static void
imap_on_continuation(struct imap_conn *c, const struct imap_response *r)
{
    struct imap_cmd *cmd = NULL;
    for (struct imap_cmd *i = c->inflight; i && !cmd; i = i->next)
        if (i->awaiting_cont || i->kind == IMAP_CMD_AUTH ||
            (i->kind == IMAP_CMD_IDLE && !c->idling))
            cmd = i;
    if (!cmd) {
        tern_err_set(c->err, TERN_E_PROTO,
                     "IMAP server %s sent a continuation no command asked for", c->opts.host);
        imap_fail(c, TERN_E_PROTO);
        return;
    }
    enum tern_status st = TERN_OK;
    if (cmd->awaiting_cont) {
        st = imap_send_segment(c, cmd);
    } else if (cmd->kind == IMAP_CMD_IDLE) {
        c->idling = true;
        line_set_waiting(c->line, false);
        return;
    } else if (tbuf_len(&cmd->auth_next) && !cmd->auth_sent) {
        cmd->auth_sent = true;
        imap_trace_sent(c, cmd, "", 0);
        st = line_send(c->line, tbuf_ptr(&cmd->auth_next), tbuf_len(&cmd->auth_next));
    } else {
        /* A SASL challenge after our response, e.g. XOAUTH2's JSON error:
         * answer with an empty response so that the server sends its NO
         * (RFC 7628 §3.2.3). */
        st = line_send(c->line, "\r\n", 2);
    }
    if (st)
        imap_fail(c, st);
    else
        imap_pump(c);
}

static void
imap_dispatch_untagged(struct imap_conn *c, const struct imap_response *r)
{
    for (struct imap_cmd *i = c->inflight; i; i = i->next)
        if (i->on_untagged && i->on_untagged(i->untagged_aux, r))
            return;
    if (c->default_fn)
        c->default_fn(c->default_aux, r);
}

static void imap_on_greeting(struct imap_conn *c, const struct imap_response *r);

static void
imap_on_response(struct imap_conn *c, const struct imap_response *r)
{
    if (c->state == IMAP_ST_GREETING) {
        imap_on_greeting(c, r);
        return;
    }
    if (r->kind == IMAP_RESP_TAGGED) {
        imap_on_tagged(c, r);
        return;
    }
    if (r->kind == IMAP_RESP_CONTINUATION) {
        imap_on_continuation(c, r);
        return;
    }
    bool pretls = c->state == IMAP_ST_PRETLS;
    if (r->cond != IMAP_COND_NONE) {
        if (r->cond == IMAP_COND_BYE) {
            free(c->bye_text);
            c->bye_text = strdup(r->text);
            return; /* the close follows */
        }
        if (pretls) {
            /* Before TLS only a capability list is of use (RFC 3501 §6.2.1). */
            if (r->code && strcmp(r->code, "CAPABILITY") == 0)
                imap_caps_set(c, r->code_args);
            return;
        }
        imap_note_code(c, r);
    } else if (r->name && strcmp(r->name, "CAPABILITY") == 0) {
        imap_caps_set(c, r->items);
        return;
    } else if (pretls) {
        return; /* never used, never persisted (TESTMATRIX T4) */
    } else if (r->name && r->has_number && strcmp(r->name, "EXISTS") == 0) {
        c->mbox.exists = r->number;
    } else if (r->name && r->has_number && strcmp(r->name, "EXPUNGE") == 0) {
        if (c->mbox.exists)
            c->mbox.exists--;
    }
    if (c->state == IMAP_ST_READY || c->state == IMAP_ST_POSTAUTH || c->state == IMAP_ST_LOGOUT)
        imap_dispatch_untagged(c, r);
}

/* ---- line engine glue ---- */

static enum tern_status
imap_on_line(void *aux, const char *line, size_t len)
{
    struct imap_conn *c = aux;
    struct imap_response *r = NULL;
    uint64_t literal = 0;
    if (c->opts.trace)
        c->opts.trace(c->opts.trace_aux, false, line, len);
    enum tern_status st = imap_parser_line(c->parser, line, len, &r, &literal, c->err);
    if (st) {
        tern_err_prefix(c->err, "IMAP server %s sent a malformed response", c->opts.host);
        return st;
    }
    if (literal) {
        line_expect_bytes(c->line, literal);
        return TERN_OK;
    }
    if (r) {
        imap_on_response(c, r);
        imap_response_free(r);
        imap_pump(c);
    }
    return c->state == IMAP_ST_DEAD ? TERN_E_IO : TERN_OK;
}

static enum tern_status
imap_on_bytes(void *aux, const char *p, size_t n)
{
    struct imap_conn *c = aux;
    uint64_t left = 0;
    enum tern_status st = imap_parser_literal(c->parser, p, n, &left, c->err);
    if (st)
        tern_err_prefix(c->err, "IMAP server %s sent a bad literal", c->opts.host);
    return st;
}

static void
imap_on_line_event(void *aux, enum line_event ev, enum tern_status st)
{
    struct imap_conn *c = aux;
    switch (ev) {
    case LINE_EV_CONNECTED:
        if (c->opts.security == IMAP_SEC_IMPLICIT_TLS) {
            imap_set_state(c, IMAP_ST_TLS_HANDSHAKE);
            st = line_start_tls(c->line);
            if (st)
                imap_fail(c, st);
        } else {
            imap_set_state(c, IMAP_ST_GREETING);
            line_set_waiting(c->line, true);
        }
        break;
    case LINE_EV_DRAINED: break; /* nothing waits for the send queue here */
    case LINE_EV_TLS_DONE:
        if (c->state == IMAP_ST_TLS_HANDSHAKE) {
            imap_set_state(c, IMAP_ST_GREETING);
            line_set_waiting(c->line, true);
        } else if (c->state == IMAP_ST_STARTTLS_HANDSHAKE) {
            /* RFC 3501 §6.2.1: forget everything learnt before TLS. */
            imap_caps_clear(c);
            imap_set_state(c, IMAP_ST_AUTH);
            imap_step_auth(c);
        }
        break;
    case LINE_EV_ERROR:
        if (c->state == IMAP_ST_DEAD)
            break; /* already failed: keep the sentence that says why */
        if (c->state == IMAP_ST_LOGOUT) {
            /* The LOGOUT itself succeeds; what was queued behind it did not run. */
            imap_fail(c, st);
            break;
        }
        if (c->bye_text && st == TERN_E_IO)
            tern_err_set(c->err, TERN_E_IO, "IMAP server %s closed the connection: %s",
                         c->opts.host, c->bye_text);
        imap_fail(c, st);
        break;
    }
}

/* ---- connection phases ---- */

static void
imap_ready(struct imap_conn *c)
{
    imap_set_state(c, IMAP_ST_READY);
    if (c->open_done) {
        imap_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, TERN_OK, NULL);
    }
    imap_pump(c);
}

static void
imap_setup_submit(struct imap_conn *c, enum imap_cmd_kind kind, const char *name,
                  const struct imap_args *args, imap_untagged_fn on_untagged, imap_done_fn done)
{
    enum tern_status st = imap_enqueue(c, kind, name, args, on_untagged, done, c, NULL);
    if (st)
        imap_fail(c, st);
    else
        imap_pump(c);
}

static bool
imap_on_namespace(void *aux, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    bool mine = r->name && (strcmp(r->name, "NAMESPACE") == 0 || strcmp(r->name, "LIST") == 0);
    /* * NAMESPACE (("" "/")) NIL NIL  (RFC 2342 §5) */
    if (r->name && strcmp(r->name, "NAMESPACE") == 0 && r->items &&
        r->items->type == IMAP_ITEM_LIST && r->items->child &&
        r->items->child->type == IMAP_ITEM_LIST) {
        const struct imap_item *d = imap_item_nth(r->items->child->child, 1);
        const char *s = imap_item_str(d);
        if (s && s[0])
            c->delimiter = s[0];
    } else if (r->name && strcmp(r->name, "LIST") == 0) {
        const char *s = imap_item_str(imap_item_nth(r->items, 1));
        if (s && s[0])
            c->delimiter = s[0];
    }
    return mine;
}

static void
imap_on_setup_last_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (c->state == IMAP_ST_DEAD)
        return;
    /* ENABLE, ID and NAMESPACE are courtesies: a NO does not stop us. */
    imap_ready(c);
}

static void
imap_on_setup_step_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    (void)aux;
    (void)st;
    (void)r;
}

static void
imap_step_extras(struct imap_conn *c)
{
    struct imap_args a;
    imap_args_init(&a);
    if (imap_has_cap(c, "CONDSTORE")) {
        imap_args_raw(&a, " CONDSTORE");
        imap_setup_submit(c, IMAP_CMD_SETUP, "ENABLE", &a, NULL, imap_on_setup_step_done);
        imap_args_free(&a);
    }
    if (imap_has_cap(c, "ID")) {
        imap_args_raw(&a, " (\"name\" \"tern\" \"version\" \"%s\")", "0.1");
        imap_setup_submit(c, IMAP_CMD_SETUP, "ID", &a, NULL, imap_on_setup_step_done);
        imap_args_free(&a);
    }
    if (imap_has_cap(c, "NAMESPACE")) {
        imap_setup_submit(c, IMAP_CMD_SETUP, "NAMESPACE", NULL, imap_on_namespace,
                          imap_on_setup_last_done);
    } else {
        imap_args_raw(&a, " \"\" \"\"");
        imap_setup_submit(c, IMAP_CMD_SETUP, "LIST", &a, imap_on_namespace,
                          imap_on_setup_last_done);
        imap_args_free(&a);
    }
}

/*
 * The common head of a connection phase's completion: false (stop) when
 * the connection is already dead or the step failed, which fails it.
 */
static bool
imap_setup_ok(struct imap_conn *c, enum tern_status st)
{
    if (c->state == IMAP_ST_DEAD)
        return false;
    if (st) {
        imap_fail(c, st);
        return false;
    }
    return true;
}

static void
imap_on_compress_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (c->state == IMAP_ST_DEAD)
        return;
    if (!st) {
        st = line_start_deflate(c->line);
        if (st) {
            imap_fail(c, st);
            return;
        }
    }
    imap_step_extras(c);
}

static void
imap_on_postauth_caps(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (imap_setup_ok(c, st))
        imap_step_postauth(c);
}

static void
imap_step_postauth(struct imap_conn *c)
{
    imap_set_state(c, IMAP_ST_POSTAUTH);
    if (!c->caps_known) {
        imap_setup_submit(c, IMAP_CMD_SETUP, "CAPABILITY", NULL, NULL, imap_on_postauth_caps);
        return;
    }
    if (c->opts.compress && imap_has_cap(c, "COMPRESS=DEFLATE")) {
        struct imap_args a;
        imap_args_init(&a);
        imap_args_raw(&a, " DEFLATE");
        imap_setup_submit(c, IMAP_CMD_COMPRESS, "COMPRESS", &a, NULL, imap_on_compress_done);
        imap_args_free(&a);
        return;
    }
    imap_step_extras(c);
}

static void
imap_on_auth_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (c->state == IMAP_ST_DEAD)
        return;
    if (st) {
        tern_err_set(c->err, TERN_E_AUTH, "IMAP server %s rejected the login of %s: %s%s%s%s",
                     c->opts.host, c->opts.user, r && r->code ? "[" : "",
                     r && r->code ? r->code : "", r && r->code ? "] " : "",
                     r ? r->text : "no reply");
        imap_fail(c, TERN_E_AUTH);
        return;
    }
    /* A CAPABILITY code in the tagged OK replaced the list; otherwise ask. */
    if (!(r && r->code && strcmp(r->code, "CAPABILITY") == 0))
        imap_caps_clear(c);
    imap_step_postauth(c);
}

static void
imap_step_auth(struct imap_conn *c)
{
    if (!c->caps_known) {
        imap_setup_submit(c, IMAP_CMD_SETUP, "CAPABILITY", NULL, NULL, imap_on_auth_caps);
        return;
    }
    enum sasl_mech mech = c->opts.mech;
    if (mech == SASL_AUTO)
        mech = imap_has_cap(c, "AUTH=PLAIN") ? SASL_PLAIN : SASL_LOGIN;
    struct imap_args a;
    imap_args_init(&a);
    struct imap_cmd *cmd = NULL;
    enum tern_status st;
    if (mech == SASL_LOGIN) {
        /* The LOGIN command (RFC 3501 §6.2.3). */
        if (imap_has_cap(c, "LOGINDISABLED")) {
            tern_err_set(c->err, TERN_E_UNSUPPORTED,
                         "IMAP server %s does not allow LOGIN on this connection "
                         "(LOGINDISABLED) and offers no usable AUTH mechanism",
                         c->opts.host);
            imap_fail(c, TERN_E_UNSUPPORTED);
            return;
        }
        imap_args_raw(&a, " ");
        imap_args_string(&a, c->opts.user, strlen(c->opts.user));
        imap_args_raw(&a, " ");
        imap_args_string(&a, c->opts.secret, strlen(c->opts.secret));
        st = imap_enqueue(c, IMAP_CMD_AUTH, "LOGIN", &a, NULL, imap_on_auth_done, c, &cmd);
    } else {
        char capname[32];
        snprintf(capname, sizeof(capname), "AUTH=%s", sasl_mech_name(mech));
        if (!imap_has_cap(c, capname)) {
            tern_err_set(c->err, TERN_E_UNSUPPORTED, "IMAP server %s does not offer AUTH=%s",
                         c->opts.host, sasl_mech_name(mech));
            imap_fail(c, TERN_E_UNSUPPORTED);
            return;
        }
        struct tbuf raw, b64;
        tbuf_init(&raw, 0);
        tbuf_init(&b64, 0);
        st = sasl_initial_response(mech, c->opts.user, c->opts.secret, c->opts.host, c->opts.port,
                                   &raw);
        if (!st)
            st = sasl_b64_encode(tbuf_ptr(&raw), tbuf_len(&raw), &b64);
        bool ir = imap_has_cap(c, "SASL-IR");
        if (!st)
            st = imap_args_raw(&a, " %s%s%s", sasl_mech_name(mech), ir ? " " : "",
                               ir ? tbuf_ptr(&b64) : "");
        if (!st)
            st = imap_enqueue(c, IMAP_CMD_AUTH, "AUTHENTICATE", &a, NULL, imap_on_auth_done, c,
                              &cmd);
        if (!st && !ir) {
            st = tbuf_add(&cmd->auth_next, tbuf_ptr(&b64), tbuf_len(&b64));
            if (!st)
                st = tbuf_add(&cmd->auth_next, "\r\n", 2);
        }
        tbuf_free(&raw);
        tbuf_free(&b64);
    }
    imap_args_free(&a);
    if (cmd)
        cmd->secret = true;
    if (st) {
        imap_fail(c, st);
        return;
    }
    imap_pump(c);
}

static void
imap_on_starttls_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (c->state == IMAP_ST_DEAD)
        return;
    if (st) {
        tern_err_set(c->err, TERN_E_TLS,
                     "IMAP server %s refused STARTTLS (%s); not continuing without TLS",
                     c->opts.host, r ? r->text : "no reply");
        imap_fail(c, TERN_E_TLS);
        return;
    }
    imap_set_state(c, IMAP_ST_STARTTLS_HANDSHAKE);
    st = line_start_tls(c->line);
    if (st)
        imap_fail(c, st);
}

static void
imap_step_starttls(struct imap_conn *c)
{
    if (!imap_has_cap(c, "STARTTLS")) {
        tern_err_set(c->err, TERN_E_TLS,
                     "IMAP server %s does not offer STARTTLS; refusing to continue in "
                     "cleartext (use imaps:// or tls = off)",
                     c->opts.host);
        imap_fail(c, TERN_E_TLS);
        return;
    }
    imap_setup_submit(c, IMAP_CMD_STARTTLS, "STARTTLS", NULL, NULL, imap_on_starttls_done);
}

static void
imap_on_pretls_caps(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (imap_setup_ok(c, st))
        imap_step_starttls(c);
}

static void
imap_on_auth_caps(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct imap_conn *c = aux;
    if (imap_setup_ok(c, st))
        imap_step_auth(c);
}

static void
imap_on_greeting(struct imap_conn *c, const struct imap_response *r)
{
    if (r->kind != IMAP_RESP_UNTAGGED || r->cond == IMAP_COND_NONE || r->cond == IMAP_COND_NO ||
        r->cond == IMAP_COND_BAD) {
        tern_err_set(c->err, TERN_E_PROTO, "IMAP server %s sent no valid greeting", c->opts.host);
        imap_fail(c, TERN_E_PROTO);
        return;
    }
    if (r->cond == IMAP_COND_BYE) {
        tern_err_set(c->err, TERN_E_REFUSED, "IMAP server %s refused the connection: %s",
                     c->opts.host, r->text);
        imap_fail(c, TERN_E_REFUSED);
        return;
    }
    bool tls = line_is_tls(c->line);
    if (r->cond == IMAP_COND_PREAUTH) {
        if (c->opts.security == IMAP_SEC_STARTTLS && !tls) {
            tern_err_set(c->err, TERN_E_TLS,
                         "IMAP server %s sent PREAUTH on a connection that must be "
                         "encrypted first; refusing to continue",
                         c->opts.host);
            imap_fail(c, TERN_E_TLS);
            return;
        }
        if (r->code && strcmp(r->code, "CAPABILITY") == 0)
            imap_caps_set(c, r->code_args);
        imap_step_postauth(c);
        return;
    }
    if (c->opts.security == IMAP_SEC_STARTTLS && !tls) {
        imap_set_state(c, IMAP_ST_PRETLS);
        if (r->code && strcmp(r->code, "CAPABILITY") == 0) {
            imap_caps_set(c, r->code_args);
            imap_step_starttls(c);
        } else {
            imap_setup_submit(c, IMAP_CMD_SETUP, "CAPABILITY", NULL, NULL, imap_on_pretls_caps);
        }
        return;
    }
    imap_set_state(c, IMAP_ST_AUTH);
    if (r->code && strcmp(r->code, "CAPABILITY") == 0) {
        imap_caps_set(c, r->code_args);
        imap_step_auth(c);
    } else {
        imap_setup_submit(c, IMAP_CMD_SETUP, "CAPABILITY", NULL, NULL, imap_on_auth_caps);
    }
}

/* ---- lifecycle ---- */

enum tern_status
imap_new(struct loop *loop, const struct imap_opts *opts, struct tern_err *err,
         struct imap_conn **out)
{
    struct imap_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return TERN_E_NOMEM;
    c->loop = loop;
    c->opts = *opts;
    c->err = err;
    c->pending_tail = &c->pending;
    c->inflight_tail = &c->inflight;
    c->parser = imap_parser_new(&opts->limits);
    if (!c->parser) {
        free(c);
        return TERN_E_NOMEM;
    }
    struct line_opts lo = {0};
    lo.net.host = opts->host;
    lo.net.port = opts->port;
    lo.net.verify = opts->verify;
    memcpy(lo.net.fingerprint, opts->fingerprint, sizeof(lo.net.fingerprint));
    lo.net.ca_file = opts->ca_file;
    lo.net.connect_timeout_ms = opts->timeout_ms;
    lo.line_max = opts->limits.line_max;
    lo.timeout_ms = opts->timeout_ms;
    lo.proto = "IMAP";
    struct line_handler h = {imap_on_line, imap_on_bytes, imap_on_line_event};
    enum tern_status st = line_new(loop, &lo, &h, c, err, &c->line);
    if (st) {
        imap_parser_free(c->parser);
        free(c);
        return st;
    }
    *out = c;
    return TERN_OK;
}

void
imap_free(struct imap_conn *c)
{
    if (!c)
        return;
    for (int k = 0; k < 2; k++) {
        struct imap_cmd *cmd = k ? c->pending : c->inflight;
        while (cmd) {
            struct imap_cmd *next = cmd->next;
            imap_cmd_free(cmd);
            cmd = next;
        }
    }
    line_free(c->line);
    imap_parser_free(c->parser);
    imap_caps_clear(c);
    free(c->bye_text);
    free(c);
}

enum tern_status
imap_open(struct imap_conn *c, imap_done_fn done, void *aux)
{
    if (c->state != IMAP_ST_NEW)
        return TERN_E_USAGE;
    c->open_done = done;
    c->open_aux = aux;
    imap_set_state(c, IMAP_ST_CONNECTING);
    enum tern_status st = line_connect(c->line);
    if (st) {
        c->open_done = NULL;
        imap_set_state(c, IMAP_ST_DEAD);
    }
    return st;
}

enum tern_status
imap_logout(struct imap_conn *c, imap_done_fn done, void *aux)
{
    if (c->state == IMAP_ST_DEAD)
        return TERN_E_IO;
    enum tern_status st = imap_enqueue(c, IMAP_CMD_LOGOUT, "LOGOUT", NULL, NULL, done, aux, NULL);
    if (st)
        return st;
    imap_pump(c);
    return TERN_OK;
}

enum tern_status
imap_idle(struct imap_conn *c, imap_untagged_fn on_untagged, imap_done_fn done, void *aux)
{
    if (!imap_has_cap(c, "IDLE"))
        return tern_err_set(c->err, TERN_E_UNSUPPORTED, "IMAP server %s does not offer IDLE",
                            c->opts.host);
    enum tern_status st =
        imap_enqueue(c, IMAP_CMD_IDLE, "IDLE", NULL, on_untagged, done, aux, NULL);
    if (!st)
        imap_pump(c);
    return st;
}

enum tern_status
imap_idle_done(struct imap_conn *c)
{
    if (!c->idling)
        return TERN_E_USAGE;
    c->idling = false;
    imap_trace_sent(c, NULL, "DONE", 4);
    enum tern_status st = line_send(c->line, "DONE\r\n", 6);
    if (!st)
        line_set_waiting(c->line, true);
    return st;
}

void
imap_cancel(struct imap_conn *c)
{
    tern_err_set(c->err, TERN_E_CANCELED, "canceled");
    imap_fail(c, TERN_E_CANCELED);
}
