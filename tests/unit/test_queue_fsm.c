/*
 * test_queue_fsm.c - the queue state machine over the in-memory store: apply is deterministic
 * (same commands -> byte-identical writes and the same state), duplicates are idempotent,
 * invalid commands are rejected without a trace (table of cases), the in-memory index is
 * rebuilt from the queue records in apply order, bodies and records read back, and a damaged
 * record is reported at load.
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

struct cmdbuf {
	Relay__Command cmd;
	Relay__Accept acc;
	Relay__Recipient r[3];
	Relay__Recipient *rp[3];
	char id[QUEUE_ID_MAX + 8];
	char body[64];
};

/* Accept number i: id from ids[i % n] style callers; 1..3 recipients; a small body. */
static void
make_cmd(struct cmdbuf *b, const char *id, unsigned i)
{
	memset(b, 0, sizeof(*b));
	relay__command__init(&b->cmd);
	relay__accept__init(&b->acc);
	snprintf(b->id, sizeof(b->id), "%s", id);
	static const char *const addrs[3] = {"a@example.org", "b@example.net", "c@example.com"};
	unsigned nr = 1 + i % 3;
	for (unsigned k = 0; k < nr; k++) {
		relay__recipient__init(&b->r[k]);
		b->r[k].addr = (char *)addrs[k];
		b->rp[k] = &b->r[k];
	}
	b->acc.queue_id = b->id;
	b->acc.mail_from = i % 5 ? "from@example.com" : ""; /* some null reverse-paths */
	b->acc.n_rcpts = nr;
	b->acc.rcpts = b->rp;
	int n = snprintf(b->body, sizeof(b->body), "Subject: %u\r\n\r\nbody %u\r\n", i, i);
	b->acc.body.data = (uint8_t *)b->body;
	b->acc.body.len = (size_t)n;
	b->acc.received_ms = 1700000000000ull + 1000 * i;
	b->cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	b->cmd.accept = &b->acc;
}

struct world {
	struct store *s;
	struct queue_fsm *q;
	struct store_batch log; /* every apply write, concatenated */
};

static void
world_init(struct world *w)
{
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

/* Applies a script of commands (ids chosen to repeat: duplicates) at indices 1..n. */
static void
run_script(struct world *w, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		char id[32];
		/* ids in descending order (apply order != key order), every 7th a repeat */
		snprintf(id, sizeof(id), "m%05u", i % 7 == 6 ? 100000 - (i - 1) : 100000 - i);
		struct cmdbuf b;
		make_cmd(&b, id, i);
		struct store_batch one;
		store_batch_init(&one);
		assert_int_equal(queue_apply(w->q, i + 1, &b.cmd, &one), 0);
		assert_int_equal(store_write(w->s, &one, 0), 0);
		assert_int_equal(store_batch_append(&w->log, &one), 0);
		store_batch_fini(&one);
	}
}

static void
test_determinism(void **state)
{
	struct world a, b;
	world_init(&a);
	world_init(&b);
	run_script(&a, 500);
	run_script(&b, 500);
	/* byte-identical writes and equal state */
	assert_int_equal(a.log.len, b.log.len);
	assert_memory_equal(a.log.buf, b.log.buf, a.log.len);
	assert_int_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
	struct queue_counts ca, cb;
	queue_fsm_counts(a.q, &ca);
	queue_fsm_counts(b.q, &cb);
	assert_memory_equal(&ca, &cb, sizeof(ca));
	/* 500 commands, every 7th (71 of them) a duplicate of the one before */
	assert_int_equal(ca.messages, 500 - 500 / 7);

	/* a different script gives a different digest (the digest can fail) */
	struct world c;
	world_init(&c);
	run_script(&c, 499);
	assert_int_not_equal(queue_fsm_digest(a.q), queue_fsm_digest(c.q));
	world_fini(&c);

	/* rebuilt from the store: the same state, in apply order */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(a.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(a.q));
	const struct queue_msg *m = queue_fsm_first(r);
	assert_non_null(m);
	assert_string_equal(m->queue_id, "m100000");
	assert_int_equal(m->accept_index, 1);
	queue_fsm_free(r);
	world_fini(&a);
	world_fini(&b);
}

static void
test_duplicate_is_noop(void **state)
{
	struct world w;
	world_init(&w);
	struct cmdbuf b;
	make_cmd(&b, "dup1", 2);
	struct store_batch one;
	store_batch_init(&one);
	assert_int_equal(queue_apply(w.q, 1, &b.cmd, &one), 0);
	size_t len = one.len;
	assert_true(len > 0);
	uint64_t d = queue_fsm_digest(w.q);
	/* the same id again, even with other content, changes nothing */
	make_cmd(&b, "dup1", 4);
	assert_int_equal(queue_apply(w.q, 2, &b.cmd, &one), 0);
	assert_int_equal(one.len, len);
	assert_int_equal(queue_fsm_digest(w.q), d);
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, 1);
	assert_int_equal(c.rcpts[QUEUE_RCPT_QUEUED], 3);
	store_batch_fini(&one);
	world_fini(&w);
}

static void
test_invalid_commands(void **state)
{
	static char long_id[QUEUE_ID_MAX + 2];
	memset(long_id, 'x', QUEUE_ID_MAX + 1);
	static char long_addr[QUEUE_ADDR_MAX + 2];
	memset(long_addr, 'a', QUEUE_ADDR_MAX + 1);
	static Relay__Recipient many_r[QUEUE_RCPTS_MAX + 1];
	static Relay__Recipient *many_rp[QUEUE_RCPTS_MAX + 1];
	for (unsigned i = 0; i <= QUEUE_RCPTS_MAX; i++) {
		relay__recipient__init(&many_r[i]);
		many_r[i].addr = "r@example.org";
		many_rp[i] = &many_r[i];
	}
	enum {
		NOT_SET,
		EMPTY_ID,
		SPACE_ID,
		QUOTE_ID,
		LONG_ID,
		NULL_ID,
		NO_RCPTS,
		TOO_MANY,
		EMPTY_RCPT,
		LONG_RCPT,
		NULL_FROM,
		NULL_ACCEPT,
		NCASES
	};
	struct world w;
	world_init(&w);
	for (int k = 0; k < NCASES; k++) {
		struct cmdbuf b;
		make_cmd(&b, "ok1", 1);
		switch (k) {
		case NOT_SET:
			b.cmd.cmd_case = RELAY__COMMAND__CMD__NOT_SET;
			break;
		case EMPTY_ID:
			b.acc.queue_id = "";
			break;
		case SPACE_ID:
			b.acc.queue_id = "a b";
			break;
		case QUOTE_ID:
			b.acc.queue_id = "a\"b";
			break;
		case LONG_ID:
			b.acc.queue_id = long_id;
			break;
		case NULL_ID:
			b.acc.queue_id = NULL;
			break;
		case NO_RCPTS:
			b.acc.n_rcpts = 0;
			break;
		case TOO_MANY:
			b.acc.n_rcpts = QUEUE_RCPTS_MAX + 1;
			b.acc.rcpts = many_rp;
			break;
		case EMPTY_RCPT:
			b.r[0].addr = "";
			break;
		case LONG_RCPT:
			b.r[0].addr = long_addr;
			break;
		case NULL_FROM:
			b.acc.mail_from = NULL;
			break;
		case NULL_ACCEPT:
			b.cmd.accept = NULL;
			break;
		}
		struct store_batch one;
		store_batch_init(&one);
		assert_int_equal(queue_validate(&b.cmd), QUEUE_EINVAL);
		assert_int_equal(queue_apply(w.q, (uint64_t)k + 1, &b.cmd, &one), QUEUE_EINVAL);
		assert_int_equal(one.len, 0);
		store_batch_fini(&one);
	}
	assert_int_equal(queue_validate(NULL), QUEUE_EINVAL);
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, 0);
	/* the limits themselves are fine */
	struct cmdbuf b;
	make_cmd(&b, "ok1", 1);
	b.acc.n_rcpts = QUEUE_RCPTS_MAX;
	b.acc.rcpts = many_rp;
	assert_int_equal(queue_validate(&b.cmd), 0);
	long_id[QUEUE_ID_MAX] = 0;
	b.acc.queue_id = long_id;
	assert_int_equal(queue_validate(&b.cmd), 0);
	b.acc.mail_from = ""; /* the null reverse-path <> */
	assert_int_equal(queue_validate(&b.cmd), 0);
	world_fini(&w);
}

static void
test_lookup_and_reads(void **state)
{
	struct world w;
	world_init(&w);
	run_script(&w, 20);
	struct cmdbuf b;
	make_cmd(&b, "m99995", 5); /* what run_script applied as command 5 */
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m99995");
	assert_non_null(m);
	assert_int_equal(m->accept_index, 6);
	assert_int_equal(m->nrcpts, 3);
	assert_int_equal(m->received_ms, b.acc.received_ms);
	assert_int_equal(m->next_attempt_ms, b.acc.received_ms);
	assert_int_equal(m->size, b.acc.body.len);
	for (unsigned i = 0; i < m->nrcpts; i++)
		assert_int_equal(m->rcpts[i].state, QUEUE_RCPT_QUEUED);
	assert_null(queue_fsm_lookup(w.q, "nope"));
	assert_null(queue_fsm_lookup(w.q, NULL));

	void *body;
	size_t len;
	assert_int_equal(queue_fsm_read_body(w.q, "m99995", &body, &len), 0);
	assert_int_equal(len, b.acc.body.len);
	assert_memory_equal(body, b.body, len);
	free(body);
	assert_int_equal(queue_fsm_read_body(w.q, "nope", &body, &len), QUEUE_ENOTFOUND);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m99995", &rec), 0);
	assert_string_equal(rec->queue_id, "m99995");
	assert_string_equal(rec->mail_from, "");
	assert_int_equal(rec->accept_index, 6);
	assert_int_equal(rec->n_rcpts, 3);
	assert_string_equal(rec->rcpts[2]->rcpt->addr, "c@example.com");
	assert_int_equal(rec->rcpts[2]->state, RELAY__RCPT_STATE__RCPT_QUEUED);
	relay__queue_record__free_unpacked(rec, NULL);

	/* the index CF holds one queued entry per message, ordered by next attempt */
	struct store_iter *it;
	assert_int_equal(store_iter_new(w.s, STORE_CF_INDEX, &it), 0);
	uint64_t prev = 0;
	unsigned n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
		size_t kl;
		const unsigned char *k = store_iter_key(it, &kl);
		assert_true(kl > 9);
		assert_int_equal(k[0], QUEUE_INDEX_QUEUED);
		uint64_t t = store_u64_decode(k + 1);
		assert_true(t >= prev);
		prev = t;
	}
	store_iter_free(it);
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(n, c.messages);

	/* iteration is in apply order */
	uint64_t last = 0;
	unsigned seen = 0;
	for (m = queue_fsm_first(w.q); m; m = queue_fsm_next(w.q, m), seen++) {
		assert_true(m->accept_index > last);
		last = m->accept_index;
	}
	assert_int_equal(seen, c.messages);
	world_fini(&w);
}

static void
test_many_messages_rehash(void **state)
{
	struct world w;
	world_init(&w);
	struct store_batch one;
	store_batch_init(&one);
	enum { N = 5000 }; /* past several table growths */
	for (unsigned i = 0; i < N; i++) {
		char id[32];
		snprintf(id, sizeof(id), "id%u", i);
		struct cmdbuf b;
		make_cmd(&b, id, i);
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, i + 1, &b.cmd, &one), 0);
		assert_int_equal(store_write(w.s, &one, 0), 0);
	}
	store_batch_fini(&one);
	for (unsigned i = 0; i < N; i += 97) {
		char id[32];
		snprintf(id, sizeof(id), "id%u", i);
		const struct queue_msg *m = queue_fsm_lookup(w.q, id);
		assert_non_null(m);
		assert_int_equal(m->accept_index, i + 1);
	}
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	queue_fsm_free(r);
	world_fini(&w);
}

static void
test_corrupt_record(void **state)
{
	struct world w;
	world_init(&w);
	run_script(&w, 3);
	struct store_batch b;
	store_batch_init(&b);
	/* a record that parses but whose key does not match its queue id */
	void *v;
	size_t vlen;
	assert_int_equal(store_get(w.s, STORE_CF_QUEUE, "m100000", 7, &v, &vlen), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_QUEUE, "zzz", 3, v, vlen), 0);
	free(v);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	struct queue_fsm *r = NULL;
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	assert_null(r);
	/* garbage */
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_QUEUE, "zzz", 3), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_QUEUE, "m1", 2, "\x0a\xff", 2), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	/* and without it, the rest loads */
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_QUEUE, "m1", 2), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	queue_fsm_free(r);
	store_batch_fini(&b);
	world_fini(&w);
	assert_string_equal(queue_strerror(QUEUE_EINVAL), "invalid command");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_determinism),		 cmocka_unit_test(test_duplicate_is_noop),
	    cmocka_unit_test(test_invalid_commands),	 cmocka_unit_test(test_lookup_and_reads),
	    cmocka_unit_test(test_many_messages_rehash), cmocka_unit_test(test_corrupt_record),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
