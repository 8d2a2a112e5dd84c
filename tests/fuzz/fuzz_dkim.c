/*
 * fuzz_dkim.c: arbitrary messages into DKIM's pure part (node/smtp/dkim.c), as the signer sees
 * a client's message: parse, From: domain, relaxed body canonicalization, h= list and the bytes
 * a signature covers.  Invariants: fields lie inside the input in order; the From: domain is
 * lowercase DNS characters; the canonical body has no blank before a CRLF, no run of blanks, no
 * empty line at its end, and ends with CRLF when not empty; every step either fits its bound or
 * says -1.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dkim.h"

/* not assert(): it vanishes under NDEBUG, and these checks are the point */
#define CHECK(c) do { if (!(c)) abort(); } while (0)

struct canon {
	char *p;
	size_t n, cap;
};

static void
collect(void *arg, const char *bytes, size_t n)
{
	struct canon *c = arg;
	CHECK(n > 0 && n <= 8192);
	if (c->n + n > c->cap) {
		size_t cap = (c->n + n) * 2;
		char *p = realloc(c->p, cap);
		CHECK(p != NULL);
		c->p = p;
		c->cap = cap;
	}
	memcpy(c->p + c->n, bytes, n);
	c->n += n;
}

static const char *const names[] = {DKIM_DEFAULT_HEADERS};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *msg = (const char *)data;
	struct dkim_msg *m = malloc(sizeof(*m));
	CHECK(m != NULL);
	if (dkim_parse(msg, size, m) == 0) {
		size_t prev = 0;
		for (size_t i = 0; i < m->n; i++) {
			CHECK(m->f[i].off >= prev && m->f[i].off + m->f[i].len <= size);
			CHECK(m->f[i].name_len > 0 && m->f[i].name_len <= m->f[i].len);
			prev = m->f[i].off + m->f[i].len;
		}
		CHECK(m->body_off >= prev && m->body_off <= size);
		char dom[256];
		if (dkim_from_domain(msg, m, dom, sizeof(dom)) == 0) {
			CHECK(dom[0] != '\0');
			for (const char *p = dom; *p; p++)
				CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
				      *p == '-' || *p == '.' || *p == '_');
		}
		struct canon c = {0};
		dkim_body_relaxed(msg + m->body_off, size - m->body_off, collect, &c);
		if (c.n > 0) {
			CHECK(c.n >= 2 && c.p[c.n - 2] == '\r' && c.p[c.n - 1] == '\n');
			CHECK(!(c.n >= 4 && memcmp(c.p + c.n - 4, "\r\n\r\n", 4) == 0));
			for (size_t i = 0; i + 1 < c.n; i++) {
				CHECK(!(c.p[i] == '\t'));
				CHECK(!(c.p[i] == ' ' && c.p[i + 1] == ' '));
				CHECK(!(c.p[i] == ' ' && c.p[i + 1] == '\r' && i + 2 < c.n &&
					c.p[i + 2] == '\n'));
			}
		}
		free(c.p);
		char h[DKIM_H_MAX];
		if (dkim_h_list(msg, m, names, sizeof(names) / sizeof(*names), h, sizeof(h)) == 0) {
			static const char sig[] = "DKIM-Signature: v=1; a=rsa-sha256; b=";
			struct dkim_buf b = {.max = 1 << 20};
			int rc = dkim_header_data(msg, m, h, sig, strlen(sig), &b);
			CHECK(rc == 0 || b.len <= b.max);
			if (rc == 0)
				CHECK(b.len >= strlen("dkim-signature:v=1; a=rsa-sha256; b="));
			dkim_buf_free(&b);
		}
	}
	free(m);
	return 0;
}
