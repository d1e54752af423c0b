/*
 * The rotation policy of include/lifecycle.h: pure arithmetic on times.
 */
#include <stdio.h>

#include "lifecycle.h"

/* Times stay far from the int64_t limits once checked; saturate anyway. */
static int64_t lc_add(int64_t a, int64_t b)
{
	if (b > 0 && a > INT64_MAX - b)
		return INT64_MAX;
	if (b < 0 && a < INT64_MIN - b)
		return INT64_MIN;
	return a + b;
}

int64_t lc_publish_ahead(const struct lc_policy *p)
{
	return lc_add(p->jwks_max_age, p->margin);
}

int64_t lc_sign_period(const struct lc_policy *p)
{
	return p->key_ttl - lc_publish_ahead(p) - p->token_ttl - p->margin;
}

int lc_policy_check(const struct lc_policy *p, char *why, size_t n)
{
	const int64_t limit = (int64_t)1 << 40;
	int64_t period;

	if (p->key_ttl <= 0 || p->token_ttl <= 0 || p->jwks_max_age < 0 ||
	    p->margin < 0 || p->lead < 0 || p->key_ttl > limit ||
	    p->token_ttl > limit || p->jwks_max_age > limit ||
	    p->margin > limit || p->lead > limit) {
		snprintf(why, n, "times must be positive and below 2^40 s");
		return KS_EINVAL;
	}
	period = lc_sign_period(p);
	if (period <= 0) {
		snprintf(why, n,
			 "--key-ttl %lld leaves no time to sign: a key is "
			 "published %lld s before it signs (--jwks-max-age + "
			 "--margin) and %lld s after (--token-ttl + "
			 "--margin), so --key-ttl must be more than %lld",
			 (long long)p->key_ttl, (long long)lc_publish_ahead(p),
			 (long long)(p->token_ttl + p->margin),
			 (long long)(lc_publish_ahead(p) + p->token_ttl +
				     p->margin));
		return KS_EINVAL;
	}
	return 0;
}

int64_t lc_activate_at(const struct lc_key *k)
{
	return k->has_life ? k->life.activate_at : INT64_MIN;
}

int64_t lc_retire_at(const struct lc_key *k)
{
	return k->has_life ? k->life.retire_at : k->exp;
}

static int lc_revoked(const struct lc_key *k)
{
	return k->has_life && k->life.revoked_at != KS_NEVER;
}

enum lc_state lc_state_at(const struct lc_key *k, int64_t now)
{
	if (lc_revoked(k))
		return LC_REVOKED;
	if (k->exp <= now)
		return LC_EXPIRED;
	if (now < lc_activate_at(k))
		return LC_PENDING;
	if (now < lc_retire_at(k))
		return LC_ACTIVE;
	return LC_RETIRED;
}

const char *lc_state_name(enum lc_state state)
{
	switch (state) {
	case LC_PENDING:
		return "pending";
	case LC_ACTIVE:
		return "active";
	case LC_RETIRED:
		return "retired";
	case LC_EXPIRED:
		return "expired";
	case LC_REVOKED:
		return "revoked";
	}
	return "?";
}

int lc_published(const struct lc_key *k, int64_t now)
{
	return !lc_revoked(k) && k->exp > now;
}

int64_t lc_token_cap(const struct lc_key *k, const struct lc_policy *p)
{
	return k->has_life ? lc_add(k->exp, -p->margin) : k->exp;
}

/* Whether a is a better signer than b (NULL) in the given phase. */
static int lc_better(const struct lc_key *a, const struct lc_key *b,
		     enum lc_state state, const struct lc_policy *p)
{
	int64_t x, y;

	if (!b)
		return 1;
	switch (state) {
	case LC_ACTIVE: /* the newest activation, then the longest signing */
		x = lc_activate_at(a);
		y = lc_activate_at(b);
		if (x != y)
			return x > y;
		x = lc_retire_at(a);
		y = lc_retire_at(b);
		if (x != y)
			return x > y;
		break;
	case LC_RETIRED: /* the one that may sign longest */
		x = lc_token_cap(a, p);
		y = lc_token_cap(b, p);
		if (x != y)
			return x > y;
		break;
	default: /* pending: published longest */
		x = lc_activate_at(a);
		y = lc_activate_at(b);
		if (x != y)
			return x < y;
		return a->kid < b->kid;
	}
	return a->kid > b->kid;
}

const struct lc_key *lc_choose_signer(const struct lc_key *keys, size_t n,
				      int64_t now, const struct lc_policy *p)
{
	static const enum lc_state order[] = {LC_ACTIVE, LC_RETIRED,
					      LC_PENDING};
	const struct lc_key *best;
	size_t i, j;

	for (j = 0; j < sizeof(order) / sizeof(order[0]); j++) {
		best = NULL;
		for (i = 0; i < n; i++) {
			const struct lc_key *k = &keys[i];

			if (k->usable && lc_token_cap(k, p) > now &&
			    lc_state_at(k, now) == order[j] &&
			    lc_better(k, best, order[j], p))
				best = k;
		}
		if (best)
			return best;
	}
	return NULL;
}

void lc_plan_at(const struct lc_key *keys, size_t n, int64_t now,
		const struct lc_policy *p, int force, struct lc_plan *out)
{
	const struct lc_key *last = NULL;
	int64_t ahead = lc_publish_ahead(p), tail = p->token_ttl + p->margin;
	int64_t lead = p->lead, activate;
	size_t i;

	/* A short schedule (test keys) must not look overdue all the time. */
	if (lead > lc_sign_period(p) / 4)
		lead = lc_sign_period(p) / 4;
	*out = (struct lc_plan){.action = LC_NOTHING, .due = INT64_MAX};
	if (!lc_choose_signer(keys, n, now, p)) {
		/* Nothing can sign: a key that signs at once. */
		out->action = LC_BOOTSTRAP;
		out->activate_at = now;
		out->exp = lc_add(now, p->key_ttl);
		out->retire_at = lc_add(out->exp, -tail);
		return;
	}
	/* The key that signs last decides when its successor is due. */
	for (i = 0; i < n; i++) {
		const struct lc_key *k = &keys[i];

		if (!k->usable || !lc_published(k, now))
			continue;
		if (!last || lc_retire_at(k) > lc_retire_at(last) ||
		    (lc_retire_at(k) == lc_retire_at(last) &&
		     k->kid > last->kid))
			last = k;
	}
	if (!last)
		return;
	out->due = lc_add(lc_retire_at(last), -ahead - lead);
	if (lc_activate_at(last) > now) {
		/* A successor is waiting: the next is due once it signs. */
		out->pending_kid = last->kid;
		if (out->due < lc_activate_at(last))
			out->due = lc_activate_at(last);
		return;
	}
	if (!force && now < out->due)
		return;

	activate = lc_add(now, ahead);
	if (!force && lc_retire_at(last) > activate)
		activate = lc_retire_at(last);
	out->action = LC_SUCCESSOR;
	out->activate_at = activate;
	out->retire_at = lc_add(activate, lc_sign_period(p));
	out->exp = lc_add(out->retire_at, tail);
	out->due = INT64_MAX;
	if (lc_retire_at(last) == activate)
		return;
	if (!last->has_life) {
		/*
		 * A key another tool wrote keeps its exp: it is never
		 * extended past it; the successor, published at once, fills
		 * any gap.
		 */
		if (activate < last->exp) {
			out->extend_kid = last->kid;
			out->extend_retire_at = activate;
			out->extend_exp = last->exp;
		}
		return;
	}
	/* Late, or forced: the current key signs until the handover. */
	out->extend_kid = last->kid;
	out->extend_retire_at = activate;
	out->extend_exp = lc_add(activate, tail);
	if (out->extend_exp < last->exp)
		out->extend_exp = last->exp;
}
