/*
 * cluster.h - the node-facing interface to the replicated queue.
 *
 * Contract: relayd proposes Commands (an Accept for each message taken over SMTP); the cluster
 * appends them to the log, makes them durable, commits them and applies them to the queue state
 * machine (cluster/queue_fsm.h), then calls the proposer back.  A callback with status 0 means
 * the command is fsynced in the log (G1: on a majority of voters; today a single voter) and
 * applied on this node, so the SMTP session may answer 250.
 *
 * Happy path (single node): cluster_propose packs the command and queues it; at the end of the
 * loop turn every queued proposal becomes one log append written with one synced RocksDB write
 * off the loop thread (group commit, at most one write in flight; proposals arriving meanwhile
 * wait for the next one).  When the write completes, the entries are committed and applied in
 * log order on the loop thread, then the callbacks run in the same order.
 *
 * Failure modes: a failed write gives every proposal of that batch cb(CLUSTER_EIO) and does not
 * advance the log; more than max_pending proposals waiting gives CLUSTER_EBUSY at once (the SMTP
 * session answers 451 and the client retries); cluster_close fails the proposals not yet written
 * with CLUSTER_ECLOSED.  Corrupt data on disk makes cluster_open fail with CLUSTER_ECORRUPT.
 *
 * Replicated mode (cluster_config.cluster_listen set and peers naming at least one other node;
 * cluster/cluster_raft.c): the same interface over the Raft core (cluster/raft.h) and the peer
 * transport (cluster/transport.h).  A proposal is tagged with (this node, its boot, a sequence
 * number) and handed to raft on the leader, or forwarded to the leader over the transport; the
 * callback runs when THIS node applies the committed entry carrying the tag: status 0 then
 * means fsynced on a majority of voters and applied here (G1).  With no leader the proposal
 * waits (counted in max_pending) and is forwarded when one appears; forwards are retried on a
 * leader change and after retry_ms, so an entry may commit twice: Accept is idempotent by queue
 * id and Outcomes are idempotent in the queue state machine (queue_fsm.h).  A proposal that has
 * not committed within propose_fail_ms gets cb(CLUSTER_ETIMEDOUT) (it may still commit later;
 * the client that got 451 retries, so at worst a duplicate, never a loss).
 *
 * Threads: every function here is called on the loop thread; callbacks run on the loop thread.
 */
#ifndef RELAY_CLUSTER_H
#define RELAY_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <uv.h>

#include "relay.pb-c.h"

/* Error codes and their strings: X(name, value, string). */
#define CLUSTER_ERRNO_MAP(X)                                                                       \
	X(CLUSTER_EIO, -1, "storage write or read failed")                                         \
	X(CLUSTER_EBUSY, -2, "too many proposals waiting for the disk")                            \
	X(CLUSTER_ECLOSED, -3, "cluster is closing or closed")                                     \
	X(CLUSTER_ECORRUPT, -4, "corrupt data in the store")                                       \
	X(CLUSTER_ENOMEM, -5, "out of memory")                                                     \
	X(CLUSTER_EINVAL, -6, "invalid argument or command")                                       \
	X(CLUSTER_ETOOBIG, -7, "command larger than the write batch bound")                        \
	X(CLUSTER_ENOTFOUND, -8, "no such message")                                                \
	X(CLUSTER_ETIMEDOUT, -9, "not committed in time (no leader or no quorum)")                 \
	X(CLUSTER_ENOLEADER, -10, "no leader known")                                               \
	X(CLUSTER_ESINGLE, -11, "a single node has no membership to change")                       \
	X(CLUSTER_EEXIST, -12, "already a member")                                                 \
	X(CLUSTER_ENOMEMBER, -13, "no such member")                                                \
	X(CLUSTER_EFULL, -14, "the cluster has its maximum number of members")                     \
	X(CLUSTER_EBADADDR, -15, "bad member id or address (want id and host:port)")

enum cluster_errno {
#define CLUSTER__ERRNO_ENUM(name, val, str) name = (val),
	CLUSTER_ERRNO_MAP(CLUSTER__ERRNO_ENUM)
#undef CLUSTER__ERRNO_ENUM
};

/* Defaults used when a config field is 0. */
#define CLUSTER_DEFAULT_MAX_PENDING 10000u
#define CLUSTER_DEFAULT_MAX_BATCH_BYTES ((size_t)8 << 20)

/* Replicated mode defaults. */
#define CLUSTER_DEFAULT_ELECTION_TIMEOUT_MS 1000u
#define CLUSTER_DEFAULT_HEARTBEAT_MS 100u
#define CLUSTER_DEFAULT_PROPOSE_FAIL_MS 60000u
#define CLUSTER_DEFAULT_SNAPSHOT_ENTRIES 8192u
#define CLUSTER_MAX_PEERS 16u /* members of one cluster (RAFT_MAX_NODES) */
#define CLUSTER_ID_MAX 63u    /* bytes in a node id */
#define CLUSTER_ADDR_MAX 255u /* bytes in a member's "host:port" */
/* Replicated mode: a Raft entry carries a whole Accept and is bounded by RAFT_ENTRY_MAX_BYTES
 * (132 MiB: room for a body of QUEUE_BODY_MAX plus its envelope), so a cluster accepts every
 * max_message_size the config allows (at most 100m); a bigger command gets CLUSTER_ETOOBIG.
 * Proposals waiting on one node are bounded in bytes too (cluster_raft.c,
 * CRAFT_PENDING_MAX_BYTES: beyond it CLUSTER_EBUSY). */

struct cluster_config {
	const char *node_id;	/* borrowed; this node's id (also the single voter) */
	const char *data_dir;	/* borrowed; created if missing; the RocksDB lives in data_dir/db */
	unsigned max_pending;	/* bound on proposals not yet committed (0: default); beyond it
				   cluster_propose returns CLUSTER_EBUSY */
	size_t max_batch_bytes; /* bound on the log bytes of one group-commit write (0: default);
				   a single command bigger than this gets CLUSTER_ETOOBIG */
	/* Replicated mode: all below zero/NULL keeps the single node above. */
	const char *cluster_listen; /* borrowed; "addr:port" for peer traffic; NULL/"": single */
	const char *const *peers;   /* borrowed; n_peers "id=host:port".  This node included:
				       a new cluster is bootstrapped with them as voters (fewer
				       than two: single node).  This node not among them (one or
				       more): it joins an existing cluster and waits for
				       cluster_member_add; the list only tells it whom to accept
				       messages from until the log says.  Once a node has state,
				       the membership stored with it wins over this list. */
	size_t n_peers;
	const char *cluster_ca;	  /* borrowed; PEM; all three or none (none: plain tcp, INSECURE) */
	const char *cluster_cert; /* borrowed */
	const char *cluster_key;  /* borrowed */
	unsigned election_timeout_ms; /* 0: default; randomized in [t, 2t) by raft */
	unsigned heartbeat_ms;	      /* 0: default; also the tick of the raft core */
	unsigned propose_fail_ms;     /* 0: default; a proposal not committed by then fails */
	unsigned retry_ms;	   /* 0: 2 x election timeout; re-forward an uncommitted proposal */
	unsigned snapshot_entries; /* 0: default; snapshot + compact after this many applied
				      entries */
};

struct cluster;

/*
 * Opens (creating if missing) the store in cfg->data_dir, rebuilds the in-memory queue index from
 * the queue records (metadata only: no body is read) and replays the log entries after the last
 * applied index.  On success *out is a cluster bound to loop; on failure returns <0 and *out is
 * untouched.  cfg is not kept.
 */
int cluster_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster **out);

/* status 0: committed (fsynced) and applied locally; <0: a CLUSTER_E* code. */
typedef void (*cluster_propose_cb)(void *arg, int status);

/*
 * Proposes cmd.  cmd is packed before this returns (not kept: the caller may free it).
 * Returns 0 and calls cb exactly once later on the loop thread (never from inside this call), or
 * returns <0 (CLUSTER_EBUSY, CLUSTER_ECLOSED, CLUSTER_EINVAL, CLUSTER_ETOOBIG, CLUSTER_ENOMEM,
 * CLUSTER_EIO when the store has failed) and never calls cb.
 */
int cluster_propose(struct cluster *c, const Relay__Command *cmd, cluster_propose_cb cb, void *arg);

/*
 * Starts closing: later cluster_propose calls return CLUSTER_ECLOSED; the write in flight (if
 * any) completes and its proposals get their normal status; proposals not yet written get
 * cb(CLUSTER_ECLOSED); the applied state is written; everything is freed; then done(arg) runs on
 * the loop (never inside this call).  done may be NULL.  c must not be used after this call.
 */
void cluster_close(struct cluster *c, void (*done)(void *arg), void *arg);

/* The string for a CLUSTER_E* code (or "unknown error"); never NULL. */
const char *cluster_strerror(int code);

/*
 * Offline and read-only (relayd --dump-queue): prints one line per queued message to out, in
 * apply order: queue id, received time, size, sender, and each recipient with its state,
 * attempts, next attempt and last reply.  json=1 prints one JSON object per line instead.  The
 * log entries not yet applied (Accepts, Outcomes, Deletes) are applied to a scratch copy first,
 * so the dump shows what the next open will load; messages they touched are marked
 * pending_apply.  A damaged queue record: the records are listed as stored, then
 * CLUSTER_ECORRUPT.  Returns 0 or a CLUSTER_E* code.
 */
int cluster_dump_queue(const char *data_dir, FILE *out, int json);

struct cluster_stats {
	uint64_t proposals;	   /* accepted by cluster_propose */
	uint64_t rejected;	   /* refused synchronously (busy, invalid, too big, closed) */
	uint64_t commits;	   /* entries committed and applied */
	uint64_t batches;	   /* group-commit log writes that succeeded */
	uint64_t fsyncs;	   /* synced writes issued */
	uint64_t bytes;		   /* log bytes written */
	uint64_t failures;	   /* failed writes */
	uint64_t failed_proposals; /* proposals completed with an error */
	uint64_t applied_index;	   /* last log index applied to the queue state machine */
	uint64_t last_index;	   /* last log index persisted */
	uint64_t pending;	   /* proposals not yet committed */
	uint64_t messages;	   /* messages in the queue */
	uint64_t rcpts_queued;	   /* recipients by state */
	uint64_t rcpts_delivered;
	uint64_t rcpts_failed;
	uint64_t rcpts_deleted;
	/* applied since open (entries replayed at open included), counted in recipients */
	uint64_t outcomes_delivered; /* recipients a committed Outcome made delivered */
	uint64_t outcomes_deferred;  /* recipients a committed Outcome deferred */
	uint64_t outcomes_failed;    /* recipients a committed Outcome made failed */
	uint64_t deletes;	     /* recipients an operator's Delete made deleted */
	uint64_t messages_deleted;   /* messages removed: every recipient final */
	uint64_t dsns;		     /* DSN messages enqueued with an Outcome */
};

void cluster_stats(struct cluster *c, struct cluster_stats *st);

/* Consensus status (relayctl status, /metrics, /readyz).  A single node reports itself as the
 * leader of a 1-voter cluster in term 1. */
struct cluster_peer_status {
	char name[CLUSTER_ID_MAX + 1];
	char addr[CLUSTER_ADDR_MAX + 1]; /* its cluster_listen as the address book has it */
	const char *membership;	 /* static: "voter", "learner", "joining" (wanted, not yet in the
				    Raft configuration), "leaving", "removed" (this node, taken
				    out of the cluster) */
	uint64_t id;		 /* raft id (FNV-1a of the name) */
	int self;		 /* this node */
	int connected;		 /* a transport connection to it is up (self: 1) */
	uint64_t match;		 /* leader only: highest index known replicated on it */
	uint64_t lag;		 /* leader only: last index - match */
	int64_t last_contact_ms; /* ms since a message from it arrived; -1 never (self: 0) */
};

struct cluster_status {
	int replicated;	  /* 0: single node */
	const char *role; /* "leader", "follower", "candidate", "precandidate" (static) */
	uint64_t term;
	char leader[CLUSTER_ID_MAX + 1]; /* "" when none known */
	uint64_t leader_id;
	uint64_t commit_index;
	uint64_t applied_index;
	uint64_t last_index;
	uint64_t snapshot_index;
	uint64_t leader_changes; /* times the known leader changed since open */
	uint64_t forwarded;	 /* proposals sent to a leader (retries included) */
	uint64_t forward_retries;
	uint64_t forwards_received;	  /* proposals other nodes forwarded to us */
	uint64_t timed_out;		  /* proposals failed with CLUSTER_ETIMEDOUT */
	uint64_t snapshots;		  /* snapshots taken */
	uint64_t snapshots_installed;	  /* snapshots received from a leader and fetched */
	int snapshot_installing;	  /* 1 while a snapshot's key/values are being fetched */
	uint64_t snapshot_fetches;	  /* fetch sessions started (a restart counts again) */
	uint64_t snapshot_fetch_bytes;	  /* key + value bytes received by fetches */
	uint64_t snapshot_fetch_failures; /* timeouts, refused or bad chunks, failed writes */
	uint64_t snapshot_serves;	  /* fetch sessions served to other nodes */
	uint64_t snapshot_served_bytes;	  /* key + value bytes sent to them */
	uint64_t raft_dropped;		  /* raft outbox overflow + transport drops */
	unsigned n_peers;
	struct cluster_peer_status peers[CLUSTER_MAX_PEERS];
};

void cluster_status(struct cluster *c, struct cluster_status *st);

/*
 * ---- Membership (replicated mode) ----
 *
 * The cluster keeps an address book (node id -> cluster_listen address, state) in its
 * replicated state: changed only by committed Peer commands (proto/relay.proto), stored with
 * the applied index and carried in snapshots, so it survives restarts (config `peers` only
 * bootstraps) and reaches nodes that join later.  Every node dials every member of the book.
 * The leader, whoever it is, steers the Raft configuration towards the book, one change at a
 * time (Raft thesis 4.1, 4.2.1): a PEER_ACTIVE member not in the configuration is added as a
 * learner; a learner whose log has reached the commit index is promoted to voter; a
 * PEER_LEAVING member is removed (the leader itself included: it steps down once that
 * commits); once its removal is committed the leader proposes Member{node, MEMBER_REMOVED} (its
 * deliveries move) and Peer{node, PEER_LEFT} (every node forgets its address).  Because the
 * work follows the log, a leader change in the middle resumes it, and these calls work on any
 * node (a follower's proposal is forwarded to the leader like any other).
 *
 * cluster_member_add proposes Peer{id, addr, PEER_ACTIVE}; cluster_member_remove proposes
 * Peer{id, PEER_LEAVING}.  cb(arg, 0) once that command is committed and applied here (the
 * change itself then proceeds as above; follow it with cluster_status).  Synchronous errors
 * (cb never called): CLUSTER_ESINGLE, CLUSTER_EBADADDR, CLUSTER_EEXIST (add: already in the
 * book and not leaving), CLUSTER_ENOMEMBER (remove: not in the book), CLUSTER_EFULL, and the
 * cluster_propose codes.
 */
int cluster_member_add(struct cluster *c, const char *id, const char *addr, cluster_propose_cb cb,
		       void *arg);
int cluster_member_remove(struct cluster *c, const char *id, cluster_propose_cb cb, void *arg);

/*
 * Leadership transfer (Raft thesis 3.10) to target (NULL or "": the other voter whose log is
 * the most caught up, chosen by the leader).  On the leader it starts at once; on a follower
 * the request is forwarded to the leader over the transport (lossy: the caller repeats it if
 * leadership has not moved).  from_leader (NULL or "": any) makes it conditional: nothing
 * happens unless that node is still the leader, so a repeated request never moves leadership
 * twice.  Returns 0 when started or forwarded (or nothing to do), CLUSTER_ESINGLE,
 * CLUSTER_ENOLEADER, CLUSTER_ENOMEMBER (target not a voter), CLUSTER_EINVAL (target is the
 * leader itself, or no other voter).  Completion shows in cluster_status (leader).
 */
int cluster_transfer_leader(struct cluster *c, const char *target, const char *from_leader);

/* The queue state machine of this node, for the delivery scheduler (read-only use; valid until
 * cluster_close).  See cluster/queue_fsm.h for lookup, iteration and reading a body. */
struct queue_fsm *cluster_queue(struct cluster *c);

#endif
