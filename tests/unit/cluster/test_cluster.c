/*
 * test_cluster.c - the single-node cluster on a real libuv loop and a real RocksDB in a
 * temporary directory: group commit, durability across close/reopen (also through
 * cluster_dump_queue), ECLOSED on close, the EBUSY bound, replay of log entries written without
 * their apply (a crash between the two writes), write failures, corrupt data at open;
 * delivery outcomes and deletes proposed through the log, kept across close/reopen with the
 * scheduler's index rebuilt, replayed after a crash, and shown by the dump.
 * Waiting is "run the loop until a condition holds, with a deadline", never a sleep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <ftw.h>
#include <uv.h>

#include "cluster.h"
#include "cluster_int.h"
#include "queue_fsm.h"
#include "store.h"

#define DEADLINE_MS 60000
#define BODY_LEN 4096

/* ---- fixture ---- */

struct fx {
	char dir[64];
	char db[96];
	uv_loop_t loop;
	uv_timer_t tick; /* keeps the loop from blocking forever while waiting */
};

static int
rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	strcpy(f->dir, "/tmp/relay-cluster-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->db, sizeof(f->db), "%s/db", f->dir);
	uv_loop_init(&f->loop);
	uv_timer_init(&f->loop, &f->tick);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void
tick_cb(uv_timer_t *t)
{
}

/* Runs the loop until *flag >= want; fails the test at the deadline. */
static void
run_until(struct fx *f, const unsigned *flag, unsigned want)
{
	uv_update_time(&f->loop);
	uint64_t end = uv_now(&f->loop) + DEADLINE_MS;
	uv_timer_start(&f->tick, tick_cb, 10, 10);
	while (*flag < want) {
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) > end)
			fail_msg("deadline: %u of %u", *flag, want);
	}
	uv_timer_stop(&f->tick);
}

struct done {
	unsigned calls;
	unsigned ok;
	int status[16384];
	unsigned order_ok; /* callbacks came in proposal order */
	unsigned next;
};

struct pctx {
	struct done *d;
	unsigned i;
};

static struct pctx ctxs[16384];

static void
prop_cb(void *arg, int status)
{
	struct pctx *p = arg;
	p->d->status[p->i] = status;
	if (p->i == p->d->next)
		p->d->order_ok++;
	p->d->next = p->i + 1;
	p->d->calls++;
	if (status == 0)
		p->d->ok++;
}

static void
close_done(void *arg)
{
	(*(unsigned *)arg)++;
}

static void
close_and_wait(struct fx *f, struct cluster *c)
{
	unsigned closed = 0;
	cluster_close(c, close_done, &closed);
	assert_int_equal(closed, 0); /* never inside cluster_close */
	run_until(f, &closed, 1);
}

static struct cluster *
open_cluster(struct fx *f, unsigned max_pending, size_t max_batch)
{
	struct cluster_config cfg = {
	    .node_id = "n1",
	    .data_dir = f->dir,
	    .max_pending = max_pending,
	    .max_batch_bytes = max_batch,
	};
	struct cluster *c = NULL;
	int rv = cluster_open(&f->loop, &cfg, &c);
	if (rv)
		fail_msg("cluster_open: %s", cluster_strerror(rv));
	return c;
}

/* An Accept with queue id q<i>, two recipients and a body of blen bytes. */
struct cmdbuf {
	Relay__Command cmd;
	Relay__Accept acc;
	Relay__Recipient r[2];
	Relay__Recipient *rp[2];
	char id[32];
	char r0[64];
	uint8_t *body;
};

static void
make_cmd(struct cmdbuf *b, unsigned i, size_t blen)
{
	memset(b, 0, sizeof(*b));
	relay__command__init(&b->cmd);
	relay__accept__init(&b->acc);
	snprintf(b->id, sizeof(b->id), "q%06u", i);
	snprintf(b->r0, sizeof(b->r0), "user%u@example.org", i);
	for (int k = 0; k < 2; k++) {
		relay__recipient__init(&b->r[k]);
		b->rp[k] = &b->r[k];
	}
	b->r[0].addr = b->r0;
	b->r[1].addr = "postmaster@example.net";
	b->acc.queue_id = b->id;
	b->acc.mail_from = "sender@example.com";
	b->acc.n_rcpts = 2;
	b->acc.rcpts = b->rp;
	b->body = malloc(blen ? blen : 1);
	for (size_t k = 0; k < blen; k++)
		b->body[k] = (uint8_t)('a' + (i + k) % 26);
	b->acc.body.data = b->body;
	b->acc.body.len = blen;
	b->acc.received_ms = 1700000000000ull + i;
	b->acc.node_id = "n1";
	b->cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	b->cmd.accept = &b->acc;
}

static void
free_cmd(struct cmdbuf *b)
{
	free(b->body);
}

/* Proposes commands [from, to) (ids from..to-1); returns how many were accepted. */
static unsigned
propose_range(struct cluster *c, struct done *d, unsigned from, unsigned to, int *first_err)
{
	unsigned n = 0;
	for (unsigned i = from; i < to; i++) {
		struct cmdbuf b;
		make_cmd(&b, i, BODY_LEN);
		ctxs[i] = (struct pctx){d, i};
		int rv = cluster_propose(c, &b.cmd, prop_cb, &ctxs[i]);
		free_cmd(&b); /* the caller may free right after the call */
		if (rv == 0)
			n++;
		else if (first_err && !*first_err)
			*first_err = rv;
	}
	return n;
}

static unsigned
count_lines(FILE *fp, const char *must_contain, unsigned *containing)
{
	char line[8192];
	unsigned n = 0;
	rewind(fp);
	while (fgets(line, sizeof(line), fp)) {
		n++;
		if (must_contain && containing && strstr(line, must_contain))
			(*containing)++;
	}
	return n;
}

/* ---- tests ---- */

static void
test_group_commit_and_reopen(void **state)
{
	struct fx *f = *state;
	enum { N = 3000 };
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	assert_int_equal(propose_range(c, &d, 0, N, NULL), N);
	assert_int_equal(d.calls, 0); /* never synchronous */
	run_until(f, &d.calls, N);
	assert_int_equal(d.ok, N);
	assert_int_equal(d.order_ok, N);

	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.proposals, N);
	assert_int_equal(st.commits, N);
	assert_int_equal(st.applied_index, N);
	assert_int_equal(st.last_index, N);
	assert_int_equal(st.messages, N);
	assert_int_equal(st.rcpts_queued, 2 * N);
	assert_int_equal(st.failures, 0);
	assert_true(st.batches >= 1);
	assert_true(st.batches < N); /* group commit happened */
	print_message("group commit: %u proposals in %llu batches, %llu fsyncs\n", N,
		      (unsigned long long)st.batches, (unsigned long long)st.fsyncs);

	const struct queue_msg *m = queue_fsm_lookup(cluster_queue(c), "q000042");
	assert_non_null(m);
	assert_int_equal(m->nrcpts, 2);
	assert_int_equal(m->size, BODY_LEN);
	close_and_wait(f, c);

	/* the log is bounded: every applied entry was deleted, the applied index recorded */
	struct store *s;
	assert_int_equal(store_open(f->db, 1, &s), 0);
	uint64_t first, last, applied;
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(first, 0);
	assert_int_equal(last, 0);
	assert_int_equal(store_applied_get(s, &applied), 0);
	assert_int_equal(applied, N);
	store_free(s);

	/* reopen: every message is still there, with its body */
	c = open_cluster(f, 0, 0);
	cluster_stats(c, &st);
	assert_int_equal(st.messages, N);
	assert_int_equal(st.applied_index, N);
	struct queue_fsm *q = cluster_queue(c);
	unsigned seen = 0;
	uint64_t prev = 0;
	for (m = queue_fsm_first(q); m; m = queue_fsm_next(q, m)) {
		assert_true(m->accept_index > prev); /* apply order restored */
		prev = m->accept_index;
		seen++;
	}
	assert_int_equal(seen, N);
	void *body;
	size_t blen;
	assert_int_equal(queue_fsm_read_body(q, "q002999", &body, &blen), 0);
	struct cmdbuf b;
	make_cmd(&b, 2999, BODY_LEN);
	assert_int_equal(blen, BODY_LEN);
	assert_memory_equal(body, b.body, BODY_LEN);
	free_cmd(&b);
	free(body);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(q, "q000007", &rec), 0);
	assert_string_equal(rec->mail_from, "sender@example.com");
	assert_int_equal(rec->n_rcpts, 2);
	assert_string_equal(rec->rcpts[0]->rcpt->addr, "user7@example.org");
	relay__queue_record__free_unpacked(rec, NULL);

	/* new proposals continue the log */
	memset(&d, 0, sizeof(d));
	assert_int_equal(propose_range(c, &d, N, N + 10, NULL), 10);
	run_until(f, &d.calls, 10);
	cluster_stats(c, &st);
	assert_int_equal(st.last_index, N + 10);
	close_and_wait(f, c);

	/* the offline dump sees every message, text and JSON */
	FILE *fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 0), 0);
	unsigned hits = 0;
	assert_int_equal(count_lines(fp, "rcpt=<user42@example.org>:queued", &hits), N + 10);
	assert_int_equal(hits, 1);
	fclose(fp);
	fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 1), 0);
	hits = 0;
	assert_int_equal(count_lines(fp, "{\"queue_id\":\"q", &hits), N + 10);
	assert_int_equal(hits, N + 10);
	fclose(fp);
}

static struct cluster *g_closing;
static int g_reentrant_rv;

static void
closed_prop_cb(void *arg, int status)
{
	prop_cb(arg, status);
	if (status == CLUSTER_ECLOSED && !g_reentrant_rv) {
		struct cmdbuf b;
		make_cmd(&b, 99999, 10);
		g_reentrant_rv = cluster_propose(g_closing, &b.cmd, prop_cb, arg);
		free_cmd(&b);
	}
}

static void
test_close_fails_pending(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	/* batch 1 goes to the disk in the first loop turn */
	assert_int_equal(propose_range(c, &d, 0, 100, NULL), 100);
	uv_run(&f->loop, UV_RUN_NOWAIT);
	/* batch 2 waits behind it; close now */
	g_closing = c;
	g_reentrant_rv = 0;
	for (unsigned i = 100; i < 200; i++) {
		struct cmdbuf b;
		make_cmd(&b, i, 100);
		ctxs[i] = (struct pctx){&d, i};
		assert_int_equal(cluster_propose(c, &b.cmd, closed_prop_cb, &ctxs[i]), 0);
		free_cmd(&b);
	}
	unsigned closed = 0;
	cluster_close(c, close_done, &closed);
	run_until(f, &closed, 1);
	assert_int_equal(d.calls, 200);
	for (unsigned i = 0; i < 100; i++)
		assert_int_equal(d.status[i], 0);
	for (unsigned i = 100; i < 200; i++)
		assert_int_equal(d.status[i], CLUSTER_ECLOSED);
	assert_int_equal(g_reentrant_rv, CLUSTER_ECLOSED);

	/* the committed batch survived; nothing of the failed one did */
	c = open_cluster(f, 0, 0);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 100);
	assert_null(queue_fsm_lookup(cluster_queue(c), "q000150"));
	/* close with nothing at all written since open */
	close_and_wait(f, c);
}

static void
test_close_before_any_write(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	assert_int_equal(propose_range(c, &d, 0, 10, NULL), 10);
	unsigned closed = 0;
	cluster_close(c, close_done, &closed);
	assert_int_equal(d.calls, 0);
	run_until(f, &closed, 1);
	assert_int_equal(d.calls, 10);
	for (unsigned i = 0; i < 10; i++)
		assert_int_equal(d.status[i], CLUSTER_ECLOSED);
}

static void
test_max_pending(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 10, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	int err = 0;
	assert_int_equal(propose_range(c, &d, 0, 15, &err), 10);
	assert_int_equal(err, CLUSTER_EBUSY);
	run_until(f, &d.calls, 10);
	assert_int_equal(d.ok, 10);
	/* room again */
	err = 0;
	assert_int_equal(propose_range(c, &d, 100, 110, &err), 10);
	assert_int_equal(err, 0);
	run_until(f, &d.calls, 20);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.rejected, 5);
	assert_int_equal(st.messages, 20);
	close_and_wait(f, c);
}

static void
test_bad_proposals(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 64 * 1024);
	static struct done d;
	memset(&d, 0, sizeof(d));
	struct cmdbuf b;
	make_cmd(&b, 1, 100 * 1024);
	assert_int_equal(cluster_propose(c, &b.cmd, prop_cb, &ctxs[0]), CLUSTER_ETOOBIG);
	free_cmd(&b);
	make_cmd(&b, 2, 10);
	b.acc.n_rcpts = 0;
	assert_int_equal(cluster_propose(c, &b.cmd, prop_cb, &ctxs[0]), CLUSTER_EINVAL);
	b.acc.n_rcpts = 2;
	b.acc.queue_id = "has space";
	assert_int_equal(cluster_propose(c, &b.cmd, prop_cb, &ctxs[0]), CLUSTER_EINVAL);
	free_cmd(&b);
	assert_int_equal(cluster_propose(c, NULL, prop_cb, &ctxs[0]), CLUSTER_EINVAL);
	/* a batch bound smaller than the offered load: several writes, all committed */
	memset(&d, 0, sizeof(d));
	assert_int_equal(propose_range(c, &d, 0, 100, NULL), 100);
	run_until(f, &d.calls, 100);
	assert_int_equal(d.ok, 100);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_true(st.batches >= 100 * BODY_LEN / (64 * 1024));
	close_and_wait(f, c);
	assert_string_equal(cluster_strerror(CLUSTER_EBUSY),
			    "too many proposals waiting for the disk");
	assert_string_equal(cluster_strerror(12345), "unknown error");
}

static void
test_write_failure(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	/* one good batch first, so the failing write also carries apply writes */
	assert_int_equal(propose_range(c, &d, 0, 5, NULL), 5);
	run_until(f, &d.calls, 5);
	store_inject_write_failures(cluster__store(c), 1);
	assert_int_equal(propose_range(c, &d, 5, 10, NULL), 5);
	run_until(f, &d.calls, 10);
	for (unsigned i = 5; i < 10; i++)
		assert_int_equal(d.status[i], CLUSTER_EIO);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.failures, 1);
	assert_int_equal(st.last_index, 5);
	assert_int_equal(st.messages, 5);
	/* the store is fine again: the retry of the same messages commits at 6.. */
	assert_int_equal(propose_range(c, &d, 5, 10, NULL), 5);
	run_until(f, &d.calls, 15);
	for (unsigned i = 5; i < 10; i++)
		assert_int_equal(d.status[i], 0);
	cluster_stats(c, &st);
	assert_int_equal(st.last_index, 10);
	close_and_wait(f, c);
	c = open_cluster(f, 0, 0);
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 10);
	assert_int_equal(st.applied_index, 10);
	close_and_wait(f, c);
}

/* Writes entries first..last (Accept q<i>) to the log only, as if the node crashed after the
 * synced log append and before its apply write. */
static void
write_log_only(struct fx *f, uint64_t first, uint64_t last, unsigned id_base)
{
	struct store *s;
	assert_int_equal(store_open(f->db, 0, &s), 0);
	struct store_batch b;
	store_batch_init(&b);
	for (uint64_t i = first; i <= last; i++) {
		struct cmdbuf cb;
		make_cmd(&cb, id_base + (unsigned)(i - first), 1000);
		size_t len = relay__command__get_packed_size(&cb.cmd);
		uint8_t *buf = malloc(len);
		relay__command__pack(&cb.cmd, buf);
		struct store_entry e = {
		    .index = i, .term = 1, .type = STORE_ENTRY_NORMAL, .data = buf, .len = len};
		assert_int_equal(store_log_append(&b, &e), 0);
		free(buf);
		free_cmd(&cb);
	}
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	store_free(s);
}

static void
test_replay_after_crash(void **state)
{
	struct fx *f = *state;
	/* a fresh node that "crashed" after appending entries 1..5 (ids 0..4) */
	write_log_only(f, 1, 5, 0);
	/* before any open, the offline dump already shows them, replayed from the log; not
	 * pending: a single node's durable entries are committed (one voter) */
	FILE *fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 0), 0);
	unsigned pend = 0;
	assert_int_equal(count_lines(fp, "pending_apply=1", &pend), 5);
	assert_int_equal(pend, 0);
	fclose(fp);

	struct cluster *c = open_cluster(f, 0, 0);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 5);
	assert_int_equal(st.applied_index, 5);
	assert_int_equal(st.last_index, 5);
	static struct done d;
	memset(&d, 0, sizeof(d));
	assert_int_equal(propose_range(c, &d, 10, 12, NULL), 2);
	run_until(f, &d.calls, 2);
	cluster_stats(c, &st);
	assert_int_equal(st.last_index, 7);
	close_and_wait(f, c);

	/* a second crash: entries 8..10 again carry ids 3..5; 3 and 4 are duplicates (an
	 * idempotent retry), only id 5 is new */
	write_log_only(f, 8, 10, 3);
	c = open_cluster(f, 0, 0);
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 8);
	assert_int_equal(st.applied_index, 10);
	assert_non_null(queue_fsm_lookup(cluster_queue(c), "q000005"));
	close_and_wait(f, c);
	struct store *s;
	assert_int_equal(store_open(f->db, 1, &s), 0);
	uint64_t first, last;
	assert_int_equal(store_log_bounds(s, &first, &last), 0);
	assert_int_equal(last, 0); /* replayed entries were deleted */
	store_free(s);
}

static void
test_corrupt_log(void **state)
{
	struct fx *f = *state;
	write_log_only(f, 1, 3, 0);
	struct store *s;
	assert_int_equal(store_open(f->db, 0, &s), 0);
	void *val;
	size_t vlen;
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(2, key);
	assert_int_equal(store_get(s, STORE_CF_LOG, key, sizeof(key), &val, &vlen), 0);
	((unsigned char *)val)[vlen - 1] ^= 0x40; /* one bit flipped in the data */
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_LOG, key, sizeof(key), val, vlen), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	free(val);
	store_free(s);

	struct cluster_config cfg = {.node_id = "n1", .data_dir = f->dir};
	struct cluster *c = NULL;
	assert_int_equal(cluster_open(&f->loop, &cfg, &c), CLUSTER_ECORRUPT);
	assert_null(c);
	FILE *fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 0), CLUSTER_ECORRUPT);
	fclose(fp);
}

static void
test_corrupt_queue_record(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	close_and_wait(f, c);
	struct store *s;
	assert_int_equal(store_open(f->db, 0, &s), 0);
	struct store_batch b;
	store_batch_init(&b);
	assert_int_equal(store_batch_put(&b, STORE_CF_INDEX, "Mq1", 3, "\xff\xff\xff", 3), 0);
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	store_free(s);
	struct cluster_config cfg = {.node_id = "n1", .data_dir = f->dir};
	assert_int_equal(cluster_open(&f->loop, &cfg, &c), CLUSTER_ECORRUPT);
}

static void
test_dump_missing_dir(void **state)
{
	struct fx *f = *state;
	char p[128];
	snprintf(p, sizeof(p), "%s/nope", f->dir);
	FILE *fp = tmpfile();
	assert_true(cluster_dump_queue(p, fp, 0) < 0);
	fclose(fp);
}

/* ---- pipelined sessions: each proposes again from its callback (closed loop) ---- */

struct session {
	struct cluster *c;
	unsigned id, left;
	unsigned *done, *ok, *total;
};

static void session_next(struct session *ss);

static void
session_cb(void *arg, int status)
{
	struct session *ss = arg;
	(*ss->done)++;
	if (status == 0)
		(*ss->ok)++;
	if (ss->left)
		session_next(ss);
}

static void
session_next(struct session *ss)
{
	struct cmdbuf b;
	unsigned i = (*ss->total)++;
	make_cmd(&b, i, BODY_LEN);
	ss->left--;
	assert_int_equal(cluster_propose(ss->c, &b.cmd, session_cb, ss), 0);
	free_cmd(&b);
}

static void
test_pipelined_sessions(void **state)
{
	struct fx *f = *state;
	enum { SESSIONS = 50, EACH = 100, N = SESSIONS * EACH };
	struct cluster *c = open_cluster(f, 0, 0);
	static struct session ss[SESSIONS];
	unsigned done = 0, ok = 0, total = 0;
	uv_update_time(&f->loop);
	uint64_t t0 = uv_hrtime();
	for (unsigned k = 0; k < SESSIONS; k++) {
		ss[k] = (struct session){c, k, EACH, &done, &ok, &total};
		session_next(&ss[k]);
	}
	run_until(f, &done, N);
	double secs = (double)(uv_hrtime() - t0) / 1e9;
	assert_int_equal(ok, N);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.messages, N);
	/* every fsync carried many proposals: 50 sessions share each write */
	assert_true(st.batches * 10 < N);
	print_message("pipelined: %u proposals of %u bytes, %u sessions: %.0f/s, %llu batches "
		      "(%.1f per fsync)\n",
		      N, BODY_LEN, SESSIONS, N / secs, (unsigned long long)st.batches,
		      (double)N / (double)st.batches);
	close_and_wait(f, c);
}

/* ---- startup with a large queue reads metadata only ---- */

static void
test_large_queue_startup(void **state)
{
	struct fx *f = *state;
	enum { N = 100000, CHUNK = 10000 };
	struct cluster *c = open_cluster(f, CHUNK, 0);
	static struct done d;
	unsigned calls = 0;
	for (unsigned base = 0; base < N; base += CHUNK) {
		memset(&d, 0, sizeof(d));
		for (unsigned i = 0; i < CHUNK; i++) {
			struct cmdbuf b;
			make_cmd(&b, base + i, 200);
			ctxs[i] = (struct pctx){&d, i};
			assert_int_equal(cluster_propose(c, &b.cmd, prop_cb, &ctxs[i]), 0);
			free_cmd(&b);
		}
		run_until(f, &d.calls, CHUNK);
		assert_int_equal(d.ok, CHUNK);
		calls += d.calls;
	}
	assert_int_equal(calls, N);
	close_and_wait(f, c);
	uint64_t t0 = uv_hrtime();
	c = open_cluster(f, 0, 0);
	double secs = (double)(uv_hrtime() - t0) / 1e9;
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.messages, N);
	assert_int_equal(st.rcpts_queued, 2 * N);
	print_message("startup with %u messages: %.2f s\n", N, secs);
	close_and_wait(f, c);
}

/* ---- delivery outcomes through the log ---- */

struct obuf {
	Relay__Command cmd;
	Relay__Outcome out;
	Relay__Delete del;
	uint32_t idx[2];
	char id[32];
};

static Relay__Command *
make_outcome(struct obuf *o, unsigned i, Relay__OutcomeKind kind, uint64_t next_ms,
	     const uint32_t *idx, size_t n)
{
	memset(o, 0, sizeof(*o));
	relay__command__init(&o->cmd);
	relay__outcome__init(&o->out);
	snprintf(o->id, sizeof(o->id), "q%06u", i);
	memcpy(o->idx, idx, n * sizeof(*idx));
	o->out.queue_id = o->id;
	o->out.rcpt_index = o->idx;
	o->out.n_rcpt_index = n;
	o->out.kind = kind;
	o->out.at_ms = 1700000100000ull + i;
	if (kind == RELAY__OUTCOME_KIND__DEFERRED) {
		o->out.has_next_attempt_ms = 1;
		o->out.next_attempt_ms = next_ms;
	}
	o->out.reply = kind == RELAY__OUTCOME_KIND__DEFERRED ? "451 4.2.0 greylisted, come back"
		       : kind == RELAY__OUTCOME_KIND__FAILED ? "550 5.1.1 unknown user"
							     : "250 2.0.0 ok";
	o->out.relay = "mx1.example.org[192.0.2.7]:25";
	o->cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	o->cmd.outcome = &o->out;
	return &o->cmd;
}

static Relay__Command *
make_delete(struct obuf *o, unsigned i)
{
	memset(o, 0, sizeof(*o));
	relay__command__init(&o->cmd);
	relay__delete__init(&o->del);
	snprintf(o->id, sizeof(o->id), "q%06u", i);
	o->del.queue_id = o->id;
	o->cmd.cmd_case = RELAY__COMMAND__CMD_DELETE;
	o->cmd.delete_ = &o->del;
	return &o->cmd;
}

/* An Outcome without an epoch gets the current epoch of its first recipient's domain (what
 * that domain's owner would send), read from q. */
static void
fence(struct queue_fsm *q, Relay__Command *cmd)
{
	if (cmd->cmd_case != RELAY__COMMAND__CMD_OUTCOME || cmd->outcome->has_epoch)
		return;
	cmd->outcome->has_epoch = 1;
	Relay__QueueRecord *rec;
	if (queue_fsm_read_record(q, cmd->outcome->queue_id, &rec))
		return;
	char d[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
	queue_addr_domain(rec->rcpts[cmd->outcome->rcpt_index[0]]->rcpt->addr, d);
	if (queue_fsm_domain_owner(q, d, owner, &cmd->outcome->epoch))
		cmd->outcome->epoch = 0;
	relay__queue_record__free_unpacked(rec, NULL);
}

static unsigned
propose1(struct cluster *c, struct done *d, unsigned slot, Relay__Command *cmd)
{
	fence(cluster_queue(c), cmd);
	ctxs[slot] = (struct pctx){d, slot};
	assert_int_equal(cluster_propose(c, cmd, prop_cb, &ctxs[slot]), 0);
	return 1;
}

struct due_ids {
	char id[64][QUEUE_ID_MAX + 1];
	unsigned n;
};

static int
due_ids_cb(void *arg, const struct queue_msg *m)
{
	struct due_ids *l = arg;
	snprintf(l->id[l->n++], sizeof(l->id[0]), "%s", m->queue_id);
	return 0;
}

/* Keys in one column family of the (closed) store; in the queue CF, the ownership keys
 * (QUEUE_KEY_OWN) are not counted. */
static unsigned
count_keys(struct fx *f, enum store_cf cf)
{
	struct store *s;
	assert_int_equal(store_open(f->db, 1, &s), 0);
	struct store_iter *it;
	assert_int_equal(store_iter_new(s, cf, &it), 0);
	unsigned n = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t kl;
		const unsigned char *k = store_iter_key(it, &kl);
		/* messages: not the ownership keys, not the results (queue id, 0, ...) */
		n += !(cf == STORE_CF_QUEUE && kl && (k[0] == QUEUE_KEY_OWN || memchr(k, 0, kl)));
	}
	store_iter_free(it);
	store_free(s);
	return n;
}

/* Ten messages q0..q9 (two recipients each) and outcomes for them, all through
 * cluster_propose:
 *   q0-q3  both delivered (q3 in two outcomes, the second repeated: a no-op) -> removed
 *   q4     rcpt 0 deferred to T+1h, rcpt 1 delivered                         -> queued, T+1h
 *   q5     both failed with a DSN from <> (q5-dsn)                           -> removed; DSN
 *   q6     deleted by the operator                                           -> removed
 *   q7     rcpt 1 deferred to T+2h                                           -> queued, T
 *   q8, q9 untouched                                                         -> queued, T
 */
static void
test_outcomes_and_reopen(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	unsigned n = propose_range(c, &d, 0, 10, NULL);
	run_until(f, &d.calls, n);
	assert_int_equal(d.ok, 10);

	const uint64_t T = 1700000000000ull;
	const uint32_t r0[] = {0}, r1[] = {1}, r01[] = {0, 1};
	struct obuf o;
	unsigned slot = 10;
	for (unsigned i = 0; i < 3; i++)
		n += propose1(c, &d, slot++,
			      make_outcome(&o, i, RELAY__OUTCOME_KIND__DELIVERED, 0, r01, 2));
	n += propose1(c, &d, slot++, make_outcome(&o, 3, RELAY__OUTCOME_KIND__DELIVERED, 0, r0, 1));
	n += propose1(c, &d, slot++, make_outcome(&o, 3, RELAY__OUTCOME_KIND__DELIVERED, 0, r0, 1));
	n += propose1(c, &d, slot++, make_outcome(&o, 3, RELAY__OUTCOME_KIND__DELIVERED, 0, r1, 1));
	n += propose1(c, &d, slot++,
		      make_outcome(&o, 4, RELAY__OUTCOME_KIND__DEFERRED, T + 3600000, r0, 1));
	n += propose1(c, &d, slot++, make_outcome(&o, 4, RELAY__OUTCOME_KIND__DELIVERED, 0, r1, 1));
	struct cmdbuf dsn;
	make_cmd(&dsn, 5, 300);
	snprintf(dsn.id, sizeof(dsn.id), "q000005-dsn");
	dsn.acc.mail_from = "";
	dsn.acc.n_rcpts = 1;
	dsn.r[0].addr = "sender@example.com";
	make_outcome(&o, 5, RELAY__OUTCOME_KIND__FAILED, 0, r01, 2);
	o.out.dsn = &dsn.acc;
	o.out.dsn_status = "5.1.1";
	n += propose1(c, &d, slot++, &o.cmd);
	free_cmd(&dsn);
	n += propose1(c, &d, slot++, make_delete(&o, 6));
	n += propose1(c, &d, slot++,
		      make_outcome(&o, 7, RELAY__OUTCOME_KIND__DEFERRED, T + 7200000, r1, 1));
	/* an operator's delete of a message that is not there: the proposer is told */
	unsigned missing = slot;
	n += propose1(c, &d, slot++, make_delete(&o, 4242));
	/* an outcome for a message that is gone: a no-op, not an error */
	n += propose1(c, &d, slot++, make_outcome(&o, 0, RELAY__OUTCOME_KIND__FAILED, 0, r0, 1));
	/* an outcome that does not validate never gets into the log */
	make_outcome(&o, 8, RELAY__OUTCOME_KIND__DEFERRED, 0, r0, 1);
	o.out.has_next_attempt_ms = 0;
	assert_int_equal(cluster_propose(c, &o.cmd, prop_cb, &ctxs[slot]), CLUSTER_EINVAL);
	run_until(f, &d.calls, n);
	assert_int_equal(d.ok, n - 1);
	assert_int_equal(d.status[missing], CLUSTER_ENOTFOUND);

	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 10 - 6 + 1); /* q0-q3, q5, q6 gone; q5-dsn in */
	assert_int_equal(st.outcomes_delivered, 4 * 2 + 1);
	assert_int_equal(st.outcomes_deferred, 2);
	assert_int_equal(st.outcomes_failed, 2);
	assert_int_equal(st.deletes, 2);
	assert_int_equal(st.messages_deleted, 6);
	assert_int_equal(st.dsns, 1);
	assert_int_equal(st.rcpts_queued, 1 + 1 + 2 + 2 + 2); /* q4, q5-dsn, q7, q8, q9 */
	assert_int_equal(st.rcpts_delivered, 1);	      /* q4's rcpt 1 */

	struct queue_fsm *q = cluster_queue(c);
	for (unsigned i = 0; i < 7; i++) {
		char id[16];
		snprintf(id, sizeof(id), "q%06u", i);
		assert_true((queue_fsm_lookup(q, id) != NULL) == (i == 4));
	}
	const struct queue_msg *m = queue_fsm_lookup(q, "q000004");
	assert_int_equal(m->next_attempt_ms, T + 3600000);
	assert_int_equal(m->rcpts[0].attempts, 1);
	Relay__QueueRecord *rec;
	assert_int_equal(queue_fsm_read_record(q, "q000005-dsn", &rec), 0);
	assert_string_equal(rec->mail_from, "");
	relay__queue_record__free_unpacked(rec, NULL);
	uint64_t digest = queue_fsm_digest(q);
	uint64_t next_due = queue_fsm_next_due_ms(q);
	assert_int_equal(next_due, T + 5);
	static struct due_ids before, after;
	memset(&before, 0, sizeof(before));
	memset(&after, 0, sizeof(after));
	assert_int_equal(queue_fsm_due(q, UINT64_MAX, due_ids_cb, &before, 64), 5);
	/* due order: the DSN (received T+5), q7, q8, q9 (received T+i), then q4 (T+1h) */
	assert_string_equal(before.id[0], "q000005-dsn");
	assert_string_equal(before.id[1], "q000007");
	assert_string_equal(before.id[2], "q000008");
	assert_string_equal(before.id[3], "q000009");
	assert_string_equal(before.id[4], "q000004");
	close_and_wait(f, c);

	/* the store: one envelope, body and state value per message left */
	assert_int_equal(count_keys(f, STORE_CF_QUEUE), 5);
	assert_int_equal(count_keys(f, STORE_CF_BODY), 5);
	assert_int_equal(count_keys(f, STORE_CF_INDEX), 5);

	/* reopen: the same state, the scheduler's index rebuilt */
	c = open_cluster(f, 0, 0);
	q = cluster_queue(c);
	cluster_stats(c, &st);
	assert_int_equal(st.messages, 5);
	assert_int_equal(st.outcomes_delivered, 0); /* counters are since open */
	assert_int_equal(queue_fsm_digest(q), digest);
	assert_int_equal(queue_fsm_next_due_ms(q), next_due);
	assert_int_equal(queue_fsm_due(q, UINT64_MAX, due_ids_cb, &after, 64), 5);
	assert_memory_equal(&before, &after, sizeof(before));
	assert_int_equal(queue_fsm_read_record(q, "q000004", &rec), 0);
	assert_int_equal(rec->rcpts[0]->attempts, 1);
	assert_string_equal(rec->rcpts[0]->last_reply, "451 4.2.0 greylisted, come back");
	assert_string_equal(rec->rcpts[0]->last_relay, "mx1.example.org[192.0.2.7]:25");
	assert_int_equal(rec->rcpts[1]->state, RELAY__RCPT_STATE__RCPT_DELIVERED);
	relay__queue_record__free_unpacked(rec, NULL);
	void *body;
	size_t blen;
	assert_int_equal(queue_fsm_read_body(q, "q000000", &body, &blen), QUEUE_ENOTFOUND);
	assert_int_equal(queue_fsm_read_body(q, "q000005-dsn", &body, &blen), 0);
	assert_int_equal(blen, 300);
	free(body);
	/* new outcomes continue on the rebuilt index */
	memset(&d, 0, sizeof(d));
	propose1(c, &d, 0, make_outcome(&o, 4, RELAY__OUTCOME_KIND__DELIVERED, 0, r0, 1));
	run_until(f, &d.calls, 1);
	assert_int_equal(d.ok, 1);
	assert_null(queue_fsm_lookup(q, "q000004"));
	assert_int_equal(queue_fsm_next_due_ms(q), next_due);
	close_and_wait(f, c);

	/* the dump shows attempts, next attempt and last reply */
	FILE *fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 0), 0);
	unsigned hits = 0;
	assert_int_equal(
	    count_lines(fp, "rcpt=<postmaster@example.net>:queued attempts=1 next=", &hits), 4);
	assert_int_equal(hits, 1); /* q7 */
	fclose(fp);
	fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 1), 0);
	hits = 0;
	count_lines(fp,
		    "\"attempts\":1,\"next_attempt_ms\":1700007200000,\"last_attempt_ms\":", &hits);
	assert_int_equal(hits, 1);
	hits = 0;
	count_lines(fp, "\"last_reply\":\"451 4.2.0 greylisted, come back\"", &hits);
	assert_int_equal(hits, 1);
	hits = 0;
	count_lines(fp, "{\"queue_id\":\"q000005-dsn\"", &hits);
	assert_int_equal(hits, 1);
	/* every message has a queued recipient: its domain is unowned (no member) */
	hits = 0;
	count_lines(fp, "\"owner\":\"\",\"owner_epoch\":", &hits);
	assert_int_equal(hits, 4);
	hits = 0;
	count_lines(fp, "\"held\":false", &hits);
	assert_int_equal(hits, 4);
	fclose(fp);
}

/* Writes Outcome entries first.. to the log only (a crash after the append, before the apply
 * write). */
static void
write_log_cmds(struct fx *f, uint64_t first, Relay__Command **cmds, unsigned n)
{
	struct store *s;
	assert_int_equal(store_open(f->db, 0, &s), 0);
	struct store_batch b;
	store_batch_init(&b);
	for (unsigned i = 0; i < n; i++) {
		size_t len = relay__command__get_packed_size(cmds[i]);
		uint8_t *buf = malloc(len);
		relay__command__pack(cmds[i], buf);
		struct store_entry e = {.index = first + i,
					.term = 1,
					.type = STORE_ENTRY_NORMAL,
					.data = buf,
					.len = len};
		assert_int_equal(store_log_append(&b, &e), 0);
		free(buf);
	}
	assert_int_equal(store_write(s, &b, 1), 0);
	store_batch_fini(&b);
	store_free(s);
}

static void
test_replay_outcomes(void **state)
{
	struct fx *f = *state;
	struct cluster *c = open_cluster(f, 0, 0);
	static struct done d;
	memset(&d, 0, sizeof(d));
	run_until(f, &d.calls, propose_range(c, &d, 0, 3, NULL));
	/* "crash" after the outcomes of entries 4..6 were appended, before their apply */
	const uint32_t r01[] = {0, 1}, r0[] = {0};
	static struct obuf o[3];
	Relay__Command *cmds[3] = {
	    make_outcome(&o[0], 0, RELAY__OUTCOME_KIND__DELIVERED, 0, r01, 2),
	    make_outcome(&o[1], 1, RELAY__OUTCOME_KIND__DEFERRED, 1800000000000ull, r0, 1),
	    make_outcome(&o[2], 0, RELAY__OUTCOME_KIND__DELIVERED, 0, r01, 2), /* duplicate */
	};
	for (unsigned i = 0; i < 3; i++)
		fence(cluster_queue(c), cmds[i]);
	close_and_wait(f, c);
	write_log_cmds(f, 4, cmds, 3);
	/* the offline dump already shows the result: q0 gone, q1 changed (replayed from the
	 * log, committed: not pending) */
	FILE *fp = tmpfile();
	assert_int_equal(cluster_dump_queue(f->dir, fp, 0), 0);
	unsigned pend = 0, q0 = 0;
	assert_int_equal(count_lines(fp, "pending_apply=1", &pend), 2);
	assert_int_equal(pend, 0);
	count_lines(fp, "q000000", &q0);
	assert_int_equal(q0, 0);
	fclose(fp);

	c = open_cluster(f, 0, 0);
	struct cluster_stats st;
	cluster_stats(c, &st);
	assert_int_equal(st.applied_index, 6);
	assert_int_equal(st.messages, 2);
	assert_int_equal(st.outcomes_delivered, 2);
	assert_int_equal(st.outcomes_deferred, 1);
	assert_int_equal(st.messages_deleted, 1);
	struct queue_fsm *q = cluster_queue(c);
	assert_null(queue_fsm_lookup(q, "q000000"));
	assert_int_equal(queue_fsm_lookup(q, "q000001")->rcpts[0].attempts, 1);
	assert_int_equal(queue_fsm_next_due_ms(q), 1700000000001ull); /* q1's rcpt 1 */
	close_and_wait(f, c);
	assert_int_equal(count_keys(f, STORE_CF_INDEX), 2);
	assert_int_equal(count_keys(f, STORE_CF_BODY), 2);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_group_commit_and_reopen, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_fails_pending, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_before_any_write, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_max_pending, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_proposals, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replay_after_crash, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_log, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_queue_record, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_dump_missing_dir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pipelined_sessions, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_large_queue_startup, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_outcomes_and_reopen, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replay_outcomes, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
