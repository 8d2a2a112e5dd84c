/*
 * cluster_raft.c - the replicated cluster: the edge of the replicated host.  cluster.c delegates
 * every call here when cluster_listen and two or more peers are configured; see cluster.h for
 * the contract the node sees (it is the same as the single node's).
 *
 * The decisions live in the pure part, craft (craft.h: proposals, the write path, readies,
 * snapshots, the address book, membership); this file only gives it an edge over libuv, the NNG
 * transport and RocksDB, as the simulator (tests/sim/raft_sim.c) gives it one over simulated
 * time, network and disks:
 *   - a uv_idle runs craft_run() once per loop turn when craft asks (io.schedule), a uv_timer
 *     calls craft_tick() every heartbeat_ms (the election timeout is election_timeout_ms /
 *     heartbeat_ms ticks);
 *   - the one write in flight (io.write_start: an atomic RocksDB write of the Raft state, synced
 *     when it carries any, then one of the queue state without the WAL, store.h) runs on a
 *     worker thread (uv_queue_work); its completion is craft_write_done();
 *     the synchronous writes of a snapshot install (io.write_now) run on the loop thread;
 *   - the digest of a store view runs on a worker thread too (craft_digest_done);
 *   - peer messages (Raft messages, encoded here, and craft's frames) to one peer leave as one
 *     transport frame (CRAFT_KIND_BATCH: [kind][length] items) at most once per
 *     CRAFT_BATCH_DELAY_MS: at the end of the loop turn (a uv_prepare) when the peer's last frame
 *     left that long ago, else when that time has passed (a uv_timer).  NNG's cost is per
 *     message, and a loaded leader otherwise spends its loop in NNG's hand-offs (measured:
 *     3-node accept rate ~550 -> ~2000 msg/s at 4 KiB x 50 sessions); a lightly loaded one no
 *     longer holds each message for the timer (up to 2 ms per hop, 4 hops per follower's 250).
 *     Received batches are split here and each item handed to craft (peer input: every length
 *     is checked; a bad batch is dropped from the bad item on, counted).
 *
 * The design, in the order a message travels:
 *
 * Proposals.  A proposal is tagged (Command.origin_node/boot/seq) and handed to raft on the
 * leader, or forwarded to the known leader, which proposes it as is.  The origin completes its
 * callback when IT applies the entry carrying its tag: committed on a majority and applied here
 * (G1).  A proposal not committed within propose_fail_ms gets CLUSTER_ETIMEDOUT.
 *
 * Group commit.  Hard state and entries of the core's readies go into the NEXT write batch (a
 * suffix truncation first when entries overwrite what was written), followed by the store writes
 * of applying committed entries and the applied index; one write is in flight at a time, and
 * everything arriving meanwhile joins the next one.  The apply writes are safe in the same
 * stream: they follow, in the same atomic write or a later one, the log write of every entry
 * they apply, and the applied index travels with them; at open the core hands out committed
 * entries again from the snapshot index on, and those at or below the stored applied index are
 * skipped.
 *
 * Snapshots (Raft thesis ch. 5), streamed: the queue state is exactly the key/values of the
 * queue, body and index CFs.  After snapshot_entries applied entries (or
 * CRAFT_SNAPSHOT_LOG_BYTES of entry data) since the last one, the node takes a consistent view
 * of its store (store_view; its index is the applied index written atomically with the apply
 * writes it shows), digests it on a worker thread, and compacts the log to it: the Raft
 * snapshot's data is only a SnapshotDescriptor (index, view id, node, digest, and the address
 * book stored in the view: raft_meta "raft_peers" is written with the applies, so it is the
 * book at exactly the view's index), persisted with the deletion of the log up to its index in
 * the next write.  The queue is never in memory.  A follower that receives one (rd.snap)
 * writes, in one synced write on the loop thread (after the write in flight): the hard state,
 * the wipe of the three CFs, the deletion of its log, the descriptor's address book (none:
 * its own stays), the snapshot meta and the install marker (STORE_META_INSTALL); it reloads
 * the (empty) queue state machine and fetches the key/values with SnapshotFetch /
 * SnapshotChunk frames from a node that has a view at or past the index (the leader, the
 * descriptor's node, then each member), one chunk of at most CRAFT_SNAP_CHUNK_BYTES at a time,
 * written as they come (unsynced).  A failed or silent session starts over with the next node,
 * its partial copy wiped.  When the copy matches the view's digest, one synced write drops the
 * marker, records the view's index as applied and installs the view's address book (the first
 * chunk of a session carries it: the view served may be newer than the descriptor); the queue
 * is reloaded, and the entries the core handed out meanwhile (all durable in the log) are
 * applied from the store.  Until then nothing is applied.  At open, a marker left by a crash
 * mid-install makes the node wipe the partial copy and fetch again.  Any node whose store is
 * complete serves fetches (at most CRAFT_SNAP_SERVE_MAX at once).
 *
 * Failure modes: a failed write is retried at the next tick with everything that queued up
 * since (the core waits: nothing it holds is released before raft_persisted).  Allocation
 * failure or a damaged entry while applying stops this node (craft's failed: proposals fail,
 * the store keeps the log; a restart replays).  Peer input the core or the codec rejects is
 * dropped and counted.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cluster_raft.h"
#include "cluster_types.h"
#include "cluster_util.h"
#include "craft.h"
#include "store.h"
#include "transport.h"

/* Frames to one peer leave at most once per CRAFT_BATCH_DELAY_MS (fewer NNG messages: their
 * cost per message, not per byte, bounds a loaded leader): what is queued for a peer whose last
 * frame left at least that long ago goes at the end of this loop turn (before the loop waits),
 * everything else when that time has passed; a batch also leaves once it holds this many bytes.
 * A bigger message (a snapshot chunk) flushes the batch and goes alone. */
#define CRAFT_BATCH_DELAY_MS 1
#define CRAFT_BATCH_MAX_BYTES ((size_t)1 << 20)
/* Bound on the path of the database directory. */
#define CRAFT_PATH_MAX 4096
/* Bound on one peer frame's payload, sent or received: an AppendEntries with one entry of
 * RAFT_ENTRY_MAX_BYTES plus up to raft's max_msg_bytes of others, or a forwarded proposal. */
#define CRAFT_MAX_FRAME_BYTES ((size_t)RAFT_ENTRY_MAX_BYTES + ((size_t)2 << 20))
/* Items of a batch and of an envelope: [kind u8][length u32 BE][payload]. */
#define CRAFT_BATCH_HDR 5
/* Peers the edge keeps a send batch for (the book and members being forgotten). */
#define CRAFT_EDGE_PEERS (2 * CLUSTER_MAX_PEERS)

/* Messages waiting to leave for one peer in one frame. */
struct craft_outbuf {
	char name[CLUSTER_ID_MAX + 1]; /* "" : a free slot */
	unsigned char *buf;	       /* owned */
	size_t len, cap;
	unsigned n;	  /* items after the envelope header */
	uint64_t sent_ms; /* uv_now() when its last frame left */
};

struct cluster__raft {
	uv_loop_t *loop;      /* borrowed */
	struct store *store;  /* owned */
	int want_flush;	      /* craft sent before they were */
	struct transport *tp; /* owned */
	struct craft *craft;  /* owned */
	struct craft_outbuf out[CRAFT_EDGE_PEERS];

	uv_idle_t run;
	uv_timer_t tick;
	uv_timer_t flush; /* sends the batches CRAFT_BATCH_DELAY_MS after the first message */
	/* sends, before the loop waits, the batches of peers not sent to lately */
	uv_prepare_t flush_now;
	uv_work_t work;				   /* the write in flight */
	const struct store_batch *wbatch, *wstate; /* the write in flight: WAL, then NOWAL */
	int wsync, write_rv;
	uint64_t wstart_ns, wdisk_ns; /* uv_hrtime: write handed over; its storage time */
	struct cluster_hist write_disk, write_turn; /* synced writes (cluster_stats) */
	uv_work_t digest_work;			    /* the digest in flight */
	struct store_view *dview;
	const enum store_cf *dcfs;
	size_t dn;
	struct store_digest *dout;
	int digest_rv;

	int handles;  /* run, tick, flush and flush_now are initialized */
	int want_run; /* craft asked for a run before they were */
	int closing;
	int close_pending; /* handles and the transport still closing */
	void (*close_done)(void *arg);
	void *close_arg;
};

/* ---- the edge's side of struct craft_io ---- */

static uint64_t
edge__now_ms(void *arg)
{
	struct cluster__raft *c = arg;
	return uv_now(c->loop);
}

static uint64_t
edge__wall_ms(void *arg)
{
	(void)arg;
	return (uint64_t)time(NULL) * 1000;
}

static uint64_t
edge__random64(void *arg)
{
	(void)arg;
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = uv_hrtime() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

static void edge__run_cb(uv_idle_t *h);

static void
edge__schedule(void *arg)
{
	struct cluster__raft *c = arg;
	if (c->closing)
		return;
	if (c->handles)
		uv_idle_start(&c->run, edge__run_cb);
	else
		c->want_run = 1;
}

static struct craft_outbuf *
edge__outbuf(struct cluster__raft *c, const char *name)
{
	for (size_t i = 0; i < CRAFT_EDGE_PEERS; i++)
		if (c->out[i].name[0] && !strcmp(c->out[i].name, name))
			return &c->out[i];
	return NULL;
}

static int
edge__peer_add(void *arg, const char *name, const char *addr)
{
	struct cluster__raft *c = arg;
	struct craft_outbuf *o = edge__outbuf(c, name);
	for (size_t i = 0; !o && i < CRAFT_EDGE_PEERS; i++)
		if (!c->out[i].name[0]) {
			o = &c->out[i];
			snprintf(o->name, sizeof(o->name), "%s", name);
		}
	int rv = transport_add_peer(c->tp, name, addr);
	if (rv == TRANSPORT_EEXIST)
		rv = 0;
	if (rv)
		cluster__log("peer %s=%s error=\"%s\"", name, addr, transport_strerror(rv));
	return rv;
}

static void
edge__peer_del(void *arg, const char *name)
{
	struct cluster__raft *c = arg;
	transport_remove_peer(c->tp, name);
	struct craft_outbuf *o = edge__outbuf(c, name);
	if (o) {
		free(o->buf);
		memset(o, 0, sizeof(*o));
	}
}

static int
edge__peer_connected(void *arg, const char *name)
{
	struct cluster__raft *c = arg;
	struct transport_peer_stats ps;
	return c->tp && transport_peer_stats(c->tp, name, &ps) == 0 && ps.connected;
}

/* Writes the envelope header (craft_envelope) at p. */
static void
edge__env_put(struct cluster__raft *c, unsigned char *p)
{
	uint64_t cid, inc;
	craft_envelope(c->craft, &cid, &inc);
	p[0] = CRAFT_ENV_VERSION;
	store_u64_encode(cid, p + 1);
	store_u64_encode(inc, p + 9);
}

static void
edge__item_hdr(unsigned char *p, uint32_t kind, size_t len)
{
	p[0] = (unsigned char)kind;
	p[1] = (unsigned char)(len >> 24);
	p[2] = (unsigned char)(len >> 16);
	p[3] = (unsigned char)(len >> 8);
	p[4] = (unsigned char)len;
}

/* Sends the batch of o now: its items in one envelope frame. */
static void
edge__flush_peer(struct cluster__raft *c, struct craft_outbuf *o)
{
	if (!o->n)
		return;
	edge__env_put(c, o->buf);
	if (transport_send(c->tp, o->name, CRAFT_KIND_ENV, o->buf, o->len))
		craft_count_drop(c->craft, o->n);
	o->len = 0;
	o->n = 0;
	o->sent_ms = uv_now(c->loop);
}

static void
edge__flush_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	for (size_t i = 0; i < CRAFT_EDGE_PEERS; i++)
		if (c->out[i].name[0])
			edge__flush_peer(c, &c->out[i]);
}

/* True when o's last frame left at least CRAFT_BATCH_DELAY_MS ago. */
static bool
edge__may_send(const struct cluster__raft *c, const struct craft_outbuf *o)
{
	return uv_now(c->loop) >= o->sent_ms + CRAFT_BATCH_DELAY_MS;
}

/* The end of a loop turn: the batches of peers not sent to lately leave now, the others when
 * the flush timer fires. */
static void
edge__flush_now_cb(uv_prepare_t *h)
{
	struct cluster__raft *c = h->data;
	uv_prepare_stop(h);
	for (size_t i = 0; i < CRAFT_EDGE_PEERS; i++) {
		struct craft_outbuf *o = &c->out[i];
		if (!o->name[0] || !o->n)
			continue;
		if (edge__may_send(c, o))
			edge__flush_peer(c, o);
		else if (!uv_is_active((uv_handle_t *)&c->flush))
			uv_timer_start(&c->flush, edge__flush_cb, CRAFT_BATCH_DELAY_MS, 0);
	}
}

/* Queues a copy of one message for name (sent by edge__flush_now_cb or edge__flush_cb). */
static int
edge__send(void *arg, const char *name, uint32_t kind, const void *data, size_t len)
{
	struct cluster__raft *c = arg;
	struct craft_outbuf *o = edge__outbuf(c, name);
	if (!o)
		return -1;
	if (len + CRAFT_ENV_HDR + CRAFT_BATCH_HDR > CRAFT_BATCH_MAX_BYTES) {
		/* a big one goes alone, at once, in its own envelope */
		edge__flush_peer(c, o);
		unsigned char *buf = malloc(CRAFT_ENV_HDR + CRAFT_BATCH_HDR + len);
		if (!buf)
			return -1;
		edge__env_put(c, buf);
		edge__item_hdr(buf + CRAFT_ENV_HDR, kind, len);
		memcpy(buf + CRAFT_ENV_HDR + CRAFT_BATCH_HDR, data, len);
		int rv = transport_send(c->tp, name, CRAFT_KIND_ENV, buf,
					CRAFT_ENV_HDR + CRAFT_BATCH_HDR + len);
		free(buf);
		return rv ? -1 : 0;
	}
	if (o->len + CRAFT_BATCH_HDR + len > CRAFT_BATCH_MAX_BYTES)
		edge__flush_peer(c, o);
	size_t need = (o->len ? o->len : CRAFT_ENV_HDR) + CRAFT_BATCH_HDR + len;
	if (need > o->cap) {
		size_t cap = o->cap ? o->cap : 4096;
		while (cap < need)
			cap *= 2;
		unsigned char *nb = realloc(o->buf, cap);
		if (!nb)
			return -1; /* Raft tolerates loss */
		o->buf = nb;
		o->cap = cap;
	}
	if (!o->len)
		o->len = CRAFT_ENV_HDR; /* the envelope, written at the flush */
	unsigned char *p = o->buf + o->len;
	edge__item_hdr(p, kind, len);
	if (len)
		memcpy(p + CRAFT_BATCH_HDR, data, len);
	o->len += CRAFT_BATCH_HDR + len;
	o->n++;
	if (!c->handles)
		c->want_flush = 1; /* during open: started with the timer */
	else if (edge__may_send(c, o))
		uv_prepare_start(&c->flush_now, edge__flush_now_cb);
	else if (!uv_is_active((uv_handle_t *)&c->flush))
		uv_timer_start(&c->flush, edge__flush_cb, CRAFT_BATCH_DELAY_MS, 0);
	return 0;
}

static int
edge__send_raft(void *arg, const char *name, const struct raft_msg *m)
{
	void *buf;
	size_t len;
	int rv = transport_raft_encode(m, &buf, &len);
	if (rv) {
		cluster__log("encode %s to=%s error=\"%s\"", raft_msg_type_name(m->type), name,
			     transport_strerror(rv));
		return -1;
	}
	rv = edge__send(arg, name, TRANSPORT_KIND_RAFT, buf, len);
	free(buf);
	return rv;
}

static void
edge__work_cb(uv_work_t *req)
{
	struct cluster__raft *c = req->data;
	uint64_t t0 = uv_hrtime();
	c->write_rv = 0;
	if (c->wbatch->len)
		c->write_rv =
		    store_write(c->store, c->wbatch, c->wsync ? STORE_WRITE_SYNC : STORE_WRITE_WAL);
	if (!c->write_rv && c->wstate->len)
		c->write_rv = store_write(c->store, c->wstate, STORE_WRITE_NOWAL);
	c->wdisk_ns = uv_hrtime() - t0;
}

static void edge__finish_close(struct cluster__raft *c);

static void
edge__after_work_cb(uv_work_t *req, int status)
{
	struct cluster__raft *c = req->data;
	if (!status && !c->write_rv && c->wsync) {
		cluster__hist_add(&c->write_disk, c->wdisk_ns / 1000);
		cluster__hist_add(&c->write_turn, (uv_hrtime() - c->wstart_ns) / 1000);
	}
	craft_write_done(c->craft, status ? STORE_EIO : c->write_rv);
	if (c->closing)
		edge__finish_close(c);
}

static int
edge__write_start(void *arg, const struct store_batch *b, const struct store_batch *state, int sync)
{
	struct cluster__raft *c = arg;
	c->wbatch = b;
	c->wstate = state;
	c->wsync = sync;
	c->wstart_ns = uv_hrtime();
	int rv = uv_queue_work(c->loop, &c->work, edge__work_cb, edge__after_work_cb);
	if (rv)
		cluster__log("uv_queue_work error=\"%s\"", uv_strerror(rv));
	return rv;
}

static int
edge__write_now(void *arg, const struct store_batch *b, int mode)
{
	struct cluster__raft *c = arg;
	return store_write(c->store, b, mode);
}

static void
edge__digest_work_cb(uv_work_t *req)
{
	struct cluster__raft *c = req->data;
	c->digest_rv = store_view_digest(c->dview, c->dcfs, c->dn, c->dout);
}

static void
edge__digest_after_cb(uv_work_t *req, int status)
{
	struct cluster__raft *c = req->data;
	craft_digest_done(c->craft, status ? STORE_EIO : c->digest_rv);
	if (c->closing)
		edge__finish_close(c);
}

static int
edge__digest_start(void *arg, struct store_view *v, const enum store_cf *cfs, size_t n,
		   struct store_digest *out)
{
	struct cluster__raft *c = arg;
	c->dview = v;
	c->dcfs = cfs;
	c->dn = n;
	c->dout = out;
	return uv_queue_work(c->loop, &c->digest_work, edge__digest_work_cb, edge__digest_after_cb);
}

/* ---- inputs ---- */

static void
edge__run_cb(uv_idle_t *h)
{
	struct cluster__raft *c = h->data;
	uv_idle_stop(h);
	if (!c->closing)
		craft_run(c->craft);
}

static void
edge__tick_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	if (!c->closing)
		craft_tick(c->craft);
}

static void
edge__recv_one(struct cluster__raft *c, const char *from, uint32_t kind, const void *data,
	       size_t len)
{
	if (kind != TRANSPORT_KIND_RAFT) {
		craft_recv(c->craft, from, kind, data, len);
		return;
	}
	struct transport_raft_in in;
	if (transport_raft_decode(data, len, &in)) {
		craft_recv_raft(c->craft, from, NULL);
		return;
	}
	craft_recv_raft(c->craft, from, &in.msg);
	transport_raft_in_fini(&in);
}

/* The transport's connection to a peer closed (transport_on_peer_down). */
static void
edge__peer_down_cb(void *arg, const char *peer)
{
	struct cluster__raft *c = arg;
	if (!c->closing && c->craft != NULL)
		craft_peer_down(c->craft, peer);
}

static void
edge__recv_cb(void *arg, const char *from, uint32_t kind, const void *data, size_t len)
{
	struct cluster__raft *c = arg;
	if (c->closing)
		return;
	/* peer input: the envelope first (another cluster's frames stop here), then every length
	 * is checked against what is left; a bad frame is dropped from the bad item on */
	const unsigned char *p = data, *end = p + len;
	if (kind != CRAFT_KIND_ENV || len < CRAFT_ENV_HDR || p[0] != CRAFT_ENV_VERSION) {
		craft_count_drop(c->craft, 1);
		return;
	}
	int env = craft_recv_env(c->craft, from, store_u64_decode(p + 1), store_u64_decode(p + 9));
	if (env != 0 && env != CRAFT_ENV_STRANGER)
		return;
	p += CRAFT_ENV_HDR;
	while (p < end && !c->closing) {
		if ((size_t)(end - p) < CRAFT_BATCH_HDR) {
			craft_count_drop(c->craft, 1);
			return;
		}
		uint32_t k = p[0];
		size_t l = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
		p += CRAFT_BATCH_HDR;
		if (l > (size_t)(end - p) || k == CRAFT_KIND_BATCH || k == CRAFT_KIND_ENV) {
			craft_count_drop(c->craft, 1);
			return;
		}
		if (env == CRAFT_ENV_STRANGER)
			craft_recv_stranger(c->craft, from, k, p, l); /* a join request only */
		else
			edge__recv_one(c, from, k, p, l);
		p += l;
	}
}

/* ---- the node's calls ---- */

int
cluster__raft_propose(struct cluster__raft *c, const Relay__Command *cmd, cluster_propose_cb cb,
		      void *arg)
{
	return craft_propose(c->craft, cmd, cb, arg, NULL);
}

int
cluster__raft_member_add(struct cluster__raft *c, const char *id, const char *addr,
			 cluster_propose_cb cb, void *arg)
{
	return craft_member_add(c->craft, id, addr, cb, arg);
}

int
cluster__raft_member_remove(struct cluster__raft *c, const char *id, cluster_propose_cb cb,
			    void *arg)
{
	return craft_member_remove(c->craft, id, cb, arg);
}

int
cluster__raft_transfer_leader(struct cluster__raft *c, const char *target, const char *from_leader)
{
	if (c->closing)
		return CLUSTER_ECLOSED;
	return craft_transfer_leader(c->craft, target, from_leader);
}

void
cluster__raft_stats(struct cluster__raft *c, struct cluster_stats *st)
{
	craft_stats(c->craft, st);
	st->write_disk = c->write_disk;
	st->write_turn = c->write_turn;
}

void
cluster__raft_status(struct cluster__raft *c, struct cluster_status *st)
{
	craft_status(c->craft, st);
	if (c->tp) {
		struct transport_stats ts;
		transport_stats(c->tp, &ts);
		st->transport = (struct cluster_transport_counts){
		    .frames_sent = ts.sent,
		    .frames_received = ts.received,
		    .strangers = ts.strangers_received,
		    .dropped_full = ts.dropped_full,
		    .dropped_unauth = ts.dropped_unauth,
		    .dropped_malformed = ts.dropped_malformed,
		    .send_errors = ts.send_errors,
		    .redials = ts.redials,
		    .handshake_failures = ts.handshake_failures,
		    .inbound_refused = ts.inbound_refused,
		    .stale_closed = ts.stale_inbound_closed,
		    .inbound = ts.inbound,
		};
		for (unsigned i = 0; i < st->n_peers; i++) {
			struct cluster_peer_status *p = &st->peers[i];
			struct transport_peer_stats ps;
			if (!p->self && transport_peer_stats(c->tp, p->name, &ps) == 0) {
				p->queued = ps.queued;
				p->queued_bytes = ps.queued_bytes;
			}
		}
	}
}

struct queue_fsm *
cluster__raft_queue(struct cluster__raft *c)
{
	return craft_queue(c->craft);
}

int
cluster__raft_stored_commit(struct store *s, uint64_t *commit)
{
	return craft_stored_commit(s, commit);
}

struct store *
cluster__raft_store(struct cluster__raft *c)
{
	return c->store;
}

/* ---- open ---- */

int
cluster__raft_wanted(const struct cluster_config *cfg)
{
	if (!cfg->cluster_listen || !*cfg->cluster_listen || cfg->n_peers == 0)
		return 0;
	if (cfg->n_peers >= 2)
		return 1;
	/* one peer that is not this node: join that cluster */
	const char *eq = strchr(cfg->peers[0], '=');
	size_t n = eq ? (size_t)(eq - cfg->peers[0]) : strlen(cfg->peers[0]);
	return !(cfg->node_id && strlen(cfg->node_id) == n &&
		 !strncmp(cfg->peers[0], cfg->node_id, n));
}

int
cluster__raft_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster__raft **out)
{
	char path[CRAFT_PATH_MAX];
	int rv = cluster__db_path(cfg->data_dir, path, sizeof(path));
	if (rv)
		return rv;
	int ntls = !!(cfg->cluster_ca && *cfg->cluster_ca) +
		   !!(cfg->cluster_cert && *cfg->cluster_cert) +
		   !!(cfg->cluster_key && *cfg->cluster_key);
	if (ntls != 0 && ntls != 3) {
		cluster__log("open: cluster_ca, cluster_cert and cluster_key: all or none");
		return CLUSTER_EINVAL;
	}
	if (!cfg->node_id || !cfg->cluster_listen)
		return CLUSTER_EINVAL;
	if (cfg->auto_join && ntls != 3) {
		/* without mutual TLS anyone reaching cluster_listen could make itself a member */
		cluster__log("open: auto_join needs cluster TLS (cluster_ca, cluster_cert, "
			     "cluster_key)");
		return CLUSTER_EINVAL;
	}
	struct cluster__raft *c = calloc(1, sizeof(*c));
	if (!c)
		return CLUSTER_ENOMEM;
	c->loop = loop;
	c->work.data = c;
	c->digest_work.data = c;
	if ((rv = store_open(path, 0, &c->store))) {
		rv = cluster__store_err(rv);
		goto err_after_alloc;
	}
	struct transport_config tc = {
	    .node_id = cfg->node_id,
	    .listen = cfg->cluster_listen,
	    .ca_file = ntls ? cfg->cluster_ca : NULL,
	    .cert_file = ntls ? cfg->cluster_cert : NULL,
	    .key_file = ntls ? cfg->cluster_key : NULL,
	    .max_msg_bytes = CRAFT_MAX_FRAME_BYTES,
	    .admit_strangers = cfg->auto_join,
	};
	if ((rv = transport_open(loop, &tc, edge__recv_cb, c, &c->tp))) {
		cluster__log("open: cluster_listen=%s error=\"%s\"", cfg->cluster_listen,
			     transport_strerror(rv));
		rv = rv == TRANSPORT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EIO;
		goto err_after_store;
	}
	transport_on_peer_down(c->tp, edge__peer_down_cb);
	struct craft_io io = {
	    .arg = c,
	    .now_ms = edge__now_ms,
	    .wall_ms = edge__wall_ms,
	    .random64 = edge__random64,
	    .schedule = edge__schedule,
	    .peer_add = edge__peer_add,
	    .peer_del = edge__peer_del,
	    .peer_connected = edge__peer_connected,
	    .send = edge__send,
	    .send_raft = edge__send_raft,
	    .write_start = edge__write_start,
	    .write_now = edge__write_now,
	    .digest_start = edge__digest_start,
	};
	struct craft_config cc = {
	    .node_id = cfg->node_id,
	    .cluster_listen = cfg->cluster_listen,
	    .peers = cfg->peers,
	    .n_peers = cfg->n_peers,
	    .max_pending = cfg->max_pending,
	    .heartbeat_ms = cfg->heartbeat_ms,
	    .election_ms = cfg->election_timeout_ms,
	    .fail_ms = cfg->propose_fail_ms,
	    .retry_ms = cfg->retry_ms,
	    .snapshot_entries = cfg->snapshot_entries,
	    .snapshot_spread = 1,
	    .auto_join = cfg->auto_join,
	    .cluster_advertise = cfg->cluster_advertise,
	};
	if ((rv = craft_open(&cc, c->store, &io, &c->craft)))
		goto err_after_transport;
	uv_idle_init(loop, &c->run);
	c->run.data = c;
	uv_timer_init(loop, &c->tick);
	c->tick.data = c;
	uv_timer_init(loop, &c->flush);
	c->flush.data = c;
	uv_prepare_init(loop, &c->flush_now);
	c->flush_now.data = c;
	c->handles = 1;
	if (c->want_run)
		edge__schedule(c);
	if (c->want_flush)
		uv_timer_start(&c->flush, edge__flush_cb, CRAFT_BATCH_DELAY_MS, 0);
	unsigned hb = cfg->heartbeat_ms ? cfg->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
	uv_timer_start(&c->tick, edge__tick_cb, hb, hb);
	cluster__log("event=cluster-edge node=%s listen=%s tls=%s", cfg->node_id,
		     cfg->cluster_listen, ntls ? "yes" : "no");
	*out = c;
	return 0;
err_after_transport:
	transport_close(c->tp, NULL, NULL);
	for (size_t i = 0; i < CRAFT_EDGE_PEERS; i++)
		free(c->out[i].buf);
err_after_store:
	store_free(c->store);
err_after_alloc:
	free(c);
	return rv;
}

/* ---- close ---- */

static void
edge__free(struct cluster__raft *c)
{
	void (*done)(void *) = c->close_done;
	void *arg = c->close_arg;
	craft_free(c->craft);
	store_free(c->store);
	for (size_t i = 0; i < CRAFT_EDGE_PEERS; i++)
		free(c->out[i].buf);
	free(c);
	if (done)
		done(arg);
}

static void
edge__closed_one(struct cluster__raft *c)
{
	if (--c->close_pending == 0)
		edge__free(c);
}

static void
edge__handle_closed_cb(uv_handle_t *h)
{
	edge__closed_one(h->data);
}

static void
edge__tp_closed_cb(void *arg)
{
	edge__closed_one(arg);
}

/* Starts closing the handles and the transport once no write or digest is in flight. */
static void
edge__finish_close(struct cluster__raft *c)
{
	if (craft_busy(c->craft) || c->close_pending)
		return;
	c->close_pending = 5;
	transport_close(c->tp, edge__tp_closed_cb, c);
	c->tp = NULL;
	uv_close((uv_handle_t *)&c->run, edge__handle_closed_cb);
	uv_close((uv_handle_t *)&c->tick, edge__handle_closed_cb);
	uv_close((uv_handle_t *)&c->flush, edge__handle_closed_cb);
	uv_close((uv_handle_t *)&c->flush_now, edge__handle_closed_cb);
}

void
cluster__raft_close(struct cluster__raft *c, void (*done)(void *arg), void *arg)
{
	c->closing = 1;
	c->close_done = done;
	c->close_arg = arg;
	craft_closing(c->craft);
	uv_idle_stop(&c->run);
	uv_timer_stop(&c->tick);
	uv_timer_stop(&c->flush);
	uv_prepare_stop(&c->flush_now);
	edge__finish_close(c); /* else when the write or digest in flight completes */
}
