/*
 * Key administration: the operations on a store that change its keys as a
 * whole, each one write transaction of the store (include/keystore.h), so
 * that it either happens entirely or not at all, and two processes never
 * both perform it. The server uses them (rotation, encryption of plaintext
 * rows at start), and so do the `jwksd keys` commands.
 *
 * Keys at rest: with a kek (include/kek.h) a private key is stored sealed
 * to its kid; without one, as the signer's blob (PKCS#1 PEM for RSA).
 *
 * Thread safety: as the store's; nothing here keeps state.
 */
#ifndef JWKS_KEYADMIN_H
#define JWKS_KEYADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "jwks_error.h"
#include "kek.h"
#include "keystore.h"
#include "lifecycle.h"
#include "signer.h"

/*
 * Parse a stored record into a key: opened with kek when the blob is
 * sealed, parsed as it is otherwise. *out is the caller's.
 * Returns 0, KS_EACCES (sealed, and kek is NULL or another secret),
 * KS_EBADSIG (sealed for another kid, or changed), KS_ECORRUPT, or the
 * signer's errors.
 */
int ka_load_key(const struct ks_record *rec, const struct kek *kek,
		struct signer_key **out, struct ks_err *err);

/* What ka_scan() found: counts of records by how they are stored. */
struct ka_scan {
	size_t records;
	size_t sealed;	 /* sealed blobs */
	size_t plain;	 /* plaintext blobs */
	size_t foreign;	 /* sealed under another secret than kek's */
	size_t unopened; /* sealed under kek's secret, failing to open */
	int64_t first_foreign_kid;
};

/*
 * Count the records by storage, and with kek check every sealed one opens.
 * Reads only. Returns 0 or the store's errors.
 */
int ka_scan(struct ks_store *store, const struct kek *kek, struct ka_scan *out,
	    struct ks_err *err);

/*
 * Re-store every record sealed under to, in one transaction: a sealed
 * record is opened with from (NULL: sealed records are left as they are,
 * which encrypts a store's plaintext rows), a plaintext one taken as it is,
 * and one sealed under to already is left alone (a rewrap run twice
 * changes nothing the second time).
 * A record that does not open stops everything before anything is
 * written. *count_out (may be NULL) receives the number of records
 * re-stored.
 * Returns 0, KS_EACCES / KS_EBADSIG (a record that does not open under
 * from), or the store's errors.
 */
int ka_rewrap(struct ks_store *store, const struct kek *from,
	      const struct kek *to, size_t *count_out, struct ks_err *err);

/*
 * Store key as a new record, sealed to its kid with kek when kek is not
 * NULL, with the lifecycle entry life (its kid is filled in): one
 * transaction. *kid_out (may be NULL) receives the kid.
 */
int ka_add_key(struct ks_store *store, const struct kek *kek,
	       const struct signer_key *key, int64_t exp,
	       const struct ks_life *life, int64_t *kid_out,
	       struct ks_err *err);

/*
 * The algorithm of key kid as the caller knows it (a server knows the keys
 * it loaded): a signer algorithm name, "" for a key known not to load, or
 * NULL when the caller does not know; such a record is then loaded (with
 * the kek) inside the transaction to find out.
 */
typedef const char *(*ka_alg_fn)(int64_t kid, void *arg);

/*
 * Store key as an expired key of its algorithm (exp an hour before now,
 * for `?expired=true`), in one transaction that first checks the store
 * has no record of that algorithm expired at now: of several servers
 * starting on one store without one, exactly one adds it. alg_of (may be
 * NULL) tells the algorithm of known records. Returns 0, KS_EEXISTS (the
 * store has such a record: nothing written), or the errors of
 * ka_add_key().
 */
int ka_add_expired_key(struct ks_store *store, const struct kek *kek,
		       const struct signer_key *key, int64_t now,
		       ka_alg_fn alg_of, void *arg, int64_t *kid_out,
		       struct ks_err *err);

/*
 * Carry out the rotation policy of key's algorithm at now with key as the
 * new key, in one transaction that first re-reads the store: every
 * algorithm has a schedule of its own, made of the records of that
 * algorithm (alg_of, may be NULL, tells known ones; records that do not
 * load belong to none). When another process already did what the plan
 * asks, nothing is written and KS_EEXISTS is returned. force: an
 * operator's rotation (see lc_plan_at()). *out receives the plan carried
 * out and out_kid the new key's kid.
 * Returns 0, KS_EEXISTS (nothing to do: out->pending_kid says which key
 * is waiting, if one is), or the store's errors.
 */
int ka_rotate(struct ks_store *store, const struct kek *kek,
	      const struct lc_policy *p, const struct signer_key *key,
	      int64_t now, int force, ka_alg_fn alg_of, void *arg,
	      struct lc_plan *out, int64_t *kid_out, struct ks_err *err);

/*
 * Revoke key kid at now: it leaves the published set and never signs
 * again. Its record stays. Returns 0, KS_ENOTFOUND (no such key),
 * KS_EEXISTS (revoked already), or the store's errors.
 */
int ka_revoke(struct ks_store *store, int64_t kid, int64_t now,
	      struct ks_err *err);

/*
 * Remove every record (and its lifecycle entry) whose exp is at or before
 * before, in one transaction; never a later one. *count_out receives the
 * number removed.
 */
int ka_purge(struct ks_store *store, int64_t before, size_t *count_out,
	     struct ks_err *err);

/* One key for ka_list_keys(): the record's facts and its policy view. */
struct ka_key_info {
	struct lc_key key; /* first: found by kid with ks_kid_cmp() */
	int sealed;
	const char *alg; /* NULL when the blob does not load */
};

typedef int (*ka_key_fn)(const struct ka_key_info *info, void *arg);

/*
 * One key as `jwksd keys list --json` shows it at now: kid, alg, state,
 * created, activate_at, retire_at, exp, encrypted, and revoked_at when
 * revoked. A new jansson object, or NULL without memory.
 */
struct json_t;
struct json_t *ka_key_json(const struct ka_key_info *info, int64_t now);

/*
 * Call fn for every key of the store, in kid order, with its lifecycle
 * entry and whether it is sealed; each blob is loaded (with kek) to tell
 * its algorithm and usability. Returns 0, fn's value, or store errors.
 */
int ka_list_keys(struct ks_store *store, const struct kek *kek, ka_key_fn fn,
		 void *arg, struct ks_err *err);

#endif /* JWKS_KEYADMIN_H */
