/*
 * Store errors as HTTP answers: jwksd's routes mounted on a CivetWeb
 * context over the fake store (ks_fake.c), which fails the one store call
 * a request makes with each code in turn. The answer must be the status
 * and fixed message http.c maps that code to, and the call must have been
 * made (the counters say so). No root, no broken disk.
 */
#define _DEFAULT_SOURCE

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "accounts.h"
#include "jwks_http.h"
#include "ks_fake.h"
#include "service.h"
#include "test.h"
#include "test_fs.h"

static int http_port;

/*
 * Send request on a new loopback connection and read the answer to EOF
 * into buf. Returns the status, or -1.
 */
static int http_exchange(const char *request, char *buf, size_t cap)
{
	struct sockaddr_in addr;
	size_t len = 0;
	ssize_t n;
	int fd, status = -1;

	buf[0] = '\0';
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16_t)http_port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    write(fd, request, strlen(request)) != (ssize_t)strlen(request)) {
		close(fd);
		return -1;
	}
	while (len < cap - 1 && (n = read(fd, buf + len, cap - 1 - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	close(fd);
	if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
		return -1;
	return status;
}

/* The answer's body (after the blank line), or "". */
static const char *http_body_of(const char *answer)
{
	const char *p = strstr(answer, "\r\n\r\n");

	return p ? p + 4 : "";
}

static int http_post(const char *path, const char *auth, const char *body,
		     char *buf, size_t cap)
{
	char req[1024];

	snprintf(req, sizeof(req),
		 "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s"
		 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
		 "Connection: close\r\n\r\n%s",
		 path, auth ? "Authorization: " : "", auth ? auth : "",
		 auth ? "\r\n" : "", strlen(body), body);
	return http_exchange(req, buf, cap);
}

/* One store error and what it must become. */
struct mapping {
	int rc;
	int status;
	const char *error;
};

/* Store errors every route maps alike (http_service_error). */
static const struct mapping common[] = {
	{KS_EIO, 503, "key store unavailable"},
	{KS_EBUSY, 503, "key store unavailable"},
	{KS_EUNAVAIL, 503, "key store unavailable"},
	{KS_ENOSPC, 503, "key store unavailable"},
	{KS_EACCES, 503, "key store unavailable"},
	{KS_ECORRUPT, 503, "key store unavailable"},
	{KS_ENOKEY, 503, "no signing key available"},
	{KS_ENOMEM, 500, "internal error"},
	{KS_ECRYPTO, 500, "internal error"},
};

/* Check answer against m: status and {"error":"..."}. */
static void check_answer(const char *what, int status, const char *answer,
			 const struct mapping *m)
{
	char want[96];

	snprintf(want, sizeof(want), "{\"error\":\"%s\"}", m->error);
	CHECK(status == m->status, "%s, %s: status %d, want %d: %.300s", what,
	      ks_err_name(m->rc), status, m->status, answer);
	CHECK(!strcmp(http_body_of(answer), want), "%s, %s: body '%s', want %s",
	      what, ks_err_name(m->rc), http_body_of(answer), want);
}

/* POST /auth with alice's credentials while user_get fails with m->rc. */
static void check_login(const char *basic, const struct mapping *m)
{
	char answer[4096];
	unsigned long before = ks_fake_calls(KS_FAKE_USER_GET);
	int status;

	ks_fake_fail(KS_FAKE_USER_GET, m->rc);
	status = http_post("/auth", basic, "", answer, sizeof(answer));
	ks_fake_fail(KS_FAKE_USER_GET, 0);
	CHECK(ks_fake_calls(KS_FAKE_USER_GET) == before + 1,
	      "login, %s: %lu user_get calls, want 1", ks_err_name(m->rc),
	      ks_fake_calls(KS_FAKE_USER_GET) - before);
	check_answer("POST /auth", status, answer, m);
}

/* POST /register while user_add fails with m->rc. */
static void check_register(int i, const struct mapping *m)
{
	char answer[4096], body[64];
	unsigned long before = ks_fake_calls(KS_FAKE_USER_ADD);
	int status;

	snprintf(body, sizeof(body), "{\"username\":\"user%d\"}", i);
	ks_fake_fail(KS_FAKE_USER_ADD, m->rc);
	status = http_post("/register", NULL, body, answer, sizeof(answer));
	ks_fake_fail(KS_FAKE_USER_ADD, 0);
	CHECK(ks_fake_calls(KS_FAKE_USER_ADD) == before + 1,
	      "register, %s: %lu user_add calls, want 1", ks_err_name(m->rc),
	      ks_fake_calls(KS_FAKE_USER_ADD) - before);
	check_answer("POST /register", status, answer, m);
	CHECK(!strstr(answer, "password"), "register, %s: %s",
	      ks_err_name(m->rc), answer);
}

/* alice registered for real: "Basic base64(alice:password)" into out. */
static int register_alice(char *out, size_t cap)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
		"tuvwxyz0123456789+/";
	char answer[4096], creds[128], password[64];
	const char *p;
	size_t i, n, o;
	int status;

	status = http_post("/register", NULL, "{\"username\":\"alice\"}",
			   answer, sizeof(answer));
	p = strstr(answer, "{\"password\":\"");
	CHECK(status == 201 && p, "register alice: %d %.300s", status, answer);
	if (status != 201 || !p ||
	    sscanf(p, "{\"password\":\"%63[^\"]", password) != 1)
		return -1;
	n = (size_t)snprintf(creds, sizeof(creds), "alice:%s", password);
	o = (size_t)snprintf(out, cap, "Basic ");
	for (i = 0; i < n && o + 5 < cap; i += 3) {
		unsigned v = (unsigned char)creds[i] << 16;

		v |= i + 1 < n ? (unsigned char)creds[i + 1] << 8 : 0;
		v |= i + 2 < n ? (unsigned char)creds[i + 2] : 0;
		out[o++] = b64[v >> 18 & 63];
		out[o++] = b64[v >> 12 & 63];
		out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = '\0';
	return 0;
}

int main(void)
{
	static const char *const algs[] = {"ES256", NULL};
	static const char *options[] = {"listening_ports", "127.0.0.1:0",
					"num_threads", "4", NULL};
	struct ks_options kopts = KS_OPTIONS_INIT;
	struct jwks_service_options sopts = JWKS_SERVICE_OPTIONS_INIT;
	struct jwks_accounts_options aopts = JWKS_ACCOUNTS_OPTIONS_INIT;
	static const struct mapping not_found = {KS_ENOTFOUND, 401,
						 "invalid credentials"};
	static const struct mapping exists = {KS_EEXISTS, 409,
					      "username or email taken"};
	struct jwks_http_routes routes = {0};
	struct mg_server_port ports[2];
	struct mg_callbacks callbacks;
	struct jwks_service *svc = NULL;
	struct jwks_accounts *acct = NULL;
	struct ks_store *store = NULL;
	struct mg_context *ctx;
	struct ks_err err = {""};
	char dir[] = "/tmp/jwks_http_errors.XXXXXX", path[256], basic[256];
	char answer[4096];
	unsigned long before;
	size_t i;
	int status;

	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(path, sizeof(path), "%s/store.db", dir);
	kopts.path = path;
	sopts.algs = algs;
	aopts.login_required = 1;
	aopts.auth_rate = 0;
	aopts.register_rate = 0;
	if (ks_open(&store, ks_fake_backend(), &kopts, &err) ||
	    jwks_service_new(&svc, store, &sopts, &err) ||
	    jwks_service_start(svc, NULL, &err) ||
	    jwks_accounts_new(&acct, store, &aopts, &err)) {
		fprintf(stderr, "setting up: %s\n", err.text);
		return 1;
	}
	mg_init_library(0);
	memset(&callbacks, 0, sizeof(callbacks));
	ctx = mg_start(&callbacks, NULL, options);
	if (!ctx || mg_get_server_ports(ctx, 2, ports) < 1) {
		fprintf(stderr, "mg_start failed\n");
		return 1;
	}
	http_port = ports[0].port;
	routes.svc = svc;
	routes.acct = acct;
	jwks_http_register(ctx, &routes, 1);

	if (register_alice(basic, sizeof(basic)) == 0) {
		/* The control: alice logs in while the store answers. */
		status = http_post("/auth", basic, "", answer, sizeof(answer));
		CHECK(status == 200 && strstr(answer, "{\"token\":\""),
		      "alice's login: %d %.300s", status, answer);
		for (i = 0; i < sizeof(common) / sizeof(common[0]); i++)
			check_login(basic, &common[i]);
		check_login(basic, &not_found);
	}
	for (i = 0; i < sizeof(common) / sizeof(common[0]); i++)
		check_register((int)i, &common[i]);
	check_register(99, &exists);

	/* The JWKS is served from memory: no store call, even a failing one. */
	before = ks_fake_calls(KS_FAKE_GET) + ks_fake_calls(KS_FAKE_USER_GET);
	ks_fake_fail(KS_FAKE_GET, KS_EIO);
	ks_fake_fail(KS_FAKE_LIST, KS_EIO);
	for (i = 0; i < 5; i++) {
		status = http_exchange("GET /.well-known/jwks.json HTTP/1.1\r\n"
				       "Host: 127.0.0.1\r\nConnection: close"
				       "\r\n\r\n",
				       answer, sizeof(answer));
		CHECK(status == 200 && strstr(answer, "{\"keys\":["),
		      "JWKS with a failing store: %d %.300s", status, answer);
	}
	CHECK(ks_fake_calls(KS_FAKE_GET) + ks_fake_calls(KS_FAKE_USER_GET) ==
		      before,
	      "GET of the JWKS called the store");
	ks_fake_fail(KS_FAKE_GET, 0);
	ks_fake_fail(KS_FAKE_LIST, 0);

	mg_stop(ctx);
	jwks_accounts_free(acct);
	jwks_service_free(svc);
	ks_close(store);
	CHECK(rm_rf(dir) == 0, "cannot remove '%s'", dir);
	mg_exit_library();
	return TEST_REPORT();
}
