/*
 * smtp.c - the SMTP submission client engine (see smtp.h for the phase
 * graph and the standards).
 *
 * Layer: proto/. Includes libc and proto headers only.
 *
 * Commands are queued objects with a reply callback. Replies come back in
 * the order the commands were sent (RFC 5321 §4.2, RFC 2920 §3.1), so the
 * in-flight list is a FIFO: each complete reply goes to the oldest command.
 * The greeting and the reply to the final "." are expected replies with no
 * command line of their own. Commands move from PENDING to INFLIGHT in
 * smtp_pump(): one at a time, or, with PIPELINING, MAIL/RCPT/RSET followed
 * by more of them and at most one DATA or QUIT closing the group (RFC 2920
 * §3.1), never more than SMTP_PIPELINE_MAX in flight.
 *
 * One transaction (a "job") runs at a time:
 *
 *   job: MAIL -> RCPT x n -> DATA (354) -> body -> "." -> final reply
 *   failure before the body: drop what is not sent yet, take the replies
 *   of what is in flight, ("." if DATA got 354 anyway), RSET -> callback.
 *
 * Anything that leaves the connection unusable (421, malformed reply,
 * network error, read error of the body) goes through smtp_fail(), which
 * closes the socket and calls every pending callback exactly once.
 */
#include "smtp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "line.h"

#define SMTP_PIPELINE_MAX 100 /* commands in flight with PIPELINING */
#define SMTP_BODY_CHUNK 65536 /* bytes read from the body source at once */
#define SMTP_BODY_BURST 16    /* chunks queued per turn of the loop */
#define SMTP_ADDR_MAX 254     /* RFC 5321 §4.5.3.1.3: path of 256 with < > */
#define SMTP_ENVID_MAX 100    /* RFC 3461 §4.4 */
#define SMTP_LINE_MAX_DEFAULT 4096
#define SMTP_REPLY_LINES_DEFAULT 256
#define SMTP_REPLY_BYTES_DEFAULT 65536

enum smtp_state {
    SMTP_ST_NEW,
    SMTP_ST_CONNECTING,
    SMTP_ST_TLS_HANDSHAKE, /* implicit TLS */
    SMTP_ST_GREETING,
    SMTP_ST_EHLO,
    SMTP_ST_HELO,
    SMTP_ST_STARTTLS,
    SMTP_ST_STARTTLS_HANDSHAKE,
    SMTP_ST_AUTH,
    SMTP_ST_READY,
    SMTP_ST_ENVELOPE, /* MAIL, RCPT and DATA */
    SMTP_ST_BODY,     /* streaming the message */
    SMTP_ST_DOT,      /* awaiting the reply to the final "." */
    SMTP_ST_RSET,
    SMTP_ST_QUIT,
    SMTP_ST_DEAD,
};

static const char *const smtp_state_names[] = {
    "NEW",  "CONNECTING", "TLS_HANDSHAKE", "GREETING",
    "EHLO", "HELO",       "STARTTLS",      "STARTTLS_HANDSHAKE",
    "AUTH", "READY",      "ENVELOPE",      "BODY",
    "DOT",  "RSET",       "QUIT",          "DEAD",
};

enum smtp_cmd_kind {
    SMTP_CMD_GREETING,
    SMTP_CMD_EHLO,
    SMTP_CMD_HELO,
    SMTP_CMD_STARTTLS,
    SMTP_CMD_AUTH,
    SMTP_CMD_MAIL,
    SMTP_CMD_RCPT,
    SMTP_CMD_DATA,
    SMTP_CMD_DOT,
    SMTP_CMD_RSET,
    SMTP_CMD_QUIT,
};

/* Mechanisms the server offers, as bits. */
enum {
    SMTP_AUTH_PLAIN = 1 << 0,
    SMTP_AUTH_LOGIN = 1 << 1,
    SMTP_AUTH_XOAUTH2 = 1 << 2,
    SMTP_AUTH_OAUTHBEARER = 1 << 3,
};

/* One complete reply: its code and its text lines joined by '\n'. */
struct smtp_reply {
    int code;
    const char *text;
    size_t nlines;
};

struct smtp_conn;
struct smtp_cmd;

typedef void (*smtp_reply_fn)(struct smtp_conn *c, struct smtp_cmd *cmd,
                              const struct smtp_reply *r);

struct smtp_cmd {
    struct smtp_cmd *next;
    enum smtp_cmd_kind kind;
    struct tbuf wire;    /* the line to send, CR LF included; empty: expect only */
    char *trace_as;      /* owned; what the trace shows instead of WIRE (secrets) */
    size_t rcpt;         /* RCPT: the recipient's index */
    unsigned auth_steps; /* AUTH: 334 challenges answered */
    smtp_reply_fn on_reply;
};

struct smtp_job {
    struct smtp_job *next;
    bool quit;
    smtp_done_fn quit_done;

    /* The envelope, copied. */
    char *from;
    char **rcpts;
    size_t nrcpt;
    uint64_t size;
    unsigned flags;
    unsigned dsn_notify;
    enum smtp_dsn_ret dsn_ret;
    char *dsn_envid;
    bool utf8; /* SMTPUTF8 needed */

    struct smtp_body body; /* borrowed until SENT returns */
    smtp_sent_fn sent;
    void *aux;

    /* Progress and outcome. */
    struct smtp_rcpt_result *res;
    char **rtext; /* owned texts of RES */
    size_t naccepted;
    size_t nrefused_temp;
    bool failed; /* the transaction cannot deliver any more */
    enum tern_status st;
    int code;
    char *text;
    bool temporary;
    bool need_rset;
    bool dot_sent;
    bool final_replied;
};

struct smtp_conn {
    struct loop *loop;
    struct smtp_opts opts;
    struct tern_err *err;
    struct line_conn *line;
    enum smtp_state state;

    struct smtp_cmd *pending, **pending_tail;
    struct smtp_cmd *inflight, **inflight_tail;
    size_t ninflight;

    /* The reply being received. */
    int rcode;
    size_t rlines;
    struct tbuf rtext;

    /* What the last EHLO said. */
    char **exts;
    size_t nexts;
    unsigned auth_mechs;
    uint64_t size_limit;

    struct smtp_job *jobs, **jobs_tail;
    struct smtp_job *cur;

    /* Body streaming. */
    char *chunk;
    struct smtp_data_enc enc;
    struct tbuf out;
    struct loop_timer *body_timer;

    bool starting_jobs;  /* smtp_next_job() is running */
    struct tbuf batch;   /* a pipelined group being assembled */
    struct tbuf scratch; /* flattened reply text for sentences */
    char *closed_text;   /* why the connection closed, for later calls */

    smtp_done_fn open_done;
    void *open_aux;
};

static void smtp_pump(struct smtp_conn *c);
static void smtp_fail(struct smtp_conn *c, enum tern_status st, const struct smtp_reply *r);
static void smtp_fail_quit(struct smtp_conn *c, enum tern_status st);
static void smtp_next_job(struct smtp_conn *c);
static void smtp_pump_body(struct smtp_conn *c);
static void smtp_send_ehlo(struct smtp_conn *c);

static void
smtp_trace(struct smtp_conn *c, bool sent, const char *p, size_t n)
{
    if (c->opts.trace)
        c->opts.trace(c->opts.trace_aux, sent, p, n);
}

static void
smtp_set_state(struct smtp_conn *c, enum smtp_state st)
{
    if (c->opts.trace && c->state != st) {
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "state %s -> %s", smtp_state_names[c->state],
                         smtp_state_names[st]);
        c->opts.trace(c->opts.trace_aux, false, msg, (size_t)n);
    }
    c->state = st;
}

/* The reply's text on one line, for sentences (borrowed until the next call). */
static const char *
smtp_flat(struct smtp_conn *c, const struct smtp_reply *r)
{
    tbuf_reset(&c->scratch);
    if (tbuf_add(&c->scratch, r->text, strlen(r->text)))
        return "";
    char *p = tbuf_ptr(&c->scratch);
    for (size_t i = 0; i < tbuf_len(&c->scratch); i++)
        if (p[i] == '\n')
            p[i] = ' ';
    return p;
}

/* ---- flags, limits and checks ---- */

const char *
smtp_env_flag_name(unsigned bit)
{
#define SMTP_FLAG_CASE(name, b)                                                                    \
    if (bit == (1u << (b)))                                                                        \
        return #name;
    SMTP_ENV_FLAGS(SMTP_FLAG_CASE)
    return "?";
}

const char *
smtp_dsn_flag_name(unsigned bit)
{
    SMTP_DSN_FLAGS(SMTP_FLAG_CASE)
#undef SMTP_FLAG_CASE
    return "?";
}

void
smtp_limits_default(struct smtp_limits *lim)
{
    lim->line_max = SMTP_LINE_MAX_DEFAULT;
    lim->reply_lines_max = SMTP_REPLY_LINES_DEFAULT;
    lim->reply_bytes_max = SMTP_REPLY_BYTES_DEFAULT;
}

enum tern_status
smtp_addr_check(const char *p, size_t len, bool empty_ok, struct tern_err *err)
{
    if (!p)
        return tern_err_set(err, TERN_E_USAGE, "no address given");
    if (len == 0 && !empty_ok)
        return tern_err_set(err, TERN_E_USAGE, "empty recipient address");
    if (len > SMTP_ADDR_MAX)
        return tern_err_set(err, TERN_E_USAGE, "address of %zu bytes is longer than %d bytes", len,
                            SMTP_ADDR_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        /* RFC 5321 §4.1.2: no controls in a path; CR/LF would end the command. */
        if (ch < 0x20 || ch == 0x7f)
            return tern_err_set(err, TERN_E_USAGE,
                                "address contains a control character (byte %zu is 0x%02x)", i, ch);
        if (ch == '<' || ch == '>')
            return tern_err_set(err, TERN_E_USAGE, "address contains an angle bracket");
    }
    return TERN_OK;
}

static bool
smtp_is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

/* RFC 3461 §4: xtext, "+" and "=" and bytes outside 33-126 as "+XX". */
static enum tern_status
smtp_add_xtext(struct tbuf *out, const char *s)
{
    enum tern_status st = TERN_OK;
    for (; *s && !st; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 33 || ch > 126 || ch == '+' || ch == '=')
            st = tbuf_addf(out, "+%02X", ch);
        else
            st = tbuf_addc(out, (char)ch);
    }
    return st;
}

/* ---- the DATA encoder (RFC 5321 §4.5.2) ---- */

void
smtp_data_enc_init(struct smtp_data_enc *e)
{
    e->at_line_start = true;
    e->pending_cr = false;
    e->in_bytes = 0;
    e->out_bytes = 0;
}

enum tern_status
smtp_data_enc_add(struct smtp_data_enc *e, const char *p, size_t n, struct tbuf *out)
{
    size_t before = tbuf_len(out);
    enum tern_status st = TERN_OK;
    size_t i = 0;
    while (i < n && !st) {
        char ch = p[i];
        if (e->pending_cr) {
            /* A CR ends a line whatever follows it; a LF right after is the same line end. */
            e->pending_cr = false;
            e->at_line_start = true;
            st = tbuf_add(out, "\r\n", 2);
            if (ch == '\n')
                i++;
            continue;
        }
        if (ch == '\r') {
            e->pending_cr = true;
            i++;
            continue;
        }
        if (ch == '\n') {
            e->at_line_start = true;
            st = tbuf_add(out, "\r\n", 2);
            i++;
            continue;
        }
        if (e->at_line_start && ch == '.' && (st = tbuf_addc(out, '.')))
            break;
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\n')
            j++;
        st = tbuf_add(out, p + i, j - i);
        e->at_line_start = false;
        i = j;
    }
    if (!st)
        e->in_bytes += n;
    e->out_bytes += tbuf_len(out) - before;
    return st;
}

enum tern_status
smtp_data_enc_finish(struct smtp_data_enc *e, struct tbuf *out)
{
    size_t before = tbuf_len(out);
    enum tern_status st = TERN_OK;
    if (e->pending_cr || !e->at_line_start)
        st = tbuf_add(out, "\r\n", 2);
    e->pending_cr = false;
    e->at_line_start = true;
    if (!st)
        st = tbuf_add(out, ".\r\n", 3);
    e->out_bytes += tbuf_len(out) - before;
    return st;
}

enum tern_status
smtp_read_fd(void *aux, char *buf, size_t cap, size_t *got)
{
    int fd = *(const int *)aux;
    *got = 0;
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n >= 0) {
            *got = (size_t)n;
            return TERN_OK;
        }
        if (errno != EINTR)
            return TERN_E_IO;
    }
}

/* ---- extensions ---- */

static void
smtp_exts_clear(struct smtp_conn *c)
{
    for (size_t i = 0; i < c->nexts; i++)
        free(c->exts[i]);
    free(c->exts);
    c->exts = NULL;
    c->nexts = 0;
    c->auth_mechs = 0;
    c->size_limit = 0;
}

bool
smtp_has_ext(const struct smtp_conn *c, const char *keyword)
{
    for (size_t i = 0; i < c->nexts; i++)
        if (strcasecmp(c->exts[i], keyword) == 0)
            return true;
    return false;
}

uint64_t
smtp_size_limit(const struct smtp_conn *c)
{
    return c->size_limit;
}

static bool
smtp_word_is(const char *p, size_t n, const char *word)
{
    return strlen(word) == n && strncasecmp(p, word, n) == 0;
}

/* Notes the mechanisms in the space-separated list P (N bytes). */
static void
smtp_note_mechs(struct smtp_conn *c, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && p[i] == ' ')
            i++;
        size_t j = i;
        while (j < n && p[j] != ' ')
            j++;
        if (smtp_word_is(p + i, j - i, "PLAIN"))
            c->auth_mechs |= SMTP_AUTH_PLAIN;
        else if (smtp_word_is(p + i, j - i, "LOGIN"))
            c->auth_mechs |= SMTP_AUTH_LOGIN;
        else if (smtp_word_is(p + i, j - i, "XOAUTH2"))
            c->auth_mechs |= SMTP_AUTH_XOAUTH2;
        else if (smtp_word_is(p + i, j - i, "OAUTHBEARER"))
            c->auth_mechs |= SMTP_AUTH_OAUTHBEARER;
        i = j;
    }
}

/* SIZE's parameter (RFC 1870 §4): digits; anything else means no limit known. */
static uint64_t
smtp_parse_size(const char *p, size_t n)
{
    uint64_t v = 0;
    if (n == 0 || n > 19)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    return v;
}

/* One EHLO line after the first: "KEYWORD [params]" (RFC 5321 §4.1.1.1). */
static enum tern_status
smtp_note_ext(struct smtp_conn *c, const char *p, size_t n)
{
    size_t kw = 0;
    while (kw < n && p[kw] != ' ' && p[kw] != '=')
        kw++;
    if (kw == 0)
        return TERN_OK;
    const char *params = p + kw;
    size_t plen = n - kw;
    if (plen && (params[0] == ' ' || params[0] == '=')) {
        params++;
        plen--;
    }
    /* "AUTH=PLAIN LOGIN" is the pre-standard form some servers still send. */
    if (smtp_word_is(p, kw, "AUTH"))
        smtp_note_mechs(c, params, plen);
    else if (smtp_word_is(p, kw, "SIZE"))
        c->size_limit = smtp_parse_size(params, plen);
    char **v = realloc(c->exts, (c->nexts + 1) * sizeof(*v));
    if (!v)
        return TERN_E_NOMEM;
    c->exts = v;
    if (!(c->exts[c->nexts] = strndup(p, kw)))
        return TERN_E_NOMEM;
    c->nexts++;
    return TERN_OK;
}

static enum tern_status
smtp_parse_ehlo(struct smtp_conn *c, const struct smtp_reply *r)
{
    smtp_exts_clear(c);
    const char *p = r->text;
    const char *nl = strchr(p, '\n');
    /* The first line is the server's name and greeting. */
    while (nl) {
        p = nl + 1;
        nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        enum tern_status st = smtp_note_ext(c, p, n);
        if (st)
            return st;
    }
    return TERN_OK;
}

/* ---- commands ---- */

static void
smtp_cmd_free(struct smtp_cmd *cmd)
{
    if (!cmd)
        return;
    tbuf_free(&cmd->wire);
    free(cmd->trace_as);
    free(cmd);
}

static void
smtp_cmd_list_free(struct smtp_cmd *cmd)
{
    while (cmd) {
        struct smtp_cmd *next = cmd->next;
        smtp_cmd_free(cmd);
        cmd = next;
    }
}

static struct smtp_cmd *
smtp_cmd_new(enum smtp_cmd_kind kind, smtp_reply_fn on_reply)
{
    struct smtp_cmd *cmd = calloc(1, sizeof(*cmd));
    if (!cmd)
        return NULL;
    cmd->kind = kind;
    cmd->on_reply = on_reply;
    tbuf_init(&cmd->wire, 0);
    return cmd;
}

/* Queues CMD for sending; it is owned by the connection from here on. */
static void
smtp_enqueue(struct smtp_conn *c, struct smtp_cmd *cmd)
{
    cmd->next = NULL;
    *c->pending_tail = cmd;
    c->pending_tail = &cmd->next;
}

static void
smtp_push_inflight(struct smtp_conn *c, struct smtp_cmd *cmd)
{
    cmd->next = NULL;
    *c->inflight_tail = cmd;
    c->inflight_tail = &cmd->next;
    c->ninflight++;
}

/* Expects a reply with nothing to send (the greeting, the final "."). */
static enum tern_status
smtp_expect(struct smtp_conn *c, enum smtp_cmd_kind kind, smtp_reply_fn on_reply)
{
    struct smtp_cmd *cmd = smtp_cmd_new(kind, on_reply);
    if (!cmd)
        return TERN_E_NOMEM;
    smtp_push_inflight(c, cmd);
    line_set_waiting(c->line, true);
    return TERN_OK;
}

/* Builds a command from FMT and queues it; TERN_E_NOMEM. */
static enum tern_status smtp_queue(struct smtp_conn *c, enum smtp_cmd_kind kind,
                                   smtp_reply_fn on_reply, struct smtp_cmd **out, const char *fmt,
                                   ...) __attribute__((format(printf, 5, 6)));

static enum tern_status
smtp_queue(struct smtp_conn *c, enum smtp_cmd_kind kind, smtp_reply_fn on_reply,
           struct smtp_cmd **out, const char *fmt, ...)
{
    struct smtp_cmd *cmd = smtp_cmd_new(kind, on_reply);
    if (!cmd)
        return TERN_E_NOMEM;
    va_list ap;
    va_start(ap, fmt);
    enum tern_status st = tbuf_vaddf(&cmd->wire, fmt, ap);
    va_end(ap);
    if (!st)
        st = tbuf_add(&cmd->wire, "\r\n", 2);
    if (st) {
        smtp_cmd_free(cmd);
        return st;
    }
    smtp_enqueue(c, cmd);
    if (out)
        *out = cmd;
    return TERN_OK;
}

/* Commands after which another may follow in the same group (RFC 2920 §3.1). */
static bool
smtp_cmd_groupable(enum smtp_cmd_kind kind)
{
    return kind == SMTP_CMD_MAIL || kind == SMTP_CMD_RCPT || kind == SMTP_CMD_RSET;
}

static bool
smtp_cmd_sendable(const struct smtp_conn *c, const struct smtp_cmd *cmd)
{
    if (!c->inflight)
        return true;
    if (!smtp_has_ext(c, "PIPELINING") || c->ninflight >= SMTP_PIPELINE_MAX)
        return false;
    const struct smtp_cmd *last = c->inflight;
    while (last->next)
        last = last->next;
    if (!smtp_cmd_groupable(last->kind))
        return false;
    return smtp_cmd_groupable(cmd->kind) || cmd->kind == SMTP_CMD_DATA ||
           cmd->kind == SMTP_CMD_QUIT;
}

static void
smtp_trace_cmd(struct smtp_conn *c, const struct smtp_cmd *cmd)
{
    if (!c->opts.trace)
        return;
    if (cmd->trace_as) {
        smtp_trace(c, true, cmd->trace_as, strlen(cmd->trace_as));
        return;
    }
    size_t n = tbuf_len(&cmd->wire);
    const char *p = tbuf_ptr(&cmd->wire);
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r'))
        n--;
    smtp_trace(c, true, p, n);
}

/* Sends what may be sent now, as one write. */
static void
smtp_pump(struct smtp_conn *c)
{
    if (c->state == SMTP_ST_DEAD)
        return;
    tbuf_reset(&c->batch);
    enum tern_status st = TERN_OK;
    while (c->pending && smtp_cmd_sendable(c, c->pending)) {
        struct smtp_cmd *cmd = c->pending;
        c->pending = cmd->next;
        if (!c->pending)
            c->pending_tail = &c->pending;
        smtp_push_inflight(c, cmd);
        smtp_trace_cmd(c, cmd);
        if ((st = tbuf_add(&c->batch, tbuf_ptr(&cmd->wire), tbuf_len(&cmd->wire))))
            break;
        /* The secret is not kept once it is on its way. */
        tbuf_free(&cmd->wire);
    }
    if (!st && tbuf_len(&c->batch))
        st = line_send(c->line, tbuf_ptr(&c->batch), tbuf_len(&c->batch));
    if (tbuf_len(&c->batch))
        memset(tbuf_ptr(&c->batch), 0, tbuf_len(&c->batch));
    tbuf_reset(&c->batch);
    if (st) {
        smtp_fail(c, st, NULL);
        return;
    }
    line_set_waiting(c->line, c->ninflight > 0);
}

/* Drops the commands not sent yet (a failed transaction sends no more). */
static void
smtp_drop_pending(struct smtp_conn *c)
{
    smtp_cmd_list_free(c->pending);
    c->pending = NULL;
    c->pending_tail = &c->pending;
}

/* Sends a line outside the command queue (SASL responses, the "." of a dead DATA). */
static enum tern_status
smtp_send_raw(struct smtp_conn *c, const char *line, const char *trace_as)
{
    const char *shown = trace_as ? trace_as : line;
    smtp_trace(c, true, shown, strlen(shown));
    struct tbuf b;
    tbuf_init(&b, 0);
    enum tern_status st = tbuf_adds(&b, line);
    if (!st)
        st = tbuf_add(&b, "\r\n", 2);
    if (!st)
        st = line_send(c->line, tbuf_ptr(&b), tbuf_len(&b));
    if (tbuf_len(&b))
        memset(tbuf_ptr(&b), 0, tbuf_len(&b));
    tbuf_free(&b);
    return st;
}

/* ---- jobs ---- */

static void
smtp_job_free(struct smtp_job *job)
{
    if (!job)
        return;
    free(job->from);
    for (size_t i = 0; i < job->nrcpt; i++) {
        if (job->rcpts)
            free(job->rcpts[i]);
        if (job->rtext)
            free(job->rtext[i]);
    }
    free(job->rcpts);
    free(job->rtext);
    free(job->res);
    free(job->dsn_envid);
    free(job->text);
    free(job);
}

/* Records the reply that decided the job's outcome. */
static void
smtp_job_note_reply(struct smtp_job *job, const struct smtp_reply *r)
{
    job->code = r->code;
    job->temporary = r->code / 100 == 4;
    free(job->text);
    job->text = strdup(r->text);
}

/* Calls the job's callback once with its outcome, then frees it. */
static void
smtp_job_report(struct smtp_job *job, enum tern_status st)
{
    if (job->quit) {
        if (job->quit_done)
            job->quit_done(job->aux, st);
        smtp_job_free(job);
        return;
    }
    for (size_t i = 0; i < job->nrcpt; i++) {
        job->res[i].addr = job->rcpts[i];
        job->res[i].text = job->rtext[i] ? job->rtext[i] : "";
    }
    struct smtp_result r = {0};
    r.code = job->code;
    r.text = job->text ? job->text : "";
    r.temporary = job->temporary;
    r.outcome_unknown = job->dot_sent && !job->final_replied && st != TERN_OK;
    r.rcpts = job->res;
    r.nrcpt = job->nrcpt;
    r.naccepted = job->naccepted;
    if (job->sent)
        job->sent(job->aux, st, &r);
    smtp_job_free(job);
}

/* The current job is over: report it and go on with the next. */
static void
smtp_job_finish(struct smtp_conn *c, enum tern_status st)
{
    struct smtp_job *job = c->cur;
    c->cur = NULL;
    smtp_set_state(c, SMTP_ST_READY);
    smtp_job_report(job, st);
    smtp_next_job(c);
}

static void
smtp_on_rset_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    struct smtp_job *job = c->cur;
    c->cur = NULL;
    bool ok = r->code / 100 == 2;
    if (ok)
        smtp_set_state(c, SMTP_ST_READY);
    /* The error slot still says why the job failed while its callback runs. */
    smtp_job_report(job, job->st);
    if (ok) {
        smtp_next_job(c);
        return;
    }
    if (c->state == SMTP_ST_DEAD)
        return;
    tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s refused RSET: %d %s", c->opts.host,
                 r->code, smtp_flat(c, r));
    smtp_fail_quit(c, TERN_E_REFUSED);
}

/*
 * A failed transaction with no reply outstanding: RSET (RFC 5321 §4.1.1.5)
 * so the next one starts clean, then the callback.
 */
static void
smtp_job_settle(struct smtp_conn *c)
{
    smtp_set_state(c, SMTP_ST_RSET);
    enum tern_status st = smtp_queue(c, SMTP_CMD_RSET, smtp_on_rset_reply, NULL, "RSET");
    if (st) {
        smtp_fail(c, st, NULL);
        return;
    }
    smtp_pump(c);
}

/* Marks the current job failed (the first cause wins) and stops sending for it. */
static void smtp_job_fail(struct smtp_conn *c, enum tern_status st, const struct smtp_reply *r,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
smtp_job_fail(struct smtp_conn *c, enum tern_status st, const struct smtp_reply *r, const char *fmt,
              ...)
{
    struct smtp_job *job = c->cur;
    if (job->failed)
        return;
    job->failed = true;
    job->st = st;
    job->need_rset = true;
    if (r)
        smtp_job_note_reply(job, r);
    struct tbuf b;
    tbuf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    tern_err_set(c->err, st, "%s", tbuf_len(&b) ? tbuf_ptr(&b) : "SMTP transaction failed");
    tbuf_free(&b);
    smtp_drop_pending(c);
}

/* After each reply of a failed job: settle once nothing is outstanding. */
static void
smtp_job_check_settled(struct smtp_conn *c)
{
    if (c->state == SMTP_ST_DEAD || !c->cur || !c->cur->failed)
        return;
    if (!c->inflight && !c->pending && c->state == SMTP_ST_ENVELOPE)
        smtp_job_settle(c);
}

static void
smtp_on_mail_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    struct smtp_job *job = c->cur;
    if (r->code / 100 != 2)
        smtp_job_fail(c, TERN_E_REFUSED, r, "SMTP server %s refused the sender <%s>: %d %s",
                      c->opts.host, job->from, r->code, smtp_flat(c, r));
    smtp_job_check_settled(c);
}

static void
smtp_on_rcpt_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    struct smtp_job *job = c->cur;
    size_t i = cmd->rcpt;
    job->res[i].code = r->code;
    free(job->rtext[i]);
    job->rtext[i] = strdup(r->text);
    if (r->code / 100 == 2)
        job->naccepted++;
    else if (r->code / 100 == 4)
        job->nrefused_temp++;
    /* RFC 5321 §3.3: no DATA unless at least one RCPT succeeded. */
    if (i + 1 == job->nrcpt && job->naccepted == 0 && !job->failed) {
        smtp_job_fail(c, TERN_E_REFUSED, r, "SMTP server %s refused every recipient (%s%s: %d %s)",
                      c->opts.host, job->nrcpt > 1 ? "the last, " : "", job->rcpts[i], r->code,
                      smtp_flat(c, r));
        /* Temporary only when every refusal was. */
        job->temporary = job->nrefused_temp == job->nrcpt;
    }
    smtp_job_check_settled(c);
}

static void
smtp_on_dot_discard_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    smtp_set_state(c, SMTP_ST_ENVELOPE);
    smtp_job_check_settled(c);
}

static void
smtp_on_dot_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    struct smtp_job *job = c->cur;
    job->final_replied = true;
    smtp_job_note_reply(job, r);
    if (r->code / 100 == 2) {
        smtp_job_finish(c, TERN_OK);
        return;
    }
    /* RFC 5321 §4.2.1: 4yz is transient, 5yz permanent. */
    tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s did not take the message (%s): %d %s",
                 c->opts.host, r->code / 100 == 4 ? "temporary failure" : "permanent failure",
                 r->code, smtp_flat(c, r));
    smtp_job_finish(c, TERN_E_REFUSED);
}

static void
smtp_on_body_timer(void *aux)
{
    struct smtp_conn *c = aux;
    c->body_timer = NULL;
    smtp_pump_body(c);
}

static void
smtp_body_wait(struct smtp_conn *c, int ms)
{
    if (c->body_timer)
        return;
    if (loop_timer_add(c->loop, ms, smtp_on_body_timer, c, &c->body_timer))
        smtp_fail(c, TERN_E_NOMEM, NULL);
}

/* The end of the message: the final "." and the wait for its reply. */
static void
smtp_send_dot(struct smtp_conn *c)
{
    struct smtp_job *job = c->cur;
    tbuf_reset(&c->out);
    enum tern_status st = smtp_data_enc_finish(&c->enc, &c->out);
    if (!st)
        st = line_send(c->line, tbuf_ptr(&c->out), tbuf_len(&c->out));
    tbuf_reset(&c->out);
    if (st) {
        smtp_fail(c, st, NULL);
        return;
    }
    if (c->opts.trace) {
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "[%" PRIu64 " bytes of message data]", c->enc.in_bytes);
        smtp_trace(c, true, msg, (size_t)n);
        smtp_trace(c, true, ".", 1);
    }
    job->dot_sent = true;
    smtp_set_state(c, SMTP_ST_DOT);
    st = smtp_expect(c, SMTP_CMD_DOT, smtp_on_dot_reply);
    if (st)
        smtp_fail(c, st, NULL);
}

/*
 * Streams the message: reads and encodes a chunk whenever the line
 * engine's send queue is empty, so only about one chunk is ever held; a
 * full queue is taken up again on LINE_EV_DRAINED.
 */
static void
smtp_pump_body(struct smtp_conn *c)
{
    for (int i = 0; i < SMTP_BODY_BURST; i++) {
        if (c->state != SMTP_ST_BODY)
            return;
        if (!line_send_idle(c->line))
            return; /* LINE_EV_DRAINED calls again */
        struct smtp_job *job = c->cur;
        size_t got = 0;
        enum tern_status st = job->body.read(job->body.aux, c->chunk, SMTP_BODY_CHUNK, &got);
        if (!st && got > SMTP_BODY_CHUNK)
            st = TERN_E_USAGE;
        if (st) {
            /* No "." ever follows: the server discards what it received. */
            tern_err_set(c->err, st,
                         "reading the message to send failed (%s); the connection to %s was "
                         "dropped so that the server discards the partial message",
                         tern_status_name(st), c->opts.host);
            smtp_fail(c, st, NULL);
            return;
        }
        if (got == 0) {
            smtp_send_dot(c);
            return;
        }
        tbuf_reset(&c->out);
        st = smtp_data_enc_add(&c->enc, c->chunk, got, &c->out);
        if (!st)
            st = line_send(c->line, tbuf_ptr(&c->out), tbuf_len(&c->out));
        tbuf_reset(&c->out);
        if (st) {
            smtp_fail(c, st, NULL);
            return;
        }
    }
    /* Let the loop breathe between bursts. */
    smtp_body_wait(c, 0);
}

static void
smtp_on_data_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    struct smtp_job *job = c->cur;
    if (r->code == 354 && job->failed) {
        /*
         * The server took DATA though the transaction failed (pipelined,
         * RFC 2920 §3.1): end the empty message with "." and reset.
         */
        smtp_set_state(c, SMTP_ST_DOT);
        enum tern_status st = smtp_send_raw(c, ".", NULL);
        if (!st)
            st = smtp_expect(c, SMTP_CMD_DOT, smtp_on_dot_discard_reply);
        if (st)
            smtp_fail(c, st, NULL);
        return;
    }
    if (r->code == 354) {
        smtp_set_state(c, SMTP_ST_BODY);
        smtp_data_enc_init(&c->enc);
        line_set_waiting(c->line, false);
        smtp_pump_body(c);
        return;
    }
    if (!job->failed)
        smtp_job_fail(c, TERN_E_REFUSED, r, "SMTP server %s refused DATA: %d %s", c->opts.host,
                      r->code, smtp_flat(c, r));
    smtp_job_check_settled(c);
}

/* The MAIL FROM parameters (RFC 6152, RFC 6531, RFC 1870, RFC 3461). */
static enum tern_status
smtp_mail_params(struct smtp_conn *c, const struct smtp_job *job, struct tbuf *b)
{
    enum tern_status st = TERN_OK;
    if (job->flags & SMTP_ENV_8BIT)
        st = tbuf_adds(b, " BODY=8BITMIME");
    if (!st && job->utf8)
        st = tbuf_adds(b, " SMTPUTF8");
    if (!st && job->size && smtp_has_ext(c, "SIZE"))
        st = tbuf_addf(b, " SIZE=%" PRIu64, job->size);
    if (!st && smtp_has_ext(c, "DSN")) {
        if (job->dsn_ret != SMTP_DSN_RET_DEFAULT)
            st = tbuf_adds(b, job->dsn_ret == SMTP_DSN_RET_FULL ? " RET=FULL" : " RET=HDRS");
        if (!st && job->dsn_envid) {
            st = tbuf_adds(b, " ENVID=");
            if (!st)
                st = smtp_add_xtext(b, job->dsn_envid);
        }
    }
    return st;
}

static enum tern_status
smtp_rcpt_params(struct smtp_conn *c, const struct smtp_job *job, struct tbuf *b)
{
    if (!job->dsn_notify || !smtp_has_ext(c, "DSN"))
        return TERN_OK;
    enum tern_status st = tbuf_adds(b, " NOTIFY=");
    if (job->dsn_notify & SMTP_DSN_NEVER)
        return st ? st : tbuf_adds(b, "NEVER");
    static const struct {
        unsigned bit;
        const char *word;
    } words[] = {
        {SMTP_DSN_SUCCESS, "SUCCESS"}, {SMTP_DSN_FAILURE, "FAILURE"}, {SMTP_DSN_DELAY, "DELAY"}};
    bool first = true;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]) && !st; i++) {
        if (!(job->dsn_notify & words[i].bit))
            continue;
        st = tbuf_addf(b, "%s%s", first ? "" : ",", words[i].word);
        first = false;
    }
    return st;
}

/* Starts the transaction of the current job, or reports why it cannot start. */
static void
smtp_job_start(struct smtp_conn *c)
{
    struct smtp_job *job = c->cur;
    if (c->size_limit && job->size > c->size_limit) {
        /* RFC 1870 §6: do not send what the server said it will refuse. */
        tern_err_set(c->err, TERN_E_REFUSED,
                     "SMTP server %s: message of %" PRIu64
                     " bytes exceeds the server's limit of %" PRIu64 " bytes",
                     c->opts.host, job->size, c->size_limit);
        smtp_job_finish(c, TERN_E_REFUSED);
        return;
    }
    if ((job->flags & SMTP_ENV_8BIT) && !smtp_has_ext(c, "8BITMIME")) {
        tern_err_set(c->err, TERN_E_UNSUPPORTED,
                     "SMTP server %s does not offer 8BITMIME; the message has 8-bit data and "
                     "must be re-encoded",
                     c->opts.host);
        smtp_job_finish(c, TERN_E_UNSUPPORTED);
        return;
    }
    if (job->utf8 && !smtp_has_ext(c, "SMTPUTF8")) {
        tern_err_set(c->err, TERN_E_UNSUPPORTED,
                     "SMTP server %s does not offer SMTPUTF8, which the message needs "
                     "(internationalized addresses or headers)",
                     c->opts.host);
        smtp_job_finish(c, TERN_E_UNSUPPORTED);
        return;
    }
    smtp_set_state(c, SMTP_ST_ENVELOPE);
    struct tbuf params;
    tbuf_init(&params, 0);
    enum tern_status st = smtp_mail_params(c, job, &params);
    if (!st)
        st = smtp_queue(c, SMTP_CMD_MAIL, smtp_on_mail_reply, NULL, "MAIL FROM:<%s>%s", job->from,
                        tbuf_ptr(&params));
    for (size_t i = 0; i < job->nrcpt && !st; i++) {
        struct smtp_cmd *cmd = NULL;
        tbuf_reset(&params);
        st = smtp_rcpt_params(c, job, &params);
        if (!st)
            st = smtp_queue(c, SMTP_CMD_RCPT, smtp_on_rcpt_reply, &cmd, "RCPT TO:<%s>%s",
                            job->rcpts[i], tbuf_ptr(&params));
        if (!st)
            cmd->rcpt = i;
    }
    tbuf_free(&params);
    if (!st)
        st = smtp_queue(c, SMTP_CMD_DATA, smtp_on_data_reply, NULL, "DATA");
    if (st) {
        smtp_fail(c, st, NULL);
        return;
    }
    smtp_pump(c);
}

static void
smtp_on_quit_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    /* Whatever the answer, the session is over. */
    smtp_fail(c, TERN_E_IO, NULL);
}

/* Starts queued jobs while the connection is idle. */
static void
smtp_next_job(struct smtp_conn *c)
{
    /* A job that fails at once comes back here; the outer loop goes on. */
    if (c->starting_jobs)
        return;
    c->starting_jobs = true;
    while (c->state == SMTP_ST_READY && !c->cur && c->jobs) {
        struct smtp_job *job = c->jobs;
        c->jobs = job->next;
        if (!c->jobs)
            c->jobs_tail = &c->jobs;
        job->next = NULL;
        c->cur = job;
        if (job->quit) {
            smtp_set_state(c, SMTP_ST_QUIT);
            enum tern_status st = smtp_queue(c, SMTP_CMD_QUIT, smtp_on_quit_reply, NULL, "QUIT");
            if (st)
                smtp_fail(c, st, NULL);
            else
                smtp_pump(c);
            break;
        }
        smtp_job_start(c);
    }
    c->starting_jobs = false;
}

/* ---- failure ---- */

/*
 * Closes the connection and calls every pending callback once. R is the
 * reply that ended it (a 421), if any.
 */
static void
smtp_fail(struct smtp_conn *c, enum tern_status st, const struct smtp_reply *r)
{
    if (c->state == SMTP_ST_DEAD)
        return;
    bool quitting = c->state == SMTP_ST_QUIT;
    smtp_set_state(c, SMTP_ST_DEAD);
    loop_timer_cancel(c->body_timer);
    c->body_timer = NULL;
    /* Drop the socket now: the server sees the close (TESTMATRIX F3). */
    line_close(c->line);
    smtp_cmd_list_free(c->inflight);
    smtp_cmd_list_free(c->pending);
    c->inflight = c->pending = NULL;
    c->inflight_tail = &c->inflight;
    c->pending_tail = &c->pending;
    c->ninflight = 0;
    free(c->closed_text);
    c->closed_text = strdup(tern_err_msg(c->err));
    /* Detach everything first: callbacks may try to submit more. */
    struct smtp_job *cur = c->cur;
    struct smtp_job *jobs = c->jobs;
    c->cur = NULL;
    c->jobs = NULL;
    c->jobs_tail = &c->jobs;
    if (cur) {
        enum tern_status jst = st;
        if (cur->quit && quitting)
            jst = TERN_OK;
        else if (cur->failed)
            jst = cur->st; /* the transaction had already failed for its own reason */
        if (!cur->quit && r && !cur->failed) {
            smtp_job_note_reply(cur, r);
            /* A reply to the final "." says the message was not taken. */
            cur->final_replied = cur->dot_sent;
        }
        smtp_job_report(cur, jst);
    }
    while (jobs) {
        struct smtp_job *next = jobs->next;
        if (r && !jobs->quit)
            smtp_job_note_reply(jobs, r);
        smtp_job_report(jobs, jobs->quit && quitting ? TERN_OK : st);
        jobs = next;
    }
    if (c->open_done) {
        smtp_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, st);
    }
}

/* Fails on a healthy connection: say QUIT first (best effort, not awaited). */
static void
smtp_fail_quit(struct smtp_conn *c, enum tern_status st)
{
    if (c->state == SMTP_ST_DEAD)
        return;
    smtp_send_raw(c, "QUIT", NULL);
    smtp_fail(c, st, NULL);
}

/* ---- connection phases ---- */

static void
smtp_ready(struct smtp_conn *c)
{
    smtp_set_state(c, SMTP_ST_READY);
    if (c->open_done) {
        smtp_done_fn fn = c->open_done;
        c->open_done = NULL;
        fn(c->open_aux, TERN_OK);
    }
    smtp_next_job(c);
}

static void
smtp_on_auth_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    if (r->code / 100 == 2) {
        smtp_ready(c);
        return;
    }
    /* RFC 4954 §6: 535 bad credentials, 534 mechanism too weak, 454 temporary. */
    tern_err_set(c->err, TERN_E_AUTH, "SMTP server %s rejected the login of %s: %d %s",
                 c->opts.host, c->opts.user, r->code, smtp_flat(c, r));
    smtp_fail_quit(c, TERN_E_AUTH);
}

/*
 * A 334 challenge to AUTH (RFC 4954 §4). LOGIN answers the user name and
 * the password; a challenge after an initial response is an error report
 * (RFC 7628 §3.2.3), answered so that the server sends its final reply:
 * an empty response for XOAUTH2, %x01 for OAUTHBEARER; anything else is
 * cancelled with "*".
 */
static void
smtp_on_auth_challenge(struct smtp_conn *c, struct smtp_cmd *cmd)
{
    enum sasl_mech mech = c->opts.mech;
    unsigned step = cmd->auth_steps++;
    enum tern_status st;
    if (mech == SASL_LOGIN && step < 2) {
        const char *v = step == 0 ? c->opts.user : c->opts.secret;
        struct tbuf b;
        tbuf_init(&b, 0);
        st = sasl_b64_encode(v, strlen(v), &b);
        if (!st)
            st = smtp_send_raw(c, tbuf_ptr(&b), step == 0 ? NULL : "<secret>");
        if (tbuf_len(&b))
            memset(tbuf_ptr(&b), 0, tbuf_len(&b));
        tbuf_free(&b);
    } else if (mech == SASL_XOAUTH2 && step == 0) {
        st = smtp_send_raw(c, "", NULL);
    } else if (mech == SASL_OAUTHBEARER && step == 0) {
        st = smtp_send_raw(c, "AQ==", NULL);
    } else {
        st = smtp_send_raw(c, "*", NULL);
    }
    if (st)
        smtp_fail(c, st, NULL);
}

static void
smtp_step_auth(struct smtp_conn *c)
{
    if (!c->opts.user) {
        smtp_ready(c);
        return;
    }
    smtp_set_state(c, SMTP_ST_AUTH);
    enum sasl_mech mech = c->opts.mech;
    if (mech == SASL_AUTO) {
        if (c->auth_mechs & SMTP_AUTH_PLAIN)
            mech = SASL_PLAIN;
        else if (c->auth_mechs & SMTP_AUTH_LOGIN)
            mech = SASL_LOGIN;
        if (mech == SASL_AUTO) {
            tern_err_set(c->err, TERN_E_UNSUPPORTED,
                         "SMTP server %s offers no AUTH mechanism tern can use (PLAIN, LOGIN)",
                         c->opts.host);
            smtp_fail_quit(c, TERN_E_UNSUPPORTED);
            return;
        }
        c->opts.mech = mech;
    }
    unsigned bit = mech == SASL_PLAIN     ? SMTP_AUTH_PLAIN
                   : mech == SASL_LOGIN   ? SMTP_AUTH_LOGIN
                   : mech == SASL_XOAUTH2 ? SMTP_AUTH_XOAUTH2
                                          : SMTP_AUTH_OAUTHBEARER;
    if (!(c->auth_mechs & bit)) {
        tern_err_set(c->err, TERN_E_UNSUPPORTED, "SMTP server %s does not offer AUTH %s",
                     c->opts.host, sasl_mech_name(mech));
        smtp_fail_quit(c, TERN_E_UNSUPPORTED);
        return;
    }
    struct smtp_cmd *cmd = NULL;
    enum tern_status st;
    if (mech == SASL_LOGIN) {
        st = smtp_queue(c, SMTP_CMD_AUTH, smtp_on_auth_reply, &cmd, "AUTH LOGIN");
    } else {
        /* RFC 4954 §4: the initial response goes on the AUTH line. */
        struct tbuf raw, b64;
        tbuf_init(&raw, 0);
        tbuf_init(&b64, 0);
        st = sasl_initial_response(mech, c->opts.user, c->opts.secret, c->opts.host, c->opts.port,
                                   &raw);
        if (!st)
            st = sasl_b64_encode(tbuf_ptr(&raw), tbuf_len(&raw), &b64);
        if (!st)
            st = smtp_queue(c, SMTP_CMD_AUTH, smtp_on_auth_reply, &cmd, "AUTH %s %s",
                            sasl_mech_name(mech), tbuf_ptr(&b64));
        if (!st) {
            /* The trace shows the mechanism, never the response. */
            if (tbuf_len(&raw))
                memset(tbuf_ptr(&raw), 0, tbuf_len(&raw));
            tbuf_reset(&raw);
            st = tbuf_addf(&raw, "AUTH %s <secret>", sasl_mech_name(mech));
            if (!st && !(cmd->trace_as = tbuf_take(&raw)))
                st = TERN_E_NOMEM;
        }
        if (tbuf_len(&raw))
            memset(tbuf_ptr(&raw), 0, tbuf_len(&raw));
        if (tbuf_len(&b64))
            memset(tbuf_ptr(&b64), 0, tbuf_len(&b64));
        tbuf_free(&raw);
        tbuf_free(&b64);
    }
    if (st) {
        if (st == TERN_E_USAGE)
            tern_err_set(c->err, st, "the user name or secret cannot be sent with AUTH %s",
                         sasl_mech_name(mech));
        smtp_fail_quit(c, st);
        return;
    }
    smtp_pump(c);
}

static void
smtp_on_starttls_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    if (r->code != 220) {
        tern_err_set(c->err, TERN_E_TLS,
                     "SMTP server %s refused STARTTLS (%d %s); not continuing without TLS",
                     c->opts.host, r->code, smtp_flat(c, r));
        smtp_fail_quit(c, TERN_E_TLS);
        return;
    }
    /* RFC 3207 §4.2: what came after the go-ahead is never parsed. */
    smtp_set_state(c, SMTP_ST_STARTTLS_HANDSHAKE);
    line_set_waiting(c->line, false);
    enum tern_status st = line_start_tls(c->line);
    if (st)
        smtp_fail(c, st, NULL);
}

/* After EHLO or HELO: STARTTLS when it is required and not done, else AUTH. */
static void
smtp_after_hello(struct smtp_conn *c)
{
    if (c->opts.security == SMTP_SEC_STARTTLS && !line_is_tls(c->line)) {
        if (!smtp_has_ext(c, "STARTTLS")) {
            tern_err_set(c->err, TERN_E_TLS,
                         "SMTP server %s does not offer STARTTLS; refusing to continue in "
                         "cleartext (use smtps:// or tls = off)",
                         c->opts.host);
            smtp_fail_quit(c, TERN_E_TLS);
            return;
        }
        smtp_set_state(c, SMTP_ST_STARTTLS);
        enum tern_status st =
            smtp_queue(c, SMTP_CMD_STARTTLS, smtp_on_starttls_reply, NULL, "STARTTLS");
        if (st)
            smtp_fail(c, st, NULL);
        else
            smtp_pump(c);
        return;
    }
    smtp_step_auth(c);
}

static void
smtp_on_helo_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    if (r->code / 100 != 2) {
        tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s refused HELO: %d %s", c->opts.host,
                     r->code, smtp_flat(c, r));
        smtp_fail_quit(c, TERN_E_REFUSED);
        return;
    }
    smtp_exts_clear(c);
    smtp_after_hello(c);
}

static void
smtp_on_ehlo_reply(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    if (r->code / 100 == 2) {
        enum tern_status st = smtp_parse_ehlo(c, r);
        if (st) {
            smtp_fail(c, st, NULL);
            return;
        }
        smtp_after_hello(c);
        return;
    }
    if (c->opts.security == SMTP_SEC_STARTTLS && !line_is_tls(c->line)) {
        /* Without ESMTP there is no STARTTLS: never fall back to HELO here. */
        tern_err_set(c->err, TERN_E_TLS,
                     "SMTP server %s refused EHLO (%d %s), so it cannot do STARTTLS; refusing "
                     "to continue in cleartext",
                     c->opts.host, r->code, smtp_flat(c, r));
        smtp_fail_quit(c, TERN_E_TLS);
        return;
    }
    if (r->code / 100 != 5) {
        tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s refused EHLO: %d %s", c->opts.host,
                     r->code, smtp_flat(c, r));
        smtp_fail_quit(c, TERN_E_REFUSED);
        return;
    }
    /* RFC 5321 §3.2: a server that does not know EHLO may know HELO. */
    smtp_set_state(c, SMTP_ST_HELO);
    enum tern_status st =
        smtp_queue(c, SMTP_CMD_HELO, smtp_on_helo_reply, NULL, "HELO %s", c->opts.ehlo_name);
    if (st)
        smtp_fail(c, st, NULL);
    else
        smtp_pump(c);
}

static void
smtp_send_ehlo(struct smtp_conn *c)
{
    smtp_set_state(c, SMTP_ST_EHLO);
    enum tern_status st =
        smtp_queue(c, SMTP_CMD_EHLO, smtp_on_ehlo_reply, NULL, "EHLO %s", c->opts.ehlo_name);
    if (st)
        smtp_fail(c, st, NULL);
    else
        smtp_pump(c);
}

static void
smtp_on_greeting(struct smtp_conn *c, struct smtp_cmd *cmd, const struct smtp_reply *r)
{
    if (r->code == 220) {
        smtp_send_ehlo(c);
        return;
    }
    /* RFC 5321 §3.1: 554 instead of 220 means no service here. */
    enum tern_status st = r->code >= 400 ? TERN_E_REFUSED : TERN_E_PROTO;
    tern_err_set(c->err, st, "SMTP server %s %s: %d %s", c->opts.host,
                 st == TERN_E_REFUSED ? "refused the connection" : "sent no valid greeting",
                 r->code, smtp_flat(c, r));
    smtp_fail_quit(c, st);
}

/* ---- replies ---- */

/* A reply when no command awaits one. */
static void
smtp_on_unexpected(struct smtp_conn *c, const struct smtp_reply *r)
{
    if (c->state == SMTP_ST_BODY && r->code >= 400) {
        /* The server gave up on the message while it was being sent. */
        tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s stopped the message: %d %s",
                     c->opts.host, r->code, smtp_flat(c, r));
        smtp_fail(c, TERN_E_REFUSED, r);
        return;
    }
    tern_err_set(c->err, TERN_E_PROTO, "SMTP server %s sent a reply nothing asked for: %d %s",
                 c->opts.host, r->code, smtp_flat(c, r));
    smtp_fail(c, TERN_E_PROTO, NULL);
}

static void
smtp_dispatch(struct smtp_conn *c, const struct smtp_reply *r)
{
    if (r->code == 421) {
        /* RFC 5321 §3.8: the server is closing the channel. */
        tern_err_set(c->err, TERN_E_REFUSED, "SMTP server %s closed the connection: %d %s",
                     c->opts.host, r->code, smtp_flat(c, r));
        smtp_fail(c, TERN_E_REFUSED, r);
        return;
    }
    struct smtp_cmd *cmd = c->inflight;
    if (!cmd) {
        smtp_on_unexpected(c, r);
        return;
    }
    if (r->code == 334 && cmd->kind == SMTP_CMD_AUTH) {
        smtp_on_auth_challenge(c, cmd);
        return;
    }
    if (r->code / 100 == 3 && cmd->kind != SMTP_CMD_DATA) {
        tern_err_set(c->err, TERN_E_PROTO, "SMTP server %s sent an intermediate reply %d %s",
                     c->opts.host, r->code, smtp_flat(c, r));
        smtp_fail(c, TERN_E_PROTO, NULL);
        return;
    }
    c->inflight = cmd->next;
    if (!c->inflight)
        c->inflight_tail = &c->inflight;
    c->ninflight--;
    cmd->next = NULL;
    cmd->on_reply(c, cmd, r);
    smtp_cmd_free(cmd);
    smtp_pump(c);
}

/*
 * One reply line (RFC 5321 §4.2): three digits, then "-" for a line that
 * continues the reply, or " " or nothing for its last line. Every line of
 * a reply carries the same code.
 */
static enum tern_status
smtp_on_line(void *aux, const char *line, size_t len)
{
    struct smtp_conn *c = aux;
    smtp_trace(c, false, line, len);
    if (c->state == SMTP_ST_DEAD)
        return TERN_E_IO;
    if (memchr(line, '\0', len))
        return tern_err_set(c->err, TERN_E_PROTO, "SMTP server %s sent a NUL byte in a reply",
                            c->opts.host);
    bool digits = len >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' &&
                  line[1] <= '5' && line[2] >= '0' && line[2] <= '9';
    if (!digits || (len > 3 && line[3] != ' ' && line[3] != '-')) {
        struct tbuf shown;
        tbuf_init(&shown, 0);
        tbuf_add(&shown, line, len > 80 ? 80 : len);
        tern_err_set(c->err, TERN_E_PROTO, "SMTP server %s sent a malformed reply: '%s'",
                     c->opts.host, tbuf_len(&shown) ? tbuf_ptr(&shown) : "");
        tbuf_free(&shown);
        return TERN_E_PROTO;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    bool last = len == 3 || line[3] == ' ';
    if (c->rlines && code != c->rcode)
        return tern_err_set(c->err, TERN_E_PROTO,
                            "SMTP server %s sent a reply with mixed codes (%d, then %d)",
                            c->opts.host, c->rcode, code);
    if (c->rlines >= c->opts.limits.reply_lines_max)
        return tern_err_set(c->err, TERN_E_PROTO,
                            "SMTP server %s sent a reply of more than %zu lines", c->opts.host,
                            c->opts.limits.reply_lines_max);
    size_t tlen = len > 4 ? len - 4 : 0;
    if (tbuf_len(&c->rtext) + tlen + 1 > c->opts.limits.reply_bytes_max)
        return tern_err_set(c->err, TERN_E_PROTO,
                            "SMTP server %s sent a reply longer than %zu bytes", c->opts.host,
                            c->opts.limits.reply_bytes_max);
    enum tern_status st = TERN_OK;
    if (c->rlines)
        st = tbuf_addc(&c->rtext, '\n');
    if (!st)
        st = tbuf_add(&c->rtext, line + (len > 4 ? 4 : len), tlen);
    if (st)
        return st;
    c->rcode = code;
    c->rlines++;
    if (!last)
        return TERN_OK;
    char *text = tbuf_take(&c->rtext);
    if (!text)
        return TERN_E_NOMEM;
    struct smtp_reply r = {code, text, c->rlines};
    c->rlines = 0;
    c->rcode = 0;
    smtp_dispatch(c, &r);
    free(text);
    return c->state == SMTP_ST_DEAD ? TERN_E_IO : TERN_OK;
}

static enum tern_status
smtp_on_bytes(void *aux, const char *p, size_t n)
{
    return TERN_E_PROTO; /* never asked for */
}

static void
smtp_on_line_event(void *aux, enum line_event ev, enum tern_status st)
{
    struct smtp_conn *c = aux;
    switch (ev) {
    case LINE_EV_CONNECTED:
        if (c->opts.security == SMTP_SEC_IMPLICIT_TLS) {
            smtp_set_state(c, SMTP_ST_TLS_HANDSHAKE);
            st = line_start_tls(c->line);
            if (st)
                smtp_fail(c, st, NULL);
            break;
        }
        smtp_set_state(c, SMTP_ST_GREETING);
        st = smtp_expect(c, SMTP_CMD_GREETING, smtp_on_greeting);
        if (st)
            smtp_fail(c, st, NULL);
        break;
    case LINE_EV_DRAINED:
        /* Room for the next chunk of a message being sent. */
        if (c->state == SMTP_ST_BODY)
            smtp_pump_body(c);
        break;
    case LINE_EV_TLS_DONE:
        if (c->state == SMTP_ST_TLS_HANDSHAKE) {
            smtp_set_state(c, SMTP_ST_GREETING);
            st = smtp_expect(c, SMTP_CMD_GREETING, smtp_on_greeting);
            if (st)
                smtp_fail(c, st, NULL);
        } else if (c->state == SMTP_ST_STARTTLS_HANDSHAKE) {
            /* RFC 3207 §4.2: forget everything learnt before TLS. */
            smtp_exts_clear(c);
            smtp_send_ehlo(c);
        }
        break;
    case LINE_EV_ERROR:
        if (c->state == SMTP_ST_DEAD)
            break; /* already failed: keep the sentence that says why */
        if (c->state == SMTP_ST_QUIT) {
            smtp_fail(c, st, NULL); /* the QUIT itself succeeds */
            break;
        }
        if (st == TERN_E_IO && c->rlines) {
            tern_err_set(c->err, TERN_E_PROTO,
                         "SMTP server %s closed the connection in the middle of a reply",
                         c->opts.host);
            st = TERN_E_PROTO;
        } else if (c->state == SMTP_ST_DOT) {
            tern_err_prefix(c->err,
                            "SMTP server %s gave no reply to the end of the message, so it may "
                            "or may not have taken it",
                            c->opts.host);
        } else if (st == TERN_E_IO && c->state >= SMTP_ST_GREETING) {
            tern_err_prefix(c->err, "SMTP server %s", c->opts.host);
        }
        smtp_fail(c, st, NULL);
        break;
    }
}

/* ---- lifecycle ---- */

static bool
smtp_ehlo_name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '[' || ch == ']' ||
                  ch == ':';
        if (!ok)
            return false;
    }
    return true;
}

enum tern_status
smtp_new(struct loop *loop, const struct smtp_opts *opts, struct tern_err *err,
         struct smtp_conn **out)
{
    if (!loop || !opts || !out || !opts->host)
        return tern_err_set(err, TERN_E_USAGE, "SMTP: no server given");
    if (opts->user && !opts->secret)
        return tern_err_set(err, TERN_E_USAGE, "SMTP: a user name without a secret");
    if (opts->ehlo_name && !smtp_ehlo_name_ok(opts->ehlo_name))
        return tern_err_set(err, TERN_E_USAGE,
                            "SMTP: the EHLO name must be a domain or an address literal");
    struct smtp_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return TERN_E_NOMEM;
    c->loop = loop;
    c->opts = *opts;
    c->err = err;
    if (!c->opts.ehlo_name)
        c->opts.ehlo_name = "localhost";
    struct smtp_limits def;
    smtp_limits_default(&def);
    if (!c->opts.limits.line_max)
        c->opts.limits.line_max = def.line_max;
    if (!c->opts.limits.reply_lines_max)
        c->opts.limits.reply_lines_max = def.reply_lines_max;
    if (!c->opts.limits.reply_bytes_max)
        c->opts.limits.reply_bytes_max = def.reply_bytes_max;
    c->pending_tail = &c->pending;
    c->inflight_tail = &c->inflight;
    c->jobs_tail = &c->jobs;
    tbuf_init(&c->rtext, 0);
    tbuf_init(&c->out, 0);
    tbuf_init(&c->batch, 0);
    tbuf_init(&c->scratch, 0);
    c->chunk = malloc(SMTP_BODY_CHUNK);
    if (!c->chunk) {
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
    lo.line_max = c->opts.limits.line_max;
    lo.timeout_ms = opts->timeout_ms;
    lo.proto = "SMTP";
    struct line_handler h = {smtp_on_line, smtp_on_bytes, smtp_on_line_event};
    enum tern_status st = line_new(loop, &lo, &h, c, err, &c->line);
    if (st) {
        free(c->chunk);
        free(c);
        return st;
    }
    *out = c;
    return TERN_OK;
}

void
smtp_free(struct smtp_conn *c)
{
    if (!c)
        return;
    loop_timer_cancel(c->body_timer);
    smtp_cmd_list_free(c->inflight);
    smtp_cmd_list_free(c->pending);
    smtp_job_free(c->cur);
    while (c->jobs) {
        struct smtp_job *next = c->jobs->next;
        smtp_job_free(c->jobs);
        c->jobs = next;
    }
    line_free(c->line);
    smtp_exts_clear(c);
    tbuf_free(&c->rtext);
    tbuf_free(&c->out);
    tbuf_free(&c->batch);
    tbuf_free(&c->scratch);
    free(c->chunk);
    free(c->closed_text);
    free(c);
}

enum tern_status
smtp_open(struct smtp_conn *c, smtp_done_fn done, void *aux)
{
    if (c->state != SMTP_ST_NEW)
        return TERN_E_USAGE;
    c->open_done = done;
    c->open_aux = aux;
    smtp_set_state(c, SMTP_ST_CONNECTING);
    enum tern_status st = line_connect(c->line);
    if (st) {
        c->open_done = NULL;
        smtp_set_state(c, SMTP_ST_DEAD);
    }
    return st;
}

static enum tern_status
smtp_closed(struct smtp_conn *c)
{
    return tern_err_set(c->err, TERN_E_IO, "the SMTP connection to %s is closed%s%s", c->opts.host,
                        c->closed_text && *c->closed_text ? ": " : "",
                        c->closed_text ? c->closed_text : "");
}

static void
smtp_add_job(struct smtp_conn *c, struct smtp_job *job)
{
    *c->jobs_tail = job;
    c->jobs_tail = &job->next;
    smtp_next_job(c);
}

enum tern_status
smtp_send(struct smtp_conn *c, const struct smtp_envelope *env, const struct smtp_body *body,
          smtp_sent_fn sent, void *aux)
{
    if (!env || !body || !body->read || env->nrcpt == 0 || !env->rcpts)
        return tern_err_set(c->err, TERN_E_USAGE, "SMTP: a message needs recipients and a body");
    if (c->state == SMTP_ST_DEAD)
        return smtp_closed(c);
    unsigned known = 0;
#define SMTP_FLAG_ALL(name, b) known |= 1u << (b);
    SMTP_ENV_FLAGS(SMTP_FLAG_ALL)
    if (env->flags & ~known)
        return tern_err_set(c->err, TERN_E_USAGE, "SMTP: unknown envelope flags 0x%x", env->flags);
    known = 0;
    SMTP_DSN_FLAGS(SMTP_FLAG_ALL)
#undef SMTP_FLAG_ALL
    if ((env->dsn_notify & ~known) ||
        ((env->dsn_notify & SMTP_DSN_NEVER) && env->dsn_notify != SMTP_DSN_NEVER))
        return tern_err_set(c->err, TERN_E_USAGE,
                            "SMTP: DSN NOTIFY=NEVER cannot be combined (RFC 3461 §4.1)");
    if (env->dsn_ret != SMTP_DSN_RET_DEFAULT && env->dsn_ret != SMTP_DSN_RET_FULL &&
        env->dsn_ret != SMTP_DSN_RET_HDRS)
        return tern_err_set(c->err, TERN_E_USAGE, "SMTP: unknown DSN RET value");
    if (env->dsn_envid && (!*env->dsn_envid || strlen(env->dsn_envid) > SMTP_ENVID_MAX))
        return tern_err_set(c->err, TERN_E_USAGE, "SMTP: the DSN ENVID must be 1 to %d bytes",
                            SMTP_ENVID_MAX);
    enum tern_status st;
    if (!env->from || (st = smtp_addr_check(env->from, strlen(env->from), true, c->err))) {
        tern_err_prefix(c->err, "SMTP: bad sender address");
        return TERN_E_USAGE;
    }
    for (size_t i = 0; i < env->nrcpt; i++) {
        const char *a = env->rcpts[i];
        if (!a || (st = smtp_addr_check(a, strlen(a), false, c->err))) {
            tern_err_prefix(c->err, "SMTP: bad recipient address %zu", i + 1);
            return TERN_E_USAGE;
        }
    }
    struct smtp_job *job = calloc(1, sizeof(*job));
    if (!job)
        return TERN_E_NOMEM;
    job->nrcpt = env->nrcpt;
    job->size = env->size;
    job->flags = env->flags;
    job->dsn_notify = env->dsn_notify;
    job->dsn_ret = env->dsn_ret;
    job->body = *body;
    job->sent = sent;
    job->aux = aux;
    job->from = strdup(env->from);
    job->rcpts = calloc(env->nrcpt, sizeof(char *));
    job->rtext = calloc(env->nrcpt, sizeof(char *));
    job->res = calloc(env->nrcpt, sizeof(*job->res));
    bool ok = job->from && job->rcpts && job->rtext && job->res;
    if (ok && env->dsn_envid)
        ok = (job->dsn_envid = strdup(env->dsn_envid)) != NULL;
    job->utf8 = (env->flags & SMTP_ENV_UTF8) || !smtp_is_ascii(env->from);
    for (size_t i = 0; ok && i < env->nrcpt; i++) {
        ok = (job->rcpts[i] = strdup(env->rcpts[i])) != NULL;
        if (ok && !smtp_is_ascii(env->rcpts[i]))
            job->utf8 = true;
    }
    if (!ok) {
        if (!job->rcpts || !job->rtext)
            job->nrcpt = 0;
        smtp_job_free(job);
        return TERN_E_NOMEM;
    }
    smtp_add_job(c, job);
    return TERN_OK;
}

enum tern_status
smtp_quit(struct smtp_conn *c, smtp_done_fn done, void *aux)
{
    if (c->state == SMTP_ST_DEAD)
        return smtp_closed(c);
    struct smtp_job *job = calloc(1, sizeof(*job));
    if (!job)
        return TERN_E_NOMEM;
    job->quit = true;
    job->quit_done = done;
    job->aux = aux;
    smtp_add_job(c, job);
    return TERN_OK;
}

void
smtp_cancel(struct smtp_conn *c)
{
    if (c->state == SMTP_ST_DEAD)
        return;
    tern_err_set(c->err, TERN_E_CANCELED, "canceled");
    smtp_fail(c, TERN_E_CANCELED, NULL);
}

bool
smtp_is_ready(const struct smtp_conn *c)
{
    return c->state >= SMTP_ST_READY && c->state <= SMTP_ST_RSET;
}

bool
smtp_is_dead(const struct smtp_conn *c)
{
    return c->state == SMTP_ST_DEAD;
}
