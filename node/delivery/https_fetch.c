/*
 * https_fetch.c - libcurl's multi interface on a libuv loop; the only file that includes
 * <curl/curl.h>.  See https_fetch.h for the contract.
 *
 * Moving parts:
 *   sock_cb     curl wants a socket watched (or not) -> start/stop a uv_poll (curl_multi_assign
 *               keeps the poll with the socket)
 *   poll_cb     readable/writable -> curl_multi_socket_action(fd)
 *   timer_cb    curl's timeout -> curl_multi_socket_action(CURL_SOCKET_TIMEOUT)
 *   reap        finished transfers (curl_multi_info_read) leave the multi first, then their
 *               callbacks run, so a callback may start requests or close the fetcher
 * Close: every transfer in flight is removed and queued as canceled, the multi is cleaned up,
 * the polls and the timer are closed; the last close callback runs the canceled callbacks and
 * frees the fetcher.  Handles are only freed in their close callbacks.
 */
#include "https_fetch.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hf_req {
	struct https_fetch *f;
	CURL *easy;
	struct curl_slist *resolve; /* owned */
	https_fetch_cb cb;
	void *arg;
	char *body; /* owned */
	size_t len, cap, max;
	bool too_big;
	CURLcode rc; /* the transfer's result, once done */
	char errbuf[CURL_ERROR_SIZE];
	struct hf_req *next, *prev; /* in flight, or the canceled list */
};

struct hf_poll {
	uv_poll_t h;
	struct https_fetch *f;
	curl_socket_t fd;
	struct hf_poll *next;
};

struct https_fetch {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer;
	int handles_open;
	bool closing;
	size_t inflight;
	struct hf_req *reqs;	 /* in flight */
	struct hf_req *canceled; /* called back when the last handle closed */
	struct hf_poll *polls;
};

static void reap(struct https_fetch *f);

static void
req_free(struct hf_req *q)
{
	if (q->easy != NULL)
		curl_easy_cleanup(q->easy);
	curl_slist_free_all(q->resolve);
	free(q->body);
	free(q);
}

static void
req_unlink(struct https_fetch *f, struct hf_req *q)
{
	if (q->prev)
		q->prev->next = q->next;
	else
		f->reqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
	q->next = q->prev = NULL;
	f->inflight--;
}

/* Calls back a finished request and frees it. */
static void
req_finish(struct hf_req *q, int status, const char *error)
{
	struct https_result res = {.status = status, .error = error ? error : ""};
	char ctype[128] = "";
	if (q->easy != NULL) {
		char *ct = NULL;
		curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &res.http_code);
		if (curl_easy_getinfo(q->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK &&
		    ct != NULL)
			snprintf(ctype, sizeof(ctype), "%s", ct);
	}
	res.content_type = ctype;
	res.body = q->body != NULL ? q->body : "";
	res.len = q->len;
	q->cb(q->arg, &res);
	req_free(q);
}

static size_t
write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	struct hf_req *q = userp;
	size_t n = size * nmemb;
	if (n > q->max - q->len) {
		q->too_big = true;
		return 0; /* CURLE_WRITE_ERROR ends the transfer */
	}
	if (q->len + n + 1 > q->cap) {
		size_t cap = q->cap ? q->cap : 4096;
		while (cap < q->len + n + 1)
			cap *= 2;
		if (cap > q->max + 1)
			cap = q->max + 1;
		char *b = realloc(q->body, cap);
		if (b == NULL)
			return 0;
		q->body = b;
		q->cap = cap;
	}
	memcpy(q->body + q->len, data, n);
	q->len += n;
	q->body[q->len] = '\0';
	return n;
}

/* ------------------------------------------------------------ libuv glue */

/* A handle closed; after the last one (closing): the canceled callbacks, then the free. */
static void
fetch_handle_closed(struct https_fetch *f)
{
	if (--f->handles_open > 0 || !f->closing)
		return;
	while (f->canceled != NULL) {
		struct hf_req *q = f->canceled;
		f->canceled = q->next;
		req_finish(q, HTTPS_ECANCELED, "canceled");
	}
	free(f);
	curl_global_cleanup(); /* pairs with https_fetch_new's curl_global_init */
}

static void
poll_close_cb(uv_handle_t *h)
{
	struct hf_poll *p = h->data;
	struct https_fetch *f = p->f;
	free(p);
	fetch_handle_closed(f);
}

static void
poll_cb(uv_poll_t *h, int status, int events)
{
	struct hf_poll *p = h->data;
	struct https_fetch *f = p->f;
	int flags = 0, running;
	if (status < 0)
		flags = CURL_CSELECT_ERR;
	else {
		if (events & UV_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events & UV_WRITABLE)
			flags |= CURL_CSELECT_OUT;
	}
	curl_multi_socket_action(f->multi, p->fd, flags, &running);
	reap(f);
}

static void
poll_drop(struct https_fetch *f, struct hf_poll *p)
{
	struct hf_poll **pp = &f->polls;
	while (*pp != NULL && *pp != p)
		pp = &(*pp)->next;
	if (*pp == p)
		*pp = p->next;
	uv_poll_stop(&p->h);
	uv_close((uv_handle_t *)&p->h, poll_close_cb);
}

static int
sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct https_fetch *f = userp;
	struct hf_poll *p = socketp;
	(void)easy;
	if (what == CURL_POLL_REMOVE) {
		if (p != NULL) {
			if (!f->closing)
				curl_multi_assign(f->multi, s, NULL);
			poll_drop(f, p);
		}
		return 0;
	}
	if (f->closing)
		return 0;
	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			return -1;
		if (uv_poll_init_socket(f->loop, &p->h, s) != 0) {
			free(p);
			return -1;
		}
		p->h.data = p;
		p->f = f;
		p->fd = s;
		p->next = f->polls;
		f->polls = p;
		f->handles_open++;
		curl_multi_assign(f->multi, s, p);
	}
	int ev = 0;
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev |= UV_READABLE;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev |= UV_WRITABLE;
	uv_poll_start(&p->h, ev, poll_cb);
	return 0;
}

static void
timer_cb(uv_timer_t *t)
{
	struct https_fetch *f = t->data;
	int running;
	curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	reap(f);
}

static int
multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct https_fetch *f = userp;
	(void)multi;
	if (f->closing)
		return 0;
	if (timeout_ms < 0)
		uv_timer_stop(&f->timer);
	else
		uv_timer_start(&f->timer, timer_cb, (uint64_t)timeout_ms, 0);
	return 0;
}

/* Finished transfers leave the multi, then get their callbacks. */
static void
reap(struct https_fetch *f)
{
	struct hf_req *done = NULL, **tail = &done;
	CURLMsg *m;
	int left;
	while (!f->closing && (m = curl_multi_info_read(f->multi, &left)) != NULL) {
		if (m->msg != CURLMSG_DONE)
			continue;
		struct hf_req *q = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
		q->rc = m->data.result;
		if (q->rc == CURLE_FILESIZE_EXCEEDED) /* Content-Length said it before the body */
			q->too_big = true;
		curl_multi_remove_handle(f->multi, m->easy_handle);
		req_unlink(f, q);
		if (q->rc != CURLE_OK && q->errbuf[0] == '\0')
			snprintf(q->errbuf, sizeof(q->errbuf), "%s", curl_easy_strerror(q->rc));
		*tail = q;
		tail = &q->next;
	}
	while (done != NULL) {
		struct hf_req *q = done;
		done = q->next;
		q->next = NULL;
		if (q->rc == CURLE_OK)
			req_finish(q, HTTPS_OK, NULL);
		else if (q->too_big)
			req_finish(q, HTTPS_ETOOBIG, "response larger than the bound");
		else
			req_finish(q, HTTPS_EFAILED, q->errbuf);
	}
}

/* ------------------------------------------------------------ API */

/* A host name that cannot change the meaning of the URL or of the CURLOPT_RESOLVE entry. */
static bool
host_ok(const char *h)
{
	size_t n = strlen(h);
	if (n == 0 || n > 253)
		return false;
	return strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == n;
}

/* A numeric IPv4 or IPv6 address. */
static bool
addr_ok(const char *a, bool *v6)
{
	unsigned char buf[16];
	*v6 = inet_pton(AF_INET6, a, buf) == 1;
	return *v6 || inet_pton(AF_INET, a, buf) == 1;
}

int
https_fetch_new(uv_loop_t *loop, struct https_fetch **out)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -EIO;
	struct https_fetch *f = calloc(1, sizeof(*f));
	if (f == NULL) {
		curl_global_cleanup();
		return -ENOMEM;
	}
	f->loop = loop;
	f->multi = curl_multi_init();
	if (f->multi == NULL) {
		free(f);
		curl_global_cleanup();
		return -EIO;
	}
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
	curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
	uv_timer_init(loop, &f->timer);
	f->timer.data = f;
	f->handles_open = 1;
	*out = f;
	return 0;
}

size_t
https_fetch_pending(const struct https_fetch *f)
{
	size_t n = f->inflight;
	for (const struct hf_req *q = f->canceled; q != NULL; q = q->next)
		n++;
	return n;
}

int
https_fetch_get(struct https_fetch *f, const struct https_request *rq, https_fetch_cb cb, void *arg)
{
	char url[600], resolve[400];
	bool v6 = false;

	if (f->closing)
		return -ECANCELED;
	if (cb == NULL || rq->host == NULL || rq->addr == NULL || rq->path == NULL ||
	    rq->path[0] != '/' || rq->port == 0 || rq->port > 65535 || rq->max_bytes == 0 ||
	    !host_ok(rq->host) || !addr_ok(rq->addr, &v6) || strpbrk(rq->path, " \r\n#") != NULL)
		return -EINVAL;
	if (f->inflight >= HTTPS_FETCH_INFLIGHT_MAX)
		return -EBUSY;
	int n1 = snprintf(url, sizeof(url), "https://%s:%u%s", rq->host, rq->port, rq->path);
	int n2 = snprintf(resolve, sizeof(resolve), v6 ? "%s:%u:[%s]" : "%s:%u:%s", rq->host,
			  rq->port, rq->addr);
	if (n1 < 0 || (size_t)n1 >= sizeof(url) || n2 < 0 || (size_t)n2 >= sizeof(resolve))
		return -EINVAL;
	struct hf_req *q = calloc(1, sizeof(*q));
	if (q == NULL)
		return -ENOMEM;
	q->f = f;
	q->cb = cb;
	q->arg = arg;
	q->max = rq->max_bytes;
	q->easy = curl_easy_init();
	q->resolve = curl_slist_append(NULL, resolve);
	if (q->easy == NULL || q->resolve == NULL)
		goto err_after_req;
	CURL *e = q->easy;
	long tmo = rq->timeout_ms > 0 && rq->timeout_ms < 3600000 ? (long)rq->timeout_ms : 60000;
	int bad = 0;
	bad |= curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_RESOLVE, q->resolve) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https") != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK; /* RFC 8461 3.3 */
	bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK; /* no proxy from the env */
	bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tmo) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, tmo) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2) != CURLE_OK;
	if (rq->ca_file != NULL && rq->ca_file[0] != '\0')
		bad |= curl_easy_setopt(e, CURLOPT_CAINFO, rq->ca_file) != CURLE_OK;
	bad |=
	    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)rq->max_bytes) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_USERAGENT, "relayd") != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, q) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf) != CURLE_OK;
	bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)q) != CURLE_OK;
	if (bad)
		goto err_after_req;
	if (curl_multi_add_handle(f->multi, e) != CURLM_OK)
		goto err_after_req;
	q->next = f->reqs;
	if (f->reqs)
		f->reqs->prev = q;
	f->reqs = q;
	f->inflight++;
	return 0;
err_after_req:
	req_free(q);
	return -ENOMEM;
}

static void
timer_close_cb(uv_handle_t *h)
{
	fetch_handle_closed(h->data);
}

void
https_fetch_close(struct https_fetch *f)
{
	if (f->closing)
		return;
	/* In flight: out of the multi (curl may call sock_cb REMOVE), onto the canceled list. */
	while (f->reqs != NULL) {
		struct hf_req *q = f->reqs;
		curl_multi_remove_handle(f->multi, q->easy);
		req_unlink(f, q);
		curl_easy_cleanup(q->easy);
		q->easy = NULL;
		q->next = f->canceled;
		f->canceled = q;
	}
	f->closing = true;
	curl_multi_cleanup(f->multi);
	f->multi = NULL;
	while (f->polls != NULL)
		poll_drop(f, f->polls);
	uv_timer_stop(&f->timer);
	uv_close((uv_handle_t *)&f->timer, timer_close_cb);
}
