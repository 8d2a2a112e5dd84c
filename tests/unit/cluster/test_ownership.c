/* test_ownership.c - the lease core of delivery ownership (cluster/ownership.c) under simulated
 * time: owner leases, the leader's DOWN/LIVE/REMOVED verdicts, drain, and a randomized check that
 * a DOWN the state machine would apply never overlaps the owner's lease. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ownership.h"
#include "store.h"

static struct queue_member
mem(const char *node, int state, uint64_t since, uint64_t renew)
{
	struct queue_member m;
	memset(&m, 0, sizeof(m));
	snprintf(m.node, sizeof(m.node), "%s", node);
	m.state = (uint8_t)state;
	m.since_index = since;
	m.renew_index = renew;
	return m;
}

static void
test_owner_lease(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000};
	own_init(&o, &cfg);
	assert_int_equal(o.renew_ms, 1000);
	assert_int_equal(o.grace_ms, 1000);
	assert_false(own_lease_held(&o, 0));
	assert_true(own_renew_due(&o, 100));
	own_renew_sent(&o, 100);
	assert_false(own_renew_due(&o, 5000)); /* one in flight */
	assert_false(own_lease_held(&o, 150));
	own_renew_done(&o, true, 180);
	assert_true(own_lease_held(&o, 180));
	assert_true(own_lease_held(&o, 4099));
	assert_false(own_lease_held(&o, 4100)); /* counted from the proposal, not the commit */
	assert_false(own_renew_due(&o, 1099));
	assert_true(own_renew_due(&o, 1100));
	own_renew_sent(&o, 1100);
	own_renew_done(&o, false, 1200); /* failed: no extension */
	assert_false(own_lease_held(&o, 4100));
	assert_int_equal(o.renew_failures, 1);
	own_renew_sent(&o, 2000);
	own_renew_done(&o, true, 9000); /* late commit: the lease is already over */
	assert_false(own_lease_held(&o, 9000));
	assert_int_equal(o.lease_until, 6000);	/* it ran to 2000 + lease */
	assert_false(own_lease_held(&o, 5999)); /* asked with a time before one it was given */
	own_renew_done(&o, true, 9001);		/* no renew in flight: ignored */
	assert_int_equal(o.renews, 2);
}

static void
test_may_start_table(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000};
	own_init(&o, &cfg);
	own_renew_sent(&o, 1000);
	own_renew_done(&o, true, 1001);
	static const struct {
		uint64_t now;
		int self_state;
		const char *owner;
		uint64_t epoch, item_epoch;
		bool want;
	} t[] = {
	    {2000, QUEUE_MEMBER_LIVE, "a", 7, 7, true},
	    {2000, QUEUE_MEMBER_LIVE, "b", 7, 7, false}, /* not ours */
	    {2000, QUEUE_MEMBER_LIVE, "", 7, 7, false},	 /* unowned */
	    {2000, QUEUE_MEMBER_LIVE, NULL, 7, 7, false},
	    {2000, QUEUE_MEMBER_LIVE, "a", 8, 7, false},     /* moved since */
	    {2000, QUEUE_MEMBER_LIVE, "a", 0, 0, false},     /* no epoch */
	    {2000, QUEUE_MEMBER_DRAINING, "a", 7, 7, false}, /* draining starts nothing */
	    {2000, QUEUE_MEMBER_DOWN, "a", 7, 7, false},
	    {2000, QUEUE_MEMBER_DRAINED, "a", 7, 7, false},
	    {2000, -1, "a", 7, 7, false}, /* not a member */
	    {4499, QUEUE_MEMBER_LIVE, "a", 7, 7, true},
	    {4500, QUEUE_MEMBER_LIVE, "a", 7, 7, false}, /* less than the margin (500) left */
	    {5000, QUEUE_MEMBER_LIVE, "a", 7, 7, false}, /* lease over */
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		bool got = own_may_start(&o, t[i].now, t[i].self_state, t[i].owner, t[i].epoch,
					 t[i].item_epoch);
		if (got != t[i].want)
			fail_msg("row %zu: got %d", i, got);
	}
}

static void
test_leader_down_live_removed(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000};
	own_init(&o, &cfg);
	struct own_action act[OWN_MAX_ACTIONS];
	const char *conf[] = {"a", "b", "c"};
	struct queue_member m[3] = {mem("a", QUEUE_MEMBER_LIVE, 1, 10),
				    mem("b", QUEUE_MEMBER_LIVE, 2, 11),
				    mem("c", QUEUE_MEMBER_LIVE, 3, 12)};
	/* Not the leader: nothing. */
	assert_int_equal(own_leader_tick(&o, 0, false, 1, m, 3, conf, 3, act, OWN_MAX_ACTIONS), 0);
	/* Becomes leader at 10000: everyone gets a whole lease + grace from now. */
	assert_int_equal(own_leader_tick(&o, 10000, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	assert_int_equal(own_leader_tick(&o, 14999, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	/* a and c renew, b does not. */
	m[0].renew_index = 20;
	m[2].renew_index = 21;
	assert_int_equal(own_leader_tick(&o, 14000, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	size_t n = own_leader_tick(&o, 15000, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "b");
	assert_int_equal(act[0].state, QUEUE_MEMBER_DOWN);
	assert_true(act[0].has_expect);
	assert_int_equal(act[0].expect_renew_index, 11);
	/* Not repeated within the retry interval, repeated after it. */
	assert_int_equal(own_leader_tick(&o, 16000, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	n = own_leader_tick(&o, 17000, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "b");
	/* The DOWN committed at index 30; b then renews (index 31): LIVE. */
	m[1].state = QUEUE_MEMBER_DOWN;
	m[1].since_index = 30;
	assert_int_equal(own_leader_tick(&o, 17500, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	m[1].renew_index = 31;
	n = own_leader_tick(&o, 17600, true, 2, m, 3, conf, 3, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "b");
	assert_int_equal(act[0].state, QUEUE_MEMBER_LIVE);
	assert_false(act[0].has_expect);
	/* c leaves the Raft configuration: REMOVED once its lease must have lapsed (lease + grace
	 * after the leader first saw it out), expecting the renew index it saw last. */
	const char *conf2[] = {"a", "b"};
	m[1].state = QUEUE_MEMBER_LIVE;
	m[1].since_index = 32;
	m[0].renew_index = 33;
	assert_int_equal(own_leader_tick(&o, 18000, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS),
			 0);
	m[0].renew_index = 41;
	m[1].renew_index = 42;
	assert_int_equal(own_leader_tick(&o, 22999, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS),
			 0);
	n = own_leader_tick(&o, 23000, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "c");
	assert_int_equal(act[0].state, QUEUE_MEMBER_REMOVED);
	assert_true(act[0].has_expect);
	assert_int_equal(act[0].expect_renew_index, 21);
	/* A Renew of c committed after it left (one appended before the leader refused its
	 * forwards): c learns of it if it is added back, so its lease runs a whole lease from
	 * there; the REMOVED above is void (its expectation fails) and the next waits lease +
	 * grace after this renew was seen (tests/sim: raft_sim --seed 1082597075 --nodes 3). */
	m[2].renew_index = 40;
	assert_int_equal(own_leader_tick(&o, 23500, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS),
			 0);
	m[0].renew_index = 43;
	m[1].renew_index = 44;
	assert_int_equal(own_leader_tick(&o, 26000, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS),
			 0);
	assert_int_equal(own_leader_tick(&o, 28499, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS),
			 0);
	n = own_leader_tick(&o, 28500, true, 2, m, 3, conf2, 2, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "c");
	assert_int_equal(act[0].state, QUEUE_MEMBER_REMOVED);
	assert_true(act[0].has_expect);
	assert_int_equal(act[0].expect_renew_index, 40);
	/* A new term restarts every clock: no DOWN right after an election even if silent long. */
	m[2] = mem("c", QUEUE_MEMBER_LIVE, 3, 21);
	assert_int_equal(own_leader_tick(&o, 60000, true, 3, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	assert_int_equal(own_leader_tick(&o, 64999, true, 3, m, 3, conf, 3, act, OWN_MAX_ACTIONS),
			 0);
	n = own_leader_tick(&o, 65000, true, 3, m, 3, conf, 3, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 3);
	/* The action buffer bound is respected. */
	struct own o2;
	own_init(&o2, &cfg);
	own_leader_tick(&o2, 0, true, 1, m, 3, conf, 3, act, OWN_MAX_ACTIONS);
	assert_int_equal(own_leader_tick(&o2, 5001, true, 1, m, 3, conf, 3, act, 1), 1);
}

static void
test_drain_and_self_live(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000, .drain_timeout_ms = 10000};
	own_init(&o, &cfg);
	assert_int_equal(own_drain_tick(&o, 100, QUEUE_MEMBER_LIVE, 5), 0);
	assert_int_equal(own_drain_tick(&o, 200, QUEUE_MEMBER_DRAINING, 5), 0);
	assert_int_equal(own_drain_tick(&o, 10199, QUEUE_MEMBER_DRAINING, 5), 0);
	assert_int_equal(own_drain_tick(&o, 10200, QUEUE_MEMBER_DRAINING, 5), 2);
	assert_int_equal(own_drain_tick(&o, 10201, QUEUE_MEMBER_DRAINING, 0), 1);
	assert_int_equal(own_drain_tick(&o, 10300, QUEUE_MEMBER_DRAINING, 0), 0); /* retry later */
	assert_int_equal(own_drain_tick(&o, 12201, QUEUE_MEMBER_DRAINING, 0), 1);
	/* Finishing early. */
	own_init(&o, &cfg);
	assert_int_equal(own_drain_tick(&o, 100, QUEUE_MEMBER_DRAINING, 2), 0);
	assert_int_equal(own_drain_tick(&o, 500, QUEUE_MEMBER_DRAINING, 0), 1);

	own_init(&o, &cfg);
	assert_true(own_self_live_due(&o, 100, -1, false));
	assert_false(own_self_live_due(&o, 200, -1, false));
	assert_true(own_self_live_due(&o, 2100, QUEUE_MEMBER_DOWN, false));
	assert_false(own_self_live_due(&o, 9000, QUEUE_MEMBER_LIVE, true));
	assert_false(own_self_live_due(&o, 9000, QUEUE_MEMBER_DRAINING, true));
	assert_false(own_self_live_due(&o, 9000, QUEUE_MEMBER_DRAINED, false));
	assert_true(own_self_live_due(&o, 9000, QUEUE_MEMBER_DRAINED, true));
}

/* splitmix64 */
static uint64_t
rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * One owner and one leader on one clock (ms), 1 ms steps.  The owner proposes Renews; each
 * commits after a random delay (or is lost), the owner learns of the commit after another
 * delay, the leader observes it in its applied state after another (polling, slow apply).
 * Whenever the leader proposes DOWN with expect_renew_index = k and, at the moment it would
 * commit, the committed renew index is still k (so the state machine applies it), the owner
 * must not hold its lease at that moment: the owner can never start an attempt after its items
 * moved.  Thousands of seeds; stalls of the network and partitions of the owner included.
 */
static void
test_down_never_overlaps_lease(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 300; seed++) {
		uint64_t rs = seed;
		struct own own, lead;
		struct own_config oc = {.self = "b", .lease_ms = 1000 + rnd(&rs) % 4000};
		struct own_config lc = oc;
		lc.self = "a";
		own_init(&own, &oc);
		own_init(&lead, &lc);
		uint64_t committed_index = 5; /* renew index in the committed log */
		uint64_t leader_view = 5;     /* renew index in the leader's applied state */
		uint64_t pend_commit_at = 0, pend_learn_at = 0, pend_index = 0;
		uint64_t view_at = 0, view_index = 0;
		uint64_t down_at = 0, down_expect = 0;
		uint64_t next_index = 6;
		for (uint64_t now = 1; now < 60000; now++) {
			bool cut = (now / 7000) % 3 == 2 && (seed % 2); /* owner cut off a while */
			if (own_renew_due(&own, now) && pend_commit_at == 0 && pend_learn_at == 0) {
				own_renew_sent(&own, now);
				if (cut || rnd(&rs) % 10 == 0) {
					pend_learn_at =
					    now + 1 + rnd(&rs) % 3000; /* lost: a timeout */
					pend_index = 0;
				} else {
					pend_commit_at = now + rnd(&rs) % 800;
					pend_index = next_index++;
				}
			}
			if (pend_commit_at != 0 && now >= pend_commit_at) {
				pend_commit_at = 0;
				committed_index = pend_index;
				pend_learn_at = now + rnd(&rs) % 600;
				view_at = now + rnd(&rs) % 900;
				view_index = pend_index;
			}
			if (view_at != 0 && now >= view_at) {
				if (view_index > leader_view)
					leader_view = view_index;
				view_at = 0;
			}
			if (pend_learn_at != 0 && now >= pend_learn_at) {
				own_renew_done(&own, pend_index != 0, now);
				pend_learn_at = 0;
			}
			/* The DOWN proposed earlier commits now: applies iff the index is
			 * unchanged. */
			if (down_at != 0 && now >= down_at) {
				if (committed_index == down_expect && own_lease_held(&own, now))
					fail_msg("seed %llu: DOWN applies at %llu while the "
						 "owner's lease "
						 "runs to %llu",
						 (unsigned long long)seed, (unsigned long long)now,
						 (unsigned long long)own.lease_until);
				down_at = 0;
			}
			struct queue_member m[2] = {mem("a", QUEUE_MEMBER_LIVE, 1, 1),
						    mem("b", QUEUE_MEMBER_LIVE, 2, leader_view)};
			const char *conf[] = {"a", "b"};
			struct own_action act[4];
			size_t n = own_leader_tick(&lead, now, true, 1, m, 2, conf, 2, act, 4);
			for (size_t i = 0; i < n; i++)
				if (strcmp(act[i].node, "b") == 0 &&
				    act[i].state == QUEUE_MEMBER_DOWN && down_at == 0) {
					down_at = now + rnd(&rs) % 50;
					down_expect = act[i].expect_renew_index;
				}
		}
	}
}

/* The commit rule: as starting, with the margin, but a DRAINING member finishes its attempts. */
static void
test_may_commit_margin(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000};
	own_init(&o, &cfg);
	assert_int_equal(o.margin_ms, 500); /* lease / 8 */
	own_renew_sent(&o, 1000);
	own_renew_done(&o, true, 1001);
	assert_true(own_may_commit(&o, 4499, QUEUE_MEMBER_LIVE, "a", 7, 7));
	assert_false(own_may_commit(&o, 4500, QUEUE_MEMBER_LIVE, "a", 7, 7));
	assert_true(own_lease_held(&o, 4500)); /* held, but not long enough to commit */
	assert_true(own_may_commit(&o, 2000, QUEUE_MEMBER_DRAINING, "a", 7, 7));
	assert_false(own_may_start(&o, 2000, QUEUE_MEMBER_DRAINING, "a", 7, 7));
	assert_false(own_may_commit(&o, 2000, QUEUE_MEMBER_DOWN, "a", 7, 7));
	assert_false(own_may_commit(&o, 2000, QUEUE_MEMBER_DRAINED, "a", 7, 7));
	assert_false(own_may_commit(&o, 2000, -1, "a", 7, 7));
	assert_false(own_may_commit(&o, 2000, QUEUE_MEMBER_LIVE, "b", 7, 7)); /* moved */
	assert_false(own_may_commit(&o, 2000, QUEUE_MEMBER_LIVE, "a", 9, 7)); /* moved and back */
	assert_false(own_may_commit(&o, 2000, QUEUE_MEMBER_LIVE, NULL, 7, 7));
	/* the margin's floor, and its ceiling on a tiny lease */
	struct own_config c2 = {.self = "a", .lease_ms = 1000};
	own_init(&o, &c2);
	assert_int_equal(o.margin_ms, OWN_COMMIT_MARGIN_MIN_MS);
	struct own_config c3 = {.self = "a", .lease_ms = 400};
	own_init(&o, &c3);
	assert_int_equal(o.margin_ms, 200);
	struct own_config c4 = {.self = "a", .lease_ms = 8000, .margin_ms = 300};
	own_init(&o, &c4);
	assert_int_equal(o.margin_ms, 300);
}

/* A clock that goes back (the host must feed a monotonic one; this is what the core can guard):
 * the owner drops its lease and distrusts the renew in flight; the leader waits longer. */
static void
test_clock_backstep(void **state)
{
	(void)state;
	struct own o;
	struct own_config cfg = {.self = "a", .lease_ms = 4000};
	own_init(&o, &cfg);
	own_renew_sent(&o, 100000);
	own_renew_done(&o, true, 100050); /* lease to 104000 */
	assert_true(own_may_act(&o, 100500, QUEUE_MEMBER_LIVE));
	/* the clock steps back 30 s: a query at once says no lease... */
	assert_false(own_lease_held(&o, 70500));
	assert_false(own_may_act(&o, 70500, QUEUE_MEMBER_LIVE));
	assert_int_equal(o.clock_backsteps, 0);
	/* ...and the next call that changes the core drops it for good */
	assert_false(own_self_live_due(&o, 70600, QUEUE_MEMBER_LIVE, false));
	assert_int_equal(o.clock_backsteps, 1);
	assert_int_equal(o.lease_until, 0);
	assert_false(own_lease_held(&o, 70600));
	assert_false(own_lease_held(&o, 103999)); /* not back when the old clock's time comes */
	/* a renew is due at once (not 30 s later), and counts on the new clock */
	assert_true(own_renew_due(&o, 70600));
	own_renew_sent(&o, 70600);
	own_renew_done(&o, true, 70700);
	assert_int_equal(o.lease_until, 74600);
	assert_true(own_may_act(&o, 71000, QUEUE_MEMBER_LIVE));
	/* a renew in flight across a step back does not extend the lease */
	own_renew_sent(&o, 71600);
	assert_int_equal(own_drain_tick(&o, 41600, QUEUE_MEMBER_LIVE, 0), 0); /* steps back */
	own_renew_done(&o, true, 41700);
	assert_int_equal(o.lease_until, 0);
	assert_int_equal(o.renew_failures, 1);
	assert_int_equal(o.clock_backsteps, 2);

	/* leader side: a step back delays verdicts, never hastens them */
	struct own l;
	struct own_config lc = {.self = "a", .lease_ms = 4000}; /* grace 1000 */
	own_init(&l, &lc);
	struct own_action act[OWN_MAX_ACTIONS];
	const char *conf[] = {"a", "b"};
	struct queue_member m[2] = {mem("a", QUEUE_MEMBER_LIVE, 1, 10),
				    mem("b", QUEUE_MEMBER_LIVE, 2, 11)};
	assert_int_equal(own_leader_tick(&l, 50000, true, 2, m, 2, conf, 2, act, OWN_MAX_ACTIONS),
			 0);
	m[0].renew_index = 12;
	assert_int_equal(own_leader_tick(&l, 54000, true, 2, m, 2, conf, 2, act, OWN_MAX_ACTIONS),
			 0);
	/* back to 20000: b was last seen "at 20000" now: nothing before 25000 */
	assert_int_equal(own_leader_tick(&l, 20000, true, 2, m, 2, conf, 2, act, OWN_MAX_ACTIONS),
			 0);
	m[0].renew_index = 13;
	assert_int_equal(own_leader_tick(&l, 24999, true, 2, m, 2, conf, 2, act, OWN_MAX_ACTIONS),
			 0);
	size_t n = own_leader_tick(&l, 25000, true, 2, m, 2, conf, 2, act, OWN_MAX_ACTIONS);
	assert_int_equal(n, 1);
	assert_string_equal(act[0].node, "b");
	assert_int_equal(act[0].state, QUEUE_MEMBER_DOWN);
}

/*
 * One owner and one leader, each on its own clocks, in true time T (ms): each node has a
 * monotonic clock (its own origin, as after different boots) and a wall clock that NTP steps
 * 30 s: the owner's back, the leader's forward, at random moments.  The owner renews (commits
 * after random delays, some lost); the leader observes late and proposes DOWN; whenever a DOWN
 * the state machine would apply commits, the owner must not hold its lease by its own clock at
 * that instant.  Returns the number of such overlaps over `seeds` runs.
 *   feed_wall  the host feeds the wall clocks instead of the monotonic ones
 *   step_owner / step_leader  which wall clocks step
 */
static unsigned
clock_scenario(unsigned seeds, bool feed_wall, bool step_owner, bool step_leader)
{
	unsigned overlaps = 0;
	for (uint64_t seed = 1; seed <= seeds; seed++) {
		uint64_t rs = seed * 7919;
		struct own own, lead;
		struct own_config oc = {.self = "b", .lease_ms = 2000 + rnd(&rs) % 3000};
		struct own_config lc = oc;
		lc.self = "a";
		own_init(&own, &oc);
		own_init(&lead, &lc);
		const uint64_t mono_o0 = 5000000 + rnd(&rs) % 1000000,
			       mono_l0 = 1000 + rnd(&rs) % 9000;
		const uint64_t wall0 = 1700000000000ull;
		const uint64_t step_o = 5000 + rnd(&rs) % 20000, step_l = 5000 + rnd(&rs) % 20000;
		uint64_t committed_index = 5, leader_view = 5;
		uint64_t pend_commit_at = 0, pend_learn_at = 0, pend_index = 0;
		uint64_t view_at = 0, view_index = 0, down_at = 0, down_expect = 0, next_index = 6;
		bool overlapped = false;
		for (uint64_t T = 1; T < 45000 && !overlapped; T++) {
			uint64_t on = feed_wall
					  ? wall0 + T - (step_owner && T >= step_o ? 30000 : 0)
					  : mono_o0 + T;
			uint64_t ln = feed_wall
					  ? wall0 + T + (step_leader && T >= step_l ? 30000 : 0)
					  : mono_l0 + T;
			if (own_renew_due(&own, on) && pend_commit_at == 0 && pend_learn_at == 0) {
				own_renew_sent(&own, on);
				if (rnd(&rs) % 10 == 0) {
					pend_learn_at = T + 1 + rnd(&rs) % 2000; /* lost */
					pend_index = 0;
				} else {
					pend_commit_at = T + rnd(&rs) % 600;
					pend_index = next_index++;
				}
			}
			if (pend_commit_at != 0 && T >= pend_commit_at) {
				pend_commit_at = 0;
				committed_index = pend_index;
				pend_learn_at = T + rnd(&rs) % 300;
				view_at = T + rnd(&rs) % 600;
				view_index = pend_index;
			}
			if (view_at != 0 && T >= view_at) {
				if (view_index > leader_view)
					leader_view = view_index;
				view_at = 0;
			}
			if (pend_learn_at != 0 && T >= pend_learn_at) {
				own_renew_done(&own, pend_index != 0, on);
				pend_learn_at = 0;
			}
			/* the owner's host ticks (own_self_live_due is one of its calls) */
			(void)own_self_live_due(&own, on, QUEUE_MEMBER_LIVE, false);
			if (down_at != 0 && T >= down_at) {
				if (committed_index == down_expect && own_lease_held(&own, on))
					overlapped = true;
				down_at = 0;
			}
			struct queue_member m[2] = {mem("a", QUEUE_MEMBER_LIVE, 1, 1),
						    mem("b", QUEUE_MEMBER_LIVE, 2, leader_view)};
			const char *conf[] = {"a", "b"};
			struct own_action act[4];
			size_t n = own_leader_tick(&lead, ln, true, 1, m, 2, conf, 2, act, 4);
			for (size_t i = 0; i < n; i++)
				if (strcmp(act[i].node, "b") == 0 &&
				    act[i].state == QUEUE_MEMBER_DOWN && down_at == 0) {
					down_at = T + rnd(&rs) % 50;
					down_expect = act[i].expect_renew_index;
				}
		}
		overlaps += overlapped;
	}
	return overlaps;
}

static void
test_wall_clock_steps(void **state)
{
	(void)state;
	/* The host's clock (clock_mono_ms): steps of the wall clocks change nothing. */
	assert_int_equal(clock_scenario(60, false, true, true), 0);
	/* Fed the wall clock, the owner's step back is caught by the core (lease dropped). */
	assert_int_equal(clock_scenario(60, true, true, false), 0);
	/* Fed the wall clock, the leader's step forward cannot be seen by the core: DOWN comes
	 * while the owner still holds its lease.  (This is why the host feeds the monotonic clock,
	 * and shows the scenario is strong enough to catch it.) */
	assert_true(clock_scenario(60, true, false, true) > 0);
}

/* The queue state machine honours the leader's precondition: a DOWN whose expected renew index
 * is stale (a Renew committed after the leader saw the lease lapse) changes nothing. */
static int
fsm_member(struct queue_fsm *q, struct store *st, uint64_t index, const char *node, int state,
	   bool has_expect, uint64_t expect)
{
	Relay__Member mb = RELAY__MEMBER__INIT;
	mb.node = (char *)node;
	mb.state = (Relay__MemberState)state;
	mb.has_expect_renew_index = has_expect;
	mb.expect_renew_index = expect;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	cmd.member = &mb;
	struct store_batch b;
	store_batch_init(&b);
	int rv = queue_apply(q, index, &cmd, &b);
	if (rv == 0)
		assert_int_equal(store_write(st, &b, 0), 0);
	store_batch_fini(&b);
	return rv;
}

static void
fsm_renew(struct queue_fsm *q, struct store *st, uint64_t index, const char *node)
{
	Relay__Renew rn = RELAY__RENEW__INIT;
	rn.node = (char *)node;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
	cmd.renew = &rn;
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(queue_apply(q, index, &cmd, &b), 0);
	assert_int_equal(store_write(st, &b, 0), 0);
	store_batch_fini(&b);
}

static int
fsm_state(struct queue_fsm *q, const char *node)
{
	struct queue_member m[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(q, m, QUEUE_MEMBERS_MAX);
	for (size_t i = 0; i < n; i++)
		if (strcmp(m[i].node, node) == 0)
			return m[i].state;
	return -1;
}

static void
test_fsm_down_precondition(void **state)
{
	(void)state;
	struct store *st;
	struct queue_fsm *q;
	assert_int_equal(store_mem_new(&st), 0);
	assert_int_equal(queue_fsm_new(st, &q), 0);
	assert_int_equal(fsm_member(q, st, 1, "a", QUEUE_MEMBER_LIVE, false, 0), 0);
	assert_int_equal(fsm_member(q, st, 2, "b", QUEUE_MEMBER_LIVE, false, 0), 0);
	fsm_renew(q, st, 3, "b");
	/* the leader saw renew index 0 lapse, but b renewed at 3 since: no-op */
	assert_int_equal(fsm_member(q, st, 4, "b", QUEUE_MEMBER_DOWN, true, 0), 0);
	assert_int_equal(fsm_state(q, "b"), QUEUE_MEMBER_LIVE);
	/* it saw 3 lapse: applies */
	assert_int_equal(fsm_member(q, st, 5, "b", QUEUE_MEMBER_DOWN, true, 3), 0);
	assert_int_equal(fsm_state(q, "b"), QUEUE_MEMBER_DOWN);
	/* an unknown member's DOWN with a precondition: nothing is created */
	assert_int_equal(fsm_member(q, st, 6, "zz", QUEUE_MEMBER_DOWN, true, 0), 0);
	assert_int_equal(fsm_state(q, "zz"), -1);
	/* b renews while DOWN (it came back): the renew index moves past since_index */
	fsm_renew(q, st, 7, "b");
	struct queue_member m[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(q, m, QUEUE_MEMBERS_MAX);
	bool seen = false;
	for (size_t i = 0; i < n; i++)
		if (strcmp(m[i].node, "b") == 0) {
			seen = true;
			assert_true(m[i].renew_index > m[i].since_index);
		}
	assert_true(seen);
	queue_fsm_free(q);
	store_free(st);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_owner_lease),
	    cmocka_unit_test(test_may_start_table),
	    cmocka_unit_test(test_leader_down_live_removed),
	    cmocka_unit_test(test_drain_and_self_live),
	    cmocka_unit_test(test_down_never_overlaps_lease),
	    cmocka_unit_test(test_may_commit_margin),
	    cmocka_unit_test(test_clock_backstep),
	    cmocka_unit_test(test_wall_clock_steps),
	    cmocka_unit_test(test_fsm_down_precondition),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
