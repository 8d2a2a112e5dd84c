/*
 * peers.h - cluster members as configured: "id=host:port" specs and their Raft ids.
 *
 * A member's Raft id is derived from its node id and its incarnation (a random number drawn when
 * its data_dir was first initialized, so a node that lost its disk comes back as a new Raft
 * member): the FNV-1a 64-bit hash of the node id, a 0 byte and the incarnation (8 bytes,
 * little-endian); incarnation 0 (stores written before incarnations) is the hash of the node id
 * alone.  Never 0 (a hash of 0 becomes 1).  Two names with the same hash are refused
 * (cluster_peers_parse).
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

/* The Raft id of a node id at incarnation 0 (cluster_peer_raft_id_inc(name, 0)). */
uint64_t cluster_peer_raft_id(const char *name);
/* The Raft id of a node id at an incarnation. */
uint64_t cluster_peer_raft_id_inc(const char *name, uint64_t incarnation);

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
