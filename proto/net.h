/*
 * net.h - one client connection: non-blocking TCP (IPv4, IPv6, host names),
 * OpenSSL 3 TLS (implicit or started later for STARTTLS/STLS), and
 * COMPRESS=DEFLATE (RFC 4978) as a transform under the protocol bytes.
 *
 * Layer: proto/. Knows nothing of the protocols above it: the line engine
 * (line.h) owns buffering; this module moves bytes and reports events.
 *
 * The program must ignore SIGPIPE (the CLI does): OpenSSL writes to the
 * socket with write(2), which raises it when the peer has closed.
 *
 * Verification is on by default (RFC 8314, RFC 7817): the chain against the
 * system store plus the extra CA file, and the host name (or IP address)
 * with SSL_set1_host / X509_VERIFY_PARAM_set1_ip_asc. With a fingerprint
 * pin, the server certificate's SHA-256 must match instead, and nothing
 * else is checked.
 */
#ifndef TERN_NET_H
#define TERN_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "tern.h"

#include "err.h"
#include "loop.h"

enum net_verify {
    NET_VERIFY_CHAIN = 0,   /* chain and host name */
    NET_VERIFY_FINGERPRINT, /* SHA-256 pin of the leaf certificate */
};

struct net_opts {
    const char *host; /* borrowed; name or IP literal */
    int port;
    enum net_verify verify;
    unsigned char fingerprint[32];
    const char *ca_file;    /* borrowed; NULL: system store only */
    int connect_timeout_ms; /* for the TCP connect and the handshake */
};

enum net_event {
    NET_EV_CONNECTED, /* TCP is up (before any TLS) */
    NET_EV_TLS_DONE,  /* handshake finished and verified */
    NET_EV_READABLE,  /* net_read() may return bytes */
    NET_EV_WRITABLE,  /* a write that would have blocked can go on */
    NET_EV_ERROR,     /* fatal; the status and the error slot say why */
};

typedef void (*net_event_fn)(void *aux, enum net_event ev, enum tern_status st);

struct net_conn;

/*
 * Creates a connection object; nothing happens until net_connect(). OPTS is
 * copied (the strings it points to must outlive the connection). ERR is the
 * error slot failures are written to; it is borrowed.
 */
enum tern_status net_new(struct loop *loop, const struct net_opts *opts, net_event_fn fn, void *aux,
                         struct tern_err *err, struct net_conn **out);
/* Closes the socket (without any goodbye) and frees. Accepts NULL. */
void net_free(struct net_conn *c);

/*
 * Closes the socket at once, without a goodbye and without any further
 * event; the object stays valid (reads and writes fail) until net_free().
 */
void net_close(struct net_conn *c);

/* Resolves the host (this step blocks, for DNS) and starts connecting to
 * each address in turn; NET_EV_CONNECTED or NET_EV_ERROR follows. */
enum tern_status net_connect(struct net_conn *c);

/* Starts the TLS handshake on the open connection; NET_EV_TLS_DONE or
 * NET_EV_ERROR (TERN_E_TLS) follows. */
enum tern_status net_start_tls(struct net_conn *c);

/* Starts DEFLATE in both directions (after the server's OK to COMPRESS). */
enum tern_status net_start_deflate(struct net_conn *c);

bool net_is_tls(const struct net_conn *c);

/*
 * Reads up to CAP bytes. TERN_OK with *GOT = 0 means nothing is available
 * now (wait for NET_EV_READABLE). The peer closing the connection is
 * TERN_E_IO "connection closed by the server".
 */
enum tern_status net_read(struct net_conn *c, char *buf, size_t cap, size_t *got);

/*
 * Writes up to LEN bytes; *DONE says how many were taken. Fewer than LEN
 * means the rest must wait for NET_EV_WRITABLE (asked for automatically).
 */
enum tern_status net_write(struct net_conn *c, const char *buf, size_t len, size_t *done);

/* Asks for NET_EV_WRITABLE (true) or stops asking (false). */
void net_want_write(struct net_conn *c, bool want);

/* The loop this connection runs in (borrowed). */
struct loop *net_loop(const struct net_conn *c);

/* A one-line description of the TLS session, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384". */
const char *net_tls_desc(const struct net_conn *c);

#endif
