/*
 * resolver.c - c-ares on a libuv loop; the only file that includes <ares.h>.
 *
 * Contract: see resolver.h.  Moving parts:
 *   sock_state_cb  c-ares opens/closes a socket -> start/stop a uv_poll
 *   poll_cb        socket readable/writable -> ares_process_fd
 *   timer_cb       ares_timeout() expired -> ares_process_fd(BAD, BAD)
 *   query callbacks turn raw answers into mx.h records; when a lookup has no
 *                  query left it moves to the done list
 *   idle_cb        calls the user callbacks of the done list (never from the
 *                  request call itself), then frees the lookups
 * Close: ares_destroy() fails every query with ARES_EDESTRUCTION (lookups end
 * MX_ECANCELED) and closes its sockets (polls closed); when the last handle's
 * close callback runs, the remaining user callbacks run and everything is
 * freed.  Handles are only freed in their close callbacks.
 */
#include "resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

enum lookup_kind { LOOKUP_MX, LOOKUP_HOST, LOOKUP_RAW };

struct lookup;

/* The argument of one c-ares query: which lookup, which host, which type. */
struct qref {
	struct lookup *lk;
	uint8_t host;
	uint8_t family; /* 0 for the MX query */
};

struct lookup {
	struct resolver *r;
	enum lookup_kind kind;
	char name[MX_NAME_MAX + 2];
	resolver_cb cb;
	void *arg;
	int pending; /* c-ares queries outstanding */
	int status;
	unsigned nx;	/* address queries answered NXDOMAIN */
	unsigned asked; /* address queries sent */
	bool canceled;
	bool from_cache; /* answered from the cache: do not store again */
	uint8_t ad[MX_MAX_HOSTS]; /* per host: 1 = the A answer, 2 = the AAAA answer had AD */
	/* LOOKUP_RAW */
	uint16_t qtype;
	resolver_raw_cb raw_cb;
	enum mx_dns raw_res;
	bool raw_ad;
	uint8_t *raw_abuf; /* owned copy of the answer, or NULL */
	size_t raw_alen;
	struct mx_list list;
	struct qref refs[1 + 2 * MX_MAX_HOSTS];
	struct lookup *next; /* done list */
};

struct rsv_poll {
	uv_poll_t handle;
	struct resolver *r;
	ares_socket_t fd;
	struct rsv_poll *next;
};

struct cache_entry {
	bool used;
	enum lookup_kind kind;
	char name[MX_NAME_MAX + 2];
	uint64_t expires; /* seconds, resolver clock */
	uint64_t stamp;	  /* LRU */
	struct mx_list list;
};

struct resolver {
	uv_loop_t *loop;
	ares_channel ch;
	bool ch_alive;
	uv_timer_t timer;
	uv_idle_t idle;
	int handles_open;
	bool closing;
	struct rsv_poll *polls;
	struct lookup *done_head, *done_tail;
	size_t inflight;
	struct mx_rng rng;
	uint64_t (*now_cb)(void *);
	void *now_arg;
	struct cache_entry *cache;
	size_t cache_max;
	uint64_t cache_clock;
	bool dnssec_ad;
};

/* The argument of a query sent with the AD bit (ares_send): the caller's callback. */
struct ad_query {
	ares_callback cb;
	void *arg;
};

static uint64_t
rsv_now(struct resolver *r)
{
	if (r->now_cb)
		return r->now_cb(r->now_arg);
	return uv_now(r->loop) / 1000;
}

/* --- raw answer adapters (pure) ----------------------------------------- */

static enum mx_dns
parse_status(int st)
{
	switch (st) {
	case ARES_SUCCESS:
		return MX_DNS_OK;
	case ARES_ENODATA:
		return MX_DNS_NODATA;
	case ARES_ENOMEM:
		return MX_DNS_TEMP;
	default:
		return MX_DNS_MALFORMED;
	}
}

enum mx_dns
resolver_parse_mx_answer(const uint8_t *abuf, size_t alen, struct mx_rr *rrs, size_t max, size_t *n,
			 uint32_t *ttl)
{
	struct ares_mx_reply *mx = NULL;
	*n = 0;

	if (alen > INT_MAX)
		return MX_DNS_MALFORMED;
	int st = ares_parse_mx_reply(abuf, (int)alen, &mx);
	if (st != ARES_SUCCESS)
		return parse_status(st);
	if (mx_answer_min_ttl(abuf, alen, ttl) != 0) {
		ares_free_data(mx);
		return MX_DNS_MALFORMED;
	}
	for (struct ares_mx_reply *p = mx; p != NULL && *n < max; p = p->next) {
		if (p->host == NULL || strlen(p->host) > MX_NAME_MAX)
			continue; /* unusable exchange; mx_order() sees the rest */
		rrs[*n].pref = p->priority;
		strcpy(rrs[*n].name, p->host);
		(*n)++;
	}
	ares_free_data(mx);
	return *n > 0 ? MX_DNS_OK : MX_DNS_MALFORMED;
}

enum mx_dns
resolver_parse_addr_answer(const uint8_t *abuf, size_t alen, int family, struct mx_host *host,
			   uint32_t *ttl)
{
	int n = MX_MAX_ADDRS * 2, st;

	if (alen > INT_MAX)
		return MX_DNS_MALFORMED;
	if (family == AF_INET) {
		struct ares_addrttl a[MX_MAX_ADDRS * 2];
		st = ares_parse_a_reply(abuf, (int)alen, NULL, a, &n);
		if (st != ARES_SUCCESS)
			return parse_status(st);
		for (int i = 0; i < n; i++) {
			mx_host_add_addr(host, AF_INET, &a[i].ipaddr);
			uint32_t t = a[i].ttl < 0 ? 0 : (uint32_t)a[i].ttl;
			if (t < *ttl)
				*ttl = t;
		}
	} else if (family == AF_INET6) {
		struct ares_addr6ttl a[MX_MAX_ADDRS * 2];
		st = ares_parse_aaaa_reply(abuf, (int)alen, NULL, a, &n);
		if (st != ARES_SUCCESS)
			return parse_status(st);
		for (int i = 0; i < n; i++) {
			mx_host_add_addr(host, AF_INET6, &a[i].ip6addr);
			uint32_t t = a[i].ttl < 0 ? 0 : (uint32_t)a[i].ttl;
			if (t < *ttl)
				*ttl = t;
		}
	} else {
		return MX_DNS_MALFORMED;
	}
	return n > 0 ? MX_DNS_OK : MX_DNS_NODATA;
}

/* c-ares query status -> mx_dns (ARES_SUCCESS still needs parsing). */
static enum mx_dns
query_status(int st)
{
	switch (st) {
	case ARES_SUCCESS:
		return MX_DNS_OK;
	case ARES_ENODATA:
		return MX_DNS_NODATA;
	case ARES_ENOTFOUND:
		return MX_DNS_NXDOMAIN;
	case ARES_EBADRESP:
	case ARES_EFORMERR:
		return MX_DNS_MALFORMED;
	default: /* SERVFAIL, REFUSED, NOTIMP, timeout, connection, ENOMEM */
		return MX_DNS_TEMP;
	}
}

/* --- cache --------------------------------------------------------------- */

static struct cache_entry *
cache_find(struct resolver *r, enum lookup_kind kind, const char *name)
{
	uint64_t now = rsv_now(r);

	for (size_t i = 0; i < r->cache_max; i++) {
		struct cache_entry *e = &r->cache[i];
		if (!e->used || e->kind != kind || strcmp(e->name, name) != 0)
			continue;
		if (now >= e->expires) {
			e->used = false;
			return NULL;
		}
		e->stamp = ++r->cache_clock;
		return e;
	}
	return NULL;
}

static void
cache_store(struct resolver *r, const struct lookup *lk)
{
	struct cache_entry *victim = NULL;

	if (r->cache_max == 0 || lk->status != 0 || lk->list.ttl == 0 || lk->kind == LOOKUP_RAW)
		return;
	for (size_t i = 0; i < r->cache_max; i++) {
		struct cache_entry *e = &r->cache[i];
		if (!e->used || (e->kind == lk->kind && strcmp(e->name, lk->name) == 0)) {
			victim = e;
			break;
		}
		if (victim == NULL || e->stamp < victim->stamp)
			victim = e;
	}
	victim->used = true;
	victim->kind = lk->kind;
	strcpy(victim->name, lk->name);
	victim->expires = rsv_now(r) + lk->list.ttl;
	victim->stamp = ++r->cache_clock;
	victim->list = lk->list;
}

/* --- completion ---------------------------------------------------------- */

/* Calls the user callback of a finished lookup and frees it. */
static void
lookup_call(struct lookup *lk)
{
	if (lk->kind == LOOKUP_RAW)
		lk->raw_cb(lk->arg, lk->status, lk->raw_res, lk->raw_ad, lk->raw_abuf,
			   lk->raw_alen);
	else
		lk->cb(lk->arg, lk->status, lk->status == 0 ? &lk->list : NULL);
	free(lk->raw_abuf);
	free(lk);
}

static void
idle_cb(uv_idle_t *h)
{
	struct resolver *r = h->data;
	struct lookup *lk = r->done_head;

	r->done_head = r->done_tail = NULL;
	uv_idle_stop(&r->idle);
	while (lk != NULL) {
		struct lookup *next = lk->next;
		lookup_call(lk);
		lk = next;
	}
}

/* A lookup has its final status: queue its callback. */
static void
lookup_done(struct lookup *lk)
{
	struct resolver *r = lk->r;

	if (lk->canceled)
		lk->status = MX_ECANCELED;
	if (lk->status == 0 && !lk->from_cache)
		cache_store(r, lk);
	r->inflight--;
	lk->next = NULL;
	if (r->done_tail)
		r->done_tail->next = lk;
	else
		r->done_head = lk;
	r->done_tail = lk;
	if (!r->closing)
		uv_idle_start(&r->idle, idle_cb);
}

static void arm_timer(struct resolver *r);
static void lookup_finish_addresses(struct lookup *lk);

/* The answer of a query sent with ares_send: the status ares_query would give (its rcode
 * mapping, c-ares 1.18 ares_query.c), then the caller's callback. */
static void
ad_query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct ad_query *aq = arg;
	ares_callback cb = aq->cb;
	void *cb_arg = aq->arg;
	struct mx_dns_header h;

	free(aq);
	if (status == ARES_SUCCESS) {
		if (abuf == NULL || alen < 0 || mx_answer_header(abuf, (size_t)alen, &h) != 0) {
			status = ARES_EBADRESP;
		} else {
			switch (h.rcode) {
			case 0:
				status = h.ancount > 0 ? ARES_SUCCESS : ARES_ENODATA;
				break;
			case 1:
				status = ARES_EFORMERR;
				break;
			case 2:
				status = ARES_ESERVFAIL;
				break;
			case 3:
				status = ARES_ENOTFOUND;
				break;
			case 4:
				status = ARES_ENOTIMP;
				break;
			case 5:
				status = ARES_EREFUSED;
				break;
			default:
				break;
			}
		}
	}
	cb(cb_arg, status, timeouts, abuf, alen);
}

/* Sends one question; with dnssec_ad the query carries the AD bit (RFC 6840 5.7), which
 * ares_query cannot set, so it is built here and sent with ares_send.  Like ares_query, a
 * failure to send calls cb at once. */
static void
rsv_query(struct resolver *r, const char *name, int type, ares_callback cb, void *arg)
{
	if (!r->dnssec_ad) {
		ares_query(r->ch, name, ns_c_in, type, cb, arg);
		return;
	}
	unsigned char *q = NULL;
	int qlen = 0;
	int st = ares_create_query(name, ns_c_in, type, 0, 1, &q, &qlen, 0);
	struct ad_query *aq = st == ARES_SUCCESS ? malloc(sizeof(*aq)) : NULL;
	if (aq == NULL) {
		if (q != NULL)
			ares_free_string(q);
		cb(arg, st == ARES_SUCCESS ? ARES_ENOMEM : st, 0, NULL, 0);
		return;
	}
	q[3] |= 0x20; /* AD */
	aq->cb = cb;
	aq->arg = arg;
	ares_send(r->ch, q, qlen, ad_query_cb, aq); /* copies q */
	ares_free_string(q);
}

/* Did this answer carry the AD bit (and do we believe it)? */
static bool
answer_ad(const struct resolver *r, const unsigned char *abuf, int alen)
{
	return r->dnssec_ad && abuf != NULL && alen >= 12 && (abuf[3] & 0x20) != 0;
}
static void addr_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen);

/* Ask A and AAAA for every host of lk->list. */
static void
lookup_addresses(struct lookup *lk)
{
	struct resolver *r = lk->r;

	/* Hold a reference while issuing: c-ares may call back synchronously
	 * (bad name, no memory), and the lookup must not finish half-issued. */
	lk->pending++;
	for (size_t i = 0; i < lk->list.nhosts; i++) {
		static const int fams[2] = {AF_INET, AF_INET6};
		for (int f = 0; f < 2; f++) {
			struct qref *q = &lk->refs[1 + 2 * i + f];
			q->lk = lk;
			q->host = (uint8_t)i;
			q->family = (uint8_t)fams[f];
			lk->pending++;
			lk->asked++;
			rsv_query(r, lk->list.hosts[i].name,
				  fams[f] == AF_INET ? ns_t_a : ns_t_aaaa, addr_cb, q);
		}
	}
	if (--lk->pending == 0)
		lookup_finish_addresses(lk);
}

static void
lookup_finish_addresses(struct lookup *lk)
{
	for (size_t i = 0; i < lk->list.nhosts; i++) /* before mx_finish moves hosts */
		lk->list.hosts[i].secure = lk->ad[i] == 3;
	lk->status = mx_finish(&lk->list);
	/* resolver_host(): the name itself does not exist. */
	if (lk->status == MX_ENOADDR && lk->kind == LOOKUP_HOST && lk->nx == lk->asked)
		lk->status = MX_ENXDOMAIN;
	if (lk->status == 0) {
		/* IPv4 first within each host: move AF_INET ahead, order kept. */
		for (size_t i = 0; i < lk->list.nhosts; i++) {
			struct mx_host *h = &lk->list.hosts[i];
			struct mx_addr tmp[MX_MAX_ADDRS];
			size_t k = 0;
			for (size_t j = 0; j < h->naddrs; j++)
				if (h->addrs[j].family == AF_INET)
					tmp[k++] = h->addrs[j];
			for (size_t j = 0; j < h->naddrs; j++)
				if (h->addrs[j].family != AF_INET)
					tmp[k++] = h->addrs[j];
			memcpy(h->addrs, tmp, k * sizeof(tmp[0]));
		}
	}
	lookup_done(lk);
}

static void
addr_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct qref *q = arg;
	struct lookup *lk = q->lk;
	struct mx_host *h = &lk->list.hosts[q->host];

	lk->pending--;
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || lk->r->closing) {
		lk->canceled = true;
	} else {
		enum mx_dns res = query_status(status);
		if ((res == MX_DNS_OK || res == MX_DNS_NODATA) && answer_ad(lk->r, abuf, alen))
			lk->ad[q->host] |= q->family == AF_INET ? 1 : 2;
		if (res == MX_DNS_OK) {
			uint32_t ttl = MX_TTL_MAX;
			res = resolver_parse_addr_answer(abuf, alen < 0 ? 0 : (size_t)alen,
							 q->family, h, &ttl);
			if (res == MX_DNS_OK)
				mx_list_note_ttl(&lk->list, ttl);
		}
		if (res == MX_DNS_NXDOMAIN)
			lk->nx++;
		mx_host_note_dns(h, res);
	}
	if (lk->pending == 0)
		lookup_finish_addresses(lk);
}

static void
mx_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct qref *q = arg;
	struct lookup *lk = q->lk;
	struct resolver *r = lk->r;
	struct mx_rr *rrs = NULL;
	size_t n = 0;
	uint32_t ttl = MX_TTL_MAX;

	lk->pending--;
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->closing) {
		lk->canceled = true;
		lookup_done(lk);
		return;
	}
	enum mx_dns res = query_status(status);
	if (res == MX_DNS_OK) {
		rrs = malloc(MX_MAX_RRS * sizeof(*rrs));
		if (rrs == NULL) {
			lk->status = MX_ENOMEM;
			lookup_done(lk);
			return;
		}
		res = resolver_parse_mx_answer(abuf, alen < 0 ? 0 : (size_t)alen, rrs, MX_MAX_RRS,
					       &n, &ttl);
	}
	int cls = mx_classify_mx_query(res, n);
	bool ad = answer_ad(r, abuf, alen);
	if (cls == 1) {
		lk->status = mx_order(rrs, n, &r->rng, &lk->list);
		mx_list_note_ttl(&lk->list, ttl);
		lk->list.secure = ad;
	} else if (cls == 2) {
		lk->status = mx_implicit(lk->name, &lk->list);
		lk->list.secure = ad; /* the NODATA (no MX) answer was secure */
	} else {
		lk->status = cls;
	}
	free(rrs);
	if (lk->status != 0) {
		lookup_done(lk);
		return;
	}
	lookup_addresses(lk);
}

/* --- libuv glue ---------------------------------------------------------- */

static void
timer_cb(uv_timer_t *t)
{
	struct resolver *r = t->data;
	ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	arm_timer(r);
}

static void
arm_timer(struct resolver *r)
{
	struct timeval tv;

	if (!r->ch_alive || r->closing)
		return;
	if (ares_timeout(r->ch, NULL, &tv) == NULL) {
		uv_timer_stop(&r->timer);
		return;
	}
	uint64_t ms = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	uv_timer_start(&r->timer, timer_cb, ms, 0);
}

static void
poll_cb(uv_poll_t *h, int status, int events)
{
	struct rsv_poll *p = h->data;
	struct resolver *r = p->r;
	ares_socket_t fd = p->fd;

	/* On an error let c-ares read and write, so it sees the failure itself. */
	ares_process_fd(r->ch, (status < 0 || (events & UV_READABLE)) ? fd : ARES_SOCKET_BAD,
			(status < 0 || (events & UV_WRITABLE)) ? fd : ARES_SOCKET_BAD);
	arm_timer(r);
}

static void resolver_free_if_closed(struct resolver *r);

static void
poll_close_cb(uv_handle_t *h)
{
	struct rsv_poll *p = h->data;
	struct resolver *r = p->r;
	free(p);
	r->handles_open--;
	resolver_free_if_closed(r);
}

static void
sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
	struct resolver *r = data;
	struct rsv_poll **pp = &r->polls, *p;

	while ((p = *pp) != NULL && p->fd != fd)
		pp = &p->next;
	if (!readable && !writable) {
		if (p == NULL)
			return;
		*pp = p->next;
		uv_poll_stop(&p->handle);
		uv_close((uv_handle_t *)&p->handle, poll_close_cb);
		return;
	}
	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			return; /* c-ares will time the query out */
		if (uv_poll_init_socket(r->loop, &p->handle, fd) != 0) {
			free(p);
			return;
		}
		p->handle.data = p;
		p->r = r;
		p->fd = fd;
		p->next = r->polls;
		r->polls = p;
		r->handles_open++;
	}
	uv_poll_start(&p->handle, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0),
		      poll_cb);
}

/* --- public API ---------------------------------------------------------- */

int
resolver_new(uv_loop_t *loop, const struct resolver_options *opt, struct resolver **out)
{
	struct ares_options ao;
	struct resolver *r;
	int err;

	if (opt->servers == NULL || opt->servers[0] == '\0' ||
	    strlen(opt->servers) > RESOLVER_SERVERS_MAX)
		return -EINVAL;
	r = calloc(1, sizeof(*r));
	if (r == NULL)
		return -ENOMEM;
	r->loop = loop;
	r->now_cb = opt->now_cb;
	r->now_arg = opt->now_arg;
	mx_rng_seed(&r->rng, opt->seed);
	r->dnssec_ad = opt->dnssec_ad;
	r->cache_max = opt->cache_max > RESOLVER_CACHE_MAX ? RESOLVER_CACHE_MAX : opt->cache_max;
	if (r->cache_max > 0) {
		r->cache = calloc(r->cache_max, sizeof(*r->cache));
		if (r->cache == NULL) {
			err = -ENOMEM;
			goto err_after_alloc;
		}
	}
	if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) {
		err = -EIO;
		goto err_after_cache;
	}
	memset(&ao, 0, sizeof(ao));
	ao.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
	ao.timeout = opt->timeout_ms ? (int)opt->timeout_ms : RESOLVER_TIMEOUT_MS_DEFAULT;
	ao.tries = opt->tries ? (int)opt->tries : RESOLVER_TRIES_DEFAULT;
	ao.sock_state_cb = sock_state_cb;
	ao.sock_state_cb_data = r;
	ao.resolvconf_path = (char *)"/dev/null"; /* never the system resolver */
	ao.ndomains = 0;
	ao.domains = NULL;
	int st =
	    ares_init_options(&r->ch, &ao,
			      ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
				  ARES_OPT_SOCK_STATE_CB | ARES_OPT_RESOLVCONF | ARES_OPT_DOMAINS);
	if (st != ARES_SUCCESS) {
		err = st == ARES_ENOMEM ? -ENOMEM : -EIO;
		goto err_after_libinit;
	}
	st = ares_set_servers_ports_csv(r->ch, opt->servers);
	if (st != ARES_SUCCESS) {
		err = st == ARES_ENOMEM ? -ENOMEM : -EINVAL;
		goto err_after_channel;
	}
	r->ch_alive = true;
	uv_timer_init(loop, &r->timer);
	r->timer.data = r;
	uv_idle_init(loop, &r->idle);
	r->idle.data = r;
	r->handles_open = 2;
	*out = r;
	return 0;

err_after_channel:
	ares_destroy(r->ch);
err_after_libinit:
	ares_library_cleanup();
err_after_cache:
	free(r->cache);
err_after_alloc:
	free(r);
	return err;
}

static void
resolver_free_if_closed(struct resolver *r)
{
	if (r->handles_open > 0)
		return;
	/* Last handle closed: run the callbacks still owed, then free. */
	struct lookup *lk = r->done_head;
	r->done_head = r->done_tail = NULL;
	while (lk != NULL) {
		struct lookup *next = lk->next;
		lookup_call(lk);
		lk = next;
	}
	free(r->cache);
	free(r);
	ares_library_cleanup();
}

static void
handle_close_cb(uv_handle_t *h)
{
	struct resolver *r = h->data;
	r->handles_open--;
	resolver_free_if_closed(r);
}

void
resolver_close(struct resolver *r)
{
	if (r->closing)
		return;
	r->closing = true;
	uv_idle_stop(&r->idle);
	uv_timer_stop(&r->timer);
	/* Fails every query (ARES_EDESTRUCTION) and closes its sockets through
	 * sock_state_cb, which closes the polls. */
	r->ch_alive = false;
	ares_destroy(r->ch);
	/* Polls c-ares did not report closed (should be none). */
	while (r->polls != NULL) {
		struct rsv_poll *p = r->polls;
		r->polls = p->next;
		uv_poll_stop(&p->handle);
		uv_close((uv_handle_t *)&p->handle, poll_close_cb);
	}
	uv_close((uv_handle_t *)&r->timer, handle_close_cb);
	uv_close((uv_handle_t *)&r->idle, handle_close_cb);
}

size_t
resolver_pending(const struct resolver *r)
{
	size_t n = r->inflight;
	for (const struct lookup *lk = r->done_head; lk != NULL; lk = lk->next)
		n++;
	return n;
}

static int
lookup_start(struct resolver *r, enum lookup_kind kind, const char *name, resolver_cb cb, void *arg)
{
	struct lookup *lk;
	char norm[MX_NAME_MAX + 2];
	uint8_t lit[16];
	int lit_family = 0;

	if (r->closing)
		return -ECANCELED;
	if (cb == NULL || name == NULL || mx_name_normalize(name, norm) != 0 || norm[0] == '\0')
		return -EINVAL;
	if (kind == LOOKUP_HOST) {
		/* "[addr]" or a bare literal: no DNS at all. */
		char tmp[MX_NAME_MAX + 2];
		size_t l = strlen(norm);
		const char *s = norm;
		if (l > 2 && norm[0] == '[' && norm[l - 1] == ']') {
			memcpy(tmp, norm + 1, l - 2);
			tmp[l - 2] = '\0';
			s = tmp;
			if (strncmp(s, "ipv6:", 5) == 0)
				s += 5; /* RFC 5321 4.1.3 address literal */
		}
		if (inet_pton(AF_INET, s, lit) == 1)
			lit_family = AF_INET;
		else if (inet_pton(AF_INET6, s, lit) == 1)
			lit_family = AF_INET6;
	}
	lk = calloc(1, sizeof(*lk));
	if (lk == NULL)
		return -ENOMEM;
	lk->r = r;
	lk->kind = kind;
	lk->cb = cb;
	lk->arg = arg;
	strcpy(lk->name, norm);
	mx_list_init(&lk->list);
	r->inflight++;

	if (lit_family) {
		mx_implicit(norm, &lk->list);
		lk->list.hosts[0].implicit = false;
		mx_host_add_addr(&lk->list.hosts[0], lit_family, lit);
		lk->from_cache = true; /* nothing to cache */
		lk->list.ttl = 0;
		lookup_done(lk);
		return 0;
	}
	struct cache_entry *e = cache_find(r, kind, norm);
	if (e != NULL) {
		lk->list = e->list;
		mx_list_reshuffle(&lk->list, &r->rng);
		lk->status = 0;
		lk->from_cache = true;
		lk->list.ttl = (uint32_t)(e->expires - rsv_now(r)); /* what is left */
		lookup_done(lk);
		return 0;
	}
	if (kind == LOOKUP_MX) {
		lk->refs[0].lk = lk;
		lk->pending = 1;
		rsv_query(r, norm, ns_t_mx, mx_cb, &lk->refs[0]);
	} else {
		mx_implicit(norm, &lk->list);
		lk->list.hosts[0].implicit = false;
		lk->list.secure = true; /* the caller's name, not one DNS gave */
		lookup_addresses(lk);
	}
	arm_timer(r);
	return 0;
}

int
resolver_mx(struct resolver *r, const char *domain, resolver_cb cb, void *arg)
{
	return lookup_start(r, LOOKUP_MX, domain, cb, arg);
}

int
resolver_host(struct resolver *r, const char *host, resolver_cb cb, void *arg)
{
	return lookup_start(r, LOOKUP_HOST, host, cb, arg);
}

static void
raw_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct lookup *lk = arg;
	struct resolver *r = lk->r;

	(void)timeouts;
	lk->pending--;
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->closing) {
		lk->canceled = true;
		lookup_done(lk);
		return;
	}
	lk->raw_res = query_status(status);
	if (abuf != NULL && alen > 0) {
		lk->raw_ad = answer_ad(r, abuf, alen);
		lk->raw_abuf = malloc((size_t)alen);
		if (lk->raw_abuf == NULL) {
			lk->status = MX_ENOMEM;
			lookup_done(lk);
			return;
		}
		memcpy(lk->raw_abuf, abuf, (size_t)alen);
		lk->raw_alen = (size_t)alen;
	}
	lookup_done(lk);
}

int
resolver_raw(struct resolver *r, const char *name, uint16_t qtype, resolver_raw_cb cb, void *arg)
{
	char norm[MX_NAME_MAX + 2];

	if (r->closing)
		return -ECANCELED;
	if (cb == NULL || name == NULL || mx_name_normalize(name, norm) != 0 || norm[0] == '\0')
		return -EINVAL;
	struct lookup *lk = calloc(1, sizeof(*lk));
	if (lk == NULL)
		return -ENOMEM;
	lk->r = r;
	lk->kind = LOOKUP_RAW;
	lk->raw_cb = cb;
	lk->arg = arg;
	lk->qtype = qtype;
	strcpy(lk->name, norm);
	r->inflight++;
	lk->pending = 1;
	rsv_query(r, norm, qtype, raw_cb, lk);
	arm_timer(r);
	return 0;
}
