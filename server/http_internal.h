/*
 * INTERNAL to server/ (and its fuzz targets): the request parsing of
 * http.c, split out so that it can be tested and fuzzed without a
 * connection.
 */
#ifndef JWKS_HTTP_INTERNAL_H
#define JWKS_HTTP_INTERNAL_H

/*
 * The expired parameter of a query string (without the '?', may be NULL):
 * "expired=true" or "expired=1" gives 1; "false", "0" or no such parameter
 * gives 0; any other value (or one too long to be valid) gives -1. The
 * value is URL-decoded first; the first "expired" parameter counts.
 */
int jwks_http__parse_expired(const char *query);

/*
 * The alg parameter of a query string into alg (capacity cap): 1 when
 * given, 0 when absent, -1 when empty, too long or holding a NUL.
 */
int jwks_http__parse_alg(const char *query, char *alg, size_t cap);

#endif /* JWKS_HTTP_INTERNAL_H */
