/*
 * Internals of the signer, shared by crypto/signer.c and the algorithm files
 * (crypto/alg_*.c). Nothing outside crypto/ may include this header: it
 * exposes OpenSSL types, and include/signer.h is the whole public contract.
 *
 * Each JWS algorithm is a const struct signer__impl, modelled on OpenSSH's
 * struct sshkey_impl: its name, the OpenSSL key type it uses, the key size it
 * generates, the digest it signs with, and a table of functions. signer.c
 * keeps the list of descriptors, finds one by name or by the type of a
 * decoded key, validates the arguments of every public call, clears
 * out-params, and dispatches through the table.
 */
#ifndef JWKS_CRYPTO_INTERNAL_H
#define JWKS_CRYPTO_INTERNAL_H

/*
 * Build against the OpenSSL 3.0 API with every deprecated declaration
 * removed, so that a deprecated call fails to compile. This header must be
 * included before any OpenSSL header.
 */
#ifndef OPENSSL_API_COMPAT
#define OPENSSL_API_COMPAT 30000
#endif
#ifndef OPENSSL_NO_DEPRECATED
#define OPENSSL_NO_DEPRECATED 1
#endif

#include <openssl/evp.h>

#include "signer.h"

struct signer__impl;

/*
 * A key: immutable once generate or load has returned, so that any number
 * of threads may sign with it at once.
 */
struct signer_key {
	const struct signer__impl *impl;
	/*
	 * The key pair. Freed (and its private members wiped) by
	 * signer_key_free().
	 */
	EVP_PKEY *pkey;
	/* The digest the algorithm signs with, fetched once; NULL for none. */
	EVP_MD *md;
	/*
	 * A context set up once for signing with this key (initialized and
	 * given impl->sig_params) once the key pair is there; NULL when this
	 * OpenSSL cannot copy it. signer__digest_sign() copies it for each
	 * signature instead of initializing a context anew, which fetches
	 * the algorithm and digest again; copying only reads it, so that
	 * concurrent signers share nothing they modify.
	 */
	EVP_MD_CTX *sign_ctx;
};

/*
 * The functions of one algorithm. key->impl is set, and key->md fetched,
 * before any of them is called. Errors are project codes; detail goes into
 * err, which may be NULL.
 */
struct signer__impl_funcs {
	/*
	 * Mandatory. Generate a new key pair into key->pkey. bits is the
	 * caller's rsa_bits: 0 for impl->bits, or a size the algorithm
	 * checks; an algorithm of one size ignores it.
	 * Returns 0, KS_EINVAL (bits), KS_ECRYPTO, KS_ENOMEM.
	 */
	int (*generate)(struct signer_key *key, unsigned int bits,
			struct ks_err *err);
	/*
	 * Mandatory. signer.c has decoded a PEM blob into key->pkey, whose
	 * OpenSSL type is impl->key_type and which holds a private key. Check
	 * that it is one this algorithm accepts (size, parameters).
	 * Returns 0 or KS_ECORRUPT.
	 */
	int (*load)(struct signer_key *key, struct ks_err *err);
	/*
	 * Mandatory. Encode the private key as the blob the store keeps, in
	 * memory from OPENSSL_malloc() that the caller wipes and frees with
	 * OPENSSL_clear_free(). Returns 0, KS_ECRYPTO, KS_ENOMEM.
	 */
	int (*save)(const struct signer_key *key, unsigned char **blob_out,
		    size_t *len_out, struct ks_err *err);
	/*
	 * Mandatory. Call fn for each public JWK member, in the algorithm's
	 * order. Returns 0, fn's non-zero value, KS_ECRYPTO, KS_ENOMEM.
	 */
	int (*public_jwk)(const struct signer_key *key, signer_jwk_fn fn,
			  void *arg);
	/*
	 * Mandatory. Sign data into sig (capacity *sig_len) in the JWS form
	 * of the signature. Arguments are checked and *sig_len is non-zero.
	 * Returns 0, KS_EINVAL (too small), KS_ECRYPTO.
	 */
	int (*sign)(const struct signer_key *key, const void *data,
		    size_t data_len, unsigned char *sig, size_t *sig_len);
	/*
	 * Optional (NULL: signer_verify() answers KS_EUNSUPPORTED). Verify
	 * a JWS-form signature. Returns 0, KS_EBADSIG, KS_ECRYPTO.
	 */
	int (*verify)(const struct signer_key *key, const void *data,
		      size_t data_len, const unsigned char *sig,
		      size_t sig_len);
	/*
	 * Optional. Release algorithm-specific state before signer.c frees
	 * key->pkey, key->md and the key itself.
	 */
	void (*free)(struct signer_key *key);
};

struct signer__impl {
	/* The JWS "alg" (RFC 7518 §3.1), compared case-sensitively. */
	const char *name;
	/* The OpenSSL key type, for EVP_PKEY_is_a() and key generation. */
	const char *key_type;
	/* The size of generated keys, in bits (RSA: the default). */
	unsigned int bits;
	/* The digest name for EVP_MD_fetch(); NULL when the key has none. */
	const char *md_name;
	/*
	 * Parameters set on the signature context after every
	 * EVP_DigestSignInit() and EVP_DigestVerifyInit() of the helpers
	 * below (PS256: the PSS padding); NULL for none.
	 */
	const OSSL_PARAM *sig_params;
	const struct signer__impl_funcs *funcs;
};

extern const struct signer__impl signer__impl_rs256;
extern const struct signer__impl signer__impl_ps256;
extern const struct signer__impl signer__impl_es256;
extern const struct signer__impl signer__impl_eddsa;

/*
 * Encode key->pkey as PEM of the given OpenSSL output structure
 * ("type-specific" for PKCS#1, "PrivateKeyInfo" for PKCS#8) into memory
 * from OPENSSL_malloc(). Returns 0 or KS_ECRYPTO.
 */
int signer__pem_encode(const struct signer_key *key, const char *structure,
		       unsigned char **blob_out, size_t *len_out,
		       struct ks_err *err);

/*
 * Sign data with key->pkey, key->md and impl->sig_params (a copy of
 * key->sign_ctx, or EVP_DigestSignInit without one; then EVP_DigestSign)
 * into sig, whose capacity is *sig_len; *sig_len is the
 * signature's length on return. The raw OpenSSL signature: an algorithm
 * whose JWS form differs converts it afterwards.
 * Returns 0, KS_EINVAL (sig is smaller than EVP_PKEY_get_size()),
 * KS_ECRYPTO, KS_ENOMEM.
 */
int signer__digest_sign(const struct signer_key *key, const void *data,
			size_t data_len, unsigned char *sig, size_t *sig_len);

/*
 * Verify a raw OpenSSL signature over data with key->pkey, key->md and
 * impl->sig_params.
 * Returns 0, KS_EBADSIG, KS_ECRYPTO, KS_ENOMEM.
 */
int signer__digest_verify(const struct signer_key *key, const void *data,
			  size_t data_len, const unsigned char *sig,
			  size_t sig_len);

/*
 * Fill err with "what: <OpenSSL's reason>" and clear this thread's OpenSSL
 * error queue, then return code. err may be NULL.
 */
int signer__ossl_err(struct ks_err *err, int code, const char *what);

/*
 * The contents of the regular file path, at most max bytes, in memory from
 * OPENSSL_malloc() (wiped and freed by the caller with
 * OPENSSL_clear_free(*out, *len_out + 1)), NUL-terminated. Opened without
 * blocking (a FIFO in its place must not hang us). private: refuse a file
 * open to group or others. what names the file in messages. Returns 0,
 * KS_ENOTFOUND, KS_EACCES (no access, or private and too open), KS_EINVAL
 * (not a regular file, larger than max), KS_EIO, KS_ENOMEM.
 */
int crypto__read_file(const char *path, const char *what, int private,
		      size_t max, char **out, size_t *len_out,
		      struct ks_err *err);

#endif /* JWKS_CRYPTO_INTERNAL_H */
