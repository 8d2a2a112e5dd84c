/*
 * retry.c - exponential backoff with a cap, optional jitter and a lifetime.
 * Pure; see retry.h.  Every multiplication is guarded against overflow.
 */
#include "retry.h"

#include <errno.h>

void
retry_policy_default(struct retry_policy *p)
{
	p->base = RETRY_BASE_DEFAULT;
	p->max = RETRY_MAX_DEFAULT;
	p->lifetime = RETRY_LIFETIME_DEFAULT;
	p->jitter_pct = 0;
}

int
retry_policy_check(const struct retry_policy *p)
{
	if (p->base == 0 || p->max < p->base || p->lifetime == 0 ||
	    p->jitter_pct > RETRY_JITTER_MAX_PCT)
		return -EINVAL;
	return 0;
}

uint64_t
retry_backoff(const struct retry_policy *p, unsigned attempts, uint64_t rnd)
{
	uint64_t b = p->base;

	if (attempts == 0)
		attempts = 1;
	for (unsigned i = 1; i < attempts && b < p->max; i++)
		b = b > p->max / 2 ? p->max : b * 2;
	if (b > p->max)
		b = p->max;
	if (p->jitter_pct > 0) {
		uint64_t spread = b / 100 * p->jitter_pct + (b % 100) * p->jitter_pct / 100;
		if (spread > 0) {
			uint64_t off = rnd % (2 * spread + 1); /* 0 .. 2*spread */
			b = b - spread + off;
		}
	}
	return b == 0 ? 1 : b;
}

bool
retry_expired(const struct retry_policy *p, uint64_t received, uint64_t now)
{
	uint64_t expiry = received > UINT64_MAX - p->lifetime ? UINT64_MAX : received + p->lifetime;
	return now >= expiry;
}

int
retry_next(const struct retry_policy *p, uint64_t received, uint64_t last, unsigned attempts,
	   uint64_t rnd, uint64_t *next)
{
	uint64_t expiry = received > UINT64_MAX - p->lifetime ? UINT64_MAX : received + p->lifetime;
	uint64_t b = retry_backoff(p, attempts, rnd);

	if (last >= expiry)
		return 1;
	uint64_t t = last > UINT64_MAX - b ? UINT64_MAX : last + b;
	if (t >= expiry)
		t = expiry; /* one last try at the end of the lifetime */
	*next = t;
	return 0;
}
