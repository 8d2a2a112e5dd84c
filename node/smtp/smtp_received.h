/*
 * smtp_received.h: the Received: trace header a relay prepends (RFC 5321 4.4, RFC 5322 3.6.7).
 * Pure: the caller supplies every field, the date included.
 */
#ifndef RELAY_SMTP_RECEIVED_H
#define RELAY_SMTP_RECEIVED_H

#include <stdbool.h>
#include <stddef.h>

struct smtp_received_info {
	const char *helo;	 /* client's EHLO/HELO argument, or NULL */
	const char *client_name; /* verified reverse name, or NULL ("unknown") */
	const char *client_addr; /* "192.0.2.1" or "IPv6:2001:db8::1" (RFC 5321 4.1.3) */
	const char *hostname;	 /* ours */
	bool esmtp;		 /* EHLO rather than HELO */
	bool tls;
	bool auth;
	bool smtputf8;
	const char *queue_id; /* or NULL */
	const char *rcpt;     /* the recipient when there is exactly one, else NULL */
	const char *date;     /* RFC 5322 date-time, supplied by the caller (no clock here) */
};

/*
 * Writes "Received: from ... by ... with <protocol> id ... for <rcpt>; <date>" CRLF, folded
 * with CRLF TAB before "by", "with"/"id", "for".  Protocol per RFC 3848 (SMTP, ESMTP, ESMTPA,
 * ESMTPS, ESMTPSA) and RFC 6531 sec 3.7.3 (UTF8SMTP, UTF8SMTPA, UTF8SMTPS, UTF8SMTPSA).
 * Client-supplied text (helo) is sanitized so it cannot break the comment or the header.
 * Returns the length written (NUL-terminated, the NUL not counted) or -ENOSPC / -EINVAL.
 */
int smtp_received_header(char *buf, size_t cap, const struct smtp_received_info *ri);

#endif
