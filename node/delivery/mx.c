/*
 * mx.c - ordering mail exchangers and collecting their addresses.
 *
 * Pure: no I/O, no clock, no allocation.  See mx.h for the contract.  Rules:
 *   RFC 5321 5.1  MX by preference, equal preferences randomised, implicit MX
 *                 when there is no MX record, unusable MX set is an error.
 *   RFC 7505 3    null MX: a single MX record, preference 0, exchange ".".
 *   RFC 1035 4.1  message layout walked by mx_answer_min_ttl().
 */
#include "mx.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

const char *
mx_strerror(int err)
{
	switch (err) {
	case 0:
		return "ok";
#define MX__STR(n, v, p, e, t)                                                                     \
	case n:                                                                                    \
		return t;
		MX_ERRORS(MX__STR)
#undef MX__STR
	}
	return "unknown error";
}

const char *
mx_status_code(int err)
{
	switch (err) {
	case 0:
		return "2.0.0";
#define MX__CODE(n, v, p, e, t)                                                                    \
	case n:                                                                                    \
		return e;
		MX_ERRORS(MX__CODE)
#undef MX__CODE
	}
	return "4.4.3";
}

bool
mx_is_permanent(int err)
{
	switch (err) {
#define MX__PERM(n, v, p, e, t)                                                                    \
	case n:                                                                                    \
		return p;
		MX_ERRORS(MX__PERM)
#undef MX__PERM
	}
	return false;
}

void
mx_rng_seed(struct mx_rng *rng, uint64_t seed)
{
	rng->state = seed;
}

uint64_t
mx_rng_next(struct mx_rng *rng)
{
	uint64_t z = (rng->state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint32_t
mx_rng_below(struct mx_rng *rng, uint32_t n)
{
	/* Modulo bias is irrelevant for n <= MX_MAX_RRS. */
	return (uint32_t)(mx_rng_next(rng) % n);
}

int
mx_name_normalize(const char *src, char *dst)
{
	size_t n = strlen(src);

	if (n > 0 && src[n - 1] == '.')
		n--;
	if (n > MX_NAME_MAX)
		return MX_EINVAL;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c <= 0x20 || c >= 0x7f)
			return MX_EINVAL;
		dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : (char)c;
	}
	dst[n] = '\0';
	if (n == 0 && src[0] == '\0')
		return MX_EINVAL;
	return 0;
}

void
mx_list_init(struct mx_list *l)
{
	memset(l, 0, sizeof(*l));
	l->ttl = MX_TTL_MAX;
}

void
mx_list_note_ttl(struct mx_list *l, uint32_t ttl)
{
	if (ttl < l->ttl)
		l->ttl = ttl;
}

/* Index sort by preference, stable (insertion sort: n <= MX_MAX_RRS). */
static void
sort_by_pref(const struct mx_rr *rrs, size_t *idx, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		size_t v = idx[i], j = i;
		while (j > 0 && rrs[idx[j - 1]].pref > rrs[v].pref) {
			idx[j] = idx[j - 1];
			j--;
		}
		idx[j] = v;
	}
}

int
mx_order(const struct mx_rr *rrs, size_t n, struct mx_rng *rng, struct mx_list *out)
{
	size_t idx[MX_MAX_RRS];
	char names[MX_MAX_RRS][MX_NAME_MAX + 2];
	size_t m = 0;

	if (n == 0)
		return MX_EMALFORMED;
	/* RFC 7505 3: exactly one record, preference 0, exchange ".". */
	if (n == 1 && rrs[0].pref == 0 && (rrs[0].name[0] == '\0' || strcmp(rrs[0].name, ".") == 0))
		return MX_ENULLMX;
	if (n > MX_MAX_RRS)
		n = MX_MAX_RRS;

	for (size_t i = 0; i < n; i++) {
		if (mx_name_normalize(rrs[i].name, names[i]) != 0 || names[i][0] == '\0') {
			names[i][0] = '\0'; /* "." among others, or garbage: unusable */
			continue;
		}
		idx[m++] = i;
	}
	if (m == 0)
		return MX_EMALFORMED;
	sort_by_pref(rrs, idx, m);

	/* Shuffle each run of equal preference (RFC 5321 5.1). */
	for (size_t a = 0; a < m;) {
		size_t b = a + 1;
		while (b < m && rrs[idx[b]].pref == rrs[idx[a]].pref)
			b++;
		for (size_t k = b - a; k > 1; k--) {
			size_t j = a + mx_rng_below(rng, (uint32_t)k);
			size_t t = idx[a + k - 1];
			idx[a + k - 1] = idx[j];
			idx[j] = t;
		}
		a = b;
	}

	out->nhosts = 0;
	for (size_t i = 0; i < m && out->nhosts < MX_MAX_HOSTS; i++) {
		const char *name = names[idx[i]];
		bool dup = false;
		for (size_t k = 0; k < out->nhosts; k++)
			if (strcmp(out->hosts[k].name, name) == 0)
				dup = true; /* keep the most preferred copy */
		if (dup)
			continue;
		struct mx_host *h = &out->hosts[out->nhosts++];
		memset(h, 0, sizeof(*h));
		strcpy(h->name, name);
		h->pref = rrs[idx[i]].pref;
	}
	return 0;
}

int
mx_implicit(const char *domain, struct mx_list *out)
{
	char name[MX_NAME_MAX + 2];

	if (mx_name_normalize(domain, name) != 0 || name[0] == '\0')
		return MX_EINVAL;
	out->nhosts = 1;
	memset(&out->hosts[0], 0, sizeof(out->hosts[0]));
	strcpy(out->hosts[0].name, name);
	out->hosts[0].implicit = true;
	return 0;
}

int
mx_host_add_addr(struct mx_host *host, int family, const void *addr)
{
	size_t alen;

	if (family == AF_INET)
		alen = 4;
	else if (family == AF_INET6)
		alen = 16;
	else
		return MX_EINVAL;
	for (size_t i = 0; i < host->naddrs; i++)
		if (host->addrs[i].family == family && memcmp(host->addrs[i].addr, addr, alen) == 0)
			return 0;
	if (host->naddrs >= MX_MAX_ADDRS)
		return 0;
	struct mx_addr *a = &host->addrs[host->naddrs++];
	memset(a, 0, sizeof(*a));
	a->family = family;
	memcpy(a->addr, addr, alen);
	return 0;
}

void
mx_host_note_dns(struct mx_host *host, enum mx_dns res)
{
	if (res == MX_DNS_TEMP)
		host->dns_temp = true;
	else if (res == MX_DNS_MALFORMED)
		host->dns_malformed = true;
}

int
mx_finish(struct mx_list *l)
{
	bool temp = false, malformed = false;
	size_t k = 0;

	for (size_t i = 0; i < l->nhosts; i++) {
		temp |= l->hosts[i].dns_temp;
		malformed |= l->hosts[i].dns_malformed;
		if (l->hosts[i].naddrs == 0)
			continue;
		if (k != i)
			l->hosts[k] = l->hosts[i];
		k++;
	}
	l->nhosts = k;
	if (k > 0)
		return 0;
	if (temp)
		return MX_ETEMP;
	if (malformed)
		return MX_EMALFORMED;
	return MX_ENOADDR;
}

int
mx_classify_mx_query(enum mx_dns res, size_t nrecords)
{
	switch (res) {
	case MX_DNS_OK:
		return nrecords > 0 ? 1 : 2;
	case MX_DNS_NODATA:
		return 2;
	case MX_DNS_NXDOMAIN:
		return MX_ENXDOMAIN;
	case MX_DNS_TEMP:
		return MX_ETEMP;
	case MX_DNS_MALFORMED:
		return MX_EMALFORMED;
	}
	return MX_EMALFORMED;
}

/* Skip a possibly compressed name at *off (RFC 1035 4.1.4). */
static int
skip_name(const uint8_t *msg, size_t len, size_t *off)
{
	size_t o = *off;

	for (int labels = 0; labels < 128; labels++) {
		if (o >= len)
			return MX_EMALFORMED;
		uint8_t c = msg[o];
		if ((c & 0xc0) == 0xc0) {
			if (o + 2 > len)
				return MX_EMALFORMED;
			*off = o + 2;
			return 0;
		}
		if ((c & 0xc0) != 0)
			return MX_EMALFORMED;
		if (c == 0) {
			*off = o + 1;
			return 0;
		}
		o += 1 + (size_t)c;
	}
	return MX_EMALFORMED;
}

int
mx_answer_header(const uint8_t *msg, size_t len, struct mx_dns_header *h)
{
	if (len < 12)
		return MX_EMALFORMED;
	h->tc = (msg[2] & 0x02) != 0;
	h->ad = (msg[3] & 0x20) != 0;
	h->rcode = msg[3] & 0x0f;
	h->qdcount = (unsigned)msg[4] << 8 | msg[5];
	h->ancount = (unsigned)msg[6] << 8 | msg[7];
	return 0;
}

int
mx_answer_each(const uint8_t *msg, size_t len, uint16_t type,
	       int (*fn)(void *arg, const uint8_t *rdata, size_t rdlen, uint32_t ttl), void *arg)
{
	struct mx_dns_header h;
	size_t off = 12;
	int n = 0;

	if (mx_answer_header(msg, len, &h) != 0)
		return MX_EMALFORMED;
	for (unsigned i = 0; i < h.qdcount; i++) {
		if (skip_name(msg, len, &off) != 0 || off + 4 > len)
			return MX_EMALFORMED;
		off += 4;
	}
	for (unsigned i = 0; i < h.ancount; i++) {
		if (skip_name(msg, len, &off) != 0 || off + 10 > len)
			return MX_EMALFORMED;
		uint16_t t = (uint16_t)(msg[off] << 8 | msg[off + 1]);
		uint16_t cls = (uint16_t)(msg[off + 2] << 8 | msg[off + 3]);
		uint32_t ttl = (uint32_t)msg[off + 4] << 24 | (uint32_t)msg[off + 5] << 16 |
			       (uint32_t)msg[off + 6] << 8 | msg[off + 7];
		size_t rdlen = (size_t)msg[off + 8] << 8 | msg[off + 9];
		off += 10;
		if (off + rdlen > len)
			return MX_EMALFORMED;
		if (ttl & 0x80000000u) /* RFC 2181 8 */
			ttl = 0;
		if (t == type && cls == 1) {
			n++;
			if (fn(arg, msg + off, rdlen, ttl) != 0)
				return n;
		}
		off += rdlen;
	}
	return n;
}

int
mx_answer_min_ttl(const uint8_t *msg, size_t len, uint32_t *ttl)
{
	size_t off = 12;
	uint32_t min = UINT32_MAX;

	if (len < 12)
		return MX_EMALFORMED;
	unsigned qd = (unsigned)msg[4] << 8 | msg[5];
	unsigned an = (unsigned)msg[6] << 8 | msg[7];
	for (unsigned i = 0; i < qd; i++) {
		if (skip_name(msg, len, &off) != 0 || off + 4 > len)
			return MX_EMALFORMED;
		off += 4;
	}
	for (unsigned i = 0; i < an; i++) {
		if (skip_name(msg, len, &off) != 0 || off + 10 > len)
			return MX_EMALFORMED;
		uint32_t t = (uint32_t)msg[off + 4] << 24 | (uint32_t)msg[off + 5] << 16 |
			     (uint32_t)msg[off + 6] << 8 | msg[off + 7];
		size_t rdlen = (size_t)msg[off + 8] << 8 | msg[off + 9];
		off += 10;
		if (off + rdlen > len)
			return MX_EMALFORMED;
		off += rdlen;
		/* RFC 2181 8: a TTL with the top bit set is treated as zero. */
		if (t & 0x80000000u)
			t = 0;
		if (t < min)
			min = t;
	}
	*ttl = min == UINT32_MAX ? MX_TTL_DEFAULT : min;
	return 0;
}

void
mx_list_reshuffle(struct mx_list *l, struct mx_rng *rng)
{
	for (size_t a = 0; a < l->nhosts;) {
		size_t b = a + 1;
		while (b < l->nhosts && l->hosts[b].pref == l->hosts[a].pref)
			b++;
		for (size_t k = b - a; k > 1; k--) {
			size_t j = a + mx_rng_below(rng, (uint32_t)k);
			struct mx_host t = l->hosts[a + k - 1];
			l->hosts[a + k - 1] = l->hosts[j];
			l->hosts[j] = t;
		}
		a = b;
	}
}

size_t
mx_list_format(const struct mx_list *l, char *buf, size_t size)
{
	size_t o = 0;

	if (size == 0)
		return 0;
	buf[0] = '\0';
	for (size_t i = 0; i < l->nhosts; i++) {
		const struct mx_host *h = &l->hosts[i];
		int n = snprintf(buf + o, size - o, "%u %s%s", h->pref, h->name,
				 h->implicit ? " (implicit)" : "");
		if (n < 0 || (size_t)n >= size - o)
			return size - 1;
		o += (size_t)n;
		for (size_t k = 0; k < h->naddrs; k++) {
			char a[INET6_ADDRSTRLEN];
			inet_ntop(h->addrs[k].family, h->addrs[k].addr, a, sizeof(a));
			n = snprintf(buf + o, size - o, "%s%s", k ? "," : " [", a);
			if (n < 0 || (size_t)n >= size - o)
				return size - 1;
			o += (size_t)n;
		}
		n = snprintf(buf + o, size - o, "%s\n", h->naddrs ? "]" : "");
		if (n < 0 || (size_t)n >= size - o)
			return size - 1;
		o += (size_t)n;
	}
	return o;
}

/* ---- loop detection: our own endpoints ---- */

void
mx_self_add(struct mx_self *self, int family, const void *addr, unsigned prefix, unsigned port)
{
	unsigned max = family == AF_INET ? 32 : family == AF_INET6 ? 128 : 0;
	if (max == 0 || prefix > max || self->n >= MX_SELF_MAX)
		return;
	struct mx_self_entry *e = &self->v[self->n++];
	memset(e, 0, sizeof(*e));
	e->family = family;
	memcpy(e->addr, addr, max / 8);
	e->prefix = prefix;
	e->port = port;
}

static bool
prefix_has(const struct mx_self_entry *e, const uint8_t *a)
{
	unsigned full = e->prefix / 8, rest = e->prefix % 8;
	if (memcmp(e->addr, a, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xff << (8 - rest));
	return (e->addr[full] & mask) == (a[full] & mask);
}

bool
mx_self_match(const struct mx_self *self, int family, const uint8_t *addr, unsigned port)
{
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (family == AF_INET6 && memcmp(addr, v4mapped, 12) == 0) {
		family = AF_INET;
		addr += 12;
	}
	for (size_t i = 0; i < self->n; i++) {
		const struct mx_self_entry *e = &self->v[i];
		if (e->family == family && e->port == port && prefix_has(e, addr))
			return true;
	}
	return false;
}

size_t
mx_drop_self(struct mx_list *l, unsigned port, const struct mx_self *self)
{
	bool found = false;
	uint16_t cut = 0;
	for (size_t i = 0; i < l->nhosts; i++) {
		const struct mx_host *h = &l->hosts[i];
		for (size_t k = 0; k < h->naddrs; k++)
			if (mx_self_match(self, h->addrs[k].family, h->addrs[k].addr, port) &&
			    (!found || h->pref < cut)) {
				found = true;
				cut = h->pref;
			}
	}
	if (!found)
		return 0;
	size_t kept = 0, n = l->nhosts;
	for (size_t i = 0; i < n; i++) {
		if (l->hosts[i].pref >= cut)
			continue;
		if (kept != i)
			l->hosts[kept] = l->hosts[i];
		kept++;
	}
	l->nhosts = kept;
	return n - kept;
}
