/*
 * dkim.c: DKIM's pure part (dkim.h): message parsing, relaxed canonicalization, header
 * selection and the DKIM-Signature text.  RFC 6376 sections are cited where a rule comes from.
 */
#include "dkim.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DKIM__EMIT_CHUNK 8192

static bool
is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* ---- buffers ---- */

int
dkim_buf_put(struct dkim_buf *b, const void *data, size_t n)
{
	if (n > b->max - b->len)
		return -1;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 1024;
		while (cap < b->len + n)
			cap *= 2;
		if (cap > b->max)
			cap = b->max;
		char *p = realloc(b->p, cap);
		if (p == NULL)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	return 0;
}

void
dkim_buf_free(struct dkim_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- parsing ---- */

int
dkim_parse(const char *msg, size_t len, struct dkim_msg *m)
{
	size_t pos = 0;
	m->n = 0;
	m->body_off = len;
	while (pos < len) {
		if (len - pos >= 2 && msg[pos] == '\r' && msg[pos + 1] == '\n') {
			m->body_off = pos + 2; /* the empty line */
			return 0;
		}
		/* a field: lines up to a CRLF not followed by a blank (RFC 5322 2.2.3) */
		size_t end = pos;
		for (;;) {
			const char *cr = memchr(msg + end, '\r', len - end);
			if (cr == NULL) {
				end = len;
				break;
			}
			end = (size_t)(cr - msg);
			if (end + 1 < len && msg[end + 1] == '\n' &&
			    (end + 2 >= len || !is_wsp(msg[end + 2])))
				break;
			end++;
		}
		const char *colon = memchr(msg + pos, ':', end - pos);
		const char *nl = memchr(msg + pos, '\n', end - pos);
		if (colon == NULL || colon == msg + pos || (nl != NULL && nl < colon) ||
		    m->n == DKIM_FIELDS_MAX || end - pos > DKIM_FIELD_MAX)
			return -1;
		size_t nlen = (size_t)(colon - (msg + pos));
		while (nlen > 0 && is_wsp(msg[pos + nlen - 1]))
			nlen--;
		if (nlen == 0 || nlen > DKIM_NAME_MAX)
			return -1;
		m->f[m->n++] = (struct dkim_field){.off = pos, .len = end - pos, .name_len = nlen};
		pos = end + 2 <= len ? end + 2 : len;
	}
	return 0; /* header only, no body */
}

static bool
name_is(const char *msg, const struct dkim_field *f, const char *name, size_t n)
{
	return f->name_len == n && strncasecmp(msg + f->off, name, n) == 0;
}

int
dkim_from_domain(const char *msg, const struct dkim_msg *m, char *dom, size_t cap)
{
	const struct dkim_field *from = NULL;
	for (size_t i = 0; i < m->n; i++) {
		if (!name_is(msg, &m->f[i], "from", 4))
			continue;
		if (from != NULL)
			return -1; /* RFC 5322 3.6: one From field */
		from = &m->f[i];
	}
	if (from == NULL)
		return -1;
	const char *v = memchr(msg + from->off, ':', from->len) + 1;
	const char *end = msg + from->off + from->len;
	/* the mailbox: inside the angle brackets when there are some, else the bare addr-spec;
	 * quoted strings and comments are skipped; more than one '@' means several mailboxes */
	const char *at = NULL, *lt = NULL, *gt = NULL;
	int depth = 0, ats = 0;
	bool quoted = false;
	for (const char *p = v; p < end; p++) {
		if (quoted) {
			if (*p == '\\' && p + 1 < end)
				p++;
			else if (*p == '"')
				quoted = false;
			continue;
		}
		if (*p == '"' && depth == 0) {
			quoted = true;
		} else if (*p == '(') {
			depth++;
		} else if (*p == ')' && depth > 0) {
			depth--;
		} else if (depth == 0 && *p == '<') {
			lt = p;
		} else if (depth == 0 && *p == '>') {
			gt = p;
		} else if (depth == 0 && *p == '@') {
			at = p;
			ats++;
		} else if (depth == 0 && *p == ',') {
			return -1;
		}
	}
	if (at == NULL || ats != 1 || (lt != NULL && (gt == NULL || at < lt || at > gt)))
		return -1;
	const char *d = at + 1, *de = d;
	while (de < end && (isalnum((unsigned char)*de) || *de == '-' || *de == '.' || *de == '_'))
		de++;
	size_t n = (size_t)(de - d);
	if (n == 0 || n >= cap || n > 255 ||
	    (de < end && *de != '>' && *de != '(' && !is_wsp(*de) && *de != '\r' && *de != '\n'))
		return -1; /* an empty or non-ASCII domain: not signed */
	for (size_t i = 0; i < n; i++)
		dom[i] = (char)tolower((unsigned char)d[i]);
	dom[n] = '\0';
	while (n > 0 && dom[n - 1] == '.')
		dom[--n] = '\0'; /* a trailing root dot */
	return n ? 0 : -1;
}

/* ---- canonicalization ---- */

struct emitter {
	char buf[DKIM__EMIT_CHUNK];
	size_t n;
	dkim_emit_cb emit;
	void *arg;
};

static void
em_put(struct emitter *e, const char *p, size_t n)
{
	while (n > 0) {
		size_t k = sizeof(e->buf) - e->n < n ? sizeof(e->buf) - e->n : n;
		memcpy(e->buf + e->n, p, k);
		e->n += k;
		p += k;
		n -= k;
		if (e->n == sizeof(e->buf)) {
			e->emit(e->arg, e->buf, e->n);
			e->n = 0;
		}
	}
}

void
dkim_body_relaxed(const char *body, size_t len, dkim_emit_cb emit, void *arg)
{
	struct emitter e = {.n = 0, .emit = emit, .arg = arg};
	size_t empty = 0; /* empty lines not yet written: dropped if nothing follows (3.4.4) */
	size_t pos = 0;
	while (pos < len) {
		const char *cr = NULL;
		size_t end = pos;
		/* the line: up to CRLF (a lone CR is an ordinary byte) */
		for (;;) {
			cr = memchr(body + end, '\r', len - end);
			if (cr == NULL || (cr + 1 < body + len && cr[1] == '\n'))
				break;
			end = (size_t)(cr - body) + 1;
		}
		end = cr ? (size_t)(cr - body) : len;
		bool content = false, ws = false;
		const char *run = NULL; /* a run of bytes without blanks, not yet copied */
		for (size_t i = pos; i < end; i++) {
			if (is_wsp(body[i])) {
				if (run) {
					em_put(&e, run, (size_t)(body + i - run));
					run = NULL;
				}
				ws = true; /* a run of blanks becomes one SP (3.4.4 a) */
				continue;
			}
			if (!content) {
				for (; empty > 0; empty--)
					em_put(&e, "\r\n", 2);
				content = true;
			}
			if (ws) {
				em_put(&e, " ", 1);
				ws = false;
			}
			if (!run)
				run = body + i;
		}
		if (run)
			em_put(&e, run, (size_t)(body + end - run));
		/* blanks at the end of the line are gone (3.4.4 b) */
		if (content)
			em_put(&e, "\r\n", 2); /* also added when the body lacks a final CRLF */
		else if (cr)
			empty++;
		pos = cr ? end + 2 : len;
	}
	if (e.n)
		emit(arg, e.buf, e.n);
}

int
dkim_field_relaxed(const char *field, size_t len, bool crlf, struct dkim_buf *out)
{
	const char *colon = memchr(field, ':', len);
	if (colon == NULL)
		return -1;
	size_t nlen = (size_t)(colon - field);
	while (nlen > 0 && is_wsp(field[nlen - 1]))
		nlen--;
	char name[DKIM_NAME_MAX];
	if (nlen == 0 || nlen > sizeof(name))
		return -1;
	for (size_t i = 0; i < nlen; i++)
		name[i] = (char)tolower((unsigned char)field[i]); /* 3.4.2 a */
	if (dkim_buf_put(out, name, nlen) || dkim_buf_put(out, ":", 1))
		return -1;
	/* the value unfolded, blank runs as one SP, none at either end (3.4.2 b-e) */
	const char *p = colon + 1, *end = field + len;
	bool started = false, ws = false;
	const char *run = NULL;
	for (; p < end; p++) {
		if (*p == '\r' || *p == '\n' || is_wsp(*p)) {
			if (run) {
				if (dkim_buf_put(out, run, (size_t)(p - run)))
					return -1;
				run = NULL;
			}
			ws = started;
			continue;
		}
		if (ws && dkim_buf_put(out, " ", 1))
			return -1;
		ws = false;
		started = true;
		if (!run)
			run = p;
	}
	if (run && dkim_buf_put(out, run, (size_t)(end - run)))
		return -1;
	return crlf ? dkim_buf_put(out, "\r\n", 2) : 0;
}

/* ---- header selection ---- */

int
dkim_h_list(const char *msg, const struct dkim_msg *m, const char *const *names, size_t n,
	    char *h, size_t cap)
{
	size_t len = 0, line = 2; /* "h=" */
	bool from_listed = false;
	for (size_t i = 0; i < n; i++)
		from_listed |= strcasecmp(names[i], "from") == 0;
	for (size_t i = 0; i < n + !from_listed; i++) {
		const char *name = i < n ? names[i] : "from";
		size_t nl = strlen(name), count = 0;
		bool seen = false;
		for (size_t k = 0; k < i && k < n; k++)
			seen |= strcasecmp(names[k], name) == 0;
		if (seen)
			continue; /* a name listed twice is signed once (its instances) */
		for (size_t k = 0; k < m->n; k++)
			count += name_is(msg, &m->f[k], name, nl);
		if (strcasecmp(name, "from") == 0)
			count++; /* oversigned: no From can be added (8.15) */
		for (size_t c = 0; c < count; c++) {
			bool fold = len > 0 && line + nl + 1 > 70;
			size_t need = (len > 0) + (fold ? 3 : 0) + nl;
			if (len + need + 1 > cap)
				return -1;
			if (len > 0)
				h[len++] = ':';
			if (fold) {
				memcpy(h + len, "\r\n\t", 3);
				len += 3;
				line = 1;
			}
			for (size_t j = 0; j < nl; j++)
				h[len++] = (char)tolower((unsigned char)name[j]);
			line += nl + 1;
		}
	}
	h[len] = '\0';
	return len ? 0 : -1;
}

int
dkim_header_data(const char *msg, const struct dkim_msg *m, const char *h, const char *sig,
		 size_t siglen, struct dkim_buf *out)
{
	unsigned char used[DKIM_FIELDS_MAX];
	memset(used, 0, sizeof(used));
	const char *p = h;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		const char *s = p;
		while (*p && *p != ':' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			p++;
		size_t nl = (size_t)(p - s);
		if (nl == 0 || nl > DKIM_NAME_MAX)
			return -1;
		/* the next unused instance from the bottom (5.4.2) */
		for (size_t k = m->n; k-- > 0;) {
			if (used[k] || !name_is(msg, &m->f[k], s, nl))
				continue;
			used[k] = 1;
			if (dkim_field_relaxed(msg + m->f[k].off, m->f[k].len, true, out))
				return -1;
			break;
		}
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
			p++;
		if (*p == '\0')
			break;
		if (*p != ':')
			return -1;
		p++;
	}
	return dkim_field_relaxed(sig, siglen, false, out);
}

/* ---- the DKIM-Signature field ---- */

int
dkim_sig_template(const struct dkim_sig_params *p, char *out, size_t cap)
{
	int n = snprintf(out, cap,
			 "DKIM-Signature: v=1; a=%s; c=relaxed/relaxed; d=%s; s=%s;\r\n"
			 "\tt=%llu; h=%s;\r\n"
			 "\tbh=%s;\r\n"
			 "\tb=",
			 p->algo, p->domain, p->selector, (unsigned long long)p->t, p->h, p->bh);
	return n < 0 || (size_t)n >= cap ? -1 : n;
}

int
dkim_sig_add_b(char *sig, size_t len, size_t cap, const char *b64)
{
	size_t bl = strlen(b64);
	for (size_t i = 0; i < bl; i += 72) {
		size_t k = bl - i < 72 ? bl - i : 72;
		if (len + k + 3 + 2 + 1 > cap)
			return -1;
		if (i > 0) {
			memcpy(sig + len, "\r\n\t", 3);
			len += 3;
		}
		memcpy(sig + len, b64 + i, k);
		len += k;
	}
	if (len + 3 > cap)
		return -1;
	memcpy(sig + len, "\r\n", 3);
	return (int)(len + 2);
}
