/*
 * mailbox.h: the one address grammar of relayd: pure parsers for SMTP paths and ESMTP parameter
 * values (RFC 5321 4.1.2, RFC 3461 xtext, RFC 6531 UTF-8).  The SMTP server parses what clients
 * send with it (node/smtp/), and the delivery client checks what it is about to send with the
 * same rules (node/delivery/mta_session.c), so an address relayd accepts is an address it can
 * send (issue 12 sec. 1): nothing is accepted only to bounce for its syntax later.
 */
#ifndef RELAY_MAILBOX_H
#define RELAY_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 5321 4.5.3.1 size limits of a path and its parts (the SMTP_ names are the ones the
 * session machine and its tests use). */
#define SMTP_LOCAL_MAX 64   /* RFC 5321 4.5.3.1.1 */
#define SMTP_DOMAIN_MAX 255 /* RFC 5321 4.5.3.1.2 */
#define SMTP_PATH_MAX 256   /* RFC 5321 4.5.3.1.3, incl. the angle brackets */

enum mailbox_err {
	MAILBOX_OK = 0,
	MAILBOX_SYNTAX = -1, /* malformed */
	MAILBOX_UTF8 = -2,	/* UTF-8 present but not allowed (no SMTPUTF8) */
	MAILBOX_LENGTH = -3, /* a part is over its RFC 5321 4.5.3.1 limit */
};

#define MAILBOX_PARSE_NULL_OK 1	    /* "<>" allowed (MAIL) */
#define MAILBOX_PARSE_POSTMASTER_OK 2 /* "<postmaster>" allowed (RCPT) */
#define MAILBOX_PARSE_UTF8 4	    /* SMTPUTF8 in effect */

/*
 * Parses a Path at p (which starts at '<'; p[0..len) need not be NUL-terminated).  On success
 * writes the mailbox (source route stripped, no brackets, NUL-terminated) into out (cap >=
 * SMTP_PATH_MAX), sets *domain_off to the offset of the domain in out (or -1 for "" and
 * "postmaster"), and *consumed to the number of bytes of p used (up to and including '>').
 * Returns MAILBOX_OK or a negative enum mailbox_err.
 */
int mailbox_parse_path(const char *p, size_t len, unsigned flags, char *out, size_t cap,
		     int *domain_off, size_t *consumed);

/*
 * A mailbox as stored in the queue (no brackets, no source route; "" is the null path when
 * flags has MAILBOX_PARSE_NULL_OK): true when mailbox_parse_path() would take "<mailbox>"
 * whole with these flags.  The delivery client sends only what passes this.
 */
bool mailbox_valid(const char *mailbox, unsigned flags);

/* RFC 3461 sec 4: xtext; max bytes.  Returns true when valid. */
bool mailbox_xtext_valid(const char *p, size_t len, size_t max);

/* Well-formed UTF-8 (RFC 3629), no overlongs or surrogates. */
bool mailbox_utf8_valid(const char *p, size_t len);

#endif
