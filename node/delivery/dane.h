/*
 * dane.h - TLSA records for DANE SMTP (RFC 7672, RFC 6698): reading them from a raw DNS answer,
 * deciding which are usable, and what the lookup as a whole says (pure: no I/O, no OpenSSL).
 *
 * Usable records (RFC 7672 3.1): usage DANE-TA(2) or DANE-EE(3) (PKIX-TA(0) and PKIX-EE(1) are
 * not used by SMTP clients, 3.1.3), selector Cert(0) or SPKI(1), matching type Full(0),
 * SHA2-256(1) or SHA2-512(2) with the digest's exact length.  The lookup's state
 * (tls_policy.h enum tls_dane_state): a failure (SERVFAIL from a validating resolver is how
 * "bogus" arrives, a timeout, a malformed answer) is FAILED; an answer without the AD bit is
 * INSECURE; a secure NXDOMAIN/NODATA is NONE; a secure RRset is USABLE or UNUSABLE.
 */
#ifndef RELAY_DANE_H
#define RELAY_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mx.h"
#include "tls_policy.h"

#define DANE_TLSA_MAX 8		/* usable records kept per host; more are ignored */
#define DANE_TLSA_DATA_MAX 2048 /* bytes of one record's data (a full certificate fits) */
#define DANE_SMTP_PORT 25
#define DANE_QNAME_MAX (MX_NAME_MAX + 16) /* "_25._tcp." + host */

struct dane_tlsa {
	uint8_t usage, selector, mtype;
	uint16_t len;
	uint8_t data[DANE_TLSA_DATA_MAX];
};

struct dane_rrset {
	size_t n;     /* usable records kept */
	size_t nall;  /* TLSA records in the answer */
	uint32_t ttl; /* minimum TTL of the TLSA records */
	struct dane_tlsa rr[DANE_TLSA_MAX];
};

/* "_25._tcp.mx.example" into out (DANE_QNAME_MAX + 1).  0, or -1 for a bad host name. */
int dane_tlsa_qname(const char *host, unsigned port, char *out, size_t cap);

/* Is this record usable by an SMTP client (RFC 7672 3.1)? */
bool dane_tlsa_usable(uint8_t usage, uint8_t selector, uint8_t mtype, size_t len);

/* Reads the TLSA records of an answer into out (usable ones kept).  0, or MX_EMALFORMED. */
int dane_parse_tlsa(const uint8_t *msg, size_t len, struct dane_rrset *out);

/*
 * The state of a TLSA lookup: res is how the query ended (mx.h enum mx_dns), ad its AD bit, set
 * the parsed records when res is MX_DNS_OK (else unused, may be NULL).
 */
enum tls_dane_state dane_classify(enum mx_dns res, bool ad, const struct dane_rrset *set);

#endif
