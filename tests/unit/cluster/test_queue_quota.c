/*
 * test_queue_quota.c - the hourly quotas of the queue state machine (queue_fsm.h "Quotas"):
 * exact counts per user and per client from the Accepts' own times, refusal with QUEUE_EQUOTA
 * and a tombstone (a retried copy stays refused), windows that end and restart, clock skew
 * between proposers, the bound on windows (ended ones swept, the oldest evicted), and the
 * windows as replicated state: in the store, in queue_fsm_own_kv, in the digest, and the same
 * after a reload.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "queue_fsm.h"
#include "store.h"

#define T0 1700000000000ull
#define HOUR QUEUE_QUOTA_WINDOW_MS
#define QUEUE__QUOTA_SWEEP_TEST 2 /* QUEUE__QUOTA_SWEEP (private) */

struct world {
	struct store *s;
	struct queue_fsm *q;
	uint64_t index;
	struct store_batch log; /* every apply write, concatenated */
};

static void
world_init(struct world *w)
{
	memset(w, 0, sizeof(*w));
	assert_int_equal(store_mem_new(&w->s), 0);
	assert_int_equal(queue_fsm_new(w->s, &w->q), 0);
	store_batch_init(&w->log);
}

static void
world_fini(struct world *w)
{
	queue_fsm_free(w->q);
	store_free(w->s);
	store_batch_fini(&w->log);
}

/* Applies an Accept (id, user with a limit, client key with a limit; 0 limit: not counted). */
static int
accept_q(struct world *w, const char *id, uint64_t at, const char *user, uint32_t ulim,
	 const char *client, uint32_t clim)
{
	Relay__Recipient r = RELAY__RECIPIENT__INIT, *rp = &r;
	r.addr = "x@dest.example";
	Relay__Accept a = RELAY__ACCEPT__INIT;
	a.queue_id = (char *)id;
	a.mail_from = "s@src.example";
	a.n_rcpts = 1;
	a.rcpts = &rp;
	a.body.data = (uint8_t *)"Subject: q\r\n\r\nq\r\n";
	a.body.len = 17;
	a.received_ms = at;
	a.auth_user = (char *)user;
	a.has_quota_user = ulim > 0;
	a.quota_user = ulim;
	a.client_key = (char *)client;
	a.has_quota_client = clim > 0;
	a.quota_client = clim;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	c.accept = &a;
	struct store_batch one;
	store_batch_init(&one);
	int rv = queue_apply(w->q, ++w->index, &c, &one);
	assert_int_equal(store_write(w->s, &one, 0), 0);
	assert_int_equal(store_batch_append(&w->log, &one), 0);
	store_batch_fini(&one);
	return rv;
}

static uint32_t
count_of(struct world *w, char kind, const char *name, uint64_t *start)
{
	struct queue_quota qq;
	if (queue_fsm_quota(w->q, kind, name, &qq))
		return 0;
	if (start)
		*start = qq.start_ms;
	return qq.count;
}

static void
test_user_quota_exact(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	char id[32];
	for (int i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "u%d", i);
		assert_int_equal(accept_q(&w, id, T0 + 1000 * i, "alice", 3, NULL, 0), 0);
	}
	uint64_t start = 0;
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", &start), 3);
	assert_int_equal(start, T0);
	/* the fourth in the hour is refused, not queued, not counted */
	assert_int_equal(accept_q(&w, "u3", T0 + 5000, "alice", 3, NULL, 0), QUEUE_EQUOTA);
	assert_null(queue_fsm_lookup(w.q, "u3"));
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", NULL), 3);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.quota_refused, 1);
	/* a retried copy of the refused Accept is a no-op, even once the window ended */
	assert_int_equal(accept_q(&w, "u3", T0 + 5000, "alice", 3, NULL, 0), 0);
	assert_int_equal(accept_q(&w, "u3", T0 + HOUR + 1, "alice", 3, NULL, 0), 0);
	assert_null(queue_fsm_lookup(w.q, "u3"));
	/* another user is counted apart; the limit travels in the Accept (a node with a higher
	 * one lets alice's next message in) */
	assert_int_equal(accept_q(&w, "b0", T0 + 6000, "bob", 3, NULL, 0), 0);
	assert_int_equal(accept_q(&w, "u4", T0 + 7000, "alice", 4, NULL, 0), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", NULL), 4);
	/* a proposer whose clock lags: counted in the current window */
	assert_int_equal(accept_q(&w, "u5", T0 - 60000, "alice", 5, NULL, 0), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", &start), 5);
	assert_int_equal(start, T0);
	assert_int_equal(accept_q(&w, "u6", T0 + HOUR - 1, "alice", 5, NULL, 0), QUEUE_EQUOTA);
	/* the window is over at start + 1 h by the Accept's time: a new one starts there */
	assert_int_equal(accept_q(&w, "u7", T0 + HOUR, "alice", 5, NULL, 0), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", &start), 1);
	assert_int_equal(start, T0 + HOUR);
	/* an Accept without quotas (mynetworks, a DSN) is not counted */
	assert_int_equal(accept_q(&w, "n0", T0 + HOUR, "alice", 0, NULL, 0), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", NULL), 1);
	world_fini(&w);
}

static void
test_user_and_client(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	/* client 2001:db8:1:2::/64 may send 2; alice 10 */
	const char *net = "2001:db8:1:2::/64";
	assert_int_equal(accept_q(&w, "a", T0, "alice", 10, net, 2), 0);
	assert_int_equal(accept_q(&w, "b", T0 + 1, "bob", 10, net, 2), 0);
	/* over the client quota: refused, and alice's count does not move */
	assert_int_equal(accept_q(&w, "c", T0 + 2, "alice", 10, net, 2), QUEUE_EQUOTA);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "alice", NULL), 1);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, net, NULL), 2);
	/* from elsewhere alice goes on; users and clients are apart even with one name */
	assert_int_equal(accept_q(&w, "d", T0 + 3, "alice", 10, "192.0.2.7", 2), 0);
	assert_int_equal(accept_q(&w, "e", T0 + 4, "192.0.2.7", 1, "192.0.2.7", 2), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "192.0.2.7", NULL), 1);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "192.0.2.7", NULL), 2);
	/* a counted name must be there and printable: invalid, nothing written */
	assert_int_equal(accept_q(&w, "f", T0 + 5, "", 1, NULL, 0), QUEUE_EINVAL);
	assert_int_equal(accept_q(&w, "g", T0 + 5, NULL, 1, NULL, 0), QUEUE_EINVAL);
	assert_int_equal(accept_q(&w, "h", T0 + 5, NULL, 0, "bad\nkey", 1), QUEUE_EINVAL);
	char longname[QUEUE_QUOTA_NAME_MAX + 2];
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(accept_q(&w, "i", T0 + 5, longname, 1, NULL, 0), QUEUE_EINVAL);
	longname[QUEUE_QUOTA_NAME_MAX] = 0;
	assert_int_equal(accept_q(&w, "i", T0 + 5, longname, 1, NULL, 0), 0);
	world_fini(&w);
}

struct kv_check {
	struct store *s;
	unsigned quota_keys;
};

static int
kv_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct kv_check *c = arg;
	void *v;
	size_t vl;
	assert_int_equal(store_get(c->s, STORE_CF_QUEUE, key, klen, &v, &vl), 0);
	assert_int_equal(vl, vlen);
	assert_memory_equal(v, val, vlen);
	free(v);
	c->quota_keys += ((const unsigned char *)key)[1] == 'Q';
	return 0;
}

static unsigned
store_quota_keys(struct store *s)
{
	struct store_iter *it;
	unsigned n = 0;
	assert_int_equal(store_iter_new(s, STORE_CF_QUEUE, &it), 0);
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t kl;
		const unsigned char *k = store_iter_key(it, &kl);
		n += kl > 2 && k[0] == QUEUE_KEY_OWN && k[1] == 'Q';
	}
	store_iter_free(it);
	return n;
}

/* A script of many users and clients over several hours, with lagging proposers. */
static void
run_script(struct world *w, unsigned n, uint32_t seed)
{
	for (unsigned i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		char id[32], user[16], client[32];
		snprintf(id, sizeof(id), "s%u", i);
		snprintf(user, sizeof(user), "user%u", (seed >> 8) % 17);
		snprintf(client, sizeof(client), "198.51.100.%u", (seed >> 16) % 11);
		uint64_t at = T0 + (uint64_t)i * 20000 - ((seed >> 4) % 4 == 0 ? 90000 : 0);
		int rv = accept_q(w, id, at, user, 7, client, 9);
		assert_true(rv == 0 || rv == QUEUE_EQUOTA);
	}
}

static void
test_replicated_state(void **state)
{
	(void)state;
	struct world a, b;
	world_init(&a);
	world_init(&b);
	run_script(&a, 2000, 42);
	run_script(&b, 2000, 42);
	assert_int_equal(a.log.len, b.log.len);
	assert_memory_equal(a.log.buf, b.log.buf, a.log.len);
	assert_int_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
	struct queue_fsm_stats st;
	queue_fsm_stats(a.q, &st);
	assert_true(st.quota_refused > 100); /* the script does reach the limits */
	/* memory, store and snapshot key/values agree */
	struct kv_check c = {a.s, 0};
	assert_int_equal(queue_fsm_own_kv(a.q, kv_cb, &c), 0);
	assert_int_equal(c.quota_keys, store_quota_keys(a.s));
	assert_true(c.quota_keys > 0);
	/* a reload from the store (a restart, a snapshot install) is the same state */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(a.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(a.q));
	struct queue_quota x, y;
	assert_int_equal(queue_fsm_quota(r, QUEUE_QUOTA_USER, "user3", &x), 0);
	assert_int_equal(queue_fsm_quota(a.q, QUEUE_QUOTA_USER, "user3", &y), 0);
	assert_string_equal(x.name, y.name);
	assert_int_equal(x.kind, y.kind);
	assert_int_equal(x.start_ms, y.start_ms);
	assert_int_equal(x.count, y.count);
	queue_fsm_free(r);
	/* the digest sees a window's count */
	assert_int_equal(accept_q(&b, "extra", T0 + 2000ull * 20000, "user1", 7, NULL, 0), 0);
	assert_int_not_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
	world_fini(&a);
	world_fini(&b);
}

static int
count_cb(void *arg, const struct queue_quota *w)
{
	(void)w;
	(*(size_t *)arg)++;
	return 0;
}

static void
test_bound_and_sweep(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	char id[32], client[32];
	/* QUEUE_QUOTA_KEYS_MAX clients within one minute: all kept (names in key order: the
	 * in-memory store appends them, which under ASan is minutes faster than inserting) */
	for (unsigned i = 0; i < QUEUE_QUOTA_KEYS_MAX; i++) {
		snprintf(id, sizeof(id), "k%05u", i);
		snprintf(client, sizeof(client), "c%05u", i);
		assert_int_equal(accept_q(&w, id, T0 + i / 1000, NULL, 0, client, 1), 0);
	}
	size_t n = 0;
	assert_int_equal(queue_fsm_quotas(w.q, count_cb, &n), QUEUE_QUOTA_KEYS_MAX);
	/* one more: the oldest window (c00000, start T0, ties by name) is forgotten before its end */
	assert_int_equal(accept_q(&w, "more", T0 + 100, NULL, 0, "zz-new", 1), 0);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.quota_evicted, 1);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00000", NULL), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00001", NULL), 1);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "zz-new", NULL), 1);
	n = 0;
	queue_fsm_quotas(w.q, count_cb, &n);
	assert_int_equal(n, QUEUE_QUOTA_KEYS_MAX);
	/* c00001 is not over: refused by its own window, which this Accept uses, never evicted */
	assert_int_equal(accept_q(&w, "again", T0 + 200, NULL, 0, "c00001", 1), QUEUE_EQUOTA);
	/* an hour later every Accept sweeps ended windows: the table shrinks */
	for (unsigned i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "late%u", i);
		assert_int_equal(accept_q(&w, id, T0 + HOUR + 1000, NULL, 0, "c00002", 1000), 0);
	}
	n = 0;
	queue_fsm_quotas(w.q, count_cb, &n);
	assert_int_equal(n, QUEUE_QUOTA_KEYS_MAX - QUEUE__QUOTA_SWEEP_TEST * 100);
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.quota_evicted, 1); /* ended windows are not counted as evicted */
	assert_int_equal(store_quota_keys(w.s), n);
	/* the reload sees the same */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	queue_fsm_free(r);
	world_fini(&w);
}

/* A full table and an Accept whose own window is the oldest: the window it uses is never the
 * one forgotten; the next oldest is (the smallest after skipping ours in the heap). */
static void
test_full_table_keeps_the_windows_in_use(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	char id[32], client[32];
	/* the oldest window: user "old" at T0 */
	assert_int_equal(accept_q(&w, "o0", T0, "old", 100, NULL, 0), 0);
	for (unsigned i = 1; i < QUEUE_QUOTA_KEYS_MAX; i++) {
		snprintf(id, sizeof(id), "k%u", i);
		snprintf(client, sizeof(client), "c%05u", i);
		assert_int_equal(accept_q(&w, id, T0 + i, NULL, 0, client, 5), 0);
	}
	/* "old" sends again with a new client key: one new window, the table is full; "old" is
	 * the oldest but in use, so c00001 (start T0 + 1) goes */
	assert_int_equal(accept_q(&w, "o1", T0 + 500000, "old", 100, "brand-new", 5), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "old", NULL), 2);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "brand-new", NULL), 1);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00001", NULL), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00002", NULL), 1);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.quota_evicted, 1);
	/* two new windows at once, neither of them "old": the two oldest go, "old" (T0) first */
	assert_int_equal(accept_q(&w, "n2", T0 + 600000, "newuser", 1, "newclient", 1), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_USER, "old", NULL), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00002", NULL), 0);
	assert_int_equal(count_of(&w, QUEUE_QUOTA_CLIENT, "c00003", NULL), 1);
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.quota_evicted, 3);
	size_t n = 0;
	queue_fsm_quotas(w.q, count_cb, &n);
	assert_int_equal(n, QUEUE_QUOTA_KEYS_MAX);
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	queue_fsm_free(r);
	world_fini(&w);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_user_quota_exact),
	    cmocka_unit_test(test_user_and_client),
	    cmocka_unit_test(test_replicated_state),
	    cmocka_unit_test(test_bound_and_sweep),
	    cmocka_unit_test(test_full_table_keeps_the_windows_in_use),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
