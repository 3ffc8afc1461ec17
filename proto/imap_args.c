/*
 * imap_args.c - command argument lists (see imap_args.h).
 *
 * Layer: proto/.
 */
#include "imap_args.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void
imap_args_init(struct imap_args *a)
{
    a->v = NULL;
    a->n = 0;
    a->cap = 0;
}

void
imap_args_free(struct imap_args *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i].data);
    free(a->v);
    imap_args_init(a);
}

static enum tern_status
args_push(struct imap_args *a, enum imap_arg_type type, char *data, size_t len)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 8;
        struct imap_arg *v = realloc(a->v, cap * sizeof(*v));
        if (!v) {
            free(data);
            return TERN_E_NOMEM;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n].type = type;
    a->v[a->n].data = data;
    a->v[a->n].len = len;
    a->n++;
    return TERN_OK;
}

enum tern_status
imap_args_raw(struct imap_args *a, const char *fmt, ...)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    enum tern_status st = tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    if (st) {
        tbuf_free(&b);
        return st;
    }
    size_t len = tbuf_len(&b);
    char *s = tbuf_take(&b);
    if (!s)
        return TERN_E_NOMEM;
    if (strpbrk(s, "\r\n") || strlen(s) != len) {
        free(s);
        return TERN_E_USAGE;
    }
    return args_push(a, IMAP_ARG_RAW, s, len);
}

enum tern_status
imap_args_string(struct imap_args *a, const char *s, size_t len)
{
    if (memchr(s, '\0', len))
        return TERN_E_USAGE;
    char *copy = malloc(len + 1);
    if (!copy)
        return TERN_E_NOMEM;
    memcpy(copy, s, len);
    copy[len] = '\0';
    return args_push(a, IMAP_ARG_STRING, copy, len);
}

enum tern_status
imap_args_append(struct imap_args *a, const struct imap_args *src)
{
    for (size_t i = 0; i < src->n; i++) {
        char *copy = malloc(src->v[i].len + 1);
        if (!copy)
            return TERN_E_NOMEM;
        memcpy(copy, src->v[i].data, src->v[i].len + 1);
        enum tern_status st = args_push(a, src->v[i].type, copy, src->v[i].len);
        if (st)
            return st;
    }
    return TERN_OK;
}

bool
imap_string_quotable(const char *s, size_t len)
{
    if (len > 1024)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f)
            return false;
    }
    return true;
}

enum tern_status
imap_args_render(const struct imap_args *a, struct tbuf *out)
{
    enum tern_status st = TERN_OK;
    for (size_t i = 0; i < a->n && !st; i++) {
        const struct imap_arg *arg = &a->v[i];
        if (arg->type == IMAP_ARG_RAW) {
            st = tbuf_add(out, arg->data, arg->len);
        } else if (imap_string_quotable(arg->data, arg->len)) {
            st = tbuf_addc(out, '"');
            for (size_t j = 0; j < arg->len && !st; j++) {
                if (arg->data[j] == '"' || arg->data[j] == '\\')
                    st = tbuf_addc(out, '\\');
                if (!st)
                    st = tbuf_addc(out, arg->data[j]);
            }
            if (!st)
                st = tbuf_addc(out, '"');
        } else {
            st = tbuf_addf(out, "{%zu}", arg->len);
        }
    }
    return st;
}
