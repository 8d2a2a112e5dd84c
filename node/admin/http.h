/*
 * http.h: the HTTP endpoint on http_listen: /healthz, /readyz and /metrics (Prometheus text
 * format 0.0.4).  libmicrohttpd serves requests on its own thread; the data comes from the loop
 * thread, which publishes a snapshot every HTTP_PUBLISH_MS (the fill callback renders it), so no
 * loop state is ever read from the HTTP thread.
 *
 *   /healthz  200 "ok" while the loop thread keeps publishing (a stuck loop turns it 503 after
 *             HTTP_STALE_MS); liveness.
 *   /readyz   200 "ready" when the last snapshot said ready (has a leader and is caught up),
 *             else 503 with the reason; readiness.
 *   /metrics  the last rendered metrics text.
 * Anything else: 404.  Only GET and HEAD.
 */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#define HTTP_PUBLISH_MS 500
#define HTTP_STALE_MS 10000
#define HTTP_METRICS_MAX (256 * 1024) /* bound on the rendered metrics text */
/* Slow clients cannot crowd the liveness probe out (issue 12 sec. 5): one address holds at most
 * HTTP_MAX_CONNECTIONS_PER_IP connections (more are closed at once), all of them together
 * HTTP_MAX_CONNECTIONS, and a connection idle for HTTP_IDLE_TIMEOUT_S is closed. */
#define HTTP_MAX_CONNECTIONS 512
#define HTTP_MAX_CONNECTIONS_PER_IP 8
#define HTTP_IDLE_TIMEOUT_S 5

struct http;

/* A growable text buffer, bounded by HTTP_METRICS_MAX. */
struct http_text {
	char *buf;
	size_t len, cap;
	bool truncated;
};

void http_printf(struct http_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Called on the loop thread: render the metrics into t, say whether the node is ready (and
 * why not, in reason). */
typedef void (*http_fill_cb)(void *arg, struct http_text *t, bool *ready, char *reason,
			     size_t reason_len);

int http_start(uv_loop_t *loop, const struct sockaddr *addr, http_fill_cb fill, void *arg,
	       struct http **out, char *err, size_t errlen);

/* Stops the daemon (joins its thread) and frees everything once the timer is closed. */
void http_stop(struct http *h);

#endif
