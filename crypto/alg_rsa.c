/*
 * RS256 (RFC 7518 §3.3): RSASSA-PKCS1-v1_5 with SHA-256 over an RSA key of
 * at least 2048 bits. New keys are 2048 bits with e = 65537 and are saved as
 * PKCS#1 PEM ("-----BEGIN RSA PRIVATE KEY-----"), the form the assignment's
 * tools write and read.
 */
#include "crypto_internal.h"

#include <openssl/core_names.h>
#include <openssl/encoder.h>
#include <openssl/params.h>

/*
 * Loaded keys may be larger than generated ones, up to the size whose
 * signature still fits in SIGNER_SIG_MAX.
 */
#define SIGNER_RSA_MIN_BITS 2048
#define SIGNER_RSA_MAX_BITS (SIGNER_SIG_MAX * 8)
#define SIGNER_RSA_E 65537

static int signer_rsa_generate(struct signer_key *key, struct ks_err *err)
{
	EVP_PKEY_CTX *ctx;
	size_t bits = key->impl->bits;
	unsigned int e = SIGNER_RSA_E;
	OSSL_PARAM params[3];
	int rc = 0;

	ctx = EVP_PKEY_CTX_new_from_name(NULL, key->impl->key_type, NULL);
	if (!ctx)
		return signer__ossl_err(err, KS_ECRYPTO,
					"EVP_PKEY_CTX_new_from_name");
	params[0] =
		OSSL_PARAM_construct_size_t(OSSL_PKEY_PARAM_RSA_BITS, &bits);
	params[1] = OSSL_PARAM_construct_uint(OSSL_PKEY_PARAM_RSA_E, &e);
	params[2] = OSSL_PARAM_construct_end();
	if (EVP_PKEY_keygen_init(ctx) != 1 ||
	    EVP_PKEY_CTX_set_params(ctx, params) != 1 ||
	    EVP_PKEY_generate(ctx, &key->pkey) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO, "RSA key generation");
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

static int signer_rsa_load(struct signer_key *key, struct ks_err *err)
{
	int bits = EVP_PKEY_get_bits(key->pkey);

	if (bits < SIGNER_RSA_MIN_BITS || bits > SIGNER_RSA_MAX_BITS)
		return ks_err_set(err, KS_ECORRUPT,
				  "RSA key of %d bits, not %d to %d", bits,
				  SIGNER_RSA_MIN_BITS, SIGNER_RSA_MAX_BITS);
	return 0;
}

static int signer_rsa_save(const struct signer_key *key,
			   unsigned char **blob_out, size_t *len_out,
			   struct ks_err *err)
{
	OSSL_ENCODER_CTX *ectx;
	int rc = 0;

	/*
	 * The "type-specific" structure of an RSA key pair is PKCS#1
	 * RSAPrivateKey, which PEM labels "RSA PRIVATE KEY".
	 */
	ectx = OSSL_ENCODER_CTX_new_for_pkey(key->pkey, EVP_PKEY_KEYPAIR, "PEM",
					     "type-specific", NULL);
	if (!ectx || OSSL_ENCODER_CTX_get_num_encoders(ectx) == 0 ||
	    OSSL_ENCODER_to_data(ectx, blob_out, len_out) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO, "PKCS#1 PEM encoding");
	OSSL_ENCODER_CTX_free(ectx);
	return rc;
}

/* Report one public member, a big-endian integer, in base64url. */
static int signer_rsa_jwk_int(const struct signer_key *key, const char *param,
			      const char *name, signer_jwk_fn fn, void *arg)
{
	unsigned char bytes[SIGNER_RSA_MAX_BITS / 8];
	char text[B64URL_ENCODED_LEN(sizeof(bytes)) + 1];
	BIGNUM *bn = NULL;
	int len;

	if (EVP_PKEY_get_bn_param(key->pkey, param, &bn) != 1)
		return signer__ossl_err(NULL, KS_ECRYPTO, param);
	len = BN_num_bytes(bn);
	if (len <= 0 || (size_t)len > sizeof(bytes)) {
		BN_free(bn);
		return KS_ECRYPTO;
	}
	BN_bn2bin(bn, bytes);
	BN_free(bn);
	b64url_encode(text, bytes, (size_t)len);
	return fn(name, text, arg);
}

static int signer_rsa_public_jwk(const struct signer_key *key, signer_jwk_fn fn,
				 void *arg)
{
	int rc;

	rc = fn("kty", "RSA", arg);
	if (rc == 0)
		rc = signer_rsa_jwk_int(key, OSSL_PKEY_PARAM_RSA_N, "n", fn,
					arg);
	if (rc == 0)
		rc = signer_rsa_jwk_int(key, OSSL_PKEY_PARAM_RSA_E, "e", fn,
					arg);
	return rc;
}

/*
 * An RSASSA-PKCS1-v1_5 signature is already in its JWS form, so the generic
 * helpers sign and verify it directly.
 */
static const struct signer__impl_funcs signer_rsa_funcs = {
	.generate = signer_rsa_generate,
	.load = signer_rsa_load,
	.save = signer_rsa_save,
	.public_jwk = signer_rsa_public_jwk,
	.sign = signer__digest_sign,
	.verify = signer__digest_verify,
};

const struct signer__impl signer__impl_rs256 = {
	.name = "RS256",
	.key_type = "RSA",
	.bits = 2048,
	.md_name = "SHA256",
	.funcs = &signer_rsa_funcs,
};
