/*
 * The query string of POST /auth, which any client controls:
 * jwks_http__parse_expired() and jwks_http__parse_alg() (CivetWeb's
 * mg_get_var() underneath) on any bytes. They must return -1, 0 or 1,
 * read nothing outside the string, and keep the contract of
 * server/http_internal.h.
 */
#include <ctype.h>
#include <string.h>

#include "fuzz.h"
#include "http_internal.h"

/*
 * Whether the query cannot name an "expired" parameter under any decoding:
 * no "expired" in any case, and no '%' that could spell one.
 */
static int query_lacks_expired(const char *query)
{
	static const char name[] = "expired";
	const char *p;
	size_t i;

	if (strchr(query, '%'))
		return 0;
	for (p = query; *p; p++) {
		for (i = 0; name[i] && tolower((unsigned char)p[i]) == name[i];
		     i++)
			;
		if (!name[i])
			return 0;
	}
	return 1;
}

/* The result for prefix followed by the input's bytes (up to a NUL). */
static int parse_with_prefix(const char *prefix, const char *query)
{
	size_t plen = strlen(prefix), qlen = strlen(query);
	char *buf = malloc(plen + qlen + 1);
	int rc;

	if (!buf)
		return -2;
	memcpy(buf, prefix, plen);
	memcpy(buf + plen, query, qlen + 1);
	rc = jwks_http__parse_expired(buf);
	free(buf);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *query = malloc(size + 1);
	char alg[16];
	int rc;

	if (!query)
		return 0;
	if (size)
		memcpy(query, data, size);
	query[size] = '\0';

	rc = jwks_http__parse_expired(query);
	FUZZ_CHECK(rc == -1 || rc == 0 || rc == 1);
	/* No such parameter gives 0. */
	if (query_lacks_expired(query))
		FUZZ_CHECK(rc == 0);
	/* The first "expired" parameter counts, whatever follows it. */
	FUZZ_CHECK(parse_with_prefix("expired=true&", query) == 1);
	FUZZ_CHECK(parse_with_prefix("expired=0&", query) == 0);

	/* alg: given, absent or refused; a given one is short and NUL-free. */
	rc = jwks_http__parse_alg(query, alg, sizeof(alg));
	FUZZ_CHECK(rc == -1 || rc == 0 || rc == 1);
	FUZZ_CHECK(rc == 1 ? alg[0] && strlen(alg) < sizeof(alg) : !alg[0]);

	free(query);
	return 0;
}
