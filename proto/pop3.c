/*
 * pop3.c - the POP3 client engine (see pop3.h for the phase graph).
 *
 * Layer: proto/. Includes libc and proto headers only; never curses, store
 * or notmuch headers.
 *
 * Commands are queued objects with a callback. They move from PENDING (not
 * yet sent) to INFLIGHT (sent, awaiting their reply). POP3 has no tags:
 * replies come in the order of the commands (RFC 1939 §3, RFC 2449 §6.6),
 * so the reply in progress always belongs to the oldest command in flight.
 * Sending stops before an exclusive command (CAPA, STLS, AUTH, USER, PASS,
 * QUIT) while anything is in flight, after one of them, after any command
 * when the server does not offer PIPELINING, and at POP3_PIPELINE_MAX.
 *
 * One reply goes through these steps:
 *
 *   status line: "+OK" / "-ERR" / (AUTH only) "+ " continuation
 *   +OK to CAPA, LIST, UIDL, RETR -> lines until "." (RFC 1939 §3), with
 *   byte-stuffing undone; the line engine delivers whole lines, so a
 *   terminator split across TCP segments needs no care here.
 *
 * Connection phases, as the state names them:
 *
 *   NEW -> CONNECTING -> [TLS_HANDSHAKE] -> GREETING
 *   GREETING -> PRETLS (CAPA, STLS) -> STLS_HANDSHAKE -> AUTH   (STLS required)
 *   GREETING -> AUTH (CAPA, then AUTH or USER/PASS)             (TLS or none)
 *   AUTH -> READY -> QUIT -> DEAD; any failure -> DEAD
 */
#include "pop3.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "line.h"
#include "tbuf.h"

/* Message bytes are handed to the sink in chunks of about this size. */
#define POP3_CHUNK 65536

/* RFC 2449 §4: a command line is at most 255 octets, CR LF included. */
#define POP3_COMMAND_MAX 255

enum pop3_state {
    POP3_ST_NEW,
    POP3_ST_CONNECTING,
    POP3_ST_TLS_HANDSHAKE, /* implicit TLS */
    POP3_ST_GREETING,
    POP3_ST_PRETLS, /* CAPA and STLS before the handshake */
    POP3_ST_STLS_HANDSHAKE,
    POP3_ST_AUTH, /* CAPA over the final connection, then the login */
    POP3_ST_READY,
    POP3_ST_QUIT, /* QUIT sent */
    POP3_ST_DEAD,
};

static const char *const pop3_state_names[] = {
    "NEW",  "CONNECTING", "TLS_HANDSHAKE", "GREETING", "PRETLS", "STLS_HANDSHAKE",
    "AUTH", "READY",      "QUIT",          "DEAD",
};

enum pop3_cmd_kind {
    POP3_CMD_CAPA,
    POP3_CMD_STLS,
    POP3_CMD_AUTH,
    POP3_CMD_USER,
    POP3_CMD_PASS,
    POP3_CMD_STAT,
    POP3_CMD_LIST,
    POP3_CMD_UIDL,
    POP3_CMD_RETR,
    POP3_CMD_DELE,
    POP3_CMD_RSET,
    POP3_CMD_NOOP,
    POP3_CMD_QUIT,
};

static const char *const pop3_cmd_names[] = {
    "CAPA", "STLS", "AUTH", "USER", "PASS", "STAT", "LIST",
    "UIDL", "RETR", "DELE", "RSET", "NOOP", "QUIT",
};

struct pop3_cmd {
    struct pop3_cmd *next;
    enum pop3_cmd_kind kind;
    uint32_t msgno; /* RETR, DELE */
    struct tbuf wire;
    size_t shown; /* > 0: the wire carries a secret; trace only this many bytes */

    /* AUTH (RFC 5034 §4) */
    struct tbuf auth_next; /* the response to send on the first "+ " */
    bool auth_sent;
    bool auth_canceled; /* "*" sent */

    bool in_body; /* +OK seen: reading lines until "." */

    /* RETR */
    struct pop3_sink sink;
    bool sink_open;           /* begin succeeded and end has not been called */
    enum tern_status sink_st; /* the first failure of the sink */
    uint64_t size;            /* message bytes received (unstuffed, CR LF endings) */
    uint64_t delivered;       /* bytes handed to the sink */

    /* CAPA, LIST, UIDL */
    size_t listing_bytes; /* counted against limits.listing_max */
    struct tbuf arena;    /* CAPA lines or UIDL strings, each followed by a NUL */
    struct pop3_size *sizes;
    struct pop3_uid *uids;
    size_t n, cap;

    /* STAT */
    uint32_t count;
    uint64_t octets;

    /* exactly one of these is set */
    pop3_done_fn done;
    pop3_stat_fn on_stat;
    pop3_list_fn on_list;
    pop3_uidl_fn on_uidl;
    void *aux;
};

struct pop3_conn {
    struct loop *loop;
    struct pop3_opts opts;
    struct tern_err *err; /* borrowed */
    struct line_conn *line;
    enum pop3_state state;

    struct pop3_cmd *pending, **pending_tail;
    struct pop3_cmd *inflight, **inflight_tail;
    size_t ninflight;
    bool pipelining;

    struct tbuf caps; /* CAPA lines, each followed by a NUL */
    bool caps_known;

    struct tbuf text;  /* the text of the last status line */
    struct tbuf chunk; /* message bytes not yet handed to the sink */
    char *dead_reason; /* owned: the sentence of the failure that closed us */
    bool quit_answered;

    pop3_done_fn open_done;
    void *open_aux;
};

static void pop3_pump(struct pop3_conn *c);
static void pop3_fail(struct pop3_conn *c, enum tern_status st);
static void pop3_on_auth_caps(void *aux, enum tern_status st, const char *text);

static void
pop3_set_state(struct pop3_conn *c, enum pop3_state st)
{
    if (c->opts.trace && c->state != st) {
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "state %s -> %s", pop3_state_names[c->state],
                         pop3_state_names[st]);
        c->opts.trace(c->opts.trace_aux, false, msg, (size_t)n);
    }
    c->state = st;
}

/* ---- capabilities (RFC 2449 §5) ---- */

/* Whether the first word of LINE is NAME (any case). */
static bool
pop3_first_word_is(const char *line, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(line, name, n) == 0 && (line[n] == '\0' || line[n] == ' ');
}

bool
pop3_has_cap(const struct pop3_conn *c, const char *name)
{
    if (!name || !name[0])
        return false;
    const char *p = tbuf_ptr(&c->caps);
    const char *end = p + tbuf_len(&c->caps);
    for (; p && p < end; p += strlen(p) + 1)
        if (pop3_first_word_is(p, name))
            return true;
    return false;
}

bool
pop3_has_sasl(const struct pop3_conn *c, const char *mech)
{
    if (!mech || !mech[0])
        return false;
    size_t mlen = strlen(mech);
    const char *p = tbuf_ptr(&c->caps);
    const char *end = p + tbuf_len(&c->caps);
    for (; p && p < end; p += strlen(p) + 1) {
        if (!pop3_first_word_is(p, "SASL"))
            continue;
        /* "SASL PLAIN XOAUTH2": the mechanisms are the words after the first. */
        const char *w = p + 4;
        while (*w) {
            while (*w == ' ')
                w++;
            size_t wl = strcspn(w, " ");
            if (wl == mlen && strncasecmp(w, mech, mlen) == 0)
                return true;
            w += wl;
        }
    }
    return false;
}

static void
pop3_caps_clear(struct pop3_conn *c)
{
    tbuf_free(&c->caps);
    tbuf_init(&c->caps, 0);
    c->caps_known = false;
}

bool
pop3_is_ready(const struct pop3_conn *c)
{
    return c->state == POP3_ST_READY;
}

bool
pop3_is_dead(const struct pop3_conn *c)
{
    return c->state == POP3_ST_DEAD;
}

void
pop3_limits_default(struct pop3_limits *lim)
{
    if (!lim)
        return;
    lim->line_max = POP3_LINE_MAX_DEFAULT;
    lim->message_max = POP3_MESSAGE_MAX_DEFAULT;
    lim->listing_max = POP3_LISTING_MAX_DEFAULT;
}

/* ---- commands ---- */

static void
pop3_cmd_free(struct pop3_cmd *cmd)
{
    if (!cmd)
        return;
    tbuf_free(&cmd->wire);
    tbuf_free(&cmd->auth_next);
    tbuf_free(&cmd->arena);
    free(cmd->sizes);
    free(cmd->uids);
    free(cmd);
}

/* Commands of the connection phases, sent before READY. */
static bool
pop3_kind_is_setup(enum pop3_cmd_kind kind)
{
    return kind == POP3_CMD_CAPA || kind == POP3_CMD_STLS || kind == POP3_CMD_AUTH ||
           kind == POP3_CMD_USER || kind == POP3_CMD_PASS;
}

/* Commands that are never pipelined, before or after. */
static bool
pop3_kind_is_exclusive(enum pop3_cmd_kind kind)
{
    return pop3_kind_is_setup(kind) || kind == POP3_CMD_QUIT;
}

/* Replies followed by lines up to "." (RFC 1939 §3, RFC 2449 §5). */
static bool
pop3_kind_is_multiline(enum pop3_cmd_kind kind)
{
    return kind == POP3_CMD_CAPA || kind == POP3_CMD_LIST || kind == POP3_CMD_UIDL ||
           kind == POP3_CMD_RETR;
}

static struct pop3_cmd *
pop3_cmd_new(enum pop3_cmd_kind kind)
{
    struct pop3_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return NULL;
    cmd->kind = kind;
    tbuf_init(&cmd->wire, 0);
    tbuf_init(&cmd->auth_next, 0);
    tbuf_init(&cmd->arena, 0);
    return cmd;
}

/*
 * Puts CMD in the queue. A connection-phase command goes ahead of the
 * commands the caller queued before the connection was ready: those wait
 * for it.
 */
static void
pop3_enqueue(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    struct pop3_cmd **at = c->pending_tail;
    if (pop3_kind_is_setup(cmd->kind)) {
        at = &c->pending;
        while (*at && pop3_kind_is_setup((*at)->kind))
            at = &(*at)->next;
    }
    cmd->next = *at;
    *at = cmd;
    if (!cmd->next)
        c->pending_tail = &cmd->next;
}

static void
pop3_trace_sent(struct pop3_conn *c, const struct pop3_cmd *cmd, const char *p, size_t n)
{
    if (!c->opts.trace)
        return;
    if (cmd && cmd->shown) {
        char msg[64];
        int len = snprintf(msg, sizeof(msg), "%.*s <secret>", (int)cmd->shown, p);
        c->opts.trace(c->opts.trace_aux, true, msg, (size_t)len);
        return;
    }
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    c->opts.trace(c->opts.trace_aux, true, p, n);
}

static void
pop3_pump(struct pop3_conn *c)
{
    while (c->pending && c->state != POP3_ST_DEAD) {
        struct pop3_cmd *cmd = c->pending;
        if (!pop3_kind_is_setup(cmd->kind) && c->state != POP3_ST_READY)
            break;
        if (c->inflight &&
            (!c->pipelining || pop3_kind_is_exclusive(cmd->kind) ||
             pop3_kind_is_exclusive(c->inflight->kind) || c->ninflight >= POP3_PIPELINE_MAX))
            break;

        c->pending = cmd->next;
        if (!c->pending)
            c->pending_tail = &c->pending;
        cmd->next = NULL;
        *c->inflight_tail = cmd;
        c->inflight_tail = &cmd->next;
        c->ninflight++;

        if (cmd->kind == POP3_CMD_QUIT)
            pop3_set_state(c, POP3_ST_QUIT);
        pop3_trace_sent(c, cmd, tbuf_ptr(&cmd->wire), tbuf_len(&cmd->wire));
        enum tern_status st = line_send(c->line, tbuf_ptr(&cmd->wire), tbuf_len(&cmd->wire));
        if (st) {
            pop3_fail(c, st);
            return;
        }
    }
    if (c->state != POP3_ST_DEAD)
        line_set_waiting(c->line, c->ninflight > 0 || c->state == POP3_ST_GREETING);
}

/* Removes the oldest command in flight, which must be CMD. */
static void
pop3_unlink_head(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    c->inflight = cmd->next;
    if (!c->inflight)
        c->inflight_tail = &c->inflight;
    c->ninflight--;
    cmd->next = NULL;
}

/* Ends an open sink: OK says whether the message arrived whole. */
static void
pop3_sink_end(struct pop3_cmd *cmd, bool ok)
{
    if (!cmd->sink_open)
        return;
    cmd->sink_open = false;
    cmd->sink.end(cmd->sink.aux, ok, cmd->delivered);
}

/* Calls the command's callback with ST and no results, then frees it. */
static void
pop3_cmd_abort(struct pop3_cmd *cmd, enum tern_status st)
{
    pop3_sink_end(cmd, false);
    if (cmd->done)
        cmd->done(cmd->aux, st, NULL);
    else if (cmd->on_stat)
        cmd->on_stat(cmd->aux, st, 0, 0);
    else if (cmd->on_list)
        cmd->on_list(cmd->aux, st, NULL, 0);
    else if (cmd->on_uidl)
        cmd->on_uidl(cmd->aux, st, NULL, 0);
    pop3_cmd_free(cmd);
}

static void
pop3_fail(struct pop3_conn *c, enum tern_status st)
{
    if (c->state == POP3_ST_DEAD)
        return;
    pop3_set_state(c, POP3_ST_DEAD);
    /* Drop the socket now: the server sees the close, and a dead socket
     * cannot keep the loop busy (TESTMATRIX F3). */
    line_close(c->line);
    free(c->dead_reason);
    c->dead_reason =
        strdup(c->quit_answered ? "the session ended with QUIT" : tern_err_msg(c->err));
    tbuf_reset(&c->chunk);
    /* Detach both lists first: callbacks may try to submit more. */
    struct pop3_cmd *lists[2] = {c->inflight, c->pending};
    c->inflight = c->pending = NULL;
    c->inflight_tail = &c->inflight;
    c->pending_tail = &c->pending;
    c->ninflight = 0;
    for (int k = 0; k < 2; k++) {
        for (struct pop3_cmd *cmd = lists[k], *next; cmd; cmd = next) {
            next = cmd->next;
            pop3_cmd_abort(cmd, st);
        }
    }
    if (c->open_done) {
        pop3_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, st, NULL);
    }
}

/* Fails the connection with a PROTO sentence. */
static void pop3_fail_proto(struct pop3_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
pop3_fail_proto(struct pop3_conn *c, const char *fmt, ...)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    enum tern_status st = tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    if (st)
        tern_err_set(c->err, TERN_E_PROTO, "POP3 server %s sent a malformed reply", c->opts.host);
    else
        tern_err_set(c->err, TERN_E_PROTO, "POP3 server %s %s", c->opts.host, tbuf_ptr(&b));
    tbuf_free(&b);
    pop3_fail(c, TERN_E_PROTO);
}

/* ---- replies ---- */

/*
 * RFC 1939 §3: a status line is "+OK" or "-ERR", then the end of the line
 * or a space and text. Returns 1 for +OK, 0 for -ERR, -1 for anything
 * else; *TEXT and *TLEN give the text.
 */
static int
pop3_parse_status(const char *line, size_t len, const char **text, size_t *tlen)
{
    int ok;
    size_t n;
    if (len >= 3 && memcmp(line, "+OK", 3) == 0) {
        ok = 1;
        n = 3;
    } else if (len >= 4 && memcmp(line, "-ERR", 4) == 0) {
        ok = 0;
        n = 4;
    } else {
        return -1;
    }
    if (len > n && line[n] != ' ')
        return -1;
    if (len > n)
        n++;
    *text = line + n;
    *tlen = len - n;
    return ok;
}

/* An AUTH continuation (RFC 5034 §4): "+" alone or "+ " and base64. */
static bool
pop3_is_continuation(const char *line, size_t len)
{
    return len >= 1 && line[0] == '+' && (len == 1 || line[1] == ' ');
}

/* Keeps the text of a status line for the callbacks, as a C string (a NUL
 * from the server ends it early, which only shortens a human sentence). */
static enum tern_status
pop3_keep_text(struct pop3_conn *c, const char *text, size_t tlen)
{
    tbuf_reset(&c->text);
    return tbuf_add(&c->text, text, tlen);
}

static const char *
pop3_text(const struct pop3_conn *c)
{
    const char *t = tbuf_ptr(&c->text);
    return t ? t : "";
}

/* Parses 1 to DIGITS decimal digits at *P (before END) into *OUT, at most MAX. */
static bool
pop3_parse_number(const char **p, const char *end, unsigned digits, uint64_t max, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    unsigned n = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        if (++n > digits)
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
        s++;
    }
    if (n == 0)
        return false;
    *p = s;
    *out = v;
    return true;
}

/* A message number: 1 to UINT32_MAX. */
static bool
pop3_parse_msgno(const char **p, const char *end, uint32_t *out)
{
    uint64_t v;
    if (!pop3_parse_number(p, end, 10, UINT32_MAX, &v) || v == 0)
        return false;
    *out = (uint32_t)v;
    return true;
}

/* RFC 1939 §5 STAT: "+OK nn mm", perhaps followed by a space and more. */
static bool
pop3_parse_stat(const char *p, size_t len, uint32_t *count, uint64_t *octets)
{
    const char *end = p + len;
    uint64_t n;
    if (!pop3_parse_number(&p, end, 10, UINT32_MAX, &n))
        return false;
    if (p >= end || *p != ' ')
        return false;
    p++;
    if (!pop3_parse_number(&p, end, 20, UINT64_MAX, octets))
        return false;
    if (p < end && *p != ' ')
        return false;
    *count = (uint32_t)n;
    return true;
}

static int
pop3_cmp_size(const void *a, const void *b)
{
    uint32_t x = ((const struct pop3_size *)a)->msgno, y = ((const struct pop3_size *)b)->msgno;
    return x < y ? -1 : x > y;
}

static int
pop3_cmp_uid_msgno(const void *a, const void *b)
{
    uint32_t x = ((const struct pop3_uid *)a)->msgno, y = ((const struct pop3_uid *)b)->msgno;
    return x < y ? -1 : x > y;
}

static int
pop3_cmp_uid_ptr(const void *a, const void *b)
{
    const struct pop3_uid *x = *(const struct pop3_uid *const *)a;
    const struct pop3_uid *y = *(const struct pop3_uid *const *)b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    int r = memcmp(x->uid, y->uid, x->len);
    if (r)
        return r;
    return x->msgno < y->msgno ? -1 : x->msgno > y->msgno;
}

/* RFC 1939 §7: 1 to 70 characters in 0x21-0x7E. */
static bool
pop3_uid_valid(const char *p, size_t len)
{
    if (len < 1 || len > POP3_UID_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e)
            return false;
    return true;
}

/*
 * Finishes a UIDL table: points every entry at its string, sorts by message
 * number, and marks shared uids. A message number listed twice is
 * TERN_E_PROTO: two uids for one message leave nothing to trust.
 */
static enum tern_status
pop3_uidl_finish(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    size_t off = 0;
    bool sorted = true;
    for (size_t i = 0; i < cmd->n; i++) {
        cmd->uids[i].uid = tbuf_ptr(&cmd->arena) + off;
        off += cmd->uids[i].len + 1;
        if (i && cmd->uids[i].msgno <= cmd->uids[i - 1].msgno)
            sorted = false;
    }
    if (!sorted) {
        qsort(cmd->uids, cmd->n, sizeof(*cmd->uids), pop3_cmp_uid_msgno);
        for (size_t i = 1; i < cmd->n; i++)
            if (cmd->uids[i].msgno == cmd->uids[i - 1].msgno)
                return tern_err_set(c->err, TERN_E_PROTO,
                                    "POP3 server %s listed message %" PRIu32 " twice in UIDL",
                                    c->opts.host, cmd->uids[i].msgno);
    }
    if (cmd->n < 2)
        return TERN_OK;
    struct pop3_uid **by_uid = malloc(cmd->n * sizeof(*by_uid));
    if (!by_uid)
        return TERN_E_NOMEM;
    for (size_t i = 0; i < cmd->n; i++)
        by_uid[i] = &cmd->uids[i];
    qsort(by_uid, cmd->n, sizeof(*by_uid), pop3_cmp_uid_ptr);
    for (size_t i = 1; i < cmd->n; i++) {
        if (by_uid[i]->len == by_uid[i - 1]->len &&
            memcmp(by_uid[i]->uid, by_uid[i - 1]->uid, by_uid[i]->len) == 0) {
            by_uid[i]->duplicate = true;
            by_uid[i - 1]->duplicate = true;
        }
    }
    free(by_uid);
    return TERN_OK;
}

static enum tern_status
pop3_list_finish(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    for (size_t i = 1; i < cmd->n; i++) {
        if (cmd->sizes[i].msgno > cmd->sizes[i - 1].msgno)
            continue;
        qsort(cmd->sizes, cmd->n, sizeof(*cmd->sizes), pop3_cmp_size);
        for (size_t j = 1; j < cmd->n; j++)
            if (cmd->sizes[j].msgno == cmd->sizes[j - 1].msgno)
                return tern_err_set(c->err, TERN_E_PROTO,
                                    "POP3 server %s listed message %" PRIu32 " twice in LIST",
                                    c->opts.host, cmd->sizes[j].msgno);
        break;
    }
    return TERN_OK;
}

/*
 * After the answer to QUIT the session is over (RFC 1939 §6): the server
 * closes the connection, and so do we, at once. Commands queued behind QUIT
 * never ran.
 */
static void
pop3_after_quit(struct pop3_conn *c)
{
    if (c->state != POP3_ST_QUIT)
        return;
    c->quit_answered = true;
    if (c->pending)
        tern_err_set(c->err, TERN_E_IO, "the POP3 session with %s ended with QUIT", c->opts.host);
    pop3_fail(c, TERN_E_IO);
}

/* Calls the callback of a command that completed with ST, then frees it. */
static void
pop3_complete(struct pop3_conn *c, struct pop3_cmd *cmd, enum tern_status st)
{
    pop3_unlink_head(c, cmd);
    bool ok = st == TERN_OK;
    bool quit = cmd->kind == POP3_CMD_QUIT;
    if (cmd->done)
        cmd->done(cmd->aux, st, pop3_text(c));
    else if (cmd->on_stat)
        cmd->on_stat(cmd->aux, st, ok ? cmd->count : 0, ok ? cmd->octets : 0);
    else if (cmd->on_list)
        cmd->on_list(cmd->aux, st, ok ? cmd->sizes : NULL, ok ? cmd->n : 0);
    else if (cmd->on_uidl)
        cmd->on_uidl(cmd->aux, st, ok ? cmd->uids : NULL, ok ? cmd->n : 0);
    pop3_cmd_free(cmd);
    if (quit)
        pop3_after_quit(c);
}

/* Grows the table of CMD to hold one more entry of SIZE bytes. */
static enum tern_status
pop3_table_grow(struct pop3_cmd *cmd, void **table, size_t size)
{
    if (cmd->n < cmd->cap)
        return TERN_OK;
    size_t cap = cmd->cap ? cmd->cap * 2 : 64;
    void *t = realloc(*table, cap * size);
    if (!t)
        return TERN_E_NOMEM;
    *table = t;
    cmd->cap = cap;
    return TERN_OK;
}

/* One line of a LIST answer: "msgno size" (RFC 1939 §5). */
static void
pop3_on_list_line(struct pop3_conn *c, struct pop3_cmd *cmd, const char *line, size_t len)
{
    const char *p = line, *end = line + len;
    uint32_t msgno;
    uint64_t size;
    if (!pop3_parse_msgno(&p, end, &msgno) || p >= end || *p++ != ' ' ||
        !pop3_parse_number(&p, end, 20, UINT64_MAX, &size) || (p < end && *p != ' ')) {
        pop3_fail_proto(c, "sent a malformed LIST line: '%.*s'", (int)(len > 80 ? 80 : len), line);
        return;
    }
    enum tern_status st = pop3_table_grow(cmd, (void **)&cmd->sizes, sizeof(*cmd->sizes));
    if (st) {
        pop3_fail(c, st);
        return;
    }
    cmd->sizes[cmd->n].msgno = msgno;
    cmd->sizes[cmd->n].size = size;
    cmd->n++;
}

/*
 * One line of a UIDL answer: "msgno SP unique-id" (RFC 1939 §7). The uid
 * is the rest of the line as it came; whether it is valid is noted, not
 * enforced, so that no message goes unlisted (TESTMATRIX P1).
 */
static void
pop3_on_uidl_line(struct pop3_conn *c, struct pop3_cmd *cmd, const char *line, size_t len)
{
    const char *p = line, *end = line + len;
    uint32_t msgno;
    if (!pop3_parse_msgno(&p, end, &msgno) || (p < end && *p != ' ')) {
        pop3_fail_proto(c, "sent a malformed UIDL line: '%.*s'", (int)(len > 80 ? 80 : len), line);
        return;
    }
    if (p < end)
        p++;
    size_t ulen = (size_t)(end - p);
    enum tern_status st = pop3_table_grow(cmd, (void **)&cmd->uids, sizeof(*cmd->uids));
    if (!st)
        st = tbuf_add(&cmd->arena, p, ulen);
    if (!st)
        st = tbuf_addc(&cmd->arena, '\0');
    if (st) {
        pop3_fail(c, st);
        return;
    }
    struct pop3_uid *u = &cmd->uids[cmd->n++];
    memset(u, 0, sizeof(*u));
    u->msgno = msgno;
    u->len = ulen;
    u->valid = pop3_uid_valid(p, ulen);
}

/* Hands the collected message bytes to the sink. */
static void
pop3_sink_flush(struct pop3_cmd *cmd, struct tbuf *chunk)
{
    if (!cmd->sink_open || !tbuf_len(chunk)) {
        tbuf_reset(chunk);
        return;
    }
    enum tern_status st = cmd->sink.data(cmd->sink.aux, tbuf_ptr(chunk), tbuf_len(chunk));
    if (!st)
        cmd->delivered += tbuf_len(chunk);
    tbuf_reset(chunk);
    if (st) {
        cmd->sink_st = st;
        pop3_sink_end(cmd, false);
    }
}

/* One line of a message (stuffing already undone): add CR LF, pass it on. */
static void
pop3_on_retr_line(struct pop3_conn *c, struct pop3_cmd *cmd, const char *line, size_t len)
{
    if (len + 2 > c->opts.limits.message_max - cmd->size) {
        pop3_fail_proto(c, "sent message %" PRIu32 " larger than the limit of %" PRIu64 " bytes",
                        cmd->msgno, c->opts.limits.message_max);
        return;
    }
    cmd->size += len + 2;
    if (!cmd->sink_open)
        return; /* the sink failed: read the rest and drop it */
    enum tern_status st = tbuf_add(&c->chunk, line, len);
    if (!st)
        st = tbuf_add(&c->chunk, "\r\n", 2);
    if (st) {
        tern_err_set(c->err, st, "out of memory while receiving message %" PRIu32, cmd->msgno);
        cmd->sink_st = st;
        tbuf_reset(&c->chunk);
        pop3_sink_end(cmd, false);
        return;
    }
    if (tbuf_len(&c->chunk) >= POP3_CHUNK)
        pop3_sink_flush(cmd, &c->chunk);
}

/* The "." line: the multi-line answer of CMD is complete. */
static void
pop3_on_body_end(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    enum tern_status st = TERN_OK;
    switch (cmd->kind) {
    case POP3_CMD_RETR:
        pop3_sink_flush(cmd, &c->chunk);
        pop3_sink_end(cmd, true);
        st = cmd->sink_st;
        break;
    case POP3_CMD_LIST:
        if ((st = pop3_list_finish(c, cmd))) {
            pop3_fail(c, st);
            return;
        }
        break;
    case POP3_CMD_UIDL:
        if ((st = pop3_uidl_finish(c, cmd))) {
            pop3_fail(c, st);
            return;
        }
        break;
    case POP3_CMD_CAPA:
        pop3_caps_clear(c);
        c->caps = cmd->arena;
        c->caps_known = true;
        tbuf_init(&cmd->arena, 0);
        break;
    default: break;
    }
    pop3_complete(c, cmd, st);
}

/* One line of a multi-line answer (RFC 1939 §3). */
static void
pop3_on_body_line(struct pop3_conn *c, struct pop3_cmd *cmd, const char *line, size_t len)
{
    if (len == 1 && line[0] == '.') {
        pop3_on_body_end(c, cmd);
        return;
    }
    /* A line that begins with the termination octet was byte-stuffed. */
    if (len && line[0] == '.') {
        line++;
        len--;
    }
    if (cmd->kind == POP3_CMD_RETR) {
        pop3_on_retr_line(c, cmd, line, len);
        return;
    }
    if (c->opts.trace)
        c->opts.trace(c->opts.trace_aux, false, line, len);
    /* The answer and the table built from it count against listing_max. */
    size_t cost = len + 2 +
                  (cmd->kind == POP3_CMD_LIST   ? sizeof(struct pop3_size)
                   : cmd->kind == POP3_CMD_UIDL ? sizeof(struct pop3_uid)
                                                : 0);
    if (cost > c->opts.limits.listing_max - cmd->listing_bytes) {
        pop3_fail_proto(c, "sent a %s answer larger than the limit of %zu bytes",
                        pop3_cmd_names[cmd->kind], c->opts.limits.listing_max);
        return;
    }
    cmd->listing_bytes += cost;
    enum tern_status st = TERN_OK;
    switch (cmd->kind) {
    case POP3_CMD_LIST: pop3_on_list_line(c, cmd, line, len); break;
    case POP3_CMD_UIDL: pop3_on_uidl_line(c, cmd, line, len); break;
    case POP3_CMD_CAPA:
        /* RFC 2449 §5: one capability per line; a NUL would end it early. */
        if (!(st = tbuf_add(&cmd->arena, line, len)))
            st = tbuf_addc(&cmd->arena, '\0');
        if (st)
            pop3_fail(c, st);
        break;
    default: break;
    }
}

/* The generic sentence for -ERR to a command the caller submitted. */
static void
pop3_note_refusal(struct pop3_conn *c, const struct pop3_cmd *cmd)
{
    if (pop3_kind_is_setup(cmd->kind))
        return; /* the connection phases write their own */
    if (cmd->kind == POP3_CMD_RETR || cmd->kind == POP3_CMD_DELE)
        tern_err_set(c->err, TERN_E_REFUSED, "POP3 server %s said -ERR to %s %" PRIu32 ": %s",
                     c->opts.host, pop3_cmd_names[cmd->kind], cmd->msgno, pop3_text(c));
    else
        tern_err_set(c->err, TERN_E_REFUSED, "POP3 server %s said -ERR to %s: %s", c->opts.host,
                     pop3_cmd_names[cmd->kind], pop3_text(c));
}

/* A challenge during AUTH (RFC 5034 §4). */
static void
pop3_on_continuation(struct pop3_conn *c, struct pop3_cmd *cmd)
{
    enum tern_status st;
    if (tbuf_len(&cmd->auth_next) && !cmd->auth_sent) {
        cmd->auth_sent = true;
        if (c->opts.trace)
            c->opts.trace(c->opts.trace_aux, true, "<secret>", 8);
        st = line_send(c->line, tbuf_ptr(&cmd->auth_next), tbuf_len(&cmd->auth_next));
    } else if (!cmd->auth_canceled) {
        /*
         * A challenge after our response, e.g. XOAUTH2's JSON error: cancel
         * with "*", which the server must answer with -ERR.
         */
        cmd->auth_canceled = true;
        pop3_trace_sent(c, NULL, "*", 1);
        st = line_send(c->line, "*\r\n", 3);
    } else {
        pop3_fail_proto(c, "sent another SASL challenge after the exchange was canceled");
        return;
    }
    if (st)
        pop3_fail(c, st);
}

static void
pop3_on_status(struct pop3_conn *c, struct pop3_cmd *cmd, const char *line, size_t len)
{
    if (cmd->kind == POP3_CMD_AUTH && pop3_is_continuation(line, len)) {
        pop3_on_continuation(c, cmd);
        return;
    }
    const char *text;
    size_t tlen;
    int ok = pop3_parse_status(line, len, &text, &tlen);
    if (ok < 0) {
        pop3_fail_proto(c, "sent a malformed reply to %s: '%.*s'", pop3_cmd_names[cmd->kind],
                        (int)(len > 80 ? 80 : len), line);
        return;
    }
    enum tern_status st = pop3_keep_text(c, text, tlen);
    if (st) {
        pop3_fail(c, st);
        return;
    }
    if (!ok) {
        pop3_note_refusal(c, cmd);
        pop3_complete(c, cmd, TERN_E_REFUSED);
        return;
    }
    if (cmd->kind == POP3_CMD_STAT && !pop3_parse_stat(text, tlen, &cmd->count, &cmd->octets)) {
        pop3_fail_proto(c, "sent a malformed STAT reply: '%.*s'", (int)(len > 80 ? 80 : len), line);
        return;
    }
    if (!pop3_kind_is_multiline(cmd->kind)) {
        pop3_complete(c, cmd, TERN_OK);
        return;
    }
    cmd->in_body = true;
    if (cmd->kind == POP3_CMD_RETR) {
        tbuf_reset(&c->chunk);
        st = cmd->sink.begin(cmd->sink.aux, cmd->msgno);
        if (st)
            cmd->sink_st = st;
        else
            cmd->sink_open = true;
    }
}

static void pop3_on_greeting(struct pop3_conn *c, const char *line, size_t len);

/* ---- line engine glue ---- */

static enum tern_status
pop3_on_line(void *aux, const char *line, size_t len)
{
    struct pop3_conn *c = aux;
    if (c->state == POP3_ST_DEAD)
        return TERN_E_IO;
    struct pop3_cmd *cmd = c->inflight;
    if (cmd && cmd->in_body) {
        pop3_on_body_line(c, cmd, line, len);
    } else {
        if (c->opts.trace)
            c->opts.trace(c->opts.trace_aux, false, line, len);
        if (c->state == POP3_ST_GREETING)
            pop3_on_greeting(c, line, len);
        else if (!cmd)
            pop3_fail_proto(c, "sent a line no command asked for: '%.*s'",
                            (int)(len > 80 ? 80 : len), line);
        else
            pop3_on_status(c, cmd, line, len);
    }
    pop3_pump(c);
    return c->state == POP3_ST_DEAD ? TERN_E_IO : TERN_OK;
}

static enum tern_status
pop3_on_bytes(void *aux, const char *p, size_t n)
{
    /* POP3 never asks the line engine for counted bytes. */
    struct pop3_conn *c = aux;
    return tern_err_set(c->err, TERN_E_PROTO, "POP3 engine got bytes it did not ask for");
}

static void pop3_setup_submit(struct pop3_conn *c, enum pop3_cmd_kind kind, const char *line,
                              pop3_done_fn done);

static void
pop3_on_line_event(void *aux, enum line_event ev, enum tern_status st)
{
    struct pop3_conn *c = aux;
    switch (ev) {
    case LINE_EV_CONNECTED:
        if (c->opts.security == POP3_SEC_IMPLICIT_TLS) {
            pop3_set_state(c, POP3_ST_TLS_HANDSHAKE);
            st = line_start_tls(c->line);
            if (st)
                pop3_fail(c, st);
        } else {
            pop3_set_state(c, POP3_ST_GREETING);
            line_set_waiting(c->line, true);
        }
        break;
    case LINE_EV_DRAINED: break; /* nothing waits for the send queue here */
    case LINE_EV_TLS_DONE:
        if (c->state == POP3_ST_TLS_HANDSHAKE) {
            pop3_set_state(c, POP3_ST_GREETING);
            line_set_waiting(c->line, true);
        } else if (c->state == POP3_ST_STLS_HANDSHAKE) {
            /* RFC 2595 §4: forget what was learnt before TLS; ask again. */
            pop3_caps_clear(c);
            pop3_set_state(c, POP3_ST_AUTH);
            pop3_setup_submit(c, POP3_CMD_CAPA, "CAPA", pop3_on_auth_caps);
        }
        break;
    case LINE_EV_ERROR:
        if (c->state == POP3_ST_DEAD)
            break; /* already failed: keep the sentence that says why */
        if (st == TERN_E_IO && c->inflight && c->inflight->kind == POP3_CMD_RETR &&
            c->inflight->in_body)
            tern_err_prefix(c->err,
                            "POP3 server %s dropped the connection in the middle of "
                            "message %" PRIu32,
                            c->opts.host, c->inflight->msgno);
        else if (st == TERN_E_IO && c->state == POP3_ST_QUIT)
            tern_err_prefix(c->err,
                            "POP3 server %s closed the connection without answering QUIT "
                            "(whether messages were deleted is unknown)",
                            c->opts.host);
        pop3_fail(c, st);
        break;
    }
}

/* ---- connection phases ---- */

/* Queues a connection-phase command with an internal callback. */
static void
pop3_setup_submit(struct pop3_conn *c, enum pop3_cmd_kind kind, const char *line, pop3_done_fn done)
{
    struct pop3_cmd *cmd = pop3_cmd_new(kind);
    if (!cmd || tbuf_adds(&cmd->wire, line) || tbuf_add(&cmd->wire, "\r\n", 2)) {
        pop3_cmd_free(cmd);
        pop3_fail(c, TERN_E_NOMEM);
        return;
    }
    cmd->done = done;
    cmd->aux = c;
    pop3_enqueue(c, cmd);
    pop3_pump(c);
}

static void
pop3_ready(struct pop3_conn *c)
{
    pop3_set_state(c, POP3_ST_READY);
    c->pipelining = pop3_has_cap(c, "PIPELINING");
    if (c->open_done) {
        pop3_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, TERN_OK, pop3_text(c));
    }
    pop3_pump(c);
}

/* What an extended response code (RFC 2449 §8, RFC 3206) says. */
static const char *
pop3_code_meaning(const char *text)
{
    static const struct {
        const char *code;
        const char *meaning;
    } codes[] = {
        {"[AUTH]", "the credentials were not accepted"},
        {"[IN-USE]", "the mailbox is in use by another session; try again later"},
        {"[SYS/TEMP]", "a temporary problem on the server; try again later"},
        {"[SYS/PERM]", "a lasting problem on the server"},
        {"[LOGIN-DELAY]", "logging in again this soon is not allowed; try again later"},
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        size_t n = strlen(codes[i].code);
        if (strncasecmp(text, codes[i].code, n) == 0)
            return codes[i].meaning;
    }
    return NULL;
}

/*
 * The end of USER, PASS or AUTH: -ERR is TERN_E_AUTH with the server's
 * text and what its response code means; false when the login stops here.
 */
static bool
pop3_login_step_ok(struct pop3_conn *c, enum tern_status st, const char *text, const char *what)
{
    if (c->state == POP3_ST_DEAD)
        return false;
    if (!st)
        return true;
    const char *meaning = pop3_code_meaning(text ? text : "");
    tern_err_set(c->err, TERN_E_AUTH, "POP3 server %s rejected the login of %s (%s): %s%s%s%s",
                 c->opts.host, c->opts.user, what, text && text[0] ? text : "no reason given",
                 meaning ? " (" : "", meaning ? meaning : "", meaning ? ")" : "");
    pop3_fail(c, TERN_E_AUTH);
    return false;
}

static void
pop3_on_auth_done(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (pop3_login_step_ok(c, st, text, "AUTH"))
        pop3_ready(c);
}

static void
pop3_on_pass_done(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (pop3_login_step_ok(c, st, text, "PASS"))
        pop3_ready(c);
}

static void
pop3_on_user_done(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (!pop3_login_step_ok(c, st, text, "USER"))
        return;
    /* RFC 1939 §7 PASS: the password is the rest of the line. */
    struct pop3_cmd *cmd = pop3_cmd_new(POP3_CMD_PASS);
    if (!cmd || tbuf_addf(&cmd->wire, "PASS %s\r\n", c->opts.secret)) {
        pop3_cmd_free(cmd);
        pop3_fail(c, TERN_E_NOMEM);
        return;
    }
    cmd->shown = 4;
    cmd->done = pop3_on_pass_done;
    cmd->aux = c;
    pop3_enqueue(c, cmd);
    pop3_pump(c);
}

/* Credentials go into command lines: a line break in them would end the
 * command early and let the rest be read as another command. */
static bool
pop3_has_line_break(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* SASL AUTH (RFC 5034): with an initial response when the line fits. */
static void
pop3_send_auth(struct pop3_conn *c, enum sasl_mech mech)
{
    const char *name = sasl_mech_name(mech);
    if (!pop3_has_sasl(c, name)) {
        tern_err_set(c->err, TERN_E_UNSUPPORTED, "POP3 server %s does not offer SASL %s",
                     c->opts.host, name);
        pop3_fail(c, TERN_E_UNSUPPORTED);
        return;
    }
    struct tbuf raw, b64;
    tbuf_init(&raw, 0);
    tbuf_init(&b64, 0);
    struct pop3_cmd *cmd = pop3_cmd_new(POP3_CMD_AUTH);
    enum tern_status st = cmd ? TERN_OK : TERN_E_NOMEM;
    if (!st)
        st = sasl_initial_response(mech, c->opts.user, c->opts.secret, c->opts.host, c->opts.port,
                                   &raw);
    if (st == TERN_E_USAGE)
        tern_err_set(c->err, TERN_E_USAGE,
                     "the user name or secret contains characters that SASL %s cannot carry", name);
    if (!st)
        st = sasl_b64_encode(tbuf_ptr(&raw), tbuf_len(&raw), &b64);
    if (!st) {
        /* RFC 5034 §4: the initial response only when the command fits
         * in 255 octets (RFC 2449 §4); otherwise after the "+ ". */
        size_t full = strlen("AUTH  \r\n") + strlen(name) + tbuf_len(&b64);
        if (full <= POP3_COMMAND_MAX) {
            st = tbuf_addf(&cmd->wire, "AUTH %s %s\r\n", name, tbuf_ptr(&b64));
            cmd->shown = strlen("AUTH ") + strlen(name);
        } else {
            st = tbuf_addf(&cmd->wire, "AUTH %s\r\n", name);
            if (!st)
                st = tbuf_add(&cmd->auth_next, tbuf_ptr(&b64), tbuf_len(&b64));
            if (!st)
                st = tbuf_add(&cmd->auth_next, "\r\n", 2);
        }
    }
    tbuf_free(&raw);
    tbuf_free(&b64);
    if (st) {
        pop3_cmd_free(cmd);
        pop3_fail(c, st);
        return;
    }
    cmd->done = pop3_on_auth_done;
    cmd->aux = c;
    pop3_enqueue(c, cmd);
    pop3_pump(c);
}

static void
pop3_step_auth(struct pop3_conn *c)
{
    if (!line_is_tls(c->line) && c->opts.security != POP3_SEC_NONE) {
        tern_err_set(c->err, TERN_E_TLS,
                     "refusing to send credentials to POP3 server %s without TLS", c->opts.host);
        pop3_fail(c, TERN_E_TLS);
        return;
    }
    if (pop3_has_line_break(c->opts.user) || pop3_has_line_break(c->opts.secret)) {
        tern_err_set(c->err, TERN_E_USAGE, "the POP3 user name or password contains a line break");
        pop3_fail(c, TERN_E_USAGE);
        return;
    }
    enum sasl_mech mech = c->opts.mech;
    if (mech == SASL_AUTO)
        mech = pop3_has_sasl(c, "PLAIN") ? SASL_PLAIN : SASL_LOGIN;
    if (mech != SASL_LOGIN) {
        pop3_send_auth(c, mech);
        return;
    }
    /* USER/PASS (RFC 1939 §7); the user name is not secret. */
    struct tbuf line;
    tbuf_init(&line, 0);
    if (tbuf_addf(&line, "USER %s", c->opts.user)) {
        tbuf_free(&line);
        pop3_fail(c, TERN_E_NOMEM);
        return;
    }
    pop3_setup_submit(c, POP3_CMD_USER, tbuf_ptr(&line), pop3_on_user_done);
    tbuf_free(&line);
}

/* After CAPA: -ERR means no capabilities (an RFC 1939 server without
 * RFC 2449); +OK has installed the list already. */
static void
pop3_take_caps(struct pop3_conn *c, enum tern_status st)
{
    if (st)
        pop3_caps_clear(c);
    c->caps_known = true;
}

static void
pop3_on_auth_caps(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (c->state == POP3_ST_DEAD)
        return;
    pop3_take_caps(c, st);
    pop3_step_auth(c);
}

static void
pop3_on_stls_done(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (c->state == POP3_ST_DEAD)
        return;
    if (st) {
        tern_err_set(c->err, TERN_E_TLS,
                     "POP3 server %s refused STLS (%s); not continuing without TLS", c->opts.host,
                     text && text[0] ? text : "no reason given");
        pop3_fail(c, TERN_E_TLS);
        return;
    }
    /* RFC 2595 §4: bytes after the go-ahead are refused by the line engine. */
    pop3_set_state(c, POP3_ST_STLS_HANDSHAKE);
    st = line_start_tls(c->line);
    if (st)
        pop3_fail(c, st);
}

static void
pop3_on_pretls_caps(void *aux, enum tern_status st, const char *text)
{
    struct pop3_conn *c = aux;
    if (c->state == POP3_ST_DEAD)
        return;
    pop3_take_caps(c, st);
    if (!pop3_has_cap(c, "STLS")) {
        tern_err_set(c->err, TERN_E_TLS,
                     "POP3 server %s does not offer STLS; refusing to continue in cleartext "
                     "(use pop3s:// or tls = off)",
                     c->opts.host);
        pop3_fail(c, TERN_E_TLS);
        return;
    }
    pop3_setup_submit(c, POP3_CMD_STLS, "STLS", pop3_on_stls_done);
}

static void
pop3_on_greeting(struct pop3_conn *c, const char *line, size_t len)
{
    const char *text;
    size_t tlen;
    int ok = pop3_parse_status(line, len, &text, &tlen);
    if (ok < 0) {
        pop3_fail_proto(c, "sent no valid greeting");
        return;
    }
    if (!ok) {
        tern_err_set(c->err, TERN_E_REFUSED, "POP3 server %s refused the connection: %.*s",
                     c->opts.host, (int)tlen, text);
        pop3_fail(c, TERN_E_REFUSED);
        return;
    }
    /* The CAPA reply arrives after the greeting: nothing else is awaited. */
    if (c->opts.security == POP3_SEC_STLS && !line_is_tls(c->line)) {
        pop3_set_state(c, POP3_ST_PRETLS);
        pop3_setup_submit(c, POP3_CMD_CAPA, "CAPA", pop3_on_pretls_caps);
        return;
    }
    pop3_set_state(c, POP3_ST_AUTH);
    pop3_setup_submit(c, POP3_CMD_CAPA, "CAPA", pop3_on_auth_caps);
}

/* ---- the caller's commands ---- */

static enum tern_status
pop3_submit(struct pop3_conn *c, enum pop3_cmd_kind kind, uint32_t msgno, struct pop3_cmd **out)
{
    if (c->state == POP3_ST_DEAD) {
        tern_err_set(c->err, TERN_E_IO, "the POP3 connection to %s is closed%s%s", c->opts.host,
                     c->dead_reason && c->dead_reason[0] ? ": " : "",
                     c->dead_reason ? c->dead_reason : "");
        return TERN_E_IO;
    }
    struct pop3_cmd *cmd = pop3_cmd_new(kind);
    if (!cmd)
        return TERN_E_NOMEM;
    cmd->msgno = msgno;
    enum tern_status st =
        msgno ? tbuf_addf(&cmd->wire, "%s %" PRIu32 "\r\n", pop3_cmd_names[kind], msgno)
              : tbuf_addf(&cmd->wire, "%s\r\n", pop3_cmd_names[kind]);
    if (st) {
        pop3_cmd_free(cmd);
        return TERN_E_NOMEM;
    }
    *out = cmd;
    return TERN_OK;
}

/* Hands CMD (with its callback's AUX) to the queue and sends what can go. */
static void
pop3_queue(struct pop3_conn *c, struct pop3_cmd *cmd, void *aux)
{
    cmd->aux = aux;
    pop3_enqueue(c, cmd);
    pop3_pump(c);
}

static enum tern_status
pop3_submit_done(struct pop3_conn *c, enum pop3_cmd_kind kind, uint32_t msgno, pop3_done_fn done,
                 void *aux)
{
    if (!done)
        return TERN_E_USAGE;
    struct pop3_cmd *cmd = NULL;
    enum tern_status st = pop3_submit(c, kind, msgno, &cmd);
    if (st)
        return st;
    cmd->done = done;
    pop3_queue(c, cmd, aux);
    return TERN_OK;
}

enum tern_status
pop3_stat(struct pop3_conn *c, pop3_stat_fn done, void *aux)
{
    if (!done)
        return TERN_E_USAGE;
    struct pop3_cmd *cmd = NULL;
    enum tern_status st = pop3_submit(c, POP3_CMD_STAT, 0, &cmd);
    if (st)
        return st;
    cmd->on_stat = done;
    pop3_queue(c, cmd, aux);
    return TERN_OK;
}

enum tern_status
pop3_list(struct pop3_conn *c, pop3_list_fn done, void *aux)
{
    if (!done)
        return TERN_E_USAGE;
    struct pop3_cmd *cmd = NULL;
    enum tern_status st = pop3_submit(c, POP3_CMD_LIST, 0, &cmd);
    if (st)
        return st;
    cmd->on_list = done;
    pop3_queue(c, cmd, aux);
    return TERN_OK;
}

enum tern_status
pop3_uidl(struct pop3_conn *c, pop3_uidl_fn done, void *aux)
{
    if (!done)
        return TERN_E_USAGE;
    struct pop3_cmd *cmd = NULL;
    enum tern_status st = pop3_submit(c, POP3_CMD_UIDL, 0, &cmd);
    if (st)
        return st;
    cmd->on_uidl = done;
    pop3_queue(c, cmd, aux);
    return TERN_OK;
}

enum tern_status
pop3_retr(struct pop3_conn *c, uint32_t msgno, const struct pop3_sink *sink, pop3_done_fn done,
          void *aux)
{
    if (!msgno || !done || !sink || !sink->begin || !sink->data || !sink->end)
        return TERN_E_USAGE;
    struct pop3_cmd *cmd = NULL;
    enum tern_status st = pop3_submit(c, POP3_CMD_RETR, msgno, &cmd);
    if (st)
        return st;
    cmd->sink = *sink;
    cmd->done = done;
    pop3_queue(c, cmd, aux);
    return TERN_OK;
}

enum tern_status
pop3_dele(struct pop3_conn *c, uint32_t msgno, pop3_done_fn done, void *aux)
{
    if (!msgno)
        return TERN_E_USAGE;
    return pop3_submit_done(c, POP3_CMD_DELE, msgno, done, aux);
}

enum tern_status
pop3_rset(struct pop3_conn *c, pop3_done_fn done, void *aux)
{
    return pop3_submit_done(c, POP3_CMD_RSET, 0, done, aux);
}

enum tern_status
pop3_noop(struct pop3_conn *c, pop3_done_fn done, void *aux)
{
    return pop3_submit_done(c, POP3_CMD_NOOP, 0, done, aux);
}

enum tern_status
pop3_quit(struct pop3_conn *c, pop3_done_fn done, void *aux)
{
    return pop3_submit_done(c, POP3_CMD_QUIT, 0, done, aux);
}

void
pop3_cancel(struct pop3_conn *c)
{
    if (c->state == POP3_ST_DEAD)
        return;
    tern_err_set(c->err, TERN_E_CANCELED, "the POP3 operation was canceled");
    pop3_fail(c, TERN_E_CANCELED);
}

/* ---- lifecycle ---- */

enum tern_status
pop3_new(struct loop *loop, const struct pop3_opts *opts, struct tern_err *err,
         struct pop3_conn **out)
{
    if (!opts || !opts->host || !opts->user || !opts->secret)
        return TERN_E_USAGE;
    struct pop3_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return TERN_E_NOMEM;
    c->loop = loop;
    c->opts = *opts;
    c->err = err;
    struct pop3_limits def;
    pop3_limits_default(&def);
    if (!c->opts.limits.line_max)
        c->opts.limits.line_max = def.line_max;
    if (!c->opts.limits.message_max)
        c->opts.limits.message_max = def.message_max;
    if (!c->opts.limits.listing_max)
        c->opts.limits.listing_max = def.listing_max;
    c->pending_tail = &c->pending;
    c->inflight_tail = &c->inflight;
    tbuf_init(&c->caps, 0);
    tbuf_init(&c->text, 0);
    tbuf_init(&c->chunk, 0);
    struct line_opts lo = {0};
    lo.net.host = opts->host;
    lo.net.port = opts->port;
    lo.net.verify = opts->verify;
    memcpy(lo.net.fingerprint, opts->fingerprint, sizeof(lo.net.fingerprint));
    lo.net.ca_file = opts->ca_file;
    lo.net.connect_timeout_ms = opts->timeout_ms;
    lo.line_max = c->opts.limits.line_max;
    lo.timeout_ms = opts->timeout_ms;
    lo.proto = "POP3";
    struct line_handler h = {pop3_on_line, pop3_on_bytes, pop3_on_line_event};
    enum tern_status st = line_new(loop, &lo, &h, c, err, &c->line);
    if (st) {
        free(c);
        return st;
    }
    *out = c;
    return TERN_OK;
}

void
pop3_free(struct pop3_conn *c)
{
    if (!c)
        return;
    for (int k = 0; k < 2; k++) {
        struct pop3_cmd *cmd = k ? c->pending : c->inflight;
        while (cmd) {
            struct pop3_cmd *next = cmd->next;
            pop3_cmd_free(cmd);
            cmd = next;
        }
    }
    line_free(c->line);
    tbuf_free(&c->caps);
    tbuf_free(&c->text);
    tbuf_free(&c->chunk);
    free(c->dead_reason);
    free(c);
}

enum tern_status
pop3_open(struct pop3_conn *c, pop3_done_fn done, void *aux)
{
    if (c->state != POP3_ST_NEW || !done)
        return TERN_E_USAGE;
    c->open_done = done;
    c->open_aux = aux;
    pop3_set_state(c, POP3_ST_CONNECTING);
    enum tern_status st = line_connect(c->line);
    if (st) {
        c->open_done = NULL;
        pop3_set_state(c, POP3_ST_DEAD);
    }
    return st;
}
