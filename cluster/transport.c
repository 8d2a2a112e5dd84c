/*
 * transport.c: the peer transport (see transport.h for the contract): frames over TCP, mutual
 * TLS through OpenSSL memory BIOs, every byte read and written on the loop thread.
 *
 * Wire (the same as NNG's PUSH/PULL over tcp:// and tls+tcp://, which the nodes before this
 * transport spoke, so old and new nodes talk during a rolling upgrade): after TCP connect (and
 * the TLS handshake) each side sends the 8-byte SP header 00 'S' 'P' 00, its protocol (u16
 * big-endian: 0x50 PUSH for the dialer, 0x51 PULL for the listener), 00 00.  Then the dialer
 * sends messages, each a u64 big-endian length and a relay.PeerFrame of that length; the
 * listener sends nothing more.
 *
 * Send path (loop thread): transport_send packs the frame (length prefix included) into one
 * allocation and appends it to the peer's queue (bounded by max_queue_per_peer frames and
 * max_queue_bytes_per_peer payload bytes).  peer_pump writes the head on the peer's connection
 * with uv_try_write (with TLS: SSL_write into the memory BIO, then the ciphertext); what the
 * kernel does not take goes through one uv_write, and nothing else is written until it
 * completes.  The head leaves the queue only once all its bytes are in the kernel: a frame cut
 * by a lost connection is sent whole on the next one (the receiver never sees a cut frame).
 * Receive path (loop thread): read_cb -> (TLS: BIO_write, SSL_read) -> c->in -> SP header, then
 * frames -> checks -> the recv callback.
 * Guard (a 1 s timer): connects and handshakes past TRANSPORT_HANDSHAKE_MS, sends standing
 * still past TRANSPORT_SEND_STALL_MS, and a peer's superseded inbound connections are closed.
 * Lifetimes: t lives until every handle it opened is closed (t->handles); a peer until its
 * retry timer and every connection that points at it are closed (p->refs).
 */
#include "transport.h"
#include "transport_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "transport.pb-c.h"

#define SP_HDR_LEN 8u
#define LEN_HDR_LEN 8u
#define SP_PUSH 0x50
#define SP_PULL 0x51
#define LOG_EVERY_MS 10000 /* a repeated warning of one kind, per peer or per transport */

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

/* True (and the time noted) when a warning last given at *last is due again. */
static bool
log_due(uint64_t *last, uint64_t now)
{
	if (*last != 0 && now - *last < LOG_EVERY_MS)
		return false;
	*last = now == 0 ? 1 : now;
	return true;
}

/* "host:port" or "[v6]:port" into host and port.  0 or TRANSPORT_EADDR. */
static int
split_hostport(const char *addr, char *host, size_t hsize, int *port, bool port0_ok)
{
	if (addr == NULL)
		return TRANSPORT_EADDR;
	const char *colon = strrchr(addr, ':');
	const char *h = addr;
	size_t hl;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		if (rb == NULL || rb[1] != ':')
			return TRANSPORT_EADDR;
		h = addr + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		if (colon == NULL)
			return TRANSPORT_EADDR;
		hl = (size_t)(colon - addr);
	}
	if (hl == 0 || hl >= hsize)
		return TRANSPORT_EADDR;
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || p < (port0_ok ? 0 : 1) || p > 65535)
		return TRANSPORT_EADDR;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (int)p;
	return 0;
}

/* A numeric host and port into sa.  0 when host is an IP address. */
static int
numeric_addr(const char *host, int port, struct sockaddr_storage *sa)
{
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)sa) == 0)
		return 0;
	if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)sa) == 0)
		return 0;
	return -1;
}

/* ---- types ---- */

struct frame {
	struct frame *next;
	size_t payload; /* payload bytes (what the byte bound counts) */
	size_t len;	/* bytes in data: the u64 length, then the packed PeerFrame */
	uint8_t data[];
};

enum conn_state {
	CS_CONNECT,   /* outbound: TCP connect in progress */
	CS_HANDSHAKE, /* TLS handshake and/or the SP headers */
	CS_UP,	      /* frames flow */
	CS_CLOSED,    /* uv_close called */
};

struct peer;

struct conn {
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_write_t wreq; /* the queue head's write, when it did not go at once */
	struct transport *t;
	struct peer *p; /* outbound: a counted reference; inbound: NULL */
	bool outbound;
	enum conn_state st;
	SSL *ssl; /* NULL: plain */
	BIO *rbio, *wbio;
	bool tls_done;
	bool hdr_got;	   /* the peer's SP header arrived and was right */
	uint64_t since_ms; /* created: TRANSPORT_HANDSHAKE_MS runs from here */
	uint64_t seq;	   /* inbound: order of acceptance */
	uint64_t last_rx_ms;
	char from[TRANSPORT_ID_MAX + 1]; /* inbound: the sender its frames name (checked) */
	char remote[64];		 /* inbound: ip:port, for logs */
	uint8_t *in;			 /* owned: plaintext not yet taken */
	size_t in_len, in_cap;
	/* outbound: the head frame's bytes being written */
	uint8_t *out;
	size_t out_len, out_off;
	bool out_owned;		  /* out is ciphertext of ours (else the frame's bytes) */
	bool writing;		  /* wreq in progress */
	uint64_t write_ms;	  /* when it started */
	struct conn *next, *prev; /* t->in list (inbound) */
};

struct resolve {
	uv_getaddrinfo_t req;
	struct transport *t;
	struct peer *p; /* NULL once the peer is gone */
	int port;
};

struct peer {
	struct transport *t;
	char id[TRANSPORT_ID_MAX + 1];
	char *addr; /* owned: "host:port" dialed */
	char host[TRANSPORT_URL_MAX];
	int port;
	struct conn *c; /* the outbound connection, any state but closed */
	uv_timer_t retry;
	struct resolve *res; /* a resolution in flight */
	bool want_resolve;   /* waiting for the transport's one resolution slot */
	unsigned rot;	     /* dials that never came up: which of a name's addresses is next */
	uint64_t backoff_ms;
	struct frame *qhead, *qtail;
	unsigned n;	    /* frames queued (the one being written included) */
	size_t bytes;	    /* their payload bytes */
	bool head_inflight; /* the head's write is pending on some connection */
	bool down_pending;  /* tell transport_on_peer_down's callback */
	bool removed;
	int refs; /* membership (until the retry timer closes) + connections */
	uint64_t sent, dropped_full, send_errors, redials, lost;
	uint64_t log_ms; /* last warning about this peer */
	struct peer *next;
};

struct transport {
	uv_loop_t *loop; /* borrowed */
	uv_tcp_t listener;
	uv_timer_t guard;
	uv_timer_t down_timer;
	transport_recv_cb cb;
	void *cb_arg;
	transport_peer_down_cb down_cb;
	char node_id[TRANSPORT_ID_MAX + 1];
	char cluster_id[TRANSPORT_ID_MAX + 1];
	SSL_CTX *srv, *cli; /* NULL: plain */
	bool admit_strangers;
	size_t max_msg_bytes;
	unsigned max_queue;
	size_t max_queue_bytes;
	int port;
	struct peer *peers;
	unsigned n_peers;
	struct conn *in; /* inbound connections */
	unsigned n_in;
	uint64_t in_seq;
	bool resolving;	     /* one host name resolution at a time (the loop's threadpool) */
	bool accept_pending; /* a connection waits for the memory to take it (accept_cb) */
	uint8_t rbuf[TRANSPORT_READ_CHUNK];
	uint64_t received, dropped_unauth, dropped_malformed, strangers_received;
	uint64_t handshake_failures, inbound_refused, stale_inbound_closed;
	uint64_t gone_sent, gone_dropped_full, gone_send_errors, gone_redials;
	uint64_t log_in_ms, log_unauth_ms; /* last warnings about inbound connections */
	int handles; /* handles and requests not yet finished; the last one frees t */
	bool closing;
	void (*done)(void *);
	void *done_arg;
};

static void conn_close(struct conn *c, const char *why);
static void peer_pump(struct peer *p);
static void peer_dial(struct peer *p);

/* ---- lifetimes ---- */

static void
transport_unref(struct transport *t)
{
	if (--t->handles > 0 || !t->closing)
		return;
	SSL_CTX_free(t->srv);
	SSL_CTX_free(t->cli);
	void (*done)(void *) = t->done;
	void *arg = t->done_arg;
	free(t);
	if (done != NULL)
		done(arg);
}

static void
handle_closed(uv_handle_t *h)
{
	transport_unref(h->data);
}

static void
queue_free(struct peer *p)
{
	while (p->qhead != NULL) {
		struct frame *f = p->qhead;
		p->qhead = f->next;
		free(f);
	}
	p->qtail = NULL;
	p->n = 0;
	p->bytes = 0;
}

static void
peer_unref(struct peer *p)
{
	if (--p->refs > 0)
		return;
	queue_free(p);
	free(p->addr);
	free(p);
}

static struct peer *
peer_find(const struct transport *t, const char *id)
{
	for (struct peer *p = t->peers; p != NULL; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	return NULL;
}

/* ---- connections: bytes out ---- */

struct raw_write {
	uv_write_t w;
	uint8_t data[];
};

static void
raw_write_cb(uv_write_t *w, int status)
{
	struct conn *c = w->handle->data;
	free(w);
	if (status < 0 && status != UV_ECANCELED && c->st != CS_CLOSED)
		conn_close(c, uv_strerror(status));
}

/* Write bytes that are not a frame (TLS handshake records, the SP header), copied if they
 * must wait.  0 or a libuv error. */
static int
conn_write_raw(struct conn *c, const uint8_t *d, size_t len)
{
	uv_buf_t b = uv_buf_init((char *)d, (unsigned)len);
	int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
	if (n == UV_EAGAIN)
		n = 0;
	if (n < 0)
		return n;
	if ((size_t)n == len)
		return 0;
	struct raw_write *r = malloc(sizeof(*r) + len - (size_t)n);
	if (r == NULL)
		return UV_ENOMEM;
	memcpy(r->data, d + n, len - (size_t)n);
	b = uv_buf_init((char *)r->data, (unsigned)(len - (size_t)n));
	int rv = uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, raw_write_cb);
	if (rv != 0)
		free(r);
	return rv;
}

/* Send what OpenSSL wrote into the memory BIO.  0 or a libuv error. */
static int
tls_flush(struct conn *c)
{
	uint8_t buf[16384];
	int n;
	while ((n = BIO_read(c->wbio, buf, sizeof(buf))) > 0) {
		int rv = conn_write_raw(c, buf, (size_t)n);
		if (rv != 0)
			return rv;
	}
	return 0;
}

static int
conn_send_sp_header(struct conn *c)
{
	uint8_t h[SP_HDR_LEN] = {0, 'S', 'P', 0, 0, c->outbound ? SP_PUSH : SP_PULL, 0, 0};
	if (c->ssl == NULL)
		return conn_write_raw(c, h, sizeof(h));
	if (SSL_write(c->ssl, h, sizeof(h)) != (int)sizeof(h))
		return UV_EPROTO;
	return tls_flush(c);
}

/* The queue head is all in the kernel: it is sent. */
static void
peer_head_done(struct peer *p, struct conn *c)
{
	struct frame *f = p->qhead;
	if (c->out_owned)
		free(c->out);
	c->out = NULL;
	c->out_owned = false;
	p->qhead = f->next;
	if (p->qhead == NULL)
		p->qtail = NULL;
	p->n--;
	p->bytes -= f->payload;
	p->sent++;
	free(f);
}

/* The bytes of frame f as they go on c: the frame itself, or its ciphertext. */
static int
conn_prepare(struct conn *c, struct frame *f)
{
	c->out_off = 0;
	if (c->ssl == NULL) {
		c->out = f->data;
		c->out_len = f->len;
		c->out_owned = false;
		return 0;
	}
	if (SSL_write(c->ssl, f->data, (int)f->len) != (int)f->len)
		return UV_EPROTO;
	size_t pend = BIO_ctrl_pending(c->wbio);
	uint8_t *buf = malloc(pend);
	if (buf == NULL)
		return UV_ENOMEM;
	if (BIO_read(c->wbio, buf, (int)pend) != (int)pend) {
		free(buf);
		return UV_EPROTO;
	}
	c->out = buf;
	c->out_len = pend;
	c->out_owned = true;
	return 0;
}

static void
frame_write_cb(uv_write_t *w, int status)
{
	struct conn *c = w->data;
	struct peer *p = c->p;
	c->writing = false;
	p->head_inflight = false;
	if (status == 0 && !p->removed) {
		peer_head_done(p, c);
		peer_pump(p);
		return;
	}
	/* cut (or its peer gone): the head stays first in line, for the next connection */
	if (c->out_owned)
		free(c->out);
	c->out = NULL;
	c->out_owned = false;
	if (status < 0 && status != UV_ECANCELED && c->st != CS_CLOSED) {
		p->send_errors++;
		conn_close(c, uv_strerror(status));
	}
	if (!p->removed)
		peer_pump(p); /* a newer connection may be waiting for the head */
}

/* Write queued frames on p's connection while the kernel takes them. */
static void
peer_pump(struct peer *p)
{
	struct conn *c = p->c;
	while (c != NULL && c->st == CS_UP && !c->writing && !p->head_inflight &&
	       p->qhead != NULL) {
		if (c->out == NULL && conn_prepare(c, p->qhead) != 0) {
			p->send_errors++;
			conn_close(c, "TLS write failed");
			return;
		}
		uv_buf_t b =
		    uv_buf_init((char *)c->out + c->out_off, (unsigned)(c->out_len - c->out_off));
		int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
		if (n == UV_EAGAIN)
			n = 0;
		if (n < 0) {
			p->send_errors++;
			conn_close(c, uv_strerror(n));
			return;
		}
		c->out_off += (size_t)n;
		if (c->out_off == c->out_len) {
			peer_head_done(p, c);
			continue;
		}
		b = uv_buf_init((char *)c->out + c->out_off, (unsigned)(c->out_len - c->out_off));
		c->wreq.data = c;
		int rv = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, frame_write_cb);
		if (rv != 0) {
			p->send_errors++;
			conn_close(c, uv_strerror(rv));
			return;
		}
		c->writing = true;
		p->head_inflight = true;
		c->write_ms = uv_now(c->t->loop);
	}
}

/* ---- connections: state ---- */

static void
conn_closed_cb(uv_handle_t *h)
{
	struct conn *c = h->data;
	struct transport *t = c->t;
	if (c->ssl != NULL)
		SSL_free(c->ssl); /* and its BIOs */
	if (c->out_owned)
		free(c->out);
	free(c->in);
	if (c->p != NULL)
		peer_unref(c->p);
	free(c);
	transport_unref(t);
}

static void
down_timer_cb(uv_timer_t *h)
{
	struct transport *t = h->data;
	char ids[TRANSPORT_MAX_PEERS][TRANSPORT_ID_MAX + 1];
	unsigned n = 0;
	for (struct peer *p = t->peers; p != NULL && n < TRANSPORT_MAX_PEERS; p = p->next) {
		if (p->down_pending && (p->c == NULL || p->c->st != CS_UP))
			snprintf(ids[n++], sizeof(ids[0]), "%s", p->id);
		p->down_pending = false;
	}
	/* the callback may remove peers or close t: ids are copies, closing is checked */
	for (unsigned i = 0; i < n && !t->closing && t->down_cb != NULL; i++)
		t->down_cb(t->cb_arg, ids[i]);
}

static void
retry_cb(uv_timer_t *h)
{
	struct peer *p = h->data;
	if (!p->removed && !p->t->closing && p->c == NULL)
		peer_dial(p);
}

/* A dial of p failed or its connection ended: try again after the backoff. */
static void
peer_retry_later(struct peer *p)
{
	if (p->removed || p->t->closing)
		return;
	uv_timer_start(&p->retry, retry_cb, p->backoff_ms, 0);
	p->backoff_ms *= 2;
	if (p->backoff_ms > TRANSPORT_RECONNECT_MAX_MS)
		p->backoff_ms = TRANSPORT_RECONNECT_MAX_MS;
}

/* Close c (any state; once).  why: for the log of a connection that was up. */
static void
conn_close(struct conn *c, const char *why)
{
	if (c->st == CS_CLOSED)
		return;
	struct transport *t = c->t;
	bool was_up = c->st == CS_UP;
	c->st = CS_CLOSED;
	if (c->outbound) {
		struct peer *p = c->p;
		if (p->c == c)
			p->c = NULL;
		if (!c->writing && c->out_owned) {
			free(c->out);
			c->out = NULL;
			c->out_owned = false;
		}
		if (was_up) {
			p->lost++;
			if (!p->removed && !t->closing) {
				p->down_pending = true;
				uv_timer_start(&t->down_timer, down_timer_cb, 0, 0);
				fprintf(stderr,
					"transport: event=peer-connection-lost node=%s peer=%s "
					"addr=%s reason=%s\n",
					t->node_id, p->id, p->addr, why);
			}
		} else {
			p->rot++;
		}
		peer_retry_later(p);
	} else {
		if (c->prev != NULL)
			c->prev->next = c->next;
		else
			t->in = c->next;
		if (c->next != NULL)
			c->next->prev = c->prev;
		t->n_in--;
	}
	uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

static struct conn *
conn_new(struct transport *t, struct peer *p)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	if (uv_tcp_init(t->loop, &c->tcp) != 0) {
		free(c);
		return NULL;
	}
	c->tcp.data = c;
	c->t = t;
	t->handles++;
	c->since_ms = uv_now(t->loop);
	if (p != NULL) {
		c->p = p;
		c->outbound = true;
		p->refs++;
	}
	return c;
}

/* Why a TLS handshake failed, for the log. */
static const char *
tls_reason(struct conn *c, char *buf, size_t size)
{
	long vr = SSL_get_verify_result(c->ssl);
	unsigned long e = ERR_peek_last_error();
	if (vr != X509_V_OK)
		snprintf(buf, size, "certificate: %s", X509_verify_cert_error_string(vr));
	else if (e != 0)
		snprintf(buf, size, "%s",
			 ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "TLS error");
	else
		snprintf(buf, size, "TLS handshake failed");
	ERR_clear_error();
	return buf;
}

static void
handshake_failed(struct conn *c, const char *why)
{
	struct transport *t = c->t;
	uint64_t now = uv_now(t->loop);
	t->handshake_failures++;
	if (c->outbound ? log_due(&c->p->log_ms, now) : log_due(&t->log_in_ms, now))
		fprintf(stderr, "transport: event=handshake-failed node=%s %s%s reason=%s\n",
			t->node_id,
			c->outbound ? "peer=" : "remote=", c->outbound ? c->p->id : c->remote, why);
	conn_close(c, why);
}

static void
conn_up(struct conn *c)
{
	c->st = CS_UP;
	if (c->outbound) {
		c->p->backoff_ms = TRANSPORT_RECONNECT_MIN_MS;
		peer_pump(c->p);
	}
}

/* ---- connections: bytes in ---- */

static void
deliver(struct conn *c, const uint8_t *data, size_t len)
{
	struct transport *t = c->t;
	Relay__PeerFrame *f = relay__peer_frame__unpack(NULL, len, data);
	if (f == NULL) {
		t->dropped_malformed++;
		return;
	}
	if (f->payload.len > t->max_msg_bytes || !id_ok(f->from) || !id_ok(f->to)) {
		t->dropped_malformed++;
		goto out;
	}
	const char *cid = f->cluster_id != NULL ? f->cluster_id : "";
	if (strcmp(f->to, t->node_id) != 0 || strcmp(cid, t->cluster_id) != 0 ||
	    strcmp(f->from, t->node_id) == 0) {
		t->dropped_unauth++;
		goto out;
	}
	if (strcmp(c->from, f->from) != 0) {
		/* with TLS the sender's certificate must name the id its frames claim */
		X509 *x = c->ssl != NULL ? SSL_get0_peer_certificate(c->ssl) : NULL;
		if (c->ssl != NULL &&
		    (x == NULL ||
		     X509_check_host(x, f->from, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) !=
			 1)) {
			t->dropped_unauth++;
			if (log_due(&t->log_unauth_ms, uv_now(t->loop)))
				fprintf(stderr,
					"transport: event=frame-refused node=%s remote=%s "
					"from=%s reason=the sender's certificate does not name "
					"it\n",
					t->node_id, c->remote, f->from);
			goto out;
		}
		snprintf(c->from, sizeof(c->from), "%s", f->from);
	}
	c->last_rx_ms = uv_now(t->loop);
	if (peer_find(t, f->from) == NULL) {
		if (!t->admit_strangers) {
			t->dropped_unauth++;
			goto out;
		}
		t->strangers_received++; /* mutual TLS against the cluster CA: the receiver decides
					  */
	}
	t->received++;
	t->cb(t->cb_arg, f->from, f->has_kind ? f->kind : 0, f->payload.data, f->payload.len);
out:
	relay__peer_frame__free_unpacked(f, NULL);
}

static uint64_t
be64(const uint8_t *b)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

/* Take the SP header and whole frames from c->in.  False when c or t closed meanwhile. */
static bool
conn_consume(struct conn *c)
{
	struct transport *t = c->t;
	size_t off = 0;
	if (!c->hdr_got) {
		if (c->in_len < SP_HDR_LEN)
			return true;
		const uint8_t *h = c->in;
		int want = c->outbound ? SP_PULL : SP_PUSH;
		if (h[0] != 0 || h[1] != 'S' || h[2] != 'P' || h[3] != 0 || h[4] != 0 ||
		    h[5] != want) {
			handshake_failed(c, "not a cluster peer (SP header)");
			return false;
		}
		c->hdr_got = true;
		off = SP_HDR_LEN;
		conn_up(c);
		if (c->st != CS_UP)
			return false;
	}
	size_t max_frame = t->max_msg_bytes + TRANSPORT_FRAME_OVERHEAD_MAX;
	while (c->in_len - off >= LEN_HDR_LEN) {
		uint64_t len = be64(c->in + off);
		if (c->outbound ||
		    len > max_frame) { /* a listener sends nothing after its header */
			t->dropped_malformed++;
			conn_close(c,
				   c->outbound ? "data from a listener" : "frame over the bound");
			return false;
		}
		if (c->in_len - off - LEN_HDR_LEN < len)
			break;
		deliver(c, c->in + off + LEN_HDR_LEN, (size_t)len);
		off += LEN_HDR_LEN + (size_t)len;
		if (c->st == CS_CLOSED || t->closing)
			return false;
	}
	if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
	if (c->in_len == 0 && c->in_cap > 4 * TRANSPORT_READ_CHUNK) { /* after a big frame */
		free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
	return true;
}

/* Room for at least want more bytes in c->in.  Bounded: c->in never holds more than one frame
 * (max_msg_bytes + TRANSPORT_FRAME_OVERHEAD_MAX + the length) and one read beyond it. */
static bool
conn_reserve(struct conn *c, size_t want)
{
	if (c->in_cap - c->in_len >= want)
		return true;
	size_t cap = c->in_cap ? c->in_cap : TRANSPORT_READ_CHUNK;
	while (cap - c->in_len < want)
		cap *= 2;
	uint8_t *n = realloc(c->in, cap);
	if (n == NULL)
		return false;
	c->in = n;
	c->in_cap = cap;
	return true;
}

/* The TLS handshake is done: the listener checks the certificate was given, both send their
 * SP header. */
static bool
tls_finished(struct conn *c)
{
	c->tls_done = true;
	int rv = conn_send_sp_header(c);
	if (rv != 0) {
		conn_close(c, uv_strerror(rv));
		return false;
	}
	return true;
}

static void
conn_input_tls(struct conn *c, const uint8_t *d, size_t n)
{
	char why[160];
	if (BIO_write(c->rbio, d, (int)n) != (int)n) {
		conn_close(c, "out of memory");
		return;
	}
	if (!c->tls_done) {
		int r = SSL_do_handshake(c->ssl);
		int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
		int rv = tls_flush(c); /* the alert too, when it failed */
		if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ) {
			handshake_failed(c, tls_reason(c, why, sizeof(why)));
			return;
		}
		if (rv != 0) {
			conn_close(c, uv_strerror(rv));
			return;
		}
		if (e == SSL_ERROR_WANT_READ || !tls_finished(c))
			return;
	}
	for (;;) {
		if (!conn_reserve(c, 16384)) {
			conn_close(c, "out of memory");
			return;
		}
		size_t room = c->in_cap - c->in_len;
		int r =
		    SSL_read(c->ssl, c->in + c->in_len, room > INT32_MAX ? INT32_MAX : (int)room);
		if (r > 0) {
			c->in_len += (size_t)r;
			if (!conn_consume(c))
				return;
			continue;
		}
		int e = SSL_get_error(c->ssl, r);
		if (tls_flush(c) != 0) {
			conn_close(c, "write failed");
			return;
		}
		if (e == SSL_ERROR_WANT_READ)
			return;
		conn_close(c, e == SSL_ERROR_ZERO_RETURN ? "closed by the peer"
							 : tls_reason(c, why, sizeof(why)));
		return;
	}
}

static void
alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = h->data;
	(void)suggested;
	/* one read at a time on the loop: the transport's buffer serves every connection */
	buf->base = (char *)c->t->rbuf;
	buf->len = sizeof(c->t->rbuf);
}

static void
read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	if (n == 0 || c->st == CS_CLOSED)
		return;
	if (n < 0) {
		if (c->st != CS_UP && n == UV_EOF)
			handshake_failed(c, "closed during the handshake");
		else
			conn_close(c, n == UV_EOF ? "closed by the peer" : uv_strerror((int)n));
		return;
	}
	if (c->ssl != NULL) {
		conn_input_tls(c, (const uint8_t *)buf->base, (size_t)n);
		return;
	}
	if (!conn_reserve(c, (size_t)n)) {
		conn_close(c, "out of memory");
		return;
	}
	memcpy(c->in + c->in_len, buf->base, (size_t)n);
	c->in_len += (size_t)n;
	conn_consume(c);
}

/* TCP is up (either side): options, reading, TLS or the SP header. */
static int
conn_start(struct conn *c)
{
	struct transport *t = c->t;
	uv_tcp_nodelay(&c->tcp, 1);
	uv_tcp_keepalive(&c->tcp, 1, TRANSPORT_KEEPALIVE_S);
	c->st = CS_HANDSHAKE;
	int rv = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
	if (rv != 0)
		return rv;
	SSL_CTX *ctx = c->outbound ? t->cli : t->srv;
	if (ctx == NULL)
		return conn_send_sp_header(c);
	if ((c->ssl = SSL_new(ctx)) == NULL)
		return UV_ENOMEM;
	c->rbio = BIO_new(BIO_s_mem());
	c->wbio = BIO_new(BIO_s_mem());
	if (c->rbio == NULL || c->wbio == NULL) {
		BIO_free(c->rbio);
		BIO_free(c->wbio);
		c->rbio = c->wbio = NULL;
		return UV_ENOMEM;
	}
	SSL_set_bio(c->ssl, c->rbio, c->wbio);
	if (!c->outbound) {
		SSL_set_accept_state(c->ssl);
		return 0;
	}
	/* the listener's certificate must name the peer id dialed */
	if (SSL_set1_host(c->ssl, c->p->id) != 1)
		return UV_EINVAL;
	SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	SSL_set_tlsext_host_name(c->ssl, c->p->id);
	SSL_set_connect_state(c->ssl);
	int r = SSL_do_handshake(c->ssl);
	if (r != 1 && SSL_get_error(c->ssl, r) != SSL_ERROR_WANT_READ)
		return UV_EPROTO;
	return tls_flush(c);
}

/* ---- dialing ---- */

static void
connect_cb(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	if (c->st == CS_CLOSED)
		return;
	if (status < 0) {
		conn_close(c, uv_strerror(status));
		return;
	}
	int rv = conn_start(c);
	if (rv != 0)
		handshake_failed(c, uv_strerror(rv));
}

static void
peer_connect(struct peer *p, const struct sockaddr *sa)
{
	struct conn *c = conn_new(p->t, p);
	if (c == NULL) {
		peer_retry_later(p);
		return;
	}
	p->c = c;
	c->creq.data = c;
	c->st = CS_CONNECT;
	int rv = uv_tcp_connect(&c->creq, &c->tcp, sa, connect_cb);
	if (rv != 0)
		conn_close(c, uv_strerror(rv));
}

static void resolve_next(struct transport *t);

static void
resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct resolve *r = req->data;
	struct transport *t = r->t;
	struct peer *p = r->p;
	t->resolving = false;
	if (p != NULL) {
		p->res = NULL;
		if (!t->closing && !p->removed && p->c == NULL) {
			if (status == 0 && res != NULL) {
				/* a name with several addresses: the next one after each dial that
				   did not come up (an IPv6 address of a node that listens on IPv4
				   only, a stale record) */
				unsigned n = 0;
				for (struct addrinfo *a = res; a != NULL; a = a->ai_next)
					n++;
				struct addrinfo *pick = res;
				for (unsigned k = p->rot % n; k > 0; k--)
					pick = pick->ai_next;
				struct sockaddr_storage sa;
				memcpy(&sa, pick->ai_addr, pick->ai_addrlen);
				((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)r->port);
				peer_connect(p, (struct sockaddr *)&sa);
			} else {
				if (log_due(&p->log_ms, uv_now(t->loop)))
					fprintf(stderr,
						"transport: event=resolve-failed node=%s peer=%s "
						"host=%s reason=%s\n",
						t->node_id, p->id, p->host,
						status == 0 ? "no address" : uv_strerror(status));
				peer_retry_later(p);
			}
		}
		peer_unref(p);
	}
	uv_freeaddrinfo(res);
	free(r);
	if (!t->closing)
		resolve_next(t);
	transport_unref(t);
}

/* Resolve p's host name on the loop's threadpool, one name at a time per transport (a slow
 * resolver then holds one worker, not all: the log writes use them too). */
static void
peer_resolve(struct peer *p)
{
	struct transport *t = p->t;
	if (t->resolving) {
		p->want_resolve = true;
		return;
	}
	struct resolve *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		peer_retry_later(p);
		return;
	}
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
	r->t = t;
	r->p = p;
	r->port = p->port;
	r->req.data = r;
	if (uv_getaddrinfo(t->loop, &r->req, resolve_cb, p->host, NULL, &hints) != 0) {
		free(r);
		peer_retry_later(p);
		return;
	}
	p->want_resolve = false;
	p->res = r;
	p->refs++;
	t->resolving = true;
	t->handles++;
}

static void
resolve_next(struct transport *t)
{
	for (struct peer *p = t->peers; p != NULL && !t->resolving; p = p->next)
		if (p->want_resolve && p->c == NULL)
			peer_resolve(p);
}

static void
peer_dial(struct peer *p)
{
	struct sockaddr_storage sa;
	if (numeric_addr(p->host, p->port, &sa) == 0)
		peer_connect(p, (struct sockaddr *)&sa);
	else if (p->res == NULL)
		peer_resolve(p);
}

/* ---- accepting ---- */

static void
accept_cb(uv_stream_t *s, int status)
{
	struct transport *t = s->data;
	if (status < 0 || t->closing)
		return;
	struct conn *c = conn_new(t, NULL);
	if (c == NULL) {
		/* libuv stops watching the listener until this connection is accepted: the guard
		   tries again at its next tick */
		t->accept_pending = true;
		return;
	}
	t->accept_pending = false;
	if (uv_accept(s, (uv_stream_t *)&c->tcp) != 0) {
		c->st = CS_CLOSED;
		uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
		return;
	}
	struct sockaddr_storage ss;
	int sl = sizeof(ss);
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
		char ip[48] = "?";
		if (ss.ss_family == AF_INET6)
			uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
		else
			uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
		snprintf(c->remote, sizeof(c->remote), "%s:%d", ip,
			 ntohs(((struct sockaddr_in *)&ss)->sin_port));
	}
	if (t->n_in >= TRANSPORT_MAX_INBOUND) {
		t->inbound_refused++;
		if (log_due(&t->log_in_ms, uv_now(t->loop)))
			fprintf(stderr,
				"transport: event=inbound-refused node=%s remote=%s open=%u "
				"limit=%u\n",
				t->node_id, c->remote, t->n_in, TRANSPORT_MAX_INBOUND);
		c->st = CS_CLOSED;
		uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
		return;
	}
	c->seq = ++t->in_seq;
	c->next = t->in;
	if (t->in != NULL)
		t->in->prev = c;
	t->in = c;
	t->n_in++;
	int rv = conn_start(c);
	if (rv != 0)
		handshake_failed(c, uv_strerror(rv));
}

/* ---- the guard ---- */

/* An inbound connection superseded by a newer one from the same sender, and silent for
 * TRANSPORT_STALE_PIPE_MS: a peer that restarted or lost its link without our seeing the end
 * (a silent host sends no FIN). */
static bool
inbound_stale(const struct transport *t, const struct conn *c, uint64_t now)
{
	if (c->st != CS_UP || c->from[0] == '\0' || now - c->last_rx_ms < TRANSPORT_STALE_PIPE_MS)
		return false;
	for (const struct conn *o = t->in; o != NULL; o = o->next)
		if (o != c && o->seq > c->seq && o->st == CS_UP && strcmp(o->from, c->from) == 0)
			return true;
	return false;
}

static void
guard_cb(uv_timer_t *h)
{
	struct transport *t = h->data;
	uint64_t now = uv_now(t->loop);
	if (t->accept_pending)
		accept_cb((uv_stream_t *)&t->listener, 0);
	for (struct conn *c = t->in, *next; c != NULL; c = next) {
		next = c->next;
		if (c->st != CS_UP && now - c->since_ms >= TRANSPORT_HANDSHAKE_MS) {
			handshake_failed(c, "handshake timed out");
		} else if (inbound_stale(t, c, now)) {
			t->stale_inbound_closed++;
			conn_close(c, "superseded");
		}
	}
	for (struct peer *p = t->peers; p != NULL; p = p->next) {
		struct conn *c = p->c;
		if (c == NULL)
			continue;
		const char *why = NULL;
		uint64_t ms = 0;
		if (c->st != CS_UP && (ms = now - c->since_ms) >= TRANSPORT_HANDSHAKE_MS)
			why = "connect or handshake stood still";
		else if (c->st == CS_UP && c->writing &&
			 (ms = now - c->write_ms) >= TRANSPORT_SEND_STALL_MS)
			why = "a send stood still (the peer reads nothing)";
		if (why == NULL)
			continue;
		p->redials++;
		if (log_due(&p->log_ms, now))
			fprintf(stderr,
				"transport: event=redial node=%s peer=%s addr=%s after_ms=%llu "
				"reason=%s\n",
				t->node_id, p->id, p->addr, (unsigned long long)ms, why);
		conn_close(c, why);
	}
}

/* ---- public ---- */

static int
listen_on(struct transport *t, const char *listen)
{
	char host[TRANSPORT_URL_MAX];
	int port;
	struct sockaddr_storage sa;
	if (split_hostport(listen, host, sizeof(host), &port, true) != 0)
		return TRANSPORT_EADDR;
	if (numeric_addr(host, port, &sa) != 0) { /* a name: resolved now, once */
		struct addrinfo hints = {
		    .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
		struct addrinfo *res;
		if (getaddrinfo(host, NULL, &hints, &res) != 0)
			return TRANSPORT_EADDR;
		memcpy(&sa, res->ai_addr, res->ai_addrlen);
		((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)port);
		freeaddrinfo(res);
	}
	if (uv_tcp_bind(&t->listener, (struct sockaddr *)&sa, 0) != 0 ||
	    uv_listen((uv_stream_t *)&t->listener, TRANSPORT_LISTEN_BACKLOG, accept_cb) != 0)
		return TRANSPORT_ELISTEN;
	struct sockaddr_storage bound;
	int len = sizeof(bound);
	if (uv_tcp_getsockname(&t->listener, (struct sockaddr *)&bound, &len) != 0)
		return TRANSPORT_ELISTEN;
	t->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
	return 0;
}

int
transport_open(uv_loop_t *loop, const struct transport_config *cfg, transport_recv_cb cb, void *arg,
	       struct transport **out)
{
	if (loop == NULL || cfg == NULL || cb == NULL || out == NULL || !id_ok(cfg->node_id) ||
	    cfg->listen == NULL ||
	    (cfg->cluster_id != NULL && strlen(cfg->cluster_id) > TRANSPORT_ID_MAX))
		return TRANSPORT_EINVAL;
	struct tls_material m;
	bool tls;
	int rv = transport__tls_load(&m, cfg->ca_file, cfg->cert_file, cfg->key_file, &tls);
	if (rv != 0)
		return rv;
	struct transport *t = calloc(1, sizeof(*t));
	if (t == NULL) {
		transport__tls_fini(&m);
		return TRANSPORT_ENOMEM;
	}
	if (tls)
		rv = transport__tls_ctx(&m, &t->srv, &t->cli);
	transport__tls_fini(&m);
	if (rv != 0) {
		free(t);
		return rv;
	}
	/* a write into a connection the peer closed must fail, not kill the process */
	struct sigaction sa;
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);
	t->loop = loop;
	t->cb = cb;
	t->cb_arg = arg;
	strcpy(t->node_id, cfg->node_id);
	if (cfg->cluster_id != NULL)
		strcpy(t->cluster_id, cfg->cluster_id);
	t->admit_strangers = cfg->admit_strangers && tls; /* plain TCP: anyone could */
	t->max_msg_bytes =
	    cfg->max_msg_bytes ? cfg->max_msg_bytes : TRANSPORT_DEFAULT_MAX_MSG_BYTES;
	t->max_queue = cfg->max_queue_per_peer ? cfg->max_queue_per_peer
					       : TRANSPORT_DEFAULT_MAX_QUEUE_PER_PEER;
	t->max_queue_bytes = cfg->max_queue_bytes_per_peer
				 ? cfg->max_queue_bytes_per_peer
				 : TRANSPORT_DEFAULT_MAX_QUEUE_BYTES_PER_PEER;
	uv_tcp_init(loop, &t->listener);
	t->listener.data = t;
	t->handles = 1;
	if ((rv = listen_on(t, cfg->listen)) != 0) {
		t->closing = true; /* the handle exists: it goes through uv_close, which frees t */
		uv_close((uv_handle_t *)&t->listener, handle_closed);
		return rv;
	}
	uv_timer_init(loop, &t->guard);
	t->guard.data = t;
	uv_timer_init(loop, &t->down_timer);
	t->down_timer.data = t;
	t->handles += 2;
	uv_timer_start(&t->guard, guard_cb, TRANSPORT_GUARD_TICK_MS, TRANSPORT_GUARD_TICK_MS);
	*out = t;
	return 0;
}

int
transport_listen_port(const struct transport *t)
{
	return t->port;
}

void
transport_on_peer_down(struct transport *t, transport_peer_down_cb cb)
{
	t->down_cb = cb;
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
	struct peer *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return TRANSPORT_ENOMEM;
	if (split_hostport(addr, p->host, sizeof(p->host), &p->port, false) != 0) {
		free(p);
		return TRANSPORT_EADDR;
	}
	if ((p->addr = strdup(addr)) == NULL) {
		free(p);
		return TRANSPORT_ENOMEM;
	}
	snprintf(p->id, sizeof(p->id), "%s", peer_id);
	p->t = t;
	p->refs = 1;
	p->backoff_ms = TRANSPORT_RECONNECT_MIN_MS;
	uv_timer_init(t->loop, &p->retry);
	p->retry.data = p;
	t->handles++;
	p->next = t->peers;
	t->peers = p;
	t->n_peers++;
	peer_dial(p);
	return 0;
}

static void
peer_timer_closed(uv_handle_t *h)
{
	struct peer *p = h->data;
	struct transport *t = p->t;
	peer_unref(p);
	transport_unref(t);
}

/* Unlink and stop p (loop thread): its queue freed, its connection closed, its counters to
 * t's totals.  Freed once its handles are closed. */
static void
peer_remove(struct transport *t, struct peer *p)
{
	for (struct peer **pp = &t->peers; *pp != NULL; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	t->n_peers--;
	p->removed = true;
	p->next = NULL;
	t->gone_sent += p->sent;
	t->gone_dropped_full += p->dropped_full;
	t->gone_send_errors += p->send_errors;
	t->gone_redials += p->redials;
	if (p->res != NULL) {
		p->res->p = NULL; /* resolve_cb drops the reference */
		uv_cancel((uv_req_t *)&p->res->req);
		p->res = NULL;
	}
	/* the queue is freed with p, after the last connection's close: a write in flight
	   (plain TCP) still points into the head frame until its callback */
	if (p->c != NULL)
		conn_close(p->c, "peer removed");
	uv_timer_stop(&p->retry);
	uv_close((uv_handle_t *)&p->retry, peer_timer_closed);
}

int
transport_remove_peer(struct transport *t, const char *peer_id)
{
	if (t->closing)
		return TRANSPORT_ECLOSED;
	struct peer *p = peer_id != NULL ? peer_find(t, peer_id) : NULL;
	if (p == NULL)
		return TRANSPORT_ENOPEER;
	peer_remove(t, p);
	return 0;
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
	/* An empty queue takes any message within max_msg_bytes, whatever the byte bound. */
	if (p->n >= t->max_queue || (p->n > 0 && p->bytes + len > t->max_queue_bytes)) {
		p->dropped_full++;
		return TRANSPORT_EFULL;
	}
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
	struct frame *fr = malloc(sizeof(*fr) + LEN_HDR_LEN + size);
	if (fr == NULL)
		return TRANSPORT_ENOMEM;
	for (int i = 0; i < 8; i++)
		fr->data[i] = (uint8_t)((uint64_t)size >> (56 - 8 * i));
	relay__peer_frame__pack(&f, fr->data + LEN_HDR_LEN);
	fr->len = LEN_HDR_LEN + size;
	fr->payload = len;
	fr->next = NULL;
	if (p->qtail != NULL)
		p->qtail->next = fr;
	else
		p->qhead = fr;
	p->qtail = fr;
	p->n++;
	p->bytes += len;
	peer_pump(p);
	return 0;
}

void
transport_close(struct transport *t, void (*done)(void *arg), void *arg)
{
	if (t == NULL)
		return;
	t->closing = true;
	t->done = done;
	t->done_arg = arg;
	while (t->peers != NULL)
		peer_remove(t, t->peers);
	while (t->in != NULL)
		conn_close(t->in, "closing");
	uv_close((uv_handle_t *)&t->guard, handle_closed);
	uv_close((uv_handle_t *)&t->down_timer, handle_closed);
	uv_close((uv_handle_t *)&t->listener, handle_closed);
}

void
transport_stats(const struct transport *t, struct transport_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->received = t->received;
	out->dropped_unauth = t->dropped_unauth;
	out->strangers_received = t->strangers_received;
	out->dropped_malformed = t->dropped_malformed;
	out->handshake_failures = t->handshake_failures;
	out->inbound_refused = t->inbound_refused;
	out->stale_inbound_closed = t->stale_inbound_closed;
	out->inbound = t->n_in;
	out->sent = t->gone_sent;
	out->dropped_full = t->gone_dropped_full;
	out->send_errors = t->gone_send_errors;
	out->redials = t->gone_redials;
	for (const struct peer *p = t->peers; p != NULL; p = p->next) {
		out->sent += p->sent;
		out->dropped_full += p->dropped_full;
		out->send_errors += p->send_errors;
		out->redials += p->redials;
		out->peers++;
		if (p->c != NULL && p->c->st == CS_UP)
			out->peers_connected++;
	}
}

int
transport_peer_stats(const struct transport *t, const char *peer_id,
		     struct transport_peer_stats *out)
{
	const struct peer *p = peer_find(t, peer_id);
	if (p == NULL)
		return TRANSPORT_ENOPEER;
	memset(out, 0, sizeof(*out));
	out->connected = p->c != NULL && p->c->st == CS_UP;
	out->queued = p->n;
	out->queued_bytes = p->bytes;
	out->sent = p->sent;
	out->dropped_full = p->dropped_full;
	out->send_errors = p->send_errors;
	out->redials = p->redials;
	out->connections_lost = p->lost;
	return 0;
}
