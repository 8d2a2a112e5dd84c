/*
 * smtp_server.h: the libuv + OpenSSL edge around the pure SMTP session machine.
 *
 * Accepts TCP connections on smtp_listen, enforces max_connections and
 * max_connections_per_client (421 4.7.0; clients grouped by client_ipv4_prefix /
 * client_ipv6_prefix), runs one smtp_session per connection, moves bytes between the socket,
 * TLS and the machine with bounded buffers and back-pressure, runs the command/data timers and
 * a message's data deadlines (data_total_timeout, min_data_rate: 421 4.4.2), verifies AUTH on
 * its own worker threads (auth_pool.h; per-client failures and concurrency limited: 454 4.7.0),
 * keeps the node-wide receive budget (max_receive_memory: bodies being received and proposals
 * not yet committed; 452 4.3.1), logs every refusal as one event=reject line, and turns each
 * SMTP_EV_MESSAGE into an Accept proposal to the cluster: "250 2.0.0 Ok: queued as <id>" only
 * once the cluster reports it committed (fsynced) and applied, "451 4.3.0" when the cluster
 * fails or does not answer within propose_timeout.  TLS sessions end with a close_notify.
 */
#ifndef RELAY_SMTP_SERVER_H
#define RELAY_SMTP_SERVER_H

#include <stddef.h>
#include <uv.h>

#include "smtp_session.h"

struct relay_config;
struct cluster;
struct tls_ctx;
struct auth_table;
struct sender_table;
struct dkim_signer;
struct smtp_server;

#define SMTP_CONN_INBUF_MAX (256 * 1024) /* plaintext read but not yet consumed by the machine */
#define SMTP_CONN_WRITE_MAX (256 * 1024) /* bytes queued to the socket before we stop producing */
#define SMTP_READ_CHUNK (64 * 1024)

/* Starts listening.  cfg, cluster and tls (may be NULL) are borrowed and must outlive the
 * server; auth (auth_users_file, may be NULL) and senders (sender_permissions_file, may be
 * NULL) are owned by the server from this call on, whatever it returns.  Returns 0, or -1 with
 * a message in err. */
int smtp_server_start(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
		      struct tls_ctx *tls, struct auth_table *auth, struct sender_table *senders,
		      struct smtp_server **out, char *err, size_t errlen);

/* Hands the server its DKIM signer (dkim_sign.h; owned from now on; NULL: no signing). */
void smtp_server_set_dkim(struct smtp_server *srv, struct dkim_signer *dkim);

/* SIGHUP: reads auth_users_file and sender_permissions_file again (those configured) and, when
 * both load, replaces the tables; sessions stay open (an AUTH check in flight finishes with the
 * table it started with; the next MAIL uses the new permissions).  A file that does not load
 * keeps both previous tables and logs why (event=reload-failed).  0 or -1. */
int smtp_server_reload(struct smtp_server *srv);

/* Stops accepting, lets sessions in the middle of a message finish, answers the others
 * "421 4.3.2", cuts whatever is left after shutdown_timeout, frees the server, then calls
 * done(arg) on the loop. */
void smtp_server_shutdown(struct smtp_server *srv, void (*done)(void *arg), void *arg);

/* Counters of the sessions (reject reasons and events). */
const struct smtp_counters *smtp_server_counters(const struct smtp_server *srv);

/* Upper bounds (ms) of the proposal latency histogram: end of DATA -> cluster answer. */
/* Upper bounds (ms) of the end-of-DATA -> reply histogram: fine below 50 ms, so a p99 of 5 ms
 * and one of 20 ms fall in different buckets (issue 14: cluster latency at half the peak). */
#define SMTP_LATENCY_BUCKETS_MS                                                                    \
	{1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500,  \
	 5000, 10000}
#define SMTP_LATENCY_NBUCKETS 24

struct smtp_server_stats {
	uint64_t sessions_total;   /* SMTP sessions started */
	uint64_t sessions_active;
	uint64_t refused;	   /* connections refused by the limits */
	uint64_t proxy_invalid;	   /* bad/missing PROXY header from proxy_from */
	uint64_t proxy_refused;	   /* PROXY header from elsewhere */
	uint64_t tls_handshakes;   /* completed */
	uint64_t auth_ok, auth_failed;
	uint64_t auth_throttled;   /* answered 454 4.7.0 without a check */
	unsigned auth_jobs;	   /* checks queued or running on the AUTH workers */
	uint64_t data_rate_cut;	   /* 421 4.4.2: slower than min_data_rate */
	uint64_t data_total_cut;   /* 421 4.4.2: longer than data_total_timeout */
	uint64_t receive_memory_used, receive_memory_peak, receive_memory_limit; /* bytes */
	uint64_t accepted;	   /* messages answered 250 */
	uint64_t accept_failed;	   /* messages answered 451 (cluster error or timeout) */
	uint64_t latency_bucket[SMTP_LATENCY_NBUCKETS]; /* cumulative per upper bound */
	uint64_t latency_count;
	double latency_sum_s;
	uint64_t dkim[3]; /* messages signed, unsigned (no key), unsigned (could not sign) */
};

void smtp_server_stats(const struct smtp_server *srv, struct smtp_server_stats *st);

/* The client as max_messages_per_hour_per_client counts it: its address; an IPv6 one as its
 * /64 ("2001:db8:1:2::/64"); an IPv4-mapped one as the IPv4 address.  out: at least
 * INET6_ADDRSTRLEN + 4 bytes. */
struct sockaddr_storage;
void smtp_quota_client_key(const struct sockaddr_storage *ss, char *out, size_t cap);

#endif
