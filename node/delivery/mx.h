/*
 * mx.h - turning DNS answers into the ordered list of hosts to deliver to.
 *
 * Contract: pure functions, no I/O, no clock, no c-ares types.  The resolver
 * (resolver.c, the only code that includes <ares.h>) parses raw answers into
 * the neutral records below and calls these functions; the fuzz harness
 * fuzz_dns_answer does the same with arbitrary bytes.
 *
 * Happy path (RFC 5321 section 5.1):
 *   MX records  -> mx_order(): null MX check (RFC 7505 section 3), sort by
 *                  preference, shuffle equal preferences with a caller-seeded
 *                  PRNG, drop duplicates and "." entries, keep at most
 *                  MX_MAX_HOSTS hosts;
 *   no MX       -> mx_implicit(): the domain itself, preference 0;
 *   per host    -> mx_host_add_addr() for each A/AAAA answer (bounded,
 *                  deduplicated), and mx_host_note_dns() for failed lookups;
 *   finally     -> mx_finish(): drop hosts with no address and decide the
 *                  status of the whole lookup.
 *
 * Failure modes are the negative codes of MX_ERRORS: permanent ones (null MX
 * 5.1.10, NXDOMAIN 5.1.2, no address for any host 5.4.4) bounce the
 * recipients at once; temporary ones (4.4.3) defer them.  Malformed answers
 * are MX_EMALFORMED, which counts as temporary: a broken answer may be a
 * transient fault of one server.
 */
#ifndef RELAY_MX_H
#define RELAY_MX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds (style: every buffer bounded by a named constant). */
#define MX_NAME_MAX 253	    /* RFC 1035 2.3.4, presentation form without the root dot */
#define MX_MAX_HOSTS 10	    /* hosts kept after ordering */
#define MX_MAX_RRS 64	    /* MX records read from one answer; more are ignored */
#define MX_MAX_ADDRS 8	    /* addresses kept per host (A and AAAA together) */
#define MX_TTL_MAX 86400u   /* a cached result lives at most one day */
#define MX_TTL_DEFAULT 300u /* used when an answer carries no TTL at all */

/* Errors: X(name, value, permanent, enhanced status, text). */
#define MX_ERRORS(X)                                                                               \
	X(MX_ENULLMX, -1, 1, "5.1.10", "domain does not accept mail (null MX, RFC 7505)")          \
	X(MX_ENXDOMAIN, -2, 1, "5.1.2", "domain not found")                                        \
	X(MX_ENOADDR, -3, 1, "5.4.4", "no address for any mail exchanger")                         \
	X(MX_ETEMP, -4, 0, "4.4.3", "temporary DNS failure")                                       \
	X(MX_EMALFORMED, -5, 0, "4.4.3", "malformed DNS answer")                                   \
	X(MX_ECANCELED, -6, 0, "4.4.3", "lookup canceled")                                         \
	X(MX_ENOMEM, -7, 0, "4.3.0", "out of memory")                                              \
	X(MX_EINVAL, -8, 1, "5.1.2", "invalid domain name")

enum mx_error {
#define MX__ENUM(n, v, p, e, t) n = v,
	MX_ERRORS(MX__ENUM)
#undef MX__ENUM
};

/* Text for an MX_* code (or "ok" for 0, "unknown" otherwise). */
const char *mx_strerror(int err);
/* Enhanced status code (RFC 3463) for an MX_* code, "2.0.0" for 0. */
const char *mx_status_code(int err);
/* True when err must bounce the recipients rather than defer them. */
bool mx_is_permanent(int err);

/*
 * Outcome of one DNS query, as the resolver maps it from c-ares statuses:
 * NOERROR with records, NOERROR without records (NODATA), NXDOMAIN, any
 * temporary failure (SERVFAIL, REFUSED, timeout, network), or an answer that
 * could not be parsed.
 */
enum mx_dns {
	MX_DNS_OK = 0,
	MX_DNS_NODATA,
	MX_DNS_NXDOMAIN,
	MX_DNS_TEMP,
	MX_DNS_MALFORMED,
};

/* A small deterministic PRNG (splitmix64); the caller seeds it. */
struct mx_rng {
	uint64_t state;
};
void mx_rng_seed(struct mx_rng *rng, uint64_t seed);
uint64_t mx_rng_next(struct mx_rng *rng);
/* Uniform in [0, n); n > 0. */
uint32_t mx_rng_below(struct mx_rng *rng, uint32_t n);

/* One MX record as parsed from an answer.  name is NUL-terminated. */
struct mx_rr {
	uint16_t pref;
	char name[MX_NAME_MAX + 2];
};

struct mx_addr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
};

struct mx_host {
	char name[MX_NAME_MAX + 2];
	uint16_t pref;
	bool implicit;	    /* RFC 5321 5.1 implicit MX: the domain itself */
	bool dns_temp;	    /* an address lookup failed temporarily */
	bool dns_malformed; /* an address lookup returned garbage */
	bool secure;	    /* both address answers carried the AD bit (resolver dnssec_ad) */
	size_t naddrs;
	struct mx_addr addrs[MX_MAX_ADDRS];
};

struct mx_list {
	size_t nhosts;
	struct mx_host hosts[MX_MAX_HOSTS];
	uint32_t ttl; /* minimum TTL over every answer used, capped at MX_TTL_MAX */
	bool secure;  /* the host names are DNSSEC-authenticated: the MX answer (or, for the
			 implicit MX, its NODATA answer) carried the AD bit, or the names
			 came from configuration (resolver_host) */
};

/*
 * Normalise a domain name into dst (size MX_NAME_MAX + 2): lower case, no
 * trailing dot.  Returns 0, or MX_EINVAL for an empty or over-long name, or
 * one with bytes outside printable ASCII (A-labels only, RFC 5890).  "." alone
 * normalises to "" and returns 0 (used for null MX detection).
 */
int mx_name_normalize(const char *src, char *dst);

/* Start an empty list with ttl = MX_TTL_MAX. */
void mx_list_init(struct mx_list *l);

/* Lower the list's TTL to ttl if smaller (0 allowed: do not cache). */
void mx_list_note_ttl(struct mx_list *l, uint32_t ttl);

/*
 * Order n MX records (rrs is not modified) into out, which must have been
 * initialised.  Returns 0, MX_ENULLMX for a null MX (exactly one record,
 * preference 0, exchange "." or empty: RFC 7505 section 3), or MX_EMALFORMED
 * when no record carries a usable name.  n == 0 returns MX_EMALFORMED too:
 * the caller handles "no MX" with mx_implicit().  Records whose exchange is
 * "." among others are ignored (RFC 7505 section 4.1 says they must not be
 * there).  Equal preferences are shuffled with rng (Fisher-Yates within each
 * group; RFC 5321 5.1 "randomize them").  At most MX_MAX_HOSTS are kept.
 */
int mx_order(const struct mx_rr *rrs, size_t n, struct mx_rng *rng, struct mx_list *out);

/* The implicit MX of RFC 5321 5.1: domain itself, preference 0. */
int mx_implicit(const char *domain, struct mx_list *out);

/*
 * Add an address to host: family AF_INET (4 bytes) or AF_INET6 (16 bytes).
 * Duplicates are ignored.  Returns 0, or MX_EINVAL when the family is
 * unknown; silently keeps only MX_MAX_ADDRS addresses.
 */
int mx_host_add_addr(struct mx_host *host, int family, const void *addr);

/* Record the failure of an A or AAAA lookup for host. */
void mx_host_note_dns(struct mx_host *host, enum mx_dns res);

/*
 * Finish a list after all address lookups: hosts without addresses are
 * removed (order kept).  Returns 0 when at least one host remains, else
 * MX_ETEMP when any lookup failed temporarily, MX_EMALFORMED when any answer
 * was malformed, otherwise MX_ENOADDR (RFC 5321 5.1: MX records present but
 * none usable is an error).
 */
int mx_finish(struct mx_list *l);

/*
 * Map the result of the MX query for a domain to the next step: returns 1
 * "use these MX records", 2 "no MX: use the implicit MX", or a negative MX_*
 * error (NXDOMAIN 5.1.2 permanent; temporary 4.4.3; malformed).
 */
int mx_classify_mx_query(enum mx_dns res, size_t nrecords);

/*
 * Minimum TTL over the answer section of a raw DNS message (header + question
 * + answers, RFC 1035 4.1).  Returns 0 with *ttl set (MX_TTL_DEFAULT when
 * there are no answer records), or MX_EMALFORMED.  Never reads past len.
 */
int mx_answer_min_ttl(const uint8_t *msg, size_t len, uint32_t *ttl);

/* The header of a raw DNS message (RFC 1035 4.1.1; AD: RFC 4035 3.2.3). */
struct mx_dns_header {
	unsigned rcode;
	bool ad; /* Authentic Data: a validating resolver says the answer is DNSSEC-secure */
	bool tc;
	unsigned qdcount, ancount;
};

/* Reads the header.  0, or MX_EMALFORMED when len < 12. */
int mx_answer_header(const uint8_t *msg, size_t len, struct mx_dns_header *h);

/*
 * Walks the answer section of a raw DNS message: fn(arg, rdata, rdlen, ttl) for each record of
 * class IN and the given type, whatever its owner (a CNAME chain the resolver followed comes
 * first).  fn returns 0 to go on, non-zero to stop.  Returns the number of records passed to
 * fn, or MX_EMALFORMED.  Never reads past len.
 */
int mx_answer_each(const uint8_t *msg, size_t len, uint16_t type,
		   int (*fn)(void *arg, const uint8_t *rdata, size_t rdlen, uint32_t ttl),
		   void *arg);

/*
 * The node's own SMTP endpoints, for loop detection (RFC 5321 5.1: "if the SMTP client finds
 * its own name in the list ... it MUST discard the record and all with a preference at least as
 * high"; Postfix: "mail for DOMAIN loops back to myself").  An entry is a prefix of one family
 * and a port: a listener on 192.0.2.1:25 is 192.0.2.1/32 port 25, a wildcard listener on
 * 0.0.0.0:25 is every local interface address plus 127.0.0.0/8 on port 25, an own_addresses
 * entry (a NAT or balancer in front of us) its address on its port.
 */
#define MX_SELF_MAX 256 /* entries; interfaces beyond it are not seen */
struct mx_self {
	size_t n;
	struct mx_self_entry {
		int family; /* AF_INET or AF_INET6 */
		uint8_t addr[16];
		unsigned prefix; /* bits */
		unsigned port;
	} v[MX_SELF_MAX];
};

/* Adds a prefix (addr: 4 or 16 bytes) on a port; silently ignored when full or bad. */
void mx_self_add(struct mx_self *self, int family, const void *addr, unsigned prefix,
		 unsigned port);

/* Is family/addr on port one of self's endpoints?  (An IPv4-mapped IPv6 address counts as its
 * IPv4 address.) */
bool mx_self_match(const struct mx_self *self, int family, const uint8_t *addr, unsigned port);

/*
 * Removes from an ordered list the hosts we would reach ourselves on port (any of their
 * addresses is in self), and every host whose preference is at least that of the best such
 * host: those would hand the mail back to us.  Returns how many hosts were removed; when the
 * list is then empty the mail loops (5.4.6).
 */
size_t mx_drop_self(struct mx_list *l, unsigned port, const struct mx_self *self);

/* Reshuffle runs of equal preference in an ordered list (cache hits). */
void mx_list_reshuffle(struct mx_list *l, struct mx_rng *rng);

/* "pref name [addr, ...]" lines for logs and tests; always NUL-terminates. */
size_t mx_list_format(const struct mx_list *l, char *buf, size_t size);

#endif
