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

static void
body_put(struct smtp_session *s, const char *p, size_t n)
{
	if (n == 0)
		return;
	s->body_total += n;
	if (s->too_big || s->nomem)
		return;
	if (s->body_total > s->max_size) {
		s->too_big = true;
		free(s->body);
		s->body = NULL;
		s->body_len = s->body_cap = 0;
		return;
	}
	if (s->body_len + n > s->body_cap) {
		size_t cap = s->body_cap ? s->body_cap : SMTP__BODY_INIT;
		while (cap < s->body_len + n)
			cap *= 2;
		if (cap > s->max_size)
			cap = (size_t)s->max_size;
		char *nb = realloc(s->body, cap);
		if (nb == NULL) {
			s->nomem = true;
			free(s->body);
			s->body = NULL;
			s->body_len = s->body_cap = 0;
			return;
		}
		s->body = nb;
		s->body_cap = cap;
	}
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

/* End of DATA or BDAT LAST: raise SMTP_EV_MESSAGE or answer the failure. */
static void
end_of_message(struct smtp_session *s)
{
	if (s->normalized)
		COUNT(s, bare_newline);
	if (s->too_big) {
		COUNT(s, too_big);
		smtp__reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		smtp__txn_reset(s);
		smtp__enter_state(s, smtp__idle_state(s));
		return;
	}
	if (s->nomem) {
		COUNT(s, nomem);
		smtp__reply(s, 451, "4.3.0", "Insufficient system resources");
		smtp__txn_reset(s);
		smtp__enter_state(s, smtp__idle_state(s));
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
