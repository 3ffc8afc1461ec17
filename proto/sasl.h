/*
 * sasl.h - SASL client mechanisms shared by IMAP, POP3 and SMTP:
 * PLAIN (RFC 4616), LOGIN, XOAUTH2 and OAUTHBEARER (RFC 7628), and base64.
 *
 * Layer: proto/. Each protocol has a small adapter that frames these
 * messages (AUTHENTICATE / AUTH with or without an initial response).
 */
#ifndef TERN_SASL_H
#define TERN_SASL_H

#include <stdbool.h>
#include <stddef.h>

#include "tern.h"

#include "tbuf.h"

enum sasl_mech {
    SASL_AUTO = 0, /* choose from what the server offers */
    SASL_PLAIN,
    SASL_LOGIN,
    SASL_XOAUTH2,
    SASL_OAUTHBEARER,
};

/* "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"; "" for SASL_AUTO. */
const char *sasl_mech_name(enum sasl_mech m);

/* Parses "plain", "login", ... (any case); SASL_AUTO for NULL. false when unknown. */
bool sasl_mech_parse(const char *name, enum sasl_mech *out);

/*
 * Appends the (unencoded) initial client response of mechanism M to OUT:
 * PLAIN "\0user\0secret"; XOAUTH2 "user=U\1auth=Bearer T\1\1";
 * OAUTHBEARER "n,a=U,\1host=H\1port=P\1auth=Bearer T\1\1". LOGIN has none
 * (its two answers come from sasl_login_step). TERN_E_USAGE when USER or
 * SECRET contains a NUL or (OAuth) a \1 byte.
 */
enum tern_status sasl_initial_response(enum sasl_mech m, const char *user, const char *secret,
                                       const char *host, int port, struct tbuf *out);

/* Appends standard base64 (RFC 4648) of N bytes of P to OUT. */
enum tern_status sasl_b64_encode(const char *p, size_t n, struct tbuf *out);

/* Appends the decoded bytes of base64 text P to OUT; TERN_E_PROTO when invalid. */
enum tern_status sasl_b64_decode(const char *p, size_t n, struct tbuf *out);

#endif
