/*
 * test_mx.c - table tests of MX ordering (RFC 5321 5.1, RFC 7505) and the
 * raw-answer TTL walker.
 */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "mx.h"

struct order_case {
	const char *name;
	size_t n;
	struct mx_rr rrs[12];
	int want_rc;
	const char *want; /* names joined by ',' (seed 1) */
};

static const struct order_case order_cases[] = {
    {"single", 1, {{10, "mx.example.org"}}, 0, "mx.example.org"},
    {"sorted",
     3,
     {{30, "c.example"}, {10, "a.example"}, {20, "b.example"}},
     0,
     "a.example,b.example,c.example"},
    {"null mx", 1, {{0, "."}}, MX_ENULLMX, NULL},
    {"null mx empty name", 1, {{0, ""}}, MX_ENULLMX, NULL},
    {"dot with pref 10 is not null mx", 1, {{10, "."}}, MX_EMALFORMED, NULL},
    {"dot among others ignored", 2, {{0, "."}, {10, "a.example"}}, 0, "a.example"},
    {"dedup case and trailing dot",
     3,
     {{10, "A.Example."}, {20, "a.example"}, {30, "b.example"}},
     0,
     "a.example,b.example"},
    {"bad bytes skipped", 2, {{5, "bad host"}, {10, "ok.example"}}, 0, "ok.example"},
    {"only garbage", 1, {{5, "bad\x01"}}, MX_EMALFORMED, NULL},
    {"zero records", 0, {{0, ""}}, MX_EMALFORMED, NULL},
    {"cap at MX_MAX_HOSTS",
     12,
     {{1, "h1"},
      {2, "h2"},
      {3, "h3"},
      {4, "h4"},
      {5, "h5"},
      {6, "h6"},
      {7, "h7"},
      {8, "h8"},
      {9, "h9"},
      {10, "h10"},
      {11, "h11"},
      {12, "h12"}},
     0,
     "h1,h2,h3,h4,h5,h6,h7,h8,h9,h10"},
};

static void
join_names(const struct mx_list *l, char *buf, size_t size)
{
	buf[0] = '\0';
	for (size_t i = 0; i < l->nhosts; i++) {
		if (i)
			strncat(buf, ",", size - strlen(buf) - 1);
		strncat(buf, l->hosts[i].name, size - strlen(buf) - 1);
	}
}

static void
test_order_table(void **state)
{
	for (size_t i = 0; i < sizeof(order_cases) / sizeof(order_cases[0]); i++) {
		const struct order_case *c = &order_cases[i];
		struct mx_list l;
		struct mx_rng rng;
		char got[1024];
		mx_list_init(&l);
		mx_rng_seed(&rng, 1);
		int rc = mx_order(c->rrs, c->n, &rng, &l);
		print_message("case %s rc=%d\n", c->name, rc);
		assert_int_equal(rc, c->want_rc);
		if (c->want) {
			join_names(&l, got, sizeof(got));
			assert_string_equal(got, c->want);
		}
	}
}

/* Equal preferences are shuffled, deterministically per seed, and every
 * permutation shows up over many seeds; other preferences stay in order. */
static void
test_equal_pref_shuffle(void **state)
{
	struct mx_rr rrs[4] = {{10, "a"}, {10, "b"}, {10, "c"}, {20, "z"}};
	int seen_first[3] = {0};

	for (uint64_t seed = 0; seed < 300; seed++) {
		struct mx_list l1, l2;
		struct mx_rng r1, r2;
		char g1[256], g2[256];
		mx_list_init(&l1);
		mx_list_init(&l2);
		mx_rng_seed(&r1, seed);
		mx_rng_seed(&r2, seed);
		assert_int_equal(mx_order(rrs, 4, &r1, &l1), 0);
		assert_int_equal(mx_order(rrs, 4, &r2, &l2), 0);
		join_names(&l1, g1, sizeof(g1));
		join_names(&l2, g2, sizeof(g2));
		assert_string_equal(g1, g2);
		assert_int_equal(l1.nhosts, 4);
		assert_string_equal(l1.hosts[3].name, "z");
		assert_int_equal(l1.hosts[0].pref, 10);
		seen_first[l1.hosts[0].name[0] - 'a']++;
	}
	for (int i = 0; i < 3; i++)
		assert_true(seen_first[i] > 50);
}

static void
test_implicit_and_finish(void **state)
{
	struct mx_list l;
	uint8_t v4[4] = {192, 0, 2, 1}, v4b[4] = {192, 0, 2, 2};
	uint8_t v6[16] = {0x20, 0x01, 0x0d, 0xb8};

	mx_list_init(&l);
	assert_int_equal(mx_implicit("Example.ORG.", &l), 0);
	assert_int_equal(l.nhosts, 1);
	assert_true(l.hosts[0].implicit);
	assert_string_equal(l.hosts[0].name, "example.org");
	assert_int_equal(mx_implicit("", &l), MX_EINVAL);

	mx_list_init(&l);
	assert_int_equal(mx_implicit("example.org", &l), 0);
	assert_int_equal(mx_finish(&l), MX_ENOADDR);

	mx_list_init(&l);
	mx_implicit("example.org", &l);
	mx_host_note_dns(&l.hosts[0], MX_DNS_TEMP);
	assert_int_equal(mx_finish(&l), MX_ETEMP);
	assert_false(mx_is_permanent(MX_ETEMP));
	assert_true(mx_is_permanent(MX_ENOADDR));

	/* addresses: dedup and cap */
	mx_list_init(&l);
	mx_implicit("example.org", &l);
	assert_int_equal(mx_host_add_addr(&l.hosts[0], AF_INET, v4), 0);
	assert_int_equal(mx_host_add_addr(&l.hosts[0], AF_INET, v4), 0);
	assert_int_equal(mx_host_add_addr(&l.hosts[0], AF_INET6, v6), 0);
	assert_int_equal(mx_host_add_addr(&l.hosts[0], 99, v6), MX_EINVAL);
	assert_int_equal(l.hosts[0].naddrs, 2);
	for (int i = 0; i < 20; i++) {
		v4b[3] = (uint8_t)(10 + i);
		mx_host_add_addr(&l.hosts[0], AF_INET, v4b);
	}
	assert_int_equal(l.hosts[0].naddrs, MX_MAX_ADDRS);
	assert_int_equal(mx_finish(&l), 0);
	char buf[512];
	mx_list_format(&l, buf, sizeof(buf));
	assert_non_null(strstr(buf, "192.0.2.1,2001:db8::"));

	/* finish drops hosts without addresses, keeps order */
	struct mx_rr rrs[3] = {{10, "a"}, {20, "b"}, {30, "c"}};
	struct mx_rng rng;
	mx_rng_seed(&rng, 7);
	mx_list_init(&l);
	mx_order(rrs, 3, &rng, &l);
	mx_host_add_addr(&l.hosts[0], AF_INET, v4);
	mx_host_add_addr(&l.hosts[2], AF_INET, v4b);
	assert_int_equal(mx_finish(&l), 0);
	assert_int_equal(l.nhosts, 2);
	assert_string_equal(l.hosts[0].name, "a");
	assert_string_equal(l.hosts[1].name, "c");
}

static void
test_classify(void **state)
{
	static const struct {
		enum mx_dns res;
		size_t n;
		int want;
	} t[] = {
	    {MX_DNS_OK, 2, 1},		{MX_DNS_OK, 0, 2},
	    {MX_DNS_NODATA, 0, 2},	{MX_DNS_NXDOMAIN, 0, MX_ENXDOMAIN},
	    {MX_DNS_TEMP, 0, MX_ETEMP}, {MX_DNS_MALFORMED, 0, MX_EMALFORMED},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		assert_int_equal(mx_classify_mx_query(t[i].res, t[i].n), t[i].want);
	assert_string_equal(mx_status_code(MX_ENULLMX), "5.1.10");
	assert_string_equal(mx_status_code(MX_ENXDOMAIN), "5.1.2");
	assert_string_equal(mx_status_code(MX_ETEMP), "4.4.3");
	assert_string_equal(mx_strerror(0), "ok");
}

/* A hand-built answer: example.org MX 10 mx.example.org, TTLs 300 and 60. */
static const uint8_t answer[] = {
    0x12, 0x34, 0x81, 0x80, 0,	  1,   0,   2, 0,  0,  0,   0,	 7,    'e', 'x',  'a', 'm',
    'p',  'l',	'e',  3,    'o',  'r', 'g', 0, 0,  15, 0,   1,	 0xc0, 12,  0,	  15,  0,
    1,	  0,	0,    0x01, 0x2c, 0,   7,   0, 10, 2,  'm', 'x', 0xc0, 12,  0xc0, 12,  0,
    15,	  0,	1,    0,    0,	  0,   60,  0, 7,  0,  20,  2,	 'm',  'y', 0xc0, 12,
};

static void
test_min_ttl(void **state)
{
	uint32_t ttl = 0;
	assert_int_equal(mx_answer_min_ttl(answer, sizeof(answer), &ttl), 0);
	assert_int_equal(ttl, 60);
	/* every truncation is either malformed or fine, never a crash */
	for (size_t n = 0; n < sizeof(answer); n++) {
		int rc = mx_answer_min_ttl(answer, n, &ttl);
		assert_true(rc == 0 || rc == MX_EMALFORMED);
	}
	assert_int_equal(mx_answer_min_ttl(answer, 11, &ttl), MX_EMALFORMED);
	uint8_t noans[] = {0, 0, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0};
	assert_int_equal(mx_answer_min_ttl(noans, sizeof(noans), &ttl), 0);
	assert_int_equal(ttl, MX_TTL_DEFAULT);
}

/* A list of hosts "name pref addr" (IPv4 or IPv6 text, one address each). */
static void
make_list(struct mx_list *l, const char *const *spec, size_t n)
{
	mx_list_init(l);
	for (size_t i = 0; i < n; i++) {
		struct mx_host *h = &l->hosts[l->nhosts++];
		char name[64], addr[64];
		unsigned pref;
		memset(h, 0, sizeof(*h));
		assert_int_equal(sscanf(spec[i], "%63s %u %63s", name, &pref, addr), 3);
		snprintf(h->name, sizeof(h->name), "%s", name);
		h->pref = (uint16_t)pref;
		uint8_t a[16];
		if (inet_pton(AF_INET, addr, a) == 1)
			mx_host_add_addr(h, AF_INET, a);
		else {
			assert_int_equal(inet_pton(AF_INET6, addr, a), 1);
			mx_host_add_addr(h, AF_INET6, a);
		}
	}
}

/* Loop detection (issue 12 sec. 2): our own endpoints are never a destination; neither is any
 * host as preferred or less preferred than the best of them (RFC 5321 5.1). */
static void
test_drop_self(void **state)
{
	(void)state;
	static struct mx_self self;
	static struct mx_list l;
	uint8_t lo[4] = {127, 0, 0, 0}, own[4] = {192, 0, 2, 25}, v6[16];
	self.n = 0;
	mx_self_add(&self, AF_INET, lo, 8, 25);   /* a wildcard listener on port 25 */
	mx_self_add(&self, AF_INET, own, 32, 25); /* an interface / own_addresses */
	inet_pton(AF_INET6, "2001:db8::25", v6);
	mx_self_add(&self, AF_INET6, v6, 128, 2525);

	const char *mine[] = {"mx.self 10 127.0.0.1"};
	make_list(&l, mine, 1);
	assert_int_equal(mx_drop_self(&l, 25, &self), 1);
	assert_int_equal(l.nhosts, 0); /* loops back to myself */

	const char *other_port[] = {"filter 10 127.0.0.1"};
	make_list(&l, other_port, 1);
	assert_int_equal(mx_drop_self(&l, 10025, &self), 0); /* a filter on another port */
	assert_int_equal(l.nhosts, 1);

	const char *backup[] = {"a 10 198.51.100.1", "b 20 127.0.0.53", "c 20 198.51.100.3",
				"d 30 198.51.100.4"};
	make_list(&l, backup, 4);
	assert_int_equal(mx_drop_self(&l, 25, &self), 3); /* we are pref 20: only a is left */
	assert_int_equal(l.nhosts, 1);
	assert_string_equal(l.hosts[0].name, "a");

	const char *best[] = {"me 5 ::ffff:192.0.2.25", "b 10 198.51.100.2"};
	make_list(&l, best, 2);
	assert_int_equal(mx_drop_self(&l, 25, &self), 2); /* v4-mapped counts as IPv4 */
	assert_int_equal(l.nhosts, 0);

	const char *six[] = {"a 10 2001:db8::25", "b 10 2001:db8::26"};
	make_list(&l, six, 2);
	assert_int_equal(mx_drop_self(&l, 25, &self), 0);
	assert_int_equal(mx_drop_self(&l, 2525, &self), 2); /* equal preference goes too */

	const char *none[] = {"a 10 198.51.100.1", "b 20 198.51.100.2"};
	make_list(&l, none, 2);
	assert_int_equal(mx_drop_self(&l, 25, &self), 0);
	assert_int_equal(l.nhosts, 2);
	/* bounded: entries past MX_SELF_MAX are ignored, never written */
	for (size_t i = 0; i < MX_SELF_MAX + 5; i++)
		mx_self_add(&self, AF_INET, own, 32, 1000 + (unsigned)i);
	assert_int_equal(self.n, MX_SELF_MAX);
	mx_self_add(&self, AF_INET, own, 33, 1); /* bad prefix: ignored */
	assert_int_equal(self.n, MX_SELF_MAX);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_order_table),
	    cmocka_unit_test(test_equal_pref_shuffle),
	    cmocka_unit_test(test_implicit_and_finish),
	    cmocka_unit_test(test_classify),
	    cmocka_unit_test(test_min_ttl),
	    cmocka_unit_test(test_drop_self),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
