/*
 * test_resolver_dnssec.c - the resolver's DNSSEC bits (resolver.h option dnssec_ad) and its raw
 * queries, against a scripted DNS server in a thread of this test on 127.0.0.1 (an ephemeral
 * port): it answers a few names, sets AD in an answer exactly when the query carried AD (as a
 * validating resolver does for secure data, RFC 6840 5.7) except for names of the zone
 * "insecure.test", and notes whether each query carried AD.
 *
 *   secure.test MX 10 mx.secure.test      mx.secure.test A 127.0.0.31, AAAA none
 *   insecure.test MX 10 mx.secure.test    (never AD)
 *   noaddr-ad.test: no MX (NODATA), A 127.0.0.32 (implicit MX)
 *   _25._tcp.mx.secure.test TLSA 3 1 1 (32 bytes)
 *   nx.test NXDOMAIN                      fail.test SERVFAIL
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "dane.h"
#include "resolver.h"

static int srv_fd = -1;
static char servers[64];
static pthread_t srv_thread;
static atomic_int queries_with_ad, queries_without_ad;

/* Reads the question name (no compression in queries) into out as "a.b.c". */
static size_t
read_qname(const uint8_t *q, size_t len, size_t off, char *out, size_t cap)
{
	size_t o = 0;
	while (off < len && q[off] != 0) {
		size_t l = q[off++];
		if (off + l > len || o + l + 2 > cap)
			return 0;
		if (o)
			out[o++] = '.';
		memcpy(out + o, q + off, l);
		o += l;
		off += l;
	}
	out[o] = '\0';
	return off + 1;
}

static void
put_rr(uint8_t *b, size_t *n, uint16_t type, const void *rdata, uint16_t rdlen)
{
	uint8_t h[12] = {0xc0, 0x0c, (uint8_t)(type >> 8),  (uint8_t)type, 0, 1, 0, 0,
			 0,    60,   (uint8_t)(rdlen >> 8), (uint8_t)rdlen};
	memcpy(b + *n, h, sizeof(h));
	*n += sizeof(h);
	memcpy(b + *n, rdata, rdlen);
	*n += rdlen;
}

static void *
srv_main(void *arg)
{
	(void)arg;
	for (;;) {
		uint8_t q[512], a[1024];
		struct sockaddr_in from;
		socklen_t fl = sizeof(from);
		ssize_t len = recvfrom(srv_fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fl);
		if (len < 0)
			return NULL; /* closed */
		if (len < 17)
			continue;
		bool ad = (q[3] & 0x20) != 0;
		atomic_fetch_add(ad ? &queries_with_ad : &queries_without_ad, 1);
		char name[256];
		size_t off = read_qname(q, (size_t)len, 12, name, sizeof(name));
		if (off == 0 || off + 4 > (size_t)len)
			continue;
		uint16_t qtype = (uint16_t)(q[off] << 8 | q[off + 1]);
		size_t n = off + 4;
		memcpy(a, q, n);
		a[2] = (uint8_t)(0x84 | (q[2] & 0x01)); /* QR, AA, RD copied */
		a[3] = 0x80;				/* RA */
		a[6] = a[7] = a[8] = a[9] = a[10] = a[11] = 0;
		unsigned rcode = 0, an = 0;
		bool secure = strstr(name, "insecure.test") == NULL;
		if (strcmp(name, "secure.test") == 0 || strcmp(name, "insecure.test") == 0) {
			if (qtype == 15) {
				static const uint8_t mx[] = {0,	  10,  2,   'm', 'x', 6,
							     's', 'e', 'c', 'u', 'r', 'e',
							     4,	  't', 'e', 's', 't', 0};
				put_rr(a, &n, 15, mx, sizeof(mx));
				an++;
			}
		} else if (strcmp(name, "mx.secure.test") == 0) {
			if (qtype == 1) {
				static const uint8_t v4[] = {127, 0, 0, 31};
				put_rr(a, &n, 1, v4, 4);
				an++;
			}
		} else if (strcmp(name, "noaddr-ad.test") == 0) {
			if (qtype == 1) {
				static const uint8_t v4[] = {127, 0, 0, 32};
				put_rr(a, &n, 1, v4, 4);
				an++;
			}
		} else if (strcmp(name, "_25._tcp.mx.secure.test") == 0) {
			if (qtype == 52) {
				uint8_t t[35] = {3, 1, 1};
				memset(t + 3, 0x5a, 32);
				put_rr(a, &n, 52, t, sizeof(t));
				an++;
			}
		} else if (strcmp(name, "fail.test") == 0) {
			rcode = 2;
		} else {
			rcode = 3;
		}
		a[3] |= (uint8_t)rcode;
		if (ad && secure && rcode != 2)
			a[3] |= 0x20;
		a[7] = (uint8_t)an;
		sendto(srv_fd, a, n, 0, (struct sockaddr *)&from, fl);
	}
}

static int
group_setup(void **state)
{
	(void)state;
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	srv_fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (srv_fd < 0 || bind(srv_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return -1;
	getsockname(srv_fd, (struct sockaddr *)&sa, &sl);
	snprintf(servers, sizeof(servers), "127.0.0.1:%d", ntohs(sa.sin_port));
	return pthread_create(&srv_thread, NULL, srv_main, NULL);
}

static int
group_teardown(void **state)
{
	(void)state;
	shutdown(srv_fd, SHUT_RDWR);
	close(srv_fd);
	pthread_join(srv_thread, NULL);
	return 0;
}

struct result {
	int calls, status;
	struct mx_list list;
	/* raw */
	enum mx_dns res;
	bool ad;
	struct dane_rrset set;
	int parsed;
};

static void
list_cb(void *arg, int status, const struct mx_list *list)
{
	struct result *r = arg;
	r->calls++;
	r->status = status;
	if (list)
		r->list = *list;
}

static void
raw_cb(void *arg, int status, enum mx_dns res, bool ad, const uint8_t *abuf, size_t alen)
{
	struct result *r = arg;
	r->calls++;
	r->status = status;
	r->res = res;
	r->ad = ad;
	r->parsed = abuf ? dane_parse_tlsa(abuf, alen, &r->set) : -100;
}

static void
run_until(uv_loop_t *loop, int *calls)
{
	uint64_t deadline = uv_now(loop) + 10000;
	while (*calls < 1 && uv_now(loop) < deadline) {
		uv_run(loop, UV_RUN_ONCE);
		uv_update_time(loop);
	}
	assert_int_equal(*calls, 1);
}

static struct resolver *
make(uv_loop_t *loop, bool dnssec)
{
	struct resolver_options o = {.servers = servers, .tries = 1, .dnssec_ad = dnssec};
	struct resolver *r = NULL;
	assert_int_equal(resolver_new(loop, &o, &r), 0);
	return r;
}

static void
done(uv_loop_t *loop, struct resolver *r)
{
	resolver_close(r);
	uv_run(loop, UV_RUN_DEFAULT);
	uv_loop_close(loop);
}

static void
test_secure_flags(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, true);
	int before = atomic_load(&queries_without_ad);
	struct result a = {0}, b = {0}, c = {0};

	assert_int_equal(resolver_mx(r, "secure.test", list_cb, &a), 0);
	run_until(&loop, &a.calls);
	assert_int_equal(a.status, 0);
	assert_true(a.list.secure);
	assert_int_equal(a.list.nhosts, 1);
	assert_true(a.list.hosts[0].secure); /* A with data and AAAA NODATA, both AD */

	assert_int_equal(resolver_mx(r, "insecure.test", list_cb, &b), 0);
	run_until(&loop, &b.calls);
	assert_int_equal(b.status, 0);
	assert_false(b.list.secure);	     /* the MX answer had no AD */
	assert_true(b.list.hosts[0].secure); /* its host's answers did */

	assert_int_equal(resolver_mx(r, "noaddr-ad.test", list_cb, &c), 0);
	run_until(&loop, &c.calls);
	assert_int_equal(c.status, 0);
	assert_true(c.list.secure); /* the NODATA for MX was secure: implicit MX */
	assert_true(c.list.hosts[0].implicit);
	assert_int_equal(atomic_load(&queries_without_ad), before); /* every query asked AD */

	/* NXDOMAIN and SERVFAIL keep their meaning on the ares_send path */
	struct result d = {0}, e = {0};
	assert_int_equal(resolver_mx(r, "nx.test", list_cb, &d), 0);
	run_until(&loop, &d.calls);
	assert_int_equal(d.status, MX_ENXDOMAIN);
	assert_int_equal(resolver_mx(r, "fail.test", list_cb, &e), 0);
	run_until(&loop, &e.calls);
	assert_int_equal(e.status, MX_ETEMP);
	done(&loop, r);
}

static void
test_without_dnssec_nothing_is_secure(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, false);
	int before = atomic_load(&queries_with_ad);
	struct result a = {0}, t = {0};
	assert_int_equal(resolver_mx(r, "secure.test", list_cb, &a), 0);
	run_until(&loop, &a.calls);
	assert_int_equal(a.status, 0);
	assert_false(a.list.secure);
	assert_false(a.list.hosts[0].secure);
	assert_int_equal(resolver_raw(r, "_25._tcp.mx.secure.test", 52, raw_cb, &t), 0);
	run_until(&loop, &t.calls);
	assert_int_equal(t.res, MX_DNS_OK);
	assert_false(t.ad);
	assert_int_equal(atomic_load(&queries_with_ad), before);
	/* resolver_host: the caller's name counts as authenticated, its addresses do not */
	struct result h = {0};
	assert_int_equal(resolver_host(r, "mx.secure.test", list_cb, &h), 0);
	run_until(&loop, &h.calls);
	assert_true(h.list.secure);
	assert_false(h.list.hosts[0].secure);
	done(&loop, r);
}

static void
test_raw_queries(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	struct resolver *r = make(&loop, true);
	struct result t = {0}, nx = {0}, nd = {0}, f = {0};

	assert_int_equal(resolver_raw(r, "_25._tcp.mx.secure.test", 52, raw_cb, &t), 0);
	run_until(&loop, &t.calls);
	assert_int_equal(t.status, 0);
	assert_int_equal(t.res, MX_DNS_OK);
	assert_true(t.ad);
	assert_int_equal(t.parsed, 0);
	assert_int_equal(t.set.n, 1);
	assert_int_equal(dane_classify(t.res, t.ad, &t.set), TLSP_DANE_USABLE);

	assert_int_equal(resolver_raw(r, "_25._tcp.nothing.test", 52, raw_cb, &nx), 0);
	run_until(&loop, &nx.calls);
	assert_int_equal(nx.res, MX_DNS_NXDOMAIN);
	assert_true(nx.ad); /* a secure denial */
	assert_int_equal(dane_classify(nx.res, nx.ad, NULL), TLSP_DANE_NONE);

	assert_int_equal(resolver_raw(r, "mx.secure.test", 52, raw_cb, &nd), 0);
	run_until(&loop, &nd.calls);
	assert_int_equal(nd.res, MX_DNS_NODATA);

	assert_int_equal(resolver_raw(r, "fail.test", 52, raw_cb, &f), 0);
	run_until(&loop, &f.calls);
	assert_int_equal(f.res, MX_DNS_TEMP);
	assert_int_equal(dane_classify(f.res, f.ad, NULL), TLSP_DANE_FAILED);

	assert_int_equal(resolver_raw(r, "bad name", 52, raw_cb, &f), -EINVAL);

	/* close with a query in flight: canceled, called back once from the close */
	struct result c = {0};
	assert_int_equal(resolver_raw(r, "secure.test", 16, raw_cb, &c), 0);
	resolver_close(r);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.status, MX_ECANCELED);
	uv_loop_close(&loop);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_secure_flags),
	    cmocka_unit_test(test_without_dnssec_nothing_is_secure),
	    cmocka_unit_test(test_raw_queries),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
