/*
 * delivery.c - the delivery engine (see delivery.h): scheduler, destinations, connections
 * (libuv + client TLS glue around the pure mta_session machine), outcomes and DSNs.
 *
 * Objects and who owns them:
 *   struct delivery   the engine; owns every dmsg (hash by queue id), ddest (hash by route key)
 *                     and dconn (list).
 *   struct dmsg       a message in flight: its record and body (owned), per-recipient results,
 *                     the count of jobs and proposals not finished.  Freed when both are 0.
 *   struct djob       (message, route): recipient indexes; queued on its destination, then held
 *                     by one connection at a time.  Freed by job_done.
 *   struct ddest      a route: the resolved host list, the job queue, its connections.  Freed when
 *                     it has no job, no connection and no lookup in flight.
 *   struct dconn      one outgoing connection (across failover: one socket per attempt, struct
 *                     dsock, freed in its close callback).  Freed when its timer and socket are
 *                     closed (refs).
 *
 * Failure handling: a connection that reaches no host for its job defers the job and, when no
 * host of the destination answered at all, every job waiting on the destination with the same
 * reason (a dead destination costs one round of connects, not one per message).  A proposal the
 * cluster refuses is proposed again after a backoff (the recipients would be delivered twice
 * otherwise).
 */
#include "delivery.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "config.h"
#include "dsn.h"
#include "log.h"
#include "mta_session.h"
#include "mx.h"
#include "ownership.h"
#include "queue_fsm.h"
#include "relay.pb-c.h"
#include "resolver.h"
#include "retry.h"
#include "tls.h"

/* Bounds. */
#define DLV_INFLIGHT_PER_SLOT 8			   /* messages in memory per max_deliveries */
#define DLV_INFLIGHT_BYTES_MAX ((size_t)256 << 20) /* body bytes in memory */
#define DLV_WRITE_MAX (256 * 1024)		   /* bytes queued in uv_write per connection */
#define DLV_WRITE_CHUNK (64 * 1024)
#define DLV_INBUF (MTA_REPLY_MAX * 2)
#define DLV_HASH_BUCKETS 4096
#define DLV_RELAY_MAX (MX_NAME_MAX + INET6_ADDRSTRLEN + 16)
#define DLV_REPROPOSE_MIN_MS 500
#define DLV_REPROPOSE_MAX_MS 30000
#define DLV_DSN_ORIG_MAX DSN_ORIG_MAX_DEFAULT
#define DLV_IDLE_MS 2000 /* a connection waits this long for the next job of its route (Postfix
			    smtp_connection_cache_time_limit) */

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
	struct rcpt_result *res; /* rec->n_rcpts */
	char envid[MTA_ENVID_MAX + 1]; /* decoded ENVID, or "" */
	bool body_8bit;			/* mta_body_is_8bit, computed once */
	int njobs;		 /* jobs not done */
	int nprops;		 /* proposals not called back */
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
	bool tls_required;
	enum dest_state state;
	struct mx_list *mx; /* owned, when READY */
	uint64_t mx_expires_ms;
	struct djob *qhead, *qtail;
	size_t nqueued;
	int nconn;
	struct dconn *idle; /* idle connections (most recent first) */
	double tokens;	    /* max_messages_per_minute_per_destination: the bucket */
	uint64_t tokens_ms; /* when it was last filled; 0 = never (starts full) */
	struct ddest *hnext, *next, *prev;
};

struct dsock {
	uv_tcp_t tcp;
	uv_connect_t creq;
	struct dconn *c; /* NULL once the connection moved on */
};

enum ctls { CTLS_NONE, CTLS_HANDSHAKE, CTLS_ON };

struct dconn {
	struct delivery *d;
	struct ddest *dest;
	struct djob *job; /* the job on this connection, or NULL */
	uv_timer_t timer;
	struct dsock *sock; /* current attempt, or NULL */
	bool connected, reading, closing, reached, tls_plain_retry, tls_failed;
	int refs; /* timer + sockets */
	struct mta_session sess;
	struct mta_config mcfg;
	struct tls_conn *tls; /* owned */
	enum ctls tls_state;
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
	struct delivery_stats st;
	/* delivery ownership (cluster/ownership.h) */
	struct own own;
	uv_timer_t own_timer;
	struct own_prop *own_props; /* Member/Renew proposals not called back (list) */
	size_t n_own_props;
	int self_state;		    /* this node in the member table; -1 absent */
	uint64_t self_since;	    /* its since_index (the index that set self_state); 0 absent */
	bool may_start;		    /* at the last tick: LIVE and lease held */
	bool own_booted;	    /* the boot-time LIVE was proposed */
	bool abandon;		    /* drain timeout: abandoned attempts are due again at once */
	void (*done)(void *);
	void *done_arg;
};

static void sched_request(struct delivery *d);
static void conn_process(struct dconn *c);
static void conn_next_address(struct dconn *c);
static void conn_close(struct dconn *c);
static void dest_pump(struct ddest *dest);
static void dest_maybe_free(struct ddest *dest);
static void msg_job_done(struct dmsg *m);
static void delivery_maybe_done(struct delivery *d);
static void propose_packed(struct pending_prop *p);
static void retry_timer_cb(uv_timer_t *t);
static void sched_timer_cb(uv_timer_t *t);

/* ------------------------------------------------------------ helpers */

static uint64_t
now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static uint64_t
hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

static void
rfc5322_date(char *buf, size_t cap, uint64_t ms)
{
	struct tm tm;
	time_t t = (time_t)(ms / 1000);
	gmtime_r(&t, &tm);
	strftime(buf, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* RFC 3461 4: decodes xtext ("+XX") into out; returns out or NULL when invalid. */
static const char *
xtext_decode(const char *s, char *out, size_t cap)
{
	size_t o = 0;
	if (s == NULL)
		return NULL;
	for (size_t i = 0; s[i]; i++) {
		unsigned char c = (unsigned char)s[i];
		if (o + 1 >= cap)
			return NULL;
		if (c == '+') {
			unsigned v;
			if (!isxdigit((unsigned char)s[i + 1]) || !isxdigit((unsigned char)s[i + 2]))
				return NULL;
			if (sscanf(s + i + 1, "%2x", &v) != 1)
				return NULL;
			c = (unsigned char)v;
			i += 2;
		}
		if (c < 0x20 || c >= 0x7f)
			return NULL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return out;
}

/* "type;xtext" -> "type;decoded" */
static const char *
orcpt_decode(const char *s, char *out, size_t cap)
{
	const char *semi = s ? strchr(s, ';') : NULL;
	if (semi == NULL || (size_t)(semi - s) + 2 >= cap)
		return NULL;
	size_t tl = (size_t)(semi - s) + 1;
	memcpy(out, s, tl);
	if (xtext_decode(semi + 1, out + tl, cap - tl) == NULL)
		return NULL;
	return out;
}

/* The queue keeps NOTIFY as relay.proto says (1 SUCCESS, 2 FAILURE, 4 DELAY, 8 NEVER, the SMTP
 * server's SMTP_NOTIFY_*); dsn.h and mta_session.h number them differently.  0 stays 0. */
static unsigned
notify_from_queue(const Relay__Recipient *r)
{
	unsigned v = r->has_notify ? r->notify : 0, out = 0;
	if (v & 1u)
		out |= DSN_NOTIFY_SUCCESS;
	if (v & 2u)
		out |= DSN_NOTIFY_FAILURE;
	if (v & 4u)
		out |= DSN_NOTIFY_DELAY;
	if (v & 8u)
		out |= DSN_NOTIFY_NEVER;
	return out;
}

static const char *
rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

static bool
list_has(const struct config_list *l, const char *domain)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcasecmp(l->v[i], domain) == 0)
			return true;
	return false;
}

static char *
xstrdup(const char *s)
{
	return strdup(s ? s : "");
}

/* A copy of at most max bytes of s (NULL = ""); NULL on ENOMEM. */
static char *
dup_max(const char *s, size_t max)
{
	if (s == NULL)
		s = "";
	size_t n = 0;
	while (n < max && s[n] != '\0')
		n++;
	char *d = malloc(n + 1);
	if (d != NULL) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* ------------------------------------------------------------ messages */

static struct dmsg *
msg_find(struct delivery *d, const char *qid)
{
	for (struct dmsg *m = d->msgs[hash_str(qid) % DLV_HASH_BUCKETS]; m; m = m->hnext)
		if (strcmp(m->qid, qid) == 0)
			return m;
	return NULL;
}

static void
msg_free(struct dmsg *m)
{
	struct delivery *d = m->d;
	struct dmsg **pp = &d->msgs[hash_str(m->qid) % DLV_HASH_BUCKETS];
	while (*pp != m)
		pp = &(*pp)->hnext;
	*pp = m->hnext;
	d->nmsgs--;
	d->inflight_bytes -= m->body_len;
	if (m->res != NULL)
		for (size_t i = 0; i < m->rec->n_rcpts; i++) {
			free(m->res[i].reply);
			free(m->res[i].relay);
		}
	free(m->res);
	free(m->body);
	if (m->rec)
		relay__queue_record__free_unpacked(m->rec, NULL);
	free(m);
}

/* ------------------------------------------------------------ outcomes */

struct ogroup {
	uint8_t kind;
	bool delay_notified;
	const char *reply, *relay, *status;
	uint64_t next;
	uint64_t epoch;
	size_t n;
	uint32_t *idx;
	Relay__Accept *dsn; /* attached DSN, or NULL */
};

static void
outcome_cb(void *arg, int status)
{
	struct pending_prop *p = arg;
	struct dmsg *m = p->msg;
	struct delivery *d = m->d;
	if (status != 0 && !d->closing) {
		p->tries++;
		log_warn(m->qid, "event=outcome-propose-failed error=\"%s\" tries=%u",
			 cluster_strerror(status), p->tries);
		p->next = d->retry_list;
		d->retry_list = p;
		uint64_t wait = (uint64_t)DLV_REPROPOSE_MIN_MS << (p->tries < 6 ? p->tries : 6);
		if (wait > DLV_REPROPOSE_MAX_MS)
			wait = DLV_REPROPOSE_MAX_MS;
		if (!uv_is_active((uv_handle_t *)&d->retry_timer) ||
		    uv_timer_get_due_in(&d->retry_timer) > wait)
			uv_timer_start(&d->retry_timer, retry_timer_cb, wait, 0);
		return;
	}
	free(p->packed);
	free(p);
	m->nprops--;
	if (m->nprops == 0 && m->njobs == 0) {
		msg_free(m);
		sched_request(d);
		delivery_maybe_done(d);
	}
}

static void
retry_timer_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	struct pending_prop *l = d->retry_list;
	d->retry_list = NULL;
	while (l != NULL) {
		struct pending_prop *p = l;
		l = l->next;
		propose_packed(p);
	}
}

static void
propose_packed(struct pending_prop *p)
{
	struct dmsg *m = p->msg;
	struct delivery *d = m->d;
	Relay__Command *cmd = relay__command__unpack(NULL, p->len, p->packed);
	int rc = cmd ? (d->closing ? CLUSTER_ECLOSED : cluster_propose(d->cluster, cmd, outcome_cb, p))
		     : CLUSTER_ENOMEM;
	if (cmd)
		relay__command__free_unpacked(cmd, NULL);
	if (rc != 0) {
		/* As if the callback had failed: retried later (or dropped when closing). */
		if (d->closing) {
			free(p->packed);
			free(p);
			if (--m->nprops == 0 && m->njobs == 0) {
				msg_free(m);
				delivery_maybe_done(d);
			}
			return;
		}
		outcome_cb(p, rc);
	}
}

/* Packs cmd and proposes it for m (counted in m->nprops). */
static void
msg_propose(struct dmsg *m, const Relay__Command *cmd)
{
	struct delivery *d = m->d;
	struct pending_prop *p = calloc(1, sizeof(*p));
	size_t len = relay__command__get_packed_size(cmd);
	if (p == NULL || (p->packed = malloc(len ? len : 1)) == NULL) {
		free(p);
		log_error(m->qid, "event=outcome-lost error=\"out of memory\"");
		return;
	}
	p->len = relay__command__pack(cmd, p->packed);
	p->msg = m;
	m->nprops++;
	int rc = cluster_propose(d->cluster, cmd, outcome_cb, p);
	if (rc != 0) {
		if (d->closing) {
			log_warn(m->qid, "event=outcome-dropped error=\"%s\"", cluster_strerror(rc));
			m->nprops--;
			free(p->packed);
			free(p);
			return;
		}
		outcome_cb(p, rc); /* queues a retry */
	}
}

/* Builds a DSN of `action` for the recipients flagged in sel (n of them) into acc (body and
 * strings owned by the caller's buffers: *body_out to free).  Returns 0 or -1. */
static int
msg_build_dsn(struct dmsg *m, enum dsn_action action, const bool *sel, size_t n,
	      Relay__Accept *acc, Relay__Recipient *r, Relay__Recipient **rp, char *qid,
	      size_t qidcap, char **body_out)
{
	struct delivery *d = m->d;
	const Relay__QueueRecord *rec = m->rec;
	uint64_t now = now_ms();
	struct dsn_rcpt *dr = calloc(n, sizeof(*dr));
	char(*orc)[MTA_ORCPT_MAX + 1] = calloc(n, sizeof(*orc));
	char(*rmta)[MX_NAME_MAX + 2] = calloc(n, sizeof(*rmta));
	char last[64], until[64], arrival[64], date[64], msgid[160], envid[MTA_ENVID_MAX + 1];
	int rc = -1;
	if (dr == NULL || orc == NULL || rmta == NULL)
		goto out;
	rfc5322_date(last, sizeof(last), now);
	rfc5322_date(arrival, sizeof(arrival), rec->received_ms);
	rfc5322_date(date, sizeof(date), now);
	rfc5322_date(until, sizeof(until), rec->received_ms + d->cfg->queue_lifetime_ms);
	size_t k = 0;
	for (size_t i = 0; i < rec->n_rcpts && k < n; i++) {
		if (!sel[i])
			continue;
		const struct rcpt_result *res = &m->res[i];
		const Relay__Recipient *rr = rec->rcpts[i]->rcpt;
		struct dsn_rcpt *x = &dr[k];
		x->final_rcpt = rr->addr;
		x->orcpt = orcpt_decode(rr->orcpt, orc[k], sizeof(orc[k]));
		x->action = action;
		x->status = res->status[0] ? res->status : (action == DSN_ACTION_DELIVERED ? "2.0.0" : "5.0.0");
		if (res->relay && res->relay[0]) {
			snprintf(rmta[k], sizeof(rmta[k]), "%s", res->relay);
			char *br = strchr(rmta[k], '[');
			if (br)
				*br = '\0';
			x->remote_mta = rmta[k][0] ? rmta[k] : NULL;
		}
		x->diag = res->reply && res->reply[0] ? res->reply : NULL;
		x->last_attempt = last;
		x->will_retry_until = action == DSN_ACTION_DELAYED ? until : NULL;
		k++;
	}
	queue_id_make(&d->qid, now, qid, qidcap);
	snprintf(msgid, sizeof(msgid), "%s@%s", qid, d->cfg->hostname);
	struct dsn_input in = {
	    .reporting_mta = d->cfg->hostname,
	    .mail_from = rec->mail_from,
	    .envid = xtext_decode(rec->envid, envid, sizeof(envid)),
	    .ret = rec->has_ret ? (enum dsn_ret)rec->ret : DSN_RET_DEFAULT,
	    .arrival_date = arrival,
	    .date = date,
	    .message_id = msgid,
	    .rcpts = dr,
	    .nrcpts = k,
	    .orig = m->body,
	    .orig_len = m->body_len,
	    .orig_max = DLV_DSN_ORIG_MAX,
	};
	char *body = NULL;
	size_t blen = 0;
	int brc = dsn_build(&in, &body, &blen);
	if (brc == -EINVAL) {
		/* A value the builder refuses (header injection guard): drop the optional ones. */
		in.envid = NULL;
		for (size_t j = 0; j < k; j++) {
			dr[j].orcpt = NULL;
			dr[j].remote_mta = NULL;
			dr[j].diag = NULL;
		}
		brc = dsn_build(&in, &body, &blen);
	}
	if (brc != 0) {
		log_warn(m->qid, "event=dsn-failed action=%s error=%d", dsn_action_name(action), brc);
		goto out;
	}
	relay__recipient__init(r);
	r->addr = rec->mail_from;
	r->has_notify = true;
	r->notify = 8; /* NEVER, relay.proto numbering */
	rp[0] = r;
	relay__accept__init(acc);
	acc->queue_id = qid;
	acc->mail_from = "";
	acc->n_rcpts = 1;
	acc->rcpts = rp;
	acc->body.data = (uint8_t *)body;
	acc->body.len = blen;
	acc->received_ms = now;
	acc->has_body_type = true;
	acc->body_type = mta_body_is_8bit(body, blen) ? 1 : 0;
	acc->has_smtputf8 = rec->has_smtputf8 && rec->smtputf8;
	acc->smtputf8 = acc->has_smtputf8;
	acc->client_addr = "";
	acc->helo = "";
	acc->auth_user = "";
	acc->node_id = d->cfg->node_id;
	*body_out = body;
	d->st.dsns++;
	log_info(m->qid, "event=dsn action=%s dsn_id=%s to=<%s> nrcpt=%zu", dsn_action_name(action),
		 qid, rec->mail_from, k);
	rc = 0;
out:
	free(dr);
	free(orc);
	free(rmta);
	return rc;
}

static const char *
status_word(uint8_t kind)
{
	return kind == RES_DELIVERED ? "sent" : kind == RES_DEFERRED ? "deferred" : "bounced";
}

/*
 * Every job of m is done: decide deferrals (retry schedule, lifetime), log one line per
 * recipient, build the DSNs and propose the Outcomes.
 */
static void
msg_complete(struct dmsg *m)
{
	struct delivery *d = m->d;
	const Relay__QueueRecord *rec = m->rec;
	const struct queue_msg *meta = queue_fsm_lookup(d->q, m->qid);
	uint64_t now = now_ms();
	size_t n = rec->n_rcpts;
	size_t na = n ? n : 1;
	bool *fail_sel = calloc(na, sizeof(bool)), *ok_sel = calloc(na, sizeof(bool)),
	     *delay_sel = calloc(na, sizeof(bool));
	struct ogroup *g = calloc(na, sizeof(*g));
	uint32_t *idxbuf = calloc(na, sizeof(uint32_t));
	size_t ng = 0, nfail = 0, nok = 0, ndelay = 0;
	if (!fail_sel || !ok_sel || !delay_sel || !g || !idxbuf) {
		log_error(m->qid, "event=outcome-lost error=\"out of memory\"");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct rcpt_result *r = &m->res[i];
		if (!r->in_job || r->kind == RES_NONE)
			continue;
		const Relay__QueueRcpt *qr = rec->rcpts[i];
		const char *from = rec->mail_from;
		unsigned notify = notify_from_queue(qr->rcpt);
		if (r->kind == RES_DEFERRED) {
			unsigned attempts = (meta && i < meta->nrcpts ? meta->rcpts[i].attempts : 0) + 1;
			uint64_t next;
			if (retry_next(&d->retry, rec->received_ms, now, attempts, mx_rng_next(&d->rng),
				       &next) != 0 ||
			    retry_expired(&d->retry, rec->received_ms, now)) {
				r->kind = RES_FAILED;
				r->expired = true;
				char buf[MTA_TEXT_MAX + 64];
				snprintf(buf, sizeof(buf), "queue lifetime expired; last error: %s",
					 r->reply ? r->reply : "none");
				free(r->reply);
				r->reply = dup_max(buf, QUEUE_REPLY_MAX);
				if (r->status[0] == '\0' || r->status[0] == '2')
					snprintf(r->status, sizeof(r->status), "4.4.7");
			} else {
				/* An attempt a drain abandoned is due again at once (on the next owner). */
				r->next_attempt_ms = d->abandon ? now : next;
				if (d->cfg->delay_warning_time_ms > 0 && !qr->delay_notified &&
				    now >= rec->received_ms + d->cfg->delay_warning_time_ms &&
				    dsn_should_notify(from, notify, DSN_ACTION_DELAYED, false)) {
					r->delay_dsn = true;
					delay_sel[i] = true;
					ndelay++;
				}
			}
		}
		if (r->kind == RES_FAILED && dsn_should_notify(from, notify, DSN_ACTION_FAILED, false)) {
			fail_sel[i] = true;
			nfail++;
		}
		if (r->kind == RES_DELIVERED &&
		    dsn_should_notify(from, notify, DSN_ACTION_DELIVERED, false)) {
			ok_sel[i] = true;
			nok++;
		}
		if (r->kind == RES_DELIVERED)
			d->st.rcpts_delivered++;
		else if (r->kind == RES_DEFERRED)
			d->st.rcpts_deferred++;
		else
			d->st.rcpts_failed++;
		char safe[MTA_ADDR_MAX * 4 + 1];
		char rep[MTA_TEXT_MAX * 4 + 1];
		uint64_t delay = now > rec->received_ms ? now - rec->received_ms : 0;
		log_info(m->qid, "to=<%s> relay=%s delay=%" PRIu64 ".%" PRIu64 " dsn=%s status=%s (%s)",
			 log_safe(qr->rcpt->addr, strlen(qr->rcpt->addr), safe, sizeof(safe)),
			 r->relay && r->relay[0] ? r->relay : "none", delay / 1000,
			 (delay % 1000) / 100, r->status[0] ? r->status : "-", status_word(r->kind),
			 log_safe(r->reply ? r->reply : "", r->reply ? strlen(r->reply) : 0, rep,
				  sizeof(rep)));
		/* group */
		const char *reply = r->reply ? r->reply : "", *relay = r->relay ? r->relay : "";
		size_t j;
		for (j = 0; j < ng; j++)
			if (g[j].kind == r->kind && g[j].delay_notified == r->delay_dsn &&
			    g[j].next == r->next_attempt_ms && g[j].epoch == r->epoch &&
			    strcmp(g[j].reply, reply) == 0 && strcmp(g[j].relay, relay) == 0 &&
			    strcmp(g[j].status, r->status) == 0)
				break;
		if (j == ng) {
			g[ng].kind = r->kind;
			g[ng].delay_notified = r->delay_dsn;
			g[ng].reply = reply;
			g[ng].relay = relay;
			g[ng].status = r->status;
			g[ng].next = r->next_attempt_ms;
			g[ng].epoch = r->epoch;
			ng++;
		}
		g[j].n++;
	}
	/* Lay out the indexes per group. */
	size_t off = 0;
	for (size_t j = 0; j < ng; j++) {
		g[j].idx = idxbuf + off;
		off += g[j].n;
		g[j].n = 0;
	}
	for (size_t i = 0; i < n; i++) {
		struct rcpt_result *r = &m->res[i];
		if (!r->in_job || r->kind == RES_NONE)
			continue;
		const char *reply = r->reply ? r->reply : "", *relay = r->relay ? r->relay : "";
		for (size_t j = 0; j < ng; j++)
			if (g[j].kind == r->kind && g[j].delay_notified == r->delay_dsn &&
			    g[j].next == r->next_attempt_ms && g[j].epoch == r->epoch &&
			    strcmp(g[j].reply, reply) == 0 && strcmp(g[j].relay, relay) == 0 &&
			    strcmp(g[j].status, r->status) == 0) {
				g[j].idx[g[j].n++] = (uint32_t)i;
				break;
			}
	}
	/* DSNs: one per message and reason, attached to the first group of that kind. */
	Relay__Accept acc[3];
	Relay__Recipient dr[3];
	Relay__Recipient *drp[3][1];
	char dqid[3][40];
	char *dbody[3] = {NULL, NULL, NULL};
	struct {
		size_t count;
		bool *sel;
		enum dsn_action action;
		uint8_t kind;
		bool delay;
	} want[3] = {
	    {nfail, fail_sel, DSN_ACTION_FAILED, RES_FAILED, false},
	    {ndelay, delay_sel, DSN_ACTION_DELAYED, RES_DEFERRED, true},
	    {nok, ok_sel, DSN_ACTION_DELIVERED, RES_DELIVERED, false},
	};
	for (int w = 0; w < 3; w++) {
		if (want[w].count == 0)
			continue;
		if (msg_build_dsn(m, want[w].action, want[w].sel, want[w].count, &acc[w], &dr[w],
				  drp[w], dqid[w], sizeof(dqid[w]), &dbody[w]) != 0)
			continue;
		for (size_t j = 0; j < ng; j++)
			if (g[j].kind == want[w].kind && g[j].dsn == NULL &&
			    (!want[w].delay || g[j].delay_notified)) {
				g[j].dsn = &acc[w];
				break;
			}
	}
	for (size_t j = 0; j < ng; j++) {
		Relay__Outcome o = RELAY__OUTCOME__INIT;
		o.queue_id = m->qid;
		o.n_rcpt_index = g[j].n;
		o.rcpt_index = g[j].idx;
		o.kind = g[j].kind == RES_DELIVERED  ? RELAY__OUTCOME_KIND__DELIVERED
			 : g[j].kind == RES_DEFERRED ? RELAY__OUTCOME_KIND__DEFERRED
						     : RELAY__OUTCOME_KIND__FAILED;
		o.at_ms = now;
		o.has_epoch = true;
		o.epoch = g[j].epoch;
		if (g[j].kind == RES_DEFERRED) {
			o.has_next_attempt_ms = true;
			o.next_attempt_ms = g[j].next;
		}
		o.reply = (char *)g[j].reply;
		o.relay = (char *)g[j].relay;
		o.dsn_status = (char *)g[j].status;
		o.dsn = g[j].dsn;
		if (g[j].delay_notified) {
			o.has_delay_notified = true;
			o.delay_notified = true;
		}
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
		cmd.outcome = &o;
		msg_propose(m, &cmd);
	}
	for (int w = 0; w < 3; w++)
		free(dbody[w]);
out:
	free(fail_sel);
	free(ok_sel);
	free(delay_sel);
	free(g);
	free(idxbuf);
}

/* One job of m finished (or was dropped). */
static void
msg_job_done(struct dmsg *m)
{
	struct delivery *d = m->d;
	if (--m->njobs > 0)
		return;
	/* Also while closing: what was delivered or failed before the close is proposed (the
	 * cluster closes after delivery); recipients cut by the close have no result and stay
	 * queued as they were. */
	msg_complete(m);
	if (m->nprops == 0) {
		msg_free(m);
		sched_request(d);
		delivery_maybe_done(d);
	}
}

static void
job_free(struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		free(j->orcpt[k]);
	free(j);
}

/* Records the result of recipient slot k of job j. */
static void
job_set(struct djob *j, size_t k, uint8_t kind, const struct mta_diag *diag, const char *relay)
{
	struct rcpt_result *r = &j->msg->res[j->idx[k]];
	r->kind = kind;
	snprintf(r->status, sizeof(r->status), "%s",
		 diag && diag->enh[0] ? diag->enh
				     : (kind == RES_DELIVERED ? "2.0.0"
							      : kind == RES_DEFERRED ? "4.0.0" : "5.0.0"));
	free(r->reply);
	free(r->relay);
	r->reply = dup_max(diag ? diag->text : "", QUEUE_REPLY_MAX);
	r->relay = dup_max(relay, QUEUE_RELAY_MAX); /* the bounds queue_validate checks */
}

/* The job is over for this run: pending recipients become deferred with its last error. */
static void
job_done(struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED) {
			struct mta_diag dg = j->last;
			if (dg.code == 0) {
				dg.code = 451;
				snprintf(dg.enh, sizeof(dg.enh), "4.4.1");
				snprintf(dg.text, sizeof(dg.text), "451 4.4.1 no host could be reached");
			}
			j->rc[k].state = MTA_RCPT_DEFERRED;
			job_set(j, k, RES_DEFERRED, &dg, j->last_relay);
		}
	struct dmsg *m = j->msg;
	job_free(j);
	msg_job_done(m);
}

/* Fails (permanent) or defers every recipient of j with one reason. */
static void
job_finish_all(struct djob *j, bool permanent, const struct mta_diag *dg, const char *relay)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED) {
			j->rc[k].state = permanent ? MTA_RCPT_FAILED : MTA_RCPT_DEFERRED;
			job_set(j, k, permanent ? RES_FAILED : RES_DEFERRED, dg, relay);
		}
	job_done(j);
}

/* Harvests the final states of the job's transaction. */
static void
job_harvest(struct djob *j, const char *relay)
{
	for (size_t k = 0; k < j->n; k++) {
		struct mta_rcpt *r = &j->rc[k];
		struct rcpt_result *res = &j->msg->res[j->idx[k]];
		if (res->kind != RES_NONE)
			continue;
		if (r->state == MTA_RCPT_DELIVERED)
			job_set(j, k, RES_DELIVERED, &r->diag, relay);
		else if (r->state == MTA_RCPT_FAILED)
			job_set(j, k, RES_FAILED, &r->diag, relay);
		else if (r->state == MTA_RCPT_DEFERRED)
			job_set(j, k, RES_DEFERRED, &r->diag, relay);
	}
}

static bool
job_has_pending(const struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED)
			return true;
	return false;
}

/* Prepares the transaction for the job's pending recipients. */
static void
job_txn(struct djob *j)
{
	const Relay__QueueRecord *rec = j->msg->rec;
	struct mta_txn *t = &j->txn;
	memset(t, 0, sizeof(*t));
	t->mail_from = rec->mail_from;
	t->ret = rec->has_ret ? (enum mta_ret)rec->ret : MTA_RET_NONE;
	t->envid = j->msg->envid[0] ? j->msg->envid : NULL;
	t->body = j->msg->body;
	t->body_len = j->msg->body_len;
	t->body_8bit = j->msg->body_8bit;
	t->rcpts = j->rc;
	t->nrcpts = j->n;
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_ACCEPTED)
			j->rc[k].state = MTA_RCPT_PENDING;
	t->smtputf8 = (rec->has_smtputf8 && rec->smtputf8) || mta_txn_needs_smtputf8(t);
}

/* ------------------------------------------------------------ destinations */

static struct ddest *
dest_get(struct delivery *d, const char *rcpt_addr)
{
	char key[300], domain[MX_NAME_MAX + 2];
	struct config_route route = {.port = 25};
	const char *dom = rcpt_domain(rcpt_addr);
	if (mx_name_normalize(dom, domain) != 0 || domain[0] == '\0')
		snprintf(domain, sizeof(domain), "%s", "");
	bool tls_req = domain[0] && list_has(&d->cfg->tls_required_domains, domain);
	const char *target = NULL;
	bool transport = false;
	for (size_t i = 0; domain[0] && i < d->cfg->transport.n; i++) {
		const char *e = d->cfg->transport.v[i], *eq = strchr(e, '=');
		if (eq && (size_t)(eq - e) == strlen(domain) && strncasecmp(e, domain, (size_t)(eq - e)) == 0) {
			target = eq + 1;
			transport = true;
			break;
		}
	}
	if (target == NULL && d->cfg->relayhost[0] != '\0')
		target = d->cfg->relayhost;
	if (target != NULL) {
		if (config_parse_route(target, &route) != 0)
			return NULL;
		if (transport)
			route.no_mx = true;
		snprintf(key, sizeof(key), "%s%s:%u%s", route.no_mx ? "host:" : "mx:", route.host,
			 route.port, tls_req ? "/tls" : "");
	} else {
		snprintf(route.host, sizeof(route.host), "%s", domain);
		route.port = 25;
		route.no_mx = false;
		snprintf(key, sizeof(key), "domain:%s%s", domain, tls_req ? "/tls" : "");
	}
	uint64_t h = hash_str(key) % DLV_HASH_BUCKETS;
	for (struct ddest *x = d->dests[h]; x; x = x->hnext)
		if (strcmp(x->key, key) == 0)
			return x;
	struct ddest *x = calloc(1, sizeof(*x));
	if (x == NULL)
		return NULL;
	x->d = d;
	snprintf(x->key, sizeof(x->key), "%s", key);
	snprintf(x->domain, sizeof(x->domain), "%s", domain);
	snprintf(x->host, sizeof(x->host), "%s", route.host);
	x->port = route.port;
	x->no_mx = route.no_mx;
	x->tls_required = tls_req;
	x->hnext = d->dests[h];
	d->dests[h] = x;
	x->next = d->dest_list;
	if (d->dest_list)
		d->dest_list->prev = x;
	d->dest_list = x;
	return x;
}

static void
dest_maybe_free(struct ddest *x)
{
	struct delivery *d = x->d;
	if (x->nqueued > 0 || x->nconn > 0 || x->state == DEST_RESOLVING)
		return;
	struct ddest **pp = &d->dests[hash_str(x->key) % DLV_HASH_BUCKETS];
	while (*pp != x)
		pp = &(*pp)->hnext;
	*pp = x->hnext;
	if (x->prev)
		x->prev->next = x->next;
	else
		d->dest_list = x->next;
	if (x->next)
		x->next->prev = x->prev;
	free(x->mx);
	free(x);
}

static struct djob *
dest_pop(struct ddest *x)
{
	struct djob *j = x->qhead;
	if (j == NULL)
		return NULL;
	x->qhead = j->next;
	if (x->qhead == NULL)
		x->qtail = NULL;
	x->nqueued--;
	j->next = NULL;
	return j;
}

/* The next job of x for a connection, within max_messages_per_minute_per_destination (a token
 * bucket holding a second's worth, at least 1); NULL when there is none or the limit says wait
 * (then the ownership tick pumps x again).  The close and failure paths use dest_pop. */
static struct djob *
dest_take(struct ddest *x)
{
	struct delivery *d = x->d;
	uint64_t per_min = d->cfg->max_messages_per_minute_per_destination;
	if (x->nqueued == 0)
		return NULL;
	if (per_min > 0) {
		double burst = per_min / 60.0 < 1.0 ? 1.0 : per_min / 60.0;
		uint64_t now = now_ms();
		if (x->tokens_ms == 0)
			x->tokens = burst;
		else if (now > x->tokens_ms)
			x->tokens += (double)(now - x->tokens_ms) * per_min / 60000.0;
		if (x->tokens > burst)
			x->tokens = burst;
		x->tokens_ms = now;
		if (x->tokens < 1.0) {
			d->rate_waiters = true;
			d->st.rate_waits++;
			return NULL;
		}
		x->tokens -= 1.0;
	}
	return dest_pop(x);
}

static void
dest_push(struct ddest *x, struct djob *j)
{
	j->next = NULL;
	if (x->qtail)
		x->qtail->next = j;
	else
		x->qhead = j;
	x->qtail = j;
	x->nqueued++;
}

/* Every queued job of x ends with the same result. */
static void
dest_fail_queued(struct ddest *x, bool permanent, const struct mta_diag *dg, const char *relay)
{
	struct djob *j;
	while ((j = dest_pop(x)) != NULL)
		job_finish_all(j, permanent, dg, relay);
}

static void
resolve_cb(void *arg, int status, const struct mx_list *list)
{
	struct ddest *x = arg;
	struct delivery *d = x->d;
	x->state = DEST_NEW;
	if (status != 0 && status != MX_ECANCELED) {
		if (mx_is_permanent(status))
			d->st.dns_permanent++;
		else
			d->st.dns_failures++;
	}
	if (status == 0 && list != NULL && list->nhosts > 0) {
		if (x->mx == NULL)
			x->mx = malloc(sizeof(*x->mx));
		if (x->mx != NULL) {
			*x->mx = *list;
			x->state = DEST_READY;
			uint32_t ttl = list->ttl < 5 ? 5 : list->ttl;
			x->mx_expires_ms = now_ms() + (uint64_t)ttl * 1000;
			if (log_enabled(LOG_DEBUG)) {
				char buf[1024];
				mx_list_format(list, buf, sizeof(buf));
				log_debug("-", "event=resolved dest=%s hosts=\"%s\"", x->key, buf);
			}
		} else {
			status = MX_ENOMEM;
		}
	}
	if (status != 0 || x->state != DEST_READY) {
		struct mta_diag dg = {0};
		bool perm = mx_is_permanent(status);
		dg.code = perm ? 550 : 451;
		dg.local = true;
		snprintf(dg.enh, sizeof(dg.enh), "%s", mx_status_code(status));
		snprintf(dg.text, sizeof(dg.text), "%d %s %s: %s", dg.code, dg.enh, x->host,
			 mx_strerror(status));
		if (status == MX_ENULLMX)
			snprintf(dg.text, sizeof(dg.text), "556 5.1.10 %s: %s", x->host,
				 mx_strerror(status));
		log_info("-", "event=dns-failed dest=%s error=\"%s\" permanent=%s", x->key,
			 mx_strerror(status), perm ? "yes" : "no");
		if (!d->closing)
			dest_fail_queued(x, perm, &dg, "");
		dest_maybe_free(x);
		delivery_maybe_done(d);
		return;
	}
	dest_pump(x);
	dest_maybe_free(x);
}

static struct dconn *conn_new(struct ddest *x, struct djob *j);
static bool conn_reuse(struct ddest *x);
static void conn_idle_leave(struct dconn *c);

/* Starts what the destination may start: a lookup, or connections for its queued jobs.  Never
 * frees x (the caller calls dest_maybe_free). */
static void
dest_pump(struct ddest *x)
{
	struct delivery *d = x->d;
	if (d->closing || x->nqueued == 0)
		return;
	if (x->state == DEST_RESOLVING)
		return;
	if (x->state == DEST_READY && now_ms() >= x->mx_expires_ms && x->nconn == 0)
		x->state = DEST_NEW;
	if (x->state == DEST_NEW) {
		struct mta_diag dg = {.code = 451, .local = true};
		if (d->resolver == NULL) {
			snprintf(dg.enh, sizeof(dg.enh), "4.4.3");
			snprintf(dg.text, sizeof(dg.text), "451 4.4.3 no DNS server configured");
			dest_fail_queued(x, false, &dg, "");
			return;
		}
		if (x->host[0] == '\0') {
			dg.code = 550;
			snprintf(dg.enh, sizeof(dg.enh), "5.1.2");
			snprintf(dg.text, sizeof(dg.text), "550 5.1.2 bad destination domain");
			dest_fail_queued(x, true, &dg, "");
			return;
		}
		x->state = DEST_RESOLVING;
		d->st.dns_lookups++;
		int rc = x->no_mx ? resolver_host(d->resolver, x->host, resolve_cb, x)
				  : resolver_mx(d->resolver, x->host, resolve_cb, x);
		if (rc != 0) {
			x->state = DEST_NEW;
			bool perm = rc == -EINVAL;
			dg.code = perm ? 550 : 451;
			snprintf(dg.enh, sizeof(dg.enh), perm ? "5.1.2" : "4.4.3");
			snprintf(dg.text, sizeof(dg.text), "%d %s %s: lookup failed (%s)", dg.code,
				 dg.enh, x->host, strerror(-rc));
			dest_fail_queued(x, perm, &dg, "");
		}
		return;
	}
	while (x->nqueued > 0 && conn_reuse(x))
		;
	if (x->nqueued > 0 && (uint64_t)d->nconn >= d->cfg->max_deliveries &&
	    (uint64_t)x->nconn < d->cfg->max_connections_per_destination) {
		/* every slot is taken: close the oldest idle connection of another route */
		for (struct dconn *ic = d->idle_head; ic != NULL; ic = ic->gnext)
			if (ic->dest != x) {
				conn_idle_leave(ic);
				mta_session_quit(&ic->sess);
				conn_process(ic);
				break;
			}
	}
	while (x->nqueued > 0 && (uint64_t)x->nconn < d->cfg->max_connections_per_destination &&
	       (uint64_t)d->nconn < d->cfg->max_deliveries) {
		struct djob *j = dest_take(x);
		if (j == NULL)
			break; /* the rate limit: the ownership tick pumps again */
		if (conn_new(x, j) == NULL) {
			struct mta_diag dg = {.code = 451, .local = true};
			snprintf(dg.enh, sizeof(dg.enh), "4.3.0");
			snprintf(dg.text, sizeof(dg.text), "451 4.3.0 out of memory");
			job_finish_all(j, false, &dg, "");
			break;
		}
	}
	if (x->nqueued > 0 && (uint64_t)d->nconn >= d->cfg->max_deliveries)
		d->slot_waiters = true; /* a closing connection calls dests_pump_all */
}

/* A connection slot freed: let waiting destinations use it. */
static void
dests_pump_all(struct delivery *d)
{
	if (!d->slot_waiters)
		return;
	d->slot_waiters = false;
	struct ddest *x, *next;
	for (x = d->dest_list; x && (uint64_t)d->nconn < d->cfg->max_deliveries; x = next) {
		next = x->next;
		if (x->nqueued > 0 && x->state == DEST_READY) {
			dest_pump(x);
			dest_maybe_free(x);
		}
	}
	if (x != NULL)
		d->slot_waiters = true; /* the slots ran out before the list did */
}

/* ------------------------------------------------------------ connections */

static void
conn_idle_enter(struct dconn *c)
{
	struct delivery *d = c->d;
	struct ddest *x = c->dest;
	c->idle = true;
	c->iprev = NULL;
	c->inext = x->idle;
	if (x->idle)
		x->idle->iprev = c;
	x->idle = c;
	c->gnext = NULL;
	c->gprev = d->idle_tail;
	if (d->idle_tail)
		d->idle_tail->gnext = c;
	else
		d->idle_head = c;
	d->idle_tail = c;
}

static void
conn_idle_leave(struct dconn *c)
{
	struct delivery *d = c->d;
	struct ddest *x = c->dest;
	if (!c->idle)
		return;
	c->idle = false;
	if (c->iprev)
		c->iprev->inext = c->inext;
	else
		x->idle = c->inext;
	if (c->inext)
		c->inext->iprev = c->iprev;
	if (c->gprev)
		c->gprev->gnext = c->gnext;
	else
		d->idle_head = c->gnext;
	if (c->gnext)
		c->gnext->gprev = c->gprev;
	else
		d->idle_tail = c->gprev;
	c->inext = c->iprev = c->gnext = c->gprev = NULL;
}

/* Gives an idle connection of x the next job of x.  Returns false when x has no idle one. */
static bool
conn_reuse(struct ddest *x)
{
	struct dconn *c = x->idle;
	if (c == NULL || x->nqueued == 0)
		return false;
	struct djob *j = dest_take(x);
	if (j == NULL)
		return false;
	conn_idle_leave(c);
	c->job = j;
	job_txn(j);
	if (mta_session_next(&c->sess, &j->txn) != 0) {
		/* the session moved on (the server said something): give the job back */
		c->job = NULL;
		dest_push(x, j);
		mta_session_quit(&c->sess);
	}
	conn_process(c);
	return true;
}

static void
conn_unref(struct dconn *c)
{
	if (--c->refs > 0)
		return;
	struct delivery *d = c->d;
	struct ddest *x = c->dest;
	if (c->prev)
		c->prev->next = c->next;
	else
		d->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	d->nconn--;
	x->nconn--;
	tls_conn_free(c->tls);
	free(c);
	if (!d->closing) {
		dest_pump(x);
		dests_pump_all(d);
	}
	dest_maybe_free(x);
	delivery_maybe_done(d);
}

static void
conn_timer_closed_cb(uv_handle_t *h)
{
	conn_unref(h->data);
}

static void
sock_closed_cb(uv_handle_t *h)
{
	struct dsock *s = h->data;
	struct dconn *c = s->c;
	free(s);
	if (c != NULL)
		conn_unref(c);
}

/* Closes the current socket (if any); the connection stays. */
static void
conn_drop_sock(struct dconn *c)
{
	struct dsock *s = c->sock;
	if (s == NULL)
		return;
	c->sock = NULL;
	c->connected = false;
	c->reading = false;
	c->in_len = 0;
	c->wbytes = 0; /* pending write callbacks see c == NULL via the socket... */
	tls_conn_free(c->tls);
	c->tls = NULL;
	c->tls_state = CTLS_NONE;
	s->tcp.data = s;
	uv_close((uv_handle_t *)&s->tcp, sock_closed_cb);
}

/* Ends the connection: the job (if any) is done for this run. */
static void
conn_close(struct dconn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	conn_idle_leave(c);
	if (c->job != NULL) {
		struct djob *j = c->job;
		c->job = NULL;
		if (c->d->closing) {
			struct dmsg *m = j->msg;
			job_free(j);
			msg_job_done(m);
		} else {
			job_done(j);
		}
	}
	conn_drop_sock(c);
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, conn_timer_closed_cb);
}

static void conn_timer_cb(uv_timer_t *t);

static void
conn_arm(struct dconn *c, uint64_t ms)
{
	uv_timer_stop(&c->timer);
	if (ms > 0)
		uv_timer_start(&c->timer, conn_timer_cb, ms, 0);
}

static void
write_cb(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct dsock *s = (struct dsock *)req->handle->data;
	struct dconn *c = (s != NULL && s->c != NULL && s->c->sock == s) ? s->c : NULL;
	size_t len = w->len;
	free(w);
	if (c == NULL || c->closing)
		return;
	c->wbytes -= len;
	if (status < 0) {
		mta_session_abort(&c->sess, "write failed");
		conn_process(c);
		return;
	}
	conn_process(c);
}

static int
conn_write_raw(struct dconn *c, const char *buf, size_t len)
{
	if (len == 0 || c->sock == NULL)
		return 0;
	struct write_req *w = malloc(sizeof(*w) + len);
	if (w == NULL)
		return -1;
	memcpy(w->data, buf, len);
	w->len = len;
	uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
	if (uv_write(&w->req, (uv_stream_t *)&c->sock->tcp, &b, 1, write_cb) != 0) {
		free(w);
		return -1;
	}
	c->wbytes += len;
	return 0;
}

static int
conn_flush_tls(struct dconn *c)
{
	char buf[16384];
	size_t n;
	while ((n = tls_conn_take_output(c->tls, buf, sizeof(buf))) > 0)
		if (conn_write_raw(c, buf, n) != 0)
			return -1;
	return 0;
}

/* Moves the machine's output to the socket, within DLV_WRITE_MAX. */
static int
conn_flush(struct dconn *c)
{
	static char chunk[DLV_WRITE_CHUNK];
	while (c->wbytes < DLV_WRITE_MAX && c->sock != NULL && c->connected) {
		struct mta_iov iov[16];
		size_t k = mta_session_output(&c->sess, iov, 16);
		if (k == 0)
			break;
		size_t n = 0;
		for (size_t i = 0; i < k && n < sizeof(chunk); i++) {
			size_t take = iov[i].len;
			if (take > sizeof(chunk) - n)
				take = sizeof(chunk) - n;
			memcpy(chunk + n, iov[i].base, take);
			n += take;
		}
		if (n == 0)
			break;
		int rc = c->tls_state == CTLS_ON
			     ? (tls_conn_write(c->tls, chunk, n) == 0 ? conn_flush_tls(c) : -1)
			     : conn_write_raw(c, chunk, n);
		if (rc != 0)
			return -1;
		mta_session_output_done(&c->sess, n);
	}
	return 0;
}

static void
alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];
	struct dsock *s = h->data;
	struct dconn *c = s->c;
	(void)suggested;
	if (c != NULL && c->tls_state == CTLS_NONE)
		*buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - c->in_len));
	else
		*buf = uv_buf_init(slab, sizeof(slab));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void
conn_update_reading(struct dconn *c)
{
	if (c->sock == NULL || !c->connected)
		return;
	bool want = !c->closing && c->in_len < sizeof(c->in);
	if (want && !c->reading) {
		if (uv_read_start((uv_stream_t *)&c->sock->tcp, alloc_cb, read_cb) == 0)
			c->reading = true;
	} else if (!want && c->reading) {
		uv_read_stop((uv_stream_t *)&c->sock->tcp);
		c->reading = false;
	}
}

static int
conn_tls_pull(struct dconn *c)
{
	while (c->in_len < sizeof(c->in)) {
		ssize_t n = tls_conn_read(c->tls, c->in + c->in_len, sizeof(c->in) - c->in_len);
		if (n == 0)
			break;
		if (n < 0)
			return -1;
		c->in_len += (size_t)n;
	}
	return conn_flush_tls(c);
}

static void
conn_tls_input(struct dconn *c, const char *buf, size_t len)
{
	char err[256];
	if (tls_conn_feed(c->tls, buf, len) != 0) {
		mta_session_abort(&c->sess, "TLS input failed");
		return;
	}
	if (c->tls_state == CTLS_HANDSHAKE) {
		int hs = tls_conn_handshake(c->tls, err, sizeof(err));
		if (conn_flush_tls(c) != 0) {
			mta_session_abort(&c->sess, "write failed");
			return;
		}
		if (hs == 0)
			return;
		if (hs < 0) {
			log_info("-", "event=tls-failed relay=%s reason=\"%s\"", c->relay, err);
			c->tls_failed = true;
			mta_session_tls_done(&c->sess, false);
			return;
		}
		char desc[128];
		log_debug("-", "event=tls relay=%s tls=\"%s\"", c->relay,
			  tls_conn_describe(c->tls, desc, sizeof(desc)));
		c->tls_state = CTLS_ON;
		mta_session_tls_done(&c->sess, true);
	}
	if (conn_tls_pull(c) != 0)
		mta_session_abort(&c->sess, "TLS session ended");
}

static void
read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
	struct dsock *s = st->data;
	struct dconn *c = s->c;
	if (c == NULL || c->sock != s || c->closing)
		return;
	if (nread < 0) {
		mta_session_abort(&c->sess, nread == UV_EOF ? "connection closed by server"
							    : uv_strerror((int)nread));
		conn_process(c);
		return;
	}
	if (nread == 0)
		return;
	if (c->tls_state != CTLS_NONE)
		conn_tls_input(c, buf->base, (size_t)nread);
	else
		c->in_len += (size_t)nread; /* read straight into c->in */
	conn_process(c);
}

/* Starts the session's transaction for the connection's job. */
static void
conn_start_session(struct dconn *c)
{
	job_txn(c->job);
	c->mcfg.helo_name = c->d->cfg->hostname;
	c->mcfg.tls = c->dest->tls_required ? MTA_TLS_REQUIRED
		      : c->tls_plain_retry   ? MTA_TLS_NONE
					     : MTA_TLS_OPPORTUNISTIC;
	c->mcfg.tls_active = false;
	if (c->d->tls == NULL && c->mcfg.tls == MTA_TLS_OPPORTUNISTIC)
		c->mcfg.tls = MTA_TLS_NONE;
	mta_session_init(&c->sess, &c->mcfg, &c->job->txn);
}

static void
connect_cb(uv_connect_t *req, int status)
{
	struct dsock *s = req->data;
	struct dconn *c = s->c;
	if (c == NULL || c->sock != s || c->closing)
		return;
	if (status < 0) {
		struct mta_diag *dg = &c->job->last;
		dg->code = 451;
		dg->local = true;
		snprintf(dg->enh, sizeof(dg->enh), "4.4.1");
		snprintf(dg->text, sizeof(dg->text), "451 4.4.1 connect to %s: %s", c->relay,
			 uv_strerror(status));
		snprintf(c->job->last_relay, sizeof(c->job->last_relay), "%s", c->relay);
		log_debug(c->job->msg->qid, "event=connect-failed relay=%s error=%s", c->relay,
			  uv_strerror(status));
		conn_next_address(c);
		return;
	}
	c->connected = true;
	uv_tcp_nodelay(&s->tcp, 1);
	c->d->st.connections++;
	conn_start_session(c);
	conn_process(c);
}

/* Connects to the current (host_i, addr_i); returns 0 or -1 (try the next). */
static int
conn_connect(struct dconn *c)
{
	struct mx_host *h = &c->mx.hosts[c->host_i];
	struct mx_addr *a = &h->addrs[c->addr_i];
	struct sockaddr_storage ss;
	char abuf[INET6_ADDRSTRLEN];
	memset(&ss, 0, sizeof(ss));
	if (a->family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)c->dest->port);
		memcpy(&sin->sin_addr, a->addr, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)c->dest->port);
		memcpy(&sin6->sin6_addr, a->addr, 16);
	}
	inet_ntop(a->family, a->addr, abuf, sizeof(abuf));
	snprintf(c->relay, sizeof(c->relay), "%s[%s]:%u", h->name, abuf, c->dest->port);
	struct dsock *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -1;
	s->c = c;
	uv_tcp_init(c->d->loop, &s->tcp);
	s->tcp.data = s;
	s->creq.data = s;
	c->sock = s;
	c->refs++;
	c->in_len = 0;
	c->wbytes = 0;
	int rc = uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&ss, connect_cb);
	if (rc != 0) {
		struct mta_diag *dg = &c->job->last;
		dg->code = 451;
		dg->local = true;
		snprintf(dg->enh, sizeof(dg->enh), "4.4.1");
		snprintf(dg->text, sizeof(dg->text), "451 4.4.1 connect to %s: %s", c->relay,
			 uv_strerror(rc));
		conn_drop_sock(c);
		return -1;
	}
	conn_arm(c, c->d->cfg->connect_timeout_ms);
	return 0;
}

/* The current address failed for the job: try the next address, then the next host; when all
 * failed the job is deferred (and, if no host ever answered, every job waiting on the route). */
static void
conn_next_address(struct dconn *c)
{
	conn_drop_sock(c);
	if (c->closing)
		return;
	struct ddest *x = c->dest;
	for (;;) {
		if (c->tls_plain_retry && c->tls_failed) {
			/* retry this very address in plaintext (opportunistic TLS failed) */
			c->tls_failed = false;
		} else {
			c->tls_plain_retry = false;
			c->tls_failed = false;
			if (++c->addr_i >= c->mx.hosts[c->host_i].naddrs) {
				c->addr_i = 0;
				c->host_i++;
			}
		}
		if (c->host_i >= c->mx.nhosts || c->job == NULL || c->d->closing)
			break;
		if (conn_connect(c) == 0)
			return;
	}
	if (c->job != NULL && !c->reached && !c->d->closing) {
		/* No host of the route answered: the jobs waiting here would fail alike. */
		struct mta_diag dg = c->job->last;
		char relay[DLV_RELAY_MAX];
		snprintf(relay, sizeof(relay), "%s", c->job->last_relay);
		if (dg.code != 0)
			dest_fail_queued(x, false, &dg, relay);
	}
	conn_close(c);
}

static void
conn_timer_cb(uv_timer_t *t)
{
	struct dconn *c = t->data;
	if (c->closing)
		return;
	if (c->sock != NULL && !c->connected) {
		struct mta_diag *dg = &c->job->last;
		dg->code = 451;
		dg->local = true;
		snprintf(dg->enh, sizeof(dg->enh), "4.4.1");
		snprintf(dg->text, sizeof(dg->text), "451 4.4.1 connect to %s: timed out", c->relay);
		snprintf(c->job->last_relay, sizeof(c->job->last_relay), "%s", c->relay);
		conn_next_address(c);
		return;
	}
	if (c->idle) {
		conn_idle_leave(c);
		mta_session_quit(&c->sess);
		conn_process(c);
		return;
	}
	log_info(c->job ? c->job->msg->qid : "-", "event=timeout relay=%s state=%s", c->relay,
		 mta_state_name(c->sess.state));
	mta_session_abort(&c->sess, "timeout");
	conn_process(c);
}

/* A transaction ended; the job's recipients have their results or are pending. */
static void
conn_txn_done(struct dconn *c)
{
	struct djob *j = c->job;
	c->reached = true;
	job_harvest(j, c->relay);
	if (job_has_pending(j)) {
		/* 4xx to MAIL/DATA/dot: this host failed for it; the next host gets it */
		j->last = j->txn.diag;
		snprintf(j->last_relay, sizeof(j->last_relay), "%s", c->relay);
		mta_session_quit(&c->sess);
		return;
	}
	c->reached = true;
	c->job = NULL;
	c->nmsgs++;
	c->d->st.messages_sent++;
	job_done(j);
	if (c->closing)
		return;
	struct djob *next = NULL;
	if (!c->d->closing && c->nmsgs < c->d->cfg->max_messages_per_connection)
		next = dest_take(c->dest);
	if (next == NULL) {
		if (!c->d->closing && c->nmsgs < c->d->cfg->max_messages_per_connection)
			conn_idle_enter(c); /* conn_process arms DLV_IDLE_MS */
		else
			mta_session_quit(&c->sess);
		return;
	}
	c->job = next;
	job_txn(next);
	if (mta_session_next(&c->sess, &next->txn) != 0)
		mta_session_quit(&c->sess);
}

/* The session closed. */
static void
conn_session_closed(struct dconn *c)
{
	struct djob *j = c->job;
	conn_idle_leave(c);
	if (j != NULL) {
		job_harvest(j, c->relay);
		if (c->sess.close_reason == MTA_CLOSE_NEXT_HOST && c->sess.diag.code != 0) {
			j->last = c->sess.diag;
			snprintf(j->last_relay, sizeof(j->last_relay), "%s", c->relay);
		}
		if (job_has_pending(j)) {
			if (c->tls_failed && !c->dest->tls_required)
				c->tls_plain_retry = true;
			conn_next_address(c);
			return;
		}
		c->job = NULL;
		job_done(j);
	}
	conn_close(c);
}

/* Runs the machine over the buffered input and acts on its events.  Never frees c. */
static void
conn_process(struct dconn *c)
{
	if (!c->connected)
		return; /* the session of this attempt starts in connect_cb */
	while (!c->closing && c->sock != NULL) {
		bool open = c->sess.state != MTA_S_CLOSED;
		if (open && conn_flush(c) != 0)
			mta_session_abort(&c->sess, "write failed"); /* -> MTA_EV_CLOSED below */
		/* plaintext OpenSSL still holds (it did not fit in c->in last time) */
		else if (open && c->tls_state == CTLS_ON && c->in_len < sizeof(c->in) &&
			 conn_tls_pull(c) != 0)
			mta_session_abort(&c->sess, "TLS session ended");
		enum mta_event ev = mta_session_event(&c->sess);
		if (ev == MTA_EV_NONE) {
			if (c->in_len == 0)
				break;
			size_t n = mta_session_feed(&c->sess, c->in, c->in_len);
			if (n == 0 && mta_session_event(&c->sess) == MTA_EV_NONE) {
				if (c->in_len >= sizeof(c->in))
					mta_session_abort(&c->sess, "reply too long");
				else
					break;
			}
			if (n > 0) {
				memmove(c->in, c->in + n, c->in_len - n);
				c->in_len -= n;
			}
			continue;
		}
		if (ev == MTA_EV_STARTTLS) {
			if (c->tls_state != CTLS_NONE)
				break; /* handshaking */
			c->in_len = 0;
			char err[64];
			c->tls = tls_conn_new_client(c->d->tls, c->mx.hosts[c->host_i].name);
			if (c->tls == NULL) {
				c->tls_failed = true;
				mta_session_tls_done(&c->sess, false);
				continue;
			}
			c->tls_state = CTLS_HANDSHAKE;
			if (tls_conn_handshake(c->tls, err, sizeof(err)) < 0 || conn_flush_tls(c) != 0) {
				c->tls_failed = true;
				mta_session_tls_done(&c->sess, false);
				continue;
			}
			break;
		}
		if (ev == MTA_EV_TXN_DONE) {
			if (c->idle)
				break; /* waiting for a job (conn_reuse) or the idle timeout */
			if (c->job == NULL) {
				mta_session_quit(&c->sess);
				continue;
			}
			conn_txn_done(c);
			continue;
		}
		if (ev == MTA_EV_CLOSED) {
			conn_session_closed(c);
			return;
		}
		break;
	}
	if (c->closing || c->sock == NULL)
		return;
	conn_update_reading(c);
	conn_arm(c, c->idle ? DLV_IDLE_MS : mta_session_timeout_ms(&c->sess));
}

static struct dconn *
conn_new(struct ddest *x, struct djob *j)
{
	struct delivery *d = x->d;
	struct dconn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->d = d;
	c->dest = x;
	c->job = j;
	c->mx = *x->mx;
	uv_timer_init(d->loop, &c->timer);
	c->timer.data = c;
	c->refs = 1;
	c->next = d->conns;
	if (d->conns)
		d->conns->prev = c;
	d->conns = c;
	d->nconn++;
	x->nconn++;
	d->st.jobs_started++;
	c->host_i = 0;
	c->addr_i = 0;
	if (c->mx.nhosts == 0 || conn_connect(c) != 0) {
		/* next_address advances from (0,0): pretend we tried it */
		conn_next_address(c);
	}
	return c;
}

/* ------------------------------------------------------------ scheduler */

/* Splits a due message into jobs and queues them on their destinations.  Returns 0, -2 when its
 * body is not in the store yet, or -1 when it cannot be read now. */
static int
sched_start_msg(struct delivery *d, const struct queue_msg *qm, uint64_t now)
{
	struct dmsg *m = calloc(1, sizeof(*m));
	if (m == NULL)
		return -1;
	m->d = d;
	snprintf(m->qid, sizeof(m->qid), "%s", qm->queue_id);
	void *body = NULL;
	size_t blen = 0;
	int rc = queue_fsm_read_record(d->q, qm->queue_id, &m->rec);
	if (rc == 0)
		rc = queue_fsm_read_body(d->q, qm->queue_id, &body, &blen);
	if (rc != 0) {
		/* ENOTFOUND for the body: the Accept was applied, its batch is not written yet */
		bool m_rec_ok = m->rec != NULL;
		if (rc != QUEUE_ENOTFOUND || m->rec == NULL)
			log_warn(qm->queue_id, "event=read-failed error=\"%s\"", queue_strerror(rc));
		if (m->rec)
			relay__queue_record__free_unpacked(m->rec, NULL);
		free(m);
		/* A missing body long after arrival is not the pending write: a damaged store.
		 * Retried every second (and logged), never spun on. */
		if (rc == QUEUE_ENOTFOUND && m_rec_ok && now < qm->received_ms + 10000)
			return -2;
		if (rc == QUEUE_ENOTFOUND && m_rec_ok)
			log_warn(qm->queue_id, "event=read-failed error=\"body missing\"");
		return -1;
	}
	m->body = body;
	m->body_len = blen;
	m->body_8bit = (m->rec->has_body_type && m->rec->body_type == 1) ||
		       mta_body_is_8bit(m->body, m->body_len);
	if (xtext_decode(m->rec->envid, m->envid, sizeof(m->envid)) == NULL)
		m->envid[0] = '\0';
	m->res = calloc(m->rec->n_rcpts ? m->rec->n_rcpts : 1, sizeof(*m->res));
	if (m->res == NULL) {
		free(body);
		relay__queue_record__free_unpacked(m->rec, NULL);
		free(m);
		return -1;
	}
	uint64_t h = hash_str(m->qid) % DLV_HASH_BUCKETS;
	m->hnext = d->msgs[h];
	d->msgs[h] = m;
	d->nmsgs++;
	d->inflight_bytes += blen;
	m->njobs = 1; /* held while the jobs are made */

	/* Group the due recipients by destination, at most MTA_MAX_RCPTS per job. */
	const Relay__QueueRecord *rec = m->rec;
	struct djob *open[16];
	size_t nopen = 0;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		const Relay__QueueRcpt *qr = rec->rcpts[i];
		if (qr->state != RELAY__RCPT_STATE__RCPT_QUEUED)
			continue;
		if (qr->has_next_attempt_ms && qr->next_attempt_ms > now)
			continue;
		/* Only the recipients of domains this node owns, at the epoch it owns them (G4). */
		char dom[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
		uint64_t ep = 0;
		queue_addr_domain(qr->rcpt->addr, dom);
		if (queue_fsm_domain_owner(d->q, dom, owner, &ep) != 0 ||
		    !own_may_start(&d->own, now, d->self_state, owner, ep, ep))
			continue;
		m->res[i].epoch = ep;
		struct ddest *x = dest_get(d, qr->rcpt->addr);
		m->res[i].in_job = true;
		if (x == NULL) {
			struct rcpt_result *r = &m->res[i];
			r->kind = RES_FAILED;
			snprintf(r->status, sizeof(r->status), "5.1.2");
			r->reply = xstrdup("550 5.1.2 bad destination (route)");
			r->relay = xstrdup("");
			continue;
		}
		struct djob *j = NULL;
		for (size_t k = 0; k < nopen; k++)
			if (open[k]->dest == x && open[k]->n < MTA_MAX_RCPTS) {
				j = open[k];
				break;
			}
		if (j == NULL) {
			j = calloc(1, sizeof(*j));
			if (j == NULL) {
				m->res[i].in_job = false;
				continue;
			}
			j->msg = m;
			j->dest = x;
			m->njobs++;
			if (nopen == sizeof(open) / sizeof(open[0])) {
				dest_push(open[0]->dest, open[0]);
				dest_pump(open[0]->dest);
				memmove(open, open + 1, (nopen - 1) * sizeof(open[0]));
				nopen--;
			}
			open[nopen++] = j;
		}
		struct mta_rcpt *r = &j->rc[j->n];
		memset(r, 0, sizeof(*r));
		r->addr = qr->rcpt->addr;
		r->notify = notify_from_queue(qr->rcpt);
		r->orcpt = NULL;
		if (qr->rcpt->orcpt != NULL && qr->rcpt->orcpt[0] != '\0') {
			char buf[MTA_ORCPT_MAX + 1];
			if (orcpt_decode(qr->rcpt->orcpt, buf, sizeof(buf)) != NULL)
				r->orcpt = j->orcpt[j->n] = strdup(buf);
		}
		r->state = MTA_RCPT_PENDING;
		j->idx[j->n++] = (uint32_t)i;
	}
	struct ddest *touched[sizeof(open) / sizeof(open[0])];
	size_t nt = 0;
	for (size_t k = 0; k < nopen; k++) {
		struct ddest *x = open[k]->dest;
		dest_push(x, open[k]);
		bool seen = false;
		for (size_t t = 0; t < nt; t++)
			seen |= touched[t] == x;
		if (!seen)
			touched[nt++] = x;
	}
	for (size_t t = 0; t < nt; t++)
		dest_pump(touched[t]);
	for (size_t t = 0; t < nt; t++)
		dest_maybe_free(touched[t]); /* those a synchronous failure left empty */
	msg_job_done(m); /* drop the hold: completes at once when no job was made */
	return 0;
}

static uint64_t
sched_inflight_max(const struct delivery *d)
{
	return d->cfg->max_deliveries * DLV_INFLIGHT_PER_SLOT;
}

struct scan_ctx {
	struct delivery *d;
	uint64_t now;
	size_t room;	   /* messages we may still start */
	size_t n;
	char (*ids)[QUEUE_ID_MAX + 1]; /* due and not in flight, in next-attempt order */
	uint64_t next_due; /* earliest next attempt not due yet and not in flight */
};

static int
scan_cb(void *arg, const struct queue_item *it)
{
	struct scan_ctx *sc = arg;
	const struct queue_msg *m = it->msg;
	if (msg_find(sc->d, m->queue_id) != NULL)
		return 0; /* in flight */
	if (it->next_attempt_ms > sc->now) {
		sc->next_due = it->next_attempt_ms;
		return 1;
	}
	/* A message with several due domains of ours shows up once per domain: the start loop
	 * skips the copies (msg_find), they only take a slot of this scan. */
	if (sc->n == sc->room) {
		return 1; /* full: a finishing message asks for a new scan */
	}
	snprintf(sc->ids[sc->n++], QUEUE_ID_MAX + 1, "%s", m->queue_id);
	return 0;
}

/* Starts the due items this node owns (queue_fsm_due_owned) whose messages are not in flight,
 * within the in-memory bounds, in next-attempt order; arms the timer for the earliest one not
 * due yet.  Nothing starts without a lease and the LIVE state (the ownership tick asks for a
 * scan when they come back).  Cost: O(k log k) for the k items in flight or started, whatever
 * the queue size. */
static void
sched_scan(struct delivery *d)
{
	d->scan_wanted = false;
	if (d->closing)
		return;
	uint64_t now = now_ms();
	uv_timer_stop(&d->sched_timer);
	d->armed_ms = 0;
	if (!own_may_act(&d->own, now, d->self_state))
		return; /* own_tick_cb rescans when this node may start again */
	uint64_t max = sched_inflight_max(d);
	size_t room = d->nmsgs < max ? (size_t)(max - d->nmsgs) : 0;
	if (d->inflight_bytes >= DLV_INFLIGHT_BYTES_MAX)
		room = 0;
	struct scan_ctx sc = {.d = d, .now = now, .room = room, .next_due = UINT64_MAX};
	if (room > 0 && (sc.ids = malloc(room * sizeof(*sc.ids))) == NULL)
		room = sc.room = 0;
	if (room == 0) {
		free(sc.ids);
		return; /* a finishing message asks for a new scan */
	}
	/* Items of in-flight messages are skipped; a message has at most QUEUE_RCPTS_MAX domains. */
	int rc = queue_fsm_due_owned(d->q, d->own.self, UINT64_MAX, scan_cb, &sc,
				     (d->nmsgs + room + 1) * 4 + 64);
	uint64_t retry_at = UINT64_MAX;
	if (rc < 0)
		retry_at = now + 1000;
	for (size_t i = 0; i < sc.n; i++) {
		const struct queue_msg *qm = queue_fsm_lookup(d->q, sc.ids[i]);
		if (qm == NULL || msg_find(d, sc.ids[i]) != NULL)
			continue;
		if (d->inflight_bytes >= DLV_INFLIGHT_BYTES_MAX) {
			retry_at = now; /* the next finishing message rescans */
			break;
		}
		int st = sched_start_msg(d, qm, now);
		if (st == -2 && now + 20 < retry_at)
			retry_at = now + 20; /* body not written yet: the cluster's next write */
		else if (st != 0 && now + 1000 < retry_at)
			retry_at = now + 1000;
	}
	free(sc.ids);
	uint64_t next = sc.next_due < retry_at ? sc.next_due : retry_at;
	if (next != UINT64_MAX && next > now) {
		d->armed_ms = next;
		uv_timer_start(&d->sched_timer, sched_timer_cb, next - now, 0);
	}
}

static void
sched_timer_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	d->armed_ms = 0;
	sched_scan(d);
}

/* Asks for a scan at the end of this loop turn (check_cb), coalesced; the zero timer makes sure
 * the loop does not block in poll first when the request comes from a timer or close callback. */
static void
sched_request(struct delivery *d)
{
	if (d->closing || d->scan_wanted)
		return;
	d->scan_wanted = true;
	d->armed_ms = 0;
	uv_timer_start(&d->sched_timer, sched_timer_cb, 0, 0);
}

/* Once per loop turn: scan when asked to, or when the queue changed (commands applied). */
static void
check_cb(uv_check_t *h)
{
	struct delivery *d = h->data;
	if (d->closing)
		return;
	struct cluster_stats st;
	cluster_stats(d->cluster, &st);
	if (st.applied_index != d->seen_applied) {
		d->seen_applied = st.applied_index;
		d->scan_wanted = true; /* the scan below */
	}
	if (d->scan_wanted)
		sched_scan(d);
}

/* ------------------------------------------------------------ ownership */

#define DLV_OWN_TICK_MS 100 /* lease, leader verdicts and drain are looked at this often */
#define DLV_OWN_PROPS_MAX (2 * QUEUE_MEMBERS_MAX + 4) /* Member/Renew proposals in flight */

/* A Member or Renew proposal in flight.  Detached (d = NULL) when the engine closes first: the
 * cluster still calls back (at the latest when it closes) and the callback only frees it. */
struct own_prop {
	struct delivery *d;
	bool renew;
	struct own_prop *next, *prev;
};

static void
own_prop_cb(void *arg, int status)
{
	struct own_prop *p = arg;
	struct delivery *d = p->d;
	if (d != NULL) {
		if (p->prev)
			p->prev->next = p->next;
		else
			d->own_props = p->next;
		if (p->next)
			p->next->prev = p->prev;
		d->n_own_props--;
		if (p->renew)
			own_renew_done(&d->own, status == 0, now_ms());
		if (status != 0)
			d->st.own_failures++;
	}
	free(p);
}

/* Proposes cmd for ownership; false when it could not be proposed now. */
static bool
own_propose(struct delivery *d, const Relay__Command *cmd, bool renew)
{
	if (d->closing || d->n_own_props >= DLV_OWN_PROPS_MAX)
		return false;
	struct own_prop *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return false;
	p->d = d;
	p->renew = renew;
	int rc = cluster_propose(d->cluster, cmd, own_prop_cb, p);
	if (rc != 0) {
		free(p);
		d->st.own_failures++;
		return false;
	}
	p->next = d->own_props;
	if (p->next)
		p->next->prev = p;
	d->own_props = p;
	d->n_own_props++;
	return true;
}

/* Proposes Member{node, state}; with expect_renew_index = expect if has_expect, and with
 * expect_since_index = expect_since unless it is 0 (queue_fsm.h). */
static bool
own_propose_member(struct delivery *d, const char *node, uint8_t state, bool has_expect,
		   uint64_t expect, uint64_t expect_since)
{
	Relay__Member mb = RELAY__MEMBER__INIT;
	mb.node = (char *)node;
	mb.state = (Relay__MemberState)state;
	mb.has_at_ms = true;
	mb.at_ms = now_ms();
	if (has_expect) {
		mb.has_expect_renew_index = true;
		mb.expect_renew_index = expect;
	}
	if (expect_since != 0) {
		mb.has_expect_since_index = true;
		mb.expect_since_index = expect_since;
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	cmd.member = &mb;
	bool ok = own_propose(d, &cmd, false);
	if (ok) {
		d->st.member_proposals++;
		log_info("-", "event=member-propose node=%s state=%s", node,
			 queue_member_state_name(state));
	}
	return ok;
}

/* Queued jobs (not on a connection yet) that this node may no longer start end without a
 * result: their recipients stay as they are in the queue (their new owner, or this node once
 * it holds a lease again, starts them). */
static void
own_prune_jobs(struct delivery *d, uint64_t now)
{
	struct djob *drop = NULL;
	for (struct ddest *x = d->dest_list; x; x = x->next) {
		struct djob *keep_head = NULL, *keep_tail = NULL, *j;
		size_t kept = 0;
		while ((j = dest_pop(x)) != NULL) {
			bool ok = j->n > 0;
			if (ok) {
				const Relay__QueueRcpt *qr = j->msg->rec->rcpts[j->idx[0]];
				char dom[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
				uint64_t ep = 0;
				queue_addr_domain(qr->rcpt->addr, dom);
				ok = queue_fsm_domain_owner(d->q, dom, owner, &ep) == 0 &&
				     own_may_start(&d->own, now, d->self_state, owner, ep,
						   j->msg->res[j->idx[0]].epoch);
			}
			j->next = NULL;
			if (ok) {
				if (keep_tail)
					keep_tail->next = j;
				else
					keep_head = j;
				keep_tail = j;
				kept++;
			} else {
				j->next = drop;
				drop = j;
			}
		}
		x->qhead = keep_head;
		x->qtail = keep_tail;
		x->nqueued = kept;
	}
	while (drop != NULL) {
		struct djob *j = drop;
		drop = j->next;
		struct dmsg *m = j->msg;
		for (size_t k = 0; k < j->n; k++)
			m->res[j->idx[k]].in_job = false;
		d->st.jobs_dropped++;
		job_free(j);
		msg_job_done(m);
	}
}

/* Drain timeout: the attempts in flight are cut; their recipients are deferred (due at once). */
static void
own_abandon(struct delivery *d)
{
	d->abandon = true;
	for (struct dconn *c = d->conns, *next; c; c = next) {
		next = c->next;
		conn_close(c);
	}
	log_warn("-", "event=drain-abandon note=\"attempts in flight cut after drain_timeout\"");
}

static void
own_tick_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	if (d->closing)
		return;
	uint64_t now = now_ms();
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(d->q, mem, QUEUE_MEMBERS_MAX);
	d->self_state = -1;
	d->self_since = 0;
	for (size_t i = 0; i < nm; i++)
		if (strcmp(mem[i].node, d->own.self) == 0) {
			d->self_state = mem[i].state;
			d->self_since = mem[i].since_index;
		}
	/* Owner side: be a member, keep the lease. */
	if (own_self_live_due(&d->own, now, d->self_state, !d->own_booted)) {
		if (!own_propose_member(d, d->own.self, QUEUE_MEMBER_LIVE, false, 0, 0))
			d->own.live_proposed_ms = 0; /* try again next tick */
	}
	d->own_booted = true;
	if (own_renew_due(&d->own, now)) {
		Relay__Renew rn = RELAY__RENEW__INIT;
		rn.node = d->own.self;
		rn.has_at_ms = true;
		rn.at_ms = now;
		rn.has_inflight = true;
		rn.inflight = d->nmsgs > UINT32_MAX ? UINT32_MAX : (uint32_t)d->nmsgs;
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
		cmd.renew = &rn;
		own_renew_sent(&d->own, now);
		if (!own_propose(d, &cmd, true))
			own_renew_done(&d->own, false, now);
	}
	/* Drain. */
	switch (own_drain_tick(&d->own, now, d->self_state, d->nmsgs)) {
	case 2:
		own_abandon(d);
		break;
	case 1:
		/* only if still the DRAINING it judged (ownership.h: Drain) */
		if (!own_propose_member(d, d->own.self, QUEUE_MEMBER_DRAINED, false, 0,
					d->self_since))
			d->own.drained_proposed_ms = 0;
		break;
	default:
		break;
	}
	if (d->self_state != QUEUE_MEMBER_DRAINING)
		d->abandon = false;
	/* Leader side: verdicts on the others' leases and on members that left. */
	struct cluster_status cst;
	cluster_status(d->cluster, &cst);
	bool leader = cst.role != NULL && strcmp(cst.role, "leader") == 0;
	const char *conf[CLUSTER_MAX_PEERS];
	size_t nconf = 0;
	for (unsigned i = 0; i < cst.n_peers && nconf < CLUSTER_MAX_PEERS; i++)
		conf[nconf++] = cst.peers[i].name;
	if (!cst.replicated)
		nconf = 0; /* a single node: its id is the only one, nothing to remove */
	struct own_action act[OWN_MAX_ACTIONS];
	size_t na = own_leader_tick(&d->own, now, leader, cst.term, mem, nm, conf, nconf, act,
				    OWN_MAX_ACTIONS);
	for (size_t i = 0; i < na; i++) {
		if (act[i].state == QUEUE_MEMBER_DOWN)
			log_warn("-", "event=lease-lapsed node=%s renew_index=%" PRIu64, act[i].node,
				 act[i].expect_renew_index);
		own_propose_member(d, act[i].node, act[i].state, act[i].has_expect,
				   act[i].expect_renew_index, 0);
	}
	/* Start or stop. */
	bool may = own_may_act(&d->own, now, d->self_state);
	if (may != d->may_start) {
		log_info("-", "event=%s state=%d lease_ms_left=%" PRId64,
			 may ? "ownership-resumed" : "ownership-paused", d->self_state,
			 d->own.lease_until > now ? (int64_t)(d->own.lease_until - now)
						  : -(int64_t)(now - d->own.lease_until));
		d->may_start = may;
		if (may)
			sched_request(d);
	}
	own_prune_jobs(d, now);
	/* Destinations waiting for their rate limit. */
	if (d->rate_waiters) {
		d->rate_waiters = false;
		for (struct ddest *x = d->dest_list; x; x = x->next)
			if (x->nqueued > 0)
				dest_pump(x);
	}
}

/* ------------------------------------------------------------ lifetime */

static int
servers_string(const struct relay_config *cfg, char *out, size_t cap)
{
	size_t o = 0;
	out[0] = '\0';
	if (cfg->dns_servers.n > 0) {
		for (size_t i = 0; i < cfg->dns_servers.n; i++) {
			int n = snprintf(out + o, cap - o, "%s%s", i ? "," : "",
					 cfg->dns_servers.v[i].text);
			if (n < 0 || (size_t)n >= cap - o)
				return -1;
			o += (size_t)n;
		}
		return 0;
	}
	/* Empty dns_servers: the nameservers of /etc/resolv.conf (the resolver never reads it). */
	FILE *f = fopen("/etc/resolv.conf", "r");
	if (f == NULL)
		return 0;
	char line[512];
	while (fgets(line, sizeof(line), f) != NULL) {
		char addr[128];
		if (sscanf(line, " nameserver %127s", addr) != 1)
			continue;
		struct in6_addr a6;
		int n = inet_pton(AF_INET6, addr, &a6) == 1
			    ? snprintf(out + o, cap - o, "%s[%s]:53", o ? "," : "", addr)
			    : snprintf(out + o, cap - o, "%s%s:53", o ? "," : "", addr);
		if (n < 0 || (size_t)n >= cap - o)
			break;
		o += (size_t)n;
	}
	fclose(f);
	return 0;
}

int
delivery_start(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
	       struct delivery **out, char *err, size_t errlen)
{
	struct delivery *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return -1;
	}
	d->loop = loop;
	d->cfg = cfg;
	d->cluster = cluster;
	d->q = cluster_queue(cluster);
	d->retry.base = cfg->retry_base_ms;
	d->retry.max = cfg->retry_max_ms;
	d->retry.lifetime = cfg->queue_lifetime_ms;
	d->retry.jitter_pct = 0;
	if (retry_policy_check(&d->retry) != 0) {
		snprintf(err, errlen, "delivery: bad retry_base/retry_max/queue_lifetime");
		goto err_after_alloc;
	}
	struct timeval tv;
	gettimeofday(&tv, NULL);
	uint64_t seed = ((uint64_t)tv.tv_sec << 20) ^ (uint64_t)tv.tv_usec ^ ((uint64_t)getpid() << 40);
	mx_rng_seed(&d->rng, seed);
	queue_id_gen_init(&d->qid, cfg->node_id, "dsn");
	if (tls_client_ctx_new(&d->tls, err, errlen) != 0)
		goto err_after_alloc;
	char servers[RESOLVER_SERVERS_MAX];
	if (servers_string(cfg, servers, sizeof(servers)) != 0) {
		snprintf(err, errlen, "dns_servers: list too long");
		goto err_after_tls;
	}
	if (servers[0] != '\0') {
		struct resolver_options ro = {
		    .servers = servers,
		    .cache_max = RESOLVER_CACHE_DEFAULT,
		    .seed = seed ^ 0x9e3779b97f4a7c15ull,
		};
		int rc = resolver_new(loop, &ro, &d->resolver);
		if (rc != 0) {
			snprintf(err, errlen, "dns_servers: cannot start the resolver on %s: %s",
				 servers, strerror(-rc));
			goto err_after_tls;
		}
	} else {
		log_warn("-", "event=no-dns-servers note=\"MX routes will be deferred\"");
	}
	uv_timer_init(loop, &d->sched_timer);
	d->sched_timer.data = d;
	uv_timer_init(loop, &d->retry_timer);
	d->retry_timer.data = d;
	uv_check_init(loop, &d->check);
	d->check.data = d;
	uv_check_start(&d->check, check_cb);
	uv_unref((uv_handle_t *)&d->check);
	struct own_config oc = {.self = cfg->node_id,
				.lease_ms = cfg->lease_ms,
				.drain_timeout_ms = cfg->drain_timeout_ms};
	own_init(&d->own, &oc);
	d->self_state = -1;
	uv_timer_init(loop, &d->own_timer);
	d->own_timer.data = d;
	uv_timer_start(&d->own_timer, own_tick_cb, 0, DLV_OWN_TICK_MS);
	d->handles_open = 4;
	sched_request(d); /* resume what is queued and due */
	log_info("-", "event=delivery-started dns=\"%s\" max_deliveries=%" PRIu64
		      " per_destination=%" PRIu64 " retry_base=%" PRIu64 "ms",
		 servers, cfg->max_deliveries, cfg->max_connections_per_destination,
		 cfg->retry_base_ms);
	*out = d;
	return 0;
err_after_tls:
	tls_ctx_free(d->tls);
err_after_alloc:
	free(d);
	return -1;
}

static void
handle_closed_cb(uv_handle_t *h)
{
	struct delivery *d = h->data;
	d->handles_open--;
	delivery_maybe_done(d);
}

static void
delivery_maybe_done(struct delivery *d)
{
	if (!d->closing || d->done_called)
		return;
	if (d->conns != NULL || d->nmsgs > 0 || d->handles_open > 0 || d->resolver != NULL)
		return;
	if (d->dest_list != NULL) {
		/* only idle destinations can remain (a lookup in flight holds its own) */
		for (struct ddest *x = d->dest_list, *next; x; x = next) {
			next = x->next;
			dest_maybe_free(x);
		}
		if (d->dest_list != NULL)
			return;
	}
	void (*done)(void *) = d->done;
	void *arg = d->done_arg;
	d->done_called = true;
	tls_ctx_free(d->tls);
	log_info("-",
		 "event=delivery-stopped connections=%" PRIu64 " messages_sent=%" PRIu64
		 " delivered=%" PRIu64 " deferred=%" PRIu64 " bounced=%" PRIu64 " dsns=%" PRIu64,
		 d->st.connections, d->st.messages_sent, d->st.rcpts_delivered, d->st.rcpts_deferred,
		 d->st.rcpts_failed, d->st.dsns);
	free(d);
	if (done)
		done(arg);
}

void
delivery_close(struct delivery *d, void (*done)(void *arg), void *arg)
{
	d->closing = true;
	d->done = done;
	d->done_arg = arg;
	uv_timer_stop(&d->sched_timer);
	uv_timer_stop(&d->retry_timer);
	uv_check_stop(&d->check);
	uv_close((uv_handle_t *)&d->sched_timer, handle_closed_cb);
	uv_close((uv_handle_t *)&d->retry_timer, handle_closed_cb);
	uv_close((uv_handle_t *)&d->check, handle_closed_cb);
	uv_timer_stop(&d->own_timer);
	uv_close((uv_handle_t *)&d->own_timer, handle_closed_cb);
	/* Member/Renew proposals in flight: the cluster calls them back later; detach them. */
	for (struct own_prop *p = d->own_props; p; p = p->next)
		p->d = NULL;
	d->own_props = NULL;
	d->n_own_props = 0;
	/* Outcome proposals waiting for a retry are dropped: the recipients stay queued. */
	while (d->retry_list != NULL) {
		struct pending_prop *p = d->retry_list;
		d->retry_list = p->next;
		struct dmsg *m = p->msg;
		free(p->packed);
		free(p);
		if (--m->nprops == 0 && m->njobs == 0)
			msg_free(m);
	}
	/* Jobs waiting on destinations end without an outcome. */
	for (struct ddest *x = d->dest_list; x; x = x->next) {
		struct djob *j;
		while ((j = dest_pop(x)) != NULL) {
			struct dmsg *m = j->msg;
			job_free(j);
			msg_job_done(m);
		}
	}
	for (struct dconn *c = d->conns, *next; c; c = next) {
		next = c->next;
		conn_close(c);
	}
	if (d->resolver != NULL) {
		struct resolver *r = d->resolver;
		d->resolver = NULL;
		resolver_close(r); /* lookups in flight get MX_ECANCELED from its close callbacks */
	}
	delivery_maybe_done(d);
}

void
delivery_get_stats(const struct delivery *d, struct delivery_stats *st)
{
	*st = d->st;
	st->renews = d->own.renews;
	st->lease_until_ms = d->own.lease_until;
	st->self_state = d->self_state;
	st->inflight_msgs = d->nmsgs;
	st->active_conns = (uint64_t)d->nconn;
}
