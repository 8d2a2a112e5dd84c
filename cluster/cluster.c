/*
 * cluster.c - the single-node cluster: propose -> group-commit log append (one synced write off
 * the loop thread) -> commit -> apply in log order -> callbacks.  See cluster.h for the contract.
 *
 * Proposals are packed at once and wait on c->waiting.  An idle handle runs the flush at the
 * end of the loop turn: it takes the waiting proposals (up to max_batch_bytes of log), gives
 * them the next log indices and starts ONE uv_queue_work that writes (a) the apply writes of
 * the previous batch, the applied index and the deletion of the log entries they applied, in
 * one atomic write WITHOUT the WAL (STORE_WRITE_NOWAL: the body is in the entry's WAL record
 * already, and is not written a second time), then (b) the new log entries, in one atomic
 * write with the WAL, synced.  At most one write is in flight; proposals arriving meanwhile
 * wait for the next one.  When the write completes (loop thread), the entries are committed
 * (one voter), applied in order (queue_apply into c->apply, written by the next write), and
 * their callbacks run.
 *
 * Why this is safe: the apply writes of entry i always travel in a write after the one that
 * made entry i durable.  After a crash the store holds a prefix of the NOWAL writes (atomic
 * flushes, store.h) and every synced log append; the applied index and the log deletions
 * travel in the same atomic NOWAL write as the apply writes, so the store holds either the
 * applied state for i, or entry i still in the log after the stored applied index, and
 * cluster_open replays it (no entry is applied twice to the stored state).  The log is
 * bounded: the entries applied are deleted in the write that records their applied state.
 *
 * Failure modes: a failed write fails its proposals with CLUSTER_EIO, leaves last_index where it
 * was, and keeps the pending apply writes for the next write (they are idempotent).  An
 * allocation failure while applying stops the node from accepting proposals (the entries stay
 * in the log and are replayed at the next open).  Corrupt data at open: CLUSTER_ECORRUPT and a
 * log line naming what is damaged.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cluster.h"
#include "cluster_int.h"
#include "cluster_raft.h"
#include "cluster_util.h"
#include "queue_fsm.h"
#include "store.h"

/* The term of every entry while there is one voter (raft replaces this). */
#define CLUSTER__TERM 1
/* Bound on the path of the database directory. */
/* Bytes a log entry adds to its data in a batch (record and entry headers, key). */
#define CLUSTER__ENTRY_OVERHEAD 64

struct cluster__prop {
	struct cluster__prop *next;
	cluster_propose_cb cb;
	void *arg;
	int status;
	size_t len;
	unsigned char data[]; /* packed Relay__Command */
};

struct cluster__fifo {
	struct cluster__prop *head, *tail;
	size_t n;
};

struct cluster {
	struct cluster__raft *raft; /* owned; replicated mode (cluster_raft.c), else NULL */
	void (*raft_done)(void *arg);
	void *raft_done_arg;
	uv_loop_t *loop;       /* borrowed */
	struct store *store;   /* owned */
	struct queue_fsm *fsm; /* owned */
	unsigned max_pending;
	size_t max_batch_bytes;

	struct cluster__fifo waiting;  /* proposed, not in a write yet */
	struct cluster__fifo inflight; /* in the write in flight */

	uv_idle_t flush; /* the end-of-turn flush; closed at teardown */
	uv_work_t work;
	int writing;		   /* a uv_queue_work is in flight */
	int write_sync;		   /* the write in flight appends to the log */
	int write_rv;		   /* its result, set by the worker */
	uint64_t wstart_ns;	   /* uv_hrtime when it was handed to the worker */
	uint64_t wdisk_ns;	   /* its storage time, set by the worker */
	int state_rv;		   /* the result of its NOWAL part (0 when wbatch failed after) */
	struct store_batch wstate; /* the write in flight: apply writes (NOWAL, first) */
	struct store_batch wbatch; /* the write in flight: log appends (WAL, synced, second) */
	uint64_t wbatch_applied;   /* the apply writes in wstate are those up to this index */
	uint64_t wbytes;	   /* log bytes of the write in flight */
	struct store_batch apply;  /* apply writes not yet written */

	uint64_t last_index;	/* last index durable in the log */
	uint64_t applied_index; /* last index applied (in memory) */
	uint64_t deleted_index; /* log entries <= this are deleted or in c->apply's deletes */
	int failed;		/* sticky: apply could not proceed (CLUSTER_ENOMEM) */
	int closing;
	int close_started;
	void (*close_done)(void *arg);
	void *close_arg;
	struct cluster_stats stats;
};

static void
cluster__fifo_push(struct cluster__fifo *f, struct cluster__prop *p)
{
	p->next = NULL;
	if (f->tail)
		f->tail->next = p;
	else
		f->head = p;
	f->tail = p;
	f->n++;
}

static struct cluster__prop *
cluster__fifo_pop(struct cluster__fifo *f)
{
	struct cluster__prop *p = f->head;
	if (p) {
		f->head = p->next;
		if (!f->head)
			f->tail = NULL;
		f->n--;
	}
	return p;
}

/* Runs the callbacks of a detached list in order and frees it.  A callback may propose or
 * close; the list is no longer reachable from c, so neither disturbs this walk. */
static void
cluster__complete(struct cluster *c, struct cluster__fifo *done)
{
	struct cluster__prop *p;
	while ((p = cluster__fifo_pop(done))) {
		if (p->status)
			c->stats.failed_proposals++;
		p->cb(p->arg, p->status);
		free(p);
	}
}

/* ---- apply ---- */

/* Applies one committed entry at index.  Returns the proposer's status: 0, or CLUSTER_EINVAL
 * for a command the state machine rejects (deterministic, the entry counts as applied), or
 * CLUSTER_ENOMEM / CLUSTER_ECORRUPT (nothing applied; the caller stops). */
static int
cluster__apply_entry(struct cluster *c, uint64_t index, enum store_entry_type type,
		     const unsigned char *data, size_t len, int replay)
{
	int status = 0;
	if (type == STORE_ENTRY_NORMAL) {
		Relay__Command *cmd = relay__command__unpack(NULL, len, data);
		if (!cmd) /* we packed it: live, only ENOMEM; from disk, damage */
			return replay ? CLUSTER_ECORRUPT : CLUSTER_ENOMEM;
		int rv = queue_apply(c->fsm, index, cmd, &c->apply);
		relay__command__free_unpacked(cmd, NULL);
		if (rv == QUEUE_ENOMEM)
			return CLUSTER_ENOMEM;
		if (rv) {
			cluster__log("index=%" PRIu64 " apply rejected error=\"%s\"", index,
				     queue_strerror(rv));
			status = cluster__queue_err(rv);
		}
	}
	c->applied_index = index;
	c->stats.commits++;
	return status;
}

/* Adds the applied index and the deletion of the applied log entries to c->apply. */
static int
cluster__apply_finish(struct cluster *c)
{
	size_t len = c->apply.len;
	unsigned count = c->apply.count;
	int rv = store_applied_put(&c->apply, c->applied_index);
	if (!rv && c->applied_index > c->deleted_index)
		rv = store_log_delete(&c->apply, c->deleted_index + 1, c->applied_index);
	if (rv) {
		c->apply.len = len;
		c->apply.count = count;
		return cluster__store_err(rv);
	}
	c->deleted_index = c->applied_index;
	return 0;
}

/* ---- the write path ---- */

static void
cluster__work_cb(uv_work_t *req)
{
	struct cluster *c = req->data;
	uint64_t t0 = uv_hrtime();
	c->write_rv = c->state_rv = 0;
	if (c->wstate.len)
		c->write_rv = c->state_rv = store_write(c->store, &c->wstate, STORE_WRITE_NOWAL);
	if (!c->write_rv && c->wbatch.len)
		c->write_rv = store_write(c->store, &c->wbatch, c->write_sync);
	c->wdisk_ns = uv_hrtime() - t0;
}

static void cluster__start_close(struct cluster *c);
static void cluster__flush_cb(uv_idle_t *h);

static void
cluster__after_work_cb(uv_work_t *req, int status)
{
	struct cluster *c = req->data;
	int rv = status ? CLUSTER_EIO : cluster__store_err(c->write_rv);
	if (!rv && c->write_sync) {
		cluster__hist_add(&c->stats.write_disk, c->wdisk_ns / 1000);
		cluster__hist_add(&c->stats.write_turn, (uv_hrtime() - c->wstart_ns) / 1000);
	}
	int state_failed = status || c->state_rv;
	struct cluster__fifo done = c->inflight;
	memset(&c->inflight, 0, sizeof(c->inflight));
	c->writing = 0;

	if (c->write_sync)
		c->stats.fsyncs++;
	if (rv) {
		cluster__log("write failed entries=%zu error=\"%s\"", done.n, cluster_strerror(rv));
		c->stats.failures++;
		/* drop the log appends; keep the apply writes for the next write unless they
		 * were written (then the log append after them failed) */
		store_batch_clear(&c->wbatch);
		if (state_failed) {
			struct store_batch t = c->apply;
			c->apply = c->wstate;
			c->wstate = t;
		} else
			queue_fsm_written(c->fsm, c->wbatch_applied);
		store_batch_clear(&c->wstate);
		for (struct cluster__prop *p = done.head; p; p = p->next)
			p->status = CLUSTER_EIO;
	} else {
		store_batch_clear(&c->wbatch);
		store_batch_clear(&c->wstate);
		/* the state machine's values up to there are in the store (its overlay lets go) */
		queue_fsm_written(c->fsm, c->wbatch_applied);
		if (c->write_sync) {
			c->stats.batches++;
			c->stats.bytes += c->wbytes;
		}
		c->last_index += done.n;
		c->stats.last_index = c->last_index;
		/* commit (one voter: durable here is committed) and apply in log order */
		uint64_t index = c->last_index - done.n;
		for (struct cluster__prop *p = done.head; p; p = p->next) {
			index++;
			if (c->failed) {
				p->status = c->failed;
				continue;
			}
			p->status =
			    cluster__apply_entry(c, index, STORE_ENTRY_NORMAL, p->data, p->len, 0);
			if (p->status == CLUSTER_ENOMEM || p->status == CLUSTER_ECORRUPT) {
				cluster__log("index=%" PRIu64
					     " apply stopped error=\"%s\"; restart to "
					     "replay",
					     index, cluster_strerror(p->status));
				c->failed = p->status;
			}
		}
		if (done.n && !c->failed) {
			int frv = cluster__apply_finish(c);
			if (frv) {
				cluster__log("apply state not recorded error=\"%s\"",
					     cluster_strerror(frv));
				c->failed = frv;
			}
		}
	}
	c->stats.applied_index = c->applied_index;
	cluster__complete(c, &done);

	if (c->closing) {
		if (!c->close_started)
			cluster__start_close(c);
		return;
	}
	/* after a failed write only new proposals start the next one (no retry loop on a dead
	 * disk); they carry the kept apply writes with them */
	if (c->waiting.n || (!rv && c->apply.len))
		uv_idle_start(&c->flush, cluster__flush_cb);
}

static void
cluster__flush_cb(uv_idle_t *h)
{
	struct cluster *c = h->data;
	uv_idle_stop(h);
	if (c->writing || c->closing)
		return;

	/* the pending apply writes go first in the write (its NOWAL part) */
	struct store_batch t = c->wstate;
	c->wstate = c->apply;
	c->apply = t;
	store_batch_clear(&c->apply);
	store_batch_clear(&c->wbatch);
	c->wbatch_applied = c->applied_index;

	struct cluster__fifo failed = {0};
	uint64_t bytes = 0;
	while (c->failed && c->waiting.head) {
		/* apply has stopped: do not make more entries durable that would only apply at the
		 * next open after their proposers were told they failed */
		struct cluster__prop *p = cluster__fifo_pop(&c->waiting);
		p->status = c->failed;
		cluster__fifo_push(&failed, p);
	}
	while (c->waiting.head) {
		struct cluster__prop *p = c->waiting.head;
		if (c->inflight.n && bytes + p->len + CLUSTER__ENTRY_OVERHEAD > c->max_batch_bytes)
			break;
		struct store_entry e = {
		    .index = c->last_index + c->inflight.n + 1,
		    .term = CLUSTER__TERM,
		    .type = STORE_ENTRY_NORMAL,
		    .data = p->data,
		    .len = p->len,
		};
		int rv = store_log_append(&c->wbatch, &e);
		if (rv) {
			if (c->inflight.n)
				break; /* try it again in the next write */
			cluster__fifo_pop(&c->waiting);
			p->status = cluster__store_err(rv);
			cluster__fifo_push(&failed, p);
			continue;
		}
		cluster__fifo_pop(&c->waiting);
		cluster__fifo_push(&c->inflight, p);
		bytes += p->len + CLUSTER__ENTRY_OVERHEAD;
	}

	if (c->wbatch.len || c->wstate.len) {
		c->write_sync = c->inflight.n > 0;
		c->wbytes = bytes;
		c->writing = 1;
		c->wstart_ns = uv_hrtime();
		int rv = uv_queue_work(c->loop, &c->work, cluster__work_cb, cluster__after_work_cb);
		if (rv) {
			cluster__log("uv_queue_work error=\"%s\"", uv_strerror(rv));
			/* undo: the proposals fail now (we are in a loop callback, not in propose)
			 */
			c->writing = 0;
			struct store_batch t2 = c->apply;
			c->apply = c->wstate;
			c->wstate = t2;
			store_batch_clear(&c->wstate);
			store_batch_clear(&c->wbatch);
			struct cluster__prop *p;
			while ((p = cluster__fifo_pop(&c->inflight))) {
				p->status = CLUSTER_EIO;
				cluster__fifo_push(&failed, p);
			}
			c->stats.failures++;
		}
	} else {
		/* nothing to write: put the (empty) apply buffer back */
		t = c->wstate;
		c->wstate = c->apply;
		c->apply = t;
	}
	cluster__complete(c, &failed);
	/* after a failure to start the write, the next proposal retries (no busy loop) */
	if (!c->writing && !c->closing && c->waiting.n && !failed.n)
		uv_idle_start(&c->flush, cluster__flush_cb);
}

int
cluster_propose(struct cluster *c, const Relay__Command *cmd, cluster_propose_cb cb, void *arg)
{
	int rv;
	if (!c || !cmd || !cb)
		return CLUSTER_EINVAL;
	if (c->raft)
		return cluster__raft_propose(c->raft, cmd, cb, arg);
	if (c->closing) {
		rv = CLUSTER_ECLOSED;
		goto err;
	}
	if (c->failed) {
		rv = c->failed;
		goto err;
	}
	if (queue_validate(cmd)) {
		rv = CLUSTER_EINVAL;
		goto err;
	}
	if (c->waiting.n + c->inflight.n >= c->max_pending) {
		rv = CLUSTER_EBUSY;
		goto err;
	}
	size_t len = relay__command__get_packed_size(cmd);
	if (len + CLUSTER__ENTRY_OVERHEAD > c->max_batch_bytes) {
		rv = CLUSTER_ETOOBIG;
		goto err;
	}
	struct cluster__prop *p = malloc(sizeof(*p) + len);
	if (!p) {
		rv = CLUSTER_ENOMEM;
		goto err;
	}
	p->cb = cb;
	p->arg = arg;
	p->status = 0;
	p->len = relay__command__pack(cmd, p->data);
	cluster__fifo_push(&c->waiting, p);
	c->stats.proposals++;
	if (!c->writing)
		uv_idle_start(&c->flush, cluster__flush_cb);
	return 0;
err:
	if (c)
		c->stats.rejected++;
	return rv;
}

/* ---- close ---- */

static void
cluster__free(struct cluster *c)
{
	queue_fsm_free(c->fsm);
	store_free(c->store);
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->wstate);
	store_batch_fini(&c->apply);
	free(c);
}

static void
cluster__closed_cb(uv_handle_t *h)
{
	struct cluster *c = h->data;
	struct cluster__fifo done = c->waiting;
	memset(&c->waiting, 0, sizeof(c->waiting));
	for (struct cluster__prop *p = done.head; p; p = p->next)
		p->status = CLUSTER_ECLOSED;
	cluster__complete(c, &done);
	/* Persist the applied state now rather than replaying it at the next open. */
	if (c->apply.len) {
		int rv = store_write(c->store, &c->apply, STORE_WRITE_NOWAL);
		if (rv)
			cluster__log(
			    "close: apply state not written error=\"%s\"; replayed at open",
			    store_strerror(rv));
	}
	void (*done_cb)(void *) = c->close_done;
	void *arg = c->close_arg;
	cluster__free(c);
	if (done_cb)
		done_cb(arg);
}

static void
cluster__start_close(struct cluster *c)
{
	c->close_started = 1;
	c->flush.data = c;
	uv_close((uv_handle_t *)&c->flush, cluster__closed_cb);
}

static void
cluster__raft_closed(void *arg)
{
	struct cluster *c = arg;
	void (*done)(void *) = c->raft_done;
	void *darg = c->raft_done_arg;
	free(c);
	if (done)
		done(darg);
}

void
cluster_close(struct cluster *c, void (*done)(void *arg), void *arg)
{
	if (!c || c->closing)
		return;
	if (c->raft) {
		c->closing = 1;
		c->raft_done = done;
		c->raft_done_arg = arg;
		cluster__raft_close(c->raft, cluster__raft_closed, c);
		return;
	}
	c->closing = 1;
	c->close_done = done;
	c->close_arg = arg;
	uv_idle_stop(&c->flush);
	if (!c->writing)
		cluster__start_close(c);
	/* else cluster__after_work_cb starts it when the write completes */
}

/* ---- open and replay ---- */

/* Replays the log entries after the applied index into the state machine and records the
 * result.  Entries at or before it (applied, deletion not persisted) are deleted. */
static int
cluster__replay(struct cluster *c)
{
	uint64_t applied, first, last;
	int rv = store_applied_get(c->store, &applied);
	if (!rv)
		rv = store_log_bounds(c->store, &first, &last);
	if (rv) {
		cluster__log("open: reading the log bounds error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	c->applied_index = applied;
	c->deleted_index = first ? first - 1 : applied;
	if (c->deleted_index > applied)
		c->deleted_index = applied; /* entries [applied+1, first) are missing: gap below */
	c->last_index = last > applied ? last : applied;
	if (last > applied && first > applied + 1) {
		cluster__log("open: log gap applied=%" PRIu64 " first=%" PRIu64, applied, first);
		return CLUSTER_ECORRUPT;
	}

	struct store_iter *it;
	rv = store_iter_new(c->store, STORE_CF_LOG, &it);
	if (rv)
		return cluster__store_err(rv);
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(applied + 1, key);
	uint64_t replayed = 0;
	for (store_iter_seek(it, key, sizeof(key)); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		struct store_entry e;
		rv = store_entry_decode(k, klen, v, vlen, &e);
		if (rv) {
			cluster__log("open: corrupt log entry after index=%" PRIu64,
				     c->applied_index);
			rv = CLUSTER_ECORRUPT;
			goto out;
		}
		if (e.index != c->applied_index + 1) {
			cluster__log("open: log gap index=%" PRIu64 " expected=%" PRIu64, e.index,
				     c->applied_index + 1);
			rv = CLUSTER_ECORRUPT;
			goto out;
		}
		rv = cluster__apply_entry(c, e.index, e.type, e.data, e.len, 1);
		if (rv == CLUSTER_ENOMEM || rv == CLUSTER_ECORRUPT) {
			cluster__log("open: replay index=%" PRIu64 " error=\"%s\"", e.index,
				     cluster_strerror(rv));
			goto out;
		}
		replayed++;
		/* bound the replay batch: write it out in pieces */
		if (c->apply.len >= c->max_batch_bytes) {
			if ((rv = cluster__apply_finish(c)) ||
			    (rv = cluster__store_err(
				 store_write(c->store, &c->apply, STORE_WRITE_NOWAL))))
				goto out;
			store_batch_clear(&c->apply);
		}
	}
	rv = cluster__store_err(store_iter_status(it));
	if (rv)
		goto out;
	if ((rv = cluster__apply_finish(c)) ||
	    (rv = cluster__store_err(store_write(c->store, &c->apply, STORE_WRITE_NOWAL))))
		goto out;
	store_batch_clear(&c->apply);
	if (replayed)
		cluster__log("open: replayed entries=%" PRIu64 " applied=%" PRIu64, replayed,
			     c->applied_index);
out:
	store_iter_free(it);
	return rv;
}

/* Records term and vote (and this node as the single voter) when the store is new. */
static int
cluster__init_meta(struct cluster *c, const char *node_id)
{
	struct store_hardstate hs;
	int rv = store_hardstate_get(c->store, &hs);
	if (rv == 0)
		return 0;
	if (rv != STORE_ENOTFOUND) {
		cluster__log("open: hard state error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	memset(&hs, 0, sizeof(hs));
	hs.term = CLUSTER__TERM;
	size_t n = strlen(node_id);
	memcpy(hs.vote, node_id, n + 1);
	struct store_batch b;
	store_batch_init(&b);
	rv = store_hardstate_put(&b, &hs);
	if (!rv)
		rv = store_batch_put(&b, STORE_CF_META, STORE_META_CONFIG,
				     sizeof(STORE_META_CONFIG) - 1, node_id, n);
	if (!rv)
		rv = store_write(c->store, &b, 1);
	store_batch_fini(&b);
	return cluster__store_err(rv);
}

int
cluster_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster **out)
{
	char path[CLUSTER__PATH_MAX];
	if (!loop || !cfg || !out || !cfg->node_id || !*cfg->node_id ||
	    strlen(cfg->node_id) > STORE_VOTE_MAX)
		return CLUSTER_EINVAL;
	int rv = cluster__db_path(cfg->data_dir, path, sizeof(path));
	if (rv)
		return rv;
	if ((rv = cluster__mkdirs(cfg->data_dir)))
		return rv;
	struct cluster *c = calloc(1, sizeof(*c));
	if (!c)
		return CLUSTER_ENOMEM;
	if (cluster__raft_wanted(cfg)) {
		c->loop = loop;
		if ((rv = cluster__raft_open(loop, cfg, &c->raft))) {
			free(c);
			return rv;
		}
		*out = c;
		return 0;
	}
	c->loop = loop;
	c->max_pending = cfg->max_pending ? cfg->max_pending : CLUSTER_DEFAULT_MAX_PENDING;
	c->max_batch_bytes =
	    cfg->max_batch_bytes ? cfg->max_batch_bytes : CLUSTER_DEFAULT_MAX_BATCH_BYTES;
	if (c->max_batch_bytes > STORE_BATCH_MAX / 2)
		c->max_batch_bytes = STORE_BATCH_MAX / 2;
	store_batch_init(&c->wbatch);
	store_batch_init(&c->wstate);
	store_batch_init(&c->apply);
	c->work.data = c;

	uint64_t t0 = uv_hrtime();
	if ((rv = store_open(path, 0, &c->store))) {
		rv = cluster__store_err(rv);
		goto err_after_alloc;
	}
	uint64_t t1 = uv_hrtime();
	if ((rv = cluster__init_meta(c, cfg->node_id)))
		goto err_after_store;
	if ((rv = queue_fsm_new(c->store, &c->fsm))) {
		cluster__log("open: loading the queue error=\"%s\"", queue_strerror(rv));
		rv = cluster__queue_err(rv);
		goto err_after_store;
	}
	struct queue_counts qc;
	queue_fsm_counts(c->fsm, &qc);
	cluster__log("open: event=queue-loaded messages=%" PRIu64 " store_ms=%" PRIu64
		     " load_ms=%" PRIu64,
		     qc.messages, (t1 - t0) / 1000000, (uv_hrtime() - t1) / 1000000);
	if ((rv = cluster__replay(c)))
		goto err_after_fsm;
	c->stats.applied_index = c->applied_index;
	c->stats.last_index = c->last_index;
	if ((rv = uv_idle_init(loop, &c->flush))) {
		rv = CLUSTER_EIO;
		goto err_after_fsm;
	}
	c->flush.data = c;
	*out = c;
	return 0;
err_after_fsm:
	queue_fsm_free(c->fsm);
err_after_store:
	store_free(c->store);
err_after_alloc:
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->wstate);
	store_batch_fini(&c->apply);
	free(c);
	return rv;
}

/* ---- stats and accessors ---- */

void
cluster_stats(struct cluster *c, struct cluster_stats *st)
{
	if (c->raft) {
		cluster__raft_stats(c->raft, st);
		return;
	}
	*st = c->stats;
	st->applied_index = c->applied_index;
	st->last_index = c->last_index;
	st->pending = c->waiting.n + c->inflight.n;
	cluster__queue_stats(c->fsm, st);
}

void
cluster_status(struct cluster *c, struct cluster_status *st)
{
	if (c->raft) {
		cluster__raft_status(c->raft, st);
		return;
	}
	memset(st, 0, sizeof(*st));
	st->role = "leader";
	st->term = CLUSTER__TERM;
	st->commit_index = st->applied_index = c->applied_index;
	st->last_index = c->last_index;
}

struct queue_fsm *
cluster_queue(struct cluster *c)
{
	return c->raft ? cluster__raft_queue(c->raft) : c->fsm;
}

int
cluster_member_add(struct cluster *c, const char *id, const char *addr, cluster_propose_cb cb,
		   void *arg)
{
	if (!c->raft)
		return CLUSTER_ESINGLE;
	return cluster__raft_member_add(c->raft, id, addr, cb, arg);
}

int
cluster_member_remove(struct cluster *c, const char *id, cluster_propose_cb cb, void *arg)
{
	if (!c->raft)
		return CLUSTER_ESINGLE;
	return cluster__raft_member_remove(c->raft, id, cb, arg);
}

int
cluster_transfer_leader(struct cluster *c, const char *target, const char *from_leader)
{
	if (!c->raft)
		return CLUSTER_ESINGLE;
	return cluster__raft_transfer_leader(c->raft, target, from_leader);
}

/* ---- the offline dump ---- */

static const char *
cluster__state_name(unsigned s)
{
	static const char *const names[QUEUE_RCPT_STATES] = {"queued", "delivered", "failed",
							     "deleted"};
	return s < QUEUE_RCPT_STATES ? names[s] : "unknown";
}

/* Writes s with anything outside printable ASCII (and the quote and backslash) escaped: JSON
 * string escapes in JSON mode, \xNN otherwise.  Bytes >= 0x80 (SMTPUTF8) pass through in JSON. */
static void
cluster__put_str(FILE *out, const char *s, int json)
{
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (json) {
			if (*p == '"' || *p == '\\')
				fprintf(out, "\\%c", *p);
			else if (*p < 0x20 || *p == 0x7f)
				fprintf(out, "\\u%04x", *p);
			else
				fputc(*p, out);
		} else if (*p <= 0x20 || *p >= 0x7f || *p == '\\' || *p == '"') {
			fprintf(out, "\\x%02x", *p);
		} else {
			fputc(*p, out);
		}
	}
}

static void
cluster__put_time(FILE *out, uint64_t ms)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	char buf[64];
	if (gmtime_r(&t, &tm) && strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm))
		fprintf(out, "%s.%03uZ", buf, (unsigned)(ms % 1000));
	else
		fprintf(out, "%" PRIu64, ms);
}

/* Gives a domain's owner and epoch (0) or QUEUE_ENOTFOUND: the state machine's, or the
 * store's when streaming. */
typedef int (*cluster__owner_fn)(void *ctx, const char *domain, char *owner, uint64_t *epoch);

static int
cluster__fsm_owner(void *ctx, const char *domain, char *owner, uint64_t *epoch)
{
	return queue_fsm_domain_owner(ctx, domain, owner, epoch);
}

static int
cluster__store_owner(void *ctx, const char *domain, char *owner, uint64_t *epoch)
{
	return queue_store_domain_owner(ctx, domain, owner, epoch);
}

/* The dump of one record; owner_of gives each queued recipient's domain owner and epoch. */
static void
cluster__dump_record(FILE *out, const Relay__QueueRecord *r, int json, int pending,
		     cluster__owner_fn owner_of, void *owner_ctx)
{
	if (json) {
		fputs("{\"queue_id\":\"", out);
		cluster__put_str(out, r->queue_id, 1);
		fprintf(out, "\",\"received_ms\":%" PRIu64 ",\"received\":\"", r->received_ms);
		cluster__put_time(out, r->received_ms);
		fprintf(out, "\",\"size\":%" PRIu64 ",\"from\":\"", r->size);
		cluster__put_str(out, r->mail_from, 1);
		fputs("\",\"rcpts\":[", out);
		for (size_t i = 0; i < r->n_rcpts; i++) {
			const Relay__QueueRcpt *q = r->rcpts[i];
			fputs(i ? ",{\"addr\":\"" : "{\"addr\":\"", out);
			cluster__put_str(out, q->rcpt ? q->rcpt->addr : "", 1);
			fprintf(out,
				"\",\"state\":\"%s\",\"attempts\":%u,\"next_attempt_ms\":%" PRIu64,
				cluster__state_name(q->state), q->attempts, q->next_attempt_ms);
			if (q->has_last_attempt_ms)
				fprintf(out, ",\"last_attempt_ms\":%" PRIu64, q->last_attempt_ms);
			if (q->has_delay_notified)
				fprintf(out, ",\"delay_notified\":%s",
					q->delay_notified ? "true" : "false");
			if (q->has_epoch)
				fprintf(out, ",\"epoch\":%" PRIu64, q->epoch);
			char dom[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
			uint64_t depoch;
			if (q->rcpt && q->state == RELAY__RCPT_STATE__RCPT_QUEUED) {
				queue_addr_domain(q->rcpt->addr, dom);
				if (!owner_of(owner_ctx, dom, owner, &depoch)) {
					fputs(",\"owner\":\"", out);
					cluster__put_str(out, owner, 1);
					fprintf(out, "\",\"owner_epoch\":%" PRIu64, depoch);
				}
			}
			if (q->rcpt && q->rcpt->has_notify)
				fprintf(out, ",\"notify\":%u", q->rcpt->notify);
			if (q->rcpt && q->rcpt->orcpt) {
				fputs(",\"orcpt\":\"", out);
				cluster__put_str(out, q->rcpt->orcpt, 1);
				fputc('"', out);
			}
			if (q->last_reply) {
				fputs(",\"last_reply\":\"", out);
				cluster__put_str(out, q->last_reply, 1);
				fputc('"', out);
			}
			if (q->last_relay) {
				fputs(",\"last_relay\":\"", out);
				cluster__put_str(out, q->last_relay, 1);
				fputc('"', out);
			}
			if (q->last_dsn_status) {
				fputs(",\"dsn_status\":\"", out);
				cluster__put_str(out, q->last_dsn_status, 1);
				fputc('"', out);
			}
			fputc('}', out);
		}
		fputc(']', out);
		if (r->has_ret)
			fprintf(out, ",\"ret\":%u", r->ret);
		if (r->envid) {
			fputs(",\"envid\":\"", out);
			cluster__put_str(out, r->envid, 1);
			fputc('"', out);
		}
		if (r->has_smtputf8)
			fprintf(out, ",\"smtputf8\":%s", r->smtputf8 ? "true" : "false");
		if (r->has_body_type)
			fprintf(out, ",\"body_type\":%u", r->body_type);
		if (r->client_addr) {
			fputs(",\"client_addr\":\"", out);
			cluster__put_str(out, r->client_addr, 1);
			fputc('"', out);
		}
		if (r->node_id) {
			fputs(",\"node_id\":\"", out);
			cluster__put_str(out, r->node_id, 1);
			fputc('"', out);
		}
		if (r->has_next_attempt_ms)
			fprintf(out, ",\"next_attempt_ms\":%" PRIu64, r->next_attempt_ms);
		if (r->has_update_index)
			fprintf(out, ",\"update_index\":%" PRIu64, r->update_index);
		fprintf(out, ",\"accept_index\":%" PRIu64 ",\"held\":%s,\"pending_apply\":%s}\n",
			r->accept_index, r->has_held && r->held ? "true" : "false",
			pending ? "true" : "false");
		return;
	}
	cluster__put_str(out, r->queue_id, 0);
	fputs(" received=", out);
	cluster__put_time(out, r->received_ms);
	fprintf(out, " size=%" PRIu64 " from=<", r->size);
	cluster__put_str(out, r->mail_from, 0);
	fputc('>', out);
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const Relay__QueueRcpt *q = r->rcpts[i];
		fputs(" rcpt=<", out);
		cluster__put_str(out, q->rcpt ? q->rcpt->addr : "", 0);
		fprintf(out, ">:%s", cluster__state_name(q->state));
		if (q->attempts)
			fprintf(out, " attempts=%u", q->attempts);
		if (q->attempts && q->state == RELAY__RCPT_STATE__RCPT_QUEUED) {
			fputs(" next=", out);
			cluster__put_time(out, q->next_attempt_ms);
		}
		if (q->last_relay && *q->last_relay) {
			fputs(" relay=", out);
			cluster__put_str(out, q->last_relay, 0);
		}
		if (q->last_reply) {
			fputs(" reply=", out);
			cluster__put_str(out, q->last_reply, 0);
		}
	}
	if (r->has_held && r->held)
		fputs(" held=1", out);
	if (pending)
		fputs(" pending_apply=1", out);
	fputc('\n', out);
}

/* Streams the queue as stored, in queue id order (constant memory). */
struct cluster__dump_ctx {
	FILE *out;
	int json;
	struct store *s;
};

static int
cluster__dump_cb(void *arg, Relay__QueueRecord *r)
{
	struct cluster__dump_ctx *d = arg;
	cluster__dump_record(d->out, r, d->json, 0, cluster__store_owner, d->s);
	return 0;
}

static int
cluster__dump_stream(struct store *s, FILE *out, int json, int *bad)
{
	struct cluster__dump_ctx d = {out, json, s};
	int rv = queue_store_stream(s, cluster__dump_cb, &d, bad);
	if (*bad)
		cluster__log("dump: damaged queue records skipped or shown in part");
	return cluster__queue_err(rv);
}

/* The log entries after the applied index (a crash before their apply was written): how many,
 * and whether one is damaged. */
static int
cluster__dump_pending(struct store *s, uint64_t applied, uint64_t *n, int *bad)
{
	struct store_iter *it;
	*n = 0;
	int rv = store_iter_new(s, STORE_CF_LOG, &it);
	if (rv)
		return cluster__store_err(rv);
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(applied + 1, key);
	for (store_iter_seek(it, key, sizeof(key)); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		struct store_entry e;
		if (store_entry_decode(k, klen, v, vlen, &e)) {
			cluster__log("dump: corrupt log entry");
			*bad = 1;
			break;
		}
		*n += e.type == STORE_ENTRY_NORMAL;
	}
	rv = cluster__store_err(store_iter_status(it));
	store_iter_free(it);
	return rv;
}

int
cluster_dump_queue(const char *data_dir, FILE *out, int json)
{
	char path[CLUSTER__PATH_MAX];
	struct stat sb;
	int rv = cluster__db_path(data_dir, path, sizeof(path));
	if (rv || !out)
		return CLUSTER_EINVAL;
	if (stat(path, &sb)) {
		cluster__log("dump: no queue at path=%s error=\"%s\"", path, strerror(errno));
		return CLUSTER_ENOTFOUND;
	}
	struct store *s;
	if ((rv = store_open(path, 1, &s)))
		return cluster__store_err(rv);
	struct queue_fsm *fsm = NULL;
	struct store_iter *it = NULL;
	struct store_batch b;
	store_batch_init(&b);
	int bad = 0;
	uint64_t applied;
	if ((rv = cluster__store_err(store_applied_get(s, &applied))))
		goto out;
	void *mark;
	size_t marklen;
	if (store_get(s, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1, &mark,
		      &marklen) == 0) {
		/* a snapshot install did not complete: the queue CFs hold a partial copy */
		free(mark);
		cluster__log("dump: event=snapshot-incomplete: the queue in %s is a partial "
			     "snapshot copy; the node wipes it and fetches the snapshot again when "
			     "it starts",
			     path);
		rv = CLUSTER_ECORRUPT;
		goto out;
	}

	/* 1. nothing after the applied index (a clean stop, or a node that wrote its last
	 * applies): the store is the queue, streamed with constant memory */
	uint64_t npending = 0;
	if ((rv = cluster__dump_pending(s, applied, &npending, &bad)))
		goto out;
	if (!npending) {
		rv = cluster__dump_stream(s, out, json, &bad);
		goto out;
	}

	/* What is known committed: a replicated node's hard state records its commit index (its
	 * applied state on disk may lag far behind it: STORE_WRITE_NOWAL, written by flushes), a
	 * single node's log holds only committed entries (durable is committed with one voter).
	 * Records changed by entries past it are shown pending_apply: in the log, not known
	 * committed (a minority's proposals, or a tail the next leader may replace). */
	uint64_t committed = applied, hc;
	int crv = cluster__raft_stored_commit(s, &hc);
	if (crv == 0 && hc > committed)
		committed = hc;
	else if (crv == STORE_ENOTFOUND)
		committed = UINT64_MAX;
	else if (crv) {
		rv = cluster__store_err(crv);
		goto out;
	}

	/* 2. entries still in the log after the applied index go through a state machine loaded
	 * as cluster_open does (its scheduling state only: records stay in the store) and its
	 * writes are dropped, so duplicates and rejected commands count exactly as at the next
	 * open; a store it cannot load is streamed as stored */
	if ((rv = queue_fsm_new(s, &fsm))) {
		if (rv != QUEUE_ECORRUPT) {
			rv = cluster__queue_err(rv);
			goto out;
		}
		fsm = NULL;
		bad = 1;
		rv = cluster__dump_stream(s, out, json, &bad);
		goto out;
	}
	if ((rv = store_iter_new(s, STORE_CF_LOG, &it))) {
		rv = cluster__store_err(rv);
		goto out;
	}
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(applied + 1, key);
	for (store_iter_seek(it, key, sizeof(key)); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		struct store_entry e;
		if (store_entry_decode(k, klen, v, vlen, &e)) {
			cluster__log("dump: corrupt log entry");
			bad = 1;
			break;
		}
		if (e.type != STORE_ENTRY_NORMAL)
			continue;
		Relay__Command *cmd = relay__command__unpack(NULL, e.len, e.data);
		if (!cmd) {
			cluster__log("dump: corrupt log entry index=%" PRIu64, e.index);
			bad = 1;
			break;
		}
		store_batch_clear(&b);
		int arv = queue_apply(fsm, e.index, cmd, &b);
		relay__command__free_unpacked(cmd, NULL);
		if (arv == QUEUE_ENOMEM || arv == QUEUE_ECORRUPT) {
			rv = cluster__queue_err(arv);
			goto out;
		}
	}
	if ((rv = cluster__store_err(store_iter_status(it))))
		goto out;

	/* 3. the result, in apply order, one record read at a time (what the replayed entries
	 * wrote is in the state machine's overlay) */
	for (const struct queue_msg *m = queue_fsm_first(fsm); m; m = queue_fsm_next(fsm, m)) {
		Relay__QueueRecord *r;
		if ((rv = queue_fsm_read_record(fsm, m->queue_id, &r))) {
			if (rv != QUEUE_ECORRUPT) {
				rv = cluster__queue_err(rv);
				goto out;
			}
			bad = 1;
			rv = 0;
			continue;
		}
		int pending = r->accept_index > committed ||
			      (r->has_update_index && r->update_index > committed);
		cluster__dump_record(out, r, json, pending, cluster__fsm_owner, fsm);
		relay__queue_record__free_unpacked(r, NULL);
	}
out:
	store_iter_free(it);
	queue_fsm_free(fsm);
	store_batch_fini(&b);
	store_free(s);
	if (!rv && bad)
		rv = CLUSTER_ECORRUPT;
	if (!rv && fflush(out))
		rv = CLUSTER_EIO;
	return rv;
}

struct store *
cluster__store(struct cluster *c)
{
	return c->raft ? cluster__raft_store(c->raft) : c->store;
}

struct cluster__raft *
cluster__raft_of(struct cluster *c)
{
	return c->raft;
}
