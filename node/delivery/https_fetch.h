/*
 * https_fetch.h - HTTPS GETs on a libuv loop through libcurl's multi interface; the only file
 * that includes <curl/curl.h> is https_fetch.c.  Used for MTA-STS policies (RFC 8461 3.3).
 *
 * Contract: one CURLM driven by the caller's loop (a uv_poll per socket curl names through
 * CURLMOPT_SOCKETFUNCTION, one uv_timer for CURLMOPT_TIMERFUNCTION); no threads, no blocking
 * calls.  A request names the numeric address to connect to (CURLOPT_RESOLVE): curl never
 * resolves a name itself, so the system resolver is never asked (the caller resolves with its
 * own DNS servers).  The server certificate must chain to the CA file (or the system store)
 * and name the host; redirects are not followed, proxies from the environment are ignored,
 * only https is allowed; the body is bounded by max_bytes and the whole request by
 * timeout_ms.
 *
 * Callbacks run from the loop, never from inside https_fetch_get(); a request that fails to
 * start returns a negative errno and never calls back.  https_fetch_close() cancels what is in
 * flight (callbacks get HTTPS_ECANCELED from the last close callback) and frees everything.
 */
#ifndef RELAY_HTTPS_FETCH_H
#define RELAY_HTTPS_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define HTTPS_FETCH_INFLIGHT_MAX 64 /* requests in flight at once; more get -EBUSY */
#define HTTPS_FETCH_ERR_MAX 256

enum https_status {
	HTTPS_OK = 0,	      /* a complete response (any HTTP code: check it) */
	HTTPS_EFAILED = -1,   /* connect, TLS, certificate, timeout, protocol: see error */
	HTTPS_ETOOBIG = -2,   /* the body is longer than max_bytes */
	HTTPS_ECANCELED = -3, /* https_fetch_close() */
	HTTPS_ENOMEM = -4,
};

struct https_request {
	const char *host;    /* the URL's host and the certificate's name; borrowed, copied */
	unsigned port;	     /* 443 */
	const char *path;    /* "/.well-known/mta-sts.txt" */
	const char *addr;    /* numeric IPv4 or IPv6 address to connect to */
	const char *ca_file; /* PEM trust store; NULL or "": the system store */
	size_t max_bytes;    /* body bound */
	uint64_t timeout_ms; /* whole request bound */
};

struct https_result {
	int status;		  /* enum https_status */
	long http_code;		  /* 200, 404, ... (0 when none) */
	const char *content_type; /* "text/plain; charset=utf-8", or "" */
	const char *body;	  /* NUL-terminated; borrowed for the callback */
	size_t len;
	const char *error; /* text for logs when status != 0 */
};

typedef void (*https_fetch_cb)(void *arg, const struct https_result *res);

struct https_fetch;

/* 0 and *out, or -ENOMEM / -EIO (curl could not start). */
int https_fetch_new(uv_loop_t *loop, struct https_fetch **out);

/* Starts a GET.  0 (cb called exactly once), -EINVAL (bad request), -EBUSY
 * (HTTPS_FETCH_INFLIGHT_MAX), -ECANCELED (closing), -ENOMEM. */
int https_fetch_get(struct https_fetch *f, const struct https_request *rq, https_fetch_cb cb,
		    void *arg);

/* See the contract above.  f must not be used afterwards. */
void https_fetch_close(struct https_fetch *f);

/* Requests not yet called back. */
size_t https_fetch_pending(const struct https_fetch *f);

#endif
