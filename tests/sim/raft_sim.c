/*
 * raft_sim.c - deterministic simulator for the Raft core (cluster/raft.c) and the queue state
 * machine (cluster/queue_fsm.c) together.
 *
 * What it does.  N nodes (plus one spare id for membership changes) run the real core in one
 * process under simulated time (1 unit = 1 ms; a Raft tick every 10 units).  ONE seeded
 * splitmix64 PRNG drives everything: the network (drop, duplication, delay and so reordering,
 * symmetric and one-way partitions), crashes and restarts, per-node disks whose writes become
 * durable only when a simulated fsync completes (a crash keeps only a random prefix of the
 * writes not yet reported synced; a failed write crashes the node), client proposals sent to
 * random nodes (followers refuse; the sim forwards to the hinted leader), leadership
 * transfers, single-server membership changes (voters and learners, removing the leader
 * included) and log compaction with chunked snapshot install.  Each seed also picks its
 * knobs: loss/duplication/delay rates, crash and partition rates (a third of the seeds get
 * a hard profile with slow disks and power cuts), pre-vote and check-quorum, election and
 * heartbeat ticks, and per node the flow-control bounds.
 *
 * The state machine is the real one.  Every node has a queue_fsm over an in-memory store
 * (storage/store_mem.c) and hosts it the way cluster/cluster_raft.c does: the store writes of
 * queue_apply (and the applied index) join the node's ordered write stream after the log
 * writes of the entries they apply, so they become durable with them or later, and a crash
 * keeps a prefix of them too.  Two stores per node model that: `dstore` is what the disk holds,
 * `vstore` (the FSM's store) is dstore plus every write still in flight.  A crash loses the FSM
 * and vstore; the restart is queue_fsm_new over a copy of dstore, resuming at its applied
 * index (raft_set_applied).  A snapshot (compaction, or what raft_compact hands to a follower)
 * is the key/values of the queue CFs (STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX) of vstore
 * at the applied index; an install clears those CFs, writes the snapshot's, and calls
 * queue_fsm_reload (one batch, in the write stream like cluster_raft's install).  A node of the
 * initial configuration with no Raft state on disk (its bootstrap lost in a crash) bootstraps
 * again at start, as cluster_raft's craft__load does.
 *
 * Client proposals are packed relay.Command protobufs drawn from the seeded PRNG, each tagged
 * like cluster_raft's (origin node/boot/seq): Accepts (1-4 recipients over a few domains, small
 * bodies), Outcomes for an item (queued recipients of one domain) the proposer picks from its
 * own (possibly stale) FSM, carrying the epoch that FSM gives the domain (delivered, deferred,
 * failed, some with a DSN, some duplicated, some with an older epoch, some for unknown or
 * removed queue ids, a few with a recipient index past the message's: rejected at apply),
 * Deletes (some unknown), Hold/Release/Retry, DeferDomain (a dead destination's backoff, at
 * the proposer's epoch of the domain or an older one), Member commands (LIVE, DRAINING, DRAINED,
 * DOWN, REMOVED) and Renews, and verbatim re-proposals of earlier commands (a forward retried after
 * a lost reply).
 *
 * Lease mode (half the seeds): membership is not random but what the nodes do: every node
 * hosts the ownership core (cluster/ownership.c) like node/delivery/delivery_own.c, once per tick:
 * Renew every lease/4 (the lease runs from the proposal once it is applied here), Member{self,
 * LIVE} at boot, DRAINED when a drain is over, and as leader the DOWN (with
 * expect_renew_index) / LIVE / REMOVED verdicts; operators only drain; Outcomes come from
 * attempts a node starts under own_may_start and proposes later with the epoch read at the
 * start.  A crash loses the core's memory (lease, attempts).
 *
 * Run: a fault phase of --steps units, then a heal phase: every fault stops, every node is
 * restarted, and within a bounded time a leader must exist, proposals made after the heal
 * must commit and every member must apply everything committed (liveness).
 *
 * Checked after every step (failures print one reproduction line and exit non-zero):
 *   election safety     at most one leader per term (3.6.3 / Figure 3.2),
 *   log matching        (index, term) determines the data and, through the previous term,
 *                       the whole prefix (checked on every entry any node writes),
 *   commit consistency  a committed index never changes term on any node,
 *   leader completeness every leader holds every entry committed so far,
 *   state machine safety every node applies the same entry at each index, gets the same
 *                       queue_apply result (errors included) and reaches the same
 *                       queue_fsm_digest after it (tables index -> entry hash, result, digest);
 *                       a restarted node (queue_fsm_new over its durable store) and a node
 *                       that installed a snapshot (queue_fsm_reload) have the digest of their
 *                       applied index,
 *   queue model         an independent model of the queue rules (queue_fsm.h) applied to the
 *                       committed commands predicts each result and the recipient states of
 *                       the first node to apply each index; every Accept applied anywhere is
 *                       present in every live node's FSM that applied it unless a later
 *                       committed Outcome/Delete made all its recipients final, and nothing
 *                       else is (checked per apply, after every restart and install, every
 *                       few hundred steps on a random node, and on every node after the heal),
 *   ownership           (fencing, G4) an Outcome changes only recipients whose domain's epoch
 *                       at apply is the outcome's (the model fences with the epochs the
 *                       applying node had just before); after every index each domain with a
 *                       queued recipient has exactly one assignment, every other assigned
 *                       domain is an idle one (assigned before, no queued recipient) and no
 *                       assignment is ever forgotten (the model's domains stay far below
 *                       QUEUE_IDLE_DOMAINS_MAX: no eviction; with --idle-max N at most N are
 *                       idle and the forgotten ones sort first), with the model's queued count,
 *                       owned by a LIVE or DRAINING member or unowned only when no member is
 *                       LIVE; a domain's epoch never goes back and an assignment that changed
 *                       carries that index as its epoch;
 *                       tombstones make late Accepts of removed ids no-ops; the store's
 *                       ownership keys (0x01 D/M/T) match the FSM; after the heal every domain
 *                       is owned by a LIVE member (when one is LIVE); in lease mode no two
 *                       nodes may start attempts for one domain at the same simulated time
 *                       (own_may_start over each node's own applied state and lease) - one
 *                       known gap is counted instead (removed_overlaps: see removed_between)
 *                       unless --strict-lease,
 *   durability          a proposal applied anywhere is committed in the final log and
 *                       applied by every member after the heal; a durable store is never past
 *                       its durable log nor behind its snapshot; a node's view store equals its
 *                       durable store whenever no write is in flight,
 *   snapshots           installed snapshot data is byte-exact (checksummed, index-tagged),
 *   bounds              messages respect max_msg_entries/max_msg_bytes; followers never
 *                       accept proposals; no node rejects a well-formed message.
 *
 * Usage: raft_sim [--seed S | --seeds A:B] [--nodes N] [--steps K] [--long] [--trace]
 *                 [--quiet] [--regress FILE] [--prevote 0|1] [--check-quorum 0|1]
 *                 [--strict-lease] [--heal-compact N] [--idle-max N]
 * (--heal-compact: entries between compactions after the heal, default SIM_HEAL_COMPACT;
 * 20, the fault phase's, shows the snapshot-restart livelock of raft.c: see README.md.)
 * (--prevote/--check-quorum force a setting; by default each seed picks, at least one on.
 * --long is 2,000,000 steps per seed.)
 */
#include "ownership.h"
#include "queue_fsm.h"
#include "raft.h"
#include "relay.pb-c.h"
#include "store.h"

#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SIM_MAX_NODES 8
#define SIM_TICK 10	  /* time units per raft tick */
#define SIM_NET_MAX 20000 /* messages in flight; beyond that the network drops */
/* units allowed to converge after the heal, times election_tick/10 (max seen: ~9000) */
#define SIM_HEAL_BUDGET 20000
#define SIM_HEAL_PROPOSALS 5
#define SIM_PROP_ID_HEAL (1ULL << 62)
#define SIM_HEAL_COMPACT 1000	      /* entries between compactions after the heal */
#define SIM_EPOCH_MS 1700000000000ULL /* simulated time 0 as a unix time in ms */
#define SIM_MQ_RCPTS 4		      /* recipients per generated Accept, at most */
#define SIM_DOMAINS 5		      /* recipient domains d0..d4.example */
#define SIM_BODY_MAX 160	      /* body bytes of a generated Accept, at most */
#define SIM_RECENT 32		      /* recent commands kept for verbatim re-proposal */
#define SIM_FULL_CHECK_EVERY 500      /* units between full model checks of a random node */
#define SIM_MQ_BUCKETS 4096	      /* model hash buckets (chained) */
#define SIM_BACKLOG 80		      /* queued messages beyond which outcomes get likelier */
#define SIM_DOM_MAX 16		      /* distinct recipient domains the model tracks */
/* no idle assignment is ever evicted in the simulation (check_assignments relies on it) */
_Static_assert(SIM_DOM_MAX <= QUEUE_IDLE_DOMAINS_MAX, "the model's domains reach the idle bound");
#define SIM_ATTEMPTS 8 /* delivery attempts in flight per node (lease mode) */

/* ------------------------------------------------------------------ PRNG */

static uint64_t g_rng;

static uint64_t
rnd(void)
{
	uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t
rnd_n(uint64_t n)
{
	return n ? rnd() % n : 0;
}

/* probability in parts per million */
static int
chance(uint32_t ppm)
{
	return rnd_n(1000000) < ppm;
}

static uint64_t
fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	if (!h)
		h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static uint64_t
entry_hash(const struct raft_entry *e)
{
	uint64_t h = fnv(0, &e->type, 1);
	h = fnv(h, &e->len, sizeof(e->len));
	return fnv(h, e->data, e->len);
}

/* ------------------------------------------------------------------ growable tables */

struct u64vec {
	uint64_t *v;
	size_t n;
};

static uint64_t
vec_get(struct u64vec *a, size_t i)
{
	return i < a->n ? a->v[i] : 0;
}

static void
vec_set(struct u64vec *a, size_t i, uint64_t x)
{
	if (i >= a->n) {
		size_t n = a->n ? a->n : 1024;
		while (n <= i)
			n *= 2;
		a->v = realloc(a->v, n * sizeof(uint64_t));
		memset(a->v + a->n, 0, (n - a->n) * sizeof(uint64_t));
		a->n = n;
	}
	a->v[i] = x;
}

/* (index, term) -> (data hash, previous term): the log matching oracle */
struct emap_slot {
	uint64_t index, term, hash, prev;
};

struct emap {
	struct emap_slot *s;
	size_t cap, n;
};

static struct emap_slot *
emap_find(struct emap *m, uint64_t index, uint64_t term, bool insert)
{
	if (insert && (m->n + 1) * 2 > m->cap) {
		struct emap old = *m;
		m->cap = old.cap ? old.cap * 2 : 4096;
		m->s = calloc(m->cap, sizeof(*m->s));
		m->n = 0;
		for (size_t i = 0; i < old.cap; i++)
			if (old.s[i].term) {
				struct emap_slot *d =
				    emap_find(m, old.s[i].index, old.s[i].term, true);
				*d = old.s[i];
			}
		free(old.s);
	}
	if (!m->cap)
		return NULL;
	size_t h = (size_t)((index * 0x9e3779b97f4a7c15ULL) ^ (term * 0xc2b2ae3d27d4eb4fULL));
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		struct emap_slot *s = &m->s[i];
		if (s->term == 0) {
			if (!insert)
				return NULL;
			s->index = index;
			s->term = term;
			m->n++;
			return s;
		}
		if (s->index == index && s->term == term)
			return s;
	}
}

/* ------------------------------------------------------------------ sim state */

/* One ordered write of a node's disk, durable at `due` (completions keep their order). */
struct pwrite {
	uint64_t seq, due; /* seq 0: nothing of the core's (apply writes, a compaction) */
	bool has_hs;
	struct raft_hard_state hs;
	bool has_snap; /* an installed snapshot: replaces the whole log */
	bool compact;  /* our own compaction: the log up to snap.index goes */
	struct raft_snap_meta snap;
	void *snap_data;
	size_t snap_len;
	struct raft_entry *ents;
	size_t n;
	struct store_batch sb; /* queue store writes, after the log writes above */
};

struct disk {
	struct raft_hard_state hs;
	struct raft_snap_meta snap;
	void *snap_data;
	size_t snap_len;
	struct raft_entry *ents; /* ents[k].index == snap.index + 1 + k */
	size_t n, cap;
	struct pwrite *pw;
	size_t npw, pwcap;
	uint64_t last_due;
};

/* A delivery attempt in flight (lease mode): its Outcome is proposed at `due`. */
struct attempt {
	char qid[QUEUE_ID_MAX + 1];
	uint32_t idx[SIM_MQ_RCPTS];
	size_t n;
	uint64_t epoch, due;
};

struct node {
	uint64_t id;
	bool up;
	struct raft *r;
	struct disk d;
	struct store *dstore;  /* owned: the queue CFs and applied index as durable on disk */
	struct store *vstore;  /* owned: dstore + every pending write; the FSM's store (up only) */
	struct queue_fsm *fsm; /* owned (up only) */
	uint64_t boot;	       /* origin_boot of this incarnation */
	uint64_t restart_at;
	uint64_t sm_index; /* last index applied to fsm */
	uint64_t tick_phase;
	uint64_t seen_commit;
	uint64_t lc_term, lc_checked;
	struct raft_config cfg;
	/* lease mode: the host side of cluster/ownership.c (memory: lost in a crash) */
	struct own own;
	uint64_t renew_seq, renew_deadline; /* the Renew in flight (0: none) */
	bool revived;			    /* proposed itself LIVE since boot */
	struct attempt att[SIM_ATTEMPTS];
	size_t n_att;
};

struct inflight {
	uint64_t at;
	struct raft_msg m;
};

/* What happened at one log index, as first applied anywhere. */
struct applied_rec {
	uint64_t ehash;	 /* entry_hash of the entry */
	uint64_t digest; /* queue_fsm_digest after applying it */
	int32_t rc;	 /* queue_apply's result (0 for no-op and config entries) */
	uint8_t set;
	char what[40]; /* the command, for messages ("member n2 REMOVED") */
};

/* The model of one queue id: its recipients' states as the rules in queue_fsm.h say, and the
 * log index ranges [from, to) in which it was in the queue. */
struct mq {
	char id[QUEUE_ID_MAX + 1];
	struct mq *hnext;
	bool present;
	uint32_t nrcpts;
	uint8_t st[SIM_MQ_RCPTS];
	uint32_t attempts[SIM_MQ_RCPTS];
	uint64_t last_at[SIM_MQ_RCPTS];
	uint8_t dom[SIM_MQ_RCPTS]; /* index into sim.dom */
	uint64_t removed_no;	   /* its place in the removal order (1...); 0 never removed */
	uint64_t *iv;		   /* pairs from, to (UINT64_MAX while present) */
	size_t niv, ivcap;
};

/* A command proposed earlier, packed without its origin tag, for a verbatim re-proposal. */
struct recent {
	uint8_t *buf;
	size_t len;
};

struct sim {
	uint64_t seed;
	int n_nodes, n_ids; /* ids 1..n_ids; id n_ids is the spare when n_ids > n_nodes */
	uint64_t steps, now, fault_end;
	bool trace;
	bool healing;
	struct node nodes[SIM_MAX_NODES + 1];
	struct inflight *net;
	size_t n_net;
	uint64_t cut_until[SIM_MAX_NODES + 1][SIM_MAX_NODES + 1];
	/* fault knobs, chosen per seed */
	uint32_t drop_ppm, dup_ppm, disk_fail_ppm, crash_ppm, part_ppm, long_delay_ppm;
	unsigned delay_max, sync_max;
	unsigned leader_crash_pct; /* share of crashes aimed at a leader */
	uint32_t all_crash_ppm;	   /* every node at once: a power cut */
	uint32_t conf_ppm, transfer_ppm, compact_ppm;
	bool pre_vote, check_quorum;
	unsigned election_tick, heartbeat_tick;
	/* lease mode: membership comes from the ownership core on every node (Renews, LIVE at boot,
	 * DRAINED after a drain, the leader's DOWN/LIVE/REMOVED), operators only drain; outcomes
	 * come from attempts started under own_may_start.  Otherwise Member commands are random. */
	bool lease_mode;
	uint64_t lease_ms;
	uint64_t heal_compact; /* entries between compactions after the heal (--heal-compact) */
	/* client mix, chosen per seed (percent of proposals) */
	unsigned pct_outcome, pct_delete, pct_repeat, pct_member, pct_renew, pct_hold;
	/* oracles */
	struct u64vec leader_of_term;
	struct u64vec committed_term;
	struct u64vec committed_seen_term; /* term of the first node seen to commit it */
	struct applied_rec *applied;	   /* by log index */
	size_t applied_cap;
	uint64_t applied_max;	  /* highest index applied anywhere: the model is there */
	struct u64vec prop_index; /* proposal id -> index where it was applied (+1) */
	struct emap emap;
	uint64_t commit_max;
	uint64_t next_prop;
	/* the queue model */
	uint64_t
	    n_removals; /* messages removed so far (tombstones: the last QUEUE_TOMBSTONES_MAX) */
	/* domains (ASCII-lowercased): queued recipients, and the assignment last seen */
	struct {
		char name[QUEUE_DOMAIN_MAX + 1];
		uint64_t queued;
		uint64_t epoch;
		char owner[QUEUE_NODE_MAX + 1];
		uint64_t evicted_at; /* eviction mode: the index that last forgot it */
	} dom[SIM_DOM_MAX];
	size_t n_dom;
	size_t idle_max;    /* eviction mode (--idle-max): the FSMs' idle bound; 0 the default */
	uint64_t n_evicted; /* idle assignments forgotten (eviction mode) */
	struct mq *mq_bucket[SIM_MQ_BUCKETS];
	struct mq **mq_all;
	size_t n_mq, mq_cap;
	uint64_t next_qid;
	struct recent recent[SIM_RECENT];
	/* heal phase */
	uint64_t heal_prop_at[SIM_HEAL_PROPOSALS];
	uint64_t heal_own_at;
	uint64_t
	    heal_target; /* commit index every member must apply (set once ownership settled) */
	uint64_t heal_transfer; /* units one snapshot transfer may take (heal_transfer_units) */
	/* the configuration of the highest-index configuration entry applied anywhere: the
	 * committed one (shut_down_removed) */
	struct raft_conf committed_conf;
	uint64_t committed_conf_index;
	bool heal_done[SIM_HEAL_PROPOSALS];
	/* stats */
	uint64_t n_proposed, n_refused, n_applied, n_elections, n_crashes, n_snap_installs,
	    n_compactions, n_conf, n_transfers, n_disk_fail, n_msgs, n_timeout_now, n_snap_chunks,
	    n_sm_resumes;
	uint64_t n_cmd[4]; /* committed: accept, outcome, delete, rejected (result != 0) */
	uint64_t n_full_checks, queue_max;
	uint64_t n_fenced, n_member_cmds, n_renews, n_reassigned; /* ownership */
	uint64_t n_attempts, n_may_start_checks, n_removed_overlaps, n_evicted_overlaps;
	uint64_t n_renews_refused;
	uint64_t n_defers; /* DeferDomain commands committed */
	bool strict_lease;
	/* lease check: the last node seen allowed to start an attempt per model domain, and when */
	uint64_t starter[SIM_DOM_MAX], starter_at[SIM_DOM_MAX], starter_epoch[SIM_DOM_MAX];
};

/* totals over the seeds run by this process */
static struct {
	uint64_t runs, steps, applied, elections, crashes, disk_fail, conf, transfers, timeout_now,
	    compactions, snap_installs, snap_chunks, sm_resumes, msgs, heal_max, cmd[4],
	    full_checks, queue_max, members, renews, fenced, reassigned, attempts, lease_runs,
	    may_start, removed_overlaps, evicted, evicted_overlaps, defers, renews_refused;
} g_tot;

static struct sim *S;
static jmp_buf g_fail_jmp;
static char g_fail_msg[512];

static void
fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g_fail_msg, sizeof(g_fail_msg), fmt, ap);
	va_end(ap);
	longjmp(g_fail_jmp, 1);
}

static void
trace(const char *fmt, ...)
{
	if (!S->trace)
		return;
	va_list ap;
	va_start(ap, fmt);
	printf("t=%" PRIu64 " ", S->now);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

/* ------------------------------------------------------------------ messages */

static void
msg_copy(struct raft_msg *d, const struct raft_msg *m)
{
	*d = *m;
	if (m->n_entries) {
		d->entries = calloc(m->n_entries, sizeof(*d->entries));
		for (uint32_t i = 0; i < m->n_entries; i++) {
			d->entries[i] = m->entries[i];
			d->entries[i].data = NULL;
			if (m->entries[i].len) {
				d->entries[i].data = malloc(m->entries[i].len);
				memcpy(d->entries[i].data, m->entries[i].data, m->entries[i].len);
			}
		}
	}
	if (m->snap_len) {
		d->snap_data = malloc(m->snap_len);
		memcpy(d->snap_data, m->snap_data, m->snap_len);
	}
}

static void
msg_release(struct raft_msg *m)
{
	for (uint32_t i = 0; i < m->n_entries; i++)
		free(m->entries[i].data);
	free(m->entries);
	free(m->snap_data);
}

static bool
link_ok(uint64_t from, uint64_t to)
{
	return S->cut_until[from][to] <= S->now;
}

static void
net_send(const struct raft_msg *m)
{
	if (m->to == 0 || m->to > (uint64_t)S->n_ids || !link_ok(m->from, m->to))
		return;
	if (!S->healing && chance(S->drop_ppm))
		return;
	int copies = (!S->healing && chance(S->dup_ppm)) ? 2 : 1;
	for (int c = 0; c < copies; c++) {
		if (S->n_net >= SIM_NET_MAX)
			return;
		struct inflight *f = &S->net[S->n_net++];
		f->at = S->now + 1 + rnd_n(S->delay_max);
		if (!S->healing && chance(S->long_delay_ppm))
			f->at += rnd_n(300);
		msg_copy(&f->m, m);
		S->n_msgs++;
		S->n_timeout_now += m->type == RAFT_MSG_TIMEOUT_NOW;
		S->n_snap_chunks += m->type == RAFT_MSG_SNAP && m->snap_offset > 0;
	}
}

/* ------------------------------------------------------------------ disk */

static void
ents_free(struct raft_entry *e, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(e[i].data);
}

static void
ent_copy(struct raft_entry *d, const struct raft_entry *s)
{
	*d = *s;
	d->data = NULL;
	if (s->len) {
		d->data = malloc(s->len);
		memcpy(d->data, s->data, s->len);
	}
}

static void
disk_truncate(struct disk *d, uint64_t from)
{
	uint64_t last = d->snap.index + d->n;
	if (from > last)
		return;
	size_t k = from - d->snap.index - 1;
	ents_free(d->ents + k, d->n - k);
	d->n = k;
}

static void
disk_drop_upto(struct disk *d, uint64_t index)
{
	/* drop durable entries <= index (they are in a snapshot now) */
	uint64_t last = d->snap.index + d->n;
	if (index >= last) {
		ents_free(d->ents, d->n);
		d->n = 0;
		return;
	}
	size_t k = index - d->snap.index;
	ents_free(d->ents, k);
	memmove(d->ents, d->ents + k, (d->n - k) * sizeof(*d->ents));
	d->n -= k;
}

static void
disk_set_snap(struct disk *d, const struct raft_snap_meta *m, const void *data, size_t len)
{
	free(d->snap_data);
	d->snap_data = NULL;
	if (len) {
		d->snap_data = malloc(len);
		memcpy(d->snap_data, data, len);
	}
	d->snap_len = len;
	d->snap = *m;
}

/* Make one ordered write durable. */
static void
disk_apply(struct node *nd, struct pwrite *w)
{
	struct disk *d = &nd->d;
	if (w->has_snap) {
		/* an installed snapshot replaces the whole log */
		ents_free(d->ents, d->n);
		d->n = 0;
		disk_set_snap(d, &w->snap, w->snap_data, w->snap_len);
	}
	if (w->compact && w->snap.index > d->snap.index) {
		/* our compaction: its entries are durable (raft_compact needs applied <= persisted)
		 */
		disk_drop_upto(d, w->snap.index);
		disk_set_snap(d, &w->snap, w->snap_data, w->snap_len);
	}
	if (w->has_hs)
		d->hs = w->hs;
	for (size_t i = 0; i < w->n; i++) {
		const struct raft_entry *e = &w->ents[i];
		if (e->index <= d->snap.index)
			continue;
		uint64_t last = d->snap.index + d->n;
		if (e->index <= last)
			disk_truncate(d, e->index);
		else if (e->index != last + 1)
			fail("node %" PRIu64 " disk gap: write index %" PRIu64 " after %" PRIu64,
			     nd->id, e->index, last);
		if (d->n == d->cap) {
			d->cap = d->cap ? d->cap * 2 : 256;
			d->ents = realloc(d->ents, d->cap * sizeof(*d->ents));
		}
		ent_copy(&d->ents[d->n++], e);
	}
	if (w->sb.count) {
		int rv = store_write(nd->dstore, &w->sb, 1);
		if (rv)
			fail("node %" PRIu64 " durable store write: %s", nd->id,
			     store_strerror(rv));
	}
}

static void
pwrite_free(struct pwrite *w)
{
	ents_free(w->ents, w->n);
	free(w->ents);
	free(w->snap_data);
	store_batch_fini(&w->sb);
}

/* Queues a new ordered write (due after every earlier one). */
static struct pwrite *
pwrite_new(struct node *nd, uint64_t seq)
{
	struct disk *d = &nd->d;
	if (d->npw == d->pwcap) {
		d->pwcap = d->pwcap ? d->pwcap * 2 : 16;
		d->pw = realloc(d->pw, d->pwcap * sizeof(*d->pw));
	}
	struct pwrite *w = &d->pw[d->npw++];
	memset(w, 0, sizeof(*w));
	store_batch_init(&w->sb);
	w->seq = seq;
	/* The hard profile's slow disks (syncs up to 120 units) break Raft's timing requirement
	 * (broadcast time << election timeout) when the election timeout is short: a vote that is
	 * persisted at both ends outlasts every candidate's timer and no election ever ends (a
	 * seed with a 50-unit election timeout and syncs up to 107 units was at term 238 with no
	 * leader 20,000 units after the heal).  Safety is checked under such disks in the fault
	 * phase; in the heal, where liveness is checked, a sync takes at most 2/5 of the base
	 * election timeout (20 units at the shortest: the normal profile's own bound). */
	unsigned sync_max = S->sync_max;
	if (S->healing && sync_max > S->election_tick * SIM_TICK * 2 / 5)
		sync_max = S->election_tick * SIM_TICK * 2 / 5;
	uint64_t due = S->now + 1 + rnd_n(sync_max);
	if (due < d->last_due)
		due = d->last_due;
	d->last_due = w->due = due;
	return w;
}

/* The ownership name of node id (config node_id). */
static void
node_name(uint64_t id, char *out)
{
	/* ids are 1..SIM_MAX_NODES + 1: one or two digits */
	out[0] = 'n';
	if (id >= 10) {
		out[1] = (char)('0' + id / 10 % 10);
		out[2] = (char)('0' + id % 10);
		out[3] = 0;
	} else {
		out[1] = (char)('0' + id);
		out[2] = 0;
	}
}

static void describe(const Relay__Command *c, char *out, size_t n);

/* ------------------------------------------------------------------ stores */

static const enum store_cf queue_cfs[3] = {STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX};

static struct store *
store_new_mem(void)
{
	struct store *s;
	if (store_mem_new(&s))
		fail("store_mem_new failed");
	return s;
}

/* A new in-memory store with every key of src, all column families. */
static struct store *
store_clone(struct store *src)
{
	struct store *s = store_new_mem();
	struct store_batch b;
	store_batch_init(&b);
	for (int cf = 0; cf < STORE_CF__COUNT; cf++) {
		struct store_iter *it;
		if (store_iter_new(src, (enum store_cf)cf, &it))
			fail("store_iter_new failed");
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			if (store_batch_put(&b, (enum store_cf)cf, k, kl, v, vl))
				fail("store_batch_put failed");
		}
		store_iter_free(it);
	}
	if (b.count && store_write(s, &b, 1))
		fail("store clone write failed");
	store_batch_fini(&b);
	return s;
}

/* 1 when a and b hold the same keys and values in every column family. */
static int
store_same(struct store *a, struct store *b)
{
	int same = 1;
	for (int cf = 0; cf < STORE_CF__COUNT && same; cf++) {
		struct store_iter *x, *y;
		if (store_iter_new(a, (enum store_cf)cf, &x) ||
		    store_iter_new(b, (enum store_cf)cf, &y))
			fail("store_iter_new failed");
		store_iter_seek(x, NULL, 0);
		store_iter_seek(y, NULL, 0);
		while (same && (store_iter_valid(x) || store_iter_valid(y))) {
			size_t kx, ky, vx, vy;
			if (!store_iter_valid(x) || !store_iter_valid(y)) {
				same = 0;
				break;
			}
			const unsigned char *a1 = store_iter_key(x, &kx),
					    *b1 = store_iter_key(y, &ky);
			const unsigned char *a2 = store_iter_value(x, &vx),
					    *b2 = store_iter_value(y, &vy);
			same = kx == ky && vx == vy && !memcmp(a1, b1, kx) && !memcmp(a2, b2, vx);
			store_iter_next(x);
			store_iter_next(y);
		}
		store_iter_free(x);
		store_iter_free(y);
	}
	return same;
}

/* Writes b to the node's view store now and to its disk with the write *wp (a new write
 * after every pending one when *wp is NULL): the cluster's "apply writes join the next
 * write batch". */
static void
node_write(struct node *nd, struct pwrite **wp, const struct store_batch *b)
{
	if (!b->count)
		return;
	int rv = store_write(nd->vstore, b, 1);
	if (rv)
		fail("node %" PRIu64 " store write: %s", nd->id, store_strerror(rv));
	if (!*wp)
		*wp = pwrite_new(nd, 0);
	if (store_batch_append(&(*wp)->sb, b))
		fail("store_batch_append failed");
}

/* ------------------------------------------------------------------ snapshots */

/*
 * Snapshot data: the queue CFs of the store at the applied index, byte for byte.
 *   "RSQ1" | index u64 | count u32 | count x (cf u8 | klen u32 | vlen u32 | key | value) |
 *   fnv64 of everything before
 * (little-endian: the simulator talks only to itself).
 */
#define SNAP_MAGIC "RSQ1"

struct sbuf {
	uint8_t *p;
	size_t n, cap;
};

static void
sbuf_add(struct sbuf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		size_t c = b->cap ? b->cap : 1024;
		while (c < b->n + n)
			c *= 2;
		b->p = realloc(b->p, c);
		b->cap = c;
	}
	if (n)
		memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void
sm_snapshot_encode(struct node *nd, void **data, size_t *len)
{
	struct sbuf b = {0};
	uint32_t count = 0;
	sbuf_add(&b, SNAP_MAGIC, 4);
	sbuf_add(&b, &nd->sm_index, 8);
	sbuf_add(&b, &count, 4);
	for (int c = 0; c < 3; c++) {
		struct store_iter *it;
		if (store_iter_new(nd->vstore, queue_cfs[c], &it))
			fail("store_iter_new failed");
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			uint8_t cf = (uint8_t)queue_cfs[c];
			uint32_t k32 = (uint32_t)kl, v32 = (uint32_t)vl;
			sbuf_add(&b, &cf, 1);
			sbuf_add(&b, &k32, 4);
			sbuf_add(&b, &v32, 4);
			sbuf_add(&b, k, kl);
			sbuf_add(&b, v, vl);
			count++;
		}
		store_iter_free(it);
	}
	memcpy(b.p + 12, &count, 4);
	uint64_t h = fnv(0, b.p, b.n);
	sbuf_add(&b, &h, 8);
	*data = b.p;
	*len = b.n;
}

static struct applied_rec *applied_at(uint64_t index);
static void check_fsm_full(struct node *nd, const char *when);

/* Installs snapshot data at index: the queue CFs are replaced (one batch, in the write stream
 * with *wp) and the FSM reloaded in place. */
static void
sm_restore(struct node *nd, const void *data, size_t len, uint64_t index, struct pwrite **wp)
{
	const uint8_t *p = data;
	uint64_t h, sidx;
	uint32_t count;
	if (len < 24 || memcmp(p, SNAP_MAGIC, 4))
		fail("node %" PRIu64 " snapshot %" PRIu64 ": %zu bytes, no header", nd->id, index,
		     len);
	memcpy(&h, p + len - 8, 8);
	if (fnv(0, p, len - 8) != h)
		fail("node %" PRIu64 " snapshot %" PRIu64 " data corrupted (%zu bytes)", nd->id,
		     index, len);
	memcpy(&sidx, p + 4, 8);
	memcpy(&count, p + 12, 4);
	if (sidx != index)
		fail("node %" PRIu64 " snapshot data index %" PRIu64 " != meta %" PRIu64, nd->id,
		     sidx, index);
	struct store_batch b;
	store_batch_init(&b);
	for (int c = 0; c < 3; c++) {
		struct store_iter *it;
		if (store_iter_new(nd->vstore, queue_cfs[c], &it))
			fail("store_iter_new failed");
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
			size_t kl;
			const unsigned char *k = store_iter_key(it, &kl);
			if (store_batch_delete(&b, queue_cfs[c], k, kl))
				fail("store_batch_delete failed");
		}
		store_iter_free(it);
	}
	size_t off = 16, end = len - 8;
	for (uint32_t i = 0; i < count; i++) {
		uint8_t cf;
		uint32_t kl, vl;
		if (end - off < 9)
			fail("node %" PRIu64 " snapshot %" PRIu64 " truncated", nd->id, index);
		memcpy(&cf, p + off, 1);
		memcpy(&kl, p + off + 1, 4);
		memcpy(&vl, p + off + 5, 4);
		off += 9;
		if ((uint64_t)kl + vl > end - off ||
		    (cf != STORE_CF_QUEUE && cf != STORE_CF_BODY && cf != STORE_CF_INDEX))
			fail("node %" PRIu64 " snapshot %" PRIu64 " damaged item %u", nd->id, index,
			     i);
		if (store_batch_put(&b, (enum store_cf)cf, p + off, kl, p + off + kl, vl))
			fail("store_batch_put failed");
		off += (size_t)kl + vl;
	}
	if (off != end)
		fail("node %" PRIu64 " snapshot %" PRIu64 " has trailing bytes", nd->id, index);
	if (store_applied_put(&b, index))
		fail("store_applied_put failed");
	node_write(nd, wp, &b);
	store_batch_fini(&b);
	int rv = queue_fsm_reload(nd->fsm);
	if (rv)
		fail("node %" PRIu64 " queue_fsm_reload after snapshot %" PRIu64 ": %s", nd->id,
		     index, queue_strerror(rv));
	nd->sm_index = index;
	struct applied_rec *ar = applied_at(index);
	if (!ar->set)
		fail("node %" PRIu64 " installs snapshot %" PRIu64 " never applied anywhere",
		     nd->id, index);
	if (ar->digest != queue_fsm_digest(nd->fsm))
		fail("node %" PRIu64 " state after installing snapshot %" PRIu64
		     " differs from the applied history (digest)",
		     nd->id, index);
	check_fsm_full(nd, "snapshot install");
}

/* ------------------------------------------------------------------ the queue model */

static uint64_t
str_hash(const char *s)
{
	return fnv(0, s, strlen(s));
}

static struct mq *
mq_get(const char *id, bool create)
{
	size_t b = str_hash(id) % SIM_MQ_BUCKETS;
	for (struct mq *q = S->mq_bucket[b]; q; q = q->hnext)
		if (!strcmp(q->id, id))
			return q;
	if (!create)
		return NULL;
	struct mq *q = calloc(1, sizeof(*q));
	snprintf(q->id, sizeof(q->id), "%s", id);
	q->hnext = S->mq_bucket[b];
	S->mq_bucket[b] = q;
	if (S->n_mq == S->mq_cap) {
		S->mq_cap = S->mq_cap ? S->mq_cap * 2 : 256;
		S->mq_all = realloc(S->mq_all, S->mq_cap * sizeof(*S->mq_all));
	}
	S->mq_all[S->n_mq++] = q;
	return q;
}

/* Was q in the queue after applying index j? */
static bool
mq_present_at(const struct mq *q, uint64_t j)
{
	for (size_t k = 0; k < q->niv; k += 2)
		if (q->iv[k] <= j && j < q->iv[k + 1])
			return true;
	return false;
}

/* The domain of an address as ownership sees it (queue_fsm.h): after the last '@',
 * ASCII-lowercased; its index in the model's table. */
static uint8_t dom_index(const char *name);

static uint8_t
dom_of(const char *addr)
{
	const char *at = strrchr(addr, '@');
	char d[QUEUE_DOMAIN_MAX + 1];
	size_t n = 0;
	for (const char *p = at ? at + 1 : ""; *p && n < QUEUE_DOMAIN_MAX; p++)
		d[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
	d[n] = 0;
	return dom_index(d);
}

/* The model's index of a domain name (as the FSM reports it: lowercased). */
static uint8_t
dom_index(const char *d)
{
	for (size_t k = 0; k < S->n_dom; k++)
		if (!strcmp(S->dom[k].name, d))
			return (uint8_t)k;
	if (S->n_dom == SIM_DOM_MAX)
		fail("model: more than %d domains", SIM_DOM_MAX);
	snprintf(S->dom[S->n_dom].name, sizeof(S->dom[0].name), "%s", d);
	return (uint8_t)S->n_dom++;
}

static bool
mq_tombstone(const struct mq *q)
{
	return q->removed_no && S->n_removals - q->removed_no < QUEUE_TOMBSTONES_MAX;
}

static void
mq_accept(uint64_t index, const Relay__Accept *a, struct mq **touched, size_t *nt)
{
	struct mq *q = mq_get(a->queue_id, true);
	touched[(*nt)++] = q;
	if (q->present || mq_tombstone(q))
		return; /* idempotent retry, or a late one of a message removed since */
	if (a->n_rcpts > SIM_MQ_RCPTS)
		fail("model: accept %s has %zu recipients", a->queue_id, a->n_rcpts);
	q->present = true;
	q->nrcpts = (uint32_t)a->n_rcpts;
	for (uint32_t i = 0; i < q->nrcpts; i++) {
		q->st[i] = QUEUE_RCPT_QUEUED;
		q->attempts[i] = 0;
		q->last_at[i] = 0;
		q->dom[i] = dom_of(a->rcpts[i]->addr);
		S->dom[q->dom[i]].queued++;
	}
	if (q->niv + 2 > q->ivcap) {
		q->ivcap = q->ivcap ? q->ivcap * 2 : 4;
		q->iv = realloc(q->iv, q->ivcap * sizeof(*q->iv));
	}
	q->iv[q->niv++] = index;
	q->iv[q->niv++] = UINT64_MAX;
}

/* An Outcome (o) or a Delete (o NULL) by the rules of queue_fsm.h; returns the result. */
static int
mq_change(uint64_t index, const char *id, const uint32_t *idx, size_t nidx, const Relay__Outcome *o,
	  const uint64_t *dom_epoch, struct mq **touched, size_t *nt)
{
	struct mq *q = mq_get(id, true);
	touched[(*nt)++] = q;
	if (!q->present)
		return o ? 0 : QUEUE_ENOTFOUND;
	bool sel[SIM_MQ_RCPTS] = {0};
	for (size_t k = 0; k < nidx; k++) {
		if (idx[k] >= q->nrcpts)
			return QUEUE_EINVAL;
		sel[idx[k]] = true;
	}
	uint8_t to = QUEUE_RCPT_DELETED;
	if (o)
		to = o->kind == RELAY__OUTCOME_KIND__DELIVERED ? QUEUE_RCPT_DELIVERED
		     : o->kind == RELAY__OUTCOME_KIND__FAILED  ? QUEUE_RCPT_FAILED
							       : QUEUE_RCPT_QUEUED;
	bool ch[SIM_MQ_RCPTS] = {0};
	uint32_t nch = 0, nqueued = 0;
	for (uint32_t i = 0; i < q->nrcpts; i++) {
		ch[i] = (nidx == 0 || sel[i]) && q->st[i] == QUEUE_RCPT_QUEUED;
		/* a deferral at the time of the last attempt is that attempt again */
		if (ch[i] && o && o->kind == RELAY__OUTCOME_KIND__DEFERRED && q->attempts[i] &&
		    q->last_at[i] == o->at_ms)
			ch[i] = false;
		/* fencing (G4): only at the epoch its domain had when the outcome applied */
		if (ch[i] && o && (!o->has_epoch || !o->epoch || o->epoch != dom_epoch[q->dom[i]]))
			ch[i] = false;
		nch += ch[i];
	}
	if (!nch)
		return 0;
	for (uint32_t i = 0; i < q->nrcpts; i++) {
		if (ch[i]) {
			q->st[i] = to;
			if (o) {
				q->attempts[i]++;
				q->last_at[i] = o->at_ms;
			}
			if (to != QUEUE_RCPT_QUEUED)
				S->dom[q->dom[i]].queued--; /* at 0: idle, assignment kept */
		}
		nqueued += q->st[i] == QUEUE_RCPT_QUEUED;
	}
	if (!nqueued) {
		q->present = false;
		q->iv[q->niv - 1] = index;
		q->removed_no = ++S->n_removals;
	}
	if (o && o->dsn)
		mq_accept(index, o->dsn, touched, nt);
	return 0;
}

/* Applies a committed command to the model (at the first apply of its index anywhere). */
static int
mq_exists(const char *id, struct mq **touched, size_t *nt)
{
	struct mq *q = mq_get(id, true);
	touched[(*nt)++] = q;
	return q->present ? 0 : QUEUE_ENOTFOUND;
}

/* Applies a committed command to the model (at the first apply of its index anywhere);
 * dom_epoch: each domain's epoch just before (the applying node's, for fencing). */
static int
model_apply(uint64_t index, const Relay__Command *cmd, const uint64_t *dom_epoch,
	    struct mq **touched, size_t *nt)
{
	switch (cmd->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		mq_accept(index, cmd->accept, touched, nt);
		return 0;
	case RELAY__COMMAND__CMD_OUTCOME:
		return mq_change(index, cmd->outcome->queue_id, cmd->outcome->rcpt_index,
				 cmd->outcome->n_rcpt_index, cmd->outcome, dom_epoch, touched, nt);
	case RELAY__COMMAND__CMD_DELETE:
		return mq_change(index, cmd->delete_->queue_id, cmd->delete_->rcpt_index,
				 cmd->delete_->n_rcpt_index, NULL, dom_epoch, touched, nt);
	case RELAY__COMMAND__CMD_HOLD:
		return mq_exists(cmd->hold->queue_id, touched, nt);
	case RELAY__COMMAND__CMD_RELEASE:
		return mq_exists(cmd->release->queue_id, touched, nt);
	case RELAY__COMMAND__CMD_RETRY:
		return mq_exists(cmd->retry->queue_id, touched, nt);
	case RELAY__COMMAND__CMD_MEMBER:
	case RELAY__COMMAND__CMD_RENEW:
		return 0; /* at most SIM_MAX_NODES + 1 node ids: never past QUEUE_MEMBERS_MAX */
	case RELAY__COMMAND__CMD_DEFER_DOMAIN:
		S->n_defers++;
		return 0; /* when a domain is due, not what its recipients are */
	default:
		fail("model: command case %d not generated by the simulator", (int)cmd->cmd_case);
	}
	return 0;
}

/* The queue ids a command names (for nodes applying an index after the first). */
static void
model_touched(const Relay__Command *cmd, struct mq **touched, size_t *nt)
{
	const char *ids[2] = {NULL, NULL};
	if (cmd->cmd_case == RELAY__COMMAND__CMD_ACCEPT)
		ids[0] = cmd->accept->queue_id;
	else if (cmd->cmd_case == RELAY__COMMAND__CMD_OUTCOME) {
		ids[0] = cmd->outcome->queue_id;
		if (cmd->outcome->dsn)
			ids[1] = cmd->outcome->dsn->queue_id;
	} else if (cmd->cmd_case == RELAY__COMMAND__CMD_DELETE)
		ids[0] = cmd->delete_->queue_id;
	else if (cmd->cmd_case == RELAY__COMMAND__CMD_HOLD)
		ids[0] = cmd->hold->queue_id;
	else if (cmd->cmd_case == RELAY__COMMAND__CMD_RELEASE)
		ids[0] = cmd->release->queue_id;
	else if (cmd->cmd_case == RELAY__COMMAND__CMD_RETRY)
		ids[0] = cmd->retry->queue_id;
	for (int k = 0; k < 2; k++) {
		struct mq *q = ids[k] ? mq_get(ids[k], false) : NULL;
		if (q)
			touched[(*nt)++] = q;
	}
}

static void
check_mq_presence(struct node *nd, const struct mq *q, uint64_t j, const char *when)
{
	const struct queue_msg *m = queue_fsm_lookup(nd->fsm, q->id);
	bool p = mq_present_at(q, j);
	if (p && !m)
		fail("queue model: node %" PRIu64 " (%s, applied %" PRIu64 ") lacks %s, committed "
		     "and not finished by any committed outcome/delete up to there",
		     nd->id, when, j, q->id);
	if (!p && m)
		fail("queue model: node %" PRIu64 " (%s, applied %" PRIu64
		     ") has %s, which the committed log does not have queued there",
		     nd->id, when, j, q->id);
}

/* ------------------------------------------------------------------ ownership checks */

struct dom_seen {
	char name[QUEUE_DOMAIN_MAX + 1];
	char owner[QUEUE_NODE_MAX + 1];
	uint64_t epoch, queued;
};

struct dom_list {
	struct dom_seen d[SIM_DOM_MAX];
	size_t n;
	bool overflow;
};

static int
dom_list_cb(void *arg, const char *domain, const char *owner, uint64_t epoch, uint64_t queued)
{
	struct dom_list *l = arg;
	if (l->n == SIM_DOM_MAX) {
		l->overflow = true;
		return 1;
	}
	struct dom_seen *d = &l->d[l->n++];
	size_t n = strnlen(domain, QUEUE_DOMAIN_MAX), m = strnlen(owner, QUEUE_NODE_MAX);
	memcpy(d->name, domain, n);
	d->name[n] = 0;
	memcpy(d->owner, owner, m);
	d->owner[m] = 0;
	d->epoch = epoch;
	d->queued = queued;
	return 0;
}

static const char *
member_state_name(int st)
{
	switch (st) {
	case QUEUE_MEMBER_LIVE:
		return "LIVE";
	case QUEUE_MEMBER_DRAINING:
		return "DRAINING";
	case QUEUE_MEMBER_DRAINED:
		return "DRAINED";
	case QUEUE_MEMBER_DOWN:
		return "DOWN";
	case QUEUE_MEMBER_REMOVED:
		return "REMOVED";
	default:
		return "not a member";
	}
}

/* The state of member `node` in the FSM (-1: not in the table). */
static int
member_state(const struct queue_member *mem, size_t n, const char *node)
{
	for (size_t k = 0; k < n; k++)
		if (!strcmp(mem[k].node, node))
			return mem[k].state;
	return -1;
}

/*
 * After the first apply of each index: every domain with a queued recipient has exactly one
 * assignment; every other assigned domain is idle (assigned at an earlier index, no queued
 * recipient), and an assignment once made is never forgotten (no eviction: SIM_DOM_MAX is far
 * below QUEUE_IDLE_DOMAINS_MAX) - except in eviction mode (--idle-max N), where at most N are
 * idle and an idle one is forgotten only when the bound is reached, those with the smallest
 * (epoch, name) first; its queued-recipient count is the model's; its owner is LIVE
 * or DRAINING, or "" only when no member is LIVE (idle ones included: they move and are taken
 * like the others); a domain's epoch never goes back, and an assignment that changed (owner or
 * epoch) carries this index as its epoch.
 */
/* Eviction mode: model domain k's assignment was forgotten at index: only one that sorts
 * before every idle assignment left (by epoch, then name).  (The bound itself is checked by
 * the caller; a DSN in the same Outcome may make an idle domain active again, so the count
 * after can be below it.) */
static void
check_evicted(size_t k, uint64_t index, const struct dom_list *l)
{
	for (size_t j = 0; j < l->n; j++) {
		const struct dom_seen *r = &l->d[j];
		int c = r->epoch != S->dom[k].epoch ? (r->epoch < S->dom[k].epoch ? -1 : 1)
						    : strcmp(r->name, S->dom[k].name);
		if (!r->queued && c < 0)
			fail("ownership: at %" PRIu64 " %s (epoch %" PRIu64
			     ") was forgotten before "
			     "%s (epoch %" PRIu64 ")",
			     index, S->dom[k].name, S->dom[k].epoch, r->name, r->epoch);
	}
	S->dom[k].epoch = 0;
	S->dom[k].owner[0] = 0;
	S->dom[k].evicted_at = index;
	S->n_evicted++;
}

static void
check_assignments(struct node *nd, uint64_t index)
{
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(nd->fsm, mem, QUEUE_MEMBERS_MAX);
	bool any_live = false;
	for (size_t k = 0; k < nm; k++)
		any_live |= mem[k].state == QUEUE_MEMBER_LIVE;
	struct dom_list l = {.n = 0};
	queue_fsm_domains(nd->fsm, dom_list_cb, &l);
	if (l.overflow)
		fail("ownership: more than %d domains assigned at %" PRIu64, SIM_DOM_MAX, index);
	bool listed[SIM_DOM_MAX] = {0};
	for (size_t j = 0; j < l.n; j++) {
		const struct dom_seen *d = &l.d[j];
		size_t k;
		for (k = 0; k < S->n_dom && strcmp(S->dom[k].name, d->name); k++)
			;
		if (k == S->n_dom || (!S->dom[k].queued && !S->dom[k].epoch))
			fail("ownership: at %" PRIu64
			     " domain %s is assigned (to \"%s\" epoch %" PRIu64
			     ") but has no queued recipient and had no assignment before",
			     index, d->name, d->owner, d->epoch);
		if (listed[k])
			fail("ownership: at %" PRIu64 " domain %s has two assignments", index,
			     d->name);
		listed[k] = true;
		if (d->queued != S->dom[k].queued)
			fail("ownership: at %" PRIu64 " domain %s counts %" PRIu64
			     " queued recipients, the model %" PRIu64,
			     index, d->name, d->queued, S->dom[k].queued);
		if (!d->owner[0]) {
			if (any_live)
				fail("ownership: at %" PRIu64
				     " domain %s is unowned while a member "
				     "is LIVE",
				     index, d->name);
		} else {
			int st = member_state(mem, nm, d->owner);
			if (st != QUEUE_MEMBER_LIVE && st != QUEUE_MEMBER_DRAINING)
				fail("ownership: at %" PRIu64
				     " domain %s is owned by %s, which is %s",
				     index, d->name, d->owner, member_state_name(st));
		}
		if (d->epoch == 0 || d->epoch > index)
			fail("ownership: at %" PRIu64 " domain %s has epoch %" PRIu64, index,
			     d->name, d->epoch);
		if (d->epoch < S->dom[k].epoch)
			fail("ownership: at %" PRIu64 " the epoch of %s went back from %" PRIu64
			     " to %" PRIu64,
			     index, d->name, S->dom[k].epoch, d->epoch);
		bool changed = d->epoch != S->dom[k].epoch || strcmp(d->owner, S->dom[k].owner);
		if (changed && d->epoch != index)
			fail("ownership: at %" PRIu64 " domain %s moved from \"%s\"/%" PRIu64
			     " to \"%s\"/%" PRIu64 " without this index as its epoch",
			     index, d->name, S->dom[k].owner, S->dom[k].epoch, d->owner, d->epoch);
		if (changed && S->dom[k].epoch)
			S->n_reassigned++;
		S->dom[k].epoch = d->epoch;
		snprintf(S->dom[k].owner, sizeof(S->dom[k].owner), "%s", d->owner);
	}
	size_t nidle = 0;
	for (size_t j = 0; j < l.n; j++)
		nidle += l.d[j].queued == 0;
	if (S->idle_max && nidle > S->idle_max)
		fail("ownership: at %" PRIu64 " %zu idle assignments, the bound is %zu", index,
		     nidle, S->idle_max);
	for (size_t k = 0; k < S->n_dom; k++) {
		if (S->dom[k].queued && !listed[k])
			fail("ownership: at %" PRIu64 " domain %s has %" PRIu64
			     " queued recipients and no assignment",
			     index, S->dom[k].name, S->dom[k].queued);
		if (S->dom[k].epoch && !listed[k] && !S->idle_max)
			fail("ownership: at %" PRIu64
			     " the idle assignment of %s (\"%s\" epoch %" PRIu64 ") was forgotten",
			     index, S->dom[k].name, S->dom[k].owner, S->dom[k].epoch);
		if (S->dom[k].epoch && !listed[k])
			check_evicted(k, index, &l);
	}
}

/* After the heal: when some member is LIVE, every assigned domain is owned by a LIVE member. */
static void
check_owned_by_live(struct node *nd)
{
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(nd->fsm, mem, QUEUE_MEMBERS_MAX);
	bool any_live = false;
	for (size_t k = 0; k < nm; k++)
		any_live |= mem[k].state == QUEUE_MEMBER_LIVE;
	if (!any_live)
		return;
	struct dom_list l = {.n = 0};
	queue_fsm_domains(nd->fsm, dom_list_cb, &l);
	for (size_t j = 0; j < l.n; j++)
		if (member_state(mem, nm, l.d[j].owner) != QUEUE_MEMBER_LIVE)
			fail("ownership: after the heal node %" PRIu64 " has domain %s owned by "
			     "\"%s\" (%s) while a member is LIVE",
			     nd->id, l.d[j].name, l.d[j].owner,
			     member_state_name(member_state(mem, nm, l.d[j].owner)));
}

/* The ownership keys of a store against its FSM (queue_fsm.h "Delivery ownership"). */
struct own_keys {
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nmem;
	struct dom_list l;
	size_t nd, nm, nt; /* keys seen: assignments, members, tombstones */
};

static void
check_own_key(struct node *nd, const char *when, const unsigned char *k, size_t kl,
	      const unsigned char *v, size_t vl, struct own_keys *o)
{
	char name[QUEUE_DOMAIN_MAX + 1];
	bool ok = kl >= 2 && kl - 2 <= QUEUE_DOMAIN_MAX;
	if (ok) {
		memcpy(name, k + 2, kl - 2);
		name[kl - 2] = 0;
	}
	if (ok && k[1] == 'D') {
		/* 1 (version), epoch (u64 BE), owner */
		o->nd++;
		size_t j;
		for (j = 0; j < o->l.n && strcmp(o->l.d[j].name, name); j++)
			;
		/* or, deferred (DeferDomain): 2, epoch, until, at, count (u32), owner length */
		size_t off = vl >= 30 && v[0] == 2 ? 30 : 9;
		ok = j < o->l.n && vl >= off && (v[0] == 1 || (v[0] == 2 && v[29] == vl - 30)) &&
		     store_u64_decode(v + 1) == o->l.d[j].epoch &&
		     vl - off == strlen(o->l.d[j].owner) &&
		     !memcmp(v + off, o->l.d[j].owner, vl - off);
	} else if (ok && k[1] == 'E') {
		/* a deferred domain's reason: its assignment is there */
		size_t j;
		for (j = 0; j < o->l.n && strcmp(o->l.d[j].name, name); j++)
			;
		ok = j < o->l.n;
	} else if (ok && k[1] == 'M') {
		/* 1 (version), state (u8), since_index (u64 BE), renew_index (u64 BE), the last
		 * Renew's at_ms (u64 BE), inflight (u32 BE) */
		o->nm++;
		size_t j;
		for (j = 0; j < o->nmem && strcmp(o->mem[j].node, name); j++)
			;
		ok = j < o->nmem && vl == 30 && v[0] == 1 && v[1] == o->mem[j].state &&
		     store_u64_decode(v + 2) == o->mem[j].since_index &&
		     store_u64_decode(v + 10) == o->mem[j].renew_index &&
		     store_u64_decode(v + 18) == o->mem[j].renew_at_ms &&
		     ((uint32_t)v[26] << 24 | (uint32_t)v[27] << 16 | (uint32_t)v[28] << 8 |
		      v[29]) == o->mem[j].inflight;
	} else if (ok && k[1] == 'T') {
		/* big-endian index of the removing command -> the queue id */
		o->nt++;
		char id[QUEUE_ID_MAX + 1];
		ok = kl == 10 && vl && vl <= QUEUE_ID_MAX;
		if (ok) {
			memcpy(id, v, vl);
			id[vl] = 0;
			const struct mq *q = mq_get(id, false);
			ok = q && !mq_present_at(q, nd->sm_index) && !queue_fsm_lookup(nd->fsm, id);
		}
	} else {
		ok = false;
	}
	if (!ok)
		fail("node %" PRIu64 " (%s, applied %" PRIu64 ") ownership key %c%s does not match "
		     "its FSM",
		     nd->id, when, nd->sm_index, kl > 1 ? k[1] : '?', kl > 2 ? name : "");
}

/* One key of a message (queue_fsm.h "Stored form") against the FSM: its envelope (queue CF,
 * key queue id: the Accept's record), a result (queue id, 0, 'l', recipient: only for an
 * attempted recipient), its body (its size), its state value (index CF, 'M' + queue id: every
 * field the FSM holds). */
static bool
check_msg_key(struct node *nd, enum store_cf cf, const unsigned char *key, size_t kl,
	      const unsigned char *v, size_t vl)
{
	char id[QUEUE_ID_MAX + 1];
	size_t off = cf == STORE_CF_INDEX ? 1 : 0;
	const unsigned char *z = cf == STORE_CF_QUEUE ? memchr(key, 0, kl) : NULL;
	size_t idl = z ? (size_t)(z - key) : kl - off;
	if (kl <= off || idl > QUEUE_ID_MAX || (cf == STORE_CF_INDEX && key[0] != QUEUE_INDEX_MSG))
		return false;
	memcpy(id, key + off, idl);
	id[idl] = 0;
	const struct queue_msg *m = queue_fsm_lookup(nd->fsm, id);
	if (!m)
		return false;
	if (cf == STORE_CF_BODY)
		return vl == m->size;
	if (cf == STORE_CF_QUEUE && z) {
		if (kl != idl + 4 || key[idl + 1] != QUEUE_KEY_RESULT)
			return false;
		uint32_t i = (uint32_t)key[idl + 2] << 8 | key[idl + 3];
		return i < m->nrcpts && m->rcpts[i].attempts > 0;
	}
	if (cf == STORE_CF_QUEUE) {
		Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vl, v);
		bool ok = r && !strcmp(r->queue_id, id) && r->n_rcpts == m->nrcpts &&
			  r->accept_index == m->accept_index && r->received_ms == m->received_ms &&
			  r->size == m->size;
		if (r)
			relay__queue_record__free_unpacked(r, NULL);
		return ok;
	}
	/* the state value */
	if (vl < QUEUE_STATE_FIXED || v[0] != 1 || v[1] != m->held ||
	    store_u64_decode(v + 2) != m->accept_index ||
	    store_u64_decode(v + 10) != m->received_ms || store_u64_decode(v + 18) != m->size ||
	    store_u64_decode(v + 26) != m->update_index ||
	    ((uint32_t)v[42] << 8 | v[43]) != m->nrcpts)
		return false;
	size_t p = QUEUE_STATE_FIXED;
	for (uint32_t j = 0; j < ((uint32_t)v[44] << 8 | v[45]); j++)
		p += p < vl ? 1u + v[p] : 1u;
	if (p + (size_t)m->nrcpts * QUEUE_STATE_RCPT != vl)
		return false;
	for (uint32_t i = 0; i < m->nrcpts; i++, p += QUEUE_STATE_RCPT) {
		const struct queue_rcpt_meta *r = &m->rcpts[i];
		uint32_t att = (uint32_t)v[p + 4] << 24 | (uint32_t)v[p + 5] << 16 |
			       (uint32_t)v[p + 6] << 8 | v[p + 7];
		if (v[p + 2] != r->state || v[p + 3] != r->delay_notified || att != r->attempts ||
		    store_u64_decode(v + p + 8) != r->next_attempt_ms ||
		    store_u64_decode(v + p + 16) != r->last_attempt_ms)
			return false;
	}
	return true;
}

/* The node's store holds what queue_fsm.h says for the FSM's messages, and nothing else:
 * their envelopes and the results of their attempted recipients (queue CF), their bodies
 * (body CF) and one state value each (index CF). */
static void
check_store(struct node *nd, const char *when)
{
	struct queue_counts c;
	queue_fsm_counts(nd->fsm, &c);
	struct own_keys own = {.nmem = queue_fsm_members(nd->fsm, own.mem, QUEUE_MEMBERS_MAX)};
	queue_fsm_domains(nd->fsm, dom_list_cb, &own.l);
	for (int k = 0; k < 3; k++) {
		enum store_cf cf = queue_cfs[k];
		struct store_iter *it;
		uint64_t n = 0;
		if (store_iter_new(nd->vstore, cf, &it))
			fail("store_iter_new failed");
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
			size_t kl, vl;
			const unsigned char *key = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			if (cf == STORE_CF_QUEUE && kl && key[0] == QUEUE_KEY_OWN) {
				check_own_key(nd, when, key, kl, v, vl, &own);
				n--;
				continue;
			}
			if (!check_msg_key(nd, cf, key, kl, v, vl))
				fail("node %" PRIu64 " (%s, applied %" PRIu64 ") store %s key %.*s "
				     "does not match its FSM",
				     nd->id, when, nd->sm_index, store_cf_name(cf), (int)kl, key);
			if (cf == STORE_CF_QUEUE && memchr(key, 0, kl))
				n--; /* a result, not a message */
		}
		store_iter_free(it);
		if (n != c.messages)
			fail("node %" PRIu64 " (%s, applied %" PRIu64 ") store has %" PRIu64
			     " %s keys for %" PRIu64 " messages",
			     nd->id, when, nd->sm_index, n, store_cf_name(cf), c.messages);
	}
	if (own.nd != own.l.n || own.nm != own.nmem)
		fail("node %" PRIu64 " (%s, applied %" PRIu64 ") store has %zu assignment and %zu "
		     "member keys, its FSM %zu and %zu",
		     nd->id, when, nd->sm_index, own.nd, own.nm, own.l.n, own.nmem);
	uint64_t tombs =
	    S->n_removals < QUEUE_TOMBSTONES_MAX ? S->n_removals : QUEUE_TOMBSTONES_MAX;
	if (nd->sm_index == S->applied_max && own.nt != tombs)
		fail("node %" PRIu64 " (%s, applied %" PRIu64 ") store has %zu tombstones, the "
		     "model %" PRIu64,
		     nd->id, when, nd->sm_index, own.nt, tombs);
}

/* Every queue id the committed log has queued at the node's applied index, and nothing else,
 * is in its FSM, and its store agrees. */
static void
check_fsm_full(struct node *nd, const char *when)
{
	uint64_t j = nd->sm_index, n = 0;
	for (size_t k = 0; k < S->n_mq; k++) {
		check_mq_presence(nd, S->mq_all[k], j, when);
		n += mq_present_at(S->mq_all[k], j);
	}
	struct queue_counts c;
	queue_fsm_counts(nd->fsm, &c);
	if (c.messages != n)
		fail("queue model: node %" PRIu64 " (%s, applied %" PRIu64 ") has %" PRIu64
		     " messages, the model %" PRIu64,
		     nd->id, when, j, c.messages, n);
	check_store(nd, when);
	S->n_full_checks++;
}

/* ------------------------------------------------------------------ state machine */

static struct applied_rec *
applied_at(uint64_t index)
{
	if (index >= S->applied_cap) {
		size_t n = S->applied_cap ? S->applied_cap : 1024;
		while (n <= index)
			n *= 2;
		S->applied = realloc(S->applied, n * sizeof(*S->applied));
		memset(S->applied + S->applied_cap, 0, (n - S->applied_cap) * sizeof(*S->applied));
		S->applied_cap = n;
	}
	return &S->applied[index];
}

static const char *
cmd_name(const Relay__Command *cmd)
{
	switch (cmd->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		return "accept";
	case RELAY__COMMAND__CMD_OUTCOME:
		return "outcome";
	case RELAY__COMMAND__CMD_DELETE:
		return "delete";
	case RELAY__COMMAND__CMD_MEMBER:
		return "member";
	case RELAY__COMMAND__CMD_RENEW:
		return "renew";
	case RELAY__COMMAND__CMD_HOLD:
		return "hold";
	case RELAY__COMMAND__CMD_RELEASE:
		return "release";
	case RELAY__COMMAND__CMD_RETRY:
		return "retry";
	case RELAY__COMMAND__CMD_DEFER_DOMAIN:
		return "defer";
	default:
		return "command";
	}
}

/* Applies one committed entry to the node's FSM (its store writes go to b) and checks it
 * against the first node to apply that index and against the model. */
static void
sm_apply(struct node *nd, const struct raft_entry *e, struct store_batch *b)
{
	if (e->index != nd->sm_index + 1)
		fail("node %" PRIu64 " applies index %" PRIu64 " after %" PRIu64, nd->id, e->index,
		     nd->sm_index);
	uint64_t eh = entry_hash(e);
	struct applied_rec *ar = applied_at(e->index);
	bool first = !ar->set;
	if (!first && ar->ehash != eh)
		fail("state machine safety: node %" PRIu64 " applied a different entry at %" PRIu64,
		     nd->id, e->index);
	int rc = 0;
	struct mq *touched[4];
	size_t nt = 0;
	Relay__Command *cmd = NULL;
	if (e->type == RAFT_ENTRY_CONF && e->index > S->committed_conf_index) {
		if (raft_conf_decode(e->data, e->len, &S->committed_conf))
			fail("node %" PRIu64 " configuration entry %" PRIu64 " does not decode",
			     nd->id, e->index);
		S->committed_conf_index = e->index;
	}
	if (e->type == RAFT_ENTRY_NORMAL) {
		cmd = relay__command__unpack(NULL, e->len, e->data);
		if (!cmd)
			fail("node %" PRIu64 " entry %" PRIu64 " does not unpack", nd->id,
			     e->index);
		/* the domains' epochs before, as this node sees them: what fencing compares */
		uint64_t dom_epoch[SIM_DOM_MAX] = {0};
		if (first && cmd->cmd_case == RELAY__COMMAND__CMD_OUTCOME)
			for (size_t k = 0; k < S->n_dom; k++) {
				char owner[QUEUE_NODE_MAX + 1];
				if (queue_fsm_domain_owner(nd->fsm, S->dom[k].name, owner,
							   &dom_epoch[k]))
					dom_epoch[k] = 0;
			}
		rc = queue_apply(nd->fsm, e->index, cmd, b);
		if (rc == QUEUE_ENOMEM || rc == QUEUE_EIO || rc == QUEUE_ECORRUPT)
			fail("node %" PRIu64 " queue_apply %" PRIu64 ": %s", nd->id, e->index,
			     queue_strerror(rc));
		if (first) {
			int want = model_apply(e->index, cmd, dom_epoch, touched, &nt);
			if (rc != want)
				fail("queue model: %s %s at %" PRIu64 " gives \"%s\", the rules "
				     "say \"%s\"",
				     cmd_name(cmd), nt ? touched[0]->id : "-", e->index,
				     rc ? queue_strerror(rc) : "ok",
				     want ? queue_strerror(want) : "ok");
			if (cmd->cmd_case == RELAY__COMMAND__CMD_OUTCOME && nt) {
				/* G4, said plainly: a recipient listed with a stale epoch for its
				 * domain is left exactly as it was (the model agrees below) */
				const struct mq *q = touched[0];
				const Relay__Outcome *o = cmd->outcome;
				for (size_t k = 0; k < o->n_rcpt_index && q->present; k++) {
					uint32_t i = o->rcpt_index[k];
					if (i < q->nrcpts && q->st[i] == QUEUE_RCPT_QUEUED &&
					    (!o->has_epoch || !o->epoch ||
					     o->epoch != dom_epoch[q->dom[i]]))
						S->n_fenced++;
				}
			}
			/* the recipients of what it touched, as the rules say */
			for (size_t k = 0; k < nt; k++) {
				const struct mq *q = touched[k];
				const struct queue_msg *m = queue_fsm_lookup(nd->fsm, q->id);
				if (!m || !q->present)
					continue; /* presence: below */
				if (m->nrcpts != q->nrcpts)
					fail("queue model: %s has %u recipients, the model %u",
					     q->id, m->nrcpts, q->nrcpts);
				for (uint32_t i = 0; i < q->nrcpts; i++)
					if (m->rcpts[i].state != q->st[i] ||
					    m->rcpts[i].attempts != q->attempts[i] ||
					    m->rcpts[i].last_attempt_ms != q->last_at[i])
						fail("queue model: after %s at %" PRIu64
						     " recipient %u of %s is state %u attempts %u "
						     "last %" PRIu64
						     ", the rules say %u %u %" PRIu64,
						     cmd_name(cmd), e->index, i, q->id,
						     m->rcpts[i].state, m->rcpts[i].attempts,
						     m->rcpts[i].last_attempt_ms, q->st[i],
						     q->attempts[i], q->last_at[i]);
			}
		} else {
			model_touched(cmd, touched, &nt);
		}
		if (cmd->cmd_case == RELAY__COMMAND__CMD_RENEW && nd->renew_seq &&
		    cmd->origin_node == nd->id && cmd->origin_boot == nd->boot &&
		    cmd->origin_seq == nd->renew_seq) {
			own_renew_done(&nd->own, true, S->now); /* committed and applied here */
			nd->renew_seq = 0;
			trace("node %" PRIu64 " renew applied at %" PRIu64 ": lease until %" PRIu64,
			      nd->id, e->index, nd->own.lease_until);
		}
		if (cmd->has_origin_seq) {
			uint64_t id = cmd->origin_seq;
			uint64_t slot = id & ~SIM_PROP_ID_HEAL;
			if (id & SIM_PROP_ID_HEAL) {
				if (slot < SIM_HEAL_PROPOSALS)
					S->heal_done[slot] = true;
			} else {
				uint64_t prev = vec_get(&S->prop_index, slot);
				if (!prev) {
					vec_set(&S->prop_index, slot, e->index + 1);
					S->n_applied++;
				} else if (prev != e->index + 1) {
					fail("proposal %" PRIu64 " applied at two indexes %" PRIu64
					     " and %" PRIu64,
					     slot, prev - 1, e->index);
				}
			}
		}
	}
	nd->sm_index = e->index;
	uint64_t dg = queue_fsm_digest(nd->fsm);
	if (first) {
		ar->set = 1;
		ar->ehash = eh;
		ar->rc = rc;
		ar->digest = dg;
		if (cmd)
			describe(cmd, ar->what, sizeof(ar->what));
		S->applied_max = e->index;
		check_assignments(nd, e->index);
		if (cmd) {
			if (rc)
				S->n_cmd[3]++;
			else if (cmd->cmd_case == RELAY__COMMAND__CMD_ACCEPT)
				S->n_cmd[0]++;
			else if (cmd->cmd_case == RELAY__COMMAND__CMD_OUTCOME)
				S->n_cmd[1]++;
			else if (cmd->cmd_case == RELAY__COMMAND__CMD_DELETE)
				S->n_cmd[2]++;
			else if (cmd->cmd_case == RELAY__COMMAND__CMD_MEMBER)
				S->n_member_cmds++;
			else if (cmd->cmd_case == RELAY__COMMAND__CMD_RENEW)
				S->n_renews++;
			struct queue_counts c;
			queue_fsm_counts(nd->fsm, &c);
			if (c.messages > S->queue_max)
				S->queue_max = c.messages;
		}
	} else {
		if (ar->rc != rc)
			fail("determinism: node %" PRIu64 " gets \"%s\" applying %s at %" PRIu64
			     ", the first node got \"%s\"",
			     nd->id, rc ? queue_strerror(rc) : "ok", cmd ? cmd_name(cmd) : "entry",
			     e->index, ar->rc ? queue_strerror(ar->rc) : "ok");
		if (ar->digest != dg)
			fail("state machine safety: node %" PRIu64 " digest after %" PRIu64
			     " differs from the first node's",
			     nd->id, e->index);
	}
	for (size_t k = 0; k < nt; k++)
		check_mq_presence(nd, touched[k], e->index, "apply");
	if (cmd)
		relay__command__free_unpacked(cmd, NULL);
}

/* ------------------------------------------------------------------ nodes */

static struct raft_config
node_config(struct node *nd)
{
	struct raft_config c = {
	    .id = nd->id,
	    .election_tick = S->election_tick,
	    .heartbeat_tick = S->heartbeat_tick,
	    .pre_vote = S->pre_vote,
	    .check_quorum = S->check_quorum,
	    .max_inflight = 1 + (unsigned)rnd_n(16),
	    .max_msg_entries = 1 + (unsigned)rnd_n(32),
	    /* small ones split entries and snapshots (a chunk is at most this) finely */
	    .max_msg_bytes = rnd_n(4) ? 512 + rnd_n(8192) : 64 + rnd_n(1024),
	    .max_outbox = 256,
	    .max_uncommitted = 512,
	    .max_log_entries = 100000,
	    .max_apply_batch = 1 + (unsigned)rnd_n(64),
	    .rng_seed = rnd(),
	};
	return c;
}

static void drain(struct node *nd);

static void
node_start(struct node *nd, bool bootstrap)
{
	struct raft_config c = node_config(nd);
	nd->cfg = c;
	if (raft_new(&c, &nd->r))
		fail("raft_new failed");
	/* the host opens its store: the FSM is rebuilt from what the disk holds */
	nd->vstore = store_clone(nd->dstore);
	int rv = queue_fsm_new(nd->vstore, &nd->fsm);
	if (rv)
		fail("node %" PRIu64 " queue_fsm_new: %s", nd->id, queue_strerror(rv));
	if (S->idle_max)
		queue_fsm_test_idle_max(nd->fsm, S->idle_max);
	uint64_t applied = 0;
	if ((rv = store_applied_get(nd->dstore, &applied)))
		fail("node %" PRIu64 " store_applied_get: %s", nd->id, store_strerror(rv));
	/* Like craft__load: a node of the initial configuration (in `peers`, not joining) whose
	 * disk holds no Raft state bootstraps, at every start.  Its bootstrap may not have been
	 * durable: a crash keeps a prefix of the writes, so nothing later was either and it has
	 * promised nothing to anyone.  (Seed 210170: a power cut at t=49 took every node's
	 * bootstrap; restored with no configuration, none ever campaigned.) */
	if (!bootstrap && nd->id <= (uint64_t)S->n_nodes && nd->d.hs.term == 0 && nd->d.n == 0 &&
	    nd->d.snap.index == 0)
		bootstrap = true;
	if (bootstrap) {
		struct raft_conf conf = {0};
		for (int i = 1; i <= S->n_nodes; i++)
			conf.voters[conf.n_voters++] = (uint64_t)i;
		rv = raft_bootstrap(nd->r, &conf);
	} else {
		for (size_t k = 0; k < nd->d.n; k++)
			if (nd->d.ents[k].index != nd->d.snap.index + 1 + k)
				fail("node %" PRIu64 " disk entry %zu has index %" PRIu64
				     " after snapshot %" PRIu64,
				     nd->id, k, nd->d.ents[k].index, nd->d.snap.index);
		rv = raft_restore(nd->r, &nd->d.hs, &nd->d.snap, nd->d.snap_data, nd->d.snap_len,
				  nd->d.ents, nd->d.n);
		struct raft_status st;
		raft_status(nd->r, &st);
		/* what cluster_raft's open requires of its store */
		if (rv == 0 && applied < st.snap_index)
			fail("node %" PRIu64 " durable queue at %" PRIu64
			     " is behind its snapshot %" PRIu64,
			     nd->id, applied, st.snap_index);
		if (rv == 0 && applied > st.last_index)
			fail("node %" PRIu64 " durable queue at %" PRIu64
			     " is past its durable log %" PRIu64,
			     nd->id, applied, st.last_index);
		if (rv == 0 && applied > st.snap_index) {
			/* the applied entries are not handed out again */
			rv = raft_set_applied(nd->r, applied);
			S->n_sm_resumes++;
		}
	}
	if (rv)
		fail("node %" PRIu64 " restore: %s", nd->id, raft_strerror(rv));
	nd->sm_index = applied;
	struct applied_rec *ar = applied_at(applied);
	if (!ar->set)
		fail("node %" PRIu64 " durable queue at %" PRIu64 " which nobody applied", nd->id,
		     applied);
	if (ar->digest != queue_fsm_digest(nd->fsm))
		fail("node %" PRIu64 " restarted queue at %" PRIu64
		     " differs from the applied history (digest)",
		     nd->id, applied);
	check_fsm_full(nd, "restart");
	nd->boot = rnd();
	char me[QUEUE_NODE_MAX + 1];
	node_name(nd->id, me);
	struct own_config oc = {.self = me, .lease_ms = S->lease_ms};
	own_init(&nd->own, &oc);
	nd->renew_seq = 0;
	nd->revived = false;
	nd->n_att = 0;
	nd->up = true;
	nd->tick_phase = rnd_n(SIM_TICK);
	nd->seen_commit = nd->d.snap.index;
	nd->lc_term = 0;
	nd->d.last_due = S->now;
	trace("node %" PRIu64 " start term=%" PRIu64 " snap=%" PRIu64 " ents=%zu applied=%" PRIu64,
	      nd->id, nd->d.hs.term, nd->d.snap.index, nd->d.n, applied);
	drain(nd);
}

static void
node_crash(struct node *nd, const char *why)
{
	if (!nd->up)
		return;
	/* a random prefix of the writes not yet reported durable reached the disk */
	size_t keep = rnd_n(nd->d.npw + 1);
	for (size_t i = 0; i < nd->d.npw; i++) {
		if (i < keep)
			disk_apply(nd, &nd->d.pw[i]);
		pwrite_free(&nd->d.pw[i]);
	}
	nd->d.npw = 0;
	raft_free(nd->r);
	nd->r = NULL;
	/* the process's memory is gone: the FSM and the writes not yet on disk */
	queue_fsm_free(nd->fsm);
	nd->fsm = NULL;
	store_free(nd->vstore);
	nd->vstore = NULL;
	nd->up = false;
	nd->restart_at = S->now + 50 + rnd_n(2000);
	S->n_crashes++;
	trace("node %" PRIu64 " crash (%s) kept %zu writes", nd->id, why, keep);
}

static void
check_log_entries(struct node *nd, const struct raft_entry *ents, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct raft_entry *e = &ents[i];
		uint64_t prev = i ? ents[i - 1].term : raft_term_at(nd->r, e->index - 1);
		if (e->index > 1 && prev == 0)
			fail("node %" PRIu64 " writes entry %" PRIu64 " with unknown previous term",
			     nd->id, e->index);
		struct emap_slot *s = emap_find(&S->emap, e->index, e->term, false);
		uint64_t h = entry_hash(e);
		if (!s) {
			s = emap_find(&S->emap, e->index, e->term, true);
			s->hash = h;
			s->prev = prev;
		} else if (s->hash != h || s->prev != prev) {
			fail("log matching: node %" PRIu64
			     " has a different entry at index %" PRIu64 " term %" PRIu64,
			     nd->id, e->index, e->term);
		}
	}
}

static void
check_msg_bounds(struct node *nd, const struct raft_msg *m)
{
	size_t bytes = 0;
	for (uint32_t i = 0; i < m->n_entries; i++)
		bytes += m->entries[i].len;
	if (m->n_entries > nd->cfg.max_msg_entries ||
	    (m->n_entries > 1 && bytes > nd->cfg.max_msg_bytes))
		fail("node %" PRIu64 " sent %u entries / %zu bytes past its bounds", nd->id,
		     m->n_entries, bytes);
	if (m->type == RAFT_MSG_SNAP && m->snap_len > nd->cfg.max_msg_bytes)
		fail("node %" PRIu64 " sent a snapshot chunk of %" PRIu64 " bytes", nd->id,
		     m->snap_len);
	if (m->from != nd->id)
		fail("node %" PRIu64 " sent a message from %" PRIu64, nd->id, m->from);
}

/* Handle every ready of a node: start disk writes, send, apply, advance. */
static void
drain(struct node *nd)
{
	struct raft_ready rd;
	int guard = 0;
	while (nd->up && raft_ready_get(nd->r, &rd) > 0) {
		if (++guard > 10000)
			fail("node %" PRIu64 " ready loop does not terminate", nd->id);
		struct pwrite *w = NULL; /* this ready's write: log first, then queue writes */
		if (rd.need_persist) {
			check_log_entries(nd, rd.entries, rd.n_entries);
			w = pwrite_new(nd, rd.seq);
			w->has_hs = rd.hs_changed;
			w->hs = rd.hs;
			if (rd.snap) {
				w->has_snap = true;
				w->snap = *rd.snap;
				if (rd.snap_len) {
					w->snap_data = malloc(rd.snap_len);
					memcpy(w->snap_data, rd.snap_data, rd.snap_len);
				}
				w->snap_len = rd.snap_len;
			}
			if (rd.n_entries) {
				w->ents = calloc(rd.n_entries, sizeof(*w->ents));
				for (size_t i = 0; i < rd.n_entries; i++)
					ent_copy(&w->ents[i], &rd.entries[i]);
				w->n = rd.n_entries;
			}
		} else if (rd.snap) {
			fail("node %" PRIu64 " snapshot %" PRIu64 " handed out without persist",
			     nd->id, rd.snap->index);
		}
		for (size_t i = 0; i < rd.n_msgs; i++) {
			trace("send %s %" PRIu64 "->%" PRIu64 " term=%" PRIu64 " idx=%" PRIu64
			      " lt=%" PRIu64 " n=%u commit=%" PRIu64 " rej=%d snap=%" PRIu64
			      " off=%" PRIu64 "/%" PRIu64 " len=%" PRIu64,
			      raft_msg_type_name(rd.msgs[i].type), rd.msgs[i].from, rd.msgs[i].to,
			      rd.msgs[i].term, rd.msgs[i].index, rd.msgs[i].log_term,
			      rd.msgs[i].n_entries, rd.msgs[i].commit, rd.msgs[i].reject,
			      rd.msgs[i].snap.index, rd.msgs[i].snap_offset, rd.msgs[i].snap_total,
			      rd.msgs[i].snap_len);
			check_msg_bounds(nd, &rd.msgs[i]);
			net_send(&rd.msgs[i]);
		}
		if (rd.snap) {
			S->n_snap_installs++;
			trace("node %" PRIu64 " installs snapshot %" PRIu64, nd->id,
			      rd.snap->index);
			sm_restore(nd, rd.snap_data, rd.snap_len, rd.snap->index, &w);
		}
		if (rd.n_committed) {
			/* the apply writes and the applied index join this ready's write (after
			 * its log entries) or a new one: cluster_raft's craft__apply */
			struct store_batch ab;
			store_batch_init(&ab);
			for (size_t i = 0; i < rd.n_committed; i++)
				sm_apply(nd, &rd.committed[i], &ab);
			if (store_applied_put(&ab, nd->sm_index))
				fail("store_applied_put failed");
			node_write(nd, &w, &ab);
			store_batch_fini(&ab);
		}
		raft_advance(nd->r, &rd);
	}
}

/* ------------------------------------------------------------------ checks */

static void
check_node(struct node *nd)
{
	struct raft_status st;
	raft_status(nd->r, &st);
	if (st.role == RAFT_LEADER) {
		uint64_t l = vec_get(&S->leader_of_term, st.term);
		if (!l) {
			vec_set(&S->leader_of_term, st.term, nd->id);
			S->n_elections++;
			trace("node %" PRIu64 " leader term=%" PRIu64, nd->id, st.term);
		} else if (l != nd->id) {
			fail("election safety: nodes %" PRIu64 " and %" PRIu64
			     " both leaders of term %" PRIu64,
			     l, nd->id, st.term);
		}
	}
	if (st.commit > st.last_index || st.applied > st.commit)
		fail("node %" PRIu64 " commit %" PRIu64 " last %" PRIu64 " applied %" PRIu64,
		     nd->id, st.commit, st.last_index, st.applied);
	for (uint64_t i = nd->seen_commit + 1; i <= st.commit; i++) {
		uint64_t t = raft_term_at(nd->r, i);
		if (!t)
			continue; /* compacted or under a snapshot */
		uint64_t g = vec_get(&S->committed_term, i);
		if (!g) {
			vec_set(&S->committed_term, i, t);
			vec_set(&S->committed_seen_term, i, st.term);
		} else if (g != t)
			fail("committed entry %" PRIu64 " has term %" PRIu64 " on node %" PRIu64
			     " but %" PRIu64 " elsewhere",
			     i, t, nd->id, g);
	}
	if (st.commit > nd->seen_commit)
		nd->seen_commit = st.commit;
	if (st.commit > S->commit_max)
		S->commit_max = st.commit;
	if (st.role == RAFT_LEADER) {
		/* leader completeness: every committed entry is in this leader's log (3.6.3) */
		if (nd->lc_term != st.term) {
			nd->lc_term = st.term;
			nd->lc_checked = 0;
		}
		uint64_t from = nd->lc_checked > st.snap_index ? nd->lc_checked : st.snap_index;
		for (uint64_t i = from + 1; i <= S->commit_max; i++) {
			/* required of leaders of terms after the one it was committed in; that
			 * term is at most the term of the first node seen to commit it */
			uint64_t g = vec_get(&S->committed_term, i);
			uint64_t t = raft_term_at(nd->r, i);
			if (g && vec_get(&S->committed_seen_term, i) < st.term && t != g)
				fail("leader completeness: leader %" PRIu64 " term %" PRIu64
				     " lacks committed entry %" PRIu64 " (term %" PRIu64
				     ", has %" PRIu64 ")",
				     nd->id, st.term, i, g, t);
		}
		nd->lc_checked = S->commit_max;
	}
}

/* ------------------------------------------------------------------ client actions */

static struct node *
random_up_node(void)
{
	int k = (int)rnd_n((uint64_t)S->n_ids);
	for (int i = 0; i < S->n_ids; i++) {
		struct node *nd = &S->nodes[1 + (k + i) % S->n_ids];
		if (nd->up)
			return nd;
	}
	return NULL;
}

static struct node *
leader_node(void)
{
	struct node *best = NULL;
	uint64_t bt = 0;
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		if (!nd->up)
			continue;
		struct raft_status st;
		raft_status(nd->r, &st);
		if (st.role == RAFT_LEADER && st.term >= bt) {
			best = nd;
			bt = st.term;
		}
	}
	return best;
}

/* ------------------------------------------------------------------ client commands */

/* Storage for one generated command (protobuf-c structs point into it). */
struct gen {
	Relay__Command cmd;
	Relay__Accept acc, dsn;
	Relay__Recipient rc[SIM_MQ_RCPTS], drc;
	Relay__Recipient *rp[SIM_MQ_RCPTS], *drp[1];
	char addr[SIM_MQ_RCPTS][48];
	char qid[QUEUE_ID_MAX + 1], dqid[QUEUE_ID_MAX + 1];
	uint8_t body[SIM_BODY_MAX];
	Relay__Outcome out;
	Relay__Delete del;
	Relay__Member mem;
	Relay__Renew ren;
	Relay__Hold hold;
	Relay__Release rel;
	Relay__Retry rty;
	Relay__DeferDomain dfr;
	char node[QUEUE_NODE_MAX + 1];
	uint32_t idx[SIM_MQ_RCPTS + 2];
};

static void
gen_qid(char *out, char prefix)
{
	snprintf(out, QUEUE_ID_MAX + 1, "%c%06" PRIu64, prefix, ++S->next_qid);
}

static void
gen_accept(struct gen *g)
{
	relay__accept__init(&g->acc);
	gen_qid(g->qid, 'Q');
	g->acc.queue_id = g->qid;
	g->acc.mail_from = rnd_n(8) ? "sender@src.example" : "";
	size_t n = 1 + rnd_n(SIM_MQ_RCPTS);
	for (size_t i = 0; i < n; i++) {
		relay__recipient__init(&g->rc[i]);
		unsigned u = (unsigned)rnd_n(50), d = (unsigned)rnd_n(SIM_DOMAINS);
		/* domains compare case-insensitively (ownership): mix the case */
		snprintf(g->addr[i], sizeof(g->addr[i]),
			 rnd_n(10) ? "u%u@d%u.example" : "U%u@D%u.Example", u, d);
		g->rc[i].addr = g->addr[i];
		g->rp[i] = &g->rc[i];
	}
	g->acc.n_rcpts = n;
	g->acc.rcpts = g->rp;
	size_t bl = rnd_n(SIM_BODY_MAX + 1);
	for (size_t i = 0; i < bl; i++)
		g->body[i] = (uint8_t)(' ' + rnd_n(95));
	g->acc.body.data = g->body;
	g->acc.body.len = bl;
	g->acc.received_ms = SIM_EPOCH_MS + S->now;
	g->cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	g->cmd.accept = &g->acc;
}

/* A random message of the node's own FSM (NULL when empty). */
static const struct queue_msg *
pick_msg(struct node *nd)
{
	struct queue_counts c;
	queue_fsm_counts(nd->fsm, &c);
	if (!c.messages)
		return NULL;
	uint64_t k = rnd_n(c.messages);
	const struct queue_msg *m = queue_fsm_first(nd->fsm);
	while (k-- && m)
		m = queue_fsm_next(nd->fsm, m);
	return m;
}

/* A queue id that is (most likely) not queued: never accepted, or finished. */
static void
gen_other_qid(char *out)
{
	if (S->n_mq && rnd_n(2))
		snprintf(out, QUEUE_ID_MAX + 1, "%s", S->mq_all[rnd_n(S->n_mq)]->id);
	else
		gen_qid(out, 'N');
}

/* An outcome for recipients the proposer sees queued in its own FSM (sometimes a replay of
 * their last attempt, an already final one, an index past the message's recipients, or a
 * queue id it does not have). */
static void gen_outcome_kind(struct gen *g, uint64_t at);

static void
gen_outcome(struct node *nd, struct gen *g)
{
	relay__outcome__init(&g->out);
	const struct queue_msg *m = rnd_n(10) ? pick_msg(nd) : NULL;
	size_t n = 0;
	uint64_t at = SIM_EPOCH_MS + S->now;
	uint64_t epoch = 0;
	const struct mq *q = m ? mq_get(m->queue_id, false) : NULL;
	if (m && q && q->nrcpts == m->nrcpts) {
		/* an item: the queued recipients of one domain, at the epoch the proposer's own
		 * FSM gives that domain (stale when its FSM is behind) */
		snprintf(g->qid, sizeof(g->qid), "%s", m->queue_id);
		uint32_t pick = UINT32_MAX, seen = 0;
		for (uint32_t i = 0; i < m->nrcpts; i++)
			if (m->rcpts[i].state == QUEUE_RCPT_QUEUED && rnd_n(++seen) == 0)
				pick = i;
		if (pick == UINT32_MAX)
			pick = 0;
		for (uint32_t i = 0; i < m->nrcpts; i++) {
			bool item =
			    m->rcpts[i].state == QUEUE_RCPT_QUEUED && q->dom[i] == q->dom[pick];
			if (i == pick || (item && rnd_n(10) < 8) || rnd_n(20) == 0)
				g->idx[n++] = i;
		}
		if (rnd_n(50) == 0)
			g->idx[n++] = m->nrcpts; /* past its recipients: rejected at apply */
		if (rnd_n(8) == 0 && m->rcpts[pick].last_attempt_ms)
			at = m->rcpts[pick].last_attempt_ms; /* a replay */
		char owner[QUEUE_NODE_MAX + 1];
		if (queue_fsm_domain_owner(nd->fsm, S->dom[q->dom[pick]].name, owner, &epoch))
			epoch = 0;
		if (rnd_n(20) == 0)
			epoch = epoch > 1 ? rnd_n(epoch) : 0; /* an older epoch: stale */
	} else {
		gen_other_qid(g->qid);
		g->idx[n++] = (uint32_t)rnd_n(2);
		epoch = rnd_n(S->applied_max + 1);
	}
	g->out.has_epoch = 1;
	g->out.epoch = epoch;
	g->out.queue_id = g->qid;
	g->out.rcpt_index = g->idx;
	g->out.n_rcpt_index = n;
	g->cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	g->cmd.outcome = &g->out;
	gen_outcome_kind(g, at);
}

/* The verdict part of an outcome: kind, reply, relay, DSN status, and sometimes a DSN. */
static void
gen_outcome_kind(struct gen *g, uint64_t at)
{
	if (g->cmd.cmd_case != RELAY__COMMAND__CMD_OUTCOME) {
		relay__outcome__init(&g->out);
		g->cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
		g->cmd.outcome = &g->out;
	}
	g->out.at_ms = at;
	unsigned k = (unsigned)rnd_n(10);
	bool dsn = false;
	if (k < 5) {
		g->out.kind = RELAY__OUTCOME_KIND__DELIVERED;
		g->out.reply = "250 2.0.0 ok";
		g->out.dsn_status = "2.0.0";
	} else if (k < 8) {
		g->out.kind = RELAY__OUTCOME_KIND__DEFERRED;
		g->out.has_next_attempt_ms = 1;
		g->out.next_attempt_ms = at + 1000 + rnd_n(600000);
		g->out.reply = "451 4.3.0 try again later";
		g->out.dsn_status = "4.3.0";
		if (rnd_n(5) == 0) {
			g->out.has_delay_notified = 1;
			g->out.delay_notified = 1;
			dsn = true;
		}
	} else {
		g->out.kind = RELAY__OUTCOME_KIND__FAILED;
		g->out.reply = "550 5.1.1 no such user";
		g->out.dsn_status = "5.1.1";
		dsn = rnd_n(2);
	}
	g->out.relay = rnd_n(4) ? "mx.d1.example[192.0.2.1]:25" : "";
	if (dsn) {
		relay__accept__init(&g->dsn);
		gen_qid(g->dqid, 'D');
		g->dsn.queue_id = g->dqid;
		g->dsn.mail_from = "";
		relay__recipient__init(&g->drc);
		g->drc.addr = "sender@src.example";
		g->drp[0] = &g->drc;
		g->dsn.rcpts = g->drp;
		g->dsn.n_rcpts = 1;
		g->dsn.body.data = (uint8_t *)"delivery status notification";
		g->dsn.body.len = 28;
		g->dsn.received_ms = at;
		g->out.dsn = &g->dsn;
	}
}

static void
gen_delete(struct node *nd, struct gen *g)
{
	relay__delete__init(&g->del);
	const struct queue_msg *m = rnd_n(6) ? pick_msg(nd) : NULL;
	size_t n = 0;
	if (m) {
		snprintf(g->qid, sizeof(g->qid), "%s", m->queue_id);
		if (rnd_n(2))
			for (uint32_t i = 0; i < m->nrcpts && i < SIM_MQ_RCPTS; i++)
				if (rnd_n(2))
					g->idx[n++] = i;
		if (rnd_n(50) == 0)
			g->idx[n++] = m->nrcpts;
	} else {
		gen_other_qid(g->qid);
	}
	g->del.queue_id = g->qid;
	g->del.rcpt_index = g->idx;
	g->del.n_rcpt_index = n;
	g->cmd.cmd_case = RELAY__COMMAND__CMD_DELETE;
	g->cmd.delete_ = &g->del;
}

static const Relay__MemberState member_states[] = {
    RELAY__MEMBER_STATE__MEMBER_LIVE, RELAY__MEMBER_STATE__MEMBER_DRAINING,
    RELAY__MEMBER_STATE__MEMBER_DRAINED, RELAY__MEMBER_STATE__MEMBER_DOWN,
    RELAY__MEMBER_STATE__MEMBER_REMOVED};

static void
gen_member_cmd(struct gen *g, uint64_t id, Relay__MemberState st)
{
	relay__member__init(&g->mem);
	node_name(id, g->node);
	g->mem.node = g->node;
	g->mem.state = st;
	g->mem.has_at_ms = 1;
	g->mem.at_ms = SIM_EPOCH_MS + S->now;
	g->cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	g->cmd.member = &g->mem;
}

/* What an operator, a leader or a node itself proposes about membership, at random; half the
 * DRAINEDs carry expect_since_index from the proposer's (possibly stale) view, as a member's
 * own does. */
static void
gen_member(struct node *nd, struct gen *g)
{
	unsigned k = (unsigned)rnd_n(20);
	Relay__MemberState st = member_states[k < 9 ? 0 : k < 12 ? 1 : k < 14 ? 2 : k < 18 ? 3 : 4];
	if (S->lease_mode)
		st = RELAY__MEMBER_STATE__MEMBER_DRAINING; /* the rest is the ownership cores' */
	uint64_t id = 1 + rnd_n((uint64_t)S->n_ids);
	gen_member_cmd(g, id, st);
	if (st == RELAY__MEMBER_STATE__MEMBER_DRAINED && rnd_n(2)) {
		struct queue_member mem[QUEUE_MEMBERS_MAX];
		size_t n = queue_fsm_members(nd->fsm, mem, QUEUE_MEMBERS_MAX);
		g->mem.has_expect_since_index = 1;
		g->mem.expect_since_index = 0;
		for (size_t i = 0; i < n; i++)
			if (!strcmp(mem[i].node, g->node))
				g->mem.expect_since_index = mem[i].since_index;
	}
}

static void
gen_renew(struct node *nd, struct gen *g)
{
	relay__renew__init(&g->ren);
	node_name(nd->id, g->node);
	g->ren.node = g->node;
	g->ren.has_at_ms = 1;
	g->ren.at_ms = SIM_EPOCH_MS + S->now;
	g->cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
	g->cmd.renew = &g->ren;
}

/* relayctl queue hold|release|retry on a message the proposer has (or an unknown one). */
static void
gen_hold(struct node *nd, struct gen *g)
{
	const struct queue_msg *m = rnd_n(6) ? pick_msg(nd) : NULL;
	if (m)
		snprintf(g->qid, sizeof(g->qid), "%s", m->queue_id);
	else
		gen_other_qid(g->qid);
	uint64_t at = SIM_EPOCH_MS + S->now + rnd_n(60000);
	char owner[QUEUE_NODE_MAX + 1];
	uint64_t epoch = 0;
	switch (S->n_dom ? rnd_n(4) : rnd_n(3)) {
	case 3:
		/* a dead destination: DeferDomain at the proposer's epoch of the domain (or
		 * an older one: fenced), until a while later */
		relay__defer_domain__init(&g->dfr);
		snprintf(g->qid, sizeof(g->qid), "%s", S->dom[rnd_n(S->n_dom)].name);
		if (queue_fsm_domain_owner(nd->fsm, g->qid, owner, &epoch) || !epoch || !rnd_n(5))
			epoch = 1 + rnd_n(epoch + 1);
		g->dfr.domain = g->qid;
		g->dfr.epoch = epoch;
		g->dfr.until_ms = at + rnd_n(20000);
		g->dfr.at_ms = SIM_EPOCH_MS + S->now;
		g->dfr.reply = rnd_n(2) ? "451 4.4.3 d.example: no answer" : "";
		g->cmd.cmd_case = RELAY__COMMAND__CMD_DEFER_DOMAIN;
		g->cmd.defer_domain = &g->dfr;
		break;
	case 0:
		relay__hold__init(&g->hold);
		g->hold.queue_id = g->qid;
		g->cmd.cmd_case = RELAY__COMMAND__CMD_HOLD;
		g->cmd.hold = &g->hold;
		break;
	case 1:
		relay__release__init(&g->rel);
		g->rel.queue_id = g->qid;
		g->rel.at_ms = at;
		g->cmd.cmd_case = RELAY__COMMAND__CMD_RELEASE;
		g->cmd.release = &g->rel;
		break;
	default:
		relay__retry__init(&g->rty);
		g->rty.queue_id = g->qid;
		g->rty.at_ms = at;
		g->cmd.cmd_case = RELAY__COMMAND__CMD_RETRY;
		g->cmd.retry = &g->rty;
	}
}

static uint8_t *
pack_cmd(const Relay__Command *c, size_t *len)
{
	*len = relay__command__get_packed_size(c);
	uint8_t *p = malloc(*len ? *len : 1);
	relay__command__pack(c, p);
	return p;
}

/* A new client command for node nd, packed without an origin tag. */
static uint8_t *
gen_command(struct node *nd, size_t *len)
{
	unsigned k = (unsigned)rnd_n(100);
	if (k < S->pct_repeat) {
		struct recent *r = &S->recent[rnd_n(SIM_RECENT)];
		if (r->buf) {
			uint8_t *p = malloc(r->len ? r->len : 1);
			memcpy(p, r->buf, r->len);
			*len = r->len;
			return p;
		}
	}
	struct gen g;
	relay__command__init(&g.cmd);
	struct queue_counts qc;
	queue_fsm_counts(nd->fsm, &qc);
	/* a backlog gets more delivery attempts (and keeps snapshots small enough to stream in
	 * small chunks within the heal budget) */
	unsigned pct_outcome = S->pct_outcome + (qc.messages > SIM_BACKLOG ? 30 : 0);
	if (S->lease_mode)
		pct_outcome = 5; /* the attempts' outcomes are proposed by start_attempt's owners */
	if (qc.messages > 2 * SIM_BACKLOG)
		pct_outcome = 100; /* the clients wait: no new mail into a long backlog */
	unsigned c = S->pct_repeat;
	if (k < (c += pct_outcome))
		gen_outcome(nd, &g);
	else if (k < (c += S->pct_delete))
		gen_delete(nd, &g);
	else if (k < (c += S->pct_member))
		gen_member(nd, &g);
	else if (k < (c += S->pct_renew))
		gen_renew(nd, &g);
	else if (k < (c += S->pct_hold))
		gen_hold(nd, &g);
	else
		gen_accept(&g);
	uint8_t *p = pack_cmd(&g.cmd, len);
	struct recent *r = &S->recent[rnd_n(SIM_RECENT)];
	free(r->buf);
	r->buf = malloc(*len ? *len : 1);
	memcpy(r->buf, p, *len);
	r->len = *len;
	return p;
}

static void
describe(const Relay__Command *c, char *out, size_t n)
{
	switch (c->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		snprintf(out, n, "accept %s rcpts=%zu", c->accept->queue_id, c->accept->n_rcpts);
		break;
	case RELAY__COMMAND__CMD_OUTCOME:
		snprintf(out, n, "outcome %s kind=%d n=%zu at=%" PRIu64 " epoch=%" PRIu64 "%s",
			 c->outcome->queue_id, (int)c->outcome->kind, c->outcome->n_rcpt_index,
			 c->outcome->at_ms, c->outcome->epoch, c->outcome->dsn ? " +dsn" : "");
		break;
	case RELAY__COMMAND__CMD_DELETE:
		snprintf(out, n, "delete %s n=%zu", c->delete_->queue_id, c->delete_->n_rcpt_index);
		break;
	case RELAY__COMMAND__CMD_MEMBER:
		snprintf(out, n, "member %s %s", c->member->node,
			 member_state_name((int)c->member->state));
		if (c->member->has_expect_since_index) {
			size_t l = strlen(out);
			snprintf(out + l, n - l, " if-since=%" PRIu64,
				 c->member->expect_since_index);
		}
		break;
	default:
		snprintf(out, n, "%s", cmd_name(c));
	}
}

/* Proposes the untagged command buf at node nd (a follower refuses; the sim forwards it to the
 * leader the follower knows), tagged like cluster_raft: origin node, boot, seq = id. */
static int
propose(struct node *nd, uint64_t id, const uint8_t *buf, size_t blen)
{
	Relay__Command *c = relay__command__unpack(NULL, blen, buf);
	if (!c)
		fail("generated command does not unpack");
	c->has_origin_node = c->has_origin_boot = c->has_origin_seq = 1;
	c->origin_node = nd->id;
	c->origin_boot = nd->boot;
	c->origin_seq = id;
	char desc[160] = "";
	if (S->trace)
		describe(c, desc, sizeof(desc));
	bool is_renew = c->cmd_case == RELAY__COMMAND__CMD_RENEW;
	size_t len;
	uint8_t *p = pack_cmd(c, &len);
	relay__command__free_unpacked(c, NULL);
	uint64_t idx, term, origin = nd->id;
	struct raft_status st0;
	raft_status(nd->r, &st0);
	int rv = raft_propose(nd->r, p, len, &idx, &term);
	if (rv == 0 && st0.role != RAFT_LEADER)
		fail("node %" PRIu64 " accepted a proposal while not leader", nd->id);
	if (rv == RAFT_ENOTLEADER) {
		/* the follower refuses; the host forwards to the leader it knows */
		struct raft_status st;
		raft_status(nd->r, &st);
		if (st.lead && st.lead != nd->id && S->nodes[st.lead].up &&
		    link_ok(nd->id, st.lead)) {
			nd = &S->nodes[st.lead];
			/* as craft__propose_forward: a Renew from a node out of the leader's
			 * configuration is refused (ownership.h, REMOVED) */
			struct raft_status ls;
			raft_status(nd->r, &ls);
			if (is_renew && !raft_conf_is_member(&ls.conf, origin)) {
				S->n_renews_refused++;
				trace("node %" PRIu64 " refuses a renew from %" PRIu64
				      ": not in its configuration",
				      nd->id, origin);
				rv = RAFT_ENOTLEADER;
			} else {
				rv = raft_propose(nd->r, p, len, &idx, &term);
			}
		}
	}
	free(p);
	if (rv == 0) {
		if (origin != nd->id)
			trace("node %" PRIu64 " proposed (from %" PRIu64 ") id=%" PRIx64
			      " at %" PRIu64 "/%" PRIu64 ": %s",
			      nd->id, origin, id, idx, term, desc);
		else
			trace("node %" PRIu64 " proposed id=%" PRIx64 " at %" PRIu64 "/%" PRIu64
			      ": %s",
			      nd->id, id, idx, term, desc);
		drain(nd);
	}
	return rv;
}

/* ------------------------------------------------------------------ ownership hosts */

/* Proposes g at nd (a new proposal id; counted).  0 when the core took it. */
static int
propose_gen(struct node *nd, struct gen *g, uint64_t *id_out)
{
	size_t len;
	uint8_t *buf = pack_cmd(&g->cmd, &len);
	uint64_t id = ++S->next_prop;
	int rv = propose(nd, id, buf, len);
	free(buf);
	if (id_out)
		*id_out = id;
	if (rv)
		S->n_refused++;
	else
		S->n_proposed++;
	return rv;
}

/* nd's state in its own applied member table (-1: not in it); *since (if not NULL): the index
 * that set it (0: not in it). */
static int
self_state_since(struct node *nd, uint64_t *since)
{
	char me[QUEUE_NODE_MAX + 1];
	node_name(nd->id, me);
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(nd->fsm, mem, QUEUE_MEMBERS_MAX);
	if (since) {
		*since = 0;
		for (size_t k = 0; k < n; k++)
			if (!strcmp(mem[k].node, me))
				*since = mem[k].since_index;
	}
	return member_state(mem, n, me);
}

static int
self_state(struct node *nd)
{
	return self_state_since(nd, NULL);
}

struct due_pick {
	char qid[QUEUE_ID_MAX + 1];
	char domain[QUEUE_DOMAIN_MAX + 1];
	uint64_t epoch;
	uint32_t idx[SIM_MQ_RCPTS];
	size_t n;
};

struct due_list {
	struct due_pick p[8];
	size_t n;
};

static int
due_cb(void *arg, const struct queue_item *it)
{
	struct due_list *l = arg;
	if (l->n == 8)
		return 1;
	struct due_pick *p = &l->p[l->n++];
	snprintf(p->qid, sizeof(p->qid), "%s", it->msg->queue_id);
	snprintf(p->domain, sizeof(p->domain), "%s", it->domain);
	p->epoch = it->epoch;
	p->n = 0;
	const struct mq *q = mq_get(it->msg->queue_id, false);
	uint8_t d = dom_index(it->domain);
	for (uint32_t i = 0; q && i < it->msg->nrcpts && i < q->nrcpts; i++)
		if (it->msg->rcpts[i].state == QUEUE_RCPT_QUEUED && q->dom[i] == d)
			p->idx[p->n++] = i;
	return 0;
}

/* Lease mode: nd starts an attempt on one of the items its applied state gives it, if the lease
 * core lets it (own_may_start); the Outcome, with the epoch read now, follows later. */
static bool
start_attempt(struct node *nd)
{
	if (!nd->up || nd->n_att == SIM_ATTEMPTS)
		return false;
	char me[QUEUE_NODE_MAX + 1];
	node_name(nd->id, me);
	struct due_list l = {.n = 0};
	/* simulated time is short: every owned item counts as due */
	if (!own_lease_held(&nd->own, S->now) ||
	    queue_fsm_due_owned(nd->fsm, me, UINT64_MAX / 2, due_cb, &l, 8) <= 0 || !l.n)
		return false;
	struct due_pick *p = &l.p[rnd_n(l.n)];
	if (!p->n || !own_may_start(&nd->own, S->now, self_state(nd), me, p->epoch, p->epoch))
		return false;
	struct attempt *a = &nd->att[nd->n_att++];
	snprintf(a->qid, sizeof(a->qid), "%s", p->qid);
	memcpy(a->idx, p->idx, p->n * sizeof(p->idx[0]));
	a->n = p->n;
	a->epoch = p->epoch;
	a->due = S->now + 1 + rnd_n(800);
	S->n_attempts++;
	trace("node %" PRIu64 " starts an attempt on %s (%s) epoch=%" PRIu64, nd->id, p->qid,
	      p->domain, p->epoch);
	return true;
}

/* Proposes the Outcome of every attempt of nd that is over. */
static void
finish_attempts(struct node *nd)
{
	for (size_t k = 0; k < nd->n_att;) {
		struct attempt *a = &nd->att[k];
		if (a->due > S->now) {
			k++;
			continue;
		}
		struct gen g;
		relay__command__init(&g.cmd);
		gen_outcome_kind(&g, SIM_EPOCH_MS + S->now);
		snprintf(g.qid, sizeof(g.qid), "%s", a->qid);
		memcpy(g.idx, a->idx, a->n * sizeof(a->idx[0]));
		g.out.queue_id = g.qid;
		g.out.rcpt_index = g.idx;
		g.out.n_rcpt_index = a->n;
		g.out.has_epoch = 1;
		g.out.epoch = a->epoch;
		propose_gen(nd, &g, NULL); /* a lost one is the attempt's problem: retried later */
		nd->att[k] = nd->att[--nd->n_att];
	}
}

/* The host side of the ownership core (cluster/ownership.h) on node nd, once per tick: renew the
 * lease, propose itself LIVE, finish a drain, and as leader the DOWN/LIVE/REMOVED verdicts. */
static void
own_host_tick(struct node *nd)
{
	struct own *o = &nd->own;
	uint64_t now = S->now;
	uint64_t since;
	int st = self_state_since(nd, &since);
	struct gen g;
	if (nd->renew_seq && now > nd->renew_deadline) {
		own_renew_done(o, false, now); /* not applied here in time */
		nd->renew_seq = 0;
	}
	if (own_renew_due(o, now)) {
		relay__command__init(&g.cmd);
		gen_renew(nd, &g);
		uint64_t id;
		if (propose_gen(nd, &g, &id) == 0) {
			own_renew_sent(o, now);
			nd->renew_seq = id;
			nd->renew_deadline = now + o->lease_ms;
		}
	}
	if (!nd->up)
		return;
	bool revive = !nd->revived;
	nd->revived = true;
	if (own_self_live_due(o, now, st, revive)) {
		relay__command__init(&g.cmd);
		gen_member_cmd(&g, nd->id, RELAY__MEMBER_STATE__MEMBER_LIVE);
		propose_gen(nd, &g, NULL);
	}
	int d = own_drain_tick(o, now, st, nd->n_att);
	if (d == 2) {
		nd->n_att = 0; /* abandoned */
		d = own_drain_tick(o, now, st, 0);
	}
	if (d == 1) {
		relay__command__init(&g.cmd);
		gen_member_cmd(&g, nd->id, RELAY__MEMBER_STATE__MEMBER_DRAINED);
		/* only if still the DRAINING it judged, as in delivery.c (ownership.h: Drain) */
		g.mem.has_expect_since_index = 1;
		g.mem.expect_since_index = since;
		propose_gen(nd, &g, NULL);
	}
	struct raft_status rs;
	raft_status(nd->r, &rs);
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(nd->fsm, mem, QUEUE_MEMBERS_MAX);
	char names[2 * RAFT_MAX_NODES][QUEUE_NODE_MAX + 1];
	const char *conf[2 * RAFT_MAX_NODES];
	size_t nconf = 0;
	for (uint32_t i = 0; i < rs.conf.n_voters + rs.conf.n_learners; i++) {
		uint64_t id = i < rs.conf.n_voters ? rs.conf.voters[i]
						   : rs.conf.learners[i - rs.conf.n_voters];
		node_name(id, names[nconf]);
		conf[nconf] = names[nconf];
		nconf++;
	}
	struct own_action act[OWN_MAX_ACTIONS];
	size_t na = own_leader_tick(o, now, rs.role == RAFT_LEADER, rs.term, mem, nm, conf, nconf,
				    act, OWN_MAX_ACTIONS);
	for (size_t k = 0; k < na && nd->up; k++) {
		relay__command__init(&g.cmd);
		gen_member_cmd(&g, strtoull(act[k].node + 1, NULL, 10),
			       (Relay__MemberState)act[k].state);
		if (act[k].has_expect) {
			g.mem.has_expect_renew_index = 1;
			g.mem.expect_renew_index = act[k].expect_renew_index;
		}
		trace("node %" PRIu64 " (leader) proposes %s %s", nd->id, act[k].node,
		      member_state_name(act[k].state));
		propose_gen(nd, &g, NULL);
	}
}

/*
 * Was a Member{id, REMOVED} committed at an index in (from, to]?  The leader's ownership core
 * once proposed REMOVED for a node out of the Raft configuration at once, without waiting for
 * its lease to lapse (unlike DOWN), so a removed server that still held a lease could start
 * attempts while the domain's new owner did too (outcomes stay fenced, G4, but a delivery may
 * be duplicated).  It now waits lease + grace after the later of the removal and the member's
 * last Renew (ownership.h); without --strict-lease such overlaps are still only counted
 * (removed_overlaps), CTest makes them fail.
 */
static bool
removed_between(uint64_t id, uint64_t from, uint64_t to)
{
	char want[40];
	snprintf(want, sizeof(want), "member n%" PRIu64 " REMOVED", id);
	for (uint64_t i = from + 1; i <= to; i++)
		if (!strcmp(applied_at(i)->what, want))
			return true;
	return false;
}

/* Lease mode, every unit: no two nodes may start attempts for one domain at the same time
 * (own_may_start over each node's own applied state and lease). */
static void
check_starters(void)
{
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		if (!nd->up || !own_lease_held(&nd->own, S->now))
			continue;
		int st = self_state(nd);
		if (st != QUEUE_MEMBER_LIVE)
			continue;
		char me[QUEUE_NODE_MAX + 1];
		node_name(nd->id, me);
		struct dom_list l = {.n = 0};
		queue_fsm_domains(nd->fsm, dom_list_cb, &l);
		for (size_t j = 0; j < l.n; j++) {
			if (!own_may_start(&nd->own, S->now, st, l.d[j].owner, l.d[j].epoch,
					   l.d[j].epoch))
				continue;
			uint8_t k = dom_index(l.d[j].name);
			S->n_may_start_checks++;
			if (S->starter_at[k] == S->now && S->starter[k] != nd->id) {
				uint64_t e1 = S->starter_epoch[k], e2 = l.d[j].epoch;
				uint64_t hi = e1 > e2 ? e1 : e2;
				uint64_t stale = e1 < e2 ? S->starter[k] : nd->id;
				if (!S->strict_lease &&
				    removed_between(stale, e1 < e2 ? e1 : e2, hi)) {
					/* known gap, counted: see removed_between() */
					S->n_removed_overlaps++;
					continue;
				}
				if (S->dom[k].evicted_at > (e1 < e2 ? e1 : e2) &&
				    S->dom[k].evicted_at <= hi) {
					/* the eviction gap (queue_fsm.h, README "Known gaps"): the
					 * assignment was forgotten and made anew meanwhile; a node
					 * that has not applied that yet may still start under the
					 * old one */
					S->n_evicted_overlaps++;
					continue;
				}
				/* (a domain emptied and accepted again keeps its assignment, idle
				 * in between, so it never has a second owner that way: fatal) */
				fail("lease: nodes %" PRIu64 " (applied %" PRIu64 ", epoch %" PRIu64
				     ") and %" PRIu64 " (applied %" PRIu64 ", epoch %" PRIu64
				     ") may both start attempts for %s; epoch %" PRIu64 " is %s",
				     S->starter[k], S->nodes[S->starter[k]].sm_index, e1, nd->id,
				     nd->sm_index, e2, l.d[j].name, hi, applied_at(hi)->what);
			}
			S->starter[k] = nd->id;
			S->starter_at[k] = S->now;
			S->starter_epoch[k] = l.d[j].epoch;
		}
	}
}

static void
client_actions(void)
{
	if (!S->healing && chance(50000)) {
		struct node *nd = random_up_node();
		struct queue_counts qc;
		if (nd)
			queue_fsm_counts(nd->fsm, &qc);
		if (nd && S->lease_mode &&
		    rnd_n(100) < S->pct_outcome + (qc.messages > SIM_BACKLOG ? 30 : 0)) {
			/* the owners work: the first node from a random one that may start */
			for (int i = 0;
			     i < S->n_ids &&
			     !start_attempt(
				 &S->nodes[1 + (nd->id - 1 + (uint64_t)i) % (uint64_t)S->n_ids]);
			     i++)
				;
		} else if (nd) {
			size_t len;
			uint8_t *buf = gen_command(nd, &len);
			int rv = propose(nd, ++S->next_prop, buf, len);
			free(buf);
			if (rv)
				S->n_refused++;
			else
				S->n_proposed++;
		}
	}
	if (!S->healing && chance(S->transfer_ppm)) {
		struct node *l = leader_node();
		if (l) {
			uint64_t target = 1 + rnd_n((uint64_t)S->n_ids);
			if (raft_transfer_leader(l->r, target) == 0) {
				S->n_transfers++;
				trace("transfer %" PRIu64 " -> %" PRIu64, l->id, target);
				drain(l);
			}
		}
	}
	if (!S->healing && chance(S->conf_ppm)) {
		struct node *l = leader_node();
		if (l) {
			struct raft_status st;
			raft_status(l->r, &st);
			uint64_t id = 1 + rnd_n((uint64_t)S->n_ids);
			int op;
			if (raft_conf_is_voter(&st.conf, id))
				op = st.conf.n_voters > 3 ? RAFT_CONF_REMOVE : -1;
			else if (raft_conf_is_member(&st.conf, id))
				op = rnd_n(2) ? RAFT_CONF_ADD_VOTER : RAFT_CONF_REMOVE;
			else
				op = rnd_n(2) ? RAFT_CONF_ADD_VOTER : RAFT_CONF_ADD_LEARNER;
			if (op >= 0 &&
			    raft_propose_conf(l->r, (enum raft_conf_op)op, id, NULL, NULL) == 0) {
				S->n_conf++;
				trace("conf op=%d id=%" PRIu64 " at leader %" PRIu64, op, id,
				      l->id);
				drain(l);
			}
		}
	}
	if (chance(S->compact_ppm)) {
		struct node *nd = random_up_node();
		if (nd) {
			struct raft_status st;
			raft_status(nd->r, &st);
			/* compacting every 20 entries is a fault-phase stressor; after the heal a
			 * host compacts like cluster_raft (every snapshot_entries), or a slow
			 * snapshot transfer restarted by each compaction never ends */
			uint64_t every = S->healing ? S->heal_compact : 20;
			if (st.applied >= st.snap_index + every &&
			    st.applied <= st.persisted_index && nd->sm_index == st.applied) {
				void *buf;
				size_t len;
				sm_snapshot_encode(nd, &buf, &len);
				if (raft_compact(nd->r, st.applied, buf, len) == 0) {
					/* persisted in the write stream after the apply writes it
					 * covers, like cluster_raft's craft__maybe_snapshot */
					struct pwrite *w = pwrite_new(nd, 0);
					w->compact = true;
					raft_snap_meta(nd->r, &w->snap);
					w->snap_data = buf;
					w->snap_len = len;
					buf = NULL;
					S->n_compactions++;
					trace("node %" PRIu64 " compacted to %" PRIu64
					      " (%zu bytes)",
					      nd->id, w->snap.index, len);
				}
				free(buf);
			}
		}
	}
}

/* ------------------------------------------------------------------ faults */

static void
faults(void)
{
	if (chance(S->crash_ppm)) {
		struct node *nd = rnd_n(100) < S->leader_crash_pct ? leader_node() : NULL;
		if (!nd)
			nd = random_up_node();
		if (nd)
			node_crash(nd, "crash");
	}
	if (chance(S->all_crash_ppm)) {
		for (int i = 1; i <= S->n_ids; i++)
			node_crash(&S->nodes[i], "power cut");
	}
	if (chance(S->part_ppm)) {
		/* symmetric partition: a random subset is cut off from the rest */
		uint64_t until = S->now + 200 + rnd_n(3000);
		uint64_t mask = rnd_n((1ULL << S->n_ids) - 1) + 1;
		for (int i = 1; i <= S->n_ids; i++)
			for (int j = 1; j <= S->n_ids; j++)
				if (((mask >> (i - 1)) & 1) != ((mask >> (j - 1)) & 1))
					S->cut_until[i][j] = until;
		trace("partition mask=%" PRIx64 " until %" PRIu64, mask, until);
	}
	if (chance(S->part_ppm)) {
		/* one-way link failure */
		int a = 1 + (int)rnd_n((uint64_t)S->n_ids), b = 1 + (int)rnd_n((uint64_t)S->n_ids);
		S->cut_until[a][b] = S->now + 200 + rnd_n(3000);
		trace("one-way cut %d->%d", a, b);
	}
	if (chance(S->part_ppm / 2)) {
		memset(S->cut_until, 0, sizeof(S->cut_until));
		trace("network healed");
	}
}

static void
sync_disks(void)
{
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		while (nd->up && nd->d.npw && nd->d.pw[0].due <= S->now) {
			if (!S->healing && chance(S->disk_fail_ppm)) {
				/* the write failed: the node crashes, this write is lost */
				S->n_disk_fail++;
				struct pwrite w = nd->d.pw[0];
				memmove(nd->d.pw, nd->d.pw + 1, (nd->d.npw - 1) * sizeof(w));
				nd->d.npw--;
				pwrite_free(&w);
				/* later writes never reach the disk either */
				for (size_t k = 0; k < nd->d.npw; k++)
					pwrite_free(&nd->d.pw[k]);
				nd->d.npw = 0;
				node_crash(nd, "disk write failed");
				break;
			}
			struct pwrite w = nd->d.pw[0];
			memmove(nd->d.pw, nd->d.pw + 1, (nd->d.npw - 1) * sizeof(w));
			nd->d.npw--;
			disk_apply(nd, &w);
			pwrite_free(&w);
			if (w.seq)
				raft_persisted(nd->r, w.seq);
			drain(nd);
			if (nd->up && !nd->d.npw && chance(20000) &&
			    !store_same(nd->vstore, nd->dstore))
				fail("node %" PRIu64
				     " view store differs from its durable store with "
				     "no write in flight",
				     nd->id);
		}
	}
}

static void
deliver(void)
{
	size_t i = 0;
	while (i < S->n_net) {
		struct inflight *f = &S->net[i];
		if (f->at > S->now) {
			i++;
			continue;
		}
		struct raft_msg m = f->m;
		S->net[i] = S->net[--S->n_net];
		struct node *nd = &S->nodes[m.to];
		if (nd->up && link_ok(m.from, m.to)) {
			trace("recv %s %" PRIu64 "->%" PRIu64 " term=%" PRIu64 " idx=%" PRIu64,
			      raft_msg_type_name(m.type), m.from, m.to, m.term, m.index);
			int rv = raft_step(nd->r, &m);
			if (rv && rv != RAFT_ENOMEM)
				fail("node %" PRIu64 " rejected a well-formed %s: %s", nd->id,
				     raft_msg_type_name(m.type), raft_strerror(rv));
			drain(nd);
		}
		msg_release(&m);
	}
}

static void
step_once(void)
{
	if (!S->healing)
		faults();
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		if (!nd->up && nd->restart_at <= S->now)
			node_start(nd, false);
	}
	deliver();
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		if (nd->up && (S->now + nd->tick_phase) % SIM_TICK == 0) {
			raft_tick(nd->r);
			drain(nd);
			if (S->lease_mode && nd->up)
				own_host_tick(nd);
		}
		if (S->lease_mode && nd->up && nd->n_att)
			finish_attempts(nd);
	}
	sync_disks();
	client_actions();
	for (int i = 1; i <= S->n_ids; i++)
		if (S->nodes[i].up)
			check_node(&S->nodes[i]);
	if (S->lease_mode)
		check_starters();
	if (S->now % SIM_FULL_CHECK_EVERY == 0) {
		struct node *nd = random_up_node();
		if (nd)
			check_fsm_full(nd, "periodic");
	}
}

/* ------------------------------------------------------------------ heal and liveness */

static bool
converged(void)
{
	struct node *l = leader_node();
	if (!l)
		return false;
	struct raft_status ls;
	raft_status(l->r, &ls);
	for (int k = 0; k < SIM_HEAL_PROPOSALS; k++) {
		if (S->heal_done[k])
			continue;
		if (!S->heal_prop_at[k] || S->now - S->heal_prop_at[k] > 3000) {
			/* (re)submit: an earlier attempt may have died with a deposed leader */
			struct gen g;
			relay__command__init(&g.cmd);
			gen_accept(&g);
			size_t len;
			uint8_t *buf = pack_cmd(&g.cmd, &len);
			if (propose(l, SIM_PROP_ID_HEAL | (uint64_t)k, buf, len) == 0)
				S->heal_prop_at[k] = S->now;
			free(buf);
		}
		return false;
	}
	/* Ownership settles: no member is DRAINING and some member is LIVE.  In lease mode the
	 * ownership cores finish a drain (the member's own DRAINED once it applied DRAINING and
	 * has nothing in flight; REMOVED from the leader lease + grace after it left the
	 * configuration): proposing DRAINED for it here would move its domains while it may
	 * still hold its lease without having seen DRAINING (seed 300060: removed from the
	 * configuration just before the DRAINING, so it never applies it).  Otherwise (random
	 * Member commands, no leases) the heal proposes the DRAINED itself.  LIVE for the
	 * leader (an operator's undrain; a node proposes itself only at boot) moves no owned
	 * domain, so it is safe in both modes. */
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(l->fsm, mem, QUEUE_MEMBERS_MAX);
	bool any_live = false;
	const char *draining = NULL;
	for (size_t k = 0; k < nm; k++) {
		any_live |= mem[k].state == QUEUE_MEMBER_LIVE;
		if (mem[k].state == QUEUE_MEMBER_DRAINING)
			draining = mem[k].node;
	}
	if (draining || !any_live) {
		if ((draining == NULL || !S->lease_mode) &&
		    (!S->heal_own_at || S->now - S->heal_own_at > 1000)) {
			struct gen g;
			relay__command__init(&g.cmd);
			if (draining)
				gen_member_cmd(&g, strtoull(draining + 1, NULL, 10),
					       RELAY__MEMBER_STATE__MEMBER_DRAINED);
			else
				gen_member_cmd(&g, l->id, RELAY__MEMBER_STATE__MEMBER_LIVE);
			size_t len;
			uint8_t *buf = pack_cmd(&g.cmd, &len);
			if (propose(l, ++S->next_prop, buf, len) == 0)
				S->heal_own_at = S->now;
			free(buf);
		}
		return false;
	}
	/* Every member applies everything committed by now.  Not "the log is idle": in lease
	 * mode the members renew forever, and with a slow disk the log may never be idle at a
	 * check instant (seed 141); the target is the commit index when ownership settled. */
	if (!S->heal_target)
		S->heal_target = ls.commit;
	for (uint32_t i = 0; i < ls.conf.n_voters + ls.conf.n_learners; i++) {
		uint64_t id = i < ls.conf.n_voters ? ls.conf.voters[i]
						   : ls.conf.learners[i - ls.conf.n_voters];
		struct node *nd = &S->nodes[id];
		if (!nd->up || nd->sm_index < S->heal_target)
			return false;
	}
	return true;
}

/*
 * The time one snapshot transfer may take after the heal, on top of SIM_HEAL_BUDGET: the core
 * streams a snapshot in chunks of at most max_msg_bytes, one in flight per follower (raft.h),
 * and after the heal no message is lost and each takes at most delay_max units, so a follower
 * that needs the leader's snapshot waits up to ceil(len / max_msg_bytes) round trips of
 * 2 * delay_max.  Taken over the largest snapshot any node holds and the smallest
 * max_msg_bytes, and never lowered.  (The sim streams the queue itself through the core to
 * exercise the chunking; the host's Raft snapshot is a small descriptor and the queue comes
 * in CRAFT_SNAP_CHUNK_BYTES fetch chunks.  Seed 300169: a 53,726-byte snapshot in 67-byte
 * chunks, ~800 round trips of ~26 units, overran a fixed budget while making progress.)  A
 * transfer that never finishes still fails (checked by making leader_handle_snap_resp in
 * cluster/raft.c restart every transfer half way: every seed fails at this deadline).
 */
static uint64_t
heal_transfer_units(void)
{
	size_t len = 0, chunk = SIZE_MAX;
	for (int i = 1; i <= S->n_ids; i++) {
		const struct node *nd = &S->nodes[i];
		if (nd->d.snap_len > len)
			len = nd->d.snap_len;
		if (nd->r && nd->cfg.max_msg_bytes && nd->cfg.max_msg_bytes < chunk)
			chunk = nd->cfg.max_msg_bytes;
	}
	if (chunk == SIZE_MAX)
		return S->heal_transfer;
	uint64_t units = (uint64_t)((len + chunk - 1) / chunk) * 2 * S->delay_max;
	if (units > S->heal_transfer)
		S->heal_transfer = units;
	return S->heal_transfer;
}

/* The operator shuts a removed server down once its removal is committed (thesis 4.2.3):
 * without pre-vote or check-quorum one that never learnt of its removal disrupts every leader
 * with a higher term, forever.  A node that a later committed configuration holds again
 * comes back.  Not the latest configuration of the leader: it may be uncommitted, and the
 * leader a stale one of an older term (seed 412063 with --prevote 0 --check-quorum 0: at the
 * heal the stale leader n4's uncommitted {4,5,6} shut n2 and n3 down while the committed
 * configuration needed them, and no majority was left for ever). */
static void
shut_down_removed(void)
{
	if (S->committed_conf_index == 0)
		return;
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		bool member = raft_conf_is_member(&S->committed_conf, nd->id);
		if (!member && nd->up) {
			node_crash(nd, "removed: shut down");
			nd->restart_at = UINT64_MAX;
		} else if (member && !nd->up && nd->restart_at == UINT64_MAX) {
			nd->restart_at = S->now;
		}
	}
}

static void
sim_free(void)
{
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *nd = &S->nodes[i];
		raft_free(nd->r);
		for (size_t k = 0; k < nd->d.npw; k++)
			pwrite_free(&nd->d.pw[k]);
		free(nd->d.pw);
		ents_free(nd->d.ents, nd->d.n);
		free(nd->d.ents);
		free(nd->d.snap_data);
		queue_fsm_free(nd->fsm);
		if (nd->vstore)
			store_free(nd->vstore);
		if (nd->dstore)
			store_free(nd->dstore);
	}
	for (size_t k = 0; k < S->n_mq; k++) {
		free(S->mq_all[k]->iv);
		free(S->mq_all[k]);
	}
	free(S->mq_all);
	for (int k = 0; k < SIM_RECENT; k++)
		free(S->recent[k].buf);
	for (size_t i = 0; i < S->n_net; i++)
		msg_release(&S->net[i].m);
	free(S->net);
	free(S->leader_of_term.v);
	free(S->committed_term.v);
	free(S->committed_seen_term.v);
	free(S->applied);
	free(S->prop_index.v);
	free(S->emap.s);
	free(S);
	S = NULL;
}

struct run_opts {
	uint64_t seed;
	int nodes;
	uint64_t steps;
	bool trace;
	bool verbose;
	int pre_vote, check_quorum; /* -1: chosen per seed */
	bool strict_lease;
	uint64_t heal_compact; /* 0: SIM_HEAL_COMPACT */
	size_t idle_max;       /* eviction mode: the idle bound of every FSM (0: the default) */
};

static int
sim_run(const struct run_opts *o)
{
	S = calloc(1, sizeof(*S));
	S->seed = o->seed;
	g_rng = o->seed;
	S->n_nodes = o->nodes;
	S->n_ids = o->nodes + 1;
	S->steps = o->steps;
	S->fault_end = o->steps;
	S->trace = o->trace;
	S->strict_lease = o->strict_lease;
	S->idle_max = o->idle_max;
	S->heal_compact = o->heal_compact ? o->heal_compact : SIM_HEAL_COMPACT;
	S->net = calloc(SIM_NET_MAX, sizeof(*S->net));
	/* fault knobs for this seed */
	S->drop_ppm = (uint32_t)rnd_n(100000);
	S->dup_ppm = (uint32_t)rnd_n(50000);
	S->long_delay_ppm = (uint32_t)rnd_n(20000);
	S->disk_fail_ppm = (uint32_t)rnd_n(3000);
	S->crash_ppm = 100 + (uint32_t)rnd_n(400);
	S->part_ppm = 100 + (uint32_t)rnd_n(400);
	S->delay_max = 2 + (unsigned)rnd_n(30);
	S->sync_max = 1 + (unsigned)rnd_n(20);
	S->conf_ppm = 100 + (uint32_t)rnd_n(400);
	S->transfer_ppm = 100 + (uint32_t)rnd_n(300);
	S->compact_ppm = 500 + (uint32_t)rnd_n(3000);
	if (rnd_n(4) == 0) {
		/* a membership-heavy profile */
		S->conf_ppm = 2000 + (uint32_t)rnd_n(20000);
		S->transfer_ppm = 1000 + (uint32_t)rnd_n(5000);
	}
	S->leader_crash_pct = (unsigned)rnd_n(60);
	S->all_crash_ppm = (uint32_t)rnd_n(60);
	if (rnd_n(3) == 0) {
		/* a hard profile: much more churn, slow disks */
		S->crash_ppm = 1000 + (uint32_t)rnd_n(3000);
		S->part_ppm = 500 + (uint32_t)rnd_n(2000);
		S->sync_max = 1 + (unsigned)rnd_n(120);
		S->all_crash_ppm = (uint32_t)rnd_n(300);
	}
	S->pre_vote = rnd_n(5) != 0;
	S->check_quorum = rnd_n(5) != 0 || !S->pre_vote;
	S->election_tick = 10;
	S->heartbeat_tick = 1;
	if (rnd_n(4) == 0) {
		S->election_tick = 5 + (unsigned)rnd_n(16);
		S->heartbeat_tick = 1 + (unsigned)rnd_n(S->election_tick / 4);
	}
	S->pct_outcome = 40 + (unsigned)rnd_n(26);
	S->pct_delete = 2 + (unsigned)rnd_n(12);
	S->pct_repeat = 2 + (unsigned)rnd_n(9);
	S->pct_member = 1 + (unsigned)rnd_n(4);
	S->pct_renew = 1 + (unsigned)rnd_n(5);
	S->pct_hold = 1 + (unsigned)rnd_n(3);
	S->lease_mode = rnd_n(2);
	S->lease_ms = 1000 + rnd_n(4000);
	if (S->lease_mode) {
		S->pct_renew = 0; /* the cores renew */
		S->pct_member = 1;
	}
	if (o->pre_vote >= 0)
		S->pre_vote = o->pre_vote;
	if (o->check_quorum >= 0)
		S->check_quorum = o->check_quorum;
	trace("knobs election_tick=%u heartbeat_tick=%u delay_max=%u sync_max=%u pre_vote=%d "
	      "check_quorum=%d lease_mode=%d crash_ppm=%u part_ppm=%u",
	      S->election_tick, S->heartbeat_tick, S->delay_max, S->sync_max, S->pre_vote,
	      S->check_quorum, S->lease_mode, S->crash_ppm, S->part_ppm);

	if (setjmp(g_fail_jmp)) {
		char forced[128] = "";
		char hc[48] = "";
		if (o->heal_compact)
			snprintf(hc, sizeof(hc), " --heal-compact %" PRIu64, o->heal_compact);
		if (o->idle_max)
			snprintf(hc + strlen(hc), sizeof(hc) - strlen(hc), " --idle-max %zu",
				 o->idle_max);
		if (o->pre_vote >= 0 || o->check_quorum >= 0 || o->strict_lease || hc[0])
			snprintf(forced, sizeof(forced), "%s%s%s%s%s",
				 o->pre_vote >= 0 ? (o->pre_vote ? " --prevote 1" : " --prevote 0")
						  : "",
				 o->check_quorum >= 0 ? " --check-quorum " : "",
				 o->check_quorum >= 0 ? (o->check_quorum ? "1" : "0") : "",
				 o->strict_lease ? " --strict-lease" : "", hc);
		printf("FAIL raft_sim --seed %" PRIu64 " --nodes %d --steps %" PRIu64
		       "%s   # t=%" PRIu64 ": %s\n",
		       o->seed, o->nodes, o->steps, forced, S->now, g_fail_msg);
		fflush(stdout);
		return 1; /* state is leaked on purpose: the process is about to report */
	}
	{
		/* index 0: the empty queue */
		struct store *st = store_new_mem();
		struct queue_fsm *q;
		if (queue_fsm_new(st, &q))
			fail("queue_fsm_new on an empty store failed");
		if (S->idle_max)
			queue_fsm_test_idle_max(q, S->idle_max);
		struct applied_rec *ar = applied_at(0);
		ar->set = 1;
		ar->digest = queue_fsm_digest(q);
		queue_fsm_free(q);
		store_free(st);
	}
	for (int i = 1; i <= S->n_ids; i++) {
		S->nodes[i].id = (uint64_t)i;
		S->nodes[i].dstore = store_new_mem();
		if (i <= S->n_nodes) {
			node_start(&S->nodes[i], true);
		} else {
			node_start(&S->nodes[i], false); /* spare: empty configuration */
		}
	}
	for (S->now = 1; S->now <= S->fault_end; S->now++)
		step_once();

	/* heal: every fault stops, every node comes back */
	S->healing = true;
	memset(S->cut_until, 0, sizeof(S->cut_until));
	for (int i = 1; i <= S->n_ids; i++)
		if (!S->nodes[i].up)
			S->nodes[i].restart_at = S->now;
	uint64_t budget = SIM_HEAL_BUDGET * (S->election_tick > 10 ? S->election_tick : 10) / 10;
	uint64_t deadline = S->now + budget;
	bool ok = false;
	for (; S->now <= deadline + heal_transfer_units(); S->now++) {
		step_once();
		if (S->now % 10 == 0 && !S->pre_vote && !S->check_quorum)
			shut_down_removed();
		if (S->now % 10 == 0 && converged()) {
			ok = true;
			break;
		}
	}
	if (!ok) {
		struct node *l = leader_node();
		char st[256] = "", *p = st;
		for (int i = 1; i <= S->n_ids && p < st + sizeof(st) - 48; i++) {
			struct node *nd = &S->nodes[i];
			struct raft_status rs = {0};
			if (nd->up)
				raft_status(nd->r, &rs);
			p += snprintf(
			    p, (size_t)(st + sizeof(st) - p),
			    " n%d:%s t%" PRIu64 " c%" PRIu64 " a%" PRIu64 " p%" PRIu64 " w%zu", i,
			    !nd->up		     ? "down"
			    : rs.role == RAFT_LEADER ? "L"
						     : "F",
			    rs.term, rs.commit, nd->sm_index, rs.persisted_index, nd->d.npw);
		}
		fail("liveness: no convergence %" PRIu64 " units after heal (%" PRIu64 " + %" PRIu64
		     " for a snapshot transfer; leader %" PRIu64 ");%s",
		     budget + S->heal_transfer, budget, S->heal_transfer, l ? l->id : 0, st);
	}
	/* durability: every proposal ever applied is committed at its index in the final log */
	struct node *l = leader_node();
	struct raft_status ls;
	raft_status(l->r, &ls);
	for (size_t id = 1; id < S->prop_index.n; id++) {
		uint64_t at = vec_get(&S->prop_index, id);
		if (at && at - 1 > ls.commit)
			fail("proposal %zu applied at %" PRIu64 " but final commit is %" PRIu64, id,
			     at - 1, ls.commit);
	}
	/* every live node holds exactly what the committed log has queued */
	for (int i = 1; i <= S->n_ids; i++)
		if (S->nodes[i].up) {
			check_fsm_full(&S->nodes[i], "after heal");
			if (S->nodes[i].sm_index == ls.commit) /* members; not a removed node */
				check_owned_by_live(&S->nodes[i]);
		}
	if (o->verbose)
		printf("ok seed=%" PRIu64 " nodes=%d steps=%" PRIu64 " heal=%" PRIu64
		       " commit=%" PRIu64 " term=%" PRIu64 " proposed=%" PRIu64 " applied=%" PRIu64
		       " refused=%" PRIu64 " elections=%" PRIu64 " crashes=%" PRIu64
		       " diskfail=%" PRIu64 " conf=%" PRIu64 " transfers=%" PRIu64
		       " compactions=%" PRIu64 " snapinstalls=%" PRIu64 " msgs=%" PRIu64
		       " prevote=%d cq=%d accepts=%" PRIu64 " outcomes=%" PRIu64 " deletes=%" PRIu64
		       " rejected=%" PRIu64 " queue_max=%" PRIu64 " members=%" PRIu64
		       " renews=%" PRIu64 " fenced=%" PRIu64 " reassigned=%" PRIu64 "\n",
		       o->seed, o->nodes, o->steps, S->now - S->fault_end, ls.commit, ls.term,
		       S->n_proposed, S->n_applied, S->n_refused, S->n_elections, S->n_crashes,
		       S->n_disk_fail, S->n_conf, S->n_transfers, S->n_compactions,
		       S->n_snap_installs, S->n_msgs, S->pre_vote, S->check_quorum, S->n_cmd[0],
		       S->n_cmd[1], S->n_cmd[2], S->n_cmd[3], S->queue_max, S->n_member_cmds,
		       S->n_renews, S->n_fenced, S->n_reassigned);
	g_tot.runs++;
	g_tot.steps += S->now;
	g_tot.applied += S->n_applied;
	g_tot.elections += S->n_elections;
	g_tot.crashes += S->n_crashes;
	g_tot.disk_fail += S->n_disk_fail;
	g_tot.conf += S->n_conf;
	g_tot.transfers += S->n_transfers;
	g_tot.timeout_now += S->n_timeout_now;
	g_tot.compactions += S->n_compactions;
	g_tot.snap_installs += S->n_snap_installs;
	g_tot.snap_chunks += S->n_snap_chunks;
	g_tot.sm_resumes += S->n_sm_resumes;
	g_tot.msgs += S->n_msgs;
	for (int k = 0; k < 4; k++)
		g_tot.cmd[k] += S->n_cmd[k];
	g_tot.full_checks += S->n_full_checks;
	g_tot.members += S->n_member_cmds;
	g_tot.renews += S->n_renews;
	g_tot.fenced += S->n_fenced;
	g_tot.reassigned += S->n_reassigned;
	g_tot.attempts += S->n_attempts;
	g_tot.lease_runs += S->lease_mode;
	g_tot.may_start += S->n_may_start_checks;
	g_tot.removed_overlaps += S->n_removed_overlaps;
	g_tot.renews_refused += S->n_renews_refused;
	g_tot.evicted += S->n_evicted;
	g_tot.evicted_overlaps += S->n_evicted_overlaps;
	g_tot.defers += S->n_defers;
	if (S->queue_max > g_tot.queue_max)
		g_tot.queue_max = S->queue_max;
	if (S->now - S->fault_end > g_tot.heal_max)
		g_tot.heal_max = S->now - S->fault_end;
	sim_free();
	return 0;
}

/* ------------------------------------------------------------------ main */

static int
run_regress(const char *path, bool verbose)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		return 2;
	}
	char line[256];
	int bad = 0, n = 0;
	while (fgets(line, sizeof(line), f)) {
		struct run_opts o = {.nodes = 3,
				     .steps = 20000,
				     .verbose = verbose,
				     .pre_vote = -1,
				     .check_quorum = -1};
		unsigned long long seed, steps;
		int nodes, pv = -1, cq = -1;
		if (line[0] == '#' || line[0] == '\n')
			continue;
		/* seed nodes steps [prevote check_quorum]: the last two force the setting */
		if (sscanf(line, "%llu %d %llu %d %d", &seed, &nodes, &steps, &pv, &cq) < 3)
			continue;
		o.seed = seed;
		o.nodes = nodes;
		o.steps = steps;
		o.pre_vote = pv;
		o.check_quorum = cq;
		n++;
		bad += sim_run(&o) != 0;
	}
	fclose(f);
	printf("regressions: %d run, %d failed\n", n, bad);
	return bad ? 1 : 0;
}

int
main(int argc, char **argv)
{
	struct run_opts o = {.seed = 1,
			     .nodes = 3,
			     .steps = 20000,
			     .verbose = true,
			     .pre_vote = -1,
			     .check_quorum = -1};
	uint64_t seed_from = 0, seed_to = 0;
	bool range = false;
	const char *regress = NULL;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--seed") && v) {
			o.seed = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--seeds") && v) {
			char *colon;
			seed_from = strtoull(v, &colon, 0);
			seed_to = *colon == ':' ? strtoull(colon + 1, NULL, 0) : seed_from + 1;
			range = true;
			i++;
		} else if (!strcmp(a, "--nodes") && v) {
			o.nodes = atoi(v);
			i++;
		} else if (!strcmp(a, "--steps") && v) {
			o.steps = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--long")) {
			o.steps = 2000000;
		} else if (!strcmp(a, "--trace")) {
			o.trace = true;
		} else if (!strcmp(a, "--prevote") && v) {
			o.pre_vote = atoi(v);
			i++;
		} else if (!strcmp(a, "--check-quorum") && v) {
			o.check_quorum = atoi(v);
			i++;
		} else if (!strcmp(a, "--heal-compact") && v) {
			o.heal_compact = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--strict-lease")) {
			o.strict_lease = true;
		} else if (!strcmp(a, "--idle-max") && v) {
			o.idle_max = strtoull(v, NULL, 0);
			if (o.idle_max < 1 || o.idle_max > QUEUE_IDLE_DOMAINS_MAX) {
				fprintf(stderr, "--idle-max: 1..%u\n", QUEUE_IDLE_DOMAINS_MAX);
				return 2;
			}
			i++;
		} else if (!strcmp(a, "--quiet")) {
			o.verbose = false;
		} else if (!strcmp(a, "--regress") && v) {
			regress = v;
			i++;
		} else {
			fprintf(
			    stderr,
			    "usage: raft_sim [--seed S | --seeds A:B] [--nodes N] [--steps K] "
			    "[--long] [--trace] [--quiet] [--regress FILE] "
			    "[--prevote 0|1] [--check-quorum 0|1] [--strict-lease] [--idle-max N] "
			    "[--heal-compact N]\n");
			return 2;
		}
	}
	if (o.nodes < 1 || o.nodes >= SIM_MAX_NODES) {
		fprintf(stderr, "--nodes must be 1..%d\n", SIM_MAX_NODES - 1);
		return 2;
	}
	if (regress)
		return run_regress(regress, o.verbose);
	if (!range) {
		seed_from = o.seed;
		seed_to = o.seed + 1;
	}
	int bad = 0;
	clock_t c0 = clock();
	for (uint64_t s = seed_from; s < seed_to; s++) {
		o.seed = s;
		bad += sim_run(&o) != 0;
	}
	printf("seeds %" PRIu64 "..%" PRIu64 " nodes=%d steps=%" PRIu64 ": %d failed (%.1fs cpu)\n",
	       seed_from, seed_to - 1, o.nodes, o.steps, bad,
	       (double)(clock() - c0) / CLOCKS_PER_SEC);
	printf("totals: runs=%" PRIu64 " sim_units=%" PRIu64 " applied_proposals=%" PRIu64
	       " leaders=%" PRIu64 " crashes=%" PRIu64 " disk_failures=%" PRIu64
	       " conf_changes=%" PRIu64 " transfers=%" PRIu64 " timeout_now=%" PRIu64
	       " compactions=%" PRIu64 " snapshot_installs=%" PRIu64 " later_chunks=%" PRIu64
	       " sm_resumes=%" PRIu64 " msgs=%" PRIu64 " max_heal_units=%" PRIu64 "\n",
	       g_tot.runs, g_tot.steps, g_tot.applied, g_tot.elections, g_tot.crashes,
	       g_tot.disk_fail, g_tot.conf, g_tot.transfers, g_tot.timeout_now, g_tot.compactions,
	       g_tot.snap_installs, g_tot.snap_chunks, g_tot.sm_resumes, g_tot.msgs,
	       g_tot.heal_max);
	printf("queue: accepts=%" PRIu64 " outcomes=%" PRIu64 " deletes=%" PRIu64
	       " rejected=%" PRIu64 " full_checks=%" PRIu64 " queue_max=%" PRIu64 "\n",
	       g_tot.cmd[0], g_tot.cmd[1], g_tot.cmd[2], g_tot.cmd[3], g_tot.full_checks,
	       g_tot.queue_max);
	printf("ownership: member_cmds=%" PRIu64 " renews=%" PRIu64 " fenced_rcpts=%" PRIu64
	       " reassigned=%" PRIu64 " lease_mode_runs=%" PRIu64 " attempts=%" PRIu64
	       " may_start_checks=%" PRIu64 " removed_overlaps=%" PRIu64 " defers=%" PRIu64
	       " evicted=%" PRIu64 " evicted_overlaps=%" PRIu64 " renews_refused=%" PRIu64 "\n",
	       g_tot.members, g_tot.renews, g_tot.fenced, g_tot.reassigned, g_tot.lease_runs,
	       g_tot.attempts, g_tot.may_start, g_tot.removed_overlaps, g_tot.defers, g_tot.evicted,
	       g_tot.evicted_overlaps, g_tot.renews_refused);
	return bad ? 1 : 0;
}
