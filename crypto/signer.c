/*
 * The signer's public functions: find the algorithm, check the arguments,
 * clear the out-params and dispatch to the algorithm's table. Also the one
 * signing helper and the one verifying helper every algorithm goes through.
 */
#include "crypto_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/decoder.h>
#include <openssl/encoder.h>
#include <openssl/err.h>
#include <openssl/rand.h>

/*
 * A stored blob larger than this is not a key: an 8192-bit RSA key in PEM
 * is about 6.5 KiB.
 */
#define SIGNER_BLOB_MAX (64 * 1024)

/*
 * Every algorithm this build knows, in the order signer_alg_at() lists
 * them. signer_load() picks the one whose key type the blob has; no two
 * share a key type.
 */
static const struct signer__impl *const signer_impls[] = {
	&signer__impl_rs256,
	&signer__impl_ps256,
	&signer__impl_es256,
	&signer__impl_eddsa,
	NULL,
};

static const struct signer__impl *signer_impl_from_name(const char *name)
{
	const struct signer__impl *const *impl;

	for (impl = signer_impls; *impl; impl++)
		if (strcmp((*impl)->name, name) == 0)
			return *impl;
	return NULL;
}

int signer__ossl_err(struct ks_err *err, int code, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e ? ERR_reason_error_string(e) : NULL;

	ks_err_set(err, code, "%s: %s", what, reason ? reason : "no detail");
	ERR_clear_error();
	return code;
}

/* A key for impl, without a key pair yet. */
static int signer_key_new(struct signer_key **out,
			  const struct signer__impl *impl, struct ks_err *err)
{
	struct signer_key *key;

	key = calloc(1, sizeof(*key));
	if (!key)
		return ks_err_set(err, KS_ENOMEM, "allocating a %s key",
				  impl->name);
	key->impl = impl;
	if (impl->md_name) {
		key->md = EVP_MD_fetch(NULL, impl->md_name, NULL);
		if (!key->md) {
			free(key);
			return signer__ossl_err(err, KS_ECRYPTO,
						"EVP_MD_fetch");
		}
	}
	*out = key;
	return 0;
}

int signer_alg_supported(const char *alg)
{
	return alg && signer_impl_from_name(alg) ? 1 : 0;
}

const char *signer_alg_at(size_t i)
{
	size_t n = sizeof(signer_impls) / sizeof(signer_impls[0]) - 1;

	return i < n ? signer_impls[i]->name : NULL;
}

int signer_random(void *buf, size_t n)
{
	unsigned char *p = buf;
	size_t done = 0, chunk;

	if (!buf)
		return n ? KS_EINVAL : 0;
	while (done < n) {
		chunk = n - done < 65536 ? n - done : 65536;
		if (RAND_bytes(p + done, (int)chunk) != 1) {
			OPENSSL_cleanse(buf, n);
			ERR_clear_error();
			return KS_ECRYPTO;
		}
		done += chunk;
	}
	return 0;
}

/* Initialize ctx for signing with key: digest, then impl->sig_params. */
static int signer_sign_init(const struct signer_key *key, EVP_MD_CTX *ctx)
{
	EVP_PKEY_CTX *pctx = NULL;

	return EVP_DigestSignInit(ctx, &pctx, key->md, NULL, key->pkey) == 1 &&
	       (!key->impl->sig_params ||
		EVP_PKEY_CTX_set_params(pctx, key->impl->sig_params) == 1);
}

/*
 * Make key->sign_ctx for a key whose key pair is complete. A context that
 * cannot be copied is no error: signer__digest_sign() then initializes one
 * per signature.
 */
static int signer_key_ready(struct signer_key *key, struct ks_err *err)
{
	EVP_MD_CTX *ctx, *copy;

	ctx = EVP_MD_CTX_new();
	copy = EVP_MD_CTX_new();
	if (!ctx || !copy) {
		EVP_MD_CTX_free(ctx);
		EVP_MD_CTX_free(copy);
		return ks_err_set(err, KS_ENOMEM, "allocating a %s context",
				  key->impl->name);
	}
	if (!signer_sign_init(key, ctx)) {
		EVP_MD_CTX_free(ctx);
		EVP_MD_CTX_free(copy);
		return signer__ossl_err(err, KS_ECRYPTO, "EVP_DigestSignInit");
	}
	if (EVP_MD_CTX_copy_ex(copy, ctx) == 1) {
		key->sign_ctx = ctx;
	} else {
		EVP_MD_CTX_free(ctx);
		ERR_clear_error();
	}
	EVP_MD_CTX_free(copy);
	return 0;
}

int signer_generate(struct signer_key **out, const char *alg, unsigned rsa_bits,
		    struct ks_err *err)
{
	const struct signer__impl *impl;
	struct signer_key *key = NULL;
	int rc;

	if (out)
		*out = NULL;
	if (!out || !alg)
		return ks_err_set(err, KS_EINVAL, "signer_generate: no %s",
				  out ? "algorithm" : "out-param");
	impl = signer_impl_from_name(alg);
	if (!impl)
		return ks_err_set(err, KS_EUNSUPPORTED,
				  "unsupported algorithm '%.32s'", alg);
	rc = signer_key_new(&key, impl, err);
	if (rc)
		return rc;
	rc = impl->funcs->generate(key, rsa_bits, err);
	if (rc == 0)
		rc = signer_key_ready(key, err);
	if (rc) {
		signer_key_free(key);
		return rc;
	}
	*out = key;
	return 0;
}

/* Decode a PEM private key of any type into *out. */
static int signer_decode(EVP_PKEY **out, const unsigned char *blob,
			 size_t blob_len, struct ks_err *err)
{
	OSSL_DECODER_CTX *dctx;
	EVP_PKEY *pkey = NULL;
	int rc = 0;

	dctx = OSSL_DECODER_CTX_new_for_pkey(&pkey, "PEM", NULL, NULL,
					     EVP_PKEY_KEYPAIR, NULL, NULL);
	if (!dctx)
		return signer__ossl_err(err, KS_ECRYPTO,
					"OSSL_DECODER_CTX_new_for_pkey");
	if (OSSL_DECODER_from_data(dctx, &blob, &blob_len) != 1 || !pkey)
		rc = signer__ossl_err(err, KS_ECORRUPT,
				      "blob is not a PEM private key");
	OSSL_DECODER_CTX_free(dctx);
	if (rc) {
		EVP_PKEY_free(pkey);
		return rc;
	}
	*out = pkey;
	return 0;
}

/*
 * A stored key whose signature its own public half rejects (a changed byte
 * in the modulus, say) would issue tokens nobody can verify: one signature
 * at load time, about a millisecond for RSA-2048, rules that out.
 */
static int signer_self_test(const struct signer_key *key, struct ks_err *err)
{
	static const char probe[] = "jwksd signer self-test";
	unsigned char sig[SIGNER_SIG_MAX];
	size_t len = sizeof(sig);
	const struct signer__impl_funcs *funcs = key->impl->funcs;

	if (funcs->sign(key, probe, sizeof(probe), sig, &len) != 0 ||
	    (funcs->verify &&
	     funcs->verify(key, probe, sizeof(probe), sig, len) != 0))
		return ks_err_set(err, KS_ECORRUPT,
				  "%s key fails its sign/verify self-test",
				  key->impl->name);
	return 0;
}

int signer_load(struct signer_key **out, const unsigned char *blob,
		size_t blob_len, struct ks_err *err)
{
	const struct signer__impl *const *impl;
	struct signer_key *key = NULL;
	EVP_PKEY *pkey = NULL;
	const char *type;
	int rc, tried = 0;

	if (out)
		*out = NULL;
	if (!out || (!blob && blob_len))
		return ks_err_set(err, KS_EINVAL, "signer_load: no %s",
				  out ? "blob" : "out-param");
	if (blob_len == 0 || blob_len > SIGNER_BLOB_MAX)
		return ks_err_set(err, KS_ECORRUPT, "blob of %zu bytes",
				  blob_len);
	rc = signer_decode(&pkey, blob, blob_len, err);
	if (rc)
		return rc;

	for (impl = signer_impls; *impl; impl++) {
		if (!EVP_PKEY_is_a(pkey, (*impl)->key_type))
			continue;
		tried = 1;
		rc = signer_key_new(&key, *impl, err);
		if (rc)
			break;
		key->pkey = pkey;
		rc = (*impl)->funcs->load(key, err);
		if (rc == 0)
			rc = signer_key_ready(key, err);
		if (rc == 0)
			rc = signer_self_test(key, err);
		if (rc == 0) {
			*out = key;
			return 0;
		}
		key->pkey = NULL;
		signer_key_free(key);
	}
	if (!tried) {
		type = EVP_PKEY_get0_type_name(pkey);
		rc = ks_err_set(err, KS_ECORRUPT, "unsupported key type '%s'",
				type ? type : "?");
	}
	EVP_PKEY_free(pkey);
	return rc;
}

int signer_save(const struct signer_key *key, unsigned char **blob_out,
		size_t *len_out, struct ks_err *err)
{
	int rc;

	if (blob_out)
		*blob_out = NULL;
	if (len_out)
		*len_out = 0;
	if (!key || !blob_out || !len_out)
		return ks_err_set(err, KS_EINVAL, "signer_save: NULL argument");
	rc = key->impl->funcs->save(key, blob_out, len_out, err);
	if (rc) {
		signer_blob_free(*blob_out, *len_out);
		*blob_out = NULL;
		*len_out = 0;
	}
	return rc;
}

void signer_blob_free(unsigned char *blob, size_t len)
{
	OPENSSL_clear_free(blob, len);
}

void signer_key_free(struct signer_key *key)
{
	if (!key)
		return;
	if (key->impl->funcs->free)
		key->impl->funcs->free(key);
	EVP_MD_CTX_free(key->sign_ctx);
	EVP_PKEY_free(key->pkey);
	EVP_MD_free(key->md);
	free(key);
}

const char *signer_key_alg(const struct signer_key *key)
{
	return key ? key->impl->name : NULL;
}

int signer_public_jwk(const struct signer_key *key, signer_jwk_fn fn, void *arg)
{
	if (!key || !fn)
		return KS_EINVAL;
	return key->impl->funcs->public_jwk(key, fn, arg);
}

int signer_sign(const struct signer_key *key, const void *data, size_t data_len,
		unsigned char *sig, size_t *sig_len)
{
	size_t len;
	int rc;

	if (!sig_len)
		return KS_EINVAL;
	len = *sig_len;
	*sig_len = 0;
	if (!key || (!data && data_len) || !sig || len == 0)
		return KS_EINVAL;
	rc = key->impl->funcs->sign(key, data ? data : "", data_len, sig, &len);
	if (rc == 0)
		*sig_len = len;
	return rc;
}

int signer_verify(const struct signer_key *key, const void *data,
		  size_t data_len, const unsigned char *sig, size_t sig_len)
{
	if (!key || (!data && data_len) || (!sig && sig_len))
		return KS_EINVAL;
	if (!key->impl->funcs->verify)
		return KS_EUNSUPPORTED;
	if (sig_len == 0)
		return KS_EBADSIG;
	return key->impl->funcs->verify(key, data ? data : "", data_len, sig,
					sig_len);
}

int signer__pem_encode(const struct signer_key *key, const char *structure,
		       unsigned char **blob_out, size_t *len_out,
		       struct ks_err *err)
{
	OSSL_ENCODER_CTX *ectx;
	int rc = 0;

	ectx = OSSL_ENCODER_CTX_new_for_pkey(key->pkey, EVP_PKEY_KEYPAIR, "PEM",
					     structure, NULL);
	if (!ectx || OSSL_ENCODER_CTX_get_num_encoders(ectx) == 0 ||
	    OSSL_ENCODER_to_data(ectx, blob_out, len_out) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO, "PEM encoding");
	OSSL_ENCODER_CTX_free(ectx);
	return rc;
}

int signer__digest_sign(const struct signer_key *key, const void *data,
			size_t data_len, unsigned char *sig, size_t *sig_len)
{
	EVP_MD_CTX *ctx = NULL;
	int size = EVP_PKEY_get_size(key->pkey);
	int rc = KS_ECRYPTO;

	if (size <= 0)
		goto out;
	if (*sig_len < (size_t)size) {
		rc = KS_EINVAL;
		goto out;
	}
	ctx = EVP_MD_CTX_new();
	if (!ctx) {
		rc = KS_ENOMEM;
		goto out;
	}
	if (!(key->sign_ctx ? EVP_MD_CTX_copy_ex(ctx, key->sign_ctx) == 1
			    : signer_sign_init(key, ctx)) ||
	    EVP_DigestSign(ctx, sig, sig_len, data, data_len) != 1)
		goto out;
	rc = 0;
out:
	if (rc) {
		*sig_len = 0;
		ERR_clear_error();
	}
	EVP_MD_CTX_free(ctx);
	return rc;
}

int signer__digest_verify(const struct signer_key *key, const void *data,
			  size_t data_len, const unsigned char *sig,
			  size_t sig_len)
{
	EVP_MD_CTX *ctx;
	EVP_PKEY_CTX *pctx = NULL;
	int rc = KS_ECRYPTO;

	ctx = EVP_MD_CTX_new();
	if (!ctx)
		return KS_ENOMEM;
	if (EVP_DigestVerifyInit(ctx, &pctx, key->md, NULL, key->pkey) != 1 ||
	    (key->impl->sig_params &&
	     EVP_PKEY_CTX_set_params(pctx, key->impl->sig_params) != 1))
		goto out;
	switch (EVP_DigestVerify(ctx, sig, sig_len, data, data_len)) {
	case 1:
		rc = 0;
		break;
	case 0:
		rc = KS_EBADSIG;
		break;
	default:
		break;
	}
out:
	if (rc)
		ERR_clear_error();
	EVP_MD_CTX_free(ctx);
	return rc;
}
