/*
 * smtp_session.c: the pure SMTP server session machine (see smtp_session.h for the API).
 *
 * Contract: bytes in -> bytes consumed, replies appended to an output buffer, at most one
 * pending event.  No I/O, no clock.  Memory per session: one command line buffer
 * (max(max_line_length, SMTP_AUTH_LINE_MAX)), the output buffer (at most SMTP_OUTPUT_HIWAT plus
 * SMTP__OUTPUT_SLACK), the recipients actually accepted (at most max_recipients), and the body
 * actually received (at most max_message_size; beyond it the bytes are counted and dropped).
 *
 * Structure (OpenSMTPD habit): an enum of states, smtp__enter_state() traces every transition,
 * and a command table pairing each verb with its handler.  Command lines are read up to LF
 * (CR LF expected, a bare LF tolerated in commands only).  DATA bodies end only on
 * CR LF "." CR LF (RFC 5321 4.1.1.4); every bare CR and bare LF in a body (DATA or BDAT) is
 * rewritten to CR LF (RFC 5321 2.3.8), which closes the SMTP smuggling hole: no sequence that
 * a downstream server could read as end-of-data survives unless we saw it as one.
 *
 * Failure modes: peer errors are replies plus counters; max_errors of them close the session
 * (421 4.7.0).  A BDAT count that cannot be parsed cannot be resynchronized: 501 and close.
 * ENOMEM: 451 4.3.0 (body growth is checked at end of message); if even the output buffer
 * cannot grow, the session closes silently.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_session.h"
#include "smtp_session_int.h"

static const char *const smtp__state_names[] = {
    [ST_GREETED] = "greeted",
    [ST_HELO] = "helo",
    [ST_MAIL] = "mail",
    [ST_RCPT] = "rcpt",
    [ST_DATA] = "data",
    [ST_BDAT] = "bdat",
    [ST_AUTH_PLAIN] = "auth-plain",
    [ST_AUTH_USER] = "auth-login-user",
    [ST_AUTH_PASS] = "auth-login-pass",
    [ST_AUTH_WAIT] = "auth-wait",
    [ST_TLS_WAIT] = "starttls-wait",
    [ST_MSG_WAIT] = "message-wait",
    [ST_CLOSED] = "closed",
};

void
smtp__enter_state(struct smtp_session *s, enum smtp__state st)
{
	if (s->cfg->trace_cb != NULL && st != s->state)
		s->cfg->trace_cb(s->cfg->trace_arg, s, smtp__state_names[s->state],
				 smtp__state_names[st]);
	s->state = st;
}

/* ---- output ---- */

static bool
out_reserve(struct smtp_session *s, size_t n)
{
	if (s->out_off > 0 && s->out_len + n > s->out_cap) {
		memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
		s->out_len -= s->out_off;
		s->out_off = 0;
	}
	if (s->out_len + n <= s->out_cap)
		return true;
	size_t need = s->out_len + n;
	if (need > SMTP_OUTPUT_HIWAT + SMTP__OUTPUT_SLACK)
		return false;
	size_t cap = s->out_cap ? s->out_cap : SMTP__OUTPUT_INIT;
	while (cap < need)
		cap *= 2;
	if (cap > SMTP_OUTPUT_HIWAT + SMTP__OUTPUT_SLACK)
		cap = SMTP_OUTPUT_HIWAT + SMTP__OUTPUT_SLACK;
	char *n2 = realloc(s->out, cap);
	if (n2 == NULL)
		return false;
	s->out = n2;
	s->out_cap = cap;
	return true;
}

void
smtp__out_put(struct smtp_session *s, const char *p, size_t n)
{
	if (!out_reserve(s, n)) {
		/* cannot happen with the HIWAT discipline unless malloc failed: drop the peer */
		COUNT(s, nomem);
		smtp__close_now(s);
		return;
	}
	memcpy(s->out + s->out_len, p, n);
	s->out_len += n;
}

/* One reply line: "<code><sep><enh> <text>\r\n"; enh may be NULL.  last: ' ' else '-'. */
static void
reply_line(struct smtp_session *s, int code, bool last, const char *enh, const char *fmt,
	   va_list ap)
{
	char tmp[SMTP__REPLY_MAX];
	int n;

	if (enh != NULL)
		n = snprintf(tmp, sizeof(tmp), "%03d%c%s ", code, last ? ' ' : '-', enh);
	else
		n = snprintf(tmp, sizeof(tmp), "%03d%c", code, last ? ' ' : '-');
	int m = vsnprintf(tmp + n, sizeof(tmp) - (size_t)n - 2, fmt, ap);
	if (m < 0)
		m = 0;
	if ((size_t)m > sizeof(tmp) - (size_t)n - 3)
		m = (int)(sizeof(tmp) - (size_t)n - 3);
	/* reply text is ASCII (RFC 5321 4.2; UTF-8 addresses are echoed with '?') */
	for (int i = n; i < n + m; i++)
		if ((unsigned char)tmp[i] < 0x20 || (unsigned char)tmp[i] > 0x7e)
			tmp[i] = '?';
	n += m;
	tmp[n++] = '\r';
	tmp[n++] = '\n';
	smtp__out_put(s, tmp, (size_t)n);
	if (last) {
		/* one report per refusal (the glue's event=reject log line) */
		if (code >= 400 && s->cfg->reject_cb != NULL)
			s->cfg->reject_cb(s->client.hook_arg, s, s->cur_cmd ? s->cur_cmd : "-", code,
					  enh ? enh : "", s->reject_reason ? s->reject_reason : "error");
		s->reject_reason = NULL;
	}
}

void
smtp__reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_line(s, code, true, enh, fmt, ap);
	va_end(ap);
}

void
smtp__reply_more(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_line(s, code, false, enh, fmt, ap);
	va_end(ap);
}

/* ---- closing ---- */

void
smtp__close_now(struct smtp_session *s)
{
	s->ev = SMTP_EV_CLOSE;
	smtp__enter_state(s, ST_CLOSED);
}

/*
 * A peer error: count it under its reason and toward max_errors; the caller has queued the
 * reply.  At max_errors the session says 421 and closes.
 */
void
smtp__peer_error(struct smtp_session *s)
{
	if (s->ev == SMTP_EV_CLOSE)
		return;
	if (++s->errors >= s->max_errors) {
		COUNT(s, too_many_errors);
		smtp__reply(s, 421, "4.7.0", "%s Error: too many errors", s->hostname);
		smtp__close_now(s);
	}
}

/* ---- the receive budget ---- */

static uint64_t
budget_cap(const struct smtp_budget *b, bool trusted)
{
	return trusted ? b->limit : b->limit / 100 * SMTP_BUDGET_UNTRUSTED_PCT;
}

bool
smtp_budget_take(struct smtp_budget *b, uint64_t n, bool trusted)
{
	if (b == NULL)
		return true;
	uint64_t cap = budget_cap(b, trusted);
	if (b->used > cap || n > cap - b->used)
		return false;
	b->used += n;
	if (b->used > b->peak)
		b->peak = b->used;
	return true;
}

void
smtp_budget_give(struct smtp_budget *b, uint64_t n)
{
	if (b == NULL)
		return;
	b->used = n > b->used ? 0 : b->used - n;
}

uint64_t
smtp_budget_room(const struct smtp_budget *b, bool trusted)
{
	if (b == NULL)
		return UINT64_MAX;
	uint64_t cap = budget_cap(b, trusted);
	return b->used >= cap ? 0 : cap - b->used;
}

bool
smtp__budget_trusted(const struct smtp_session *s)
{
	return s->client.trusted || s->authenticated;
}

/* ---- transaction ---- */

/* Frees the body and gives its reservation back. */
static void
body_release(struct smtp_session *s)
{
	free(s->body);
	smtp_budget_give(s->cfg->budget, s->body_cap);
	s->body = NULL;
	s->body_len = s->body_cap = 0;
}

void
smtp__body_reset(struct smtp_session *s)
{
	body_release(s);
	s->body_total = 0;
	s->too_big = s->nomem = s->normalized = s->over_budget = false;
	s->bdat_cr = false;
	s->chunk_left = 0;
	s->chunk_last = false;
	s->chunk_reject = 0;
}

void
smtp__txn_reset(struct smtp_session *s)
{
	for (size_t i = 0; i < s->n_rcpts; i++) {
		free((char *)s->rcpts[i].addr);
		free((char *)s->rcpts[i].orcpt);
	}
	free(s->rcpts);
	s->rcpts = NULL;
	s->n_rcpts = s->rcpts_cap = 0;
	s->in_txn = s->bdat_used = false;
	s->mail_from[0] = '\0';
	s->envid[0] = '\0';
	s->has_envid = s->smtputf8 = false;
	s->ret = SMTP_RET_NONE;
	s->body_type = SMTP_BODY_7BIT;
	s->size_declared = 0;
	smtp__body_reset(s);
}

void
smtp__auth_wipe(struct smtp_session *s)
{
	explicit_bzero(s->auth_buf, sizeof(s->auth_buf));
}

/* The command state the session returns to after a reply that ends a phase. */
enum smtp__state
smtp__idle_state(const struct smtp_session *s)
{
	if (!s->helo_done)
		return ST_GREETED;
	if (!s->in_txn)
		return ST_HELO;
	return s->n_rcpts > 0 ? ST_RCPT : ST_MAIL;
}

/*
 * Reads up to and including one LF.  The line is kept up to its limit (max_line_length, or
 * SMTP_AUTH_LINE_MAX in an AUTH exchange, both counting the CR LF); beyond it the rest of the
 * line is dropped and the line is answered 500 5.5.2 when its LF arrives (RFC 5321 4.5.3.1.4).
 */
static size_t
line_consume(struct smtp_session *s, const char *p, size_t n)
{
	size_t limit = smtp__in_auth_exchange(s) ? SMTP_AUTH_LINE_MAX : s->line_max;
	const char *lf = memchr(p, '\n', n);
	size_t take = lf ? (size_t)(lf - p) : n;

	if (!s->line_overflow) {
		if (s->line_len + take > limit - 1)
			s->line_overflow = true;
		else {
			memcpy(s->line + s->line_len, p, take);
			s->line_len += take;
		}
	}
	if (lf == NULL)
		return n;

	size_t len = s->line_len;
	bool over = s->line_overflow;
	s->cur_cmd = "-";
	s->line_len = 0;
	s->line_overflow = false;
	if (over) {
		if (smtp__in_auth_exchange(s)) {
			smtp__auth_wipe(s);
			smtp__enter_state(s, smtp__idle_state(s));
		}
		REJECT(s, line_too_long, 500, "5.5.2", "Error: line too long");
	} else {
		smtp__process_line(s, s->line, len);
	}
	explicit_bzero(s->line, len); /* may have held AUTH material */
	return take + 1;
}

/* ---- API ---- */

int
smtp_session_new(struct smtp_session **out, const struct smtp_session_config *cfg,
		 const struct smtp_session_client *client)
{
	struct smtp_session *s;

	if (out == NULL || cfg == NULL)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return -ENOMEM;
	s->cfg = cfg;
	if (client != NULL)
		s->client = *client;
	s->hostname = cfg->hostname != NULL ? cfg->hostname : "localhost";
	s->max_size = cfg->max_message_size ? cfg->max_message_size : SMTP_MAX_MESSAGE_SIZE_DEFAULT;
	if (s->max_size > SIZE_MAX / 2)
		s->max_size = SIZE_MAX / 2;
	s->max_rcpts = cfg->max_recipients ? cfg->max_recipients : SMTP_MAX_RECIPIENTS_DEFAULT;
	if (s->max_rcpts > SIZE_MAX / sizeof(struct smtp_rcpt) / 2)
		s->max_rcpts = SIZE_MAX / sizeof(struct smtp_rcpt) / 2;
	s->max_errors = cfg->max_errors ? cfg->max_errors : SMTP_MAX_ERRORS_DEFAULT;
	s->max_hops = cfg->max_hops ? cfg->max_hops : SMTP_MAX_HOPS_DEFAULT;
	uint64_t lm = cfg->max_line_length ? cfg->max_line_length : SMTP_LINE_MAX_DEFAULT;
	if (lm < SMTP_LINE_MAX_MIN)
		lm = SMTP_LINE_MAX_MIN;
	if (lm > SMTP_LINE_MAX_MAX)
		lm = SMTP_LINE_MAX_MAX;
	s->line_max = (size_t)lm;
	s->line_cap = (s->line_max > SMTP_AUTH_LINE_MAX ? s->line_max : SMTP_AUTH_LINE_MAX) + 1;
	s->line = malloc(s->line_cap);
	if (s->line == NULL)
		goto err_after_alloc;
	s->tls = s->client.tls_active;
	s->state = ST_GREETED;
	smtp__txn_reset(s);
	smtp__reply(s, 220, NULL, "%s ESMTP relayd", s->hostname);
	if (s->out == NULL)
		goto err_after_line;
	*out = s;
	return 0;
err_after_line:
	free(s->line);
err_after_alloc:
	free(s);
	return -ENOMEM;
}

void
smtp_session_free(struct smtp_session *s)
{
	if (s == NULL)
		return;
	smtp__txn_reset(s);
	smtp__auth_wipe(s);
	explicit_bzero(s->line, s->line_cap);
	free(s->line);
	free(s->out);
	free(s);
}

size_t
smtp_session_feed(struct smtp_session *s, const char *buf, size_t len)
{
	size_t used = 0;

	while (used < len) {
		if (s->ev != SMTP_EV_NONE)
			break;
		if (s->out_len - s->out_off >= SMTP_OUTPUT_HIWAT)
			break;
		switch (s->state) {
		case ST_DATA:
			used += smtp__data_consume(s, buf + used, len - used);
			break;
		case ST_BDAT:
			used += smtp__bdat_consume(s, buf + used, len - used);
			break;
		default:
			used += line_consume(s, buf + used, len - used);
			break;
		}
	}
	return used;
}

void
smtp_session_output(const struct smtp_session *s, const char **buf, size_t *len)
{
	*buf = s->out != NULL ? s->out + s->out_off : "";
	*len = s->out_len - s->out_off;
}

void
smtp_session_output_consume(struct smtp_session *s, size_t n)
{
	size_t pending = s->out_len - s->out_off;

	if (n > pending)
		n = pending;
	s->out_off += n;
	if (s->out_off == s->out_len)
		s->out_off = s->out_len = 0;
}

enum smtp_event_type
smtp_session_event(const struct smtp_session *s, struct smtp_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->type = s->ev;
	switch (s->ev) {
	case SMTP_EV_AUTH:
		ev->auth.mechanism = s->auth_buf + AUTH_OFF_MECH;
		ev->auth.authzid = s->auth_buf + AUTH_OFF_AUTHZID;
		ev->auth.user = s->auth_buf + AUTH_OFF_USER;
		ev->auth.password = s->auth_buf + AUTH_OFF_PASS;
		break;
	case SMTP_EV_MESSAGE:
		ev->message.env = &s->env;
		ev->message.body = s->body != NULL ? s->body : "";
		ev->message.body_len = s->body_len;
		break;
	default:
		break;
	}
	return s->ev;
}

/* After an event is resolved: a timeout or shutdown that arrived meanwhile takes effect. */
static void
after_event(struct smtp_session *s)
{
	enum smtp__deferred d = s->deferred;

	s->deferred = DEF_NONE;
	if (d == DEF_TIMEOUT)
		smtp_session_timeout(s);
	else if (d == DEF_SHUTDOWN)
		smtp_session_shutdown(s);
}

int
smtp_session_tls_done(struct smtp_session *s, int ok)
{
	if (s->ev != SMTP_EV_STARTTLS)
		return -EINVAL;
	s->ev = SMTP_EV_NONE;
	if (!ok) {
		COUNT(s, tls_failed);
		smtp__close_now(s);
		return 0;
	}
	/* RFC 3207 sec 4.2: discard all knowledge obtained from the client */
	smtp__txn_reset(s);
	smtp__auth_wipe(s);
	s->tls = true;
	s->helo_done = s->esmtp = s->authenticated = false;
	s->helo[0] = '\0';
	s->auth_user[0] = '\0';
	smtp__enter_state(s, ST_GREETED);
	after_event(s);
	return 0;
}

int
smtp_session_auth_result(struct smtp_session *s, int ok)
{
	if (s->ev != SMTP_EV_AUTH)
		return -EINVAL;
	s->ev = SMTP_EV_NONE;
	s->cur_cmd = "AUTH";
	if (ok) {
		memcpy(s->auth_user, s->auth_buf + AUTH_OFF_USER, SMTP_AUTH_FIELD_MAX + 1);
		s->authenticated = true;
		smtp__auth_wipe(s);
		smtp__reply(s, 235, "2.7.0", "Authentication successful");
		smtp__enter_state(s, smtp__idle_state(s));
	} else {
		smtp__auth_fail(s, 535, "5.7.8", "Authentication credentials invalid");
	}
	if (s->ev == SMTP_EV_NONE)
		after_event(s);
	return 0;
}

int
smtp_session_auth_tempfail(struct smtp_session *s)
{
	if (s->ev != SMTP_EV_AUTH)
		return -EINVAL;
	s->ev = SMTP_EV_NONE;
	s->cur_cmd = "AUTH";
	smtp__auth_wipe(s);
	smtp__enter_state(s, smtp__idle_state(s));
	REJECT(s, auth_throttled, 454, "4.7.0", "Temporary authentication failure, try again later");
	if (s->ev == SMTP_EV_NONE)
		after_event(s);
	return 0;
}

/* "d.ddd.ddd" with class digit matching code (RFC 3463 sec 2). */
static bool
enhanced_valid(const char *e, int code)
{
	if (e == NULL || e[0] - '0' != code / 100 || e[1] != '.')
		return false;
	const char *p = e + 2;
	for (int part = 0; part < 2; part++) {
		int d = 0;
		while (*p >= '0' && *p <= '9' && d < 3) {
			p++;
			d++;
		}
		if (d == 0 || (*p >= '0' && *p <= '9'))
			return false;
		if (part == 0) {
			if (*p != '.')
				return false;
			p++;
		}
	}
	return *p == '\0';
}

int
smtp_session_message_result(struct smtp_session *s, int code, const char *enhanced,
			    const char *text)
{
	char t[SMTP_REPLY_TEXT_MAX + 1];
	char e[16];
	int cls = code / 100;

	if (s->ev != SMTP_EV_MESSAGE || code < 200 || code > 599 || cls == 3)
		return -EINVAL;
	if (!enhanced_valid(enhanced, code)) {
		snprintf(e, sizeof(e), "%d.0.0", cls);
		enhanced = e;
	}
	if (text == NULL)
		text = cls == 2 ? "Ok" : "Error";
	size_t n = 0;
	for (; text[n] != '\0' && n < SMTP_REPLY_TEXT_MAX; n++) {
		unsigned char c = (unsigned char)text[n];
		t[n] = (c < 32 || c > 126) ? '?' : (char)c;
	}
	t[n] = '\0';
	s->ev = SMTP_EV_NONE;
	s->cur_cmd = s->bdat_used ? "BDAT" : "DATA";
	s->reject_reason = "result";
	smtp__reply(s, code, enhanced, "%s", t);
	smtp__txn_reset(s);
	smtp__enter_state(s, smtp__idle_state(s));
	after_event(s);
	return 0;
}

void
smtp_session_timeout(struct smtp_session *s)
{
	if (s->ev == SMTP_EV_CLOSE)
		return;
	if (s->ev != SMTP_EV_NONE) {
		if (s->deferred == DEF_NONE)
			s->deferred = DEF_TIMEOUT;
		return;
	}
	COUNT(s, timeouts);
	s->cur_cmd = "-";
	smtp__reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->hostname);
	smtp__close_now(s);
}

void
smtp_session_shutdown(struct smtp_session *s)
{
	if (s->ev == SMTP_EV_CLOSE)
		return;
	if (s->ev != SMTP_EV_NONE) {
		s->deferred = DEF_SHUTDOWN;
		return;
	}
	s->cur_cmd = "-";
	s->reject_reason = "shutdown";
	smtp__reply(s, 421, "4.3.2", "Service shutting down");
	smtp__close_now(s);
}

bool
smtp_session_in_data(const struct smtp_session *s)
{
	return s->state == ST_DATA || s->state == ST_BDAT;
}

bool
smtp_session_in_message(const struct smtp_session *s)
{
	return smtp_session_in_data(s) || (s->state == ST_RCPT && s->in_txn && s->bdat_used);
}

void
smtp_session_drop_body(struct smtp_session *s)
{
	if (s->ev == SMTP_EV_MESSAGE)
		body_release(s);
}

const char *
smtp_session_state_name(const struct smtp_session *s)
{
	return smtp__state_names[s->state];
}
