/*
 * The rotation policy of include/lifecycle.h, as pure arithmetic: policy
 * checks, bootstrap, successors on time and late, operator rotation, the
 * choice of signer, keys without lifecycle entries, and a long simulation
 * that checks the invariants relying parties depend on.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lifecycle.h"
#include "test.h"

#define T0 1800000000

static const struct lc_policy pol = {
	.key_ttl = 3600,
	.token_ttl = 300,
	.jwks_max_age = 60,
	.margin = 30,
	.lead = 10,
};

static struct lc_key managed(int64_t kid, int64_t created, int64_t activate,
			     int64_t retire, int64_t exp)
{
	struct lc_key k = {
		kid, exp, 1, 1, {kid, created, activate, retire, KS_NEVER}};

	return k;
}

static struct lc_key legacy(int64_t kid, int64_t exp)
{
	struct lc_key k = {kid, exp, 0, 1, {0}};

	return k;
}

static void test_policy_check(void)
{
	struct lc_policy p = LC_POLICY_INIT;
	char why[256] = "";

	CHECK(lc_policy_check(&p, why, sizeof(why)) == 0, "defaults valid");
	CHECK_EQ_INT(lc_publish_ahead(&p), 600, "default publish ahead");
	CHECK_EQ_INT(lc_sign_period(&p), 86400 - 600 - 3600 - 300,
		     "default signing period");
	p.key_ttl = 4500;
	CHECK(lc_policy_check(&p, why, sizeof(why)) == KS_EINVAL,
	      "key ttl equal to the other phases refused");
	CHECK(strstr(why, "more than 4500") != NULL, "says the minimum: %s",
	      why);
	p.key_ttl = 4501;
	CHECK(lc_policy_check(&p, why, sizeof(why)) == 0, "one more is enough");
	p.margin = -1;
	CHECK(lc_policy_check(&p, why, sizeof(why)) == KS_EINVAL,
	      "negative margin refused");
	p = (struct lc_policy)LC_POLICY_INIT;
	p.token_ttl = 0;
	CHECK(lc_policy_check(&p, why, sizeof(why)) == KS_EINVAL,
	      "zero token ttl refused");
}

static void test_bootstrap(void)
{
	struct lc_plan plan;
	struct lc_key k;

	lc_plan_at(NULL, 0, T0, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_BOOTSTRAP, "empty store: bootstrap");
	CHECK_EQ_INT(plan.activate_at, T0, "signs at once");
	CHECK_EQ_INT(plan.exp, T0 + 3600, "published for key_ttl");
	CHECK_EQ_INT(plan.retire_at, T0 + 3600 - 330,
		     "retires token_ttl + margin before exp");

	/* Only a revoked, an unusable or an expired key: bootstrap too. */
	k = managed(1, T0, T0, T0 + 1000, T0 + 2000);
	k.life.revoked_at = T0 + 5;
	lc_plan_at(&k, 1, T0 + 10, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_BOOTSTRAP, "revoked only: bootstrap");
	k.life.revoked_at = KS_NEVER;
	k.usable = 0;
	lc_plan_at(&k, 1, T0 + 10, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_BOOTSTRAP, "unusable only: bootstrap");
	k.usable = 1;
	lc_plan_at(&k, 1, T0 + 1970, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_BOOTSTRAP,
		     "past the token cap (exp - margin): bootstrap");
}

static void test_successor_on_time_and_late(void)
{
	/* A bootstrapped key: activates T0, retires T0 + 3270. */
	struct lc_key k[2] = {managed(1, T0, T0, T0 + 3270, T0 + 3600)};
	struct lc_plan plan;
	int64_t due = T0 + 3270 - 90 - 10;

	lc_plan_at(k, 1, due - 1, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_NOTHING, "nothing before due");
	CHECK_EQ_INT(plan.due, due, "due publish_ahead + lead before retire");
	lc_plan_at(k, 1, due, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_SUCCESSOR, "successor when due");
	CHECK_EQ_INT(plan.activate_at, T0 + 3270, "takes over at retirement");
	CHECK_EQ_INT(plan.retire_at, T0 + 3270 + lc_sign_period(&pol),
		     "signs for the signing period");
	CHECK_EQ_INT(plan.exp, plan.retire_at + 330,
		     "published until its tokens expired, plus the margin");
	CHECK_EQ_INT(plan.extend_kid, 0, "on time: nothing extended");

	/* Late: the successor needs its full pre-publication. */
	lc_plan_at(k, 1, T0 + 3260, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_SUCCESSOR, "late successor");
	CHECK_EQ_INT(plan.activate_at, T0 + 3260 + 90,
		     "still published publish_ahead before it signs");
	CHECK_EQ_INT(plan.extend_kid, 1, "the current key is extended");
	CHECK_EQ_INT(plan.extend_retire_at, T0 + 3350, "signs until handover");
	CHECK(plan.extend_exp >= T0 + 3350 + 330,
	      "and stays published past its last token");

	/* A successor waiting: nothing, even when asked. */
	k[1] = managed(2, due, T0 + 3270, T0 + 6000, T0 + 6330);
	lc_plan_at(k, 2, due + 5, &pol, 0, &plan);
	CHECK_EQ_INT(plan.action, LC_NOTHING, "successor pending: nothing");
	CHECK_EQ_INT(plan.pending_kid, 2, "names the pending key");
	lc_plan_at(k, 2, due + 5, &pol, 1, &plan);
	CHECK_EQ_INT(plan.action, LC_NOTHING, "forced: still nothing");
	CHECK_EQ_INT(plan.pending_kid, 2, "forced: names the pending key");
}

/* Test-sized keys: the lead shrinks, so nothing looks overdue. */
static void test_short_schedule(void)
{
	const struct lc_policy p = {8, 2, 1, 1, 60};
	struct lc_key k[2];
	struct lc_plan plan;

	lc_plan_at(NULL, 0, T0, &p, 0, &plan);
	k[0] = managed(1, T0, plan.activate_at, plan.retire_at, plan.exp);
	CHECK_EQ_INT(plan.retire_at, T0 + 5, "short: retires at 5 s");
	lc_plan_at(k, 1, T0 + 1, &p, 0, &plan);
	CHECK(plan.action == LC_NOTHING && plan.due == T0 + 3,
	      "short: successor due at 3 s, not overdue (due %" PRId64 ")",
	      plan.due - T0);
	lc_plan_at(k, 1, T0 + 3, &p, 0, &plan);
	CHECK(plan.action == LC_SUCCESSOR && plan.activate_at == T0 + 5,
	      "short: successor activates at the handover");
	k[1] = managed(2, T0 + 3, plan.activate_at, plan.retire_at, plan.exp);
	lc_plan_at(k, 2, T0 + 4, &p, 0, &plan);
	CHECK(plan.action == LC_NOTHING && plan.due > T0 + 4,
	      "short: with a successor waiting the schedule is not overdue");
}

static void test_forced_rotation(void)
{
	struct lc_key k = managed(1, T0, T0, T0 + 3270, T0 + 3600);
	struct lc_plan plan;

	lc_plan_at(&k, 1, T0 + 100, &pol, 1, &plan);
	CHECK_EQ_INT(plan.action, LC_SUCCESSOR, "forced successor");
	CHECK_EQ_INT(plan.activate_at, T0 + 190, "signs publish_ahead later");
	CHECK_EQ_INT(plan.extend_kid, 1, "the current key retires then");
	CHECK_EQ_INT(plan.extend_retire_at, T0 + 190, "at the handover");
	CHECK_EQ_INT(plan.extend_exp, T0 + 3600,
		     "its publication is never shortened");
}

static void test_choose_signer(void)
{
	struct lc_key k[4];
	const struct lc_key *s;
	struct lc_plan plan;

	/* Overlap: the newer activation signs. */
	k[0] = managed(1, T0, T0, T0 + 1000, T0 + 1330);
	k[1] = managed(2, T0 + 500, T0 + 600, T0 + 2000, T0 + 2330);
	s = lc_choose_signer(k, 2, T0 + 700, &pol);
	CHECK(s && s->kid == 2, "newest active key signs");
	s = lc_choose_signer(k, 2, T0 + 550, &pol);
	CHECK(s && s->kid == 1, "a pending key does not sign");
	k[1].life.revoked_at = T0 + 650;
	s = lc_choose_signer(k, 2, T0 + 700, &pol);
	CHECK(s && s->kid == 1, "a revoked key never signs");
	k[1].life.revoked_at = KS_NEVER;
	k[1].usable = 0;
	s = lc_choose_signer(k, 2, T0 + 700, &pol);
	CHECK(s && s->kid == 1, "an unusable key never signs");

	/* No active key: the retired one, then the pending one. */
	k[0] = managed(1, T0, T0, T0 + 1000, T0 + 1330);
	k[1] = managed(2, T0 + 900, T0 + 1200, T0 + 2000, T0 + 2330);
	s = lc_choose_signer(k, 2, T0 + 1100, &pol);
	CHECK(s && s->kid == 1, "a retired key before a pending one");
	CHECK_EQ_INT(lc_token_cap(s, &pol), T0 + 1300,
		     "capped at exp - margin");
	s = lc_choose_signer(k, 2, T0 + 1300, &pol);
	CHECK(s && s->kid == 2, "past the retired key's cap: the pending one");
	CHECK(lc_choose_signer(k, 0, T0, &pol) == NULL, "no key: none");

	/* Keys without entries: never extended past their exp. */
	k[0] = legacy(1, T0 + 300);
	lc_plan_at(k, 1, T0, &pol, 1, &plan);
	CHECK(plan.action == LC_SUCCESSOR && plan.activate_at == T0 + 90 &&
		      plan.extend_kid == 1 &&
		      plan.extend_retire_at == T0 + 90 &&
		      plan.extend_exp == T0 + 300,
	      "legacy key, forced: retires at the handover, exp kept");
	lc_plan_at(k, 1, T0 + 250, &pol, 0, &plan);
	CHECK(plan.action == LC_SUCCESSOR && plan.activate_at == T0 + 340 &&
		      plan.extend_kid == 0,
	      "legacy key expiring before the handover: left as it is");

	/* Keys without entries: active until exp; the latest exp signs. */
	k[0] = legacy(1, T0 + 500);
	k[1] = legacy(2, T0 + 900);
	k[2] = legacy(3, T0 + 700);
	s = lc_choose_signer(k, 3, T0, &pol);
	CHECK(s && s->kid == 2, "legacy: the key that expires last");
	CHECK_EQ_INT(lc_token_cap(s, &pol), T0 + 900, "legacy cap is exp");
	CHECK_EQ_INT(lc_state_at(&k[0], T0), LC_ACTIVE, "legacy state active");
	CHECK_EQ_INT(lc_state_at(&k[0], T0 + 500), LC_EXPIRED,
		     "legacy expired at exp");
	k[3] = managed(4, T0, T0 + 50, T0 + 100, T0 + 200);
	CHECK(!strcmp(lc_state_name(lc_state_at(&k[3], T0)), "pending"),
	      "state names");
}

/*
 * Run the policy for many rotations, stepping the clock unevenly, as a
 * store would hold the keys, and check what relying parties rely on.
 */
#define SIM_KEYS 64
struct sim {
	struct lc_key keys[SIM_KEYS];
	int64_t first_published[SIM_KEYS + 1];
	int64_t first_signed[SIM_KEYS + 1];
	int64_t last_token_exp[SIM_KEYS + 1];
	size_t n;
};

static void sim_apply(struct sim *s, const struct lc_plan *plan, int64_t now)
{
	struct lc_key *k;
	size_t i;

	if (plan->extend_kid > 0) {
		for (i = 0; i < s->n; i++) {
			if (s->keys[i].kid != plan->extend_kid)
				continue;
			s->keys[i].life.retire_at = plan->extend_retire_at;
			s->keys[i].exp = plan->extend_exp;
		}
	}
	k = &s->keys[s->n++];
	*k = managed((int64_t)s->n, now, plan->activate_at, plan->retire_at,
		     plan->exp);
	s->first_published[k->kid] = now;
}

static void test_simulation(void)
{
	static struct sim s;
	const int64_t steps[] = {7, 31, 2, 59, 13, 1, 44};
	int64_t now = T0, ahead = lc_publish_ahead(&pol);
	struct lc_plan plan;
	size_t i, step, bad = 0, rotations;

	memset(&s, 0, sizeof(s));
	for (step = 0; now < T0 + 12 * 3600 && s.n < SIM_KEYS; step++) {
		const struct lc_key *signer;

		lc_plan_at(s.keys, s.n, now, &pol, 0, &plan);
		if (plan.action != LC_NOTHING)
			sim_apply(&s, &plan, now);
		signer = lc_choose_signer(s.keys, s.n, now, &pol);
		if (!signer) {
			bad++;
			continue;
		}
		if (!s.first_signed[signer->kid])
			s.first_signed[signer->kid] = now;
		if (now + pol.token_ttl > s.last_token_exp[signer->kid])
			s.last_token_exp[signer->kid] = now + pol.token_ttl;
		if (s.last_token_exp[signer->kid] > lc_token_cap(signer, &pol))
			s.last_token_exp[signer->kid] =
				lc_token_cap(signer, &pol);
		now += steps[step % (sizeof(steps) / sizeof(steps[0]))];
	}
	rotations = s.n - 1;
	CHECK_EQ_INT(bad, 0, "a key could always sign");
	CHECK(rotations >= 12, "rotated %zu times in 12 h", rotations);
	for (i = 0; i < s.n; i++) {
		const struct lc_key *k = &s.keys[i];

		CHECK(k->kid == 1 ||
			      s.first_signed[k->kid] -
					      s.first_published[k->kid] >=
				      ahead,
		      "key %" PRId64 " published %" PRId64
		      " s before it signed, want >= %" PRId64,
		      k->kid,
		      s.first_signed[k->kid] - s.first_published[k->kid],
		      ahead);
		CHECK(s.last_token_exp[k->kid] + pol.margin <= k->exp,
		      "key %" PRId64 " stays published past its last token",
		      k->kid);
	}
	CHECK_EQ_INT(s.first_signed[1], T0, "the first key signs at once");
}

int main(void)
{
	test_policy_check();
	test_bootstrap();
	test_successor_on_time_and_late();
	test_short_schedule();
	test_forced_rotation();
	test_choose_signer();
	test_simulation();
	return TEST_REPORT();
}
