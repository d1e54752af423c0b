/*
 * Unpadded base64url (RFC 4648 §5), table-driven: it runs on every token.
 * Decoding is strict: no padding, no whitespace, nothing outside the url
 * alphabet, and the unused low bits of the last character must be zero, so
 * that every byte string has exactly one accepted encoding.
 */
#include <stdint.h>

#include "signer.h"

static const char b64url_alphabet[65] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The value of each character; XX (high bit set) outside the alphabet. */
#define XX 0xff
/* clang-format off */
static const uint8_t b64url_values[256] = {
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX,
	52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX,
	XX,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
	15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, 63,
	XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
	41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
	XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
};
/* clang-format on */
#undef XX

size_t b64url_encode(char *dst, const void *src, size_t src_len)
{
	const unsigned char *s = src;
	char *d = dst;
	uint32_t v;

	for (; src_len >= 3; src_len -= 3, s += 3) {
		v = (uint32_t)s[0] << 16 | (uint32_t)s[1] << 8 | s[2];
		d[0] = b64url_alphabet[v >> 18];
		d[1] = b64url_alphabet[(v >> 12) & 63];
		d[2] = b64url_alphabet[(v >> 6) & 63];
		d[3] = b64url_alphabet[v & 63];
		d += 4;
	}
	if (src_len) {
		v = (uint32_t)s[0] << 16;
		if (src_len == 2)
			v |= (uint32_t)s[1] << 8;
		*d++ = b64url_alphabet[v >> 18];
		*d++ = b64url_alphabet[(v >> 12) & 63];
		if (src_len == 2)
			*d++ = b64url_alphabet[(v >> 6) & 63];
	}
	*d = '\0';
	return (size_t)(d - dst);
}

int b64url_decode(unsigned char *dst, size_t *dst_len, const char *src,
		  size_t src_len)
{
	const unsigned char *s = (const unsigned char *)src;
	unsigned char *d = dst;
	size_t rest = src_len % 4;
	uint32_t a, b, c, e;

	if (!dst_len)
		return KS_EINVAL;
	*dst_len = 0;
	if ((!src || !dst) && src_len)
		return KS_EINVAL;
	if (rest == 1)
		return KS_EINVAL;
	for (; src_len >= 4; src_len -= 4, s += 4) {
		a = b64url_values[s[0]];
		b = b64url_values[s[1]];
		c = b64url_values[s[2]];
		e = b64url_values[s[3]];
		if ((a | b | c | e) & 0x80)
			return KS_EINVAL;
		d[0] = (unsigned char)(a << 2 | b >> 4);
		d[1] = (unsigned char)(b << 4 | c >> 2);
		d[2] = (unsigned char)(c << 6 | e);
		d += 3;
	}
	if (rest) {
		a = b64url_values[s[0]];
		b = b64url_values[s[1]];
		c = rest == 3 ? b64url_values[s[2]] : 0;
		/*
		 * Reject characters outside the alphabet, and bits past the
		 * last whole byte: 4 of them after two characters, 2 after
		 * three.
		 */
		if ((a | b | c) & 0x80 || (rest == 2 ? b & 0x0f : c & 0x03))
			return KS_EINVAL;
		*d++ = (unsigned char)(a << 2 | b >> 4);
		if (rest == 3)
			*d++ = (unsigned char)(b << 4 | c >> 2);
	}
	*dst_len = (size_t)(d - dst);
	return 0;
}
