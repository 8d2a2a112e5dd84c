/*
 * queue_own.c - delivery ownership in the queue state machine (queue_fsm_int.h): domains
 * and their assignments (rendezvous winner, epoch, idle assignments), the member table,
 * applying Member and Renew, their keys in the queue CF, and the ownership queries.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

/* ---- domains, members, tombstones ---- */

struct queue__dom *
queue__dom_find(const struct queue_fsm *q, const char *name, size_t len, uint64_t h)
{
	for (struct queue__dom *d = q->dbuckets[h & (q->ndbuckets - 1)]; d; d = d->hnext)
		if (d->len == len && !memcmp(d->name, name, len))
			return d;
	return NULL;
}

uint64_t
queue__dom_hash(const struct queue__dom *d)
{
	return queue__hash(d->name, d->len);
}

/* Grows the domain table for n domains; ENOMEM leaves it as it was. */
int
queue__dom_reserve(struct queue_fsm *q, uint64_t n)
{
	if (n < q->ndbuckets)
		return 0;
	size_t nb = q->ndbuckets;
	while (nb <= n)
		nb *= 2;
	struct queue__dom **b = calloc(nb, sizeof(*b));
	if (!b)
		return QUEUE_ENOMEM;
	for (size_t i = 0; i < q->ndbuckets; i++) {
		struct queue__dom *d = q->dbuckets[i], *next;
		for (; d; d = next) {
			next = d->hnext;
			size_t bi = queue__dom_hash(d) & (nb - 1);
			d->hnext = b[bi];
			b[bi] = d;
		}
	}
	free(q->dbuckets);
	q->dbuckets = b;
	q->ndbuckets = nb;
	return 0;
}

struct queue__dom *
queue__dom_new(const char *name, size_t len)
{
	if (len > QUEUE_DOMAIN_MAX)
		return NULL;
	struct queue__dom *d = calloc(1, sizeof(*d) + len + 1);
	if (!d)
		return NULL;
	memcpy(d->name, name, len);
	d->len = (uint8_t)len;
	d->ipos = QUEUE__NO_POS;
	d->opos = QUEUE__NO_POS;
	return d;
}

void
queue__dom_free(struct queue__dom *d)
{
	if (d) {
		free(d->ih.a);
		free(d);
	}
}

/* The idle assignments: a binary min-heap in q->idle (room for q->idle_max, never more)
 * ordered by (epoch, name) - a total order, as names are unique. */
int
queue__dom_order(const struct queue__dom *x, const struct queue__dom *y)
{
	if (x->epoch != y->epoch)
		return x->epoch < y->epoch ? -1 : 1;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->name, y->name, n);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

int
queue__cmp_dom_order(const void *a, const void *b)
{
	return queue__dom_order(*(struct queue__dom *const *)a, *(struct queue__dom *const *)b);
}

static void
queue__idle_set(struct queue_fsm *q, size_t pos, struct queue__dom *d)
{
	q->idle[pos] = d;
	d->ipos = (uint32_t)pos;
}

static void
queue__idle_up(struct queue_fsm *q, size_t pos)
{
	struct queue__dom *d = q->idle[pos];
	while (pos > 0) {
		size_t up = (pos - 1) / 2;
		if (queue__dom_order(q->idle[up], d) <= 0)
			break;
		queue__idle_set(q, pos, q->idle[up]);
		pos = up;
	}
	queue__idle_set(q, pos, d);
}

static void
queue__idle_down(struct queue_fsm *q, size_t pos)
{
	struct queue__dom *d = q->idle[pos];
	for (;;) {
		size_t c = 2 * pos + 1;
		if (c >= q->nidle)
			break;
		if (c + 1 < q->nidle && queue__dom_order(q->idle[c + 1], q->idle[c]) < 0)
			c++;
		if (queue__dom_order(d, q->idle[c]) <= 0)
			break;
		queue__idle_set(q, pos, q->idle[c]);
		pos = c;
	}
	queue__idle_set(q, pos, d);
}

/* Precondition: q->nidle < q->idle_max. */
void
queue__idle_insert(struct queue_fsm *q, struct queue__dom *d)
{
	QUEUE__PANIC_IF(q->nidle >= q->idle_max || d->ipos != QUEUE__NO_POS, "idle heap full (%zu)",
			q->nidle);
	queue__idle_set(q, q->nidle++, d);
	queue__idle_up(q, d->ipos);
}

void
queue__idle_remove(struct queue_fsm *q, struct queue__dom *d)
{
	size_t pos = d->ipos;
	QUEUE__PANIC_IF(pos >= q->nidle || q->idle[pos] != d, "idle heap slot %zu", pos);
	d->ipos = QUEUE__NO_POS;
	struct queue__dom *last = q->idle[--q->nidle];
	if (pos == q->nidle)
		return;
	queue__idle_set(q, pos, last);
	queue__idle_up(q, pos);
	queue__idle_down(q, last->ipos);
}

/* After d's epoch changed (it only grows). */
static void
queue__idle_fix(struct queue_fsm *q, struct queue__dom *d)
{
	if (d->ipos != QUEUE__NO_POS)
		queue__idle_down(q, d->ipos);
}

/* Puts d on owner mb's list (NULL: unowned) and, when it has due items, in its domain heap.
 * Precondition: room in that heap (cap >= the owner's domains after). */
void
queue__dom_attach(struct queue_fsm *q, struct queue__dom *d, struct queue__member *mb)
{
	struct queue__dom **head = mb ? &mb->doms : &q->unowned;
	d->owner = mb;
	d->oprev = NULL;
	d->onext = *head;
	if (*head)
		(*head)->oprev = d;
	*head = d;
	if (mb)
		mb->ndomains++;
	else
		q->nunowned++;
	queue__dom_resched(q, d);
}

/* Takes d off its owner's list and domain heap. */
void
queue__dom_detach(struct queue_fsm *q, struct queue__dom *d)
{
	queue__dom_dheap_off(q, d);
	struct queue__dom **head = d->owner ? &d->owner->doms : &q->unowned;
	if (d->oprev)
		d->oprev->onext = d->onext;
	else
		*head = d->onext;
	if (d->onext)
		d->onext->oprev = d->oprev;
	d->oprev = d->onext = NULL;
	if (d->owner)
		d->owner->ndomains--;
	else
		q->nunowned--;
	d->owner = NULL;
}

/* Precondition: room reserved (queue__dom_reserve). */
void
queue__dom_insert(struct queue_fsm *q, struct queue__dom *d)
{
	size_t bi = queue__dom_hash(d) & (q->ndbuckets - 1);
	d->hnext = q->dbuckets[bi];
	q->dbuckets[bi] = d;
	q->ndoms++;
}

/* Removes and frees d (no queued recipient left; idle or not). */
void
queue__dom_forget(struct queue_fsm *q, struct queue__dom *d)
{
	QUEUE__PANIC_IF(d->nitems || d->ih.n || d->rcpts_queued, "domain %s still has items",
			d->name);
	if (d->ipos != QUEUE__NO_POS)
		queue__idle_remove(q, d);
	queue__dom_detach(q, d);
	struct queue__dom **pp = &q->dbuckets[queue__dom_hash(d) & (q->ndbuckets - 1)];
	while (*pp != d) {
		QUEUE__PANIC_IF(!*pp, "domain %s not in its bucket", d->name);
		pp = &(*pp)->hnext;
	}
	*pp = d->hnext;
	q->ndoms--;
	queue__dom_free(d);
}

/* Activates an item (nqueued > 0, dom set): counted in its domain, in the domain's heap unless
 * the message is held or busy.  Precondition: room (the domain's heap cap > its items). */
void
queue__item_on(struct queue_fsm *q, struct queue__item *it)
{
	struct queue__dom *d = it->dom;
	d->nitems++;
	d->rcpts_queued += it->nqueued;
	d->rcpts_deferred += it->ndeferred;
	if (queue__in_heap(it))
		queue__item_heap_on(q, it);
}

/* The reverse of queue__item_on, counts left to the caller. */
void
queue__item_off(struct queue_fsm *q, struct queue__item *it)
{
	queue__item_heap_off(q, it);
	it->dom->nitems--;
}

/* The member with that node id, or NULL; *pos its position or where it would go. */
struct queue__member *
queue__member_find(const struct queue_fsm *q, const char *node, size_t *pos)
{
	size_t i = 0;
	for (; i < q->nmembers; i++) {
		int c = strcmp(q->members[i]->node, node);
		if (c == 0) {
			*pos = i;
			return q->members[i];
		}
		if (c > 0)
			break;
	}
	*pos = i;
	return NULL;
}

static int
queue__better(const struct queue__member *c, uint64_t s, const struct queue__member *best,
	      uint64_t bs)
{
	return !best || s > bs || (s == bs && strcmp(c->node, best->node) < 0);
}

/* The rendezvous winner for domain among the LIVE members, not counting excl and counting incl
 * (a member about to become LIVE); NULL when there is none.  Ties: the lower node id. */
struct queue__member *
queue__winner(const struct queue_fsm *q, const char *domain, struct queue__member *incl,
	      const struct queue__member *excl)
{
	struct queue__member *best = NULL;
	uint64_t bs = 0;
	for (size_t i = 0; i < q->nmembers; i++) {
		struct queue__member *c = q->members[i];
		if (c == excl || c == incl || c->state != QUEUE_MEMBER_LIVE)
			continue;
		uint64_t s = queue_rendezvous(c->node, domain);
		if (queue__better(c, s, best, bs)) {
			best = c;
			bs = s;
		}
	}
	if (incl && incl != excl) {
		uint64_t s = queue_rendezvous(incl->node, domain);
		if (queue__better(incl, s, best, bs))
			best = incl;
	}
	return best;
}

void
queue__member_free(struct queue__member *mb)
{
	if (mb) {
		free(mb->dheap.a);
		free(mb);
	}
}

/* ---- ownership keys ---- */

size_t
queue__own_key(unsigned char *k, char type, const void *s, size_t n)
{
	k[0] = QUEUE_KEY_OWN;
	k[1] = (unsigned char)type;
	memcpy(k + 2, s, n);
	return 2 + n;
}

/* An assignment's value: version 1, epoch, owner; or, while the domain is deferred (or has
 * been since its last delivery), version 2, epoch, until, at (u64 BE each), count (u32 BE),
 * owner length, owner. */
size_t
queue__dom_val(unsigned char *v, uint64_t epoch, const struct queue__member *owner,
	       uint64_t until, uint64_t at, uint32_t count)
{
	size_t n = owner ? strlen(owner->node) : 0;
	store_u64_encode(epoch, v + 1);
	if (!until && !count) {
		v[0] = QUEUE__OWN_VERSION;
		if (n)
			memcpy(v + QUEUE__DOM_VAL_LEN, owner->node, n);
		return QUEUE__DOM_VAL_LEN + n;
	}
	v[0] = QUEUE__DOM_VERSION_DEFER;
	store_u64_encode(until, v + 9);
	store_u64_encode(at, v + 17);
	v[25] = (unsigned char)(count >> 24);
	v[26] = (unsigned char)(count >> 16);
	v[27] = (unsigned char)(count >> 8);
	v[28] = (unsigned char)count;
	v[29] = (unsigned char)n;
	if (n)
		memcpy(v + QUEUE__DOM_DEFER_VAL_LEN, owner->node, n);
	return QUEUE__DOM_DEFER_VAL_LEN + n;
}

/* Writes d's assignment with the deferral (until, at, count). */
int
queue__put_dom_defer(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
		     const struct queue__member *owner, uint64_t until, uint64_t at, uint32_t count)
{
	unsigned char k[QUEUE__OWN_KEY_MAX], v[QUEUE__DOM_DEFER_VAL_LEN + QUEUE_NODE_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, d->name, d->len);
	size_t vl = queue__dom_val(v, epoch, owner, until, at, count);
	return store_batch_put(b, STORE_CF_QUEUE, k, kl, v, vl) ? QUEUE_ENOMEM : 0;
}

/* Writes d's assignment (epoch, owner) with the deferral it has. */
int
queue__put_dom(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
	       const struct queue__member *owner)
{
	return queue__put_dom_defer(b, d, epoch, owner, d->defer_until, d->defer_at,
				    d->defer_count);
}

/* Forgets an assignment: its key, and its deferral's reason when it has one. */
int
queue__del_dom(struct store_batch *b, const struct queue__dom *d)
{
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, d->name, d->len);
	if (store_batch_delete(b, STORE_CF_QUEUE, k, kl))
		return QUEUE_ENOMEM;
	kl = queue__own_key(k, QUEUE__OWN_DEFER, d->name, d->len);
	if (d->defer_count && store_batch_delete(b, STORE_CF_QUEUE, k, kl))
		return QUEUE_ENOMEM;
	return 0;
}

void
queue__member_val(unsigned char *v, uint8_t state, uint64_t since, uint64_t renew,
		  uint64_t renew_at, uint32_t inflight)
{
	v[0] = QUEUE__OWN_VERSION;
	v[1] = state;
	store_u64_encode(since, v + 2);
	store_u64_encode(renew, v + 10);
	store_u64_encode(renew_at, v + 18);
	v[26] = (unsigned char)(inflight >> 24);
	v[27] = (unsigned char)(inflight >> 16);
	v[28] = (unsigned char)(inflight >> 8);
	v[29] = (unsigned char)inflight;
}

static int
queue__put_member(struct store_batch *b, const char *node, uint8_t state, uint64_t since,
		  uint64_t renew, uint64_t renew_at, uint32_t inflight)
{
	unsigned char k[2 + QUEUE_NODE_MAX], v[QUEUE__MEMBER_VAL_LEN];
	size_t kl = queue__own_key(k, QUEUE__OWN_MEMBER, node, strlen(node));
	queue__member_val(v, state, since, renew, renew_at, inflight);
	return store_batch_put(b, STORE_CF_QUEUE, k, kl, v, sizeof(v)) ? QUEUE_ENOMEM : 0;
}

size_t
queue__tomb_key(unsigned char *k, uint64_t index)
{
	k[0] = QUEUE_KEY_OWN;
	k[1] = QUEUE__OWN_TOMB;
	store_u64_encode(index, k + 2);
	return 10;
}

/* ---- apply: Member, Renew ---- */

static int
queue__cmp_dom_name(const void *a, const void *b)
{
	const struct queue__dom *x = *(struct queue__dom *const *)a,
				*y = *(struct queue__dom *const *)b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->name, y->name, n);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Slot of an owner for per-target counts: its position, QUEUE_MEMBERS_MAX for nm (new, not in
 * the table yet), QUEUE_MEMBERS_MAX + 1 for unowned. */
static size_t
queue__slot(const struct queue_fsm *q, const struct queue__member *mb,
	    const struct queue__member *nm)
{
	if (!mb)
		return QUEUE_MEMBERS_MAX + 1;
	if (mb == nm)
		return QUEUE_MEMBERS_MAX;
	size_t pos;
	queue__member_find(q, mb->node, &pos);
	return pos;
}

int
queue__apply_member(struct queue_fsm *q, uint64_t index, const Relay__Member *mc,
		    struct store_batch *b)
{
	size_t pos;
	struct queue__member *mb = queue__member_find(q, mc->node, &pos);
	uint8_t ns = (uint8_t)mc->state;
	uint8_t os = mb ? mb->state : QUEUE__NO_STATE;
	if (os == ns || (!mb && ns == QUEUE_MEMBER_REMOVED))
		return 0; /* already so */
	/* The leader's DOWN carries the renew index it saw lapse: a Renew committed since then
	 * makes it a no-op (a deposed leader's late verdict never fences off a live owner). */
	if (mc->has_expect_renew_index && (!mb || mb->renew_index != mc->expect_renew_index))
		return 0;
	/* A member's own DRAINED carries the since index of the DRAINING it saw end: a state set
	 * later (LIVE again) makes it a no-op, or it would move the domains of an owner that may
	 * be starting attempts (tests/sim, seed 310908). */
	if (mc->has_expect_since_index && (mb ? mb->since_index : 0) != mc->expect_since_index)
		return 0;
	if (!mb && q->nmembers == QUEUE_MEMBERS_MAX)
		return QUEUE_EINVAL; /* deterministic: the table is full */
	int give = queue__is_owner_state(os) && !queue__is_owner_state(ns);
	int take = ns == QUEUE_MEMBER_LIVE;

	int rv = QUEUE_ENOMEM;
	struct queue__member *nm = NULL;
	struct queue__dom **doms = NULL;
	struct queue__member **to = NULL;
	if (!mb) {
		if (!(nm = calloc(1, sizeof(*nm))))
			return QUEUE_ENOMEM;
		snprintf(nm->node, sizeof(nm->node), "%s", mc->node);
		nm->state = QUEUE__NO_STATE;
	}
	struct queue__member *self = mb ? mb : nm;
	/* the domains that move, in name order (the same batch on every node, restarted or
	 * not), and where to */
	struct queue__dom *list = give ? self->doms : take ? q->unowned : NULL;
	size_t n = give ? self->ndomains : take ? q->nunowned : 0, k = 0;
	if (!(doms = calloc(n ? n : 1, sizeof(*doms))) || !(to = calloc(n ? n : 1, sizeof(*to))))
		goto out;
	for (struct queue__dom *d = list; d; d = d->onext)
		doms[k++] = d;
	assert(k == n);
	if (n > 1)
		qsort(doms, n, sizeof(*doms), queue__cmp_dom_name);
	uint64_t add[QUEUE_MEMBERS_MAX + 2] = {0};
	for (k = 0; k < n; k++) {
		to[k] = queue__winner(q, doms[k]->name, take ? self : NULL, give ? self : NULL);
		add[queue__slot(q, to[k], nm)]++;
	}
	/* every owner's domain heap has room for all its domains */
	for (size_t s = 0; s < QUEUE_MEMBERS_MAX + 2; s++) {
		if (!add[s])
			continue;
		struct queue__member *tm = s == QUEUE_MEMBERS_MAX + 1 ? NULL
					   : s == QUEUE_MEMBERS_MAX   ? nm
								      : q->members[s];
		uint64_t have = tm ? tm->ndomains : q->nunowned;
		if (queue__dheap_reserve(queue__owner_dheap(q, tm), have + add[s]))
			goto out;
	}
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (ns == QUEUE_MEMBER_REMOVED) {
		unsigned char mk[2 + QUEUE_NODE_MAX];
		size_t mkl = queue__own_key(mk, QUEUE__OWN_MEMBER, self->node, strlen(self->node));
		if (store_batch_delete(b, STORE_CF_QUEUE, mk, mkl))
			goto err_after_batch;
	} else if (queue__put_member(b, self->node, ns, index, self->renew_index, self->renew_at_ms,
				     self->inflight)) {
		goto err_after_batch;
	}
	for (k = 0; k < n; k++)
		if (queue__put_dom(b, doms[k], index, to[k]))
			goto err_after_batch;

	/* commit */
	if (nm) {
		memmove(&q->members[pos + 1], &q->members[pos],
			(q->nmembers - pos) * sizeof(q->members[0]));
		q->members[pos] = nm;
		q->nmembers++;
		nm = NULL;
	}
	self->state = ns;
	self->since_index = index;
	for (k = 0; k < n; k++) {
		struct queue__dom *d = doms[k];
		queue__dom_detach(q, d);
		queue__dom_attach(q, d, to[k]);
		d->epoch = index;
		d->persisted = 1;
		queue__idle_fix(q, d);
		q->stats.reassigned++;
	}
	if (ns == QUEUE_MEMBER_REMOVED) {
		QUEUE__PANIC_IF(self->ndomains || self->dheap.n, "removed member %s owns domains",
				self->node);
		queue__member_find(q, self->node, &pos);
		memmove(&q->members[pos], &q->members[pos + 1],
			(q->nmembers - pos - 1) * sizeof(q->members[0]));
		q->nmembers--;
		queue__member_free(self);
	}
	q->stats.member_changes++;
	rv = 0;
	goto out;
err_after_batch:
	b->len = mark_len;
	b->count = mark_count;
out:
	free(to);
	free(doms);
	queue__member_free(nm);
	return rv;
}

int
queue__apply_renew(struct queue_fsm *q, uint64_t index, const Relay__Renew *r,
		   struct store_batch *b)
{
	size_t pos;
	struct queue__member *mb = queue__member_find(q, r->node, &pos);
	if (!mb)
		return 0; /* not a member (removed, or never joined): nothing to renew */
	uint64_t at = r->has_at_ms ? r->at_ms : 0;
	uint32_t inflight = r->has_inflight ? r->inflight : 0;
	if (queue__put_member(b, mb->node, mb->state, mb->since_index, index, at, inflight))
		return QUEUE_ENOMEM;
	mb->renew_index = index;
	mb->renew_at_ms = at;
	mb->inflight = inflight;
	return 0;
}

const char *
queue_member_state_name(unsigned state)
{
	switch (state) {
	case QUEUE_MEMBER_LIVE:
		return "live";
	case QUEUE_MEMBER_DRAINING:
		return "draining";
	case QUEUE_MEMBER_DRAINED:
		return "drained";
	case QUEUE_MEMBER_DOWN:
		return "down";
	default:
		return "removed";
	}
}

size_t
queue_fsm_members(const struct queue_fsm *q, struct queue_member *out, size_t cap)
{
	size_t k = 0;
	for (; k < q->nmembers && k < cap; k++) {
		const struct queue__member *mb = q->members[k];
		struct queue_member *o = &out[k];
		memset(o, 0, sizeof(*o));
		memcpy(o->node, mb->node, sizeof(o->node));
		o->state = mb->state;
		o->since_index = mb->since_index;
		o->renew_index = mb->renew_index;
		o->renew_at_ms = mb->renew_at_ms;
		o->inflight = mb->inflight;
		o->domains = mb->ndomains;
		for (const struct queue__dom *d = mb->doms; d; d = d->onext) {
			o->rcpts_owned += d->rcpts_queued;
			o->rcpts_deferred += d->rcpts_deferred;
		}
	}
	return k;
}

/* The domain of a query (ASCII-lowercased), or NULL. */
static const struct queue__dom *
queue__dom_lookup(const struct queue_fsm *q, const char *domain)
{
	if (!domain)
		return NULL;
	char d[QUEUE_DOMAIN_MAX + 1];
	size_t n = 0;
	for (; domain[n] && n < QUEUE_DOMAIN_MAX; n++)
		d[n] = (char)(domain[n] >= 'A' && domain[n] <= 'Z' ? domain[n] - 'A' + 'a'
								   : domain[n]);
	if (domain[n])
		return NULL;
	d[n] = 0;
	return queue__dom_find(q, d, n, queue__hash(d, n));
}

int
queue_fsm_domain_owner(const struct queue_fsm *q, const char *domain, char *owner, uint64_t *epoch)
{
	const struct queue__dom *dm = queue__dom_lookup(q, domain);
	if (!dm)
		return QUEUE_ENOTFOUND;
	snprintf(owner, QUEUE_NODE_MAX + 1, "%s", dm->owner ? dm->owner->node : "");
	*epoch = dm->epoch;
	return 0;
}

int
queue_fsm_domain_info(const struct queue_fsm *q, const char *domain,
		      struct queue_domain_info *out)
{
	const struct queue__dom *dm = queue__dom_lookup(q, domain);
	if (!dm)
		return QUEUE_ENOTFOUND;
	memset(out, 0, sizeof(*out));
	snprintf(out->owner, sizeof(out->owner), "%s", dm->owner ? dm->owner->node : "");
	out->epoch = dm->epoch;
	out->defer_until = dm->defer_until;
	out->defer_at = dm->defer_at;
	out->defer_count = dm->defer_count;
	out->rcpts_queued = dm->rcpts_queued;
	return 0;
}

int
queue_fsm_domain_reason(struct queue_fsm *q, const char *domain, char *buf, size_t cap)
{
	const struct queue__dom *dm = queue__dom_lookup(q, domain);
	if (!dm || !cap)
		return QUEUE_ENOTFOUND;
	buf[0] = 0;
	if (!dm->defer_count)
		return 0;
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DEFER, dm->name, dm->len);
	void *v;
	size_t vlen;
	int rv = store_get(q->store, STORE_CF_QUEUE, k, kl, &v, &vlen);
	if (rv == STORE_ENOTFOUND)
		return 0;
	if (rv)
		return rv == STORE_ENOMEM ? QUEUE_ENOMEM : QUEUE_EIO;
	size_t n = vlen < cap - 1 ? vlen : cap - 1;
	memcpy(buf, v, n);
	buf[n] = 0;
	free(v);
	return 0;
}

void
queue_fsm_test_idle_max(struct queue_fsm *q, size_t n)
{
	QUEUE__PANIC_IF(n == 0 || n > QUEUE_IDLE_DOMAINS_MAX || q->nidle > n, "idle bound %zu",
			n);
	q->idle_max = n;
}

size_t
queue_fsm_domains(const struct queue_fsm *q, queue_domain_cb cb, void *arg)
{
	struct queue__dom **all = malloc((q->ndoms ? q->ndoms : 1) * sizeof(*all));
	if (!all)
		return 0;
	size_t n = 0;
	for (size_t i = 0; i < q->ndbuckets; i++)
		for (struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext)
			all[n++] = d;
	if (n > 1)
		qsort(all, n, sizeof(*all), queue__cmp_dom_name);
	size_t calls = 0;
	for (size_t i = 0; i < n; i++) {
		const struct queue__dom *d = all[i];
		calls++;
		if (cb(arg, d->name, d->owner ? d->owner->node : "", d->epoch, d->rcpts_queued))
			break;
	}
	free(all);
	return calls;
}
