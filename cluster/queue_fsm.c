/*
 * queue_fsm.c - the queue state machine (see queue_fsm.h for the contract): the message table
 * and the due order.
 *
 * Apply is a pure function of (in-memory state, index, command) -> (store writes, new in-memory
 * state): it reads no clock, no random numbers and nothing from the store, so a node applying
 * the committed log reaches the state of every other node.  Before any state changes, everything
 * that can fail (validation, allocation, heap room, batch space) is done; a failure leaves both
 * the memory and the batch as they were.
 *
 * In memory: one block per message (struct queue_msg, its recipients' scheduling state, its
 * items, its queue id; queue__msg_alloc); in a hash table by queue id (chained, power of two
 * buckets, grown at load 1) and on a list in apply order (the order of accept_index, which
 * queue_fsm_new restores after loading).  Records and bodies are in the store (queue_store.c).
 *
 * Due order, two levels (Postfix's qmgr keeps a queue per destination the same way):
 *   - each domain has a min-heap of its active items that may be due (not held, not busy),
 *     keyed by (item next attempt, accept_index, item number) - a total order;
 *   - each owner (a member, or the unowned) has a min-heap of its domains whose item heap is
 *     not empty, keyed by the domain's due key: max(its first item's key, its deferral's
 *     until), ties by that first item's (accept_index, item number).
 * A domain moving to another owner moves one node (O(log D)); a DeferDomain re-keys one node;
 * an item's change re-keys its domain's heap and that domain in its owner's heap.  The walks
 * (queue_fsm_due_owned, queue_fsm_due) merge the two levels with a frontier heap in O(k log k)
 * for k items visited, whatever the queue size.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

static const struct {
	int code;
	const char *str;
} queue__errors[] = {
#define QUEUE__ERRNO_STR(name, val, str) {val, str},
    QUEUE_ERRNO_MAP(QUEUE__ERRNO_STR)
#undef QUEUE__ERRNO_STR
};

const char *
queue_strerror(int code)
{
	for (size_t i = 0; i < sizeof(queue__errors) / sizeof(queue__errors[0]); i++)
		if (queue__errors[i].code == code)
			return queue__errors[i].str;
	return code == 0 ? "success" : "unknown error";
}

uint64_t
queue__hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

uint64_t
queue_rendezvous(const char *node, const char *domain)
{
	uint64_t h = queue__hash(node, strlen(node));
	h ^= 0;
	h *= 0x100000001b3ull;
	for (const char *p = domain; *p; p++) {
		h ^= (unsigned char)*p;
		h *= 0x100000001b3ull;
	}
	return h;
}

void
queue_addr_domain(const char *addr, char *out)
{
	const char *at = addr ? strrchr(addr, '@') : NULL;
	size_t n = 0;
	if (at)
		for (const char *p = at + 1; *p && n < QUEUE_DOMAIN_MAX; p++, n++)
			out[n] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
	out[n] = 0;
}

/* ---- the item heap of a domain ---- */

static int
queue__item_before(const struct queue__item *a, const struct queue__item *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	if (a->msg->accept_index != b->msg->accept_index)
		return a->msg->accept_index < b->msg->accept_index;
	return a->sub < b->sub;
}

static void
queue__ih_set(struct queue__iheap *h, uint32_t pos, struct queue__item *it)
{
	h->a[pos] = it;
	it->pos = pos;
}

static void
queue__ih_up(struct queue__iheap *h, uint32_t pos)
{
	struct queue__item *it = h->a[pos];
	while (pos > 0) {
		uint32_t up = (pos - 1) / 2;
		if (!queue__item_before(it, h->a[up]))
			break;
		queue__ih_set(h, pos, h->a[up]);
		pos = up;
	}
	queue__ih_set(h, pos, it);
}

static void
queue__ih_down(struct queue__iheap *h, uint32_t pos)
{
	struct queue__item *it = h->a[pos];
	for (;;) {
		uint32_t c = 2 * pos + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && queue__item_before(h->a[c + 1], h->a[c]))
			c++;
		if (!queue__item_before(h->a[c], it))
			break;
		queue__ih_set(h, pos, h->a[c]);
		pos = c;
	}
	queue__ih_set(h, pos, it);
}

/* Room for n items; ENOMEM leaves the heap as it was. */
int
queue__iheap_reserve(struct queue__iheap *h, uint32_t n)
{
	if (n <= h->cap)
		return 0;
	uint32_t nc = h->cap ? h->cap : 1;
	while (nc < n)
		nc = nc > UINT32_MAX / 2 ? UINT32_MAX : nc * 2;
	struct queue__item **a = realloc(h->a, (size_t)nc * sizeof(*a));
	if (!a)
		return QUEUE_ENOMEM;
	h->a = a;
	h->cap = nc;
	return 0;
}

/* ---- the domain heap of an owner ---- */

/* The due key of a domain with items in its heap: its first item's, or its deferral's end. */
static uint64_t
queue__dom_key(const struct queue__dom *d)
{
	uint64_t k = d->ih.a[0]->key;
	return k > d->defer_until ? k : d->defer_until;
}

static int
queue__dom_before(const struct queue__dom *x, const struct queue__dom *y)
{
	uint64_t kx = queue__dom_key(x), ky = queue__dom_key(y);
	if (kx != ky)
		return kx < ky;
	const struct queue__item *a = x->ih.a[0], *b = y->ih.a[0];
	if (a->key != b->key)
		return a->key < b->key;
	if (a->msg->accept_index != b->msg->accept_index)
		return a->msg->accept_index < b->msg->accept_index;
	return a->sub < b->sub;
}

static void
queue__dh_set(struct queue__dheap *h, uint32_t pos, struct queue__dom *d)
{
	h->a[pos] = d;
	d->opos = pos;
}

static void
queue__dh_up(struct queue__dheap *h, uint32_t pos)
{
	struct queue__dom *d = h->a[pos];
	while (pos > 0) {
		uint32_t up = (pos - 1) / 2;
		if (!queue__dom_before(d, h->a[up]))
			break;
		queue__dh_set(h, pos, h->a[up]);
		pos = up;
	}
	queue__dh_set(h, pos, d);
}

static void
queue__dh_down(struct queue__dheap *h, uint32_t pos)
{
	struct queue__dom *d = h->a[pos];
	for (;;) {
		uint32_t c = 2 * pos + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && queue__dom_before(h->a[c + 1], h->a[c]))
			c++;
		if (!queue__dom_before(h->a[c], d))
			break;
		queue__dh_set(h, pos, h->a[c]);
		pos = c;
	}
	queue__dh_set(h, pos, d);
}

/* Room for n domains; ENOMEM leaves the heap as it was. */
int
queue__dheap_reserve(struct queue__dheap *h, uint64_t n)
{
	if (n <= h->cap)
		return 0;
	if (n > UINT32_MAX)
		return QUEUE_ENOMEM;
	uint64_t nc = h->cap ? h->cap : 16;
	while (nc < n)
		nc *= 2;
	if (nc > UINT32_MAX)
		nc = UINT32_MAX;
	struct queue__dom **a = realloc(h->a, (size_t)nc * sizeof(*a));
	if (!a)
		return QUEUE_ENOMEM;
	h->a = a;
	h->cap = (uint32_t)nc;
	return 0;
}

struct queue__dheap *
queue__owner_dheap(struct queue_fsm *q, struct queue__member *mb)
{
	return mb ? &mb->dheap : &q->unowned_dheap;
}

static void
queue__dh_remove(struct queue__dheap *h, struct queue__dom *d)
{
	uint32_t pos = d->opos;
	QUEUE__PANIC_IF(pos >= h->n || h->a[pos] != d, "domain heap slot %u", pos);
	d->opos = QUEUE__NO_POS;
	struct queue__dom *last = h->a[--h->n];
	if (pos == h->n)
		return;
	queue__dh_set(h, pos, last);
	queue__dh_up(h, pos);
	queue__dh_down(h, last->opos);
}

/* Puts d where its item heap says in its owner's domain heap: in it (keyed) when the heap has
 * items, out of it otherwise.  Precondition: room (the owner's dheap cap >= its domains). */
void
queue__dom_resched(struct queue_fsm *q, struct queue__dom *d)
{
	struct queue__dheap *h = queue__owner_dheap(q, d->owner);
	if (!d->ih.n) {
		if (d->opos != QUEUE__NO_POS)
			queue__dh_remove(h, d);
		return;
	}
	if (d->opos == QUEUE__NO_POS) {
		QUEUE__PANIC_IF(h->n >= h->cap, "domain heap full (%u)", h->cap);
		queue__dh_set(h, h->n++, d);
		queue__dh_up(h, d->opos);
		return;
	}
	queue__dh_up(h, d->opos);
	queue__dh_down(h, d->opos);
}

/* Takes d out of its owner's domain heap (before the owner changes). */
void
queue__dom_dheap_off(struct queue_fsm *q, struct queue__dom *d)
{
	if (d->opos != QUEUE__NO_POS)
		queue__dh_remove(queue__owner_dheap(q, d->owner), d);
}

/* An active item belongs in its domain's heap unless its message is held or busy. */
int
queue__in_heap(const struct queue__item *it)
{
	return it->dom && it->nqueued && !it->msg->held && !it->msg->busy;
}

/* Puts an active item in its domain's heap.  Precondition: room (cap >= the domain's items). */
void
queue__item_heap_on(struct queue_fsm *q, struct queue__item *it)
{
	struct queue__iheap *h = &it->dom->ih;
	if (it->pos != QUEUE__NO_POS)
		return;
	QUEUE__PANIC_IF(h->n >= h->cap, "item heap full (%u)", h->cap);
	queue__ih_set(h, h->n++, it);
	queue__ih_up(h, it->pos);
	queue__dom_resched(q, it->dom);
}

void
queue__item_heap_off(struct queue_fsm *q, struct queue__item *it)
{
	if (it->pos == QUEUE__NO_POS)
		return;
	struct queue__iheap *h = &it->dom->ih;
	uint32_t pos = it->pos;
	QUEUE__PANIC_IF(pos >= h->n || h->a[pos] != it, "item heap slot %u", pos);
	it->pos = QUEUE__NO_POS;
	struct queue__item *last = h->a[--h->n];
	if (pos != h->n) {
		queue__ih_set(h, pos, last);
		queue__ih_up(h, pos);
		queue__ih_down(h, last->pos);
	}
	queue__dom_resched(q, it->dom);
}

/* Sets an item's key, keeping both heap levels in order. */
void
queue__item_rekey(struct queue_fsm *q, struct queue__item *it, uint64_t key)
{
	if (it->key == key)
		return;
	it->key = key;
	if (it->pos == QUEUE__NO_POS)
		return;
	queue__ih_up(&it->dom->ih, it->pos);
	queue__ih_down(&it->dom->ih, it->pos);
	queue__dom_resched(q, it->dom);
}

/* ---- walks in due order over both levels ---- */

/* A node of the walk's frontier: a domain of an owner's heap (expanding it pushes its first
 * item) or an item of a domain's heap, with its order: (due key, the item's own key,
 * accept_index, item number).  The due key is the item's key or its domain's deferral, which
 * grows with the item's key, so both heaps' orders are this order's and a domain node sorts
 * no later than anything below it. */
struct queue__fnode {
	uint64_t key, raw, tie;
	uint32_t sub, pos;
	const struct queue__dheap *dh; /* domain node: its heap; item node: NULL */
	const struct queue__dom *d;    /* item node: its domain */
};

struct queue__frontier {
	struct queue__fnode *a;
	size_t n, cap;
	struct queue__fnode stack[64];
};

static int
queue__fn_before(const struct queue__fnode *x, const struct queue__fnode *y)
{
	if (x->key != y->key)
		return x->key < y->key;
	if (x->raw != y->raw)
		return x->raw < y->raw;
	if (x->tie != y->tie)
		return x->tie < y->tie;
	/* a domain node sorts just before its own first item (same key, tie, sub) */
	if (x->sub != y->sub)
		return x->sub < y->sub;
	return x->dh && !y->dh;
}

static int
queue__fr_push(struct queue__frontier *f, const struct queue__fnode *x)
{
	if (f->n == f->cap) {
		size_t nc = f->cap * 2;
		struct queue__fnode *a =
		    f->a == f->stack ? malloc(nc * sizeof(*a)) : realloc(f->a, nc * sizeof(*a));
		if (!a)
			return QUEUE_ENOMEM;
		if (f->a == f->stack)
			memcpy(a, f->stack, sizeof(f->stack));
		f->a = a;
		f->cap = nc;
	}
	size_t i = f->n++;
	while (i > 0 && queue__fn_before(x, &f->a[(i - 1) / 2])) {
		f->a[i] = f->a[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	f->a[i] = *x;
	return 0;
}

static struct queue__fnode
queue__fr_pop(struct queue__frontier *f)
{
	struct queue__fnode top = f->a[0], last = f->a[--f->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= f->n)
			break;
		if (c + 1 < f->n && queue__fn_before(&f->a[c + 1], &f->a[c]))
			c++;
		if (!queue__fn_before(&f->a[c], &last))
			break;
		f->a[i] = f->a[c];
		i = c;
	}
	if (f->n)
		f->a[i] = last;
	return top;
}

/* Pushes domain node pos of h when it is due by now. */
static int
queue__fr_dom(struct queue__frontier *f, const struct queue__dheap *h, uint32_t pos,
	      uint64_t now_ms)
{
	if (pos >= h->n)
		return 0;
	const struct queue__dom *d = h->a[pos];
	const struct queue__item *top = d->ih.a[0];
	struct queue__fnode x = {
	    queue__dom_key(d), top->key, top->msg->accept_index, top->sub, pos, h, d};
	return x.key <= now_ms ? queue__fr_push(f, &x) : 0;
}

/* Pushes item node pos of d's heap when it is due by now. */
static int
queue__fr_item(struct queue__frontier *f, const struct queue__dom *d, uint32_t pos, uint64_t now_ms)
{
	if (pos >= d->ih.n)
		return 0;
	const struct queue__item *it = d->ih.a[pos];
	uint64_t k = it->key > d->defer_until ? it->key : d->defer_until;
	struct queue__fnode x = {k, it->key, it->msg->accept_index, it->sub, pos, NULL, d};
	return k <= now_ms ? queue__fr_push(f, &x) : 0;
}

/* Calls visit for the due items of the owners' heaps hs[0..nh) in due order until it returns
 * nonzero; returns the visits, or QUEUE_ENOMEM when even the start failed (memory running out
 * later ends the walk early).  O(k log k) for k visits. */
static int
queue__walk(const struct queue__dheap *const *hs, size_t nh, uint64_t now_ms,
	    int (*visit)(void *ctx, const struct queue__item *it, uint64_t key), void *ctx)
{
	struct queue__frontier f;
	f.a = f.stack;
	f.n = 0;
	f.cap = sizeof(f.stack) / sizeof(f.stack[0]);
	int visits = 0, rv = 0;
	for (size_t i = 0; i < nh && !rv; i++)
		rv = queue__fr_dom(&f, hs[i], 0, now_ms);
	if (rv) {
		visits = QUEUE_ENOMEM;
		goto out;
	}
	while (f.n && !rv) {
		struct queue__fnode x = queue__fr_pop(&f);
		if (x.dh) {
			const struct queue__dom *d = x.dh->a[x.pos];
			rv = queue__fr_item(&f, d, 0, now_ms);
			if (!rv)
				rv = queue__fr_dom(&f, x.dh, 2 * x.pos + 1, now_ms);
			if (!rv)
				rv = queue__fr_dom(&f, x.dh, 2 * x.pos + 2, now_ms);
			continue;
		}
		if (visits == INT32_MAX)
			break;
		visits++;
		if (visit(ctx, x.d->ih.a[x.pos], x.key))
			break;
		rv = queue__fr_item(&f, x.d, 2 * x.pos + 1, now_ms);
		if (!rv)
			rv = queue__fr_item(&f, x.d, 2 * x.pos + 2, now_ms);
	}
out:
	if (f.a != f.stack)
		free(f.a);
	return visits;
}

/* ---- the message table ---- */

struct queue_msg *
queue__find(const struct queue_fsm *q, const char *id, size_t n)
{
	uint64_t h = queue__hash(id, n);
	for (struct queue_msg *m = q->buckets[h & (q->nbuckets - 1)]; m; m = m->hnext)
		if (!strncmp(m->queue_id, id, n) && m->queue_id[n] == 0)
			return m;
	return NULL;
}

static size_t
queue__bucket(const struct queue_fsm *q, const struct queue_msg *m)
{
	return queue__hash(m->queue_id, strlen(m->queue_id)) & (q->nbuckets - 1);
}

/* Grows the table when full; ENOMEM leaves it as it was (still usable). */
int
queue__reserve(struct queue_fsm *q, uint64_t nmsgs)
{
	if (nmsgs < q->nbuckets)
		return 0;
	size_t nb = q->nbuckets;
	while (nb <= nmsgs)
		nb *= 2;
	struct queue_msg **b = calloc(nb, sizeof(*b));
	if (!b)
		return QUEUE_ENOMEM;
	size_t ob = q->nbuckets;
	struct queue_msg **old = q->buckets;
	q->buckets = b;
	q->nbuckets = nb;
	for (size_t i = 0; i < ob; i++) {
		struct queue_msg *m = old[i], *next;
		for (; m; m = next) {
			next = m->hnext;
			size_t bi = queue__bucket(q, m);
			m->hnext = b[bi];
			b[bi] = m;
		}
	}
	free(old);
	return 0;
}

/* Adds m to the table, the apply order and the counts, and activates its items (whose dom is
 * set).  Preconditions: room reserved in the table and in the heaps its items enter. */
void
queue__link(struct queue_fsm *q, struct queue_msg *m)
{
	size_t bi = queue__bucket(q, m);
	m->hnext = q->buckets[bi];
	q->buckets[bi] = m;
	m->next = NULL;
	m->prev = q->tail;
	if (q->tail)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
	q->counts.messages++;
	for (uint32_t i = 0; i < m->nrcpts; i++)
		q->counts.rcpts[m->rcpts[i].state]++;
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			queue__item_on(q, &m->items[j]);
}

/* The reverse of queue__link for a message without queued recipients (no active item). */
void
queue__unlink(struct queue_fsm *q, struct queue_msg *m)
{
	struct queue_msg **pp = &q->buckets[queue__bucket(q, m)];
	while (*pp != m) {
		QUEUE__PANIC_IF(!*pp, "message %s not in its bucket", m->queue_id);
		pp = &(*pp)->hnext;
	}
	*pp = m->hnext;
	if (m->prev)
		m->prev->next = m->next;
	else
		q->head = m->next;
	if (m->next)
		m->next->prev = m->prev;
	else
		q->tail = m->prev;
	q->counts.messages--;
	for (uint32_t i = 0; i < m->nrcpts; i++)
		q->counts.rcpts[m->rcpts[i].state]--;
}

/* One block: the message, nrcpts recipients, nitems items, the queue id.  Zeroed; items in no
 * heap.  NULL when out of memory. */
struct queue_msg *
queue__msg_alloc(const char *id, size_t idlen, uint32_t nrcpts, uint32_t nitems)
{
	size_t sz = sizeof(struct queue_msg) + (size_t)nrcpts * sizeof(struct queue_rcpt_meta) +
		    (size_t)nitems * sizeof(struct queue__item) + idlen + 1;
	struct queue_msg *m = calloc(1, sz);
	if (!m)
		return NULL;
	m->rcpts = (struct queue_rcpt_meta *)(m + 1);
	m->items = (struct queue__item *)(m->rcpts + nrcpts);
	char *s = (char *)(m->items + nitems);
	memcpy(s, id, idlen);
	s[idlen] = 0;
	m->queue_id = s;
	m->nrcpts = nrcpts;
	m->nitems = (uint16_t)nitems;
	for (uint32_t j = 0; j < nitems; j++) {
		m->items[j].msg = m;
		m->items[j].pos = QUEUE__NO_POS;
		m->items[j].sub = (uint16_t)j;
		m->items[j].key = UINT64_MAX;
	}
	return m;
}

void
queue__msg_free(struct queue_msg *m)
{
	free(m);
}

uint32_t
queue__group(const char *const *addrs, uint32_t nrcpts, char (*names)[QUEUE_DOMAIN_MAX + 1],
	     uint16_t *item)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < nrcpts; i++) {
		char d[QUEUE_DOMAIN_MAX + 1];
		queue_addr_domain(addrs[i], d);
		uint32_t j = 0;
		while (j < n && strcmp(names[j], d))
			j++;
		if (j == n)
			memcpy(names[n++], d, strlen(d) + 1);
		item[i] = (uint16_t)j;
	}
	return n;
}

/* ---- queries ---- */

const struct queue_msg *
queue_fsm_lookup(const struct queue_fsm *q, const char *queue_id)
{
	if (!queue_id)
		return NULL;
	size_t n = strnlen(queue_id, QUEUE_ID_MAX + 1);
	if (n > QUEUE_ID_MAX)
		return NULL;
	return queue__find(q, queue_id, n);
}

const struct queue_msg *
queue_fsm_first(const struct queue_fsm *q)
{
	return q->head;
}

const struct queue_msg *
queue_fsm_next(const struct queue_fsm *q, const struct queue_msg *m)
{
	(void)q;
	return m ? m->next : NULL;
}

void
queue_fsm_counts(const struct queue_fsm *q, struct queue_counts *c)
{
	*c = q->counts;
}

void
queue_fsm_stats(const struct queue_fsm *q, struct queue_fsm_stats *st)
{
	*st = q->stats;
}

int
queue_fsm_set_busy(struct queue_fsm *q, const char *queue_id, int busy)
{
	struct queue_msg *m = (struct queue_msg *)queue_fsm_lookup(q, queue_id);
	if (!m)
		return QUEUE_ENOTFOUND;
	busy = !!busy;
	if (m->busy == busy)
		return 0;
	m->busy = (uint8_t)busy;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->dom || !it->nqueued)
			continue;
		if (queue__in_heap(it))
			queue__item_heap_on(q, it);
		else
			queue__item_heap_off(q, it);
	}
	return 0;
}

uint64_t
queue_fsm_due_ms(const struct queue_fsm *q, const struct queue_msg *m)
{
	(void)q;
	uint64_t best = UINT64_MAX;
	for (uint32_t j = 0; m && j < m->nitems; j++) {
		const struct queue__item *it = &m->items[j];
		if (!it->dom || !it->nqueued)
			continue;
		uint64_t k = it->key > it->dom->defer_until ? it->key : it->dom->defer_until;
		if (k < best)
			best = k;
	}
	return best;
}

int
queue_fsm_msg_in_domain(const struct queue_fsm *q, const struct queue_msg *m, const char *domain)
{
	(void)q;
	size_t n = domain ? strlen(domain) : 0;
	for (uint32_t j = 0; m && domain && j < m->nitems; j++) {
		const struct queue__dom *d = m->items[j].nqueued ? m->items[j].dom : NULL;
		if (!d || d->len != n)
			continue;
		size_t i = 0;
		while (i < n && d->name[i] == (char)(domain[i] >= 'A' && domain[i] <= 'Z'
							 ? domain[i] - 'A' + 'a'
							 : domain[i]))
			i++;
		if (i == n)
			return 1;
	}
	return 0;
}

/* Every owner's domain heap (members, then the unowned); returns the count. */
static size_t
queue__all_dheaps(const struct queue_fsm *q, const struct queue__dheap **hs)
{
	size_t n = 0;
	for (size_t i = 0; i < q->nmembers; i++)
		hs[n++] = &q->members[i]->dheap;
	hs[n++] = &q->unowned_dheap;
	return n;
}

uint64_t
queue_fsm_next_due_ms(const struct queue_fsm *q)
{
	const struct queue__dheap *hs[QUEUE_MEMBERS_MAX + 1];
	size_t nh = queue__all_dheaps(q, hs);
	uint64_t best = UINT64_MAX;
	for (size_t i = 0; i < nh; i++)
		if (hs[i]->n && queue__dom_key(hs[i]->a[0]) < best)
			best = queue__dom_key(hs[i]->a[0]);
	return best;
}

/* The messages already given by queue_fsm_due: an open-addressed set of pointers. */
struct queue__due_ctx {
	queue_due_cb cb;
	queue_item_cb icb;
	void *arg;
	size_t max, calls;
	const struct queue_msg **seen;
	size_t nseen, cap; /* cap: a power of two */
	int nomem;
};

static int
queue__seen_add(struct queue__due_ctx *c, const struct queue_msg *m)
{
	if ((c->nseen + 1) * 2 > c->cap) {
		size_t nc = c->cap ? c->cap * 2 : 256;
		const struct queue_msg **a = calloc(nc, sizeof(*a));
		if (!a) {
			c->nomem = 1;
			return -1;
		}
		for (size_t i = 0; i < c->cap; i++) {
			if (!c->seen[i])
				continue;
			size_t h = (size_t)((uintptr_t)c->seen[i] >> 4) & (nc - 1);
			while (a[h])
				h = (h + 1) & (nc - 1);
			a[h] = c->seen[i];
		}
		free(c->seen);
		c->seen = a;
		c->cap = nc;
	}
	size_t h = (size_t)((uintptr_t)m >> 4) & (c->cap - 1);
	while (c->seen[h]) {
		if (c->seen[h] == m)
			return 0;
		h = (h + 1) & (c->cap - 1);
	}
	c->seen[h] = m;
	c->nseen++;
	return 1;
}

static int
queue__due_visit(void *ctx, const struct queue__item *it, uint64_t key)
{
	(void)key;
	struct queue__due_ctx *c = ctx;
	int fresh = queue__seen_add(c, it->msg);
	if (fresh < 0)
		return 1;
	if (!fresh)
		return 0;
	c->calls++;
	return c->cb(c->arg, it->msg) || c->calls == c->max;
}

int
queue_fsm_due(const struct queue_fsm *q, uint64_t now_ms, queue_due_cb cb, void *arg, size_t max)
{
	if (!max)
		return 0;
	const struct queue__dheap *hs[QUEUE_MEMBERS_MAX + 1];
	size_t nh = queue__all_dheaps(q, hs);
	struct queue__due_ctx c = {cb, NULL, arg, max < INT32_MAX ? max : INT32_MAX, 0, NULL,
				   0,  0,    0};
	int rv = queue__walk(hs, nh, now_ms, queue__due_visit, &c);
	free(c.seen);
	if (rv < 0 || (c.nomem && !c.calls))
		return QUEUE_ENOMEM;
	return (int)c.calls;
}

static int
queue__item_visit(void *ctx, const struct queue__item *it, uint64_t key)
{
	struct queue__due_ctx *c = ctx;
	struct queue_item qi = {it->msg, it->dom->name, it->dom->epoch, key};
	c->calls++;
	return c->icb(c->arg, &qi) || c->calls == c->max;
}

/* The domain heap of owner ("" unowned), or NULL for a node that is not a member. */
static const struct queue__dheap *
queue__dheap_of(const struct queue_fsm *q, const char *owner)
{
	if (!owner || !owner[0])
		return &q->unowned_dheap;
	size_t pos;
	const struct queue__member *mb = queue__member_find(q, owner, &pos);
	return mb ? &mb->dheap : NULL;
}

int
queue_fsm_due_owned(const struct queue_fsm *q, const char *owner, uint64_t now_ms, queue_item_cb cb,
		    void *arg, size_t max)
{
	const struct queue__dheap *h = queue__dheap_of(q, owner);
	if (!h || !max)
		return 0;
	struct queue__due_ctx c = {NULL, cb, arg, max < INT32_MAX ? max : INT32_MAX, 0, NULL,
				   0,	 0,  0};
	int rv = queue__walk(&h, 1, now_ms, queue__item_visit, &c);
	return rv < 0 ? rv : (int)c.calls;
}

uint64_t
queue_fsm_next_due_owned_ms(const struct queue_fsm *q, const char *owner)
{
	const struct queue__dheap *h = queue__dheap_of(q, owner);
	return h && h->n ? queue__dom_key(h->a[0]) : UINT64_MAX;
}
