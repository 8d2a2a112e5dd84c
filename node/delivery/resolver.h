/*
 * resolver.h - asynchronous MX and address resolution on a libuv loop.
 *
 * Contract: the only module that talks to c-ares.  A resolver owns one c-ares
 * channel driven by the caller's uv_loop_t: one uv_poll per c-ares socket (from
 * ARES_OPT_SOCK_STATE_CB), one uv_timer for ares_timeout(), one uv_idle that
 * delivers results.  No blocking calls, no threads, and no system resolver
 * configuration: /etc/resolv.conf is never read and the servers are exactly
 * the "addr:port" list the caller gives (an empty list is an error).
 *
 * Happy path: resolver_mx("example.org") asks MX, orders the exchangers (mx.h:
 * preference, equal preferences shuffled with the caller-seeded PRNG), asks A
 * and AAAA for each (IPv4 addresses first), and calls back once with the list.
 * resolver_host() does the A/AAAA part only (relayhost, transport targets).
 *
 * Results (RFC 5321 5.1, RFC 7505): status 0 and a non-empty list; or an MX_*
 * code from mx.h - null MX -> MX_ENULLMX (5.1.10, permanent, no address
 * lookups); NXDOMAIN -> MX_ENXDOMAIN (5.1.2, permanent); SERVFAIL, REFUSED,
 * timeout -> MX_ETEMP (4.4.3); unparseable answers -> MX_EMALFORMED
 * (temporary); MX hosts without any address -> MX_ENOADDR (5.4.4) or MX_ETEMP
 * if an address lookup failed temporarily; resolver_close() -> MX_ECANCELED.
 *
 * Callbacks are never called from inside resolver_mx()/resolver_host(): they
 * run from the loop (an idle handle), or from the close callbacks after
 * resolver_close().  A request call that fails returns a negative errno and
 * never calls the callback.
 *
 * Cache: positive results are kept for the minimum TTL seen in the answers
 * used (capped at MX_TTL_MAX), at most `cache_max` entries, least recently
 * used evicted first.  Equal preferences are reshuffled on each cache hit.
 * Negative results are not cached.
 *
 * DNSSEC (option dnssec_ad, for servers the operator declared validating):
 * every query carries the AD bit (RFC 6840 5.7: "tell me whether you
 * validated it"), and an answer's AD bit marks it secure: mx_list.secure (the
 * MX answer, or the NODATA of an implicit MX) and mx_host.secure (both the A
 * and the AAAA answer).  Without the option nothing is marked secure.
 *
 * resolver_raw() asks one question and hands back the raw answer (TLSA, TXT:
 * the callers parse them with mx_answer_each()); it is never cached.
 */
#ifndef RELAY_RESOLVER_H
#define RELAY_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "mx.h"

#define RESOLVER_SERVERS_MAX 512   /* length of the "addr:port,..." list */
#define RESOLVER_CACHE_DEFAULT 256 /* cached results */
#define RESOLVER_CACHE_MAX 65536
#define RESOLVER_TIMEOUT_MS_DEFAULT 3000
#define RESOLVER_TRIES_DEFAULT 2

struct resolver;

struct resolver_options {
	/* "127.0.0.53:5353,[::1]:53": required, borrowed (copied by c-ares). */
	const char *servers;
	unsigned timeout_ms; /* per try; 0 = RESOLVER_TIMEOUT_MS_DEFAULT */
	unsigned tries;	     /* 0 = RESOLVER_TRIES_DEFAULT */
	size_t cache_max;    /* 0 = no cache; capped at RESOLVER_CACHE_MAX */
	uint64_t seed;	     /* seeds the shuffle of equal MX preferences */
	bool dnssec_ad;	     /* ask with the AD bit and believe it in answers (see above) */
	/* Seconds for TTL bookkeeping; NULL = uv_now(loop) / 1000. */
	uint64_t (*now_cb)(void *now_arg);
	void *now_arg;
};

/*
 * status: 0 or a negative MX_* code.  list: the hosts in delivery order when
 * status is 0, else NULL; borrowed, valid only during the callback (copy what
 * you keep).
 */
typedef void (*resolver_cb)(void *arg, int status, const struct mx_list *list);

/* Create a resolver on loop.  Returns 0, -EINVAL (no servers, bad list), or
 * -ENOMEM / -EIO (c-ares failure). */
int resolver_new(uv_loop_t *loop, const struct resolver_options *opt, struct resolver **out);

/*
 * Fail every pending lookup with MX_ECANCELED, close the handles and free the
 * resolver from the last close callback (the callbacks of pending lookups run
 * there, before the free).  Safe to call from a resolver callback.  r must not
 * be used afterwards.
 */
void resolver_close(struct resolver *r);

/* Delivery hosts of a mail domain.  Returns 0 (cb will be called exactly once),
 * -EINVAL for a bad domain, -ECANCELED while closing, -ENOMEM. */
int resolver_mx(struct resolver *r, const char *domain, resolver_cb cb, void *arg);

/* Addresses of one host, no MX lookup (an IP literal resolves to itself). */
int resolver_host(struct resolver *r, const char *host, resolver_cb cb, void *arg);

/*
 * A raw answer: status 0 (then res says how the query ended: MX_DNS_OK with
 * records, NODATA, NXDOMAIN, TEMP for SERVFAIL/REFUSED/timeout, MALFORMED),
 * or MX_ECANCELED / MX_ENOMEM.  ad: the answer carried the AD bit and the
 * resolver has dnssec_ad.  abuf/alen: the answer (NULL/0 when there is none),
 * borrowed, valid only during the callback.
 */
typedef void (*resolver_raw_cb)(void *arg, int status, enum mx_dns res, bool ad,
				const uint8_t *abuf, size_t alen);

/* One question of type qtype (class IN) about name.  Returns 0 (cb will be
 * called exactly once), -EINVAL for a bad name, -ECANCELED, -ENOMEM. */
int resolver_raw(struct resolver *r, const char *name, uint16_t qtype, resolver_raw_cb cb,
		 void *arg);

/* Lookups in flight (not yet called back); for tests and metrics. */
size_t resolver_pending(const struct resolver *r);

/*
 * Raw-answer adapters (c-ares parsers + mx.h), exported for the fuzz harness.
 * They return how the answer classifies (enum mx_dns) and never read past len.
 * resolver_parse_mx_answer fills at most max records and the answer's minimum
 * TTL; resolver_parse_addr_answer adds A (family AF_INET) or AAAA (AF_INET6)
 * addresses to host and lowers *ttl to their minimum TTL.
 */
enum mx_dns resolver_parse_mx_answer(const uint8_t *abuf, size_t alen, struct mx_rr *rrs,
				     size_t max, size_t *n, uint32_t *ttl);
enum mx_dns resolver_parse_addr_answer(const uint8_t *abuf, size_t alen, int family,
				       struct mx_host *host, uint32_t *ttl);

#endif
