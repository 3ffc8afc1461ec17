/*
 * err.c - error slot and status names (see err.h, tern.h).
 *
 * Layer: proto/. Includes only libc and proto headers.
 */
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbuf.h"

const char *
tern_status_name(enum tern_status st)
{
    switch (st) {
    case TERN_OK: return "ok";
    case TERN_E_NOMEM: return "nomem";
    case TERN_E_IO: return "io";
    case TERN_E_TLS: return "tls";
    case TERN_E_AUTH: return "auth";
    case TERN_E_PROTO: return "proto";
    case TERN_E_REFUSED: return "refused";
    case TERN_E_UNSUPPORTED: return "unsupported";
    case TERN_E_NOTFOUND: return "notfound";
    case TERN_E_CONFIG: return "config";
    case TERN_E_CANCELED: return "canceled";
    case TERN_E_TIMEOUT: return "timeout";
    case TERN_E_USAGE: return "usage";
    }
    return "unknown";
}

/* Replaces C0 controls and DEL by '?' (tabs become spaces). */
static void
scrub(char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\t')
            *s = ' ';
        else if (c < 0x20 || c == 0x7f)
            *s = '?';
    }
}

static void err_vset(struct tern_err *err, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void
err_vset(struct tern_err *err, const char *fmt, va_list ap)
{
    struct tbuf b;
    tbuf_init(&b, 0);
    tbuf_vaddf(&b, fmt, ap);
    char *msg = tbuf_take(&b);
    if (!msg)
        return;
    scrub(msg);
    free(err->msg);
    err->msg = msg;
}

enum tern_status
tern_err_set(struct tern_err *err, enum tern_status st, const char *fmt, ...)
{
    if (!err)
        return st;
    va_list ap;
    va_start(ap, fmt);
    err_vset(err, fmt, ap);
    va_end(ap);
    return st;
}

void
tern_err_prefix(struct tern_err *err, const char *fmt, ...)
{
    if (!err)
        return;
    struct tbuf b;
    tbuf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    tbuf_vaddf(&b, fmt, ap);
    va_end(ap);
    if (err->msg && *err->msg)
        tbuf_addf(&b, ": %s", err->msg);
    char *msg = tbuf_take(&b);
    if (!msg)
        return;
    scrub(msg);
    free(err->msg);
    err->msg = msg;
}

const char *
tern_err_msg(const struct tern_err *err)
{
    return err && err->msg ? err->msg : "";
}

void
tern_err_clear(struct tern_err *err)
{
    if (!err)
        return;
    free(err->msg);
    err->msg = NULL;
}
