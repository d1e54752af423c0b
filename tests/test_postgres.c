/*
 * PostgreSQL-only behaviour of the key store: migrations raced by many
 * openers, connection strings shown without passwords, an unreachable
 * server, kids from the sequence, the change counter, notifications,
 * lock waits and reconnects. Needs JWKS_TEST_PG: the connection string of
 * a scratch database as a superuser; psql inspects what the store did.
 */
#define _DEFAULT_SOURCE

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keystore.h"
#include "test.h"

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
	CHECK_EQ_INT(psql_number(sql), 1, "schema_version rows after a race");
	snprintf(sql, sizeof(sql), "SELECT count(DISTINCT kid) FROM %s.keys",
		 schema);
	CHECK_EQ_INT(psql_number(sql), RACERS, "distinct kids after a race");
	/* Opening a migrated schema again migrates nothing. */
	ks_close(open_ok(schema));
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s.schema_version",
		 schema);
	CHECK_EQ_INT(psql_number(sql), 1, "schema_version rows after reopen");
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
	return TEST_REPORT();
}
