/*
 * CivetWeb handlers: one small function per route. They parse the request,
 * call the service, map its errors to status codes and write the answer.
 * They never touch a store or OpenSSL.
 */
#define _DEFAULT_SOURCE /* explicit_bzero */

#include <civetweb.h>
#include <ctype.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "accounts.h"
#include "http_internal.h"
#include "jwks_http.h"
#include "service.h"
#include "signer.h"

#define HTTP_AUTH_PATH "/auth"
#define HTTP_JWKS_PATH "/.well-known/jwks.json"
#define HTTP_OIDC_PATH "/.well-known/openid-configuration"
#define HTTP_OAUTH_PATH "/.well-known/oauth-authorization-server"
#define HTTP_REGISTER_PATH "/register"
#define HTTP_HEALTHZ_PATH "/healthz"
#define HTTP_READYZ_PATH "/readyz"

/* What this worker thread's current request did: see jwks_http_note. */
static _Thread_local struct jwks_http_note http_note;

/*
 * A chunked body read by the screen, for the route (see http_read_body);
 * freed at the end of the request (jwks_http_last_note) or the next screen.
 * Thread-local: CivetWeb runs begin_request, the handler and end_request
 * of a request on one worker thread.
 */
static _Thread_local struct {
	char *buf;
	size_t len;
	int held;
} http_body;

static void http_body_drop(void)
{
	free(http_body.buf);
	memset(&http_body, 0, sizeof(http_body));
}

void jwks_http_last_note(struct jwks_http_note *out)
{
	*out = http_note;
	memset(&http_note, 0, sizeof(http_note));
	http_body_drop();
}

void jwks_http__set_route(int route)
{
	http_note.route = route;
}

/* The largest request body a route reads (JSON credentials, a user). */
#define HTTP_BODY_MAX (64 * 1024)

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
		/*
		 * %a and %b are English only in the C locale, which jwksd never
		 * leaves (it calls no setlocale()); a host program that does
		 * must keep LC_TIME at "C".
		 */
		if (!strftime(cached, sizeof(cached),
			      "%a, %d %b %Y %H:%M:%S GMT", &tm))
			cached[0] = '\0';
		cached_at = now;
	}
	snprintf(out, cap, "%s", cached);
}

/* Whether the name/value pairs of extra (NULL-ended) set name. */
static int http_has_header(const char *const *extra, const char *name)
{
	for (; extra && extra[0]; extra += 2)
		if (!strcasecmp(extra[0], name))
			return 1;
	return 0;
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
			      "%sContent-Length: %zu\r\n",
			      http_has_header(extra, "Content-Type")
				      ? ""
				      : "Content-Type: application/json\r\n",
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
	http_note.bytes = body_len;
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

int jwks_http__send(struct mg_connection *conn, int status, const char *cache,
		    const char *const *extra, const char *body, size_t body_len)
{
	return http_send(conn, status, cache, extra, body, body_len);
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

int jwks_http__error(struct mg_connection *conn, int status, const char *reason,
		     const char *allow)
{
	return http_error(conn, status, reason, allow, NULL);
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

int jwks_http__route(struct mg_connection *conn, const char *path,
		     const char *const *methods, const char *allow, int *status)
{
	return http_route(conn, path, methods, allow, status);
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
 * Read the request body, up to HTTP_BODY_MAX bytes, into *out (the
 * caller frees it; NUL-terminated). Returns its length, or -1 when it is
 * larger (what was read is dropped; CivetWeb discards the rest) or cannot
 * be read.
 */
static long http_read_body(struct mg_connection *conn, char **out)
{
	long long declared = mg_get_request_info(conn)->content_length;
	size_t len = 0, cap = 1024;
	char *buf, *grown, extra;
	int n, ok = 1;

	*out = NULL;
	/* A chunked body the screen read already. */
	if (http_body.held) {
		if (http_body.len > HTTP_BODY_MAX) {
			http_body_drop();
			return -1;
		}
		*out = http_body.buf;
		len = http_body.len;
		memset(&http_body, 0, sizeof(http_body));
		return (long)len;
	}
	buf = malloc(cap + 1);
	if (!buf)
		return -1;
	for (;;) {
		if (len == cap && cap == HTTP_BODY_MAX) {
			/* Full: one byte more means too large. */
			ok = mg_read(conn, &extra, 1) <= 0;
			break;
		}
		if (len == cap) {
			cap = cap * 4 > HTTP_BODY_MAX ? HTTP_BODY_MAX : cap * 4;
			grown = realloc(buf, cap + 1);
			if (!grown) {
				ok = 0;
				break;
			}
			buf = grown;
		}
		n = mg_read(conn, buf + len, cap - len);
		if (n <= 0)
			break;
		len += (size_t)n;
		/*
		 * A short read of a declared body means CivetWeb waited the
		 * request timeout for the rest: the client stalled.
		 */
		if ((size_t)n < cap - len + (size_t)n && declared > 0 &&
		    (long long)len < declared) {
			ok = 0;
			break;
		}
	}
	if (!ok) {
		free(buf);
		return -1;
	}
	buf[len] = '\0';
	*out = buf;
	return (long)len;
}

/* JSON nested deeper than this is refused before jansson sees it. */
#define HTTP_JSON_DEPTH_MAX 32

/*
 * Whether body nests arrays and objects at most HTTP_JSON_DEPTH_MAX deep:
 * jansson parses recursively, and a CivetWeb worker's stack is small.
 */
static int http_json_shallow(const char *body, size_t len)
{
	int depth = 0, in_string = 0;
	size_t i;

	for (i = 0; i < len; i++) {
		char ch = body[i];

		if (in_string) {
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_string = 0;
		} else if (ch == '"') {
			in_string = 1;
		} else if (ch == '[' || ch == '{') {
			if (++depth > HTTP_JSON_DEPTH_MAX)
				return 0;
		} else if (ch == ']' || ch == '}') {
			depth--;
		}
	}
	return 1;
}

/* Credentials of a request: from HTTP Basic, or a JSON body. */
struct http_creds {
	char username[256];
	char password[1024];
	size_t password_len;
};

/*
 * Basic credentials (RFC 7617) from the Authorization header: 1 found,
 * 0 none (another scheme, or none at all), -1 malformed.
 */
static int http_basic_creds(struct mg_connection *conn, struct http_creds *c)
{
	const char *h = mg_get_header(conn, "Authorization");
	unsigned char decoded[(sizeof(c->username) + sizeof(c->password)) + 4];
	const unsigned char *colon;
	size_t len = 0, ulen;

	if (!h || strncasecmp(h, "Basic ", 6))
		return 0;
	h += 6;
	h += strspn(h, " ");
	if (strlen(h) > sizeof(decoded) / 3 * 4 ||
	    b64_decode(decoded, &len, h, strlen(h)))
		return -1;
	colon = memchr(decoded, ':', len);
	if (!colon)
		return -1;
	ulen = (size_t)(colon - decoded);
	if (ulen >= sizeof(c->username) || memchr(decoded, '\0', ulen) ||
	    len - ulen - 1 >= sizeof(c->password))
		return -1;
	memcpy(c->username, decoded, ulen);
	c->username[ulen] = '\0';
	c->password_len = len - ulen - 1;
	memcpy(c->password, colon + 1, c->password_len);
	c->password[c->password_len] = '\0';
	explicit_bzero(decoded, sizeof(decoded));
	return 1;
}

/*
 * JSON credentials {"username": "...", "password": "..."} in body: 1
 * found, 0 not (any other body: the open issuer takes any).
 */
static int http_json_creds(const char *body, size_t len, struct http_creds *c)
{
	json_t *root =
		http_json_shallow(body, len)
			? json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL)
			: NULL;
	json_t *u = json_object_get(root, "username");
	json_t *p = json_object_get(root, "password");
	int found = 0;

	if (json_is_object(root) && json_is_string(u) && json_is_string(p) &&
	    json_string_length(u) < sizeof(c->username) &&
	    strlen(json_string_value(u)) == json_string_length(u) &&
	    json_string_length(p) < sizeof(c->password)) {
		snprintf(c->username, sizeof(c->username), "%s",
			 json_string_value(u));
		c->password_len = json_string_length(p);
		memcpy(c->password, json_string_value(p), c->password_len);
		c->password[c->password_len] = '\0';
		found = 1;
	}
	json_decref(root);
	return found;
}

/* 401 with the challenge of RFC 7617. */
static int http_unauthorized(struct mg_connection *conn, const char *reason)
{
	static const char *const extra[] = {"WWW-Authenticate",
					    "Basic realm=\"jwksd\"", NULL};
	char body[96];
	int n;

	http_log_failure(conn, 401, reason, NULL);
	n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", reason);
	return http_send(conn, 401, "no-store", extra, body, (size_t)n);
}

/* 429 with Retry-After, before any other work. */
static int http_too_many(struct mg_connection *conn, unsigned retry_after)
{
	static const char body[] = "{\"error\":\"too many requests\"}";
	const char *extra[] = {"Retry-After", NULL, NULL};
	char secs[16];

	snprintf(secs, sizeof(secs), "%u", retry_after ? retry_after : 1);
	extra[1] = secs;
	return http_send(conn, 429, "no-store", extra, body, sizeof(body) - 1);
}

/* The client's address for limits and the auth log. */
static void http_client(struct mg_connection *conn,
			const struct jwks_accounts *acct, char *out, size_t cap)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);

	jwks_accounts_client(acct, ri->remote_addr,
			     mg_get_header(conn, "X-Forwarded-For"), out, cap);
}

/*
 * With accounts: the rate limit, then credentials. Returns 0 to issue
 * (req->sub set for a valid login), or the status already sent.
 */
static int http_auth_login(struct mg_connection *conn,
			   struct jwks_accounts *acct,
			   struct jwks_issue_request *req,
			   struct jwks_login *who, struct http_creds *c)
{
	struct ks_err e = {{0}};
	char client[64], *body = NULL;
	unsigned retry = 0;
	long len;
	int found, rc;

	http_client(conn, acct, client, sizeof(client));
	if (!jwks_accounts_rate(acct, JWKS_RATE_AUTH, client, &retry))
		return http_too_many(conn, retry);
	found = http_basic_creds(conn, c);
	/* Most requests of an open issuer have no body: read none. */
	if (found == 0 && (mg_get_request_info(conn)->content_length > 0 ||
			   mg_get_header(conn, "Transfer-Encoding"))) {
		/* A body too large to hold credentials holds none. */
		len = http_read_body(conn, &body);
		found = len < 0 ? 0 : http_json_creds(body, (size_t)len, c);
		free(body);
	}
	if (found <= 0)
		return jwks_accounts_login_required(acct)
			       ? http_unauthorized(conn, "credentials required")
			       : 0;
	rc = jwks_accounts_login(acct, client, c->username, c->password,
				 c->password_len, who, &e);
	if (rc == 0) {
		req->sub = who->sub;
		req->preferred_username = who->username;
		return 0;
	}
	if (rc == KS_ENOTFOUND && !jwks_accounts_login_required(acct))
		return 0;
	if (rc == KS_ENOTFOUND || rc == KS_EBADSIG)
		return http_unauthorized(conn, "invalid credentials");
	return http_service_error(conn, rc, &e);
}

/*
 * POST /auth: a signed token. ?alg=NAME picks one of the configured
 * algorithms; anything else (none, HS256, an unconfigured one, odd bytes)
 * is refused, never echoed. Without accounts any Authorization header and
 * body is taken; with them, credentials (Basic or JSON) are checked and a
 * valid login gets sub and preferred_username.
 */
static int http_auth(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"POST", NULL};
	const struct jwks_http_routes *r = cbdata;
	struct jwks_issue_request req = JWKS_ISSUE_REQUEST_INIT;
	struct jwks_login who;
	struct http_creds creds;
	const char *query;
	char body[JWKS_TOKEN_MAX + 16], alg[16];
	struct ks_err e = {{0}};
	size_t len;
	int status, rc;

	http_note.route = JWKS_ROUTE_AUTH;
	if (!http_route(conn, HTTP_AUTH_PATH, methods, "POST", &status))
		return status;
	query = mg_get_request_info(conn)->query_string;
	req.expired = jwks_http__parse_expired(query);
	if (req.expired < 0)
		return http_error(conn, 400, "expired must be true or false",
				  NULL, NULL);
	rc = jwks_http__parse_alg(query, alg, sizeof(alg));
	if (rc < 0 || (rc > 0 && !jwks_service_has_alg(r->svc, alg)))
		return http_error(conn, 400, "algorithm not available", NULL,
				  NULL);
	req.alg = rc > 0 ? alg : NULL;
	req.kid_out = &http_note.kid;
	if (r->acct) {
		status = http_auth_login(conn, r->acct, &req, &who, &creds);
		explicit_bzero(&creds, sizeof(creds));
		if (status)
			return status;
	}
	memcpy(body, "{\"token\":\"", 10);
	rc = jwks_service_issue(r->svc, &req, body + 10, JWKS_TOKEN_MAX, &len,
				&e);
	if (rc)
		return http_service_error(conn, rc, &e);
	/* A JWT is base64url and dots: nothing in it needs JSON escaping. */
	memcpy(body + 10 + len, "\"}", 2);
	return http_send(conn, 200, "no-store", NULL, body, len + 12);
}

/*
 * The body of POST /register: a JSON object with "username" (a string)
 * and optionally "email" (a string, or null), nothing else. Returns NULL
 * and the fixed reason for a 400.
 */
static const char *http_parse_user(const char *body, size_t len,
				   const char **username, const char **email,
				   json_t **root_out)
{
	json_t *root;
	const char *name;
	json_t *v;

	*username = *email = NULL;
	*root_out = NULL;
	if (!http_json_shallow(body, len))
		return "JSON nested too deep";
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	*root_out = root;
	if (!json_is_object(root))
		return "body must be a JSON object";
	json_object_foreach(root, name, v)
	{
		if (!strcmp(name, "username")) {
			if (!json_is_string(v))
				return "username must be a string";
			*username = json_string_value(v);
			if (strlen(*username) != json_string_length(v))
				return "invalid username";
		} else if (!strcmp(name, "email")) {
			if (json_is_null(v))
				continue;
			if (!json_is_string(v))
				return "email must be a string";
			*email = json_string_value(v);
			if (strlen(*email) != json_string_length(v))
				return "invalid email";
		} else {
			return "unknown member";
		}
	}
	if (!*username)
		return "username required";
	if (!jwks_accounts_valid_username(*username))
		return "invalid username";
	if (*email && !jwks_accounts_valid_email(*email))
		return "invalid email";
	return NULL;
}

/* POST /register: a new user with a generated password, shown once. */
static int http_register(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"POST", NULL};
	const struct jwks_http_routes *r = cbdata;
	const char *username, *email, *why;
	char client[64], password[PW_GENERATED_LEN + 1], out[64], *body = NULL;
	struct ks_err e = {{0}};
	json_t *root = NULL;
	unsigned retry = 0;
	long len;
	int status, rc;

	http_note.route = JWKS_ROUTE_REGISTER;
	if (!http_route(conn, HTTP_REGISTER_PATH, methods, "POST", &status))
		return status;
	http_client(conn, r->acct, client, sizeof(client));
	if (!jwks_accounts_rate(r->acct, JWKS_RATE_REGISTER, client, &retry))
		return http_too_many(conn, retry);
	len = http_read_body(conn, &body);
	if (len < 0)
		return http_error(conn, 413, "request body too large", NULL,
				  NULL);
	why = http_parse_user(body, (size_t)len, &username, &email, &root);
	if (why) {
		status = http_error(conn, 400, why, NULL, NULL);
	} else {
		rc = jwks_accounts_register(r->acct, username, email, password,
					    NULL, &e);
		if (rc == KS_EEXISTS)
			status = http_error(
				conn, 409, "username or email taken", NULL, &e);
		else if (rc == KS_EINVAL)
			status =
				http_error(conn, 400, "invalid user", NULL, &e);
		else if (rc)
			status = http_service_error(conn, rc, &e);
		else {
			snprintf(out, sizeof(out), "{\"password\":\"%s\"}",
				 password);
			status = http_send(conn, 201, "no-store", NULL, out,
					   strlen(out));
		}
	}
	explicit_bzero(password, sizeof(password));
	json_decref(root);
	free(body);
	return status;
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

	/* The C locale's day and month names, as in http_date. */
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

	http_note.route = JWKS_ROUTE_JWKS;
	if (!http_route(conn, HTTP_JWKS_PATH, methods, "GET, HEAD", &status))
		return status;
	status = jwks_service_jwks(
		((const struct jwks_http_routes *)cbdata)->svc, http_jwks_write,
		conn);
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

	http_note.route = JWKS_ROUTE_DISCOVERY;
	if (!http_route(conn,
			uri && !strcmp(uri, HTTP_OAUTH_PATH) ? HTTP_OAUTH_PATH
							     : HTTP_OIDC_PATH,
			methods, "GET, HEAD", &status))
		return status;
	status = jwks_service_metadata(
		((const struct jwks_http_routes *)cbdata)->svc, http_jwks_write,
		conn);
	if (status == KS_ENOTFOUND)
		return http_not_found(conn);
	if (status < 0)
		return http_service_error(conn, status, NULL);
	return status;
}

/* GET or HEAD /healthz: the process serves. No store, no keys. */
static int http_healthz(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"GET", "HEAD", NULL};
	static const char body[] = "{\"status\":\"ok\"}";
	int status;

	(void)cbdata;
	http_note.route = JWKS_ROUTE_HEALTHZ;
	if (!http_route(conn, HTTP_HEALTHZ_PATH, methods, "GET, HEAD", &status))
		return status;
	return http_send(conn, 200, "no-store", NULL, body, sizeof(body) - 1);
}

/*
 * GET or HEAD /readyz: 200 when every algorithm can sign and the store
 * answered recently, else 503 with the reason (from memory: a probe never
 * waits on the store).
 */
static int http_readyz(struct mg_connection *conn, void *cbdata)
{
	static const char *const methods[] = {"GET", "HEAD", NULL};
	const struct jwks_http_routes *r = cbdata;
	const char *why;
	char body[96];
	int status, n;

	http_note.route = JWKS_ROUTE_READYZ;
	if (!http_route(conn, HTTP_READYZ_PATH, methods, "GET, HEAD", &status))
		return status;
	if (jwks_service_ready(r->svc,
			       r->ready_max_stale_ms > 0 ? r->ready_max_stale_ms
							 : 10000,
			       &why)) {
		n = snprintf(body, sizeof(body), "{\"status\":\"ready\"}");
		return http_send(conn, 200, "no-store", NULL, body, (size_t)n);
	}
	/* why is one of the service's fixed reasons. */
	n = snprintf(body, sizeof(body),
		     "{\"status\":\"not ready\",\"reason\":\"%s\"}", why);
	return http_send(conn, 503, "no-store", NULL, body, (size_t)n);
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

/*
 * Whether the request names one host (RFC 9112 3.2): at most one Host
 * header and, for an absolute-form target ("GET http://a:1/b"), a Host
 * equal to its authority (case aside, the port as given). CivetWeb 1.15
 * passes an absolute-form target in request_uri whole and its path in
 * local_uri; it lets through only targets whose host is its
 * authentication_domain (or below it) with the listener's port, and
 * closes the connection unanswered on any other before begin_request.
 */
static int http_host_is_sound(const struct mg_request_info *ri)
{
	const char *host = NULL, *target = ri->request_uri, *auth, *end;
	int i;

	for (i = 0; i < ri->num_headers; i++) {
		if (strcasecmp(ri->http_headers[i].name, "Host"))
			continue;
		if (host)
			return 0;
		host = ri->http_headers[i].value ? ri->http_headers[i].value
						 : "";
	}
	if (!target || target[0] == '/' || !strcmp(target, "*"))
		return 1;
	auth = strstr(target, "://");
	if (!auth)
		return 0;
	auth += 3;
	end = auth + strcspn(auth, "/?#");
	return host && strlen(host) == (size_t)(end - auth) &&
	       !strncasecmp(host, auth, (size_t)(end - auth));
}

/*
 * Read a chunked body of at most max_body bytes into http_body. Returns 0,
 * 413 when it is larger (the rest is left unread: the connection closes),
 * or 400 when it cannot be read (malformed chunks, a stalled client).
 */
static int http_screen_chunked(struct mg_connection *conn, long long max_body)
{
	size_t cap = 0, limit = max_body > 0 ? (size_t)max_body : 0;
	char *grown;
	int n;

	for (;;) {
		if (http_body.len == cap) {
			if (cap > limit)
				return 413;
			cap = cap ? cap * 4 : 1024;
			if (cap > limit + 1)
				cap = limit + 1;
			grown = realloc(http_body.buf, cap + 1);
			if (!grown)
				return 503;
			http_body.buf = grown;
		}
		n = mg_read(conn, http_body.buf + http_body.len,
			    cap - http_body.len);
		if (n < 0)
			return 400;
		if (n == 0)
			break;
		http_body.len += (size_t)n;
	}
	if (http_body.len > limit)
		return 413;
	http_body.buf[http_body.len] = '\0';
	http_body.held = 1;
	return 0;
}

int jwks_http_screen(struct mg_connection *conn, long long max_body)
{
	const struct mg_request_info *ri = mg_get_request_info(conn);
	const char *te = mg_get_header(conn, "Transfer-Encoding");
	int status;

	http_body_drop();
	if (!http_length_is_sound(ri) || !http_host_is_sound(ri))
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
	/*
	 * A chunked body counts against max_body as a declared one. Read here,
	 * for every route: CivetWeb would otherwise discard the body of a
	 * route that does not read it, however long it goes on, before the
	 * next request.
	 */
	if (te) {
		status = http_screen_chunked(conn, max_body);
		if (status) {
			http_body_drop();
			jwks_http_close_after(conn);
			return http_refuse(conn, status);
		}
	}
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

void jwks_http_register(struct mg_context *ctx,
			const struct jwks_http_routes *routes, int catch_all)
{
	/* CivetWeb's callback data is not const; the handlers never write. */
	void *data = (void *)(uintptr_t)routes;

	mg_set_request_handler(ctx, HTTP_AUTH_PATH, http_auth, data);
	mg_set_request_handler(ctx, HTTP_JWKS_PATH, http_jwks, data);
	if (jwks_service_metadata(routes->svc, http_doc_exists, NULL) == 0) {
		mg_set_request_handler(ctx, HTTP_OIDC_PATH, http_metadata,
				       data);
		mg_set_request_handler(ctx, HTTP_OAUTH_PATH, http_metadata,
				       data);
	}
	if (routes->acct)
		mg_set_request_handler(ctx, HTTP_REGISTER_PATH, http_register,
				       data);
	mg_set_request_handler(ctx, HTTP_HEALTHZ_PATH, http_healthz, data);
	mg_set_request_handler(ctx, HTTP_READYZ_PATH, http_readyz, data);
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
