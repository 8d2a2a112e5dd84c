/*
 * test_outbound_tls.c - the pure cores of outbound TLS: the decision table (tls_policy.h), TLSA
 * records (dane.h), MTA-STS records and policies (mta_sts.h), and the answer walker they share
 * (mx_answer_each).  Tables of cases; DNS messages are built byte by byte here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "dane.h"
#include "mta_sts.h"
#include "tls_policy.h"

/* ------------------------------------------------------------ a tiny DNS message builder */

struct msg {
	uint8_t b[8192];
	size_t n;
};

static void
put(struct msg *m, const void *p, size_t n)
{
	assert_true(m->n + n <= sizeof(m->b));
	memcpy(m->b + m->n, p, n);
	m->n += n;
}

static void
put16(struct msg *m, unsigned v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	put(m, b, 2);
}

static void
put32(struct msg *m, uint32_t v)
{
	put16(m, v >> 16);
	put16(m, v & 0xffff);
}

static void
put_name(struct msg *m, const char *name)
{
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);
		uint8_t len = (uint8_t)l;
		put(m, &len, 1);
		put(m, name, l);
		name += l + (dot ? 1 : 0);
	}
	put(m, "", 1);
}

/* Header + question; ancount patched by add_rr. */
static void
msg_start(struct msg *m, const char *qname, unsigned qtype, unsigned rcode, bool ad)
{
	m->n = 0;
	put16(m, 0x1234);
	put16(m, 0x8180 | (ad ? 0x20 : 0) | rcode);
	put16(m, 1);
	put16(m, 0);
	put16(m, 0);
	put16(m, 0);
	put_name(m, qname);
	put16(m, qtype);
	put16(m, 1);
}

/* An answer record owned by the question's name (compression pointer to offset 12). */
static void
add_rr(struct msg *m, unsigned type, uint32_t ttl, const void *rdata, size_t rdlen)
{
	put16(m, 0xc00c);
	put16(m, type);
	put16(m, 1);
	put32(m, ttl);
	put16(m, (unsigned)rdlen);
	put(m, rdata, rdlen);
	unsigned an = (unsigned)(m->b[6] << 8 | m->b[7]) + 1;
	m->b[6] = (uint8_t)(an >> 8);
	m->b[7] = (uint8_t)an;
}

static void
add_tlsa(struct msg *m, uint8_t u, uint8_t s, uint8_t t, size_t dlen, uint32_t ttl)
{
	uint8_t rd[600];
	assert_true(dlen + 3 <= sizeof(rd));
	rd[0] = u;
	rd[1] = s;
	rd[2] = t;
	memset(rd + 3, 0xab, dlen);
	add_rr(m, 52, ttl, rd, dlen + 3);
}

static void
add_txt(struct msg *m, const char *const *strings, size_t n)
{
	uint8_t rd[1024];
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(strings[i]);
		rd[o++] = (uint8_t)l;
		memcpy(rd + o, strings[i], l);
		o += l;
	}
	add_rr(m, 16, 300, rd, o);
}

/* ------------------------------------------------------------ tls_policy */

static void
test_levels_agree_with_config(void **state)
{
	static const char *const names[] = {CONFIG_TLS_LEVELS};
	(void)state;
	assert_int_equal(sizeof(names) / sizeof(names[0]), TLSP_NLEVELS);
	for (size_t i = 0; i < TLSP_NLEVELS; i++) {
		enum tls_policy_level lv;
		assert_int_equal(tls_policy_level_parse(names[i], &lv), 0);
		assert_int_equal(lv, (int)i);
		assert_string_equal(tls_policy_level_name(lv), names[i]);
	}
	enum tls_policy_level lv;
	assert_int_equal(tls_policy_level_parse("strict", &lv), -1);
	assert_int_equal(tls_policy_level_parse("", &lv), -1);
	assert_int_equal(tls_policy_level_parse("DANE", &lv), -1);
}

static void
test_level_for_domain(void **state)
{
	char *policy[] = {"a.test=verify", "b.test=dane-only", "c.test=may", "bad.test=strict"};
	char *required[] = {"c.test", "d.test"};
	(void)state;
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "a.test"), TLSP_VERIFY);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "B.TEST"), TLSP_DANE_ONLY);
	/* tls_policy names it: its level, not tls_required_domains' */
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "c.test"), TLSP_MAY);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "d.test"), TLSP_ENCRYPT);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "x.a.test"), TLSP_MAY);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "a.tes"), TLSP_MAY);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, "bad.test"), TLSP_MAY);
	assert_int_equal(tls_policy_for_domain(policy, 4, required, 2, ""), TLSP_MAY);
}

#define SKIP 1
#define REQ 2
#define RPT 4

static void
test_plan_table(void **state)
{
	static const struct {
		enum tls_policy_level level;
		bool dnssec;
		enum tls_dane_state dane;
		enum tls_sts_mode sts;
		bool match;
		unsigned flags; /* SKIP, REQ, RPT */
		enum tls_plan_auth auth;
		enum tls_plan_reason why;
	} t[] = {
	    /* plain levels */
	    {TLSP_MAY, false, TLSP_DANE_NA, TLSP_STS_NONE, false, 0, TLSP_AUTH_NONE, TLSP_R_LEVEL},
	    {TLSP_ENCRYPT, false, TLSP_DANE_NA, TLSP_STS_NONE, false, REQ, TLSP_AUTH_NONE,
	     TLSP_R_LEVEL},
	    {TLSP_VERIFY, false, TLSP_DANE_NA, TLSP_STS_NONE, false, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_LEVEL},
	    /* DANE applies */
	    {TLSP_DANE, true, TLSP_DANE_USABLE, TLSP_STS_NONE, false, REQ, TLSP_AUTH_DANE,
	     TLSP_R_DANE},
	    {TLSP_DANE_ONLY, true, TLSP_DANE_USABLE, TLSP_STS_NONE, false, REQ, TLSP_AUTH_DANE,
	     TLSP_R_DANE},
	    {TLSP_DANE, true, TLSP_DANE_FAILED, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_TLSA_FAILED},
	    {TLSP_DANE_ONLY, true, TLSP_DANE_FAILED, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_TLSA_FAILED},
	    {TLSP_DANE, true, TLSP_DANE_UNUSABLE, TLSP_STS_NONE, false, REQ, TLSP_AUTH_NONE,
	     TLSP_R_DANE_UNAUTHENTICATED},
	    {TLSP_DANE_ONLY, true, TLSP_DANE_UNUSABLE, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_TLSA_UNUSABLE},
	    {TLSP_DANE, true, TLSP_DANE_NONE, TLSP_STS_NONE, false, 0, TLSP_AUTH_NONE,
	     TLSP_R_LEVEL},
	    {TLSP_DANE, true, TLSP_DANE_INSECURE, TLSP_STS_NONE, false, 0, TLSP_AUTH_NONE,
	     TLSP_R_LEVEL},
	    {TLSP_DANE_ONLY, true, TLSP_DANE_NONE, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_TLSA_MISSING},
	    {TLSP_DANE_ONLY, true, TLSP_DANE_INSECURE, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_TLSA_MISSING},
	    /* DANE does not apply (insecure MX/addresses, or dns_dnssec_trusted off) */
	    {TLSP_DANE, false, TLSP_DANE_USABLE, TLSP_STS_NONE, false, 0, TLSP_AUTH_NONE,
	     TLSP_R_LEVEL},
	    {TLSP_DANE_ONLY, false, TLSP_DANE_USABLE, TLSP_STS_NONE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_DNSSEC_INSECURE},
	    {TLSP_DANE_ONLY, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, true, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_DNSSEC_INSECURE},
	    /* MTA-STS enforce */
	    {TLSP_MAY, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, true, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_STS},
	    {TLSP_MAY, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_STS_MX_MISMATCH},
	    {TLSP_ENCRYPT, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, true, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_STS},
	    {TLSP_VERIFY, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, true, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_LEVEL},
	    {TLSP_VERIFY, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_STS_MX_MISMATCH},
	    /* DANE wins where it applies (RFC 8461 2); elsewhere the policy holds */
	    {TLSP_DANE, true, TLSP_DANE_USABLE, TLSP_STS_ENFORCE, false, REQ, TLSP_AUTH_DANE,
	     TLSP_R_DANE},
	    {TLSP_DANE, true, TLSP_DANE_NONE, TLSP_STS_ENFORCE, true, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_STS},
	    {TLSP_DANE, false, TLSP_DANE_NA, TLSP_STS_ENFORCE, false, SKIP, TLSP_AUTH_NONE,
	     TLSP_R_STS_MX_MISMATCH},
	    /* MTA-STS testing: check and report only */
	    {TLSP_MAY, false, TLSP_DANE_NA, TLSP_STS_TESTING, true, RPT, TLSP_AUTH_PKIX,
	     TLSP_R_LEVEL},
	    {TLSP_ENCRYPT, false, TLSP_DANE_NA, TLSP_STS_TESTING, false, REQ | RPT, TLSP_AUTH_PKIX,
	     TLSP_R_LEVEL},
	    {TLSP_VERIFY, false, TLSP_DANE_NA, TLSP_STS_TESTING, false, REQ, TLSP_AUTH_PKIX,
	     TLSP_R_LEVEL},
	};
	(void)state;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct tls_host_facts f = {.level = t[i].level,
					   .dnssec_ok = t[i].dnssec,
					   .dane = t[i].dane,
					   .sts = t[i].sts,
					   .sts_mx_match = t[i].match};
		struct tls_host_plan p;
		tls_policy_plan(&f, &p);
		print_message("case %zu\n", i);
		assert_int_equal(p.skip, (t[i].flags & SKIP) != 0);
		assert_int_equal(p.required, (t[i].flags & REQ) != 0);
		assert_int_equal(p.report_only, (t[i].flags & RPT) != 0);
		assert_int_equal(p.auth, t[i].auth);
		assert_int_equal(p.why, t[i].why);
		if (t[i].sts == TLSP_STS_TESTING && p.report_only)
			assert_int_equal(p.report_mx_mismatch, !t[i].match);
		assert_true(tls_policy_reason_text(p.why)[0] != '\0');
	}
}

/* ------------------------------------------------------------ dane */

static void
test_tlsa_qname_and_usable(void **state)
{
	char q[DANE_QNAME_MAX + 1];
	(void)state;
	assert_int_equal(dane_tlsa_qname("MX1.Example.ORG.", 25, q, sizeof(q)), 0);
	assert_string_equal(q, "_25._tcp.mx1.example.org");
	assert_int_equal(dane_tlsa_qname("", 25, q, sizeof(q)), -1);
	assert_int_equal(dane_tlsa_qname("bad host", 25, q, sizeof(q)), -1);
	assert_int_equal(dane_tlsa_qname("a.test", 0, q, sizeof(q)), -1);

	assert_true(dane_tlsa_usable(3, 1, 1, 32));
	assert_true(dane_tlsa_usable(3, 0, 2, 64));
	assert_true(dane_tlsa_usable(2, 0, 0, 900));
	assert_true(dane_tlsa_usable(2, 1, 1, 32));
	assert_false(dane_tlsa_usable(0, 0, 1, 32)); /* PKIX-TA: RFC 7672 3.1.3 */
	assert_false(dane_tlsa_usable(1, 1, 1, 32)); /* PKIX-EE */
	assert_false(dane_tlsa_usable(4, 1, 1, 32));
	assert_false(dane_tlsa_usable(3, 2, 1, 32));
	assert_false(dane_tlsa_usable(3, 1, 3, 32));
	assert_false(dane_tlsa_usable(3, 1, 1, 31)); /* SHA-256 is 32 bytes */
	assert_false(dane_tlsa_usable(3, 1, 2, 32)); /* SHA-512 is 64 */
	assert_false(dane_tlsa_usable(3, 1, 0, 0));
	assert_false(dane_tlsa_usable(3, 0, 0, DANE_TLSA_DATA_MAX + 1));
}

static void
test_tlsa_parse_and_classify(void **state)
{
	struct msg m;
	struct dane_rrset set;
	(void)state;
	msg_start(&m, "_25._tcp.mx.test", 52, 0, true);
	add_tlsa(&m, 3, 1, 1, 32, 600);
	add_tlsa(&m, 1, 1, 1, 32, 300); /* PKIX-EE: counted, not kept */
	add_tlsa(&m, 2, 0, 2, 64, 900);
	add_rr(&m, 52, 100, "\x03\x01", 2); /* too short: not usable */
	assert_int_equal(dane_parse_tlsa(m.b, m.n, &set), 0);
	assert_int_equal(set.nall, 4);
	assert_int_equal(set.n, 2);
	assert_int_equal(set.ttl, 100);
	assert_int_equal(set.rr[0].usage, 3);
	assert_int_equal(set.rr[0].len, 32);
	assert_int_equal(set.rr[1].mtype, 2);
	assert_int_equal(set.rr[1].data[63], 0xab);
	assert_int_equal(dane_classify(MX_DNS_OK, true, &set), TLSP_DANE_USABLE);
	assert_int_equal(dane_classify(MX_DNS_OK, false, &set), TLSP_DANE_INSECURE);

	/* only unusable records */
	msg_start(&m, "_25._tcp.mx.test", 52, 0, true);
	add_tlsa(&m, 0, 0, 1, 32, 600);
	assert_int_equal(dane_parse_tlsa(m.b, m.n, &set), 0);
	assert_int_equal(set.n, 0);
	assert_int_equal(dane_classify(MX_DNS_OK, true, &set), TLSP_DANE_UNUSABLE);

	/* more usable records than kept */
	msg_start(&m, "_25._tcp.mx.test", 52, 0, true);
	for (int i = 0; i < DANE_TLSA_MAX + 3; i++)
		add_tlsa(&m, 3, 1, 1, 32, 600);
	assert_int_equal(dane_parse_tlsa(m.b, m.n, &set), 0);
	assert_int_equal(set.n, DANE_TLSA_MAX);

	/* truncated message: malformed, never a read past the end */
	msg_start(&m, "_25._tcp.mx.test", 52, 0, true);
	add_tlsa(&m, 3, 1, 1, 32, 600);
	for (size_t cut = 0; cut < m.n; cut++)
		if (cut < 12 || cut < m.n - 1)
			(void)dane_parse_tlsa(m.b, cut, &set);
	assert_int_equal(dane_parse_tlsa(m.b, m.n - 1, &set), MX_EMALFORMED);

	assert_int_equal(dane_classify(MX_DNS_NXDOMAIN, true, NULL), TLSP_DANE_NONE);
	assert_int_equal(dane_classify(MX_DNS_NODATA, true, NULL), TLSP_DANE_NONE);
	assert_int_equal(dane_classify(MX_DNS_NODATA, false, NULL), TLSP_DANE_INSECURE);
	assert_int_equal(dane_classify(MX_DNS_TEMP, true, NULL), TLSP_DANE_FAILED);
	assert_int_equal(dane_classify(MX_DNS_MALFORMED, false, NULL), TLSP_DANE_FAILED);
}

static void
test_answer_header(void **state)
{
	struct msg m;
	struct mx_dns_header h;
	(void)state;
	msg_start(&m, "x.test", 1, 3, true);
	assert_int_equal(mx_answer_header(m.b, m.n, &h), 0);
	assert_int_equal(h.rcode, 3);
	assert_true(h.ad);
	assert_int_equal(h.ancount, 0);
	msg_start(&m, "x.test", 1, 0, false);
	assert_int_equal(mx_answer_header(m.b, m.n, &h), 0);
	assert_false(h.ad);
	assert_int_equal(mx_answer_header(m.b, 11, &h), MX_EMALFORMED);
}

/* ------------------------------------------------------------ mta_sts */

static void
test_sts_txt_records(void **state)
{
	static const struct {
		const char *txt;
		int rc;
		const char *id;
	} t[] = {
	    {"v=STSv1; id=20160831085700Z;", 0, "20160831085700Z"},
	    {"v=STSv1;id=abc", 0, "abc"},
	    {"v=STSv1 ; id=abc ;", 0, "abc"},
	    {"v=STSv1; ext=1; id=Z9", 0, "Z9"},
	    {"v=STSv1; id=a; id=b", 0, "a"},
	    {"v=STSv1;", -2, NULL},					 /* no id */
	    {"v=STSv1; id=", -2, NULL},					 /* empty id */
	    {"v=STSv1; id=a-b", -2, NULL},				 /* id is ALPHA / DIGIT */
	    {"v=STSv1; id=123456789012345678901234567890123", -2, NULL}, /* 33 */
	    {"v=STSv1; junk", -2, NULL},
	    {"v=STSv10; id=a", -1, NULL},
	    {"v=spf1 -all", -1, NULL},
	    {"", -1, NULL},
	};
	(void)state;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char id[MTA_STS_ID_MAX + 1] = "";
		print_message("case %zu: %s\n", i, t[i].txt);
		assert_int_equal(mta_sts_txt_parse(t[i].txt, strlen(t[i].txt), id), t[i].rc);
		if (t[i].id)
			assert_string_equal(id, t[i].id);
	}
}

static void
test_sts_txt_answer(void **state)
{
	struct msg m;
	char id[MTA_STS_ID_MAX + 1];
	(void)state;
	/* strings of one record are joined; other TXT records are discarded */
	msg_start(&m, "_mta-sts.a.test", 16, 0, false);
	add_txt(&m, (const char *[]){"v=spf1 -all"}, 1);
	add_txt(&m, (const char *[]){"v=STSv1; ", "id=xyz1"}, 2);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n, id), MTA_STS_TXT_OK);
	assert_string_equal(id, "xyz1");
	/* two STSv1 records: no policy (RFC 8461 3.1) */
	add_txt(&m, (const char *[]){"v=STSv1; id=other"}, 1);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n, id), MTA_STS_TXT_NONE);
	/* one broken STSv1 record */
	msg_start(&m, "_mta-sts.a.test", 16, 0, false);
	add_txt(&m, (const char *[]){"v=STSv1; id=a_b"}, 1);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n, id), MTA_STS_TXT_NONE);
	/* none */
	msg_start(&m, "_mta-sts.a.test", 16, 0, false);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n, id), MTA_STS_TXT_NONE);
	/* a string running past its record */
	msg_start(&m, "_mta-sts.a.test", 16, 0, false);
	add_rr(&m, 16, 60, "\x20v=STSv1; id=a", 14);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n, id), MTA_STS_TXT_NONE);
	assert_int_equal(mta_sts_txt_answer(m.b, m.n - 1, id), MTA_STS_TXT_MALFORMED);
}

static void
test_sts_policy_parse(void **state)
{
	static const struct {
		const char *text;
		int rc;
		enum tls_sts_mode mode;
		uint32_t max_age;
		size_t nmx;
	} t[] = {
	    {"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
	     "max_age: 604800\r\n",
	     0, TLSP_STS_ENFORCE, 604800, 2},
	    {"version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400", 0, TLSP_STS_TESTING,
	     86400, 1},
	    {"version:STSv1\nmode:none\nmax_age:10\n", 0, TLSP_STS_NONE, 10, 0},
	    {"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n", -1, 0, 0, 0},
	    {"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n", 0,
	     TLSP_STS_ENFORCE, MTA_STS_MAX_AGE_MAX, 1},
	    {"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 100\nfoo: bar\n", 0,
	     TLSP_STS_ENFORCE, 100, 1},
	    {"version: STSv1 \t\nmode: enforce  \nmx:  A.Test. \nmax_age: 5\n", 0, TLSP_STS_ENFORCE,
	     5, 1},
	    {"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 100\n", -1, 0, 0, 0},
	    {"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 100\n", -1, 0, 0, 0},
	    {"version: STSv1\nmode: enforce\nmax_age: 100\n", -1, 0, 0, 0}, /* no mx */
	    {"version: STSv1\nmode: enforce\nmx: a.test\n", -1, 0, 0, 0},   /* no max_age */
	    {"mode: enforce\nmx: a.test\nmax_age: 100\n", -1, 0, 0, 0},	    /* no version */
	    {"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1x\n", -1, 0, 0, 0},
	    {"version: STSv1\nmode: enforce\nmx: a test\nmax_age: 1\n", -1, 0, 0, 0},
	    {"version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1\n", -1, 0, 0, 0},
	    {"<html>not a policy</html>", -1, 0, 0, 0},
	    {"", -1, 0, 0, 0},
	};
	(void)state;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct mta_sts_policy p;
		const char *err = NULL;
		print_message("case %zu\n", i);
		int rc = mta_sts_policy_parse(t[i].text, strlen(t[i].text), &p, &err);
		assert_int_equal(rc, t[i].rc);
		if (rc != 0) {
			assert_non_null(err);
			continue;
		}
		assert_int_equal(p.mode, t[i].mode);
		assert_int_equal(p.max_age, t[i].max_age);
		assert_int_equal(p.nmx, t[i].nmx);
	}
	/* more mx lines than kept: the first MTA_STS_MX_MAX */
	char big[8192] = "version: STSv1\nmode: enforce\nmax_age: 60\n";
	for (int i = 0; i < MTA_STS_MX_MAX + 5; i++)
		snprintf(big + strlen(big), sizeof(big) - strlen(big), "mx: mx%d.test\n", i);
	struct mta_sts_policy p;
	const char *err;
	assert_int_equal(mta_sts_policy_parse(big, strlen(big), &p, &err), 0);
	assert_int_equal(p.nmx, MTA_STS_MX_MAX);
	/* an embedded NUL is a control byte, not the end of the text */
	const char nul[] = "version: STSv1\nmode: enforce\nmx: a.test\0x\nmax_age: 5\n";
	assert_int_equal(mta_sts_policy_parse(nul, sizeof(nul) - 1, &p, &err), -1);
}

static void
test_sts_mx_match(void **state)
{
	struct mta_sts_policy p;
	const char *err;
	const char *text = "version: STSv1\nmode: enforce\nmx: mail.example.com\n"
			   "mx: *.example.net\nmax_age: 60\n";
	(void)state;
	assert_int_equal(mta_sts_policy_parse(text, strlen(text), &p, &err), 0);
	static const struct {
		const char *host;
		bool match;
	} t[] = {
	    {"mail.example.com", true},	  {"MAIL.Example.COM.", true},
	    {"mail2.example.com", false}, {"example.com", false},
	    {"a.example.net", true},	  {"example.net", false},
	    {"a.b.example.net", false},	  {"xexample.net", false},
	    {".example.net", false},	  {"", false},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		print_message("case %s\n", t[i].host);
		assert_int_equal(mta_sts_mx_match(&p, t[i].host), t[i].match);
	}
}

static void
test_sts_after_txt(void **state)
{
	(void)state;
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_OK, "a", false, NULL), MTA_STS_FETCH);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_OK, "a", true, "a"), MTA_STS_USE_CACHED);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_OK, "b", true, "a"), MTA_STS_FETCH);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_OK, "a", false, "a"), MTA_STS_FETCH);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_NONE, "", true, "a"), MTA_STS_USE_CACHED);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_NONE, "", false, "a"), MTA_STS_NO_POLICY);
	assert_int_equal(mta_sts_after_txt(-1, "", true, "a"), MTA_STS_USE_CACHED);
	assert_int_equal(mta_sts_after_txt(-1, "", false, NULL), MTA_STS_NO_POLICY);
	assert_int_equal(mta_sts_after_txt(MTA_STS_TXT_MALFORMED, "", false, NULL),
			 MTA_STS_NO_POLICY);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_levels_agree_with_config),
	    cmocka_unit_test(test_level_for_domain),
	    cmocka_unit_test(test_plan_table),
	    cmocka_unit_test(test_tlsa_qname_and_usable),
	    cmocka_unit_test(test_tlsa_parse_and_classify),
	    cmocka_unit_test(test_answer_header),
	    cmocka_unit_test(test_sts_txt_records),
	    cmocka_unit_test(test_sts_txt_answer),
	    cmocka_unit_test(test_sts_policy_parse),
	    cmocka_unit_test(test_sts_mx_match),
	    cmocka_unit_test(test_sts_after_txt),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
