/*
 * The RSA family (RFC 7518 §3.3, §3.5), over keys of 2048 to
 * SIGNER_RSA_MAX_BITS bits:
 *
 * RS256: RSASSA-PKCS1-v1_5 with SHA-256. The key type is "RSA"
 * (rsaEncryption); new keys are saved as PKCS#1 PEM ("-----BEGIN RSA
 * PRIVATE KEY-----"), the form the assignment's tools write and read.
 *
 * PS256: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt. The key
 * type is "RSA-PSS" (RSASSA-PSS, RFC 4055), so that the key itself says it
 * is not for PKCS#1 v1.5; new keys carry the PSS restrictions SHA-256,
 * MGF1-SHA-256 and a salt of at least 32 bytes, and are saved as PKCS#8
 * PEM. A key restricted to anything else is refused; an unrestricted one
 * is fine. Both signing and verifying set the PSS parameters explicitly
 * instead of trusting the key's defaults.
 */
#include "crypto_internal.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/params.h>

/*
 * Sizes: generated keys have one of the three sizes of signer.h; loaded
 * keys may be larger, up to the size whose signature still fits in
 * SIGNER_SIG_MAX.
 */
#define SIGNER_RSA_MIN_BITS 2048
#define SIGNER_RSA_MAX_BITS (SIGNER_SIG_MAX * 8)
#define SIGNER_RSA_E 65537
#define SIGNER_PSS_SALT_LEN 32

static int signer_rsa_generate(struct signer_key *key, unsigned int bits,
			       struct ks_err *err)
{
	EVP_PKEY_CTX *ctx;
	size_t nbits = bits ? bits : key->impl->bits;
	unsigned int e = SIGNER_RSA_E;
	int salt = SIGNER_PSS_SALT_LEN;
	char md[] = "SHA256";
	OSSL_PARAM params[6], *p = params;
	int rc = 0;

	if (nbits != 2048 && nbits != 3072 && nbits != 4096)
		return ks_err_set(err, KS_EINVAL,
				  "%s keys are 2048, 3072 or 4096 bits, not %u",
				  key->impl->name, bits);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, key->impl->key_type, NULL);
	if (!ctx)
		return signer__ossl_err(err, KS_ECRYPTO,
					"EVP_PKEY_CTX_new_from_name");
	*p++ = OSSL_PARAM_construct_size_t(OSSL_PKEY_PARAM_RSA_BITS, &nbits);
	*p++ = OSSL_PARAM_construct_uint(OSSL_PKEY_PARAM_RSA_E, &e);
	if (key->impl == &signer__impl_ps256) {
		/* The restrictions an RSA-PSS key carries (RFC 4055 §3.1). */
		*p++ = OSSL_PARAM_construct_utf8_string(
			OSSL_PKEY_PARAM_RSA_DIGEST, md, 0);
		*p++ = OSSL_PARAM_construct_utf8_string(
			OSSL_PKEY_PARAM_RSA_MGF1_DIGEST, md, 0);
		*p++ = OSSL_PARAM_construct_int(OSSL_PKEY_PARAM_RSA_PSS_SALTLEN,
						&salt);
	}
	*p = OSSL_PARAM_construct_end();
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
				  "%s key of %d bits, not %d to %d",
				  key->impl->name, bits, SIGNER_RSA_MIN_BITS,
				  SIGNER_RSA_MAX_BITS);
	return 0;
}

/*
 * A restricted RSA-PSS key reports its restrictions as parameters; an
 * unrestricted one reports none of them. Each that is there must allow
 * what PS256 signs with.
 */
static int signer_pss_load(struct signer_key *key, struct ks_err *err)
{
	char name[64];
	int salt, rc;

	rc = signer_rsa_load(key, err);
	if (rc)
		return rc;
	if (EVP_PKEY_get_utf8_string_param(key->pkey,
					   OSSL_PKEY_PARAM_RSA_DIGEST, name,
					   sizeof(name), NULL) == 1 &&
	    !EVP_MD_is_a(key->md, name))
		return ks_err_set(err, KS_ECORRUPT,
				  "RSA-PSS key restricted to digest %.32s, "
				  "not SHA256",
				  name);
	if (EVP_PKEY_get_utf8_string_param(key->pkey,
					   OSSL_PKEY_PARAM_RSA_MGF1_DIGEST,
					   name, sizeof(name), NULL) == 1 &&
	    !EVP_MD_is_a(key->md, name))
		return ks_err_set(err, KS_ECORRUPT,
				  "RSA-PSS key restricted to MGF1 digest "
				  "%.32s, not SHA256",
				  name);
	if (EVP_PKEY_get_int_param(key->pkey, OSSL_PKEY_PARAM_RSA_PSS_SALTLEN,
				   &salt) == 1 &&
	    salt > SIGNER_PSS_SALT_LEN)
		return ks_err_set(err, KS_ECORRUPT,
				  "RSA-PSS key requires a salt of %d bytes, "
				  "not %d",
				  salt, SIGNER_PSS_SALT_LEN);
	return 0;
}

static int signer_rs256_save(const struct signer_key *key,
			     unsigned char **blob_out, size_t *len_out,
			     struct ks_err *err)
{
	/*
	 * The "type-specific" structure of an RSA key pair is PKCS#1
	 * RSAPrivateKey, which PEM labels "RSA PRIVATE KEY".
	 */
	return signer__pem_encode(key, "type-specific", blob_out, len_out, err);
}

static int signer_ps256_save(const struct signer_key *key,
			     unsigned char **blob_out, size_t *len_out,
			     struct ks_err *err)
{
	/*
	 * PKCS#1 has no room for the RSASSA-PSS algorithm identifier:
	 * PKCS#8 keeps it, and with it the restrictions.
	 */
	return signer__pem_encode(key, "PrivateKeyInfo", blob_out, len_out,
				  err);
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
 * An RSA signature is already in its JWS form, so the generic helpers sign
 * and verify it directly; for PS256 they set signer_pss_params first.
 */
static const struct signer__impl_funcs signer_rs256_funcs = {
	.generate = signer_rsa_generate,
	.load = signer_rsa_load,
	.save = signer_rs256_save,
	.public_jwk = signer_rsa_public_jwk,
	.sign = signer__digest_sign,
	.verify = signer__digest_verify,
};

static const struct signer__impl_funcs signer_ps256_funcs = {
	.generate = signer_rsa_generate,
	.load = signer_pss_load,
	.save = signer_ps256_save,
	.public_jwk = signer_rsa_public_jwk,
	.sign = signer__digest_sign,
	.verify = signer__digest_verify,
};

/*
 * RSASSA-PSS, MGF1 with SHA-256, a 32-byte salt; the message digest,
 * SHA-256, comes from md_name at EVP_DigestSignInit(). The padding mode
 * comes first: OpenSSL accepts a salt length only for PSS padding.
 * OSSL_PARAM wants writable data, which OpenSSL only reads here.
 */
static char signer_pss_pad[] = OSSL_PKEY_RSA_PAD_MODE_PSS;
static char signer_pss_mgf1[] = "SHA256";
static int signer_pss_salt = SIGNER_PSS_SALT_LEN;

static const OSSL_PARAM signer_pss_params[] = {
	OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, signer_pss_pad,
			       sizeof(signer_pss_pad) - 1),
	OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST,
			       signer_pss_mgf1, sizeof(signer_pss_mgf1) - 1),
	OSSL_PARAM_int(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, &signer_pss_salt),
	OSSL_PARAM_END,
};

const struct signer__impl signer__impl_rs256 = {
	.name = "RS256",
	.key_type = "RSA",
	.bits = SIGNER_RSA_BITS_DEFAULT,
	.md_name = "SHA256",
	.funcs = &signer_rs256_funcs,
};

const struct signer__impl signer__impl_ps256 = {
	.name = "PS256",
	.key_type = "RSA-PSS",
	.bits = SIGNER_RSA_BITS_DEFAULT,
	.md_name = "SHA256",
	.sig_params = signer_pss_params,
	.funcs = &signer_ps256_funcs,
};
