/*
 * delivery_int.h - private to the delivery engine (node/delivery/delivery*.c): its objects,
 * their bounds and the functions its files share (dlv__ names).  Nothing outside the engine
 * includes it: callers use delivery.h.
 *
 * The engine's files, one seam each:
 *   delivery.c          lifetime (start, close, stats), messages in flight, small helpers
 *   delivery_sched.c    the scheduler: what is due, what this node may start, jobs per route
 *   delivery_dest.c     destinations (routes): MX resolution, job queues, the per-destination
 *                       rate limit, the connection pool's slots
 *   delivery_conn.c     one outgoing connection: libuv socket, client TLS, the mta_session machine
 *   delivery_outcome.c  results: Outcome proposals (re-proposed until accepted), DSNs, logs
 *   delivery_own.c      the ownership runtime: Member/Renew proposals, the lease, drain
 *   delivery_tls.c      outbound TLS: levels, DANE (TLSA lookups), MTA-STS (discovery, the
 *                       per-node policy cache, HTTPS fetches), the plan of each connection and
 *                       the check of the peer after the handshake
 */
#ifndef RELAY_DELIVERY_INT_H
#define RELAY_DELIVERY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster.h"
#include "config.h"
#include "dane.h"
#include "dsn.h"
#include "https_fetch.h"
#include "log.h"
#include "mta_session.h"
#include "mta_sts.h"
#include "mx.h"
#include "ownership.h"
#include "queue_fsm.h"
#include "relay.pb-c.h"
#include "resolver.h"
#include "retry.h"
#include "tls.h"
#include "tls_policy.h"

/* Bounds. */
#define DLV_INFLIGHT_PER_SLOT 8			   /* messages in memory per max_deliveries */
#define DLV_SCHED_BATCH 64 /* messages one scan starts at most (then the next loop turn) */
#define DLV_DEFER_DOMAINS_MAX 64 /* DeferDomain commands of one dead destination's round */
#define DLV_SWEEP_MS 1000	 /* the expiry sweep of deferred domains runs this often */
#define DLV_SWEEP_WALK 1024	 /* messages one sweep looks at, oldest first */
#define DLV_RETRY_JITTER_PCT 10	 /* retries (and domain deferrals) spread +/- this much */
#define DLV_INFLIGHT_BYTES_MAX ((size_t)256 << 20) /* body bytes in memory */
#define DLV_WRITE_MAX (256 * 1024)		   /* bytes queued in uv_write per connection */
#define DLV_WRITE_CHUNK (64 * 1024)
#define DLV_INBUF (MTA_REPLY_MAX * 2)
#define DLV_HASH_BUCKETS 4096
#define DLV_RELAY_MAX (MX_NAME_MAX + INET6_ADDRSTRLEN + 16)
#define DLV_REPROPOSE_MIN_MS 500
#define DLV_REPROPOSE_MAX_MS 30000
#define DLV_DSN_ORIG_MAX DSN_ORIG_MAX_DEFAULT
#define DLV_IDLE_MS                                                                                \
	2000 /* a connection waits this long for the next job of its route (Postfix                \
		smtp_connection_cache_time_limit) */
/* The commit gate looks again this often while the kernel still holds body bytes unsent. */
#define DLV_COMMIT_POLL_MS 5

enum rres { RES_NONE = 0, RES_DELIVERED, RES_DEFERRED, RES_FAILED };

struct rcpt_result {
	uint8_t kind;	/* enum rres */
	bool in_job;	/* part of a job of this run */
	bool expired;	/* deferred, but queue_lifetime is over: failed */
	bool delay_dsn; /* a "delayed" DSN includes it */
	char status[MTA_ENH_MAX];
	char *reply; /* owned */
	char *relay; /* owned; "" when no host was reached */
	uint64_t next_attempt_ms;
	uint64_t epoch; /* the ownership epoch of its domain when the attempt started */
};

struct delivery;
struct ddest;
struct dconn;

struct pending_prop {
	struct dmsg *msg;
	uint8_t *packed; /* owned: the command, for proposing again */
	size_t len;
	unsigned tries;
	struct pending_prop *next; /* in d->retry list */
};

struct dmsg {
	struct delivery *d;
	char qid[QUEUE_ID_MAX + 1];
	Relay__QueueRecord *rec; /* owned (relay__queue_record__free_unpacked) */
	char *body;		 /* owned */
	size_t body_len;
	struct rcpt_result *res;       /* rec->n_rcpts */
	char envid[MTA_ENVID_MAX + 1]; /* decoded ENVID, or "" */
	bool body_8bit;		       /* mta_body_is_8bit, computed once */
	int njobs;		       /* jobs not done */
	int nprops;		       /* proposals not called back */
	struct dmsg *hnext;
};

struct djob {
	struct dmsg *msg;
	struct ddest *dest;
	size_t n;
	uint32_t idx[MTA_MAX_RCPTS]; /* recipient indexes in msg->rec */
	struct mta_rcpt rc[MTA_MAX_RCPTS];
	char *orcpt[MTA_MAX_RCPTS]; /* owned: decoded ORCPT passed on (RFC 3461 4.2), or NULL */
	struct mta_txn txn;
	struct mta_diag last; /* the last failure of this job, for the deferral */
	char last_relay[DLV_RELAY_MAX];
	struct djob *next; /* dest queue */
};

enum dest_state { DEST_NEW, DEST_RESOLVING, DEST_READY };

struct ddest {
	struct delivery *d;
	char key[300];
	char domain[MX_NAME_MAX + 2]; /* a recipient domain (for logs / SNI) */
	char host[256];		      /* MX route: the domain; else the relay host */
	unsigned port;
	bool no_mx;
	bool rcpt_mx;			 /* the recipient domain's own MX (MTA-STS applies) */
	enum tls_policy_level tls_level; /* tls_policy / tls_required_domains */
	struct dtls_dest *tls;		 /* owned (delivery_tls.c): DANE and MTA-STS facts */
	enum dest_state state;
	struct mx_list *mx; /* owned, when READY */
	uint64_t mx_expires_ms;
	struct djob *qhead, *qtail;
	size_t nqueued;
	int nconn;
	struct dconn *idle; /* idle connections (most recent first) */
	double tokens;	    /* max_messages_per_minute_per_destination: the bucket */
	uint64_t tokens_ms; /* when it was last filled; 0 = never (starts full) */
	/* dead (delivery_dest.c "Dead destinations"): the route failed as a whole (no DNS
	 * answer, no host reached); its jobs wait parked while DeferDomain commands defer their
	 * domains, then end without an outcome (or, when a command failed, one by one) */
	uint64_t dead_until;	   /* wall ms: no attempt before (0: alive) */
	struct mta_diag dead_diag; /* why */
	char dead_relay[DLV_RELAY_MAX];
	struct djob *phead, *ptail; /* parked jobs */
	size_t nparked;
	unsigned defer_props; /* DeferDomain proposals in flight */
	bool defer_failed;    /* one of them failed */
	struct ddest *hnext, *next, *prev;
};

/* A DeferDomain proposal of a dead destination.  Detached (d = x = NULL) when the engine closes
 * first: the cluster still calls back and the callback only frees it. */
struct defer_prop {
	struct delivery *d;
	struct ddest *x;
	struct defer_prop *next, *prev;
};

struct dsock {
	uv_tcp_t tcp;
	uv_connect_t creq;
	struct dconn *c; /* NULL once the connection moved on */
};

enum ctls { CTLS_NONE, CTLS_HANDSHAKE, CTLS_ON };

/* What outbound TLS asks of the current host of a connection (delivery_tls.c). */
struct dconn_tls {
	struct tls_host_plan plan;
	bool failed; /* the peer failed the plan's check: diag says why; no plaintext retry */
	struct mta_diag diag;
};

struct dconn {
	struct delivery *d;
	struct ddest *dest;
	struct djob *job; /* the job on this connection, or NULL */
	uv_timer_t timer;
	struct dsock *sock; /* current attempt, or NULL */
	bool connected, reading, closing, reached, tls_plain_retry, tls_failed;
	bool answered; /* a host of the route took a TCP connection (reached or not) */
	bool attempt_over; /* the job's delivery_attempt_timeout passed: no failover, defer */
	bool commit_poll;  /* MTA_EV_COMMIT waits for the kernel to send the body (timer polls) */
	struct mta_deadline dl; /* the job's attempt and the current phase (mono clock) */
	uint64_t idle_until;	/* mono: an idle connection quits then */
	int refs;		/* timer + sockets */
	struct mta_session sess;
	struct mta_config mcfg;
	struct tls_conn *tls; /* owned */
	enum ctls tls_state;
	struct dconn_tls tlsc;
	struct mx_list mx; /* copy taken when the connection started */
	size_t host_i, addr_i;
	char relay[DLV_RELAY_MAX]; /* "host[addr]:port" of the current attempt */
	char in[DLV_INBUF];
	size_t in_len;
	size_t wbytes;
	unsigned nmsgs;
	bool idle;		     /* READY, no job: waiting on its destination's idle list */
	struct dconn *inext, *iprev; /* destination's idle list */
	struct dconn *gnext, *gprev; /* the engine's idle list (oldest first) */
	struct dconn *next, *prev;
};

struct write_req {
	uv_write_t req;
	struct dconn *c; /* NULL when the connection closed before the callback */
	size_t len;
	char data[];
};

struct delivery {
	uv_loop_t *loop;
	const struct relay_config *cfg;
	struct cluster *cluster;
	struct queue_fsm *q;
	struct resolver *resolver; /* NULL when no DNS server is known */
	struct tls_ctx *tls;
	struct https_fetch *http; /* MTA-STS policy fetches; NULL when mta_sts = no or closed */
	struct sts_cache *sts;	  /* owned (delivery_tls.c): MTA-STS policies, per node */
	struct retry_policy retry;
	struct mx_rng rng;
	struct queue_id_gen qid;
	uv_timer_t sched_timer;
	uv_check_t check;
	uv_timer_t retry_timer;
	uint64_t armed_ms; /* when sched_timer fires, 0 = not armed */
	uint64_t seen_applied;
	bool scan_wanted;
	bool slot_waiters; /* a destination waits for a connection slot (max_deliveries) */
	bool rate_waiters; /* a destination waits for its rate limit (the ownership tick pumps) */
	bool closing;
	bool done_called;
	int handles_open;
	struct dmsg *msgs[DLV_HASH_BUCKETS];
	size_t nmsgs;
	size_t inflight_bytes;
	struct ddest *dests[DLV_HASH_BUCKETS];
	struct ddest *dest_list;
	struct dconn *conns;
	int nconn;
	struct dconn *idle_head, *idle_tail; /* idle connections of every destination */
	struct pending_prop *retry_list;
	struct defer_prop *defer_props; /* DeferDomain proposals in flight (every destination) */
	uint64_t sweep_ms;		/* wall ms of the last expiry sweep (delivery_sched.c) */
	struct delivery_stats st;
	struct mx_self self; /* our own SMTP endpoints, rebuilt at each resolution (loops) */
	/* delivery ownership (cluster/ownership.h) */
	struct own own;
	uv_timer_t own_timer;
	struct own_prop *own_props; /* Member/Renew proposals not called back (list) */
	size_t n_own_props;
	int self_state;		 /* this node in the member table; -1 absent */
	uint64_t self_since;	 /* its since_index (the index that set self_state); 0 absent */
	bool may_start;		 /* at the last tick: LIVE and lease held */
	bool own_booted;	 /* the boot-time LIVE was proposed */
	bool abandon;		 /* drain timeout: abandoned attempts are due again at once */
	uint64_t backsteps_seen; /* own.clock_backsteps already logged */
	void (*done)(void *);
	void *done_arg;
};

/* ---- ownership runtime ---- */

#define DLV_OWN_TICK_MS 100 /* lease, leader verdicts and drain are looked at this often */
#define DLV_OWN_PROPS_MAX (2 * QUEUE_MEMBERS_MAX + 4) /* Member/Renew proposals in flight */

/* A Member or Renew proposal in flight.  Detached (d = NULL) when the engine closes first: the
 * cluster still calls back (at the latest when it closes) and the callback only frees it. */
struct own_prop {
	struct delivery *d;
	bool renew;
	struct own_prop *next, *prev;
};

/* ---- delivery.c ---- */

uint64_t dlv__hash_str(const char *s);
void dlv__rfc5322_date(char *buf, size_t cap, uint64_t ms);
const char *dlv__xtext_decode(const char *s, char *out, size_t cap);
const char *dlv__orcpt_decode(const char *s, char *out, size_t cap);
unsigned dlv__notify_from_queue(const Relay__Recipient *r);
const char *dlv__rcpt_domain(const char *addr);
bool dlv__list_has(const struct config_list *l, const char *domain);
char *dlv__xstrdup(const char *s);
char *dlv__dup_max(const char *s, size_t max);
struct dmsg *dlv__msg_find(struct delivery *d, const char *qid);
void dlv__msg_free(struct dmsg *m);
void dlv__maybe_done(struct delivery *d);

/* ---- delivery_outcome.c ---- */

void dlv__retry_timer_cb(uv_timer_t *t);
void dlv__propose_packed(struct pending_prop *p);
void dlv__msg_job_done(struct dmsg *m);
void dlv__job_free(struct djob *j);
void dlv__job_done(struct djob *j);
void dlv__job_finish_all(struct djob *j, bool permanent, const struct mta_diag *dg,
			 const char *relay);
void dlv__job_harvest(struct djob *j, const char *relay);
bool dlv__job_has_pending(const struct djob *j);
void dlv__job_txn(struct djob *j);
void dlv__job_drop(struct djob *j);
void dlv__job_suspend(struct djob *j, const struct mta_diag *dg, const char *relay);

/* ---- delivery_dest.c ---- */

struct ddest *dlv__dest_get(struct delivery *d, const char *rcpt_addr);
void dlv__dest_maybe_free(struct ddest *x);
struct djob *dlv__dest_pop(struct ddest *x);
struct djob *dlv__dest_take(struct ddest *x);
void dlv__dest_push(struct ddest *x, struct djob *j);
void dlv__dest_fail_queued(struct ddest *x, bool permanent, const struct mta_diag *dg,
			   const char *relay);
void dlv__dest_pump(struct ddest *x);
void dlv__dests_pump_all(struct delivery *d);
void dlv__dest_dead(struct ddest *x, const struct mta_diag *dg, const char *relay,
		    struct djob *cur);
void dlv__dests_close(struct delivery *d);

/* ---- delivery_conn.c ---- */

void dlv__conn_idle_leave(struct dconn *c);
bool dlv__conn_reuse(struct ddest *x);
void dlv__conn_close(struct dconn *c);
void dlv__conn_next_address(struct dconn *c);
void dlv__conn_process(struct dconn *c);
struct dconn *dlv__conn_new(struct ddest *x, struct djob *j);

/* ---- delivery_sched.c ---- */

void dlv__sched_timer_cb(uv_timer_t *t);
void dlv__sched_request(struct delivery *d);
void dlv__check_cb(uv_check_t *h);

/* ---- delivery_own.c ---- */

void dlv__own_tick_cb(uv_timer_t *t);
int dlv__own_self_state(const struct delivery *d, const struct queue_member *mem, size_t n,
			uint64_t *since);
bool dlv__own_may_commit(struct delivery *d, const struct djob *j, uint64_t mono);

/* ---- delivery_tls.c ---- */

#define DLV_STS_CACHE_MAX 1024		     /* MTA-STS domains remembered (policy or none) */
#define DLV_STS_RECHECK_MS (60 * 1000)	     /* a domain's TXT record is asked again after */
#define DLV_STS_FETCH_TIMEOUT_MS (30 * 1000) /* one policy fetch, connect included */
#define DLV_STS_PORT 443

int dlv__tls_start(struct delivery *d, char *err, size_t errlen);
void dlv__tls_close(struct delivery *d);
bool dlv__tls_busy(const struct delivery *d);
void dlv__tls_fini(struct delivery *d);
enum tls_policy_level dlv__tls_level(const struct delivery *d, const char *domain);
bool dlv__tls_dest_prepare(struct ddest *x);
void dlv__tls_dest_free(struct ddest *x);
int dlv__tls_plan(struct dconn *c);
enum mta_tls_policy dlv__tls_session_mode(const struct dconn *c);
struct tls_conn *dlv__tls_conn_new(struct dconn *c);
int dlv__tls_check_peer(struct dconn *c);
void dlv__tls_session_closed(struct dconn *c, struct djob *j);

#endif
