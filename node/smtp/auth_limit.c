/*
 * auth_limit.c: failed AUTH attempts per client and minute (see auth_limit.h).  A linear table:
 * AUTH_LIMIT_CLIENTS entries are scanned per call, which is noise next to the crypt(3) each
 * AUTH costs.
 */
#include "auth_limit.h"

#include <stdio.h>
#include <string.h>

void
auth_limit_init(struct auth_limit *l, uint32_t limit)
{
	memset(l, 0, sizeof(*l));
	l->limit = limit;
}

/* The entry of key (at most one), or NULL. */
static struct auth_limit_entry *
find(struct auth_limit *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].key, key) == 0)
			return &l->v[i];
	return NULL;
}

static bool
window_open(const struct auth_limit_entry *e, uint64_t now_ms)
{
	return now_ms < e->start_ms || now_ms - e->start_ms < AUTH_LIMIT_WINDOW_MS;
}

bool
auth_limit_blocked(struct auth_limit *l, const char *key, uint64_t now_ms)
{
	if (l->limit == 0)
		return false;
	struct auth_limit_entry *e = find(l, key);
	return e != NULL && window_open(e, now_ms) && e->failures >= l->limit;
}

void
auth_limit_failed(struct auth_limit *l, const char *key, uint64_t now_ms)
{
	if (l->limit == 0)
		return;
	struct auth_limit_entry *e = find(l, key);
	if (e != NULL && window_open(e, now_ms)) {
		if (e->failures < UINT32_MAX)
			e->failures++;
		return;
	}
	/* a new window for key: in its own entry, a free one, an expired one, else the oldest */
	if (e == NULL && l->n < AUTH_LIMIT_CLIENTS)
		e = &l->v[l->n++];
	for (size_t i = 0; i < l->n && e == NULL; i++)
		if (!window_open(&l->v[i], now_ms))
			e = &l->v[i];
	if (e == NULL) {
		e = &l->v[0];
		for (size_t i = 1; i < l->n; i++)
			if (l->v[i].start_ms < e->start_ms)
				e = &l->v[i];
	}
	snprintf(e->key, sizeof(e->key), "%s", key);
	e->start_ms = now_ms;
	e->failures = 1;
}
