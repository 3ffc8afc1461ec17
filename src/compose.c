/*
 * compose.c - outgoing messages with GMime (see compose.h).
 *
 * Layer: src/.
 */
#include "compose.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <gmime/gmime.h>

#include "mime.h"

/* CR, LF or NUL in a value given on the command line would make a second
 * header or recipient (TESTMATRIX S3). */
static enum tern_status
check_value(const char *what, const char *v, struct tern_err *err)
{
    if (v && strpbrk(v, "\r\n"))
        return tern_err_set(err, TERN_E_USAGE, "%s contains a line break", what);
    return TERN_OK;
}

static enum tern_status
add_addresses(GMimeMessage *msg, GMimeAddressType type, const char *what, const char *list,
              struct tern_err *err)
{
    if (!list || !*list)
        return TERN_OK;
    InternetAddressList *l = internet_address_list_parse(NULL, list);
    if (!l || internet_address_list_length(l) == 0) {
        if (l)
            g_object_unref(l);
        return tern_err_set(err, TERN_E_USAGE, "%s: cannot read the address list '%s'", what, list);
    }
    internet_address_list_append(g_mime_message_get_addresses(msg, type), l);
    g_object_unref(l);
    return TERN_OK;
}

static char *
new_message_id(const char *from)
{
    const char *at = from ? strrchr(from, '@') : NULL;
    char domain[256] = "localhost";
    if (at) {
        size_t n = strcspn(at + 1, ">\" ");
        if (n && n < sizeof(domain)) {
            memcpy(domain, at + 1, n);
            domain[n] = '\0';
        }
    }
    return g_mime_utils_generate_message_id(domain);
}

static enum tern_status
write_message(GMimeObject *obj, int fd, struct tern_err *err)
{
    GMimeStream *out = g_mime_stream_fs_new(dup(fd));
    GMimeFormatOptions *fo = g_mime_format_options_new();
    /* SMTP wants CR LF; the outbox keeps the message as it is sent. */
    g_mime_format_options_set_newline_format(fo, GMIME_NEWLINE_FORMAT_DOS);
    ssize_t n = g_mime_object_write_to_stream(obj, fo, out);
    int fl = g_mime_stream_flush(out);
    g_mime_format_options_free(fo);
    g_object_unref(out);
    if (n < 0 || fl < 0)
        return tern_err_set(err, TERN_E_IO, "cannot write the message: %s", strerror(errno));
    return TERN_OK;
}

static const char *
guess_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {{".txt", "text/plain"},      {".pdf", "application/pdf"},
                 {".png", "image/png"},       {".jpg", "image/jpeg"},
                 {".jpeg", "image/jpeg"},     {".gif", "image/gif"},
                 {".html", "text/html"},      {".csv", "text/csv"},
                 {".zip", "application/zip"}, {".json", "application/json"}};
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
        if (strcasecmp(dot, types[i].ext) == 0)
            return types[i].type;
    return "application/octet-stream";
}

enum tern_status
compose_write(const struct compose_opts *o, int fd, char **message_id, struct tern_err *err)
{
    *message_id = NULL;
    enum tern_status st = TERN_OK;
    const char *names[] = {"--to", "--cc", "--bcc", "--subject", "from"};
    const char *vals[] = {o->to, o->cc, o->bcc, o->subject, o->from};
    for (size_t i = 0; i < 5 && !st; i++)
        st = check_value(names[i], vals[i], err);
    if (st)
        return st;
    mime_init();
    GMimeMessage *msg = g_mime_message_new(TRUE);
    GMimeObject *top = NULL;
    st = add_addresses(msg, GMIME_ADDRESS_TYPE_FROM, "from", o->from, err);
    if (!st)
        st = add_addresses(msg, GMIME_ADDRESS_TYPE_TO, "--to", o->to, err);
    if (!st)
        st = add_addresses(msg, GMIME_ADDRESS_TYPE_CC, "--cc", o->cc, err);
    if (!st)
        st = add_addresses(msg, GMIME_ADDRESS_TYPE_BCC, "--bcc", o->bcc, err);
    if (!st) {
        g_mime_message_set_subject(msg, o->subject ? o->subject : "", "utf-8");
        GDateTime *now = g_date_time_new_now_local();
        g_mime_message_set_date(msg, now);
        g_date_time_unref(now);
        char *mid = new_message_id(o->from);
        g_mime_message_set_message_id(msg, mid);
        *message_id = strdup(mid);
        g_free(mid);
        g_mime_object_set_header(GMIME_OBJECT(msg), "User-Agent", "tern/" PACKAGE_VERSION, NULL);
    }
    /* The body, UTF-8 text. */
    gchar *text = NULL;
    gsize tlen = 0;
    GError *gerr = NULL;
    if (!st && !g_file_get_contents(o->body_file, &text, &tlen, &gerr)) {
        st = tern_err_set(err, TERN_E_IO, "cannot read %s: %s", o->body_file,
                          gerr ? gerr->message : "error");
        g_clear_error(&gerr);
    }
    if (!st && (memchr(text, '\0', tlen) || !g_utf8_validate(text, (gssize)tlen, NULL)))
        st = tern_err_set(err, TERN_E_USAGE, "%s is not UTF-8 text", o->body_file);
    if (!st) {
        /* The text stays UTF-8 (set_text would pick another charset). */
        GMimeTextPart *body = g_mime_text_part_new_with_subtype("plain");
        g_mime_text_part_set_charset(body, "utf-8");
        GMimeStream *mem = g_mime_stream_mem_new_with_buffer(text, tlen);
        GMimeDataWrapper *dw =
            g_mime_data_wrapper_new_with_stream(mem, GMIME_CONTENT_ENCODING_DEFAULT);
        g_mime_part_set_content(GMIME_PART(body), dw);
        g_object_unref(dw);
        g_object_unref(mem);
        GMimeContentEncoding enc =
            g_mime_part_get_best_content_encoding(GMIME_PART(body), GMIME_ENCODING_CONSTRAINT_7BIT);
        g_mime_part_set_content_encoding(GMIME_PART(body), enc);
        top = GMIME_OBJECT(body);
    }
    g_free(text);
    if (!st && o->nattach) {
        GMimeMultipart *mp = g_mime_multipart_new_with_subtype("mixed");
        g_mime_multipart_add(mp, top);
        g_object_unref(top);
        top = GMIME_OBJECT(mp);
        for (size_t i = 0; !st && i < o->nattach; i++) {
            const char *path = o->attach[i];
            int afd = open(path, O_RDONLY | O_CLOEXEC);
            if (afd < 0) {
                st = tern_err_set(err, TERN_E_IO, "cannot read %s: %s", path, strerror(errno));
                break;
            }
            const char *base = strrchr(path, '/');
            base = base ? base + 1 : path;
            GMimeContentType *ct = g_mime_content_type_parse(NULL, guess_type(base));
            GMimePart *part = g_mime_part_new_with_type(g_mime_content_type_get_media_type(ct),
                                                        g_mime_content_type_get_media_subtype(ct));
            g_object_unref(ct);
            GMimeStream *fs = g_mime_stream_fs_new(afd);
            GMimeDataWrapper *dw =
                g_mime_data_wrapper_new_with_stream(fs, GMIME_CONTENT_ENCODING_DEFAULT);
            g_mime_part_set_content(part, dw);
            g_object_unref(dw);
            g_object_unref(fs);
            g_mime_part_set_filename(part, base);
            g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_BASE64);
            g_mime_multipart_add(mp, GMIME_OBJECT(part));
            g_object_unref(part);
        }
    }
    if (!st) {
        g_mime_message_set_mime_part(msg, top);
        st = write_message(GMIME_OBJECT(msg), fd, err);
    }
    if (top)
        g_object_unref(top);
    g_object_unref(msg);
    if (st) {
        free(*message_id);
        *message_id = NULL;
    }
    return st;
}

static GMimeMessage *
parse_fd(int fd, struct tern_err *err)
{
    mime_init();
    if (lseek(fd, 0, SEEK_SET) < 0) {
        tern_err_set(err, TERN_E_IO, "cannot read the message: %s", strerror(errno));
        return NULL;
    }
    GMimeStream *in = g_mime_stream_fs_new(dup(fd));
    GMimeParser *p = g_mime_parser_new_with_stream(in);
    GMimeMessage *msg = g_mime_parser_construct_message(p, NULL);
    g_object_unref(p);
    g_object_unref(in);
    if (!msg)
        tern_err_set(err, TERN_E_USAGE, "the file is not an RFC 5322 message");
    return msg;
}

enum tern_status
compose_prepare(int in_fd, const char *from, int out_fd, char **message_id, struct tern_err *err)
{
    *message_id = NULL;
    GMimeMessage *msg = parse_fd(in_fd, err);
    if (!msg)
        return TERN_E_USAGE;
    enum tern_status st = TERN_OK;
    InternetAddressList *fl = g_mime_message_get_from(msg);
    if (!fl || internet_address_list_length(fl) == 0)
        st = add_addresses(msg, GMIME_ADDRESS_TYPE_FROM, "from", from, err);
    if (!st && !g_mime_message_get_date(msg)) {
        GDateTime *now = g_date_time_new_now_local();
        g_mime_message_set_date(msg, now);
        g_date_time_unref(now);
    }
    const char *mid = g_mime_message_get_message_id(msg);
    if (!st && (!mid || !*mid)) {
        char *gen = new_message_id(from);
        g_mime_message_set_message_id(msg, gen);
        g_free(gen);
        mid = g_mime_message_get_message_id(msg);
    }
    if (!st)
        *message_id = strdup(mid);
    if (!st)
        st = write_message(GMIME_OBJECT(msg), out_fd, err);
    g_object_unref(msg);
    return st;
}

static enum tern_status
collect(InternetAddressList *l, char ***v, size_t *n)
{
    int len = l ? internet_address_list_length(l) : 0;
    for (int i = 0; i < len; i++) {
        InternetAddress *ia = internet_address_list_get_address(l, i);
        if (INTERNET_ADDRESS_IS_GROUP(ia)) {
            enum tern_status st =
                collect(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(ia)), v, n);
            if (st)
                return st;
            continue;
        }
        const char *addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(ia));
        if (!addr || !*addr)
            continue;
        bool seen = false;
        for (size_t k = 0; k < *n && !seen; k++)
            seen = strcasecmp((*v)[k], addr) == 0;
        if (seen)
            continue;
        char **nv = realloc(*v, (*n + 1) * sizeof(**v));
        if (!nv)
            return TERN_E_NOMEM;
        *v = nv;
        if (!((*v)[*n] = strdup(addr)))
            return TERN_E_NOMEM;
        (*n)++;
    }
    return TERN_OK;
}

enum tern_status
compose_envelope(int fd, char **from, char ***rcpts, size_t *nrcpt, char **message_id,
                 struct tern_err *err)
{
    *from = NULL;
    *rcpts = NULL;
    *nrcpt = 0;
    *message_id = NULL;
    GMimeMessage *msg = parse_fd(fd, err);
    if (!msg)
        return TERN_E_USAGE;
    enum tern_status st = TERN_OK;
    char **senders = NULL;
    size_t nsenders = 0;
    st = collect(g_mime_message_get_from(msg), &senders, &nsenders);
    if (!st && nsenders) {
        *from = senders[0];
        senders[0] = NULL;
    }
    for (size_t i = 0; i < nsenders; i++)
        free(senders[i]);
    free(senders);
    GMimeAddressType types[] = {GMIME_ADDRESS_TYPE_TO, GMIME_ADDRESS_TYPE_CC,
                                GMIME_ADDRESS_TYPE_BCC};
    for (size_t i = 0; !st && i < 3; i++)
        st = collect(g_mime_message_get_addresses(msg, types[i]), rcpts, nrcpt);
    const char *mid = g_mime_message_get_message_id(msg);
    if (!st && mid)
        *message_id = strdup(mid);
    g_object_unref(msg);
    if (!st && !*from)
        st = tern_err_set(err, TERN_E_USAGE, "the message has no From address");
    if (!st && !*nrcpt)
        st = tern_err_set(err, TERN_E_USAGE, "the message has no recipient (To, Cc or Bcc)");
    if (st) {
        compose_envelope_free(*from, *rcpts, *nrcpt, *message_id);
        *from = NULL;
        *rcpts = NULL;
        *nrcpt = 0;
        *message_id = NULL;
    }
    return st;
}

void
compose_envelope_free(char *from, char **rcpts, size_t nrcpt, char *message_id)
{
    free(from);
    for (size_t i = 0; i < nrcpt; i++)
        free(rcpts[i]);
    free(rcpts);
    free(message_id);
}
