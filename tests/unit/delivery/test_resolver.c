/*
 * test_resolver.c - the c-ares/libuv resolver against a dnsmasq this test
 * starts on 127.0.0.x with a config file it writes.  Nothing ever reaches
 * the system resolver: servers are always given explicitly.  Address and
 * port are derived from the pid so parallel runs do not collide; dnsmasq is
 * killed at the end.  Readiness and results are waited for with deadlines,
 * never sleeps.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "resolver.h"

static pid_t dns_pid = -1;
static char dns_servers[64];
static char blackhole_servers[64];
static int blackhole_fd = -1;
static char conf_path[128];
static uint64_t fake_now = 1000;

static uint64_t
clock_cb(void *arg)
{
	return fake_now;
}

static const char *conf_fmt = "no-resolv\n"
			      "no-hosts\n"
			      "listen-address=%s\n"
			      "port=%d\n"
			      "bind-interfaces\n"
			      "local-ttl=60\n"
			      "local=/test/\n"
			      "mx-host=example.test,mx1.example.test,10\n"
			      "mx-host=example.test,mx2.example.test,10\n"
			      "mx-host=example.test,mx3.example.test,20\n"
			      "host-record=mx1.example.test,127.0.0.11\n"
			      "host-record=mx2.example.test,127.0.0.12,::1\n"
			      "host-record=mx3.example.test,127.0.0.13\n"
			      "host-record=implicit.test,127.0.0.21\n"
			      "dns-rr=nullmx.test,15,000000\n"
			      "mx-host=noaddr.test,ghost.test,10\n"
			      "mx-host=partial.test,ghost.test,5\n"
			      "mx-host=partial.test,mx3.example.test,50\n";

/* True once something is bound to addr:port/udp (dnsmasq is up). */
static int
udp_port_busy(const char *addr, int port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, addr, &sa.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	int busy = rc != 0 && errno == EADDRINUSE;
	close(fd);
	return busy;
}

static int
start_dnsmasq(void)
{
	char addr[32];
	unsigned base = (unsigned)getpid();

	for (int attempt = 0; attempt < 20; attempt++) {
		int port = 20000 + (int)((base + (unsigned)attempt * 7919u) % 30000u);
		snprintf(addr, sizeof(addr), "127.0.0.%u", 50 + (base + attempt) % 150);
		if (udp_port_busy(addr, port))
			continue;
		snprintf(conf_path, sizeof(conf_path), "/tmp/test_resolver.%d.conf", (int)getpid());
		FILE *f = fopen(conf_path, "w");
		if (f == NULL)
			return -1;
		fprintf(f, conf_fmt, addr, port);
		fclose(f);
		pid_t pid = fork();
		if (pid == 0) {
			char conf_arg[160];
			snprintf(conf_arg, sizeof(conf_arg), "--conf-file=%s", conf_path);
			execl("/usr/sbin/dnsmasq", "dnsmasq", "--no-daemon",
			      "--pid-file=", conf_arg, "--user=root", (char *)NULL);
			_exit(127);
		}
		/* wait (deadline 5 s) until it binds, or exits */
		for (int i = 0; i < 500; i++) {
			int st;
			if (waitpid(pid, &st, WNOHANG) == pid)
				break;
			if (udp_port_busy(addr, port)) {
				dns_pid = pid;
				snprintf(dns_servers, sizeof(dns_servers), "%s:%d", addr, port);
				return 0;
			}
			usleep(10000);
		}
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return -1;
}

static void
stop_dnsmasq(void)
{
	if (dns_pid > 0) {
		kill(dns_pid, SIGTERM);
		waitpid(dns_pid, NULL, 0);
		dns_pid = -1;
	}
}

static int
group_setup(void **state)
{
	if (start_dnsmasq() != 0) {
		fprintf(stderr, "cannot start dnsmasq\n");
		return -1;
	}
	/* A bound UDP socket that never answers: queries to it time out. */
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	blackhole_fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (bind(blackhole_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return -1;
	getsockname(blackhole_fd, (struct sockaddr *)&sa, &sl);
	snprintf(blackhole_servers, sizeof(blackhole_servers), "127.0.0.1:%d", ntohs(sa.sin_port));
	return 0;
}

static int
group_teardown(void **state)
{
	stop_dnsmasq();
	if (blackhole_fd >= 0)
		close(blackhole_fd);
	unlink(conf_path);
	return 0;
}

struct result {
	int calls;
	int status;
	struct mx_list list;
	char text[2048];
};

static void
result_cb(void *arg, int status, const struct mx_list *list)
{
	struct result *res = arg;
	res->calls++;
	res->status = status;
	if (list) {
		res->list = *list;
		mx_list_format(list, res->text, sizeof(res->text));
	} else {
		res->text[0] = '\0';
	}
}

/* Run the loop until *calls >= want or a 10 s deadline passes. */
static void
run_until(uv_loop_t *loop, int *calls, int want)
{
	uint64_t deadline = uv_now(loop) + 10000;
	while (*calls < want && uv_now(loop) < deadline) {
		uv_run(loop, UV_RUN_ONCE);
		uv_update_time(loop);
	}
}

static struct resolver *
make(uv_loop_t *loop, const char *servers, size_t cache, uint64_t seed, unsigned timeout_ms)
{
	struct resolver_options o = {.servers = servers,
				     .cache_max = cache,
				     .seed = seed,
				     .timeout_ms = timeout_ms,
				     .tries = 1,
				     .now_cb = clock_cb};
	struct resolver *r = NULL;
	assert_int_equal(resolver_new(loop, &o, &r), 0);
	return r;
}

static void
close_and_drain(uv_loop_t *loop, struct resolver *r)
{
	resolver_close(r);
	uv_run(loop, UV_RUN_DEFAULT);
}

static void
test_new_requires_servers(void **state)
{
	uv_loop_t loop;
	struct resolver *r = NULL;
	uv_loop_init(&loop);
	struct resolver_options o = {.servers = ""};
	assert_int_equal(resolver_new(&loop, &o, &r), -EINVAL);
	o.servers = NULL;
	assert_int_equal(resolver_new(&loop, &o, &r), -EINVAL);
	o.servers = "not an address";
	assert_true(resolver_new(&loop, &o, &r) < 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

struct mx_case {
	const char *domain;
	int lookup_host; /* resolver_host instead of resolver_mx */
	int want_status;
	const char *want_text; /* substring of the formatted list */
};

static const struct mx_case mx_cases[] = {
    {"implicit.test", 0, 0, "0 implicit.test (implicit) [127.0.0.21]"},
    {"nullmx.test", 0, MX_ENULLMX, NULL},
    {"nosuch.test", 0, MX_ENXDOMAIN, NULL},
    {"noaddr.test", 0, MX_ENOADDR, NULL},
    {"partial.test", 0, 0, "50 mx3.example.test [127.0.0.13]"},
    {"outside.invalid", 0, MX_ETEMP, NULL}, /* no upstream: REFUSED */
    {"mx2.example.test", 1, 0, "0 mx2.example.test [127.0.0.12,::1]"},
    {"nosuch.test", 1, MX_ENXDOMAIN, NULL},
    {"[127.0.0.9]", 1, 0, "[127.0.0.9]"},
    {"::1", 1, 0, "[::1]"},
};

static void
test_mx_table(void **state)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, dns_servers, 0, 1, 2000);

	for (size_t i = 0; i < sizeof(mx_cases) / sizeof(mx_cases[0]); i++) {
		const struct mx_case *c = &mx_cases[i];
		struct result res = {0};
		int rc = c->lookup_host ? resolver_host(r, c->domain, result_cb, &res)
					: resolver_mx(r, c->domain, result_cb, &res);
		assert_int_equal(rc, 0);
		assert_int_equal(res.calls, 0); /* never synchronous */
		run_until(&loop, &res.calls, 1);
		print_message("%s -> %d %s", c->domain, res.status, res.text);
		assert_int_equal(res.calls, 1);
		assert_int_equal(res.status, c->want_status);
		if (c->want_text)
			assert_non_null(strstr(res.text, c->want_text));
	}
	assert_int_equal(resolver_mx(r, "bad name", result_cb, NULL), -EINVAL);
	assert_int_equal(resolver_pending(r), 0);
	close_and_drain(&loop, r);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* example.test: mx1 and mx2 share preference 10 and are shuffled by seed;
 * mx3 (20) is always last.  Same seed, same order. */
static void
test_mx_shuffle(void **state)
{
	int first_mx1 = 0, first_mx2 = 0;
	char first_order[2048] = "";

	for (uint64_t seed = 0; seed < 12; seed++) {
		uv_loop_t loop;
		uv_loop_init(&loop);
		struct resolver *r = make(&loop, dns_servers, 0, seed % 6, 2000);
		struct result res = {0};
		assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
		run_until(&loop, &res.calls, 1);
		assert_int_equal(res.status, 0);
		assert_int_equal(res.list.nhosts, 3);
		assert_string_equal(res.list.hosts[2].name, "mx3.example.test");
		/* IPv4 first */
		if (strcmp(res.list.hosts[0].name, "mx2.example.test") == 0) {
			first_mx2++;
			assert_int_equal(res.list.hosts[0].addrs[0].family, AF_INET);
			assert_int_equal(res.list.hosts[0].addrs[1].family, AF_INET6);
		} else {
			first_mx1++;
		}
		assert_true(res.list.ttl <= 60);
		if (seed == 0)
			strcpy(first_order, res.text);
		else if (seed == 6)
			assert_string_equal(first_order, res.text);
		close_and_drain(&loop, r);
		assert_int_equal(uv_loop_close(&loop), 0);
	}
	assert_true(first_mx1 > 0 && first_mx2 > 0);
}

static void
test_timeout_is_temporary(void **state)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, blackhole_servers, 0, 1, 200);
	struct result res = {0}, res2 = {0};
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
	assert_int_equal(resolver_host(r, "mx1.example.test", result_cb, &res2), 0);
	run_until(&loop, &res.calls, 1);
	run_until(&loop, &res2.calls, 1);
	assert_int_equal(res.status, MX_ETEMP);
	assert_int_equal(res2.status, MX_ETEMP);
	close_and_drain(&loop, r);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static int closing_calls;
static void
close_from_cb(void *arg, int status, const struct mx_list *list)
{
	struct resolver *r = arg;
	closing_calls++;
	resolver_close(r); /* allowed from a callback */
	assert_int_equal(resolver_mx(r, "example.test", result_cb, NULL), -ECANCELED);
}

static void
test_close_cancels(void **state)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, blackhole_servers, 0, 1, 5000);
	struct result a = {0}, b = {0};
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &a), 0);
	assert_int_equal(resolver_host(r, "mx1.example.test", result_cb, &b), 0);
	uv_run(&loop, UV_RUN_NOWAIT);
	assert_int_equal(resolver_pending(r), 2);
	resolver_close(r);
	assert_int_equal(a.calls, 0); /* not from inside resolver_close either */
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(a.calls, 1);
	assert_int_equal(b.calls, 1);
	assert_int_equal(a.status, MX_ECANCELED);
	assert_int_equal(b.status, MX_ECANCELED);
	assert_int_equal(uv_loop_close(&loop), 0);

	/* close from inside a callback */
	uv_loop_init(&loop);
	r = make(&loop, dns_servers, 0, 1, 2000);
	closing_calls = 0;
	assert_int_equal(resolver_host(r, "[127.0.0.1]", close_from_cb, r), 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(closing_calls, 1);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* Runs last: stops dnsmasq to prove the second answer came from the cache,
 * then moves the fake clock past the 60 s TTL. */
static void
test_cache_ttl(void **state)
{
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, dns_servers, 4, 3, 300);
	struct result res = {0};

	fake_now = 1000;
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
	run_until(&loop, &res.calls, 1);
	assert_int_equal(res.status, 0);
	assert_int_equal(res.list.ttl, 60);
	/* fill the cache (4 entries), touch example.test, then store a fifth:
	 * the least recently used entry (mx1.example.test) is evicted */
	struct result h[6] = {0};
	const char *names[3] = {"mx1.example.test", "mx2.example.test", "mx3.example.test"};
	for (int i = 0; i < 3; i++) {
		assert_int_equal(resolver_host(r, names[i], result_cb, &h[i]), 0);
		run_until(&loop, &h[i].calls, 1);
		assert_int_equal(h[i].status, 0);
	}
	memset(&res, 0, sizeof(res));
	fake_now = 1030;
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
	assert_int_equal(res.calls, 0);
	run_until(&loop, &res.calls, 1);
	assert_int_equal(res.status, 0);
	assert_int_equal(res.list.ttl, 30); /* what is left of the TTL */
	assert_int_equal(resolver_host(r, "implicit.test", result_cb, &h[3]), 0);
	run_until(&loop, &h[3].calls, 1);
	assert_int_equal(h[3].status, 0);
	stop_dnsmasq();

	assert_int_equal(resolver_host(r, "mx2.example.test", result_cb, &h[4]), 0);
	run_until(&loop, &h[4].calls, 1);
	assert_int_equal(h[4].status, 0); /* cached */
	assert_int_equal(resolver_host(r, "mx1.example.test", result_cb, &h[5]), 0);
	run_until(&loop, &h[5].calls, 1);
	assert_int_equal(h[5].status, MX_ETEMP); /* evicted, and the server is gone */
	memset(&res, 0, sizeof(res));
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
	run_until(&loop, &res.calls, 1);
	assert_int_equal(res.status, 0); /* cached */
	assert_int_equal(res.list.nhosts, 3);

	memset(&res, 0, sizeof(res));
	fake_now = 1061;
	assert_int_equal(resolver_mx(r, "example.test", result_cb, &res), 0);
	run_until(&loop, &res.calls, 1);
	assert_int_equal(res.status, MX_ETEMP); /* expired, and the server is gone */
	close_and_drain(&loop, r);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_parse_adapters(void **state)
{
	/* example.org MX 0 "." : null MX in wire form */
	static const uint8_t nullmx[] = {0x12, 0x34, 0x81, 0x80, 0,   1,   0,	1,    0,   0, 0,
					 0,    7,    'e',  'x',	 'a', 'm', 'p', 'l',  'e', 3, 'o',
					 'r',  'g',  0,	   0,	 15,  0,   1,	0xc0, 12,  0, 15,
					 0,    1,    0,	   0,	 0,   30,  0,	3,    0,   0, 0};
	struct mx_rr rrs[4];
	size_t n = 0;
	uint32_t ttl = 0;
	assert_int_equal(resolver_parse_mx_answer(nullmx, sizeof(nullmx), rrs, 4, &n, &ttl),
			 MX_DNS_OK);
	assert_int_equal(n, 1);
	assert_int_equal(ttl, 30);
	struct mx_list l;
	struct mx_rng rng;
	mx_list_init(&l);
	mx_rng_seed(&rng, 1);
	assert_int_equal(mx_order(rrs, n, &rng, &l), MX_ENULLMX);
	for (size_t len = 0; len < sizeof(nullmx); len++) {
		enum mx_dns d = resolver_parse_mx_answer(nullmx, len, rrs, 4, &n, &ttl);
		assert_true(d == MX_DNS_MALFORMED || d == MX_DNS_NODATA);
	}
	struct mx_host h = {0};
	ttl = MX_TTL_MAX;
	assert_int_equal(resolver_parse_addr_answer(nullmx, sizeof(nullmx), AF_INET, &h, &ttl),
			 MX_DNS_NODATA);
	assert_int_equal(h.naddrs, 0);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_requires_servers),
	    cmocka_unit_test(test_parse_adapters),
	    cmocka_unit_test(test_mx_table),
	    cmocka_unit_test(test_mx_shuffle),
	    cmocka_unit_test(test_timeout_is_temporary),
	    cmocka_unit_test(test_close_cancels),
	    cmocka_unit_test(test_cache_ttl),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
