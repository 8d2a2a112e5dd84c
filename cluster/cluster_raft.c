/*
 * cluster_raft.c - the replicated cluster: the host of the pure Raft core (cluster/raft.h).
 * cluster.c delegates every call here when cluster_listen and two or more peers are configured;
 * see cluster.h for the contract the node sees (it is the same as the single node's).
 *
 * Inputs go to the core and schedule ONE run per loop turn (a uv_idle): ticks (uv_timer every
 * heartbeat_ms; the election timeout is election_timeout_ms / heartbeat_ms ticks), peer
 * messages (transport recv callback, on the loop), proposals, and completed writes.  A run:
 *   1. submits waiting proposals: raft_propose on the leader, or a PROPOSE frame (the packed,
 *      tagged Command) to the known leader, which proposes it as is;
 *   2. drains the core's readies, in order: hard state and entries go into the NEXT write batch
 *      (a suffix truncation first when entries[0] overwrites what we wrote), messages are sent
 *      at once (raft.h: the core holds back whatever needs durable state), committed entries are
 *      applied to the queue state machine, whose store writes and the applied index go into the
 *      same next batch after them, then raft_advance;
 *   3. starts the next write if none is in flight: ONE atomic RocksDB write, synced when it
 *      carries raft state, off the loop thread (uv_queue_work).  Everything that arrived during
 *      the write in flight joins the next one: group commit.  When it completes,
 *      raft_persisted(seq) lets the core count our own log towards commit and release the
 *      acknowledgements and votes it held.
 * The origin of a proposal completes its callback when IT applies the entry carrying its tag
 * (Command.origin_node/boot/seq): committed on a majority and applied here (G1).
 *
 * Peer messages (Raft messages and forwarded proposals) to one peer wait up to
 * CRAFT_BATCH_DELAY_MS and leave as one transport frame (CRAFT_KIND_BATCH: [kind][length]
 * items): NNG's cost is per message, and a loaded leader otherwise spends its loop in NNG's
 * hand-offs (measured: 3-node accept rate ~550 -> ~2000 msg/s at 4 KiB x 50 sessions).
 *
 * Why the apply writes are safe in the same stream: they follow, in the same atomic write or a
 * later one, the log write of every entry they apply, and the applied index travels with them;
 * at open the core hands out committed entries again from the snapshot index on, and those at
 * or below the stored applied index are skipped.
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
 * the (empty) queue state
 * machine and fetches the key/values with SnapshotFetch / SnapshotChunk frames from a node that
 * has a view at or past the index (the leader, the descriptor's node, then each member), one
 * chunk of at most CRAFT_SNAP_CHUNK_BYTES at a time, written as they come (unsynced).  A
 * failed or silent session starts over with the next node, its partial copy wiped.  When the
 * copy matches the view's digest, one synced write drops the marker, records the view's
 * index as applied and installs the view's address book (the first chunk of a session carries
 * it: the view served may be newer than the descriptor); the queue is reloaded, and the
 * entries the core handed out meanwhile (all durable in the log) are applied from the store.
 * Until then nothing is applied.  At open, a marker left by a crash mid-install makes the node
 * wipe the partial copy and fetch again.
 * Any node whose store is complete serves fetches (at most CRAFT_SNAP_SERVE_MAX at once).
 *
 * Failure modes: a failed write is retried at the next tick with everything that queued up
 * since (the core waits: nothing it holds is released before raft_persisted).  Allocation
 * failure or a damaged entry while applying stops this node (c->failed: proposals fail, the
 * store keeps the log; a restart replays).  Peer input the core or the codec rejects is dropped
 * and counted.  A proposal not committed within propose_fail_ms gets CLUSTER_ETIMEDOUT.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cluster_types.h"
#include "cluster_raft.h"
#include "cluster_util.h"
#include "peers.h"
#include "queue_fsm.h"
#include "raft.h"
#include "store.h"
#include "transport.h"

/* Frame kind of a forwarded proposal (a packed, tagged Relay__Command). */
#define CRAFT_KIND_PROPOSE 2u
/* Frame kind of a leadership transfer request forwarded to the leader: "target\nfrom_leader". */
#define CRAFT_KIND_TRANSFER 4u
/* Frame kind of a batch: several messages, each [kind u8][length u32 BE][payload]. */
#define CRAFT_KIND_BATCH 3u
#define CRAFT_BATCH_HDR 5
/* Outgoing messages to a peer wait this long to share one frame (fewer NNG messages: their
 * cost per message, not per byte, bounds a loaded leader), or until the batch holds this many
 * bytes.  A bigger message (a snapshot chunk) flushes the batch and goes alone. */
#define CRAFT_BATCH_DELAY_MS 1
#define CRAFT_BATCH_MAX_BYTES ((size_t)1 << 20)
/* raft_meta keys of the replicated mode. */
#define CRAFT_META_HS "raft_hs"
#define CRAFT_META_SNAP "raft_snap"
#define CRAFT_META_SNAP_DATA "raft_snap_data"
#define CRAFT_META_PEERS "raft_peers"
/* A learner is promoted to voter once its log is within this many entries of the commit index
 * and the leader streams to it (thesis 4.2.1: catch up before counting towards quorums). */
#define CRAFT_PROMOTE_LAG 64u
#define CRAFT_META_VERSION 1
/* Bound on the path of the database directory. */
#define CRAFT_PATH_MAX 4096
/* Frame kinds of the snapshot stream: a SnapshotFetch (follower -> server), a SnapshotChunk. */
#define CRAFT_KIND_SNAP_FETCH 5u
#define CRAFT_KIND_SNAP_CHUNK 6u
/* Streamed snapshots.  A chunk carries at most this many key + value bytes (a longer value
 * comes in pieces) and this many pieces; a node serves at most CRAFT_SNAP_SERVE_MAX sessions at
 * once (more wait: SNAP_RETRY) and drops one idle for CRAFT_SNAP_SESSION_IDLE_MS.  A fetch
 * request unanswered for CRAFT_FETCH_TIMEOUT_MS is sent again, CRAFT_FETCH_TRIES times (none
 * when the node is not connected), then a new session starts with the next node; SNAP_RETRY waits
 * CRAFT_FETCH_RETRY_MS, a failed session CRAFT_FETCH_RESTART_MS. */
#define CRAFT_SNAP_NCFS 3
#define CRAFT_SNAP_CHUNK_BYTES ((size_t)1 << 20)
#define CRAFT_SNAP_CHUNK_KVS 16384u
#define CRAFT_SNAP_SERVE_MAX 4
#define CRAFT_SNAP_SESSION_IDLE_MS 30000u
#define CRAFT_FETCH_TIMEOUT_MS 5000u
#define CRAFT_FETCH_TRIES 3u
#define CRAFT_FETCH_RETRY_MS 200u
#define CRAFT_FETCH_RESTART_MS 1000u
#define CRAFT_SERVE_RESTART 1 /* craft__serve_read: the position is not in the view */
/* Bytes of a packed SnapshotDescriptor: the fields, and the address book (CLUSTER_MAX_PEERS). */
#define CRAFT_DESCRIPTOR_MAX (256u + CLUSTER_MAX_PEERS * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 16u))
/* A snapshot is also taken once this many entry bytes were applied since the last one, so the
 * in-memory log (entries up to RAFT_ENTRY_MAX_BYTES each) stays bounded in bytes too. */
#define CRAFT_SNAPSHOT_LOG_BYTES ((uint64_t)256 << 20)
/* Bytes of proposals waiting to commit on this node (beyond: CLUSTER_EBUSY, 451), and of the
 * next write while one is in flight (beyond: the core's readies wait). */
#define CRAFT_PENDING_MAX_BYTES ((size_t)256 << 20)
#define CRAFT_NEXT_MAX_BYTES ((size_t)256 << 20)
/* Bound on one peer frame's payload, sent or received: an AppendEntries with one entry of
 * RAFT_ENTRY_MAX_BYTES plus up to raft's max_msg_bytes of others, or a forwarded proposal. */
#define CRAFT_MAX_FRAME_BYTES ((size_t)RAFT_ENTRY_MAX_BYTES + ((size_t)2 << 20))

struct craft_prop {
	struct craft_prop *next, *prev; /* pending list, in seq order */
	struct craft_prop *hnext;	/* hash chain by seq */
	uint64_t seq;
	cluster_propose_cb cb;
	void *arg;
	uint64_t deadline; /* uv_now() ms */
	uint64_t sent_ms;  /* last submission (propose or forward) */
	int status;
	size_t len;
	unsigned char data[]; /* packed, tagged Relay__Command */
};

struct craft_list {
	struct craft_prop *head, *tail;
};

/* A consistent view of this node's store, digested; fetch sessions stream from it. */
/* One entry of an address book carried with a snapshot (Relay__Peer without `local`). */
struct craft_book_ent {
	char node[CLUSTER_ID_MAX + 1];
	char addr[CLUSTER_ADDR_MAX + 1];
	uint8_t state;
};

/* An address book as some view or snapshot holds it; n 0: none. */
struct craft_book {
	size_t n;
	struct craft_book_ent e[CLUSTER_MAX_PEERS];
};

struct craft_view {
	struct store_view *v;	/* owned */
	struct craft_book book; /* the address book stored in the view (entries from the log) */
	uint64_t id;		/* random, nonzero */
	uint64_t index;		/* the applied index stored with the state it shows */
	struct store_digest digest;
	int refs; /* sessions using it, + 1 while it is the node's current view */
	uint64_t t0;
};

/* One fetch session served to a peer. */
struct craft_serve {
	int used;
	size_t peer;
	uint64_t session;
	struct craft_view *view; /* a reference */
	uint64_t last_ms;
};

/* This node's fetch of a snapshot's key/values (while an install is incomplete). */
struct craft_fetch {
	int active; /* the install marker is in the store */
	uint64_t min_index;
	char hint[CLUSTER_ID_MAX + 1]; /* the node the descriptor named */
	size_t src;		       /* peer asked */
	unsigned attempt, tries;
	int wiped; /* the partial copy of the last session is gone */
	uint64_t session, seq;
	int bound; /* the session's view is known: */
	uint64_t view_index, view_id, view_keys, view_bytes;
	uint32_t view_crc;
	struct craft_book view_book; /* the address book of the view (SnapshotChunk.peers) */
	int ci;			     /* position: CF in the stream, */
	unsigned char key[STORE_KEY_MAX + 1]; /* key (the first still wanted), */
	size_t klen;			      /* */
	int has_key;			      /* */
	uint64_t offset;		      /* bytes of its value held */
	unsigned char *val;		      /* owned: a value in pieces */
	uint64_t val_size;		      /* */
	struct store_digest digest;	      /* of what was received */
	uint64_t deadline;		      /* uv_now() an answer is due; 0 none */
	uint64_t next_at;		      /* uv_now() to send the next request */
	uint64_t t0;			      /* uv_hrtime() at the start */
};

/* Messages waiting to leave for one peer in one frame. */
struct craft_outbuf {
	unsigned char *buf; /* owned */
	size_t len, cap;
	unsigned n;
	uint32_t kind; /* of the only message, when n == 1 */
};

struct cluster__raft {
	uv_loop_t *loop;       /* borrowed */
	struct store *store;   /* owned */
	struct queue_fsm *fsm; /* owned */
	struct raft *raft;     /* owned */
	struct transport *tp;  /* owned */
	/* the address book (cluster.h "Membership"), this node included; parallel arrays, moved
	 * together by craft__book_move */
	struct cluster_peer peers[CLUSTER_MAX_PEERS];
	int64_t last_contact[CLUSTER_MAX_PEERS]; /* uv_now() of the last frame; -1 never */
	uint8_t pstate[CLUSTER_MAX_PEERS];	 /* Relay__PeerState */
	uint8_t plocal[CLUSTER_MAX_PEERS];	 /* known from config `peers`, not from the log */
	uint64_t pprop_ms[CLUSTER_MAX_PEERS];	 /* leader: last proposal about it; 0 never */
	size_t n_peers;
	size_t self;
	int join;			 /* started outside config `peers`: joins a cluster */
	struct raft_conf conf_committed; /* the latest configuration applied here */
	uint64_t conf_index;		 /* its entry's index (0: from the core's state) */
	uint64_t id, boot, next_seq;

	unsigned max_pending, heartbeat_ms, fail_ms, retry_ms, snapshot_entries;

	/* proposals not completed: list in seq order, hash by seq; unsent: first not submitted */
	struct craft_list pending;
	struct craft_prop *unsent;
	size_t npending;
	struct craft_prop **buckets;
	size_t nbuckets; /* power of two */

	uv_idle_t run;
	uv_timer_t tick;
	uv_timer_t flush; /* sends the batches CRAFT_BATCH_DELAY_MS after the first message */
	struct craft_outbuf out[CLUSTER_MAX_PEERS];
	uv_work_t work;
	int writing, write_sync, write_rv;
	uint64_t write_seq, write_applied, write_bytes;
	struct store_batch wbatch; /* the write in flight */
	struct store_batch next;   /* the next write */
	int next_sync;
	uint64_t next_seq_persist, next_bytes;
	int retry_write; /* a write failed: retry at the next tick */

	uint64_t synced_term, synced_vote; /* hard state in the batches so far */
	uint64_t log_last;		   /* highest log index put in a batch */
	uint64_t applied;		   /* applied to the state machine (memory) */
	uint64_t durable_applied;	   /* applied state written */
	uint64_t snap_index;		   /* latest snapshot (ours or installed) */
	uint64_t snap_tried;		   /* applied index at the last snapshot attempt */
	uint64_t applied_bytes;		   /* entry bytes applied since then */
	uint64_t handed;		   /* highest committed index the core handed out */
	size_t pending_bytes;		   /* bytes of the pending proposals */

	struct craft_view *view; /* the newest digested view (a reference), or NULL */
	struct craft_view *prep; /* the view being digested (owned until done) */
	int prep_compact;	 /* compact the log to it when digested */
	int digesting, digest_rv;
	uv_work_t digest_work;
	struct craft_serve serve[CRAFT_SNAP_SERVE_MAX];
	struct craft_fetch fetch;

	struct raft_ready held; /* a ready with a snapshot, waiting for the write in flight */
	int have_held;
	uint64_t install_seq;

	uint64_t lead;
	enum raft_role role;
	uint64_t term;
	int failed; /* sticky CLUSTER_E*: apply stopped */

	int closing;
	int close_pending; /* handles and the transport still closing */
	void (*close_done)(void *arg);
	void *close_arg;

	struct cluster_stats stats;
	struct cluster_status counters; /* only the counters are kept here */
};

/* ---- small helpers ---- */

static uint64_t
craft__random64(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = uv_hrtime() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

static int
craft__peer_by_id(const struct cluster__raft *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_peers; i++)
		if (c->peers[i].id == id)
			return (int)i;
	return -1;
}

static int
craft__peer_by_name(const struct cluster__raft *c, const char *name)
{
	for (size_t i = 0; i < c->n_peers; i++)
		if (!strcmp(c->peers[i].name, name))
			return (int)i;
	return -1;
}

/* ---- the address book ---- */

static const char *
craft__peer_state_name(unsigned st)
{
	switch (st) {
	case RELAY__PEER_STATE__PEER_ACTIVE:
		return "active";
	case RELAY__PEER_STATE__PEER_LEAVING:
		return "leaving";
	default:
		return "left";
	}
}

/* 0 when name is a valid node id and addr (may be NULL or "": not checked) a host:port. */
static int
craft__id_addr_ok(const char *name, const char *addr)
{
	char spec[CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 8];
	struct cluster_peer p;
	if (!name || strlen(name) > CLUSTER_ID_MAX || (addr && strlen(addr) > CLUSTER_ADDR_MAX))
		return CLUSTER_EBADADDR;
	snprintf(spec, sizeof(spec), "%s=%s", name, addr && *addr ? addr : "x:1");
	return cluster_peer_parse(spec, &p, NULL, 0) ? CLUSTER_EBADADDR : 0;
}

/* Peer input or log content: a Peer command we can apply. */
static int
craft__peer_validate(const Relay__Peer *p)
{
	if (!p || craft__id_addr_ok(p->node, p->addr))
		return CLUSTER_EINVAL;
	if (p->state != RELAY__PEER_STATE__PEER_ACTIVE &&
	    p->state != RELAY__PEER_STATE__PEER_LEAVING && p->state != RELAY__PEER_STATE__PEER_LEFT)
		return CLUSTER_EINVAL;
	return 0;
}

/* Commands the host accepts: Peer (applied here) and what the queue state machine accepts. */
static int
craft__validate(const Relay__Command *cmd)
{
	if (cmd->cmd_case == RELAY__COMMAND__CMD_PEER)
		return craft__peer_validate(cmd->peer);
	return queue_validate(cmd) ? CLUSTER_EINVAL : 0;
}

static void craft__serve_release(struct craft_serve *sv);

/* Moves book slot src into dst (dst's content is gone). */
static void
craft__book_move(struct cluster__raft *c, size_t dst, size_t src)
{
	c->peers[dst] = c->peers[src];
	c->last_contact[dst] = c->last_contact[src];
	c->pstate[dst] = c->pstate[src];
	c->plocal[dst] = c->plocal[src];
	c->pprop_ms[dst] = c->pprop_ms[src];
	c->out[dst] = c->out[src];
	memset(&c->out[src], 0, sizeof(c->out[src]));
	if (c->self == src)
		c->self = dst;
	/* the snapshot sessions name peers by slot */
	for (size_t k = 0; k < CRAFT_SNAP_SERVE_MAX; k++)
		if (c->serve[k].used && c->serve[k].peer == src)
			c->serve[k].peer = dst;
	if (c->fetch.src == src)
		c->fetch.src = dst;
}

/* Dials addr for book slot i (not self; nothing before the transport is open). */
static void
craft__book_dial(struct cluster__raft *c, size_t i)
{
	if (!c->tp || i == c->self || !c->peers[i].addr[0])
		return;
	int rv = transport_add_peer(c->tp, c->peers[i].name, c->peers[i].addr);
	if (rv)
		cluster__log("peer %s=%s error=\"%s\"", c->peers[i].name, c->peers[i].addr,
			     transport_strerror(rv));
}

/* Adds a member to the book; its index, or -1 when the book is full. */
static int
craft__book_add(struct cluster__raft *c, const char *name, const char *addr, unsigned state,
		int local)
{
	if (c->n_peers >= CLUSTER_MAX_PEERS)
		return -1;
	size_t i = c->n_peers++;
	memset(&c->peers[i], 0, sizeof(c->peers[i]));
	snprintf(c->peers[i].name, sizeof(c->peers[i].name), "%s", name);
	snprintf(c->peers[i].addr, sizeof(c->peers[i].addr), "%s", addr ? addr : "");
	c->peers[i].id = cluster_peer_raft_id(name);
	c->last_contact[i] = -1;
	c->pstate[i] = (uint8_t)state;
	c->plocal[i] = (uint8_t)local;
	c->pprop_ms[i] = 0;
	memset(&c->out[i], 0, sizeof(c->out[i]));
	craft__book_dial(c, i);
	return (int)i;
}

/* Forgets member i (never self): its connection closes, its waiting messages are dropped. */
static void
craft__book_del(struct cluster__raft *c, size_t i)
{
	if (i == c->self || i >= c->n_peers)
		return;
	if (c->tp && c->peers[i].addr[0])
		transport_remove_peer(c->tp, c->peers[i].name);
	free(c->out[i].buf);
	memset(&c->out[i], 0, sizeof(c->out[i]));
	for (size_t k = 0; k < CRAFT_SNAP_SERVE_MAX; k++)
		if (c->serve[k].used && c->serve[k].peer == i)
			craft__serve_release(&c->serve[k]);
	if (c->fetch.src == i)
		c->fetch.src =
		    c->self; /* a silent source: the fetch moves on (craft__fetch_tick) */
	size_t last = --c->n_peers;
	if (i != last)
		craft__book_move(c, i, last);
}

static void
craft__book_set_addr(struct cluster__raft *c, size_t i, const char *addr)
{
	if (!addr || !*addr || !strcmp(c->peers[i].addr, addr))
		return;
	if (c->tp && i != c->self && c->peers[i].addr[0])
		transport_remove_peer(c->tp, c->peers[i].name);
	snprintf(c->peers[i].addr, sizeof(c->peers[i].addr), "%s", addr);
	craft__book_dial(c, i);
}

/* Fills p (borrowing from the book) for slot i. */
static void
craft__book_peer(const struct cluster__raft *c, size_t i, Relay__Peer *p, int with_local)
{
	relay__peer__init(p);
	p->node = (char *)c->peers[i].name;
	p->addr = (char *)c->peers[i].addr;
	p->state = (Relay__PeerState)c->pstate[i];
	if (with_local && c->plocal[i]) {
		p->has_local = 1;
		p->local = 1;
	}
}

/* Adds the book to b (raft_meta "raft_peers"). */
static int
craft__book_put(struct cluster__raft *c, struct store_batch *b)
{
	Relay__Peer ps[CLUSTER_MAX_PEERS], *pp[CLUSTER_MAX_PEERS];
	for (size_t i = 0; i < c->n_peers; i++) {
		craft__book_peer(c, i, &ps[i], 1);
		pp[i] = &ps[i];
	}
	Relay__PeerBook book = RELAY__PEER_BOOK__INIT;
	book.n_peers = c->n_peers;
	book.peers = pp;
	unsigned char buf[CLUSTER_MAX_PEERS * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 16) + 16];
	size_t len = relay__peer_book__get_packed_size(&book);
	if (len > sizeof(buf))
		return STORE_EINVAL;
	relay__peer_book__pack(&book, buf);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1,
			       buf, len);
}

/* Replaces the book with the stored one.  STORE_ENOTFOUND when none was stored. */
static int
craft__book_load(struct cluster__raft *c, const char *self)
{
	void *v;
	size_t vlen;
	int rv = store_get(c->store, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1,
			   &v, &vlen);
	if (rv)
		return rv;
	Relay__PeerBook *book = relay__peer_book__unpack(NULL, vlen, v);
	free(v);
	if (!book || book->n_peers > CLUSTER_MAX_PEERS) {
		if (book)
			relay__peer_book__free_unpacked(book, NULL);
		return STORE_ECORRUPT;
	}
	for (size_t i = 0; i < book->n_peers; i++)
		if (craft__peer_validate(book->peers[i])) {
			relay__peer_book__free_unpacked(book, NULL);
			return STORE_ECORRUPT;
		}
	c->n_peers = 0;
	c->self = SIZE_MAX;
	for (size_t i = 0; i < book->n_peers; i++) {
		const Relay__Peer *p = book->peers[i];
		int k = craft__book_add(c, p->node, p->addr, p->state, p->has_local && p->local);
		if (k >= 0 && !strcmp(p->node, self))
			c->self = (size_t)k;
	}
	relay__peer_book__free_unpacked(book, NULL);
	return 0;
}

/* Applies a committed Peer command to the book (and the transport), and adds the book to the
 * next write.  Returns the status for the proposer. */
static int
craft__apply_peer(struct cluster__raft *c, uint64_t index, const Relay__Peer *p)
{
	if (craft__peer_validate(p))
		return CLUSTER_EINVAL;
	int i = craft__peer_by_name(c, p->node);
	const char *addr = p->addr ? p->addr : "";
	int status = 0;
	if (p->has_local && p->local &&
	    (p->state != RELAY__PEER_STATE__PEER_ACTIVE || (i >= 0 && !c->plocal[i]))) {
		/* a publication of a config-known member after a Peer command for it: stale */
		cluster__log("index=%" PRIu64 " event=peer node=%s publication skipped", index,
			     p->node);
		return 0;
	}
	switch (p->state) {
	case RELAY__PEER_STATE__PEER_ACTIVE:
		if (i < 0) {
			if (!*addr)
				return CLUSTER_EBADADDR;
			if ((i = craft__book_add(c, p->node, addr, p->state, 0)) < 0)
				return CLUSTER_EFULL;
		} else {
			craft__book_set_addr(c, (size_t)i, addr);
		}
		break;
	case RELAY__PEER_STATE__PEER_LEAVING:
		if (i < 0)
			return CLUSTER_ENOMEMBER;
		break;
	default:
		if (i < 0)
			return 0;
		if ((size_t)i != c->self) {
			cluster__log("index=%" PRIu64 " event=peer node=%s state=left", index,
				     p->node);
			craft__book_del(c, (size_t)i);
			i = -1;
		}
		break;
	}
	if (i >= 0) {
		if (c->pstate[i] != p->state)
			c->pprop_ms[i] = 0;
		c->pstate[i] = (uint8_t)p->state;
		c->plocal[i] = 0;
		cluster__log("index=%" PRIu64 " event=peer node=%s addr=%s state=%s", index,
			     p->node, c->peers[i].addr, craft__peer_state_name(p->state));
	}
	int rv = craft__book_put(c, &c->next);
	if (rv) {
		cluster__log("address book not recorded error=\"%s\"", store_strerror(rv));
		status = cluster__store_err(rv);
	}
	return status;
}

/* Copies the entries of a carried address book into bk (validated: -1 on a bad one). */
static int
craft__book_from_proto(struct craft_book *bk, Relay__Peer *const *peers, size_t n)
{
	bk->n = 0;
	if (n > CLUSTER_MAX_PEERS)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const Relay__Peer *p = peers[i];
		if (craft__peer_validate(p))
			return -1;
		struct craft_book_ent *e = &bk->e[i];
		snprintf(e->node, sizeof(e->node), "%s", p->node);
		snprintf(e->addr, sizeof(e->addr), "%s", p->addr ? p->addr : "");
		e->state = (uint8_t)p->state;
	}
	bk->n = n;
	return 0;
}

/* Fills ps/pp (borrowing from bk) for a message; returns how many. */
static size_t
craft__book_to_proto(const struct craft_book *bk, Relay__Peer ps[CLUSTER_MAX_PEERS],
		     Relay__Peer *pp[CLUSTER_MAX_PEERS])
{
	for (size_t i = 0; i < bk->n; i++) {
		relay__peer__init(&ps[i]);
		ps[i].node = (char *)bk->e[i].node;
		ps[i].addr = (char *)bk->e[i].addr;
		ps[i].state = (Relay__PeerState)bk->e[i].state;
		pp[i] = &ps[i];
	}
	return bk->n;
}

/* The address book stored in a view (raft_meta "raft_peers", written with the applies, so it
 * is the book at the view's applied index), without the entries only a config knows.  None
 * (n 0) when the view holds no book or a damaged one (logged). */
static void
craft__view_book(struct craft_view *vw)
{
	vw->book.n = 0;
	void *v;
	size_t vlen;
	if (store_view_get(vw->v, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1, &v,
			   &vlen))
		return;
	Relay__PeerBook *book = relay__peer_book__unpack(NULL, vlen, v);
	free(v);
	Relay__Peer *kept[CLUSTER_MAX_PEERS];
	size_t n = 0;
	for (size_t i = 0; book && i < book->n_peers && n < CLUSTER_MAX_PEERS; i++)
		if (!(book->peers[i]->has_local && book->peers[i]->local))
			kept[n++] = book->peers[i];
	if (!book || book->n_peers > CLUSTER_MAX_PEERS ||
	    craft__book_from_proto(&vw->book, kept, n))
		cluster__log("snapshot view index=%" PRIu64 ": stored address book unreadable; "
			     "the snapshot carries none",
			     vw->index);
	if (book)
		relay__peer_book__free_unpacked(book, NULL);
}

/* A snapshot's address book replaces the part of ours that came from the log and goes into b;
 * this node and the members only our config knows stay (a snapshot carries no config-only
 * entries: before the leader publishes them, dropping ours would leave no node to fetch from).
 * None (n 0): ours is kept. */
static int
craft__book_replace(struct cluster__raft *c, const struct craft_book *bk, struct store_batch *b)
{
	if (!bk->n)
		return 0;
	for (size_t i = 0; i < c->n_peers;) {
		int keep = i == c->self || c->plocal[i];
		for (size_t k = 0; !keep && k < bk->n; k++)
			keep = !strcmp(bk->e[k].node, c->peers[i].name);
		if (keep)
			i++;
		else
			craft__book_del(c, i);
	}
	for (size_t k = 0; k < bk->n; k++) {
		const struct craft_book_ent *e = &bk->e[k];
		int i = craft__peer_by_name(c, e->node);
		if (i < 0)
			i = craft__book_add(c, e->node, e->addr, e->state, 0);
		else
			craft__book_set_addr(c, (size_t)i, e->addr);
		if (i >= 0) {
			if (c->pstate[i] != e->state)
				c->pprop_ms[i] = 0;
			c->pstate[i] = e->state;
			c->plocal[i] = 0;
		}
	}
	return craft__book_put(c, b);
}

static const char *
craft__role_name(enum raft_role r)
{
	switch (r) {
	case RAFT_LEADER:
		return "leader";
	case RAFT_CANDIDATE:
		return "candidate";
	case RAFT_PRECANDIDATE:
		return "precandidate";
	default:
		return "follower";
	}
}

static void craft__run_cb(uv_idle_t *h);
static void craft__reconcile(struct cluster__raft *c);
static void craft__recv_transfer(struct cluster__raft *c, const void *data, size_t len);

static void
craft__schedule(struct cluster__raft *c)
{
	if (!c->closing)
		uv_idle_start(&c->run, craft__run_cb);
}

/* ---- pending proposals ---- */

static void
craft__list_push(struct craft_list *l, struct craft_prop *p)
{
	p->next = NULL;
	p->prev = l->tail;
	if (l->tail)
		l->tail->next = p;
	else
		l->head = p;
	l->tail = p;
}

static void
craft__hash_add(struct cluster__raft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	p->hnext = c->buckets[b];
	c->buckets[b] = p;
}

static struct craft_prop *
craft__hash_find(struct cluster__raft *c, uint64_t seq)
{
	size_t b = (size_t)(seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop *p = c->buckets[b]; p; p = p->hnext)
		if (p->seq == seq)
			return p;
	return NULL;
}

/* Takes p out of the pending list and the hash (the caller completes it). */
static void
craft__unlink(struct cluster__raft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop **pp = &c->buckets[b]; *pp; pp = &(*pp)->hnext)
		if (*pp == p) {
			*pp = p->hnext;
			break;
		}
	if (c->unsent == p)
		c->unsent = p->next;
	if (p->prev)
		p->prev->next = p->next;
	else
		c->pending.head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		c->pending.tail = p->prev;
	p->next = p->prev = NULL;
	c->npending--;
	c->pending_bytes -= p->len;
}

/* Runs the callbacks of a detached list in order and frees it. */
static void
craft__complete(struct cluster__raft *c, struct craft_list *done)
{
	struct craft_prop *p;
	while ((p = done->head)) {
		done->head = p->next;
		if (p->status)
			c->stats.failed_proposals++;
		p->cb(p->arg, p->status);
		free(p);
	}
	done->tail = NULL;
}

/* ---- raft metadata in the store ---- */

static int
craft__hs_put(struct store_batch *b, const struct raft_hard_state *hs)
{
	unsigned char v[25];
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(hs->term, v + 1);
	store_u64_encode(hs->vote, v + 9);
	store_u64_encode(hs->commit, v + 17);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_HS, sizeof(CRAFT_META_HS) - 1, v,
			       sizeof(v));
}

static int
craft__hs_get(struct store *s, struct raft_hard_state *hs)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, CRAFT_META_HS, sizeof(CRAFT_META_HS) - 1, (void **)&v,
			   &vlen);
	if (rv)
		return rv;
	if (vlen != 25 || v[0] != CRAFT_META_VERSION) {
		free(v);
		return STORE_ECORRUPT;
	}
	hs->term = store_u64_decode(v + 1);
	hs->vote = store_u64_decode(v + 9);
	hs->commit = store_u64_decode(v + 17);
	free(v);
	return 0;
}

static int
craft__snap_put(struct store_batch *b, const struct raft_snap_meta *m, const void *data, size_t len)
{
	unsigned char v[17 + 16 + 16 * RAFT_MAX_NODES];
	size_t cl = raft_conf_encoded_len(&m->conf);
	if (cl > sizeof(v) - 17)
		return STORE_EINVAL;
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(m->index, v + 1);
	store_u64_encode(m->term, v + 9);
	raft_conf_encode(&m->conf, v + 17);
	int rv = store_batch_put(b, STORE_CF_META, CRAFT_META_SNAP_DATA,
				 sizeof(CRAFT_META_SNAP_DATA) - 1, data, len);
	if (!rv)
		rv = store_batch_put(b, STORE_CF_META, CRAFT_META_SNAP, sizeof(CRAFT_META_SNAP) - 1,
				     v, 17 + cl);
	return rv;
}

/* *data is malloc'd (NULL when len 0).  ENOTFOUND when no snapshot was ever stored. */
static int
craft__snap_get(struct store *s, struct raft_snap_meta *m, void **data, size_t *len)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, CRAFT_META_SNAP, sizeof(CRAFT_META_SNAP) - 1,
			   (void **)&v, &vlen);
	if (rv)
		return rv;
	if (vlen < 17 || v[0] != CRAFT_META_VERSION ||
	    raft_conf_decode(v + 17, vlen - 17, &m->conf)) {
		free(v);
		return STORE_ECORRUPT;
	}
	m->index = store_u64_decode(v + 1);
	m->term = store_u64_decode(v + 9);
	free(v);
	rv = store_get(s, STORE_CF_META, CRAFT_META_SNAP_DATA, sizeof(CRAFT_META_SNAP_DATA) - 1,
		       data, len);
	return rv == STORE_ENOTFOUND ? STORE_ECORRUPT : rv;
}

/* ---- the write path ---- */

static void
craft__work_cb(uv_work_t *req)
{
	struct cluster__raft *c = req->data;
	c->write_rv = store_write(c->store, &c->wbatch, c->write_sync);
}

static void craft__after_work_cb(uv_work_t *req, int status);

static void
craft__start_write(struct cluster__raft *c)
{
	if (c->writing || c->retry_write || !c->next.len)
		return;
	struct store_batch t = c->wbatch;
	c->wbatch = c->next;
	c->next = t;
	store_batch_clear(&c->next);
	c->write_sync = c->next_sync;
	c->write_seq = c->next_seq_persist;
	c->write_bytes = c->next_bytes;
	c->write_applied = c->applied;
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	c->writing = 1;
	int rv = uv_queue_work(c->loop, &c->work, craft__work_cb, craft__after_work_cb);
	if (rv) {
		cluster__log("uv_queue_work error=\"%s\"", uv_strerror(rv));
		c->write_rv = STORE_EIO;
		c->writing = 0;
		/* handled like a failed write, at once */
		craft__after_work_cb(&c->work, UV_ECANCELED);
	}
}

static void craft__finish_close(struct cluster__raft *c);
static void craft__maybe_snapshot(struct cluster__raft *c);

static void
craft__after_work_cb(uv_work_t *req, int status)
{
	struct cluster__raft *c = req->data;
	int rv = status ? STORE_EIO : c->write_rv;
	c->writing = 0;
	if (c->write_sync)
		c->stats.fsyncs++;
	if (rv) {
		c->stats.failures++;
		cluster__log("write failed error=\"%s\"; retried", store_strerror(rv));
		/* the failed write applied nothing: put it back in front of what queued up since */
		if (store_batch_append(&c->wbatch, &c->next)) {
			cluster__log("write retry: out of memory; apply stopped");
			c->failed = CLUSTER_ENOMEM;
		}
		struct store_batch t = c->next;
		c->next = c->wbatch;
		c->wbatch = t;
		store_batch_clear(&c->wbatch);
		c->next_sync |= c->write_sync;
		if (c->write_seq > c->next_seq_persist)
			c->next_seq_persist = c->write_seq;
		c->next_bytes += c->write_bytes;
		c->retry_write = 1;
	} else {
		store_batch_clear(&c->wbatch);
		c->durable_applied = c->write_applied;
		queue_fsm_written(c->fsm, c->durable_applied);
		if (c->write_sync) {
			c->stats.batches++;
			c->stats.bytes += c->write_bytes;
		}
		if (c->write_seq)
			raft_persisted(c->raft, c->write_seq);
	}
	if (c->closing) {
		craft__finish_close(c);
		return;
	}
	craft__maybe_snapshot(c);
	craft__schedule(c);
}

/* Adds what rd asks to persist (hard state, entries) to the next write. */
static int
craft__persist(struct cluster__raft *c, const struct raft_ready *rd)
{
	int rv = 0;
	if (rd->hs_changed)
		rv = craft__hs_put(&c->next, &rd->hs);
	if (!rv && rd->n_entries) {
		uint64_t first = rd->entries[0].index;
		if (first <= c->log_last)
			rv = store_log_delete(&c->next, first, UINT64_MAX);
		for (size_t i = 0; !rv && i < rd->n_entries; i++) {
			const struct raft_entry *e = &rd->entries[i];
			struct store_entry se = {
			    .index = e->index,
			    .term = e->term,
			    .type = (enum store_entry_type)e->type,
			    .data = e->data,
			    .len = e->len,
			};
			rv = store_log_append(&c->next, &se);
			c->next_bytes += e->len;
		}
		if (!rv)
			c->log_last = rd->entries[rd->n_entries - 1].index;
	}
	if (rv)
		return cluster__store_err(rv);
	/* Entries, a term or a vote must be synced before the core acts on them; a commit index
	 * alone need not (raft relearns it from the leader; thesis 3.8 lists term, vote and log
	 * as the persistent state): it rides unsynced, made durable by the next synced write. */
	if (rd->n_entries || rd->hs.term != c->synced_term || rd->hs.vote != c->synced_vote)
		c->next_sync = 1;
	c->synced_term = rd->hs.term;
	c->synced_vote = rd->hs.vote;
	c->next_seq_persist = rd->seq;
	return 0;
}

/* Sends the batch of peer pi now: one message as itself, several as a batch frame. */
static void
craft__flush_peer(struct cluster__raft *c, size_t pi)
{
	struct craft_outbuf *o = &c->out[pi];
	if (!o->n)
		return;
	int rv = o->n == 1
		     ? transport_send(c->tp, c->peers[pi].name, o->kind, o->buf + CRAFT_BATCH_HDR,
				      o->len - CRAFT_BATCH_HDR)
		     : transport_send(c->tp, c->peers[pi].name, CRAFT_KIND_BATCH, o->buf, o->len);
	if (rv)
		c->counters.raft_dropped += o->n;
	o->len = 0;
	o->n = 0;
}

static void
craft__flush_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	for (size_t i = 0; i < c->n_peers; i++)
		craft__flush_peer(c, i);
}

/* Queues a copy of one message for peer pi (sent by craft__flush_cb). */
static void
craft__out(struct cluster__raft *c, size_t pi, uint32_t kind, const void *data, size_t len)
{
	struct craft_outbuf *o = &c->out[pi];
	if (len + CRAFT_BATCH_HDR > CRAFT_BATCH_MAX_BYTES) {
		craft__flush_peer(c, pi);
		if (transport_send(c->tp, c->peers[pi].name, kind, data, len))
			c->counters.raft_dropped++;
		return;
	}
	if (o->len + CRAFT_BATCH_HDR + len > CRAFT_BATCH_MAX_BYTES)
		craft__flush_peer(c, pi);
	if (o->len + CRAFT_BATCH_HDR + len > o->cap) {
		size_t cap = o->cap ? o->cap : 4096;
		while (cap < o->len + CRAFT_BATCH_HDR + len)
			cap *= 2;
		unsigned char *nb = realloc(o->buf, cap);
		if (!nb) {
			c->counters.raft_dropped++; /* Raft tolerates loss */
			return;
		}
		o->buf = nb;
		o->cap = cap;
	}
	unsigned char *p = o->buf + o->len;
	p[0] = (unsigned char)kind;
	p[1] = (unsigned char)(len >> 24);
	p[2] = (unsigned char)(len >> 16);
	p[3] = (unsigned char)(len >> 8);
	p[4] = (unsigned char)len;
	if (len)
		memcpy(p + CRAFT_BATCH_HDR, data, len);
	o->len += CRAFT_BATCH_HDR + len;
	o->kind = kind;
	o->n++;
	if (!uv_is_active((uv_handle_t *)&c->flush))
		uv_timer_start(&c->flush, craft__flush_cb, CRAFT_BATCH_DELAY_MS, 0);
}

static void
craft__send(struct cluster__raft *c, const struct raft_ready *rd)
{
	for (size_t i = 0; i < rd->n_msgs; i++) {
		const struct raft_msg *m = &rd->msgs[i];
		int pi = craft__peer_by_id(c, m->to);
		if (pi < 0 || (size_t)pi == c->self)
			continue;
		void *buf;
		size_t len;
		int rv = transport_raft_encode(m, &buf, &len);
		if (rv) {
			cluster__log("encode %s to=%s error=\"%s\"", raft_msg_type_name(m->type),
				     c->peers[pi].name, transport_strerror(rv));
			c->counters.raft_dropped++;
			continue;
		}
		craft__out(c, (size_t)pi, TRANSPORT_KIND_RAFT, buf, len);
		free(buf);
	}
}

/* A committed configuration entry after the one tracked becomes c->conf_committed.  Called for
 * every committed entry handed out, also those not applied yet while a snapshot is fetched:
 * the configuration is the core's, not the queue's. */
static void
craft__track_conf(struct cluster__raft *c, const struct raft_entry *e)
{
	struct raft_conf conf;
	if (e->type != RAFT_ENTRY_CONF || e->index <= c->conf_index ||
	    raft_conf_decode(e->data, e->len, &conf))
		return;
	c->conf_committed = conf;
	c->conf_index = e->index;
	cluster__log("index=%" PRIu64 " event=conf voters=%" PRIu32 " learners=%" PRIu32, e->index,
		     conf.n_voters, conf.n_learners);
}

/* Applies one committed entry (index c->applied + 1) and moves the proposal it completes to
 * done: a Peer command to the address book, every other one to the queue state machine.  Sets
 * c->failed when apply must stop. */
static void
craft__apply_entry(struct cluster__raft *c, const struct raft_entry *e, struct craft_list *done)
{
	int status = 0;
	craft__track_conf(c, e);
	if (e->type == RAFT_ENTRY_NORMAL) {
		Relay__Command *cmd = relay__command__unpack(NULL, e->len, e->data);
		if (!cmd) {
			/* we and the leader validated it: memory, or damage */
			cluster__log("index=%" PRIu64 " apply stopped: entry does not unpack",
				     e->index);
			c->failed = CLUSTER_ENOMEM;
			return;
		}
		int rv = 0;
		if (cmd->cmd_case == RELAY__COMMAND__CMD_PEER)
			status = craft__apply_peer(c, e->index, cmd->peer);
		else
			rv = queue_apply(c->fsm, e->index, cmd, &c->next);
		if (rv == QUEUE_ENOMEM || rv == QUEUE_ECORRUPT) {
			cluster__log("index=%" PRIu64 " apply stopped error=\"%s\"; restart "
				     "to replay",
				     e->index, queue_strerror(rv));
			relay__command__free_unpacked(cmd, NULL);
			c->failed = cluster__queue_err(rv);
			return;
		}
		if (rv) {
			cluster__log("index=%" PRIu64 " apply rejected error=\"%s\"", e->index,
				     queue_strerror(rv));
			status = cluster__queue_err(rv);
		}
		if (cmd->has_origin_node && cmd->origin_node == c->id && cmd->has_origin_boot &&
		    cmd->origin_boot == c->boot && cmd->has_origin_seq) {
			struct craft_prop *p = craft__hash_find(c, cmd->origin_seq);
			if (p) {
				craft__unlink(c, p);
				p->status = status;
				craft__list_push(done, p);
			}
		}
		relay__command__free_unpacked(cmd, NULL);
	}
	c->applied = e->index;
	c->applied_bytes += e->len;
	c->stats.commits++;
}

/* Applies the committed entries of rd (those not applied before) and moves the proposals they
 * complete to done.  While a snapshot's key/values are being fetched nothing is applied: the
 * entries stay in the log and craft__fetch_finish applies them. */
static void
craft__apply(struct cluster__raft *c, const struct raft_ready *rd, struct craft_list *done)
{
	uint64_t before = c->applied;
	for (size_t i = 0; i < rd->n_committed && !c->failed; i++) {
		const struct raft_entry *e = &rd->committed[i];
		if (e->index > c->handed)
			c->handed = e->index;
		if (c->fetch.active || e->index <= c->applied) {
			/* fetching; or applied before a restart, or by a snapshot */
			if (c->fetch.active)
				craft__track_conf(c, e);
			continue;
		}
		craft__apply_entry(c, e, done);
	}
	if (c->applied != before) {
		int rv = store_applied_put(&c->next, c->applied);
		if (rv) {
			cluster__log("apply state not recorded error=\"%s\"", store_strerror(rv));
			c->failed = cluster__store_err(rv);
		}
	}
}

static void
craft__soft_state(struct cluster__raft *c, enum raft_role role, uint64_t lead, uint64_t term)
{
	if (lead != c->lead) {
		int pi = craft__peer_by_id(c, lead);
		cluster__log("event=leader-change term=%" PRIu64 " leader=%s role=%s", term,
			     lead == 0 ? "none"
			     : pi >= 0 ? c->peers[pi].name
				       : "unknown",
			     craft__role_name(role));
		if (lead)
			c->counters.leader_changes++;
		c->lead = lead;
		/* resubmit everything not committed: to the new leader, or proposed here */
		c->unsent = c->pending.head;
	}
	c->role = role;
	c->term = term;
}

/* ---- snapshots: views, compaction, serving and fetching the queue state ---- */

/* The queue state: exactly the key/values of these CFs, streamed in this order. */
static const enum store_cf craft__snap_cfs[CRAFT_SNAP_NCFS] = {STORE_CF_QUEUE, STORE_CF_BODY,
							       STORE_CF_INDEX};

/* Position of cf in the stream, or -1. */
static int
craft__snap_ci(uint32_t cf)
{
	for (int i = 0; i < CRAFT_SNAP_NCFS; i++)
		if ((uint32_t)craft__snap_cfs[i] == cf)
			return i;
	return -1;
}

static void
craft__view_unref(struct craft_view *vw)
{
	if (vw && --vw->refs == 0) {
		store_view_free(vw->v);
		free(vw);
	}
}

/* The install marker (STORE_META_INSTALL): version, min index, the node the descriptor names. */
static int
craft__marker_put(struct store_batch *b, uint64_t min_index, const char *node)
{
	unsigned char v[1 + 8 + CLUSTER_ID_MAX];
	size_t nl = strnlen(node, CLUSTER_ID_MAX);
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(min_index, v + 1);
	memcpy(v + 9, node, nl);
	return store_batch_put(b, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			       v, 9 + nl);
}

/* 0 with the marker's fields, STORE_ENOTFOUND when no install is pending. */
static int
craft__marker_get(struct store *s, uint64_t *min_index, char node[CLUSTER_ID_MAX + 1])
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			   (void **)&v, &vlen);
	if (rv)
		return rv;
	if (vlen < 9 || vlen > 9 + CLUSTER_ID_MAX || v[0] != CRAFT_META_VERSION) {
		free(v);
		return STORE_ECORRUPT;
	}
	*min_index = store_u64_decode(v + 1);
	memcpy(node, v + 9, vlen - 9);
	node[vlen - 9] = 0;
	free(v);
	return 0;
}

/* Adds the deletion of the whole queue state (the three CFs) to b. */
static int
craft__wipe_queue(struct store_batch *b)
{
	int rv = 0;
	for (int i = 0; !rv && i < CRAFT_SNAP_NCFS; i++)
		rv = store_batch_wipe_cf(b, craft__snap_cfs[i]);
	return rv;
}

static void craft__compact(struct cluster__raft *c, struct craft_view *vw);

static void
craft__digest_work_cb(uv_work_t *req)
{
	struct cluster__raft *c = req->data;
	c->digest_rv =
	    store_view_digest(c->prep->v, craft__snap_cfs, CRAFT_SNAP_NCFS, &c->prep->digest);
}

static void
craft__digest_after_cb(uv_work_t *req, int status)
{
	struct cluster__raft *c = req->data;
	struct craft_view *vw = c->prep;
	int compact = c->prep_compact;
	c->prep = NULL;
	c->digesting = 0;
	if (c->closing) {
		craft__view_unref(vw);
		craft__finish_close(c);
		return;
	}
	if (status || c->digest_rv) {
		cluster__log("event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", vw->index,
			     status ? "cancelled" : store_strerror(c->digest_rv));
		craft__view_unref(vw);
		return;
	}
	cluster__log(
	    "event=snapshot-view index=%" PRIu64 " keys=%" PRIu64 " bytes=%" PRIu64 " ms=%" PRIu64,
	    vw->index, vw->digest.keys, vw->digest.bytes, (uv_hrtime() - vw->t0) / 1000000);
	/* the newest view serves new fetch sessions; sessions keep the one they started on */
	if (!c->view || vw->index >= c->view->index) {
		craft__view_unref(c->view);
		c->view = vw;
	} else {
		craft__view_unref(vw);
		vw = NULL;
	}
	if (compact && vw)
		craft__compact(c, vw);
	craft__schedule(c);
}

/*
 * Takes a consistent view of the store now and digests it off the loop thread; then it becomes
 * the view new fetch sessions are served from (and, with compact, the Raft snapshot).  The
 * view's index is the applied index stored with it: the apply writes and the applied index
 * travel in the same atomic write, so a view is always the state at exactly that index.
 */
static int
craft__view_prepare(struct cluster__raft *c, int compact, uint64_t min_index)
{
	if (c->digesting || c->fetch.active || c->closing)
		return CLUSTER_EBUSY;
	struct craft_view *vw = calloc(1, sizeof(*vw));
	if (!vw)
		return CLUSTER_ENOMEM;
	int rv = store_view_new(c->store, &vw->v);
	if (rv) {
		free(vw);
		return cluster__store_err(rv);
	}
	vw->refs = 1;
	vw->t0 = uv_hrtime();
	vw->id = craft__random64();
	void *m;
	size_t ml;
	if ((rv = store_view_applied_get(vw->v, &vw->index)) ||
	    store_view_get(vw->v, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			   &m, &ml) != STORE_ENOTFOUND) {
		if (!rv)
			free(m);
		craft__view_unref(vw);
		return rv ? cluster__store_err(rv) : CLUSTER_EBUSY;
	}
	if (vw->index < min_index || vw->index == 0) {
		craft__view_unref(vw);
		return CLUSTER_ENOTFOUND;
	}
	craft__view_book(vw);
	c->prep = vw;
	c->prep_compact = compact;
	c->digesting = 1;
	c->digest_work.data = c;
	if ((rv = uv_queue_work(c->loop, &c->digest_work, craft__digest_work_cb,
				craft__digest_after_cb))) {
		c->prep = NULL;
		c->digesting = 0;
		craft__view_unref(vw);
		return CLUSTER_EIO;
	}
	return 0;
}

/* Compacts the log up to vw's index: the Raft snapshot's data is vw's descriptor. */
static void
craft__compact(struct cluster__raft *c, struct craft_view *vw)
{
	if (c->have_held || c->failed || c->fetch.active || vw->index <= c->snap_index)
		return;
	Relay__SnapshotDescriptor d = RELAY__SNAPSHOT_DESCRIPTOR__INIT;
	d.index = vw->index;
	d.view_id = vw->id;
	d.node = c->peers[c->self].name;
	d.has_keys = d.has_bytes = d.has_crc = 1;
	d.keys = vw->digest.keys;
	d.bytes = vw->digest.bytes;
	d.crc = vw->digest.crc;
	Relay__Peer ps[CLUSTER_MAX_PEERS], *pp[CLUSTER_MAX_PEERS];
	d.n_peers = craft__book_to_proto(&vw->book, ps, pp);
	d.peers = pp;
	unsigned char buf[CRAFT_DESCRIPTOR_MAX];
	size_t len = relay__snapshot_descriptor__get_packed_size(&d);
	if (len > sizeof(buf))
		return;
	relay__snapshot_descriptor__pack(&d, buf);
	int rv = raft_compact(c->raft, vw->index, buf, len);
	if (rv) {
		cluster__log("event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", vw->index,
			     raft_strerror(rv));
		return;
	}
	struct raft_snap_meta meta;
	raft_snap_meta(c->raft, &meta);
	size_t blen = c->next.len;
	unsigned bcount = c->next.count;
	rv = craft__snap_put(&c->next, &meta, buf, len);
	if (!rv)
		rv = store_log_delete(&c->next, 1, meta.index);
	if (rv) {
		/* the core compacted; the store keeps the log (replayed at open): harmless */
		c->next.len = blen;
		c->next.count = bcount;
		cluster__log("snapshot not persisted error=\"%s\"", store_strerror(rv));
	}
	c->snap_index = meta.index;
	c->counters.snapshots++;
	cluster__log("event=snapshot index=%" PRIu64 " term=%" PRIu64 " keys=%" PRIu64
		     " bytes=%" PRIu64,
		     meta.index, meta.term, vw->digest.keys, vw->digest.bytes);
	craft__start_write(c);
}

/* Takes a snapshot when snapshot_entries entries (or CRAFT_SNAPSHOT_LOG_BYTES of entry data)
 * were applied since the last one (or the last attempt).  The queue is never read into memory:
 * a view of the store is digested off the loop thread, then the log is compacted to it. */
static void
craft__maybe_snapshot(struct cluster__raft *c)
{
	if (c->have_held || c->failed || c->closing || c->fetch.active || c->digesting)
		return;
	uint64_t since = c->snap_index > c->snap_tried ? c->snap_index : c->snap_tried;
	if (c->applied < since + c->snapshot_entries &&
	    !(c->applied > since && c->applied_bytes >= CRAFT_SNAPSHOT_LOG_BYTES))
		return;
	if (c->durable_applied <= c->snap_index)
		return; /* the store has nothing newer yet */
	/* the view holds what is written (durable_applied, or the write in flight), which may be
	 * well behind what is applied in memory: count the next interval from there */
	c->snap_tried = c->durable_applied;
	c->applied_bytes = 0;
	int rv = craft__view_prepare(c, 1, c->snap_index + 1);
	if (rv && rv != CLUSTER_EBUSY)
		cluster__log("event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", c->applied,
			     cluster_strerror(rv));
}

/* ---- serving fetches (any node whose store holds the queue state) ---- */

static void
craft__serve_release(struct craft_serve *sv)
{
	craft__view_unref(sv->view);
	memset(sv, 0, sizeof(*sv));
}

/* Frees the key/values of a chunk built by craft__serve_read. */
static void
craft__chunk_kvs_free(Relay__SnapshotChunk *ch)
{
	for (size_t i = 0; i < ch->n_kvs; i++) {
		free(ch->kvs[i]->key.data);
		free(ch->kvs[i]->data.data);
		free(ch->kvs[i]);
	}
	free(ch->kvs);
	ch->kvs = NULL;
	ch->n_kvs = 0;
}

/* Reads the chunk at the position of f from vw into ch (kvs, done): at most
 * CRAFT_SNAP_CHUNK_BYTES of keys and values, at most CRAFT_SNAP_CHUNK_KVS pieces. */
static int
craft__serve_read(struct craft_view *vw, const Relay__SnapshotFetch *f, Relay__SnapshotChunk *ch)
{
	int ci0 = craft__snap_ci(f->cf);
	if (ci0 < 0 || (f->has_key && f->key.len > STORE_KEY_MAX + 1) ||
	    (f->has_offset && f->offset && !f->has_key))
		return CRAFT_SERVE_RESTART;
	ch->kvs = calloc(CRAFT_SNAP_CHUNK_KVS, sizeof(*ch->kvs));
	if (!ch->kvs)
		return CLUSTER_ENOMEM;
	size_t budget = CRAFT_SNAP_CHUNK_BYTES;
	int full = 0, rv = 0;
	for (int ci = ci0; ci < CRAFT_SNAP_NCFS && !full && !rv; ci++) {
		struct store_iter *it;
		if ((rv = store_view_iter_new(vw->v, craft__snap_cfs[ci], &it)))
			break;
		int first = ci == ci0;
		if (first && f->has_key)
			store_iter_seek(it, f->key.data, f->key.len);
		else
			store_iter_seek(it, NULL, 0);
		for (; store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			uint64_t off = 0;
			if (first && f->has_offset && f->offset) {
				/* resuming inside a value: it must be that key */
				if (kl != f->key.len || memcmp(k, f->key.data, kl) ||
				    f->offset > vl) {
					rv = CRAFT_SERVE_RESTART;
					break;
				}
				off = f->offset;
			}
			first = 0;
			if (budget == 0 || ch->n_kvs == CRAFT_SNAP_CHUNK_KVS) {
				full = 1;
				break;
			}
			size_t piece = vl - off < budget ? vl - off : budget;
			Relay__SnapshotKV *kv = calloc(1, sizeof(*kv));
			if (!kv) {
				rv = CLUSTER_ENOMEM;
				break;
			}
			relay__snapshot_kv__init(kv);
			ch->kvs[ch->n_kvs++] = kv;
			kv->cf = craft__snap_cfs[ci];
			kv->size = vl;
			kv->has_offset = off != 0;
			kv->offset = off;
			kv->key.data = malloc(kl ? kl : 1);
			kv->data.data = malloc(piece ? piece : 1);
			if (!kv->key.data || !kv->data.data) {
				rv = CLUSTER_ENOMEM;
				break;
			}
			memcpy(kv->key.data, k, kl);
			kv->key.len = kl;
			memcpy(kv->data.data, v + off, piece);
			kv->data.len = piece;
			budget -= piece;
			budget = budget > kl ? budget - kl : 0;
			if (off + piece < vl) {
				full = 1; /* the rest of this value comes in the next chunk */
				break;
			}
		}
		if (!rv)
			rv = store_iter_status(it) ? CLUSTER_EIO : 0;
		store_iter_free(it);
	}
	ch->has_done = 1;
	ch->done = !full && !rv;
	return rv;
}

static void
craft__send_chunk(struct cluster__raft *c, size_t pi, Relay__SnapshotChunk *ch)
{
	size_t len = relay__snapshot_chunk__get_packed_size(ch);
	void *buf = malloc(len ? len : 1);
	if (!buf) {
		c->counters.raft_dropped++;
		return;
	}
	relay__snapshot_chunk__pack(ch, buf);
	craft__out(c, pi, CRAFT_KIND_SNAP_CHUNK, buf, len);
	free(buf);
}

/* A fetch request from peer pi: answer with the next chunk of its session's view. */
static void
craft__serve(struct cluster__raft *c, size_t pi, const void *data, size_t len)
{
	Relay__SnapshotFetch *f = relay__snapshot_fetch__unpack(NULL, len, data);
	if (!f) {
		c->counters.raft_dropped++;
		return;
	}
	Relay__SnapshotChunk ch = RELAY__SNAPSHOT_CHUNK__INIT;
	Relay__Peer bps[CLUSTER_MAX_PEERS], *bpp[CLUSTER_MAX_PEERS];
	ch.session = f->session;
	ch.seq = f->seq;
	ch.status = RELAY__SNAPSHOT_STATUS__SNAP_OK;
	uint64_t now = uv_now(c->loop);
	struct craft_serve *sv = NULL, *slot = NULL;
	int start = craft__snap_ci(f->cf) == 0 && !f->has_key && !(f->has_offset && f->offset);
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++) {
		if (c->serve[i].used && c->serve[i].peer == pi && c->serve[i].session == f->session)
			sv = &c->serve[i];
		else if (c->serve[i].used && c->serve[i].peer == pi && start)
			craft__serve_release(&c->serve[i]); /* a peer fetches one view at a time */
		if (!c->serve[i].used && !slot)
			slot = &c->serve[i];
	}
	if (!sv) {
		if (!start || f->session == 0) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RESTART;
			goto reply;
		}
		if (c->fetch.active || c->failed) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_UNAVAILABLE;
			goto reply;
		}
		if (!c->view || c->view->index < f->min_index) {
			/* no view new enough: take one now (unless one is being digested) */
			int rv =
			    c->digesting ? CLUSTER_EBUSY : craft__view_prepare(c, 0, f->min_index);
			ch.status = rv == CLUSTER_ENOTFOUND
					? RELAY__SNAPSHOT_STATUS__SNAP_UNAVAILABLE
					: RELAY__SNAPSHOT_STATUS__SNAP_RETRY;
			goto reply;
		}
		if (!slot) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RETRY; /* serving enough already */
			goto reply;
		}
		sv = slot;
		sv->used = 1;
		sv->peer = pi;
		sv->session = f->session;
		sv->view = c->view;
		c->view->refs++;
		c->counters.snapshot_serves++;
		cluster__log("event=snapshot-serve peer=%s index=%" PRIu64 " keys=%" PRIu64
			     " bytes=%" PRIu64,
			     c->peers[pi].name, sv->view->index, sv->view->digest.keys,
			     sv->view->digest.bytes);
	}
	sv->last_ms = now;
	int rv = craft__serve_read(sv->view, f, &ch);
	if (rv == CRAFT_SERVE_RESTART) {
		craft__chunk_kvs_free(&ch);
		craft__serve_release(sv);
		ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RESTART;
		ch.has_done = 0;
		goto reply;
	}
	if (rv) {
		/* our own trouble (memory, disk): the follower asks again */
		cluster__log("snapshot serve: read error=\"%s\"", cluster_strerror(rv));
		craft__chunk_kvs_free(&ch);
		ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RETRY;
		ch.has_done = 0;
		goto reply;
	}
	ch.has_index = ch.has_view_id = ch.has_keys = ch.has_bytes = ch.has_crc = 1;
	ch.index = sv->view->index;
	ch.view_id = sv->view->id;
	ch.keys = sv->view->digest.keys;
	ch.bytes = sv->view->digest.bytes;
	ch.crc = sv->view->digest.crc;
	/* the first chunk of a session binds it: the view's address book comes with it */
	if (start) {
		ch.n_peers = craft__book_to_proto(&sv->view->book, bps, bpp);
		ch.peers = bpp;
	}
	for (size_t i = 0; i < ch.n_kvs; i++)
		c->counters.snapshot_served_bytes += ch.kvs[i]->data.len + ch.kvs[i]->key.len;
	if (ch.done)
		craft__serve_release(sv);
reply:
	craft__send_chunk(c, pi, &ch);
	craft__chunk_kvs_free(&ch);
	relay__snapshot_fetch__free_unpacked(f, NULL);
}

/* Drops the sessions idle for CRAFT_SNAP_SESSION_IDLE_MS (their views with them). */
static void
craft__serve_expire(struct cluster__raft *c, uint64_t now)
{
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++)
		if (c->serve[i].used && now - c->serve[i].last_ms >= CRAFT_SNAP_SESSION_IDLE_MS)
			craft__serve_release(&c->serve[i]);
}

/* ---- fetching (a node that installed a snapshot descriptor) ---- */

static void
craft__fetch_send(struct cluster__raft *c)
{
	struct craft_fetch *f = &c->fetch;
	Relay__SnapshotFetch r = RELAY__SNAPSHOT_FETCH__INIT;
	r.session = f->session;
	r.seq = ++f->seq;
	r.min_index = f->min_index;
	r.cf = craft__snap_cfs[f->ci];
	if (f->has_key) {
		r.has_key = 1;
		r.key.data = f->key;
		r.key.len = f->klen;
	}
	r.has_offset = f->offset != 0;
	r.offset = f->offset;
	unsigned char buf[64 + STORE_KEY_MAX];
	size_t len = relay__snapshot_fetch__get_packed_size(&r);
	if (len <= sizeof(buf) && f->src != c->self && f->src < c->n_peers) {
		relay__snapshot_fetch__pack(&r, buf);
		craft__out(c, f->src, CRAFT_KIND_SNAP_FETCH, buf, len);
	}
	uint64_t now = uv_now(c->loop);
	f->deadline = now + CRAFT_FETCH_TIMEOUT_MS;
	f->next_at = 0;
}

/* Picks the node to fetch from: the leader first, then the descriptor's node, then each other
 * member in turn. */
static void
craft__fetch_pick(struct cluster__raft *c)
{
	struct craft_fetch *f = &c->fetch;
	int pi = -1;
	if (f->attempt == 0) {
		pi = craft__peer_by_id(c, c->lead);
		if ((pi < 0 || (size_t)pi == c->self) && f->hint[0])
			pi = craft__peer_by_name(c, f->hint);
	}
	if (pi < 0 || (size_t)pi == c->self) {
		pi = (int)((f->src + 1) % c->n_peers);
		if ((size_t)pi == c->self)
			pi = (int)((pi + 1) % c->n_peers);
	}
	f->src = (size_t)pi;
	f->attempt++;
}

/* Starts a new session from the start of the stream: the partial copy is wiped first. */
static void
craft__fetch_restart(struct cluster__raft *c, uint64_t delay_ms)
{
	struct craft_fetch *f = &c->fetch;
	struct store_batch b;
	store_batch_init(&b);
	int rv = craft__wipe_queue(&b);
	if (!rv)
		rv = store_write(c->store, &b, 0);
	store_batch_fini(&b);
	if (rv) {
		cluster__log("snapshot fetch: wipe error=\"%s\"; retried", store_strerror(rv));
		c->counters.snapshot_fetch_failures++;
	}
	free(f->val);
	f->val = NULL;
	f->val_size = 0;
	f->offset = 0;
	f->ci = 0;
	f->has_key = 0;
	f->klen = 0;
	f->bound = 0;
	f->tries = 0;
	f->wiped = rv == 0;
	store_digest_init(&f->digest);
	f->session = craft__random64();
	craft__fetch_pick(c);
	c->counters.snapshot_fetches++;
	f->deadline = 0;
	f->next_at = uv_now(c->loop) + delay_ms;
	if (!delay_ms && f->wiped)
		craft__fetch_send(c);
}

/* Starts fetching the queue state of index >= min_index (the marker is already written). */
static void
craft__fetch_begin(struct cluster__raft *c, uint64_t min_index, const char *hint)
{
	struct craft_fetch *f = &c->fetch;
	char h[CLUSTER_ID_MAX + 1];
	snprintf(h, sizeof(h), "%s", hint ? hint : ""); /* hint may be f->hint */
	f->active = 1;
	f->min_index = min_index;
	memcpy(f->hint, h, sizeof(h));
	f->attempt = 0;
	f->src = c->self;
	f->t0 = uv_hrtime();
	cluster__log("event=snapshot-fetch index=%" PRIu64 " from=%s", min_index,
		     f->hint[0] ? f->hint : "leader");
	craft__fetch_restart(c, 0);
}

static void craft__apply_entry(struct cluster__raft *c, const struct raft_entry *e,
			       struct craft_list *done);

/* The whole view is in the store and checked: the install is complete (one synced write drops
 * the marker and records the view's index as applied), the queue state machine is reloaded,
 * and the entries committed meanwhile are applied from the log. */
static void
craft__fetch_finish(struct cluster__raft *c)
{
	struct craft_fetch *f = &c->fetch;
	struct store_batch b;
	store_batch_init(&b);
	int rv = store_batch_delete(&b, STORE_CF_META, STORE_META_INSTALL,
				    sizeof(STORE_META_INSTALL) - 1);
	if (!rv)
		rv = store_applied_put(&b, f->view_index);
	/* the view may be newer than the descriptor installed: its book is the one at its index
	 * (none carried: the one installed with the descriptor stays) */
	if (!rv)
		rv = craft__book_replace(c, &f->view_book, &b);
	if (!rv)
		rv = store_write(c->store, &b, 1);
	store_batch_fini(&b);
	c->stats.fsyncs++;
	if (rv) {
		cluster__log("snapshot install: final write error=\"%s\"; fetched again",
			     store_strerror(rv));
		c->counters.snapshot_fetch_failures++;
		craft__fetch_restart(c, CRAFT_FETCH_RESTART_MS);
		return;
	}
	f->active = 0;
	free(f->val);
	f->val = NULL;
	if ((rv = queue_fsm_reload(c->fsm))) {
		cluster__log("snapshot install: reload error=\"%s\"; apply stopped, restart to "
			     "reload",
			     queue_strerror(rv));
		c->failed = cluster__queue_err(rv);
		return;
	}
	c->applied = c->durable_applied = f->view_index;
	c->counters.snapshots_installed++;
	cluster__log("event=snapshot-installed index=%" PRIu64 " keys=%" PRIu64 " bytes=%" PRIu64
		     " ms=%" PRIu64 " catch_up=%" PRIu64,
		     f->view_index, f->digest.keys, f->digest.bytes,
		     (uv_hrtime() - f->t0) / 1000000,
		     c->handed > c->applied ? c->handed - c->applied : 0);
	/* the entries the core handed out while we fetched are durable in the log: apply them */
	struct craft_list done = {0};
	uint64_t before = c->applied;
	for (uint64_t i = c->applied + 1; i <= c->handed && !c->failed; i++) {
		struct store_entry se;
		void *buf;
		if ((rv = store_log_get(c->store, i, &se, &buf))) {
			cluster__log("snapshot install: log entry index=%" PRIu64
				     " error=\"%s\"; apply stopped",
				     i, store_strerror(rv));
			c->failed = cluster__store_err(rv);
			break;
		}
		struct raft_entry e = {.index = se.index,
				       .term = se.term,
				       .type = (uint8_t)se.type,
				       .len = (uint32_t)se.len,
				       .data = (void *)se.data};
		craft__apply_entry(c, &e, &done);
		free(buf);
	}
	if (c->applied != before && (rv = store_applied_put(&c->next, c->applied)))
		c->failed = cluster__store_err(rv);
	if (c->handed < c->applied)
		c->handed = c->applied;
	craft__complete(c, &done);
	craft__start_write(c);
	craft__schedule(c);
}

/* Validates one piece against the fetch position and adds what completes to b. */
static int
craft__fetch_kv(struct cluster__raft *c, const Relay__SnapshotKV *kv, struct store_batch *b)
{
	struct craft_fetch *f = &c->fetch;
	int ci = craft__snap_ci(kv->cf);
	uint64_t off = kv->has_offset ? kv->offset : 0;
	if (ci < 0 || kv->key.len > STORE_KEY_MAX || kv->size > STORE_VALUE_MAX || off > kv->size ||
	    kv->data.len > kv->size - off)
		return -1;
	if (f->offset) {
		/* the rest of a value in pieces: same key, in order */
		if (ci != f->ci || off != f->offset || kv->size != f->val_size ||
		    kv->key.len != f->klen || memcmp(kv->key.data, f->key, f->klen))
			return -1;
	} else {
		/* a new key: at or after the position, nothing before it skipped */
		if (off != 0 || ci < f->ci)
			return -1;
		if (ci == f->ci && f->has_key) {
			size_t m = kv->key.len < f->klen ? kv->key.len : f->klen;
			int cmp = memcmp(kv->key.data, f->key, m);
			if (cmp < 0 || (cmp == 0 && kv->key.len < f->klen))
				return -1;
		}
		store_digest_kv(&f->digest, craft__snap_cfs[ci], kv->key.data, kv->key.len,
				kv->size);
		f->ci = ci;
		memcpy(f->key, kv->key.data, kv->key.len);
		f->klen = kv->key.len;
		f->has_key = 1;
	}
	store_digest_data(&f->digest, kv->data.data, kv->data.len);
	c->counters.snapshot_fetch_bytes += kv->data.len + (off ? 0 : kv->key.len);
	const void *val = kv->data.data;
	if (off + kv->data.len < kv->size || off) {
		/* a value in pieces: assembled here (at most STORE_VALUE_MAX) */
		if (!off) {
			free(f->val);
			if (!(f->val = malloc(kv->size)))
				return CLUSTER_ENOMEM;
			f->val_size = kv->size;
		}
		memcpy(f->val + off, kv->data.data, kv->data.len);
		f->offset = off + kv->data.len;
		if (f->offset < f->val_size)
			return 0;
		val = f->val;
	}
	int rv = store_batch_put(b, craft__snap_cfs[ci], kv->key.data, kv->key.len, val, kv->size);
	/* the next position: just after this key */
	f->offset = 0;
	f->key[f->klen++] = 0;
	return rv ? cluster__store_err(rv) : 0;
}

/* A chunk answered our fetch request. */
static void
craft__fetch_chunk(struct cluster__raft *c, size_t pi, const void *data, size_t len)
{
	struct craft_fetch *f = &c->fetch;
	Relay__SnapshotChunk *ch = relay__snapshot_chunk__unpack(NULL, len, data);
	if (!ch) {
		c->counters.raft_dropped++;
		return;
	}
	if (!f->active || pi != f->src || ch->session != f->session || ch->seq != f->seq ||
	    !f->deadline)
		goto out; /* an old answer */
	f->deadline = 0;
	f->tries = 0;
	if (ch->status == RELAY__SNAPSHOT_STATUS__SNAP_RETRY) {
		f->next_at = uv_now(c->loop) + CRAFT_FETCH_RETRY_MS;
		goto out;
	}
	int bad = 0;
	if (ch->status != RELAY__SNAPSHOT_STATUS__SNAP_OK || !ch->has_index || !ch->has_view_id) {
		bad = 1;
	} else if (!f->bound) {
		if (ch->index < f->min_index ||
		    craft__book_from_proto(&f->view_book, ch->peers, ch->n_peers)) {
			bad = 1;
		} else {
			f->bound = 1;
			f->view_index = ch->index;
			f->view_id = ch->view_id;
			f->view_keys = ch->keys;
			f->view_bytes = ch->bytes;
			f->view_crc = ch->crc;
		}
	} else if (ch->view_id != f->view_id || ch->index != f->view_index) {
		bad = 1;
	}
	struct store_batch b;
	store_batch_init(&b);
	for (size_t i = 0; !bad && i < ch->n_kvs; i++)
		if (craft__fetch_kv(c, ch->kvs[i], &b))
			bad = 1;
	if (!bad && b.len && store_write(c->store, &b, 0))
		bad = 1;
	store_batch_fini(&b);
	if (!bad && ch->done &&
	    (f->offset || f->digest.keys != f->view_keys || f->digest.bytes != f->view_bytes ||
	     f->digest.crc != f->view_crc)) {
		cluster__log("snapshot fetch: the copy does not match the view index=%" PRIu64
			     " keys=%" PRIu64 "/%" PRIu64 " bytes=%" PRIu64 "/%" PRIu64,
			     f->view_index, f->digest.keys, f->view_keys, f->digest.bytes,
			     f->view_bytes);
		bad = 1;
	}
	if (bad) {
		c->counters.snapshot_fetch_failures++;
		cluster__log("snapshot fetch: from=%s status=%d; a new session", c->peers[pi].name,
			     (int)ch->status);
		craft__fetch_restart(c, CRAFT_FETCH_RESTART_MS);
	} else if (ch->done) {
		craft__fetch_finish(c);
	} else {
		craft__fetch_send(c);
	}
out:
	relay__snapshot_chunk__free_unpacked(ch, NULL);
}

/* Timeouts and delayed requests of the fetch (every tick). */
static void
craft__fetch_tick(struct cluster__raft *c, uint64_t now)
{
	struct craft_fetch *f = &c->fetch;
	if (!f->active)
		return;
	if (!f->wiped) {
		craft__fetch_restart(c, 0);
		return;
	}
	if (f->deadline && now >= f->deadline) {
		c->counters.snapshot_fetch_failures++;
		struct transport_peer_stats ps;
		int gone =
		    transport_peer_stats(c->tp, c->peers[f->src].name, &ps) != 0 || !ps.connected;
		if (++f->tries >= CRAFT_FETCH_TRIES || gone) {
			cluster__log("snapshot fetch: no answer from=%s%s; another node",
				     c->peers[f->src].name, gone ? " (not connected)" : "");
			craft__fetch_restart(c, 0);
		} else {
			craft__fetch_send(c);
		}
		return;
	}
	if (!f->deadline && f->next_at && now >= f->next_at)
		craft__fetch_send(c);
}

/* Installs the snapshot of rd: the log is dropped, the queue state wiped and marked incomplete
 * (STORE_META_INSTALL) in one synced write on the loop thread (no write is in flight); the
 * state machine is reloaded (empty) and the fetch of the key/values starts.  Committed entries
 * wait in the log until the fetch completes (craft__fetch_finish). */
static int
craft__install(struct cluster__raft *c, const struct raft_ready *rd)
{
	char hint[CLUSTER_ID_MAX + 1] = "";
	struct craft_book book = {0};
	if (rd->snap_len) {
		Relay__SnapshotDescriptor *d =
		    relay__snapshot_descriptor__unpack(NULL, rd->snap_len, rd->snap_data);
		if (d) {
			snprintf(hint, sizeof(hint), "%s", d->node);
			if (craft__book_from_proto(&book, d->peers, d->n_peers)) {
				c->counters.raft_dropped++;
				cluster__log("snapshot install index=%" PRIu64
					     ": bad address book; ours is kept",
					     rd->snap->index);
			}
			relay__snapshot_descriptor__free_unpacked(d, NULL);
		}
	}
	struct store_batch *b = &c->next;
	int rv = craft__hs_put(b, &rd->hs);
	if (!rv)
		rv = craft__wipe_queue(b);
	if (!rv)
		rv = store_log_delete(b, 1, UINT64_MAX);
	/* the snapshot's address book replaces ours (none: ours is kept) */
	if (!rv)
		rv = craft__book_replace(c, &book, b);
	if (!rv)
		rv = craft__snap_put(b, rd->snap, rd->snap_data, rd->snap_len);
	if (!rv)
		rv = store_applied_put(b, rd->snap->index);
	if (!rv)
		rv = craft__marker_put(b, rd->snap->index, hint);
	c->log_last = 0;
	if (rv) {
		cluster__log("snapshot install: batch error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	/* entries of the same ready follow the snapshot */
	struct raft_ready rest = *rd;
	rest.hs_changed = false;
	if ((rv = craft__persist(c, &rest)))
		return rv;
	rv = store_write(c->store, b, 1);
	c->stats.fsyncs++;
	if (rv) {
		cluster__log("snapshot install: write error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	store_batch_clear(b);
	c->install_seq = c->next_seq_persist; /* reported with the ready's own seq */
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	if ((rv = queue_fsm_reload(c->fsm))) {
		cluster__log("snapshot install: reload error=\"%s\"", queue_strerror(rv));
		return cluster__queue_err(rv);
	}
	c->applied = c->durable_applied = c->handed = rd->snap->index;
	c->snap_index = rd->snap->index;
	c->conf_committed = rd->snap->conf;
	c->conf_index = rd->snap->index;
	/* a fetch in progress for an older snapshot starts over for this one */
	free(c->fetch.val);
	c->fetch.val = NULL;
	craft__fetch_begin(c, rd->snap->index, hint);
	return 0;
}

/* ---- the run: proposals in, readies out ---- */

/* Submits p: 1 when done (proposed here or forwarded), 0 when it must wait. */
static int
craft__submit(struct cluster__raft *c, struct craft_prop *p)
{
	uint64_t now = uv_now(c->loop);
	if (c->role == RAFT_LEADER) {
		int rv = raft_propose(c->raft, p->data, p->len, NULL, NULL);
		if (rv)
			return 0;
		p->sent_ms = now;
		return 1;
	}
	if (c->lead == 0 || c->lead == c->id)
		return 0;
	int pi = craft__peer_by_id(c, c->lead);
	if (pi < 0)
		return 0;
	/* a full queue drops it like the network would: the retry timer sends it again */
	craft__out(c, (size_t)pi, CRAFT_KIND_PROPOSE, p->data, p->len);
	c->counters.forwarded++;
	p->sent_ms = now;
	return 1;
}

static void
craft__handle_ready(struct cluster__raft *c, struct raft_ready *rd)
{
	struct craft_list done = {0};
	int installed = 0;
	if (rd->snap) {
		int rv = craft__install(c, rd);
		if (rv) {
			cluster__log("apply stopped: snapshot not installed; restart to retry");
			c->failed = rv;
		} else {
			installed = 1;
		}
	} else if (rd->need_persist) {
		int rv = craft__persist(c, rd);
		if (rv) {
			cluster__log("persist: batch error=\"%s\"; apply stopped",
				     cluster_strerror(rv));
			c->failed = rv;
		}
	}
	craft__send(c, rd);
	if (!c->failed)
		craft__apply(c, rd, &done);
	craft__soft_state(c, rd->role, rd->lead, rd->term);
	uint64_t seq = rd->seq > c->install_seq ? rd->seq : c->install_seq;
	c->install_seq = 0;
	raft_advance(c->raft, rd);
	if (installed && seq)
		raft_persisted(c->raft, seq);
	craft__complete(c, &done);
}

static void
craft__run_cb(uv_idle_t *h)
{
	struct cluster__raft *c = h->data;
	uv_idle_stop(h);
	if (c->closing)
		return;
	if (c->have_held) {
		if (c->writing)
			return; /* the write's completion schedules the next run */
		c->have_held = 0;
		craft__handle_ready(c, &c->held);
	}
	int round;
	for (round = 0; round < 64 && !c->closing && !c->failed; round++) {
		while (c->unsent && craft__submit(c, c->unsent))
			c->unsent = c->unsent->next;
		struct raft_ready rd;
		int got = 0;
		/* while a write is in flight the next one grows; past its bound the core waits */
		while (!c->closing && !c->failed &&
		       !(c->writing && c->next.len >= CRAFT_NEXT_MAX_BYTES) &&
		       raft_ready_get(c->raft, &rd) > 0) {
			got = 1;
			if (rd.snap && c->writing) {
				c->held = rd;
				c->have_held = 1;
				return;
			}
			craft__handle_ready(c, &rd);
		}
		if (!got)
			break;
	}
	if (c->closing)
		return;
	if (round == 64)
		craft__schedule(c); /* more work: the next loop turn, after I/O */
	if (!c->failed) {
		struct raft_status st;
		raft_status(c->raft, &st);
		craft__soft_state(c, st.role, st.lead, st.term);
	}
	craft__start_write(c);
}

/* ---- inputs ---- */

static void craft__recv_one(struct cluster__raft *c, const char *from, uint32_t kind,
			    const void *data, size_t len);

static void
craft__recv_cb(void *arg, const char *from, uint32_t kind, const void *data, size_t len)
{
	struct cluster__raft *c = arg;
	if (c->closing)
		return;
	if (kind != CRAFT_KIND_BATCH) {
		craft__recv_one(c, from, kind, data, len);
		return;
	}
	/* peer input: every length is checked against what is left; a bad batch is dropped
	 * from the bad item on */
	const unsigned char *p = data, *end = p + len;
	while (p < end && !c->closing) {
		if ((size_t)(end - p) < CRAFT_BATCH_HDR) {
			c->counters.raft_dropped++;
			return;
		}
		uint32_t k = p[0];
		size_t l = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
		p += CRAFT_BATCH_HDR;
		if (l > (size_t)(end - p) || k == CRAFT_KIND_BATCH) {
			c->counters.raft_dropped++;
			return;
		}
		craft__recv_one(c, from, k, p, l);
		p += l;
	}
}

static void
craft__recv_one(struct cluster__raft *c, const char *from, uint32_t kind, const void *data,
		size_t len)
{
	int pi = craft__peer_by_name(c, from);
	if (pi >= 0)
		c->last_contact[pi] = (int64_t)uv_now(c->loop);
	if (kind == TRANSPORT_KIND_RAFT) {
		if (c->have_held) {
			c->counters.raft_dropped++; /* the core is busy with a held ready */
			return;
		}
		struct transport_raft_in in;
		if (transport_raft_decode(data, len, &in)) {
			c->counters.raft_dropped++;
			return;
		}
		if (pi < 0 || in.msg.from != c->peers[pi].id)
			c->counters.raft_dropped++; /* claims another sender than its frame */
		else if (raft_step(c->raft, &in.msg))
			c->counters.raft_dropped++;
		transport_raft_in_fini(&in);
		craft__schedule(c);
		return;
	}
	if (kind == CRAFT_KIND_SNAP_FETCH || kind == CRAFT_KIND_SNAP_CHUNK) {
		if (pi < 0 || (size_t)pi == c->self) {
			c->counters.raft_dropped++;
			return;
		}
		if (kind == CRAFT_KIND_SNAP_FETCH)
			craft__serve(c, (size_t)pi, data, len);
		else
			craft__fetch_chunk(c, (size_t)pi, data, len);
		return;
	}
	if (kind == CRAFT_KIND_TRANSFER) {
		if (pi >= 0)
			craft__recv_transfer(c, data, len);
		return;
	}
	if (kind == CRAFT_KIND_PROPOSE) {
		c->counters.forwards_received++;
		if (c->role != RAFT_LEADER || c->have_held || c->failed ||
		    len > RAFT_ENTRY_MAX_BYTES)
			return; /* the origin retries */
		Relay__Command *cmd = relay__command__unpack(NULL, len, data);
		if (!cmd)
			return;
		int ok = cmd->has_origin_node && cmd->has_origin_boot && cmd->has_origin_seq &&
			 craft__validate(cmd) == 0;
		relay__command__free_unpacked(cmd, NULL);
		if (ok && raft_propose(c->raft, data, len, NULL, NULL) == 0)
			craft__schedule(c);
	}
}

static void
craft__tick_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	if (c->closing)
		return;
	if (!c->have_held)
		raft_tick(c->raft);
	if (c->retry_write && !c->writing) {
		c->retry_write = 0;
		craft__start_write(c);
	}
	/* proposals: fail the overdue, resubmit the ones whose submission may have been lost */
	uint64_t now = uv_now(c->loop);
	craft__fetch_tick(c, now);
	craft__serve_expire(c, now);
	if (!c->writing)
		craft__maybe_snapshot(c); /* one due while a view was being digested */
	struct craft_list done = {0};
	int blocked = 0;
	for (struct craft_prop *p = c->pending.head, *nx; p; p = nx) {
		nx = p->next;
		if (now >= p->deadline) {
			craft__unlink(c, p);
			p->status = CLUSTER_ETIMEDOUT;
			c->counters.timed_out++;
			craft__list_push(&done, p);
			continue;
		}
		if (p == c->unsent)
			blocked = 1; /* from here on, not submitted yet */
		/* a leader's own log holds what it proposed: it resubmits only on a leader change
		 * (craft__soft_state), never while it stays leader (duplicates without quorum) */
		if (!blocked && !c->have_held && c->role != RAFT_LEADER &&
		    now - p->sent_ms >= c->retry_ms) {
			if (craft__submit(c, p))
				c->counters.forward_retries++;
		}
	}
	craft__complete(c, &done);
	craft__reconcile(c);
	craft__schedule(c);
}

int
cluster__raft_propose(struct cluster__raft *c, const Relay__Command *cmd, cluster_propose_cb cb,
		      void *arg)
{
	int rv;
	if (c->closing) {
		rv = CLUSTER_ECLOSED;
		goto err;
	}
	if (c->failed) {
		rv = c->failed;
		goto err;
	}
	if (craft__validate(cmd)) {
		rv = CLUSTER_EINVAL;
		goto err;
	}
	if (c->npending >= c->max_pending || c->pending_bytes >= CRAFT_PENDING_MAX_BYTES) {
		rv = CLUSTER_EBUSY;
		goto err;
	}
	Relay__Command tagged = *cmd;
	tagged.has_origin_node = tagged.has_origin_boot = tagged.has_origin_seq = 1;
	tagged.origin_node = c->id;
	tagged.origin_boot = c->boot;
	tagged.origin_seq = c->next_seq;
	size_t len = relay__command__get_packed_size(&tagged);
	if (len > RAFT_ENTRY_MAX_BYTES) {
		rv = CLUSTER_ETOOBIG;
		goto err;
	}
	struct craft_prop *p = malloc(sizeof(*p) + len);
	if (!p) {
		rv = CLUSTER_ENOMEM;
		goto err;
	}
	memset(p, 0, sizeof(*p));
	p->seq = c->next_seq++;
	p->cb = cb;
	p->arg = arg;
	p->deadline = uv_now(c->loop) + c->fail_ms;
	p->len = relay__command__pack(&tagged, p->data);
	craft__list_push(&c->pending, p);
	craft__hash_add(c, p);
	c->npending++;
	c->pending_bytes += p->len;
	if (!c->unsent)
		c->unsent = p;
	c->stats.proposals++;
	craft__schedule(c);
	return 0;
err:
	c->stats.rejected++;
	return rv;
}

/* ---- membership: the leader steers the configuration towards the address book ---- */

static void
craft__noop_cb(void *arg, int status)
{
	(void)arg;
	(void)status;
}

/* Proposes Peer{node, addr, state} on behalf of this node (no one waits for it). */
static int
craft__propose_peer(struct cluster__raft *c, const char *node, const char *addr, unsigned state,
		    cluster_propose_cb cb, void *arg)
{
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = (char *)node;
	p.addr = (char *)(addr ? addr : "");
	p.state = (Relay__PeerState)state;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_PEER;
	cmd.peer = &p;
	return cluster__raft_propose(c, &cmd, cb ? cb : craft__noop_cb, arg);
}

/* Proposes Peer{node, addr, ACTIVE, local} for book slot i, a member known from config only:
 * it applies only while no Peer command for that node has applied (craft__apply_peer), so a
 * publication that reaches the log after a removal does not bring the member back. */
static void
craft__publish_peer(struct cluster__raft *c, size_t i)
{
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = c->peers[i].name;
	p.addr = c->peers[i].addr;
	p.state = RELAY__PEER_STATE__PEER_ACTIVE;
	p.has_local = 1;
	p.local = 1;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_PEER;
	cmd.peer = &p;
	cluster__raft_propose(c, &cmd, craft__noop_cb, NULL);
}

static const struct raft_peer_status *
craft__progress(const struct raft_status *rs, uint64_t id)
{
	for (uint32_t k = 0; k < rs->n_peers; k++)
		if (rs->peers[k].id == id)
			return &rs->peers[k];
	return NULL;
}

/* One configuration change; 1 when one was appended (or must wait), 0 to look further. */
static int
craft__conf_change(struct cluster__raft *c, size_t i, enum raft_conf_op op, const char *what,
		   uint64_t now)
{
	int rv = raft_propose_conf(c->raft, op, c->peers[i].id, NULL, NULL);
	if (rv == 0) {
		cluster__log("event=conf-change op=%s node=%s", what, c->peers[i].name);
		c->pprop_ms[i] = now;
		craft__schedule(c);
		return 1;
	}
	if (rv == RAFT_ECONFPENDING || rv == RAFT_EFULL || rv == RAFT_ETRANSFER)
		return 1; /* the next tick tries again */
	if (now - c->pprop_ms[i] >= c->retry_ms) {
		cluster__log("conf-change op=%s node=%s error=\"%s\"", what, c->peers[i].name,
			     raft_strerror(rv));
		c->pprop_ms[i] = now;
	}
	return 0;
}

/* Leader, each tick: at most one configuration change towards the book (cluster.h). */
static void
craft__reconcile(struct cluster__raft *c)
{
	if (c->role != RAFT_LEADER || c->failed || c->have_held || c->closing)
		return;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (rs.role != RAFT_LEADER || rs.transferee)
		return;
	uint64_t now = uv_now(c->loop);
	int throttled;
	for (size_t i = 0; i < c->n_peers; i++) {
		uint64_t id = c->peers[i].id;
		int member = raft_conf_is_member(&rs.conf, id);
		int voter = raft_conf_is_voter(&rs.conf, id);
		throttled = c->pprop_ms[i] && now - c->pprop_ms[i] < c->retry_ms;
		switch (c->pstate[i]) {
		case RELAY__PEER_STATE__PEER_ACTIVE:
			if (c->plocal[i]) {
				/* a bootstrap member known from config only: put it in the log so
				 * that nodes joining later learn its address */
				if (member && !throttled && c->peers[i].addr[0]) {
					craft__publish_peer(c, i);
					c->pprop_ms[i] = now;
				}
				break;
			}
			if (!member) {
				if (craft__conf_change(c, i, RAFT_CONF_ADD_LEARNER, "add-learner",
						       now))
					return;
			} else if (!voter) {
				const struct raft_peer_status *pr = craft__progress(&rs, id);
				if (pr && pr->state == 1 &&
				    pr->match + CRAFT_PROMOTE_LAG >= rs.commit &&
				    craft__conf_change(c, i, RAFT_CONF_ADD_VOTER, "promote", now))
					return;
			}
			break;
		case RELAY__PEER_STATE__PEER_LEAVING:
			if (member) {
				if (craft__conf_change(c, i, RAFT_CONF_REMOVE, "remove", now))
					return;
			} else if (!raft_conf_is_member(&c->conf_committed, id) && !throttled) {
				/* out of the committed configuration: its deliveries move, then
				 * every node forgets it */
				Relay__Member m = RELAY__MEMBER__INIT;
				m.node = c->peers[i].name;
				m.state = RELAY__MEMBER_STATE__MEMBER_REMOVED;
				m.has_at_ms = 1;
				m.at_ms = (uint64_t)time(NULL) * 1000;
				Relay__Command cmd = RELAY__COMMAND__INIT;
				cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
				cmd.member = &m;
				int rv = cluster__raft_propose(c, &cmd, craft__noop_cb, NULL);
				if (rv == CLUSTER_EINVAL) {
					/* a queue state machine without member states: nothing
					 * to move */
					cluster__log("event=member-removed node=%s skipped: %s",
						     c->peers[i].name, cluster_strerror(rv));
					rv = 0;
				}
				if (!rv)
					rv = craft__propose_peer(c, c->peers[i].name, "",
								 RELAY__PEER_STATE__PEER_LEFT, NULL,
								 NULL);
				cluster__log("event=member-removed node=%s%s%s", c->peers[i].name,
					     rv ? " error=" : "", rv ? cluster_strerror(rv) : "");
				c->pprop_ms[i] = now;
			}
			break;
		default:
			break;
		}
	}
}

int
cluster__raft_member_add(struct cluster__raft *c, const char *id, const char *addr,
			 cluster_propose_cb cb, void *arg)
{
	if (craft__id_addr_ok(id, addr) || !addr || !*addr)
		return CLUSTER_EBADADDR;
	int i = craft__peer_by_name(c, id);
	if (i >= 0 && c->pstate[i] == RELAY__PEER_STATE__PEER_ACTIVE &&
	    (!c->plocal[i] || raft_conf_is_member(&c->conf_committed, c->peers[i].id)))
		return CLUSTER_EEXIST;
	if (i < 0 && c->n_peers >= CLUSTER_MAX_PEERS)
		return CLUSTER_EFULL;
	return craft__propose_peer(c, id, addr, RELAY__PEER_STATE__PEER_ACTIVE, cb, arg);
}

int
cluster__raft_member_remove(struct cluster__raft *c, const char *id, cluster_propose_cb cb,
			    void *arg)
{
	if (craft__id_addr_ok(id, NULL))
		return CLUSTER_EBADADDR;
	int i = craft__peer_by_name(c, id);
	if (i < 0 || c->pstate[i] == RELAY__PEER_STATE__PEER_LEFT)
		return CLUSTER_ENOMEMBER;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (raft_conf_is_voter(&rs.conf, c->peers[i].id) && rs.conf.n_voters == 1)
		return CLUSTER_EINVAL; /* the last voter */
	return craft__propose_peer(c, id, "", RELAY__PEER_STATE__PEER_LEAVING, cb, arg);
}

/* On the leader: starts a transfer to target (NULL/"": the most caught-up other voter). */
static int
craft__transfer_here(struct cluster__raft *c, const char *target)
{
	struct raft_status rs;
	raft_status(c->raft, &rs);
	uint64_t to = 0;
	if (target && *target) {
		int ti = craft__peer_by_name(c, target);
		if (ti < 0 || !raft_conf_is_voter(&rs.conf, c->peers[ti].id))
			return CLUSTER_ENOMEMBER;
		to = c->peers[ti].id;
		if (to == c->id)
			return CLUSTER_EINVAL;
	} else {
		uint64_t best = 0;
		int best_active = -1;
		for (uint32_t k = 0; k < rs.n_peers; k++) {
			const struct raft_peer_status *p = &rs.peers[k];
			if (p->id == c->id || !p->voter)
				continue;
			if (!to || (int)p->active > best_active ||
			    ((int)p->active == best_active && p->match > best)) {
				to = p->id;
				best = p->match;
				best_active = p->active;
			}
		}
		if (!to)
			return CLUSTER_EINVAL;
	}
	int rv = raft_transfer_leader(c->raft, to);
	if (rv == RAFT_ENOTLEADER)
		return CLUSTER_ENOLEADER;
	if (rv)
		return CLUSTER_EINVAL;
	int pi = craft__peer_by_id(c, to);
	cluster__log("event=leader-transfer to=%s", pi >= 0 ? c->peers[pi].name : "?");
	craft__schedule(c);
	return 0;
}

int
cluster__raft_transfer_leader(struct cluster__raft *c, const char *target, const char *from_leader)
{
	if (c->closing)
		return CLUSTER_ECLOSED;
	if (target && *target && craft__peer_by_name(c, target) < 0)
		return CLUSTER_ENOMEMBER;
	if (c->lead == 0)
		return CLUSTER_ENOLEADER;
	int li = craft__peer_by_id(c, c->lead);
	if (li < 0)
		return CLUSTER_ENOLEADER;
	if (from_leader && *from_leader && strcmp(from_leader, c->peers[li].name))
		return 0; /* leadership moved already */
	if (target && *target && !strcmp(target, c->peers[li].name))
		return 0; /* already the leader */
	if (c->role == RAFT_LEADER)
		return craft__transfer_here(c, target);
	/* forward: "target\nfrom_leader" */
	char buf[2 * CLUSTER_ID_MAX + 2];
	int n = snprintf(buf, sizeof(buf), "%s\n%s", target ? target : "", c->peers[li].name);
	craft__out(c, (size_t)li, CRAFT_KIND_TRANSFER, buf, (size_t)n);
	return 0;
}

/* A forwarded transfer request (peer input: checked). */
static void
craft__recv_transfer(struct cluster__raft *c, const void *data, size_t len)
{
	char buf[2 * CLUSTER_ID_MAX + 2];
	if (c->role != RAFT_LEADER || len >= sizeof(buf))
		return;
	memcpy(buf, data, len);
	buf[len] = 0;
	char *nl = strchr(buf, '\n');
	if (!nl)
		return;
	*nl = 0;
	const char *from = nl + 1;
	if (*from && strcmp(from, c->peers[c->self].name))
		return; /* meant for an earlier leader: it moved already */
	int rv = craft__transfer_here(c, buf);
	if (rv)
		cluster__log("leader-transfer (forwarded) to=%s error=\"%s\"", *buf ? buf : "any",
			     cluster_strerror(rv));
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

/* Loads the durable raft state and gives it to the core (or bootstraps a new cluster). */
static int
craft__load(struct cluster__raft *c)
{
	struct raft_hard_state hs = {0};
	int rv = craft__hs_get(c->store, &hs);
	uint64_t first, last;
	int srv = store_log_bounds(c->store, &first, &last);
	if (srv)
		return cluster__store_err(srv);
	if ((srv = store_applied_get(c->store, &c->applied)))
		return cluster__store_err(srv);
	c->durable_applied = c->applied;
	if (rv == STORE_ENOTFOUND) {
		struct queue_counts qc;
		queue_fsm_counts(c->fsm, &qc);
		if (c->applied || last || qc.messages) {
			cluster__log("open: the data dir holds a single node's queue; a replicated "
				     "node needs an empty data_dir");
			return CLUSTER_EINVAL;
		}
		if (c->join) {
			/* a new member: empty state; the leader sends the configuration (after
			 * relayctl node add) */
			struct raft_snap_meta empty = {0};
			rv = raft_restore(c->raft, &hs, &empty, NULL, 0, NULL, 0);
			if (rv) {
				cluster__log("open: join error=\"%s\"", raft_strerror(rv));
				return CLUSTER_EINVAL;
			}
			cluster__log("event=join-wait peers=%zu (waiting for relayctl node add)",
				     c->n_peers - 1);
			return 0;
		}
		struct raft_conf conf = {0};
		for (size_t i = 0; i < c->n_peers; i++)
			conf.voters[conf.n_voters++] = c->peers[i].id;
		rv = raft_bootstrap(c->raft, &conf);
		if (rv) {
			cluster__log("open: bootstrap error=\"%s\"", raft_strerror(rv));
			return CLUSTER_EINVAL;
		}
		cluster__log("event=bootstrap voters=%zu", c->n_peers);
		return 0;
	}
	if (rv) {
		cluster__log("open: raft hard state error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct raft_snap_meta snap = {0};
	void *sdata = NULL;
	size_t slen = 0;
	rv = craft__snap_get(c->store, &snap, &sdata, &slen);
	if (rv && rv != STORE_ENOTFOUND) {
		cluster__log("open: snapshot error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	c->snap_index = snap.index;
	c->synced_term = hs.term;
	c->synced_vote = hs.vote;
	/* the entries after the snapshot */
	struct raft_entry *ents = NULL;
	void **bufs = NULL;
	size_t n = 0;
	uint64_t lo = snap.index + 1;
	if (last >= lo) {
		size_t cnt = (size_t)(last - lo + 1);
		ents = calloc(cnt, sizeof(*ents));
		bufs = calloc(cnt, sizeof(*bufs));
		if (!ents || !bufs) {
			rv = CLUSTER_ENOMEM;
			goto out;
		}
		for (uint64_t i = lo; i <= last; i++) {
			struct store_entry e;
			rv = store_log_get(c->store, i, &e, &bufs[n]);
			if (rv) {
				cluster__log("open: log entry index=%" PRIu64 " error=\"%s\"", i,
					     store_strerror(rv));
				rv = rv == STORE_ENOTFOUND ? CLUSTER_ECORRUPT
							   : cluster__store_err(rv);
				goto out;
			}
			ents[n++] = (struct raft_entry){.index = e.index,
							.term = e.term,
							.type = (uint8_t)e.type,
							.len = (uint32_t)e.len,
							.data = (void *)e.data};
		}
	}
	rv = raft_restore(c->raft, &hs, &snap, sdata, slen, ents, n);
	if (rv) {
		cluster__log("open: raft restore error=\"%s\"", raft_strerror(rv));
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_ECORRUPT;
		goto out;
	}
	c->log_last = last;
	/* the queue is durable with its applied index: those entries are not handed out again */
	if (c->applied > snap.index && c->applied <= last &&
	    (rv = raft_set_applied(c->raft, c->applied)))
		cluster__log("open: raft_set_applied index=%" PRIu64 " error=\"%s\"", c->applied,
			     raft_strerror(rv));
	if (c->applied < snap.index) {
		cluster__log("open: applied=%" PRIu64 " behind snapshot=%" PRIu64, c->applied,
			     snap.index);
		rv = CLUSTER_ECORRUPT;
		goto out;
	}
	cluster__log("open: term=%" PRIu64 " commit=%" PRIu64 " applied=%" PRIu64
		     " snapshot=%" PRIu64 " entries=%zu",
		     hs.term, hs.commit, c->applied, snap.index, n);
	rv = 0;
out:
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(ents);
	free(sdata);
	return rv;
}

/* A snapshot install that did not complete (the marker is in the store): its partial copy is
 * wiped before the queue is loaded, and the fetch starts again once the node is open. */
static int
craft__install_recover(struct cluster__raft *c)
{
	uint64_t min_index;
	char hint[CLUSTER_ID_MAX + 1];
	int rv = craft__marker_get(c->store, &min_index, hint);
	if (rv == STORE_ENOTFOUND)
		return 0;
	if (rv) {
		cluster__log("open: install marker error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct store_batch b;
	store_batch_init(&b);
	rv = craft__wipe_queue(&b);
	if (!rv)
		rv = store_write(c->store, &b, 1);
	store_batch_fini(&b);
	if (rv) {
		cluster__log("open: wiping a partial snapshot error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	cluster__log("event=snapshot-resume index=%" PRIu64 " from=%s: the install did not "
		     "complete; partial copy wiped, fetched again",
		     min_index, hint[0] ? hint : "leader");
	c->fetch.active = 1;
	c->fetch.min_index = min_index;
	snprintf(c->fetch.hint, sizeof(c->fetch.hint), "%s", hint);
	return 0;
}

int
cluster__raft_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster__raft **out)
{
	char path[CRAFT_PATH_MAX];
	char err[256];
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
	struct cluster__raft *c = calloc(1, sizeof(*c));
	if (!c)
		return CLUSTER_ENOMEM;
	c->loop = loop;
	if (cluster_peers_parse(cfg->peers, cfg->n_peers, NULL, c->peers, err, sizeof(err)) ||
	    craft__id_addr_ok(cfg->node_id, cfg->cluster_listen)) {
		cluster__log("open: %s", err[0] ? err : "node_id or cluster_listen not valid");
		free(c);
		return CLUSTER_EINVAL;
	}
	c->n_peers = cfg->n_peers;
	c->self = SIZE_MAX;
	for (size_t i = 0; i < c->n_peers; i++) {
		c->last_contact[i] = -1;
		c->plocal[i] = 1; /* until the log says */
		if (!strcmp(c->peers[i].name, cfg->node_id))
			c->self = i;
	}
	if (c->self == SIZE_MAX) {
		/* not among the configured peers: a node joining an existing cluster */
		c->join = 1;
		int k = craft__book_add(c, cfg->node_id, cfg->cluster_listen,
					RELAY__PEER_STATE__PEER_ACTIVE, 1);
		if (k < 0) {
			cluster__log("open: peers: at most %u members", CLUSTER_MAX_PEERS);
			free(c);
			return CLUSTER_EINVAL;
		}
		c->self = (size_t)k;
	}
	c->id = c->peers[c->self].id;
	c->boot = craft__random64();
	c->next_seq = 1;
	c->max_pending = cfg->max_pending ? cfg->max_pending : CLUSTER_DEFAULT_MAX_PENDING;
	c->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
	unsigned election = cfg->election_timeout_ms ? cfg->election_timeout_ms
						     : CLUSTER_DEFAULT_ELECTION_TIMEOUT_MS;
	if (election < 2 * c->heartbeat_ms)
		election = 2 * c->heartbeat_ms;
	c->fail_ms = cfg->propose_fail_ms ? cfg->propose_fail_ms : CLUSTER_DEFAULT_PROPOSE_FAIL_MS;
	c->retry_ms = cfg->retry_ms ? cfg->retry_ms : 2 * election;
	c->snapshot_entries =
	    cfg->snapshot_entries ? cfg->snapshot_entries : CLUSTER_DEFAULT_SNAPSHOT_ENTRIES;
	c->nbuckets = 1024;
	while (c->nbuckets < c->max_pending)
		c->nbuckets <<= 1;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	store_batch_init(&c->wbatch);
	store_batch_init(&c->next);
	c->work.data = c;
	if (!c->buckets) {
		rv = CLUSTER_ENOMEM;
		goto err_after_alloc;
	}
	if ((rv = store_open(path, 0, &c->store))) {
		rv = cluster__store_err(rv);
		goto err_after_alloc;
	}
	if ((rv = craft__install_recover(c)))
		goto err_after_store;
	if ((rv = queue_fsm_new(c->store, &c->fsm))) {
		cluster__log("open: loading the queue error=\"%s\"", queue_strerror(rv));
		rv = cluster__queue_err(rv);
		goto err_after_store;
	}
	struct raft_config rc = {
	    .id = c->id,
	    .election_tick = election / c->heartbeat_ms,
	    .heartbeat_tick = 1,
	    .pre_vote = true,
	    .check_quorum = true,
	    .rng_seed = craft__random64(),
	};
	if ((rv = raft_new(&rc, &c->raft))) {
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EINVAL;
		goto err_after_fsm;
	}
	/* the stored address book wins over config `peers` (they only bootstrap) */
	rv = craft__book_load(c, cfg->node_id);
	if (rv == 0 && c->self == SIZE_MAX)
		c->self = (size_t)craft__book_add(c, cfg->node_id, cfg->cluster_listen,
						  RELAY__PEER_STATE__PEER_ACTIVE, 1);
	if (rv == 0 && c->self == SIZE_MAX) {
		cluster__log("open: the stored address book is full and lacks this node");
		rv = CLUSTER_ECORRUPT;
		goto err_after_raft;
	}
	if (rv == 0) {
		cluster__log("open: address book from the store members=%zu", c->n_peers);
	} else if (rv != STORE_ENOTFOUND) {
		cluster__log("open: address book error=\"%s\"", store_strerror(rv));
		rv = cluster__store_err(rv);
		goto err_after_raft;
	}
	if ((rv = craft__load(c)))
		goto err_after_raft;
	if ((rv = craft__book_put(c, &c->next))) {
		rv = cluster__store_err(rv);
		goto err_after_raft;
	}
	{
		struct raft_status rs;
		raft_status(c->raft, &rs);
		c->conf_committed = rs.conf;
	}
	struct transport_config tc = {
	    .node_id = cfg->node_id,
	    .listen = cfg->cluster_listen,
	    .ca_file = ntls ? cfg->cluster_ca : NULL,
	    .cert_file = ntls ? cfg->cluster_cert : NULL,
	    .key_file = ntls ? cfg->cluster_key : NULL,
	    .max_msg_bytes = CRAFT_MAX_FRAME_BYTES,
	};
	if ((rv = transport_open(loop, &tc, craft__recv_cb, c, &c->tp))) {
		cluster__log("open: cluster_listen=%s error=\"%s\"", cfg->cluster_listen,
			     transport_strerror(rv));
		rv = rv == TRANSPORT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EIO;
		goto err_after_raft;
	}
	for (size_t i = 0; i < c->n_peers; i++) {
		if (i == c->self || !c->peers[i].addr[0])
			continue;
		if ((rv = transport_add_peer(c->tp, c->peers[i].name, c->peers[i].addr))) {
			cluster__log("open: peer %s=%s error=\"%s\"", c->peers[i].name,
				     c->peers[i].addr, transport_strerror(rv));
			rv = CLUSTER_EINVAL;
			goto err_after_transport;
		}
	}
	uv_idle_init(loop, &c->run);
	c->run.data = c;
	uv_timer_init(loop, &c->tick);
	c->tick.data = c;
	uv_timer_init(loop, &c->flush);
	c->flush.data = c;
	uv_timer_start(&c->tick, craft__tick_cb, c->heartbeat_ms, c->heartbeat_ms);
	c->stats.applied_index = c->applied;
	c->handed = c->applied;
	if (c->fetch.active)
		craft__fetch_begin(c, c->fetch.min_index, c->fetch.hint);
	cluster__log("event=cluster-open node=%s id=%016" PRIx64 " peers=%zu listen=%s tls=%s",
		     cfg->node_id, c->id, c->n_peers, cfg->cluster_listen, ntls ? "yes" : "no");
	craft__schedule(c);
	*out = c;
	return 0;
err_after_transport:
	transport_close(c->tp, NULL, NULL);
err_after_raft:
	raft_free(c->raft);
err_after_fsm:
	queue_fsm_free(c->fsm);
err_after_store:
	store_free(c->store);
err_after_alloc:
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	free(c->buckets);
	free(c);
	return rv;
}

/* ---- close ---- */

static void
craft__free(struct cluster__raft *c)
{
	void (*done)(void *) = c->close_done;
	void *arg = c->close_arg;
	/* the applied state reached so far, rather than replaying it at the next open */
	if (c->next.len && !c->failed) {
		int rv = store_write(c->store, &c->next, 1);
		if (rv)
			cluster__log("close: last write error=\"%s\"; replayed at open",
				     store_strerror(rv));
	}
	struct craft_list all = c->pending;
	memset(&c->pending, 0, sizeof(c->pending));
	c->unsent = NULL;
	for (struct craft_prop *p = all.head; p; p = p->next)
		p->status = CLUSTER_ECLOSED;
	craft__complete(c, &all);
	raft_free(c->raft);
	queue_fsm_free(c->fsm);
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++)
		if (c->serve[i].used)
			craft__serve_release(&c->serve[i]);
	craft__view_unref(c->view);
	free(c->fetch.val);
	store_free(c->store);
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	for (size_t i = 0; i < CLUSTER_MAX_PEERS; i++)
		free(c->out[i].buf);
	free(c->buckets);
	free(c);
	if (done)
		done(arg);
}

static void
craft__closed_one(struct cluster__raft *c)
{
	if (--c->close_pending == 0)
		craft__free(c);
}

static void
craft__handle_closed_cb(uv_handle_t *h)
{
	craft__closed_one(h->data);
}

static void
craft__tp_closed_cb(void *arg)
{
	craft__closed_one(arg);
}

/* Starts closing the handles and the transport once no write is in flight. */
static void
craft__finish_close(struct cluster__raft *c)
{
	if (c->writing || c->digesting || c->close_pending)
		return;
	c->close_pending = 4;
	transport_close(c->tp, craft__tp_closed_cb, c);
	c->tp = NULL;
	uv_close((uv_handle_t *)&c->run, craft__handle_closed_cb);
	uv_close((uv_handle_t *)&c->tick, craft__handle_closed_cb);
	uv_close((uv_handle_t *)&c->flush, craft__handle_closed_cb);
}

void
cluster__raft_close(struct cluster__raft *c, void (*done)(void *arg), void *arg)
{
	c->closing = 1;
	c->close_done = done;
	c->close_arg = arg;
	uv_idle_stop(&c->run);
	uv_timer_stop(&c->tick);
	uv_timer_stop(&c->flush);
	craft__finish_close(c); /* else when the write in flight completes */
}

/* ---- stats and status ---- */

void
cluster__raft_stats(struct cluster__raft *c, struct cluster_stats *st)
{
	*st = c->stats;
	st->applied_index = c->applied;
	st->last_index = c->log_last;
	st->pending = c->npending;
	cluster__queue_stats(c->fsm, st);
}

void
cluster__raft_status(struct cluster__raft *c, struct cluster_status *st)
{
	*st = c->counters;
	st->replicated = 1;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	st->role = craft__role_name(rs.role);
	st->term = rs.term;
	st->leader_id = rs.lead;
	int li = craft__peer_by_id(c, rs.lead);
	st->leader[0] = 0;
	if (li >= 0)
		snprintf(st->leader, sizeof(st->leader), "%s", c->peers[li].name);
	st->commit_index = rs.commit;
	st->applied_index = c->applied;
	st->last_index = rs.last_index;
	st->snapshot_index = rs.snap_index;
	st->snapshot_installing = c->fetch.active;
	st->raft_dropped += rs.dropped_msgs;
	uint64_t now = uv_now(c->loop);
	st->n_peers = (unsigned)c->n_peers;
	for (size_t i = 0; i < c->n_peers; i++) {
		struct cluster_peer_status *p = &st->peers[i];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", c->peers[i].name);
		snprintf(p->addr, sizeof(p->addr), "%s", c->peers[i].addr);
		p->id = c->peers[i].id;
		if (c->pstate[i] == RELAY__PEER_STATE__PEER_LEFT)
			p->membership = "removed";
		else if (c->pstate[i] == RELAY__PEER_STATE__PEER_LEAVING)
			p->membership = "leaving";
		else if (raft_conf_is_voter(&rs.conf, p->id))
			p->membership = "voter";
		else if (raft_conf_is_member(&rs.conf, p->id))
			p->membership = "learner";
		else
			p->membership = "joining";
		p->self = i == c->self;
		if (p->self) {
			p->connected = 1;
			p->last_contact_ms = 0;
		} else {
			struct transport_peer_stats ps;
			if (c->tp && transport_peer_stats(c->tp, c->peers[i].name, &ps) == 0)
				p->connected = ps.connected;
			p->last_contact_ms = c->last_contact[i] < 0
						 ? -1
						 : (int64_t)(now - (uint64_t)c->last_contact[i]);
		}
		for (uint32_t k = 0; k < rs.n_peers; k++)
			if (rs.peers[k].id == p->id) {
				p->match = rs.peers[k].match;
				p->lag = rs.last_index > p->match ? rs.last_index - p->match : 0;
			}
	}
}

struct queue_fsm *
cluster__raft_queue(struct cluster__raft *c)
{
	return c->fsm;
}

struct store *
cluster__raft_store(struct cluster__raft *c)
{
	return c->store;
}
