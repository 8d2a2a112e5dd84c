/*
 * craft.h - the decisions of the replicated host, as a pure part: "craft" hosts the Raft core
 * (cluster/raft.h) and the queue state machine (cluster/queue_fsm.h) and decides what goes in
 * which write, what is sent to whom, when to snapshot, how a streamed snapshot is fetched and
 * served, how the address book and the configuration follow the log.  It owns no socket, no
 * thread, no timer and no clock: cluster/cluster_raft.c (libuv, the NNG transport, RocksDB writes
 * on a worker thread) and the simulator (tests/sim/raft_sim.c, simulated time and disks) are its
 * two edges.  See cluster_raft.c for the whole design; this header is the seam.
 *
 * Inputs (all on one thread, the edge's): craft_run() once per loop turn after io.schedule()
 * asked for it, craft_tick() every heartbeat_ms, craft_recv() / craft_recv_raft() for each peer
 * message, craft_write_done() when the write started by io.write_start() completed,
 * craft_digest_done() when the digest started by io.digest_start() completed, and the calls of
 * the node (craft_propose, membership, transfer, status).
 *
 * Outputs go through struct craft_io: start one ordered write (at most one in flight), write a
 * batch now (snapshot install and fetch; a synchronous store_write on the edge's thread), send a
 * frame or a Raft message to a peer (lossy), dial or forget a peer, digest a store view off the
 * thread, ask for a run.  Reads of the store (open, views, the log during an install) go through
 * the store interface (storage/store.h), whose in-memory twin the simulator uses.
 *
 * Ownership: craft borrows the store and the io table's arg; the edge frees the store after
 * craft_free().  Batches passed to write_start stay craft's and unchanged until
 * craft_write_done().
 */
#ifndef RELAY_CRAFT_H
#define RELAY_CRAFT_H

#include <stddef.h>
#include <stdint.h>

#include "cluster_types.h"
#include "queue_fsm.h"
#include "raft.h"
#include "relay.pb-c.h"
#include "store.h"

/* Frame kinds of the host's peer messages (TRANSPORT_KIND_RAFT, 1, carries a Raft message):
 * a forwarded proposal (a packed, tagged Relay__Command), a batch of several messages (the edge
 * packs it: [kind u8][length u32 BE][payload] items), a forwarded leadership transfer
 * ("target\nfrom_leader"), a SnapshotFetch and a SnapshotChunk. */
#define CRAFT_KIND_PROPOSE 2u
/* A forwarded proposal with its age bound: [leader stamp u64 BE][budget ms u64 BE][command]
 * (craft.c craft__submit); kind 2 is that of nodes before it, taken as it was. */
#define CRAFT_KIND_PROPOSE_BY 11u
#define CRAFT_KIND_BATCH 3u
#define CRAFT_KIND_TRANSFER 4u
#define CRAFT_KIND_SNAP_FETCH 5u
#define CRAFT_KIND_SNAP_CHUNK 6u
/* The frame every message travels in (the edge's envelope): [version u8 = CRAFT_ENV_VERSION]
 * [cluster id u64 BE][the sender's incarnation u64 BE], then items as in a batch.  craft decides
 * with craft_recv_env whether to take the items. */
#define CRAFT_KIND_ENV 10u
#define CRAFT_ENV_VERSION 1u
#define CRAFT_ENV_HDR 17u

/* The edge, as craft sees it.  Every function is called on the edge's thread. */
struct craft_io {
	void *arg;
	/* ms of a clock that never goes back (the edge's loop time) */
	uint64_t (*now_ms)(void *arg);
	/* unix time in ms, only for the at_ms fields of commands */
	uint64_t (*wall_ms)(void *arg);
	/* a random nonzero 64-bit value */
	uint64_t (*random64)(void *arg);
	/* call craft_run() soon (after the current callback; once per loop turn is enough) */
	void (*schedule)(void *arg);
	/* one log line (no newline); NULL: cluster__log */
	void (*log)(void *arg, const char *line);
	/* peers: dial addr for name (0, or an error that is logged); forget name */
	int (*peer_add)(void *arg, const char *name, const char *addr);
	void (*peer_del)(void *arg, const char *name);
	/* 1 when a connection to name is up, 0 when not (or unknown) */
	int (*peer_connected)(void *arg, const char *name);
	/* queue a copy of one frame / Raft message for name; 0 or <0 (dropped: Raft tolerates it)
	 */
	int (*send)(void *arg, const char *name, uint32_t kind, const void *data, size_t len);
	int (*send_raft)(void *arg, const char *name, const struct raft_msg *m);
	/* start writing wal (the Raft state: hard state, log, book) atomically with the WAL, synced
	 * when sync, then state (the state machine's writes, its applied index and the log
	 * deletions of compaction) atomically with STORE_WRITE_NOWAL; either may be empty; both
	 * borrowed until craft_write_done, which reports the first failure.  0, or <0 when it could
	 * not start (then craft_write_done is NOT called: craft retries) */
	int (*write_start)(void *arg, const struct store_batch *wal,
			   const struct store_batch *state, int sync);
	/* write b now, atomically, as mode says (STORE_WRITE_*); 0 or a STORE_E* code */
	int (*write_now)(void *arg, const struct store_batch *b, int mode);
	/* digest the cfs of view v into *out (both borrowed until craft_digest_done); 0 or <0 when
	 * it could not start (then craft_digest_done is NOT called) */
	int (*digest_start)(void *arg, struct store_view *v, const enum store_cf *cfs, size_t n,
			    struct store_digest *out);
	/* observer hooks (NULL in relayd): an entry is about to be applied, and was applied with
	 * queue_apply's result rc (0 for entries the queue does not see) */
	void (*apply_before)(void *arg, const struct raft_entry *e);
	void (*apply_after)(void *arg, const struct raft_entry *e, int rc);
	/* the queue state machine was (re)loaded from the store at applied index index (open, a
	 * completed snapshot install) */
	void (*state_loaded)(void *arg, uint64_t index);
};

struct craft_config {
	const char *node_id;	    /* borrowed */
	const char *cluster_listen; /* borrowed */
	const char *const *peers;   /* borrowed; "id=host:port" (cluster.h) */
	size_t n_peers;
	unsigned max_pending, heartbeat_ms, election_ms, fail_ms, retry_ms, snapshot_entries;
	/* Raft core settings (0 / false: relayd's: pre-vote and check-quorum on) */
	bool no_pre_vote, no_check_quorum;
	unsigned max_msg_bytes, max_inflight;
	size_t snap_chunk_bytes; /* bytes per SnapshotChunk (0: CRAFT_SNAP_CHUNK_BYTES) */
	unsigned retain_entries; /* log entries kept for a member (0: CRAFT_RETAIN_ENTRIES) */
	/* 1: each interval between snapshots is snapshot_entries less up to a quarter, different
	 * on each node, so the nodes do not compact at the same instant (relayd); 0: exactly
	 * snapshot_entries */
	int snapshot_spread;
	/* auto_join: a node outside the book that asks to join (a Rejoin naming itself, from a
	 * sender the transport authenticated by the cluster CA) is added by the leader; a node
	 * outside its own `peers` asks so by itself.  Needs cluster TLS (the edge checks). */
	bool auto_join;
	/* where the other nodes reach this one (host:port; NULL/"": cluster_listen): what a node
	 * outside its own `peers` announces when it asks to join */
	const char *cluster_advertise;
};

struct craft;

/* Opens the host over store (borrowed, already open): loads the address book, the queue and
 * the Raft state, or bootstraps.  Peers are dialed through io during the call.  0 or a
 * CLUSTER_E* code (nothing left to free). */
int craft_open(const struct craft_config *cfg, struct store *store, const struct craft_io *io,
	       struct craft **out);
/* Fails the pending proposals (CLUSTER_ECLOSED), writes what applied state is queued (write_now,
 * synced) and frees everything but the store.  Only when craft_busy() is 0. */
void craft_free(struct craft *c);
/* The process died (simulator): frees everything but the store, writes nothing, completes no
 * proposal.  Writes and digests in flight are the edge's to forget. */
void craft_abandon(struct craft *c);
/* 1 while a write or a digest started through io has not completed. */
int craft_busy(const struct craft *c);
/* From now on craft starts nothing (no write, no digest, no proposal). */
void craft_closing(struct craft *c);

void craft_run(struct craft *c);
void craft_tick(struct craft *c);
/* A frame from peer `from` (a name; data borrowed).  TRANSPORT_KIND_RAFT frames come through
 * craft_recv_raft instead, already decoded (m NULL: it did not decode; counted). */
void craft_recv(struct craft *c, const char *from, uint32_t kind, const void *data, size_t len);
void craft_recv_raft(struct craft *c, const char *from, const struct raft_msg *m);
/* The envelope of a frame from `from` (the edge's frame header): 0 to take its items, -1 to drop
 * the frame (another cluster's, counted and logged; or an unknown sender), CRAFT_ENV_STRANGER:
 * an unknown sender while auto_join is on: only its items of kind CRAFT_KIND_REJOIN go on, to
 * craft_recv_stranger. */
#define CRAFT_ENV_STRANGER 1
int craft_recv_env(struct craft *c, const char *from, uint64_t cluster_id, uint64_t incarnation);
/* An item of a stranger's frame (see craft_recv_env): a Rejoin naming the sender itself is taken
 * as a request to join (auto_join); anything else is dropped and counted. */
void craft_recv_stranger(struct craft *c, const char *from, uint32_t kind, const void *data,
			 size_t len);
/* What this node's frames carry in their envelope. */
void craft_envelope(const struct craft *c, uint64_t *cluster_id, uint64_t *incarnation);
void craft_write_done(struct craft *c, int rv);
/* The edge's connection to peer name closed and no other is up (transport_on_peer_down). */
void craft_peer_down(struct craft *c, const char *name);
void craft_digest_done(struct craft *c, int rv);
/* A frame could not be sent or received whole (the edge's own drops): counted. */
void craft_count_drop(struct craft *c, unsigned n);

/* cluster.h's calls, same contracts.  *seq (may be NULL): the origin_seq of the proposal. */
int craft_propose(struct craft *c, const Relay__Command *cmd, cluster_propose_cb cb, void *arg,
		  uint64_t *seq);
int craft_member_add(struct craft *c, const char *id, const char *addr, cluster_propose_cb cb,
		     void *arg);
int craft_member_remove(struct craft *c, const char *id, cluster_propose_cb cb, void *arg);
int craft_transfer_leader(struct craft *c, const char *target, const char *from_leader);
void craft_stats(struct craft *c, struct cluster_stats *st);
void craft_status(struct craft *c, struct cluster_status *st);

/* Read-only access for the edge and the simulator. */
struct queue_fsm *craft_queue(struct craft *c);
struct raft *craft_raft(struct craft *c);
uint64_t craft_id(const struct craft *c);      /* this node's Raft id */
uint64_t craft_boot(const struct craft *c);    /* origin_boot of its proposals */
uint64_t craft_applied(const struct craft *c); /* applied to the queue (memory) */
/* The commit index in a store's Raft hard state (what a node knew committed when it last wrote
 * it); STORE_ENOTFOUND for a store without one (a single node's). */
int craft_stored_commit(struct store *s, uint64_t *commit);
int craft_fetching(const struct craft *c); /* a snapshot's key/values are fetched */
int craft_failed(const struct craft *c);   /* sticky CLUSTER_E*: apply stopped */

/* Test hook (simulator): take a snapshot now if anything was applied since the last one. */
void craft_snapshot_now(struct craft *c);

#endif
