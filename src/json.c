/*
 * json.c - JSON output (see json.h).
 *
 * Layer: src/.
 */
#include "json.h"

#include <stdlib.h>
#include <string.h>

#include "text.h"

void
json_init(struct json *j, struct tbuf *out)
{
    memset(j, 0, sizeof(*j));
    j->out = out;
    j->first[0] = true;
}

static void
json_put(struct json *j, const char *s, size_t n)
{
    if (!j->st)
        j->st = tbuf_add(j->out, s, n);
}

/* Writes the separator a new value needs. */
static void
json_value_start(struct json *j)
{
    if (j->after_key) {
        j->after_key = false;
        return;
    }
    if (!j->first[j->depth])
        json_put(j, ",", 1);
    j->first[j->depth] = false;
}

static void
json_open(struct json *j, char c)
{
    json_value_start(j);
    json_put(j, &c, 1);
    if (j->depth + 1 >= JSON_DEPTH_MAX) {
        j->st = TERN_E_USAGE;
        return;
    }
    j->first[++j->depth] = true;
}

static void
json_close(struct json *j, char c)
{
    if (j->depth > 0)
        j->depth--;
    json_put(j, &c, 1);
}

void
json_obj(struct json *j)
{
    json_open(j, '{');
}

void
json_obj_end(struct json *j)
{
    json_close(j, '}');
}

void
json_arr(struct json *j)
{
    json_open(j, '[');
}

void
json_arr_end(struct json *j)
{
    json_close(j, ']');
}

void
json_str(struct json *j, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    json_value_start(j);
    json_put(j, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0; /* start of a run of bytes that need no escaping */
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t seq = c >= 0x80 ? text_utf8_seq(s + i, len - i) : 0;
        if (seq) {
            i += seq;
            continue;
        }
        json_put(j, s + run, i - run);
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            json_put(j, e, 2);
        } else if (c == '\n') {
            json_put(j, "\\n", 2);
        } else if (c == '\t') {
            json_put(j, "\\t", 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            json_put(j, e, 6);
        } else {
            json_put(j, "\xef\xbf\xbd", 3); /* U+FFFD */
        }
        i++;
        run = i;
    }
    json_put(j, s + run, len - run);
    json_put(j, "\"", 1);
}

void
json_cstr(struct json *j, const char *s)
{
    if (s)
        json_str(j, s, strlen(s));
    else
        json_null(j);
}

void
json_net_str(struct json *j, const char *s, size_t len, bool multiline)
{
    /* Printable ASCII needs no sanitizing: the common case, kept fast. */
    size_t i = 0;
    while (i < len && (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f)
        i++;
    if (i == len) {
        json_str(j, s, len);
        return;
    }
    char *clean = text_sanitize(s, len, multiline);
    if (!clean) {
        j->st = TERN_E_NOMEM;
        return;
    }
    json_str(j, clean, strlen(clean));
    free(clean);
}

void
json_key(struct json *j, const char *key)
{
    json_value_start(j);
    j->after_key = true; /* the name itself needs no separator */
    json_str(j, key, strlen(key));
    json_put(j, ":", 1);
    j->after_key = true;
}

void
json_null(struct json *j)
{
    json_value_start(j);
    json_put(j, "null", 4);
}

void
json_int(struct json *j, int64_t v)
{
    char buf[24];
    char *p = buf + sizeof(buf);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    json_value_start(j);
    json_put(j, p, (size_t)(buf + sizeof(buf) - p));
}

void
json_bool(struct json *j, bool v)
{
    json_value_start(j);
    json_put(j, v ? "true" : "false", v ? 4 : 5);
}

void
json_raw(struct json *j, const char *s, size_t len)
{
    json_value_start(j);
    json_put(j, s, len);
}
