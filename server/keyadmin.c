/*
 * Key administration: see include/keyadmin.h. Every change is one
 * ks_write() transaction that re-reads what it changes.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "keyadmin.h"

int ka_load_key(const struct ks_record *rec, const struct kek *kek,
		struct signer_key **out, struct ks_err *err)
{
	unsigned char *plain = NULL;
	size_t plain_len = 0;
	int rc;

	*out = NULL;
	if (!kek_is_sealed(rec->blob, rec->blob_len))
		return signer_load(out, rec->blob, rec->blob_len, err);
	if (!kek)
		return ks_err_set(err, KS_EACCES,
				  "key %lld is encrypted and no key-encryption "
				  "secret is configured",
				  (long long)rec->kid);
	rc = kek_open(kek, rec->kid, rec->blob, rec->blob_len, &plain,
		      &plain_len, err);
	if (!rc)
		rc = signer_load(out, plain, plain_len, err);
	kek_blob_free(plain, plain_len);
	return rc;
}

struct ka_scan_ctx {
	const struct kek *kek;
	struct ka_scan *scan;
};

static int ka_scan_one(const struct ks_record *rec, void *arg)
{
	struct ka_scan_ctx *ctx = arg;
	struct ka_scan *scan = ctx->scan;
	unsigned char *plain = NULL;
	size_t plain_len = 0;
	int rc;

	scan->records++;
	if (!kek_is_sealed(rec->blob, rec->blob_len)) {
		scan->plain++;
		return 0;
	}
	scan->sealed++;
	if (!ctx->kek)
		return 0;
	rc = kek_open(ctx->kek, rec->kid, rec->blob, rec->blob_len, &plain,
		      &plain_len, NULL);
	kek_blob_free(plain, plain_len);
	if (rc == KS_EACCES) {
		if (!scan->foreign++)
			scan->first_foreign_kid = rec->kid;
	} else if (rc == KS_ENOMEM) {
		return rc;
	} else if (rc) {
		scan->unopened++;
	}
	return 0;
}

int ka_scan(struct ks_store *store, const struct kek *kek, struct ka_scan *out,
	    struct ks_err *err)
{
	struct ka_scan_ctx ctx = {kek, out};

	memset(out, 0, sizeof(*out));
	return ks_list(store, INT64_MIN, INT64_MAX, ka_scan_one, &ctx, err);
}

struct ka_rewrap_ctx {
	const struct kek *from, *to;
	size_t count;
};

/* Re-store one record under ctx->to (in the transaction). */
static int ka_rewrap_one(struct ks_txn *txn, struct ka_rewrap_ctx *ctx,
			 const struct ks_record *rec, struct ks_err *err)
{
	struct ks_record out = {rec->kid, NULL, 0, rec->exp};
	unsigned char *plain = NULL;
	size_t plain_len = 0;
	int rc, sealed = kek_is_sealed(rec->blob, rec->blob_len);

	/* Encrypting plaintext rows only, or sealed under to already. */
	if (sealed &&
	    (!ctx->from || kek_sealed_by(ctx->to, rec->blob, rec->blob_len)))
		return 0;
	if (sealed) {
		rc = kek_open(ctx->from, rec->kid, rec->blob, rec->blob_len,
			      &plain, &plain_len, err);
		if (rc)
			return rc;
	}
	rc = kek_seal(ctx->to, rec->kid, sealed ? plain : rec->blob,
		      sealed ? plain_len : rec->blob_len, &out.blob,
		      &out.blob_len, err);
	kek_blob_free(plain, plain_len);
	if (!rc)
		rc = ks_txn_update(txn, &out, err);
	kek_blob_free(out.blob, out.blob_len);
	if (!rc)
		ctx->count++;
	return rc;
}

static int ka_rewrap_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_rewrap_ctx *ctx = arg;
	struct ks_record_set set = {0};
	size_t i;
	int rc;

	ctx->count = 0;
	rc = ks_txn_list(txn, INT64_MIN, INT64_MAX, ks_record_set_add, &set,
			 err);
	for (i = 0; !rc && i < set.n; i++)
		rc = ka_rewrap_one(txn, ctx, &set.rec[i], err);
	ks_record_set_release(&set);
	return rc;
}

int ka_rewrap(struct ks_store *store, const struct kek *from,
	      const struct kek *to, size_t *count_out, struct ks_err *err)
{
	struct ka_rewrap_ctx ctx = {from, to, 0};
	int rc;

	if (count_out)
		*count_out = 0;
	if (!to)
		return ks_err_set(err, KS_EINVAL, "ka_rewrap: no new secret");
	rc = ks_write(store, ka_rewrap_txn, &ctx, err);
	if (!rc && count_out)
		*count_out = ctx.count;
	return rc;
}

/* Store key as the next record of txn, sealed to its kid with kek. */
static int ka_put_key(struct ks_txn *txn, const struct kek *kek,
		      const struct signer_key *key, int64_t exp,
		      int64_t *kid_out, struct ks_err *err)
{
	unsigned char *plain = NULL, *sealed = NULL;
	size_t plain_len = 0, sealed_len = 0;
	int64_t kid = 0;
	int rc;

	rc = ks_txn_next_kid(txn, &kid, err);
	if (!rc)
		rc = signer_save(key, &plain, &plain_len, err);
	if (!rc && kek)
		rc = kek_seal(kek, kid, plain, plain_len, &sealed, &sealed_len,
			      err);
	if (!rc)
		rc = ks_txn_put(txn, kek ? sealed : plain,
				kek ? sealed_len : plain_len, exp, kid_out,
				err);
	signer_blob_free(plain, plain_len);
	kek_blob_free(sealed, sealed_len);
	return rc;
}

struct ka_add_ctx {
	const struct kek *kek;
	const struct signer_key *key;
	int64_t exp;
	struct ks_life life;
};

static int ka_add_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_add_ctx *ctx = arg;
	int rc;

	rc = ka_put_key(txn, ctx->kek, ctx->key, ctx->exp, &ctx->life.kid, err);
	if (!rc)
		rc = ks_txn_life_put(txn, &ctx->life, err);
	return rc;
}

int ka_add_key(struct ks_store *store, const struct kek *kek,
	       const struct signer_key *key, int64_t exp,
	       const struct ks_life *life, int64_t *kid_out, struct ks_err *err)
{
	struct ka_add_ctx ctx = {kek, key, exp, *life};
	int rc = ks_write(store, ka_add_txn, &ctx, err);

	if (kid_out)
		*kid_out = rc ? 0 : ctx.life.kid;
	return rc;
}

/*
 * The algorithm of a record: as the caller knows it, else by loading it.
 * "" when it does not load.
 */
static const char *ka_record_alg(const struct ks_record *rec,
				 const struct kek *kek, ka_alg_fn alg_of,
				 void *arg)
{
	struct signer_key *key = NULL;
	const char *alg = alg_of ? alg_of(rec->kid, arg) : NULL;

	if (alg)
		return alg;
	if (ka_load_key(rec, kek, &key, NULL))
		return "";
	/* Static storage of the signer. */
	alg = signer_key_alg(key);
	signer_key_free(key);
	return alg;
}

struct ka_expired_ctx {
	struct ka_add_ctx add;
	int64_t now;
	ka_alg_fn alg_of;
	void *arg;
	const char *alg;
};

static int ka_expired_match(const struct ks_record *rec, void *arg)
{
	struct ka_expired_ctx *ctx = arg;

	return !strcmp(ka_record_alg(rec, ctx->add.kek, ctx->alg_of, ctx->arg),
		       ctx->alg);
}

static int ka_add_expired_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_expired_ctx *ctx = arg;
	int rc;

	rc = ks_txn_list(txn, INT64_MIN, ctx->now, ka_expired_match, ctx, err);
	if (rc == 1)
		return KS_EEXISTS;
	if (rc)
		return rc;
	return ka_add_txn(txn, &ctx->add, err);
}

int ka_add_expired_key(struct ks_store *store, const struct kek *kek,
		       const struct signer_key *key, int64_t now,
		       ka_alg_fn alg_of, void *arg, int64_t *kid_out,
		       struct ks_err *err)
{
	int64_t exp = now - 3600;
	struct ka_expired_ctx ctx = {
		{kek, key, exp, {0, now, exp, exp, KS_NEVER}},
		now,
		alg_of,
		arg,
		signer_key_alg(key)};
	int rc = ks_write(store, ka_add_expired_txn, &ctx, err);

	if (kid_out)
		*kid_out = rc ? 0 : ctx.add.life.kid;
	return rc;
}

/*
 * The store's keys as the policy sees them, read in one transaction: with
 * alg set, only the records of that algorithm (the others are released).
 */
struct ka_view {
	struct ks_record_set recs;
	struct lc_key *keys;
	size_t n;
	const char *alg;
	const struct kek *kek;
	ka_alg_fn alg_of;
	void *arg;
};

/* Records are listed in increasing kid order. */
static struct lc_key *ka_view_find(struct ka_view *v, int64_t kid)
{
	return bsearch(&kid, v->keys, v->n, sizeof(*v->keys), ks_kid_cmp);
}

static int ka_view_life(const struct ks_life *life, void *arg)
{
	struct lc_key *k = ka_view_find(arg, life->kid);

	if (k) {
		k->has_life = 1;
		k->life = *life;
	}
	return 0;
}

/* Read the records expiring after after, with their entries. */
static int ka_view_read(struct ks_txn *txn, struct ka_view *v, int64_t after,
			struct ks_err *err)
{
	size_t i;
	int rc;

	size_t n = 0;

	rc = ks_txn_list(txn, after, INT64_MAX, ks_record_set_add, &v->recs,
			 err);
	if (rc)
		return rc;
	v->keys = calloc(v->recs.n ? v->recs.n : 1, sizeof(*v->keys));
	if (!v->keys)
		return KS_ENOMEM;
	for (i = 0; i < v->recs.n; i++) {
		struct ks_record *rec = &v->recs.rec[i];
		const char *alg = NULL;

		if (v->alg) {
			alg = ka_record_alg(rec, v->kek, v->alg_of, v->arg);
			if (strcmp(alg, v->alg)) {
				ks_record_release(rec);
				continue;
			}
		}
		/* Kept in kid order: ka_view_find() searches both. */
		if (n != i) {
			v->recs.rec[n] = *rec;
			memset(rec, 0, sizeof(*rec));
		}
		v->keys[n].kid = v->recs.rec[n].kid;
		v->keys[n].exp = v->recs.rec[n].exp;
		v->keys[n].usable = 1;
		n++;
	}
	v->n = v->recs.n = n;
	return ks_txn_life_list(txn, ka_view_life, v, err);
}

static void ka_view_release(struct ka_view *v)
{
	ks_record_set_release(&v->recs);
	free(v->keys);
}

struct ka_rotate_ctx {
	const struct kek *kek;
	const struct lc_policy *p;
	const struct signer_key *key;
	int64_t now;
	int force;
	ka_alg_fn alg_of;
	void *arg;
	struct lc_plan plan;
	int64_t kid;
};

/* Let key kid sign until the successor takes over, and stay published. */
static int ka_extend(struct ks_txn *txn, struct ka_view *v,
		     const struct lc_plan *plan, struct ks_err *err)
{
	struct lc_key *k = ka_view_find(v, plan->extend_kid);
	struct ks_life life;
	int rc = 0;

	if (!k)
		return ks_err_set(err, KS_ENOTFOUND, "key %lld vanished",
				  (long long)plan->extend_kid);
	if (plan->extend_exp != k->exp) {
		struct ks_record rec = v->recs.rec[k - v->keys];

		rec.exp = plan->extend_exp;
		rc = ks_txn_update(txn, &rec, err);
	}
	life = k->has_life ? k->life
			   : (struct ks_life){k->kid, INT64_MIN, INT64_MIN,
					      k->exp, KS_NEVER};
	life.retire_at = plan->extend_retire_at;
	return rc ? rc : ks_txn_life_put(txn, &life, err);
}

static int ka_rotate_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_rotate_ctx *ctx = arg;
	struct ka_view v = {.alg = signer_key_alg(ctx->key),
			    .kek = ctx->kek,
			    .alg_of = ctx->alg_of,
			    .arg = ctx->arg};
	struct ks_life life;
	int rc;

	rc = ka_view_read(txn, &v, ctx->now, err);
	if (!rc) {
		lc_plan_at(v.keys, v.n, ctx->now, ctx->p, ctx->force,
			   &ctx->plan);
		if (ctx->plan.action == LC_NOTHING)
			rc = KS_EEXISTS;
	}
	if (!rc)
		rc = ka_put_key(txn, ctx->kek, ctx->key, ctx->plan.exp,
				&ctx->kid, err);
	if (!rc) {
		life = (struct ks_life){ctx->kid, ctx->now,
					ctx->plan.activate_at,
					ctx->plan.retire_at, KS_NEVER};
		rc = ks_txn_life_put(txn, &life, err);
	}
	if (!rc && ctx->plan.extend_kid > 0)
		rc = ka_extend(txn, &v, &ctx->plan, err);
	ka_view_release(&v);
	return rc;
}

int ka_rotate(struct ks_store *store, const struct kek *kek,
	      const struct lc_policy *p, const struct signer_key *key,
	      int64_t now, int force, ka_alg_fn alg_of, void *arg,
	      struct lc_plan *out, int64_t *kid_out, struct ks_err *err)
{
	struct ka_rotate_ctx ctx = {kek,    p,	 key, now, force,
				    alg_of, arg, {0}, 0};
	int rc = ks_write(store, ka_rotate_txn, &ctx, err);

	if (out)
		*out = ctx.plan;
	if (kid_out)
		*kid_out = rc ? 0 : ctx.kid;
	return rc;
}

struct ka_revoke_ctx {
	int64_t kid, now;
};

static int ka_revoke_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_revoke_ctx *ctx = arg;
	struct ka_view v = {0};
	struct lc_key *k;
	struct ks_life life;
	int rc;

	rc = ka_view_read(txn, &v, INT64_MIN, err);
	k = rc ? NULL : ka_view_find(&v, ctx->kid);
	if (!rc && !k)
		rc = ks_err_set(err, KS_ENOTFOUND, "no key with kid %lld",
				(long long)ctx->kid);
	if (!rc && k->has_life && k->life.revoked_at != KS_NEVER)
		rc = ks_err_set(err, KS_EEXISTS, "key %lld is revoked already",
				(long long)ctx->kid);
	if (!rc) {
		life = k->has_life
			       ? k->life
			       : (struct ks_life){k->kid, INT64_MIN, INT64_MIN,
						  k->exp, KS_NEVER};
		life.revoked_at = ctx->now;
		rc = ks_txn_life_put(txn, &life, err);
	}
	ka_view_release(&v);
	return rc;
}

int ka_revoke(struct ks_store *store, int64_t kid, int64_t now,
	      struct ks_err *err)
{
	struct ka_revoke_ctx ctx = {kid, now};

	return ks_write(store, ka_revoke_txn, &ctx, err);
}

struct ka_purge_ctx {
	int64_t before;
	size_t count;
};

static int ka_purge_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ka_purge_ctx *ctx = arg;
	struct ks_record_set set = {0};
	size_t i;
	int rc;

	ctx->count = 0;
	rc = ks_txn_list(txn, INT64_MIN, ctx->before, ks_record_set_add, &set,
			 err);
	for (i = 0; !rc && i < set.n; i++)
		rc = ks_txn_delete(txn, set.rec[i].kid, err);
	if (!rc)
		ctx->count = set.n;
	ks_record_set_release(&set);
	return rc;
}

int ka_purge(struct ks_store *store, int64_t before, size_t *count_out,
	     struct ks_err *err)
{
	struct ka_purge_ctx ctx = {before, 0};
	int rc = ks_write(store, ka_purge_txn, &ctx, err);

	*count_out = rc ? 0 : ctx.count;
	return rc;
}

/* Records first, then entries: see ks_life_list(). */
struct ka_list_ctx {
	const struct kek *kek;
	struct ka_key_info *v;
	size_t n, cap;
};

static int ka_list_one(const struct ks_record *rec, void *arg)
{
	struct ka_list_ctx *ctx = arg;
	struct ka_key_info *info;
	struct signer_key *key = NULL;

	if (ctx->n == ctx->cap) {
		size_t cap = ctx->cap ? ctx->cap * 2 : 16;
		void *v = realloc(ctx->v, cap * sizeof(*ctx->v));

		if (!v)
			return KS_ENOMEM;
		ctx->v = v;
		ctx->cap = cap;
	}
	info = &ctx->v[ctx->n++];
	memset(info, 0, sizeof(*info));
	info->key.kid = rec->kid;
	info->key.exp = rec->exp;
	info->sealed = kek_is_sealed(rec->blob, rec->blob_len);
	if (!ka_load_key(rec, ctx->kek, &key, NULL)) {
		/* The name is static storage of the signer. */
		info->alg = signer_key_alg(key);
		info->key.usable = 1;
	}
	signer_key_free(key);
	return 0;
}

static int ka_list_life(const struct ks_life *life, void *arg)
{
	struct ka_list_ctx *ctx = arg;
	struct ka_key_info *info = bsearch(&life->kid, ctx->v, ctx->n,
					   sizeof(*ctx->v), ks_kid_cmp);

	if (info) {
		info->key.has_life = 1;
		info->key.life = *life;
	}
	return 0;
}

int ka_list_keys(struct ks_store *store, const struct kek *kek, ka_key_fn fn,
		 void *arg, struct ks_err *err)
{
	struct ka_list_ctx ctx = {kek, NULL, 0, 0};
	size_t i;
	int rc;

	rc = ks_list(store, INT64_MIN, INT64_MAX, ka_list_one, &ctx, err);
	if (!rc)
		rc = ks_life_list(store, ka_list_life, &ctx, err);
	for (i = 0; !rc && i < ctx.n; i++)
		rc = fn(&ctx.v[i], arg);
	free(ctx.v);
	return rc;
}

json_t *ka_key_json(const struct ka_key_info *info, int64_t now)
{
	const struct lc_key *k = &info->key;
	json_t *o;

	o = json_pack("{sIsssssIsIsIsIsb}", "kid", (json_int_t)k->kid, "alg",
		      info->alg ? info->alg : "?", "state",
		      lc_state_name(lc_state_at(k, now)), "created",
		      (json_int_t)(k->has_life ? k->life.created : 0),
		      "activate_at", (json_int_t)lc_activate_at(k), "retire_at",
		      (json_int_t)lc_retire_at(k), "exp", (json_int_t)k->exp,
		      "encrypted", info->sealed);
	if (o && k->has_life && k->life.revoked_at != KS_NEVER &&
	    json_object_set_new(o, "revoked_at",
				json_integer(k->life.revoked_at))) {
		json_decref(o);
		o = NULL;
	}
	return o;
}
