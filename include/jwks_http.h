/*
 * jwksd's HTTP routes, for any program that runs CivetWeb: mount them on a
 * context with jwks_http_register(), and screen requests with the
 * callbacks below. The handlers call the service (include/service.h) and
 * the accounts (include/accounts.h); they never touch a store or OpenSSL.
 * examples/embed.c is a host program that mounts them beside its own
 * route.
 *
 * HTTP dates are formatted with strftime() in the C locale, which every
 * program has until it calls setlocale(): a host that changes LC_TIME
 * gets dates no HTTP client reads (RFC 9110 5.6.7).
 */
#ifndef JWKS_HTTP_H
#define JWKS_HTTP_H

#include <civetweb.h>
#include <stdint.h>

#include "service.h"

struct jwks_accounts;

/*
 * What jwks_http_register() mounts: the issuer, and its accounts (NULL:
 * an open issuer without /register, whose POST /auth takes any
 * Authorization header and body, as the assignment's does). Both are
 * borrowed and, like this struct, must outlive the context.
 */
struct jwks_http_routes {
	struct jwks_service *svc;
	struct jwks_accounts *acct;
	int64_t ready_max_stale_ms; /* /readyz's bound (0: 10 s) */
};

/*
 * Register jwksd's routes (POST /auth, GET/HEAD /.well-known/jwks.json,
 * with an issuer the two discovery documents, with accounts POST
 * /register, and the probes GET/HEAD /healthz and /readyz) on a running
 * CivetWeb context. With catch_all set, every
 * other path answers a JSON 404, and CivetWeb's per-directory .htpasswd
 * lookup is turned off (for a program that serves nothing else).
 */
void jwks_http_register(struct mg_context *ctx,
			const struct jwks_http_routes *routes, int catch_all);

/* The routes, as requests are counted and logged. */
enum jwks_http_route {
	JWKS_ROUTE_OTHER,
	JWKS_ROUTE_AUTH,
	JWKS_ROUTE_JWKS,
	JWKS_ROUTE_DISCOVERY,
	JWKS_ROUTE_REGISTER,
	JWKS_ROUTE_HEALTHZ,
	JWKS_ROUTE_READYZ,
	JWKS_ROUTE_METRICS,
	JWKS_ROUTE_KEYS,
	JWKS_ROUTE_TIMELINE,
	JWKS_ROUTES
};

/*
 * What the routes recorded about the request the calling thread answered
 * last: its route, the body bytes sent, and the kid that signed a token
 * (0: none). CivetWeb runs a request's handler and its end_request
 * callback on one worker thread, where this is read; reading clears it
 * and frees a request body jwks_http_screen read that no route took: call
 * it from end_request when the screen is used.
 */
struct jwks_http_note {
	int route;
	uint64_t bytes;
	int64_t kid;
};

void jwks_http_last_note(struct jwks_http_note *out);

/*
 * For CivetWeb's begin_request callback: refuse, before any route runs, a
 * request that no route should see, with a JSON error, closing the
 * connection: both Content-Length and Transfer-Encoding (or a coding other
 * than chunked), a declared body over max_body bytes (413, without reading
 * it), HTTP/1.1 without Host, more than one Host, a Host other than the
 * authority of an absolute-form target (400), any protocol upgrade. A
 * chunked body is read here, at most max_body bytes (more: 413, the rest
 * left unread), and kept for the route on this thread. Returns 0 to let
 * the request through, or the status sent.
 */
int jwks_http_screen(struct mg_connection *conn, long long max_body);

/*
 * For CivetWeb's http_error callback: CivetWeb's own errors (malformed
 * requests, oversized headers, bad Content-Length) answered as JSON, and
 * the connection closed. Returns 0 (handled).
 */
int jwks_http_error_page(struct mg_connection *conn, int status);

/*
 * Answer this connection's current request with "Connection: close" and
 * close it afterwards; for a server whose worker threads are all taken by
 * kept-alive connections, so that queued ones get a turn.
 */
void jwks_http_close_after(struct mg_connection *conn);

/*
 * For a server that is stopping: answer 503 {"error":"shutting down"} with
 * Retry-After and close the connection, so that the requests already in
 * flight can finish without new ones arriving behind them. Returns 503.
 */
int jwks_http_shutting_down(struct mg_connection *conn);

#endif /* JWKS_HTTP_H */
