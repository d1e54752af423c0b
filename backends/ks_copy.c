/*
 * ks_copy(): moves every record between two stores, of any backends,
 * through the public dispatchers only.
 */
#define _DEFAULT_SOURCE

#include <stdlib.h>
#include <string.h>

#include "keystore.h"

struct ks_copy_set {
	struct ks_record *rec;
	size_t n, cap;
};

static int ks_copy_collect(const struct ks_record *rec, void *arg)
{
	struct ks_copy_set *set = arg;
	struct ks_record *r;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 16;

		r = realloc(set->rec, cap * sizeof(*r));
		if (!r)
			return KS_ENOMEM;
		set->rec = r;
		set->cap = cap;
	}
	r = &set->rec[set->n];
	r->blob = malloc(rec->blob_len ? rec->blob_len : 1);
	if (!r->blob)
		return KS_ENOMEM;
	if (rec->blob_len)
		memcpy(r->blob, rec->blob, rec->blob_len);
	r->blob_len = rec->blob_len;
	r->kid = rec->kid;
	r->exp = rec->exp;
	set->n++;
	return 0;
}

static void ks_copy_set_release(struct ks_copy_set *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		ks_record_release(&set->rec[i]);
	free(set->rec);
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
	struct ks_copy_set set = {NULL, 0, 0};
	unsigned char *skip = NULL;
	size_t i, copied = 0;
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
	rc = ks_list(src, INT64_MIN, INT64_MAX, ks_copy_collect, &set, err);
	skip = calloc(set.n ? set.n : 1, 1);
	if (!rc && !skip)
		rc = KS_ENOMEM;
	/* Every conflict is found before anything is written. */
	for (i = 0; !rc && merge && i < set.n; i++) {
		rc = ks_copy_present(dst, &set.rec[i], err);
		if (rc == 1) {
			skip[i] = 1;
			rc = 0;
		}
	}
	for (i = 0; !rc && i < set.n; i++) {
		if (skip[i])
			continue;
		rc = ks_import(dst, &set.rec[i], err);
		if (!rc)
			copied++;
	}
	if (copied_out)
		*copied_out = copied;
	free(skip);
	ks_copy_set_release(&set);
	return rc;
}
