/*
 * Encryption of private keys at rest.
 *
 * A struct kek is an opaque key-encryption key: a 256-bit AES key derived
 * from an operator's secret with HKDF-SHA256 (RFC 5869), salt
 * "jwksd key-encryption v1", info "jwksd private key blob". Alongside it the
 * kek keeps a key identifier, the first 8 bytes of HKDF-SHA256 over the same
 * secret and salt with info "jwksd kek id". The identifier is stored in every
 * blob, so that a blob sealed under another secret is told apart from a
 * damaged one. It reveals nothing about the AES key.
 *
 * HKDF is not a password hash: it does not slow down guessing. The secret
 * should be high-entropy (32 random bytes, say), not a memorable word.
 *
 * kek_seal() turns a private key blob (as signer_save() produced it) into a
 * sealed blob that the store keeps instead; kek_open() turns it back. The
 * sealed blob is versioned and self-describing, all integers big-endian:
 *
 *   offset  size  field
 *        0     4  magic "JWKE"
 *        4     1  version, 0x01
 *        5     8  kek id (which secret sealed it)
 *       13    12  nonce, fresh from RAND_bytes() for every seal
 *       25     n  ciphertext, AES-256-GCM, as long as the plaintext (n >= 1)
 *     25+n    16  GCM tag
 *
 * The additional authenticated data is magic | version | kek id | kid, the
 * kid as 8 bytes big-endian (two's complement), 21 bytes in all. The nonce is
 * authenticated as the GCM IV. So the tag covers every byte of the blob and
 * the row it belongs to: a blob copied into the row of another kid does not
 * open. A sealed blob begins with "JWKE", never with a PEM "-----BEGIN".
 *
 * Only crypto/ includes OpenSSL; nothing here exposes its types.
 *
 * Thread safety: a kek is immutable once kek_from_secret() or
 * kek_read_file() has returned it; kek_seal() and kek_open() may run on the
 * same kek from many threads at once. kek_free() must not race with them.
 * Memory: key material is wiped when a kek, or a blob from kek_seal() or
 * kek_open(), is freed.
 */
#ifndef JWKS_KEK_H
#define JWKS_KEK_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"

struct kek;

/* The first bytes of every sealed blob, and the version this build writes. */
#define KEK_MAGIC "JWKE"
#define KEK_VERSION 1

/*
 * How much longer a sealed blob is than its plaintext: magic, version, kek
 * id, nonce and tag.
 */
#define KEK_BLOB_OVERHEAD (4 + 1 + 8 + 12 + 16)

/* The longest secret, in bytes, and the longest plaintext kek_seal() takes. */
#define KEK_SECRET_MAX 4096
#define KEK_PLAIN_MAX (16 * 1024 * 1024)

/*
 * Derive a kek from len bytes of secret (any bytes; NUL is not special).
 * *out is the caller's, freed with kek_free(); NULL on failure. The secret
 * is borrowed for the call and not kept.
 * Returns 0, KS_EINVAL (no secret, an empty one, or one longer than
 * KEK_SECRET_MAX), KS_ECRYPTO, KS_ENOMEM.
 */
int kek_from_secret(struct kek **out, const void *secret, size_t len,
		    struct ks_err *err);

/*
 * Derive a kek from the secret in the file at path: the file's bytes, less
 * one trailing newline ("\n" or "\r\n"), as kek_from_secret() takes them.
 * The file must be a regular file that neither group nor others may read
 * (mode & 077 == 0); a symbolic link is followed and the file it names is
 * checked. *out is the caller's, freed with kek_free(); NULL on failure.
 * err names the file.
 * Returns 0, KS_ENOTFOUND (no such file), KS_EACCES (readable by group or
 * others, or the process may not read it), KS_EINVAL (empty, longer than
 * KEK_SECRET_MAX, or not a regular file), KS_EIO, KS_ECRYPTO, KS_ENOMEM.
 */
int kek_read_file(struct kek **out, const char *path, struct ks_err *err);

/* Wipe and free a kek. kek may be NULL. */
void kek_free(struct kek *kek);

/*
 * Seal plain_len bytes of plain (1 to KEK_PLAIN_MAX) for the row of kid, in
 * the format above. *blob_out is the caller's, freed with kek_blob_free();
 * *blob_len_out is plain_len + KEK_BLOB_OVERHEAD. Both are NULL and 0 on
 * failure. plain is borrowed for the call.
 * Returns 0, KS_EINVAL (a NULL argument, or an empty or too long
 * plaintext), KS_ECRYPTO (including no random nonce), KS_ENOMEM.
 */
int kek_seal(const struct kek *kek, int64_t kid, const unsigned char *plain,
	     size_t plain_len, unsigned char **blob_out, size_t *blob_len_out,
	     struct ks_err *err);

/*
 * Open a blob that kek_seal() made for the row of kid. *plain_out is the
 * caller's, freed with kek_blob_free() (which wipes it); *plain_len_out is
 * blob_len - KEK_BLOB_OVERHEAD. Both are NULL and 0 on failure, and no
 * unauthenticated byte is ever handed back. blob is borrowed for the call.
 * Returns 0,
 *   KS_ECORRUPT  not a sealed blob: too short or too long, another magic,
 *                or a version this build does not know;
 *   KS_EACCES    sealed under another secret (the kek id differs);
 *   KS_EBADSIG   the tag does not verify: the blob was changed, or it
 *                belongs to another kid;
 * or KS_EINVAL (a NULL argument), KS_ECRYPTO, KS_ENOMEM.
 */
int kek_open(const struct kek *kek, int64_t kid, const unsigned char *blob,
	     size_t blob_len, unsigned char **plain_out, size_t *plain_len_out,
	     struct ks_err *err);

/*
 * Wipe and free a blob from kek_seal() or a plaintext from kek_open(); len
 * is the length they reported. blob may be NULL.
 */
void kek_blob_free(unsigned char *blob, size_t len);

/*
 * Whether blob begins with KEK_MAGIC and a version this build knows: 1 or 0.
 * It tells sealed rows from PEM ones, and looks at no more than the first 5
 * bytes, so a truncated sealed blob still counts as sealed (and kek_open()
 * then reports it corrupt, rather than it being parsed as PEM). blob may be
 * NULL when len is 0. Needs no kek.
 */
int kek_is_sealed(const unsigned char *blob, size_t len);

/*
 * Whether blob is sealed and names kek's secret (its kek id): 1 or 0. Says
 * nothing of whether it opens; it tells a store re-encrypted under another
 * secret from this one without decrypting. kek may be NULL (then 0).
 */
int kek_sealed_by(const struct kek *kek, const unsigned char *blob, size_t len);

#endif /* JWKS_KEK_H */
