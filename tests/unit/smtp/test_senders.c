/*
 * test_senders.c: the sender permission table (node/smtp/senders.c): the file grammar, its
 * errors, and who may send as whom (issue 13 part 1).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "senders.h"

static struct sender_table *
parse_ok(const char *text)
{
	struct sender_table *t = NULL;
	char err[256] = "";
	int rc = sender_table_parse(text, strlen(text), &t, err, sizeof(err));
	if (rc != 0)
		fail_msg("parse failed: %s", err);
	return t;
}

static void
parse_err(const char *text, const char *want)
{
	struct sender_table *t = NULL;
	char err[256] = "";
	assert_int_equal(sender_table_parse(text, strlen(text), &t, err, sizeof(err)), -1);
	assert_null(t);
	if (strstr(err, want) == NULL)
		fail_msg("error '%s' lacks '%s'", err, want);
}

static void
test_policy(void **state)
{
	(void)state;
	struct sender_table *t = parse_ok("# who may send as whom\n"
					  "alice: alice@example.com, @sales.example.com\n"
					  "\n"
					  "  bob :Bob@Example.COM\r\n"
					  "relay: *\n"
					  "alice: alice@example.org\n"
					  "carol: carol@a.example carol@b.example,carol@c.example\n");
	assert_int_equal(sender_table_users(t), 4);
	assert_int_equal(sender_table_patterns(t), 8);
	/* full addresses, any case */
	assert_true(sender_table_allows(t, "alice", "alice@example.com"));
	assert_true(sender_table_allows(t, "alice", "ALICE@EXAMPLE.COM"));
	assert_true(sender_table_allows(t, "bob", "bob@example.com"));
	/* a second line for a user adds to the first */
	assert_true(sender_table_allows(t, "alice", "alice@example.org"));
	/* @domain: any local part in that domain, not a subdomain or a suffix */
	assert_true(sender_table_allows(t, "alice", "anyone@sales.example.com"));
	assert_true(sender_table_allows(t, "alice", "x@SALES.example.com"));
	assert_false(sender_table_allows(t, "alice", "x@eu.sales.example.com"));
	assert_false(sender_table_allows(t, "alice", "x@presales.example.com"));
	assert_false(sender_table_allows(t, "alice", "bob@example.com"));
	/* blanks and commas both separate */
	assert_true(sender_table_allows(t, "carol", "carol@b.example"));
	assert_true(sender_table_allows(t, "carol", "carol@c.example"));
	/* <> only with "*" */
	assert_false(sender_table_allows(t, "alice", ""));
	assert_true(sender_table_allows(t, "relay", ""));
	assert_true(sender_table_allows(t, "relay", "anything@anywhere.example"));
	/* a user not in the table may send as nobody; user names are case-sensitive */
	assert_false(sender_table_allows(t, "mallory", "alice@example.com"));
	assert_false(sender_table_allows(t, "Alice", "alice@example.com"));
	assert_false(sender_table_allows(t, NULL, "alice@example.com"));
	/* an address pattern does not match a longer address */
	assert_false(sender_table_allows(t, "bob", "xbob@example.com"));
	assert_false(sender_table_allows(t, "bob", "bob@example.com.evil"));
	sender_table_free(t);

	/* an empty file: nobody may send */
	t = parse_ok("# nobody\n");
	assert_int_equal(sender_table_users(t), 0);
	assert_false(sender_table_allows(t, "alice", "alice@example.com"));
	sender_table_free(t);
}

static void
test_errors(void **state)
{
	(void)state;
	parse_err("alice alice@example.com\n", "1: expected 'user: pattern");
	parse_err("ok: a@b.example\n: a@b.example\n", "2: expected");
	parse_err("al ice: a@b.example\n", "1: expected");
	parse_err("alice:\n", "1: user 'alice' has no pattern");
	parse_err("alice: , ,\n", "has no pattern");
	parse_err("alice: alice\n", "1: bad pattern 'alice'");
	parse_err("alice: alice@\n", "bad pattern");
	parse_err("alice: <alice@example.com>\n", "bad pattern");
	parse_err("alice: a@exa mple.com\n", "bad pattern 'mple.com'");
	parse_err("alice: a@ex/ample.com\n", "bad pattern");
	parse_err("alice: **\n", "bad pattern");
	/* a NUL byte */
	struct sender_table *t = NULL;
	char err[256];
	assert_int_equal(sender_table_parse("a: x@y.example\n\0b: *\n", 20, &t, err, sizeof(err)),
			 -1);
	assert_non_null(strstr(err, "2: NUL byte"));
	/* an overlong line */
	size_t n = SENDERS_LINE_MAX + 20;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'a', n);
	memcpy(big, "u: ", 3);
	big[n] = '\0';
	parse_err(big, "1: line longer than");
	free(big);
}

static void
test_load(void **state)
{
	(void)state;
	char path[] = "/tmp/test_senders.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "alice: @example.com\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	struct sender_table *t = NULL;
	char err[256] = "";
	assert_int_equal(sender_table_load(path, &t, err, sizeof(err)), 0);
	assert_true(sender_table_allows(t, "alice", "a@example.com"));
	sender_table_free(t);
	unlink(path);
	t = NULL;
	assert_int_equal(sender_table_load(path, &t, err, sizeof(err)), -1);
	assert_null(t);
	assert_non_null(strstr(err, "sender_permissions_file: /tmp/test_senders."));
	assert_non_null(strstr(err, "No such file"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_policy),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_load),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
