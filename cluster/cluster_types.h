/*
 * cluster_types.h - the values of the cluster interface (cluster.h): error codes and their
 * strings, limits and defaults, the configuration, the proposal callback, statistics and status.
 * A leaf: the single node (cluster.c), the replicated host (cluster_raft.c) and the address book
 * (peers.c) share these without depending on each other.
 */
#ifndef RELAY_CLUSTER_TYPES_H
#define RELAY_CLUSTER_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
	X(CLUSTER_EBADADDR, -15, "bad member id or address (want id and host:port)")               \
	X(CLUSTER_EQUOTA, -16, "hourly message quota reached (the Accept was refused)")            \
	X(CLUSTER_ESTALE, -17, "the member changed since the command was proposed; look and retry")

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
/* Raft's in-memory log holds at most CLUSTER_LOG_ENTRIES entries (beyond: proposals refused), and
 * a snapshot is taken at most CLUSTER_MAX_SNAPSHOT_ENTRIES applied entries after the last one, so
 * the log is compacted long before it fills.  A larger snapshot_entries, once allowed up to
 * 1,000,000, stopped a cluster for good at 65,536 entries: the log full, nothing compacted. */
#define CLUSTER_LOG_ENTRIES 65536u
#define CLUSTER_MAX_SNAPSHOT_ENTRIES (CLUSTER_LOG_ENTRIES / 2)
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
				       an empty node asks them all what they are and a new
				       cluster is bootstrapped, with them as voters, only once
				       every one answered empty (else it rejoins the cluster one
				       of them belongs to: README "Bootstrap, exactly when");
				       fewer than two: single node.  This node not among them:
				       it joins an existing cluster and waits for
				       cluster_member_add.  Once a node has state, the
				       membership stored with it wins over this list. */
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
	/* auto_join (needs the cluster TLS keys): a node outside this node's book whose
	   certificate the cluster CA signed and that asks to join is added by the leader (no
	   cluster_member_add); this node, outside its own `peers`, asks so by itself. */
	bool auto_join;
	const char *cluster_advertise; /* borrowed; how the others reach cluster_listen
					  (host:port; NULL/"": cluster_listen) */
};

/* status 0: committed (fsynced) and applied locally; <0: a CLUSTER_E* code. */
typedef void (*cluster_propose_cb)(void *arg, int status);

/* The string for a CLUSTER_E* code (or "unknown error"); never NULL. */
const char *cluster_strerror(int code);

/* Upper bounds (microseconds) of the log write histograms: fine below 50 ms, where a synced
 * write's share of the end-of-DATA -> 250 latency is told apart (issue 14). */
#define CLUSTER_WRITE_BUCKETS_US                                                                   \
	{                                                                                          \
		250, 500, 1000, 2000, 3000, 5000, 8000, 12000, 20000, 30000, 50000, 100000,        \
		    250000, 1000000                                                                \
	}
#define CLUSTER_WRITE_NBUCKETS 14

/* A latency histogram: bucket[i] counts the samples <= CLUSTER_WRITE_BUCKETS_US[i] (cumulative,
 * as Prometheus has them); count and sum over all samples. */
struct cluster_hist {
	uint64_t bucket[CLUSTER_WRITE_NBUCKETS];
	uint64_t count;
	uint64_t sum_us;
};

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
	/* synced log writes (the WAL write that makes entries durable, with the state batch that
	 * rides with it): storage time on the worker thread, and the whole turn from handing the
	 * write to the worker to its completion running on the loop (the worker's queue and the
	 * loop's wakeup included) */
	struct cluster_hist write_disk;
	struct cluster_hist write_turn;
};

/* Consensus status (relayctl status, /metrics, /readyz).  A single node reports itself as the
 * leader of a 1-voter cluster in term 1. */
struct cluster_peer_status {
	char name[CLUSTER_ID_MAX + 1];
	char addr[CLUSTER_ADDR_MAX + 1]; /* its cluster_listen as the address book has it */
	const char *membership; /* static: "voter", "learner", "joining" (wanted, not yet in the
				   Raft configuration), "leaving", "removed" (this node, taken
				   out of the cluster) */
	uint64_t id;		/* raft id (peers.h: of the name and the incarnation; 0 while the
				   incarnation is not known) */
	uint64_t incarnation;	/* its incarnation as the address book has it */
	int incarnation_known;	/* 0: added, not announced yet */
	uint64_t replaced_incarnation; /* nonzero while that former incarnation of the member is
					  still in the Raft configuration (being replaced) */
	int in_conf;		       /* in the committed Raft configuration (voter or learner;
					  this incarnation or the one it replaces) */
	int self;		       /* this node */
	int connected;		       /* a transport connection to it is up (self: 1) */
	uint64_t match;		       /* leader only: highest index known replicated on it */
	uint64_t lag;		       /* leader only: last index - match */
	int64_t last_contact_ms;       /* ms since a message from it arrived; -1 never (self: 0) */
	unsigned queued;	       /* frames waiting for it in the transport (self: 0) */
	uint64_t queued_bytes;	       /* their payload bytes */
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
	uint64_t forwards_expired;	  /* ... dropped: their origin had given up (craft.c) */
	uint64_t renews_refused;	  /* ... Renews dropped: their origin is not in the Raft
					     configuration (craft.c, ownership.h) */
	uint64_t leader_lost;		  /* follower: the connection to its leader closed and it
					     stopped waiting for the election timeout */
	uint64_t timed_out;		  /* proposals failed with CLUSTER_ETIMEDOUT */
	uint64_t snapshots;		  /* snapshots taken */
	uint64_t snapshots_installed;	  /* snapshots received from a leader and fetched */
	int snapshot_installing;	  /* 1 while a snapshot's key/values are being fetched */
	uint64_t snapshot_fetches;	  /* fetch sessions started (a restart counts again) */
	uint64_t snapshot_fetch_bytes;	  /* key + value bytes received by fetches */
	uint64_t snapshot_fetch_failures; /* timeouts, refused or bad chunks, failed writes */
	uint64_t snapshot_serves;	  /* fetch sessions served to other nodes */
	uint64_t snapshot_served_bytes;	  /* key + value bytes sent to them */
	uint64_t snapshots_deferred;	  /* leader: compactions put off for a member that still
					     needs the log */
	uint64_t retention_exceeded;	  /* leader: compacted anyway, the log past its bound */
	uint64_t raft_dropped;		  /* raft outbox overflow + transport drops */
	uint64_t foreign_dropped;	  /* frames of another cluster id, dropped */
	uint64_t cluster_id;		  /* this node's cluster (0: none known yet) */
	uint64_t incarnation;		  /* this data_dir's incarnation */
	const char *boot_phase; /* static: "" (a member), "discovering" (empty, asking `peers`),
				   "rejoining" (empty, asking the leader to take it in) */
	/* the peer transport's totals since open (transport.h, struct transport_stats) */
	struct cluster_transport_counts {
		uint64_t frames_sent;	  /* written (all bytes in the kernel) */
		uint64_t frames_received; /* delivered to the node (strangers' included) */
		uint64_t strangers;	  /* ... from a non-member holding a cluster certificate */
		uint64_t dropped_full;	  /* not sent: the peer's queue was full */
		uint64_t dropped_unauth;  /* received, dropped: wrong `to`, unknown sender */
		uint64_t dropped_malformed; /* received, dropped: undecodable or over the bound */
		uint64_t send_errors;	    /* a write failed (the connection closed) */
		uint64_t redials; /* a handshake or a send stood still: closed, dialed again */
		uint64_t handshake_failures; /* refused or cut handshakes, both ends */
		uint64_t inbound_refused;    /* beyond TRANSPORT_MAX_INBOUND */
		uint64_t stale_closed;	     /* superseded inbound connections closed */
		unsigned inbound;	     /* inbound connections open */
	} transport;
	unsigned n_peers;
	struct cluster_peer_status peers[CLUSTER_MAX_PEERS];
};

/*
 * The members of the cluster as delivery ownership counts them (own_leader_tick's conf): every
 * peer of st but one leaving or removed that the committed Raft configuration no longer holds
 * (it gets no entries, so its lease runs out).  Writes at most cap names (borrowed from st) to
 * out; returns how many; 0 for a single node (nothing is ever removed there).
 */
size_t cluster_status_members(const struct cluster_status *st, const char **out, size_t cap);

#endif
