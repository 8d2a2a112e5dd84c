/*
 * proxy.h: the PROXY protocol header, versions 1 (text) and 2 (binary), as a load balancer such
 * as HAProxy sends it first on a connection ("The PROXY protocol", haproxy.org, 2020 text).
 *
 * Pure: bytes in, the original client and server addresses out.  No allocation, no I/O.
 * The caller decides whom to believe (proxy_from): a header is only honoured from configured
 * balancer addresses, and refused from anyone else.
 */
#ifndef RELAY_PROXY_H
#define RELAY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXY_V1_MAX 107   /* the longest v1 line, CRLF included (spec 2.1) */
#define PROXY_V2_MAX 4096  /* bound on a v2 header with its TLVs (16 + length) */

struct proxy_info {
	int version;	 /* 1 or 2 */
	bool local;	 /* v1 UNKNOWN or v2 LOCAL: no address (health check); keep the socket's */
	struct sockaddr_storage src; /* the original client (when !local) */
	struct sockaddr_storage dst; /* the address it connected to (when !local) */
};

/*
 * Parses a header at the start of buf.  Returns the bytes it takes (> 0), 0 when more bytes are
 * needed to decide, -1 when buf does not start with a valid header (not PROXY at all, bad
 * syntax, unsupported family or transport, over the bounds above).
 */
int proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out);

/* True when buf starts like a PROXY header (v1 "PROXY " or the v2 signature), as far as len
 * bytes tell: used to refuse headers from clients outside proxy_from. */
bool proxy_looks_like(const uint8_t *buf, size_t len);

#endif
