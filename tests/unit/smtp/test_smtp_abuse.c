/*
 * test_smtp_abuse.c: what a stranger can make the session machine do (issue 12): <postmaster>
 * routed or refused, the hop count, the receive budget (452 4.3.1 at DATA, BDAT and the end of
 * data; strangers' share), the reject hook (one report per 4xx/5xx), AUTH tempfail (454), the
 * message span the glue's data deadlines use; and the per-client AUTH failure limiter.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "auth_limit.h"
#include "smtp_harness.h"

/* The reject hook's reports, in order. */
struct rejects {
	size_t n;
	char line[32][128];
};

static void
reject_hook(void *arg, const struct smtp_session *s, const char *cmd, int code, const char *enh,
	    const char *reason)
{
	struct rejects *r = arg;
	(void)s;
	if (r->n < 32)
		snprintf(r->line[r->n++], sizeof(r->line[0]), "%s %d %s %s", cmd, code, enh, reason);
}

static int
setup(void **state)
{
	struct harness *h = calloc(1, sizeof(*h));
	h_setup(h);
	*state = h;
	return 0;
}

static int
teardown(void **state)
{
	struct harness *h = *state;
	h_teardown(h);
	free(h);
	return 0;
}

static void
expect(struct harness *h, const char *in, const char *want)
{
	h_reset_transcript(h);
	h_play(h, in);
	if (strcmp(h->out, want) != 0)
		fail_msg("after %s\nwant: %s\n got: %s", in, want, h->out);
}

static void
test_postmaster_routed(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	h->client.trusted = false; /* a stranger: postmaster is accepted from anyone */
	assert_int_equal(h_start(h), 0);
	expect(h, "EHLO c.example\r\n", GREETING EHLO_REPLY);
	expect(h,
	       "MAIL FROM:<victim@elsewhere.example>\r\nRCPT TO:<postmaster>\r\n"
	       "RCPT TO:<POSTMASTER@MX.example.org>\r\nRCPT TO:<postmaster@other.example>\r\n"
	       "DATA\r\nhi\r\n.\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
	       "554 5.7.1 <postmaster@other.example>: Relay access denied\r\n"
	       "354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h->msg.n_rcpts, 2);
	assert_string_equal(h->msg.rcpt[0], "ops@example.org");
	assert_string_equal(h->msg.rcpt[1], "ops@example.org");
	assert_int_equal(r.n, 1);
	assert_string_equal(r.line[0], "RCPT 554 5.7.1 relay_denied");
}

static void
test_postmaster_unset(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.postmaster = "";
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	h->client.trusted = true; /* even trusted: a recipient with no domain could only bounce */
	assert_int_equal(h_start(h), 0);
	expect(h, "EHLO c.example\r\n", GREETING EHLO_REPLY);
	expect(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<postmaster@mx.example.org>\r\n",
	       "250 2.1.0 Ok\r\n"
	       "550 5.1.1 <Postmaster>: Recipient address rejected: no postmaster address is "
	       "configured here\r\n"
	       "550 5.1.1 <postmaster@mx.example.org>: Recipient address rejected: no postmaster "
	       "address is configured here\r\n");
	assert_int_equal(h->counters.no_postmaster, 2);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.line[0], "RCPT 550 5.1.1 no_postmaster");
}

/* A body with n Received: fields (mixed case, one with a blank before its colon) and a
 * "Received:" line in the body part, which does not count. */
static char *
hops_script(unsigned n)
{
	size_t cap = 256 + (size_t)n * 64;
	char *s = malloc(cap);
	size_t o = (size_t)snprintf(s, cap, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
	for (unsigned i = 0; i < n; i++)
		o += (size_t)snprintf(s + o, cap - o, "%s: from h%u by h%u\r\n",
				      i % 3 == 0 ? "Received" : i % 3 == 1 ? "RECEIVED" : "received ", i,
				      i + 1);
	snprintf(s + o, cap - o, "Subject: x\r\n\r\nReceived: in the body\r\n.\r\n");
	return s;
}

static void
test_hops(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.max_hops = 5;
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	h->client.trusted = true;
	assert_int_equal(h_start(h), 0);
	expect(h, "EHLO c.example\r\n", GREETING EHLO_REPLY);
	char *ok = hops_script(4), *loop = hops_script(5);
	expect(h, ok,
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	       "250 2.0.0 Ok: queued as 0123ABC\r\n");
	expect(h, loop,
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	       "554 5.4.6 Too many hops (5 Received: headers), possible mail loop\r\n");
	assert_int_equal(h->msg_events, 1);
	assert_int_equal(h->counters.too_many_hops, 1);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.line[0], "DATA 554 5.4.6 too_many_hops");
	/* the transaction is over; the session goes on */
	expect(h, "RCPT TO:<x@example.org>\r\n", "503 5.5.1 Error: need MAIL command\r\n");
	free(ok);
	free(loop);
}

static void
test_budget_data(void **state)
{
	struct harness *h = *state;
	static struct smtp_budget b; /* outlives the session (freed in teardown) */
	b = (struct smtp_budget){.limit = 40000};
	h->cfg.budget = &b;
	h->client.trusted = true;
	assert_int_equal(h_start(h), 0);
	expect(h, "EHLO c.example\r\n", GREETING EHLO_REPLY);
	/* a declared SIZE the budget cannot take: 452 at DATA, the transaction stays */
	expect(h, "MAIL FROM:<a@b.example> SIZE=50000\r\nRCPT TO:<x@example.org>\r\nDATA\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.3.1 Insufficient system storage, try again "
	       "later\r\n");
	assert_int_equal(h->counters.over_budget, 1);
	assert_int_equal(b.used, 0);
	expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");
	/* no SIZE, a body larger than the budget: read to its end, not stored, then 452 */
	h_reset_transcript(h);
	h_play(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
	char line[1001];
	memset(line, 'x', 998);
	memcpy(line + 998, "\r\n", 3);
	for (int i = 0; i < 60; i++)
		h_play(h, line);
	assert_true(b.used <= b.limit);
	h_reset_transcript(h);
	h_play(h, ".\r\n");
	assert_string_equal(h->out, "452 4.3.1 Insufficient system storage, try again later\r\n");
	assert_int_equal(h->counters.over_budget, 2);
	assert_int_equal(b.used, 0);
	assert_true(b.peak <= b.limit);
	/* within the budget: accepted, and the reservation is given back */
	expect(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nsmall\r\n.\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	       "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(b.used, 0);
	assert_int_equal(h->counters.over_budget, 2);
	assert_int_equal(h->counters.too_many_errors, 0);
}

static void
test_budget_bdat(void **state)
{
	struct harness *h = *state;
	static struct smtp_budget b; /* outlives the session (freed in teardown) */
	b = (struct smtp_budget){.limit = 10000};
	h->cfg.budget = &b;
	h->client.trusted = true;
	assert_int_equal(h_start(h), 0);
	expect(h, "EHLO c.example\r\n", GREETING EHLO_REPLY);
	char script[20000];
	int n = snprintf(script, sizeof(script),
			 "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nBDAT 12000 LAST\r\n");
	memset(script + n, 'y', 12000);
	script[n + 12000] = '\0';
	expect(h, script,
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.3.1 Insufficient system storage, try again "
	       "later\r\n");
	assert_int_equal(h->counters.over_budget, 1);
	assert_int_equal(b.used, 0);
	/* the chunk was consumed: the next command is read as a command */
	expect(h, "NOOP\r\n", "250 2.0.0 Ok\r\n");
	expect(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nBDAT 5 LAST\r\nhello",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(b.used, 0);
}

/* Strangers fill the budget only to SMTP_BUDGET_UNTRUSTED_PCT percent; trusted clients use
 * the rest. */
static void
test_budget_shares(void **state)
{
	(void)state;
	static struct smtp_budget b; /* outlives the session (freed in teardown) */
	b = (struct smtp_budget){.limit = 1000};
	assert_true(smtp_budget_take(&b, 700, false));
	assert_false(smtp_budget_take(&b, 100, false));
	assert_int_equal(smtp_budget_room(&b, false), 1000 / 100 * SMTP_BUDGET_UNTRUSTED_PCT - 700);
	assert_true(smtp_budget_take(&b, 300, true));
	assert_false(smtp_budget_take(&b, 1, true));
	assert_int_equal(smtp_budget_room(&b, true), 0);
	smtp_budget_give(&b, 1000);
	assert_int_equal(b.used, 0);
	assert_int_equal(b.peak, 1000);
	assert_true(smtp_budget_take(NULL, UINT64_MAX, false));
}

/* The glue copies the body, then drops the session's: the reservation goes back at once. */
static void
test_drop_body(void **state)
{
	struct harness *h = *state;
	static struct smtp_budget b; /* outlives the session (freed in teardown) */
	b = (struct smtp_budget){.limit = 1 << 20};
	h->cfg.budget = &b;
	h->client.trusted = true;
	assert_int_equal(h_start(h), 0);
	h_play(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\n");
	assert_false(smtp_session_in_message(h->s));
	size_t n = smtp_session_feed(h->s, "DATA\r\nbody\r\n", 12);
	assert_int_equal(n, 12);
	assert_true(smtp_session_in_message(h->s));
	assert_true(b.used > 0);
	n = smtp_session_feed(h->s, ".\r\n", 3);
	assert_int_equal(n, 3);
	struct smtp_event ev;
	assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_MESSAGE);
	assert_false(smtp_session_in_message(h->s));
	smtp_session_drop_body(h->s);
	assert_int_equal(b.used, 0);
	assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_MESSAGE);
	assert_int_equal(ev.message.body_len, 0);
	assert_int_equal(smtp_session_message_result(h->s, 250, "2.0.0", "Ok"), 0);
	/* BDAT: the message lasts from the first chunk to LAST */
	h_play(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nBDAT 3\r\nabc");
	assert_true(smtp_session_in_message(h->s));
	assert_false(smtp_session_in_data(h->s));
}

static void
test_auth_tempfail(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	h->client.tls_active = true;
	assert_int_equal(h_start(h), 0);
	assert_int_equal(smtp_session_auth_tempfail(h->s), -EINVAL);
	h_play(h, "EHLO c.example\r\n");
	size_t n = smtp_session_feed(h->s, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", 29);
	assert_int_equal(n, 29);
	struct smtp_event ev;
	assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_AUTH);
	assert_int_equal(smtp_session_auth_tempfail(h->s), 0);
	h_reset_transcript(h);
	h_drain(h);
	assert_string_equal(h->out, "454 4.7.0 Temporary authentication failure, try again later\r\n");
	assert_int_equal(h->counters.auth_throttled, 1);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.line[0], "AUTH 454 4.7.0 auth_throttled");
	/* the session goes on; a later AUTH may succeed */
	expect(h, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", "235 2.7.0 Authentication successful\r\n");
}

/* One report per 4xx/5xx, with the command and the counter that counted it. */
static void
test_reject_hook(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	h->pol.msg_code = 451;
	h->pol.msg_enh = "4.3.0";
	h->pol.msg_text = "Queue unavailable";
	assert_int_equal(h_start(h), 0);
	h_play(h, "FOO\r\nEHLO c.example\r\nMAIL FROM:<bad\r\nMAIL FROM:<a@b.example>\r\n"
		  "RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nx\r\n.\r\n"
		  "QUIT\r\n");
	assert_int_equal(r.n, 4);
	assert_string_equal(r.line[0], "- 500 5.5.2 bad_command");
	assert_string_equal(r.line[1], "MAIL 501 5.1.7 bad_address");
	assert_string_equal(r.line[2], "RCPT 554 5.7.1 relay_denied");
	assert_string_equal(r.line[3], "DATA 451 4.3.0 result");
	smtp_session_timeout(h->s); /* closed already: nothing more */
	assert_int_equal(r.n, 4);
}

static void
test_timeout_reported(void **state)
{
	struct harness *h = *state;
	struct rejects r = {0};
	h->cfg.reject_cb = reject_hook;
	h->client.hook_arg = &r;
	assert_int_equal(h_start(h), 0);
	h_play(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\nDATA\r\nslow");
	smtp_session_timeout(h->s);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.line[0], "- 421 4.4.2 timeouts");
}

static void
test_auth_limit(void **state)
{
	(void)state;
	static struct auth_limit l;
	auth_limit_init(&l, 3);
	uint64_t t = 1000000;
	assert_false(auth_limit_blocked(&l, "192.0.2.7", t));
	for (int i = 0; i < 3; i++)
		auth_limit_failed(&l, "192.0.2.7", t + (uint64_t)i);
	assert_true(auth_limit_blocked(&l, "192.0.2.7", t + 10));
	assert_false(auth_limit_blocked(&l, "192.0.2.8", t + 10));
	/* the window ends a minute after its first failure */
	assert_true(auth_limit_blocked(&l, "192.0.2.7", t + AUTH_LIMIT_WINDOW_MS - 1));
	assert_false(auth_limit_blocked(&l, "192.0.2.7", t + AUTH_LIMIT_WINDOW_MS));
	auth_limit_failed(&l, "192.0.2.7", t + AUTH_LIMIT_WINDOW_MS);
	assert_false(auth_limit_blocked(&l, "192.0.2.7", t + AUTH_LIMIT_WINDOW_MS + 1));
	/* a full table: the oldest window gives way, the key stays unique */
	char key[AUTH_LIMIT_KEY_MAX];
	for (unsigned i = 0; i < AUTH_LIMIT_CLIENTS + 10; i++) {
		snprintf(key, sizeof(key), "10.%u.%u.%u", i >> 16, (i >> 8) & 255, i & 255);
		auth_limit_failed(&l, key, t + AUTH_LIMIT_WINDOW_MS + 2 + i);
	}
	assert_int_equal(l.n, AUTH_LIMIT_CLIENTS);
	for (int i = 0; i < 3; i++)
		auth_limit_failed(&l, "2001:db8:1:2::/64", t + 2 * AUTH_LIMIT_WINDOW_MS);
	assert_true(auth_limit_blocked(&l, "2001:db8:1:2::/64", t + 2 * AUTH_LIMIT_WINDOW_MS));
	size_t same = 0;
	for (size_t i = 0; i < l.n; i++)
		same += strcmp(l.v[i].key, "2001:db8:1:2::/64") == 0;
	assert_int_equal(same, 1);
	/* 0: no limit */
	auth_limit_init(&l, 0);
	for (int i = 0; i < 100; i++)
		auth_limit_failed(&l, "192.0.2.7", t);
	assert_false(auth_limit_blocked(&l, "192.0.2.7", t));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_postmaster_routed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_postmaster_unset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hops, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_budget_data, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_budget_bdat, setup, teardown),
	    cmocka_unit_test(test_budget_shares),
	    cmocka_unit_test_setup_teardown(test_drop_body, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_auth_tempfail, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reject_hook, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout_reported, setup, teardown),
	    cmocka_unit_test(test_auth_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
