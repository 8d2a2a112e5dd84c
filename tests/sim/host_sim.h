/*
 * host_sim.h - what host_sim.c (the simulator: edge, faults, loop) and host_sim_check.c (its
 * safety checks over every node) share: the simulated nodes and the run's state.  Internal to
 * tests/sim.
 */
#ifndef RELAY_HOST_SIM_H
#define RELAY_HOST_SIM_H

#include "craft.h"
#include "queue_fsm.h"
#include "raft.h"
#include "store.h"

#include <stddef.h>
#include <stdint.h>

#define SIM_MAX 7	       /* nodes, the spare included */
#define SIM_NET_MAX 20000      /* frames in flight; beyond, the network drops */
#define SIM_HB 10	       /* heartbeat_ms */
#define SIM_ELECTION 100       /* election_ms */
#define SIM_HEAL_BUDGET 40000  /* units allowed to converge after the heal */
#define SIM_DURABLE_EVERY 97   /* units between durability checks */
#define SIM_DURABLE_SAMPLES 24 /* committed indexes checked each time */
#define SIM_DRIFT_PPM 2000     /* clock rate within +-0.2% */
#define SIM_STEP_MS 30000      /* a wall clock step, at most */
#define SIM_EPOCH_MS 1700000000000ULL
#define SIM_BODY_MAX 2000
#define SIM_BACKLOG 80	     /* queued messages beyond which deletes get likelier */
#define SIM_DIGEST_EVERY 8   /* indexes between digests (a digest walks the whole queue) */
#define SIM_PROPS 100000     /* proposals tracked per seed (--long: about 40000) */
#define SIM_LONG_OUTAGE 6000 /* a crash or partition in four lasts up to this much longer */
#define SIM_PAUSE_MAX 5000   /* a process stall, at most */

struct pw {		      /* one write of a node's disk */
	struct store_batch b; /* owned */
	uint64_t due;
	int started; /* io.write_start: craft_write_done at completion */
	int visible; /* applied to vstore already (write_now) */
	int durable; /* applied to dstore already */
	int fails;   /* completes with STORE_EIO */
	int nowal;   /* STORE_WRITE_NOWAL: never durable by itself, only by a flush */
};

struct node {
	int idx; /* 1..n_ids */
	char name[8], addr[16];
	int up;
	int join; /* started outside its own `peers` (the spare) */
	struct craft *c;
	struct store *dstore;	   /* what the disk holds: fstore + WAL writes since the flush */
	struct store *fstore;	   /* what the last (atomic) flush persisted */
	struct store_batch *since; /* writes completed since the last flush, in order */
	size_t nsince, sincecap;
	struct store *vstore; /* what the running process reads (up only) */
	struct pw *pw;
	size_t npw, pwcap;
	uint64_t last_due;
	int digesting;
	uint64_t digest_due;
	int digest_rv;
	int run;
	uint64_t restart_at;
	uint64_t next_tick;
	uint64_t next_own_tick; /* the ownership tick (HSO_TICK_MS of its own clock) */
	uint64_t paused_until;	/* the process is stalled (a GC or VM pause, SIGSTOP): it runs
				   nothing, its clocks go on, its frames and disk completions wait */
	/* clocks: monotonic = base + now * (1 + drift); wall = monotonic + step */
	int64_t drift_ppm;
	uint64_t mono_base;
	int64_t wall_step;
	uint64_t raft_id;	    /* the Raft id of its current incarnation (also while down) */
	uint64_t applied;	    /* last index applied (hook), or the state loaded */
	uint64_t last_commit;	    /* leader check: commit seen at the last step, */
	struct raft_conf last_conf; /* under this configuration */
	uint64_t seen_commit;
	uint64_t lc_term, lc_checked;
	int wiped;	  /* its disk was wiped and it has not rejoined yet */
	uint64_t dead_id; /* the Raft id of the incarnation whose disk was lost last (0: none) */
};

struct msg {
	uint64_t at;
	int from, to;
	uint64_t cid, inc; /* envelope */
	int raft;
	struct raft_msg m; /* raft: owned copy */
	uint32_t kind;	   /* frame */
	uint8_t *data;	   /* owned */
	size_t len;
};

struct prop {
	int used;
	int kind; /* 0 accept, 1 delete, 2 outcome (delivered) */
	char qid[QUEUE_ID_MAX + 1];
	int status; /* 1 pending, 0 ok, <0 error */
};

struct sim {
	uint64_t seed, now, steps;
	int n_nodes, n_ids; /* voters at bootstrap; + the spare */
	int healing;
	struct node nd[SIM_MAX + 1];
	struct msg *net;
	size_t n_net;
	uint64_t cut_until[SIM_MAX + 1][SIM_MAX + 1];
	char peers_buf[SIM_MAX][32];
	const char *peers[SIM_MAX];
	/* knobs */
	uint32_t drop_ppm, dup_ppm, crash_ppm, part_ppm, power_ppm, wipe_ppm, disk_fail_ppm;
	uint32_t transfer_ppm, member_ppm, compact_ppm, step_ppm, propose_ppm, pause_ppm;
	uint32_t flush_ppm; /* an atomic flush of a node's NOWAL writes (host_sim.c node_flush) */
	unsigned delay_max, sync_max, snap_entries, chunk, retain;
	int spread;			/* craft_config.snapshot_spread (--spread) */
	int ops;			/* --ops: drains, DEFERRED/FAILED outcomes and DSNs */
	int multi;			/* --multi: one to four recipients per message */
	uint32_t drain_ppm;		/* an operator drains a node (--ops only) */
	uint64_t lease_ms;		/* relayd's `lease` on every node */
	uint64_t *dead_ids, n_dead_ids; /* every incarnation whose disk was lost */
	/* oracles */
	uint64_t *leader_of_term, n_lot;
	uint64_t *cterm, n_cterm; /* committed index -> term (first seen) */
	uint64_t *cseen, n_cseen; /* committed index -> term of the node that saw it */
	uint64_t commit_max;
	uint64_t *digest_at, n_digest; /* index -> queue digest after applying it (+1) */
	struct prop *props;
	size_t n_props;
	uint64_t next_qid;
	/* stats */
	uint64_t n_crash, n_power, n_wipe, n_fail_writes, n_transfers, n_members, n_compact, n_msgs,
	    n_props_ok, n_props_fail, n_applied, n_installs_seen, n_durable_checks, n_leaders;
};

extern struct sim *S;

/* host_sim.c */
uint64_t rnd_n(uint64_t n);
void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t *vec_at(uint64_t **v, uint64_t *n, uint64_t i);

/* host_sim_check.c */
int node_of_id(uint64_t id);
struct node *leader(void); /* the up leader of the highest term, NULL none */
void check_node(struct node *n);
void check_durable(void);
int install_marker(struct node *k); /* installing a snapshot (marker on disk, or fetching) */

#endif
