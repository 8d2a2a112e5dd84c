/*
 * smtp_received.c: builds the Received: trace header a relay prepends (RFC 5321 sec 4.4,
 * RFC 5322 sec 3.6.7).  Pure: the date and queue id are inputs, no clock, no allocation.
 *
 *   Received: from <helo> (<client name> [<client addr>])
 *   	by <hostname> (relayd) with <protocol> id <queue id>
 *   	for <rcpt>; <date>
 *
 * The protocol word comes from RFC 3848 (SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA) and RFC 6531
 * sec 3.7.3 (UTF8SMTP, UTF8SMTPA, UTF8SMTPS, UTF8SMTPSA).  Client-supplied text is sanitized:
 * bytes that could end the header, break the comment or the date separator become '_'.
 * Failure modes: -EINVAL for missing mandatory fields or fields over SMTP__RCVD_FIELD_MAX
 * (keeps every line under RFC 5322's 998), -ENOSPC when cap is too small.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "smtp_received.h"

#define SMTP__RCVD_FIELD_MAX 256 /* any one field; 4 per line stay far below 998 octets */

struct smtp__wbuf {
	char *p;
	size_t cap, len;
	bool overflow;
};

static void
w_raw(struct smtp__wbuf *w, const char *s, size_t n)
{
	if (w->overflow || w->len + n + 1 > w->cap) {
		w->overflow = true;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
	w->p[w->len] = '\0';
}

static void
w_str(struct smtp__wbuf *w, const char *s)
{
	w_raw(w, s, strlen(s));
}

/* Copies s, replacing controls, space and the characters ()\;<>" (and, unless utf8, bytes
 * >= 0x80) with '_'. */
static void
w_clean(struct smtp__wbuf *w, const char *s, bool utf8)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char o = (char)c;
		if (c <= 32 || c == 127 || (c >= 0x80 && !utf8) || strchr("()\\;<>\"", c) != NULL)
			o = '_';
		w_raw(w, &o, 1);
	}
}

static bool
field_ok(const char *s, bool required)
{
	if (s == NULL)
		return !required;
	size_t n = strlen(s);
	return n <= SMTP__RCVD_FIELD_MAX && (!required || n > 0);
}

int
smtp_received_header(char *buf, size_t cap, const struct smtp_received_info *ri)
{
	struct smtp__wbuf w = {.p = buf, .cap = cap};
	char proto[16];

	if (buf == NULL || ri == NULL || !field_ok(ri->client_addr, true) ||
	    !field_ok(ri->hostname, true) || !field_ok(ri->date, true) ||
	    !field_ok(ri->helo, false) || !field_ok(ri->client_name, false) ||
	    !field_ok(ri->queue_id, false) || !field_ok(ri->rcpt, false))
		return -EINVAL;
	if (cap > 0)
		buf[0] = '\0';

	if (!ri->esmtp)
		strcpy(proto, "SMTP");
	else
		snprintf(proto, sizeof(proto), "%s%s%s", ri->smtputf8 ? "UTF8SMTP" : "ESMTP",
			 ri->tls ? "S" : "", ri->auth ? "A" : "");

	w_str(&w, "Received: from ");
	w_clean(&w, ri->helo != NULL && ri->helo[0] ? ri->helo : "unknown", false);
	w_str(&w, " (");
	w_clean(&w, ri->client_name != NULL && ri->client_name[0] ? ri->client_name : "unknown",
		false);
	w_str(&w, " [");
	w_clean(&w, ri->client_addr, false);
	w_str(&w, "])\r\n\tby ");
	w_clean(&w, ri->hostname, false);
	w_str(&w, " (relayd) with ");
	w_str(&w, proto);
	if (ri->queue_id != NULL && ri->queue_id[0]) {
		w_str(&w, " id ");
		w_clean(&w, ri->queue_id, false);
	}
	if (ri->rcpt != NULL && ri->rcpt[0]) {
		w_str(&w, "\r\n\tfor <");
		w_clean(&w, ri->rcpt, ri->smtputf8);
		w_str(&w, ">");
	}
	w_str(&w, ";\r\n\t");
	/* the date is ours, but keep it on one line */
	for (const char *d = ri->date; *d; d++) {
		char c = (*d == '\r' || *d == '\n') ? ' ' : *d;
		w_raw(&w, &c, 1);
	}
	w_str(&w, "\r\n");
	if (w.overflow) {
		if (cap > 0)
			buf[0] = '\0';
		return -ENOSPC;
	}
	return (int)w.len;
}
