/*
 * proxy.c: PROXY protocol v1/v2 parser (see proxy.h).
 *
 * v1: "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") [SP src SP dst SP sport SP dport] CRLF, at most
 *     107 bytes; addresses must be of the stated family, ports 0-65535 without leading zeros.
 * v2: 12-byte signature, version/command (0x2 << 4 | 0 LOCAL / 1 PROXY), family/transport
 *     (0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x00 UNSPEC), 16-bit length, addresses, TLVs
 *     (skipped).  UDP and UNIX families are refused: an SMTP listener only takes TCP.
 */
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t proxy_v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

bool
proxy_looks_like(const uint8_t *buf, size_t len)
{
	static const char v1[] = "PROXY ";
	size_t n1 = len < 6 ? len : 6, n2 = len < 12 ? len : 12;
	if (len == 0)
		return false;
	return memcmp(buf, v1, n1) == 0 || memcmp(buf, proxy_v2_sig, n2) == 0;
}

static int
parse_port(const char *s, uint16_t *out)
{
	size_t n = strlen(s);
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	unsigned v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*out = (uint16_t)v;
	return 0;
}

static int
set_addr(struct sockaddr_storage *ss, int family, const char *text, const char *port)
{
	uint16_t p;
	if (parse_port(port, &p) != 0)
		return -1;
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
		s4->sin_family = AF_INET;
		s4->sin_port = htons(p);
		return inet_pton(AF_INET, text, &s4->sin_addr) == 1 ? 0 : -1;
	}
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	s6->sin6_family = AF_INET6;
	s6->sin6_port = htons(p);
	return inet_pton(AF_INET6, text, &s6->sin6_addr) == 1 ? 0 : -1;
}

static int
parse_v1(const uint8_t *buf, size_t len, struct proxy_info *out)
{
	size_t lf = 0;
	while (lf < len && lf < PROXY_V1_MAX && buf[lf] != '\n')
		lf++;
	if (lf == len)
		return len >= PROXY_V1_MAX ? -1 : 0;
	if (lf >= PROXY_V1_MAX || lf < 7 || buf[lf - 1] != '\r')
		return -1;
	char line[PROXY_V1_MAX + 1];
	memcpy(line, buf, lf - 1);
	line[lf - 1] = '\0';
	for (size_t i = 0; i < lf - 1; i++)
		if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] > 0x7e)
			return -1;
	char *f[7];
	size_t n = 0;
	char *p = line;
	while (n < 7) {
		f[n++] = p;
		char *sp = strchr(p, ' ');
		if (sp == NULL)
			break;
		*sp = '\0';
		p = sp + 1;
	}
	if (strchr(p, ' ') != NULL || strcmp(f[0], "PROXY") != 0 || n < 2)
		return -1;
	memset(out, 0, sizeof(*out));
	out->version = 1;
	if (strcmp(f[1], "UNKNOWN") == 0) {
		out->local = true; /* the rest of the line is ignored (spec 2.1) */
		return (int)lf + 1;
	}
	int family;
	if (strcmp(f[1], "TCP4") == 0)
		family = AF_INET;
	else if (strcmp(f[1], "TCP6") == 0)
		family = AF_INET6;
	else
		return -1;
	if (n != 6)
		return -1;
	for (size_t i = 2; i < 6; i++)
		if (f[i][0] == '\0')
			return -1;
	if (set_addr(&out->src, family, f[2], f[4]) != 0 ||
	    set_addr(&out->dst, family, f[3], f[5]) != 0)
		return -1;
	return (int)lf + 1;
}

static int
parse_v2(const uint8_t *buf, size_t len, struct proxy_info *out)
{
	if (len < 16)
		return 0;
	uint8_t ver_cmd = buf[12], fam = buf[13];
	size_t hlen = ((size_t)buf[14] << 8) | buf[15];
	if ((ver_cmd >> 4) != 2 || (ver_cmd & 0x0f) > 1 || 16 + hlen > PROXY_V2_MAX)
		return -1;
	if (len < 16 + hlen)
		return 0;
	memset(out, 0, sizeof(*out));
	out->version = 2;
	const uint8_t *a = buf + 16;
	if ((ver_cmd & 0x0f) == 0) { /* LOCAL: health check from the balancer itself */
		out->local = true;
		return (int)(16 + hlen);
	}
	if (fam == 0x11) {
		if (hlen < 12)
			return -1;
		struct sockaddr_in *s = (struct sockaddr_in *)&out->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&out->dst;
		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, a, 4);
		memcpy(&d->sin_addr, a + 4, 4);
		memcpy(&s->sin_port, a + 8, 2);
		memcpy(&d->sin_port, a + 10, 2);
	} else if (fam == 0x21) {
		if (hlen < 36)
			return -1;
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&out->dst;
		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, a, 16);
		memcpy(&d->sin6_addr, a + 16, 16);
		memcpy(&s->sin6_port, a + 32, 2);
		memcpy(&d->sin6_port, a + 34, 2);
	} else if (fam == 0x00) {
		out->local = true; /* UNSPEC: no usable address; keep the socket's */
	} else {
		return -1; /* UDP, UNIX: not for an SMTP listener */
	}
	return (int)(16 + hlen);
}

int
proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out)
{
	if (len == 0)
		return 0;
	if (!proxy_looks_like(buf, len))
		return -1;
	if (buf[0] == 'P')
		return len < 6 ? 0 : parse_v1(buf, len, out);
	return len < 12 ? 0 : parse_v2(buf, len, out);
}
