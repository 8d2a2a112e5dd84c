/*
 * cmocka_filter.h: argv[1] of a unit test runner as a cmocka test filter (argv[2], if given, as
 * its skip filter), and filters that select no test are an error.
 *
 * CTest runs some runners once per case with the case's name as a filter
 * (tests/unit/cluster/CMakeLists.txt).  cmocka runs nothing and reports success when a filter
 * matches no test, so a renamed or removed case would pass forever; relay_test_filter() makes
 * that CTest entry fail instead.  The pattern is matched like cmocka does ('*' and '?'
 * wildcards, the whole name), with fnmatch(3).
 *
 *     const struct CMUnitTest tests[] = {...};
 *     if (relay_test_filter(argc, argv, tests, sizeof(tests) / sizeof(tests[0])) != 0)
 *         return 1;
 *     return cmocka_run_group_tests(tests, NULL, NULL);
 */
#ifndef RELAY_CMOCKA_FILTER_H
#define RELAY_CMOCKA_FILTER_H

#include <fnmatch.h>
#include <stddef.h>
#include <stdio.h>

/* Sets cmocka's filter from argv[1] and skip filter from argv[2] when given; 0 when no filter
 * was given or they select at least one of tests[0..n), else -1 after saying why on stderr. */
static inline int
relay_test_filter(int argc, char **argv, const struct CMUnitTest *tests, size_t n)
{
	if (argc < 2)
		return 0;
	if (argc > 3) {
		fprintf(stderr, "usage: %s [TEST-NAME-PATTERN [SKIP-PATTERN]]\n", argv[0]);
		return -1;
	}
	const char *skip = argc > 2 ? argv[2] : NULL;
	size_t selected = 0;
	for (size_t i = 0; i < n; i++)
		selected += fnmatch(argv[1], tests[i].name, 0) == 0 &&
			    (skip == NULL || fnmatch(skip, tests[i].name, 0) != 0);
	if (selected == 0) {
		fprintf(stderr, "%s: the filter '%s' selects none of the %zu tests: a renamed case?\n",
			argv[0], argv[1], n);
		return -1;
	}
	cmocka_set_test_filter(argv[1]);
	if (skip != NULL)
		cmocka_set_skip_filter(skip);
	return 0;
}

#endif
