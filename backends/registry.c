/*
 * The compiled-in key store backends and the ks_* dispatchers of keystore.h.
 */
#define _DEFAULT_SOURCE

#include <stdlib.h>
#include <string.h>

#include "ks_backend.h"

const struct ks_backend *const ks_backends[] = {
	&ks_backend_sqlite,
#if defined(JWKS_WITH_LMDB) && JWKS_WITH_LMDB
	&ks_backend_lmdb,
#endif
#if defined(JWKS_WITH_POSTGRES) && JWKS_WITH_POSTGRES
	&ks_backend_postgres,
#endif
	NULL,
};

/*
 * Refuse a table with a NULL mandatory slot, as git_refdb_set_backend()
 * does: that is a programmer error, found on the first use of the table.
 */
static void ks_backend_validate(const struct ks_backend *be)
{
	const char *name = be->name ? be->name : "(unnamed)";

#define KS__REQUIRE(slot)                                                 \
	do {                                                              \
		if (!be->slot)                                            \
			KS_BUG("backend '%s' has no mandatory slot '%s'", \
			       name, #slot);                              \
	} while (0)
	KS__REQUIRE(name);
	KS__REQUIRE(default_path);
	KS__REQUIRE(open);
	KS__REQUIRE(close);
	KS__REQUIRE(put);
	KS__REQUIRE(import);
	KS__REQUIRE(get);
	KS__REQUIRE(list);
	KS__REQUIRE(life_list);
	KS__REQUIRE(write);
	KS__REQUIRE(txn_next_kid);
	KS__REQUIRE(txn_put);
	KS__REQUIRE(txn_import);
	KS__REQUIRE(txn_update);
	KS__REQUIRE(txn_delete);
	KS__REQUIRE(txn_list);
	KS__REQUIRE(txn_life_put);
	KS__REQUIRE(user_add);
	KS__REQUIRE(user_import);
	KS__REQUIRE(user_get);
	KS__REQUIRE(user_list);
	KS__REQUIRE(user_set_hash);
	KS__REQUIRE(user_set_locked);
	KS__REQUIRE(user_set_login);
	KS__REQUIRE(user_delete);
	KS__REQUIRE(auth_log_add);
	KS__REQUIRE(auth_log_list);
	KS__REQUIRE(auth_log_purge);
#undef KS__REQUIRE
}

const struct ks_backend *ks_backend_find(const char *name)
{
	const struct ks_backend *const *be;

	for (be = ks_backends; *be; be++) {
		ks_backend_validate(*be);
		if (!name || strcmp((*be)->name, name) == 0)
			return *be;
	}
	return NULL;
}

const char *ks_backend_name(const struct ks_backend *be)
{
	return be ? be->name : NULL;
}

const char *ks_backend_default_path(const struct ks_backend *be)
{
	return be ? be->default_path : NULL;
}

void ks_record_release(struct ks_record *rec)
{
	if (!rec)
		return;
	if (rec->blob) {
		explicit_bzero(rec->blob, rec->blob_len);
		free(rec->blob);
	}
	memset(rec, 0, sizeof(*rec));
}

int ks_kid_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

int ks_record_set_add(const struct ks_record *rec, void *arg)
{
	struct ks_record_set *set = arg;
	struct ks_record *r;

	if (set->n == set->cap) {
		size_t cap = set->cap ? set->cap * 2 : 16;

		r = realloc(set->rec, cap * sizeof(*r));
		if (!r)
			return KS_ENOMEM;
		set->rec = r;
		set->cap = cap;
	}
	r = &set->rec[set->n];
	r->blob = malloc(rec->blob_len ? rec->blob_len : 1);
	if (!r->blob)
		return KS_ENOMEM;
	if (rec->blob_len)
		memcpy(r->blob, rec->blob, rec->blob_len);
	r->blob_len = rec->blob_len;
	r->kid = rec->kid;
	r->exp = rec->exp;
	set->n++;
	return 0;
}

void ks_record_set_release(struct ks_record_set *set)
{
	size_t i;

	for (i = 0; i < set->n; i++)
		ks_record_release(&set->rec[i]);
	free(set->rec);
	memset(set, 0, sizeof(*set));
}

int ks_open(struct ks_store **out, const struct ks_backend *be,
	    const struct ks_options *opts, struct ks_err *err)
{
	struct ks_options resolved;
	int rc;

	if (!out)
		return ks_err_set(err, KS_EINVAL, "ks_open: out is NULL");
	*out = NULL;
	if (!be)
		return ks_err_set(err, KS_EINVAL, "ks_open: backend is NULL");
	ks_backend_validate(be);
	if (!opts)
		return ks_err_set(err, KS_EINVAL, "ks_open: options are NULL");
	/* An empty path is a file store's error, a network store's default. */
	if (opts->path && !opts->path[0] && be->default_path[0])
		return ks_err_set(err, KS_EINVAL, "ks_open: path is empty");
	if (opts->busy_timeout_ms < 0)
		return ks_err_set(err, KS_EINVAL,
				  "ks_open: busy_timeout_ms %d is negative",
				  opts->busy_timeout_ms);

	resolved = *opts;
	if (!resolved.path)
		resolved.path = be->default_path;
	rc = be->open(out, &resolved, err);
	if (rc == 0 && (!*out || (*out)->be != be))
		KS_BUG("backend '%s' opened a store of another table",
		       be->name);
	if (rc > 0)
		KS_BUG("backend '%s' open returned %d", be->name, rc);
	if (rc != 0 && *out)
		KS_BUG("backend '%s' failed to open but set *out", be->name);
	return rc;
}

void ks_close(struct ks_store *store)
{
	if (store)
		store->be->close(store);
}

const struct ks_backend *ks_store_backend(const struct ks_store *store)
{
	return store ? store->be : NULL;
}

int ks_put(struct ks_store *store, const unsigned char *blob, size_t blob_len,
	   int64_t exp, int64_t *kid_out, struct ks_err *err)
{
	if (kid_out)
		*kid_out = 0;
	if (!store)
		return ks_err_set(err, KS_EINVAL, "ks_put: store is NULL");
	if (!blob || !blob_len)
		return ks_err_set(err, KS_EINVAL, "ks_put: blob is empty");
	return store->be->put(store, blob, blob_len, exp, kid_out, err);
}

int ks_import(struct ks_store *store, const struct ks_record *rec,
	      struct ks_err *err)
{
	if (!store || !rec)
		return ks_err_set(err, KS_EINVAL, "ks_import: %s is NULL",
				  store ? "record" : "store");
	if (rec->kid < 1)
		return ks_err_set(err, KS_EINVAL,
				  "ks_import: kid %lld is not positive",
				  (long long)rec->kid);
	if (!rec->blob || !rec->blob_len)
		return ks_err_set(err, KS_EINVAL,
				  "ks_import: kid %lld has an empty blob",
				  (long long)rec->kid);
	return store->be->import(store, rec, err);
}

int ks_get(struct ks_store *store, int64_t kid, struct ks_record *out,
	   struct ks_err *err)
{
	if (out)
		memset(out, 0, sizeof(*out));
	if (!store || !out)
		return ks_err_set(err, KS_EINVAL, "ks_get: %s is NULL",
				  store ? "out" : "store");
	if (kid < 1)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_get: kid %lld not found", (long long)kid);
	return store->be->get(store, kid, out, err);
}

int ks_list(struct ks_store *store, int64_t exp_after, int64_t exp_until,
	    ks_list_fn fn, void *arg, struct ks_err *err)
{
	if (!store || !fn)
		return ks_err_set(err, KS_EINVAL, "ks_list: %s is NULL",
				  store ? "callback" : "store");
	if (exp_after > exp_until)
		return ks_err_set(err, KS_EINVAL,
				  "ks_list: exp_after %lld > exp_until %lld",
				  (long long)exp_after, (long long)exp_until);
	return store->be->list(store, exp_after, exp_until, fn, arg, err);
}

int ks_version(struct ks_store *store, uint64_t *out, struct ks_err *err)
{
	if (out)
		*out = 0;
	if (!store || !out)
		return ks_err_set(err, KS_EINVAL, "ks_version: %s is NULL",
				  store ? "out" : "store");
	if (!store->be->version)
		return ks_err_set(err, KS_EUNSUPPORTED,
				  "ks_version: backend '%s' has no version",
				  store->be->name);
	return store->be->version(store, out, err);
}

int ks_valid_schema_name(const char *name)
{
	size_t i, len = name ? strlen(name) : 0;

	if (len < 1 || len > 63 || (name[0] >= '0' && name[0] <= '9'))
		return 0;
	for (i = 0; i < len; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') ||
		      (name[i] >= '0' && name[i] <= '9') || name[i] == '_'))
			return 0;
	return 1;
}

int ks_wait(struct ks_store *store, unsigned timeout_ms, struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL, "ks_wait: store is NULL");
	if (!store->be->wait)
		return KS_EUNSUPPORTED;
	return store->be->wait(store, timeout_ms, err);
}

int ks_describe(const struct ks_backend *be, const char *path, char *buf,
		size_t cap)
{
	if (!be || !buf || !cap)
		return KS_EINVAL;
	if (!path)
		path = be->default_path;
	if (be->describe)
		return be->describe(path, buf, cap);
	snprintf(buf, cap, "%s", path);
	return 0;
}

int ks_check(struct ks_store *store, struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL, "ks_check: store is NULL");
	if (!store->be->check)
		return ks_err_set(err, KS_EUNSUPPORTED,
				  "ks_check: backend '%s' has no check",
				  store->be->name);
	return store->be->check(store, err);
}

int ks_life_list(struct ks_store *store, ks_life_fn fn, void *arg,
		 struct ks_err *err)
{
	if (!store || !fn)
		return ks_err_set(err, KS_EINVAL, "ks_life_list: %s is NULL",
				  store ? "callback" : "store");
	return store->be->life_list(store, NULL, fn, arg, err);
}

int ks_write(struct ks_store *store, ks_txn_fn fn, void *arg,
	     struct ks_err *err)
{
	if (!store || !fn)
		return ks_err_set(err, KS_EINVAL, "ks_write: %s is NULL",
				  store ? "callback" : "store");
	return store->be->write(store, fn, arg, err);
}

int ks_txn_next_kid(struct ks_txn *txn, int64_t *out, struct ks_err *err)
{
	if (!txn || !out)
		return ks_err_set(err, KS_EINVAL, "ks_txn_next_kid: %s is NULL",
				  txn ? "out" : "txn");
	return txn->store->be->txn_next_kid(txn, out, err);
}

int ks_txn_put(struct ks_txn *txn, const unsigned char *blob, size_t blob_len,
	       int64_t exp, int64_t *kid_out, struct ks_err *err)
{
	if (!txn)
		return ks_err_set(err, KS_EINVAL, "ks_txn_put: txn is NULL");
	if (!blob || !blob_len)
		return ks_err_set(err, KS_EINVAL, "ks_txn_put: blob is empty");
	return txn->store->be->txn_put(txn, blob, blob_len, exp, kid_out, err);
}

int ks_txn_import(struct ks_txn *txn, const struct ks_record *rec,
		  struct ks_err *err)
{
	if (!txn || !rec)
		return ks_err_set(err, KS_EINVAL, "ks_txn_import: %s is NULL",
				  txn ? "record" : "txn");
	if (rec->kid < 1)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_import: kid %lld is not positive",
				  (long long)rec->kid);
	if (!rec->blob || !rec->blob_len)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_import: blob is empty");
	return txn->store->be->txn_import(txn, rec, err);
}

int ks_txn_update(struct ks_txn *txn, const struct ks_record *rec,
		  struct ks_err *err)
{
	if (!txn || !rec)
		return ks_err_set(err, KS_EINVAL, "ks_txn_update: %s is NULL",
				  txn ? "record" : "txn");
	if (!rec->blob || !rec->blob_len)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_update: blob is empty");
	if (rec->kid < 1)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_txn_update: kid %lld not found",
				  (long long)rec->kid);
	return txn->store->be->txn_update(txn, rec, err);
}

int ks_txn_delete(struct ks_txn *txn, int64_t kid, struct ks_err *err)
{
	if (!txn)
		return ks_err_set(err, KS_EINVAL, "ks_txn_delete: txn is NULL");
	if (kid < 1)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_txn_delete: kid %lld not found",
				  (long long)kid);
	return txn->store->be->txn_delete(txn, kid, err);
}

int ks_txn_list(struct ks_txn *txn, int64_t exp_after, int64_t exp_until,
		ks_list_fn fn, void *arg, struct ks_err *err)
{
	if (!txn || !fn)
		return ks_err_set(err, KS_EINVAL, "ks_txn_list: %s is NULL",
				  txn ? "callback" : "txn");
	if (exp_after > exp_until)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_list: exp_after %lld > exp_until "
				  "%lld",
				  (long long)exp_after, (long long)exp_until);
	return txn->store->be->txn_list(txn, exp_after, exp_until, fn, arg,
					err);
}

int ks_txn_life_list(struct ks_txn *txn, ks_life_fn fn, void *arg,
		     struct ks_err *err)
{
	if (!txn || !fn)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_life_list: %s is NULL",
				  txn ? "callback" : "txn");
	return txn->store->be->life_list(txn->store, txn, fn, arg, err);
}

int ks_txn_life_put(struct ks_txn *txn, const struct ks_life *life,
		    struct ks_err *err)
{
	if (!txn || !life)
		return ks_err_set(err, KS_EINVAL, "ks_txn_life_put: %s is NULL",
				  txn ? "entry" : "txn");
	if (life->kid < 1)
		return ks_err_set(err, KS_ENOTFOUND,
				  "ks_txn_life_put: kid %lld not found",
				  (long long)life->kid);
	return txn->store->be->txn_life_put(txn, life, err);
}

int ks_scrub(struct ks_store *store, struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL, "ks_scrub: store is NULL");
	if (!store->be->scrub)
		return ks_err_set(err, KS_EUNSUPPORTED,
				  "ks_scrub: backend '%s' cannot scrub",
				  store->be->name);
	return store->be->scrub(store, err);
}

void ks_user_release(struct ks_user *u)
{
	if (!u)
		return;
	free(u->username);
	free(u->email);
	if (u->password_hash) {
		explicit_bzero(u->password_hash, strlen(u->password_hash));
		free(u->password_hash);
	}
	memset(u, 0, sizeof(*u));
}

/* A username as the interface allows it: 1 to 64 bytes. */
static int ks_user_name_ok(const char *username)
{
	size_t n = username ? strlen(username) : 0;

	return n >= 1 && n <= 64;
}

int ks_user_add(struct ks_store *store, const char *username,
		const char *password_hash, const char *email,
		int64_t registered, int64_t *id_out, struct ks_err *err)
{
	if (id_out)
		*id_out = 0;
	if (!store || !ks_user_name_ok(username) || !password_hash ||
	    !*password_hash || (email && !*email))
		return ks_err_set(err, KS_EINVAL, "ks_user_add: bad argument");
	return store->be->user_add(store, username, password_hash, email,
				   registered, id_out, err);
}

int ks_user_import(struct ks_store *store, const struct ks_user *u,
		   struct ks_err *err)
{
	if (!store || !u || u->id < 1 || !ks_user_name_ok(u->username) ||
	    !u->password_hash || (u->email && !*u->email))
		return ks_err_set(err, KS_EINVAL,
				  "ks_user_import: bad argument");
	return store->be->user_import(store, u, err);
}

int ks_user_get(struct ks_store *store, const char *username,
		struct ks_user *out, struct ks_err *err)
{
	if (out)
		memset(out, 0, sizeof(*out));
	if (!store || !out || !username)
		return ks_err_set(err, KS_EINVAL, "ks_user_get: bad argument");
	if (!ks_user_name_ok(username))
		return ks_err_set(err, KS_ENOTFOUND, "no such user");
	return store->be->user_get(store, username, out, err);
}

int ks_user_list(struct ks_store *store, ks_user_fn fn, void *arg,
		 struct ks_err *err)
{
	if (!store || !fn)
		return ks_err_set(err, KS_EINVAL, "ks_user_list: bad argument");
	return store->be->user_list(store, fn, arg, err);
}

int ks_user_set_hash(struct ks_store *store, int64_t id, const char *hash,
		     struct ks_err *err)
{
	if (!store || !hash || !*hash)
		return ks_err_set(err, KS_EINVAL,
				  "ks_user_set_hash: bad argument");
	if (id < 1)
		return ks_err_set(err, KS_ENOTFOUND, "no user %lld",
				  (long long)id);
	return store->be->user_set_hash(store, id, hash, err);
}

int ks_user_set_locked(struct ks_store *store, int64_t id, int locked,
		       struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL,
				  "ks_user_set_locked: store is NULL");
	if (id < 1)
		return ks_err_set(err, KS_ENOTFOUND, "no user %lld",
				  (long long)id);
	return store->be->user_set_locked(store, id, locked ? 1 : 0, err);
}

int ks_user_set_login(struct ks_store *store, int64_t id, int64_t when,
		      struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL,
				  "ks_user_set_login: store is NULL");
	if (id < 1)
		return ks_err_set(err, KS_ENOTFOUND, "no user %lld",
				  (long long)id);
	return store->be->user_set_login(store, id, when, err);
}

int ks_user_delete(struct ks_store *store, int64_t id, struct ks_err *err)
{
	if (!store)
		return ks_err_set(err, KS_EINVAL,
				  "ks_user_delete: store is NULL");
	if (id < 1)
		return ks_err_set(err, KS_ENOTFOUND, "no user %lld",
				  (long long)id);
	return store->be->user_delete(store, id, err);
}

int ks_auth_log_add(struct ks_store *store, const struct ks_auth_log *entries,
		    size_t n, struct ks_err *err)
{
	size_t i;

	if (!store || (!entries && n))
		return ks_err_set(err, KS_EINVAL,
				  "ks_auth_log_add: bad argument");
	for (i = 0; i < n; i++)
		if (!memchr(entries[i].ip, '\0', sizeof(entries[i].ip)) ||
		    !entries[i].ip[0] || entries[i].user_id < 0)
			return ks_err_set(err, KS_EINVAL,
					  "ks_auth_log_add: bad entry %zu", i);
	if (!n)
		return 0;
	return store->be->auth_log_add(store, entries, n, err);
}

int ks_auth_log_list(struct ks_store *store, int64_t after_id,
		     ks_auth_log_fn fn, void *arg, struct ks_err *err)
{
	if (!store || !fn)
		return ks_err_set(err, KS_EINVAL,
				  "ks_auth_log_list: bad argument");
	return store->be->auth_log_list(store, after_id, fn, arg, err);
}

int ks_auth_log_purge(struct ks_store *store, int64_t before, size_t *count_out,
		      struct ks_err *err)
{
	if (count_out)
		*count_out = 0;
	if (!store)
		return ks_err_set(err, KS_EINVAL,
				  "ks_auth_log_purge: store is NULL");
	return store->be->auth_log_purge(store, before, count_out, err);
}

/* The backend's optional transaction slot, or KS_EUNSUPPORTED. */
#define KS__TXN_SLOT(txn, slot, func, err)                                 \
	do {                                                               \
		if (!(txn)->store->be->slot)                               \
			return ks_err_set(err, KS_EUNSUPPORTED,            \
					  "%s: backend '%s' cannot do it " \
					  "in a transaction",              \
					  func, (txn)->store->be->name);   \
	} while (0)

int ks_txn_user_list(struct ks_txn *txn, ks_user_fn fn, void *arg,
		     struct ks_err *err)
{
	if (!txn || !fn)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_user_list: bad argument");
	KS__TXN_SLOT(txn, txn_user_list, "ks_txn_user_list", err);
	return txn->store->be->txn_user_list(txn, fn, arg, err);
}

int ks_txn_user_import(struct ks_txn *txn, const struct ks_user *u,
		       struct ks_err *err)
{
	if (!txn || !u || u->id < 1 || !ks_user_name_ok(u->username) ||
	    !u->password_hash || (u->email && !*u->email))
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_user_import: bad argument");
	KS__TXN_SLOT(txn, txn_user_import, "ks_txn_user_import", err);
	return txn->store->be->txn_user_import(txn, u, err);
}

int ks_txn_auth_log_list(struct ks_txn *txn, int64_t after_id,
			 ks_auth_log_fn fn, void *arg, struct ks_err *err)
{
	if (!txn || !fn)
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_auth_log_list: bad argument");
	KS__TXN_SLOT(txn, txn_auth_log_list, "ks_txn_auth_log_list", err);
	return txn->store->be->txn_auth_log_list(txn, after_id, fn, arg, err);
}

int ks_txn_auth_log_import(struct ks_txn *txn,
			   const struct ks_auth_log *entries, size_t n,
			   struct ks_err *err)
{
	size_t i;

	if (!txn || (!entries && n))
		return ks_err_set(err, KS_EINVAL,
				  "ks_txn_auth_log_import: bad argument");
	for (i = 0; i < n; i++)
		if (entries[i].id < 1 ||
		    !memchr(entries[i].ip, '\0', sizeof(entries[i].ip)) ||
		    !entries[i].ip[0] || entries[i].user_id < 0)
			return ks_err_set(err, KS_EINVAL,
					  "ks_txn_auth_log_import: bad entry "
					  "%zu",
					  i);
	if (!n)
		return 0;
	KS__TXN_SLOT(txn, txn_auth_log_import, "ks_txn_auth_log_import", err);
	return txn->store->be->txn_auth_log_import(txn, entries, n, err);
}
#undef KS__TXN_SLOT
