/*
 * cluster_int.h - internal hooks of cluster.c for tests in this repository (not for relayd).
 */
#ifndef RELAY_CLUSTER_INT_H
#define RELAY_CLUSTER_INT_H

#include "cluster.h"
#include "cluster_raft.h"
#include "store.h"

/* The store of an open cluster (borrowed), e.g. for store_inject_write_failures. */
struct store *cluster__store(struct cluster *c);

/* Test hook: the replicated host of c, NULL for a single node. */
struct cluster__raft *cluster__raft_of(struct cluster *c);

#endif
