/*
 * craft_meta.c - the replicated host's Raft metadata in the store (craft_int.h): the hard state,
 * the snapshot meta and its data (a descriptor), the install marker of an incomplete snapshot
 * install; and opening: loading all of it into the core (or bootstrapping), recovering from an
 * install that a crash interrupted.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"
#include "queue_fsm.h"

/* The queue state: exactly the key/values of these CFs, streamed in this order. */
const enum store_cf craft__snap_cfs[CRAFT_SNAP_NCFS] = {STORE_CF_QUEUE, STORE_CF_BODY,
							STORE_CF_INDEX};

int
craft__snap_ci(uint32_t cf)
{
	for (int i = 0; i < CRAFT_SNAP_NCFS; i++)
		if ((uint32_t)craft__snap_cfs[i] == cf)
			return i;
	return -1;
}

int
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

int
craft_stored_commit(struct store *s, uint64_t *commit)
{
	struct raft_hard_state hs;
	int rv = craft__hs_get(s, &hs);
	if (!rv)
		*commit = hs.commit;
	return rv;
}

int
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

int
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

/* The install marker (STORE_META_INSTALL): version, min index, the node the descriptor names. */
int
craft__marker_put(struct store_batch *b, uint64_t min_index, const char *node)
{
	unsigned char v[1 + 8 + CLUSTER_ID_MAX];
	size_t nl = strnlen(node, CLUSTER_ID_MAX);
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(min_index, v + 1);
	memcpy(v + 9, node, nl);
	return store_batch_put(b, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			       v, 9 + nl);
}

/* 0 with the marker's fields, STORE_ENOTFOUND when no install is pending. */
static int
craft__marker_get(struct store *s, uint64_t *min_index, char node[CLUSTER_ID_MAX + 1])
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, STORE_META_INSTALL, sizeof(STORE_META_INSTALL) - 1,
			   (void **)&v, &vlen);
	if (rv)
		return rv;
	if (vlen < 9 || vlen > 9 + CLUSTER_ID_MAX || v[0] != CRAFT_META_VERSION) {
		free(v);
		return STORE_ECORRUPT;
	}
	*min_index = store_u64_decode(v + 1);
	memcpy(node, v + 9, vlen - 9);
	node[vlen - 9] = 0;
	free(v);
	return 0;
}

/* Adds the deletion of the whole queue state (the three CFs) to b. */
int
craft__wipe_queue(struct store_batch *b)
{
	int rv = 0;
	for (int i = 0; !rv && i < CRAFT_SNAP_NCFS; i++)
		rv = store_batch_wipe_cf(b, craft__snap_cfs[i]);
	return rv;
}

/* Loads the durable raft state and gives it to the core (or bootstraps a new cluster). */
int
craft__load(struct craft *c)
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
	c->synced_applied = c->applied; /* read from the disk: what a crash keeps */
	if (rv == STORE_ENOTFOUND) {
		struct queue_counts qc;
		queue_fsm_counts(c->fsm, &qc);
		if (c->applied || last || qc.messages) {
			craft__log(c,
				   "open: the data dir holds a single node's queue; a replicated "
				   "node needs an empty data_dir");
			return CLUSTER_EINVAL;
		}
		if (c->bt.have_rec) {
			/* bootstrapped, but the first Raft write did not happen: the same again */
			c->conf_index = 1;
			return craft__boot_replay(c);
		}
		/* empty: no Raft state until the configuration admits this node (craft_boot.c) */
		struct raft_snap_meta empty = {0};
		rv = raft_restore(c->raft, &hs, &empty, NULL, 0, NULL, 0);
		if (rv) {
			craft__log(c, "open: error=\"%s\"", raft_strerror(rv));
			return CLUSTER_EINVAL;
		}
		c->bt.phase = CRAFT_BOOT_DISCOVER;
		craft__log(c, "event=discover peers=%zu incarnation=%016" PRIx64 "%s",
			   c->n_peers - 1, c->inc,
			   c->join ? " (not in its own peers: joins an existing cluster)" : "");
		return 0;
	}
	if (rv) {
		craft__log(c, "open: raft hard state error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct raft_snap_meta snap = {0};
	void *sdata = NULL;
	size_t slen = 0;
	rv = craft__snap_get(c->store, &snap, &sdata, &slen);
	if (rv && rv != STORE_ENOTFOUND) {
		craft__log(c, "open: snapshot error=\"%s\"", store_strerror(rv));
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
				craft__log(c, "open: log entry index=%" PRIu64 " error=\"%s\"", i,
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
		craft__log(c, "open: raft restore error=\"%s\"", raft_strerror(rv));
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_ECORRUPT;
		goto out;
	}
	c->log_last = last;
	/* the queue is durable with its applied index: those entries are not handed out again.
	 * Only up to what this log holds as committed (the durable commit index): a fetched view
	 * may stand for entries this log holds from a deposed leader, which the core must still
	 * replace (the state machine skips them when they come back committed). */
	uint64_t upto = c->applied;
	if (upto > hs.commit)
		upto = hs.commit > snap.index ? hs.commit : snap.index;
	if (upto > snap.index && upto <= last && (rv = raft_set_applied(c->raft, upto)))
		craft__log(c, "open: raft_set_applied index=%" PRIu64 " error=\"%s\"", upto,
			   raft_strerror(rv));
	/* Raft state, but no configuration with this node in it yet (a crash between the first
	 * message of the leader and the configuration): still rejoining */
	{
		struct raft_status rs;
		raft_status(c->raft, &rs);
		if (!raft_conf_is_member(&rs.conf, c->id)) {
			c->bt.phase = CRAFT_BOOT_REJOIN;
			craft__log(c,
				   "open: not in the configuration it holds: asks to be taken in");
		}
	}
	/* an install that did not complete: nothing counts until its data is here again */
	if (c->fetch.active && (rv = raft_set_installing(c->raft)))
		craft__log(c, "open: raft_set_installing error=\"%s\"", raft_strerror(rv));
	if (c->applied < snap.index) {
		craft__log(c, "open: applied=%" PRIu64 " behind snapshot=%" PRIu64, c->applied,
			   snap.index);
		rv = CLUSTER_ECORRUPT;
		goto out;
	}
	craft__log(c,
		   "open: term=%" PRIu64 " commit=%" PRIu64 " applied=%" PRIu64 " snapshot=%" PRIu64
		   " entries=%zu",
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

/* A snapshot install that did not complete (the marker is in the store): its partial copy is
 * wiped before the queue is loaded, and the fetch starts again once the node is open. */
int
craft__install_recover(struct craft *c)
{
	uint64_t min_index;
	char hint[CLUSTER_ID_MAX + 1];
	int rv = craft__marker_get(c->store, &min_index, hint);
	if (rv == STORE_ENOTFOUND)
		return 0;
	if (rv) {
		craft__log(c, "open: install marker error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	struct store_batch b;
	store_batch_init(&b);
	rv = craft__wipe_queue(&b);
	if (!rv)
		rv = c->io.write_now(c->io.arg, &b, 1);
	store_batch_fini(&b);
	if (rv) {
		craft__log(c, "open: wiping a partial snapshot error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	craft__log(c,
		   "event=snapshot-resume index=%" PRIu64 " from=%s: the install did not "
		   "complete; partial copy wiped, fetched again",
		   min_index, hint[0] ? hint : "leader");
	c->fetch.active = 1;
	c->fetch.min_index = min_index;
	snprintf(c->fetch.hint, sizeof(c->fetch.hint), "%s", hint);
	return 0;
}
