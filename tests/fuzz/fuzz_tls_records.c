/*
 * fuzz_tls_records.c - what destinations publish for outbound TLS, as peers send it: TLSA
 * answers (dane_parse_tlsa, dane_classify), _mta-sts TXT answers (mta_sts_txt_answer) and
 * MTA-STS policy bodies (mta_sts_policy_parse, mta_sts_mx_match).  Byte 0 picks the parser.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dane.h"
#include "mta_sts.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct dane_rrset set;
	static struct mta_sts_policy pol;
	char id[MTA_STS_ID_MAX + 1];
	const char *err = NULL;

	if (size == 0)
		return 0;
	uint8_t which = data[0] % 3;
	data++;
	size--;
	switch (which) {
	case 0:
		if (dane_parse_tlsa(data, size, &set) == 0) {
			if (set.n > DANE_TLSA_MAX || set.n > set.nall)
				abort();
			for (size_t i = 0; i < set.n; i++)
				if (!dane_tlsa_usable(set.rr[i].usage, set.rr[i].selector,
						      set.rr[i].mtype, set.rr[i].len))
					abort();
			(void)dane_classify(MX_DNS_OK, size & 1, &set);
		}
		break;
	case 1:
		if (mta_sts_txt_answer(data, size, id) == MTA_STS_TXT_OK &&
		    (id[0] == '\0' || strlen(id) > MTA_STS_ID_MAX))
			abort();
		break;
	default:
		if (mta_sts_policy_parse((const char *)data, size, &pol, &err) == 0) {
			if (pol.nmx > MTA_STS_MX_MAX || pol.max_age > MTA_STS_MAX_AGE_MAX)
				abort();
			(void)mta_sts_mx_match(&pol, "mx.example.com");
			(void)mta_sts_mx_match(&pol, "a.b.example.net.");
		} else if (err == NULL) {
			abort();
		}
		break;
	}
	return 0;
}
