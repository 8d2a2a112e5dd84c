/*
 * transport.h: peer messaging for Raft (and forwarded proposals) and the admin endpoint, over NNG.
 * The only code in the tree that includes <nng/nng.h> is transport.c; nothing here exposes it.
 *
 * Peer messages (one-way, message-oriented, lossy by design: Raft tolerates loss):
 *   - Each node listens on cluster_listen with one PULL socket.  For each peer it dials the
 *     peer's address with a PUSH socket of its own; NNG reconnects by itself (backoff from
 *     TRANSPORT_RECONNECT_MIN_MS to TRANSPORT_RECONNECT_MAX_MS) after a refusal or a restart.
 *   - transport_send() copies the payload into a relay.PeerFrame (proto/transport.proto: from,
 *     to, cluster_id, kind, payload) and appends it to the peer's bounded send queue.  It never
 *     blocks.  When the queue is full (max_queue_per_peer messages or max_queue_bytes_per_peer
 *     payload bytes, the one being handed to NNG included; an empty queue takes any message
 *     within max_msg_bytes) the message is dropped, counted in
 *     dropped_full, and TRANSPORT_EFULL returned.  Messages to one peer leave in send order; a
 *     message handed to a connection that then breaks is lost (no retransmission here).
 *   - Received frames are delivered by the recv callback ON THE LIBUV LOOP THREAD, in arrival
 *     order per connection (so in send order per peer while a connection lasts).
 *
 * Endpoint guard (NNG 1.5.2, Debian's, has bugs that stop endpoints for good; see transport.c):
 * every TRANSPORT_GUARD_TICK_MS the loop reads NNG's counters of this node's endpoints.
 *   - A listener that counted a negotiation error is probed: a socket of ours dials it; if the
 *     listener has accepted nothing TRANSPORT_PROBE_WAIT_MS later, it is closed and listened
 *     again on the same port (the connections it held are dropped; peers redial).  Counted in
 *     listener_probes and listener_restarts, one log line each re-creation.
 *   - A peer's dialer that has no connection and has counted no attempt for
 *     TRANSPORT_DIAL_STALL_MS is closed and dialed again (dialer_restarts, one log line).
 *   - So is one whose connection NNG still counts as open while a send has stood still on it for
 *     TRANSPORT_SEND_STALL_MS: a peer that reads nothing, a half-open TCP connection, or (seen
 *     with NNG 1.5.2) the process-wide reaper stuck for good after a socket closed mid-receive
 *     (nanomsg/nng#1543, #1813), after which no closed connection is ever reaped and no dialer
 *     redials by itself.
 *   - When a peer's frames arrive on a newer connection, its older inbound connection, once
 *     silent for TRANSPORT_STALE_PIPE_MS, is closed (stale_inbound_closed): NNG can miss that
 *     a TLS peer went away, and keep that connection's memory and descriptor forever.
 *   So a restarted peer is reached again within about TRANSPORT_DIAL_STALL_MS +
 *   TRANSPORT_PROBE_WAIT_MS + 2 ticks even when NNG would have stalled forever.
 *
 * Bringing NNG onto the loop: the PULL socket's NNG_OPT_RECVFD (a descriptor NNG makes readable
 * while a message can be received) is watched with a uv_poll; the poll callback takes up to
 * TRANSPORT_RECV_BATCH messages with non-blocking nng_recvmsg and returns (level-triggered, so
 * the rest come next loop turn).  No NNG thread ever calls into the caller, and the receive side
 * needs no lock; NNG's own receive buffer is bounded by NNG_OPT_RECVBUF and RECVMAXSZ.  The
 * send side runs one nng_aio per peer whose callback (on an NNG thread) takes the next message
 * from that peer's queue; queue and counters are shared under a per-peer mutex.
 *
 * Authentication (guarantee G5).  With ca_file/cert_file/key_file set, every connection is
 * tls+tcp with mutual authentication REQUIRED on both ends: only holders of a cert signed by the
 * cluster CA connect.  A dialing node also requires the listener's cert to name the peer id it
 * dials (TLS server name = peer id, checked against SAN/CN), so a node sends only to the peer it
 * means.  On receipt, a frame whose `to` is not this node, whose `from` is not a configured peer
 * (or is this node), or whose cluster_id differs is dropped and counted (dropped_unauth).
 * Limit: NNG 1.5.2 does not expose the peer certificate's name on an accepted connection, so a
 * listener cannot tie `from` to the certificate: a holder of any cluster cert may claim any
 * configured peer's id.  Every cert signed by the cluster CA is trusted as a member.
 * Without certs (all three NULL) the transport uses plain tcp://: INSECURE, anyone who can reach
 * the port can inject messages; for tests and local development only.
 *
 * Bad input (G6): a frame that does not unpack, is larger than max_msg_bytes (plus the frame's
 * own overhead), or misses a required field is dropped and counted (dropped_malformed), never
 * trusted.  A message larger than NNG's receive bound makes NNG close that connection.
 *
 * Admin endpoint: a request/reply channel (REP on the node, REQ in relayctl) carrying opaque
 * bytes, over TCP authenticated the same way but with its own files: the node gives the CA of
 * relayctl's certificates (admin_ca, apart from the cluster CA, so an admin certificate is never
 * a member's credential) and its own cert; relayctl gives the cluster CA (to check the node) and
 * its admin cert.  It may also listen on a unix socket (unix_path: no TLS; access is the
 * socket file's mode, 0600, so only the node's user and root connect).  The server is served on
 * the loop thread through RECVFD too, one request at a time on all its listeners: the callback
 * gets a request, and the next is read only after transport_admin_reply().  The client call
 * blocks (a CLI's call; never on a node's loop).
 *
 * Threads: every function here is called on the loop thread of the loop given at open, except
 * transport_admin_request() (any thread but that loop's) and transport_strerror().
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

/* The statistics of endpoint `id` of `kind` ("listener", "dialer") in a tree from
 * nng_stats_get, or NULL (NNG 1.5.2's nng_stat_find_listener/_dialer return the first
 * endpoint of the kind instead; transport.c). */
struct nng_stat;
struct nng_stat *transport_stat_endpoint(struct nng_stat *st, const char *kind, int id);

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
#define TRANSPORT_RECV_BATCH 64u	  /* messages taken per loop turn */
#define TRANSPORT_RECVBUF 128		  /* NNG receive buffer of the PULL socket, messages */
#define TRANSPORT_RECONNECT_MIN_MS 100
#define TRANSPORT_RECONNECT_MAX_MS 2000
#define TRANSPORT_GUARD_TICK_MS 1000 /* the endpoint guard looks at NNG's counters */
#define TRANSPORT_PROBE_WAIT_MS 5000 /* a probed listener must accept within this */
/* a dialer with no connection and no attempt for this long is re-created: well above
   TRANSPORT_RECONNECT_MAX_MS plus a connect and a TLS handshake on a working network */
#define TRANSPORT_DIAL_STALL_MS 10000
/* a send that NNG has held this long on a connection it still counts as open is one that will
   never complete (a peer that reads nothing, a half-open TCP connection, or NNG's reaper stuck:
   nanomsg/nng#1543): the guard re-creates the peer's dialer */
#define TRANSPORT_SEND_STALL_MS 10000
/* a peer's inbound connection superseded by a newer one and silent this long since is one NNG
   lost track of: the guard closes it; at most TRANSPORT_STALE_PIPES_MAX noted per peer */
#define TRANSPORT_STALE_PIPE_MS 3000
#define TRANSPORT_STALE_PIPES_MAX 16u
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
	uint64_t sent;		       /* messages handed to a connection */
	uint64_t received;	       /* frames delivered to the callback */
	uint64_t dropped_full;	       /* transport_send refused: peer queue full */
	uint64_t dropped_unauth;       /* wrong `to`, unknown `from`, other cluster */
	uint64_t strangers_received;   /* frames from a non-peer, delivered (admit_strangers) */
	uint64_t dropped_malformed;    /* did not unpack, or over the size bound */
	uint64_t send_errors;	       /* NNG refused a queued message (not counting close) */
	uint64_t listener_probes;      /* the guard's probes of our listener */
	uint64_t listener_restarts;    /* listener found not accepting and re-created */
	uint64_t dialer_restarts;      /* peer dialers found stuck and re-created */
	uint64_t stale_inbound_closed; /* a peer's older inbound connection, superseded */
	unsigned peers;
	unsigned peers_connected; /* peers with at least one live connection */
};
/* Totals, including peers removed since open. */
void transport_stats(const struct transport *t, struct transport_stats *out);

struct transport_peer_stats {
	bool connected;	     /* a connection to the peer is up */
	unsigned queued;     /* messages waiting (the one handed to NNG included) */
	size_t queued_bytes; /* their payload bytes */
	uint64_t sent;	     /* handed to a connection */
	uint64_t dropped_full;
	uint64_t send_errors;
	uint64_t dialer_restarts; /* its dialer found stuck and re-created */
	uint64_t sockets_renewed; /* its socket replaced (each lost connection, each re-creation:
				     NNG 1.5.2's PUSH socket is not trusted after one) */
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
