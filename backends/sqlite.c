/*
 * The SQLite key store: one file, the table keys(kid, key, exp) that the
 * assignment's tools and graders expect, in WAL mode. Accounts live in the
 * assignment's users and auth_logs tables, exactly as it defines them;
 * what they cannot hold (a user's lock, an attempt's outcome) lives in
 * user_locks and auth_log_results.
 */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ks_backend.h"

extern const struct ks_backend ks_backend_sqlite;

static const char ks_sqlite_sql_schema[] =
	"CREATE TABLE IF NOT EXISTS keys("
	"kid INTEGER PRIMARY KEY AUTOINCREMENT, "
	"key BLOB NOT NULL, "
	"exp INTEGER NOT NULL)";
static const char ks_sqlite_sql_columns[] =
	"SELECT name, type, \"notnull\", pk FROM pragma_table_info('keys') "
	"ORDER BY cid";
static const char ks_sqlite_sql_put[] =
	"INSERT INTO keys (key, exp) VALUES (?, ?)";
static const char ks_sqlite_sql_import[] =
	"INSERT INTO keys (kid, key, exp) VALUES (?, ?, ?)";
static const char ks_sqlite_sql_get[] =
	"SELECT key, exp FROM keys WHERE kid = ?";
static const char ks_sqlite_sql_list[] =
	"SELECT kid, key, exp FROM keys "
	"WHERE (?1 IS NULL OR exp > ?1) AND exp <= ?2 ORDER BY kid";
static const char ks_sqlite_sql_data_version[] = "PRAGMA data_version";
/* Lifecycle entries live in a table of their own; revoked_at NULL: never. */
static const char ks_sqlite_sql_life_schema[] =
	"CREATE TABLE IF NOT EXISTS key_lifecycle("
	"kid INTEGER PRIMARY KEY, "
	"created INTEGER NOT NULL, "
	"activate_at INTEGER NOT NULL, "
	"retire_at INTEGER NOT NULL, "
	"revoked_at INTEGER)";
/* The assignment's account tables, exactly; then tables of our own. */
static const char ks_sqlite_sql_users_schema[] =
	"CREATE TABLE IF NOT EXISTS users("
	"id INTEGER PRIMARY KEY AUTOINCREMENT, "
	"username TEXT NOT NULL UNIQUE, "
	"password_hash TEXT NOT NULL, "
	"email TEXT UNIQUE, "
	"date_registered TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
	"last_login TIMESTAMP)";
static const char ks_sqlite_sql_auth_logs_schema[] =
	"CREATE TABLE IF NOT EXISTS auth_logs("
	"id INTEGER PRIMARY KEY AUTOINCREMENT, "
	"request_ip TEXT NOT NULL, "
	"request_timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
	"user_id INTEGER, "
	"FOREIGN KEY(user_id) REFERENCES users(id))";
/* A row: the user is locked. */
static const char ks_sqlite_sql_locks_schema[] =
	"CREATE TABLE IF NOT EXISTS user_locks("
	"user_id INTEGER PRIMARY KEY REFERENCES users(id))";
/* The outcome of an attempt; an attempt without a row counts as failed. */
static const char ks_sqlite_sql_results_schema[] =
	"CREATE TABLE IF NOT EXISTS auth_log_results("
	"log_id INTEGER PRIMARY KEY REFERENCES auth_logs(id), "
	"success INTEGER NOT NULL)";
/* How many of the tables added since the first version exist. */
static const char ks_sqlite_sql_has_tables[] =
	"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
	"('key_lifecycle', 'users', 'auth_logs', 'user_locks', "
	"'auth_log_results')";
static const char ks_sqlite_sql_column_names[] =
	"SELECT name FROM pragma_table_info(?1) ORDER BY cid";
static const char ks_sqlite_sql_life_list[] =
	"SELECT kid, created, activate_at, retire_at, revoked_at "
	"FROM key_lifecycle ORDER BY kid";
static const char ks_sqlite_sql_life_put[] =
	"INSERT OR REPLACE INTO key_lifecycle "
	"(kid, created, activate_at, retire_at, revoked_at) "
	"VALUES (?, ?, ?, ?, ?)";
static const char ks_sqlite_sql_life_delete[] =
	"DELETE FROM key_lifecycle WHERE kid = ?";
/* What AUTOINCREMENT assigns next: above the largest kid ever used. */
static const char ks_sqlite_sql_next_kid[] =
	"SELECT max(coalesce((SELECT seq FROM sqlite_sequence "
	"WHERE name = 'keys'), 0), coalesce((SELECT max(kid) FROM keys), 0)) "
	"+ 1";
static const char ks_sqlite_sql_update[] =
	"UPDATE keys SET key = ?, exp = ? WHERE kid = ?";
static const char ks_sqlite_sql_delete[] = "DELETE FROM keys WHERE kid = ?";

/*
 * A time of the account tables in seconds since the epoch, whatever form a
 * tool stored it in: text as CURRENT_TIMESTAMP writes it (or any form
 * SQLite's date functions read), or a number of seconds. NULL when absent
 * or unreadable.
 */
#define KS_SQLITE_SECS(col)                                          \
	"(CASE typeof(" col ") WHEN 'integer' THEN " col             \
	" WHEN 'real' THEN CAST(" col " AS INTEGER)"                 \
	" WHEN 'text' THEN CAST(strftime('%s', " col ") AS INTEGER)" \
	" END)"
#define KS_SQLITE_USER_SELECT                                                  \
	"SELECT u.id, u.username, u.email, u.password_hash, " KS_SQLITE_SECS(  \
		"u.date_registered") ", " KS_SQLITE_SECS("u.last_login") ", "  \
									 "l."  \
									 "use" \
									 "r_"  \
									 "id " \
									 "IS " \
									 "NOT" \
									 " NU" \
									 "LL " \
									 "FRO" \
									 "M "  \
									 "use" \
									 "rs " \
									 "u "  \
									 "LEF" \
									 "T "  \
									 "JOI" \
									 "N "  \
									 "use" \
									 "r_"  \
									 "loc" \
									 "ks " \
									 "l "  \
									 "ON " \
									 "l."  \
									 "use" \
									 "r_"  \
									 "id " \
									 "= "  \
									 "u."  \
									 "id "

/* The account statements, prepared at open: ks_sqlite_acct_sql[i]. */
enum ks_sqlite_acct {
	KS_SQLITE_USER_ADD,
	KS_SQLITE_USER_IMPORT,
	KS_SQLITE_USER_GET,
	KS_SQLITE_USER_LIST,
	KS_SQLITE_USER_BY_ID,
	KS_SQLITE_USER_BY_NAME,
	KS_SQLITE_USER_BY_EMAIL,
	KS_SQLITE_USER_SET_HASH,
	KS_SQLITE_USER_SET_LOGIN,
	KS_SQLITE_USER_LOCK,
	KS_SQLITE_USER_UNLOCK,
	KS_SQLITE_USER_DELETE,
	KS_SQLITE_LOG_UNLINK,
	KS_SQLITE_LOG_ADD,
	KS_SQLITE_LOG_IMPORT,
	KS_SQLITE_LOG_RESULT,
	KS_SQLITE_LOG_LIST,
	KS_SQLITE_LOG_PURGE_RESULTS,
	KS_SQLITE_LOG_PURGE,
	KS_SQLITE_ACCT_N
};

static const char *const ks_sqlite_acct_sql[KS_SQLITE_ACCT_N] = {
	[KS_SQLITE_USER_ADD] = "INSERT INTO users "
			       "(username, password_hash, email, "
			       "date_registered) VALUES (?1, ?2, ?3, ?4)",
	[KS_SQLITE_USER_IMPORT] = "INSERT INTO users "
				  "(id, username, password_hash, email, "
				  "date_registered, last_login) "
				  "VALUES (?5, ?1, ?2, ?3, ?4, ?6)",
	[KS_SQLITE_USER_GET] = KS_SQLITE_USER_SELECT "WHERE u.username = ?1",
	[KS_SQLITE_USER_LIST] = KS_SQLITE_USER_SELECT "ORDER BY u.id",
	[KS_SQLITE_USER_BY_ID] = "SELECT id FROM users WHERE id = ?1",
	[KS_SQLITE_USER_BY_NAME] = "SELECT id FROM users WHERE username = ?1",
	[KS_SQLITE_USER_BY_EMAIL] = "SELECT id FROM users WHERE email = ?1",
	[KS_SQLITE_USER_SET_HASH] = "UPDATE users SET password_hash = ?1 "
				    "WHERE id = ?2",
	[KS_SQLITE_USER_SET_LOGIN] = "UPDATE users SET last_login = ?1 "
				     "WHERE id = ?2",
	[KS_SQLITE_USER_LOCK] = "INSERT OR IGNORE INTO user_locks (user_id) "
				"VALUES (?1)",
	[KS_SQLITE_USER_UNLOCK] = "DELETE FROM user_locks WHERE user_id = ?1",
	[KS_SQLITE_USER_DELETE] = "DELETE FROM users WHERE id = ?1",
	[KS_SQLITE_LOG_UNLINK] = "UPDATE auth_logs SET user_id = NULL "
				 "WHERE user_id = ?1",
	/* A user id that names no user (deleted meanwhile) becomes NULL. */
	[KS_SQLITE_LOG_ADD] = "INSERT INTO auth_logs "
			      "(request_ip, request_timestamp, user_id) "
			      "VALUES (?1, ?2, "
			      "(SELECT id FROM users WHERE id = ?3))",
	[KS_SQLITE_LOG_IMPORT] = "INSERT INTO auth_logs "
				 "(id, request_ip, request_timestamp, user_id) "
				 "VALUES (?4, ?1, ?2, "
				 "(SELECT id FROM users WHERE id = ?3))",
	[KS_SQLITE_LOG_RESULT] = "INSERT OR REPLACE INTO auth_log_results "
				 "(log_id, success) VALUES (?1, ?2)",
	[KS_SQLITE_LOG_LIST] = "SELECT a.id, a.request_ip, " KS_SQLITE_SECS(
		"a.request_timestamp") ", a.user_id, "
				       "coalesce(r.success, 0) FROM auth_logs "
				       "a "
				       "LEFT JOIN auth_log_results r ON "
				       "r.log_id = a.id "
				       "WHERE a.id > ?1 ORDER BY a.id",
	[KS_SQLITE_LOG_PURGE_RESULTS] =
		"DELETE FROM auth_log_results WHERE log_id IN "
		"(SELECT id FROM auth_logs WHERE " KS_SQLITE_SECS(
			"request_timestamp") " < ?1)",
	[KS_SQLITE_LOG_PURGE] = "DELETE FROM auth_logs WHERE " KS_SQLITE_SECS(
		"request_timestamp") " < ?1",
};

struct ks_sqlite_store {
	struct ks_store base;
	sqlite3 *db;
	char *path;
	sqlite3_stmt *put;
	sqlite3_stmt *import;
	sqlite3_stmt *get;
	sqlite3_stmt *list;
	sqlite3_stmt *data_version;
	sqlite3_stmt *life_list;
	sqlite3_stmt *life_put;
	sqlite3_stmt *life_delete;
	sqlite3_stmt *next_kid;
	sqlite3_stmt *update;
	sqlite3_stmt *del;
	sqlite3_stmt *acct[KS_SQLITE_ACCT_N];
	/* What ks_sqlite_version() saw last, and the counter it hands out. */
	sqlite3_int64 seen_data_version;
	sqlite3_int64 seen_changes;
	uint64_t version;
	pthread_mutex_t lock;
	int lock_ready;
};

static struct ks_sqlite_store *ks_sqlite_downcast(struct ks_store *store)
{
	if (store->be != &ks_backend_sqlite)
		KS_BUG("store of backend '%s' passed to the sqlite backend",
		       store->be && store->be->name ? store->be->name : "?");
	return (struct ks_sqlite_store *)store;
}

static int ks_sqlite_code(int rc, int sys_errno)
{
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return KS_EBUSY;
	case SQLITE_FULL:
		return KS_ENOSPC;
	case SQLITE_READONLY:
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return KS_EACCES;
	case SQLITE_CANTOPEN:
		if (sys_errno == EACCES || sys_errno == EPERM ||
		    sys_errno == EROFS)
			return KS_EACCES;
		return KS_EIO;
	case SQLITE_NOTADB:
	case SQLITE_CORRUPT:
		return KS_ECORRUPT;
	case SQLITE_NOMEM:
		return KS_ENOMEM;
	default:
		return KS_EIO;
	}
}

/*
 * Translate rc at the edge and describe it: function, failing call, the
 * store's path, SQLite's message and its (extended) code. Call it before
 * the statement is reset, which may change the connection's message.
 */
static int ks_sqlite_error(struct ks_err *err, sqlite3 *db, int rc,
			   const char *func, const char *call, const char *path)
{
	int ext = db ? sqlite3_extended_errcode(db) : rc;
	int code;

	if ((ext & 0xff) != (rc & 0xff))
		ext = rc;
	code = ks_sqlite_code(ext, db ? sqlite3_system_errno(db) : 0);
	return ks_err_set(err, code, "%s: %s '%s' failed: %s (%d)", func, call,
			  path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
			  ext);
}

static int ks_sqlite_errno(struct ks_err *err, int e, const char *call,
			   const char *path)
{
	char text[128];
	int code = KS_EIO;

	if (strerror_r(e, text, sizeof(text)) != 0)
		snprintf(text, sizeof(text), "unknown error");
	if (e == EACCES || e == EPERM || e == EROFS)
		code = KS_EACCES;
	else if (e == ENOSPC || e == EDQUOT)
		code = KS_ENOSPC;
	else if (e == ENOMEM)
		code = KS_ENOMEM;
	return ks_err_set(err, code, "ks_sqlite_open: %s '%s' failed: %s (%d)",
			  call, path, text, e);
}

/*
 * Create a missing store file ourselves, mode 0600, so that SQLite never
 * creates it with its default mode; its -wal and -shm files then take the
 * same mode. An existing file is left exactly as it is.
 */
static int ks_sqlite_create_file(const char *path, struct ks_err *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

	if (fd < 0)
		return errno == EEXIST
			       ? 0
			       : ks_sqlite_errno(err, errno, "open", path);
	if (close(fd) != 0)
		return ks_sqlite_errno(err, errno, "close", path);
	return 0;
}

/*
 * Run one statement to completion; func names the caller in errors. When
 * row is not NULL it receives the first column of the first row as text.
 */
static int ks_sqlite_exec_in(struct ks_sqlite_store *s, const char *func,
			     const char *sql, const char *what, char *row,
			     size_t row_size, struct ks_err *err)
{
	sqlite3_stmt *stmt = NULL;
	int rc, ret = 0;

	if (row)
		row[0] = '\0';
	rc = sqlite3_prepare_v2(s->db, sql, -1, &stmt, NULL);
	while (rc == SQLITE_OK || rc == SQLITE_ROW) {
		rc = sqlite3_step(stmt);
		if (rc == SQLITE_ROW && row && !row[0]) {
			const unsigned char *text =
				sqlite3_column_text(stmt, 0);

			snprintf(row, row_size, "%s",
				 text ? (const char *)text : "");
		}
	}
	if (rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, func, what, s->path);
	sqlite3_finalize(stmt);
	return ret;
}

/* ks_sqlite_exec_in() for the statements of open(). */
static int ks_sqlite_exec(struct ks_sqlite_store *s, const char *sql,
			  const char *what, char *row, size_t row_size,
			  struct ks_err *err)
{
	return ks_sqlite_exec_in(s, "ks_sqlite_open", sql, what, row, row_size,
				 err);
}

/*
 * The keys table must have exactly our three columns: a table another
 * program made with other columns is not a store of ours. With found not
 * NULL, a database without the table passes and *found says which it was.
 */
static int ks_sqlite_check_columns(struct ks_sqlite_store *s, int *found,
				   struct ks_err *err)
{
	static const struct {
		const char *name;
		const char *type;
		int notnull;
		int pk;
		const char *text;
	} want[] = {
		{"kid", "INTEGER", -1, 1, "kid INTEGER PRIMARY KEY"},
		{"key", "BLOB", 1, 0, "key BLOB NOT NULL"},
		{"exp", "INTEGER", 1, 0, "exp INTEGER NOT NULL"},
	};
	const size_t n_want = sizeof(want) / sizeof(want[0]);
	sqlite3_stmt *stmt = NULL;
	size_t n = 0;
	int rc, ret = 0;

	rc = sqlite3_prepare_v2(s->db, ks_sqlite_sql_columns, -1, &stmt, NULL);
	while (rc == SQLITE_OK || rc == SQLITE_ROW) {
		const char *name, *type;

		rc = sqlite3_step(stmt);
		if (rc != SQLITE_ROW)
			break;
		name = (const char *)sqlite3_column_text(stmt, 0);
		type = (const char *)sqlite3_column_text(stmt, 1);
		if (n < n_want && name && type &&
		    sqlite3_stricmp(name, want[n].name) == 0 &&
		    sqlite3_stricmp(type, want[n].type) == 0 &&
		    (want[n].notnull < 0 ||
		     sqlite3_column_int(stmt, 2) == want[n].notnull) &&
		    sqlite3_column_int(stmt, 3) == want[n].pk) {
			n++;
			continue;
		}
		if (n < n_want)
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_sqlite_open: table 'keys' in '%s' "
					 "has column %zu '%s %s', want '%s'",
					 s->path, n + 1, name ? name : "",
					 type ? type : "", want[n].text);
		else
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_sqlite_open: table 'keys' in '%s' "
					 "has an extra column %zu '%s %s'",
					 s->path, n + 1, name ? name : "",
					 type ? type : "");
		break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_open",
				      "pragma_table_info", s->path);
	else if (!ret && n != n_want && !(n == 0 && found))
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_sqlite_open: table 'keys' in '%s' has %zu "
				 "columns, want 3 (kid, key, exp)",
				 s->path, n);
	if (found)
		*found = n != 0;
	sqlite3_finalize(stmt);
	return ret;
}

/*
 * A table of the assignment's that exists must have exactly its columns,
 * by name and in order (the types are SQLite's business: our statements
 * work with any). A missing table passes.
 */
static int ks_sqlite_check_names(struct ks_sqlite_store *s, const char *table,
				 const char *const *want, size_t n_want,
				 struct ks_err *err)
{
	sqlite3_stmt *stmt = NULL;
	size_t n = 0;
	int rc, ret = 0;

	rc = sqlite3_prepare_v2(s->db, ks_sqlite_sql_column_names, -1, &stmt,
				NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(stmt, 1, table, -1, SQLITE_STATIC);
	while (rc == SQLITE_OK || rc == SQLITE_ROW) {
		const char *name;

		rc = sqlite3_step(stmt);
		if (rc != SQLITE_ROW)
			break;
		name = (const char *)sqlite3_column_text(stmt, 0);
		if (n < n_want && name && sqlite3_stricmp(name, want[n]) == 0) {
			n++;
			continue;
		}
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_sqlite_open: table '%s' in '%s' has "
				 "column %zu '%s', want '%s'",
				 table, s->path, n + 1, name ? name : "",
				 n < n_want ? want[n] : "(none)");
		break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_open",
				      "pragma_table_info", s->path);
	else if (!ret && n && n != n_want)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_sqlite_open: table '%s' in '%s' has %zu "
				 "columns, want %zu",
				 table, s->path, n, n_want);
	sqlite3_finalize(stmt);
	return ret;
}

static int ks_sqlite_check_account_tables(struct ks_sqlite_store *s,
					  struct ks_err *err)
{
	static const char *const users[] = {
		"id",	 "username",	    "password_hash",
		"email", "date_registered", "last_login",
	};
	static const char *const auth_logs[] = {
		"id",
		"request_ip",
		"request_timestamp",
		"user_id",
	};
	int ret = ks_sqlite_check_names(s, "users", users,
					sizeof(users) / sizeof(users[0]), err);

	if (!ret)
		ret = ks_sqlite_check_names(
			s, "auth_logs", auth_logs,
			sizeof(auth_logs) / sizeof(auth_logs[0]), err);
	return ret;
}

static int ks_sqlite_schema(struct ks_sqlite_store *s, struct ks_err *err)
{
	int ret;

	ret = ks_sqlite_exec(s, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE", NULL, 0,
			     err);
	if (ret)
		return ret;
	ret = ks_sqlite_exec(s, ks_sqlite_sql_schema, "CREATE TABLE keys", NULL,
			     0, err);
	if (!ret)
		ret = ks_sqlite_check_columns(s, NULL, err);
	if (!ret)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_life_schema,
				     "CREATE TABLE key_lifecycle", NULL, 0,
				     err);
	if (!ret)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_users_schema,
				     "CREATE TABLE users", NULL, 0, err);
	if (!ret)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_auth_logs_schema,
				     "CREATE TABLE auth_logs", NULL, 0, err);
	if (!ret)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_locks_schema,
				     "CREATE TABLE user_locks", NULL, 0, err);
	if (!ret)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_results_schema,
				     "CREATE TABLE auth_log_results", NULL, 0,
				     err);
	if (!ret)
		ret = ks_sqlite_check_account_tables(s, err);
	if (!ret)
		ret = ks_sqlite_exec(s, "COMMIT", "COMMIT", NULL, 0, err);
	if (ret)
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	return ret;
}

static int ks_sqlite_prepare(struct ks_sqlite_store *s, const char *sql,
			     sqlite3_stmt **out, struct ks_err *err)
{
	int rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
				    out, NULL);

	if (rc != SQLITE_OK)
		return ks_sqlite_error(err, s->db, rc, "ks_sqlite_open",
				       "sqlite3_prepare_v3", s->path);
	return 0;
}

/* Read PRAGMA data_version. Called with the lock held. */
static int ks_sqlite_data_version(struct ks_sqlite_store *s, sqlite3_int64 *out,
				  const char *func, struct ks_err *err)
{
	int rc = sqlite3_step(s->data_version);
	int ret = 0;

	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(s->data_version, 0);
	else
		ret = ks_sqlite_error(err, s->db, rc, func,
				      "PRAGMA data_version", s->path);
	sqlite3_reset(s->data_version);
	return ret;
}

static void ks_sqlite_free(struct ks_sqlite_store *s)
{
	size_t i;

	sqlite3_finalize(s->put);
	sqlite3_finalize(s->import);
	sqlite3_finalize(s->get);
	sqlite3_finalize(s->list);
	sqlite3_finalize(s->data_version);
	sqlite3_finalize(s->life_list);
	sqlite3_finalize(s->life_put);
	sqlite3_finalize(s->life_delete);
	sqlite3_finalize(s->next_kid);
	sqlite3_finalize(s->update);
	sqlite3_finalize(s->del);
	for (i = 0; i < KS_SQLITE_ACCT_N; i++)
		sqlite3_finalize(s->acct[i]);
	sqlite3_close_v2(s->db);
	if (s->lock_ready)
		pthread_mutex_destroy(&s->lock);
	free(s->path);
	free(s);
}

/*
 * SQLite reads a name starting with "file:" as a URI and ":memory:" as no
 * file at all; "./" keeps a relative name the plain file we created.
 */
static char *ks_sqlite_open_name(const char *path)
{
	size_t len = strlen(path);
	const char *prefix = path[0] == '/' ? "" : "./";
	char *name = malloc(len + 3);

	if (name)
		snprintf(name, len + 3, "%s%s", prefix, path);
	return name;
}

static int ks_sqlite_setup(struct ks_sqlite_store *s,
			   const struct ks_options *opts, struct ks_err *err)
{
	char mode[16], has_tables[8];
	char *name;
	size_t i;
	int rc, ret, found = 0;

	name = ks_sqlite_open_name(opts->path);
	if (!name)
		return ks_err_set(err, KS_ENOMEM,
				  "ks_sqlite_open: out of memory");
	rc = sqlite3_open_v2(name, &s->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	free(name);
	if (rc != SQLITE_OK)
		return ks_sqlite_error(err, s->db, rc, "ks_sqlite_open",
				       "sqlite3_open_v2", s->path);
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, opts->busy_timeout_ms);
	sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);

	/*
	 * A read-only file is refused before the first read, which would
	 * leave -shm and -wal files behind with the file's read-only mode.
	 */
	if (sqlite3_db_readonly(s->db, "main") == 1)
		return ks_err_set(
			err, KS_EACCES,
			"ks_sqlite_open: sqlite3_open_v2 '%s' failed: "
			"the file is read-only",
			s->path);
	/*
	 * Read before anything writes: a file that is not a database, or
	 * whose keys table is not ours, fails here and is left as it was.
	 */
	ret = ks_sqlite_check_columns(s, &found, err);
	if (!ret)
		ret = ks_sqlite_check_account_tables(s, err);
	if (ret)
		return ret;
	ret = ks_sqlite_exec(s, "PRAGMA journal_mode=WAL",
			     "PRAGMA journal_mode=WAL", mode, sizeof(mode),
			     err);
	if (ret)
		return ret;
	if (sqlite3_stricmp(mode, "wal") != 0)
		return ks_err_set(
			err, KS_EIO,
			"ks_sqlite_open: PRAGMA journal_mode=WAL '%s' "
			"failed: journal mode stays '%s'",
			s->path, mode);
	ret = ks_sqlite_exec(s, "PRAGMA synchronous=FULL",
			     "PRAGMA synchronous=FULL", NULL, 0, err);
	/* What a change frees is zeroed: no stale copy of a private key. */
	if (!ret)
		ret = ks_sqlite_exec(s, "PRAGMA secure_delete=ON",
				     "PRAGMA secure_delete=ON", NULL, 0, err);
	/* An existing store gets the tables added since it was made. */
	if (!ret && found)
		ret = ks_sqlite_exec(s, ks_sqlite_sql_has_tables,
				     "sqlite_master", has_tables,
				     sizeof(has_tables), err);
	if (!ret && (!found || strcmp(has_tables, "5") != 0))
		ret = ks_sqlite_schema(s, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_put, &s->put, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_import, &s->import,
					err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_get, &s->get, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_list, &s->list, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_data_version,
					&s->data_version, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_life_list,
					&s->life_list, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_life_put, &s->life_put,
					err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_life_delete,
					&s->life_delete, err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_next_kid, &s->next_kid,
					err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_update, &s->update,
					err);
	if (!ret)
		ret = ks_sqlite_prepare(s, ks_sqlite_sql_delete, &s->del, err);
	for (i = 0; !ret && i < KS_SQLITE_ACCT_N; i++)
		ret = ks_sqlite_prepare(s, ks_sqlite_acct_sql[i], &s->acct[i],
					err);
	if (!ret)
		ret = ks_sqlite_data_version(s, &s->seen_data_version,
					     "ks_sqlite_open", err);
	s->seen_changes = sqlite3_total_changes64(s->db);
	s->version = 1;
	return ret;
}

static int ks_sqlite_open(struct ks_store **out, const struct ks_options *opts,
			  struct ks_err *err)
{
	struct ks_sqlite_store *s;
	int ret;

	if (!sqlite3_threadsafe())
		return ks_err_set(err, KS_EIO,
				  "ks_sqlite_open: sqlite3_threadsafe '%s' "
				  "failed: library built without threads",
				  opts->path);
	ret = ks_sqlite_create_file(opts->path, err);
	if (ret)
		return ret;

	s = calloc(1, sizeof(*s));
	if (s)
		s->path = strdup(opts->path);
	if (!s || !s->path) {
		free(s);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_sqlite_open: out of memory");
	}
	s->base.be = &ks_backend_sqlite;
	if (pthread_mutex_init(&s->lock, NULL) != 0) {
		ks_sqlite_free(s);
		return ks_err_set(err, KS_ENOMEM,
				  "ks_sqlite_open: pthread_mutex_init '%s' "
				  "failed",
				  opts->path);
	}
	s->lock_ready = 1;

	ret = ks_sqlite_setup(s, opts, err);
	if (ret) {
		ks_sqlite_free(s);
		return ret;
	}
	*out = &s->base;
	return 0;
}

static void ks_sqlite_close(struct ks_store *store)
{
	ks_sqlite_free(ks_sqlite_downcast(store));
}

/*
 * Step an INSERT whose parameters are bound, then reset it and drop the
 * bindings, which point into the caller's buffer. Called with the lock held.
 */
static int ks_sqlite_insert(struct ks_sqlite_store *s, sqlite3_stmt *stmt,
			    int rc, int64_t kid, const char *func,
			    struct ks_err *err)
{
	int ret = 0;

	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && kid > 0)
		ret = ks_err_set(err, KS_EEXISTS,
				 "%s: kid %lld in '%s' already exists", func,
				 (long long)kid, s->path);
	else if (rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, func, "sqlite3_step",
				      s->path);
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return ret;
}

/* Insert a new key; called with the lock held. */
static int ks_sqlite_put_locked(struct ks_sqlite_store *s,
				const unsigned char *blob, size_t blob_len,
				int64_t exp, int64_t *kid_out, const char *func,
				struct ks_err *err)
{
	int rc, ret;

	rc = sqlite3_bind_blob64(s->put, 1, blob, blob_len, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->put, 2, exp);
	ret = ks_sqlite_insert(s, s->put, rc, 0, func, err);
	if (!ret && kid_out)
		*kid_out = sqlite3_last_insert_rowid(s->db);
	return ret;
}

static int ks_sqlite_put(struct ks_store *store, const unsigned char *blob,
			 size_t blob_len, int64_t exp, int64_t *kid_out,
			 struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_put_locked(s, blob, blob_len, exp, kid_out,
				   "ks_sqlite_put", err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* Insert a record with its own kid; called with the lock held. */
static int ks_sqlite_import_locked(struct ks_sqlite_store *s,
				   const struct ks_record *rec,
				   const char *func, struct ks_err *err)
{
	int rc;

	rc = sqlite3_bind_int64(s->import, 1, rec->kid);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_blob64(s->import, 2, rec->blob, rec->blob_len,
					 SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->import, 3, rec->exp);
	return ks_sqlite_insert(s, s->import, rc, rec->kid, func, err);
}

static int ks_sqlite_import(struct ks_store *store, const struct ks_record *rec,
			    struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_import_locked(s, rec, "ks_sqlite_import", err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/*
 * Copy the current row of a SELECT whose columns start at col with
 * (key, exp) into rec. Called with the lock held, before the next step.
 */
static int ks_sqlite_copy_row(struct ks_sqlite_store *s, sqlite3_stmt *stmt,
			      int col, struct ks_record *rec, const char *func,
			      struct ks_err *err)
{
	const void *blob;
	int len;

	if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
		return ks_err_set(err, KS_ECORRUPT,
				  "%s: kid %lld in '%s' has no key", func,
				  (long long)rec->kid, s->path);
	/* TEXT (a PEM stored by a Python tool) reads as its bytes too. */
	blob = sqlite3_column_blob(stmt, col);
	len = sqlite3_column_bytes(stmt, col);
	if (!blob && len > 0)
		return ks_sqlite_error(err, s->db, SQLITE_NOMEM, func,
				       "sqlite3_column_blob", s->path);
	rec->blob = malloc(len > 0 ? (size_t)len : 1);
	if (!rec->blob)
		return ks_err_set(err, KS_ENOMEM, "%s: out of memory", func);
	if (len > 0)
		memcpy(rec->blob, blob, (size_t)len);
	rec->blob_len = (size_t)len;
	rec->exp = sqlite3_column_int64(stmt, col + 1);
	return 0;
}

static int ks_sqlite_get(struct ks_store *store, int64_t kid,
			 struct ks_record *out, struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int rc, ret = 0;

	out->kid = kid;
	pthread_mutex_lock(&s->lock);
	rc = sqlite3_bind_int64(s->get, 1, kid);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s->get);
	if (rc == SQLITE_ROW)
		ret = ks_sqlite_copy_row(s, s->get, 0, out, "ks_sqlite_get",
					 err);
	else if (rc == SQLITE_DONE)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "ks_sqlite_get: kid %lld not found in '%s'",
				 (long long)kid, s->path);
	else
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_get",
				      "sqlite3_step", s->path);
	sqlite3_reset(s->get);
	pthread_mutex_unlock(&s->lock);
	if (ret)
		ks_record_release(out);
	return ret;
}

/*
 * Rows are handed to the callback as SQLite holds them (borrowed, valid
 * until the next step), with the lock held: memory stays constant however
 * many keys the store has. The contract forbids a callback to call back
 * into the store.
 */
static int ks_sqlite_list_locked(struct ks_sqlite_store *s, int64_t exp_after,
				 int64_t exp_until, ks_list_fn fn, void *arg,
				 struct ks_err *err)
{
	struct ks_record rec;
	int rc, ret = 0;

	/* NULL: exp_after INT64_MIN has no lower bound (keystore.h). */
	rc = exp_after == INT64_MIN ? sqlite3_bind_null(s->list, 1)
				    : sqlite3_bind_int64(s->list, 1, exp_after);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->list, 2, exp_until);
	while (!ret && (rc == SQLITE_OK || rc == SQLITE_ROW)) {
		rc = sqlite3_step(s->list);
		if (rc != SQLITE_ROW)
			break;
		rec.kid = sqlite3_column_int64(s->list, 0);
		if (sqlite3_column_type(s->list, 1) == SQLITE_NULL) {
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_sqlite_list: kid %lld in '%s' "
					 "has no key",
					 (long long)rec.kid, s->path);
			break;
		}
		/*
		 * TEXT (a PEM stored by a Python tool) reads as its bytes.
		 * The record is borrowed: the callback only reads it.
		 */
		rec.blob = (unsigned char *)(uintptr_t)sqlite3_column_blob(
			s->list, 1);
		rec.blob_len = (size_t)sqlite3_column_bytes(s->list, 1);
		rec.exp = sqlite3_column_int64(s->list, 2);
		if (!rec.blob && rec.blob_len)
			ret = ks_sqlite_error(err, s->db, SQLITE_NOMEM,
					      "ks_sqlite_list",
					      "sqlite3_column_blob", s->path);
		else
			ret = fn(&rec, arg);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_list",
				      "sqlite3_step", s->path);
	sqlite3_reset(s->list);
	return ret;
}

static int ks_sqlite_list(struct ks_store *store, int64_t exp_after,
			  int64_t exp_until, ks_list_fn fn, void *arg,
			  struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_list_locked(s, exp_after, exp_until, fn, arg, err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_version(struct ks_store *store, uint64_t *out,
			     struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	sqlite3_int64 data_version = 0, changes;
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_data_version(s, &data_version, "ks_sqlite_version",
				     err);
	changes = sqlite3_total_changes64(s->db);
	if (!ret && (data_version != s->seen_data_version ||
		     changes != s->seen_changes)) {
		s->seen_data_version = data_version;
		s->seen_changes = changes;
		s->version++;
	}
	if (!ret)
		*out = s->version;
	pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_check(struct ks_store *store, struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	sqlite3_stmt *stmt = NULL;
	int rc, ret = 0;

	pthread_mutex_lock(&s->lock);
	rc = sqlite3_prepare_v2(s->db, "PRAGMA integrity_check(1)", -1, &stmt,
				NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		const char *text = (const char *)sqlite3_column_text(stmt, 0);

		if (!text || strcmp(text, "ok") != 0)
			ret = ks_err_set(err, KS_ECORRUPT,
					 "ks_sqlite_check: PRAGMA "
					 "integrity_check '%s' failed: %s",
					 s->path, text ? text : "no result");
	} else {
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_check",
				      "PRAGMA integrity_check", s->path);
	}
	sqlite3_finalize(stmt);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* A write transaction: BEGIN IMMEDIATE on the store's connection. */
struct ks_sqlite_txn {
	struct ks_txn base;
	struct ks_sqlite_store *s;
};

static struct ks_sqlite_store *ks_sqlite_txn_store(struct ks_txn *txn)
{
	return ((struct ks_sqlite_txn *)txn)->s;
}

/* Step a statement that returns no row, then reset it and its bindings. */
static int ks_sqlite_step_done(struct ks_sqlite_store *s, sqlite3_stmt *stmt,
			       int rc, const char *func, struct ks_err *err)
{
	int ret = 0;

	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, func, "sqlite3_step",
				      s->path);
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return ret;
}

static int ks_sqlite_life_list(struct ks_store *store, struct ks_txn *txn,
			       ks_life_fn fn, void *arg, struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	struct ks_life life;
	int rc, ret = 0;

	if (!txn)
		pthread_mutex_lock(&s->lock);
	for (;;) {
		rc = sqlite3_step(s->life_list);
		if (rc != SQLITE_ROW)
			break;
		life.kid = sqlite3_column_int64(s->life_list, 0);
		life.created = sqlite3_column_int64(s->life_list, 1);
		life.activate_at = sqlite3_column_int64(s->life_list, 2);
		life.retire_at = sqlite3_column_int64(s->life_list, 3);
		life.revoked_at =
			sqlite3_column_type(s->life_list, 4) == SQLITE_NULL
				? KS_NEVER
				: sqlite3_column_int64(s->life_list, 4);
		ret = fn(&life, arg);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_life_list",
				      "sqlite3_step", s->path);
	sqlite3_reset(s->life_list);
	if (!txn)
		pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_write(struct ks_store *store, ks_txn_fn fn, void *arg,
			   struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	struct ks_sqlite_txn txn = {{store}, s};
	int rc, ret;

	pthread_mutex_lock(&s->lock);
	rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_write",
				      "BEGIN IMMEDIATE", s->path);
		pthread_mutex_unlock(&s->lock);
		return ret;
	}
	ret = fn(&txn.base, arg, err);
	if (!ret) {
		rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_write",
					      "COMMIT", s->path);
	}
	/* After a failed COMMIT too: nothing of fn's may stay. */
	if (ret && sqlite3_get_autocommit(s->db) == 0)
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_txn_next_kid(struct ks_txn *txn, int64_t *out,
				  struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	int rc = sqlite3_step(s->next_kid), ret = 0;

	*out = 0;
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(s->next_kid, 0);
	else
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_txn_next_kid",
				      "sqlite3_step", s->path);
	sqlite3_reset(s->next_kid);
	if (!ret && *out < 1)
		ret = ks_err_set(err, KS_ENOSPC,
				 "ks_sqlite_txn_next_kid: no kid left in '%s'",
				 s->path);
	return ret;
}

static int ks_sqlite_txn_put(struct ks_txn *txn, const unsigned char *blob,
			     size_t blob_len, int64_t exp, int64_t *kid_out,
			     struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	int64_t want, kid = 0;
	int ret;

	ret = ks_sqlite_txn_next_kid(txn, &want, err);
	if (!ret)
		ret = ks_sqlite_put_locked(s, blob, blob_len, exp, &kid,
					   "ks_sqlite_txn_put", err);
	/* A blob may be bound to the kid it was promised: never another. */
	if (!ret && kid != want)
		ret = ks_err_set(err, KS_ECORRUPT,
				 "ks_sqlite_txn_put: '%s' assigned kid %lld, "
				 "not the next kid %lld",
				 s->path, (long long)kid, (long long)want);
	if (!ret && kid_out)
		*kid_out = kid;
	return ret;
}

static int ks_sqlite_txn_import(struct ks_txn *txn, const struct ks_record *rec,
				struct ks_err *err)
{
	return ks_sqlite_import_locked(ks_sqlite_txn_store(txn), rec,
				       "ks_sqlite_txn_import", err);
}

static int ks_sqlite_txn_update(struct ks_txn *txn, const struct ks_record *rec,
				struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	int rc, ret;

	rc = sqlite3_bind_blob64(s->update, 1, rec->blob, rec->blob_len,
				 SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->update, 2, rec->exp);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->update, 3, rec->kid);
	ret = ks_sqlite_step_done(s, s->update, rc, "ks_sqlite_txn_update",
				  err);
	if (!ret && sqlite3_changes64(s->db) != 1)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "ks_sqlite_txn_update: kid %lld not found in "
				 "'%s'",
				 (long long)rec->kid, s->path);
	return ret;
}

static int ks_sqlite_txn_delete(struct ks_txn *txn, int64_t kid,
				struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	int ret;

	ret = ks_sqlite_step_done(s, s->del, sqlite3_bind_int64(s->del, 1, kid),
				  "ks_sqlite_txn_delete", err);
	if (!ret && sqlite3_changes64(s->db) != 1)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_sqlite_txn_delete: kid %lld not found in "
				  "'%s'",
				  (long long)kid, s->path);
	if (!ret)
		ret = ks_sqlite_step_done(
			s, s->life_delete,
			sqlite3_bind_int64(s->life_delete, 1, kid),
			"ks_sqlite_txn_delete", err);
	return ret;
}

static int ks_sqlite_txn_list(struct ks_txn *txn, int64_t exp_after,
			      int64_t exp_until, ks_list_fn fn, void *arg,
			      struct ks_err *err)
{
	return ks_sqlite_list_locked(ks_sqlite_txn_store(txn), exp_after,
				     exp_until, fn, arg, err);
}

static int ks_sqlite_txn_life_put(struct ks_txn *txn,
				  const struct ks_life *life,
				  struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	int rc, ret = 0;

	/* The entry belongs to a record: refuse one for a missing kid. */
	rc = sqlite3_bind_int64(s->get, 1, life->kid);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(s->get);
	if (rc == SQLITE_DONE)
		ret = ks_err_set(err, KS_ENOTFOUND,
				 "ks_sqlite_txn_life_put: kid %lld not found "
				 "in '%s'",
				 (long long)life->kid, s->path);
	else if (rc != SQLITE_ROW)
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_txn_life_put",
				      "sqlite3_step", s->path);
	sqlite3_reset(s->get);
	if (ret)
		return ret;
	rc = sqlite3_bind_int64(s->life_put, 1, life->kid);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->life_put, 2, life->created);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->life_put, 3, life->activate_at);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_int64(s->life_put, 4, life->retire_at);
	if (rc == SQLITE_OK)
		rc = life->revoked_at == KS_NEVER
			     ? sqlite3_bind_null(s->life_put, 5)
			     : sqlite3_bind_int64(s->life_put, 5,
						  life->revoked_at);
	return ks_sqlite_step_done(s, s->life_put, rc, "ks_sqlite_txn_life_put",
				   err);
}

/*
 * VACUUM rebuilds the file from the live rows (secure_delete zeroes what it
 * frees), and a TRUNCATE checkpoint empties the WAL, which holds earlier
 * page images; it waits up to the busy timeout for readers of other
 * processes.
 */
static int ks_sqlite_scrub(struct ks_store *store, struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	char busy[24] = "";
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_exec_in(s, "ks_sqlite_scrub", "VACUUM", "VACUUM", NULL,
				0, err);
	if (!ret)
		ret = ks_sqlite_exec_in(s, "ks_sqlite_scrub",
					"PRAGMA wal_checkpoint(TRUNCATE)",
					"PRAGMA wal_checkpoint(TRUNCATE)", busy,
					sizeof(busy), err);
	if (!ret && strcmp(busy, "0") != 0)
		ret = ks_err_set(err, KS_EBUSY,
				 "ks_sqlite_scrub: '%s' is in use by another "
				 "process: its WAL was not emptied",
				 s->path);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/*
 * Accounts. Times go into the account tables as CURRENT_TIMESTAMP writes
 * them, "YYYY-MM-DD HH:MM:SS" in UTC, which SQLite's date functions read
 * back; KS_NEVER is NULL. Writes run in ks_sqlite_write() transactions.
 */
static int ks_sqlite_bind_time(struct ks_sqlite_store *s, sqlite3_stmt *stmt,
			       int col, int64_t t, const char *func,
			       struct ks_err *err)
{
	char text[64];
	struct tm tm;
	time_t tt = (time_t)t;
	int rc;

	if (t == KS_NEVER)
		rc = sqlite3_bind_null(stmt, col);
	else if ((int64_t)tt != t || !gmtime_r(&tt, &tm) ||
		 tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
		return ks_err_set(err, KS_EINVAL,
				  "%s: time %lld is outside the years "
				  "0000-9999",
				  func, (long long)t);
	else {
		snprintf(text, sizeof(text), "%04d-%02d-%02d %02d:%02d:%02d",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec);
		rc = sqlite3_bind_text(stmt, col, text, -1, SQLITE_TRANSIENT);
	}
	return rc == SQLITE_OK ? 0
			       : ks_sqlite_error(err, s->db, rc, func,
						 "sqlite3_bind", s->path);
}

/* A time column read through KS_SQLITE_SECS(): none is absent. */
static int64_t ks_sqlite_column_time(sqlite3_stmt *stmt, int col, int64_t none)
{
	if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
		return none;
	return sqlite3_column_int64(stmt, col);
}

static int ks_sqlite_bind_opt_text(sqlite3_stmt *stmt, int col,
				   const char *text)
{
	return text ? sqlite3_bind_text(stmt, col, text, -1, SQLITE_STATIC)
		    : sqlite3_bind_null(stmt, col);
}

/*
 * Step a statement that returns at most one integer: 0 with *out, or
 * KS_ENOTFOUND when no row. The statement is reset afterwards.
 */
static int ks_sqlite_step_id(struct ks_sqlite_store *s, sqlite3_stmt *stmt,
			     int rc, int64_t *out, const char *func,
			     struct ks_err *err)
{
	int ret = 0;

	*out = 0;
	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		*out = sqlite3_column_int64(stmt, 0);
	else if (rc == SQLITE_DONE)
		ret = KS_ENOTFOUND;
	else
		ret = ks_sqlite_error(err, s->db, rc, func, "sqlite3_step",
				      s->path);
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	return ret;
}

static int ks_sqlite_find(struct ks_sqlite_store *s, enum ks_sqlite_acct which,
			  const char *text, int64_t id, int64_t *out,
			  const char *func, struct ks_err *err)
{
	sqlite3_stmt *stmt = s->acct[which];
	int rc = text ? sqlite3_bind_text(stmt, 1, text, -1, SQLITE_STATIC)
		      : sqlite3_bind_int64(stmt, 1, id);

	return ks_sqlite_step_id(s, stmt, rc, out, func, err);
}

/* Run an account statement whose one parameter is an id. */
static int ks_sqlite_run_id(struct ks_sqlite_store *s,
			    enum ks_sqlite_acct which, int64_t id,
			    const char *func, struct ks_err *err)
{
	sqlite3_stmt *stmt = s->acct[which];

	return ks_sqlite_step_done(s, stmt, sqlite3_bind_int64(stmt, 1, id),
				   func, err);
}

/*
 * After an INSERT into users failed on a constraint: say which of the id
 * (id > 0), the username and the email another user has. KS_EEXISTS, or
 * the constraint's own error when none is taken.
 */
static int ks_sqlite_user_taken(struct ks_sqlite_store *s, int64_t id,
				const char *username, const char *email,
				int ret, const char *func, struct ks_err *err)
{
	int64_t other = 0;
	int rc = KS_ENOTFOUND;

	if (id > 0) {
		rc = ks_sqlite_find(s, KS_SQLITE_USER_BY_ID, NULL, id, &other,
				    func, err);
		if (!rc)
			return ks_err_set(err, KS_EEXISTS,
					  "%s: user id %lld is taken in '%s'",
					  func, (long long)id, s->path);
	}
	if (rc == KS_ENOTFOUND)
		rc = ks_sqlite_find(s, KS_SQLITE_USER_BY_NAME, username, 0,
				    &other, func, err);
	if (!rc)
		return ks_err_set(err, KS_EEXISTS,
				  "%s: the username is taken by user %lld in "
				  "'%s'",
				  func, (long long)other, s->path);
	if (rc == KS_ENOTFOUND && email)
		rc = ks_sqlite_find(s, KS_SQLITE_USER_BY_EMAIL, email, 0,
				    &other, func, err);
	if (!rc)
		return ks_err_set(err, KS_EEXISTS,
				  "%s: the email is taken by user %lld in '%s'",
				  func, (long long)other, s->path);
	return rc == KS_ENOTFOUND ? ret : rc;
}

/* Everything a user write needs; unused members stay zero. */
struct ks_sqlite_acct_args {
	const char *username;
	const char *password_hash;
	const char *email;
	int64_t registered;
	int64_t id;
	int64_t when;
	int locked;
	const struct ks_user *user;
	const struct ks_auth_log *entries;
	size_t n;
	size_t count;
	const char *func;
};

/*
 * Insert a user: with u, as it is (id, times, lock); without, a new one
 * from a (username, hash, email, registered). *id_out gets the id.
 */
static int ks_sqlite_user_insert(struct ks_sqlite_store *s,
				 const struct ks_sqlite_acct_args *a,
				 int64_t *id_out, struct ks_err *err)
{
	const struct ks_user *u = a->user;
	enum ks_sqlite_acct which =
		u ? KS_SQLITE_USER_IMPORT : KS_SQLITE_USER_ADD;
	sqlite3_stmt *stmt = s->acct[which];
	const char *username = u ? u->username : a->username;
	const char *email = u ? u->email : a->email;
	int rc, ret;

	rc = sqlite3_bind_text(stmt, 1, username, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(stmt, 2,
				       u ? u->password_hash : a->password_hash,
				       -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = ks_sqlite_bind_opt_text(stmt, 3, email);
	if (rc == SQLITE_OK && u)
		rc = sqlite3_bind_int64(stmt, 5, u->id);
	ret = rc == SQLITE_OK ? 0
			      : ks_sqlite_error(err, s->db, rc, a->func,
						"sqlite3_bind", s->path);
	if (!ret)
		ret = ks_sqlite_bind_time(s, stmt, 4,
					  u ? u->registered : a->registered,
					  a->func, err);
	if (!ret && u)
		ret = ks_sqlite_bind_time(s, stmt, 6, u->last_login, a->func,
					  err);
	if (ret) {
		sqlite3_clear_bindings(stmt);
		return ret;
	}
	rc = sqlite3_step(stmt);
	if (rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, a->func,
				      "INSERT INTO users", s->path);
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	if ((rc & 0xff) == SQLITE_CONSTRAINT)
		return ks_sqlite_user_taken(s, u ? u->id : 0, username, email,
					    ret, a->func, err);
	if (ret)
		return ret;
	*id_out = sqlite3_last_insert_rowid(s->db);
	if (u)
		ret = ks_sqlite_run_id(s,
				       u->locked ? KS_SQLITE_USER_LOCK
						 : KS_SQLITE_USER_UNLOCK,
				       u->id, a->func, err);
	return ret;
}

static int ks_sqlite_user_insert_txn(struct ks_txn *txn, void *arg,
				     struct ks_err *err)
{
	struct ks_sqlite_acct_args *a = arg;

	return ks_sqlite_user_insert(ks_sqlite_txn_store(txn), a, &a->id, err);
}

static int ks_sqlite_user_add(struct ks_store *store, const char *username,
			      const char *password_hash, const char *email,
			      int64_t registered, int64_t *id_out,
			      struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.username = username,
					.password_hash = password_hash,
					.email = email,
					.registered = registered,
					.func = "ks_sqlite_user_add"};
	int ret = ks_sqlite_write(store, ks_sqlite_user_insert_txn, &a, err);

	if (!ret && id_out)
		*id_out = a.id;
	return ret;
}

static int ks_sqlite_user_import(struct ks_store *store,
				 const struct ks_user *u, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.user = u,
					.func = "ks_sqlite_user_import"};

	return ks_sqlite_write(store, ks_sqlite_user_insert_txn, &a, err);
}

static int ks_sqlite_txn_user_import(struct ks_txn *txn,
				     const struct ks_user *u,
				     struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.user = u,
					.func = "ks_sqlite_txn_user_import"};

	return ks_sqlite_user_insert(ks_sqlite_txn_store(txn), &a, &a.id, err);
}

/* The user in the current row of a KS_SQLITE_USER_SELECT, borrowed. */
static void ks_sqlite_user_row(sqlite3_stmt *stmt, struct ks_user *u)
{
	u->id = sqlite3_column_int64(stmt, 0);
	u->username = (char *)(uintptr_t)sqlite3_column_text(stmt, 1);
	u->email = sqlite3_column_type(stmt, 2) == SQLITE_NULL
			   ? NULL
			   : (char *)(uintptr_t)sqlite3_column_text(stmt, 2);
	u->password_hash = (char *)(uintptr_t)sqlite3_column_text(stmt, 3);
	u->registered = ks_sqlite_column_time(stmt, 4, 0);
	u->last_login = ks_sqlite_column_time(stmt, 5, KS_NEVER);
	u->locked = sqlite3_column_int(stmt, 6) != 0;
}

static int ks_sqlite_user_get(struct ks_store *store, const char *username,
			      struct ks_user *out, struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	sqlite3_stmt *stmt = s->acct[KS_SQLITE_USER_GET];
	struct ks_user row;
	int rc, ret = 0;

	pthread_mutex_lock(&s->lock);
	rc = sqlite3_bind_text(stmt, 1, username, -1, SQLITE_STATIC);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		ks_sqlite_user_row(stmt, &row);
		*out = row;
		out->username = row.username ? strdup(row.username) : NULL;
		out->email = row.email ? strdup(row.email) : NULL;
		out->password_hash =
			row.password_hash ? strdup(row.password_hash) : NULL;
		if (!out->username || !out->password_hash ||
		    (row.email && !out->email))
			ret = ks_err_set(err, KS_ENOMEM,
					 "ks_sqlite_user_get: out of memory");
	} else if (rc == SQLITE_DONE) {
		ret = ks_err_set(err, KS_ENOTFOUND, "no such user");
	} else {
		ret = ks_sqlite_error(err, s->db, rc, "ks_sqlite_user_get",
				      "sqlite3_step", s->path);
	}
	sqlite3_reset(stmt);
	sqlite3_clear_bindings(stmt);
	pthread_mutex_unlock(&s->lock);
	if (ret)
		ks_user_release(out);
	return ret;
}

/* Walk the users in id order; called with the lock held. */
static int ks_sqlite_user_list_locked(struct ks_sqlite_store *s, ks_user_fn fn,
				      void *arg, const char *func,
				      struct ks_err *err)
{
	sqlite3_stmt *stmt = s->acct[KS_SQLITE_USER_LIST];
	struct ks_user u;
	int rc, ret = 0;

	for (;;) {
		rc = sqlite3_step(stmt);
		if (rc != SQLITE_ROW)
			break;
		ks_sqlite_user_row(stmt, &u);
		if (!u.username || !u.password_hash)
			ret = ks_sqlite_error(err, s->db, SQLITE_NOMEM, func,
					      "sqlite3_column_text", s->path);
		else
			ret = fn(&u, arg);
		if (ret)
			break;
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, func, "sqlite3_step",
				      s->path);
	sqlite3_reset(stmt);
	return ret;
}

static int ks_sqlite_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
			       struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_user_list_locked(s, fn, arg, "ks_sqlite_user_list",
					 err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_txn_user_list(struct ks_txn *txn, ks_user_fn fn, void *arg,
				   struct ks_err *err)
{
	return ks_sqlite_user_list_locked(ks_sqlite_txn_store(txn), fn, arg,
					  "ks_sqlite_txn_user_list", err);
}

/* KS_ENOTFOUND unless the user a->id exists. */
static int ks_sqlite_user_exists(struct ks_sqlite_store *s,
				 const struct ks_sqlite_acct_args *a,
				 struct ks_err *err)
{
	int64_t id;
	int ret = ks_sqlite_find(s, KS_SQLITE_USER_BY_ID, NULL, a->id, &id,
				 a->func, err);

	if (ret == KS_ENOTFOUND)
		return ks_err_set(err, KS_ENOTFOUND, "%s: no user %lld in '%s'",
				  a->func, (long long)a->id, s->path);
	return ret;
}

/* One UPDATE of users (hash or last_login, then the id). */
static int ks_sqlite_user_update_txn(struct ks_txn *txn, void *arg,
				     struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	struct ks_sqlite_acct_args *a = arg;
	sqlite3_stmt *stmt =
		s->acct[a->password_hash ? KS_SQLITE_USER_SET_HASH
					 : KS_SQLITE_USER_SET_LOGIN];
	int rc, ret;

	if (a->password_hash) {
		rc = sqlite3_bind_text(stmt, 1, a->password_hash, -1,
				       SQLITE_STATIC);
		ret = rc == SQLITE_OK
			      ? 0
			      : ks_sqlite_error(err, s->db, rc, a->func,
						"sqlite3_bind", s->path);
	} else {
		ret = ks_sqlite_bind_time(s, stmt, 1, a->when, a->func, err);
	}
	if (ret) {
		sqlite3_clear_bindings(stmt);
		return ret;
	}
	ret = ks_sqlite_step_done(s, stmt, sqlite3_bind_int64(stmt, 2, a->id),
				  a->func, err);
	if (!ret && sqlite3_changes64(s->db) != 1)
		ret = ks_sqlite_user_exists(s, a, err);
	return ret;
}

static int ks_sqlite_user_set_hash(struct ks_store *store, int64_t id,
				   const char *hash, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.id = id,
					.password_hash = hash,
					.func = "ks_sqlite_user_set_hash"};

	return ks_sqlite_write(store, ks_sqlite_user_update_txn, &a, err);
}

static int ks_sqlite_user_set_login(struct ks_store *store, int64_t id,
				    int64_t when, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {
		.id = id, .when = when, .func = "ks_sqlite_user_set_login"};

	return ks_sqlite_write(store, ks_sqlite_user_update_txn, &a, err);
}

static int ks_sqlite_user_lock_txn(struct ks_txn *txn, void *arg,
				   struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	struct ks_sqlite_acct_args *a = arg;
	int ret = ks_sqlite_user_exists(s, a, err);

	if (!ret)
		ret = ks_sqlite_run_id(s,
				       a->locked ? KS_SQLITE_USER_LOCK
						 : KS_SQLITE_USER_UNLOCK,
				       a->id, a->func, err);
	return ret;
}

static int ks_sqlite_user_set_locked(struct ks_store *store, int64_t id,
				     int locked, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.id = id,
					.locked = locked,
					.func = "ks_sqlite_user_set_locked"};

	return ks_sqlite_write(store, ks_sqlite_user_lock_txn, &a, err);
}

/* The log keeps the user's attempts, without the id; then the user goes. */
static int ks_sqlite_user_delete_txn(struct ks_txn *txn, void *arg,
				     struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	struct ks_sqlite_acct_args *a = arg;
	static const enum ks_sqlite_acct steps[] = {
		KS_SQLITE_LOG_UNLINK,
		KS_SQLITE_USER_UNLOCK,
		KS_SQLITE_USER_DELETE,
	};
	size_t i;
	int ret = 0;

	for (i = 0; !ret && i < sizeof(steps) / sizeof(steps[0]); i++)
		ret = ks_sqlite_run_id(s, steps[i], a->id, a->func, err);
	if (!ret && sqlite3_changes64(s->db) != 1)
		ret = ks_err_set(err, KS_ENOTFOUND, "%s: no user %lld in '%s'",
				 a->func, (long long)a->id, s->path);
	return ret;
}

static int ks_sqlite_user_delete(struct ks_store *store, int64_t id,
				 struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.id = id,
					.func = "ks_sqlite_user_delete"};

	return ks_sqlite_write(store, ks_sqlite_user_delete_txn, &a, err);
}

/*
 * Append a->n entries: with their ids (import) or with the ids
 * AUTOINCREMENT assigns, each with its outcome in auth_log_results.
 */
static int ks_sqlite_log_insert(struct ks_sqlite_store *s,
				const struct ks_sqlite_acct_args *a, int import,
				struct ks_err *err)
{
	sqlite3_stmt *stmt =
		s->acct[import ? KS_SQLITE_LOG_IMPORT : KS_SQLITE_LOG_ADD];
	sqlite3_stmt *res = s->acct[KS_SQLITE_LOG_RESULT];
	size_t i;
	int rc, ret = 0;

	for (i = 0; !ret && i < a->n; i++) {
		const struct ks_auth_log *e = &a->entries[i];
		int64_t id;

		rc = sqlite3_bind_text(stmt, 1, e->ip, -1, SQLITE_STATIC);
		if (rc == SQLITE_OK)
			rc = sqlite3_bind_int64(stmt, 3, e->user_id);
		if (rc == SQLITE_OK && import)
			rc = sqlite3_bind_int64(stmt, 4, e->id);
		ret = rc == SQLITE_OK
			      ? ks_sqlite_bind_time(s, stmt, 2, e->when,
						    a->func, err)
			      : ks_sqlite_error(err, s->db, rc, a->func,
						"sqlite3_bind", s->path);
		if (ret) {
			sqlite3_clear_bindings(stmt);
			break;
		}
		rc = sqlite3_step(stmt);
		if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && import)
			ret = ks_err_set(err, KS_EEXISTS,
					 "%s: auth-log id %lld is taken in "
					 "'%s'",
					 a->func, (long long)e->id, s->path);
		else if (rc != SQLITE_DONE)
			ret = ks_sqlite_error(err, s->db, rc, a->func,
					      "INSERT INTO auth_logs", s->path);
		sqlite3_reset(stmt);
		sqlite3_clear_bindings(stmt);
		if (ret)
			break;
		id = sqlite3_last_insert_rowid(s->db);
		rc = sqlite3_bind_int64(res, 1, id);
		if (rc == SQLITE_OK)
			rc = sqlite3_bind_int(res, 2, e->success ? 1 : 0);
		ret = ks_sqlite_step_done(s, res, rc, a->func, err);
	}
	return ret;
}

static int ks_sqlite_log_add_txn(struct ks_txn *txn, void *arg,
				 struct ks_err *err)
{
	return ks_sqlite_log_insert(ks_sqlite_txn_store(txn), arg, 0, err);
}

static int ks_sqlite_auth_log_add(struct ks_store *store,
				  const struct ks_auth_log *entries, size_t n,
				  struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {
		.entries = entries, .n = n, .func = "ks_sqlite_auth_log_add"};

	return ks_sqlite_write(store, ks_sqlite_log_add_txn, &a, err);
}

static int ks_sqlite_txn_auth_log_import(struct ks_txn *txn,
					 const struct ks_auth_log *entries,
					 size_t n, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {
		.entries = entries,
		.n = n,
		.func = "ks_sqlite_txn_auth_log_import"};

	return ks_sqlite_log_insert(ks_sqlite_txn_store(txn), &a, 1, err);
}

/* Walk the log after after_id in id order; called with the lock held. */
static int ks_sqlite_log_list_locked(struct ks_sqlite_store *s,
				     int64_t after_id, ks_auth_log_fn fn,
				     void *arg, const char *func,
				     struct ks_err *err)
{
	sqlite3_stmt *stmt = s->acct[KS_SQLITE_LOG_LIST];
	struct ks_auth_log e;
	int rc, ret = 0;

	rc = sqlite3_bind_int64(stmt, 1, after_id);
	while (!ret && (rc == SQLITE_OK || rc == SQLITE_ROW)) {
		const unsigned char *ip;

		rc = sqlite3_step(stmt);
		if (rc != SQLITE_ROW)
			break;
		memset(&e, 0, sizeof(e));
		e.id = sqlite3_column_int64(stmt, 0);
		ip = sqlite3_column_text(stmt, 1);
		snprintf(e.ip, sizeof(e.ip), "%s", ip ? (const char *)ip : "");
		e.when = ks_sqlite_column_time(stmt, 2, 0);
		e.user_id = sqlite3_column_int64(stmt, 3);
		e.success = sqlite3_column_int(stmt, 4) != 0;
		ret = fn(&e, arg);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = ks_sqlite_error(err, s->db, rc, func, "sqlite3_step",
				      s->path);
	sqlite3_reset(stmt);
	return ret;
}

static int ks_sqlite_auth_log_list(struct ks_store *store, int64_t after_id,
				   ks_auth_log_fn fn, void *arg,
				   struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_downcast(store);
	int ret;

	pthread_mutex_lock(&s->lock);
	ret = ks_sqlite_log_list_locked(s, after_id, fn, arg,
					"ks_sqlite_auth_log_list", err);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

static int ks_sqlite_txn_auth_log_list(struct ks_txn *txn, int64_t after_id,
				       ks_auth_log_fn fn, void *arg,
				       struct ks_err *err)
{
	return ks_sqlite_log_list_locked(ks_sqlite_txn_store(txn), after_id, fn,
					 arg, "ks_sqlite_txn_auth_log_list",
					 err);
}

static int ks_sqlite_log_purge_txn(struct ks_txn *txn, void *arg,
				   struct ks_err *err)
{
	struct ks_sqlite_store *s = ks_sqlite_txn_store(txn);
	struct ks_sqlite_acct_args *a = arg;
	sqlite3_stmt *res = s->acct[KS_SQLITE_LOG_PURGE_RESULTS];
	sqlite3_stmt *logs = s->acct[KS_SQLITE_LOG_PURGE];
	int ret;

	ret = ks_sqlite_step_done(s, res, sqlite3_bind_int64(res, 1, a->when),
				  a->func, err);
	if (!ret)
		ret = ks_sqlite_step_done(s, logs,
					  sqlite3_bind_int64(logs, 1, a->when),
					  a->func, err);
	if (!ret)
		a->count = (size_t)sqlite3_changes64(s->db);
	return ret;
}

static int ks_sqlite_auth_log_purge(struct ks_store *store, int64_t before,
				    size_t *count_out, struct ks_err *err)
{
	struct ks_sqlite_acct_args a = {.when = before,
					.func = "ks_sqlite_auth_log_purge"};
	int ret = ks_sqlite_write(store, ks_sqlite_log_purge_txn, &a, err);

	if (!ret && count_out)
		*count_out = a.count;
	return ret;
}

const struct ks_backend ks_backend_sqlite = {
	.name = "sqlite",
	.default_path = "totally_not_my_privateKeys.db",
	.open = ks_sqlite_open,
	.close = ks_sqlite_close,
	.put = ks_sqlite_put,
	.import = ks_sqlite_import,
	.get = ks_sqlite_get,
	.list = ks_sqlite_list,
	.version = ks_sqlite_version,
	.check = ks_sqlite_check,
	.life_list = ks_sqlite_life_list,
	.write = ks_sqlite_write,
	.txn_next_kid = ks_sqlite_txn_next_kid,
	.txn_put = ks_sqlite_txn_put,
	.txn_import = ks_sqlite_txn_import,
	.txn_update = ks_sqlite_txn_update,
	.txn_delete = ks_sqlite_txn_delete,
	.txn_list = ks_sqlite_txn_list,
	.txn_life_put = ks_sqlite_txn_life_put,
	.scrub = ks_sqlite_scrub,
	.user_add = ks_sqlite_user_add,
	.user_import = ks_sqlite_user_import,
	.user_get = ks_sqlite_user_get,
	.user_list = ks_sqlite_user_list,
	.user_set_hash = ks_sqlite_user_set_hash,
	.user_set_locked = ks_sqlite_user_set_locked,
	.user_set_login = ks_sqlite_user_set_login,
	.user_delete = ks_sqlite_user_delete,
	.auth_log_add = ks_sqlite_auth_log_add,
	.auth_log_list = ks_sqlite_auth_log_list,
	.auth_log_purge = ks_sqlite_auth_log_purge,
	.txn_user_list = ks_sqlite_txn_user_list,
	.txn_user_import = ks_sqlite_txn_user_import,
	.txn_auth_log_list = ks_sqlite_txn_auth_log_list,
	.txn_auth_log_import = ks_sqlite_txn_auth_log_import,
};
