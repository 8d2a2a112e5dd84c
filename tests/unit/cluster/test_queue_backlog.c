/*
 * test_queue_backlog.c - the queue state machine with a backlog (issue 14): DeferDomain
 * (fencing, masking in the due lists, lifting by a delivery or a Retry, persistence, the
 * reason key), busy marks, the overlay of values not written yet (queue_fsm_written), the
 * stored form of a message (a legacy store moves to it at its first change), and the
 * idle-assignment bound with a great many distinct domains, evictions included.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "queue_fsm.h"
#include "store.h"

#define T0 1700000000000ull

struct world {
	struct store *s;
	struct queue_fsm *q;
	uint64_t index;
	unsigned nops;
	int hold_writes; /* batches wait in pending instead of going to the store */
	struct store_batch pending;
};

static void
world_init(struct world *w)
{
	memset(w, 0, sizeof(*w));
	assert_int_equal(store_mem_new(&w->s), 0);
	assert_int_equal(queue_fsm_new(w->s, &w->q), 0);
	store_batch_init(&w->pending);
}

static void
world_fini(struct world *w)
{
	queue_fsm_free(w->q);
	store_free(w->s);
	store_batch_fini(&w->pending);
}

/* The host's write: what waits goes to the store, and the fsm hears of it. */
static void
flush(struct world *w)
{
	assert_int_equal(store_write(w->s, &w->pending, 0), 0);
	store_batch_clear(&w->pending);
	queue_fsm_written(w->q, w->index);
}

static int
apply(struct world *w, const Relay__Command *cmd)
{
	struct store_batch one;
	store_batch_init(&one);
	int rv = queue_apply(w->q, ++w->index, cmd, &one);
	w->nops = one.count;
	assert_int_equal(store_batch_append(&w->pending, &one), 0);
	store_batch_fini(&one);
	if (!w->hold_writes)
		flush(w);
	return rv;
}

static int
accept_at(struct world *w, const char *id, const char *addr, uint64_t rx)
{
	Relay__Recipient r = RELAY__RECIPIENT__INIT, *rp = &r;
	r.addr = (char *)addr;
	Relay__Accept a = RELAY__ACCEPT__INIT;
	a.queue_id = (char *)id;
	a.mail_from = "s@src.example";
	a.n_rcpts = 1;
	a.rcpts = &rp;
	a.body.data = (uint8_t *)"body\r\n";
	a.body.len = 6;
	a.received_ms = rx;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	c.accept = &a;
	return apply(w, &c);
}

static int
member(struct world *w, const char *node, enum queue_member_state st)
{
	Relay__Member m = RELAY__MEMBER__INIT;
	m.node = (char *)node;
	m.state = (Relay__MemberState)st;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	c.member = &m;
	return apply(w, &c);
}

static uint64_t
epoch_of(struct world *w, const char *domain)
{
	struct queue_domain_info di;
	assert_int_equal(queue_fsm_domain_info(w->q, domain, &di), 0);
	return di.epoch;
}

static int
defer(struct world *w, const char *domain, uint64_t epoch, uint64_t until, const char *reply)
{
	Relay__DeferDomain d = RELAY__DEFER_DOMAIN__INIT;
	d.domain = (char *)domain;
	d.epoch = epoch;
	d.until_ms = until;
	d.at_ms = T0;
	d.reply = (char *)reply;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_DEFER_DOMAIN;
	c.defer_domain = &d;
	return apply(w, &c);
}

static int
outcome(struct world *w, const char *id, Relay__OutcomeKind kind, uint64_t epoch, uint64_t at,
	uint64_t next, const char *reply)
{
	uint32_t r0 = 0;
	Relay__Outcome o = RELAY__OUTCOME__INIT;
	o.queue_id = (char *)id;
	o.n_rcpt_index = 1;
	o.rcpt_index = &r0;
	o.kind = kind;
	o.at_ms = at;
	o.has_epoch = 1;
	o.epoch = epoch;
	if (kind == RELAY__OUTCOME_KIND__DEFERRED) {
		o.has_next_attempt_ms = 1;
		o.next_attempt_ms = next;
	}
	o.reply = (char *)reply;
	o.relay = "mx.example[192.0.2.1]:25";
	o.dsn_status = "4.4.1";
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	c.outcome = &o;
	return apply(w, &c);
}

static int
retry(struct world *w, const char *id, uint64_t at)
{
	Relay__Retry r = RELAY__RETRY__INIT;
	r.queue_id = (char *)id;
	r.at_ms = at;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_RETRY;
	c.retry = &r;
	return apply(w, &c);
}

static int
count_cb(void *arg, const struct queue_item *it)
{
	(void)it;
	(*(unsigned *)arg)++;
	return 0;
}

static unsigned
due_items(struct world *w, const char *owner, uint64_t now)
{
	unsigned n = 0;
	assert_true(queue_fsm_due_owned(w->q, owner, now, count_cb, &n, 100000) >= 0);
	return n;
}

/* A reopen and a reload from the store give the same state. */
static void
check_reopen(struct world *w)
{
	uint64_t d = queue_fsm_digest(w->q);
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w->s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), d);
	queue_fsm_free(r);
	assert_int_equal(queue_fsm_reload(w->q), 0);
	assert_int_equal(queue_fsm_digest(w->q), d);
}

static int
has_key(struct world *w, const void *k, size_t kl)
{
	void *v;
	size_t vl;
	int rv = store_get(w->s, STORE_CF_QUEUE, k, kl, &v, &vl);
	if (!rv)
		free(v);
	return rv == 0;
}

/* ---- DeferDomain ---- */

static void
test_defer_domain(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	char id[32], addr[32];
	for (int i = 0; i < 50; i++) {
		snprintf(id, sizeof(id), "m%02d", i);
		assert_int_equal(accept_at(&w, id, "u@dead.example", T0 + i), 0);
	}
	assert_int_equal(accept_at(&w, "live1", "u@live.example", T0), 0);
	assert_int_equal(due_items(&w, "n1", T0 + 100), 51);
	uint64_t ep = epoch_of(&w, "dead.example");

	/* a stale epoch (or an unknown domain) changes nothing, counted */
	uint64_t d0 = queue_fsm_digest(w.q);
	assert_int_equal(defer(&w, "dead.example", ep + 1, T0 + 60000, "x"), 0);
	assert_int_equal(w.nops, 0);
	assert_int_equal(defer(&w, "nowhere.example", 5, T0 + 60000, "x"), 0);
	assert_int_equal(queue_fsm_digest(w.q), d0);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.stale_defers, 2);

	/* the owner's: one entry, two writes (the assignment, the reason), the whole backlog out
	 * of the due lists until then; upper case is the same domain */
	assert_int_equal(defer(&w, "DEAD.example", ep, T0 + 60000, "451 4.4.3 no answer"), 0);
	assert_int_equal(w.nops, 2);
	assert_int_equal(due_items(&w, "n1", T0 + 100), 1);
	assert_int_equal(due_items(&w, "n1", T0 + 59999), 1);
	assert_int_equal(due_items(&w, "n1", T0 + 60000), 51);
	assert_int_equal(queue_fsm_next_due_owned_ms(w.q, "n1"), T0);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m07");
	assert_int_equal(m->next_attempt_ms, T0 + 7); /* its own schedule is kept */
	assert_int_equal(queue_fsm_due_ms(w.q, m), T0 + 60000);
	struct queue_domain_info di;
	assert_int_equal(queue_fsm_domain_info(w.q, "dead.example", &di), 0);
	assert_int_equal(di.defer_until, T0 + 60000);
	assert_int_equal(di.defer_count, 1);
	char why[128];
	assert_int_equal(queue_fsm_domain_reason(w.q, "dead.example", why, sizeof(why)), 0);
	assert_string_equal(why, "451 4.4.3 no answer");
	assert_true(has_key(&w, "\x01"
				"Edead.example",
			    14));
	check_reopen(&w);
	assert_int_equal(due_items(&w, "n1", T0 + 100), 1);

	/* an earlier until is a no-op; a later one extends it and counts */
	assert_int_equal(defer(&w, "dead.example", ep, T0 + 30000, "y"), 0);
	assert_int_equal(w.nops, 0);
	assert_int_equal(defer(&w, "dead.example", ep, T0 + 120000, "451 4.4.3 still no answer"), 0);
	assert_int_equal(queue_fsm_domain_info(w.q, "dead.example", &di), 0);
	assert_int_equal(di.defer_count, 2);
	assert_int_equal(due_items(&w, "n1", T0 + 60000), 1);

	/* the walk in due order: the live domain first, then the deferred one's items in their
	 * own order */
	assert_int_equal(due_items(&w, "n1", T0 + 120000), 51);

	/* a new message to the deferred domain waits too; the domain moving to another owner
	 * keeps its deferral */
	assert_int_equal(accept_at(&w, "m50", "u@dead.example", T0 + 1000), 0);
	assert_int_equal(due_items(&w, "n1", T0 + 100000), 1);
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_DOWN), 0);
	assert_int_equal(due_items(&w, "n2", T0 + 100000), 1);
	assert_int_equal(due_items(&w, "n2", T0 + 120000), 52);
	check_reopen(&w);

	/* a delivery to the domain lifts it: the assignment is version 1 again, no reason */
	ep = epoch_of(&w, "dead.example");
	assert_int_equal(outcome(&w, "m00", RELAY__OUTCOME_KIND__DELIVERED, ep, T0 + 2, 0, "250 ok"),
			 0);
	assert_int_equal(queue_fsm_domain_info(w.q, "dead.example", &di), 0);
	assert_int_equal(di.defer_until, 0);
	assert_int_equal(di.defer_count, 0);
	assert_false(has_key(&w, "\x01"
				 "Edead.example",
			     14));
	assert_int_equal(due_items(&w, "n2", T0 + 100000), 51);
	check_reopen(&w);

	/* a Retry of one of its messages lifts it too (the operator's "now") */
	assert_int_equal(defer(&w, "dead.example", ep, T0 + 90000, "z"), 0);
	assert_int_equal(due_items(&w, "n2", T0 + 100), 1);
	assert_int_equal(retry(&w, "m10", T0 + 5), 0);
	assert_int_equal(due_items(&w, "n2", T0 + 100), 50); /* m50 (received T0+1000) is not */
	assert_false(has_key(&w, "\x01"
				 "Edead.example",
			     14));
	check_reopen(&w);

	/* validation: no domain, epoch 0, until 0, a reply with a line break */
	Relay__DeferDomain d = RELAY__DEFER_DOMAIN__INIT;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_DEFER_DOMAIN;
	c.defer_domain = &d;
	d.epoch = 1;
	d.until_ms = 1;
	assert_int_equal(queue_validate(&c), QUEUE_EINVAL);
	d.domain = "a.example";
	assert_int_equal(queue_validate(&c), 0);
	d.epoch = 0;
	assert_int_equal(queue_validate(&c), QUEUE_EINVAL);
	d.epoch = 1;
	d.until_ms = 0;
	assert_int_equal(queue_validate(&c), QUEUE_EINVAL);
	d.until_ms = 1;
	d.reply = "a\r\nb";
	assert_int_equal(queue_validate(&c), QUEUE_EINVAL);
	(void)addr;
	world_fini(&w);
}

/* ---- busy marks ---- */

static void
test_busy(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(accept_at(&w, "a", "u@x.example", T0), 0);
	assert_int_equal(accept_at(&w, "b", "u@x.example", T0 + 1), 0);
	uint64_t d = queue_fsm_digest(w.q);
	assert_int_equal(queue_fsm_set_busy(w.q, "a", 1), 0);
	assert_int_equal(queue_fsm_set_busy(w.q, "a", 1), 0); /* twice: once */
	assert_int_equal(due_items(&w, "n1", T0 + 10), 1);
	assert_int_equal(queue_fsm_next_due_owned_ms(w.q, "n1"), T0 + 1);
	assert_int_equal(queue_fsm_digest(w.q), d); /* local: not in the digest */
	/* an outcome while busy reschedules it, still out of the lists */
	assert_int_equal(outcome(&w, "a", RELAY__OUTCOME_KIND__DEFERRED, epoch_of(&w, "x.example"),
				 T0 + 5, T0 + 500, "451 later"),
			 0);
	assert_int_equal(due_items(&w, "n1", T0 + 1000), 1);
	assert_int_equal(queue_fsm_set_busy(w.q, "a", 0), 0);
	assert_int_equal(due_items(&w, "n1", T0 + 10), 1);
	assert_int_equal(due_items(&w, "n1", T0 + 500), 2);
	assert_int_equal(queue_fsm_set_busy(w.q, "nope", 1), QUEUE_ENOTFOUND);
	/* a reload forgets the marks */
	assert_int_equal(queue_fsm_set_busy(w.q, "b", 1), 0);
	assert_int_equal(queue_fsm_reload(w.q), 0);
	assert_int_equal(due_items(&w, "n1", T0 + 500), 2);
	world_fini(&w);
}

/* ---- the overlay: reads before the host wrote the batch ---- */

static void
test_overlay(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	w.hold_writes = 1; /* the host has not written anything yet */
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(accept_at(&w, "m1", "u@x.example", T0), 0);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_string_equal(rec->mail_from, "s@src.example");
	relay__queue_record__free_unpacked(rec, NULL);
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DEFERRED, epoch_of(&w, "x.example"),
				 T0 + 5, T0 + 500, "451 4.2.0 greylisted"),
			 0);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_int_equal(rec->rcpts[0]->attempts, 1);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 4.2.0 greylisted");
	assert_int_equal(rec->rcpts[0]->epoch, epoch_of(&w, "x.example"));
	relay__queue_record__free_unpacked(rec, NULL);
	/* the envelope without results */
	assert_int_equal(queue_fsm_read_envelope(w.q, "m1", &rec), 0);
	assert_int_equal(rec->rcpts[0]->attempts, 1);
	assert_null(rec->rcpts[0]->last_reply);
	relay__queue_record__free_unpacked(rec, NULL);
	/* nothing is in the store yet; once written, the overlay lets go and the store answers */
	void *v;
	size_t vl;
	assert_int_equal(store_get(w.s, STORE_CF_QUEUE, "m1", 2, &v, &vl), STORE_ENOTFOUND);
	flush(&w);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 4.2.0 greylisted");
	relay__queue_record__free_unpacked(rec, NULL);
	/* a second deferral, unwritten: the new reply, not the stored one */
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DEFERRED, epoch_of(&w, "x.example"),
				 T0 + 600, T0 + 900, "451 4.2.0 again"),
			 0);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 4.2.0 again");
	assert_int_equal(rec->rcpts[0]->attempts, 2);
	relay__queue_record__free_unpacked(rec, NULL);
	flush(&w);
	world_fini(&w);
}

/* ---- a store written before the state value ---- */

static void
test_legacy_message(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(accept_at(&w, "m1", "u@old.example", T0), 0);
	uint64_t ep = epoch_of(&w, "old.example");
	/* rewrite m1 as the code before wrote it: the full record at its id, 'Q' + next + id */
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	rec->rcpts[0]->has_attempts = 1;
	rec->rcpts[0]->attempts = 1;
	rec->rcpts[0]->has_last_attempt_ms = 1;
	rec->rcpts[0]->last_attempt_ms = T0 + 3;
	rec->rcpts[0]->next_attempt_ms = T0 + 700;
	rec->next_attempt_ms = T0 + 700;
	rec->rcpts[0]->last_reply = strdup("451 old reply");
	size_t len = relay__queue_record__get_packed_size(rec);
	unsigned char *buf = malloc(len);
	relay__queue_record__pack(rec, buf);
	relay__queue_record__free_unpacked(rec, NULL);
	unsigned char qk[9 + 2] = {'Q'};
	store_u64_encode(T0 + 700, qk + 1);
	memcpy(qk + 9, "m1", 2);
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_QUEUE, "m1", 2, buf, len), 0);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, "Mm1", 3), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, qk, sizeof(qk), "", 0), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	free(buf);
	assert_int_equal(queue_fsm_reload(w.q), 0);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_non_null(m);
	assert_int_equal(m->rcpts[0].attempts, 1);
	assert_int_equal(m->next_attempt_ms, T0 + 700);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 old reply"); /* the record's own */
	relay__queue_record__free_unpacked(rec, NULL);
	check_reopen(&w);
	/* a damaged legacy key: its next attempt is not the record's */
	store_u64_encode(T0 + 701, qk + 1);
	store_batch_clear(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, qk, sizeof(qk), "", 0), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	struct queue_fsm *r = NULL;
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, qk, sizeof(qk)), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	/* its first change moves it to the state value: 'Q' key gone, 'M' key there */
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DEFERRED, ep, T0 + 800, T0 + 1500,
				 "451 new reply"),
			 0);
	store_u64_encode(T0 + 700, qk + 1);
	void *v;
	size_t vl;
	assert_int_equal(store_get(w.s, STORE_CF_INDEX, qk, sizeof(qk), &v, &vl), STORE_ENOTFOUND);
	assert_int_equal(store_get(w.s, STORE_CF_INDEX, "Mm1", 3, &v, &vl), 0);
	free(v);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 new reply");
	assert_int_equal(rec->rcpts[0]->attempts, 2);
	relay__queue_record__free_unpacked(rec, NULL);
	check_reopen(&w);
	/* and its removal deletes everything */
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DELIVERED, ep, T0 + 2000, 0, "250"),
			 0);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	assert_int_equal(store_get(w.s, STORE_CF_QUEUE, "m1", 2, &v, &vl), STORE_ENOTFOUND);
	assert_int_equal(store_get(w.s, STORE_CF_INDEX, "Mm1", 3, &v, &vl), STORE_ENOTFOUND);
	assert_int_equal(store_get(w.s, STORE_CF_QUEUE, "m1\0l\0\0", 6, &v, &vl), STORE_ENOTFOUND);
	store_batch_fini(&b);
	world_fini(&w);
}

/* ---- the idle bound with a great many distinct domains ---- */

/* N messages, each to its own domain, all delivered: every domain goes idle, at most
 * QUEUE_IDLE_DOMAINS_MAX stay (the newest epochs), the others are forgotten in the same batch
 * (their keys deleted), and memory and the store agree after every step; an Accept for a
 * forgotten domain makes a new assignment. */
static void
test_many_domains(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0);
	enum { N = 3 * QUEUE_IDLE_DOMAINS_MAX }; /* a million: bench/queue_fsm_bench.c */
	char id[32], addr[64], dom[48];
	clock_t c0 = clock();
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "m%06u", i);
		snprintf(addr, sizeof(addr), "u@d%06u.example", i);
		assert_int_equal(accept_at(&w, id, addr, T0 + i), 0);
	}
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, N);
	for (unsigned i = 0; i < N; i++) {
		snprintf(id, sizeof(id), "m%06u", i);
		snprintf(dom, sizeof(dom), "d%06u.example", i);
		assert_int_equal(outcome(&w, id, RELAY__OUTCOME_KIND__DELIVERED, epoch_of(&w, dom),
					 T0 + N + i, 0, "250 ok"),
				 0);
	}
	printf("%u accepts and deliveries to distinct domains: %.2f s\n", N,
	       (double)(clock() - c0) / CLOCKS_PER_SEC);
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, 0);
	/* the assignments left: exactly the bound, the last ones to go idle */
	struct queue_domain_info di;
	unsigned kept = 0;
	for (unsigned i = 0; i < N; i++) {
		snprintf(dom, sizeof(dom), "d%06u.example", i);
		int rv = queue_fsm_domain_info(w.q, dom, &di);
		kept += rv == 0;
		assert_int_equal(rv == 0, i >= N - QUEUE_IDLE_DOMAINS_MAX);
	}
	assert_int_equal(kept, QUEUE_IDLE_DOMAINS_MAX);
	/* the store holds the same: the bound of 'D' keys */
	struct store_iter *it;
	assert_int_equal(store_iter_new(w.s, STORE_CF_QUEUE, &it), 0);
	unsigned dkeys = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t kl;
		const unsigned char *k = store_iter_key(it, &kl);
		dkeys += kl > 1 && k[0] == QUEUE_KEY_OWN && k[1] == 'D';
	}
	store_iter_free(it);
	assert_int_equal(dkeys, QUEUE_IDLE_DOMAINS_MAX);
	check_reopen(&w);
	/* a forgotten domain is assigned anew (a new epoch) */
	assert_int_equal(accept_at(&w, "again", "u@d000000.example", T0 + 3 * N), 0);
	assert_int_equal(epoch_of(&w, "d000000.example"), w.index);
	world_fini(&w);
}

int
main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defer_domain), cmocka_unit_test(test_busy),
	    cmocka_unit_test(test_overlay),	 cmocka_unit_test(test_legacy_message),
	    cmocka_unit_test(test_many_domains),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
