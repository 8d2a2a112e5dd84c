/*
 * transport_ep.c: the admin endpoint's NNG plumbing (transport_nng.h): URLs, listening and
 * dialing with NNG (mutual TLS when configured), and a socket close bounded in time (NNG
 * 1.5.2's close can hang, nanomsg/nng#1543).
 */
#include "transport.h"
#include "transport_nng.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

/* ---- NNG endpoints: TLS config, URLs, listen, dial ---- */

/*
 * A TLS config with mutual authentication required.  server_name (client mode, may be NULL):
 * the name the listener's cert must carry.  The caller frees it with nng_tls_config_free.
 */
static int
tls_config_new(const struct tls_material *m, nng_tls_mode mode, const char *server_name,
	       nng_tls_config **out)
{
	nng_tls_config *c;
	if (nng_tls_config_alloc(&c, mode) != 0)
		return TRANSPORT_ETLS;
	if (nng_tls_config_auth_mode(c, NNG_TLS_AUTH_MODE_REQUIRED) != 0 ||
	    nng_tls_config_ca_chain(c, m->ca, NULL) != 0 ||
	    nng_tls_config_own_cert(c, m->cert, m->key, NULL) != 0 ||
	    (server_name != NULL && nng_tls_config_server_name(c, server_name) != 0)) {
		nng_tls_config_free(c);
		return TRANSPORT_ETLS;
	}
	*out = c;
	return 0;
}

/* "host:port" -> "tcp://host:port" or "tls+tcp://host:port". */
static int
make_url(char *buf, size_t size, bool tls, const char *addr)
{
	if (addr == NULL || strchr(addr, ':') == NULL || strstr(addr, "://") != NULL)
		return TRANSPORT_EADDR;
	int n = snprintf(buf, size, "%s://%s", tls ? "tls+tcp" : "tcp", addr);
	if (n < 0 || (size_t)n >= size)
		return TRANSPORT_EADDR;
	return 0;
}

/*
 * Listen on addr with sock; TLS server config from m when tls.  *port gets the bound port.
 */
int
transport__listen_on(nng_socket sock, bool tls, const struct tls_material *m, const char *addr,
		     nng_listener *l, int *port)
{
	char url[TRANSPORT_URL_MAX];
	int rv = make_url(url, sizeof(url), tls, addr);
	if (rv != 0)
		return rv;
	if (nng_listener_create(l, sock, url) != 0)
		return TRANSPORT_EADDR;
	if (tls) {
		nng_tls_config *c;
		if ((rv = tls_config_new(m, NNG_TLS_MODE_SERVER, NULL, &c)) != 0)
			goto err_after_create;
		int nrv = nng_listener_set_ptr(*l, NNG_OPT_TLS_CONFIG, c);
		nng_tls_config_free(c); /* the listener holds its own reference */
		if (nrv != 0) {
			rv = TRANSPORT_ETLS;
			goto err_after_create;
		}
	}
	if (nng_listener_start(*l, 0) != 0) {
		rv = TRANSPORT_ELISTEN;
		goto err_after_create;
	}
	if (nng_listener_get_int(*l, NNG_OPT_TCP_BOUND_PORT, port) != 0)
		*port = 0;
	return 0;

err_after_create:
	nng_listener_close(*l);
	return rv;
}

/* Listen on a unix socket (the admin endpoint's admin_socket): mode 0600 (NNG chmods it after
 * bind; the process umask covers the moment before), no TLS.  A file left by a process that
 * died is replaced (NNG finds nobody listening behind it). */
int
transport__listen_unix(nng_socket sock, const char *path)
{
	char url[TRANSPORT_URL_MAX];
	nng_listener l;
	int n = snprintf(url, sizeof(url), "ipc://%s", path);
	if (path[0] != '/' || n < 0 || (size_t)n >= sizeof(url))
		return TRANSPORT_EADDR;
	if (nng_listener_create(&l, sock, url) != 0)
		return TRANSPORT_EADDR;
	if (nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600) != 0 ||
	    nng_listener_start(l, 0) != 0) {
		nng_listener_close(l);
		return TRANSPORT_ELISTEN;
	}
	return 0;
}

/*
 * Start a dialer on sock that reconnects forever; it is closed with the socket.  *out (may be
 * NULL) gets the dialer.
 */
int
transport__dial_to(nng_socket sock, bool tls, const struct tls_material *m, const char *server_name,
		   const char *addr, nng_dialer *out)
{
	char url[TRANSPORT_URL_MAX];
	nng_dialer d;
	int rv = make_url(url, sizeof(url), tls, addr);
	if (rv != 0)
		return rv;
	if (nng_dialer_create(&d, sock, url) != 0)
		return TRANSPORT_EADDR;
	nng_dialer_set_ms(d, NNG_OPT_RECONNMINT, TRANSPORT_RECONNECT_MIN_MS);
	nng_dialer_set_ms(d, NNG_OPT_RECONNMAXT, TRANSPORT_RECONNECT_MAX_MS);
	if (tls) {
		nng_tls_config *c;
		if ((rv = tls_config_new(m, NNG_TLS_MODE_CLIENT, server_name, &c)) != 0)
			goto err_after_create;
		int nrv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, c);
		nng_tls_config_free(c);
		if (nrv != 0) {
			rv = TRANSPORT_ETLS;
			goto err_after_create;
		}
	}
	/* Non-blocking: an absent peer is not an error; NNG keeps retrying. */
	if (nng_dialer_start(d, NNG_FLAG_NONBLOCK) != 0) {
		rv = TRANSPORT_ENNG;
		goto err_after_create;
	}
	if (out != NULL)
		*out = d;
	return 0;

err_after_create:
	nng_dialer_close(d);
	return rv;
}

/* ---- bounded socket close (transport_int.h) ---- */

struct close_wait {
	nng_socket sock;
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	bool finished;
	int refs; /* the helper and the waiter; the last one frees it */
};

static void
close_wait_unref(struct close_wait *w)
{
	pthread_mutex_lock(&w->mtx);
	int left = --w->refs;
	pthread_mutex_unlock(&w->mtx);
	if (left == 0) {
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mtx);
		free(w);
	}
}

static void *
close_wait_thread(void *arg)
{
	struct close_wait *w = arg;
	nng_close(w->sock);
	pthread_mutex_lock(&w->mtx);
	w->finished = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mtx);
	close_wait_unref(w);
	return NULL;
}

bool
transport__close_bounded(nng_socket sock, const char *what)
{
	struct close_wait *w = calloc(1, sizeof(*w));
	pthread_attr_t attr;
	pthread_t th;
	if (w == NULL || pthread_attr_init(&attr) != 0) {
		free(w);
		nng_close(sock); /* no memory for a thread: as before, unbounded */
		return true;
	}
	w->sock = sock;
	w->refs = 2;
	pthread_mutex_init(&w->mtx, NULL);
	pthread_cond_init(&w->cv, NULL);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &attr, close_wait_thread, w) != 0) {
		pthread_attr_destroy(&attr);
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mtx);
		free(w);
		nng_close(sock);
		return true;
	}
	pthread_attr_destroy(&attr);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += TRANSPORT_CLOSE_WAIT_MS / 1000;
	pthread_mutex_lock(&w->mtx);
	while (!w->finished)
		if (pthread_cond_timedwait(&w->cv, &w->mtx, &dl) != 0)
			break;
	bool finished = w->finished;
	pthread_mutex_unlock(&w->mtx);
	close_wait_unref(w);
	if (!finished)
		fprintf(
		    stderr,
		    "transport: event=close-stuck what=%s wait_ms=%d: NNG's socket close did not "
		    "return (nanomsg/nng#1543); left behind\n",
		    what, TRANSPORT_CLOSE_WAIT_MS);
	return finished;
}
