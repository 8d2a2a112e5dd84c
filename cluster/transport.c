/*
 * transport.c: peer and admin messaging over NNG (see transport.h for the contract).
 *
 * Receive path (loop thread only):
 *   PULL socket -> NNG_OPT_RECVFD readable -> uv_poll -> a non-blocking receive on one kept aio
 *   (transport_recv: nng_recvmsg(NONBLOCK) without its aio per call), at most
 *   TRANSPORT_RECV_BATCH per turn -> relay__peer_frame__unpack -> checks (size, to, from,
 *   cluster id) -> recv callback -> frame and message freed.
 * Send path:
 *   transport_send (loop thread): bound check, frame packed into an nng_msg, appended to the
 *   peer's ring (p->ring, capacity max_queue_per_peer).  If the peer's aio is idle the head is
 *   handed to nng_send_aio on the peer's PUSH socket.  peer_send_cb (NNG thread) counts the
 *   result and hands over the next.  A socket whose connection closed is replaced by a new one
 *   (peer_renew: NNG 1.5.2's PUSH socket cannot be trusted after that, see peer_pipe_cb); the
 *   send waiting in it goes back to the head of the ring.  The PUSH socket is unbuffered, so
 *   at most one message per peer sits inside NNG's socket (waiting for a connection) plus one
 *   inside the connection.  The ring, the in-flight flag and the counters are under p->mtx;
 *   p->mtx is held across nng_send_aio so that peer_stop() cannot race a resubmission.
 * Teardown (loop thread): peer_stop() sets closing, stops the aio (waits for its callback),
 * closes the socket (waits for its pipes), frees what is queued.  transport_close() stops the
 * poll before closing the PULL socket (its RECVFD dies with it) and frees the transport in the
 * poll handle's close callback.
 * Endpoint guard (loop thread, a uv timer): NNG 1.5.2's endpoints can stop for good after a
 * peer vanishes mid-handshake; the guard reads NNG's statistics, probes and re-creates them
 * (details at "endpoint guard" below), and closes a peer's superseded inbound connection.
 * Failure modes: peer input is dropped and counted (never asserted on); NNG errors on the send
 * side are counted; a failed open unwinds completely; an endpoint that cannot be re-created is
 * tried again every tick (logged).
 */
#include "transport.h"
#include "transport_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/supplemental/tls/tls.h>

#include "transport.pb-c.h"

const char *
transport_strerror(int code)
{
	switch (code) {
	case 0:
		return "success";
#define TRANSPORT__ERRNO_STR(name, val, str)                                                       \
	case name:                                                                                 \
		return str;
		TRANSPORT_ERRNO_MAP(TRANSPORT__ERRNO_STR)
#undef TRANSPORT__ERRNO_STR
	}
	return "unknown transport error";
}

static bool
id_ok(const char *id)
{
	return id != NULL && id[0] != '\0' && strlen(id) <= TRANSPORT_ID_MAX;
}

/*
 * ---- endpoint guard, the decisions (pure: counters and times in, an action out) ----
 *
 * NNG 1.5.2 takes NNG_ECLOSED from one connection's negotiation (TLS handshake, then the SP
 * header exchange) for "this endpoint was closed" (nanomsg/nng#1518; fixed in NNG 1.6.0, not in
 * Debian's 1.5.2).  A peer that goes away while we write to it during the handshake gives
 * exactly that (EPIPE maps to NNG_ECLOSED), and then:
 *   - a listener never accepts again.  NNG still completes the handshake of new connections
 *     below the socket, so the dialing peer sees a connection and sends into it; nothing of it
 *     reaches us.  NNG counts the error as the listener's "other".
 *   - a dialer never dials again (no connection, no attempt: all its counters stand still).
 * Also, the negotiation's 10 s timeout does not fire while a TLS handshake waits for the peer
 * (the cancel aborts an idle TCP send), so a dialer can wait forever on a silent peer.
 * The guard reads NNG's statistics of our endpoints every TRANSPORT_GUARD_TICK_MS:
 *   - listener: when "other" grows, a probe of ours dials the listener; if the listener's
 *     "accept" has not grown TRANSPORT_PROBE_WAIT_MS later, it is re-created on the same port;
 *   - dialer: one with no connection whose attempt counters stand still for
 *     TRANSPORT_DIAL_STALL_MS is re-created.
 */

enum listen_act {
	LISTEN_OK,	/* nothing to do */
	LISTEN_PROBE,	/* suspicious: start a probe */
	LISTEN_ALIVE,	/* the probe's wait is over: the listener accepted; stop the probe */
	LISTEN_RESTART, /* it accepted nothing while probed: re-create it (and stop the probe) */
};

struct listen_watch {
	uint64_t other;	   /* the listener's "other" errors when last looked at */
	uint64_t accepts;  /* its "accept" count when the probe started */
	uint64_t since_ms; /* when the probe started */
	bool probing;
};

/*
 * One look at a listener's counters at now_ms; probe_up: the probe has its connection (from
 * its side).  Any accept during the probe (ours or a peer's) proves that the listener accepts,
 * but the probe is ended only once connected or after the wait: closing a dialer in its
 * handshake can leave NNG 1.5.2 a connection it never frees.  Errors counted meanwhile are
 * looked at again afterwards.
 */
static enum listen_act
listen_watch_step(struct listen_watch *w, uint64_t other, uint64_t accepts, bool probe_up,
		  uint64_t now_ms)
{
	if (w->probing) {
		bool waited = now_ms - w->since_ms >= TRANSPORT_PROBE_WAIT_MS;
		if (accepts > w->accepts && (probe_up || waited)) {
			w->probing = false;
			return LISTEN_ALIVE;
		}
		if (!waited)
			return LISTEN_OK;
		*w = (struct listen_watch){0}; /* the new listener counts from 0 */
		return LISTEN_RESTART;
	}
	if (other <= w->other)
		return LISTEN_OK;
	w->other = other;
	w->accepts = accepts;
	w->since_ms = now_ms;
	w->probing = true;
	return LISTEN_PROBE;
}

struct dial_watch {
	uint64_t attempts; /* the dialer's attempts (connects and errors) last seen */
	uint64_t since_ms; /* when they last changed, or a connection was last seen up */
};

/*
 * One look at a dialer at now_ms: true when it must be re-created (no connection and its
 * attempts standing still for TRANSPORT_DIAL_STALL_MS).  A live dialer without a connection
 * counts an attempt at least every TRANSPORT_RECONNECT_MAX_MS plus a connect and a handshake.
 */
static bool
dial_watch_step(struct dial_watch *w, bool connected, uint64_t attempts, uint64_t now_ms)
{
	if (connected || attempts != w->attempts) {
		w->attempts = attempts;
		w->since_ms = now_ms;
		return false;
	}
	return now_ms - w->since_ms >= TRANSPORT_DIAL_STALL_MS;
}

/*
 * A send NNG holds on a connection it counts as open (connected), busy_ms after it was handed
 * over: true when the dialer must be re-created.  A peer that is down has no connection (its
 * dialer redials by itself, dial_watch_step); a live one drains a frame in well under a second.
 */
static bool
send_stalled(bool connected, bool busy, uint64_t busy_ms)
{
	return connected && busy && busy_ms >= TRANSPORT_SEND_STALL_MS;
}

/* ---- peers ---- */

struct queued {
	nng_msg *msg; /* owned */
	size_t len;   /* payload bytes (what the byte bound counts) */
};

/*
 * The argument of one peer socket's pipe callbacks.  NNG may still run callbacks of a socket
 * being closed (peer_renew hands old sockets to a thread of their own), so the argument outlives
 * the peer's use of the socket: once current is false a callback leaves p alone.  mtx is held
 * across a callback's use of p, so clearing current waits for one in progress.
 */
struct peer_gen {
	struct peer *p; /* borrowed; not touched once current is false */
	pthread_mutex_t mtx;
	bool current;
};

struct peer {
	struct transport *t;  /* borrowed: the owner */
	char *id;	      /* owned */
	char *addr;	      /* owned: "host:port" dialed */
	nng_socket sock;      /* PUSH, owned while dialing; its dialer closes with it */
	nng_dialer dialer;    /* of sock */
	struct peer_gen *gen; /* owned while dialing: sock's pipe callback argument */
	bool dialing;	      /* sock and dialer are valid (an opening can fail; retried) */
	uint64_t renewals;    /* sockets replaced after a lost connection (loop thread only) */
	uint64_t renewed_ms;  /* uv_now of the last replacement (loop thread only) */
	atomic_bool renew;    /* a connection of sock closed: the loop replaces sock */
	struct dial_watch dw;
	uint64_t dialer_restarts; /* loop thread only */
	nng_pipe in_pipe;	  /* the newest connection its frames came in on (loop) */
	/* older ones, superseded at stale_at[i] (loop); closed if still open after
	   TRANSPORT_STALE_PIPE_MS */
	nng_pipe stale[TRANSPORT_STALE_PIPES_MAX];
	uint64_t stale_at[TRANSPORT_STALE_PIPES_MAX];
	unsigned n_stale;
	nng_aio *aio;	     /* owned; send of the in-flight message */
	pthread_mutex_t mtx; /* guards everything below */
	struct queued *ring; /* owned, capacity t->max_queue; waiting messages */
	unsigned head, n;
	bool busy;		/* a message is in p->aio */
	bool retired;		/* nothing is handed to sock: it lost a connection, or none */
	uint64_t busy_since_ms; /* when it was handed to NNG (mono_ms) */
	size_t busy_len;	/* its payload bytes */
	size_t bytes;		/* payload bytes in ring + in flight */
	bool closing;		/* no more submissions */
	uint64_t sent, dropped_full, send_errors;
	atomic_int pipes; /* live connections (pipe notify, NNG threads) */
	atomic_bool lost; /* the last one closed: tell the loop (transport_down_cb) */
	struct peer *next;
};

struct transport {
	uv_loop_t *loop; /* borrowed */
	uv_poll_t poll;	 /* on the PULL socket's RECVFD */
	transport_recv_cb cb;
	void *cb_arg;
	char node_id[TRANSPORT_ID_MAX + 1];
	char cluster_id[TRANSPORT_ID_MAX + 1];
	bool tls;
	bool admit_strangers;	  /* cfg->admit_strangers, with TLS only */
	struct tls_material tlsm; /* owned */
	size_t max_msg_bytes;
	unsigned max_queue;
	size_t max_queue_bytes;
	nng_socket pull; /* owned */
	nng_aio *raio;	 /* owned: the loop's receive (transport_recv), made at the first one */
	int port;
	struct peer *peers; /* owned list */
	unsigned n_peers;
	/* loop-thread counters; removed peers' counters are added here */
	uint64_t received, dropped_unauth, dropped_malformed, strangers_received;
	uint64_t gone_sent, gone_dropped_full, gone_send_errors, gone_dialer_restarts;
	/* the guard (see "endpoint guard" below) */
	char listen_host[TRANSPORT_URL_MAX]; /* host part of cfg->listen; with port, listens */
	nng_listener listener;		     /* of pull; re-created by the guard */
	bool listening;			     /* listener is valid (re-creation retried) */
	struct listen_watch lw;
	nng_socket probe;	 /* PUSH, one per probe: it dials our own listener */
	nng_dialer probe_dialer; /* of probe, while probing */
	bool probing;		 /* probe, probe_dialer and probe_gen are valid */
	struct probe_gen *probe_gen; /* what probe's callbacks write (freed with the socket) */
	uv_timer_t guard;	    /* every TRANSPORT_GUARD_TICK_MS */
	uint64_t listener_probes, listener_restarts, stale_inbound_closed;
	int handles; /* uv handles not yet closed (poll, guard, down); the last close frees t */
	/* peers whose last connection closed, told on the loop (transport_on_peer_down): NNG
	 * threads wake the loop through down_async while down_open, under down_mtx */
	uv_async_t down_async;
	pthread_mutex_t down_mtx;
	bool down_open;
	transport_peer_down_cb down_cb;
	bool closing;
	void (*done)(void *);
	void *done_arg;
	/* close (transport_close): NNG's socket close runs on a helper thread that the loop waits
	 * for at most TRANSPORT_CLOSE_WAIT_MS, because NNG 1.5.2 can hang in nng_close
	 * (nanomsg/nng#1543: the reaper waits for a task that never runs); then it is left behind
	 * and the thread frees t if it ever returns */
	pthread_mutex_t close_mtx;
	pthread_cond_t close_cv;
	int close_refs;	     /* the helper thread and the loop side; the last one frees t */
	bool close_finished; /* the helper thread is done with NNG */
};

static struct peer *
peer_find(const struct transport *t, const char *id)
{
	for (struct peer *p = t->peers; p != NULL; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	return NULL;
}

/*
 * NNG 1.5.2's PUSH socket keeps the connections that may take a message on a ready list, and a
 * connection closed while it starts (its peer gone during the handshake, or our dialer closed
 * then) can be put on that list after its close took it off (nanomsg/nng#1653, fixed in NNG
 * 1.6.0): once NNG frees it, the socket's next send, or its next connection, touches freed
 * memory (test_transport_restart died of it in nng_send_aio about once in 15 runs).  A socket
 * is never trusted after one of its connections went: the connection's REM_POST, which NNG
 * runs before it frees the connection, stops all handing over to the socket (retired) and
 * pushes the old dialer's redial out of reach (NNG draws its delay from [0, RECONNMINT), so it
 * gets TRANSPORT_RETIRED_REDIAL_MS), and the loop replaces the socket with a new one
 * (peer_renew).  The peer has one dialer, so one connection at a time: a socket's life is one
 * connection.
 */
#define TRANSPORT_RETIRED_REDIAL_MS (24 * 3600 * 1000) /* a redial in 1 ms: odds ~1e-8 */

/* Pipe events on a peer's PUSH socket (NNG thread): count live connections; when one closes,
 * retire the socket and wake the loop to replace it and to tell (transport_down_cb). */
static void
peer_pipe_cb(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
	struct peer_gen *g = arg;
	pthread_mutex_lock(&g->mtx);
	if (!g->current) { /* a replaced socket's late event */
		pthread_mutex_unlock(&g->mtx);
		return;
	}
	struct peer *p = g->p;
	if (ev == NNG_PIPE_EV_ADD_POST) {
		atomic_fetch_add(&p->pipes, 1);
	} else if (ev == NNG_PIPE_EV_REM_POST) {
		struct transport *t = p->t;
		pthread_mutex_lock(&p->mtx);
		p->retired = true;
		pthread_mutex_unlock(&p->mtx);
		/* before NNG starts the redial timer (right after this callback) */
		nng_dialer d = nng_pipe_dialer(pipe);
		if (nng_dialer_id(d) > 0)
			nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, TRANSPORT_RETIRED_REDIAL_MS);
		/* (a connection rejected after ADD_PRE has a REM_POST and no ADD_POST) */
		if (atomic_exchange(&p->pipes, 0) > 0)
			atomic_store(&p->lost, true);
		atomic_store(&p->renew, true);
		pthread_mutex_lock(&t->down_mtx);
		if (t->down_open)
			uv_async_send(&t->down_async);
		pthread_mutex_unlock(&t->down_mtx);
	}
	pthread_mutex_unlock(&g->mtx);
}

static void peer_renew_due(struct peer *p);

/* Loop thread: tell of the peers whose last connection closed and that have none again. */
static void
transport_down_cb(uv_async_t *h)
{
	struct transport *t = h->data;
	char ids[TRANSPORT_MAX_PEERS][TRANSPORT_ID_MAX + 1];
	unsigned n = 0;
	for (struct peer *p = t->peers; p != NULL && n < TRANSPORT_MAX_PEERS; p = p->next)
		if (atomic_exchange(&p->lost, false) && atomic_load(&p->pipes) == 0)
			snprintf(ids[n++], sizeof(ids[0]), "%s", p->id);
	for (struct peer *p = t->peers; p != NULL && !t->closing; p = p->next)
		peer_renew_due(p);
	/* the callback may remove peers or close t: ids are copies, closing is checked */
	for (unsigned i = 0; i < n && !t->closing && t->down_cb != NULL; i++)
		t->down_cb(t->cb_arg, ids[i]);
}

void
transport_on_peer_down(struct transport *t, transport_peer_down_cb cb)
{
	t->down_cb = cb;
}

/* A monotonic clock in ms that any thread may read (uv_now is the loop thread's). */
static uint64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Hand the ring's head to NNG.  Called with p->mtx held, !p->busy, p->n > 0, !p->closing,
 * !p->retired. */
static void
peer_submit_locked(struct peer *p)
{
	struct queued q = p->ring[p->head];
	p->head = (p->head + 1) % p->t->max_queue;
	p->n--;
	p->busy = true;
	p->busy_len = q.len;
	p->busy_since_ms = mono_ms();
	nng_aio_set_msg(p->aio, q.msg);
	nng_send_aio(p->sock, p->aio);
}

/* The in-flight send finished (NNG thread).  Never frees the peer. */
static void
peer_send_cb(void *arg)
{
	struct peer *p = arg;
	int rv = nng_aio_result(p->aio);
	nng_msg *m = NULL;
	if (rv != 0) { /* on failure the message is still ours */
		m = nng_aio_get_msg(p->aio);
		nng_aio_set_msg(p->aio, NULL);
	}
	pthread_mutex_lock(&p->mtx);
	if (rv == 0)
		p->sent++;
	else if (rv != NNG_ECLOSED && rv != NNG_ECANCELED)
		p->send_errors++;
	if (m != NULL && p->retired && !p->closing) {
		/* taken back from a socket being replaced: first for the next one (its slot was
		   counted as in flight, so the ring has room; its bytes stay counted) */
		p->head = (p->head + p->t->max_queue - 1) % p->t->max_queue;
		p->ring[p->head] = (struct queued){.msg = m, .len = p->busy_len};
		p->n++;
	} else {
		nng_msg_free(m);
		p->bytes -= p->busy_len;
	}
	p->busy = false;
	p->busy_len = 0;
	if (!p->closing && !p->retired && p->n > 0)
		peer_submit_locked(p);
	pthread_mutex_unlock(&p->mtx);
}

static void
peer_gen_free(struct peer_gen *g)
{
	pthread_mutex_destroy(&g->mtx);
	free(g);
}

/*
 * Open the peer's socket and dialer (loop thread; p->retired, !p->dialing) and hand it what
 * waits.  0, or an error with nothing changed.
 */
static int
peer_open_sock(struct peer *p)
{
	struct transport *t = p->t;
	nng_socket sock;
	nng_dialer d;
	struct peer_gen *g = calloc(1, sizeof(*g));
	if (g == NULL)
		return TRANSPORT_ENOMEM;
	if (pthread_mutex_init(&g->mtx, NULL) != 0) {
		free(g);
		return TRANSPORT_ENOMEM;
	}
	g->p = p;
	g->current = true;
	if (nng_push0_open(&sock) != 0) {
		peer_gen_free(g);
		return TRANSPORT_ENNG;
	}
	nng_pipe_notify(sock, NNG_PIPE_EV_ADD_POST, peer_pipe_cb, g);
	nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, peer_pipe_cb, g);
	atomic_store(&p->pipes, 0);
	int rv = transport__dial_to(sock, t->tls, &t->tlsm, p->id, p->addr, &d);
	if (rv != 0) {
		nng_close(sock); /* never connected: nothing for NNG's reaper to wait on */
		peer_gen_free(g);
		return rv;
	}
	p->gen = g;
	p->dialer = d;
	p->dialing = true;
	p->dw = (struct dial_watch){.attempts = 0, .since_ms = uv_now(t->loop)};
	pthread_mutex_lock(&p->mtx);
	p->sock = sock;
	p->retired = false;
	p->busy_since_ms = mono_ms(); /* a send taken back waits for the new connection: afresh */
	if (!p->closing && !p->busy && p->n > 0)
		peer_submit_locked(p);
	pthread_mutex_unlock(&p->mtx);
	return 0;
}

/* A socket taken out of use and what its callbacks write (freed by fin once it is closed). */
struct sock_retired {
	nng_socket sock;
	void (*fin)(void *);
	void *arg;
};

static void *
sock_retired_thread(void *arg)
{
	struct sock_retired *r = arg;
	nng_close(r->sock);
	r->fin(r->arg); /* no callback of the socket runs after its close */
	free(r);
	return NULL;
}

/* Closes sock on a thread of its own (nng_close waits for NNG's reaper, which can hang:
 * nanomsg/nng#1543), then fin(arg); on the calling thread when no thread can be had. */
static void
sock_retire(nng_socket sock, void (*fin)(void *), void *arg)
{
	struct sock_retired *r = malloc(sizeof(*r));
	pthread_attr_t attr;
	pthread_t th;
	if (r != NULL && pthread_attr_init(&attr) == 0) {
		r->sock = sock;
		r->fin = fin;
		r->arg = arg;
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		int rv = pthread_create(&th, &attr, sock_retired_thread, r);
		pthread_attr_destroy(&attr);
		if (rv == 0)
			return;
	}
	free(r);
	nng_close(sock);
	fin(arg);
}

static void
peer_gen_fin(void *g)
{
	peer_gen_free(g);
}

/*
 * Take the peer's socket out of use (loop thread; p->dialing): nothing more is handed to it, the
 * send waiting in it comes back to the ring (peer_send_cb), its callbacks stop reaching p, and
 * it is closed on a thread of its own (nng_close waits for NNG's reaper, which can hang:
 * nanomsg/nng#1543).
 */
static void
peer_retire_sock(struct peer *p)
{
	pthread_mutex_lock(&p->mtx);
	p->retired = true;
	pthread_mutex_unlock(&p->mtx);
	nng_aio_cancel(p->aio);
	nng_aio_wait(p->aio); /* its callback ran: the message is back, nothing resubmitted */
	struct peer_gen *g = p->gen;
	pthread_mutex_lock(&g->mtx);
	g->current = false;
	pthread_mutex_unlock(&g->mtx);
	p->dialing = false;
	p->gen = NULL;
	sock_retire(p->sock, peer_gen_fin, g);
}

/* Loop thread: replace the peer's socket (see "NNG 1.5.2's PUSH ready list" above).  0, or the
 * error of the new one's opening (then the peer is not dialing; the guard tries again). */
static int
peer_renew(struct peer *p)
{
	if (p->dialing)
		peer_retire_sock(p);
	int rv = peer_open_sock(p);
	if (rv == 0)
		p->renewals++;
	p->renewed_ms = uv_now(p->t->loop);
	return rv;
}

/* Loop thread: replace the socket if a connection of it closed, at most once per
 * TRANSPORT_RECONNECT_MIN_MS (a peer that takes connections and drops them at once must not
 * spin us; the guard's tick looks again).  A failure leaves the peer not dialing: the guard
 * retries. */
static void
peer_renew_due(struct peer *p)
{
	if (!atomic_load(&p->renew) ||
	    uv_now(p->t->loop) - p->renewed_ms < TRANSPORT_RECONNECT_MIN_MS)
		return;
	atomic_store(&p->renew, false);
	(void)peer_renew(p);
}

static int
peer_new(struct transport *t, const char *id, const char *addr, struct peer **out)
{
	int rv = TRANSPORT_ENOMEM;
	struct peer *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return TRANSPORT_ENOMEM;
	p->t = t;
	atomic_init(&p->pipes, 0);
	atomic_init(&p->lost, false);
	if ((p->id = strdup(id)) == NULL)
		goto err_after_alloc;
	if ((p->addr = strdup(addr)) == NULL)
		goto err_after_id;
	if ((p->ring = calloc(t->max_queue, sizeof(*p->ring))) == NULL)
		goto err_after_id;
	if (pthread_mutex_init(&p->mtx, NULL) != 0)
		goto err_after_ring;
	if (nng_aio_alloc(&p->aio, peer_send_cb, p) != 0)
		goto err_after_mtx;
	p->retired = true;
	if ((rv = peer_open_sock(p)) != 0)
		goto err_after_aio;
	*out = p;
	return 0;

err_after_aio:
	nng_aio_free(p->aio);
err_after_mtx:
	pthread_mutex_destroy(&p->mtx);
err_after_ring:
	free(p->ring);
err_after_id:
	free(p->addr); /* NULL when its strdup failed */
	free(p->id);
err_after_alloc:
	free(p);
	return rv;
}

/* Stop and free a peer (loop thread; p already unlinked).  Its counters go to t's totals. */
static void
peer_free(struct peer *p)
{
	struct transport *t = p->t;

	pthread_mutex_lock(&p->mtx);
	p->closing = true;
	pthread_mutex_unlock(&p->mtx);
	/* Cancels the in-flight send and waits for peer_send_cb, which does not resubmit. */
	nng_aio_stop(p->aio);
	if (p->dialing) {
		nng_close(p->sock); /* closes the dialer and its pipes; no pipe callback after it */
		peer_gen_free(p->gen);
	}
	nng_msg *m = nng_aio_get_msg(p->aio);
	if (m != NULL) /* a submission refused after the stop: still ours */
		nng_msg_free(m);
	nng_aio_free(p->aio);
	while (p->n > 0) {
		nng_msg_free(p->ring[p->head].msg);
		p->head = (p->head + 1) % t->max_queue;
		p->n--;
	}
	t->gone_sent += p->sent;
	t->gone_dropped_full += p->dropped_full;
	t->gone_send_errors += p->send_errors;
	t->gone_dialer_restarts += p->dialer_restarts;
	pthread_mutex_destroy(&p->mtx);
	free(p->ring);
	free(p->addr);
	free(p->id);
	free(p);
}

/* ---- receive ---- */

/* Whether pipe id a was created after b (NNG numbers pipes in order, modulo 2^31). */
static bool
pipe_newer(uint32_t a, uint32_t b)
{
	uint32_t d = (a - b) & 0x7fffffffu;
	return d != 0 && d < 0x40000000u;
}

/*
 * A frame of p's came in on pipe at now_ms.  A peer reaches us on one connection at a time (one
 * dialer), so when a newer connection carries its frames, the older one is dead.  NNG notices
 * that by itself, except for a TLS connection whose peer vanished while its last message waited
 * for us (PULL posts no receive then): that one keeps its state, buffers and descriptor forever.
 * So the older one is noted, and the guard closes it once it has been silent for
 * TRANSPORT_STALE_PIPE_MS (stale_inbound_closed).  Not at once, and not while it carries
 * anything: closing a connection in the middle of a receive can wedge NNG 1.5.2's reaper for
 * good.  Frames still queued on the older one are delivered.
 */
static void
peer_inbound(struct peer *p, nng_pipe pipe, uint64_t now_ms)
{
	int id = nng_pipe_id(pipe);
	int cur = nng_pipe_id(p->in_pipe);
	if (id <= 0 || id == cur)
		return;
	if (cur > 0 && !pipe_newer((uint32_t)id, (uint32_t)cur)) { /* an older one, still busy */
		for (unsigned i = 0; i < p->n_stale; i++)
			if (nng_pipe_id(p->stale[i]) == id)
				p->stale_at[i] = now_ms;
		return;
	}
	if (cur > 0) {
		if (p->n_stale == TRANSPORT_STALE_PIPES_MAX) { /* forget the oldest: bounded */
			memmove(&p->stale[0], &p->stale[1], (p->n_stale - 1) * sizeof(p->stale[0]));
			memmove(&p->stale_at[0], &p->stale_at[1],
				(p->n_stale - 1) * sizeof(p->stale_at[0]));
			p->n_stale--;
		}
		p->stale[p->n_stale] = p->in_pipe;
		p->stale_at[p->n_stale] = now_ms;
		p->n_stale++;
	}
	p->in_pipe = pipe;
}

/* Close p's superseded connections silent for TRANSPORT_STALE_PIPE_MS (loop thread). */
static void
peer_close_stale(struct peer *p, uint64_t now_ms)
{
	unsigned kept = 0;
	for (unsigned i = 0; i < p->n_stale; i++) {
		if (now_ms - p->stale_at[i] < TRANSPORT_STALE_PIPE_MS) {
			p->stale[kept] = p->stale[i];
			p->stale_at[kept] = p->stale_at[i];
			kept++;
		} else if (nng_pipe_close(p->stale[i]) == 0) { /* else: NNG closed it by itself */
			p->t->stale_inbound_closed++;
		}
	}
	p->n_stale = kept;
}

static void
transport_deliver(struct transport *t, nng_msg *msg)
{
	size_t len = nng_msg_len(msg);
	if (len > t->max_msg_bytes + TRANSPORT_FRAME_OVERHEAD_MAX) {
		t->dropped_malformed++;
		return;
	}
	Relay__PeerFrame *f = relay__peer_frame__unpack(NULL, len, nng_msg_body(msg));
	if (f == NULL) {
		t->dropped_malformed++;
		return;
	}
	if (f->payload.len > t->max_msg_bytes || !id_ok(f->from) || !id_ok(f->to)) {
		t->dropped_malformed++;
		goto out;
	}
	const char *cid = f->cluster_id != NULL ? f->cluster_id : "";
	struct peer *p = NULL;
	if (strcmp(f->to, t->node_id) != 0 || strcmp(cid, t->cluster_id) != 0 ||
	    strcmp(f->from, t->node_id) == 0) {
		t->dropped_unauth++;
		goto out;
	}
	if ((p = peer_find(t, f->from)) != NULL) {
		peer_inbound(p, nng_msg_get_pipe(msg), uv_now(t->loop));
	} else if (t->admit_strangers) {
		/* its connection passed mutual TLS against the cluster CA: the receiver decides */
		t->strangers_received++;
	} else {
		t->dropped_unauth++;
		goto out;
	}
	t->received++;
	t->cb(t->cb_arg, f->from, f->has_kind ? f->kind : 0, f->payload.data, f->payload.len);
out:
	relay__peer_frame__free_unpacked(f, NULL);
}

/* nng_recvmsg(NONBLOCK) on one aio kept for the purpose: NNG 1.5.2's nng_recvmsg allocates
 * an aio per call (a getrandom(2) and a malloc each, measured: 2.7 per message at 500 msg/s). */
static int
transport_recv(struct transport *t, nng_msg **msg)
{
	if (t->raio == NULL && nng_aio_alloc(&t->raio, NULL, NULL) != 0) {
		t->raio = NULL;
		return nng_recvmsg(t->pull, msg, NNG_FLAG_NONBLOCK);
	}
	nng_aio_set_timeout(t->raio, NNG_DURATION_ZERO);
	nng_recv_aio(t->pull, t->raio);
	nng_aio_wait(t->raio);
	int rv = nng_aio_result(t->raio);
	if (rv == 0)
		*msg = nng_aio_get_msg(t->raio);
	return rv;
}

static void
transport_poll_cb(uv_poll_t *h, int status, int events)
{
	struct transport *t = h->data;
	for (unsigned i = 0; i < TRANSPORT_RECV_BATCH && !t->closing; i++) {
		nng_msg *msg;
		if (transport_recv(t, &msg) != 0)
			break; /* NNG_ETIMEDOUT: drained */
		transport_deliver(t, msg);
		nng_msg_free(msg);
	}
}

/* ---- endpoint guard, the I/O edge (loop thread) ---- */

/* The statistics scope of endpoint `id` of a kind ("listener", "dialer") in the tree under st,
 * or NULL.  Not nng_stat_find_listener/_dialer: in NNG 1.5.2 they match the id at the root
 * only and then return the FIRST scope of that kind anywhere below (nng_stat_find_scope
 * recurses by name alone), so with two peers the guard read one peer's dialer for the other's,
 * and with a second listener in the process (a socket left closing) the wrong listener. */
struct nng_stat *
transport_stat_endpoint(struct nng_stat *st, const char *kind, int id)
{
	if (st == NULL)
		return NULL;
	if (nng_stat_type(st) == NNG_STAT_SCOPE && strcmp(nng_stat_name(st), kind) == 0) {
		for (nng_stat *c = nng_stat_child(st); c != NULL; c = nng_stat_next(c))
			if (strcmp(nng_stat_name(c), "id") == 0)
				return nng_stat_value(c) == (uint64_t)id ? st : NULL;
		return NULL;
	}
	for (nng_stat *c = nng_stat_child(st); c != NULL; c = nng_stat_next(c)) {
		nng_stat *r = transport_stat_endpoint(c, kind, id);
		if (r != NULL)
			return r;
	}
	return NULL;
}

/* The counter name of an endpoint's statistics st; 0 when absent. */
static uint64_t
stat_count(nng_stat *st, const char *name)
{
	nng_stat *c = nng_stat_find(st, name);
	return c != NULL ? nng_stat_value(c) : 0;
}

/* Every attempt a dialer has counted: connections made and each kind of failure. */
static uint64_t
dialer_attempts(nng_stat *st)
{
	static const char *const names[] = {"connect", "refused", "disconnect", "canceled",
					    "other",   "timeout", "proto",	"auth",
					    "oom",     "reject"};
	uint64_t n = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		n += stat_count(st, names[i]);
	return n;
}

/* Our own listener as a probe dials it: a wildcard host becomes the loopback address. */
static void
probe_addr(const struct transport *t, char *buf, size_t size)
{
	const char *h = t->listen_host;
	if (h[0] == '\0' || strcmp(h, "*") == 0 || strcmp(h, "0.0.0.0") == 0)
		h = "127.0.0.1";
	else if (strcmp(h, "[::]") == 0)
		h = "[::1]";
	snprintf(buf, size, "%s:%d", h, t->port);
}

/*
 * What a probe socket's callbacks (NNG threads) report to the loop.  Each probe has a socket of
 * its own, for the reason a peer socket lives one connection (see "NNG 1.5.2's PUSH ready
 * list" above): a probe connection that closes as it starts could be left on the socket's
 * ready list after NNG freed it, and the next connection of that socket would be appended
 * behind it.  So a probe whose connection closes dials again on a fresh socket, and the old
 * one is closed on a thread of its own (nng_close waits for NNG's reaper: nanomsg/nng#1543);
 * its callbacks write here, freed only after that close returns.
 */
struct probe_gen {
	atomic_bool connected; /* a connection of this socket was added */
	atomic_bool lost;      /* ... and one was removed */
};

static void
probe_pipe_cb(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
	(void)pipe;
	struct probe_gen *g = arg;
	if (ev == NNG_PIPE_EV_ADD_POST)
		atomic_store(&g->connected, true);
	else
		atomic_store(&g->lost, true);
}

/* A dialer of ours on our listener, on a socket of its own, so that a listener that accepts
 * counts one. */
static int
probe_start(struct transport *t)
{
	char addr[TRANSPORT_URL_MAX + 16];
	struct probe_gen *g = calloc(1, sizeof(*g));
	if (g == NULL)
		return TRANSPORT_ENOMEM;
	atomic_init(&g->connected, false);
	atomic_init(&g->lost, false);
	nng_socket sock;
	if (nng_push0_open(&sock) != 0) {
		free(g);
		return TRANSPORT_ENNG;
	}
	nng_pipe_notify(sock, NNG_PIPE_EV_ADD_POST, probe_pipe_cb, g);
	nng_pipe_notify(sock, NNG_PIPE_EV_REM_POST, probe_pipe_cb, g);
	probe_addr(t, addr, sizeof(addr));
	/* no server name: our cert names our id, and any cert of the cluster CA will do */
	int rv = transport__dial_to(sock, t->tls, &t->tlsm, NULL, addr, &t->probe_dialer);
	if (rv != 0) {
		nng_close(sock); /* no connection was ever made: nothing for the reaper to wait on */
		free(g);
		return rv;
	}
	t->probe = sock;
	t->probe_gen = g;
	t->probing = true;
	return 0;
}

/* End a probe (loop thread): its socket is closed off the loop, and its callbacks' target
 * freed after. */
static void
probe_stop(struct transport *t)
{
	if (!t->probing)
		return;
	t->probing = false;
	sock_retire(t->probe, free, t->probe_gen);
}

/*
 * Close the listener and listen again on the port it had.  Closing it closes the connections
 * it accepted (their peers redial) and the ones NNG held back from it.
 * Known gaps (NNG 1.5.2): the held-back connections are never freed (~75 KB and a descriptor
 * each; tests/lsan-nng.supp, entry 1); and closing an accepted connection at the instant it
 * resubmits a partial receive can wedge NNG's reaper, as nng_close can (nanomsg/nng#1543).
 * Both only when a listener has stopped accepting, which is worse.
 */
static int
listener_recreate(struct transport *t)
{
	char addr[TRANSPORT_URL_MAX + 16];
	int port;
	if (t->listening)
		nng_listener_close(t->listener);
	t->listening = false;
	snprintf(addr, sizeof(addr), "%s:%d", t->listen_host, t->port);
	int rv = transport__listen_on(t->pull, t->tls, &t->tlsm, addr, &t->listener, &port);
	if (rv == 0)
		t->listening = true;
	return rv;
}

static void
guard_listener_restart(struct transport *t, uint64_t other, uint64_t accepts)
{
	int rv = listener_recreate(t);
	if (rv == 0)
		t->listener_restarts++;
	fprintf(stderr,
		"transport: event=listener-restart node=%s listen=%s:%d other=%llu accept=%llu "
		"probe_wait_ms=%d status=%s (nanomsg/nng#1518: the listener accepted nothing, "
		"our probe included)\n",
		t->node_id, t->listen_host, t->port, (unsigned long long)other,
		(unsigned long long)accepts, TRANSPORT_PROBE_WAIT_MS,
		rv == 0 ? "listening" : transport_strerror(rv));
}

static void
guard_listener(struct transport *t, nng_stat *root, uint64_t now_ms)
{
	if (!t->listening) { /* the last re-creation failed (port still held?): again */
		int rv = listener_recreate(t);
		if (rv == 0) {
			t->listener_restarts++;
			fprintf(stderr,
				"transport: event=listener-restart node=%s listen=%s:%d "
				"status=listening (after a failed attempt)\n",
				t->node_id, t->listen_host, t->port);
		}
		return;
	}
	nng_stat *st = transport_stat_endpoint(root, "listener", nng_listener_id(t->listener));
	if (st == NULL) /* NNG without statistics: no guard */
		return;
	uint64_t other = stat_count(st, "other"), accepts = stat_count(st, "accept");
	if (t->probing && atomic_load(&t->probe_gen->lost)) {
		/* the probe's connection closed (our listener's restart, or NNG): dial again on a
		 * fresh socket, the watch unchanged */
		probe_stop(t);
		int rv = probe_start(t);
		fprintf(stderr, "transport: event=probe-redial node=%s status=%s\n", t->node_id,
			rv == 0 ? "dialing" : transport_strerror(rv));
	}
	bool probe_up = t->probing && atomic_load(&t->probe_gen->connected);
	switch (listen_watch_step(&t->lw, other, accepts, probe_up, now_ms)) {
	case LISTEN_OK:
		return;
	case LISTEN_PROBE:
		t->listener_probes++;
		if (probe_start(t) != 0) /* a peer's accept still proves it; else restart */
			fprintf(stderr, "transport: event=probe-failed node=%s\n", t->node_id);
		return;
	case LISTEN_ALIVE:
		probe_stop(t);
		return;
	case LISTEN_RESTART:
		guard_listener_restart(t, other, accepts);
		probe_stop(t); /* after: NNG closed its end with the old listener */
		return;
	}
}

static void
guard_dialer(struct transport *t, struct peer *p, nng_stat *root, uint64_t now_ms)
{
	uint64_t attempts = 0;
	if (p->dialing) {
		nng_stat *st = transport_stat_endpoint(root, "dialer", nng_dialer_id(p->dialer));
		if (st == NULL) /* NNG without statistics: no guard */
			return;
		attempts = dialer_attempts(st);
	}
	uint64_t idle_ms = now_ms - p->dw.since_ms;
	bool connected = atomic_load(&p->pipes) > 0;
	pthread_mutex_lock(&p->mtx);
	bool busy = p->busy;
	uint64_t busy_ms = busy ? mono_ms() - p->busy_since_ms : 0;
	pthread_mutex_unlock(&p->mtx);
	bool stalled = send_stalled(connected, busy, busy_ms);
	if (p->dialing && !stalled && !dial_watch_step(&p->dw, connected, attempts, now_ms))
		return;
	bool was_dialing = p->dialing;
	/* a new socket and dialer: a dialer NNG stopped for good, or a send that stands still
	   on a connection that cannot be trusted, go with the old socket */
	int rv = peer_renew(p);
	if (rv == 0 && was_dialing)
		p->dialer_restarts++;
	if (!was_dialing) {
		if (rv == 0)
			fprintf(
			    stderr,
			    "transport: event=peer-socket node=%s peer=%s addr=%s status=dialing "
			    "(after a failed attempt)\n",
			    t->node_id, p->id, p->addr);
	} else if (stalled)
		fprintf(
		    stderr,
		    "transport: event=dialer-restart node=%s peer=%s addr=%s send_stall_ms=%llu "
		    "status=%s (a send stood still on a connection NNG counts as open: the peer "
		    "reads nothing, or NNG's reaper is stuck, nanomsg/nng#1543)\n",
		    t->node_id, p->id, p->addr, (unsigned long long)busy_ms,
		    rv == 0 ? "dialing" : transport_strerror(rv));
	else
		fprintf(
		    stderr,
		    "transport: event=dialer-restart node=%s peer=%s addr=%s idle_ms=%llu "
		    "attempts=%llu status=%s (nanomsg/nng#1518: no connection and no attempt)\n",
		    t->node_id, p->id, p->addr, (unsigned long long)idle_ms,
		    (unsigned long long)attempts, rv == 0 ? "dialing" : transport_strerror(rv));
}

/*
 * Every TRANSPORT_GUARD_TICK_MS: superseded inbound connections, then one snapshot of NNG's
 * statistics and every endpoint looked at.
 */
static void
transport_guard_cb(uv_timer_t *h)
{
	struct transport *t = h->data;
	nng_stat *root;
	if (t->closing)
		return;
	uint64_t now_ms = uv_now(t->loop);
	for (struct peer *p = t->peers; p != NULL; p = p->next)
		peer_close_stale(p, now_ms);
	if (nng_stats_get(&root) != 0)
		return;
	guard_listener(t, root, now_ms);
	for (struct peer *p = t->peers; p != NULL; p = p->next) {
		if (atomic_load(&p->renew)) { /* a lost connection: replaced when due */
			peer_renew_due(p);
			continue;
		}
		guard_dialer(t, p, root, now_ms);
	}
	nng_stats_free(root);
}

/* ---- public: peer transport ---- */

static void transport_closed_cb(uv_handle_t *h);

int
transport_open(uv_loop_t *loop, const struct transport_config *cfg, transport_recv_cb cb, void *arg,
	       struct transport **out)
{
	int rv, fd;
	if (loop == NULL || cfg == NULL || cb == NULL || out == NULL || !id_ok(cfg->node_id) ||
	    cfg->listen == NULL ||
	    (cfg->cluster_id != NULL && strlen(cfg->cluster_id) > TRANSPORT_ID_MAX))
		return TRANSPORT_EINVAL;
	struct transport *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return TRANSPORT_ENOMEM;
	pthread_mutex_init(&t->down_mtx, NULL); /* destroyed where t is freed */
	t->loop = loop;
	t->cb = cb;
	t->cb_arg = arg;
	strcpy(t->node_id, cfg->node_id);
	if (cfg->cluster_id != NULL)
		strcpy(t->cluster_id, cfg->cluster_id);
	t->max_msg_bytes =
	    cfg->max_msg_bytes ? cfg->max_msg_bytes : TRANSPORT_DEFAULT_MAX_MSG_BYTES;
	t->max_queue = cfg->max_queue_per_peer ? cfg->max_queue_per_peer
					       : TRANSPORT_DEFAULT_MAX_QUEUE_PER_PEER;
	t->max_queue_bytes = cfg->max_queue_bytes_per_peer
				 ? cfg->max_queue_bytes_per_peer
				 : TRANSPORT_DEFAULT_MAX_QUEUE_BYTES_PER_PEER;
	if ((rv = transport__tls_load(&t->tlsm, cfg->ca_file, cfg->cert_file, cfg->key_file,
				      &t->tls)) != 0)
		goto err_after_alloc;
	t->admit_strangers = cfg->admit_strangers && t->tls; /* plain TCP: anyone could */
	if (nng_pull0_open(&t->pull) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_tls;
	}
	nng_socket_set_size(t->pull, NNG_OPT_RECVMAXSZ,
			    t->max_msg_bytes + TRANSPORT_FRAME_OVERHEAD_MAX);
	nng_socket_set_int(t->pull, NNG_OPT_RECVBUF, TRANSPORT_RECVBUF); /* best effort */
	if ((rv = transport__listen_on(t->pull, t->tls, &t->tlsm, cfg->listen, &t->listener,
				       &t->port)) != 0)
		goto err_after_sock;
	t->listening = true;
	/* transport__listen_on checked the form host:port; the guard listens again on host and
	 * t->port */
	snprintf(t->listen_host, sizeof(t->listen_host), "%.*s",
		 (int)(strrchr(cfg->listen, ':') - cfg->listen), cfg->listen);
	if (nng_socket_get_int(t->pull, NNG_OPT_RECVFD, &fd) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_sock;
	}
	if (uv_poll_init(loop, &t->poll, fd) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_sock;
	}
	t->poll.data = t;
	if (uv_poll_start(&t->poll, UV_READABLE, transport_poll_cb) != 0) {
		/* The handle exists now: it can only go through uv_close. */
		nng_close(t->pull);
		transport__tls_fini(&t->tlsm);
		t->closing = true;
		pthread_mutex_init(&t->close_mtx, NULL);
		pthread_cond_init(&t->close_cv, NULL);
		t->close_refs = 1;
		t->handles = 1;
		uv_close((uv_handle_t *)&t->poll, transport_closed_cb);
		return TRANSPORT_ENNG;
	}
	uv_timer_init(loop, &t->guard);
	t->guard.data = t;
	uv_async_init(loop, &t->down_async, transport_down_cb);
	t->down_async.data = t;
	t->down_open = true;
	t->handles = 3;
	if (t->port > 0) /* without the bound port, the listener could not be re-created */
		uv_timer_start(&t->guard, transport_guard_cb, TRANSPORT_GUARD_TICK_MS,
			       TRANSPORT_GUARD_TICK_MS);
	*out = t;
	return 0;

err_after_sock:
	nng_close(t->pull);
err_after_tls:
	transport__tls_fini(&t->tlsm);
err_after_alloc:
	free(t);
	return rv;
}

int
transport_listen_port(const struct transport *t)
{
	return t->port;
}

int
transport_add_peer(struct transport *t, const char *peer_id, const char *addr)
{
	if (t->closing)
		return TRANSPORT_ECLOSED;
	if (!id_ok(peer_id) || strcmp(peer_id, t->node_id) == 0 || addr == NULL)
		return TRANSPORT_EINVAL;
	if (peer_find(t, peer_id) != NULL)
		return TRANSPORT_EEXIST;
	if (t->n_peers >= TRANSPORT_MAX_PEERS)
		return TRANSPORT_EFULL;
	struct peer *p;
	int rv = peer_new(t, peer_id, addr, &p);
	if (rv != 0)
		return rv;
	p->next = t->peers;
	t->peers = p;
	t->n_peers++;
	return 0;
}

int
transport_remove_peer(struct transport *t, const char *peer_id)
{
	if (t->closing)
		return TRANSPORT_ECLOSED;
	for (struct peer **pp = &t->peers; *pp != NULL; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, peer_id) == 0) {
			struct peer *p = *pp;
			*pp = p->next;
			t->n_peers--;
			/* on the loop: a release on a thread of its own could outlive t, which
			   the peer's pipe callback reaches (p->t); nng_close hangs only after
			   NNG's reaper got stuck (nanomsg/nng#1543) */
			peer_free(p);
			return 0;
		}
	}
	return TRANSPORT_ENOPEER;
}

int
transport_send(struct transport *t, const char *peer_id, uint32_t kind, const void *data,
	       size_t len)
{
	if (t->closing)
		return TRANSPORT_ECLOSED;
	if (len > t->max_msg_bytes)
		return TRANSPORT_ETOOBIG;
	if (len > 0 && data == NULL)
		return TRANSPORT_EINVAL;
	struct peer *p = peer_find(t, peer_id);
	if (p == NULL)
		return TRANSPORT_ENOPEER;

	/* Only this thread adds, so a queue seen with room still has room after packing. */
	pthread_mutex_lock(&p->mtx);
	unsigned waiting = p->n + (p->busy ? 1u : 0u);
	/* An empty queue takes any message within max_msg_bytes, whatever the byte bound. */
	bool full = waiting >= t->max_queue || (waiting > 0 && p->bytes + len > t->max_queue_bytes);
	if (full)
		p->dropped_full++;
	pthread_mutex_unlock(&p->mtx);
	if (full)
		return TRANSPORT_EFULL;

	Relay__PeerFrame f = RELAY__PEER_FRAME__INIT;
	f.from = t->node_id;
	f.to = p->id;
	if (t->cluster_id[0] != '\0')
		f.cluster_id = t->cluster_id;
	f.has_kind = kind != 0;
	f.kind = kind;
	f.payload.data = (uint8_t *)data;
	f.payload.len = len;
	size_t size = relay__peer_frame__get_packed_size(&f);
	nng_msg *m;
	if (nng_msg_alloc(&m, size) != 0)
		return TRANSPORT_ENOMEM;
	relay__peer_frame__pack(&f, nng_msg_body(m));

	pthread_mutex_lock(&p->mtx);
	unsigned tail = (p->head + p->n) % t->max_queue;
	p->ring[tail] = (struct queued){.msg = m, .len = len};
	p->n++;
	p->bytes += len;
	if (!p->busy && !p->retired)
		peer_submit_locked(p);
	pthread_mutex_unlock(&p->mtx);
	return 0;
}

/* Drops one of the references of a closing transport; the last one frees it. */
static void
transport_close_unref(struct transport *t)
{
	pthread_mutex_lock(&t->close_mtx);
	int left = --t->close_refs;
	pthread_mutex_unlock(&t->close_mtx);
	if (left == 0) {
		if (t->raio != NULL)
			nng_aio_free(t->raio); /* idle: only the loop's poll callback uses it */
		pthread_cond_destroy(&t->close_cv);
		pthread_mutex_destroy(&t->close_mtx);
		pthread_mutex_destroy(&t->down_mtx);
		free(t);
	}
}

/* Close callback of the poll and guard handles: the last one ends the loop side's share. */
static void
transport_closed_cb(uv_handle_t *h)
{
	struct transport *t = h->data;
	if (--t->handles > 0)
		return;
	void (*done)(void *) = t->done;
	void *arg = t->done_arg;
	transport_close_unref(t);
	if (done != NULL)
		done(arg);
}

/* The NNG side of the close: sockets, peers and their queues, TLS material. */
static void
transport_close_nng(struct transport *t)
{
	if (t->probing) {
		nng_close(t->probe);
		free(t->probe_gen);
		t->probing = false;
	}
	nng_close(t->pull);
	while (t->peers != NULL) {
		struct peer *p = t->peers;
		t->peers = p->next;
		t->n_peers--;
		peer_free(p);
	}
	transport__tls_fini(&t->tlsm);
}

static void *
transport_close_thread(void *arg)
{
	struct transport *t = arg;
	transport_close_nng(t);
	pthread_mutex_lock(&t->close_mtx);
	t->close_finished = true;
	pthread_cond_signal(&t->close_cv);
	pthread_mutex_unlock(&t->close_mtx);
	transport_close_unref(t);
	return NULL;
}

void
transport_close(struct transport *t, void (*done)(void *arg), void *arg)
{
	if (t == NULL)
		return;
	t->closing = true;
	t->done = done;
	t->done_arg = arg;
	/* Stop watching RECVFD before NNG closes it with the socket. */
	uv_poll_stop(&t->poll);
	uv_timer_stop(&t->guard);
	pthread_mutex_init(&t->close_mtx, NULL);
	pthread_cond_init(&t->close_cv, NULL);
	t->close_refs = 2;
	pthread_attr_t attr;
	pthread_t th;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &attr, transport_close_thread, t) != 0) {
		transport_close_nng(t);
		t->close_refs = 1;
	} else {
		/* the loop waits as it did for an inline close, but boundedly */
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += TRANSPORT_CLOSE_WAIT_MS / 1000;
		pthread_mutex_lock(&t->close_mtx);
		while (!t->close_finished)
			if (pthread_cond_timedwait(&t->close_cv, &t->close_mtx, &dl) != 0)
				break;
		bool finished = t->close_finished;
		pthread_mutex_unlock(&t->close_mtx);
		if (!finished)
			fprintf(
			    stderr,
			    "transport: event=close-stuck node=%s wait_ms=%d: NNG's socket close "
			    "did not return (nanomsg/nng#1543); left behind\n",
			    t->node_id, TRANSPORT_CLOSE_WAIT_MS);
	}
	pthread_attr_destroy(&attr);
	/* a close left behind can still run pipe callbacks: they find down_open false */
	pthread_mutex_lock(&t->down_mtx);
	t->down_open = false;
	pthread_mutex_unlock(&t->down_mtx);
	uv_close((uv_handle_t *)&t->down_async, transport_closed_cb);
	uv_close((uv_handle_t *)&t->guard, transport_closed_cb);
	uv_close((uv_handle_t *)&t->poll, transport_closed_cb);
}

void
transport_stats(const struct transport *t, struct transport_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->received = t->received;
	out->dropped_unauth = t->dropped_unauth;
	out->strangers_received = t->strangers_received;
	out->dropped_malformed = t->dropped_malformed;
	out->sent = t->gone_sent;
	out->dropped_full = t->gone_dropped_full;
	out->send_errors = t->gone_send_errors;
	out->dialer_restarts = t->gone_dialer_restarts;
	out->listener_probes = t->listener_probes;
	out->listener_restarts = t->listener_restarts;
	out->stale_inbound_closed = t->stale_inbound_closed;
	for (struct peer *p = t->peers; p != NULL; p = p->next) {
		pthread_mutex_lock(&p->mtx);
		out->sent += p->sent;
		out->dropped_full += p->dropped_full;
		out->send_errors += p->send_errors;
		pthread_mutex_unlock(&p->mtx);
		out->dialer_restarts += p->dialer_restarts;
		out->peers++;
		if (atomic_load(&p->pipes) > 0)
			out->peers_connected++;
	}
}

int
transport_peer_stats(const struct transport *t, const char *peer_id,
		     struct transport_peer_stats *out)
{
	struct peer *p = peer_find(t, peer_id);
	if (p == NULL)
		return TRANSPORT_ENOPEER;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&p->mtx);
	out->queued = p->n + (p->busy ? 1u : 0u);
	out->queued_bytes = p->bytes;
	out->sent = p->sent;
	out->dropped_full = p->dropped_full;
	out->send_errors = p->send_errors;
	pthread_mutex_unlock(&p->mtx);
	out->dialer_restarts = p->dialer_restarts;
	out->sockets_renewed = p->renewals;
	out->connected = atomic_load(&p->pipes) > 0;
	return 0;
}
