/*
 * test_raft_nomem.c: allocation failures inside the Raft core (cluster/raft.c) must never make
 * it commit on a partial view of the voters (issue 11, section 4).
 *
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc (tests/unit/cluster/CMakeLists.txt):
 * the calls made by relay_raft and by this file go through the wrappers below; cmocka, a shared
 * library, is unaffected.  While armed, every allocation whose size falls in a window fails,
 * which singles out one kind of buffer (here the per-member ring of in-flight AppendEntries:
 * max_inflight x 8 bytes, with an unusual max_inflight so that nothing else has that size).
 *
 * The scenario: a single-voter leader adds a second voter.  From then on a quorum is two, so
 * the configuration entry must not commit before the new voter acknowledges it; the new voter
 * must be tracked (the leader replicates to it) even if memory is short when the change is
 * appended.  Before the fix the core allocated the ring in conf_apply, dropped the member on
 * failure ("treated as unreachable"), and maybe_commit then read m[quorum - 1] past the one
 * voter it tracked: whatever the stack held there decided the commit.  The test paints the
 * stack with the configuration entry's index before the leader counts its own persistence, so
 * that read, had it happened, commits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "raft.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);

static size_t fail_min, fail_max; /* armed while fail_max != 0: every size in the window fails */
static int failures;

static bool
should_fail(size_t n)
{
	if (fail_max != 0 && n >= fail_min && n <= fail_max) {
		failures++;
		return true;
	}
	return false;
}

void *
__wrap_malloc(size_t n)
{
	return should_fail(n) ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t a, size_t b)
{
	return should_fail(a * b) ? NULL : __real_calloc(a, b);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return should_fail(n) ? NULL : __real_realloc(p, n);
}

#define INFLIGHT 7 /* ring = 56 bytes: no other allocation of the core has that size here */

/* What one drive of the core saw go out. */
struct seen {
	unsigned app_to_2; /* AppendEntries addressed to node 2 */
};

/* Writes v over a large stretch of the stack below the caller's frame, where the frames of the
 * next call the caller makes will live. */
static void __attribute__((noinline))
paint_stack(uint64_t v)
{
	volatile uint64_t buf[2048];
	for (size_t i = 0; i < sizeof(buf) / sizeof(buf[0]); i++)
		buf[i] = v;
}

/* Hands out every ready (instant disk: each is reported durable right away, with the stack
 * painted with paint first) and notes the messages. */
static void
drive(struct raft *r, struct seen *seen, uint64_t paint)
{
	struct raft_ready rd;
	while (raft_ready_get(r, &rd) > 0) {
		for (size_t i = 0; i < rd.n_msgs; i++)
			if (rd.msgs[i].type == RAFT_MSG_APP && rd.msgs[i].to == 2)
				seen->app_to_2++;
		bool persist = rd.need_persist;
		uint64_t seq = rd.seq;
		raft_advance(r, &rd);
		if (persist) {
			paint_stack(paint);
			raft_persisted(r, seq);
		}
	}
}

static struct raft *
single_voter_leader(void)
{
	struct raft_config cfg = {.id = 1, .election_tick = 10, .heartbeat_tick = 1,
				  .max_inflight = INFLIGHT, .rng_seed = 1};
	struct raft *r = NULL;
	assert_int_equal(raft_new(&cfg, &r), 0);
	struct raft_conf conf = {.n_voters = 1, .voters = {1}};
	assert_int_equal(raft_bootstrap(r, &conf), 0);
	struct seen seen = {0};
	drive(r, &seen, 0);
	assert_int_equal(raft_campaign(r), 0);
	struct raft_status st;
	for (int i = 0; i < 50; i++) {
		drive(r, &seen, 0);
		raft_status(r, &st);
		if (st.role == RAFT_LEADER && st.commit >= st.last_index)
			break;
		raft_tick(r);
	}
	raft_status(r, &st);
	assert_int_equal(st.role, RAFT_LEADER);
	assert_int_equal(st.commit, st.last_index); /* its no-op committed: a change may start */
	return r;
}

/* Memory short while a second voter is added: it is tracked, and the change commits only once
 * it acknowledged. */
static void
test_add_voter_with_memory_short(void **state)
{
	(void)state;
	struct raft *r = single_voter_leader();
	struct raft_status st;
	raft_status(r, &st);
	uint64_t term = st.term;

	fail_min = fail_max = INFLIGHT * sizeof(uint64_t);
	failures = 0;
	uint64_t idx = 0;
	int rv = raft_propose_conf(r, RAFT_CONF_ADD_VOTER, 2, &idx, NULL);
	assert_int_equal(rv, 0);
	struct seen seen = {0};
	drive(r, &seen, idx);
	for (int i = 0; i < 3; i++) { /* a few heartbeats: still no acknowledgement from 2 */
		raft_tick(r);
		drive(r, &seen, idx);
	}
	fail_max = 0;
	print_message("ring allocations failed: %d, AppendEntries to node 2: %u\n", failures,
		      seen.app_to_2);

	raft_status(r, &st);
	assert_int_equal(st.role, RAFT_LEADER);
	assert_int_equal(st.conf.n_voters, 2);
	assert_true(st.persisted_index >= idx);
	/* one voter of two persisted it: not a quorum */
	assert_true(st.commit < idx);
	/* node 2 is tracked: the leader replicates to it and lists it */
	assert_true(seen.app_to_2 > 0);
	bool listed = false;
	for (uint32_t i = 0; i < st.n_peers; i++)
		listed |= st.peers[i].id == 2 && st.peers[i].voter;
	assert_true(listed);

	/* node 2 acknowledges: now a quorum holds it */
	struct raft_msg ack = {.type = RAFT_MSG_APP_RESP, .from = 2, .to = 1, .term = term,
			       .index = idx};
	assert_int_equal(raft_step(r, &ack), 0);
	drive(r, &seen, 0);
	raft_status(r, &st);
	assert_int_equal(st.commit, idx);
	raft_free(r);
}

/* A max_inflight beyond the named bound is refused (the rings are allocated up front). */
static void
test_inflight_bound(void **state)
{
	(void)state;
	struct raft_config cfg = {.id = 1, .max_inflight = RAFT_MAX_INFLIGHT + 1};
	struct raft *r = NULL;
	assert_int_equal(raft_new(&cfg, &r), RAFT_EINVAL);
	cfg.max_inflight = RAFT_MAX_INFLIGHT;
	assert_int_equal(raft_new(&cfg, &r), 0);
	raft_free(r);
}

int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_add_voter_with_memory_short),
	    cmocka_unit_test(test_inflight_bound),
	};
	(void)argc;
	(void)argv;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
