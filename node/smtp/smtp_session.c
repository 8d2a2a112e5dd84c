/*
 * smtp_session.c: the pure SMTP server session machine (see smtp_session.h for the API).
 *
 * Contract: bytes in -> bytes consumed, replies appended to an output buffer, at most one
 * pending event.  No I/O, no clock.  Memory per session: one command line buffer
 * (max(max_line_length, SMTP_AUTH_LINE_MAX)), the output buffer (at most SMTP_OUTPUT_HIWAT plus
 * SMTP__OUTPUT_SLACK), the recipients actually accepted (at most max_recipients), and the body
 * actually received (at most max_message_size; beyond it the bytes are counted and dropped).
 *
 * Structure (OpenSMTPD habit): an enum of states, smtp_enter_state() traces every transition,
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

#include "smtp_addr.h"
#include "smtp_session.h"

#define SMTP__OUTPUT_SLACK 8192 /* room above the high-water mark for one command's replies */
#define SMTP__OUTPUT_INIT 1024	/* initial output buffer */
#define SMTP__BODY_INIT 4096	/* initial body buffer */
#define SMTP__REPLY_MAX 1024	/* one formatted reply line */
#define SMTP__VERB_MAX 16	/* longest verb we look up */
#define SMTP__DIGITS_MAX 20	/* decimal digits of a uint64_t */
#define SMTP__AUTH_DECODED_MAX ((SMTP_AUTH_LINE_MAX / 4) * 3)

enum smtp__state {
	ST_GREETED,    /* no HELO/EHLO yet */
	ST_HELO,       /* ready for MAIL */
	ST_MAIL,       /* MAIL accepted */
	ST_RCPT,       /* at least one RCPT accepted (also between BDAT chunks) */
	ST_DATA,       /* receiving a DATA body */
	ST_BDAT,       /* receiving a BDAT chunk */
	ST_AUTH_PLAIN, /* 334 sent, waiting for the PLAIN response */
	ST_AUTH_USER,  /* 334 Username: sent */
	ST_AUTH_PASS,  /* 334 Password: sent */
	ST_AUTH_WAIT,  /* SMTP_EV_AUTH pending */
	ST_TLS_WAIT,   /* SMTP_EV_STARTTLS pending */
	ST_MSG_WAIT,   /* SMTP_EV_MESSAGE pending */
	ST_CLOSED,     /* SMTP_EV_CLOSE */
};

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

/* DATA body scanner states (see data_consume). */
enum smtp__dstate { D_BOL, D_MID, D_CR, D_DOT, D_DOTCR };

/* What to say when a deferred close (timeout/shutdown during an event) happens. */
enum smtp__deferred { DEF_NONE, DEF_TIMEOUT, DEF_SHUTDOWN };

struct smtp_session {
	const struct smtp_session_config *cfg; /* borrowed */
	struct smtp_session_client client;
	const char *hostname;
	uint64_t max_size, max_rcpts, max_errors;
	size_t line_max;

	enum smtp__state state;
	enum smtp_event_type ev;
	enum smtp__deferred deferred;

	/* output: bytes [out_off, out_len) are pending */
	char *out;
	size_t out_off, out_len, out_cap;

	/* command line being assembled */
	char *line;
	size_t line_len, line_cap;
	bool line_overflow;

	/* session */
	bool tls, esmtp, helo_done, authenticated;
	uint64_t errors;
	char helo[SMTP_HELO_MAX + 1];
	char auth_user[SMTP_AUTH_FIELD_MAX + 1];

	/* transaction (RFC 5321 4.1.4) */
	bool in_txn, bdat_used;
	char mail_from[SMTP_PATH_MAX];
	char envid[SMTP_ENVID_MAX + 1];
	bool has_envid, smtputf8;
	enum smtp_ret ret;
	enum smtp_body body_type;
	uint64_t size_declared;
	struct smtp_rcpt *rcpts; /* owned, with owned strings */
	size_t n_rcpts, rcpts_cap;

	/* body */
	char *body; /* owned */
	size_t body_len, body_cap;
	uint64_t body_total; /* bytes the body would have, including the dropped ones */
	bool too_big, nomem, normalized;
	enum smtp__dstate dstate;
	uint64_t chunk_left, chunk_size;
	bool chunk_last, bdat_cr;
	int chunk_reject; /* 0, or the code the chunk is answered with after it is consumed */

	/* AUTH: mechanism, authzid, user, password at fixed offsets (AUTH_OFF_*), each
	 * NUL-terminated; wiped as soon as the exchange ends */
	char auth_buf[8 + 3 * (SMTP_AUTH_FIELD_MAX + 1)];
	struct smtp_envelope env;
};

#define COUNT(s, name)                                                                             \
	do {                                                                                       \
		if ((s)->cfg->counters != NULL)                                                    \
			(s)->cfg->counters->name++;                                                \
	} while (0)

static void
smtp_enter_state(struct smtp_session *s, enum smtp__state st)
{
	if (s->cfg->trace_cb != NULL && st != s->state)
		s->cfg->trace_cb(s->cfg->trace_arg, s, smtp__state_names[s->state],
				 smtp__state_names[st]);
	s->state = st;
}

/* ---- output ---- */

static void close_now(struct smtp_session *s);

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

static void
out_put(struct smtp_session *s, const char *p, size_t n)
{
	if (!out_reserve(s, n)) {
		/* cannot happen with the HIWAT discipline unless malloc failed: drop the peer */
		COUNT(s, nomem);
		close_now(s);
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
	out_put(s, tmp, (size_t)n);
}

static void __attribute__((format(printf, 4, 5)))
reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_line(s, code, true, enh, fmt, ap);
	va_end(ap);
}

static void __attribute__((format(printf, 4, 5)))
reply_more(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_line(s, code, false, enh, fmt, ap);
	va_end(ap);
}

/* ---- closing ---- */

static void
close_now(struct smtp_session *s)
{
	s->ev = SMTP_EV_CLOSE;
	smtp_enter_state(s, ST_CLOSED);
}

/*
 * A peer error: count it under its reason and toward max_errors; the caller has queued the
 * reply.  At max_errors the session says 421 and closes.
 */
static void
peer_error(struct smtp_session *s)
{
	if (s->ev == SMTP_EV_CLOSE)
		return;
	if (++s->errors >= s->max_errors) {
		COUNT(s, too_many_errors);
		reply(s, 421, "4.7.0", "%s Error: too many errors", s->hostname);
		close_now(s);
	}
}

#define REJECT(s, counter, code, enh, ...)                                                         \
	do {                                                                                       \
		COUNT(s, counter);                                                                 \
		reply(s, code, enh, __VA_ARGS__);                                                  \
		peer_error(s);                                                                     \
	} while (0)

/* ---- transaction ---- */

static void
body_reset(struct smtp_session *s)
{
	free(s->body);
	s->body = NULL;
	s->body_len = s->body_cap = 0;
	s->body_total = 0;
	s->too_big = s->nomem = s->normalized = false;
	s->bdat_cr = false;
	s->chunk_left = 0;
	s->chunk_last = false;
	s->chunk_reject = 0;
}

static void
txn_reset(struct smtp_session *s)
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
	body_reset(s);
}

static void
auth_wipe(struct smtp_session *s)
{
	explicit_bzero(s->auth_buf, sizeof(s->auth_buf));
}

/* The command state the session returns to after a reply that ends a phase. */
static enum smtp__state
idle_state(const struct smtp_session *s)
{
	if (!s->helo_done)
		return ST_GREETED;
	if (!s->in_txn)
		return ST_HELO;
	return s->n_rcpts > 0 ? ST_RCPT : ST_MAIL;
}

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
		reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		txn_reset(s);
		smtp_enter_state(s, idle_state(s));
		return;
	}
	if (s->nomem) {
		COUNT(s, nomem);
		reply(s, 451, "4.3.0", "Insufficient system resources");
		txn_reset(s);
		smtp_enter_state(s, idle_state(s));
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
	smtp_enter_state(s, ST_MSG_WAIT);
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
static size_t
data_consume(struct smtp_session *s, const char *p, size_t n)
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

static void
bdat_chunk_done(struct smtp_session *s)
{
	if (s->chunk_reject != 0) {
		int code = s->chunk_reject;
		s->chunk_reject = 0;
		if (code == 552) {
			COUNT(s, too_big);
			reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
			txn_reset(s);
			smtp_enter_state(s, idle_state(s));
			peer_error(s);
			return;
		}
		COUNT(s, bad_sequence);
		if (!s->helo_done)
			reply(s, 503, "5.5.1", "Error: send HELO/EHLO first");
		else if (!s->in_txn)
			reply(s, 503, "5.5.1", "Error: need MAIL command");
		else
			reply(s, 503, "5.5.1", "Error: need RCPT command");
		smtp_enter_state(s, idle_state(s));
		peer_error(s);
		return;
	}
	if (!s->chunk_last) {
		/* too_big/nomem found inside the chunk are answered at LAST */
		reply(s, 250, "2.0.0", "%llu bytes received", (unsigned long long)s->chunk_size);
		smtp_enter_state(s, ST_RCPT);
		return;
	}
	if (s->bdat_cr) {
		s->bdat_cr = false;
		body_crlf(s, true);
	}
	end_of_message(s);
}

static size_t
bdat_consume(struct smtp_session *s, const char *p, size_t n)
{
	size_t k = n < s->chunk_left ? n : (size_t)s->chunk_left;

	if (s->chunk_reject == 0)
		bdat_put(s, p, k);
	s->chunk_left -= k;
	if (s->chunk_left == 0)
		bdat_chunk_done(s);
	return k;
}

/* ---- command helpers ---- */

static bool
has_non_ascii(const char *p)
{
	for (; *p; p++)
		if ((unsigned char)*p >= 0x80)
			return true;
	return false;
}

/* Parses 1..20 decimal digits into *v; false on anything else or on overflow. */
static bool
parse_u64(const char *p, size_t n, uint64_t *v)
{
	uint64_t x = 0;

	if (n == 0 || n > SMTP__DIGITS_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		unsigned d = (unsigned)(p[i] - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
	}
	*v = x;
	return true;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); esmtp-value = 1*(%d33-60 / %d62-126)
 * plus UTF-8 under SMTPUTF8 (RFC 5321 4.1.2, RFC 6531 3.3). */
struct smtp__param {
	const char *key;
	size_t key_len;
	const char *val; /* NULL when no "=" */
	size_t val_len;
};

/* Splits the next parameter from *pp (NUL-terminated).  Returns 1, 0 at the end, -1 on junk. */
static int
next_param(const char **pp, struct smtp__param *pr)
{
	const char *p = *pp;

	while (*p == ' ')
		p++;
	if (*p == '\0')
		return 0;
	const char *start = p;
	while (*p != '\0' && *p != ' ' && *p != '=')
		p++;
	pr->key = start;
	pr->key_len = (size_t)(p - start);
	pr->val = NULL;
	pr->val_len = 0;
	for (size_t i = 0; i < pr->key_len; i++) {
		unsigned char c = (unsigned char)start[i];
		bool alnum =
		    (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || c != '-'))
			return -1;
	}
	if (pr->key_len == 0)
		return -1;
	if (*p == '=') {
		p++;
		pr->val = p;
		while (*p != '\0' && *p != ' ') {
			unsigned char c = (unsigned char)*p;
			if ((c < 33 || c == '=' || c == 127))
				return -1;
			p++;
		}
		pr->val_len = (size_t)(p - pr->val);
		if (pr->val_len == 0)
			return -1;
	}
	*pp = p;
	return 1;
}

static bool
key_is(const struct smtp__param *pr, const char *name)
{
	return strlen(name) == pr->key_len && strncasecmp(pr->key, name, pr->key_len) == 0;
}

static bool
val_is(const struct smtp__param *pr, const char *name)
{
	return pr->val != NULL && strlen(name) == pr->val_len &&
	       strncasecmp(pr->val, name, pr->val_len) == 0;
}

/* "FROM:" / "TO:" prefix, then an optional space (tolerated, as most MTAs do). */
static const char *
skip_prefix(const char *args, const char *prefix)
{
	size_t n = strlen(prefix);
	if (strncasecmp(args, prefix, n) != 0)
		return NULL;
	args += n;
	if (*args == ' ')
		args++;
	return args;
}

static bool
relay_allowed(const struct smtp_session *s, const char *addr, int domain_off)
{
	if (s->client.trusted || s->authenticated || domain_off < 0)
		return true;
	const char *dom = addr + domain_off;
	for (size_t i = 0; i < s->cfg->n_relay_domains; i++)
		if (s->cfg->relay_domains[i] != NULL &&
		    strcasecmp(dom, s->cfg->relay_domains[i]) == 0)
			return true;
	return false;
}

/* ---- command handlers ---- */

static void
cmd_helo(struct smtp_session *s, const char *args, bool esmtp)
{
	size_t n = strlen(args);

	if (n == 0 || n > SMTP_HELO_MAX || strchr(args, ' ') != NULL) {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)args[i];
		if (c < 33 || c == 127) {
			REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: %s hostname",
			       esmtp ? "EHLO" : "HELO");
			return;
		}
	}
	txn_reset(s);
	memcpy(s->helo, args, n + 1);
	s->helo_done = true;
	s->esmtp = esmtp;
	if (!esmtp) {
		reply(s, 250, NULL, "%s", s->hostname);
		smtp_enter_state(s, ST_HELO);
		return;
	}
	reply_more(s, 250, NULL, "%s", s->hostname);
	reply_more(s, 250, NULL, "PIPELINING");
	reply_more(s, 250, NULL, "SIZE %llu", (unsigned long long)s->max_size);
	reply_more(s, 250, NULL, "8BITMIME");
	reply_more(s, 250, NULL, "SMTPUTF8");
	reply_more(s, 250, NULL, "ENHANCEDSTATUSCODES");
	reply_more(s, 250, NULL, "CHUNKING");
	if (s->cfg->tls_available && !s->tls)
		reply_more(s, 250, NULL, "STARTTLS");
	if (s->cfg->auth_available && s->tls)
		reply_more(s, 250, NULL, "AUTH PLAIN LOGIN");
	reply(s, 250, NULL, "DSN");
	smtp_enter_state(s, ST_HELO);
}

static void
cmd_ehlo(struct smtp_session *s, const char *args)
{
	cmd_helo(s, args, true);
}

static void
cmd_helo_(struct smtp_session *s, const char *args)
{
	cmd_helo(s, args, false);
}

static void
cmd_mail(struct smtp_session *s, const char *args)
{
	char addr[SMTP_PATH_MAX];
	int dom;
	size_t used;
	const char *p;
	struct smtp__param pr;
	bool seen_size = false, seen_body = false, seen_utf8 = false, seen_ret = false,
	     seen_envid = false, seen_auth = false;
	uint64_t size = 0;
	enum smtp_body body = SMTP_BODY_7BIT;
	enum smtp_ret ret = SMTP_RET_NONE;
	const char *envid = NULL;
	size_t envid_len = 0;
	int r;

	if (!s->helo_done) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: send HELO/EHLO first");
		return;
	}
	if (s->in_txn) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: nested MAIL command");
		return;
	}
	p = skip_prefix(args, "FROM:");
	if (p == NULL) {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
		return;
	}
	r = smtp__parse_path(p, strlen(p), SMTP__PARSE_NULL_OK | SMTP__PARSE_UTF8, addr,
			     sizeof(addr), &dom, &used);
	if (r != SMTP__ADDR_OK) {
		REJECT(s, bad_address, 501, "5.1.7", "Bad sender address syntax");
		return;
	}
	p += used;
	if (*p != '\0' && *p != ' ') {
		REJECT(s, bad_address, 501, "5.1.7", "Bad sender address syntax");
		return;
	}
	while ((r = next_param(&p, &pr)) == 1) {
		if (!s->esmtp) {
			REJECT(s, bad_syntax, 555, "5.5.4", "ESMTP parameters need EHLO");
			return;
		}
		if (key_is(&pr, "SIZE")) {
			if (seen_size)
				goto dup;
			seen_size = true;
			if (pr.val == NULL || !parse_u64(pr.val, pr.val_len, &size)) {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad SIZE parameter");
				return;
			}
		} else if (key_is(&pr, "BODY")) {
			if (seen_body)
				goto dup;
			seen_body = true;
			if (val_is(&pr, "7BIT")) {
				body = SMTP_BODY_7BIT;
			} else if (val_is(&pr, "8BITMIME")) {
				body = SMTP_BODY_8BITMIME;
			} else if (val_is(&pr, "BINARYMIME")) {
				REJECT(s, bad_syntax, 555, "5.5.4", "BINARYMIME not supported");
				return;
			} else {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad BODY parameter");
				return;
			}
		} else if (key_is(&pr, "SMTPUTF8")) {
			if (seen_utf8)
				goto dup;
			seen_utf8 = true;
			if (pr.val != NULL) {
				REJECT(s, bad_syntax, 501, "5.5.4", "SMTPUTF8 takes no value");
				return;
			}
		} else if (key_is(&pr, "RET")) {
			if (seen_ret)
				goto dup;
			seen_ret = true;
			if (val_is(&pr, "FULL")) {
				ret = SMTP_RET_FULL;
			} else if (val_is(&pr, "HDRS")) {
				ret = SMTP_RET_HDRS;
			} else {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad RET parameter");
				return;
			}
		} else if (key_is(&pr, "ENVID")) {
			if (seen_envid)
				goto dup;
			seen_envid = true;
			if (pr.val == NULL ||
			    !smtp__xtext_valid(pr.val, pr.val_len, SMTP_ENVID_MAX)) {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad ENVID parameter");
				return;
			}
			envid = pr.val;
			envid_len = pr.val_len;
		} else if (key_is(&pr, "AUTH")) {
			/* RFC 4954 sec 5: accepted; we do not trust another MTA's claim */
			if (seen_auth)
				goto dup;
			seen_auth = true;
			if (pr.val == NULL) {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad AUTH parameter");
				return;
			}
		} else {
			REJECT(s, bad_syntax, 555, "5.5.4", "Unsupported parameter");
			return;
		}
	}
	if (r < 0) {
		REJECT(s, bad_syntax, 501, "5.5.4", "Bad parameter syntax");
		return;
	}
	if (size > s->max_size) {
		REJECT(s, too_big, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		return;
	}
	if (!seen_utf8 && has_non_ascii(addr)) {
		REJECT(s, need_smtputf8, 553, "5.6.7", "SMTPUTF8 required for UTF-8 addresses");
		return;
	}
	txn_reset(s);
	s->in_txn = true;
	memcpy(s->mail_from, addr, strlen(addr) + 1);
	s->size_declared = size;
	s->body_type = body;
	s->smtputf8 = seen_utf8;
	s->ret = ret;
	if (envid != NULL) {
		memcpy(s->envid, envid, envid_len);
		s->envid[envid_len] = '\0';
		s->has_envid = true;
	}
	reply(s, 250, "2.1.0", "Ok");
	smtp_enter_state(s, ST_MAIL);
	return;
dup:
	REJECT(s, bad_syntax, 555, "5.5.4", "Duplicate parameter");
}

static bool
parse_notify(const struct smtp__param *pr, unsigned *out)
{
	unsigned bits = 0;
	size_t i = 0;

	if (pr->val == NULL)
		return false;
	while (i <= pr->val_len) {
		size_t j = i;
		while (j < pr->val_len && pr->val[j] != ',')
			j++;
		size_t n = j - i;
		const char *w = pr->val + i;
		if (n == 5 && strncasecmp(w, "NEVER", 5) == 0)
			bits |= SMTP_NOTIFY_NEVER;
		else if (n == 7 && strncasecmp(w, "SUCCESS", 7) == 0)
			bits |= SMTP_NOTIFY_SUCCESS;
		else if (n == 7 && strncasecmp(w, "FAILURE", 7) == 0)
			bits |= SMTP_NOTIFY_FAILURE;
		else if (n == 5 && strncasecmp(w, "DELAY", 5) == 0)
			bits |= SMTP_NOTIFY_DELAY;
		else
			return false;
		i = j + 1;
	}
	/* RFC 3461 sec 4.1: NEVER, or any combination of the other three */
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return false;
	*out = bits;
	return true;
}

/* ORCPT=addr-type ";" xtext (RFC 3461 sec 4.2); addr-type is an atom. */
static bool
orcpt_valid(const struct smtp__param *pr)
{
	if (pr->val == NULL || pr->val_len > SMTP_ORCPT_MAX)
		return false;
	const char *semi = memchr(pr->val, ';', pr->val_len);
	if (semi == NULL || semi == pr->val)
		return false;
	for (const char *q = pr->val; q < semi; q++) {
		unsigned char c = (unsigned char)*q;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') ||
			  (c != 0 && c < 0x80 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
		if (!ok)
			return false;
	}
	size_t rest = pr->val_len - (size_t)(semi + 1 - pr->val);
	return smtp__xtext_valid(semi + 1, rest, SMTP_ORCPT_MAX);
}

static void
cmd_rcpt(struct smtp_session *s, const char *args)
{
	char addr[SMTP_PATH_MAX];
	int dom;
	size_t used;
	const char *p;
	struct smtp__param pr;
	bool seen_notify = false, seen_orcpt = false;
	unsigned notify = 0;
	const char *orcpt = NULL;
	size_t orcpt_len = 0;
	int r;

	if (!s->in_txn) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: need MAIL command");
		return;
	}
	if (s->bdat_used) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: RCPT after BDAT");
		return;
	}
	p = skip_prefix(args, "TO:");
	if (p == NULL) {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: RCPT TO:<address>");
		return;
	}
	r = smtp__parse_path(p, strlen(p), SMTP__PARSE_POSTMASTER_OK | SMTP__PARSE_UTF8, addr,
			     sizeof(addr), &dom, &used);
	if (r != SMTP__ADDR_OK || (p[used] != '\0' && p[used] != ' ')) {
		REJECT(s, bad_address, 501, "5.1.3", "Bad recipient address syntax");
		return;
	}
	p += used;
	while ((r = next_param(&p, &pr)) == 1) {
		if (!s->esmtp) {
			REJECT(s, bad_syntax, 555, "5.5.4", "ESMTP parameters need EHLO");
			return;
		}
		if (key_is(&pr, "NOTIFY")) {
			if (seen_notify)
				goto dup;
			seen_notify = true;
			if (!parse_notify(&pr, &notify)) {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad NOTIFY parameter");
				return;
			}
		} else if (key_is(&pr, "ORCPT")) {
			if (seen_orcpt)
				goto dup;
			seen_orcpt = true;
			if (!orcpt_valid(&pr)) {
				REJECT(s, bad_syntax, 501, "5.5.4", "Bad ORCPT parameter");
				return;
			}
			orcpt = pr.val;
			orcpt_len = pr.val_len;
		} else {
			REJECT(s, bad_syntax, 555, "5.5.4", "Unsupported parameter");
			return;
		}
	}
	if (r < 0) {
		REJECT(s, bad_syntax, 501, "5.5.4", "Bad parameter syntax");
		return;
	}
	if (!s->smtputf8 && has_non_ascii(addr)) {
		REJECT(s, need_smtputf8, 553, "5.6.7", "SMTPUTF8 required for UTF-8 addresses");
		return;
	}
	if (s->n_rcpts >= s->max_rcpts) {
		/* RFC 5321 4.5.3.1.10: 452, and not a peer error (the client sends the rest later)
		 */
		COUNT(s, too_many_rcpts);
		reply(s, 452, "4.5.3", "Too many recipients");
		return;
	}
	if (!relay_allowed(s, addr, dom)) {
		REJECT(s, relay_denied, 554, "5.7.1", "<%s>: Relay access denied", addr);
		return;
	}
	if (s->n_rcpts == s->rcpts_cap) {
		size_t cap = s->rcpts_cap ? s->rcpts_cap * 2 : 4;
		if (cap > s->max_rcpts)
			cap = (size_t)s->max_rcpts;
		struct smtp_rcpt *nr = realloc(s->rcpts, cap * sizeof(*nr));
		if (nr == NULL)
			goto nomem;
		s->rcpts = nr;
		s->rcpts_cap = cap;
	}
	char *a = strdup(addr);
	char *o = orcpt != NULL ? strndup(orcpt, orcpt_len) : NULL;
	if (a == NULL || (orcpt != NULL && o == NULL)) {
		free(a);
		free(o);
		goto nomem;
	}
	s->rcpts[s->n_rcpts++] = (struct smtp_rcpt){.addr = a, .notify = notify, .orcpt = o};
	reply(s, 250, "2.1.5", "Ok");
	smtp_enter_state(s, ST_RCPT);
	return;
nomem:
	COUNT(s, nomem);
	reply(s, 451, "4.3.0", "Insufficient system resources");
	return;
dup:
	REJECT(s, bad_syntax, 555, "5.5.4", "Duplicate parameter");
}

/* Common checks of DATA and BDAT; returns a rejection reason or NULL. */
static const char *
txn_ready(const struct smtp_session *s)
{
	if (!s->helo_done)
		return "Error: send HELO/EHLO first";
	if (!s->in_txn)
		return "Error: need MAIL command";
	if (s->n_rcpts == 0)
		return "Error: need RCPT command";
	return NULL;
}

static void
cmd_data(struct smtp_session *s, const char *args)
{
	const char *why;

	if (*args != '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: DATA");
		return;
	}
	if ((why = txn_ready(s)) != NULL) {
		REJECT(s, bad_sequence, 503, "5.5.1", "%s", why);
		return;
	}
	if (s->bdat_used) {
		/* RFC 3030 sec 2: DATA and BDAT do not mix in one transaction */
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: DATA after BDAT");
		return;
	}
	body_reset(s);
	s->dstate = D_BOL;
	reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
	smtp_enter_state(s, ST_DATA);
}

/*
 * BDAT <count> [LAST] (RFC 3030 sec 2).  A count we cannot parse leaves us unable to find the
 * next command: 501 and close.  Otherwise the chunk is always consumed, even when the command
 * is refused; the reply (503 out of sequence, 552 over the size budget) follows the chunk, and
 * a 552 ends the transaction at once.
 */
static void
cmd_bdat(struct smtp_session *s, const char *args)
{
	const char *p = args;
	uint64_t n;
	bool last = false;

	while (*p >= '0' && *p <= '9')
		p++;
	if (!parse_u64(args, (size_t)(p - args), &n))
		goto bad;
	if (*p == ' ') {
		while (*p == ' ')
			p++;
		if (strcasecmp(p, "LAST") != 0)
			goto bad;
		last = true;
	} else if (*p != '\0') {
		goto bad;
	}

	s->chunk_left = s->chunk_size = n;
	s->chunk_last = last;
	s->chunk_reject = 0;
	if (txn_ready(s) != NULL)
		s->chunk_reject = 503;
	else if (s->too_big || n > s->max_size - s->body_total)
		s->chunk_reject = 552;
	else
		s->bdat_used = true;
	smtp_enter_state(s, ST_BDAT);
	if (n == 0)
		bdat_chunk_done(s);
	return;
bad:
	COUNT(s, bad_syntax);
	reply(s, 501, "5.5.4", "Syntax: BDAT count [LAST]");
	close_now(s);
}

static void
cmd_rset(struct smtp_session *s, const char *args)
{
	if (*args != '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: RSET");
		return;
	}
	txn_reset(s);
	reply(s, 250, "2.0.0", "Ok");
	smtp_enter_state(s, idle_state(s));
}

static void
cmd_noop(struct smtp_session *s, const char *args)
{
	reply(s, 250, "2.0.0", "Ok");
}

static void
cmd_quit(struct smtp_session *s, const char *args)
{
	reply(s, 221, "2.0.0", "Bye");
	close_now(s);
}

static void
cmd_vrfy(struct smtp_session *s, const char *args)
{
	if (*args == '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: VRFY address");
		return;
	}
	/* RFC 5321 3.5.3: 252 when we will not verify */
	reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void
cmd_help(struct smtp_session *s, const char *args)
{
	reply(s, 214, "2.0.0",
	      "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH");
}

static void
cmd_starttls(struct smtp_session *s, const char *args)
{
	if (*args != '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: STARTTLS");
		return;
	}
	if (!s->cfg->tls_available) {
		REJECT(s, bad_command, 502, "5.5.1", "Error: STARTTLS not available");
		return;
	}
	if (s->tls) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: TLS already active");
		return;
	}
	/* RFC 3207 sec 4: nothing after this line may be read before the handshake; feed stops
	 * here because the event is pending, and the glue discards what it already holds. */
	reply(s, 220, "2.0.0", "Ready to start TLS");
	s->ev = SMTP_EV_STARTTLS;
	smtp_enter_state(s, ST_TLS_WAIT);
}

/* ---- AUTH (RFC 4954, RFC 4616 PLAIN, LOGIN) ---- */

#define AUTH_OFF_MECH 0
#define AUTH_OFF_AUTHZID 8
#define AUTH_OFF_USER (AUTH_OFF_AUTHZID + SMTP_AUTH_FIELD_MAX + 1)
#define AUTH_OFF_PASS (AUTH_OFF_USER + SMTP_AUTH_FIELD_MAX + 1)

static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Strict base64 (RFC 4648 sec 4, padding required).  Returns the decoded length or -1. */
static long
b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
	size_t o = 0;

	if (n % 4 != 0)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		int v[4], pad = 0;
		for (int k = 0; k < 4; k++) {
			unsigned char c = (unsigned char)in[i + k];
			if (c == '=' && i + 4 == n && k >= 2) {
				v[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0)
				return -1; /* data after '=' */
			v[k] = b64_value(c);
			if (v[k] < 0)
				return -1;
		}
		unsigned triple = (unsigned)(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
		size_t m = 3 - (size_t)pad;
		if (o + m > cap)
			return -1;
		out[o++] = (unsigned char)(triple >> 16);
		if (m > 1)
			out[o++] = (unsigned char)(triple >> 8);
		if (m > 2)
			out[o++] = (unsigned char)triple;
	}
	return (long)o;
}

static bool
auth_field_put(struct smtp_session *s, size_t off, const unsigned char *p, size_t n,
	       bool allow_empty)
{
	if ((!allow_empty && n == 0) || n > SMTP_AUTH_FIELD_MAX || memchr(p, '\0', n) != NULL)
		return false;
	memcpy(s->auth_buf + off, p, n);
	s->auth_buf[off + n] = '\0';
	return true;
}

static void
auth_fail(struct smtp_session *s, int code, const char *enh, const char *text)
{
	auth_wipe(s);
	smtp_enter_state(s, idle_state(s));
	REJECT(s, auth_failed, code, enh, "%s", text);
}

static void
auth_raise(struct smtp_session *s)
{
	s->ev = SMTP_EV_AUTH;
	smtp_enter_state(s, ST_AUTH_WAIT);
}

/* A PLAIN response: [authzid] NUL authcid NUL passwd (RFC 4616 sec 2). */
static void
auth_plain(struct smtp_session *s, const char *b64, size_t n)
{
	unsigned char dec[SMTP__AUTH_DECODED_MAX];
	long m = b64_decode(b64, n, dec, sizeof(dec));

	if (m < 0) {
		auth_fail(s, 501, "5.5.2", "Cannot decode response");
		goto out;
	}
	unsigned char *z1 = memchr(dec, '\0', (size_t)m);
	unsigned char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)m - (size_t)(z1 + 1 - dec)) : NULL;
	if (z2 == NULL || !auth_field_put(s, AUTH_OFF_AUTHZID, dec, (size_t)(z1 - dec), true) ||
	    !auth_field_put(s, AUTH_OFF_USER, z1 + 1, (size_t)(z2 - z1 - 1), false) ||
	    !auth_field_put(s, AUTH_OFF_PASS, z2 + 1, (size_t)(dec + m - z2 - 1), false)) {
		auth_fail(s, 501, "5.5.2", "Invalid PLAIN response");
		goto out;
	}
	memcpy(s->auth_buf + AUTH_OFF_MECH, "PLAIN", 6);
	auth_raise(s);
out:
	explicit_bzero(dec, sizeof(dec));
}

static void
auth_login(struct smtp_session *s, const char *b64, size_t n, bool user)
{
	unsigned char dec[SMTP__AUTH_DECODED_MAX];
	long m = b64_decode(b64, n, dec, sizeof(dec));

	if (m < 0) {
		auth_fail(s, 501, "5.5.2", "Cannot decode response");
		goto out;
	}
	if (!auth_field_put(s, user ? AUTH_OFF_USER : AUTH_OFF_PASS, dec, (size_t)m, false)) {
		auth_fail(s, 501, "5.5.2", "Invalid LOGIN response");
		goto out;
	}
	if (user) {
		reply(s, 334, NULL, "UGFzc3dvcmQ6"); /* "Password:" */
		smtp_enter_state(s, ST_AUTH_PASS);
		goto out;
	}
	memcpy(s->auth_buf + AUTH_OFF_MECH, "LOGIN", 6);
	s->auth_buf[AUTH_OFF_AUTHZID] = '\0';
	auth_raise(s);
out:
	explicit_bzero(dec, sizeof(dec));
}

static void
cmd_auth(struct smtp_session *s, const char *args)
{
	if (!s->cfg->auth_available) {
		REJECT(s, bad_command, 504, "5.5.4", "Error: authentication not available");
		return;
	}
	if (!s->tls) {
		REJECT(s, bad_sequence, 530, "5.7.0", "Must issue a STARTTLS command first");
		return;
	}
	if (!s->helo_done || !s->esmtp) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: send EHLO first");
		return;
	}
	if (s->authenticated) {
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: already authenticated");
		return;
	}
	if (s->in_txn) {
		/* RFC 4954 sec 4: not permitted during a mail transaction */
		REJECT(s, bad_sequence, 503, "5.5.1", "Error: AUTH not permitted in a transaction");
		return;
	}
	const char *sp = strchr(args, ' ');
	size_t mlen = sp ? (size_t)(sp - args) : strlen(args);
	const char *ir = NULL;
	if (sp != NULL) {
		ir = sp + 1;
		while (*ir == ' ')
			ir++;
		if (*ir == '\0' || strchr(ir, ' ') != NULL) {
			REJECT(s, bad_syntax, 501, "5.5.4",
			       "Syntax: AUTH mechanism [initial-response]");
			return;
		}
	}
	auth_wipe(s);
	if (mlen == 5 && strncasecmp(args, "PLAIN", 5) == 0) {
		if (ir == NULL) {
			reply(s, 334, NULL, "%s", "");
			smtp_enter_state(s, ST_AUTH_PLAIN);
		} else {
			/* "=" is an empty initial response (RFC 4954 sec 4), invalid for PLAIN */
			auth_plain(s, ir, strcmp(ir, "=") == 0 ? 0 : strlen(ir));
		}
	} else if (mlen == 5 && strncasecmp(args, "LOGIN", 5) == 0) {
		if (ir == NULL) {
			reply(s, 334, NULL, "VXNlcm5hbWU6"); /* "Username:" */
			smtp_enter_state(s, ST_AUTH_USER);
		} else {
			auth_login(s, ir, strcmp(ir, "=") == 0 ? 0 : strlen(ir), true);
		}
	} else {
		REJECT(s, bad_syntax, 504, "5.5.4", "Unrecognized authentication type");
	}
}

/* A continuation line in an AUTH exchange (CR already stripped). */
static void
auth_line(struct smtp_session *s, const char *line, size_t n)
{
	if (n == 1 && line[0] == '*') {
		auth_fail(s, 501, "5.0.0", "Authentication cancelled");
		return;
	}
	switch (s->state) {
	case ST_AUTH_PLAIN:
		auth_plain(s, line, n);
		break;
	case ST_AUTH_USER:
		auth_login(s, line, n, true);
		break;
	case ST_AUTH_PASS:
		auth_login(s, line, n, false);
		break;
	default:
		break;
	}
}

/* ---- command dispatch ---- */

struct smtp__cmd {
	const char *verb;
	void (*fn)(struct smtp_session *s, const char *args);
};

static const struct smtp__cmd smtp__cmds[] = {
    {"EHLO", cmd_ehlo},		{"HELO", cmd_helo_}, {"MAIL", cmd_mail}, {"RCPT", cmd_rcpt},
    {"DATA", cmd_data},		{"BDAT", cmd_bdat},  {"RSET", cmd_rset}, {"NOOP", cmd_noop},
    {"QUIT", cmd_quit},		{"VRFY", cmd_vrfy},  {"HELP", cmd_help}, {"AUTH", cmd_auth},
    {"STARTTLS", cmd_starttls},
};

static bool
in_auth_exchange(const struct smtp_session *s)
{
	return s->state == ST_AUTH_PLAIN || s->state == ST_AUTH_USER || s->state == ST_AUTH_PASS;
}

/* One complete line, LF removed; line[n] is writable. */
static void
process_line(struct smtp_session *s, char *line, size_t n)
{
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	if (in_auth_exchange(s)) {
		auth_line(s, line, n);
		return;
	}
	if (memchr(line, '\0', n) != NULL || memchr(line, '\r', n) != NULL) {
		REJECT(s, bad_command, 500, "5.5.2", "Error: bad characters in command");
		return;
	}
	while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
		line[--n] = '\0';
	if (n == 0) {
		REJECT(s, bad_command, 500, "5.5.2", "Error: empty command");
		return;
	}
	size_t vlen = 0;
	while (vlen < n && line[vlen] != ' ')
		vlen++;
	const char *args = line + vlen;
	while (*args == ' ')
		args++;
	if (vlen <= SMTP__VERB_MAX) {
		for (size_t i = 0; i < sizeof(smtp__cmds) / sizeof(smtp__cmds[0]); i++) {
			if (strlen(smtp__cmds[i].verb) == vlen &&
			    strncasecmp(line, smtp__cmds[i].verb, vlen) == 0) {
				smtp__cmds[i].fn(s, args);
				return;
			}
		}
	}
	REJECT(s, bad_command, 500, "5.5.2", "Error: command not recognized");
}

/*
 * Reads up to and including one LF.  The line is kept up to its limit (max_line_length, or
 * SMTP_AUTH_LINE_MAX in an AUTH exchange, both counting the CR LF); beyond it the rest of the
 * line is dropped and the line is answered 500 5.5.2 when its LF arrives (RFC 5321 4.5.3.1.4).
 */
static size_t
line_consume(struct smtp_session *s, const char *p, size_t n)
{
	size_t limit = in_auth_exchange(s) ? SMTP_AUTH_LINE_MAX : s->line_max;
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
	s->line_len = 0;
	s->line_overflow = false;
	if (over) {
		if (in_auth_exchange(s)) {
			auth_wipe(s);
			smtp_enter_state(s, idle_state(s));
		}
		REJECT(s, line_too_long, 500, "5.5.2", "Error: line too long");
	} else {
		process_line(s, s->line, len);
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
	txn_reset(s);
	reply(s, 220, NULL, "%s ESMTP relayd", s->hostname);
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
	txn_reset(s);
	auth_wipe(s);
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
			used += data_consume(s, buf + used, len - used);
			break;
		case ST_BDAT:
			used += bdat_consume(s, buf + used, len - used);
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
		close_now(s);
		return 0;
	}
	/* RFC 3207 sec 4.2: discard all knowledge obtained from the client */
	txn_reset(s);
	auth_wipe(s);
	s->tls = true;
	s->helo_done = s->esmtp = s->authenticated = false;
	s->helo[0] = '\0';
	s->auth_user[0] = '\0';
	smtp_enter_state(s, ST_GREETED);
	after_event(s);
	return 0;
}

int
smtp_session_auth_result(struct smtp_session *s, int ok)
{
	if (s->ev != SMTP_EV_AUTH)
		return -EINVAL;
	s->ev = SMTP_EV_NONE;
	if (ok) {
		memcpy(s->auth_user, s->auth_buf + AUTH_OFF_USER, SMTP_AUTH_FIELD_MAX + 1);
		s->authenticated = true;
		auth_wipe(s);
		reply(s, 235, "2.7.0", "Authentication successful");
		smtp_enter_state(s, idle_state(s));
	} else {
		auth_fail(s, 535, "5.7.8", "Authentication credentials invalid");
	}
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
	reply(s, code, enhanced, "%s", t);
	txn_reset(s);
	smtp_enter_state(s, idle_state(s));
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
	reply(s, 421, "4.4.2", "%s Error: timeout exceeded", s->hostname);
	close_now(s);
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
	reply(s, 421, "4.3.2", "Service shutting down");
	close_now(s);
}

bool
smtp_session_in_data(const struct smtp_session *s)
{
	return s->state == ST_DATA || s->state == ST_BDAT;
}

const char *
smtp_session_state_name(const struct smtp_session *s)
{
	return smtp__state_names[s->state];
}
