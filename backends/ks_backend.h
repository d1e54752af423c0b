/*
 * The key store backend table. INTERNAL: only files in backends/ include
 * this header (the include_boundaries test enforces it). Everything else
 * uses the ks_* functions of include/keystore.h.
 *
 * A backend is one `const struct ks_backend` filled with designated
 * initializers, declared below and listed in ks_backends[]
 * (backends/registry.c). Every open store begins with `struct ks_store
 * base;` whose `be` points at its backend's table, so the dispatchers in
 * registry.c can find the slot.
 * Each backend has one downcast helper that aborts when `be` is not its own
 * table.
 *
 * Rules for every slot: return 0 or a negative KS_E* code, never a native
 * one (SQLITE_*, MDB_*); write detail for the log into err (may be NULL);
 * never keep a pointer into the caller's buffers after returning; copy data
 * out of the library before its statement or transaction ends.
 */
#ifndef JWKS_KS_BACKEND_H
#define JWKS_KS_BACKEND_H

#include <stdlib.h>

#include "keystore.h"

/* The base every backend's store struct embeds as its first member. */
struct ks_store {
	const struct ks_backend *be;
};

/*
 * The base every backend's write transaction embeds as its first member;
 * store is the store ks_write() was called on.
 */
struct ks_txn {
	struct ks_store *store;
};

struct ks_backend {
	/* The name users pass to --backend. Mandatory. */
	const char *name;

	/* The store file used when ks_options.path is NULL. Mandatory. */
	const char *default_path;

	/*
	 * Mandatory. Open or create the store described by opts (path already
	 * resolved, never NULL). Creates the schema on first use, files with
	 * mode 0600. On success sets *out to a new store whose base.be is this
	 * table. Called once per store; the store may then be used from
	 * several threads until close.
	 */
	int (*open)(struct ks_store **out, const struct ks_options *opts,
		    struct ks_err *err);

	/* Mandatory. Release everything open() acquired. store is not NULL. */
	void (*close)(struct ks_store *store);

	/* Mandatory. See ks_put() in keystore.h. */
	int (*put)(struct ks_store *store, const unsigned char *blob,
		   size_t blob_len, int64_t exp, int64_t *kid_out,
		   struct ks_err *err);

	/* Mandatory. See ks_import(). */
	int (*import)(struct ks_store *store, const struct ks_record *rec,
		      struct ks_err *err);

	/*
	 * Mandatory. See ks_get(). The blob in *out is allocated with
	 * malloc() and released by ks_record_release().
	 */
	int (*get)(struct ks_store *store, int64_t kid, struct ks_record *out,
		   struct ks_err *err);

	/* Mandatory. See ks_list(). */
	int (*list)(struct ks_store *store, int64_t exp_after,
		    int64_t exp_until, ks_list_fn fn, void *arg,
		    struct ks_err *err);

	/*
	 * Optional (NULL: ks_version() returns KS_EUNSUPPORTED). A cheap
	 * counter that changes when any process changed the store.
	 */
	int (*version)(struct ks_store *store, uint64_t *out,
		       struct ks_err *err);

	/* Optional (NULL: ks_check() returns KS_EUNSUPPORTED). */
	int (*check)(struct ks_store *store, struct ks_err *err);

	/*
	 * Optional (NULL: ks_wait() returns KS_EUNSUPPORTED). See ks_wait():
	 * block up to timeout_ms, returning 1 early on a change
	 * notification, 0 after the timeout. Must not hold the lock the other slots use while it
	 * waits (it runs beside them on another thread).
	 */
	int (*wait)(struct ks_store *store, unsigned timeout_ms,
		    struct ks_err *err);

	/*
	 * Optional (NULL: the path as it is). See ks_describe(); path is
	 * never NULL here.
	 */
	int (*describe)(const char *path, char *buf, size_t cap);

	/*
	 * Mandatory. See ks_life_list() (txn NULL) and ks_txn_life_list()
	 * (txn the transaction ks_write() handed to its callback).
	 */
	int (*life_list)(struct ks_store *store, struct ks_txn *txn,
			 ks_life_fn fn, void *arg, struct ks_err *err);

	/*
	 * Mandatory. See ks_write(): begin a write transaction that excludes
	 * every other writer (of any process), call fn with a struct whose
	 * first member is a struct ks_txn, commit when fn returns 0, roll
	 * back otherwise. The ks_txn_* slots below are only ever called with
	 * that txn, from inside fn.
	 */
	int (*write)(struct ks_store *store, ks_txn_fn fn, void *arg,
		     struct ks_err *err);

	/* Mandatory. See the ks_txn_* functions of keystore.h. */
	int (*txn_next_kid)(struct ks_txn *txn, int64_t *out,
			    struct ks_err *err);
	int (*txn_put)(struct ks_txn *txn, const unsigned char *blob,
		       size_t blob_len, int64_t exp, int64_t *kid_out,
		       struct ks_err *err);
	int (*txn_import)(struct ks_txn *txn, const struct ks_record *rec,
			  struct ks_err *err);
	int (*txn_update)(struct ks_txn *txn, const struct ks_record *rec,
			  struct ks_err *err);
	int (*txn_delete)(struct ks_txn *txn, int64_t kid, struct ks_err *err);
	int (*txn_list)(struct ks_txn *txn, int64_t exp_after,
			int64_t exp_until, ks_list_fn fn, void *arg,
			struct ks_err *err);
	int (*txn_life_put)(struct ks_txn *txn, const struct ks_life *life,
			    struct ks_err *err);

	/* Optional (NULL: ks_scrub() returns KS_EUNSUPPORTED). */
	int (*scrub)(struct ks_store *store, struct ks_err *err);

	/*
	 * Accounts, all mandatory: see the ks_user_* and ks_auth_log_*
	 * functions of keystore.h. Strings handed to user_get's *out are
	 * malloc()ed (ks_user_release() frees them); user_import's u is the
	 * caller's. Each call is its own transaction, atomic and durable,
	 * safe against other processes on the same store.
	 */
	int (*user_add)(struct ks_store *store, const char *username,
			const char *password_hash, const char *email,
			int64_t registered, int64_t *id_out,
			struct ks_err *err);
	int (*user_import)(struct ks_store *store, const struct ks_user *u,
			   struct ks_err *err);
	int (*user_get)(struct ks_store *store, const char *username,
			struct ks_user *out, struct ks_err *err);
	int (*user_list)(struct ks_store *store, ks_user_fn fn, void *arg,
			 struct ks_err *err);
	int (*user_set_hash)(struct ks_store *store, int64_t id,
			     const char *hash, struct ks_err *err);
	int (*user_set_locked)(struct ks_store *store, int64_t id, int locked,
			       struct ks_err *err);
	int (*user_set_login)(struct ks_store *store, int64_t id, int64_t when,
			      struct ks_err *err);
	int (*user_delete)(struct ks_store *store, int64_t id,
			   struct ks_err *err);
	int (*auth_log_add)(struct ks_store *store,
			    const struct ks_auth_log *entries, size_t n,
			    struct ks_err *err);
	int (*auth_log_list)(struct ks_store *store, int64_t after_id,
			     ks_auth_log_fn fn, void *arg, struct ks_err *err);
	int (*auth_log_purge)(struct ks_store *store, int64_t before,
			      size_t *count_out, struct ks_err *err);

	/*
	 * Optional (NULL: KS_EUNSUPPORTED): the accounts inside a write
	 * transaction, see ks_txn_user_list() and the others in keystore.h.
	 * Called only with the txn ks_write() handed to its callback.
	 */
	int (*txn_user_list)(struct ks_txn *txn, ks_user_fn fn, void *arg,
			     struct ks_err *err);
	int (*txn_user_import)(struct ks_txn *txn, const struct ks_user *u,
			       struct ks_err *err);
	int (*txn_auth_log_list)(struct ks_txn *txn, int64_t after_id,
				 ks_auth_log_fn fn, void *arg,
				 struct ks_err *err);
	int (*txn_auth_log_import)(struct ks_txn *txn,
				   const struct ks_auth_log *entries, size_t n,
				   struct ks_err *err);
};

extern const struct ks_backend ks_backend_sqlite;
#if defined(JWKS_WITH_LMDB) && JWKS_WITH_LMDB
extern const struct ks_backend ks_backend_lmdb;
#endif
#if defined(JWKS_WITH_POSTGRES) && JWKS_WITH_POSTGRES
extern const struct ks_backend ks_backend_postgres;
#endif

/* Abort with a message: a programmer error, never a runtime condition. */
#define KS_BUG(...)                                                  \
	do {                                                         \
		fprintf(stderr, "BUG: %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                        \
		fputc('\n', stderr);                                 \
		abort();                                             \
	} while (0)

#endif /* JWKS_KS_BACKEND_H */
