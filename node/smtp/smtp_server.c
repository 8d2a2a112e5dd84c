/*
 * smtp_server.c: libuv + OpenSSL glue for the SMTP session machine (see smtp_server.h).
 *
 * Data path of one connection:
 *   socket -> [tls_conn_feed / tls_conn_read] -> c->in (bounded) -> smtp_session_feed
 *   smtp_session_output -> [tls_conn_write / take_output] -> uv_write (bounded) -> socket
 * Back-pressure: while more than SMTP_CONN_WRITE_MAX bytes wait in uv_write, the machine's
 * output is left where it is, so the machine stops consuming, c->in fills up, and reading stops.
 *
 * Lifetime: a conn is freed only when both its handles are closed and no thread-pool job holds
 * it (c->refs).  A proposal in flight is not a ref: closing detaches it (p->conn = NULL) and the
 * cluster callback frees it later.
 */
#include "smtp_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "auth.h"
#include "cluster.h"
#include "config.h"
#include "dkim_sign.h"
#include "log.h"
#include "proxy.h"
#include "queue_fsm.h" /* the quota windows (queue_fsm_quota) */
#include "queue_id.h"
#include "relay.pb-c.h"
#include "senders.h"
#include "smtp_received.h"
#include "tls.h"

#define SMTP_RECEIVED_MAX 2048

struct conn;

struct proposal {
	struct smtp_server *srv;
	struct conn *conn; /* NULL once the connection gave up on it */
	uint64_t t0;	   /* uv_hrtime at propose */
	uint64_t received_ms;
	char user[SMTP_AUTH_FIELD_MAX + 1];  /* counted under this user ("": none) */
	char client_key[INET6_ADDRSTRLEN + 8]; /* counted under this client ("": none) */
	size_t size;
	size_t nrcpt;
	char queue_id[32];
};

struct auth_job {
	uv_work_t req;
	struct conn *conn;	   /* holds a ref */
	struct auth_table *table; /* a hold: a reload may replace srv->auth meanwhile */
	char user[SMTP_AUTH_FIELD_MAX + 1];
	char pass[SMTP_AUTH_FIELD_MAX + 1];
	int ok;
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
	char id[24];			 /* session id for logs */
	char *in;			 /* owned, SMTP_CONN_INBUF_MAX */
	size_t in_len;
	size_t wbytes; /* queued in uv_write */
	int refs;      /* open handles + jobs */
	bool reading, closing, close_after_write, busy, shutdown_after_message;
	bool awaiting_proxy; /* from proxy_from: the PROXY header comes first */
	bool trusted;	     /* in mynetworks */
	char qkey[INET6_ADDRSTRLEN + 8]; /* the client as quotas count it (quota_client_key) */
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
	bool shutting_down;
	uv_timer_t shutdown_timer;
	void (*done)(void *);
	void *done_arg;
};

static void conn_process(struct conn *c);
static void conn_close(struct conn *c);
static void conn_timer_cb(uv_timer_t *t);
static void conn_refuse(struct conn *c, const char *event, const char *reason);
static void conn_proxy_input(struct conn *c);

const struct smtp_counters *
smtp_server_counters(const struct smtp_server *srv)
{
	return &srv->counters;
}

void
smtp_server_stats(const struct smtp_server *srv, struct smtp_server_stats *st)
{
	*st = srv->stats;
	st->proxy_invalid = srv->proxy_invalid;
	st->proxy_refused = srv->proxy_refused;
	st->sessions_active = 0;
	for (const struct conn *c = srv->conns; c != NULL; c = c->next)
		if (c->sess != NULL && !c->closing)
			st->sessions_active++;
}

static void
stats_latency(struct smtp_server *srv, uint64_t ns)
{
	static const unsigned bounds[SMTP_LATENCY_NBUCKETS] = SMTP_LATENCY_BUCKETS_MS;
	double ms = (double)ns / 1e6;
	for (size_t i = 0; i < SMTP_LATENCY_NBUCKETS; i++)
		if (ms <= bounds[i])
			srv->stats.latency_bucket[i]++;
	srv->stats.latency_count++;
	srv->stats.latency_sum_s += ms / 1000.0;
}

/* ---- helpers ---- */

static uint64_t
now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static void
rfc5322_date(char *buf, size_t cap, time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(buf, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

static bool
conn_in_data(const struct conn *c)
{
	return c->sess != NULL && smtp_session_in_data(c->sess);
}

static void
conn_arm_timer(struct conn *c)
{
	if (c->closing)
		return;
	const struct relay_config *cfg = c->srv->cfg;
	uint64_t t = c->prop != NULL   ? cfg->propose_timeout_ms
		     : conn_in_data(c) ? cfg->data_timeout_ms
				       : cfg->command_timeout_ms;
	uv_timer_stop(&c->timer);
	c->timer.data = c;
	uv_timer_start(&c->timer, conn_timer_cb, t, 0);
}

/* ---- writing ---- */

static void
write_cb(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct conn *c = w->conn;
	c->wbytes -= w->len;
	free(w);
	if (status < 0) {
		conn_close(c);
		return;
	}
	if (c->close_after_write && c->wbytes == 0) {
		conn_close(c);
		return;
	}
	if (!c->closing)
		conn_process(c);
}

static int
conn_write_raw(struct conn *c, const char *buf, size_t len)
{
	if (len == 0 || c->closing)
		return 0;
	struct write_req *w = malloc(sizeof(*w) + len);
	if (w == NULL)
		return -1;
	memcpy(w->data, buf, len);
	w->len = len;
	w->conn = c;
	uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
		free(w);
		return -1;
	}
	c->wbytes += len;
	return 0;
}

/* Moves TLS ciphertext waiting in the wbio to the socket. */
static int
conn_flush_tls(struct conn *c)
{
	char buf[16384];
	size_t n;
	while ((n = tls_conn_take_output(c->tls, buf, sizeof(buf))) > 0)
		if (conn_write_raw(c, buf, n) != 0)
			return -1;
	return 0;
}

/* Moves the machine's output to the socket, within SMTP_CONN_WRITE_MAX. */
static int
conn_flush(struct conn *c)
{
	const char *out;
	size_t len;
	if (c->sess == NULL)
		return 0;
	while (c->wbytes < SMTP_CONN_WRITE_MAX) {
		smtp_session_output(c->sess, &out, &len);
		if (len == 0)
			break;
		size_t n = len;
		if (n > SMTP_CONN_WRITE_MAX - c->wbytes)
			n = SMTP_CONN_WRITE_MAX - c->wbytes;
		int rc;
		if (c->tls_state == CONN_TLS_ON)
			rc = tls_conn_write(c->tls, out, n) == 0 ? conn_flush_tls(c) : -1;
		else
			rc = conn_write_raw(c, out, n);
		if (rc != 0)
			return -1;
		smtp_session_output_consume(c->sess, n);
	}
	return 0;
}

/* ---- reading ---- */

static void
alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[SMTP_READ_CHUNK]; /* one loop thread: reads are consumed before the next */
	*buf = uv_buf_init(slab, sizeof(slab));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void
conn_update_reading(struct conn *c)
{
	bool want = !c->closing && !c->close_after_write && c->in_len < SMTP_CONN_INBUF_MAX;
	if (want && !c->reading) {
		if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
			c->reading = true;
	} else if (!want && c->reading) {
		uv_read_stop((uv_stream_t *)&c->tcp);
		c->reading = false;
	}
}

static int
conn_append(struct conn *c, const char *buf, size_t len)
{
	if (len > SMTP_CONN_INBUF_MAX - c->in_len)
		return -1; /* cannot happen: reading stops before the buffer is full */
	memcpy(c->in + c->in_len, buf, len);
	c->in_len += len;
	return 0;
}

/* Moves decrypted bytes buffered inside OpenSSL into c->in while there is room.  Returns 0 or
 * -1 (the TLS session is over). */
static int
conn_tls_pull(struct conn *c)
{
	while (c->in_len < SMTP_CONN_INBUF_MAX) {
		ssize_t n = tls_conn_read(c->tls, c->in + c->in_len, SMTP_CONN_INBUF_MAX - c->in_len);
		if (n == 0)
			break;
		if (n < 0)
			return -1;
		c->in_len += (size_t)n;
	}
	return conn_flush_tls(c);
}

static void
conn_tls_input(struct conn *c, const char *buf, size_t len)
{
	char err[256];
	if (tls_conn_feed(c->tls, buf, len) != 0) {
		conn_close(c);
		return;
	}
	if (c->tls_state == CONN_TLS_HANDSHAKE) {
		int hs = tls_conn_handshake(c->tls, err, sizeof(err));
		if (conn_flush_tls(c) != 0) {
			conn_close(c);
			return;
		}
		if (hs == 0)
			return;
		if (hs < 0) {
			c->srv->counters.tls_failed++;
			log_info(c->id, "event=tls-failed client=%s reason=\"%s\"", c->addr, err);
			smtp_session_tls_done(c->sess, 0);
			c->busy = false;
			conn_close(c);
			return;
		}
		char desc[128];
		log_info(c->id, "event=tls client=%s tls=\"%s\"", c->addr,
			 tls_conn_describe(c->tls, desc, sizeof(desc)));
		c->tls_state = CONN_TLS_ON;
		c->srv->stats.tls_handshakes++;
		c->busy = false;
		smtp_session_tls_done(c->sess, 1);
	}
	/* Plaintext: read while there is room; the rest stays buffered inside OpenSSL and
	 * conn_process pulls it when the machine has consumed some. */
	if (conn_tls_pull(c) != 0)
		conn_close(c);
}

static void
read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (nread < 0) {
		if (nread != UV_EOF)
			log_info(c->id, "event=read-error client=%s error=%s", c->addr,
				 uv_strerror((int)nread));
		conn_close(c);
		return;
	}
	if (nread == 0)
		return;
	if (c->close_after_write)
		return; /* refused or closing: ignore what the client still sends */
	if (c->awaiting_proxy) {
		if (conn_append(c, buf->base, (size_t)nread) != 0) {
			conn_close(c);
			return;
		}
		conn_proxy_input(c);
		return;
	}
	if (c->sess == NULL)
		return;
	if (!c->first_data && c->tls_state == CONN_TLS_NONE && c->in_len == 0) {
		c->first_data = true;
		if (proxy_looks_like((const uint8_t *)buf->base, (size_t)nread) &&
		    (size_t)nread >= 6) {
			/* a PROXY header from an address not in proxy_from: refused (it could
			 * otherwise claim any client address) */
			c->srv->proxy_refused++;
			smtp_session_free(c->sess);
			c->sess = NULL;
			conn_refuse(c, "proxy-refused", "PROXY header not accepted from your address");
			return;
		}
	}
	if (c->tls_state != CONN_TLS_NONE) {
		conn_tls_input(c, buf->base, (size_t)nread);
	} else if (conn_append(c, buf->base, (size_t)nread) != 0) {
		conn_close(c);
		return;
	}
	if (!c->closing)
		conn_process(c);
}

/* ---- events ---- */

static void
auth_work_cb(uv_work_t *req)
{
	struct auth_job *j = req->data;
	j->ok = auth_table_check(j->table, j->user, j->pass);
}

static void
conn_unref(struct conn *c);

static void
auth_after_cb(uv_work_t *req, int status)
{
	struct auth_job *j = req->data;
	struct conn *c = j->conn;
	char safe[SMTP_AUTH_FIELD_MAX * 4 + 1];
	explicit_bzero(j->pass, sizeof(j->pass));
	auth_table_free(j->table);
	if (!c->closing) {
		int ok = status == 0 && j->ok;
		if (ok)
			c->srv->stats.auth_ok++;
		else
			c->srv->stats.auth_failed++;
		log_info(c->id, "event=auth client=%s user=%s result=%s", c->addr,
			 log_safe(j->user, strlen(j->user), safe, sizeof(safe)),
			 ok ? "ok" : "failed");
		c->busy = false;
		smtp_session_auth_result(c->sess, ok);
		conn_process(c);
	}
	free(j);
	conn_unref(c);
}

static void
conn_start_auth(struct conn *c, const struct smtp_event *ev)
{
	struct auth_job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		smtp_session_auth_result(c->sess, 0);
		return;
	}
	j->conn = c;
	j->req.data = j;
	snprintf(j->user, sizeof(j->user), "%s", ev->auth.user);
	snprintf(j->pass, sizeof(j->pass), "%s", ev->auth.password);
	j->table = auth_table_hold(c->srv->auth); /* before the job can run */
	if (c->srv->auth == NULL ||
	    uv_queue_work(c->srv->loop, &j->req, auth_work_cb, auth_after_cb) != 0) {
		explicit_bzero(j->pass, sizeof(j->pass));
		auth_table_free(j->table);
		free(j);
		smtp_session_auth_result(c->sess, 0);
		return;
	}
	c->refs++;
	c->busy = true;
}

/* ---- quotas (max_messages_per_hour_per_user / _per_client; cluster/queue_fsm.h) ---- */

void
smtp_quota_client_key(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char a[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		struct in6_addr x = ((const struct sockaddr_in6 *)ss)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(&x)) {
			inet_ntop(AF_INET, &x.s6_addr[12], a, sizeof(a));
			snprintf(out, cap, "%s", a);
			return;
		}
		memset(&x.s6_addr[8], 0, 8);
		inet_ntop(AF_INET6, &x, a, sizeof(a));
		snprintf(out, cap, "%s/64", a);
		return;
	}
	inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof(a));
	snprintf(out, cap, "%s", a);
}

/*
 * Is (user, client key) over its quota at at_ms, by this node's applied windows?  1 with the
 * 450 text (naming what is over and when its window resets) in text, else 0.  user or ckey
 * NULL/"": not counted.
 */
static int
quota_over(struct smtp_server *srv, const char *user, const char *ckey, uint64_t at_ms,
	   char *text, size_t cap)
{
	const struct relay_config *cfg = srv->cfg;
	const struct queue_fsm *fsm = cluster_queue(srv->cluster);
	struct queue_quota w;
	struct {
		char kind;
		const char *name, *what;
		uint64_t limit;
	} keys[2] = {
	    {QUEUE_QUOTA_USER, user, "user", cfg->max_messages_per_hour_per_user},
	    {QUEUE_QUOTA_CLIENT, ckey, "client", cfg->max_messages_per_hour_per_client},
	};
	for (int i = 0; i < 2; i++) {
		if (keys[i].limit == 0 || keys[i].name == NULL || keys[i].name[0] == '\0' ||
		    fsm == NULL || queue_fsm_quota(fsm, keys[i].kind, keys[i].name, &w) != 0)
			continue;
		uint64_t end = w.start_ms + QUEUE_QUOTA_WINDOW_MS;
		if (at_ms >= end || w.count < keys[i].limit)
			continue;
		char when[32];
		time_t t = (time_t)(end / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		snprintf(text, cap,
			 "Hourly message quota reached for %s %s (%" PRIu64 " per hour); it resets "
			 "at %s",
			 keys[i].what, keys[i].name, keys[i].limit, when);
		return 1;
	}
	return 0;
}

static void
propose_cb(void *arg, int status)
{
	struct proposal *p = arg;
	struct conn *c = p->conn;
	uint64_t ns = uv_hrtime() - p->t0, ms = ns / 1000000;
	if (c != NULL) {
		stats_latency(p->srv, ns);
		if (status == 0)
			p->srv->stats.accepted++;
		else
			p->srv->stats.accept_failed++;
	}
	char qtext[SMTP_REPLY_TEXT_MAX];
	if (status == CLUSTER_EQUOTA &&
	    !quota_over(p->srv, p->user, p->client_key, p->received_ms, qtext, sizeof(qtext)))
		snprintf(qtext, sizeof(qtext), "Hourly message quota reached; try again later");
	if (status == 0)
		log_info(p->queue_id, "event=queued size=%zu nrcpt=%zu commit_ms=%" PRIu64 "%s",
			 p->size, p->nrcpt, ms, c == NULL ? " client=gone" : "");
	else if (status == CLUSTER_EQUOTA)
		log_info(p->queue_id, "event=reject cmd=DATA code=450 enh=4.7.1 reason=\"%s\"%s",
			 qtext, c == NULL ? " client=gone" : "");
	else
		log_warn(p->queue_id, "event=propose-failed error=\"%s\" commit_ms=%" PRIu64,
			 cluster_strerror(status), ms);
	if (c != NULL) {
		c->prop = NULL;
		c->busy = false;
		char text[96];
		if (status == 0) {
			snprintf(text, sizeof(text), "Ok: queued as %s", p->queue_id);
			smtp_session_message_result(c->sess, 250, "2.0.0", text);
			c->messages++;
		} else if (status == CLUSTER_EQUOTA) {
			p->srv->counters.over_quota++;
			smtp_session_message_result(c->sess, 450, "4.7.1", qtext);
		} else {
			smtp_session_message_result(c->sess, 451, "4.3.0",
						    "Queue unavailable, try again later");
		}
		if (c->shutdown_after_message)
			smtp_session_shutdown(c->sess);
		conn_process(c);
	}
	free(p);
}

static void
conn_reject_message(struct conn *c, const char *why)
{
	log_warn(c->id, "event=message-rejected reason=\"%s\"", why);
	smtp_session_message_result(c->sess, 451, "4.3.0", "Queue unavailable, try again later");
}

/*
 * DKIM (dkim_sign.h): a message of a client from mynetworks or authenticated is signed on the
 * libuv thread pool (an RSA signature costs a fraction of a millisecond: not on the loop),
 * then proposed with its signature.  The job holds a ref on the conn, which keeps the session
 * and so the message body (owned by the pending SMTP_EV_MESSAGE) alive; a conn that closed
 * meanwhile drops the result.
 */
struct sign_job {
	uv_work_t req;
	struct conn *conn;	   /* holds a ref */
	struct dkim_signer *signer; /* borrowed (the server's; read-only) */
	const char *body;	   /* borrowed from the session's pending event */
	size_t body_len;
	uint64_t ms;		   /* receive time: t= and the Accept's received_ms */
	enum dkim_sign_result result;
	char *sig; /* owned: the DKIM-Signature field(s) */
	size_t siglen;
	char domain[256], why[96];
};

static void conn_propose_message(struct conn *c, const struct smtp_event *ev, uint64_t ms,
				 struct sign_job *j);

static void
sign_work_cb(uv_work_t *req)
{
	struct sign_job *j = req->data;
	j->result = dkim_signer_sign(j->signer, j->body, j->body_len, j->ms / 1000, &j->sig,
				     &j->siglen, j->domain, j->why);
}

static void
sign_after_cb(uv_work_t *req, int status)
{
	struct sign_job *j = req->data;
	struct conn *c = j->conn;
	struct smtp_event ev;
	if (status != 0) { /* cancelled: queued unsigned */
		j->result = DKIM_SIGN_FAILED;
		snprintf(j->why, sizeof(j->why), "signing job cancelled");
	}
	if (!c->closing && smtp_session_event(c->sess, &ev) == SMTP_EV_MESSAGE) {
		c->busy = false;
		conn_propose_message(c, &ev, j->ms, j);
		conn_process(c);
	}
	free(j->sig);
	free(j);
	conn_unref(c);
}

static void
conn_start_message(struct conn *c, const struct smtp_event *ev)
{
	struct smtp_server *srv = c->srv;
	uint64_t ms = now_ms();
	if (srv->dkim == NULL || !(c->trusted || ev->message.env->auth_user != NULL)) {
		conn_propose_message(c, ev, ms, NULL);
		return;
	}
	struct sign_job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		conn_reject_message(c, "out of memory");
		return;
	}
	j->req.data = j;
	j->conn = c;
	j->signer = srv->dkim;
	j->body = ev->message.body;
	j->body_len = ev->message.body_len;
	j->ms = ms;
	if (uv_queue_work(srv->loop, &j->req, sign_work_cb, sign_after_cb) != 0) {
		free(j);
		conn_reject_message(c, "cannot queue the signing job");
		return;
	}
	c->refs++;
	c->busy = true;
}

/* Logs and counts a signing result under the message's queue id. */
static void
conn_dkim_log(struct smtp_server *srv, const char *queue_id, const struct sign_job *j)
{
	srv->stats.dkim[j->result == DKIM_SIGNED ? 0 : j->result == DKIM_SIGN_NO_KEY ? 1 : 2]++;
	if (j->result == DKIM_SIGNED)
		log_info(queue_id, "event=dkim-signed d=%s", j->domain);
	else if (j->result == DKIM_SIGN_NO_KEY)
		log_debug(queue_id, "event=dkim-unsigned reason=\"%s\"", j->why);
	else
		log_warn(queue_id, "event=dkim-unsigned reason=\"%s\"", j->why);
}

/* Proposes the message of ev (received at ms) with the signature of j (NULL: unsigned). */
static void
conn_propose_message(struct conn *c, const struct smtp_event *ev, uint64_t ms, struct sign_job *j)
{
	struct smtp_server *srv = c->srv;
	const struct smtp_envelope *env = ev->message.env;
	struct proposal *p = calloc(1, sizeof(*p));
	char hdr[SMTP_RECEIVED_MAX], date[64], caddr[INET6_ADDRSTRLEN + 16];
	if (p == NULL) {
		conn_reject_message(c, "out of memory");
		return;
	}
	queue_id_make(&srv->qid, ms, p->queue_id, sizeof(p->queue_id));
	rfc5322_date(date, sizeof(date), (time_t)(ms / 1000));
	snprintf(caddr, sizeof(caddr), "%s%s", c->peer.ss_family == AF_INET6 ? "IPv6:" : "",
		 c->addr);
	struct smtp_received_info ri = {
	    .helo = env->helo,
	    .client_addr = caddr,
	    .hostname = srv->cfg->hostname,
	    .esmtp = env->esmtp,
	    .tls = env->tls,
	    .auth = env->auth_user != NULL,
	    .smtputf8 = env->smtputf8,
	    .queue_id = p->queue_id,
	    .rcpt = env->n_rcpts == 1 ? env->rcpts[0].addr : NULL,
	    .date = date,
	};
	int hlen = smtp_received_header(hdr, sizeof(hdr), &ri);
	if (hlen < 0)
		hlen = 0;
	const char *sig = j && j->result == DKIM_SIGNED ? j->sig : NULL;
	size_t siglen = sig ? j->siglen : 0;
	if (j != NULL)
		conn_dkim_log(srv, p->queue_id, j);
	size_t blen = (size_t)hlen + siglen + ev->message.body_len;
	uint8_t *body = malloc(blen ? blen : 1);
	Relay__Recipient *rv = calloc(env->n_rcpts, sizeof(*rv));
	Relay__Recipient **rp = calloc(env->n_rcpts, sizeof(*rp));
	if (body == NULL || rv == NULL || rp == NULL) {
		free(body);
		free(rv);
		free(rp);
		free(p);
		conn_reject_message(c, "out of memory");
		return;
	}
	/* our Received:, the DKIM-Signature field(s), then the message as the client sent it */
	memcpy(body, hdr, (size_t)hlen);
	if (siglen)
		memcpy(body + hlen, sig, siglen);
	memcpy(body + (size_t)hlen + siglen, ev->message.body, ev->message.body_len);
	for (size_t i = 0; i < env->n_rcpts; i++) {
		relay__recipient__init(&rv[i]);
		rv[i].addr = (char *)env->rcpts[i].addr;
		rv[i].has_notify = env->rcpts[i].notify != 0;
		rv[i].notify = env->rcpts[i].notify;
		rv[i].orcpt = (char *)env->rcpts[i].orcpt;
		rp[i] = &rv[i];
	}
	Relay__Accept acc = RELAY__ACCEPT__INIT;
	acc.queue_id = p->queue_id;
	acc.mail_from = (char *)env->mail_from;
	acc.n_rcpts = env->n_rcpts;
	acc.rcpts = rp;
	acc.body.data = body;
	acc.body.len = blen;
	acc.received_ms = ms;
	acc.has_ret = env->ret != SMTP_RET_NONE;
	acc.ret = env->ret;
	acc.envid = (char *)env->envid;
	acc.has_smtputf8 = env->smtputf8;
	acc.smtputf8 = env->smtputf8;
	acc.has_body_type = true;
	acc.body_type = env->body;
	acc.client_addr = c->addr;
	acc.helo = (char *)env->helo;
	acc.auth_user = (char *)env->auth_user;
	acc.node_id = srv->cfg->node_id;
	/* quotas: the limits in force here travel with the Accept (queue_fsm.h "Quotas") */
	p->received_ms = ms;
	if (env->auth_user != NULL && srv->cfg->max_messages_per_hour_per_user > 0) {
		acc.has_quota_user = true;
		acc.quota_user = (uint32_t)srv->cfg->max_messages_per_hour_per_user;
		snprintf(p->user, sizeof(p->user), "%s", env->auth_user);
	}
	if (!c->trusted && srv->cfg->max_messages_per_hour_per_client > 0) {
		acc.has_quota_client = true;
		acc.quota_client = (uint32_t)srv->cfg->max_messages_per_hour_per_client;
		acc.client_key = c->qkey;
		snprintf(p->client_key, sizeof(p->client_key), "%s", c->qkey);
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	cmd.accept = &acc;

	p->conn = c;
	p->srv = srv;
	p->t0 = uv_hrtime();
	p->size = blen;
	p->nrcpt = env->n_rcpts;
	char safe[SMTP_PATH_MAX * 4 + 1];
	log_info(p->queue_id, "session=%s client=%s from=<%s> nrcpt=%zu size=%zu%s%s", c->id,
		 c->addr, log_safe(env->mail_from, strlen(env->mail_from), safe, sizeof(safe)),
		 env->n_rcpts, blen, env->tls ? " tls=yes" : "",
		 env->auth_user ? " auth=yes" : "");
	int rc = cluster_propose(srv->cluster, &cmd, propose_cb, p);
	free(body);
	free(rv);
	free(rp);
	if (rc != 0) {
		log_warn(p->queue_id, "event=propose-failed error=\"%s\"", cluster_strerror(rc));
		srv->stats.accept_failed++;
		free(p);
		smtp_session_message_result(c->sess, 451, "4.3.0",
					    "Queue unavailable, try again later");
		return;
	}
	c->prop = p;
	c->busy = true;
	conn_arm_timer(c);
}

/*
 * Runs the machine over the buffered input until it blocks, then dispatches its event.
 * Never frees c (conn_close only starts closing).
 */
static void
conn_process(struct conn *c)
{
	struct smtp_event ev;
	while (!c->closing && c->sess != NULL) {
		if (conn_flush(c) != 0 || (c->tls_state == CONN_TLS_ON && conn_tls_pull(c) != 0)) {
			conn_close(c);
			return;
		}
		if (c->shutdown_after_message && c->prop == NULL && !conn_in_data(c)) {
			c->shutdown_after_message = false;
			smtp_session_shutdown(c->sess);
		}
		enum smtp_event_type t = smtp_session_event(c->sess, &ev);
		if (t == SMTP_EV_NONE && c->in_len > 0) {
			bool was_data = conn_in_data(c);
			size_t n = smtp_session_feed(c->sess, c->in, c->in_len);
			if (n > 0) {
				memmove(c->in, c->in + n, c->in_len - n);
				c->in_len -= n;
			}
			if (conn_flush(c) != 0) {
				conn_close(c);
				return;
			}
			t = smtp_session_event(c->sess, &ev);
			if (was_data != conn_in_data(c) || n > 0)
				conn_arm_timer(c);
			if (n == 0 && t == SMTP_EV_NONE)
				break; /* output above the high-water mark: wait for write_cb */
		}
		if (t == SMTP_EV_NONE) {
			if (c->in_len == 0)
				break;
			continue;
		}
		if (c->busy)
			break; /* already dispatched; waiting for its result */
		switch (t) {
		case SMTP_EV_STARTTLS:
			c->in_len = 0; /* RFC 3207 sec 4: discard what was pipelined after it */
			if (c->srv->tls == NULL || (c->tls = tls_conn_new(c->srv->tls)) == NULL) {
				smtp_session_tls_done(c->sess, 0);
				continue;
			}
			c->tls_state = CONN_TLS_HANDSHAKE;
			c->busy = true;
			break;
		case SMTP_EV_AUTH:
			conn_start_auth(c, &ev);
			continue;
		case SMTP_EV_MESSAGE:
			conn_start_message(c, &ev);
			continue;
		case SMTP_EV_CLOSE:
			if (c->wbytes == 0) {
				conn_close(c);
				return;
			}
			c->close_after_write = true;
			break;
		default:
			break;
		}
		break;
	}
	if (!c->closing)
		conn_update_reading(c);
}

/* ---- timers ---- */

static void
conn_timer_cb(uv_timer_t *t)
{
	struct conn *c = t->data;
	if (c->closing)
		return;
	if (c->awaiting_proxy) {
		c->srv->proxy_invalid++;
		log_info(c->id, "event=proxy-timeout client=%s", c->addr);
		conn_close(c);
		return;
	}
	if (c->sess == NULL || c->close_after_write) {
		conn_close(c);
		return;
	}
	if (c->prop != NULL) {
		/* The cluster did not answer in time: 451, and forget the proposal (it may still
		 * commit; the client's retry then makes a duplicate, G3). */
		log_warn(c->prop->queue_id, "event=propose-timeout session=%s", c->id);
		c->srv->stats.accept_failed++;
		c->prop->conn = NULL;
		c->prop = NULL;
		c->busy = false;
		smtp_session_message_result(c->sess, 451, "4.3.0",
					    "Queue did not answer in time, try again later");
		if (c->shutdown_after_message)
			smtp_session_shutdown(c->sess);
		conn_process(c);
		return;
	}
	if (c->tls_state == CONN_TLS_HANDSHAKE) {
		log_info(c->id, "event=timeout client=%s state=tls-handshake", c->addr);
		c->srv->counters.timeouts++;
		conn_close(c);
		return;
	}
	if (c->busy) {
		conn_arm_timer(c); /* waiting on our own work (AUTH check): not the client's fault */
		return;
	}
	log_info(c->id, "event=timeout client=%s state=%s", c->addr,
		 smtp_session_state_name(c->sess));
	c->srv->counters.timeouts++;
	smtp_session_timeout(c->sess);
	conn_process(c);
}

/* ---- connection lifetime ---- */

static void
server_maybe_done(struct smtp_server *srv);

static void
conn_unref(struct conn *c)
{
	if (--c->refs > 0)
		return;
	struct smtp_server *srv = c->srv;
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	srv->n_conns--;
	smtp_session_free(c->sess);
	tls_conn_free(c->tls);
	free(c->in);
	free(c);
	server_maybe_done(srv);
}

static void
conn_handle_closed_cb(uv_handle_t *h)
{
	conn_unref(h->data);
}

static void
conn_close(struct conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	if (c->prop != NULL) {
		c->prop->conn = NULL;
		c->prop = NULL;
	}
	if (c->sess != NULL)
		log_info(c->id, "event=disconnect client=%s messages=%" PRIu64 " state=%s", c->addr,
			 c->messages, smtp_session_state_name(c->sess));
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->tcp, conn_handle_closed_cb);
	uv_close((uv_handle_t *)&c->timer, conn_handle_closed_cb);
}

/* Open sessions other than nc (closing ones no longer count): in total and from nc's address. */
static void
count_sessions(struct smtp_server *srv, const struct conn *nc, size_t *total, size_t *same)
{
	*total = *same = 0;
	for (struct conn *c = srv->conns; c != NULL; c = c->next) {
		if (c == nc || c->sess == NULL || c->closing)
			continue;
		(*total)++;
		if (strcmp(c->addr, nc->addr) == 0)
			(*same)++;
	}
}

static void
trace_cb(void *arg, const struct smtp_session *s, const char *from, const char *to)
{
	(void)s;
	log_debug((const char *)arg, "event=state from=%s to=%s", from, to);
}

static void
addr_text(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
			inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], out, (socklen_t)cap);
		else
			inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)cap);
	} else {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)cap);
	}
}

/* Refuses the connection with a 421 line, then closes (reading is ignored meanwhile). */
static void
conn_refuse(struct conn *c, const char *event, const char *reason)
{
	char line[300];
	int n = snprintf(line, sizeof(line), "421 4.7.0 %s Error: %s\r\n", c->srv->cfg->hostname,
			 reason);
	log_info(c->id, "event=%s client=%s reason=\"%s\"", event, c->addr, reason);
	c->close_after_write = true;
	uv_timer_stop(&c->timer);
	uv_timer_start(&c->timer, conn_timer_cb, 10000, 0);
	if (conn_write_raw(c, line, (size_t)n) != 0)
		conn_close(c);
}

/*
 * The MAIL FROM policy (smtp_mail_check_cb): clients in mynetworks are not checked; an
 * authenticated client may use only the senders sender_permissions_file gives its user.
 */
static void
conn_mail_check(void *arg, const char *auth_user, const char *mail_from,
		struct smtp_mail_verdict *v)
{
	struct conn *c = arg;
	struct smtp_server *srv = c->srv;
	char safe_from[SMTP_PATH_MAX * 4 + 1], safe_user[SMTP_AUTH_FIELD_MAX * 4 + 1];
	/* an early refusal from the applied windows; the Accept's apply decides in the end */
	if (quota_over(srv, auth_user, c->trusted ? NULL : c->qkey, now_ms(), v->text,
		       sizeof(v->text))) {
		v->code = 450;
		v->reason = SMTP_MAIL_OVER_QUOTA;
		snprintf(v->enh, sizeof(v->enh), "4.7.1");
		log_info(c->id, "event=reject cmd=MAIL code=450 enh=4.7.1 client=%s reason=\"%s\"",
			 c->addr, v->text);
		return;
	}
	if (c->trusted || auth_user == NULL || srv->senders == NULL ||
	    sender_table_allows(srv->senders, auth_user, mail_from))
		return;
	v->code = 553;
	v->reason = SMTP_MAIL_SENDER_DENIED;
	snprintf(v->enh, sizeof(v->enh), "5.7.1");
	snprintf(v->text, sizeof(v->text), "<%s>: Sender address rejected: not owned by user %s",
		 mail_from, auth_user);
	log_info(c->id, "event=reject cmd=MAIL code=553 enh=5.7.1 client=%s user=%s from=<%s> "
			"reason=\"sender not owned by user\"",
		 c->addr, log_safe(auth_user, strlen(auth_user), safe_user, sizeof(safe_user)),
		 log_safe(mail_from, strlen(mail_from), safe_from, sizeof(safe_from)));
}

/*
 * The client is known (the socket's peer, or the one a PROXY header named): apply the
 * connection limits to it, then start the SMTP session and greet.
 */
static void
conn_start_session(struct conn *c)
{
	struct smtp_server *srv = c->srv;
	const struct relay_config *cfg = srv->cfg;
	size_t total, same;
	count_sessions(srv, c, &total, &same);
	if (total >= cfg->max_connections || srv->n_conns > 2 * cfg->max_connections + 64) {
		srv->stats.refused++;
		conn_refuse(c, "refused", "too many connections");
		return;
	}
	if (same >= cfg->max_connections_per_client) {
		srv->stats.refused++;
		conn_refuse(c, "refused", "too many connections from your address");
		return;
	}
	c->trusted = config_cidr_match(&cfg->mynetworks, (const struct sockaddr *)&c->peer);
	smtp_quota_client_key(&c->peer, c->qkey, sizeof(c->qkey));
	struct smtp_session_client client = {
	    .trusted = c->trusted,
	    .tls_active = false,
	    .check_arg = c,
	};
	if (smtp_session_new(&c->sess, &srv->scfg, &client) != 0) {
		conn_close(c);
		return;
	}
	srv->stats.sessions_total++;
	log_info(c->id, "event=connect client=%s trusted=%s%s%s", c->addr,
		 client.trusted ? "yes" : "no", c->via[0] ? " via=" : "", c->via);
	conn_arm_timer(c);
	conn_process(c);
}

/*
 * A connection from a proxy_from address: its first bytes must be a PROXY header (v1 or v2)
 * naming the real client, which then replaces the socket's peer for policy, limits and logs.
 */
static void
conn_proxy_input(struct conn *c)
{
	struct proxy_info pi;
	int rc = proxy_parse((const uint8_t *)c->in, c->in_len, &pi);
	if (rc == 0 && c->in_len < PROXY_V2_MAX)
		return; /* need more */
	if (rc <= 0) {
		c->srv->proxy_invalid++;
		conn_refuse(c, "proxy-invalid", "bad or missing PROXY protocol header");
		return;
	}
	memmove(c->in, c->in + rc, c->in_len - (size_t)rc);
	c->in_len -= (size_t)rc;
	c->awaiting_proxy = false;
	snprintf(c->via, sizeof(c->via), "%s", c->addr);
	if (!pi.local) {
		c->peer = pi.src;
		addr_text(&c->peer, c->addr, sizeof(c->addr));
	}
	log_debug(c->id, "event=proxy version=%d client=%s via=%s%s", pi.version, c->addr, c->via,
		  pi.local ? " local=yes" : "");
	conn_start_session(c);
}

static void
connection_cb(uv_stream_t *l, int status)
{
	struct smtp_server *srv = l->data;
	if (status < 0 || srv->shutting_down)
		return;
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->srv = srv;
	uv_tcp_init(srv->loop, &c->tcp);
	uv_timer_init(srv->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->refs = 2;
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	srv->n_conns++;
	snprintf(c->id, sizeof(c->id), "S%" PRIX64, ++srv->next_sid);
	if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
		conn_close(c);
		return;
	}
	uv_tcp_nodelay(&c->tcp, 1);
	int alen = sizeof(c->peer);
	uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &alen);
	addr_text(&c->peer, c->addr, sizeof(c->addr));
	c->in = malloc(SMTP_CONN_INBUF_MAX);
	if (c->in == NULL) {
		conn_close(c);
		return;
	}
	if (config_cidr_match(&srv->cfg->proxy_from, (const struct sockaddr *)&c->peer)) {
		/* a load balancer: wait for its PROXY header before greeting */
		c->awaiting_proxy = true;
		uv_timer_start(&c->timer, conn_timer_cb, srv->cfg->command_timeout_ms, 0);
		conn_update_reading(c);
		return;
	}
	conn_start_session(c);
}

/* ---- server ---- */

int
smtp_server_start(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
		  struct tls_ctx *tls, struct auth_table *auth, struct sender_table *senders,
		  struct smtp_server **out, char *err, size_t errlen)
{
	struct smtp_server *srv = calloc(1, sizeof(*srv));
	if (srv == NULL) {
		auth_table_free(auth);
		sender_table_free(senders);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	srv->loop = loop;
	srv->cfg = cfg;
	srv->cluster = cluster;
	srv->tls = tls;
	srv->auth = auth;
	srv->senders = senders;
	srv->scfg.hostname = cfg->hostname;
	srv->scfg.max_message_size = cfg->max_message_size;
	srv->scfg.max_recipients = cfg->max_recipients;
	srv->scfg.max_line_length = cfg->max_line_length;
	srv->scfg.max_errors = cfg->max_errors;
	srv->scfg.relay_domains = cfg->relay_domains.v;
	srv->scfg.n_relay_domains = cfg->relay_domains.n;
	srv->scfg.tls_available = tls != NULL;
	srv->scfg.auth_available = auth != NULL;
	srv->scfg.counters = &srv->counters;
	srv->scfg.mail_check = conn_mail_check;
	if (log_enabled(LOG_DEBUG)) {
		srv->scfg.trace_cb = trace_cb;
		srv->scfg.trace_arg = (void *)"smtp";
	}
	queue_id_gen_init(&srv->qid, cfg->node_id, NULL);
	uv_timer_init(loop, &srv->shutdown_timer);
	srv->shutdown_timer.data = srv;

	for (size_t i = 0; i < cfg->smtp_listen.n; i++) {
		uv_tcp_t *l = &srv->listeners[i];
		uv_tcp_init(loop, l);
		l->data = srv;
		srv->n_listeners++;
		srv->listeners_open++;
		int rc = uv_tcp_bind(l, (const struct sockaddr *)&cfg->smtp_listen.v[i].ss, 0);
		if (rc == 0)
			rc = uv_listen((uv_stream_t *)l, 511, connection_cb);
		if (rc != 0) {
			snprintf(err, errlen, "smtp_listen: cannot listen on %s: %s",
				 cfg->smtp_listen.v[i].text, uv_strerror(rc));
			return -1; /* the process exits; handles die with it */
		}
	}
	*out = srv;
	return 0;
}

static void
server_free_cb(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;
	void (*done)(void *) = srv->done;
	void *arg = srv->done_arg;
	auth_table_free(srv->auth);
	sender_table_free(srv->senders);
	dkim_signer_free(srv->dkim);
	free(srv);
	if (done)
		done(arg);
}

static void
server_maybe_done(struct smtp_server *srv)
{
	if (!srv->shutting_down || srv->n_conns > 0 || srv->listeners_open > 0)
		return;
	if (uv_is_closing((uv_handle_t *)&srv->shutdown_timer))
		return;
	uv_timer_stop(&srv->shutdown_timer);
	uv_close((uv_handle_t *)&srv->shutdown_timer, server_free_cb);
}

static void
listener_closed_cb(uv_handle_t *h)
{
	struct smtp_server *srv = h->data;
	srv->listeners_open--;
	server_maybe_done(srv);
}

static void
shutdown_timer_cb(uv_timer_t *t)
{
	struct smtp_server *srv = t->data;
	for (struct conn *c = srv->conns; c != NULL; c = c->next) {
		if (c->closing)
			continue;
		log_info(c->id, "event=shutdown-cut client=%s", c->addr);
		conn_close(c);
	}
}

void
smtp_server_shutdown(struct smtp_server *srv, void (*done)(void *arg), void *arg)
{
	srv->shutting_down = true;
	srv->done = done;
	srv->done_arg = arg;
	for (size_t i = 0; i < srv->n_listeners; i++)
		uv_close((uv_handle_t *)&srv->listeners[i], listener_closed_cb);
	for (struct conn *c = srv->conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->closing || c->sess == NULL)
			continue;
		if (c->prop != NULL || conn_in_data(c)) {
			c->shutdown_after_message = true; /* let it finish its message */
			continue;
		}
		smtp_session_shutdown(c->sess);
		conn_process(c);
	}
	uv_timer_start(&srv->shutdown_timer, shutdown_timer_cb, srv->cfg->shutdown_timeout_ms, 0);
	server_maybe_done(srv);
}

int
smtp_server_reload(struct smtp_server *srv)
{
	const struct relay_config *cfg = srv->cfg;
	struct auth_table *auth = NULL;
	struct sender_table *senders = NULL;
	char err[512];
	if (cfg->auth_users_file[0] != '\0' &&
	    auth_table_load(cfg->auth_users_file, &auth, err, sizeof(err)) != 0)
		goto err_keep;
	if (cfg->sender_permissions_file[0] != '\0' &&
	    sender_table_load(cfg->sender_permissions_file, &senders, err, sizeof(err)) != 0)
		goto err_after_auth;
	if (cfg->auth_users_file[0] != '\0') {
		auth_table_free(srv->auth); /* checks in flight keep their own hold */
		srv->auth = auth;
	}
	if (cfg->sender_permissions_file[0] != '\0') {
		sender_table_free(srv->senders);
		srv->senders = senders;
	}
	log_info("-", "event=reload auth_users=%zu sender_users=%zu sender_patterns=%zu",
		 auth_table_count(srv->auth), sender_table_users(srv->senders),
		 sender_table_patterns(srv->senders));
	return 0;
err_after_auth:
	auth_table_free(auth);
err_keep:
	log_warn("-", "event=reload-failed error=\"%s\" action=kept-previous-tables", err);
	return -1;
}

void
smtp_server_set_dkim(struct smtp_server *srv, struct dkim_signer *dkim)
{
	dkim_signer_free(srv->dkim);
	srv->dkim = dkim;
}
