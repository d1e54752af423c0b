/*
 * Passwords: generated UUIDv4 passwords, Argon2id hashes as PHC strings
 * through libargon2, and their verification. include/password.h is the
 * contract.
 *
 * pw_verify() parses the PHC string itself, strictly, before libargon2
 * sees anything: a stored string decides how much memory and time a
 * verification costs, so its costs must be within the bounds of
 * pw_params_parse() before any work starts. It then runs
 * argon2id_verify_ctx() on the parsed values with buffers of its own, so
 * that the string is decoded once and every buffer is wiped; libargon2
 * compares the two hashes in constant time.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */

#include "crypto_internal.h"

#include <argon2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/crypto.h>

#include "password.h"

/* The bounds of every cost, in pw_params_parse() and in stored hashes. */
#define PW_M_MIN 19456u
#define PW_M_MAX 4194304u
#define PW_T_MIN 2u
#define PW_T_MAX 64u
#define PW_P_MIN 1u
#define PW_P_MAX 64u

/* What pw_hash() writes. */
#define PW_SALT_LEN 16
#define PW_TAG_LEN 32

/*
 * What pw_verify() accepts in a stored hash (another tool may have made
 * it): a salt of libargon2's shortest length or more, and a 32-byte hash
 * only, so that a truncated hash is refused rather than compared.
 */
#define PW_SALT_MIN 8
#define PW_SALT_MAX 64

#define PW_PHC_PREFIX "$argon2id$v=19$"

_Static_assert(ARGON2_VERSION_13 == 0x13, "v=19 is version 0x13");

/* A parsed PHC string. */
struct pw_phc {
	struct pw_params params;
	unsigned char salt[PW_SALT_MAX];
	size_t salt_len;
	unsigned char tag[PW_TAG_LEN];
};

/*
 * libargon2's context holds non-const pointers to inputs it only reads;
 * this hands it one without a cast that drops the qualifier.
 */
static uint8_t *pw_unconst(const void *p)
{
	union {
		const void *c;
		uint8_t *v;
	} u = {.c = p};

	return u.v;
}

/* Write a reason into why (size n), if there is room. Returns KS_EINVAL. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int
pw_why(char *why, size_t n, const char *fmt, ...)
{
	if (why && n) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(why, n, fmt, ap);
		va_end(ap);
	}
	return KS_EINVAL;
}

/*
 * Read the decimal number at *s: 1 to 10 digits, no sign, no leading
 * zero, at most UINT32_MAX. Advance *s past it. Returns 0 or -1.
 */
static int pw_decimal(const char **s, uint32_t *out)
{
	const char *p = *s;
	uint64_t v = 0;
	size_t i;

	for (i = 0; p[i] >= '0' && p[i] <= '9'; i++) {
		if (i == 10)
			return -1;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	if (i == 0 || (i > 1 && p[0] == '0') || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	*s = p + i;
	return 0;
}

/* Check params against the bounds. Returns 0 or KS_EINVAL (why says). */
static int pw_params_check(const struct pw_params *p, char *why, size_t n)
{
	if (p->m_kib < PW_M_MIN || p->m_kib > PW_M_MAX)
		return pw_why(why, n, "m must be %u to %u KiB", PW_M_MIN,
			      PW_M_MAX);
	if (p->t < PW_T_MIN || p->t > PW_T_MAX)
		return pw_why(why, n, "t must be %u to %u", PW_T_MIN, PW_T_MAX);
	if (p->p < PW_P_MIN || p->p > PW_P_MAX)
		return pw_why(why, n, "p must be %u to %u", PW_P_MIN, PW_P_MAX);
	return 0;
}

int pw_params_parse(struct pw_params *out, const char *text, char *why,
		    size_t n)
{
	struct pw_params p = {0, 0, 0};
	const char *s = text;
	unsigned int seen = 0, bit;
	uint32_t v, *dst;
	char key;

	if (why && n)
		why[0] = '\0';
	if (!out)
		return KS_EINVAL;
	if (!text)
		return pw_why(why, n, "no parameters");
	for (;;) {
		key = s[0];
		switch (key) {
		case 'm':
			bit = 1, dst = &p.m_kib;
			break;
		case 't':
			bit = 2, dst = &p.t;
			break;
		case 'p':
			bit = 4, dst = &p.p;
			break;
		default:
			return pw_why(why, n, "expected m=, t= or p=");
		}
		if (s[1] != '=')
			return pw_why(why, n, "expected '=' after '%c'", key);
		if (seen & bit)
			return pw_why(why, n, "'%c' given twice", key);
		seen |= bit;
		s += 2;
		if (pw_decimal(&s, &v) < 0)
			return pw_why(why, n, "'%c' is not a decimal number",
				      key);
		*dst = v;
		if (*s == '\0')
			break;
		if (*s != ',')
			return pw_why(why, n,
				      "expected ',' between parameters");
		s++;
	}
	if (seen != 7)
		return pw_why(why, n, "m, t and p are all required");
	if (pw_params_check(&p, why, n) < 0)
		return KS_EINVAL;
	*out = p;
	return 0;
}

int pw_generate(char out[PW_GENERATED_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[16];
	size_t i, o = 0;

	if (!out)
		return KS_EINVAL;
	out[0] = '\0';
	if (signer_random(b, sizeof(b)) < 0)
		return KS_ECRYPTO;
	/* RFC 9562 §5.4: version 4, variant 0b10. */
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	for (i = 0; i < sizeof(b); i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[b[i] >> 4];
		out[o++] = hex[b[i] & 15];
	}
	out[o] = '\0';
	OPENSSL_cleanse(b, sizeof(b));
	return 0;
}

/* libargon2's result as a project code. */
static int pw_argon2_code(int rc)
{
	switch (rc) {
	case ARGON2_OK:
		return 0;
	case ARGON2_VERIFY_MISMATCH:
		return KS_EBADSIG;
	case ARGON2_MEMORY_ALLOCATION_ERROR:
	case ARGON2_THREAD_FAIL:
		return KS_ENOMEM;
	default:
		return KS_ECRYPTO;
	}
}

int pw_hash(char out[PW_HASH_MAX], const struct pw_params *params,
	    const char *password, size_t len)
{
	unsigned char salt[PW_SALT_LEN];
	int rc;

	if (!out)
		return KS_EINVAL;
	out[0] = '\0';
	if (!params || (!password && len) || len > ARGON2_MAX_PWD_LENGTH ||
	    pw_params_check(params, NULL, 0) < 0)
		return KS_EINVAL;
	if (signer_random(salt, sizeof(salt)) < 0)
		return KS_ECRYPTO;
	/*
	 * libargon2 wipes its copy of the hash and its memory blocks; the
	 * PHC string is the only output.
	 */
	rc = argon2id_hash_encoded(params->t, params->m_kib, params->p,
				   password ? password : "", len, salt,
				   sizeof(salt), PW_TAG_LEN, out, PW_HASH_MAX);
	OPENSSL_cleanse(salt, sizeof(salt));
	if (rc != ARGON2_OK) {
		OPENSSL_cleanse(out, PW_HASH_MAX);
		out[0] = '\0';
		return pw_argon2_code(rc);
	}
	return 0;
}

/* The value of a standard base64 character, or -1. */
static int pw_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Decode the unpadded standard base64 at *s, up to the next character
 * outside the alphabet, into dst: min to cap bytes, and the unused low
 * bits of the last character zero (libargon2 writes only that form).
 * Advance *s past it. Returns 0 or -1.
 */
static int pw_b64_decode(const char **s, unsigned char *dst, size_t min,
			 size_t cap, size_t *len_out)
{
	const unsigned char *p = (const unsigned char *)*s;
	uint32_t acc = 0;
	unsigned int bits = 0;
	size_t i, o = 0;
	int v;

	for (i = 0; (v = pw_b64_value(p[i])) >= 0; i++) {
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			if (o == cap)
				return -1;
			bits -= 8;
			dst[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Left over: 0 bits, or 2 or 4 zero bits (i % 4 is 3 or 2). */
	if (i % 4 == 1 || acc != 0 || o < min)
		return -1;
	*len_out = o;
	*s = (const char *)p + i;
	return 0;
}

/* Consume the literal lit at *s. Returns 0 or -1. */
static int pw_expect(const char **s, const char *lit)
{
	size_t n = strlen(lit);

	if (strncmp(*s, lit, n) != 0)
		return -1;
	*s += n;
	return 0;
}

/*
 * Parse "$argon2id$v=19$m=M,t=T,p=P$SALT$HASH", exactly that, with costs
 * within the bounds, SALT of PW_SALT_MIN to PW_SALT_MAX bytes and HASH
 * of PW_TAG_LEN. Returns 0 or KS_ECORRUPT.
 */
static int pw_phc_parse(struct pw_phc *phc, const char *s)
{
	size_t tag_len;

	if (pw_expect(&s, PW_PHC_PREFIX "m=") < 0 ||
	    pw_decimal(&s, &phc->params.m_kib) < 0 ||
	    pw_expect(&s, ",t=") < 0 || pw_decimal(&s, &phc->params.t) < 0 ||
	    pw_expect(&s, ",p=") < 0 || pw_decimal(&s, &phc->params.p) < 0 ||
	    pw_expect(&s, "$") < 0)
		return KS_ECORRUPT;
	if (pw_params_check(&phc->params, NULL, 0) < 0)
		return KS_ECORRUPT;
	if (pw_b64_decode(&s, phc->salt, PW_SALT_MIN, PW_SALT_MAX,
			  &phc->salt_len) < 0 ||
	    pw_expect(&s, "$") < 0 ||
	    pw_b64_decode(&s, phc->tag, PW_TAG_LEN, PW_TAG_LEN, &tag_len) < 0 ||
	    *s != '\0')
		return KS_ECORRUPT;
	return 0;
}

/*
 * Argon2's memory (m KiB per call) straight from the kernel and back:
 * through malloc() it would stay in the per-thread arenas after use, so
 * that a server whose many threads each verified once would keep m KiB
 * per arena resident (glibc raises its mmap threshold after the first
 * large free). libargon2 wipes the blocks before it frees them.
 */
static int pw_mem_alloc(uint8_t **memory, size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		*memory = NULL;
		return ARGON2_MEMORY_ALLOCATION_ERROR;
	}
	*memory = p;
	return ARGON2_OK;
}

static void pw_mem_free(uint8_t *memory, size_t bytes)
{
	if (memory)
		munmap(memory, bytes);
}

int pw_verify(const char *hash, const char *password, size_t len,
	      const struct pw_params *current, int *stale)
{
	unsigned char out[PW_TAG_LEN];
	struct pw_phc phc;
	argon2_context ctx;
	int rc;

	if (stale)
		*stale = 0;
	if (!hash || !current || (!password && len) ||
	    len > ARGON2_MAX_PWD_LENGTH)
		return KS_EINVAL;
	rc = pw_phc_parse(&phc, hash);
	if (rc < 0)
		goto out;

	memset(&ctx, 0, sizeof(ctx));
	ctx.out = out;
	ctx.outlen = PW_TAG_LEN;
	ctx.pwd = pw_unconst(password ? password : "");
	ctx.pwdlen = (uint32_t)len;
	ctx.salt = phc.salt;
	ctx.saltlen = (uint32_t)phc.salt_len;
	ctx.t_cost = phc.params.t;
	ctx.m_cost = phc.params.m_kib;
	ctx.lanes = phc.params.p;
	ctx.threads = phc.params.p;
	ctx.version = ARGON2_VERSION_13;
	ctx.flags = ARGON2_DEFAULT_FLAGS;
	ctx.allocate_cbk = pw_mem_alloc;
	ctx.free_cbk = pw_mem_free;
	rc = pw_argon2_code(argon2id_verify_ctx(&ctx, (const char *)phc.tag));
	/* A salt of another length than ours is a parameter too. */
	if (rc == 0 && stale)
		*stale = phc.params.m_kib != current->m_kib ||
			 phc.params.t != current->t ||
			 phc.params.p != current->p ||
			 phc.salt_len != PW_SALT_LEN;
	OPENSSL_cleanse(&ctx, sizeof(ctx));
out:
	OPENSSL_cleanse(out, sizeof(out));
	OPENSSL_cleanse(&phc, sizeof(phc));
	return rc;
}
