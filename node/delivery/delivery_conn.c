/*
 * delivery_conn.c - one outgoing SMTP connection (delivery_int.h): libuv TCP, client TLS
 * over memory BIOs (tls.h), the pure client machine (mta_session.h) driven by the bytes,
 * failover to the next address and MX, connection reuse and idle connections.
 *
 * Deadlines (mta_session.h struct mta_deadline, on the monotonic clock): each attempt (a job
 * taken by the connection, across failover) gets delivery_attempt_timeout, each phase its RFC
 * 5321 4.5.3.2 value (connect: connect_timeout), armed when the phase starts and never moved by
 * bytes that complete nothing.  A phase deadline fails this host over to the next; the attempt
 * deadline defers the job's recipients.
 *
 * Commit gate: the machine stops before the end of data (MTA_EV_COMMIT).  Once every body byte
 * left this process and the kernel (nothing in libuv's queue, SIOCOUTQNSD 0), the glue asks the
 * lease (dlv__own_may_commit) and sends the "." only with it; otherwise the connection closes
 * without it and the recipients stay queued (dlv__job_drop).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/sockios.h>
#endif

#include "clock.h"
#include "delivery.h"
#include "delivery_int.h"

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void conn_timer_cb(uv_timer_t *t);

/* ------------------------------------------------------------ connections */

/* The connection takes a job: its attempt's total deadline starts now. */
static void
conn_attempt_start(struct dconn *c)
{
	c->attempt_over = false;
	c->commit_poll = false;
	mta_deadline_attempt(&c->dl, clock_mono_ms(), c->d->cfg->delivery_attempt_timeout_ms);
}

static void
conn_idle_enter(struct dconn *c)
{
	struct delivery *d = c->d;
	struct ddest *x = c->dest;
	c->idle = true;
	c->idle_until = clock_mono_ms() + DLV_IDLE_MS;
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

void
dlv__conn_idle_leave(struct dconn *c)
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
bool
dlv__conn_reuse(struct ddest *x)
{
	struct dconn *c = x->idle;
	if (c == NULL || x->nqueued == 0)
		return false;
	struct djob *j = dlv__dest_take(x);
	if (j == NULL)
		return false;
	dlv__conn_idle_leave(c);
	c->job = j;
	conn_attempt_start(c);
	dlv__job_txn(j);
	if (mta_session_next(&c->sess, &j->txn) != 0) {
		/* the session moved on (the server said something): give the job back */
		c->job = NULL;
		dlv__dest_push(x, j);
		mta_session_quit(&c->sess);
	}
	dlv__conn_process(c);
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
		dlv__dest_pump(x);
		dlv__dests_pump_all(d);
	}
	dlv__dest_maybe_free(x);
	dlv__maybe_done(d);
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
	if (c->tls_state == CTLS_ON) {
		/* end TLS with our close_notify (RFC 8446 6.1) before the TCP close: a best-effort
		 * write of the alert now, as uv_close drops what is still queued */
		char alert[256];
		size_t n = tls_conn_shutdown(c->tls) == 0
			       ? tls_conn_take_output(c->tls, alert, sizeof(alert))
			       : 0;
		uv_buf_t b = uv_buf_init(alert, (unsigned)n);
		if (n > 0)
			uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
	}
	tls_conn_free(c->tls);
	c->tls = NULL;
	c->tls_state = CTLS_NONE;
	s->tcp.data = s;
	uv_close((uv_handle_t *)&s->tcp, sock_closed_cb);
}

/* Ends the connection: the job (if any) is done for this run. */
void
dlv__conn_close(struct dconn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	dlv__conn_idle_leave(c);
	if (c->job != NULL) {
		struct djob *j = c->job;
		c->job = NULL;
		if (c->d->closing) {
			struct dmsg *m = j->msg;
			dlv__job_free(j);
			dlv__msg_job_done(m);
		} else {
			dlv__job_done(j);
		}
	}
	conn_drop_sock(c);
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, conn_timer_closed_cb);
}

/* Arms the connection's timer for the earliest deadline that applies now: the idle bound, or
 * the attempt's and its current phase's (a phase that started since the last call gets its
 * deadline from now), or the commit gate's next look at the socket. */
static void
conn_arm_deadline(struct dconn *c)
{
	uint64_t now = clock_mono_ms(), at;
	if (c->idle)
		at = c->idle_until;
	else
		at = mta_deadline_update(&c->dl, c->connected ? &c->sess : NULL, now);
	if (c->commit_poll && (at == 0 || at > now + DLV_COMMIT_POLL_MS))
		at = now + DLV_COMMIT_POLL_MS;
	uv_timer_stop(&c->timer);
	if (at != 0)
		uv_timer_start(&c->timer, conn_timer_cb, at > now ? at - now : 0, 0);
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
		dlv__conn_process(c);
		return;
	}
	dlv__conn_process(c);
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
		if (dlv__tls_check_peer(c) != 0) { /* before any SMTP byte goes over it */
			c->tls_failed = true;
			mta_session_tls_done(&c->sess, false);
			return;
		}
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
		dlv__conn_process(c);
		return;
	}
	if (nread == 0)
		return;
	if (c->tls_state != CTLS_NONE)
		conn_tls_input(c, buf->base, (size_t)nread);
	else
		c->in_len += (size_t)nread; /* read straight into c->in */
	dlv__conn_process(c);
}

/* Starts the session's transaction for the connection's job. */
static void
conn_start_session(struct dconn *c)
{
	dlv__job_txn(c->job);
	c->mcfg.helo_name = c->d->cfg->hostname;
	c->mcfg.tls = dlv__tls_session_mode(c);
	c->mcfg.tls_active = false;
	c->mcfg.commit_gate = true; /* the lease decides on the end of data (conn_commit) */
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
		dlv__conn_next_address(c);
		return;
	}
	c->connected = true;
	c->answered = true;
	uv_tcp_nodelay(&s->tcp, 1);
	c->d->st.connections++;
	conn_start_session(c);
	dlv__conn_process(c);
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
	if (dlv__tls_plan(c) != 0) {
		c->addr_i = h->naddrs - 1; /* outbound TLS skips the whole host */
		return -1;
	}
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
	mta_deadline_glue_phase(&c->dl, clock_mono_ms(), c->d->cfg->connect_timeout_ms);
	conn_arm_deadline(c);
	return 0;
}

/* The current address failed for the job: try the next address, then the next host; when all
 * failed the job is deferred (and, if no host ever answered, every job waiting on the route). */
void
dlv__conn_next_address(struct dconn *c)
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
		if (c->host_i >= c->mx.nhosts || c->job == NULL || c->d->closing || c->attempt_over)
			break;
		if (conn_connect(c) == 0)
			return;
	}
	if (c->job != NULL && !c->reached && !c->d->closing && !c->attempt_over) {
		/* No host of the route took a transaction: the jobs waiting here would fail
		 * alike.  When none even took a TCP connection the route is dead for now: this
		 * job and those waiting here wait for the deferral of their domains
		 * (delivery_dest.c); a host that answered and failed otherwise (TLS required but
		 * not offered, a greeting refused) defers them one by one, each with its reply. */
		struct mta_diag dg = c->job->last;
		char relay[DLV_RELAY_MAX];
		snprintf(relay, sizeof(relay), "%s", c->job->last_relay);
		if (dg.code != 0 && !c->answered) {
			struct djob *j = c->job;
			c->job = NULL;
			dlv__dest_dead(x, &dg, relay, j);
		} else if (dg.code != 0) {
			dlv__dest_fail_queued(x, false, &dg, relay);
		}
	}
	dlv__conn_close(c);
}

static void
conn_timer_cb(uv_timer_t *t)
{
	struct dconn *c = t->data;
	if (c->closing)
		return;
	uint64_t now = clock_mono_ms();
	if (c->idle) {
		if (now < c->idle_until) {
			conn_arm_deadline(c); /* the loop's clock ran ahead of ours */
			return;
		}
		dlv__conn_idle_leave(c);
		mta_session_quit(&c->sess);
		dlv__conn_process(c);
		return;
	}
	if (c->sock == NULL)
		return; /* between two addresses: conn_connect arms again */
	const struct mta_session *s = c->connected ? &c->sess : NULL;
	enum mta_expiry ex = mta_deadline_expired(&c->dl, s, now);
	if (ex == MTA_DL_NONE) {
		/* early, or the commit gate looks at the socket again */
		if (c->connected)
			dlv__conn_process(c);
		else
			conn_arm_deadline(c);
		return;
	}
	bool total = ex == MTA_DL_ATTEMPT;
	if (total) {
		c->attempt_over = true;
		c->d->st.attempt_timeouts++;
	} else {
		c->d->st.phase_timeouts++;
	}
	const char *phase = c->connected ? mta_state_name(c->sess.state) : "connect";
	log_info(c->job ? c->job->msg->qid : "-", "event=timeout deadline=%s relay=%s state=%s",
		 total ? "attempt" : "phase", c->relay, phase);
	if (!c->connected) {
		struct mta_diag *dg = &c->job->last;
		dg->code = 451;
		dg->local = true;
		snprintf(dg->enh, sizeof(dg->enh), "4.4.1");
		snprintf(dg->text, sizeof(dg->text), "451 4.4.1 connect to %s: %s", c->relay,
			 total ? "delivery_attempt_timeout reached" : "timed out");
		snprintf(c->job->last_relay, sizeof(c->job->last_relay), "%s", c->relay);
		dlv__conn_next_address(c);
		return;
	}
	char why[96];
	snprintf(why, sizeof(why), "%s (%s)",
		 total ? "delivery_attempt_timeout reached" : "timeout", phase);
	mta_session_abort(&c->sess, why);
	dlv__conn_process(c);
}

/* A transaction ended; the job's recipients have their results or are pending. */
static void
conn_txn_done(struct dconn *c)
{
	struct djob *j = c->job;
	c->reached = true;
	dlv__job_harvest(j, c->relay);
	if (dlv__job_has_pending(j)) {
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
	dlv__job_done(j);
	if (c->closing)
		return;
	struct djob *next = NULL;
	if (!c->d->closing && c->nmsgs < c->d->cfg->max_messages_per_connection)
		next = dlv__dest_take(c->dest);
	if (next == NULL) {
		if (!c->d->closing && c->nmsgs < c->d->cfg->max_messages_per_connection)
			conn_idle_enter(c); /* dlv__conn_process arms DLV_IDLE_MS */
		else
			mta_session_quit(&c->sess);
		return;
	}
	c->job = next;
	conn_attempt_start(c);
	dlv__job_txn(next);
	if (mta_session_next(&c->sess, &next->txn) != 0)
		mta_session_quit(&c->sess);
}

/* The session closed. */
static void
conn_session_closed(struct dconn *c)
{
	struct djob *j = c->job;
	dlv__conn_idle_leave(c);
	if (j != NULL && c->sess.close_reason == MTA_CLOSE_ABANDONED) {
		/* the commit gate said no: no "." was sent; not for another host either */
		dlv__job_harvest(j, c->relay);
		c->job = NULL;
		dlv__job_drop(j);
		dlv__conn_close(c);
		return;
	}
	if (j != NULL) {
		dlv__job_harvest(j, c->relay);
		if (c->sess.close_reason == MTA_CLOSE_NEXT_HOST && c->sess.diag.code != 0) {
			j->last = c->sess.diag;
			snprintf(j->last_relay, sizeof(j->last_relay), "%s", c->relay);
		}
		dlv__tls_session_closed(c, j);
		if (dlv__job_has_pending(j)) {
			if (c->tls_failed && !c->tlsc.plan.required)
				c->tls_plain_retry = true;
			dlv__conn_next_address(c);
			return;
		}
		c->job = NULL;
		dlv__job_done(j);
	}
	dlv__conn_close(c);
}

/* Bytes the kernel holds for the socket and has not sent yet (0 when it cannot tell). */
static size_t
conn_unsent(struct dconn *c)
{
#ifdef SIOCOUTQNSD
	uv_os_fd_t fd;
	int n = 0;
	if (c->sock != NULL && uv_fileno((uv_handle_t *)&c->sock->tcp, &fd) == 0 &&
	    ioctl(fd, SIOCOUTQNSD, &n) == 0 && n > 0)
		return (size_t)n;
#else
	(void)c;
#endif
	return 0;
}

/*
 * MTA_EV_COMMIT: once the whole body left (libuv's queue empty, the kernel sent it all), ask
 * the lease right before the end of data goes out.  Returns false while it must wait (a write
 * callback or the poll timer comes back).
 */
static bool
conn_commit(struct dconn *c)
{
	if (c->wbytes > 0) {
		c->commit_poll = false; /* write_cb calls dlv__conn_process */
		return false;
	}
	if (conn_unsent(c) > 0) {
		c->commit_poll = true; /* conn_timer_cb looks again in DLV_COMMIT_POLL_MS */
		return false;
	}
	c->commit_poll = false;
	struct delivery *d = c->d;
	uint64_t now = clock_mono_ms();
	if (c->job != NULL && dlv__own_may_commit(d, c->job, now)) {
		mta_session_commit(&c->sess, true, NULL);
		return true;
	}
	d->st.commits_refused++;
	char left[24] = "none"; /* no lease at all */
	if (d->own.lease_until != 0)
		snprintf(left, sizeof(left), "%" PRId64,
			 d->own.lease_until >= now ? (int64_t)(d->own.lease_until - now)
						   : -(int64_t)(now - d->own.lease_until));
	log_warn(c->job ? c->job->msg->qid : "-",
		 "event=commit-refused relay=%s lease_ms_left=%s margin_ms=%" PRIu64
		 " note=\"lease lapsed or domain moved: no end of data sent, the recipients stay "
		 "queued\"",
		 c->relay, left, d->own.margin_ms);
	mta_session_commit(&c->sess, false, "delivery lease lapsed before the end of data");
	return true;
}

/* Runs the machine over the buffered input and acts on its events.  Never frees c. */
void
dlv__conn_process(struct dconn *c)
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
			c->tls = dlv__tls_conn_new(c);
			if (c->tls == NULL) {
				c->tls_failed = true;
				mta_session_tls_done(&c->sess, false);
				continue;
			}
			c->tls_state = CTLS_HANDSHAKE;
			if (tls_conn_handshake(c->tls, err, sizeof(err)) < 0 ||
			    conn_flush_tls(c) != 0) {
				c->tls_failed = true;
				mta_session_tls_done(&c->sess, false);
				continue;
			}
			break;
		}
		if (ev == MTA_EV_COMMIT) {
			if (!conn_commit(c))
				break;
			continue;
		}
		if (ev == MTA_EV_TXN_DONE) {
			if (c->idle)
				break; /* waiting for a job (dlv__conn_reuse) or the idle timeout */
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
	conn_arm_deadline(c);
}

struct dconn *
dlv__conn_new(struct ddest *x, struct djob *j)
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
	conn_attempt_start(c);
	if (c->mx.nhosts == 0 || conn_connect(c) != 0) {
		/* next_address advances from (0,0): pretend we tried it */
		dlv__conn_next_address(c);
	}
	return c;
}
