/*
 * cluster_raft.c - the replicated cluster: the host of the pure Raft core (cluster/raft.h).
 * cluster.c delegates every call here when cluster_listen and two or more peers are configured;
 * see cluster.h for the contract the node sees (it is the same as the single node's).
 *
 * Inputs go to the core and schedule ONE run per loop turn (a uv_idle): ticks (uv_timer every
 * heartbeat_ms; the election timeout is election_timeout_ms / heartbeat_ms ticks), peer
 * messages (transport recv callback, on the loop), proposals, and completed writes.  A run:
 *   1. submits waiting proposals: raft_propose on the leader, or a PROPOSE frame (the packed,
 *      tagged Command) to the known leader, which proposes it as is;
 *   2. drains the core's readies, in order: hard state and entries go into the NEXT write batch
 *      (a suffix truncation first when entries[0] overwrites what we wrote), messages are sent
 *      at once (raft.h: the core holds back whatever needs durable state), committed entries are
 *      applied to the queue state machine, whose store writes and the applied index go into the
 *      same next batch after them, then raft_advance;
 *   3. starts the next write if none is in flight: ONE atomic RocksDB write, synced when it
 *      carries raft state, off the loop thread (uv_queue_work).  Everything that arrived during
 *      the write in flight joins the next one: group commit.  When it completes,
 *      raft_persisted(seq) lets the core count our own log towards commit and release the
 *      acknowledgements and votes it held.
 * The origin of a proposal completes its callback when IT applies the entry carrying its tag
 * (Command.origin_node/boot/seq): committed on a majority and applied here (G1).
 *
 * Peer messages (Raft messages and forwarded proposals) to one peer wait up to
 * CRAFT_BATCH_DELAY_MS and leave as one transport frame (CRAFT_KIND_BATCH: [kind][length]
 * items): NNG's cost is per message, and a loaded leader otherwise spends its loop in NNG's
 * hand-offs (measured: 3-node accept rate ~550 -> ~2000 msg/s at 4 KiB x 50 sessions).
 *
 * Why the apply writes are safe in the same stream: they follow, in the same atomic write or a
 * later one, the log write of every entry they apply, and the applied index travels with them;
 * at open the core hands out committed entries again from the snapshot index on, and those at
 * or below the stored applied index are skipped.
 *
 * Snapshots (Raft thesis ch. 5): after snapshot_entries applied entries since the last one, the
 * queue (records as stored + bodies + the ownership keys) is serialized into a QueueSnapshot
 * (bounded by RAFT_SNAPSHOT_MAX_BYTES; over it: skipped, warned, the log keeps growing), given to
 * raft_compact, and persisted (meta + data) with the deletion of the log up to its index in the
 * next write.  A follower that receives one replaces its queue with it in one synced write on
 * the loop thread (rare; after the write in flight), reloads the queue state machine in place,
 * and goes on.
 *
 * Failure modes: a failed write is retried at the next tick with everything that queued up
 * since (the core waits: nothing it holds is released before raft_persisted).  Allocation
 * failure or a damaged entry while applying stops this node (c->failed: proposals fail, the
 * store keeps the log; a restart replays).  Peer input the core or the codec rejects is dropped
 * and counted.  A proposal not committed within propose_fail_ms gets CLUSTER_ETIMEDOUT.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cluster.h"
#include "cluster_int.h"
#include "peers.h"
#include "queue_fsm.h"
#include "raft.h"
#include "store.h"
#include "transport.h"

/* Frame kind of a forwarded proposal (a packed, tagged Relay__Command). */
#define CRAFT_KIND_PROPOSE 2u
/* Frame kind of a batch: several messages, each [kind u8][length u32 BE][payload]. */
#define CRAFT_KIND_BATCH 3u
#define CRAFT_BATCH_HDR 5
/* Outgoing messages to a peer wait this long to share one frame (fewer NNG messages: their
 * cost per message, not per byte, bounds a loaded leader), or until the batch holds this many
 * bytes.  A bigger message (a snapshot chunk) flushes the batch and goes alone. */
#define CRAFT_BATCH_DELAY_MS 1
#define CRAFT_BATCH_MAX_BYTES ((size_t)1 << 20)
/* raft_meta keys of the replicated mode. */
#define CRAFT_META_HS "raft_hs"
#define CRAFT_META_SNAP "raft_snap"
#define CRAFT_META_SNAP_DATA "raft_snap_data"
#define CRAFT_META_VERSION 1
/* Bound on the path of the database directory. */
#define CRAFT_PATH_MAX 4096

struct craft_prop {
	struct craft_prop *next, *prev; /* pending list, in seq order */
	struct craft_prop *hnext;	/* hash chain by seq */
	uint64_t seq;
	cluster_propose_cb cb;
	void *arg;
	uint64_t deadline; /* uv_now() ms */
	uint64_t sent_ms;  /* last submission (propose or forward) */
	int status;
	size_t len;
	unsigned char data[]; /* packed, tagged Relay__Command */
};

struct craft_list {
	struct craft_prop *head, *tail;
};

/* Messages waiting to leave for one peer in one frame. */
struct craft_outbuf {
	unsigned char *buf; /* owned */
	size_t len, cap;
	unsigned n;
	uint32_t kind; /* of the only message, when n == 1 */
};

struct cluster__raft {
	uv_loop_t *loop;       /* borrowed */
	struct store *store;   /* owned */
	struct queue_fsm *fsm; /* owned */
	struct raft *raft;     /* owned */
	struct transport *tp;  /* owned */
	struct cluster_peer peers[CLUSTER_MAX_PEERS];
	int64_t last_contact[CLUSTER_MAX_PEERS]; /* uv_now() of the last frame; -1 never */
	size_t n_peers;
	size_t self;
	uint64_t id, boot, next_seq;

	unsigned max_pending, heartbeat_ms, fail_ms, retry_ms, snapshot_entries;

	/* proposals not completed: list in seq order, hash by seq; unsent: first not submitted */
	struct craft_list pending;
	struct craft_prop *unsent;
	size_t npending;
	struct craft_prop **buckets;
	size_t nbuckets; /* power of two */

	uv_idle_t run;
	uv_timer_t tick;
	uv_timer_t flush; /* sends the batches CRAFT_BATCH_DELAY_MS after the first message */
	struct craft_outbuf out[CLUSTER_MAX_PEERS];
	uv_work_t work;
	int writing, write_sync, write_rv;
	uint64_t write_seq, write_applied, write_bytes;
	struct store_batch wbatch; /* the write in flight */
	struct store_batch next;   /* the next write */
	int next_sync;
	uint64_t next_seq_persist, next_bytes;
	int retry_write; /* a write failed: retry at the next tick */

	uint64_t synced_term, synced_vote; /* hard state in the batches so far */
	uint64_t log_last;		   /* highest log index put in a batch */
	uint64_t applied;		   /* applied to the state machine (memory) */
	uint64_t durable_applied;	   /* applied state written */
	uint64_t snap_index;		   /* latest snapshot (ours or installed) */
	uint64_t snap_tried;		   /* applied index at the last snapshot attempt */

	struct raft_ready held; /* a ready with a snapshot, waiting for the write in flight */
	int have_held;
	uint64_t install_seq;

	uint64_t lead;
	enum raft_role role;
	uint64_t term;
	int failed; /* sticky CLUSTER_E*: apply stopped */

	int closing;
	int close_pending; /* handles and the transport still closing */
	void (*close_done)(void *arg);
	void *close_arg;

	struct cluster_stats stats;
	struct cluster_status counters; /* only the counters are kept here */
};

/* ---- small helpers ---- */

static uint64_t
craft__random64(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
		v = uv_hrtime() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

static int
craft__peer_by_id(const struct cluster__raft *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_peers; i++)
		if (c->peers[i].id == id)
			return (int)i;
	return -1;
}

static int
craft__peer_by_name(const struct cluster__raft *c, const char *name)
{
	for (size_t i = 0; i < c->n_peers; i++)
		if (!strcmp(c->peers[i].name, name))
			return (int)i;
	return -1;
}

static const char *
craft__role_name(enum raft_role r)
{
	switch (r) {
	case RAFT_LEADER:
		return "leader";
	case RAFT_CANDIDATE:
		return "candidate";
	case RAFT_PRECANDIDATE:
		return "precandidate";
	default:
		return "follower";
	}
}

static void craft__run_cb(uv_idle_t *h);

static void
craft__schedule(struct cluster__raft *c)
{
	if (!c->closing)
		uv_idle_start(&c->run, craft__run_cb);
}

/* ---- pending proposals ---- */

static void
craft__list_push(struct craft_list *l, struct craft_prop *p)
{
	p->next = NULL;
	p->prev = l->tail;
	if (l->tail)
		l->tail->next = p;
	else
		l->head = p;
	l->tail = p;
}

static void
craft__hash_add(struct cluster__raft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	p->hnext = c->buckets[b];
	c->buckets[b] = p;
}

static struct craft_prop *
craft__hash_find(struct cluster__raft *c, uint64_t seq)
{
	size_t b = (size_t)(seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop *p = c->buckets[b]; p; p = p->hnext)
		if (p->seq == seq)
			return p;
	return NULL;
}

/* Takes p out of the pending list and the hash (the caller completes it). */
static void
craft__unlink(struct cluster__raft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop **pp = &c->buckets[b]; *pp; pp = &(*pp)->hnext)
		if (*pp == p) {
			*pp = p->hnext;
			break;
		}
	if (c->unsent == p)
		c->unsent = p->next;
	if (p->prev)
		p->prev->next = p->next;
	else
		c->pending.head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		c->pending.tail = p->prev;
	p->next = p->prev = NULL;
	c->npending--;
}

/* Runs the callbacks of a detached list in order and frees it. */
static void
craft__complete(struct cluster__raft *c, struct craft_list *done)
{
	struct craft_prop *p;
	while ((p = done->head)) {
		done->head = p->next;
		if (p->status)
			c->stats.failed_proposals++;
		p->cb(p->arg, p->status);
		free(p);
	}
	done->tail = NULL;
}

/* ---- raft metadata in the store ---- */

static int
craft__hs_put(struct store_batch *b, const struct raft_hard_state *hs)
{
	unsigned char v[25];
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(hs->term, v + 1);
	store_u64_encode(hs->vote, v + 9);
	store_u64_encode(hs->commit, v + 17);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_HS, sizeof(CRAFT_META_HS) - 1, v,
			       sizeof(v));
}

static int
craft__hs_get(struct store *s, struct raft_hard_state *hs)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, CRAFT_META_HS, sizeof(CRAFT_META_HS) - 1, (void **)&v,
			   &vlen);
	if (rv)
		return rv;
	if (vlen != 25 || v[0] != CRAFT_META_VERSION) {
		free(v);
		return STORE_ECORRUPT;
	}
	hs->term = store_u64_decode(v + 1);
	hs->vote = store_u64_decode(v + 9);
	hs->commit = store_u64_decode(v + 17);
	free(v);
	return 0;
}

static int
craft__snap_put(struct store_batch *b, const struct raft_snap_meta *m, const void *data, size_t len)
{
	unsigned char v[17 + 16 + 16 * RAFT_MAX_NODES];
	size_t cl = raft_conf_encoded_len(&m->conf);
	if (cl > sizeof(v) - 17)
		return STORE_EINVAL;
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(m->index, v + 1);
	store_u64_encode(m->term, v + 9);
	raft_conf_encode(&m->conf, v + 17);
	int rv = store_batch_put(b, STORE_CF_META, CRAFT_META_SNAP_DATA,
				 sizeof(CRAFT_META_SNAP_DATA) - 1, data, len);
	if (!rv)
		rv = store_batch_put(b, STORE_CF_META, CRAFT_META_SNAP, sizeof(CRAFT_META_SNAP) - 1,
				     v, 17 + cl);
	return rv;
}

/* *data is malloc'd (NULL when len 0).  ENOTFOUND when no snapshot was ever stored. */
static int
craft__snap_get(struct store *s, struct raft_snap_meta *m, void **data, size_t *len)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, CRAFT_META_SNAP, sizeof(CRAFT_META_SNAP) - 1,
			   (void **)&v, &vlen);
	if (rv)
		return rv;
	if (vlen < 17 || v[0] != CRAFT_META_VERSION ||
	    raft_conf_decode(v + 17, vlen - 17, &m->conf)) {
		free(v);
		return STORE_ECORRUPT;
	}
	m->index = store_u64_decode(v + 1);
	m->term = store_u64_decode(v + 9);
	free(v);
	rv = store_get(s, STORE_CF_META, CRAFT_META_SNAP_DATA, sizeof(CRAFT_META_SNAP_DATA) - 1,
		       data, len);
	return rv == STORE_ENOTFOUND ? STORE_ECORRUPT : rv;
}

/* ---- the write path ---- */

static void
craft__work_cb(uv_work_t *req)
{
	struct cluster__raft *c = req->data;
	c->write_rv = store_write(c->store, &c->wbatch, c->write_sync);
}

static void craft__after_work_cb(uv_work_t *req, int status);

static void
craft__start_write(struct cluster__raft *c)
{
	if (c->writing || c->retry_write || !c->next.len)
		return;
	struct store_batch t = c->wbatch;
	c->wbatch = c->next;
	c->next = t;
	store_batch_clear(&c->next);
	c->write_sync = c->next_sync;
	c->write_seq = c->next_seq_persist;
	c->write_bytes = c->next_bytes;
	c->write_applied = c->applied;
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	c->writing = 1;
	int rv = uv_queue_work(c->loop, &c->work, craft__work_cb, craft__after_work_cb);
	if (rv) {
		cluster__log("uv_queue_work error=\"%s\"", uv_strerror(rv));
		c->write_rv = STORE_EIO;
		c->writing = 0;
		/* handled like a failed write, at once */
		craft__after_work_cb(&c->work, UV_ECANCELED);
	}
}

static void craft__finish_close(struct cluster__raft *c);
static void craft__maybe_snapshot(struct cluster__raft *c);

static void
craft__after_work_cb(uv_work_t *req, int status)
{
	struct cluster__raft *c = req->data;
	int rv = status ? STORE_EIO : c->write_rv;
	c->writing = 0;
	if (c->write_sync)
		c->stats.fsyncs++;
	if (rv) {
		c->stats.failures++;
		cluster__log("write failed error=\"%s\"; retried", store_strerror(rv));
		/* the failed write applied nothing: put it back in front of what queued up since */
		if (store_batch_append(&c->wbatch, &c->next)) {
			cluster__log("write retry: out of memory; apply stopped");
			c->failed = CLUSTER_ENOMEM;
		}
		struct store_batch t = c->next;
		c->next = c->wbatch;
		c->wbatch = t;
		store_batch_clear(&c->wbatch);
		c->next_sync |= c->write_sync;
		if (c->write_seq > c->next_seq_persist)
			c->next_seq_persist = c->write_seq;
		c->next_bytes += c->write_bytes;
		c->retry_write = 1;
	} else {
		store_batch_clear(&c->wbatch);
		c->durable_applied = c->write_applied;
		if (c->write_sync) {
			c->stats.batches++;
			c->stats.bytes += c->write_bytes;
		}
		if (c->write_seq)
			raft_persisted(c->raft, c->write_seq);
	}
	if (c->closing) {
		craft__finish_close(c);
		return;
	}
	craft__maybe_snapshot(c);
	craft__schedule(c);
}

/* Adds what rd asks to persist (hard state, entries) to the next write. */
static int
craft__persist(struct cluster__raft *c, const struct raft_ready *rd)
{
	int rv = 0;
	if (rd->hs_changed)
		rv = craft__hs_put(&c->next, &rd->hs);
	if (!rv && rd->n_entries) {
		uint64_t first = rd->entries[0].index;
		if (first <= c->log_last)
			rv = store_log_delete(&c->next, first, UINT64_MAX);
		for (size_t i = 0; !rv && i < rd->n_entries; i++) {
			const struct raft_entry *e = &rd->entries[i];
			struct store_entry se = {
			    .index = e->index,
			    .term = e->term,
			    .type = (enum store_entry_type)e->type,
			    .data = e->data,
			    .len = e->len,
			};
			rv = store_log_append(&c->next, &se);
			c->next_bytes += e->len;
		}
		if (!rv)
			c->log_last = rd->entries[rd->n_entries - 1].index;
	}
	if (rv)
		return cluster__store_err(rv);
	/* Entries, a term or a vote must be synced before the core acts on them; a commit index
	 * alone need not (raft relearns it from the leader; thesis 3.8 lists term, vote and log
	 * as the persistent state): it rides unsynced, made durable by the next synced write. */
	if (rd->n_entries || rd->hs.term != c->synced_term || rd->hs.vote != c->synced_vote)
		c->next_sync = 1;
	c->synced_term = rd->hs.term;
	c->synced_vote = rd->hs.vote;
	c->next_seq_persist = rd->seq;
	return 0;
}

/* Sends the batch of peer pi now: one message as itself, several as a batch frame. */
static void
craft__flush_peer(struct cluster__raft *c, size_t pi)
{
	struct craft_outbuf *o = &c->out[pi];
	if (!o->n)
		return;
	int rv = o->n == 1
		     ? transport_send(c->tp, c->peers[pi].name, o->kind, o->buf + CRAFT_BATCH_HDR,
				      o->len - CRAFT_BATCH_HDR)
		     : transport_send(c->tp, c->peers[pi].name, CRAFT_KIND_BATCH, o->buf, o->len);
	if (rv)
		c->counters.raft_dropped += o->n;
	o->len = 0;
	o->n = 0;
}

static void
craft__flush_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	for (size_t i = 0; i < c->n_peers; i++)
		craft__flush_peer(c, i);
}

/* Queues a copy of one message for peer pi (sent by craft__flush_cb). */
static void
craft__out(struct cluster__raft *c, size_t pi, uint32_t kind, const void *data, size_t len)
{
	struct craft_outbuf *o = &c->out[pi];
	if (len + CRAFT_BATCH_HDR > CRAFT_BATCH_MAX_BYTES) {
		craft__flush_peer(c, pi);
		if (transport_send(c->tp, c->peers[pi].name, kind, data, len))
			c->counters.raft_dropped++;
		return;
	}
	if (o->len + CRAFT_BATCH_HDR + len > CRAFT_BATCH_MAX_BYTES)
		craft__flush_peer(c, pi);
	if (o->len + CRAFT_BATCH_HDR + len > o->cap) {
		size_t cap = o->cap ? o->cap : 4096;
		while (cap < o->len + CRAFT_BATCH_HDR + len)
			cap *= 2;
		unsigned char *nb = realloc(o->buf, cap);
		if (!nb) {
			c->counters.raft_dropped++; /* Raft tolerates loss */
			return;
		}
		o->buf = nb;
		o->cap = cap;
	}
	unsigned char *p = o->buf + o->len;
	p[0] = (unsigned char)kind;
	p[1] = (unsigned char)(len >> 24);
	p[2] = (unsigned char)(len >> 16);
	p[3] = (unsigned char)(len >> 8);
	p[4] = (unsigned char)len;
	if (len)
		memcpy(p + CRAFT_BATCH_HDR, data, len);
	o->len += CRAFT_BATCH_HDR + len;
	o->kind = kind;
	o->n++;
	if (!uv_is_active((uv_handle_t *)&c->flush))
		uv_timer_start(&c->flush, craft__flush_cb, CRAFT_BATCH_DELAY_MS, 0);
}

static void
craft__send(struct cluster__raft *c, const struct raft_ready *rd)
{
	for (size_t i = 0; i < rd->n_msgs; i++) {
		const struct raft_msg *m = &rd->msgs[i];
		int pi = craft__peer_by_id(c, m->to);
		if (pi < 0 || (size_t)pi == c->self)
			continue;
		void *buf;
		size_t len;
		int rv = transport_raft_encode(m, &buf, &len);
		if (rv) {
			cluster__log("encode %s to=%s error=\"%s\"", raft_msg_type_name(m->type),
				     c->peers[pi].name, transport_strerror(rv));
			c->counters.raft_dropped++;
			continue;
		}
		craft__out(c, (size_t)pi, TRANSPORT_KIND_RAFT, buf, len);
		free(buf);
	}
}

/* Applies the committed entries of rd (those not applied before) and moves the proposals they
 * complete to done. */
static void
craft__apply(struct cluster__raft *c, const struct raft_ready *rd, struct craft_list *done)
{
	uint64_t before = c->applied;
	for (size_t i = 0; i < rd->n_committed && !c->failed; i++) {
		const struct raft_entry *e = &rd->committed[i];
		if (e->index <= c->applied)
			continue; /* applied before a restart, or by an installed snapshot */
		int status = 0;
		if (e->type == RAFT_ENTRY_NORMAL) {
			Relay__Command *cmd = relay__command__unpack(NULL, e->len, e->data);
			if (!cmd) {
				/* we and the leader validated it: memory, or damage */
				cluster__log("index=%" PRIu64
					     " apply stopped: entry does not unpack",
					     e->index);
				c->failed = CLUSTER_ENOMEM;
				break;
			}
			int rv = queue_apply(c->fsm, e->index, cmd, &c->next);
			if (rv == QUEUE_ENOMEM || rv == QUEUE_ECORRUPT) {
				cluster__log("index=%" PRIu64
					     " apply stopped error=\"%s\"; restart "
					     "to replay",
					     e->index, queue_strerror(rv));
				relay__command__free_unpacked(cmd, NULL);
				c->failed = cluster__queue_err(rv);
				break;
			}
			if (rv) {
				cluster__log("index=%" PRIu64 " apply rejected error=\"%s\"",
					     e->index, queue_strerror(rv));
				status = cluster__queue_err(rv);
			}
			if (cmd->has_origin_node && cmd->origin_node == c->id &&
			    cmd->has_origin_boot && cmd->origin_boot == c->boot &&
			    cmd->has_origin_seq) {
				struct craft_prop *p = craft__hash_find(c, cmd->origin_seq);
				if (p) {
					craft__unlink(c, p);
					p->status = status;
					craft__list_push(done, p);
				}
			}
			relay__command__free_unpacked(cmd, NULL);
		}
		c->applied = e->index;
		c->stats.commits++;
	}
	if (c->applied != before) {
		int rv = store_applied_put(&c->next, c->applied);
		if (rv) {
			cluster__log("apply state not recorded error=\"%s\"", store_strerror(rv));
			c->failed = cluster__store_err(rv);
		}
	}
}

static void
craft__soft_state(struct cluster__raft *c, enum raft_role role, uint64_t lead, uint64_t term)
{
	if (lead != c->lead) {
		int pi = craft__peer_by_id(c, lead);
		cluster__log("event=leader-change term=%" PRIu64 " leader=%s role=%s", term,
			     lead == 0 ? "none"
			     : pi >= 0 ? c->peers[pi].name
				       : "unknown",
			     craft__role_name(role));
		if (lead)
			c->counters.leader_changes++;
		c->lead = lead;
		/* resubmit everything not committed: to the new leader, or proposed here */
		c->unsent = c->pending.head;
	}
	c->role = role;
	c->term = term;
}

/* ---- snapshots ---- */

/* Frees the items of a QueueSnapshot built by craft__snap_build. */
static void
craft__snap_items_free(Relay__SnapshotItem **items, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!items[i])
			continue;
		free(items[i]->body.data);
		free(items[i]);
	}
	free(items);
}

/* The body of m: from the store, or, when its apply has not been written yet, from the entry
 * in the raft log that enqueued it (an Accept, or an Outcome's DSN).  *body malloc'd. */
static int
craft__snap_body(struct cluster__raft *c, const struct queue_msg *m, void **body, size_t *len)
{
	int rv = queue_fsm_read_body(c->fsm, m->queue_id, body, len);
	if (rv != QUEUE_ENOTFOUND)
		return rv;
	const struct raft_entry *e = raft_entry_at(c->raft, m->accept_index);
	if (!e || e->type != RAFT_ENTRY_NORMAL)
		return QUEUE_ENOTFOUND;
	Relay__Command *cmd = relay__command__unpack(NULL, e->len, e->data);
	if (!cmd)
		return QUEUE_ENOMEM;
	const Relay__Accept *a = cmd->accept;
	if (!a && cmd->outcome)
		a = cmd->outcome->dsn;
	rv = QUEUE_ENOTFOUND;
	if (a && !strcmp(a->queue_id, m->queue_id)) {
		*len = a->body.len;
		*body = malloc(a->body.len ? a->body.len : 1);
		if (*body) {
			memcpy(*body, a->body.data, a->body.len);
			rv = 0;
		} else {
			rv = QUEUE_ENOMEM;
		}
	}
	relay__command__free_unpacked(cmd, NULL);
	return rv;
}

/* The ownership keys of the queue CF (queue_fsm_own_kv), copied into a growing array. */
struct craft__own {
	Relay__SnapshotKV **kv;
	size_t n, cap, bytes;
};

static int
craft__own_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct craft__own *o = arg;
	if (o->n == o->cap) {
		size_t nc = o->cap ? o->cap * 2 : 64;
		Relay__SnapshotKV **na = realloc(o->kv, nc * sizeof(*na));
		if (!na)
			return CLUSTER_ENOMEM;
		o->kv = na;
		o->cap = nc;
	}
	Relay__SnapshotKV *kv = malloc(sizeof(*kv) + klen + vlen);
	if (!kv)
		return CLUSTER_ENOMEM;
	relay__snapshot_kv__init(kv);
	unsigned char *p = (unsigned char *)(kv + 1);
	memcpy(p, key, klen);
	memcpy(p + klen, val, vlen);
	kv->key.data = p;
	kv->key.len = klen;
	kv->value.data = p + klen;
	kv->value.len = vlen;
	o->kv[o->n++] = kv;
	o->bytes += klen + vlen + 8;
	return o->bytes > RAFT_SNAPSHOT_MAX_BYTES ? CLUSTER_ETOOBIG : 0;
}

static void
craft__own_free(struct craft__own *o)
{
	for (size_t i = 0; i < o->n; i++)
		free(o->kv[i]);
	free(o->kv);
}

/* Serializes the queue as applied (index c->applied) into *out (malloc'd): records, bodies and
 * the ownership keys.  CLUSTER_ETOOBIG over RAFT_SNAPSHOT_MAX_BYTES. */
static int
craft__snap_build(struct cluster__raft *c, void **out, size_t *outlen)
{
	struct queue_counts qc;
	queue_fsm_counts(c->fsm, &qc);
	size_t n = 0, cap = qc.messages;
	Relay__SnapshotItem **items = calloc(cap ? cap : 1, sizeof(*items));
	if (!items)
		return CLUSTER_ENOMEM;
	struct craft__own own = {0};
	int rv = queue_fsm_own_kv(c->fsm, craft__own_cb, &own);
	size_t total = own.bytes;
	for (const struct queue_msg *m = queue_fsm_first(c->fsm); !rv && m && n < cap;
	     m = queue_fsm_next(c->fsm, m)) {
		Relay__SnapshotItem *it = calloc(1, sizeof(*it));
		if (!it) {
			rv = CLUSTER_ENOMEM;
			break;
		}
		relay__snapshot_item__init(it);
		items[n++] = it;
		void *body;
		size_t blen;
		int qrv = craft__snap_body(c, m, &body, &blen);
		if (qrv) {
			cluster__log("snapshot: body of %s error=\"%s\"", m->queue_id,
				     queue_strerror(qrv));
			rv = cluster__queue_err(qrv);
			break;
		}
		it->queue_id = (char *)m->queue_id;
		it->record.data = m->rec;
		it->record.len = m->rec_len;
		it->body.data = body;
		it->body.len = blen;
		it->next_attempt_ms = m->next_attempt_ms;
		total += blen + m->rec_len + 64;
		if (total > RAFT_SNAPSHOT_MAX_BYTES) {
			rv = CLUSTER_ETOOBIG;
			break;
		}
	}
	if (!rv) {
		Relay__QueueSnapshot s = RELAY__QUEUE_SNAPSHOT__INIT;
		s.index = c->applied;
		s.n_items = n;
		s.items = items;
		s.n_queue_own = own.n;
		s.queue_own = own.kv;
		size_t len = relay__queue_snapshot__get_packed_size(&s);
		if (len > RAFT_SNAPSHOT_MAX_BYTES) {
			rv = CLUSTER_ETOOBIG;
		} else if (!(*out = malloc(len ? len : 1))) {
			rv = CLUSTER_ENOMEM;
		} else {
			*outlen = relay__queue_snapshot__pack(&s, *out);
		}
	}
	craft__snap_items_free(items, n);
	craft__own_free(&own);
	return rv;
}

/* Takes a snapshot when snapshot_entries entries were applied since the last one (or the last
 * attempt), our log up to the applied index is durable, and no ready is held. */
static void
craft__maybe_snapshot(struct cluster__raft *c)
{
	if (c->have_held || c->failed || c->closing)
		return;
	uint64_t since = c->snap_index > c->snap_tried ? c->snap_index : c->snap_tried;
	if (c->applied < since + c->snapshot_entries)
		return;
	struct raft_status st;
	raft_status(c->raft, &st);
	if (st.persisted_index < c->applied || st.applied < c->applied)
		return;
	c->snap_tried = c->applied;
	void *data = NULL;
	size_t len = 0;
	uint64_t t0 = uv_hrtime();
	int rv = craft__snap_build(c, &data, &len);
	if (rv) {
		cluster__log("event=snapshot-skipped index=%" PRIu64 " error=\"%s\"; the log keeps "
			     "growing",
			     c->applied, cluster_strerror(rv));
		return;
	}
	rv = raft_compact(c->raft, c->applied, data, len);
	if (rv) {
		cluster__log("event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", c->applied,
			     raft_strerror(rv));
		free(data);
		return;
	}
	struct raft_snap_meta meta;
	raft_snap_meta(c->raft, &meta);
	size_t blen = c->next.len;
	unsigned bcount = c->next.count;
	rv = craft__snap_put(&c->next, &meta, data, len);
	if (!rv)
		rv = store_log_delete(&c->next, 1, meta.index);
	if (rv) {
		/* the core compacted; the store keeps the log (replayed at open): harmless */
		c->next.len = blen;
		c->next.count = bcount;
		cluster__log("snapshot not persisted error=\"%s\"", store_strerror(rv));
	}
	free(data);
	c->snap_index = meta.index;
	c->counters.snapshots++;
	cluster__log("event=snapshot index=%" PRIu64 " term=%" PRIu64 " bytes=%zu ms=%" PRIu64,
		     meta.index, meta.term, len, (uv_hrtime() - t0) / 1000000);
	craft__start_write(c);
}

/* Installs the snapshot of rd: the queue is replaced by its items, the log by its entries, in
 * one synced write on the loop thread (no write is in flight), then the state machine is
 * reloaded in place. */
static int
craft__install(struct cluster__raft *c, const struct raft_ready *rd)
{
	uint64_t t0 = uv_hrtime();
	Relay__QueueSnapshot *s = NULL;
	if (rd->snap_len) {
		s = relay__queue_snapshot__unpack(NULL, rd->snap_len, rd->snap_data);
		if (!s) {
			cluster__log("snapshot install: data does not unpack index=%" PRIu64,
				     rd->snap->index);
			return CLUSTER_ECORRUPT;
		}
	}
	struct store_batch *b = &c->next;
	/* every key of the queue CFs: queue ids and index keys start with a printable byte, the
	 * ownership keys with QUEUE_KEY_OWN (0x01) */
	static const unsigned char lo[1] = {0};
	static const unsigned char hi[2] = {0xff, 0xff};
	int rv = 0;
	if (rd->hs_changed)
		rv = craft__hs_put(b, &rd->hs);
	/* the whole queue and the whole log go */
	for (enum store_cf cf = STORE_CF_BODY; !rv && cf <= STORE_CF_INDEX; cf++)
		rv = store_batch_delete_range(b, cf, lo, sizeof(lo), hi, sizeof(hi));
	if (!rv)
		rv = store_log_delete(b, 1, UINT64_MAX);
	for (size_t i = 0; s && !rv && i < s->n_items; i++) {
		const Relay__SnapshotItem *it = s->items[i];
		size_t idl = strlen(it->queue_id);
		unsigned char ik[9 + QUEUE_ID_MAX];
		if (idl == 0 || idl > QUEUE_ID_MAX) {
			rv = STORE_ECORRUPT;
			break;
		}
		ik[0] = QUEUE_INDEX_QUEUED;
		store_u64_encode(it->next_attempt_ms, ik + 1);
		memcpy(ik + 9, it->queue_id, idl);
		rv = store_batch_put(b, STORE_CF_QUEUE, it->queue_id, idl, it->record.data,
				     it->record.len);
		if (!rv)
			rv = store_batch_put(b, STORE_CF_BODY, it->queue_id, idl, it->body.data,
					     it->body.len);
		if (!rv)
			rv = store_batch_put(b, STORE_CF_INDEX, ik, 9 + idl, "", 0);
	}
	for (size_t i = 0; s && !rv && i < s->n_queue_own; i++) {
		const Relay__SnapshotKV *kv = s->queue_own[i];
		if (kv->key.len < 2 || kv->key.data[0] != QUEUE_KEY_OWN) {
			rv = STORE_ECORRUPT; /* only ownership keys travel here */
			break;
		}
		rv = store_batch_put(b, STORE_CF_QUEUE, kv->key.data, kv->key.len, kv->value.data,
				     kv->value.len);
	}
	if (!rv)
		rv = craft__snap_put(b, rd->snap, rd->snap_data, rd->snap_len);
	if (!rv)
		rv = store_applied_put(b, rd->snap->index);
	c->log_last = 0;
	if (s)
		relay__queue_snapshot__free_unpacked(s, NULL);
	if (rv) {
		cluster__log("snapshot install: batch error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	/* entries of the same ready follow the snapshot */
	struct raft_ready rest = *rd;
	rest.hs_changed = false;
	if ((rv = craft__persist(c, &rest)))
		return rv;
	rv = store_write(c->store, b, 1);
	c->stats.fsyncs++;
	if (rv) {
		cluster__log("snapshot install: write error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	store_batch_clear(b);
	c->install_seq = c->next_seq_persist; /* reported with the ready's own seq */
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	if ((rv = queue_fsm_reload(c->fsm))) {
		cluster__log("snapshot install: reload error=\"%s\"", queue_strerror(rv));
		return cluster__queue_err(rv);
	}
	c->applied = c->durable_applied = rd->snap->index;
	c->snap_index = rd->snap->index;
	c->counters.snapshots_installed++;
	cluster__log("event=snapshot-installed index=%" PRIu64 " term=%" PRIu64
		     " bytes=%zu ms=%" PRIu64,
		     rd->snap->index, rd->snap->term, rd->snap_len, (uv_hrtime() - t0) / 1000000);
	return 0;
}

/* ---- the run: proposals in, readies out ---- */

/* Submits p: 1 when done (proposed here or forwarded), 0 when it must wait. */
static int
craft__submit(struct cluster__raft *c, struct craft_prop *p)
{
	uint64_t now = uv_now(c->loop);
	if (c->role == RAFT_LEADER) {
		int rv = raft_propose(c->raft, p->data, p->len, NULL, NULL);
		if (rv)
			return 0;
		p->sent_ms = now;
		return 1;
	}
	if (c->lead == 0 || c->lead == c->id)
		return 0;
	int pi = craft__peer_by_id(c, c->lead);
	if (pi < 0)
		return 0;
	/* a full queue drops it like the network would: the retry timer sends it again */
	craft__out(c, (size_t)pi, CRAFT_KIND_PROPOSE, p->data, p->len);
	c->counters.forwarded++;
	p->sent_ms = now;
	return 1;
}

static void
craft__handle_ready(struct cluster__raft *c, struct raft_ready *rd)
{
	struct craft_list done = {0};
	int installed = 0;
	if (rd->snap) {
		int rv = craft__install(c, rd);
		if (rv) {
			cluster__log("apply stopped: snapshot not installed; restart to retry");
			c->failed = rv;
		} else {
			installed = 1;
		}
	} else if (rd->need_persist) {
		int rv = craft__persist(c, rd);
		if (rv) {
			cluster__log("persist: batch error=\"%s\"; apply stopped",
				     cluster_strerror(rv));
			c->failed = rv;
		}
	}
	craft__send(c, rd);
	if (!c->failed)
		craft__apply(c, rd, &done);
	craft__soft_state(c, rd->role, rd->lead, rd->term);
	uint64_t seq = rd->seq > c->install_seq ? rd->seq : c->install_seq;
	c->install_seq = 0;
	raft_advance(c->raft, rd);
	if (installed && seq)
		raft_persisted(c->raft, seq);
	craft__complete(c, &done);
}

static void
craft__run_cb(uv_idle_t *h)
{
	struct cluster__raft *c = h->data;
	uv_idle_stop(h);
	if (c->closing)
		return;
	if (c->have_held) {
		if (c->writing)
			return; /* the write's completion schedules the next run */
		c->have_held = 0;
		craft__handle_ready(c, &c->held);
	}
	int round;
	for (round = 0; round < 64 && !c->closing && !c->failed; round++) {
		while (c->unsent && craft__submit(c, c->unsent))
			c->unsent = c->unsent->next;
		struct raft_ready rd;
		int got = 0;
		while (!c->closing && !c->failed && raft_ready_get(c->raft, &rd) > 0) {
			got = 1;
			if (rd.snap && c->writing) {
				c->held = rd;
				c->have_held = 1;
				return;
			}
			craft__handle_ready(c, &rd);
		}
		if (!got)
			break;
	}
	if (c->closing)
		return;
	if (round == 64)
		craft__schedule(c); /* more work: the next loop turn, after I/O */
	if (!c->failed) {
		struct raft_status st;
		raft_status(c->raft, &st);
		craft__soft_state(c, st.role, st.lead, st.term);
	}
	craft__start_write(c);
}

/* ---- inputs ---- */

static void craft__recv_one(struct cluster__raft *c, const char *from, uint32_t kind,
			    const void *data, size_t len);

static void
craft__recv_cb(void *arg, const char *from, uint32_t kind, const void *data, size_t len)
{
	struct cluster__raft *c = arg;
	if (c->closing)
		return;
	if (kind != CRAFT_KIND_BATCH) {
		craft__recv_one(c, from, kind, data, len);
		return;
	}
	/* peer input: every length is checked against what is left; a bad batch is dropped
	 * from the bad item on */
	const unsigned char *p = data, *end = p + len;
	while (p < end && !c->closing) {
		if ((size_t)(end - p) < CRAFT_BATCH_HDR) {
			c->counters.raft_dropped++;
			return;
		}
		uint32_t k = p[0];
		size_t l = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
		p += CRAFT_BATCH_HDR;
		if (l > (size_t)(end - p) || k == CRAFT_KIND_BATCH) {
			c->counters.raft_dropped++;
			return;
		}
		craft__recv_one(c, from, k, p, l);
		p += l;
	}
}

static void
craft__recv_one(struct cluster__raft *c, const char *from, uint32_t kind, const void *data,
		size_t len)
{
	int pi = craft__peer_by_name(c, from);
	if (pi >= 0)
		c->last_contact[pi] = (int64_t)uv_now(c->loop);
	if (kind == TRANSPORT_KIND_RAFT) {
		if (c->have_held) {
			c->counters.raft_dropped++; /* the core is busy with a held ready */
			return;
		}
		struct transport_raft_in in;
		if (transport_raft_decode(data, len, &in)) {
			c->counters.raft_dropped++;
			return;
		}
		if (pi < 0 || in.msg.from != c->peers[pi].id)
			c->counters.raft_dropped++; /* claims another sender than its frame */
		else if (raft_step(c->raft, &in.msg))
			c->counters.raft_dropped++;
		transport_raft_in_fini(&in);
		craft__schedule(c);
		return;
	}
	if (kind == CRAFT_KIND_PROPOSE) {
		c->counters.forwards_received++;
		if (c->role != RAFT_LEADER || c->have_held || c->failed ||
		    len > RAFT_ENTRY_MAX_BYTES)
			return; /* the origin retries */
		Relay__Command *cmd = relay__command__unpack(NULL, len, data);
		if (!cmd)
			return;
		int ok = cmd->has_origin_node && cmd->has_origin_boot && cmd->has_origin_seq &&
			 queue_validate(cmd) == 0;
		relay__command__free_unpacked(cmd, NULL);
		if (ok && raft_propose(c->raft, data, len, NULL, NULL) == 0)
			craft__schedule(c);
	}
}

static void
craft__tick_cb(uv_timer_t *t)
{
	struct cluster__raft *c = t->data;
	if (c->closing)
		return;
	if (!c->have_held)
		raft_tick(c->raft);
	if (c->retry_write && !c->writing) {
		c->retry_write = 0;
		craft__start_write(c);
	}
	/* proposals: fail the overdue, resubmit the ones whose submission may have been lost */
	uint64_t now = uv_now(c->loop);
	struct craft_list done = {0};
	int blocked = 0;
	for (struct craft_prop *p = c->pending.head, *nx; p; p = nx) {
		nx = p->next;
		if (now >= p->deadline) {
			craft__unlink(c, p);
			p->status = CLUSTER_ETIMEDOUT;
			c->counters.timed_out++;
			craft__list_push(&done, p);
			continue;
		}
		if (p == c->unsent)
			blocked = 1; /* from here on, not submitted yet */
		/* a leader's own log holds what it proposed: it resubmits only on a leader change
		 * (craft__soft_state), never while it stays leader (duplicates without quorum) */
		if (!blocked && !c->have_held && c->role != RAFT_LEADER &&
		    now - p->sent_ms >= c->retry_ms) {
			if (craft__submit(c, p))
				c->counters.forward_retries++;
		}
	}
	craft__complete(c, &done);
	craft__schedule(c);
}

int
cluster__raft_propose(struct cluster__raft *c, const Relay__Command *cmd, cluster_propose_cb cb,
		      void *arg)
{
	int rv;
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
	if (c->npending >= c->max_pending) {
		rv = CLUSTER_EBUSY;
		goto err;
	}
	Relay__Command tagged = *cmd;
	tagged.has_origin_node = tagged.has_origin_boot = tagged.has_origin_seq = 1;
	tagged.origin_node = c->id;
	tagged.origin_boot = c->boot;
	tagged.origin_seq = c->next_seq;
	size_t len = relay__command__get_packed_size(&tagged);
	if (len > RAFT_ENTRY_MAX_BYTES) {
		rv = CLUSTER_ETOOBIG;
		goto err;
	}
	struct craft_prop *p = malloc(sizeof(*p) + len);
	if (!p) {
		rv = CLUSTER_ENOMEM;
		goto err;
	}
	memset(p, 0, sizeof(*p));
	p->seq = c->next_seq++;
	p->cb = cb;
	p->arg = arg;
	p->deadline = uv_now(c->loop) + c->fail_ms;
	p->len = relay__command__pack(&tagged, p->data);
	craft__list_push(&c->pending, p);
	craft__hash_add(c, p);
	c->npending++;
	if (!c->unsent)
		c->unsent = p;
	c->stats.proposals++;
	craft__schedule(c);
	return 0;
err:
	c->stats.rejected++;
	return rv;
}

/* ---- open ---- */

int
cluster__raft_wanted(const struct cluster_config *cfg)
{
	return cfg->cluster_listen && *cfg->cluster_listen && cfg->n_peers >= 2;
}

/* Loads the durable raft state and gives it to the core (or bootstraps a new cluster). */
static int
craft__load(struct cluster__raft *c)
{
	struct raft_hard_state hs = {0};
	int rv = craft__hs_get(c->store, &hs);
	uint64_t first, last;
	int srv = store_log_bounds(c->store, &first, &last);
	if (srv)
		return cluster__store_err(srv);
	if ((srv = store_applied_get(c->store, &c->applied)))
		return cluster__store_err(srv);
	c->durable_applied = c->applied;
	if (rv == STORE_ENOTFOUND) {
		struct queue_counts qc;
		queue_fsm_counts(c->fsm, &qc);
		if (c->applied || last || qc.messages) {
			cluster__log("open: the data dir holds a single node's queue; a replicated "
				     "node needs an empty data_dir");
			return CLUSTER_EINVAL;
		}
		struct raft_conf conf = {0};
		for (size_t i = 0; i < c->n_peers; i++)
			conf.voters[conf.n_voters++] = c->peers[i].id;
		rv = raft_bootstrap(c->raft, &conf);
		if (rv) {
			cluster__log("open: bootstrap error=\"%s\"", raft_strerror(rv));
			return CLUSTER_EINVAL;
		}
		cluster__log("event=bootstrap voters=%zu", c->n_peers);
		return 0;
	}
	if (rv) {
		cluster__log("open: raft hard state error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct raft_snap_meta snap = {0};
	void *sdata = NULL;
	size_t slen = 0;
	rv = craft__snap_get(c->store, &snap, &sdata, &slen);
	if (rv && rv != STORE_ENOTFOUND) {
		cluster__log("open: snapshot error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	c->snap_index = snap.index;
	c->synced_term = hs.term;
	c->synced_vote = hs.vote;
	/* the entries after the snapshot */
	struct raft_entry *ents = NULL;
	void **bufs = NULL;
	size_t n = 0;
	uint64_t lo = snap.index + 1;
	if (last >= lo) {
		size_t cnt = (size_t)(last - lo + 1);
		ents = calloc(cnt, sizeof(*ents));
		bufs = calloc(cnt, sizeof(*bufs));
		if (!ents || !bufs) {
			rv = CLUSTER_ENOMEM;
			goto out;
		}
		for (uint64_t i = lo; i <= last; i++) {
			struct store_entry e;
			rv = store_log_get(c->store, i, &e, &bufs[n]);
			if (rv) {
				cluster__log("open: log entry index=%" PRIu64 " error=\"%s\"", i,
					     store_strerror(rv));
				rv = rv == STORE_ENOTFOUND ? CLUSTER_ECORRUPT
							   : cluster__store_err(rv);
				goto out;
			}
			ents[n++] = (struct raft_entry){.index = e.index,
							.term = e.term,
							.type = (uint8_t)e.type,
							.len = (uint32_t)e.len,
							.data = (void *)e.data};
		}
	}
	rv = raft_restore(c->raft, &hs, &snap, sdata, slen, ents, n);
	if (rv) {
		cluster__log("open: raft restore error=\"%s\"", raft_strerror(rv));
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_ECORRUPT;
		goto out;
	}
	c->log_last = last;
	/* the queue is durable with its applied index: those entries are not handed out again */
	if (c->applied > snap.index && c->applied <= last &&
	    (rv = raft_set_applied(c->raft, c->applied)))
		cluster__log("open: raft_set_applied index=%" PRIu64 " error=\"%s\"", c->applied,
			     raft_strerror(rv));
	if (c->applied < snap.index) {
		cluster__log("open: applied=%" PRIu64 " behind snapshot=%" PRIu64, c->applied,
			     snap.index);
		rv = CLUSTER_ECORRUPT;
		goto out;
	}
	cluster__log("open: term=%" PRIu64 " commit=%" PRIu64 " applied=%" PRIu64
		     " snapshot=%" PRIu64 " entries=%zu",
		     hs.term, hs.commit, c->applied, snap.index, n);
	rv = 0;
out:
	for (size_t i = 0; i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(ents);
	free(sdata);
	return rv;
}

int
cluster__raft_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster__raft **out)
{
	char path[CRAFT_PATH_MAX];
	char err[256];
	int rv = cluster__db_path(cfg->data_dir, path, sizeof(path));
	if (rv)
		return rv;
	int ntls = !!(cfg->cluster_ca && *cfg->cluster_ca) +
		   !!(cfg->cluster_cert && *cfg->cluster_cert) +
		   !!(cfg->cluster_key && *cfg->cluster_key);
	if (ntls != 0 && ntls != 3) {
		cluster__log("open: cluster_ca, cluster_cert and cluster_key: all or none");
		return CLUSTER_EINVAL;
	}
	struct cluster__raft *c = calloc(1, sizeof(*c));
	if (!c)
		return CLUSTER_ENOMEM;
	c->loop = loop;
	if (cluster_peers_parse(cfg->peers, cfg->n_peers, cfg->node_id, c->peers, err,
				sizeof(err))) {
		cluster__log("open: %s", err);
		free(c);
		return CLUSTER_EINVAL;
	}
	c->n_peers = cfg->n_peers;
	for (size_t i = 0; i < c->n_peers; i++) {
		c->last_contact[i] = -1;
		if (!strcmp(c->peers[i].name, cfg->node_id))
			c->self = i;
	}
	c->id = c->peers[c->self].id;
	c->boot = craft__random64();
	c->next_seq = 1;
	c->max_pending = cfg->max_pending ? cfg->max_pending : CLUSTER_DEFAULT_MAX_PENDING;
	c->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
	unsigned election = cfg->election_timeout_ms ? cfg->election_timeout_ms
						     : CLUSTER_DEFAULT_ELECTION_TIMEOUT_MS;
	if (election < 2 * c->heartbeat_ms)
		election = 2 * c->heartbeat_ms;
	c->fail_ms = cfg->propose_fail_ms ? cfg->propose_fail_ms : CLUSTER_DEFAULT_PROPOSE_FAIL_MS;
	c->retry_ms = cfg->retry_ms ? cfg->retry_ms : 2 * election;
	c->snapshot_entries =
	    cfg->snapshot_entries ? cfg->snapshot_entries : CLUSTER_DEFAULT_SNAPSHOT_ENTRIES;
	c->nbuckets = 1024;
	while (c->nbuckets < c->max_pending)
		c->nbuckets <<= 1;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	store_batch_init(&c->wbatch);
	store_batch_init(&c->next);
	c->work.data = c;
	if (!c->buckets) {
		rv = CLUSTER_ENOMEM;
		goto err_after_alloc;
	}
	if ((rv = store_open(path, 0, &c->store))) {
		rv = cluster__store_err(rv);
		goto err_after_alloc;
	}
	if ((rv = queue_fsm_new(c->store, &c->fsm))) {
		cluster__log("open: loading the queue error=\"%s\"", queue_strerror(rv));
		rv = cluster__queue_err(rv);
		goto err_after_store;
	}
	struct raft_config rc = {
	    .id = c->id,
	    .election_tick = election / c->heartbeat_ms,
	    .heartbeat_tick = 1,
	    .pre_vote = true,
	    .check_quorum = true,
	    .rng_seed = craft__random64(),
	};
	if ((rv = raft_new(&rc, &c->raft))) {
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EINVAL;
		goto err_after_fsm;
	}
	if ((rv = craft__load(c)))
		goto err_after_raft;
	struct transport_config tc = {
	    .node_id = cfg->node_id,
	    .listen = cfg->cluster_listen,
	    .ca_file = ntls ? cfg->cluster_ca : NULL,
	    .cert_file = ntls ? cfg->cluster_cert : NULL,
	    .key_file = ntls ? cfg->cluster_key : NULL,
	};
	if ((rv = transport_open(loop, &tc, craft__recv_cb, c, &c->tp))) {
		cluster__log("open: cluster_listen=%s error=\"%s\"", cfg->cluster_listen,
			     transport_strerror(rv));
		rv = rv == TRANSPORT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EIO;
		goto err_after_raft;
	}
	for (size_t i = 0; i < c->n_peers; i++) {
		if (i == c->self)
			continue;
		if ((rv = transport_add_peer(c->tp, c->peers[i].name, c->peers[i].addr))) {
			cluster__log("open: peer %s=%s error=\"%s\"", c->peers[i].name,
				     c->peers[i].addr, transport_strerror(rv));
			rv = CLUSTER_EINVAL;
			goto err_after_transport;
		}
	}
	uv_idle_init(loop, &c->run);
	c->run.data = c;
	uv_timer_init(loop, &c->tick);
	c->tick.data = c;
	uv_timer_init(loop, &c->flush);
	c->flush.data = c;
	uv_timer_start(&c->tick, craft__tick_cb, c->heartbeat_ms, c->heartbeat_ms);
	c->stats.applied_index = c->applied;
	cluster__log("event=cluster-open node=%s id=%016" PRIx64 " peers=%zu listen=%s tls=%s",
		     cfg->node_id, c->id, c->n_peers, cfg->cluster_listen, ntls ? "yes" : "no");
	craft__schedule(c);
	*out = c;
	return 0;
err_after_transport:
	transport_close(c->tp, NULL, NULL);
err_after_raft:
	raft_free(c->raft);
err_after_fsm:
	queue_fsm_free(c->fsm);
err_after_store:
	store_free(c->store);
err_after_alloc:
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	free(c->buckets);
	free(c);
	return rv;
}

/* ---- close ---- */

static void
craft__free(struct cluster__raft *c)
{
	void (*done)(void *) = c->close_done;
	void *arg = c->close_arg;
	/* the applied state reached so far, rather than replaying it at the next open */
	if (c->next.len && !c->failed) {
		int rv = store_write(c->store, &c->next, 1);
		if (rv)
			cluster__log("close: last write error=\"%s\"; replayed at open",
				     store_strerror(rv));
	}
	struct craft_list all = c->pending;
	memset(&c->pending, 0, sizeof(c->pending));
	c->unsent = NULL;
	for (struct craft_prop *p = all.head; p; p = p->next)
		p->status = CLUSTER_ECLOSED;
	craft__complete(c, &all);
	raft_free(c->raft);
	queue_fsm_free(c->fsm);
	store_free(c->store);
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	for (size_t i = 0; i < CLUSTER_MAX_PEERS; i++)
		free(c->out[i].buf);
	free(c->buckets);
	free(c);
	if (done)
		done(arg);
}

static void
craft__closed_one(struct cluster__raft *c)
{
	if (--c->close_pending == 0)
		craft__free(c);
}

static void
craft__handle_closed_cb(uv_handle_t *h)
{
	craft__closed_one(h->data);
}

static void
craft__tp_closed_cb(void *arg)
{
	craft__closed_one(arg);
}

/* Starts closing the handles and the transport once no write is in flight. */
static void
craft__finish_close(struct cluster__raft *c)
{
	if (c->writing || c->close_pending)
		return;
	c->close_pending = 4;
	transport_close(c->tp, craft__tp_closed_cb, c);
	c->tp = NULL;
	uv_close((uv_handle_t *)&c->run, craft__handle_closed_cb);
	uv_close((uv_handle_t *)&c->tick, craft__handle_closed_cb);
	uv_close((uv_handle_t *)&c->flush, craft__handle_closed_cb);
}

void
cluster__raft_close(struct cluster__raft *c, void (*done)(void *arg), void *arg)
{
	c->closing = 1;
	c->close_done = done;
	c->close_arg = arg;
	uv_idle_stop(&c->run);
	uv_timer_stop(&c->tick);
	uv_timer_stop(&c->flush);
	craft__finish_close(c); /* else when the write in flight completes */
}

/* ---- stats and status ---- */

void
cluster__raft_stats(struct cluster__raft *c, struct cluster_stats *st)
{
	*st = c->stats;
	st->applied_index = c->applied;
	st->last_index = c->log_last;
	st->pending = c->npending;
	cluster__queue_stats(c->fsm, st);
}

void
cluster__raft_status(struct cluster__raft *c, struct cluster_status *st)
{
	*st = c->counters;
	st->replicated = 1;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	st->role = craft__role_name(rs.role);
	st->term = rs.term;
	st->leader_id = rs.lead;
	int li = craft__peer_by_id(c, rs.lead);
	st->leader[0] = 0;
	if (li >= 0)
		snprintf(st->leader, sizeof(st->leader), "%s", c->peers[li].name);
	st->commit_index = rs.commit;
	st->applied_index = c->applied;
	st->last_index = rs.last_index;
	st->snapshot_index = rs.snap_index;
	st->raft_dropped += rs.dropped_msgs;
	uint64_t now = uv_now(c->loop);
	st->n_peers = (unsigned)c->n_peers;
	for (size_t i = 0; i < c->n_peers; i++) {
		struct cluster_peer_status *p = &st->peers[i];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", c->peers[i].name);
		p->id = c->peers[i].id;
		p->self = i == c->self;
		if (p->self) {
			p->connected = 1;
			p->last_contact_ms = 0;
		} else {
			struct transport_peer_stats ps;
			if (c->tp && transport_peer_stats(c->tp, c->peers[i].name, &ps) == 0)
				p->connected = ps.connected;
			p->last_contact_ms = c->last_contact[i] < 0
						 ? -1
						 : (int64_t)(now - (uint64_t)c->last_contact[i]);
		}
		for (uint32_t k = 0; k < rs.n_peers; k++)
			if (rs.peers[k].id == p->id) {
				p->match = rs.peers[k].match;
				p->lag = rs.last_index > p->match ? rs.last_index - p->match : 0;
			}
	}
}

struct queue_fsm *
cluster__raft_queue(struct cluster__raft *c)
{
	return c->fsm;
}

struct store *
cluster__raft_store(struct cluster__raft *c)
{
	return c->store;
}
