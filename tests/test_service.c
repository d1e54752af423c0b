/*
 * The service under a controlled clock, on every compiled-in backend: key
 * creation on an empty store, token claims, expiry boundaries, key top-up,
 * the expired-key path (extreme and undecodable rows). Tokens are checked
 * against the stored key with the signer; PyJWT checks them independently
 * in the integration suites.
 */
#define _DEFAULT_SOURCE

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keystore.h"
#include "service.h"
#include "signer.h"
#include "test.h"
#include "test_fs.h"

static _Atomic int64_t fake_now;

static int64_t fake_clock(void *arg)
{
	(void)arg;
	return atomic_load(&fake_now);
}

static void quiet_log(void *arg, const char *line)
{
	(void)arg;
	(void)line;
}

struct fixture {
	const char *be_name;
	char dir[64];
	char path[96];
	struct ks_store *store;
	struct jwks_service *svc;
};

static int fixture_open(struct fixture *f, const struct ks_backend *be)
{
	struct ks_options opts = KS_OPTIONS_INIT;

	memset(f, 0, sizeof(*f));
	f->be_name = ks_backend_name(be);
	snprintf(f->dir, sizeof(f->dir), "/tmp/jwksd-svc-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->path, sizeof(f->path), "%s/store", f->dir);
	opts.path = f->path;
	return ks_open(&f->store, be, &opts, NULL);
}

static int fixture_start(struct fixture *f, int64_t token_ttl, int64_t key_ttl)
{
	struct jwks_service_options o = JWKS_SERVICE_OPTIONS_INIT;

	o.token_ttl = token_ttl;
	o.key_ttl = key_ttl;
	o.poll_ms = 20;
	o.clock = fake_clock;
	o.log = quiet_log;
	if (jwks_service_new(&f->svc, f->store, &o, NULL))
		return -1;
	return jwks_service_start(f->svc, NULL, NULL);
}

static void fixture_close(struct fixture *f)
{
	jwks_service_free(f->svc);
	ks_close(f->store);
	if (rm_rf(f->dir))
		fprintf(stderr, "could not remove %s\n", f->dir);
}

/* A token's kid, iat and exp, read back from its compact form. */
struct claims {
	int64_t kid, iat, exp;
};

static int parse_token(const char *tok, struct claims *c)
{
	const char *dot1 = strchr(tok, '.'), *dot2;
	unsigned char buf[512];
	size_t n;

	if (!dot1 || !(dot2 = strchr(dot1 + 1, '.')))
		return -1;
	if (b64url_decode(buf, &n, tok, (size_t)(dot1 - tok)) || n >= 256)
		return -1;
	buf[n] = '\0';
	if (sscanf((char *)buf,
		   "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"%" SCNd64
		   "\"}",
		   &c->kid) != 1)
		return -1;
	if (b64url_decode(buf, &n, dot1 + 1, (size_t)(dot2 - dot1 - 1)) ||
	    n >= 256)
		return -1;
	buf[n] = '\0';
	return sscanf((char *)buf, "{\"iat\":%" SCNd64 ",\"exp\":%" SCNd64 "}",
		      &c->iat, &c->exp) == 2
		       ? 0
		       : -1;
}

/* Verify tok's signature with the key stored under its kid. */
static int verify_with_store(struct fixture *f, const char *tok,
			     int64_t *key_exp)
{
	const char *dot2 = strrchr(tok, '.');
	struct ks_record rec = {0};
	struct signer_key *key = NULL;
	unsigned char sig[SIGNER_SIG_MAX];
	struct claims c;
	size_t n;
	int rc;

	if (parse_token(tok, &c) || !dot2 ||
	    b64url_decode(sig, &n, dot2 + 1, strlen(dot2 + 1)) ||
	    ks_get(f->store, c.kid, &rec, NULL))
		return -1;
	rc = signer_load(&key, rec.blob, rec.blob_len, NULL);
	if (!rc)
		rc = signer_verify(key, tok, (size_t)(dot2 - tok), sig, n);
	*key_exp = rec.exp;
	signer_key_free(key);
	ks_record_release(&rec);
	return rc;
}

static int issue(struct fixture *f, int expired, char *tok, struct claims *c)
{
	size_t len;
	int rc = jwks_service_issue(f->svc, expired, tok, JWKS_TOKEN_MAX, &len,
				    NULL);

	if (!rc)
		rc = parse_token(tok, c);
	return rc;
}

static int copy_body(const struct jwks_doc *doc, void *arg)
{
	snprintf(arg, 4096, "%.*s", (int)doc->body_len, doc->body);
	return 0;
}

static int jwks_has_kid(struct fixture *f, int64_t kid)
{
	char body[4096], needle[40];

	if (jwks_service_jwks(f->svc, copy_body, body))
		return -1;
	snprintf(needle, sizeof(needle), "\"kid\":\"%" PRId64 "\"", kid);
	return strstr(body, needle) != NULL;
}

static void test_first_start_and_claims(const struct ks_backend *be)
{
	char tok[JWKS_TOKEN_MAX];
	struct fixture f;
	struct claims c, x;
	int64_t key_exp = 0;

	atomic_store(&fake_now, 1800000000);
	if (fixture_open(&f, be) || fixture_start(&f, 300, 86400)) {
		CHECK(0, "[%s] service did not start", ks_backend_name(be));
		return;
	}
	CHECK(issue(&f, 0, tok, &c) == 0, "[%s] normal token", f.be_name);
	CHECK_EQ_INT(c.iat, 1800000000, "[%s] iat is now", f.be_name);
	CHECK_EQ_INT(c.exp, 1800000300, "[%s] exp is now + ttl", f.be_name);
	CHECK(verify_with_store(&f, tok, &key_exp) == 0,
	      "[%s] token verifies with its stored key", f.be_name);
	CHECK_EQ_INT(key_exp, 1800000000 + 86400, "[%s] key exp", f.be_name);
	CHECK(jwks_has_kid(&f, c.kid) == 1, "[%s] kid published", f.be_name);

	CHECK(issue(&f, 1, tok, &x) == 0, "[%s] expired token", f.be_name);
	CHECK(x.exp < 1800000000, "[%s] expired exp in the past", f.be_name);
	CHECK(x.kid != c.kid, "[%s] expired kid differs", f.be_name);
	CHECK(jwks_has_kid(&f, x.kid) == 0, "[%s] expired kid unpublished",
	      f.be_name);
	CHECK(verify_with_store(&f, tok, &key_exp) == 0 && key_exp <= x.exp,
	      "[%s] expired token verifies, exp no later than its key",
	      f.be_name);
	fixture_close(&f);
}

/* Wait (really) until cond holds, polling the service, at most 3 s. */
#define WAIT_FOR(cond)                                                 \
	do {                                                           \
		int waited_;                                           \
		for (waited_ = 0; !(cond) && waited_ < 300; waited_++) \
			usleep(10000);                                 \
	} while (0)

static void test_expiry_and_top_up(const struct ks_backend *be)
{
	char tok[JWKS_TOKEN_MAX];
	struct fixture f;
	struct claims first, c;
	int64_t t0 = 1800000000, key_exp = 0;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start(&f, 80, 100)) {
		CHECK(0, "[%s] service did not start", ks_backend_name(be));
		return;
	}
	CHECK(issue(&f, 0, tok, &first) == 0, "[%s] token", f.be_name);

	/*
	 * 40 s of life left, under min(token ttl, key ttl / 2) = 50: a new
	 * key is added; until then tokens are capped at the old key's expiry.
	 */
	atomic_store(&fake_now, t0 + 60);
	CHECK(issue(&f, 0, tok, &c) == 0, "[%s] token at t0+60", f.be_name);
	CHECK(verify_with_store(&f, tok, &key_exp) == 0 && c.exp <= key_exp,
	      "[%s] token exp %" PRId64 " within its key's %" PRId64, f.be_name,
	      c.exp, key_exp);
	WAIT_FOR(issue(&f, 0, tok, &c) == 0 && c.kid != first.kid);
	CHECK(c.kid > first.kid, "[%s] a new key signs after top-up",
	      f.be_name);
	CHECK_EQ_INT(c.exp, t0 + 60 + 80, "[%s] full token lifetime again",
		     f.be_name);
	CHECK(jwks_has_kid(&f, first.kid) == 1,
	      "[%s] old key still published before its expiry", f.be_name);

	/* Past the first key's expiry it leaves the key set at once. */
	atomic_store(&fake_now, t0 + 100);
	CHECK(jwks_has_kid(&f, first.kid) == 0,
	      "[%s] expired key left the JWKS", f.be_name);
	CHECK(jwks_has_kid(&f, c.kid) == 1, "[%s] new key still published",
	      f.be_name);
	fixture_close(&f);
}

static void test_expired_key_choice(const struct ks_backend *be)
{
	static const unsigned char garbage[] = "garbage";
	char tok[JWKS_TOKEN_MAX];
	struct signer_key *key = NULL;
	unsigned char *blob = NULL;
	struct fixture f;
	struct claims c;
	int64_t t0 = 1800000000, good = 0, key_exp = 0;
	size_t len = 0;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || signer_generate(&key, "RS256", NULL) ||
	    signer_save(key, &blob, &len, NULL)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	/* An extreme expiry, a good expired key, then an undecodable one. */
	CHECK(ks_put(f.store, blob, len, INT64_MIN + 1, NULL, NULL) == 0 &&
		      ks_put(f.store, blob, len, t0 - 3600, &good, NULL) == 0 &&
		      ks_put(f.store, garbage, sizeof(garbage), t0 - 10, NULL,
			     NULL) == 0 &&
		      ks_put(f.store, blob, len, t0 + 86400, NULL, NULL) == 0,
	      "[%s] rows stored", f.be_name);
	CHECK(fixture_start(&f, 3600, 86400) == 0, "[%s] start", f.be_name);
	CHECK(issue(&f, 1, tok, &c) == 0, "[%s] expired token", f.be_name);
	CHECK_EQ_INT(c.kid, good, "[%s] the newest decodable expired key signs",
		     f.be_name);
	CHECK(verify_with_store(&f, tok, &key_exp) == 0,
	      "[%s] expired token verifies", f.be_name);
	signer_blob_free(blob, len);
	signer_key_free(key);
	fixture_close(&f);
}

int main(int argc, char **argv)
{
	size_t i;

	for (i = 0; ks_backends[i]; i++) {
		const struct ks_backend *be = ks_backends[i];

		if (argc > 1 && strcmp(argv[1], ks_backend_name(be)))
			continue;
		test_first_start_and_claims(be);
		test_expiry_and_top_up(be);
		test_expired_key_choice(be);
	}
	return TEST_REPORT();
}
