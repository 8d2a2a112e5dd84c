/*
 * delivery_dest.c - destinations (routes) of the engine (delivery_int.h): the route of a
 * recipient (transport, relayhost, MX), MX resolution and its cache, the job queue of a
 * route, the per-destination rate limit (max_messages_per_minute_per_destination: a token
 * bucket), and the connection slots (max_deliveries, max_connections_per_destination).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ifaddrs.h>
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

/* ------------------------------------------------------------ destinations */

/* An address literal domain ("[192.0.2.1]", "[IPv6:2001:db8::1]", RFC 5321 4.1.3) as the IP
 * text in ip (no MX: that host, port 25).  false when dom is not one. */
static bool
dest_literal(const char *dom, char *ip, size_t cap)
{
	size_t n = strlen(dom);
	unsigned char buf[16];
	if (n < 3 || dom[0] != '[' || dom[n - 1] != ']')
		return false;
	const char *p = dom + 1;
	size_t len = n - 2;
	int family = AF_INET;
	if (len > 5 && strncasecmp(p, "IPv6:", 5) == 0) {
		p += 5;
		len -= 5;
		family = AF_INET6;
	}
	if (len >= cap)
		return false;
	memcpy(ip, p, len);
	ip[len] = '\0';
	return inet_pton(family, ip, buf) == 1;
}

struct ddest *
dlv__dest_get(struct delivery *d, const char *rcpt_addr)
{
	char key[300], domain[MX_NAME_MAX + 2], literal[INET6_ADDRSTRLEN + 1];
	struct config_route route = {.port = 25};
	const char *dom = dlv__rcpt_domain(rcpt_addr);
	bool is_literal = dest_literal(dom, literal, sizeof(literal));
	if (is_literal)
		snprintf(domain, sizeof(domain), "%s", dom);
	else if (mx_name_normalize(dom, domain) != 0 || domain[0] == '\0')
		snprintf(domain, sizeof(domain), "%s", "");
	enum tls_policy_level level = dlv__tls_level(d, domain);
	char lvl[32] = "";
	if (level != TLSP_MAY)
		snprintf(lvl, sizeof(lvl), "/%s", tls_policy_level_name(level));
	const char *target = NULL;
	bool transport = false;
	for (size_t i = 0; domain[0] && i < d->cfg->transport.n; i++) {
		const char *e = d->cfg->transport.v[i], *eq = strchr(e, '=');
		if (eq && (size_t)(eq - e) == strlen(domain) &&
		    strncasecmp(e, domain, (size_t)(eq - e)) == 0) {
			target = eq + 1;
			transport = true;
			break;
		}
	}
	if (target == NULL && d->cfg->relayhost[0] != '\0')
		target = d->cfg->relayhost;
	if (target == NULL && is_literal) {
		/* the mailbox names its host: no MX, port 25 (the grammar accepted it, so we send
		 * it; a literal of our own endpoints is a loop like any other) */
		snprintf(route.host, sizeof(route.host), "%s", literal);
		route.port = 25;
		route.no_mx = true;
		snprintf(key, sizeof(key), "host:%s:25%s", route.host, lvl);
	} else if (target != NULL) {
		if (config_parse_route(target, &route) != 0)
			return NULL;
		if (transport)
			route.no_mx = true;
		snprintf(key, sizeof(key), "%s%s:%u%s", route.no_mx ? "host:" : "mx:", route.host,
			 route.port, lvl);
	} else {
		snprintf(route.host, sizeof(route.host), "%s", domain);
		route.port = 25;
		route.no_mx = false;
		snprintf(key, sizeof(key), "domain:%s%s", domain, lvl);
	}
	uint64_t h = dlv__hash_str(key) % DLV_HASH_BUCKETS;
	for (struct ddest *x = d->dests[h]; x; x = x->hnext)
		if (strcmp(x->key, key) == 0)
			return x;
	struct ddest *x = calloc(1, sizeof(*x));
	if (x == NULL)
		return NULL;
	x->d = d;
	snprintf(x->key, sizeof(x->key), "%s", key);
	snprintf(x->domain, sizeof(x->domain), "%s", domain);
	snprintf(x->host, sizeof(x->host), "%s", route.host);
	x->port = route.port;
	x->no_mx = route.no_mx;
	x->rcpt_mx = target == NULL && !is_literal;
	x->tls_level = level;
	x->hnext = d->dests[h];
	d->dests[h] = x;
	x->next = d->dest_list;
	if (d->dest_list)
		d->dest_list->prev = x;
	d->dest_list = x;
	return x;
}

void
dlv__dest_maybe_free(struct ddest *x)
{
	struct delivery *d = x->d;
	if (x->nqueued > 0 || x->nconn > 0 || x->state == DEST_RESOLVING || x->nparked > 0 ||
	    x->defer_props > 0)
		return;
	struct ddest **pp = &d->dests[dlv__hash_str(x->key) % DLV_HASH_BUCKETS];
	while (*pp != x)
		pp = &(*pp)->hnext;
	*pp = x->hnext;
	if (x->prev)
		x->prev->next = x->next;
	else
		d->dest_list = x->next;
	if (x->next)
		x->next->prev = x->prev;
	dlv__tls_dest_free(x);
	free(x->mx);
	free(x);
}

struct djob *
dlv__dest_pop(struct ddest *x)
{
	struct djob *j = x->qhead;
	if (j == NULL)
		return NULL;
	x->qhead = j->next;
	if (x->qhead == NULL)
		x->qtail = NULL;
	x->nqueued--;
	j->next = NULL;
	return j;
}

/* The next job of x for a connection, within max_messages_per_minute_per_destination (a token
 * bucket holding a second's worth, at least 1); NULL when there is none or the limit says wait
 * (then the ownership tick pumps x again).  The close and failure paths use dlv__dest_pop. */
struct djob *
dlv__dest_take(struct ddest *x)
{
	struct delivery *d = x->d;
	uint64_t per_min = d->cfg->max_messages_per_minute_per_destination;
	if (x->nqueued == 0)
		return NULL;
	if (per_min > 0) {
		double burst = per_min / 60.0 < 1.0 ? 1.0 : per_min / 60.0;
		uint64_t now = clock_mono_ms();
		if (x->tokens_ms == 0)
			x->tokens = burst;
		else if (now > x->tokens_ms)
			x->tokens += (double)(now - x->tokens_ms) * per_min / 60000.0;
		if (x->tokens > burst)
			x->tokens = burst;
		x->tokens_ms = now;
		if (x->tokens < 1.0) {
			d->rate_waiters = true;
			d->st.rate_waits++;
			return NULL;
		}
		x->tokens -= 1.0;
	}
	return dlv__dest_pop(x);
}

void
dlv__dest_push(struct ddest *x, struct djob *j)
{
	j->next = NULL;
	if (x->qtail)
		x->qtail->next = j;
	else
		x->qhead = j;
	x->qtail = j;
	x->nqueued++;
}

/* Every queued job of x ends with the same result. */
void
dlv__dest_fail_queued(struct ddest *x, bool permanent, const struct mta_diag *dg, const char *relay)
{
	struct djob *j;
	while ((j = dlv__dest_pop(x)) != NULL)
		dlv__job_finish_all(j, permanent, dg, relay);
}

/* The node's own SMTP endpoints (mx.h "loop detection"): its listeners (a wildcard one: every
 * local interface address and all of loopback, on its port) and own_addresses. */
static void
dest_self(struct delivery *d, struct mx_self *self)
{
	static const uint8_t lo4[4] = {127, 0, 0, 0}, lo6[16] = {[15] = 1};
	struct ifaddrs *ifa = NULL;
	bool have_ifa = false;
	self->n = 0;
	for (size_t i = 0; i < d->cfg->smtp_listen.n + d->cfg->own_addresses.n; i++) {
		const struct config_addr *a = i < d->cfg->smtp_listen.n
						  ? &d->cfg->smtp_listen.v[i]
						  : &d->cfg->own_addresses.v[i - d->cfg->smtp_listen.n];
		const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
		unsigned port = ntohs(sa->sa_family == AF_INET ? s4->sin_port : s6->sin6_port);
		bool any4 = sa->sa_family == AF_INET && s4->sin_addr.s_addr == htonl(INADDR_ANY);
		bool any6 = sa->sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr);
		if ((!any4 && !any6) || i >= d->cfg->smtp_listen.n) {
			if (sa->sa_family == AF_INET)
				mx_self_add(self, AF_INET, &s4->sin_addr, 32, port);
			else
				mx_self_add(self, AF_INET6, &s6->sin6_addr, 128, port);
			continue;
		}
		/* a wildcard listener (libuv binds :: dual-stack: IPv4 too) */
		mx_self_add(self, AF_INET, lo4, 8, port);
		if (any6)
			mx_self_add(self, AF_INET6, lo6, 128, port);
		if (!have_ifa)
			have_ifa = getifaddrs(&ifa) == 0;
		for (struct ifaddrs *f = have_ifa ? ifa : NULL; f != NULL; f = f->ifa_next) {
			if (f->ifa_addr == NULL)
				continue;
			if (f->ifa_addr->sa_family == AF_INET)
				mx_self_add(self, AF_INET,
					    &((const struct sockaddr_in *)f->ifa_addr)->sin_addr, 32, port);
			else if (f->ifa_addr->sa_family == AF_INET6 && any6)
				mx_self_add(self, AF_INET6,
					    &((const struct sockaddr_in6 *)f->ifa_addr)->sin6_addr, 128,
					    port);
		}
	}
	if (have_ifa)
		freeifaddrs(ifa);
}

/* Every host of x is this node: the recipients bounce (5.4.6, as Postfix says it). */
static void
dest_loop(struct ddest *x, size_t dropped)
{
	struct delivery *d = x->d;
	struct mta_diag dg = {.code = 554, .local = true};
	const char *what = x->domain[0] ? x->domain : x->host;
	snprintf(dg.enh, sizeof(dg.enh), "5.4.6");
	snprintf(dg.text, sizeof(dg.text), "554 5.4.6 mail for %s loops back to myself", what);
	d->st.loops++;
	log_warn("-", "event=loop dest=%s hosts_dropped=%zu port=%u", x->key, dropped, x->port);
	if (!d->closing)
		dlv__dest_fail_queued(x, true, &dg, "");
}

static void
resolve_cb(void *arg, int status, const struct mx_list *list)
{
	struct ddest *x = arg;
	struct delivery *d = x->d;
	x->state = DEST_NEW;
	if (status != 0 && status != MX_ECANCELED) {
		if (mx_is_permanent(status))
			d->st.dns_permanent++;
		else
			d->st.dns_failures++;
	}
	if (status == 0 && list != NULL && list->nhosts > 0) {
		if (x->mx == NULL)
			x->mx = malloc(sizeof(*x->mx));
		if (x->mx != NULL) {
			*x->mx = *list;
			dest_self(d, &d->self);
			size_t dropped = mx_drop_self(x->mx, x->port, &d->self);
			if (dropped > 0 && x->mx->nhosts == 0) {
				dest_loop(x, dropped);
				dlv__dest_maybe_free(x);
				dlv__maybe_done(d);
				return;
			}
			x->state = DEST_READY;
			uint32_t ttl = list->ttl < 5 ? 5 : list->ttl;
			x->mx_expires_ms = clock_mono_ms() + (uint64_t)ttl * 1000;
			if (log_enabled(LOG_DEBUG)) {
				char buf[1024];
				mx_list_format(list, buf, sizeof(buf));
				log_debug("-", "event=resolved dest=%s hosts=\"%s\"", x->key, buf);
			}
		} else {
			status = MX_ENOMEM;
		}
	}
	if (status != 0 || x->state != DEST_READY) {
		struct mta_diag dg = {0};
		bool perm = mx_is_permanent(status);
		dg.code = perm ? 550 : 451;
		dg.local = true;
		snprintf(dg.enh, sizeof(dg.enh), "%s", mx_status_code(status));
		snprintf(dg.text, sizeof(dg.text), "%d %s %s: %s", dg.code, dg.enh, x->host,
			 mx_strerror(status));
		if (status == MX_ENULLMX)
			snprintf(dg.text, sizeof(dg.text), "556 5.1.10 %s: %s", x->host,
				 mx_strerror(status));
		log_info("-", "event=dns-failed dest=%s error=\"%s\" permanent=%s", x->key,
			 mx_strerror(status), perm ? "yes" : "no");
		if (!d->closing && perm)
			dlv__dest_fail_queued(x, perm, &dg, "");
		else if (!d->closing)
			dlv__dest_dead(x, &dg, "", NULL);
		dlv__dest_maybe_free(x);
		dlv__maybe_done(d);
		return;
	}
	if (dlv__tls_dest_prepare(x)) {
		x->state = DEST_RESOLVING; /* delivery_tls.c makes it READY once its facts are in */
		return;
	}
	dlv__dest_pump(x);
	dlv__dest_maybe_free(x);
}

/* Starts what the destination may start: a lookup, or connections for its queued jobs.  Never
 * frees x (the caller calls dlv__dest_maybe_free). */
void
dlv__dest_pump(struct ddest *x)
{
	struct delivery *d = x->d;
	if (d->closing || x->nqueued == 0)
		return;
	if (x->dead_until > clock_wall_ms() || x->defer_props > 0) {
		/* dead: its jobs wait for the deferral of their domains, no attempt */
		dlv__dest_dead(x, &x->dead_diag, x->dead_relay, NULL);
		return;
	}
	if (x->state == DEST_RESOLVING)
		return;
	if (x->state == DEST_READY && clock_mono_ms() >= x->mx_expires_ms && x->nconn == 0)
		x->state = DEST_NEW;
	if (x->state == DEST_NEW) {
		struct mta_diag dg = {.code = 451, .local = true};
		if (d->resolver == NULL) {
			snprintf(dg.enh, sizeof(dg.enh), "4.4.3");
			snprintf(dg.text, sizeof(dg.text), "451 4.4.3 no DNS server configured");
			dlv__dest_dead(x, &dg, "", NULL);
			return;
		}
		if (x->host[0] == '\0') {
			dg.code = 550;
			snprintf(dg.enh, sizeof(dg.enh), "5.1.2");
			snprintf(dg.text, sizeof(dg.text), "550 5.1.2 bad destination domain");
			dlv__dest_fail_queued(x, true, &dg, "");
			return;
		}
		x->state = DEST_RESOLVING;
		d->st.dns_lookups++;
		int rc = x->no_mx ? resolver_host(d->resolver, x->host, resolve_cb, x)
				  : resolver_mx(d->resolver, x->host, resolve_cb, x);
		if (rc != 0) {
			x->state = DEST_NEW;
			bool perm = rc == -EINVAL;
			dg.code = perm ? 550 : 451;
			snprintf(dg.enh, sizeof(dg.enh), perm ? "5.1.2" : "4.4.3");
			snprintf(dg.text, sizeof(dg.text), "%d %s %s: lookup failed (%s)", dg.code,
				 dg.enh, x->host, strerror(-rc));
			if (perm)
				dlv__dest_fail_queued(x, perm, &dg, "");
			else
				dlv__dest_dead(x, &dg, "", NULL);
		}
		return;
	}
	while (x->nqueued > 0 && dlv__conn_reuse(x))
		;
	if (x->nqueued > 0 && (uint64_t)d->nconn >= d->cfg->max_deliveries &&
	    (uint64_t)x->nconn < d->cfg->max_connections_per_destination) {
		/* every slot is taken: close the oldest idle connection of another route */
		for (struct dconn *ic = d->idle_head; ic != NULL; ic = ic->gnext)
			if (ic->dest != x) {
				dlv__conn_idle_leave(ic);
				mta_session_quit(&ic->sess);
				dlv__conn_process(ic);
				break;
			}
	}
	while (x->nqueued > 0 && (uint64_t)x->nconn < d->cfg->max_connections_per_destination &&
	       (uint64_t)d->nconn < d->cfg->max_deliveries) {
		struct djob *j = dlv__dest_take(x);
		if (j == NULL)
			break; /* the rate limit: the ownership tick pumps again */
		if (dlv__conn_new(x, j) == NULL) {
			struct mta_diag dg = {.code = 451, .local = true};
			snprintf(dg.enh, sizeof(dg.enh), "4.3.0");
			snprintf(dg.text, sizeof(dg.text), "451 4.3.0 out of memory");
			dlv__job_finish_all(j, false, &dg, "");
			break;
		}
	}
	if (x->nqueued > 0 && (uint64_t)d->nconn >= d->cfg->max_deliveries)
		d->slot_waiters = true; /* a closing connection calls dlv__dests_pump_all */
}

/* A connection slot freed: let waiting destinations use it. */
void
dlv__dests_pump_all(struct delivery *d)
{
	if (!d->slot_waiters)
		return;
	d->slot_waiters = false;
	struct ddest *x, *next;
	for (x = d->dest_list; x && (uint64_t)d->nconn < d->cfg->max_deliveries; x = next) {
		next = x->next;
		if (x->nqueued > 0 && x->state == DEST_READY) {
			dlv__dest_pump(x);
			dlv__dest_maybe_free(x);
		}
	}
	if (x != NULL)
		d->slot_waiters = true; /* the slots ran out before the list did */
}

/* ------------------------------------------------------------ dead destinations */

/*
 * A route that failed as a whole - no DNS answer (a temporary error), no host reached on any
 * address - would fail every job it holds alike.  Instead of an Outcome per message, its jobs
 * are parked and the owner proposes one DeferDomain per domain they belong to (at the epoch
 * each job started with): no attempt for any queued recipient of the domain before now +
 * backoff (retry_backoff of the domain's deferrals since its last delivery, with jitter).  Once
 * every proposal of the round committed, the parked jobs end without an outcome: their
 * recipients stay queued and the state machine keeps them out of the due lists until then
 * (those whose queue_lifetime is over bounce now).  When a proposal failed, the parked jobs are
 * deferred one by one, as before.  Jobs that reach the destination meanwhile (until dead_until)
 * are parked as well, and join a new round when none is in flight (their domain's deferral
 * covers them, or they are of another domain of the route).  Postfix marks a destination dead
 * the same way (qmgr: "delivery temporarily suspended").
 */

static void
dest_park(struct ddest *x, struct djob *j)
{
	j->next = NULL;
	if (x->ptail)
		x->ptail->next = j;
	else
		x->phead = j;
	x->ptail = j;
	x->nparked++;
}

static struct djob *
dest_unpark(struct ddest *x)
{
	struct djob *j = x->phead;
	if (j == NULL)
		return NULL;
	x->phead = j->next;
	if (x->phead == NULL)
		x->ptail = NULL;
	x->nparked--;
	j->next = NULL;
	return j;
}

/* The round is over: the parked jobs end, without an outcome (suspended) or deferred. */
static void
dest_release(struct ddest *x)
{
	bool failed = x->defer_failed;
	struct mta_diag dg = x->dead_diag;
	char relay[DLV_RELAY_MAX];
	snprintf(relay, sizeof(relay), "%s", x->dead_relay);
	x->defer_failed = false;
	if (failed)
		x->dead_until = 0; /* no deferral took: the next jobs try again */
	struct djob *j;
	while ((j = dest_unpark(x)) != NULL) {
		if (failed) {
			dlv__job_finish_all(j, false, &dg, relay);
		} else {
			x->d->st.jobs_suspended++;
			dlv__job_suspend(j, &dg, relay);
		}
	}
}

static void
defer_cb(void *arg, int status)
{
	struct defer_prop *p = arg;
	struct delivery *d = p->d;
	struct ddest *x = p->x;
	if (d == NULL) {
		free(p);
		return;
	}
	if (p->prev)
		p->prev->next = p->next;
	else
		d->defer_props = p->next;
	if (p->next)
		p->next->prev = p->prev;
	free(p);
	if (status != 0) {
		x->defer_failed = true;
		log_warn("-", "event=defer-domain-failed dest=%s error=\"%s\"", x->key,
			 cluster_strerror(status));
	}
	if (--x->defer_props > 0)
		return;
	dest_release(x);
	dlv__dest_maybe_free(x);
	dlv__maybe_done(d);
}

/* One domain of the round: its name and the epoch its jobs started with. */
struct defer_dom {
	char name[QUEUE_DOMAIN_MAX + 1];
	uint64_t epoch;
};

/* Proposes DeferDomain for the domains of the parked jobs; returns how many are in flight. */
static unsigned
dest_defer_round(struct ddest *x)
{
	struct delivery *d = x->d;
	static struct defer_dom doms[DLV_DEFER_DOMAINS_MAX];
	size_t n = 0;
	for (struct djob *j = x->phead; j != NULL; j = j->next)
		for (size_t k = 0; k < j->n; k++) {
			const Relay__QueueRcpt *qr = j->msg->rec->rcpts[j->idx[k]];
			char dom[QUEUE_DOMAIN_MAX + 1];
			uint64_t ep = j->msg->res[j->idx[k]].epoch;
			queue_addr_domain(qr->rcpt->addr, dom);
			size_t i = 0;
			while (i < n && (doms[i].epoch != ep || strcmp(doms[i].name, dom) != 0))
				i++;
			if (i == n && n < DLV_DEFER_DOMAINS_MAX) {
				snprintf(doms[n].name, sizeof(doms[n].name), "%s", dom);
				doms[n++].epoch = ep;
			}
		}
	uint64_t now = clock_wall_ms();
	for (size_t i = 0; i < n; i++) {
		struct queue_domain_info info;
		uint32_t count = 0;
		if (queue_fsm_domain_info(d->q, doms[i].name, &info) == 0)
			count = info.defer_count;
		uint64_t until = now + retry_backoff(&d->retry, count + 1, mx_rng_next(&d->rng));
		Relay__DeferDomain dd = RELAY__DEFER_DOMAIN__INIT;
		dd.domain = doms[i].name;
		dd.epoch = doms[i].epoch;
		dd.until_ms = until;
		dd.at_ms = now;
		dd.reply = x->dead_diag.text;
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_DEFER_DOMAIN;
		cmd.defer_domain = &dd;
		struct defer_prop *p = calloc(1, sizeof(*p));
		if (p == NULL)
			break;
		p->d = d;
		p->x = x;
		if (cluster_propose(d->cluster, &cmd, defer_cb, p) != 0) {
			free(p);
			break;
		}
		p->next = d->defer_props;
		if (p->next)
			p->next->prev = p;
		d->defer_props = p;
		x->defer_props++;
		d->st.domains_deferred++;
		if (until > x->dead_until)
			x->dead_until = until;
		log_info("-",
			 "event=domain-deferred domain=%s dest=%s epoch=%" PRIu64 " for_ms=%" PRIu64
			 " deferrals=%" PRIu32 " parked=%zu error=\"%s\"",
			 doms[i].name, x->key, doms[i].epoch, until - now, count + 1, x->nparked,
			 x->dead_diag.text);
	}
	if (x->defer_props < n)
		x->defer_failed = true; /* could not propose them all */
	return x->defer_props;
}

/* The destination failed as a whole for now (dg: why; relay: the last host tried, or ""):
 * cur (if not NULL) and its queued jobs are parked, and a round of DeferDomain starts unless
 * one is in flight (they join it). */
void
dlv__dest_dead(struct ddest *x, const struct mta_diag *dg, const char *relay, struct djob *cur)
{
	struct delivery *d = x->d;
	if (d->closing) {
		if (cur != NULL)
			dlv__job_drop(cur); /* stays queued, like the jobs delivery_close ends */
		return;
	}
	if (dg != &x->dead_diag) {
		if (x->dead_until <= clock_wall_ms() && x->defer_props == 0)
			d->st.dests_dead++;
		x->dead_diag = *dg;
		snprintf(x->dead_relay, sizeof(x->dead_relay), "%s", relay ? relay : "");
	}
	if (cur != NULL)
		dest_park(x, cur);
	struct djob *j;
	while ((j = dlv__dest_pop(x)) != NULL)
		dest_park(x, j);
	if (x->defer_props > 0 || x->nparked == 0)
		return; /* they join the round in flight */
	if (dest_defer_round(x) == 0)
		dest_release(x); /* nothing proposed: deferred one by one */
}

/* delivery_close: parked jobs end without an outcome (their recipients stay queued); the
 * DeferDomain proposals in flight are detached (their callbacks only free them). */
void
dlv__dests_close(struct delivery *d)
{
	for (struct defer_prop *p = d->defer_props, *next; p; p = next) {
		next = p->next;
		p->x->defer_props = 0;
		p->d = NULL;
		p->x = NULL;
		p->next = p->prev = NULL;
	}
	d->defer_props = NULL;
	for (struct ddest *x = d->dest_list; x; x = x->next) {
		struct djob *j;
		while ((j = dest_unpark(x)) != NULL) {
			struct dmsg *m = j->msg;
			dlv__job_free(j);
			dlv__msg_job_done(m);
		}
	}
}
