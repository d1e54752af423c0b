/*
 * b64url_encode() and b64url_decode(): RFC 4648 and RFC 7515 vectors, the
 * two url-safe characters, every length from 0 to 300 against a bit-by-bit
 * reference encoder, exact buffer sizes, and rejection of bad input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "signer.h"
#include "test.h"

static void check_vector(const void *bytes, size_t len, const char *text)
{
	char enc[512];
	unsigned char dec[512];
	size_t n, dec_len = 12345;
	int rc;

	n = b64url_encode(enc, bytes, len);
	CHECK_EQ_INT(n, strlen(text), "encoded length of \"%s\"", text);
	CHECK_EQ_INT(n, B64URL_ENCODED_LEN(len), "B64URL_ENCODED_LEN(%zu)",
		     len);
	CHECK(strcmp(enc, text) == 0, "encode: got \"%s\", want \"%s\"", enc,
	      text);

	rc = b64url_decode(dec, &dec_len, text, strlen(text));
	CHECK_EQ_INT(rc, 0, "decode \"%s\"", text);
	CHECK_EQ_INT(dec_len, len, "decoded length of \"%s\"", text);
	CHECK(dec_len == len && memcmp(dec, bytes, len) == 0,
	      "decode \"%s\": wrong bytes", text);
}

static void test_vectors(void)
{
	static const char header[] = "{\"typ\":\"JWT\",\r\n \"alg\":\"HS256\"}";
	static const char payload[] =
		"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n"
		" \"http://example.com/is_root\":true}";
	static const unsigned char appendix_c[] = {3, 236, 255, 224, 193};
	static const unsigned char dash_under[] = {0xfb, 0xff};
	static const unsigned char all_ones[] = {0xff, 0xff, 0xff};
	static const unsigned char zeros[] = {0, 0, 0, 0};

	/* RFC 4648 §10, without the padding. */
	check_vector("", 0, "");
	check_vector("f", 1, "Zg");
	check_vector("fo", 2, "Zm8");
	check_vector("foo", 3, "Zm9v");
	check_vector("foob", 4, "Zm9vYg");
	check_vector("fooba", 5, "Zm9vYmE");
	check_vector("foobar", 6, "Zm9vYmFy");

	/* RFC 7515 §3.3 and Appendix A.1: the JOSE header and payload. */
	check_vector(header, strlen(header),
		     "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9");
	check_vector(payload, strlen(payload),
		     "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6"
		     "Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ");

	/* RFC 7515 Appendix C, and 0xfb 0xff ("+/8=" in base64). */
	check_vector(appendix_c, sizeof(appendix_c), "A-z_4ME");
	check_vector(dash_under, sizeof(dash_under), "-_8");
	check_vector(all_ones, sizeof(all_ones), "____");
	check_vector(zeros, sizeof(zeros), "AAAAAA");
}

/* A reference encoder, one bit at a time, sharing no code with ours. */
static void ref_encode(char *dst, const unsigned char *src, size_t len)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
				       "abcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t bit, nbits = len * 8;
	unsigned int v = 0, k = 0;

	for (bit = 0; bit < nbits; bit++) {
		v = v << 1 | ((src[bit / 8] >> (7 - bit % 8)) & 1);
		if (++k == 6) {
			*dst++ = alphabet[v];
			v = k = 0;
		}
	}
	if (k)
		*dst++ = alphabet[v << (6 - k)];
	*dst = '\0';
}

static uint32_t rng_state = 0x9e3779b9u;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

static void test_round_trip(void)
{
	size_t len, i, n, dec_len;
	int bad = 0;

	for (len = 0; len <= 300; len++) {
		/* Exact sizes, so that ASan sees any overrun. */
		unsigned char *src = malloc(len ? len : 1);
		char *enc = malloc(B64URL_ENCODED_LEN(len) + 1);
		char *ref = malloc(B64URL_ENCODED_LEN(len) + 1);
		unsigned char *dec =
			malloc(B64URL_DECODED_MAX(B64URL_ENCODED_LEN(len)));

		if (!src || !enc || !ref || !dec) {
			CHECK(0, "out of memory");
			return;
		}
		for (i = 0; i < len; i++)
			src[i] = (unsigned char)rng();
		n = b64url_encode(enc, src, len);
		ref_encode(ref, src, len);
		if (n != B64URL_ENCODED_LEN(len) || strlen(enc) != n ||
		    strcmp(enc, ref) != 0) {
			CHECK(0, "encode of %zu bytes differs from reference",
			      len);
			bad++;
		}
		if (b64url_decode(dec, &dec_len, enc, n) != 0 ||
		    dec_len != len || memcmp(dec, src, len) != 0) {
			CHECK(0, "round trip of %zu bytes", len);
			bad++;
		}
		free(src);
		free(enc);
		free(ref);
		free(dec);
	}
	CHECK_EQ_INT(bad, 0, "round trips of 0..300 bytes");
}

static void check_rejected(const char *src, size_t len, const char *why)
{
	unsigned char dec[64];
	size_t dec_len = 99;

	CHECK_EQ_INT(b64url_decode(dec, &dec_len, src, len), KS_EINVAL,
		     "decode accepted %s", why);
	CHECK_EQ_INT(dec_len, 0, "*dst_len not cleared for %s", why);
}

static void test_rejects(void)
{
	char bad[5] = "Zm9v";
	unsigned char dec[8];
	size_t dec_len;
	int c, accepted = 0;

	check_rejected("Z", 1, "length 1");
	check_rejected("Zm9vY", 5, "length 5");
	check_rejected("Zg==", 4, "'=' padding");
	check_rejected("Zm8=", 4, "'=' padding");
	check_rejected("Zg=", 3, "one '='");
	check_rejected("+_8", 3, "'+'");
	check_rejected("-/8", 3, "'/'");
	check_rejected("Zm9v Yg", 7, "a space");
	check_rejected("Zm9v\nYmFy", 9, "a newline");
	check_rejected("Zm\0v", 4, "a NUL");
	check_rejected("Zm9\x80", 4, "a byte above 0x7f");
	check_rejected("Zm9\xff", 4, "0xff");
	/* Non-zero bits after the last whole byte ("Zg" is canonical). */
	check_rejected("Zh", 2, "trailing bits after 2 chars");
	check_rejected("Zm9", 3, "trailing bits after 3 chars");
	check_rejected("-_9", 3, "trailing bits after '-_'");

	/* Every byte outside the url alphabet, in each position of a quad. */
	for (c = 0; c < 256; c++) {
		int pos;

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_')
			continue;
		for (pos = 0; pos < 4; pos++) {
			memcpy(bad, "Zm9v", 4);
			bad[pos] = (char)c;
			if (b64url_decode(dec, &dec_len, bad, 4) != KS_EINVAL)
				accepted++;
		}
	}
	CHECK_EQ_INT(accepted, 0, "bytes outside the alphabet accepted");

	CHECK_EQ_INT(b64url_decode(dec, NULL, "Zg", 2), KS_EINVAL,
		     "NULL dst_len");
	CHECK_EQ_INT(b64url_decode(dec, &dec_len, NULL, 2), KS_EINVAL,
		     "NULL src");
	CHECK_EQ_INT(b64url_decode(NULL, &dec_len, "Zg", 2), KS_EINVAL,
		     "NULL dst");
	CHECK_EQ_INT(b64url_decode(dec, &dec_len, NULL, 0), 0,
		     "NULL src of length 0");
	CHECK_EQ_INT(dec_len, 0, "NULL src of length 0");
}

/* Neither function writes past the sizes the header promises. */
static void test_bounds(void)
{
	char enc[16];
	unsigned char dec[16];
	size_t dec_len;

	memset(enc, '#', sizeof(enc));
	CHECK_EQ_INT(b64url_encode(enc, "fooba", 5), 7, "encode length");
	CHECK(enc[7] == '\0' && enc[8] == '#', "encode wrote past its bound");

	memset(dec, 0xa5, sizeof(dec));
	CHECK_EQ_INT(b64url_decode(dec, &dec_len, "Zm9vYmE", 7), 0, "decode");
	CHECK_EQ_INT(dec_len, 5, "decode length");
	CHECK(dec[5] == 0xa5 && dec[6] == 0xa5 && dec[7] == 0xa5,
	      "decode wrote past the decoded length");
	CHECK_EQ_INT(B64URL_DECODED_MAX(7), 5, "B64URL_DECODED_MAX(7)");
	CHECK_EQ_INT(B64URL_ENCODED_LEN(256), 342, "B64URL_ENCODED_LEN(256)");
}

int main(void)
{
	test_vectors();
	test_round_trip();
	test_rejects();
	test_bounds();
	return TEST_REPORT();
}
