/*
 * Unpadded base64url, which jwksd decodes from tokens and key members:
 * b64url_decode() on any bytes must accept exactly the canonical encodings
 * (re-encoding what it accepts gives the same text back), and encoding any
 * bytes must decode back to them. Every buffer is allocated at exactly the
 * size signer.h promises is enough, so that AddressSanitizer catches a
 * write past it.
 */
#include <string.h>

#include "fuzz.h"
#include "signer.h"

static const char b64url_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Decode the input; re-encode what is accepted and compare. */
static void check_decode(const uint8_t *data, size_t size)
{
	unsigned char *dec = malloc(B64URL_DECODED_MAX(size));
	size_t dec_len = (size_t)-1, n;
	char *enc;
	int rc;

	if (!dec)
		return;
	rc = b64url_decode(dec, &dec_len, (const char *)data, size);
	if (rc) {
		FUZZ_CHECK(rc == KS_EINVAL);
		FUZZ_CHECK(dec_len == 0);
		/* The empty text is valid. */
		FUZZ_CHECK(size > 0);
		free(dec);
		return;
	}
	FUZZ_CHECK(dec_len == size / 4 * 3 + (size % 4 ? size % 4 - 1 : 0));
	enc = malloc(B64URL_ENCODED_LEN(dec_len) + 1);
	if (enc) {
		n = b64url_encode(enc, dec, dec_len);
		FUZZ_CHECK(n == size);
		FUZZ_CHECK(enc[n] == '\0');
		FUZZ_CHECK(memcmp(enc, data, size) == 0);
		free(enc);
	}
	free(dec);
}

/* Encode the input; the text is in the alphabet and decodes back to it. */
static void check_encode(const uint8_t *data, size_t size)
{
	size_t enc_len = B64URL_ENCODED_LEN(size), n, dec_len = (size_t)-1;
	char *enc = malloc(enc_len + 1);
	unsigned char *dec = NULL;

	if (!enc)
		return;
	n = b64url_encode(enc, data, size);
	FUZZ_CHECK(n == enc_len);
	FUZZ_CHECK(enc[n] == '\0');
	FUZZ_CHECK(strspn(enc, b64url_chars) == n);
	dec = malloc(B64URL_DECODED_MAX(n));
	if (dec) {
		FUZZ_CHECK(b64url_decode(dec, &dec_len, enc, n) == 0);
		FUZZ_CHECK(dec_len == size);
		FUZZ_CHECK(size == 0 || memcmp(dec, data, size) == 0);
		free(dec);
	}
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_decode(data, size);
	check_encode(data, size);
	return 0;
}
