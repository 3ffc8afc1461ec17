/*
 * compose.h - writing outgoing messages with GMime (RFC 5322, 2045-2049,
 * 2047, 2231) and reading their envelope back.
 *
 * Layer: src/.
 */
#ifndef TERN_COMPOSE_H
#define TERN_COMPOSE_H

#include <stddef.h>

#include "tern.h"

#include "err.h"

struct compose_opts {
    const char *from;          /* "Name <addr>", the account's */
    const char *to, *cc, *bcc; /* address lists, each may be NULL */
    const char *subject;       /* UTF-8, may be NULL */
    const char *body_file;     /* UTF-8 text */
    const char *const *attach; /* files, NATTACH of them */
    size_t nattach;
};

/*
 * Writes a new message to the open file descriptor FD: the headers of
 * OPTS (encoded as RFC 2047 where needed), Date, a new Message-ID, the
 * body as text/plain; charset=utf-8 (quoted-printable or base64 when lines
 * or bytes need it, so no line passes 998 octets) and each attachment as a
 * base64 part with its file name (RFC 2231). CR or LF in any value given,
 * or an address list that does not parse, is TERN_E_USAGE naming it; a file
 * that cannot be read is TERN_E_IO. *MESSAGE_ID (owned) is the new
 * Message-ID without brackets.
 */
enum tern_status compose_write(const struct compose_opts *opts, int fd, char **message_id,
                               struct tern_err *err);

/*
 * Copies the message in file IN_FD to OUT_FD, adding Date and Message-ID
 * when missing and From (the account's FROM) when missing. The message
 * otherwise stays as it is. *MESSAGE_ID as above.
 */
enum tern_status compose_prepare(int in_fd, const char *from, int out_fd, char **message_id,
                                 struct tern_err *err);

/*
 * The envelope of the message in FD: the sender (the first From address)
 * and the recipients (To, Cc and Bcc, groups expanded, duplicates once).
 * *FROM and each of *RCPTS are owned (compose_envelope_free). A message
 * without any recipient is TERN_E_USAGE.
 */
enum tern_status compose_envelope(int fd, char **from, char ***rcpts, size_t *nrcpt,
                                  char **message_id, struct tern_err *err);
void compose_envelope_free(char *from, char **rcpts, size_t nrcpt, char *message_id);

#endif
