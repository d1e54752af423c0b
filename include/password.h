/*
 * Passwords: generation, Argon2id hashing and verification (RFC 9106,
 * through Debian's libargon2, the reference implementation; OpenSSL 3.0
 * has no Argon2). Only crypto/ includes <argon2.h>.
 *
 * A hash is a PHC string: "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>",
 * salt 16 random bytes, hash 32 bytes, both unpadded standard base64 as
 * libargon2 writes them.
 *
 * Thread safety: every function may be called from any thread. Each hash
 * or verification uses m KiB of memory while it runs: callers bound how
 * many run at once.
 */
#ifndef JWKS_PASSWORD_H
#define JWKS_PASSWORD_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"

/* Argon2id cost: memory in KiB, passes, lanes (threads). */
struct pw_params {
	uint32_t m_kib;
	uint32_t t;
	uint32_t p;
};

/* OWASP's minimum for Argon2id: the default and the floor. */
/* clang-format off */
#define PW_PARAMS_INIT {19456, 2, 1}
/* clang-format on */

/* Longest PHC string pw_hash() writes, with its NUL. */
#define PW_HASH_MAX 160

/* A generated password: a UUIDv4 in its 36-character text form. */
#define PW_GENERATED_LEN 36

/*
 * Parse "m=KIB,t=N,p=N" (each once, any order, all three) into *out. Each
 * must be at least the default (m >= 19456, t >= 2, p >= 1) and at most
 * m = 4194304 (4 GiB), t = 64, p = 64. On failure why (size n) says what
 * is wrong. Returns 0 or KS_EINVAL.
 */
int pw_params_parse(struct pw_params *out, const char *text, char *why,
		    size_t n);

/*
 * A new password from the CSPRNG: a random (version 4, variant 1) UUID,
 * lower-case, into out (PW_GENERATED_LEN + 1 bytes).
 * Returns 0 or KS_ECRYPTO.
 */
int pw_generate(char out[PW_GENERATED_LEN + 1]);

/*
 * Hash password (len bytes, any bytes) with params and a new random salt
 * into out (PW_HASH_MAX bytes), as a PHC string.
 * Returns 0, KS_EINVAL (params out of range), KS_ENOMEM, KS_ECRYPTO.
 */
int pw_hash(char out[PW_HASH_MAX], const struct pw_params *params,
	    const char *password, size_t len);

/*
 * Verify password against the PHC string hash, in time that does not
 * depend on where the two differ. *stale (may be NULL) is set to 1 when
 * the hash was made with other parameters than current (it should be
 * rehashed after this successful login), 0 otherwise.
 * Returns 0 (matches), KS_EBADSIG (does not match), KS_ECORRUPT (not an
 * Argon2id PHC string this accepts: other variants, versions, or costs
 * beyond pw_params_parse()'s bounds are refused), KS_ENOMEM.
 */
int pw_verify(const char *hash, const char *password, size_t len,
	      const struct pw_params *current, int *stale);

#endif /* JWKS_PASSWORD_H */
