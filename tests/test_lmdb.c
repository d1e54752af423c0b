/*
 * LMDB-only behaviour of the key store, written against include/keystore.h
 * only (never lmdb.h): a full map, a map grown by another process, file
 * modes, one environment per process, files that are not stores, a version
 * that sees other processes' commits, a full reader table, a read-only file,
 * accounts in a full map and in a read-only file.
 * Every test runs in a fresh temporary directory, removed afterwards.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keystore.h"
#include "test.h"
#include "test_fs.h"

#define KIB ((size_t)1024)

struct ctx {
	const struct ks_backend *be;
	char dir[TEST_PATH_MAX];
	char path[TEST_PATH_MAX];
	char lock[TEST_PATH_MAX];
};

/* max_readers 0 and map_size 0 keep the defaults of KS_OPTIONS_INIT. */
static int open_with(const struct ctx *c, const char *path, size_t map_size,
		     unsigned max_readers, struct ks_store **out,
		     struct ks_err *err)
{
	struct ks_options opts = KS_OPTIONS_INIT;

	opts.path = path;
	if (map_size)
		opts.lmdb_map_size = map_size;
	if (max_readers)
		opts.max_readers = max_readers;
	return ks_open(out, c->be, &opts, err);
}

static struct ks_store *open_store(const struct ctx *c, size_t map_size)
{
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	int rc = open_with(c, c->path, map_size, 0, &store, &err);

	CHECK(rc == 0 && store, "ks_open '%s' returned %s: %s", c->path,
	      ks_err_name(rc), err.text);
	return rc == 0 ? store : NULL;
}

/* The bytes of blob number seed: different for every seed. */
static void fill(unsigned char *blob, size_t len, int seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		blob[i] = (unsigned char)(seed * 131 + i * 7 + (i >> 8));
}

static int64_t put_seed(struct ks_store *store, size_t len, int seed,
			int64_t exp)
{
	unsigned char *blob = malloc(len);
	struct ks_err err = {""};
	int64_t kid = -1;
	int rc = KS_ENOMEM;

	if (blob) {
		fill(blob, len, seed);
		rc = ks_put(store, blob, len, exp, &kid, &err);
	}
	CHECK(rc == 0, "put of blob %d returned %s: %s", seed, ks_err_name(rc),
	      err.text);
	free(blob);
	return kid;
}

/* Check that kid holds blob number seed of len bytes and exp. */
static void check_seed(struct ks_store *store, int64_t kid, size_t len,
		       int seed, int64_t exp)
{
	unsigned char *want = malloc(len);
	struct ks_record rec;
	struct ks_err err = {""};
	int rc = ks_get(store, kid, &rec, &err);

	CHECK(rc == 0, "get kid %lld returned %s: %s", (long long)kid,
	      ks_err_name(rc), err.text);
	if (rc == 0 && want) {
		fill(want, len, seed);
		CHECK_EQ_INT(rec.exp, exp, "kid %lld: wrong exp",
			     (long long)kid);
		CHECK(rec.blob_len == len && memcmp(rec.blob, want, len) == 0,
		      "kid %lld: blob differs (%zu bytes, want %zu)",
		      (long long)kid, rec.blob_len, len);
	}
	ks_record_release(&rec);
	free(want);
}

static int count_fn(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(int *)arg)++;
	return 0;
}

/* The number of records, or -1 (and a failure) if ks_list() fails. */
static int count_records(struct ks_store *store)
{
	struct ks_err err = {""};
	int n = 0,
	    rc = ks_list(store, INT64_MIN, INT64_MAX, count_fn, &n, &err);

	CHECK(rc == 0, "list returned %s: %s", ks_err_name(rc), err.text);
	return rc == 0 ? n : -1;
}

static uint64_t version_of(struct ks_store *store)
{
	struct ks_err err = {""};
	uint64_t v = 0;
	int rc = ks_version(store, &v, &err);

	CHECK(rc == 0, "ks_version returned %s: %s", ks_err_name(rc), err.text);
	return v;
}

static void check_ok(struct ks_store *store, const char *when)
{
	struct ks_err err = {""};
	int rc = ks_check(store, &err);

	CHECK(rc == 0, "ks_check %s returned %s: %s", when, ks_err_name(rc),
	      err.text);
}

static int exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* Run fn in a child process and return its exit status (-1: it died). */
static int in_child(int (*fn)(const struct ctx *c), const struct ctx *c)
{
	int status = 0;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid == 0)
		_exit(fn(c));
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * In a child: put n blobs of len bytes (seeds first..) through a store of
 * its own. Never touches the parent's stores. Returns an exit status.
 */
static int child_put(const struct ctx *c, size_t map_size, int first, int n,
		     size_t len)
{
	struct ks_store *store = NULL;
	unsigned char *blob = malloc(len);
	int i, status = 0;

	if (!blob || open_with(c, c->path, map_size, 0, &store, NULL) != 0) {
		free(blob);
		return 10;
	}
	for (i = 0; i < n && !status; i++) {
		fill(blob, len, first + i);
		if (ks_put(store, blob, len, first + i, NULL, NULL) != 0)
			status = 11;
	}
	ks_close(store);
	free(blob);
	return status;
}

static int child_grow(const struct ctx *c)
{
	return child_put(c, 4096 * KIB, 100, 100, 8 * KIB);
}

static int child_one(const struct ctx *c)
{
	return child_put(c, 0, 50, 1, 64);
}

static void test_map_full(struct ctx *c)
{
	const size_t len = 2 * KIB;
	struct ks_store *store = open_store(c, 128 * KIB);
	unsigned char blob[2 * KIB];
	struct ks_record rec = {5000, blob, sizeof(blob), 1}, got;
	struct ks_err err = {""};
	int64_t kid = 0;
	uint64_t v;
	int n, i, rc = 0;

	if (!store)
		return;
	for (n = 0; n < 1000; n++) {
		fill(blob, len, n + 1);
		rc = ks_put(store, blob, len, 1000 + n, &kid, &err);
		if (rc)
			break;
		CHECK_EQ_INT(kid, n + 1, "put %d into a small map", n + 1);
	}
	CHECK_EQ_INT(rc, KS_ENOSPC, "filling a 128 KiB map returned %s: %s",
		     ks_err_name(rc), err.text);
	CHECK(n > 10 && n < 1000, "%d puts fitted into a 128 KiB map", n);
	CHECK(strstr(err.text, "full") != NULL,
	      "the map-full detail does not say so: %s", err.text);

	v = version_of(store);
	rc = ks_put(store, blob, len, 1, &kid, NULL);
	CHECK_EQ_INT(rc, KS_ENOSPC, "a put into a full map returned %s",
		     ks_err_name(rc));
	CHECK_EQ_INT(kid, 0, "a failed put handed out kid %lld",
		     (long long)kid);
	rc = ks_import(store, &rec, NULL);
	CHECK_EQ_INT(rc, KS_ENOSPC, "an import into a full map returned %s",
		     ks_err_name(rc));
	CHECK(version_of(store) == v, "failed writes changed the version");

	for (i = 0; i < n; i++)
		check_seed(store, i + 1, len, i + 1, 1000 + i);
	CHECK_EQ_INT(count_records(store), n, "records in the full map");
	CHECK_EQ_INT(ks_get(store, 5000, &got, NULL), KS_ENOTFOUND,
		     "the failed import left a record");
	ks_record_release(&got);
	check_ok(store, "of a full map");
	ks_close(store);

	store = open_store(c, 1024 * KIB);
	if (!store)
		return;
	for (i = 0; i < 10; i++) {
		kid = put_seed(store, len, 2000 + i, 7);
		CHECK_EQ_INT(kid, n + 1 + i, "put %d after growing the map", i);
	}
	check_seed(store, 1, len, 1, 1000);
	check_seed(store, n, len, n, 1000 + n - 1);
	check_seed(store, n + 10, len, 2009, 7);
	CHECK_EQ_INT(count_records(store), n + 10, "records after growing");
	check_ok(store, "after growing the map");
	ks_close(store);
}

static void test_map_grown(struct ctx *c)
{
	struct ks_store *store = open_store(c, 256 * KIB);
	uint64_t v;
	int i, status;

	if (!store)
		return;
	for (i = 1; i <= 3; i++)
		put_seed(store, 100, i, i);
	v = version_of(store);

	/* The child writes 800 KiB through a 4 MiB map of its own. */
	status = in_child(child_grow, c);
	CHECK_EQ_INT(status, 0, "the child that grows the map failed");

	CHECK_EQ_INT(count_records(store), 103, "records after the child");
	for (i = 1; i <= 3; i++)
		check_seed(store, i, 100, i, i);
	for (i = 0; i < 100; i++)
		check_seed(store, 4 + i, 8 * KIB, 100 + i, 100 + i);
	CHECK(version_of(store) != v, "version unchanged after the child");
	CHECK_EQ_INT(put_seed(store, 8 * KIB, 500, 5), 104,
		     "put after the map grew");
	check_seed(store, 104, 8 * KIB, 500, 5);
	check_ok(store, "after the map grew");
	ks_close(store);

	store = open_store(c, 256 * KIB);
	if (!store)
		return;
	CHECK_EQ_INT(count_records(store), 104, "records after a reopen");
	ks_close(store);
}

static int file_mode(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

static void test_modes(struct ctx *c)
{
	mode_t old = umask(022);
	struct ks_store *store = open_store(c, 0);

	umask(old);
	if (!store)
		return;
	put_seed(store, 10, 1, 1);
	CHECK_EQ_INT(file_mode(c->path), 0600, "mode of '%s'", c->path);
	CHECK_EQ_INT(file_mode(c->lock), 0600, "mode of '%s'", c->lock);
	CHECK_EQ_INT(count_entries(c->dir), 2,
		     "the store is not one data file and one lock file");
	ks_close(store);
	CHECK_EQ_INT(file_mode(c->path), 0600, "mode of '%s' after close",
		     c->path);
	CHECK_EQ_INT(count_entries(c->dir), 2, "files after close");
}

#define OPENERS 4
#define OPENS 10

struct opener {
	const struct ctx *c;
	int id;
	int failures;
	int64_t kid[OPENS];
};

/* Open, put, read back and close the same path, again and again. */
static void *opener_run(void *arg)
{
	struct opener *o = arg;
	int i;

	for (i = 0; i < OPENS; i++) {
		struct ks_store *store = NULL;
		struct ks_record rec = {0, NULL, 0, 0};
		unsigned char blob[32];

		fill(blob, sizeof(blob), o->id * 100 + i);
		if (open_with(o->c, o->c->path, 0, 0, &store, NULL) != 0) {
			o->failures++;
			continue;
		}
		if (ks_put(store, blob, sizeof(blob), i, &o->kid[i], NULL) ||
		    ks_get(store, o->kid[i], &rec, NULL))
			o->failures++;
		else if (rec.blob_len != sizeof(blob) ||
			 memcmp(rec.blob, blob, sizeof(blob)) != 0)
			o->failures++;
		ks_record_release(&rec);
		ks_close(store);
	}
	return NULL;
}

static void test_open_twice(struct ctx *c)
{
	static struct opener op[OPENERS];
	pthread_t tid[OPENERS];
	char dot[TEST_PATH_MAX], other[TEST_PATH_MAX];
	struct ks_store *a = open_store(c, 0), *b = open_store(c, 0), *d;
	uint64_t v;
	int i, started = 0;

	if (!a || !b) {
		ks_close(a);
		ks_close(b);
		return;
	}
	CHECK(a != b, "a second open returned the same handle");
	put_seed(a, 40, 1, 1);
	check_seed(b, 1, 40, 1, 1);
	v = version_of(a);
	put_seed(b, 40, 2, 2);
	CHECK(version_of(a) != v, "a put through b did not change a's version");
	check_seed(a, 2, 40, 2, 2);

	if (join(dot, sizeof(dot), c->dir, ".") ||
	    join(other, sizeof(other), dot, ks_backend_default_path(c->be)))
		CHECK(0, "path too long");
	d = NULL;
	CHECK_EQ_INT(open_with(c, other, 0, 0, &d, NULL), 0,
		     "open of '%s' (another spelling)", other);
	if (d) {
		CHECK_EQ_INT(count_records(d), 2, "records through '%s'",
			     other);
		ks_close(d);
	}
	ks_close(a);
	CHECK_EQ_INT(put_seed(b, 40, 3, 3), 3, "put after the first close");
	check_seed(b, 1, 40, 1, 1);
	CHECK_EQ_INT(count_records(b), 3, "records after the first close");
	check_ok(b, "after the first close");
	ks_close(b);

	for (i = 0; i < OPENERS; i++) {
		memset(&op[i], 0, sizeof(op[i]));
		op[i].c = c;
		op[i].id = i + 1;
		if (pthread_create(&tid[i], NULL, opener_run, &op[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, OPENERS, "pthread_create failed");
	for (i = 0; i < started; i++) {
		pthread_join(tid[i], NULL);
		CHECK_EQ_INT(op[i].failures, 0, "opener thread %d failed", i);
	}
	a = open_store(c, 0);
	if (!a)
		return;
	CHECK_EQ_INT(count_records(a), 3 + OPENERS * OPENS,
		     "records after concurrent opens");
	for (i = 0; i < started; i++)
		check_seed(a, op[i].kid[OPENS - 1], 32,
			   op[i].id * 100 + OPENS - 1, OPENS - 1);
	ks_close(a);
}

/* Opening c->path fails with KS_ECORRUPT and leaves the directory as is. */
static void check_corrupt(const struct ctx *c, const char *what)
{
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	size_t len = 0, len_after = 0;
	unsigned char *before = read_file(c->path, &len), *after;
	int rc, entries = count_entries(c->dir), had_lock = exists(c->lock);

	rc = open_with(c, c->path, 0, 0, &store, &err);
	CHECK_EQ_INT(rc, KS_ECORRUPT, "open of %s returned %s: %s", what,
		     ks_err_name(rc), err.text);
	CHECK(store == NULL, "failed open of %s left *out set", what);
	if (rc == 0)
		ks_close(store);
	after = read_file(c->path, &len_after);
	CHECK(before && after && len == len_after &&
		      memcmp(before, after, len) == 0,
	      "open of %s changed the file", what);
	CHECK_EQ_INT(count_entries(c->dir), entries, "open of %s left files",
		     what);
	CHECK_EQ_INT(exists(c->lock), had_lock, "open of %s: lock file", what);
	free(before);
	free(after);
}

static void test_not_a_store(struct ctx *c)
{
	unsigned char noise[8192];
	struct ks_store *store;
	struct stat st;
	uint32_t x = 88172645u;
	size_t i;
	int rc;

	for (i = 0; i < sizeof(noise); i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		noise[i] = (unsigned char)(x >> 3);
	}
	CHECK(write_file(c->path, noise, sizeof(noise)) == 0, "write noise");
	check_corrupt(c, "8 KiB of random bytes");
	CHECK(write_file(c->path, noise, 100) == 0, "write noise");
	check_corrupt(c, "100 random bytes");
	CHECK_EQ_INT(count_entries(c->dir), 1, "files besides the data file");

	/* A store cut in half would fault on its first read of a lost page. */
	unlink(c->path);
	store = open_store(c, 0);
	if (!store)
		return;
	for (i = 0; i < 40; i++)
		put_seed(store, 1500, (int)i, 1);
	ks_close(store);
	CHECK(stat(c->path, &st) == 0 && truncate(c->path, st.st_size / 2) == 0,
	      "truncate '%s'", c->path);
	check_corrupt(c, "a store cut in half");
	CHECK(exists(c->lock), "the failed open removed the store's lock file");

	/* An empty file is a new store, as a missing one is. */
	CHECK(write_file(c->path, noise, 0) == 0, "write empty file");
	store = NULL;
	rc = open_with(c, c->path, 0, 0, &store, NULL);
	CHECK_EQ_INT(rc, 0, "open of an empty file");
	if (store) {
		CHECK_EQ_INT(put_seed(store, 10, 1, 1), 1,
			     "put in a new store");
		ks_close(store);
	}

	/* A directory where the data file should be. */
	rm_rf(c->path);
	rm_rf(c->lock);
	CHECK(mkdir(c->path, 0700) == 0, "mkdir '%s'", c->path);
	store = NULL;
	rc = open_with(c, c->path, 0, 0, &store, NULL);
	CHECK(rc == KS_EIO || rc == KS_ECORRUPT,
	      "open of a directory returned %s", ks_err_name(rc));
	if (rc == 0)
		ks_close(store);
	CHECK_EQ_INT(count_entries(c->dir), 1,
		     "open of a directory left files");
}

static void test_version_other_process(struct ctx *c)
{
	struct ks_store *store = open_store(c, 0);
	uint64_t v1, v2, v3;
	int status;

	if (!store)
		return;
	put_seed(store, 64, 1, 1);
	v1 = version_of(store);
	v2 = version_of(store);
	CHECK(v1 == v2, "version changed with no change to the store");
	check_seed(store, 1, 64, 1, 1);
	CHECK(version_of(store) == v2, "a read changed the version");

	status = in_child(child_one, c);
	CHECK_EQ_INT(status, 0, "the child that puts a key failed");
	v3 = version_of(store);
	CHECK(v3 != v2, "version unchanged after another process's put");
	CHECK(version_of(store) == v3, "version changed again by itself");
	check_seed(store, 2, 64, 50, 50);

	status = in_child(child_one, c);
	CHECK_EQ_INT(status, 0, "the second child failed");
	CHECK(version_of(store) != v3, "version unchanged after a second put");
	CHECK_EQ_INT(count_records(store), 3, "records after two children");
	ks_close(store);
}

struct holder {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int inside;
	int release;
	struct ks_store *store;
	int rc;
};

/* Hold the list's read transaction open until told to go on. */
static int hold_fn(const struct ks_record *rec, void *arg)
{
	struct holder *h = arg;

	(void)rec;
	pthread_mutex_lock(&h->lock);
	h->inside = 1;
	pthread_cond_broadcast(&h->cond);
	while (!h->release)
		pthread_cond_wait(&h->cond, &h->lock);
	pthread_mutex_unlock(&h->lock);
	return 0;
}

static void *holder_run(void *arg)
{
	struct holder *h = arg;

	h->rc = ks_list(h->store, INT64_MIN, INT64_MAX, hold_fn, h, NULL);
	return NULL;
}

static void test_readers_full(struct ctx *c)
{
	struct holder h = {PTHREAD_MUTEX_INITIALIZER,
			   PTHREAD_COND_INITIALIZER,
			   0,
			   0,
			   NULL,
			   -1};
	struct ks_record rec;
	struct ks_err err = {""};
	pthread_t tid;
	int rc, n = 0;

	rc = open_with(c, c->path, 0, 1, &h.store, &err);
	CHECK_EQ_INT(rc, 0, "open with one reader slot: %s", err.text);
	if (rc)
		return;
	put_seed(h.store, 16, 1, 1);
	if (pthread_create(&tid, NULL, holder_run, &h) != 0) {
		CHECK(0, "pthread_create failed");
		ks_close(h.store);
		return;
	}
	pthread_mutex_lock(&h.lock);
	while (!h.inside)
		pthread_cond_wait(&h.cond, &h.lock);
	pthread_mutex_unlock(&h.lock);

	rc = ks_get(h.store, 1, &rec, &err);
	CHECK_EQ_INT(rc, KS_EBUSY, "get with the reader table full: %s",
		     err.text);
	ks_record_release(&rec);
	rc = ks_list(h.store, INT64_MIN, INT64_MAX, count_fn, &n, NULL);
	CHECK_EQ_INT(rc, KS_EBUSY, "list with the reader table full");
	CHECK_EQ_INT(put_seed(h.store, 16, 2, 2), 2,
		     "put with the reader table full");
	version_of(h.store);

	pthread_mutex_lock(&h.lock);
	h.release = 1;
	pthread_cond_broadcast(&h.cond);
	pthread_mutex_unlock(&h.lock);
	pthread_join(tid, NULL);
	CHECK_EQ_INT(h.rc, 0, "the holding list");
	check_seed(h.store, 2, 16, 2, 2);
	ks_close(h.store);
}

static void test_read_only(struct ctx *c)
{
	struct ks_store *store;
	struct ks_err err = {""};
	int rc;

	if (geteuid() == 0) {
		printf("note: running as root, which ignores file modes: "
		       "read-only test skipped\n");
		return;
	}
	store = open_store(c, 0);
	if (!store)
		return;
	put_seed(store, 20, 1, 1);
	ks_close(store);
	CHECK(chmod(c->path, 0400) == 0, "chmod 0400 '%s'", c->path);
	store = open_store(c, 0);
	if (store) {
		check_seed(store, 1, 20, 1, 1);
		CHECK_EQ_INT(count_records(store), 1, "records, read-only");
		rc = ks_put(store, (const unsigned char *)"x", 1, 1, NULL,
			    &err);
		CHECK_EQ_INT(rc, KS_EACCES, "put into a read-only file: %s",
			     err.text);
		version_of(store);
		check_ok(store, "of a read-only file");
		ks_close(store);
	}
	chmod(c->path, 0600);
}

static long long ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* In the child: say so on the pipe, then stop inside the transaction. */
static int stop_inside_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	const int *fd = arg;

	(void)txn;
	(void)err;
	if (write(*fd, "h", 1) != 1)
		return 1;
	raise(SIGSTOP);
	return 1;
}

/* One write through a store opened with busy_timeout_ms; its time. */
static int timed_put(const struct ctx *c, int busy_ms, long long *ms_out)
{
	struct ks_options opts = KS_OPTIONS_INIT;
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	long long t0;
	int rc;

	opts.path = c->path;
	opts.busy_timeout_ms = busy_ms;
	rc = ks_open(&store, c->be, &opts, &err);
	CHECK(rc == 0, "open beside the held writer returned %s: %s",
	      ks_err_name(rc), err.text);
	if (rc)
		return rc;
	t0 = ms_now();
	rc = ks_put(store, (const unsigned char *)"x", 1, 1, NULL, &err);
	*ms_out = ms_now() - t0;
	if (rc == KS_EBUSY)
		CHECK(strstr(err.text, "busy timeout") != NULL,
		      "KS_EBUSY without a clear message: %s", err.text);
	CHECK_EQ_INT(count_records(store), rc ? 1 : 2,
		     "reads go on beside the held writer");
	ks_close(store);
	return rc;
}

/*
 * A writer of another process stopped (SIGSTOP) inside its write
 * transaction: writes here fail with KS_EBUSY after about busy_timeout_ms
 * instead of waiting for ever, reads go on, and once it is killed writes
 * work again. alarm() turns a hang into a failure.
 */
static void test_busy_writer(struct ctx *c)
{
	struct ks_store *store = open_store(c, 0);
	int p[2], status = 0;
	long long ms = 0;
	char byte = 0;
	pid_t pid;

	if (!store)
		return;
	put_seed(store, 16, 1, 1);
	ks_close(store);
	if (pipe(p) != 0) {
		CHECK(0, "pipe failed: %s", strerror(errno));
		return;
	}
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		struct ks_store *own = NULL;

		/* Stopped, it must still die with a test that fails. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(p[0]);
		if (open_with(c, c->path, 0, 0, &own, NULL) != 0)
			_exit(10);
		ks_write(own, stop_inside_fn, &p[1], NULL);
		_exit(0);
	}
	close(p[1]);
	CHECK(pid > 0 && read(p[0], &byte, 1) == 1 && byte == 'h',
	      "the child never held the write transaction");
	close(p[0]);
	if (pid <= 0 || byte != 'h')
		return;
	CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status),
	      "the child did not stop inside its transaction");

	alarm(30);
	CHECK_EQ_INT(timed_put(c, 400, &ms), KS_EBUSY,
		     "a write beside a stopped writer");
	CHECK(ms >= 350 && ms < 2000,
	      "KS_EBUSY after %lld ms, want about the 400 ms busy timeout", ms);
	CHECK_EQ_INT(timed_put(c, 0, &ms), KS_EBUSY,
		     "a write with busy timeout 0");
	CHECK(ms < 300, "busy timeout 0 waited %lld ms", ms);

	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	CHECK_EQ_INT(timed_put(c, 400, &ms), 0,
		     "a write after the stopped writer was killed");
	alarm(0);
}

/* The fault hook of the backends built for this test (JWKS_KS_FAULTS). */
extern int ks__lmdb_fail_reopens;

/*
 * A scrub whose reopen fails leaves a store that reports a clear error
 * (never a NULL environment to dereference), tries the reopen again on the
 * next call, works once it succeeds, and closes cleanly either way.
 */
static void test_scrub_reopen_fails(struct ctx *c)
{
	struct ks_store *store = open_store(c, 0);
	struct ks_record rec;
	struct ks_err err = {""};
	uint64_t v = 0;
	int rc;

	if (!store)
		return;
	put_seed(store, 64, 1, 1);
	put_seed(store, 64, 2, 2);
	ks__lmdb_fail_reopens = 2;
	rc = ks_scrub(store, &err);
	CHECK_EQ_INT(rc, KS_EIO, "a scrub whose reopen fails");
	CHECK(strstr(err.text, "injected") != NULL,
	      "the scrub's error names the failed reopen: %s", err.text);
	memset(&err, 0, sizeof(err));
	rc = ks_get(store, 1, &rec, &err);
	CHECK_EQ_INT(rc, KS_EIO, "a get while the reopen still fails");
	CHECK(strstr(err.text, "mdb_env_open") != NULL,
	      "the get's error says the store is not open: %s", err.text);
	CHECK_EQ_INT(ks_version(store, &v, NULL), 0,
		     "the next call reopens the store");
	check_seed(store, 1, 64, 1, 1);
	check_seed(store, 2, 64, 2, 2);
	CHECK_EQ_INT(put_seed(store, 64, 3, 3), 3, "a put after the reopen");
	check_ok(store, "after the reopen");
	ks_close(store);

	store = open_store(c, 0);
	if (!store)
		return;
	CHECK_EQ_INT(count_records(store), 3, "records after a reopen");
	ks__lmdb_fail_reopens = 1;
	CHECK_EQ_INT(ks_scrub(store, NULL), KS_EIO, "a second failed scrub");
	ks_close(store);
	CHECK_EQ_INT(ks__lmdb_fail_reopens, 0, "the fault was used");
	store = open_store(c, 0);
	if (store)
		CHECK_EQ_INT(count_records(store), 3,
			     "closing a store without environment");
	ks_close(store);
}

struct test {
	const char *name;
	void (*fn)(struct ctx *c);
};

static int count_user(const struct ks_user *u, void *arg)
{
	(void)u;
	(*(int *)arg)++;
	return 0;
}

static int count_entry(const struct ks_auth_log *e, void *arg)
{
	(void)e;
	(*(int *)arg)++;
	return 0;
}

/* Users and auth-log entries, or -1 (and a failure) when a list fails. */
static int count_users(struct ks_store *store)
{
	int n = 0, rc = ks_user_list(store, count_user, &n, NULL);

	CHECK(rc == 0, "user list returned %s", ks_err_name(rc));
	return rc == 0 ? n : -1;
}

static int count_log(struct ks_store *store)
{
	int n = 0, rc = ks_auth_log_list(store, 0, count_entry, &n, NULL);

	CHECK(rc == 0, "auth log list returned %s", ks_err_name(rc));
	return rc == 0 ? n : -1;
}

/*
 * Accounts fill the map like keys do: KS_ENOSPC with nothing of the
 * failed write kept (a whole batch of entries, all or none), the store
 * still consistent, and a larger map goes on with ids above.
 */
static void test_accounts_map_full(struct ctx *c)
{
	static struct ks_auth_log batch[400];
	struct ks_store *store = open_store(c, 128 * KIB);
	char hash[1024], name[32];
	struct ks_err err = {""};
	int64_t id = 0, last = 0;
	int n, entries, rc = 0;
	size_t i;

	if (!store)
		return;
	memset(hash, 'h', sizeof(hash) - 1);
	hash[sizeof(hash) - 1] = '\0';
	for (i = 0; i < sizeof(batch) / sizeof(batch[0]); i++) {
		snprintf(batch[i].ip, sizeof(batch[i].ip),
			 "2001:db8::%zx:ffff:ffff:ffff:ffff", i);
		batch[i].when = 1700000000 + (int64_t)i;
	}
	CHECK_EQ_INT(ks_auth_log_add(store, batch, 10, NULL), 0,
		     "a first batch of entries");
	for (n = 0; n < 1000; n++) {
		snprintf(name, sizeof(name), "user%d", n);
		rc = ks_user_add(store, name, hash, NULL, 1700000000, &id,
				 &err);
		if (rc)
			break;
		last = id;
	}
	CHECK_EQ_INT(rc, KS_ENOSPC,
		     "filling the map with users returned %s: %s",
		     ks_err_name(rc), err.text);
	CHECK(n > 10 && n < 1000, "%d users fitted into a 128 KiB map", n);
	CHECK(strstr(err.text, "full") != NULL,
	      "the map-full detail does not say so: %s", err.text);
	rc = ks_auth_log_add(store, batch, sizeof(batch) / sizeof(batch[0]),
			     &err);
	CHECK_EQ_INT(rc, KS_ENOSPC, "a batch into a full map returned %s: %s",
		     ks_err_name(rc), err.text);
	CHECK_EQ_INT(count_users(store), n, "users in the full map");
	CHECK_EQ_INT(count_log(store), 10,
		     "entries after a batch that did not fit");
	check_ok(store, "of a map full of users");
	ks_close(store);

	store = open_store(c, 1024 * KIB);
	if (!store)
		return;
	rc = ks_user_add(store, "after", hash, NULL, 1700000000, &id, &err);
	CHECK(rc == 0 && id > last, "add after growing: %s, id %lld after %lld",
	      ks_err_name(rc), (long long)id, (long long)last);
	rc = ks_auth_log_add(store, batch, sizeof(batch) / sizeof(batch[0]),
			     &err);
	CHECK(rc == 0, "the batch after growing returned %s: %s",
	      ks_err_name(rc), err.text);
	entries = count_log(store);
	CHECK_EQ_INT(entries, 410, "entries after growing");
	check_ok(store, "after growing the map");
	ks_close(store);
}

/* A read-only file: accounts read as they are, every write KS_EACCES. */
static void test_accounts_read_only(struct ctx *c)
{
	struct ks_auth_log e = {0, "10.0.0.1", 1700000000, 0, 1};
	struct ks_store *store;
	struct ks_user u;
	int64_t id = 0;

	if (geteuid() == 0) {
		printf("note: running as root, which ignores file modes: "
		       "read-only test skipped\n");
		return;
	}
	store = open_store(c, 0);
	if (!store)
		return;
	CHECK_EQ_INT(
		ks_user_add(store, "alice", "h", NULL, 1700000000, &id, NULL),
		0, "add");
	e.user_id = id;
	CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, NULL), 0, "log");
	ks_close(store);
	CHECK(chmod(c->path, 0400) == 0, "chmod 0400 '%s'", c->path);
	store = open_store(c, 0);
	if (store) {
		CHECK_EQ_INT(ks_user_get(store, "alice", &u, NULL), 0,
			     "get from a read-only file");
		CHECK_EQ_INT(u.id, id, "the user's id, read-only");
		ks_user_release(&u);
		CHECK_EQ_INT(count_users(store), 1, "users, read-only");
		CHECK_EQ_INT(count_log(store), 1, "entries, read-only");
		CHECK_EQ_INT(
			ks_user_add(store, "bob", "h", NULL, 1, NULL, NULL),
			KS_EACCES, "add to a read-only file");
		CHECK_EQ_INT(ks_user_set_locked(store, id, 1, NULL), KS_EACCES,
			     "lock in a read-only file");
		CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, NULL), KS_EACCES,
			     "log into a read-only file");
		CHECK_EQ_INT(ks_auth_log_purge(store, INT64_MAX, NULL, NULL),
			     KS_EACCES, "purge of a read-only file");
		check_ok(store, "of a read-only file with accounts");
		ks_close(store);
	}
	chmod(c->path, 0600);
}

static const struct test tests[] = {
	{"a full map: clean error, store still usable", test_map_full},
	{"a map grown by another process", test_map_grown},
	{"data and lock file are 0600", test_modes},
	{"one path opened twice in one process", test_open_twice},
	{"files that are not stores", test_not_a_store},
	{"version sees other processes' commits", test_version_other_process},
	{"a full reader table", test_readers_full},
	{"a read-only data file", test_read_only},
	{"a stopped writer: KS_EBUSY after the busy timeout", test_busy_writer},
	{"a failed scrub reopen: clear errors, then a retry",
	 test_scrub_reopen_fails},
	{"accounts fill the map: KS_ENOSPC, all or nothing",
	 test_accounts_map_full},
	{"accounts in a read-only data file", test_accounts_read_only},
};

int main(void)
{
	const struct ks_backend *be = ks_backend_find("lmdb");
	const char *tmp = getenv("TMPDIR");
	size_t i;

	if (!be) {
		fprintf(stderr, "test_lmdb: the lmdb backend is not built\n");
		return 1;
	}
	if (!tmp || !tmp[0])
		tmp = "/tmp";
	for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		struct ctx c;
		int failed = test__failed;

		memset(&c, 0, sizeof(c));
		c.be = be;
		snprintf(c.dir, sizeof(c.dir), "%s/test_lmdb.XXXXXX", tmp);
		if (!mkdtemp(c.dir)) {
			CHECK(0, "mkdtemp '%s' failed: %s", c.dir,
			      strerror(errno));
			continue;
		}
		if (join(c.path, sizeof(c.path), c.dir,
			 ks_backend_default_path(be)) == 0 &&
		    snprintf(c.lock, sizeof(c.lock), "%s-lock", c.path) <
			    (int)sizeof(c.lock))
			tests[i].fn(&c);
		else
			CHECK(0, "path too long");
		CHECK(rm_rf(c.dir) == 0, "cannot remove '%s'", c.dir);
		printf("%s %s\n", test__failed == failed ? "ok" : "FAIL",
		       tests[i].name);
	}
	return TEST_REPORT();
}
