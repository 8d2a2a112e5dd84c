/* test_retry.c - table tests of the backoff schedule and lifetime expiry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "retry.h"

static void
test_backoff_table(void **state)
{
	struct retry_policy p = {.base = 300, .max = 4000, .lifetime = 86400, .jitter_pct = 0};
	static const struct {
		unsigned attempts;
		uint64_t want;
	} t[] = {{0, 300},  {1, 300},  {2, 600},   {3, 1200},	 {4, 2400},
		 {5, 4000}, {6, 4000}, {64, 4000}, {1000, 4000}, {~0u, 4000}};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		assert_int_equal(retry_backoff(&p, t[i].attempts, 12345), t[i].want);

	struct retry_policy huge = {.base = UINT64_MAX / 3, .max = UINT64_MAX, .lifetime = 1};
	assert_int_equal(retry_backoff(&huge, 5, 0), UINT64_MAX);
}

static void
test_jitter_bounds(void **state)
{
	struct retry_policy p = {.base = 1000, .max = 1000, .lifetime = 86400, .jitter_pct = 20};
	uint64_t lo = UINT64_MAX, hi = 0;
	for (uint64_t r = 0; r < 5000; r++) {
		uint64_t b = retry_backoff(&p, 3, r * 2654435761u);
		if (b < lo)
			lo = b;
		if (b > hi)
			hi = b;
	}
	assert_true(lo >= 800 && lo < 820);
	assert_true(hi <= 1200 && hi > 1180);
	/* same random value, same answer */
	assert_int_equal(retry_backoff(&p, 3, 99), retry_backoff(&p, 3, 99));
	struct retry_policy one = {.base = 1, .max = 1, .lifetime = 10, .jitter_pct = 50};
	for (uint64_t r = 0; r < 10; r++)
		assert_true(retry_backoff(&one, 1, r) >= 1);
}

static void
test_next_and_expiry(void **state)
{
	struct retry_policy p;
	uint64_t next = 0;
	retry_policy_default(&p);
	assert_int_equal(retry_policy_check(&p), 0);
	static const struct {
		uint64_t received, last;
		unsigned attempts;
		int want_rc;
		uint64_t want_next;
	} t[] = {
	    {1000, 1000, 1, 0, 1300},
	    {1000, 2000, 2, 0, 2600},
	    {1000, 1000 + 5 * 86400 - 10, 9, 0, 1000 + 5 * 86400}, /* capped at expiry */
	    {1000, 1000 + 5 * 86400, 9, 1, 0},			   /* over: bounce */
	    {UINT64_MAX - 5, UINT64_MAX - 5, 1, 0, UINT64_MAX},	   /* no overflow */
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		next = 0;
		int rc = retry_next(&p, t[i].received, t[i].last, t[i].attempts, 0, &next);
		assert_int_equal(rc, t[i].want_rc);
		if (rc == 0)
			assert_int_equal(next, t[i].want_next);
	}
	assert_false(retry_expired(&p, 1000, 1000 + 5 * 86400 - 1));
	assert_true(retry_expired(&p, 1000, 1000 + 5 * 86400));

	struct retry_policy bad[] = {
	    {.base = 0, .max = 10, .lifetime = 10},
	    {.base = 10, .max = 5, .lifetime = 10},
	    {.base = 10, .max = 10, .lifetime = 0},
	    {.base = 10, .max = 10, .lifetime = 10, .jitter_pct = 51},
	};
	for (size_t i = 0; i < 4; i++)
		assert_true(retry_policy_check(&bad[i]) < 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backoff_table),
	    cmocka_unit_test(test_jitter_bounds),
	    cmocka_unit_test(test_next_and_expiry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
