/*
 * The issuer: loads keys from the store, keeps the published snapshot,
 * signs tokens. See include/service.h for the contract.
 *
 * Two locks, and which side takes which:
 *
 * - work_lock serializes the background work: every store call, the list
 *   of records that do not load, the change counter last seen. Requests
 *   never take it, so a slow, locked or unreachable store delays the next
 *   snapshot, never an answer.
 * - build_lock guards what a snapshot is built from: the key array and each
 *   key's exp and lifecycle entry. It is held only for memory work (a merge
 *   of a listing already read, or a rebuild), never across a store call.
 *   The background work changes those only while it holds both locks, so
 *   with work_lock held it may read them without build_lock.
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
 * One parsed key, reference-counted: the key array holds one reference,
 * and each snapshot one per key it signs with. kid, key and header never
 * change; exp, has_life and life change under build_lock.
 */
struct svc_key {
	atomic_uint refs;
	int64_t kid;
	int64_t exp;
	int has_life;
	struct ks_life life;
	struct signer_key *key;
	char *header_b64; /* b64url of the JWS header, ready to sign */
	size_t header_len;
};

/* What requests read. Immutable once published. */
struct svc_snapshot {
	atomic_uint refs;
	int64_t valid_until; /* when the signer or the published set changes */
	int64_t next_change; /* when the published set changes */
	int64_t last_modified;
	struct svc_key *signing; /* referenced, or NULL */
	int64_t sign_cap; /* the latest exp of a token signing may make */
	struct svc_key *expired; /* for ?expired=true: referenced, or NULL */
	int64_t expired_exp;
	char *body;
	size_t body_len;
	char etag[24];
};

struct jwks_service {
	struct ks_store *store;
	struct jwks_service_options opts;
	struct lc_policy policy;

	/* snap_lock guards cur; held only for a swap or a reference. */
	pthread_mutex_t snap_lock;
	pthread_cond_t ready_cond;
	struct svc_snapshot *cur;

	/*
	 * build_lock: the store's unexpired keys at the last listing, in kid
	 * order, and its most recently expired key that may sign for
	 * ?expired=true (not revoked, loads), with that key's exp.
	 */
	pthread_mutex_t build_lock;
	struct svc_key **keys;
	size_t n_keys;
	struct svc_key *store_expired;
	int64_t store_expired_exp;

	/* work_lock: the background work's state. */
	pthread_mutex_t work_lock;
	int64_t *bad; /* kids of records that do not load, sorted */
	size_t n_bad, cap_bad;
	int64_t foreign_kid; /* a key sealed under another secret, or 0 */
	uint64_t version;
	int have_version;
	int64_t next_keygen_try;
	int last_fault;		/* the last background failure logged */
	int64_t last_fault_log; /* and when */
	int store_down;		/* the store failed; logged once */

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

/* A condition variable whose timed waits follow CLOCK_MONOTONIC. */
static void svc_cond_init(pthread_cond_t *cond)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(cond, &attr);
	pthread_condattr_destroy(&attr);
}

/* The CLOCK_MONOTONIC time ms milliseconds from now. */
static struct timespec svc_deadline(unsigned ms)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

static struct svc_key *svc_key_ref(struct svc_key *k)
{
	if (k)
		atomic_fetch_add(&k->refs, 1);
	return k;
}

/* Drop a reference; the last one frees the key (its material wiped). */
static void svc_key_unref(struct svc_key *k)
{
	if (!k || atomic_fetch_sub(&k->refs, 1) != 1)
		return;
	signer_key_free(k->key);
	free(k->header_b64);
	free(k);
}

/*
 * Wrap a parsed key (taking ownership of key, also on failure) in an entry
 * with its JWS header pre-encoded, holding one reference.
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
	atomic_init(&k->refs, 1);
	*out = k;
	return 0;
fail:
	free(k);
	signer_key_free(key);
	return KS_ENOMEM;
}

static int svc_cmp_kid(const void *a, const void *b)
{
	const struct svc_key *ka = *(const struct svc_key *const *)a;
	const struct svc_key *kb = *(const struct svc_key *const *)b;

	return (ka->kid > kb->kid) - (ka->kid < kb->kid);
}

/* The key kid of the array, or NULL (build_lock or work_lock held). */
static struct svc_key *svc_find_key(const struct jwks_service *svc, int64_t kid)
{
	struct svc_key probe = {.kid = kid};
	const struct svc_key *p = &probe;
	struct svc_key **hit;

	if (!svc->n_keys)
		return NULL;
	hit = bsearch(&p, svc->keys, svc->n_keys, sizeof(*svc->keys),
		      svc_cmp_kid);
	return hit ? *hit : NULL;
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

/*
 * Parse a record into a new key entry (work_lock held). A record that does
 * not load is logged once and remembered. Returns 0, KS_ENOMEM, or the
 * reason the record does not load.
 */
static int svc_load_record(struct jwks_service *svc,
			   const struct ks_record *rec, struct svc_key **out)
{
	struct signer_key *key;
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
	return svc_key_new(out, rec->kid, rec->exp, key);
}

static void svc_snapshot_release(struct svc_snapshot *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		svc_key_unref(s->signing);
		svc_key_unref(s->expired);
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
		deadline = svc_deadline(svc->opts.ready_timeout_ms);
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
 * The key array as the policy sees it, in kid order (build_lock or
 * work_lock held); the caller frees it. Returns NULL when out of memory.
 */
static struct lc_key *svc_view(const struct jwks_service *svc)
{
	struct lc_key *view =
		calloc(svc->n_keys ? svc->n_keys : 1, sizeof(*view));
	size_t i;

	for (i = 0; view && i < svc->n_keys; i++)
		view[i] = svc_lc_key(svc->keys[i]);
	return view;
}

static void svc_earliest(int64_t *t, int64_t cand, int64_t now)
{
	if (cand > now && cand < *t)
		*t = cand;
}

/* Whether a key may sign for ?expired=true at now. */
static int svc_expired_ok(const struct svc_key *k, int64_t now)
{
	return k->exp <= now &&
	       !(k->has_life && k->life.revoked_at != KS_NEVER);
}

/*
 * The key that signs ?expired=true at now: the most recently expired one
 * of the array and the store's (latest exp first, then the newest kid).
 */
static struct svc_key *svc_pick_expired(const struct jwks_service *svc,
					int64_t now, int64_t *exp_out)
{
	struct svc_key *best = svc->store_expired;
	int64_t best_exp = svc->store_expired_exp;
	size_t i;

	for (i = 0; i < svc->n_keys; i++) {
		struct svc_key *k = svc->keys[i];

		if (svc_expired_ok(k, now) &&
		    (!best || k->exp > best_exp ||
		     (k->exp == best_exp && k->kid > best->kid))) {
			best = k;
			best_exp = k->exp;
		}
	}
	*exp_out = best_exp;
	return best;
}

/*
 * Build a snapshot of the key array as published at now, and publish it
 * (build_lock held; memory only, never the store).
 */
static int svc_rebuild(struct jwks_service *svc, int64_t now)
{
	struct svc_snapshot *s = NULL, *old;
	struct lc_key *view = NULL;
	const struct lc_key *signer;
	struct lc_plan plan;
	json_t *root = NULL, *arr = NULL;
	size_t n = svc->n_keys, i;
	int rc = KS_ENOMEM;

	s = calloc(1, sizeof(*s));
	root = json_object();
	arr = json_array();
	if (!s || !root || !arr || json_object_set(root, "keys", arr) ||
	    !(view = svc_view(svc)))
		goto out;

	s->valid_until = INT64_MAX;
	s->next_change = INT64_MAX;
	for (i = 0; i < n; i++) {
		const struct lc_key *v = &view[i];

		svc_earliest(&s->valid_until, lc_activate_at(v), now);
		svc_earliest(&s->valid_until, lc_retire_at(v), now);
		svc_earliest(&s->valid_until, lc_token_cap(v, &svc->policy),
			     now);
		/* An expiry also changes the key for ?expired=true. */
		svc_earliest(&s->valid_until, v->exp, now);
		if (lc_published(v, now))
			svc_earliest(&s->next_change, v->exp, now);
	}
	for (i = 0; i < n; i++)
		if (lc_published(&view[i], now) &&
		    json_array_append_new(arr, svc_jwk(svc->keys[i])))
			goto out;
	signer = lc_choose_signer(view, n, now, &svc->policy);
	s->signing = signer ? svc_key_ref(svc->keys[signer - view]) : NULL;
	s->sign_cap = signer ? lc_token_cap(signer, &svc->policy) : 0;
	s->expired = svc_key_ref(svc_pick_expired(svc, now, &s->expired_exp));
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
	pthread_cond_broadcast(&svc->ready_cond);
	pthread_mutex_unlock(&svc->snap_lock);
	svc_snapshot_release(old);
	s = NULL;
	rc = 0;
out:
	if (rc)
		svc_log(svc, "snapshot rebuild failed: %s", ks_strerror(rc));
	if (s) {
		svc_key_unref(s->signing);
		svc_key_unref(s->expired);
		free(s->body);
	}
	free(s);
	free(view);
	json_decref(arr);
	json_decref(root);
	return rc;
}

/* When the current snapshot stops being right, or INT64_MAX. */
static int64_t svc_valid_until(struct jwks_service *svc)
{
	int64_t t;

	pthread_mutex_lock(&svc->snap_lock);
	t = svc->cur ? svc->cur->valid_until : INT64_MAX;
	pthread_mutex_unlock(&svc->snap_lock);
	return t;
}

/* Rebuild from memory when the snapshot is out of date at now. */
static void svc_refresh(struct jwks_service *svc, int64_t now)
{
	pthread_mutex_lock(&svc->build_lock);
	if (now >= svc_valid_until(svc))
		svc_rebuild(svc, now);
	pthread_mutex_unlock(&svc->build_lock);
}

/* The kid and expiry of an expired record, for picking one to sign. */
struct svc_kid_exp {
	int64_t kid, exp;
};

/* Latest expiry first; of equal ones, the newest kid. */
static int svc_cmp_expired(const void *a, const void *b)
{
	const struct svc_kid_exp *x = a, *y = b;

	if (x->exp != y->exp)
		return x->exp < y->exp ? 1 : -1;
	return (x->kid < y->kid) - (x->kid > y->kid);
}

/* Grow *v (elements of size sz, capacity *cap) to hold one more than n. */
static int svc_grow(void **v, size_t *cap, size_t n, size_t sz)
{
	void *p;
	size_t c;

	if (n < *cap)
		return 0;
	c = *cap ? *cap * 2 : 16;
	p = realloc(*v, c * sz);
	if (!p)
		return KS_ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

/*
 * One listing of the store, read by the background work: the unexpired
 * keys (parsed, referenced) with their exp, the expired records' kids and
 * exps, and every lifecycle entry.
 */
struct svc_listing {
	struct jwks_service *svc;
	int64_t now;
	struct svc_key **keys;
	int64_t *exp;
	size_t n, cap, cap_exp;
	struct svc_kid_exp *expired;
	size_t n_expired, cap_expired;
	struct ks_life *life;
	size_t n_life, cap_life;
};

static void svc_listing_release(struct svc_listing *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		svc_key_unref(l->keys[i]);
	free(l->keys);
	free(l->exp);
	free(l->expired);
	free(l->life);
}

static int svc_list_one(const struct ks_record *rec, void *arg)
{
	struct svc_listing *l = arg;
	struct jwks_service *svc = l->svc;
	struct svc_key *k;
	int rc;

	if (rec->exp <= l->now) {
		if (svc_grow((void **)&l->expired, &l->cap_expired,
			     l->n_expired, sizeof(*l->expired)))
			return KS_ENOMEM;
		l->expired[l->n_expired].kid = rec->kid;
		l->expired[l->n_expired++].exp = rec->exp;
		return 0;
	}
	if (svc_grow((void **)&l->keys, &l->cap, l->n, sizeof(*l->keys)) ||
	    svc_grow((void **)&l->exp, &l->cap_exp, l->n, sizeof(*l->exp)))
		return KS_ENOMEM;
	k = svc_key_ref(svc_find_key(svc, rec->kid));
	if (k) {
		/* Loaded already: a rewrap changes only the blob. */
		if (kek_is_sealed(rec->blob, rec->blob_len) &&
		    !kek_sealed_by(svc->opts.kek, rec->blob, rec->blob_len))
			svc_foreign(svc, rec->kid);
	} else {
		rc = svc_load_record(svc, rec, &k);
		if (rc == KS_ENOMEM)
			return rc;
		if (rc)
			return 0;
	}
	l->keys[l->n] = k;
	l->exp[l->n++] = rec->exp;
	return 0;
}

static int svc_list_life(const struct ks_life *life, void *arg)
{
	struct svc_listing *l = arg;

	if (svc_grow((void **)&l->life, &l->cap_life, l->n_life,
		     sizeof(*l->life)))
		return KS_ENOMEM;
	l->life[l->n_life++] = *life;
	return 0;
}

static const struct ks_life *svc_listing_life(const struct svc_listing *l,
					      int64_t kid)
{
	if (!l->n_life)
		return NULL;
	return bsearch(&kid, l->life, l->n_life, sizeof(*l->life), ks_kid_cmp);
}

/*
 * The most recently expired record that may sign for ?expired=true: not
 * revoked, and loads (work_lock held). *out is referenced, or NULL when
 * the store has none.
 */
static int svc_listing_expired(struct svc_listing *l, struct svc_key **out,
			       int64_t *exp_out, struct ks_err *err)
{
	struct jwks_service *svc = l->svc;
	size_t i, n = 0;
	int rc = 0;

	*out = NULL;
	*exp_out = 0;
	/* A revoked key never signs again, ?expired=true included. */
	for (i = 0; i < l->n_expired; i++) {
		const struct ks_life *life =
			svc_listing_life(l, l->expired[i].kid);

		if (!life || life->revoked_at == KS_NEVER)
			l->expired[n++] = l->expired[i];
	}
	if (n)
		qsort(l->expired, n, sizeof(*l->expired), svc_cmp_expired);
	for (i = 0; !rc && !*out && i < n; i++) {
		const struct svc_kid_exp *c = &l->expired[i];
		struct ks_record rec = {0};

		if (svc->store_expired && svc->store_expired->kid == c->kid)
			*out = svc_key_ref(svc->store_expired);
		else
			*out = svc_key_ref(svc_find_key(svc, c->kid));
		if (*out || svc_is_bad(c->kid, svc)) {
			*exp_out = c->exp;
			continue;
		}
		rc = ks_get(svc->store, c->kid, &rec, err);
		if (rc == KS_ENOTFOUND) {
			rc = 0;
			continue;
		}
		if (!rc) {
			rc = svc_load_record(svc, &rec, out);
			if (rc != KS_ENOMEM)
				rc = 0;
			*exp_out = c->exp;
		}
		ks_record_release(&rec);
	}
	if (rc) {
		svc_key_unref(*out);
		*out = NULL;
	}
	return rc;
}

/*
 * Read the store's keys, parse the ones not seen yet, and swap them in
 * (work_lock held; build_lock only for the swap). Keys that left the store
 * or expired leave memory once no snapshot uses them; a failed listing
 * keeps everything as it was. Rebuilds the snapshot once one was
 * published. O(n log n) in the number of keys.
 */
static int svc_reload(struct jwks_service *svc, int64_t now, struct ks_err *err)
{
	struct svc_listing l = {.svc = svc, .now = now};
	struct svc_key **old_keys, *old_expired, *expired = NULL;
	int64_t expired_exp = 0;
	size_t old_n, i;
	uint64_t version = 0;
	int rc, have_version, published;

	pthread_mutex_lock(&svc->snap_lock);
	published = svc->cur != NULL;
	pthread_mutex_unlock(&svc->snap_lock);
	have_version = ks_version(svc->store, &version, NULL) == 0;
	rc = ks_list(svc->store, INT64_MIN, INT64_MAX, svc_list_one, &l, err);
	/* After the records: see ks_life_list(). */
	if (!rc)
		rc = ks_life_list(svc->store, svc_list_life, &l, err);
	if (!rc)
		rc = svc_listing_expired(&l, &expired, &expired_exp, err);
	if (rc) {
		svc_listing_release(&l);
		return rc;
	}
	for (i = 0; i < l.n; i++) {
		const struct ks_life *life =
			svc_listing_life(&l, l.keys[i]->kid);
		const struct svc_key *k = l.keys[i];

		if (life && life->revoked_at != KS_NEVER && published &&
		    (!k->has_life || k->life.revoked_at == KS_NEVER))
			svc_log(svc,
				"key %" PRId64 " revoked: it leaves the JWKS "
				"and never signs again",
				k->kid);
	}

	pthread_mutex_lock(&svc->build_lock);
	for (i = 0; i < l.n; i++) {
		const struct ks_life *life =
			svc_listing_life(&l, l.keys[i]->kid);

		l.keys[i]->exp = l.exp[i];
		l.keys[i]->has_life = life != NULL;
		if (life)
			l.keys[i]->life = *life;
	}
	old_keys = svc->keys;
	old_n = svc->n_keys;
	old_expired = svc->store_expired;
	svc->keys = l.keys;
	svc->n_keys = l.n;
	svc->store_expired = expired;
	svc->store_expired_exp = expired_exp;
	if (svc->cur)
		svc_rebuild(svc, now);
	pthread_mutex_unlock(&svc->build_lock);

	for (i = 0; i < old_n; i++)
		svc_key_unref(old_keys[i]);
	free(old_keys);
	svc_key_unref(old_expired);
	l.keys = NULL;
	l.n = 0;
	svc_listing_release(&l);
	svc->have_version = have_version;
	svc->version = version;
	return 0;
}

/* Reload, then publish the first snapshot if none was yet. */
static int svc_reload_publish(struct jwks_service *svc, int64_t now,
			      struct ks_err *err)
{
	int rc = svc_reload(svc, now, err);

	if (!rc) {
		pthread_mutex_lock(&svc->build_lock);
		if (!svc->cur)
			rc = svc_rebuild(svc, now);
		pthread_mutex_unlock(&svc->build_lock);
	}
	return rc;
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
	svc_cond_init(&svc->ready_cond);
	pthread_mutex_init(&svc->build_lock, NULL);
	pthread_mutex_init(&svc->work_lock, NULL);
	pthread_mutex_init(&svc->stop_lock, NULL);
	svc_cond_init(&svc->stop_cond);

	pthread_mutex_lock(&svc->work_lock);
	rc = svc_reload(svc, svc_now(svc), err);
	pthread_mutex_unlock(&svc->work_lock);
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
	struct lc_key *view = svc_view(svc);

	if (!view)
		return KS_ENOMEM;
	lc_plan_at(view, svc->n_keys, now, &svc->policy, 0, plan);
	free(view);
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
	int rc, published;

	rc = ka_rotate(svc->store, svc->opts.kek, &svc->policy, key, now, 0,
		       svc_is_bad, svc, &plan, &kid, err);
	pthread_mutex_lock(&svc->snap_lock);
	published = svc->cur != NULL;
	pthread_mutex_unlock(&svc->snap_lock);
	if (!rc && plan.action == LC_BOOTSTRAP && published)
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
	/*
	 * The signing key first, so that it gets the lower kid. Both are
	 * decided inside their transaction: of several servers starting on
	 * one empty store, one adds each, the others find it there.
	 */
	if (need_signer) {
		rc = svc_rotate(svc, gen[0].key, now, err);
		if (!rc)
			count++;
		else if (rc != KS_EEXISTS)
			goto out;
	}
	if (need_expired) {
		rc = ka_add_expired_key(svc->store, svc->opts.kek,
					gen[want - 1].key, now, NULL, err);
		if (!rc)
			count++;
		else if (rc != KS_EEXISTS)
			goto out;
	}
	rc = svc_reload_publish(svc, now, err);
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
	int rc;

	pthread_mutex_lock(&svc->work_lock);
	rc = svc_reload_publish(svc, svc_now(svc), err);
	pthread_mutex_unlock(&svc->work_lock);
	return rc;
}

/*
 * Log a background failure, once per kind of failure and minute: a store
 * that stays broken must not fill the log four times a second. A store
 * that went away is said once when it goes and once when it is back.
 */
static void svc_fault(struct jwks_service *svc, int64_t now, const char *what,
		      int rc, const struct ks_err *e)
{
	if (!rc) {
		if (svc->store_down)
			svc_log(svc, "key store reachable again: rotation "
				     "resumes");
		svc->store_down = 0;
		return;
	}
	if (rc == KS_EUNAVAIL || rc == KS_EIO) {
		if (!svc->store_down)
			svc_log(svc,
				"key store unreachable (%s failed: %s: %s): "
				"serving the keys in memory until it is back",
				what, ks_strerror(rc), e->text);
		svc->store_down = 1;
		return;
	}
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
	const char *what = "checking the store";
	uint64_t version;
	int64_t now;
	int rc;

	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = ks_version(svc->store, &version, &e);
	/* At a boundary the listing also drops keys that expired. */
	if (rc == KS_EUNSUPPORTED ||
	    (!rc && (!svc->have_version || version != svc->version ||
		     now >= svc_valid_until(svc)))) {
		what = "reloading keys";
		rc = svc_reload(svc, now, &e);
	}
	svc_fault(svc, now, what, rc, &e);
	if (rc)
		svc_refresh(svc, now);
	if (!rc && now >= svc->next_keygen_try && !svc->foreign_kid)
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
		/* A busy or absent store is tried again soon. */
		svc->next_keygen_try =
			now + (rc == KS_EBUSY || rc == KS_EUNAVAIL ? 1 : 5);
		svc_fault(svc, now, "adding a new key", rc, &e);
	}
	pthread_mutex_unlock(&svc->work_lock);
	signer_key_free(key);
}

static int64_t svc_mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Longest a wait for a store's notification blocks a stop. */
#define SVC_WAIT_SLICE_MS 250

/*
 * Wait for the next pass: poll_ms, or less when the store announces a
 * change (ks_wait()), in slices short enough that a stop is never held up
 * for long. Returns whether the service is stopping (stop_lock held).
 */
static int svc_wait_next(struct jwks_service *svc, int *listen)
{
	int64_t due = svc_mono_ms() + svc->opts.poll_ms;
	struct timespec until;

	while (*listen && !svc->stopping) {
		int64_t left = due - svc_mono_ms();
		unsigned slice;
		int rc;

		if (left <= 0)
			return 0;
		slice = left < SVC_WAIT_SLICE_MS ? (unsigned)left
						 : SVC_WAIT_SLICE_MS;
		pthread_mutex_unlock(&svc->stop_lock);
		rc = ks_wait(svc->store, slice, NULL);
		pthread_mutex_lock(&svc->stop_lock);
		if (rc == KS_EUNSUPPORTED)
			*listen = 0;
		else if (rc == 1)
			return svc->stopping; /* a change was announced */
	}
	if (!svc->stopping) {
		until = svc_deadline(svc->opts.poll_ms);
		pthread_cond_timedwait(&svc->stop_cond, &svc->stop_lock,
				       &until);
	}
	return svc->stopping;
}

static void *svc_thread_main(void *arg)
{
	struct jwks_service *svc = arg;
	int listen = 1;

	pthread_mutex_lock(&svc->stop_lock);
	while (!svc_wait_next(svc, &listen)) {
		pthread_mutex_unlock(&svc->stop_lock);
		jwks_service_tick(svc);
		pthread_mutex_lock(&svc->stop_lock);
	}
	pthread_mutex_unlock(&svc->stop_lock);
	return NULL;
}

void jwks_service_free(struct jwks_service *svc)
{
	size_t i;

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
	for (i = 0; i < svc->n_keys; i++)
		svc_key_unref(svc->keys[i]);
	free(svc->keys);
	svc_key_unref(svc->store_expired);
	free(svc->bad);
	pthread_mutex_destroy(&svc->snap_lock);
	pthread_cond_destroy(&svc->ready_cond);
	pthread_mutex_destroy(&svc->build_lock);
	pthread_mutex_destroy(&svc->work_lock);
	pthread_mutex_destroy(&svc->stop_lock);
	pthread_cond_destroy(&svc->stop_cond);
	free(svc);
}

/*
 * The current snapshot, rebuilt first from memory (never the store) when
 * a key boundary has passed since it was built.
 */
static struct svc_snapshot *svc_acquire_fresh(struct jwks_service *svc,
					      int64_t now)
{
	struct svc_snapshot *s = svc_acquire(svc);

	if (s && now >= s->valid_until) {
		svc_snapshot_release(s);
		svc_refresh(svc, now);
		s = svc_acquire(svc);
	}
	return s;
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
	struct svc_snapshot *s;
	const struct svc_key *k;
	int64_t now, iat, exp;
	int rc;

	if (!svc || !out || !len_out)
		return KS_EINVAL;
	*len_out = 0;
	now = svc_now(svc);
	s = svc_acquire_fresh(svc, now);
	if (!s) {
		return ks_err_set(err, KS_ENOKEY, "no key set published yet");
	} else if (expired) {
		k = s->expired;
		if (!k) {
			svc_snapshot_release(s);
			return ks_err_set(err, KS_ENOTFOUND,
					  "the store has no usable expired "
					  "key");
		}
		exp = s->expired_exp < now ? s->expired_exp : now - 1;
		/* A store may hold any exp: never overflow going back. */
		iat = exp >= INT64_MIN + svc->opts.token_ttl
			      ? exp - svc->opts.token_ttl
			      : exp;
	} else {
		k = s->signing;
		if (!k) {
			svc_snapshot_release(s);
			return ks_err_set(err, KS_ENOKEY,
					  "no unexpired signing key");
		}
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
