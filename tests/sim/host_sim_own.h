/*
 * host_sim_own.h - delivery ownership in host_sim (issue 11, section 5): the REAL lease core
 * (cluster/ownership.c) on every simulated node, hosted as node/delivery/delivery_own.c hosts
 * it in relayd, and delivery attempts that take time and pass own_may_commit before their
 * final "." (see host_sim_own.c).  The simulator (host_sim.c) owns time, the PRNG, the nodes'
 * processes and clocks; it calls in here when a process starts or dies, on the node's own
 * ownership tick, and every unit for the attempts.
 *
 * Invariant checked here, in TRUE simulated time: at no instant are two nodes in the
 * committing window (own_may_commit passed, the end of data not yet at the destination) of the
 * same domain.
 */
#ifndef RELAY_HOST_SIM_OWN_H
#define RELAY_HOST_SIM_OWN_H

#include <stdint.h>

struct craft;

#define HSO_TICK_MS 100u /* node/delivery DLV_OWN_TICK_MS: the ownership tick, node's clock */

/* What host_sim.c gives this part (its PRNG, failure, trace, true time). */
struct hso_env {
	uint64_t (*rnd_n)(uint64_t n);
	void (*fail)(const char *fmt, ...);
	void (*trace)(const char *fmt, ...);
	/* an Outcome for queue_id was proposed (it may remove the message from the queue) */
	void (*outcome_proposed)(const char *queue_id);
	uint64_t (*mono)(int idx); /* node idx's monotonic clock now (proposal callbacks) */
	const uint64_t *now;	   /* true time */
	int outcome_kinds;	   /* 1: DEFERRED and FAILED outcomes too, some with a DSN */
};

struct hso_stats {
	uint64_t renews_ok, renews_failed, members, verdicts, attempts, aborted, commits,
	    outcomes_ok, outcomes_failed, overlap_checks, backsteps, deferred, failed, dsns, drains;
};

/* A seed begins: n_ids nodes (1..n_ids), lease_ms as relayd's `lease` key (grace and margin
 * from their defaults). */
void hso_init(const struct hso_env *env, int n_ids, uint64_t lease_ms);
void hso_fini(void);
/* Node idx's process started (c: its craft) / died (its core's memory and attempts are lost;
 * an end of data already on the wire still reaches the destination: its window runs on). */
void hso_start(int idx, const char *name, struct craft *c, uint64_t mono);
void hso_crash(int idx);
/* The ownership tick of node idx (every HSO_TICK_MS of its own clock): renew, self LIVE,
 * drain, the leader's verdicts, and new attempts.  wall: its wall clock (at_ms fields only). */
void hso_tick(int idx, uint64_t mono, uint64_t wall);
/* Every unit: node idx's attempts whose data is sent pass the gate (or abort); windows that
 * are over propose their Outcome.  up: its process runs (mono meaningless otherwise). */
void hso_step(int idx, int up, uint64_t mono, uint64_t wall);
/* After the heal's quiet point: no more proposals from ownership (the log goes idle). */
void hso_quiet(void);
/* An operator's `relayctl drain NODE` through node via (admin_drain: Member{NODE, DRAINING}).
 * 0 when via's craft took the proposal. */
int hso_operator_drain(int via, const char *node, uint64_t wall);
void hso_stats(struct hso_stats *st);

#endif
