/*
 * INTERNAL to server/ (and its fuzz targets): the request parsing of
 * http.c, split out so that it can be tested and fuzzed without a
 * connection.
 */
#ifndef JWKS_HTTP_INTERNAL_H
#define JWKS_HTTP_INTERNAL_H

#include <stddef.h>

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

/*
 * For the admin routes (admin.c): http.c's answer writers. A complete
 * answer with the common headers and extra name/value pairs (NULL-ended;
 * Content-Type is application/json unless extra sets one); a JSON error
 * with a fixed reason; whether the request is for exactly path with one
 * of methods (else *status is the 404 or 405 sent); the route a request is
 * counted under.
 */
struct mg_connection;
int jwks_http__send(struct mg_connection *conn, int status, const char *cache,
		    const char *const *extra, const char *body,
		    size_t body_len);
int jwks_http__error(struct mg_connection *conn, int status, const char *reason,
		     const char *allow);
int jwks_http__route(struct mg_connection *conn, const char *path,
		     const char *const *methods, const char *allow,
		     int *status);
void jwks_http__set_route(int route);

#endif /* JWKS_HTTP_INTERNAL_H */
