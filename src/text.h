/*
 * text.h - making text from the network safe to print and to put in JSON.
 *
 * Layer: src/. Every string that came from a server or a message passes
 * through here before it reaches a terminal or JSON output (DESIGN.md: what
 * reaches the terminal is sanitized; TESTMATRIX M4, M5, M7).
 */
#ifndef TERN_TEXT_H
#define TERN_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Returns an owned copy of LEN bytes of S that is valid UTF-8 and free of
 * terminal controls:
 * - invalid or overlong UTF-8 sequences and surrogates become U+FFFD;
 * - NUL becomes U+2400 (the visible "NUL" symbol), never a truncation;
 * - other C0 controls, DEL and C1 controls (U+0080-U+009F) become U+FFFD,
 *   except that MULTILINE keeps LF and TAB (CR LF becomes LF, a lone CR
 *   becomes LF); without MULTILINE, CR/LF/TAB become a space (CR LF
 *   becomes one space);
 * - bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) are
 *   dropped.
 * NULL only when out of memory.
 */
char *text_sanitize(const char *s, size_t len, bool multiline);

/*
 * The length (1-4) of the valid UTF-8 sequence at P (at most LEN bytes), or
 * 0 when it is invalid: overlong forms, surrogates and code points past
 * U+10FFFF are refused (RFC 3629 §4).
 */
size_t text_utf8_seq(const char *p, size_t len);

/* True when LEN bytes of S are valid UTF-8 (no overlongs, no surrogates). */
bool text_valid_utf8(const char *s, size_t len);

/*
 * Converts LEN bytes in CHARSET to UTF-8 with iconv; an unknown charset or
 * invalid bytes give U+FFFD replacements (best effort), never an error.
 * CHARSET NULL, UTF-8 or US-ASCII: the bytes are read as UTF-8. The result
 * is not yet sanitized, but it is a C string, so a NUL character (U+0000)
 * in the text becomes U+2400 there rather than cutting it short.
 * Owned; NULL on NOMEM.
 */
char *text_to_utf8(const char *s, size_t len, const char *charset);

#endif
