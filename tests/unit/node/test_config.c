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
	assert_int_equal(config_set(&cfg, "snapshot_entries", "32768", "t"), 0);
	assert_int_not_equal(config_set(&cfg, "snapshot_entries", "32769", "t"), 0);
	assert_non_null(strstr(config_error(), "snapshot_entries"));
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

/* Issue 12's keys: yes/no, one of a list, the client key of per-client limits, hostnames,
 * the admin socket path, and the cross-key rules. */
static void
test_abuse_keys(void **state)
{
	(void)state;
	static struct relay_config cfg;
	assert_int_equal(config_init(&cfg), 0);
	assert_false(cfg.cluster_insecure);
	assert_string_equal(cfg.bounce_content, "headers");
	assert_int_equal(cfg.max_hops, 50);
	assert_int_equal(cfg.max_receive_memory, (uint64_t)256 << 20);
	assert_int_equal(config_set(&cfg, "cluster_insecure", "yes", "t"), 0);
	assert_true(cfg.cluster_insecure);
	assert_int_equal(config_set(&cfg, "cluster_insecure", "no", "t"), 0);
	assert_false(cfg.cluster_insecure);
	assert_int_not_equal(config_set(&cfg, "cluster_insecure", "maybe", "t"), 0);
	assert_non_null(strstr(config_error(), "cluster_insecure"));
	assert_int_equal(config_set(&cfg, "bounce_content", "full", "t"), 0);
	assert_string_equal(cfg.bounce_content, "full");
	assert_int_not_equal(config_set(&cfg, "bounce_content", "ful", "t"), 0);
	assert_int_not_equal(config_set(&cfg, "bounce_content", "headers|full", "t"), 0);
	assert_string_equal(cfg.bounce_content, "full");
	assert_int_not_equal(config_set(&cfg, "client_ipv6_prefix", "129", "t"), 0);
	assert_int_not_equal(config_set(&cfg, "max_hops", "0", "t"), 0);

	/* cross-key rules */
	config_set(&cfg, "hostname", "mx.example.org", "t");
	assert_int_equal(config_check(&cfg), 0);
	config_set(&cfg, "max_receive_memory", "4m", "t");
	assert_int_not_equal(config_check(&cfg), 0); /* below max_message_size (10m) */
	assert_non_null(strstr(config_error(), "max_receive_memory"));
	config_set(&cfg, "max_receive_memory", "256m", "t");
	config_set(&cfg, "postmaster_address", "postmaster", "t");
	assert_int_not_equal(config_check(&cfg), 0);
	config_set(&cfg, "postmaster_address", "ops@example.org", "t");
	assert_int_equal(config_check(&cfg), 0);
	config_set(&cfg, "cluster_listen", "10.0.0.1:7401", "t");
	assert_int_not_equal(config_check(&cfg), 0);
	assert_non_null(strstr(config_error(), "cluster_insecure"));
	config_set(&cfg, "cluster_insecure", "yes", "t");
	assert_int_equal(config_check(&cfg), 0);
	config_set(&cfg, "cluster_listen", "127.0.0.1:7401", "t");
	config_set(&cfg, "cluster_insecure", "no", "t");
	assert_int_equal(config_check(&cfg), 0);
	config_set(&cfg, "admin_ca", "/x/admin-ca.crt", "t");
	assert_int_not_equal(config_check(&cfg), 0); /* needs the node's certificate */
	config_set(&cfg, "admin_ca", "", "t");
	config_set(&cfg, "admin_listen", "10.0.0.1:7402", "t");
	assert_int_not_equal(config_check(&cfg), 0); /* plain admin off loopback */
	config_set(&cfg, "admin_listen", "", "t");

	/* the admin socket: relative to data_dir, bounded by a unix socket's path */
	char path[CONFIG_SOCKET_PATH_MAX];
	config_set(&cfg, "data_dir", "/var/lib/relayd", "t");
	assert_int_equal(config_admin_socket_path(&cfg, path, sizeof(path)), 0);
	assert_string_equal(path, "/var/lib/relayd/admin.sock");
	config_set(&cfg, "admin_socket", "/run/relayd.sock", "t");
	assert_int_equal(config_admin_socket_path(&cfg, path, sizeof(path)), 0);
	assert_string_equal(path, "/run/relayd.sock");
	char longdir[200];
	memset(longdir, 'd', sizeof(longdir) - 1);
	longdir[0] = '/';
	longdir[sizeof(longdir) - 1] = '\0';
	config_set(&cfg, "admin_socket", "admin.sock", "t");
	config_set(&cfg, "data_dir", longdir, "t");
	assert_int_not_equal(config_admin_socket_path(&cfg, path, sizeof(path)), 0);
	assert_int_not_equal(config_check(&cfg), 0);
	assert_non_null(strstr(config_error(), "admin_socket"));
	config_set(&cfg, "admin_socket", "", "t");
	assert_int_not_equal(config_admin_socket_path(&cfg, path, sizeof(path)), 0);
	config_fini(&cfg);

	/* hostnames: RFC 5321 Domain */
	static const struct {
		const char *name;
		bool ok;
	} hosts[] = {{"mx.example.org", true}, {"a", true},	   {"a-b.c1", true},
		     {"", false},		{"bad_host", false}, {"-a.example", false},
		     {"a-.example", false},	{"a..b", false},     {"a.", false},
		     {"a b", false},		{"\xc3\xa9.example", false}};
	for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++)
		if (config_valid_hostname(hosts[i].name) != hosts[i].ok)
			fail_msg("hostname %s", hosts[i].name);
	char label[80];
	memset(label, 'x', 64);
	label[64] = '\0';
	assert_false(config_valid_hostname(label));
	label[63] = '\0';
	assert_true(config_valid_hostname(label));

	/* client keys: the address cut to the prefix; v4-mapped IPv6 is IPv4 */
	static const struct {
		const char *addr;
		unsigned v4, v6;
		const char *key;
	} keys[] = {
	    {"192.0.2.77", 32, 64, "192.0.2.77"},
	    {"192.0.2.77", 24, 64, "192.0.2.0/24"},
	    {"2001:db8:1:2:aaaa::5", 32, 64, "2001:db8:1:2::/64"},
	    {"2001:db8:1:2:aaaa::5", 32, 48, "2001:db8:1::/48"},
	    {"2001:db8:1:2:aaaa::5", 32, 128, "2001:db8:1:2:aaaa::5"},
	    {"::ffff:198.51.100.9", 32, 64, "198.51.100.9"},
	    {"::ffff:198.51.100.9", 16, 64, "198.51.0.0/16"},
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		struct sockaddr_storage ss;
		memset(&ss, 0, sizeof(ss));
		if (strchr(keys[i].addr, ':') == NULL) {
			ss.ss_family = AF_INET;
			inet_pton(AF_INET, keys[i].addr, &((struct sockaddr_in *)&ss)->sin_addr);
		} else {
			ss.ss_family = AF_INET6;
			inet_pton(AF_INET6, keys[i].addr, &((struct sockaddr_in6 *)&ss)->sin6_addr);
		}
		char out[CONFIG_CLIENT_KEY_MAX];
		config_client_key((const struct sockaddr *)&ss, keys[i].v4, keys[i].v6, out);
		if (strcmp(out, keys[i].key) != 0)
			fail_msg("client key of %s /%u /%u: %s, want %s", keys[i].addr, keys[i].v4,
				 keys[i].v6, out, keys[i].key);
	}
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
	    cmocka_unit_test(test_abuse_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
