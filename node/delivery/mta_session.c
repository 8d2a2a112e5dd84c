/*
 * mta_session.c - SMTP client machine (see mta_session.h for the contract).
 *
 * Layout: the reply parser (picohttpparser-style, allocates nothing); command
 * formatting (ESMTP parameters of RFC 1870 SIZE, RFC 6152 BODY, RFC 6531
 * SMTPUTF8, RFC 3461 NOTIFY/ORCPT/RET/ENVID with xtext); a generator that
 * emits the transaction's commands into the bounded output buffer (all of
 * them at once under PIPELINING, RFC 2920 3.1; one at a time otherwise) and
 * records the replies it expects, in order; one handler per command kind; and
 * the body cursor that dot-stuffs the borrowed body on the fly (RFC 5321
 * 4.5.2) without copying it.
 */
#include "mta_session.h"

#include "mailbox.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum cmd {
	CMD_EHLO = 1,
	CMD_HELO,
	CMD_STARTTLS,
	CMD_RSET,
	CMD_MAIL,
	CMD_RCPT,
	CMD_DATA,
	CMD_DOT,
	CMD_QUIT,
};

enum gen { GEN_DONE = 0, GEN_RSET, GEN_MAIL, GEN_RCPT, GEN_DATA };

enum bphase { B_STUFF = 0, B_BODY, B_TERM, B_DONE };

/* ---------------------------------------------------------------- replies */

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* RFC 3463 status "class.subject.detail" at p; returns its length or 0. */
static size_t
enh_len(const char *p, size_t n)
{
	size_t i = 0, part = 0;

	if (n < 5 || (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
		return 0;
	i = 2;
	for (part = 0; part < 2; part++) {
		size_t d = 0;
		while (i < n && is_digit(p[i]) && d < 3) {
			i++;
			d++;
		}
		if (d == 0)
			return 0;
		if (part == 0) {
			if (i >= n || p[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && p[i] != ' ')
		return 0;
	return i;
}

int
mta_reply_parse(const char *buf, size_t len, struct mta_reply *out)
{
	size_t off = 0;
	int code = 0;

	out->code = 0;
	out->enh[0] = '\0';
	out->nlines = 0;
	out->len = 0;
	for (;;) {
		const char *line = buf + off;
		const char *lf = memchr(line, '\n', len - off);
		if (lf == NULL) {
			if (len - off > MTA_REPLY_LINE_MAX || len > MTA_REPLY_MAX)
				return -1;
			return -2;
		}
		size_t ll = (size_t)(lf - line); /* without LF */
		size_t next = off + ll + 1;
		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		if (ll > MTA_REPLY_LINE_MAX || next > MTA_REPLY_MAX)
			return -1;
		if (out->nlines >= MTA_REPLY_MAX_LINES)
			return -1;
		if (ll < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) ||
		    !is_digit(line[2]))
			return -1;
		int c = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
		if (code != 0 && c != code)
			return -1;
		code = c;
		bool last;
		if (ll == 3)
			last = true;
		else if (line[3] == ' ')
			last = true;
		else if (line[3] == '-')
			last = false;
		else
			return -1;
		const char *t = ll > 4 ? line + 4 : line + ll;
		size_t tl = ll > 4 ? ll - 4 : 0;
		if (out->nlines == 0) {
			size_t el = enh_len(t, tl);
			if (el > 0 && el < MTA_ENH_MAX && t[0] == line[0]) {
				memcpy(out->enh, t, el);
				out->enh[el] = '\0';
				t += el;
				tl -= el;
				while (tl > 0 && *t == ' ') {
					t++;
					tl--;
				}
			}
		}
		/* text fits: total text <= bytes on the wire <= MTA_REPLY_MAX */
		out->line_off[out->nlines++] = (uint16_t)out->len;
		for (size_t i = 0; i < tl; i++) {
			unsigned char ch = (unsigned char)t[i];
			out->text[out->len++] =
			    (ch < 0x20 && ch != '\t') || ch >= 0x7f ? '?' : (char)ch;
		}
		out->text[out->len++] = '\0';
		off = next;
		if (last) {
			out->code = code;
			return (int)off;
		}
	}
}

const char *
mta_reply_line(const struct mta_reply *r, size_t i)
{
	return i < r->nlines ? r->text + r->line_off[i] : "";
}

void
mta_diag_from_reply(struct mta_diag *d, const struct mta_reply *r)
{
	size_t o;
	int n;

	d->code = r->code;
	d->local = false;
	if (r->enh[0])
		snprintf(d->enh, sizeof(d->enh), "%s", r->enh);
	else
		snprintf(d->enh, sizeof(d->enh), "%d.0.0", r->code / 100);
	n = snprintf(d->text, sizeof(d->text), "%d%s%s", r->code, r->enh[0] ? " " : "", r->enh);
	o = n < 0 ? 0 : (size_t)n;
	for (size_t i = 0; i < r->nlines && o + 1 < sizeof(d->text); i++) {
		n = snprintf(d->text + o, sizeof(d->text) - o, " %s", mta_reply_line(r, i));
		if (n < 0)
			break;
		o += (size_t)n;
		if (o >= sizeof(d->text))
			o = sizeof(d->text) - 1;
	}
}

static void
diag_local(struct mta_diag *d, int code, const char *enh, const char *text)
{
	d->code = code;
	d->local = true;
	snprintf(d->enh, sizeof(d->enh), "%s", enh);
	snprintf(d->text, sizeof(d->text), "%d %s %s", code, enh, text);
}

/* ------------------------------------------------------------- helpers */

bool
mta_body_is_8bit(const char *body, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)body[i] >= 0x80)
			return true;
	return false;
}

static bool
has_8bit(const char *s)
{
	return s != NULL && mta_body_is_8bit(s, strlen(s));
}

bool
mta_txn_needs_smtputf8(const struct mta_txn *txn)
{
	if (has_8bit(txn->mail_from))
		return true;
	for (size_t i = 0; i < txn->nrcpts; i++)
		if (has_8bit(txn->rcpts[i].addr))
			return true;
	return false;
}

/* An address we can put between <> on a command line: the grammar the SMTP server accepted it
 * with (mailbox.h, one grammar for what is accepted and what is sent; issue 12). */
static bool
addr_ok(const char *a, bool allow_empty)
{
	if (a == NULL || strlen(a) > MTA_ADDR_MAX)
		return false;
	return mailbox_valid(a, MAILBOX_PARSE_UTF8 | (allow_empty ? MAILBOX_PARSE_NULL_OK : 0));
}

/* Printable ASCII only (ENVID, ORCPT before xtext). */
static bool
printable_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

/* RFC 3461 4: xtext, "+XX" for '+', '=', and bytes outside "!".."~". */
static int
put_xtext(char *dst, size_t size, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c >= '!' && c <= '~' && c != '+' && c != '=') {
			if (o + 1 >= size)
				return -1;
			dst[o++] = (char)c;
		} else {
			if (o + 3 >= size)
				return -1;
			dst[o++] = '+';
			dst[o++] = hex[c >> 4];
			dst[o++] = hex[c & 15];
		}
	}
	dst[o] = '\0';
	return (int)o;
}

/* --------------------------------------------------------------- output */

static size_t
out_room(const struct mta_session *s)
{
	return sizeof(s->out) - s->out_len;
}

static void
expect(struct mta_session *s, enum cmd kind, size_t rcpt)
{
	size_t cap = sizeof(s->exp) / sizeof(s->exp[0]);
	/* Invariant: at most nrcpts + RSET + MAIL + DATA (+1) outstanding. */
	size_t i = (s->exp_head + s->exp_count) % cap;
	s->exp[i].kind = (uint8_t)kind;
	s->exp[i].rcpt = (uint8_t)rcpt;
	s->exp_count++;
}

/* Append "line\r\n" and expect its reply.  fill() keeps MTA_OUT_RESERVE
 * bytes free for a closing QUIT; a line that still does not fit is a broken
 * invariant and is dropped rather than overflowing. */
#define MTA_OUT_RESERVE 64
static void
emit(struct mta_session *s, enum cmd kind, size_t rcpt, const char *line)
{
	size_t n = strlen(line);
	if (n + 2 > out_room(s) && s->out_off > 0) {
		memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
		s->out_len -= s->out_off;
		s->out_off = 0;
	}
	if (n + 2 > out_room(s))
		return;
	memcpy(s->out + s->out_len, line, n);
	memcpy(s->out + s->out_len + n, "\r\n", 2);
	s->out_len += n + 2;
	expect(s, kind, rcpt);
}

/* snprintf at *o that never moves *o past size - 1. */
__attribute__((format(printf, 4, 5))) static void
append(char *line, size_t size, size_t *o, const char *fmt, ...)
{
	va_list ap;
	if (*o + 1 >= size)
		return;
	va_start(ap, fmt);
	int n = vsnprintf(line + *o, size - *o, fmt, ap);
	va_end(ap);
	if (n > 0)
		*o = *o + (size_t)n >= size ? size - 1 : *o + (size_t)n;
}

static void
emit_simple(struct mta_session *s, enum cmd kind)
{
	char line[MTA_CMD_MAX];
	switch (kind) {
	case CMD_EHLO:
	case CMD_HELO:
		snprintf(line, sizeof(line), "%s %s", kind == CMD_EHLO ? "EHLO" : "HELO",
			 s->cfg.helo_name);
		break;
	case CMD_STARTTLS:
		strcpy(line, "STARTTLS");
		break;
	case CMD_RSET:
		strcpy(line, "RSET");
		break;
	case CMD_DATA:
		strcpy(line, "DATA");
		break;
	case CMD_QUIT:
		strcpy(line, "QUIT");
		break;
	default:
		return;
	}
	emit(s, kind, 0, line);
}

/* Every new wait is a new phase (struct mta_deadline). */
static void
phase_next(struct mta_session *s)
{
	s->phase_seq++;
}

static void
enter_state(struct mta_session *s, enum mta_state st)
{
	s->state = st;
	phase_next(s);
}

/* ------------------------------------------------------------ outcomes */

enum fin { FIN_NORMAL, FIN_NEXT_HOST, FIN_FAIL_ALL };

/* Decide the transaction (see the header for the outcome rules). */
static void
txn_finish(struct mta_session *s, enum fin how, const struct mta_diag *d)
{
	struct mta_txn *t = s->txn;
	bool pending = false;

	if (!s->txn_open)
		return;
	s->txn_open = false;
	for (size_t i = 0; i < t->nrcpts; i++) {
		struct mta_rcpt *r = &t->rcpts[i];
		if (s->in_txn[i] &&
		    (r->state == MTA_RCPT_PENDING || r->state == MTA_RCPT_ACCEPTED)) {
			if (how == FIN_FAIL_ALL) {
				r->state = MTA_RCPT_FAILED;
				r->diag = *d;
			} else {
				r->state = MTA_RCPT_PENDING;
				if (d)
					r->diag = *d;
			}
		}
		if (r->state == MTA_RCPT_PENDING)
			pending = true;
	}
	t->result = pending ? MTA_TXN_NEXT_HOST : MTA_TXN_DONE;
	if (d)
		t->diag = *d;
	s->gen = GEN_DONE;
}

/* This host is done for: finish the transaction (PENDING = next host). */
static void
session_fail(struct mta_session *s, const struct mta_diag *d, bool send_quit)
{
	txn_finish(s, FIN_NEXT_HOST, d);
	s->close_reason = MTA_CLOSE_NEXT_HOST;
	s->diag = *d;
	s->exp_count = 0;
	s->gen = GEN_DONE;
	if (send_quit && s->state != MTA_S_BODY && s->state != MTA_S_TLS_WAIT) {
		if (s->out_off == 0)
			s->out_len = 0; /* drop unsent commands, none half-written */
		emit_simple(s, CMD_QUIT);
		enter_state(s, MTA_S_QUIT);
		s->event = MTA_EV_NONE;
	} else {
		enter_state(s, MTA_S_CLOSED);
		s->event = MTA_EV_CLOSED;
	}
}

static void
txn_done_event(struct mta_session *s)
{
	enter_state(s, MTA_S_READY);
	s->event = MTA_EV_TXN_DONE;
}

/* --------------------------------------------------------- transactions */

static void fill(struct mta_session *s);

/* Local checks, then the command generator.  Called once the server is
 * known (after EHLO/HELO, STARTTLS) or from mta_session_next(). */
static void
txn_begin(struct mta_session *s)
{
	struct mta_txn *t = s->txn;
	struct mta_diag d;
	size_t todo = 0;
	uint64_t size = t->size ? t->size : t->body_len;

	s->txn_open = true;
	s->mail_ok = false;
	s->mail_fail = 0;
	s->discard_body = false;
	s->naccepted = 0;
	t->result = MTA_TXN_DONE;
	memset(&t->diag, 0, sizeof(t->diag));
	for (size_t i = 0; i < t->nrcpts; i++) {
		struct mta_rcpt *r = &t->rcpts[i];
		s->in_txn[i] = r->state == MTA_RCPT_PENDING;
		if (!s->in_txn[i])
			continue;
		if (!addr_ok(r->addr, false) ||
		    (r->orcpt &&
		     (!printable_ok(r->orcpt, MTA_ORCPT_MAX) || !strchr(r->orcpt, ';')))) {
			diag_local(&r->diag, 553, "5.1.3", "bad recipient address syntax");
			r->state = MTA_RCPT_FAILED;
			s->in_txn[i] = false;
			continue;
		}
		todo++;
	}
	if (todo == 0) {
		txn_finish(s, FIN_NORMAL, NULL);
		txn_done_event(s);
		return;
	}
	if (!addr_ok(t->mail_from, true) || (t->envid && !printable_ok(t->envid, MTA_ENVID_MAX))) {
		diag_local(&d, 553, "5.1.7", "bad sender address syntax");
		txn_finish(s, FIN_FAIL_ALL, &d);
		txn_done_event(s);
		return;
	}
	/* RFC 1870 6.1: do not send a message larger than the server's SIZE. */
	if ((s->ext & MTA_EXT_SIZE) && s->ext_size > 0 && size > s->ext_size) {
		diag_local(&d, 552, "5.3.4", "message size exceeds fixed limit of the server");
		txn_finish(s, FIN_FAIL_ALL, &d);
		txn_done_event(s);
		return;
	}
	/* RFC 6531 3.4: non-ASCII addresses need a server offering SMTPUTF8. */
	if (t->smtputf8 && !(s->ext & MTA_EXT_SMTPUTF8)) {
		diag_local(&d, 553, "5.6.7", "SMTPUTF8 required but not offered by the server");
		txn_finish(s, FIN_FAIL_ALL, &d);
		txn_done_event(s);
		return;
	}
	if (t->body_8bit && !(s->ext & MTA_EXT_8BITMIME))
		s->body_8bit_unsupported = true; /* sent as is (RFC 6152 3 asks for a
						    conversion we do not do) */
	s->gen = s->rset_needed ? GEN_RSET : GEN_MAIL;
	s->gen_rcpt = 0;
	enter_state(s, MTA_S_TXN);
	fill(s);
}

static void
fmt_mail(struct mta_session *s, char *line, size_t size)
{
	struct mta_txn *t = s->txn;
	uint64_t msize = t->size ? t->size : t->body_len;
	char x[MTA_ENVID_MAX * 3 + 1];
	size_t o = 0;

	line[0] = '\0';
	append(line, size, &o, "MAIL FROM:<%s>", t->mail_from);
	if (s->ext & MTA_EXT_SIZE) /* RFC 1870 */
		append(line, size, &o, " SIZE=%llu", (unsigned long long)msize);
	if (t->body_8bit && (s->ext & MTA_EXT_8BITMIME)) /* RFC 6152 */
		append(line, size, &o, " BODY=8BITMIME");
	if (t->smtputf8 && (s->ext & MTA_EXT_SMTPUTF8)) /* RFC 6531 3.4 */
		append(line, size, &o, " SMTPUTF8");
	if (s->ext & MTA_EXT_DSN) { /* RFC 3461 4.3, 4.4 */
		if (t->ret != MTA_RET_NONE)
			append(line, size, &o, " RET=%s", t->ret == MTA_RET_FULL ? "FULL" : "HDRS");
		if (t->envid && put_xtext(x, sizeof(x), t->envid) >= 0)
			append(line, size, &o, " ENVID=%s", x);
	}
}

static void
fmt_rcpt(struct mta_session *s, const struct mta_rcpt *r, char *line, size_t size)
{
	static const struct {
		unsigned bit;
		const char *name;
	} k[] = {{MTA_NOTIFY_SUCCESS, "SUCCESS"},
		 {MTA_NOTIFY_FAILURE, "FAILURE"},
		 {MTA_NOTIFY_DELAY, "DELAY"}};
	char x[MTA_ORCPT_MAX * 3 + 1];
	size_t o = 0;

	line[0] = '\0';
	append(line, size, &o, "RCPT TO:<%s>", r->addr);
	if (!(s->ext & MTA_EXT_DSN))
		return;
	/* RFC 3461 4.1 NOTIFY, 4.2 ORCPT */
	if (r->notify & MTA_NOTIFY_NEVER) {
		append(line, size, &o, " NOTIFY=NEVER");
	} else if (r->notify) {
		const char *sep = " NOTIFY=";
		for (size_t i = 0; i < 3; i++)
			if (r->notify & k[i].bit) {
				append(line, size, &o, "%s%s", sep, k[i].name);
				sep = ",";
			}
	}
	if (r->orcpt) {
		/* "type;address": the type stays, the address becomes xtext. */
		const char *semi = strchr(r->orcpt, ';');
		if (put_xtext(x, sizeof(x), semi + 1) >= 0)
			append(line, size, &o, " ORCPT=%.*s;%s", (int)(semi - r->orcpt), r->orcpt,
			       x);
	}
}

/* Emit what the transaction may send now (RFC 2920 3.1: RSET, MAIL, RCPT
 * anywhere in a group, DATA last).  Without PIPELINING: one command, then
 * wait for its reply. */
static void
fill(struct mta_session *s)
{
	char line[MTA_CMD_MAX];
	bool pipe = (s->ext & MTA_EXT_PIPELINING) != 0;

	while (s->gen != GEN_DONE && out_room(s) >= MTA_CMD_MAX + 2 + MTA_OUT_RESERVE) {
		if (!pipe && s->exp_count > 0)
			return;
		switch (s->gen) {
		case GEN_RSET:
			emit_simple(s, CMD_RSET);
			s->gen = GEN_MAIL;
			break;
		case GEN_MAIL:
			fmt_mail(s, line, sizeof(line));
			emit(s, CMD_MAIL, 0, line);
			s->gen = GEN_RCPT;
			s->gen_rcpt = 0;
			if (!pipe)
				return;
			break;
		case GEN_RCPT:
			while (s->gen_rcpt < s->txn->nrcpts && !s->in_txn[s->gen_rcpt])
				s->gen_rcpt++;
			if (s->gen_rcpt >= s->txn->nrcpts) {
				s->gen = GEN_DATA;
				break;
			}
			fmt_rcpt(s, &s->txn->rcpts[s->gen_rcpt], line, sizeof(line));
			emit(s, CMD_RCPT, s->gen_rcpt, line);
			s->gen_rcpt++;
			break;
		case GEN_DATA:
			/* Without PIPELINING, DATA only when someone was accepted. */
			if (!pipe && (!s->mail_ok || s->naccepted == 0)) {
				s->gen = GEN_DONE;
				return;
			}
			emit_simple(s, CMD_DATA);
			s->gen = GEN_DONE;
			break;
		}
	}
}

/* Is the end of data held back until the glue says it may commit?  Not for
 * a discarded body: ending it commits nothing (no recipient was accepted). */
static bool
commit_gated(const struct mta_session *s)
{
	return s->cfg.commit_gate && !s->discard_body && !s->committed;
}

/* The body is out but for its end: ask the glue (MTA_EV_COMMIT). */
static void
body_check_gate(struct mta_session *s)
{
	if (s->state == MTA_S_BODY && s->bphase == B_TERM && s->bpos == 0 && commit_gated(s) &&
	    s->event == MTA_EV_NONE)
		s->event = MTA_EV_COMMIT;
}

static void
body_start(struct mta_session *s, bool discard)
{
	s->discard_body = discard;
	s->committed = false;
	s->bpos = 0;
	s->bphase = (!discard && s->txn->body_len > 0 && s->txn->body[0] == '.') ? B_STUFF : B_BODY;
	if (discard || s->txn->body_len == 0)
		s->bphase = B_TERM;
	enter_state(s, MTA_S_BODY);
	body_check_gate(s);
}

/* All replies of the transaction are in: decide (non-DATA paths). */
static void
txn_settle(struct mta_session *s)
{
	if (s->mail_fail == 5)
		txn_finish(s, FIN_FAIL_ALL, &s->mail_diag);
	else if (s->mail_fail == 4)
		txn_finish(s, FIN_NEXT_HOST, &s->mail_diag);
	else
		txn_finish(s, FIN_NORMAL, NULL);
	txn_done_event(s);
}

static void
on_mail(struct mta_session *s, const struct mta_reply *r, const struct mta_diag *d)
{
	if (r->code / 100 == 2) {
		s->mail_ok = true;
		s->rset_needed = true;
	} else {
		s->mail_fail = r->code / 100 == 5 ? 5 : 4;
		s->mail_diag = *d;
		if (!(s->ext & MTA_EXT_PIPELINING)) {
			s->gen = GEN_DONE;
			txn_settle(s);
		}
	}
}

static void
on_rcpt(struct mta_session *s, size_t i, const struct mta_reply *r, const struct mta_diag *d)
{
	struct mta_rcpt *rc = &s->txn->rcpts[i];

	if (s->mail_ok) {
		rc->diag = *d;
		if (r->code / 100 == 2) {
			rc->state = MTA_RCPT_ACCEPTED;
			s->naccepted++;
		} else if (r->code / 100 == 5) {
			rc->state = MTA_RCPT_FAILED;
		} else {
			rc->state = MTA_RCPT_DEFERRED; /* 4xx, or a stray 3xx */
		}
	}
	/* Without PIPELINING, the last RCPT with nobody accepted ends it. */
	if (!(s->ext & MTA_EXT_PIPELINING) && s->exp_count == 0) {
		bool more = false;
		for (size_t k = s->gen_rcpt; k < s->txn->nrcpts; k++)
			more |= s->in_txn[k];
		if (!more && s->naccepted == 0)
			txn_settle(s);
	}
}

static void
on_data(struct mta_session *s, const struct mta_reply *r, const struct mta_diag *d)
{
	bool usable = s->mail_ok && s->naccepted > 0;

	if (r->code == 354) {
		/* RFC 2920 3.1: DATA can be accepted although MAIL or every RCPT
		 * failed; then an empty message ends the transaction. */
		body_start(s, !usable);
		return;
	}
	if (!usable) {
		txn_settle(s);
		return;
	}
	if (r->code / 100 == 4)
		txn_finish(s, FIN_NEXT_HOST, d);
	else if (r->code / 100 == 5)
		txn_finish(s, FIN_FAIL_ALL, d);
	else {
		session_fail(s, d, true); /* 2xx to DATA: nonsense */
		return;
	}
	txn_done_event(s);
}

static void
on_dot(struct mta_session *s, const struct mta_reply *r, const struct mta_diag *d)
{
	s->rset_needed = false; /* the server reset its transaction either way */
	if (s->discard_body) {
		txn_settle(s);
		return;
	}
	if (r->code / 100 == 2) {
		for (size_t i = 0; i < s->txn->nrcpts; i++) {
			struct mta_rcpt *rc = &s->txn->rcpts[i];
			if (s->in_txn[i] && rc->state == MTA_RCPT_ACCEPTED) {
				rc->state = MTA_RCPT_DELIVERED;
				rc->diag = *d;
			}
		}
		txn_finish(s, FIN_NORMAL, d);
	} else if (r->code / 100 == 5) {
		txn_finish(s, FIN_FAIL_ALL, d);
	} else {
		txn_finish(s, FIN_NEXT_HOST, d); /* 4xx, or a stray 3xx */
	}
	txn_done_event(s);
}

/* What to do once the server is known (after EHLO/HELO or STARTTLS). */
static void
after_hello(struct mta_session *s)
{
	struct mta_diag d;

	if (!s->tls_active && s->cfg.tls != MTA_TLS_NONE && (s->ext & MTA_EXT_STARTTLS)) {
		emit_simple(s, CMD_STARTTLS);
		enter_state(s, MTA_S_STARTTLS);
		return;
	}
	if (!s->tls_active && s->cfg.tls == MTA_TLS_REQUIRED) {
		/* Temporary: another MX, or this one later, may offer it. */
		diag_local(&d, 451, "4.7.4", "TLS is required, but was not offered by host");
		session_fail(s, &d, true);
		return;
	}
	txn_begin(s);
}

static void
parse_ehlo(struct mta_session *s, const struct mta_reply *r)
{
	static const struct {
		const char *kw;
		unsigned bit;
	} kws[] = {
	    {"PIPELINING", MTA_EXT_PIPELINING},
	    {"SIZE", MTA_EXT_SIZE},
	    {"8BITMIME", MTA_EXT_8BITMIME},
	    {"SMTPUTF8", MTA_EXT_SMTPUTF8},
	    {"STARTTLS", MTA_EXT_STARTTLS},
	    {"DSN", MTA_EXT_DSN},
	    {"ENHANCEDSTATUSCODES", MTA_EXT_ENHANCEDSTATUSCODES},
	    {"CHUNKING", MTA_EXT_CHUNKING},
	};

	s->ext = 0;
	s->ext_size = 0;
	for (size_t i = 1; i < r->nlines; i++) { /* line 0 is the greeting */
		const char *l = mta_reply_line(r, i);
		size_t kl = strcspn(l, " ");
		for (size_t k = 0; k < sizeof(kws) / sizeof(kws[0]); k++) {
			if (strlen(kws[k].kw) != kl || strncasecmp(l, kws[k].kw, kl) != 0)
				continue;
			s->ext |= kws[k].bit;
			if (kws[k].bit == MTA_EXT_SIZE && l[kl] == ' ') {
				uint64_t v = 0;
				for (const char *p = l + kl + 1; is_digit(*p); p++) {
					if (v > (UINT64_MAX - 9) / 10) {
						v = 0; /* absurd: treat as no limit */
						break;
					}
					v = v * 10 + (uint64_t)(*p - '0');
				}
				s->ext_size = v;
			}
		}
	}
}

/* One complete reply. */
static void
on_reply(struct mta_session *s, const struct mta_reply *r)
{
	struct mta_diag d;
	int cls = r->code / 100;

	phase_next(s); /* a complete reply: the next wait is a new phase */
	mta_diag_from_reply(&d, r);
	if (s->state == MTA_S_QUIT) {
		enter_state(s, MTA_S_CLOSED);
		s->event = MTA_EV_CLOSED;
		return;
	}
	/* RFC 5321 3.8: 421 means the server is closing the channel. */
	if (r->code == 421) {
		session_fail(s, &d, false);
		return;
	}
	switch (s->state) {
	case MTA_S_GREETING:
		if (cls != 2) {
			session_fail(s, &d, true);
			return;
		}
		emit_simple(s, CMD_EHLO);
		enter_state(s, MTA_S_EHLO);
		return;
	case MTA_S_EHLO:
		s->exp_count = 0;
		if (cls == 2) {
			parse_ehlo(s, r);
			after_hello(s);
		} else if (cls == 5) {
			emit_simple(s, CMD_HELO); /* RFC 5321 3.2 fallback */
			enter_state(s, MTA_S_HELO);
		} else {
			session_fail(s, &d, true);
		}
		return;
	case MTA_S_HELO:
		s->exp_count = 0;
		if (cls != 2) {
			session_fail(s, &d, true);
			return;
		}
		s->ext = 0;
		s->ext_size = 0;
		after_hello(s);
		return;
	case MTA_S_STARTTLS:
		s->exp_count = 0;
		if (cls == 2) {
			enter_state(s, MTA_S_TLS_WAIT);
			s->event = MTA_EV_STARTTLS;
		} else if (s->cfg.tls == MTA_TLS_REQUIRED) {
			session_fail(s, &d, true);
		} else {
			txn_begin(s); /* opportunistic: carry on in plaintext */
		}
		return;
	case MTA_S_TXN:
	case MTA_S_DATA_END:
		break;
	default:
		/* A reply while writing the body, or in a state expecting none. */
		diag_local(&d, 421, "4.5.0", "unexpected reply from server");
		session_fail(s, &d, false);
		return;
	}

	size_t cap = sizeof(s->exp) / sizeof(s->exp[0]);
	if (s->exp_count == 0) {
		diag_local(&d, 421, "4.5.0", "unexpected reply from server");
		session_fail(s, &d, false);
		return;
	}
	enum cmd kind = (enum cmd)s->exp[s->exp_head].kind;
	size_t rcpt = s->exp[s->exp_head].rcpt;
	s->exp_head = (s->exp_head + 1) % cap;
	s->exp_count--;
	switch (kind) {
	case CMD_RSET:
		if (cls != 2)
			session_fail(s, &d, true);
		else
			s->rset_needed = false;
		break;
	case CMD_MAIL:
		on_mail(s, r, &d);
		break;
	case CMD_RCPT:
		on_rcpt(s, rcpt, r, &d);
		break;
	case CMD_DATA:
		on_data(s, r, &d);
		break;
	case CMD_DOT:
		on_dot(s, r, &d);
		break;
	default:
		diag_local(&d, 421, "4.5.0", "unexpected reply from server");
		session_fail(s, &d, false);
		return;
	}
	if (s->state == MTA_S_TXN)
		fill(s);
}

/* ------------------------------------------------------------ public API */

int
mta_session_init(struct mta_session *s, const struct mta_config *cfg, struct mta_txn *txn)
{
	if (cfg->helo_name == NULL || cfg->helo_name[0] == '\0' ||
	    strlen(cfg->helo_name) > MTA_ADDR_MAX || txn == NULL || txn->nrcpts > MTA_MAX_RCPTS)
		return -EINVAL;
	memset(s, 0, offsetof(struct mta_session, reply));
	s->cfg = *cfg;
	s->tls_active = cfg->tls_active;
	s->txn = txn;
	s->txn_open = true;
	for (size_t i = 0; i < txn->nrcpts; i++)
		s->in_txn[i] = txn->rcpts[i].state == MTA_RCPT_PENDING;
	txn->result = MTA_TXN_NEXT_HOST;
	enter_state(s, MTA_S_GREETING);
	return 0;
}

size_t
mta_session_feed(struct mta_session *s, const char *buf, size_t len)
{
	size_t used = 0;

	while (used < len && s->event == MTA_EV_NONE && s->state != MTA_S_CLOSED) {
		int n = mta_reply_parse(buf + used, len - used, &s->reply);
		if (n == -2)
			break;
		if (n < 0) {
			struct mta_diag d;
			diag_local(&d, 421, "4.5.0", "malformed reply from server");
			session_fail(s, &d, false);
			return len;
		}
		used += (size_t)n;
		on_reply(s, &s->reply);
		if (s->event == MTA_EV_STARTTLS && used < len) {
			/* Bytes after the 220 were sent in plaintext: an injection
			 * attempt (CVE-2011-0411).  Drop the connection. */
			struct mta_diag d;
			diag_local(&d, 421, "4.7.0", "plaintext after STARTTLS reply");
			session_fail(s, &d, false);
			return len;
		}
	}
	return used;
}

enum mta_event
mta_session_event(const struct mta_session *s)
{
	return s->event;
}

/* Body segment at cursor (phase, pos); returns false when the body is done. */
static bool
body_seg(const struct mta_session *s, int phase, size_t pos, struct mta_iov *v)
{
	const char *b = s->txn->body;
	size_t n = s->discard_body ? 0 : s->txn->body_len;

	switch (phase) {
	case B_STUFF:
		v->base = ".";
		v->len = 1;
		return true;
	case B_BODY: {
		/* Up to and including the next "\r\n" that precedes a '.' beyond
		 * pos.  The search starts 2 bytes back: a partial write may have
		 * stopped between that CRLF and its '.'. */
		size_t end = n, i = pos >= 2 ? pos - 2 : 0;
		while (i + 2 < n) {
			const char *cr = memchr(b + i, '\r', n - 2 - i);
			if (cr == NULL)
				break;
			size_t j = (size_t)(cr - b);
			if (b[j + 1] == '\n' && b[j + 2] == '.' && j + 2 > pos) {
				end = j + 2;
				break;
			}
			i = j + 1;
		}
		v->base = b + pos;
		v->len = end - pos;
		return true;
	}
	case B_TERM: {
		bool crlf = n == 0 || (n >= 2 && b[n - 2] == '\r' && b[n - 1] == '\n');
		static const char t1[] = ".\r\n", t2[] = "\r\n.\r\n";
		const char *t = crlf ? t1 : t2;
		size_t tl = crlf ? 3 : 5;
		v->base = t + pos;
		v->len = tl - pos;
		return true;
	}
	}
	return false;
}

/* Move the body cursor after consuming the whole segment v. */
static void
body_next(const struct mta_session *s, int *phase, size_t *pos, const struct mta_iov *v)
{
	size_t n = s->discard_body ? 0 : s->txn->body_len;

	switch (*phase) {
	case B_STUFF:
		*phase = B_BODY;
		return;
	case B_BODY:
		*pos += v->len;
		if (*pos >= n) {
			*phase = B_TERM;
			*pos = 0;
		} else {
			*phase = B_STUFF; /* the segment stopped before a leading '.' */
		}
		return;
	case B_TERM:
		*phase = B_DONE;
		*pos = 0;
		return;
	}
}

size_t
mta_session_output(const struct mta_session *s, struct mta_iov *iov, size_t max)
{
	size_t k = 0;

	if (max == 0)
		return 0;
	if (s->out_len > s->out_off) {
		iov[k].base = s->out + s->out_off;
		iov[k].len = s->out_len - s->out_off;
		k++;
	}
	if (s->state != MTA_S_BODY)
		return k;
	int phase = s->bphase;
	size_t pos = s->bpos;
	while (k < max && phase != B_DONE) {
		struct mta_iov v;
		if (phase == B_TERM && commit_gated(s))
			break; /* the end of data waits for mta_session_commit() */
		if (!body_seg(s, phase, pos, &v))
			break;
		body_next(s, &phase, &pos, &v);
		if (v.len == 0)
			continue;
		iov[k++] = v;
	}
	return k;
}

void
mta_session_output_done(struct mta_session *s, size_t n)
{
	size_t c = s->out_len - s->out_off;

	if (c > 0) {
		size_t take = n < c ? n : c;
		s->out_off += take;
		n -= take;
		if (s->out_off == s->out_len) {
			s->out_off = s->out_len = 0;
			if (s->state == MTA_S_TXN)
				fill(s); /* the rest of a long PIPELINING group */
		}
	}
	if (s->state == MTA_S_BODY && n > 0)
		phase_next(s); /* a body write went out: RFC 5321 4.5.3.2.5 per write */
	while (s->state == MTA_S_BODY) {
		struct mta_iov v;
		if (s->bphase == B_DONE || !body_seg(s, s->bphase, s->bpos, &v))
			break;
		if (s->bphase == B_TERM && commit_gated(s))
			break;
		if (v.len == 0) {
			body_next(s, &s->bphase, &s->bpos, &v);
			continue;
		}
		if (n == 0)
			break;
		if (n < v.len) {
			s->bpos += n; /* partial: B_STUFF has len 1, so B_BODY or B_TERM */
			return;
		}
		n -= v.len;
		if (s->bphase == B_TERM)
			s->bpos = 0;
		body_next(s, &s->bphase, &s->bpos, &v);
	}
	body_check_gate(s);
	if (s->state == MTA_S_BODY && s->bphase == B_DONE) {
		expect(s, CMD_DOT, 0);
		enter_state(s, MTA_S_DATA_END);
	}
}

void
mta_session_tls_done(struct mta_session *s, bool ok)
{
	struct mta_diag d;

	if (s->state != MTA_S_TLS_WAIT)
		return;
	s->event = MTA_EV_NONE;
	if (!ok) {
		diag_local(&d, 421, "4.7.5", "TLS handshake failed");
		session_fail(s, &d, false);
		return;
	}
	/* RFC 3207 4.2: forget what the server said before, EHLO again. */
	s->tls_active = true;
	s->ext = 0;
	s->ext_size = 0;
	emit_simple(s, CMD_EHLO);
	enter_state(s, MTA_S_EHLO);
}

void
mta_session_commit(struct mta_session *s, bool ok, const char *why)
{
	struct mta_diag d;

	if (s->event != MTA_EV_COMMIT)
		return;
	s->event = MTA_EV_NONE;
	if (ok) {
		s->committed = true;
		phase_next(s);
		return;
	}
	diag_local(&d, 421, "4.4.2", why ? why : "transaction abandoned before the end of data");
	txn_finish(s, FIN_NEXT_HOST, &d);
	s->close_reason = MTA_CLOSE_ABANDONED;
	s->diag = d;
	s->exp_count = 0;
	s->gen = GEN_DONE;
	enter_state(s, MTA_S_CLOSED);
	s->event = MTA_EV_CLOSED;
}

int
mta_session_next(struct mta_session *s, struct mta_txn *txn)
{
	if (s->state != MTA_S_READY || txn == NULL || txn->nrcpts > MTA_MAX_RCPTS)
		return -EINVAL;
	s->event = MTA_EV_NONE;
	s->txn = txn;
	txn_begin(s);
	return 0;
}

void
mta_session_quit(struct mta_session *s)
{
	if (s->state == MTA_S_CLOSED || s->state == MTA_S_QUIT)
		return;
	if (s->state == MTA_S_TLS_WAIT || s->state == MTA_S_BODY) {
		mta_session_abort(s, "session ended by the client");
		return;
	}
	struct mta_diag d;
	diag_local(&d, 421, "4.4.2", "session ended by the client");
	txn_finish(s, FIN_NEXT_HOST, &d);
	s->event = MTA_EV_NONE;
	s->exp_count = 0;
	s->gen = GEN_DONE;
	emit_simple(s, CMD_QUIT);
	enter_state(s, MTA_S_QUIT);
}

void
mta_session_abort(struct mta_session *s, const char *why)
{
	struct mta_diag d;

	if (s->state == MTA_S_CLOSED)
		return;
	if (s->state == MTA_S_QUIT) { /* the server closed after QUIT: fine */
		enter_state(s, MTA_S_CLOSED);
		s->event = MTA_EV_CLOSED;
		return;
	}
	diag_local(&d, 421, "4.4.2", why ? why : "connection lost");
	session_fail(s, &d, false);
}

unsigned
mta_session_timeout_ms(const struct mta_session *s)
{
	switch (s->state) {
	case MTA_S_GREETING:
		return MTA_TIMEOUT_GREETING;
	case MTA_S_BODY:
		return MTA_TIMEOUT_DATA_BLOCK;
	case MTA_S_DATA_END:
		return MTA_TIMEOUT_DATA_TERM;
	case MTA_S_TXN:
		if (s->exp_count == 0)
			return MTA_TIMEOUT_OTHER;
		switch (s->exp[s->exp_head].kind) {
		case CMD_MAIL:
			return MTA_TIMEOUT_MAIL;
		case CMD_RCPT:
			return MTA_TIMEOUT_RCPT;
		case CMD_DATA:
			return MTA_TIMEOUT_DATA_INIT;
		default:
			return MTA_TIMEOUT_OTHER;
		}
	case MTA_S_EHLO:
	case MTA_S_HELO:
	case MTA_S_STARTTLS:
	case MTA_S_QUIT:
		return MTA_TIMEOUT_OTHER;
	case MTA_S_TLS_WAIT:
		return MTA_TIMEOUT_TLS;
	default:
		return 0;
	}
}

/* ------------------------------------------------------------ deadlines */

void
mta_deadline_attempt(struct mta_deadline *dl, uint64_t now, uint64_t total_ms)
{
	dl->attempt_until = total_ms ? now + total_ms : 0;
}

void
mta_deadline_glue_phase(struct mta_deadline *dl, uint64_t now, uint64_t ms)
{
	dl->phase_until = ms ? now + ms : 0;
	dl->glue_phase = true;
}

/* Does the attempt's total bound the session's current phase?  Not the reply
 * to the end of data, nor what follows the work (see mta_session.h). */
static bool
attempt_bounds(const struct mta_session *s)
{
	if (s == NULL)
		return true;
	switch (s->state) {
	case MTA_S_DATA_END:
	case MTA_S_READY:
	case MTA_S_QUIT:
	case MTA_S_CLOSED:
		return false;
	default:
		return true;
	}
}

uint64_t
mta_deadline_update(struct mta_deadline *dl, const struct mta_session *s, uint64_t now)
{
	if (s != NULL && (dl->glue_phase || s->phase_seq != dl->phase_seq)) {
		unsigned ms = mta_session_timeout_ms(s);
		dl->phase_until = ms ? now + ms : 0;
		dl->phase_seq = s->phase_seq;
		dl->glue_phase = false;
	}
	uint64_t at = dl->phase_until;
	if (attempt_bounds(s) && dl->attempt_until != 0 && (at == 0 || dl->attempt_until < at))
		at = dl->attempt_until;
	return at;
}

enum mta_expiry
mta_deadline_expired(const struct mta_deadline *dl, const struct mta_session *s, uint64_t now)
{
	if (attempt_bounds(s) && dl->attempt_until != 0 && now >= dl->attempt_until)
		return MTA_DL_ATTEMPT;
	if (dl->phase_until != 0 && now >= dl->phase_until)
		return MTA_DL_PHASE;
	return MTA_DL_NONE;
}

const char *
mta_state_name(enum mta_state st)
{
	static const char *names[] = {"greeting", "ehlo", "helo",  "starttls",
				      "tls-wait", "txn",  "body",  "data-end",
				      "ready",	  "quit", "closed"};
	return (unsigned)st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}
