/*
 * transport_admin.c: the admin endpoint of transport.h (relayctl's requests over NNG REQ/REP:
 * TCP with optional mutual TLS, or a unix socket), and the one-shot client.  Shares addresses
 * and TLS material with the peer transport (transport_int.h).
 */
#include "transport.h"
#include "transport_nng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

/* ---- admin endpoint ---- */

struct transport_admin {
	uv_loop_t *loop; /* borrowed */
	uv_poll_t poll;	 /* on the REP socket's RECVFD; stopped while a reply is pending */
	transport_admin_cb cb;
	void *cb_arg;
	nng_socket rep; /* owned */
	int port;
	bool pending; /* a request was delivered and not yet answered */
	bool closing;
	void (*done)(void *);
	void *done_arg;
};

static void admin_closed_cb(uv_handle_t *h);

static void
admin_poll_cb(uv_poll_t *h, int status, int events)
{
	struct transport_admin *a = h->data;
	if (a->closing || a->pending)
		return;
	nng_msg *msg;
	if (nng_recvmsg(a->rep, &msg, NNG_FLAG_NONBLOCK) != 0)
		return;
	a->pending = true;
	uv_poll_stop(&a->poll); /* one request at a time: resumed by transport_admin_reply */
	a->cb(a->cb_arg, nng_msg_body(msg), nng_msg_len(msg));
	nng_msg_free(msg);
}

int
transport_admin_listen(uv_loop_t *loop, const struct transport_admin_config *cfg,
		       transport_admin_cb cb, void *arg, struct transport_admin **out)
{
	int rv, fd;
	bool tls;
	struct tls_material m;
	if (loop == NULL || cfg == NULL || (cfg->listen == NULL && cfg->unix_path == NULL) ||
	    cb == NULL || out == NULL)
		return TRANSPORT_EINVAL;
	struct transport_admin *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return TRANSPORT_ENOMEM;
	a->loop = loop;
	a->cb = cb;
	a->cb_arg = arg;
	if ((rv = transport__tls_load(&m, cfg->ca_file, cfg->cert_file, cfg->key_file, &tls)) != 0)
		goto err_after_alloc;
	if (nng_rep0_open(&a->rep) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_tls;
	}
	nng_socket_set_size(a->rep, NNG_OPT_RECVMAXSZ,
			    cfg->max_msg_bytes ? cfg->max_msg_bytes
					       : TRANSPORT_ADMIN_DEFAULT_MAX_MSG_BYTES);
	nng_listener l;
	if (cfg->listen != NULL &&
	    (rv = transport__listen_on(a->rep, tls, &m, cfg->listen, &l, &a->port)) != 0)
		goto err_after_sock;
	if (cfg->unix_path != NULL && (rv = transport__listen_unix(a->rep, cfg->unix_path)) != 0)
		goto err_after_sock;
	if (nng_socket_get_int(a->rep, NNG_OPT_RECVFD, &fd) != 0 ||
	    uv_poll_init(loop, &a->poll, fd) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_sock;
	}
	a->poll.data = a;
	if (uv_poll_start(&a->poll, UV_READABLE, admin_poll_cb) != 0) {
		nng_close(a->rep);
		transport__tls_fini(&m);
		a->closing = true;
		uv_close((uv_handle_t *)&a->poll, admin_closed_cb);
		return TRANSPORT_ENNG;
	}
	transport__tls_fini(&m); /* the listener's TLS config holds its own copy */
	*out = a;
	return 0;

err_after_sock:
	nng_close(a->rep);
err_after_tls:
	transport__tls_fini(&m);
err_after_alloc:
	free(a);
	return rv;
}

int
transport_admin_listen_port(const struct transport_admin *a)
{
	return a->port;
}

int
transport_admin_reply(struct transport_admin *a, const void *data, size_t len)
{
	if (a->closing)
		return TRANSPORT_ECLOSED;
	if (!a->pending)
		return TRANSPORT_ESTATE;
	a->pending = false;
	int rv = 0;
	nng_msg *m;
	if (nng_msg_alloc(&m, len) != 0) {
		rv = TRANSPORT_ENOMEM; /* the client times out */
	} else {
		if (len > 0)
			memcpy(nng_msg_body(m), data, len);
		/* Fails only when the client is gone: the reply is discarded. */
		if (nng_sendmsg(a->rep, m, NNG_FLAG_NONBLOCK) != 0)
			nng_msg_free(m);
	}
	if (uv_poll_start(&a->poll, UV_READABLE, admin_poll_cb) != 0 && rv == 0)
		rv = TRANSPORT_ENNG;
	return rv;
}

static void
admin_closed_cb(uv_handle_t *h)
{
	struct transport_admin *a = h->data;
	void (*done)(void *) = a->done;
	void *arg = a->done_arg;
	free(a);
	if (done != NULL)
		done(arg);
}

void
transport_admin_close(struct transport_admin *a, void (*done)(void *arg), void *arg)
{
	if (a == NULL)
		return;
	a->closing = true;
	a->done = done;
	a->done_arg = arg;
	uv_poll_stop(&a->poll);
	/* bounded: right after relayctl's connections a stuck reaper would hang the node's stop
	 * here (seen under load: SIGTERM never finished); a is not reached from the socket */
	transport__close_bounded(a->rep, "admin");
	uv_close((uv_handle_t *)&a->poll, admin_closed_cb);
}

int
transport_admin_request(const struct transport_admin_config *cfg, const char *server_name,
			const void *req, size_t len, unsigned timeout_ms, void **reply,
			size_t *reply_len)
{
	int rv;
	bool tls;
	struct tls_material m;
	nng_socket s;
	if (cfg == NULL || (cfg->listen == NULL && cfg->unix_path == NULL) || reply == NULL ||
	    reply_len == NULL || (len > 0 && req == NULL) || timeout_ms == 0)
		return TRANSPORT_EINVAL;
	if ((rv = transport__tls_load(&m, cfg->ca_file, cfg->cert_file, cfg->key_file, &tls)) != 0)
		return rv;
	if (nng_req0_open(&s) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_tls;
	}
	nng_socket_set_size(s, NNG_OPT_RECVMAXSZ,
			    cfg->max_msg_bytes ? cfg->max_msg_bytes
					       : TRANSPORT_ADMIN_DEFAULT_MAX_MSG_BYTES);
	nng_socket_set_ms(s, NNG_OPT_SENDTIMEO, (nng_duration)timeout_ms);
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, (nng_duration)timeout_ms);
	if (cfg->unix_path != NULL) {
		char url[TRANSPORT_URL_MAX];
		nng_dialer d;
		int n = snprintf(url, sizeof(url), "ipc://%s", cfg->unix_path);
		if (n < 0 || (size_t)n >= sizeof(url) || nng_dialer_create(&d, s, url) != 0) {
			rv = TRANSPORT_EADDR;
			goto err_after_sock;
		}
		nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, TRANSPORT_RECONNECT_MIN_MS);
		nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, TRANSPORT_RECONNECT_MAX_MS);
		if (nng_dialer_start(d, NNG_FLAG_NONBLOCK) != 0) {
			rv = TRANSPORT_ENNG;
			goto err_after_sock;
		}
	} else if ((rv = transport__dial_to(s, tls, &m, server_name, cfg->listen, NULL)) != 0) {
		goto err_after_sock;
	}
	nng_msg *msg;
	if (nng_msg_alloc(&msg, len) != 0) {
		rv = TRANSPORT_ENOMEM;
		goto err_after_sock;
	}
	if (len > 0)
		memcpy(nng_msg_body(msg), req, len);
	uint64_t t0 = uv_hrtime();
	int nrv = nng_sendmsg(s, msg, 0);
	if (nrv != 0) {
		nng_msg_free(msg);
		rv = nrv == NNG_ETIMEDOUT ? TRANSPORT_ETIMEDOUT : TRANSPORT_ENNG;
		goto err_after_sock;
	}
	/* One deadline for the whole exchange. */
	uint64_t spent_ms = (uv_hrtime() - t0) / 1000000;
	if (spent_ms >= timeout_ms) {
		rv = TRANSPORT_ETIMEDOUT;
		goto err_after_sock;
	}
	nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, (nng_duration)(timeout_ms - spent_ms));
	if ((nrv = nng_recvmsg(s, &msg, 0)) != 0) {
		rv = nrv == NNG_ETIMEDOUT ? TRANSPORT_ETIMEDOUT : TRANSPORT_ENNG;
		goto err_after_sock;
	}
	size_t n = nng_msg_len(msg);
	void *buf = malloc(n > 0 ? n : 1);
	if (buf == NULL) {
		nng_msg_free(msg);
		rv = TRANSPORT_ENOMEM;
		goto err_after_sock;
	}
	memcpy(buf, nng_msg_body(msg), n);
	nng_msg_free(msg);
	*reply = buf;
	*reply_len = n;
	rv = 0;

err_after_sock:
	nng_close(s);
err_after_tls:
	transport__tls_fini(&m);
	return rv;
}
