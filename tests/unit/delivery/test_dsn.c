/*
 * test_dsn.c - who gets a DSN (table), and the DSN itself: checked
 * structurally in C and parsed by Python's email package (multipart/report,
 * message/delivery-status groups, the returned original).
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
#include <sys/wait.h>
#include <unistd.h>

#include "dsn.h"

static void
test_should_notify(void **state)
{
	static const struct {
		const char *from;
		unsigned notify;
		enum dsn_action action;
		bool delay_default;
		bool want;
	} t[] = {
	    {"s@x", 0, DSN_ACTION_FAILED, false, true},
	    {"s@x", 0, DSN_ACTION_DELAYED, false, false},
	    {"s@x", 0, DSN_ACTION_DELAYED, true, true},
	    {"s@x", 0, DSN_ACTION_DELIVERED, true, false},
	    {"s@x", DSN_NOTIFY_NEVER, DSN_ACTION_FAILED, true, false},
	    {"s@x", DSN_NOTIFY_SUCCESS, DSN_ACTION_FAILED, true, false},
	    {"s@x", DSN_NOTIFY_SUCCESS, DSN_ACTION_DELIVERED, false, true},
	    {"s@x", DSN_NOTIFY_SUCCESS, DSN_ACTION_RELAYED, false, true},
	    {"s@x", DSN_NOTIFY_FAILURE, DSN_ACTION_DELAYED, true, false},
	    {"s@x", DSN_NOTIFY_FAILURE | DSN_NOTIFY_DELAY, DSN_ACTION_DELAYED, false, true},
	    {"s@x", DSN_NOTIFY_FAILURE, DSN_ACTION_FAILED, false, true},
	    {"", 0, DSN_ACTION_FAILED, true, false},
	    {"", DSN_NOTIFY_FAILURE | DSN_NOTIFY_SUCCESS, DSN_ACTION_FAILED, true, false},
	    {NULL, 0, DSN_ACTION_FAILED, true, false},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		print_message("case %zu\n", i);
		assert_int_equal(
		    dsn_should_notify(t[i].from, t[i].notify, t[i].action, t[i].delay_default),
		    t[i].want);
	}
}

static const char orig[] = "From: Sender <s@src.example>\r\n"
			   "To: a@dest.example\r\n"
			   "Subject: original subject\r\n"
			   "Message-ID: <orig.1@src.example>\r\n"
			   "\r\n"
			   "Body line one.\r\n"
			   ".leading dot line\r\n";

static const struct dsn_rcpt rcpts2[2] = {
    {.final_rcpt = "a@dest.example",
     .orcpt = "rfc822;A@Dest.Example",
     .action = DSN_ACTION_FAILED,
     .status = "5.1.1",
     .remote_mta = "mx1.dest.example",
     .diag = "550 5.1.1 <a@dest.example>: Recipient address rejected",
     .last_attempt = "Sun, 29 Nov 2026 10:00:00 +0000"},
    {.final_rcpt = "b@dest.example",
     .action = DSN_ACTION_FAILED,
     .status = "4.4.7",
     .diag = "451 4.4.2 connection lost"},
};

static void
base_input(struct dsn_input *in)
{
	memset(in, 0, sizeof(*in));
	in->reporting_mta = "relay.example";
	in->mail_from = "s@src.example";
	in->envid = "QQ123";
	in->arrival_date = "Sat, 28 Nov 2026 09:00:00 +0000";
	in->date = "Sun, 29 Nov 2026 10:00:01 +0000";
	in->message_id = "dsn.42@relay.example";
	in->rcpts = rcpts2;
	in->nrcpts = 2;
	in->orig = orig;
	in->orig_len = sizeof(orig) - 1;
}

/* Every line ends in CRLF: no bare CR or LF anywhere. */
static void
assert_crlf(const char *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (m[i] == '\n')
			assert_true(i > 0 && m[i - 1] == '\r');
		if (m[i] == '\r')
			assert_true(i + 1 < n && m[i + 1] == '\n');
	}
	assert_true(n >= 2 && m[n - 2] == '\r' && m[n - 1] == '\n');
}

/* Run a Python check script on the message; returns its exit status. */
static int
py_check(const char *msg, size_t len, const char *script)
{
	char path[64];
	snprintf(path, sizeof(path), "/tmp/test_dsn.%d.eml", (int)getpid());
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	fwrite(msg, 1, len, f);
	fclose(f);
	pid_t pid = fork();
	if (pid == 0) {
		execl("/usr/bin/python3", "python3", "-c", script, path, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(pid, &st, 0);
	unlink(path);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 99;
}

static const char *py_failed =
    "import sys, email, email.policy\n"
    "m = email.message_from_bytes(open(sys.argv[1],'rb').read(), policy=email.policy.compat32)\n"
    "assert not m.defects, m.defects\n"
    "assert m.get_content_type() == 'multipart/report', m.get_content_type()\n"
    "assert m.get_param('report-type') == 'delivery-status'\n"
    "assert m['Subject'] == 'Delivery report: message not delivered'\n"
    "assert m['Auto-Submitted'] == 'auto-replied'\n"
    "assert m['To'] == '<s@src.example>'\n"
    "assert 'MAILER-DAEMON@relay.example' in m['From']\n"
    "p = m.get_payload()\n"
    "assert len(p) == 3, len(p)\n"
    "assert p[0].get_content_type() == 'text/plain'\n"
    "assert p[1].get_content_type() == 'message/delivery-status'\n"
    "g = p[1].get_payload()\n"
    "assert len(g) == 3, len(g)\n"
    "assert g[0]['Reporting-MTA'] == 'dns; relay.example'\n"
    "assert g[0]['Original-Envelope-Id'] == 'QQ123'\n"
    "assert g[0]['Arrival-Date'] == 'Sat, 28 Nov 2026 09:00:00 +0000'\n"
    "assert g[1]['Final-Recipient'] == 'rfc822; a@dest.example'\n"
    "assert g[1]['Original-Recipient'] == 'rfc822;A@Dest.Example'\n"
    "assert g[1]['Action'] == 'failed' and g[1]['Status'] == '5.1.1'\n"
    "assert g[1]['Remote-MTA'] == 'dns; mx1.dest.example'\n"
    "assert g[1]['Diagnostic-Code'].startswith('smtp; 550 5.1.1')\n"
    "assert g[1]['Last-Attempt-Date'] == 'Sun, 29 Nov 2026 10:00:00 +0000'\n"
    "assert g[2]['Final-Recipient'] == 'rfc822; b@dest.example'\n"
    "assert g[2]['Remote-MTA'] is None\n"
    "assert p[2].get_content_type() == 'message/rfc822'\n"
    "o = p[2].get_payload()[0]\n"
    "assert o['Subject'] == 'original subject'\n"
    "assert '.leading dot line' in o.get_payload()\n";

static void
test_failed_full(void **state)
{
	struct dsn_input in;
	char *out = NULL;
	size_t len = 0;
	base_input(&in);
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_int_equal(strlen(out), len);
	assert_crlf(out, len);
	assert_non_null(strstr(out, "boundary=\"=_dsn_dsn42relayexample_0\""));
	assert_int_equal(py_check(out, len, py_failed), 0);
	assert_int_not_equal(py_check(out, len, "assert False"), 0); /* the check can fail */
	free(out);
}

static const char *py_headers_only =
    "import sys, email, email.policy\n"
    "m = email.message_from_bytes(open(sys.argv[1],'rb').read(), policy=email.policy.compat32)\n"
    "assert not m.defects, m.defects\n"
    "p = m.get_payload()\n"
    "assert p[2].get_content_type() == 'text/rfc822-headers', p[2].get_content_type()\n"
    "t = p[2].get_payload()\n"
    "assert 'Subject: original subject' in t and 'Body line' not in t\n"
    "assert m['Subject'] == sys.argv[2] if len(sys.argv) > 2 else True\n";

static void
test_headers_only_rules(void **state)
{
	struct dsn_input in;
	char *out = NULL;
	size_t len = 0;

	/* RET=HDRS */
	base_input(&in);
	in.ret = DSN_RET_HDRS;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_crlf(out, len);
	assert_int_equal(py_check(out, len, py_headers_only), 0);
	assert_null(strstr(out, "too large"));
	free(out);

	/* RET=FULL but larger than orig_max: headers, and the text says so */
	base_input(&in);
	in.ret = DSN_RET_FULL;
	in.orig_max = 130;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_int_equal(py_check(out, len, py_headers_only), 0);
	assert_non_null(strstr(out, "too large"));
	free(out);

	/* headers longer than orig_max are cut at a line end */
	base_input(&in);
	in.orig_max = 55; /* From: (30 bytes) + To: (20) fit, Subject: does not */
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_crlf(out, len);
	assert_non_null(strstr(out, "To: a@dest.example\r\n\r\n--"));
	assert_null(strstr(out, "Subject: original"));
	free(out);

	/* delay report: headers only, Will-Retry-Until, Delay subject */
	struct dsn_rcpt d = {.final_rcpt = "a@dest.example",
			     .action = DSN_ACTION_DELAYED,
			     .status = "4.4.1",
			     .diag = "421 4.4.2 connection lost",
			     .will_retry_until = "Thu, 03 Dec 2026 09:00:00 +0000"};
	base_input(&in);
	in.rcpts = &d;
	in.nrcpts = 1;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_non_null(strstr(out, "Subject: Delivery report: message delayed, still trying\r\n"));
	assert_non_null(strstr(out, "<a@dest.example>: delayed: still queued, delivery will be "
				    "tried again (4.4.1)\r\n"));
	assert_non_null(strstr(out, "Will-Retry-Until: Thu, 03 Dec 2026 09:00:00 +0000\r\n"));
	assert_non_null(strstr(out, "Action: delayed\r\n"));
	assert_int_equal(py_check(out, len, py_headers_only), 0);
	free(out);

	/* success report, no original at all: two parts */
	struct dsn_rcpt ok = {.final_rcpt = "a@dest.example",
			      .action = DSN_ACTION_RELAYED,
			      .status = "2.0.0",
			      .remote_mta = "mx.dest.example",
			      .diag = "250 2.0.0 ok"};
	base_input(&in);
	in.rcpts = &ok;
	in.nrcpts = 1;
	in.orig = NULL;
	in.orig_len = 0;
	in.envid = NULL;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_non_null(strstr(out, "Subject: Delivery report: message delivered\r\n"));
	assert_null(strstr(out, "Original-Envelope-Id"));
	assert_int_equal(
	    py_check(out, len,
		     "import sys, email\n"
		     "m = email.message_from_bytes(open(sys.argv[1],'rb').read())\n"
		     "assert not m.defects and len(m.get_payload()) == 2\n"
		     "assert m.get_payload()[1].get_payload()[1]['Action'] == 'relayed'\n"),
	    0);
	free(out);
}

static void
test_boundary_avoids_original(void **state)
{
	struct dsn_input in;
	char *out = NULL;
	size_t len = 0;
	static const char evil[] = "Subject: x\r\n\r\n--=_dsn_dsn42relayexample_0\r\n"
				   "--=_dsn_dsn42relayexample_1--\r\n";
	base_input(&in);
	in.orig = evil;
	in.orig_len = sizeof(evil) - 1;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_non_null(strstr(out, "boundary=\"=_dsn_dsn42relayexample_2\""));
	assert_int_equal(py_check(out, len,
				  "import sys, email\n"
				  "m = email.message_from_bytes(open(sys.argv[1],'rb').read())\n"
				  "assert len(m.get_payload()) == 3\n"),
			 0);
	free(out);
}

enum mut {
	M_NULL_SENDER,
	M_SENDER_CRLF,
	M_RCPT_CRLF,
	M_DIAG_LF,
	M_BAD_STATUS,
	M_STATUS_LONG,
	M_NO_RCPTS,
	M_MSGID_BRACKETS,
	M_ORCPT_NO_TYPE,
	M_NO_DATE,
	M_ORIG_NULL_LEN,
	M_LONG_FIELD,
};

static void
test_rejects_bad_input(void **state)
{
	static char longf[DSN_FIELD_MAX + 10];
	memset(longf, 'a', sizeof(longf) - 1);
	for (int m = M_NULL_SENDER; m <= M_LONG_FIELD; m++) {
		struct dsn_input in;
		struct dsn_rcpt r = rcpts2[0];
		char *out = NULL;
		size_t len = 0;
		base_input(&in);
		in.rcpts = &r;
		in.nrcpts = 1;
		switch ((enum mut)m) {
		case M_NULL_SENDER:
			in.mail_from = "";
			break;
		case M_SENDER_CRLF:
			in.mail_from = "s@x\r\nBcc: victim@example";
			break;
		case M_RCPT_CRLF:
			r.final_rcpt = "a@b\r\nX: y";
			break;
		case M_DIAG_LF:
			r.diag = "550 x\nX-Injected: 1";
			break;
		case M_BAD_STATUS:
			r.status = "5.1";
			break;
		case M_STATUS_LONG:
			r.status = "5.1.1000";
			break;
		case M_NO_RCPTS:
			in.nrcpts = 0;
			break;
		case M_MSGID_BRACKETS:
			in.message_id = "<x@y>";
			break;
		case M_ORCPT_NO_TYPE:
			r.orcpt = "a@b";
			break;
		case M_NO_DATE:
			in.date = NULL;
			break;
		case M_ORIG_NULL_LEN:
			in.orig = NULL;
			in.orig_len = 5;
			break;
		case M_LONG_FIELD:
			r.diag = longf;
			break;
		}
		print_message("mutation %d\n", m);
		assert_int_equal(dsn_build(&in, &out, &len), -EINVAL);
		assert_null(out);
	}
}

/* An expiry (issue 13 part 5): Action failed, Status 4.4.7, the last reply as Diagnostic-Code,
 * and a text part in our own words (no other MTA's wording). */
static void
test_expired_and_own_words(void **state)
{
	struct dsn_input in;
	char *out = NULL;
	size_t len = 0;
	struct dsn_rcpt x = {.final_rcpt = "a@dest.example",
			     .action = DSN_ACTION_FAILED,
			     .status = "4.3.0",
			     .remote_mta = "mx.dest.example",
			     .diag = "451 4.3.0 try later",
			     .expired = true};
	base_input(&in);
	in.rcpts = &x;
	in.nrcpts = 1;
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_non_null(strstr(out, "Action: failed\r\nStatus: 4.4.7\r\n"));
	assert_non_null(strstr(out, "Diagnostic-Code: smtp; 451 4.3.0 try later\r\n"));
	assert_non_null(strstr(out, "<a@dest.example>: not delivered: we gave up after temporary "
				    "failures (queue lifetime over) (4.4.7)\r\n"));
	assert_non_null(strstr(out, "    Reason: 451 4.3.0 try later\r\n"));
	/* none of Postfix's (or sendmail's) phrases: parsers must not take us for them */
	assert_null(strstr(out, "This is the mail system"));
	assert_null(strstr(out, "Undelivered Mail Returned to Sender"));
	assert_null(strstr(out, "Mail Delivery System"));
	assert_null(strstr(out, "The mail system"));
	free(out);
	/* a 5.x.x failure says "permanent" */
	x.expired = false;
	x.status = "5.1.1";
	x.diag = "550 5.1.1 no such user";
	assert_int_equal(dsn_build(&in, &out, &len), 0);
	assert_non_null(strstr(out, "Status: 5.1.1\r\n"));
	assert_non_null(strstr(out, "<a@dest.example>: not delivered: permanent failure (5.1.1)\r\n"));
	assert_non_null(strstr(out, "    Reason: 550 5.1.1 no such user\r\n"));
	/* nothing in a permanent report says "temporary" (text parsers read it as a soft
	 * bounce) */
	assert_null(strcasestr(out, "temporar"));
	free(out);
	(void)state;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_expired_and_own_words),
	    cmocka_unit_test(test_should_notify),
	    cmocka_unit_test(test_failed_full),
	    cmocka_unit_test(test_headers_only_rules),
	    cmocka_unit_test(test_boundary_avoids_original),
	    cmocka_unit_test(test_rejects_bad_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
