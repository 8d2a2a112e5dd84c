/*
 * cluster_raft.h - the replicated host (cluster_raft.c): cluster.c delegates every call of
 * cluster.h here in replicated mode.  The dependency points one way: cluster.c calls this;
 * cluster_raft.c never calls into cluster.c (both use cluster_util.h).
 */
#ifndef RELAY_CLUSTER_RAFT_H
#define RELAY_CLUSTER_RAFT_H

#include <uv.h>

#include "cluster_types.h"
#include "queue_fsm.h"
#include "relay.pb-c.h"
#include "store.h"

struct cluster__raft;

/* 1 when cfg asks for replicated mode (cluster_listen set, two members or more). */
int cluster__raft_wanted(const struct cluster_config *cfg);
int cluster__raft_open(uv_loop_t *loop, const struct cluster_config *cfg,
		       struct cluster__raft **out);
int cluster__raft_propose(struct cluster__raft *r, const Relay__Command *cmd, cluster_propose_cb cb,
			  void *arg);
void cluster__raft_close(struct cluster__raft *r, void (*done)(void *arg), void *arg);
void cluster__raft_stats(struct cluster__raft *r, struct cluster_stats *st);
void cluster__raft_status(struct cluster__raft *r, struct cluster_status *st);
struct queue_fsm *cluster__raft_queue(struct cluster__raft *r);
int cluster__raft_member_add(struct cluster__raft *r, const char *id, const char *addr,
			     cluster_propose_cb cb, void *arg);
int cluster__raft_member_remove(struct cluster__raft *r, const char *id, cluster_propose_cb cb,
				void *arg);
int cluster__raft_transfer_leader(struct cluster__raft *r, const char *target,
				  const char *from_leader);
struct store *cluster__raft_store(struct cluster__raft *r);
/* The commit index a replicated node's store records (craft_stored_commit); STORE_ENOTFOUND for
 * a single node's store. */
int cluster__raft_stored_commit(struct store *s, uint64_t *commit);

#endif
