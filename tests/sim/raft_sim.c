/*
 * raft_sim.c - deterministic simulator for the Raft core (cluster/raft.c).
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
 * heartbeat ticks, and per node the flow-control bounds and whether its host keeps the state
 * machine on disk (it then resumes from it with raft_set_applied after a restart).
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
 *   state machine safety every node applies the same entry at each index (hash chain),
 *   durability          a proposal applied anywhere is committed in the final log and
 *                       applied by every member after the heal; a saved state machine is
 *                       never past its durable log,
 *   snapshots           installed snapshot data is byte-exact (self-checking padding),
 *   bounds              messages respect max_msg_entries/max_msg_bytes; followers never
 *                       accept proposals; no node rejects a well-formed message.
 *
 * The state machine is a hash chain; the consensus issue replaces it with the queue FSM by
 * swapping sm_apply/sm_snapshot_encode/sm_restore.
 *
 * Usage: raft_sim [--seed S | --seeds A:B] [--nodes N] [--steps K] [--long] [--trace]
 *                 [--quiet] [--regress FILE] [--prevote 0|1] [--check-quorum 0|1]
 * (--prevote/--check-quorum force a setting; by default each seed picks, at least one on.
 * --long is 2,000,000 steps per seed.)
 */
#include "raft.h"

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
#define SIM_SNAP_MAX 4096 /* snapshot data: 16 bytes of state + padding */
#define SIM_PROP_ID_HEAL (1ULL << 62)

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

struct pwrite {
	uint64_t seq, due;
	bool has_hs;
	struct raft_hard_state hs;
	bool has_snap;
	struct raft_snap_meta snap;
	void *snap_data;
	size_t snap_len;
	struct raft_entry *ents;
	size_t n;
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

struct node {
	uint64_t id;
	bool up;
	struct raft *r;
	struct disk d;
	uint64_t restart_at;
	uint64_t sm_index, sm_hash;   /* the state machine: a hash chain of applied entries */
	uint64_t dsm_index, dsm_hash; /* the state machine as last saved to disk by the host */
	bool durable_sm;	      /* this node's host keeps its state machine on disk */
	uint64_t tick_phase;
	uint64_t seen_commit;
	uint64_t lc_term, lc_checked;
	struct raft_config cfg;
};

struct inflight {
	uint64_t at;
	struct raft_msg m;
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
	/* oracles */
	struct u64vec leader_of_term;
	struct u64vec committed_term;
	struct u64vec committed_seen_term; /* term of the first node seen to commit it */
	struct u64vec applied_hash;
	struct u64vec prop_index; /* proposal id -> index where it was applied (+1) */
	struct emap emap;
	uint64_t commit_max;
	uint64_t next_prop;
	/* heal phase */
	uint64_t heal_prop_at[SIM_HEAL_PROPOSALS];
	bool heal_done[SIM_HEAL_PROPOSALS];
	/* stats */
	uint64_t n_proposed, n_refused, n_applied, n_elections, n_crashes, n_snap_installs,
	    n_compactions, n_conf, n_transfers, n_disk_fail, n_msgs, n_timeout_now, n_snap_chunks,
	    n_sm_resumes;
};

/* totals over the seeds run by this process */
static struct {
	uint64_t runs, steps, applied, elections, crashes, disk_fail, conf, transfers, timeout_now,
	    compactions, snap_installs, snap_chunks, sm_resumes, msgs, heal_max;
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
}

static void
pwrite_free(struct pwrite *w)
{
	ents_free(w->ents, w->n);
	free(w->ents);
	free(w->snap_data);
}

/* ------------------------------------------------------------------ state machine */

/* padding is a function of the state, so a corrupted or misassembled snapshot is caught */
static uint8_t
snap_pad_byte(uint64_t hash, size_t i)
{
	return (uint8_t)((hash >> (8 * (i % 8))) ^ (i * 131));
}

static void
sm_snapshot_encode(struct node *nd, uint8_t *buf, size_t *len)
{
	memcpy(buf, &nd->sm_index, 8);
	memcpy(buf + 8, &nd->sm_hash, 8);
	size_t pad = rnd_n(SIM_SNAP_MAX - 16); /* big enough to need several chunks */
	for (size_t i = 0; i < pad; i++)
		buf[16 + i] = snap_pad_byte(nd->sm_hash, i);
	*len = 16 + pad;
}

static void
sm_restore(struct node *nd, const void *data, size_t len, uint64_t index)
{
	if (index == 0) {
		nd->sm_index = 0;
		nd->sm_hash = 0;
		return;
	}
	if (len < 16)
		fail("node %" PRIu64 " snapshot data too short (%zu)", nd->id, len);
	memcpy(&nd->sm_index, data, 8);
	memcpy(&nd->sm_hash, (const uint8_t *)data + 8, 8);
	for (size_t i = 16; i < len; i++)
		if (((const uint8_t *)data)[i] != snap_pad_byte(nd->sm_hash, i - 16))
			fail("node %" PRIu64 " snapshot data corrupted at byte %zu of %zu", nd->id,
			     i, len);
	if (nd->sm_index != index)
		fail("node %" PRIu64 " snapshot data index %" PRIu64 " != meta %" PRIu64, nd->id,
		     nd->sm_index, index);
	uint64_t h = vec_get(&S->applied_hash, index);
	if (h && h != nd->sm_hash)
		fail("node %" PRIu64 " snapshot state at %" PRIu64 " differs from applied history",
		     nd->id, index);
}

static void
sm_apply(struct node *nd, const struct raft_entry *e)
{
	if (e->index != nd->sm_index + 1)
		fail("node %" PRIu64 " applies index %" PRIu64 " after %" PRIu64, nd->id, e->index,
		     nd->sm_index);
	uint64_t eh = entry_hash(e);
	uint64_t h = fnv(nd->sm_hash, &e->index, 8);
	h = fnv(h, &e->term, 8);
	h = fnv(h, &eh, 8);
	nd->sm_hash = h;
	nd->sm_index = e->index;
	uint64_t g = vec_get(&S->applied_hash, e->index);
	if (!g)
		vec_set(&S->applied_hash, e->index, h);
	else if (g != h)
		fail("state machine safety: node %" PRIu64 " applied a different entry at %" PRIu64,
		     nd->id, e->index);
	if (e->type == RAFT_ENTRY_NORMAL && e->len >= 8) {
		uint64_t id;
		memcpy(&id, e->data, 8);
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
	    .max_msg_bytes = 64 + rnd_n(2048),
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
	int rv;
	if (bootstrap) {
		struct raft_conf conf = {0};
		for (int i = 1; i <= S->n_nodes; i++)
			conf.voters[conf.n_voters++] = (uint64_t)i;
		rv = raft_bootstrap(nd->r, &conf);
		nd->sm_index = nd->sm_hash = 0;
	} else {
		for (size_t k = 0; k < nd->d.n; k++)
			if (nd->d.ents[k].index != nd->d.snap.index + 1 + k)
				fail("node %" PRIu64 " disk entry %zu has index %" PRIu64
				     " after snapshot %" PRIu64,
				     nd->id, k, nd->d.ents[k].index, nd->d.snap.index);
		rv = raft_restore(nd->r, &nd->d.hs, &nd->d.snap, nd->d.snap_data, nd->d.snap_len,
				  nd->d.ents, nd->d.n);
		sm_restore(nd, nd->d.snap_data, nd->d.snap_len, nd->d.snap.index);
		struct raft_status st;
		raft_status(nd->r, &st);
		if (rv == 0 && nd->durable_sm && nd->dsm_index > st.snap_index) {
			/* applied entries were durable: the saved state cannot be past the log */
			if (nd->dsm_index > st.last_index)
				fail("node %" PRIu64 " saved state machine at %" PRIu64
				     " is past its durable log %" PRIu64,
				     nd->id, nd->dsm_index, st.last_index);
			/* the saved state machine is newer than the snapshot: resume from it */
			rv = raft_set_applied(nd->r, nd->dsm_index);
			S->n_sm_resumes++;
			nd->sm_index = nd->dsm_index;
			nd->sm_hash = nd->dsm_hash;
		}
	}
	if (rv)
		fail("node %" PRIu64 " restore: %s", nd->id, raft_strerror(rv));
	nd->up = true;
	nd->tick_phase = rnd_n(SIM_TICK);
	nd->seen_commit = nd->d.snap.index;
	nd->lc_term = 0;
	nd->d.last_due = S->now;
	trace("node %" PRIu64 " start term=%" PRIu64 " snap=%" PRIu64 " ents=%zu", nd->id,
	      nd->d.hs.term, nd->d.snap.index, nd->d.n);
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
		if (rd.need_persist) {
			check_log_entries(nd, rd.entries, rd.n_entries);
			struct disk *d = &nd->d;
			if (d->npw == d->pwcap) {
				d->pwcap = d->pwcap ? d->pwcap * 2 : 16;
				d->pw = realloc(d->pw, d->pwcap * sizeof(*d->pw));
			}
			struct pwrite *w = &d->pw[d->npw++];
			memset(w, 0, sizeof(*w));
			w->seq = rd.seq;
			uint64_t due = S->now + 1 + rnd_n(S->sync_max);
			if (due < d->last_due)
				due = d->last_due;
			d->last_due = w->due = due;
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
		}
		for (size_t i = 0; i < rd.n_msgs; i++) {
			trace("send %s %" PRIu64 "->%" PRIu64 " term=%" PRIu64 " idx=%" PRIu64
			      " lt=%" PRIu64 " n=%u commit=%" PRIu64 " rej=%d",
			      raft_msg_type_name(rd.msgs[i].type), rd.msgs[i].from, rd.msgs[i].to,
			      rd.msgs[i].term, rd.msgs[i].index, rd.msgs[i].log_term,
			      rd.msgs[i].n_entries, rd.msgs[i].commit, rd.msgs[i].reject);
			check_msg_bounds(nd, &rd.msgs[i]);
			net_send(&rd.msgs[i]);
		}
		if (rd.snap) {
			S->n_snap_installs++;
			trace("node %" PRIu64 " installs snapshot %" PRIu64, nd->id,
			      rd.snap->index);
			sm_restore(nd, rd.snap_data, rd.snap_len, rd.snap->index);
		}
		for (size_t i = 0; i < rd.n_committed; i++)
			sm_apply(nd, &rd.committed[i]);
		/* saved after applying entries (durable by contract), never on a bare snapshot
		 * whose write may still be in flight */
		if (nd->durable_sm && rd.n_committed && rnd_n(2)) {
			nd->dsm_index = nd->sm_index;
			nd->dsm_hash = nd->sm_hash;
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

static int
propose(struct node *nd, uint64_t id)
{
	uint8_t buf[64];
	size_t len = 8 + rnd_n(sizeof(buf) - 8);
	memcpy(buf, &id, 8);
	for (size_t i = 8; i < len; i++)
		buf[i] = (uint8_t)rnd();
	uint64_t idx, term;
	struct raft_status st0;
	raft_status(nd->r, &st0);
	int rv = raft_propose(nd->r, buf, len, &idx, &term);
	if (rv == 0 && st0.role != RAFT_LEADER)
		fail("node %" PRIu64 " accepted a proposal while not leader", nd->id);
	if (rv == RAFT_ENOTLEADER) {
		/* the follower refuses; the host forwards to the leader it knows */
		struct raft_status st;
		raft_status(nd->r, &st);
		if (st.lead && st.lead != nd->id && S->nodes[st.lead].up &&
		    link_ok(nd->id, st.lead)) {
			nd = &S->nodes[st.lead];
			rv = raft_propose(nd->r, buf, len, &idx, &term);
		}
	}
	if (rv == 0) {
		trace("node %" PRIu64 " proposed id=%" PRIx64 " at %" PRIu64 "/%" PRIu64, nd->id,
		      id, idx, term);
		drain(nd);
	}
	return rv;
}

static void
client_actions(void)
{
	if (!S->healing && chance(50000)) {
		struct node *nd = random_up_node();
		if (nd) {
			int rv = propose(nd, ++S->next_prop);
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
			if (st.applied >= st.snap_index + 20 && st.applied <= st.persisted_index &&
			    nd->sm_index == st.applied) {
				uint8_t buf[SIM_SNAP_MAX];
				size_t len;
				sm_snapshot_encode(nd, buf, &len);
				if (raft_compact(nd->r, st.applied, buf, len) == 0) {
					struct raft_snap_meta m;
					raft_snap_meta(nd->r, &m);
					disk_drop_upto(&nd->d, m.index);
					disk_set_snap(&nd->d, &m, buf, len);
					S->n_compactions++;
					trace("node %" PRIu64 " compacted to %" PRIu64, nd->id,
					      m.index);
				}
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
			raft_persisted(nd->r, w.seq);
			drain(nd);
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
		}
	}
	sync_disks();
	client_actions();
	for (int i = 1; i <= S->n_ids; i++)
		if (S->nodes[i].up)
			check_node(&S->nodes[i]);
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
			if (propose(l, SIM_PROP_ID_HEAL | (uint64_t)k) == 0)
				S->heal_prop_at[k] = S->now;
		}
		return false;
	}
	for (uint32_t i = 0; i < ls.conf.n_voters + ls.conf.n_learners; i++) {
		uint64_t id = i < ls.conf.n_voters ? ls.conf.voters[i]
						   : ls.conf.learners[i - ls.conf.n_voters];
		struct node *nd = &S->nodes[id];
		if (!nd->up || nd->sm_index != ls.commit)
			return false;
	}
	return ls.commit == ls.last_index;
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
	}
	for (size_t i = 0; i < S->n_net; i++)
		msg_release(&S->net[i].m);
	free(S->net);
	free(S->leader_of_term.v);
	free(S->committed_term.v);
	free(S->committed_seen_term.v);
	free(S->applied_hash.v);
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
	if (o->pre_vote >= 0)
		S->pre_vote = o->pre_vote;
	if (o->check_quorum >= 0)
		S->check_quorum = o->check_quorum;

	if (setjmp(g_fail_jmp)) {
		printf("FAIL raft_sim --seed %" PRIu64 " --nodes %d --steps %" PRIu64
		       "   # t=%" PRIu64 ": %s\n",
		       o->seed, o->nodes, o->steps, S->now, g_fail_msg);
		fflush(stdout);
		return 1; /* state is leaked on purpose: the process is about to report */
	}
	for (int i = 1; i <= S->n_ids; i++) {
		S->nodes[i].id = (uint64_t)i;
		S->nodes[i].durable_sm = rnd_n(2);
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
	for (; S->now <= deadline; S->now++) {
		step_once();
		if (S->now % 10 == 0 && converged()) {
			ok = true;
			break;
		}
	}
	if (!ok) {
		struct node *l = leader_node();
		fail("liveness: no convergence %" PRIu64 " units after heal (leader %" PRIu64 ")",
		     budget, l ? l->id : 0);
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
	if (o->verbose)
		printf("ok seed=%" PRIu64 " nodes=%d steps=%" PRIu64 " heal=%" PRIu64
		       " commit=%" PRIu64 " term=%" PRIu64 " proposed=%" PRIu64 " applied=%" PRIu64
		       " refused=%" PRIu64 " elections=%" PRIu64 " crashes=%" PRIu64
		       " diskfail=%" PRIu64 " conf=%" PRIu64 " transfers=%" PRIu64
		       " compactions=%" PRIu64 " snapinstalls=%" PRIu64 " msgs=%" PRIu64
		       " prevote=%d cq=%d\n",
		       o->seed, o->nodes, o->steps, S->now - S->fault_end, ls.commit, ls.term,
		       S->n_proposed, S->n_applied, S->n_refused, S->n_elections, S->n_crashes,
		       S->n_disk_fail, S->n_conf, S->n_transfers, S->n_compactions,
		       S->n_snap_installs, S->n_msgs, S->pre_vote, S->check_quorum);
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
		int nodes;
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (sscanf(line, "%llu %d %llu", &seed, &nodes, &steps) != 3)
			continue;
		o.seed = seed;
		o.nodes = nodes;
		o.steps = steps;
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
		} else if (!strcmp(a, "--quiet")) {
			o.verbose = false;
		} else if (!strcmp(a, "--regress") && v) {
			regress = v;
			i++;
		} else {
			fprintf(stderr,
				"usage: raft_sim [--seed S | --seeds A:B] [--nodes N] [--steps K] "
				"[--long] [--trace] [--quiet] [--regress FILE] "
				"[--prevote 0|1] [--check-quorum 0|1]\n");
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
	return bad ? 1 : 0;
}
