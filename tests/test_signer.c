/*
 * The signer: RS256 generation, the PKCS#1 PEM blob, loading (PKCS#1 and
 * PKCS#8) and rejecting blobs, the public JWK, signing and verifying, bad
 * arguments, concurrent signing on one key, and, when /usr/bin/openssl is
 * installed, interoperability with the OpenSSL command line tool.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "signer.h"
#include "test.h"

#define PKCS1_BEGIN "-----BEGIN RSA PRIVATE KEY-----\n"
#define PKCS1_END "-----END RSA PRIVATE KEY-----\n"
#define OPENSSL_BIN "/usr/bin/openssl"

/* Throwaway keys, used only to check that they are rejected. */
static const char ec_p256_pem[] =
	"-----BEGIN EC PRIVATE KEY-----\n"
	"MHcCAQEEINF44Fw2mONzjvYVX0GeLifFY5KvrcPNqbBbPB2EoaUJoAoGCCqGSM49\n"
	"AwEHoUQDQgAEMFUV0jHiM+q0YYOBw/lZYsz71vaARbv1bQe3ywTqqa4wmbX1SCTL\n"
	"cOTLxTY5bu4Y5bA3bWSGV1JowEmKZtukbA==\n"
	"-----END EC PRIVATE KEY-----\n";

static const char rsa_1024_pem[] =
	"-----BEGIN RSA PRIVATE KEY-----\n"
	"MIICXgIBAAKBgQDLCXaMJ5XAwoWe/AmAEomETH05IcIG+7Ou2rz4k6j+v13p94v4\n"
	"A91rUT2pkIMoFEfZncNg/ctxx7SC3f46wC9TxSiJKeHhmgP/fg49/edX4RpsZ7Dz\n"
	"qjRyaWr9+gO0268R6olEuN/dAX7+3OtViH6HEC+aKxDjAaYL16d+vEmq2wIDAQAB\n"
	"AoGAROdcPOo+LyGUuUStcLJZyvUuVhI3x6jp7MA8+1sZMgL9uyYQcUXWgdIbTA1I\n"
	"BXUEgTzCDoty3JU6lGMEISoRpRByyUZ7Sep64RKGG7s/4H3Yx/nBKWAb55mF3qQo\n"
	"GHwfcuzrsyGo0aNpgi8HYTQAU8j9DDOwx/xcZqfhhylPGtkCQQDn6CzW1d7+TMzh\n"
	"dB8fmX2AL4eJ0WBoNKKYDTa7nGvBNG7ebOsVwAeNi/etE3E6/4R63Vg2ZwPQjXzg\n"
	"BXVs57I1AkEA4CF1b836DBqymfDqp1Xm1fxD2tVCsbzfE1Z6mLdSFDTrKpsT4XzS\n"
	"ZmlbvDRivRrrUUBhRzcnFVQlnz5Sh2CKzwJBALBOMsihkAaFHL3KKl87sc3iVIjS\n"
	"RRjz6yjt4s5+/OzFkARJie/fLd7Oql1Kiqrv1ygRXx788kl7R5SIkd1ZyIECQQC8\n"
	"Sj+Pcto66v7aJrPralYntOsIX5rNGJ/Lbh5GR9PTl/VscKWODD/xu1dO0C+XMJM6\n"
	"SjyvCF10JKIKmt/YTTmvAkEAvVZjppPeCkWEgr4Ls6I13byao8+k18bozmwAO47j\n"
	"/bF6CT0Z7+Cc6ePOsmWPzEDRD5FRVvQ7PHLz2arx9cZO4g==\n"
	"-----END RSA PRIVATE KEY-----\n";

static const char jws_input[] = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9."
				"eyJzdWIiOiJ0ZXN0IiwiZXhwIjoxfQ";

/* A non-NULL pointer that no function may hand back. */
static int dummy_storage;
#define DUMMY_KEY ((struct signer_key *)(void *)&dummy_storage)

/* The public JWK members a key reports, in order. */
struct jwk {
	int count;
	int stop_at;
	char names[8][16];
	char kty[16];
	char n[B64URL_ENCODED_LEN(SIGNER_SIG_MAX) + 1];
	char e[16];
};

static int jwk_collect(const char *name, const char *value, void *arg)
{
	struct jwk *jwk = arg;

	if (jwk->count < 8)
		snprintf(jwk->names[jwk->count], sizeof(jwk->names[0]), "%s",
			 name);
	if (strcmp(name, "kty") == 0)
		snprintf(jwk->kty, sizeof(jwk->kty), "%s", value);
	else if (strcmp(name, "n") == 0)
		snprintf(jwk->n, sizeof(jwk->n), "%s", value);
	else if (strcmp(name, "e") == 0)
		snprintf(jwk->e, sizeof(jwk->e), "%s", value);
	return jwk->count++ == jwk->stop_at ? 7 : 0;
}

static int get_jwk(const struct signer_key *key, struct jwk *jwk)
{
	memset(jwk, 0, sizeof(*jwk));
	jwk->stop_at = -1;
	return signer_public_jwk(key, jwk_collect, jwk);
}

/* The modulus of key, decoded from its JWK "n", into n (256+ bytes). */
static size_t key_modulus(const struct signer_key *key, unsigned char *n)
{
	struct jwk jwk;
	size_t len = 0;

	if (get_jwk(key, &jwk) != 0 ||
	    b64url_decode(n, &len, jwk.n, strlen(jwk.n)) != 0)
		return 0;
	return len;
}

static int starts_with(const unsigned char *blob, size_t len, const char *s)
{
	return len >= strlen(s) && memcmp(blob, s, strlen(s)) == 0;
}

static size_t der_put_len(unsigned char *p, size_t len)
{
	if (len < 0x80) {
		p[0] = (unsigned char)len;
		return 1;
	}
	p[0] = 0x82;
	p[1] = (unsigned char)(len >> 8);
	p[2] = (unsigned char)len;
	return 3;
}

/*
 * Rewrap a PKCS#1 PEM key as PKCS#8 PEM ("BEGIN PRIVATE KEY"): a
 * PrivateKeyInfo of version 0, rsaEncryption, and the RSAPrivateKey in an
 * OCTET STRING. Returns a malloc'ed NUL-terminated PEM, or NULL.
 */
static char *pkcs1_to_pkcs8(const unsigned char *pem, size_t pem_len)
{
	static const unsigned char head[] = {
		0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86,
		0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
	};
	char b64[8192], *out;
	unsigned char der[6144], p8[6144];
	size_t i, n = 0, der_len, body, pos = 0, len, o;

	for (i = strlen(PKCS1_BEGIN); i < pem_len && pem[i] != '-'; i++) {
		if (pem[i] == '\n' || pem[i] == '=')
			continue;
		b64[n++] = pem[i] == '+' ? '-' : pem[i] == '/' ? '_' : pem[i];
	}
	if (b64url_decode(der, &der_len, b64, n) != 0 || der_len > 4096)
		return NULL;
	body = sizeof(head) + 1 + (der_len < 0x80 ? 1 : 3) + der_len;
	p8[pos++] = 0x30;
	pos += der_put_len(p8 + pos, body);
	memcpy(p8 + pos, head, sizeof(head));
	pos += sizeof(head);
	p8[pos++] = 0x04;
	pos += der_put_len(p8 + pos, der_len);
	memcpy(p8 + pos, der, der_len);
	pos += der_len;

	len = b64url_encode(b64, p8, pos);
	while (len % 4)
		b64[len++] = '=';
	out = malloc(len + len / 64 + 128);
	if (!out)
		return NULL;
	o = (size_t)sprintf(out, "-----BEGIN PRIVATE KEY-----\n");
	for (i = 0; i < len; i++) {
		out[o++] = b64[i] == '-' ? '+' : b64[i] == '_' ? '/' : b64[i];
		if (i % 64 == 63 || i == len - 1)
			out[o++] = '\n';
	}
	sprintf(out + o, "-----END PRIVATE KEY-----\n");
	return out;
}

static void test_generate_save_load(struct signer_key **key_out,
				    struct signer_key **loaded_out)
{
	struct signer_key *key = NULL, *loaded = NULL, *p8key = NULL;
	unsigned char *blob = NULL, *blob2 = NULL;
	unsigned char n[SIGNER_SIG_MAX], n2[SIGNER_SIG_MAX];
	size_t len = 0, len2 = 0, n_len, i;
	struct ks_err err = {""};
	struct jwk jwk, jwk2;
	char *p8;
	int rc, private_member = 0;

	CHECK_EQ_INT(signer_alg_supported("RS256"), 1, "RS256 supported");
	rc = signer_generate(&key, "RS256", 0, &err);
	CHECK_EQ_INT(rc, 0, "generate RS256: %s", err.text);
	if (rc)
		return;
	CHECK(strcmp(signer_key_alg(key), "RS256") == 0, "alg of new key");

	rc = signer_save(key, &blob, &len, &err);
	CHECK_EQ_INT(rc, 0, "save: %s", err.text);
	CHECK(starts_with(blob, len, PKCS1_BEGIN), "blob is not PKCS#1 PEM");
	CHECK(len > strlen(PKCS1_END) &&
		      memcmp(blob + len - strlen(PKCS1_END), PKCS1_END,
			     strlen(PKCS1_END)) == 0,
	      "blob does not end with the PKCS#1 footer");

	CHECK_EQ_INT(get_jwk(key, &jwk), 0, "public JWK");
	CHECK_EQ_INT(jwk.count, 3, "number of JWK members");
	CHECK(strcmp(jwk.names[0], "kty") == 0 &&
		      strcmp(jwk.names[1], "n") == 0 &&
		      strcmp(jwk.names[2], "e") == 0,
	      "JWK members are not kty, n, e in order");
	for (i = 0; i < 8; i++) {
		static const char *const priv[] = {"d",	 "p",  "q",
						   "dp", "dq", "qi"};
		size_t j;

		for (j = 0; j < sizeof(priv) / sizeof(priv[0]); j++)
			if (strcmp(jwk.names[i], priv[j]) == 0)
				private_member++;
	}
	CHECK_EQ_INT(private_member, 0, "a private JWK member was exported");
	CHECK(strcmp(jwk.kty, "RSA") == 0, "kty is \"%s\"", jwk.kty);
	CHECK(strcmp(jwk.e, "AQAB") == 0, "e is \"%s\"", jwk.e);
	CHECK_EQ_INT(strlen(jwk.n), 342, "length of n in base64url");
	n_len = key_modulus(key, n);
	CHECK_EQ_INT(n_len, 256, "n decodes to 256 bytes");
	CHECK(n[0] & 0x80, "n has a leading zero or is short");
	CHECK(n[255] & 1, "n is even");

	snprintf(err.text, sizeof(err.text), "untouched");
	rc = signer_load(&loaded, blob, len, &err);
	CHECK_EQ_INT(rc, 0, "load the saved blob: %s", err.text);
	CHECK(strcmp(err.text, "untouched") == 0,
	      "a successful load wrote \"%s\"", err.text);
	if (rc == 0) {
		CHECK(strcmp(signer_key_alg(loaded), "RS256") == 0,
		      "alg of loaded key");
		CHECK_EQ_INT(get_jwk(loaded, &jwk2), 0, "JWK of loaded key");
		CHECK(strcmp(jwk.n, jwk2.n) == 0 && strcmp(jwk2.e, "AQAB") == 0,
		      "loaded key has another public key");
		CHECK(key_modulus(loaded, n2) == 256 && memcmp(n, n2, 256) == 0,
		      "loaded modulus differs");
		rc = signer_save(loaded, &blob2, &len2, &err);
		CHECK_EQ_INT(rc, 0, "save the loaded key: %s", err.text);
		CHECK(len2 == len && memcmp(blob, blob2, len) == 0,
		      "save, load, save is not byte-identical");
		signer_blob_free(blob2, len2);
	}

	p8 = pkcs1_to_pkcs8(blob, len);
	CHECK(p8 != NULL, "could not build a PKCS#8 blob");
	if (p8) {
		rc = signer_load(&p8key, (const unsigned char *)p8, strlen(p8),
				 &err);
		CHECK_EQ_INT(rc, 0, "load PKCS#8 PEM: %s", err.text);
		CHECK(rc == 0 && key_modulus(p8key, n2) == 256 &&
			      memcmp(n, n2, 256) == 0,
		      "PKCS#8 key has another modulus");
		signer_key_free(p8key);
		free(p8);
	}

	signer_blob_free(blob, len);
	*key_out = key;
	*loaded_out = loaded;
}

static void test_jwk_stop(const struct signer_key *key)
{
	struct jwk jwk;

	memset(&jwk, 0, sizeof(jwk));
	jwk.stop_at = 1;
	CHECK_EQ_INT(signer_public_jwk(key, jwk_collect, &jwk), 7,
		     "callback's value is not returned");
	CHECK_EQ_INT(jwk.count, 2, "callback called after it stopped");
	CHECK_EQ_INT(signer_public_jwk(NULL, jwk_collect, &jwk), KS_EINVAL,
		     "public JWK of NULL key");
	CHECK_EQ_INT(signer_public_jwk(key, NULL, &jwk), KS_EINVAL,
		     "public JWK without callback");
}

static void test_sign_verify(const struct signer_key *key,
			     const struct signer_key *loaded,
			     unsigned char *ref_sig)
{
	unsigned char sig[SIGNER_SIG_MAX], sig2[SIGNER_SIG_MAX];
	unsigned char data[sizeof(jws_input)];
	size_t len = sizeof(sig), len2 = sizeof(sig2), dlen;
	size_t bits[] = {0, 7, 1000, 2047};
	int rc;
	size_t i;

	memcpy(data, jws_input, sizeof(data));
	dlen = strlen(jws_input);
	rc = signer_sign(key, data, dlen, sig, &len);
	CHECK_EQ_INT(rc, 0, "sign");
	CHECK_EQ_INT(len, 256, "RS256 signature length");
	memcpy(ref_sig, sig, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len), 0, "verify");
	if (loaded) {
		CHECK_EQ_INT(signer_verify(loaded, data, dlen, sig, len), 0,
			     "verify with the loaded key");
		CHECK_EQ_INT(signer_sign(loaded, data, dlen, sig2, &len2), 0,
			     "sign with the loaded key");
		CHECK(len2 == len && memcmp(sig, sig2, len) == 0,
		      "PKCS#1 v1.5 signatures of one key differ");
	}

	for (i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		sig[bits[i] / 8] ^= (unsigned char)(1u << bits[i] % 8);
		CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len),
			     KS_EBADSIG, "signature bit %zu flipped", bits[i]);
		sig[bits[i] / 8] ^= (unsigned char)(1u << bits[i] % 8);
	}
	for (i = 0; i < dlen * 8; i += 37) {
		data[i / 8] ^= (unsigned char)(1u << i % 8);
		CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len),
			     KS_EBADSIG, "data bit %zu flipped", i);
		data[i / 8] ^= (unsigned char)(1u << i % 8);
	}
	CHECK_EQ_INT(signer_verify(key, data, dlen - 1, sig, len), KS_EBADSIG,
		     "data one byte short");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len - 1), KS_EBADSIG,
		     "signature one byte short");
	sig[len] = 0;
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len + 1), KS_EBADSIG,
		     "signature one byte long");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, 0), KS_EBADSIG,
		     "empty signature");
	memset(sig2, 0, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig2, 256), KS_EBADSIG,
		     "all-zero signature");
	memset(sig2, 0xff, 256);
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig2, 256), KS_EBADSIG,
		     "signature above the modulus");
	CHECK_EQ_INT(signer_verify(key, data, dlen, sig, len), 0,
		     "verify after the flips");

	/* Empty data is a valid input. */
	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(key, NULL, 0, sig2, &len2), 0,
		     "sign empty data");
	CHECK_EQ_INT(signer_verify(key, "", 0, sig2, len2), 0,
		     "verify empty data");

	/* Buffer too small: KS_EINVAL and *sig_len 0. */
	len2 = 255;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), KS_EINVAL,
		     "255-byte signature buffer");
	CHECK_EQ_INT(len2, 0, "*sig_len after a failure");
	len2 = 0;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), KS_EINVAL,
		     "0-byte signature buffer");
	len2 = 256;
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, &len2), 0,
		     "256-byte signature buffer");

	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(NULL, data, dlen, sig2, &len2), KS_EINVAL,
		     "sign with NULL key");
	CHECK_EQ_INT(len2, 0, "*sig_len after NULL key");
	len2 = sizeof(sig2);
	CHECK_EQ_INT(signer_sign(key, NULL, 1, sig2, &len2), KS_EINVAL,
		     "sign NULL data");
	CHECK_EQ_INT(signer_sign(key, data, dlen, NULL, &len2), KS_EINVAL,
		     "sign into NULL");
	CHECK_EQ_INT(signer_sign(key, data, dlen, sig2, NULL), KS_EINVAL,
		     "sign with NULL sig_len");
	CHECK_EQ_INT(signer_verify(NULL, data, dlen, sig, len), KS_EINVAL,
		     "verify with NULL key");
	CHECK_EQ_INT(signer_verify(key, data, dlen, NULL, 5), KS_EINVAL,
		     "verify NULL signature");
}

static void check_generate_fails(const char *alg, int want)
{
	struct signer_key *key = DUMMY_KEY;
	struct ks_err err = {""};

	CHECK_EQ_INT(signer_generate(&key, alg, 0, &err), want, "generate \"%s\"",
		     alg ? alg : "(null)");
	CHECK(key == NULL, "out-param not cleared for \"%s\"",
	      alg ? alg : "(null)");
	CHECK(err.text[0] != '\0', "no detail for \"%s\"",
	      alg ? alg : "(null)");
	CHECK_EQ_INT(signer_alg_supported(alg), 0, "\"%s\" supported",
		     alg ? alg : "(null)");
}

static void test_bad_generate(void)
{
	check_generate_fails("HS256", KS_EUNSUPPORTED);
	check_generate_fails("none", KS_EUNSUPPORTED);
	check_generate_fails("rs256", KS_EUNSUPPORTED);
	check_generate_fails("RS384", KS_EUNSUPPORTED);
	check_generate_fails("", KS_EUNSUPPORTED);
	check_generate_fails(NULL, KS_EINVAL);
	CHECK_EQ_INT(signer_generate(NULL, "RS256", 0, NULL), KS_EINVAL,
		     "generate into NULL");
	CHECK(signer_key_alg(NULL) == NULL, "alg of NULL key");
	signer_key_free(NULL);
	signer_blob_free(NULL, 0);
}

static void check_load_fails(const void *blob, size_t len, int want,
			     const char *what)
{
	struct signer_key *key = DUMMY_KEY;
	struct ks_err err = {""};

	CHECK_EQ_INT(signer_load(&key, blob, len, &err), want, "load %s", what);
	CHECK(key == NULL, "out-param not cleared for %s", what);
	CHECK(err.text[0] != '\0', "no detail for %s", what);
	if (key != DUMMY_KEY)
		signer_key_free(key);
}

static void test_bad_load(const struct signer_key *key)
{
	static const char garbage[] = "this is not a key";
	static const char bad_body[] = "-----BEGIN RSA PRIVATE KEY-----\n"
				       "AAAA!!!!not base64\n"
				       "-----END RSA PRIVATE KEY-----\n";
	unsigned char *blob = NULL, random[512];
	size_t len = 0, i;

	check_load_fails(garbage, strlen(garbage), KS_ECORRUPT, "garbage");
	check_load_fails(bad_body, strlen(bad_body), KS_ECORRUPT,
			 "a PEM with a bad body");
	check_load_fails(ec_p256_pem, strlen(ec_p256_pem), KS_ECORRUPT,
			 "an EC P-256 key");
	check_load_fails(rsa_1024_pem, strlen(rsa_1024_pem), KS_ECORRUPT,
			 "a 1024-bit RSA key");
	check_load_fails("", 0, KS_ECORRUPT, "an empty blob");
	check_load_fails(NULL, 10, KS_EINVAL, "a NULL blob");
	for (i = 0; i < sizeof(random); i++)
		random[i] = (unsigned char)(i * 131 + 7);
	check_load_fails(random, sizeof(random), KS_ECORRUPT, "random bytes");
	CHECK_EQ_INT(signer_load(NULL, (const unsigned char *)garbage, 5, NULL),
		     KS_EINVAL, "load into NULL");

	if (signer_save(key, &blob, &len, NULL) != 0) {
		CHECK(0, "save");
		return;
	}
	check_load_fails(blob, len / 2, KS_ECORRUPT, "half a PEM");
	check_load_fails(blob, len - strlen(PKCS1_END), KS_ECORRUPT,
			 "a PEM without its footer");
	check_load_fails(blob + 1, len - 1, KS_ECORRUPT,
			 "a PEM without its first byte");
	/*
	 * Base64 character 30 of the second line is inside the modulus, which
	 * starts at DER byte 12; the key still parses, but no longer signs.
	 */
	i = strlen(PKCS1_BEGIN) + 65 + 30;
	blob[i] = blob[i] == 'A' ? 'B' : 'A';
	check_load_fails(blob, len, KS_ECORRUPT,
			 "a key with a changed modulus");
	signer_blob_free(blob, len);

	CHECK_EQ_INT(signer_save(NULL, &blob, &len, NULL), KS_EINVAL,
		     "save NULL key");
	CHECK(blob == NULL && len == 0, "save out-params not cleared");
}

struct thread_arg {
	const struct signer_key *key;
	const unsigned char *ref_sig;
	int failures;
};

static void *sign_thread(void *p)
{
	struct thread_arg *arg = p;
	unsigned char sig[SIGNER_SIG_MAX];
	size_t len;
	int i;

	for (i = 0; i < 16; i++) {
		len = sizeof(sig);
		if (signer_sign(arg->key, jws_input, strlen(jws_input), sig,
				&len) != 0 ||
		    len != 256 || memcmp(sig, arg->ref_sig, 256) != 0 ||
		    signer_verify(arg->key, jws_input, strlen(jws_input), sig,
				  len) != 0)
			arg->failures++;
	}
	return NULL;
}

/* Many threads, one key: every signature is the reference signature. */
static void test_threads(const struct signer_key *key,
			 const unsigned char *ref_sig)
{
	pthread_t tids[4];
	struct thread_arg args[4];
	int i, started = 0, failures = 0;

	for (i = 0; i < 4; i++) {
		args[i] = (struct thread_arg){key, ref_sig, 0};
		if (pthread_create(&tids[i], NULL, sign_thread, &args[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, 4, "threads started");
	for (i = 0; i < started; i++) {
		pthread_join(tids[i], NULL);
		failures += args[i].failures;
	}
	CHECK_EQ_INT(failures, 0, "concurrent signatures wrong");
}

static int write_file(const char *dir, const char *name, const void *data,
		      size_t len)
{
	char path[512];
	FILE *f;
	int ok;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return -1;
	ok = fwrite(data, 1, len, f) == len;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* Read a whole file into a malloc'ed buffer with a NUL after it. */
static unsigned char *read_file(const char *dir, const char *name, size_t *len)
{
	char path[512];
	unsigned char *buf;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f)
		return NULL;
	buf = malloc(65536);
	*len = buf ? fread(buf, 1, 65535, f) : 0;
	if (buf)
		buf[*len] = '\0';
	fclose(f);
	return buf;
}

/* Run an openssl command line in dir; returns its exit status. */
static int run_openssl(const char *dir, const char *args)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd),
		 "cd '%s' && " OPENSSL_BIN " %s >/dev/null 2>&1", dir, args);
	return system(cmd);
}

/* The OpenSSL tool verifies our signatures; we load and verify its keys. */
static void test_interop(const struct signer_key *key)
{
	static const char *const files[] = {"key.pem",	"pub.pem",  "data",
					    "sig",	"bad.sig",  "mod.txt",
					    "ext8.pem", "ext1.pem", "ext.sig",
					    "enc8.pem", "enc1.pem"};
	char dir[] = "/tmp/jwksd-signer-XXXXXX", want[600], path[600];
	unsigned char *blob = NULL, *text, sig[SIGNER_SIG_MAX];
	unsigned char n[SIGNER_SIG_MAX], n2[SIGNER_SIG_MAX];
	size_t blob_len = 0, len = 0, sig_len = sizeof(sig), n_len, i, o;
	struct signer_key *ext1 = NULL, *ext8 = NULL;
	struct ks_err err = {""};

	if (access(OPENSSL_BIN, X_OK) != 0) {
		printf("note: %s not found; interop checks skipped\n",
		       OPENSSL_BIN);
		return;
	}
	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	n_len = key_modulus(key, n);
	if (signer_save(key, &blob, &blob_len, NULL) != 0 ||
	    signer_sign(key, jws_input, strlen(jws_input), sig, &sig_len) ||
	    write_file(dir, "key.pem", blob, blob_len) ||
	    write_file(dir, "data", jws_input, strlen(jws_input)) ||
	    write_file(dir, "sig", sig, sig_len)) {
		CHECK(0, "writing the interop files");
		goto out;
	}
	sig[100] ^= 0x10;
	write_file(dir, "bad.sig", sig, sig_len);

	CHECK_EQ_INT(run_openssl(dir, "pkey -in key.pem -pubout -out pub.pem"),
		     0, "openssl pkey -pubout of our blob");
	CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -verify pub.pem "
				      "-signature sig data"),
		     0, "openssl dgst -verify of our RS256 signature");
	CHECK(run_openssl(dir, "dgst -sha256 -verify pub.pem "
			       "-signature bad.sig data") != 0,
	      "openssl accepted a changed signature");

	/* Our JWK "n" is the modulus OpenSSL reads from the blob. */
	CHECK_EQ_INT(run_openssl(dir, "rsa -in key.pem -noout -modulus "
				      "-out mod.txt"),
		     0, "openssl rsa -modulus");
	o = (size_t)snprintf(want, sizeof(want), "Modulus=");
	for (i = 0; i < n_len && o + 3 < sizeof(want); i++)
		o += (size_t)snprintf(want + o, sizeof(want) - o, "%02X", n[i]);
	text = read_file(dir, "mod.txt", &len);
	CHECK(text && strncmp((char *)text, want, strlen(want)) == 0,
	      "JWK n differs from openssl's modulus");
	free(text);

	/* A public key is not a key the store may hold. */
	text = read_file(dir, "pub.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "a public key PEM");
	free(text);

	/* Keys from the tool: PKCS#8, then PKCS#1 as Python tools write. */
	CHECK_EQ_INT(run_openssl(dir, "genpkey -algorithm RSA -pkeyopt "
				      "rsa_keygen_bits:2048 -out ext8.pem"),
		     0, "openssl genpkey");
	CHECK_EQ_INT(run_openssl(dir, "rsa -in ext8.pem -traditional "
				      "-out ext1.pem"),
		     0, "openssl rsa -traditional");
	text = read_file(dir, "ext8.pem", &len);
	CHECK(text && signer_load(&ext8, text, len, &err) == 0,
	      "load openssl's PKCS#8 key: %s", err.text);
	free(text);
	text = read_file(dir, "ext1.pem", &len);
	CHECK(text && starts_with(text, len, PKCS1_BEGIN) &&
		      signer_load(&ext1, text, len, &err) == 0,
	      "load openssl's PKCS#1 key: %s", err.text);
	free(text);
	if (ext1 && ext8) {
		CHECK(key_modulus(ext1, n) == 256 &&
			      key_modulus(ext8, n2) == 256 &&
			      memcmp(n, n2, 256) == 0,
		      "PKCS#1 and PKCS#8 forms give other keys");
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -sign ext1.pem "
					      "-out ext.sig data"),
			     0, "openssl dgst -sign");
		text = read_file(dir, "ext.sig", &len);
		CHECK(text && signer_verify(ext8, jws_input, strlen(jws_input),
					    text, len) == 0,
		      "openssl's signature does not verify");
		free(text);
		sig_len = sizeof(sig);
		CHECK(signer_sign(ext1, jws_input, strlen(jws_input), sig,
				  &sig_len) == 0 &&
			      write_file(dir, "sig", sig, sig_len) == 0,
		      "sign with openssl's key");
		CHECK_EQ_INT(run_openssl(dir, "dgst -sha256 -prverify "
					      "ext8.pem -signature sig data"),
			     0, "openssl verifies a signature by its key");
	}

	/* Encrypted keys are refused, without asking for a passphrase. */
	run_openssl(dir, "pkcs8 -topk8 -in ext8.pem -passout pass:x "
			 "-out enc8.pem");
	run_openssl(dir, "rsa -in ext8.pem -traditional -aes128 "
			 "-passout pass:x -out enc1.pem");
	text = read_file(dir, "enc8.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "encrypted PKCS#8");
	free(text);
	text = read_file(dir, "enc1.pem", &len);
	if (text)
		check_load_fails(text, len, KS_ECORRUPT, "encrypted PKCS#1");
	free(text);

out:
	signer_key_free(ext1);
	signer_key_free(ext8);
	signer_blob_free(blob, blob_len);
	for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	rmdir(dir);
}

int main(void)
{
	struct signer_key *key = NULL, *loaded = NULL;
	unsigned char ref_sig[SIGNER_SIG_MAX];

	test_bad_generate();
	test_generate_save_load(&key, &loaded);
	if (key) {
		test_jwk_stop(key);
		test_sign_verify(key, loaded, ref_sig);
		test_bad_load(key);
		test_threads(key, ref_sig);
		test_interop(key);
	}
	signer_key_free(loaded);
	signer_key_free(key);
	return TEST_REPORT();
}
