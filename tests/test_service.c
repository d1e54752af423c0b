/*
 * The service under a controlled clock, on every compiled-in backend: key
 * creation on an empty store, token claims, the expired-key path (extreme
 * and undecodable rows), rotation across several keys watched by a relying
 * party that caches the JWKS for its max-age, revocation and operator
 * rotation, JWKS caching metadata, and keys sealed at rest (migration,
 * rewrap, a blob moved to another row, a wrong secret), one schedule per
 * algorithm, and jti uniqueness. Tokens are checked
 * against the stored key with the signer; PyJWT checks them independently
 * in the integration suites.
 */
#define _DEFAULT_SOURCE

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kek.h"
#include "keyadmin.h"
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

/*
 * A network store (PostgreSQL: no default file) is the scratch database
 * JWKS_TEST_PG names, in a fresh schema per fixture; dir is made anyway.
 */
struct fixture {
	const char *be_name;
	char dir[64];
	char path[512];
	char schema[64];
	struct ks_store *store;
	struct jwks_service *svc;
	const struct kek *kek;
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
	if (!ks_backend_default_path(be)[0]) {
		static unsigned counter;
		const char *pg = getenv("JWKS_TEST_PG");

		if (!pg || !pg[0] || strlen(pg) >= sizeof(f->path))
			return -1;
		snprintf(f->path, sizeof(f->path), "%s", pg);
		snprintf(f->schema, sizeof(f->schema), "svc_%ld_%u",
			 (long)getpid(), ++counter);
		opts.pg_schema = f->schema;
	}
	opts.path = f->path;
	return ks_open(&f->store, be, &opts, NULL);
}

/*
 * Start the service with the policy p. The background thread is made to
 * wait an hour between passes: tests move the clock and call
 * jwks_service_tick() themselves.
 */
static struct jwks_service_options policy_options(const struct lc_policy *p)
{
	struct jwks_service_options o = JWKS_SERVICE_OPTIONS_INIT;

	o.token_ttl = p->token_ttl;
	o.key_ttl = p->key_ttl;
	o.jwks_max_age = p->jwks_max_age;
	o.margin = p->margin;
	o.rotation_lead = p->lead;
	o.poll_ms = 3600 * 1000;
	o.clock = fake_clock;
	o.log = quiet_log;
	return o;
}

static int fixture_start_policy(struct fixture *f, const struct lc_policy *p)
{
	struct jwks_service_options o = policy_options(p);

	o.kek = f->kek;
	if (jwks_service_new(&f->svc, f->store, &o, NULL))
		return -1;
	return jwks_service_start(f->svc, NULL, NULL);
}

static int fixture_start(struct fixture *f, int64_t token_ttl, int64_t key_ttl)
{
	struct lc_policy p = LC_POLICY_INIT;

	p.token_ttl = token_ttl;
	p.key_ttl = key_ttl;
	return fixture_start_policy(f, &p);
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
	char jti[23];
	char alg[16];
};

static int parse_token(const char *tok, struct claims *c)
{
	const char *dot1 = strchr(tok, '.'), *dot2;
	unsigned char buf[512];
	int64_t nbf;
	size_t n;
	int end = 0;

	if (!dot1 || !(dot2 = strchr(dot1 + 1, '.')))
		return -1;
	if (b64url_decode(buf, &n, tok, (size_t)(dot1 - tok)) || n >= 256)
		return -1;
	buf[n] = '\0';
	if (sscanf((char *)buf,
		   "{\"alg\":\"%15[A-Za-z0-9]\",\"typ\":\"JWT\",\"kid\":"
		   "\"%" SCNd64 "\"}%n",
		   c->alg, &c->kid, &end) != 2 ||
	    (size_t)end != n)
		return -1;
	if (b64url_decode(buf, &n, dot1 + 1, (size_t)(dot2 - dot1 - 1)) ||
	    n >= 256)
		return -1;
	buf[n] = '\0';
	/* nbf is iat; jti is 128 bits in base64url (22 characters). */
	if (sscanf((char *)buf,
		   "{\"iat\":%" SCNd64 ",\"nbf\":%" SCNd64 ",\"exp\":%" SCNd64
		   ",\"jti\":\"%22[A-Za-z0-9_-]\"}%n",
		   &c->iat, &nbf, &c->exp, c->jti, &end) != 4 ||
	    nbf != c->iat || (size_t)end != n)
		return -1;
	return 0;
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
	rc = ka_load_key(&rec, f->kek, &key, NULL);
	if (!rc)
		rc = signer_verify(key, tok, (size_t)(dot2 - tok), sig, n);
	*key_exp = rec.exp;
	signer_key_free(key);
	ks_record_release(&rec);
	return rc;
}

/* A token of algorithm alg (NULL: the first configured). */
static int issue_alg(struct fixture *f, const char *alg, int expired, char *tok,
		     struct claims *c)
{
	struct jwks_issue_request req = JWKS_ISSUE_REQUEST_INIT;
	size_t len;
	int rc;

	req.alg = alg;
	req.expired = expired;
	rc = jwks_service_issue(f->svc, &req, tok, JWKS_TOKEN_MAX, &len, NULL);
	if (!rc)
		rc = parse_token(tok, c);
	return rc;
}

static int issue(struct fixture *f, int expired, char *tok, struct claims *c)
{
	int rc = issue_alg(f, NULL, expired, tok, c);

	/* Without --alg, every token is the assignment's RS256. */
	return rc ? rc : strcmp(c->alg, "RS256") ? -1 : 0;
}

/* A copy of a served JWKS document. */
struct doc_copy {
	char body[8192];
	char etag[32];
	int64_t last_modified, max_age;
};

static int copy_doc(const struct jwks_doc *doc, void *arg)
{
	struct doc_copy *c = arg;

	snprintf(c->body, sizeof(c->body), "%.*s", (int)doc->body_len,
		 doc->body);
	snprintf(c->etag, sizeof(c->etag), "%s", doc->etag);
	c->last_modified = doc->last_modified;
	c->max_age = doc->max_age;
	return 0;
}

static int body_has_kid(const char *body, int64_t kid)
{
	char needle[40];

	snprintf(needle, sizeof(needle), "\"kid\":\"%" PRId64 "\"", kid);
	return strstr(body, needle) != NULL;
}

static int jwks_has_kid(struct fixture *f, int64_t kid)
{
	struct doc_copy d;

	if (jwks_service_jwks(f->svc, copy_doc, &d))
		return -1;
	return body_has_kid(d.body, kid);
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

/* The policy the rotation tests run: short, so that keys rotate often. */
static const struct lc_policy rot_policy = {
	.key_ttl = 3600,
	.token_ttl = 300,
	.jwks_max_age = 60,
	.margin = 30,
	.lead = 10,
};

#define RP_KEYS 32

/*
 * A relying party that fetches the JWKS only when its cached copy is older
 * than the max-age it was served with, and must verify every token with
 * the copy it holds. Over four rotations under an uneven clock it also
 * checks: every key after the first was published for publish_ahead before
 * it signed; no token's exp passes its key's exp - margin; a key leaves the
 * published set only after every token it signed expired.
 */
static void test_rotation_relying_party(const struct ks_backend *be)
{
	static const int64_t steps[] = {17, 40, 3, 55, 29, 1, 48};
	int64_t first_published[RP_KEYS] = {0}, first_signed[RP_KEYS] = {0};
	int64_t last_exp[RP_KEYS] = {0};
	int64_t t0 = 1800000000, now = t0, fetched = 0, key_exp = 0;
	int64_t ahead = lc_publish_ahead(&rot_policy);
	char tok[JWKS_TOKEN_MAX];
	struct doc_copy cached, fresh;
	struct fixture f;
	struct claims c;
	int64_t kid, max_kid = 0;
	size_t step, unknown = 0, failures = 0;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start_policy(&f, &rot_policy)) {
		CHECK(0, "[%s] service did not start", ks_backend_name(be));
		return;
	}
	memset(&cached, 0, sizeof(cached));
	cached.max_age = -1;
	for (step = 0; now < t0 + 4 * 3300 && max_kid < RP_KEYS - 1; step++) {
		now += steps[step % (sizeof(steps) / sizeof(steps[0]))];
		atomic_store(&fake_now, now);
		jwks_service_tick(f.svc);

		if (jwks_service_jwks(f.svc, copy_doc, &fresh)) {
			failures++;
			continue;
		}
		CHECK(fresh.max_age >= 0 && fresh.max_age <= 60,
		      "[%s] max-age %" PRId64 " within the cap", f.be_name,
		      fresh.max_age);
		for (kid = 1; kid < RP_KEYS; kid++) {
			if (body_has_kid(fresh.body, kid)) {
				if (!first_published[kid])
					first_published[kid] = now;
				if (kid > max_kid)
					max_kid = kid;
			} else if (first_published[kid]) {
				/* Gone: every token it signed has expired. */
				CHECK(last_exp[kid] <= now,
				      "[%s] key %" PRId64 " left at %" PRId64
				      " before its token expiring %" PRId64,
				      f.be_name, kid, now - t0,
				      last_exp[kid] - t0);
			}
		}
		if (now >= fetched + cached.max_age) {
			cached = fresh;
			fetched = now;
		}

		if (issue(&f, 0, tok, &c) || c.kid < 1 || c.kid >= RP_KEYS) {
			failures++;
			continue;
		}
		if (!body_has_kid(cached.body, c.kid))
			unknown++;
		if (!first_signed[c.kid])
			first_signed[c.kid] = now;
		if (c.exp > last_exp[c.kid])
			last_exp[c.kid] = c.exp;
		CHECK(verify_with_store(&f, tok, &key_exp) == 0 &&
			      c.exp <= key_exp - rot_policy.margin,
		      "[%s] token of key %" PRId64 " verifies, exp %" PRId64
		      " within its key's publication %" PRId64,
		      f.be_name, c.kid, c.exp, key_exp);
	}
	CHECK_EQ_INT(failures, 0, "[%s] every request answered", f.be_name);
	CHECK_EQ_INT(unknown, 0,
		     "[%s] the caching relying party knew every kid",
		     f.be_name);
	CHECK(max_kid >= 6, "[%s] %" PRId64 " keys made over four rotations",
	      f.be_name, max_kid);
	for (kid = 3; kid <= max_kid; kid++) {
		if (!first_signed[kid])
			continue;
		CHECK(first_signed[kid] - first_published[kid] >= ahead,
		      "[%s] key %" PRId64 " published %" PRId64
		      " s before it signed, want >= %" PRId64,
		      f.be_name, kid, first_signed[kid] - first_published[kid],
		      ahead);
	}
	fixture_close(&f);
}

/* Cache metadata: max-age bounded by the next change, ETag, Last-Modified. */
static void test_jwks_caching(const struct ks_backend *be)
{
	int64_t t0 = 1800000000, due = t0 + 3600 - 330 - 90 - 10;
	struct doc_copy a, b;
	struct fixture f;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start_policy(&f, &rot_policy)) {
		CHECK(0, "[%s] service did not start", ks_backend_name(be));
		return;
	}
	CHECK(jwks_service_jwks(f.svc, copy_doc, &a) == 0, "[%s] jwks",
	      f.be_name);
	CHECK_EQ_INT(a.max_age, 60, "[%s] the cap far from any change",
		     f.be_name);
	CHECK_EQ_INT(a.last_modified, t0, "[%s] last modified at start",
		     f.be_name);

	atomic_store(&fake_now, due - 25);
	jwks_service_tick(f.svc);
	CHECK(jwks_service_jwks(f.svc, copy_doc, &b) == 0, "[%s] jwks",
	      f.be_name);
	CHECK_EQ_INT(b.max_age, 25, "[%s] never past the next scheduled change",
		     f.be_name);
	CHECK(!strcmp(a.etag, b.etag) && b.last_modified == t0,
	      "[%s] same set: same ETag and Last-Modified", f.be_name);

	atomic_store(&fake_now, due);
	jwks_service_tick(f.svc);
	CHECK(jwks_service_jwks(f.svc, copy_doc, &b) == 0, "[%s] jwks",
	      f.be_name);
	CHECK(strcmp(a.etag, b.etag) != 0, "[%s] a new key: a new ETag",
	      f.be_name);
	CHECK_EQ_INT(b.last_modified, due, "[%s] Last-Modified moves",
		     f.be_name);
	CHECK(b.max_age > 0 && b.max_age <= 60, "[%s] max-age %" PRId64,
	      f.be_name, b.max_age);
	fixture_close(&f);
}

/* Revocation and an operator's rotation, as `jwksd keys` does them. */
static void test_revoke_and_forced_rotation(const struct ks_backend *be)
{
	int64_t t0 = 1800000000, kid = 0, revoked;
	struct signer_key *key = NULL;
	char tok[JWKS_TOKEN_MAX];
	struct lc_plan plan;
	struct fixture f;
	struct claims c;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start_policy(&f, &rot_policy) ||
	    signer_generate(&key, "RS256", 0, NULL)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	CHECK(issue(&f, 0, tok, &c) == 0, "[%s] token", f.be_name);
	revoked = c.kid;

	/* Forced: published now, signs publish_ahead later. */
	atomic_store(&fake_now, t0 + 100);
	CHECK(ka_rotate(f.store, NULL, &rot_policy, key, t0 + 100, 1, NULL,
			NULL, &plan, &kid, NULL) == 0,
	      "[%s] forced rotation", f.be_name);
	CHECK_EQ_INT(plan.activate_at, t0 + 100 + 90, "[%s] activates later",
		     f.be_name);
	CHECK(ka_rotate(f.store, NULL, &rot_policy, key, t0 + 101, 1, NULL,
			NULL, &plan, NULL, NULL) == KS_EEXISTS &&
		      plan.pending_kid == kid,
	      "[%s] a second rotation finds the first pending", f.be_name);
	jwks_service_tick(f.svc);
	CHECK(jwks_has_kid(&f, kid) == 1, "[%s] new key published at once",
	      f.be_name);
	CHECK(issue(&f, 0, tok, &c) == 0 && c.kid == revoked,
	      "[%s] the old key still signs", f.be_name);
	atomic_store(&fake_now, t0 + 190);
	jwks_service_tick(f.svc);
	CHECK(issue(&f, 0, tok, &c) == 0 && c.kid == kid,
	      "[%s] the new key signs from its activation", f.be_name);
	CHECK(jwks_has_kid(&f, revoked) == 1,
	      "[%s] the retired key stays published", f.be_name);

	/* Revoking the signing key: gone at once, another key signs. */
	CHECK(ka_revoke(f.store, kid, t0 + 200, NULL) == 0, "[%s] revoke",
	      f.be_name);
	CHECK(ka_revoke(f.store, kid, t0 + 200, NULL) == KS_EEXISTS,
	      "[%s] revoked already", f.be_name);
	CHECK(ka_revoke(f.store, 999, t0 + 200, NULL) == KS_ENOTFOUND,
	      "[%s] unknown kid", f.be_name);
	atomic_store(&fake_now, t0 + 200);
	jwks_service_tick(f.svc);
	CHECK(jwks_has_kid(&f, kid) == 0, "[%s] revoked key unpublished",
	      f.be_name);
	CHECK(issue(&f, 0, tok, &c) == 0 && c.kid != kid &&
		      jwks_has_kid(&f, c.kid) == 1,
	      "[%s] a published key signs instead (%" PRId64 ")", f.be_name,
	      c.kid);
	signer_key_free(key);
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
	if (fixture_open(&f, be) || signer_generate(&key, "RS256", 0, NULL) ||
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

struct pem_count {
	size_t pem, sealed;
};

static int count_pem(const struct ks_record *rec, void *arg)
{
	struct pem_count *c = arg;
	static const char pem[] = "-----BEGIN";
	size_t i;

	if (kek_is_sealed(rec->blob, rec->blob_len))
		c->sealed++;
	for (i = 0; i + sizeof(pem) - 1 <= rec->blob_len; i++) {
		if (!memcmp(rec->blob + i, pem, sizeof(pem) - 1)) {
			c->pem++;
			break;
		}
	}
	return 0;
}

/*
 * Keys at rest: a service with a kek stores nothing as PEM; plaintext rows
 * are sealed by one rewrap; a wrong secret is told apart; a blob moved to
 * another row does not load; rewrap to a new secret is all or nothing.
 */
static void test_sealed_keys(const struct ks_backend *be)
{
	static const char s1[] = "first secret, 32 bytes or more..";
	static const char s2[] = "second secret, also long enough.";
	struct kek *k1 = NULL, *k2 = NULL;
	char tok[JWKS_TOKEN_MAX];
	struct ks_record rec = {0}, moved = {0};
	struct signer_key *key = NULL;
	struct pem_count pc = {0, 0};
	struct ka_scan scan;
	struct fixture f;
	struct claims c;
	int64_t key_exp = 0, t0 = 1800000000;
	size_t n = 0;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) ||
	    kek_from_secret(&k1, s1, sizeof(s1) - 1, NULL) ||
	    kek_from_secret(&k2, s2, sizeof(s2) - 1, NULL)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	/* A plaintext store first, as the assignment's server leaves it. */
	CHECK(fixture_start(&f, 300, 86400) == 0, "[%s] start", f.be_name);
	jwks_service_free(f.svc);
	f.svc = NULL;
	CHECK(ks_list(f.store, INT64_MIN, INT64_MAX, count_pem, &pc, NULL) ==
			      0 &&
		      pc.pem == 2 && pc.sealed == 0,
	      "[%s] two PEM rows", f.be_name);

	CHECK(ka_rewrap(f.store, NULL, k1, &n, NULL) == 0 && n == 2,
	      "[%s] plaintext rows sealed (%zu)", f.be_name, n);
	memset(&pc, 0, sizeof(pc));
	ks_list(f.store, INT64_MIN, INT64_MAX, count_pem, &pc, NULL);
	CHECK(pc.pem == 0 && pc.sealed == 2, "[%s] no PEM left", f.be_name);
	CHECK(ka_rewrap(f.store, NULL, k1, &n, NULL) == 0 && n == 0,
	      "[%s] sealing again changes nothing", f.be_name);

	/* The service opens them with the kek, and seals what it adds. */
	f.kek = k1;
	CHECK(fixture_start(&f, 300, 86400) == 0, "[%s] start sealed",
	      f.be_name);
	CHECK(issue(&f, 0, tok, &c) == 0 &&
		      verify_with_store(&f, tok, &key_exp) == 0,
	      "[%s] sealed key signs, token verifies", f.be_name);
	atomic_store(&fake_now, t0 + 86400 - 1200); /* successor due */
	jwks_service_tick(f.svc);
	memset(&pc, 0, sizeof(pc));
	ks_list(f.store, INT64_MIN, INT64_MAX, count_pem, &pc, NULL);
	CHECK(pc.pem == 0 && pc.sealed == 3,
	      "[%s] the rotated key is sealed too (%zu sealed, %zu PEM)",
	      f.be_name, pc.sealed, pc.pem);

	/* Another secret: every row is foreign, nothing opens. */
	CHECK(ka_scan(f.store, k2, &scan, NULL) == 0 && scan.foreign == 3,
	      "[%s] a wrong secret is told apart", f.be_name);
	CHECK(ks_get(f.store, 1, &rec, NULL) == 0 &&
		      ka_load_key(&rec, NULL, &key, NULL) == KS_EACCES,
	      "[%s] no secret: refused", f.be_name);

	/* Kid 1's blob in kid 2's row: bound to kid 1, refused. */
	moved = rec;
	moved.kid = 2;
	CHECK(ka_load_key(&moved, k1, &key, NULL) == KS_EBADSIG,
	      "[%s] a blob moved to another row does not load", f.be_name);
	ks_record_release(&rec);

	/* Rewrap: a wrong old secret changes nothing; the right one all. */
	CHECK(ka_rewrap(f.store, k2, k2, &n, NULL) == KS_EACCES,
	      "[%s] rewrap from a wrong secret refused", f.be_name);
	CHECK(ka_scan(f.store, k1, &scan, NULL) == 0 && scan.foreign == 0 &&
		      scan.sealed == 3,
	      "[%s] and nothing changed", f.be_name);
	CHECK(ka_rewrap(f.store, k1, k2, &n, NULL) == 0 && n == 3,
	      "[%s] rewrap to the new secret", f.be_name);
	CHECK(ka_rewrap(f.store, k1, k2, &n, NULL) == 0 && n == 0,
	      "[%s] a second rewrap changes nothing", f.be_name);
	CHECK(ka_scan(f.store, k1, &scan, NULL) == 0 && scan.foreign == 3,
	      "[%s] the old secret opens nothing", f.be_name);
	f.kek = k2;
	CHECK(verify_with_store(&f, tok, &key_exp) == 0,
	      "[%s] old tokens verify with the rewrapped key", f.be_name);
	fixture_close(&f);
	kek_free(k1);
	kek_free(k2);
}

static int count_one(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(int *)arg)++;
	return 0;
}

static int count_keys(struct ks_store *store)
{
	int n = 0;

	return ks_list(store, INT64_MIN, INT64_MAX, count_one, &n, NULL) ? -1
									 : n;
}

static void *tick_thread(void *arg)
{
	jwks_service_tick(arg);
	return NULL;
}

/*
 * Two servers on one store (two handles, as two processes would have),
 * both finding the successor due at once: exactly one key is made, and
 * both then publish the same set.
 */
static void test_two_services_one_rotation(const struct ks_backend *be)
{
	struct jwks_service_options o = policy_options(&rot_policy);
	int64_t t0 = 1800000000, due = t0 + 3600 - 330 - 90 - 10;
	struct ks_options kopts = KS_OPTIONS_INIT;
	struct ks_store *store2 = NULL;
	struct jwks_service *svc2 = NULL;
	struct doc_copy a, b;
	struct fixture f;
	pthread_t tid[2];
	int round;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start_policy(&f, &rot_policy)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	kopts.path = f.path;
	kopts.pg_schema = f.schema[0] ? f.schema : NULL;
	CHECK(ks_open(&store2, be, &kopts, NULL) == 0 &&
		      jwks_service_new(&svc2, store2, &o, NULL) == 0 &&
		      jwks_service_start(svc2, NULL, NULL) == 0,
	      "[%s] second service", f.be_name);
	CHECK_EQ_INT(count_keys(f.store), 2, "[%s] the second start made none",
		     f.be_name);
	for (round = 0; round < 3 && svc2; round++) {
		atomic_store(&fake_now, due + round);
		CHECK(pthread_create(&tid[0], NULL, tick_thread, f.svc) == 0 &&
			      pthread_create(&tid[1], NULL, tick_thread,
					     svc2) == 0,
		      "[%s] threads", f.be_name);
		pthread_join(tid[0], NULL);
		pthread_join(tid[1], NULL);
	}
	CHECK_EQ_INT(count_keys(f.store), 3,
		     "[%s] one successor for two servers", f.be_name);
	jwks_service_tick(f.svc);
	jwks_service_tick(svc2);
	CHECK(jwks_service_jwks(f.svc, copy_doc, &a) == 0 && svc2 &&
		      jwks_service_jwks(svc2, copy_doc, &b) == 0 &&
		      !strcmp(a.etag, b.etag),
	      "[%s] both publish the same set", f.be_name);
	jwks_service_free(svc2);
	ks_close(store2);
	fixture_close(&f);
}

/* Holds the store's write lock for hold_ms from another handle. */
struct holder {
	struct ks_store *store;
	unsigned hold_ms;
	atomic_int held;
	int rc;
};

static int hold_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct holder *h = arg;
	struct timespec ts = {(time_t)(h->hold_ms / 1000),
			      (long)(h->hold_ms % 1000) * 1000000L};
	int64_t kid;

	(void)err;
	/* A read inside the transaction makes SQLite take its lock now. */
	ks_txn_next_kid(txn, &kid, NULL);
	atomic_store(&h->held, 1);
	nanosleep(&ts, NULL);
	return 1; /* roll back: nothing written */
}

static void *hold_thread(void *arg)
{
	struct holder *h = arg;

	h->rc = ks_write(h->store, hold_txn, h, NULL);
	atomic_store(&h->held, 2);
	return NULL;
}

static double mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/*
 * Requests never wait on the store: while another handle holds the
 * store's write lock across a due rotation (the background pass blocks on
 * it) and the clock passes a key boundary, tokens (normal and expired) and
 * the JWKS are answered at once from memory. The rotation happens once
 * the lock is gone.
 */
static void test_requests_never_wait_on_store(const struct ks_backend *be)
{
	int64_t t0 = 1800000000, due = t0 + 3600 - 330 - 90 - 10;
	struct ks_options kopts = KS_OPTIONS_INIT;
	struct holder h = {.hold_ms = 1500};
	double worst = 0, t;
	struct doc_copy d;
	char tok[JWKS_TOKEN_MAX];
	struct claims c;
	struct fixture f;
	pthread_t hold_tid, tick_tid;
	int fails = 0, n = 0, ticking = 0;

	atomic_store(&fake_now, t0);
	if (fixture_open(&f, be) || fixture_start_policy(&f, &rot_policy)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	kopts.path = f.path;
	kopts.busy_timeout_ms = 5000;
	if (ks_open(&h.store, be, &kopts, NULL) ||
	    pthread_create(&hold_tid, NULL, hold_thread, &h)) {
		CHECK(0, "[%s] lock holder", f.be_name);
		fixture_close(&f);
		return;
	}
	while (!atomic_load(&h.held))
		usleep(1000);
	/* A rotation is due: the background pass waits for the lock. */
	atomic_store(&fake_now, due + 1);
	ticking = pthread_create(&tick_tid, NULL, tick_thread, f.svc) == 0;
	CHECK(ticking, "[%s] tick thread", f.be_name);
	usleep(200 * 1000);
	while (atomic_load(&h.held) == 1 && n < 100000) {
		/*
		 * Across the signing key's retirement (due + 100): the
		 * snapshot is rebuilt from memory, and the retired key signs
		 * on (no successor could be made).
		 */
		if (n < 150)
			atomic_fetch_add(&fake_now, 1);
		t = mono_ms();
		fails += issue(&f, 0, tok, &c) != 0;
		fails += issue(&f, 1, tok, &c) != 0;
		fails += jwks_service_jwks(f.svc, copy_doc, &d) != 0;
		t = mono_ms() - t;
		if (t > worst)
			worst = t;
		n++;
		usleep(2000);
	}
	CHECK(n > 10, "[%s] requests made while the lock was held (%d)",
	      f.be_name, n);
	CHECK_EQ_INT(fails, 0,
		     "[%s] no request failed while the store was "
		     "locked",
		     f.be_name);
	CHECK(worst < 250,
	      "[%s] slowest request %.1f ms while the store was "
	      "locked for %u ms",
	      f.be_name, worst, h.hold_ms);
	pthread_join(hold_tid, NULL);
	if (ticking)
		pthread_join(tick_tid, NULL);
	jwks_service_tick(f.svc);
	CHECK_EQ_INT(count_keys(f.store), 3,
		     "[%s] the successor is made once the lock is gone",
		     f.be_name);
	ks_close(h.store);
	fixture_close(&f);
}

static atomic_int foreign_logs;

static void count_foreign(void *arg, const char *line)
{
	(void)arg;
	if (strstr(line, "another secret"))
		atomic_fetch_add(&foreign_logs, 1);
}

/*
 * A rewrap while the service runs: it keeps signing with the keys it has,
 * says so once, and makes no key under its old secret.
 */
static void test_rewrap_while_running(const struct ks_backend *be)
{
	static const char s1[] = "first secret, 32 bytes or more..";
	static const char s2[] = "second secret, also long enough.";
	struct jwks_service_options o = policy_options(&rot_policy);
	int64_t t0 = 1800000000, due = t0 + 3600 - 330 - 90 - 10;
	struct kek *k1 = NULL, *k2 = NULL;
	char tok[JWKS_TOKEN_MAX];
	struct fixture f;
	struct claims c;

	atomic_store(&fake_now, t0);
	atomic_store(&foreign_logs, 0);
	if (fixture_open(&f, be) ||
	    kek_from_secret(&k1, s1, sizeof(s1) - 1, NULL) ||
	    kek_from_secret(&k2, s2, sizeof(s2) - 1, NULL)) {
		CHECK(0, "[%s] setup failed", ks_backend_name(be));
		return;
	}
	o.kek = k1;
	o.log = count_foreign;
	CHECK(jwks_service_new(&f.svc, f.store, &o, NULL) == 0 &&
		      jwks_service_start(f.svc, NULL, NULL) == 0,
	      "[%s] start", f.be_name);
	CHECK(ka_rewrap(f.store, k1, k2, NULL, NULL) == 0, "[%s] rewrap",
	      f.be_name);
	atomic_store(&fake_now, due);
	jwks_service_tick(f.svc);
	jwks_service_tick(f.svc);
	CHECK_EQ_INT(count_keys(f.store), 2, "[%s] no key under the old secret",
		     f.be_name);
	CHECK_EQ_INT(atomic_load(&foreign_logs), 1, "[%s] said so once",
		     f.be_name);
	CHECK(f.svc && issue(&f, 0, tok, &c) == 0, "[%s] still signs",
	      f.be_name);
	fixture_close(&f);
	kek_free(k1);
	kek_free(k2);
}

/* Counts keys by algorithm, for ka_list_keys(). */
struct alg_count {
	int64_t now;
	int total[4], unexpired[4];
};

static const char *const all_algs[] = {"ES256", "RS256", "EdDSA", "PS256",
				       NULL};

static int alg_slot(const char *alg)
{
	int i;

	for (i = 0; alg && all_algs[i]; i++)
		if (!strcmp(all_algs[i], alg))
			return i;
	return -1;
}

static int count_alg(const struct ka_key_info *info, void *arg)
{
	struct alg_count *c = arg;
	int i = alg_slot(info->alg);

	if (i >= 0) {
		c->total[i]++;
		c->unexpired[i] += info->key.exp > c->now;
	}
	return 0;
}

/* How many JWKs of the body have "alg":alg. */
static int jwks_count_alg(const char *body, const char *alg)
{
	char needle[40];
	int n = 0;

	snprintf(needle, sizeof(needle), "\"alg\":\"%s\"", alg);
	for (body = strstr(body, needle); body; body = strstr(body + 1, needle))
		n++;
	return n;
}

/*
 * Four algorithms at once: each gets its own signing key and expired key
 * on an empty store, signs only its own tokens, is published in the one
 * JWKS, and rotates on its own schedule.
 */
/* ka_list_keys() into a JSON array, as `jwksd keys list --json`. */
struct sched_ctx {
	int64_t now;
	json_t *arr;
};

static int sched_one(const struct ka_key_info *info, void *arg)
{
	struct sched_ctx *c = arg;

	return json_array_append_new(c->arr, ka_key_json(info, c->now))
		       ? KS_ENOMEM
		       : 0;
}

/*
 * What operators see of a running service (its schedule in memory, its
 * counters) agrees with the store read directly at the same time.
 */
static void check_schedule(struct fixture *f, int64_t now, const char *when)
{
	struct sched_ctx want = {now, json_array()};
	struct jwks_service_stats st;
	size_t len = 0, i, total = 0, states[JWKS_KEY_STATES] = {0};
	char *text = jwks_service_keys_json(f->svc, &len);
	json_t *got = text ? json_loads(text, 0, NULL) : NULL, *k;
	const char *why = NULL;

	CHECK(ka_list_keys(f->store, f->kek, sched_one, &want, NULL) == 0,
	      "[%s] %s: list", f->be_name, when);
	CHECK(got && json_equal(got, want.arr) && strlen(text) == len,
	      "[%s] %s: the schedule in memory is the store's:\n%s", f->be_name,
	      when, text ? text : "(null)");
	json_array_foreach(want.arr, i, k)
	{
		const char *state =
			json_string_value(json_object_get(k, "state"));
		static const char *const names[JWKS_KEY_STATES] = {
			"pending", "active", "retired", "expired", "revoked"};
		size_t j;

		for (j = 0; j < JWKS_KEY_STATES; j++)
			states[j] += state && !strcmp(state, names[j]);
		CHECK(strcmp(json_string_value(json_object_get(k, "alg")), "?"),
		      "[%s] %s: every key's algorithm is known", f->be_name,
		      when);
	}
	CHECK(jwks_service_stats(f->svc, &st) == 0, "[%s] stats", f->be_name);
	for (i = 0; i < JWKS_KEY_STATES; i++) {
		CHECK_EQ_INT(st.keys[i], states[i],
			     "[%s] %s: keys in state %zu", f->be_name, when, i);
		total += st.keys[i];
	}
	CHECK_EQ_INT(total, json_array_size(want.arr), "[%s] %s: all keys",
		     f->be_name, when);
	CHECK(st.sync_age_ms >= 0 && st.next_change > now &&
		      st.next_change != INT64_MAX,
	      "[%s] %s: synced, a change scheduled", f->be_name, when);
	CHECK(jwks_service_ready(f->svc, 60000, &why) && !why,
	      "[%s] %s: ready (%s)", f->be_name, when, why ? why : "");
	free(text);
	json_decref(got);
	json_decref(want.arr);
}

static void test_algorithm_schedules(const struct ks_backend *be)
{
	struct jwks_service_options o = policy_options(&rot_policy);
	int64_t t0 = 1800000000, key_exp = 0, signing[4] = {0};
	char tok[JWKS_TOKEN_MAX];
	struct alg_count cnt = {.now = t0};
	struct doc_copy d;
	struct fixture f;
	struct claims c, x;
	int i;

	atomic_store(&fake_now, t0);
	o.algs = all_algs;
	if (fixture_open(&f, be) ||
	    jwks_service_new(&f.svc, f.store, &o, NULL) ||
	    jwks_service_start(f.svc, NULL, NULL)) {
		CHECK(0, "[%s] four-algorithm service did not start",
		      ks_backend_name(be));
		return;
	}
	CHECK(ka_list_keys(f.store, NULL, count_alg, &cnt, NULL) == 0,
	      "[%s] list", f.be_name);
	for (i = 0; all_algs[i]; i++)
		CHECK(cnt.total[i] == 2 && cnt.unexpired[i] == 1,
		      "[%s] %s: one signing and one expired key (%d, %d)",
		      f.be_name, all_algs[i], cnt.total[i], cnt.unexpired[i]);
	CHECK(issue_alg(&f, NULL, 0, tok, &c) == 0 && !strcmp(c.alg, "ES256"),
	      "[%s] the first algorithm signs by default", f.be_name);
	CHECK(jwks_service_jwks(f.svc, copy_doc, &d) == 0, "[%s] jwks",
	      f.be_name);
	for (i = 0; all_algs[i]; i++) {
		CHECK(issue_alg(&f, all_algs[i], 0, tok, &c) == 0 &&
			      !strcmp(c.alg, all_algs[i]),
		      "[%s] %s token", f.be_name, all_algs[i]);
		CHECK(verify_with_store(&f, tok, &key_exp) == 0,
		      "[%s] %s token verifies with its stored key", f.be_name,
		      all_algs[i]);
		CHECK(body_has_kid(d.body, c.kid), "[%s] %s kid published",
		      f.be_name, all_algs[i]);
		CHECK_EQ_INT(jwks_count_alg(d.body, all_algs[i]), 1,
			     "[%s] one %s key in the JWKS", f.be_name,
			     all_algs[i]);
		signing[i] = c.kid;
		CHECK(issue_alg(&f, all_algs[i], 1, tok, &x) == 0 &&
			      !strcmp(x.alg, all_algs[i]) && x.exp < t0 &&
			      !body_has_kid(d.body, x.kid) &&
			      verify_with_store(&f, tok, &key_exp) == 0,
		      "[%s] %s expired token", f.be_name, all_algs[i]);
	}
	check_schedule(&f, t0, "at start");
	{
		struct jwks_service_stats st;

		CHECK(jwks_service_stats(f.svc, &st) == 0 && st.n_algs == 4,
		      "[%s] stats", f.be_name);
		/* Above: one default, and per algorithm a token and an expired. */
		for (i = 0; all_algs[i]; i++)
			CHECK_EQ_INT(st.tokens[i], 2 + (i == 0),
				     "[%s] %s tokens counted", f.be_name,
				     all_algs[i]);
		for (i = 0; all_algs[i]; i++)
			CHECK(st.can_sign[i], "[%s] %s can sign", f.be_name,
			      all_algs[i]);
	}
	CHECK_EQ_INT(issue_alg(&f, "HS256", 0, tok, &c), KS_EUNSUPPORTED,
		     "[%s] an algorithm not configured", f.be_name);
	CHECK_EQ_INT(issue_alg(&f, "es256", 0, tok, &c), KS_EUNSUPPORTED,
		     "[%s] names are case-sensitive", f.be_name);

	/*
	 * Each schedule makes its own successor (due at retire_at, t0 + 3270,
	 * less publish_ahead and lead), then hands over to it.
	 */
	atomic_store(&fake_now, t0 + 3200);
	jwks_service_tick(f.svc);
	memset(&cnt, 0, sizeof(cnt));
	cnt.now = t0 + 3200;
	CHECK(ka_list_keys(f.store, NULL, count_alg, &cnt, NULL) == 0,
	      "[%s] list", f.be_name);
	CHECK(jwks_service_jwks(f.svc, copy_doc, &d) == 0, "[%s] jwks",
	      f.be_name);
	for (i = 0; all_algs[i]; i++) {
		CHECK(cnt.unexpired[i] == 2,
		      "[%s] %s: a successor of its own (%d keys)", f.be_name,
		      all_algs[i], cnt.unexpired[i]);
		CHECK_EQ_INT(jwks_count_alg(d.body, all_algs[i]), 2,
			     "[%s] %s successor published ahead", f.be_name,
			     all_algs[i]);
		CHECK(issue_alg(&f, all_algs[i], 0, tok, &c) == 0 &&
			      c.kid == signing[i],
		      "[%s] %s: the old key signs until it retires", f.be_name,
		      all_algs[i]);
	}
	check_schedule(&f, t0 + 3200, "with successors pending");
	atomic_store(&fake_now, t0 + 3300);
	jwks_service_tick(f.svc);
	for (i = 0; all_algs[i]; i++)
		CHECK(issue_alg(&f, all_algs[i], 0, tok, &c) == 0 &&
			      c.kid != signing[i] &&
			      !strcmp(c.alg, all_algs[i]) &&
			      verify_with_store(&f, tok, &key_exp) == 0,
		      "[%s] %s: the successor signs", f.be_name, all_algs[i]);
	check_schedule(&f, t0 + 3300, "after the hand-over");
	/* A revoked key shows as revoked, its algorithm known. */
	CHECK(ka_revoke(f.store, signing[1], t0 + 3300, NULL) == 0,
	      "[%s] revoke", f.be_name);
	jwks_service_tick(f.svc);
	check_schedule(&f, t0 + 3300, "after a revocation");
	fixture_close(&f);
}

static int cmp_jti(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* jti: 128 random bits, unique over 100,000 tokens (EdDSA: fast). */
static void test_jti_unique(const struct ks_backend *be)
{
	static const char *const eddsa[] = {"EdDSA", NULL};
	struct jwks_service_options o = policy_options(&rot_policy);
	enum {
		N = 100000
	};
	char(*jti)[23] = calloc(N, sizeof(*jti));
	char tok[JWKS_TOKEN_MAX];
	struct fixture f;
	struct claims c;
	int i, ok = 1, dup = 0;

	atomic_store(&fake_now, 1800000000);
	o.algs = eddsa;
	if (!jti || fixture_open(&f, be) ||
	    jwks_service_new(&f.svc, f.store, &o, NULL) ||
	    jwks_service_start(f.svc, NULL, NULL)) {
		CHECK(0, "[%s] EdDSA service did not start",
		      ks_backend_name(be));
		free(jti);
		return;
	}
	for (i = 0; ok && i < N; i++) {
		ok = issue_alg(&f, NULL, i % 2, tok, &c) == 0 &&
		     strlen(c.jti) == 22;
		memcpy(jti[i], c.jti, sizeof(c.jti));
	}
	CHECK(ok, "[%s] %d tokens, each with a 22-character jti", f.be_name, N);
	qsort(jti, N, sizeof(*jti), cmp_jti);
	for (i = 1; i < N; i++)
		dup += !strcmp(jti[i - 1], jti[i]);
	CHECK_EQ_INT(dup, 0, "[%s] no jti repeats over %d tokens", f.be_name,
		     N);
	free(jti);
	fixture_close(&f);
}

int main(int argc, char **argv)
{
	size_t i;

	for (i = 0; ks_backends[i]; i++) {
		const struct ks_backend *be = ks_backends[i];

		/* `test_service jti`: the 100,000-token uniqueness test. */
		if (argc > 1 && !strcmp(argv[1], "jti")) {
			test_jti_unique(be);
			break;
		}
		if (argc > 1 && strcmp(argv[1], ks_backend_name(be)))
			continue;
		/*
		 * A network store runs as `test_service postgres`, registered
		 * with the scratch server it needs (service_postgres).
		 */
		if (argc == 1 && !ks_backend_default_path(be)[0]) {
			printf("[%s] not run here: see service_%s\n",
			       ks_backend_name(be), ks_backend_name(be));
			continue;
		}
		test_first_start_and_claims(be);
		test_rotation_relying_party(be);
		test_jwks_caching(be);
		test_revoke_and_forced_rotation(be);
		test_sealed_keys(be);
		test_two_services_one_rotation(be);
		test_rewrap_while_running(be);
		test_expired_key_choice(be);
		test_requests_never_wait_on_store(be);
		test_algorithm_schedules(be);
	}
	return TEST_REPORT();
}
