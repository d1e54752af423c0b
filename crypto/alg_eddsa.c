/*
 * EdDSA (RFC 8037 §3.1) with Ed25519 (RFC 8032): OpenSSL's "ED25519" keys,
 * saved as PKCS#8 PEM. Ed25519 hashes internally: the signature is one
 * call of EVP_DigestSign() without a digest, and is already the 64 bytes
 * JWS wants. Ed448 keys, the other EdDSA curve, are a key type of their own
 * and are not supported.
 */
#include "crypto_internal.h"

/* The Ed25519 public key, in bytes. */
#define SIGNER_ED25519_LEN 32

static int signer_eddsa_generate(struct signer_key *key, unsigned int bits,
				 struct ks_err *err)
{
	EVP_PKEY_CTX *ctx;
	int rc = 0;

	(void)bits;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, key->impl->key_type, NULL);
	if (!ctx)
		return signer__ossl_err(err, KS_ECRYPTO,
					"EVP_PKEY_CTX_new_from_name");
	if (EVP_PKEY_keygen_init(ctx) != 1 ||
	    EVP_PKEY_generate(ctx, &key->pkey) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO,
				      "Ed25519 key generation");
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* The key type says it all: an ED25519 key has one size. */
static int signer_eddsa_load(struct signer_key *key, struct ks_err *err)
{
	(void)key;
	(void)err;
	return 0;
}

static int signer_eddsa_save(const struct signer_key *key,
			     unsigned char **blob_out, size_t *len_out,
			     struct ks_err *err)
{
	return signer__pem_encode(key, "PrivateKeyInfo", blob_out, len_out,
				  err);
}

static int signer_eddsa_public_jwk(const struct signer_key *key,
				   signer_jwk_fn fn, void *arg)
{
	unsigned char pub[SIGNER_ED25519_LEN];
	char text[B64URL_ENCODED_LEN(SIGNER_ED25519_LEN) + 1];
	size_t len = sizeof(pub);
	int rc;

	if (EVP_PKEY_get_raw_public_key(key->pkey, pub, &len) != 1 ||
	    len != sizeof(pub))
		return signer__ossl_err(NULL, KS_ECRYPTO,
					"EVP_PKEY_get_raw_public_key");
	b64url_encode(text, pub, sizeof(pub));
	rc = fn("kty", "OKP", arg);
	if (rc == 0)
		rc = fn("crv", "Ed25519", arg);
	if (rc == 0)
		rc = fn("x", text, arg);
	return rc;
}

static const struct signer__impl_funcs signer_eddsa_funcs = {
	.generate = signer_eddsa_generate,
	.load = signer_eddsa_load,
	.save = signer_eddsa_save,
	.public_jwk = signer_eddsa_public_jwk,
	.sign = signer__digest_sign,
	.verify = signer__digest_verify,
};

const struct signer__impl signer__impl_eddsa = {
	.name = "EdDSA",
	.key_type = "ED25519",
	.bits = 256,
	.md_name = NULL,
	.funcs = &signer_eddsa_funcs,
};
