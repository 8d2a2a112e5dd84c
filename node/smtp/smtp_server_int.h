/*
 * smtp_server_int.h: private to the SMTP server glue, shared by its two files: smtp_server.c
 * (connections: sockets, TLS, the session machine, timers and deadlines, AUTH checks, limits,
 * refusal log lines, the server's lifetime) and smtp_server_msg.c (a message from
 * SMTP_EV_MESSAGE to the cluster's answer: DKIM signing, quotas, the receive budget's share of a
 * proposal, the Accept).  Nothing else includes it: callers use smtp_server.h.
 */
#ifndef RELAY_SMTP_SERVER_INT_H
#define RELAY_SMTP_SERVER_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#include "auth_limit.h"
#include "config.h"
#include "smtp_server.h"
#include "smtp_session.h"

#define SMTP_RECEIVED_MAX 2048

struct conn;

/* The receive budget (max_receive_memory) with a count of its holders: the server and every
 * proposal in flight (a proposal may outlive its connection and the server; the last holder
 * frees it). */
struct recv_budget {
	struct smtp_budget b;
	size_t refs;
};

struct proposal {
	struct smtp_server *srv;
	struct conn *conn; /* NULL once the connection gave up on it */
	uint64_t t0;	   /* uv_hrtime at propose */
	uint64_t received_ms;
	char user[SMTP_AUTH_FIELD_MAX + 1];  /* counted under this user ("": none) */
	char client_key[INET6_ADDRSTRLEN + 8]; /* counted under this client ("": none) */
	size_t size;
	size_t nrcpt;
	struct recv_budget *budget; /* holds a ref; `reserved` bytes of it until the answer */
	uint64_t reserved;
	char queue_id[32];
};

struct write_req {
	uv_write_t req;
	struct conn *conn;
	size_t len;
	char data[];
};

enum conn_tls { CONN_TLS_NONE, CONN_TLS_HANDSHAKE, CONN_TLS_ON };

struct conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	struct smtp_server *srv;
	struct smtp_session *sess; /* owned; NULL for a connection refused with 421 */
	struct tls_conn *tls;	   /* owned */
	enum conn_tls tls_state;
	struct sockaddr_storage peer;
	char addr[INET6_ADDRSTRLEN + 8]; /* "192.0.2.1" / "2001:db8::1" */
	char client_key[CONFIG_CLIENT_KEY_MAX]; /* addr cut to client_ipv4/6_prefix: the limits' */
	char id[24];			 /* session id for logs */
	char *in;			 /* owned, SMTP_CONN_INBUF_MAX */
	size_t in_len;
	size_t wbytes; /* queued in uv_write */
	int refs;      /* open handles + jobs */
	bool reading, closing, close_after_write, busy, shutdown_after_message;
	bool awaiting_proxy; /* from proxy_from: the PROXY header comes first */
	bool proxy_local;    /* PROXY LOCAL/UNKNOWN/UNSPEC: no client named; never trusted */
	bool trusted;	     /* in mynetworks (as the session was told) */
	bool tls_closed;     /* our close_notify is out */
	bool in_msg;	     /* between DATA 354 / first BDAT and the end of the message */
	uint64_t msg_start_ms, msg_bytes; /* uv_now when it began; bytes fed since */
	const char *timeout_kind;	  /* for the reject line of a 421 4.4.2 */
	const char *result_reason;	  /* for the reject line of a glue-chosen refusal */
	char qkey[INET6_ADDRSTRLEN + 8]; /* the client as quotas count it (quota_client_key) */
	struct auth_table *auth_held; /* a hold on the table of the check in flight (reloads) */
	bool first_data;     /* the first client bytes were checked for a stray PROXY header */
	char via[INET6_ADDRSTRLEN + 8]; /* the load balancer, when a PROXY header was honoured */
	struct proposal *prop; /* in flight, or NULL */
	uint64_t messages;
	struct conn *next, *prev;
};

struct smtp_server {
	uv_loop_t *loop;
	const struct relay_config *cfg;
	struct cluster *cluster;
	struct tls_ctx *tls;
	struct auth_table *auth;	 /* owned (one hold); replaced by smtp_server_reload */
	struct sender_table *senders;	 /* owned; NULL: any sender (no sender_permissions_file) */
	struct dkim_signer *dkim;	 /* owned; NULL: no dkim_keys */
	struct smtp_session_config scfg;
	struct smtp_counters counters;
	uv_tcp_t listeners[CONFIG_LIST_MAX];
	size_t n_listeners;
	int listeners_open;
	struct conn *conns;
	size_t n_conns;
	uint64_t next_sid;
	uint64_t proxy_invalid; /* bad or missing PROXY header from a proxy_from address */
	uint64_t proxy_refused; /* PROXY header from an address not in proxy_from */
	struct smtp_server_stats stats;
	struct queue_id_gen qid; /* queue ids of accepted messages (queue_id.h) */
	struct recv_budget *budget; /* holds a ref (see struct recv_budget) */
	struct auth_pool *auth_pool; /* crypt workers (NULL without auth) */
	struct auth_limit auth_limit; /* failed AUTH per client and minute */
	bool shutting_down;
	bool stopping_auth; /* auth_pool_stop called; its callback frees the server */
	uv_timer_t shutdown_timer;
	void (*done)(void *);
	void *done_arg;
};


/* ---- smtp_server.c ---- */

/* Runs the machine over the buffered input until it blocks, then dispatches its event. */
void smtp_server__conn_process(struct conn *c);
/* (Re)arms the connection's timer: command, data (with the message's deadlines) or proposal. */
void smtp_server__arm_timer(struct conn *c);
/* Drops a hold on c (handles, jobs); the last frees it. */
void smtp_server__conn_unref(struct conn *c);
/* Wall clock in ms (recorded times: received_ms), and an RFC 5322 date of a time_t. */
uint64_t smtp_server__now_ms(void);
void smtp_server__date(char *buf, size_t cap, time_t t);
/* One sample of the proposal latency histogram. */
void smtp_server__stats_latency(struct smtp_server *srv, uint64_t ns);

/* ---- smtp_server_msg.c ---- */

/* SMTP_EV_MESSAGE: signs (DKIM, on the thread pool) if asked, then proposes the Accept. */
void smtp_server__start_message(struct conn *c, const struct smtp_event *ev);
/* Drops one hold on the budget (the last frees it). */
void smtp_server__budget_unref(struct recv_budget *b);
/* Is (user, client key) over its hourly quota at at_ms?  1 with the 450 text, else 0. */
int smtp_server__quota_over(struct smtp_server *srv, const char *user, const char *ckey,
			    uint64_t at_ms, char *text, size_t cap);

#endif
