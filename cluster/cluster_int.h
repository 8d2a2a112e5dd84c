/*
 * cluster_int.h - internal hooks of cluster.c for tests in this repository (not for relayd).
 */
#ifndef RELAY_CLUSTER_INT_H
#define RELAY_CLUSTER_INT_H

#include "cluster.h"
#include "store.h"

/* The store of an open cluster (borrowed), e.g. for store_inject_write_failures. */
struct store *cluster__store(struct cluster *c);

#endif
