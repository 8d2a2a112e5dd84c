/*
 * http.c: libmicrohttpd behind http.h.  The loop thread renders a snapshot on a timer and swaps
 * it in under a mutex; the MHD thread copies the current snapshot into each response.
 */
#include "http.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct http {
	uv_loop_t *loop;
	uv_timer_t timer;
	struct MHD_Daemon *mhd;
	http_fill_cb fill;
	void *arg;
	pthread_mutex_t mu; /* guards the snapshot below */
	char *metrics;	    /* owned */
	size_t metrics_len;
	bool ready;
	char reason[128];
	uint64_t published_ms; /* CLOCK_MONOTONIC */
};

static uint64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void
http_printf(struct http_text *t, const char *fmt, ...)
{
	if (t->truncated)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt,
				  ap);
		va_end(ap);
		if (n < 0) {
			t->truncated = true;
			return;
		}
		if (t->buf != NULL && (size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		size_t need = t->len + (size_t)n + 1, cap = t->cap ? t->cap : 4096;
		while (cap < need)
			cap *= 2;
		if (cap > HTTP_METRICS_MAX) {
			t->truncated = true;
			return;
		}
		char *nb = realloc(t->buf, cap);
		if (nb == NULL) {
			t->truncated = true;
			return;
		}
		t->buf = nb;
		t->cap = cap;
	}
}

static void
http_publish(struct http *h)
{
	struct http_text t = {0};
	bool ready = false;
	char reason[128] = "";
	h->fill(h->arg, &t, &ready, reason, sizeof(reason));
	pthread_mutex_lock(&h->mu);
	free(h->metrics);
	h->metrics = t.buf;
	h->metrics_len = t.len;
	h->ready = ready;
	snprintf(h->reason, sizeof(h->reason), "%s", reason);
	h->published_ms = mono_ms();
	pthread_mutex_unlock(&h->mu);
}

static void
http_timer_cb(uv_timer_t *t)
{
	http_publish(t->data);
}

static enum MHD_Result
http_reply(struct MHD_Connection *conn, unsigned status, const char *ctype, const char *body,
	   size_t len)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", ctype);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	enum MHD_Result ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
http_handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
	     const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
	struct http *h = cls;
	static const char text[] = "text/plain; charset=utf-8";
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return http_reply(conn, 405, text, "method not allowed\n", 19);
	if (*upload_size != 0)
		return http_reply(conn, 400, text, "no body expected\n", 17);
	char msg[200];
	enum MHD_Result ret;
	pthread_mutex_lock(&h->mu);
	bool fresh = mono_ms() - h->published_ms < HTTP_STALE_MS;
	if (strcmp(url, "/healthz") == 0) {
		ret = fresh ? http_reply(conn, 200, text, "ok\n", 3)
			    : http_reply(conn, 503, text, "event loop stalled\n", 19);
	} else if (strcmp(url, "/readyz") == 0) {
		if (fresh && h->ready) {
			ret = http_reply(conn, 200, text, "ready\n", 6);
		} else {
			int n = snprintf(msg, sizeof(msg), "not ready: %s\n",
					 fresh ? h->reason : "event loop stalled");
			ret = http_reply(conn, 503, text, msg, (size_t)n);
		}
	} else if (strcmp(url, "/metrics") == 0) {
		ret = http_reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
				 h->metrics ? h->metrics : "", h->metrics_len);
	} else {
		ret = http_reply(conn, 404, text, "not found\n", 10);
	}
	pthread_mutex_unlock(&h->mu);
	return ret;
}

int
http_start(uv_loop_t *loop, const struct sockaddr *addr, http_fill_cb fill, void *arg,
	   struct http **out, char *err, size_t errlen)
{
	struct http *h = calloc(1, sizeof(*h));
	if (h == NULL) {
		snprintf(err, errlen, "http: out of memory");
		return -1;
	}
	h->loop = loop;
	h->fill = fill;
	h->arg = arg;
	pthread_mutex_init(&h->mu, NULL);
	http_publish(h);
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
	if (addr->sa_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, http_handler, h, MHD_OPTION_SOCK_ADDR, addr,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
				  MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS_PER_IP,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S,
				  /* a restart binds again at once, whatever connections the old
				   * process left in TIME_WAIT (it closes idle ones itself) */
				  MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
	if (h->mhd == NULL) {
		snprintf(err, errlen, "http_listen: cannot start the HTTP server (address in use?)");
		pthread_mutex_destroy(&h->mu);
		free(h->metrics);
		free(h);
		return -1;
	}
	uv_timer_init(loop, &h->timer);
	h->timer.data = h;
	uv_timer_start(&h->timer, http_timer_cb, HTTP_PUBLISH_MS, HTTP_PUBLISH_MS);
	*out = h;
	return 0;
}

static void
http_closed_cb(uv_handle_t *hd)
{
	struct http *h = hd->data;
	pthread_mutex_destroy(&h->mu);
	free(h->metrics);
	free(h);
}

void
http_stop(struct http *h)
{
	if (h == NULL)
		return;
	MHD_stop_daemon(h->mhd);
	h->mhd = NULL;
	uv_timer_stop(&h->timer);
	uv_close((uv_handle_t *)&h->timer, http_closed_cb);
}
