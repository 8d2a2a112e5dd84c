/*
 * cluster_int.h - internal hooks of cluster.c for tests in this repository (not for relayd),
 * and the functions cluster.c shares with the replicated host (cluster_raft.c).
 */
#ifndef RELAY_CLUSTER_INT_H
#define RELAY_CLUSTER_INT_H

#include "cluster.h"
#include "store.h"

/* The store of an open cluster (borrowed), e.g. for store_inject_write_failures. */
struct store *cluster__store(struct cluster *c);

/* ---- shared by cluster.c and cluster_raft.c ---- */

void cluster__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cluster__store_err(int rv);
int cluster__queue_err(int rv);
int cluster__mkdirs(const char *path);
int cluster__db_path(const char *data_dir, char *out, size_t size);
/* Fills the queue counters of st from fsm. */
void cluster__queue_stats(struct queue_fsm *fsm, struct cluster_stats *st);

/* ---- the replicated host (cluster_raft.c); cluster.c delegates to it in replicated mode ---- */

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
/* Test hook: the replicated host of c, NULL for a single node. */
struct cluster__raft *cluster__raft_of(struct cluster *c);

#endif
