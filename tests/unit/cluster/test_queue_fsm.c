/*
 * test_queue_fsm.c - the queue state machine over the in-memory store: apply is deterministic
 * (same commands -> byte-identical writes and the same state), duplicates are idempotent,
 * invalid commands are rejected without a trace (table of cases), the in-memory index is
 * rebuilt from the queue records in apply order, bodies and records read back, and a damaged
 * record is reported at load.  Outcomes and deletes: per-recipient transitions, idempotence,
 * DSNs enqueued atomically, removal of finished messages (record, body, index key: the store
 * is checked against memory after each script), the scheduler's due order against a brute
 * force scan, and determinism of mixed scripts.
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

	/* the index CF holds one state value per message ('M' + queue id) */
	struct store_iter *it;
	assert_int_equal(store_iter_new(w.s, STORE_CF_INDEX, &it), 0);
	unsigned n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
		size_t kl, vl;
		const unsigned char *k = store_iter_key(it, &kl);
		store_iter_value(it, &vl);
		assert_true(kl > 1);
		assert_int_equal(k[0], QUEUE_INDEX_MSG);
		assert_true(vl > QUEUE_STATE_FIXED);
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

/* A damaged state value (index CF) stops the load (QUEUE_ECORRUPT); a damaged envelope is
 * found when the record is read (the load reads only the index CF). */
static void
test_corrupt_record(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	run_script(&w, 3);
	struct store_batch b;
	store_batch_init(&b);
	/* a state value under a key that is not a queue id */
	void *v;
	size_t vlen;
	assert_int_equal(store_get(w.s, STORE_CF_INDEX, "Mm100000", 8, &v, &vlen), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "Mz z", 4, v, vlen), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	struct queue_fsm *r = NULL;
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	assert_null(r);
	/* a truncated one, and one with a recipient state out of range */
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, "Mz z", 4), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "Mzz", 3, v, vlen - 1), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	unsigned char *bad = malloc(vlen);
	memcpy(bad, v, vlen);
	bad[vlen - QUEUE_STATE_RCPT + 2] = 9;
	store_batch_clear(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "Mzz", 3, bad, vlen), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	/* a legacy index key whose record is missing; an unknown kind of key */
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, "Mzz", 3), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "Q\0\0\0\0\0\0\0\1nope", 13, "", 0),
			 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, "Q\0\0\0\0\0\0\0\1nope", 13), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "X1", 2, "", 0), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	/* without them the rest loads; a garbage envelope shows when read */
	store_batch_clear(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_INDEX, "X1", 2), 0);
	assert_int_equal(store_batch_put(&b, STORE_CF_QUEUE, "m100000", 7, "\x0a\xff", 2), 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	Relay__QueueRecord *rec = NULL;
	assert_int_equal(queue_fsm_read_record(r, "m100000", &rec), QUEUE_ECORRUPT);
	assert_null(rec);
	assert_int_equal(queue_fsm_read_record(r, "m99999", &rec), 0);
	relay__queue_record__free_unpacked(rec, NULL);
	queue_fsm_free(r);
	free(bad);
	free(v);
	store_batch_fini(&b);
	world_fini(&w);
	assert_string_equal(queue_strerror(QUEUE_EINVAL), "invalid command");
}

/* ---- outcomes, deletes and the scheduler's index ---- */

/* An Outcome (or with del=1 a Delete) for id, recipients idx[0..n). */
struct obuf {
	Relay__Command cmd;
	Relay__Outcome out;
	Relay__Delete del;
	uint32_t idx[8];
	char id[QUEUE_ID_MAX + 8];
};

static Relay__Command *
make_outcome(struct obuf *o, const char *id, Relay__OutcomeKind kind, uint64_t at_ms,
	     uint64_t next_ms, const uint32_t *idx, size_t n)
{
	memset(o, 0, sizeof(*o));
	relay__command__init(&o->cmd);
	relay__outcome__init(&o->out);
	snprintf(o->id, sizeof(o->id), "%s", id);
	memcpy(o->idx, idx, n * sizeof(*idx));
	o->out.queue_id = o->id;
	o->out.rcpt_index = o->idx;
	o->out.n_rcpt_index = n;
	o->out.kind = kind;
	o->out.at_ms = at_ms;
	if (kind == RELAY__OUTCOME_KIND__DEFERRED) {
		o->out.has_next_attempt_ms = 1;
		o->out.next_attempt_ms = next_ms;
	}
	o->out.reply = kind == RELAY__OUTCOME_KIND__DELIVERED ? "250 2.0.0 ok"
		       : kind == RELAY__OUTCOME_KIND__FAILED  ? "550 5.1.1 no such user"
							      : "451 4.7.1 try later";
	o->out.relay = "mx.example[192.0.2.1]:25";
	o->out.dsn_status = kind == RELAY__OUTCOME_KIND__DELIVERED ? "2.0.0"
			    : kind == RELAY__OUTCOME_KIND__FAILED  ? "5.1.1"
								   : "4.7.1";
	o->cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	o->cmd.outcome = &o->out;
	return &o->cmd;
}

static Relay__Command *
make_delete(struct obuf *o, const char *id, const uint32_t *idx, size_t n)
{
	memset(o, 0, sizeof(*o));
	relay__command__init(&o->cmd);
	relay__delete__init(&o->del);
	snprintf(o->id, sizeof(o->id), "%s", id);
	if (n)
		memcpy(o->idx, idx, n * sizeof(*idx));
	o->del.queue_id = o->id;
	o->del.rcpt_index = n ? o->idx : NULL;
	o->del.n_rcpt_index = n;
	o->cmd.cmd_case = RELAY__COMMAND__CMD_DELETE;
	o->cmd.delete_ = &o->del;
	return &o->cmd;
}

/* The current epoch of the domain of recipient rcpt of message id (0 when it has none). */
static uint64_t
epoch_of(struct queue_fsm *q, const char *id, uint32_t rcpt)
{
	Relay__QueueRecord *rec;
	if (queue_fsm_read_record(q, id, &rec))
		return 0;
	uint64_t epoch = 0;
	if (rcpt < rec->n_rcpts) {
		char d[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
		queue_addr_domain(rec->rcpts[rcpt]->rcpt->addr, d);
		if (queue_fsm_domain_owner(q, d, owner, &epoch))
			epoch = 0;
	}
	relay__queue_record__free_unpacked(rec, NULL);
	return epoch;
}

/* Applies one command at index, writes its batch to the store and keeps a copy in w->log.
 * Returns the apply status; *nops (if set) gets the number of store operations.  An Outcome
 * without an epoch gets the current epoch of its first recipient's domain (what the owner of
 * that domain would send); tests of fencing set it themselves. */
static int
apply1(struct world *w, uint64_t index, Relay__Command *cmd, unsigned *nops)
{
	if (cmd && cmd->cmd_case == RELAY__COMMAND__CMD_OUTCOME && cmd->outcome &&
	    !cmd->outcome->has_epoch && cmd->outcome->n_rcpt_index) {
		cmd->outcome->has_epoch = 1;
		cmd->outcome->epoch =
		    epoch_of(w->q, cmd->outcome->queue_id, cmd->outcome->rcpt_index[0]);
	}
	struct store_batch one;
	store_batch_init(&one);
	int rv = queue_apply(w->q, index, cmd, &one);
	if (rv)
		assert_int_equal(one.len, 0); /* a rejected command writes nothing */
	assert_int_equal(store_write(w->s, &one, 0), 0);
	assert_int_equal(store_batch_append(&w->log, &one), 0);
	if (nops)
		*nops = one.count;
	store_batch_fini(&one);
	return rv;
}

static void
accept1(struct world *w, uint64_t index, const char *id, unsigned i)
{
	struct cmdbuf b;
	make_cmd(&b, id, i);
	assert_int_equal(apply1(w, index, &b.cmd, NULL), 0);
}

struct kv_count {
	struct store *s;
	unsigned n;
};

static int
own_kv_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct kv_count *c = arg;
	void *v;
	size_t vl;
	assert_int_equal(((const unsigned char *)key)[0], QUEUE_KEY_OWN);
	if (store_get(c->s, STORE_CF_QUEUE, key, klen, &v, &vl))
		fail_msg("ownership key %.*s (len %zu) not in the store", (int)klen - 1,
			 (const char *)key + 1, klen);
	assert_int_equal(vl, vlen);
	assert_memory_equal(v, val, vlen);
	free(v);
	c->n++;
	return 0;
}

/* The ownership keys of the store are exactly what memory says (queue_fsm_own_kv). */
static void
check_own_keys(struct world *w)
{
	struct kv_count c = {w->s, 0};
	assert_int_equal(queue_fsm_own_kv(w->q, own_kv_cb, &c), 0);
	struct store_iter *it;
	assert_int_equal(store_iter_new(w->s, STORE_CF_QUEUE, &it), 0);
	unsigned n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t kl;
		const unsigned char *key = store_iter_key(it, &kl);
		n += kl && key[0] == QUEUE_KEY_OWN;
	}
	store_iter_free(it);
	assert_int_equal(n, c.n);
}

/* The store agrees with memory (queue_fsm.h "Stored form"): one envelope and one body per
 * message, a result key for each attempted recipient only, exactly one state value per message
 * (index CF, 'M' + queue id) holding what memory holds; the ownership keys match.  And the
 * store alone gives the same state (queue_fsm_new: the same digest). */
static void
check_store(struct world *w)
{
	check_own_keys(w);
	struct queue_counts c;
	queue_fsm_counts(w->q, &c);
	static const enum store_cf cfs[] = {STORE_CF_QUEUE, STORE_CF_BODY, STORE_CF_INDEX};
	uint64_t results = 0, attempted = 0;
	for (const struct queue_msg *m = queue_fsm_first(w->q); m; m = queue_fsm_next(w->q, m))
		for (uint32_t i = 0; i < m->nrcpts; i++)
			attempted += m->rcpts[i].attempts > 0;
	for (unsigned k = 0; k < 3; k++) {
		struct store_iter *it;
		assert_int_equal(store_iter_new(w->s, cfs[k], &it), 0);
		uint64_t n = 0;
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it), n++) {
			size_t kl, vl;
			const unsigned char *key = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			char id[QUEUE_ID_MAX + 1];
			if (cfs[k] == STORE_CF_QUEUE && kl && key[0] == QUEUE_KEY_OWN) {
				n--; /* checked by check_own_keys */
				continue;
			}
			const unsigned char *z = memchr(key, 0, kl);
			size_t off = cfs[k] == STORE_CF_INDEX ? 1 : 0;
			size_t idl = z ? (size_t)(z - key) : kl - off;
			if (cfs[k] == STORE_CF_INDEX)
				assert_int_equal(key[0], QUEUE_INDEX_MSG);
			assert_true(idl > 0 && idl <= QUEUE_ID_MAX);
			memcpy(id, key + off, idl);
			id[idl] = 0;
			const struct queue_msg *m = queue_fsm_lookup(w->q, id);
			if (!m)
				fail_msg("cf %u: key for %s, which is not in the queue", k, id);
			assert_true(m->nqueued > 0);
			if (z) {
				/* a result: id, 0, 'l', recipient */
				assert_int_equal(cfs[k], STORE_CF_QUEUE);
				assert_int_equal(kl, idl + 4);
				assert_int_equal(key[idl + 1], QUEUE_KEY_RESULT);
				uint32_t i = (uint32_t)key[idl + 2] << 8 | key[idl + 3];
				assert_true(i < m->nrcpts && m->rcpts[i].attempts > 0);
				results++;
				n--;
			} else if (cfs[k] == STORE_CF_INDEX) {
				assert_true(vl >= QUEUE_STATE_FIXED + m->nrcpts * QUEUE_STATE_RCPT);
				assert_int_equal(v[1], m->held);
				assert_int_equal(store_u64_decode(v + 2), m->accept_index);
				assert_int_equal(store_u64_decode(v + 26), m->update_index);
				const unsigned char *r = v + vl - m->nrcpts * QUEUE_STATE_RCPT;
				for (uint32_t i = 0; i < m->nrcpts; i++, r += QUEUE_STATE_RCPT) {
					assert_int_equal(r[2], m->rcpts[i].state);
					assert_int_equal(store_u64_decode(r + 8),
							 m->rcpts[i].next_attempt_ms);
				}
			} else if (cfs[k] == STORE_CF_BODY) {
				assert_int_equal(vl, m->size);
			}
		}
		assert_int_equal(store_iter_status(it), 0);
		store_iter_free(it);
		assert_int_equal(n, c.messages);
	}
	assert_int_equal(results, attempted);
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w->s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w->q));
	queue_fsm_free(r);
}

static void
test_deferred_then_delivered(void **state)
{
	struct world w;
	world_init(&w);
	struct cmdbuf a;
	make_cmd(&a, "m1", 2); /* 3 recipients */
	assert_int_equal(apply1(&w, 1, &a.cmd, NULL), 0);
	uint64_t t0 = a.acc.received_ms;
	struct obuf o;
	const uint32_t r01[] = {0, 1}, r2[] = {2};

	/* recipients 0 and 1 deferred, a "delayed" DSN sent for them */
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, t0 + 5000, t0 + 60000, r01, 2);
	o.out.delay_notified = o.out.has_delay_notified = 1;
	o.out.epoch = epoch_of(w.q, "m1", 0);
	assert_int_equal(o.out.epoch, 1); /* both domains assigned by the Accept */
	o.out.has_epoch = 1;
	assert_int_equal(apply1(&w, 2, &o.cmd, NULL), 0);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_non_null(m);
	assert_int_equal(m->nqueued, 3);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(m->rcpts[i].state, QUEUE_RCPT_QUEUED);
		assert_int_equal(m->rcpts[i].attempts, 1);
		assert_int_equal(m->rcpts[i].next_attempt_ms, t0 + 60000);
		assert_int_equal(m->rcpts[i].last_attempt_ms, t0 + 5000);
		assert_int_equal(m->rcpts[i].delay_notified, 1);
	}
	assert_int_equal(m->rcpts[2].attempts, 0);
	assert_int_equal(m->rcpts[2].delay_notified, 0);
	assert_int_equal(m->next_attempt_ms, t0); /* recipient 2 is still due at once */
	check_store(&w);

	/* recipient 2 delivered: the message's next attempt moves to the deferred ones */
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DELIVERED, t0 + 6000, 0, r2, 1);
	assert_int_equal(apply1(&w, 3, &o.cmd, NULL), 0);
	m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[2].state, QUEUE_RCPT_DELIVERED);
	assert_int_equal(m->rcpts[2].attempts, 1);
	assert_int_equal(m->nqueued, 2);
	assert_int_equal(m->next_attempt_ms, t0 + 60000);
	assert_int_equal(queue_fsm_next_due_ms(w.q), t0 + 60000);
	check_store(&w);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_int_equal(rec->next_attempt_ms, t0 + 60000);
	assert_int_equal(rec->update_index, 3);
	assert_int_equal(rec->accept_index, 1);
	assert_int_equal(rec->rcpts[0]->attempts, 1);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 4.7.1 try later");
	assert_string_equal(rec->rcpts[0]->last_relay, "mx.example[192.0.2.1]:25");
	assert_string_equal(rec->rcpts[0]->last_dsn_status, "4.7.1");
	assert_true(rec->rcpts[0]->has_delay_notified && rec->rcpts[0]->delay_notified);
	assert_int_equal(rec->rcpts[0]->epoch, 1);
	assert_int_equal(rec->rcpts[2]->state, RELAY__RCPT_STATE__RCPT_DELIVERED);
	assert_string_equal(rec->rcpts[2]->last_reply, "250 2.0.0 ok");
	assert_string_equal(rec->rcpts[2]->rcpt->addr, "c@example.com");
	relay__queue_record__free_unpacked(rec, NULL);

	/* a second deferral keeps delay_notified (sticky) and counts the attempt */
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, t0 + 61000, t0 + 120000, r01, 2);
	assert_int_equal(apply1(&w, 4, &o.cmd, NULL), 0);
	m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[0].attempts, 2);
	assert_int_equal(m->rcpts[0].delay_notified, 1);
	assert_int_equal(m->next_attempt_ms, t0 + 120000);

	/* the last two delivered: the message is gone from memory and from the store */
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DELIVERED, t0 + 121000, 0, r01, 2);
	unsigned nops;
	assert_int_equal(apply1(&w, 5, &o.cmd, &nops), 0);
	/* envelope, body, state value and the results of the three attempted recipients
	 * deleted; a tombstone; the assignments of example.org and example.net stay, idle (no
	 * write) */
	assert_int_equal(nops, 3 + 3 + 1);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), QUEUE_ENOTFOUND);
	void *body;
	size_t blen;
	assert_int_equal(queue_fsm_read_body(w.q, "m1", &body, &blen), QUEUE_ENOTFOUND);
	assert_int_equal(queue_fsm_next_due_ms(w.q), UINT64_MAX);
	check_store(&w);
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, 0);
	for (unsigned s = 0; s < QUEUE_RCPT_STATES; s++)
		assert_int_equal(c.rcpts[s], 0);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.delivered, 3);
	assert_int_equal(st.deferred, 4);
	assert_int_equal(st.failed, 0);
	assert_int_equal(st.messages_deleted, 1);
	assert_int_equal(st.dsns, 0);
	/* a reload agrees */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	assert_null(queue_fsm_first(r));
	queue_fsm_free(r);
	world_fini(&w);
}

static void
test_mixed_and_delete(void **state)
{
	struct world w;
	world_init(&w);
	accept1(&w, 1, "m1", 2); /* 3 recipients */
	accept1(&w, 2, "m2", 2);
	struct obuf o;
	const uint32_t r0[] = {0}, r1[] = {1}, r2[] = {2}, r3[] = {3};
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DELIVERED, 10, 0, r0, 1);
	assert_int_equal(apply1(&w, 3, &o.cmd, NULL), 0);
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__FAILED, 11, 0, r1, 1);
	assert_int_equal(apply1(&w, 4, &o.cmd, NULL), 0);
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, 12, 1800000000000ull, r2, 1);
	assert_int_equal(apply1(&w, 5, &o.cmd, NULL), 0);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_non_null(m);
	assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_DELIVERED);
	assert_int_equal(m->rcpts[1].state, QUEUE_RCPT_FAILED);
	assert_int_equal(m->rcpts[2].state, QUEUE_RCPT_QUEUED);
	assert_int_equal(m->nqueued, 1);
	struct queue_counts c;
	queue_fsm_counts(w.q, &c);
	assert_int_equal(c.messages, 2);
	assert_int_equal(c.rcpts[QUEUE_RCPT_QUEUED], 4);
	assert_int_equal(c.rcpts[QUEUE_RCPT_DELIVERED], 1);
	assert_int_equal(c.rcpts[QUEUE_RCPT_FAILED], 1);
	check_store(&w);

	/* an index past the message's recipients: rejected, nothing changes */
	uint64_t d = queue_fsm_digest(w.q);
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DELIVERED, 13, 0, r3, 1);
	assert_int_equal(apply1(&w, 6, &o.cmd, NULL), QUEUE_EINVAL);
	make_delete(&o, "m1", r3, 1);
	assert_int_equal(apply1(&w, 7, &o.cmd, NULL), QUEUE_EINVAL);
	assert_int_equal(queue_fsm_digest(w.q), d);

	/* delete of a final recipient changes nothing; delete with no index takes the rest */
	unsigned nops;
	make_delete(&o, "m1", r0, 1);
	assert_int_equal(apply1(&w, 8, &o.cmd, &nops), 0);
	assert_int_equal(nops, 0);
	assert_int_equal(queue_fsm_lookup(w.q, "m1")->rcpts[0].state, QUEUE_RCPT_DELIVERED);
	make_delete(&o, "m1", NULL, 0);
	assert_int_equal(apply1(&w, 9, &o.cmd, NULL), 0);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	/* now unknown: the operator is told */
	assert_int_equal(apply1(&w, 10, &o.cmd, NULL), QUEUE_ENOTFOUND);
	/* a partial delete keeps the message */
	make_delete(&o, "m2", r1, 1);
	assert_int_equal(apply1(&w, 11, &o.cmd, NULL), 0);
	m = queue_fsm_lookup(w.q, "m2");
	assert_int_equal(m->rcpts[1].state, QUEUE_RCPT_DELETED);
	assert_int_equal(m->nqueued, 2);
	check_store(&w);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.delivered, 1);
	assert_int_equal(st.failed, 1);
	assert_int_equal(st.deferred, 1);
	assert_int_equal(st.deleted, 2);
	assert_int_equal(st.messages_deleted, 1);
	world_fini(&w);
}

static void
test_failed_with_dsn(void **state)
{
	struct world w;
	world_init(&w);
	accept1(&w, 1, "m1", 1); /* 2 recipients, from@example.com */
	struct cmdbuf dsn;
	make_cmd(&dsn, "m1-dsn", 3); /* 1 recipient */
	dsn.acc.mail_from = "";
	dsn.r[0].addr = "from@example.com";
	struct obuf o;
	const uint32_t r0[] = {0}, r1[] = {1};
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__FAILED, 50, 0, r0, 1);
	o.out.dsn = &dsn.acc;

	/* a DSN must come from <> and be another message */
	dsn.acc.mail_from = "from@example.com";
	assert_int_equal(queue_validate(&o.cmd), QUEUE_EINVAL);
	dsn.acc.mail_from = "";
	dsn.acc.queue_id = "m1";
	assert_int_equal(queue_validate(&o.cmd), QUEUE_EINVAL);
	dsn.acc.queue_id = dsn.id;
	dsn.acc.n_rcpts = 0;
	assert_int_equal(queue_validate(&o.cmd), QUEUE_EINVAL);
	dsn.acc.n_rcpts = 1;
	assert_int_equal(queue_validate(&o.cmd), 0);

	unsigned nops;
	assert_int_equal(apply1(&w, 2, &o.cmd, &nops), 0);
	/* m1's state value and its failed recipient's result; example.org has no queued
	 * recipient left: its assignment stays, idle (no write); the DSN's body, envelope and
	 * state value, and an assignment for example.com */
	assert_int_equal(nops, 2 + 3 + 1);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_FAILED);
	const struct queue_msg *dm = queue_fsm_lookup(w.q, "m1-dsn");
	assert_non_null(dm);
	assert_int_equal(dm->accept_index, 2);
	assert_int_equal(dm->nqueued, 1);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1-dsn", &rec), 0);
	assert_string_equal(rec->mail_from, "");
	assert_string_equal(rec->rcpts[0]->rcpt->addr, "from@example.com");
	relay__queue_record__free_unpacked(rec, NULL);
	void *body;
	size_t blen;
	assert_int_equal(queue_fsm_read_body(w.q, "m1-dsn", &body, &blen), 0);
	assert_int_equal(blen, dsn.acc.body.len);
	assert_memory_equal(body, dsn.body, blen);
	free(body);
	check_store(&w);

	/* the DSN is delivered and removed; the same outcome again (a duplicate) changes nothing
	 * and does not bring the DSN back */
	struct obuf od;
	make_outcome(&od, "m1-dsn", RELAY__OUTCOME_KIND__DELIVERED, 60, 0, r0, 1);
	assert_int_equal(apply1(&w, 3, &od.cmd, NULL), 0);
	assert_null(queue_fsm_lookup(w.q, "m1-dsn"));
	uint64_t d = queue_fsm_digest(w.q);
	assert_int_equal(apply1(&w, 4, &o.cmd, &nops), 0);
	assert_int_equal(nops, 0);
	assert_null(queue_fsm_lookup(w.q, "m1-dsn"));
	assert_int_equal(queue_fsm_digest(w.q), d);

	/* the last recipient fails too, with a second DSN: m1 goes, its DSN arrives */
	dsn.acc.queue_id = "m1-dsn2";
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__FAILED, 70, 0, r1, 1);
	o.out.dsn = &dsn.acc;
	assert_int_equal(apply1(&w, 5, &o.cmd, &nops), 0);
	/* m1's envelope, body, state value and its first failed recipient's result, its
	 * tombstone (example.net's assignment stays, idle); the DSN's three keys and
	 * example.com's assignment (idle and unowned - no member is LIVE - so made anew) */
	assert_int_equal(nops, 4 + 1 + 3 + 1);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	assert_non_null(queue_fsm_lookup(w.q, "m1-dsn2"));
	check_store(&w);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.failed, 2);
	assert_int_equal(st.dsns, 2);
	assert_int_equal(st.messages_deleted, 2);
	world_fini(&w);
}

static void
test_duplicates_and_unknown(void **state)
{
	struct world w;
	world_init(&w);
	accept1(&w, 1, "m1", 1); /* 2 recipients */
	struct obuf o;
	const uint32_t r0[] = {0};
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, 10, 1000, r0, 1);
	unsigned nops;
	assert_int_equal(apply1(&w, 2, &o.cmd, &nops), 0);
	assert_true(nops > 0);
	/* the same deferral again (same at_ms: the same attempt) is a no-op */
	uint64_t d0 = queue_fsm_digest(w.q);
	assert_int_equal(apply1(&w, 3, &o.cmd, &nops), 0);
	assert_int_equal(nops, 0);
	assert_int_equal(queue_fsm_digest(w.q), d0);
	assert_int_equal(queue_fsm_lookup(w.q, "m1")->rcpts[0].attempts, 1);
	/* a later deferral is a new attempt */
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, 15, 2000, r0, 1);
	assert_int_equal(apply1(&w, 4, &o.cmd, NULL), 0);
	assert_int_equal(queue_fsm_lookup(w.q, "m1")->rcpts[0].attempts, 2);
	assert_int_equal(queue_fsm_lookup(w.q, "m1")->next_attempt_ms, 2000);
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DELIVERED, 20, 0, r0, 1);
	assert_int_equal(apply1(&w, 5, &o.cmd, NULL), 0);
	uint64_t d = queue_fsm_digest(w.q);
	for (unsigned k = 0; k < 3; k++) {
		/* the same outcome again, or a late contradicting one: nothing */
		make_outcome(&o, "m1",
			     k == 0   ? RELAY__OUTCOME_KIND__DELIVERED
			     : k == 1 ? RELAY__OUTCOME_KIND__FAILED
				      : RELAY__OUTCOME_KIND__DEFERRED,
			     30, 5000, r0, 1);
		assert_int_equal(apply1(&w, 6 + k, &o.cmd, &nops), 0);
		assert_int_equal(nops, 0);
		assert_int_equal(queue_fsm_digest(w.q), d);
	}
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_DELIVERED);
	assert_int_equal(m->rcpts[0].attempts, 3);
	/* unknown queue id: no-op, even with a DSN attached */
	struct cmdbuf dsn;
	make_cmd(&dsn, "x-dsn", 5); /* mail_from "" */
	make_outcome(&o, "nope", RELAY__OUTCOME_KIND__FAILED, 40, 0, r0, 1);
	o.out.dsn = &dsn.acc;
	assert_int_equal(apply1(&w, 10, &o.cmd, &nops), 0);
	assert_int_equal(nops, 0);
	assert_null(queue_fsm_lookup(w.q, "x-dsn"));
	assert_int_equal(queue_fsm_digest(w.q), d);
	check_store(&w);
	world_fini(&w);
}

static void
test_invalid_outcomes(void **state)
{
	static char long_reply[QUEUE_REPLY_MAX + 2];
	memset(long_reply, 'r', QUEUE_REPLY_MAX + 1);
	static char long_relay[QUEUE_RELAY_MAX + 2];
	memset(long_relay, 'h', QUEUE_RELAY_MAX + 1);
	enum {
		NO_RCPTS,
		DUP_INDEX,
		BIG_INDEX,
		BAD_KIND,
		DEFER_NO_NEXT,
		REPLY_CRLF,
		REPLY_LONG,
		RELAY_LONG,
		RELAY_CTRL,
		BAD_STATUS,
		BAD_ID,
		NULL_OUTCOME,
		DEL_NULL,
		DEL_BAD_ID,
		DEL_DUP,
		DEL_BIG,
		NCASES
	};
	struct world w;
	world_init(&w);
	accept1(&w, 1, "m1", 2);
	uint64_t d = queue_fsm_digest(w.q);
	for (int k = 0; k < NCASES; k++) {
		struct obuf o;
		const uint32_t r01[] = {0, 1};
		if (k >= DEL_NULL)
			make_delete(&o, "m1", r01, 2);
		else
			make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, 1, 2, r01, 2);
		/* each case starts valid */
		assert_int_equal(queue_validate(&o.cmd), 0);
		switch (k) {
		case NO_RCPTS:
			o.out.n_rcpt_index = 0;
			break;
		case DUP_INDEX:
			o.idx[1] = 0;
			break;
		case BIG_INDEX:
			o.idx[1] = QUEUE_RCPTS_MAX;
			break;
		case BAD_KIND:
			o.out.kind = (Relay__OutcomeKind)99;
			break;
		case DEFER_NO_NEXT:
			o.out.has_next_attempt_ms = 0;
			break;
		case REPLY_CRLF:
			o.out.reply = "451 try\r\n250 later";
			break;
		case REPLY_LONG:
			o.out.reply = long_reply;
			break;
		case RELAY_LONG:
			o.out.relay = long_relay;
			break;
		case RELAY_CTRL:
			o.out.relay = "mx\x01.example";
			break;
		case BAD_STATUS:
			o.out.dsn_status = "4.7.x";
			break;
		case BAD_ID:
			o.out.queue_id = "m 1";
			break;
		case NULL_OUTCOME:
			o.cmd.outcome = NULL;
			break;
		case DEL_NULL:
			o.cmd.delete_ = NULL;
			break;
		case DEL_BAD_ID:
			o.del.queue_id = "";
			break;
		case DEL_DUP:
			o.idx[0] = 1;
			break;
		case DEL_BIG:
			o.idx[0] = 5000;
			break;
		}
		assert_int_equal(queue_validate(&o.cmd), QUEUE_EINVAL);
		assert_int_equal(apply1(&w, 2 + (uint64_t)k, &o.cmd, NULL), QUEUE_EINVAL);
	}
	assert_int_equal(queue_fsm_digest(w.q), d);
	/* the bounds themselves are fine */
	struct obuf o;
	const uint32_t r0[] = {0};
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__FAILED, 1, 0, r0, 1);
	long_reply[QUEUE_REPLY_MAX] = 0;
	long_relay[QUEUE_RELAY_MAX] = 0;
	o.out.reply = long_reply;
	o.out.relay = long_relay;
	o.out.dsn_status = "5.123.456";
	assert_int_equal(queue_validate(&o.cmd), 0);
	o.out.reply = o.out.relay = o.out.dsn_status = NULL;
	assert_int_equal(queue_validate(&o.cmd), 0);
	world_fini(&w);
}

/* ---- the scheduler's order ---- */

struct due_list {
	const struct queue_msg *m[30000];
	unsigned n, stop_at;
};

static int
due_cb(void *arg, const struct queue_msg *m)
{
	struct due_list *l = arg;
	l->m[l->n++] = m;
	return l->stop_at && l->n == l->stop_at;
}

/* Checks queue_fsm_due(now, max) against a brute-force scan of every message. */
static void
check_due(struct queue_fsm *q, uint64_t now, size_t max)
{
	static struct due_list got;
	static const struct queue_msg *want[30000];
	memset(&got, 0, sizeof(got));
	unsigned nwant = 0;
	for (const struct queue_msg *m = queue_fsm_first(q); m; m = queue_fsm_next(q, m))
		if (m->next_attempt_ms <= now)
			want[nwant++] = m;
	/* insertion order is apply order: a stable sort by next attempt gives the expected */
	for (unsigned i = 1; i < nwant; i++) {
		const struct queue_msg *x = want[i];
		unsigned j = i;
		for (; j > 0 && want[j - 1]->next_attempt_ms > x->next_attempt_ms; j--)
			want[j] = want[j - 1];
		want[j] = x;
	}
	int n = queue_fsm_due(q, now, due_cb, &got, max);
	unsigned expect = nwant < max ? nwant : (unsigned)max;
	assert_int_equal(n, expect);
	assert_int_equal(got.n, expect);
	for (unsigned i = 0; i < expect; i++)
		if (got.m[i] != want[i])
			fail_msg("due order differs at %u: %s vs %s", i, got.m[i]->queue_id,
				 want[i]->queue_id);
}

static void
test_due_order(void **state)
{
	struct world w;
	world_init(&w);
	assert_int_equal(queue_fsm_next_due_ms(w.q), UINT64_MAX);
	static struct due_list l;
	memset(&l, 0, sizeof(l));
	assert_int_equal(queue_fsm_due(w.q, UINT64_MAX, due_cb, &l, 10), 0);

	enum { N = 3000 };
	uint32_t x = 12345; /* a fixed LCG: the same script every run */
	uint64_t base = 1700000000000ull;
	struct store_batch one;
	store_batch_init(&one);
	for (unsigned i = 0; i < N; i++) {
		char id[32];
		snprintf(id, sizeof(id), "d%05u", N - i); /* key order is not apply order */
		struct cmdbuf b;
		make_cmd(&b, id, i);
		x = x * 1103515245u + 12345u;
		/* not in apply order, and many equal times (ties go in apply order) */
		b.acc.received_ms = base + 100 * ((x >> 8) % 1000);
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, i + 1, &b.cmd, &one), 0);
		assert_int_equal(store_write(w.s, &one, 0), 0);
	}
	uint64_t idx = N;
	/* outcomes move messages around, finish some */
	for (unsigned i = 0; i < N; i += 3) {
		char id[32];
		snprintf(id, sizeof(id), "d%05u", N - i);
		struct obuf o;
		const uint32_t r0[] = {0};
		x = x * 1103515245u + 12345u;
		if (i % 2)
			make_outcome(&o, id, RELAY__OUTCOME_KIND__DEFERRED, base,
				     base + (x >> 8) % 200000, r0, 1);
		else
			make_outcome(&o, id, RELAY__OUTCOME_KIND__DELIVERED, base, 0, r0, 1);
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, ++idx, &o.cmd, &one), 0);
		assert_int_equal(store_write(w.s, &one, 0), 0);
	}
	store_batch_fini(&one);
	check_store(&w);

	uint64_t min = UINT64_MAX;
	for (const struct queue_msg *m = queue_fsm_first(w.q); m; m = queue_fsm_next(w.q, m))
		if (m->next_attempt_ms < min)
			min = m->next_attempt_ms;
	assert_int_equal(queue_fsm_next_due_ms(w.q), min);
	check_due(w.q, min - 1, 100);		/* nothing due */
	check_due(w.q, min, 100);		/* the first one(s) */
	check_due(w.q, base + 30000, 10);	/* bounded by max */
	check_due(w.q, base + 30000, 100000);	/* all due (more than the stack frontier) */
	check_due(w.q, base + 150000, 5000);	/* most of them */
	check_due(w.q, UINT64_MAX, (size_t)-1); /* everything */
	/* cb stops the walk */
	memset(&l, 0, sizeof(l));
	l.stop_at = 7;
	assert_int_equal(queue_fsm_due(w.q, UINT64_MAX, due_cb, &l, 100), 7);

	/* rebuilt from the store: the same order */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	assert_int_equal(queue_fsm_next_due_ms(r), min);
	static struct due_list a, b;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	int na = queue_fsm_due(w.q, UINT64_MAX, due_cb, &a, 30000);
	int nb = queue_fsm_due(r, UINT64_MAX, due_cb, &b, 30000);
	assert_int_equal(na, nb);
	for (int i = 0; i < na; i++)
		assert_string_equal(a.m[i]->queue_id, b.m[i]->queue_id);
	check_due(r, base + 150000, 5000);
	queue_fsm_free(r);
	world_fini(&w);
}

/* A mixed script: accepts, outcomes of every kind (some with DSNs), deletes, duplicates. */
static void
run_mixed(struct world *w, unsigned n)
{
	uint64_t index = 0;
	for (unsigned i = 0; i < n; i++) {
		char id[32];
		snprintf(id, sizeof(id), "x%04u", i);
		accept1(w, ++index, id, i);
		if (i < 3)
			continue;
		snprintf(id, sizeof(id), "x%04u", i - 3);
		struct obuf o;
		struct cmdbuf dsn;
		const uint32_t r0[] = {0}, r1[] = {1};
		switch (i % 5) {
		case 0:
			make_outcome(&o, id, RELAY__OUTCOME_KIND__DELIVERED, i, 0, r0, 1);
			break;
		case 1:
			make_outcome(&o, id, RELAY__OUTCOME_KIND__DEFERRED, i, 1700000500000ull - i,
				     r0, 1);
			break;
		case 2: {
			char did[32];
			snprintf(did, sizeof(did), "x%04u-dsn", i - 3);
			make_cmd(&dsn, did, 0);
			make_outcome(&o, id, RELAY__OUTCOME_KIND__FAILED, i, 0, r0, 1);
			o.out.dsn = &dsn.acc;
			break;
		}
		case 3:
			make_delete(&o, id, (i / 5) % 2 ? r1 : NULL, (i / 5) % 2);
			break;
		default:
			make_outcome(&o, id, RELAY__OUTCOME_KIND__DELIVERED, i, 0, r0, 1);
			break;
		}
		int rv = apply1(w, ++index, &o.cmd, NULL);
		assert_true(rv == 0 || rv == QUEUE_EINVAL); /* r1 of a 1-recipient message */
		if (i % 4 == 0)
			assert_int_equal(apply1(w, ++index, &o.cmd, NULL), rv); /* a duplicate */
	}
}

static void
test_determinism_outcomes(void **state)
{
	struct world a, b, c;
	world_init(&a);
	world_init(&b);
	world_init(&c);
	run_mixed(&a, 400);
	run_mixed(&b, 400);
	assert_int_equal(a.log.len, b.log.len);
	assert_memory_equal(a.log.buf, b.log.buf, a.log.len);
	assert_int_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
	struct queue_fsm_stats sa, sb;
	queue_fsm_stats(a.q, &sa);
	queue_fsm_stats(b.q, &sb);
	assert_memory_equal(&sa, &sb, sizeof(sa));
	assert_true(sa.delivered > 0 && sa.deferred > 0 && sa.failed > 0 && sa.deleted > 0 &&
		    sa.dsns > 0 && sa.messages_deleted > 0);
	run_mixed(&c, 399);
	assert_int_not_equal(queue_fsm_digest(a.q), queue_fsm_digest(c.q));
	check_store(&a);
	/* a reply text alone changes the digest */
	struct world e, f;
	world_init(&e);
	world_init(&f);
	accept1(&e, 1, "m1", 1);
	accept1(&f, 1, "m1", 1);
	struct obuf o;
	const uint32_t r0[] = {0};
	make_outcome(&o, "m1", RELAY__OUTCOME_KIND__DEFERRED, 1, 2, r0, 1);
	assert_int_equal(apply1(&e, 2, &o.cmd, NULL), 0);
	o.out.reply = "451 4.7.1 try LATER"; /* same length, same metadata */
	assert_int_equal(apply1(&f, 2, &o.cmd, NULL), 0);
	assert_int_not_equal(queue_fsm_digest(e.q), queue_fsm_digest(f.q));
	world_fini(&e);
	world_fini(&f);

	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(a.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(a.q));
	queue_fsm_free(r);
	world_fini(&a);
	world_fini(&b);
	world_fini(&c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_determinism),
	    cmocka_unit_test(test_duplicate_is_noop),
	    cmocka_unit_test(test_invalid_commands),
	    cmocka_unit_test(test_lookup_and_reads),
	    cmocka_unit_test(test_many_messages_rehash),
	    cmocka_unit_test(test_corrupt_record),
	    cmocka_unit_test(test_deferred_then_delivered),
	    cmocka_unit_test(test_mixed_and_delete),
	    cmocka_unit_test(test_failed_with_dsn),
	    cmocka_unit_test(test_duplicates_and_unknown),
	    cmocka_unit_test(test_invalid_outcomes),
	    cmocka_unit_test(test_due_order),
	    cmocka_unit_test(test_determinism_outcomes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
