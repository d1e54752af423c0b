/*
 * The key store: where jwksd keeps its signing keys.
 *
 * A store holds opaque records. Each record is a kid (a positive integer the
 * store assigns, that only grows and is never reused), a blob (the private key
 * bytes the signer produced; the store never looks inside) and an expiry
 * (seconds since the Unix epoch). Stores know nothing about cryptography.
 *
 * Several implementations ("backends") are compiled in; ks_backend_find()
 * picks one by name. Callers use only the ks_* functions below, which
 * dispatch to the backend; they never see the backend's table or its native
 * error codes (SQLITE_*, MDB_*), which are translated to KS_E* at the
 * backend's edge.
 *
 * Thread safety: one open store may be used from several threads; each
 * backend serializes access to its handle as it needs. Several processes may
 * open the same store at once.
 */
#ifndef JWKS_KEYSTORE_H
#define JWKS_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"

struct ks_backend;
struct ks_store;

/*
 * One stored key. Filled by ks_get() and passed to ks_list() callbacks.
 * After ks_get(), the caller owns blob and frees it with ks_record_release(),
 * which wipes it first (it is private key material).
 */
struct ks_record {
	int64_t kid;
	unsigned char *blob;
	size_t blob_len;
	int64_t exp;
};

/* Wipe and free rec->blob and reset rec to empty. rec may be NULL. */
void ks_record_release(struct ks_record *rec);

/*
 * Options for ks_open(). Start from KS_OPTIONS_INIT and set what you need.
 *
 * path: the store's file (or directory, for backends that use one). NULL
 *       means the backend's default name in the current directory.
 * lmdb_map_size: the LMDB map size in bytes (ignored by other backends).
 * max_readers: the number of threads that may read at once (LMDB sizes its
 *       reader table from it; ignored by other backends).
 * busy_timeout_ms: how long a write waits for another process's lock
 *       (and, for a network store, how long one operation may take).
 * pg_schema: the PostgreSQL schema that holds the tables (NULL: "jwksd";
 *       ignored by other backends).
 */
struct ks_options {
	const char *path;
	size_t lmdb_map_size;
	unsigned max_readers;
	int busy_timeout_ms;
	const char *pg_schema;
};

#define KS_OPTIONS_INIT                                          \
	{                                                        \
		.path = NULL, .lmdb_map_size = (size_t)64 << 20, \
		.max_readers = 126, .busy_timeout_ms = 5000,     \
		.pg_schema = NULL,                               \
	}

/*
 * The compiled-in backends, NULL-terminated; the first is the default.
 * Ownership: borrowed (static storage).
 */
extern const struct ks_backend *const ks_backends[];

/*
 * The backend called name, or the default backend when name is NULL.
 * Returns NULL for an unknown name (list ks_backends[] for the valid ones).
 */
const struct ks_backend *ks_backend_find(const char *name);

/* The backend's name ("sqlite"). Ownership: borrowed. */
const char *ks_backend_name(const struct ks_backend *be);

/* The file name the backend uses when ks_options.path is NULL. */
const char *ks_backend_default_path(const struct ks_backend *be);

/*
 * Whether name may be a ks_options.pg_schema: 1 to 63 lower-case letters,
 * digits and underscores, not starting with a digit (it then needs no
 * quoting anywhere, also inside a string literal).
 */
int ks_valid_schema_name(const char *name);

/*
 * Write into buf (capacity cap, always NUL-terminated when cap > 0) how
 * the store at path is shown to people: in log lines, errors, `keys list`.
 * For a file store that is the path; for a network store its connection
 * string with any password removed (a password never reaches a log).
 * path NULL means the backend's default. Returns 0, or KS_EINVAL when the
 * string cannot be parsed (buf then says "(unparsable connection string)").
 */
int ks_describe(const struct ks_backend *be, const char *path, char *buf,
		size_t cap);

/*
 * Open (creating if needed) the store at opts->path with backend be.
 * A new store's files are created readable and writable by their owner
 * only (0600). On success *out is an open store the caller closes with
 * ks_close(); on failure *out is NULL.
 *
 * Returns 0, KS_EACCES (no permission for the file or its directory),
 * KS_ECORRUPT (not a store of this backend, or damaged), KS_EIO otherwise.
 * Aborts if be has a NULL mandatory slot (a programmer error).
 */
int ks_open(struct ks_store **out, const struct ks_backend *be,
	    const struct ks_options *opts, struct ks_err *err);

/* Close the store and free it. store may be NULL. */
void ks_close(struct ks_store *store);

/* The backend an open store uses. Ownership: borrowed. */
const struct ks_backend *ks_store_backend(const struct ks_store *store);

/*
 * Add a new key: the store assigns the kid, greater than every kid it ever
 * assigned, and writes the record durably before returning. *kid_out (may
 * be NULL) receives it.
 *
 * Returns 0, KS_ENOSPC (disk or map full), KS_EBUSY (another process held
 * the write lock past the busy timeout), KS_EACCES (read-only store), KS_EIO.
 */
int ks_put(struct ks_store *store, const unsigned char *blob, size_t blob_len,
	   int64_t exp, int64_t *kid_out, struct ks_err *err);

/*
 * Add a record with a given kid, as it is (used to copy keys between stores
 * without changing a kid). Later ks_put() calls assign kids above it.
 *
 * Returns 0, KS_EEXISTS (that kid is taken), KS_EINVAL (kid < 1) or the
 * errors of ks_put().
 */
int ks_import(struct ks_store *store, const struct ks_record *rec,
	      struct ks_err *err);

/*
 * Read the record with this kid into *out, which the caller releases with
 * ks_record_release(). Returns 0, KS_ENOTFOUND, KS_EIO.
 */
int ks_get(struct ks_store *store, int64_t kid, struct ks_record *out,
	   struct ks_err *err);

/*
 * Called once per record by ks_list(). rec and its blob are borrowed and
 * valid only during the call: copy what you keep. The callback must not
 * call back into the same store. Return 0 to go on, any
 * other value to stop the walk (ks_list() then returns that value).
 */
typedef int (*ks_list_fn)(const struct ks_record *rec, void *arg);

/*
 * Call fn for every record whose expiry is in (exp_after, exp_until], in
 * increasing kid order. exp_after == INT64_MIN means no lower bound: the
 * range is then [INT64_MIN, exp_until], so INT64_MIN and INT64_MAX walk
 * every record, those whose exp is INT64_MIN included. Every backend keeps
 * this rule (ks_txn_list() too).
 *
 * Returns 0, fn's non-zero value, KS_EIO.
 */
int ks_list(struct ks_store *store, int64_t exp_after, int64_t exp_until,
	    ks_list_fn fn, void *arg, struct ks_err *err);

/*
 * A counter that changes whenever the store has changed, by this process or
 * another, since the last call, and stays the same when it has not. Cheap:
 * no record is read. Callers compare successive values; the numbers mean
 * nothing else.
 *
 * Returns 0, KS_EUNSUPPORTED (the backend cannot tell: poll by re-reading),
 * KS_EIO.
 */
int ks_version(struct ks_store *store, uint64_t *out, struct ks_err *err);

/*
 * Wait up to timeout_ms for a sign that some process changed the store
 * (PostgreSQL: a NOTIFY on a connection of its own), so that a caller
 * polling ks_version() hears of a change sooner. Returns early only for
 * such a sign, which may be spurious; the caller reads ks_version() either
 * way, which stays the truth (notifications are lost across reconnects).
 * A store that cannot listen right now still waits the whole timeout.
 *
 * Returns 1 (a change was announced), 0 (the timeout passed),
 * KS_EUNSUPPORTED at once (the backend has no notifications: the caller
 * sleeps itself).
 */
int ks_wait(struct ks_store *store, unsigned timeout_ms, struct ks_err *err);

/*
 * Check the store's own consistency (SQLite's integrity_check, ...).
 * Returns 0, KS_ECORRUPT, KS_EUNSUPPORTED, KS_EIO.
 */
int ks_check(struct ks_store *store, struct ks_err *err);

/*
 * Lifecycle metadata of one key, kept by the store beside its record (in a
 * table or database of its own, never in the record itself). Times are
 * seconds since the Unix epoch; the store gives them no meaning.
 *
 * created: when the key was made.
 * activate_at: when it may start signing.
 * retire_at: when it stops signing (it stays published until its exp).
 * revoked_at: when it was revoked, or KS_NEVER.
 *
 * A record without lifecycle metadata (written by another tool, or before
 * this existed) has none: ks_life_list() does not report it.
 */
#define KS_NEVER INT64_MAX

struct ks_life {
	int64_t kid;
	int64_t created;
	int64_t activate_at;
	int64_t retire_at;
	int64_t revoked_at;
};

/*
 * Called once per lifecycle entry, in increasing kid order. life is
 * borrowed for the call. Return 0 to go on, other values to stop.
 */
typedef int (*ks_life_fn)(const struct ks_life *life, void *arg);

/*
 * Call fn for every lifecycle entry. A caller that reads both records and
 * lifecycle entries lists the records first: an entry is written in the
 * same transaction as its record, so every record seen then has its entry
 * visible to the later call.
 *
 * Returns 0, fn's non-zero value, KS_EIO.
 */
int ks_life_list(struct ks_store *store, ks_life_fn fn, void *arg,
		 struct ks_err *err);

/*
 * Write transactions. ks_write() runs fn inside one write transaction of
 * the store: at most one runs at a time across every process that has the
 * store open, and fn sees the store as it is at that moment (a decision
 * taken inside fn cannot race with another process). When fn returns 0
 * everything it did through txn is committed durably, at once; when it
 * returns anything else nothing is, and ks_write() returns that value.
 *
 * Inside fn use only the ks_txn_* functions on txn, never the ks_*
 * functions on the store (that would deadlock), and keep it short: other
 * writers wait for it. txn is valid only during the call.
 *
 * Returns 0, fn's value, KS_EBUSY (the write lock was held past the busy
 * timeout), KS_ENOSPC, KS_EACCES, KS_EIO.
 */
struct ks_txn;
typedef int (*ks_txn_fn)(struct ks_txn *txn, void *arg, struct ks_err *err);
int ks_write(struct ks_store *store, ks_txn_fn fn, void *arg,
	     struct ks_err *err);

/*
 * The kid ks_txn_put() will assign next in this transaction, so that a blob
 * can be bound to its row (sealed with its kid) before it is written.
 */
int ks_txn_next_kid(struct ks_txn *txn, int64_t *out, struct ks_err *err);

/*
 * Add a new record as ks_put() does; its kid is the one ks_txn_next_kid()
 * gave. *kid_out (may be NULL) receives it.
 */
int ks_txn_put(struct ks_txn *txn, const unsigned char *blob, size_t blob_len,
	       int64_t exp, int64_t *kid_out, struct ks_err *err);

/*
 * Add a record with a given kid as ks_import() does, inside the
 * transaction (ks_copy() imports records and their lifecycle entries in
 * one transaction). Returns 0, KS_EEXISTS, KS_EINVAL, or a store error.
 */
int ks_txn_import(struct ks_txn *txn, const struct ks_record *rec,
		  struct ks_err *err);

/*
 * Replace the blob and the expiry of the record rec->kid.
 * Returns 0, KS_ENOTFOUND, KS_EINVAL (an empty blob), or a store error.
 */
int ks_txn_update(struct ks_txn *txn, const struct ks_record *rec,
		  struct ks_err *err);

/*
 * Remove the record kid and its lifecycle entry. The kid is never assigned
 * again. Returns 0, KS_ENOTFOUND, or a store error.
 */
int ks_txn_delete(struct ks_txn *txn, int64_t kid, struct ks_err *err);

/*
 * ks_list() and ks_life_list() inside the transaction: they see what it
 * wrote so far. The callback must not call other ks_txn_* functions.
 */
int ks_txn_list(struct ks_txn *txn, int64_t exp_after, int64_t exp_until,
		ks_list_fn fn, void *arg, struct ks_err *err);
int ks_txn_life_list(struct ks_txn *txn, ks_life_fn fn, void *arg,
		     struct ks_err *err);

/*
 * Write the lifecycle entry of life->kid, replacing any it had. The record
 * must exist. Returns 0, KS_ENOTFOUND, KS_EINVAL, or a store error.
 */
int ks_txn_life_put(struct ks_txn *txn, const struct ks_life *life,
		    struct ks_err *err);

/*
 * Make sure no earlier copy of a replaced or removed record stays readable
 * in the store's files (after private keys were encrypted in place, say).
 * SQLite zeroes what it frees (secure_delete, set at open), then rebuilds
 * the file and empties its WAL; LMDB, which never overwrites a page it
 * freed, rewrites the file compacted, which it can only do when no other
 * process has the store open. No other call may run on the store meanwhile.
 *
 * Returns 0, KS_EBUSY (another process, or another handle in this process,
 * has the store open: nothing was done), KS_EUNSUPPORTED, or store errors.
 */
int ks_scrub(struct ks_store *store, struct ks_err *err);

/*
 * Accounts: users who log in for tokens, and the log of authentication
 * attempts. Stored beside the keys, in tables (databases) of their own:
 * SQLite keeps the assignment's `users` and `auth_logs` tables exactly, and
 * puts anything more (a user's lock, an attempt's outcome) in tables of
 * its own. Times are seconds since the Unix epoch in this interface;
 * SQLite stores them as CURRENT_TIMESTAMP writes them ("YYYY-MM-DD
 * HH:MM:SS", UTC), the others as they see fit. KS_NEVER: no time (a user
 * who never logged in).
 *
 * id: a positive integer the store assigns, that only grows and is never
 *     reused. username: 1 to 64 bytes, unique. email: NULL for none, unique
 *     when set. password_hash: a PHC string (Argon2id), opaque here.
 */
struct ks_user {
	int64_t id;
	char *username;
	char *email;
	char *password_hash;
	int64_t registered;
	int64_t last_login;
	int locked;
};

/* Free the strings of u (filled by ks_user_get()) and reset it. */
void ks_user_release(struct ks_user *u);

/*
 * Add a user: username, password_hash, email (may be NULL), registered
 * at `registered`, not locked, never logged in. *id_out (may be NULL)
 * receives the id.
 * Returns 0, KS_EEXISTS (the username, or the email, is taken: err says
 * which), KS_EBUSY, KS_EUNAVAIL, KS_EIO.
 */
int ks_user_add(struct ks_store *store, const char *username,
		const char *password_hash, const char *email,
		int64_t registered, int64_t *id_out, struct ks_err *err);

/*
 * Import a user as it is, id included (jwksd copy). Returns 0, KS_EEXISTS
 * (id, username or email taken), or the errors of ks_user_add().
 */
int ks_user_import(struct ks_store *store, const struct ks_user *u,
		   struct ks_err *err);

/*
 * Read the user called username into *out (the caller releases it with
 * ks_user_release()). Returns 0, KS_ENOTFOUND, KS_EUNAVAIL, KS_EIO.
 */
int ks_user_get(struct ks_store *store, const char *username,
		struct ks_user *out, struct ks_err *err);

/*
 * Called once per user by ks_user_list(), in increasing id order; u and
 * its strings are borrowed for the call. Return 0 to go on.
 */
typedef int (*ks_user_fn)(const struct ks_user *u, void *arg);

/* Every user. Returns 0, fn's non-zero value, KS_EIO. */
int ks_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
		 struct ks_err *err);

/*
 * Change one user. What: set the password hash (hash), lock or unlock
 * (locked), record a successful login (last_login), each for the user
 * with this id. Returns 0, KS_ENOTFOUND, KS_EBUSY, KS_EUNAVAIL, KS_EIO.
 */
int ks_user_set_hash(struct ks_store *store, int64_t id, const char *hash,
		     struct ks_err *err);
int ks_user_set_locked(struct ks_store *store, int64_t id, int locked,
		       struct ks_err *err);
int ks_user_set_login(struct ks_store *store, int64_t id, int64_t when,
		      struct ks_err *err);

/*
 * Delete the user with this id. Its auth-log rows stay, their user id
 * set to none (the log outlives accounts). Returns 0, KS_ENOTFOUND, or
 * the errors of ks_user_add().
 */
int ks_user_delete(struct ks_store *store, int64_t id, struct ks_err *err);

/*
 * One authentication attempt. id: assigned by the store (ignored by
 * ks_auth_log_add(), which assigns it). ip: the client address as text.
 * user_id: 0 when the username was unknown. success: 1 or 0.
 */
struct ks_auth_log {
	int64_t id;
	char ip[64];
	int64_t when;
	int64_t user_id;
	int success;
};

/*
 * Append n entries in one transaction, in order (all or none). A user_id
 * that names no user (one deleted since the attempt) is stored as 0.
 * Returns 0, KS_EBUSY, KS_EUNAVAIL, KS_ENOSPC, KS_EIO.
 */
int ks_auth_log_add(struct ks_store *store, const struct ks_auth_log *entries,
		    size_t n, struct ks_err *err);

/*
 * Called once per entry by ks_auth_log_list(), in increasing id order.
 * Return 0 to go on.
 */
typedef int (*ks_auth_log_fn)(const struct ks_auth_log *entry, void *arg);

/*
 * Every entry with id greater than after_id. Returns 0, fn's non-zero
 * value, KS_EIO.
 */
int ks_auth_log_list(struct ks_store *store, int64_t after_id,
		     ks_auth_log_fn fn, void *arg, struct ks_err *err);

/*
 * Delete every entry older than before (when < before), in one
 * transaction; *count_out (may be NULL) receives the number. Returns 0,
 * KS_EBUSY, KS_EUNAVAIL, KS_EIO.
 */
int ks_auth_log_purge(struct ks_store *store, int64_t before, size_t *count_out,
		      struct ks_err *err);

/*
 * Accounts inside a write transaction of ks_write(), so that ks_copy() can
 * copy users and the auth log with the keys, all or nothing. The rules of
 * ks_write() and the ks_txn_* functions apply; the list callbacks must not
 * call other ks_txn_* functions. A backend without them returns
 * KS_EUNSUPPORTED (optional slots).
 *
 * ks_txn_user_list(), ks_txn_user_import(), ks_txn_auth_log_list(): as
 * ks_user_list(), ks_user_import() and ks_auth_log_list(), seeing what the
 * transaction wrote so far.
 * ks_txn_auth_log_import(): append n entries keeping their ids (each >= 1);
 * later ks_auth_log_add() calls assign ids above them. Returns 0,
 * KS_EEXISTS (an id is taken), KS_EINVAL, or a store error.
 */
int ks_txn_user_list(struct ks_txn *txn, ks_user_fn fn, void *arg,
		     struct ks_err *err);
int ks_txn_user_import(struct ks_txn *txn, const struct ks_user *u,
		       struct ks_err *err);
int ks_txn_auth_log_list(struct ks_txn *txn, int64_t after_id,
			 ks_auth_log_fn fn, void *arg, struct ks_err *err);
int ks_txn_auth_log_import(struct ks_txn *txn,
			   const struct ks_auth_log *entries, size_t n,
			   struct ks_err *err);

/*
 * For bsearch() and qsort() over arrays of kids, or of structs whose first
 * member is an int64_t kid (struct ks_record, struct ks_life, ...):
 * increasing kid order.
 */
int ks_kid_cmp(const void *a, const void *b);

/*
 * A growable array of record copies, for callers that must look at records
 * after a listing ends (ks_list() hands them out borrowed).
 * ks_record_set_add() is a ks_list_fn: pass the set as arg. Release with
 * ks_record_set_release(), which wipes every blob. Start from {0}.
 */
struct ks_record_set {
	struct ks_record *rec;
	size_t n, cap;
};

int ks_record_set_add(const struct ks_record *rec, void *arg);
void ks_record_set_release(struct ks_record_set *set);

/*
 * What ks_copy() copies and how. KS_COPY_MERGE: the destination may hold
 * data already (see below). KS_COPY_AUTH_LOG: the auth log too.
 */
enum ks_copy_flags {
	KS_COPY_MERGE = 1 << 0,
	KS_COPY_AUTH_LOG = 1 << 1,
};

/* What ks_copy() wrote: records, users, auth-log entries. */
struct ks_copy_counts {
	size_t keys;
	size_t users;
	size_t auth_logs;
};

/*
 * Copy every record of src into dst (any two backends), keeping each kid,
 * blob and expiry, so that tokens signed before a switch of backend still
 * verify, and the lifecycle entries of the records copied; then every user
 * (id, username, email, hash, times and lock kept) and, with
 * KS_COPY_AUTH_LOG, every auth-log entry (ids kept). src is read first;
 * then everything is checked and written in one ks_write() transaction of
 * dst, so that dst either gets all of it or, on any failure, stays exactly
 * as it was. Without KS_COPY_MERGE, dst must hold no record, and no user
 * (no auth-log entry) when src has some to copy. With it, a kid already in
 * dst with the same blob and expiry is skipped (it gets src's lifecycle
 * entry only when it has none in dst), as is a user (an entry) with the
 * same id and the same content; one with other content, or a user whose
 * username or email another user of dst has, stops the copy before
 * anything is written. Nothing in dst is ever replaced or removed. *out
 * (may be NULL) receives the numbers written (zeros on failure).
 *
 * Returns 0, KS_EEXISTS (dst not empty, or a conflict), KS_EUNSUPPORTED
 * (dst's backend cannot import accounts in a transaction), or the errors
 * of ks_list() and ks_write().
 */
int ks_copy(struct ks_store *dst, struct ks_store *src, unsigned flags,
	    struct ks_copy_counts *out, struct ks_err *err);

#endif /* JWKS_KEYSTORE_H */
