/*
 * The signer: every cryptographic operation jwksd performs.
 *
 * A struct signer_key is an opaque private key for one JWS algorithm
 * (RFC 7518): "RS256" today. It is generated here, saved to and loaded from
 * the blob the key store keeps (RS256: PKCS#1 PEM, "-----BEGIN RSA PRIVATE
 * KEY-----"), exports its public JWK members, and signs. The algorithm of a
 * key comes from the key itself, never from a request.
 *
 * Only crypto/ includes OpenSSL; nothing here exposes its types.
 *
 * Thread safety: a loaded key is immutable; signer_sign() and
 * signer_verify() may be called on the same key from many threads at once.
 * Private key material is wiped when a key or a blob is freed.
 */
#ifndef JWKS_SIGNER_H
#define JWKS_SIGNER_H

#include <stddef.h>

#include "jwks_error.h"

struct signer_key;

/* The largest signature any supported algorithm produces, in bytes. */
#define SIGNER_SIG_MAX 1024

/*
 * Whether alg ("RS256") names an algorithm this build can generate.
 * Returns 1 or 0.
 */
int signer_alg_supported(const char *alg);

/*
 * Generate a new private key for alg. *out is the caller's, freed with
 * signer_key_free(); NULL on failure.
 * Returns 0, KS_EUNSUPPORTED (unknown alg), KS_ECRYPTO, KS_ENOMEM.
 */
int signer_generate(struct signer_key **out, const char *alg,
		    struct ks_err *err);

/*
 * Parse a stored blob (as signer_save() produced it) into a key. The
 * algorithm is found from the blob. *out is the caller's; NULL on failure.
 * Returns 0, KS_ECORRUPT (not a key this build can read), KS_ENOMEM.
 */
int signer_load(struct signer_key **out, const unsigned char *blob,
		size_t blob_len, struct ks_err *err);

/*
 * Serialize the private key into a new blob for the store. *blob_out is
 * the caller's, freed with signer_blob_free() (which wipes it).
 * Returns 0, KS_ECRYPTO, KS_ENOMEM.
 */
int signer_save(const struct signer_key *key, unsigned char **blob_out,
		size_t *len_out, struct ks_err *err);

/* Wipe and free a blob from signer_save(). blob may be NULL. */
void signer_blob_free(unsigned char *blob, size_t len);

/* Wipe and free a key. key may be NULL. */
void signer_key_free(struct signer_key *key);

/* The key's JWS algorithm ("RS256"). Ownership: borrowed, static. */
const char *signer_key_alg(const struct signer_key *key);

/*
 * Called by signer_public_jwk() once per public JWK member, in a fixed order
 * (RSA: "kty", "n", "e"). name and value are borrowed for the call. Return 0
 * to go on, non-zero to stop (that value is returned).
 */
typedef int (*signer_jwk_fn)(const char *name, const char *value, void *arg);

/*
 * Report the key's public JWK members (RFC 7517/7518 §6): RSA "kty":"RSA",
 * "n" and "e" as unpadded base64url of their big-endian bytes. Never a
 * private member.
 * Returns 0, fn's non-zero value, KS_ECRYPTO, KS_ENOMEM.
 */
int signer_public_jwk(const struct signer_key *key, signer_jwk_fn fn,
		      void *arg);

/*
 * Sign data with the key's algorithm (RS256: RSASSA-PKCS1-v1_5 over SHA-256)
 * into sig, whose capacity is *sig_len on entry (SIGNER_SIG_MAX always
 * suffices); *sig_len is the signature's length on return, 0 on failure.
 * Returns 0, KS_EINVAL (buffer too small), KS_ECRYPTO.
 */
int signer_sign(const struct signer_key *key, const void *data, size_t data_len,
		unsigned char *sig, size_t *sig_len);

/*
 * Verify sig over data with the key's public half.
 * Returns 0 (valid), KS_EBADSIG (does not verify), KS_ECRYPTO.
 */
int signer_verify(const struct signer_key *key, const void *data,
		  size_t data_len, const unsigned char *sig, size_t sig_len);

/*
 * Unpadded base64url (RFC 4648 §5, RFC 7515 §2).
 *
 * B64URL_ENCODED_LEN(n) is the encoded length of n bytes, without the
 * terminating NUL. b64url_encode() writes it and a NUL into dst, which must
 * hold B64URL_ENCODED_LEN(n) + 1 bytes, and returns the length.
 *
 * b64url_decode() decodes src_len characters (no padding, no whitespace;
 * anything outside the alphabet, or a length of 4k+1, is an error) into dst,
 * which must hold B64URL_DECODED_MAX(src_len) bytes. Returns 0 and sets
 * *dst_len, or KS_EINVAL.
 */
#define B64URL_ENCODED_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))
#define B64URL_DECODED_MAX(n) (((n) / 4) * 3 + 2)

size_t b64url_encode(char *dst, const void *src, size_t src_len);
int b64url_decode(unsigned char *dst, size_t *dst_len, const char *src,
		  size_t src_len);

#endif /* JWKS_SIGNER_H */
