/*
 * Encryption of private keys at rest: a kek derived with HKDF-SHA256, and
 * blobs sealed and opened with AES-256-GCM. include/kek.h describes the
 * contract and the blob format.
 */
#include "crypto_internal.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "kek.h"

/* HKDF inputs. Changing any of them makes every sealed blob unreadable. */
#define KEK_SALT "jwksd key-encryption v1"
#define KEK_INFO_KEY "jwksd private key blob"
#define KEK_INFO_ID "jwksd kek id"

#define KEK_KEY_LEN 32
#define KEK_ID_LEN 8
#define KEK_NONCE_LEN 12
#define KEK_TAG_LEN 16
#define KEK_MAGIC_LEN 4

/* Offsets in a sealed blob; the ciphertext starts at KEK_HEADER_LEN. */
#define KEK_OFF_VERSION KEK_MAGIC_LEN
#define KEK_OFF_ID (KEK_OFF_VERSION + 1)
#define KEK_OFF_NONCE (KEK_OFF_ID + KEK_ID_LEN)
#define KEK_HEADER_LEN (KEK_OFF_NONCE + KEK_NONCE_LEN)

/* Additional authenticated data: magic, version, kek id, then the kid. */
#define KEK_AAD_LEN (KEK_OFF_NONCE + 8)

_Static_assert(KEK_HEADER_LEN + KEK_TAG_LEN == KEK_BLOB_OVERHEAD,
	       "KEK_BLOB_OVERHEAD does not match the blob layout");
_Static_assert(sizeof(KEK_MAGIC) - 1 == KEK_MAGIC_LEN, "magic length");

/* Immutable after creation, so seal and open may share it across threads. */
struct kek {
	unsigned char key[KEK_KEY_LEN];
	unsigned char id[KEK_ID_LEN];
	/* AES-256-GCM, fetched once. */
	EVP_CIPHER *cipher;
};

/*
 * OSSL_PARAM holds a non-const pointer even for inputs OpenSSL only reads;
 * this hands it one without a cast that drops the qualifier.
 */
static void *kek_unconst(const void *p)
{
	union {
		const void *c;
		void *v;
	} u = {.c = p};

	return u.v;
}

/* HKDF-SHA256 (RFC 5869) of secret with our salt and info into out. */
static int kek_hkdf(EVP_KDF *kdf, const void *secret, size_t len,
		    const char *info, unsigned char *out, size_t out_len,
		    struct ks_err *err)
{
	static const char salt[] = KEK_SALT;
	OSSL_PARAM params[5];
	EVP_KDF_CTX *ctx;
	int rc = 0;

	ctx = EVP_KDF_CTX_new(kdf);
	if (!ctx)
		return signer__ossl_err(err, KS_ENOMEM, "EVP_KDF_CTX_new");
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						     kek_unconst("SHA256"), 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						      kek_unconst(secret), len);
	params[2] = OSSL_PARAM_construct_octet_string(
		OSSL_KDF_PARAM_SALT, kek_unconst(salt), sizeof(salt) - 1);
	params[3] = OSSL_PARAM_construct_octet_string(
		OSSL_KDF_PARAM_INFO, kek_unconst(info), strlen(info));
	params[4] = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(ctx, out, out_len, params) != 1)
		rc = signer__ossl_err(err, KS_ECRYPTO, "HKDF-SHA256");
	/* Wipes the copy of the secret the context holds. */
	EVP_KDF_CTX_free(ctx);
	return rc;
}

int kek_from_secret(struct kek **out, const void *secret, size_t len,
		    struct ks_err *err)
{
	struct kek *kek = NULL;
	EVP_KDF *kdf = NULL;
	int rc;

	if (out)
		*out = NULL;
	if (!out || !secret)
		return ks_err_set(err, KS_EINVAL, "kek_from_secret: no %s",
				  out ? "secret" : "out-param");
	if (len == 0 || len > KEK_SECRET_MAX)
		return ks_err_set(err, KS_EINVAL,
				  "key-encryption secret of %zu bytes, "
				  "not 1 to %d",
				  len, KEK_SECRET_MAX);
	kek = OPENSSL_zalloc(sizeof(*kek));
	if (!kek)
		return ks_err_set(err, KS_ENOMEM, "allocating a kek");
	kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	if (!kdf) {
		rc = signer__ossl_err(err, KS_ECRYPTO, "EVP_KDF_fetch HKDF");
		goto out;
	}
	kek->cipher = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
	if (!kek->cipher) {
		rc = signer__ossl_err(err, KS_ECRYPTO,
				      "EVP_CIPHER_fetch AES-256-GCM");
		goto out;
	}
	if (EVP_CIPHER_get_key_length(kek->cipher) != KEK_KEY_LEN ||
	    EVP_CIPHER_get_iv_length(kek->cipher) != KEK_NONCE_LEN) {
		rc = ks_err_set(err, KS_ECRYPTO,
				"AES-256-GCM with unexpected key or IV length");
		goto out;
	}
	rc = kek_hkdf(kdf, secret, len, KEK_INFO_KEY, kek->key,
		      sizeof(kek->key), err);
	if (rc == 0)
		rc = kek_hkdf(kdf, secret, len, KEK_INFO_ID, kek->id,
			      sizeof(kek->id), err);
	if (rc)
		goto out;
	*out = kek;
	kek = NULL;
out:
	EVP_KDF_free(kdf);
	kek_free(kek);
	return rc;
}

int kek_read_file(struct kek **out, const char *path, struct ks_err *err)
{
	char *buf = NULL;
	size_t len = 0, read_len;
	int rc;

	if (out)
		*out = NULL;
	if (!out || !path)
		return ks_err_set(err, KS_EINVAL, "kek_read_file: no %s",
				  out ? "path" : "out-param");
	/* Room for the longest secret and a "\r\n" after it. */
	rc = crypto__read_file(path, "secret file", 1, KEK_SECRET_MAX + 2, &buf,
			       &len, err);
	if (rc)
		return rc;
	read_len = len;
	if (len > 0 && buf[len - 1] == '\n') {
		len--;
		if (len > 0 && buf[len - 1] == '\r')
			len--;
	}
	if (len == 0)
		rc = ks_err_set(err, KS_EINVAL, "secret file '%s' is empty",
				path);
	else if (len > KEK_SECRET_MAX)
		rc = ks_err_set(err, KS_EINVAL,
				"secret file '%s' holds more than %d bytes",
				path, KEK_SECRET_MAX);
	else
		rc = kek_from_secret(out, (const unsigned char *)buf, len, err);
	OPENSSL_clear_free(buf, read_len + 1);
	return rc;
}

void kek_free(struct kek *kek)
{
	if (!kek)
		return;
	EVP_CIPHER_free(kek->cipher);
	OPENSSL_clear_free(kek, sizeof(*kek));
}

void kek_blob_free(unsigned char *blob, size_t len)
{
	OPENSSL_clear_free(blob, len);
}

/* The AAD for a blob whose first KEK_OFF_NONCE bytes are header. */
static void kek_aad(unsigned char *aad, const unsigned char *header,
		    int64_t kid)
{
	uint64_t v = (uint64_t)kid;
	int i;

	memcpy(aad, header, KEK_OFF_NONCE);
	for (i = 7; i >= 0; i--) {
		aad[KEK_OFF_NONCE + i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

int kek_seal(const struct kek *kek, int64_t kid, const unsigned char *plain,
	     size_t plain_len, unsigned char **blob_out, size_t *blob_len_out,
	     struct ks_err *err)
{
	unsigned char aad[KEK_AAD_LEN], *blob = NULL, *ct, *tag;
	EVP_CIPHER_CTX *ctx = NULL;
	OSSL_PARAM params[2];
	size_t blob_len = 0;
	int n = 0, fin = 0, rc;

	if (blob_out)
		*blob_out = NULL;
	if (blob_len_out)
		*blob_len_out = 0;
	if (!kek || !plain || !blob_out || !blob_len_out)
		return ks_err_set(err, KS_EINVAL, "kek_seal: NULL argument");
	if (plain_len == 0 || plain_len > KEK_PLAIN_MAX)
		return ks_err_set(err, KS_EINVAL,
				  "plaintext of %zu bytes, not 1 to %d",
				  plain_len, KEK_PLAIN_MAX);
	blob_len = plain_len + KEK_BLOB_OVERHEAD;
	blob = OPENSSL_malloc(blob_len);
	if (!blob)
		return ks_err_set(err, KS_ENOMEM, "allocating a sealed blob");
	ct = blob + KEK_HEADER_LEN;
	tag = ct + plain_len;
	memcpy(blob, KEK_MAGIC, KEK_MAGIC_LEN);
	blob[KEK_OFF_VERSION] = KEK_VERSION;
	memcpy(blob + KEK_OFF_ID, kek->id, KEK_ID_LEN);
	if (RAND_bytes(blob + KEK_OFF_NONCE, KEK_NONCE_LEN) != 1) {
		rc = signer__ossl_err(err, KS_ECRYPTO, "RAND_bytes nonce");
		goto out;
	}
	kek_aad(aad, blob, kid);

	ctx = EVP_CIPHER_CTX_new();
	if (!ctx) {
		rc = ks_err_set(err, KS_ENOMEM, "EVP_CIPHER_CTX_new");
		goto out;
	}
	params[0] = OSSL_PARAM_construct_octet_string(
		OSSL_CIPHER_PARAM_AEAD_TAG, tag, KEK_TAG_LEN);
	params[1] = OSSL_PARAM_construct_end();
	if (EVP_EncryptInit_ex2(ctx, kek->cipher, kek->key,
				blob + KEK_OFF_NONCE, NULL) != 1 ||
	    EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)sizeof(aad)) != 1 ||
	    EVP_EncryptUpdate(ctx, ct, &n, plain, (int)plain_len) != 1 ||
	    (size_t)n != plain_len ||
	    EVP_EncryptFinal_ex(ctx, ct + n, &fin) != 1 || fin != 0 ||
	    EVP_CIPHER_CTX_get_params(ctx, params) != 1) {
		rc = signer__ossl_err(err, KS_ECRYPTO, "AES-256-GCM seal");
		goto out;
	}
	*blob_out = blob;
	*blob_len_out = blob_len;
	blob = NULL;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	kek_blob_free(blob, blob_len);
	return rc;
}

int kek_open(const struct kek *kek, int64_t kid, const unsigned char *blob,
	     size_t blob_len, unsigned char **plain_out, size_t *plain_len_out,
	     struct ks_err *err)
{
	unsigned char aad[KEK_AAD_LEN], *plain = NULL;
	const unsigned char *ct, *tag;
	EVP_CIPHER_CTX *ctx = NULL;
	OSSL_PARAM params[2];
	size_t plain_len = 0;
	int n = 0, fin = 0, rc;

	if (plain_out)
		*plain_out = NULL;
	if (plain_len_out)
		*plain_len_out = 0;
	if (!kek || !blob || !plain_out || !plain_len_out)
		return ks_err_set(err, KS_EINVAL, "kek_open: NULL argument");
	if (blob_len <= KEK_OFF_VERSION ||
	    memcmp(blob, KEK_MAGIC, KEK_MAGIC_LEN) != 0)
		return ks_err_set(err, KS_ECORRUPT,
				  "kid %lld: not a sealed key blob",
				  (long long)kid);
	if (blob[KEK_OFF_VERSION] != KEK_VERSION)
		return ks_err_set(err, KS_ECORRUPT,
				  "kid %lld: sealed blob of unknown version %u",
				  (long long)kid, blob[KEK_OFF_VERSION]);
	if (blob_len <= KEK_BLOB_OVERHEAD ||
	    blob_len - KEK_BLOB_OVERHEAD > KEK_PLAIN_MAX)
		return ks_err_set(err, KS_ECORRUPT,
				  "kid %lld: sealed blob of %zu bytes",
				  (long long)kid, blob_len);
	if (CRYPTO_memcmp(blob + KEK_OFF_ID, kek->id, KEK_ID_LEN) != 0)
		return ks_err_set(err, KS_EACCES,
				  "kid %lld: encrypted under another secret",
				  (long long)kid);

	plain_len = blob_len - KEK_BLOB_OVERHEAD;
	ct = blob + KEK_HEADER_LEN;
	tag = ct + plain_len;
	plain = OPENSSL_malloc(plain_len);
	if (!plain)
		return ks_err_set(err, KS_ENOMEM, "allocating a plaintext");
	kek_aad(aad, blob, kid);

	ctx = EVP_CIPHER_CTX_new();
	if (!ctx) {
		rc = ks_err_set(err, KS_ENOMEM, "EVP_CIPHER_CTX_new");
		goto out;
	}
	params[0] = OSSL_PARAM_construct_octet_string(
		OSSL_CIPHER_PARAM_AEAD_TAG, kek_unconst(tag), KEK_TAG_LEN);
	params[1] = OSSL_PARAM_construct_end();
	if (EVP_DecryptInit_ex2(ctx, kek->cipher, kek->key,
				blob + KEK_OFF_NONCE, NULL) != 1 ||
	    EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)sizeof(aad)) != 1 ||
	    EVP_DecryptUpdate(ctx, plain, &n, ct, (int)plain_len) != 1 ||
	    (size_t)n != plain_len ||
	    EVP_CIPHER_CTX_set_params(ctx, params) != 1) {
		rc = signer__ossl_err(err, KS_ECRYPTO, "AES-256-GCM open");
		goto out;
	}
	/* The tag is compared here, in constant time, by OpenSSL. */
	if (EVP_DecryptFinal_ex(ctx, plain + n, &fin) != 1 || fin != 0) {
		ERR_clear_error();
		rc = ks_err_set(err, KS_EBADSIG,
				"kid %lld: sealed blob does not authenticate "
				"(changed, or copied from another row)",
				(long long)kid);
		goto out;
	}
	*plain_out = plain;
	*plain_len_out = plain_len;
	plain = NULL;
	rc = 0;
out:
	EVP_CIPHER_CTX_free(ctx);
	/* Wipes whatever was decrypted from a blob that did not verify. */
	kek_blob_free(plain, plain_len);
	return rc;
}

int kek_is_sealed(const unsigned char *blob, size_t len)
{
	return blob && len > KEK_OFF_VERSION &&
	       memcmp(blob, KEK_MAGIC, KEK_MAGIC_LEN) == 0 &&
	       blob[KEK_OFF_VERSION] == KEK_VERSION;
}

int kek_sealed_by(const struct kek *kek, const unsigned char *blob, size_t len)
{
	return kek && kek_is_sealed(blob, len) && len >= KEK_OFF_NONCE &&
	       CRYPTO_memcmp(blob + KEK_OFF_ID, kek->id, KEK_ID_LEN) == 0;
}
