/*
 * queue_fsm_bench.c - the queue state machine alone with a million messages (issue 14): memory
 * per queued message, apply rate, the due walk, a DeferDomain over the whole backlog, and the
 * idle-assignment bound with a million distinct domains, evictions included.
 *
 *   build/bench/queue_fsm_bench [N]        # N messages (default 1000000)
 *   build/bench/queue_fsm_bench N DIR      # queue_fsm_new's load time over RocksDB in DIR
 *
 * The state machine runs over an empty in-memory store and its apply batches are dropped: apply
 * never reads the store, so this measures exactly what the state machine itself holds (glibc's
 * mallinfo2: bytes in use) and spends.  Two runs:
 *   one domain    N Accepts of one recipient to never.test, then one DeferDomain, a due walk,
 *                 and N Outcomes (deferred), then N deliveries;
 *   N domains     N Accepts each to its own domain, then N deliveries: every domain goes idle
 *                 and all but QUEUE_IDLE_DOMAINS_MAX are forgotten (checked after every
 *                 Outcome: never more than the bound idle; at the end exactly the newest).
 */
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue_fsm.h"
#include "store.h"

#define T0 1700000000000ull

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t
heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}

static void
die(const char *what, int rv)
{
	fprintf(stderr, "%s: %s\n", what, queue_strerror(rv));
	exit(1);
}

static void
apply(struct queue_fsm *q, uint64_t index, const Relay__Command *c, struct store_batch *b)
{
	store_batch_clear(b);
	int rv = queue_apply(q, index, c, b);
	if (rv)
		die("queue_apply", rv);
	queue_fsm_written(q, index); /* the batch is dropped: nothing waits for the store */
}

static void
accept(struct queue_fsm *q, uint64_t index, const char *id, const char *addr,
       struct store_batch *b)
{
	Relay__Recipient r = RELAY__RECIPIENT__INIT, *rp = &r;
	r.addr = (char *)addr;
	Relay__Accept a = RELAY__ACCEPT__INIT;
	a.queue_id = (char *)id;
	a.mail_from = "sender@src.backlog.test";
	a.n_rcpts = 1;
	a.rcpts = &rp;
	a.body.data = (uint8_t *)"x";
	a.body.len = 1;
	a.received_ms = T0 + index;
	a.client_addr = "127.0.0.1";
	a.helo = "client.backlog.test";
	a.node_id = "bench1";
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	c.accept = &a;
	apply(q, index, &c, b);
}

static void
outcome(struct queue_fsm *q, uint64_t index, const char *id, uint64_t epoch,
	Relay__OutcomeKind kind, struct store_batch *b)
{
	uint32_t r0 = 0;
	Relay__Outcome o = RELAY__OUTCOME__INIT;
	o.queue_id = (char *)id;
	o.n_rcpt_index = 1;
	o.rcpt_index = &r0;
	o.kind = kind;
	o.at_ms = T0 + index;
	o.has_epoch = 1;
	o.epoch = epoch;
	o.has_next_attempt_ms = kind == RELAY__OUTCOME_KIND__DEFERRED;
	o.next_attempt_ms = T0 + index + 60000;
	o.reply = "451 4.4.3 never.test: no answer";
	o.relay = "";
	o.dsn_status = "4.4.3";
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	c.outcome = &o;
	apply(q, index, &c, b);
}

static void
member_live(struct queue_fsm *q, uint64_t index, struct store_batch *b)
{
	Relay__Member m = RELAY__MEMBER__INIT;
	m.node = "bench1";
	m.state = RELAY__MEMBER_STATE__MEMBER_LIVE;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	c.member = &m;
	apply(q, index, &c, b);
}

static int
count_cb(void *arg, const struct queue_item *it)
{
	(void)it;
	(*(uint64_t *)arg)++;
	return 0;
}

static int
idle_cb(void *arg, const char *domain, const char *owner, uint64_t epoch, uint64_t queued)
{
	(void)domain;
	(void)owner;
	(void)epoch;
	uint64_t *c = arg;
	c[0]++;
	c[1] += queued == 0;
	return 0;
}

static void
run_one_domain(uint64_t n)
{
	struct store *s;
	struct queue_fsm *q;
	struct store_batch b;
	store_batch_init(&b);
	if (store_mem_new(&s))
		die("store_mem_new", QUEUE_ENOMEM);
	size_t h0 = heap_bytes();
	int rv = queue_fsm_new(s, &q);
	if (rv)
		die("queue_fsm_new", rv);
	uint64_t index = 0;
	member_live(q, ++index, &b);
	char id[32];
	double t0 = now_s();
	for (uint64_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "1A2B3C%016" PRIX64, i); /* 22 characters like relayd's */
		accept(q, ++index, id, "rcpt@never.test", &b);
	}
	double t1 = now_s();
	store_batch_fini(&b);
	store_batch_init(&b);
	malloc_trim(0);
	size_t h1 = heap_bytes();
	printf("one domain: %" PRIu64 " Accepts in %.2f s (%.0f/s); state machine %.1f MiB: %.0f "
	       "bytes per queued message\n",
	       n, t1 - t0, (double)n / (t1 - t0), (double)(h1 - h0) / 1048576,
	       (double)(h1 - h0) / (double)n);
	struct queue_domain_info di;
	queue_fsm_domain_info(q, "never.test", &di);
	uint64_t due = 0;
	t0 = now_s();
	int k = queue_fsm_due_owned(q, "bench1", UINT64_MAX, count_cb, &due, 64);
	t1 = now_s();
	printf("one domain: the first 64 due items of %" PRIu64 ": %.1f us (%d)\n", n,
	       (t1 - t0) * 1e6, k);
	/* the destination is dead: one command defers the whole backlog */
	Relay__DeferDomain dd = RELAY__DEFER_DOMAIN__INIT;
	dd.domain = "never.test";
	dd.epoch = di.epoch;
	dd.until_ms = T0 + 10 * n + 3600000;
	dd.at_ms = T0 + n;
	dd.reply = "451 4.4.3 never.test: no answer";
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_DEFER_DOMAIN;
	c.defer_domain = &dd;
	t0 = now_s();
	apply(q, ++index, &c, &b);
	t1 = now_s();
	due = 0;
	queue_fsm_due_owned(q, "bench1", T0 + 10 * n, count_cb, &due, 64);
	printf("one domain: DeferDomain over %" PRIu64 " queued: %.1f us, %u store writes; due "
	       "then: %" PRIu64 "\n",
	       n, (t1 - t0) * 1e6, b.count, due);
	t0 = now_s();
	for (uint64_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "1A2B3C%016" PRIX64, i);
		outcome(q, ++index, id, di.epoch, RELAY__OUTCOME_KIND__DELIVERED, &b);
	}
	t1 = now_s();
	struct queue_counts qc;
	queue_fsm_counts(q, &qc);
	printf("one domain: %" PRIu64 " Outcomes (delivered) in %.2f s (%.0f/s); left %" PRIu64
	       " messages\n",
	       n, t1 - t0, (double)n / (t1 - t0), qc.messages);
	queue_fsm_free(q);
	store_free(s);
	store_batch_fini(&b);
}

static void
run_many_domains(uint64_t n)
{
	struct store *s;
	struct queue_fsm *q;
	struct store_batch b;
	store_batch_init(&b);
	if (store_mem_new(&s))
		die("store_mem_new", QUEUE_ENOMEM);
	size_t h0 = heap_bytes();
	int rv = queue_fsm_new(s, &q);
	if (rv)
		die("queue_fsm_new", rv);
	uint64_t index = 0;
	member_live(q, ++index, &b);
	char id[32], addr[64], dom[48];
	double t0 = now_s();
	for (uint64_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "1A2B3C%016" PRIX64, i);
		snprintf(addr, sizeof(addr), "rcpt@d%07" PRIu64 ".example", i);
		accept(q, ++index, id, addr, &b);
	}
	double t1 = now_s();
	malloc_trim(0);
	size_t h1 = heap_bytes();
	printf("%" PRIu64 " domains: %" PRIu64 " Accepts in %.2f s (%.0f/s); state machine %.1f "
	       "MiB: %.0f bytes per queued message and domain\n",
	       n, n, t1 - t0, (double)n / (t1 - t0), (double)(h1 - h0) / 1048576,
	       (double)(h1 - h0) / (double)n);
	t0 = now_s();
	uint64_t worst = 0;
	for (uint64_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "1A2B3C%016" PRIX64, i);
		snprintf(dom, sizeof(dom), "d%07" PRIu64 ".example", i);
		struct queue_domain_info di;
		if (queue_fsm_domain_info(q, dom, &di))
			die("no assignment", QUEUE_ENOTFOUND);
		outcome(q, ++index, id, di.epoch, RELAY__OUTCOME_KIND__DELIVERED, &b);
		if (i % 4096 == 0 || i == n - 1) {
			uint64_t c[2] = {0, 0};
			queue_fsm_domains(q, idle_cb, c);
			if (c[1] > worst)
				worst = c[1];
			if (c[1] > QUEUE_IDLE_DOMAINS_MAX) {
				fprintf(stderr, "%" PRIu64 " idle assignments\n", c[1]);
				exit(1);
			}
		}
	}
	t1 = now_s();
	uint64_t c[2] = {0, 0};
	queue_fsm_domains(q, idle_cb, c);
	malloc_trim(0);
	size_t h2 = heap_bytes();
	printf("%" PRIu64 " domains: %" PRIu64 " deliveries in %.2f s (%.0f/s); idle assignments "
	       "at most %" PRIu64 " (bound %u), %" PRIu64 " left, %" PRIu64
	       " forgotten; state machine %.1f MiB after\n",
	       n, n, t1 - t0, (double)n / (t1 - t0), worst, QUEUE_IDLE_DOMAINS_MAX, c[0], n - c[0],
	       (double)(h2 - h0) / 1048576);
	queue_fsm_free(q);
	store_free(s);
	store_batch_fini(&b);
}

/* N Accepts written to a RocksDB store in dir (batches of 1000, unsynced), closed, then
 * opened again: the time queue_fsm_new takes to load them (the restart of a node). */
static void
run_load(uint64_t n, const char *dir)
{
	struct store *s;
	struct queue_fsm *q;
	struct store_batch b, all;
	store_batch_init(&b);
	store_batch_init(&all);
	if (store_open(dir, 0, &s))
		die("store_open", QUEUE_EIO);
	int rv = queue_fsm_new(s, &q);
	if (rv)
		die("queue_fsm_new", rv);
	uint64_t index = 0;
	member_live(q, ++index, &b);
	store_batch_append(&all, &b);
	char id[32];
	double t0 = now_s();
	for (uint64_t i = 0; i < n; i++) {
		snprintf(id, sizeof(id), "1A2B3C%016" PRIX64, i);
		accept(q, ++index, id, "rcpt@never.test", &b);
		store_batch_append(&all, &b);
		if (all.count >= 4000 || i == n - 1) {
			if (store_write(s, &all, 0))
				die("store_write", QUEUE_EIO);
			store_batch_clear(&all);
		}
	}
	queue_fsm_free(q);
	store_free(s); /* flushes: the next open reads SSTs, as after a clean stop */
	double t1 = now_s();
	printf("load: %" PRIu64 " Accepts written to %s in %.1f s\n", n, dir, t1 - t0);
	t0 = now_s();
	if (store_open(dir, 0, &s))
		die("store_open", QUEUE_EIO);
	t1 = now_s();
	if ((rv = queue_fsm_new(s, &q)))
		die("queue_fsm_new", rv);
	double t2 = now_s();
	struct queue_counts qc;
	queue_fsm_counts(q, &qc);
	printf("load: store_open %.2f s, queue_fsm_new %.2f s for %" PRIu64 " messages (%.2f us "
	       "each)\n",
	       t1 - t0, t2 - t1, qc.messages, (t2 - t1) * 1e6 / (double)(qc.messages ? qc.messages : 1));
	queue_fsm_free(q);
	store_free(s);
	store_batch_fini(&b);
	store_batch_fini(&all);
}

int
main(int argc, char **argv)
{
	uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000000;
	if (argc > 2) {
		run_load(n, argv[2]); /* queue_fsm_bench N DIR: the load only */
		return 0;
	}
	run_one_domain(n);
	run_many_domains(n);
	return 0;
}
