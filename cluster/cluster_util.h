/*
 * cluster_util.h - helpers shared by the single node (cluster.c) and the replicated host
 * (cluster_raft.c).  Depends on nothing of either.
 */
#ifndef RELAY_CLUSTER_UTIL_H
#define RELAY_CLUSTER_UTIL_H

#include <stddef.h>

#include "cluster_types.h"
#include "queue_fsm.h"

/* Bound on the path of the database directory. */
#define CLUSTER__PATH_MAX 4096

/* One "cluster: ..." line on stderr. */
void cluster__log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A STORE_E* (store.h) or QUEUE_E* (queue_fsm.h) code as a CLUSTER_E* code. */
int cluster__store_err(int rv);
int cluster__queue_err(int rv);
/* mkdir -p with mode 0700.  0 or CLUSTER_EINVAL / CLUSTER_EIO (logged). */
int cluster__mkdirs(const char *path);
/* data_dir + "/db" into out.  0 or CLUSTER_EINVAL. */
int cluster__db_path(const char *data_dir, char *out, size_t size);
/* Adds a sample of us microseconds to h (loop thread only). */
void cluster__hist_add(struct cluster_hist *h, uint64_t us);
/* Fills the queue counters of st from fsm. */
void cluster__queue_stats(struct queue_fsm *fsm, struct cluster_stats *st);

#endif
