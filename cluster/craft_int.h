/*
 * craft_int.h - private to the replicated host's pure part (craft*.c; craft.h is its seam): the
 * host's state and the functions its files share.  The files, along the seams of the design
 * described in cluster_raft.c:
 *   craft.c        proposals, the write path (persist, apply, group commit), readies, inputs
 *   craft_book.c   the address book (Peer commands, stored book, snapshot books)
 *   craft_meta.c   Raft metadata in the store (hard state, snapshot, install marker), open/load
 *   craft_snap.c   views, compaction, serving fetches
 *   craft_fetch.c  fetching a snapshot's key/values (the install)
 *   craft_member.c the leader steering the configuration to the book, transfer, status
 */
#ifndef RELAY_CRAFT_INT_H
#define RELAY_CRAFT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster_types.h"
#include "craft.h"
#include "peers.h"
#include "queue_fsm.h"
#include "raft.h"
#include "relay.pb-c.h"
#include "store.h"

/* raft_meta keys of the replicated mode. */
#define CRAFT_META_HS "raft_hs"
#define CRAFT_META_SNAP "raft_snap"
#define CRAFT_META_SNAP_DATA "raft_snap_data"
#define CRAFT_META_PEERS "raft_peers"
#define CRAFT_META_VERSION 1
/* A learner is promoted to voter once its log is within this many entries of the commit index
 * and the leader streams to it (thesis 4.2.1: catch up before counting towards quorums). */
#define CRAFT_PROMOTE_LAG 64u
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
#define CRAFT_DESCRIPTOR_MAX                                                                       \
	(256u + (CLUSTER_MAX_PEERS + CRAFT_TOMBS) * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 48u))
/* A snapshot is also taken once this many entry bytes were applied since the last one, so the
 * in-memory log (entries up to RAFT_ENTRY_MAX_BYTES each) stays bounded in bytes too. */
#define CRAFT_SNAPSHOT_LOG_BYTES ((uint64_t)256 << 20)
/* The leader keeps its log for a member that still needs it (craft__retain) while the log
 * since the last snapshot holds less than this many bytes and entries (raft's in-memory log is
 * bounded at max_log_entries, 65536 by default). */
#define CRAFT_RETAIN_LOG_BYTES ((uint64_t)256 << 20)
#define CRAFT_RETAIN_ENTRIES 32768u
/* ... for a member heard from within this many election timeouts (a restart, not an outage). */
#define CRAFT_RETAIN_SILENT_ELECTIONS 10u
/* A compaction still put off is logged again this often. */
#define CRAFT_RETAIN_LOG_MS 10000u
/* Bytes of proposals waiting to commit on this node (beyond: CLUSTER_EBUSY, 451), and of the
 * next write while one is in flight (beyond: the core's readies wait). */
#define CRAFT_PENDING_MAX_BYTES ((size_t)256 << 20)
#define CRAFT_NEXT_MAX_BYTES ((size_t)256 << 20)
/* Readies handled per run before yielding to the loop (the run is scheduled again). */
#define CRAFT_RUN_ROUNDS 64
/* Bytes of one log line. */
#define CRAFT_LOG_LINE_MAX 1024
/* Members that left remembered (oldest forgotten first). */
#define CRAFT_TOMBS 16
/* raft_meta keys: this data_dir's identity (written before anything else), the bootstrap. */
#define CRAFT_META_IDENT "raft_ident"
#define CRAFT_META_BOOT "raft_boot"
/* Frame kinds of discovery (craft_boot.c): Hello, HelloReply, Rejoin. */
#define CRAFT_KIND_HELLO 7u
#define CRAFT_KIND_HELLO_REPLY 8u
#define CRAFT_KIND_REJOIN 9u
/* A Rejoin is forwarded towards the leader at most this many times. */
#define CRAFT_REJOIN_HOPS 2u
/* Bytes of a packed BootRecord, HelloReply (with one), Hello, Rejoin. */
#define CRAFT_BOOTREC_MAX (64u + CLUSTER_MAX_PEERS * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 32u))
#define CRAFT_HELLO_MAX (2u * CRAFT_BOOTREC_MAX + 2u * CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 128u)

/* A forwarded proposal's header (CRAFT_KIND_PROPOSE_BY): the leader's stamp the origin last
 * had, the milliseconds the origin still waited when it sent it. */
#define CRAFT_FWD_HDR 16u
/* Forwards dropped as expired are logged at most this often. */
#define CRAFT_EXPIRED_LOG_MS 10000u

struct craft_prop {
	struct craft_prop *next, *prev; /* pending list, in seq order */
	struct craft_prop *hnext;	/* hash chain by seq */
	uint64_t seq;
	cluster_propose_cb cb;
	void *arg;
	uint64_t deadline; /* io.now_ms */
	uint64_t sent_ms;  /* last submission (propose or forward) */
	int status;
	size_t len;
	/* a forward's header, written before each send (CRAFT_KIND_PROPOSE_BY), then data */
	unsigned char fwd_hdr[CRAFT_FWD_HDR];
	unsigned char data[]; /* packed, tagged Relay__Command */
};
_Static_assert(offsetof(struct craft_prop, data) ==
		   offsetof(struct craft_prop, fwd_hdr) + CRAFT_FWD_HDR,
	       "a forward is sent as fwd_hdr and data in one piece");

struct craft_list {
	struct craft_prop *head, *tail;
};

/* One entry of an address book carried with a snapshot (Relay__Peer without `local`). */
struct craft_book_ent {
	char node[CLUSTER_ID_MAX + 1];
	char addr[CLUSTER_ADDR_MAX + 1];
	uint8_t state;	 /* Relay__PeerState; PEER_LEFT: a tombstone */
	uint8_t pending; /* incarnation not known yet */
	uint64_t inc;	 /* incarnation */
	uint64_t prev;	 /* the incarnation it replaced (0: none) */
	uint64_t since;	 /* index of the Peer command that set it */
};

/* An address book as some view or snapshot holds it (members, then tombstones); n 0: none. */
struct craft_book {
	size_t n;
	struct craft_book_ent e[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
};

/* A member that left: remembered so that a late duplicate of an older Peer command for it is a
 * no-op (its expectation no longer holds). */
struct craft_tomb {
	char node[CLUSTER_ID_MAX + 1];
	uint64_t since; /* index of the PEER_LEFT */
};

/* A consistent view of this node's store, digested; fetch sessions stream from it. */
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
	uint64_t deadline;		      /* io.now_ms an answer is due; 0 none */
	uint64_t next_at;		      /* io.now_ms to send the next request */
	uint64_t t0;			      /* io.now_ms at the start */
};

struct craft {
	struct craft_io io;    /* the edge (copied) */
	struct store *store;   /* borrowed */
	struct queue_fsm *fsm; /* owned */
	struct raft *raft;     /* owned */
	/* the address book (cluster.h "Membership"), this node included; parallel arrays, moved
	 * together by craft__book_move */
	struct cluster_peer peers[CLUSTER_MAX_PEERS];
	int64_t last_contact[CLUSTER_MAX_PEERS]; /* io.now_ms of the last frame; -1 never */
	uint8_t pstate[CLUSTER_MAX_PEERS];	 /* Relay__PeerState */
	uint8_t plocal[CLUSTER_MAX_PEERS];	 /* known from config `peers`, not from the log */
	uint64_t pprop_ms[CLUSTER_MAX_PEERS];	 /* leader: last proposal about it; 0 never */
	size_t n_peers;
	size_t self;
	int dialing; /* the book is dialed: members added later are dialed at once */
	uint64_t pinc[CLUSTER_MAX_PEERS];    /* incarnation (peers[i].id derives from it) */
	uint8_t ppending[CLUSTER_MAX_PEERS]; /* incarnation not known yet (id 0) */
	uint64_t pprev[CLUSTER_MAX_PEERS];   /* the incarnation it replaced (0: none) */
	/* the index of the view this node last served it a chunk of, and when (0: none): it
	 * continues from that index once its fetch is done (craft__retain) */
	uint64_t pserved[CLUSTER_MAX_PEERS], pserved_ms[CLUSTER_MAX_PEERS];
	uint64_t psince[CLUSTER_MAX_PEERS];	/* index of the Peer command that set it */
	uint64_t pheard_inc[CLUSTER_MAX_PEERS]; /* the incarnation its frames carry (0: none) */
	uint64_t pheard_id[CLUSTER_MAX_PEERS];	/* the Raft id it derives (0: none heard) */
	uint64_t pstamp[CLUSTER_MAX_PEERS];	/* stamp of its latest Raft message (0: none) */
	uint64_t expired_log_ms;		/* forwards-expired last logged (io.now_ms) */
	uint64_t refused_log_ms;		/* renew-refused last logged (io.now_ms) */
	struct craft_tomb tomb[CRAFT_TOMBS];	/* members that left, oldest first */
	size_t n_tomb;
	int join;			 /* started outside config `peers`: joins a cluster */
	int auto_join;			 /* craft_config.auto_join */
	uint64_t aj_prop_ms;		 /* last Peer proposed for a stranger (auto_join) */
	struct raft_conf conf_committed; /* the latest configuration applied here */
	uint64_t conf_index;		 /* its entry's index (0: from the core's state) */
	uint64_t id, boot, next_seq;
	uint64_t inc;		 /* this data_dir's incarnation (0: written before incarnations) */
	uint64_t cluster_id;	 /* 0: none known yet */
	struct raft_config rcfg; /* the core's configuration (a bootstrap makes a new core) */
	struct craft_boot {
		int phase; /* enum craft_boot_phase */
		uint64_t next_hello_ms, next_rejoin_ms, log_ms;
		uint64_t peers_digest; /* of the config `peers` (names), sorted */
		/* the latest answer of each book slot: */
		uint8_t answered[CLUSTER_MAX_PEERS], member[CLUSTER_MAX_PEERS];
		uint8_t offers_me[CLUSTER_MAX_PEERS], same_peers[CLUSTER_MAX_PEERS];
		uint64_t cid[CLUSTER_MAX_PEERS];
		char leader[CLUSTER_ID_MAX + 1]; /* a leader some member named */
		int have_rec;			 /* this node's bootstrap record: */
		uint64_t rec_cid;
		struct craft_book rec;	 /* the initial members (node, addr, incarnation) */
		struct craft_book offer; /* an offer received (have_offer) */
		uint64_t offer_cid;
		int have_offer;
	} bt;

	unsigned max_pending, heartbeat_ms, election_ms, fail_ms, retry_ms, snapshot_entries;
	uint64_t retain_silent_ms; /* CRAFT_RETAIN_SILENT_ELECTIONS election timeouts */
	size_t snap_chunk_bytes;   /* CRAFT_SNAP_CHUNK_BYTES, or the config's */
	unsigned retain_entries;   /* CRAFT_RETAIN_ENTRIES, or the config's */
	int snapshot_spread;	   /* craft_config.snapshot_spread (craft__snap_draw) */

	/* proposals not completed: list in seq order, hash by seq; unsent: first not submitted */
	struct craft_list pending;
	struct craft_prop *unsent;
	size_t npending;
	struct craft_prop **buckets;
	size_t nbuckets; /* power of two */

	int writing, write_sync;
	uint64_t write_seq, write_applied, write_bytes;
	struct store_batch wbatch;     /* the write in flight: its WAL part */
	struct store_batch wstate;     /* the write in flight: its NOWAL part (store.h) */
	struct store_batch next;       /* the next write: Raft state (hard state, log, book) */
	struct store_batch next_state; /* the next write: queue state, applied index, compaction */
	int next_sync;
	uint64_t next_seq_persist, next_bytes;
	int retry_write; /* a write failed: retry at the next tick */

	uint64_t synced_term, synced_vote; /* hard state in the batches so far */
	uint64_t log_last;		   /* highest log index put in a batch */
	uint64_t applied;		   /* applied to the state machine (memory) */
	uint64_t durable_applied;	   /* applied state written */
	/* applied state on disk through the WAL or a load: a crash keeps it */
	uint64_t synced_applied;
	uint64_t snap_index;	/* latest snapshot (ours or installed) */
	uint64_t snap_tried;	/* applied index at the last snapshot attempt */
	uint64_t snap_every;	/* applied entries from there to the next (craft__snap_draw) */
	uint64_t applied_bytes; /* entry bytes applied since then */
	uint64_t log_bytes;	/* entry bytes applied since the last compaction */
	int retaining;		/* a compaction is put off (craft__retain) */
	uint64_t retain_log_ms; /* its last log line */
	uint64_t handed;	/* highest committed index the core handed out */
	size_t pending_bytes;	/* bytes of the pending proposals */

	struct craft_view *view; /* the newest digested view (a reference), or NULL */
	struct craft_view *prep; /* the view being digested (owned until done) */
	int prep_compact;	 /* compact the log to it when digested */
	int digesting;
	struct craft_serve serve[CRAFT_SNAP_SERVE_MAX];
	struct craft_fetch fetch;

	struct raft_ready held; /* a ready with a snapshot, waiting for the write in flight */
	int have_held;
	uint64_t install_seq;
	int install_ack; /* an install that fetched nothing: acknowledge it once persisted */

	uint64_t lead;
	enum raft_role role;
	uint64_t term;
	int failed; /* sticky CLUSTER_E*: apply stopped */
	int closing;
	uint64_t foreign_log_ms; /* last event=foreign-cluster line */
	/* the connection to the leader closed (craft_peer_down): campaign at fast_campaign_ms,
	   again each tick until fast_campaign_end_ms while no leader is known */
	uint64_t fast_campaign_ms, fast_campaign_end_ms;
	uint64_t member_wait_log_ms; /* last event=member-remove-wait (craft_member.c) */
	uint64_t ask_book_ms;	     /* last Hello sent for an unknown sender (craft__ask_book) */
	uint64_t cid_prop_ms;	     /* leader: last ClusterId proposal (legacy clusters) */
	uint64_t orphan_prop_ms;     /* leader: last removal of a replaced incarnation */

	struct cluster_stats stats;
	struct cluster_status counters; /* only the counters are kept here */
};

/* ---- craft.c ---- */
void craft__log(struct craft *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t craft__now(struct craft *c);
void craft__schedule(struct craft *c);
void craft__out(struct craft *c, size_t pi, uint32_t kind, const void *data, size_t len);
/* 1 when a forwarded proposal's header (CRAFT_FWD_HDR bytes, from member pi) says its origin
 * may have given up on it: dropped and counted (craft.c). */
int craft__forward_expired(struct craft *c, int pi, const void *hdr);
/* 1 when cmd, a forwarded proposal, is a Renew from a node out of conf: refused, counted. */
int craft__renew_refused(struct craft *c, const struct raft_conf *conf, const Relay__Command *cmd);
void craft__start_write(struct craft *c);
void craft__apply_entry(struct craft *c, const struct raft_entry *e, struct craft_list *done);
void craft__complete(struct craft *c, struct craft_list *done);
int craft__persist(struct craft *c, const struct raft_ready *rd);
int craft__propose_peer(struct craft *c, const char *node, const char *addr, unsigned state,
			cluster_propose_cb cb, void *arg);
void craft__noop_cb(void *arg, int status);
const char *craft__role_name(enum raft_role r);

/* ---- craft_book.c ---- */
int craft__peer_by_id(const struct craft *c, uint64_t id);
int craft__peer_by_name(const struct craft *c, const char *name);
const char *craft__peer_state_name(unsigned st);
int craft__id_addr_ok(const char *name, const char *addr);
int craft__peer_validate(const Relay__Peer *p);
int craft__validate(const Relay__Command *cmd);
int craft__book_add(struct craft *c, const char *name, const char *addr, unsigned state, int local,
		    uint64_t inc, int pending);
void craft__book_set_inc(struct craft *c, size_t i, uint64_t inc);
uint64_t craft__member_since(const struct craft *c, const char *node);
int craft__propose_peer_x(struct craft *c, const char *node, const char *addr, unsigned state,
			  uint64_t expect_since, uint64_t inc, int pending, int local,
			  cluster_propose_cb cb, void *arg);
void craft__book_heard(struct craft *c, size_t i, uint64_t inc);
void craft__book_del(struct craft *c, size_t i);
void craft__book_dial_all(struct craft *c);
int craft__book_put(struct craft *c, struct store_batch *b);
int craft__book_load(struct craft *c, const char *self);
int craft__apply_peer(struct craft *c, uint64_t index, const Relay__Peer *p);
int craft__book_from_proto(struct craft_book *bk, Relay__Peer *const *peers, size_t n);
size_t craft__book_to_proto(const struct craft_book *bk,
			    Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS],
			    Relay__Peer *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS]);
void craft__view_book(struct craft *c, struct craft_view *vw);
int craft__book_replace(struct craft *c, const struct craft_book *bk, struct store_batch *b);

/* ---- craft_meta.c ---- */
int craft__hs_put(struct store_batch *b, const struct raft_hard_state *hs);
int craft__snap_put(struct store_batch *b, const struct raft_snap_meta *m, const void *data,
		    size_t len);
int craft__marker_put(struct store_batch *b, uint64_t min_index, const char *node);
int craft__hs_get(struct store *s, struct raft_hard_state *hs);
int craft__wipe_queue(struct store_batch *b);
int craft__load(struct craft *c);
int craft__install_recover(struct craft *c);
extern const enum store_cf craft__snap_cfs[CRAFT_SNAP_NCFS];
int craft__snap_ci(uint32_t cf);

/* ---- craft_snap.c ---- */
void craft__view_unref(struct craft_view *vw);
int craft__view_prepare(struct craft *c, int compact, uint64_t min_index);
void craft__maybe_snapshot(struct craft *c);
void craft__serve(struct craft *c, size_t pi, const void *data, size_t len);
void craft__serve_release(struct craft_serve *sv);
void craft__serve_expire(struct craft *c, uint64_t now);
/* 1 when a compaction now would drop entries a member still needs (within the bounds) */
int craft__retain(struct craft *c);
/* sets snap_every: snapshot_entries, less a random spread when snapshot_spread is on */
void craft__snap_draw(struct craft *c);

/* ---- craft_fetch.c ---- */
void craft__fetch_begin(struct craft *c, uint64_t min_index, const char *hint);
void craft__fetch_chunk(struct craft *c, size_t pi, const void *data, size_t len);
void craft__fetch_tick(struct craft *c, uint64_t now);
int craft__install(struct craft *c, const struct raft_ready *rd);

/* ---- craft_boot.c ---- */
enum craft_boot_phase {
	CRAFT_BOOT_DONE,     /* the node has Raft state (or a bootstrap to replay) */
	CRAFT_BOOT_DISCOVER, /* empty: asking the members of `peers` what they are */
	CRAFT_BOOT_REJOIN    /* empty, a cluster exists: asking its leader to take us in */
};
enum craft_boot_verdict { CRAFT_BOOT_WAIT, CRAFT_BOOT_SEED, CRAFT_BOOT_ADOPT, CRAFT_BOOT_JOIN };
/* What discovery knows of one member of `peers` (the decision's input). */
struct craft_boot_peer {
	const char *node;
	int self;	/* this node */
	int answered;	/* a HelloReply came */
	int member;	/* it has Raft state */
	int offers_me;	/* its bootstrap record holds this node at its incarnation */
	int same_peers; /* its `peers` names the same members */
};
int craft__boot_decide(const struct craft_boot_peer *p, size_t n, int join, size_t *who);
int craft__ident_load(struct craft *c, int has_raft_state);
int craft__bootrec_load(struct craft *c);
int craft__boot_replay(struct craft *c);
void craft__boot_tick(struct craft *c, uint64_t now);
void craft__recv_hello(struct craft *c, size_t pi, const void *data, size_t len);
void craft__recv_hello_reply(struct craft *c, size_t pi, const void *data, size_t len);
/* A frame of this cluster came from a node the address book lacks (a member added by log
 * entries this node has not applied yet: if it leads, this node would never catch up): ask the
 * known peers for the members (Hello), at most once per retry_ms. */
void craft__ask_book(struct craft *c, const char *from);
void craft__recv_rejoin(struct craft *c, size_t pi, const void *data, size_t len);
/* stranger: the sender is not in the book (auto_join): only a Rejoin naming it, not forwarded */
void craft__recv_rejoin_from(struct craft *c, const char *stranger, const void *data, size_t len);
int craft__apply_cluster_id(struct craft *c, uint64_t index, const Relay__ClusterId *cl);
uint64_t craft__peers_digest(const struct craft *c);

/* ---- craft_member.c ---- */
void craft__reconcile(struct craft *c);
void craft__recv_transfer(struct craft *c, const void *data, size_t len);

#endif
