/*
 * The fake store of ks_fake.h: a copy of the SQLite backend's table whose
 * store-level slots count the call, fail when told to, and otherwise pass
 * the call to a SQLite store underneath. Transactions are SQLite's own
 * (their base points at the SQLite store), so the txn_* slots are never
 * reached through this table.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ks_backend.h"
#include "ks_fake.h"

struct ks_fake_store {
	struct ks_store base;
	struct ks_store *inner;
};

static struct ks_backend ks_fake_table;
static atomic_ulong ks_fake_count[KS_FAKE_N];
static atomic_int ks_fake_rc[KS_FAKE_N];

void ks_fake_fail(enum ks_fake_op op, int rc)
{
	atomic_store(&ks_fake_rc[op], rc);
}

unsigned long ks_fake_calls(enum ks_fake_op op)
{
	return atomic_load(&ks_fake_count[op]);
}

static struct ks_store *ks_fake_inner(struct ks_store *store)
{
	if (store->be != &ks_fake_table)
		abort();
	return ((struct ks_fake_store *)store)->inner;
}

/* Count op; its injected error (with detail in err), or 0. */
static int ks_fake_enter(enum ks_fake_op op, struct ks_err *err)
{
	int rc;

	atomic_fetch_add(&ks_fake_count[op], 1);
	rc = atomic_load(&ks_fake_rc[op]);
	if (rc && err)
		snprintf(err->text, sizeof(err->text), "injected %s",
			 ks_err_name(rc));
	return rc;
}

/* A slot that counts, may fail, and passes the call on. */
#define KS_FAKE_SLOT(op, slot, params, ...)                     \
	static int ks_fake_##slot params                        \
	{                                                       \
		struct ks_store *in = ks_fake_inner(store);     \
		int rc = ks_fake_enter(op, err);                \
                                                                \
		return rc ? rc : in->be->slot(in, __VA_ARGS__); \
	}

KS_FAKE_SLOT(KS_FAKE_PUT, put,
	     (struct ks_store * store, const unsigned char *blob,
	      size_t blob_len, int64_t exp, int64_t *kid_out,
	      struct ks_err *err),
	     blob, blob_len, exp, kid_out, err)
KS_FAKE_SLOT(KS_FAKE_IMPORT, import,
	     (struct ks_store * store, const struct ks_record *rec,
	      struct ks_err *err),
	     rec, err)
KS_FAKE_SLOT(KS_FAKE_GET, get,
	     (struct ks_store * store, int64_t kid, struct ks_record *out,
	      struct ks_err *err),
	     kid, out, err)
KS_FAKE_SLOT(KS_FAKE_LIST, list,
	     (struct ks_store * store, int64_t exp_after, int64_t exp_until,
	      ks_list_fn fn, void *arg, struct ks_err *err),
	     exp_after, exp_until, fn, arg, err)
KS_FAKE_SLOT(KS_FAKE_VERSION, version,
	     (struct ks_store * store, uint64_t *out, struct ks_err *err), out,
	     err)
KS_FAKE_SLOT(KS_FAKE_CHECK, check,
	     (struct ks_store * store, struct ks_err *err), err)
KS_FAKE_SLOT(KS_FAKE_LIFE_LIST, life_list,
	     (struct ks_store * store, struct ks_txn *txn, ks_life_fn fn,
	      void *arg, struct ks_err *err),
	     txn, fn, arg, err)
KS_FAKE_SLOT(KS_FAKE_WRITE, write,
	     (struct ks_store * store, ks_txn_fn fn, void *arg,
	      struct ks_err *err),
	     fn, arg, err)
KS_FAKE_SLOT(KS_FAKE_USER_ADD, user_add,
	     (struct ks_store * store, const char *username,
	      const char *password_hash, const char *email, int64_t registered,
	      int64_t *id_out, struct ks_err *err),
	     username, password_hash, email, registered, id_out, err)
KS_FAKE_SLOT(KS_FAKE_USER_GET, user_get,
	     (struct ks_store * store, const char *username,
	      struct ks_user *out, struct ks_err *err),
	     username, out, err)
KS_FAKE_SLOT(KS_FAKE_USER_LIST, user_list,
	     (struct ks_store * store, ks_user_fn fn, void *arg,
	      struct ks_err *err),
	     fn, arg, err)
KS_FAKE_SLOT(KS_FAKE_USER_SET_HASH, user_set_hash,
	     (struct ks_store * store, int64_t id, const char *hash,
	      struct ks_err *err),
	     id, hash, err)
KS_FAKE_SLOT(KS_FAKE_USER_SET_LOGIN, user_set_login,
	     (struct ks_store * store, int64_t id, int64_t when,
	      struct ks_err *err),
	     id, when, err)
KS_FAKE_SLOT(KS_FAKE_AUTH_LOG_ADD, auth_log_add,
	     (struct ks_store * store, const struct ks_auth_log *entries,
	      size_t n, struct ks_err *err),
	     entries, n, err)

/* The slots tests do not fail: passed on, not counted. */
static int ks_fake_wait(struct ks_store *store, unsigned timeout_ms,
			struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->wait ? in->be->wait(in, timeout_ms, err)
			    : KS_EUNSUPPORTED;
}

static int ks_fake_scrub(struct ks_store *store, struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->scrub(in, err);
}

static int ks_fake_user_import(struct ks_store *store, const struct ks_user *u,
			       struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->user_import(in, u, err);
}

static int ks_fake_user_set_locked(struct ks_store *store, int64_t id,
				   int locked, struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->user_set_locked(in, id, locked, err);
}

static int ks_fake_user_delete(struct ks_store *store, int64_t id,
			       struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->user_delete(in, id, err);
}

static int ks_fake_auth_log_list(struct ks_store *store, int64_t after_id,
				 ks_auth_log_fn fn, void *arg,
				 struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->auth_log_list(in, after_id, fn, arg, err);
}

static int ks_fake_auth_log_purge(struct ks_store *store, int64_t before,
				  size_t *count_out, struct ks_err *err)
{
	struct ks_store *in = ks_fake_inner(store);

	return in->be->auth_log_purge(in, before, count_out, err);
}

static int ks_fake_open(struct ks_store **out, const struct ks_options *opts,
			struct ks_err *err)
{
	struct ks_fake_store *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return KS_ENOMEM;
	rc = ks_open(&s->inner, &ks_backend_sqlite, opts, err);
	if (rc) {
		free(s);
		return rc;
	}
	s->base.be = &ks_fake_table;
	*out = &s->base;
	return 0;
}

static void ks_fake_close(struct ks_store *store)
{
	ks_close(ks_fake_inner(store));
	free(store);
}

const struct ks_backend *ks_fake_backend(void)
{
	if (!ks_fake_table.name) {
		ks_fake_table = ks_backend_sqlite;
		ks_fake_table.open = ks_fake_open;
		ks_fake_table.close = ks_fake_close;
		ks_fake_table.put = ks_fake_put;
		ks_fake_table.import = ks_fake_import;
		ks_fake_table.get = ks_fake_get;
		ks_fake_table.list = ks_fake_list;
		ks_fake_table.version = ks_fake_version;
		ks_fake_table.check = ks_fake_check;
		ks_fake_table.wait = ks_fake_wait;
		ks_fake_table.life_list = ks_fake_life_list;
		ks_fake_table.write = ks_fake_write;
		ks_fake_table.scrub = ks_fake_scrub;
		ks_fake_table.user_add = ks_fake_user_add;
		ks_fake_table.user_import = ks_fake_user_import;
		ks_fake_table.user_get = ks_fake_user_get;
		ks_fake_table.user_list = ks_fake_user_list;
		ks_fake_table.user_set_hash = ks_fake_user_set_hash;
		ks_fake_table.user_set_locked = ks_fake_user_set_locked;
		ks_fake_table.user_set_login = ks_fake_user_set_login;
		ks_fake_table.user_delete = ks_fake_user_delete;
		ks_fake_table.auth_log_add = ks_fake_auth_log_add;
		ks_fake_table.auth_log_list = ks_fake_auth_log_list;
		ks_fake_table.auth_log_purge = ks_fake_auth_log_purge;
		ks_fake_table.name = "fake";
	}
	return &ks_fake_table;
}
