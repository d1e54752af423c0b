/*
 * Key blobs, which jwksd reads from a store file that another program (or
 * an attacker with write access to it) may have written: signer_load() on
 * any bytes. A blob it accepts must give a working key: public JWK members
 * in base64url and no private member, a signature that verifies and a
 * tampered one that does not, and a save that loads back to the same key
 * and saves to the same bytes again.
 */
#include <string.h>

#include "fuzz.h"
#include "signer.h"

/* The public JWK members of a key, as "name=value;" text. */
struct jwk_text {
	char text[8192];
	size_t len;
	int count;
};

static int jwk_collect(const char *name, const char *value, void *arg)
{
	static const char *const private_members[] = {"d",  "p",  "q",
						      "dp", "dq", "qi"};
	struct jwk_text *jwk = arg;
	unsigned char *bytes;
	size_t i, vlen, len;
	int n;

	FUZZ_CHECK(name && value && value[0]);
	/* The first member is "kty" (RFC 7517 §4.1). */
	FUZZ_CHECK((jwk->count == 0) == (strcmp(name, "kty") == 0));
	for (i = 0; i < sizeof(private_members) / sizeof(private_members[0]);
	     i++)
		FUZZ_CHECK(strcmp(name, private_members[i]) != 0);
	/* Integers and coordinates are unpadded base64url. */
	vlen = strlen(value);
	if (strcmp(name, "kty") != 0 && strcmp(name, "crv") != 0) {
		bytes = malloc(B64URL_DECODED_MAX(vlen));
		if (bytes) {
			FUZZ_CHECK(b64url_decode(bytes, &len, value, vlen) ==
				   0);
			FUZZ_CHECK(len > 0);
			free(bytes);
		}
	}
	n = snprintf(jwk->text + jwk->len, sizeof(jwk->text) - jwk->len,
		     "%s=%s;", name, value);
	FUZZ_CHECK(n > 0 && (size_t)n < sizeof(jwk->text) - jwk->len);
	jwk->len += (size_t)n;
	jwk->count++;
	return 0;
}

/* Sign msg with key; the signature verifies with check, a changed one not. */
static void check_signature(const struct signer_key *key,
			    const struct signer_key *check)
{
	static const char msg[] = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9";
	unsigned char sig[SIGNER_SIG_MAX];
	size_t sig_len = sizeof(sig);

	FUZZ_CHECK(signer_sign(key, msg, sizeof(msg) - 1, sig, &sig_len) == 0);
	FUZZ_CHECK(sig_len > 0 && sig_len <= sizeof(sig));
	FUZZ_CHECK(signer_verify(check, msg, sizeof(msg) - 1, sig, sig_len) ==
		   0);
	FUZZ_CHECK(signer_verify(check, msg, sizeof(msg) - 2, sig, sig_len) !=
		   0);
	sig[sig_len - 1] ^= 1;
	FUZZ_CHECK(signer_verify(check, msg, sizeof(msg) - 1, sig, sig_len) !=
		   0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char pkcs1[] = "-----BEGIN RSA PRIVATE KEY-----";
	static const char pkcs8[] = "-----BEGIN PRIVATE KEY-----";
	struct signer_key *key = NULL, *again = NULL;
	struct jwk_text jwk = {{0}, 0, 0}, jwk_again = {{0}, 0, 0};
	unsigned char *blob = NULL, *blob_again = NULL;
	size_t blob_len = 0, blob_again_len = 0;
	struct ks_err err = {{0}};
	const char *alg;
	int rc;

	rc = signer_load(&key, data, size, &err);
	if (rc) {
		FUZZ_CHECK(rc < 0 && !key);
		return 0;
	}
	FUZZ_CHECK(key);
	alg = signer_key_alg(key);
	FUZZ_CHECK(alg && signer_alg_supported(alg));

	FUZZ_CHECK(signer_public_jwk(key, jwk_collect, &jwk) == 0);
	FUZZ_CHECK(jwk.count >= 2);
	check_signature(key, key);

	/* Save, load back: the same key, saved as the same bytes. */
	FUZZ_CHECK(signer_save(key, &blob, &blob_len, &err) == 0);
	FUZZ_CHECK(blob && blob_len > 0);
	if (strcmp(alg, "RS256") == 0)
		FUZZ_CHECK(blob_len > sizeof(pkcs1) - 1 &&
			   memcmp(blob, pkcs1, sizeof(pkcs1) - 1) == 0);
	else
		FUZZ_CHECK(blob_len > sizeof(pkcs8) - 1 &&
			   memcmp(blob, pkcs8, sizeof(pkcs8) - 1) == 0);
	FUZZ_CHECK(signer_load(&again, blob, blob_len, &err) == 0);
	FUZZ_CHECK(strcmp(signer_key_alg(again), alg) == 0);
	FUZZ_CHECK(signer_public_jwk(again, jwk_collect, &jwk_again) == 0);
	FUZZ_CHECK(jwk.len == jwk_again.len &&
		   memcmp(jwk.text, jwk_again.text, jwk.len) == 0);
	check_signature(key, again);
	check_signature(again, key);
	FUZZ_CHECK(signer_save(again, &blob_again, &blob_again_len, &err) == 0);
	FUZZ_CHECK(blob_again_len == blob_len &&
		   memcmp(blob_again, blob, blob_len) == 0);

	signer_blob_free(blob_again, blob_again_len);
	signer_blob_free(blob, blob_len);
	signer_key_free(again);
	signer_key_free(key);
	return 0;
}
