/* TEMPORARY stand-in until the acct-pw branch lands: NOT Argon2. */
#include <stdio.h>
#include <string.h>

#include "password.h"
#include "signer.h"

int pw_params_parse(struct pw_params *out, const char *text, char *why,
		    size_t n)
{
	unsigned m, t, p;

	if (sscanf(text, "m=%u,t=%u,p=%u", &m, &t, &p) != 3) {
		snprintf(why, n, "want m=KIB,t=N,p=N");
		return KS_EINVAL;
	}
	out->m_kib = m;
	out->t = t;
	out->p = p;
	return 0;
}

int pw_generate(char out[PW_GENERATED_LEN + 1])
{
	unsigned char r[16];
	int i;

	if (signer_random(r, sizeof(r)))
		return KS_ECRYPTO;
	for (i = 0; i < 16; i++)
		sprintf(out + 2 * i, "%02x", r[i]);
	memcpy(out + 32, "abcd", 5);
	return 0;
}

int pw_hash(char out[PW_HASH_MAX], const struct pw_params *params,
	    const char *password, size_t len)
{
	(void)params;
	snprintf(out, PW_HASH_MAX, "$stub$%.*s", (int)(len > 100 ? 100 : len),
		 password);
	return 0;
}

int pw_verify(const char *hash, const char *password, size_t len,
	      const struct pw_params *current, int *stale)
{
	(void)current;
	if (stale)
		*stale = 0;
	return strncmp(hash, "$stub$", 6) || strlen(hash + 6) != len ||
			       memcmp(hash + 6, password, len)
		       ? KS_EBADSIG
		       : 0;
}
