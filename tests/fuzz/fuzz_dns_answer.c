/*
 * fuzz_dns_answer.c - raw DNS answer bytes through the same path the resolver
 * uses: c-ares parsers (resolver_parse_*), the TTL walker and the MX logic
 * (mx_order, address collection, mx_finish).  Byte 0 seeds the shuffle.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "mx.h"
#include "resolver.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct mx_rr rrs[MX_MAX_RRS];
	static struct mx_list l;
	struct mx_rng rng;
	size_t n = 0;
	uint32_t ttl = 0;
	char buf[4096];

	if (size == 0)
		return 0;
	mx_rng_seed(&rng, data[0]);
	data++;
	size--;

	(void)mx_answer_min_ttl(data, size, &ttl);
	mx_list_init(&l);
	enum mx_dns res = resolver_parse_mx_answer(data, size, rrs, MX_MAX_RRS, &n, &ttl);
	if (n > MX_MAX_RRS)
		abort();
	int cls = mx_classify_mx_query(res, n);
	int rc = 0;
	if (cls == 1)
		rc = mx_order(rrs, n, &rng, &l);
	else if (cls == 2)
		rc = mx_implicit("example.org", &l);
	if (rc == 0 && cls > 0) {
		if (l.nhosts > MX_MAX_HOSTS)
			abort();
		for (size_t i = 0; i < l.nhosts; i++) {
			uint32_t t = MX_TTL_MAX;
			enum mx_dns a =
			    resolver_parse_addr_answer(data, size, AF_INET, &l.hosts[i], &t);
			enum mx_dns b =
			    resolver_parse_addr_answer(data, size, AF_INET6, &l.hosts[i], &t);
			mx_host_note_dns(&l.hosts[i], a);
			mx_host_note_dns(&l.hosts[i], b);
			if (l.hosts[i].naddrs > MX_MAX_ADDRS)
				abort();
		}
		rc = mx_finish(&l);
		mx_list_reshuffle(&l, &rng);
		mx_list_format(&l, buf, sizeof(buf));
		if (strlen(buf) >= sizeof(buf))
			abort();
	}
	(void)mx_strerror(rc);
	return 0;
}
