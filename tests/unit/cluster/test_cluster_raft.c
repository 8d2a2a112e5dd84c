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
 * are dropped and counted; a node started outside its peers list joins when added
 * (cluster_member_add through a follower), catches up by snapshot and gets the address book with
 * it, the membership survives a restart, and a removed member is forgotten. Waiting is "run the
 * loop until a condition holds, with a deadline", never a sleep.
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
#include "cmocka_filter.h"
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

/* Proposal i with a body of len bytes (bigger than a snapshot chunk and than the 1 MiB that a
 * Raft entry once was), content a function of i. */
static void
propose_big(struct fx *f, int node, struct done *d, unsigned i, size_t len)
{
	struct cmdbuf b;
	make_cmd(&b, i);
	uint8_t *body = malloc(len);
	assert_non_null(body);
	for (size_t k = 0; k < len; k++)
		body[k] = (uint8_t)(i * 7 + k * 13);
	b.acc.body.data = body;
	b.acc.body.len = len;
	ctxs[i] = (struct pctx){d, i};
	int rv = cluster_propose(f->n[node].c, &b.cmd, prop_cb, &ctxs[i]);
	free(body);
	if (rv)
		fail_msg("propose %u on %s: %s", i, f->n[node].name, cluster_strerror(rv));
}

/* The body of proposal i (propose_big) is stored on node n, byte for byte. */
static void
check_big(struct fx *f, int n, unsigned i, size_t len)
{
	char id[32];
	snprintf(id, sizeof(id), "Q%06u", i);
	void *body;
	size_t blen;
	assert_int_equal(queue_fsm_read_body(cluster_queue(f->n[n].c), id, &body, &blen), 0);
	assert_int_equal(blen, len);
	for (size_t k = 0; k < len; k++)
		if (((uint8_t *)body)[k] != (uint8_t)(i * 7 + k * 13))
			fail_msg("%s on %s: byte %zu differs", id, f->n[n].name, k);
	free(body);
}

struct want_done {
	unsigned want;
	struct done *d;
};

struct snap_want {
	int node;
	uint64_t index;
};

/* Node sw->node has a snapshot at or past sw->index. */
static int
compacted_past(struct fx *f, void *arg)
{
	struct snap_want *sw = arg;
	struct cluster_status st;
	cluster_status(f->n[sw->node].c, &st);
	return st.snapshot_index >= sw->index;
}

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
	/* three messages over 1 MiB, one through the other follower (forwarded): they are in
	 * the snapshot, and their values stream in pieces */
	int other = (lead + 2) % NODES;
	propose_big(f, lead, &dn, 297, (size_t)3 << 20);
	propose_big(f, other, &dn, 298, ((size_t)5 << 20) + 123);
	propose_big(f, lead, &dn, 299, ((size_t)1 << 20) + 1);
	w.want = 23;
	run_until(f, done_reached, &w, "23 callbacks");
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
	propose_range(f, lead, &dn, 150, 297);
	w.want = 300;
	run_until(f, done_reached, &w, "300 callbacks");
	struct want_done wm = {1, &dm};
	run_until(f, done_reached, &wm, "the member change");
	check_exactly_once(&dn, 0, 300);
	/* compaction digests a view off the loop thread: it follows the applies */
	struct snap_want sw = {lead, 200}; /* past the big messages and the member change */
	run_until(f, compacted_past, &sw, "the leader compacted past 200");
	struct cluster_status st;
	cluster_status(f->n[lead].c, &st);
	assert_true(st.snapshots >= 1);
	/* it comes back with its data dir wiped (a lost disk): the log it needs is compacted, so
	 * it gets a snapshot (merely restarting, it might catch up from the APPs the transport
	 * queued for it while it was down) */
	nftw(f->n[down].dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	node_open(f, down);
	want = 300;
	run_until(f, converged, &want, "the node caught up by snapshot");
	cluster_status(f->n[down].c, &st);
	assert_true(st.snapshots_installed >= 1);
	assert_true(st.snapshot_fetches >= 1);
	assert_true(st.snapshot_fetch_bytes > ((size_t)9 << 20));
	assert_false(st.snapshot_installing);
	check_big(f, down, 297, (size_t)3 << 20);
	check_big(f, down, 298, ((size_t)5 << 20) + 123);
	check_big(f, down, 299, ((size_t)1 << 20) + 1);
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

static int
fetching(struct fx *f, void *arg)
{
	struct cluster_status st;
	cluster_status(f->n[*(int *)arg].c, &st);
	return st.snapshot_installing && st.snapshot_fetch_bytes > 0;
}

static int
installed(struct fx *f, void *arg)
{
	struct cluster_status st;
	cluster_status(f->n[*(int *)arg].c, &st);
	return st.snapshots_installed >= 1 && !st.snapshot_installing;
}

/* The node serving a snapshot fetch goes away mid-stream: the fetching node's requests time
 * out, it starts a new session with another member (wiping its partial copy) and completes
 * from that member's own view. */
static void
test_snapshot_server_lost(void **state)
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
	node_close(f, down);
	/* ~60 MiB of queue: tens of chunks (proposed on the first leader; a follower forwards) */
	for (unsigned i = 20; i < 40; i++)
		propose_big(f, lead, &dn, i, (size_t)3 << 20);
	propose_range(f, lead, &dn, 40, 160);
	w.want = 160;
	run_until(f, done_reached, &w, "160 callbacks");
	check_exactly_once(&dn, 0, 160);
	/* snapshots every 50 applied entries: the last one is past 60 */
	struct snap_want sw = {lead, 60};
	run_until(f, compacted_past, &sw, "the leader compacted past 60");
	nftw(f->n[down].dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	node_open(f, down);
	run_until(f, fetching, &down, "the wiped node fetching");
	/* close the node serving it (the leader, unless leadership moved meanwhile) */
	int server = -1;
	for (int i = 0; i < NODES; i++) {
		struct cluster_status ss;
		if (i == down || !f->n[i].c)
			continue;
		cluster_status(f->n[i].c, &ss);
		if (ss.snapshot_serves > 0)
			server = i;
	}
	assert_true(server >= 0);
	node_close(f, server);
	run_until(f, installed, &down, "the install completed from another member");
	struct cluster_status st;
	cluster_status(f->n[down].c, &st);
	/* a new session: after timeouts, or for a newer snapshot from a new leader */
	assert_true(st.snapshot_fetches >= 2);
	uint64_t want = 160;
	run_until(f, converged, &want, "the two live nodes agree");
	for (unsigned i = 20; i < 40; i++)
		check_big(f, down, i, (size_t)3 << 20);
}

/* ---- membership (cluster.h "Membership") ---- */

/* Opens node i with the first n entries of the peers list (i not among them: it joins). */
static void
node_open_peers(struct fx *f, int i, size_t n)
{
	struct cluster_config cfg = {
	    .node_id = f->n[i].name,
	    .data_dir = f->n[i].dir,
	    .cluster_listen = f->listen[i],
	    .peers = f->peers,
	    .n_peers = n,
	    .election_timeout_ms = 300,
	    .heartbeat_ms = 30,
	    .propose_fail_ms = f->propose_fail_ms,
	    .retry_ms = 1000,
	    .snapshot_entries = f->snapshot_entries,
	};
	int rv = cluster_open(&f->loop, &cfg, &f->n[i].c);
	if (rv)
		fail_msg("cluster_open %s: %s", f->n[i].name, cluster_strerror(rv));
}

/* Node i lists exactly the members in want ("n1:voter,n3:voter", in book order ignored). */
struct members_want {
	int node;
	const char *want[NODES + 1];
};

static int
members_are(struct fx *f, void *arg)
{
	struct members_want *w = arg;
	struct cluster_status st;
	cluster_status(f->n[w->node].c, &st);
	size_t n = 0;
	while (w->want[n])
		n++;
	if (st.n_peers != n)
		return 0;
	for (size_t k = 0; k < n; k++) {
		int found = 0;
		for (unsigned i = 0; i < st.n_peers; i++) {
			char have[96];
			snprintf(have, sizeof(have), "%s:%s", st.peers[i].name,
				 st.peers[i].membership ? st.peers[i].membership : "");
			if (!strcmp(have, w->want[k]))
				found = 1;
		}
		if (!found)
			return 0;
	}
	return 1;
}

static void
cb_status(void *arg, int status)
{
	*(int *)arg = status == 0 ? 1 : status;
}

static int
flag_set(struct fx *f, void *arg)
{
	return *(int *)arg != 0;
}

static int
snapshotted(struct fx *f, void *arg)
{
	struct node *n = arg;
	struct cluster_status st;
	cluster_status(n->c, &st);
	return st.snapshot_index > 50;
}

static void
test_member_join_snapshot_remove(void **state)
{
	struct fx *f = *state;
	f->snapshot_entries = 50;
	memset(&dn, 0, sizeof(dn));
	/* n1 and n2 bootstrap a cluster of two and compact their log */
	node_open_peers(f, 0, 2);
	node_open_peers(f, 1, 2);
	run_until(f, have_leader, NULL, "a leader of two");
	int lead = leader_of(f);
	propose_range(f, lead, &dn, 0, 200);
	struct want_done w = {200, &dn};
	run_until(f, done_reached, &w, "200 callbacks");
	check_exactly_once(&dn, 0, 200);
	struct cluster_status st;
	run_until(f, snapshotted, &f->n[lead], "the leader compacted");
	/* n3 starts outside its peers list: it waits, knows no leader, votes for no one */
	node_open_peers(f, 2, 2);
	cluster_status(f->n[2].c, &st);
	assert_string_equal(st.leader, "");
	assert_int_equal(cluster_member_add(f->n[0].c, "bad id", "x:1", cb_status, NULL),
			 CLUSTER_EBADADDR);
	assert_int_equal(cluster_member_add(f->n[0].c, "n2", f->listen[1], cb_status, NULL),
			 CLUSTER_EEXIST);
	assert_int_equal(cluster_member_remove(f->n[0].c, "n9", cb_status, NULL),
			 CLUSTER_ENOMEMBER);
	/* added through the follower: learner, caught up by snapshot, voter */
	int follower = 1 - lead, added = 0;
	assert_int_equal(
	    cluster_member_add(f->n[follower].c, "n3", f->listen[2], cb_status, &added), 0);
	run_until(f, flag_set, &added, "the Peer command committed");
	assert_int_equal(added, 1);
	struct members_want all = {2, {"n1:voter", "n2:voter", "n3:voter", NULL}};
	for (int i = 0; i < NODES; i++) {
		all.node = i;
		run_until(f, members_are, &all, "three voters on every node");
	}
	uint64_t want = 200;
	run_until(f, converged, &want, "n3 caught up");
	cluster_status(f->n[2].c, &st);
	assert_true(st.snapshots_installed >= 1);
	/* the address book came with the snapshot: n3 knows n1 and n2 at their addresses */
	for (unsigned i = 0; i < st.n_peers; i++) {
		int k = st.peers[i].name[1] - '1';
		assert_string_equal(st.peers[i].addr, f->listen[k]);
	}
	/* a restart of n1 with its config peers (two) keeps three members */
	node_close(f, 0);
	node_open_peers(f, 0, 2);
	all.node = 0;
	run_until(f, members_are, &all, "n1 keeps three voters across a restart");
	run_until(f, have_leader, NULL, "a leader of three");
	/* n2 leaves (asked of n3); n1 and n3 forget it, and still commit */
	int removed = 0;
	assert_int_equal(cluster_member_remove(f->n[2].c, "n2", cb_status, &removed), 0);
	run_until(f, flag_set, &removed, "the removal committed");
	struct members_want two = {0, {"n1:voter", "n3:voter", NULL}};
	run_until(f, members_are, &two, "n2 gone from n1");
	two.node = 2;
	run_until(f, members_are, &two, "n2 gone from n3");
	node_close(f, 1);
	run_until(f, have_leader, NULL, "a leader of two again");
	memset(&dn, 0, sizeof(dn));
	propose_range(f, 2, &dn, 200, 210);
	w.want = 10;
	run_until(f, done_reached, &w, "10 callbacks without n2");
	check_exactly_once(&dn, 200, 210);
}

/* A member known only from the log (n4, added while n3 is down; never started, nothing listens
 * at its address) reaches n3 through the snapshot's address book: the entry that added it is
 * compacted away before n3 comes back with a wiped store. */
static void
test_snapshot_address_book(void **state)
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
	node_close(f, down);
	char addr4[32];
	snprintf(addr4, sizeof(addr4), "127.0.12.4:%s", strchr(f->listen[0], ':') + 1);
	int added = 0;
	assert_int_equal(cluster_member_add(f->n[lead].c, "n4", addr4, cb_status, &added), 0);
	run_until(f, flag_set, &added, "the Peer command for n4 committed");
	assert_int_equal(added, 1);
	struct cluster_status st;
	cluster_status(f->n[lead].c, &st);
	uint64_t peer_index = st.commit_index;
	propose_range(f, lead, &dn, 20, 200);
	w.want = 200;
	run_until(f, done_reached, &w, "200 callbacks");
	struct snap_want sw = {lead, peer_index + 60};
	run_until(f, compacted_past, &sw, "the leader compacted past the Peer entry");
	nftw(f->n[down].dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	node_open(f, down);
	uint64_t want = 200;
	run_until(f, converged, &want, "the wiped node caught up");
	cluster_status(f->n[down].c, &st);
	assert_true(st.snapshots_installed >= 1);
	int found = 0;
	for (unsigned i = 0; i < st.n_peers; i++)
		if (!strcmp(st.peers[i].name, "n4")) {
			assert_string_equal(st.peers[i].addr, addr4);
			found = 1;
		}
	assert_true(found);
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
	/* every frame travels in an envelope (cluster/craft.h CRAFT_KIND_ENV): version, cluster
	 * id (0: none known), incarnation, then [kind][length] items */
	static const unsigned char trunc_hdr[] = {1, 0, 0}; /* < 5 header bytes */
	static const unsigned char overflow[] = {1, 0xff, 0xff, 0xff, 0xff, 1}; /* len > rest */
	static const unsigned char nested[] = {3, 0, 0, 0, 1, 0}; /* a batch in an envelope */
	static const unsigned char junk_items[] = {1, 0, 0, 0, 2, 0xde, 0xad, 2, 0, 0, 0, 1, 0x07};
	static const unsigned char junk_raft[] = {1, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_prop[] = {2, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_kind[] = {99, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_xfer[] = {4, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_fetch[] = {5, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_hello[] = {7, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	static const unsigned char junk_rejoin[] = {9, 0, 0, 0, 4, 0xff, 0xfe, 0x01, 0x80};
	struct {
		uint32_t kind;
		const unsigned char *d;
		size_t n;
		int env;
	} frames[] = {
	    {10, trunc_hdr, sizeof(trunc_hdr), 1}, {10, overflow, sizeof(overflow), 1},
	    {10, nested, sizeof(nested), 1},	   {10, junk_items, sizeof(junk_items), 1},
	    {10, junk_raft, sizeof(junk_raft), 1}, {10, junk_prop, sizeof(junk_prop), 1},
	    {10, junk_kind, sizeof(junk_kind), 1}, {10, junk_xfer, 0, 1},
	    {10, junk_xfer, sizeof(junk_xfer), 1}, {10, junk_fetch, sizeof(junk_fetch), 1},
	    {10, junk_hello, sizeof(junk_hello), 1}, {10, junk_rejoin, sizeof(junk_rejoin), 1},
	    {3, junk_items, sizeof(junk_items), 0},  /* no envelope: a batch of old */
	    {1, junk_raft + 5, 4, 0},		       /* no envelope: a bare raft frame */
	    {10, junk_items, 5, 0},		       /* an envelope too short for its header */
	};
	for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++) {
		unsigned char buf[64] = {1}; /* version 1, cluster 0, incarnation 0 */
		size_t off = frames[i].env ? 17 : 0;
		memcpy(buf + off, frames[i].d, frames[i].n);
		assert_int_equal(transport_send(t, "n1", frames[i].kind, buf, off + frames[i].n),
				 0);
	}
	/* well-formed snapshot fetches it cannot serve: far ahead of it, resuming a session it
	 * never started, a key past STORE_KEY_MAX; an unsolicited chunk */
	unsigned char big_key[2048];
	memset(big_key, 0xff, sizeof(big_key));
	Relay__SnapshotFetch sf[3];
	for (int i = 0; i < 3; i++) {
		relay__snapshot_fetch__init(&sf[i]);
		sf[i].session = 7 + (uint64_t)i;
		sf[i].seq = 1;
		sf[i].cf = 3; /* STORE_CF_QUEUE */
	}
	sf[0].min_index = UINT64_MAX;
	sf[1].has_key = sf[1].has_offset = 1;
	sf[1].key.data = (uint8_t *)"Q1";
	sf[1].key.len = 2;
	sf[1].offset = 5;
	sf[2].has_key = 1;
	sf[2].key.data = big_key;
	sf[2].key.len = sizeof(big_key);
	for (int i = 0; i < 3; i++) {
		unsigned char buf[4096 + 22] = {1};
		size_t n = relay__snapshot_fetch__pack(&sf[i], buf + 22);
		buf[17] = 5; /* CRAFT_KIND_SNAP_FETCH */
		buf[20] = (unsigned char)(n >> 8);
		buf[21] = (unsigned char)n;
		assert_int_equal(transport_send(t, "n1", 10, buf, 22 + n), 0);
	}
	Relay__SnapshotChunk sc = RELAY__SNAPSHOT_CHUNK__INIT;
	sc.session = 7;
	sc.status = RELAY__SNAPSHOT_STATUS__SNAP_OK;
	unsigned char cbuf[64 + 22] = {1};
	size_t cn = relay__snapshot_chunk__pack(&sc, cbuf + 22);
	cbuf[17] = 6; /* CRAFT_KIND_SNAP_CHUNK */
	cbuf[21] = (unsigned char)cn;
	assert_int_equal(transport_send(t, "n1", 10, cbuf, 22 + cn), 0);
	/* trunc, overflow, nested, the junk raft item, raft message, fetch, hello and rejoin,
	 * the three frames without a valid envelope (a proposal or transfer to a node that is not
	 * the leader, an unknown kind, fetches it cannot serve and an unsolicited chunk are
	 * ignored, not counted) */
	uint64_t want = 11;
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

/* argv[1], when given, runs only the tests it names (a cmocka filter pattern; one that selects
 * none fails): ctest runs each case in its own process (tests/unit/cluster/CMakeLists.txt). */
int
main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_peers_parse),
	    cmocka_unit_test_setup_teardown(test_replicate_failover_restart, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_fails_pending_once, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_quorum_times_out_then_commits, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_snapshot_catch_up, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_snapshot_server_lost, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hostile_frames, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_member_join_snapshot_remove, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_snapshot_address_book, setup, teardown),
	};
	if (relay_test_filter(argc, argv, tests, sizeof(tests) / sizeof(tests[0])) != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
