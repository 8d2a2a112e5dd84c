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
 *
 * A message, from SMTP_EV_MESSAGE to the cluster's answer, is smtp_server_msg.c's (the objects
 * both files share: smtp_server_int.h).
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
#include "auth_limit.h"
#include "auth_pool.h"
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

#include "smtp_server_int.h"

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
	st->receive_memory_used = srv->budget->b.used;
	st->receive_memory_peak = srv->budget->b.peak;
	st->receive_memory_limit = srv->budget->b.limit;
	st->auth_jobs = srv->auth_pool != NULL ? auth_pool_jobs(srv->auth_pool) : 0;
	st->proxy_invalid = srv->proxy_invalid;
	st->proxy_refused = srv->proxy_refused;
	st->sessions_active = 0;
	for (const struct conn *c = srv->conns; c != NULL; c = c->next)
		if (c->sess != NULL && !c->closing)
			st->sessions_active++;
}

void
smtp_server__stats_latency(struct smtp_server *srv, uint64_t ns)
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

uint64_t
smtp_server__now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

void
smtp_server__date(char *buf, size_t cap, time_t t)
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

/*
 * The deadlines of a message's data (issue 12 sec. 3): all of it within data_total_timeout,
 * and within data_timeout plus its bytes at min_data_rate (Postfix's smtpd_min_data_rate), so a
 * client trickling a byte every few minutes is cut however often it sends.  Loop time (uv_now:
 * monotonic).  *kind says which deadline is the nearest.
 */
static uint64_t
conn_msg_deadline(const struct conn *c, const char **kind)
{
	const struct relay_config *cfg = c->srv->cfg;
	uint64_t total = c->msg_start_ms + cfg->data_total_timeout_ms;
	*kind = "data_total";
	if (cfg->min_data_rate > 0) {
		uint64_t allowed = cfg->data_timeout_ms + c->msg_bytes * 1000 / cfg->min_data_rate;
		if (c->msg_start_ms + allowed < total) {
			*kind = "data_rate";
			return c->msg_start_ms + allowed;
		}
	}
	return total;
}

void
smtp_server__arm_timer(struct conn *c)
{
	if (c->closing)
		return;
	const struct relay_config *cfg = c->srv->cfg;
	uint64_t t = c->prop != NULL   ? cfg->propose_timeout_ms
		     : conn_in_data(c) ? cfg->data_timeout_ms
				       : cfg->command_timeout_ms;
	/* in_msg is from the last feed; a reply since (the message's result) may have ended it */
	if (c->prop == NULL && c->in_msg && c->sess != NULL && smtp_session_in_message(c->sess)) {
		const char *kind;
		uint64_t now = uv_now(c->srv->loop), dl = conn_msg_deadline(c, &kind);
		if (dl <= now)
			t = 0;
		else if (dl - now < t)
			t = dl - now;
	}
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
		smtp_server__conn_process(c);
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
	const struct conn *c = h->data;
	size_t room = SMTP_CONN_INBUF_MAX - c->in_len;
	/* plaintext never reads more than c->in can take (reading stops when it is full); TLS
	 * records go to OpenSSL, which hands plaintext over as room allows */
	if (c->tls_state != CONN_TLS_NONE || room > sizeof(slab))
		room = sizeof(slab);
	*buf = uv_buf_init(slab, (unsigned)room);
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
	 * smtp_server__conn_process pulls it when the machine has consumed some. */
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
		smtp_server__conn_process(c);
}

/* ---- events ---- */

/* A password check finished on the AUTH workers (on the loop thread). */
static void
auth_done_cb(void *arg, const char *user, bool ok, bool canceled)
{
	struct conn *c = arg;
	auth_table_free(c->auth_held); /* drops the hold taken for this check */
	c->auth_held = NULL;
	if (!c->closing) {
		if (ok) {
			char safe[SMTP_AUTH_FIELD_MAX * 4 + 1];
			c->srv->stats.auth_ok++;
			log_info(c->id, "event=auth client=%s user=%s result=ok", c->addr,
				 log_safe(user, strlen(user), safe, sizeof(safe)));
		} else {
			/* the 535 is this failure's log line (event=reject cmd=AUTH) */
			c->srv->stats.auth_failed++;
			auth_limit_failed(&c->srv->auth_limit, c->client_key, uv_now(c->srv->loop));
		}
		c->busy = false;
		smtp_session_auth_result(c->sess, ok && !canceled);
		smtp_server__conn_process(c);
	}
	smtp_server__conn_unref(c);
}

/*
 * SMTP_EV_AUTH: the password is checked on the AUTH workers, unless the client has failed
 * auth_failures_per_minute_per_client times this minute or max_concurrent_auth checks are in
 * the pool already: then 454 4.7.0 at once, no crypt (issue 12 sec. 4).
 */
static void
conn_start_auth(struct conn *c, const struct smtp_event *ev)
{
	struct smtp_server *srv = c->srv;
	if (srv->auth == NULL || srv->auth_pool == NULL) {
		smtp_session_auth_result(c->sess, 0);
		return;
	}
	if (auth_limit_blocked(&srv->auth_limit, c->client_key, uv_now(srv->loop))) {
		srv->stats.auth_throttled++;
		c->result_reason = "auth_failures_per_minute";
		smtp_session_auth_tempfail(c->sess);
		return;
	}
	/* a hold: a reload (SIGHUP) may replace srv->auth while the check runs */
	struct auth_table *t = auth_table_hold(srv->auth);
	int rc = auth_pool_submit(srv->auth_pool, t, ev->auth.user, ev->auth.password, auth_done_cb,
				  c);
	if (rc != 0) {
		auth_table_free(t);
		srv->stats.auth_throttled++;
		c->result_reason = rc == AUTH_POOL_EBUSY ? "max_concurrent_auth" : "nomem";
		smtp_session_auth_tempfail(c->sess);
		return;
	}
	c->auth_held = t;
	c->refs++;
	c->busy = true;
}

/* After a feed of n bytes: a message's data began, goes on, or ended (its deadlines). */
static void
conn_track_message(struct conn *c, size_t n)
{
	bool in = smtp_session_in_message(c->sess);
	if (in && !c->in_msg) {
		c->msg_start_ms = uv_now(c->srv->loop);
		c->msg_bytes = 0;
	}
	if (in || c->in_msg)
		c->msg_bytes += n;
	c->in_msg = in;
}

/*
 * Runs the machine over the buffered input until it blocks, then dispatches its event.
 * Never frees c (conn_close only starts closing).
 */
void
smtp_server__conn_process(struct conn *c)
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
			conn_track_message(c, n);
			if (was_data != conn_in_data(c) || n > 0)
				smtp_server__arm_timer(c);
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
			smtp_server__start_message(c, &ev);
			continue;
		case SMTP_EV_CLOSE:
			if (c->tls_state == CONN_TLS_ON && !c->tls_closed) {
				/* QUIT, timeouts, too many errors: end TLS with a close_notify
				 * (RFC 8446 6.1) before the TCP close */
				c->tls_closed = true;
				if (tls_conn_shutdown(c->tls) != 0 || conn_flush_tls(c) != 0) {
					conn_close(c);
					return;
				}
			}
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
		smtp_server__arm_timer(c); /* the next command's timeout (this timer has fired) */
		if (c->shutdown_after_message)
			smtp_session_shutdown(c->sess);
		smtp_server__conn_process(c);
		return;
	}
	if (c->tls_state == CONN_TLS_HANDSHAKE) {
		log_info(c->id, "event=timeout client=%s state=tls-handshake", c->addr);
		c->srv->counters.timeouts++;
		conn_close(c);
		return;
	}
	if (c->busy) {
		smtp_server__arm_timer(c); /* waiting on our own work (AUTH check): not the client's fault */
		return;
	}
	/* the 421 4.4.2 is the log line (event=reject reason=<kind>); the session counts it */
	c->timeout_kind = conn_in_data(c) ? "timeout_data" : "timeout_command";
	if (c->in_msg) {
		const char *kind;
		if (conn_msg_deadline(c, &kind) <= uv_now(c->srv->loop)) {
			c->timeout_kind = kind;
			if (strcmp(kind, "data_rate") == 0)
				c->srv->stats.data_rate_cut++;
			else
				c->srv->stats.data_total_cut++;
		}
	}
	smtp_session_timeout(c->sess);
	smtp_server__conn_process(c);
}

/* ---- connection lifetime ---- */

static void
server_maybe_done(struct smtp_server *srv);

void
smtp_server__conn_unref(struct conn *c)
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
	smtp_server__conn_unref(h->data);
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

/* Open sessions other than nc (closing ones no longer count): in total and from nc's client
 * (its address cut to client_ipv4_prefix / client_ipv6_prefix: one IPv6 /64 is one client). */
static void
count_sessions(struct smtp_server *srv, const struct conn *nc, size_t *total, size_t *same)
{
	*total = *same = 0;
	for (struct conn *c = srv->conns; c != NULL; c = c->next) {
		if (c == nc || c->sess == NULL || c->closing)
			continue;
		(*total)++;
		if (strcmp(c->client_key, nc->client_key) == 0)
			(*same)++;
	}
}

static void
trace_cb(void *arg, const struct smtp_session *s, const char *from, const char *to)
{
	(void)s;
	log_debug((const char *)arg, "event=state from=%s to=%s", from, to);
}

/*
 * Every 4xx/5xx the session sends is one log line (STYLE "Every refusal sent to a peer is one
 * log line"): the command (only the verb for AUTH), the codes, the reason (the counter of
 * relay_messages_rejected_total, or the glue's own for a refusal it chose), the client.
 */
static void
reject_cb(void *arg, const struct smtp_session *s, const char *cmd, int code, const char *enh,
	  const char *reason)
{
	struct conn *c = arg;
	const struct smtp_budget *b = &c->srv->budget->b;
	if (c->result_reason != NULL && (!strcmp(reason, "result") || !strcmp(reason, "auth_throttled")))
		reason = c->result_reason;
	if (!strcmp(reason, "timeouts") && c->timeout_kind != NULL)
		reason = c->timeout_kind;
	c->result_reason = NULL;
	if (!strcmp(reason, "no_postmaster"))
		log_warn(c->id, "event=reject cmd=%s code=%d enh=%s reason=%s client=%s hint=\"set "
			 "postmaster_address: RFC 5321 requires accepting mail for <postmaster>\"",
			 cmd, code, enh, reason, c->addr);
	else if (!strcmp(reason, "over_budget"))
		log_info(c->id, "event=reject cmd=%s code=%d enh=%s reason=%s client=%s "
			 "receive_memory=%" PRIu64 " max_receive_memory=%" PRIu64, cmd, code, enh,
			 reason, c->addr, b->used, b->limit);
	else
		log_info(c->id, "event=reject cmd=%s code=%d enh=%s reason=%s client=%s", cmd, code,
			 enh, reason, c->addr);
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
	bool grouped = c->client_key[0] != '\0' && strcmp(c->client_key, c->addr) != 0;
	log_info(c->id, "event=%s client=%s%s%s reason=\"%s\"", event, c->addr,
		 grouped ? " client_key=" : "", grouped ? c->client_key : "", reason);
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
	if (smtp_server__quota_over(srv, auth_user, c->trusted ? NULL : c->qkey, smtp_server__now_ms(), v->text,
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
	config_client_key((const struct sockaddr *)&c->peer, (unsigned)cfg->client_ipv4_prefix,
			  (unsigned)cfg->client_ipv6_prefix, c->client_key);
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
	/* LOCAL / UNKNOWN PROXY headers name no client: never the balancer's mynetworks trust */
	c->trusted = !c->proxy_local &&
		     config_cidr_match(&cfg->mynetworks, (const struct sockaddr *)&c->peer);
	smtp_quota_client_key(&c->peer, c->qkey, sizeof(c->qkey));
	struct smtp_session_client client = {
	    .trusted = c->trusted,
	    .tls_active = false,
	    .check_arg = c,
	    .hook_arg = c,
	};
	c->trusted = client.trusted;
	if (smtp_session_new(&c->sess, &srv->scfg, &client) != 0) {
		conn_close(c);
		return;
	}
	srv->stats.sessions_total++;
	log_info(c->id, "event=connect client=%s trusted=%s%s%s%s", c->addr,
		 client.trusted ? "yes" : "no", c->via[0] ? " via=" : "", c->via,
		 c->proxy_local ? " proxy=local" : "");
	smtp_server__arm_timer(c);
	smtp_server__conn_process(c);
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
	/* LOCAL / UNKNOWN / UNSPEC name no client: the session keeps the balancer's address for
	 * logs and limits, but never its mynetworks trust (issue 12 sec. 5) */
	c->proxy_local = pi.local;
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
	srv->scfg.postmaster = cfg->postmaster_address;
	srv->scfg.max_hops = cfg->max_hops;
	srv->scfg.counters = &srv->counters;
	srv->scfg.reject_cb = reject_cb;
	srv->budget = calloc(1, sizeof(*srv->budget));
	if (srv->budget == NULL) {
		snprintf(err, errlen, "out of memory");
		free(srv);
		return -1;
	}
	srv->budget->refs = 1;
	srv->budget->b.limit = cfg->max_receive_memory;
	srv->scfg.budget = &srv->budget->b;
	auth_limit_init(&srv->auth_limit, (uint32_t)cfg->auth_failures_per_minute_per_client);
	if (auth != NULL &&
	    auth_pool_start(loop, (unsigned)cfg->max_concurrent_auth, &srv->auth_pool, err, errlen) != 0)
		return -1; /* the process exits */
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
	smtp_server__budget_unref(srv->budget);
	auth_table_free(srv->auth);
	sender_table_free(srv->senders);
	dkim_signer_free(srv->dkim);
	free(srv);
	if (done)
		done(arg);
}

/* The AUTH workers are stopped (every connection, and so every check, was over before). */
static void
server_auth_stopped_cb(void *arg)
{
	struct smtp_server *srv = arg;
	uv_close((uv_handle_t *)&srv->shutdown_timer, server_free_cb);
}

static void
server_maybe_done(struct smtp_server *srv)
{
	if (!srv->shutting_down || srv->n_conns > 0 || srv->listeners_open > 0)
		return;
	if (uv_is_closing((uv_handle_t *)&srv->shutdown_timer) || srv->stopping_auth)
		return;
	uv_timer_stop(&srv->shutdown_timer);
	if (srv->auth_pool != NULL) {
		srv->stopping_auth = true;
		auth_pool_stop(srv->auth_pool, server_auth_stopped_cb, srv);
		return;
	}
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
		smtp_server__conn_process(c);
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
