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
#include <time.h>

#include "http_internal.h"
#include "service.h"

#define HTTP_AUTH_PATH "/auth"
#define HTTP_JWKS_PATH "/.well-known/jwks.json"
#define HTTP_OIDC_PATH "/.well-known/openid-configuration"
#define HTTP_OAUTH_PATH "/.well-known/oauth-authorization-server"

/*
 * Copy at most cap - 1 bytes of in, printable ones only, for a log line.
 * Returns whether in was cut.
 */
static int http_sanitize(char *out, size_t cap, const char *in)
{
	size_t i;

	for (i = 0; i < cap - 1 && in[i]; i++)
		out[i] = isgraph((unsigned char)in[i]) ? in[i] : '?';
	out[i] = '\0';
	return in[i] != '\0';
}

/* Log one failed request: method, path (sanitized), status, reason. */
static void http_log_failure(const struct mg_connection *conn, int status,
			     const char *reason, const struct ks_err *e)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	char method[17], path[81];
	int cut;

	http_sanitize(method, sizeof(method),
		      ri->request_method ? ri->request_method : "?");
	cut = http_sanitize(path, sizeof(path),
			    ri->local_uri ? ri->local_uri : "");
	fprintf(stderr, "jwksd: %s '%s%s': %d %s%s%s\n", method, path,
		cut ? "..." : "", status, reason, e ? ": " : "",
		e ? e->text : "");
}

/* Whether a comma-separated header value holds token (any case). */
static int http_has_token(const char *value, const char *token)
{
	size_t n = strlen(token);

	while (value && *value) {
		value += strspn(value, " \t,");
		if (!strncasecmp(value, token, n) &&
		    (value[n] == '\0' || value[n] == ',' || value[n] == ' ' ||
		     value[n] == '\t'))
			return 1;
		value = strchr(value, ',');
	}
	return 0;
}

/* The connection data that marks a connection to close after this answer. */
static char http_close_mark;

void jwks_http_close_after(struct mg_connection *conn)
{
	mg_set_user_connection_data(conn, &http_close_mark);
	mg_disable_connection_keep_alive(conn);
}

/*
 * Whether the connection stays open after this answer (RFC 9112 9.3).
 * Refused requests close it: what follows them on the wire is in doubt.
 */
static int http_keep_alive(const struct mg_connection *conn, int status)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	const char *connection = mg_get_header(conn, "Connection");

	if ((status >= 400 && status != 404 && status != 405) ||
	    mg_get_user_connection_data(conn) == &http_close_mark)
		return 0;
	if (!ri->http_version || !ri->request_method)
		return 0;
	if (!strcmp(ri->http_version, "1.1"))
		return !http_has_token(connection, "close");
	return !strcmp(ri->http_version, "1.0") &&
	       http_has_token(connection, "keep-alive");
}

/*
 * The Date header's value for now (RFC 9110 5.6.7), formatted once per
 * second per thread.
 */
static void http_date(time_t now, char *out, size_t cap)
{
	static _Thread_local time_t cached_at = -1;
	static _Thread_local char cached[40];
	struct tm tm;

	if (now != cached_at) {
		gmtime_r(&now, &tm);
		if (!strftime(cached, sizeof(cached),
			      "%a, %d %b %Y %H:%M:%S GMT", &tm))
			cached[0] = '\0';
		cached_at = now;
	}
	snprintf(out, cap, "%s", cached);
}

/*
 * Send a complete response: status line, the common headers, the extra
 * ones given as name/value pairs (NULL-terminated), and body unless this
 * is a HEAD, in one write when it fits. Returns status, as a CivetWeb
 * handler does.
 */
static int http_send(struct mg_connection *conn, int status, const char *cache,
		     const char *const *extra, const char *body,
		     size_t body_len)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	int keep = http_keep_alive(conn, status);
	char buf[8192], date[40];
	time_t now = time(NULL);
	size_t len, cap = sizeof(buf);
	int n;

	http_date(now, date, sizeof(date));
	n = snprintf(buf, cap,
		     "HTTP/1.1 %d %s\r\n"
		     "Date: %s\r\n"
		     "Cache-Control: %s\r\n"
		     "X-Content-Type-Options: nosniff\r\n",
		     status, mg_get_response_code_text(conn, status), date,
		     cache);
	/* A 304 describes the cached answer: no length or type of its own. */
	if (status != 304 && n > 0 && (size_t)n < cap)
		n += snprintf(buf + n, cap - (size_t)n,
			      "Content-Type: application/json\r\n"
			      "Content-Length: %zu\r\n",
			      body_len);
	for (; n > 0 && (size_t)n < cap && extra && extra[0]; extra += 2)
		n += snprintf(buf + n, cap - (size_t)n, "%s: %s\r\n", extra[0],
			      extra[1]);
	if (n > 0 && (size_t)n < cap)
		n += snprintf(buf + n, cap - (size_t)n,
			      "Connection: %s\r\n\r\n",
			      keep ? "keep-alive" : "close");
	if (n <= 0 || (size_t)n >= cap)
		return -1;
	if (!keep)
		mg_disable_connection_keep_alive(conn);
	len = (size_t)n;
	if (ri->request_method && !strcmp(ri->request_method, "HEAD"))
		body_len = 0;
	if (body_len && body_len <= cap - len) {
		memcpy(buf + len, body, body_len);
		len += body_len;
		body_len = 0;
	}
	mg_write(conn, buf, len);
	if (body_len)
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

	if (!ri->local_uri || strcmp(ri->local_uri, path) != 0 ||
	    !ri->request_method) {
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
	case KS_EUNAVAIL:
	case KS_EBUSY:
	case KS_ENOSPC:
	case KS_EACCES:
	case KS_ECORRUPT:
		return http_error(conn, 503, "key store unavailable", NULL, e);
	default:
		return http_error(conn, 500, "internal error", NULL, e);
	}
}

int jwks_http__parse_expired(const char *query)
{
	char value[8];
	int n;

	if (!query)
		return 0;
	n = mg_get_var(query, strlen(query), "expired", value, sizeof(value));
	if (n == -1)
		return 0;
	/* A decoded NUL ("true%00") would end the comparison early. */
	if (n < 0 || strlen(value) != (size_t)n)
		return -1;
	if (!strcasecmp(value, "true") || !strcmp(value, "1"))
		return 1;
	if (!strcasecmp(value, "false") || !strcmp(value, "0"))
		return 0;
	return -1;
}

int jwks_http__parse_alg(const char *query, char *alg, size_t cap)
{
	int n;

	alg[0] = '\0';
	if (!query)
		return 0;
	n = mg_get_var(query, strlen(query), "alg", alg, cap);
	if (n == -1) {
		alg[0] = '\0';
		return 0;
	}
	/* Too long (-2), empty, or a decoded NUL ("ES256%00"). */
	if (n <= 0 || strlen(alg) != (size_t)n) {
		alg[0] = '\0';
		return -1;
	}
	return 1;
}

/*
 * POST /auth: a signed token. Any Authorization header and body.
 * ?alg=NAME picks one of the configured algorithms; anything else (none,
 * HS256, an unconfigured one, odd bytes) is refused, never echoed.
 */
static int http_auth(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"POST", NULL};
	struct jwks_issue_request req = JWKS_ISSUE_REQUEST_INIT;
	const char *query;
	char body[JWKS_TOKEN_MAX + 16], alg[16];
	struct ks_err e = {{0}};
	size_t len;
	int status, rc;

	if (!http_route(conn, HTTP_AUTH_PATH, methods, "POST", &status))
		return status;
	query = mg_get_request_info(conn)->query_string;
	req.expired = jwks_http__parse_expired(query);
	if (req.expired < 0)
		return http_error(conn, 400, "expired must be true or false",
				  NULL, NULL);
	rc = jwks_http__parse_alg(query, alg, sizeof(alg));
	if (rc < 0 || (rc > 0 && !jwks_service_has_alg(cbdata, alg)))
		return http_error(conn, 400, "algorithm not available", NULL,
				  NULL);
	req.alg = rc > 0 ? alg : NULL;
	memcpy(body, "{\"token\":\"", 10);
	rc = jwks_service_issue(cbdata, &req, body + 10, JWKS_TOKEN_MAX, &len,
				&e);
	if (rc)
		return http_service_error(conn, rc, &e);
	/* A JWT is base64url and dots: nothing in it needs JSON escaping. */
	memcpy(body + 10 + len, "\"}", 2);
	return http_send(conn, 200, "no-store", NULL, body, len + 12);
}

/* Whether an If-None-Match header names etag (weak comparison, or *). */
static int http_etag_matches(const char *inm, const char *etag)
{
	return strstr(inm, etag) || !strcmp(inm, "*");
}

/*
 * The JWKS with its validators. Without If-None-Match, If-Modified-Since
 * is compared exactly with Last-Modified, as nginx does by default: a
 * client sends back what it was given.
 */
static int http_jwks_write(const struct jwks_doc *doc, void *arg)
{
	struct mg_connection *conn = arg;
	const char *inm = mg_get_header(conn, "If-None-Match");
	const char *ims = mg_get_header(conn, "If-Modified-Since");
	char cache[48], modified[40];
	const char *extra[] = {"ETag", doc->etag, "Last-Modified", modified,
			       NULL};
	time_t t = (time_t)doc->last_modified;
	struct tm tm;

	if (!gmtime_r(&t, &tm) || !strftime(modified, sizeof(modified),
					    "%a, %d %b %Y %H:%M:%S GMT", &tm))
		extra[2] = NULL;
	snprintf(cache, sizeof(cache), "public, max-age=%lld",
		 (long long)doc->max_age);
	if (inm ? http_etag_matches(inm, doc->etag)
		: ims && extra[2] && !strcmp(ims, modified))
		return http_send(conn, 304, cache, extra, NULL, 0);
	return http_send(conn, 200, cache, extra, doc->body, doc->body_len);
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

/*
 * GET or HEAD of the discovery metadata (both paths, one document): 404
 * as for any unknown path when no issuer is configured.
 */
static int http_metadata(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"GET", "HEAD", NULL};
	const char *uri = mg_get_request_info(conn)->local_uri;
	int status;

	if (!http_route(conn,
			uri && !strcmp(uri, HTTP_OAUTH_PATH) ? HTTP_OAUTH_PATH
							     : HTTP_OIDC_PATH,
			methods, "GET, HEAD", &status))
		return status;
	status = jwks_service_metadata(cbdata, http_jwks_write, conn);
	if (status == KS_ENOTFOUND)
		return http_not_found(conn);
	if (status < 0)
		return http_service_error(conn, status, NULL);
	return status;
}

/* The routes decide for themselves: POST /auth is an open issuer. */
static int http_no_file_auth(struct mg_connection *conn, void *cbdata)
{
	(void)conn;
	(void)cbdata;
	return 1;
}

static int http_catch_all(struct mg_connection *conn, void *cbdata)
{
	(void)cbdata;
	return http_not_found(conn);
}

/* A fixed reason for a status CivetWeb or the screen below answers with. */
static const char *http_reason(int status)
{
	switch (status) {
	case 400:
		return "bad request";
	case 404:
		return "not found";
	case 405:
		return "method not allowed";
	case 408:
		return "request timeout";
	case 411:
		return "length required";
	case 413:
		return "request body too large";
	case 414:
		return "request URI too long";
	case 431:
		return "request headers too large";
	case 501:
		return "not implemented";
	case 505:
		return "HTTP version not supported";
	default:
		return status >= 500 ? "internal error" : "bad request";
	}
}

/* Answer with a JSON error (4xx other than 404/405 close the connection). */
static int http_refuse(struct mg_connection *conn, int status)
{
	return http_error(conn, status, http_reason(status), NULL, NULL);
}

/*
 * Whether the request's framing is unambiguous: at most one Content-Length,
 * and only digits in it (RFC 9110 8.6). CivetWeb reads "+6", "1e3", "0x10"
 * or "6, 7" as numbers, and picks the first of two headers; a proxy in
 * front may pick otherwise.
 */
static int http_length_is_sound(const struct mg_request_info *ri)
{
	int i, seen = 0;

	for (i = 0; i < ri->num_headers; i++) {
		const char *v = ri->http_headers[i].value;

		if (strcasecmp(ri->http_headers[i].name, "Content-Length"))
			continue;
		if (seen++ || !v || !*v || strspn(v, "0123456789") != strlen(v))
			return 0;
	}
	return 1;
}

int jwks_http_screen(struct mg_connection *conn, long long max_body)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	const char *te = mg_get_header(conn, "Transfer-Encoding");

	if (!http_length_is_sound(ri))
		return http_refuse(conn, 400);

	/*
	 * CivetWeb lets chunked win over Content-Length; behind a proxy that
	 * picks the other one, that is request smuggling (RFC 9112 6.3).
	 */
	if (te && (mg_get_header(conn, "Content-Length") ||
		   strcasecmp(te, "chunked") != 0))
		return http_refuse(conn, 400);
	if (ri->content_length > max_body)
		return http_refuse(conn, 413);
	if (ri->http_version && !strcmp(ri->http_version, "1.1") &&
	    !mg_get_header(conn, "Host"))
		return http_refuse(conn, 400);
	/* No route speaks another protocol: never switch. */
	if (mg_get_header(conn, "Upgrade"))
		return http_refuse(conn, 400);
	return 0;
}

int jwks_http_shutting_down(struct mg_connection *conn)
{
	static const char *const extra[] = {"Retry-After", "1", NULL};
	static const char body[] = "{\"error\":\"shutting down\"}";

	jwks_http_close_after(conn);
	return http_send(conn, 503, "no-store", extra, body, sizeof(body) - 1);
}

int jwks_http_error_page(struct mg_connection *conn, int status)
{
	http_refuse(conn, status);
	return 0;
}

static int http_doc_exists(const struct jwks_doc *doc, void *arg)
{
	(void)doc;
	(void)arg;
	return 0;
}

void jwks_http_register(struct mg_context *ctx, struct jwks_service *svc,
			int catch_all)
{
	mg_set_request_handler(ctx, HTTP_AUTH_PATH, http_auth, svc);
	mg_set_request_handler(ctx, HTTP_JWKS_PATH, http_jwks, svc);
	if (jwks_service_metadata(svc, http_doc_exists, NULL) == 0) {
		mg_set_request_handler(ctx, HTTP_OIDC_PATH, http_metadata, svc);
		mg_set_request_handler(ctx, HTTP_OAUTH_PATH, http_metadata,
				       svc);
	}
	if (catch_all) {
		mg_set_request_handler(ctx, "/", http_catch_all, NULL);
		/*
		 * Without an authorization handler CivetWeb looks for a
		 * .htpasswd file on every request, relative to the file
		 * system root when there is no document root: a file
		 * /.htpasswd would put every route behind Digest auth (401).
		 */
		mg_set_auth_handler(ctx, "/", http_no_file_auth, NULL);
	}
}
