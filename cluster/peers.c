/*
 * peers.c - parse the `peers` list and derive Raft ids.  See peers.h.
 */
#include "peers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t
cluster_peer_raft_id_inc(const char *name, uint64_t incarnation)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ull;
	}
	if (incarnation) {
		h *= 0x100000001b3ull; /* the 0 byte */
		for (int i = 0; i < 8; i++) {
			h ^= (uint8_t)(incarnation >> (8 * i));
			h *= 0x100000001b3ull;
		}
	}
	return h ? h : 1;
}

uint64_t
cluster_peer_raft_id(const char *name)
{
	return cluster_peer_raft_id_inc(name, 0);
}

static int
peer__fail(char *err, size_t errlen, const char *spec, const char *why)
{
	if (err && errlen)
		snprintf(err, errlen, "peer \"%.80s\": %s", spec, why);
	return CLUSTER_EINVAL;
}

int
cluster_peer_parse(const char *spec, struct cluster_peer *out, char *err, size_t errlen)
{
	const char *eq = strchr(spec, '=');
	if (!eq)
		return peer__fail(err, errlen, spec, "want id=host:port");
	size_t n = (size_t)(eq - spec);
	if (n == 0 || n > CLUSTER_ID_MAX)
		return peer__fail(err, errlen, spec, "id empty or longer than 63");
	for (size_t i = 0; i < n; i++) {
		char ch = spec[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.'))
			return peer__fail(err, errlen, spec, "id: letters, digits, '-', '_', '.'");
	}
	const char *addr = eq + 1;
	size_t al = strlen(addr);
	if (al == 0 || al > CLUSTER_PEER_ADDR_MAX)
		return peer__fail(err, errlen, spec, "address empty or too long");
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr || !colon[1])
		return peer__fail(err, errlen, spec, "address: want host:port");
	if (addr[0] == '[' && colon[-1] != ']')
		return peer__fail(err, errlen, spec, "address: want [v6]:port");
	char *end;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (*end || port == 0 || port > 65535)
		return peer__fail(err, errlen, spec, "address: bad port");
	memcpy(out->name, spec, n);
	out->name[n] = 0;
	memcpy(out->addr, addr, al + 1);
	out->id = cluster_peer_raft_id(out->name);
	return 0;
}

int
cluster_peers_parse(const char *const *specs, size_t n, const char *self, struct cluster_peer *out,
		    char *err, size_t errlen)
{
	if (n > CLUSTER_MAX_PEERS) {
		if (err && errlen)
			snprintf(err, errlen, "peers: at most %u members", CLUSTER_MAX_PEERS);
		return CLUSTER_EINVAL;
	}
	int found = 0;
	for (size_t i = 0; i < n; i++) {
		int rv = cluster_peer_parse(specs[i], &out[i], err, errlen);
		if (rv)
			return rv;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(out[j].name, out[i].name) || out[j].id == out[i].id)
				return peer__fail(err, errlen, specs[i], "duplicate id");
		if (self && !strcmp(out[i].name, self))
			found = 1;
	}
	if (n && self && !found) {
		if (err && errlen)
			snprintf(err, errlen, "peers: this node (%.63s) is not in the list", self);
		return CLUSTER_EINVAL;
	}
	return 0;
}
