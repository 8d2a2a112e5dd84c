/*
 * queue_apply.c - applying the message commands (queue_fsm_int.h): Accept, Outcome, Delete,
 * Hold, Release, Retry, DeferDomain, and queue_apply's dispatch.  Each apply first prepares
 * everything that can fail (the message's state after, the values it writes, the batch), then
 * changes memory in a part that cannot fail.  Nothing here reads the store: a message's
 * scheduling state is in memory, and the values apply writes (envelope, results, state) are
 * built from it and the command alone.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

/* ---- apply: Accept ---- */

/* A prepared Accept: the message (not linked), one domain struct per item (inserted at link
 * when its domain is new then (fresh), else freed), its envelope in the overlay entry. */
struct queue__prep {
	struct queue_msg *m;
	struct queue__dom **nd; /* nitems of them */
	uint32_t nitems;
	struct queue__ov *env; /* the envelope (queue_record_from_accept), packed */
	const char **names;    /* each item's domain (nd[j]->name) */
	int removed;	       /* the queue id is a tombstone: a no-op */
};

static void
queue__prep_free(struct queue__prep *p)
{
	for (uint32_t j = 0; p->nd && j < p->nitems; j++)
		queue__dom_free(p->nd[j]);
	free(p->nd);
	free(p->names);
	free(p->env);
	queue__msg_free(p->m);
	memset(p, 0, sizeof(*p));
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

/* The message of Accept a at index, its domains grouped (names into p->names, pointing at
 * p->nd[j]->name), not linked. */
static int
queue__accept_msg(const Relay__Accept *a, uint64_t index, struct queue__prep *p)
{
	uint32_t n = (uint32_t)a->n_rcpts;
	const char **addrs = malloc(n * sizeof(*addrs));
	char(*names)[QUEUE_DOMAIN_MAX + 1] = malloc(n * sizeof(*names));
	uint16_t *item = malloc(n * sizeof(*item));
	int rv = QUEUE_ENOMEM;
	if (!addrs || !names || !item)
		goto out;
	for (uint32_t i = 0; i < n; i++)
		addrs[i] = a->rcpts[i]->addr;
	uint32_t ni = queue__group(addrs, n, names, item);
	struct queue_msg *m = p->m = queue__msg_alloc(a->queue_id, strlen(a->queue_id), n, ni);
	p->nd = calloc(ni, sizeof(*p->nd));
	p->nitems = ni;
	p->names = calloc(ni, sizeof(*p->names));
	if (!m || !p->nd || !p->names)
		goto out;
	m->received_ms = a->received_ms;
	m->size = a->body.len;
	m->accept_index = index;
	m->update_index = index;
	m->next_attempt_ms = a->received_ms;
	m->nqueued = n;
	for (uint32_t i = 0; i < n; i++) {
		m->rcpts[i].state = QUEUE_RCPT_QUEUED;
		m->rcpts[i].next_attempt_ms = a->received_ms;
		m->rcpts[i].item = item[i];
		m->items[item[i]].nqueued++;
	}
	for (uint32_t j = 0; j < ni; j++) {
		m->items[j].key = a->received_ms;
		if (!(p->nd[j] = queue__dom_new(names[j], strlen(names[j]))))
			goto out;
		p->names[j] = p->nd[j]->name;
	}
	rv = 0;
out:
	free(addrs);
	free(names);
	free(item);
	return rv;
}

/* Packs the envelope of Accept a into an overlay entry for m. */
static int
queue__accept_envelope(struct queue_fsm *q, const Relay__Accept *a, uint64_t index,
		       struct queue__prep *p)
{
	Relay__QueueRcpt *rcpts = calloc(a->n_rcpts, sizeof(*rcpts));
	Relay__QueueRcpt **ptrs = calloc(a->n_rcpts, sizeof(*ptrs));
	unsigned char *buf = NULL;
	int rv = QUEUE_ENOMEM;
	if (!rcpts || !ptrs)
		goto out;
	Relay__QueueRecord rec;
	queue_record_from_accept(a, index, &rec, rcpts, ptrs);
	size_t len = relay__queue_record__get_packed_size(&rec);
	if (!(buf = malloc(len ? len : 1)))
		goto out;
	relay__queue_record__pack(&rec, buf);
	if ((rv = queue__ov_add(q, p->m, index, QUEUE__OV_ENVELOPE, buf, len, &p->env)))
		goto out;
	p->m->shash = queue__hash((const char *)buf, len);
out:
	free(buf);
	free(ptrs);
	free(rcpts);
	return rv;
}

/* Builds the message of Accept a at index and reserves room for it.  p->m = NULL when the
 * queue id is present (a duplicate) or a tombstone (p->removed): a no-op. */
static int
queue__accept_prepare(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		      struct queue__prep *p)
{
	memset(p, 0, sizeof(*p));
	size_t idlen = strlen(a->queue_id);
	if (queue__find(q, a->queue_id, idlen))
		return 0; /* duplicate: idempotent retry */
	if (queue__tomb_find(q, a->queue_id, idlen, queue__hash(a->queue_id, idlen))) {
		p->removed = 1; /* delivered and removed already: a late retry */
		return 0;
	}
	int rv = queue__accept_msg(a, index, p);
	if (rv)
		goto err;
	rv = QUEUE_ENOMEM;
	struct queue_msg *m = p->m;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__dom *nd = p->nd[j];
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, queue__dom_hash(nd));
		struct queue__member *owner;
		if (queue__dom_stays(d)) {
			owner = d->owner;
		} else {
			nd->fresh = 1;
			owner = nd->owner = queue__winner(q, nd->name, NULL, NULL);
			if (d && !d->evicting) {
				/* a new owner for the same destination: its deferral stays */
				nd->defer_until = d->defer_until;
				nd->defer_at = d->defer_at;
				nd->defer_count = d->defer_count;
			}
		}
		/* room: the item in its domain's heap (d's, or nd's when nd is inserted: new, or
		 * d forgotten by the command first), the domain in its owner's heap */
		uint64_t have = owner ? owner->ndomains : q->nunowned;
		if ((d && queue__iheap_reserve(&d->ih, d->nitems + 1)) ||
		    (nd->fresh && queue__iheap_reserve(&nd->ih, 1)) ||
		    queue__dheap_reserve(queue__owner_dheap(q, owner), have + m->nitems))
			goto err;
	}
	if (queue__reserve(q, q->counts.messages + 1) ||
	    queue__dom_reserve(q, q->ndoms + m->nitems))
		goto err;
	if ((rv = queue__accept_envelope(q, a, index, p)))
		goto err;
	return 0;
err:
	queue__prep_free(p);
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
	struct queue__state st = {m, m->rcpts, p->names, 0, index, m->shash};
	if (store_batch_put(b, STORE_CF_BODY, a->queue_id, idlen, a->body.data, a->body.len) ||
	    store_batch_put(b, STORE_CF_QUEUE, a->queue_id, idlen, p->env->data, p->env->len) ||
	    queue__put_state(b, &st))
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
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, queue__dom_hash(nd));
		if (d && d->ipos != QUEUE__NO_POS)
			queue__idle_remove(q, d);
		if (nd->fresh && d) {
			QUEUE__PANIC_IF(d->rcpts_queued, "replacing the active domain %s", d->name);
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
		m->items[j].dom = d;
	}
	queue__link(q, m);
	queue__ov_link(q, p->env);
	p->env = NULL;
	p->m = NULL;
	queue__prep_free(p);
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

/* ---- deferrals of a domain ---- */

/* Writes d's assignment as it is after its deferral is lifted (a delivery, a Retry): the
 * version 1 value and no reason. */
static int
queue__lift_writes(struct store_batch *b, const struct queue__dom *d)
{
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DEFER, d->name, d->len);
	if (!d->persisted)
		return 0; /* no key yet: the lift is memory only */
	if (queue__put_dom_defer(b, d, d->epoch, d->owner, 0, 0, 0) ||
	    store_batch_delete(b, STORE_CF_QUEUE, k, kl))
		return QUEUE_ENOMEM;
	return 0;
}

static void
queue__lift(struct queue_fsm *q, struct queue__dom *d)
{
	d->defer_until = d->defer_at = 0;
	d->defer_count = 0;
	d->defer_hash = 0;
	queue__dom_resched(q, d);
}

static int
queue__deferred(const struct queue__dom *d)
{
	return d && (d->defer_until || d->defer_count);
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

/*
 * The idle assignments forgotten when the domains of m's items with forget[j] set lose their
 * last queued recipient: those persisted become idle, and when that makes more than
 * q->idle_max idle ones, the excess with the smallest (epoch, name) among the idle ones and
 * the new ones go (the same as adding them one at a time, each time forgetting the smallest).
 * *out (malloc'd, NULL when none) gets them, *n their count.  Changes nothing (the idle heap
 * is taken apart and put back).  O(k log n) for k new idle ones.
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
	if (!nnew || q->nidle + nnew <= q->idle_max)
		return 0;
	size_t e = q->nidle + nnew - q->idle_max; /* <= nnew */
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

/* What an Outcome or a Delete does to one message, prepared before anything changes. */
struct queue__change {
	struct queue_msg *m;
	const Relay__Outcome *o; /* NULL: a Delete */
	uint8_t to;		 /* the state the changed recipients take */
	unsigned char chg[QUEUE_RCPTS_MAX];
	uint32_t nchanged;
	uint64_t stale;
	/* the state after, per recipient, item and message */
	struct queue_rcpt_meta *nr; /* malloc'd: the recipients after */
	uint32_t inq[QUEUE_RCPTS_MAX], idef[QUEUE_RCPTS_MAX];
	uint64_t inext[QUEUE_RCPTS_MAX];
	const char *names[QUEUE_RCPTS_MAX];
	unsigned char forget[QUEUE_RCPTS_MAX], lift[QUEUE_RCPTS_MAX];
	uint32_t nqueued;
	uint64_t next, shash;
	/* what it writes besides the batch */
	unsigned char *result; /* an Outcome's result value (malloc'd) */
	size_t rlen;
	struct queue__ov **ov; /* one per changed recipient while the message stays */
	struct queue__prep dsn;
	struct queue__tomb *tomb; /* the message goes */
	size_t evict;		  /* tombstones forgotten with it */
	struct queue__dom **victims;
	size_t nvict;
};

static void
queue__change_free(struct queue__change *c)
{
	queue__prep_free(&c->dsn);
	if (c->ov)
		for (uint32_t i = 0; i < c->m->nrcpts; i++)
			free(c->ov[i]);
	free(c->ov);
	free(c->victims);
	free(c->tomb);
	free(c->result);
	free(c->nr);
}

/* Which recipients change (fenced by epoch: epochs are log indexes >= 1, so 0 is always
 * stale), and the state after.  0, or QUEUE_ENOMEM. */
static int
queue__change_plan(struct queue__change *c, const unsigned char *sel)
{
	struct queue_msg *m = c->m;
	const Relay__Outcome *o = c->o;
	uint64_t epoch = o && o->has_epoch ? o->epoch : 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		c->chg[i] = (unsigned char)queue__changes(m, i, sel, o);
		if (c->chg[i] && o &&
		    (epoch == 0 || m->items[m->rcpts[i].item].dom->epoch != epoch)) {
			c->chg[i] = 0;
			c->stale++;
		}
		c->nchanged += c->chg[i];
	}
	if (!c->nchanged)
		return 0;
	if (!(c->nr = malloc(m->nrcpts * sizeof(*c->nr))))
		return QUEUE_ENOMEM;
	memcpy(c->nr, m->rcpts, m->nrcpts * sizeof(*c->nr));
	for (uint32_t j = 0; j < m->nitems; j++) {
		c->inq[j] = c->idef[j] = 0;
		c->inext[j] = UINT64_MAX;
		c->lift[j] = 0;
	}
	c->next = UINT64_MAX;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		struct queue_rcpt_meta *r = &c->nr[i];
		if (c->chg[i]) {
			r->state = c->to;
			if (o) {
				r->attempts =
				    r->attempts < UINT32_MAX ? r->attempts + 1 : UINT32_MAX;
				r->last_attempt_ms = o->at_ms;
				if (c->to == QUEUE_RCPT_QUEUED) {
					r->next_attempt_ms = o->next_attempt_ms;
					r->delay_notified |=
					    o->has_delay_notified && o->delay_notified;
				}
				if (c->to == QUEUE_RCPT_DELIVERED &&
				    queue__deferred(m->items[r->item].dom))
					c->lift[r->item] = 1;
			}
		}
		if (r->state != QUEUE_RCPT_QUEUED)
			continue;
		uint32_t j = r->item;
		c->inq[j]++;
		c->idef[j] += r->attempts > 0;
		if (r->next_attempt_ms < c->inext[j])
			c->inext[j] = r->next_attempt_ms;
		c->nqueued++;
		if (r->next_attempt_ms < c->next)
			c->next = r->next_attempt_ms;
	}
	for (uint32_t j = 0; j < m->nitems; j++)
		c->names[j] = c->inq[j] ? m->items[j].dom->name : NULL;
	return 0;
}

/* The results an Outcome writes (one value for every changed recipient), the hash chain of
 * the message after them, and their overlay entries. */
static int
queue__change_results(struct queue_fsm *q, struct queue__change *c, uint64_t index)
{
	struct queue_msg *m = c->m;
	c->shash = m->shash;
	if (!c->o)
		return 0;
	c->rlen = queue__result_len(c->o);
	if (!(c->result = malloc(c->rlen)))
		return QUEUE_ENOMEM;
	queue__result_encode(c->o, c->result);
	uint64_t rh = queue__hash((const char *)c->result, c->rlen);
	for (uint32_t i = 0; i < m->nrcpts; i++)
		if (c->chg[i])
			c->shash = queue__mix(queue__mix(c->shash, i), rh);
	if (!c->nqueued)
		return 0; /* the message goes: nothing to read back */
	if (!(c->ov = calloc(m->nrcpts, sizeof(*c->ov))))
		return QUEUE_ENOMEM;
	for (uint32_t i = 0; i < m->nrcpts; i++)
		if (c->chg[i] && queue__ov_add(q, m, index, i, c->result, c->rlen, &c->ov[i]))
			return QUEUE_ENOMEM;
	return 0;
}

/* Adds the writes of a prepared change to b. */
static int
queue__change_writes(const struct queue_fsm *q, struct store_batch *b,
		     const struct queue__change *c, uint64_t index)
{
	const struct queue_msg *m = c->m;
	const char *id = m->queue_id;
	size_t idlen = strlen(id);
	if (!c->nqueued) {
		unsigned char tk[10];
		if (queue__del_msg(b, m) ||
		    store_batch_put(b, STORE_CF_QUEUE, tk, queue__tomb_key(tk, index), id, idlen))
			return QUEUE_ENOMEM;
		const struct queue__tomb *t = q->thead;
		for (size_t k = 0; k < c->evict; k++, t = t->next)
			if (store_batch_delete(b, STORE_CF_QUEUE, tk,
					       queue__tomb_key(tk, t->index)))
				return QUEUE_ENOMEM;
	} else {
		struct queue__state st = {m, c->nr, c->names, m->held, index, c->shash};
		if (queue__put_state(b, &st))
			return QUEUE_ENOMEM;
		for (uint32_t i = 0; c->o && i < m->nrcpts; i++) {
			unsigned char rk[QUEUE__RESULT_KEY_MAX];
			if (c->chg[i] && store_batch_put(b, STORE_CF_QUEUE, rk,
							 queue__result_key(rk, id, idlen, i),
							 c->result, c->rlen))
				return QUEUE_ENOMEM;
		}
	}
	for (uint32_t j = 0; j < m->nitems; j++)
		if (c->lift[j] && !m->items[j].dom->evicting &&
		    queue__lift_writes(b, m->items[j].dom))
			return QUEUE_ENOMEM;
	for (size_t k = 0; k < c->nvict; k++)
		if (queue__del_dom(b, c->victims[k]))
			return QUEUE_ENOMEM;
	return 0;
}

/* Commits a prepared change to memory; nothing here fails. */
static void
queue__change_commit(struct queue_fsm *q, struct queue__change *c, uint64_t index)
{
	struct queue_msg *m = c->m;
	const Relay__Outcome *o = c->o;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		if (!c->chg[i])
			continue;
		q->counts.rcpts[QUEUE_RCPT_QUEUED]--;
		q->counts.rcpts[c->to]++;
		if (!o)
			q->stats.deleted++;
		else if (c->to == QUEUE_RCPT_DELIVERED)
			q->stats.delivered++;
		else if (c->to == QUEUE_RCPT_FAILED)
			q->stats.failed++;
		else
			q->stats.deferred++;
	}
	memcpy(m->rcpts, c->nr, m->nrcpts * sizeof(*c->nr));
	for (uint32_t j = 0; j < m->nitems; j++)
		if (c->lift[j] && !m->items[j].dom->evicting)
			queue__lift(q, m->items[j].dom);
	/* the evicted idle ones first (room in the idle heap), marked as such meanwhile */
	for (size_t k = 0; k < c->nvict; k++)
		if (c->victims[k]->ipos != QUEUE__NO_POS)
			queue__dom_forget(q, c->victims[k]);
		else
			c->victims[k]->evicting = 1;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		struct queue__dom *d = it->dom;
		d->rcpts_queued -= it->nqueued - c->inq[j];
		d->rcpts_deferred = d->rcpts_deferred - it->ndeferred + c->idef[j];
		it->nqueued = (uint16_t)c->inq[j];
		it->ndeferred = (uint16_t)c->idef[j];
		if (!c->inq[j]) {
			queue__item_off(q, it);
			it->dom = NULL;
			if (c->forget[j] && (!d->persisted || d->evicting))
				queue__dom_forget(q, d);
			else if (c->forget[j])
				queue__idle_insert(q, d);
		} else {
			queue__item_rekey(q, it, c->inext[j]);
		}
	}
	m->nqueued = c->nqueued;
	if (!c->nqueued) {
		queue__ov_drop_msg(q, m);
		queue__unlink(q, m);
		queue__msg_free(m);
		q->stats.messages_deleted++;
		queue__tomb_push(q, c->tomb);
		c->tomb = NULL;
		for (size_t k = 0; k < c->evict; k++)
			queue__tomb_pop(q);
	} else {
		m->next_attempt_ms = c->next;
		m->update_index = index;
		m->shash = c->shash;
		m->legacy = 0;
		for (uint32_t i = 0; c->ov && i < m->nrcpts; i++)
			if (c->ov[i]) {
				queue__ov_link(q, c->ov[i]);
				c->ov[i] = NULL;
			}
	}
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
	struct queue_msg *m = queue__find(q, id, strlen(id));
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
	struct queue__change *c = calloc(1, sizeof(*c));
	if (!c)
		return QUEUE_ENOMEM;
	c->m = m;
	c->o = o;
	c->to = o ? queue__outcome_state(o->kind) : QUEUE_RCPT_DELETED;
	int rv = queue__change_plan(c, sel);
	if (rv || !c->nchanged) {
		if (!rv)
			q->stats.stale_outcomes += c->stale; /* duplicate, late, or stale */
		goto out;
	}

	/* everything that can fail, before any change */
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if ((rv = queue__change_results(q, c, index)))
		goto out;
	rv = QUEUE_ENOMEM;
	if (!c->nqueued) {
		if (!(c->tomb = queue__tomb_new(id, strlen(id), index)))
			goto out;
		c->evict =
		    q->ntombs + 1 > QUEUE_TOMBSTONES_MAX ? q->ntombs + 1 - QUEUE_TOMBSTONES_MAX : 0;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		c->forget[j] = 0;
		if (!it->nqueued)
			continue;
		it->dom->leaving = it->nqueued - c->inq[j];
		c->forget[j] = it->dom->rcpts_queued == it->dom->leaving;
	}
	if ((rv = queue__idle_victims(q, m, c->forget, &c->victims, &c->nvict)))
		goto out_leaving;
	for (size_t k = 0; k < c->nvict; k++)
		c->victims[k]->evicting = 1;
	if (o && o->dsn)
		rv = queue__accept_prepare(q, index, o->dsn, &c->dsn);
	if (!rv && (queue__change_writes(q, b, c, index) ||
		    (c->dsn.m && queue__accept_writes(b, o->dsn, &c->dsn, index)))) {
		rv = QUEUE_ENOMEM;
		b->len = mark_len;
		b->count = mark_count;
	}
	for (size_t k = 0; k < c->nvict; k++)
		c->victims[k]->evicting = 0;
out_leaving:
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			m->items[j].dom->leaving = 0;
	if (rv)
		goto out;

	/* commit: nothing below fails */
	queue__change_commit(q, c, index);
	if (c->dsn.m) {
		queue__accept_link(q, &c->dsn, index);
		q->stats.dsns++;
	}
	q->stats.removed_accepts += c->dsn.removed;
	q->stats.stale_outcomes += c->stale;
	rv = 0;
out:
	queue__change_free(c);
	free(c);
	return rv;
}

/* ---- apply: Hold, Release, Retry ---- */

enum queue__sched { QUEUE__HOLD, QUEUE__RELEASE, QUEUE__RETRY };

static int
queue__apply_sched(struct queue_fsm *q, uint64_t index, const char *id, enum queue__sched kind,
		   uint64_t at_ms, struct store_batch *b)
{
	struct queue_msg *m = queue__find(q, id, strlen(id));
	if (!m)
		return QUEUE_ENOTFOUND;
	if ((kind == QUEUE__HOLD && m->held) || (kind == QUEUE__RELEASE && !m->held))
		return 0; /* already so */
	int resched = kind != QUEUE__HOLD;
	uint8_t held = kind == QUEUE__HOLD || (kind == QUEUE__RETRY && m->held);
	struct queue_rcpt_meta *nr = malloc(m->nrcpts * sizeof(*nr));
	const char **names = calloc(m->nitems, sizeof(*names));
	int rv = QUEUE_ENOMEM;
	if (!nr || !names)
		goto out;
	memcpy(nr, m->rcpts, m->nrcpts * sizeof(*nr));
	for (uint32_t i = 0; resched && i < m->nrcpts; i++)
		if (nr[i].state == QUEUE_RCPT_QUEUED)
			nr[i].next_attempt_ms = at_ms;
	for (uint32_t j = 0; j < m->nitems; j++)
		names[j] = m->items[j].nqueued ? m->items[j].dom->name : NULL;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	struct queue__state st = {m, nr, names, held, index, m->shash};
	int bad = queue__put_state(b, &st);
	/* a Retry is the operator's "now": it lifts its domains' deferrals */
	for (uint32_t j = 0; !bad && kind == QUEUE__RETRY && j < m->nitems; j++)
		if (m->items[j].nqueued && queue__deferred(m->items[j].dom))
			bad = queue__lift_writes(b, m->items[j].dom);
	if (bad) {
		b->len = mark_len;
		b->count = mark_count;
		goto out;
	}

	/* commit */
	memcpy(m->rcpts, nr, m->nrcpts * sizeof(*nr));
	m->held = held;
	m->update_index = index;
	m->legacy = 0;
	if (resched)
		m->next_attempt_ms = at_ms;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		if (kind == QUEUE__RETRY && queue__deferred(it->dom))
			queue__lift(q, it->dom);
		if (resched)
			queue__item_rekey(q, it, at_ms);
		if (queue__in_heap(it))
			queue__item_heap_on(q, it);
		else
			queue__item_heap_off(q, it);
	}
	if (kind == QUEUE__HOLD)
		q->stats.held++;
	else if (kind == QUEUE__RELEASE)
		q->stats.released++;
	else
		q->stats.retried++;
	rv = 0;
out:
	free(names);
	free(nr);
	return rv;
}

/* ---- apply: DeferDomain ---- */

/* The owner at epoch says the domain's destination is dead: no attempt before until_ms.  A
 * stale epoch (or an unknown domain) is a no-op, counted; an until not later than the one in
 * force changes nothing. */
static int
queue__apply_defer(struct queue_fsm *q, uint64_t index, const Relay__DeferDomain *dd,
		   struct store_batch *b)
{
	(void)index;
	char name[QUEUE_DOMAIN_MAX + 1];
	size_t n = strlen(dd->domain);
	for (size_t i = 0; i < n; i++)
		name[i] =
		    (char)(dd->domain[i] >= 'A' && dd->domain[i] <= 'Z' ? dd->domain[i] - 'A' + 'a'
									: dd->domain[i]);
	name[n] = 0;
	struct queue__dom *d = queue__dom_find(q, name, n, queue__hash(name, n));
	if (!d || !dd->epoch || d->epoch != dd->epoch || !d->persisted) {
		q->stats.stale_defers++;
		return 0;
	}
	if (dd->until_ms <= d->defer_until)
		return 0;
	uint32_t count = d->defer_count < UINT32_MAX ? d->defer_count + 1 : UINT32_MAX;
	const char *reply = dd->reply ? dd->reply : "";
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DEFER, d->name, d->len);
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (queue__put_dom_defer(b, d, d->epoch, d->owner, dd->until_ms, dd->at_ms, count) ||
	    store_batch_put(b, STORE_CF_QUEUE, k, kl, reply, strlen(reply))) {
		b->len = mark_len;
		b->count = mark_count;
		return QUEUE_ENOMEM;
	}
	d->defer_until = dd->until_ms;
	d->defer_at = dd->at_ms;
	d->defer_count = count;
	d->defer_hash = (uint32_t)queue__hash(reply, strlen(reply));
	queue__dom_resched(q, d);
	q->stats.defers++;
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
	case RELAY__COMMAND__CMD_DEFER_DOMAIN:
		return queue__apply_defer(q, index, cmd->defer_domain, b);
	default:
		return QUEUE_EINVAL;
	}
}
