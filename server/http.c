/*
 * CivetWeb handlers: one small function per route. They parse the request,
 * call the service, map its errors to status codes and write the answer.
 * They never touch a store or OpenSSL.
 */
#include <civetweb.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "service.h"

#define HTTP_AUTH_PATH "/auth"
#define HTTP_JWKS_PATH "/.well-known/jwks.json"

/* Log one failed request: method, path (sanitized), status, reason. */
static void http_log_failure(const struct mg_connection *conn, int status,
			     const char *reason, const struct ks_err *e)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	const char *p = ri->local_uri ? ri->local_uri : "";
	char path[81];
	size_t i;

	for (i = 0; i < sizeof(path) - 1 && p[i]; i++)
		path[i] = isprint((unsigned char)p[i]) ? p[i] : '?';
	path[i] = '\0';
	fprintf(stderr, "jwksd: %.16s '%s%s': %d %s%s%s\n",
		ri->request_method ? ri->request_method : "?", path,
		p[i] ? "..." : "", status, reason, e ? ": " : "",
		e ? e->text : "");
}

/*
 * Send a complete response: the common headers, the extra ones given as
 * name/value pairs (NULL-terminated), and body unless this is a HEAD.
 * Returns status, as a CivetWeb handler does.
 */
static int http_send(struct mg_connection *conn, int status, const char *cache,
		     const char *const *extra, const char *body,
		     size_t body_len)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	char length[24];

	snprintf(length, sizeof(length), "%zu", body_len);
	mg_response_header_start(conn, status);
	mg_response_header_add(conn, "Content-Type", "application/json", -1);
	mg_response_header_add(conn, "Content-Length", length, -1);
	mg_response_header_add(conn, "Cache-Control", cache, -1);
	mg_response_header_add(conn, "X-Content-Type-Options", "nosniff", -1);
	for (; extra && extra[0]; extra += 2)
		mg_response_header_add(conn, extra[0], extra[1], -1);
	mg_response_header_send(conn);
	if (body_len && strcmp(ri->request_method, "HEAD") != 0)
		mg_write(conn, body, body_len);
	return status;
}

/*
 * A JSON error. reason is one of our own fixed messages, never request
 * bytes, paths or library text, so it needs no escaping.
 */
static int http_error(struct mg_connection *conn, int status,
		      const char *reason, const char *allow,
		      const struct ks_err *e)
{
	const char *extra[] = {"Allow", allow, NULL};
	char body[128];
	int n;

	http_log_failure(conn, status, reason, e);
	n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", reason);
	return http_send(conn, status, "no-store", allow ? extra : NULL, body,
			 (size_t)n);
}

static int http_not_found(struct mg_connection *conn)
{
	return http_error(conn, 404, "not found", NULL, NULL);
}

/* Whether the request is for exactly path with one of the allowed methods. */
static int http_route(struct mg_connection *conn, const char *path,
		      const char *const *methods, const char *allow,
		      int *status)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);

	if (!ri->local_uri || strcmp(ri->local_uri, path) != 0) {
		*status = http_not_found(conn);
		return 0;
	}
	for (; *methods; methods++)
		if (!strcmp(ri->request_method, *methods))
			return 1;
	*status = http_error(conn, 405, "method not allowed", allow, NULL);
	return 0;
}

/* Map a service error to a status and a fixed message. */
static int http_service_error(struct mg_connection *conn, int rc,
			      const struct ks_err *e)
{
	switch (rc) {
	case KS_ENOTFOUND:
		return http_error(conn, 404, "no expired key available", NULL,
				  e);
	case KS_ENOKEY:
		return http_error(conn, 503, "no signing key available", NULL,
				  e);
	case KS_EIO:
	case KS_EBUSY:
	case KS_ENOSPC:
	case KS_EACCES:
	case KS_ECORRUPT:
		return http_error(conn, 503, "key store unavailable", NULL, e);
	default:
		return http_error(conn, 500, "internal error", NULL, e);
	}
}

/*
 * ?expired=true|1 asks for an expired key, false|0 or no parameter for a
 * valid one. Returns 0 or 1, or -1 for any other value.
 */
static int http_expired_param(const struct mg_request_info *ri)
{
	const char *qs = ri->query_string;
	char value[8];
	int n;

	if (!qs)
		return 0;
	n = mg_get_var(qs, strlen(qs), "expired", value, sizeof(value));
	if (n == -1)
		return 0;
	if (n < 0)
		return -1;
	if (!strcasecmp(value, "true") || !strcmp(value, "1"))
		return 1;
	if (!strcasecmp(value, "false") || !strcmp(value, "0"))
		return 0;
	return -1;
}

/* POST /auth: a signed token. Any Authorization header and body. */
static int http_auth(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"POST", NULL};
	char body[JWKS_TOKEN_MAX + 16];
	struct ks_err e = {{0}};
	size_t len;
	int status, expired, rc;

	if (!http_route(conn, HTTP_AUTH_PATH, methods, "POST", &status))
		return status;
	expired = http_expired_param(mg_get_request_info(conn));
	if (expired < 0)
		return http_error(conn, 400, "expired must be true or false",
				  NULL, NULL);
	memcpy(body, "{\"token\":\"", 10);
	rc = jwks_service_issue(cbdata, expired, body + 10, JWKS_TOKEN_MAX,
				&len, &e);
	if (rc)
		return http_service_error(conn, rc, &e);
	/* A JWT is base64url and dots: nothing in it needs JSON escaping. */
	memcpy(body + 10 + len, "\"}", 2);
	return http_send(conn, 200, "no-store", NULL, body, len + 12);
}

/* Whether an If-None-Match header names etag (weak comparison, or *). */
static int http_etag_matches(const struct mg_connection *conn, const char *etag)
{
	const char *inm = mg_get_header(conn, "If-None-Match");

	return inm && (strstr(inm, etag) || !strcmp(inm, "*"));
}

static int http_jwks_write(const char *body, size_t body_len, const char *etag,
			   void *arg)
{
	struct mg_connection *conn = arg;
	const char *extra[] = {"ETag", etag, NULL};

	if (http_etag_matches(conn, etag))
		return http_send(conn, 304, "no-cache", extra, NULL, 0);
	return http_send(conn, 200, "no-cache", extra, body, body_len);
}

/* GET or HEAD /.well-known/jwks.json: the published key set. */
static int http_jwks(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"GET", "HEAD", NULL};
	int status;

	if (!http_route(conn, HTTP_JWKS_PATH, methods, "GET, HEAD", &status))
		return status;
	status = jwks_service_jwks(cbdata, http_jwks_write, conn);
	if (status < 0)
		return http_service_error(conn, status, NULL);
	return status;
}

static int http_catch_all(struct mg_connection *conn, void *cbdata)
{
	(void)cbdata;
	return http_not_found(conn);
}

void jwks_http_register(struct mg_context *ctx, struct jwks_service *svc,
			int catch_all)
{
	mg_set_request_handler(ctx, HTTP_AUTH_PATH, http_auth, svc);
	mg_set_request_handler(ctx, HTTP_JWKS_PATH, http_jwks, svc);
	if (catch_all)
		mg_set_request_handler(ctx, "/", http_catch_all, NULL);
}
