/*
 * retry.h - the retry schedule of a queued delivery.
 *
 * Contract: pure arithmetic over times the caller supplies (seconds since
 * the epoch as the queue FSM carries them inside log entries); no clock, no
 * global random state.  Jitter, when enabled, comes from a random value the
 * caller draws (from a seeded PRNG in tests).
 *
 * Schedule: after the n-th failed attempt (n >= 1) the next attempt is
 *     last_attempt + min(retry_max, retry_base * 2^(n-1))      [+/- jitter]
 * and never later than the expiry time received + queue_lifetime; a message
 * whose lifetime is over is bounced (RFC 5321 4.5.4.1: retries continue
 * "until the message is transmitted or the sender gives up"; the give-up
 * time should be at least 4-5 days).
 */
#ifndef RELAY_RETRY_H
#define RELAY_RETRY_H

#include <stdbool.h>
#include <stdint.h>

/* Defaults in the spirit of RFC 5321 4.5.4.1 (30 min first retry, days of life). */
#define RETRY_BASE_DEFAULT 300u		     /* 5 minutes */
#define RETRY_MAX_DEFAULT 4000u		     /* about 67 minutes, Postfix maximal_backoff_time */
#define RETRY_LIFETIME_DEFAULT (5u * 86400u) /* 5 days */
#define RETRY_JITTER_MAX_PCT 50u	     /* jitter is capped at +/-50% of the backoff */

struct retry_policy {
	uint64_t base;	     /* seconds, > 0 */
	uint64_t max;	     /* seconds, >= base */
	uint64_t lifetime;   /* seconds a message may stay queued */
	unsigned jitter_pct; /* 0..RETRY_JITTER_MAX_PCT: spread of the backoff */
};

/* Fill p with the defaults above (no jitter). */
void retry_policy_default(struct retry_policy *p);

/* 0, or -EINVAL when base is 0, max < base, lifetime is 0 or jitter too big. */
int retry_policy_check(const struct retry_policy *p);

/*
 * Backoff after `attempts` failed attempts (attempts 0 is treated as 1):
 * base * 2^(attempts-1) capped at max, then spread by jitter: the result is
 * uniform-ish in [b - b*j/100, b + b*j/100] using rnd, and never below 1.
 */
uint64_t retry_backoff(const struct retry_policy *p, unsigned attempts, uint64_t rnd);

/* True when the message received at `received` must be bounced at `now`. */
bool retry_expired(const struct retry_policy *p, uint64_t received, uint64_t now);

/*
 * Next attempt time after a failed attempt at `last` (the attempts-th).
 * Returns 0 and sets *next, or 1 when the lifetime is over at `last` (the
 * caller bounces with the last temporary reply, RFC 3464 status 4.x.x turned
 * into a permanent "failed" action).  *next is capped at the expiry time:
 * the scheduler wakes then, finds retry_expired() true and bounces at once
 * instead of after a long backoff.  `last` is normally the time of the failed
 * attempt; passing `received` gives a schedule counted from arrival.
 */
int retry_next(const struct retry_policy *p, uint64_t received, uint64_t last, unsigned attempts,
	       uint64_t rnd, uint64_t *next);

#endif
