/*
 * tls_policy.h - outbound TLS: the level of a recipient domain, and what one connection to one
 * MX host must do under it (pure: no I/O, no OpenSSL, no DNS; the engine gathers the facts).
 *
 * Levels (config key tls_policy, "domain=level"; tls_required_domains means encrypt; the rest
 * is may), weakest first:
 *   may        STARTTLS when offered, certificate not checked (RFC 7435), plaintext otherwise
 *   encrypt    TLS or no delivery to that host; certificate not checked
 *   verify     TLS, and the certificate chains to a trusted CA and names the MX host (RFC 6125)
 *   dane       RFC 7672: where DNSSEC proves the MX host and its TLSA records, they must match;
 *              where DANE does not apply, as may
 *   dane-only  DANE or no delivery to that host
 *
 * MTA-STS (RFC 8461, mta_sts.h) adds to what the level asks: under an enforce policy a host the
 * policy does not name is skipped and the others need verified TLS (4.1, 4.2); under testing
 * the same checks only log (5).  DANE wins where it applies (RFC 8461 2).
 *
 * The plan for one host (tls_policy_plan), in order:
 *   1. DANE applies (level dane/dane-only, dns_dnssec_trusted, MX RRset and the host's address
 *      records secure; RFC 7672 2.2.1, 2.2.2):
 *        TLSA lookup failed (SERVFAIL, bogus, timeout)  -> skip the host (RFC 7672 2.1.1:
 *                                                          neither DANE nor cleartext)
 *        secure, usable records                         -> TLS, DANE check
 *        secure, no usable record                       -> dane: TLS, no check (RFC 7672 2.2);
 *                                                          dane-only: skip
 *        no secure TLSA RRset (absent or insecure)      -> dane: go on as may (step 3);
 *                                                          dane-only: skip
 *   2. DANE does not apply: dane-only skips the host; dane goes on as may.
 *   3. MTA-STS enforce: a host the policy does not name is skipped; the others get TLS with a
 *      PKIX check.  Otherwise verify: TLS with a PKIX check; encrypt: TLS; may: STARTTLS when
 *      offered.  MTA-STS testing under may/encrypt: the PKIX check and the MX match are made
 *      but only reported (report_only).
 * A skipped host or a failed check defers (the next host is tried first); the reason goes to
 * the log and, at queue_lifetime, into the bounce.
 */
#ifndef RELAY_TLS_POLICY_H
#define RELAY_TLS_POLICY_H

#include <stdbool.h>
#include <stddef.h>

/* X(enum, name): the config names, weakest first (node/config.h CONFIG_TLS_LEVELS agrees). */
#define TLS_POLICY_LEVELS(X)                                                                       \
	X(TLSP_MAY, "may")                                                                         \
	X(TLSP_ENCRYPT, "encrypt")                                                                 \
	X(TLSP_VERIFY, "verify")                                                                   \
	X(TLSP_DANE, "dane")                                                                       \
	X(TLSP_DANE_ONLY, "dane-only")

enum tls_policy_level {
#define TLSP__ENUM(e, n) e,
	TLS_POLICY_LEVELS(TLSP__ENUM)
#undef TLSP__ENUM
	    TLSP_NLEVELS
};

/* "verify" -> TLSP_VERIFY.  0, or -1 for an unknown name. */
int tls_policy_level_parse(const char *name, enum tls_policy_level *out);
const char *tls_policy_level_name(enum tls_policy_level level);

/*
 * The level of a recipient domain (lowercase, no trailing dot): the tls_policy entry
 * "domain=level" naming it exactly, else encrypt when it is in required, else may.  Entries
 * with an unknown level are skipped (config.c refuses them).  policy and required borrowed.
 */
enum tls_policy_level tls_policy_for_domain(char *const *policy, size_t npolicy,
					    char *const *required, size_t nrequired,
					    const char *domain);

/* The TLSA RRset of one MX host, as the engine found it (RFC 7672 2.2.3). */
enum tls_dane_state {
	TLSP_DANE_NA = 0,   /* not looked up: DANE does not apply to this host */
	TLSP_DANE_USABLE,   /* secure, with at least one usable record */
	TLSP_DANE_UNUSABLE, /* secure, none usable (PKIX-TA/EE, unknown types, bad lengths) */
	TLSP_DANE_NONE,	    /* secure proof that there is no TLSA RRset */
	TLSP_DANE_INSECURE, /* an answer without the AD bit */
	TLSP_DANE_FAILED,   /* SERVFAIL (bogus), timeout, malformed answer */
};

enum tls_sts_mode { TLSP_STS_NONE = 0, TLSP_STS_TESTING, TLSP_STS_ENFORCE };

struct tls_host_facts {
	enum tls_policy_level level;
	bool dnssec_ok; /* dns_dnssec_trusted, and the MX RRset (or the configured route) and
			   this host's address records were secure */
	enum tls_dane_state dane;
	enum tls_sts_mode sts;
	bool sts_mx_match; /* the host matches an mx pattern of the MTA-STS policy */
};

enum tls_plan_auth { TLSP_AUTH_NONE = 0, TLSP_AUTH_PKIX, TLSP_AUTH_DANE };

/* Why a host is skipped, or where a requirement comes from (for logs and deferral texts). */
enum tls_plan_reason {
	TLSP_R_NONE = 0,
	TLSP_R_TLSA_FAILED,	     /* skip: the TLSA lookup failed */
	TLSP_R_TLSA_UNUSABLE,	     /* skip (dane-only): no usable TLSA record */
	TLSP_R_TLSA_MISSING,	     /* skip (dane-only): no secure TLSA RRset */
	TLSP_R_DNSSEC_INSECURE,	     /* skip (dane-only): MX or address records not secure */
	TLSP_R_STS_MX_MISMATCH,	     /* skip (enforce) or report (testing): not in the policy */
	TLSP_R_DANE,		     /* connect: DANE check */
	TLSP_R_DANE_UNAUTHENTICATED, /* connect: TLS without check (unusable TLSA records) */
	TLSP_R_STS,		     /* connect: the MTA-STS policy asks for the PKIX check */
	TLSP_R_LEVEL,		     /* connect: what the level asks */
};

struct tls_host_plan {
	bool skip;		  /* do not connect to this host */
	bool required;		  /* TLS or nothing: no plaintext, no retry without TLS */
	enum tls_plan_auth auth;  /* the check the TLS session must pass */
	bool report_only;	  /* MTA-STS testing: check PKIX (and the MX match) but only log */
	bool report_mx_mismatch;  /* MTA-STS testing: log that the host is not in the policy */
	enum tls_plan_reason why; /* see above */
};

/* The plan for one host (the decision table at the top of this file). */
void tls_policy_plan(const struct tls_host_facts *f, struct tls_host_plan *out);

/* "usable", "none", "failed", ... for logs. */
const char *tls_policy_dane_name(enum tls_dane_state st);

/* A short text for a reason ("TLSA lookup failed", ...). */
const char *tls_policy_reason_text(enum tls_plan_reason why);

#endif
