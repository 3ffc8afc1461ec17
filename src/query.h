/*
 * query.h - the query language of DESIGN.md (notmuch's words), parsed once
 * and translated for two engines: IMAP SEARCH on the server, notmuch locally.
 *
 * Layer: src/.
 */
#ifndef TERN_QUERY_H
#define TERN_QUERY_H

#include <stddef.h>

#include "tern.h"

#include "err.h"
#include "imap_args.h"

struct query;

/*
 * Parses LEN bytes of query text. Syntax errors (unbalanced parentheses or
 * quotes, an operator without operand, an unknown prefix, a bad date or size)
 * are TERN_E_USAGE with a sentence that names the offending word. An empty
 * query matches everything. *OUT is owned (query_free).
 */
enum tern_status query_parse(const char *text, size_t len, struct query **out,
                             struct tern_err *err);
void query_free(struct query *q);

/*
 * Appends the IMAP SEARCH keys (RFC 3501 §6.4.4) for Q to ARGS, without the
 * leading "UID SEARCH" and "CHARSET UTF-8" (the caller adds them). An empty
 * query gives "ALL". A term IMAP cannot evaluate exactly (e.g. "thread:",
 * "path:", wildcards "foo*", "mimetype:") is TERN_E_UNSUPPORTED with a
 * sentence naming the term; the search is never silently widened or narrowed.
 */
enum tern_status query_to_imap(const struct query *q, struct imap_args *args, struct tern_err *err);

/* The query in notmuch syntax, owned by the caller (for search --local). */
enum tern_status query_to_notmuch(const struct query *q, char **out, struct tern_err *err);

#endif
