/*
 * clock.c - the node's monotonic and wall clocks (see clock.h).
 */
#include "clock.h"

#include <time.h>

static uint64_t
ts_ms(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000u + (uint64_t)ts->tv_nsec / 1000000u;
}

uint64_t
clock_mono_ms(void)
{
	struct timespec ts;
#ifdef CLOCK_BOOTTIME
	if (clock_gettime(CLOCK_BOOTTIME, &ts) == 0)
		return ts_ms(&ts) + 1; /* + 1: never 0, which callers use for "unset" */
#endif
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts_ms(&ts) + 1;
}

uint64_t
clock_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts_ms(&ts);
}
