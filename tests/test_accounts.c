/*
 * Accounts without HTTP: the sliding-window limiter (exact window, other
 * clients, a bounded table under a flood of addresses), the client address
 * behind trusted proxies, username and email rules, and registration,
 * login and the auth log on every compiled-in file store.
 */
#define _DEFAULT_SOURCE

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "accounts.h"
#include "keystore.h"
#include "ratelimit.h"
#include "test.h"
#include "test_fs.h"

static void quiet_log(void *arg, const char *line)
{
	(void)arg;
	(void)line;
}

static void test_sliding_window(void)
{
	struct rl_limiter *rl = NULL;
	unsigned retry = 0;
	int i, ok = 1;

	CHECK(rl_new(&rl, 10, 1000, 1 << 20) == 0 && rl, "limiter");
	if (!rl)
		return;
	/* Ten spread over one second pass. */
	for (i = 0; i < 10; i++)
		ok &= rl_check(rl, "1.2.3.4", 7, 10000 + i * 100, &retry);
	CHECK(ok, "10 requests 0.1 s apart pass");
	CHECK(!rl_check(rl, "1.2.3.4", 7, 10950, &retry),
	      "an 11th inside the window does not");
	CHECK_EQ_INT(retry, 1, "retry after the oldest leaves the window");
	CHECK(!rl_check(rl, "1.2.3.4", 7, 10999, &retry),
	      "still refused 1 ms before the oldest leaves");
	CHECK(rl_check(rl, "1.2.3.4", 7, 11000, &retry),
	      "allowed once the first request is a full window old");
	CHECK(!rl_check(rl, "1.2.3.4", 7, 11050, &retry),
	      "the refused ones did not count, the window did");
	CHECK(rl_check(rl, "5.6.7.8", 7, 11050, &retry),
	      "another client is not affected");
	rl_free(rl);

	CHECK(rl_new(&rl, 0, 1000, 1 << 20) == 0, "disabled limiter");
	for (i = 0, ok = 1; rl && i < 1000; i++)
		ok &= rl_check(rl, "1.2.3.4", 7, 5, NULL);
	CHECK(ok, "limit 0: everything passes");
	rl_free(rl);
	CHECK_EQ_INT(rl_new(&rl, RL_LIMIT_MAX + 1, 1000, 1 << 20), KS_EINVAL,
		     "limit too large");
}

/* A flood of distinct addresses never grows the table. */
static void test_flood(void)
{
	struct rl_limiter *rl = NULL;
	char addr[32];
	size_t before;
	int i, ok = 1;

	CHECK(rl_new(&rl, 10, 1000, 256 * 1024) == 0 && rl, "limiter");
	if (!rl)
		return;
	before = rl_memory(rl);
	CHECK(before <= 256 * 1024 + 64 * 1024, "within its budget: %zu",
	      before);
	for (i = 0; i < 100000; i++) {
		int n = snprintf(addr, sizeof(addr), "10.%d.%d.%d", i >> 16,
				 (i >> 8) & 255, i & 255);

		ok &= rl_check(rl, addr, (size_t)n, 1000 + i / 100, NULL);
	}
	CHECK(ok, "100,000 new clients each pass once");
	CHECK_EQ_INT(rl_memory(rl), before, "memory unchanged");
	/* A client that keeps coming stays limited through the flood. */
	for (i = 0; i < 10; i++)
		rl_check(rl, "192.0.2.1", 9, 5000, NULL);
	for (i = 0; i < 100; i++) {
		snprintf(addr, sizeof(addr), "172.16.0.%d", i);
		rl_check(rl, addr, strlen(addr), 5001, NULL);
	}
	CHECK(!rl_check(rl, "192.0.2.1", 9, 5002, NULL),
	      "a recent heavy client is not evicted by a few new ones");
	rl_free(rl);
}

static struct jwks_accounts *accounts_on(struct ks_store *store,
					 const char *const *proxies)
{
	struct jwks_accounts_options o = JWKS_ACCOUNTS_OPTIONS_INIT;
	struct jwks_accounts *a = NULL;

	o.trusted_proxies = proxies;
	o.log = quiet_log;
	o.log_wait_ms = 2000;
	if (jwks_accounts_new(&a, store, &o, NULL))
		return NULL;
	return a;
}

static void test_client_address(struct ks_store *store)
{
	static const char *const proxies[] = {"10.0.0.0/8", "::1/128",
					      "192.168.1.7", NULL};
	static const struct {
		const char *peer, *xff, *want;
	} cases[] = {
		{"203.0.113.9", "1.2.3.4", "203.0.113.9"},
		{"10.1.2.3", NULL, "10.1.2.3"},
		{"10.1.2.3", "1.2.3.4", "1.2.3.4"},
		{"10.1.2.3", " 1.2.3.4 , 10.9.9.9", "1.2.3.4"},
		{"10.1.2.3", "9.9.9.9, 1.2.3.4", "1.2.3.4"},
		{"10.1.2.3", "1.2.3.4, junk", "10.1.2.3"},
		{"10.1.2.3", "", "10.1.2.3"},
		{"::1", "2001:db8::5", "2001:db8::5"},
		{"192.168.1.7", "10.0.0.1, 192.168.1.7", "10.0.0.1"},
		{"192.168.1.8", "1.2.3.4", "192.168.1.8"},
		{"11.0.0.1", "1.2.3.4", "11.0.0.1"},
	};
	struct jwks_accounts *a = accounts_on(store, proxies);
	char out[64];
	size_t i;

	CHECK(a != NULL, "accounts with trusted proxies");
	if (!a)
		return;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		jwks_accounts_client(a, cases[i].peer, cases[i].xff, out,
				     sizeof(out));
		CHECK(!strcmp(out, cases[i].want),
		      "peer %s, X-Forwarded-For '%s': %s, want %s",
		      cases[i].peer, cases[i].xff ? cases[i].xff : "(none)",
		      out, cases[i].want);
	}
	jwks_accounts_free(a);
}

static void test_names(void)
{
	static const char *const good[] = {"a",
					   "alice",
					   "Zoë",
					   "user name",
					   "o'brien\"; DROP TABLE users;--",
					   "\xe2\x82\xac"};
	static const char *const bad[] = {"",
					  "tab\there",
					  "nl\n",
					  "del\x7f",
					  "c1\xc2\x85",
					  "bad\xff",
					  "\xc0\xaf" /* overlong */,
					  "\xed\xa0\x80" /* surrogate */};
	char long_name[66];
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		CHECK(jwks_accounts_valid_username(good[i]), "'%s' accepted",
		      good[i]);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(!jwks_accounts_valid_username(bad[i]),
		      "bad username %zu refused", i);
	memset(long_name, 'a', 65);
	long_name[65] = '\0';
	CHECK(!jwks_accounts_valid_username(long_name), "65 bytes refused");
	long_name[64] = '\0';
	CHECK(jwks_accounts_valid_username(long_name), "64 bytes accepted");
	CHECK(jwks_accounts_valid_email("a@b.example"), "email");
	CHECK(!jwks_accounts_valid_email("no-at"), "email without @");
	CHECK(!jwks_accounts_valid_email("a@b@c"), "two @");
	CHECK(!jwks_accounts_valid_email("a b@c"), "space");
	CHECK(!jwks_accounts_valid_email("@c"), "nothing before @");
}

struct log_rows {
	int n, ok, failed, unknown;
	int64_t last_user;
};

static int count_row(const struct ks_auth_log *e, void *arg)
{
	struct log_rows *r = arg;

	r->n++;
	r->ok += e->success;
	r->failed += !e->success;
	r->unknown += e->user_id == 0;
	r->last_user = e->user_id;
	return 0;
}

static void test_login(struct ks_store *store, const char *be)
{
	struct jwks_accounts *a = accounts_on(store, NULL);
	char pw[PW_GENERATED_LEN + 1], pw2[PW_GENERATED_LEN + 1];
	struct jwks_login who;
	struct log_rows rows = {0};
	struct ks_user u = {0};
	int64_t id = 0;

	CHECK(a != NULL, "[%s] accounts", be);
	if (!a)
		return;
	CHECK(jwks_accounts_register(a, "alice", "alice@example.org", pw, &id,
				     NULL) == 0 &&
		      id > 0 && strlen(pw) == PW_GENERATED_LEN,
	      "[%s] register", be);
	CHECK_EQ_INT(jwks_accounts_register(a, "alice", NULL, pw2, NULL, NULL),
		     KS_EEXISTS, "[%s] a taken username", be);
	CHECK(pw2[0] == '\0', "[%s] no password on failure", be);
	CHECK_EQ_INT(jwks_accounts_register(a, "bad\n", NULL, pw2, NULL, NULL),
		     KS_EINVAL, "[%s] a bad username", be);
	CHECK(ks_user_get(store, "alice", &u, NULL) == 0 &&
		      !strstr(u.password_hash, pw),
	      "[%s] the password is not stored in the clear", be);
	ks_user_release(&u);

	CHECK(jwks_accounts_login(a, "192.0.2.1", "alice", pw, strlen(pw), &who,
				  NULL) == 0 &&
		      who.user_id == id && !strcmp(who.username, "alice"),
	      "[%s] login", be);
	CHECK_EQ_INT(jwks_accounts_login(a, "192.0.2.1", "alice", "wrong", 5,
					 &who, NULL),
		     KS_EBADSIG, "[%s] wrong password", be);
	CHECK_EQ_INT(jwks_accounts_login(a, "192.0.2.2", "nobody", pw,
					 strlen(pw), &who, NULL),
		     KS_ENOTFOUND, "[%s] unknown user", be);
	CHECK(ks_user_set_locked(store, id, 1, NULL) == 0, "[%s] lock", be);
	CHECK_EQ_INT(jwks_accounts_login(a, "192.0.2.1", "alice", pw,
					 strlen(pw), &who, NULL),
		     KS_EBADSIG, "[%s] a locked user", be);
	CHECK(jwks_accounts_flush(a, 5000), "[%s] log written", be);
	CHECK(ks_auth_log_list(store, 0, count_row, &rows, NULL) == 0,
	      "[%s] list the log", be);
	CHECK(rows.n == 4 && rows.ok == 1 && rows.failed == 3 &&
		      rows.unknown == 1,
	      "[%s] every attempt logged: %d rows, %d ok, %d failed, %d "
	      "unknown",
	      be, rows.n, rows.ok, rows.failed, rows.unknown);
	CHECK(ks_user_get(store, "alice", &u, NULL) == 0 &&
		      u.last_login != KS_NEVER,
	      "[%s] last_login set", be);
	ks_user_release(&u);
	jwks_accounts_free(a);
}

int main(void)
{
	size_t i;

	test_sliding_window();
	test_flood();
	test_names();
	for (i = 0; ks_backends[i]; i++) {
		const struct ks_backend *be = ks_backends[i];
		struct ks_options o = KS_OPTIONS_INIT;
		struct ks_store *store = NULL;
		char dir[] = "/tmp/jwksd-acct-XXXXXX", path[64];

		if (!ks_backend_default_path(be)[0] || !mkdtemp(dir))
			continue;
		snprintf(path, sizeof(path), "%s/store", dir);
		o.path = path;
		if (ks_open(&store, be, &o, NULL)) {
			CHECK(0, "[%s] open", ks_backend_name(be));
			continue;
		}
		if (i == 0)
			test_client_address(store);
		test_login(store, ks_backend_name(be));
		ks_close(store);
		if (rm_rf(dir))
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return TEST_REPORT();
}
