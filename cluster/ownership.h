/*
 * ownership.h - the lease core of delivery ownership (issue 5, guarantee G4): pure, no clock,
 * no I/O, no allocation.  The host (node/delivery/delivery_own.c) feeds it the time, its own Renew
 * proposals and their results, and the applied member table of the queue state machine
 * (queue_fsm_members); it answers what to propose and whether this node may start attempts.
 *
 * Who owns what is decided in the queue state machine (cluster/queue_fsm.h: domains, epochs,
 * Member commands).  This core adds time, on two sides:
 *
 * Owner side.  A node holds a lease while a Renew it proposed at time s has committed (and been
 * applied here): lease_until = s + lease (the latest such s).  It may start an attempt for an
 * item only while it holds the lease, its own member state is LIVE and its applied state says it
 * owns the item's domain at the item's epoch (own_may_start).  A node cut off from the majority
 * cannot commit a Renew, so it stops starting attempts at most `lease` after its last successful
 * renew was proposed.  Renews are proposed every renew interval, one at a time.
 *
 * Leader side.  The leader remembers, per member, when it saw the member's renew index change in
 * its applied state (it polls; seeing late only delays the verdict).  On becoming leader every
 * member starts with a fresh "seen" time (nothing about leases lives only in an old leader's
 * memory: the new one just waits a whole lease).  A LIVE or DRAINING member not seen renewing for
 * lease + grace gets Member{DOWN, expect_renew_index = the index it saw}: the state machine
 * applies it only if no later Renew committed, so the member's lease (counted from a proposal
 * time no later than the leader's apply time of that Renew) lapsed at least `grace` before the
 * DOWN can commit.  grace covers clock rate differences and the leader's polling delay.  A DOWN
 * member whose renew index moved past the DOWN (it came back) gets Member{LIVE}.  A member that
 * is not in the Raft configuration any more gets Member{REMOVED, expect_renew_index = the index
 * it saw}, but only lease + grace after the later of the moment this leader first saw it out (or
 * its election) and the last Renew of that member it saw: a removed node receives no more
 * entries, so it cannot learn that a later Renew committed, and its lease ends at most `lease`
 * after its removal reached it - unless it is added back, and then it applies every Renew of its
 * that committed meanwhile (raft_sim --seed 1082597075 --nodes 3: counted from the removal only,
 * n2 applied such a Renew and held a lease after its domains had moved).  So a Renew counts as
 * for DOWN, and the leader's host refuses forwarded Renews from nodes out of its configuration
 * (craft__renew_refused), or a removed node that keeps running would never be REMOVED.
 * Each proposal is repeated at most every retry interval while its condition holds.
 *
 * Drain.  A member whose state is DRAINING starts no new attempt; when it has no attempt in
 * flight, or drain_timeout after it saw DRAINING (then the host abandons what is in flight), it
 * proposes Member{self, DRAINED, expect_since_index = the since index of that DRAINING state};
 * its domains then move.  The precondition matters because the view it judged may be old: a
 * node back from a crash proposes itself LIVE from the state it restarted with, which may
 * predate the DRAINING; that LIVE can commit before the DRAINED, and a DRAINED applied to a
 * LIVE member would move the domains of an owner that holds its lease (tests/sim, seeds 310887
 * and 310908); with the precondition it is a no-op.
 *
 * The lease bounds the whole attempt, not only its start (DESIGN "Safety rules").  An attempt
 * commits when the owner sends the end of data (the final "." of DATA, or BDAT LAST): until then
 * the destination delivers nothing.  The host asks own_may_commit right before it hands the end
 * of data to the socket; without it the attempt is abandoned (the connection closed, the
 * recipients left queued).  Starting and committing both need the lease to run at least
 * margin_ms longer (max(lease / 8, OWN_COMMIT_MARGIN_MIN_MS)): the margin covers the time the
 * end of data takes to reach the destination and the attempts a refused commit would waste.  So
 * a DOWN verdict, which commits at least `grace` after the owner's lease lapsed, comes at least
 * margin + grace after the owner's last commit.
 *
 * Time.  Every `now` is one clock of the node that calls: the host feeds its monotonic clock
 * (node/clock.h clock_mono_ms, CLOCK_BOOTTIME), never the wall clock, on both sides: an NTP step
 * of the wall clock must neither stretch an owner's lease (a step back) nor make the leader see a
 * lease lapse early (a step forward).  Times of different nodes are never compared: the owner
 * counts its lease from its own proposal time, the leader counts from its own apply time.  What
 * this core can see, it guards: the owner side remembers the latest time it was given, and a
 * call with an earlier time (a clock that went back) drops the lease and distrusts the renew in
 * flight (counted in clock_backsteps); a query with an earlier time answers "no lease".  A clock
 * that jumps forward on the leader cannot be seen from here: only the host's monotonic clock
 * excludes it.
 */
#ifndef RELAY_OWNERSHIP_H
#define RELAY_OWNERSHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue_fsm.h"

#define OWN_DEFAULT_LEASE_MS 4000u
#define OWN_DEFAULT_DRAIN_TIMEOUT_MS 30000u
#define OWN_COMMIT_MARGIN_MIN_MS 250u	  /* the commit margin is max(lease / 8, this) */
#define OWN_MAX_ACTIONS QUEUE_MEMBERS_MAX /* proposals one tick may return */

struct own_config {
	const char *self;	   /* this node's id (copied) */
	uint64_t lease_ms;	   /* 0: default */
	uint64_t renew_ms;	   /* 0: lease / 4 */
	uint64_t grace_ms;	   /* 0: max(1000, lease / 4) */
	uint64_t retry_ms;	   /* 0: lease / 2: repeat an unanswered proposal */
	uint64_t drain_timeout_ms; /* 0: default */
	uint64_t margin_ms; /* 0: max(lease / 8, OWN_COMMIT_MARGIN_MIN_MS), at most lease/2 */
};

/* What the host should propose: Member{node, state[, expect_renew_index]} */
struct own_action {
	char node[QUEUE_NODE_MAX + 1];
	uint8_t state; /* enum queue_member_state */
	bool has_expect;
	uint64_t expect_renew_index;
};

struct own_seen {
	char node[QUEUE_NODE_MAX + 1];
	uint64_t renew_index;
	uint64_t seen_ms;      /* leader's time it saw renew_index (or became leader) */
	uint64_t proposed_ms;  /* last action proposed for this member; 0 none */
	uint64_t out_since_ms; /* when this leader first saw it out of the Raft
				  configuration; 0 while it is in */
	uint8_t proposed_state;
	bool used;
};

struct own {
	char self[QUEUE_NODE_MAX + 1];
	uint64_t lease_ms, renew_ms, grace_ms, retry_ms, drain_timeout_ms, margin_ms;
	/* the clock (see "Time" above) */
	uint64_t clock_ms;	  /* the latest time a call that changes *o was given */
	uint64_t clock_backsteps; /* calls whose time was earlier: the lease was dropped */
	/* owner side */
	uint64_t lease_until; /* 0: no lease */
	bool renew_inflight;
	bool renew_distrusted;	/* the clock went back since the one in flight was sent */
	uint64_t renew_sent_ms; /* of the one in flight */
	uint64_t last_renew_ms; /* when the last renew was proposed */
	uint64_t renews, renew_failures;
	uint64_t live_proposed_ms; /* own LIVE at boot / after DOWN: last proposal */
	/* drain */
	uint64_t drain_seen_ms; /* when this node saw itself DRAINING; 0 not draining */
	uint64_t drained_proposed_ms;
	/* leader side */
	bool leader;
	uint64_t term;
	uint64_t leader_since_ms;
	struct own_seen seen[QUEUE_MEMBERS_MAX];
	uint64_t downs, lives, removes; /* actions proposed */
};

void own_init(struct own *o, const struct own_config *cfg);

/* Owner side.  own_renew_due: propose a Renew now (none in flight and the interval passed, or no
 * lease held).  own_renew_sent: it was proposed at now.  own_renew_done: its result (ok: committed
 * and applied here) - the lease extends to sent + lease. */
bool own_renew_due(const struct own *o, uint64_t now);
void own_renew_sent(struct own *o, uint64_t now);
void own_renew_done(struct own *o, bool ok, uint64_t now);
bool own_lease_held(const struct own *o, uint64_t now);

/* Does the lease run at least the commit margin past now (and has the clock not gone back)? */
bool own_lease_margin(const struct own *o, uint64_t now);

/* May this node start attempts at all: it is LIVE (enum queue_member_state; -1 when it is not
 * in the member table) and its lease runs at least the margin past now? */
bool own_may_act(const struct own *o, uint64_t now, int self_state);

/* May this node start an attempt for an item whose domain its applied state assigns to
 * `owner` at `epoch`, given its own member state (enum queue_member_state, or -1 when it is not
 * in the member table)?  item_epoch is the epoch the host will put in the Outcome. */
bool own_may_start(const struct own *o, uint64_t now, int self_state, const char *owner,
		   uint64_t epoch, uint64_t item_epoch);

/* May an attempt started at item_epoch commit now (send its end of data)?  As own_may_start,
 * but a DRAINING member may finish what it started: its domains move only after DRAINED. */
bool own_may_commit(const struct own *o, uint64_t now, int self_state, const char *owner,
		    uint64_t epoch, uint64_t item_epoch);

/* Should this node propose Member{self, LIVE}?  Yes when it is not in the table or is DOWN (or
 * DRAINED and `revive` is set: at boot), at most every retry interval. */
bool own_self_live_due(struct own *o, uint64_t now, int self_state, bool revive);

/* Drain: given this node's state and its attempts in flight, returns 1 to propose DRAINED now
 * (with expect_since_index = this node's since_index in the table it read self_state from), 2 to
 * abandon the attempts in flight first (drain_timeout passed), 0 nothing. */
int own_drain_tick(struct own *o, uint64_t now, int self_state, size_t inflight);

/*
 * Leader side, every tick on every node (leader tells whether this node leads in term).
 * members: the applied table (queue_fsm_members); conf/nconf: the node ids in the Raft
 * configuration (voters and learners; nconf 0 = unknown: nothing is removed).  Writes at most
 * cap actions to out and returns their number.
 */
size_t own_leader_tick(struct own *o, uint64_t now, bool leader, uint64_t term,
		       const struct queue_member *members, size_t n, const char *const *conf,
		       size_t nconf, struct own_action *out, size_t cap);

#endif
