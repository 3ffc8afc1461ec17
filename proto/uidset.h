/*
 * uidset.h - IMAP sequence sets of UIDs: "12", "3,7,9", "100:200", "*".
 *
 * Layer: proto/. Used for command arguments (UIDS in the command language),
 * for COPYUID/VANISHED/ESEARCH results, and to compress lists of UIDs.
 */
#ifndef TERN_UIDSET_H
#define TERN_UIDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern.h"

#include "tbuf.h"

/* '*' (the largest UID in the mailbox) is stored as UIDSET_STAR. */
#define UIDSET_STAR UINT32_MAX

struct uid_range {
    uint32_t lo, hi; /* lo <= hi after parsing ("9:3" is stored as 3:9) */
};

struct uidset {
    struct uid_range *r; /* owned */
    size_t n;
};

/*
 * Parses LEN bytes of a set. Numbers are 1..4294967295 ("0", signs,
 * leading/trailing commas, empty ranges, more than MAX_RANGES ranges, a
 * number over 2^32-1 are errors: TERN_E_USAGE). The ranges are kept in the
 * order given; *OUT must be freed with uidset_free.
 */
enum tern_status uidset_parse(const char *s, size_t len, size_t max_ranges, struct uidset *out);

/* Frees the ranges; accepts an already-freed or zeroed set. */
void uidset_free(struct uidset *set);

/* True when UID lies in one of the ranges ('*' matches only UIDSET_STAR). */
bool uidset_contains(const struct uidset *set, uint32_t uid);

/* Appends the set in IMAP syntax (e.g. "1:3,7,10:*") to OUT. */
enum tern_status uidset_format(const struct uidset *set, struct tbuf *out);

/*
 * Builds a set from N UIDs in any order (duplicates allowed), sorted and
 * merged into the fewest ranges.
 */
enum tern_status uidset_from_list(const uint32_t *uids, size_t n, struct uidset *out);

/*
 * Expands a set into its UIDs in order of the ranges, at most MAX of them
 * (more is TERN_E_USAGE). '*' expands to STAR_VALUE (0: skip ranges that
 * involve '*'). *OUT is owned (free()), *N its count.
 */
enum tern_status uidset_expand(const struct uidset *set, uint32_t star_value, size_t max,
                               uint32_t **out, size_t *n);

#endif
