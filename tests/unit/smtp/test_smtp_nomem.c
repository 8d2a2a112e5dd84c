/*
 * test_smtp_nomem.c: allocation failures inside the SMTP session machine.
 *
 * Linked with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc (tests/unit/smtp/CMakeLists.txt), so the
 * calls made by relay_smtp and by this file go through the wrappers below; cmocka, being a
 * shared library, is unaffected.  A failure is armed for the next call whose size falls in a
 * window, which singles out one buffer (body growth, recipient array, line buffer).
 * STYLE: never abort on ENOMEM from a peer-controlled size; answer 451 4.3.0.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "smtp_harness.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);

static size_t fail_min, fail_max; /* armed when fail_max != 0 */
static int fail_nth;		  /* armed when > 0: fail the nth call from now */
static int failures;

static bool
should_fail(size_t n)
{
	if (fail_nth > 0 && --fail_nth == 0) {
		failures++;
		return true;
	}
	if (fail_max != 0 && n >= fail_min && n <= fail_max) {
		fail_max = 0;
		failures++;
		return true;
	}
	return false;
}

void *
__wrap_malloc(size_t n)
{
	return should_fail(n) ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t a, size_t b)
{
	return should_fail(a * b) ? NULL : __real_calloc(a, b);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return should_fail(n) ? NULL : __real_realloc(p, n);
}

static void
arm(size_t min, size_t max)
{
	fail_min = min;
	fail_max = max;
	failures = 0;
}

static void
test_new_nomem(void **state)
{
	struct smtp_session_config cfg = {.hostname = "mx.example.org"};
	struct smtp_session *s = NULL;
	(void)state;

	/* the session object, the line buffer, the output buffer */
	for (int i = 1; i <= 3; i++) {
		failures = 0;
		fail_nth = i;
		assert_int_equal(smtp_session_new(&s, &cfg, NULL), -ENOMEM);
		assert_int_equal(failures, 1);
	}
	fail_nth = 0;
	assert_int_equal(smtp_session_new(&s, &cfg, NULL), 0);
	smtp_session_free(s);
}

static void
test_body_nomem(void **state)
{
	struct harness h;
	static char script[20000];
	(void)state;

	h_setup(&h);
	assert_int_equal(h_start(&h), 0);
	h_play(&h, "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n");
	h_reset_transcript(&h);
	memset(script, 'b', 10000);
	memcpy(script + 10000, "\r\n.\r\nNOOP\r\n", 12);
	arm(8192, SIZE_MAX); /* the first growth (4096) works, the second fails */
	h_play(&h, script);
	assert_int_equal(failures, 1);
	assert_string_equal(h.out, "451 4.3.0 Insufficient system resources\r\n250 2.0.0 Ok\r\n");
	assert_int_equal(h.msg_events, 0);
	assert_int_equal(h.counters.nomem, 1);

	/* the same through BDAT, failure reported at LAST */
	h_reset_transcript(&h);
	h_play(&h, "MAIL FROM:<>\r\nRCPT TO:<x@example.org>\r\n");
	arm(8192, SIZE_MAX);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "BDAT 10000\r\n");
	h_play_split(&h, cmd, strlen(cmd), 0);
	h_play_split(&h, script, 10000, 0);
	h_play(&h, "BDAT 0 LAST\r\n");
	assert_string_equal(h.out,
			    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 10000 bytes received\r\n"
			    "451 4.3.0 Insufficient system resources\r\n");
	assert_int_equal(h.counters.nomem, 2);
	h_teardown(&h);
}

static void
test_rcpt_nomem(void **state)
{
	struct harness h;
	(void)state;

	h_setup(&h);
	assert_int_equal(h_start(&h), 0);
	h_play(&h, "EHLO c\r\nMAIL FROM:<>\r\n");
	h_reset_transcript(&h);
	arm(4 * sizeof(struct smtp_rcpt), 4 * sizeof(struct smtp_rcpt)); /* the recipient array */
	h_play(&h, "RCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org>\r\nDATA\r\n.\r\n");
	assert_int_equal(failures, 1);
	assert_string_equal(h.out, "451 4.3.0 Insufficient system resources\r\n250 2.1.5 Ok\r\n"
				   "354 End data with <CR><LF>.<CR><LF>\r\n"
				   "250 2.0.0 Ok: queued as 0123ABC\r\n");
	assert_int_equal(h.msg.n_rcpts, 1);
	assert_string_equal(h.msg.rcpt[0], "y@example.org");
	h_teardown(&h);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_nomem),
	    cmocka_unit_test(test_body_nomem),
	    cmocka_unit_test(test_rcpt_nomem),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
