/*
 * delivery_tls.c - outbound TLS in the delivery engine (delivery_int.h): the level of each
 * destination, the facts its hosts are judged by (DANE: TLSA lookups through the resolver;
 * MTA-STS: discovery, a per-node policy cache, HTTPS fetches), the plan of each connection
 * (tls_policy.h decides) and the check of the peer after the handshake (tls.h).
 *
 * Happy path: a destination's MX lookup ends -> dlv__tls_dest_prepare() asks TLSA
 * _25._tcp.HOST for every host DNSSEC vouches for (dane levels) and the domain's MTA-STS
 * policy (cache, else TXT _mta-sts.DOMAIN -> A/AAAA of mta-sts.DOMAIN -> HTTPS GET) -> the
 * destination is READY -> each connection plans its host (dlv__tls_plan: skip, or TLS with
 * which check) -> after the handshake dlv__tls_check_peer() passes or fails the peer.
 *
 * Failure modes: a skipped host or a failed check is a deferral with a 4.7.5 reason
 * ("TLS: certificate verification failed for mx.example: hostname mismatch"); the next host is
 * tried first, and queue_lifetime bounces it like any deferral.  MTA-STS failures to discover
 * (no TXT, DNS errors, fetch errors, bad policies) mean "no policy" unless a fresh one is
 * cached (RFC 8461 3.3, 5.1); they are logged (event=mta-sts-fetch-failed).
 *
 * The MTA-STS cache is per node, in memory: a domain has one owner at a time, so one node
 * fetches its policy; a new owner (or a restarted node) fetches again.  See README "Outbound
 * TLS" for why it does not travel through the log.
 *
 * Lifetimes: a destination waiting here stays DEST_RESOLVING (never freed); the resolver and
 * the fetcher call back every request, canceled ones at close, and the last callback of a
 * destination makes it READY (or NEW when the engine is closing).  Cache entries live until
 * dlv__tls_fini(); dlv__tls_busy() holds the engine's teardown while a discovery runs.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "delivery.h"
#include "delivery_int.h"

#define STS_BUCKETS 256

/* A broken invariant stops the process in every build and says where (STYLE.md). */
#define DTLS_PANIC_IF(cond, fmt, ...)                                                              \
	do {                                                                                       \
		if (cond) {                                                                        \
			log_error("-", "event=panic func=%s line=%d " fmt, __func__, __LINE__,     \
				  __VA_ARGS__);                                                    \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

struct dtls_dest;

/* One MTA-STS domain: its policy (if any) and the discovery in flight. */
struct sts_entry {
	struct delivery *d;
	char domain[MX_NAME_MAX + 2];
	bool have; /* pol was fetched under id and is kept until expires_ms */
	struct mta_sts_policy pol;
	char id[MTA_STS_ID_MAX + 1];
	uint64_t expires_ms;
	uint64_t checked_ms; /* the last discovery ended; 0 = never */
	bool busy;	     /* a discovery is in flight */
	char txt_id[MTA_STS_ID_MAX + 1];
	struct dtls_dest *waiters; /* destinations waiting for the discovery */
	uint64_t stamp;		   /* LRU */
	struct sts_entry *hnext;
};

struct sts_cache {
	struct sts_entry *b[STS_BUCKETS];
	size_t n;
	size_t busy; /* discoveries in flight */
	uint64_t clock;
};

/* A TLSA lookup's argument. */
struct dtls_q {
	struct dtls_dest *t;
	uint8_t host;
};

struct dtls_dest {
	struct ddest *x;
	int pending; /* TLSA lookups and the MTA-STS wait */
	enum tls_dane_state dane[MX_MAX_HOSTS];
	struct dane_rrset *tlsa[MX_MAX_HOSTS]; /* owned, for USABLE hosts */
	struct dtls_q q[MX_MAX_HOSTS];
	uint32_t tlsa_ttl;
	struct mta_sts_policy *sts; /* owned: the policy that applies (mode testing/enforce) */
	struct dtls_dest *sts_next; /* in the entry's waiters */
};

/* ------------------------------------------------------------ start, close */

int
dlv__tls_start(struct delivery *d, char *err, size_t errlen)
{
	const struct relay_config *cfg = d->cfg;
	for (size_t i = 0; i < cfg->tls_policy.n; i++) {
		const char *eq = strchr(cfg->tls_policy.v[i], '=');
		enum tls_policy_level lv;
		if (eq == NULL || tls_policy_level_parse(eq + 1, &lv) != 0) {
			snprintf(err, errlen, "tls_policy: '%s' is not domain=level",
				 cfg->tls_policy.v[i]);
			return -1;
		}
	}
	if (tls_client_ctx_new(cfg->tls_ca_file, &d->tls, err, errlen) != 0)
		return -1;
	d->sts = calloc(1, sizeof(*d->sts));
	if (d->sts == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		goto err_after_tls;
	}
	if (cfg->mta_sts) {
		int rc = https_fetch_new(d->loop, &d->http);
		if (rc != 0) {
			snprintf(err, errlen, "mta_sts: cannot start libcurl: %s", strerror(-rc));
			goto err_after_sts;
		}
	}
	return 0;
err_after_sts:
	free(d->sts);
	d->sts = NULL;
err_after_tls:
	tls_ctx_free(d->tls);
	d->tls = NULL;
	return -1;
}

/* The engine closes: fetches in flight are canceled (they call back from the fetcher's close
 * callbacks); resolver lookups are canceled by resolver_close. */
void
dlv__tls_close(struct delivery *d)
{
	if (d->http != NULL) {
		struct https_fetch *f = d->http;
		d->http = NULL;
		https_fetch_close(f);
	}
}

bool
dlv__tls_busy(const struct delivery *d)
{
	return d->sts != NULL && d->sts->busy > 0;
}

void
dlv__tls_fini(struct delivery *d)
{
	if (d->sts != NULL) {
		for (size_t i = 0; i < STS_BUCKETS; i++)
			while (d->sts->b[i] != NULL) {
				struct sts_entry *e = d->sts->b[i];
				d->sts->b[i] = e->hnext;
				free(e);
			}
		free(d->sts);
		d->sts = NULL;
	}
	if (d->http != NULL) { /* never started to close (start failed later) */
		https_fetch_close(d->http);
		d->http = NULL;
	}
	tls_ctx_free(d->tls);
	d->tls = NULL;
}

enum tls_policy_level
dlv__tls_level(const struct delivery *d, const char *domain)
{
	const struct relay_config *cfg = d->cfg;
	return tls_policy_for_domain(cfg->tls_policy.v, cfg->tls_policy.n,
				     cfg->tls_required_domains.v, cfg->tls_required_domains.n,
				     domain);
}

/* ------------------------------------------------------------ destinations */

static void
dtls_reset(struct dtls_dest *t)
{
	for (size_t i = 0; i < MX_MAX_HOSTS; i++) {
		free(t->tlsa[i]);
		t->tlsa[i] = NULL;
		t->dane[i] = TLSP_DANE_NA;
	}
	free(t->sts);
	t->sts = NULL;
	t->tlsa_ttl = MX_TTL_MAX;
}

void
dlv__tls_dest_free(struct ddest *x)
{
	if (x->tls == NULL)
		return;
	DTLS_PANIC_IF(x->tls->pending != 0, "dest %s freed with %d TLS lookups", x->key,
		      x->tls->pending);
	dtls_reset(x->tls);
	free(x->tls);
	x->tls = NULL;
}

/* Every fact is in: the destination is READY (or NEW when the engine is closing). */
static void
dtls_done(struct dtls_dest *t)
{
	struct ddest *x = t->x;
	struct delivery *d = x->d;
	if (d->closing) {
		x->state = DEST_NEW;
		dlv__dest_maybe_free(x);
		dlv__maybe_done(d);
		return;
	}
	uint64_t ttl = t->tlsa_ttl < 5 ? 5 : t->tlsa_ttl;
	uint64_t until = clock_mono_ms() + ttl * 1000;
	if (until < x->mx_expires_ms)
		x->mx_expires_ms = until; /* the TLSA records expire with the MX list */
	x->state = DEST_READY;
	if (log_enabled(LOG_DEBUG)) {
		char dane[MX_MAX_HOSTS * 10 + 1] = "";
		for (size_t i = 0; x->mx && i < x->mx->nhosts; i++)
			snprintf(dane + strlen(dane), sizeof(dane) - strlen(dane), "%s%s",
				 i ? "," : "", tls_policy_dane_name(t->dane[i]));
		log_debug("-", "event=tls-facts dest=%s level=%s sts=%s dane=%s", x->key,
			  tls_policy_level_name(x->tls_level),
			  t->sts == NULL		     ? "none"
			  : t->sts->mode == TLSP_STS_ENFORCE ? "enforce"
							     : "testing",
			  dane);
	}
	dlv__dest_pump(x);
	dlv__dest_maybe_free(x);
}

static void
tlsa_cb(void *arg, int status, enum mx_dns res, bool ad, const uint8_t *abuf, size_t alen)
{
	struct dtls_q *q = arg;
	struct dtls_dest *t = q->t;
	struct ddest *x = t->x;
	struct dane_rrset *set = NULL;
	enum tls_dane_state st = TLSP_DANE_FAILED;

	if (status == 0 && res == MX_DNS_OK) {
		set = malloc(sizeof(*set));
		if (set != NULL && dane_parse_tlsa(abuf, alen, set) != 0)
			res = MX_DNS_MALFORMED;
	}
	if (status == 0 && (res != MX_DNS_OK || set != NULL))
		st = dane_classify(res, ad, set);
	t->dane[q->host] = st;
	if (st == TLSP_DANE_USABLE) {
		t->tlsa[q->host] = set;
		if (set->ttl < t->tlsa_ttl)
			t->tlsa_ttl = set->ttl;
		set = NULL;
	}
	free(set);
	if (st == TLSP_DANE_FAILED && status != MX_ECANCELED)
		log_info("-", "event=tlsa-failed dest=%s host=%s error=\"%s\"", x->key,
			 x->mx->hosts[q->host].name,
			 status != 0 ? mx_strerror(status)
			 : res == MX_DNS_MALFORMED
			     ? "malformed answer"
			     : "lookup failed (SERVFAIL: bogus, or the server failed)");
	if (--t->pending == 0)
		dtls_done(t);
}

static void sts_want(struct dtls_dest *t);

bool
dlv__tls_dest_prepare(struct ddest *x)
{
	struct delivery *d = x->d;
	const struct relay_config *cfg = d->cfg;
	bool dane = x->tls_level == TLSP_DANE || x->tls_level == TLSP_DANE_ONLY;
	bool sts = cfg->mta_sts && x->rcpt_mx && d->http != NULL;

	if (d->closing)
		return false;

	if (x->tls == NULL) {
		if (!dane && !sts)
			return false;
		x->tls = calloc(1, sizeof(*x->tls));
		if (x->tls == NULL) /* no facts: DANE and MTA-STS do not apply (dane-only skips) */
			return false;
		x->tls->x = x;
	}
	struct dtls_dest *t = x->tls;
	dtls_reset(t);
	t->pending = 1; /* held while starting: nothing below may finish it */
	/* Known gap: an MX host name that is a CNAME keeps its own name as the TLSA base domain
	 * (RFC 7672 2.2.2 would try the secure expanded name first); README "Outbound TLS". */
	if (dane && cfg->dns_dnssec_trusted && x->mx->secure && d->resolver != NULL) {
		for (size_t i = 0; i < x->mx->nhosts; i++) {
			char qname[DANE_QNAME_MAX + 1];
			if (!x->mx->hosts[i].secure) /* RFC 7672 2.2.2: no DANE for this host */
				continue;
			if (dane_tlsa_qname(x->mx->hosts[i].name, x->port, qname, sizeof(qname)) !=
			    0) {
				t->dane[i] = TLSP_DANE_FAILED;
				continue;
			}
			t->q[i].t = t;
			t->q[i].host = (uint8_t)i;
			if (resolver_raw(d->resolver, qname, 52, tlsa_cb, &t->q[i]) == 0)
				t->pending++;
			else
				t->dane[i] = TLSP_DANE_FAILED;
		}
	}
	if (sts)
		sts_want(t);
	if (--t->pending > 0)
		return true;
	return false; /* every fact is known already */
}

/* ------------------------------------------------------------ MTA-STS */

static struct sts_entry *
sts_find(struct sts_cache *c, const char *domain, uint64_t *h_out)
{
	uint64_t h = dlv__hash_str(domain) % STS_BUCKETS;
	*h_out = h;
	for (struct sts_entry *e = c->b[h]; e != NULL; e = e->hnext)
		if (strcmp(e->domain, domain) == 0)
			return e;
	return NULL;
}

/* Makes room for one entry: drops the least recently used idle one. */
static void
sts_evict(struct sts_cache *c)
{
	struct sts_entry **victim = NULL;
	for (size_t i = 0; i < STS_BUCKETS; i++)
		for (struct sts_entry **pp = &c->b[i]; *pp != NULL; pp = &(*pp)->hnext)
			if (!(*pp)->busy && (victim == NULL || (*pp)->stamp < (*victim)->stamp))
				victim = pp;
	if (victim == NULL)
		return;
	struct sts_entry *e = *victim;
	*victim = e->hnext;
	free(e);
	c->n--;
}

/* Copies what applies now (a fresh policy in testing or enforce mode) into t. */
static void
sts_apply(const struct sts_entry *e, struct dtls_dest *t)
{
	free(t->sts);
	t->sts = NULL;
	if (!e->have || clock_mono_ms() >= e->expires_ms || e->pol.mode == TLSP_STS_NONE)
		return;
	t->sts = malloc(sizeof(*t->sts));
	if (t->sts != NULL)
		*t->sts = e->pol;
}

/* The discovery of e ended: every waiter gets the result. */
static void
sts_finish(struct sts_entry *e)
{
	struct delivery *d = e->d;
	struct dtls_dest *w = e->waiters;
	e->waiters = NULL;
	e->busy = false;
	e->checked_ms = clock_mono_ms();
	d->sts->busy--;
	for (struct dtls_dest *t = w; t != NULL; t = t->sts_next)
		sts_apply(e, t);
	/* e and d may be freed by the last dtls_done (engine closing): touch neither after it */
	while (w != NULL) {
		struct dtls_dest *t = w;
		w = t->sts_next;
		t->sts_next = NULL;
		if (--t->pending == 0)
			dtls_done(t);
	}
}

static void
sts_fetch_failed(struct sts_entry *e, const char *why)
{
	log_info("-", "event=mta-sts-fetch-failed domain=%s id=%s error=\"%s\" cached=%s",
		 e->domain, e->txt_id, why,
		 e->have && clock_mono_ms() < e->expires_ms ? "yes" : "no");
	sts_finish(e);
}

static void
sts_fetch_cb(void *arg, const struct https_result *res)
{
	struct sts_entry *e = arg;
	struct mta_sts_policy pol;
	const char *perr = NULL;
	char why[HTTPS_FETCH_ERR_MAX + 64];

	if (res->status == HTTPS_ECANCELED) {
		sts_finish(e);
		return;
	}
	if (res->status != HTTPS_OK) {
		snprintf(why, sizeof(why), "%s", res->error);
		sts_fetch_failed(e, why);
		return;
	}
	if (res->http_code != 200) { /* RFC 8461 3.3: 200 only, no redirects */
		snprintf(why, sizeof(why), "HTTP status %ld", res->http_code);
		sts_fetch_failed(e, why);
		return;
	}
	if (strncasecmp(res->content_type, "text/plain", 10) != 0 ||
	    (res->content_type[10] != '\0' && res->content_type[10] != ';' &&
	     res->content_type[10] != ' ')) {
		snprintf(why, sizeof(why), "media type '%.64s' is not text/plain",
			 res->content_type);
		sts_fetch_failed(e, why);
		return;
	}
	if (mta_sts_policy_parse(res->body, res->len, &pol, &perr) != 0) {
		snprintf(why, sizeof(why), "bad policy: %s", perr);
		sts_fetch_failed(e, why);
		return;
	}
	e->have = true;
	e->pol = pol;
	memcpy(e->id, e->txt_id, sizeof(e->id));
	e->expires_ms = clock_mono_ms() + (uint64_t)pol.max_age * 1000;
	char mx[256] = "";
	for (size_t i = 0; i < pol.nmx; i++)
		snprintf(mx + strlen(mx), sizeof(mx) - strlen(mx), "%s%s", i ? "," : "", pol.mx[i]);
	log_info("-", "event=mta-sts-policy domain=%s id=%s mode=%s max_age=%" PRIu32 " mx=%s",
		 e->domain, e->id,
		 pol.mode == TLSP_STS_ENFORCE	? "enforce"
		 : pol.mode == TLSP_STS_TESTING ? "testing"
						: "none",
		 pol.max_age, mx);
	sts_finish(e);
}

static void
sts_addr_cb(void *arg, int status, const struct mx_list *list)
{
	struct sts_entry *e = arg;
	struct delivery *d = e->d;
	char why[MX_NAME_MAX + 80], addr[INET6_ADDRSTRLEN];

	if (status == MX_ECANCELED || d->http == NULL) {
		sts_finish(e);
		return;
	}
	if (status != 0 || list == NULL || list->nhosts == 0 || list->hosts[0].naddrs == 0) {
		snprintf(why, sizeof(why), "%s%s: %s", MTA_STS_HOST_PREFIX, e->domain,
			 mx_strerror(status));
		sts_fetch_failed(e, why);
		return;
	}
	const struct mx_addr *a = &list->hosts[0].addrs[0]; /* IPv4 first (resolver.h) */
	inet_ntop(a->family, a->addr, addr, sizeof(addr));
	char host[MX_NAME_MAX + 16];
	snprintf(host, sizeof(host), "%s%s", MTA_STS_HOST_PREFIX, e->domain);
	struct https_request rq = {
	    .host = host,
	    .port = DLV_STS_PORT,
	    .path = MTA_STS_PATH,
	    .addr = addr,
	    .ca_file = d->cfg->tls_ca_file,
	    .max_bytes = MTA_STS_BODY_MAX,
	    .timeout_ms = DLV_STS_FETCH_TIMEOUT_MS,
	};
	int rc = https_fetch_get(d->http, &rq, sts_fetch_cb, e);
	if (rc != 0) {
		snprintf(why, sizeof(why), "cannot start the fetch: %s", strerror(-rc));
		sts_fetch_failed(e, why);
	}
}

static void
sts_txt_cb(void *arg, int status, enum mx_dns res, bool ad, const uint8_t *abuf, size_t alen)
{
	struct sts_entry *e = arg;
	struct delivery *d = e->d;
	char id[MTA_STS_ID_MAX + 1] = "";
	(void)ad;

	if (status == MX_ECANCELED || d->resolver == NULL) {
		sts_finish(e);
		return;
	}
	int txt = -1; /* the lookup failed */
	if (status == 0 && res == MX_DNS_OK)
		txt = (int)mta_sts_txt_answer(abuf, alen, id);
	else if (status == 0 && (res == MX_DNS_NXDOMAIN || res == MX_DNS_NODATA))
		txt = MTA_STS_TXT_NONE;
	bool fresh = e->have && clock_mono_ms() < e->expires_ms;
	enum mta_sts_step step = mta_sts_after_txt(txt, id, fresh, e->have ? e->id : NULL);
	log_debug("-", "event=mta-sts-txt domain=%s txt=%d id=%s step=%d", e->domain, txt, id,
		  (int)step);
	if (step != MTA_STS_FETCH) {
		sts_finish(e);
		return;
	}
	memcpy(e->txt_id, id, sizeof(e->txt_id));
	char host[MX_NAME_MAX + 16];
	snprintf(host, sizeof(host), "%s%s", MTA_STS_HOST_PREFIX, e->domain);
	int rc = resolver_host(d->resolver, host, sts_addr_cb, e);
	if (rc != 0) {
		char why[MX_NAME_MAX + 80];
		snprintf(why, sizeof(why), "%s: %s", host, strerror(-rc));
		sts_fetch_failed(e, why);
	}
}

/* t's destination wants its domain's policy: from the cache, or after a discovery.
 * Known gap: the cache is per node and in memory, so a new owner of the domain (failover,
 * drain, restart) starts with none: an attacker who blocks that first discovery gets the
 * domain treated as policy-less until a fetch succeeds (RFC 8461 10.2's first-use window;
 * README "Outbound TLS" says why the log does not carry policies). */
static void
sts_want(struct dtls_dest *t)
{
	struct ddest *x = t->x;
	struct delivery *d = x->d;
	struct sts_cache *c = d->sts;
	uint64_t h, now = clock_mono_ms();
	struct sts_entry *e = sts_find(c, x->domain, &h);

	if (e == NULL) {
		if (c->n >= DLV_STS_CACHE_MAX)
			sts_evict(c);
		if (c->n >= DLV_STS_CACHE_MAX || (e = calloc(1, sizeof(*e))) == NULL) {
			log_warn("-", "event=mta-sts-skipped domain=%s reason=\"cache full\"",
				 x->domain);
			return;
		}
		e->d = d;
		snprintf(e->domain, sizeof(e->domain), "%s", x->domain);
		e->hnext = c->b[h];
		c->b[h] = e;
		c->n++;
	}
	e->stamp = ++c->clock;
	if (!e->busy && e->checked_ms != 0 && now - e->checked_ms < DLV_STS_RECHECK_MS) {
		sts_apply(e, t);
		return;
	}
	if (!e->busy) {
		char qname[MX_NAME_MAX + 16];
		snprintf(qname, sizeof(qname), "%s%s", MTA_STS_PREFIX, e->domain);
		if (d->resolver == NULL ||
		    resolver_raw(d->resolver, qname, 16, sts_txt_cb, e) != 0) {
			sts_apply(e, t); /* no lookup possible: what the cache holds */
			return;
		}
		e->busy = true;
		c->busy++;
	}
	t->sts_next = e->waiters;
	e->waiters = t;
	t->pending++;
}

/* ------------------------------------------------------------ connections */

/* A local 451 4.7.5 ("cryptographic failure", RFC 3463 3.8) with the text after it. */
static void __attribute__((format(printf, 2, 3)))
diag_set(struct mta_diag *dg, const char *fmt, ...)
{
	static const char prefix[] = "451 4.7.5 ";
	va_list ap;
	dg->code = 451;
	dg->local = true;
	snprintf(dg->enh, sizeof(dg->enh), "4.7.5");
	memcpy(dg->text, prefix, sizeof(prefix));
	va_start(ap, fmt);
	vsnprintf(dg->text + sizeof(prefix) - 1, sizeof(dg->text) - (sizeof(prefix) - 1), fmt, ap);
	va_end(ap);
}

/*
 * Plans the connection to its current host (c->host_i).  0: connect; -1: the policy skips the
 * host (the job's last error says why; the caller moves to the next host).
 */
int
dlv__tls_plan(struct dconn *c)
{
	struct ddest *x = c->dest;
	const struct mx_host *h = &c->mx.hosts[c->host_i];
	const struct dtls_dest *t = x->tls;
	struct tls_host_facts f = {
	    .level = x->tls_level,
	    .dnssec_ok = c->d->cfg->dns_dnssec_trusted && c->mx.secure && h->secure,
	    .dane = t != NULL ? t->dane[c->host_i] : TLSP_DANE_NA,
	    .sts = t != NULL && t->sts != NULL ? t->sts->mode : TLSP_STS_NONE,
	    .sts_mx_match = t != NULL && t->sts != NULL && mta_sts_mx_match(t->sts, h->name),
	};
	struct dconn_tls *ct = &c->tlsc;
	memset(ct, 0, sizeof(*ct));
	tls_policy_plan(&f, &ct->plan);
	if (ct->plan.report_mx_mismatch)
		log_info(c->job->msg->qid,
			 "event=mta-sts-testing domain=%s relay=%s failure=\"%s is not an MX host "
			 "of the policy\"",
			 x->domain, c->relay, h->name);
	if (!ct->plan.skip)
		return 0;
	char qname[DANE_QNAME_MAX + 1] = "";
	struct mta_diag *dg = &c->job->last;
	switch (ct->plan.why) {
	case TLSP_R_TLSA_FAILED:
		dane_tlsa_qname(h->name, x->port, qname, sizeof(qname));
		diag_set(dg, "TLS: TLSA lookup for %s failed (%s)", qname,
			 tls_policy_level_name(x->tls_level));
		break;
	case TLSP_R_STS_MX_MISMATCH:
		diag_set(dg, "MTA-STS: %s is not an MX host of the policy of %s", h->name,
			 x->domain);
		break;
	default:
		diag_set(dg, "TLS: %s: %s", h->name, tls_policy_reason_text(ct->plan.why));
		break;
	}
	snprintf(c->job->last_relay, sizeof(c->job->last_relay), "%s", c->relay);
	log_info(c->job->msg->qid, "event=tls-skip relay=%s reason=\"%s\"", c->relay, dg->text);
	return -1;
}

enum mta_tls_policy
dlv__tls_session_mode(const struct dconn *c)
{
	if (c->tlsc.plan.required)
		return MTA_TLS_REQUIRED;
	if (c->tls_plain_retry || c->d->tls == NULL)
		return MTA_TLS_NONE;
	return MTA_TLS_OPPORTUNISTIC;
}

/* The TLS conn for STARTTLS, with the plan's check. */
struct tls_conn *
dlv__tls_conn_new(struct dconn *c)
{
	const struct mx_host *h = &c->mx.hosts[c->host_i];
	const struct dtls_dest *t = c->dest->tls;
	struct tls_tlsa recs[DANE_TLSA_MAX];
	struct tls_peer_check chk = {.mode = TLS_AUTH_NONE};

	switch (c->tlsc.plan.auth) {
	case TLSP_AUTH_PKIX:
		chk.mode = TLS_AUTH_PKIX;
		chk.names[chk.nnames++] = h->name; /* RFC 8461 4.2; the verify level */
		break;
	case TLSP_AUTH_DANE: {
		const struct dane_rrset *set = t != NULL ? t->tlsa[c->host_i] : NULL;
		DTLS_PANIC_IF(set == NULL, "DANE plan without records for %s", h->name);
		chk.mode = TLS_AUTH_DANE;
		/* RFC 7672 3.2.2: the TLSA base domain, and the next-hop domain */
		chk.names[chk.nnames++] = h->name;
		if (c->dest->domain[0] != '\0' && strcmp(c->dest->domain, h->name) != 0)
			chk.names[chk.nnames++] = c->dest->domain;
		for (size_t i = 0; i < set->n; i++) {
			recs[i].usage = set->rr[i].usage;
			recs[i].selector = set->rr[i].selector;
			recs[i].mtype = set->rr[i].mtype;
			recs[i].data = set->rr[i].data;
			recs[i].len = set->rr[i].len;
		}
		chk.tlsa = recs;
		chk.ntlsa = set->n;
		break;
	}
	case TLSP_AUTH_NONE:
		break;
	}
	return tls_conn_new_client_checked(c->d->tls, h->name, &chk);
}

/*
 * The handshake is done: does the peer pass the plan's check?  0 go on (passed, no check, or
 * MTA-STS testing: logged), -1 it failed (c->tlsc.diag says why; the session must end).
 */
int
dlv__tls_check_peer(struct dconn *c)
{
	const struct tls_host_plan *p = &c->tlsc.plan;
	const struct mx_host *h = &c->mx.hosts[c->host_i];
	const char *qid = c->job ? c->job->msg->qid : "-";
	char why[256];

	if (p->auth == TLSP_AUTH_NONE)
		return 0;
	if (tls_conn_peer_check(c->tls, why, sizeof(why)) == 0) {
		log_debug(qid, "event=tls-verified relay=%s auth=%s", c->relay,
			  p->auth == TLSP_AUTH_DANE ? "dane" : "pkix");
		return 0;
	}
	if (p->report_only) {
		log_info(qid,
			 "event=mta-sts-testing domain=%s relay=%s failure=\"certificate "
			 "verification failed: %s\"",
			 c->dest->domain, c->relay, why);
		return 0;
	}
	diag_set(&c->tlsc.diag, "TLS: %s verification failed for %s: %s",
		 p->auth == TLSP_AUTH_DANE ? "DANE" : "certificate", h->name, why);
	c->tlsc.failed = true;
	log_info(qid, "event=tls-verify-failed relay=%s auth=%s reason=\"%s\"", c->relay,
		 p->auth == TLSP_AUTH_DANE ? "dane"
		 : p->why == TLSP_R_STS	   ? "mta-sts"
					   : "pkix",
		 why);
	return -1;
}

/* The session of a connection ended with j pending: a failed check is the job's reason. */
void
dlv__tls_session_closed(struct dconn *c, struct djob *j)
{
	if (c->tlsc.failed) {
		j->last = c->tlsc.diag;
		snprintf(j->last_relay, sizeof(j->last_relay), "%s", c->relay);
	}
}
