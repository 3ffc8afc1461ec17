/*
 * b64.h - the value of a base64 digit, shared by SASL and MIME (RFC 4648 §4,
 * alphabet ending in '+' '/') and IMAP's modified UTF-7 (RFC 3501 §5.1.3,
 * ending in '+' ',').
 *
 * Layer: proto/. Header only; libc only.
 */
#ifndef TERN_B64_H
#define TERN_B64_H

/* The value (0-63) of digit C, where LAST is the 64th digit ('/' or ','),
 * or -1 when C is not a digit of that alphabet. */
static inline int
b64_digit(unsigned char c, unsigned char last)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == last)
        return 63;
    return -1;
}

#endif
