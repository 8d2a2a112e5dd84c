/*
 * test_cluster_raft.c - three replicated clusters (cluster_raft.c) on one libuv loop, with real
 * transports on 127.0.12.1-3 (plain tcp) and real RocksDB stores in temporary directories.
 *
 * Shows: a leader is elected; proposals on the leader and on both followers are applied on all
 * three nodes, identically (queue digest), each callback exactly once with status 0; closing
 * the leader elects another and proposals go on; a node restarted from its directory catches
 * up; alone, a node's proposals time out (CLUSTER_ETIMEDOUT, once each), and proposals made
 * before any leader exists commit once one is elected; a node whose data dir was wiped while the
 * others compacted their log catches up by snapshot, and restarts from it; malformed frames from a
 * peer (batches cut short, lengths past the end, nested batches, junk Raft messages and proposals)
 * are dropped and counted. Waiting is "run the loop until a condition holds, with a deadline",
 * never a sleep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <ftw.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "cluster.h"
#include "cluster_int.h"
#include "peers.h"
#include "queue_fsm.h"
#include "transport.h"

#define DEADLINE_MS 30000
#define BODY_LEN 2048
#define NODES 3
#define MAXP 4096

struct node {
	char name[8];
	char dir[64];
	struct cluster *c;
};

struct fx {
	uv_loop_t loop;
	uv_timer_t tick;
	char peers_buf[NODES][64];
	const char *peers[NODES];
	char listen[NODES][32];
	struct node n[NODES];
	unsigned snapshot_entries;
	unsigned propose_fail_ms;
};

static int
rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

/* A free TCP port on 127.0.12.1 (then used on 127.0.12.1-3). */
static int
free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.12.1", &a.sin_addr);
	socklen_t l = sizeof(a);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || getsockname(s, (void *)&a, &l))
		return -1;
	close(s);
	return ntohs(a.sin_port);
}

static void
tick_cb(uv_timer_t *t)
{
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	int port = free_port();
	if (port <= 0)
		return -1;
	for (int i = 0; i < NODES; i++) {
		snprintf(f->n[i].name, sizeof(f->n[i].name), "n%d", i + 1);
		strcpy(f->n[i].dir, "/tmp/relay-craft-XXXXXX");
		if (!mkdtemp(f->n[i].dir))
			return -1;
		snprintf(f->listen[i], sizeof(f->listen[i]), "127.0.12.%d:%d", i + 1, port);
		snprintf(f->peers_buf[i], sizeof(f->peers_buf[i]), "n%d=127.0.12.%d:%d", i + 1,
			 i + 1, port);
		f->peers[i] = f->peers_buf[i];
	}
	uv_loop_init(&f->loop);
	uv_timer_init(&f->loop, &f->tick);
	f->snapshot_entries = 100000;
	f->propose_fail_ms = 20000;
	*state = f;
	return 0;
}

static void
close_done(void *arg)
{
	(*(unsigned *)arg)++;
}

static void
run_until_flag(struct fx *f, const unsigned *flag, unsigned want)
{
	uv_update_time(&f->loop);
	uint64_t end = uv_now(&f->loop) + DEADLINE_MS;
	uv_timer_start(&f->tick, tick_cb, 5, 5);
	while (*flag < want) {
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) > end)
			fail_msg("deadline: %u of %u", *flag, want);
	}
	uv_timer_stop(&f->tick);
}

static void
node_close(struct fx *f, int i)
{
	unsigned closed = 0;
	cluster_close(f->n[i].c, close_done, &closed);
	assert_int_equal(closed, 0);
	run_until_flag(f, &closed, 1);
	f->n[i].c = NULL;
}

static int
teardown(void **state)
{
	struct fx *f = *state;
	for (int i = 0; i < NODES; i++)
		if (f->n[i].c)
			node_close(f, i);
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < NODES; i++)
		nftw(f->n[i].dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void
node_open(struct fx *f, int i)
{
	struct cluster_config cfg = {
	    .node_id = f->n[i].name,
	    .data_dir = f->n[i].dir,
	    .cluster_listen = f->listen[i],
	    .peers = f->peers,
	    .n_peers = NODES,
	    .election_timeout_ms = 300,
	    .heartbeat_ms = 30,
	    .propose_fail_ms = f->propose_fail_ms,
	    .retry_ms = 1000,
	    .snapshot_entries = f->snapshot_entries,
	};
	int rv = cluster_open(&f->loop, &cfg, &f->n[i].c);
	if (rv)
		fail_msg("cluster_open %s: %s", f->n[i].name, cluster_strerror(rv));
	assert_non_null(cluster__raft_of(f->n[i].c));
}

/* Runs the loop until cond(f) or the deadline. */
static void
run_until(struct fx *f, int (*cond)(struct fx *, void *), void *arg, const char *what)
{
	uv_update_time(&f->loop);
	uint64_t end = uv_now(&f->loop) + DEADLINE_MS;
	uv_timer_start(&f->tick, tick_cb, 5, 5);
	while (!cond(f, arg)) {
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) > end)
			fail_msg("deadline: %s", what);
	}
	uv_timer_stop(&f->tick);
}

/* The index of the node every open node agrees is the leader, or -1. */
static int
leader_of(struct fx *f)
{
	int lead = -1;
	for (int i = 0; i < NODES; i++) {
		if (!f->n[i].c)
			continue;
		struct cluster_status st;
		cluster_status(f->n[i].c, &st);
		if (!st.leader[0])
			return -1;
		int li = st.leader[1] - '1';
		if (li < 0 || li >= NODES || !f->n[li].c || (lead >= 0 && lead != li))
			return -1;
		lead = li;
	}
	if (lead < 0)
		return -1;
	struct cluster_status st;
	cluster_status(f->n[lead].c, &st);
	return strcmp(st.role, "leader") ? -1 : lead;
}

static int
have_leader(struct fx *f, void *arg)
{
	return leader_of(f) >= 0;
}

/* ---- proposals ---- */

struct done {
	unsigned calls[MAXP];
	int status[MAXP];
	unsigned total, ok;
};

struct pctx {
	struct done *d;
	unsigned i;
};
static struct pctx ctxs[MAXP];

static void
prop_cb(void *arg, int status)
{
	struct pctx *p = arg;
	p->d->calls[p->i]++;
	p->d->status[p->i] = status;
	p->d->total++;
	if (status == 0)
		p->d->ok++;
}

struct cmdbuf {
	Relay__Command cmd;
	Relay__Accept acc;
	Relay__Recipient r;
	Relay__Recipient *rp;
	char id[32];
	uint8_t body[BODY_LEN];
};

static void
make_cmd(struct cmdbuf *b, unsigned i)
{
	memset(b, 0, sizeof(*b));
	relay__command__init(&b->cmd);
	relay__accept__init(&b->acc);
	relay__recipient__init(&b->r);
	b->rp = &b->r;
	snprintf(b->id, sizeof(b->id), "Q%06u", i);
	b->r.addr = "user@example.org";
	b->acc.queue_id = b->id;
	b->acc.mail_from = "sender@example.com";
	b->acc.n_rcpts = 1;
	b->acc.rcpts = &b->rp;
	for (size_t k = 0; k < BODY_LEN; k++)
		b->body[k] = (uint8_t)('a' + (i + k) % 26);
	b->acc.body.data = b->body;
	b->acc.body.len = BODY_LEN;
	b->acc.received_ms = 1700000000000ull + i;
	b->cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	b->cmd.accept = &b->acc;
}

static void
propose_range(struct fx *f, int node, struct done *d, unsigned from, unsigned to)
{
	for (unsigned i = from; i < to; i++) {
		struct cmdbuf b;
		make_cmd(&b, i);
		ctxs[i] = (struct pctx){d, i};
		int rv = cluster_propose(f->n[node].c, &b.cmd, prop_cb, &ctxs[i]);
		if (rv)
			fail_msg("propose %u on %s: %s", i, f->n[node].name, cluster_strerror(rv));
	}
}

struct want_done {
	unsigned want;
	struct done *d;
};

static int
done_reached(struct fx *f, void *arg)
{
	struct want_done *w = arg;
	return w->d->total >= w->want;
}

/* Every open node holds want messages and the same queue digest. */
static int
converged(struct fx *f, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	uint64_t dg = 0;
	int first = 1;
	for (int i = 0; i < NODES; i++) {
		if (!f->n[i].c)
			continue;
		struct cluster_stats st;
		cluster_stats(f->n[i].c, &st);
		if (st.messages != want)
			return 0;
		uint64_t d = queue_fsm_digest(cluster_queue(f->n[i].c));
		if (!first && d != dg)
			return 0;
		dg = d;
		first = 0;
	}
	return 1;
}

static void
check_exactly_once(struct done *d, unsigned from, unsigned to)
{
	for (unsigned i = from; i < to; i++) {
		if (d->calls[i] != 1)
			fail_msg("proposal %u: %u callbacks", i, d->calls[i]);
		if (d->status[i] != 0)
			fail_msg("proposal %u: status %s", i, cluster_strerror(d->status[i]));
	}
}

static struct done dn;

/* ---- tests ---- */

static void
test_peers_parse(void **state)
{
	(void)state;
	struct cluster_peer p[CLUSTER_MAX_PEERS];
	const char *good[] = {"a=127.0.0.1:7401", "b.x_1=[::1]:7402", "c=host.example:1"};
	char err[128];
	assert_int_equal(cluster_peers_parse(good, 3, "a", p, err, sizeof(err)), 0);
	assert_string_equal(p[1].name, "b.x_1");
	assert_string_equal(p[1].addr, "[::1]:7402");
	assert_int_equal(p[0].id, cluster_peer_raft_id("a"));
	assert_true(p[0].id != 0 && p[0].id != p[1].id);
	assert_int_equal(cluster_peers_parse(good, 3, "zz", p, err, sizeof(err)), CLUSTER_EINVAL);
	const char *bad[] = {"a",	  "=h:1",    "a=h",  "a=h:0",
			     "a=h:99999", "a b=h:1", "a=:1", "a=[::1:1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (cluster_peer_parse(bad[i], &p[0], err, sizeof(err)) != CLUSTER_EINVAL)
			fail_msg("accepted %s", bad[i]);
	const char *dup[] = {"a=h:1", "a=h:2"};
	assert_int_equal(cluster_peers_parse(dup, 2, "a", p, err, sizeof(err)), CLUSTER_EINVAL);
}

static void
test_replicate_failover_restart(void **state)
{
	struct fx *f = *state;
	memset(&dn, 0, sizeof(dn));
	for (int i = 0; i < NODES; i++)
		node_open(f, i);
	run_until(f, have_leader, NULL, "a leader");
	int lead = leader_of(f);
	int f1 = (lead + 1) % NODES, f2 = (lead + 2) % NODES;

	/* 1. proposals on the leader and on both followers */
	propose_range(f, lead, &dn, 0, 100);
	propose_range(f, f1, &dn, 100, 200);
	propose_range(f, f2, &dn, 200, 300);
	struct want_done w = {300, &dn};
	run_until(f, done_reached, &w, "300 callbacks");
	check_exactly_once(&dn, 0, 300);
	uint64_t want = 300;
	run_until(f, converged, &want, "300 messages on every node");
	/* a duplicate Accept (same queue id, e.g. a retried forward) changes nothing */
	propose_range(f, f1, &dn, 50, 51);
	w.want = 301;
	run_until(f, done_reached, &w, "the duplicate's callback");
	run_until(f, converged, &want, "still 300 messages");

	struct cluster_status st;
	cluster_status(f->n[lead].c, &st);
	assert_int_equal(st.replicated, 1);
	assert_string_equal(st.role, "leader");
	assert_int_equal(st.n_peers, NODES);
	assert_true(st.commit_index >= 301);
	cluster_status(f->n[f1].c, &st);
	assert_string_equal(st.role, "follower");
	assert_true(st.forwarded >= 100);

	/* 2. the leader goes away: another is elected and proposals go on */
	node_close(f, lead);
	run_until(f, have_leader, NULL, "a new leader");
	int lead2 = leader_of(f);
	assert_true(lead2 != lead);
	memset(&dn, 0, sizeof(dn));
	propose_range(f, f1, &dn, 300, 350);
	propose_range(f, f2, &dn, 350, 400);
	w.want = 100;
	run_until(f, done_reached, &w, "100 callbacks after failover");
	check_exactly_once(&dn, 300, 400);
	want = 400;
	run_until(f, converged, &want, "400 messages on the two live nodes");

	/* 3. the old leader restarts from its directory and catches up */
	node_open(f, lead);
	run_until(f, converged, &want, "the restarted node caught up");
	run_until(f, have_leader, NULL, "a leader after the restart");
	memset(&dn, 0, sizeof(dn));
	propose_range(f, lead, &dn, 400, 420);
	w.want = 20;
	run_until(f, done_reached, &w, "20 callbacks on the restarted node");
	check_exactly_once(&dn, 400, 420);
	want = 420;
	run_until(f, converged, &want, "420 messages everywhere");
}

static void
test_close_fails_pending_once(void **state)
{
	struct fx *f = *state;
	memset(&dn, 0, sizeof(dn));
	/* one node of three: no quorum, nothing commits; close fails the proposals once */
	node_open(f, 0);
	propose_range(f, 0, &dn, 0, 10);
	assert_int_equal(dn.total, 0); /* never inside cluster_propose */
	node_close(f, 0);
	assert_int_equal(dn.total, 10);
	for (unsigned i = 0; i < 10; i++) {
		assert_int_equal(dn.calls[i], 1);
		assert_int_equal(dn.status[i], CLUSTER_ECLOSED);
	}
}

static void
test_no_quorum_times_out_then_commits(void **state)
{
	struct fx *f = *state;
	f->propose_fail_ms = 400;
	memset(&dn, 0, sizeof(dn));
	/* alone, n1 has no leader: its proposals wait, then fail with ETIMEDOUT, once each */
	node_open(f, 0);
	propose_range(f, 0, &dn, 0, 5);
	struct want_done w = {5, &dn};
	run_until(f, done_reached, &w, "5 timeouts");
	for (unsigned i = 0; i < 5; i++) {
		assert_int_equal(dn.calls[i], 1);
		assert_int_equal(dn.status[i], CLUSTER_ETIMEDOUT);
	}
	struct cluster_status st;
	cluster_status(f->n[0].c, &st);
	assert_int_equal(st.timed_out, 5);
	assert_string_equal(st.leader, "");
	/* proposals made before a leader exists wait for it and commit */
	f->propose_fail_ms = 20000;
	node_close(f, 0);
	node_open(f, 0);
	memset(&dn, 0, sizeof(dn));
	propose_range(f, 0, &dn, 5, 15);
	node_open(f, 1);
	node_open(f, 2);
	w.want = 10;
	run_until(f, done_reached, &w, "10 callbacks once a leader exists");
	check_exactly_once(&dn, 5, 15);
	uint64_t want = 10; /* the timed-out five never committed: no quorum then */
	run_until(f, converged, &want, "10 messages everywhere");
}

static void
test_snapshot_catch_up(void **state)
{
	struct fx *f = *state;
	f->snapshot_entries = 50;
	memset(&dn, 0, sizeof(dn));
	for (int i = 0; i < NODES; i++)
		node_open(f, i);
	run_until(f, have_leader, NULL, "a leader");
	int lead = leader_of(f);
	int down = (lead + 1) % NODES;
	propose_range(f, lead, &dn, 0, 20);
	struct want_done w = {20, &dn};
	run_until(f, done_reached, &w, "20 callbacks");
	uint64_t want = 20;
	run_until(f, converged, &want, "20 messages");
	/* a follower is down while the others apply and compact; in the middle, an ownership
	 * change (a member, and example.org assigned to it), which the snapshot must carry */
	node_close(f, down);
	propose_range(f, lead, &dn, 20, 150);
	static struct done dm;
	memset(&dm, 0, sizeof(dm));
	Relay__Member mem = RELAY__MEMBER__INIT;
	mem.node = "owner-1";
	mem.state = RELAY__MEMBER_STATE__MEMBER_LIVE;
	Relay__Command mc = RELAY__COMMAND__INIT;
	mc.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	mc.member = &mem;
	static struct pctx mctx;
	mctx = (struct pctx){&dm, 0};
	assert_int_equal(cluster_propose(f->n[lead].c, &mc, prop_cb, &mctx), 0);
	propose_range(f, lead, &dn, 150, 300);
	w.want = 300;
	run_until(f, done_reached, &w, "300 callbacks");
	struct want_done wm = {1, &dm};
	run_until(f, done_reached, &wm, "the member change");
	check_exactly_once(&dn, 0, 300);
	struct cluster_status st;
	cluster_status(f->n[lead].c, &st);
	assert_true(st.snapshots >= 1);
	assert_true(st.snapshot_index > 20);
	/* it comes back with its data dir wiped (a lost disk): the log it needs is compacted, so
	 * it gets a snapshot (merely restarting, it might catch up from the APPs the transport
	 * queued for it while it was down) */
	nftw(f->n[down].dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	node_open(f, down);
	want = 300;
	run_until(f, converged, &want, "the node caught up by snapshot");
	cluster_status(f->n[down].c, &st);
	assert_true(st.snapshots_installed >= 1);
	assert_true(st.snapshot_index > 150);
	struct queue_member mb[2];
	assert_int_equal(queue_fsm_members(cluster_queue(f->n[down].c), mb, 2), 1);
	assert_string_equal(mb[0].node, "owner-1");
	char owner[QUEUE_NODE_MAX + 1];
	uint64_t epoch;
	assert_int_equal(
	    queue_fsm_domain_owner(cluster_queue(f->n[down].c), "example.org", owner, &epoch), 0);
	assert_string_equal(owner, "owner-1");
	/* and keeps applying after it, also across its own restart */
	memset(&dn, 0, sizeof(dn));
	propose_range(f, down, &dn, 300, 320);
	w.want = 20;
	run_until(f, done_reached, &w, "20 callbacks on the snapshot node");
	check_exactly_once(&dn, 300, 320);
	node_close(f, down);
	node_open(f, down);
	want = 320;
	run_until(f, converged, &want, "320 messages after its restart");
}

/* ---- hostile peer input (G6) ---- */

static void
ignore_recv(void *arg, const char *from, uint32_t kind, const void *data, size_t len)
{
}

static void
tp_closed(void *arg)
{
	(*(unsigned *)arg)++;
}

static int
dropped_at_least(struct fx *f, void *arg)
{
	struct cluster_status st;
	cluster_status(f->n[0].c, &st);
	return st.raft_dropped >= *(uint64_t *)arg;
}

static void
test_hostile_frames(void **state)
{
	struct fx *f = *state;
	node_open(f, 0);
	/* a peer that holds n2's id (no TLS here) sends n1 malformed frames of every kind */
	struct transport_config tc = {.node_id = "n2", .listen = f->listen[1]};
	struct transport *t;
	assert_int_equal(transport_open(&f->loop, &tc, ignore_recv, NULL, &t), 0);
	assert_int_equal(transport_add_peer(t, "n1", f->listen[0]), 0);
	static const unsigned char trunc_hdr[] = {1, 0, 0}; /* < 5 header bytes */
	static const unsigned char overflow[] = {1, 0xff, 0xff, 0xff, 0xff, 1}; /* len > rest */
	static const unsigned char nested[] = {3, 0, 0, 0, 1, 0}; /* a batch in a batch */
	static const unsigned char junk_items[] = {1, 0, 0, 0, 2, 0xde, 0xad, 2, 0, 0, 0, 1, 0x07};
	static const unsigned char junk[] = {0xff, 0xfe, 0x01, 0x80};
	struct {
		uint32_t kind;
		const unsigned char *d;
		size_t n;
	} frames[] = {
	    {3, trunc_hdr, sizeof(trunc_hdr)}, {3, overflow, sizeof(overflow)},
	    {3, nested, sizeof(nested)},       {3, junk_items, sizeof(junk_items)},
	    {1, junk, sizeof(junk)},	       {2, junk, sizeof(junk)},
	    {99, junk, sizeof(junk)},	       {3, junk, 0},
	};
	for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++)
		assert_int_equal(transport_send(t, "n1", frames[i].kind, frames[i].d, frames[i].n),
				 0);
	uint64_t want = 5; /* trunc, overflow, nested, the junk raft item, the junk raft frame */
	run_until(f, dropped_at_least, &want, "the malformed frames counted");
	unsigned closed = 0;
	transport_close(t, tp_closed, &closed);
	run_until_flag(f, &closed, 1);
	/* n1 is intact: with its peers back it elects a leader and commits */
	node_open(f, 1);
	node_open(f, 2);
	run_until(f, have_leader, NULL, "a leader after the garbage");
	memset(&dn, 0, sizeof(dn));
	propose_range(f, 0, &dn, 0, 10);
	struct want_done w = {10, &dn};
	run_until(f, done_reached, &w, "10 callbacks");
	check_exactly_once(&dn, 0, 10);
}

/* argv[1], when given, runs only the tests it names (a cmocka filter pattern): ctest runs each
 * case in its own process (tests/unit/storage.cmake). */
int
main(int argc, char **argv)
{
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_peers_parse),
	    cmocka_unit_test_setup_teardown(test_replicate_failover_restart, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_fails_pending_once, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_quorum_times_out_then_commits, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_snapshot_catch_up, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hostile_frames, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
