/*
 * test_queue_own.c - delivery ownership in the queue state machine (queue_fsm.h "Delivery
 * ownership"), over the in-memory store: the assignment rules (a table of steps, each with the
 * owner and epoch every domain must have after it), rendezvous stability (one of 5 members
 * leaving moves only its domains), fencing (stale epochs ignored and counted, no DSN),
 * Hold/Release/Retry, the tombstones of removed queue ids and their bound, persistence across a
 * reopen and queue_fsm_reload, determinism of a random command stream (digests and store
 * batches), the per-owner due lists (order against a brute force scan, and cost), the members
 * bound and the validation of the new commands, idle assignments (reuse, moves, the eviction
 * order and bound, reload, determinism, allocation failures).
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
	struct store_batch log; /* every apply write, concatenated */
	uint64_t index;		/* of the last command applied */
	unsigned nops;		/* store operations of the last command */
	/* when set, applies cmd at index into one instead of queue_apply (allocation faults) */
	int (*apply_fn)(struct world *w, uint64_t index, const Relay__Command *cmd,
			struct store_batch *one);
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

/* Applies cmd at the next index; its batch goes to the store and to w->log. */
static int
apply(struct world *w, const Relay__Command *cmd)
{
	struct store_batch one;
	store_batch_init(&one);
	++w->index;
	int rv = w->apply_fn ? w->apply_fn(w, w->index, cmd, &one)
			     : queue_apply(w->q, w->index, cmd, &one);
	if (rv)
		assert_int_equal(one.len, 0); /* a rejected command writes nothing */
	assert_int_equal(store_write(w->s, &one, 0), 0);
	assert_int_equal(store_batch_append(&w->log, &one), 0);
	w->nops = one.count;
	store_batch_fini(&one);
	return rv;
}

/* An Accept of id with recipients addrs[0..n), received at rx. */
static int
accept_n(struct world *w, const char *id, const char *const *addrs, size_t n, uint64_t rx)
{
	Relay__Recipient r[8], *rp[8];
	assert_true(n <= 8);
	for (size_t i = 0; i < n; i++) {
		relay__recipient__init(&r[i]);
		r[i].addr = (char *)addrs[i];
		rp[i] = &r[i];
	}
	Relay__Accept a = RELAY__ACCEPT__INIT;
	a.queue_id = (char *)id;
	a.mail_from = "from@example.com";
	a.n_rcpts = n;
	a.rcpts = rp;
	a.body.data = (uint8_t *)"body\r\n";
	a.body.len = 6;
	a.received_ms = rx;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	c.accept = &a;
	return apply(w, &c);
}

static int
accept1(struct world *w, const char *id, const char *addr)
{
	return accept_n(w, id, &addr, 1, T0);
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

/* Member{node, DRAINED, expect_since_index = since}: a member's own DRAINED (ownership.h). */
static int
drained_since(struct world *w, const char *node, uint64_t since)
{
	Relay__Member m = RELAY__MEMBER__INIT;
	m.node = (char *)node;
	m.state = RELAY__MEMBER_STATE__MEMBER_DRAINED;
	m.has_expect_since_index = 1;
	m.expect_since_index = since;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	c.member = &m;
	return apply(w, &c);
}

static int
renew(struct world *w, const char *node)
{
	Relay__Renew r = RELAY__RENEW__INIT;
	r.node = (char *)node;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_RENEW;
	c.renew = &r;
	return apply(w, &c);
}

enum sched { HOLD, RELEASE, RETRY };

static int
sched(struct world *w, enum sched k, const char *id, uint64_t at)
{
	Relay__Hold h = RELAY__HOLD__INIT;
	Relay__Release r = RELAY__RELEASE__INIT;
	Relay__Retry t = RELAY__RETRY__INIT;
	Relay__Command c = RELAY__COMMAND__INIT;
	h.queue_id = r.queue_id = t.queue_id = (char *)id;
	r.at_ms = t.at_ms = at;
	if (k == HOLD) {
		c.cmd_case = RELAY__COMMAND__CMD_HOLD;
		c.hold = &h;
	} else if (k == RELEASE) {
		c.cmd_case = RELAY__COMMAND__CMD_RELEASE;
		c.release = &r;
	} else {
		c.cmd_case = RELAY__COMMAND__CMD_RETRY;
		c.retry = &t;
	}
	return apply(w, &c);
}

/* An Outcome for recipients idx[0..n) of id with that epoch (DEFERRED to next_ms when next_ms
 * is not 0, else kind), dsn attached if not NULL. */
static int
outcome(struct world *w, const char *id, Relay__OutcomeKind kind, const uint32_t *idx, size_t n,
	uint64_t epoch, uint64_t at_ms, uint64_t next_ms, Relay__Accept *dsn)
{
	Relay__Outcome o = RELAY__OUTCOME__INIT;
	o.queue_id = (char *)id;
	o.rcpt_index = (uint32_t *)idx;
	o.n_rcpt_index = n;
	o.kind = kind;
	o.at_ms = at_ms;
	o.has_epoch = 1;
	o.epoch = epoch;
	if (kind == RELAY__OUTCOME_KIND__DEFERRED) {
		o.has_next_attempt_ms = 1;
		o.next_attempt_ms = next_ms;
	}
	o.dsn = dsn;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	c.outcome = &o;
	return apply(w, &c);
}

static uint64_t
epoch_of(struct world *w, const char *domain)
{
	char owner[QUEUE_NODE_MAX + 1];
	uint64_t e;
	assert_int_equal(queue_fsm_domain_owner(w->q, domain, owner, &e), 0);
	return e;
}

static void
expect_owner(struct world *w, const char *domain, const char *owner, uint64_t epoch)
{
	char got[QUEUE_NODE_MAX + 1];
	uint64_t e;
	int rv = queue_fsm_domain_owner(w->q, domain, got, &e);
	if (rv)
		fail_msg("%s: no assignment (%d)", domain, rv);
	if (strcmp(got, owner) || e != epoch)
		fail_msg("%s: owner \"%s\" epoch %llu, want \"%s\" epoch %llu", domain, got,
			 (unsigned long long)e, owner, (unsigned long long)epoch);
}

/* The rendezvous winner among nodes (a reference implementation over the public score). */
static const char *
winner_of(const char *domain, const char *const *nodes, size_t n)
{
	const char *best = NULL;
	uint64_t bs = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t s = queue_rendezvous(nodes[i], domain);
		if (!best || s > bs || (s == bs && strcmp(nodes[i], best) < 0)) {
			best = nodes[i];
			bs = s;
		}
	}
	return best ? best : "";
}

/* ---- store checks ---- */

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
		fail_msg("ownership key '%c' (len %zu) not in the store", ((const char *)key)[1],
			 klen);
	assert_int_equal(vl, vlen);
	assert_memory_equal(v, val, vlen);
	free(v);
	c->n++;
	return 0;
}

/* The ownership keys in the store are exactly those memory describes; returns how many have
 * type byte `type` (0: all). */
static unsigned
check_own_keys(struct world *w, char type)
{
	struct kv_count c = {w->s, 0};
	assert_int_equal(queue_fsm_own_kv(w->q, own_kv_cb, &c), 0);
	struct store_iter *it;
	assert_int_equal(store_iter_new(w->s, STORE_CF_QUEUE, &it), 0);
	unsigned n = 0, typed = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t kl;
		const unsigned char *key = store_iter_key(it, &kl);
		if (kl && key[0] == QUEUE_KEY_OWN) {
			n++;
			typed += !type || (kl > 1 && key[1] == (unsigned char)type);
		}
	}
	store_iter_free(it);
	assert_int_equal(n, c.n);
	return typed;
}

/* A reopen from the store and a reload in place both give the same state. */
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

/* ---- assignment rules ---- */

enum op { ACC, MEM, REN };

struct step {
	enum op op;
	const char *a;	    /* ACC: queue id; MEM/REN: node */
	const char *b;	    /* ACC: recipient address */
	int state;	    /* MEM */
	int nops;	    /* expected store operations (-1: depends on the hash, not checked) */
	int reassigned;	    /* expected stats.reassigned increase */
	const char *expect; /* "domain=owner@index;...": owner "" unowned, "*a,b" the rendezvous
			       winner among a and b; "domain=-": no assignment */
};

static void
check_expect(struct world *w, const char *spec)
{
	char buf[512];
	snprintf(buf, sizeof(buf), "%s", spec);
	for (char *save, *tok = strtok_r(buf, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
		char *eq = strchr(tok, '=');
		assert_non_null(eq);
		*eq = 0;
		const char *dom = tok, *rest = eq + 1;
		if (!strcmp(rest, "-")) {
			char o[QUEUE_NODE_MAX + 1];
			uint64_t e;
			assert_int_equal(queue_fsm_domain_owner(w->q, dom, o, &e), QUEUE_ENOTFOUND);
			continue;
		}
		char *at = strchr(rest, '@');
		assert_non_null(at);
		*at = 0;
		uint64_t epoch = strtoull(at + 1, NULL, 10);
		char owner[QUEUE_NODE_MAX + 1];
		if (rest[0] == '*') {
			char lst[128];
			const char *nodes[8];
			size_t n = 0;
			snprintf(lst, sizeof(lst), "%s", rest + 1);
			for (char *s2, *t = strtok_r(lst, ",", &s2); t && n < 8;
			     t = strtok_r(NULL, ",", &s2))
				nodes[n++] = t;
			snprintf(owner, sizeof(owner), "%s", winner_of(dom, nodes, n));
		} else {
			snprintf(owner, sizeof(owner), "%s", rest);
		}
		expect_owner(w, dom, owner, epoch);
	}
}

/* Each step is one command at the index of its (1-based) row. */
static void
test_assignment_rules(void **state)
{
	(void)state;
	static const struct step steps[] = {
	    /* 1: no member: unowned, epoch = the Accept's index; body, record, index, D key */
	    {ACC, "m1", "u@a.example", 0, 4, 0, "a.example=@1"},
	    /* 2: a second message of the same domain: the same assignment, no D key */
	    {ACC, "m2", "v@A.Example", 0, 3, 0, "a.example=@1"},
	    /* 3: a member becomes LIVE: every unowned domain is given to it, epoch 3 */
	    {MEM, "n1", NULL, QUEUE_MEMBER_LIVE, 2, 1, "a.example=n1@3"},
	    /* 4: LIVE again: nothing (already so) */
	    {MEM, "n1", NULL, QUEUE_MEMBER_LIVE, 0, 0, "a.example=n1@3"},
	    /* 5: another LIVE member: sticky, nothing moves */
	    {MEM, "n2", NULL, QUEUE_MEMBER_LIVE, 1, 0, "a.example=n1@3"},
	    /* 6: a new domain: the rendezvous winner among n1, n2 */
	    {ACC, "m3", "w@b.example", 0, 4, 0, "b.example=*n1,n2@6;a.example=n1@3"},
	    /* 7: n1 drains: keeps its domains */
	    {MEM, "n1", NULL, QUEUE_MEMBER_DRAINING, 1, 0, "a.example=n1@3;b.example=*n1,n2@6"},
	    /* 8: a new domain while n1 drains: only n2 is LIVE */
	    {ACC, "m4", "x@c.example", 0, 4, 0, "c.example=n2@8;a.example=n1@3"},
	    /* 9: n1 drained: its domains (a.example; b.example if it won it) move to n2 */
	    {MEM, "n1", NULL, QUEUE_MEMBER_DRAINED, -1, -1, "a.example=n2@9;c.example=n2@8"},
	    /* 10: renew of a member: recorded (its key) */
	    {REN, "n2", NULL, 0, 1, 0, "a.example=n2@9"},
	    /* 11: renew of a stranger: nothing */
	    {REN, "zz", NULL, 0, 0, 0, "a.example=n2@9"},
	    /* 12: the last LIVE member is DOWN: everything becomes unowned, epoch 12 */
	    {MEM, "n2", NULL, QUEUE_MEMBER_DOWN, 4, 3, "a.example=@12;b.example=@12;c.example=@12"},
	    /* 13: n3 LIVE (a new member): takes every unowned domain */
	    {MEM, "n3", NULL, QUEUE_MEMBER_LIVE, 4, 3,
	     "a.example=n3@13;b.example=n3@13;c.example=n3@13"},
	    /* 14: n2 back LIVE: sticky */
	    {MEM, "n2", NULL, QUEUE_MEMBER_LIVE, 1, 0, "a.example=n3@13"},
	    /* 15: n3 removed: its domains go to n2 (n1 is DRAINED), its member key goes */
	    {MEM, "n3", NULL, QUEUE_MEMBER_REMOVED, 4, 3,
	     "a.example=n2@15;b.example=n2@15;c.example=n2@15"},
	    /* 16: removing it again: nothing */
	    {MEM, "n3", NULL, QUEUE_MEMBER_REMOVED, 0, 0, "a.example=n2@15"},
	    /* 17: a member that starts DRAINING owns nothing and takes nothing */
	    {MEM, "n4", NULL, QUEUE_MEMBER_DRAINING, 1, 0, "a.example=n2@15"},
	};
	struct world w;
	world_init(&w);
	const char *n12[] = {"n1", "n2"};
	int n1_won_b = !strcmp(winner_of("b.example", n12, 2), "n1");
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		const struct step *s = &steps[i];
		struct queue_fsm_stats before, after;
		queue_fsm_stats(w.q, &before);
		int rv = s->op == ACC	? accept1(&w, s->a, s->b)
			 : s->op == MEM ? member(&w, s->a, (enum queue_member_state)s->state)
					: renew(&w, s->a);
		if (rv)
			fail_msg("step %zu: rv %d", i + 1, rv);
		assert_int_equal(w.index, i + 1);
		queue_fsm_stats(w.q, &after);
		if (s->nops >= 0 && w.nops != (unsigned)s->nops)
			fail_msg("step %zu: %u store operations, want %d", i + 1, w.nops, s->nops);
		if (s->reassigned >= 0 &&
		    after.reassigned - before.reassigned != (uint64_t)s->reassigned)
			fail_msg("step %zu: %llu reassigned, want %d", i + 1,
				 (unsigned long long)(after.reassigned - before.reassigned),
				 s->reassigned);
		check_expect(&w, s->expect);
		if (i + 1 == 9) {
			/* the member key and one assignment per domain n1 had */
			assert_int_equal(w.nops, 1 + 1 + n1_won_b);
			assert_int_equal(after.reassigned - before.reassigned, 1 + n1_won_b);
			check_expect(&w, n1_won_b ? "b.example=n2@9" : "b.example=n2@6");
		}
		check_own_keys(&w, 0);
	}
	/* the members: n1 DRAINED, n2 LIVE with everything, n4 DRAINING; n3 gone */
	struct queue_member ms[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX);
	assert_int_equal(n, 3);
	assert_string_equal(ms[0].node, "n1");
	assert_int_equal(ms[0].state, QUEUE_MEMBER_DRAINED);
	assert_int_equal(ms[0].since_index, 9);
	assert_int_equal(ms[0].domains, 0);
	assert_string_equal(ms[1].node, "n2");
	assert_int_equal(ms[1].state, QUEUE_MEMBER_LIVE);
	assert_int_equal(ms[1].since_index, 14);
	assert_int_equal(ms[1].renew_index, 10);
	assert_int_equal(ms[1].domains, 3);
	assert_int_equal(ms[1].rcpts_owned, 4); /* m1, m2, m3, m4 */
	assert_int_equal(ms[1].rcpts_deferred, 0);
	assert_string_equal(ms[2].node, "n4");
	assert_int_equal(ms[2].state, QUEUE_MEMBER_DRAINING);
	assert_int_equal(check_own_keys(&w, 'M'), 3);
	assert_int_equal(check_own_keys(&w, 'D'), 3);
	check_reopen(&w);

	/* a deferral counts the recipient as deferred for its owner */
	const uint32_t r0 = 0;
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DEFERRED, &r0, 1,
				 epoch_of(&w, "a.example"), T0 + 1, T0 + 60000, NULL),
			 0);
	assert_int_equal(queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX), 3);
	assert_int_equal(ms[1].rcpts_deferred, 1);
	/* an assignment stays, idle, after its last queued recipient (its key too); a later Accept
	 * reuses it: same owner, same epoch */
	assert_int_equal(outcome(&w, "m4", RELAY__OUTCOME_KIND__DELIVERED, &r0, 1,
				 epoch_of(&w, "c.example"), T0 + 1, 0, NULL),
			 0);
	check_expect(&w, "c.example=n2@15");
	assert_int_equal(check_own_keys(&w, 'D'), 3);
	assert_int_equal(accept1(&w, "m5", "y@c.example"), 0);
	assert_int_equal(w.nops, 3); /* body, record, index: no D key */
	check_expect(&w, "c.example=n2@15");
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* queue_fsm_domains gives every assignment in domain order. */
struct dom_list {
	char d[16][QUEUE_DOMAIN_MAX + 1];
	unsigned n;
};

static int
dom_cb(void *arg, const char *domain, const char *owner, uint64_t epoch, uint64_t rcpts)
{
	(void)owner;
	(void)epoch;
	struct dom_list *l = arg;
	assert_true(rcpts > 0);
	snprintf(l->d[l->n++], sizeof(l->d[0]), "%s", domain);
	return 0;
}

static void
test_domains_and_addr(void **state)
{
	(void)state;
	char d[QUEUE_DOMAIN_MAX + 1];
	static const struct {
		const char *addr, *dom;
	} cases[] = {
	    {"a@Example.ORG", "example.org"},
	    {"\"x@y\"@b.example", "b.example"}, /* the last '@' */
	    {"postmaster", ""},
	    {"a@", ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		queue_addr_domain(cases[i].addr, d);
		assert_string_equal(d, cases[i].dom);
	}
	char longaddr[QUEUE_ADDR_MAX + 1];
	memset(longaddr, 'x', sizeof(longaddr) - 1);
	longaddr[QUEUE_ADDR_MAX] = 0;
	longaddr[3] = '@';
	queue_addr_domain(longaddr, d);
	assert_int_equal(strlen(d), QUEUE_DOMAIN_MAX);
	/* the score is FNV-1a 64 over node, 0, domain */
	assert_int_equal(queue_rendezvous("", ""), 0xaf63bd4c8601b7dfull); /* FNV-1a of "\0" */

	struct world w;
	world_init(&w);
	const char *addrs[] = {"a@z.example", "b@y.example", "c@Z.example", "postmaster"};
	assert_int_equal(accept_n(&w, "m1", addrs, 4, T0), 0);
	static struct dom_list l;
	memset(&l, 0, sizeof(l));
	assert_int_equal(queue_fsm_domains(w.q, dom_cb, &l), 3);
	assert_string_equal(l.d[0], "");
	assert_string_equal(l.d[1], "y.example");
	assert_string_equal(l.d[2], "z.example");
	char o[QUEUE_NODE_MAX + 1];
	uint64_t e;
	assert_int_equal(queue_fsm_domain_owner(w.q, "Z.EXAMPLE", o, &e), 0);
	assert_int_equal(e, 1);
	assert_string_equal(o, "");
	assert_int_equal(queue_fsm_domain_owner(w.q, "x.example", o, &e), QUEUE_ENOTFOUND);
	world_fini(&w);
}

/* ---- rendezvous stability ---- */

static void
test_rendezvous_stability(void **state)
{
	(void)state;
	enum { NDOM = 1000 };
	const char *nodes[] = {"relay-0", "relay-1", "relay-2", "relay-3", "relay-4"};
	struct world w;
	world_init(&w);
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(member(&w, nodes[i], QUEUE_MEMBER_LIVE), 0);
	static char dom[NDOM][32], before[NDOM][QUEUE_NODE_MAX + 1];
	static uint64_t epoch[NDOM];
	unsigned per[5] = {0};
	for (unsigned i = 0; i < NDOM; i++) {
		char id[32], addr[64];
		snprintf(dom[i], sizeof(dom[i]), "d%u.example", i % 10000);
		snprintf(id, sizeof(id), "m%u", i);
		snprintf(addr, sizeof(addr), "u@%.31s", dom[i]);
		assert_int_equal(accept1(&w, id, addr), 0);
		assert_int_equal(queue_fsm_domain_owner(w.q, dom[i], before[i], &epoch[i]), 0);
		assert_string_equal(before[i], winner_of(dom[i], nodes, 5));
		for (unsigned k = 0; k < 5; k++)
			per[k] += !strcmp(before[i], nodes[k]);
	}
	/* spread: each member gets a fair share (expected 200 of 1000) */
	for (unsigned k = 0; k < 5; k++) {
		print_message("%s owns %u of %u domains\n", nodes[k], per[k], NDOM);
		assert_true(per[k] >= 120 && per[k] <= 280);
	}
	/* relay-2 goes DOWN: only its domains move, to the winner among the other four */
	assert_int_equal(member(&w, "relay-2", QUEUE_MEMBER_DOWN), 0);
	uint64_t down_index = w.index;
	const char *rest[] = {"relay-0", "relay-1", "relay-3", "relay-4"};
	unsigned moved = 0;
	for (unsigned i = 0; i < NDOM; i++) {
		char o[QUEUE_NODE_MAX + 1];
		uint64_t e;
		assert_int_equal(queue_fsm_domain_owner(w.q, dom[i], o, &e), 0);
		if (!strcmp(before[i], "relay-2")) {
			moved++;
			assert_string_equal(o, winner_of(dom[i], rest, 4));
			assert_int_equal(e, down_index);
		} else {
			assert_string_equal(o, before[i]);
			assert_int_equal(e, epoch[i]);
		}
	}
	assert_int_equal(moved, per[2]);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.reassigned, per[2]);
	/* the batch: relay-2's member key and one assignment per moved domain */
	assert_int_equal(w.nops, 1 + moved);
	/* relay-2 LIVE again: sticky, nothing comes back */
	assert_int_equal(member(&w, "relay-2", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(w.nops, 1);
	struct queue_member ms[8];
	assert_int_equal(queue_fsm_members(w.q, ms, 8), 5);
	assert_int_equal(ms[2].domains, 0);
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* ---- fencing ---- */

struct item_list {
	struct {
		const struct queue_msg *m;
		char domain[QUEUE_DOMAIN_MAX + 1];
		uint64_t epoch, next;
	} it[64];
	unsigned n;
};

static int
item_cb(void *arg, const struct queue_item *it)
{
	struct item_list *l = arg;
	assert_true(l->n < 64);
	l->it[l->n].m = it->msg;
	snprintf(l->it[l->n].domain, sizeof(l->it[0].domain), "%s", it->domain);
	l->it[l->n].epoch = it->epoch;
	l->it[l->n].next = it->next_attempt_ms;
	l->n++;
	return 0;
}

static void
test_fencing(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	const char *addrs[] = {"a@one.example", "b@two.example"};
	assert_int_equal(accept_n(&w, "m1", addrs, 2, T0), 0);	  /* index 1 */
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0); /* index 2: epoch 2 */
	expect_owner(&w, "one.example", "n1", 2);
	expect_owner(&w, "two.example", "n1", 2);
	const uint32_t r0[] = {0}, r01[] = {0, 1};
	Relay__Recipient dr = RELAY__RECIPIENT__INIT;
	Relay__Recipient *drp = &dr;
	dr.addr = "from@dsn.example";
	Relay__Accept dsn = RELAY__ACCEPT__INIT;
	dsn.queue_id = "m1-dsn";
	dsn.mail_from = "";
	dsn.n_rcpts = 1;
	dsn.rcpts = &drp;
	dsn.body.data = (uint8_t *)"dsn";
	dsn.body.len = 3;
	dsn.received_ms = T0 + 5;

	/* the epoch of the unowned assignment (1), and epoch 0, are stale: nothing changes, the
	 * DSN is not enqueued, the recipients are counted */
	uint64_t d = queue_fsm_digest(w.q);
	static const uint64_t stale[] = {0, 1, 3, UINT64_MAX};
	for (unsigned k = 0; k < 4; k++) {
		assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__FAILED, r01, 2, stale[k],
					 T0 + 10, 0, &dsn),
				 0);
		assert_int_equal(w.nops, 0);
	}
	assert_int_equal(queue_fsm_digest(w.q), d);
	assert_null(queue_fsm_lookup(w.q, "m1-dsn"));
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.stale_outcomes, 8);
	assert_int_equal(st.failed, 0);
	assert_int_equal(st.dsns, 0);

	/* two.example moves (n1 down, n2 takes it at a new epoch); an outcome at the old epoch
	 * for both recipients changes only one.example's */
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0); /* index 7 */
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_DOWN), 0); /* index 8 */
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0); /* index 9, sticky */
	expect_owner(&w, "one.example", "n2", 8);
	expect_owner(&w, "two.example", "n2", 8);
	/* no item of n1's any more: it would be fenced off anyway */
	static struct item_list l;
	memset(&l, 0, sizeof(l));
	assert_int_equal(queue_fsm_due_owned(w.q, "n1", UINT64_MAX, item_cb, &l, 64), 0);
	assert_int_equal(queue_fsm_due_owned(w.q, "n2", UINT64_MAX, item_cb, &l, 64), 2);
	assert_int_equal(l.it[0].epoch, 8);
	assert_int_equal(
	    outcome(&w, "m1", RELAY__OUTCOME_KIND__DEFERRED, r01, 2, 2, T0 + 20, T0 + 600000, NULL),
	    0);
	assert_int_equal(w.nops, 0);
	/* the current epoch: applies, with the DSN (which gets an assignment like an Accept) */
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__FAILED, r0, 1, 8, T0 + 30, 0, &dsn),
			 0);
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[0].state, QUEUE_RCPT_FAILED);
	assert_int_equal(m->rcpts[1].state, QUEUE_RCPT_QUEUED);
	assert_non_null(queue_fsm_lookup(w.q, "m1-dsn"));
	const char *live[] = {"n1", "n2"};
	expect_owner(&w, "dsn.example", winner_of("dsn.example", live, 2), w.index);
	/* one.example has no queued recipient left: idle, same assignment */
	check_expect(&w, "one.example=n2@8");
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_int_equal(rec->rcpts[0]->epoch, 8);
	relay__queue_record__free_unpacked(rec, NULL);
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.stale_outcomes, 8 + 2);
	assert_int_equal(st.failed, 1);
	assert_int_equal(st.dsns, 1);
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* An outcome that finishes the last recipient of a domain while its DSN goes to the same
 * domain: the assignment becomes idle and the DSN reuses it (same owner, same epoch). */
static void
test_dsn_same_domain(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(accept1(&w, "m1", "a@same.example"), 0);
	uint64_t e = epoch_of(&w, "same.example");
	assert_int_equal(e, 3);
	Relay__Recipient dr = RELAY__RECIPIENT__INIT;
	Relay__Recipient *drp = &dr;
	dr.addr = "sender@SAME.example";
	Relay__Accept dsn = RELAY__ACCEPT__INIT;
	dsn.queue_id = "m1-dsn";
	dsn.mail_from = "";
	dsn.n_rcpts = 1;
	dsn.rcpts = &drp;
	dsn.body.data = (uint8_t *)"dsn";
	dsn.body.len = 3;
	dsn.received_ms = T0 + 5;
	const uint32_t r0[] = {0};
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__FAILED, r0, 1, e, T0 + 10, 0, &dsn),
			 0);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	const char *live[] = {"n1", "n2"};
	expect_owner(&w, "same.example", winner_of("same.example", live, 2), 3);
	static struct item_list l;
	memset(&l, 0, sizeof(l));
	const char *own = winner_of("same.example", live, 2);
	assert_int_equal(queue_fsm_due_owned(w.q, own, UINT64_MAX, item_cb, &l, 64), 1);
	assert_string_equal(l.it[0].m->queue_id, "m1-dsn");
	assert_int_equal(l.it[0].epoch, 3);
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* ---- Hold, Release, Retry ---- */

static int
due_count_cb(void *arg, const struct queue_msg *m)
{
	(void)m;
	(*(unsigned *)arg)++;
	return 0;
}

static unsigned
due_msgs(struct world *w, uint64_t now)
{
	unsigned n = 0;
	assert_true(queue_fsm_due(w->q, now, due_count_cb, &n, 1000) >= 0);
	return n;
}

static unsigned
due_items(struct world *w, const char *owner, uint64_t now)
{
	static struct item_list l;
	memset(&l, 0, sizeof(l));
	return (unsigned)queue_fsm_due_owned(w->q, owner, now, item_cb, &l, 64);
}

static void
test_hold_release_retry(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	const char *addrs[] = {"a@one.example", "b@two.example"};
	assert_int_equal(accept_n(&w, "m1", addrs, 2, T0), 0);
	assert_int_equal(accept1(&w, "m2", "c@one.example"), 0);
	assert_int_equal(due_msgs(&w, T0), 2);
	assert_int_equal(due_items(&w, "n1", T0), 3);

	/* hold: out of every due list; the record says held */
	assert_int_equal(sched(&w, HOLD, "m1", 0), 0);
	assert_int_equal(w.nops, 1);
	assert_int_equal(due_msgs(&w, UINT64_MAX), 1);
	assert_int_equal(due_items(&w, "n1", UINT64_MAX), 1);
	assert_true(queue_fsm_lookup(w.q, "m1")->held);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_true(rec->has_held && rec->held);
	assert_int_equal(rec->update_index, w.index);
	relay__queue_record__free_unpacked(rec, NULL);
	/* a second hold is a no-op; the held message still counts for its owner */
	uint64_t d = queue_fsm_digest(w.q);
	assert_int_equal(sched(&w, HOLD, "m1", 0), 0);
	assert_int_equal(w.nops, 0);
	assert_int_equal(queue_fsm_digest(w.q), d);
	struct queue_member ms[2];
	assert_int_equal(queue_fsm_members(w.q, ms, 2), 1);
	assert_int_equal(ms[0].rcpts_owned, 3);
	check_reopen(&w); /* held survives a reopen */
	assert_int_equal(due_items(&w, "n1", UINT64_MAX), 1);

	/* retry while held: the next attempt changes, still held, still not due */
	assert_int_equal(sched(&w, RETRY, "m1", T0 + 500), 0);
	assert_int_equal(w.nops, 1); /* the state value */
	const struct queue_msg *m = queue_fsm_lookup(w.q, "m1");
	assert_true(m->held);
	assert_int_equal(m->next_attempt_ms, T0 + 500);
	assert_int_equal(m->rcpts[1].next_attempt_ms, T0 + 500);
	assert_int_equal(due_msgs(&w, UINT64_MAX), 1);
	/* release at T0 + 1000: due then, not before; the record no longer held */
	assert_int_equal(sched(&w, RELEASE, "m1", T0 + 1000), 0);
	m = queue_fsm_lookup(w.q, "m1");
	assert_false(m->held);
	assert_int_equal(m->next_attempt_ms, T0 + 1000);
	assert_int_equal(due_msgs(&w, T0 + 999), 1);
	assert_int_equal(due_msgs(&w, T0 + 1000), 2);
	assert_int_equal(due_items(&w, "n1", T0 + 999), 1);
	assert_int_equal(due_items(&w, "n1", T0 + 1000), 3);
	assert_int_equal(queue_fsm_next_due_owned_ms(w.q, "n1"), T0);
	assert_int_equal(queue_fsm_read_record(w.q, "m1", &rec), 0);
	assert_false(rec->has_held && rec->held);
	assert_int_equal(rec->next_attempt_ms, T0 + 1000);
	relay__queue_record__free_unpacked(rec, NULL);
	/* release of a message not held: nothing */
	assert_int_equal(sched(&w, RELEASE, "m1", T0 + 5), 0);
	assert_int_equal(w.nops, 0);
	/* retry of a deliverable message: due at once */
	assert_int_equal(sched(&w, RETRY, "m1", T0 - 100), 0);
	assert_int_equal(queue_fsm_next_due_ms(w.q), T0 - 100);
	assert_int_equal(queue_fsm_next_due_owned_ms(w.q, "n1"), T0 - 100);
	/* only queued recipients are rescheduled */
	const uint32_t r0[] = {0};
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DELIVERED, r0, 1,
				 epoch_of(&w, "one.example"), T0 + 1, 0, NULL),
			 0);
	assert_int_equal(sched(&w, RETRY, "m1", T0 + 7), 0);
	m = queue_fsm_lookup(w.q, "m1");
	assert_int_equal(m->rcpts[0].next_attempt_ms, T0 - 100);
	assert_int_equal(m->rcpts[1].next_attempt_ms, T0 + 7);
	/* unknown queue ids */
	for (int k = HOLD; k <= RETRY; k++) {
		assert_int_equal(sched(&w, (enum sched)k, "nope", T0), QUEUE_ENOTFOUND);
		assert_int_equal(w.nops, 0);
	}
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.held, 1);
	assert_int_equal(st.released, 1);
	assert_int_equal(st.retried, 3);
	/* an outcome for a held message still applies (an attempt in flight when it was held) */
	assert_int_equal(sched(&w, HOLD, "m2", 0), 0);
	assert_int_equal(outcome(&w, "m2", RELAY__OUTCOME_KIND__DEFERRED, r0, 1,
				 epoch_of(&w, "one.example"), T0 + 2, T0 + 9000, NULL),
			 0);
	assert_int_equal(queue_fsm_lookup(w.q, "m2")->rcpts[0].attempts, 1);
	assert_int_equal(due_items(&w, "n1", UINT64_MAX), 1); /* m1's two.example */
	check_own_keys(&w, 0);
	check_reopen(&w);
	assert_int_equal(due_items(&w, "n1", UINT64_MAX), 1);
	world_fini(&w);
}

/* ---- tombstones ---- */

static void
test_tombstones(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(accept1(&w, "m1", "a@x.example"), 0);
	const uint32_t r0[] = {0};
	assert_int_equal(outcome(&w, "m1", RELAY__OUTCOME_KIND__DELIVERED, r0, 1,
				 epoch_of(&w, "x.example"), T0 + 1, 0, NULL),
			 0);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	/* a retried forward of the Accept commits after the removal: no-op, counted */
	uint64_t d = queue_fsm_digest(w.q);
	assert_int_equal(accept1(&w, "m1", "a@x.example"), 0);
	assert_int_equal(w.nops, 0);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	assert_int_equal(queue_fsm_digest(w.q), d);
	struct queue_fsm_stats st;
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.removed_accepts, 1);
	/* a delete removes too */
	assert_int_equal(accept1(&w, "m2", "a@x.example"), 0);
	Relay__Delete del = RELAY__DELETE__INIT;
	del.queue_id = "m2";
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_DELETE;
	c.delete_ = &del;
	assert_int_equal(apply(&w, &c), 0);
	assert_int_equal(accept1(&w, "m2", "a@x.example"), 0);
	assert_null(queue_fsm_lookup(w.q, "m2"));
	check_reopen(&w);
	assert_int_equal(accept1(&w, "m2", "a@x.example"), 0); /* after a reopen as well */
	assert_null(queue_fsm_lookup(w.q, "m2"));
	assert_int_equal(check_own_keys(&w, 'T'), 2);

	/* the bound: QUEUE_TOMBSTONES_MAX + 10 more removals, the oldest evicted in order */
	struct store_batch one;
	store_batch_init(&one);
	for (unsigned i = 0; i < QUEUE_TOMBSTONES_MAX + 10; i++) {
		char id[32];
		snprintf(id, sizeof(id), "t%06u", i);
		Relay__Recipient r = RELAY__RECIPIENT__INIT, *rp = &r;
		r.addr = "a@x.example";
		Relay__Accept a = RELAY__ACCEPT__INIT;
		a.queue_id = id;
		a.mail_from = "";
		a.n_rcpts = 1;
		a.rcpts = &rp;
		a.received_ms = T0;
		Relay__Command ca = RELAY__COMMAND__INIT;
		ca.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
		ca.accept = &a;
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, ++w.index, &ca, &one), 0);
		assert_int_equal(store_write(w.s, &one, 0), 0);
		del.queue_id = id;
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, ++w.index, &c, &one), 0);
		assert_int_equal(store_write(w.s, &one, 0), 0);
	}
	store_batch_fini(&one);
	assert_int_equal(check_own_keys(&w, 'T'), QUEUE_TOMBSTONES_MAX);
	/* 2 + QUEUE_TOMBSTONES_MAX + 10 removals: the 12 oldest (m1, m2, t000000..t000009) are
	 * forgotten and accepted again; t000010 is not */
	assert_int_equal(accept1(&w, "m1", "a@x.example"), 0);
	assert_non_null(queue_fsm_lookup(w.q, "m1"));
	assert_int_equal(accept1(&w, "t000009", "a@x.example"), 0);
	assert_non_null(queue_fsm_lookup(w.q, "t000009"));
	assert_int_equal(accept1(&w, "t000010", "a@x.example"), 0);
	assert_null(queue_fsm_lookup(w.q, "t000010"));
	assert_int_equal(accept1(&w, "t065545", "a@x.example"), 0);
	assert_null(queue_fsm_lookup(w.q, "t065545"));
	check_reopen(&w);
	assert_int_equal(check_own_keys(&w, 'T'), QUEUE_TOMBSTONES_MAX);
	assert_int_equal(accept1(&w, "t000011", "a@x.example"), 0);
	assert_null(queue_fsm_lookup(w.q, "t000011"));
	queue_fsm_stats(w.q, &st);
	assert_int_equal(st.removed_accepts, 3 + 3);
	world_fini(&w);
}

/* ---- persistence of the whole ownership state ---- */

static void
test_persistence(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "a", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "b", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "c", QUEUE_MEMBER_LIVE), 0);
	for (unsigned i = 0; i < 60; i++) {
		char id[16], addr[32];
		snprintf(id, sizeof(id), "p%02u", i);
		snprintf(addr, sizeof(addr), "u%u@d%u.example", i, i % 17);
		assert_int_equal(accept_n(&w, id, (const char *[]){addr}, 1, T0 + i), 0);
	}
	assert_int_equal(member(&w, "b", QUEUE_MEMBER_DRAINING), 0);
	assert_int_equal(renew(&w, "a"), 0);
	assert_int_equal(member(&w, "c", QUEUE_MEMBER_DOWN), 0);
	assert_int_equal(sched(&w, HOLD, "p03", 0), 0);
	assert_int_equal(sched(&w, RETRY, "p04", T0 + 77), 0);
	const uint32_t r0[] = {0};
	char dom[16];
	snprintf(dom, sizeof(dom), "d%u.example", 5u);
	assert_int_equal(outcome(&w, "p05", RELAY__OUTCOME_KIND__DELIVERED, r0, 1,
				 epoch_of(&w, dom), T0 + 1, 0, NULL),
			 0);
	snprintf(dom, sizeof(dom), "d%u.example", 6u);
	assert_int_equal(outcome(&w, "p06", RELAY__OUTCOME_KIND__DEFERRED, r0, 1, epoch_of(&w, dom),
				 T0 + 1, T0 + 5000, NULL),
			 0);
	check_own_keys(&w, 0);
	uint64_t d = queue_fsm_digest(w.q);
	struct queue_member before[4], after[4];
	size_t nb = queue_fsm_members(w.q, before, 4);
	assert_int_equal(nb, 3);
	static struct item_list la, lb;
	memset(&la, 0, sizeof(la));
	int na = queue_fsm_due_owned(w.q, "a", UINT64_MAX, item_cb, &la, 64);

	/* reopen on the same store */
	struct queue_fsm *r;
	assert_int_equal(queue_fsm_new(w.s, &r), 0);
	assert_int_equal(queue_fsm_digest(r), d);
	assert_int_equal(queue_fsm_members(r, after, 4), nb);
	assert_memory_equal(before, after, nb * sizeof(before[0]));
	memset(&lb, 0, sizeof(lb));
	assert_int_equal(queue_fsm_due_owned(r, "a", UINT64_MAX, item_cb, &lb, 64), na);
	for (int i = 0; i < na; i++) {
		assert_string_equal(la.it[i].m->queue_id, lb.it[i].m->queue_id);
		assert_string_equal(la.it[i].domain, lb.it[i].domain);
		assert_int_equal(la.it[i].epoch, lb.it[i].epoch);
		assert_int_equal(la.it[i].next, lb.it[i].next);
	}
	assert_int_equal(queue_fsm_next_due_owned_ms(r, "b"),
			 queue_fsm_next_due_owned_ms(w.q, "b"));
	assert_int_equal(queue_fsm_next_due_ms(r), queue_fsm_next_due_ms(w.q));
	/* both go on identically */
	struct store_batch b1, b2;
	store_batch_init(&b1);
	store_batch_init(&b2);
	Relay__Member mc = RELAY__MEMBER__INIT;
	mc.node = "a";
	mc.state = RELAY__MEMBER_STATE__MEMBER_DOWN;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	c.member = &mc;
	assert_int_equal(queue_apply(w.q, w.index + 1, &c, &b1), 0);
	assert_int_equal(queue_apply(r, w.index + 1, &c, &b2), 0);
	assert_int_equal(b1.len, b2.len);
	assert_memory_equal(b1.buf, b2.buf, b1.len); /* domains move in name order */
	assert_int_equal(queue_fsm_digest(r), queue_fsm_digest(w.q));
	store_batch_fini(&b1);
	store_batch_fini(&b2);
	queue_fsm_free(r);

	/* a damaged ownership key is reported at load */
	struct store_batch bad;
	store_batch_init(&bad);
	assert_int_equal(store_batch_put(&bad, STORE_CF_QUEUE, "\x01Mzz", 4, "\x01\x00", 2), 0);
	assert_int_equal(store_write(w.s, &bad, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	assert_int_equal(queue_fsm_reload(w.q), QUEUE_ECORRUPT); /* q unchanged */
	store_batch_clear(&bad);
	assert_int_equal(store_batch_delete(&bad, STORE_CF_QUEUE, "\x01Mzz", 4), 0);
	/* an assignment to a node that is not a member */
	assert_int_equal(store_batch_put(&bad, STORE_CF_QUEUE,
					 "\x01"
					 "Dq.example",
					 11,
					 "\x01\0\0\0\0\0\0\0\x05zz", 11),
			 0);
	assert_int_equal(store_write(w.s, &bad, 0), 0);
	assert_int_equal(queue_fsm_new(w.s, &r), QUEUE_ECORRUPT);
	store_batch_fini(&bad);
	world_fini(&w);
}

/*
 * A member's own DRAINED carries the since index of the DRAINING it saw end, and is a no-op once
 * the member's state was set again (tests/sim seed 310908): n5, back from a crash with a view
 * older than its DRAINING, proposed itself LIVE; that LIVE committed first and gave it the
 * unowned domain; then n5 applied the DRAINING, saw nothing in flight and proposed DRAINED.
 * Applied to the LIVE n5 it would have moved the domain to n2 while n5 (lease held, DRAINED not
 * applied yet) could still start attempts.
 */
static void
test_drained_expect_since(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(accept1(&w, "m1", "u@d0.example"), 0);		/* 1: unowned */
	assert_int_equal(member(&w, "n5", QUEUE_MEMBER_DRAINING), 0);	/* 2 */
	assert_int_equal(member(&w, "n5", QUEUE_MEMBER_LIVE), 0);	/* 3: takes d0 */
	expect_owner(&w, "d0.example", "n5", 3);
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0);	/* 4: sticky */
	uint64_t d0 = queue_fsm_digest(w.q);
	/* the DRAINED judged on the DRAINING at 2: a no-op, nothing written */
	assert_int_equal(drained_since(&w, "n5", 2), 0);		/* 5 */
	assert_int_equal(w.nops, 0);
	assert_int_equal(queue_fsm_digest(w.q), d0);
	expect_owner(&w, "d0.example", "n5", 3);
	/* for a node not in the table: a no-op too (no DRAINED entry is created), unless it
	 * expects exactly that (0) */
	assert_int_equal(drained_since(&w, "n7", 2), 0);		/* 6 */
	assert_int_equal(w.nops, 0);
	/* a new drain, and the DRAINED judged on it: the domain moves */
	assert_int_equal(member(&w, "n5", QUEUE_MEMBER_DRAINING), 0);	/* 7 */
	assert_int_equal(drained_since(&w, "n5", 4), 0);		/* 8: stale */
	assert_int_equal(w.nops, 0);
	assert_int_equal(drained_since(&w, "n5", 7), 0);		/* 9 */
	expect_owner(&w, "d0.example", "n2", 9);
	struct queue_member ms[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX);
	assert_int_equal(n, 2);
	assert_string_equal(ms[1].node, "n5");
	assert_int_equal(ms[1].state, QUEUE_MEMBER_DRAINED);
	assert_int_equal(ms[1].since_index, 9);
	/* without the precondition (an operator's or an older node's DRAINED) it applies as before */
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_DRAINED), 0);	/* 10 */
	expect_owner(&w, "d0.example", "", 10);
	/* 0 expects a node that is not in the table */
	assert_int_equal(drained_since(&w, "n2", 0), 0);		/* 11: n2 is: no-op */
	assert_int_equal(w.nops, 0);
	assert_int_equal(drained_since(&w, "n8", 0), 0);		/* 12: the member key */
	assert_int_equal(w.nops, 1);
	assert_int_equal(queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX), 3);
	check_reopen(&w);
	world_fini(&w);
}

/* A store written before ownership existed (records, no ownership keys): every domain is
 * unowned at epoch 0 (so no outcome applies) until a member becomes LIVE. */
static void
test_legacy_store(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(accept1(&w, "m1", "a@old.example"), 0);
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_delete(&b, STORE_CF_QUEUE,
					    "\x01"
					    "Dold.example",
					    13),
			 0);
	assert_int_equal(store_write(w.s, &b, 0), 0);
	store_batch_fini(&b);
	assert_int_equal(queue_fsm_reload(w.q), 0);
	expect_owner(&w, "old.example", "", 0);
	const uint32_t r0[] = {0};
	assert_int_equal(
	    outcome(&w, "m1", RELAY__OUTCOME_KIND__DELIVERED, r0, 1, 0, T0 + 1, 0, NULL), 0);
	assert_non_null(queue_fsm_lookup(w.q, "m1"));
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	expect_owner(&w, "old.example", "n1", w.index);
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* ---- determinism of a random command stream ---- */

static uint64_t
rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Applies n random commands drawn from seed to w: accepts (1-3 recipients over 12 domains),
 * outcomes of every kind with the right or a wrong epoch (some with DSNs), deletes, members
 * (6 nodes, every state), renews, holds, releases, retries, repeats. */
static void
run_random(struct world *w, uint64_t seed, unsigned n)
{
	uint64_t x = seed;
	static const char *const nodes[] = {"n0", "n1", "n2", "n3", "n4", "n5"};
	for (unsigned i = 0; i < n; i++) {
		uint64_t r = rnd(&x);
		char id[32];
		snprintf(id, sizeof(id), "r%llu", (unsigned long long)(rnd(&x) % 200));
		switch (r % 16) {
		case 0:
		case 1:
		case 2:
		case 3:
		case 4: {
			char a[3][32];
			const char *ap[3];
			size_t nr = 1 + rnd(&x) % 3;
			for (size_t k = 0; k < nr; k++) {
				snprintf(a[k], sizeof(a[k]), "u%llu@d%llu.example",
					 (unsigned long long)(rnd(&x) % 5),
					 (unsigned long long)(rnd(&x) % 12));
				ap[k] = a[k];
			}
			assert_int_equal(accept_n(w, id, ap, nr, T0 + rnd(&x) % 100000), 0);
			break;
		}
		case 5:
		case 6:
		case 7:
		case 8: {
			const struct queue_msg *m = queue_fsm_lookup(w->q, id);
			if (!m)
				break;
			uint32_t idx[3];
			size_t ni = 0;
			for (uint32_t k = 0; k < m->nrcpts; k++)
				if (rnd(&x) % 2)
					idx[ni++] = k;
			if (!ni)
				idx[ni++] = 0;
			Relay__QueueRecord *rec;
			assert_int_equal(queue_fsm_read_record(w->q, id, &rec), 0);
			char d[QUEUE_DOMAIN_MAX + 1], o[QUEUE_NODE_MAX + 1];
			queue_addr_domain(rec->rcpts[idx[0]]->rcpt->addr, d);
			relay__queue_record__free_unpacked(rec, NULL);
			uint64_t e = 0;
			queue_fsm_domain_owner(w->q, d, o, &e);
			if (rnd(&x) % 5 == 0)
				e = rnd(&x) % (w->index + 1); /* likely stale */
			Relay__OutcomeKind k = (Relay__OutcomeKind)(rnd(&x) % 3);
			Relay__Recipient dr = RELAY__RECIPIENT__INIT, *drp = &dr;
			dr.addr = "from@example.com";
			Relay__Accept dsn = RELAY__ACCEPT__INIT;
			char did[40];
			snprintf(did, sizeof(did), "%s-dsn%u", id, i);
			dsn.queue_id = did;
			dsn.mail_from = "";
			dsn.n_rcpts = 1;
			dsn.rcpts = &drp;
			dsn.received_ms = T0 + i;
			int rv = outcome(w, id, k, idx, ni, e, T0 + i, T0 + rnd(&x) % 200000,
					 k == RELAY__OUTCOME_KIND__FAILED ? &dsn : NULL);
			assert_int_equal(rv, 0);
			break;
		}
		case 9: {
			Relay__Delete del = RELAY__DELETE__INIT;
			del.queue_id = id;
			Relay__Command c = RELAY__COMMAND__INIT;
			c.cmd_case = RELAY__COMMAND__CMD_DELETE;
			c.delete_ = &del;
			int rv = apply(w, &c);
			assert_true(rv == 0 || rv == QUEUE_ENOTFOUND);
			break;
		}
		case 10:
		case 11:
			assert_int_equal(
			    member(w, nodes[rnd(&x) % 6], (enum queue_member_state)(rnd(&x) % 5)),
			    0);
			break;
		case 12:
			assert_int_equal(renew(w, nodes[rnd(&x) % 6]), 0);
			break;
		default: {
			int rv = sched(w, (enum sched)(r % 16 - 13), id, T0 + rnd(&x) % 100000);
			assert_true(rv == 0 || rv == QUEUE_ENOTFOUND);
			break;
		}
		}
	}
}

/* Invariants: owners are LIVE or DRAINING members; every active item of a message not held is
 * in exactly the due list of its domain's owner. */
struct inv {
	struct world *w;
	uint64_t items;
};

static int
inv_item_cb(void *arg, const struct queue_item *it)
{
	struct inv *v = arg;
	assert_false(it->msg->held);
	char o[QUEUE_NODE_MAX + 1];
	uint64_t e;
	assert_int_equal(queue_fsm_domain_owner(v->w->q, it->domain, o, &e), 0);
	assert_int_equal(e, it->epoch);
	v->items++;
	return 0;
}

static void
check_invariants(struct world *w)
{
	struct queue_member ms[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(w->q, ms, QUEUE_MEMBERS_MAX);
	struct inv v = {w, 0};
	uint64_t owned = 0;
	for (size_t i = 0; i <= n; i++) {
		const char *node = i < n ? ms[i].node : "";
		if (i < n && ms[i].state != QUEUE_MEMBER_LIVE &&
		    ms[i].state != QUEUE_MEMBER_DRAINING)
			assert_int_equal(ms[i].domains, 0);
		if (i < n)
			owned += ms[i].rcpts_owned;
		assert_true(
		    queue_fsm_due_owned(w->q, node, UINT64_MAX, inv_item_cb, &v, (size_t)-1) >= 0);
	}
	uint64_t want = 0, queued = 0;
	for (const struct queue_msg *m = queue_fsm_first(w->q); m; m = queue_fsm_next(w->q, m)) {
		queued += m->nqueued;
		if (m->held)
			continue;
		Relay__QueueRecord *rec;
		assert_int_equal(queue_fsm_read_record(w->q, m->queue_id, &rec), 0);
		char seen[8][QUEUE_DOMAIN_MAX + 1];
		size_t ns = 0;
		for (size_t i = 0; i < rec->n_rcpts; i++) {
			if (rec->rcpts[i]->state != RELAY__RCPT_STATE__RCPT_QUEUED)
				continue;
			char d[QUEUE_DOMAIN_MAX + 1];
			queue_addr_domain(rec->rcpts[i]->rcpt->addr, d);
			size_t k = 0;
			while (k < ns && strcmp(seen[k], d))
				k++;
			if (k == ns && ns < 8)
				snprintf(seen[ns++], sizeof(seen[0]), "%s", d);
		}
		relay__queue_record__free_unpacked(rec, NULL);
		want += ns;
	}
	assert_int_equal(v.items, want);
	/* unowned recipients are counted by no member */
	assert_true(owned <= queued);
}

static void
test_determinism_random(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 6; seed++) {
		struct world a, b;
		world_init(&a);
		world_init(&b);
		run_random(&a, seed * 0x9e3779b97f4a7c15ull, 3000);
		run_random(&b, seed * 0x9e3779b97f4a7c15ull, 3000);
		assert_int_equal(a.log.len, b.log.len);
		assert_memory_equal(a.log.buf, b.log.buf, a.log.len);
		assert_int_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
		struct queue_fsm_stats sa, sb;
		queue_fsm_stats(a.q, &sa);
		queue_fsm_stats(b.q, &sb);
		assert_memory_equal(&sa, &sb, sizeof(sa));
		assert_true(sa.stale_outcomes > 0 && sa.reassigned > 0 && sa.member_changes > 0 &&
			    sa.held > 0 && sa.delivered > 0 && sa.dsns > 0);
		check_invariants(&a);
		check_own_keys(&a, 0);
		check_reopen(&a);
		check_invariants(&a);
		/* the reloaded one goes on like the other */
		run_random(&a, seed, 500);
		run_random(&b, seed, 500);
		assert_int_equal(queue_fsm_digest(a.q), queue_fsm_digest(b.q));
		world_fini(&a);
		world_fini(&b);
	}
	/* a different stream, a different digest */
	struct world c, d;
	world_init(&c);
	world_init(&d);
	run_random(&c, 11, 1000);
	run_random(&d, 12, 1000);
	assert_int_not_equal(queue_fsm_digest(c.q), queue_fsm_digest(d.q));
	world_fini(&c);
	world_fini(&d);
}

/* ---- per-owner due lists ---- */

struct due_items {
	const struct queue_msg **m;
	uint64_t *next;
	size_t n;
};

static int
collect_cb(void *arg, const struct queue_item *it)
{
	struct due_items *l = arg;
	l->m[l->n] = it->msg;
	l->next[l->n] = it->next_attempt_ms;
	l->n++;
	return 0;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
test_due_owned_order_and_cost(void **state)
{
	(void)state;
	enum { N = 100000 };
	struct world w;
	world_init(&w);
	const char *nodes[] = {"alpha", "beta", "gamma"};
	for (unsigned k = 0; k < 3; k++)
		assert_int_equal(member(&w, nodes[k], QUEUE_MEMBER_LIVE), 0);
	struct store_batch one;
	store_batch_init(&one);
	uint64_t x = 42;
	static uint16_t domidx[N]; /* message i's domain: d<domidx[i]>.example */
	for (unsigned i = 0; i < N; i++) {
		char id[16], addr[40];
		snprintf(id, sizeof(id), "o%06u", i);
		domidx[i] = (uint16_t)(rnd(&x) % 300);
		snprintf(addr, sizeof(addr), "u@d%u.example", domidx[i]);
		Relay__Recipient r = RELAY__RECIPIENT__INIT, *rp = &r;
		r.addr = addr;
		Relay__Accept a = RELAY__ACCEPT__INIT;
		a.queue_id = id;
		a.mail_from = "";
		a.n_rcpts = 1;
		a.rcpts = &rp;
		a.received_ms = T0 + 1000 * (rnd(&x) % 5000); /* many ties */
		Relay__Command c = RELAY__COMMAND__INIT;
		c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
		c.accept = &a;
		store_batch_clear(&one);
		assert_int_equal(queue_apply(w.q, ++w.index, &c, &one), 0);
	}
	store_batch_fini(&one);
	/* one owner leaves: its items move to the other two */
	assert_int_equal(member(&w, "beta", QUEUE_MEMBER_DOWN), 0);

	/* the order against a brute force scan per owner */
	struct queue_member ms[4];
	assert_int_equal(queue_fsm_members(w.q, ms, 4), 3);
	assert_int_equal(ms[1].rcpts_owned, 0);
	assert_int_equal(ms[0].rcpts_owned + ms[2].rcpts_owned, N);
	static const struct queue_msg *got_m[N], *want[N];
	static uint64_t got_next[N];
	const uint64_t now = T0 + 1000 * 2500;
	for (unsigned k = 0; k < 3; k += 2) {
		unsigned char mine[300];
		for (unsigned d = 0; d < 300; d++) {
			char o[QUEUE_NODE_MAX + 1], dn[32];
			uint64_t e;
			snprintf(dn, sizeof(dn), "d%u.example", d);
			mine[d] = !queue_fsm_domain_owner(w.q, dn, o, &e) && !strcmp(o, nodes[k]);
		}
		size_t nw = 0, i = 0;
		for (const struct queue_msg *m = queue_fsm_first(w.q); m;
		     m = queue_fsm_next(w.q, m), i++)
			if (mine[domidx[i]] && m->next_attempt_ms <= now)
				want[nw++] = m; /* apply order is accept order */
		/* stable insertion by next attempt keeps apply order for ties (merge by hand:
		 * buckets of 1 s) */
		static const struct queue_msg *sorted[N];
		static unsigned cnt[5001];
		memset(cnt, 0, sizeof(cnt));
		for (size_t i = 0; i < nw; i++)
			cnt[(want[i]->next_attempt_ms - T0) / 1000 + 1]++;
		for (unsigned t = 1; t <= 5000; t++)
			cnt[t] += cnt[t - 1];
		for (size_t i = 0; i < nw; i++)
			sorted[cnt[(want[i]->next_attempt_ms - T0) / 1000]++] = want[i];
		struct due_items l = {got_m, got_next, 0};
		int n = queue_fsm_due_owned(w.q, nodes[k], now, collect_cb, &l, (size_t)-1);
		assert_int_equal(n, nw);
		for (size_t i = 0; i < nw; i++)
			if (got_m[i] != sorted[i])
				fail_msg("%s: due order differs at %zu", nodes[k], i);
		assert_int_equal(queue_fsm_next_due_owned_ms(w.q, nodes[k]),
				 nw ? sorted[0]->next_attempt_ms : UINT64_MAX);
	}
	assert_int_equal(queue_fsm_due_owned(w.q, "beta", UINT64_MAX, collect_cb,
					     &(struct due_items){got_m, got_next, 0}, 10),
			 0);
	assert_int_equal(queue_fsm_next_due_owned_ms(w.q, "beta"), UINT64_MAX);
	assert_int_equal(queue_fsm_due_owned(w.q, "nobody", UINT64_MAX, collect_cb,
					     &(struct due_items){got_m, got_next, 0}, 10),
			 0);

	/* cost: 10 due items of 100k, whatever the queue size */
	enum { REPS = 2000 };
	double t0 = now_s();
	for (unsigned r = 0; r < REPS; r++) {
		struct due_items l = {got_m, got_next, 0};
		assert_int_equal(
		    queue_fsm_due_owned(w.q, nodes[r % 2 ? 0 : 2], UINT64_MAX, collect_cb, &l, 10),
		    10);
	}
	double per = (now_s() - t0) / REPS;
	print_message("queue_fsm_due_owned of 10 items among %u: %.2f us\n", N, per * 1e6);
	assert_true(per < 0.0002); /* well under a millisecond */
	/* and a move of a whole owner's items is one command */
	t0 = now_s();
	assert_int_equal(member(&w, "gamma", QUEUE_MEMBER_DRAINED), 0);
	print_message("moving %llu items: %.1f ms\n", (unsigned long long)ms[2].rcpts_owned,
		      (now_s() - t0) * 1e3);
	assert_int_equal(queue_fsm_members(w.q, ms, 4), 3);
	assert_int_equal(ms[0].rcpts_owned, N);
	world_fini(&w);
}

/* ---- bounds and validation ---- */

static void
test_members_bound_and_validation(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	char node[32];
	for (unsigned i = 0; i < QUEUE_MEMBERS_MAX; i++) {
		snprintf(node, sizeof(node), "node-%03u", i);
		assert_int_equal(member(&w, node, i % 2 ? QUEUE_MEMBER_LIVE : QUEUE_MEMBER_DOWN),
				 0);
	}
	uint64_t d = queue_fsm_digest(w.q);
	assert_int_equal(member(&w, "one-more", QUEUE_MEMBER_LIVE), QUEUE_EINVAL);
	assert_int_equal(w.nops, 0);
	assert_int_equal(queue_fsm_digest(w.q), d);
	/* a known member still changes; a removal makes room */
	assert_int_equal(member(&w, "node-000", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "node-001", QUEUE_MEMBER_REMOVED), 0);
	assert_int_equal(member(&w, "one-more", QUEUE_MEMBER_LIVE), 0);
	struct queue_member ms[QUEUE_MEMBERS_MAX + 1];
	assert_int_equal(queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX + 1), QUEUE_MEMBERS_MAX);
	assert_int_equal(queue_fsm_members(w.q, ms, 3), 3);
	check_reopen(&w);

	/* the new commands' bounds */
	char longnode[QUEUE_NODE_MAX + 2];
	memset(longnode, 'n', sizeof(longnode) - 1);
	longnode[QUEUE_NODE_MAX + 1] = 0;
	char longid[QUEUE_ID_MAX + 2];
	memset(longid, 'q', sizeof(longid) - 1);
	longid[QUEUE_ID_MAX + 1] = 0;
	enum {
		M_NULL,
		M_EMPTY,
		M_LONG,
		M_SPACE,
		M_QUOTE,
		M_CTRL,
		M_STATE,
		M_NULLNODE,
		R_NULL,
		R_EMPTY,
		R_LONG,
		H_NULL,
		H_EMPTY,
		H_LONG,
		L_SPACE,
		T_NULLID,
		NCASES
	};
	for (int k = 0; k < NCASES; k++) {
		Relay__Member m = RELAY__MEMBER__INIT;
		Relay__Renew r = RELAY__RENEW__INIT;
		Relay__Hold h = RELAY__HOLD__INIT;
		Relay__Release l = RELAY__RELEASE__INIT;
		Relay__Retry t = RELAY__RETRY__INIT;
		Relay__Command c = RELAY__COMMAND__INIT;
		m.node = r.node = "ok";
		h.queue_id = l.queue_id = t.queue_id = "ok";
		if (k <= M_NULLNODE) {
			c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
			c.member = &m;
		} else if (k <= R_LONG) {
			c.cmd_case = RELAY__COMMAND__CMD_RENEW;
			c.renew = &r;
		} else if (k <= H_LONG) {
			c.cmd_case = RELAY__COMMAND__CMD_HOLD;
			c.hold = &h;
		} else if (k == L_SPACE) {
			c.cmd_case = RELAY__COMMAND__CMD_RELEASE;
			c.release = &l;
		} else {
			c.cmd_case = RELAY__COMMAND__CMD_RETRY;
			c.retry = &t;
		}
		assert_int_equal(queue_validate(&c), 0); /* each case starts valid */
		switch (k) {
		case M_NULL:
			c.member = NULL;
			break;
		case M_EMPTY:
			m.node = "";
			break;
		case M_LONG:
			m.node = longnode;
			break;
		case M_SPACE:
			m.node = "a b";
			break;
		case M_QUOTE:
			m.node = "a\"b";
			break;
		case M_CTRL:
			m.node = "a\x01";
			break;
		case M_STATE:
			m.state = (Relay__MemberState)9;
			break;
		case M_NULLNODE:
			m.node = NULL;
			break;
		case R_NULL:
			c.renew = NULL;
			break;
		case R_EMPTY:
			r.node = "";
			break;
		case R_LONG:
			r.node = longnode;
			break;
		case H_NULL:
			c.hold = NULL;
			break;
		case H_EMPTY:
			h.queue_id = "";
			break;
		case H_LONG:
			h.queue_id = longid;
			break;
		case L_SPACE:
			l.queue_id = "a b";
			break;
		case T_NULLID:
			t.queue_id = NULL;
			break;
		}
		assert_int_equal(queue_validate(&c), QUEUE_EINVAL);
		assert_int_equal(apply(&w, &c), QUEUE_EINVAL);
	}
	/* the bounds themselves are fine */
	longnode[QUEUE_NODE_MAX] = 0;
	assert_int_equal(member(&w, "node-002", QUEUE_MEMBER_REMOVED), 0);
	assert_int_equal(member(&w, longnode, QUEUE_MEMBER_LIVE), 0);
	check_own_keys(&w, 0);
	check_reopen(&w);
	world_fini(&w);
}

/* ---- out of memory changes nothing ---- */

#if defined(__SANITIZE_ADDRESS__)
#define OWN_NO_MALLOC_HOOK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OWN_NO_MALLOC_HOOK 1
#endif
#endif

/* ---- idle assignments ---- */

/* Delivers the only recipient of id at its domain's current epoch. */
static void
deliver1(struct world *w, const char *id, const char *domain)
{
	const uint32_t r0 = 0;
	assert_int_equal(outcome(w, id, RELAY__OUTCOME_KIND__DELIVERED, &r0, 1, epoch_of(w, domain),
				 T0, 0, NULL),
			 0);
	assert_null(queue_fsm_lookup(w->q, id));
}

static int
no_owner(struct world *w, const char *domain)
{
	char o[QUEUE_NODE_MAX + 1];
	uint64_t e;
	return queue_fsm_domain_owner(w->q, domain, o, &e) == QUEUE_ENOTFOUND;
}

struct dom_count {
	size_t n, idle;
};

static int
dom_count_cb(void *arg, const char *domain, const char *owner, uint64_t epoch, uint64_t rcpts)
{
	(void)domain;
	(void)owner;
	(void)epoch;
	struct dom_count *c = arg;
	c->n++;
	c->idle += rcpts == 0;
	return 0;
}

/* An assignment stays idle after its last recipient; reused (same owner and epoch) while its
 * owner is LIVE or DRAINING; moved with its owner's DOWN; unowned when no member is LIVE, then
 * replaced by an Accept and taken by a member becoming LIVE. */
static void
test_idle_reuse_and_move(void **state)
{
	(void)state;
	struct world w;
	world_init(&w);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "n2", QUEUE_MEMBER_LIVE), 0);
	const char *live[] = {"n1", "n2"};
	const char *own = winner_of("x.example", live, 2);
	const char *other = strcmp(own, "n1") ? "n1" : "n2";
	assert_int_equal(accept1(&w, "m1", "a@x.example"), 0); /* 3 */
	deliver1(&w, "m1", "x.example");		       /* 4 */
	assert_int_equal(w.nops, 3 + 1);		       /* no D key written or deleted */
	expect_owner(&w, "x.example", own, 3);
	assert_int_equal(check_own_keys(&w, 'D'), 1);
	struct dom_count dc = {0, 0};
	assert_int_equal(queue_fsm_domains(w.q, dom_count_cb, &dc), 1);
	assert_int_equal(dc.idle, 1);
	struct queue_member ms[QUEUE_MEMBERS_MAX];
	assert_int_equal(queue_fsm_members(w.q, ms, QUEUE_MEMBERS_MAX), 2);
	assert_int_equal(ms[!strcmp(own, "n2")].domains, 1); /* idle ones included */
	assert_int_equal(ms[!strcmp(own, "n2")].rcpts_owned, 0);
	check_own_keys(&w, 0);
	check_reopen(&w);

	/* reuse: same owner, same epoch, no D key; an outcome at that epoch applies */
	assert_int_equal(accept1(&w, "m2", "b@X.Example"), 0); /* 5 */
	assert_int_equal(w.nops, 3);
	expect_owner(&w, "x.example", own, 3);
	deliver1(&w, "m2", "x.example"); /* 6 */
	/* a DRAINING owner keeps it too (the rule of an active domain) */
	assert_int_equal(member(&w, own, QUEUE_MEMBER_DRAINING), 0); /* 7 */
	assert_int_equal(accept1(&w, "m3", "c@x.example"), 0);	     /* 8 */
	expect_owner(&w, "x.example", own, 3);
	deliver1(&w, "m3", "x.example"); /* 9 */
	/* its owner DOWN: the idle assignment moves, epoch = that index */
	struct queue_fsm_stats before, after;
	queue_fsm_stats(w.q, &before);
	assert_int_equal(member(&w, own, QUEUE_MEMBER_DOWN), 0); /* 10 */
	queue_fsm_stats(w.q, &after);
	assert_int_equal(w.nops, 1 + 1);
	assert_int_equal(after.reassigned - before.reassigned, 1);
	expect_owner(&w, "x.example", other, 10);
	check_own_keys(&w, 0);
	check_reopen(&w);
	/* an Outcome at the old epoch is stale now */
	assert_int_equal(accept1(&w, "m4", "d@x.example"), 0); /* 11: reused at 10 */
	expect_owner(&w, "x.example", other, 10);
	const uint32_t r0 = 0;
	assert_int_equal(outcome(&w, "m4", RELAY__OUTCOME_KIND__DELIVERED, &r0, 1, 3, T0, 0, NULL),
			 0);
	assert_int_equal(w.nops, 0);
	deliver1(&w, "m4", "x.example"); /* 13 */
	/* no LIVE member: unowned, idle */
	assert_int_equal(member(&w, other, QUEUE_MEMBER_DOWN), 0); /* 14 */
	expect_owner(&w, "x.example", "", 14);
	/* an Accept for an unowned idle domain makes a new assignment */
	assert_int_equal(accept1(&w, "m5", "e@x.example"), 0); /* 15 */
	assert_int_equal(w.nops, 4);
	expect_owner(&w, "x.example", "", 15);
	deliver1(&w, "m5", "x.example"); /* 16 */
	expect_owner(&w, "x.example", "", 15);
	/* a member becoming LIVE takes the unowned idle domain */
	assert_int_equal(member(&w, "n3", QUEUE_MEMBER_LIVE), 0); /* 17 */
	expect_owner(&w, "x.example", "n3", 17);
	assert_int_equal(check_own_keys(&w, 'D'), 1);
	check_invariants(&w);
	check_reopen(&w);
	world_fini(&w);
}

/* An Accept of a new domain "<prefix><i>.example" then its delivery: one more idle. */
static void
idle_add(struct world *w, const char *prefix, unsigned i)
{
	char id[32], addr[64], dom[48];
	snprintf(id, sizeof(id), "%s%u", prefix, i);
	snprintf(dom, sizeof(dom), "%s%u.example", prefix, i);
	snprintf(addr, sizeof(addr), "u@%s", dom);
	assert_int_equal(accept1(w, id, addr), 0);
	deliver1(w, id, dom);
}

static int
has_dom(struct world *w, const char *prefix, unsigned i)
{
	char dom[48];
	snprintf(dom, sizeof(dom), "%s%u.example", prefix, i);
	return !no_owner(w, dom);
}

/* The eviction scenario; reload: a queue_fsm_reload once the idle ones are at the bound.
 * Returns the final digest. */
static uint64_t
idle_scenario(struct world *w, int reload)
{
	assert_int_equal(member(w, "n1", QUEUE_MEMBER_LIVE), 0); /* 1 */
	assert_int_equal(accept1(w, "old", "u@old.example"), 0); /* 2: active, epoch 2 */
	const char *ties[] = {"a@zz-tie.example", "b@aa-tie.example", "c@mm-tie.example"};
	assert_int_equal(accept_n(w, "tie", ties, 3, T0), 0); /* 3: three domains at epoch 3 */
	const uint32_t r012[] = {0, 1, 2};
	assert_int_equal(outcome(w, "tie", RELAY__OUTCOME_KIND__DELIVERED, r012, 3, 3, T0, 0, NULL),
			 0);
	for (unsigned i = 0; i < QUEUE_IDLE_DOMAINS_MAX - 3; i++)
		idle_add(w, "f", i);
	/* at the bound: nothing forgotten yet */
	struct dom_count dc = {0, 0};
	queue_fsm_domains(w->q, dom_count_cb, &dc);
	assert_int_equal(dc.idle, QUEUE_IDLE_DOMAINS_MAX);
	assert_int_equal(dc.n, QUEUE_IDLE_DOMAINS_MAX + 1);
	assert_int_equal(check_own_keys(w, 'D'), QUEUE_IDLE_DOMAINS_MAX + 1);
	assert_false(no_owner(w, "aa-tie.example"));
	if (reload)
		assert_int_equal(queue_fsm_reload(w->q), 0);
	/* one more idle: the smallest (epoch, name) goes, its key deleted in the same batch */
	idle_add(w, "g", 0);
	assert_int_equal(w->nops, 3 + 1 + 1);
	assert_true(no_owner(w, "aa-tie.example"));
	assert_false(no_owner(w, "mm-tie.example"));
	idle_add(w, "g", 1);
	assert_true(no_owner(w, "mm-tie.example"));
	assert_false(no_owner(w, "zz-tie.example"));
	idle_add(w, "g", 2);
	assert_true(no_owner(w, "zz-tie.example"));
	assert_true(has_dom(w, "f", 0));
	idle_add(w, "g", 3);
	assert_false(has_dom(w, "f", 0));
	assert_true(has_dom(w, "f", 1));
	/* a domain becoming idle with the smallest epoch of all is itself forgotten */
	deliver1(w, "old", "old.example");
	assert_int_equal(w->nops, 3 + 1 + 1);
	assert_true(no_owner(w, "old.example"));
	assert_true(has_dom(w, "f", 1));
	/* two at once: the two smallest go */
	const char *two[] = {"a@p.example", "b@q.example"};
	assert_int_equal(accept_n(w, "two", two, 2, T0), 0);
	const uint32_t r01[] = {0, 1};
	assert_int_equal(outcome(w, "two", RELAY__OUTCOME_KIND__DELIVERED, r01, 2,
				 epoch_of(w, "p.example"), T0, 0, NULL),
			 0);
	assert_int_equal(w->nops, 3 + 1 + 2);
	assert_false(has_dom(w, "f", 1));
	assert_false(has_dom(w, "f", 2));
	assert_true(has_dom(w, "f", 3));
	/* an idle one reused is active again: the next idle one needs no eviction */
	assert_int_equal(accept1(w, "f4again", "v@f4.example"), 0);
	assert_int_equal(w->nops, 3);
	idle_add(w, "h", 0);
	assert_int_equal(w->nops, 3 + 1);
	assert_true(has_dom(w, "f", 3));
	deliver1(w, "f4again", "f4.example"); /* f4 idle again: f3 goes */
	assert_false(has_dom(w, "f", 3));
	assert_true(has_dom(w, "f", 4));
	memset(&dc, 0, sizeof(dc));
	queue_fsm_domains(w->q, dom_count_cb, &dc);
	assert_int_equal(dc.idle, QUEUE_IDLE_DOMAINS_MAX);
	assert_int_equal(dc.n, QUEUE_IDLE_DOMAINS_MAX);
	assert_int_equal(check_own_keys(w, 'D'), QUEUE_IDLE_DOMAINS_MAX);
	check_reopen(w);
	/* after the reload: the order goes on from the keys alone */
	idle_add(w, "h", 1);
	assert_false(has_dom(w, "f", 4));
	assert_true(has_dom(w, "f", 5));
	/* the member DOWN then back: every idle one moves, keeps the bound */
	assert_int_equal(member(w, "n2", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(w, "n1", QUEUE_MEMBER_DOWN), 0);
	expect_owner(w, "f5.example", "n2", w->index);
	check_own_keys(w, 0);
	check_invariants(w);
	return queue_fsm_digest(w->q);
}

/* The bound and the eviction order; the same digests and batches with or without a reload
 * (the idle heap rebuilt from the keys) in the middle. */
static void
test_idle_eviction(void **state)
{
	(void)state;
	struct world a, b;
	world_init(&a);
	world_init(&b);
	uint64_t da = idle_scenario(&a, 0), db = idle_scenario(&b, 1);
	assert_int_equal(da, db);
	assert_int_equal(a.index, b.index);
	assert_int_equal(a.log.len, b.log.len);
	assert_memory_equal(a.log.buf, b.log.buf, a.log.len);
	check_reopen(&a);
	assert_int_equal(queue_fsm_digest(a.q), db);
	world_fini(&a);
	world_fini(&b);
}

#ifndef OWN_NO_MALLOC_HOOK
/* The allocator with a fault: while fail_at > 0, the fail_at-th allocation from now fails. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static long fail_at;

static int
fault_now(void)
{
	return fail_at > 0 && --fail_at == 0;
}

void *
malloc(size_t n)
{
	return fault_now() ? NULL : __libc_malloc(n);
}

void *
calloc(size_t a, size_t b)
{
	return fault_now() ? NULL : __libc_calloc(a, b);
}

void *
realloc(void *p, size_t n)
{
	return fault_now() ? NULL : __libc_realloc(p, n);
}

/* Storage for one scripted command. */
struct cmdstore {
	Relay__Command c;
	Relay__Accept a, dsn;
	Relay__Recipient r[3], *rp[3], dr, *drp;
	Relay__Outcome o;
	Relay__Member m;
	Relay__Renew rn;
	Relay__Hold h;
	Relay__Release rl;
	Relay__Retry rt;
	Relay__Delete d;
	uint32_t idx[3];
};

enum { NSCRIPT = 16 };

/* Command i of the script, built against w's state (epochs). */
static Relay__Command *
script_cmd(struct world *w, unsigned i, struct cmdstore *cs)
{
	static const char *const addrs[] = {"a@x.example", "b@y.example", "c@x.example"};
	memset(cs, 0, sizeof(*cs));
	relay__command__init(&cs->c);
	relay__member__init(&cs->m);
	relay__accept__init(&cs->a);
	relay__outcome__init(&cs->o);
	for (unsigned k = 0; k < 3; k++) {
		relay__recipient__init(&cs->r[k]);
		cs->rp[k] = &cs->r[k];
	}
	cs->a.mail_from = "from@example.com";
	cs->a.received_ms = T0;
	cs->a.rcpts = cs->rp;
	cs->c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	cs->c.member = &cs->m;
	switch (i) {
	case 0:
	case 1:
		cs->m.node = i ? "n2" : "n1";
		break;
	case 2:
	case 3:
		cs->c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
		cs->c.accept = &cs->a;
		cs->a.queue_id = i == 2 ? "m1" : "m2";
		cs->a.n_rcpts = i == 2 ? 3 : 1;
		for (unsigned k = 0; k < cs->a.n_rcpts; k++)
			cs->r[k].addr = (char *)(i == 2 ? addrs[k] : "d@z.example");
		break;
	case 4:
		relay__hold__init(&cs->h);
		cs->h.queue_id = "m1";
		cs->c.cmd_case = RELAY__COMMAND__CMD_HOLD;
		cs->c.hold = &cs->h;
		break;
	case 5:
		relay__retry__init(&cs->rt);
		cs->rt.queue_id = "m1";
		cs->rt.at_ms = T0 + 5;
		cs->c.cmd_case = RELAY__COMMAND__CMD_RETRY;
		cs->c.retry = &cs->rt;
		break;
	case 6:
		relay__release__init(&cs->rl);
		cs->rl.queue_id = "m1";
		cs->rl.at_ms = T0 + 10;
		cs->c.cmd_case = RELAY__COMMAND__CMD_RELEASE;
		cs->c.release = &cs->rl;
		break;
	case 7:	 /* m2's only recipient fails; the DSN goes to the same domain */
	case 11: /* m1's x.example recipients delivered */
	case 12: /* m1's y.example recipient delivered: m1 removed */
		cs->c.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
		cs->c.outcome = &cs->o;
		cs->o.queue_id = i == 7 ? "m2" : "m1";
		cs->o.rcpt_index = cs->idx;
		cs->o.kind = i == 7 ? RELAY__OUTCOME_KIND__FAILED : RELAY__OUTCOME_KIND__DELIVERED;
		cs->o.at_ms = T0 + i;
		cs->o.has_epoch = 1;
		if (i == 7) {
			cs->o.n_rcpt_index = 1;
			cs->o.epoch = epoch_of(w, "z.example");
			relay__accept__init(&cs->dsn);
			relay__recipient__init(&cs->dr);
			cs->dr.addr = "postmaster@z.example";
			cs->drp = &cs->dr;
			cs->dsn.queue_id = "m2-dsn";
			cs->dsn.mail_from = "";
			cs->dsn.n_rcpts = 1;
			cs->dsn.rcpts = &cs->drp;
			cs->dsn.received_ms = T0 + 7;
			cs->o.dsn = &cs->dsn;
		} else if (i == 11) {
			cs->idx[0] = 0;
			cs->idx[1] = 2;
			cs->o.n_rcpt_index = 2;
			cs->o.epoch = epoch_of(w, "x.example");
		} else {
			cs->idx[0] = 1;
			cs->o.n_rcpt_index = 1;
			cs->o.epoch = epoch_of(w, "y.example");
		}
		break;
	case 8:
		cs->m.node = "n1";
		cs->m.state = RELAY__MEMBER_STATE__MEMBER_DOWN;
		break;
	case 9:
		cs->m.node = "n3";
		break;
	case 10:
		relay__renew__init(&cs->rn);
		cs->rn.node = "n2";
		cs->c.cmd_case = RELAY__COMMAND__CMD_RENEW;
		cs->c.renew = &cs->rn;
		break;
	case 13:
		relay__delete__init(&cs->d);
		cs->d.queue_id = "m2-dsn";
		cs->c.cmd_case = RELAY__COMMAND__CMD_DELETE;
		cs->c.delete_ = &cs->d;
		break;
	case 14:
		cs->c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
		cs->c.accept = &cs->a;
		cs->a.queue_id = "m2-dsn"; /* a tombstone: no-op */
		cs->a.n_rcpts = 1;
		cs->r[0].addr = "x@z.example";
		break;
	default:
		cs->m.node = "n2";
		cs->m.state = RELAY__MEMBER_STATE__MEMBER_REMOVED;
		break;
	}
	return &cs->c;
}

static void
test_enomem_changes_nothing(void **state)
{
	(void)state;
	struct world ref, w;
	world_init(&ref);
	world_init(&w);
	static struct cmdstore cs;
	unsigned faults = 0;
	for (unsigned i = 0; i < NSCRIPT; i++) {
		struct store_batch want, got;
		store_batch_init(&want);
		store_batch_init(&got);
		assert_int_equal(queue_apply(ref.q, i + 1, script_cmd(&ref, i, &cs), &want), 0);
		assert_int_equal(store_write(ref.s, &want, 0), 0);
		/* fail the 1st, 2nd, ... allocation of the apply until it needs no more */
		for (long k = 1;; k++) {
			uint64_t d = queue_fsm_digest(w.q);
			Relay__Command *c = script_cmd(&w, i, &cs);
			store_batch_clear(&got);
			fail_at = k;
			int rv = queue_apply(w.q, i + 1, c, &got);
			int hit = fail_at == 0;
			fail_at = 0;
			if (rv == QUEUE_ENOMEM) {
				assert_true(hit);
				assert_int_equal(got.len, 0);
				assert_int_equal(queue_fsm_digest(w.q), d);
				check_invariants(&w);
				faults++;
				continue;
			}
			assert_int_equal(rv, 0);
			if (hit)
				continue; /* a failed allocation that apply survived (none expected)
					   */
			break;
		}
		assert_int_equal(got.len, want.len);
		assert_memory_equal(got.buf, want.buf, want.len);
		assert_int_equal(store_write(w.s, &got, 0), 0);
		assert_int_equal(queue_fsm_digest(w.q), queue_fsm_digest(ref.q));
		check_own_keys(&w, 0);
		check_invariants(&w);
		store_batch_fini(&want);
		store_batch_fini(&got);
	}
	print_message("%u allocation failures injected\n", faults);
	assert_true(faults > 30);
	assert_null(queue_fsm_lookup(w.q, "m1"));
	check_reopen(&w);
	world_fini(&ref);
	world_fini(&w);
}

/* Applies cmd failing its 1st, 2nd, ... allocation until it succeeds; each failure must leave
 * the memory (digest) and the batch unchanged. */
static long idle_faults;

static int
apply_with_faults(struct world *w, uint64_t index, const Relay__Command *cmd,
		  struct store_batch *one)
{
	for (long k = 1;; k++) {
		uint64_t d = queue_fsm_digest(w->q);
		store_batch_clear(one);
		fail_at = k;
		int rv = queue_apply(w->q, index, cmd, one);
		int hit = fail_at == 0;
		fail_at = 0;
		if (rv != QUEUE_ENOMEM)
			return rv;
		assert_true(hit);
		assert_int_equal(one->len, 0);
		assert_int_equal(queue_fsm_digest(w->q), d);
		idle_faults++;
	}
}

/* Evictions (one and two at once, of new and of old idle ones) under allocation faults: the
 * same result as without. */
static void
test_idle_enomem(void **state)
{
	(void)state;
	struct world ref, w;
	world_init(&ref);
	world_init(&w);
	assert_int_equal(member(&ref, "n1", QUEUE_MEMBER_LIVE), 0);
	assert_int_equal(member(&w, "n1", QUEUE_MEMBER_LIVE), 0);
	const char *two[] = {"a@p.example", "b@q.example"};
	const char *ds[] = {"u@dsn.example"};
	for (int k = 0; k < 2; k++) {
		struct world *x = k ? &w : &ref;
		assert_int_equal(accept1(x, "old", "u@old.example"), 0);
		for (unsigned i = 0; i < QUEUE_IDLE_DOMAINS_MAX; i++)
			idle_add(x, "f", i);
		assert_int_equal(accept_n(x, "two", two, 2, T0), 0);
		assert_int_equal(accept_n(x, "dsn", ds, 1, T0), 0);
		if (k)
			x->apply_fn = apply_with_faults;
		idle_add(x, "g", 0);
		deliver1(x, "old", "old.example");
		const uint32_t r01[] = {0, 1};
		assert_int_equal(outcome(x, "two", RELAY__OUTCOME_KIND__DELIVERED, r01, 2,
					 epoch_of(x, "p.example"), T0, 0, NULL),
				 0);
		/* an outcome whose DSN goes to a domain it empties, at the bound */
		Relay__Recipient dr = RELAY__RECIPIENT__INIT;
		Relay__Recipient *drp = &dr;
		dr.addr = "sender@dsn.example";
		Relay__Accept dsn = RELAY__ACCEPT__INIT;
		dsn.queue_id = "dsn-dsn";
		dsn.mail_from = "";
		dsn.n_rcpts = 1;
		dsn.rcpts = &drp;
		dsn.received_ms = T0;
		const uint32_t r0 = 0;
		assert_int_equal(outcome(x, "dsn", RELAY__OUTCOME_KIND__FAILED, &r0, 1,
					 epoch_of(x, "dsn.example"), T0, 0, &dsn),
				 0);
		x->apply_fn = NULL;
		expect_owner(x, "dsn.example", "n1", 4 + 2 * QUEUE_IDLE_DOMAINS_MAX);
	}
	print_message("%ld allocation failures injected\n", idle_faults);
	assert_true(idle_faults >= 4);
	assert_int_equal(queue_fsm_digest(w.q), queue_fsm_digest(ref.q));
	assert_int_equal(w.log.len, ref.log.len);
	assert_memory_equal(w.log.buf, ref.log.buf, w.log.len);
	check_own_keys(&w, 0);
	check_invariants(&w);
	check_reopen(&w);
	world_fini(&ref);
	world_fini(&w);
}
#else
static void
test_enomem_changes_nothing(void **state)
{
	(void)state;
	skip(); /* the sanitizer owns malloc */
}

static void
test_idle_enomem(void **state)
{
	(void)state;
	skip(); /* the sanitizer owns malloc */
}
#endif

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_assignment_rules),
	    cmocka_unit_test(test_drained_expect_since),
	    cmocka_unit_test(test_domains_and_addr),
	    cmocka_unit_test(test_rendezvous_stability),
	    cmocka_unit_test(test_fencing),
	    cmocka_unit_test(test_dsn_same_domain),
	    cmocka_unit_test(test_hold_release_retry),
	    cmocka_unit_test(test_tombstones),
	    cmocka_unit_test(test_persistence),
	    cmocka_unit_test(test_legacy_store),
	    cmocka_unit_test(test_determinism_random),
	    cmocka_unit_test(test_due_owned_order_and_cost),
	    cmocka_unit_test(test_members_bound_and_validation),
	    cmocka_unit_test(test_enomem_changes_nothing),
	    cmocka_unit_test(test_idle_reuse_and_move),
	    cmocka_unit_test(test_idle_eviction),
	    cmocka_unit_test(test_idle_enomem),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
