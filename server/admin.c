/*
 * The admin listener's routes: see admin.h. Like http.c, they never touch
 * a store or OpenSSL: everything comes from the service's memory.
 */
#include <civetweb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "http_internal.h"
#include "jwks_http.h"
#include "service.h"
#include "signer.h"

/* The page, compiled in from server/timeline.html (cmake/embed.cmake). */
extern const char jwks_timeline_page[];
extern const size_t jwks_timeline_page_len;

static const char *const admin_get_head[] = {"GET", "HEAD", NULL};

/*
 * The page's policy: nothing but its own inline script and style (by
 * hash) and fetches of its own origin.
 */
static char admin_csp[512];

/*
 * The hash source of the text between open and close in the page:
 * 'sha256-...' into out. Returns 0, or KS_ECRYPTO when the element is
 * missing or cannot be hashed.
 */
static int admin_hash_element(const char *open, const char *close, char *out,
			      size_t cap)
{
	const char *start = strstr(jwks_timeline_page, open), *end;
	char b64[64];

	if (!start)
		return KS_ECRYPTO;
	start += strlen(open);
	end = strstr(start, close);
	if (!end || b64_sha256(start, (size_t)(end - start), b64, sizeof(b64)))
		return KS_ECRYPTO;
	snprintf(out, cap, "'sha256-%s'", b64);
	return 0;
}

static int admin_make_csp(void)
{
	char script[80], style[80];

	if (admin_hash_element("<script>", "</script>", script,
			       sizeof(script)) ||
	    admin_hash_element("<style>", "</style>", style, sizeof(style)))
		return KS_ECRYPTO;
	snprintf(admin_csp, sizeof(admin_csp),
		 "default-src 'none'; script-src %s; style-src %s; "
		 "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
		 "form-action 'none'; frame-ancestors 'none'",
		 script, style);
	return 0;
}

/* GET /metrics: the Prometheus text format, version 0.0.4. */
static int admin_metrics(struct mg_connection *conn, void *cbdata)
{
	static const char *const extra[] = {
		"Content-Type", "text/plain; version=0.0.4; charset=utf-8",
		NULL};
	const struct jwks_metrics_sources *m = cbdata;
	size_t len = 0;
	char *text;
	int status;

	jwks_http__set_route(JWKS_ROUTE_METRICS);
	if (!jwks_http__route(conn, "/metrics", admin_get_head, "GET, HEAD",
			      &status))
		return status;
	text = jwks_metrics_render(m, &len);
	if (!text)
		return jwks_http__error(conn, 500, "internal error", NULL);
	status = jwks_http__send(conn, 200, "no-store", extra, text, len);
	free(text);
	return status;
}

/* GET /keys.json: the schedule, public facts only. */
static int admin_keys(struct mg_connection *conn, void *cbdata)
{
	const struct jwks_metrics_sources *m = cbdata;
	size_t len = 0;
	char *text;
	int status;

	jwks_http__set_route(JWKS_ROUTE_KEYS);
	if (!jwks_http__route(conn, "/keys.json", admin_get_head, "GET, HEAD",
			      &status))
		return status;
	text = jwks_service_keys_json(m->svc, &len);
	if (!text)
		return jwks_http__error(conn, 500, "internal error", NULL);
	status = jwks_http__send(conn, 200, "no-store", NULL, text, len);
	free(text);
	return status;
}

/* GET /: the key timeline, one self-contained page. */
static int admin_timeline(struct mg_connection *conn, void *cbdata)
{
	const char *const extra[] = {"Content-Type",
				     "text/html; charset=utf-8",
				     "Content-Security-Policy",
				     admin_csp,
				     "X-Frame-Options",
				     "DENY",
				     "Referrer-Policy",
				     "no-referrer",
				     NULL};
	int status;

	(void)cbdata;
	jwks_http__set_route(JWKS_ROUTE_TIMELINE);
	if (!jwks_http__route(conn, "/", admin_get_head, "GET, HEAD", &status))
		return status;
	return jwks_http__send(conn, 200, "no-cache", extra, jwks_timeline_page,
			       jwks_timeline_page_len);
}

static int admin_no_file_auth(struct mg_connection *conn, void *cbdata)
{
	(void)conn;
	(void)cbdata;
	return 1;
}

int jwks_admin_register(struct mg_context *ctx,
			const struct jwks_metrics_sources *metrics)
{
	/* CivetWeb's callback data is not const; the handlers never write. */
	void *data = (void *)(uintptr_t)metrics;
	int rc = admin_make_csp();

	if (rc)
		return rc;
	/* "/" is CivetWeb's catch-all: the page answers only for "/". */
	mg_set_request_handler(ctx, "/", admin_timeline, NULL);
	mg_set_request_handler(ctx, "/metrics", admin_metrics, data);
	mg_set_request_handler(ctx, "/keys.json", admin_keys, data);
	/* No .htpasswd lookup: see jwks_http_register(). */
	mg_set_auth_handler(ctx, "/", admin_no_file_auth, NULL);
	return 0;
}
