/*
 * test_dkim.c: DKIM's pure part (node/smtp/dkim.c) against the RFCs' own examples, with
 * node/crypto.c for the hashes and the signature:
 *   - RFC 6376 3.4.5: relaxed header and body canonicalization of the example;
 *   - RFC 6376 / RFC 8463 appendix A: the body hash bh=2jUSOH9N... of the example message;
 *   - RFC 8463 appendix A: with the RFC's Ed25519 key, the bytes dkim_header_data selects and
 *     canonicalizes sign to exactly the RFC's b= (Ed25519 is deterministic), and the key's
 *     public part is the RFC's p=;
 *   - the h= list (every instance, From oversigned, folding), the From: domain, parse errors,
 *     the field text, and keys that are refused (RSA under 2048 bits).
 * Real verifiers check whole signed messages in tests/integration/test_dkim.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "crypto.h"
#include "dkim.h"

struct collect {
	char buf[4096];
	size_t n;
};

static void
collect_cb(void *arg, const char *bytes, size_t n)
{
	struct collect *c = arg;
	assert_true(c->n + n < sizeof(c->buf));
	memcpy(c->buf + c->n, bytes, n);
	c->n += n;
	c->buf[c->n] = '\0';
}

static const char *
body_relaxed(const char *body, struct collect *c)
{
	c->n = 0;
	c->buf[0] = '\0';
	dkim_body_relaxed(body, strlen(body), collect_cb, c);
	return c->buf;
}

static void
hash_cb(void *arg, const char *bytes, size_t n)
{
	crypto_sha256_update(arg, bytes, n);
}

static void
body_hash(const char *body, char *b64, size_t cap)
{
	struct crypto_sha256 *h = crypto_sha256_new();
	unsigned char d[CRYPTO_SHA256_LEN];
	assert_non_null(h);
	dkim_body_relaxed(body, strlen(body), hash_cb, h);
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	assert_true(crypto_base64(d, sizeof(d), b64, cap) > 0);
}

/* RFC 6376 3.4.5 */
static const char rfc6376_example[] = "A: X\r\n"
				      "B : Y\t\r\n"
				      "\tZ  \r\n"
				      "\r\n"
				      " C \r\n"
				      "D \t E\r\n"
				      "\r\n"
				      "\r\n";

static void
test_rfc6376_canonicalization(void **state)
{
	(void)state;
	struct dkim_msg *m = malloc(sizeof(*m));
	assert_non_null(m);
	assert_int_equal(dkim_parse(rfc6376_example, strlen(rfc6376_example), m), 0);
	assert_int_equal(m->n, 2);
	struct dkim_buf b = {.max = 4096};
	for (size_t i = 0; i < m->n; i++)
		assert_int_equal(
		    dkim_field_relaxed(rfc6376_example + m->f[i].off, m->f[i].len, true, &b), 0);
	assert_int_equal(b.len, strlen("a:X\r\nb:Y Z\r\n"));
	assert_memory_equal(b.p, "a:X\r\nb:Y Z\r\n", b.len);
	dkim_buf_free(&b);
	struct collect c;
	assert_string_equal(body_relaxed(rfc6376_example + m->body_off, &c), " C\r\nD E\r\n");
	free(m);

	/* the corner cases of 3.4.4 */
	assert_string_equal(body_relaxed("", &c), "");
	assert_string_equal(body_relaxed("\r\n\r\n", &c), "");
	assert_string_equal(body_relaxed("  \t \r\n", &c), "");
	assert_string_equal(body_relaxed("x", &c), "x\r\n");		  /* CRLF added */
	assert_string_equal(body_relaxed("x  \t", &c), "x\r\n");
	assert_string_equal(body_relaxed("a\r\n\r\n \r\nb\r\n\r\n", &c), "a\r\n\r\n\r\nb\r\n");
	assert_string_equal(body_relaxed("a\rb\r\n", &c), "a\rb\r\n");	  /* a lone CR stays */
	assert_string_equal(body_relaxed("\xc3\xa9t\xc3\xa9 \t x\r\n", &c), "\xc3\xa9t\xc3\xa9 x\r\n");

	/* a long body crosses the 8 KiB emit pieces intact */
	size_t n = 100000;
	char *big = malloc(n + 1);
	assert_non_null(big);
	for (size_t i = 0; i < n; i++)
		big[i] = (i % 100 == 98) ? '\r' : (i % 100 == 99) ? '\n' : (char)('a' + i % 26);
	big[n] = '\0';
	char h1[64], h2[64];
	body_hash(big, h1, sizeof(h1));
	struct crypto_sha256 *h = crypto_sha256_new();
	unsigned char d[CRYPTO_SHA256_LEN];
	crypto_sha256_update(h, big, n); /* no blanks, CRLF-terminated: canonical already */
	crypto_sha256_final(h, d);
	crypto_sha256_free(h);
	crypto_base64(d, sizeof(d), h2, sizeof(h2));
	assert_string_equal(h1, h2);
	free(big);
}

/* RFC 8463 appendix A.3 (the RFC 6376 message, relaxed/relaxed) */
static const char rfc8463_headers[] =
    "From: Joe SixPack <joe@football.example.com>\r\n"
    "To: Suzie Q <suzie@shopping.example.net>\r\n"
    "Subject: Is dinner ready?\r\n"
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    "\r\n"
    "Hi.\r\n"
    "\r\n"
    "We lost the game.  Are you hungry yet?\r\n"
    "\r\n"
    "Joe.\r\n"
    "\r\n"
    "\r\n";
static const char rfc8463_sig[] =
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n"
    " d=football.example.com; i=@football.example.com;\r\n"
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n"
    " subject : date : message-id : from : subject : date;\r\n"
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n"
    " b=";
static const char rfc8463_h[] = "from : to :\r\n subject : date : message-id : from : subject : date";
/* the RFC's Ed25519 private key (seed nWGxne/9...) as PKCS#8 */
static const char rfc8463_ed25519_pem[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n"
    "-----END PRIVATE KEY-----\n";

static void
test_rfc8463_example(void **state)
{
	(void)state;
	struct dkim_msg *m = malloc(sizeof(*m));
	assert_non_null(m);
	const char *msg = rfc8463_headers;
	assert_int_equal(dkim_parse(msg, strlen(msg), m), 0);
	assert_int_equal(m->n, 5);
	char bh[64];
	body_hash(msg + m->body_off, bh, sizeof(bh));
	assert_string_equal(bh, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
	/* RFC 6376 A.2's body (single space, no trailing empty lines): the same hash */
	body_hash("Hi.\r\n\r\nWe lost the game. Are you hungry yet?\r\n\r\nJoe.\r\n", bh,
		  sizeof(bh));
	assert_string_equal(bh, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");

	struct dkim_buf data = {.max = 1 << 16};
	assert_int_equal(dkim_header_data(msg, m, rfc8463_h, rfc8463_sig, strlen(rfc8463_sig),
					  &data),
			 0);
	static const char want[] =
	    "from:Joe SixPack <joe@football.example.com>\r\n"
	    "to:Suzie Q <suzie@shopping.example.net>\r\n"
	    "subject:Is dinner ready?\r\n"
	    "date:Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
	    "message-id:<20030712040037.46341.5F8J@football.example.com>\r\n"
	    "dkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=football.example.com; "
	    "i=@football.example.com; q=dns/txt; s=brisbane; t=1528637909; h=from : to : subject "
	    ": date : message-id : from : subject : date; "
	    "bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=; b=";
	assert_int_equal(data.len, strlen(want));
	assert_memory_equal(data.p, want, data.len);

	struct crypto_key *k;
	char err[256];
	assert_int_equal(crypto_key_from_pem(rfc8463_ed25519_pem, strlen(rfc8463_ed25519_pem), &k,
					     err, sizeof(err)),
			 0);
	assert_int_equal(crypto_key_type(k), CRYPTO_KEY_ED25519);
	char pub[CRYPTO_PUBLIC_B64_MAX];
	assert_int_equal(crypto_key_public_b64(k, pub, sizeof(pub)), 0);
	assert_string_equal(pub, "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=");
	unsigned char sig[CRYPTO_SIG_MAX];
	size_t siglen;
	char b64[256];
	assert_int_equal(crypto_dkim_sign(k, data.p, data.len, sig, &siglen), 0);
	assert_int_equal(siglen, 64);
	crypto_base64(sig, siglen, b64, sizeof(b64));
	assert_string_equal(b64, "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11BusFa3bT3FY5"
				 "OsU7ZbnKELq+eXdp1Q1Dw==");
	crypto_key_free(k);
	dkim_buf_free(&data);
	free(m);
}

static void
test_h_list_and_selection(void **state)
{
	(void)state;
	static const char msg[] = "Received: x\r\n"
				  "From: a@example.com\r\n"
				  "To: one@example.net\r\n"
				  "Subject: s\r\n"
				  "to: two@example.net\r\n"
				  "\r\n"
				  "body\r\n";
	struct dkim_msg *m = malloc(sizeof(*m));
	assert_non_null(m);
	assert_int_equal(dkim_parse(msg, strlen(msg), m), 0);
	char h[DKIM_H_MAX];
	const char *names[] = {"subject", "to", "cc", "TO"};
	/* From first when not listed, oversigned; To twice (two instances); Cc absent */
	assert_int_equal(dkim_h_list(msg, m, names, 4, h, sizeof(h)), 0);
	assert_string_equal(h, "subject:to:to:from:from");
	/* instances bottom-up: the second To first */
	struct dkim_buf b = {.max = 4096};
	static const char sig[] = "DKIM-Signature: b=";
	assert_int_equal(dkim_header_data(msg, m, "to:to:to:from", sig, strlen(sig), &b), 0);
	static const char want[] = "to:two@example.net\r\nto:one@example.net\r\n"
				   "from:a@example.com\r\ndkim-signature:b=";
	assert_int_equal(b.len, strlen(want));
	assert_memory_equal(b.p, want, b.len);
	dkim_buf_free(&b);
	/* many instances: folded, no line over 76 bytes */
	char *lots = malloc(30 * 32 + 64);
	assert_non_null(lots);
	size_t n = (size_t)sprintf(lots, "From: a@example.com\r\n");
	for (int i = 0; i < 30; i++)
		n += (size_t)sprintf(lots + n, "X-Long-Header-Name: %d\r\n", i);
	n += (size_t)sprintf(lots + n, "\r\nbody\r\n");
	assert_int_equal(dkim_parse(lots, n, m), 0);
	const char *many[] = {"x-long-header-name"};
	assert_int_equal(dkim_h_list(lots, m, many, 1, h, sizeof(h)), 0);
	assert_non_null(strstr(h, ":\r\n\t"));
	for (char *line = h, *nl; line; line = nl ? nl + 3 : NULL) {
		nl = strstr(line, "\r\n\t");
		assert_true((size_t)(nl ? nl - line : (long)strlen(line)) <= 76);
	}
	/* and the folded list selects every instance */
	struct dkim_buf b2 = {.max = 1 << 16};
	assert_int_equal(dkim_header_data(lots, m, h, sig, strlen(sig), &b2), 0);
	assert_non_null(strstr(b2.p, "x-long-header-name:0\r\n"));
	dkim_buf_free(&b2);
	assert_int_equal(dkim_h_list(lots, m, many, 1, h, 20), -1); /* too long */
	free(lots);
	free(m);
}

static int
from_domain(const char *from, char *dom)
{
	char msg[512];
	snprintf(msg, sizeof(msg), "Subject: x\r\n%s\r\n\r\nb\r\n", from);
	struct dkim_msg *m = malloc(sizeof(*m));
	assert_non_null(m);
	int rc = dkim_parse(msg, strlen(msg), m);
	if (rc == 0)
		rc = dkim_from_domain(msg, m, dom, 256);
	free(m);
	return rc;
}

static void
test_from_domain(void **state)
{
	(void)state;
	char d[256];
	assert_int_equal(from_domain("From: Joe <joe@Mail.Example.COM>", d), 0);
	assert_string_equal(d, "mail.example.com");
	assert_int_equal(from_domain("From: joe@example.org (Joe, at work)", d), 0);
	assert_string_equal(d, "example.org");
	assert_int_equal(from_domain("From: \"a@b.example, c\" <x@real.example>", d), 0);
	assert_string_equal(d, "real.example");
	assert_int_equal(from_domain("From:\r\n\tfolded@fold.example", d), 0);
	assert_string_equal(d, "fold.example");
	assert_int_equal(from_domain("From: a@one.example, b@two.example", d), -1);
	assert_int_equal(from_domain("From: nobody", d), -1);
	assert_int_equal(from_domain("From: a@b\xc3\xbc.example", d), -1);
	assert_int_equal(from_domain("From: a@one.example\r\nFrom: b@one.example", d), -1);
	assert_int_equal(from_domain("To: a@one.example", d), -1);
}

static void
test_parse_errors_and_field(void **state)
{
	(void)state;
	struct dkim_msg *m = malloc(sizeof(*m));
	assert_non_null(m);
	static const char nocolon[] = "From: a@b.example\r\nnot a field\r\n\r\nbody";
	assert_int_equal(dkim_parse(nocolon, strlen(nocolon), m), -1);
	static const char hdronly[] = "From: a@b.example\r\nSubject: x";
	assert_int_equal(dkim_parse(hdronly, strlen(hdronly), m), 0);
	assert_int_equal(m->n, 2);
	assert_int_equal(m->body_off, strlen(hdronly));
	/* more than DKIM_FIELDS_MAX fields */
	size_t cap = (DKIM_FIELDS_MAX + 1) * 8 + 3;
	char *many = malloc(cap);
	assert_non_null(many);
	size_t n = 0;
	for (int i = 0; i <= DKIM_FIELDS_MAX; i++)
		n += (size_t)snprintf(many + n, cap - n, "X-A: 1\r\n");
	memcpy(many + n, "\r\n", 3);
	assert_int_equal(dkim_parse(many, n + 2, m), -1);
	free(many);
	free(m);

	/* the field text: folded, b= last, the signature folded at 72 */
	char sig[DKIM_SIG_FIELD_MAX];
	struct dkim_sig_params p = {.algo = "rsa-sha256",
				    .domain = "example.com",
				    .selector = "s1",
				    .t = 1700000000,
				    .h = "from:from:to",
				    .bh = "BH="};
	int len = dkim_sig_template(&p, sig, sizeof(sig));
	assert_true(len > 0);
	assert_string_equal(sig, "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; "
				 "d=example.com; s=s1;\r\n\tt=1700000000; h=from:from:to;\r\n"
				 "\tbh=BH=;\r\n\tb=");
	char b64[200];
	memset(b64, 'A', 150);
	b64[150] = '\0';
	len = dkim_sig_add_b(sig, (size_t)len, sizeof(sig), b64);
	assert_true(len > 0);
	assert_int_equal((size_t)len, strlen(sig));
	assert_non_null(strstr(sig, "\tb=" "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
				 "\r\n\tAAAA"));
	assert_string_equal(sig + len - 2, "\r\n");
	assert_int_equal(dkim_sig_template(&p, sig, 40), -1);
}

static void
test_keys_refused(void **state)
{
	(void)state;
	struct crypto_key *k = NULL;
	char err[256];
	static const char junk[] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
	assert_int_equal(crypto_key_from_pem(junk, strlen(junk), &k, err, sizeof(err)), -1);
	assert_null(k);
	assert_non_null(strstr(err, "not a PEM private key"));
	assert_int_equal(crypto_key_load("/nonexistent/key.pem", &k, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "/nonexistent/key.pem"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc6376_canonicalization),
	    cmocka_unit_test(test_rfc8463_example),
	    cmocka_unit_test(test_h_list_and_selection),
	    cmocka_unit_test(test_from_domain),
	    cmocka_unit_test(test_parse_errors_and_field),
	    cmocka_unit_test(test_keys_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
