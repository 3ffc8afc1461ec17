/*
 * messages.c - reading commands: list, search, show, save.
 *
 * Layer: src/cmd.
 *
 * list streams: the summaries are fetched in chunks from the newest down,
 * several chunks pipelined, and each chunk is written out (newest first)
 * as soon as its tagged OK arrives, so memory holds a few chunks at most
 * and the first lines appear before the last are fetched.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/common.h"
#include "json.h"
#include "local.h"
#include "maildir.h"
#include "mime.h"
#include "query.h"
#include "summary.h"

#define LIST_CHUNK 1000
#define LIST_AHEAD 8
/* From this many messages on, a second connection fetches every other chunk:
 * the server then works on two cores, and its work is most of the time. */
#define LIST_PARALLEL_MIN 10000
/* The most of a local message read for its summary's header fields. */
#define LOCAL_HEADERS_MAX (256u << 10)

/* ---- list and search ---- */

struct summary_row {
    uint32_t uid;
    char *json;
    size_t len;
};

struct list_chunk {
    struct list_run *run;
    struct sess_op op;
    bool on_extra;
    /* What the chunk asked for: sequence numbers LO..HI, or the UIDS slice
     * (sorted descending). */
    uint32_t lo, hi;
    const uint32_t *uids;
    size_t nuids;
    struct summary_row *rows;
    size_t n, cap;
};

struct list_run {
    struct tern_session *s;
    const char *folder;       /* the folder listed */
    const char *folder_field; /* "folder" value for search, or NULL */
    struct tbuf scratch;
    enum tern_status st;
};

/* Whether UID is in the descending slice V of N. */
static bool
desc_has(const uint32_t *v, size_t n, uint32_t uid)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] == uid)
            return true;
        if (v[mid] > uid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool
chunk_on_fetch(void *aux, const struct imap_response *r)
{
    struct list_chunk *ch = aux;
    struct list_run *run = ch->run;
    if (!r->name || strcmp(r->name, "FETCH") != 0 || !r->items ||
        r->items->type != IMAP_ITEM_LIST || !summary_has_headers(r->items->child))
        return false; /* e.g. an unsolicited flag change */
    const struct imap_item *uidit = fetch_item(r->items->child, "UID");
    if (!uidit || !uidit->is_number || uidit->num > UINT32_MAX)
        return false;
    if (ch->uids ? !desc_has(ch->uids, ch->nuids, (uint32_t)uidit->num)
                 : (r->number < ch->lo || r->number > ch->hi))
        return false; /* another chunk's, run concurrently by the server */
    if (run->st)
        return true;
    uint32_t uid = 0;
    enum tern_status st = summary_json(r->items->child, run->folder_field, &run->scratch, &uid);
    if (st) {
        run->st = st;
        return true;
    }
    if (ch->n == ch->cap) {
        size_t cap = ch->cap ? ch->cap * 2 : 64;
        struct summary_row *v = realloc(ch->rows, cap * sizeof(*v));
        if (!v) {
            run->st = TERN_E_NOMEM;
            return true;
        }
        ch->rows = v;
        ch->cap = cap;
    }
    struct summary_row *row = &ch->rows[ch->n];
    row->len = tbuf_len(&run->scratch);
    row->json = tbuf_take(&run->scratch);
    row->uid = uid;
    if (!row->json) {
        run->st = TERN_E_NOMEM;
        return true;
    }
    ch->n++;
    return true;
}

static int
row_cmp_desc(const void *a, const void *b)
{
    const struct summary_row *x = a, *y = b;
    return x->uid < y->uid ? 1 : x->uid > y->uid ? -1 : 0;
}

static void
chunk_free_rows(struct list_chunk *ch)
{
    for (size_t i = 0; i < ch->n; i++)
        free(ch->rows[i].json);
    free(ch->rows);
    ch->rows = NULL;
    ch->n = ch->cap = 0;
}

/* Writes out a finished chunk, newest first. */
static void
chunk_emit(struct list_chunk *ch)
{
    struct tern_session *s = ch->run->s;
    if (ch->n)
        qsort(ch->rows, ch->n, sizeof(*ch->rows), row_cmp_desc);
    for (size_t i = 0; i < ch->n; i++) {
        /* A message can appear twice if a flag change raced the fetch. */
        if (i && ch->rows[i].uid == ch->rows[i - 1].uid)
            continue;
        if (s->emit)
            s->emit(ch->rows[i].json, ch->rows[i].len, s->emit_aux);
    }
    chunk_free_rows(ch);
}

/* Submits the FETCH of chunk CH (number IDX) on connection C. */
static enum tern_status
chunk_submit(struct list_run *run, struct list_chunk *ch, struct imap_conn *c, size_t idx,
             uint32_t top, size_t total, const struct uid_list *uids)
{
    struct imap_args a;
    imap_args_init(&a);
    size_t first = idx * LIST_CHUNK;
    size_t n = total - first < LIST_CHUNK ? total - first : LIST_CHUNK;
    const char *name;
    enum tern_status st;
    if (uids) {
        struct uid_list part = {.v = uids->v + first, .n = n};
        ch->uids = part.v;
        ch->nuids = n;
        st = imap_args_raw(&a, " ");
        if (!st)
            st = cmd_args_uids(&a, &part);
        name = "UID FETCH";
    } else {
        ch->hi = top - (uint32_t)first;
        ch->lo = ch->hi - (uint32_t)n + 1;
        st = imap_args_raw(&a, " %u:%u", ch->lo, ch->hi);
        name = "FETCH";
    }
    if (!st)
        st = imap_args_raw(&a, " " SUMMARY_FETCH_ITEMS);
    ch->on_extra = c != run->s->imap;
    if (!st)
        st = sess_submit_on(run->s, c, name, &a, chunk_on_fetch, ch, &ch->op);
    imap_args_free(&a);
    return st;
}

/*
 * Fetches and writes the summaries of the messages given either as
 * sequence ranges from TOP down (UIDS NULL, COUNT messages) or as the UIDs
 * in UIDS (sorted descending). Chunks are written in order; with a large
 * folder every other chunk goes over the extra connection once it is
 * ready, and a chunk that fails there is fetched again on the main one.
 */
static enum tern_status
list_fetch(struct list_run *run, uint32_t top, uint32_t count, const struct uid_list *uids)
{
    struct tern_session *s = run->s;
    enum tern_status st = TERN_OK;
    size_t total = uids ? uids->n : count;
    size_t nchunks = (total + LIST_CHUNK - 1) / LIST_CHUNK;
    struct list_chunk ring[LIST_AHEAD];
    memset(ring, 0, sizeof(ring));
    size_t next = 0, done = 0;
    if (total >= LIST_PARALLEL_MIN)
        sess_extra_start(s, run->folder);

    while (done < nchunks && !st) {
        while (next < nchunks && next - done < LIST_AHEAD && !st) {
            size_t on_main = 0, on_extra = 0;
            for (size_t i = done; i < next; i++)
                ring[i % LIST_AHEAD].on_extra ? on_extra++ : on_main++;
            struct imap_conn *extra = sess_extra_ready(s, run->folder);
            /* While the extra connection is on its way, keep chunks for it. */
            if (!extra && sess_extra_pending(s) && on_main >= 2)
                break;
            struct imap_conn *c = extra && on_extra < on_main ? extra : s->imap;
            struct list_chunk *ch = &ring[next % LIST_AHEAD];
            memset(ch, 0, sizeof(*ch));
            ch->run = run;
            st = chunk_submit(run, ch, c, next, top, total, uids);
            next++;
        }
        if (st)
            break;
        struct list_chunk *ch = &ring[done % LIST_AHEAD];
        st = sess_wait(s, &ch->op, 1);
        if (st && ch->on_extra && !run->st && !imap_is_dead(s->imap)) {
            /* The extra connection failed: fetch this chunk on the main one. */
            chunk_free_rows(ch);
            st = chunk_submit(run, ch, s->imap, done, top, total, uids);
            if (!st)
                st = sess_wait(s, &ch->op, 1);
        }
        if (!st)
            st = run->st;
        if (!st)
            chunk_emit(ch);
        done++;
    }
    /* On failure, let whatever is still in flight finish or fail. */
    for (size_t i = done; i < next; i++) {
        struct list_chunk *ch = &ring[i % LIST_AHEAD];
        sess_wait(s, &ch->op, 1);
    }
    for (size_t i = 0; i < LIST_AHEAD; i++)
        chunk_free_rows(&ring[i]);
    return st;
}

/* Runs UID SEARCH for QUERY in the selected folder. */
static enum tern_status
search_uids(struct tern_session *s, const char *query, size_t qlen, struct uid_list *out)
{
    memset(out, 0, sizeof(*out));
    struct query *q = NULL;
    enum tern_status st = query_parse(query, qlen, &q, &s->err);
    if (st)
        return st;
    struct imap_args keys, a;
    imap_args_init(&keys);
    imap_args_init(&a);
    st = query_to_imap(q, &keys, &s->err);
    query_free(q);
    bool utf8 = false;
    for (size_t i = 0; !st && i < keys.n; i++)
        for (size_t k = 0; k < keys.v[i].len; k++)
            if ((unsigned char)keys.v[i].data[k] >= 0x80)
                utf8 = true;
    if (!st)
        st = imap_args_raw(&a, "%s%s ", imap_has_cap(s->imap, "ESEARCH") ? " RETURN (ALL)" : "",
                           utf8 ? " CHARSET UTF-8" : "");
    if (!st)
        st = imap_args_append(&a, &keys);
    if (!st) {
        st = sess_run(s, "UID SEARCH", &a, uid_list_on_search, out, NULL);
        if (st == TERN_E_REFUSED)
            tern_err_prefix(&s->err, "the server could not evaluate the search");
    }
    imap_args_free(&keys);
    imap_args_free(&a);
    if (!st && out->st)
        st = sess_fail(s, out->st, "malformed SEARCH reply from the server");
    if (st)
        uid_list_free(out);
    else
        uid_list_sort(out, 1);
    return st;
}

/* Reads the header block of a local message (up to the blank line). */
static enum tern_status
local_headers(struct local_folder *f, const struct local_msg *m, struct tbuf *out,
              struct tern_err *err)
{
    int fd = -1;
    enum tern_status st = maildir_msg_open(f->md, m->name, &fd, err);
    if (st)
        return st;
    tbuf_reset(out);
    char buf[8192];
    while (tbuf_len(out) < LOCAL_HEADERS_MAX) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if ((st = tbuf_add(out, buf, (size_t)n)))
            break;
        if (strstr(tbuf_ptr(out), "\n\n") || strstr(tbuf_ptr(out), "\n\r\n"))
            break;
    }
    close(fd);
    return st;
}

static enum tern_status
local_list(struct tern_session *s, const char *folder, size_t qlen, long limit, bool with_folder)
{
    if (qlen)
        return sess_fail(s, TERN_E_UNSUPPORTED,
                         "searching the local folder '%s' needs the notmuch index, which this "
                         "version of tern does not build yet",
                         folder);
    struct local_folder f;
    enum tern_status st = local_open(s, folder, &f);
    if (st)
        return st;
    struct tbuf hdrs, out;
    tbuf_init(&hdrs, 0);
    tbuf_init(&out, 0);
    size_t count = 0;
    for (size_t i = f.n; !st && i-- > 0 && (limit < 0 || count < (size_t)limit); count++) {
        const struct local_msg *m = &f.v[i];
        st = local_headers(&f, m, &hdrs, &s->err);
        if (st == TERN_E_NOTFOUND) {
            st = TERN_OK; /* removed meanwhile */
            continue;
        }
        char date[40];
        struct tm tm;
        time_t t = (time_t)m->mtime;
        gmtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S+00:00", &tm);
        struct summary_src src = {
            .uid = m->uid,
            .folder = with_folder ? folder : NULL,
            .hdrs = tbuf_ptr(&hdrs),
            .hlen = tbuf_len(&hdrs),
            .fallback_date = date,
            .maildir_flags = m->flags,
            .has_size = true,
            .size = m->size,
        };
        if (!st)
            st = summary_write(&src, &out);
        if (!st && s->emit)
            s->emit(tbuf_ptr(&out), tbuf_len(&out), s->emit_aux);
    }
    tbuf_free(&hdrs);
    tbuf_free(&out);
    local_close(&f);
    return st;
}

static enum tern_status
list_or_search(struct tern_session *s, const char *folder, const char *query, size_t qlen,
               long limit, bool with_folder)
{
    if (local_is_local(s, folder)) {
        bool has_query = false;
        for (size_t i = 0; i < qlen; i++)
            has_query |= query[i] != ' ';
        return local_list(s, folder, has_query ? qlen : 0, limit, with_folder);
    }
    enum tern_status st = sess_select(s, folder, false);
    if (st)
        return st;
    struct list_run run = {.s = s, .folder = folder, .folder_field = with_folder ? folder : NULL};
    tbuf_init(&run.scratch, 0);
    bool has_query = false;
    for (size_t i = 0; i < qlen; i++)
        if (query[i] != ' ')
            has_query = true;
    if (has_query) {
        struct uid_list uids;
        st = search_uids(s, query, qlen, &uids);
        if (!st) {
            if (limit >= 0 && uids.n > (size_t)limit)
                uids.n = (size_t)limit;
            st = list_fetch(&run, 0, 0, &uids);
            uid_list_free(&uids);
        }
    } else {
        uint32_t exists = imap_mailbox(s->imap)->exists;
        uint32_t count = limit >= 0 && (uint32_t)limit < exists ? (uint32_t)limit : exists;
        st = list_fetch(&run, exists, count, NULL);
    }
    tbuf_free(&run.scratch);
    if (st == TERN_E_NOMEM)
        sess_fail(s, st, "out of memory");
    return st;
}

/*
 * Splits "list FOLDER [QUERY] [--limit N]": trailing options are taken off
 * the end, the query is the raw text between FOLDER and them.
 */
static enum tern_status
parse_query_args(struct tern_session *s, const struct cmd_words *w, const char *line, size_t first,
                 const char **q, size_t *qlen, long *limit)
{
    size_t end = w->n;
    *limit = -1;
    while (end >= first + 2 && strcmp(w->v[end - 2].text, "--limit") == 0) {
        char *e;
        errno = 0;
        long n = strtol(w->v[end - 1].text, &e, 10);
        if (errno || *e || e == w->v[end - 1].text || n < 0)
            return sess_fail(s, TERN_E_USAGE, "--limit takes a number, not '%s'",
                             w->v[end - 1].text);
        *limit = n;
        end -= 2;
    }
    for (size_t i = first; i < end; i++)
        if (strncmp(line + w->v[i].start, "--", 2) == 0)
            return sess_fail(s, TERN_E_USAGE, "unknown option '%s'", w->v[i].text);
    if (end > first) {
        *q = line + w->v[first].start;
        *qlen = w->v[end - 1].end - w->v[first].start;
    } else {
        *q = "";
        *qlen = 0;
    }
    return TERN_OK;
}

enum tern_status
cmd_list(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    const char *q;
    size_t qlen;
    long limit;
    enum tern_status st = parse_query_args(s, w, line, 2, &q, &qlen, &limit);
    if (st)
        return st;
    return list_or_search(s, w->v[1].text, q, qlen, limit, false);
}

enum tern_status
cmd_search(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    if (strcmp(w->v[1].text, "--local") == 0)
        return sess_fail(s, TERN_E_UNSUPPORTED,
                         "search --local needs the local notmuch index, which this version "
                         "of tern does not build yet");
    if (w->n < 3)
        return sess_fail(s, TERN_E_USAGE, "usage: search FOLDER QUERY");
    const char *q;
    size_t qlen;
    long limit;
    enum tern_status st = parse_query_args(s, w, line, 2, &q, &qlen, &limit);
    if (st)
        return st;
    if (qlen == 0)
        return sess_fail(s, TERN_E_USAGE, "usage: search FOLDER QUERY");
    return list_or_search(s, w->v[1].text, q, qlen, limit, true);
}

/* ---- show and save: the raw message, in memory or in a temporary file ---- */

struct raw_msg {
    uint32_t uid;
    bool found;
    const char *mem; /* while inside the handler only */
    size_t len;
    int fd; /* temporary file of a streamed literal, -1 when none */
    enum tern_status st;
    enum tern_status (*use)(struct raw_msg *m, uint32_t uid);
    struct tern_session *s;
    void *ctx;
};

static enum tern_status
sink_open(void *aux, uint64_t size, void **stream)
{
    struct raw_msg *m = aux;
    const char *dir = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof(path), "%s/tern-msg-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0)
        return TERN_E_IO;
    unlink(path);
    if (m->fd >= 0)
        close(m->fd);
    m->fd = fd;
    *stream = m;
    return TERN_OK;
}

/* Writes all N bytes of P to FD (short writes and EINTR retried). */
static enum tern_status
write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return TERN_E_IO;
        p += k;
        n -= (size_t)k;
    }
    return TERN_OK;
}

static enum tern_status
sink_write(void *aux, void *stream, const char *p, size_t n)
{
    struct raw_msg *m = stream;
    return write_all(m->fd, p, n);
}

static void
sink_close(void *aux, void *stream, bool ok)
{
    (void)aux;
    (void)stream;
    (void)ok;
}

static bool
raw_on_fetch(void *aux, const struct imap_response *r)
{
    struct raw_msg *m = aux;
    if (!r->name || strcmp(r->name, "FETCH") != 0 || !r->items || r->items->type != IMAP_ITEM_LIST)
        return false;
    const struct imap_item *uid = fetch_item(r->items->child, "UID");
    const struct imap_item *body = fetch_item(r->items->child, "BODY[]");
    if (!uid || !uid->is_number || uid->num != m->uid || !body || m->found)
        return false;
    m->found = true;
    if (body->type == IMAP_ITEM_STRING) {
        m->mem = body->str;
        m->len = body->len;
    } else if (body->type == IMAP_ITEM_STREAMED) {
        m->mem = NULL;
        m->len = body->size;
        if (lseek(m->fd, 0, SEEK_SET) < 0) {
            m->st = TERN_E_IO;
            return true;
        }
    } else {
        m->mem = "";
        m->len = 0;
    }
    m->st = m->use(m, (uint32_t)uid->num);
    m->mem = NULL;
    return true;
}

/* The same for a message of a local folder: it is read from its file. */
static enum tern_status
fetch_local(struct tern_session *s, const char *folder, struct raw_msg *m)
{
    struct local_folder f;
    enum tern_status st = local_open(s, folder, &f);
    if (st)
        return st;
    const struct local_msg *lm = local_find(&f, m->uid);
    if (!lm)
        st = sess_fail(s, TERN_E_NOTFOUND, "no message with UID %u in folder '%s'", m->uid, folder);
    if (!st)
        st = maildir_msg_open(f.md, lm->name, &m->fd, &s->err);
    if (!st) {
        m->found = true;
        m->len = lm->size;
        st = m->use(m, m->uid);
    }
    if (m->fd >= 0)
        close(m->fd);
    m->fd = -1;
    local_close(&f);
    return st;
}

/* Fetches BODY.PEEK[] of UID in FOLDER and calls M->use inside the handler. */
static enum tern_status
fetch_raw(struct tern_session *s, const char *folder, const char *uidword, struct raw_msg *m)
{
    char *e;
    errno = 0;
    unsigned long uid = strtoul(uidword, &e, 10);
    if (errno || *e || !uid || uid > UINT32_MAX || uidword[0] == '-' || uidword[0] == '+')
        return sess_fail(s, TERN_E_USAGE, "'%s' is not a UID", uidword);
    m->fd = -1;
    m->s = s;
    m->uid = (uint32_t)uid;
    if (local_is_local(s, folder))
        return fetch_local(s, folder, m);
    enum tern_status st = sess_select(s, folder, false);
    if (st)
        return st;
    struct imap_literal_sink sink = {sink_open, sink_write, sink_close, m};
    imap_set_literal_sink(s->imap, &sink);
    struct imap_args a;
    imap_args_init(&a);
    st = imap_args_raw(&a, " %lu (UID BODY.PEEK[])", uid);
    if (!st)
        st = sess_run(s, "UID FETCH", &a, raw_on_fetch, m, NULL);
    imap_args_free(&a);
    imap_set_literal_sink(s->imap, NULL);
    if (m->fd >= 0)
        close(m->fd);
    if (st)
        return st;
    if (!m->found)
        return sess_fail(s, TERN_E_NOTFOUND, "no message with UID %lu in folder '%s'", uid, folder);
    return m->st;
}

/* The parsed view of the fetched message, wherever it is held. */
static enum tern_status
raw_view(struct raw_msg *m, struct mime_view **v)
{
    if (m->mem || m->fd < 0)
        return mime_view_mem(m->mem ? m->mem : "", m->len, v, &m->s->err);
    return mime_view_fd(m->fd, v, &m->s->err);
}

static enum tern_status
show_use(struct raw_msg *m, uint32_t uid)
{
    struct tern_session *s = m->s;
    struct mime_view *v = NULL;
    enum tern_status st = raw_view(m, &v);
    if (st)
        return st;
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    json_key(&j, "uid");
    json_int(&j, uid);
    json_key(&j, "headers");
    json_obj(&j);
    for (size_t i = 0; i < v->nheaders; i++) {
        json_key(&j, v->headers[i].name);
        json_cstr(&j, v->headers[i].value);
    }
    json_obj_end(&j);
    json_key(&j, "text");
    json_cstr(&j, v->text ? v->text : "");
    json_key(&j, "parts");
    json_arr(&j);
    for (size_t i = 0; i < v->nparts; i++) {
        json_obj(&j);
        json_key(&j, "id");
        json_cstr(&j, v->parts[i].id);
        json_key(&j, "type");
        json_cstr(&j, v->parts[i].type);
        json_key(&j, "filename");
        json_cstr(&j, v->parts[i].filename);
        json_key(&j, "size");
        json_int(&j, (int64_t)v->parts[i].size);
        json_obj_end(&j);
    }
    json_arr_end(&j);
    json_obj_end(&j);
    mime_view_free(v);
    return sess_obj_emit(s, &j);
}

enum tern_status
cmd_show(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    struct raw_msg m = {.use = show_use};
    return fetch_raw(s, w->v[1].text, w->v[2].text, &m);
}

struct save_ctx {
    const char *part;
    const char *file;
    char *path; /* FILE, or a name inside FILE when it is a directory */
};

/*
 * When the target is a directory, the file inside it is named after the
 * part's own file name, made safe (TESTMATRIX M9: no "../", no absolute
 * path, no control characters), else "part-ID" or "message-UID.eml".
 */
static enum tern_status
save_target(struct raw_msg *m, struct save_ctx *ctx, uint32_t uid)
{
    struct stat sb;
    if (stat(ctx->file, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        ctx->path = strdup(ctx->file);
        return ctx->path ? TERN_OK : TERN_E_NOMEM;
    }
    char *name = NULL;
    if (strcmp(ctx->part, "0") != 0) {
        struct mime_view *v = NULL;
        enum tern_status st = raw_view(m, &v);
        if (st)
            return st;
        for (size_t i = 0; i < v->nparts && !name; i++)
            if (strcmp(v->parts[i].id, ctx->part) == 0 && v->parts[i].filename)
                name = mime_safe_filename(v->parts[i].filename);
        mime_view_free(v);
    }
    struct tbuf b;
    tbuf_init(&b, 0);
    const char *sep = ctx->file[strlen(ctx->file) - 1] == '/' ? "" : "/";
    enum tern_status st;
    if (name)
        st = tbuf_addf(&b, "%s%s%s", ctx->file, sep, name);
    else if (strcmp(ctx->part, "0") == 0)
        st = tbuf_addf(&b, "%s%smessage-%u.eml", ctx->file, sep, uid);
    else
        st = tbuf_addf(&b, "%s%spart-%s", ctx->file, sep, ctx->part);
    free(name);
    ctx->path = st ? NULL : tbuf_take(&b);
    tbuf_free(&b);
    return ctx->path ? TERN_OK : TERN_E_NOMEM;
}

/* Copies the streamed message from FD to OUT. */
static enum tern_status
copy_fd(int fd, int out, uint64_t *size)
{
    char buf[65536];
    *size = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return TERN_E_IO;
        if (n == 0)
            return TERN_OK;
        if (write_all(out, buf, (size_t)n))
            return TERN_E_IO;
        *size += (uint64_t)n;
    }
}

static enum tern_status
save_use(struct raw_msg *m, uint32_t uid)
{
    struct tern_session *s = m->s;
    struct save_ctx *ctx = m->ctx;
    enum tern_status tst = save_target(m, ctx, uid);
    if (tst)
        return tst;
    if (m->fd >= 0 && lseek(m->fd, 0, SEEK_SET) < 0)
        return sess_fail(s, TERN_E_IO, "cannot read the fetched message: %s", strerror(errno));
    const char *file = ctx->path;
    /* Written next to the target and renamed over it only when complete. */
    size_t plen = strlen(file) + 16;
    char *tmp = malloc(plen);
    if (!tmp)
        return TERN_E_NOMEM;
    snprintf(tmp, plen, "%s.tmp-XXXXXX", file);
    int out = mkstemp(tmp);
    if (out < 0) {
        enum tern_status st = sess_fail(s, TERN_E_IO, "cannot write %s: %s", file, strerror(errno));
        free(tmp);
        return st;
    }
    fchmod(out, 0644);
    uint64_t size = 0;
    enum tern_status st;
    if (strcmp(ctx->part, "0") == 0) {
        if (m->mem) {
            st = write_all(out, m->mem, m->len);
            size = m->len;
        } else if (m->fd >= 0) {
            st = copy_fd(m->fd, out, &size);
        } else {
            st = TERN_OK;
        }
        if (st)
            sess_fail(s, st, "cannot write %s: %s", file, strerror(errno));
    } else if (m->mem || m->fd < 0) {
        st = mime_save_part_mem(m->mem ? m->mem : "", m->len, ctx->part, out, &size, &s->err);
    } else {
        st = mime_save_part_fd(m->fd, ctx->part, out, &size, &s->err);
    }
    if (!st && fsync(out) < 0)
        st = sess_fail(s, TERN_E_IO, "cannot write %s: %s", file, strerror(errno));
    if (close(out) < 0 && !st)
        st = sess_fail(s, TERN_E_IO, "cannot write %s: %s", file, strerror(errno));
    if (!st && rename(tmp, file) < 0)
        st = sess_fail(s, TERN_E_IO, "cannot write %s: %s", file, strerror(errno));
    if (st)
        unlink(tmp);
    free(tmp);
    if (st)
        return st;
    struct json j;
    sess_obj_begin(s, &j);
    json_obj(&j);
    json_key(&j, "saved");
    json_cstr(&j, file);
    json_key(&j, "size");
    json_int(&j, (int64_t)size);
    json_obj_end(&j);
    (void)uid;
    return sess_obj_emit(s, &j);
}

enum tern_status
cmd_save(struct tern_session *s, const struct cmd_words *w, const char *line)
{
    const char *part = w->v[3].text;
    for (const char *p = part; *p; p++)
        if (!((*p >= '0' && *p <= '9') || *p == '.') || (p == part && *p == '.'))
            return sess_fail(s, TERN_E_USAGE, "'%s' is not a part number (e.g. 0, 1, 2.1)", part);
    if (!*part)
        return sess_fail(s, TERN_E_USAGE, "empty part number");
    struct save_ctx ctx = {part, w->v[4].text, NULL};
    struct raw_msg m = {.use = save_use, .ctx = &ctx};
    enum tern_status st = fetch_raw(s, w->v[1].text, w->v[2].text, &m);
    free(ctx.path);
    return st;
}
