/*
 * ES256 (RFC 7518 §3.4): ECDSA on P-256 with SHA-256. Keys are EC keys on
 * the named curve P-256 (prime256v1), saved as PKCS#8 PEM; a key on any
 * other curve, or with explicit curve parameters, is refused.
 *
 * OpenSSL signs and verifies the DER ECDSA-Sig-Value (SEQUENCE of two
 * INTEGERs); JWS wants R || S, each big-endian and exactly 32 bytes. This
 * file converts between the two, and no other does.
 */
#include "crypto_internal.h"

#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>

/* The width of a P-256 coordinate and of R and S, in bytes. */
#define SIGNER_P256_LEN 32
/* The largest DER ECDSA-Sig-Value on P-256: 2 + 2 * (2 + 33). */
#define SIGNER_P256_DER_MAX 72

static int signer_ec_generate(struct signer_key *key, unsigned int bits,
			      struct ks_err *err)
{
	EVP_PKEY_CTX *ctx;
	char group[] = "P-256", encoding[] = OSSL_PKEY_EC_ENCODING_GROUP;
	OSSL_PARAM params[3];
	int rc = 0;

	(void)bits;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, key->impl->key_type, NULL);
	if (!ctx)
		return signer__ossl_err(err, KS_ECRYPTO,
					"EVP_PKEY_CTX_new_from_name");
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
						     group, 0);
	params[1] = OSSL_PARAM_construct_utf8_string(
		OSSL_PKEY_PARAM_EC_ENCODING, encoding, 0);
	params[2] = OSSL_PARAM_construct_end();
	if (EVP_PKEY_keygen_init(ctx) != 1 ||
	    EVP_PKEY_CTX_set_params(ctx, params) != 1 ||
	    EVP_PKEY_generate(ctx, &key->pkey) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO, "EC key generation");
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

static int signer_ec_load(struct signer_key *key, struct ks_err *err)
{
	char name[64] = "", encoding[32] = "";

	if (EVP_PKEY_get_group_name(key->pkey, name, sizeof(name), NULL) != 1)
		return signer__ossl_err(
			err, KS_ECORRUPT,
			"EC key on an unnamed curve, not P-256");
	if (strcmp(name, "prime256v1") != 0 && strcmp(name, "P-256") != 0)
		return ks_err_set(err, KS_ECORRUPT,
				  "EC key on curve %.32s, not P-256", name);
	/*
	 * Explicit parameters that happen to describe P-256 are still not a
	 * named curve: the JWK says "crv", and PKCS#8 should say the same.
	 */
	if (EVP_PKEY_get_utf8_string_param(
		    key->pkey, OSSL_PKEY_PARAM_EC_ENCODING, encoding,
		    sizeof(encoding), NULL) != 1 ||
	    strcmp(encoding, OSSL_PKEY_EC_ENCODING_GROUP) != 0)
		return ks_err_set(err, KS_ECORRUPT,
				  "EC key with explicit curve parameters");
	return 0;
}

static int signer_ec_save(const struct signer_key *key,
			  unsigned char **blob_out, size_t *len_out,
			  struct ks_err *err)
{
	return signer__pem_encode(key, "PrivateKeyInfo", blob_out, len_out,
				  err);
}

/* Report one coordinate of the public point, padded to 32 bytes. */
static int signer_ec_jwk_coord(const struct signer_key *key, const char *param,
			       const char *name, signer_jwk_fn fn, void *arg)
{
	unsigned char bytes[SIGNER_P256_LEN];
	char text[B64URL_ENCODED_LEN(SIGNER_P256_LEN) + 1];
	BIGNUM *bn = NULL;
	int len;

	if (EVP_PKEY_get_bn_param(key->pkey, param, &bn) != 1)
		return signer__ossl_err(NULL, KS_ECRYPTO, param);
	len = BN_bn2binpad(bn, bytes, sizeof(bytes));
	BN_free(bn);
	if (len != SIGNER_P256_LEN)
		return KS_ECRYPTO;
	b64url_encode(text, bytes, sizeof(bytes));
	return fn(name, text, arg);
}

static int signer_ec_public_jwk(const struct signer_key *key, signer_jwk_fn fn,
				void *arg)
{
	int rc;

	rc = fn("kty", "EC", arg);
	if (rc == 0)
		rc = fn("crv", "P-256", arg);
	if (rc == 0)
		rc = signer_ec_jwk_coord(key, OSSL_PKEY_PARAM_EC_PUB_X, "x", fn,
					 arg);
	if (rc == 0)
		rc = signer_ec_jwk_coord(key, OSSL_PKEY_PARAM_EC_PUB_Y, "y", fn,
					 arg);
	return rc;
}

/* Sign, then turn OpenSSL's DER signature into R || S. */
static int signer_ec_sign(const struct signer_key *key, const void *data,
			  size_t data_len, unsigned char *sig, size_t *sig_len)
{
	unsigned char der[SIGNER_P256_DER_MAX];
	const unsigned char *p = der;
	size_t der_len = sizeof(der);
	ECDSA_SIG *es = NULL;
	const BIGNUM *r, *s;
	int rc;

	if (*sig_len < 2 * SIGNER_P256_LEN) {
		*sig_len = 0;
		return KS_EINVAL;
	}
	rc = signer__digest_sign(key, data, data_len, der, &der_len);
	if (rc)
		goto out;
	rc = KS_ECRYPTO;
	es = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	if (!es || p != der + der_len)
		goto out;
	ECDSA_SIG_get0(es, &r, &s);
	if (BN_bn2binpad(r, sig, SIGNER_P256_LEN) != SIGNER_P256_LEN ||
	    BN_bn2binpad(s, sig + SIGNER_P256_LEN, SIGNER_P256_LEN) !=
		    SIGNER_P256_LEN)
		goto out;
	*sig_len = 2 * SIGNER_P256_LEN;
	rc = 0;
out:
	if (rc) {
		*sig_len = 0;
		ERR_clear_error();
	}
	ECDSA_SIG_free(es);
	return rc;
}

/* Turn R || S back into DER, then verify. */
static int signer_ec_verify(const struct signer_key *key, const void *data,
			    size_t data_len, const unsigned char *sig,
			    size_t sig_len)
{
	unsigned char der[SIGNER_P256_DER_MAX], *p = der;
	BIGNUM *r = NULL, *s = NULL;
	ECDSA_SIG *es;
	int rc = KS_ENOMEM, len;

	if (sig_len != 2 * SIGNER_P256_LEN)
		return KS_EBADSIG;
	es = ECDSA_SIG_new();
	r = BN_bin2bn(sig, SIGNER_P256_LEN, NULL);
	s = BN_bin2bn(sig + SIGNER_P256_LEN, SIGNER_P256_LEN, NULL);
	if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
		BN_free(r);
		BN_free(s);
		goto out;
	}
	/* es owns r and s now. */
	rc = KS_ECRYPTO;
	len = i2d_ECDSA_SIG(es, NULL);
	if (len <= 0 || (size_t)len > sizeof(der) ||
	    i2d_ECDSA_SIG(es, &p) != len)
		goto out;
	rc = signer__digest_verify(key, data, data_len, der, (size_t)len);
out:
	ECDSA_SIG_free(es);
	ERR_clear_error();
	return rc;
}

static const struct signer__impl_funcs signer_ec_funcs = {
	.generate = signer_ec_generate,
	.load = signer_ec_load,
	.save = signer_ec_save,
	.public_jwk = signer_ec_public_jwk,
	.sign = signer_ec_sign,
	.verify = signer_ec_verify,
};

const struct signer__impl signer__impl_es256 = {
	.name = "ES256",
	.key_type = "EC",
	.bits = 256,
	.md_name = "SHA256",
	.funcs = &signer_ec_funcs,
};
