/*
 * The PostgreSQL key store: the tables of the SQLite store, in a schema of
 * their own, shared by any number of jwksd instances on any number of hosts.
 *
 * Every call runs on libpq's asynchronous API with poll() and a deadline, so
 * that no call hangs on a cut network link; a connection that fails is
 * dropped and made again by a later call, after a capped, jittered backoff.
 * Write transactions take a transaction-scoped advisory lock, bump a change
 * counter and NOTIFY the other instances in the same transaction.
 */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ks_backend.h"

extern const struct ks_backend ks_backend_postgres;

/* Type oids of the parameters we bind (pg_type.h is server-side). */
#define KS_PG_INT8OID 20
#define KS_PG_BYTEAOID 17

/* How long a connection attempt may take, and the reconnect backoff. */
#define KS_PG_CONNECT_MS 1000
#define KS_PG_BACKOFF_MIN_MS 50
#define KS_PG_BACKOFF_MAX_MS 1000
/* What the client waits beyond the server's own statement_timeout. */
#define KS_PG_SLACK_MS 500

/* The schema versions this build knows; migrations[i] makes version i+1. */
static const char *const ks_pg_migrations[] = {
	"CREATE TABLE {s}.keys("
	"kid bigint GENERATED ALWAYS AS IDENTITY "
	"(SEQUENCE NAME {s}.keys_kid_seq) PRIMARY KEY, "
	"key bytea NOT NULL, "
	"exp bigint NOT NULL); "
	"CREATE TABLE {s}.key_lifecycle("
	"kid bigint PRIMARY KEY REFERENCES {s}.keys ON DELETE CASCADE, "
	"created bigint NOT NULL, "
	"activate_at bigint NOT NULL, "
	"retire_at bigint NOT NULL, "
	"revoked_at bigint NOT NULL); "
	"CREATE TABLE {s}.change_counter("
	"id boolean PRIMARY KEY DEFAULT true CHECK (id), "
	"n bigint NOT NULL); "
	"INSERT INTO {s}.change_counter (n) VALUES (0)",
	/*
	 * Version 2: accounts. Times are seconds since the epoch, as keys.exp
	 * is (the interface's int64, whole, with no range to fall out of);
	 * last_login NULL: never. Writes here leave change_counter alone: no
	 * instance reloads its keys for a login.
	 */
	"CREATE TABLE {s}.users("
	"id bigint GENERATED ALWAYS AS IDENTITY "
	"(SEQUENCE NAME {s}.users_id_seq) CONSTRAINT users_pkey PRIMARY KEY, "
	"username text NOT NULL CONSTRAINT users_username_key UNIQUE "
	"CHECK (octet_length(username) BETWEEN 1 AND 64), "
	"password_hash text NOT NULL, "
	"email text CONSTRAINT users_email_key UNIQUE, "
	"date_registered bigint NOT NULL, "
	"last_login bigint, "
	"locked boolean NOT NULL DEFAULT false); "
	"CREATE TABLE {s}.auth_logs("
	"id bigint GENERATED ALWAYS AS IDENTITY "
	"(SEQUENCE NAME {s}.auth_logs_id_seq) PRIMARY KEY, "
	"request_ip text NOT NULL, "
	"request_timestamp bigint NOT NULL, "
	"user_id bigint REFERENCES {s}.users(id) ON DELETE SET NULL, "
	"success boolean NOT NULL); "
	/* For the purge, and for ON DELETE SET NULL of a user's rows. */
	"CREATE INDEX auth_logs_request_timestamp_idx "
	"ON {s}.auth_logs (request_timestamp); "
	"CREATE INDEX auth_logs_user_id_idx ON {s}.auth_logs (user_id)",
};
#define KS_PG_VERSIONS \
	((int)(sizeof(ks_pg_migrations) / sizeof(ks_pg_migrations[0])))

/* Statements, with the quoted schema name in place of {s}. */
enum {
	KS_PG_SQL_PUT,
	KS_PG_SQL_IMPORT,
	KS_PG_SQL_GET,
	KS_PG_SQL_LIST,
	KS_PG_SQL_COUNTER,
	KS_PG_SQL_BUMP,
	KS_PG_SQL_LIFE_LIST,
	KS_PG_SQL_LIFE_PUT,
	KS_PG_SQL_UPDATE,
	KS_PG_SQL_DELETE,
	KS_PG_SQL_SETVAL,
	KS_PG_SQL_CHECK,
	KS_PG_SQL_SCRUB,
	KS_PG_SQL_VERSION,
	KS_PG_SQL_NEXTVAL,
	KS_PG_SQL_USER_ADD,
	KS_PG_SQL_USER_LOCK,
	KS_PG_SQL_USER_IMPORT,
	KS_PG_SQL_USER_SETVAL,
	KS_PG_SQL_USER_GET,
	KS_PG_SQL_USER_LIST,
	KS_PG_SQL_USER_SET_HASH,
	KS_PG_SQL_USER_SET_LOCKED,
	KS_PG_SQL_USER_SET_LOGIN,
	KS_PG_SQL_USER_DELETE,
	KS_PG_SQL_LOG_HEAD,
	KS_PG_SQL_LOG_TAIL,
	KS_PG_SQL_LOG_LOCK,
	KS_PG_SQL_LOG_IMPORT_HEAD,
	KS_PG_SQL_LOG_IMPORT_TAIL,
	KS_PG_SQL_LOG_SETVAL,
	KS_PG_SQL_LOG_LIST,
	KS_PG_SQL_LOG_PURGE,
	KS_PG_SQL_N
};

/* Rows a listing of users or auth-log entries reads per statement. */
#define KS_PG_PAGE 1000
#define KS_PG_PAGE_TEXT "1000"
/* Auth-log entries one INSERT carries (4 parameters each). */
#define KS_PG_LOG_ROWS 1000

static const char *const ks_pg_sql_fmt[KS_PG_SQL_N] = {
	[KS_PG_SQL_PUT] = "INSERT INTO {s}.keys (kid, key, exp) "
			  "OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3)",
	[KS_PG_SQL_IMPORT] = "INSERT INTO {s}.keys (kid, key, exp) "
			     "OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3) "
			     "ON CONFLICT (kid) DO NOTHING RETURNING kid",
	[KS_PG_SQL_GET] = "SELECT key, exp FROM {s}.keys WHERE kid = $1",
	/* exp_after INT64_MIN is no lower bound: such rows are listed too. */
	[KS_PG_SQL_LIST] = "SELECT kid, key, exp FROM {s}.keys "
			   "WHERE (exp > $1 OR $1 = -9223372036854775808) "
			   "AND exp <= $2 ORDER BY kid",
	[KS_PG_SQL_COUNTER] = "SELECT n FROM {s}.change_counter",
	[KS_PG_SQL_BUMP] = "UPDATE {s}.change_counter SET n = n + 1",
	[KS_PG_SQL_LIFE_LIST] = "SELECT kid, created, activate_at, "
				"retire_at, revoked_at "
				"FROM {s}.key_lifecycle ORDER BY kid",
	[KS_PG_SQL_LIFE_PUT] =
		"INSERT INTO {s}.key_lifecycle "
		"(kid, created, activate_at, retire_at, revoked_at) "
		"SELECT kid, $2, $3, $4, $5 FROM {s}.keys WHERE kid = $1 "
		"ON CONFLICT (kid) DO UPDATE SET created = excluded.created, "
		"activate_at = excluded.activate_at, "
		"retire_at = excluded.retire_at, "
		"revoked_at = excluded.revoked_at",
	[KS_PG_SQL_UPDATE] = "UPDATE {s}.keys SET key = $1, exp = $2 "
			     "WHERE kid = $3",
	[KS_PG_SQL_DELETE] = "DELETE FROM {s}.keys WHERE kid = $1",
	/* Kids only grow: the sequence moves past every imported kid. */
	[KS_PG_SQL_SETVAL] =
		"SELECT setval('{s}.keys_kid_seq', greatest($1::bigint, "
		"(SELECT last_value FROM {s}.keys_kid_seq)))",
	[KS_PG_SQL_CHECK] = "SELECT (SELECT count(*) FROM {s}.keys "
			    "WHERE octet_length(key) = 0) + "
			    "(SELECT count(*) FROM {s}.change_counter) - 1",
	/*
	 * VACUUM FULL rewrites both tables from their live rows. Earlier
	 * copies in the WAL, in archives and in backups are out of jwksd's
	 * reach: the database's administrator expires those.
	 */
	[KS_PG_SQL_SCRUB] = "VACUUM FULL {s}.keys, {s}.key_lifecycle",
	[KS_PG_SQL_VERSION] = "SELECT coalesce(max(version), 0) "
			      "FROM {s}.schema_version",
	[KS_PG_SQL_NEXTVAL] = "SELECT nextval('{s}.keys_kid_seq')",
	[KS_PG_SQL_USER_ADD] = "INSERT INTO {s}.users "
			       "(username, password_hash, email, "
			       "date_registered) "
			       "VALUES ($1, $2, $3, $4) RETURNING id",
	/*
	 * An import moves users_id_seq with setval(), which no transaction
	 * guards: this lock keeps every insert (and its nextval()) out
	 * meanwhile, and other imports too.
	 */
	[KS_PG_SQL_USER_LOCK] = "LOCK TABLE {s}.users "
				"IN SHARE ROW EXCLUSIVE MODE",
	[KS_PG_SQL_USER_IMPORT] =
		"INSERT INTO {s}.users (id, username, password_hash, email, "
		"date_registered, last_login, locked) "
		"OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)",
	/* Ids only grow: the sequence moves past every imported id. */
	[KS_PG_SQL_USER_SETVAL] =
		"SELECT setval('{s}.users_id_seq', greatest($1::bigint, "
		"(SELECT last_value FROM {s}.users_id_seq)))",
	[KS_PG_SQL_USER_GET] = "SELECT id, username, email, password_hash, "
			       "date_registered, last_login, locked "
			       "FROM {s}.users WHERE username = $1",
	[KS_PG_SQL_USER_LIST] = "SELECT id, username, email, password_hash, "
				"date_registered, last_login, locked "
				"FROM {s}.users WHERE id > $1 "
				"ORDER BY id LIMIT " KS_PG_PAGE_TEXT,
	[KS_PG_SQL_USER_SET_HASH] = "UPDATE {s}.users SET password_hash = $2 "
				    "WHERE id = $1",
	[KS_PG_SQL_USER_SET_LOCKED] = "UPDATE {s}.users SET locked = $2 "
				      "WHERE id = $1",
	[KS_PG_SQL_USER_SET_LOGIN] = "UPDATE {s}.users SET last_login = $2 "
				     "WHERE id = $1",
	/* The user's auth-log rows stay: ON DELETE SET NULL. */
	[KS_PG_SQL_USER_DELETE] = "DELETE FROM {s}.users WHERE id = $1",
	/*
	 * The auth-log INSERT is HEAD, then one "($n, $n+1, $n+2, $n+3, i)"
	 * per entry, then TAIL: ids follow the entries' order (i), and an
	 * entry whose user was deleted meanwhile gets no user, as the rows
	 * written before the delete did.
	 */
	[KS_PG_SQL_LOG_HEAD] = "INSERT INTO {s}.auth_logs "
			       "(request_ip, request_timestamp, user_id, "
			       "success) "
			       "SELECT v.ip, v.ts, u.id, v.ok FROM (VALUES ",
	[KS_PG_SQL_LOG_TAIL] = ") AS v(ip, ts, uid, ok, ord) "
			       "LEFT JOIN {s}.users u ON u.id = v.uid "
			       "ORDER BY v.ord",
	/* ks_txn_auth_log_import(): the same, ids kept (copies). */
	[KS_PG_SQL_LOG_LOCK] = "LOCK TABLE {s}.auth_logs "
			       "IN SHARE ROW EXCLUSIVE MODE",
	[KS_PG_SQL_LOG_IMPORT_HEAD] =
		"INSERT INTO {s}.auth_logs "
		"(id, request_ip, request_timestamp, user_id, success) "
		"OVERRIDING SYSTEM VALUE "
		"SELECT v.id, v.ip, v.ts, u.id, v.ok FROM (VALUES ",
	[KS_PG_SQL_LOG_IMPORT_TAIL] = ") AS v(id, ip, ts, uid, ok) "
				      "LEFT JOIN {s}.users u ON u.id = v.uid",
	[KS_PG_SQL_LOG_SETVAL] =
		"SELECT setval('{s}.auth_logs_id_seq', greatest($1::bigint, "
		"(SELECT last_value FROM {s}.auth_logs_id_seq)))",
	[KS_PG_SQL_LOG_LIST] =
		"SELECT id, request_ip, request_timestamp, "
		"user_id, success FROM {s}.auth_logs "
		"WHERE id > $1 ORDER BY id LIMIT " KS_PG_PAGE_TEXT,
	[KS_PG_SQL_LOG_PURGE] = "DELETE FROM {s}.auth_logs "
				"WHERE request_timestamp < $1",
};

struct ks_pg_store {
	struct ks_store base;
	/* The connection string as given, and as shown (no password). */
	char *conninfo;
	char *shown;
	char *schema;
	char *sql[KS_PG_SQL_N];
	/* The NOTIFY channel and the advisory lock key, from the schema. */
	char *listen_sql;
	char lock_key[24];
	int timeout_ms;

	/* The connection of every slot but wait(), guarded by lock. */
	pthread_mutex_t lock;
	int lock_ready;
	PGconn *conn;
	uint64_t epoch;
	int64_t next_attempt_ms;
	int backoff_ms;
	unsigned seed;
	/* What ks_pg_version() saw last, and the counter it hands out. */
	uint64_t seen_epoch;
	long long seen_counter;
	uint64_t version;

	/* The listening connection of wait(), guarded by wait_lock. */
	pthread_mutex_t wait_lock;
	int wait_lock_ready;
	PGconn *listener;
	int64_t listen_next_ms;
	int listen_backoff_ms;
	unsigned listen_seed;
};

static struct ks_pg_store *ks_pg_downcast(struct ks_store *store)
{
	if (store->be != &ks_backend_postgres)
		KS_BUG("store of backend '%s' passed to the postgres backend",
		       store->be && store->be->name ? store->be->name : "?");
	return (struct ks_pg_store *)store;
}

static int64_t ks_pg_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Wait until fd is ready for events or the deadline passes: 1 ready,
 * 0 the deadline passed, -1 poll() failed.
 */
static int ks_pg_poll(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - ks_pg_now_ms();
		struct pollfd p = {fd, events, 0};
		int r;

		if (left <= 0)
			return 0;
		r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		return r < 0 ? -1 : r > 0;
	}
}

static void ks_pg_sleep_until(int64_t deadline)
{
	while (ks_pg_poll(-1, 0, deadline) != 0)
		;
}

/* libpq's message for conn, on one line. */
static const char *ks_pg_message(const char *msg, char *buf, size_t cap)
{
	size_t len;

	snprintf(buf, cap, "%s", msg && msg[0] ? msg : "no detail");
	len = strlen(buf);
	while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		buf[--len] = '\0';
	for (; len; len--)
		if (buf[len - 1] == '\n' || buf[len - 1] == '\t')
			buf[len - 1] = ' ';
	return buf;
}

/* Append text to buf[*len..cap), keeping it NUL-terminated. */
static void ks_pg_append(char *buf, size_t cap, size_t *len, const char *text)
{
	size_t n = strlen(text);

	if (*len + 1 >= cap)
		return;
	if (n > cap - *len - 1)
		n = cap - *len - 1;
	memcpy(buf + *len, text, n);
	*len += n;
	buf[*len] = '\0';
}

/*
 * The connection string as keyword=value pairs without any password
 * (PQconninfoParse() reads URIs too, so user:password@ never survives).
 */
static int ks_pg_describe(const char *path, char *buf, size_t cap)
{
	PQconninfoOption *opts, *o;
	char *errmsg = NULL;
	size_t len = 0;

	opts = PQconninfoParse(path, &errmsg);
	PQfreemem(errmsg);
	if (!opts) {
		snprintf(buf, cap, "(unparsable connection string)");
		return KS_EINVAL;
	}
	buf[0] = '\0';
	for (o = opts; o->keyword; o++) {
		const char *v;
		int quote;

		if (!o->val || !strcmp(o->keyword, "password") ||
		    !strcmp(o->keyword, "sslpassword"))
			continue;
		quote = !o->val[0] || strpbrk(o->val, " '\\\t\n") != NULL;
		if (len)
			ks_pg_append(buf, cap, &len, " ");
		ks_pg_append(buf, cap, &len, o->keyword);
		ks_pg_append(buf, cap, &len, quote ? "='" : "=");
		for (v = o->val; *v; v++) {
			char one[3] = {*v, '\0', '\0'};

			if (*v == '\'' || *v == '\\') {
				one[0] = '\\';
				one[1] = *v;
			}
			ks_pg_append(buf, cap, &len, one);
		}
		if (quote)
			ks_pg_append(buf, cap, &len, "'");
	}
	PQconninfoFree(opts);
	if (!len)
		snprintf(buf, cap, "(libpq defaults)");
	return 0;
}

/* Forget the connection; the next call connects again. */
static void ks_pg_drop(struct ks_pg_store *s)
{
	if (s->conn)
		PQfinish(s->conn);
	s->conn = NULL;
}

/*
 * Translate a failed result (res NULL: a failure of the connection itself)
 * at the edge. *gone is set when the connection can no longer be used: it
 * broke, or the server turned read-only (a failover made it a standby).
 */
static int ks_pg_code(PGconn *conn, const PGresult *res, int *gone)
{
	const char *state =
		res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	*gone = !conn || PQstatus(conn) != CONNECTION_OK;
	if (*gone || !state)
		return *gone ? KS_EUNAVAIL : KS_EIO;
	if (!strcmp(state, "25006") || !strncmp(state, "08", 2) ||
	    !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
	    !strcmp(state, "57P03")) {
		*gone = 1;
		return KS_EUNAVAIL;
	}
	if (!strcmp(state, "55P03") || !strcmp(state, "57014") ||
	    !strcmp(state, "40001") || !strcmp(state, "40P01"))
		return KS_EBUSY;
	if (!strcmp(state, "23505"))
		return KS_EEXISTS;
	/* Text that is not UTF-8, or has no place in the server's encoding. */
	if (!strcmp(state, "22021") || !strcmp(state, "22P05"))
		return KS_EINVAL;
	if (!strcmp(state, "42501"))
		return KS_EACCES;
	if (!strncmp(state, "53", 2))
		return !strcmp(state, "53200") ? KS_ENOMEM : KS_ENOSPC;
	if (!strncmp(state, "XX", 2))
		return KS_ECORRUPT;
	return KS_EIO;
}

/*
 * What a unique constraint keeps unique, for "the username is taken"
 * (the constraints are named in the migrations).
 */
static const char *ks_pg_taken(const char *constraint)
{
	if (!strcmp(constraint, "users_username_key"))
		return "username";
	if (!strcmp(constraint, "users_email_key"))
		return "email";
	if (strlen(constraint) > 5 &&
	    !strcmp(constraint + strlen(constraint) - 5, "_pkey"))
		return "id";
	return "value";
}

/*
 * Describe a failure: function, failing call, the store (never its
 * password), PostgreSQL's primary message and its SQLSTATE; for a
 * duplicate, which value is taken (never the value itself).
 */
static int ks_pg_fail(struct ks_pg_store *s, PGconn *conn, const PGresult *res,
		      int *gone, const char *func, const char *what,
		      struct ks_err *err)
{
	const char *state =
		res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg =
		res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *constraint =
		res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
	char text[160];
	int code = ks_pg_code(conn, res, gone);

	if (code == KS_EEXISTS && constraint)
		return ks_err_set(
			err, code,
			"%s: %s on '%s' failed: the %s is taken "
			"(unique constraint %s, SQLSTATE 23505)",
			func, what, s->shown, ks_pg_taken(constraint),
			ks_pg_message(constraint, text, sizeof(text)));
	if (!msg && res)
		msg = PQresultErrorMessage(res);
	if (!msg || !msg[0])
		msg = conn ? PQerrorMessage(conn) : "no connection";
	return ks_err_set(err, code, "%s: %s on '%s' failed: %s (SQLSTATE %s)",
			  func, what, s->shown,
			  ks_pg_message(msg, text, sizeof(text)),
			  state ? state : "none");
}

/*
 * Send one statement on conn and wait for its result until deadline.
 * nparams < 0 sends sql as it is (several statements, no parameters).
 * On success *out (may be NULL) receives the last result. On failure
 * *gone says whether conn is unusable now.
 */
static int ks_pg_run(struct ks_pg_store *s, PGconn *conn, int64_t deadline,
		     const char *func, const char *what, const char *sql,
		     int nparams, const Oid *types, const char *const *values,
		     const int *lengths, const int *formats, PGresult **out,
		     int *gone, struct ks_err *err)
{
	PGresult *last = NULL, *bad = NULL, *r;
	int sent, flushed, ret = 0;

	*gone = 0;
	if (out)
		*out = NULL;
	sent = nparams < 0 ? PQsendQuery(conn, sql)
			   : PQsendQueryParams(conn, sql, nparams, types,
					       values, lengths, formats, 1);
	if (!sent)
		return ks_pg_fail(s, conn, NULL, gone, func, what, err);
	while ((flushed = PQflush(conn)) == 1) {
		int p = ks_pg_poll(PQsocket(conn), POLLIN | POLLOUT, deadline);

		if (p <= 0 || !PQconsumeInput(conn)) {
			flushed = -1;
			break;
		}
	}
	for (;;) {
		if (flushed < 0)
			break;
		while (!PQisBusy(conn)) {
			r = PQgetResult(conn);
			if (!r)
				goto done;
			if (PQresultStatus(r) != PGRES_COMMAND_OK &&
			    PQresultStatus(r) != PGRES_TUPLES_OK && !bad) {
				bad = r;
				continue;
			}
			PQclear(last);
			last = r;
		}
		if (ks_pg_poll(PQsocket(conn), POLLIN, deadline) <= 0 ||
		    !PQconsumeInput(conn))
			break;
	}
	/* The deadline passed, or the link broke: the connection is gone. */
	PQclear(last);
	PQclear(bad);
	*gone = 1;
	return ks_err_set(err, KS_EUNAVAIL, "%s: %s on '%s' failed: %s", func,
			  what, s->shown,
			  flushed < 0 || PQstatus(conn) != CONNECTION_OK
				  ? "the connection broke"
				  : "no answer before the deadline");
done:
	if (bad) {
		ret = ks_pg_fail(s, conn, bad, gone, func, what, err);
		PQclear(bad);
		PQclear(last);
		return ret;
	}
	if (out)
		*out = last;
	else
		PQclear(last);
	return 0;
}

static void ks_pg_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/*
 * Open a new connection to the store, waiting at most until deadline.
 * Keepalives and a TCP user timeout are defaults the connection string
 * overrides (dbname comes last and is expanded).
 */
static int ks_pg_connect(struct ks_pg_store *s, PGconn **out, int64_t deadline,
			 const char *func, struct ks_err *err)
{
	static const char *const keys[] = {
		"keepalives",
		"keepalives_idle",
		"keepalives_interval",
		"keepalives_count",
		"tcp_user_timeout",
		"fallback_application_name",
		"client_encoding",
		"dbname",
		NULL,
	};
	/* Usernames, emails and addresses travel as UTF-8. */
	const char *values[] = {"1",	 "10",	 "3",	      "3", "10000",
				"jwksd", "UTF8", s->conninfo, NULL};
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	char text[160];
	PGconn *conn;
	const char *ro;

	*out = NULL;
	conn = PQconnectStartParams(keys, values, 1);
	if (!conn)
		return ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	while (PQstatus(conn) != CONNECTION_BAD && st != PGRES_POLLING_OK &&
	       st != PGRES_POLLING_FAILED) {
		int p = ks_pg_poll(PQsocket(conn),
				   st == PGRES_POLLING_READING ? POLLIN
							       : POLLOUT,
				   deadline);

		if (p <= 0) {
			PQfinish(conn);
			return ks_err_set(err, KS_EUNAVAIL,
					  "%s: connect to '%s' failed: %s",
					  func, s->shown,
					  p == 0 ? "timed out" : "poll failed");
		}
		st = PQconnectPoll(conn);
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		ks_err_set(err, KS_EUNAVAIL, "%s: connect to '%s' failed: %s",
			   func, s->shown,
			   ks_pg_message(PQerrorMessage(conn), text,
					 sizeof(text)));
		PQfinish(conn);
		return KS_EUNAVAIL;
	}
	/* A standby (or a server made read-only) cannot take our writes. */
	ro = PQparameterStatus(conn, "in_hot_standby");
	if ((ro && !strcmp(ro, "on")) ||
	    ((ro = PQparameterStatus(conn, "default_transaction_read_only")) &&
	     !strcmp(ro, "on"))) {
		PQfinish(conn);
		return ks_err_set(err, KS_EUNAVAIL,
				  "%s: connect to '%s' failed: the server is "
				  "read-only",
				  func, s->shown);
	}
	/* Notices ("schema already exists, skipping") are not for stderr. */
	PQsetNoticeProcessor(conn, ks_pg_notice, NULL);
	if (PQsetnonblocking(conn, 1) != 0) {
		PQfinish(conn);
		return ks_err_set(err, KS_EIO,
				  "%s: PQsetnonblocking on '%s' failed", func,
				  s->shown);
	}
	*out = conn;
	return 0;
}

/* The server-side timeouts, in ms, for statements and lock waits. */
static int ks_pg_statement_ms(const struct ks_pg_store *s)
{
	return s->timeout_ms > 1000 ? s->timeout_ms : 1000;
}

static int64_t ks_pg_deadline(const struct ks_pg_store *s)
{
	return ks_pg_now_ms() + ks_pg_statement_ms(s) + KS_PG_SLACK_MS;
}

/* Note a failed connection attempt: back off, with jitter. */
static int64_t ks_pg_backoff(int *backoff_ms, unsigned *seed)
{
	int cap = *backoff_ms ? *backoff_ms * 2 : KS_PG_BACKOFF_MIN_MS;
	int wait;

	if (cap > KS_PG_BACKOFF_MAX_MS)
		cap = KS_PG_BACKOFF_MAX_MS;
	*backoff_ms = cap;
	wait = cap / 2 + (int)(rand_r(seed) % (unsigned)(cap / 2 + 1));
	return ks_pg_now_ms() + wait;
}

/*
 * Make sure s->conn is up: connect again when it is gone, unless the
 * backoff says not yet (then fail fast, without touching the network).
 * Called with the lock held.
 */
static int ks_pg_ensure(struct ks_pg_store *s, const char *func,
			struct ks_err *err)
{
	char timeout[16];
	const char *values[1] = {timeout};
	int64_t now = ks_pg_now_ms();
	int ret, gone;

	if (s->conn && PQstatus(s->conn) == CONNECTION_OK &&
	    PQtransactionStatus(s->conn) == PQTRANS_IDLE)
		return 0;
	ks_pg_drop(s);
	if (now < s->next_attempt_ms)
		return ks_err_set(err, KS_EUNAVAIL,
				  "%s: store '%s' unreachable; next attempt "
				  "in %lld ms",
				  func, s->shown,
				  (long long)(s->next_attempt_ms - now));
	ret = ks_pg_connect(s, &s->conn, now + KS_PG_CONNECT_MS, func, err);
	snprintf(timeout, sizeof(timeout), "%d", ks_pg_statement_ms(s));
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"SET statement_timeout",
				"SELECT set_config('statement_timeout', $1, "
				"false), set_config('lock_timeout', $1, false)",
				1, NULL, values, NULL, NULL, NULL, &gone, err);
	if (ret) {
		ks_pg_drop(s);
		s->next_attempt_ms = ks_pg_backoff(&s->backoff_ms, &s->seed);
		return ret;
	}
	s->backoff_ms = 0;
	s->next_attempt_ms = 0;
	s->epoch++;
	return 0;
}

/*
 * Run a statement with the lock held and the connection up, with int64
 * parameters (as text) and at most one bytea parameter (binary, at
 * blob_at; -1: none). Results are binary.
 */
static int ks_pg_exec(struct ks_pg_store *s, const char *func, const char *what,
		      int sql, const int64_t *ints, int n, int blob_at,
		      const unsigned char *blob, size_t blob_len,
		      PGresult **out, struct ks_err *err)
{
	char text[6][24];
	const char *values[6];
	int lengths[6], formats[6];
	Oid types[6];
	int i, j = 0, ret, gone;

	for (i = 0; i < n + (blob_at >= 0); i++) {
		if (i == blob_at) {
			if (blob_len > INT_MAX)
				return ks_err_set(err, KS_EINVAL,
						  "%s: blob too large", func);
			values[i] = (const char *)blob;
			lengths[i] = (int)blob_len;
			formats[i] = 1;
			types[i] = KS_PG_BYTEAOID;
			continue;
		}
		snprintf(text[i], sizeof(text[i]), "%lld",
			 (long long)ints[j++]);
		values[i] = text[i];
		lengths[i] = 0;
		formats[i] = 0;
		types[i] = KS_PG_INT8OID;
	}
	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, what, s->sql[sql],
			i, types, values, lengths, formats, out, &gone, err);
	if (gone)
		ks_pg_drop(s);
	return ret;
}

/* A binary int8 (or int4) column of a result row. */
static int64_t ks_pg_int(const PGresult *res, int row, int col)
{
	const unsigned char *p =
		(const unsigned char *)PQgetvalue(res, row, col);
	int len = PQgetlength(res, row, col);
	uint64_t v = 0;
	int i;

	for (i = 0; i < len && i < 8; i++)
		v = v << 8 | p[i];
	if (len == 4)
		return (int32_t)(uint32_t)v;
	return (int64_t)v;
}

static void ks_pg_free(struct ks_pg_store *s)
{
	int i;

	ks_pg_drop(s);
	if (s->listener)
		PQfinish(s->listener);
	for (i = 0; i < KS_PG_SQL_N; i++)
		free(s->sql[i]);
	free(s->listen_sql);
	if (s->lock_ready)
		pthread_mutex_destroy(&s->lock);
	if (s->wait_lock_ready)
		pthread_mutex_destroy(&s->wait_lock);
	free(s->conninfo);
	free(s->shown);
	free(s->schema);
	free(s);
}

/* fmt with every "{s}" replaced by the quoted schema, in a new string. */
static char *ks_pg_format(const char *fmt, const char *quoted)
{
	size_t n = 0, qlen = strlen(quoted), len;
	const char *p;
	char *out, *o;

	for (p = strstr(fmt, "{s}"); p; p = strstr(p + 3, "{s}"))
		n++;
	len = strlen(fmt) + n * qlen;
	out = malloc(len + 1);
	if (!out)
		return NULL;
	for (o = out, p = fmt; *p;) {
		if (!strncmp(p, "{s}", 3)) {
			memcpy(o, quoted, qlen);
			o += qlen;
			p += 3;
		} else {
			*o++ = *p++;
		}
	}
	*o = '\0';
	return out;
}

/* FNV-1a of the schema name: the advisory lock key of the store. */
static long long ks_pg_lock_key(const char *schema)
{
	uint64_t h = 14695981039346656037u;
	const char *p;

	for (p = "jwksd:"; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211u;
	for (p = schema; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211u;
	return (long long)h;
}

/*
 * Whether the schema has every migration already: 0 yes, 1 no (or it does
 * not exist yet), or an error. Reads without a lock.
 */
static int ks_pg_current(struct ks_pg_store *s, const char *quoted,
			 struct ks_err *err)
{
	static const char func[] = "ks_pg_open";
	char *table = ks_pg_format("{s}.schema_version", quoted);
	const char *values[1] = {table};
	PGresult *res = NULL;
	int ret, gone, exists = 0;

	if (!table)
		return ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, "to_regclass",
			"SELECT (to_regclass($1::text) IS NOT NULL)::int4", 1,
			NULL, values, NULL, NULL, &res, &gone, err);
	if (!ret && PQntuples(res) == 1)
		exists = ks_pg_int(res, 0, 0) == 1;
	PQclear(res);
	free(table);
	if (ret || !exists)
		return ret ? ret : 1;
	res = NULL;
	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
			"SELECT schema_version", s->sql[KS_PG_SQL_VERSION], 0,
			NULL, NULL, NULL, NULL, &res, &gone, err);
	if (!ret)
		ret = PQntuples(res) == 1 &&
				      ks_pg_int(res, 0, 0) == KS_PG_VERSIONS
			      ? 0
			      : 1;
	PQclear(res);
	return ret;
}

/* Run the migrations this store lacks, once across every instance. */
static int ks_pg_migrate(struct ks_pg_store *s, const char *quoted,
			 struct ks_err *err)
{
	static const char func[] = "ks_pg_open";
	const char *values[1] = {s->lock_key};
	char *sql = NULL;
	PGresult *res = NULL;
	int64_t have = 0;
	int ret, gone, v;

	/*
	 * A store that is up to date needs no lock: opening it (a new
	 * instance, `jwksd keys list`) never waits behind a writer.
	 */
	ret = ks_pg_current(s, quoted, err);
	if (ret <= 0)
		return ret;
	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, "BEGIN", "BEGIN",
			0, NULL, NULL, NULL, NULL, NULL, &gone, err);
	/* The lock comes first: CREATE SCHEMA IF NOT EXISTS races. */
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"pg_advisory_xact_lock",
				"SELECT pg_advisory_xact_lock($1::bigint)", 1,
				NULL, values, NULL, NULL, NULL, &gone, err);
	sql = ks_pg_format("CREATE SCHEMA IF NOT EXISTS {s}; "
			   "CREATE TABLE IF NOT EXISTS {s}.schema_version("
			   "version integer PRIMARY KEY, "
			   "applied_at timestamptz NOT NULL DEFAULT now())",
			   quoted);
	if (!ret && !sql)
		ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"CREATE SCHEMA", sql, -1, NULL, NULL, NULL,
				NULL, NULL, &gone, err);
	free(sql);
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"SELECT schema_version",
				s->sql[KS_PG_SQL_VERSION], 0, NULL, NULL, NULL,
				NULL, &res, &gone, err);
	if (!ret && PQntuples(res) == 1)
		have = ks_pg_int(res, 0, 0);
	PQclear(res);
	if (!ret && have > KS_PG_VERSIONS)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "%s: schema %s on '%s' has version %lld, "
				 "newer than this jwksd (%d)",
				 func, s->schema, s->shown, (long long)have,
				 KS_PG_VERSIONS);
	for (v = (int)have; !ret && v < KS_PG_VERSIONS; v++) {
		char number[16];
		const char *vers[1] = {number};

		sql = ks_pg_format(ks_pg_migrations[v], quoted);
		if (!sql) {
			ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory",
					 func);
			break;
		}
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"migration", sql, -1, NULL, NULL, NULL, NULL,
				NULL, &gone, err);
		free(sql);
		snprintf(number, sizeof(number), "%d", v + 1);
		sql = ks_pg_format("INSERT INTO {s}.schema_version (version) "
				   "VALUES ($1::integer)",
				   quoted);
		if (!ret && !sql)
			ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory",
					 func);
		if (!ret)
			ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
					"INSERT schema_version", sql, 1, NULL,
					vers, NULL, NULL, NULL, &gone, err);
		free(sql);
	}
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, "COMMIT",
				"COMMIT", 0, NULL, NULL, NULL, NULL, NULL,
				&gone, err);
	if (ret && !gone && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		ks_pg_run(s, s->conn, ks_pg_deadline(s), func, "ROLLBACK",
			  "ROLLBACK", 0, NULL, NULL, NULL, NULL, NULL, &gone,
			  NULL);
	return ret;
}

static int ks_pg_setup(struct ks_pg_store *s, struct ks_err *err)
{
	char *quoted, *errmsg = NULL;
	PQconninfoOption *parsed;
	int i, ret = 0;

	parsed = PQconninfoParse(s->conninfo, &errmsg);
	PQfreemem(errmsg);
	if (!parsed)
		return ks_err_set(err, KS_EINVAL,
				  "ks_pg_open: the connection string cannot "
				  "be parsed");
	PQconninfoFree(parsed);
	ret = ks_pg_ensure(s, "ks_pg_open", err);
	if (ret)
		return ret;
	quoted = PQescapeIdentifier(s->conn, s->schema, strlen(s->schema));
	if (!quoted)
		return ks_err_set(err, KS_EINVAL,
				  "ks_pg_open: schema name '%s' refused",
				  s->schema);
	for (i = 0; i < KS_PG_SQL_N && !ret; i++) {
		s->sql[i] = ks_pg_format(ks_pg_sql_fmt[i], quoted);
		if (!s->sql[i])
			ret = ks_err_set(err, KS_ENOMEM,
					 "ks_pg_open: out of memory");
	}
	if (!ret) {
		s->listen_sql = ks_pg_format("LISTEN {s}", quoted);
		if (!s->listen_sql)
			ret = ks_err_set(err, KS_ENOMEM,
					 "ks_pg_open: out of memory");
	}
	if (!ret)
		ret = ks_pg_migrate(s, quoted, err);
	PQfreemem(quoted);
	return ret;
}

static int ks_pg_open(struct ks_store **out, const struct ks_options *opts,
		      struct ks_err *err)
{
	const char *schema = opts->pg_schema ? opts->pg_schema : "jwksd";
	struct ks_pg_store *s;
	char shown[512];
	int ret;

	ks_pg_describe(opts->path, shown, sizeof(shown));
	if (!ks_valid_schema_name(schema))
		return ks_err_set(err, KS_EINVAL,
				  "ks_pg_open: schema name '%.64s' is not "
				  "[a-z_][a-z0-9_]{0,62}",
				  schema);
	s = calloc(1, sizeof(*s));
	if (s) {
		s->conninfo = strdup(opts->path);
		s->shown = strdup(shown);
		s->schema = strdup(schema);
	}
	if (!s || !s->conninfo || !s->shown || !s->schema) {
		if (s)
			ks_pg_free(s);
		return ks_err_set(err, KS_ENOMEM, "ks_pg_open: out of memory");
	}
	s->base.be = &ks_backend_postgres;
	s->timeout_ms = opts->busy_timeout_ms;
	s->seed = (unsigned)ks_pg_now_ms() ^ (unsigned)(uintptr_t)s;
	s->listen_seed = s->seed * 2654435761u + 1;
	snprintf(s->lock_key, sizeof(s->lock_key), "%lld",
		 ks_pg_lock_key(schema));
	s->lock_ready = pthread_mutex_init(&s->lock, NULL) == 0;
	s->wait_lock_ready = pthread_mutex_init(&s->wait_lock, NULL) == 0;
	if (!s->lock_ready || !s->wait_lock_ready) {
		ks_pg_free(s);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_pg_open: pthread_mutex_init failed");
	}
	ret = ks_pg_setup(s, err);
	if (ret) {
		ks_pg_free(s);
		return ret;
	}
	s->seen_epoch = s->epoch;
	s->seen_counter = -1;
	*out = &s->base;
	return 0;
}

static void ks_pg_close(struct ks_store *store)
{
	ks_pg_free(ks_pg_downcast(store));
}

/* A write transaction on the store's connection. */
struct ks_pg_txn {
	struct ks_txn base;
	struct ks_pg_store *s;
	/* The kid ks_txn_next_kid() took from the sequence (0: none yet). */
	int64_t next_kid;
	int wrote;
};

static struct ks_pg_txn *ks_pg_txn(struct ks_txn *txn)
{
	ks_pg_downcast(txn->store);
	return (struct ks_pg_txn *)txn;
}

/* Run sql without parameters inside the write transaction. */
static int ks_pg_plain(struct ks_pg_store *s, const char *func, const char *sql,
		       const char *value, struct ks_err *err)
{
	const char *values[1] = {value};
	int ret, gone;

	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, sql, sql,
			value ? 1 : 0, NULL, value ? values : NULL, NULL, NULL,
			NULL, &gone, err);
	if (gone)
		ks_pg_drop(s);
	return ret;
}

static int ks_pg_write(struct ks_store *store, ks_txn_fn fn, void *arg,
		       struct ks_err *err)
{
	static const char func[] = "ks_pg_write";
	struct ks_pg_store *s = ks_pg_downcast(store);
	struct ks_pg_txn txn = {{store}, s, 0, 0};
	char timeout[16];
	int ret;

	snprintf(timeout, sizeof(timeout), "%d",
		 s->timeout_ms > 0 ? s->timeout_ms : 1);
	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_plain(s, func, "BEGIN", NULL, err);
	if (!ret)
		ret = ks_pg_plain(s, func,
				  "SELECT set_config('lock_timeout', $1, true)",
				  timeout, err);
	/* One writer of any instance on any host decides at a time. */
	if (!ret)
		ret = ks_pg_plain(s, func,
				  "SELECT pg_advisory_xact_lock($1::bigint)",
				  s->lock_key, err);
	if (!ret) {
		ret = fn(&txn.base, arg, err);
		if (!ret && txn.wrote)
			ret = ks_pg_exec(s, func, "bump change_counter",
					 KS_PG_SQL_BUMP, NULL, 0, -1, NULL, 0,
					 NULL, err);
		if (!ret && txn.wrote)
			ret = ks_pg_plain(s, func, "SELECT pg_notify($1, '')",
					  s->schema, err);
		/* COMMIT of a failed transaction would roll back quietly. */
		if (!ret && s->conn &&
		    PQtransactionStatus(s->conn) == PQTRANS_INERROR)
			ret = ks_err_set(err, KS_EIO,
					 "%s: a statement of the transaction "
					 "on '%s' failed",
					 func, s->shown);
		else if (!ret && s->conn)
			ret = ks_pg_plain(s, func, "COMMIT", NULL, err);
		else if (!ret)
			ret = ks_err_set(err, KS_EUNAVAIL,
					 "%s: store '%s' went away", func,
					 s->shown);
	}
	/* After a failed COMMIT too: nothing of fn's may stay. */
	if (ret && s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		ks_pg_plain(s, func, "ROLLBACK", NULL, NULL);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* Inside a transaction: the connection must still be there. */
static int ks_pg_txn_live(struct ks_pg_store *s, const char *func,
			  struct ks_err *err)
{
	if (!s->conn)
		return ks_err_set(err, KS_EUNAVAIL,
				  "%s: store '%s' went away during the "
				  "transaction",
				  func, s->shown);
	return 0;
}

static int ks_pg_txn_next_kid(struct ks_txn *base, int64_t *out,
			      struct ks_err *err)
{
	static const char func[] = "ks_pg_txn_next_kid";
	struct ks_pg_txn *txn = ks_pg_txn(base);
	struct ks_pg_store *s = txn->s;
	PGresult *res = NULL;
	int ret;

	*out = 0;
	if (txn->next_kid) {
		*out = txn->next_kid;
		return 0;
	}
	/* Taken once per transaction, and never handed out again. */
	ret = ks_pg_txn_live(s, func, err);
	if (!ret)
		ret = ks_pg_exec(s, func, "nextval", KS_PG_SQL_NEXTVAL, NULL, 0,
				 -1, NULL, 0, &res, err);
	if (!ret && PQntuples(res) == 1)
		txn->next_kid = ks_pg_int(res, 0, 0);
	PQclear(res);
	if (!ret && txn->next_kid < 1)
		ret = ks_err_set(err, KS_ENOSPC, "%s: no kid left in '%s'",
				 func, s->shown);
	if (!ret)
		*out = txn->next_kid;
	return ret;
}

static int ks_pg_txn_put(struct ks_txn *base, const unsigned char *blob,
			 size_t blob_len, int64_t exp, int64_t *kid_out,
			 struct ks_err *err)
{
	struct ks_pg_txn *txn = ks_pg_txn(base);
	int64_t ints[2];
	int ret;

	ret = ks_pg_txn_next_kid(base, &ints[0], err);
	ints[1] = exp;
	if (!ret)
		ret = ks_pg_exec(txn->s, "ks_pg_txn_put", "INSERT keys",
				 KS_PG_SQL_PUT, ints, 2, 1, blob, blob_len,
				 NULL, err);
	if (!ret) {
		txn->next_kid = 0;
		txn->wrote = 1;
		if (kid_out)
			*kid_out = ints[0];
	}
	return ret;
}

static int ks_pg_txn_import(struct ks_txn *base, const struct ks_record *rec,
			    struct ks_err *err)
{
	static const char func[] = "ks_pg_txn_import";
	struct ks_pg_txn *txn = ks_pg_txn(base);
	struct ks_pg_store *s = txn->s;
	int64_t ints[2] = {rec->kid, rec->exp};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_txn_live(s, func, err);
	/* ON CONFLICT DO NOTHING: a taken kid leaves the transaction usable. */
	if (!ret)
		ret = ks_pg_exec(s, func, "INSERT keys", KS_PG_SQL_IMPORT, ints,
				 2, 1, rec->blob, rec->blob_len, &res, err);
	if (!ret && PQntuples(res) != 1)
		ret = ks_err_set(err, KS_EEXISTS,
				 "%s: kid %lld in '%s' already exists", func,
				 (long long)rec->kid, s->shown);
	PQclear(res);
	if (!ret)
		ret = ks_pg_exec(s, func, "setval keys_kid_seq",
				 KS_PG_SQL_SETVAL, ints, 1, -1, NULL, 0, NULL,
				 err);
	if (!ret)
		txn->wrote = 1;
	return ret;
}

/*
 * Run a write that must touch exactly one row of kid (an update, a delete,
 * a lifecycle entry); KS_ENOTFOUND when it touched none.
 */
static int ks_pg_txn_one_row(struct ks_pg_txn *txn, const char *func,
			     const char *what, int sql, const int64_t *ints,
			     int n, const struct ks_record *blob_of,
			     int64_t kid, struct ks_err *err)
{
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_txn_live(txn->s, func, err);
	if (!ret)
		ret = ks_pg_exec(txn->s, func, what, sql, ints, n,
				 blob_of ? 0 : -1,
				 blob_of ? blob_of->blob : NULL,
				 blob_of ? blob_of->blob_len : 0, &res, err);
	if (!ret && strcmp(PQcmdTuples(res), "1") != 0)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "%s: kid %lld not found in '%s'", func,
				 (long long)kid, txn->s->shown);
	PQclear(res);
	if (!ret)
		txn->wrote = 1;
	return ret;
}

static int ks_pg_txn_update(struct ks_txn *base, const struct ks_record *rec,
			    struct ks_err *err)
{
	int64_t ints[2] = {rec->exp, rec->kid};

	return ks_pg_txn_one_row(ks_pg_txn(base), "ks_pg_txn_update",
				 "UPDATE keys", KS_PG_SQL_UPDATE, ints, 2, rec,
				 rec->kid, err);
}

static int ks_pg_txn_delete(struct ks_txn *base, int64_t kid,
			    struct ks_err *err)
{
	/* The lifecycle entry goes with it (ON DELETE CASCADE). */
	return ks_pg_txn_one_row(ks_pg_txn(base), "ks_pg_txn_delete",
				 "DELETE keys", KS_PG_SQL_DELETE, &kid, 1, NULL,
				 kid, err);
}

static int ks_pg_txn_life_put(struct ks_txn *base, const struct ks_life *life,
			      struct ks_err *err)
{
	int64_t ints[5] = {life->kid, life->created, life->activate_at,
			   life->retire_at, life->revoked_at};

	/* The entry belongs to a record: no row is written without one. */
	return ks_pg_txn_one_row(ks_pg_txn(base), "ks_pg_txn_life_put",
				 "INSERT key_lifecycle", KS_PG_SQL_LIFE_PUT,
				 ints, 5, NULL, life->kid, err);
}

/* put() and import() are one-statement write transactions. */
struct ks_pg_one {
	const unsigned char *blob;
	size_t blob_len;
	int64_t exp;
	int64_t *kid_out;
	const struct ks_record *rec;
};

static int ks_pg_put_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	struct ks_pg_one *one = arg;

	return ks_pg_txn_put(txn, one->blob, one->blob_len, one->exp,
			     one->kid_out, err);
}

static int ks_pg_import_fn(struct ks_txn *txn, void *arg, struct ks_err *err)
{
	return ks_pg_txn_import(txn, ((struct ks_pg_one *)arg)->rec, err);
}

static int ks_pg_put(struct ks_store *store, const unsigned char *blob,
		     size_t blob_len, int64_t exp, int64_t *kid_out,
		     struct ks_err *err)
{
	struct ks_pg_one one = {blob, blob_len, exp, kid_out, NULL};

	return ks_pg_write(store, ks_pg_put_fn, &one, err);
}

static int ks_pg_import(struct ks_store *store, const struct ks_record *rec,
			struct ks_err *err)
{
	struct ks_pg_one one = {NULL, 0, 0, NULL, rec};

	return ks_pg_write(store, ks_pg_import_fn, &one, err);
}

/* Copy a binary bytea column into a new blob of rec. */
static int ks_pg_copy_blob(const PGresult *res, int row, int col,
			   struct ks_record *rec, const char *func,
			   struct ks_err *err)
{
	int len = PQgetlength(res, row, col);

	rec->blob = malloc(len > 0 ? (size_t)len : 1);
	if (!rec->blob)
		return ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	if (len > 0)
		memcpy(rec->blob, PQgetvalue(res, row, col), (size_t)len);
	rec->blob_len = (size_t)len;
	return 0;
}

static int ks_pg_get(struct ks_store *store, int64_t kid, struct ks_record *out,
		     struct ks_err *err)
{
	static const char func[] = "ks_pg_get";
	struct ks_pg_store *s = ks_pg_downcast(store);
	PGresult *res = NULL;
	int ret;

	out->kid = kid;
	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_exec(s, func, "SELECT keys", KS_PG_SQL_GET, &kid, 1,
				 -1, NULL, 0, &res, err);
	pthread_mutex_unlock(&s->lock);
	if (!ret && PQntuples(res) != 1)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "%s: kid %lld not found in '%s'", func,
				 (long long)kid, s->shown);
	if (!ret)
		ret = ks_pg_copy_blob(res, 0, 0, out, func, err);
	if (!ret)
		out->exp = ks_pg_int(res, 0, 1);
	if (res && PQntuples(res) == 1)
		explicit_bzero(PQgetvalue(res, 0, 0),
			       (size_t)PQgetlength(res, 0, 0));
	PQclear(res);
	if (ret)
		ks_record_release(out);
	return ret;
}

/*
 * Hand every row of a listing to fn, borrowed; the result's copy of each
 * blob is wiped before it is freed.
 */
static int ks_pg_list_rows(PGresult *res, ks_list_fn fn, void *arg)
{
	int i, n = PQntuples(res), ret = 0;

	for (i = 0; i < n; i++) {
		struct ks_record rec;

		rec.kid = ks_pg_int(res, i, 0);
		rec.blob = (unsigned char *)PQgetvalue(res, i, 1);
		rec.blob_len = (size_t)PQgetlength(res, i, 1);
		rec.exp = ks_pg_int(res, i, 2);
		if (!ret)
			ret = fn(&rec, arg);
		explicit_bzero(rec.blob, rec.blob_len);
	}
	return ret;
}

static int ks_pg_list_in(struct ks_pg_store *s, int locked_here,
			 int64_t exp_after, int64_t exp_until, ks_list_fn fn,
			 void *arg, const char *func, struct ks_err *err)
{
	int64_t ints[2] = {exp_after, exp_until};
	PGresult *res = NULL;
	int ret = 0;

	if (locked_here) {
		pthread_mutex_lock(&s->lock);
		ret = ks_pg_ensure(s, func, err);
	} else {
		ret = ks_pg_txn_live(s, func, err);
	}
	if (!ret)
		ret = ks_pg_exec(s, func, "SELECT keys", KS_PG_SQL_LIST, ints,
				 2, -1, NULL, 0, &res, err);
	if (locked_here)
		pthread_mutex_unlock(&s->lock);
	if (!ret)
		ret = ks_pg_list_rows(res, fn, arg);
	PQclear(res);
	return ret;
}

static int ks_pg_list(struct ks_store *store, int64_t exp_after,
		      int64_t exp_until, ks_list_fn fn, void *arg,
		      struct ks_err *err)
{
	return ks_pg_list_in(ks_pg_downcast(store), 1, exp_after, exp_until, fn,
			     arg, "ks_pg_list", err);
}

static int ks_pg_txn_list(struct ks_txn *txn, int64_t exp_after,
			  int64_t exp_until, ks_list_fn fn, void *arg,
			  struct ks_err *err)
{
	return ks_pg_list_in(ks_pg_txn(txn)->s, 0, exp_after, exp_until, fn,
			     arg, "ks_pg_txn_list", err);
}

static int ks_pg_life_list(struct ks_store *store, struct ks_txn *txn,
			   ks_life_fn fn, void *arg, struct ks_err *err)
{
	static const char func[] = "ks_pg_life_list";
	struct ks_pg_store *s = ks_pg_downcast(store);
	PGresult *res = NULL;
	int i, n, ret;

	if (!txn) {
		pthread_mutex_lock(&s->lock);
		ret = ks_pg_ensure(s, func, err);
	} else {
		ret = ks_pg_txn_live(s, func, err);
	}
	if (!ret)
		ret = ks_pg_exec(s, func, "SELECT key_lifecycle",
				 KS_PG_SQL_LIFE_LIST, NULL, 0, -1, NULL, 0,
				 &res, err);
	if (!txn)
		pthread_mutex_unlock(&s->lock);
	n = ret ? 0 : PQntuples(res);
	for (i = 0; !ret && i < n; i++) {
		struct ks_life life;

		life.kid = ks_pg_int(res, i, 0);
		life.created = ks_pg_int(res, i, 1);
		life.activate_at = ks_pg_int(res, i, 2);
		life.retire_at = ks_pg_int(res, i, 3);
		life.revoked_at = ks_pg_int(res, i, 4);
		ret = fn(&life, arg);
	}
	PQclear(res);
	return ret;
}

/*
 * The change counter, combined with the connection epoch: after a
 * reconnect the caller reloads everything (notifications may be lost).
 */
static int ks_pg_version(struct ks_store *store, uint64_t *out,
			 struct ks_err *err)
{
	static const char func[] = "ks_pg_version";
	struct ks_pg_store *s = ks_pg_downcast(store);
	PGresult *res = NULL;
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_exec(s, func, "SELECT change_counter",
				 KS_PG_SQL_COUNTER, NULL, 0, -1, NULL, 0, &res,
				 err);
	if (!ret && PQntuples(res) != 1)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "%s: change_counter of '%s' has %d rows", func,
				 s->shown, PQntuples(res));
	if (!ret) {
		long long n = (long long)ks_pg_int(res, 0, 0);

		if (n != s->seen_counter || s->epoch != s->seen_epoch) {
			s->seen_counter = n;
			s->seen_epoch = s->epoch;
			s->version++;
		}
		*out = s->version;
	}
	pthread_mutex_unlock(&s->lock);
	PQclear(res);
	return ret;
}

static int ks_pg_check(struct ks_store *store, struct ks_err *err)
{
	static const char func[] = "ks_pg_check";
	struct ks_pg_store *s = ks_pg_downcast(store);
	PGresult *res = NULL;
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_exec(s, func, "SELECT count", KS_PG_SQL_CHECK, NULL,
				 0, -1, NULL, 0, &res, err);
	pthread_mutex_unlock(&s->lock);
	if (!ret && (PQntuples(res) != 1 || ks_pg_int(res, 0, 0) != 0))
		ret = ks_err_set(err, KS_ECORRUPT,
				 "%s: '%s' has empty keys or no change "
				 "counter row",
				 func, s->shown);
	PQclear(res);
	return ret;
}

static int ks_pg_scrub(struct ks_store *store, struct ks_err *err)
{
	static const char func[] = "ks_pg_scrub";
	struct ks_pg_store *s = ks_pg_downcast(store);
	PGresult *res = NULL;
	int64_t others = 0;
	int ret, gone = 0;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	/*
	 * VACUUM FULL keeps the row versions that an open transaction of
	 * another session may still see: count those sessions first.
	 */
	if (!ret)
		ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func,
				"pg_stat_activity",
				"SELECT count(*) FROM pg_stat_activity "
				"WHERE datname = current_database() "
				"AND pid <> pg_backend_pid() "
				"AND backend_xmin IS NOT NULL",
				0, NULL, NULL, NULL, NULL, &res, &gone, err);
	if (!ret && PQntuples(res) == 1)
		others = ks_pg_int(res, 0, 0);
	else if (ret && gone)
		ks_pg_drop(s);
	PQclear(res);
	if (!ret)
		ret = ks_pg_exec(s, func, "VACUUM FULL", KS_PG_SQL_SCRUB, NULL,
				 0, -1, NULL, 0, NULL, err);
	if (!ret && others > 0)
		ret = ks_err_set(err, KS_EBUSY,
				 "%s: %lld other session(s) of the database "
				 "had a transaction open, whose view VACUUM "
				 "FULL had to keep",
				 func, (long long)others);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* Connect the listener and LISTEN, before deadline. */
static int ks_pg_listen(struct ks_pg_store *s, int64_t deadline)
{
	int64_t connect_by = ks_pg_now_ms() + KS_PG_CONNECT_MS;
	int ret, gone;

	ret = ks_pg_connect(s, &s->listener,
			    connect_by < deadline ? connect_by : deadline,
			    "ks_pg_wait", NULL);
	if (!ret)
		ret = ks_pg_run(s, s->listener, deadline, "ks_pg_wait",
				"LISTEN", s->listen_sql, 0, NULL, NULL, NULL,
				NULL, NULL, &gone, NULL);
	if (ret) {
		if (s->listener)
			PQfinish(s->listener);
		s->listener = NULL;
		s->listen_next_ms =
			ks_pg_backoff(&s->listen_backoff_ms, &s->listen_seed);
		return ret;
	}
	s->listen_backoff_ms = 0;
	return 0;
}

/* Whether a notification arrived; frees what libpq queued. */
static int ks_pg_notified(PGconn *conn)
{
	PGnotify *note;
	int any = 0;

	while ((note = PQnotifies(conn))) {
		any = 1;
		PQfreemem(note);
	}
	return any;
}

/*
 * Wait on the listener's socket; it has a connection and a mutex of its
 * own, so the other slots go on meanwhile.
 */
static int ks_pg_wait(struct ks_store *store, unsigned timeout_ms,
		      struct ks_err *err)
{
	struct ks_pg_store *s = ks_pg_downcast(store);
	int64_t deadline = ks_pg_now_ms() + timeout_ms;
	int announced = 0;

	(void)err;
	pthread_mutex_lock(&s->wait_lock);
	if (!s->listener && ks_pg_now_ms() >= s->listen_next_ms)
		ks_pg_listen(s, deadline);
	while (s->listener) {
		int p;

		if ((announced = ks_pg_notified(s->listener)))
			break;
		p = ks_pg_poll(PQsocket(s->listener), POLLIN, deadline);
		if (p == 0)
			break;
		if (p < 0 || !PQconsumeInput(s->listener) ||
		    PQstatus(s->listener) != CONNECTION_OK) {
			PQfinish(s->listener);
			s->listener = NULL;
			s->listen_next_ms = ks_pg_now_ms();
		}
	}
	if (!s->listener)
		ks_pg_sleep_until(deadline);
	pthread_mutex_unlock(&s->wait_lock);
	return announced;
}

/*
 * Accounts. Each call is one statement (one transaction of its own), or
 * BEGIN ... COMMIT around several, on the store's connection under its
 * lock, with text parameters (NULL: SQL NULL) and binary results. No
 * advisory lock and no change_counter: keys do not change here.
 */
#define KS_PG_TEXTOID 25
#define KS_PG_BOOLOID 16

/* v as the text of a bigint parameter, in buf. */
static const char *ks_pg_num(char buf[24], int64_t v)
{
	snprintf(buf, 24, "%lld", (long long)v);
	return buf;
}

/* Run sql (an index of s->sql) with the lock held and the link up. */
static int ks_pg_texec(struct ks_pg_store *s, const char *func,
		       const char *what, const char *sql, int n,
		       const Oid *types, const char *const *values,
		       PGresult **out, struct ks_err *err)
{
	int ret, gone;

	ret = ks_pg_run(s, s->conn, ks_pg_deadline(s), func, what, sql, n,
			types, values, NULL, NULL, out, &gone, err);
	if (gone)
		ks_pg_drop(s);
	return ret;
}

/* One statement as a call of its own: take the lock, connect, run. */
static int ks_pg_account(struct ks_pg_store *s, const char *func,
			 const char *what, int sql, int n, const Oid *types,
			 const char *const *values, PGresult **out,
			 struct ks_err *err)
{
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_texec(s, func, what, s->sql[sql], n, types, values,
				  out, err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/*
 * End a transaction of several statements begun with the lock held:
 * commit when ret is 0, roll back otherwise (also after a failed COMMIT).
 */
static int ks_pg_end(struct ks_pg_store *s, const char *func, int ret,
		     struct ks_err *err)
{
	if (!ret && !s->conn)
		ret = ks_err_set(err, KS_EUNAVAIL, "%s: store '%s' went away",
				 func, s->shown);
	if (!ret)
		ret = ks_pg_texec(s, func, "COMMIT", "COMMIT", 0, NULL, NULL,
				  NULL, err);
	if (ret && s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		ks_pg_texec(s, func, "ROLLBACK", "ROLLBACK", 0, NULL, NULL,
			    NULL, NULL);
	return ret;
}

/* A statement that must touch the user id: KS_ENOTFOUND when none. */
static int ks_pg_user_one(struct ks_store *store, const char *func,
			  const char *what, int sql, int64_t id,
			  const char *value, Oid type, struct ks_err *err)
{
	struct ks_pg_store *s = ks_pg_downcast(store);
	const Oid types[2] = {KS_PG_INT8OID, type};
	char num[24];
	const char *values[2] = {ks_pg_num(num, id), value};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_account(s, func, what, sql, 2, types, values, &res, err);
	if (!ret && strcmp(PQcmdTuples(res), "1") != 0)
		ret = ks_err_set(err, KS_ENOTFOUND, "%s: no user %lld in '%s'",
				 func, (long long)id, s->shown);
	PQclear(res);
	return ret;
}

static int ks_pg_user_add(struct ks_store *store, const char *username,
			  const char *password_hash, const char *email,
			  int64_t registered, int64_t *id_out,
			  struct ks_err *err)
{
	static const char func[] = "ks_pg_user_add";
	static const Oid types[4] = {KS_PG_TEXTOID, KS_PG_TEXTOID,
				     KS_PG_TEXTOID, KS_PG_INT8OID};
	struct ks_pg_store *s = ks_pg_downcast(store);
	char num[24];
	const char *values[4] = {username, password_hash, email,
				 ks_pg_num(num, registered)};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_account(s, func, "INSERT users", KS_PG_SQL_USER_ADD, 4,
			    types, values, &res, err);
	if (!ret && PQntuples(res) != 1)
		ret = ks_err_set(err, KS_EIO,
				 "%s: INSERT users on '%s' "
				 "returned no id",
				 func, s->shown);
	if (!ret && id_out)
		*id_out = ks_pg_int(res, 0, 0);
	PQclear(res);
	return ret;
}

/*
 * Insert u, id kept, and move users_id_seq past it; inside a transaction,
 * with the lock held.
 */
static int ks_pg_user_insert(struct ks_pg_store *s, const char *func,
			     const struct ks_user *u, struct ks_err *err)
{
	static const Oid types[7] = {
		KS_PG_INT8OID, KS_PG_TEXTOID, KS_PG_TEXTOID, KS_PG_TEXTOID,
		KS_PG_INT8OID, KS_PG_INT8OID, KS_PG_BOOLOID};
	char id[24], registered[24], login[24];
	const char *values[7] = {
		ks_pg_num(id, u->id),
		u->username,
		u->password_hash,
		u->email,
		ks_pg_num(registered, u->registered),
		u->last_login == KS_NEVER ? NULL
					  : ks_pg_num(login, u->last_login),
		u->locked ? "t" : "f",
	};
	int ret;

	ret = ks_pg_txn_live(s, func, err);
	if (!ret)
		ret = ks_pg_texec(s, func, "LOCK users",
				  s->sql[KS_PG_SQL_USER_LOCK], 0, NULL, NULL,
				  NULL, err);
	if (!ret)
		ret = ks_pg_texec(s, func, "INSERT users",
				  s->sql[KS_PG_SQL_USER_IMPORT], 7, types,
				  values, NULL, err);
	if (!ret)
		ret = ks_pg_texec(s, func, "setval users_id_seq",
				  s->sql[KS_PG_SQL_USER_SETVAL], 1, types,
				  values, NULL, err);
	return ret;
}

static int ks_pg_user_import(struct ks_store *store, const struct ks_user *u,
			     struct ks_err *err)
{
	static const char func[] = "ks_pg_user_import";
	struct ks_pg_store *s = ks_pg_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	if (!ret)
		ret = ks_pg_texec(s, func, "BEGIN", "BEGIN", 0, NULL, NULL,
				  NULL, err);
	if (!ret)
		ret = ks_pg_user_insert(s, func, u, err);
	if (s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		ret = ks_pg_end(s, func, ret, err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/*
 * A taken id, username or email fails the transaction (ks_write() then
 * rolls it back), as every failed statement of it does.
 */
static int ks_pg_txn_user_import(struct ks_txn *txn, const struct ks_user *u,
				 struct ks_err *err)
{
	return ks_pg_user_insert(ks_pg_txn(txn)->s, "ks_pg_txn_user_import", u,
				 err);
}

/*
 * The user of row of res into *u: strings borrowed from res (copy 0) or
 * malloc()ed (copy 1, then KS_ENOMEM is possible).
 */
static int ks_pg_user_row(const PGresult *res, int row, int copy,
			  struct ks_user *u)
{
	char *username = PQgetvalue(res, row, 1);
	char *email = PQgetisnull(res, row, 2) ? NULL : PQgetvalue(res, row, 2);
	char *hash = PQgetvalue(res, row, 3);

	u->id = ks_pg_int(res, row, 0);
	u->registered = ks_pg_int(res, row, 4);
	u->last_login =
		PQgetisnull(res, row, 5) ? KS_NEVER : ks_pg_int(res, row, 5);
	u->locked = ks_pg_int(res, row, 6) != 0;
	if (!copy) {
		u->username = username;
		u->email = email;
		u->password_hash = hash;
		return 0;
	}
	u->username = strdup(username);
	u->email = email ? strdup(email) : NULL;
	u->password_hash = strdup(hash);
	if (!u->username || (email && !u->email) || !u->password_hash)
		return KS_ENOMEM;
	return 0;
}

/* Wipe the password hashes a result holds before it is freed. */
static void ks_pg_clear_users(PGresult *res)
{
	int i, n = res ? PQntuples(res) : 0;

	for (i = 0; i < n; i++)
		explicit_bzero(PQgetvalue(res, i, 3),
			       (size_t)PQgetlength(res, i, 3));
	PQclear(res);
}

static int ks_pg_user_get(struct ks_store *store, const char *username,
			  struct ks_user *out, struct ks_err *err)
{
	static const char func[] = "ks_pg_user_get";
	static const Oid types[1] = {KS_PG_TEXTOID};
	struct ks_pg_store *s = ks_pg_downcast(store);
	const char *values[1] = {username};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_account(s, func, "SELECT users", KS_PG_SQL_USER_GET, 1,
			    types, values, &res, err);
	/* A name the database cannot hold (not UTF-8) names nobody. */
	if (ret == KS_EINVAL || (!ret && PQntuples(res) != 1))
		ret = ks_err_set(err, KS_ENOTFOUND, "%s: no such user in '%s'",
				 func, s->shown);
	if (!ret && ks_pg_user_row(res, 0, 1, out))
		ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	ks_pg_clear_users(res);
	if (ret)
		ks_user_release(out);
	return ret;
}

/*
 * Walk a table a page at a time, in id order, calling rows() for each
 * page: without the lock held (the callback may take its time), or inside
 * the write transaction (in_txn, the lock held by ks_pg_write()).
 */
static int ks_pg_pages(struct ks_pg_store *s, int in_txn, const char *func,
		       const char *what, int sql, int64_t after_id,
		       int (*rows)(PGresult *res, int64_t *last, void *ctx),
		       void *ctx, struct ks_err *err)
{
	static const Oid types[1] = {KS_PG_INT8OID};

	for (;;) {
		char num[24];
		const char *values[1] = {ks_pg_num(num, after_id)};
		PGresult *res = NULL;
		int ret, n;

		if (in_txn) {
			ret = ks_pg_txn_live(s, func, err);
			if (!ret)
				ret = ks_pg_texec(s, func, what, s->sql[sql], 1,
						  types, values, &res, err);
		} else {
			ret = ks_pg_account(s, func, what, sql, 1, types,
					    values, &res, err);
		}
		if (ret)
			return ret;
		n = PQntuples(res);
		ret = rows(res, &after_id, ctx);
		if (ret || n < KS_PG_PAGE)
			return ret;
	}
}

struct ks_pg_user_walk {
	ks_user_fn fn;
	void *arg;
};

static int ks_pg_user_rows(PGresult *res, int64_t *last, void *ctx)
{
	struct ks_pg_user_walk *w = ctx;
	int i, n = PQntuples(res), ret = 0;

	for (i = 0; !ret && i < n; i++) {
		struct ks_user u;

		ks_pg_user_row(res, i, 0, &u);
		*last = u.id;
		ret = w->fn(&u, w->arg);
	}
	ks_pg_clear_users(res);
	return ret;
}

static int ks_pg_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
			   struct ks_err *err)
{
	struct ks_pg_user_walk w = {fn, arg};

	return ks_pg_pages(ks_pg_downcast(store), 0, "ks_pg_user_list",
			   "SELECT users", KS_PG_SQL_USER_LIST, 0,
			   ks_pg_user_rows, &w, err);
}

static int ks_pg_txn_user_list(struct ks_txn *txn, ks_user_fn fn, void *arg,
			       struct ks_err *err)
{
	struct ks_pg_user_walk w = {fn, arg};

	return ks_pg_pages(ks_pg_txn(txn)->s, 1, "ks_pg_txn_user_list",
			   "SELECT users", KS_PG_SQL_USER_LIST, 0,
			   ks_pg_user_rows, &w, err);
}

static int ks_pg_user_set_hash(struct ks_store *store, int64_t id,
			       const char *hash, struct ks_err *err)
{
	return ks_pg_user_one(store, "ks_pg_user_set_hash", "UPDATE users",
			      KS_PG_SQL_USER_SET_HASH, id, hash, KS_PG_TEXTOID,
			      err);
}

static int ks_pg_user_set_locked(struct ks_store *store, int64_t id, int locked,
				 struct ks_err *err)
{
	return ks_pg_user_one(store, "ks_pg_user_set_locked", "UPDATE users",
			      KS_PG_SQL_USER_SET_LOCKED, id, locked ? "t" : "f",
			      KS_PG_BOOLOID, err);
}

static int ks_pg_user_set_login(struct ks_store *store, int64_t id,
				int64_t when, struct ks_err *err)
{
	char num[24];

	return ks_pg_user_one(store, "ks_pg_user_set_login", "UPDATE users",
			      KS_PG_SQL_USER_SET_LOGIN, id,
			      when == KS_NEVER ? NULL : ks_pg_num(num, when),
			      KS_PG_INT8OID, err);
}

static int ks_pg_user_delete(struct ks_store *store, int64_t id,
			     struct ks_err *err)
{
	struct ks_pg_store *s = ks_pg_downcast(store);
	static const Oid types[1] = {KS_PG_INT8OID};
	char num[24];
	const char *values[1] = {ks_pg_num(num, id)};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_account(s, "ks_pg_user_delete", "DELETE users",
			    KS_PG_SQL_USER_DELETE, 1, types, values, &res, err);
	if (!ret && strcmp(PQcmdTuples(res), "1") != 0)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "ks_pg_user_delete: no user %lld in '%s'",
				 (long long)id, s->shown);
	PQclear(res);
	return ret;
}

/*
 * The INSERT of n (1..KS_PG_LOG_ROWS) auth-log entries, ids assigned in
 * their order (or kept: with_ids), its parameters in values and types,
 * their numbers' text in nums (3 per entry).
 */
static char *ks_pg_log_insert(const struct ks_pg_store *s, int with_ids,
			      const struct ks_auth_log *e, size_t n,
			      const char **values, Oid *types, char (*nums)[24])
{
	const char *head = s->sql[with_ids ? KS_PG_SQL_LOG_IMPORT_HEAD
					   : KS_PG_SQL_LOG_HEAD];
	const char *tail = s->sql[with_ids ? KS_PG_SQL_LOG_IMPORT_TAIL
					   : KS_PG_SQL_LOG_TAIL];
	size_t per = with_ids ? 5 : 4;
	size_t cap = strlen(head) + strlen(tail) + n * 80 + 1, len, i;
	char *sql = malloc(cap);

	if (!sql)
		return NULL;
	len = (size_t)snprintf(sql, cap, "%s", head);
	for (i = 0; i < n; i++) {
		const char **v = values + i * per;
		Oid *t = types + i * per;
		size_t p = i * per;

		if (with_ids) {
			len += (size_t)snprintf(
				sql + len, cap - len,
				"%s($%zu, $%zu, $%zu, $%zu, $%zu)",
				i ? ", " : "", p + 1, p + 2, p + 3, p + 4,
				p + 5);
			*v++ = ks_pg_num(nums[3 * i + 2], e[i].id);
			*t++ = KS_PG_INT8OID;
		} else {
			len += (size_t)snprintf(
				sql + len, cap - len,
				"%s($%zu, $%zu, $%zu, $%zu, %zu)",
				i ? ", " : "", p + 1, p + 2, p + 3, p + 4, i);
		}
		v[0] = e[i].ip;
		v[1] = ks_pg_num(nums[3 * i], e[i].when);
		v[2] = e[i].user_id > 0
			       ? ks_pg_num(nums[3 * i + 1], e[i].user_id)
			       : NULL;
		v[3] = e[i].success ? "t" : "f";
		t[0] = KS_PG_TEXTOID;
		t[1] = KS_PG_INT8OID;
		t[2] = KS_PG_INT8OID;
		t[3] = KS_PG_BOOLOID;
	}
	snprintf(sql + len, cap - len, "%s", tail);
	return sql;
}

/*
 * Write n entries, KS_PG_LOG_ROWS per INSERT, with the lock held; the
 * caller wraps more than one INSERT in a transaction.
 */
static int ks_pg_log_write(struct ks_pg_store *s, const char *func,
			   int with_ids, const struct ks_auth_log *entries,
			   size_t n, struct ks_err *err)
{
	size_t rows = n < KS_PG_LOG_ROWS ? n : KS_PG_LOG_ROWS, done;
	const char **values = calloc(rows * 5, sizeof(*values));
	Oid *types = calloc(rows * 5, sizeof(*types));
	char(*nums)[24] = calloc(rows * 3, sizeof(*nums));
	int ret = 0;

	if (!values || !types || !nums)
		ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	for (done = 0; !ret && done < n; done += rows) {
		size_t k = n - done < rows ? n - done : rows;
		char *sql = ks_pg_log_insert(s, with_ids, entries + done, k,
					     values, types, nums);

		if (!sql)
			ret = ks_err_set(err, KS_ENOMEM, "%s: out of memory",
					 func);
		else if (!s->conn)
			ret = ks_err_set(err, KS_EUNAVAIL,
					 "%s: store '%s' went away", func,
					 s->shown);
		else
			ret = ks_pg_texec(s, func, "INSERT auth_logs", sql,
					  (int)(k * (with_ids ? 5 : 4)), types,
					  values, NULL, err);
		free(sql);
	}
	free(values);
	free(types);
	free(nums);
	return ret;
}

static int ks_pg_auth_log_add(struct ks_store *store,
			      const struct ks_auth_log *entries, size_t n,
			      struct ks_err *err)
{
	static const char func[] = "ks_pg_auth_log_add";
	struct ks_pg_store *s = ks_pg_downcast(store);
	int ret, several = n > KS_PG_LOG_ROWS;

	pthread_mutex_lock(&s->lock);
	ret = ks_pg_ensure(s, func, err);
	/* One statement is a transaction; more need one around them. */
	if (!ret && several)
		ret = ks_pg_texec(s, func, "BEGIN", "BEGIN", 0, NULL, NULL,
				  NULL, err);
	if (!ret)
		ret = ks_pg_log_write(s, func, 0, entries, n, err);
	if (several && s->conn && PQtransactionStatus(s->conn) != PQTRANS_IDLE)
		ret = ks_pg_end(s, func, ret, err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/*
 * Entries with their ids, inside the write transaction: the table is
 * locked against ks_pg_auth_log_add() while auth_logs_id_seq moves past
 * them. A taken id fails the transaction.
 */
static int ks_pg_txn_auth_log_import(struct ks_txn *txn,
				     const struct ks_auth_log *entries,
				     size_t n, struct ks_err *err)
{
	static const char func[] = "ks_pg_txn_auth_log_import";
	static const Oid types[1] = {KS_PG_INT8OID};
	struct ks_pg_store *s = ks_pg_txn(txn)->s;
	int64_t top = 0;
	char num[24];
	const char *values[1] = {num};
	size_t i;
	int ret;

	for (i = 0; i < n; i++)
		if (entries[i].id > top)
			top = entries[i].id;
	ks_pg_num(num, top);
	ret = ks_pg_txn_live(s, func, err);
	if (!ret)
		ret = ks_pg_texec(s, func, "LOCK auth_logs",
				  s->sql[KS_PG_SQL_LOG_LOCK], 0, NULL, NULL,
				  NULL, err);
	if (!ret)
		ret = ks_pg_log_write(s, func, 1, entries, n, err);
	if (!ret && s->conn)
		ret = ks_pg_texec(s, func, "setval auth_logs_id_seq",
				  s->sql[KS_PG_SQL_LOG_SETVAL], 1, types,
				  values, NULL, err);
	return ret;
}

struct ks_pg_log_walk {
	ks_auth_log_fn fn;
	void *arg;
};

static int ks_pg_log_rows(PGresult *res, int64_t *last, void *ctx)
{
	struct ks_pg_log_walk *w = ctx;
	int i, n = PQntuples(res), ret = 0;

	for (i = 0; !ret && i < n; i++) {
		struct ks_auth_log e;

		e.id = ks_pg_int(res, i, 0);
		snprintf(e.ip, sizeof(e.ip), "%s", PQgetvalue(res, i, 1));
		e.when = ks_pg_int(res, i, 2);
		e.user_id = PQgetisnull(res, i, 3) ? 0 : ks_pg_int(res, i, 3);
		e.success = ks_pg_int(res, i, 4) != 0;
		*last = e.id;
		ret = w->fn(&e, w->arg);
	}
	PQclear(res);
	return ret;
}

static int ks_pg_auth_log_list(struct ks_store *store, int64_t after_id,
			       ks_auth_log_fn fn, void *arg, struct ks_err *err)
{
	struct ks_pg_log_walk w = {fn, arg};

	return ks_pg_pages(ks_pg_downcast(store), 0, "ks_pg_auth_log_list",
			   "SELECT auth_logs", KS_PG_SQL_LOG_LIST, after_id,
			   ks_pg_log_rows, &w, err);
}

static int ks_pg_txn_auth_log_list(struct ks_txn *txn, int64_t after_id,
				   ks_auth_log_fn fn, void *arg,
				   struct ks_err *err)
{
	struct ks_pg_log_walk w = {fn, arg};

	return ks_pg_pages(ks_pg_txn(txn)->s, 1, "ks_pg_txn_auth_log_list",
			   "SELECT auth_logs", KS_PG_SQL_LOG_LIST, after_id,
			   ks_pg_log_rows, &w, err);
}

static int ks_pg_auth_log_purge(struct ks_store *store, int64_t before,
				size_t *count_out, struct ks_err *err)
{
	static const Oid types[1] = {KS_PG_INT8OID};
	struct ks_pg_store *s = ks_pg_downcast(store);
	char num[24];
	const char *values[1] = {ks_pg_num(num, before)};
	PGresult *res = NULL;
	int ret;

	ret = ks_pg_account(s, "ks_pg_auth_log_purge", "DELETE auth_logs",
			    KS_PG_SQL_LOG_PURGE, 1, types, values, &res, err);
	if (!ret && count_out)
		*count_out = (size_t)strtoull(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	return ret;
}

const struct ks_backend ks_backend_postgres = {
	.name = "postgres",
	.default_path = "",
	.open = ks_pg_open,
	.close = ks_pg_close,
	.put = ks_pg_put,
	.import = ks_pg_import,
	.get = ks_pg_get,
	.list = ks_pg_list,
	.version = ks_pg_version,
	.check = ks_pg_check,
	.wait = ks_pg_wait,
	.describe = ks_pg_describe,
	.life_list = ks_pg_life_list,
	.write = ks_pg_write,
	.txn_next_kid = ks_pg_txn_next_kid,
	.txn_put = ks_pg_txn_put,
	.txn_import = ks_pg_txn_import,
	.txn_update = ks_pg_txn_update,
	.txn_delete = ks_pg_txn_delete,
	.txn_list = ks_pg_txn_list,
	.txn_life_put = ks_pg_txn_life_put,
	.scrub = ks_pg_scrub,
	.user_add = ks_pg_user_add,
	.user_import = ks_pg_user_import,
	.user_get = ks_pg_user_get,
	.user_list = ks_pg_user_list,
	.user_set_hash = ks_pg_user_set_hash,
	.user_set_locked = ks_pg_user_set_locked,
	.user_set_login = ks_pg_user_set_login,
	.user_delete = ks_pg_user_delete,
	.auth_log_add = ks_pg_auth_log_add,
	.auth_log_list = ks_pg_auth_log_list,
	.auth_log_purge = ks_pg_auth_log_purge,
	.txn_user_list = ks_pg_txn_user_list,
	.txn_user_import = ks_pg_txn_user_import,
	.txn_auth_log_list = ks_pg_txn_auth_log_list,
	.txn_auth_log_import = ks_pg_txn_auth_log_import,
};
