/*
 * mta_sts.h - SMTP MTA Strict Transport Security (RFC 8461): the TXT record, the policy text,
 * MX host matching, and what to do after the TXT lookup (pure: no I/O, no clock).
 *
 * Discovery (3.3, 5.1): TXT "_mta-sts.DOMAIN" -> if a valid record names an id that differs
 * from the cached policy's (or nothing fresh is cached), fetch
 * https://mta-sts.DOMAIN/.well-known/mta-sts.txt (the engine does the HTTPS, with certificate
 * verification and without redirects); a fresh cached policy is used when the TXT record is
 * gone or the fetch fails; with neither, the domain has no policy.
 */
#ifndef RELAY_MTA_STS_H
#define RELAY_MTA_STS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mx.h"
#include "tls_policy.h"

#define MTA_STS_ID_MAX 32	      /* RFC 8461 3.1: 1*32(ALPHA / DIGIT) */
#define MTA_STS_TXT_MAX 1024	      /* bytes of one TXT record kept (strings joined) */
#define MTA_STS_MX_MAX 16	      /* mx patterns kept from one policy */
#define MTA_STS_MAX_AGE_MAX 31557600u /* RFC 8461 3.2: at most a year */
#define MTA_STS_BODY_MAX (64 * 1024)  /* RFC 8461 3.3 suggests 64 KB */
#define MTA_STS_PREFIX "_mta-sts."
#define MTA_STS_HOST_PREFIX "mta-sts."
#define MTA_STS_PATH "/.well-known/mta-sts.txt"

struct mta_sts_policy {
	enum tls_sts_mode mode; /* none is TLSP_STS_NONE */
	uint32_t max_age;	/* seconds */
	size_t nmx;
	char mx[MTA_STS_MX_MAX][MX_NAME_MAX + 2]; /* lowercase, "*.example.net" or a name */
};

/* Results of mta_sts_txt_answer. */
enum mta_sts_txt {
	MTA_STS_TXT_OK = 0,   /* exactly one valid STSv1 record: id filled */
	MTA_STS_TXT_NONE,     /* no STSv1 record (or none parses, or several: RFC 8461 3.1) */
	MTA_STS_TXT_MALFORMED /* the DNS message itself is broken */
};

/*
 * One TXT record's text (strings already joined): 0 and id when it is a valid STSv1 record,
 * -1 when it does not start with "v=STSv1;", -2 when it does but is invalid (no id, bad
 * syntax).
 */
int mta_sts_txt_parse(const char *txt, size_t len, char id[MTA_STS_ID_MAX + 1]);

/* The TXT records of a raw answer (RFC 8461 3.1: records not starting "v=STSv1;" are
 * discarded; anything but exactly one valid record means no policy). */
enum mta_sts_txt mta_sts_txt_answer(const uint8_t *msg, size_t len, char id[MTA_STS_ID_MAX + 1]);

/*
 * Parses a policy body (RFC 8461 3.2: "key: value" lines, LF or CRLF; version STSv1, mode and
 * max_age required, mx required unless mode is none; unknown keys ignored; more than
 * MTA_STS_MX_MAX mx lines: the first ones are kept).  0, or -1 with *err a static reason.
 */
int mta_sts_policy_parse(const char *text, size_t len, struct mta_sts_policy *out,
			 const char **err);

/* Does the MX host name match a pattern of the policy (RFC 8461 4.1: exact, or "*." plus one
 * label, case-insensitive, trailing dots ignored)? */
bool mta_sts_mx_match(const struct mta_sts_policy *p, const char *host);

/* What discovery does next, after the TXT lookup. */
enum mta_sts_step {
	MTA_STS_USE_CACHED, /* the cached policy (fresh) holds */
	MTA_STS_FETCH,	    /* fetch the policy (a new id, or nothing fresh cached) */
	MTA_STS_NO_POLICY,  /* the domain has no policy */
};

/*
 * txt: the result of the TXT lookup (MTA_STS_TXT_*, or -1 when the lookup itself failed);
 * txt_id its id; cached_fresh: a policy is cached and its max_age is not over; cached_id the
 * TXT id it was fetched under.  RFC 8461 3.3 and 5.1.
 */
enum mta_sts_step mta_sts_after_txt(int txt, const char *txt_id, bool cached_fresh,
				    const char *cached_id);

#endif
