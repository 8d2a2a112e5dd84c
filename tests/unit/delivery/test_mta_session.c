/*
 * test_mta_session.c - the SMTP client machine driven by server byte scripts.
 * Each test plays the server: feeds replies, compares the exact command bytes
 * the machine writes, and checks per-recipient outcomes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mta_session.h"

static struct mta_config cfg_plain = {.helo_name = "relay.example", .tls = MTA_TLS_NONE};

/* Feed server bytes; all must be consumed unless an event stops the feed. */
static void
srv(struct mta_session *s, const char *bytes)
{
	size_t n = mta_session_feed(s, bytes, strlen(bytes));
	assert_int_equal(n, strlen(bytes));
}

/* Everything the client writes now, marked written. */
static char *
drain(struct mta_session *s)
{
	static char buf[1 << 20];
	size_t o = 0;
	for (;;) {
		struct mta_iov iov[8];
		size_t n = mta_session_output(s, iov, 8), tot = 0;
		if (n == 0)
			break;
		for (size_t i = 0; i < n; i++) {
			assert_true(o + iov[i].len < sizeof(buf));
			memcpy(buf + o, iov[i].base, iov[i].len);
			o += iov[i].len;
			tot += iov[i].len;
		}
		mta_session_output_done(s, tot);
	}
	buf[o] = '\0';
	return buf;
}

static void
cli(struct mta_session *s, const char *want)
{
	assert_string_equal(drain(s), want);
}

#define EHLO_PIPE                                                                                  \
	"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-DSN\r\n"         \
	"250 ENHANCEDSTATUSCODES\r\n"

static void
start(struct mta_session *s, const struct mta_config *cfg, struct mta_txn *t, const char *ehlo)
{
	assert_int_equal(mta_session_init(s, cfg, t), 0);
	assert_int_equal(mta_session_timeout_ms(s), MTA_TIMEOUT_GREETING);
	cli(s, "");
	srv(s, "220 mx.example ESMTP\r\n");
	cli(s, "EHLO relay.example\r\n");
	srv(s, ehlo);
}

static void
test_happy_pipelined(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[2] = {{.addr = "a@dest.example"}, {.addr = "b@dest.example"}};
	struct mta_txn t = {.mail_from = "s@src.example",
			    .body = "Subject: hi\r\n\r\n.dot\r\nbye\r\n",
			    .body_len = 26,
			    .rcpts = r,
			    .nrcpts = 2};
	start(&s, &cfg_plain, &t, EHLO_PIPE);
	assert_true(s.ext & MTA_EXT_PIPELINING);
	assert_int_equal(s.ext_size, 1000);
	cli(&s, "MAIL FROM:<s@src.example> SIZE=26\r\nRCPT TO:<a@dest.example>\r\n"
		"RCPT TO:<b@dest.example>\r\nDATA\r\n");
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_MAIL);
	srv(&s, "250 2.1.0 ok\r\n");
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_RCPT);
	srv(&s, "250 2.1.5 ok\r\n550 5.1.1 no such user\r\n");
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_DATA_INIT);
	srv(&s, "354 go\r\n");
	assert_int_equal(s.state, MTA_S_BODY);
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_DATA_BLOCK);
	cli(&s, "Subject: hi\r\n\r\n..dot\r\nbye\r\n.\r\n");
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_DATA_TERM);
	srv(&s, "250 2.0.0 queued as X\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(t.result, MTA_TXN_DONE);
	assert_int_equal(r[0].state, MTA_RCPT_DELIVERED);
	assert_string_equal(r[0].diag.text, "250 2.0.0 queued as X");
	assert_int_equal(r[1].state, MTA_RCPT_FAILED);
	assert_string_equal(r[1].diag.enh, "5.1.1");
	assert_string_equal(r[1].diag.text, "550 5.1.1 no such user");
	mta_session_quit(&s);
	cli(&s, "QUIT\r\n");
	srv(&s, "221 bye\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_OK);
}

/* Outcome table over a PIPELINING server: the group's replies (MAIL, RCPT a,
 * RCPT b, DATA), then, when DATA said 354, the reply to the final dot. */
struct outcome_case {
	const char *name;
	const char *group_replies;
	const char *body_expected; /* NULL: no body sent */
	const char *dot_reply;
	enum mta_txn_result want_result;
	enum mta_rcpt_state want[2];
	const char *want_diag0;
	enum mta_event want_event;
};

static const struct outcome_case outcome_cases[] = {
    {"mail 4xx: next host",
     "451 4.3.0 later\r\n503 no\r\n503 no\r\n503 no\r\n",
     NULL,
     NULL,
     MTA_TXN_NEXT_HOST,
     {MTA_RCPT_PENDING, MTA_RCPT_PENDING},
     "451 4.3.0 later",
     MTA_EV_TXN_DONE},
    {"mail 5xx: all fail",
     "553 5.1.8 bad sender\r\n503 no\r\n503 no\r\n503 no\r\n",
     NULL,
     NULL,
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_FAILED},
     "553 5.1.8 bad sender",
     MTA_EV_TXN_DONE},
    {"rcpt 4xx defers one",
     "250 ok\r\n250 ok\r\n450 4.2.0 greylisted\r\n354 go\r\n",
     "hello\r\n.\r\n",
     "250 ok\r\n",
     MTA_TXN_DONE,
     {MTA_RCPT_DELIVERED, MTA_RCPT_DEFERRED},
     "250 ok",
     MTA_EV_TXN_DONE},
    {"data 4xx: next host",
     "250 ok\r\n250 ok\r\n250 ok\r\n451 4.3.0 no\r\n",
     NULL,
     NULL,
     MTA_TXN_NEXT_HOST,
     {MTA_RCPT_PENDING, MTA_RCPT_PENDING},
     "451 4.3.0 no",
     MTA_EV_TXN_DONE},
    {"data 5xx: accepted fail",
     "250 ok\r\n250 ok\r\n550 5.1.1 x\r\n554 5.0.0 no\r\n",
     NULL,
     NULL,
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_FAILED},
     "554 5.0.0 no",
     MTA_EV_TXN_DONE},
    {"dot 4xx: next host",
     "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
     "hello\r\n.\r\n",
     "452 4.3.1 full\r\n",
     MTA_TXN_NEXT_HOST,
     {MTA_RCPT_PENDING, MTA_RCPT_PENDING},
     "452 4.3.1 full",
     MTA_EV_TXN_DONE},
    {"dot 5xx: fail",
     "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
     "hello\r\n.\r\n",
     "554 5.7.1 spam\r\n",
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_FAILED},
     "554 5.7.1 spam",
     MTA_EV_TXN_DONE},
    {"all rejected, DATA 354 anyway: empty body",
     "250 ok\r\n550 5.1.1 a\r\n550 5.1.1 b\r\n354 go\r\n",
     ".\r\n",
     "250 ok\r\n",
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_FAILED},
     "550 5.1.1 a",
     MTA_EV_TXN_DONE},
    {"all rejected, DATA 554",
     "250 ok\r\n550 5.1.1 a\r\n450 4.1.1 b\r\n554 5.5.1 none\r\n",
     NULL,
     NULL,
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_DEFERRED},
     "550 5.1.1 a",
     MTA_EV_TXN_DONE},
    {"421 on rcpt closes",
     "250 ok\r\n421 4.3.2 shutting down\r\n",
     NULL,
     NULL,
     MTA_TXN_NEXT_HOST,
     {MTA_RCPT_PENDING, MTA_RCPT_PENDING},
     "421 4.3.2 shutting down",
     MTA_EV_CLOSED},
    {"multi-line 5xx on rcpt",
     "250 ok\r\n550-5.1.1 no\r\n550 5.1.1 really\r\n250 ok\r\n354 go\r\n",
     "hello\r\n.\r\n",
     "250 ok\r\n",
     MTA_TXN_DONE,
     {MTA_RCPT_FAILED, MTA_RCPT_DELIVERED},
     "550 5.1.1 no 5.1.1 really",
     MTA_EV_TXN_DONE},
    {"garbage reply",
     "250 ok\r\nhello there\r\n",
     NULL,
     NULL,
     MTA_TXN_NEXT_HOST,
     {MTA_RCPT_PENDING, MTA_RCPT_PENDING},
     "421 4.5.0 malformed reply from server",
     MTA_EV_CLOSED},
};

static void
test_outcome_table(void **state)
{
	for (size_t i = 0; i < sizeof(outcome_cases) / sizeof(outcome_cases[0]); i++) {
		const struct outcome_case *c = &outcome_cases[i];
		struct mta_session s;
		struct mta_rcpt r[2] = {{.addr = "a@d.example"}, {.addr = "b@d.example"}};
		struct mta_txn t = {
		    .mail_from = "", .body = "hello", .body_len = 5, .rcpts = r, .nrcpts = 2};
		print_message("case: %s\n", c->name);
		start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
		cli(&s,
		    "MAIL FROM:<>\r\nRCPT TO:<a@d.example>\r\nRCPT TO:<b@d.example>\r\nDATA\r\n");
		srv(&s, c->group_replies);
		if (c->body_expected) {
			cli(&s, c->body_expected);
			srv(&s, c->dot_reply);
		}
		assert_int_equal(mta_session_event(&s), c->want_event);
		assert_int_equal(t.result, c->want_result);
		assert_int_equal(r[0].state, c->want[0]);
		assert_int_equal(r[1].state, c->want[1]);
		assert_string_equal(r[0].diag.text, c->want_diag0);
	}
}

static void
test_one_at_a_time_and_reuse(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[2] = {{.addr = "a@d"}, {.addr = "b@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x\r\n", .body_len = 3, .rcpts = r, .nrcpts = 2};
	start(&s, &cfg_plain, &t, "250 mx\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");
	srv(&s, "250 ok\r\n");
	cli(&s, "RCPT TO:<a@d>\r\n");
	srv(&s, "550 no\r\n");
	cli(&s, "RCPT TO:<b@d>\r\n");
	srv(&s, "551 no\r\n");
	/* nobody accepted: no DATA */
	cli(&s, "");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(r[0].state, MTA_RCPT_FAILED);
	assert_int_equal(r[1].state, MTA_RCPT_FAILED);
	assert_string_equal(r[1].diag.enh, "5.0.0"); /* derived from the code */

	/* same connection, next transaction: RSET first (MAIL was accepted) */
	struct mta_rcpt r2[1] = {{.addr = "c@d"}};
	struct mta_txn t2 = {
	    .mail_from = "s@x", .body = "y", .body_len = 1, .rcpts = r2, .nrcpts = 1};
	assert_int_equal(mta_session_next(&s, &t2), 0);
	assert_int_equal(mta_session_next(&s, &t2), -EINVAL);
	cli(&s, "RSET\r\n");
	srv(&s, "250 ok\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");
	srv(&s, "250 ok\r\n");
	cli(&s, "RCPT TO:<c@d>\r\n");
	srv(&s, "250 ok\r\n");
	cli(&s, "DATA\r\n");
	srv(&s, "354 go\r\n");
	cli(&s, "y\r\n.\r\n");
	srv(&s, "250 ok\r\n");
	assert_int_equal(r2[0].state, MTA_RCPT_DELIVERED);

	/* after a completed DATA no RSET is needed */
	struct mta_rcpt r3[1] = {{.addr = "e@d"}};
	struct mta_txn t3 = {
	    .mail_from = "s@x", .body = "z\r\n", .body_len = 3, .rcpts = r3, .nrcpts = 1};
	assert_int_equal(mta_session_next(&s, &t3), 0);
	cli(&s, "MAIL FROM:<s@x>\r\n");
	srv(&s, "452 4.3.1 busy\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(t3.result, MTA_TXN_NEXT_HOST);
	assert_int_equal(r3[0].state, MTA_RCPT_PENDING);
	assert_string_equal(r3[0].diag.text, "452 4.3.1 busy");
	mta_session_quit(&s);
	cli(&s, "QUIT\r\n");
	mta_session_abort(&s, "eof"); /* server closed without 221: still fine */
	assert_int_equal(s.close_reason, MTA_CLOSE_OK);
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
}

static void
test_greeting_and_helo(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = r, .nrcpts = 1};

	/* 554 greeting: QUIT, try the next host */
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t), 0);
	srv(&s, "554 5.3.2 go away\r\n");
	cli(&s, "QUIT\r\n");
	srv(&s, "221 bye\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);
	assert_string_equal(s.diag.text, "554 5.3.2 go away");
	assert_int_equal(t.result, MTA_TXN_NEXT_HOST);
	assert_int_equal(r[0].state, MTA_RCPT_PENDING);

	/* 421 greeting: closed at once */
	r[0].state = MTA_RCPT_PENDING;
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t), 0);
	srv(&s, "421-busy\r\n421 busy\r\n");
	cli(&s, "");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);

	/* EHLO 502 -> HELO, no extensions: one at a time */
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t), 0);
	srv(&s, "220 old\r\n");
	cli(&s, "EHLO relay.example\r\n");
	srv(&s, "502 what\r\n");
	cli(&s, "HELO relay.example\r\n");
	srv(&s, "250 hi\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");
	assert_int_equal(s.ext, 0);

	/* EHLO 4xx: next host */
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t), 0);
	srv(&s, "220 x\r\n");
	cli(&s, "EHLO relay.example\r\n");
	srv(&s, "454 later\r\n");
	cli(&s, "QUIT\r\n");
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);

	/* replies in pieces */
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t), 0);
	assert_int_equal(mta_session_feed(&s, "220 x", 5), 0);
	assert_int_equal(mta_session_feed(&s, "220 x\r", 6), 0);
	assert_int_equal(mta_session_feed(&s, "220 x\r\n250", 10), 7);
	cli(&s, "EHLO relay.example\r\n");

	/* bad config */
	struct mta_config bad = {.helo_name = ""};
	assert_int_equal(mta_session_init(&s, &bad, &t), -EINVAL);
}

static void
test_starttls(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = r, .nrcpts = 1};
	struct mta_config opp = {.helo_name = "relay.example", .tls = MTA_TLS_OPPORTUNISTIC};
	struct mta_config req = {.helo_name = "relay.example", .tls = MTA_TLS_REQUIRED};

	start(&s, &opp, &t, "250-mx\r\n250-STARTTLS\r\n250 SIZE 10\r\n");
	cli(&s, "STARTTLS\r\n");
	srv(&s, "220 2.0.0 go ahead\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_STARTTLS);
	assert_int_equal(mta_session_feed(&s, "250 x\r\n", 7), 0); /* nothing while waiting */
	mta_session_tls_done(&s, true);
	assert_true(s.tls_active);
	assert_int_equal(s.ext, 0); /* forgotten, RFC 3207 4.2 */
	cli(&s, "EHLO relay.example\r\n");
	srv(&s, "250-mx\r\n250 PIPELINING\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\nRCPT TO:<a@d>\r\nDATA\r\n");

	/* handshake failure: next host */
	start(&s, &opp, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "STARTTLS\r\n");
	srv(&s, "220 go\r\n");
	mta_session_tls_done(&s, false);
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_string_equal(s.diag.enh, "4.7.5");

	/* plaintext injected after the 220: dropped */
	start(&s, &opp, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "STARTTLS\r\n");
	const char *inj = "220 go\r\n250 injected\r\n";
	assert_int_equal(mta_session_feed(&s, inj, strlen(inj)), strlen(inj));
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);

	/* refused, opportunistic: carry on in plaintext */
	start(&s, &opp, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "STARTTLS\r\n");
	srv(&s, "454 4.7.0 not now\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");

	/* refused, required: next host */
	start(&s, &req, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "STARTTLS\r\n");
	srv(&s, "454 4.7.0 not now\r\n");
	cli(&s, "QUIT\r\n");
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);

	/* required, not offered: synthesized 4.7.4, QUIT */
	start(&s, &req, &t, "250-mx\r\n250 PIPELINING\r\n");
	cli(&s, "QUIT\r\n");
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);
	assert_string_equal(s.diag.enh, "4.7.4");
	assert_true(s.diag.local);
	assert_int_equal(r[0].state, MTA_RCPT_PENDING);
	assert_string_equal(r[0].diag.enh, "4.7.4");

	/* policy none: STARTTLS offered but never used */
	start(&s, &cfg_plain, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");
	/* already on TLS (implicit): required is satisfied */
	struct mta_config impl = {
	    .helo_name = "relay.example", .tls = MTA_TLS_REQUIRED, .tls_active = true};
	start(&s, &impl, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\n");
}

static void
test_params_size_utf8(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[2] = {
	    {.addr = "a@d",
	     .notify = MTA_NOTIFY_SUCCESS | MTA_NOTIFY_FAILURE,
	     .orcpt = "rfc822;a+b=c@d e"},
	    {.addr = "b@d", .notify = MTA_NOTIFY_NEVER},
	};
	struct mta_txn t = {.mail_from = "s@x",
			    .ret = MTA_RET_HDRS,
			    .envid = "Q+1=x",
			    .body = "caf\xc3\xa9\r\n",
			    .body_len = 7,
			    .rcpts = r,
			    .nrcpts = 2};
	t.body_8bit = mta_body_is_8bit(t.body, t.body_len);
	t.smtputf8 = mta_txn_needs_smtputf8(&t);
	assert_true(t.body_8bit);
	assert_false(t.smtputf8);

	start(&s, &cfg_plain, &t, EHLO_PIPE);
	cli(&s, "MAIL FROM:<s@x> SIZE=7 BODY=8BITMIME RET=HDRS ENVID=Q+2B1+3Dx\r\n"
		"RCPT TO:<a@d> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb+3Dc@d+20e\r\n"
		"RCPT TO:<b@d> NOTIFY=NEVER\r\nDATA\r\n");

	/* no DSN, no 8BITMIME offered: no parameters, 8-bit sent anyway (noted) */
	r[0].state = r[1].state = MTA_RCPT_PENDING;
	start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\nRCPT TO:<a@d>\r\nRCPT TO:<b@d>\r\nDATA\r\n");
	assert_true(s.body_8bit_unsupported);

	/* SIZE: message larger than the server's limit fails 5.3.4, nothing sent */
	char big[2000];
	memset(big, 'a', sizeof(big));
	t.body = big;
	t.body_len = sizeof(big);
	t.body_8bit = false;
	start(&s, &cfg_plain, &t, EHLO_PIPE);
	cli(&s, "");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(r[0].state, MTA_RCPT_FAILED);
	assert_string_equal(r[0].diag.enh, "5.3.4");
	assert_true(r[0].diag.local);

	/* SMTPUTF8 needed, not offered: 5.6.7; offered: parameter added */
	struct mta_rcpt u[1] = {{.addr = "j\xc3\xb8rn@d"}};
	struct mta_txn tu = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = u, .nrcpts = 1};
	tu.smtputf8 = mta_txn_needs_smtputf8(&tu);
	assert_true(tu.smtputf8);
	start(&s, &cfg_plain, &tu, EHLO_PIPE);
	assert_int_equal(u[0].state, MTA_RCPT_FAILED);
	assert_string_equal(u[0].diag.enh, "5.6.7");
	u[0].state = MTA_RCPT_PENDING;
	start(&s, &cfg_plain, &tu, "250-mx\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n");
	cli(&s, "MAIL FROM:<s@x> SMTPUTF8\r\nRCPT TO:<j\xc3\xb8rn@d>\r\nDATA\r\n");
}

static void
test_bad_addresses_and_skips(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[3] = {
	    {.addr = "a@d\r\nRSET"},
	    {.addr = "done@d", .state = MTA_RCPT_DELIVERED},
	    {.addr = "ok@d"},
	};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = r, .nrcpts = 3};
	start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
	cli(&s, "MAIL FROM:<s@x>\r\nRCPT TO:<ok@d>\r\nDATA\r\n");
	assert_int_equal(r[0].state, MTA_RCPT_FAILED);
	assert_string_equal(r[0].diag.enh, "5.1.3");
	assert_int_equal(r[1].state, MTA_RCPT_DELIVERED);

	struct mta_rcpt r2[1] = {{.addr = "ok@d"}};
	struct mta_txn t2 = {
	    .mail_from = "s<@x", .body = "x", .body_len = 1, .rcpts = r2, .nrcpts = 1};
	start(&s, &cfg_plain, &t2, "250 mx\r\n");
	assert_int_equal(r2[0].state, MTA_RCPT_FAILED);
	assert_string_equal(r2[0].diag.enh, "5.1.7");

	struct mta_rcpt many[MTA_MAX_RCPTS + 1];
	memset(many, 0, sizeof(many));
	struct mta_txn t3 = {.mail_from = "", .rcpts = many, .nrcpts = MTA_MAX_RCPTS + 1};
	assert_int_equal(mta_session_init(&s, &cfg_plain, &t3), -EINVAL);
}

/* A 100-recipient PIPELINING group with long addresses (the longest the address grammar
 * takes: a 64-byte local part and a 180-byte domain) overflows the output buffer: it goes
 * out in pieces, all commands in order. */
static void
test_big_group(void **state)
{
	static char addrs[MTA_MAX_RCPTS][MTA_ADDR_MAX + 1];
	static struct mta_rcpt r[MTA_MAX_RCPTS];
	static struct mta_session s;
	for (size_t i = 0; i < MTA_MAX_RCPTS; i++) {
		char dom[181];
		snprintf(dom, sizeof(dom), "%063d.%063d.%050d.d", 0, 0, 0);
		memset(addrs[i], 'x', 61);
		snprintf(addrs[i] + 61, sizeof(addrs[i]) - 61, "%03zu@%s", i, dom);
		memset(&r[i], 0, sizeof(r[i]));
		r[i].addr = addrs[i];
	}
	struct mta_txn t = {.mail_from = "s@x",
			    .body = "b\r\n",
			    .body_len = 3,
			    .rcpts = r,
			    .nrcpts = MTA_MAX_RCPTS};
	start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
	char *out = drain(&s);
	size_t n = 0;
	for (char *p = out; (p = strstr(p, "RCPT TO:<")) != NULL; p++)
		n++;
	assert_int_equal(n, MTA_MAX_RCPTS);
	assert_non_null(strstr(out, "099@0"));
	assert_non_null(strstr(out, ".d>\r\nDATA\r\n"));
	srv(&s, "250 ok\r\n");
	for (size_t i = 0; i < MTA_MAX_RCPTS; i++)
		srv(&s, i % 2 ? "250 ok\r\n" : "550 no\r\n");
	srv(&s, "354 go\r\n");
	cli(&s, "b\r\n.\r\n");
	srv(&s, "250 ok\r\n");
	for (size_t i = 0; i < MTA_MAX_RCPTS; i++)
		assert_int_equal(r[i].state, i % 2 ? MTA_RCPT_DELIVERED : MTA_RCPT_FAILED);
}

struct body_case {
	const char *in;
	const char *out;
};

static const struct body_case body_cases[] = {
    {"", ".\r\n"},
    {"a", "a\r\n.\r\n"},
    {"a\r\n", "a\r\n.\r\n"},
    {".", "..\r\n.\r\n"},
    {".\r\n", "..\r\n.\r\n"},
    {"a\r\n.b\r\n..c\r\n", "a\r\n..b\r\n...c\r\n.\r\n"},
    {"x\r\n.", "x\r\n..\r\n.\r\n"},
    {"\r\n.\r\n.\r\n", "\r\n..\r\n..\r\n.\r\n"},
    {"a.b\r\n \r\n.", "a.b\r\n \r\n..\r\n.\r\n"},
    {"bare\n.lf\r", "bare\n.lf\r\r\n.\r\n"},
    {"x\r", "x\r\r\n.\r\n"},
};

/* Dot-stuffing, checked with whole writes and with one-byte writes. */
static void
test_body_stuffing(void **state)
{
	for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
		for (int bytewise = 0; bytewise < 2; bytewise++) {
			struct mta_session s;
			struct mta_rcpt r[1] = {{.addr = "a@d"}};
			struct mta_txn t = {.mail_from = "",
					    .body = body_cases[i].in,
					    .body_len = strlen(body_cases[i].in),
					    .rcpts = r,
					    .nrcpts = 1};
			start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
			drain(&s);
			srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
			char got[256];
			size_t o = 0;
			if (!bytewise) {
				strcpy(got, drain(&s));
			} else {
				for (;;) {
					struct mta_iov iov[4];
					if (mta_session_output(&s, iov, 4) == 0)
						break;
					got[o++] = iov[0].base[0];
					mta_session_output_done(&s, 1);
				}
				got[o] = '\0';
			}
			assert_string_equal(got, body_cases[i].out);
			assert_int_equal(s.state, MTA_S_DATA_END);
		}
	}
}

struct parse_case {
	const char *in;
	int want_rc; /* consumed, -1 or -2 */
	int code;
	const char *enh;
	size_t nlines;
	const char *line0;
};

static const struct parse_case parse_cases[] = {
    {"250 ok\r\n", 8, 250, "", 1, "ok"},
    {"250 ok\n", 7, 250, "", 1, "ok"},
    {"250\r\n", 5, 250, "", 1, ""},
    {"250-a\r\n250 b\r\nextra", 14, 250, "", 2, "a"},
    {"550 5.1.1 no such user\r\n", 24, 550, "5.1.1", 1, "no such user"},
    {"550 4.1.1 class mismatch\r\n", 26, 550, "", 1, "4.1.1 class mismatch"},
    {"250 2.0.0\r\n", 11, 250, "2.0.0", 1, ""},
    {"452 4.5.3x not enh\r\n", 20, 452, "", 1, "4.5.3x not enh"},
    {"250 \x01\xff\r\n", 8, 250, "", 1, "??"},
    {"250-a\r\n", -2, 0, NULL, 0, NULL},
    {"25", -2, 0, NULL, 0, NULL},
    {"", -2, 0, NULL, 0, NULL},
    {"250-a\r\n251 b\r\n", -1, 0, NULL, 0, NULL},
    {"2x0 a\r\n", -1, 0, NULL, 0, NULL},
    {"150 a\r\n", -1, 0, NULL, 0, NULL},
    {"650 a\r\n", -1, 0, NULL, 0, NULL},
    {"250_a\r\n", -1, 0, NULL, 0, NULL},
    {"\r\n", -1, 0, NULL, 0, NULL},
};

static void
test_reply_parse(void **state)
{
	for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++) {
		const struct parse_case *c = &parse_cases[i];
		static struct mta_reply r;
		int rc = mta_reply_parse(c->in, strlen(c->in), &r);
		print_message("parse %zu rc=%d\n", i, rc);
		assert_int_equal(rc, c->want_rc);
		if (rc > 0) {
			assert_int_equal(r.code, c->code);
			assert_string_equal(r.enh, c->enh);
			assert_int_equal(r.nlines, c->nlines);
			assert_string_equal(mta_reply_line(&r, 0), c->line0);
		}
	}
	/* bounds: a long line, too many lines, an endless partial reply */
	static char buf[MTA_REPLY_MAX * 2];
	static struct mta_reply r;
	memset(buf, 'a', sizeof(buf));
	memcpy(buf, "250 ", 4);
	assert_int_equal(mta_reply_parse(buf, MTA_REPLY_LINE_MAX + 10, &r), -1);
	assert_int_equal(mta_reply_parse(buf, 100, &r), -2);
	size_t o = 0;
	for (int i = 0; i < MTA_REPLY_MAX_LINES + 1; i++)
		o += (size_t)sprintf(buf + o, "250-x\r\n");
	o += (size_t)sprintf(buf + o, "250 x\r\n");
	assert_int_equal(mta_reply_parse(buf, o, &r), -1);
	o = 0;
	while (o < MTA_REPLY_MAX + 100)
		o += (size_t)sprintf(buf + o, "250-xxxxxxxxxxxxxxxxxxxxx\r\n");
	assert_int_equal(mta_reply_parse(buf, o, &r), -1);
}

static void
test_abort_and_timeouts(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = r, .nrcpts = 1};
	start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
	drain(&s);
	assert_int_equal(s.state, MTA_S_DATA_END);
	mta_session_abort(&s, "timeout");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(r[0].state, MTA_RCPT_PENDING);
	assert_string_equal(r[0].diag.text, "421 4.4.2 timeout");
	assert_int_equal(t.result, MTA_TXN_NEXT_HOST);
	assert_int_equal(mta_session_timeout_ms(&s), 0);
	assert_string_equal(mta_state_name(s.state), "closed");

	/* a reply while the body is being written: closed, next host */
	r[0].state = MTA_RCPT_PENDING;
	start(&s, &cfg_plain, &t, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
	srv(&s, "554 too slow\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(r[0].state, MTA_RCPT_PENDING);
}

/* The commit gate (cfg.commit_gate): the machine stops before the end of data
 * and lets the glue decide (the delivery lease, cluster/ownership.h). */
static struct mta_config cfg_gate = {
    .helo_name = "relay.example", .tls = MTA_TLS_NONE, .commit_gate = true};

static void
test_commit_gate_ok(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {.mail_from = "s@x",
			    .body = "Subject: x\r\n\r\n.dot",
			    .body_len = 18,
			    .rcpts = r,
			    .nrcpts = 1};
	start(&s, &cfg_gate, &t, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
	/* the whole body, dot-stuffed, but not its end (no CRLF "." CRLF) */
	cli(&s, "Subject: x\r\n\r\n..dot");
	assert_int_equal(mta_session_event(&s), MTA_EV_COMMIT);
	assert_int_equal(s.state, MTA_S_BODY);
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_DATA_BLOCK);
	cli(&s, ""); /* nothing until the glue says so */
	/* server bytes wait while the event is pending */
	assert_int_equal(mta_session_feed(&s, "250 early\r\n", 11), 0);
	unsigned seq = s.phase_seq;
	mta_session_commit(&s, true, NULL);
	assert_int_equal(mta_session_event(&s), MTA_EV_NONE);
	assert_true(s.phase_seq != seq);
	cli(&s, "\r\n.\r\n");
	assert_int_equal(s.state, MTA_S_DATA_END);
	srv(&s, "250 2.0.0 ok\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(r[0].state, MTA_RCPT_DELIVERED);

	/* a second transaction on the connection is gated again; an empty body asks at once */
	struct mta_rcpt r2[1] = {{.addr = "b@d"}};
	struct mta_txn t2 = {
	    .mail_from = "s@x", .body = "", .body_len = 0, .rcpts = r2, .nrcpts = 1};
	assert_int_equal(mta_session_next(&s, &t2), 0);
	cli(&s, "MAIL FROM:<s@x>\r\nRCPT TO:<b@d>\r\nDATA\r\n");
	srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_COMMIT);
	cli(&s, "");
	mta_session_commit(&s, true, NULL);
	cli(&s, ".\r\n");
	srv(&s, "250 ok\r\n");
	assert_int_equal(r2[0].state, MTA_RCPT_DELIVERED);

	/* written one byte at a time: the event comes only after the last body byte */
	for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
		struct mta_rcpt r3[1] = {{.addr = "a@d"}};
		struct mta_txn t3 = {.mail_from = "",
				     .body = body_cases[i].in,
				     .body_len = strlen(body_cases[i].in),
				     .rcpts = r3,
				     .nrcpts = 1};
		start(&s, &cfg_gate, &t3, "250-mx\r\n250 PIPELINING\r\n");
		drain(&s);
		srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
		char got[256];
		size_t o = 0;
		for (;;) {
			struct mta_iov iov[4];
			if (mta_session_event(&s) == MTA_EV_COMMIT) {
				mta_session_commit(&s, true, NULL);
				got[o++] = '|'; /* where the gate opened */
				continue;
			}
			if (mta_session_output(&s, iov, 4) == 0)
				break;
			got[o++] = iov[0].base[0];
			mta_session_output_done(&s, 1);
		}
		got[o] = '\0';
		/* the gate opens exactly where the end of data starts */
		const char *want = body_cases[i].out;
		size_t wl = strlen(want), tl = strlen(body_cases[i].in) == 0 ? 3 : 0;
		if (tl == 0) {
			const char *in = body_cases[i].in;
			size_t n = strlen(in);
			tl = n >= 2 && in[n - 2] == '\r' && in[n - 1] == '\n' ? 3 : 5;
		}
		char exp[256];
		snprintf(exp, sizeof(exp), "%.*s|%s", (int)(wl - tl), want, want + wl - tl);
		assert_string_equal(got, exp);
		assert_int_equal(s.state, MTA_S_DATA_END);
	}
}

static void
test_commit_gate_refused(void **state)
{
	struct mta_session s;
	struct mta_rcpt r[3] = {{.addr = "a@d"}, {.addr = "b@d"}, {.addr = "c@d"}};
	struct mta_txn t = {.mail_from = "s@x",
			    .body = "Subject: x\r\n\r\nbody\r\n",
			    .body_len = 20,
			    .rcpts = r,
			    .nrcpts = 3};
	start(&s, &cfg_gate, &t, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n450 4.2.0 later\r\n354 go\r\n");
	cli(&s, "Subject: x\r\n\r\nbody\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_COMMIT);
	mta_session_commit(&s, false, "lease lapsed");
	/* closed at once: no ".", no QUIT (inside DATA it would be body text) */
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.state, MTA_S_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_ABANDONED);
	cli(&s, "");
	assert_int_equal(r[0].state, MTA_RCPT_PENDING);
	assert_string_equal(r[0].diag.text, "421 4.4.2 lease lapsed");
	/* the server's own answers stand */
	assert_int_equal(r[1].state, MTA_RCPT_FAILED);
	assert_int_equal(r[2].state, MTA_RCPT_DEFERRED);
	assert_int_equal(t.result, MTA_TXN_NEXT_HOST);
	/* nothing happens on a late commit */
	mta_session_commit(&s, true, NULL);
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	cli(&s, "");

	/* a discarded body (nobody accepted, DATA said 354 anyway) is ended without asking */
	struct mta_rcpt r2[1] = {{.addr = "a@d"}};
	struct mta_txn t2 = {
	    .mail_from = "s@x", .body = "x\r\n", .body_len = 3, .rcpts = r2, .nrcpts = 1};
	start(&s, &cfg_gate, &t2, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n550 no\r\n354 go\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_NONE);
	cli(&s, ".\r\n");
	srv(&s, "250 ok\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	assert_int_equal(r2[0].state, MTA_RCPT_FAILED);

	/* the glue's timer or a lost connection while the gate waits: next host, no "." */
	struct mta_rcpt r3[1] = {{.addr = "a@d"}};
	struct mta_txn t3 = {
	    .mail_from = "s@x", .body = "x\r\n", .body_len = 3, .rcpts = r3, .nrcpts = 1};
	start(&s, &cfg_gate, &t3, "250-mx\r\n250 PIPELINING\r\n");
	drain(&s);
	srv(&s, "250 ok\r\n250 ok\r\n354 go\r\n");
	cli(&s, "x\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_COMMIT);
	mta_session_abort(&s, "timeout (body)");
	assert_int_equal(mta_session_event(&s), MTA_EV_CLOSED);
	assert_int_equal(s.close_reason, MTA_CLOSE_NEXT_HOST);
	assert_int_equal(r3[0].state, MTA_RCPT_PENDING);
	cli(&s, "");
}

/* Deadlines under simulated time (ms on a monotonic clock). */
static void
test_deadlines(void **state)
{
	struct mta_session s;
	struct mta_deadline dl;
	memset(&dl, 0, sizeof(dl));
	static char body[200000];
	memset(body, 'a', sizeof(body));
	memcpy(body + sizeof(body) - 2, "\r\n", 2);
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = body, .body_len = sizeof(body), .rcpts = r, .nrcpts = 1};
	const uint64_t total = 600000;

	/* connect: the glue's phase */
	mta_deadline_attempt(&dl, 1000, total);
	mta_deadline_glue_phase(&dl, 1000, 30000);
	assert_int_equal(mta_deadline_update(&dl, NULL, 1000), 31000);
	assert_int_equal(mta_deadline_expired(&dl, NULL, 30999), MTA_DL_NONE);
	assert_int_equal(mta_deadline_expired(&dl, NULL, 31000), MTA_DL_PHASE);

	/* connected at 2000: the greeting has 5 minutes from then */
	assert_int_equal(mta_session_init(&s, &cfg_gate, &t), 0);
	assert_int_equal(mta_deadline_update(&dl, &s, 2000), 2000 + MTA_TIMEOUT_GREETING);
	/* a server trickling its greeting a byte at a time extends nothing */
	const char *greet = "220 mx.example ESMTP\r\n";
	for (size_t i = 1; i < strlen(greet); i++) {
		uint64_t now = 2000 + i * 10000;
		assert_int_equal(mta_session_feed(&s, greet, i), 0);
		assert_int_equal(mta_deadline_update(&dl, &s, now), 2000 + MTA_TIMEOUT_GREETING);
		assert_int_equal(mta_deadline_expired(&dl, &s, now), MTA_DL_NONE);
	}
	assert_int_equal(mta_deadline_expired(&dl, &s, 2000 + MTA_TIMEOUT_GREETING), MTA_DL_PHASE);
	/* the complete reply at 250000 starts the next phase (EHLO) */
	srv(&s, greet);
	assert_int_equal(mta_deadline_update(&dl, &s, 250000), 250000 + MTA_TIMEOUT_OTHER);
	cli(&s, "EHLO relay.example\r\n");
	/* a partial EHLO reply at 400000: the phase stays; the attempt (601000) comes first */
	assert_int_equal(mta_session_feed(&s, "250-mx\r\n", 8), 0);
	assert_int_equal(mta_deadline_update(&dl, &s, 400000), 250000 + MTA_TIMEOUT_OTHER);
	srv(&s, "250-mx\r\n250 PIPELINING\r\n");
	/* MAIL's phase from 500000 would end at 800000: the attempt's 601000 bounds it */
	assert_int_equal(mta_deadline_update(&dl, &s, 500000), 1000 + total);
	cli(&s, "MAIL FROM:<s@x>\r\nRCPT TO:<a@d>\r\nDATA\r\n");
	srv(&s, "250 ok\r\n250 ok\r\n");
	assert_int_equal(mta_deadline_update(&dl, &s, 510000), 1000 + total); /* DATA: 2 min */
	srv(&s, "354 go\r\n");
	/* each body write starts a phase of MTA_TIMEOUT_DATA_BLOCK */
	uint64_t now = 520000;
	assert_int_equal(mta_deadline_update(&dl, &s, now), 1000 + total);
	struct mta_iov iov[4];
	assert_true(mta_session_output(&s, iov, 4) > 0);
	mta_session_output_done(&s, 65536);
	now = 530000;
	/* a fresh phase, still bounded by the attempt */
	assert_int_equal(mta_deadline_update(&dl, &s, now), 1000 + total);
	assert_int_equal(dl.phase_until, now + MTA_TIMEOUT_DATA_BLOCK);
	assert_int_equal(mta_deadline_expired(&dl, &s, 1000 + total), MTA_DL_ATTEMPT);
	/* rest of the body; the gate asks; the "." goes at 590000 */
	drain(&s);
	assert_int_equal(mta_session_event(&s), MTA_EV_COMMIT);
	mta_session_commit(&s, true, NULL);
	cli(&s, ".\r\n");
	assert_int_equal(s.state, MTA_S_DATA_END);
	/* the reply to the end of data keeps its 10 minutes past the attempt's bound */
	assert_int_equal(mta_deadline_update(&dl, &s, 590000), 590000 + MTA_TIMEOUT_DATA_TERM);
	assert_int_equal(mta_deadline_expired(&dl, &s, 1000 + total + 1), MTA_DL_NONE);
	assert_int_equal(mta_deadline_expired(&dl, &s, 590000 + MTA_TIMEOUT_DATA_TERM),
			 MTA_DL_PHASE);
	srv(&s, "250 ok\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_TXN_DONE);
	/* READY: nothing of the session's bounds the glue */
	assert_int_equal(mta_deadline_update(&dl, &s, 700000), 0);
	/* QUIT: its own phase, not the old attempt's */
	mta_session_quit(&s);
	assert_int_equal(mta_deadline_update(&dl, &s, 700000), 700000 + MTA_TIMEOUT_OTHER);
	/* no total: the phase alone */
	mta_deadline_attempt(&dl, 0, 0);
	assert_int_equal(dl.attempt_until, 0);
}

/* STARTTLS: the handshake is a phase of its own (it used to have none). */
static void
test_tls_wait_deadline(void **state)
{
	struct mta_session s;
	struct mta_deadline dl;
	memset(&dl, 0, sizeof(dl));
	struct mta_config cfg = {.helo_name = "relay.example", .tls = MTA_TLS_OPPORTUNISTIC};
	struct mta_rcpt r[1] = {{.addr = "a@d"}};
	struct mta_txn t = {
	    .mail_from = "s@x", .body = "x", .body_len = 1, .rcpts = r, .nrcpts = 1};
	start(&s, &cfg, &t, "250-mx\r\n250 STARTTLS\r\n");
	cli(&s, "STARTTLS\r\n");
	srv(&s, "220 go ahead\r\n");
	assert_int_equal(mta_session_event(&s), MTA_EV_STARTTLS);
	assert_int_equal(mta_session_timeout_ms(&s), MTA_TIMEOUT_TLS);
	mta_deadline_attempt(&dl, 100, 0);
	assert_int_equal(mta_deadline_update(&dl, &s, 100), 100 + MTA_TIMEOUT_TLS);
	/* handshake bytes go past the machine: the deadline stays */
	assert_int_equal(mta_deadline_update(&dl, &s, 5000), 100 + MTA_TIMEOUT_TLS);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_happy_pipelined),
	    cmocka_unit_test(test_outcome_table),
	    cmocka_unit_test(test_one_at_a_time_and_reuse),
	    cmocka_unit_test(test_greeting_and_helo),
	    cmocka_unit_test(test_starttls),
	    cmocka_unit_test(test_params_size_utf8),
	    cmocka_unit_test(test_bad_addresses_and_skips),
	    cmocka_unit_test(test_big_group),
	    cmocka_unit_test(test_body_stuffing),
	    cmocka_unit_test(test_reply_parse),
	    cmocka_unit_test(test_abort_and_timeouts),
	    cmocka_unit_test(test_commit_gate_ok),
	    cmocka_unit_test(test_commit_gate_refused),
	    cmocka_unit_test(test_deadlines),
	    cmocka_unit_test(test_tls_wait_deadline),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
