/*
 * test_craft.c - the replicated host's pure part (cluster/craft*.c) driven directly, over the
 * in-memory store and an edge that records what it is asked to do (no loop, no network).
 *
 * Shows: the discovery decision (craft__boot_decide) as a table: a node bootstraps only as the
 * seed once every member of `peers` answered empty with the same `peers`, adopts a bootstrap
 * that names it at its incarnation, rejoins when a member has a cluster, and otherwise waits
 * (never alone, never outside its own `peers`); Raft ids derive from node id and incarnation
 * (incarnation 0 is the id of stores written before incarnations); a new data_dir gets a random
 * incarnation written before anything else and keeps it across opens, a store with Raft state
 * and no identity is incarnation 0; Peer commands carry what they expect to change: a late
 * duplicate of an add, a rejoin or a removal (a forward resubmitted after a leader change) is a
 * no-op once the member was set again, removed members stay as tombstones for that; a forwarded
 * proposal older than what its origin still waited (by the leader's own clock) is dropped; a
 * frame from a sender the book lacks asks the members who the members are (rate-limited), and
 * only an answer with this cluster's id adds to the book; with auto_join, a sender outside the
 * book may send only a Rejoin naming itself, which a follower forwards to its leader; snapshot
 * intervals differ between nodes and intervals (spread on); any node keeps its log after a view
 * it served a fetch from, within the retention window and bounds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "craft_int.h"
#include "peers.h"
#include "store.h"

/* ---- an edge that only records ---- */

struct edge {
	uint64_t now, rnd;
	struct store *store;
	unsigned sent, writes_now;
	unsigned hellos; /* CRAFT_KIND_HELLO frames sent */
	int writing;
	char last_log[CRAFT_LOG_LINE_MAX];
};

static uint64_t
e_now(void *arg)
{
	return ((struct edge *)arg)->now;
}

static uint64_t
e_wall(void *arg)
{
	return 1700000000000ull + ((struct edge *)arg)->now;
}

static uint64_t
e_random(void *arg)
{
	struct edge *e = arg;
	return 0x1000 + ++e->rnd;
}

static void
e_schedule(void *arg)
{
	(void)arg;
}

static void
e_log(void *arg, const char *line)
{
	struct edge *e = arg;
	snprintf(e->last_log, sizeof(e->last_log), "%s", line);
}

static int
e_peer_add(void *arg, const char *name, const char *addr)
{
	(void)arg, (void)name, (void)addr;
	return 0;
}

static void
e_peer_del(void *arg, const char *name)
{
	(void)arg, (void)name;
}

static int
e_connected(void *arg, const char *name)
{
	(void)arg, (void)name;
	return 0;
}

static int
e_send(void *arg, const char *name, uint32_t kind, const void *data, size_t len)
{
	(void)name, (void)data, (void)len;
	struct edge *e = arg;
	e->sent++;
	e->hellos += kind == CRAFT_KIND_HELLO;
	return 0;
}

static int
e_send_raft(void *arg, const char *name, const struct raft_msg *m)
{
	(void)name, (void)m;
	((struct edge *)arg)->sent++;
	return 0;
}

static int
e_write_start(void *arg, const struct store_batch *b, const struct store_batch *state, int sync)
{
	struct edge *e = arg;
	e->writing = 1;
	int rv = store_write(e->store, b, sync);
	return rv ? rv : store_write(e->store, state, STORE_WRITE_NOWAL);
}

static int
e_write_now(void *arg, const struct store_batch *b, int mode)
{
	struct edge *e = arg;
	e->writes_now++;
	return store_write(e->store, b, mode);
}

static int
e_digest(void *arg, struct store_view *v, const enum store_cf *cfs, size_t n,
	 struct store_digest *out)
{
	(void)arg, (void)v, (void)cfs, (void)n, (void)out;
	return -1; /* no snapshots here */
}

static bool open_auto_join;	       /* craft_config.auto_join of the next open_craft */
static unsigned open_snapshot_entries; /* craft_config.snapshot_entries of the next open_craft */

static struct craft *
open_craft(struct edge *e, const char *self)
{
	static const char *peers[] = {"n1=127.0.0.1:1", "n2=127.0.0.1:2", "n3=127.0.0.1:3"};
	struct craft_io io = {
	    .arg = e,
	    .now_ms = e_now,
	    .wall_ms = e_wall,
	    .random64 = e_random,
	    .schedule = e_schedule,
	    .log = e_log,
	    .peer_add = e_peer_add,
	    .peer_del = e_peer_del,
	    .peer_connected = e_connected,
	    .send = e_send,
	    .send_raft = e_send_raft,
	    .write_start = e_write_start,
	    .write_now = e_write_now,
	    .digest_start = e_digest,
	};
	char listen[32];
	snprintf(listen, sizeof(listen), "127.0.0.1:%c", self[1]);
	struct craft_config cfg = {.node_id = self,
				   .cluster_listen = listen,
				   .peers = peers,
				   .n_peers = 3,
				   .auto_join = open_auto_join,
				   .snapshot_entries = open_snapshot_entries};
	struct craft *c = NULL;
	int rv = craft_open(&cfg, e->store, &io, &c);
	if (rv)
		fail_msg("craft_open: %s (%s)", cluster_strerror(rv), e->last_log);
	return c;
}

static void
close_craft(struct edge *e, struct craft *c)
{
	if (e->writing) {
		e->writing = 0;
		craft_write_done(c, 0);
	}
	craft_closing(c);
	craft_free(c);
}

/* ---- the discovery decision ---- */

#define P(name, self, ans, mem, offer, same)                                                       \
	{                                                                                          \
		name, self, ans, mem, offer, same                                                  \
	}

static void
test_boot_decide(void **state)
{
	(void)state;
	struct {
		const char *what;
		int join;
		struct craft_boot_peer p[3];
		int want;
		size_t who;
	} cases[] = {
	    {"all empty, same peers: the seed (n1) bootstraps",
	     0,
	     {P("n1", 1, 0, 0, 0, 0), P("n2", 0, 1, 0, 0, 1), P("n3", 0, 1, 0, 0, 1)},
	     CRAFT_BOOT_SEED,
	     SIZE_MAX},
	    {"all empty: a non-seed waits for the seed",
	     0,
	     {P("n1", 0, 1, 0, 0, 1), P("n2", 1, 0, 0, 0, 0), P("n3", 0, 1, 0, 0, 1)},
	     CRAFT_BOOT_WAIT,
	     0},
	    {"one member has not answered: even the seed waits, naming it",
	     0,
	     {P("n1", 1, 0, 0, 0, 0), P("n2", 0, 1, 0, 0, 1), P("n3", 0, 0, 0, 0, 0)},
	     CRAFT_BOOT_WAIT,
	     2},
	    {"a member's `peers` differ: wait",
	     0,
	     {P("n1", 1, 0, 0, 0, 0), P("n2", 0, 1, 0, 0, 0), P("n3", 0, 1, 0, 0, 1)},
	     CRAFT_BOOT_WAIT,
	     1},
	    {"the seed bootstrapped and offers this node its bootstrap: adopt",
	     0,
	     {P("n1", 0, 1, 1, 1, 1), P("n2", 1, 0, 0, 0, 0), P("n3", 0, 1, 0, 0, 1)},
	     CRAFT_BOOT_ADOPT,
	     0},
	    {"a member has a cluster that does not name this incarnation: rejoin (disk replaced)",
	     0,
	     {P("n1", 0, 1, 1, 0, 1), P("n2", 1, 0, 0, 0, 0), P("n3", 0, 0, 0, 0, 0)},
	     CRAFT_BOOT_JOIN,
	     0},
	    {"the seed itself lost its disk, the others have the cluster: rejoin, never bootstrap",
	     0,
	     {P("n1", 1, 0, 0, 0, 0), P("n2", 0, 1, 1, 0, 1), P("n3", 0, 1, 1, 0, 1)},
	     CRAFT_BOOT_JOIN,
	     1},
	    {"an offer wins over a plain member",
	     0,
	     {P("n1", 0, 1, 1, 0, 1), P("n2", 1, 0, 0, 0, 0), P("n3", 0, 1, 1, 1, 1)},
	     CRAFT_BOOT_ADOPT,
	     2},
	    {"outside its own peers, all empty: never bootstraps",
	     1,
	     {P("n1", 0, 1, 0, 0, 0), P("n2", 0, 1, 0, 0, 0), P("n9", 1, 0, 0, 0, 0)},
	     CRAFT_BOOT_WAIT,
	     SIZE_MAX},
	    {"outside its own peers, a cluster answers: joins (waits for relayctl node add there)",
	     1,
	     {P("n1", 0, 1, 1, 0, 0), P("n2", 0, 0, 0, 0, 0), P("n9", 1, 0, 0, 0, 0)},
	     CRAFT_BOOT_JOIN,
	     0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t who;
		int v = craft__boot_decide(cases[i].p, 3, cases[i].join, &who);
		if (v != cases[i].want || (cases[i].want != CRAFT_BOOT_SEED && who != cases[i].who))
			fail_msg("%s: verdict %d who %zu, want %d %zu", cases[i].what, v, who,
				 cases[i].want, cases[i].who);
	}
}

static void
test_raft_id_incarnation(void **state)
{
	(void)state;
	assert_int_equal(cluster_peer_raft_id_inc("n1", 0), cluster_peer_raft_id("n1"));
	uint64_t a = cluster_peer_raft_id_inc("n1", 1), b = cluster_peer_raft_id_inc("n1", 2);
	assert_true(a != b && a != cluster_peer_raft_id("n1") && a != 0 && b != 0);
	assert_true(cluster_peer_raft_id_inc("n1", 7) != cluster_peer_raft_id_inc("n2", 7));
}

/* ---- identity ---- */

static void
test_identity(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n2");
	uint64_t inc = c->inc;
	assert_true(inc != 0);
	assert_int_equal(c->cluster_id, 0);
	assert_int_equal(c->bt.phase, CRAFT_BOOT_DISCOVER);
	assert_int_equal(craft_id(c), cluster_peer_raft_id_inc("n2", inc));
	assert_true(e.writes_now >= 1); /* the identity, written and synced at once */
	close_craft(&e, c);
	c = open_craft(&e, "n2");
	assert_int_equal(c->inc, inc); /* the same data_dir, the same incarnation */
	close_craft(&e, c);
	store_free(e.store);

	/* a store with Raft state from before incarnations: incarnation 0, the old Raft id */
	struct edge e2 = {0};
	assert_int_equal(store_mem_new(&e2.store), 0);
	struct store_batch b;
	store_batch_init(&b);
	struct raft_hard_state hs = {.term = 3, .vote = 0, .commit = 0};
	assert_int_equal(craft__hs_put(&b, &hs), 0);
	struct raft_snap_meta sm = {.index = 0, .term = 0};
	sm.conf.n_voters = 3;
	sm.conf.voters[0] = cluster_peer_raft_id("n1");
	sm.conf.voters[1] = cluster_peer_raft_id("n2");
	sm.conf.voters[2] = cluster_peer_raft_id("n3");
	assert_int_equal(craft__snap_put(&b, &sm, NULL, 0), 0);
	assert_int_equal(store_write(e2.store, &b, 1), 0);
	store_batch_fini(&b);
	c = open_craft(&e2, "n2");
	assert_int_equal(c->inc, 0);
	assert_int_equal(craft_id(c), cluster_peer_raft_id("n2"));
	assert_int_equal(c->bt.phase, CRAFT_BOOT_DONE);
	close_craft(&e2, c);
	store_free(e2.store);
}

/* ---- Peer commands and their expectations ---- */

static int
apply_peer(struct craft *c, uint64_t index, const char *node, unsigned state, int has_inc,
	   uint64_t inc, int expect, uint64_t since)
{
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = (char *)node;
	p.addr = "127.0.0.1:9";
	p.state = (Relay__PeerState)state;
	if (state == RELAY__PEER_STATE__PEER_ACTIVE) {
		if (has_inc) {
			p.has_incarnation = 1;
			p.incarnation = inc;
		} else {
			p.has_incarnation_pending = 1;
			p.incarnation_pending = 1;
		}
	}
	p.has_expect_since_index = expect;
	p.expect_since_index = since;
	return craft__apply_peer(c, index, &p);
}

static void
test_peer_expectations(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	const unsigned ACT = RELAY__PEER_STATE__PEER_ACTIVE,
		       LEAVE = RELAY__PEER_STATE__PEER_LEAVING, LEFT = RELAY__PEER_STATE__PEER_LEFT;
	/* relayctl node add n4 (its incarnation not announced yet): added, no Raft id */
	assert_int_equal(apply_peer(c, 10, "n4", ACT, 0, 0, 1, 0), 0);
	int i = craft__peer_by_name(c, "n4");
	assert_true(i >= 0 && c->ppending[i] && c->peers[i].id == 0 && c->psince[i] == 10);
	/* n4 announces itself: the leader proposes its incarnation, expecting the add */
	assert_int_equal(apply_peer(c, 12, "n4", ACT, 1, 0x44, 1, 10), 0);
	i = craft__peer_by_name(c, "n4");
	assert_true(!c->ppending[i] && c->pinc[i] == 0x44 &&
		    c->peers[i].id == cluster_peer_raft_id_inc("n4", 0x44));
	/* a late duplicate of the add (expecting the book without n4): a no-op */
	assert_int_equal(apply_peer(c, 13, "n4", ACT, 0, 0, 1, 0), CLUSTER_ESTALE);
	assert_int_equal(c->pinc[craft__peer_by_name(c, "n4")], 0x44);
	/* n4's disk is replaced: a rejoin under incarnation 0x45 replaces 0x44 */
	assert_int_equal(apply_peer(c, 20, "n4", ACT, 1, 0x45, 1, 12), 0);
	i = craft__peer_by_name(c, "n4");
	assert_true(c->pinc[i] == 0x45 && c->pprev[i] == 0x44);
	/* a late duplicate of the first rejoin (it expected index 10's entry): a no-op */
	assert_int_equal(apply_peer(c, 21, "n4", ACT, 1, 0x44, 1, 10), CLUSTER_ESTALE);
	assert_int_equal(c->pinc[craft__peer_by_name(c, "n4")], 0x45);
	/* removal: LEAVING then LEFT, each expecting the entry before it */
	assert_int_equal(apply_peer(c, 30, "n4", LEAVE, 0, 0, 1, 20), 0);
	assert_int_equal(apply_peer(c, 31, "n4", LEFT, 0, 0, 1, 30), 0);
	assert_int_equal(craft__peer_by_name(c, "n4"), -1);
	assert_int_equal(craft__member_since(c, "n4"), 31); /* a tombstone */
	/* late duplicates after the removal: the add, the rejoin, the LEAVING: all no-ops */
	assert_int_equal(apply_peer(c, 32, "n4", ACT, 0, 0, 1, 0), CLUSTER_ESTALE);
	assert_int_equal(apply_peer(c, 33, "n4", ACT, 1, 0x45, 1, 12), CLUSTER_ESTALE);
	assert_int_equal(apply_peer(c, 34, "n4", LEAVE, 0, 0, 1, 20), CLUSTER_ESTALE);
	assert_int_equal(craft__peer_by_name(c, "n4"), -1);
	/* a deliberate new add sees the tombstone and expects it: n4 is back */
	assert_int_equal(apply_peer(c, 40, "n4", ACT, 0, 0, 1, 31), 0);
	assert_true(craft__peer_by_name(c, "n4") >= 0);
	/* a late LEFT of the first removal does not forget the re-added member */
	assert_int_equal(apply_peer(c, 41, "n4", LEFT, 0, 0, 1, 30), CLUSTER_ESTALE);
	assert_true(craft__peer_by_name(c, "n4") >= 0);
	/* commands from before expectations (none set) apply as they always did */
	assert_int_equal(apply_peer(c, 50, "n5", ACT, 1, 0, 0, 0), 0);
	i = craft__peer_by_name(c, "n5");
	assert_true(i >= 0 && c->peers[i].id == cluster_peer_raft_id("n5"));
	/* the book with its tombstones survives a restart (stored with the applies) */
	assert_int_equal(store_write(e.store, &c->next, 1), 0);
	store_batch_clear(&c->next);
	close_craft(&e, c);
	c = open_craft(&e, "n1");
	i = craft__peer_by_name(c, "n4");
	assert_true(i >= 0 && c->psince[i] == 40);
	assert_int_equal(apply_peer(c, 60, "n4", LEAVE, 0, 0, 1, 40), 0);
	assert_int_equal(apply_peer(c, 61, "n4", LEFT, 0, 0, 1, 60), 0);
	assert_int_equal(store_write(e.store, &c->next, 1), 0);
	store_batch_clear(&c->next);
	close_craft(&e, c);
	c = open_craft(&e, "n1");
	assert_int_equal(craft__member_since(c, "n4"), 61);
	assert_int_equal(apply_peer(c, 62, "n4", ACT, 0, 0, 1, 40), CLUSTER_ESTALE);
	close_craft(&e, c);
	store_free(e.store);
}

/* What the log set for node in c's book, as text: two nodes that applied the same commands must
 * agree on it whatever each knew locally (from `peers` or a Hello reply) beforehand. */
static void
book_sig(struct craft *c, const char *node, char *out, size_t n)
{
	int i = craft__peer_by_name(c, node);
	if (i >= 0 && !c->plocal[i])
		snprintf(out, n,
			 "%s state=%u since=%llu inc=%s%llx prev=%llx addr=%s member_since=%llu",
			 node, c->pstate[i], (unsigned long long)c->psince[i],
			 c->ppending[i] ? "pending:" : "", (unsigned long long)c->pinc[i],
			 (unsigned long long)c->pprev[i], c->peers[i].addr,
			 (unsigned long long)craft__member_since(c, node));
	else
		snprintf(out, n, "%s none member_since=%llu", node,
			 (unsigned long long)craft__member_since(c, node));
}

static void
same_books(struct craft *a, struct craft *b, const char *when)
{
	static const char *nodes[] = {"n3", "n4", "n5"};
	for (size_t k = 0; k < sizeof(nodes) / sizeof(nodes[0]); k++) {
		char sa[256], sb[256];
		book_sig(a, nodes[k], sa, sizeof(sa));
		book_sig(b, nodes[k], sb, sizeof(sb));
		if (strcmp(sa, sb))
			fail_msg("%s: the books differ\n  n1: %s\n  n2: %s", when, sa, sb);
	}
}

/* Applies one Peer command on both nodes: the same status, the same book after. */
static int
apply_both(struct craft *a, struct craft *b, uint64_t index, const char *node, const char *addr,
	   unsigned state, int has_inc, uint64_t inc, int local, const char *when)
{
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = (char *)node;
	p.addr = (char *)addr;
	p.state = (Relay__PeerState)state;
	if (state == RELAY__PEER_STATE__PEER_ACTIVE) {
		if (has_inc) {
			p.has_incarnation = 1;
			p.incarnation = inc;
		} else {
			p.has_incarnation_pending = 1;
			p.incarnation_pending = 1;
		}
	}
	if (local) {
		p.has_local = 1;
		p.local = 1;
	}
	/* what its proposer expects: the entry the log set, which both nodes agree on */
	p.has_expect_since_index = !local;
	p.expect_since_index = craft__member_since(a, node);
	int ra = craft__apply_peer(a, index, &p), rb = craft__apply_peer(b, index, &p);
	if (ra != rb)
		fail_msg("%s: n1 says %s, n2 says %s", when, cluster_strerror(ra),
			 cluster_strerror(rb));
	same_books(a, b, when);
	return ra;
}

/* A Peer command's effect depends only on what the log set: n1 knows n4 locally (discovered
 * from a Hello reply, with the incarnation its frames carried) and n3 from `peers`; n2 knows
 * neither.  Before, a LEAVING made n1's local entry a logged one n2 never had, a LEFT left a
 * tombstone on n1 only, and an add kept n1's heard incarnation where n2 waited for one. */
static void
test_peer_local_entries(void **state)
{
	(void)state;
	struct edge ea = {0}, eb = {0};
	assert_int_equal(store_mem_new(&ea.store), 0);
	assert_int_equal(store_mem_new(&eb.store), 0);
	struct craft *a = open_craft(&ea, "n1"), *b = open_craft(&eb, "n2");
	const unsigned ACT = RELAY__PEER_STATE__PEER_ACTIVE,
		       LEAVE = RELAY__PEER_STATE__PEER_LEAVING, LEFT = RELAY__PEER_STATE__PEER_LEFT;
	assert_true(craft__book_add(a, "n4", "127.0.0.1:4", ACT, 1, 0x44, 0) >= 0);
	craft__book_del(b, (size_t)craft__peer_by_name(b, "n3"));
	same_books(a, b, "start");
	/* a LEAVING for a member the log never set: no member, on both */
	assert_int_equal(apply_both(a, b, 10, "n4", "", LEAVE, 0, 0, 0, "leaving n4"),
			 CLUSTER_ENOMEMBER);
	/* an add with an empty address: refused on both */
	assert_int_equal(apply_both(a, b, 11, "n4", "", ACT, 1, 0x44, 0, "add n4, no address"),
			 CLUSTER_EBADADDR);
	/* a LEFT: a tombstone on both */
	assert_int_equal(apply_both(a, b, 12, "n4", "", LEFT, 0, 0, 0, "n4 left"), 0);
	assert_int_equal(craft__member_since(b, "n4"), 12);
	assert_int_equal(craft__peer_by_name(a, "n4"), -1);
	/* n1 discovers n4 again: the tombstone still rules on n1 */
	assert_true(craft__book_add(a, "n4", "127.0.0.1:4", ACT, 1, 0x44, 0) >= 0);
	same_books(a, b, "n4 discovered again");
	/* relayctl node add n4 (its incarnation pending): pending on both, n1's heard one gone */
	assert_int_equal(apply_both(a, b, 20, "n4", "127.0.0.1:44", ACT, 0, 0, 0, "add n4"), 0);
	/* n4 announces itself */
	assert_int_equal(apply_both(a, b, 21, "n4", "127.0.0.1:44", ACT, 1, 0x45, 0, "n4 inc"), 0);
	/* the leader publishes n3 (known from `peers` only) with an incarnation n1 heard
	 * differently: the same entry on both, no replaced incarnation on n1 */
	int i3 = craft__peer_by_name(a, "n3");
	craft__book_set_inc(a, (size_t)i3, 0x33);
	assert_int_equal(apply_both(a, b, 30, "n3", "127.0.0.1:3", ACT, 1, 0x34, 1, "publish n3"),
			 0);
	/* from now on n3 is logged on both: LEAVING and LEFT apply on both */
	assert_int_equal(apply_both(a, b, 31, "n3", "", LEAVE, 0, 0, 0, "leaving n3"), 0);
	assert_int_equal(apply_both(a, b, 32, "n3", "", LEFT, 0, 0, 0, "n3 left"), 0);
	/* a LEFT for a node nobody knew: a tombstone on both (a later add must expect it) */
	assert_int_equal(apply_both(a, b, 40, "n5", "", LEFT, 0, 0, 0, "n5 left"), 0);
	assert_int_equal(craft__member_since(a, "n5"), 40);
	close_craft(&ea, a);
	close_craft(&eb, b);
	store_free(ea.store);
	store_free(eb.store);
}

/* A snapshot's book marks n4 left: a local entry for it goes, its tombstone comes, as if the
 * LEFT had applied here. */
static void
test_book_replace_left(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	assert_true(craft__book_add(c, "n4", "127.0.0.1:4", RELAY__PEER_STATE__PEER_ACTIVE, 1, 0x44,
				    0) >= 0);
	struct craft_book bk = {0};
	bk.n = 2;
	snprintf(bk.e[0].node, sizeof(bk.e[0].node), "n2");
	snprintf(bk.e[0].addr, sizeof(bk.e[0].addr), "127.0.0.1:2");
	bk.e[0].state = RELAY__PEER_STATE__PEER_ACTIVE;
	bk.e[0].inc = 0x22;
	bk.e[0].since = 5;
	snprintf(bk.e[1].node, sizeof(bk.e[1].node), "n4");
	bk.e[1].state = RELAY__PEER_STATE__PEER_LEFT;
	bk.e[1].since = 9;
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(craft__book_replace(c, &bk, &b), 0);
	store_batch_fini(&b);
	assert_int_equal(craft__peer_by_name(c, "n4"), -1);
	assert_int_equal(craft__member_since(c, "n4"), 9);
	int i2 = craft__peer_by_name(c, "n2");
	assert_true(i2 >= 0 && !c->plocal[i2] && c->psince[i2] == 5 && c->pinc[i2] == 0x22);
	close_craft(&e, c);
	store_free(e.store);
}

/* Issue 11, section 4: a snapshot fetch records the serving node's applied index (8 here), past
 * what this node's log holds as committed (5): at the next open the core must not take entries
 * 6..8 of its own log as committed (they may be a deposed leader's, to be replaced), while the
 * queue, durable at 8, skips them when they come back committed. */
static void
test_applied_past_commit(void)
{
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct store_batch b;
	store_batch_init(&b);
	struct raft_hard_state hs = {.term = 3, .vote = 0, .commit = 5};
	assert_int_equal(craft__hs_put(&b, &hs), 0);
	for (uint64_t i = 1; i <= 10; i++) {
		struct store_entry se = {
		    .index = i, .term = i <= 5 ? 1 : 2, .type = STORE_ENTRY_NOOP};
		assert_int_equal(store_log_append(&b, &se), 0);
	}
	assert_int_equal(store_applied_put(&b, 8), 0);
	assert_int_equal(store_write(e.store, &b, 1), 0);
	store_batch_fini(&b);
	struct craft *c = open_craft(&e, "n2");
	struct raft_status rs;
	raft_status(craft_raft(c), &rs);
	assert_int_equal(rs.commit, 5);
	assert_int_equal(rs.applied, 5);
	assert_int_equal(rs.last_index, 10);
	assert_int_equal(craft_applied(c), 8);
	close_craft(&e, c);
	store_free(e.store);
}

static void
test_applied_past_commit_case(void **state)
{
	(void)state;
	test_applied_past_commit();
}

/* Frames carry the sender's cluster id: another cluster's are dropped (counted); 0 (a node that
 * knows none yet: discovering, or a store from before cluster ids) passes; so do unknown
 * senders not (the transport admits only members, craft checks again). */
/* snapshot_entries above CLUSTER_MAX_SNAPSHOT_ENTRIES is used as that (logged), and the core's
 * in-memory log holds twice as many entries: a snapshot comes long before the log fills (a
 * larger interval stopped a cluster for good at 65,536 entries: the log full, proposals refused,
 * nothing compacted). */
static void
test_snapshot_entries_bound(void **state)
{
	(void)state;
	static const unsigned cases[][2] = {
	    {0, CLUSTER_DEFAULT_SNAPSHOT_ENTRIES},
	    {16, 16},
	    {CLUSTER_MAX_SNAPSHOT_ENTRIES, CLUSTER_MAX_SNAPSHOT_ENTRIES},
	    {CLUSTER_MAX_SNAPSHOT_ENTRIES + 1, CLUSTER_MAX_SNAPSHOT_ENTRIES},
	    {1000000, CLUSTER_MAX_SNAPSHOT_ENTRIES},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct edge e = {0};
		assert_int_equal(store_mem_new(&e.store), 0);
		open_snapshot_entries = cases[i][0];
		struct craft *c = open_craft(&e, "n1");
		open_snapshot_entries = 0;
		assert_int_equal(c->snapshot_entries, cases[i][1]);
		assert_int_equal(c->rcfg.max_log_entries, CLUSTER_LOG_ENTRIES);
		assert_true(c->rcfg.max_log_entries >= 2 * c->snapshot_entries);
		close_craft(&e, c);
		store_free(e.store);
	}
}

/* Each node's snapshot interval is snapshot_entries less up to a quarter, different per node
 * and per interval, so the nodes of a cluster do not digest and compact at the same moment
 * (spread on, as relayd runs); exactly snapshot_entries with spread off. */
static void
test_snapshot_spread(void **state)
{
	(void)state;
	static const char *names[] = {"n1", "n2", "n3"};
	static const unsigned intervals[] = {16, 8192, CLUSTER_MAX_SNAPSHOT_ENTRIES};
	for (size_t k = 0; k < sizeof(intervals) / sizeof(intervals[0]); k++) {
		uint64_t seq[3][64];
		for (int i = 0; i < 3; i++) {
			/* the edges' random64 counts up from a different point on each node */
			struct edge e = {.rnd = (uint64_t)i * 7919};
			assert_int_equal(store_mem_new(&e.store), 0);
			open_snapshot_entries = intervals[k];
			struct craft *c = open_craft(&e, names[i]);
			open_snapshot_entries = 0;
			uint64_t n = intervals[k], lo = n - n / 4, distinct = 0;
			for (uint64_t j = 0; j < 64; j++) {
				c->snapshot_spread = 0;
				craft__snap_draw(c);
				assert_int_equal(c->snap_every, n);
				c->snapshot_spread = 1;
				craft__snap_draw(c);
				seq[i][j] = c->snap_every;
				assert_true(seq[i][j] >= lo && seq[i][j] <= n);
				int seen = 0;
				for (uint64_t x = 0; x < j; x++)
					seen |= seq[i][x] == seq[i][j];
				distinct += !seen;
			}
			/* it varies from one interval to the next (5 values at 16, more above) */
			assert_true(distinct >= (n >= 64 ? 16u : 4u));
			close_craft(&e, c);
			store_free(e.store);
		}
		/* and between the nodes: the same interval rarely has the same length on two */
		for (int a = 0; a < 3; a++)
			for (int b = a + 1; b < 3; b++) {
				unsigned same = 0;
				for (int j = 0; j < 64; j++)
					same += seq[a][j] == seq[b][j];
				assert_true(same < (intervals[k] >= 64 ? 8u : 32u));
			}
	}
}

/* Any node, not only the leader, keeps its log after the view it served a member a fetch from,
 * while that member fetches and for CRAFT_RETAIN_SILENT_ELECTIONS election timeouts after the
 * last chunk, within the retention bounds: a follower that served a fetch and then won an
 * election had compacted past the view, and the member fetched the whole queue again (host_sim
 * --seed 8100033 --nodes 3 --steps 1000000 --pauses). */
static void
test_retain_served(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	size_t pi = SIZE_MAX;
	for (size_t i = 0; i < c->n_peers; i++)
		if (!strcmp(c->peers[i].name, "n2"))
			pi = i;
	assert_true(pi < c->n_peers);
	c->durable_applied = 100;
	assert_int_equal(craft__retain(c), 0); /* nobody served */
	c->pserved[pi] = 50;
	c->pserved_ms[pi] = e.now;
	assert_int_equal(craft__retain(c), 1);
	assert_int_equal(c->counters.snapshots_deferred, 1);
	assert_non_null(strstr(e.last_log, "event=snapshot-deferred member=n2 needs=50"));
	e.now += c->retain_silent_ms - 1;
	assert_int_equal(craft__retain(c), 1);
	e.now += 1; /* the member is silent for the whole window: it gets a snapshot when back */
	assert_int_equal(craft__retain(c), 0);
	c->pserved_ms[pi] = e.now;
	c->pserved[pi] = 100; /* the view is at the applied index: nothing to keep */
	assert_int_equal(craft__retain(c), 0);
	c->pserved[pi] = 50;
	c->log_bytes = CRAFT_RETAIN_LOG_BYTES; /* beyond the bound: compacted anyway */
	uint64_t exceeded = c->counters.retention_exceeded;
	assert_int_equal(craft__retain(c), 0);
	assert_int_equal(c->counters.retention_exceeded, exceeded + 1);
	assert_non_null(strstr(e.last_log, "event=retention-exceeded member=n2"));
	close_craft(&e, c);
	store_free(e.store);
}

static void
test_foreign_cluster(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	assert_int_equal(craft_recv_env(c, "n2", 0x77, 5), 0); /* none known yet: any passes */
	c->cluster_id = 0x55;
	assert_int_equal(craft_recv_env(c, "n2", 0x77, 5), -1);
	assert_int_equal(craft_recv_env(c, "n2", 0x55, 5), 0);
	assert_int_equal(craft_recv_env(c, "n2", 0, 5), 0);
	assert_int_equal(craft_recv_env(c, "n9", 0x55, 5), -1);
	struct cluster_status st;
	craft_status(c, &st);
	assert_int_equal(st.foreign_dropped, 1);
	assert_int_equal(st.cluster_id, 0x55);
	assert_string_equal(st.boot_phase, "discovering");
	/* a cluster from before cluster ids gets one through the log, once */
	c->cluster_id = 0;
	Relay__ClusterId cl = RELAY__CLUSTER_ID__INIT;
	cl.cluster_id = 0x66;
	assert_int_equal(craft__apply_cluster_id(c, 9, &cl), 0);
	assert_int_equal(c->cluster_id, 0x66);
	cl.cluster_id = 0x67; /* a second proposal (another leader's) changes nothing */
	assert_int_equal(craft__apply_cluster_id(c, 10, &cl), 0);
	assert_int_equal(c->cluster_id, 0x66);
	cl.cluster_id = 0;
	assert_int_equal(craft__apply_cluster_id(c, 11, &cl), CLUSTER_EINVAL);
	craft_status(c, &st);
	assert_int_equal(st.cluster_id, 0x66);
	close_craft(&e, c);
	store_free(e.store);
}

/* A frame from a sender this node's book lacks, carrying this cluster's id (a member added
 * while this node was away): the node asks the members it knows (not those that left) who the
 * members are, at most once per retry_ms; another cluster's id asks nothing. Only a member
 * answering with this cluster's id is believed: the members it names are added to the book. */
static void
reply_members(struct craft *c, const char *from, uint64_t cluster_id, const char *node,
	      const char *addr)
{
	Relay__Peer mp = RELAY__PEER__INIT;
	mp.node = (char *)node;
	mp.addr = (char *)addr;
	mp.state = RELAY__PEER_STATE__PEER_ACTIVE;
	mp.has_incarnation = 1;
	mp.incarnation = 7;
	Relay__Peer *mpp[1] = {&mp};
	Relay__HelloReply r = RELAY__HELLO_REPLY__INIT;
	r.node = (char *)from;
	r.state = RELAY__NODE_STATE__NODE_MEMBER;
	r.has_cluster_id = cluster_id != 0;
	r.cluster_id = cluster_id;
	r.n_members = 1;
	r.members = mpp;
	unsigned char buf[CRAFT_HELLO_MAX];
	size_t len = relay__hello_reply__get_packed_size(&r);
	assert_true(len <= sizeof(buf));
	relay__hello_reply__pack(&r, buf);
	craft__recv_hello_reply(c, (size_t)craft__peer_by_name(c, from), buf, len);
}

static void
test_ask_book(void **state)
{
	(void)state;
	struct edge e = {.now = 1000};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	c->cluster_id = 0x55;
	/* still discovering: the boot exchange asks already, nothing extra */
	assert_int_equal(craft_recv_env(c, "n4", 0x55, 3), -1);
	assert_int_equal(e.hellos, 0);
	c->bt.phase = CRAFT_BOOT_DONE;
	assert_int_equal(craft_recv_env(c, "n4", 0x77, 3), -1); /* another cluster's */
	assert_int_equal(e.hellos, 0);
	assert_int_equal(craft_recv_env(c, "n4", 0, 3), -1); /* knows no cluster */
	assert_int_equal(e.hellos, 0);
	assert_int_equal(craft_recv_env(c, "n4", 0x55, 3), -1);
	assert_int_equal(e.hellos, 2); /* n2 and n3 */
	assert_non_null(strstr(e.last_log, "event=unknown-member from=n4"));
	e.now += c->retry_ms - 1; /* a flood of frames asks once per retry_ms */
	assert_int_equal(craft_recv_env(c, "n4", 0x55, 3), -1);
	assert_int_equal(e.hellos, 2);
	c->pstate[craft__peer_by_name(c, "n3")] = RELAY__PEER_STATE__PEER_LEFT;
	e.now += 1;
	assert_int_equal(craft_recv_env(c, "n4", 0x55, 3), -1);
	assert_int_equal(e.hellos, 3); /* n2 only: n3 left */
	/* answers: a member of another cluster, a node that is no member, then this cluster's */
	reply_members(c, "n2", 0x77, "n4", "127.0.0.1:4");
	assert_true(craft__peer_by_name(c, "n4") < 0);
	reply_members(c, "n2", 0, "n4", "127.0.0.1:4");
	assert_true(craft__peer_by_name(c, "n4") < 0);
	reply_members(c, "n2", 0x55, "n4", "127.0.0.1:4");
	int pi = craft__peer_by_name(c, "n4");
	assert_true(pi >= 0);
	assert_string_equal(c->peers[pi].addr, "127.0.0.1:4");
	assert_non_null(strstr(e.last_log, "event=discover-member node=n4"));
	assert_int_equal(craft_recv_env(c, "n4", 0x55, 7), 0); /* its frames are taken now */
	/* an invalid member in a believed answer is skipped */
	reply_members(c, "n2", 0x55, "n5", "");
	assert_true(craft__peer_by_name(c, "n5") < 0);
	close_craft(&e, c);
	store_free(e.store);
}

static size_t
pack_rejoin(unsigned char *buf, size_t cap, const char *node, uint32_t hops)
{
	Relay__Rejoin j = RELAY__REJOIN__INIT;
	j.node = (char *)node;
	j.incarnation = 0x99;
	j.addr = "127.0.0.1:4";
	j.has_hops = hops != 0;
	j.hops = hops;
	size_t len = relay__rejoin__get_packed_size(&j);
	assert_true(len <= cap);
	relay__rejoin__pack(&j, buf);
	return len;
}

/* auto_join: a sender outside the book is a stranger (its items go to craft_recv_stranger) only
 * with auto_join on and a cluster id of none or ours; a stranger may send only a Rejoin naming
 * itself, not forwarded; a member that is not the leader forwards it to the leader. */
static void
test_auto_join_stranger(void **state)
{
	(void)state;
	struct cluster_status st;
	unsigned char buf[CRAFT_HELLO_MAX];
	for (int on = 0; on <= 1; on++) {
		struct edge e = {.now = 1000};
		assert_int_equal(store_mem_new(&e.store), 0);
		open_auto_join = on;
		struct craft *c = open_craft(&e, "n1");
		open_auto_join = false;
		c->cluster_id = 0x55;
		c->bt.phase = CRAFT_BOOT_DONE;
		int want = on ? CRAFT_ENV_STRANGER : -1;
		assert_int_equal(craft_recv_env(c, "n4", 0, 1), want);
		assert_int_equal(craft_recv_env(c, "n4", 0x55, 1), want);
		assert_int_equal(craft_recv_env(c, "n4", 0x77, 1), -1); /* another cluster's */
		assert_int_equal(craft_recv_env(c, "n2", 0x55, 1), 0);	/* a member */
		craft_status(c, &st);
		uint64_t dropped = st.raft_dropped;
		unsigned sent = e.sent;
		/* what a stranger may not send: anything but a Rejoin; a Rejoin naming another
		 * node, or forwarded (hops) */
		craft_recv_stranger(c, "n4", CRAFT_KIND_HELLO, buf,
				    pack_rejoin(buf, sizeof(buf), "n4", 0));
		craft_recv_stranger(c, "n4", CRAFT_KIND_REJOIN, buf,
				    pack_rejoin(buf, sizeof(buf), "n5", 0));
		craft_recv_stranger(c, "n4", CRAFT_KIND_REJOIN, buf,
				    pack_rejoin(buf, sizeof(buf), "n4", 1));
		craft_recv_stranger(c, "n2", CRAFT_KIND_REJOIN, buf, /* a member is no stranger */
				    pack_rejoin(buf, sizeof(buf), "n2", 0));
		craft_status(c, &st);
		assert_int_equal(st.raft_dropped, dropped + 4);
		assert_int_equal(e.sent, sent);
		/* its own request, at a member following n2: forwarded to n2 (auto_join only) */
		c->lead = c->peers[craft__peer_by_name(c, "n2")].id;
		craft_recv_stranger(c, "n4", CRAFT_KIND_REJOIN, buf,
				    pack_rejoin(buf, sizeof(buf), "n4", 0));
		craft_status(c, &st);
		assert_int_equal(e.sent, sent + (unsigned)on);
		assert_int_equal(st.raft_dropped, dropped + 4 + (unsigned)!on);
		close_craft(&e, c);
		store_free(e.store);
	}
}

/* A forward's age bound: now - (stamp - 1) from the leader's own clock, against the origin's
 * remaining budget; no stamp, or a stamp ahead of this clock, is dropped too. */
static void
test_forward_expired(void **state)
{
	(void)state;
	struct edge e = {0};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	static const struct {
		uint64_t now, stamp, budget;
		int expired;
	} t[] = {
	    {10000, 9951, 3000, 0},  /* sent within 50 ms of the leader's heartbeat */
	    {10000, 7002, 3000, 0},  /* 2999 ms (stamp: clock + 1): within */
	    {10000, 7001, 3000, 1},  /* 3000 ms: the origin may have answered 451 */
	    {20000, 9951, 3000, 1},  /* waited 10 s in a cut link */
	    {10000, 9951, 0, 1},     /* sent with nothing left */
	    {10000, 0, 3000, 1},     /* no stamp */
	    {10000, 10002, 3000, 1}, /* ahead of this clock: another process's */
	    {10000, 10001, 3000, 0}, /* this very millisecond */
	};
	uint64_t expired = 0;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		unsigned char hdr[CRAFT_FWD_HDR];
		store_u64_encode(t[i].stamp, hdr);
		store_u64_encode(t[i].budget, hdr + 8);
		e.now = t[i].now;
		int got = craft__forward_expired(c, craft__peer_by_name(c, "n2"), hdr);
		if (got != t[i].expired)
			fail_msg("case %zu: expired=%d, want %d", i, got, t[i].expired);
		expired += (uint64_t)got;
	}
	struct cluster_status st;
	craft_status(c, &st);
	assert_int_equal(st.forwards_expired, expired);
	assert_non_null(strstr(e.last_log, "event=forward-expired from=n2"));
	close_craft(&e, c);
	store_free(e.store);
}

/* The leader refuses a forwarded Renew from a node out of its configuration (removed), so that
 * node's lease lapses and the REMOVED verdict comes (ownership.h); any other command from it,
 * and a Renew from a member (voter or learner), is proposed (raft_sim --seed 1082597075). */
static void
test_renew_refused(void **state)
{
	(void)state;
	struct edge e = {.now = 1000};
	assert_int_equal(store_mem_new(&e.store), 0);
	struct craft *c = open_craft(&e, "n1");
	uint64_t n1 = 0x11, n2 = 0x22, n3 = 0x33; /* raft ids (incarnations): set here */
	c->peers[craft__peer_by_name(c, "n1")].id = n1;
	c->peers[craft__peer_by_name(c, "n2")].id = n2;
	c->peers[craft__peer_by_name(c, "n3")].id = n3;
	struct raft_conf conf = {.n_voters = 1, .n_learners = 1};
	conf.voters[0] = n1;
	conf.learners[0] = n3;
	Relay__Renew rn = RELAY__RENEW__INIT;
	rn.node = "n2";
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
	cmd.renew = &rn;
	cmd.has_origin_node = 1;
	cmd.origin_node = n2;
	assert_int_equal(craft__renew_refused(c, &conf, &cmd), 1);
	assert_non_null(strstr(e.last_log, "event=renew-refused from=n2"));
	e.last_log[0] = 0;
	assert_int_equal(craft__renew_refused(c, &conf, &cmd), 1); /* logged now and then */
	assert_int_equal(e.last_log[0], 0);
	cmd.origin_node = n3; /* a learner renews */
	assert_int_equal(craft__renew_refused(c, &conf, &cmd), 0);
	cmd.origin_node = n1;
	assert_int_equal(craft__renew_refused(c, &conf, &cmd), 0);
	Relay__Member mb = RELAY__MEMBER__INIT; /* not a Renew: proposed */
	mb.node = "n2";
	Relay__Command other = RELAY__COMMAND__INIT;
	other.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	other.member = &mb;
	other.has_origin_node = 1;
	other.origin_node = n2;
	assert_int_equal(craft__renew_refused(c, &conf, &other), 0);
	struct cluster_status st;
	craft_status(c, &st);
	assert_int_equal(st.renews_refused, 2);
	close_craft(&e, c);
	store_free(e.store);
}

int
main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_boot_decide),
	    cmocka_unit_test(test_raft_id_incarnation),
	    cmocka_unit_test(test_identity),
	    cmocka_unit_test(test_peer_expectations),
	    cmocka_unit_test(test_peer_local_entries),
	    cmocka_unit_test(test_book_replace_left),
	    cmocka_unit_test(test_snapshot_entries_bound),
	    cmocka_unit_test(test_snapshot_spread),
	    cmocka_unit_test(test_retain_served),
	    cmocka_unit_test(test_foreign_cluster),
	    cmocka_unit_test(test_applied_past_commit_case),
	    cmocka_unit_test(test_forward_expired),
	    cmocka_unit_test(test_renew_refused),
	    cmocka_unit_test(test_ask_book),
	    cmocka_unit_test(test_auto_join_stranger),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
