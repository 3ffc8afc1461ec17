/*
 * json.h - writing one JSON object of headless output into a tbuf.
 *
 * Layer: src/. Strings are escaped per RFC 8259; bytes that are not valid
 * UTF-8 become U+FFFD and control characters are escaped, so the output is
 * always valid JSON in UTF-8. Text from the network should be passed
 * through text_sanitize() first (json_net_str does both).
 */
#ifndef TERN_JSON_H
#define TERN_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "tbuf.h"

#define JSON_DEPTH_MAX 16

struct json {
    struct tbuf *out;    /* borrowed */
    enum tern_status st; /* sticky: the first failure */
    int depth;
    bool first[JSON_DEPTH_MAX];
    bool after_key;
};

void json_init(struct json *j, struct tbuf *out);
void json_obj(struct json *j);
void json_obj_end(struct json *j);
void json_arr(struct json *j);
void json_arr_end(struct json *j);
void json_key(struct json *j, const char *key);
void json_str(struct json *j, const char *s, size_t len);
void json_cstr(struct json *j, const char *s); /* NULL writes null */
void json_null(struct json *j);
void json_int(struct json *j, int64_t v);
void json_bool(struct json *j, bool v);
/* A value that is already JSON (an array built with another writer). */
void json_raw(struct json *j, const char *s, size_t len);
/* Sanitized network text (see text.h); MULTILINE keeps newlines and tabs. */
void json_net_str(struct json *j, const char *s, size_t len, bool multiline);

#endif
