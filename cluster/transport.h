/*
 * transport.h: peer messaging for Raft (and forwarded proposals), and the admin endpoint.
 * The peer transport (transport.c) is frames over TCP on the caller's libuv loop, with mutual
 * TLS through OpenSSL; the admin endpoint (transport_admin.c) is NNG request/reply.  Nothing
 * here exposes either library.
 *
 * Peer messages (one-way, message-oriented, lossy by design: Raft tolerates loss):
 *   - Each node listens on cluster_listen.  For each peer it keeps one connection of its own,
 *     dialed to the peer's address ("host:port"; a host name is resolved at each dial, one at
 *     a time per transport) and dialed again after a refusal, a loss or a restart, with backoff
 *     from TRANSPORT_RECONNECT_MIN_MS doubling to TRANSPORT_RECONNECT_MAX_MS.  A connect plus
 *     handshake that takes TRANSPORT_HANDSHAKE_MS is abandoned and dialed again (redials).
 *   - The wire is NNG's PUSH/PULL over tcp:// or tls+tcp:// (SP header, then u64-length
 *     frames; transport.c), which the versions before this transport spoke: old and new nodes
 *     talk during a rolling upgrade.
 *   - transport_send() packs the payload into a relay.PeerFrame (proto/transport.proto: from,
 *     to, cluster_id, kind, payload) and appends it to the peer's bounded send queue.  It never
 *     blocks.  When the queue is full (max_queue_per_peer messages or max_queue_bytes_per_peer
 *     payload bytes, the one being written included; an empty queue takes any message within
 *     max_msg_bytes) the message is dropped, counted in dropped_full, and TRANSPORT_EFULL
 *     returned.  The queue is kept while the peer is down and drains when it is up again.
 *     Messages to one peer leave in send order.  A message leaves the queue (sent) once all
 *     its bytes are in the kernel; one cut by a lost connection is sent whole on the next.  A
 *     sent message whose connection then breaks is lost (no retransmission here).
 *   - A send that stands still TRANSPORT_SEND_STALL_MS on a connection (a peer that reads
 *     nothing, a half-open TCP connection) closes it; the peer is dialed again (redials).
 *   - Received frames are delivered by the recv callback ON THE LIBUV LOOP THREAD, in arrival
 *     order per connection (so in send order per peer while a connection lasts).  An inbound
 *     connection superseded by a newer one carrying the same sender's frames, and silent
 *     TRANSPORT_STALE_PIPE_MS, is closed (stale_inbound_closed): a peer that restarted behind
 *     a silent link leaves one.  At most TRANSPORT_MAX_INBOUND inbound connections; more are
 *     closed at once (inbound_refused).
 *
 * Authentication (guarantee G5).  With ca_file/cert_file/key_file set, every connection is TLS
 * (1.2 or 1.3) with mutual authentication REQUIRED on both ends: only holders of a cert signed
 * by the cluster CA connect.  A dialing node also requires the listener's cert to name the
 * peer id it dials (SAN/CN), so a node sends only to the peer it means; and a listener requires
 * the `from` of each frame to be named by the sender's certificate, so a holder of one
 * member's certificate cannot speak for another.  On receipt, a frame whose `to` is not this
 * node, whose `from` is not a configured peer (or is this node, or is not named by the
 * certificate), or whose cluster_id differs is dropped and counted (dropped_unauth).  Failed
 * handshakes are counted (handshake_failures) and logged at most every 10 s per peer.
 * Without certs (all three NULL) the transport uses plain TCP: INSECURE, anyone who can reach
 * the port can inject messages; for tests and local development only.
 *
 * Bad input (G6): a frame that does not unpack, or misses a required field, or whose payload
 * is larger than max_msg_bytes, is dropped and counted (dropped_malformed), never trusted.  A
 * frame whose length is beyond max_msg_bytes + TRANSPORT_FRAME_OVERHEAD_MAX closes its
 * connection (counted the same); so one connection buffers at most one frame.
 *
 * Admin endpoint: a request/reply channel (REP on the node, REQ in relayctl) carrying opaque
 * bytes, over NNG and TCP, authenticated the same way but with its own files: the node gives
 * the CA of relayctl's certificates (admin_ca, apart from the cluster CA, so an admin
 * certificate is never a member's credential) and its own cert; relayctl gives the cluster CA
 * (to check the node) and its admin cert.  It may also listen on a unix socket (unix_path: no
 * TLS; access is the socket file's mode, 0600, so only the node's user and root connect).  The
 * server is served on the loop thread through NNG's RECVFD, one request at a time on all its
 * listeners: the callback gets a request, and the next is read only after
 * transport_admin_reply().  The client call blocks (a CLI's call; never on a node's loop).
 *
 * Threads: every function here is called on the loop thread of the loop given at open, except
 * transport_admin_request() (any thread but that loop's) and transport_strerror().
 * transport_open() sets SIGPIPE to be ignored when it is at its default (a write into a
 * connection the peer closed must fail, not end the process).
 */
#ifndef RELAY_TRANSPORT_H
#define RELAY_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "raft.h"

/* Error codes and their strings: X(name, value, string). */
#define TRANSPORT_ERRNO_MAP(X)                                                                     \
	X(TRANSPORT_ENOMEM, -1, "out of memory")                                                   \
	X(TRANSPORT_EINVAL, -2, "invalid argument")                                                \
	X(TRANSPORT_EFULL, -3, "peer send queue full: message dropped")                            \
	X(TRANSPORT_ETOOBIG, -4, "message larger than max_msg_bytes")                              \
	X(TRANSPORT_ENOPEER, -5, "no such peer")                                                   \
	X(TRANSPORT_EEXIST, -6, "peer already added")                                              \
	X(TRANSPORT_ETLS, -7, "TLS setup failed (CA, certificate or key)")                         \
	X(TRANSPORT_ELISTEN, -8, "cannot listen on the address")                                   \
	X(TRANSPORT_EADDR, -9, "bad address (want host:port)")                                     \
	X(TRANSPORT_ENNG, -10, "messaging library failure")                                        \
	X(TRANSPORT_ETIMEDOUT, -11, "timed out")                                                   \
	X(TRANSPORT_ECLOSED, -12, "closing or closed")                                             \
	X(TRANSPORT_ESTATE, -13, "no request waiting for a reply")

enum transport_errno {
#define TRANSPORT__ERRNO_ENUM(name, val, str) name = (val),
	TRANSPORT_ERRNO_MAP(TRANSPORT__ERRNO_ENUM)
#undef TRANSPORT__ERRNO_ENUM
};

const char *transport_strerror(int code);

/* Bounds and defaults (used when a config field is 0). */
/* one payload: room for a Raft message carrying one entry of RAFT_ENTRY_MAX_BYTES (or a
   snapshot chunk) plus raft's default max_msg_bytes of others; a ceiling, not a typical size */
#define TRANSPORT_DEFAULT_MAX_MSG_BYTES                                                            \
	((RAFT_ENTRY_MAX_BYTES > RAFT_SNAPSHOT_MAX_BYTES ? (size_t)RAFT_ENTRY_MAX_BYTES            \
							 : (size_t)RAFT_SNAPSHOT_MAX_BYTES) +      \
	 ((size_t)2 << 20))
#define TRANSPORT_DEFAULT_MAX_QUEUE_PER_PEER 1024u /* messages waiting per peer */
#define TRANSPORT_DEFAULT_MAX_QUEUE_BYTES_PER_PEER ((size_t)128 << 20) /* payload bytes */
#define TRANSPORT_MAX_PEERS 64u					       /* peers of one node */
#define TRANSPORT_ID_MAX 64u		  /* node id and cluster id, bytes */
#define TRANSPORT_FRAME_OVERHEAD_MAX 512u /* frame bytes beyond the payload */
#define TRANSPORT_RECONNECT_MIN_MS 100
#define TRANSPORT_RECONNECT_MAX_MS 2000
/* a dial's TCP connect, TLS handshake and SP headers, or an inbound connection's handshake,
   must be done within this; else closed (a silent host, a peer that never answers) */
#define TRANSPORT_HANDSHAKE_MS 5000
/* a frame's write that stood still this long on a connection that is up closes it (a peer
   that reads nothing, a half-open TCP connection); the peer is dialed again */
#define TRANSPORT_SEND_STALL_MS 10000
/* a sender's inbound connection superseded by a newer one and silent this long is closed */
#define TRANSPORT_STALE_PIPE_MS 3000
#define TRANSPORT_GUARD_TICK_MS 1000 /* the timer that looks at the deadlines above */
#define TRANSPORT_MAX_INBOUND (4u * TRANSPORT_MAX_PEERS) /* accepted connections open at once */
#define TRANSPORT_READ_CHUNK 65536u			 /* bytes taken from the kernel per read */
#define TRANSPORT_KEEPALIVE_S 10 /* TCP keepalive idle time on every connection */
#define TRANSPORT_LISTEN_BACKLOG 128
#define TRANSPORT_PEM_MAX ((size_t)64 << 10) /* one cert or key file */
#define TRANSPORT_ADMIN_DEFAULT_MAX_MSG_BYTES ((size_t)16 << 20)

struct transport_config {
	const char *node_id; /* borrowed, copied; this node (frames' `to`), <= TRANSPORT_ID_MAX */
	const char
	    *cluster_id;       /* borrowed, copied; NULL or "" = none; frames must carry the same */
	const char *listen;    /* borrowed; "127.0.0.11:7401" (cluster_listen); port 0 picks one,
				  see transport_listen_port() */
	const char *ca_file;   /* borrowed; cluster CA (PEM); all three set or all NULL */
	const char *cert_file; /* borrowed; this node's cert (PEM), named for node_id */
	const char *key_file;  /* borrowed; its key (PEM, unencrypted) */
	size_t max_msg_bytes;  /* bound on one payload, sent or received (0: default) */
	unsigned max_queue_per_peer;	 /* messages waiting per peer (0: default) */
	size_t max_queue_bytes_per_peer; /* payload bytes waiting per peer (0: default) */
	/* Frames from a sender that is no peer (its certificate signed by the cluster CA: only
	 * with TLS) are delivered too, counted as strangers_received, for the receiver to take
	 * what a non-member may send (a request to join); false: dropped (dropped_unauth). */
	bool admit_strangers;
};

/*
 * A received message.  from (the peer id) and data are borrowed for the call only.  The
 * callback may call any transport function, transport_close() included.
 */
typedef void (*transport_recv_cb)(void *arg, const char *from, uint32_t kind, const void *data,
				  size_t len);

struct transport;

/*
 * A peer's connection went down: this node's connection to peer_id closed and no other is up
 * (the peer's process died, or the network dropped the connection).  Called on the loop thread
 * soon after (the dialer redials by itself); peer_id is borrowed for the call.  May call any
 * transport function, transport_close() included.
 */
typedef void (*transport_peer_down_cb)(void *arg, const char *peer_id);

/*
 * Listen on cfg->listen and start delivering to cb.  cfg is not kept (strings are copied; the
 * PEM files are read now).  On failure nothing is left open and cb is never called.
 */
int transport_open(uv_loop_t *loop, const struct transport_config *cfg, transport_recv_cb cb,
		   void *arg, struct transport **out);

/* The TCP port actually bound (useful with port 0). */
int transport_listen_port(const struct transport *t);
/* Be told when a peer's connection goes down (NULL: not); arg as the recv callback's. */
void transport_on_peer_down(struct transport *t, transport_peer_down_cb cb);

/*
 * Add a peer and dial it at addr ("host:port") in the background, reconnecting forever.
 * peer_id (copied) must differ from the node's own id.  At most TRANSPORT_MAX_PEERS.
 */
int transport_add_peer(struct transport *t, const char *peer_id, const char *addr);

/* Drop a peer: its queued messages are freed, its connection closed, frames from it dropped. */
int transport_remove_peer(struct transport *t, const char *peer_id);

/*
 * Queue a copy of data (len <= max_msg_bytes) for peer_id.  Never blocks.  0 when queued (not a
 * delivery promise), TRANSPORT_EFULL when the peer's queue is full (dropped, counted),
 * TRANSPORT_ENOPEER, TRANSPORT_ETOOBIG, TRANSPORT_ENOMEM, TRANSPORT_ECLOSED.
 */
int transport_send(struct transport *t, const char *peer_id, uint32_t kind, const void *data,
		   size_t len);

/*
 * Close everything: queued messages are freed, connections closed.  done(arg) (may be NULL) is
 * called from the loop once the last handle is closed and t is freed.  t must not be used after
 * this call; the recv callback is not called again.  Call exactly once.
 */
void transport_close(struct transport *t, void (*done)(void *arg), void *arg);

struct transport_stats {
	uint64_t sent;		     /* messages written (all bytes in the kernel) */
	uint64_t received;	     /* frames delivered to the callback */
	uint64_t dropped_full;	     /* transport_send refused: peer queue full */
	uint64_t dropped_unauth;     /* wrong `to`, unknown `from`, other cluster */
	uint64_t strangers_received; /* frames from a non-peer, delivered (admit_strangers) */
	uint64_t dropped_malformed;  /* did not unpack, or over the size bound */
	uint64_t send_errors;	     /* a write failed: the connection closed */
	uint64_t redials;	     /* connections closed for a handshake or a send that stood
					still (TRANSPORT_HANDSHAKE_MS, TRANSPORT_SEND_STALL_MS) */
	uint64_t handshake_failures; /* TLS or SP header refused, or a handshake cut (both ends) */
	uint64_t inbound_refused;    /* accepted beyond TRANSPORT_MAX_INBOUND, closed at once */
	uint64_t stale_inbound_closed; /* a sender's older inbound connection, superseded */
	unsigned inbound;	       /* inbound connections open */
	unsigned peers;
	unsigned peers_connected; /* peers with at least one live connection */
};
/* Totals, including peers removed since open. */
void transport_stats(const struct transport *t, struct transport_stats *out);

struct transport_peer_stats {
	bool connected;	     /* a connection to the peer is up */
	unsigned queued;     /* messages waiting (the one being written included) */
	size_t queued_bytes; /* their payload bytes */
	uint64_t sent;	     /* all bytes in the kernel */
	uint64_t dropped_full;
	uint64_t send_errors;
	uint64_t redials; /* its connection closed for a handshake or send standing still */
	uint64_t connections_lost; /* its connection went down after it was up */
};
int transport_peer_stats(const struct transport *t, const char *peer_id,
			 struct transport_peer_stats *out);

/* ---- admin endpoint: request/reply, opaque bytes ---- */

struct transport_admin_config {
	const char *listen;    /* borrowed; server: "host:port" to listen on (port 0 picks one);
				  client: where to connect; NULL: unix_path only */
	const char *unix_path; /* borrowed; server: also listen on this unix socket (created mode
				  0600, a stale file replaced); client: connect here instead of
				  listen; NULL: none.  Never TLS. */
	const char *ca_file;   /* borrowed; the CA the other side's cert must chain to (server:
				  relayctl's admin CA; client: the cluster CA); all three or none
				  (none: plain tcp, loopback only by config) */
	const char *cert_file; /* borrowed */
	const char *key_file;  /* borrowed */
	size_t max_msg_bytes;  /* bound on a request (server) or a reply (client); 0: default */
};

/*
 * A request arrived (req borrowed for the call).  Answer it, now or later, with exactly one
 * transport_admin_reply(); no other request is read until then.  If the client gave up, the
 * reply is discarded.
 */
typedef void (*transport_admin_cb)(void *arg, const void *req, size_t len);

struct transport_admin;

int transport_admin_listen(uv_loop_t *loop, const struct transport_admin_config *cfg,
			   transport_admin_cb cb, void *arg, struct transport_admin **out);
int transport_admin_listen_port(const struct transport_admin *a);
/* Answer the pending request (data copied).  TRANSPORT_ESTATE when none is pending. */
int transport_admin_reply(struct transport_admin *a, const void *data, size_t len);
/* Same contract as transport_close(). */
void transport_admin_close(struct transport_admin *a, void (*done)(void *arg), void *arg);

/*
 * Client: send req to the admin endpoint at cfg->listen and wait up to timeout_ms for the
 * reply (one deadline for connecting, sending and the reply).  BLOCKS: for relayctl or a helper
 * thread, never a node's loop thread.  server_name (NULL: any cluster cert) is the node id the
 * server's cert must name.  On 0, *reply is malloc'd (the caller frees it) and *reply_len its
 * length.  TRANSPORT_ETIMEDOUT when no reply came (server absent, refused our cert, or slow).
 */
int transport_admin_request(const struct transport_admin_config *cfg, const char *server_name,
			    const void *req, size_t len, unsigned timeout_ms, void **reply,
			    size_t *reply_len);

/* ---- Raft messages on the wire (relay.RaftMsg in proto/transport.proto) ---- */

/* Frame kind for a RaftMsg payload; other kinds belong to cluster/. */
#define TRANSPORT_KIND_RAFT 1u

/*
 * Encode m (borrowed) into a malloc'd buffer (*buf, the caller frees it).  TRANSPORT_ETOOBIG
 * when it breaks a raft.h bound.
 */
int transport_raft_encode(const struct raft_msg *m, void **buf, size_t *len);

/* A decoded message: msg borrows from pb (entries, their data, snap_data). */
struct transport_raft_in {
	struct raft_msg msg;
	void *pb; /* owned: the unpacked protobuf */
};

/*
 * Decode a peer's bytes (borrowed).  Peer input: TRANSPORT_EINVAL when malformed or outside the
 * bounds of raft.h (type, entry and snapshot size, nodes per configuration); nothing to free
 * then.  On 0, pass in->msg to raft_step() and then call transport_raft_in_fini().
 */
int transport_raft_decode(const void *data, size_t len, struct transport_raft_in *in);
void transport_raft_in_fini(struct transport_raft_in *in);

#endif
