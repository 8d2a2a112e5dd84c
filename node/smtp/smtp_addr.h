/*
 * smtp_addr.h: pure parsers for SMTP paths and ESMTP parameter values (RFC 5321 4.1.2,
 * RFC 3461 xtext, RFC 6531 UTF-8).  Internal to relay_smtp (double-underscore names).
 */
#ifndef RELAY_SMTP_ADDR_H
#define RELAY_SMTP_ADDR_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 5321 4.5.3.1 size limits of a path and its parts. */
#define SMTP_LOCAL_MAX 64   /* RFC 5321 4.5.3.1.1 */
#define SMTP_DOMAIN_MAX 255 /* RFC 5321 4.5.3.1.2 */
#define SMTP_PATH_MAX 256   /* RFC 5321 4.5.3.1.3, incl. the angle brackets */

enum smtp__addr_err {
	SMTP__ADDR_OK = 0,
	SMTP__ADDR_SYNTAX = -1, /* malformed */
	SMTP__ADDR_UTF8 = -2,	/* UTF-8 present but not allowed (no SMTPUTF8) */
	SMTP__ADDR_LENGTH = -3, /* a part is over its RFC 5321 4.5.3.1 limit */
};

#define SMTP__PARSE_NULL_OK 1	    /* "<>" allowed (MAIL) */
#define SMTP__PARSE_POSTMASTER_OK 2 /* "<postmaster>" allowed (RCPT) */
#define SMTP__PARSE_UTF8 4	    /* SMTPUTF8 in effect */

/*
 * Parses a Path at p (which starts at '<'; p[0..len) need not be NUL-terminated).  On success
 * writes the mailbox (source route stripped, no brackets, NUL-terminated) into out (cap >=
 * SMTP_PATH_MAX), sets *domain_off to the offset of the domain in out (or -1 for "" and
 * "postmaster"), and *consumed to the number of bytes of p used (up to and including '>').
 * Returns SMTP__ADDR_OK or a negative enum smtp__addr_err.
 */
int smtp__parse_path(const char *p, size_t len, unsigned flags, char *out, size_t cap,
		     int *domain_off, size_t *consumed);

/* RFC 3461 sec 4: xtext; max bytes.  Returns true when valid. */
bool smtp__xtext_valid(const char *p, size_t len, size_t max);

/* Well-formed UTF-8 (RFC 3629), no overlongs or surrogates. */
bool smtp__utf8_valid(const char *p, size_t len);

#endif
