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
 * An Accept the queue state machine refuses over an hourly quota (queue_fsm.h "Quotas") gets
 * cb(CLUSTER_EQUOTA) on every node alike: committed, but nothing was queued.
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

#include "cluster_types.h"
#include "relay.pb-c.h"

struct cluster;

/*
 * Opens (creating if missing) the store in cfg->data_dir, rebuilds the in-memory queue index from
 * the queue records (metadata only: no body is read) and replays the log entries after the last
 * applied index.  On success *out is a cluster bound to loop; on failure returns <0 and *out is
 * untouched.  cfg is not kept.
 */
int cluster_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster **out);

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

void cluster_stats(struct cluster *c, struct cluster_stats *st);

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
