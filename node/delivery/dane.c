/*
 * dane.c - TLSA records (RFC 6698 2.1 wire format) and their use by SMTP (RFC 7672 3.1); see
 * dane.h.
 */
#include "dane.h"

#include <stdio.h>
#include <string.h>

int
dane_tlsa_qname(const char *host, unsigned port, char *out, size_t cap)
{
	char norm[MX_NAME_MAX + 2];
	if (mx_name_normalize(host, norm) != 0 || norm[0] == '\0' || port == 0 || port > 65535)
		return -1;
	int n = snprintf(out, cap, "_%u._tcp.%s", port, norm);
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}

bool
dane_tlsa_usable(uint8_t usage, uint8_t selector, uint8_t mtype, size_t len)
{
	if (usage != 2 && usage != 3) /* RFC 7672 3.1.3: not PKIX-TA(0) / PKIX-EE(1) */
		return false;
	if (selector > 1)
		return false;
	switch (mtype) {
	case 0:
		return len > 0 && len <= DANE_TLSA_DATA_MAX;
	case 1:
		return len == 32;
	case 2:
		return len == 64;
	default:
		return false;
	}
}

static int
tlsa_rr(void *arg, const uint8_t *rdata, size_t rdlen, uint32_t ttl)
{
	struct dane_rrset *set = arg;
	set->nall++;
	if (ttl < set->ttl)
		set->ttl = ttl;
	if (rdlen < 3)
		return 0; /* a broken record is not usable; the others may be */
	size_t dlen = rdlen - 3;
	if (!dane_tlsa_usable(rdata[0], rdata[1], rdata[2], dlen) || set->n >= DANE_TLSA_MAX)
		return 0;
	struct dane_tlsa *r = &set->rr[set->n++];
	r->usage = rdata[0];
	r->selector = rdata[1];
	r->mtype = rdata[2];
	r->len = (uint16_t)dlen;
	memcpy(r->data, rdata + 3, dlen);
	return 0;
}

int
dane_parse_tlsa(const uint8_t *msg, size_t len, struct dane_rrset *out)
{
	out->n = 0;
	out->nall = 0;
	out->ttl = MX_TTL_MAX;
	if (mx_answer_each(msg, len, 52 /* TLSA, RFC 6698 7.1 */, tlsa_rr, out) < 0)
		return MX_EMALFORMED;
	return 0;
}

enum tls_dane_state
dane_classify(enum mx_dns res, bool ad, const struct dane_rrset *set)
{
	switch (res) {
	case MX_DNS_TEMP:
	case MX_DNS_MALFORMED:
		return TLSP_DANE_FAILED; /* RFC 7672 2.1.1 */
	default:
		break;
	}
	if (!ad)
		return TLSP_DANE_INSECURE;
	if (res != MX_DNS_OK || set == NULL || set->nall == 0)
		return TLSP_DANE_NONE; /* secure denial of existence */
	return set->n > 0 ? TLSP_DANE_USABLE : TLSP_DANE_UNUSABLE;
}
