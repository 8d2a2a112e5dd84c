/*
 * tls_policy.c - the outbound TLS decision table of tls_policy.h (pure).
 */
#include "tls_policy.h"

#include <string.h>
#include <strings.h>

static const char *const level_names[] = {
#define TLSP__NAME(e, n) n,
    TLS_POLICY_LEVELS(TLSP__NAME)
#undef TLSP__NAME
};

int
tls_policy_level_parse(const char *name, enum tls_policy_level *out)
{
	for (size_t i = 0; i < TLSP_NLEVELS; i++)
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum tls_policy_level)i;
			return 0;
		}
	return -1;
}

const char *
tls_policy_level_name(enum tls_policy_level level)
{
	return (unsigned)level < TLSP_NLEVELS ? level_names[level] : "?";
}

enum tls_policy_level
tls_policy_for_domain(char *const *policy, size_t npolicy, char *const *required, size_t nrequired,
		      const char *domain)
{
	size_t dl = strlen(domain);
	if (dl == 0)
		return TLSP_MAY;
	for (size_t i = 0; i < npolicy; i++) {
		const char *e = policy[i], *eq = strchr(e, '=');
		enum tls_policy_level lv;
		if (eq != NULL && (size_t)(eq - e) == dl && strncasecmp(e, domain, dl) == 0 &&
		    tls_policy_level_parse(eq + 1, &lv) == 0)
			return lv;
	}
	for (size_t i = 0; i < nrequired; i++)
		if (strcasecmp(required[i], domain) == 0)
			return TLSP_ENCRYPT;
	return TLSP_MAY;
}

/* Step 3 of the table: the level's own demand, with MTA-STS on top. */
static void
plan_pkix_levels(const struct tls_host_facts *f, enum tls_policy_level level,
		 struct tls_host_plan *p)
{
	if (f->sts == TLSP_STS_ENFORCE) {
		if (!f->sts_mx_match) { /* RFC 8461 4.1 */
			p->skip = true;
			p->why = TLSP_R_STS_MX_MISMATCH;
			return;
		}
		p->required = true; /* RFC 8461 4.2 */
		p->auth = TLSP_AUTH_PKIX;
		p->why = level == TLSP_VERIFY ? TLSP_R_LEVEL : TLSP_R_STS;
		return;
	}
	p->why = TLSP_R_LEVEL;
	switch (level) {
	case TLSP_VERIFY:
		p->required = true;
		p->auth = TLSP_AUTH_PKIX;
		return;
	case TLSP_ENCRYPT:
		p->required = true;
		break;
	default:
		break;
	}
	if (f->sts == TLSP_STS_TESTING) { /* RFC 8461 5: check, report, deliver anyway */
		p->auth = TLSP_AUTH_PKIX;
		p->report_only = true;
		p->report_mx_mismatch = !f->sts_mx_match;
	}
}

void
tls_policy_plan(const struct tls_host_facts *f, struct tls_host_plan *p)
{
	memset(p, 0, sizeof(*p));
	bool dane_level = f->level == TLSP_DANE || f->level == TLSP_DANE_ONLY;
	bool only = f->level == TLSP_DANE_ONLY;
	if (dane_level && f->dnssec_ok) {
		switch (f->dane) {
		case TLSP_DANE_FAILED:
			p->skip = true;
			p->why = TLSP_R_TLSA_FAILED;
			return;
		case TLSP_DANE_USABLE:
			p->required = true;
			p->auth = TLSP_AUTH_DANE;
			p->why = TLSP_R_DANE;
			return;
		case TLSP_DANE_UNUSABLE:
			if (only) {
				p->skip = true;
				p->why = TLSP_R_TLSA_UNUSABLE;
				return;
			}
			p->required = true;
			p->why = TLSP_R_DANE_UNAUTHENTICATED;
			return;
		default: /* NONE, INSECURE, NA: DANE does not apply to this host */
			if (only) {
				p->skip = true;
				p->why = TLSP_R_TLSA_MISSING;
				return;
			}
			break;
		}
	} else if (only) {
		p->skip = true;
		p->why = TLSP_R_DNSSEC_INSECURE;
		return;
	}
	plan_pkix_levels(f, dane_level ? TLSP_MAY : f->level, p);
}

const char *
tls_policy_dane_name(enum tls_dane_state st)
{
	switch (st) {
	case TLSP_DANE_NA:
		return "na";
	case TLSP_DANE_USABLE:
		return "usable";
	case TLSP_DANE_UNUSABLE:
		return "unusable";
	case TLSP_DANE_NONE:
		return "none";
	case TLSP_DANE_INSECURE:
		return "insecure";
	case TLSP_DANE_FAILED:
		return "failed";
	}
	return "?";
}

const char *
tls_policy_reason_text(enum tls_plan_reason why)
{
	switch (why) {
	case TLSP_R_TLSA_FAILED:
		return "TLSA lookup failed";
	case TLSP_R_TLSA_UNUSABLE:
		return "no usable TLSA record (dane-only)";
	case TLSP_R_TLSA_MISSING:
		return "no DNSSEC-secure TLSA record (dane-only)";
	case TLSP_R_DNSSEC_INSECURE:
		return "MX or address records not DNSSEC-secure (dane-only)";
	case TLSP_R_STS_MX_MISMATCH:
		return "not an MX host of the MTA-STS policy";
	case TLSP_R_DANE:
		return "dane";
	case TLSP_R_DANE_UNAUTHENTICATED:
		return "dane (no usable TLSA record: unauthenticated TLS)";
	case TLSP_R_STS:
		return "mta-sts";
	case TLSP_R_LEVEL:
		return "level";
	case TLSP_R_NONE:
		break;
	}
	return "";
}
