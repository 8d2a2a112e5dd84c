/*
 * dsn.c - RFC 3464 delivery status notifications (see dsn.h).
 *
 * The builder runs twice over the same writer: once counting, once into an
 * exact allocation, so the output never grows past what was measured.
 */
#include "dsn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mta_session.h"

_Static_assert((int)DSN_NOTIFY_NEVER == (int)MTA_NOTIFY_NEVER &&
		   (int)DSN_NOTIFY_SUCCESS == (int)MTA_NOTIFY_SUCCESS &&
		   (int)DSN_NOTIFY_FAILURE == (int)MTA_NOTIFY_FAILURE &&
		   (int)DSN_NOTIFY_DELAY == (int)MTA_NOTIFY_DELAY,
	       "NOTIFY bits shared with mta_session.h");

const char *
dsn_action_name(enum dsn_action a)
{
	switch (a) {
	case DSN_ACTION_FAILED:
		return "failed";
	case DSN_ACTION_DELAYED:
		return "delayed";
	case DSN_ACTION_DELIVERED:
		return "delivered";
	case DSN_ACTION_RELAYED:
		return "relayed";
	case DSN_ACTION_EXPANDED:
		return "expanded";
	}
	return "failed";
}

bool
dsn_should_notify(const char *mail_from, unsigned notify, enum dsn_action action,
		  bool delay_by_default)
{
	if (mail_from == NULL || mail_from[0] == '\0')
		return false; /* never a report to <> */
	if (notify & DSN_NOTIFY_NEVER)
		return false;
	switch (action) {
	case DSN_ACTION_FAILED:
		return notify == 0 || (notify & DSN_NOTIFY_FAILURE);
	case DSN_ACTION_DELAYED:
		return notify == 0 ? delay_by_default : (notify & DSN_NOTIFY_DELAY) != 0;
	case DSN_ACTION_DELIVERED:
	case DSN_ACTION_RELAYED:
	case DSN_ACTION_EXPANDED:
		return (notify & DSN_NOTIFY_SUCCESS) != 0;
	}
	return false;
}

/* ------------------------------------------------------------- writer */

struct sb {
	char *p; /* NULL: count only */
	size_t len;
	size_t cap;
};

static void
sb_put(struct sb *b, const char *s, size_t n)
{
	if (b->p != NULL && b->len + n <= b->cap)
		memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void
sb_str(struct sb *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void
sb_fmt(struct sb *b, const char *fmt, ...)
{
	char tmp[DSN_FIELD_MAX + 256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	/* Values are bounded by DSN_FIELD_MAX; a longer line is cut. */
	sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* ----------------------------------------------------------- checks */

static bool
field_ok(const char *s, bool required)
{
	if (s == NULL)
		return !required;
	size_t n = strlen(s);
	if ((required && n == 0) || n > DSN_FIELD_MAX - 40)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return false;
	}
	return true;
}

static bool
status_ok(const char *s)
{
	/* class.subject.detail, RFC 3463 2 */
	if (s == NULL || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return false;
	const char *p = s + 2;
	for (int part = 0; part < 2; part++) {
		int d = 0;
		while (*p >= '0' && *p <= '9' && d < 3) {
			p++;
			d++;
		}
		if (d == 0)
			return false;
		if (part == 0 && *p++ != '.')
			return false;
	}
	return *p == '\0';
}

static int
input_ok(const struct dsn_input *in)
{
	if (!field_ok(in->reporting_mta, true) || !field_ok(in->mail_from, true) ||
	    !field_ok(in->envid, false) || !field_ok(in->arrival_date, true) ||
	    !field_ok(in->date, true) || !field_ok(in->message_id, true) ||
	    strchr(in->message_id, '<') || strchr(in->message_id, '>') ||
	    strchr(in->mail_from, '<') || strchr(in->mail_from, '>'))
		return -EINVAL;
	if (in->nrcpts == 0 || in->nrcpts > DSN_MAX_RCPTS || in->rcpts == NULL)
		return -EINVAL;
	if (in->orig == NULL && in->orig_len != 0)
		return -EINVAL;
	for (size_t i = 0; i < in->nrcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		if (!field_ok(r->final_rcpt, true) || !field_ok(r->orcpt, false) ||
		    (r->orcpt && !strchr(r->orcpt, ';')) || !status_ok(r->status) ||
		    !field_ok(r->remote_mta, false) || !field_ok(r->diag, false) ||
		    !field_ok(r->last_attempt, false) || !field_ok(r->will_retry_until, false) ||
		    (unsigned)r->action > DSN_ACTION_EXPANDED)
			return -EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------ builder */

/* Length of the header section of msg, without the empty line. */
static size_t
header_len(const char *msg, size_t len)
{
	if (len >= 2 && msg[0] == '\r' && msg[1] == '\n')
		return 0;
	for (size_t i = 0; i + 3 < len; i++)
		if (msg[i] == '\r' && msg[i + 1] == '\n' && msg[i + 2] == '\r' &&
		    msg[i + 3] == '\n')
			return i + 2;
	return len; /* no body: all headers */
}

/* Cut n to the last line end at or before max. */
static size_t
cut_at_line(const char *msg, size_t n, size_t max)
{
	if (n <= max)
		return n;
	for (size_t i = max; i >= 2; i--)
		if (msg[i - 2] == '\r' && msg[i - 1] == '\n')
			return i;
	return 0;
}

struct plan {
	const char *subject;
	bool any_failed;
	bool full;	  /* message/rfc822 rather than text/rfc822-headers */
	bool truncated;	  /* wanted the full message, sent headers */
	size_t inc_len;	  /* bytes of the original included */
	bool fields_8bit; /* a non-ASCII address or text in our own parts */
	char boundary[DSN_BOUNDARY_MAX + 1];
};

static bool
has_8bit(const char *s)
{
	return s != NULL && mta_body_is_8bit(s, strlen(s));
}

static bool
contains(const char *hay, size_t n, const char *needle)
{
	return n > 0 && memmem(hay, n, needle, strlen(needle)) != NULL;
}

static int
make_plan(const struct dsn_input *in, struct plan *p)
{
	bool any_delayed = false;
	size_t max = in->orig_max ? in->orig_max : DSN_ORIG_MAX_DEFAULT;

	memset(p, 0, sizeof(*p));
	p->fields_8bit = has_8bit(in->mail_from) || has_8bit(in->envid);
	for (size_t i = 0; i < in->nrcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		p->fields_8bit |= has_8bit(r->final_rcpt) || has_8bit(r->orcpt) ||
				  has_8bit(r->diag) || has_8bit(r->remote_mta);
		if (in->rcpts[i].action == DSN_ACTION_FAILED)
			p->any_failed = true;
		else if (in->rcpts[i].action == DSN_ACTION_DELAYED)
			any_delayed = true;
	}
	p->subject = p->any_failed ? "Delivery report: message not delivered"
		     : any_delayed ? "Delivery report: message delayed, still trying"
				   : "Delivery report: message delivered";
	if (in->orig != NULL && in->orig_len > 0) {
		bool want_full = p->any_failed && in->ret != DSN_RET_HDRS;
		if (want_full && in->orig_len <= max) {
			p->full = true;
			p->inc_len = in->orig_len;
		} else {
			p->truncated = want_full;
			p->inc_len = cut_at_line(in->orig, header_len(in->orig, in->orig_len), max);
		}
	}

	/* Boundary: from the Message-ID's letters and digits, plus a counter
	 * until it occurs nowhere in what we include (RFC 2046 5.1.1). */
	char base[41];
	size_t k = 0;
	for (const char *s = in->message_id; *s && k < sizeof(base) - 1; s++)
		if ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9'))
			base[k++] = *s;
	base[k] = '\0';
	for (unsigned n = 0; n < 1000; n++) {
		snprintf(p->boundary, sizeof(p->boundary), "=_dsn_%s_%u", base, n);
		bool clash = contains(in->orig, p->inc_len, p->boundary);
		for (size_t i = 0; !clash && i < in->nrcpts; i++)
			clash = (in->rcpts[i].diag && strstr(in->rcpts[i].diag, p->boundary));
		if (!clash)
			return 0;
	}
	return -EINVAL; /* a crafted original that contains 1000 candidates */
}

/* The message header and the multipart/report preamble (RFC 5322, RFC 3834 5, RFC 6522). */
static void
write_head(struct sb *b, const struct dsn_input *in, const struct plan *p)
{
	sb_fmt(b, "From: Mail delivery reports <MAILER-DAEMON@%s>\r\n", in->reporting_mta);
	sb_fmt(b, "To: <%s>\r\n", in->mail_from);
	sb_fmt(b, "Subject: %s\r\n", p->subject);
	sb_fmt(b, "Date: %s\r\n", in->date);
	sb_fmt(b, "Message-ID: <%s>\r\n", in->message_id);
	sb_str(b, "Auto-Submitted: auto-replied\r\n");
	sb_str(b, "MIME-Version: 1.0\r\n");
	sb_fmt(b,
	       "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	       "\tboundary=\"%s\"\r\n",
	       p->boundary);
	sb_str(b, "\r\nThis is a delivery report in MIME format (RFC 3464).\r\n\r\n");
}

/* The status a recipient's report carries: 4.4.7 for an expiry (RFC 3463 3.5). */
static const char *
rcpt_status(const struct dsn_rcpt *r)
{
	return r->action == DSN_ACTION_FAILED && r->expired ? "4.4.7" : r->status;
}

/* What happened to one recipient, in words. */
static const char *
rcpt_outcome(const struct dsn_rcpt *r)
{
	switch (r->action) {
	case DSN_ACTION_FAILED:
		if (r->expired)
			return "not delivered: we gave up after temporary failures (queue lifetime "
			       "over)";
		return r->status[0] == '5' ? "not delivered: permanent failure"
					   : "not delivered";
	case DSN_ACTION_DELAYED:
		return "delayed: still queued, delivery will be tried again";
	case DSN_ACTION_DELIVERED:
		return "delivered";
	case DSN_ACTION_RELAYED:
		return "relayed to a system that sends no delivery reports";
	case DSN_ACTION_EXPANDED:
		return "delivered and forwarded to further recipients";
	}
	return "not delivered";
}

/* Part 1, for people: our own words, one block per recipient. */
static void
write_text(struct sb *b, const struct dsn_input *in, const struct plan *p)
{
	bool any_delayed = false, any_expired = false;
	for (size_t i = 0; i < in->nrcpts; i++) {
		any_delayed |= in->rcpts[i].action == DSN_ACTION_DELAYED;
		any_expired |= in->rcpts[i].action == DSN_ACTION_FAILED && in->rcpts[i].expired;
	}
	sb_fmt(b, "--%s\r\n", p->boundary);
	sb_str(b, "Content-Description: Notification\r\n"
		  "Content-Type: text/plain; charset=utf-8\r\n");
	if (p->fields_8bit)
		sb_str(b, "Content-Transfer-Encoding: 8bit\r\n");
	sb_str(b, "\r\n");
	sb_fmt(b, "Delivery report from the relay %s about your message\r\n", in->reporting_mta);
	sb_fmt(b, "received on %s.\r\n\r\n", in->arrival_date);
	if (p->any_failed) {
		sb_str(b, "Your message did not reach the recipients listed below, and the\r\n"
			  "relay has stopped trying to send it to them.");
		if (any_expired)
			sb_str(b, " Where the reason says\r\n"
				  "\"gave up\", the receiving side kept refusing it for the time\r\n"
				  "being until the time we keep messages ran out; sending it again\r\n"
				  "later may succeed.");
		sb_str(b, "\r\n\r\n");
	} else if (any_delayed) {
		sb_str(b, "Your message has not reached the recipients listed below yet. It\r\n"
			  "is still queued and will be sent again; there is no need to resend\r\n"
			  "it. You will get another report if the relay gives up.\r\n\r\n");
	} else {
		sb_str(b, "Your message reached the recipients listed below, as you asked to\r\n"
			  "be told. Nothing needs to be done.\r\n\r\n");
	}
	/* one block per recipient: "<address>: outcome (status)", then indented details */
	for (size_t i = 0; i < in->nrcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		sb_fmt(b, "<%s>: %s (%s)\r\n", r->final_rcpt, rcpt_outcome(r), rcpt_status(r));
		if (r->remote_mta)
			sb_fmt(b, "    Server: %s\r\n", r->remote_mta);
		if (r->diag)
			sb_fmt(b, "    Reason: %s\r\n", r->diag);
		if (r->action == DSN_ACTION_DELAYED && r->will_retry_until)
			sb_fmt(b, "    Retrying until: %s\r\n", r->will_retry_until);
		sb_str(b, "\r\n");
	}
	if (p->truncated)
		sb_str(b, "The message was too large to return in full; only its header is\r\n"
			  "attached.\r\n\r\n");
}

/* Part 2, for programs: RFC 3464 2.2 (per message) and 2.3 (per recipient). */
static void
write_status(struct sb *b, const struct dsn_input *in, const struct plan *p)
{
	sb_fmt(b, "--%s\r\n", p->boundary);
	sb_str(b, "Content-Description: Delivery report\r\n"
		  "Content-Type: message/delivery-status\r\n");
	if (p->fields_8bit) /* SMTPUTF8 addresses; RFC 6533 global DSNs not done */
		sb_str(b, "Content-Transfer-Encoding: 8bit\r\n");
	sb_str(b, "\r\n");
	sb_fmt(b, "Reporting-MTA: dns; %s\r\n", in->reporting_mta);
	if (in->envid)
		sb_fmt(b, "Original-Envelope-Id: %s\r\n", in->envid);
	sb_fmt(b, "Arrival-Date: %s\r\n", in->arrival_date);
	for (size_t i = 0; i < in->nrcpts; i++) {
		const struct dsn_rcpt *r = &in->rcpts[i];
		sb_str(b, "\r\n");
		if (r->orcpt)
			sb_fmt(b, "Original-Recipient: %s\r\n", r->orcpt);
		sb_fmt(b, "Final-Recipient: rfc822; %s\r\n", r->final_rcpt);
		sb_fmt(b, "Action: %s\r\n", dsn_action_name(r->action));
		sb_fmt(b, "Status: %s\r\n", rcpt_status(r));
		if (r->remote_mta)
			sb_fmt(b, "Remote-MTA: dns; %s\r\n", r->remote_mta);
		if (r->diag)
			sb_fmt(b, "Diagnostic-Code: smtp; %s\r\n", r->diag);
		if (r->last_attempt)
			sb_fmt(b, "Last-Attempt-Date: %s\r\n", r->last_attempt);
		if (r->action == DSN_ACTION_DELAYED && r->will_retry_until)
			sb_fmt(b, "Will-Retry-Until: %s\r\n", r->will_retry_until);
	}
	sb_str(b, "\r\n");
}

/* Part 3: the original, or its header (RFC 3462/6522). */
static void
write_original(struct sb *b, const struct dsn_input *in, const struct plan *p)
{
	if (p->inc_len == 0)
		return;
	sb_fmt(b, "--%s\r\n", p->boundary);
	if (p->full)
		sb_str(b, "Content-Description: Undelivered Message\r\n"
			  "Content-Type: message/rfc822\r\n");
	else
		sb_str(b, "Content-Description: Message Headers\r\n"
			  "Content-Type: text/rfc822-headers\r\n");
	if (mta_body_is_8bit(in->orig, p->inc_len))
		sb_str(b, "Content-Transfer-Encoding: 8bit\r\n");
	sb_str(b, "\r\n");
	sb_put(b, in->orig, p->inc_len);
	if (p->inc_len < 2 || in->orig[p->inc_len - 2] != '\r' || in->orig[p->inc_len - 1] != '\n')
		sb_str(b, "\r\n");
	sb_str(b, "\r\n");
}

static void
write_report(struct sb *b, const struct dsn_input *in, const struct plan *p)
{
	write_head(b, in, p);
	write_text(b, in, p);
	write_status(b, in, p);
	write_original(b, in, p);
	sb_fmt(b, "--%s--\r\n", p->boundary);
}

int
dsn_build(const struct dsn_input *in, char **out, size_t *out_len)
{
	struct plan p;
	struct sb b = {0};
	int err;

	if ((err = input_ok(in)) != 0)
		return err;
	if ((err = make_plan(in, &p)) != 0)
		return err;
	write_report(&b, in, &p); /* measure */
	size_t need = b.len;
	b.p = malloc(need + 1);
	if (b.p == NULL)
		return -ENOMEM;
	b.cap = need;
	b.len = 0;
	write_report(&b, in, &p);
	b.p[need] = '\0';
	*out = b.p;
	*out_len = need;
	return 0;
}
