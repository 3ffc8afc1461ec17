/*
 * send.c - sending mail: `send`, `compose`, `outbox` and `flush`.
 *
 * Layer: src/cmd.
 *
 * Every message is first written to the outbox ($cache_dir/outbox, a
 * Maildir: tmp/, sync, rename) and recorded QUEUED; then sent. It leaves
 * the outbox only after the server's 2xx to the end of DATA:
 *
 *   QUEUED -> SENDING (commit) -> DATA ... "." -> 2xx -> copy to Sent ->
 *   remove file and record
 *
 * 4xx, a dropped connection or no reply to "." leave it QUEUED (attempts
 * counted, the error kept); 5xx marks it FAILED with the server's text.
 * A crash after the 2xx and before the record is removed finds it SENDING
 * at the next flush, which sends it again: at most one duplicate, the
 * documented SMTP ambiguity. A file in the outbox without a record (a crash
 * between the rename and the record) is queued by the next flush.
 * Bcc is kept in the outbox copy and in Sent, and removed from what is
 * transmitted.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "smtp.h"

#include "account.h"
#include "cmd/commands.h"
#include "cmd/common.h"
#include "compose.h"
#include "json.h"
#include "local.h"
#include "maildir.h"
#include "session.h"
#include "state.h"

/* ---- the outbox ---- */

struct outbox {
    struct state_lock *lock;
    struct state_db *db;
    struct maildir *md;
};

static void
outbox_close(struct outbox *o)
{
    maildir_close(o->md);
    state_close(o->db);
    state_unlock(o->lock);
    memset(o, 0, sizeof(*o));
}

static enum tern_status
outbox_open(struct tern_session *s, struct outbox *o)
{
    memset(o, 0, sizeof(*o));
    const char *dir = s->acct->cache_dir;
    struct tbuf path;
    tbuf_init(&path, 0);
    enum tern_status st = state_lock(dir, &o->lock, &s->err);
    if (!st)
        st = state_open(dir, 0, &o->db, &s->err);
    if (!st)
        st = tbuf_addf(&path, "%s/outbox", dir);
    if (!st)
        st = maildir_open(tbuf_ptr(&path), MAILDIR_CREATE, &o->md, &s->err);
    tbuf_free(&path);
    if (st)
        outbox_close(o);
    return st;
}

struct outbox_put {
    const char *id;
    struct state_outbox_rec rec;
};

static enum tern_status
outbox_put_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct outbox_put *p = aux;
    return state_outbox_put(t, p->id, &p->rec, err);
}

static enum tern_status
outbox_del_fn(struct state_txn *t, void *aux, struct tern_err *err)
{
    struct outbox_put *p = aux;
    enum tern_status st = state_outbox_del(t, p->id, err);
    return st == TERN_E_NOTFOUND ? TERN_OK : st;
}

static enum tern_status
outbox_set(struct outbox *o, const char *id, enum state_outbox_status status, uint32_t attempts,
           int64_t next, const char *error, struct tern_err *err)
{
    struct outbox_put p = {id, {status, attempts, next, error ? error : ""}};
    return state_write(o->db, outbox_put_fn, &p, err);
}

/*
 * Writes one message into the outbox with WRITE (which gets an fd) and
 * records it QUEUED. *ID is the outbox id (owned).
 */
typedef enum tern_status (*outbox_writer)(void *aux, int fd, char **message_id,
                                          struct tern_err *err);

static enum tern_status
outbox_queue(struct tern_session *s, struct outbox *o, outbox_writer write, void *aux, char **id,
             char **message_id)
{
    struct maildir_batch *b = NULL;
    size_t idx = 0;
    int fd = -1;
    *id = NULL;
    enum tern_status st = maildir_batch_new(&b, &s->err);
    if (!st)
        st = maildir_batch_add(b, o->md, NULL, &idx, &fd, &s->err);
    if (!st)
        st = write(aux, fd, message_id, &s->err);
    if (!st)
        st = maildir_batch_finish(b, idx, &s->err);
    if (!st)
        st = maildir_batch_commit(b, &s->err);
    if (!st && !(*id = maildir_batch_take_name(b, idx)))
        st = TERN_E_NOMEM;
    if (st)
        maildir_batch_abort(b);
    maildir_batch_free(b);
    if (!st)
        sess_test_step("outbox file stored");
    if (!st)
        st = outbox_set(o, *id, STATE_OUTBOX_QUEUED, 0, 0, NULL, &s->err);
    if (!st)
        sess_test_step("queued recorded");
    return st;
}

/* ---- transmitting: the file without its Bcc header ---- */

struct bcc_filter {
    int fd;
    bool in_headers;
    bool skipping; /* inside a Bcc field (and its continuation lines) */
    struct tbuf line;
    struct tbuf pending; /* filtered bytes not yet handed out */
    bool eof;
};

/* Handles one header line (with its line end). */
static enum tern_status
bcc_line(struct bcc_filter *f, const char *p, size_t n)
{
    if (n == 0)
        return TERN_OK;
    bool blank = (n == 1 && p[0] == '\n') || (n == 2 && p[0] == '\r' && p[1] == '\n');
    if (blank) {
        f->in_headers = false;
        return tbuf_add(&f->pending, p, n);
    }
    if (p[0] == ' ' || p[0] == '\t') {
        if (f->skipping)
            return TERN_OK;
        return tbuf_add(&f->pending, p, n);
    }
    f->skipping = n >= 4 && strncasecmp(p, "bcc:", 4) == 0;
    return f->skipping ? TERN_OK : tbuf_add(&f->pending, p, n);
}

static enum tern_status
bcc_read(void *aux, char *buf, size_t cap, size_t *got)
{
    struct bcc_filter *f = aux;
    *got = 0;
    while (tbuf_len(&f->pending) == 0 && !f->eof) {
        char chunk[65536];
        ssize_t n = read(f->fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return TERN_E_IO;
        if (n == 0) {
            f->eof = true;
            if (tbuf_len(&f->line)) {
                enum tern_status st =
                    f->in_headers ? bcc_line(f, tbuf_ptr(&f->line), tbuf_len(&f->line))
                                  : tbuf_add(&f->pending, tbuf_ptr(&f->line), tbuf_len(&f->line));
                tbuf_reset(&f->line);
                if (st)
                    return st;
            }
            break;
        }
        if (!f->in_headers) {
            enum tern_status st = tbuf_add(&f->pending, chunk, (size_t)n);
            if (st)
                return st;
            continue;
        }
        for (ssize_t i = 0; i < n; i++) {
            enum tern_status st = tbuf_addc(&f->line, chunk[i]);
            if (st)
                return st;
            if (chunk[i] != '\n')
                continue;
            if (f->in_headers) {
                st = bcc_line(f, tbuf_ptr(&f->line), tbuf_len(&f->line));
            } else {
                st = tbuf_add(&f->pending, tbuf_ptr(&f->line), tbuf_len(&f->line));
            }
            tbuf_reset(&f->line);
            if (st)
                return st;
        }
        if (!f->in_headers && tbuf_len(&f->line)) {
            enum tern_status st = tbuf_add(&f->pending, tbuf_ptr(&f->line), tbuf_len(&f->line));
            tbuf_reset(&f->line);
            if (st)
                return st;
        }
    }
    size_t n = tbuf_len(&f->pending) < cap ? tbuf_len(&f->pending) : cap;
    memcpy(buf, tbuf_ptr(&f->pending), n);
    tbuf_consume(&f->pending, n);
    *got = n;
    return TERN_OK;
}

/* ---- the SMTP connection ---- */

struct smtp_wait {
    bool done;
    enum tern_status st;
    struct tbuf text;  /* the deciding reply */
    struct tbuf rcpts; /* JSON array of refused recipients */
    bool temporary, unknown;
};

static void
on_smtp_done(void *aux, enum tern_status st)
{
    struct smtp_wait *w = aux;
    w->st = st;
    w->done = true;
}

static void
on_smtp_sent(void *aux, enum tern_status st, const struct smtp_result *r)
{
    struct smtp_wait *w = aux;
    w->st = st;
    w->done = true;
    if (!r)
        return;
    w->temporary = r->temporary;
    w->unknown = r->outcome_unknown;
    tbuf_addf(&w->text, "%d %s", r->code, r->text ? r->text : "");
    struct json j;
    json_init(&j, &w->rcpts);
    json_arr(&j);
    for (size_t i = 0; i < r->nrcpt; i++) {
        if (r->rcpts[i].code >= 200 && r->rcpts[i].code < 300)
            continue;
        json_obj(&j);
        json_key(&j, "to");
        json_cstr(&j, r->rcpts[i].addr);
        json_key(&j, "code");
        json_int(&j, r->rcpts[i].code);
        json_key(&j, "text");
        json_net_str(&j, r->rcpts[i].text, strlen(r->rcpts[i].text), false);
        json_obj_end(&j);
    }
    json_arr_end(&j);
}

static enum tern_status
smtp_connect(struct tern_session *s, struct smtp_conn **out)
{
    const struct tern_account *a = s->acct;
    *out = NULL;
    if (!a->smtp)
        return sess_fail(s, TERN_E_CONFIG, "account %s has no smtp server configured", a->name);
    /* A URL without a user name means no AUTH, and no password. */
    struct sess_conn c;
    enum tern_status st = sess_conn_opts(s, a->smtp, a->smtp->user != NULL, &c);
    if (st)
        return st;
    struct smtp_opts o;
    memset(&o, 0, sizeof(o));
    o.host = a->smtp->host;
    o.port = a->smtp->port;
    o.security = c.security == SESS_SEC_IMPLICIT ? SMTP_SEC_IMPLICIT_TLS
                 : c.security == SESS_SEC_NONE   ? SMTP_SEC_NONE
                                                 : SMTP_SEC_STARTTLS;
    o.verify = c.verify;
    memcpy(o.fingerprint, c.fingerprint, sizeof(o.fingerprint));
    o.ca_file = c.ca_file;
    o.user = a->smtp->user;
    o.secret = c.secret;
    o.mech = c.mech;
    o.timeout_ms = c.timeout_ms;
    smtp_limits_default(&o.limits);
    if (s->trace) {
        o.trace = sess_trace;
        o.trace_aux = s;
    }
    st = smtp_new(s->loop, &o, &s->err, out);
    struct smtp_wait w = {0};
    if (!st)
        st = smtp_open(*out, on_smtp_done, &w);
    if (!st)
        st = loop_run_until(s->loop, &w.done);
    if (!st)
        st = w.st;
    return st;
}

/* ---- the Sent copy ---- */

static bool
on_sent_list(void *aux, const struct imap_response *r)
{
    char **name = aux;
    if (!r->name || strcmp(r->name, "LIST") != 0 || !r->items)
        return false;
    const struct imap_item *attrs = r->items;
    const char *n = imap_item_str(imap_item_nth(r->items, 2));
    for (const struct imap_item *a = attrs->child; a && n; a = a->next)
        if (imap_item_is(a, "\\Sent") && !*name)
            *name = strdup(n);
    return true;
}

/* Appends the message in FD to the Sent folder with \Seen (RFC 3501 §6.3.11). */
static enum tern_status
save_sent(struct tern_session *s, int fd)
{
    const struct tern_account *a = s->acct;
    struct tbuf msg;
    tbuf_init(&msg, 0);
    enum tern_status st = lseek(fd, 0, SEEK_SET) < 0 ? TERN_E_IO : TERN_OK;
    char buf[65536];
    while (!st) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            st = n < 0 ? TERN_E_IO : TERN_OK;
            break;
        }
        st = tbuf_add(&msg, buf, (size_t)n);
    }
    if (st) {
        tbuf_free(&msg);
        return sess_fail(s, st, "cannot read the sent message for the Sent copy");
    }
    if (!a->imap) {
        /* No IMAP: a local Sent folder. */
        struct tbuf root;
        tbuf_init(&root, 0);
        struct maildir *md = NULL;
        struct maildir_batch *b = NULL;
        size_t idx = 0;
        int ofd = -1;
        st = tbuf_addf(&root, "%s/mail", a->cache_dir);
        const char *folder = a->sent_folder ? a->sent_folder : "Sent";
        if (!st)
            st = maildir_open_folder(tbuf_ptr(&root), folder, strlen(folder), MAILDIR_CREATE, &md,
                                     &s->err);
        if (!st)
            st = maildir_batch_new(&b, &s->err);
        if (!st)
            st = maildir_batch_add(b, md, "S", &idx, &ofd, &s->err);
        if (!st)
            st = maildir_batch_write(b, idx, tbuf_ptr(&msg), tbuf_len(&msg), &s->err);
        if (!st)
            st = maildir_batch_finish(b, idx, &s->err);
        if (!st)
            st = maildir_batch_commit(b, &s->err);
        if (st && b)
            maildir_batch_abort(b);
        maildir_batch_free(b);
        maildir_close(md);
        tbuf_free(&root);
        tbuf_free(&msg);
        return st;
    }
    st = sess_imap(s);
    char *folder = a->sent_folder ? strdup(a->sent_folder) : NULL;
    struct imap_args args;
    imap_args_init(&args);
    if (!st && !folder) {
        /* RFC 6154: the folder with the \Sent attribute. */
        if (!(st = imap_args_raw(&args, " (SPECIAL-USE) \"\" \"*\"")))
            st = sess_run(s, "LIST", &args, on_sent_list, &folder, NULL);
        imap_args_free(&args);
        if (!st && !folder)
            folder = strdup("Sent");
    }
    if (!st && !folder)
        st = TERN_E_NOMEM;
    if (!st && !(st = imap_args_raw(&args, " ")) &&
        !(st = imap_args_string(&args, folder, strlen(folder))) &&
        !(st = imap_args_raw(&args, " (\\Seen) ")))
        st = imap_args_string(&args, tbuf_ptr(&msg), tbuf_len(&msg));
    if (!st)
        st = sess_run(s, "APPEND", &args, NULL, NULL, NULL);
    imap_args_free(&args);
    free(folder);
    tbuf_free(&msg);
    return st;
}

/* ---- sending one queued message ---- */

/* Whether the file holds bytes over 127 (read from its start). */
static bool
has_8bit(int fd)
{
    char buf[65536];
    if (lseek(fd, 0, SEEK_SET) < 0)
        return false;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        for (ssize_t i = 0; i < n; i++)
            if ((unsigned char)buf[i] >= 0x80)
                return true;
    }
}

/* Seconds to wait after ATTEMPTS failed attempts: 1, 2, 4 ... 60 minutes. */
static int64_t
backoff(uint32_t attempts)
{
    int64_t delay = 60;
    for (uint32_t i = 0; i < attempts && delay < 3600; i++)
        delay *= 2;
    return delay < 3600 ? delay : 3600;
}

struct flush_run {
    struct tern_session *s;
    struct outbox *o;
    struct smtp_conn *c;
    unsigned sent, kept;
};

static enum tern_status
emit_result(struct tern_session *s, const char *id, const char *mid, const char *state,
            const char *error, const struct tbuf *refused)
{
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    if (strcmp(state, "sent") == 0) {
        json_key(&j, "sent");
        json_bool(&j, true);
    } else {
        json_key(&j, "state");
        json_cstr(&j, state);
    }
    json_key(&j, "id");
    json_cstr(&j, id);
    json_key(&j, "message_id");
    json_cstr(&j, mid);
    if (error) {
        /* Not "error": that key means a failed command in headless output. */
        json_key(&j, strcmp(state, "sent") == 0 ? "sent_copy_error" : "last_error");
        json_net_str(&j, error, strlen(error), false);
    }
    if (refused && tbuf_len(refused) > 2) {
        /* recipients the server refused while taking the message */
        json_key(&j, "refused");
        json_raw(&j, tbuf_ptr(refused), tbuf_len(refused));
    }
    json_obj_end(&j);
    return sess_obj_emit(s, &j);
}

static enum tern_status
flush_one(struct flush_run *fr, const char *id, uint32_t attempts)
{
    struct tern_session *s = fr->s;
    int fd = -1;
    char *from = NULL, *mid = NULL, **rcpts = NULL;
    size_t nrcpt = 0;
    enum tern_status st = maildir_msg_open(fr->o->md, id, &fd, &s->err);
    if (st == TERN_E_NOTFOUND) {
        /* The file is gone (sent and removed before a crash): forget it. */
        struct outbox_put p = {id, {0}};
        return state_write(fr->o->db, outbox_del_fn, &p, &s->err);
    }
    if (!st)
        st = compose_envelope(fd, &from, &rcpts, &nrcpt, &mid, &s->err);
    if (st) {
        /* An unsendable file: failed for good, with the reason. */
        outbox_set(fr->o, id, STATE_OUTBOX_FAILED, attempts, 0, tern_err_msg(&s->err), NULL);
        emit_result(s, id, mid, "failed", tern_err_msg(&s->err), NULL);
        if (fd >= 0)
            close(fd);
        fr->kept++;
        return TERN_OK;
    }
    st = outbox_set(fr->o, id, STATE_OUTBOX_SENDING, attempts + 1, 0, NULL, &s->err);
    if (!st)
        sess_test_step("sending recorded");
    struct stat sb;
    struct smtp_envelope env = {.from = from, .rcpts = (const char *const *)rcpts, .nrcpt = nrcpt};
    if (fstat(fd, &sb) == 0)
        env.size = (uint64_t)sb.st_size;
    struct bcc_filter bf = {.fd = fd, .in_headers = true};
    tbuf_init(&bf.line, 1 << 20);
    tbuf_init(&bf.pending, 0);
    if (!st && lseek(fd, 0, SEEK_SET) < 0)
        st = TERN_E_IO;
    /* Delivery status notifications when configured (RFC 3461). */
    static const struct {
        unsigned config, smtp;
    } dsn[] = {{CONFIG_DSN_NEVER, SMTP_DSN_NEVER},
               {CONFIG_DSN_SUCCESS, SMTP_DSN_SUCCESS},
               {CONFIG_DSN_FAILURE, SMTP_DSN_FAILURE},
               {CONFIG_DSN_DELAY, SMTP_DSN_DELAY}};
    for (size_t k = 0; k < sizeof(dsn) / sizeof(dsn[0]); k++)
        if (s->acct->dsn_notify & dsn[k].config)
            env.dsn_notify |= dsn[k].smtp;
    if (env.dsn_notify)
        env.dsn_ret = SMTP_DSN_RET_HDRS;
    /* 8-bit bytes anywhere: BODY=8BITMIME (RFC 6152). */
    env.flags = 0;
    if (!st && has_8bit(fd))
        env.flags |= SMTP_ENV_8BIT;
    if (!st && lseek(fd, 0, SEEK_SET) < 0)
        st = TERN_E_IO;
    struct smtp_wait w = {0};
    tbuf_init(&w.text, 0);
    tbuf_init(&w.rcpts, 0);
    struct smtp_body body = {bcc_read, &bf};
    if (!st)
        st = smtp_send(fr->c, &env, &body, on_smtp_sent, &w);
    if (!st)
        st = loop_run_until(s->loop, &w.done);
    if (!st)
        st = w.st;
    if (!st) {
        /* Taken: copy to Sent, then leave the outbox. */
        sess_test_step("accepted");
        enum tern_status sst = save_sent(s, fd);
        sess_test_step("sent copy saved");
        struct outbox_put p = {id, {0}};
        st = state_write(fr->o->db, outbox_del_fn, &p, &s->err);
        if (!st)
            sess_test_step("record removed");
        if (!st)
            st = maildir_msg_delete(fr->o->md, id, &s->err);
        if (!st) {
            fr->sent++;
            st = emit_result(s, id, mid, "sent", sst ? tern_err_msg(&s->err) : NULL, &w.rcpts);
        }
    } else if (st == TERN_E_REFUSED && !w.temporary) {
        outbox_set(fr->o, id, STATE_OUTBOX_FAILED, attempts + 1, 0, tern_err_msg(&s->err), NULL);
        emit_result(s, id, mid, "failed", tern_err_msg(&s->err), &w.rcpts);
        fr->kept++;
        st = TERN_OK;
    } else {
        /* 4xx, no reply, a dropped connection: stays queued, backing off. */
        char *msg = strdup(tern_err_msg(&s->err));
        outbox_set(fr->o, id, STATE_OUTBOX_QUEUED, attempts + 1, sess_now() + backoff(attempts),
                   msg, NULL);
        emit_result(s, id, mid, "queued", msg, &w.rcpts);
        free(msg);
        fr->kept++;
        st = smtp_is_dead(fr->c) ? TERN_E_IO : TERN_OK;
    }
    tbuf_free(&w.text);
    tbuf_free(&w.rcpts);
    tbuf_free(&bf.line);
    tbuf_free(&bf.pending);
    close(fd);
    compose_envelope_free(from, rcpts, nrcpt, mid);
    return st;
}

/* ---- flush ---- */

struct flush_item {
    char *id;
    enum state_outbox_status status;
    uint32_t attempts;
    int64_t next_attempt;
};

struct flush_list {
    struct flush_item *v;
    size_t n;
    bool all; /* flush: every queued message; else only ONLY */
    const char *only;
};

static enum tern_status
flush_add(struct flush_list *l, const char *id, enum state_outbox_status status, uint32_t attempts,
          int64_t next_attempt)
{
    struct flush_item *v = realloc(l->v, (l->n + 1) * sizeof(*v));
    if (!v)
        return TERN_E_NOMEM;
    l->v = v;
    l->v[l->n].id = strdup(id);
    l->v[l->n].status = status;
    l->v[l->n].attempts = attempts;
    l->v[l->n].next_attempt = next_attempt;
    return l->v[l->n++].id ? TERN_OK : TERN_E_NOMEM;
}

static enum tern_status
flush_on_record(const char *id, const struct state_outbox_rec *r, void *aux)
{
    return flush_add(aux, id, r->status, r->attempts, r->next_attempt);
}

static enum tern_status
flush_on_file(const struct maildir_entry *e, void *aux)
{
    struct flush_list *l = aux;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].id, e->name) == 0)
            return TERN_OK;
    /* In the outbox without a record: a crash right after the rename. */
    return flush_add(l, e->name, STATE_OUTBOX_QUEUED, 0, 0);
}

static void
flush_list_free(struct flush_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].id);
    free(l->v);
}

static enum tern_status
outbox_list(struct tern_session *s, struct outbox *o, struct flush_list *l)
{
    struct state_txn *t = NULL;
    enum tern_status st = state_txn_begin(o->db, false, &t, &s->err);
    if (!st)
        st = state_outbox_each(t, flush_on_record, l, &s->err);
    state_txn_abort(t);
    if (!st)
        st = maildir_scan(o->md, flush_on_file, l, &s->err);
    return st;
}

/*
 * Sends the queued messages (ONLY: just that one) over one connection.
 * Messages marked failed are left alone; a message left SENDING by a crash
 * is sent again. A message whose last attempt failed for a passing reason
 * waits for its next attempt time (backing off from 1 minute to 1 hour)
 * unless NOW.
 */
static enum tern_status
flush_run(struct tern_session *s, struct outbox *o, const char *only, bool now)
{
    struct flush_list l = {0};
    enum tern_status st = outbox_list(s, o, &l);
    struct flush_run fr = {.s = s, .o = o};
    for (size_t i = 0; !st && i < l.n; i++) {
        struct flush_item *it = &l.v[i];
        if (it->status == STATE_OUTBOX_FAILED || (only && strcmp(it->id, only) != 0))
            continue;
        if (!now && it->status == STATE_OUTBOX_QUEUED && it->next_attempt > sess_now()) {
            struct json j;
            sess_obj_begin(s, &j);
            json_obj(&j);
            json_key(&j, "state");
            json_cstr(&j, "queued");
            json_key(&j, "id");
            json_cstr(&j, it->id);
            json_key(&j, "next_attempt");
            json_int(&j, it->next_attempt);
            json_obj_end(&j);
            st = sess_obj_emit(s, &j);
            continue;
        }
        if (!fr.c) {
            st = smtp_connect(s, &fr.c);
            if (st) {
                /* Why the rest stays queued: recorded on each of them. */
                char *why = strdup(tern_err_msg(&s->err));
                for (size_t k = i; k < l.n; k++) {
                    struct flush_item *q = &l.v[k];
                    if (q->status == STATE_OUTBOX_FAILED || (only && strcmp(q->id, only) != 0))
                        continue;
                    outbox_set(o, q->id, STATE_OUTBOX_QUEUED, q->attempts + 1,
                               sess_now() + backoff(q->attempts), why, NULL);
                }
                free(why);
                break;
            }
        }
        st = flush_one(&fr, it->id, it->attempts);
    }
    if (fr.c && !smtp_is_dead(fr.c)) {
        struct smtp_wait w = {0};
        if (!smtp_quit(fr.c, on_smtp_done, &w))
            loop_run_until(s->loop, &w.done);
    }
    smtp_free(fr.c);
    flush_list_free(&l);
    if (!st && fr.kept)
        st = sess_fail(s, TERN_E_REFUSED, "%u message%s not sent; they stay in the outbox", fr.kept,
                       fr.kept == 1 ? " was" : "s were");
    return st;
}

enum tern_status
cmd_flush(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    bool now = false;
    for (size_t i = 1; i < w->n; i++) {
        if (strcmp(w->v[i].text, "--now") != 0)
            return sess_fail(s, TERN_E_USAGE, "usage: flush [--now]");
        now = true;
    }
    struct outbox o;
    enum tern_status st = outbox_open(s, &o);
    if (!st)
        st = flush_run(s, &o, NULL, now);
    outbox_close(&o);
    return st;
}

enum tern_status
cmd_outbox(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    struct outbox o;
    enum tern_status st = outbox_open(s, &o);
    struct flush_list l = {0};
    if (!st)
        st = outbox_list(s, &o, &l);
    for (size_t i = 0; !st && i < l.n; i++) {
        struct state_txn *t = NULL;
        struct state_outbox_rec r = {0};
        const char *error = "";
        int64_t next = 0;
        if (!state_txn_begin(o.db, false, &t, NULL)) {
            if (!state_outbox_get(t, l.v[i].id, &r, NULL)) {
                error = r.last_error;
                next = r.next_attempt;
            }
        }
        char *err_copy = strdup(error ? error : "");
        state_txn_abort(t);
        int fd = -1;
        char *from = NULL, *mid = NULL, **rcpts = NULL;
        size_t nrcpt = 0;
        if (!maildir_msg_open(o.md, l.v[i].id, &fd, NULL)) {
            compose_envelope(fd, &from, &rcpts, &nrcpt, &mid, NULL);
            close(fd);
        }
        static const char *const names[] = {"", "queued", "sending", "failed"};
        struct json j;
        sess_obj_begin(s, &j);
        json_obj(&j);
        json_key(&j, "id");
        json_cstr(&j, l.v[i].id);
        json_key(&j, "state");
        json_cstr(&j, l.v[i].status <= 3 ? names[l.v[i].status] : "queued");
        json_key(&j, "attempts");
        json_int(&j, l.v[i].attempts);
        json_key(&j, "next_attempt");
        json_int(&j, next);
        json_key(&j, "last_error");
        json_net_str(&j, err_copy ? err_copy : "", err_copy ? strlen(err_copy) : 0, false);
        json_key(&j, "message_id");
        json_cstr(&j, mid);
        json_key(&j, "to");
        json_arr(&j);
        for (size_t k = 0; k < nrcpt; k++)
            json_cstr(&j, rcpts[k]);
        json_arr_end(&j);
        json_obj_end(&j);
        st = sess_obj_emit(s, &j);
        free(err_copy);
        compose_envelope_free(from, rcpts, nrcpt, mid);
    }
    flush_list_free(&l);
    outbox_close(&o);
    return st;
}

/* ---- send and compose ---- */

struct prepare_aux {
    int in_fd;
    const char *from;
};

static enum tern_status
write_prepared(void *aux, int fd, char **message_id, struct tern_err *err)
{
    struct prepare_aux *p = aux;
    return compose_prepare(p->in_fd, p->from, fd, message_id, err);
}

static enum tern_status
write_composed(void *aux, int fd, char **message_id, struct tern_err *err)
{
    return compose_write(aux, fd, message_id, err);
}

/* Queues with WRITE, reports {"queued"}, then sends it at once. */
static enum tern_status
queue_and_send(struct tern_session *s, outbox_writer write, void *aux)
{
    if (!s->acct->smtp)
        return sess_fail(s, TERN_E_CONFIG, "account %s has no smtp server configured",
                         s->acct->name);
    struct outbox o;
    enum tern_status st = outbox_open(s, &o);
    char *id = NULL, *mid = NULL;
    if (!st)
        st = outbox_queue(s, &o, write, aux, &id, &mid);
    if (!st) {
        struct json j;
        sess_obj_begin(s, &j);
        json_obj(&j);
        json_key(&j, "queued");
        json_bool(&j, true);
        json_key(&j, "id");
        json_cstr(&j, id);
        json_key(&j, "message_id");
        json_cstr(&j, mid);
        json_obj_end(&j);
        st = sess_obj_emit(s, &j);
    }
    if (!st)
        st = flush_run(s, &o, id, true);
    free(id);
    free(mid);
    outbox_close(&o);
    return st;
}

enum tern_status
cmd_send(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    const char *file = w->v[1].text;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sess_fail(s, TERN_E_IO, "cannot read %s: %s", file, strerror(errno));
    struct prepare_aux p = {fd, s->acct->from};
    enum tern_status st = queue_and_send(s, write_prepared, &p);
    close(fd);
    return st;
}

enum tern_status
cmd_compose(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    struct compose_opts o = {.from = s->acct->from};
    const char **attach = calloc(w->n, sizeof(*attach));
    if (!attach)
        return TERN_E_NOMEM;
    enum tern_status st = TERN_OK;
    for (size_t i = 1; i < w->n && !st; i++) {
        const char *opt = w->v[i].text;
        const char *val = i + 1 < w->n ? w->v[i + 1].text : NULL;
        if (!val) {
            st = sess_fail(s, TERN_E_USAGE, "%s needs a value", opt);
            break;
        }
        i++;
        if (strcmp(opt, "--to") == 0)
            o.to = val;
        else if (strcmp(opt, "--cc") == 0)
            o.cc = val;
        else if (strcmp(opt, "--bcc") == 0)
            o.bcc = val;
        else if (strcmp(opt, "--subject") == 0)
            o.subject = val;
        else if (strcmp(opt, "--body-file") == 0)
            o.body_file = val;
        else if (strcmp(opt, "--attach") == 0)
            attach[o.nattach++] = val;
        else
            st = sess_fail(s, TERN_E_USAGE, "unknown option '%s'", opt);
    }
    o.attach = attach;
    if (!st && !o.body_file)
        st = sess_fail(s, TERN_E_USAGE,
                       "usage: compose --to ADDR [--cc ADDR] [--bcc ADDR] --subject S "
                       "[--attach FILE]... --body-file FILE");
    if (!st && !o.to && !o.cc && !o.bcc)
        st = sess_fail(s, TERN_E_USAGE, "compose needs at least one of --to, --cc, --bcc");
    if (!st && !o.from)
        st = sess_fail(s, TERN_E_CONFIG, "account %s has no from address", s->acct->name);
    if (!st)
        st = queue_and_send(s, write_composed, &o);
    free(attach);
    return st;
}
