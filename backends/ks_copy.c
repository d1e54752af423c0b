/*
 * ks_copy(): moves every record and its lifecycle entry between two stores,
 * of any backends, through the public dispatchers only. The source is read
 * first; then one write transaction of the destination checks it and
 * writes every record with its entry, so that a failure leaves it as it
 * was.
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

/* What the transaction of ks_copy() works from and reports. */
struct ks_copy_plan {
	const struct ks_copy_set *src;
	int merge;
	size_t copied;
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

/*
 * The whole copy, inside one write transaction of the destination: read
 * what it holds, find every conflict before anything is written, then
 * import each record with its entry. A record skipped as identical that
 * has no entry in the destination gets the source's (a copy made before
 * records and entries were written together may have lost it).
 */
static int ks_copy_txn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ks_copy_plan *plan = arg;
	const struct ks_copy_set *src = plan->src;
	struct ks_copy_set dst = {{NULL, 0, 0}, NULL, 0};
	long *found = NULL;
	size_t i;
	int rc;

	plan->copied = 0;
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
		if (!found)
			rc = ks_err_set(err, KS_ENOMEM, "out of memory");
	}
	for (i = 0; !rc && i < src->recs.n; i++) {
		found[i] = ks_copy_find(&dst, &src->recs.rec[i], err);
		if (found[i] < 0)
			rc = (int)found[i];
	}
	for (i = 0; !rc && i < src->recs.n; i++) {
		const struct ks_life *life = &src->life[i];

		if (!found[i]) {
			rc = ks_txn_import(txn, &src->recs.rec[i], err);
			if (!rc)
				plan->copied++;
		} else if (dst.life[found[i] - 1].kid) {
			continue;
		}
		if (!rc && life->kid)
			rc = ks_txn_life_put(txn, life, err);
	}
	free(found);
	ks_copy_set_release(&dst);
	return rc;
}

int ks_copy(struct ks_store *dst, struct ks_store *src, int merge,
	    size_t *copied_out, struct ks_err *err)
{
	struct ks_copy_set set = {{NULL, 0, 0}, NULL, 0};
	struct ks_copy_plan plan = {&set, merge, 0};
	int rc;

	if (copied_out)
		*copied_out = 0;
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
		rc = ks_write(dst, ks_copy_txn, &plan, err);
	if (!rc && copied_out)
		*copied_out = plan.copied;
	ks_copy_set_release(&set);
	return rc;
}
