/*
 * craft_fetch.c - installing a streamed snapshot (craft_int.h): the descriptor from the leader
 * wipes the queue and marks the install incomplete in one synced write; the key/values are then
 * fetched from a node that has a view at or past the descriptor's index, chunk by chunk,
 * checked against the view's digest; one synced write completes the install.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"

static void
craft__fetch_send(struct craft *c)
{
	struct craft_fetch *f = &c->fetch;
	Relay__SnapshotFetch r = RELAY__SNAPSHOT_FETCH__INIT;
	r.session = f->session;
	r.seq = ++f->seq;
	r.min_index = f->min_index;
	r.cf = craft__snap_cfs[f->ci];
	if (f->has_key) {
		r.has_key = 1;
		r.key.data = f->key;
		r.key.len = f->klen;
	}
	r.has_offset = f->offset != 0;
	r.offset = f->offset;
	unsigned char buf[64 + STORE_KEY_MAX];
	size_t len = relay__snapshot_fetch__get_packed_size(&r);
	if (len <= sizeof(buf) && f->src != c->self && f->src < c->n_peers) {
		relay__snapshot_fetch__pack(&r, buf);
		craft__out(c, f->src, CRAFT_KIND_SNAP_FETCH, buf, len);
	}
	uint64_t now = craft__now(c);
	f->deadline = now + CRAFT_FETCH_TIMEOUT_MS;
	f->next_at = 0;
}

/* Picks the node to fetch from: the leader first, then the descriptor's node, then each other
 * member in turn. */
static void
craft__fetch_pick(struct craft *c)
{
	struct craft_fetch *f = &c->fetch;
	int pi = -1;
	if (f->attempt == 0) {
		pi = craft__peer_by_id(c, c->lead);
		if ((pi < 0 || (size_t)pi == c->self) && f->hint[0])
			pi = craft__peer_by_name(c, f->hint);
	}
	if (pi < 0 || (size_t)pi == c->self) {
		pi = (int)((f->src + 1) % c->n_peers);
		if ((size_t)pi == c->self)
			pi = (int)((pi + 1) % c->n_peers);
	}
	f->src = (size_t)pi;
	f->attempt++;
}

/* Starts a new session from the start of the stream: the partial copy is wiped first. */
static void
craft__fetch_restart(struct craft *c, uint64_t delay_ms)
{
	struct craft_fetch *f = &c->fetch;
	struct store_batch b;
	store_batch_init(&b);
	int rv = craft__wipe_queue(&b);
	if (!rv)
		rv = c->io.write_now(c->io.arg, &b, 0);
	store_batch_fini(&b);
	if (rv) {
		craft__log(c, "snapshot fetch: wipe error=\"%s\"; retried", store_strerror(rv));
		c->counters.snapshot_fetch_failures++;
	}
	free(f->val);
	f->val = NULL;
	f->val_size = 0;
	f->offset = 0;
	f->ci = 0;
	f->has_key = 0;
	f->klen = 0;
	f->bound = 0;
	f->tries = 0;
	f->wiped = rv == 0;
	store_digest_init(&f->digest);
	f->session = c->io.random64(c->io.arg);
	craft__fetch_pick(c);
	c->counters.snapshot_fetches++;
	f->deadline = 0;
	f->next_at = craft__now(c) + delay_ms;
	if (!delay_ms && f->wiped)
		craft__fetch_send(c);
}

/* Starts fetching the queue state of index >= min_index (the marker is already written). */
void
craft__fetch_begin(struct craft *c, uint64_t min_index, const char *hint)
{
	struct craft_fetch *f = &c->fetch;
	char h[CLUSTER_ID_MAX + 1];
	snprintf(h, sizeof(h), "%s", hint ? hint : ""); /* hint may be f->hint */
	f->active = 1;
	f->min_index = min_index;
	memcpy(f->hint, h, sizeof(h));
	f->attempt = 0;
	f->src = c->self;
	f->t0 = craft__now(c);
	craft__log(c, "event=snapshot-fetch index=%" PRIu64 " from=%s", min_index,
		   f->hint[0] ? f->hint : "leader");
	craft__fetch_restart(c, 0);
}

/* The whole view is in the store and checked: the install is complete (one synced write drops
 * the marker and records the view's index as applied), the queue state machine is reloaded,
 * and the entries committed meanwhile are applied from the log. */
static void
craft__fetch_finish(struct craft *c)
{
	struct craft_fetch *f = &c->fetch;
	struct store_batch b;
	store_batch_init(&b);
	int rv = store_batch_delete(&b, STORE_CF_META, STORE_META_INSTALL,
				    sizeof(STORE_META_INSTALL) - 1);
	if (!rv)
		rv = store_applied_put(&b, f->view_index);
	/* the view may be newer than the descriptor installed: its book is the one at its index
	 * (none carried: the one installed with the descriptor stays) */
	if (!rv)
		rv = craft__book_replace(c, &f->view_book, &b);
	if (!rv)
		rv = c->io.write_now(c->io.arg, &b, 1);
	store_batch_fini(&b);
	c->stats.fsyncs++;
	if (rv) {
		craft__log(c, "snapshot install: final write error=\"%s\"; fetched again",
			   store_strerror(rv));
		c->counters.snapshot_fetch_failures++;
		craft__fetch_restart(c, CRAFT_FETCH_RESTART_MS);
		return;
	}
	f->active = 0;
	free(f->val);
	f->val = NULL;
	if ((rv = queue_fsm_reload(c->fsm))) {
		craft__log(c,
			   "snapshot install: reload error=\"%s\"; apply stopped, restart to "
			   "reload",
			   queue_strerror(rv));
		c->failed = cluster__queue_err(rv);
		return;
	}
	c->applied = c->durable_applied = c->synced_applied = f->view_index;
	c->counters.snapshots_installed++;
	if (c->io.state_loaded)
		c->io.state_loaded(c->io.arg, c->applied);
	/* the data is durable here: only now does the snapshot count (its acknowledgement goes to
	 * the leader; this node may vote, be elected, be counted and be promoted again) */
	int arv = raft_snapshot_installed(c->raft);
	if (arv)
		craft__log(c, "snapshot install: ack error=\"%s\"", raft_strerror(arv));
	craft__log(c,
		   "event=snapshot-installed index=%" PRIu64 " keys=%" PRIu64 " bytes=%" PRIu64
		   " ms=%" PRIu64 " catch_up=%" PRIu64,
		   f->view_index, f->digest.keys, f->digest.bytes, craft__now(c) - f->t0,
		   c->handed > c->applied ? c->handed - c->applied : 0);
	/* the entries the core handed out while we fetched are durable in the log: apply them */
	struct craft_list done = {0};
	uint64_t before = c->applied;
	for (uint64_t i = c->applied + 1; i <= c->handed && !c->failed; i++) {
		struct store_entry se;
		void *buf;
		if ((rv = store_log_get(c->store, i, &se, &buf))) {
			craft__log(c,
				   "snapshot install: log entry index=%" PRIu64
				   " error=\"%s\"; apply stopped",
				   i, store_strerror(rv));
			c->failed = cluster__store_err(rv);
			break;
		}
		struct raft_entry e = {.index = se.index,
				       .term = se.term,
				       .type = (uint8_t)se.type,
				       .len = (uint32_t)se.len,
				       .data = (void *)se.data};
		craft__apply_entry(c, &e, &done);
		free(buf);
	}
	if (c->applied != before && (rv = store_applied_put(&c->next_state, c->applied)))
		c->failed = cluster__store_err(rv);
	if (c->handed < c->applied)
		c->handed = c->applied;
	craft__complete(c, &done);
	craft__start_write(c);
	craft__schedule(c);
}

/* Validates one piece against the fetch position and adds what completes to b. */
static int
craft__fetch_kv(struct craft *c, const Relay__SnapshotKV *kv, struct store_batch *b)
{
	struct craft_fetch *f = &c->fetch;
	int ci = craft__snap_ci(kv->cf);
	uint64_t off = kv->has_offset ? kv->offset : 0;
	if (ci < 0 || kv->key.len > STORE_KEY_MAX || kv->size > STORE_VALUE_MAX || off > kv->size ||
	    kv->data.len > kv->size - off)
		return -1;
	if (f->offset) {
		/* the rest of a value in pieces: same key, in order */
		if (ci != f->ci || off != f->offset || kv->size != f->val_size ||
		    kv->key.len != f->klen || memcmp(kv->key.data, f->key, f->klen))
			return -1;
	} else {
		/* a new key: at or after the position, nothing before it skipped */
		if (off != 0 || ci < f->ci)
			return -1;
		if (ci == f->ci && f->has_key) {
			size_t m = kv->key.len < f->klen ? kv->key.len : f->klen;
			int cmp = memcmp(kv->key.data, f->key, m);
			if (cmp < 0 || (cmp == 0 && kv->key.len < f->klen))
				return -1;
		}
		store_digest_kv(&f->digest, craft__snap_cfs[ci], kv->key.data, kv->key.len,
				kv->size);
		f->ci = ci;
		memcpy(f->key, kv->key.data, kv->key.len);
		f->klen = kv->key.len;
		f->has_key = 1;
	}
	store_digest_data(&f->digest, kv->data.data, kv->data.len);
	c->counters.snapshot_fetch_bytes += kv->data.len + (off ? 0 : kv->key.len);
	const void *val = kv->data.data;
	if (off + kv->data.len < kv->size || off) {
		/* a value in pieces: assembled here (at most STORE_VALUE_MAX) */
		if (!off) {
			free(f->val);
			if (!(f->val = malloc(kv->size)))
				return CLUSTER_ENOMEM;
			f->val_size = kv->size;
		}
		memcpy(f->val + off, kv->data.data, kv->data.len);
		f->offset = off + kv->data.len;
		if (f->offset < f->val_size)
			return 0;
		val = f->val;
	}
	int rv = store_batch_put(b, craft__snap_cfs[ci], kv->key.data, kv->key.len, val, kv->size);
	/* the next position: just after this key */
	f->offset = 0;
	f->key[f->klen++] = 0;
	return rv ? cluster__store_err(rv) : 0;
}

/* A chunk answered our fetch request. */
void
craft__fetch_chunk(struct craft *c, size_t pi, const void *data, size_t len)
{
	struct craft_fetch *f = &c->fetch;
	Relay__SnapshotChunk *ch = relay__snapshot_chunk__unpack(NULL, len, data);
	if (!ch) {
		c->counters.raft_dropped++;
		return;
	}
	if (!f->active || pi != f->src || ch->session != f->session || ch->seq != f->seq ||
	    !f->deadline)
		goto out; /* an old answer */
	f->deadline = 0;
	f->tries = 0;
	if (ch->status == RELAY__SNAPSHOT_STATUS__SNAP_RETRY) {
		f->next_at = craft__now(c) + CRAFT_FETCH_RETRY_MS;
		goto out;
	}
	int bad = 0;
	if (ch->status != RELAY__SNAPSHOT_STATUS__SNAP_OK || !ch->has_index || !ch->has_view_id) {
		bad = 1;
	} else if (!f->bound) {
		if (ch->index < f->min_index ||
		    craft__book_from_proto(&f->view_book, ch->peers, ch->n_peers)) {
			bad = 1;
		} else {
			f->bound = 1;
			f->view_index = ch->index;
			f->view_id = ch->view_id;
			f->view_keys = ch->keys;
			f->view_bytes = ch->bytes;
			f->view_crc = ch->crc;
		}
	} else if (ch->view_id != f->view_id || ch->index != f->view_index) {
		bad = 1;
	}
	struct store_batch b;
	store_batch_init(&b);
	for (size_t i = 0; !bad && i < ch->n_kvs; i++)
		if (craft__fetch_kv(c, ch->kvs[i], &b))
			bad = 1;
	if (!bad && b.len && c->io.write_now(c->io.arg, &b, 0))
		bad = 1;
	store_batch_fini(&b);
	if (!bad && ch->done &&
	    (f->offset || f->digest.keys != f->view_keys || f->digest.bytes != f->view_bytes ||
	     f->digest.crc != f->view_crc)) {
		craft__log(c,
			   "snapshot fetch: the copy does not match the view index=%" PRIu64
			   " keys=%" PRIu64 "/%" PRIu64 " bytes=%" PRIu64 "/%" PRIu64,
			   f->view_index, f->digest.keys, f->view_keys, f->digest.bytes,
			   f->view_bytes);
		bad = 1;
	}
	if (bad) {
		c->counters.snapshot_fetch_failures++;
		craft__log(c, "snapshot fetch: from=%s status=%d; a new session", c->peers[pi].name,
			   (int)ch->status);
		craft__fetch_restart(c, CRAFT_FETCH_RESTART_MS);
	} else if (ch->done) {
		craft__fetch_finish(c);
	} else {
		craft__fetch_send(c);
	}
out:
	relay__snapshot_chunk__free_unpacked(ch, NULL);
}

/* Timeouts and delayed requests of the fetch (every tick). */
void
craft__fetch_tick(struct craft *c, uint64_t now)
{
	struct craft_fetch *f = &c->fetch;
	if (!f->active)
		return;
	if (!f->wiped) {
		craft__fetch_restart(c, 0);
		return;
	}
	if (f->deadline && now >= f->deadline) {
		c->counters.snapshot_fetch_failures++;
		int gone =
		    f->src >= c->n_peers || !c->io.peer_connected(c->io.arg, c->peers[f->src].name);
		if (++f->tries >= CRAFT_FETCH_TRIES || gone) {
			craft__log(c, "snapshot fetch: no answer from=%s%s; another node",
				   c->peers[f->src].name, gone ? " (not connected)" : "");
			craft__fetch_restart(c, 0);
		} else {
			craft__fetch_send(c);
		}
		return;
	}
	if (!f->deadline && f->next_at && now >= f->next_at)
		craft__fetch_send(c);
}

/* Installs the snapshot of rd: the log is dropped, the queue state wiped and marked incomplete
 * (STORE_META_INSTALL) in one synced write on the loop thread (no write is in flight); the
 * state machine is reloaded (empty) and the fetch of the key/values starts.  Committed entries
 * wait in the log until the fetch completes (craft__fetch_finish). */
/* Installs the snapshot of rd when this node's queue state is already at or past its index
 * (applied and written): one synced write records the hard state and drops the log after the
 * applied index (nothing there is committed here: what the leader sends next replaces it);
 * nothing is fetched, and the snapshot counts at once (craft__handle_ready acknowledges it
 * once persisted).  The log up to the applied index stays: the queue state written for it may
 * be in memtables only (STORE_WRITE_NOWAL), and after a crash the log replays it.  Entries up
 * to the snapshot's index go with the snapshot meta in the state batch, as a compaction's do;
 * those after it are committed and the same as the leader's, so appends over them (log_last
 * 0: no truncation) rewrite them unchanged. */
static int
craft__install_have(struct craft *c, const struct raft_ready *rd)
{
	struct store_batch *b = &c->next;
	/* The meta and the log up to it go with the state (NOWAL) when the state at the snapshot's
	 * index may exist in memtables only: a crash then keeps both or neither.  When that state is
	 * on disk for good (synced_applied: a fetch's synced final write, or a load), they go with
	 * the synced write: after a fetch of a view newer than its descriptor the log may not hold
	 * the entries between the old meta and this one (never received), and a crash that kept
	 * the entries appended after this snapshot but not a NOWAL meta would leave a hole in the
	 * log (host_sim --seed 9000000 --nodes 5 --steps 110000 --pauses: "open: log entry
	 * index=4567 error=key not found"). */
	struct store_batch *meta = c->synced_applied >= rd->snap->index ? b : &c->next_state;
	int rv = craft__hs_put(b, &rd->hs);
	if (!rv)
		rv = store_log_delete(b, c->applied + 1, UINT64_MAX);
	if (!rv)
		rv = craft__snap_put(meta, rd->snap, rd->snap_data, rd->snap_len);
	if (!rv)
		rv = store_log_delete(meta, 1, rd->snap->index);
	c->log_last = 0;
	if (rv) {
		craft__log(c, "snapshot install: batch error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct raft_ready rest = *rd;
	rest.hs_changed = false;
	if ((rv = craft__persist(c, &rest)))
		return rv;
	rv = c->io.write_now(c->io.arg, b, 1);
	c->stats.fsyncs++;
	if (rv) {
		craft__log(c, "snapshot install: write error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	store_batch_clear(b);
	c->install_seq = c->next_seq_persist;
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	c->snap_index = rd->snap->index;
	if (c->conf_index < rd->snap->index) {
		c->conf_committed = rd->snap->conf;
		c->conf_index = rd->snap->index;
	}
	c->install_ack = 1;
	craft__log(c,
		   "event=snapshot-installed index=%" PRIu64 " applied=%" PRIu64
		   ": the queue here is already past it, nothing fetched",
		   rd->snap->index, c->applied);
	return 0;
}

int
craft__install(struct craft *c, const struct raft_ready *rd)
{
	char hint[CLUSTER_ID_MAX + 1] = "";
	struct craft_book book = {0};
	if (rd->snap_len) {
		Relay__SnapshotDescriptor *d =
		    relay__snapshot_descriptor__unpack(NULL, rd->snap_len, rd->snap_data);
		if (d) {
			snprintf(hint, sizeof(hint), "%s", d->node);
			if (craft__book_from_proto(&book, d->peers, d->n_peers)) {
				c->counters.raft_dropped++;
				craft__log(c,
					   "snapshot install index=%" PRIu64
					   ": bad address book; ours is kept",
					   rd->snap->index);
			}
			relay__snapshot_descriptor__free_unpacked(d, NULL);
		}
	}
	struct store_batch *b = &c->next;
	/* the queue state here is already at or past the snapshot (a view newer than the last
	 * descriptor was fetched): the log and the snapshot meta change, the queue stays */
	int have = !c->fetch.active && c->applied >= rd->snap->index &&
		   c->durable_applied >= rd->snap->index;
	if (have)
		return craft__install_have(c, rd);
	/* the queue writes not yet made are superseded by the wipe below (no write is in flight:
	 * craft_run holds a snapshot ready back until it completes) */
	store_batch_clear(&c->next_state);
	int rv = craft__hs_put(b, &rd->hs);
	if (!rv)
		rv = craft__wipe_queue(b);
	if (!rv)
		rv = store_log_delete(b, 1, UINT64_MAX);
	/* the snapshot's address book replaces ours (none: ours is kept) */
	if (!rv)
		rv = craft__book_replace(c, &book, b);
	if (!rv)
		rv = craft__snap_put(b, rd->snap, rd->snap_data, rd->snap_len);
	if (!rv)
		rv = store_applied_put(b, rd->snap->index);
	if (!rv)
		rv = craft__marker_put(b, rd->snap->index, hint);
	c->log_last = 0;
	if (rv) {
		craft__log(c, "snapshot install: batch error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	/* entries of the same ready follow the snapshot */
	struct raft_ready rest = *rd;
	rest.hs_changed = false;
	if ((rv = craft__persist(c, &rest)))
		return rv;
	rv = c->io.write_now(c->io.arg, b, 1);
	c->stats.fsyncs++;
	if (rv) {
		craft__log(c, "snapshot install: write error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	store_batch_clear(b);
	c->install_seq = c->next_seq_persist; /* reported with the ready's own seq */
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	if ((rv = queue_fsm_reload(c->fsm))) {
		craft__log(c, "snapshot install: reload error=\"%s\"", queue_strerror(rv));
		return cluster__queue_err(rv);
	}
	c->applied = c->durable_applied = c->handed = rd->snap->index;
	c->snap_index = rd->snap->index;
	c->conf_committed = rd->snap->conf;
	c->conf_index = rd->snap->index;
	/* a fetch in progress for an older snapshot starts over for this one */
	free(c->fetch.val);
	c->fetch.val = NULL;
	craft__fetch_begin(c, rd->snap->index, hint);
	return 0;
}

/* ---- the run: proposals in, readies out ---- */

/* Submits p: 1 when done (proposed here or forwarded), 0 when it must wait. */
