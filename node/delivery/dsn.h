/*
 * dsn.h - delivery status notifications (bounces): who gets one, and the
 * message itself.
 *
 * Contract: pure; the caller supplies every time (as RFC 5322 date strings)
 * and the new Message-ID; nothing reads a clock or a random source.
 *
 * Who gets a DSN (dsn_should_notify, RFC 3461 4.1 and 5.2.2):
 *   - never when the reverse-path is null (<>): DSNs and other bounces must
 *     not cause bounces (RFC 5321 4.5.5, RFC 3464 2);
 *   - NOTIFY=NEVER: none;
 *   - failed: when NOTIFY has FAILURE, or NOTIFY was not given;
 *   - delayed: when NOTIFY has DELAY, or NOTIFY was not given and the caller
 *     chose delay_by_default (RFC 3461 4.1 lets an MTA treat a missing
 *     NOTIFY as either FAILURE or FAILURE,DELAY);
 *   - delivered/relayed/expanded: only when NOTIFY has SUCCESS.
 *
 * The message (dsn_build, RFC 3464 + RFC 6522 multipart/report + RFC 3461):
 * From: MAILER-DAEMON@<reporting MTA>, To: the original sender, Subject by
 * the most serious action (failed > delayed > success), Auto-Submitted:
 * auto-replied (RFC 3834 5), then three parts: text/plain for people,
 * message/delivery-status (per-message then per-recipient fields), and the
 * original as message/rfc822 or text/rfc822-headers.  CRLF line ends.
 *
 * Classification (issue 13 part 5): the machine-readable part carries it, so
 * bounce processors need not guess from the prose: Action failed with a 5.x.x
 * Status is a permanent failure (Diagnostic-Code: smtp; the destination's
 * reply); an expiry is Action failed, Status 4.4.7 ("delivery time expired",
 * RFC 3463 3.5) with the last temporary reply as Diagnostic-Code; a delay is
 * Action delayed with its 4.x.x Status and Will-Retry-Until.  The text part
 * says the same in our own words (it copies no other MTA's wording, so
 * parsers that recognize MTAs by their prose take it for a plain RFC 3464
 * report).
 *
 * What of the original is returned (the rule):
 *   - RET=HDRS: headers only;
 *   - when no recipient failed (delay or success reports): headers only;
 *   - RET=FULL or RET not given: the full message when it fits in orig_max
 *     bytes, else headers only (the text part says so);
 *   - headers longer than orig_max are cut at a line boundary.
 * The MIME boundary is derived from the Message-ID and checked not to occur
 * in anything the message includes.
 *
 * Failure: -EINVAL for a missing field, a header value with CR, LF or other
 * control bytes (header injection), or too many recipients; -ENOMEM.
 */
#ifndef RELAY_DSN_H
#define RELAY_DSN_H

#include <stdbool.h>
#include <stddef.h>

#define DSN_MAX_RCPTS 1000	   /* recipients in one report */
#define DSN_FIELD_MAX 998	   /* RFC 5322 2.1.1 line length, for every value */
#define DSN_ORIG_MAX_DEFAULT 65536 /* bytes of the original returned */
#define DSN_BOUNDARY_MAX 70	   /* RFC 2046 5.1.1 */

/* Same values as MTA_NOTIFY_* (mta_session.h). */
enum dsn_notify {
	DSN_NOTIFY_NEVER = 1,
	DSN_NOTIFY_SUCCESS = 2,
	DSN_NOTIFY_FAILURE = 4,
	DSN_NOTIFY_DELAY = 8,
};

enum dsn_ret { DSN_RET_DEFAULT = 0, DSN_RET_FULL, DSN_RET_HDRS };

enum dsn_action { /* RFC 3464 2.3.3 */
		  DSN_ACTION_FAILED = 0,
		  DSN_ACTION_DELAYED,
		  DSN_ACTION_DELIVERED,
		  DSN_ACTION_RELAYED,
		  DSN_ACTION_EXPANDED,
};

/* "failed", "delayed", ... */
const char *dsn_action_name(enum dsn_action a);

/* Should the sender get a report of `action` for a recipient with `notify`
 * (0 = NOTIFY not given)?  mail_from "" is the null reverse-path. */
bool dsn_should_notify(const char *mail_from, unsigned notify, enum dsn_action action,
		       bool delay_by_default);

/* All strings borrowed; none may contain CR, LF or other control bytes. */
struct dsn_rcpt {
	const char *final_rcpt; /* address (Final-Recipient: rfc822;...) */
	const char *orcpt;	/* "addr-type;address" from ORCPT, or NULL */
	enum dsn_action action;
	const char *status;	      /* RFC 3463 "5.1.1" */
	const char *remote_mta;	      /* host name, or NULL */
	const char *diag;	      /* SMTP reply "550 5.1.1 ...", or NULL */
	const char *last_attempt;     /* RFC 5322 date, or NULL */
	const char *will_retry_until; /* RFC 5322 date for delayed, or NULL */
	bool expired; /* failed because queue_lifetime is over (after temporary failures): Status
			 4.4.7, diag the last reply (RFC 3463 3.5, RFC 3464 2.3.3) */
};

struct dsn_input {
	const char *reporting_mta; /* our host name */
	const char *mail_from;	   /* original sender: the To: of the report; not "" */
	const char *envid;	   /* decoded ENVID, or NULL */
	enum dsn_ret ret;
	const char *arrival_date; /* RFC 5322 date */
	const char *date;	  /* RFC 5322 date for the Date: header */
	const char *message_id;	  /* new id, without <>: "dsn.123@relay.example" */
	const struct dsn_rcpt *rcpts;
	size_t nrcpts;	  /* 1 .. DSN_MAX_RCPTS */
	const char *orig; /* original message, CRLF lines; not copied; may be NULL */
	size_t orig_len;
	size_t orig_max; /* 0 = DSN_ORIG_MAX_DEFAULT */
};

/*
 * Build the report.  On success returns 0 and a malloc'd message in *out
 * (owned by the caller, NUL-terminated) of *out_len bytes; on failure
 * returns a negative errno and leaves *out untouched.
 */
int dsn_build(const struct dsn_input *in, char **out, size_t *out_len);

#endif
