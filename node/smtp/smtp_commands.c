/*
 * smtp_commands.c: the SMTP session machine's commands (RFC 5321 4.1.1, 4.1.4): the command
 * table, one handler per verb with its preconditions and replies, ESMTP parameters (SIZE, BODY,
 * SMTPUTF8, DSN: RFC 1870, 6152, 6531, 3461) and AUTH (RFC 4954, PLAIN RFC 4616, LOGIN).
 * Part of the pure session machine: no I/O, no clock (smtp_session_int.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailbox.h"
#include "smtp_session.h"
#include "smtp_session_int.h"

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

/* <postmaster>, or postmaster@ our own hostname, any case (RFC 5321 4.5.1). */
static bool
is_postmaster(const struct smtp_session *s, const char *addr, int domain_off)
{
	if (domain_off < 0)
		return strcasecmp(addr, "postmaster") == 0;
	return domain_off == 11 && strncasecmp(addr, "postmaster@", 11) == 0 &&
	       strcasecmp(addr + domain_off, s->hostname) == 0;
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
	smtp__txn_reset(s);
	memcpy(s->helo, args, n + 1);
	s->helo_done = true;
	s->esmtp = esmtp;
	if (!esmtp) {
		smtp__reply(s, 250, NULL, "%s", s->hostname);
		smtp__enter_state(s, ST_HELO);
		return;
	}
	smtp__reply_more(s, 250, NULL, "%s", s->hostname);
	smtp__reply_more(s, 250, NULL, "PIPELINING");
	smtp__reply_more(s, 250, NULL, "SIZE %llu", (unsigned long long)s->max_size);
	smtp__reply_more(s, 250, NULL, "8BITMIME");
	smtp__reply_more(s, 250, NULL, "SMTPUTF8");
	smtp__reply_more(s, 250, NULL, "ENHANCEDSTATUSCODES");
	smtp__reply_more(s, 250, NULL, "CHUNKING");
	if (s->cfg->tls_available && !s->tls)
		smtp__reply_more(s, 250, NULL, "STARTTLS");
	if (s->cfg->auth_available && s->tls)
		smtp__reply_more(s, 250, NULL, "AUTH PLAIN LOGIN");
	smtp__reply(s, 250, NULL, "DSN");
	smtp__enter_state(s, ST_HELO);
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
	r = mailbox_parse_path(p, strlen(p), MAILBOX_PARSE_NULL_OK | MAILBOX_PARSE_UTF8, addr,
			     sizeof(addr), &dom, &used);
	if (r != MAILBOX_OK) {
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
			    !mailbox_xtext_valid(pr.val, pr.val_len, SMTP_ENVID_MAX)) {
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
	if (s->cfg->mail_check != NULL) {
		struct smtp_mail_verdict v;
		memset(&v, 0, sizeof(v));
		s->cfg->mail_check(s->client.check_arg, s->authenticated ? s->auth_user : NULL,
				   addr, &v);
		if (v.code != 0) {
			if (v.code < 400 || v.code > 599)
				v.code = 451; /* a hook bug must not become a 2xx */
			if (v.reason == SMTP_MAIL_OVER_QUOTA)
				COUNT(s, over_quota);
			else
				COUNT(s, sender_denied);
			v.text[sizeof(v.text) - 1] = '\0';
			smtp__reply(s, v.code, v.enh[0] ? v.enh : NULL, "%s", v.text);
			smtp__peer_error(s);
			return;
		}
	}
	smtp__txn_reset(s);
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
	smtp__reply(s, 250, "2.1.0", "Ok");
	smtp__enter_state(s, ST_MAIL);
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
	return mailbox_xtext_valid(semi + 1, rest, SMTP_ORCPT_MAX);
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
	r = mailbox_parse_path(p, strlen(p), MAILBOX_PARSE_POSTMASTER_OK | MAILBOX_PARSE_UTF8, addr,
			     sizeof(addr), &dom, &used);
	if (r != MAILBOX_OK || (p[used] != '\0' && p[used] != ' ')) {
		REJECT(s, bad_address, 501, "5.1.3", "Bad recipient address syntax");
		return;
	}
	p += used;
	bool postmaster = is_postmaster(s, addr, dom);
	if (postmaster && (s->cfg->postmaster == NULL || s->cfg->postmaster[0] == '\0')) {
		/* a recipient we could only bounce (no domain): refused, never queued */
		REJECT(s, no_postmaster, 550, "5.1.1", "<%s>: Recipient address rejected: no postmaster "
		       "address is configured here", addr);
		return;
	}
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
		smtp__reply(s, 452, "4.5.3", "Too many recipients");
		return;
	}
	if (!postmaster && !relay_allowed(s, addr, dom)) {
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
	/* RFC 5321 4.5.1: postmaster is accepted from anyone and goes where the operator says */
	char *a = strdup(postmaster ? s->cfg->postmaster : addr);
	char *o = orcpt != NULL ? strndup(orcpt, orcpt_len) : NULL;
	if (a == NULL || (orcpt != NULL && o == NULL)) {
		free(a);
		free(o);
		goto nomem;
	}
	s->rcpts[s->n_rcpts++] = (struct smtp_rcpt){.addr = a, .notify = notify, .orcpt = o};
	smtp__reply(s, 250, "2.1.5", "Ok");
	smtp__enter_state(s, ST_RCPT);
	return;
nomem:
	COUNT(s, nomem);
	smtp__reply(s, 451, "4.3.0", "Insufficient system resources");
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
	uint64_t want = s->size_declared > SMTP__BODY_INIT ? s->size_declared : SMTP__BODY_INIT;
	if (smtp_budget_room(s->cfg->budget, smtp__budget_trusted(s)) < want) {
		/* max_receive_memory: not the client's fault, it may try again later (RFC 3463
		 * 4.3.1); the transaction stays */
		COUNT(s, over_budget);
		smtp__reply(s, 452, "4.3.1", "Insufficient system storage, try again later");
		return;
	}
	smtp__body_reset(s);
	s->dstate = D_BOL;
	smtp__reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
	smtp__enter_state(s, ST_DATA);
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
	else if (n > 0 && n > smtp_budget_room(s->cfg->budget, smtp__budget_trusted(s)))
		s->chunk_reject = 452;
	else
		s->bdat_used = true;
	smtp__enter_state(s, ST_BDAT);
	if (n == 0)
		smtp__bdat_chunk_done(s);
	return;
bad:
	COUNT(s, bad_syntax);
	smtp__reply(s, 501, "5.5.4", "Syntax: BDAT count [LAST]");
	smtp__close_now(s);
}

static void
cmd_rset(struct smtp_session *s, const char *args)
{
	if (*args != '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: RSET");
		return;
	}
	smtp__txn_reset(s);
	smtp__reply(s, 250, "2.0.0", "Ok");
	smtp__enter_state(s, smtp__idle_state(s));
}

static void
cmd_noop(struct smtp_session *s, const char *args)
{
	smtp__reply(s, 250, "2.0.0", "Ok");
}

static void
cmd_quit(struct smtp_session *s, const char *args)
{
	smtp__reply(s, 221, "2.0.0", "Bye");
	smtp__close_now(s);
}

static void
cmd_vrfy(struct smtp_session *s, const char *args)
{
	if (*args == '\0') {
		REJECT(s, bad_syntax, 501, "5.5.4", "Syntax: VRFY address");
		return;
	}
	/* RFC 5321 3.5.3: 252 when we will not verify */
	smtp__reply(s, 252, "2.5.0",
		    "Cannot VRFY user, but will accept message and attempt delivery");
}

static void
cmd_help(struct smtp_session *s, const char *args)
{
	smtp__reply(
	    s, 214, "2.0.0",
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
	smtp__reply(s, 220, "2.0.0", "Ready to start TLS");
	s->ev = SMTP_EV_STARTTLS;
	smtp__enter_state(s, ST_TLS_WAIT);
}

/* ---- AUTH (RFC 4954, RFC 4616 PLAIN, LOGIN) ---- */

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

void
smtp__auth_fail(struct smtp_session *s, int code, const char *enh, const char *text)
{
	smtp__auth_wipe(s);
	smtp__enter_state(s, smtp__idle_state(s));
	REJECT(s, auth_failed, code, enh, "%s", text);
}

static void
auth_raise(struct smtp_session *s)
{
	s->ev = SMTP_EV_AUTH;
	smtp__enter_state(s, ST_AUTH_WAIT);
}

/* A PLAIN response: [authzid] NUL authcid NUL passwd (RFC 4616 sec 2). */
static void
auth_plain(struct smtp_session *s, const char *b64, size_t n)
{
	unsigned char dec[SMTP__AUTH_DECODED_MAX];
	long m = b64_decode(b64, n, dec, sizeof(dec));

	if (m < 0) {
		smtp__auth_fail(s, 501, "5.5.2", "Cannot decode response");
		goto out;
	}
	unsigned char *z1 = memchr(dec, '\0', (size_t)m);
	unsigned char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)m - (size_t)(z1 + 1 - dec)) : NULL;
	if (z2 == NULL || !auth_field_put(s, AUTH_OFF_AUTHZID, dec, (size_t)(z1 - dec), true) ||
	    !auth_field_put(s, AUTH_OFF_USER, z1 + 1, (size_t)(z2 - z1 - 1), false) ||
	    !auth_field_put(s, AUTH_OFF_PASS, z2 + 1, (size_t)(dec + m - z2 - 1), false)) {
		smtp__auth_fail(s, 501, "5.5.2", "Invalid PLAIN response");
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
		smtp__auth_fail(s, 501, "5.5.2", "Cannot decode response");
		goto out;
	}
	if (!auth_field_put(s, user ? AUTH_OFF_USER : AUTH_OFF_PASS, dec, (size_t)m, false)) {
		smtp__auth_fail(s, 501, "5.5.2", "Invalid LOGIN response");
		goto out;
	}
	if (user) {
		smtp__reply(s, 334, NULL, "UGFzc3dvcmQ6"); /* "Password:" */
		smtp__enter_state(s, ST_AUTH_PASS);
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
	smtp__auth_wipe(s);
	if (mlen == 5 && strncasecmp(args, "PLAIN", 5) == 0) {
		if (ir == NULL) {
			smtp__reply(s, 334, NULL, "%s", "");
			smtp__enter_state(s, ST_AUTH_PLAIN);
		} else {
			/* "=" is an empty initial response (RFC 4954 sec 4), invalid for PLAIN */
			auth_plain(s, ir, strcmp(ir, "=") == 0 ? 0 : strlen(ir));
		}
	} else if (mlen == 5 && strncasecmp(args, "LOGIN", 5) == 0) {
		if (ir == NULL) {
			smtp__reply(s, 334, NULL, "VXNlcm5hbWU6"); /* "Username:" */
			smtp__enter_state(s, ST_AUTH_USER);
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
		smtp__auth_fail(s, 501, "5.0.0", "Authentication cancelled");
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

bool
smtp__in_auth_exchange(const struct smtp_session *s)
{
	return s->state == ST_AUTH_PLAIN || s->state == ST_AUTH_USER || s->state == ST_AUTH_PASS;
}

/* One complete line, LF removed; line[n] is writable. */
void
smtp__process_line(struct smtp_session *s, char *line, size_t n)
{
	if (n > 0 && line[n - 1] == '\r')
		n--;
	line[n] = '\0';
	if (smtp__in_auth_exchange(s)) {
		s->cur_cmd = "AUTH";
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
				s->cur_cmd = smtp__cmds[i].verb;
				smtp__cmds[i].fn(s, args);
				return;
			}
		}
	}
	REJECT(s, bad_command, 500, "5.5.2", "Error: command not recognized");
}
