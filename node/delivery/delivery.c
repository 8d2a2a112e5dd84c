/*
 * delivery.c - the delivery engine (see delivery.h): scheduler, destinations, connections
 * (libuv + client TLS glue around the pure mta_session machine), outcomes and DSNs.
 *
 * Objects and who owns them:
 *   struct delivery   the engine; owns every dmsg (hash by queue id), ddest (hash by route key)
 *                     and dconn (list).
 *   struct dmsg       a message in flight: its record and body (owned), per-recipient results,
 *                     the count of jobs and proposals not finished.  Freed when both are 0.
 *   struct djob       (message, route): recipient indexes; queued on its destination, then held
 *                     by one connection at a time.  Freed by job_done.
 *   struct ddest      a route: the resolved host list, the job queue, its connections.  Freed when
 *                     it has no job, no connection and no lookup in flight.
 *   struct dconn      one outgoing connection (across failover: one socket per attempt, struct
 *                     dsock, freed in its close callback).  Freed when its timer and socket are
 *                     closed (refs).
 *
 * Failure handling: a connection that reaches no host for its job defers the job and, when no
 * host of the destination answered at all, every job waiting on the destination with the same
 * reason (a dead destination costs one round of connects, not one per message).  A proposal the
 * cluster refuses is proposed again after a backoff (the recipients would be delivered twice
 * otherwise).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "delivery.h"
#include "delivery_int.h"

/* ------------------------------------------------------------ helpers */

uint64_t
dlv__hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211ull;
	return h;
}

void
dlv__rfc5322_date(char *buf, size_t cap, uint64_t ms)
{
	struct tm tm;
	time_t t = (time_t)(ms / 1000);
	gmtime_r(&t, &tm);
	strftime(buf, cap, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

/* RFC 3461 4: decodes xtext ("+XX") into out; returns out or NULL when invalid. */
const char *
dlv__xtext_decode(const char *s, char *out, size_t cap)
{
	size_t o = 0;
	if (s == NULL)
		return NULL;
	for (size_t i = 0; s[i]; i++) {
		unsigned char c = (unsigned char)s[i];
		if (o + 1 >= cap)
			return NULL;
		if (c == '+') {
			unsigned v;
			if (!isxdigit((unsigned char)s[i + 1]) ||
			    !isxdigit((unsigned char)s[i + 2]))
				return NULL;
			if (sscanf(s + i + 1, "%2x", &v) != 1)
				return NULL;
			c = (unsigned char)v;
			i += 2;
		}
		if (c < 0x20 || c >= 0x7f)
			return NULL;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return out;
}

/* "type;xtext" -> "type;decoded" */
const char *
dlv__orcpt_decode(const char *s, char *out, size_t cap)
{
	const char *semi = s ? strchr(s, ';') : NULL;
	if (semi == NULL || (size_t)(semi - s) + 2 >= cap)
		return NULL;
	size_t tl = (size_t)(semi - s) + 1;
	memcpy(out, s, tl);
	if (dlv__xtext_decode(semi + 1, out + tl, cap - tl) == NULL)
		return NULL;
	return out;
}

/* The queue keeps NOTIFY as relay.proto says (1 SUCCESS, 2 FAILURE, 4 DELAY, 8 NEVER, the SMTP
 * server's SMTP_NOTIFY_*); dsn.h and mta_session.h number them differently.  0 stays 0. */
unsigned
dlv__notify_from_queue(const Relay__Recipient *r)
{
	unsigned v = r->has_notify ? r->notify : 0, out = 0;
	if (v & 1u)
		out |= DSN_NOTIFY_SUCCESS;
	if (v & 2u)
		out |= DSN_NOTIFY_FAILURE;
	if (v & 4u)
		out |= DSN_NOTIFY_DELAY;
	if (v & 8u)
		out |= DSN_NOTIFY_NEVER;
	return out;
}

const char *
dlv__rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

bool
dlv__list_has(const struct config_list *l, const char *domain)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcasecmp(l->v[i], domain) == 0)
			return true;
	return false;
}

char *
dlv__xstrdup(const char *s)
{
	return strdup(s ? s : "");
}

/* A copy of at most max bytes of s (NULL = ""); NULL on ENOMEM. */
char *
dlv__dup_max(const char *s, size_t max)
{
	if (s == NULL)
		s = "";
	size_t n = 0;
	while (n < max && s[n] != '\0')
		n++;
	char *d = malloc(n + 1);
	if (d != NULL) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

/* ------------------------------------------------------------ messages */

struct dmsg *
dlv__msg_find(struct delivery *d, const char *qid)
{
	for (struct dmsg *m = d->msgs[dlv__hash_str(qid) % DLV_HASH_BUCKETS]; m; m = m->hnext)
		if (strcmp(m->qid, qid) == 0)
			return m;
	return NULL;
}

void
dlv__msg_free(struct dmsg *m)
{
	struct delivery *d = m->d;
	struct dmsg **pp = &d->msgs[dlv__hash_str(m->qid) % DLV_HASH_BUCKETS];
	while (*pp != m)
		pp = &(*pp)->hnext;
	*pp = m->hnext;
	d->nmsgs--;
	d->inflight_bytes -= m->body_len;
	/* back in the due lists (gone already when its outcomes finished it) */
	(void)queue_fsm_set_busy(d->q, m->qid, 0);
	if (m->res != NULL)
		for (size_t i = 0; i < m->rec->n_rcpts; i++) {
			free(m->res[i].reply);
			free(m->res[i].relay);
		}
	free(m->res);
	free(m->body);
	if (m->rec)
		relay__queue_record__free_unpacked(m->rec, NULL);
	free(m);
}

/* ------------------------------------------------------------ lifetime */

static int
servers_string(const struct relay_config *cfg, char *out, size_t cap)
{
	size_t o = 0;
	out[0] = '\0';
	if (cfg->dns_servers.n > 0) {
		for (size_t i = 0; i < cfg->dns_servers.n; i++) {
			int n = snprintf(out + o, cap - o, "%s%s", i ? "," : "",
					 cfg->dns_servers.v[i].text);
			if (n < 0 || (size_t)n >= cap - o)
				return -1;
			o += (size_t)n;
		}
		return 0;
	}
	/* Empty dns_servers: the nameservers of /etc/resolv.conf (the resolver never reads it). */
	FILE *f = fopen("/etc/resolv.conf", "r");
	if (f == NULL)
		return 0;
	char line[512];
	while (fgets(line, sizeof(line), f) != NULL) {
		char addr[128];
		if (sscanf(line, " nameserver %127s", addr) != 1)
			continue;
		struct in6_addr a6;
		int n = inet_pton(AF_INET6, addr, &a6) == 1
			    ? snprintf(out + o, cap - o, "%s[%s]:53", o ? "," : "", addr)
			    : snprintf(out + o, cap - o, "%s%s:53", o ? "," : "", addr);
		if (n < 0 || (size_t)n >= cap - o)
			break;
		o += (size_t)n;
	}
	fclose(f);
	return 0;
}

int
delivery_start(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
	       struct delivery **out, char *err, size_t errlen)
{
	struct delivery *d = calloc(1, sizeof(*d));
	if (d == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return -1;
	}
	d->loop = loop;
	d->cfg = cfg;
	d->cluster = cluster;
	d->q = cluster_queue(cluster);
	d->retry.base = cfg->retry_base_ms;
	d->retry.max = cfg->retry_max_ms;
	d->retry.lifetime = cfg->queue_lifetime_ms;
	d->retry.jitter_pct = DLV_RETRY_JITTER_PCT; /* a backlog deferred at once comes back spread */
	if (retry_policy_check(&d->retry) != 0) {
		snprintf(err, errlen, "delivery: bad retry_base/retry_max/queue_lifetime");
		goto err_after_alloc;
	}
	struct timeval tv;
	gettimeofday(&tv, NULL);
	uint64_t seed =
	    ((uint64_t)tv.tv_sec << 20) ^ (uint64_t)tv.tv_usec ^ ((uint64_t)getpid() << 40);
	mx_rng_seed(&d->rng, seed);
	queue_id_gen_init(&d->qid, cfg->node_id, "dsn");
	if (dlv__tls_start(d, err, errlen) != 0)
		goto err_after_alloc;
	char servers[RESOLVER_SERVERS_MAX];
	if (servers_string(cfg, servers, sizeof(servers)) != 0) {
		snprintf(err, errlen, "dns_servers: list too long");
		goto err_after_tls;
	}
	if (servers[0] != '\0') {
		struct resolver_options ro = {
		    .servers = servers,
		    .cache_max = RESOLVER_CACHE_DEFAULT,
		    .seed = seed ^ 0x9e3779b97f4a7c15ull,
		    .dnssec_ad = cfg->dns_dnssec_trusted,
		};
		int rc = resolver_new(loop, &ro, &d->resolver);
		if (rc != 0) {
			snprintf(err, errlen, "dns_servers: cannot start the resolver on %s: %s",
				 servers, strerror(-rc));
			goto err_after_tls;
		}
	} else {
		log_warn("-", "event=no-dns-servers note=\"MX routes will be deferred\"");
	}
	uv_timer_init(loop, &d->sched_timer);
	d->sched_timer.data = d;
	uv_timer_init(loop, &d->retry_timer);
	d->retry_timer.data = d;
	uv_check_init(loop, &d->check);
	d->check.data = d;
	uv_check_start(&d->check, dlv__check_cb);
	uv_unref((uv_handle_t *)&d->check);
	struct own_config oc = {.self = cfg->node_id,
				.lease_ms = cfg->lease_ms,
				.drain_timeout_ms = cfg->drain_timeout_ms};
	own_init(&d->own, &oc);
	d->self_state = -1;
	uv_timer_init(loop, &d->own_timer);
	d->own_timer.data = d;
	uv_timer_start(&d->own_timer, dlv__own_tick_cb, 0, DLV_OWN_TICK_MS);
	d->handles_open = 4;
	dlv__sched_request(d); /* resume what is queued and due */
	log_info("-",
		 "event=delivery-started dns=\"%s\" max_deliveries=%" PRIu64
		 " per_destination=%" PRIu64 " retry_base=%" PRIu64 "ms",
		 servers, cfg->max_deliveries, cfg->max_connections_per_destination,
		 cfg->retry_base_ms);
	*out = d;
	return 0;
err_after_tls:
	dlv__tls_fini(d);
err_after_alloc:
	free(d);
	return -1;
}

static void
handle_closed_cb(uv_handle_t *h)
{
	struct delivery *d = h->data;
	d->handles_open--;
	dlv__maybe_done(d);
}

void
dlv__maybe_done(struct delivery *d)
{
	if (!d->closing || d->done_called)
		return;
	if (d->conns != NULL || d->nmsgs > 0 || d->handles_open > 0 || d->resolver != NULL ||
	    dlv__tls_busy(d))
		return;
	if (d->dest_list != NULL) {
		/* only idle destinations can remain (a lookup in flight holds its own) */
		for (struct ddest *x = d->dest_list, *next; x; x = next) {
			next = x->next;
			dlv__dest_maybe_free(x);
		}
		if (d->dest_list != NULL)
			return;
	}
	void (*done)(void *) = d->done;
	void *arg = d->done_arg;
	d->done_called = true;
	dlv__tls_fini(d);
	log_info("-",
		 "event=delivery-stopped connections=%" PRIu64 " messages_sent=%" PRIu64
		 " delivered=%" PRIu64 " deferred=%" PRIu64 " bounced=%" PRIu64 " dsns=%" PRIu64,
		 d->st.connections, d->st.messages_sent, d->st.rcpts_delivered,
		 d->st.rcpts_deferred, d->st.rcpts_failed, d->st.dsns);
	free(d);
	if (done)
		done(arg);
}

void
delivery_close(struct delivery *d, void (*done)(void *arg), void *arg)
{
	d->closing = true;
	d->done = done;
	d->done_arg = arg;
	uv_timer_stop(&d->sched_timer);
	uv_timer_stop(&d->retry_timer);
	uv_check_stop(&d->check);
	uv_close((uv_handle_t *)&d->sched_timer, handle_closed_cb);
	uv_close((uv_handle_t *)&d->retry_timer, handle_closed_cb);
	uv_close((uv_handle_t *)&d->check, handle_closed_cb);
	uv_timer_stop(&d->own_timer);
	uv_close((uv_handle_t *)&d->own_timer, handle_closed_cb);
	/* Member/Renew proposals in flight: the cluster calls them back later; detach them. */
	for (struct own_prop *p = d->own_props; p; p = p->next)
		p->d = NULL;
	d->own_props = NULL;
	d->n_own_props = 0;
	/* Outcome proposals waiting for a retry are dropped: the recipients stay queued. */
	while (d->retry_list != NULL) {
		struct pending_prop *p = d->retry_list;
		d->retry_list = p->next;
		struct dmsg *m = p->msg;
		free(p->packed);
		free(p);
		if (--m->nprops == 0 && m->njobs == 0)
			dlv__msg_free(m);
	}
	/* Jobs waiting on destinations (parked ones too) end without an outcome. */
	dlv__dests_close(d);
	for (struct ddest *x = d->dest_list; x; x = x->next) {
		struct djob *j;
		while ((j = dlv__dest_pop(x)) != NULL) {
			struct dmsg *m = j->msg;
			dlv__job_free(j);
			dlv__msg_job_done(m);
		}
	}
	for (struct dconn *c = d->conns, *next; c; c = next) {
		next = c->next;
		dlv__conn_close(c);
	}
	if (d->resolver != NULL) {
		struct resolver *r = d->resolver;
		d->resolver = NULL;
		resolver_close(r); /* lookups in flight get MX_ECANCELED from its close callbacks */
	}
	dlv__tls_close(d); /* MTA-STS fetches in flight: canceled the same way */
	dlv__maybe_done(d);
}

void
delivery_get_stats(const struct delivery *d, struct delivery_stats *st)
{
	*st = d->st;
	st->renews = d->own.renews;
	uint64_t now = clock_mono_ms(); /* the lease runs on this clock (clock.h) */
	st->lease_left_ms = d->own.lease_until == 0	? INT64_MIN
			    : d->own.lease_until >= now ? (int64_t)(d->own.lease_until - now)
							: -(int64_t)(now - d->own.lease_until);
	st->self_state = d->self_state;
	st->inflight_msgs = d->nmsgs;
	st->active_conns = (uint64_t)d->nconn;
}
