/*
 * Key rotation policy: when a key is published, signs, retires and leaves
 * the key set. Pure functions of the keys' times and a clock reading, so
 * that the server, the admin commands and the tests share one answer.
 *
 * A managed key (one with a lifecycle entry, see struct ks_life) lives
 * through four phases:
 *
 *   created ........ activate_at ........ retire_at ........ exp
 *   | published,     | published, signs   | published, no    | gone from
 *   | not signing    |                    | new tokens       | the JWKS
 *   |<- publish_ahead->                   |<- token_ttl + margin ->|
 *
 * publish_ahead = jwks_max_age + margin: a relying party that cached the key
 * set (for at most the max-age the server announces, plus the margin for
 * one that caches a little longer or whose clock is off) has seen a key
 * before the first token signed with it. A retired key stays published
 * until every token it signed has expired, plus the margin; a token's exp
 * never passes its key's exp - margin.
 *
 * A record without a lifecycle entry (made by another tool) counts as
 * active from the beginning of time until its exp, with no margin: the
 * behaviour of the assignment's server. Its exp is never changed.
 *
 * Successive keys overlap: the successor of the key that retires last is
 * made publish_ahead + lead before that retirement and activates when it
 * retires. When no published key can sign (an empty store, a long outage,
 * every key revoked), a key is made that signs at once: there is nothing
 * older for a relying party to have cached.
 */
#ifndef JWKS_LIFECYCLE_H
#define JWKS_LIFECYCLE_H

#include <stddef.h>
#include <stdint.h>

#include "keystore.h"

/*
 * key_ttl: how long a key is published in all (seconds, from its creation
 *       to its exp, for a key that signs at once).
 * token_ttl: the lifetime of a token.
 * jwks_max_age: the longest Cache-Control max-age the JWKS announces.
 * margin: safety margin for caches and clocks.
 * lead: how much earlier than strictly needed a successor is made, so that
 *       a slow key generation or a late poll never delays it (at most a
 *       quarter of the signing period).
 */
struct lc_policy {
	int64_t key_ttl;
	int64_t token_ttl;
	int64_t jwks_max_age;
	int64_t margin;
	int64_t lead;
};

#define LC_POLICY_INIT                                                    \
	{                                                                 \
		.key_ttl = 86400, .token_ttl = 3600, .jwks_max_age = 300, \
		.margin = 300, .lead = 60,                                \
	}

/* jwks_max_age + margin. */
int64_t lc_publish_ahead(const struct lc_policy *p);

/* How long a scheduled key signs: key_ttl less the other phases. */
int64_t lc_sign_period(const struct lc_policy *p);

/*
 * Whether the policy leaves a key time to sign (lc_sign_period() > 0, every
 * field >= 0 and sums in range). On failure why (size n) says what to
 * change. Returns 0 or KS_EINVAL.
 */
int lc_policy_check(const struct lc_policy *p, char *why, size_t n);

/*
 * One key as the policy sees it. has_life 0: a record without an entry,
 * and life is ignored. usable 0: the key could not be loaded (it never
 * signs, but a published one stays published).
 */
struct lc_key {
	int64_t kid; /* first: ks_kid_cmp() sorts and finds lc_keys */
	int64_t exp;
	int has_life;
	int usable;
	struct ks_life life;
};

enum lc_state {
	LC_PENDING,
	LC_ACTIVE,
	LC_RETIRED,
	LC_EXPIRED,
	LC_REVOKED,
};

/* The key's phase at now, and its name ("pending", ...). */
enum lc_state lc_state_at(const struct lc_key *k, int64_t now);
const char *lc_state_name(enum lc_state state);

/* When the key starts and stops signing (a key without an entry too). */
int64_t lc_activate_at(const struct lc_key *k);
int64_t lc_retire_at(const struct lc_key *k);

/* Whether the key is in the published set at now: unrevoked, unexpired. */
int lc_published(const struct lc_key *k, int64_t now);

/* The latest exp a token signed with the key may have. */
int64_t lc_token_cap(const struct lc_key *k, const struct lc_policy *p);

/*
 * The key to sign with at now, or NULL: the active key that activated last;
 * failing that (a successor not made in time) the published retired key
 * that may still sign longest; failing that the pending key published
 * longest. Only usable keys whose token cap is after now qualify.
 */
const struct lc_key *lc_choose_signer(const struct lc_key *keys, size_t n,
				      int64_t now, const struct lc_policy *p);

enum lc_action {
	LC_NOTHING,   /* the schedule is in order */
	LC_BOOTSTRAP, /* no key can sign: make one that signs at once */
	LC_SUCCESSOR, /* make the next key, pre-published */
};

/*
 * What to do at now. A new key gets activate_at, retire_at and exp. When
 * the successor comes late (after an outage) the key it follows is
 * extended (extend_kid > 0) so that it signs, and stays published, until
 * the successor takes over. due is when the next key must be made if
 * nothing else happens (INT64_MAX: not scheduled; with a successor
 * waiting, no earlier than its activation); the published set changes
 * then. With force (an operator's rotation), a successor is made
 * now, activating publish_ahead from now, and the current key retires
 * then; pending_kid > 0 instead when a successor is already waiting.
 */
struct lc_plan {
	enum lc_action action;
	int64_t activate_at, retire_at, exp;
	int64_t extend_kid, extend_retire_at, extend_exp;
	int64_t due;
	int64_t pending_kid;
};

void lc_plan_at(const struct lc_key *keys, size_t n, int64_t now,
		const struct lc_policy *p, int force, struct lc_plan *out);

#endif /* JWKS_LIFECYCLE_H */
