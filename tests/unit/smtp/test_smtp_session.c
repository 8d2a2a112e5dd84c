/*
 * test_smtp_session.c: cmocka tests of the pure SMTP session machine (node/smtp_session.h).
 *
 * Byte scripts in, exact reply transcripts out (Postfix .in/.ref habit), played through
 * smtp_harness.h, which behaves like the glue: partial feeds, kept bytes, event resolution.
 * Tables cover addresses, parameters, body edge cases and relay policy.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <strings.h>

#include <cmocka.h>

#include "smtp_harness.h"
#include "smtp_received.h"

static int
setup(void **state)
{
	struct harness *h = malloc(sizeof(*h));
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

/* Starts the session and checks the greeting; the transcript is then emptied. */
static void
start(struct harness *h)
{
	assert_int_equal(h_start(h), 0);
	h_drain(h);
	assert_string_equal(h->out, GREETING);
	h_reset_transcript(h);
}

/* Plays script and compares the whole transcript. */
static void
expect(struct harness *h, const char *script, const char *transcript)
{
	h_reset_transcript(h);
	size_t n = h_play(h, script);
	assert_int_not_equal(n, (size_t)-1);
	assert_string_equal(h->out, transcript);
}

/* ---- basic sessions ---- */

#define PIPELINED_SCRIPT                                                                           \
	"EHLO client.example\r\n"                                                                  \
	"MAIL FROM:<alice@sender.example> SIZE=100\r\n"                                            \
	"RCPT TO:<bob@example.org>\r\n"                                                            \
	"RCPT TO:<carol@example.org> NOTIFY=SUCCESS,FAILURE\r\n"                                   \
	"RCPT TO:<dave@relay.example>\r\n"                                                         \
	"DATA\r\n"                                                                                 \
	"Subject: hi\r\n"                                                                          \
	"\r\n"                                                                                     \
	"..leading dot\r\n"                                                                        \
	"body\r\n"                                                                                 \
	".\r\n"                                                                                    \
	"QUIT\r\n"

#define PIPELINED_TRANSCRIPT                                                                       \
	GREETING EHLO_REPLY "250 2.1.0 Ok\r\n"                                                     \
			    "250 2.1.5 Ok\r\n"                                                     \
			    "250 2.1.5 Ok\r\n"                                                     \
			    "250 2.1.5 Ok\r\n"                                                     \
			    "354 End data with <CR><LF>.<CR><LF>\r\n"                              \
			    "250 2.0.0 Ok: queued as 0123ABC\r\n"                                  \
			    "221 2.0.0 Bye\r\n"

static void
test_pipelined_batch(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h, PIPELINED_SCRIPT, PIPELINED_TRANSCRIPT + strlen(GREETING));
	assert_true(h->closed);
	assert_int_equal(h->msg_events, 1);
	assert_string_equal(h->msg.helo, "client.example");
	assert_true(h->msg.esmtp);
	assert_string_equal(h->msg.mail_from, "alice@sender.example");
	assert_int_equal(h->msg.size_declared, 100);
	assert_int_equal(h->msg.n_rcpts, 3);
	assert_string_equal(h->msg.rcpt[0], "bob@example.org");
	assert_string_equal(h->msg.rcpt[1], "carol@example.org");
	assert_int_equal(h->msg.notify[1], SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE);
	assert_int_equal(h->msg.notify[0], 0);
	assert_string_equal(h->msg.rcpt[2], "dave@relay.example");
	assert_string_equal(h->msg.body, "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
	assert_false(h->msg.chunking);
	assert_false(h->msg.has_auth_user);
	assert_int_equal(h->counters.messages, 1);
}

/* The same script split at every byte boundary, and byte by byte, gives the same bytes. */
static void
test_split_every_boundary(void **state)
{
	struct harness *h = *state;
	const char *script = PIPELINED_SCRIPT;
	size_t len = strlen(script);

	for (size_t k = 0; k <= len + 1; k++) {
		struct harness hh;
		h_setup(&hh);
		assert_int_equal(h_start(&hh), 0);
		size_t n;
		if (k == len + 1) {
			n = h_play_split(&hh, script, len, 1); /* byte by byte */
		} else {
			/* two arrivals: [0,k) then [k,len) */
			n = h_play_split(&hh, script, k, 0);
			assert_int_equal(n, k);
			n += h_play_split(&hh, script + k, len - k, 0);
		}
		assert_int_equal(n, len);
		assert_string_equal(hh.out, PIPELINED_TRANSCRIPT);
		assert_string_equal(hh.msg.body, "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
		h_teardown(&hh);
	}
	(void)h;
}

static void
test_helo_and_simple_commands(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h, "HELO client.example\r\n", "250 mx.example.org\r\n");
	expect(h, "noop\r\nNoOp hello\r\nrset\r\n",
	       "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n");
	expect(h, "VRFY bob\r\n",
	       "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
	expect(h, "HELP\r\n",
	       "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT "
	       "VRFY HELP STARTTLS AUTH\r\n");
	expect(h, "EXPN list\r\n", "500 5.5.2 Error: command not recognized\r\n");
	expect(h, "\r\n", "500 5.5.2 Error: empty command\r\n");
	expect(h, "EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n");
	/* HELO: ESMTP parameters are refused */
	expect(h, "MAIL FROM:<a@b.example> SIZE=10\r\n",
	       "555 5.5.4 ESMTP parameters need EHLO\r\n");
	expect(h, "MAIL FROM:<a@b.example>\r\n", "250 2.1.0 Ok\r\n");
	expect(h, "RCPT TO:<x@example.org> NOTIFY=NEVER\r\n",
	       "555 5.5.4 ESMTP parameters need EHLO\r\n");
	assert_int_equal(h->counters.bad_command, 2);
	assert_int_equal(h->counters.bad_syntax, 3);
	assert_string_equal(smtp_session_state_name(h->s), "mail");
}

static void
test_nul_and_bare_cr_in_command(void **state)
{
	struct harness *h = *state;

	start(h);
	h_reset_transcript(h);
	h_play_split(h, "NOOP\0x\r\n", 8, 0);
	assert_string_equal(h->out, "500 5.5.2 Error: bad characters in command\r\n");
	expect(h, "NO\rOP\r\n", "500 5.5.2 Error: bad characters in command\r\n");
	/* a bare LF ends a command line (tolerated outside DATA) */
	expect(h, "NOOP\n", "250 2.0.0 Ok\r\n");
	assert_int_equal(h->counters.bad_command, 2);
}

/* RFC 5321 4.5.3.1.4: max_line_length counts the CRLF. */
static void
test_line_length(void **state)
{
	struct harness *h = *state;
	char line[4096];

	start(h);
	/* exactly 2048 with CRLF: accepted */
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	memcpy(line + 2046, "\r\n", 3);
	expect(h, line, "250 2.0.0 Ok\r\n");
	/* 2049: refused once, at the LF, then the session continues */
	memcpy(line + 2046, "x\r\n", 4);
	expect(h, line, "500 5.5.2 Error: line too long\r\n");
	memset(line + 5, 'y', 4000);
	memcpy(line + 4005, "\r\nNOOP\r\n", 9);
	for (size_t split = 1; split <= 4096; split *= 4) {
		h_reset_transcript(h);
		assert_int_equal(h_play_split(h, line, strlen(line), split), strlen(line));
		assert_string_equal(h->out, "500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n");
	}
	assert_int_equal(h->counters.line_too_long, 1 + 7);
}

static void
test_line_length_config(void **state)
{
	struct harness *h = *state;
	char line[600];

	h->cfg.max_line_length = 100; /* raised to the RFC minimum 512 */
	h->cfg.max_errors = 100;
	start(h);
	memset(line, 'x', sizeof(line));
	memcpy(line, "NOOP ", 5);
	memcpy(line + 510, "\r\n", 3);
	expect(h, line, "250 2.0.0 Ok\r\n");
	memcpy(line + 510, "x\r\n", 4);
	expect(h, line, "500 5.5.2 Error: line too long\r\n");
}

static void
test_out_of_order(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h, "MAIL FROM:<a@b.example>\r\n", "503 5.5.1 Error: send HELO/EHLO first\r\n");
	expect(h, "EHLO c.example\r\n", EHLO_REPLY);
	expect(h, "RCPT TO:<x@example.org>\r\n", "503 5.5.1 Error: need MAIL command\r\n");
	expect(h, "DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n");
	expect(h, "MAIL FROM:<a@b.example>\r\n", "250 2.1.0 Ok\r\n");
	expect(h, "DATA\r\n", "503 5.5.1 Error: need RCPT command\r\n");
	expect(h, "MAIL FROM:<a@b.example>\r\n", "503 5.5.1 Error: nested MAIL command\r\n");
	expect(h, "DATA extra\r\n", "501 5.5.4 Syntax: DATA\r\n");
	assert_int_equal(h->counters.bad_sequence, 5);
	/* EHLO resets the transaction */
	expect(h, "EHLO c.example\r\nRCPT TO:<x@example.org>\r\n",
	       EHLO_REPLY "503 5.5.1 Error: need MAIL command\r\n");
	/* RSET too */
	expect(h, "MAIL FROM:<>\r\nRSET\r\nRCPT TO:<x@example.org>\r\n",
	       "250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n");
}

/* ---- MAIL parameters ---- */

struct param_case {
	const char *cmd;
	const char *reply;
};

static const struct param_case mail_cases[] = {
    {"MAIL FROM:<a@b.example>", "250 2.1.0 Ok"},
    {"mail from:<a@b.example>", "250 2.1.0 Ok"},
    {"MAIL FROM: <a@b.example>", "250 2.1.0 Ok"},
    {"MAIL FROM:<>", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> SIZE=100000", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> SIZE=100001",
     "552 5.3.4 Message size exceeds fixed maximum message size"},
    {"MAIL FROM:<a@b.example> SIZE=18446744073709551615",
     "552 5.3.4 Message size exceeds fixed maximum message size"},
    {"MAIL FROM:<a@b.example> SIZE=18446744073709551616", "501 5.5.4 Bad SIZE parameter"},
    {"MAIL FROM:<a@b.example> SIZE=99999999999999999999999999", "501 5.5.4 Bad SIZE parameter"},
    {"MAIL FROM:<a@b.example> SIZE=-1", "501 5.5.4 Bad SIZE parameter"},
    {"MAIL FROM:<a@b.example> SIZE", "501 5.5.4 Bad SIZE parameter"},
    {"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", "555 5.5.4 Duplicate parameter"},
    {"MAIL FROM:<a@b.example> BODY=8BITMIME", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> body=7bit", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> BODY=BINARYMIME", "555 5.5.4 BINARYMIME not supported"},
    {"MAIL FROM:<a@b.example> BODY=9BIT", "501 5.5.4 Bad BODY parameter"},
    {"MAIL FROM:<a@b.example> SMTPUTF8", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"},
    {"MAIL FROM:<a@b.example> RET=HDRS ENVID=abc+2Bdef", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> RET=ALL", "501 5.5.4 Bad RET parameter"},
    {"MAIL FROM:<a@b.example> ENVID=a+2", "501 5.5.4 Bad ENVID parameter"},
    {"MAIL FROM:<a@b.example> ENVID=a+2g", "501 5.5.4 Bad ENVID parameter"},
    {"MAIL FROM:<a@b.example> AUTH=<>", "250 2.1.0 Ok"},
    {"MAIL FROM:<a@b.example> AUTH=x AUTH=y", "555 5.5.4 Duplicate parameter"},
    {"MAIL FROM:<a@b.example> FOO=bar", "555 5.5.4 Unsupported parameter"},
    {"MAIL FROM:<a@b.example> =bar", "501 5.5.4 Bad parameter syntax"},
    {"MAIL FROM:<a@b.example> SIZE=", "501 5.5.4 Bad parameter syntax"},
    {"MAIL FROM:<a@b.example>SIZE=1", "501 5.1.7 Bad sender address syntax"},
    {"MAIL FROM <a@b.example>", "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"MAIL TO:<a@b.example>", "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"MAIL FROM:<j\xc3\xb6rg@b.example>", "553 5.6.7 SMTPUTF8 required for UTF-8 addresses"},
    {"MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8", "250 2.1.0 Ok"},
    {"MAIL FROM:<j\xc3\xb6rg@b\xc3\xa9.example> SMTPUTF8", "250 2.1.0 Ok"},
    {"MAIL FROM:<j\xc3rg@b.example> SMTPUTF8", "501 5.1.7 Bad sender address syntax"},
    {"MAIL FROM:<j\xc0\xafrg@b.example> SMTPUTF8", "501 5.1.7 Bad sender address syntax"},
};

static void
test_mail_params(void **state)
{
	struct harness *h = *state;
	char script[512], want[512];

	h->cfg.max_errors = 1000;
	start(h);
	for (size_t i = 0; i < sizeof(mail_cases) / sizeof(mail_cases[0]); i++) {
		snprintf(script, sizeof(script), "EHLO c.example\r\n%s\r\n", mail_cases[i].cmd);
		snprintf(want, sizeof(want), EHLO_REPLY "%s\r\n", mail_cases[i].reply);
		h_reset_transcript(h);
		h_play(h, script);
		if (strcmp(h->out, want) != 0)
			fail_msg("case %zu: %s\n got: %s", i, mail_cases[i].cmd, h->out);
	}
}

/* ---- addresses ---- */

struct addr_case {
	const char *path;
	bool ok;
	const char *stored; /* expected recipient as stored, when ok */
};

static const struct addr_case addr_cases[] = {
    {"<bob@example.org>", true, "bob@example.org"},
    {"<Bob.Smith+tag@EXAMPLE.ORG>", true, "Bob.Smith+tag@EXAMPLE.ORG"},
    {"<\"bob smith\"@example.org>", true, "\"bob smith\"@example.org"},
    {"<\"a\\\"b\"@example.org>", true, "\"a\\\"b\"@example.org"},
    {"<@hop1.example,@hop2.example:bob@example.org>", true, "bob@example.org"},
    {"<postmaster>", true, "ops@example.org"}, /* postmaster_address (RFC 5321 4.5.1) */
    {"<PostMaster>", true, "ops@example.org"},
    {"<bob@[192.0.2.1]>", true, "bob@[192.0.2.1]"}, /* trusted client only */
    {"<bob@[IPv6:2001:db8::1]>", true, "bob@[IPv6:2001:db8::1]"},
    {"<a-b.c_d!#$%&'*/=?^`{|}~@sub-domain.example.org>", true,
     "a-b.c_d!#$%&'*/=?^`{|}~@sub-domain.example.org"},
    {"<>", false, NULL},
    {"<bob>", false, NULL},
    {"<bob@>", false, NULL},
    {"<@example.org>", false, NULL},
    {"bob@example.org", false, NULL},
    {"<bob@example.org", false, NULL},
    {"<bob@@example.org>", false, NULL},
    {"<.bob@example.org>", false, NULL},
    {"<bob.@example.org>", false, NULL},
    {"<bo..b@example.org>", false, NULL},
    {"<bob@example..org>", false, NULL},
    {"<bob@example.org.>", false, NULL},
    {"<bob@-example.org>", false, NULL},
    {"<bob@example-.org>", false, NULL},
    {"<bob@exa_mple.org>", false, NULL},
    {"<bob@[192.0.2.256]>", false, NULL},
    {"<bob@[IPv6:zz::1]>", false, NULL},
    {"<bob@[tag:foo]>", false, NULL},
    {"<bob@[]>", false, NULL},
    {"<bo b@example.org>", false, NULL},
    {"<\"unterminated@example.org>", false, NULL},
    {"<\"ctl\x01\"@example.org>", false, NULL},
    {"<bob@example.org>junk", false, NULL},
    {"<@hop1.example:>", false, NULL},
    {"<@hop1.example,bob@example.org>", false, NULL},
    /* 65-octet local part (RFC 5321 4.5.3.1.1) */
    {"<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org>", false,
     NULL},
    /* 64-label (RFC 1035 63 max) */
    {"<a@aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.org>", false,
     NULL},
};

static void
test_addresses(void **state)
{
	struct harness *h = *state;
	char script[1024], want[1024];

	h->cfg.max_errors = 1000;
	h->client.trusted = true;
	start(h);
	expect(h, "EHLO c.example\r\n", EHLO_REPLY);
	for (size_t i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
		const struct addr_case *c = &addr_cases[i];

		/* as a recipient */
		snprintf(script, sizeof(script), "MAIL FROM:<>\r\nRCPT TO:%s\r\nDATA\r\n.\r\n",
			 c->path);
		snprintf(want, sizeof(want), "250 2.1.0 Ok\r\n%s",
			 c->ok ? "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
				 "250 2.0.0 Ok: queued as 0123ABC\r\n"
			       : "501 5.1.3 Bad recipient address syntax\r\n"
				 "503 5.5.1 Error: need RCPT command\r\n"
				 "500 5.5.2 Error: command not recognized\r\n");
		h_reset_transcript(h);
		h_play(h, script);
		if (strcmp(h->out, want) != 0)
			fail_msg("rcpt case %zu: %s\n got: %s", i, c->path, h->out);
		if (c->ok)
			assert_string_equal(h->msg.rcpt[0], c->stored);
		expect(h, "RSET\r\n", "250 2.0.0 Ok\r\n");

		/* as a sender: postmaster is a recipient-only form, <> a sender-only one */
		bool sender_ok = c->ok ? strncasecmp(c->path, "<postmaster>", 12) != 0
				       : strcmp(c->path, "<>") == 0;
		snprintf(script, sizeof(script), "MAIL FROM:%s\r\nRSET\r\n", c->path);
		snprintf(want, sizeof(want), "%s\r\n250 2.0.0 Ok\r\n",
			 sender_ok ? "250 2.1.0 Ok" : "501 5.1.7 Bad sender address syntax");
		h_reset_transcript(h);
		h_play(h, script);
		if (strcmp(h->out, want) != 0)
			fail_msg("sender case %zu: %s\n got: %s", i, c->path, h->out);
	}
}

static void
test_path_too_long(void **state)
{
	struct harness *h = *state;
	char script[1024], local[65], label[64];

	/* 64 + 1 + 255: the domain is fine but the path (incl. brackets) is 322 > 256;
	 * 64 + 1 + 189 = 254 plus the brackets is exactly 256 */
	memset(local, 'l', 64);
	local[64] = '\0';
	memset(label, 'd', 63);
	label[63] = '\0';
	h->client.trusted = true;
	start(h);
	snprintf(script, sizeof(script),
		 "EHLO c.example\r\nMAIL FROM:<%s@%s.%s.%s.%s>\r\nMAIL FROM:<%s@%s.%s.%.61s>\r\n",
		 local, label, label, label, label, local, label, label, label);
	expect(h, script, EHLO_REPLY "501 5.1.7 Bad sender address syntax\r\n250 2.1.0 Ok\r\n");
}

/* ---- RCPT parameters, DSN ---- */

static const struct param_case rcpt_cases[] = {
    {"RCPT TO:<a@example.org> NOTIFY=NEVER", "250 2.1.5 Ok"},
    {"RCPT TO:<a@example.org> NOTIFY=success,failure,delay", "250 2.1.5 Ok"},
    {"RCPT TO:<a@example.org> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Bad NOTIFY parameter"},
    {"RCPT TO:<a@example.org> NOTIFY=SUCCESS,", "501 5.5.4 Bad NOTIFY parameter"},
    {"RCPT TO:<a@example.org> NOTIFY=SOMETIMES", "501 5.5.4 Bad NOTIFY parameter"},
    {"RCPT TO:<a@example.org> NOTIFY", "501 5.5.4 Bad NOTIFY parameter"},
    {"RCPT TO:<a@example.org> NOTIFY=NEVER NOTIFY=NEVER", "555 5.5.4 Duplicate parameter"},
    {"RCPT TO:<a@example.org> ORCPT=rfc822;a+40example.org", "250 2.1.5 Ok"},
    {"RCPT TO:<a@example.org> ORCPT=rfc822", "501 5.5.4 Bad ORCPT parameter"},
    {"RCPT TO:<a@example.org> ORCPT=;abc", "501 5.5.4 Bad ORCPT parameter"},
    {"RCPT TO:<a@example.org> ORCPT=rfc822;a+4", "501 5.5.4 Bad ORCPT parameter"},
    {"RCPT TO:<a@example.org> SIZE=10", "555 5.5.4 Unsupported parameter"},
    {"RCPT TO:<a@example.org>  ", "250 2.1.5 Ok"},
    {"RCPT TO: <a@example.org>", "250 2.1.5 Ok"},
    {"RCPT TO:a@example.org", "501 5.1.3 Bad recipient address syntax"},
    {"RCPT FROM:<a@example.org>", "501 5.5.4 Syntax: RCPT TO:<address>"},
    {"RCPT TO:<\xc3\xa5@example.org>", "553 5.6.7 SMTPUTF8 required for UTF-8 addresses"},
};

static void
test_rcpt_params(void **state)
{
	struct harness *h = *state;
	char script[2048], want[512];

	h->cfg.max_errors = 1000;
	start(h);
	expect(h, "EHLO c.example\r\n", EHLO_REPLY);
	for (size_t i = 0; i < sizeof(rcpt_cases) / sizeof(rcpt_cases[0]); i++) {
		snprintf(script, sizeof(script), "MAIL FROM:<>\r\n%s\r\nRSET\r\n",
			 rcpt_cases[i].cmd);
		snprintf(want, sizeof(want), "250 2.1.0 Ok\r\n%s\r\n250 2.0.0 Ok\r\n",
			 rcpt_cases[i].reply);
		h_reset_transcript(h);
		h_play(h, script);
		if (strcmp(h->out, want) != 0)
			fail_msg("case %zu: %s\n got: %s", i, rcpt_cases[i].cmd, h->out);
	}
	/* ORCPT at its 500-octet limit, then one over */
	char orcpt[600];
	memcpy(orcpt, "rfc822;", 7);
	memset(orcpt + 7, 'x', 493);
	orcpt[500] = '\0';
	snprintf(script, sizeof(script),
		 "MAIL FROM:<>\r\nRCPT TO:<a@example.org> ORCPT=%s\r\n"
		 "RCPT TO:<b@example.org> ORCPT=%sx\r\nRSET\r\n",
		 orcpt, orcpt);
	expect(h, script,
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n501 5.5.4 Bad ORCPT parameter\r\n250 2.0.0 Ok\r\n");
}

static void
test_dsn_envelope(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h,
	       "EHLO c.example\r\n"
	       "MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1 BODY=8BITMIME SMTPUTF8\r\n"
	       "RCPT TO:<x@example.org> NOTIFY=NEVER ORCPT=rfc822;x+40example.org\r\n"
	       "RCPT TO:<y@example.org> NOTIFY=DELAY,FAILURE\r\n"
	       "RCPT TO:<z\xc3\xa9@example.org>\r\n"
	       "DATA\r\n.\r\n",
	       EHLO_REPLY "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
			  "354 End data with <CR><LF>.<CR><LF>\r\n"
			  "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h->msg.ret, SMTP_RET_HDRS);
	assert_true(h->msg.has_envid);
	assert_string_equal(h->msg.envid, "QQ+2B1");
	assert_int_equal(h->msg.body_type, SMTP_BODY_8BITMIME);
	assert_true(h->msg.smtputf8);
	assert_int_equal(h->msg.n_rcpts, 3);
	assert_int_equal(h->msg.notify[0], SMTP_NOTIFY_NEVER);
	assert_true(h->msg.has_orcpt[0]);
	assert_string_equal(h->msg.orcpt[0], "rfc822;x+40example.org");
	assert_int_equal(h->msg.notify[1], SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE);
	assert_false(h->msg.has_orcpt[1]);
	assert_string_equal(h->msg.rcpt[2], "z\xc3\xa9@example.org");
	assert_int_equal(h->msg.body_len, 0);
	/* the next transaction starts clean (RFC 5321 4.1.4) */
	expect(h, "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n.\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	       "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h->msg.ret, SMTP_RET_NONE);
	assert_false(h->msg.has_envid);
	assert_false(h->msg.smtputf8);
	assert_int_equal(h->msg.body_type, SMTP_BODY_7BIT);
	assert_string_equal(h->msg.mail_from, "");
	assert_int_equal(h->msg.notify[0], 0);
}

/* ---- relay policy (G5) ---- */

struct relay_case {
	bool trusted;
	bool authenticated;
	const char *rcpt;
	bool accepted;
};

static const struct relay_case relay_cases[] = {
    {false, false, "x@example.org", true},	{false, false, "x@EXAMPLE.Org", true},
    {false, false, "x@relay.example", true},	{false, false, "x@other.example", false},
    {false, false, "x@sub.example.org", false}, {false, false, "x@example.org.evil", false},
    {false, false, "x@[192.0.2.1]", false},	{false, false, "postmaster", true},
    {true, false, "x@other.example", true},	{true, false, "x@[192.0.2.1]", true},
    {false, true, "x@other.example", true},
};

static void
test_relay_policy(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(relay_cases) / sizeof(relay_cases[0]); i++) {
		const struct relay_case *c = &relay_cases[i];
		struct harness hh;
		char script[256], want[256];

		h_setup(&hh);
		hh.client.trusted = c->trusted;
		hh.client.tls_active = true;
		assert_int_equal(h_start(&hh), 0);
		h_play(&hh, "EHLO c.example\r\n");
		if (c->authenticated) {
			/* AUTH PLAIN \0user\0pass */
			h_play(&hh, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
			assert_int_equal(hh.auth_events, 1);
		}
		h_reset_transcript(&hh);
		snprintf(script, sizeof(script), "MAIL FROM:<a@b.example>\r\nRCPT TO:<%s>\r\n",
			 c->rcpt);
		if (c->accepted)
			snprintf(want, sizeof(want), "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
		else
			snprintf(want, sizeof(want),
				 "250 2.1.0 Ok\r\n554 5.7.1 <%s>: Relay access denied\r\n",
				 c->rcpt);
		h_play(&hh, script);
		if (strcmp(hh.out, want) != 0)
			fail_msg("relay case %zu: %s\n got: %s", i, c->rcpt, hh.out);
		assert_int_equal(hh.counters.relay_denied, c->accepted ? 0 : 1);
		h_teardown(&hh);
	}
}

static void
test_too_many_recipients(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h,
	       "EHLO c.example\r\nMAIL FROM:<>\r\n"
	       "RCPT TO:<1@example.org>\r\nRCPT TO:<2@example.org>\r\nRCPT TO:<3@example.org>\r\n"
	       "RCPT TO:<4@example.org>\r\nRCPT TO:<5@example.org>\r\nRCPT TO:<6@example.org>\r\n"
	       "RCPT TO:<7@example.org>\r\nDATA\r\n.\r\n",
	       EHLO_REPLY "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
			  "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n"
			  "452 4.5.3 Too many recipients\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
			  "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h->msg.n_rcpts, 5);
	assert_int_equal(h->counters.too_many_rcpts, 2);
	assert_false(h->closed);
}

static void
test_too_many_errors(void **state)
{
	struct harness *h = *state;

	h->cfg.max_errors = 3;
	start(h);
	size_t n = h_play(h, "FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
	assert_int_equal(n, 15); /* the NOOP is never read */
	assert_string_equal(h->out, "500 5.5.2 Error: command not recognized\r\n"
				    "500 5.5.2 Error: command not recognized\r\n"
				    "500 5.5.2 Error: command not recognized\r\n"
				    "421 4.7.0 mx.example.org Error: too many errors\r\n");
	assert_true(h->closed);
	assert_int_equal(h->counters.too_many_errors, 1);
	assert_int_equal(h->counters.bad_command, 3);
	/* closed for good */
	assert_int_equal(smtp_session_feed(h->s, "NOOP\r\n", 6), 0);
}

/* ---- DATA bodies: dot-stuffing, CR/LF smuggling ---- */

struct body_case {
	const char *data;   /* bytes after "DATA\r\n" up to the end of the script */
	bool ended;	    /* a message event happened */
	const char *stored; /* body as stored, when ended */
	bool normalized;    /* bare CR/LF was rewritten */
};

static const struct body_case body_cases[] = {
    {".\r\n", true, "", false},
    {"a\r\n.\r\n", true, "a\r\n", false},
    {"..\r\n.\r\n", true, ".\r\n", false},
    {"...x\r\n.\r\n", true, "..x\r\n", false},
    {"a\r\n.b\r\n.\r\n", true, "a\r\nb\r\n", false},
    {"\r\n\r\n.\r\n", true, "\r\n\r\n", false},
    /* bare LF . bare LF does not end, and is stored as CRLF */
    {"a\n.\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n", true},
    /* CRLF . LF does not end: the dot is unstuffed, the LF normalized */
    {"a\r\n.\nb\r\n.\r\n", true, "a\r\n\r\nb\r\n", true},
    /* LF . CRLF does not end */
    {"a\n.\r\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n", true},
    /* bare CR variants */
    {"a\r.\rb\r\n.\r\n", true, "a\r\n.\r\nb\r\n", true},
    {"a\r\n.\rb\r\n.\r\n", true, "a\r\n\r\nb\r\n", true},
    {"a\r.\r\nb\r\n.\r\n", true, "a\r\n.\r\nb\r\n", true},
    {"a\r\r\n.\r\n", true, "a\r\n\r\n", true},
    {"a\n\r\n.\r\n", true, "a\r\n\r\n", true},
    /* none of these end */
    {"a\n.\n", false, NULL, false},
    {"a\r\n.\n", false, NULL, false},
    {"a\n.\r\n", false, NULL, false},
    {"a\r.\r", false, NULL, false},
    {"a\r\n. \r\n", false, NULL, false},
    {"a\r\n.\r\r\n", false, NULL, false},
    /* binary, NUL and 8-bit bytes pass through */
    {"\x00\xff\x01\r\n.\r\n", true, "\x00\xff\x01\r\n", false},
};

static void
test_data_bodies(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
		const struct body_case *c = &body_cases[i];
		size_t dlen =
		    (i == sizeof(body_cases) / sizeof(body_cases[0]) - 1) ? 8 : strlen(c->data);
		size_t stored_len = c->stored == NULL ? 0
				    : (i == sizeof(body_cases) / sizeof(body_cases[0]) - 1)
					? 5
					: strlen(c->stored);
		const char *pre = "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n";
		char script[256];
		size_t plen = strlen(pre);
		memcpy(script, pre, plen);
		memcpy(script + plen, c->data, dlen);

		for (size_t split = 0; split <= 3; split++) {
			struct harness hh;
			h_setup(&hh);
			assert_int_equal(h_start(&hh), 0);
			size_t n = h_play_split(&hh, script, plen + dlen, split);
			assert_int_equal(n, plen + dlen);
			if (hh.msg_events != (c->ended ? 1 : 0))
				fail_msg("body case %zu split %zu: events %d", i, split,
					 hh.msg_events);
			if (c->ended) {
				assert_int_equal(hh.msg.body_len, stored_len);
				if (memcmp(hh.msg.body, c->stored, stored_len) != 0)
					fail_msg("body case %zu: got '%s'", i, hh.msg.body);
				assert_string_equal(smtp_session_state_name(hh.s), "helo");
			} else {
				assert_true(smtp_session_in_data(hh.s));
			}
			assert_int_equal(hh.counters.bare_newline, c->ended && c->normalized);
			h_teardown(&hh);
		}
	}
}

static void
test_data_too_big(void **state)
{
	struct harness *h = *state;
	static char script[300000];

	h->cfg.max_message_size = 1000;
	start(h);
	strcpy(script, "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
	size_t n = strlen(script);
	for (int i = 0; i < 2000; i++) {
		memcpy(script + n, "0123456789abcdefghijklmnopqrstuvwxyz\r\n", 38);
		n += 38;
	}
	memcpy(script + n, ".\r\nNOOP\r\n", 10);
	n += 9;
	/* exactly at the limit is fine: 1000 bytes body */
	h_reset_transcript(h);
	assert_int_equal(h_play_split(h, script, n, 4096), n);
	assert_string_equal(h->out, "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n"
				    "250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n"
				    "250-CHUNKING\r\n250-STARTTLS\r\n250 DSN\r\n"
				    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
				    "354 End data with <CR><LF>.<CR><LF>\r\n"
				    "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
				    "250 2.0.0 Ok\r\n");
	assert_int_equal(h->msg_events, 0);
	assert_int_equal(h->counters.too_big, 1);

	/* 1000 bytes exactly: accepted */
	char *p = script;
	n = (size_t)sprintf(p, "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
	memset(p + n, 'z', 998);
	memcpy(p + n + 998, "\r\n.\r\n", 5);
	n += 1003;
	h_reset_transcript(h);
	h_play_split(h, script, n, 0);
	assert_int_equal(h->msg_events, 1);
	assert_int_equal(h->msg.body_len, 1000);
}

/* ---- BDAT (RFC 3030) ---- */

static void
test_bdat_flows(void **state)
{
	struct harness *h = *state;
	static const char chunk1[] = "Subject: x\r\n\r\n.\r\n";
	char script[512];

	start(h);
	expect(h, "EHLO c\r\n", EHLO_REPLY);
	snprintf(script, sizeof(script),
		 "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@example.org>\r\n"
		 "BDAT %zu\r\n%sBDAT 6 LAST\r\n..end\nNOOP\r\n",
		 strlen(chunk1), chunk1);
	for (size_t split = 0; split < 40; split += 3) {
		h_reset_transcript(h);
		h->msg_events = 0;
		assert_int_equal(h_play_split(h, script, strlen(script), split), strlen(script));
		assert_string_equal(h->out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
					    "250 2.0.0 17 bytes received\r\n"
					    "250 2.0.0 Ok: queued as 0123ABC\r\n250 2.0.0 Ok\r\n");
		assert_int_equal(h->msg_events, 1);
		assert_true(h->msg.chunking);
		assert_string_equal(h->msg.body, "Subject: x\r\n\r\n.\r\n..end\r\n");
	}
	assert_int_equal(h->counters.bare_newline, 14); /* one per message */

	/* BDAT 0 LAST; a CR at the end of one chunk pairs with the LF starting the next */
	expect(
	    h,
	    "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nBDAT 2\r\na\rBDAT 2\r\n\nbBDAT 0 LAST\r\n",
	    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 2 bytes received\r\n"
	    "250 2.0.0 2 bytes received\r\n250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_string_equal(h->msg.body, "a\r\nb");
	assert_int_equal(h->counters.bare_newline, 14);
	/* a trailing bare CR in the last chunk is normalized */
	expect(h, "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nBDAT 2 last\r\na\r",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_string_equal(h->msg.body, "a\r\n");
	assert_int_equal(h->counters.bare_newline, 15);
	/* BDAT 0 LAST alone: an empty message */
	expect(h, "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nBDAT 0 LAST\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h->msg.body_len, 0);
	/* DATA after BDAT in one transaction; RCPT after BDAT */
	expect(h,
	       "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nBDAT 1\r\nxDATA\r\n"
	       "RCPT TO:<y@example.org>\r\nRSET\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 1 bytes received\r\n"
	       "503 5.5.1 Error: DATA after BDAT\r\n503 5.5.1 Error: RCPT after BDAT\r\n"
	       "250 2.0.0 Ok\r\n");
	/* BDAT out of sequence: the chunk is still consumed, then refused */
	expect(h, "BDAT 6\r\nQUIT\r\nNOOP\r\n",
	       "503 5.5.1 Error: need MAIL command\r\n"
	       "250 2.0.0 Ok\r\n");
	expect(h, "MAIL FROM:<>\r\nBDAT 4 LAST\r\nRSETRSET\r\n",
	       "250 2.1.0 Ok\r\n503 5.5.1 Error: need RCPT command\r\n250 2.0.0 Ok\r\n");
	assert_false(h->closed);
}

static void
test_bdat_size(void **state)
{
	struct harness *h = *state;
	static char script[4096];

	h->cfg.max_message_size = 100;
	start(h);
	h_play(h, "EHLO c\r\n");
	/* over the budget: consumed, refused at once, the transaction is gone */
	size_t n = (size_t)sprintf(script,
				   "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\n"
				   "BDAT 60\r\n%060d"
				   "BDAT 60\r\n%060d"
				   "BDAT 1 LAST\r\nx"
				   "NOOP\r\n",
				   0, 0);
	h_reset_transcript(h);
	assert_int_equal(h_play_split(h, script, n, 0), n);
	assert_string_equal(h->out,
			    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 60 bytes received\r\n"
			    "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
			    "503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n");
	assert_int_equal(h->counters.too_big, 1);
	/* a huge claimed chunk allocates nothing up front and is simply counted down */
	h_reset_transcript(h);
	assert_int_equal(smtp_session_feed(h->s,
					   "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\n"
					   "BDAT 18446744073709551615\r\nabc",
					   70),
			 70);
	assert_true(smtp_session_in_data(h->s));
	/* the session waits in the chunk; the data timer applies */
	smtp_session_timeout(h->s);
	h_drain(h);
	assert_string_equal(h->out, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
				    "421 4.4.2 mx.example.org Error: timeout exceeded\r\n");
}

static void
test_bdat_bad_syntax_closes(void **state)
{
	static const char *const bad[] = {
	    "BDAT\r\n",
	    "BDAT x\r\n",
	    "BDAT 1x\r\n",
	    "BDAT -1\r\n",
	    "BDAT 18446744073709551616\r\n",
	    "BDAT 5 LASTX\r\n",
	    "BDAT 5 LAST more\r\n",
	    "BDAT 123456789012345678901\r\n",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct harness hh;
		h_setup(&hh);
		assert_int_equal(h_start(&hh), 0);
		h_play(&hh, "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\n");
		h_reset_transcript(&hh);
		h_play(&hh, bad[i]);
		if (strcmp(hh.out, "501 5.5.4 Syntax: BDAT count [LAST]\r\n") != 0 || !hh.closed)
			fail_msg("case %zu: %s got %s", i, bad[i], hh.out);
		h_teardown(&hh);
	}
}

/* ---- STARTTLS (RFC 3207) ---- */

static void
test_starttls_pipelined_injection(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h, "EHLO c.example\r\n", EHLO_REPLY);
	/* CVE-2011-0411: the MAIL pipelined after STARTTLS must not be executed */
	h_reset_transcript(h);
	const char *script = "STARTTLS\r\nMAIL FROM:<x@evil.example>\r\n";
	size_t n = smtp_session_feed(h->s, script, strlen(script));
	assert_int_equal(n, strlen("STARTTLS\r\n"));
	struct smtp_event ev;
	assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_STARTTLS);
	/* feeding more while the event is pending consumes nothing */
	assert_int_equal(smtp_session_feed(h->s, script + n, strlen(script) - n), 0);
	h_drain(h);
	assert_string_equal(h->out, "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(smtp_session_tls_done(h->s, 1), 0);
	assert_int_equal(smtp_session_tls_done(h->s, 1), -EINVAL);
	/* fresh state: no EHLO, no envelope (RFC 3207 4.2) */
	expect(h, "MAIL FROM:<x@b.example>\r\n", "503 5.5.1 Error: send HELO/EHLO first\r\n");
	expect(h, "EHLO c.example\r\n", EHLO_REPLY_TLS);
	expect(h, "STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n");
	assert_int_equal(h->counters.messages, 0);
}

static void
test_starttls_harness_discard(void **state)
{
	struct harness *h = *state;

	start(h);
	/* split at every boundary, the glue-side discard always drops the same bytes */
	const char *script =
	    "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<y@z>\r\n";
	for (size_t split = 1; split <= strlen(script); split++) {
		struct harness hh;
		h_setup(&hh);
		assert_int_equal(h_start(&hh), 0);
		size_t n = h_play_split(&hh, script, strlen(script), split);
		assert_int_equal(n, strlen("EHLO c\r\nSTARTTLS\r\n"));
		assert_int_equal(hh.starttls_events, 1);
		assert_string_equal(hh.out, GREETING EHLO_REPLY "220 2.0.0 Ready to start TLS\r\n");
		h_teardown(&hh);
	}
	(void)h;
}

static void
test_starttls_fail_and_unavailable(void **state)
{
	struct harness *h = *state;

	h->pol.tls_ok = 0;
	start(h);
	expect(h, "STARTTLS extra\r\n", "501 5.5.4 Syntax: STARTTLS\r\n");
	expect(h, "STARTTLS\r\nNOOP\r\n", "220 2.0.0 Ready to start TLS\r\n");
	assert_true(h->closed);
	assert_int_equal(h->counters.tls_failed, 1);

	struct harness hh;
	h_setup(&hh);
	hh.cfg.tls_available = false;
	assert_int_equal(h_start(&hh), 0);
	h_drain(&hh);
	h_reset_transcript(&hh);
	h_play(&hh, "EHLO c\r\nSTARTTLS\r\n");
	assert_string_equal(hh.out, EHLO_REPLY_PLAIN "250 DSN\r\n"
						     "502 5.5.1 Error: STARTTLS not available\r\n");
	h_teardown(&hh);
}

/* ---- the MAIL FROM policy hook (sender_permissions_file, quotas) ---- */

struct mail_hook_seen {
	int calls;
	char user[SMTP_AUTH_FIELD_MAX + 1];
	bool had_user;
	char from[SMTP_PATH_MAX];
};

/* Refuses any sender starting with "bad" (553, as a sender denial) and "full" (450 quota). */
static void
mail_hook(void *arg, const char *auth_user, const char *mail_from, struct smtp_mail_verdict *v)
{
	struct mail_hook_seen *seen = arg;
	seen->calls++;
	seen->had_user = auth_user != NULL;
	snprintf(seen->user, sizeof(seen->user), "%s", auth_user ? auth_user : "");
	snprintf(seen->from, sizeof(seen->from), "%s", mail_from);
	if (strncmp(mail_from, "bad", 3) == 0) {
		v->code = 553;
		v->reason = SMTP_MAIL_SENDER_DENIED;
		snprintf(v->enh, sizeof(v->enh), "5.7.1");
		snprintf(v->text, sizeof(v->text), "<%s>: Sender address rejected: not owned by user x",
			 mail_from);
	} else if (strncmp(mail_from, "full", 4) == 0) {
		v->code = 450;
		v->reason = SMTP_MAIL_OVER_QUOTA;
		snprintf(v->enh, sizeof(v->enh), "4.7.1");
		snprintf(v->text, sizeof(v->text), "quota \x01reached");
	} else if (strncmp(mail_from, "weird", 5) == 0) {
		v->code = 250; /* a broken hook: never becomes a success */
		snprintf(v->text, sizeof(v->text), "no");
	}
}

static void
test_mail_check_hook(void **state)
{
	struct harness *h = *state;
	struct mail_hook_seen seen = {0};
	h->cfg.mail_check = mail_hook;
	h->client.check_arg = &seen;
	start(h);
	expect(h, "EHLO c\r\nMAIL FROM:<ok@x.example>\r\n", EHLO_REPLY "250 2.1.0 Ok\r\n");
	assert_int_equal(seen.calls, 1);
	assert_false(seen.had_user);
	assert_string_equal(seen.from, "ok@x.example");
	expect(h, "RSET\r\nMAIL FROM:<bad@x.example>\r\n",
	       "250 2.0.0 Ok\r\n553 5.7.1 <bad@x.example>: Sender address rejected: not owned by "
	       "user x\r\n");
	assert_int_equal(h->counters.sender_denied, 1);
	/* the refused MAIL opened no transaction */
	expect(h, "RCPT TO:<a@example.org>\r\n", "503 5.5.1 Error: need MAIL command\r\n");
	expect(h, "MAIL FROM:<full@x.example>\r\n", "450 4.7.1 quota ?reached\r\n");
	assert_int_equal(h->counters.over_quota, 1);
	expect(h, "MAIL FROM:<weird@x.example>\r\n", "451 no\r\n");
	/* <> reaches the hook as "" */
	expect(h, "MAIL FROM:<>\r\n", "250 2.1.0 Ok\r\n");
	assert_string_equal(seen.from, "");
	/* a syntax error is answered before the hook is asked */
	int before = seen.calls;
	expect(h, "RSET\r\nMAIL FROM:<bad@x.example> FOO=1\r\n",
	       "250 2.0.0 Ok\r\n555 5.5.4 Unsupported parameter\r\n");
	assert_int_equal(seen.calls, before);
}

/* ---- AUTH (RFC 4954, RFC 4616) ---- */

static void
test_auth_requires_tls(void **state)
{
	struct harness *h = *state;

	start(h);
	expect(h, "EHLO c\r\n", EHLO_REPLY); /* no AUTH offered in clear text */
	expect(h, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n",
	       "530 5.7.0 Must issue a STARTTLS command first\r\n");
	assert_int_equal(h->auth_events, 0);

	struct harness hh;
	h_setup(&hh);
	hh.cfg.auth_available = false;
	hh.client.tls_active = true;
	assert_int_equal(h_start(&hh), 0);
	h_drain(&hh);
	h_reset_transcript(&hh);
	h_play(&hh, "EHLO c\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n");
	assert_string_equal(hh.out,
			    EHLO_REPLY_PLAIN "250 DSN\r\n"
					     "504 5.5.4 Error: authentication not available\r\n");
	h_teardown(&hh);
}

static void
test_auth_plain(void **state)
{
	struct harness *h = *state;

	start(h);
	/* after STARTTLS, AUTH appears */
	expect(h, "EHLO c\r\nSTARTTLS\r\n", EHLO_REPLY "220 2.0.0 Ready to start TLS\r\n");
	expect(h, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", "503 5.5.1 Error: send EHLO first\r\n");
	expect(h, "EHLO c\r\n", EHLO_REPLY_TLS);
	/* initial response: authzid "admin", user "user", password "pass" */
	h->pol.auth_ok = 0;
	expect(h, "AUTH PLAIN YWRtaW4AdXNlcgBwYXNz\r\n",
	       "535 5.7.8 Authentication credentials invalid\r\n");
	assert_string_equal(h->auth_mech, "PLAIN");
	assert_string_equal(h->auth_authzid, "admin");
	assert_string_equal(h->auth_user, "user");
	assert_string_equal(h->auth_pass, "pass");
	assert_int_equal(h->counters.auth_failed, 1);
	/* continuation form */
	h->pol.auth_ok = 1;
	expect(h, "auth plain\r\n", "334 \r\n");
	expect(h, "AHVzZXIAcGFzcw==\r\n", "235 2.7.0 Authentication successful\r\n");
	assert_string_equal(h->auth_authzid, "");
	assert_int_equal(h->auth_events, 2);
	expect(h, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n", "503 5.5.1 Error: already authenticated\r\n");
	/* the envelope carries the user; relaying anywhere is allowed */
	expect(h, "MAIL FROM:<user@b.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n.\r\n",
	       "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
	       "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_true(h->msg.has_auth_user);
	assert_string_equal(h->msg.auth_user, "user");
	assert_true(h->msg.tls);
}

struct auth_err_case {
	const char *script;
	const char *transcript;
};

static const struct auth_err_case auth_err_cases[] = {
    {"AUTH PLAIN\r\n*\r\n", "334 \r\n501 5.0.0 Authentication cancelled\r\n"},
    {"AUTH PLAIN\r\n!!!!\r\n", "334 \r\n501 5.5.2 Cannot decode response\r\n"},
    {"AUTH PLAIN\r\nAHVzZXIAcGFzcw\r\n", "334 \r\n501 5.5.2 Cannot decode response\r\n"},
    {"AUTH PLAIN\r\nAHVz=XIAcGFzcw==\r\n", "334 \r\n501 5.5.2 Cannot decode response\r\n"},
    {"AUTH PLAIN\r\n\r\n", "334 \r\n501 5.5.2 Invalid PLAIN response\r\n"},
    {"AUTH PLAIN =\r\n", "501 5.5.2 Invalid PLAIN response\r\n"},
    /* "user\0pass" (one NUL only) */
    {"AUTH PLAIN dXNlcgBwYXNz\r\n", "501 5.5.2 Invalid PLAIN response\r\n"},
    /* "\0\0pass" (empty user) */
    {"AUTH PLAIN AABwYXNz\r\n", "501 5.5.2 Invalid PLAIN response\r\n"},
    /* "\0user\0" (empty password) */
    {"AUTH PLAIN AHVzZXIA\r\n", "501 5.5.2 Invalid PLAIN response\r\n"},
    /* "\0u\0p\0x" (extra NUL) */
    {"AUTH PLAIN AHUAcAB4\r\n", "501 5.5.2 Invalid PLAIN response\r\n"},
    {"AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type\r\n"},
    {"AUTH PLAIN a b\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"},
    {"AUTH LOGIN\r\n*\r\n", "334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n"},
    {"AUTH LOGIN\r\ndXNlcg==\r\n*\r\n",
     "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n501 5.0.0 Authentication cancelled\r\n"},
    {"AUTH LOGIN\r\nAA==\r\n", "334 VXNlcm5hbWU6\r\n501 5.5.2 Invalid LOGIN response\r\n"},
    {"MAIL FROM:<>\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n",
     "250 2.1.0 Ok\r\n503 5.5.1 Error: AUTH not permitted in a transaction\r\n"},
};

static void
test_auth_errors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(auth_err_cases) / sizeof(auth_err_cases[0]); i++) {
		struct harness hh;
		h_setup(&hh);
		hh.client.tls_active = true;
		assert_int_equal(h_start(&hh), 0);
		h_play(&hh, "EHLO c\r\n");
		h_reset_transcript(&hh);
		h_play(&hh, auth_err_cases[i].script);
		if (strcmp(hh.out, auth_err_cases[i].transcript) != 0)
			fail_msg("auth case %zu: got %s", i, hh.out);
		assert_int_equal(hh.auth_events, 0);
		/* the session is back in command mode */
		h_reset_transcript(&hh);
		h_play(&hh, "NOOP\r\n");
		assert_string_equal(hh.out, "250 2.0.0 Ok\r\n");
		h_teardown(&hh);
	}
}

static void
test_auth_login(void **state)
{
	struct harness *h = *state;

	h->client.tls_active = true;
	start(h);
	expect(h, "EHLO c\r\n", EHLO_REPLY_TLS);
	expect(h, "AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n");
	assert_string_equal(smtp_session_state_name(h->s), "auth-login-user");
	expect(h, "dXNlcg==\r\n", "334 UGFzc3dvcmQ6\r\n");
	h->pol.auth_ok = 0;
	expect(h, "cGFzcw==\r\n", "535 5.7.8 Authentication credentials invalid\r\n");
	assert_string_equal(h->auth_mech, "LOGIN");
	assert_string_equal(h->auth_user, "user");
	assert_string_equal(h->auth_pass, "pass");
	/* initial-response form of LOGIN */
	h->pol.auth_ok = 1;
	expect(h, "AUTH LOGIN dXNlcg==\r\ncGFzcw==\r\n",
	       "334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n");
	/* over-long continuation line: refused and the exchange ends */
	struct harness hh;
	char line[SMTP_AUTH_LINE_MAX + 16];
	h_setup(&hh);
	hh.client.tls_active = true;
	assert_int_equal(h_start(&hh), 0);
	h_play(&hh, "EHLO c\r\nAUTH LOGIN\r\n");
	memset(line, 'Q', sizeof(line));
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	h_reset_transcript(&hh);
	h_play(&hh, line);
	assert_string_equal(hh.out, "500 5.5.2 Error: line too long\r\n");
	assert_string_equal(smtp_session_state_name(hh.s), "helo");
	h_teardown(&hh);
}

/* AUTH material never shows in the trace hook. */
static char trace_log[8192];

static void
trace_cb(void *arg, const struct smtp_session *s, const char *from, const char *to)
{
	size_t n = strlen(trace_log);
	snprintf(trace_log + n, sizeof(trace_log) - n, "%s>%s ", from, to);
	(*(int *)arg)++;
}

static void
test_trace_hook(void **state)
{
	struct harness *h = *state;
	int calls = 0;

	trace_log[0] = '\0';
	h->cfg.trace_cb = trace_cb;
	h->cfg.trace_arg = &calls;
	h->client.tls_active = true;
	start(h);
	h_play(h, "EHLO c\r\nAUTH PLAIN\r\nAHVzZXIAcGFzcw==\r\nMAIL FROM:<>\r\n"
		  "RCPT TO:<x@example.org>\r\nDATA\r\n.\r\nQUIT\r\n");
	assert_string_equal(trace_log, "greeted>helo helo>auth-plain auth-plain>auth-wait "
				       "auth-wait>helo helo>mail mail>rcpt rcpt>data "
				       "data>message-wait message-wait>helo helo>closed ");
	assert_int_equal(calls, 10);
	assert_null(strstr(trace_log, "pass"));
}

/* ---- event results, timeouts, shutdown ---- */

static void
test_message_result_format(void **state)
{
	struct harness *h = *state;
	char longtext[400];

	start(h);
	h_play(h, "EHLO c\r\n");
	const char *msg = "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n.\r\n";
	const char *pre = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n";
	struct {
		int code;
		const char *enh, *text, *want;
	} cases[] = {
	    {451, "4.3.0", "Cluster unavailable, try again later",
	     "451 4.3.0 Cluster unavailable, try again later\r\n"},
	    {250, "2.0.0", "Ok: queued as 0123ABC", "250 2.0.0 Ok: queued as 0123ABC\r\n"},
	    {554, "2.0.0", "bad class", "554 5.0.0 bad class\r\n"},
	    {451, "4.3", "short", "451 4.0.0 short\r\n"},
	    {451, "4.3.0000", "long", "451 4.0.0 long\r\n"},
	    {250, NULL, NULL, "250 2.0.0 Ok\r\n"},
	    {550, "5.7.1", "line\r\n250 injected", "550 5.7.1 line??250 injected\r\n"},
	    {250, "2.6.0", longtext, NULL},
	};
	memset(longtext, 'x', sizeof(longtext) - 1);
	longtext[sizeof(longtext) - 1] = '\0';
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		h_reset_transcript(h);
		assert_int_equal(smtp_session_feed(h->s, msg, strlen(msg)), strlen(msg));
		struct smtp_event ev;
		assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_MESSAGE);
		assert_int_equal(smtp_session_message_result(h->s, 300, "3.0.0", "x"), -EINVAL);
		assert_int_equal(smtp_session_message_result(h->s, 99, "3.0.0", "x"), -EINVAL);
		assert_int_equal(smtp_session_auth_result(h->s, 1), -EINVAL);
		assert_int_equal(
		    smtp_session_message_result(h->s, cases[i].code, cases[i].enh, cases[i].text),
		    0);
		h_drain(h);
		assert_memory_equal(h->out, pre, strlen(pre));
		const char *got = h->out + strlen(pre);
		if (cases[i].want != NULL) {
			assert_string_equal(got, cases[i].want);
		} else {
			assert_int_equal(strlen(got), 4 + 6 + SMTP_REPLY_TEXT_MAX + 2);
			assert_memory_equal(got, "250 2.6.0 xxx", 13);
		}
	}
	assert_int_equal(smtp_session_message_result(h->s, 250, "2.0.0", "x"), -EINVAL);
}

static void
test_timeout_and_shutdown(void **state)
{
	struct harness *h = *state;

	start(h);
	h_play(h, "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\npartial");
	assert_true(smtp_session_in_data(h->s));
	h_reset_transcript(h);
	smtp_session_timeout(h->s);
	smtp_session_timeout(h->s);
	smtp_session_shutdown(h->s);
	h_drain(h);
	assert_string_equal(h->out, "421 4.4.2 mx.example.org Error: timeout exceeded\r\n");
	struct smtp_event ev;
	assert_int_equal(smtp_session_event(h->s, &ev), SMTP_EV_CLOSE);
	assert_int_equal(h->counters.timeouts, 1);

	/* shutdown while a message is being proposed: the result goes first */
	struct harness hh;
	h_setup(&hh);
	assert_int_equal(h_start(&hh), 0);
	const char *s =
	    "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n.\r\nNOOP\r\n";
	size_t n = smtp_session_feed(hh.s, s, strlen(s));
	assert_int_equal(n, strlen(s) - 6);
	assert_false(smtp_session_in_data(hh.s));
	smtp_session_shutdown(hh.s);
	assert_int_equal(smtp_session_event(hh.s, &ev), SMTP_EV_MESSAGE);
	h_drain(&hh);
	h_reset_transcript(&hh);
	assert_int_equal(smtp_session_message_result(hh.s, 250, "2.0.0", "Ok: queued as 1"), 0);
	h_drain(&hh);
	assert_string_equal(hh.out,
			    "250 2.0.0 Ok: queued as 1\r\n421 4.3.2 Service shutting down\r\n");
	assert_int_equal(smtp_session_event(hh.s, &ev), SMTP_EV_CLOSE);
	assert_int_equal(smtp_session_feed(hh.s, "NOOP\r\n", 6), 0);
	h_teardown(&hh);
}

static void
test_output_high_water(void **state)
{
	struct harness *h = *state;
	static char script[6 * 20000 + 1];

	start(h);
	for (int i = 0; i < 20000; i++)
		memcpy(script + 6 * i, "NOOP\r\n", 6);
	size_t len = 6 * 20000;
	size_t n = smtp_session_feed(h->s, script, len);
	assert_true(n < len);
	const char *b;
	size_t ol;
	smtp_session_output(h->s, &b, &ol);
	assert_true(ol >= SMTP_OUTPUT_HIWAT);
	assert_true(ol < SMTP_OUTPUT_HIWAT + 64);
	assert_int_equal(smtp_session_feed(h->s, script + n, len - n), 0);
	/* partial drains in odd sizes, the harness feeds the rest */
	h->drain_step = 777;
	h_reset_transcript(h);
	h_play_split(h, script + n, len - n, 0);
	h_drain(h);
	assert_true(h->max_pending_out < SMTP_OUTPUT_HIWAT + 64);
	smtp_session_output(h->s, &b, &ol);
	assert_int_equal(ol, 0);
}

/* ---- Received header ---- */

static void
test_received_header(void **state)
{
	char buf[1024];
	struct smtp_received_info ri = {
	    .helo = "client.example",
	    .client_name = "mail.client.example",
	    .client_addr = "192.0.2.1",
	    .hostname = "mx.example.org",
	    .esmtp = true,
	    .queue_id = "0123ABC",
	    .rcpt = "bob@example.org",
	    .date = "Sun, 29 Nov 2026 09:00:00 +0000",
	};
	(void)state;

	int n = smtp_received_header(buf, sizeof(buf), &ri);
	const char *want = "Received: from client.example (mail.client.example [192.0.2.1])\r\n"
			   "\tby mx.example.org (relayd) with ESMTP id 0123ABC\r\n"
			   "\tfor <bob@example.org>;\r\n"
			   "\tSun, 29 Nov 2026 09:00:00 +0000\r\n";
	assert_string_equal(buf, want);
	assert_int_equal(n, strlen(want));

	struct {
		bool esmtp, tls, auth, utf8;
		const char *proto;
	} protos[] = {
	    {false, false, false, false, "with SMTP "},
	    {true, false, false, false, "with ESMTP "},
	    {true, true, false, false, "with ESMTPS "},
	    {true, false, true, false, "with ESMTPA "},
	    {true, true, true, false, "with ESMTPSA "},
	    {true, false, false, true, "with UTF8SMTP "},
	    {true, true, true, true, "with UTF8SMTPSA "},
	};
	for (size_t i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
		ri.esmtp = protos[i].esmtp;
		ri.tls = protos[i].tls;
		ri.auth = protos[i].auth;
		ri.smtputf8 = protos[i].utf8;
		assert_true(smtp_received_header(buf, sizeof(buf), &ri) > 0);
		assert_non_null(strstr(buf, protos[i].proto));
	}

	/* no rcpt (several), no queue id, no helo/name; hostile helo sanitized */
	ri = (struct smtp_received_info){
	    .helo = "evil)\r\nX-Injected: 1;(",
	    .client_addr = "IPv6:2001:db8::1",
	    .hostname = "mx.example.org",
	    .esmtp = true,
	    .date = "Sun, 29 Nov 2026 09:00:00 +0000",
	};
	n = smtp_received_header(buf, sizeof(buf), &ri);
	assert_string_equal(buf,
			    "Received: from evil___X-Injected:_1__ (unknown [IPv6:2001:db8::1])\r\n"
			    "\tby mx.example.org (relayd) with ESMTP;\r\n"
			    "\tSun, 29 Nov 2026 09:00:00 +0000\r\n");
	/* too small: every length below the full one fails */
	for (int cap = 0; cap <= n; cap++)
		assert_int_equal(smtp_received_header(buf, (size_t)cap, &ri), -ENOSPC);
	assert_int_equal(smtp_received_header(buf, (size_t)n + 1, &ri), n);
	ri.date = NULL;
	assert_int_equal(smtp_received_header(buf, sizeof(buf), &ri), -EINVAL);
}

/* ---- session creation ---- */

static void
test_new_defaults(void **state)
{
	struct smtp_session_config cfg = {0};
	struct smtp_session *s;
	const char *b;
	size_t n;
	(void)state;

	assert_int_equal(smtp_session_new(&s, NULL, NULL), -EINVAL);
	assert_int_equal(smtp_session_new(&s, &cfg, NULL), 0);
	smtp_session_output(s, &b, &n);
	assert_int_equal(n, strlen("220 localhost ESMTP relayd\r\n"));
	assert_memory_equal(b, "220 localhost ESMTP relayd\r\n", n);
	smtp_session_output_consume(s, 1000);
	assert_int_equal(smtp_session_feed(s, "EHLO x\r\n", 8), 8);
	smtp_session_output(s, &b, &n);
	char want[64];
	snprintf(want, sizeof(want), "250-SIZE %u\r\n", SMTP_MAX_MESSAGE_SIZE_DEFAULT);
	assert_non_null(memmem(b, n, want, strlen(want)));
	smtp_session_free(s);
	smtp_session_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_pipelined_batch, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_split_every_boundary, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_helo_and_simple_commands, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_nul_and_bare_cr_in_command, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_line_length, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_line_length_config, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_out_of_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_mail_params, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_addresses, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_path_too_long, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rcpt_params, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_dsn_envelope, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_relay_policy, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_too_many_recipients, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_too_many_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_data_bodies, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_data_too_big, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bdat_flows, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bdat_size, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bdat_bad_syntax_closes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_starttls_pipelined_injection, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_starttls_harness_discard, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_starttls_fail_and_unavailable, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_mail_check_hook, setup, teardown),
    cmocka_unit_test_setup_teardown(test_auth_requires_tls, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_auth_plain, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_auth_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_auth_login, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_trace_hook, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_message_result_format, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout_and_shutdown, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_output_high_water, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_received_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_new_defaults, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
