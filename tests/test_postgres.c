/*
 * PostgreSQL-only behaviour of the key store: migrations raced by many
 * openers (from nothing and from an older schema version), connection
 * strings shown without passwords, an unreachable server, kids from the
 * sequence, the change counter, notifications, lock waits, reconnects,
 * accounts across handles, and a server of its own stopped mid-way. Needs
 * JWKS_TEST_PG: the connection string of a scratch database as a
 * superuser; psql inspects what the store did. JWKS_PG_SERVER and
 * JWKS_PYTHON (tests/pg/pgserver.py and its Python) start the server that
 * is stopped; without them that test is skipped.
 */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keystore.h"
#include "test.h"

/* The schema version this build migrates to. */
#define SCHEMA_VERSION 2

static const struct ks_backend *pg;
static const char *conninfo;
static char app_conninfo[1024];

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* A schema of its own for each test. */
static void new_schema(char *buf, size_t cap)
{
	static unsigned counter;

	snprintf(buf, cap, "p_%ld_%u", (long)getpid(), ++counter);
}

static int open_pg(struct ks_store **out, const char *schema, int busy_ms,
		   struct ks_err *err)
{
	struct ks_options opts = KS_OPTIONS_INIT;

	opts.path = app_conninfo;
	opts.pg_schema = schema;
	if (busy_ms >= 0)
		opts.busy_timeout_ms = busy_ms;
	return ks_open(out, pg, &opts, err);
}

static struct ks_store *open_ok(const char *schema)
{
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	int rc = open_pg(&store, schema, -1, &err);

	CHECK(rc == 0, "open of schema %s returned %s: %s", schema,
	      ks_err_name(rc), err.text);
	return rc ? NULL : store;
}

/*
 * The first line psql prints for sql (run as the test's superuser), as a
 * number; -1 when psql fails. The connection string reaches psql through
 * the environment, never through the shell's words.
 */
static long long psql_number(const char *sql)
{
	char cmd[1024], line[128] = "";
	long long v = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "psql \"$JWKS_TEST_PG\" -X -qAt -c \"%s\"",
		 sql);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	if (fgets(line, sizeof(line), p))
		v = strtoll(line, NULL, 10);
	if (pclose(p) != 0)
		v = -1;
	return v;
}

struct racer {
	pthread_barrier_t *start;
	const char *schema;
	int rc;
	struct ks_err err;
	int64_t kid;
};

static void *racer_run(void *arg)
{
	struct racer *r = arg;
	struct ks_store *store = NULL;

	pthread_barrier_wait(r->start);
	r->rc = open_pg(&store, r->schema, -1, &r->err);
	if (!r->rc)
		r->rc = ks_put(store, (const unsigned char *)"raced", 5, 1,
			       &r->kid, &r->err);
	ks_close(store);
	return NULL;
}

#define RACERS 8

/* Many openers of an empty schema at once: one migration, no failure. */
static void test_migration_race(void)
{
	struct racer r[RACERS];
	pthread_t tid[RACERS];
	pthread_barrier_t start;
	char schema[64], sql[256];
	int i, started = 0;

	new_schema(schema, sizeof(schema));
	pthread_barrier_init(&start, NULL, RACERS);
	for (i = 0; i < RACERS; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].start = &start;
		r[i].schema = schema;
		if (pthread_create(&tid[i], NULL, racer_run, &r[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, RACERS, "threads started");
	if (started < RACERS) {
		/* The barrier would never open: nothing else to do. */
		abort();
	}
	for (i = 0; i < RACERS; i++) {
		pthread_join(tid[i], NULL);
		CHECK(r[i].rc == 0, "racer %d returned %s: %s", i,
		      ks_err_name(r[i].rc), r[i].err.text);
	}
	pthread_barrier_destroy(&start);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.schema_version",
		 schema);
	CHECK_EQ_INT(psql_number(sql), SCHEMA_VERSION,
		     "schema_version rows after a race");
	snprintf(sql, sizeof(sql), "SELECT count(DISTINCT kid) FROM %s.keys",
		 schema);
	CHECK_EQ_INT(psql_number(sql), RACERS, "distinct kids after a race");
	/* Opening a migrated schema again migrates nothing. */
	ks_close(open_ok(schema));
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.schema_version",
		 schema);
	CHECK_EQ_INT(psql_number(sql), SCHEMA_VERSION,
		     "schema_version rows after reopen");
}

static void check_describe(const char *in, const char *want_part)
{
	char buf[512];
	int rc = ks_describe(pg, in, buf, sizeof(buf));

	CHECK(rc == 0, "describe returned %s", ks_err_name(rc));
	CHECK(strstr(buf, "S3cret") == NULL, "describe shows a password: %s",
	      buf);
	CHECK(strstr(buf, want_part) != NULL, "describe '%s' lacks '%s'", buf,
	      want_part);
}

/* A password never shows: keyword and URI forms, and open's errors. */
static void test_describe(void)
{
	struct ks_store *store = NULL;
	struct ks_err err = {""};
	struct ks_options opts = KS_OPTIONS_INIT;
	char buf[64];
	int rc;

	check_describe("host=db1 user=alice password=S3cret dbname=keys",
		       "user=alice");
	check_describe("host=db1 password='S3cret x' dbname=keys",
		       "dbname=keys");
	check_describe("postgresql://alice:S3cret@db1,db2:5433/keys"
		       "?target_session_attrs=read-write",
		       "target_session_attrs=read-write");
	check_describe("postgresql://alice:S3cret@db1/keys", "host=db1");
	check_describe("postgres://db1/keys?password=S3cret&user=bob",
		       "user=bob");
	check_describe("postgresql://alice:S3cret%40x@db1/keys", "alice");
	check_describe("sslpassword=S3cret host=h", "host=h");
	rc = ks_describe(pg, "host='unterminated", buf, sizeof(buf));
	CHECK_EQ_INT(rc, KS_EINVAL, "describe of a bad string");
	CHECK(strcmp(buf, "(unparsable connection string)") == 0,
	      "describe of a bad string says '%s'", buf);

	opts.path = "host=/nonexistent/jwksd-test user=alice "
		    "password=S3cret dbname=keys";
	rc = ks_open(&store, pg, &opts, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "open of a missing socket: %s", err.text);
	CHECK(strstr(err.text, "S3cret") == NULL,
	      "open's error shows the password: %s", err.text);
	CHECK(strstr(err.text, "user=alice") != NULL,
	      "open's error does not name the store: %s", err.text);
	opts.path = "postgresql://alice:S3cret@/keys?host=/nonexistent/x";
	rc = ks_open(&store, pg, &opts, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "open of a missing socket (URI): %s",
		     err.text);
	CHECK(strstr(err.text, "S3cret") == NULL,
	      "open's error shows the password (URI): %s", err.text);
}

/* An unreachable server fails open fast with KS_EUNAVAIL. */
static void test_unreachable(void)
{
	static const char *const targets[] = {
		"host=/nonexistent/jwksd-test dbname=x",
		/* Not routed anywhere: the connect deadline ends it. */
		"host=10.255.255.1 port=5432 dbname=x user=x",
	};
	struct ks_options opts = KS_OPTIONS_INIT;
	size_t i;

	for (i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		struct ks_store *store = NULL;
		struct ks_err err = {""};
		long long t0 = now_ms(), took;
		int rc;

		opts.path = targets[i];
		rc = ks_open(&store, pg, &opts, &err);
		took = now_ms() - t0;
		CHECK_EQ_INT(rc, KS_EUNAVAIL, "open of '%s': %s", targets[i],
			     err.text);
		CHECK(store == NULL, "failed open left *out set");
		CHECK(took < 3000, "open of '%s' took %lld ms", targets[i],
		      took);
	}
	opts.path = "host=/tmp";
	opts.pg_schema = "Bad-Name";
	CHECK_EQ_INT(ks_open(&(struct ks_store *){NULL}, pg, &opts, NULL),
		     KS_EINVAL, "open with a bad schema name");
}

struct kids {
	int64_t first, again, put, after, put2;
	int64_t imported_next;
};

static int kids_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	static unsigned char blob[] = "b";
	struct ks_record rec = {500, blob, 1, 7};
	struct kids *k = arg;
	int rc;

	rc = ks_txn_next_kid(txn, &k->first, err);
	if (!rc)
		rc = ks_txn_next_kid(txn, &k->again, err);
	if (!rc)
		rc = ks_txn_put(txn, blob, 1, 1, &k->put, err);
	if (!rc)
		rc = ks_txn_next_kid(txn, &k->after, err);
	/* An import in the transaction moves the sequence past it. */
	if (!rc)
		rc = ks_txn_import(txn, &rec, err);
	if (!rc)
		rc = ks_txn_put(txn, blob, 1, 1, &k->put2, err);
	if (!rc)
		rc = ks_txn_next_kid(txn, &k->imported_next, err);
	return rc;
}

/* next_kid predicts the kid; imports move the sequence past them. */
static void test_kids(void)
{
	static unsigned char blob[] = "x";
	struct ks_record rec = {40, blob, 1, 1};
	struct kids k = {0, 0, 0, 0, 0, 0};
	struct ks_err err = {""};
	char schema[64];
	struct ks_store *store;
	int64_t kid = 0;
	int rc;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	if (!store)
		return;
	rc = ks_write(store, kids_fn, &k, &err);
	CHECK(rc == 0, "write returned %s: %s", ks_err_name(rc), err.text);
	CHECK_EQ_INT(k.first, 1, "the first kid");
	CHECK_EQ_INT(k.again, k.first, "next_kid twice in one transaction");
	CHECK_EQ_INT(k.put, k.first, "put got the kid next_kid promised");
	CHECK(k.after > k.put, "next_kid after a put: %lld",
	      (long long)k.after);
	/*
	 * A kid promised before the import stays promised (a blob may be
	 * sealed with it); the next one comes from above the import.
	 */
	CHECK_EQ_INT(k.put2, k.after, "put after an import kept its kid");
	CHECK(k.imported_next > 500, "next_kid after importing 500: %lld",
	      (long long)k.imported_next);

	rc = ks_import(store, &rec, &err);
	CHECK(rc == 0, "import of 40 returned %s: %s", ks_err_name(rc),
	      err.text);
	rc = ks_import(store, &rec, NULL);
	CHECK_EQ_INT(rc, KS_EEXISTS, "import of 40 again");
	rec.kid = 1000;
	CHECK_EQ_INT(ks_import(store, &rec, NULL), 0, "import of 1000");
	CHECK_EQ_INT(ks_put(store, blob, 1, 1, &kid, NULL), 0, "put");
	CHECK_EQ_INT(kid, 1001, "the put after importing 1000");
	ks_close(store);
}

static long long counter_of(const char *schema)
{
	char sql[128];

	snprintf(sql, sizeof(sql), "SELECT n FROM %s.change_counter", schema);
	return psql_number(sql);
}

static int nothing_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	int64_t kid;

	(void)arg;
	return ks_txn_next_kid(txn, &kid, err);
}

static int put_then_fail_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	(void)arg;
	if (ks_txn_put(txn, (const unsigned char *)"gone", 4, 1, NULL, err))
		return -100;
	return 77;
}

static int count_fn(const struct ks_record *rec, void *arg)
{
	(void)rec;
	(*(int *)arg)++;
	return 0;
}

/* The counter moves with every committed write, and only then. */
static void test_counter(void)
{
	static unsigned char blob[] = "c";
	struct ks_record rec = {1, NULL, 0, 0};
	struct ks_store *store, *other;
	uint64_t v1 = 0, v2 = 0, w1 = 0, w2 = 0;
	char schema[64];
	long long c0, c;
	int n = 0;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	other = store ? open_ok(schema) : NULL;
	if (!other) {
		ks_close(store);
		return;
	}
	c0 = counter_of(schema);
	CHECK_EQ_INT(c0, 0, "the counter of a new store");
	CHECK_EQ_INT(ks_version(store, &v1, NULL), 0, "version");
	CHECK_EQ_INT(ks_version(other, &w1, NULL), 0, "version (other)");
	CHECK_EQ_INT(ks_put(store, blob, 1, 5, NULL, NULL), 0, "put");
	CHECK_EQ_INT(counter_of(schema), c0 + 1, "the counter after a put");
	CHECK_EQ_INT(ks_version(store, &v2, NULL), 0, "version");
	CHECK(v2 != v1, "version unchanged after a put");
	CHECK_EQ_INT(ks_version(other, &w2, NULL), 0, "version (other)");
	CHECK(w2 != w1, "version of the other handle unchanged after a put");

	/* Reads, an empty write, a rolled-back write: no change. */
	CHECK_EQ_INT(ks_get(store, 1, &rec, NULL), 0, "get");
	ks_record_release(&rec);
	CHECK_EQ_INT(ks_list(store, INT64_MIN, INT64_MAX, count_fn, &n, NULL),
		     0, "list");
	CHECK_EQ_INT(n, 1, "records listed");
	CHECK_EQ_INT(ks_write(store, nothing_fn, NULL, NULL), 0,
		     "a write that writes nothing");
	CHECK_EQ_INT(ks_write(store, put_then_fail_fn, NULL, NULL), 77,
		     "a write that fails");
	c = counter_of(schema);
	CHECK_EQ_INT(c, c0 + 1, "the counter after reads and no writes");
	CHECK_EQ_INT(ks_version(store, &v1, NULL), 0, "version");
	CHECK(v1 == v2, "version changed without a write");
	n = 0;
	ks_list(store, INT64_MIN, INT64_MAX, count_fn, &n, NULL);
	CHECK_EQ_INT(n, 1, "a failed write left a record");

	CHECK_EQ_INT(ks_put(other, blob, 1, 5, NULL, NULL), 0, "put (other)");
	CHECK_EQ_INT(counter_of(schema), c0 + 2, "the counter after 2 puts");
	CHECK_EQ_INT(ks_version(store, &v2, NULL), 0, "version");
	CHECK(v2 != v1, "version unchanged after another handle's put");
	ks_close(other);
	ks_close(store);
}

struct waiter {
	struct ks_store *store;
	unsigned timeout_ms;
	long long took;
	int rc;
};

static void *waiter_run(void *arg)
{
	struct waiter *w = arg;
	long long t0 = now_ms();

	w->rc = ks_wait(w->store, w->timeout_ms, NULL);
	w->took = now_ms() - t0;
	return NULL;
}

/* ks_wait returns early on another connection's write, not otherwise. */
static void test_wait(void)
{
	struct ks_store *store, *other;
	struct waiter w;
	pthread_t tid;
	char schema[64];

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	other = store ? open_ok(schema) : NULL;
	if (!other) {
		ks_close(store);
		return;
	}
	w = (struct waiter){store, 400, 0, -1};
	waiter_run(&w);
	CHECK_EQ_INT(w.rc, 0, "wait without a change");
	CHECK(w.took >= 380, "wait without a change returned after %lld ms",
	      w.took);

	w = (struct waiter){store, 8000, 0, -1};
	if (pthread_create(&tid, NULL, waiter_run, &w) != 0) {
		CHECK(0, "pthread_create failed");
	} else {
		sleep_ms(300);
		CHECK_EQ_INT(ks_put(other, (const unsigned char *)"n", 1, 1,
				    NULL, NULL),
			     0, "put through the other handle");
		pthread_join(tid, NULL);
		CHECK_EQ_INT(w.rc, 1,
			     "wait with a change says it was announced");
		CHECK(w.took < 4000, "wait returned %lld ms after a change",
		      w.took);
	}
	ks_close(other);
	ks_close(store);
}

struct holder {
	struct ks_store *store;
	pthread_barrier_t *held;
	int rc;
};

static int hold_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct holder *h = arg;
	int64_t kid;
	int rc = ks_txn_next_kid(txn, &kid, err);

	pthread_barrier_wait(h->held);
	sleep_ms(1500);
	return rc;
}

static void *holder_run(void *arg)
{
	struct holder *h = arg;

	h->rc = ks_write(h->store, hold_fn, h, NULL);
	return NULL;
}

/* A writer waits for the lock at most busy_timeout_ms: KS_EBUSY. */
static void test_busy(void)
{
	struct ks_store *store, *other = NULL;
	pthread_barrier_t held;
	struct holder h;
	struct ks_err err = {""};
	pthread_t tid;
	char schema[64];
	long long t0, took;
	int rc;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	if (!store)
		return;
	rc = open_pg(&other, schema, 200, &err);
	CHECK(rc == 0, "open with a short busy timeout: %s", err.text);
	if (rc) {
		ks_close(store);
		return;
	}
	pthread_barrier_init(&held, NULL, 2);
	h = (struct holder){store, &held, -1};
	if (pthread_create(&tid, NULL, holder_run, &h) == 0) {
		pthread_barrier_wait(&held);
		t0 = now_ms();
		rc = ks_put(other, (const unsigned char *)"b", 1, 1, NULL,
			    &err);
		took = now_ms() - t0;
		CHECK_EQ_INT(rc, KS_EBUSY, "put while locked: %s", err.text);
		CHECK(took < 1200, "put while locked took %lld ms", took);
		pthread_join(tid, NULL);
		CHECK_EQ_INT(h.rc, 0, "the holder's write");
		CHECK_EQ_INT(ks_put(other, (const unsigned char *)"b", 1, 1,
				    NULL, &err),
			     0, "put after the lock was released");
	}
	pthread_barrier_destroy(&held);
	ks_close(other);
	ks_close(store);
}

/* A connection the server ends is made again; version says reload. */
static void test_reconnect(void)
{
	struct ks_store *store;
	struct ks_err err = {""};
	uint64_t v1 = 0, v2 = 0;
	char schema[64], sql[256];
	long long t0;
	int rc = -1;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	if (!store)
		return;
	CHECK_EQ_INT(ks_version(store, &v1, NULL), 0, "version");
	snprintf(sql, sizeof(sql),
		 "SELECT count(pg_terminate_backend(pid)) FROM "
		 "pg_stat_activity WHERE application_name = 'jwksd_%ld'",
		 (long)getpid());
	CHECK(psql_number(sql) >= 1, "no connection was terminated");
	t0 = now_ms();
	while (now_ms() - t0 < 5000) {
		rc = ks_version(store, &v2, &err);
		if (rc == 0)
			break;
		CHECK_EQ_INT(rc, KS_EUNAVAIL, "version while reconnecting: %s",
			     err.text);
		sleep_ms(20);
	}
	CHECK_EQ_INT(rc, 0, "version after a reconnect: %s", err.text);
	CHECK(v2 != v1, "version unchanged after a reconnect");
	CHECK_EQ_INT(
		ks_put(store, (const unsigned char *)"r", 1, 1, NULL, &err), 0,
		"put after a reconnect: %s", err.text);
	ks_close(store);
}

/* Run sql (several statements may follow each other) through psql. */
static int psql_ok(const char *sql)
{
	char wrapped[4096];

	snprintf(wrapped, sizeof(wrapped), "%s; SELECT 7", sql);
	return psql_number(wrapped) == 7;
}

/*
 * Version 1 of the schema as jwksd made it before accounts, with two keys
 * and a lifecycle entry: opening it (many openers at once) migrates it to
 * the current version once, keeps the keys and adds the account tables.
 */
static void test_migration_from_v1(void)
{
	struct racer r[RACERS];
	pthread_t tid[RACERS];
	pthread_barrier_t start;
	struct ks_record rec = {0, NULL, 0, 0};
	struct ks_store *store;
	struct ks_err err = {""};
	char schema[64], sql[3072];
	int64_t kid = 0, id = 0;
	int i, started = 0, rc;

	new_schema(schema, sizeof(schema));
	snprintf(
		sql, sizeof(sql),
		"CREATE SCHEMA %1$s; "
		"CREATE TABLE %1$s.schema_version(version integer PRIMARY KEY, "
		"applied_at timestamptz NOT NULL DEFAULT now()); "
		"CREATE TABLE %1$s.keys(kid bigint GENERATED ALWAYS AS "
		"IDENTITY (SEQUENCE NAME %1$s.keys_kid_seq) PRIMARY KEY, "
		"key bytea NOT NULL, exp bigint NOT NULL); "
		"CREATE TABLE %1$s.key_lifecycle(kid bigint PRIMARY KEY "
		"REFERENCES %1$s.keys ON DELETE CASCADE, created bigint NOT "
		"NULL, activate_at bigint NOT NULL, retire_at bigint NOT NULL, "
		"revoked_at bigint NOT NULL); "
		"CREATE TABLE %1$s.change_counter(id boolean PRIMARY KEY "
		"DEFAULT true CHECK (id), n bigint NOT NULL); "
		"INSERT INTO %1$s.change_counter (n) VALUES (4); "
		"INSERT INTO %1$s.schema_version (version) VALUES (1); "
		"INSERT INTO %1$s.keys (key, exp) VALUES "
		"(decode('6f6c6431', 'hex'), 4102444800), "
		"(decode('6f6c6432', 'hex'), 5); "
		"INSERT INTO %1$s.key_lifecycle VALUES (1, 10, 20, 30, 40)",
		schema);
	CHECK(psql_ok(sql), "making a version 1 schema failed");

	pthread_barrier_init(&start, NULL, RACERS);
	for (i = 0; i < RACERS; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].start = &start;
		r[i].schema = schema;
		if (pthread_create(&tid[i], NULL, racer_run, &r[i]) != 0)
			break;
		started++;
	}
	CHECK_EQ_INT(started, RACERS, "threads started");
	if (started < RACERS)
		abort();
	for (i = 0; i < RACERS; i++) {
		pthread_join(tid[i], NULL);
		CHECK(r[i].rc == 0, "racer %d on version 1 returned %s: %s", i,
		      ks_err_name(r[i].rc), r[i].err.text);
		CHECK(r[i].kid > 2, "racer %d got kid %lld", i,
		      (long long)r[i].kid);
	}
	pthread_barrier_destroy(&start);

	snprintf(sql, sizeof(sql),
		 "SELECT count(*) * 100 + max(version) FROM %s.schema_version",
		 schema);
	CHECK_EQ_INT(psql_number(sql), SCHEMA_VERSION * 100 + SCHEMA_VERSION,
		     "schema_version rows and version after the migration");
	snprintf(sql, sizeof(sql),
		 "SELECT (to_regclass('%1$s.users') IS NOT NULL)::int + "
		 "(to_regclass('%1$s.auth_logs') IS NOT NULL)::int",
		 schema);
	CHECK_EQ_INT(psql_number(sql), 2, "account tables after migration");
	/* The racers' puts bumped it; the migration itself did not. */
	CHECK_EQ_INT(counter_of(schema), 4 + RACERS,
		     "the change counter after the migration");

	store = open_ok(schema);
	if (!store)
		return;
	rc = ks_get(store, 1, &rec, &err);
	CHECK(rc == 0, "get of the old kid 1: %s", err.text);
	CHECK(rc == 0 && rec.blob_len == 4 && !memcmp(rec.blob, "old1", 4) &&
		      rec.exp == 4102444800,
	      "the old kid 1 changed");
	ks_record_release(&rec);
	rc = ks_get(store, 2, &rec, &err);
	CHECK(rc == 0 && rec.blob_len == 4 && !memcmp(rec.blob, "old2", 4) &&
		      rec.exp == 5,
	      "the old kid 2 changed: %s", err.text);
	ks_record_release(&rec);
	snprintf(sql, sizeof(sql),
		 "SELECT created + activate_at + retire_at + revoked_at "
		 "FROM %s.key_lifecycle WHERE kid = 1",
		 schema);
	CHECK_EQ_INT(psql_number(sql), 100, "the old lifecycle entry");
	CHECK_EQ_INT(
		ks_put(store, (const unsigned char *)"new", 3, 1, &kid, &err),
		0, "put after the migration: %s", err.text);
	CHECK_EQ_INT(kid, 3 + RACERS, "the kid after the migration");
	rc = ks_user_add(store, "migrated", "$argon2id$x", NULL, 1, &id, &err);
	CHECK(rc == 0, "user_add after the migration: %s", err.text);
	CHECK_EQ_INT(id, 1, "the first user id");
	ks_close(store);
}

struct users_seen {
	int n;
	int64_t last;
	int ordered;
	char first[72];
};

static int users_fn(const struct ks_user *u, void *arg)
{
	struct users_seen *seen = arg;

	if (!seen->n)
		snprintf(seen->first, sizeof(seen->first), "%s", u->username);
	if (u->id <= seen->last)
		seen->ordered = 0;
	seen->last = u->id;
	seen->n++;
	return 0;
}

#define LOG_MAX 3000

struct log_seen {
	int n;
	struct ks_auth_log e[LOG_MAX];
};

static int log_fn(const struct ks_auth_log *e, void *arg)
{
	struct log_seen *seen = arg;

	if (seen->n < LOG_MAX)
		seen->e[seen->n] = *e;
	seen->n++;
	return 0;
}

static void list_log(struct ks_store *store, int64_t after,
		     struct log_seen *seen)
{
	struct ks_err err = {""};
	int rc;

	seen->n = 0;
	rc = ks_auth_log_list(store, after, log_fn, seen, &err);
	CHECK(rc == 0, "auth_log_list returned %s: %s", ks_err_name(rc),
	      err.text);
}

static struct ks_auth_log log_entry(const char *ip, int64_t when,
				    int64_t user_id, int success)
{
	struct ks_auth_log e;

	memset(&e, 0, sizeof(e));
	snprintf(e.ip, sizeof(e.ip), "%s", ip);
	e.when = when;
	e.user_id = user_id;
	e.success = success;
	return e;
}

/*
 * Users and the auth log through two handles (two connections, as two
 * instances have): what one writes the other reads; duplicates say which
 * value is taken; account writes leave the key change counter alone.
 */
static void test_accounts_two_handles(void)
{
	static struct log_seen seen;
	char name[16] = "imported", email[] = "imp@example.org";
	char hash[] = "$argon2id$imp";
	struct ks_store *a, *b;
	struct ks_user u, imp;
	struct ks_auth_log entries[3];
	struct ks_err err = {""};
	char schema[64], sql[256];
	uint64_t va = 0, vb = 0, v = 0;
	int64_t alice = 0, bob = 0, id = 0;
	long long c0;
	size_t purged = 0;
	int rc;

	new_schema(schema, sizeof(schema));
	a = open_ok(schema);
	b = a ? open_ok(schema) : NULL;
	if (!b) {
		ks_close(a);
		return;
	}
	CHECK_EQ_INT(ks_put(a, (const unsigned char *)"k", 1, 9, NULL, NULL), 0,
		     "put");
	c0 = counter_of(schema);
	CHECK_EQ_INT(ks_version(a, &va, NULL), 0, "version (a)");
	CHECK_EQ_INT(ks_version(b, &vb, NULL), 0, "version (b)");

	rc = ks_user_add(a, "alice", "$argon2id$hash-a", "alice@example.org",
			 1700000000, &alice, &err);
	CHECK(rc == 0, "user_add alice: %s", err.text);
	CHECK(alice > 0, "alice's id %lld", (long long)alice);
	rc = ks_user_get(b, "alice", &u, &err);
	CHECK(rc == 0, "user_get alice through b: %s", err.text);
	if (!rc) {
		CHECK_EQ_INT(u.id, alice, "alice's id through b");
		CHECK(!strcmp(u.username, "alice"), "username %s", u.username);
		CHECK(u.email && !strcmp(u.email, "alice@example.org"),
		      "alice's email");
		CHECK(!strcmp(u.password_hash, "$argon2id$hash-a"),
		      "alice's hash");
		CHECK_EQ_INT(u.registered, 1700000000, "alice registered");
		CHECK(u.last_login == KS_NEVER, "alice's last login %lld",
		      (long long)u.last_login);
		CHECK_EQ_INT(u.locked, 0, "alice locked");
	}
	ks_user_release(&u);
	snprintf(sql, sizeof(sql),
		 "SELECT count(*) FROM %s.users WHERE last_login IS NULL "
		 "AND NOT locked AND date_registered = 1700000000",
		 schema);
	CHECK_EQ_INT(psql_number(sql), 1, "alice's row in the table");

	/* Duplicates through the other handle: err says which. */
	rc = ks_user_add(b, "alice", "$argon2id$other", NULL, 1, &id, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "a second alice: %s", err.text);
	CHECK(strstr(err.text, "username") != NULL,
	      "a taken username is not named: %s", err.text);
	CHECK_EQ_INT(id, 0, "id_out of a failed add");
	rc = ks_user_add(b, "bob", "$argon2id$hash-b", "alice@example.org", 1,
			 NULL, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "bob with alice's email: %s", err.text);
	CHECK(strstr(err.text, "email") != NULL,
	      "a taken email is not named: %s", err.text);
	rc = ks_user_add(b, "bob", "$argon2id$hash-b", NULL, 2, &bob, &err);
	CHECK(rc == 0, "user_add bob: %s", err.text);
	CHECK(bob > alice, "bob's id %lld after alice's %lld", (long long)bob,
	      (long long)alice);
	/* Emails may be missing for any number of users. */
	CHECK_EQ_INT(
		ks_user_add(b, "carol", "$argon2id$c", NULL, 3, NULL, &err), 0,
		"a second user without email: %s", err.text);
	CHECK_EQ_INT(ks_user_get(a, "nobody", &u, NULL), KS_ENOTFOUND,
		     "get of nobody");
	CHECK_EQ_INT(ks_user_get(a, "ALICE", &u, NULL), KS_ENOTFOUND,
		     "usernames are case-sensitive");
	CHECK_EQ_INT(ks_user_get(a, "bad\xff\xfe", &u, &err), KS_ENOTFOUND,
		     "get of a name that is not UTF-8: %s", err.text);

	/* Changes by one handle, seen by the other. */
	CHECK_EQ_INT(ks_user_set_locked(a, bob, 1, &err), 0, "lock bob: %s",
		     err.text);
	CHECK_EQ_INT(ks_user_set_hash(a, bob, "$argon2id$new", &err), 0,
		     "set bob's hash: %s", err.text);
	CHECK_EQ_INT(ks_user_set_login(a, bob, 1800000000, &err), 0,
		     "set bob's login: %s", err.text);
	rc = ks_user_get(b, "bob", &u, &err);
	CHECK(rc == 0, "get bob: %s", err.text);
	if (!rc) {
		CHECK_EQ_INT(u.locked, 1, "bob locked");
		CHECK(!strcmp(u.password_hash, "$argon2id$new"), "bob's hash");
		CHECK_EQ_INT(u.last_login, 1800000000, "bob's last login");
		CHECK(u.email == NULL, "bob's email");
	}
	ks_user_release(&u);
	CHECK_EQ_INT(ks_user_set_locked(b, bob, 0, NULL), 0, "unlock bob");
	CHECK_EQ_INT(ks_user_get(a, "bob", &u, NULL), 0, "get bob");
	CHECK_EQ_INT(u.locked, 0, "bob unlocked");
	ks_user_release(&u);
	CHECK_EQ_INT(ks_user_set_hash(a, 999999, "$x", &err), KS_ENOTFOUND,
		     "set_hash of a missing id");
	CHECK_EQ_INT(ks_user_set_locked(a, 999999, 1, NULL), KS_ENOTFOUND,
		     "set_locked of a missing id");
	CHECK_EQ_INT(ks_user_set_login(a, 999999, 1, NULL), KS_ENOTFOUND,
		     "set_login of a missing id");
	CHECK_EQ_INT(ks_user_delete(a, 999999, NULL), KS_ENOTFOUND,
		     "delete of a missing id");

	/* The auth log: one handle writes, the other reads, in order. */
	entries[0] = log_entry("192.0.2.1", 1000, alice, 1);
	entries[1] = log_entry("2001:db8::1", 1001, 0, 0);
	entries[2] = log_entry("192.0.2.1", 1002, bob, 0);
	CHECK_EQ_INT(ks_auth_log_add(a, entries, 3, &err), 0,
		     "auth_log_add: %s", err.text);
	list_log(b, 0, &seen);
	CHECK_EQ_INT(seen.n, 3, "auth-log entries through b");
	if (seen.n == 3) {
		CHECK(seen.e[0].id < seen.e[1].id &&
			      seen.e[1].id < seen.e[2].id,
		      "auth-log ids not increasing");
		CHECK(!strcmp(seen.e[1].ip, "2001:db8::1"), "ip %s",
		      seen.e[1].ip);
		CHECK_EQ_INT(seen.e[0].user_id, alice, "entry 0's user");
		CHECK_EQ_INT(seen.e[1].user_id, 0, "entry 1's user");
		CHECK_EQ_INT(seen.e[2].when, 1002, "entry 2's time");
		CHECK_EQ_INT(seen.e[0].success, 1, "entry 0 succeeded");
		CHECK_EQ_INT(seen.e[2].success, 0, "entry 2 failed");
		list_log(a, seen.e[0].id, &seen);
		CHECK_EQ_INT(seen.n, 2, "entries after the first");
	}

	/* None of it is a key change. */
	CHECK_EQ_INT(counter_of(schema), c0,
		     "the change counter after account writes");
	CHECK_EQ_INT(ks_version(b, &v, NULL), 0, "version (b)");
	CHECK(v == vb, "account writes changed b's key version");
	CHECK_EQ_INT(ks_version(a, &v, NULL), 0, "version (a)");
	CHECK(v == va, "account writes changed a's key version");

	/* A deleted user's rows stay, without a user. */
	CHECK_EQ_INT(ks_user_delete(b, alice, &err), 0, "delete alice: %s",
		     err.text);
	CHECK_EQ_INT(ks_user_get(a, "alice", &u, NULL), KS_ENOTFOUND,
		     "get of deleted alice");
	/* An entry for a user deleted before it was written: no user. */
	entries[0] = log_entry("192.0.2.9", 1003, alice, 0);
	CHECK_EQ_INT(ks_auth_log_add(a, entries, 1, &err), 0,
		     "auth_log_add for a deleted user: %s", err.text);
	list_log(b, 0, &seen);
	CHECK_EQ_INT(seen.n, 4, "auth-log entries after the delete");
	if (seen.n == 4) {
		CHECK_EQ_INT(seen.e[0].user_id, 0, "alice's old entry's user");
		CHECK_EQ_INT(seen.e[2].user_id, bob, "bob's entry's user");
		CHECK_EQ_INT(seen.e[3].user_id, 0, "the late entry's user");
	}
	/* The name and the email are free again. */
	CHECK_EQ_INT(ks_user_add(b, "alice", "$h", "alice@example.org", 5, &id,
				 &err),
		     0, "alice again: %s", err.text);
	CHECK(id > bob, "a new alice reuses an id: %lld", (long long)id);

	/* Imports keep their ids; later adds go above them. */
	memset(&imp, 0, sizeof(imp));
	imp.id = 500;
	imp.username = name;
	imp.email = email;
	imp.password_hash = hash;
	imp.registered = 42;
	imp.last_login = 43;
	imp.locked = 1;
	CHECK_EQ_INT(ks_user_import(a, &imp, &err), 0, "import of 500: %s",
		     err.text);
	rc = ks_user_get(b, "imported", &u, &err);
	CHECK(rc == 0, "get of the imported user: %s", err.text);
	if (!rc) {
		CHECK_EQ_INT(u.id, 500, "the imported id");
		CHECK_EQ_INT(u.last_login, 43, "the imported last login");
		CHECK_EQ_INT(u.registered, 42, "the imported registration");
		CHECK_EQ_INT(u.locked, 1, "the imported lock");
		CHECK(u.email && !strcmp(u.email, "imp@example.org"),
		      "the imported email");
	}
	ks_user_release(&u);
	snprintf(name, sizeof(name), "imported2");
	imp.email = NULL;
	CHECK_EQ_INT(ks_user_import(b, &imp, &err), KS_EEXISTS,
		     "import of 500 again: %s", err.text);
	CHECK(strstr(err.text, "id") != NULL, "a taken id is not named: %s",
	      err.text);
	imp.id = 501;
	snprintf(name, sizeof(name), "bob");
	CHECK_EQ_INT(ks_user_import(b, &imp, &err), KS_EEXISTS,
		     "import of a taken username: %s", err.text);
	CHECK(strstr(err.text, "username") != NULL,
	      "a taken username is not named: %s", err.text);
	snprintf(name, sizeof(name), "imported3");
	imp.id = 300;
	imp.last_login = KS_NEVER;
	CHECK_EQ_INT(ks_user_import(b, &imp, &err), 0,
		     "import below the sequence: %s", err.text);
	CHECK_EQ_INT(ks_user_add(b, "after", "$h", NULL, 6, &id, &err), 0,
		     "add after imports: %s", err.text);
	CHECK_EQ_INT(id, 501, "the id after importing 500 and 300");
	rc = ks_user_get(a, "imported3", &u, &err);
	CHECK(rc == 0 && u.last_login == KS_NEVER,
	      "an imported never-logged-in user: %s", err.text);
	ks_user_release(&u);

	/* The purge removes what is older, in one statement. */
	CHECK_EQ_INT(ks_auth_log_purge(a, 1002, &purged, &err), 0, "purge: %s",
		     err.text);
	CHECK_EQ_INT(purged, 2, "entries purged");
	list_log(b, 0, &seen);
	CHECK_EQ_INT(seen.n, 2, "entries after the purge");
	CHECK(seen.n == 2 && seen.e[0].when == 1002 && seen.e[1].when == 1003,
	      "the purge kept the wrong entries");
	CHECK_EQ_INT(counter_of(schema), c0,
		     "the change counter after all account writes");
	ks_close(b);
	ks_close(a);
}

struct txn_accounts {
	struct ks_user u;
	struct ks_auth_log e[2];
	int users_seen;
	int entries_seen;
};

static int txn_count_user(const struct ks_user *u, void *arg)
{
	(void)u;
	((struct txn_accounts *)arg)->users_seen++;
	return 0;
}

static int txn_count_entry(const struct ks_auth_log *e, void *arg)
{
	(void)e;
	((struct txn_accounts *)arg)->entries_seen++;
	return 0;
}

/* Import a user and two entries, then list them in the transaction. */
static int txn_accounts_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct txn_accounts *t = arg;
	int rc = ks_txn_user_import(txn, &t->u, err);

	if (!rc)
		rc = ks_txn_auth_log_import(txn, t->e, 2, err);
	if (!rc)
		rc = ks_txn_user_list(txn, txn_count_user, t, err);
	if (!rc)
		rc = ks_txn_auth_log_list(txn, 0, txn_count_entry, t, err);
	return rc;
}

/*
 * Accounts inside a write transaction (ks_copy's way): ids kept, the
 * sequences moved past them, no key change announced, and a conflict
 * rolls the whole transaction back.
 */
static void test_accounts_in_txn(void)
{
	char name[] = "txnuser", hash[] = "$argon2id$t";
	struct txn_accounts t;
	struct ks_store *store;
	struct ks_auth_log e = log_entry("192.0.2.77", 5, 0, 1);
	struct ks_user u;
	struct ks_err err = {""};
	static struct log_seen seen;
	char schema[64];
	int64_t id = 0;
	long long c0;
	int rc;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	if (!store)
		return;
	memset(&t, 0, sizeof(t));
	t.u.id = 70;
	t.u.username = name;
	t.u.password_hash = hash;
	t.u.registered = 1;
	t.u.last_login = KS_NEVER;
	t.e[0] = log_entry("192.0.2.1", 1, 70, 1);
	t.e[0].id = 10;
	t.e[1] = log_entry("192.0.2.2", 2, 0, 0);
	t.e[1].id = 20;
	c0 = counter_of(schema);
	rc = ks_write(store, txn_accounts_fn, &t, &err);
	CHECK(rc == 0, "accounts in a transaction: %s", err.text);
	CHECK_EQ_INT(t.users_seen, 1, "users seen inside the transaction");
	CHECK_EQ_INT(t.entries_seen, 2, "entries seen inside the transaction");
	CHECK_EQ_INT(counter_of(schema), c0,
		     "the change counter after account imports");
	list_log(store, 0, &seen);
	CHECK(seen.n == 2 && seen.e[0].id == 10 && seen.e[1].id == 20 &&
		      seen.e[0].user_id == 70,
	      "imported entries: %d", seen.n);
	CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, &err), 0, "add: %s",
		     err.text);
	list_log(store, 20, &seen);
	CHECK(seen.n == 1 && seen.e[0].id == 21, "the id after importing 20");
	CHECK_EQ_INT(ks_user_add(store, "later", "$h", NULL, 1, &id, &err), 0,
		     "user_add: %s", err.text);
	CHECK_EQ_INT(id, 71, "the user id after importing 70");

	/* Taken ids: KS_EEXISTS, and nothing of the transaction stays. */
	t.users_seen = t.entries_seen = 0;
	t.u.id = 80;
	name[0] = 'T';
	rc = ks_write(store, txn_accounts_fn, &t, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "entries 10 and 20 again: %s", err.text);
	CHECK_EQ_INT(ks_user_get(store, name, &u, NULL), KS_ENOTFOUND,
		     "a user of a rolled-back transaction");
	t.u.id = 90;
	snprintf(name, sizeof(name), "later");
	t.e[0].id = 30;
	t.e[1].id = 31;
	rc = ks_write(store, txn_accounts_fn, &t, &err);
	CHECK_EQ_INT(rc, KS_EEXISTS, "a taken username: %s", err.text);
	CHECK(strstr(err.text, "username") != NULL,
	      "a taken username is not named: %s", err.text);
	list_log(store, 0, &seen);
	CHECK_EQ_INT(seen.n, 3, "entries after rolled-back transactions");
	ks_close(store);
}

#define MANY 2500

/*
 * Listings longer than a page, a batch of entries longer than one
 * statement, and a batch that fails at its end: all or none.
 */
static void test_accounts_many(void)
{
	static struct ks_auth_log entries[MANY];
	static struct log_seen seen;
	struct users_seen users = {0, 0, 1, ""};
	struct ks_store *store;
	struct ks_err err = {""};
	char schema[64], sql[512];
	int i, rc, ordered = 1;

	new_schema(schema, sizeof(schema));
	store = open_ok(schema);
	if (!store)
		return;
	snprintf(sql, sizeof(sql),
		 "INSERT INTO %s.users (username, password_hash, "
		 "date_registered) SELECT 'u' || g, 'h', g "
		 "FROM generate_series(1, %d) g",
		 schema, MANY);
	CHECK(psql_ok(sql), "inserting many users failed");
	rc = ks_user_list(store, users_fn, &users, &err);
	CHECK(rc == 0, "user_list: %s", err.text);
	CHECK_EQ_INT(users.n, MANY, "users listed");
	CHECK(users.ordered, "users not listed in id order");
	CHECK(!strcmp(users.first, "u1"), "the first user %s", users.first);

	for (i = 0; i < MANY; i++)
		entries[i] = log_entry(i % 2 ? "198.51.100.7" : "::1", i,
				       i % 3 ? 0 : 1 + i % MANY, i % 2);
	CHECK_EQ_INT(ks_auth_log_add(store, entries, MANY, &err), 0,
		     "a batch of %d: %s", MANY, err.text);
	list_log(store, 0, &seen);
	CHECK_EQ_INT(seen.n, MANY, "entries listed");
	for (i = 1; i < seen.n && i < MANY; i++)
		if (seen.e[i].id <= seen.e[i - 1].id ||
		    seen.e[i].when != seen.e[i - 1].when + 1)
			ordered = 0;
	CHECK(ordered, "a long batch is not in order");
	CHECK_EQ_INT(seen.e[3].user_id, 4, "an entry's user in a long batch");
	CHECK_EQ_INT(seen.e[4].user_id, 0, "an entry without a user");

	/* Its last entry cannot be stored: none of the batch is. */
	snprintf(entries[MANY - 1].ip, sizeof(entries[0].ip), "bad\xff");
	rc = ks_auth_log_add(store, entries, MANY, &err);
	CHECK(rc != 0, "a batch with a bad entry was taken");
	list_log(store, 0, &seen);
	CHECK_EQ_INT(seen.n, MANY, "entries after a failed batch");
	CHECK_EQ_INT(ks_auth_log_add(store, entries, 1, &err), 0,
		     "the connection after a failed batch: %s", err.text);
	ks_close(store);
}

/* A server of this test's own, and a guard that removes it. */
static char own_state[64];
static pid_t own_guard = -1;
static int own_guard_fd = -1;

static int own_server(const char *command)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd),
		 "\"$JWKS_PYTHON\" \"$JWKS_PG_SERVER\" %s %s >/dev/null",
		 command, own_state);
	return system(cmd);
}

/*
 * Start the server and a child that stops and removes it when this
 * process ends, however it ends (its pipe reads EOF then).
 */
static int own_start(char *conn, size_t cap)
{
	char path[128];
	int fds[2];
	FILE *f;

	snprintf(own_state, sizeof(own_state), "/tmp/jwksd-own-XXXXXX");
	if (!mkdtemp(own_state) || pipe(fds) != 0)
		return -1;
	/* Not for the server's processes: they would keep it open. */
	fcntl(fds[1], F_SETFD, FD_CLOEXEC);
	own_guard = fork();
	if (own_guard < 0)
		return -1;
	if (own_guard == 0) {
		char c;

		close(fds[1]);
		while (read(fds[0], &c, 1) != 0 && errno == EINTR)
			;
		own_server("stop");
		rmdir(own_state);
		_exit(0);
	}
	close(fds[0]);
	own_guard_fd = fds[1];
	if (own_server("start") != 0)
		return -1;
	snprintf(path, sizeof(path), "%s/conninfo", own_state);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(conn, (int)cap, f))
		conn[0] = '\0';
	fclose(f);
	conn[strcspn(conn, "\n")] = '\0';
	return conn[0] ? 0 : -1;
}

static void own_end(void)
{
	if (own_guard_fd >= 0)
		close(own_guard_fd);
	if (own_guard > 0)
		waitpid(own_guard, NULL, 0);
	own_guard_fd = -1;
	own_guard = -1;
}

/*
 * A server stopped between calls: every call says KS_EUNAVAIL (none
 * hangs, none says anything else), and when it is back the same handle
 * goes on with what was stored.
 */
static void test_outage(void)
{
	struct ks_store *store = NULL;
	struct ks_options opts = KS_OPTIONS_INIT;
	struct ks_auth_log e = log_entry("192.0.2.50", 77, 0, 1);
	struct ks_err err = {""};
	struct ks_user u;
	char conn[512];
	int64_t id = 0;
	long long t0;
	int rc = -1;

	if (!getenv("JWKS_PG_SERVER") || !getenv("JWKS_PYTHON")) {
		printf("outage skipped: JWKS_PG_SERVER, JWKS_PYTHON unset\n");
		return;
	}
	rc = own_start(conn, sizeof(conn));
	CHECK(rc == 0, "a server of our own did not start");
	if (rc) {
		own_end();
		return;
	}
	opts.path = conn;
	rc = ks_open(&store, pg, &opts, &err);
	CHECK(rc == 0, "open on our server: %s", err.text);
	if (rc) {
		own_end();
		return;
	}
	CHECK_EQ_INT(
		ks_user_add(store, "dave", "$argon2id$d", NULL, 9, &id, &err),
		0, "user_add: %s", err.text);
	e.user_id = id;
	CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, &err), 0, "auth_log_add: %s",
		     err.text);

	CHECK_EQ_INT(own_server("halt"), 0, "halting the server");
	rc = ks_user_get(store, "dave", &u, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "user_get while down: %s", err.text);
	rc = ks_user_add(store, "erin", "$h", NULL, 1, NULL, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "user_add while down: %s", err.text);
	rc = ks_auth_log_add(store, &e, 1, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "auth_log_add while down: %s", err.text);
	rc = ks_user_set_login(store, id, 5, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "set_login while down: %s", err.text);
	rc = ks_put(store, (const unsigned char *)"k", 1, 1, NULL, &err);
	CHECK_EQ_INT(rc, KS_EUNAVAIL, "put while down: %s", err.text);

	CHECK_EQ_INT(own_server("resume"), 0, "resuming the server");
	/* The backoff may hold the next attempt back for a while. */
	t0 = now_ms();
	do {
		rc = ks_user_get(store, "dave", &u, &err);
		if (rc == KS_EUNAVAIL)
			sleep_ms(50);
	} while (rc == KS_EUNAVAIL && now_ms() - t0 < 20000);
	CHECK_EQ_INT(rc, 0, "user_get after the server came back: %s",
		     err.text);
	if (!rc)
		CHECK_EQ_INT(u.id, id, "dave's id after the outage");
	ks_user_release(&u);
	CHECK_EQ_INT(ks_auth_log_add(store, &e, 1, &err), 0,
		     "auth_log_add after the outage: %s", err.text);
	{
		static struct log_seen seen;

		list_log(store, 0, &seen);
		CHECK_EQ_INT(seen.n, 2, "entries after the outage");
		CHECK(seen.n == 2 && seen.e[0].user_id == id &&
			      seen.e[1].user_id == id,
		      "entries lost their user");
	}
	CHECK_EQ_INT(ks_user_add(store, "erin", "$h", NULL, 1, NULL, &err), 0,
		     "user_add after the outage: %s", err.text);
	ks_close(store);
	own_end();
}

int main(void)
{
	pg = ks_backend_find("postgres");
	conninfo = getenv("JWKS_TEST_PG");
	if (!pg || !conninfo || !conninfo[0]) {
		fprintf(stderr, "test_postgres: %s\n",
			pg ? "set JWKS_TEST_PG to a scratch database's "
			     "connection string (a superuser's)"
			   : "the postgres backend is not built");
		return 1;
	}
	/* Our connections carry a name of their own, to be found again. */
	snprintf(app_conninfo, sizeof(app_conninfo),
		 "%s application_name=jwksd_%ld", conninfo, (long)getpid());
	if (strstr(conninfo, "://")) {
		fprintf(stderr, "test_postgres: JWKS_TEST_PG must be "
				"keyword=value pairs, not a URI\n");
		return 1;
	}
	test_migration_race();
	printf("migration race done\n");
	test_describe();
	printf("describe done\n");
	test_unreachable();
	printf("unreachable done\n");
	test_kids();
	printf("kids done\n");
	test_counter();
	printf("counter done\n");
	test_wait();
	printf("wait done\n");
	test_busy();
	printf("busy done\n");
	test_reconnect();
	printf("reconnect done\n");
	test_migration_from_v1();
	printf("migration from version 1 done\n");
	test_accounts_two_handles();
	printf("accounts across two handles done\n");
	test_accounts_in_txn();
	printf("accounts in a transaction done\n");
	test_accounts_many();
	printf("many accounts done\n");
	test_outage();
	printf("outage done\n");
	return TEST_REPORT();
}
