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

#include "jose.h"
#include "keyadmin.h"
#include "lifecycle.h"
#include "service.h"
#include "signer.h"

/*
 * One parsed key, reference-counted: the key array holds one reference,
 * and each snapshot one per key it signs with. kid, key, alg_ix and header
 * never change; exp, has_life and life change under build_lock.
 */
struct svc_key {
	atomic_uint refs;
	int64_t kid;
	int alg_ix; /* index of its algorithm in the service's, or -1 */
	int64_t exp;
	int has_life;
	struct ks_life life;
	struct signer_key *key;
	int sealed;	  /* its blob is sealed under the kek */
	char *header_b64; /* b64url of the JWS header, ready to sign */
	size_t header_len;
};

/*
 * What requests read. Immutable once published. Per configured algorithm
 * (in the order of the options): the key that signs, the latest exp it
 * may give a token, and the key for ?expired=true with its exp.
 */
struct svc_snapshot {
	atomic_uint refs;
	int64_t valid_until; /* when a signer or the published set changes */
	int64_t next_change; /* when the published set changes */
	int64_t last_modified;
	struct svc_key *signing[JWKS_MAX_ALGS]; /* referenced, or NULL */
	int64_t sign_cap[JWKS_MAX_ALGS];
	struct svc_key *expired[JWKS_MAX_ALGS]; /* referenced, or NULL */
	int64_t expired_exp[JWKS_MAX_ALGS];
	char *body;
	size_t body_len;
	char etag[24];
};

/* The kid and algorithm of an expired record loaded once. */
struct svc_kid_alg {
	int64_t kid;
	const char *alg; /* static storage of the signer */
};

/* Every record of one listing, in kid order, as ka_list_keys() shows it. */
struct svc_sched {
	atomic_uint refs;
	size_t n;
	struct ka_key_info keys[];
};

struct jwks_service {
	struct ks_store *store;
	struct jwks_service_options opts; /* its pointers not to be used */
	struct lc_policy policy;

	/* Configuration, fixed at creation. */
	const char *algs[JWKS_MAX_ALGS]; /* static storage of the signer */
	size_t n_algs;
	const char *typ;
	char *fixed_claims; /* "iss" and "aud", from jose_fixed_claims() */
	char *metadata;	    /* the discovery document, or NULL */
	size_t metadata_len;
	char metadata_etag[24];
	int64_t started;

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
	struct svc_key *store_expired[JWKS_MAX_ALGS];
	int64_t store_expired_exp[JWKS_MAX_ALGS];

	/* work_lock: the background work's state. */
	pthread_mutex_t work_lock;
	int64_t *bad; /* kids of records that do not load, sorted */
	size_t n_bad, cap_bad;
	struct svc_kid_alg *expired_algs; /* expired records loaded, by kid */
	size_t n_expired_algs;
	int64_t foreign_kid; /* a key sealed under another secret, or 0 */
	uint64_t version;
	int have_version;
	int64_t next_keygen_try;
	int last_fault;		/* the last background failure logged */
	int64_t last_fault_log; /* and when */
	int store_down;		/* the store failed; logged once */
	int sched_incomplete;	/* expired records whose alg is not known */

	/*
	 * What operators see (read without work_lock): every record of the
	 * last listing with its state inputs, swapped under sched_lock; when
	 * the store last answered; counters.
	 */
	pthread_mutex_t sched_lock;
	struct svc_sched *sched;
	atomic_int_fast64_t last_sync_ms; /* CLOCK_MONOTONIC, 0: never */
	atomic_uint_fast64_t tokens[JWKS_MAX_ALGS];
	atomic_uint_fast64_t store_errors[JWKS_STORE_OPS];

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

/* The index of alg among the service's algorithms, or -1. */
static int svc_alg_index(const struct jwks_service *svc, const char *alg)
{
	size_t i;

	for (i = 0; alg && i < svc->n_algs; i++)
		if (!strcmp(svc->algs[i], alg))
			return (int)i;
	return -1;
}

/*
 * Wrap a parsed key (taking ownership of key, also on failure) in an entry
 * with its JWS header pre-encoded, holding one reference.
 */
static int svc_key_new(const struct jwks_service *svc, struct svc_key **out,
		       int64_t kid, int64_t exp, struct signer_key *key)
{
	char header[256];
	struct svc_key *k;
	size_t n;

	*out = NULL;
	k = calloc(1, sizeof(*k));
	if (!k || jose_header_b64(header, sizeof(header), &n,
				  signer_key_alg(key), svc->typ, kid))
		goto fail;
	k->header_b64 = strdup(header);
	if (!k->header_b64)
		goto fail;
	k->header_len = n;
	k->alg_ix = svc_alg_index(svc, signer_key_alg(key));
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

static int svc_is_bad(const struct jwks_service *svc, int64_t kid)
{
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
	if (svc_is_bad(svc, rec->kid))
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
	rc = svc_key_new(svc, out, rec->kid, rec->exp, key);
	if (!rc)
		(*out)->sealed = kek_is_sealed(rec->blob, rec->blob_len);
	return rc;
}

/* Drop the keys a snapshot references and its body (not s itself). */
static void svc_snapshot_clear(struct svc_snapshot *s)
{
	size_t i;

	for (i = 0; i < JWKS_MAX_ALGS; i++) {
		svc_key_unref(s->signing[i]);
		svc_key_unref(s->expired[i]);
	}
	free(s->body);
}

static void svc_snapshot_release(struct svc_snapshot *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		svc_snapshot_clear(s);
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
/* A key's public members as the signer reports them, copied. */
#define SVC_JWK_MEMBERS 8
struct svc_members {
	struct jose_member m[SVC_JWK_MEMBERS];
	char *text[2 * SVC_JWK_MEMBERS]; /* what m points to */
	size_t n;
};

static int svc_jwk_member(const char *name, const char *value, void *arg)
{
	struct svc_members *ms = arg;
	char *n, *v;

	if (ms->n == SVC_JWK_MEMBERS)
		return KS_ECRYPTO;
	n = strdup(name);
	v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return KS_ENOMEM;
	}
	ms->text[2 * ms->n] = n;
	ms->text[2 * ms->n + 1] = v;
	ms->m[ms->n].name = n;
	ms->m[ms->n++].value = v;
	return 0;
}

/* One JWK, through jose_jwk()'s allow-list. Ownership: new, or NULL. */
static json_t *svc_jwk(const struct svc_key *k)
{
	struct svc_members ms = {.n = 0};
	json_t *jwk = NULL;
	size_t i;

	if (signer_public_jwk(k->key, svc_jwk_member, &ms) == 0)
		jwk = jose_jwk(k->kid, signer_key_alg(k->key), ms.m, ms.n);
	for (i = 0; i < 2 * ms.n; i++)
		free(ms.text[i]);
	return jwk;
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
 * The keys of algorithm a (index into svc->algs; -1: every key) as the
 * policy sees them, in kid order (build_lock or work_lock held), with
 * their positions in the key array in pos (may be NULL); the caller frees
 * both. Returns the count, or -1 when out of memory.
 */
static long svc_view(const struct jwks_service *svc, int a,
		     struct lc_key **view_out, size_t **pos_out)
{
	struct lc_key *view =
		calloc(svc->n_keys ? svc->n_keys : 1, sizeof(*view));
	size_t *pos = calloc(svc->n_keys ? svc->n_keys : 1, sizeof(*pos));
	size_t i, n = 0;

	if (!view || !pos) {
		free(view);
		free(pos);
		return -1;
	}
	for (i = 0; i < svc->n_keys; i++) {
		if (a >= 0 && svc->keys[i]->alg_ix != a)
			continue;
		pos[n] = i;
		view[n++] = svc_lc_key(svc->keys[i]);
	}
	*view_out = view;
	if (pos_out)
		*pos_out = pos;
	else
		free(pos);
	return (long)n;
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
 * The key of algorithm a that signs ?expired=true at now: the most
 * recently expired one of the array and the store's (latest exp first,
 * then the newest kid).
 */
static struct svc_key *svc_pick_expired(const struct jwks_service *svc, int a,
					int64_t now, int64_t *exp_out)
{
	struct svc_key *best = svc->store_expired[a];
	int64_t best_exp = svc->store_expired_exp[a];
	size_t i;

	for (i = 0; i < svc->n_keys; i++) {
		struct svc_key *k = svc->keys[i];

		if (k->alg_ix == a && svc_expired_ok(k, now) &&
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
 * The signer, token cap and plan of algorithm a at now, into s (build_lock
 * held). Returns 0 or KS_ENOMEM.
 */
static int svc_schedule(struct jwks_service *svc, struct svc_snapshot *s, int a,
			int64_t now)
{
	struct lc_key *view = NULL;
	size_t *pos = NULL;
	const struct lc_key *signer;
	struct lc_plan plan;
	long n = svc_view(svc, a, &view, &pos);

	if (n < 0)
		return KS_ENOMEM;
	signer = lc_choose_signer(view, (size_t)n, now, &svc->policy);
	s->signing[a] =
		signer ? svc_key_ref(svc->keys[pos[signer - view]]) : NULL;
	s->sign_cap[a] = signer ? lc_token_cap(signer, &svc->policy) : 0;
	s->expired[a] =
		svc_key_ref(svc_pick_expired(svc, a, now, &s->expired_exp[a]));
	lc_plan_at(view, (size_t)n, now, &svc->policy, 0, &plan);
	/*
	 * The set also changes when the next key is made. While that is
	 * overdue (a store that fails), caches must not keep the set.
	 */
	svc_earliest(&s->next_change, plan.due, now);
	if (plan.action != LC_NOTHING || plan.due <= now)
		s->next_change = now;
	free(view);
	free(pos);
	return 0;
}

/* A strong ETag for body: its 64-bit FNV-1a, quoted. */
static void svc_etag(char *out, size_t cap, const char *body, size_t len)
{
	snprintf(out, cap, "\"%016" PRIx64 "\"", svc_fnv1a(body, len));
}

/*
 * Build a snapshot of the key array as published at now, and publish it
 * (build_lock held; memory only, never the store).
 */
static int svc_rebuild(struct jwks_service *svc, int64_t now)
{
	struct svc_snapshot *s = NULL, *old;
	struct lc_key *view = NULL;
	json_t *root = NULL, *arr = NULL;
	size_t i, a;
	long n;
	int rc = KS_ENOMEM;

	s = calloc(1, sizeof(*s));
	root = json_object();
	arr = json_array();
	if (!s || !root || !arr || json_object_set(root, "keys", arr) ||
	    (n = svc_view(svc, -1, &view, NULL)) < 0)
		goto out;

	s->valid_until = INT64_MAX;
	s->next_change = INT64_MAX;
	for (i = 0; i < (size_t)n; i++) {
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
	for (i = 0; i < (size_t)n; i++)
		if (lc_published(&view[i], now) &&
		    json_array_append_new(arr, svc_jwk(svc->keys[i])))
			goto out;
	for (a = 0; a < svc->n_algs; a++)
		if (svc_schedule(svc, s, (int)a, now))
			goto out;

	s->body = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!s->body)
		goto out;
	s->body_len = strlen(s->body);
	svc_etag(s->etag, sizeof(s->etag), s->body, s->body_len);
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
	if (s)
		svc_snapshot_clear(s);
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

/* Every record of a listing: what the schedule shows of it. */
struct svc_rec {
	int64_t kid, exp;
	int sealed;
};

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
	struct svc_rec *recs; /* every record, in listing (kid) order */
	size_t n_recs, cap_recs;
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
	free(l->recs);
}

static int svc_list_one(const struct ks_record *rec, void *arg)
{
	struct svc_listing *l = arg;
	struct jwks_service *svc = l->svc;
	struct svc_key *k;
	int rc;

	if (svc_grow((void **)&l->recs, &l->cap_recs, l->n_recs,
		     sizeof(*l->recs)))
		return KS_ENOMEM;
	l->recs[l->n_recs++] = (struct svc_rec){
		rec->kid, rec->exp, kek_is_sealed(rec->blob, rec->blob_len)};
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

static int svc_cmp_kid_alg(const void *a, const void *b)
{
	return ks_kid_cmp(a, b);
}

/*
 * The algorithm of record kid when it is known without loading it: a key
 * of the array, a store expired key, an expired record loaded before
 * (work_lock held). "" for a record that does not load; NULL unknown.
 */
static const char *svc_known_alg(const struct jwks_service *svc, int64_t kid)
{
	const struct svc_kid_alg *hit;
	const struct svc_key *k = svc_find_key(svc, kid);
	size_t a;

	if (k)
		return signer_key_alg(k->key);
	for (a = 0; a < svc->n_algs; a++)
		if (svc->store_expired[a] && svc->store_expired[a]->kid == kid)
			return svc->algs[a];
	if (svc->n_expired_algs) {
		hit = bsearch(&kid, svc->expired_algs, svc->n_expired_algs,
			      sizeof(*svc->expired_algs), svc_cmp_kid_alg);
		if (hit)
			return hit->alg;
	}
	return svc_is_bad(svc, kid) ? "" : NULL;
}

/* For ka_rotate() and ka_add_expired_key(). */
static const char *svc_alg_of(int64_t kid, void *arg)
{
	return svc_known_alg(arg, kid);
}

/* Expired records a background pass loads only to learn their algorithm. */
#define SVC_LEARN_PER_PASS 4

/*
 * For each configured algorithm, the most recently expired record that
 * may sign for ?expired=true: not revoked, and loads (work_lock held).
 * out[a] is referenced, or NULL when the store has none of algorithm a.
 * The records loaded to find them are remembered by kid, so that the next
 * listing loads none of them again. Returns 0 or the store's errors.
 */
static int svc_listing_expired(struct svc_listing *l,
			       struct svc_key *out[JWKS_MAX_ALGS],
			       int64_t exp_out[JWKS_MAX_ALGS],
			       struct ks_err *err)
{
	struct jwks_service *svc = l->svc;
	struct svc_kid_alg *known = NULL;
	size_t i, n_known = 0, filled = 0, learnt = 0;
	int rc = 0;

	memset(out, 0, JWKS_MAX_ALGS * sizeof(*out));
	memset(exp_out, 0, JWKS_MAX_ALGS * sizeof(*exp_out));
	svc->sched_incomplete = 0;
	known = calloc(l->n_expired ? l->n_expired : 1, sizeof(*known));
	if (!known)
		return KS_ENOMEM;
	if (l->n_expired)
		qsort(l->expired, l->n_expired, sizeof(*l->expired),
		      svc_cmp_expired);
	/*
	 * Every expired record's algorithm is learnt once, by the background
	 * thread (operators see it in the schedule); a revoked key never
	 * signs again, ?expired=true included.
	 */
	for (i = 0; !rc && i < l->n_expired; i++) {
		const struct svc_kid_exp *c = &l->expired[i];
		const struct ks_life *life = svc_listing_life(l, c->kid);
		int usable = !life || life->revoked_at == KS_NEVER;
		const char *alg = svc_known_alg(svc, c->kid);
		struct svc_key *k = NULL;
		struct ks_record rec = {0};
		int a;

		if (alg && *alg) {
			known[n_known].kid = c->kid;
			known[n_known++].alg = alg;
		}
		if (alg && (!*alg || !usable || filled == svc->n_algs))
			continue;
		/*
		 * Learning only: in the background, never delaying a start,
		 * and a few records a pass, so that a store with many expired
		 * keys costs no burst of parsing.
		 */
		if (!alg && (!usable || filled == svc->n_algs) &&
		    (!svc->thread_started || learnt == SVC_LEARN_PER_PASS)) {
			svc->sched_incomplete = 1;
			continue;
		}
		if (!alg && (!usable || filled == svc->n_algs))
			learnt++;
		a = svc_alg_index(svc, alg);
		if (alg && (a < 0 || out[a]))
			continue;
		if (alg) {
			k = svc->store_expired[a] &&
					    svc->store_expired[a]->kid == c->kid
				    ? svc->store_expired[a]
				    : svc_find_key(svc, c->kid);
			if (k) {
				out[a] = svc_key_ref(k);
				exp_out[a] = c->exp;
				filled++;
				continue;
			}
		}
		/* Not in memory (a key seen once, or never): load it. */
		rc = ks_get(svc->store, c->kid, &rec, err);
		if (rc == KS_ENOTFOUND) {
			rc = 0;
			continue;
		}
		if (!rc) {
			rc = svc_load_record(svc, &rec, &k);
			rc = rc == KS_ENOMEM ? rc : 0;
		}
		ks_record_release(&rec);
		if (!k)
			continue;
		if (!alg) {
			known[n_known].kid = c->kid;
			known[n_known++].alg = signer_key_alg(k->key);
		}
		if (usable && k->alg_ix >= 0 && !out[k->alg_ix]) {
			out[k->alg_ix] = k;
			exp_out[k->alg_ix] = c->exp;
			filled++;
		} else {
			svc_key_unref(k);
		}
	}
	if (rc) {
		for (i = 0; i < JWKS_MAX_ALGS; i++) {
			svc_key_unref(out[i]);
			out[i] = NULL;
		}
		free(known);
		return rc;
	}
	qsort(known, n_known, sizeof(*known), svc_cmp_kid_alg);
	free(svc->expired_algs);
	svc->expired_algs = known;
	svc->n_expired_algs = n_known;
	return 0;
}

static void svc_sched_release(struct svc_sched *sc)
{
	if (sc && atomic_fetch_sub(&sc->refs, 1) == 1)
		free(sc);
}

/*
 * Publish the schedule of listing l (work_lock held, after the swap: the
 * algorithms come from the keys now in memory). Without memory the old
 * schedule stays.
 */
static void svc_publish_sched(struct jwks_service *svc,
			      const struct svc_listing *l)
{
	struct svc_sched *sc, *old;
	size_t i;

	sc = malloc(sizeof(*sc) +
		    (l->n_recs ? l->n_recs : 1) * sizeof(sc->keys[0]));
	if (!sc)
		return;
	atomic_init(&sc->refs, 1);
	sc->n = l->n_recs;
	for (i = 0; i < l->n_recs; i++) {
		const struct svc_rec *r = &l->recs[i];
		const struct ks_life *life = svc_listing_life(l, r->kid);
		const char *alg = svc_known_alg(svc, r->kid);
		struct ka_key_info *info = &sc->keys[i];

		memset(info, 0, sizeof(*info));
		info->key.kid = r->kid;
		info->key.exp = r->exp;
		info->key.has_life = life != NULL;
		if (life)
			info->key.life = *life;
		info->key.usable = alg && *alg;
		info->sealed = r->sealed;
		info->alg = alg && *alg ? alg : NULL;
	}
	qsort(sc->keys, sc->n, sizeof(sc->keys[0]), ks_kid_cmp);
	pthread_mutex_lock(&svc->sched_lock);
	old = svc->sched;
	svc->sched = sc;
	pthread_mutex_unlock(&svc->sched_lock);
	svc_sched_release(old);
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
	struct svc_key **old_keys, *old_expired[JWKS_MAX_ALGS];
	struct svc_key *expired[JWKS_MAX_ALGS] = {NULL};
	int64_t expired_exp[JWKS_MAX_ALGS] = {0};
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
		rc = svc_listing_expired(&l, expired, expired_exp, err);
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
	memcpy(old_expired, svc->store_expired, sizeof(old_expired));
	svc->keys = l.keys;
	svc->n_keys = l.n;
	memcpy(svc->store_expired, expired, sizeof(expired));
	memcpy(svc->store_expired_exp, expired_exp, sizeof(expired_exp));
	if (svc->cur)
		svc_rebuild(svc, now);
	pthread_mutex_unlock(&svc->build_lock);

	for (i = 0; i < old_n; i++)
		svc_key_unref(old_keys[i]);
	free(old_keys);
	for (i = 0; i < JWKS_MAX_ALGS; i++)
		svc_key_unref(old_expired[i]);
	svc_publish_sched(svc, &l);
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

/* Check and copy the algorithms, claims and token type of opts. */
static int svc_configure(struct jwks_service *svc,
			 const struct jwks_service_options *opts,
			 struct ks_err *err)
{
	static const char *const rs256[] = {"RS256", NULL};
	const char *const *algs = opts->algs ? opts->algs : rs256;
	const char *const *aud = opts->audiences;
	size_t i, j, n_aud = 0;
	char why[160];
	int rc;

	for (i = 0; algs[i]; i++) {
		for (j = 0; signer_alg_at(j); j++)
			if (!strcmp(signer_alg_at(j), algs[i]))
				break;
		if (!signer_alg_at(j) || i == JWKS_MAX_ALGS ||
		    svc_alg_index(svc, algs[i]) >= 0)
			return ks_err_set(err, KS_EINVAL,
					  "algorithm list: '%.16s' is %s",
					  algs[i],
					  !signer_alg_at(j)    ? "not supported"
					  : i == JWKS_MAX_ALGS ? "one too many"
							       : "given twice");
		/* The signer's static name: it outlives any caller's. */
		svc->algs[svc->n_algs++] = signer_alg_at(j);
	}
	if (!svc->n_algs)
		return ks_err_set(err, KS_EINVAL, "no algorithm");
	if (opts->rsa_bits && opts->rsa_bits != 2048 &&
	    opts->rsa_bits != 3072 && opts->rsa_bits != 4096)
		return ks_err_set(err, KS_EINVAL,
				  "RSA keys are 2048, 3072 or 4096 bits");
	if (opts->issuer && jose_issuer_check(opts->issuer, why, sizeof(why)))
		return ks_err_set(err, KS_EINVAL, "%s", why);
	while (aud && aud[n_aud])
		if (!*aud[n_aud++])
			return ks_err_set(err, KS_EINVAL, "empty audience");
	if (n_aud > JWKS_MAX_AUDIENCES)
		return ks_err_set(err, KS_EINVAL, "more than %d audiences",
				  JWKS_MAX_AUDIENCES);
	svc->typ = JOSE_TYP_JWT;
	if (opts->token_type && !strcmp(opts->token_type, JOSE_TYP_AT_JWT))
		svc->typ = JOSE_TYP_AT_JWT;
	else if (opts->token_type && strcmp(opts->token_type, JOSE_TYP_JWT))
		return ks_err_set(err, KS_EINVAL,
				  "token type is JWT or at+jwt");
	if (!strcmp(svc->typ, JOSE_TYP_AT_JWT) && (!opts->issuer || !n_aud))
		return ks_err_set(err, KS_EINVAL,
				  "at+jwt tokens (RFC 9068) need an issuer "
				  "and an audience");
	rc = jose_fixed_claims(&svc->fixed_claims, opts->issuer, aud, n_aud);
	if (rc)
		return ks_err_set(err, rc, "issuer or audience is not UTF-8");
	if (opts->issuer) {
		rc = jose_metadata(&svc->metadata, opts->issuer, svc->algs,
				   svc->n_algs);
		if (rc)
			return ks_err_set(err, rc, "discovery metadata");
		svc->metadata_len = strlen(svc->metadata);
		svc_etag(svc->metadata_etag, sizeof(svc->metadata_etag),
			 svc->metadata, svc->metadata_len);
	}
	svc->opts.algs = NULL;
	svc->opts.issuer = NULL;
	svc->opts.audiences = NULL;
	svc->opts.token_type = NULL;
	return 0;
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
	if (!store || !opts || !opts->poll_ms)
		return ks_err_set(err, KS_EINVAL, "invalid service options");
	svc = calloc(1, sizeof(*svc));
	if (!svc)
		return KS_ENOMEM;
	svc->store = store;
	svc->opts = *opts;
	svc->policy = (struct lc_policy){opts->key_ttl, opts->token_ttl,
					 opts->jwks_max_age, opts->margin,
					 opts->rotation_lead};
	rc = svc_configure(svc, opts, err);
	if (!rc && lc_policy_check(&svc->policy, why, sizeof(why)))
		rc = ks_err_set(err, KS_EINVAL, "%s", why);
	if (rc) {
		free(svc->fixed_claims);
		free(svc->metadata);
		free(svc);
		return rc;
	}
	pthread_mutex_init(&svc->snap_lock, NULL);
	pthread_mutex_init(&svc->sched_lock, NULL);
	svc_cond_init(&svc->ready_cond);
	pthread_mutex_init(&svc->build_lock, NULL);
	pthread_mutex_init(&svc->work_lock, NULL);
	pthread_mutex_init(&svc->stop_lock, NULL);
	svc_cond_init(&svc->stop_cond);

	pthread_mutex_lock(&svc->work_lock);
	svc->started = svc_now(svc);
	rc = svc_reload(svc, svc->started, err);
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
	unsigned rsa_bits;
	struct signer_key *key;
	int rc;
	struct ks_err err;
};

static void *svc_keygen_thread(void *arg)
{
	struct svc_keygen *g = arg;

	g->rc = signer_generate(&g->key, g->alg, g->rsa_bits, &g->err);
	return NULL;
}

/* Run the n key generations of gen at once, one thread each. */
static void svc_keygen_all(struct svc_keygen *gen, size_t n)
{
	pthread_t tid[2 * JWKS_MAX_ALGS];
	int started[2 * JWKS_MAX_ALGS] = {0};
	size_t i;

	for (i = 0; i < n; i++)
		started[i] = !pthread_create(&tid[i], NULL, svc_keygen_thread,
					     &gen[i]);
	for (i = 0; i < n; i++) {
		if (started[i])
			pthread_join(tid[i], NULL);
		else
			svc_keygen_thread(&gen[i]);
	}
}

/* The rotation plan of algorithm a at now (work_lock held). */
static int svc_plan(const struct jwks_service *svc, int a, int64_t now,
		    struct lc_plan *plan)
{
	struct lc_key *view = NULL;
	long n = svc_view(svc, a, &view, NULL);

	if (n < 0)
		return KS_ENOMEM;
	lc_plan_at(view, (size_t)n, now, &svc->policy, 0, plan);
	free(view);
	return 0;
}

/*
 * Carry out the plan of key's algorithm with key (borrowed), then reload
 * (work_lock held). KS_EEXISTS: another process did it first; the reload
 * shows its key.
 */
static int svc_rotate(struct jwks_service *svc, const struct signer_key *key,
		      int64_t now, struct ks_err *err)
{
	struct lc_plan plan;
	int64_t kid = 0;
	int rc, published;

	rc = ka_rotate(svc->store, svc->opts.kek, &svc->policy, key, now, 0,
		       svc_alg_of, svc, &plan, &kid, err);
	pthread_mutex_lock(&svc->snap_lock);
	published = svc->cur != NULL;
	pthread_mutex_unlock(&svc->snap_lock);
	if (!rc && plan.action == LC_BOOTSTRAP && published)
		svc_log(svc,
			"%s key %" PRId64 " signs at once: no published %s "
			"key could sign",
			signer_key_alg(key), kid, signer_key_alg(key));
	if (!rc && plan.extend_kid > 0)
		svc_log(svc,
			"key %" PRId64 " made late: key %" PRId64 " signs "
			"until %" PRId64 " instead",
			kid, plan.extend_kid, plan.extend_retire_at);
	if (!rc || rc == KS_EEXISTS)
		rc = svc_reload(svc, now, err);
	return rc;
}

static int64_t svc_mono_ms(void);

static int svc_count_one(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(size_t *)arg)++;
	return 0;
}

static void *svc_thread_main(void *arg);

/*
 * Whether the store has any key of algorithm a, unexpired or expired
 * (work_lock held).
 */
static int svc_has_alg(const struct jwks_service *svc, int a)
{
	size_t i;

	if (svc->store_expired[a])
		return 1;
	for (i = 0; i < svc->n_keys; i++)
		if (svc->keys[i]->alg_ix == a)
			return 1;
	for (i = 0; i < svc->n_expired_algs; i++)
		if (!strcmp(svc->expired_algs[i].alg, svc->algs[a]))
			return 1;
	return 0;
}

int jwks_service_start(struct jwks_service *svc, size_t *key_count_out,
		       struct ks_err *err)
{
	struct svc_keygen gen[2 * JWKS_MAX_ALGS];
	int is_expired[2 * JWKS_MAX_ALGS];
	size_t count = 0, want = 0, i, a;
	struct lc_plan plan;
	int64_t now;
	int rc = 0;

	memset(gen, 0, sizeof(gen));
	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = ks_list(svc->store, INT64_MIN, INT64_MAX, svc_count_one, &count,
		     err);
	/*
	 * Per algorithm: a key that signs at once when none can; and an
	 * expired key for ?expired=true when the store has no key of the
	 * algorithm at all (an empty store, or an algorithm just added). A
	 * store that has keys is otherwise left as it is.
	 */
	for (a = 0; !rc && a < svc->n_algs; a++) {
		int has = svc_has_alg(svc, (int)a);

		rc = svc_plan(svc, (int)a, now, &plan);
		if (!rc && plan.action == LC_BOOTSTRAP) {
			gen[want] = (struct svc_keygen){
				.alg = svc->algs[a],
				.rsa_bits = svc->opts.rsa_bits};
			is_expired[want++] = 0;
		}
		if (!rc && !has) {
			gen[want] = (struct svc_keygen){
				.alg = svc->algs[a],
				.rsa_bits = svc->opts.rsa_bits};
			is_expired[want++] = 1;
		}
	}
	if (rc)
		goto out;
	svc_keygen_all(gen, want);
	/* Key generation may take seconds on a busy machine: date from now. */
	now = svc_now(svc);
	for (i = 0; i < want; i++) {
		if (gen[i].rc) {
			rc = ks_err_set(err, gen[i].rc, "%s key generation: %s",
					gen[i].alg, gen[i].err.text);
			goto out;
		}
	}
	/*
	 * The signing keys first, so that they get the lower kids. Each is
	 * decided inside its transaction: of several servers starting on
	 * one store, one adds each, the others find it there.
	 */
	for (i = 0; i < want; i++) {
		if (is_expired[i])
			continue;
		rc = svc_rotate(svc, gen[i].key, now, err);
		if (!rc)
			count++;
		else if (rc != KS_EEXISTS)
			goto out;
	}
	for (i = 0; i < want; i++) {
		if (!is_expired[i])
			continue;
		rc = ka_add_expired_key(svc->store, svc->opts.kek, gen[i].key,
					now, svc_alg_of, svc, NULL, err);
		if (!rc)
			count++;
		else if (rc != KS_EEXISTS)
			goto out;
	}
	rc = svc_reload_publish(svc, now, err);
	if (rc)
		goto out;
	atomic_store(&svc->last_sync_ms, svc_mono_ms());
	if (!pthread_create(&svc->thread, NULL, svc_thread_main, svc))
		svc->thread_started = 1;
	else
		svc_log(svc, "background thread not started: %s",
			strerror(errno));
	if (key_count_out)
		*key_count_out = count;
out:
	for (i = 0; i < want; i++)
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
	struct lc_plan plan;
	const char *what = "checking the store";
	int due[JWKS_MAX_ALGS] = {0};
	uint64_t version;
	int64_t now;
	size_t a;
	int rc, any = 0;

	pthread_mutex_lock(&svc->work_lock);
	now = svc_now(svc);
	rc = ks_version(svc->store, &version, &e);
	/* At a boundary the listing also drops keys that expired. */
	if (rc == KS_EUNSUPPORTED ||
	    (!rc && (!svc->have_version || version != svc->version ||
		     svc->sched_incomplete || now >= svc_valid_until(svc)))) {
		what = "reloading keys";
		rc = svc_reload(svc, now, &e);
	}
	svc_fault(svc, now, what, rc, &e);
	if (rc) {
		atomic_fetch_add(
			&svc->store_errors[what[0] == 'c' ? JWKS_STORE_OP_CHECK
							  : JWKS_STORE_OP_LIST],
			1);
		svc_refresh(svc, now);
	} else {
		atomic_store(&svc->last_sync_ms, svc_mono_ms());
	}
	for (a = 0; !rc && now >= svc->next_keygen_try && !svc->foreign_kid &&
		    a < svc->n_algs;
	     a++) {
		plan.action = LC_NOTHING;
		svc_plan(svc, (int)a, now, &plan);
		due[a] = plan.action != LC_NOTHING;
		any |= due[a];
	}
	pthread_mutex_unlock(&svc->work_lock);

	for (a = 0; any && a < svc->n_algs; a++) {
		if (!due[a])
			continue;
		/* Generate outside the lock: it may take a second. */
		rc = signer_generate(&key, svc->algs[a], svc->opts.rsa_bits,
				     &e);
		pthread_mutex_lock(&svc->work_lock);
		now = svc_now(svc);
		if (!rc)
			rc = svc_rotate(svc, key, now, &e);
		if (rc == KS_EEXISTS)
			rc = 0;
		if (rc) {
			/* A busy or absent store is tried again soon. */
			svc->next_keygen_try =
				now +
				(rc == KS_EBUSY || rc == KS_EUNAVAIL ? 1 : 5);
			svc_fault(svc, now, "adding a new key", rc, &e);
			atomic_fetch_add(
				&svc->store_errors[JWKS_STORE_OP_WRITE], 1);
		}
		pthread_mutex_unlock(&svc->work_lock);
		signer_key_free(key);
		key = NULL;
		if (rc)
			break;
	}
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
	svc_sched_release(svc->sched);
	for (i = 0; i < svc->n_keys; i++)
		svc_key_unref(svc->keys[i]);
	free(svc->keys);
	for (i = 0; i < JWKS_MAX_ALGS; i++)
		svc_key_unref(svc->store_expired[i]);
	free(svc->bad);
	free(svc->expired_algs);
	free(svc->fixed_claims);
	free(svc->metadata);
	pthread_mutex_destroy(&svc->snap_lock);
	pthread_mutex_destroy(&svc->sched_lock);
	pthread_cond_destroy(&svc->ready_cond);
	pthread_mutex_destroy(&svc->build_lock);
	pthread_mutex_destroy(&svc->work_lock);
	pthread_mutex_destroy(&svc->stop_lock);
	pthread_cond_destroy(&svc->stop_cond);
	free(svc);
}

/*
 * The current snapshot, rebuilt first from memory (never the store) when
 * a key boundary has passed since it was built, and the time it is read
 * at (*now). The time is taken once the first snapshot exists: a request
 * that waited for it must not be dated before the keys it will use.
 */
static struct svc_snapshot *svc_acquire_fresh(struct jwks_service *svc,
					      int64_t *now)
{
	struct svc_snapshot *s = svc_acquire(svc);

	*now = svc_now(svc);
	if (s && *now >= s->valid_until) {
		svc_snapshot_release(s);
		svc_refresh(svc, *now);
		s = svc_acquire(svc);
	}
	return s;
}

/*
 * n random bytes for a token id, from a per-thread pool that the CSPRNG
 * refills SVC_RANDOM_POOL bytes at a time: one DRBG call (its locks and
 * fork check) per 32 tokens instead of one per token. The pool is used
 * once, front to back, and wiped as it goes.
 */
#define SVC_RANDOM_POOL 512
static int svc_random(unsigned char *out, size_t n)
{
	static _Thread_local unsigned char pool[SVC_RANDOM_POOL];
	static _Thread_local size_t used = SVC_RANDOM_POOL;
	int rc;

	if (n > SVC_RANDOM_POOL)
		return signer_random(out, n);
	if (SVC_RANDOM_POOL - used < n) {
		rc = signer_random(pool, sizeof(pool));
		if (rc)
			return rc;
		used = 0;
	}
	memcpy(out, pool + used, n);
	memset(pool + used, 0, n);
	used += n;
	return 0;
}

/*
 * header "." b64url(claims) "." b64url(signature), NUL-terminated: the
 * claims of c with a new jti.
 */
static int svc_sign_token(const struct svc_key *k, struct jose_claims *c,
			  char *out, size_t cap, size_t *len_out)
{
	unsigned char sig[SIGNER_SIG_MAX], rnd[JOSE_JTI_BYTES];
	char claims[1024], jti[JOSE_JTI_LEN + 1];
	size_t sig_len = sizeof(sig), claims_len, pos;
	int rc;

	rc = svc_random(rnd, sizeof(rnd));
	if (rc)
		return rc;
	jose_jti(jti, rnd);
	c->jti = jti;
	rc = jose_claims_json(claims, sizeof(claims), &claims_len, c);
	if (rc)
		return rc;
	pos = jose_signing_input(out, cap, k->header_b64, k->header_len, claims,
				 claims_len, sizeof(sig));
	if (!pos)
		return KS_EINVAL;
	rc = signer_sign(k->key, out, pos, sig, &sig_len);
	if (rc)
		return rc;
	*len_out = jose_append_signature(out, cap, pos, sig, sig_len);
	return *len_out ? 0 : KS_EINVAL;
}

int jwks_service_has_alg(const struct jwks_service *svc, const char *alg)
{
	return svc && svc_alg_index(svc, alg) >= 0;
}

int jwks_service_issue(struct jwks_service *svc,
		       const struct jwks_issue_request *req, char *out,
		       size_t cap, size_t *len_out, struct ks_err *err)
{
	struct jose_claims c = {0};
	struct svc_snapshot *s;
	const struct svc_key *k;
	int64_t now;
	int rc, a;

	if (!svc || !req || !out || !len_out)
		return KS_EINVAL;
	*len_out = 0;
	a = req->alg ? svc_alg_index(svc, req->alg) : 0;
	if (a < 0)
		return ks_err_set(err, KS_EUNSUPPORTED,
				  "algorithm not configured");
	s = svc_acquire_fresh(svc, &now);
	if (!s)
		return ks_err_set(err, KS_ENOKEY, "no key set published yet");
	c.fixed = svc->fixed_claims;
	c.sub = req->sub;
	c.preferred_username = req->preferred_username;
	if (req->expired) {
		k = s->expired[a];
		if (!k) {
			svc_snapshot_release(s);
			return ks_err_set(err, KS_ENOTFOUND,
					  "the store has no usable expired "
					  "%s key",
					  svc->algs[a]);
		}
		c.exp = s->expired_exp[a] < now ? s->expired_exp[a] : now - 1;
		/* A store may hold any exp: never overflow going back. */
		c.iat = c.exp >= INT64_MIN + svc->opts.token_ttl
				? c.exp - svc->opts.token_ttl
				: c.exp;
	} else {
		k = s->signing[a];
		if (!k) {
			svc_snapshot_release(s);
			return ks_err_set(err, KS_ENOKEY,
					  "no unexpired %s signing key",
					  svc->algs[a]);
		}
		c.iat = now;
		c.exp = now + svc->opts.token_ttl;
		if (c.exp > s->sign_cap[a])
			c.exp = s->sign_cap[a];
	}
	c.nbf = c.iat;
	rc = svc_sign_token(k, &c, out, cap, len_out);
	if (rc)
		ks_err_set(err, rc, "signing with key %" PRId64 " failed",
			   k->kid);
	else
		atomic_fetch_add_explicit(&svc->tokens[a], 1,
					  memory_order_relaxed);
	if (!rc && req->kid_out)
		*req->kid_out = k->kid;
	svc_snapshot_release(s);
	return rc;
}

int jwks_service_metadata(struct jwks_service *svc, jwks_doc_fn fn, void *arg)
{
	struct jwks_doc doc;

	if (!svc || !fn)
		return KS_EINVAL;
	if (!svc->metadata)
		return KS_ENOTFOUND;
	doc.body = svc->metadata;
	doc.body_len = svc->metadata_len;
	doc.etag = svc->metadata_etag;
	doc.last_modified = svc->started;
	doc.max_age = svc->opts.jwks_max_age;
	return fn(&doc, arg);
}

int jwks_service_jwks(struct jwks_service *svc, jwks_doc_fn fn, void *arg)
{
	struct svc_snapshot *s;
	struct jwks_doc doc;
	int64_t now;
	int rc;

	if (!svc || !fn)
		return KS_EINVAL;
	s = svc_acquire_fresh(svc, &now);
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

/* The current schedule with a reference held, or NULL. */
static struct svc_sched *svc_sched_acquire(struct jwks_service *svc)
{
	struct svc_sched *sc;

	pthread_mutex_lock(&svc->sched_lock);
	sc = svc->sched;
	if (sc)
		atomic_fetch_add(&sc->refs, 1);
	pthread_mutex_unlock(&svc->sched_lock);
	return sc;
}

const char *jwks_service_store_op_name(int op)
{
	static const char *const names[JWKS_STORE_OPS] = {"check", "list",
							  "write"};

	return op >= 0 && op < JWKS_STORE_OPS ? names[op] : "?";
}

int jwks_service_stats(struct jwks_service *svc, struct jwks_service_stats *out)
{
	struct svc_snapshot *s = NULL;
	struct svc_sched *sc;
	int64_t synced;
	size_t i;

	if (!svc || !out)
		return KS_EINVAL;
	memset(out, 0, sizeof(*out));
	out->now = svc_now(svc);
	out->next_change = INT64_MAX;
	out->n_algs = svc->n_algs;
	pthread_mutex_lock(&svc->snap_lock);
	s = svc->cur;
	if (s)
		atomic_fetch_add(&s->refs, 1);
	pthread_mutex_unlock(&svc->snap_lock);
	for (i = 0; i < svc->n_algs; i++) {
		out->algs[i] = svc->algs[i];
		out->tokens[i] = atomic_load_explicit(&svc->tokens[i],
						      memory_order_relaxed);
		out->can_sign[i] =
			s && s->signing[i] && s->sign_cap[i] > out->now;
	}
	svc_snapshot_release(s);
	for (i = 0; i < JWKS_STORE_OPS; i++)
		out->store_errors[i] = atomic_load(&svc->store_errors[i]);
	synced = atomic_load(&svc->last_sync_ms);
	out->sync_age_ms = synced ? svc_mono_ms() - synced : -1;
	sc = svc_sched_acquire(svc);
	for (i = 0; sc && i < sc->n; i++) {
		const struct lc_key *k = &sc->keys[i].key;
		enum lc_state st = lc_state_at(k, out->now);

		out->keys[st]++;
		if (st == LC_REVOKED || st == LC_EXPIRED)
			continue;
		svc_earliest(&out->next_change, lc_activate_at(k), out->now);
		svc_earliest(&out->next_change, lc_retire_at(k), out->now);
		svc_earliest(&out->next_change, k->exp, out->now);
	}
	svc_sched_release(sc);
	return 0;
}

int jwks_service_ready(struct jwks_service *svc, int64_t max_stale_ms,
		       const char **why)
{
	struct jwks_service_stats st;
	size_t i;

	*why = NULL;
	if (jwks_service_stats(svc, &st))
		*why = "internal error";
	else if (st.sync_age_ms < 0)
		*why = "starting";
	else if (st.sync_age_ms > max_stale_ms)
		*why = "key store unreachable";
	for (i = 0; !*why && i < st.n_algs; i++)
		if (!st.can_sign[i])
			*why = "no signing key";
	return *why == NULL;
}

char *jwks_service_keys_json(struct jwks_service *svc, size_t *len_out)
{
	struct svc_sched *sc = svc_sched_acquire(svc);
	json_t *arr = json_array();
	int64_t now = svc_now(svc);
	char *text = NULL;
	size_t i;

	for (i = 0; sc && arr && i < sc->n; i++)
		if (json_array_append_new(arr, ka_key_json(&sc->keys[i], now)))
			goto out;
	if (arr)
		text = json_dumps(arr, JSON_INDENT(2));
	if (text && len_out)
		*len_out = strlen(text);
out:
	json_decref(arr);
	svc_sched_release(sc);
	return text;
}
