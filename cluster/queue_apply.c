/*
 * queue_apply.c - applying the message commands (queue_fsm_int.h): Accept, Outcome, Delete,
 * Hold, Release, Retry, and queue_apply's dispatch.  Each apply first prepares everything
 * that can fail, then changes memory and the batch in a part that cannot fail.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

static void queue__change_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc);
static void queue__sched_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc);

/* ---- apply: Accept ---- */

/* A prepared Accept: the message (not linked, record packed, items grouped) and one domain
 * struct per item, inserted at link when its domain is new then (fresh), else freed. */
struct queue__prep {
	struct queue_msg *m;
	struct queue__dom **nd;
	int removed; /* the queue id is a tombstone: a no-op */
};

static void
queue__prep_free(struct queue__prep *p)
{
	if (p->nd && p->m)
		for (uint32_t j = 0; j < p->m->nrcpts; j++)
			free(p->nd[j]);
	free(p->nd);
	queue__msg_free(p->m);
	p->nd = NULL;
	p->m = NULL;
}

int
queue__is_owner_state(uint8_t s)
{
	return s == QUEUE_MEMBER_LIVE || s == QUEUE_MEMBER_DRAINING;
}

/* Does an Accept in the command being applied keep domain d's assignment?  Yes when d still
 * has a queued recipient after the command, or when d is (or becomes) idle - persisted, not
 * forgotten by this command - and its owner may keep domains (LIVE or DRAINING). */
static int
queue__dom_stays(const struct queue__dom *d)
{
	if (!d || d->evicting)
		return 0;
	if (d->rcpts_queued > d->leaving)
		return 1;
	return d->persisted && d->owner && queue__is_owner_state(d->owner->state);
}

/* Builds the message of Accept a at index and reserves room for it.  p->m = NULL when the
 * queue id is present (a duplicate) or a tombstone (p->removed): a no-op. */
static int
queue__accept_prepare(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		      struct queue__prep *p)
{
	memset(p, 0, sizeof(*p));
	size_t idlen = strlen(a->queue_id);
	uint64_t h = queue__hash(a->queue_id, idlen);
	if (queue__find(q, a->queue_id, idlen, h))
		return 0; /* duplicate: idempotent retry */
	if (queue__tomb_find(q, a->queue_id, idlen, h)) {
		p->removed = 1; /* delivered and removed already: a late retry */
		return 0;
	}
	int rv = QUEUE_ENOMEM;
	Relay__QueueRcpt *rcpts = calloc(a->n_rcpts, sizeof(*rcpts));
	Relay__QueueRcpt **ptrs = calloc(a->n_rcpts, sizeof(*ptrs));
	const char **addrs = calloc(a->n_rcpts, sizeof(*addrs));
	p->m = queue__msg_new(a->queue_id, (uint32_t)a->n_rcpts);
	p->nd = calloc(a->n_rcpts, sizeof(*p->nd));
	struct queue_msg *m = p->m;
	if (!rcpts || !ptrs || !addrs || !m || !p->nd)
		goto err;
	for (size_t i = 0; i < a->n_rcpts; i++)
		addrs[i] = a->rcpts[i]->addr;
	if (queue__group(m, addrs, p->nd))
		goto err;
	m->received_ms = a->received_ms;
	m->size = a->body.len;
	m->accept_index = index;
	m->next_attempt_ms = a->received_ms;
	m->nqueued = (uint32_t)a->n_rcpts;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		m->rcpts[i].state = QUEUE_RCPT_QUEUED;
		m->rcpts[i].next_attempt_ms = a->received_ms;
		m->items[m->ritem[i]].nqueued++;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		struct queue__dom *nd = p->nd[j];
		it->hn.key = a->received_ms;
		it->hn.tie = index;
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, nd->hash);
		struct queue__member *owner;
		if (queue__dom_stays(d)) {
			owner = d->owner;
		} else {
			nd->fresh = 1;
			owner = nd->owner = queue__winner(q, nd->name, NULL, NULL);
		}
		struct queue__heap *hp = queue__owner_heap(q, owner);
		if (queue__heap_reserve(hp, hp->n + m->nitems))
			goto err;
	}
	if (queue__reserve(q, q->counts.messages + 1) ||
	    queue__heap_reserve(&q->heap, q->heap.n + 1) ||
	    queue__dom_reserve(q, q->ndoms + m->nitems))
		goto err;
	Relay__QueueRecord rec;
	queue_record_from_accept(a, index, &rec, rcpts, ptrs);
	m->rec_len = relay__queue_record__get_packed_size(&rec);
	m->rec = malloc(m->rec_len ? m->rec_len : 1);
	if (!m->rec)
		goto err;
	relay__queue_record__pack(&rec, m->rec);
	rv = 0;
	goto out;
err:
	queue__prep_free(p);
out:
	free(addrs);
	free(ptrs);
	free(rcpts);
	return rv;
}

/* Adds the writes of a prepared Accept; on failure the batch may hold part of them (the caller
 * rolls back to its mark). */
static int
queue__accept_writes(struct store_batch *b, const Relay__Accept *a, const struct queue__prep *p,
		     uint64_t index)
{
	const struct queue_msg *m = p->m;
	size_t idlen = strlen(a->queue_id);
	unsigned char ikey[9 + QUEUE_ID_MAX];
	size_t iklen = queue__index_key(ikey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, a->queue_id);
	if (store_batch_put(b, STORE_CF_BODY, a->queue_id, idlen, a->body.data, a->body.len) ||
	    store_batch_put(b, STORE_CF_QUEUE, a->queue_id, idlen, m->rec, m->rec_len) ||
	    store_batch_put(b, STORE_CF_INDEX, ikey, iklen, "", 0))
		return QUEUE_ENOMEM;
	for (uint32_t j = 0; j < m->nitems; j++)
		if (p->nd[j]->fresh && queue__put_dom(b, p->nd[j], index, p->nd[j]->owner))
			return QUEUE_ENOMEM;
	return 0;
}

/* Links a prepared Accept: its new domains get their assignment (epoch index), an idle one
 * kept becomes active again, an idle one not kept (its owner may not keep domains) is
 * replaced. */
static void
queue__accept_link(struct queue_fsm *q, struct queue__prep *p, uint64_t index)
{
	struct queue_msg *m = p->m;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__dom *nd = p->nd[j];
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, nd->hash);
		if (d && d->ipos != SIZE_MAX)
			queue__idle_remove(q, d);
		if (nd->fresh && d) {
			assert(!d->rcpts_queued);
			nd->fresh = 0;
			queue__dom_detach(q, d);
			queue__dom_attach(q, d, nd->owner);
			d->epoch = index;
			d->persisted = 1;
		} else if (nd->fresh) {
			d = nd;
			p->nd[j] = NULL;
			d->fresh = 0;
			d->epoch = index;
			d->persisted = 1;
			queue__dom_insert(q, d);
			queue__dom_attach(q, d, d->owner);
		}
		assert(d);
		m->items[j].dom = d;
	}
	queue__link(q, m);
	for (uint32_t j = 0; j < m->nitems; j++)
		free(p->nd[j]);
	free(p->nd);
	p->nd = NULL;
	p->m = NULL;
}

static int
queue__apply_accept(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		    struct store_batch *b)
{
	struct queue__prep p;
	struct queue__quota_prep *qp;
	int rv = queue__accept_prepare(q, index, a, &p);
	if (rv)
		return rv;
	if (!p.m) {
		q->stats.removed_accepts += p.removed;
		return 0;
	}
	if ((rv = queue__quota_begin(q, a, &qp))) {
		queue__prep_free(&p);
		if (rv != QUEUE_EQUOTA)
			return rv;
		/* refused: a retried copy of this Accept must stay refused (queue_fsm.h) */
		if (queue__tomb_add(q, index, a->queue_id, b))
			return QUEUE_ENOMEM;
		q->stats.quota_refused++;
		return QUEUE_EQUOTA;
	}
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (queue__accept_writes(b, a, &p, index) || queue__quota_write(b, qp)) {
		b->len = mark_len;
		b->count = mark_count;
		queue__prep_free(&p);
		queue__quota_end(q, qp, 0);
		return QUEUE_ENOMEM;
	}
	queue__accept_link(q, &p, index);
	queue__quota_end(q, qp, 1);
	return 0;
}

/* ---- apply: Outcome, Delete ---- */

static uint8_t
queue__outcome_state(Relay__OutcomeKind k)
{
	switch (k) {
	case RELAY__OUTCOME_KIND__DELIVERED:
		return QUEUE_RCPT_DELIVERED;
	case RELAY__OUTCOME_KIND__FAILED:
		return QUEUE_RCPT_FAILED;
	default:
		return QUEUE_RCPT_QUEUED; /* deferred */
	}
}

#define QUEUE__BIT(set, i) ((set)[(i) / 8] & (1u << ((i) % 8)))

/* Does the Outcome o (NULL: a Delete) change recipient i (selected in sel)?  Only a queued
 * recipient changes; a deferral whose at_ms is the recipient's last attempt is that attempt
 * reported again (a duplicated proposal), not a new one.  Fencing is the caller's. */
static int
queue__changes(const struct queue_msg *m, uint32_t i, const unsigned char *sel,
	       const Relay__Outcome *o)
{
	const struct queue_rcpt_meta *r = &m->rcpts[i];
	if (!QUEUE__BIT(sel, i) || r->state != QUEUE_RCPT_QUEUED)
		return 0;
	return !(o && o->kind == RELAY__OUTCOME_KIND__DEFERRED && r->attempts &&
		 r->last_attempt_ms == o->at_ms);
}

struct queue__change_edit {
	const unsigned char *chg;
	const Relay__Outcome *o;
	uint8_t to;
	uint64_t next, index;
};

static void
queue__change_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc)
{
	const struct queue__change_edit *e = ctx;
	const Relay__Outcome *o = e->o;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		if (!e->chg[i])
			continue;
		rc[i].state = (Relay__RcptState)e->to;
		if (!o)
			continue;
		rc[i].has_attempts = 1;
		rc[i].attempts = rc[i].attempts < UINT32_MAX ? rc[i].attempts + 1 : UINT32_MAX;
		rc[i].has_last_attempt_ms = 1;
		rc[i].last_attempt_ms = o->at_ms;
		rc[i].last_reply = o->reply;
		rc[i].last_relay = o->relay;
		rc[i].last_dsn_status = o->dsn_status;
		rc[i].has_epoch = 1;
		rc[i].epoch = o->epoch;
		if (e->to == QUEUE_RCPT_QUEUED) {
			rc[i].has_next_attempt_ms = 1;
			rc[i].next_attempt_ms = o->next_attempt_ms;
			if (o->has_delay_notified && o->delay_notified) {
				rc[i].has_delay_notified = 1;
				rc[i].delay_notified = 1;
			}
		}
	}
	rec->has_next_attempt_ms = 1;
	rec->next_attempt_ms = e->next;
	rec->has_update_index = 1;
	rec->update_index = e->index;
}

/*
 * The idle assignments forgotten when the domains of m's items with forget[j] set lose their
 * last queued recipient: those persisted become idle, and when that makes more than
 * QUEUE_IDLE_DOMAINS_MAX idle ones, the excess with the smallest (epoch, name) among the idle
 * ones and the new ones go (the same as adding them one at a time, each time forgetting the
 * smallest).  *out (malloc'd, NULL when none) gets them, *n their count.  Changes nothing
 * (the idle heap is taken apart and put back).  O(k log n) for k new idle ones.
 */
static int
queue__idle_victims(struct queue_fsm *q, const struct queue_msg *m, const unsigned char *forget,
		    struct queue__dom ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	size_t nnew = 0;
	for (uint32_t j = 0; j < m->nitems; j++)
		nnew += forget[j] && m->items[j].dom->persisted;
	if (!nnew || q->nidle + nnew <= QUEUE_IDLE_DOMAINS_MAX)
		return 0;
	size_t e = q->nidle + nnew - QUEUE_IDLE_DOMAINS_MAX; /* <= nnew */
	struct queue__dom **nw = malloc(nnew * sizeof(*nw)), **old = malloc(e * sizeof(*old)),
			  **v = malloc(e * sizeof(*v));
	if (!nw || !old || !v) {
		free(nw);
		free(old);
		free(v);
		return QUEUE_ENOMEM;
	}
	size_t k = 0;
	for (uint32_t j = 0; j < m->nitems; j++)
		if (forget[j] && m->items[j].dom->persisted)
			nw[k++] = m->items[j].dom;
	if (nnew > 1)
		qsort(nw, nnew, sizeof(*nw), queue__cmp_dom_order);
	/* the e smallest idle ones (fewer when there are fewer), then the heap as it was */
	size_t nold = 0;
	while (nold < e && q->nidle) {
		old[nold] = q->idle[0];
		queue__idle_remove(q, old[nold++]);
	}
	for (size_t i = 0; i < nold; i++)
		queue__idle_insert(q, old[i]);
	size_t a = 0, c = 0;
	for (k = 0; k < e; k++)
		v[k] = c == nnew || (a < nold && queue__dom_order(old[a], nw[c]) < 0) ? old[a++]
										      : nw[c++];
	free(nw);
	free(old);
	*out = v;
	*n = e;
	return 0;
}

/*
 * Applies an Outcome (o set) or a Delete (o NULL) to the recipients idx[0..nidx) of queue id
 * (every recipient when nidx is 0, only for a Delete).  Only recipients still queued change,
 * and for an Outcome only those whose domain's epoch is o->epoch (fencing).  When none changes,
 * nothing is written (and the Outcome's DSN is not enqueued).
 */
static int
queue__apply_change(struct queue_fsm *q, uint64_t index, const char *id, const uint32_t *idx,
		    size_t nidx, const Relay__Outcome *o, struct store_batch *b)
{
	size_t idlen = strlen(id);
	struct queue_msg *m = queue__find(q, id, idlen, queue__hash(id, idlen));
	if (!m)
		return o ? 0 : QUEUE_ENOTFOUND; /* an outcome may come after the message is gone */

	unsigned char sel[(QUEUE_RCPTS_MAX + 7) / 8] = {0};
	for (size_t k = 0; k < nidx; k++) {
		if (idx[k] >= m->nrcpts)
			return QUEUE_EINVAL;
		sel[idx[k] / 8] |= (unsigned char)(1u << (idx[k] % 8));
	}
	if (nidx == 0)
		memset(sel, 0xff, sizeof(sel));
	uint8_t to = o ? queue__outcome_state(o->kind) : QUEUE_RCPT_DELETED;

	/* which recipients change (fenced by epoch: epochs are log indexes >= 1, so 0 is
	 * always stale) */
	unsigned char chg[QUEUE_RCPTS_MAX];
	uint32_t nchanged = 0;
	uint64_t stale = 0;
	uint64_t epoch = o && o->has_epoch ? o->epoch : 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		chg[i] = (unsigned char)queue__changes(m, i, sel, o);
		if (chg[i] && o && (epoch == 0 || m->items[m->ritem[i]].dom->epoch != epoch)) {
			chg[i] = 0;
			stale++;
		}
		nchanged += chg[i];
	}
	if (!nchanged) {
		q->stats.stale_outcomes += stale;
		return 0; /* duplicate, late, or stale */
	}

	/* the state after: per recipient, per item, per message */
	uint32_t inq[QUEUE_RCPTS_MAX], idef[QUEUE_RCPTS_MAX];
	uint64_t inext[QUEUE_RCPTS_MAX];
	unsigned char forget[QUEUE_RCPTS_MAX];
	for (uint32_t j = 0; j < m->nitems; j++) {
		inq[j] = idef[j] = 0;
		inext[j] = UINT64_MAX;
	}
	uint32_t nqueued = 0;
	uint64_t next = UINT64_MAX;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		const struct queue_rcpt_meta *r = &m->rcpts[i];
		uint8_t st = chg[i] ? to : r->state;
		if (st != QUEUE_RCPT_QUEUED)
			continue;
		uint64_t na = chg[i] ? o->next_attempt_ms : r->next_attempt_ms;
		uint32_t j = m->ritem[i];
		inq[j]++;
		idef[j] += r->attempts > 0 || chg[i];
		if (na < inext[j])
			inext[j] = na;
		nqueued++;
		if (na < next)
			next = na;
	}

	/* everything that can fail, before any change */
	int rv;
	unsigned char *packed = NULL;
	size_t plen = 0;
	struct queue__prep dsn = {0};
	struct queue__tomb *tomb = NULL;
	size_t evict = 0;
	struct queue__dom **victims = NULL; /* the idle assignments this command forgets */
	size_t nvict = 0;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (nqueued) {
		struct queue__change_edit e = {chg, o, to, next, index};
		if ((rv = queue__repack(m, queue__change_edit, &e, &packed, &plen)))
			goto err_after_alloc;
	} else {
		rv = QUEUE_ENOMEM;
		if (!(tomb = queue__tomb_new(id, idlen, index)))
			goto err_after_alloc;
		evict =
		    q->ntombs + 1 > QUEUE_TOMBSTONES_MAX ? q->ntombs + 1 - QUEUE_TOMBSTONES_MAX : 0;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		forget[j] = 0;
		if (!it->nqueued)
			continue;
		it->dom->leaving = it->nqueued - inq[j];
		forget[j] = it->dom->rcpts_queued == it->dom->leaving;
	}
	if ((rv = queue__idle_victims(q, m, forget, &victims, &nvict)))
		goto err_after_alloc;
	for (size_t k = 0; k < nvict; k++)
		victims[k]->evicting = 1;
	if (o && o->dsn)
		rv = queue__accept_prepare(q, index, o->dsn, &dsn);
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			m->items[j].dom->leaving = 0;
	for (size_t k = 0; k < nvict; k++)
		victims[k]->evicting = 0;
	if (rv)
		goto err_after_alloc;
	rv = QUEUE_ENOMEM;

	unsigned char okey[9 + QUEUE_ID_MAX], nkey[9 + QUEUE_ID_MAX];
	size_t oklen = queue__index_key(okey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, id);
	size_t nklen = queue__index_key(nkey, QUEUE_INDEX_QUEUED, next, id);
	if (!nqueued) {
		unsigned char tk[10];
		if (store_batch_delete(b, STORE_CF_QUEUE, id, idlen) ||
		    store_batch_delete(b, STORE_CF_BODY, id, idlen) ||
		    store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
		    store_batch_put(b, STORE_CF_QUEUE, tk, queue__tomb_key(tk, index), id, idlen))
			goto err_after_batch;
		struct queue__tomb *t = q->thead;
		for (size_t k = 0; k < evict; k++, t = t->next)
			if (store_batch_delete(b, STORE_CF_QUEUE, tk,
					       queue__tomb_key(tk, t->index)))
				goto err_after_batch;
	} else {
		if (store_batch_put(b, STORE_CF_QUEUE, id, idlen, packed, plen))
			goto err_after_batch;
		if (next != m->next_attempt_ms &&
		    (store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
		     store_batch_put(b, STORE_CF_INDEX, nkey, nklen, "", 0)))
			goto err_after_batch;
	}
	for (size_t k = 0; k < nvict; k++)
		if (queue__del_dom(b, victims[k]))
			goto err_after_batch;
	if (dsn.m && queue__accept_writes(b, o->dsn, &dsn, index))
		goto err_after_batch;

	/* commit: nothing below fails */
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		struct queue_rcpt_meta *mr = &m->rcpts[i];
		if (!chg[i])
			continue;
		q->counts.rcpts[QUEUE_RCPT_QUEUED]--;
		q->counts.rcpts[to]++;
		mr->state = to;
		if (!o) {
			q->stats.deleted++;
			continue;
		}
		if (to == QUEUE_RCPT_DELIVERED)
			q->stats.delivered++;
		else if (to == QUEUE_RCPT_FAILED)
			q->stats.failed++;
		else
			q->stats.deferred++;
		mr->attempts = mr->attempts < UINT32_MAX ? mr->attempts + 1 : UINT32_MAX;
		mr->last_attempt_ms = o->at_ms;
		if (to == QUEUE_RCPT_QUEUED) {
			mr->next_attempt_ms = o->next_attempt_ms;
			mr->delay_notified |= o->has_delay_notified && o->delay_notified;
		}
	}
	/* the evicted idle ones first (room in the idle heap), marked as such meanwhile */
	for (size_t k = 0; k < nvict; k++)
		if (victims[k]->ipos != SIZE_MAX)
			queue__dom_forget(q, victims[k]);
		else
			victims[k]->evicting = 1;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		struct queue__dom *d = it->dom;
		d->rcpts_queued -= it->nqueued - inq[j];
		d->rcpts_deferred = d->rcpts_deferred - it->ndeferred + idef[j];
		it->nqueued = inq[j];
		it->ndeferred = idef[j];
		if (!inq[j]) {
			queue__item_off(q, it);
			it->dom = NULL;
			if (forget[j] && (!d->persisted || d->evicting))
				queue__dom_forget(q, d);
			else if (forget[j])
				queue__idle_insert(q, d);
		} else if (inext[j] != it->hn.key) {
			it->hn.key = inext[j];
			queue__heap_fix(queue__owner_heap(q, d->owner), &it->hn);
		}
	}
	m->nqueued = nqueued;
	if (!nqueued) {
		queue__unlink(q, m);
		queue__msg_free(m);
		q->stats.messages_deleted++;
		queue__tomb_push(q, tomb);
		tomb = NULL;
		for (size_t k = 0; k < evict; k++)
			queue__tomb_pop(q);
	} else {
		free(m->rec);
		m->rec = packed;
		m->rec_len = plen;
		packed = NULL;
		m->next_attempt_ms = next;
		m->hn.key = next;
		queue__heap_fix(&q->heap, &m->hn);
	}
	if (dsn.m) {
		queue__accept_link(q, &dsn, index);
		q->stats.dsns++;
	}
	q->stats.removed_accepts += dsn.removed;
	q->stats.stale_outcomes += stale;
	rv = 0;
	goto err_after_alloc;
err_after_batch:
	b->len = mark_len;
	b->count = mark_count;
err_after_alloc:
	queue__prep_free(&dsn);
	free(victims);
	free(tomb);
	free(packed);
	return rv;
}

/* ---- apply: Hold, Release, Retry ---- */

enum queue__sched { QUEUE__HOLD, QUEUE__RELEASE, QUEUE__RETRY };

struct queue__sched_edit {
	const struct queue_msg *m;
	int held, resched;
	uint64_t at_ms, index;
};

static void
queue__sched_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc)
{
	const struct queue__sched_edit *e = ctx;
	rec->has_held = e->held;
	rec->held = e->held;
	rec->has_update_index = 1;
	rec->update_index = e->index;
	if (!e->resched)
		return;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		if (rc[i].state != RELAY__RCPT_STATE__RCPT_QUEUED)
			continue;
		rc[i].has_next_attempt_ms = 1;
		rc[i].next_attempt_ms = e->at_ms;
	}
	rec->has_next_attempt_ms = 1;
	rec->next_attempt_ms = e->at_ms;
}

static int
queue__apply_sched(struct queue_fsm *q, uint64_t index, const char *id, enum queue__sched kind,
		   uint64_t at_ms, struct store_batch *b)
{
	size_t idlen = strlen(id);
	struct queue_msg *m = queue__find(q, id, idlen, queue__hash(id, idlen));
	if (!m)
		return QUEUE_ENOTFOUND;
	if ((kind == QUEUE__HOLD && m->held) || (kind == QUEUE__RELEASE && !m->held))
		return 0; /* already so */
	struct queue__sched_edit e = {m, kind == QUEUE__HOLD || (kind == QUEUE__RETRY && m->held),
				      kind != QUEUE__HOLD, at_ms, index};
	uint64_t next = e.resched ? at_ms : m->next_attempt_ms;
	if (kind == QUEUE__RELEASE) {
		if (queue__heap_reserve(&q->heap, q->heap.n + 1))
			return QUEUE_ENOMEM;
		for (uint32_t j = 0; j < m->nitems; j++) {
			struct queue__item *it = &m->items[j];
			if (!it->nqueued)
				continue;
			struct queue__heap *hp = queue__owner_heap(q, it->dom->owner);
			if (queue__heap_reserve(hp, hp->n + m->nitems))
				return QUEUE_ENOMEM;
		}
	}
	unsigned char *packed;
	size_t plen;
	int rv = queue__repack(m, queue__sched_edit, &e, &packed, &plen);
	if (rv)
		return rv;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	unsigned char okey[9 + QUEUE_ID_MAX], nkey[9 + QUEUE_ID_MAX];
	size_t oklen = queue__index_key(okey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, id);
	size_t nklen = queue__index_key(nkey, QUEUE_INDEX_QUEUED, next, id);
	if (store_batch_put(b, STORE_CF_QUEUE, id, idlen, packed, plen) ||
	    (next != m->next_attempt_ms &&
	     (store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
	      store_batch_put(b, STORE_CF_INDEX, nkey, nklen, "", 0)))) {
		b->len = mark_len;
		b->count = mark_count;
		free(packed);
		return QUEUE_ENOMEM;
	}

	/* commit */
	free(m->rec);
	m->rec = packed;
	m->rec_len = plen;
	if (kind == QUEUE__HOLD) {
		queue__heap_remove(&q->heap, &m->hn);
		for (uint32_t j = 0; j < m->nitems; j++)
			if (m->items[j].nqueued)
				queue__heap_remove(queue__owner_heap(q, m->items[j].dom->owner),
						   &m->items[j].hn);
		m->held = 1;
		q->stats.held++;
		return 0;
	}
	for (uint32_t i = 0; i < m->nrcpts; i++)
		if (m->rcpts[i].state == QUEUE_RCPT_QUEUED)
			m->rcpts[i].next_attempt_ms = at_ms;
	m->next_attempt_ms = m->hn.key = at_ms;
	if (kind == QUEUE__RELEASE) {
		m->held = 0;
		queue__heap_insert(&q->heap, &m->hn);
		q->stats.released++;
	} else {
		queue__heap_fix(&q->heap, &m->hn);
		q->stats.retried++;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		struct queue__heap *hp = queue__owner_heap(q, it->dom->owner);
		it->hn.key = at_ms;
		if (kind == QUEUE__RELEASE)
			queue__heap_insert(hp, &it->hn);
		else
			queue__heap_fix(hp, &it->hn);
	}
	return 0;
}

int
queue_apply(struct queue_fsm *q, uint64_t index, const Relay__Command *cmd, struct store_batch *b)
{
	int rv = queue_validate(cmd);
	if (rv)
		return rv;
	switch (cmd->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		return queue__apply_accept(q, index, cmd->accept, b);
	case RELAY__COMMAND__CMD_OUTCOME:
		return queue__apply_change(q, index, cmd->outcome->queue_id,
					   cmd->outcome->rcpt_index, cmd->outcome->n_rcpt_index,
					   cmd->outcome, b);
	case RELAY__COMMAND__CMD_DELETE:
		return queue__apply_change(q, index, cmd->delete_->queue_id,
					   cmd->delete_->rcpt_index, cmd->delete_->n_rcpt_index,
					   NULL, b);
	case RELAY__COMMAND__CMD_MEMBER:
		return queue__apply_member(q, index, cmd->member, b);
	case RELAY__COMMAND__CMD_RENEW:
		return queue__apply_renew(q, index, cmd->renew, b);
	case RELAY__COMMAND__CMD_HOLD:
		return queue__apply_sched(q, index, cmd->hold->queue_id, QUEUE__HOLD, 0, b);
	case RELAY__COMMAND__CMD_RELEASE:
		return queue__apply_sched(q, index, cmd->release->queue_id, QUEUE__RELEASE,
					  cmd->release->at_ms, b);
	case RELAY__COMMAND__CMD_RETRY:
		return queue__apply_sched(q, index, cmd->retry->queue_id, QUEUE__RETRY,
					  cmd->retry->at_ms, b);
	default:
		return QUEUE_EINVAL;
	}
}
