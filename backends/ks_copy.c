/*
 * ks_copy(): moves every record and its lifecycle entry between two stores,
 * of any backends, through the public dispatchers only.
 */
#define _DEFAULT_SOURCE

#include <stdlib.h>
#include <string.h>

#include "keystore.h"

/*
 * The records of src in kid order and, once they are read, life[i]: the
 * lifecycle entry of rec[i] (kid 0 when it has none). next is where the
 * walk of the entries, in kid order too, has got to in rec.
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
}

struct ks_copy_lives {
	const struct ks_copy_set *set;
	const unsigned char *skip;
};

/* Write the entries of the records copied (not of those skipped). */
static int ks_copy_put_lives(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	const struct ks_copy_lives *l = arg;
	size_t i;
	int rc = 0;

	for (i = 0; !rc && i < l->set->recs.n; i++)
		if (!l->skip[i] && l->set->life[i].kid)
			rc = ks_txn_life_put(txn, &l->set->life[i], err);
	return rc;
}

/* Whether dst already holds rec: 1 identical, 0 absent, KS_EEXISTS. */
static int ks_copy_present(struct ks_store *dst, const struct ks_record *rec,
			   struct ks_err *err)
{
	struct ks_record have = {0};
	int rc = ks_get(dst, rec->kid, &have, err);

	if (rc == KS_ENOTFOUND)
		return 0;
	if (rc)
		return rc;
	rc = have.exp == rec->exp && have.blob_len == rec->blob_len &&
	     memcmp(have.blob, rec->blob, rec->blob_len) == 0;
	ks_record_release(&have);
	if (!rc)
		return ks_err_set(err, KS_EEXISTS,
				  "kid %lld exists in the destination with "
				  "another key",
				  (long long)rec->kid);
	return 1;
}

static int ks_copy_nonempty(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(void)arg;
	return 1;
}

int ks_copy(struct ks_store *dst, struct ks_store *src, int merge,
	    size_t *copied_out, struct ks_err *err)
{
	struct ks_copy_set set = {{NULL, 0, 0}, NULL, 0};
	unsigned char *skip = NULL;
	size_t i, copied = 0, n_life = 0;
	int rc;

	if (!dst || !src || dst == src)
		return KS_EINVAL;
	if (copied_out)
		*copied_out = 0;
	rc = ks_list(dst, INT64_MIN, INT64_MAX, ks_copy_nonempty, NULL, err);
	if (rc == 1 && !merge)
		return ks_err_set(err, KS_EEXISTS,
				  "the destination store is not empty");
	if (rc < 0)
		return rc;
	rc = ks_list(src, INT64_MIN, INT64_MAX, ks_record_set_add, &set.recs,
		     err);
	skip = calloc(set.recs.n ? set.recs.n : 1, 1);
	set.life = calloc(set.recs.n ? set.recs.n : 1, sizeof(*set.life));
	if (!rc && (!skip || !set.life))
		rc = KS_ENOMEM;
	/* Records first: every record listed has its entry visible now. */
	if (!rc)
		rc = ks_life_list(src, ks_copy_collect_life, &set, err);
	/* Every conflict is found before anything is written. */
	for (i = 0; !rc && merge && i < set.recs.n; i++) {
		rc = ks_copy_present(dst, &set.recs.rec[i], err);
		if (rc == 1) {
			skip[i] = 1;
			rc = 0;
		}
	}
	for (i = 0; !rc && i < set.recs.n; i++) {
		if (skip[i])
			continue;
		rc = ks_import(dst, &set.recs.rec[i], err);
		if (!rc)
			copied++;
		if (!rc && set.life[i].kid)
			n_life++;
	}
	if (!rc && n_life) {
		struct ks_copy_lives lives = {&set, skip};

		rc = ks_write(dst, ks_copy_put_lives, &lives, err);
	}
	if (copied_out)
		*copied_out = copied;
	free(skip);
	ks_copy_set_release(&set);
	return rc;
}
