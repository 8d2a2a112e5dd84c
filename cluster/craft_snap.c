/*
 * craft_snap.c - snapshots on the serving side (craft_int.h): consistent views of the store,
 * digested off the edge's thread; compacting the log to a view (the Raft snapshot's data is only
 * a SnapshotDescriptor); serving fetch sessions from views (any node whose store is complete).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"

static void craft__compact(struct craft *c, struct craft_view *vw);

void
craft__view_unref(struct craft_view *vw)
{
	if (vw && --vw->refs == 0) {
		store_view_free(vw->v);
		free(vw);
	}
}

/* The digest started by craft__view_prepare completed (rv: its result). */
void
craft_digest_done(struct craft *c, int rv)
{
	struct craft_view *vw = c->prep;
	int compact = c->prep_compact;
	c->prep = NULL;
	c->digesting = 0;
	if (!vw)
		return;
	if (c->closing) {
		craft__view_unref(vw);
		return;
	}
	if (rv) {
		craft__log(c, "event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", vw->index,
			   store_strerror(rv));
		craft__view_unref(vw);
		return;
	}
	craft__log(c,
		   "event=snapshot-view index=%" PRIu64 " keys=%" PRIu64 " bytes=%" PRIu64
		   " ms=%" PRIu64,
		   vw->index, vw->digest.keys, vw->digest.bytes, craft__now(c) - vw->t0);
	/* the newest view serves new fetch sessions; sessions keep the one they started on */
	if (!c->view || vw->index >= c->view->index) {
		craft__view_unref(c->view);
		c->view = vw;
	} else {
		craft__view_unref(vw);
		vw = NULL;
	}
	if (compact && vw) {
		craft__compact(c, vw);
		/* A view is a RocksDB snapshot: while it lives, whatever it shows and is deleted
		 * after it (the log entries the compaction just dropped, the bodies delivered
		 * since) is written out by every memtable flush and read back by compactions, only
		 * to be dropped there (issue 14 part 6: the log's bodies were most of each flush).
		 * Unless a fetch session serves from it, let it go now: a peer that needs the state
		 * gets a view taken on demand (craft__serve answers RETRY meanwhile). */
		if (c->view == vw && vw->refs == 1 && c->snap_index == vw->index) {
			c->view = NULL;
			craft__view_unref(vw);
		}
	}
	craft__schedule(c);
}

/*
 * Takes a consistent view of the store now and digests it off the loop thread; then it becomes
 * the view new fetch sessions are served from (and, with compact, the Raft snapshot).  The
 * view's index is the applied index stored with it: the apply writes and the applied index
 * travel in the same atomic write, so a view is always the state at exactly that index.
 */
int
craft__view_prepare(struct craft *c, int compact, uint64_t min_index)
{
	if (c->digesting || c->fetch.active || c->closing)
		return CLUSTER_EBUSY;
	struct craft_view *vw = calloc(1, sizeof(*vw));
	if (!vw)
		return CLUSTER_ENOMEM;
	int rv = store_view_new(c->store, &vw->v);
	if (rv) {
		free(vw);
		return cluster__store_err(rv);
	}
	vw->refs = 1;
	vw->t0 = craft__now(c);
	vw->id = c->io.random64(c->io.arg);
	void *m;
	size_t ml;
	if ((rv = store_view_applied_get(vw->v, &vw->index)) ||
	    store_view_get(vw->v, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			   &m, &ml) != STORE_ENOTFOUND) {
		if (!rv)
			free(m);
		craft__view_unref(vw);
		return rv ? cluster__store_err(rv) : CLUSTER_EBUSY;
	}
	if (vw->index < min_index || vw->index == 0) {
		craft__view_unref(vw);
		return CLUSTER_ENOTFOUND;
	}
	craft__view_book(c, vw);
	c->prep = vw;
	c->prep_compact = compact;
	c->digesting = 1;
	if ((rv = c->io.digest_start(c->io.arg, vw->v, craft__snap_cfs, CRAFT_SNAP_NCFS,
				     &vw->digest))) {
		c->prep = NULL;
		c->digesting = 0;
		craft__view_unref(vw);
		return CLUSTER_EIO;
	}
	return 0;
}

/* Compacts the log up to vw's index: the Raft snapshot's data is vw's descriptor. */
static void
craft__compact(struct craft *c, struct craft_view *vw)
{
	if (c->have_held || c->failed || c->fetch.active || vw->index <= c->snap_index)
		return;
	/* again now that the view is digested: a member may have fallen behind meanwhile (a
	 * learner just added, a snapshot just sent) */
	if (craft__retain(c))
		return;
	Relay__SnapshotDescriptor d = RELAY__SNAPSHOT_DESCRIPTOR__INIT;
	d.index = vw->index;
	d.view_id = vw->id;
	d.node = c->peers[c->self].name;
	d.has_keys = d.has_bytes = d.has_crc = 1;
	d.keys = vw->digest.keys;
	d.bytes = vw->digest.bytes;
	d.crc = vw->digest.crc;
	Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS], *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	d.n_peers = craft__book_to_proto(&vw->book, ps, pp);
	d.peers = pp;
	unsigned char buf[CRAFT_DESCRIPTOR_MAX];
	size_t len = relay__snapshot_descriptor__get_packed_size(&d);
	if (len > sizeof(buf))
		return;
	relay__snapshot_descriptor__pack(&d, buf);
	int rv = raft_compact(c->raft, vw->index, buf, len);
	if (rv) {
		craft__log(c, "event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", vw->index,
			   raft_strerror(rv));
		return;
	}
	struct raft_snap_meta meta;
	raft_snap_meta(c->raft, &meta);
	/* with the queue state it stands for (store.h: never a log deletion in a WAL write while
	 * the state it replaces may still be lost) */
	size_t blen = c->next_state.len;
	unsigned bcount = c->next_state.count;
	rv = craft__snap_put(&c->next_state, &meta, buf, len);
	if (!rv)
		rv = store_log_delete(&c->next_state, 1, meta.index);
	if (rv) {
		/* the core compacted; the store keeps the log (replayed at open): harmless */
		c->next_state.len = blen;
		c->next_state.count = bcount;
		craft__log(c, "snapshot not persisted error=\"%s\"", store_strerror(rv));
	}
	c->snap_index = meta.index;
	c->log_bytes = 0;
	c->counters.snapshots++;
	craft__log(
	    c, "event=snapshot index=%" PRIu64 " term=%" PRIu64 " keys=%" PRIu64 " bytes=%" PRIu64,
	    meta.index, meta.term, vw->digest.keys, vw->digest.bytes);
	craft__start_write(c);
}

/* 1 when this node keeps its log instead of compacting it now: a member still needs entries
 * a compaction to the applied index would drop, and the log holds less than
 * CRAFT_RETAIN_LOG_BYTES and CRAFT_RETAIN_ENTRIES.  The leader knows who: a member heard from
 * within the last CRAFT_RETAIN_SILENT_ELECTIONS election timeouts whose log stops short of it
 * (e.g. restarted), or one installing an older snapshot (it continues from that snapshot's index
 * once its data is in).  Any node knows the members it serves a fetch to (or served one to
 * within that time): each continues from the index of the view it fetched, so the log after it
 * is kept here too; this node may lead by the time the fetch is done (a fetch of a large queue
 * outlives elections), and a leader compacted past the view would make that member fetch the
 * whole queue again.  A member that just restarted, or finished fetching, thus catches up by log
 * instead of needing a (new) snapshot and wiping what it holds.  Beyond the bound the log is
 * compacted anyway (logged, counted): that member gets a snapshot. */
int
craft__retain(struct craft *c)
{
	struct raft_status rs;
	raft_status(c->raft, &rs);
	uint64_t floor = UINT64_MAX, now = craft__now(c);
	size_t who = SIZE_MAX;
	for (size_t pi = 0; pi < c->n_peers; pi++) {
		if (pi == c->self || !c->pserved[pi] ||
		    now - c->pserved_ms[pi] >= c->retain_silent_ms)
			continue;
		if (c->pserved[pi] < floor) {
			floor = c->pserved[pi];
			who = pi;
		}
	}
	for (uint32_t k = 0; rs.role == RAFT_LEADER && k < rs.n_peers; k++) {
		const struct raft_peer_status *p = &rs.peers[k];
		if (p->id == c->id)
			continue;
		/* a member silent for long is not waited for (it gets a snapshot when it is back)
		 */
		int pi = craft__peer_by_id(c, p->id);
		if (p->state != 2 && (pi < 0 || c->last_contact[pi] < 0 ||
				      now - (uint64_t)c->last_contact[pi] >= c->retain_silent_ms))
			continue;
		uint64_t need = p->match;
		if (p->state == 2 && p->pending_snap > need)
			need = p->pending_snap;
		if (p->state == 0 && p->next - 1 > need)
			need = p->next - 1;
		if (need < floor) {
			floor = need;
			who = pi < 0 ? SIZE_MAX : (size_t)pi;
		}
	}
	if (floor >= c->durable_applied) {
		c->retaining = 0;
		return 0;
	}
	const char *name = who < c->n_peers ? c->peers[who].name : "?";
	uint64_t entries = rs.last_index - rs.snap_index;
	if (c->log_bytes < CRAFT_RETAIN_LOG_BYTES && entries < c->retain_entries) {
		if (!c->retaining || now - c->retain_log_ms >= CRAFT_RETAIN_LOG_MS) {
			c->counters.snapshots_deferred += !c->retaining;
			craft__log(c,
				   "event=snapshot-deferred member=%s needs=%" PRIu64
				   " applied=%" PRIu64 " log_entries=%" PRIu64
				   " log_bytes=%" PRIu64,
				   name, floor, c->durable_applied, entries, c->log_bytes);
			c->retain_log_ms = now;
		}
		c->retaining = 1;
		return 1;
	}
	c->retaining = 0;
	c->counters.retention_exceeded++;
	craft__log(c,
		   "event=retention-exceeded member=%s needs=%" PRIu64 " log_entries=%" PRIu64
		   " log_bytes=%" PRIu64 ": compacting; it will need a snapshot",
		   name, floor, entries, c->log_bytes);
	return 0;
}

/* Draws the interval from the last snapshot (or attempt) to the next: snapshot_entries, less
 * a random part of up to a quarter when spreading is on (craft_config.snapshot_spread), so it
 * differs between the nodes and between the intervals.  The nodes apply the same entries: with
 * one interval they all digested a view, compacted, and then (once the previous view was
 * released) ran RocksDB's compaction of the deleted log at the same instant, which on a small
 * machine was a latency spike for every client (issue 14 part 6). */
void
craft__snap_draw(struct craft *c)
{
	uint64_t n = c->snapshot_entries, q = n / 4;
	c->snap_every = n;
	if (c->snapshot_spread && q)
		c->snap_every -= c->io.random64(c->io.arg) % (q + 1);
}

/* Takes a snapshot when snap_every entries (or CRAFT_SNAPSHOT_LOG_BYTES of entry data) were
 * applied since the last one (or the last attempt).  The queue is never read into memory:
 * a view of the store is digested off the loop thread, then the log is compacted to it. */
void
craft__maybe_snapshot(struct craft *c)
{
	if (c->have_held || c->failed || c->closing || c->fetch.active || c->digesting)
		return;
	uint64_t since = c->snap_index > c->snap_tried ? c->snap_index : c->snap_tried;
	/* the in-memory log (CLUSTER_LOG_ENTRIES at most: beyond, proposals are refused, nothing is
	 * applied, and an interval counted from a failed attempt would never come) filling up:
	 * try again whatever the interval says */
	int filling = c->applied >= c->snap_index + CLUSTER_MAX_SNAPSHOT_ENTRIES +
					CLUSTER_MAX_SNAPSHOT_ENTRIES / 2;
	if (c->applied < since + c->snap_every &&
	    !(c->applied > since && c->applied_bytes >= CRAFT_SNAPSHOT_LOG_BYTES) && !filling)
		return;
	if (c->durable_applied <= c->snap_index)
		return; /* the store has nothing newer yet */
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (rs.applied < c->durable_applied)
		return; /* state fetched past the log (the core compacts only what it applied) */
	/* the view holds what is written (durable_applied, or the write in flight), which may be
	 * well behind what is applied in memory: count the next interval from there */
	if (craft__retain(c))
		return; /* tried again at the next tick: the member may catch up, or fall silent */
	c->snap_tried = c->durable_applied;
	craft__snap_draw(c);
	c->applied_bytes = 0;
	int rv = craft__view_prepare(c, 1, c->snap_index + 1);
	if (rv && rv != CLUSTER_EBUSY)
		craft__log(c, "event=snapshot-skipped index=%" PRIu64 " error=\"%s\"", c->applied,
			   cluster_strerror(rv));
}

/* ---- serving fetches (any node whose store holds the queue state) ---- */

void
craft__serve_release(struct craft_serve *sv)
{
	craft__view_unref(sv->view);
	memset(sv, 0, sizeof(*sv));
}

/* Frees the key/values of a chunk built by craft__serve_read. */
static void
craft__chunk_kvs_free(Relay__SnapshotChunk *ch)
{
	for (size_t i = 0; i < ch->n_kvs; i++) {
		free(ch->kvs[i]->key.data);
		free(ch->kvs[i]->data.data);
		free(ch->kvs[i]);
	}
	free(ch->kvs);
	ch->kvs = NULL;
	ch->n_kvs = 0;
}

/* Reads the chunk at the position of f from vw into ch (kvs, done): at most
 * CRAFT_SNAP_CHUNK_BYTES of keys and values, at most CRAFT_SNAP_CHUNK_KVS pieces. */
static int
craft__serve_read(struct craft_view *vw, const Relay__SnapshotFetch *f, Relay__SnapshotChunk *ch,
		  size_t chunk_bytes)
{
	int ci0 = craft__snap_ci(f->cf);
	if (ci0 < 0 || (f->has_key && f->key.len > STORE_KEY_MAX + 1) ||
	    (f->has_offset && f->offset && !f->has_key))
		return CRAFT_SERVE_RESTART;
	ch->kvs = calloc(CRAFT_SNAP_CHUNK_KVS, sizeof(*ch->kvs));
	if (!ch->kvs)
		return CLUSTER_ENOMEM;
	size_t budget = chunk_bytes;
	int full = 0, rv = 0;
	for (int ci = ci0; ci < CRAFT_SNAP_NCFS && !full && !rv; ci++) {
		struct store_iter *it;
		if ((rv = store_view_iter_new(vw->v, craft__snap_cfs[ci], &it)))
			break;
		int first = ci == ci0;
		if (first && f->has_key)
			store_iter_seek(it, f->key.data, f->key.len);
		else
			store_iter_seek(it, NULL, 0);
		for (; store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *v = store_iter_value(it, &vl);
			uint64_t off = 0;
			if (first && f->has_offset && f->offset) {
				/* resuming inside a value: it must be that key */
				if (kl != f->key.len || memcmp(k, f->key.data, kl) ||
				    f->offset > vl) {
					rv = CRAFT_SERVE_RESTART;
					break;
				}
				off = f->offset;
			}
			first = 0;
			if (budget == 0 || ch->n_kvs == CRAFT_SNAP_CHUNK_KVS) {
				full = 1;
				break;
			}
			size_t piece = vl - off < budget ? vl - off : budget;
			Relay__SnapshotKV *kv = calloc(1, sizeof(*kv));
			if (!kv) {
				rv = CLUSTER_ENOMEM;
				break;
			}
			relay__snapshot_kv__init(kv);
			ch->kvs[ch->n_kvs++] = kv;
			kv->cf = craft__snap_cfs[ci];
			kv->size = vl;
			kv->has_offset = off != 0;
			kv->offset = off;
			kv->key.data = malloc(kl ? kl : 1);
			kv->data.data = malloc(piece ? piece : 1);
			if (!kv->key.data || !kv->data.data) {
				rv = CLUSTER_ENOMEM;
				break;
			}
			memcpy(kv->key.data, k, kl);
			kv->key.len = kl;
			memcpy(kv->data.data, v + off, piece);
			kv->data.len = piece;
			budget -= piece;
			budget = budget > kl ? budget - kl : 0;
			if (off + piece < vl) {
				full = 1; /* the rest of this value comes in the next chunk */
				break;
			}
		}
		if (!rv)
			rv = store_iter_status(it) ? CLUSTER_EIO : 0;
		store_iter_free(it);
	}
	ch->has_done = 1;
	ch->done = !full && !rv;
	return rv;
}

static void
craft__send_chunk(struct craft *c, size_t pi, Relay__SnapshotChunk *ch)
{
	size_t len = relay__snapshot_chunk__get_packed_size(ch);
	void *buf = malloc(len ? len : 1);
	if (!buf) {
		c->counters.raft_dropped++;
		return;
	}
	relay__snapshot_chunk__pack(ch, buf);
	craft__out(c, pi, CRAFT_KIND_SNAP_CHUNK, buf, len);
	free(buf);
}

/* A fetch request from peer pi: answer with the next chunk of its session's view. */
void
craft__serve(struct craft *c, size_t pi, const void *data, size_t len)
{
	Relay__SnapshotFetch *f = relay__snapshot_fetch__unpack(NULL, len, data);
	if (!f) {
		c->counters.raft_dropped++;
		return;
	}
	Relay__SnapshotChunk ch = RELAY__SNAPSHOT_CHUNK__INIT;
	Relay__Peer bps[CLUSTER_MAX_PEERS + CRAFT_TOMBS], *bpp[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	ch.session = f->session;
	ch.seq = f->seq;
	ch.status = RELAY__SNAPSHOT_STATUS__SNAP_OK;
	uint64_t now = craft__now(c);
	struct craft_serve *sv = NULL, *slot = NULL;
	int start = craft__snap_ci(f->cf) == 0 && !f->has_key && !(f->has_offset && f->offset);
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++) {
		if (c->serve[i].used && c->serve[i].peer == pi && c->serve[i].session == f->session)
			sv = &c->serve[i];
		else if (c->serve[i].used && c->serve[i].peer == pi && start)
			craft__serve_release(&c->serve[i]); /* a peer fetches one view at a time */
		if (!c->serve[i].used && !slot)
			slot = &c->serve[i];
	}
	if (!sv) {
		if (!start || f->session == 0) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RESTART;
			goto reply;
		}
		if (c->fetch.active || c->failed) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_UNAVAILABLE;
			goto reply;
		}
		if (!c->view || c->view->index < f->min_index) {
			/* no view new enough: take one now (unless one is being digested) */
			int rv =
			    c->digesting ? CLUSTER_EBUSY : craft__view_prepare(c, 0, f->min_index);
			ch.status = rv == CLUSTER_ENOTFOUND
					? RELAY__SNAPSHOT_STATUS__SNAP_UNAVAILABLE
					: RELAY__SNAPSHOT_STATUS__SNAP_RETRY;
			goto reply;
		}
		if (!slot) {
			ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RETRY; /* serving enough already */
			goto reply;
		}
		sv = slot;
		sv->used = 1;
		sv->peer = pi;
		sv->session = f->session;
		sv->view = c->view;
		c->view->refs++;
		c->counters.snapshot_serves++;
		craft__log(c,
			   "event=snapshot-serve peer=%s index=%" PRIu64 " keys=%" PRIu64
			   " bytes=%" PRIu64,
			   c->peers[pi].name, sv->view->index, sv->view->digest.keys,
			   sv->view->digest.bytes);
	}
	sv->last_ms = now;
	c->pserved[pi] = sv->view->index;
	c->pserved_ms[pi] = now;
	int rv = craft__serve_read(sv->view, f, &ch, c->snap_chunk_bytes);
	if (rv == CRAFT_SERVE_RESTART) {
		craft__chunk_kvs_free(&ch);
		craft__serve_release(sv);
		ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RESTART;
		ch.has_done = 0;
		goto reply;
	}
	if (rv) {
		/* our own trouble (memory, disk): the follower asks again */
		craft__log(c, "snapshot serve: read error=\"%s\"", cluster_strerror(rv));
		craft__chunk_kvs_free(&ch);
		ch.status = RELAY__SNAPSHOT_STATUS__SNAP_RETRY;
		ch.has_done = 0;
		goto reply;
	}
	ch.has_index = ch.has_view_id = ch.has_keys = ch.has_bytes = ch.has_crc = 1;
	ch.index = sv->view->index;
	ch.view_id = sv->view->id;
	ch.keys = sv->view->digest.keys;
	ch.bytes = sv->view->digest.bytes;
	ch.crc = sv->view->digest.crc;
	/* the first chunk of a session binds it: the view's address book comes with it */
	if (start) {
		ch.n_peers = craft__book_to_proto(&sv->view->book, bps, bpp);
		ch.peers = bpp;
	}
	for (size_t i = 0; i < ch.n_kvs; i++)
		c->counters.snapshot_served_bytes += ch.kvs[i]->data.len + ch.kvs[i]->key.len;
	if (ch.done)
		craft__serve_release(sv);
reply:
	craft__send_chunk(c, pi, &ch);
	craft__chunk_kvs_free(&ch);
	relay__snapshot_fetch__free_unpacked(f, NULL);
}

/* Drops the sessions idle for CRAFT_SNAP_SESSION_IDLE_MS (their views with them). */
void
craft__serve_expire(struct craft *c, uint64_t now)
{
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++)
		if (c->serve[i].used && now - c->serve[i].last_ms >= CRAFT_SNAP_SESSION_IDLE_MS)
			craft__serve_release(&c->serve[i]);
}
