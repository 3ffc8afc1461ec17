/*
 * sasl.c - SASL client messages and base64 (see sasl.h).
 *
 * Layer: proto/. Secrets pass through here; nothing is ever logged.
 */
#include "sasl.h"

#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "b64.h"

const char *
sasl_mech_name(enum sasl_mech m)
{
    switch (m) {
    case SASL_PLAIN: return "PLAIN";
    case SASL_LOGIN: return "LOGIN";
    case SASL_XOAUTH2: return "XOAUTH2";
    case SASL_OAUTHBEARER: return "OAUTHBEARER";
    case SASL_AUTO: break;
    }
    return "";
}

bool
sasl_mech_parse(const char *name, enum sasl_mech *out)
{
    static const enum sasl_mech all[] = {SASL_PLAIN, SASL_LOGIN, SASL_XOAUTH2, SASL_OAUTHBEARER};
    if (!name) {
        *out = SASL_AUTO;
        return true;
    }
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcasecmp(name, sasl_mech_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

enum tern_status
sasl_initial_response(enum sasl_mech m, const char *user, const char *secret, const char *host,
                      int port, struct tbuf *out)
{
    enum tern_status st = TERN_OK;
    if (strchr(user, '\1') || strchr(secret, '\1'))
        return TERN_E_USAGE;
    switch (m) {
    case SASL_PLAIN:
        /* RFC 4616 §2: [authzid] NUL authcid NUL passwd */
        if (!(st = tbuf_addc(out, '\0')) && !(st = tbuf_adds(out, user)) &&
            !(st = tbuf_addc(out, '\0')))
            st = tbuf_adds(out, secret);
        return st;
    case SASL_XOAUTH2: return tbuf_addf(out, "user=%s\1auth=Bearer %s\1\1", user, secret);
    case SASL_OAUTHBEARER:
        /* RFC 7628 §3.1: gs2 header, then key/value pairs. */
        if (strchr(user, ',') || strchr(user, '='))
            return TERN_E_USAGE;
        return tbuf_addf(out, "n,a=%s,\1host=%s\1port=%d\1auth=Bearer %s\1\1", user, host, port,
                         secret);
    case SASL_LOGIN:
    case SASL_AUTO: break;
    }
    return TERN_E_USAGE;
}

enum tern_status
sasl_b64_encode(const char *p, size_t n, struct tbuf *out)
{
    size_t olen = 4 * ((n + 2) / 3);
    if (n > ((size_t)1 << 30))
        return TERN_E_USAGE;
    size_t at = tbuf_len(out);
    enum tern_status st = tbuf_add(out, NULL, 0);
    /* Reserve by appending placeholder bytes, then encode over them. */
    for (size_t i = 0; i < olen && !st; i++)
        st = tbuf_addc(out, '=');
    if (st)
        return st;
    EVP_EncodeBlock((unsigned char *)tbuf_ptr(out) + at, (const unsigned char *)p, (int)n);
    return TERN_OK;
}

enum tern_status
sasl_b64_decode(const char *p, size_t n, struct tbuf *out)
{
    if (n % 4)
        return TERN_E_PROTO;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)p[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad || (v[k] = b64_digit(c, '/')) < 0)
                return TERN_E_PROTO;
        }
        unsigned char b[3] = {(unsigned char)(v[0] << 2 | v[1] >> 4),
                              (unsigned char)((v[1] & 15) << 4 | v[2] >> 2),
                              (unsigned char)((v[2] & 3) << 6 | v[3])};
        enum tern_status st = tbuf_add(out, b, (size_t)(3 - pad));
        if (st)
            return st;
    }
    return TERN_OK;
}
