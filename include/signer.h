/*
 * The signer: every cryptographic operation jwksd performs.
 *
 * A struct signer_key is an opaque private key for one JWS algorithm
 * (RFC 7518, RFC 8037): "RS256", "PS256", "ES256" or "EdDSA" (Ed25519). It
 * is generated here, saved to and loaded from the blob the key store keeps,
 * exports its public JWK members, and signs. The algorithm of a key comes
 * from the key itself, never from a request: one key, one algorithm.
 *
 * Blobs: RS256 keys are PKCS#1 PEM ("-----BEGIN RSA PRIVATE KEY-----"), the
 * form the assignment's tools write and read. Every other algorithm is
 * PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"), whose key type names the
 * algorithm: PS256 keys are RSASSA-PSS keys (OID 1.2.840.113549.1.1.10)
 * restricted to SHA-256, MGF1-SHA-256 and a 32-byte salt; ES256 keys are
 * EC keys on P-256; EdDSA keys are Ed25519 keys. An RSA key in PKCS#8
 * (rsaEncryption) is an RS256 key.
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
 * Whether alg ("RS256") names an algorithm this build can generate: exact,
 * case-sensitive comparison (RFC 7515 §4.1.1). Returns 1 or 0.
 */
int signer_alg_supported(const char *alg);

/*
 * The i-th algorithm of the table (0, 1, ...), or NULL past the last: for
 * listing the supported names. Ownership: borrowed, static.
 */
const char *signer_alg_at(size_t i);

/* The RSA modulus sizes signer_generate() makes (RS256, PS256). */
#define SIGNER_RSA_BITS_DEFAULT 2048

/*
 * Generate a new private key for alg. rsa_bits is the modulus size of an
 * RSA key (RS256, PS256): 2048, 3072 or 4096, or 0 for
 * SIGNER_RSA_BITS_DEFAULT; other algorithms have one size and ignore it.
 * *out is the caller's, freed with signer_key_free(); NULL on failure.
 * Returns 0, KS_EUNSUPPORTED (unknown alg), KS_EINVAL (rsa_bits),
 * KS_ECRYPTO, KS_ENOMEM.
 */
int signer_generate(struct signer_key **out, const char *alg, unsigned rsa_bits,
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
 * (RSA: "kty", "n", "e"; EC: "kty", "crv", "x", "y"; OKP: "kty", "crv",
 * "x"). name and value are borrowed for the call. Return 0 to go on,
 * non-zero to stop (that value is returned).
 */
typedef int (*signer_jwk_fn)(const char *name, const char *value, void *arg);

/*
 * Report the key's public JWK members (RFC 7518 §6, RFC 8037 §2): RSA
 * "kty":"RSA", "n" and "e" as unpadded base64url of their big-endian bytes
 * (no leading zero bytes); EC "kty":"EC", "crv":"P-256", "x" and "y" each
 * exactly 32 bytes; OKP "kty":"OKP", "crv":"Ed25519", "x" the 32-byte
 * public key. Never a private member.
 * Returns 0, fn's non-zero value, KS_ECRYPTO, KS_ENOMEM.
 */
int signer_public_jwk(const struct signer_key *key, signer_jwk_fn fn,
		      void *arg);

/*
 * Sign data with the key's algorithm into sig, in the JWS form (RFC 7518
 * §3): RS256 RSASSA-PKCS1-v1_5 with SHA-256; PS256 RSASSA-PSS with SHA-256,
 * MGF1-SHA-256 and a 32-byte salt; ES256 the 64 bytes R || S (each
 * big-endian, 32 bytes), never DER; EdDSA the 64-byte Ed25519 signature.
 * sig has capacity *sig_len on entry (SIGNER_SIG_MAX always
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
 * Fill buf with n bytes from the CSPRNG (OpenSSL's DRBG): for token ids.
 * Returns 0 or KS_ECRYPTO (buf is then zeroed).
 */
int signer_random(void *buf, size_t n);

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

/*
 * Standard base64 with padding (RFC 4648 §4), strictly: a length of 4k,
 * nothing outside the alphabet, '=' only at the end. dst must hold
 * src_len / 4 * 3 bytes. Returns 0 and sets *dst_len, or KS_EINVAL.
 */
int b64_decode(unsigned char *dst, size_t *dst_len, const char *src,
	       size_t src_len);
int b64url_decode(unsigned char *dst, size_t *dst_len, const char *src,
		  size_t src_len);

/*
 * The SHA-256 of data in standard base64 (44 characters and a NUL; cap at
 * least 45), as a Content-Security-Policy hash source wants it. Returns 0
 * or KS_ECRYPTO.
 */
int b64_sha256(const void *data, size_t len, char *out, size_t cap);

#endif /* JWKS_SIGNER_H */
