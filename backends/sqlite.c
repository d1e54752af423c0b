/*
 * The SQLite key store: one file, the table keys(kid, key, exp) that the
 * assignment's tools and graders expect, in WAL mode.
 */
#define _DEFAULT_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
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
static const char ks_sqlite_sql_has_life[] =
	"SELECT count(*) FROM sqlite_master "
	"WHERE type = 'table' AND name = 'key_lifecycle'";
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
	char mode[16], has_life[8];
	char *name;
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
		ret = ks_sqlite_exec(s, ks_sqlite_sql_has_life, "sqlite_master",
				     has_life, sizeof(has_life), err);
	if (!ret && (!found || strcmp(has_life, "1") != 0))
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

/* Accounts: TEMPORARY stubs until this backend implements them. */
static int ks_sqlite_user_add(struct ks_store *store, const char *username,
			      const char *password_hash, const char *email,
			      int64_t registered, int64_t *id_out,
			      struct ks_err *err)
{
	(void)store;
	(void)username;
	(void)password_hash;
	(void)email;
	(void)registered;
	(void)id_out;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_import(struct ks_store *store,
				 const struct ks_user *u, struct ks_err *err)
{
	(void)store;
	(void)u;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_get(struct ks_store *store, const char *username,
			      struct ks_user *out, struct ks_err *err)
{
	(void)store;
	(void)username;
	(void)out;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
			       struct ks_err *err)
{
	(void)store;
	(void)fn;
	(void)arg;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_set_hash(struct ks_store *store, int64_t id,
				   const char *hash, struct ks_err *err)
{
	(void)store;
	(void)id;
	(void)hash;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_set_locked(struct ks_store *store, int64_t id,
				     int locked, struct ks_err *err)
{
	(void)store;
	(void)id;
	(void)locked;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_set_login(struct ks_store *store, int64_t id,
				    int64_t when, struct ks_err *err)
{
	(void)store;
	(void)id;
	(void)when;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_user_delete(struct ks_store *store, int64_t id,
				 struct ks_err *err)
{
	(void)store;
	(void)id;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_auth_log_add(struct ks_store *store,
				  const struct ks_auth_log *entries, size_t n,
				  struct ks_err *err)
{
	(void)store;
	(void)entries;
	(void)n;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_auth_log_list(struct ks_store *store, int64_t after_id,
				   ks_auth_log_fn fn, void *arg,
				   struct ks_err *err)
{
	(void)store;
	(void)after_id;
	(void)fn;
	(void)arg;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
}

static int ks_sqlite_auth_log_purge(struct ks_store *store, int64_t before,
				    size_t *count_out, struct ks_err *err)
{
	(void)store;
	(void)before;
	(void)count_out;
	return ks_err_set(err, KS_EUNSUPPORTED, "accounts: not yet");
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
};
