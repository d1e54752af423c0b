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
#include <sys/wait.h>
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
static unsigned char blob_k1[] = "k1";
static unsigned char blob_k3[] = "k3";

/*
 * A network store (no default file: PostgreSQL) lives at the connection
 * string in JWKS_TEST_PG; each test gets a fresh schema there instead of
 * a fresh directory. dir is made for every backend all the same.
 */
struct ctx {
	const struct ks_backend *be;
	const char *name;
	int network;
	char schema[64];
	char dir[TEST_PATH_MAX];
	char path[TEST_PATH_MAX];
};

static int is_sqlite(const struct ctx *c)
{
	return strcmp(c->name, "sqlite") == 0;
}

static int is_network(const struct ks_backend *be)
{
	return ks_backend_default_path(be)[0] == '\0';
}

static const char *test_pg(void)
{
	const char *conninfo = getenv("JWKS_TEST_PG");

	return conninfo && conninfo[0] ? conninfo : NULL;
}

static int open_at(const struct ctx *c, const char *path, struct ks_store **out,
		   struct ks_err *err)
{
	struct ks_options opts = KS_OPTIONS_INIT;

	opts.path = path;
	if (c->network)
		opts.pg_schema = c->schema;
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
		      (c->network || ks_backend_default_path(c->be)[0]),
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
		CHECK((after == INT64_MIN || col->exp[i] > after) &&
			      col->exp[i] <= until,
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

static int write_ok(const struct ctx *c, struct ks_store *store, ks_txn_fn fn,
		    void *arg, const char *what);

static int min_exp_txn_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	static const int64_t all[] = {1, 2, 3};
	const struct ctx *c = arg;
	struct collect col = {c, {0}, {0}, 0, -1, 0, 1};
	int rc = ks_txn_list(txn, INT64_MIN, INT64_MAX, collect_fn, &col, err);

	check_collected(c, "txn list", rc, err, &col, INT64_MIN, INT64_MAX, all,
			3);
	return 0;
}

/*
 * exp_after INT64_MIN has no lower bound: a record whose exp is INT64_MIN
 * is part of every all-records walk (list, txn list, copy), and of
 * [INT64_MIN, until] ranges; a bound above INT64_MIN excludes it.
 */
static void test_list_min_exp(struct ctx *c)
{
	static const int64_t all[] = {1, 2, 3};
	static const int64_t lowest[] = {1};
	static const int64_t low[] = {1, 3};
	static const int64_t above[] = {2};
	const struct ks_backend *const *be;
	struct ks_store *store = open_store(c);

	if (!store)
		return;
	put_str(c, store, "k1", INT64_MIN);
	put_str(c, store, "k2", 5);
	put_str(c, store, "k3", INT64_MIN + 1);
	check_list(c, store, INT64_MIN, INT64_MAX, all, 3);
	check_list(c, store, INT64_MIN, INT64_MIN, lowest, 1);
	check_list(c, store, INT64_MIN, 0, low, 2);
	check_list(c, store, INT64_MIN + 1, INT64_MAX, above, 1);
	write_ok(c, store, min_exp_txn_fn, c, "txn list with exp INT64_MIN");
	for (be = ks_backends; *be; be++) {
		struct ks_options opts = KS_OPTIONS_INIT;
		char name[64], path[TEST_PATH_MAX], schema[64];
		struct ks_store *dst = NULL;
		struct ks_err err = {""};
		struct ks_copy_counts copied = {0, 0, 0};
		int rc;

		snprintf(name, sizeof(name), "copy-%s", ks_backend_name(*be));
		if (join(path, sizeof(path), c->dir, name)) {
			CHECK(0, "[%s] path too long", c->name);
			continue;
		}
		opts.path = path;
		if (is_network(*be)) {
			/* A schema of its own beside the test's. */
			if (!test_pg())
				continue;
			opts.path = test_pg();
			snprintf(schema, sizeof(schema), "t_%ld_%s_min",
				 (long)getpid(), c->name);
			opts.pg_schema = schema;
		}
		rc = ks_open(&dst, *be, &opts, &err);
		CHECK(rc == 0, "[%s] open of %s returned %s: %s", c->name, name,
		      ks_err_name(rc), err.text);
		if (rc)
			continue;
		rc = ks_copy(dst, store, 0, &copied, &err);
		CHECK(rc == 0, "[%s] copy into %s returned %s: %s", c->name,
		      name, ks_err_name(rc), err.text);
		CHECK_EQ_INT(copied.keys, 3, "[%s] records copied into %s",
			     c->name, name);
		check_record(c, dst, 1, "k1", 2, INT64_MIN);
		check_list(c, dst, INT64_MIN, INT64_MAX, all, 3);
		ks_close(dst);
	}
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

/*
 * What a sound store answers to ks_check() and ks_version(), per backend:
 * each of ours implements both (0). A new backend is added here with its
 * real answers; an unknown name fails.
 */
static const struct {
	const char *name;
	int check, version;
} optional_answers[] = {
	{"sqlite", 0, 0},
	{"lmdb", 0, 0},
	{"postgres", 0, 0},
};

/* The expected answers of c's backend, or NULL (a failed check). */
static const int *expected_answer(const struct ctx *c, int version)
{
	size_t i;

	for (i = 0; i < sizeof(optional_answers) / sizeof(optional_answers[0]);
	     i++)
		if (!strcmp(optional_answers[i].name, c->name))
			return version ? &optional_answers[i].version
				       : &optional_answers[i].check;
	CHECK(0, "[%s] no expected answers for this backend in the suite",
	      c->name);
	return NULL;
}

static void test_version(struct ctx *c)
{
	struct ks_store *store = open_store(c), *second;
	struct ks_record rec = {50, blob_imp, 3, 9};
	const int *want;
	uint64_t v1, v2, v3;

	if (!store)
		return;
	if (ks_version(store, &v1, NULL) == KS_EUNSUPPORTED) {
		want = expected_answer(c, 1);
		CHECK(!want || *want == KS_EUNSUPPORTED,
		      "[%s] ks_version returned KS_EUNSUPPORTED", c->name);
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
	const int *want = expected_answer(c, 0);
	struct ks_store *store = want ? open_store(c) : NULL;
	struct ks_err err = {""};
	int rc;

	if (!store)
		return;
	rc = ks_check(store, &err);
	CHECK(rc == *want,
	      "[%s] check of a fresh store returned %s, want %s: %s", c->name,
	      ks_err_name(rc), ks_err_name(*want), err.text);
	put_str(c, store, "x", 1);
	rc = ks_check(store, &err);
	CHECK(rc == *want, "[%s] check after a put returned %s, want %s: %s",
	      c->name, ks_err_name(rc), ks_err_name(*want), err.text);
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

/*
 * Write transactions and lifecycle entries. A transaction callback gets the
 * struct of its test, whose first member is the ctx, and records failures
 * with CHECK() as the rest of the suite does.
 */
#define LIVES_MAX 16

struct lives {
	struct ks_life e[LIVES_MAX];
	int n;
};

static int lives_fn(const struct ks_life *life, void *arg)
{
	struct lives *l = arg;

	if (l->n < LIVES_MAX)
		l->e[l->n] = *life;
	l->n++;
	return 0;
}

static int same_life(const struct ks_life *a, const struct ks_life *b)
{
	return a->kid == b->kid && a->created == b->created &&
	       a->activate_at == b->activate_at &&
	       a->retire_at == b->retire_at && a->revoked_at == b->revoked_at;
}

/* Check what a walk of lifecycle entries found: exactly want[0..n). */
static void check_lives(const struct ctx *c, const char *what, int rc,
			const struct ks_err *err, const struct lives *got,
			const struct ks_life *want, int n)
{
	int i;

	CHECK(rc == 0, "[%s] %s: life list returned %s: %s", c->name, what,
	      ks_err_name(rc), err->text);
	CHECK_EQ_INT(got->n, n, "[%s] %s: lifecycle entry count", c->name,
		     what);
	for (i = 0; i < got->n && i < n && i < LIVES_MAX; i++)
		CHECK(same_life(&got->e[i], &want[i]),
		      "[%s] %s: entry %d is {%lld, %lld, %lld, %lld, %lld}, "
		      "want kid %lld",
		      c->name, what, i, (long long)got->e[i].kid,
		      (long long)got->e[i].created,
		      (long long)got->e[i].activate_at,
		      (long long)got->e[i].retire_at,
		      (long long)got->e[i].revoked_at, (long long)want[i].kid);
}

static void check_life(const struct ctx *c, struct ks_store *store,
		       const char *what, const struct ks_life *want, int n)
{
	struct lives got;
	struct ks_err err = {""};
	int rc;

	memset(&got, 0, sizeof(got));
	rc = ks_life_list(store, lives_fn, &got, &err);
	check_lives(c, what, rc, &err, &got, want, n);
}

/* Run fn in a write transaction that must commit. */
static int write_ok(const struct ctx *c, struct ks_store *store, ks_txn_fn fn,
		    void *arg, const char *what)
{
	struct ks_err err = {""};
	int rc = ks_write(store, fn, arg, &err);

	CHECK(rc == 0, "[%s] %s: ks_write returned %d (%s): %s", c->name, what,
	      rc, ks_err_name(rc), err.text);
	return rc;
}

/*
 * One operation in a transaction of its own; the callbacks return the
 * operation's result, which ks_write() hands back.
 */
struct one {
	struct ks_record rec;
	struct ks_life life;
	int64_t kid;
};

static int one_update_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	return ks_txn_update(txn, &((struct one *)arg)->rec, err);
}

static int one_delete_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	return ks_txn_delete(txn, ((struct one *)arg)->kid, err);
}

static int one_life_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	return ks_txn_life_put(txn, &((struct one *)arg)->life, err);
}

static int update(struct ks_store *store, int64_t kid, const char *blob,
		  int64_t exp, struct ks_err *err)
{
	unsigned char buf[64];
	struct one o;

	memset(&o, 0, sizeof(o));
	o.rec.blob_len = strlen(blob);
	if (o.rec.blob_len > sizeof(buf))
		return KS_EINVAL;
	memcpy(buf, blob, o.rec.blob_len);
	o.rec.kid = kid;
	o.rec.blob = buf;
	o.rec.exp = exp;
	return ks_write(store, one_update_fn, &o, err);
}

static int delete_kid(struct ks_store *store, int64_t kid, struct ks_err *err)
{
	struct one o;

	memset(&o, 0, sizeof(o));
	o.kid = kid;
	return ks_write(store, one_delete_fn, &o, err);
}

static int life_put(struct ks_store *store, const struct ks_life *life,
		    struct ks_err *err)
{
	struct one o;

	memset(&o, 0, sizeof(o));
	o.life = *life;
	return ks_write(store, one_life_fn, &o, err);
}

static void life_put_ok(const struct ctx *c, struct ks_store *store,
			const struct ks_life *life)
{
	struct ks_err err = {""};
	int rc = life_put(store, life, &err);

	CHECK(rc == 0, "[%s] life put of kid %lld returned %s: %s", c->name,
	      (long long)life->kid, ks_err_name(rc), err.text);
}

struct txn_put {
	const struct ctx *c;
	int64_t next, kid, next_after;
	int empty_rc;
};

static int txn_put_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct txn_put *t = arg;
	int rc = ks_txn_next_kid(txn, &t->next, err);

	if (!rc)
		rc = ks_txn_put(txn, blob_x, 1, 42, &t->kid, err);
	if (!rc)
		rc = ks_txn_next_kid(txn, &t->next_after, err);
	t->empty_rc = ks_txn_put(txn, blob_x, 0, 1, NULL, NULL);
	return rc;
}

static void test_txn_put(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct txn_put t = {c, 0, 0, 0, 0};
	int64_t first, kid;

	if (!store)
		return;
	CHECK_EQ_INT(ks_write(NULL, txn_put_fn, &t, NULL), KS_EINVAL,
		     "[%s] ks_write without store", c->name);
	CHECK_EQ_INT(ks_write(store, NULL, &t, NULL), KS_EINVAL,
		     "[%s] ks_write without callback", c->name);
	CHECK_EQ_INT(ks_life_list(store, NULL, NULL, NULL), KS_EINVAL,
		     "[%s] ks_life_list without callback", c->name);
	first = put_str(c, store, "one", 1);
	if (write_ok(c, store, txn_put_fn, &t, "next_kid then put") == 0) {
		CHECK(t.next > first, "[%s] next_kid %lld after kid %lld",
		      c->name, (long long)t.next, (long long)first);
		CHECK_EQ_INT(t.kid, t.next,
			     "[%s] ks_txn_put did not assign the kid "
			     "ks_txn_next_kid gave",
			     c->name);
		CHECK(t.next_after > t.kid,
		      "[%s] next_kid %lld after putting kid %lld", c->name,
		      (long long)t.next_after, (long long)t.kid);
		CHECK_EQ_INT(t.empty_rc, KS_EINVAL,
			     "[%s] ks_txn_put of an empty blob", c->name);
	}
	check_record(c, store, t.kid, "x", 1, 42);
	kid = put_str(c, store, "after", 2);
	CHECK(kid > t.kid, "[%s] put after a transaction got kid %lld", c->name,
	      (long long)kid);
	check_record(c, store, first, "one", 3, 1);
	ks_close(store);
}

static void test_txn_update(struct ctx *c)
{
	static const int64_t exps[] = {10, 20};
	static const struct ks_life life = {1, 5, 6, 7, KS_NEVER};
	unsigned char big[4096];
	struct ks_store *store = open_store(c);
	struct ks_err err = {""};
	struct ks_record rec;
	struct one o;
	size_t i;
	int rc;

	if (!store)
		return;
	put_numbered(c, store, exps, 2);
	life_put_ok(c, store, &life);
	rc = update(store, 1, "replaced", 99, &err);
	CHECK(rc == 0, "[%s] update of kid 1 returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	check_record(c, store, 1, "replaced", 8, 99);
	check_record(c, store, 2, "k2", 2, 20);
	check_life(c, store, "after an update", &life, 1);

	for (i = 0; i < sizeof(big); i++)
		big[i] = (unsigned char)(i * 5 + 1);
	memset(&o, 0, sizeof(o));
	o.rec.kid = 1;
	o.rec.blob = big;
	o.rec.blob_len = sizeof(big);
	o.rec.exp = INT64_MIN + 1;
	CHECK_EQ_INT(write_ok(c, store, one_update_fn, &o, "update to 4 KiB"),
		     0, "[%s] update to a larger blob", c->name);
	check_record(c, store, 1, big, sizeof(big), INT64_MIN + 1);
	rc = update(store, 1, "s", -7, NULL);
	CHECK_EQ_INT(rc, 0, "[%s] update to a smaller blob", c->name);
	check_record(c, store, 1, "s", 1, -7);

	rc = update(store, 77, "nope", 1, &err);
	CHECK_EQ_INT(rc, KS_ENOTFOUND, "[%s] update of a missing kid: %s",
		     c->name, err.text);
	rc = ks_get(store, 77, &rec, NULL);
	CHECK_EQ_INT(rc, KS_ENOTFOUND, "[%s] a failed update made kid 77",
		     c->name);
	ks_record_release(&rec);
	CHECK_EQ_INT(update(store, 0, "nope", 1, NULL), KS_ENOTFOUND,
		     "[%s] update of kid 0", c->name);
	CHECK_EQ_INT(update(store, 2, "", 1, NULL), KS_EINVAL,
		     "[%s] update to an empty blob", c->name);
	check_record(c, store, 2, "k2", 2, 20);
	CHECK_EQ_INT(put_str(c, store, "k3", 30), 3, "[%s] put after updates",
		     c->name);
	ks_close(store);
}

static void test_txn_delete(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30};
	static const int64_t one_two[] = {1, 2};
	static const struct ks_life lives[] = {{2, 1, 2, 3, KS_NEVER},
					       {3, 4, 5, 6, 7}};
	struct ks_store *store = open_store(c);
	struct txn_put t = {c, 0, 0, 0, 0};
	struct ks_err err = {""};
	struct ks_record rec;
	int64_t kid, again;
	int rc;

	if (!store)
		return;
	put_numbered(c, store, exps, 3);
	life_put_ok(c, store, &lives[0]);
	life_put_ok(c, store, &lives[1]);
	rc = delete_kid(store, 3, &err);
	CHECK(rc == 0, "[%s] delete of kid 3 returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	rc = ks_get(store, 3, &rec, NULL);
	CHECK_EQ_INT(rc, KS_ENOTFOUND, "[%s] get of a deleted kid", c->name);
	ks_record_release(&rec);
	check_list(c, store, INT64_MIN, INT64_MAX, one_two, 2);
	check_life(c, store, "after deleting kid 3", lives, 1);

	CHECK_EQ_INT(delete_kid(store, 3, NULL), KS_ENOTFOUND,
		     "[%s] second delete of kid 3", c->name);
	CHECK_EQ_INT(delete_kid(store, 99, NULL), KS_ENOTFOUND,
		     "[%s] delete of kid 99", c->name);
	CHECK_EQ_INT(delete_kid(store, 0, NULL), KS_ENOTFOUND,
		     "[%s] delete of kid 0", c->name);

	/* The largest kid was deleted: it is never handed out again. */
	kid = put_str(c, store, "k4", 40);
	CHECK(kid > 3, "[%s] put after deleting kid 3 got kid %lld", c->name,
	      (long long)kid);
	if (write_ok(c, store, txn_put_fn, &t, "put after a delete") == 0)
		CHECK(t.kid > kid, "[%s] transaction put got kid %lld", c->name,
		      (long long)t.kid);
	CHECK_EQ_INT(delete_kid(store, t.kid, NULL), 0,
		     "[%s] delete of the last kid", c->name);
	ks_close(store);

	store = open_store(c);
	if (!store)
		return;
	again = put_str(c, store, "reopened", 1);
	CHECK(again > t.kid, "[%s] put after delete and reopen got kid %lld",
	      c->name, (long long)again);
	check_life(c, store, "after a reopen", lives, 1);
	CHECK_EQ_INT(delete_kid(store, 2, NULL), 0, "[%s] delete of kid 2",
		     c->name);
	check_life(c, store, "after deleting kid 2", lives, 0);
	check_record(c, store, 1, "k1", 2, 10);
	ks_close(store);
}

static void test_life(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30, 40};
	static const struct ks_life want[] = {
		{1, -5, -1, INT64_MIN, KS_NEVER},
		{2, 0, INT64_MIN + 1, -1700000000, 123},
		{3, 1700000000, 1700000100, 1800000000, KS_NEVER},
	};
	static const struct ks_life upsert[] = {
		{1, -5, -1, INT64_MIN, KS_NEVER},
		{2, 5, 6, 7, 8},
		{3, 1700000000, 1700000100, 1800000000, KS_NEVER},
	};
	struct ks_store *store = open_store(c);
	struct ks_life missing = {99, 1, 2, 3, 4};
	struct ks_err err = {""};
	int rc;

	if (!store)
		return;
	check_life(c, store, "an empty store", want, 0);
	put_numbered(c, store, exps, 4);
	check_life(c, store, "records without entries", want, 0);
	/* Written out of order; listed in kid order. Kid 4 has none. */
	life_put_ok(c, store, &want[2]);
	life_put_ok(c, store, &want[0]);
	life_put_ok(c, store, &want[1]);
	check_life(c, store, "three entries", want, 3);
	life_put_ok(c, store, &upsert[1]);
	check_life(c, store, "a replaced entry", upsert, 3);

	rc = life_put(store, &missing, &err);
	CHECK_EQ_INT(rc, KS_ENOTFOUND, "[%s] life put of a missing kid: %s",
		     c->name, err.text);
	missing.kid = 0;
	CHECK_EQ_INT(life_put(store, &missing, NULL), KS_ENOTFOUND,
		     "[%s] life put of kid 0", c->name);
	check_life(c, store, "after failed life puts", upsert, 3);
	ks_close(store);

	store = open_store(c);
	if (!store)
		return;
	check_life(c, store, "after a reopen", upsert, 3);
	ks_close(store);
}

/*
 * A transaction that puts a record, updates kid 1, deletes kid 2, gives
 * kid 3 an entry and changes kid 1's, then returns ret.
 */
struct script {
	const struct ctx *c;
	int ret;
	int64_t kid;
};

static const struct ks_life script_l1 = {1, 10, 11, 12, 13};
static const struct ks_life script_l2 = {2, 20, 21, 22, KS_NEVER};
static const struct ks_life script_l1b = {1, -10, -11, -12, -13};
static const struct ks_life script_l3 = {3, 30, 31, 32, 33};

static int script_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	static const struct ks_record changed = {1, blob_other, 5, 111};
	struct script *s = arg;
	const char *step = "put";
	int rc;

	rc = ks_txn_put(txn, blob_x, 1, 50, &s->kid, err);
	if (!rc) {
		step = "update";
		rc = ks_txn_update(txn, &changed, err);
	}
	if (!rc) {
		step = "delete";
		rc = ks_txn_delete(txn, 2, err);
	}
	if (!rc) {
		step = "life put (new)";
		rc = ks_txn_life_put(txn, &script_l3, err);
	}
	if (!rc) {
		step = "life put (replace)";
		rc = ks_txn_life_put(txn, &script_l1b, err);
	}
	CHECK(rc == 0, "[%s] transaction %s returned %s: %s", s->c->name, step,
	      ks_err_name(rc), err ? err->text : "");
	return rc ? rc : s->ret;
}

static void test_txn_rollback(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30};
	static const int64_t all[] = {1, 2, 3};
	static const int rets[] = {77, -1000, KS_ENOTFOUND};
	const struct ks_life before[] = {script_l1, script_l2};
	const struct ks_life after[] = {script_l1b, script_l3};
	struct ks_store *store = open_store(c);
	struct script s = {c, 0, 0};
	struct ks_err err = {""};
	struct ks_record rec;
	size_t i;
	int rc;

	if (!store)
		return;
	put_numbered(c, store, exps, 3);
	life_put_ok(c, store, &script_l1);
	life_put_ok(c, store, &script_l2);
	for (i = 0; i < sizeof(rets) / sizeof(rets[0]); i++) {
		s.ret = rets[i];
		s.kid = 0;
		rc = ks_write(store, script_fn, &s, &err);
		CHECK_EQ_INT(rc, rets[i],
			     "[%s] ks_write did not return the callback's "
			     "value",
			     c->name);
		check_list(c, store, INT64_MIN, INT64_MAX, all, 3);
		check_record(c, store, 1, "k1", 2, 10);
		check_record(c, store, 2, "k2", 2, 20);
		rc = ks_get(store, s.kid, &rec, NULL);
		CHECK_EQ_INT(rc, KS_ENOTFOUND,
			     "[%s] a rolled back put left kid %lld", c->name,
			     (long long)s.kid);
		ks_record_release(&rec);
		check_life(c, store, "after a rollback", before, 2);
	}

	/* The same transaction, returning 0, commits all of it. */
	s.ret = 0;
	if (write_ok(c, store, script_fn, &s, "the script") == 0) {
		int n = 0;

		CHECK(s.kid > 3, "[%s] the committed put got kid %lld", c->name,
		      (long long)s.kid);
		check_record(c, store, 1, "other", 5, 111);
		check_record(c, store, 3, "k3", 2, 30);
		check_record(c, store, s.kid, "x", 1, 50);
		rc = ks_get(store, 2, &rec, NULL);
		CHECK_EQ_INT(rc, KS_ENOTFOUND,
			     "[%s] the committed delete left kid 2", c->name);
		ks_record_release(&rec);
		CHECK_EQ_INT(ks_list(store, INT64_MIN, INT64_MAX, count_fn, &n,
				     NULL),
			     0, "[%s] list after the commit", c->name);
		CHECK_EQ_INT(n, 3, "[%s] records after the commit", c->name);
		check_life(c, store, "after the commit", after, 2);
	}
	ks_close(store);
}

/* The transaction's own writes, seen from inside it. */
struct own {
	const struct ctx *c;
	int64_t kid;
};

static int own_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	static const struct ks_record k3 = {3, blob_k3, 2, 5};
	static const struct ks_life l1 = {1, 1, 1, 1, 1};
	struct own *o = arg;
	struct collect col = {o->c, {0}, {0}, 0, -1, 0, 1};
	struct ks_life l4 = {0, 4, 4, 4, KS_NEVER}, wl[2];
	struct lives lv;
	char blob[32];
	int64_t want[3];
	int rc;

	rc = ks_txn_delete(txn, 2, err);
	if (!rc)
		rc = ks_txn_next_kid(txn, &o->kid, err);
	if (rc)
		return rc;
	snprintf(blob, sizeof(blob), "k%lld", (long long)o->kid);
	rc = ks_txn_put(txn, (const unsigned char *)blob, strlen(blob), 40,
			NULL, err);
	if (!rc)
		rc = ks_txn_update(txn, &k3, err);
	l4.kid = o->kid;
	if (!rc)
		rc = ks_txn_life_put(txn, &l4, err);
	if (rc)
		return rc;

	want[0] = 1;
	want[1] = 3;
	want[2] = o->kid;
	rc = ks_txn_list(txn, INT64_MIN, INT64_MAX, collect_fn, &col, err);
	check_collected(o->c, "txn list", rc, err, &col, INT64_MIN, INT64_MAX,
			want, 3);
	memset(&col, 0, sizeof(col));
	col.stop_at = -1;
	col.blobs_ok = 1;
	rc = ks_txn_list(txn, 0, 10, collect_fn, &col, err);
	check_collected(o->c, "txn list", rc, err, &col, 0, 10, want, 2);
	memset(&col, 0, sizeof(col));
	col.stop_at = 1;
	col.stop_value = 9;
	CHECK_EQ_INT(
		ks_txn_list(txn, INT64_MIN, INT64_MAX, collect_fn, &col, err),
		9, "[%s] txn list did not return the callback's 9", o->c->name);

	memset(&lv, 0, sizeof(lv));
	rc = ks_txn_life_list(txn, lives_fn, &lv, err);
	wl[0] = l1;
	wl[1] = l4;
	check_lives(o->c, "txn life list", rc, err, &lv, wl, 2);
	return 0;
}

static void test_txn_list(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30};
	static const struct ks_life l1 = {1, 1, 1, 1, 1};
	struct ks_store *store = open_store(c);
	struct own o = {c, 0};
	struct ks_err err = {""};
	int64_t want[3] = {1, 3, 0};

	if (!store)
		return;
	put_numbered(c, store, exps, 3);
	life_put_ok(c, store, &l1);
	if (write_ok(c, store, own_fn, &o, "own writes") == 0) {
		struct collect col = {c, {0}, {0}, 0, -1, 0, 1};
		int rc = ks_list(store, INT64_MIN, INT64_MAX, collect_fn, &col,
				 &err);

		want[2] = o.kid;
		check_collected(c, "list after the commit", rc, &err, &col,
				INT64_MIN, INT64_MAX, want, 3);
		check_record(c, store, 3, "k3", 2, 5);
	}
	ks_close(store);
}

/* Put a record and its lifecycle entry, bound to the kid it will get. */
struct put_life {
	const char *blob;
	int64_t exp;
	struct ks_life life;
};

static int put_life_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct put_life *p = arg;
	int64_t kid = 0;
	int rc = ks_txn_next_kid(txn, &p->life.kid, err);

	if (!rc)
		rc = ks_txn_put(txn, (const unsigned char *)p->blob,
				strlen(p->blob), p->exp, &kid, err);
	if (!rc && kid != p->life.kid)
		rc = ks_err_set(err, KS_EIO, "put got kid %lld, not %lld",
				(long long)kid, (long long)p->life.kid);
	if (!rc)
		rc = ks_txn_life_put(txn, &p->life, err);
	return rc;
}

static void test_txn_two_stores(struct ctx *c)
{
	struct ks_store *a = open_store(c), *b;
	struct put_life p = {"from a", 7, {0, 100, 200, 300, KS_NEVER}};
	struct put_life q = {"from b", 8, {0, -1, -2, -3, -4}};
	int64_t kid_a;

	if (!a)
		return;
	b = open_store(c);
	if (!b) {
		ks_close(a);
		return;
	}
	if (write_ok(c, a, put_life_fn, &p, "put through a") == 0) {
		check_record(c, b, p.life.kid, "from a", 6, 7);
		check_life(c, b, "b after a's commit", &p.life, 1);
	}
	kid_a = p.life.kid;
	if (write_ok(c, b, put_life_fn, &q, "put through b") == 0) {
		const struct ks_life both[] = {p.life, q.life};

		CHECK(q.life.kid > kid_a, "[%s] b got kid %lld after a's %lld",
		      c->name, (long long)q.life.kid, (long long)kid_a);
		check_record(c, a, q.life.kid, "from b", 6, 8);
		check_life(c, a, "a after b's commit", both, 2);
	}
	CHECK_EQ_INT(update(b, kid_a, "changed by b", 9, NULL), 0,
		     "[%s] update through b", c->name);
	check_record(c, a, kid_a, "changed by b", 12, 9);
	CHECK_EQ_INT(delete_kid(a, q.life.kid, NULL), 0,
		     "[%s] delete through a", c->name);
	check_life(c, b, "b after a's delete", &p.life, 1);
	ks_close(b);
	check_life(c, a, "a after b closed", &p.life, 1);
	CHECK_EQ_INT(update(a, kid_a, "a alone", 10, NULL), 0,
		     "[%s] update through a after b closed", c->name);
	ks_close(a);
}

/* ks_copy() into a store of every backend copies lifecycle entries. */
static void test_copy_life(struct ctx *c)
{
	static const int64_t exps[] = {10, 20, 30, 40};
	static const struct ks_life lives[] = {{1, 1, 2, 3, KS_NEVER},
					       {4, -4, -3, -2, -1}};
	static const struct ks_life theirs = {1, 9, 9, 9, 9};
	const struct ks_backend *const *be;
	struct ks_store *src = open_store(c);

	if (!src)
		return;
	put_numbered(c, src, exps, 4);
	CHECK_EQ_INT(delete_kid(src, 2, NULL), 0, "[%s] delete", c->name);
	life_put_ok(c, src, &lives[0]);
	life_put_ok(c, src, &lives[1]);

	for (be = ks_backends; *be; be++) {
		struct ks_options opts = KS_OPTIONS_INIT;
		char name[64], path[TEST_PATH_MAX], schema[64];
		struct ks_record rec = {1, blob_k1, 2, 10};
		struct ks_store *dst = NULL;
		struct ks_err err = {""};
		struct ks_copy_counts copied = {0, 0, 0};
		int rc, merge;

		for (merge = 0; merge < 2; merge++) {
			snprintf(name, sizeof(name), "%s-%s",
				 merge ? "merge" : "copy",
				 ks_backend_name(*be));
			if (join(path, sizeof(path), c->dir, name)) {
				CHECK(0, "[%s] path too long", c->name);
				continue;
			}
			opts.path = path;
			if (is_network(*be)) {
				/* A schema of its own beside the test's. */
				if (!test_pg()) {
					printf("[%s] note: JWKS_TEST_PG unset, "
					       "no copy into %s\n",
					       c->name, ks_backend_name(*be));
					continue;
				}
				opts.path = test_pg();
				snprintf(schema, sizeof(schema), "%.40s_%s",
					 c->network ? c->schema : "t",
					 merge ? "m" : "c");
				if (!c->network)
					snprintf(schema, sizeof(schema),
						 "t_%ld_%s_%s", (long)getpid(),
						 c->name, merge ? "m" : "c");
				opts.pg_schema = schema;
			}
			rc = ks_open(&dst, *be, &opts, &err);
			CHECK(rc == 0, "[%s] open of %s returned %s: %s",
			      c->name, name, ks_err_name(rc), err.text);
			if (rc)
				continue;
			/*
			 * With merge, dst already has kid 1, the same record
			 * with another entry: the entry is kept.
			 */
			if (merge) {
				CHECK_EQ_INT(ks_import(dst, &rec, NULL), 0,
					     "[%s] import into %s", c->name,
					     name);
				life_put_ok(c, dst, &theirs);
			}
			rc = ks_copy(dst, src, merge ? KS_COPY_MERGE : 0,
				     &copied, &err);
			CHECK(rc == 0, "[%s] copy into %s returned %s: %s",
			      c->name, name, ks_err_name(rc), err.text);
			CHECK_EQ_INT(copied.keys, merge ? 2 : 3,
				     "[%s] records copied into %s", c->name,
				     name);
			check_record(c, dst, 1, "k1", 2, 10);
			check_record(c, dst, 3, "k3", 2, 30);
			check_record(c, dst, 4, "k4", 2, 40);
			if (merge) {
				const struct ks_life kept[] = {theirs,
							       lives[1]};

				check_life(c, dst, name, kept, 2);
			} else {
				check_life(c, dst, name, lives, 2);
			}
			ks_close(dst);
		}
	}
	check_life(c, src, "the source after copies", lives, 2);
	ks_close(src);
}

/* How many files in dir hold needle somewhere in their bytes. */
static int files_holding(const char *dir, const char *needle)
{
	static const char *const suffixes[] = {"", "-wal", "-shm", "-lock"};
	char path[TEST_PATH_MAX];
	size_t i, j, len, n = strlen(needle);
	int found = 0;

	for (i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		unsigned char *data;

		snprintf(path, sizeof(path), "%s%s", dir, suffixes[i]);
		data = read_file(path, &len);
		for (j = 0; data && j + n <= len; j++) {
			if (!memcmp(data + j, needle, n)) {
				found++;
				break;
			}
		}
		free(data);
	}
	return found;
}

/*
 * Records replaced in place (private keys encrypted, say) leave no earlier
 * copy in the store's files once scrubbed; the store keeps working.
 */
static void test_scrub(struct ctx *c)
{
	static const char marker[] = "PLAINTEXT-PRIVATE-KEY-MARKER";
	struct ks_store *store = open_store(c), *second = NULL;
	struct ks_err err = {""};
	int64_t kid;
	int rc;

	if (!store)
		return;
	for (kid = 1; kid <= 20; kid++)
		put_str(c, store, marker, kid);
	for (kid = 1; kid <= 20; kid++)
		CHECK_EQ_INT(update(store, kid, "sealed", kid, NULL), 0,
			     "[%s] update %lld", c->name, (long long)kid);
	/* A server's files are not ours to read: only the calls are tested. */
	if (!c->network)
		CHECK(files_holding(c->path, marker) > 0,
		      "[%s] before scrubbing the old bytes are still there",
		      c->name);
	if (!is_sqlite(c) && !c->network &&
	    open_at(c, c->path, &second, NULL) == 0) {
		CHECK_EQ_INT(ks_scrub(store, NULL), KS_EBUSY,
			     "[%s] a second handle: busy", c->name);
		ks_close(second);
	}
	rc = ks_scrub(store, &err);
	CHECK(rc == 0, "[%s] scrub returned %s: %s", c->name, ks_err_name(rc),
	      err.text);
	if (!c->network)
		CHECK_EQ_INT(files_holding(c->path, marker), 0,
			     "[%s] no earlier copy left after scrubbing",
			     c->name);
	check_record(c, store, 7, "sealed", 6, 7);
	CHECK_EQ_INT(put_str(c, store, "after", 99), 21,
		     "[%s] the store works after scrubbing", c->name);
	ks_close(store);
	store = open_store(c);
	if (store)
		check_record(c, store, 21, "after", 5, 99);
	ks_close(store);
}

/*
 * Accounts: users and the auth log. Times are realistic (the SQLite
 * backend keeps them as text timestamps, PostgreSQL as timestamps).
 */
#define T0 ((int64_t)1700000000)

/* A string the interface takes as char * but never writes. */
#define MUT(text) ((char *)(uintptr_t)(text))

static struct ks_user user(int64_t id, const char *username, const char *email,
			   const char *hash, int64_t registered,
			   int64_t last_login, int locked)
{
	struct ks_user u = {id,		MUT(username), MUT(email), MUT(hash),
			    registered, last_login,    locked};

	return u;
}

static const char hash_a[] = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
static const char hash_b[] = "$argon2id$v=19$m=65536,t=3,p=1$YmJiYg$Y2NjYw";

/* Copies of users, for looking at them after a listing ended. */
struct user_set {
	struct ks_user u[64];
	size_t n;
};

static int user_set_add(const struct ks_user *u, void *arg)
{
	struct user_set *set = arg;
	struct ks_user *c;

	if (set->n == sizeof(set->u) / sizeof(set->u[0]))
		return 99;
	c = &set->u[set->n++];
	*c = *u;
	c->username = strdup(u->username);
	c->email = u->email ? strdup(u->email) : NULL;
	c->password_hash = strdup(u->password_hash);
	return 0;
}

static void user_set_release(struct user_set *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		ks_user_release(&set->u[i]);
	set->n = 0;
}

/* The users of store into set, in the order ks_user_list() gives. */
static int list_users(const struct ctx *c, struct ks_store *store,
		      struct user_set *set)
{
	struct ks_err err = {""};
	int rc;

	set->n = 0;
	rc = ks_user_list(store, user_set_add, set, &err);
	CHECK(rc == 0, "[%s] user list returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	return rc;
}

struct log_set {
	struct ks_auth_log e[64];
	size_t n;
};

static int log_set_add(const struct ks_auth_log *e, void *arg)
{
	struct log_set *set = arg;

	if (set->n == sizeof(set->e) / sizeof(set->e[0]))
		return 99;
	set->e[set->n++] = *e;
	return 0;
}

static int list_log(const struct ctx *c, struct ks_store *store,
		    int64_t after_id, struct log_set *set)
{
	struct ks_err err = {""};
	int rc;

	set->n = 0;
	rc = ks_auth_log_list(store, after_id, log_set_add, set, &err);
	CHECK(rc == 0, "[%s] auth log list after %lld returned %s: %s", c->name,
	      (long long)after_id, ks_err_name(rc), err.text);
	return rc;
}

static int64_t add_user(const struct ctx *c, struct ks_store *store,
			const char *username, const char *email,
			int64_t registered)
{
	struct ks_err err = {""};
	int64_t id = -1;
	int rc = ks_user_add(store, username, hash_a, email, registered, &id,
			     &err);

	CHECK(rc == 0 && id > 0, "[%s] add of user #%zu returned %s: %s",
	      c->name, strlen(username), ks_err_name(rc), err.text);
	return rc ? -1 : id;
}

static int same_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether a and b are the same user, field by field. */
static int same_user(const struct ks_user *a, const struct ks_user *b)
{
	return a->id == b->id && same_text(a->username, b->username) &&
	       same_text(a->email, b->email) &&
	       same_text(a->password_hash, b->password_hash) &&
	       a->registered == b->registered &&
	       a->last_login == b->last_login && !a->locked == !b->locked;
}

/* Check that username reads back as want, field by field. */
static void check_user(const struct ctx *c, struct ks_store *store,
		       const char *what, const struct ks_user *want)
{
	struct ks_user u;
	struct ks_err err = {""};
	int rc = ks_user_get(store, want->username, &u, &err);

	CHECK(rc == 0, "[%s] %s: get returned %s: %s", c->name, what,
	      ks_err_name(rc), err.text);
	if (rc)
		return;
	CHECK_EQ_INT(u.id, want->id, "[%s] %s: id", c->name, what);
	CHECK(same_text(u.username, want->username), "[%s] %s: username",
	      c->name, what);
	CHECK(same_text(u.email, want->email), "[%s] %s: email '%s'", c->name,
	      what, u.email ? u.email : "(null)");
	CHECK(same_text(u.password_hash, want->password_hash), "[%s] %s: hash",
	      c->name, what);
	CHECK_EQ_INT(u.registered, want->registered, "[%s] %s: registered",
		     c->name, what);
	CHECK_EQ_INT(u.last_login, want->last_login, "[%s] %s: last_login",
		     c->name, what);
	CHECK_EQ_INT(u.locked, want->locked, "[%s] %s: locked", c->name, what);
	ks_user_release(&u);
}

static void check_no_user(const struct ctx *c, struct ks_store *store,
			  const char *username, const char *what)
{
	struct ks_user u;
	int rc;

	memset(&u, 0x5a, sizeof(u));
	rc = ks_user_get(store, username, &u, NULL);
	CHECK_EQ_INT(rc, KS_ENOTFOUND, "[%s] %s: get", c->name, what);
	CHECK(u.username == NULL && u.email == NULL && u.password_hash == NULL,
	      "[%s] %s: a failed get left strings in *out", c->name, what);
}

static int stop_user(const struct ks_user *u, void *arg)
{
	(*(int *)arg)++;
	return u ? 7 : 0;
}

static void test_users_basic(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_user want =
		user(0, "alice", "alice@example.org", hash_a, T0, KS_NEVER, 0);
	struct user_set set = {.n = 0};
	int64_t ids[3];
	int calls = 0;

	if (!store)
		return;
	check_no_user(c, store, "alice", "an empty store");
	ids[0] = add_user(c, store, "alice", "alice@example.org", T0);
	ids[1] = add_user(c, store, "bob", NULL, T0 + 1);
	ids[2] = add_user(c, store, "carol", "carol@example.org", T0 + 2);
	CHECK(ids[0] > 0 && ids[1] > ids[0] && ids[2] > ids[1],
	      "[%s] ids %lld %lld %lld do not grow", c->name, (long long)ids[0],
	      (long long)ids[1], (long long)ids[2]);
	want.id = ids[0];
	check_user(c, store, "alice", &want);
	want = user(ids[1], "bob", NULL, hash_a, T0 + 1, KS_NEVER, 0);
	check_user(c, store, "bob", &want);
	check_no_user(c, store, "alic", "a prefix of a username");
	check_no_user(c, store, "Alice", "another case");
	if (list_users(c, store, &set) == 0) {
		CHECK_EQ_INT(set.n, 3, "[%s] users listed", c->name);
		CHECK(set.n == 3 && set.u[0].id == ids[0] &&
			      set.u[1].id == ids[1] && set.u[2].id == ids[2] &&
			      !strcmp(set.u[2].username, "carol") &&
			      !strcmp(set.u[2].email, "carol@example.org") &&
			      set.u[2].registered == T0 + 2,
		      "[%s] list is not the users in id order", c->name);
	}
	user_set_release(&set);
	CHECK_EQ_INT(ks_user_list(store, stop_user, &calls, NULL), 7,
		     "[%s] list returns the callback's value", c->name);
	CHECK_EQ_INT(calls, 1, "[%s] list stopped after the first user",
		     c->name);
	ks_close(store);
	store = open_store(c);
	if (store) {
		want = user(ids[0], "alice", "alice@example.org", hash_a, T0,
			    KS_NEVER, 0);
		check_user(c, store, "alice after a reopen", &want);
	}
	ks_close(store);
}

static void test_users_unique(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_user imp =
		user(500, "zed", "zed@example.org", hash_b, T0, KS_NEVER, 0);
	struct user_set set = {.n = 0};
	struct ks_err err = {""};
	int64_t alice, id = -1;
	int rc;

	if (!store)
		return;
	alice = add_user(c, store, "alice", "a@example.org", T0);
	rc = ks_user_add(store, "alice", hash_b, "other@example.org", T0, &id,
			 &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] a second alice", c->name);
	CHECK(strstr(err.text, "username") != NULL,
	      "[%s] the error does not say the username: %s", c->name,
	      err.text);
	CHECK_EQ_INT(id, 0, "[%s] a failed add gave an id", c->name);
	err.text[0] = '\0';
	rc = ks_user_add(store, "dave", hash_b, "a@example.org", T0, &id, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] a taken email", c->name);
	CHECK(strstr(err.text, "email") != NULL,
	      "[%s] the error does not say the email: %s", c->name, err.text);
	/* No email is no conflict, however many have none. */
	add_user(c, store, "erin", NULL, T0);
	add_user(c, store, "frank", NULL, T0);

	/* Import: a taken id, username or email is refused too. */
	imp.id = alice;
	CHECK_EQ_INT(ks_user_import(store, &imp, NULL), KS_EEXISTS,
		     "[%s] import of a taken id", c->name);
	imp.id = 500;
	imp.username = MUT("alice");
	CHECK_EQ_INT(ks_user_import(store, &imp, NULL), KS_EEXISTS,
		     "[%s] import of a taken username", c->name);
	imp.username = MUT("zed");
	imp.email = MUT("a@example.org");
	CHECK_EQ_INT(ks_user_import(store, &imp, NULL), KS_EEXISTS,
		     "[%s] import of a taken email", c->name);
	check_no_user(c, store, "dave", "after a refused add");
	check_no_user(c, store, "zed", "after refused imports");
	if (list_users(c, store, &set) == 0)
		CHECK_EQ_INT(set.n, 3, "[%s] refused writes added users",
			     c->name);
	user_set_release(&set);
	ks_close(store);
}

static void test_users_ids_grow(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	int64_t a, b, d, e, f;

	if (!store)
		return;
	a = add_user(c, store, "a", NULL, T0);
	b = add_user(c, store, "b", NULL, T0);
	CHECK_EQ_INT(ks_user_delete(store, b, NULL), 0, "[%s] delete b",
		     c->name);
	d = add_user(c, store, "d", NULL, T0);
	CHECK(d > b, "[%s] id %lld after deleting %lld", c->name, (long long)d,
	      (long long)b);
	CHECK_EQ_INT(ks_user_delete(store, a, NULL), 0, "[%s] delete a",
		     c->name);
	CHECK_EQ_INT(ks_user_delete(store, d, NULL), 0, "[%s] delete d",
		     c->name);
	/* Nobody left: ids still do not go back. */
	e = add_user(c, store, "b", NULL, T0);
	CHECK(e > d, "[%s] id %lld after deleting %lld", c->name, (long long)e,
	      (long long)d);
	ks_close(store);
	store = open_store(c);
	if (!store)
		return;
	f = add_user(c, store, "f", NULL, T0);
	CHECK(f > e, "[%s] id %lld after a reopen, after %lld", c->name,
	      (long long)f, (long long)e);
	ks_close(store);
}

static void test_users_import(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_user imp = user(50, "imported", "imp@example.org", hash_b,
				  T0 - 86400, T0 + 5, 1);
	struct ks_user low = user(10, "low", NULL, hash_a, T0, KS_NEVER, 0);
	struct ks_err err = {""};
	int64_t id;
	int rc;

	if (!store)
		return;
	add_user(c, store, "first", NULL, T0);
	rc = ks_user_import(store, &imp, &err);
	CHECK(rc == 0, "[%s] import returned %s: %s", c->name, ks_err_name(rc),
	      err.text);
	check_user(c, store, "imported", &imp);
	id = add_user(c, store, "after", NULL, T0);
	CHECK(id > 50, "[%s] add after importing id 50 gave %lld", c->name,
	      (long long)id);
	/* A free id below the others may be imported; adds stay above. */
	rc = ks_user_import(store, &low, &err);
	CHECK(rc == 0, "[%s] import of id 10 returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	check_user(c, store, "low", &low);
	CHECK(add_user(c, store, "later", NULL, T0) > id,
	      "[%s] an add after a lower import went back", c->name);
	ks_close(store);
}

static void test_users_set(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_user want = user(0, "alice", NULL, hash_b, T0, T0 + 60, 1);
	struct ks_user other =
		user(0, "bob", "bob@example.org", hash_a, T0, KS_NEVER, 0);
	struct ks_err err = {""};
	int rc;

	if (!store)
		return;
	want.id = add_user(c, store, "alice", NULL, T0);
	other.id = add_user(c, store, "bob", "bob@example.org", T0);
	rc = ks_user_set_hash(store, want.id, hash_b, &err);
	CHECK(rc == 0, "[%s] set_hash returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	rc = ks_user_set_locked(store, want.id, 1, &err);
	CHECK(rc == 0, "[%s] lock returned %s: %s", c->name, ks_err_name(rc),
	      err.text);
	CHECK_EQ_INT(ks_user_set_locked(store, want.id, 1, NULL), 0,
		     "[%s] locking twice", c->name);
	rc = ks_user_set_login(store, want.id, T0 + 60, &err);
	CHECK(rc == 0, "[%s] set_login returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	check_user(c, store, "alice changed", &want);
	check_user(c, store, "bob untouched", &other);
	CHECK_EQ_INT(ks_user_set_locked(store, want.id, 0, NULL), 0,
		     "[%s] unlock", c->name);
	want.locked = 0;
	CHECK_EQ_INT(ks_user_set_login(store, want.id, T0 + 120, NULL), 0,
		     "[%s] a later login", c->name);
	want.last_login = T0 + 120;
	check_user(c, store, "alice unlocked", &want);

	CHECK_EQ_INT(ks_user_set_hash(store, 9999, hash_a, NULL), KS_ENOTFOUND,
		     "[%s] set_hash of an unknown id", c->name);
	CHECK_EQ_INT(ks_user_set_locked(store, 9999, 1, NULL), KS_ENOTFOUND,
		     "[%s] lock of an unknown id", c->name);
	CHECK_EQ_INT(ks_user_set_login(store, 9999, T0, NULL), KS_ENOTFOUND,
		     "[%s] set_login of an unknown id", c->name);
	CHECK_EQ_INT(ks_user_delete(store, 9999, NULL), KS_ENOTFOUND,
		     "[%s] delete of an unknown id", c->name);
	CHECK_EQ_INT(ks_user_set_locked(store, 0, 1, NULL), KS_ENOTFOUND,
		     "[%s] lock of id 0", c->name);
	check_no_user(c, store, "9999", "after writes to unknown ids");
	check_user(c, store, "alice after writes to unknown ids", &want);
	ks_close(store);
}

static struct ks_auth_log log_entry(const char *ip, int64_t when,
				    int64_t user_id, int success)
{
	struct ks_auth_log e;

	memset(&e, 0, sizeof(e));
	e.id = 999999; /* ks_auth_log_add() assigns ids: this is ignored */
	snprintf(e.ip, sizeof(e.ip), "%s", ip);
	e.when = when;
	e.user_id = user_id;
	e.success = success;
	return e;
}

/* Check that got is want with some id, in order, ids growing. */
static void check_log(const struct ctx *c, const char *what,
		      const struct log_set *got, const struct ks_auth_log *want,
		      size_t n)
{
	size_t i;

	CHECK_EQ_INT(got->n, n, "[%s] %s: entries", c->name, what);
	for (i = 0; i < n && i < got->n; i++) {
		const struct ks_auth_log *g = &got->e[i];

		CHECK(g->id > 0 && (i == 0 || g->id > got->e[i - 1].id),
		      "[%s] %s: entry %zu has id %lld", c->name, what, i,
		      (long long)g->id);
		CHECK(!strcmp(g->ip, want[i].ip) && g->when == want[i].when &&
			      g->user_id == want[i].user_id &&
			      !g->success == !want[i].success,
		      "[%s] %s: entry %zu is (%s, %lld, %lld, %d), want (%s, "
		      "%lld, %lld, %d)",
		      c->name, what, i, g->ip, (long long)g->when,
		      (long long)g->user_id, g->success, want[i].ip,
		      (long long)want[i].when, (long long)want[i].user_id,
		      want[i].success);
	}
}

static int stop_log(const struct ks_auth_log *e, void *arg)
{
	(*(int *)arg)++;
	return e ? 5 : 0;
}

static void test_auth_log(struct ctx *c)
{
	static const char long_ip[] = "0123456789abcdef0123456789abcdef"
				      "0123456789abcdef0123456789abcde";
	struct ks_store *store = open_store(c);
	struct ks_auth_log batch[5], more[2];
	struct log_set got = {.n = 0};
	struct ks_err err = {""};
	int64_t alice;
	int rc, calls = 0;

	if (!store)
		return;
	alice = add_user(c, store, "alice", NULL, T0);
	list_log(c, store, 0, &got);
	CHECK_EQ_INT(got.n, 0, "[%s] a new store's log", c->name);
	batch[0] = log_entry("127.0.0.1", T0, alice, 1);
	batch[1] = log_entry("2001:db8::1", T0 + 1, alice, 0);
	batch[2] = log_entry("10.0.0.7", T0 + 1, 0, 0);
	batch[3] = log_entry(long_ip, T0 - 3600, 0, 0);
	batch[4] = log_entry("192.0.2.1", T0 + 2, alice, 1);
	CHECK_EQ_INT(strlen(long_ip), 63, "[%s] the longest address", c->name);
	rc = ks_auth_log_add(store, batch, 5, &err);
	CHECK(rc == 0, "[%s] add of a batch returned %s: %s", c->name,
	      ks_err_name(rc), err.text);
	CHECK_EQ_INT(ks_auth_log_add(store, batch, 0, NULL), 0,
		     "[%s] an empty batch", c->name);
	if (list_log(c, store, 0, &got) == 0)
		check_log(c, "the batch", &got, batch, 5);
	if (got.n == 5) {
		int64_t second = got.e[1].id, last = got.e[4].id;

		list_log(c, store, second, &got);
		check_log(c, "after the second", &got, batch + 2, 3);
		list_log(c, store, last, &got);
		CHECK_EQ_INT(got.n, 0, "[%s] entries after the last", c->name);
		list_log(c, store, -5, &got);
		CHECK_EQ_INT(got.n, 5, "[%s] entries after id -5", c->name);

		/* A second batch comes after the first. */
		more[0] = log_entry("127.0.0.2", T0 + 3, alice, 1);
		more[1] = log_entry("127.0.0.3", T0 + 4, 0, 0);
		CHECK_EQ_INT(ks_auth_log_add(store, more, 2, NULL), 0,
			     "[%s] add of a second batch", c->name);
		list_log(c, store, last, &got);
		check_log(c, "the second batch", &got, more, 2);
	}
	CHECK_EQ_INT(ks_auth_log_list(store, 0, stop_log, &calls, NULL), 5,
		     "[%s] list returns the callback's value", c->name);
	CHECK_EQ_INT(calls, 1, "[%s] list stopped after the first entry",
		     c->name);

	/* An id that names no user is stored as none. */
	more[0] = log_entry("127.0.0.4", T0 + 5, 424242, 0);
	CHECK_EQ_INT(ks_auth_log_add(store, more, 1, NULL), 0,
		     "[%s] add naming no user", c->name);
	if (list_log(c, store, 0, &got) == 0 && got.n == 8)
		CHECK_EQ_INT(got.e[7].user_id, 0,
			     "[%s] the id of no user is stored", c->name);
	ks_close(store);
}

static void test_auth_log_purge(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_auth_log e[4];
	struct log_set got = {.n = 0};
	struct ks_err err = {""};
	size_t count = 99;
	int64_t last;
	int rc;

	if (!store)
		return;
	e[0] = log_entry("10.0.0.1", T0 + 20, 0, 1);
	e[1] = log_entry("10.0.0.2", T0, 0, 0);
	e[2] = log_entry("10.0.0.3", T0 + 30, 0, 1);
	e[3] = log_entry("10.0.0.4", T0 + 10, 0, 0);
	CHECK_EQ_INT(ks_auth_log_add(store, e, 4, NULL), 0, "[%s] add",
		     c->name);
	rc = ks_auth_log_purge(store, T0 + 20, &count, &err);
	CHECK(rc == 0, "[%s] purge returned %s: %s", c->name, ks_err_name(rc),
	      err.text);
	CHECK_EQ_INT(count, 2, "[%s] entries purged before T0 + 20", c->name);
	if (list_log(c, store, 0, &got) == 0) {
		const struct ks_auth_log kept[] = {e[0], e[2]};

		check_log(c, "after the purge", &got, kept, 2);
	}
	last = got.n ? got.e[got.n - 1].id : 0;
	count = 99;
	CHECK_EQ_INT(ks_auth_log_purge(store, T0 + 20, &count, NULL), 0,
		     "[%s] purge again", c->name);
	CHECK_EQ_INT(count, 0, "[%s] a second purge found entries", c->name);
	CHECK_EQ_INT(ks_auth_log_purge(store, T0 + 86400, NULL, NULL), 0,
		     "[%s] purge of everything, no count", c->name);
	list_log(c, store, 0, &got);
	CHECK_EQ_INT(got.n, 0, "[%s] entries after purging everything",
		     c->name);
	/* Ids are not given again after a purge. */
	CHECK_EQ_INT(ks_auth_log_add(store, e, 1, NULL), 0,
		     "[%s] add after purging", c->name);
	if (list_log(c, store, 0, &got) == 0 && got.n == 1)
		CHECK(got.e[0].id > last, "[%s] id %lld after purging id %lld",
		      c->name, (long long)got.e[0].id, (long long)last);
	ks_close(store);
}

static void test_users_delete(struct ctx *c)
{
	struct ks_store *store = open_store(c);
	struct ks_auth_log e[3];
	struct log_set got = {.n = 0};
	struct ks_err err = {""};
	int64_t alice, bob, again;
	int rc;

	if (!store)
		return;
	alice = add_user(c, store, "alice", "alice@example.org", T0);
	bob = add_user(c, store, "bob", NULL, T0);
	CHECK_EQ_INT(ks_user_set_locked(store, alice, 1, NULL), 0,
		     "[%s] lock alice", c->name);
	e[0] = log_entry("10.0.0.1", T0 + 1, alice, 1);
	e[1] = log_entry("10.0.0.2", T0 + 2, bob, 0);
	e[2] = log_entry("10.0.0.3", T0 + 3, alice, 0);
	CHECK_EQ_INT(ks_auth_log_add(store, e, 3, NULL), 0, "[%s] log",
		     c->name);
	rc = ks_user_delete(store, alice, &err);
	CHECK(rc == 0, "[%s] delete returned %s: %s", c->name, ks_err_name(rc),
	      err.text);
	check_no_user(c, store, "alice", "after the delete");
	CHECK_EQ_INT(ks_user_delete(store, alice, NULL), KS_ENOTFOUND,
		     "[%s] a second delete", c->name);
	CHECK_EQ_INT(ks_user_set_locked(store, alice, 0, NULL), KS_ENOTFOUND,
		     "[%s] unlock of a deleted user", c->name);
	e[0].user_id = 0;
	e[2].user_id = 0;
	if (list_log(c, store, 0, &got) == 0)
		check_log(c, "the log keeps the deleted user's entries", &got,
			  e, 3);
	/* The name and the email are free again, under a new id. */
	again = add_user(c, store, "alice", "alice@example.org", T0 + 9);
	CHECK(again > bob, "[%s] alice again got id %lld", c->name,
	      (long long)again);
	if (again > 0) {
		struct ks_user want = user(again, "alice", "alice@example.org",
					   hash_a, T0 + 9, KS_NEVER, 0);

		check_user(c, store, "alice again, not locked", &want);
	}
	ks_close(store);
}

/*
 * Usernames, emails, hashes and addresses are stored as given, byte for
 * byte: quotes, SQL, wildcards, backslashes, multi-byte UTF-8.
 */
static void test_users_verbatim(struct ctx *c)
{
	static const char *const names[] = {
		"o'brien",
		"\"; DROP TABLE users; --",
		"Robert'); DELETE FROM auth_logs;--",
		"a%_\\",
		"x\\' OR '1'='1",
		"名前✓ünï",
		/* 64 bytes: 32 two-byte characters. */
		"éééééééééééééééééééééééééééééééé",
		"\xf0\x9f\x94\x91 key",
	};
	const size_t n = sizeof(names) / sizeof(names[0]);
	struct ks_store *store = open_store(c);
	struct user_set set = {.n = 0};
	struct ks_auth_log e;
	struct log_set got = {.n = 0};
	int64_t ids[8];
	size_t i;

	if (!store)
		return;
	CHECK_EQ_INT(strlen(names[6]), 65 - 1, "[%s] a 64-byte name", c->name);
	for (i = 0; i < n; i++) {
		char email[96];
		struct ks_err err = {""};
		int rc;

		snprintf(email, sizeof(email), "%s@ex'ample.org", names[i]);
		ids[i] = -1;
		rc = ks_user_add(store, names[i], "$argon2id$'\"\\%_", email,
				 T0, &ids[i], &err);
		CHECK(rc == 0, "[%s] add of name %zu returned %s: %s", c->name,
		      i, ks_err_name(rc), err.text);
	}
	for (i = 0; i < n; i++) {
		char email[96];
		struct ks_user want =
			user(ids[i], names[i], email, "$argon2id$'\"\\%_", T0,
			     KS_NEVER, 0);

		snprintf(email, sizeof(email), "%s@ex'ample.org", names[i]);
		check_user(c, store, names[i], &want);
	}
	check_no_user(c, store, "a%", "a wildcard that matches a name");
	check_no_user(c, store, "o'brien' OR '1'='1", "an injection");
	CHECK_EQ_INT(ks_user_add(store, "ééééééééééééééééééééééééééééééééx",
				 hash_a, NULL, T0, NULL, NULL),
		     KS_EINVAL, "[%s] a 65-byte name", c->name);
	if (list_users(c, store, &set) == 0 && set.n == n)
		for (i = 0; i < n; i++)
			CHECK(!strcmp(set.u[i].username, names[i]),
			      "[%s] listed name %zu differs", c->name, i);
	CHECK_EQ_INT(set.n, n, "[%s] users listed", c->name);
	user_set_release(&set);
	e = log_entry("::ffff:10.0.0.1'; --", T0, ids[0], 1);
	CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, NULL), 0,
		     "[%s] log an odd address", c->name);
	if (list_log(c, store, 0, &got) == 0)
		check_log(c, "an odd address", &got, &e, 1);
	ks_close(store);
}

/*
 * Another handle on the same store, and another process, see every
 * account write as soon as it is committed.
 */
static void test_users_two_handles(struct ctx *c)
{
	struct ks_store *a = open_store(c), *b;
	struct ks_user want = user(0, "alice", NULL, hash_a, T0, KS_NEVER, 1);
	struct ks_auth_log e = log_entry("10.9.8.7", T0, 0, 1);
	struct log_set got = {.n = 0};
	int status = -1;
	pid_t pid;

	if (!a)
		return;
	b = open_store(c);
	if (!b) {
		ks_close(a);
		return;
	}
	want.id = add_user(c, a, "alice", NULL, T0);
	CHECK_EQ_INT(ks_user_set_locked(b, want.id, 1, NULL), 0,
		     "[%s] lock through b", c->name);
	check_user(c, a, "a sees b's lock", &want);
	e.user_id = want.id;
	CHECK_EQ_INT(ks_auth_log_add(a, &e, 1, NULL), 0, "[%s] log through a",
		     c->name);
	if (list_log(c, b, 0, &got) == 0)
		check_log(c, "b sees a's entry", &got, &e, 1);
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		/* The child: a process of its own, with its own handle. */
		struct ks_store *s = NULL;
		struct ks_auth_log ce = log_entry("10.0.0.99", T0 + 1, 0, 0);
		int64_t id = 0;
		int ok = open_at(c, c->path, &s, NULL) == 0 &&
			 ks_user_add(s, "from-child", hash_b, NULL, T0, &id,
				     NULL) == 0 &&
			 ks_auth_log_add(s, &ce, 1, NULL) == 0 &&
			 ks_user_set_login(s, want.id, T0 + 7, NULL) == 0;

		if (s)
			ks_close(s);
		_exit(ok ? 0 : 1);
	}
	CHECK(pid > 0, "[%s] fork failed: %s", c->name, strerror(errno));
	if (pid > 0) {
		waitpid(pid, &status, 0);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "[%s] the child's writes failed (status %d)", c->name,
		      status);
		want.last_login = T0 + 7;
		check_user(c, a, "a sees the child's login", &want);
		if (list_log(c, a, 0, &got) == 0)
			CHECK_EQ_INT(got.n, 2, "[%s] a sees the child's entry",
				     c->name);
		{
			struct ks_user child;

			CHECK_EQ_INT(ks_user_get(b, "from-child", &child, NULL),
				     0, "[%s] b sees the child's user",
				     c->name);
			ks_user_release(&child);
		}
	}
	CHECK_EQ_INT(ks_user_delete(b, want.id, NULL), 0,
		     "[%s] delete through b", c->name);
	check_no_user(c, a, "alice", "a after b's delete");
	ks_close(b);
	ks_close(a);
}

/* A store of backend be beside the test's, for copies. */
static int open_other(const struct ctx *c, const struct ks_backend *be,
		      const char *name, struct ks_store **out)
{
	struct ks_options opts = KS_OPTIONS_INIT;
	char path[TEST_PATH_MAX], schema[64];
	struct ks_err err = {""};
	int rc;

	*out = NULL;
	if (join(path, sizeof(path), c->dir, name)) {
		CHECK(0, "[%s] path too long", c->name);
		return -1;
	}
	opts.path = path;
	if (is_network(be)) {
		if (!test_pg()) {
			printf("[%s] note: JWKS_TEST_PG unset, no copy into "
			       "%s\n",
			       c->name, ks_backend_name(be));
			return -1;
		}
		opts.path = test_pg();
		snprintf(schema, sizeof(schema), "t_%ld_%.20s_%.20s",
			 (long)getpid(), c->name, name);
		for (rc = 0; schema[rc]; rc++)
			if (schema[rc] == '-')
				schema[rc] = '_';
		opts.pg_schema = schema;
	}
	rc = ks_open(out, be, &opts, &err);
	CHECK(rc == 0, "[%s] open of %s returned %s: %s", c->name, name,
	      ks_err_name(rc), err.text);
	return rc;
}

/* dst holds exactly the users of src, field by field. */
static void check_same_users(const struct ctx *c, const char *what,
			     struct ks_store *dst, struct ks_store *src)
{
	struct user_set a = {.n = 0}, b = {.n = 0};
	size_t i;

	if (list_users(c, dst, &a) == 0 && list_users(c, src, &b) == 0) {
		CHECK_EQ_INT(a.n, b.n, "[%s] %s: users", c->name, what);
		for (i = 0; i < a.n && i < b.n; i++)
			CHECK(same_user(&a.u[i], &b.u[i]),
			      "[%s] %s: user %lld differs", c->name, what,
			      (long long)b.u[i].id);
	}
	user_set_release(&a);
	user_set_release(&b);
}

/* dst's auth log is src's, ids included. */
static void check_same_log(const struct ctx *c, const char *what,
			   struct ks_store *dst, struct ks_store *src)
{
	struct log_set a = {.n = 0}, b = {.n = 0};
	size_t i;

	if (list_log(c, dst, 0, &a) == 0 && list_log(c, src, 0, &b) == 0) {
		CHECK_EQ_INT(a.n, b.n, "[%s] %s: entries", c->name, what);
		for (i = 0; i < a.n && i < b.n; i++)
			CHECK(a.e[i].id == b.e[i].id &&
				      !strcmp(a.e[i].ip, b.e[i].ip) &&
				      a.e[i].when == b.e[i].when &&
				      a.e[i].user_id == b.e[i].user_id &&
				      a.e[i].success == b.e[i].success,
			      "[%s] %s: entry %lld differs", c->name, what,
			      (long long)b.e[i].id);
	}
}

static int count_keys(struct ks_store *store)
{
	int n = 0;

	if (ks_list(store, INT64_MIN, INT64_MAX, count_fn, &n, NULL))
		return -1;
	return n;
}

static void copy_accounts_into(struct ctx *c, struct ks_store *src,
			       const struct ks_backend *be, int64_t max_id)
{
	struct ks_user clash =
		user(1, "someone", NULL, hash_b, T0, KS_NEVER, 0);
	struct ks_copy_counts n = {9, 9, 9};
	struct ks_store *dst = NULL;
	struct log_set got = {.n = 0};
	struct ks_err err = {""};
	char name[64];
	int rc;

	snprintf(name, sizeof(name), "acct-%s", ks_backend_name(be));
	if (open_other(c, be, name, &dst))
		return;
	rc = ks_copy(dst, src, 0, &n, &err);
	CHECK(rc == 0, "[%s] copy into %s returned %s: %s", c->name, name,
	      ks_err_name(rc), err.text);
	CHECK(n.keys == 1 && n.users == 3 && n.auth_logs == 0,
	      "[%s] copy into %s wrote %zu keys, %zu users, %zu entries",
	      c->name, name, n.keys, n.users, n.auth_logs);
	check_same_users(c, name, dst, src);
	list_log(c, dst, 0, &got);
	CHECK_EQ_INT(got.n, 0, "[%s] %s: entries copied without the flag",
		     c->name, name);
	rc = ks_copy(dst, src, KS_COPY_AUTH_LOG, &n, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] a second copy into %s", c->name,
		     name);
	rc = ks_copy(dst, src, KS_COPY_MERGE | KS_COPY_AUTH_LOG, &n, &err);
	CHECK(rc == 0 && n.keys == 0 && n.users == 0 && n.auth_logs == 3,
	      "[%s] merge into %s returned %s (%zu, %zu, %zu): %s", c->name,
	      name, ks_err_name(rc), n.keys, n.users, n.auth_logs, err.text);
	check_same_log(c, name, dst, src);
	rc = ks_copy(dst, src, KS_COPY_MERGE | KS_COPY_AUTH_LOG, &n, &err);
	CHECK(rc == 0 && n.keys == 0 && n.users == 0 && n.auth_logs == 0,
	      "[%s] a second merge into %s returned %s (%zu, %zu, %zu): %s",
	      c->name, name, ks_err_name(rc), n.keys, n.users, n.auth_logs,
	      err.text);
	CHECK(add_user(c, dst, "new", NULL, T0) > max_id,
	      "[%s] %s: an add after the copy went below the copied ids",
	      c->name, name);
	ks_close(dst);

	/* A conflicting user stops the copy before anything is written. */
	snprintf(name, sizeof(name), "clash-%s", ks_backend_name(be));
	if (open_other(c, be, name, &dst))
		return;
	CHECK_EQ_INT(ks_user_import(dst, &clash, NULL), 0,
		     "[%s] import into %s", c->name, name);
	rc = ks_copy(dst, src, KS_COPY_MERGE | KS_COPY_AUTH_LOG, &n, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "[%s] merge into %s with user 1 taken",
		     c->name, name);
	CHECK(strstr(err.text, "user 1") != NULL,
	      "[%s] the error does not name the user: %s", c->name, err.text);
	CHECK(n.keys == 0 && n.users == 0, "[%s] a failed copy counted",
	      c->name);
	CHECK_EQ_INT(count_keys(dst), 0, "[%s] %s: keys after a failed copy",
		     c->name, name);
	check_no_user(c, dst, "alice", "a failed copy");
	list_log(c, dst, 0, &got);
	CHECK_EQ_INT(got.n, 0, "[%s] %s: entries after a failed copy", c->name,
		     name);
	ks_close(dst);
}

/*
 * ks_copy() into a store of every backend: users with their ids, times
 * and locks; the auth log with the flag, ids kept; merges skip what is
 * there; a conflict writes nothing.
 */
static void test_copy_accounts(struct ctx *c)
{
	const struct ks_backend *const *be;
	struct ks_store *src = open_store(c);
	struct ks_auth_log e[3];
	int64_t alice, bob, carol, gone;

	if (!src)
		return;
	put_str(c, src, "k1", T0);
	alice = add_user(c, src, "alice", "alice@example.org", T0);
	gone = add_user(c, src, "gone", NULL, T0);
	bob = add_user(c, src, "bob", NULL, T0 + 1);
	carol = add_user(c, src, "carol", "carol@example.org", T0 + 2);
	CHECK_EQ_INT(ks_user_delete(src, gone, NULL), 0, "[%s] delete",
		     c->name);
	CHECK_EQ_INT(ks_user_set_locked(src, bob, 1, NULL), 0, "[%s] lock",
		     c->name);
	CHECK_EQ_INT(ks_user_set_login(src, carol, T0 + 50, NULL), 0,
		     "[%s] login", c->name);
	e[0] = log_entry("10.0.0.1", T0 + 3, alice, 1);
	e[1] = log_entry("10.0.0.2", T0 + 4, 0, 0);
	e[2] = log_entry("10.0.0.3", T0 + 5, carol, 1);
	CHECK_EQ_INT(ks_auth_log_add(src, e, 3, NULL), 0, "[%s] log", c->name);
	for (be = ks_backends; *be; be++)
		copy_accounts_into(c, src, *be, carol);
	ks_close(src);
}

/* FILES: the test is about a store's own files (modes, damage, paths). */
enum {
	ANY = 0,
	FILES = 1 << 0
};

struct test {
	const char *name;
	void (*fn)(struct ctx *c);
	unsigned needs;
};

static const struct test tests[] = {
	{"registry", test_registry, ANY},
	{"arguments", test_arguments, ANY},
	{"open creates the store, mode 0600", test_open_creates, FILES},
	{"default path", test_default_path, FILES},
	{"put assigns growing kids", test_put_kids, ANY},
	{"get round trip", test_get_roundtrip, ANY},
	{"get of an unknown kid", test_get_unknown, ANY},
	{"list filters by expiry, in kid order", test_list_filter, ANY},
	{"list callback stops the walk", test_list_stop, ANY},
	{"exp INT64_MIN is in every all-records walk", test_list_min_exp, ANY},
	{"data and kids survive a reopen", test_reopen, ANY},
	{"import", test_import, ANY},
	{"version", test_version, ANY},
	{"check", test_check, ANY},
	{"a file that is not a store", test_corrupt, FILES},
	{"a truncated store", test_truncated, FILES},
	{"a missing directory", test_missing_dir, FILES},
	{"read-only file and directory", test_read_only, FILES},
	{"threads share one store", test_threads, ANY},
	{"transaction: next_kid then put", test_txn_put, ANY},
	{"transaction: update", test_txn_update, ANY},
	{"transaction: delete, kids keep growing", test_txn_delete, ANY},
	{"lifecycle entries", test_life, ANY},
	{"transaction: a non-zero return rolls back", test_txn_rollback, ANY},
	{"transaction: list sees its own writes", test_txn_list, ANY},
	{"transaction: two handles on one store", test_txn_two_stores, ANY},
	{"copy keeps lifecycle entries", test_copy_life, ANY},
	{"scrub leaves no replaced bytes in the files", test_scrub, ANY},
	{"users: add, get, list in id order", test_users_basic, ANY},
	{"users: a taken username or email", test_users_unique, ANY},
	{"users: ids only grow", test_users_ids_grow, ANY},
	{"users: import keeps the id", test_users_import, ANY},
	{"users: hash, lock and login", test_users_set, ANY},
	{"users: delete keeps the auth log", test_users_delete, ANY},
	{"users: names stored verbatim", test_users_verbatim, ANY},
	{"users: two handles and another process", test_users_two_handles, ANY},
	{"auth log: batches, order, after_id", test_auth_log, ANY},
	{"auth log: purge by time", test_auth_log_purge, ANY},
	{"copy: users and the auth log", test_copy_accounts, ANY},
};

static void run_backend(const struct ks_backend *be)
{
	const char *tmp = getenv("TMPDIR");
	size_t i;

	if (!tmp || !tmp[0])
		tmp = "/tmp";
	if (is_network(be) && !test_pg()) {
		CHECK(0,
		      "[%s] set JWKS_TEST_PG to the connection string of a "
		      "scratch database (a superuser's)",
		      ks_backend_name(be));
		return;
	}
	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		static unsigned counter;
		struct ctx c;
		int failed = test__failed;

		memset(&c, 0, sizeof(c));
		c.be = be;
		c.name = ks_backend_name(be);
		c.network = is_network(be);
		if (c.network && (tests[i].needs & FILES)) {
			printf("n/a [%s] %s: a network store has no files\n",
			       c.name, tests[i].name);
			continue;
		}
		snprintf(c.schema, sizeof(c.schema), "t_%ld_%u", (long)getpid(),
			 ++counter);
		snprintf(c.dir, sizeof(c.dir), "%s/keystore_%s.XXXXXX", tmp,
			 c.name);
		if (!mkdtemp(c.dir)) {
			CHECK(0, "[%s] mkdtemp '%s' failed: %s", c.name, c.dir,
			      strerror(errno));
			continue;
		}
		if (c.network)
			snprintf(c.path, sizeof(c.path), "%s", test_pg());
		if (c.network ? strlen(test_pg()) < sizeof(c.path)
			      : join(c.path, sizeof(c.path), c.dir,
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
