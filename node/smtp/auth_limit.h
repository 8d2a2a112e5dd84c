/*
 * auth_limit.h: failed AUTH attempts per client, per minute (auth_failures_per_minute_per_client;
 * issue 12 sec. 4).
 *
 * Pure: no clock (the caller passes now_ms), no I/O, no allocation after init.  A client is a
 * key string (config_client_key: the address cut to client_ipv4_prefix / client_ipv6_prefix).
 * Each client has a fixed one-minute window that starts at its first failure; once it holds
 * `limit` failures, the client is blocked until the window ends (the glue answers its AUTH with
 * 454 4.7.0 without checking the password).  The table holds AUTH_LIMIT_CLIENTS clients; when
 * it is full, the entry whose window started first gives way (an attacker with many addresses
 * can push out older entries, but max_concurrent_auth still bounds the work they cause).
 */
#ifndef RELAY_AUTH_LIMIT_H
#define RELAY_AUTH_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_LIMIT_CLIENTS 4096	   /* clients remembered at once */
#define AUTH_LIMIT_KEY_MAX 64	   /* bytes of a client key, NUL included */
#define AUTH_LIMIT_WINDOW_MS 60000 /* the "per minute" */

struct auth_limit_entry {
	char key[AUTH_LIMIT_KEY_MAX]; /* "" : free */
	uint64_t start_ms;	      /* the window's start */
	uint32_t failures;	      /* in the window */
};

struct auth_limit {
	uint32_t limit; /* failures per window; 0 means no limit */
	size_t n;	/* entries in use */
	struct auth_limit_entry v[AUTH_LIMIT_CLIENTS];
};

void auth_limit_init(struct auth_limit *l, uint32_t limit);

/* True when key has used up its failures in the current window. */
bool auth_limit_blocked(struct auth_limit *l, const char *key, uint64_t now_ms);

/* Counts one failed attempt of key. */
void auth_limit_failed(struct auth_limit *l, const char *key, uint64_t now_ms);

#endif
