/*
 * smtp_data.c: the SMTP session machine's message data: DATA bodies ending only on
 * CR LF "." CR LF (RFC 5321 4.1.1.4, dot-unstuffed), BDAT chunks (RFC 3030), every bare CR or
 * LF rewritten to CR LF (RFC 5321 2.3.8: no SMTP smuggling), the size bound, and the end of a
 * message (SMTP_EV_MESSAGE).  Part of the pure session machine (smtp_session_int.h).
 */
#include <stdlib.h>
#include <string.h>

#include "smtp_session.h"
#include "smtp_session_int.h"

/* ---- body ---- */

/* Frees the body being received (the rest of it is counted, not stored) and gives its budget
 * reservation back. */
static void
body_drop(struct smtp_session *s)
{
	free(s->body);
	smtp_budget_give(s->cfg->budget, s->body_cap);
	s->body = NULL;
	s->body_len = s->body_cap = 0;
}

/* Grows the body to hold need bytes, within the receive budget: the doubled capacity, or as
 * much of it as the budget has left (never just `need`: growing by one line at a time would
 * copy the body once per line).  false (over_budget or nomem set, body dropped) when even
 * need does not fit. */
static bool
body_grow(struct smtp_session *s, size_t need)
{
	bool trusted = smtp__budget_trusted(s);
	size_t cap = s->body_cap ? s->body_cap : SMTP__BODY_INIT;
	while (cap < need)
		cap *= 2;
	if (cap > s->max_size)
		cap = (size_t)s->max_size;
	uint64_t room = smtp_budget_room(s->cfg->budget, trusted);
	if (cap - s->body_cap > room)
		cap = s->body_cap + (size_t)room;
	if (cap < need || !smtp_budget_take(s->cfg->budget, cap - s->body_cap, trusted)) {
		s->over_budget = true;
		body_drop(s);
		return false;
	}
	char *nb = realloc(s->body, cap);
	if (nb == NULL) {
		smtp_budget_give(s->cfg->budget, cap - s->body_cap);
		s->nomem = true;
		body_drop(s);
		return false;
	}
	s->body = nb;
	s->body_cap = cap;
	return true;
}

static void
body_put(struct smtp_session *s, const char *p, size_t n)
{
	if (n == 0)
		return;
	s->body_total += n;
	if (s->too_big || s->nomem || s->over_budget)
		return;
	if (s->body_total > s->max_size) {
		s->too_big = true;
		body_drop(s);
		return;
	}
	if (s->body_len + n > s->body_cap && !body_grow(s, s->body_len + n))
		return;
	memcpy(s->body + s->body_len, p, n);
	s->body_len += n;
}

static void
body_crlf(struct smtp_session *s, bool normalized)
{
	if (normalized)
		s->normalized = true;
	body_put(s, "\r\n", 2);
}

/* Is name (n bytes) the field name "Received", any case? */
static bool
is_received(const char *name, size_t n)
{
	static const char rcv[] = "received";
	if (n != sizeof(rcv) - 1)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != rcv[i])
			return false;
	}
	return true;
}

/* Received: fields in the header section of a CRLF body (up to the first empty line), counted
 * up to stop (RFC 5321 6.3: a hop count to detect loops; RFC 5322 3.6.7).  A field name may be
 * followed by blanks before its colon (RFC 5322 4.5.x obsolete syntax). */
static uint64_t
count_received(const char *b, size_t len, uint64_t stop)
{
	uint64_t n = 0;
	size_t i = 0;
	while (i < len && n < stop) {
		const char *lf = memchr(b + i, '\n', len - i);
		size_t end = lf ? (size_t)(lf - b) : len;
		size_t llen = end - i;
		if (llen == 0 || (llen == 1 && b[i] == '\r'))
			break; /* the empty line ends the header section */
		size_t k = 0;
		while (k < llen && b[i + k] != ':' && b[i + k] != ' ' && b[i + k] != '\t')
			k++;
		size_t name = k;
		while (k < llen && (b[i + k] == ' ' || b[i + k] == '\t'))
			k++;
		if (name > 0 && k < llen && b[i + k] == ':' && is_received(b + i, name))
			n++;
		i = end + 1;
	}
	return n;
}

/* The transaction ends with a refusal at the end of its data (not a peer error). */
static void
end_refused(struct smtp_session *s)
{
	smtp__txn_reset(s);
	smtp__enter_state(s, smtp__idle_state(s));
}

/* End of DATA or BDAT LAST: raise SMTP_EV_MESSAGE or answer the failure. */
static void
end_of_message(struct smtp_session *s)
{
	s->cur_cmd = s->bdat_used ? "BDAT" : "DATA";
	if (s->normalized)
		COUNT(s, bare_newline);
	if (s->too_big) {
		COUNT(s, too_big);
		smtp__reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		end_refused(s);
		return;
	}
	if (s->over_budget) {
		COUNT(s, over_budget);
		smtp__reply(s, 452, "4.3.1", "Insufficient system storage, try again later");
		end_refused(s);
		return;
	}
	if (s->nomem) {
		COUNT(s, nomem);
		smtp__reply(s, 451, "4.3.0", "Insufficient system resources");
		end_refused(s);
		return;
	}
	if (count_received(s->body, s->body_len, s->max_hops) >= s->max_hops) {
		COUNT(s, too_many_hops);
		smtp__reply(s, 554, "5.4.6", "Too many hops (%llu Received: headers), possible mail "
			    "loop", (unsigned long long)s->max_hops);
		end_refused(s);
		return;
	}
	s->env = (struct smtp_envelope){
	    .helo = s->helo,
	    .esmtp = s->esmtp,
	    .mail_from = s->mail_from,
	    .ret = s->ret,
	    .envid = s->has_envid ? s->envid : NULL,
	    .body = s->body_type,
	    .smtputf8 = s->smtputf8,
	    .size_declared = s->size_declared,
	    .auth_user = s->authenticated ? s->auth_user : NULL,
	    .tls = s->tls,
	    .chunking = s->bdat_used,
	    .rcpts = s->rcpts,
	    .n_rcpts = s->n_rcpts,
	};
	COUNT(s, messages);
	s->ev = SMTP_EV_MESSAGE;
	smtp__enter_state(s, ST_MSG_WAIT);
}

/*
 * DATA body (RFC 5321 4.1.1.4, 4.5.2).  States: D_BOL at the start of a line that followed a
 * real CR LF (or the first line), D_MID inside a line, D_CR after a CR, D_DOT after a leading
 * ".", D_DOTCR after a leading "." CR.  Only CR LF "." CR LF ends the data.  A bare LF is
 * stored as CR LF but does not start a line for the end-of-data or dot rules; a bare CR is
 * stored as CR LF likewise.  A leading "." is always removed (transparency: a sender stuffs
 * every line that starts with "."), so "." followed by a bare CR/LF loses its dot too.
 * Returns the bytes consumed; stops right after the end of data.
 */
size_t
smtp__data_consume(struct smtp_session *s, const char *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		switch (s->dstate) {
		case D_BOL:
			if (p[i] == '.') {
				s->dstate = D_DOT;
				i++;
			} else {
				s->dstate = D_MID;
			}
			break;
		case D_MID: {
			size_t j = i;
			while (j < n && p[j] != '\r' && p[j] != '\n')
				j++;
			body_put(s, p + i, j - i);
			i = j;
			if (i == n)
				break;
			if (p[i] == '\r') {
				s->dstate = D_CR;
			} else {
				body_crlf(s, true); /* bare LF; stays D_MID */
			}
			i++;
			break;
		}
		case D_CR:
			if (p[i] == '\n') {
				body_crlf(s, false);
				s->dstate = D_BOL;
				i++;
			} else {
				body_crlf(s, true); /* bare CR; p[i] is read again in D_MID */
				s->dstate = D_MID;
			}
			break;
		case D_DOT:
			if (p[i] == '\r') {
				s->dstate = D_DOTCR;
				i++;
			} else {
				s->dstate = D_MID; /* the dot is dropped; p[i] read again */
			}
			break;
		case D_DOTCR:
			if (p[i] == '\n') {
				end_of_message(s);
				return i + 1;
			}
			body_crlf(s, true); /* "." bare CR: dot dropped, CR normalized */
			s->dstate = D_MID;
			break;
		}
	}
	return i;
}

/* Bytes of a BDAT chunk (RFC 3030): no dot rules, bare CR/LF normalized across chunks. */
static void
bdat_put(struct smtp_session *s, const char *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		if (s->bdat_cr) {
			s->bdat_cr = false;
			if (p[i] == '\n') {
				body_crlf(s, false);
				i++;
				continue;
			}
			body_crlf(s, true);
		}
		size_t j = i;
		while (j < n && p[j] != '\r' && p[j] != '\n')
			j++;
		body_put(s, p + i, j - i);
		i = j;
		if (i == n)
			break;
		if (p[i] == '\r')
			s->bdat_cr = true;
		else
			body_crlf(s, true);
		i++;
	}
}

void
smtp__bdat_chunk_done(struct smtp_session *s)
{
	if (s->chunk_reject != 0) {
		int code = s->chunk_reject;
		s->chunk_reject = 0;
		if (code == 452) {
			/* the receive budget cannot take the chunk: the transaction ends, the
			 * client may try again later (not a peer error) */
			COUNT(s, over_budget);
			smtp__reply(s, 452, "4.3.1", "Insufficient system storage, try again later");
			smtp__txn_reset(s);
			smtp__enter_state(s, smtp__idle_state(s));
			return;
		}
		if (code == 552) {
			COUNT(s, too_big);
			smtp__reply(s, 552, "5.3.4",
				    "Message size exceeds fixed maximum message size");
			smtp__txn_reset(s);
			smtp__enter_state(s, smtp__idle_state(s));
			smtp__peer_error(s);
			return;
		}
		COUNT(s, bad_sequence);
		if (!s->helo_done)
			smtp__reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
		else if (!s->in_txn)
			smtp__reply(s, 503, "5.5.1", "Error: need MAIL command");
		else
			smtp__reply(s, 503, "5.5.1", "Error: need RCPT command");
		smtp__enter_state(s, smtp__idle_state(s));
		smtp__peer_error(s);
		return;
	}
	if (!s->chunk_last) {
		/* too_big/nomem found inside the chunk are answered at LAST */
		smtp__reply(s, 250, "2.0.0", "%llu bytes received",
			    (unsigned long long)s->chunk_size);
		smtp__enter_state(s, ST_RCPT);
		return;
	}
	if (s->bdat_cr) {
		s->bdat_cr = false;
		body_crlf(s, true);
	}
	end_of_message(s);
}

size_t
smtp__bdat_consume(struct smtp_session *s, const char *p, size_t n)
{
	size_t k = n < s->chunk_left ? n : (size_t)s->chunk_left;

	if (s->chunk_reject == 0)
		bdat_put(s, p, k);
	s->chunk_left -= k;
	if (s->chunk_left == 0)
		smtp__bdat_chunk_done(s);
	return k;
}
