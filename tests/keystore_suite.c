/*
 * The key store contract suite, written only against include/keystore.h and
 * run once per backend: `keystore_tests sqlite` tests one backend, no
 * argument tests every backend in ks_backends[]. Every failure message
 * starts with the backend's name, as in Knot's tests/libknot/test_db.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keystore.h"
#include "test.h"
#include "test_fs.h"

/* A non-NULL value that ks_open() must overwrite on failure. */
static char junk;
#define JUNK_STORE ((struct ks_store *)(void *)&junk)

static unsigned char blob_x[] = "x";
static unsigned char blob_imported[] = "imported";
static unsigned char blob_other[] = "other";
static unsigned char blob_imp[] = "imp";

struct ctx {
	const struct ks_backend *be;
	const char *name;
	char dir[TEST_PATH_MAX];
	char path[TEST_PATH_MAX];
};

static int is_sqlite(const struct ctx *c)
{
	return strcmp(c->name, "sqlite") == 0;
}

static int open_at(const struct ctx *c, const char *path, struct ks_store **out,
		   struct ks_err *err)
{
	struct ks_options opts = KS_OPTIONS_INIT;

	opts.path = path;
	return ks_open(out, c->be, &opts, err);
}

/* Open the test's store; report a failure and return NULL if it fails. */
static struct ks_store *open_store(const struct ctx *c)
{
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	int rc = open_at(c, c->path, &store, &err);

	CHECK(rc == 0 && store, "[%s] ks_open '%s' returned %s: %s", c->name,
	      c->path, ks_err_name(rc), err.text);
	return rc == 0 ? store : NULL;
}

static int64_t put_str(const struct ctx *c, struct ks_store *store,
		       const char *blob, int64_t exp)
{
	struct ks_err err = {""};
	int64_t kid = -1;
	int rc = ks_put(store, (const unsigned char *)blob, strlen(blob), exp,
			&kid, &err);

	CHECK(rc == 0, "[%s] put '%s' returned %s: %s", c->name, blob,
	      ks_err_name(rc), err.text);
	return kid;
}

/* Check that kid holds exactly blob[0..len) and exp. */
static void check_record(const struct ctx *c, struct ks_store *store,
			 int64_t kid, const void *blob, size_t len, int64_t exp)
{
	struct ks_record rec;
	struct ks_err err = {""};
	int rc = ks_get(store, kid, &rec, &err);

	CHECK(rc == 0, "[%s] get kid %lld returned %s: %s", c->name,
	      (long long)kid, ks_err_name(rc), err.text);
	if (rc != 0)
		return;
	CHECK_EQ_INT(rec.kid, kid, "[%s] get kid %lld: wrong kid", c->name,
		     (long long)kid);
	CHECK_EQ_INT(rec.exp, exp, "[%s] get kid %lld: wrong exp", c->name,
		     (long long)kid);
	CHECK_EQ_INT(rec.blob_len, len, "[%s] get kid %lld: wrong blob length",
		     c->name, (long long)kid);
	CHECK(rec.blob_len == len && memcmp(rec.blob, blob, len) == 0,
	      "[%s] get kid %lld: blob bytes differ", c->name, (long long)kid);
	ks_record_release(&rec);
}

/* Check that nothing under path is readable or writable by others. */
static void check_private(const struct ctx *c, const char *path)
{
	struct dirent *ent;
	struct stat st;
	DIR *dir;

	if (lstat(path, &st) != 0)
		return;
	if (!S_ISDIR(st.st_mode)) {
		CHECK((st.st_mode & 0777) == 0600, "[%s] '%s' has mode %04o",
		      c->name, path, (unsigned)(st.st_mode & 0777));
		return;
	}
	dir = opendir(path);
	if (!dir)
		return;
	while ((ent = readdir(dir))) {
		char sub[TEST_PATH_MAX];

		if (!strcmp(ent->d_name, ".") || !strcmp(ent->d_name, ".."))
			continue;
		if (join(sub, sizeof(sub), path, ent->d_name) == 0)
			check_private(c, sub);
	}
	closedir(dir);
}

static void test_registry(struct ctx *c)
{
	const struct ks_backend *const *p;
	struct ks_record rec = {0, NULL, 0, 0};
	int found = 0;

	CHECK(ks_backend_find(NULL) == ks_backends[0],
	      "[%s] ks_backend_find(NULL) is not the first backend", c->name);
	CHECK(strcmp(ks_backend_name(ks_backend_find(NULL)), "sqlite") == 0,
	      "[%s] the default backend is '%s', not sqlite", c->name,
	      ks_backend_name(ks_backend_find(NULL)));
	CHECK(ks_backend_find("nope") == NULL,
	      "[%s] ks_backend_find(\"nope\") is not NULL", c->name);
	CHECK(ks_backend_find(c->name) == c->be,
	      "[%s] ks_backend_find by name is another table", c->name);
	for (p = ks_backends; *p; p++)
		found += *p == c->be;
	CHECK_EQ_INT(found, 1, "[%s] listed in ks_backends[] %d times", c->name,
		     found);
	CHECK(ks_backend_default_path(c->be) &&
		      ks_backend_default_path(c->be)[0],
	      "[%s] no default path", c->name);
	if (is_sqlite(c))
		CHECK(strcmp(ks_backend_default_path(c->be),
			     "totally_not_my_privateKeys.db") == 0,
		      "[%s] default path is '%s'", c->name,
		      ks_backend_default_path(c->be));

	ks_record_release(NULL);
	ks_record_release(&rec);
	CHECK(rec.blob == NULL && rec.blob_len == 0,
	      "[%s] releasing an empty record changed it", c->name);
	rec.kid = 7;
	rec.blob_len = 3;
	rec.blob = malloc(rec.blob_len);
	CHECK(rec.blob != NULL, "[%s] malloc failed", c->name);
	if (rec.blob)
		memcpy(rec.blob, "abc", 3);
	ks_record_release(&rec);
	CHECK(rec.blob == NULL && rec.blob_len == 0 && rec.kid == 0,
	      "[%s] ks_record_release did not reset the record", c->name);
}

static int count_fn(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(int *)arg)++;
	return 0;
}

static void test_arguments(struct ctx *c)
{
	struct ks_options opts = KS_OPTIONS_INIT;
	struct ks_store *store = JUNK_STORE;
	struct ks_record rec = {0, blob_x, 1, 0};
	uint64_t version;
	int rc, n = 0;

	opts.path = c->path;
	CHECK_EQ_INT(ks_open(NULL, c->be, &opts, NULL), KS_EINVAL,
		     "[%s] ks_open without out", c->name);
	rc = ks_open(&store, NULL, &opts, NULL);
	CHECK_EQ_INT(rc, KS_EINVAL, "[%s] ks_open without backend", c->name);
	CHECK(store == NULL, "[%s] failed ks_open left *out set", c->name);
	CHECK_EQ_INT(count_entries(c->dir), 0,
		     "[%s] failed ks_open created files", c->name);

	CHECK_EQ_INT(ks_put(NULL, (const unsigned char *)"x", 1, 0, NULL, NULL),
		     KS_EINVAL, "[%s] ks_put without store", c->name);
	CHECK_EQ_INT(ks_get(NULL, 1, &rec, NULL), KS_EINVAL,
		     "[%s] ks_get without store", c->name);
	CHECK_EQ_INT(ks_list(NULL, 0, 1, count_fn, &n, NULL), KS_EINVAL,
		     "[%s] ks_list without store", c->name);
	CHECK_EQ_INT(ks_version(NULL, &version, NULL), KS_EINVAL,
		     "[%s] ks_version without store", c->name);
	CHECK_EQ_INT(ks_check(NULL, NULL), KS_EINVAL,
		     "[%s] ks_check without store", c->name);
	ks_close(NULL);
	CHECK(ks_store_backend(NULL) == NULL,
	      "[%s] ks_store_backend(NULL) is not NULL", c->name);

	store = open_store(c);
	if (!store)
		return;
	CHECK(ks_store_backend(store) == c->be,
	      "[%s] ks_store_backend is another table", c->name);
	CHECK_EQ_INT(ks_get(store, 1, NULL, NULL), KS_EINVAL,
		     "[%s] ks_get without out", c->name);
	CHECK_EQ_INT(ks_list(store, 0, 1, NULL, NULL, NULL), KS_EINVAL,
		     "[%s] ks_list without callback", c->name);
	CHECK_EQ_INT(ks_list(store, 10, 9, count_fn, &n, NULL), KS_EINVAL,
		     "[%s] ks_list with exp_after > exp_until", c->name);
	CHECK_EQ_INT(ks_version(store, NULL, NULL), KS_EINVAL,
		     "[%s] ks_version without out", c->name);
	CHECK_EQ_INT(ks_import(store, NULL, NULL), KS_EINVAL,
		     "[%s] ks_import without record", c->name);
	rec.kid = 0;
	CHECK_EQ_INT(ks_import(store, &rec, NULL), KS_EINVAL,
		     "[%s] ks_import of kid 0", c->name);
	rec.kid = -3;
	CHECK_EQ_INT(ks_import(store, &rec, NULL), KS_EINVAL,
		     "[%s] ks_import of kid -3", c->name);
	CHECK_EQ_INT(n, 0, "[%s] a rejected ks_list called back", c->name);
	ks_close(store);
}

static void test_open_creates(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct stat st;

	if (!store)
		return;
	CHECK(stat(c->path, &st) == 0, "[%s] ks_open did not create '%s'",
	      c->name, c->path);
	put_str(c, store, "first", 100);
	check_private(c, c->dir);
	ks_close(store);
	check_private(c, c->dir);
	if (stat(c->path, &st) == 0 && S_ISREG(st.st_mode))
		CHECK_EQ_INT(st.st_mode & 0777, 0600, "[%s] '%s' mode", c->name,
			     c->path);
}

static void test_default_path(struct ctx *c)
{
	char cwd[TEST_PATH_MAX];
	struct ks_store *store = NULL;
	struct stat st;
	int rc;

	if (!getcwd(cwd, sizeof(cwd)) || chdir(c->dir) != 0) {
		CHECK(0, "[%s] cannot enter '%s'", c->name, c->dir);
		return;
	}
	rc = open_at(c, NULL, &store, NULL);
	CHECK(rc == 0, "[%s] ks_open with a NULL path returned %s", c->name,
	      ks_err_name(rc));
	CHECK(stat(ks_backend_default_path(c->be), &st) == 0,
	      "[%s] ks_open with a NULL path did not create '%s'", c->name,
	      ks_backend_default_path(c->be));
	ks_close(store);
	CHECK(chdir(cwd) == 0, "[%s] cannot go back to '%s'", c->name, cwd);
}

static void test_put_kids(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	int64_t k1, k2, k3;
	int rc;

	if (!store)
		return;
	k1 = put_str(c, store, "one", 10);
	k2 = put_str(c, store, "two", 5);
	k3 = put_str(c, store, "three", 20);
	CHECK_EQ_INT(k1, 1, "[%s] the first kid is not 1", c->name);
	CHECK(k2 > k1 && k3 > k2, "[%s] kids do not grow: %lld %lld %lld",
	      c->name, (long long)k1, (long long)k2, (long long)k3);
	rc = ks_put(store, (const unsigned char *)"four", 4, 1, NULL, NULL);
	CHECK(rc == 0, "[%s] put without kid_out returned %s", c->name,
	      ks_err_name(rc));
	check_record(c, store, k3 + 1, "four", 4, 1);
	ks_close(store);
}

static void test_get_roundtrip(struct ctx *c)
{
	static const unsigned char nuls[] = {0, 'a', 0, 'b', 0, 0, 'c', 0};
	unsigned char big[4096];
	struct ks_store *store = open_store(c);
	int64_t kid[4];
	size_t i;
	int rc;

	if (!store)
		return;
	for (i = 0; i < sizeof(big); i++)
		big[i] = (unsigned char)(i * 7 + 3);
	rc = ks_put(store, nuls, sizeof(nuls), 1234567890, &kid[0], NULL);
	CHECK(rc == 0, "[%s] put of a blob with NULs returned %s", c->name,
	      ks_err_name(rc));
	rc = ks_put(store, big, sizeof(big), -5, &kid[1], NULL);
	CHECK(rc == 0, "[%s] put of a 4 KiB blob returned %s", c->name,
	      ks_err_name(rc));
	rc = ks_put(store, big, 1, INT64_MAX, &kid[2], NULL);
	CHECK(rc == 0, "[%s] put with exp INT64_MAX returned %s", c->name,
	      ks_err_name(rc));
	rc = ks_put(store, big + 1, 2, INT64_MIN + 1, &kid[3], NULL);
	CHECK(rc == 0, "[%s] put with exp INT64_MIN + 1 returned %s", c->name,
	      ks_err_name(rc));

	check_record(c, store, kid[0], nuls, sizeof(nuls), 1234567890);
	check_record(c, store, kid[1], big, sizeof(big), -5);
	check_record(c, store, kid[2], big, 1, INT64_MAX);
	check_record(c, store, kid[3], big + 1, 2, INT64_MIN + 1);
	ks_close(store);
}

static void test_get_unknown(struct ctx *c)
{
	static const int64_t kids[] = {999, 0, -1, INT64_MAX};
	struct ks_store *store = open_store(c);
	struct ks_record rec;
	size_t i;

	if (!store)
		return;
	put_str(c, store, "only", 1);
	for (i = 0; i < sizeof(kids) / sizeof(kids[0]); i++) {
		int rc;

		rec.blob = (unsigned char *)&rec;
		rec.blob_len = 99;
		rc = ks_get(store, kids[i], &rec, NULL);
		CHECK_EQ_INT(rc, KS_ENOTFOUND,
			     "[%s] get of kid %lld returned %s", c->name,
			     (long long)kids[i], ks_err_name(rc));
		CHECK(rec.blob == NULL && rec.blob_len == 0,
		      "[%s] failed get of kid %lld left a blob", c->name,
		      (long long)kids[i]);
	}
	ks_close(store);
}

struct collect {
	const struct ctx *c;
	int64_t kid[64];
	int64_t exp[64];
	int n;
	int stop_at;
	int stop_value;
	int blobs_ok;
};

/* Collect each record; its blob is "k<kid>" as put_numbered() wrote it. */
static int collect_fn(const struct ks_record *rec, void *arg)
{
	struct collect *col = arg;
	char want[32];

	snprintf(want, sizeof(want), "k%lld", (long long)rec->kid);
	if (rec->blob_len != strlen(want) ||
	    memcmp(rec->blob, want, rec->blob_len) != 0)
		col->blobs_ok = 0;
	if (col->n < 64) {
		col->kid[col->n] = rec->kid;
		col->exp[col->n] = rec->exp;
	}
	col->n++;
	return col->n == col->stop_at ? col->stop_value : 0;
}

static void put_numbered(const struct ctx *c, struct ks_store *store,
			 const int64_t *exps, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		char blob[32];
		int64_t kid;

		snprintf(blob, sizeof(blob), "k%d", i + 1);
		kid = put_str(c, store, blob, exps[i]);
		CHECK_EQ_INT(kid, i + 1, "[%s] put_numbered: unexpected kid",
			     c->name);
	}
}

/* Check what a walk of (after, until] collected: exactly want[0..n_want). */
static void check_collected(const struct ctx *c, const char *how, int rc,
			    const struct ks_err *err, const struct collect *col,
			    int64_t after, int64_t until, const int64_t *want,
			    int n_want)
{
	int i;

	CHECK(rc == 0, "[%s] %s (%lld, %lld] returned %s: %s", c->name, how,
	      (long long)after, (long long)until, ks_err_name(rc), err->text);
	CHECK_EQ_INT(col->n, n_want, "[%s] %s (%lld, %lld]: record count",
		     c->name, how, (long long)after, (long long)until);
	for (i = 0; i < col->n && i < n_want; i++)
		CHECK_EQ_INT(col->kid[i], want[i],
			     "[%s] %s (%lld, %lld]: record %d", c->name, how,
			     (long long)after, (long long)until, i);
	for (i = 0; i < col->n && i < 64; i++)
		CHECK(col->exp[i] > after && col->exp[i] <= until,
		      "[%s] %s (%lld, %lld]: kid %lld has exp %lld", c->name,
		      how, (long long)after, (long long)until,
		      (long long)col->kid[i], (long long)col->exp[i]);
	CHECK(col->blobs_ok, "[%s] %s (%lld, %lld]: a blob differs", c->name,
	      how, (long long)after, (long long)until);
}

static void check_list(const struct ctx *c, struct ks_store *store,
		       int64_t after, int64_t until, const int64_t *want,
		       int n_want)
{
	struct collect col = {c, {0}, {0}, 0, -1, 0, 1};
	struct ks_err err = {""};
	int rc = ks_list(store, after, until, collect_fn, &col, &err);

	check_collected(c, "list", rc, &err, &col, after, until, want, n_want);
}

static void test_list_filter(struct ctx *c)
{
	static const int64_t exps[] = {300, 100, 200, 400, 250, 100};
	static const int64_t all[] = {1, 2, 3, 4, 5, 6};
	static const int64_t mid[] = {1, 3, 5};
	static const int64_t low[] = {2, 6};
	static const int64_t top[] = {4};
	struct ks_store *store = open_store(c);

	if (!store)
		return;
	check_list(c, store, INT64_MIN, INT64_MAX, all, 0);
	put_numbered(c, store, exps, 6);
	check_list(c, store, INT64_MIN, INT64_MAX, all, 6);
	check_list(c, store, 100, 300, mid, 3);
	check_list(c, store, 99, 100, low, 2);
	check_list(c, store, 300, 400, top, 1);
	check_list(c, store, 400, INT64_MAX, all, 0);
	check_list(c, store, 200, 200, all, 0);
	check_list(c, store, INT64_MIN, 99, all, 0);
	ks_close(store);
}

static void test_list_stop(struct ctx *c)
{
	static const int64_t exps[] = {1, 2, 3, 4, 5};
	struct ks_store *store = open_store(c);
	struct collect col = {c, {0}, {0}, 0, 2, 42, 1};
	int rc;

	if (!store)
		return;
	put_numbered(c, store, exps, 5);
	rc = ks_list(store, INT64_MIN, INT64_MAX, collect_fn, &col, NULL);
	CHECK_EQ_INT(rc, 42, "[%s] list did not return the callback's 42",
		     c->name);
	CHECK_EQ_INT(col.n, 2, "[%s] list went on after the callback stopped",
		     c->name);

	memset(&col, 0, sizeof(col));
	col.stop_at = 1;
	col.stop_value = -1000;
	rc = ks_list(store, INT64_MIN, INT64_MAX, collect_fn, &col, NULL);
	CHECK_EQ_INT(rc, -1000, "[%s] list did not return the callback's -1000",
		     c->name);
	CHECK_EQ_INT(col.n, 1, "[%s] list went on after the callback stopped",
		     c->name);
	ks_close(store);
}

static void test_reopen(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30};
	static const int64_t all[] = {1, 2, 3, 4};
	struct ks_store *store = open_store(c);
	int64_t kid;

	if (!store)
		return;
	put_numbered(c, store, exps, 3);
	ks_close(store);

	store = open_store(c);
	if (!store)
		return;
	check_record(c, store, 1, "k1", 2, 10);
	check_record(c, store, 2, "k2", 2, 20);
	check_record(c, store, 3, "k3", 2, 30);
	check_list(c, store, INT64_MIN, INT64_MAX, all, 3);
	kid = put_str(c, store, "k4", 40);
	CHECK_EQ_INT(kid, 4, "[%s] the first put after a reopen", c->name);
	ks_close(store);

	store = open_store(c);
	if (!store)
		return;
	check_list(c, store, INT64_MIN, INT64_MAX, all, 4);
	ks_close(store);
}

static void test_import(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_record rec = {10, blob_imported, 8, 77};
	struct ks_err err = {""};
	int64_t kid, last;
	int rc;

	if (!store)
		return;
	kid = put_str(c, store, "put", 1);
	rc = ks_import(store, &rec, &err);
	CHECK(rc == 0, "[%s] import of kid 10 returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	check_record(c, store, 10, "imported", 8, 77);

	rec.blob = blob_other;
	rec.blob_len = 5;
	rec.exp = 5;
	rc = ks_import(store, &rec, NULL);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] import of a taken kid returned %s",
		     c->name, ks_err_name(rc));
	check_record(c, store, 10, "imported", 8, 77);
	rec.kid = kid;
	rc = ks_import(store, &rec, NULL);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] import over a put kid returned %s",
		     c->name, ks_err_name(rc));
	check_record(c, store, kid, "put", 3, 1);

	last = put_str(c, store, "after", 2);
	CHECK(last > 10, "[%s] put after importing kid 10 got kid %lld",
	      c->name, (long long)last);
	rec.kid = 5;
	rc = ks_import(store, &rec, NULL);
	CHECK(rc == 0, "[%s] import of the free kid 5 returned %s", c->name,
	      ks_err_name(rc));
	check_record(c, store, 5, "other", 5, 5);
	kid = put_str(c, store, "again", 3);
	CHECK(kid > last, "[%s] put after importing kid 5 got kid %lld",
	      c->name, (long long)kid);

	rec.kid = 1000;
	rc = ks_import(store, &rec, NULL);
	CHECK(rc == 0, "[%s] import of kid 1000 returned %s", c->name,
	      ks_err_name(rc));
	ks_close(store);
	store = open_store(c);
	if (!store)
		return;
	check_record(c, store, 1000, "other", 5, 5);
	kid = put_str(c, store, "reopened", 4);
	CHECK(kid > 1000, "[%s] put after reopen got kid %lld, not above 1000",
	      c->name, (long long)kid);
	ks_close(store);
}

static int version_of(const struct ctx *c, struct ks_store *store,
		      uint64_t *out)
{
	struct ks_err err = {""};
	int rc = ks_version(store, out, &err);

	CHECK(rc == 0, "[%s] ks_version returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	return rc;
}

static void test_version(struct ctx *c)
{
	struct ks_store *store = open_store(c), *second;
	struct ks_record rec = {50, blob_imp, 3, 9};
	uint64_t v1, v2, v3;

	if (!store)
		return;
	if (ks_version(store, &v1, NULL) == KS_EUNSUPPORTED) {
		printf("[%s] note: no ks_version, version tests skipped\n",
		       c->name);
		ks_close(store);
		return;
	}
	if (version_of(c, store, &v1) || version_of(c, store, &v2))
		goto out;
	CHECK(v1 == v2, "[%s] version changed with no change to the store",
	      c->name);
	put_str(c, store, "v", 1);
	if (version_of(c, store, &v3))
		goto out;
	CHECK(v3 != v2, "[%s] version unchanged after a put (same handle)",
	      c->name);
	CHECK_EQ_INT(ks_import(store, &rec, NULL), 0, "[%s] import", c->name);
	if (version_of(c, store, &v1))
		goto out;
	CHECK(v1 != v3, "[%s] version unchanged after an import", c->name);
	CHECK_EQ_INT(ks_import(store, &rec, NULL), KS_EEXISTS,
		     "[%s] repeated import", c->name);

	/*
	 * A second handle on the same path in this process (LMDB shares one
	 * environment between the two) sees the first one's changes.
	 */
	second = open_store(c);
	if (!second)
		goto out;
	if (version_of(c, store, &v1) || version_of(c, second, &v2))
		goto out2;
	put_str(c, second, "from second handle", 2);
	if (version_of(c, store, &v3) == 0)
		CHECK(v3 != v1,
		      "[%s] (second handle) version unchanged after a put "
		      "through another handle",
		      c->name);
	check_record(c, store, 51, "from second handle", 18, 2);
	put_str(c, store, "from first handle", 3);
	if (version_of(c, second, &v3) == 0)
		CHECK(v3 != v2,
		      "[%s] (second handle) version unchanged after a put "
		      "through the first handle",
		      c->name);
out2:
	ks_close(second);
out:
	ks_close(store);
}

static void test_check(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_err err = {""};
	int rc;

	if (!store)
		return;
	rc = ks_check(store, &err);
	CHECK(rc == 0 || rc == KS_EUNSUPPORTED,
	      "[%s] check of a fresh store returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	put_str(c, store, "x", 1);
	rc = ks_check(store, &err);
	CHECK(rc == 0 || rc == KS_EUNSUPPORTED,
	      "[%s] check after a put returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	ks_close(store);
}

/* Opening the file at c->path fails with KS_ECORRUPT and changes nothing. */
static void check_open_corrupt(const struct ctx *c, const char *what)
{
	struct ks_store *store = JUNK_STORE;
	struct ks_err err = {""};
	size_t len = 0, len_after = 0;
	unsigned char *before = read_file(c->path, &len), *after;
	int rc, entries = count_entries(c->dir);

	CHECK(before != NULL, "[%s] cannot read '%s'", c->name, c->path);
	rc = open_at(c, c->path, &store, &err);
	CHECK_EQ_INT(rc, KS_ECORRUPT, "[%s] open of %s returned %s: %s",
		     c->name, what, ks_err_name(rc), err.text);
	CHECK(store == NULL, "[%s] failed open of %s left *out set", c->name,
	      what);
	if (rc == 0)
		ks_close(store);
	after = read_file(c->path, &len_after);
	CHECK(before && after && len == len_after &&
		      memcmp(before, after, len) == 0,
	      "[%s] open of %s changed the file", c->name, what);
	CHECK_EQ_INT(count_entries(c->dir), entries,
		     "[%s] open of %s left other files", c->name, what);
	free(before);
	free(after);
}

static void check_not_a_store(const struct ctx *c, const char *what,
			      const unsigned char *data, size_t len)
{
	if (write_file(c->path, data, len) != 0) {
		CHECK(0, "[%s] cannot write '%s'", c->name, c->path);
		return;
	}
	check_open_corrupt(c, what);
}

static void test_corrupt(struct ctx *c)
{
	static const char text[] = "this is not a key store\n";
	unsigned char noise[8192];
	uint32_t x = 2463534242u;
	size_t i;

	for (i = 0; i < sizeof(noise); i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		noise[i] = (unsigned char)x;
	}
	check_not_a_store(c, "random bytes", noise, sizeof(noise));
	check_not_a_store(c, "random bytes (100)", noise, 100);
	check_not_a_store(c, "a text file", (const unsigned char *)text,
			  sizeof(text) - 1);
}

/* A closed store of ten records; returns its size, or -1 if not a file. */
static off_t make_store(const struct ctx *c)
{
	unsigned char blob[1500];
	struct ks_store *store = open_store(c);
	struct stat st;
	int i;

	if (!store)
		return -1;
	memset(blob, 'x', sizeof(blob));
	for (i = 0; i < 10; i++)
		CHECK_EQ_INT(ks_put(store, blob, sizeof(blob), i, NULL, NULL),
			     0, "[%s] put", c->name);
	ks_close(store);
	if (stat(c->path, &st) != 0 || !S_ISREG(st.st_mode))
		return -1;
	return st.st_size;
}

static void test_truncated(struct ctx *c)
{
	off_t size = make_store(c);

	if (size < 0) {
		printf("[%s] note: the store is not one file, truncation "
		       "tests skipped\n",
		       c->name);
		return;
	}
	/*
	 * SQLite finds any cut; other backends need only find a file cut
	 * shorter than their header.
	 */
	if (is_sqlite(c)) {
		CHECK(truncate(c->path, size / 2) == 0, "[%s] truncate",
		      c->name);
		check_open_corrupt(c, "a store cut in half");
		unlink(c->path);
		make_store(c);
	}
	CHECK(truncate(c->path, 50) == 0, "[%s] truncate", c->name);
	check_open_corrupt(c, "a store cut to 50 bytes");
}

static void test_missing_dir(struct ctx *c)
{
	struct ks_store *store = JUNK_STORE;
	struct ks_err err = {""};
	char missing[TEST_PATH_MAX], path[TEST_PATH_MAX];
	struct stat st;
	int rc;

	if (join(missing, sizeof(missing), c->dir, "missing") ||
	    join(path, sizeof(path), missing, ks_backend_default_path(c->be))) {
		CHECK(0, "[%s] path too long", c->name);
		return;
	}
	rc = open_at(c, path, &store, &err);
	CHECK(rc == KS_EACCES || rc == KS_EIO,
	      "[%s] open in a missing directory returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	CHECK(store == NULL, "[%s] failed open left *out set", c->name);
	if (rc == 0)
		ks_close(store);
	CHECK(stat(missing, &st) != 0,
	      "[%s] open created the missing directory", c->name);
	CHECK_EQ_INT(count_entries(c->dir), 0, "[%s] failed open created files",
		     c->name);
}

static void test_read_only(struct ctx *c)
{
	struct ks_store *store;
	struct ks_err err = {""};
	char ro[TEST_PATH_MAX], path[TEST_PATH_MAX];
	int rc, entries;

	if (geteuid() == 0) {
		printf("[%s] note: running as root, which ignores file modes: "
		       "read-only tests skipped\n",
		       c->name);
		return;
	}
	store = open_store(c);
	if (!store)
		return;
	put_str(c, store, "kept", 1);
	ks_close(store);
	CHECK(chmod(c->path, 0400) == 0, "[%s] chmod 0400 '%s'", c->name,
	      c->path);
	store = NULL;
	entries = count_entries(c->dir);
	rc = open_at(c, c->path, &store, &err);
	if (rc == 0) {
		rc = ks_put(store, (const unsigned char *)"x", 1, 1, NULL,
			    &err);
		CHECK_EQ_INT(rc, KS_EACCES,
			     "[%s] put into a read-only file returned %s: %s",
			     c->name, ks_err_name(rc), err.text);
		ks_close(store);
	} else {
		CHECK_EQ_INT(rc, KS_EACCES,
			     "[%s] open of a read-only file returned %s: %s",
			     c->name, ks_err_name(rc), err.text);
		CHECK(store == NULL, "[%s] failed open left *out set", c->name);
		CHECK_EQ_INT(count_entries(c->dir), entries,
			     "[%s] failed open of a read-only file left files",
			     c->name);
	}
	chmod(c->path, 0600);
	store = open_store(c);
	if (store) {
		check_record(c, store, 1, "kept", 4, 1);
		ks_close(store);
	}

	if (join(ro, sizeof(ro), c->dir, "ro") ||
	    join(path, sizeof(path), ro, ks_backend_default_path(c->be))) {
		CHECK(0, "[%s] path too long", c->name);
		return;
	}
	CHECK(mkdir(ro, 0500) == 0, "[%s] mkdir '%s'", c->name, ro);
	store = NULL;
	rc = open_at(c, path, &store, &err);
	CHECK_EQ_INT(rc, KS_EACCES,
		     "[%s] open in a read-only directory returned %s: %s",
		     c->name, ks_err_name(rc), err.text);
	CHECK(store == NULL, "[%s] failed open left *out set", c->name);
	if (rc == 0)
		ks_close(store);
	CHECK_EQ_INT(count_entries(ro), 0,
		     "[%s] open in a read-only directory created files",
		     c->name);
}

#define THREADS 4
#define PUTS 50

struct worker {
	struct ks_store *store;
	int id;
	int64_t kid[PUTS];
	int failures;
	char first_failure[300];
};

struct order {
	int64_t last;
	int ok;
};

static int order_fn(const struct ks_record *rec, void *arg)
{
	struct order *o = arg;

	if (rec->kid <= o->last)
		o->ok = 0;
	o->last = rec->kid;
	return 0;
}

static void worker_fail(struct worker *w, const char *what, int rc,
			const struct ks_err *err)
{
	if (!w->failures++)
		snprintf(w->first_failure, sizeof(w->first_failure),
			 "%s returned %s: %s", what, ks_err_name(rc),
			 err->text);
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	int i;

	for (i = 0; i < PUTS; i++) {
		struct order o = {0, 1};
		struct ks_err err = {""};
		char blob[32];
		int rc;

		snprintf(blob, sizeof(blob), "t%d-%d", w->id, i);
		rc = ks_put(w->store, (const unsigned char *)blob, strlen(blob),
			    1000 + i, &w->kid[i], &err);
		if (rc)
			worker_fail(w, "put", rc, &err);
		rc = ks_list(w->store, INT64_MIN, INT64_MAX, order_fn, &o,
			     &err);
		if (rc)
			worker_fail(w, "list", rc, &err);
		else if (!o.ok)
			worker_fail(w, "list (kid order)", KS_OK, &err);
	}
	return NULL;
}

static int cmp_kid(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

static void test_threads(struct ctx *c)
{
	static struct worker w[THREADS];
	int64_t kids[THREADS * PUTS];
	pthread_t tid[THREADS];
	struct ks_store *store = open_store(c);
	int i, j, started = 0, n = 0;

	if (!store)
		return;
	for (i = 0; i < THREADS; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].store = store;
		w[i].id = i;
		if (pthread_create(&tid[i], NULL, worker_run, &w[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, THREADS, "[%s] pthread_create failed", c->name);
	for (i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	for (i = 0; i < started; i++) {
		CHECK(w[i].failures == 0,
		      "[%s] thread %d: %d failures, first: %s", c->name, i,
		      w[i].failures, w[i].first_failure);
		for (j = 0; j < PUTS; j++) {
			char blob[32];

			snprintf(blob, sizeof(blob), "t%d-%d", i, j);
			check_record(c, store, w[i].kid[j], blob, strlen(blob),
				     1000 + j);
			kids[n++] = w[i].kid[j];
		}
	}
	qsort(kids, (size_t)n, sizeof(kids[0]), cmp_kid);
	for (i = 1; i < n; i++)
		if (kids[i] == kids[i - 1])
			break;
	CHECK(i >= n, "[%s] concurrent puts handed out kid %lld twice", c->name,
	      (long long)(i < n ? kids[i] : 0));
	j = 0;
	CHECK_EQ_INT(ks_list(store, INT64_MIN, INT64_MAX, count_fn, &j, NULL),
		     0, "[%s] list after the threads", c->name);
	CHECK_EQ_INT(j, THREADS * PUTS, "[%s] records after concurrent puts",
		     c->name);
	ks_close(store);
}

struct test {
	const char *name;
	void (*fn)(struct ctx *c);
};

static const struct test tests[] = {
	{"registry", test_registry},
	{"arguments", test_arguments},
	{"open creates the store, mode 0600", test_open_creates},
	{"default path", test_default_path},
	{"put assigns growing kids", test_put_kids},
	{"get round trip", test_get_roundtrip},
	{"get of an unknown kid", test_get_unknown},
	{"list filters by expiry, in kid order", test_list_filter},
	{"list callback stops the walk", test_list_stop},
	{"data and kids survive a reopen", test_reopen},
	{"import", test_import},
	{"version", test_version},
	{"check", test_check},
	{"a file that is not a store", test_corrupt},
	{"a truncated store", test_truncated},
	{"a missing directory", test_missing_dir},
	{"read-only file and directory", test_read_only},
	{"threads share one store", test_threads},
};

static void run_backend(const struct ks_backend *be)
{
	const char *tmp = getenv("TMPDIR");
	size_t i;

	if (!tmp || !tmp[0])
		tmp = "/tmp";
	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		struct ctx c;
		int failed = test__failed;

		memset(&c, 0, sizeof(c));
		c.be = be;
		c.name = ks_backend_name(be);
		snprintf(c.dir, sizeof(c.dir), "%s/keystore_%s.XXXXXX", tmp,
			 c.name);
		if (!mkdtemp(c.dir)) {
			CHECK(0, "[%s] mkdtemp '%s' failed: %s", c.name, c.dir,
			      strerror(errno));
			continue;
		}
		if (join(c.path, sizeof(c.path), c.dir,
			 ks_backend_default_path(be)) == 0)
			tests[i].fn(&c);
		else
			CHECK(0, "[%s] path too long", c.name);
		CHECK(rm_rf(c.dir) == 0, "[%s] cannot remove '%s'", c.name,
		      c.dir);
		printf("%s [%s] %s\n", test__failed == failed ? "ok" : "FAIL",
		       c.name, tests[i].name);
	}
}

int main(int argc, char **argv)
{
	const struct ks_backend *const *be;

	if (argc > 2) {
		fprintf(stderr, "usage: %s [BACKEND]\n", argv[0]);
		return 2;
	}
	if (argc == 2) {
		const struct ks_backend *one = ks_backend_find(argv[1]);

		if (!one) {
			fprintf(stderr,
				"keystore_tests: backend '%s' is not built; "
				"built backends:",
				argv[1]);
			for (be = ks_backends; *be; be++)
				fprintf(stderr, " %s", ks_backend_name(*be));
			fputc('\n', stderr);
			return 1;
		}
		run_backend(one);
	} else {
		for (be = ks_backends; *be; be++)
			run_backend(*be);
	}
	return TEST_REPORT();
}
