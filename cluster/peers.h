/*
 * peers.h - cluster members as configured: "id=host:port" specs and their Raft ids.
 *
 * A member's Raft id is the FNV-1a 64-bit hash of its node id string (never 0: a hash of 0
 * becomes 1), so every node derives the same ids from the same `peers` list without a
 * registry.  Two names with the same hash are refused (cluster_peers_parse).
 */
#ifndef RELAY_PEERS_H
#define RELAY_PEERS_H

#include <stddef.h>
#include <stdint.h>

#include "cluster_types.h"

#define CLUSTER_PEER_ADDR_MAX CLUSTER_ADDR_MAX

struct cluster_peer {
	char name[CLUSTER_ID_MAX + 1];
	char addr[CLUSTER_PEER_ADDR_MAX + 1]; /* "host:port" */
	uint64_t id;
};

/* The Raft id of a node id. */
uint64_t cluster_peer_raft_id(const char *name);

/*
 * Parses one "id=host:port" spec into *out.  0, or CLUSTER_EINVAL with a reason in err (may be
 * NULL) when the id is empty, too long or has characters other than letters, digits, '-', '_',
 * '.', or the address is not host:port / [v6]:port.
 */
int cluster_peer_parse(const char *spec, struct cluster_peer *out, char *err, size_t errlen);

/*
 * Parses n specs into out (room for CLUSTER_MAX_PEERS) and checks the list: no duplicate id
 * or Raft id, and self among them (self NULL: not checked).  0 or CLUSTER_EINVAL with a reason
 * in err.
 */
int cluster_peers_parse(const char *const *specs, size_t n, const char *self,
			struct cluster_peer *out, char *err, size_t errlen);

#endif
