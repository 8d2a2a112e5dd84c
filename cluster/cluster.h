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
 * Threads: every function here is called on the loop thread; callbacks run on the loop thread.
 * Later (consensus issue) the log is replicated by raft; this interface stays the same.
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
	X(CLUSTER_ENOTFOUND, -8, "no such message")

enum cluster_errno {
#define CLUSTER__ERRNO_ENUM(name, val, str) name = (val),
	CLUSTER_ERRNO_MAP(CLUSTER__ERRNO_ENUM)
#undef CLUSTER__ERRNO_ENUM
};

/* Defaults used when a config field is 0. */
#define CLUSTER_DEFAULT_MAX_PENDING 10000u
#define CLUSTER_DEFAULT_MAX_BATCH_BYTES ((size_t)8 << 20)

struct cluster_config {
	const char *node_id;	/* borrowed; this node's id (also the single voter) */
	const char *data_dir;	/* borrowed; created if missing; the RocksDB lives in data_dir/db */
	unsigned max_pending;	/* bound on proposals not yet committed (0: default); beyond it
				   cluster_propose returns CLUSTER_EBUSY */
	size_t max_batch_bytes; /* bound on the log bytes of one group-commit write (0: default);
				   a single command bigger than this gets CLUSTER_ETOOBIG */
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

/* The queue state machine of this node, for the delivery scheduler (read-only use; valid until
 * cluster_close).  See cluster/queue_fsm.h for lookup, iteration and reading a body. */
struct queue_fsm *cluster_queue(struct cluster *c);

#endif
