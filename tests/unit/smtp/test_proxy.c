/*
 * test_proxy.c: the PROXY protocol parser against a table of headers: valid v1/v2 of each
 * family, every prefix of them (needs more), and malformed ones.
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "proxy.h"

struct pcase {
	const char *name;
	const char *bytes;
	size_t len;	    /* 0: strlen */
	int want;	    /* consumed, 0, or -1 */
	int local;
	const char *src;    /* expected client address */
	unsigned sport;
};

#define V2SIG "\r\n\r\n\0\r\nQUIT\n"

static const struct pcase cases[] = {
    {"v1 tcp4", "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO", 0, 44, 0, "192.0.2.1", 56324},
    {"v1 tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 1 25\r\n", 0, 41, 0, "2001:db8::1", 1},
    {"v1 unknown", "PROXY UNKNOWN\r\n", 0, 15, 1, NULL, 0},
    {"v1 unknown+junk", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 0, 35, 1, NULL, 0},
    {"v1 family mismatch", "PROXY TCP4 2001:db8::1 2001:db8::2 1 25\r\n", 0, -1, 0, NULL, 0},
    {"v1 bad port", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 25\r\n", 0, -1, 0, NULL, 0},
    {"v1 leading zero port", "PROXY TCP4 1.2.3.4 5.6.7.8 025 25\r\n", 0, -1, 0, NULL, 0},
    {"v1 missing field", "PROXY TCP4 1.2.3.4 5.6.7.8 25\r\n", 0, -1, 0, NULL, 0},
    {"v1 extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", 0, -1, 0, NULL, 0},
    {"v1 bare LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 0, -1, 0, NULL, 0},
    {"v1 double space", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", 0, -1, 0, NULL, 0},
    {"v1 udp", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", 0, -1, 0, NULL, 0},
    {"v1 too long",
     "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     "65535 65535 xxxxxxxxxxxxxxxxxxxxxxxxxx\r\n",
     0, -1, 0, NULL, 0},
    {"not proxy", "EHLO client\r\n", 0, -1, 0, NULL, 0},
    {"v2 tcp4", V2SIG "\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\xdc\x04\x00\x19" "EHLO", 32,
     28, 0, "192.0.2.1", 56324},
    {"v2 local", V2SIG "\x20\x00\x00\x00", 16, 16, 1, NULL, 0},
    {"v2 tcp6 + tlv",
     V2SIG "\x21\x21\x00\x27"
	   "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
	   "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02"
	   "\x04\xd2\x00\x19"
	   "\x04\x00\x00",
     55, 55, 0, "2001:db8::1", 1234},
    {"v2 unspec", V2SIG "\x21\x00\x00\x00", 16, 16, 1, NULL, 0},
    {"v2 udp", V2SIG "\x21\x12\x00\x0c" "123456789012", 28, -1, 0, NULL, 0},
    {"v2 bad version", V2SIG "\x11\x11\x00\x0c" "123456789012", 28, -1, 0, NULL, 0},
    {"v2 bad command", V2SIG "\x22\x11\x00\x0c" "123456789012", 28, -1, 0, NULL, 0},
    {"v2 short addr", V2SIG "\x21\x11\x00\x04" "1234", 20, -1, 0, NULL, 0},
    {"v2 too long", V2SIG "\x21\x11\xff\xff", 16, -1, 0, NULL, 0},
};

static size_t
case_len(const struct pcase *c)
{
	return c->len ? c->len : strlen(c->bytes);
}

static void
test_table(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct pcase *c = &cases[i];
		struct proxy_info pi;
		int rc = proxy_parse((const uint8_t *)c->bytes, case_len(c), &pi);
		if (rc != c->want)
			fail_msg("%s: got %d want %d", c->name, rc, c->want);
		if (rc <= 0)
			continue;
		assert_int_equal(pi.local, c->local);
		if (c->src != NULL) {
			char buf[64];
			unsigned port;
			if (pi.src.ss_family == AF_INET) {
				struct sockaddr_in *s = (struct sockaddr_in *)&pi.src;
				inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
				port = ntohs(s->sin_port);
			} else {
				struct sockaddr_in6 *s = (struct sockaddr_in6 *)&pi.src;
				inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
				port = ntohs(s->sin6_port);
			}
			if (strcmp(buf, c->src) != 0 || port != c->sport)
				fail_msg("%s: src %s:%u", c->name, buf, port);
		}
	}
}

/* Every strict prefix of a valid header asks for more, never decides early. */
static void
test_prefixes(void **state)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct pcase *c = &cases[i];
		if (c->want <= 0)
			continue;
		for (size_t cut = 0; cut < (size_t)c->want; cut++) {
			struct proxy_info pi;
			int rc = proxy_parse((const uint8_t *)c->bytes, cut, &pi);
			if (rc != 0)
				fail_msg("%s: prefix %zu gave %d", c->name, cut, rc);
		}
	}
}

static void
test_looks_like(void **state)
{
	assert_true(proxy_looks_like((const uint8_t *)"PROXY TCP4", 10));
	assert_true(proxy_looks_like((const uint8_t *)"PRO", 3));
	assert_true(proxy_looks_like((const uint8_t *)V2SIG, 12));
	assert_true(proxy_looks_like((const uint8_t *)"\r\n\r\n", 4));
	assert_false(proxy_looks_like((const uint8_t *)"EHLO x", 6));
	assert_false(proxy_looks_like((const uint8_t *)"PROXZ", 5));
	assert_false(proxy_looks_like((const uint8_t *)"", 0));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_prefixes),
	    cmocka_unit_test(test_looks_like),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
