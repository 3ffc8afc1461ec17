/*
 * mutf7.h - IMAP modified UTF-7 for mailbox names (RFC 3501 §5.1.3).
 *
 * Layer: proto/. Folder names are modified UTF-7 on the wire and UTF-8
 * everywhere else; these two functions are the only crossing.
 */
#ifndef TERN_MUTF7_H
#define TERN_MUTF7_H

#include <stddef.h>

#include "tern.h"

/*
 * UTF-8 (LEN bytes) to modified UTF-7. *OUT is an owned NUL-terminated
 * string. Invalid UTF-8 (overlong forms, surrogates, truncated sequences, a
 * NUL byte) is TERN_E_USAGE; NOMEM is TERN_E_NOMEM.
 */
enum tern_status mutf7_encode(const char *utf8, size_t len, char **out);

/*
 * Modified UTF-7 (LEN bytes) to UTF-8. Invalid input (bad base64, an
 * unterminated shift, non-zero padding bits, "&-" misuse, encoded printable
 * ASCII, unpaired surrogates, 8-bit bytes, NUL) is TERN_E_PROTO.
 */
enum tern_status mutf7_decode(const char *mutf7, size_t len, char **out);

#endif
