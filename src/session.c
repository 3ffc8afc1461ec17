/*
 * session.c - sessions: account, loop, lazily opened IMAP connection, and
 * the public tern_session_* API (see include/tern.h and session.h).
 *
 * Layer: src/.
 */
#include "session.h"

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "mutf7.h"

#include "account.h"
#include "cmd/cmd.h"
#include "mime.h"

enum tern_status
tern_session_new(const struct tern_config *cfg, const char *account, struct tern_session **out,
                 char **errmsg)
{
    *errmsg = NULL;
    const struct tern_account *acct = config_account(cfg, account);
    if (!acct) {
        struct tbuf b;
        tbuf_init(&b, 0);
        tbuf_addf(&b, "no account '%s' in %s", account ? account : "(default)", cfg->path);
        *errmsg = tbuf_take(&b);
        return TERN_E_NOTFOUND;
    }
    struct tern_session *s = calloc(1, sizeof(*s));
    if (!s)
        return TERN_E_NOMEM;
    mime_init();
    s->cfg = cfg;
    s->acct = acct;
    s->loop = loop_new();
    if (!s->loop) {
        free(s);
        return TERN_E_NOMEM;
    }
    tbuf_init(&s->out, 0);
    *out = s;
    return TERN_OK;
}

static enum tern_status sess_imap_opts(struct tern_session *s, struct imap_opts *o);

static void
sess_drop_extra(struct tern_session *s)
{
    imap_free(s->extra.imap);
    s->extra.imap = NULL;
    free(s->extra.folder);
    s->extra.folder = NULL;
    s->extra.state = SESS_EXTRA_NONE;
    tern_err_clear(&s->extra.err);
}

static void
sess_drop_imap(struct tern_session *s)
{
    imap_free(s->imap);
    s->imap = NULL;
    free(s->selected);
    s->selected = NULL;
    sess_drop_extra(s);
}

static void
sess_extra_on_examine(void *aux, enum tern_status st, const struct imap_response *r)
{
    (void)r;
    struct tern_session *s = aux;
    const struct imap_mailbox *mine = imap_mailbox(s->extra.imap);
    const struct imap_mailbox *main = s->imap ? imap_mailbox(s->imap) : NULL;
    /* Only the very same view of the folder may serve sequence numbers. */
    if (!st && main && main->selected && mine->uidvalidity == main->uidvalidity &&
        mine->exists == main->exists)
        s->extra.state = SESS_EXTRA_READY;
    else
        s->extra.state = SESS_EXTRA_FAILED;
}

static void
sess_extra_examine(struct tern_session *s)
{
    struct imap_args a;
    imap_args_init(&a);
    s->extra.state = SESS_EXTRA_SELECTING;
    if (imap_args_raw(&a, " ") || sess_arg_folder(s, &a, s->extra.folder) ||
        imap_submit(s->extra.imap, "EXAMINE", &a, NULL, NULL, sess_extra_on_examine, s))
        s->extra.state = SESS_EXTRA_FAILED;
    imap_args_free(&a);
}

static void
sess_extra_on_open(void *aux, enum tern_status st, const struct imap_response *r)
{
    (void)r;
    struct tern_session *s = aux;
    if (st)
        s->extra.state = SESS_EXTRA_FAILED;
    else
        sess_extra_examine(s);
}

void
sess_extra_start(struct tern_session *s, const char *folder)
{
    struct sess_extra *x = &s->extra;
    if (x->state == SESS_EXTRA_FAILED || (x->imap && imap_is_dead(x->imap)))
        sess_drop_extra(s);
    if (x->state == SESS_EXTRA_OPENING || x->state == SESS_EXTRA_SELECTING)
        return;
    if (x->state == SESS_EXTRA_READY && strcmp(x->folder, folder) == 0)
        return;
    free(x->folder);
    x->folder = strdup(folder);
    if (!x->folder) {
        x->state = SESS_EXTRA_FAILED;
        return;
    }
    if (x->state == SESS_EXTRA_READY) {
        sess_extra_examine(s);
        return;
    }
    struct imap_opts o;
    if (sess_imap_opts(s, &o) || imap_new(s->loop, &o, &x->err, &x->imap)) {
        x->state = SESS_EXTRA_FAILED;
        return;
    }
    x->state = SESS_EXTRA_OPENING;
    if (imap_open(x->imap, sess_extra_on_open, s))
        x->state = SESS_EXTRA_FAILED;
}

bool
sess_extra_pending(const struct tern_session *s)
{
    return s->extra.state == SESS_EXTRA_OPENING || s->extra.state == SESS_EXTRA_SELECTING;
}

struct imap_conn *
sess_extra_ready(struct tern_session *s, const char *folder)
{
    struct sess_extra *x = &s->extra;
    if (x->state != SESS_EXTRA_READY || imap_is_dead(x->imap) || strcmp(x->folder, folder) != 0)
        return NULL;
    return x->imap;
}

void
tern_session_free(struct tern_session *s)
{
    if (!s)
        return;
    sess_drop_imap(s);
    loop_free(s->loop);
    if (s->secret) {
        explicit_bzero(s->secret, strlen(s->secret));
        free(s->secret);
    }
    tern_err_clear(&s->err);
    tbuf_free(&s->out);
    free(s);
}

const char *
tern_session_error(const struct tern_session *s)
{
    return tern_err_msg(&s->err);
}

enum tern_status
sess_fail(struct tern_session *s, enum tern_status st, const char *fmt, ...)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    tern_err_set(&s->err, st, "%s", tbuf_ptr(&b));
    tbuf_free(&b);
    return st;
}

static void
sess_on_done(void *aux, enum tern_status st, const struct imap_response *r)
{
    struct sess_op *op = aux;
    op->st = st;
    if (r && op->on_tagged)
        op->on_tagged(op, r);
    op->done = true;
}

static void
sess_on_open(void *aux, enum tern_status st, const struct imap_response *r)
{
    (void)r;
    struct sess_op *op = aux;
    op->st = st;
    op->done = true;
}

void
tern_session_set_trace(struct tern_session *s, tern_trace_fn fn, void *aux)
{
    s->trace = fn;
    s->trace_aux = aux;
}

void
sess_test_step(const char *what)
{
    static long count;
    static long kill_at = -1;
    (void)what;
    if (kill_at < 0) {
        const char *v = getenv("TERN_TEST_KILL_AT");
        kill_at = v && *v ? strtol(v, NULL, 10) : 0;
    }
    if (kill_at > 0 && ++count == kill_at)
        raise(SIGKILL);
}

int64_t
sess_now(void)
{
    const char *v = getenv("TERN_TEST_NOW");
    if (v && *v)
        return strtoll(v, NULL, 10);
    return (int64_t)time(NULL);
}

void
sess_trace(void *aux, bool sent, const char *line, size_t len)
{
    struct tern_session *s = aux;
    if (s->trace)
        s->trace(s->trace_aux, sent, line, len);
}

/* The connection options of the account; *O borrows from the session. */
enum tern_status
sess_conn_opts(struct tern_session *s, const struct tern_url *url, bool need_secret,
               struct sess_conn *out)
{
    const struct tern_account *a = s->acct;
    memset(out, 0, sizeof(*out));
    if (url->implicit_tls && a->tls == TERN_TLS_OFF)
        return sess_fail(s, TERN_E_CONFIG,
                         "account %s: tls = off applies only to imap://, pop3:// and smtp:// "
                         "URLs, not %s://",
                         a->name, url->scheme);
    out->security = url->implicit_tls        ? SESS_SEC_IMPLICIT
                    : a->tls == TERN_TLS_OFF ? SESS_SEC_NONE
                                             : SESS_SEC_STARTTLS;
    out->verify = a->tls == TERN_TLS_FINGERPRINT ? NET_VERIFY_FINGERPRINT : NET_VERIFY_CHAIN;
    memcpy(out->fingerprint, a->fingerprint, sizeof(out->fingerprint));
    out->ca_file = a->tls_ca_file;
    out->user = url->user ? url->user : "";
    if (!sasl_mech_parse(a->auth, &out->mech))
        return sess_fail(s, TERN_E_CONFIG, "account %s: unknown auth mechanism '%s'", a->name,
                         a->auth);
    out->timeout_ms = (a->timeout > 0 ? a->timeout : 30) * 1000;
    if (need_secret && !s->secret) {
        enum tern_status st = account_password(a, &s->secret, &s->err);
        if (st)
            return st;
    }
    out->secret = need_secret ? s->secret : NULL;
    return TERN_OK;
}

static enum tern_status
sess_imap_opts(struct tern_session *s, struct imap_opts *o)
{
    const struct tern_account *a = s->acct;
    if (!a->imap)
        return sess_fail(s, TERN_E_CONFIG, "account %s has no imap server configured", a->name);
    struct sess_conn c;
    enum tern_status st = sess_conn_opts(s, a->imap, true, &c);
    if (st)
        return st;
    memset(o, 0, sizeof(*o));
    o->host = a->imap->host;
    o->port = a->imap->port;
    o->security = c.security == SESS_SEC_IMPLICIT ? IMAP_SEC_IMPLICIT_TLS
                  : c.security == SESS_SEC_NONE   ? IMAP_SEC_NONE
                                                  : IMAP_SEC_STARTTLS;
    o->verify = c.verify;
    memcpy(o->fingerprint, c.fingerprint, sizeof(o->fingerprint));
    o->ca_file = c.ca_file;
    o->user = c.user;
    o->secret = c.secret;
    o->mech = c.mech;
    o->timeout_ms = c.timeout_ms;
    o->compress = a->compress;
    imap_limits_default(&o->limits);
    if (s->trace) {
        o->trace = sess_trace;
        o->trace_aux = s;
    }
    return TERN_OK;
}

enum tern_status
sess_imap(struct tern_session *s)
{
    if (s->imap && !imap_is_dead(s->imap))
        return TERN_OK;
    sess_drop_imap(s);
    struct imap_opts o;
    enum tern_status st = sess_imap_opts(s, &o);
    if (st)
        return st;
    st = imap_new(s->loop, &o, &s->err, &s->imap);
    if (st)
        return st;
    struct sess_op op = {0};
    st = imap_open(s->imap, sess_on_open, &op);
    if (!st)
        st = loop_run_until(s->loop, &op.done);
    if (!st)
        st = op.st;
    if (st) {
        sess_drop_imap(s);
        return st;
    }
    return TERN_OK;
}

enum tern_status
sess_submit(struct tern_session *s, const char *name, const struct imap_args *args,
            imap_untagged_fn on_untagged, void *aux, struct sess_op *op)
{
    return sess_submit_on(s, s->imap, name, args, on_untagged, aux, op);
}

enum tern_status
sess_submit_on(struct tern_session *s, struct imap_conn *c, const char *name,
               const struct imap_args *args, imap_untagged_fn on_untagged, void *aux,
               struct sess_op *op)
{
    op->done = false;
    op->st = TERN_OK;
    enum tern_status st = imap_submit(c, name, args, on_untagged, aux, sess_on_done, op);
    if (st) {
        op->done = true;
        op->st = st;
    }
    return st;
}

enum tern_status
sess_wait(struct tern_session *s, struct sess_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        enum tern_status st = loop_run_until(s->loop, &ops[i].done);
        if (st)
            return sess_fail(s, st, "event loop failed");
    }
    for (size_t i = 0; i < n; i++)
        if (ops[i].st)
            return ops[i].st;
    return TERN_OK;
}

enum tern_status
sess_run(struct tern_session *s, const char *name, const struct imap_args *args,
         imap_untagged_fn on_untagged, void *aux, struct sess_op *op)
{
    struct sess_op local = {0};
    if (!op)
        op = &local;
    enum tern_status st = sess_submit(s, name, args, on_untagged, aux, op);
    if (st)
        return st;
    return sess_wait(s, op, 1);
}

enum tern_status
sess_arg_folder(struct tern_session *s, struct imap_args *a, const char *folder)
{
    if (strcasecmp(folder, "INBOX") == 0)
        return imap_args_raw(a, "INBOX");
    char *wire = NULL;
    enum tern_status st = mutf7_encode(folder, strlen(folder), &wire);
    if (st == TERN_E_USAGE)
        return sess_fail(s, st, "folder name '%s' is not valid UTF-8", folder);
    if (st)
        return st;
    st = imap_args_string(a, wire, strlen(wire));
    free(wire);
    return st;
}

/* The tagged NO of SELECT carries [NONEXISTENT] (RFC 5530) on most servers. */
static void
sess_on_select_tagged(struct sess_op *op, const struct imap_response *r)
{
    bool *missing = op->data;
    if (r->cond != IMAP_COND_OK)
        *missing = (r->code && strcmp(r->code, "NONEXISTENT") == 0) ||
                   (!r->code && strcasestr(r->text, "exist"));
}

enum tern_status
sess_select(struct tern_session *s, const char *folder, bool write)
{
    enum tern_status st = sess_imap(s);
    if (st)
        return st;
    if (s->selected && strcmp(s->selected, folder) == 0 && (s->selected_rw || !write) &&
        imap_mailbox(s->imap)->selected)
        return TERN_OK;
    free(s->selected);
    s->selected = NULL;
    struct imap_args a;
    imap_args_init(&a);
    st = imap_args_raw(&a, " ");
    if (!st)
        st = sess_arg_folder(s, &a, folder);
    bool missing = false;
    struct sess_op op = {.on_tagged = sess_on_select_tagged, .data = &missing};
    if (!st)
        st = sess_run(s, write ? "SELECT" : "EXAMINE", &a, NULL, NULL, &op);
    imap_args_free(&a);
    if (st == TERN_E_REFUSED)
        return sess_fail(s, missing ? TERN_E_NOTFOUND : TERN_E_REFUSED,
                         "cannot open folder '%s': %s", folder, tern_err_msg(&s->err));
    if (st)
        return st;
    s->selected = strdup(folder);
    s->selected_rw = write;
    return s->selected ? TERN_OK : TERN_E_NOMEM;
}

void
sess_obj_begin(struct tern_session *s, struct json *j)
{
    tbuf_reset(&s->out);
    json_init(j, &s->out);
}

enum tern_status
sess_obj_emit(struct tern_session *s, struct json *j)
{
    if (j->st)
        return j->st;
    if (s->emit)
        s->emit(tbuf_ptr(&s->out), tbuf_len(&s->out), s->emit_aux);
    return TERN_OK;
}

enum tern_status
tern_session_run(struct tern_session *s, const char *line, tern_emit_fn emit, void *aux)
{
    tern_err_clear(&s->err);
    s->emit = emit;
    s->emit_aux = aux;
    enum tern_status st = cmd_run(s, line);
    if (st && !tern_err_msg(&s->err)[0])
        tern_err_set(&s->err, st, "%s", tern_status_name(st));
    return st;
}

static void
sess_on_logout(void *aux, enum tern_status st, const struct imap_response *r)
{
    (void)st;
    (void)r;
    *(bool *)aux = true;
}

void
tern_session_close(struct tern_session *s)
{
    bool done[2] = {true, true};
    struct imap_conn *conns[2] = {s->imap, s->extra.imap};
    for (int i = 0; i < 2; i++)
        if (conns[i] && !imap_is_dead(conns[i]) && imap_is_ready(conns[i]) &&
            imap_logout(conns[i], sess_on_logout, &done[i]) == TERN_OK)
            done[i] = false;
    for (int i = 0; i < 2; i++)
        loop_run_until(s->loop, &done[i]);
    sess_drop_imap(s);
}
