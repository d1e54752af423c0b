/*
 * The issuer: loads keys from the store, keeps the published snapshot,
 * signs tokens. See include/service.h for the contract.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keyadmin.h"
#include "lifecycle.h"
#include "service.h"
#include "signer.h"

/*
 * One parsed key. Entries are created once and live until the service is
 * freed, so snapshots may point at them without counting references.
 */
struct svc_key {
	int64_t kid;
	int64_t exp;
	uint64_t seen_gen; /* the store listing that last contained it */
	int has_life;
	struct ks_life life;
	struct signer_key *key;
	char *header_b64; /* b64url of the JWS header, ready to sign */
	size_t header_len;
	struct svc_key *next;
};

/* What requests read. Immutable once published. */
struct svc_snapshot {
	atomic_uint refs;
	int64_t valid_until; /* when the signer or the published set changes */
	int64_t next_change; /* when the published set changes */
	int64_t last_modified;
	const struct svc_key *signing;
	int64_t sign_cap; /* the latest exp of a token signing may make */
	char *body;
	size_t body_len;
	char etag[24];
};

struct jwks_service {
	struct ks_store *store;
	struct jwks_service_options opts;
	struct lc_policy policy;

	/* snap_lock guards cur, expired and ready; held only for a swap. */
	pthread_mutex_t snap_lock;
	pthread_cond_t ready_cond;
	struct svc_snapshot *cur;
	const struct svc_key *expired; /* cached for ?expired=true, or NULL */
	int64_t expired_exp;

	/* work_lock guards keys, gen, version and every store access. */
	pthread_mutex_t work_lock;
	struct svc_key *keys;
	int64_t *bad; /* kids of records that do not load, sorted */
	size_t n_bad, cap_bad;
	int64_t foreign_kid; /* a key sealed under another secret, or 0 */
	uint64_t gen;
	uint64_t version;
	int have_version;
	int64_t next_keygen_try;
	int last_fault;		/* the last background failure logged */
	int64_t last_fault_log; /* and when */

	pthread_mutex_t stop_lock;
	pthread_cond_t stop_cond;
	int stopping;
	int thread_started;
	pthread_t thread;
};

static int64_t svc_now(const struct jwks_service *svc)
{
	if (svc->opts.clock)
		return svc->opts.clock(svc->opts.clock_arg);
	return (int64_t)time(NULL);
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
svc_log(const struct jwks_service *svc, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (svc->opts.log)
		svc->opts.log(svc->opts.log_arg, line);
	else
		fprintf(stderr, "jwksd: %s\n", line);
}

static void svc_key_free(struct svc_key *k)
{
	if (!k)
		return;
	signer_key_free(k->key);
	free(k->header_b64);
	free(k);
}

/*
 * Wrap a parsed key (taking ownership of key, also on failure) in an entry
 * with its JWS header pre-encoded.
 */
static int svc_key_new(struct svc_key **out, int64_t kid, int64_t exp,
		       struct signer_key *key)
{
	char header[128];
	struct svc_key *k;
	int n;

	*out = NULL;
	n = snprintf(header, sizeof(header),
		     "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%" PRId64 "\"}",
		     signer_key_alg(key), kid);
	k = calloc(1, sizeof(*k));
	if (!k || n < 0 || (size_t)n >= sizeof(header))
		goto fail;
	k->header_b64 = malloc(B64URL_ENCODED_LEN((size_t)n) + 1);
	if (!k->header_b64)
		goto fail;
	k->header_len = b64url_encode(k->header_b64, header, (size_t)n);
	k->kid = kid;
	k->exp = exp;
	k->key = key;
	*out = k;
	return 0;
fail:
	free(k);
	signer_key_free(key);
	return KS_ENOMEM;
}

static struct svc_key *svc_find_key(const struct jwks_service *svc, int64_t kid)
{
	struct svc_key *k;

	for (k = svc->keys; k; k = k->next)
		if (k->kid == kid)
			return k;
	return NULL;
}

/*
 * A key sealed under another secret than the service's (a rewrap while it
 * runs, or another server's secret): a key made now would mix two secrets
 * in the store, and the next start would refuse it. Rotation stops.
 */
static void svc_foreign(struct jwks_service *svc, int64_t kid)
{
	if (svc->foreign_kid)
		return;
	svc->foreign_kid = kid;
	svc_log(svc,
		"key %" PRId64 " is encrypted under another secret than this "
		"server's: no new key is made until jwksd restarts with the "
		"store's secret",
		kid);
}

static int svc_is_bad(int64_t kid, void *arg)
{
	const struct jwks_service *svc = arg;

	return svc->n_bad && bsearch(&kid, svc->bad, svc->n_bad,
				     sizeof(*svc->bad), ks_kid_cmp) != NULL;
}

/* Remember a record that does not load, so it is tried (and logged) once. */
static void svc_mark_bad(struct jwks_service *svc, int64_t kid)
{
	size_t i;

	if (svc->n_bad == svc->cap_bad) {
		size_t cap = svc->cap_bad ? svc->cap_bad * 2 : 8;
		int64_t *v = realloc(svc->bad, cap * sizeof(*v));

		if (!v)
			return;
		svc->bad = v;
		svc->cap_bad = cap;
	}
	for (i = svc->n_bad; i > 0 && svc->bad[i - 1] > kid; i--)
		svc->bad[i] = svc->bad[i - 1];
	svc->bad[i] = kid;
	svc->n_bad++;
}

/* Add a loaded record to the key list (work_lock held). */
static int svc_adopt_record(struct jwks_service *svc,
			    const struct ks_record *rec, struct svc_key **out)
{
	struct signer_key *key;
	struct svc_key *k;
	struct ks_err e = {{0}};
	int rc;

	*out = NULL;
	if (svc_is_bad(rec->kid, svc))
		return KS_ECORRUPT;
	rc = ka_load_key(rec, svc->opts.kek, &key, &e);
	if (rc) {
		svc_log(svc, "key %" PRId64 " skipped: %s (%s)", rec->kid,
			ks_strerror(rc), e.text);
		if (rc != KS_ENOMEM)
			svc_mark_bad(svc, rec->kid);
		if (rc == KS_EACCES)
			svc_foreign(svc, rec->kid);
		return rc;
	}
	rc = svc_key_new(&k, rec->kid, rec->exp, key);
	if (rc)
		return rc;
	k->next = svc->keys;
	svc->keys = k;
	*out = k;
	return 0;
}

static void svc_snapshot_release(struct svc_snapshot *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		free(s->body);
		free(s);
	}
}

/*
 * The current snapshot with a reference held, waiting for the first one
 * up to ready_timeout_ms. NULL when none was ready in time.
 */
static struct svc_snapshot *svc_acquire(struct jwks_service *svc)
{
	struct svc_snapshot *s;
	struct timespec deadline;

	pthread_mutex_lock(&svc->snap_lock);
	if (!svc->cur) {
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_sec += svc->opts.ready_timeout_ms / 1000;
		deadline.tv_nsec +=
			(long)(svc->opts.ready_timeout_ms % 1000) * 1000000L;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
		while (!svc->cur &&
		       pthread_cond_timedwait(&svc->ready_cond, &svc->snap_lock,
					      &deadline) != ETIMEDOUT)
			;
	}
	s = svc->cur;
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&svc->snap_lock);
	return s;
}

/* Collects a signer's public members into a JSON object, allowlisted. */
static int svc_jwk_member(const char *name, const char *value, void *arg)
{
	static const char *const allowed[] = {"kty", "n", "e", "crv", "x", "y"};
	size_t i;

	for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		if (!strcmp(name, allowed[i]))
			return json_object_set_new((json_t *)arg, name,
						   json_string(value))
				       ? KS_ENOMEM
				       : 0;
	return 0;
}

/* One JWK: kid, kty, use, alg, then the key's own public members. */
static json_t *svc_jwk(const struct svc_key *k)
{
	json_t *members = json_object(), *jwk = json_object();
	const char *name;
	json_t *value;
	char kid[24];

	if (!members || !jwk ||
	    signer_public_jwk(k->key, svc_jwk_member, members) ||
	    !json_object_get(members, "kty"))
		goto fail;
	snprintf(kid, sizeof(kid), "%" PRId64, k->kid);
	if (json_object_set_new(jwk, "kid", json_string(kid)) ||
	    json_object_set(jwk, "kty", json_object_get(members, "kty")) ||
	    json_object_set_new(jwk, "use", json_string("sig")) ||
	    json_object_set_new(jwk, "alg",
				json_string(signer_key_alg(k->key))))
		goto fail;
	json_object_foreach(members, name, value)
	{
		if (strcmp(name, "kty") && json_object_set(jwk, name, value))
			goto fail;
	}
	json_decref(members);
	return jwk;
fail:
	json_decref(members);
	json_decref(jwk);
	return NULL;
}

static int svc_cmp_kid(const void *a, const void *b)
{
	const struct svc_key *ka = *(const struct svc_key *const *)a;
	const struct svc_key *kb = *(const struct svc_key *const *)b;

	return (ka->kid > kb->kid) - (ka->kid < kb->kid);
}

static uint64_t svc_fnv1a(const char *p, size_t n)
{
	uint64_t h = 14695981039346656037ULL;

	while (n--) {
		h ^= (unsigned char)*p++;
		h *= 1099511628211ULL;
	}
	return h;
}

/* The policy's view of a key. */
static struct lc_key svc_lc_key(const struct svc_key *k)
{
	struct lc_key v = {k->kid, k->exp, k->has_life, 1, k->life};

	return v;
}

/*
 * The keys the last store listing saw, in kid order, as the policy sees
 * them, with the entries they came from (work_lock held). *n_out receives
 * the count; the caller frees both arrays. Returns 0 or KS_ENOMEM.
 */
static int svc_view(const struct jwks_service *svc, struct lc_key **out,
		    struct svc_key ***from, size_t *n_out)
{
	struct svc_key *k;
	size_t n = 0;

	for (k = svc->keys; k; k = k->next)
		n++;
	*out = calloc(n ? n : 1, sizeof(**out));
	*from = calloc(n ? n : 1, sizeof(**from));
	if (!*out || !*from) {
		free(*out);
		free(*from);
		return KS_ENOMEM;
	}
	n = 0;
	for (k = svc->keys; k; k = k->next)
		if (k->seen_gen == svc->gen)
			(*from)[n++] = k;
	/* In kid order: the JWKS body is the same for the same set. */
	qsort(*from, n, sizeof(**from), svc_cmp_kid);
	for (*n_out = 0; *n_out < n; (*n_out)++)
		(*out)[*n_out] = svc_lc_key((*from)[*n_out]);
	return 0;
}

static void svc_earliest(int64_t *t, int64_t cand, int64_t now)
{
	if (cand > now && cand < *t)
		*t = cand;
}

/*
 * Build a snapshot of the keys the last store listing saw, as published
 * at now, and publish it (work_lock held).
 */
static int svc_rebuild(struct jwks_service *svc, int64_t now)
{
	struct svc_snapshot *s = NULL, *old;
	struct svc_key **from = NULL;
	struct lc_key *view = NULL;
	const struct lc_key *signer;
	struct lc_plan plan;
	json_t *root = NULL, *arr = NULL;
	size_t n = 0, i;
	int rc = KS_ENOMEM;

	s = calloc(1, sizeof(*s));
	root = json_object();
	arr = json_array();
	if (!s || !root || !arr || json_object_set(root, "keys", arr) ||
	    svc_view(svc, &view, &from, &n))
		goto out;

	s->valid_until = INT64_MAX;
	s->next_change = INT64_MAX;
	for (i = 0; i < n; i++) {
		const struct lc_key *v = &view[i];

		svc_earliest(&s->valid_until, lc_activate_at(v), now);
		svc_earliest(&s->valid_until, lc_retire_at(v), now);
		svc_earliest(&s->valid_until, lc_token_cap(v, &svc->policy),
			     now);
		if (!lc_published(v, now))
			continue;
		svc_earliest(&s->valid_until, v->exp, now);
		svc_earliest(&s->next_change, v->exp, now);
	}
	for (i = 0; i < n; i++)
		if (lc_published(&view[i], now) &&
		    json_array_append_new(arr, svc_jwk(from[i])))
			goto out;
	signer = lc_choose_signer(view, n, now, &svc->policy);
	s->signing = signer ? from[signer - view] : NULL;
	s->sign_cap = signer ? lc_token_cap(signer, &svc->policy) : 0;
	lc_plan_at(view, n, now, &svc->policy, 0, &plan);
	/*
	 * The set also changes when the next key is made. While that is
	 * overdue (a store that fails), caches must not keep the set.
	 */
	svc_earliest(&s->next_change, plan.due, now);
	if (plan.action != LC_NOTHING || plan.due <= now)
		s->next_change = now;

	s->body = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!s->body)
		goto out;
	s->body_len = strlen(s->body);
	snprintf(s->etag, sizeof(s->etag), "\"%016" PRIx64 "\"",
		 svc_fnv1a(s->body, s->body_len));
	atomic_init(&s->refs, 1);

	pthread_mutex_lock(&svc->snap_lock);
	old = svc->cur;
	s->last_modified =
		old && !strcmp(old->etag, s->etag) ? old->last_modified : now;
	svc->cur = s;
	svc->expired = NULL;
	pthread_cond_broadcast(&svc->ready_cond);
	pthread_mutex_unlock(&svc->snap_lock);
	svc_snapshot_release(old);
	s = NULL;
	rc = 0;
out:
	if (rc)
		svc_log(svc, "snapshot rebuild failed: %s", ks_strerror(rc));
	if (s)
		free(s->body);
	free(s);
	free(view);
	free(from);
	json_decref(arr);
	json_decref(root);
	return rc;
}

struct svc_load_ctx {
	struct jwks_service *svc;
	uint64_t gen;
};

/*
 * Requests read only a key's kid, parsed key and header, which never
 * change; exp and the lifecycle entry change under work_lock and are read
 * under it (a snapshot copies what requests need).
 */
static int svc_load_one(const struct ks_record *rec, void *arg)
{
	struct svc_load_ctx *ctx = arg;
	struct svc_key *k = svc_find_key(ctx->svc, rec->kid);

	if (!k && svc_adopt_record(ctx->svc, rec, &k) == KS_ENOMEM)
		return KS_ENOMEM;
	if (k) {
		k->seen_gen = ctx->gen;
		k->exp = rec->exp;
		/* Loaded already: a rewrap changes only the blob. */
		if (kek_is_sealed(rec->blob, rec->blob_len) &&
		    !kek_sealed_by(ctx->svc->opts.kek, rec->blob,
				   rec->blob_len))
			svc_foreign(ctx->svc, rec->kid);
	}
	return 0;
}

static int svc_load_life(const struct ks_life *life, void *arg)
{
	struct jwks_service *svc = arg;
	struct svc_key *k = svc_find_key(svc, life->kid);

	if (k && svc->cur && life->revoked_at != KS_NEVER &&
	    (!k->has_life || k->life.revoked_at == KS_NEVER))
		svc_log(svc,
			"key %" PRId64 " revoked: it leaves the JWKS and "
			"never signs again",
			k->kid);
	if (k) {
		k->has_life = 1;
		k->life = *life;
	}
	return 0;
}

/*
 * Read the store's unexpired keys, parse the ones not seen yet, and
 * rebuild the snapshot (work_lock held). Keys that left the store leave
 * the published set; a failed listing keeps the previous set.
 */
static int svc_reload(struct jwks_service *svc, int64_t now, struct ks_err *err)
{
	struct svc_load_ctx ctx = {svc, svc->gen + 1};
	uint64_t version;
	int rc, have_version;

	have_version = ks_version(svc->store, &version, NULL) == 0;
	rc = ks_list(svc->store, now, INT64_MAX, svc_load_one, &ctx, err);
	/* After the records: see ks_life_list(). */
	if (!rc)
		rc = ks_life_list(svc->store, svc_load_life, svc, err);
	if (rc)
		return rc;
	svc->gen = ctx.gen;
	svc->have_version = have_version;
	svc->version = version;
	return svc->cur ? svc_rebuild(svc, now) : 0;
}

int jwks_service_new(struct jwks_service **out, struct ks_store *store,
		     const struct jwks_service_options *opts,
		     struct ks_err *err)
{
	struct jwks_service *svc;
	char why[256];
	int rc;

	if (!out)
		return KS_EINVAL;
	*out = NULL;
	if (!store || !opts || !opts->alg || !signer_alg_supported(opts->alg) ||
	    !opts->poll_ms)
		return ks_err_set(err, KS_EINVAL, "invalid service options");
	svc = calloc(1, sizeof(*svc));
	if (!svc)
		return KS_ENOMEM;
	svc->store = store;
	svc->opts = *opts;
	svc->policy = (struct lc_policy){opts->key_ttl, opts->token_ttl,
					 opts->jwks_max_age, opts->margin,
					 opts->rotation_lead};
	if (lc_policy_check(&svc->policy, why, sizeof(why))) {
		free(svc);
		return ks_err_set(err, KS_EINVAL, "%s", why);
	}
	pthread_mutex_init(&svc->snap_lock, NULL);
	pthread_cond_init(&svc->ready_cond, NULL);
	pthread_mutex_init(&svc->work_lock, NULL);
	pthread_mutex_init(&svc->stop_lock, NULL);
	pthread_cond_init(&svc->stop_cond, NULL);

	rc = svc_reload(svc, svc_now(svc), err);
	if (rc) {
		jwks_service_free(svc);
		return rc;
	}
	*out = svc;
	return 0;
}

struct svc_keygen {
	const char *alg;
	struct signer_key *key;
	int rc;
	struct ks_err err;
};

static void *svc_keygen_thread(void *arg)
{
	struct svc_keygen *g = arg;

	g->rc = signer_generate(&g->key, g->alg, &g->err);
	return NULL;
}

/* The rotation plan at now for the keys loaded (work_lock held). */
static int svc_plan(const struct jwks_service *svc, int64_t now,
		    struct lc_plan *plan)
{
	struct svc_key **from = NULL;
	struct lc_key *view = NULL;
	size_t n = 0;

	if (svc_view(svc, &view, &from, &n))
		return KS_ENOMEM;
	lc_plan_at(view, n, now, &svc->policy, 0, plan);
	free(view);
	free(from);
	return 0;
}

/*
 * Carry out the plan with key (borrowed), then reload (work_lock held).
 * KS_EEXISTS: another process did it first; the reload shows its key.
 */
static int svc_rotate(struct jwks_service *svc, const struct signer_key *key,
		      int64_t now, struct ks_err *err)
{
	struct lc_plan plan;
	int64_t kid = 0;
	int rc;

	rc = ka_rotate(svc->store, svc->opts.kek, &svc->policy, key, now, 0,
		       svc_is_bad, svc, &plan, &kid, err);
	if (!rc && plan.action == LC_BOOTSTRAP && svc->cur)
		svc_log(svc,
			"key %" PRId64 " signs at once: no published key "
			"could sign",
			kid);
	if (!rc && plan.extend_kid > 0)
		svc_log(svc,
			"key %" PRId64 " made late: key %" PRId64 " signs "
			"until %" PRId64 " instead",
			kid, plan.extend_kid, plan.extend_retire_at);
	if (!rc || rc == KS_EEXISTS)
		rc = svc_reload(svc, now, err);
	return rc;
}

static int svc_count_one(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(size_t *)arg)++;
	return 0;
}

static void *svc_thread_main(void *arg);

/* An empty store gets an expired key too, for ?expired=true. */
static int svc_add_expired(struct jwks_service *svc,
			   const struct signer_key *key, int64_t now,
			   struct ks_err *err)
{
	int64_t exp = now - 3600;
	struct ks_life life = {0, now, exp, exp, KS_NEVER};

	return ka_add_key(svc->store, svc->opts.kek, key, exp, &life, NULL,
			  err);
}

int jwks_service_start(struct jwks_service *svc, size_t *key_count_out,
		       struct ks_err *err)
{
	struct svc_keygen gen[2] = {{.alg = svc->opts.alg},
				    {.alg = svc->opts.alg}};
	pthread_t tid[2];
	int started[2] = {0, 0};
	size_t count = 0, want, i;
	int need_signer, need_expired;
	struct lc_plan plan;
	int64_t now;
	int rc;

	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = ks_list(svc->store, INT64_MIN, INT64_MAX, svc_count_one, &count,
		     err);
	if (!rc)
		rc = svc_plan(svc, now, &plan);
	if (rc)
		goto out;
	need_signer = plan.action == LC_BOOTSTRAP;
	need_expired = count == 0;
	want = (size_t)(need_signer + need_expired);
	for (i = 0; i < want; i++)
		started[i] = !pthread_create(&tid[i], NULL, svc_keygen_thread,
					     &gen[i]);
	for (i = 0; i < want; i++) {
		if (started[i])
			pthread_join(tid[i], NULL);
		else
			svc_keygen_thread(&gen[i]);
	}
	for (i = 0; i < want; i++) {
		if (gen[i].rc) {
			rc = ks_err_set(err, gen[i].rc, "key generation: %s",
					gen[i].err.text);
			goto out;
		}
	}
	/* The signing key first, so that it gets the lower kid. */
	if (need_signer) {
		rc = svc_rotate(svc, gen[0].key, now, err);
		if (!rc)
			count++;
		else if (rc != KS_EEXISTS)
			goto out;
	}
	if (need_expired) {
		rc = svc_add_expired(svc, gen[want - 1].key, now, err);
		if (rc)
			goto out;
		count++;
	}
	rc = svc_reload(svc, now, err);
	if (!rc && !svc->cur)
		rc = svc_rebuild(svc, now);
	if (rc)
		goto out;
	if (!pthread_create(&svc->thread, NULL, svc_thread_main, svc))
		svc->thread_started = 1;
	else
		svc_log(svc, "background thread not started: %s",
			strerror(errno));
	if (key_count_out)
		*key_count_out = count;
out:
	for (i = 0; i < 2; i++)
		signer_key_free(gen[i].key);
	pthread_mutex_unlock(&svc->work_lock);
	return rc;
}

int jwks_service_publish(struct jwks_service *svc, struct ks_err *err)
{
	int64_t now;
	int rc;

	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = svc_reload(svc, now, err);
	if (!rc && !svc->cur)
		rc = svc_rebuild(svc, now);
	pthread_mutex_unlock(&svc->work_lock);
	return rc;
}

/*
 * Log a background failure, once per kind of failure and minute: a store
 * that stays broken must not fill the log four times a second.
 */
static void svc_fault(struct jwks_service *svc, int64_t now, const char *what,
		      int rc, const struct ks_err *e)
{
	if (rc == svc->last_fault && now - svc->last_fault_log < 60)
		return;
	svc->last_fault = rc;
	svc->last_fault_log = now;
	svc_log(svc, "%s failed: %s (%s)", what, ks_strerror(rc), e->text);
}

/* One pass of background work (called without locks). */
void jwks_service_tick(struct jwks_service *svc)
{
	struct signer_key *key = NULL;
	struct ks_err e = {{0}};
	struct lc_plan plan = {.action = LC_NOTHING};
	uint64_t version;
	int64_t now;
	int rc;

	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = ks_version(svc->store, &version, &e);
	if (rc == KS_EUNSUPPORTED ||
	    (!rc && (!svc->have_version || version != svc->version))) {
		rc = svc_reload(svc, now, &e);
		if (rc)
			svc_fault(svc, now, "reloading keys", rc, &e);
	} else if (rc) {
		svc_fault(svc, now, "checking the store", rc, &e);
	} else if (svc->cur && now >= svc->cur->valid_until) {
		svc_rebuild(svc, now);
	}
	if (now >= svc->next_keygen_try && !svc->foreign_kid)
		svc_plan(svc, now, &plan);
	pthread_mutex_unlock(&svc->work_lock);
	if (plan.action == LC_NOTHING)
		return;

	/* Generate outside the lock: it takes a good fraction of a second. */
	rc = signer_generate(&key, svc->opts.alg, &e);
	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	if (!rc)
		rc = svc_rotate(svc, key, now, &e);
	if (rc == KS_EEXISTS)
		rc = 0;
	if (rc) {
		svc->next_keygen_try = now + 5;
		svc_fault(svc, now, "adding a new key", rc, &e);
	}
	pthread_mutex_unlock(&svc->work_lock);
	signer_key_free(key);
}

static void *svc_thread_main(void *arg)
{
	struct jwks_service *svc = arg;
	struct timespec until;

	pthread_mutex_lock(&svc->stop_lock);
	while (!svc->stopping) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += (long)svc->opts.poll_ms * 1000000L;
		until.tv_sec += until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&svc->stop_cond, &svc->stop_lock,
				       &until);
		if (svc->stopping)
			break;
		pthread_mutex_unlock(&svc->stop_lock);
		jwks_service_tick(svc);
		pthread_mutex_lock(&svc->stop_lock);
	}
	pthread_mutex_unlock(&svc->stop_lock);
	return NULL;
}

void jwks_service_free(struct jwks_service *svc)
{
	struct svc_key *k, *next;

	if (!svc)
		return;
	if (svc->thread_started) {
		pthread_mutex_lock(&svc->stop_lock);
		svc->stopping = 1;
		pthread_cond_signal(&svc->stop_cond);
		pthread_mutex_unlock(&svc->stop_lock);
		pthread_join(svc->thread, NULL);
	}
	svc_snapshot_release(svc->cur);
	for (k = svc->keys; k; k = next) {
		next = k->next;
		svc_key_free(k);
	}
	free(svc->bad);
	pthread_mutex_destroy(&svc->snap_lock);
	pthread_cond_destroy(&svc->ready_cond);
	pthread_mutex_destroy(&svc->work_lock);
	pthread_mutex_destroy(&svc->stop_lock);
	pthread_cond_destroy(&svc->stop_cond);
	free(svc);
}

/*
 * The current snapshot, rebuilt first (without touching the store) when
 * one of its keys has expired since it was built.
 */
static struct svc_snapshot *svc_acquire_fresh(struct jwks_service *svc,
					      int64_t now)
{
	struct svc_snapshot *s = svc_acquire(svc);

	if (s && now >= s->valid_until) {
		svc_snapshot_release(s);
		pthread_mutex_lock(&svc->work_lock);
		if (svc->cur && now >= svc->cur->valid_until)
			svc_rebuild(svc, now);
		pthread_mutex_unlock(&svc->work_lock);
		s = svc_acquire(svc);
	}
	return s;
}

/* The kids and expiries of the expired keys, for picking one to sign. */
struct svc_kid_exp {
	int64_t kid, exp;
};

struct svc_expired_set {
	struct svc_kid_exp *v;
	size_t n, cap;
};

/* A revoked key never signs again, ?expired=true included. */
static int svc_drop_revoked(const struct ks_life *life, void *arg)
{
	struct svc_expired_set *set = arg;
	size_t i;

	if (life->revoked_at == KS_NEVER)
		return 0;
	for (i = 0; i < set->n; i++) {
		if (set->v[i].kid == life->kid) {
			set->v[i] = set->v[--set->n];
			break;
		}
	}
	return 0;
}

static int svc_collect_expired(const struct ks_record *rec, void *arg)
{
	struct svc_expired_set *set = arg;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 64;
		void *v = realloc(set->v, cap * sizeof(*set->v));

		if (!v)
			return KS_ENOMEM;
		set->v = v;
		set->cap = cap;
	}
	set->v[set->n].kid = rec->kid;
	set->v[set->n].exp = rec->exp;
	set->n++;
	return 0;
}

/* Latest expiry first; of equal ones, the newest kid. */
static int svc_cmp_expired(const void *a, const void *b)
{
	const struct svc_kid_exp *x = a, *y = b;

	if (x->exp != y->exp)
		return x->exp < y->exp ? 1 : -1;
	return (x->kid < y->kid) - (x->kid > y->kid);
}

/*
 * The most recently expired key that can be parsed: cached after the first
 * request, looked up in the store only when the cache is empty. Only the
 * kids and expiries are read for all expired keys; key rows are read (and
 * parsed) one at a time, newest expiry first, skipping undecodable ones.
 */
static int svc_expired_key(struct jwks_service *svc, int64_t now,
			   const struct svc_key **out, int64_t *exp_out,
			   struct ks_err *err)
{
	struct svc_expired_set set = {NULL, 0, 0};
	struct svc_key *k = NULL;
	size_t i;
	int rc;

	pthread_mutex_lock(&svc->snap_lock);
	*out = svc->expired;
	*exp_out = svc->expired_exp;
	pthread_mutex_unlock(&svc->snap_lock);
	if (*out)
		return 0;

	pthread_mutex_lock(&svc->work_lock);
	rc = ks_list(svc->store, INT64_MIN, now, svc_collect_expired, &set,
		     err);
	if (!rc)
		rc = ks_life_list(svc->store, svc_drop_revoked, &set, err);
	if (!rc && set.n)
		qsort(set.v, set.n, sizeof(*set.v), svc_cmp_expired);
	for (i = 0; !rc && !k && i < set.n; i++) {
		struct ks_record rec = {0};

		k = svc_find_key(svc, set.v[i].kid);
		if (k) {
			*exp_out = set.v[i].exp;
			break;
		}
		rc = ks_get(svc->store, set.v[i].kid, &rec, err);
		if (rc == KS_ENOTFOUND) {
			rc = 0;
			continue;
		}
		if (!rc && svc_adopt_record(svc, &rec, &k) == KS_ENOMEM)
			rc = KS_ENOMEM;
		if (k)
			*exp_out = rec.exp;
		ks_record_release(&rec);
	}
	if (!rc && !k)
		rc = ks_err_set(err, KS_ENOTFOUND,
				"the store has no usable expired key");
	if (!rc) {
		pthread_mutex_lock(&svc->snap_lock);
		svc->expired = k;
		svc->expired_exp = *exp_out;
		pthread_mutex_unlock(&svc->snap_lock);
		*out = k;
	}
	pthread_mutex_unlock(&svc->work_lock);
	free(set.v);
	return rc;
}

/* header_b64 "." b64url(claims) "." b64url(signature), NUL-terminated. */
static int svc_sign_token(const struct svc_key *k, int64_t iat, int64_t exp,
			  char *out, size_t cap, size_t *len_out)
{
	unsigned char sig[SIGNER_SIG_MAX];
	size_t sig_len = sizeof(sig), pos;
	char claims[96];
	int n, rc;

	n = snprintf(claims, sizeof(claims),
		     "{\"iat\":%" PRId64 ",\"exp\":%" PRId64 "}", iat, exp);
	if (n < 0 || (size_t)n >= sizeof(claims) ||
	    k->header_len + B64URL_ENCODED_LEN((size_t)n) +
			    B64URL_ENCODED_LEN(sizeof(sig)) + 3 >
		    cap)
		return KS_EINVAL;
	memcpy(out, k->header_b64, k->header_len);
	pos = k->header_len;
	out[pos++] = '.';
	pos += b64url_encode(out + pos, claims, (size_t)n);
	rc = signer_sign(k->key, out, pos, sig, &sig_len);
	if (rc)
		return rc;
	out[pos++] = '.';
	pos += b64url_encode(out + pos, sig, sig_len);
	*len_out = pos;
	return 0;
}

int jwks_service_issue(struct jwks_service *svc, int expired, char *out,
		       size_t cap, size_t *len_out, struct ks_err *err)
{
	struct svc_snapshot *s = NULL;
	const struct svc_key *k;
	int64_t now, iat, exp, key_exp;
	int rc;

	if (!svc || !out || !len_out)
		return KS_EINVAL;
	*len_out = 0;
	now = svc_now(svc);
	if (expired) {
		rc = svc_expired_key(svc, now, &k, &key_exp, err);
		if (rc)
			return rc;
		exp = key_exp < now ? key_exp : now - 1;
		/* A store may hold any exp: never overflow going back. */
		iat = exp >= INT64_MIN + svc->opts.token_ttl
			      ? exp - svc->opts.token_ttl
			      : exp;
	} else {
		s = svc_acquire_fresh(svc, now);
		if (!s || !s->signing) {
			svc_snapshot_release(s);
			return ks_err_set(err, KS_ENOKEY,
					  "no unexpired signing key");
		}
		k = s->signing;
		iat = now;
		exp = now + svc->opts.token_ttl;
		if (exp > s->sign_cap)
			exp = s->sign_cap;
	}
	rc = svc_sign_token(k, iat, exp, out, cap, len_out);
	if (rc)
		ks_err_set(err, rc, "signing with key %" PRId64 " failed",
			   k->kid);
	svc_snapshot_release(s);
	return rc;
}

int jwks_service_jwks(struct jwks_service *svc, jwks_doc_fn fn, void *arg)
{
	struct svc_snapshot *s;
	struct jwks_doc doc;
	int64_t now;
	int rc;

	if (!svc || !fn)
		return KS_EINVAL;
	now = svc_now(svc);
	s = svc_acquire_fresh(svc, now);
	if (!s)
		return KS_ENOKEY;
	doc.body = s->body;
	doc.body_len = s->body_len;
	doc.etag = s->etag;
	doc.last_modified = s->last_modified;
	doc.max_age = s->next_change > now ? s->next_change - now : 0;
	if (doc.max_age > svc->opts.jwks_max_age)
		doc.max_age = svc->opts.jwks_max_age;
	rc = fn(&doc, arg);
	svc_snapshot_release(s);
	return rc;
}
