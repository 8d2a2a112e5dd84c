/*
 * test_config.c: the config key table and its parsers, driven by tables of cases.
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

static void
test_durations(void **state)
{
	static const struct {
		const char *in;
		int ok;
		uint64_t ms;
	} cases[] = {
	    {"30", 1, 30000},   {"30s", 1, 30000},	{"5m", 1, 300000},  {"2h", 1, 7200000},
	    {"1d", 1, 86400000}, {"250ms", 1, 250},	{"0", 1, 0},	    {"", 0, 0},
	    {"s", 0, 0},	 {"5 m", 0, 0},		{"5w", 0, 0},	    {"-1s", 0, 0},
	    {"99999999999999999999", 0, 0},		{"18446744073709551615d", 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t ms = 0;
		int rc = config_parse_duration(cases[i].in, &ms);
		if (cases[i].ok) {
			assert_int_equal(rc, 0);
			assert_int_equal(ms, cases[i].ms);
		} else {
			assert_int_not_equal(rc, 0);
		}
	}
}

static void
test_sizes(void **state)
{
	static const struct {
		const char *in;
		int ok;
		uint64_t v;
	} cases[] = {
	    {"1024", 1, 1024}, {"10k", 1, 10240}, {"10m", 1, 10485760}, {"1g", 1, 1073741824},
	    {"1MB", 1, 1048576}, {"1.5m", 0, 0}, {"m", 0, 0}, {"10x", 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 0;
		int rc = config_parse_size(cases[i].in, &v);
		assert_int_equal(rc == 0, cases[i].ok);
		if (cases[i].ok)
			assert_int_equal(v, cases[i].v);
	}
}

static void
test_addrs(void **state)
{
	static const struct {
		const char *in;
		int ok;
		const char *text;
	} cases[] = {
	    {"127.0.0.1:25", 1, "127.0.0.1:25"}, {"[::1]:2525", 1, "[::1]:2525"},
	    {"0.0.0.0:65535", 1, "0.0.0.0:65535"}, {"127.0.0.1:0", 0, NULL},
	    {"127.0.0.1:65536", 0, NULL}, {"localhost:25", 0, NULL}, {"::1:25", 0, NULL},
	    {"127.0.0.1", 0, NULL}, {"[::1]25", 0, NULL}, {"1.2.3.4:2x", 0, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct config_addr a;
		int rc = config_parse_addr(cases[i].in, &a);
		assert_int_equal(rc == 0, cases[i].ok);
		if (cases[i].ok)
			assert_string_equal(a.text, cases[i].text);
	}
}

static void
test_cidr_match(void **state)
{
	struct relay_config cfg;
	assert_int_equal(config_init(&cfg), 0);
	assert_int_equal(
	    config_set(&cfg, "mynetworks", "10.1.0.0/16, 192.0.2.7, 2001:db8::/33", "t"), 0);
	static const struct {
		const char *addr;
		int match;
	} cases[] = {
	    {"10.1.2.3", 1},	 {"10.2.0.1", 0},   {"192.0.2.7", 1},	  {"192.0.2.8", 0},
	    {"2001:db8:7fff::1", 1}, {"2001:db8:8000::1", 0}, {"::ffff:10.1.9.9", 1},
	    {"127.0.0.1", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss = {0};
		if (strchr(cases[i].addr, ':')) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			s6->sin6_family = AF_INET6;
			assert_int_equal(inet_pton(AF_INET6, cases[i].addr, &s6->sin6_addr), 1);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			s4->sin_family = AF_INET;
			assert_int_equal(inet_pton(AF_INET, cases[i].addr, &s4->sin_addr), 1);
		}
		assert_int_equal(config_cidr_match(&cfg.mynetworks, (struct sockaddr *)&ss),
				 cases[i].match);
	}
	config_fini(&cfg);
}

static void
test_keys_and_errors(void **state)
{
	struct relay_config cfg;
	assert_int_equal(config_init(&cfg), 0);
	/* defaults */
	assert_int_equal(cfg.max_message_size, 10u << 20);
	assert_int_equal(cfg.command_timeout_ms, 300000);
	assert_int_equal(cfg.smtp_listen.n, 1);
	/* dashes and underscores name the same key */
	assert_int_equal(config_set(&cfg, "max-errors", "7", "flag"), 0);
	assert_int_equal(cfg.max_errors, 7);
	assert_int_equal(config_set(&cfg, "relay_domains", "Example.COM other.test", "t"), 0);
	assert_int_equal(cfg.relay_domains.n, 2);
	assert_string_equal(cfg.relay_domains.v[0], "example.com");
	/* errors name the key and the source */
	assert_int_not_equal(config_set(&cfg, "max_errors", "0", "file:3"), 0);
	assert_non_null(strstr(config_error(), "max_errors"));
	assert_non_null(strstr(config_error(), "file:3"));
	assert_int_not_equal(config_set(&cfg, "nonsense", "1", "flag --nonsense"), 0);
	assert_non_null(strstr(config_error(), "nonsense"));
	assert_int_not_equal(config_set(&cfg, "relay_domains", "a..b", "t"), 0);
	assert_int_not_equal(config_set(&cfg, "transport", "example.com", "t"), 0);
	assert_int_equal(config_set(&cfg, "transport", "Example.com=127.0.0.1:25", "t"), 0);
	assert_string_equal(cfg.transport.v[0], "example.com=127.0.0.1:25");
	/* a failed set keeps the old value */
	assert_int_equal(cfg.relay_domains.n, 2);
	/* too many list entries */
	char big[CONFIG_VALUE_MAX];
	size_t o = 0;
	for (int i = 0; i < CONFIG_LIST_MAX + 1; i++)
		o += (size_t)snprintf(big + o, sizeof(big) - o, "d%d.test,", i);
	assert_int_not_equal(config_set(&cfg, "relay_domains", big, "t"), 0);
	/* cross-key rules */
	assert_int_equal(config_set(&cfg, "tls_cert", "/c.pem", "t"), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	assert_int_equal(config_set(&cfg, "tls_key", "/k.pem", "t"), 0);
	assert_int_equal(config_check(&cfg), 0);
	assert_int_equal(config_set(&cfg, "node_id", "bad id!", "t"), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	config_fini(&cfg);
}

/* Outbound TLS keys: each bad value gets an error naming the key and the value. */
static void
test_outbound_tls_keys(void **state)
{
	struct relay_config cfg;
	(void)state;
	assert_int_equal(config_init(&cfg), 0);
	assert_int_equal(cfg.tls_policy.n, 0);
	assert_false(cfg.dns_dnssec_trusted);
	assert_true(cfg.mta_sts);
	assert_string_equal(cfg.tls_ca_file, "");

	assert_int_equal(config_set(&cfg, "tls_policy", "A.test=verify, b.test=DANE-only", "t"), 0);
	assert_int_equal(cfg.tls_policy.n, 2);
	assert_string_equal(cfg.tls_policy.v[0], "a.test=verify");
	assert_string_equal(cfg.tls_policy.v[1], "b.test=dane-only");
	static const char *const bad[] = {"a.test", "a.test=", "a.test=strict", "=verify",
					  "a..test=verify", "a.test=verify=x"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_not_equal(config_set(&cfg, "tls_policy", bad[i], "file:9"), 0);
		assert_non_null(strstr(config_error(), "tls_policy"));
		assert_non_null(strstr(config_error(), "file:9"));
	}
	assert_non_null(strstr(config_error(), "a.test=verify=x"));
	assert_int_equal(cfg.tls_policy.n, 2); /* a bad value keeps the old one */

	assert_int_equal(config_set(&cfg, "dns_dnssec_trusted", "yes", "t"), 0);
	assert_true(cfg.dns_dnssec_trusted);
	assert_int_equal(config_set(&cfg, "mta-sts", "no", "flag"), 0);
	assert_false(cfg.mta_sts);
	assert_int_not_equal(config_set(&cfg, "mta_sts", "true", "t"), 0);
	assert_non_null(strstr(config_error(), "not yes or no"));
	assert_int_not_equal(config_set(&cfg, "dns_dnssec_trusted", "", "t"), 0);

	assert_int_equal(config_check(&cfg), 0);
	assert_int_equal(config_set(&cfg, "tls_policy", "a.test=may a.test=verify", "t"), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	assert_non_null(strstr(config_error(), "appears twice"));
	assert_int_equal(config_set(&cfg, "tls_policy", "a.test=verify", "t"), 0);
	assert_int_equal(config_set(&cfg, "tls_required_domains", "a.test", "t"), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	assert_non_null(strstr(config_error(), "tls_required_domains"));
	assert_int_equal(config_set(&cfg, "tls_required_domains", "", "t"), 0);
	assert_int_equal(config_check(&cfg), 0);
	assert_int_equal(config_set(&cfg, "tls_ca_file", "/nonexistent/ca.pem", "t"), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	assert_non_null(strstr(config_error(), "tls_ca_file"));
	config_fini(&cfg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_durations), cmocka_unit_test(test_sizes),
	    cmocka_unit_test(test_addrs), cmocka_unit_test(test_cidr_match),
	    cmocka_unit_test(test_keys_and_errors), cmocka_unit_test(test_outbound_tls_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
