/*
 * mailbox.c: pure parsers for SMTP paths and ESMTP parameter values (mailbox.h): the address
 * grammar shared by the SMTP server and the delivery client.
 *
 * Contract: every function reads only the bytes it is given (no NUL terminator needed), writes
 * only within the capacity it is given, allocates nothing and has no state.  Syntax follows
 * RFC 5321 sec 4.1.2 (Path, Mailbox, Dot-string, Quoted-string, Domain, address-literal),
 * lengths RFC 5321 sec 4.5.3.1, UTF-8 per RFC 6531 sec 3.3 (UTF8-non-ascii in atext, quoted
 * text and U-label domains, accepted here and refused by the caller when SMTPUTF8 was not
 * given), xtext per RFC 3461 sec 4.
 *
 * Failure modes: malformed input returns MAILBOX_SYNTAX, UTF-8 when not allowed
 * MAILBOX_UTF8, an over-long part MAILBOX_LENGTH.  Nothing here asserts on input.
 */
#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

#include "mailbox.h"

#define MAILBOX_LABEL_MAX 63   /* RFC 1035 sec 2.3.4 */
#define MAILBOX_LITERAL_MAX 64 /* "[IPv6:...]" content; longer than any valid literal */

static bool
is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 5322 atext, plus UTF8-non-ascii bytes (validated as a whole later). */
static bool
is_atext(unsigned char c)
{
	if (is_alpha(c) || is_digit(c) || c >= 0x80)
		return true;
	return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

bool
mailbox_utf8_valid(const char *p, size_t len)
{
	const unsigned char *s = (const unsigned char *)p;
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		unsigned cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		/* overlongs, surrogates, beyond U+10FFFF (RFC 3629 sec 3) */
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

bool
mailbox_xtext_valid(const char *p, size_t len, size_t max)
{
	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];

		if (c == '+') {
			for (int k = 1; k <= 2; k++) {
				unsigned char h = i + k < len ? (unsigned char)p[i + k] : 0;
				if (!is_digit(h) && !(h >= 'A' && h <= 'F'))
					return false;
			}
			i += 2;
			continue;
		}
		if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

/*
 * Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str] (RFC 5321 4.1.2),
 * a label at most 63 octets.  UTF-8 bytes count as letters (U-labels, RFC 6531 sec 3.3).
 * Returns the number of bytes that form the domain (0 when none).
 */
static size_t
scan_domain(const char *p, size_t len)
{
	size_t i = 0, label_start = 0;

	for (;;) {
		label_start = i;
		while (i < len) {
			unsigned char c = (unsigned char)p[i];
			if (!(is_alpha(c) || is_digit(c) || c == '-' || c >= 0x80))
				break;
			i++;
		}
		size_t ll = i - label_start;
		if (ll == 0 || ll > MAILBOX_LABEL_MAX || p[label_start] == '-' || p[i - 1] == '-')
			return 0;
		if (i < len && p[i] == '.' && i + 1 < len) {
			unsigned char nc = (unsigned char)p[i + 1];
			if (is_alpha(nc) || is_digit(nc) || nc >= 0x80) {
				i++;
				continue;
			}
		}
		return i;
	}
}

/* address-literal: "[" IPv4 / "IPv6:" IPv6 "]" (RFC 5321 4.1.3).  General literals refused. */
static size_t
scan_literal(const char *p, size_t len)
{
	char tmp[MAILBOX_LITERAL_MAX + 1];
	const char *end;
	size_t n;

	if (len < 2 || p[0] != '[')
		return 0;
	end = memchr(p, ']', len);
	if (end == NULL)
		return 0;
	n = (size_t)(end - p) - 1;
	if (n == 0 || n > MAILBOX_LITERAL_MAX)
		return 0;
	memcpy(tmp, p + 1, n);
	tmp[n] = '\0';

	unsigned char buf[16];
	if (n > 5 && strncasecmp(tmp, "IPv6:", 5) == 0) {
		if (inet_pton(AF_INET6, tmp + 5, buf) != 1)
			return 0;
	} else if (inet_pton(AF_INET, tmp, buf) != 1) {
		return 0;
	}
	return n + 2;
}

/* Local-part = Dot-string / Quoted-string.  Returns its length, 0 when malformed. */
static size_t
scan_local(const char *p, size_t len)
{
	size_t i = 0;

	if (len > 0 && p[0] == '"') {
		i = 1;
		while (i < len) {
			unsigned char c = (unsigned char)p[i];
			if (c == '"')
				return i + 1;
			if (c == '\\') {
				/* quoted-pairSMTP = %d92 %d32-126 */
				if (i + 1 >= len)
					return 0;
				unsigned char q = (unsigned char)p[i + 1];
				if (q < 32 || q > 126)
					return 0;
				i += 2;
				continue;
			}
			/* qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF8-non-ascii */
			if (!(c >= 32 && c <= 126) && c < 0x80)
				return 0;
			i++;
		}
		return 0;
	}
	for (;;) {
		size_t start = i;
		while (i < len && is_atext((unsigned char)p[i]))
			i++;
		if (i == start)
			return 0;
		if (i < len && p[i] == '.') {
			i++;
			continue;
		}
		return i;
	}
}

int
mailbox_parse_path(const char *p, size_t len, unsigned flags, char *out, size_t cap, int *domain_off,
		 size_t *consumed)
{
	size_t i = 1, mb_start, local_len, dom_len;

	if (cap < SMTP_PATH_MAX || len < 2 || p[0] != '<')
		return MAILBOX_SYNTAX;

	if (p[1] == '>') {
		if (!(flags & MAILBOX_PARSE_NULL_OK))
			return MAILBOX_SYNTAX;
		out[0] = '\0';
		*domain_off = -1;
		*consumed = 2;
		return MAILBOX_OK;
	}

	/* A-d-l = At-domain *( "," At-domain ) ":" ; accepted and ignored (RFC 5321 App. C) */
	if (p[1] == '@') {
		for (;;) {
			if (i >= len || p[i] != '@')
				return MAILBOX_SYNTAX;
			i++;
			size_t d = scan_domain(p + i, len - i);
			if (d == 0)
				return MAILBOX_SYNTAX;
			i += d;
			if (i < len && p[i] == ',') {
				i++;
				continue;
			}
			if (i < len && p[i] == ':') {
				i++;
				break;
			}
			return MAILBOX_SYNTAX;
		}
	}

	mb_start = i;
	local_len = scan_local(p + i, len - i);
	if (local_len == 0)
		return MAILBOX_SYNTAX;
	i += local_len;

	if (i < len && p[i] == '>' && (flags & MAILBOX_PARSE_POSTMASTER_OK) && local_len == 10 &&
	    strncasecmp(p + mb_start, "postmaster", 10) == 0) {
		memcpy(out, p + mb_start, 10);
		out[10] = '\0';
		*domain_off = -1;
		*consumed = i + 1;
		return MAILBOX_OK;
	}
	if (i >= len || p[i] != '@')
		return MAILBOX_SYNTAX;
	i++;
	if (i < len && p[i] == '[')
		dom_len = scan_literal(p + i, len - i);
	else
		dom_len = scan_domain(p + i, len - i);
	if (dom_len == 0)
		return MAILBOX_SYNTAX;
	i += dom_len;
	if (i >= len || p[i] != '>')
		return MAILBOX_SYNTAX;

	size_t mb_len = i - mb_start;
	if (local_len > SMTP_LOCAL_MAX || dom_len > SMTP_DOMAIN_MAX || mb_len + 2 > SMTP_PATH_MAX)
		return MAILBOX_LENGTH;
	bool ascii = true;
	for (size_t k = mb_start; k < i; k++)
		if ((unsigned char)p[k] >= 0x80)
			ascii = false;
	if (!ascii) {
		if (!(flags & MAILBOX_PARSE_UTF8))
			return MAILBOX_UTF8;
		if (!mailbox_utf8_valid(p + mb_start, mb_len))
			return MAILBOX_SYNTAX;
	}
	memcpy(out, p + mb_start, mb_len);
	out[mb_len] = '\0';
	*domain_off = (int)(local_len + 1);
	*consumed = i + 1;
	return MAILBOX_OK;
}

bool
mailbox_valid(const char *mailbox, unsigned flags)
{
	char path[SMTP_PATH_MAX + 2], out[SMTP_PATH_MAX];
	size_t n = strlen(mailbox), used;
	int dom;

	if (n + 2 > SMTP_PATH_MAX)
		return false;
	path[0] = '<';
	memcpy(path + 1, mailbox, n);
	path[n + 1] = '>';
	if (mailbox_parse_path(path, n + 2, flags, out, sizeof(out), &dom, &used) != MAILBOX_OK)
		return false;
	/* whole, and no source route to strip: the stored form is the sent form */
	return used == n + 2 && strcmp(out, mailbox) == 0;
}
