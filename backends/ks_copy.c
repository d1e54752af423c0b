/*
 * ks_copy(): moves every record and its lifecycle entry, every user and,
 * when asked, the auth log between two stores, of any backends, through
 * the public dispatchers only. The source is read first; then one write
 * transaction of the destination checks it and writes everything, so that
 * a failure leaves it as it was.
 */
#define _DEFAULT_SOURCE

#include <stdlib.h>
#include <string.h>

#include "keystore.h"

/*
 * The records of src in kid order and life[i]: the lifecycle entry of
 * rec[i] (kid 0 when it has none). next is where the walk of the entries,
 * in kid order too, has got to in rec.
 */
struct ks_copy_set {
	struct ks_record_set recs;
	struct ks_life *life;
	size_t next;
};

/* Users in id order, with strings of their own. */
struct ks_copy_users {
	struct ks_user *u;
	size_t n, cap;
};

/* Auth-log entries in id order; skip[i]: entry i is in dst already. */
struct ks_copy_logs {
	struct ks_auth_log *e;
	unsigned char *skip;
	size_t n, cap;
};

/* Keep the entries of the records collected; others came later. */
static int ks_copy_collect_life(const struct ks_life *life, void *arg)
{
	struct ks_copy_set *set = arg;
	const struct ks_record_set *r = &set->recs;

	while (set->next < r->n && r->rec[set->next].kid < life->kid)
		set->next++;
	if (set->next < r->n && r->rec[set->next].kid == life->kid)
		set->life[set->next] = *life;
	return 0;
}

static void ks_copy_set_release(struct ks_copy_set *set)
{
	ks_record_set_release(&set->recs);
	free(set->life);
	memset(set, 0, sizeof(*set));
}

/* Read the records of a store (or a transaction) and their entries. */
static int ks_copy_set_alloc(struct ks_copy_set *set, struct ks_err *err)
{
	set->life = calloc(set->recs.n ? set->recs.n : 1, sizeof(*set->life));
	return set->life ? 0 : ks_err_set(err, KS_ENOMEM, "out of memory");
}

/* A ks_user_fn: append a copy of u to the struct ks_copy_users arg. */
static int ks_copy_collect_user(const struct ks_user *u, void *arg)
{
	struct ks_copy_users *set = arg;
	struct ks_user *c;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 16;

		c = realloc(set->u, cap * sizeof(*c));
		if (!c)
			return KS_ENOMEM;
		set->u = c;
		set->cap = cap;
	}
	c = &set->u[set->n];
	*c = *u;
	c->username = strdup(u->username);
	c->password_hash = strdup(u->password_hash);
	c->email = u->email ? strdup(u->email) : NULL;
	set->n++;
	if (!c->username || !c->password_hash || (u->email && !c->email))
		return KS_ENOMEM;
	return 0;
}

static void ks_copy_users_release(struct ks_copy_users *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		ks_user_release(&set->u[i]);
	free(set->u);
	memset(set, 0, sizeof(*set));
}

/* A ks_auth_log_fn: append e to the struct ks_copy_logs arg. */
static int ks_copy_collect_log(const struct ks_auth_log *e, void *arg)
{
	struct ks_copy_logs *set = arg;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 64;
		struct ks_auth_log *c = realloc(set->e, cap * sizeof(*c));

		if (!c)
			return KS_ENOMEM;
		set->e = c;
		set->cap = cap;
	}
	set->e[set->n++] = *e;
	return 0;
}

/* What the transaction of ks_copy() works from and reports. */
struct ks_copy_plan {
	const struct ks_copy_set *src;
	const struct ks_copy_users *users;
	struct ks_copy_logs *logs;
	int merge;
	struct ks_copy_counts counts;
};

/*
 * Whether dst (the records of the destination, with entries) holds rec:
 * the index + 1 of the identical record, 0 when absent, KS_EEXISTS when
 * its kid holds another key.
 */
static long ks_copy_find(const struct ks_copy_set *dst,
			 const struct ks_record *rec, struct ks_err *err)
{
	const struct ks_record *have;

	if (!dst->recs.n)
		return 0;
	have = bsearch(&rec->kid, dst->recs.rec, dst->recs.n,
		       sizeof(*dst->recs.rec), ks_kid_cmp);
	if (!have)
		return 0;
	if (have->exp != rec->exp || have->blob_len != rec->blob_len ||
	    memcmp(have->blob, rec->blob, rec->blob_len) != 0)
		return ks_err_set(err, KS_EEXISTS,
				  "kid %lld exists in the destination with "
				  "another key",
				  (long long)rec->kid);
	return (long)(have - dst->recs.rec) + 1;
}

static int ks_copy_same_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static int ks_copy_same_user(const struct ks_user *a, const struct ks_user *b)
{
	return ks_copy_same_text(a->username, b->username) &&
	       ks_copy_same_text(a->email, b->email) &&
	       ks_copy_same_text(a->password_hash, b->password_hash) &&
	       a->registered == b->registered &&
	       a->last_login == b->last_login && !a->locked == !b->locked;
}

/*
 * Check every user of src against dst (the destination's users): skip[i]
 * is set for a user dst holds as it is. KS_EEXISTS for an id that holds
 * another user there, or a username or email that another user has.
 */
static int ks_copy_check_users(const struct ks_copy_users *src,
			       const struct ks_copy_users *dst,
			       unsigned char *skip, struct ks_err *err)
{
	size_t i, j;

	for (i = 0; i < src->n; i++) {
		const struct ks_user *u = &src->u[i], *have;

		have = dst->n ? bsearch(&u->id, dst->u, dst->n, sizeof(*dst->u),
					ks_kid_cmp)
			      : NULL;
		if (have && !ks_copy_same_user(u, have))
			return ks_err_set(err, KS_EEXISTS,
					  "user %lld exists in the "
					  "destination with other content",
					  (long long)u->id);
		skip[i] = have != NULL;
		for (j = 0; !have && j < dst->n; j++) {
			const struct ks_user *d = &dst->u[j];

			if (!strcmp(d->username, u->username))
				return ks_err_set(err, KS_EEXISTS,
						  "the username of user %lld "
						  "is taken by user %lld in "
						  "the destination",
						  (long long)u->id,
						  (long long)d->id);
			if (u->email && d->email && !strcmp(d->email, u->email))
				return ks_err_set(err, KS_EEXISTS,
						  "the email of user %lld is "
						  "taken by user %lld in the "
						  "destination",
						  (long long)u->id,
						  (long long)d->id);
		}
	}
	return 0;
}

/* The walk of the destination's auth log, against the source's. */
struct ks_copy_log_check {
	struct ks_copy_logs *src;
	int merge;
	struct ks_err *err;
};

static int ks_copy_check_log(const struct ks_auth_log *e, void *arg)
{
	struct ks_copy_log_check *c = arg;
	const struct ks_auth_log *have;

	if (!c->merge)
		return ks_err_set(c->err, KS_EEXISTS,
				  "the destination store is not empty: its "
				  "auth log has entries");
	have = bsearch(&e->id, c->src->e, c->src->n, sizeof(*c->src->e),
		       ks_kid_cmp);
	if (!have)
		return 0;
	if (strcmp(have->ip, e->ip) != 0 || have->when != e->when ||
	    have->user_id != e->user_id || !have->success != !e->success)
		return ks_err_set(c->err, KS_EEXISTS,
				  "auth-log entry %lld exists in the "
				  "destination with other content",
				  (long long)e->id);
	c->src->skip[have - c->src->e] = 1;
	return 0;
}

/*
 * Check the users (and the auth log) of the plan against the destination
 * inside txn; skip[i] says which users are there already.
 */
static int ks_copy_check_accounts(struct ks_txn *txn, struct ks_copy_plan *plan,
				  unsigned char *skip, struct ks_err *err)
{
	struct ks_copy_users dst = {NULL, 0, 0};
	struct ks_copy_log_check lc = {plan->logs, plan->merge, err};
	int rc = 0;

	if (plan->users->n) {
		rc = ks_txn_user_list(txn, ks_copy_collect_user, &dst, err);
		if (rc == KS_ENOMEM)
			rc = ks_err_set(err, rc, "out of memory");
		if (!rc && dst.n && !plan->merge)
			rc = ks_err_set(err, KS_EEXISTS,
					"the destination store is not empty: "
					"it has users");
		if (!rc)
			rc = ks_copy_check_users(plan->users, &dst, skip, err);
		ks_copy_users_release(&dst);
	}
	if (!rc && plan->logs->n) {
		memset(plan->logs->skip, 0, plan->logs->n);
		rc = ks_txn_auth_log_list(txn, 0, ks_copy_check_log, &lc, err);
	}
	return rc;
}

/*
 * Import the users and the auth-log entries that the destination does not
 * hold yet; the entries after the users, whose ids they name.
 */
static int ks_copy_write_accounts(struct ks_txn *txn, struct ks_copy_plan *plan,
				  const unsigned char *skip, struct ks_err *err)
{
	const struct ks_copy_logs *logs = plan->logs;
	struct ks_auth_log *todo = NULL;
	size_t i, n = 0;
	int rc = 0;

	for (i = 0; !rc && i < plan->users->n; i++) {
		if (skip[i])
			continue;
		rc = ks_txn_user_import(txn, &plan->users->u[i], err);
		if (!rc)
			plan->counts.users++;
	}
	if (!rc && logs->n) {
		todo = malloc(logs->n * sizeof(*todo));
		if (!todo)
			rc = ks_err_set(err, KS_ENOMEM, "out of memory");
	}
	for (i = 0; !rc && i < logs->n; i++)
		if (!logs->skip[i])
			todo[n++] = logs->e[i];
	if (!rc && n)
		rc = ks_txn_auth_log_import(txn, todo, n, err);
	if (!rc)
		plan->counts.auth_logs = n;
	free(todo);
	return rc;
}

/*
 * The whole copy, inside one write transaction of the destination: read
 * what it holds, find every conflict before anything is written, then
 * import each record with its entry, the users and the auth log. A record
 * skipped as identical that has no entry in the destination gets the
 * source's (a copy made before records and entries were written together
 * may have lost it).
 */
static int ks_copy_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ks_copy_plan *plan = arg;
	const struct ks_copy_set *src = plan->src;
	struct ks_copy_set dst = {{NULL, 0, 0}, NULL, 0};
	unsigned char *skip = NULL;
	long *found = NULL;
	size_t i;
	int rc;

	memset(&plan->counts, 0, sizeof(plan->counts));
	rc = ks_txn_list(txn, INT64_MIN, INT64_MAX, ks_record_set_add,
			 &dst.recs, err);
	if (!rc && dst.recs.n && !plan->merge)
		rc = ks_err_set(err, KS_EEXISTS,
				"the destination store is not empty");
	if (!rc)
		rc = ks_copy_set_alloc(&dst, err);
	if (!rc)
		rc = ks_txn_life_list(txn, ks_copy_collect_life, &dst, err);
	if (!rc) {
		found = calloc(src->recs.n ? src->recs.n : 1, sizeof(*found));
		skip = calloc(plan->users->n ? plan->users->n : 1, 1);
		if (!found || !skip)
			rc = ks_err_set(err, KS_ENOMEM, "out of memory");
	}
	for (i = 0; !rc && i < src->recs.n; i++) {
		found[i] = ks_copy_find(&dst, &src->recs.rec[i], err);
		if (found[i] < 0)
			rc = (int)found[i];
	}
	if (!rc)
		rc = ks_copy_check_accounts(txn, plan, skip, err);
	for (i = 0; !rc && i < src->recs.n; i++) {
		const struct ks_life *life = &src->life[i];

		if (!found[i]) {
			rc = ks_txn_import(txn, &src->recs.rec[i], err);
			if (!rc)
				plan->counts.keys++;
		} else if (dst.life[found[i] - 1].kid) {
			continue;
		}
		if (!rc && life->kid)
			rc = ks_txn_life_put(txn, life, err);
	}
	if (!rc)
		rc = ks_copy_write_accounts(txn, plan, skip, err);
	free(found);
	free(skip);
	ks_copy_set_release(&dst);
	return rc;
}

/*
 * Read the users of src and, with KS_COPY_AUTH_LOG, its auth log. A
 * backend that keeps no accounts (KS_EUNSUPPORTED) has none to copy.
 */
static int ks_copy_read_accounts(struct ks_store *src, unsigned flags,
				 struct ks_copy_users *users,
				 struct ks_copy_logs *logs, struct ks_err *err)
{
	struct ks_err detail = {{0}};
	int rc = ks_user_list(src, ks_copy_collect_user, users, &detail);

	if (rc == KS_EUNSUPPORTED && !users->n)
		return 0;
	if (!rc && (flags & KS_COPY_AUTH_LOG))
		rc = ks_auth_log_list(src, 0, ks_copy_collect_log, logs,
				      &detail);
	if (!rc && logs->n) {
		logs->skip = calloc(logs->n, 1);
		if (!logs->skip)
			rc = KS_ENOMEM;
	}
	if (rc == KS_ENOMEM)
		return ks_err_set(err, rc, "out of memory");
	if (rc)
		return ks_err_set(err, rc, "%s", detail.text);
	return 0;
}

int ks_copy(struct ks_store *dst, struct ks_store *src, unsigned flags,
	    struct ks_copy_counts *out, struct ks_err *err)
{
	struct ks_copy_set set = {{NULL, 0, 0}, NULL, 0};
	struct ks_copy_users users = {NULL, 0, 0};
	struct ks_copy_logs logs = {NULL, NULL, 0, 0};
	struct ks_copy_plan plan = {
		&set, &users, &logs, (flags & KS_COPY_MERGE) != 0, {0, 0, 0}};
	int rc;

	if (out)
		memset(out, 0, sizeof(*out));
	if (!dst || !src || dst == src)
		return KS_EINVAL;
	rc = ks_list(src, INT64_MIN, INT64_MAX, ks_record_set_add, &set.recs,
		     err);
	if (!rc)
		rc = ks_copy_set_alloc(&set, err);
	/* Records first: every record listed has its entry visible now. */
	if (!rc)
		rc = ks_life_list(src, ks_copy_collect_life, &set, err);
	if (!rc)
		rc = ks_copy_read_accounts(src, flags, &users, &logs, err);
	if (!rc)
		rc = ks_write(dst, ks_copy_txn, &plan, err);
	if (!rc && out)
		*out = plan.counts;
	ks_copy_set_release(&set);
	ks_copy_users_release(&users);
	free(logs.e);
	free(logs.skip);
	return rc;
}
