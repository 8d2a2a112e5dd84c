/*
 * host_sim.c - deterministic simulator of the replicated host: N nodes each run the REAL host
 * (cluster/craft*.c: persistence ordering, group commit, discovery/bootstrap/rejoin,
 * descriptor + streamed fetch, address book, membership, retention), over the real Raft core
 * and the real queue state machine, with simulated time, network and disks (issue 11, section
 * 5).  The edge (cluster/cluster_raft.c in relayd) is replaced by this file: the craft_io
 * callbacks below.  raft_sim.c simulates the core and the queue with a host model of its own;
 * this one simulates the host itself.
 *
 * Time is in units of 1 ms.  Each node has its own monotonic clock (drift within
 * +-SIM_DRIFT_PPM, and a wall clock that steps by up to SIM_STEP_MS now and then: only the
 * commands' at_ms fields see it); its timer (craft_tick every heartbeat) runs on its own clock.
 * ONE seeded splitmix64 PRNG drives everything.  A failing seed prints one reproduction line.
 *
 * The edge modelled:
 *   - network: every frame (Raft message or craft frame, with the envelope's cluster id and
 *     incarnation) is delayed, dropped, duplicated (so reordered) at per-seed rates; symmetric
 *     and one-way partitions;
 *   - disks: io.write_start queues an ordered write, visible and durable when it completes (a
 *     failed write is reported failed: craft retries it); io.write_now is visible at once and
 *     durable at once when synced, else with the next synced write or completion; a crash keeps
 *     the durable writes and a random prefix of the others; a power cut crashes every node.
 *     Writes without the WAL (STORE_WRITE_NOWAL: the queue state, its applied index, the log
 *     deletions of compaction) are visible when they complete and durable only once a flush
 *     (at random times, atomic: every write completed until then, in order) persists them; a
 *     crash loses those not flushed while keeping the WAL writes made after them, as RocksDB
 *     with atomic_flush does;
 *   - a wiped disk: the node crashes and restarts with an empty store (a new incarnation) - at
 *     most one node at a time, and only while every other voter is whole (the failure budget
 *     of a 3- or 5-node cluster; a second concurrent disk loss is beyond G1);
 *   - digests of store views complete after a delay; crashes interrupt fetches and digests;
 *     compaction is forced now and then (craft_snapshot_now) besides craft's own policy;
 *     snapshot chunks are small (many round trips: fetches span compactions and crashes);
 *   - clients propose Accepts (and Deletes of accepted ones) to random nodes; operators transfer
 *     leadership and add/remove the spare node (it joins from outside its own `peers`); with
 *     --ops, operators also drain nodes (`relayctl drain`: a drained node is LIVE again when
 *     it restarts, as relayd) and attempts end DEFERRED or FAILED too, some with a DSN; with
 *     --multi, messages have one to four recipients, in any of the domains;
 *   - a crashed process's connections close: every other node's edge tells its host
 *     (craft_peer_down) after a network delay, unless the link is cut; now and then a close is
 *     told of a peer that is alive (a connection dropped on its own);
 *   - a crash or partition in four lasts up to SIM_LONG_OUTAGE longer (leases lapse); with
 *     --pauses, process stalls (nothing runs, clocks go on, frames and completions wait);
 *   - delivery ownership (host_sim_own.c): the real cluster/ownership.c on every node's own
 *     clock, Renew/Member through its craft_propose, attempts that take time and pass
 *     own_may_commit before their end of data, Outcomes.
 *
 * Checked (after every step, unless said otherwise):
 *   election safety     at most one leader per term;
 *   commit consistency  a committed index never changes term on any node; leader completeness;
 *   not counted         whenever a leader's commit index moves, a quorum of voters that are
 *                       not installing a snapshot holds it (a fetching node never counts);
 *   no vote while       a node installing a snapshot is never a leader or candidate;
 *     installing
 *   state machines      every node applies the entries in order and reaches the same queue digest
 *                       after them (compared at every SIM_DIGEST_EVERY-th index); a state loaded
 *                       from the store (open, a completed install) at such an index has its
 *                       digest;
 *   durability          (every SIM_DURABLE_EVERY units, on sampled indexes) every committed entry
 *                       is held durably - in the log with its committed term, or in a complete
 *                       applied state - by enough voters of the leader's configuration that
 *                       every quorum of it contains one (a majority when their number is odd);
 *                       a node whose disk was wiped, or that is installing a snapshot, holds
 *                       nothing below it;
 *   G1                  after the heal every Accept acknowledged to its client (callback status
 *                       0), and not deleted, is in the queue of every member; every member
 *                       applies the whole committed log; liveness within the heal budget;
 *   ownership           (true time, host_sim_own.c) never two nodes in the committing window
 *                       (own_may_commit passed, end of data not yet at the destination) of
 *                       one domain at one instant.
 *
 * Usage: host_sim [--seed S | --seeds A:B] [--nodes N] [--steps K] [--long] [--pauses] [--spread]
 *                 [--ops] [--multi] [--trace] [--quiet] [--verify-disk]
 * (--long: 1,000,000 steps per seed; --spread: snapshot intervals differ between the nodes, as in
 * relayd (craft_config.snapshot_spread; off, every node compacts every snap_entries, which the
 * fixed seed ranges were found with); --verify-disk: after every flush and crash, compare the
 * incremental disk model with one rebuilt from the flushed tables, a slow self-check).
 */
#include "host_sim.h"
#include "craft.h"
#include "host_sim_own.h"
#include "peers.h"
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

/* ------------------------------------------------------------------ PRNG, failure */

static uint64_t g_rng;

static uint64_t
rnd(void)
{
	uint64_t z = (g_rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t
rnd_n(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static int
chance(uint32_t ppm)
{
	return rnd_n(1000000) < ppm;
}

static jmp_buf g_fail_jmp;
static char g_fail_msg[512];
static int g_trace;
static int
    g_verify_disk; /* --verify-disk: check the incremental disk model against full rebuilds */

void
fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g_fail_msg, sizeof(g_fail_msg), fmt, ap);
	va_end(ap);
	longjmp(g_fail_jmp, 1);
}

/* ------------------------------------------------------------------ state */

struct sim *S;

static struct {
	uint64_t runs, units, props_ok, crashes, wipes, power, transfers, members, compactions,
	    msgs, durable_checks, leaders, heal_max;
	struct hso_stats own; /* summed */
} g_tot;

void
trace(const char *fmt, ...)
{
	if (!g_trace)
		return;
	va_list ap;
	va_start(ap, fmt);
	printf("t=%" PRIu64 " ", S->now);
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

uint64_t *
vec_at(uint64_t **v, uint64_t *n, uint64_t i)
{
	if (i >= *n) {
		uint64_t m = *n ? *n : 1024;
		while (m <= i)
			m *= 2;
		*v = realloc(*v, m * sizeof(**v));
		memset(*v + *n, 0, (m - *n) * sizeof(**v));
		*n = m;
	}
	return &(*v)[i];
}

/* ------------------------------------------------------------------ clocks */

static uint64_t
mono(const struct node *n)
{
	return n->mono_base + S->now + (uint64_t)((int64_t)S->now * n->drift_ppm / 1000000);
}

/* ------------------------------------------------------------------ disks */

static void
pw_free(struct pw *w)
{
	store_batch_fini(&w->b);
}

static struct pw *
pw_new(struct node *n, const struct store_batch *b)
{
	if (n->npw == n->pwcap) {
		n->pwcap = n->pwcap ? n->pwcap * 2 : 16;
		n->pw = realloc(n->pw, n->pwcap * sizeof(*n->pw));
	}
	struct pw *w = &n->pw[n->npw++];
	memset(w, 0, sizeof(*w));
	store_batch_init(&w->b);
	if (store_batch_append(&w->b, b))
		fail("store_batch_append");
	uint64_t due = S->now + 1 + rnd_n(S->sync_max);
	if (due < n->last_due)
		due = n->last_due;
	n->last_due = w->due = due;
	return w;
}

static void
apply_store(struct store *s, const struct store_batch *b, const char *what, int idx)
{
	int rv = store_write(s, b, 1);
	if (rv)
		fail("node %d %s write: %s", idx, what, store_strerror(rv));
}

/* Makes the WAL writes before k (k included) durable, in order (NOWAL ones wait for a flush). */
static void
make_durable(struct node *n, size_t k)
{
	for (size_t i = 0; i <= k && i < n->npw; i++)
		if (!n->pw[i].durable && !n->pw[i].fails && !n->pw[i].nowal) {
			apply_store(n->dstore, &n->pw[i].b, "durable", n->idx);
			n->pw[i].durable = 1;
		}
}

/* ------------------------------------------------------------------ the network */

static int
link_ok(int a, int b)
{
	return S->cut_until[a][b] <= S->now;
}

static int node_of_name(const char *name);

static void
net_push(struct node *from, int to, int raft, const struct raft_msg *m, uint32_t kind,
	 const void *data, size_t len)
{
	if (to < 1 || to > S->n_ids || !link_ok(from->idx, to))
		return;
	if (!S->healing && chance(S->drop_ppm))
		return;
	int copies = !S->healing && chance(S->dup_ppm) ? 2 : 1;
	uint64_t cid = 0, inc = 0;
	if (from->c)
		craft_envelope(from->c, &cid, &inc); /* (during craft_open: at delivery) */
	for (int k = 0; k < copies && S->n_net < SIM_NET_MAX; k++) {
		struct msg *x = &S->net[S->n_net++];
		memset(x, 0, sizeof(*x));
		x->at = S->now + 1 + rnd_n(S->delay_max);
		x->from = from->idx;
		x->to = to;
		x->cid = cid;
		x->inc = inc;
		x->raft = raft;
		if (raft) {
			x->m = *m;
			x->m.entries = NULL;
			x->m.snap_data = NULL;
			if (m->n_entries) {
				x->m.entries = calloc(m->n_entries, sizeof(*m->entries));
				for (uint32_t i = 0; i < m->n_entries; i++) {
					x->m.entries[i] = m->entries[i];
					x->m.entries[i].data = NULL;
					if (m->entries[i].len) {
						x->m.entries[i].data = malloc(m->entries[i].len);
						memcpy(x->m.entries[i].data, m->entries[i].data,
						       m->entries[i].len);
					}
				}
			}
			if (m->snap_len) {
				x->m.snap_data = malloc(m->snap_len);
				memcpy(x->m.snap_data, m->snap_data, m->snap_len);
			}
		} else {
			x->kind = kind;
			x->len = len;
			x->data = malloc(len ? len : 1);
			if (len)
				memcpy(x->data, data, len);
		}
		S->n_msgs++;
	}
}

/* A connection close from node `from` told to node `to` after a network delay (a frame of
 * kind SIM_KIND_DOWN, never dropped; lost if the link is cut when it is due). */
#define SIM_KIND_DOWN 0xffffffffu
static void
net_down(int from, int to)
{
	if (S->n_net >= SIM_NET_MAX || from == to)
		return;
	struct msg *x = &S->net[S->n_net++];
	memset(x, 0, sizeof(*x));
	x->at = S->now + 1 + rnd_n(S->delay_max);
	x->from = from;
	x->to = to;
	x->kind = SIM_KIND_DOWN;
	x->data = malloc(1);
}

static void
msg_free(struct msg *x)
{
	if (x->raft) {
		for (uint32_t i = 0; i < x->m.n_entries; i++)
			free(x->m.entries[i].data);
		free(x->m.entries);
		free(x->m.snap_data);
	} else {
		free(x->data);
	}
}

/* ------------------------------------------------------------------ the edge (craft_io) */

static uint64_t
io_now(void *arg)
{
	return mono(arg);
}

static uint64_t
io_wall(void *arg)
{
	struct node *n = arg;
	return SIM_EPOCH_MS + (uint64_t)((int64_t)mono(n) + n->wall_step);
}

static uint64_t
io_random(void *arg)
{
	(void)arg;
	uint64_t v = rnd();
	return v ? v : 1;
}

static void
io_schedule(void *arg)
{
	((struct node *)arg)->run = 1;
}

static void
io_log(void *arg, const char *line)
{
	struct node *n = arg;
	if (g_trace)
		printf("t=%" PRIu64 " %s: %s\n", S->now, n->name, line);
}

static int
io_peer_add(void *arg, const char *name, const char *addr)
{
	(void)arg, (void)name, (void)addr;
	return 0;
}

static void
io_peer_del(void *arg, const char *name)
{
	(void)arg, (void)name;
}

static int
io_connected(void *arg, const char *name)
{
	struct node *n = arg;
	int k = node_of_name(name);
	return k > 0 && S->nd[k].up && link_ok(n->idx, k) && link_ok(k, n->idx);
}

static int
io_send(void *arg, const char *name, uint32_t kind, const void *data, size_t len)
{
	net_push(arg, node_of_name(name), 0, NULL, kind, data, len);
	return 0;
}

static int
io_send_raft(void *arg, const char *name, const struct raft_msg *m)
{
	net_push(arg, node_of_name(name), 1, m, 0, NULL, 0);
	return 0;
}

/* The Raft state with the WAL, then the queue state without it (edge__work_cb in
 * cluster_raft.c): a failure of the first writes neither. */
static int
io_write_start(void *arg, const struct store_batch *b, const struct store_batch *state, int sync)
{
	struct node *n = arg;
	(void)sync;
	int fails = !S->healing && chance(S->disk_fail_ppm);
	struct pw *w = pw_new(n, b);
	w->started = !state->len;
	w->fails = fails;
	if (state->len) {
		w = pw_new(n, state);
		w->started = 1;
		w->fails = fails;
		w->nowal = 1;
	}
	return 0;
}

static int
io_write_now(void *arg, const struct store_batch *b, int mode)
{
	struct node *n = arg;
	apply_store(n->vstore, b, "view", n->idx);
	struct pw *w = pw_new(n, b);
	w->visible = 1;
	w->due = S->now; /* never later than what follows */
	w->nowal = mode == STORE_WRITE_NOWAL;
	if (mode == STORE_WRITE_SYNC)
		make_durable(n, n->npw - 1);
	return 0;
}

/* Remembers a completed write until the next flush. */
static void
since_push(struct node *n, const struct store_batch *b)
{
	if (n->nsince == n->sincecap) {
		n->sincecap = n->sincecap ? n->sincecap * 2 : 16;
		n->since = realloc(n->since, n->sincecap * sizeof(*n->since));
		if (!n->since)
			fail("realloc");
	}
	struct store_batch *c = &n->since[n->nsince++];
	store_batch_init(c);
	if (store_batch_append(c, b))
		fail("store_batch_append");
}

static void
since_clear(struct node *n)
{
	for (size_t i = 0; i < n->nsince; i++)
		store_batch_fini(&n->since[i]);
	n->nsince = 0;
}

static struct store *store_clone(struct store *src);

static int
key_cmp(const unsigned char *a, size_t al, const unsigned char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	return c ? c : al < bl ? -1 : al > bl;
}

/* Appends to fix what makes a store agree with src on every key b touches: a put or a delete
 * of a key takes src's value (or none), a deleted range src's keys in it.  Two stores that agree
 * outside b's keys agree everywhere once one of them applies fix. */
static void
resync_ops(struct store_batch *fix, struct store *src, const struct store_batch *b)
{
	size_t pos = 0;
	enum store_op op;
	enum store_cf cf;
	const unsigned char *k, *v;
	size_t kl, vl;
	int rv;
	while ((rv = store_batch_next(b, &pos, &op, &cf, &k, &kl, &v, &vl)) == 1) {
		if (op == STORE_OP_DELETE_RANGE) {
			if (store_batch_delete_range(fix, cf, k, kl, v, vl))
				fail("store_batch_delete_range");
			struct store_iter *it;
			if (store_iter_new(src, cf, &it))
				fail("store_iter_new");
			for (store_iter_seek(it, k, kl); store_iter_valid(it);
			     store_iter_next(it)) {
				size_t ikl, ivl;
				const unsigned char *ik = store_iter_key(it, &ikl);
				const unsigned char *iv = store_iter_value(it, &ivl);
				if (key_cmp(ik, ikl, v, vl) >= 0)
					break;
				if (store_batch_put(fix, cf, ik, ikl, iv, ivl))
					fail("store_batch_put");
			}
			store_iter_free(it);
			continue;
		}
		void *val;
		size_t len;
		int g = store_get(src, cf, k, kl, &val, &len);
		if (g == 0) {
			if (store_batch_put(fix, cf, k, kl, val, len))
				fail("store_batch_put");
			free(val);
		} else if (g == STORE_ENOTFOUND) {
			if (store_batch_delete(fix, cf, k, kl))
				fail("store_batch_delete");
		} else {
			fail("store_get: %s", store_strerror(g));
		}
	}
	if (rv)
		fail("store_batch_next: %s", store_strerror(rv));
}

/* --verify-disk: the digest of every column family of s. */
static struct store_digest
store_digest_all(struct store *s)
{
	enum store_cf cfs[STORE_CF__COUNT];
	for (int i = 0; i < STORE_CF__COUNT; i++)
		cfs[i] = (enum store_cf)i;
	struct store_view *v;
	struct store_digest d;
	store_digest_init(&d);
	if (store_view_new(s, &v) || store_view_digest(v, cfs, STORE_CF__COUNT, &d))
		fail("store digest");
	store_view_free(v);
	return d;
}

static void
verify_same(struct node *n, struct store *model, struct store *full, const char *what)
{
	struct store_digest a = store_digest_all(model), b = store_digest_all(full);
	if (a.crc != b.crc || a.keys != b.keys || a.bytes != b.bytes)
		fail("node %s %s: the incremental disk model differs from the full rebuild",
		     n->name, what);
}

/* An atomic flush: every write completed so far, in order, is on the disk's tables; the disk
 * then holds that plus the WAL writes made durable but not completed yet (D).  Incremental:
 * dstore agreed with the last flush's tables outside the keys of the writes completed since
 * (since) and of D, so the keys of since are set to the new tables' values and D is applied
 * again (its operations set absolute values, so D's keys need no reset).  A clone of the tables
 * per flush made a run's time grow with the square of its steps. */
static void
node_flush(struct node *n)
{
	for (size_t i = 0; i < n->nsince; i++)
		apply_store(n->fstore, &n->since[i], "flush", n->idx);
	struct store_batch fix;
	store_batch_init(&fix);
	for (size_t i = 0; i < n->nsince; i++)
		resync_ops(&fix, n->fstore, &n->since[i]);
	if (fix.count)
		apply_store(n->dstore, &fix, "flush resync", n->idx);
	store_batch_fini(&fix);
	since_clear(n);
	for (size_t i = 0; i < n->npw; i++)
		if (n->pw[i].durable)
			apply_store(n->dstore, &n->pw[i].b, "durable", n->idx);
	if (g_verify_disk) {
		struct store *full = store_clone(n->fstore);
		for (size_t i = 0; i < n->npw; i++)
			if (n->pw[i].durable)
				apply_store(full, &n->pw[i].b, "durable", n->idx);
		verify_same(n, n->dstore, full, "flush");
		store_free(full);
	}
}

static int
io_digest(void *arg, struct store_view *v, const enum store_cf *cfs, size_t k,
	  struct store_digest *out)
{
	struct node *n = arg;
	n->digest_rv = store_view_digest(v, cfs, k, out);
	n->digesting = 1;
	n->digest_due = S->now + 1 + rnd_n(40);
	return 0;
}

static void
hook_apply_after(void *arg, const struct raft_entry *e, int rc)
{
	struct node *n = arg;
	(void)rc;
	if (e->index != n->applied + 1)
		fail("node %s applies index %" PRIu64 " after %" PRIu64, n->name, e->index,
		     n->applied);
	n->applied = e->index;
	/* the first node to apply an index records the digest after it, the others compare */
	if (e->index % SIM_DIGEST_EVERY)
		return;
	uint64_t *slot = vec_at(&S->digest_at, &S->n_digest, e->index);
	uint64_t d = queue_fsm_digest(craft_queue(n->c)) | 1;
	if (!*slot) {
		*slot = d;
		S->n_applied++;
	} else if (*slot != d) {
		fail("state machine safety: node %s digest after %" PRIu64 " differs", n->name,
		     e->index);
	}
}

static void
hook_state_loaded(void *arg, uint64_t index)
{
	struct node *n = arg;
	n->applied = index;
	if (!n->c)
		return; /* craft_open: checked once it returns */
	if (index == 0 || index % SIM_DIGEST_EVERY)
		return;
	uint64_t d = queue_fsm_digest(craft_queue(n->c)) | 1;
	uint64_t want = *vec_at(&S->digest_at, &S->n_digest, index);
	if (!want)
		fail("node %s loaded a state at %" PRIu64 " nobody applied", n->name, index);
	if (want != d)
		fail("node %s state loaded at %" PRIu64 " differs from the applied history",
		     n->name, index);
	S->n_installs_seen++;
}

static const struct craft_io sim_io = {
    .now_ms = io_now,
    .wall_ms = io_wall,
    .random64 = io_random,
    .schedule = io_schedule,
    .log = io_log,
    .peer_add = io_peer_add,
    .peer_del = io_peer_del,
    .peer_connected = io_connected,
    .send = io_send,
    .send_raft = io_send_raft,
    .write_start = io_write_start,
    .write_now = io_write_now,
    .digest_start = io_digest,
    .apply_after = hook_apply_after,
    .state_loaded = hook_state_loaded,
};

/* ------------------------------------------------------------------ nodes */

static int
node_of_name(const char *name)
{
	for (int i = 1; i <= S->n_ids; i++)
		if (!strcmp(S->nd[i].name, name))
			return i;
	return 0;
}

static struct store *
store_clone(struct store *src)
{
	struct store *s;
	if (store_mem_new(&s))
		fail("store_mem_new");
	struct store_batch b;
	store_batch_init(&b);
	for (int cf = 0; cf < STORE_CF__COUNT; cf++) {
		struct store_iter *it;
		if (store_iter_new(src, (enum store_cf)cf, &it))
			fail("store_iter_new");
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			if (store_batch_put(&b, (enum store_cf)cf, k, kl, v, vl))
				fail("store_batch_put");
		}
		store_iter_free(it);
	}
	if (b.count && store_write(s, &b, 1))
		fail("store clone");
	store_batch_fini(&b);
	return s;
}

static void
node_start(struct node *n)
{
	n->vstore = store_clone(n->dstore);
	struct craft_io io = sim_io;
	io.arg = n;
	struct craft_config cfg = {
	    .node_id = n->name,
	    .cluster_listen = n->addr,
	    .peers = S->peers,
	    .n_peers = (size_t)S->n_nodes,
	    .heartbeat_ms = SIM_HB,
	    .election_ms = SIM_ELECTION,
	    .fail_ms = 3000,
	    .retry_ms = 300,
	    .snapshot_entries = S->snap_entries,
	    .max_msg_bytes = 4096 + (unsigned)rnd_n(16384),
	    .max_inflight = 4 + (unsigned)rnd_n(29),
	    .snap_chunk_bytes = S->chunk,
	    .retain_entries = S->retain,
	    .snapshot_spread = S->spread,
	};
	n->applied = 0;
	n->c = NULL;
	int rv = craft_open(&cfg, n->vstore, &io, &n->c);
	if (rv)
		fail("node %s craft_open: %s", n->name, cluster_strerror(rv));
	n->up = 1;
	n->raft_id = craft_id(n->c);
	n->run = 1;
	n->next_tick = S->now + 1 + rnd_n(SIM_HB);
	n->next_own_tick = S->now + 1 + rnd_n(HSO_TICK_MS);
	hso_start(n->idx, n->name, n->c, mono(n));
	n->last_commit = 0;
	n->lc_term = 0;
	n->seen_commit = 0;
	/* the state it opened with: checked against the applied history */
	if (!craft_fetching(n->c) && craft_applied(n->c))
		hook_state_loaded(n, craft_applied(n->c));
	trace("%s start incarnation-id=%016" PRIx64 " applied=%" PRIu64, n->name, n->raft_id,
	      craft_applied(n->c));
}

/* The process dies: durable writes stay, a random prefix of the others reaches the disk. */
static void
node_crash(struct node *n, const char *why)
{
	if (!n->up)
		return;
	size_t keep = rnd_n(n->npw + 1);
	for (size_t i = 0; i < n->npw; i++)
		if (!n->pw[i].durable && i < keep && !n->pw[i].fails && !n->pw[i].nowal)
			apply_store(n->dstore, &n->pw[i].b, "crash", n->idx);
	/* what the WAL replays at the next open is flushed then: the disk is all tables again.
	 * fstore (the last flush) and dstore differ only on the keys written since that flush */
	struct store_batch fix;
	store_batch_init(&fix);
	for (size_t i = 0; i < n->nsince; i++)
		resync_ops(&fix, n->dstore, &n->since[i]);
	for (size_t i = 0; i < n->npw; i++)
		resync_ops(&fix, n->dstore, &n->pw[i].b);
	if (fix.count)
		apply_store(n->fstore, &fix, "crash resync", n->idx);
	store_batch_fini(&fix);
	if (g_verify_disk)
		verify_same(n, n->fstore, n->dstore, "crash");
	for (size_t i = 0; i < n->npw; i++)
		pw_free(&n->pw[i]);
	n->npw = 0;
	since_clear(n);
	n->last_due = 0;
	craft_abandon(n->c);
	n->c = NULL;
	hso_crash(n->idx);
	store_free(n->vstore);
	n->vstore = NULL;
	n->up = 0;
	n->paused_until = 0;
	n->digesting = 0;
	n->restart_at = S->now + 20 + rnd_n(1500);
	if (rnd_n(4) == 0)
		n->restart_at += rnd_n(SIM_LONG_OUTAGE); /* long enough for its lease to lapse */
	S->n_crash++;
	trace("%s crash (%s) kept %zu writes", n->name, why, keep);
	for (int i = 1; i <= S->n_ids; i++)
		if (i != n->idx && S->nd[i].up)
			net_down(n->idx, i);
}

static int
running(const struct node *n)
{
	return n->up && n->paused_until <= S->now;
}

static void
node_run(struct node *n)
{
	int guard = 0;
	while (running(n) && n->run) {
		n->run = 0;
		craft_run(n->c);
		if (++guard > 1000)
			fail("node %s: craft_run keeps asking to run", n->name);
	}
}

/* ------------------------------------------------------------------ clients */

static void
prop_cb(void *arg, int status)
{
	struct prop *p = arg;
	p->status = status;
	trace("%s %s status %d", p->kind ? "delete" : "accept", p->qid, status);
	if (status == 0)
		S->n_props_ok++;
	else
		S->n_props_fail++;
}

static struct prop *
prop_new(int kind)
{
	if (S->n_props >= SIM_PROPS)
		return NULL;
	struct prop *p = &S->props[S->n_props++];
	p->used = 1;
	p->kind = kind;
	p->status = 1;
	return p;
}

static void
propose_accept(struct node *n)
{
	struct prop *p = prop_new(0);
	if (!p)
		return;
	snprintf(p->qid, sizeof(p->qid), "Q%08" PRIu64, ++S->next_qid);
	Relay__Accept a = RELAY__ACCEPT__INIT;
	/* one recipient; with --multi one to four, in any of the domains (an attempt each) */
	Relay__Recipient r[4], *rp[4];
	char addr[4][48];
	size_t nr = S->multi ? 1 + rnd_n(4) : 1;
	for (size_t i = 0; i < nr; i++) {
		relay__recipient__init(&r[i]);
		snprintf(addr[i], sizeof(addr[i]), "u%u@d%u.example", (unsigned)rnd_n(30),
			 (unsigned)rnd_n(4));
		r[i].addr = addr[i];
		rp[i] = &r[i];
	}
	uint8_t body[SIM_BODY_MAX];
	size_t bl = rnd_n(SIM_BODY_MAX);
	for (size_t i = 0; i < bl; i++)
		body[i] = (uint8_t)('a' + rnd_n(26));
	a.queue_id = p->qid;
	a.mail_from = "sender@src.example";
	a.n_rcpts = nr;
	a.rcpts = rp;
	a.body.data = body;
	a.body.len = bl;
	a.received_ms = io_wall(n);
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	cmd.accept = &a;
	if (craft_propose(n->c, &cmd, prop_cb, p, NULL)) {
		p->status = -1; /* refused at once: the client got a 4xx */
		return;
	}
	trace("%s proposes accept %s", n->name, p->qid);
}

static void
propose_delete(struct node *n)
{
	/* a message of this node's queue (an operator's relayctl queue delete) */
	struct queue_counts qc;
	queue_fsm_counts(craft_queue(n->c), &qc);
	if (!qc.messages)
		return;
	uint64_t k = rnd_n(qc.messages);
	const struct queue_msg *m = queue_fsm_first(craft_queue(n->c));
	while (k-- && m)
		m = queue_fsm_next(craft_queue(n->c), m);
	if (!m)
		return;
	struct prop *p = prop_new(1);
	if (!p)
		return;
	snprintf(p->qid, sizeof(p->qid), "%s", m->queue_id);
	Relay__Delete d = RELAY__DELETE__INIT;
	d.queue_id = p->qid;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_DELETE;
	cmd.delete_ = &d;
	if (craft_propose(n->c, &cmd, prop_cb, p, NULL))
		p->status = -1;
}

/* ------------------------------------------------------------------ ownership's edge */

static uint64_t
mono_of(int idx)
{
	return mono(&S->nd[idx]);
}

/* An Outcome was proposed: its message may leave the queue (G1 treats it as a Delete). */
static void
outcome_noted(const char *qid)
{
	struct prop *p = prop_new(2);
	if (!p)
		return;
	snprintf(p->qid, sizeof(p->qid), "%s", qid);
	p->status = 2; /* not a client's: counted nowhere */
}

/* ------------------------------------------------------------------ faults and operators */

static void
faults(void)
{
	if (chance(S->crash_ppm)) {
		struct node *n = &S->nd[1 + rnd_n(S->n_ids)];
		node_crash(n, "crash");
	}
	if (chance(S->crash_ppm)) { /* a connection between two live nodes drops on its own */
		int a = 1 + (int)rnd_n(S->n_ids), b = 1 + (int)rnd_n(S->n_ids);
		if (a != b && S->nd[a].up && S->nd[b].up)
			net_down(a, b);
	}
	if (chance(S->power_ppm)) {
		for (int i = 1; i <= S->n_ids; i++)
			node_crash(&S->nd[i], "power cut");
		S->n_power++;
	}
	if (chance(S->wipe_ppm)) {
		/* one disk lost at a time (the failure budget of G1: a minority), while every
		 * other node still holds what is committed or is only behind */
		struct node *n = &S->nd[1 + rnd_n(S->n_ids)];
		int ok = 1;
		for (int i = 1; i <= S->n_ids && ok; i++)
			if (S->nd[i].wiped || (&S->nd[i] != n && install_marker(&S->nd[i])))
				ok = 0; /* (one installing a snapshot holds nothing yet either: with
					 * a lost disk, two of three would lack the data - seed 87)
					 */
		if (ok) {
			n->dead_id = n->raft_id;
			*vec_at(&S->dead_ids, &S->n_dead_ids, S->n_wipe) = n->raft_id;
			node_crash(n, "disk replaced");
			n->raft_id = 0; /* a new incarnation when it starts */
			store_free(n->dstore);
			store_free(n->fstore);
			if (store_mem_new(&n->dstore) || store_mem_new(&n->fstore))
				fail("store_mem_new");
			n->wiped = 1;
			S->n_wipe++;
		}
	}
	if (chance(S->part_ppm)) {
		uint64_t until = S->now + 100 + rnd_n(2000);
		if (rnd_n(4) == 0)
			until += rnd_n(SIM_LONG_OUTAGE);
		uint64_t mask = rnd_n((1ULL << S->n_ids) - 1) + 1;
		for (int i = 1; i <= S->n_ids; i++)
			for (int j = 1; j <= S->n_ids; j++)
				if (((mask >> (i - 1)) & 1) != ((mask >> (j - 1)) & 1))
					S->cut_until[i][j] = until;
		trace("partition mask=%" PRIx64, mask);
	}
	if (chance(S->part_ppm / 2))
		memset(S->cut_until, 0, sizeof(S->cut_until));
	if (chance(S->pause_ppm)) {
		struct node *n = &S->nd[1 + rnd_n(S->n_ids)];
		if (running(n)) {
			n->paused_until = S->now + 1 + rnd_n(SIM_PAUSE_MAX);
			trace("%s pauses until t=%" PRIu64, n->name, n->paused_until);
		}
	}
	if (chance(S->step_ppm)) {
		struct node *n = &S->nd[1 + rnd_n(S->n_ids)];
		n->wall_step += (int64_t)rnd_n(2 * SIM_STEP_MS) - SIM_STEP_MS;
	}
}

static struct node *
random_up(void)
{
	int k = (int)rnd_n((uint64_t)S->n_ids);
	for (int i = 0; i < S->n_ids; i++) {
		struct node *n = &S->nd[1 + (k + i) % S->n_ids];
		if (running(n))
			return n;
	}
	return NULL;
}

static void
operators(void)
{
	struct node *n = random_up();
	if (!n)
		return;
	if (chance(S->propose_ppm)) {
		/* deletes keep the queue near SIM_BACKLOG messages (nothing is delivered here) */
		struct queue_counts qc;
		queue_fsm_counts(craft_queue(n->c), &qc);
		if (rnd_n(10) == 0 || (qc.messages > SIM_BACKLOG && rnd_n(2)))
			propose_delete(n);
		else
			propose_accept(n);
		n->run = 1;
	}
	if (S->healing)
		return;
	if (chance(S->transfer_ppm)) {
		if (craft_transfer_leader(n->c, NULL, NULL) == 0)
			S->n_transfers++;
		n->run = 1;
	}
	if (chance(S->compact_ppm)) {
		craft_snapshot_now(n->c);
		S->n_compact++;
	}
	if (S->drain_ppm && chance(S->drain_ppm)) {
		/* relayctl drain NODE, through any node (admin_drain) */
		int x = 1 + (int)rnd_n((uint64_t)S->n_ids);
		if (hso_operator_drain(n->idx, S->nd[x].name, io_wall(n)) == 0)
			trace("operator drains %s through %s", S->nd[x].name, n->name);
		n->run = 1;
	}
	if (S->n_ids > S->n_nodes && chance(S->member_ppm)) {
		/* the spare is added or removed by an operator (through any node) */
		struct node *sp = &S->nd[S->n_ids];
		int rv = rnd_n(2) ? craft_member_add(n->c, sp->name, sp->addr, NULL, NULL)
				  : craft_member_remove(n->c, sp->name, NULL, NULL);
		S->n_members += rv == 0;
		n->run = 1;
	}
}

/* ------------------------------------------------------------------ the loop */

static void
sync_disks(void)
{
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		if (!running(n))
			continue; /* (a stalled process sees its completions when it runs again) */
		while (n->npw && n->pw[0].due <= S->now) {
			struct pw w = n->pw[0];
			memmove(n->pw, n->pw + 1, (n->npw - 1) * sizeof(w));
			n->npw--;
			if (w.fails) {
				S->n_fail_writes++;
			} else {
				if (!w.durable && !w.nowal)
					apply_store(n->dstore, &w.b, "complete", n->idx);
				if (!w.visible)
					apply_store(n->vstore, &w.b, "view", n->idx);
				since_push(n, &w.b);
			}
			int started = w.started, failed = w.fails;
			pw_free(&w);
			if (started) {
				craft_write_done(n->c, failed ? STORE_EIO : 0);
				node_run(n);
			}
			if (!n->up)
				break;
		}
		if (n->up && n->nsince && chance(S->flush_ppm))
			node_flush(n);
		if (n->up && n->digesting && n->digest_due <= S->now) {
			n->digesting = 0;
			craft_digest_done(n->c, n->digest_rv);
			node_run(n);
		}
	}
}

static void
deliver(void)
{
	size_t i = 0;
	while (i < S->n_net) {
		struct msg x = S->net[i];
		if (x.at > S->now) {
			i++;
			continue;
		}
		struct node *n = &S->nd[x.to];
		if (n->up && !running(n)) {
			i++; /* waits in the socket buffer until the process runs again */
			continue;
		}
		S->net[i] = S->net[--S->n_net];
		if (!x.raft && x.kind == SIM_KIND_DOWN) {
			if (n->up && n->c && link_ok(x.from, x.to)) {
				trace("%s: connection to %s closed", n->name, S->nd[x.from].name);
				craft_peer_down(n->c, S->nd[x.from].name);
				node_run(n);
			}
			msg_free(&x);
			continue;
		}
		if (!x.cid && !x.inc && S->nd[x.from].up)
			craft_envelope(S->nd[x.from].c, &x.cid, &x.inc);
		int env = n->up && link_ok(x.from, x.to)
			      ? craft_recv_env(n->c, S->nd[x.from].name, x.cid, x.inc)
			      : 1;
		if (env < 0)
			trace("%s drops a frame from %s (envelope)", n->name, S->nd[x.from].name);
		if (env == 0) {
			if (x.raft)
				craft_recv_raft(n->c, S->nd[x.from].name, &x.m);
			else
				craft_recv(n->c, S->nd[x.from].name, x.kind, x.data, x.len);
			node_run(n);
		}
		msg_free(&x);
	}
}

static void
step(void)
{
	if (!S->healing)
		faults();
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		if (!n->up && n->restart_at <= S->now)
			node_start(n);
	}
	deliver();
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		if (running(n) && n->next_tick <= S->now) {
			craft_tick(n->c);
			/* the tick runs on the node's own clock */
			n->next_tick =
			    S->now +
			    (uint64_t)((int64_t)SIM_HB - (int64_t)SIM_HB * n->drift_ppm / 1000000);
			if (n->next_tick <= S->now)
				n->next_tick = S->now + 1;
		}
		if (running(n) && n->next_own_tick <= S->now) {
			/* delivery ownership, on the node's own clock too */
			hso_tick(n->idx, mono(n), io_wall(n));
			n->next_own_tick =
			    S->now + (uint64_t)((int64_t)HSO_TICK_MS -
						(int64_t)HSO_TICK_MS * n->drift_ppm / 1000000);
		}
		if (running(n))
			hso_step(n->idx, 1, mono(n), io_wall(n));
		node_run(n);
	}
	sync_disks();
	operators();
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		node_run(n);
		if (n->up) {
			check_node(n);
			struct raft_status st;
			raft_status(craft_raft(n->c), &st);
			if (n->wiped && raft_conf_is_voter(&st.conf, n->raft_id) &&
			    !craft_fetching(n->c))
				n->wiped = 0; /* rejoined, voter again, whole */
		}
	}
	if (S->now % SIM_DURABLE_EVERY == 0)
		check_durable();
}

/* After the heal, with no new proposals: a leader, its log all committed, no learner left, and
 * every member of its configuration up, done fetching and applied all of it. */
static int
settled(void)
{
	struct node *l = leader();
	if (!l)
		return 0;
	struct raft_status ls;
	raft_status(craft_raft(l->c), &ls);
	if (ls.commit != ls.last_index || ls.conf.n_learners)
		return 0;
	for (uint32_t k = 0; k < ls.conf.n_voters; k++) {
		int x = node_of_id(ls.conf.voters[k]);
		if (!x || !S->nd[x].up || craft_fetching(S->nd[x].c) ||
		    craft_applied(S->nd[x].c) != ls.commit)
			return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------ one seed */

struct opts {
	uint64_t seed, steps;
	int nodes;
	int verbose;
	int pauses; /* --pauses: process stalls too */
	int spread; /* --spread: craft_config.snapshot_spread, as relayd runs */
	int ops;    /* --ops: drains, DEFERRED/FAILED outcomes, DSNs */
	int multi;  /* --multi: messages with one to four recipients */
};

static void
sim_free(void)
{
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		if (n->up)
			craft_abandon(n->c);
		for (size_t k = 0; k < n->npw; k++)
			pw_free(&n->pw[k]);
		free(n->pw);
		if (n->vstore)
			store_free(n->vstore);
		if (n->dstore)
			store_free(n->dstore);
		if (n->fstore)
			store_free(n->fstore);
		since_clear(n);
		free(n->since);
	}
	for (size_t i = 0; i < S->n_net; i++)
		msg_free(&S->net[i]);
	free(S->net);
	free(S->leader_of_term);
	free(S->cterm);
	free(S->cseen);
	free(S->digest_at);
	free(S->props);
	free(S->dead_ids);
	free(S);
	S = NULL;
	hso_fini();
}

/* Units a fetch of the largest queue held by a node now may take after the heal, where no frame
 * is lost and no disk fails: one chunk in flight per fetch (cluster/craft_fetch.c), a chunk at
 * most S->chunk value bytes and 16384 key/values (CRAFT_SNAP_CHUNK_KVS), one round trip each of
 * at most 2 delay_max, the chunk's write (sync_max) and a tick.  Fetches of different nodes run
 * side by side.  A fetch that started over after the heal would need twice this: it must not
 * (the view it fetches is retained while it runs: craft_snap.c craft__retain). */
static uint64_t
heal_fetch_units(void)
{
	static const enum store_cf cfs[] = {STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX};
	uint64_t most = 0;
	for (int i = 1; i <= S->n_ids; i++) {
		struct store *st = S->nd[i].up ? S->nd[i].vstore : S->nd[i].dstore;
		uint64_t chunks = 0;
		for (size_t k = 0; k < sizeof(cfs) / sizeof(cfs[0]); k++) {
			uint64_t bytes = 0, kvs = 0;
			struct store_iter *it;
			if (store_iter_new(st, cfs[k], &it))
				fail("store_iter_new");
			for (store_iter_seek(it, NULL, 0); store_iter_valid(it);
			     store_iter_next(it)) {
				size_t vl;
				(void)store_iter_value(it, &vl);
				bytes += vl;
				kvs++;
			}
			store_iter_free(it);
			chunks += 1 + bytes / S->chunk + kvs / 16384;
		}
		if (chunks > most)
			most = chunks;
	}
	return most * (2 * S->delay_max + S->sync_max + SIM_HB + 2);
}

static int
sim_run(const struct opts *o)
{
	S = calloc(1, sizeof(*S));
	S->seed = o->seed;
	g_rng = o->seed * 0x9e3779b97f4a7c15ULL + 1;
	S->n_nodes = o->nodes;
	S->n_ids = o->nodes + 1 <= SIM_MAX ? o->nodes + 1 : o->nodes;
	S->steps = o->steps;
	S->net = calloc(SIM_NET_MAX, sizeof(*S->net));
	S->props = calloc(SIM_PROPS, sizeof(*S->props));
	S->drop_ppm = (uint32_t)rnd_n(60000);
	S->dup_ppm = (uint32_t)rnd_n(30000);
	S->delay_max = 2 + (unsigned)rnd_n(20);
	S->sync_max = 1 + (unsigned)rnd_n(20);
	S->crash_ppm = 50 + (uint32_t)rnd_n(300);
	S->power_ppm = (uint32_t)rnd_n(20);
	S->wipe_ppm = 200 + (uint32_t)rnd_n(800);
	S->disk_fail_ppm = (uint32_t)rnd_n(3000);
	S->part_ppm = 50 + (uint32_t)rnd_n(300);
	S->transfer_ppm = 50 + (uint32_t)rnd_n(200);
	S->member_ppm = 50 + (uint32_t)rnd_n(300);
	S->compact_ppm = 200 + (uint32_t)rnd_n(2000);
	S->step_ppm = (uint32_t)rnd_n(200);
	S->pause_ppm = 50 + (uint32_t)rnd_n(250);
	if (!o->pauses)
		S->pause_ppm = 0;
	S->propose_ppm = 5000 + (uint32_t)rnd_n(30000);
	S->snap_entries = 16 + (unsigned)rnd_n(48);
	S->chunk = 2048 + (unsigned)rnd_n(30000);
	S->retain = 100 + (unsigned)rnd_n(2000); /* (the store twin is slow with long logs) */
	S->lease_ms = 500 + rnd_n(1500);	 /* relayd's minimum is 500 */
	S->spread = o->spread;
	S->ops = o->ops;
	S->multi = o->multi;
	if (S->ops) /* (drawn only with --ops: the runs without it keep their schedules) */
		S->drain_ppm = 20 + (uint32_t)rnd_n(200);
	if (setjmp(g_fail_jmp)) {
		printf("FAIL host_sim --seed %" PRIu64 " --nodes %d --steps %" PRIu64
		       "%s%s%s%s   # t=%" PRIu64 ": %s\n",
		       o->seed, o->nodes, o->steps, o->pauses ? " --pauses" : "",
		       o->spread ? " --spread" : "", o->ops ? " --ops" : "",
		       o->multi ? " --multi" : "", S->now, g_fail_msg);
		fflush(stdout);
		return 1; /* state leaked on purpose: the process reports and exits */
	}
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		n->idx = i;
		snprintf(n->name, sizeof(n->name), "n%d", i);
		snprintf(n->addr, sizeof(n->addr), "sim%d:%d", i, 7400 + i);
		if (i <= S->n_nodes) {
			snprintf(S->peers_buf[i - 1], sizeof(S->peers_buf[0]), "%s=%s", n->name,
				 n->addr);
			S->peers[i - 1] = S->peers_buf[i - 1];
		} else {
			n->join = 1; /* the spare: joins when an operator adds it */
		}
		n->drift_ppm = (int64_t)rnd_n(2 * SIM_DRIFT_PPM + 1) - SIM_DRIFT_PPM;
		n->mono_base = rnd_n(1000000);
		if (store_mem_new(&n->dstore) || store_mem_new(&n->fstore))
			fail("store_mem_new");
	}
	S->flush_ppm = 2000 + (uint32_t)rnd_n(100000); /* per node per unit: every 10-500 units */
	struct hso_env env = {.rnd_n = rnd_n,
			      .fail = fail,
			      .trace = trace,
			      .outcome_proposed = outcome_noted,
			      .mono = mono_of,
			      .now = &S->now,
			      .outcome_kinds = S->ops};
	hso_init(&env, S->n_ids, S->lease_ms);
	for (int i = 1; i <= S->n_ids; i++)
		node_start(&S->nd[i]);
	for (S->now = 1; S->now <= S->steps; S->now++)
		step();
	/* heal: faults stop, every node comes back, clients keep proposing, slowly (a follower
	 * with a small window must be able to catch up) */
	S->healing = 1;
	S->propose_ppm = 2000;
	uint64_t acked_at_heal = S->n_props_ok;
	memset(S->cut_until, 0, sizeof(S->cut_until));
	for (int i = 1; i <= S->n_ids; i++) {
		if (!S->nd[i].up)
			S->nd[i].restart_at = S->now;
		S->nd[i].paused_until = 0;
	}
	uint64_t fetch_units = heal_fetch_units();
	uint64_t heal_end = S->now + SIM_HEAL_BUDGET + fetch_units, quiet = 0;
	int ok = 0;
	for (; S->now <= heal_end; S->now++) {
		step();
		if (!quiet && S->n_props_ok >= acked_at_heal + 3) {
			quiet =
			    S->now; /* the cluster commits again: no new proposals from now on */
			S->propose_ppm = 0;
			hso_quiet(); /* and no ownership proposals: the log goes idle */
		}
		if (quiet && S->now % 50 == 0 && settled()) {
			ok = 1;
			break;
		}
	}
	if (!ok) {
		char st[256] = "", *p = st;
		for (int i = 1; i <= S->n_ids && p < st + sizeof(st) - 48; i++) {
			struct node *n = &S->nd[i];
			struct raft_status rs = {0};
			if (n->up)
				raft_status(craft_raft(n->c), &rs);
			p += snprintf(p, (size_t)(st + sizeof(st) - p),
				      " %s:%s t%" PRIu64 " c%" PRIu64 " a%" PRIu64 "%s", n->name,
				      !n->up		       ? "down"
				      : rs.role == RAFT_LEADER ? "L"
							       : "F",
				      rs.term, rs.commit, n->up ? craft_applied(n->c) : 0,
				      n->up && craft_fetching(n->c) ? " fetching" : "");
		}
		uint64_t pend = 0, tmo = 0, other = 0;
		for (size_t k = 0; k < S->n_props; k++)
			pend += S->props[k].status == 1,
			    tmo += S->props[k].status == CLUSTER_ETIMEDOUT,
			    other +=
			    S->props[k].status < 0 && S->props[k].status != CLUSTER_ETIMEDOUT;
		fail("liveness: no convergence %d + %" PRIu64 " (fetch) units after the heal "
		     "(proposals ok %" PRIu64 " pending %" PRIu64 " timed out %" PRIu64
		     " other %" PRIu64 ");%s",
		     SIM_HEAL_BUDGET, fetch_units, S->n_props_ok, pend, tmo, other, st);
	}
	/* G1: every Accept acknowledged (250) and never deleted is in every member's queue */
	struct node *l = leader();
	struct raft_status ls;
	raft_status(craft_raft(l->c), &ls);
	size_t n_del = 0;
	char(*del)[QUEUE_ID_MAX + 1] = malloc((S->n_props + 1) * sizeof(*del));
	for (size_t k = 0; k < S->n_props; k++)
		if (S->props[k].kind != 0)
			memcpy(del[n_del++], S->props[k].qid, sizeof(del[0]));
	qsort(del, n_del, sizeof(del[0]), (int (*)(const void *, const void *))strcmp);
	for (size_t k = 0; k < S->n_props; k++) {
		struct prop *p = &S->props[k];
		if (p->kind != 0 || p->status != 0)
			continue;
		if (bsearch(p->qid, del, n_del, sizeof(del[0]),
			    (int (*)(const void *, const void *))strcmp))
			continue; /* a Delete of it was proposed: it may be gone */
		for (uint32_t v = 0; v < ls.conf.n_voters; v++) {
			int x = node_of_id(ls.conf.voters[v]);
			if (!x)
				fail("G1: voter %016" PRIx64 " is no node", ls.conf.voters[v]);
			if (!queue_fsm_lookup(craft_queue(S->nd[x].c), p->qid))
				fail("G1: %s got 250 but is not in %s's queue", p->qid,
				     S->nd[x].name);
		}
	}
	free(del);
	struct hso_stats os;
	hso_stats(&os);
	if (o->verbose)
		printf("ok seed=%" PRIu64 " nodes=%d steps=%" PRIu64 " heal=%" PRIu64
		       " heal_fetch=%" PRIu64 " commit=%" PRIu64 " leaders=%" PRIu64
		       " acked=%" PRIu64 " failed=%" PRIu64 " crashes=%" PRIu64 " power=%" PRIu64
		       " wipes=%" PRIu64 " failed_writes=%" PRIu64 " transfers=%" PRIu64
		       " member_ops=%" PRIu64 " compactions=%" PRIu64 " states_loaded=%" PRIu64
		       " durable_checks=%" PRIu64 " msgs=%" PRIu64 " lease=%" PRIu64
		       " renews=%" PRIu64 " verdicts=%" PRIu64 " attempts=%" PRIu64
		       " aborted=%" PRIu64 " committed=%" PRIu64 " delivered=%" PRIu64 "\n",
		       o->seed, o->nodes, o->steps, S->now - o->steps, fetch_units, ls.commit,
		       S->n_leaders, S->n_props_ok, S->n_props_fail, S->n_crash, S->n_power,
		       S->n_wipe, S->n_fail_writes, S->n_transfers, S->n_members, S->n_compact,
		       S->n_installs_seen, S->n_durable_checks, S->n_msgs, S->lease_ms,
		       os.renews_ok, os.verdicts, os.attempts, os.aborted, os.commits,
		       os.outcomes_ok);
	g_tot.own.renews_ok += os.renews_ok;
	g_tot.own.verdicts += os.verdicts;
	g_tot.own.attempts += os.attempts;
	g_tot.own.aborted += os.aborted;
	g_tot.own.commits += os.commits;
	g_tot.own.deferred += os.deferred;
	g_tot.own.failed += os.failed;
	g_tot.own.dsns += os.dsns;
	g_tot.own.drains += os.drains;
	g_tot.own.outcomes_ok += os.outcomes_ok;
	g_tot.runs++;
	g_tot.units += S->now;
	g_tot.props_ok += S->n_props_ok;
	g_tot.crashes += S->n_crash;
	g_tot.wipes += S->n_wipe;
	g_tot.power += S->n_power;
	g_tot.transfers += S->n_transfers;
	g_tot.members += S->n_members;
	g_tot.compactions += S->n_compact;
	g_tot.msgs += S->n_msgs;
	g_tot.durable_checks += S->n_durable_checks;
	g_tot.leaders += S->n_leaders;
	if (S->now - o->steps > g_tot.heal_max)
		g_tot.heal_max = S->now - o->steps;
	sim_free();
	return 0;
}

int
main(int argc, char **argv)
{
	struct opts o = {.seed = 1, .steps = 20000, .nodes = 3, .verbose = 1};
	uint64_t from = 0, to = 0;
	int range = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--seed") && v) {
			o.seed = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--seeds") && v) {
			char *colon;
			from = strtoull(v, &colon, 0);
			to = *colon == ':' ? strtoull(colon + 1, NULL, 0) : from + 1;
			range = 1;
			i++;
		} else if (!strcmp(a, "--nodes") && v) {
			o.nodes = atoi(v);
			i++;
		} else if (!strcmp(a, "--steps") && v) {
			o.steps = strtoull(v, NULL, 0);
			i++;
		} else if (!strcmp(a, "--long")) {
			o.steps = 1000000;
		} else if (!strcmp(a, "--pauses")) {
			o.pauses = 1;
		} else if (!strcmp(a, "--spread")) {
			o.spread = 1;
		} else if (!strcmp(a, "--ops")) {
			o.ops = 1;
		} else if (!strcmp(a, "--multi")) {
			o.multi = 1;
		} else if (!strcmp(a, "--trace")) {
			g_trace = 1;
		} else if (!strcmp(a, "--verify-disk")) {
			g_verify_disk = 1;
		} else if (!strcmp(a, "--quiet")) {
			o.verbose = 0;
		} else {
			fprintf(stderr, "usage: host_sim [--seed S | --seeds A:B] [--nodes N] "
					"[--steps K] [--long] [--pauses] [--spread] [--ops] "
					"[--multi] [--trace] [--quiet] [--verify-disk]\n");
			return 2;
		}
	}
	if (o.nodes < 1 || o.nodes >= SIM_MAX) {
		fprintf(stderr, "--nodes: 1..%d\n", SIM_MAX - 1);
		return 2;
	}
	if (!range) {
		from = o.seed;
		to = o.seed + 1;
	}
	int bad = 0;
	clock_t c0 = clock();
	for (uint64_t s = from; s < to; s++) {
		o.seed = s;
		bad += sim_run(&o) != 0;
	}
	printf("seeds %" PRIu64 "..%" PRIu64 " nodes=%d steps=%" PRIu64 ": %d failed (%.1fs cpu)\n",
	       from, to - 1, o.nodes, o.steps, bad, (double)(clock() - c0) / CLOCKS_PER_SEC);
	printf("totals: runs=%" PRIu64 " units=%" PRIu64 " acked=%" PRIu64 " leaders=%" PRIu64
	       " crashes=%" PRIu64 " power=%" PRIu64 " wipes=%" PRIu64 " transfers=%" PRIu64
	       " member_ops=%" PRIu64 " compactions=%" PRIu64 " durable_checks=%" PRIu64
	       " msgs=%" PRIu64 " heal_max=%" PRIu64 "\n",
	       g_tot.runs, g_tot.units, g_tot.props_ok, g_tot.leaders, g_tot.crashes, g_tot.power,
	       g_tot.wipes, g_tot.transfers, g_tot.members, g_tot.compactions, g_tot.durable_checks,
	       g_tot.msgs, g_tot.heal_max);
	printf("ownership: renews=%" PRIu64 " verdicts=%" PRIu64 " attempts=%" PRIu64
	       " aborted_at_gate=%" PRIu64 " committed=%" PRIu64 " outcomes=%" PRIu64
	       " deferred=%" PRIu64 " failed=%" PRIu64 " dsns=%" PRIu64 " drains=%" PRIu64 "\n",
	       g_tot.own.renews_ok, g_tot.own.verdicts, g_tot.own.attempts, g_tot.own.aborted,
	       g_tot.own.commits, g_tot.own.outcomes_ok, g_tot.own.deferred, g_tot.own.failed,
	       g_tot.own.dsns, g_tot.own.drains);
	return bad ? 1 : 0;
}
