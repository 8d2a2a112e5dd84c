/*
 * queue_fsm.c - the queue state machine (see queue_fsm.h for the contract).
 *
 * Apply is a pure function of (in-memory state, index, command) -> (store writes, new in-memory
 * state): it reads no clock, no random numbers and nothing from the store, so a node applying
 * the committed log reaches the state of every other node.  Before any state changes, everything
 * that can fail (validation, allocation, heap room, batch space) is done; a failure leaves both
 * the memory and the batch as they were.
 *
 * In memory: one struct queue_msg per message holding its packed record (what the queue CF
 * holds) and metadata; in a hash table by queue id (chained, power of two buckets, grown at
 * load 1); on a list in apply order (the order of accept_index, which queue_fsm_new restores
 * after loading the records in key order); and, unless held, in a binary min-heap keyed by
 * (next_attempt_ms, accept_index) - a total order, as accept_index is unique - for the
 * message-level scheduler.  An Outcome or Delete unpacks the record, builds the new one as a
 * shallow copy pointing at the command's strings, and packs it.
 *
 * Ownership: each message has one item per distinct recipient domain (queue__item); an item
 * with queued recipients is active: it is on its domain's list and, unless the message is held,
 * in the heap of the domain's owner (a member's, or the unowned heap), keyed by (the item's
 * earliest next attempt, accept_index, item number).  Domains (queue__dom) are in a hash table
 * by name and on their owner's list; members (queue__member) in an array sorted by node id.
 * An idle assignment (persisted, no queued recipient) stays in the table and on its owner's list
 * and is in a min-heap by (epoch, name), whose minimum is the next one forgotten when one more
 * than QUEUE_IDLE_DOMAINS_MAX would be idle.
 * The removed queue ids (tombstones) are a FIFO in removal order plus a fixed hash table.
 *
 * Ownership keys in the queue CF (first byte QUEUE_KEY_OWN; queue ids never start with it, so
 * they sort before every record and queue_fsm_new reads them first):
 *   01 'D' domain        -> version 1, epoch (u64 BE), owner node id ("" unowned)
 *   01 'M' node id       -> version 1, state (u8), since_index (u64 BE), renew_index (u64 BE),
 *                           then (absent in stores written before) the last Renew's at_ms
 *                           (u64 BE) and inflight (u32 BE)
 *   01 'T' index (u64 BE) -> the queue id removed by the command at that index
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

/* ---- heaps ---- */

static int
queue__hn_before(const struct queue_hnode *a, const struct queue_hnode *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	if (a->tie != b->tie)
		return a->tie < b->tie;
	return a->sub < b->sub;
}

/* Makes room for n nodes; ENOMEM leaves the heap as it was. */
int
queue__heap_reserve(struct queue__heap *h, size_t n)
{
	if (n <= h->cap)
		return 0;
	size_t nc = h->cap ? h->cap : QUEUE__HEAP_MIN;
	while (nc < n)
		nc *= 2;
	struct queue_hnode **a = realloc(h->a, nc * sizeof(*a));
	if (!a)
		return QUEUE_ENOMEM;
	h->a = a;
	h->cap = nc;
	return 0;
}

static void
queue__heap_set(struct queue__heap *h, size_t pos, struct queue_hnode *x)
{
	h->a[pos] = x;
	x->pos = pos;
}

static void
queue__heap_up(struct queue__heap *h, size_t pos)
{
	struct queue_hnode *x = h->a[pos];
	while (pos > 0) {
		size_t parent = (pos - 1) / 2;
		if (!queue__hn_before(x, h->a[parent]))
			break;
		queue__heap_set(h, pos, h->a[parent]);
		pos = parent;
	}
	queue__heap_set(h, pos, x);
}

static void
queue__heap_down(struct queue__heap *h, size_t pos)
{
	struct queue_hnode *x = h->a[pos];
	for (;;) {
		size_t c = 2 * pos + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && queue__hn_before(h->a[c + 1], h->a[c]))
			c++;
		if (!queue__hn_before(h->a[c], x))
			break;
		queue__heap_set(h, pos, h->a[c]);
		pos = c;
	}
	queue__heap_set(h, pos, x);
}

/* Precondition: room reserved (queue__heap_reserve). */
void
queue__heap_insert(struct queue__heap *h, struct queue_hnode *x)
{
	assert(h->n < h->cap && x->pos == SIZE_MAX);
	queue__heap_set(h, h->n++, x);
	queue__heap_up(h, x->pos);
}

void
queue__heap_remove(struct queue__heap *h, struct queue_hnode *x)
{
	size_t pos = x->pos;
	if (pos == SIZE_MAX)
		return;
	assert(pos < h->n && h->a[pos] == x);
	x->pos = SIZE_MAX;
	struct queue_hnode *last = h->a[--h->n];
	if (pos == h->n)
		return;
	queue__heap_set(h, pos, last);
	queue__heap_up(h, pos);
	queue__heap_down(h, last->pos);
}

/* After x's key changed (no-op when x is in no heap). */
void
queue__heap_fix(struct queue__heap *h, struct queue_hnode *x)
{
	if (x->pos == SIZE_MAX)
		return;
	queue__heap_up(h, x->pos);
	queue__heap_down(h, x->pos);
}

/* The frontier of a walk of the heap in order: a small heap of positions in h->a. */
static void
queue__frontier_push(const struct queue__heap *h, size_t *f, size_t *n, size_t pos)
{
	size_t i = (*n)++;
	while (i > 0 && queue__hn_before(h->a[pos], h->a[f[(i - 1) / 2]])) {
		f[i] = f[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	f[i] = pos;
}

static size_t
queue__frontier_pop(const struct queue__heap *h, size_t *f, size_t *n)
{
	size_t top = f[0], last = f[--(*n)], i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && queue__hn_before(h->a[f[c + 1]], h->a[f[c]]))
			c++;
		if (!queue__hn_before(h->a[f[c]], h->a[last]))
			break;
		f[i] = f[c];
		i = c;
	}
	if (*n)
		f[i] = last;
	return top;
}

#define QUEUE__FRONTIER_STACK 256

/* Calls visit for the nodes with key <= now in heap order, at most max; O(k log k). */
static int
queue__heap_walk(const struct queue__heap *h, uint64_t now_ms, size_t max,
		 int (*visit)(void *ctx, const struct queue_hnode *x), void *ctx)
{
	if (!h->n || !max || h->a[0]->key > now_ms)
		return 0;
	if (max > h->n)
		max = h->n;
	if (max > INT32_MAX)
		max = INT32_MAX; /* the count is returned as an int */
	/* each visit pops one position and pushes at most two: at most max + 1 are waiting */
	size_t stackbuf[QUEUE__FRONTIER_STACK];
	size_t *f = stackbuf;
	if (max + 1 > QUEUE__FRONTIER_STACK && !(f = malloc((max + 1) * sizeof(*f))))
		return QUEUE_ENOMEM;
	size_t n = 0;
	int calls = 0;
	queue__frontier_push(h, f, &n, 0);
	while (n && (size_t)calls < max) {
		size_t pos = queue__frontier_pop(h, f, &n);
		calls++;
		if (visit(ctx, h->a[pos]))
			break;
		for (size_t c = 2 * pos + 1; c <= 2 * pos + 2 && c < h->n; c++)
			if (h->a[c]->key <= now_ms)
				queue__frontier_push(h, f, &n, c);
	}
	if (f != stackbuf)
		free(f);
	return calls;
}

static struct queue_msg *
queue__msg_of(const struct queue_hnode *x)
{
	return (struct queue_msg *)((char *)x - offsetof(struct queue_msg, hn));
}

/* ---- the message table ---- */

struct queue_msg *
queue__find(const struct queue_fsm *q, const char *id, size_t n, uint64_t h)
{
	for (struct queue_msg *m = q->buckets[h & (q->nbuckets - 1)]; m; m = m->hnext)
		if (m->hash == h && !strncmp(m->queue_id, id, n) && m->queue_id[n] == 0)
			return m;
	return NULL;
}

/* Grows the table when full; ENOMEM leaves it as it was (still usable). */
int
queue__reserve(struct queue_fsm *q, uint64_t nmsgs)
{
	if (nmsgs < q->nbuckets)
		return 0;
	size_t nb = q->nbuckets * 2;
	struct queue_msg **b = calloc(nb, sizeof(*b));
	if (!b)
		return QUEUE_ENOMEM;
	for (size_t i = 0; i < q->nbuckets; i++) {
		struct queue_msg *m = q->buckets[i], *next;
		for (; m; m = next) {
			next = m->hnext;
			m->hnext = b[m->hash & (nb - 1)];
			b[m->hash & (nb - 1)] = m;
		}
	}
	free(q->buckets);
	q->buckets = b;
	q->nbuckets = nb;
	return 0;
}

/* Adds m to the table, the apply order, the counts, the message heap (if it has queued
 * recipients and is not held) and activates its items (whose dom is set).  Preconditions: room
 * reserved in the table and in every heap it enters. */
void
queue__link(struct queue_fsm *q, struct queue_msg *m)
{
	size_t bi = m->hash & (q->nbuckets - 1);
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
	m->hn.key = m->next_attempt_ms;
	m->hn.tie = m->accept_index;
	if (m->nqueued && !m->held)
		queue__heap_insert(&q->heap, &m->hn);
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			queue__item_on(q, &m->items[j]);
}

/* The reverse of queue__link for a message without queued recipients (no active item). */
void
queue__unlink(struct queue_fsm *q, struct queue_msg *m)
{
	struct queue_msg **pp = &q->buckets[m->hash & (q->nbuckets - 1)];
	while (*pp != m) {
		assert(*pp);
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
	queue__heap_remove(&q->heap, &m->hn);
}

void
queue__msg_free(struct queue_msg *m)
{
	if (m) {
		free(m->rcpts);
		free(m->rec);
		free(m->items);
		free(m->ritem);
		free(m);
	}
}

struct queue_msg *
queue__msg_new(const char *id, uint32_t nrcpts)
{
	struct queue_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->rcpts = calloc(nrcpts ? nrcpts : 1, sizeof(*m->rcpts));
	m->ritem = calloc(nrcpts ? nrcpts : 1, sizeof(*m->ritem));
	m->items = calloc(nrcpts ? nrcpts : 1, sizeof(*m->items));
	if (!m->rcpts || !m->ritem || !m->items) {
		queue__msg_free(m);
		return NULL;
	}
	size_t n = strlen(id);
	memcpy(m->queue_id, id, n + 1);
	m->hash = queue__hash(id, n);
	m->nrcpts = nrcpts;
	m->hn.pos = SIZE_MAX;
	return m;
}

/* Groups the recipients of m by domain (addrs[i] the address of recipient i): m->items,
 * m->ritem, m->nitems; nd[j] (nrcpts slots) gets a new, unlinked domain struct naming item j.
 * The items' counts are left to the caller.  ENOMEM: the nd[] made so far are the caller's. */
int
queue__group(struct queue_msg *m, const char *const *addrs, struct queue__dom **nd)
{
	m->nitems = 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		char d[QUEUE_DOMAIN_MAX + 1];
		queue_addr_domain(addrs[i], d);
		size_t len = strlen(d);
		uint64_t h = queue__hash(d, len);
		uint32_t j = 0;
		for (; j < m->nitems; j++)
			if (nd[j]->hash == h && nd[j]->len == len && !memcmp(nd[j]->name, d, len))
				break;
		if (j == m->nitems) {
			if (!(nd[j] = queue__dom_new(d, len, h)))
				return QUEUE_ENOMEM;
			struct queue__item *it = &m->items[j];
			it->msg = m;
			it->hn.pos = SIZE_MAX;
			it->hn.sub = j;
			m->nitems++;
		}
		m->ritem[i] = j;
	}
	return 0;
}

/* ---- records ---- */

void
queue_record_from_accept(const Relay__Accept *a, uint64_t index, Relay__QueueRecord *rec,
			 Relay__QueueRcpt *rcpts, Relay__QueueRcpt **rcpt_ptrs)
{
	relay__queue_record__init(rec);
	rec->queue_id = a->queue_id;
	rec->mail_from = a->mail_from;
	rec->received_ms = a->received_ms;
	rec->size = a->body.len;
	rec->accept_index = index;
	rec->has_next_attempt_ms = 1;
	rec->next_attempt_ms = a->received_ms;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		relay__queue_rcpt__init(&rcpts[i]);
		rcpts[i].rcpt = a->rcpts[i];
		rcpts[i].state = RELAY__RCPT_STATE__RCPT_QUEUED;
		rcpts[i].has_next_attempt_ms = 1;
		rcpts[i].next_attempt_ms = a->received_ms;
		rcpt_ptrs[i] = &rcpts[i];
	}
	rec->n_rcpts = a->n_rcpts;
	rec->rcpts = rcpt_ptrs;
	rec->has_ret = a->has_ret;
	rec->ret = a->ret;
	rec->envid = a->envid;
	rec->has_smtputf8 = a->has_smtputf8;
	rec->smtputf8 = a->smtputf8;
	rec->has_body_type = a->has_body_type;
	rec->body_type = a->body_type;
	rec->client_addr = a->client_addr;
	rec->helo = a->helo;
	rec->auth_user = a->auth_user;
	rec->node_id = a->node_id;
	rec->has_trusted = a->has_trusted;
	rec->trusted = a->trusted;
	rec->has_update_index = 1;
	rec->update_index = index;
}

/* Index CF key for a message: state, next attempt, queue id. */
size_t
queue__index_key(unsigned char *k, uint8_t state, uint64_t next_ms, const char *id)
{
	size_t n = strlen(id);
	k[0] = state;
	store_u64_encode(next_ms, k + 1);
	memcpy(k + 9, id, n);
	return 9 + n;
}

/* Repacks m's record with edit applied to a shallow copy (rc[i] the copies of the recipients;
 * strings stay the record's or whatever edit points at, until this returns).  *out malloc'd. */

int
queue__repack(const struct queue_msg *m, queue__edit_fn edit, void *ctx, unsigned char **out,
	      size_t *outlen)
{
	int rv = QUEUE_ENOMEM;
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, m->rec_len, m->rec);
	Relay__QueueRcpt *rc = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*rc));
	Relay__QueueRcpt **rp = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*rp));
	if (!r || !rc || !rp)
		goto out;
	if (r->n_rcpts != m->nrcpts) {
		rv = QUEUE_ECORRUPT; /* our own bytes: cannot happen */
		goto out;
	}
	Relay__QueueRecord rec = *r;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		rc[i] = *r->rcpts[i];
		rp[i] = &rc[i];
	}
	rec.rcpts = rp;
	edit(ctx, &rec, rc);
	size_t plen = relay__queue_record__get_packed_size(&rec);
	unsigned char *p = malloc(plen ? plen : 1);
	if (!p)
		goto out;
	relay__queue_record__pack(&rec, p);
	*out = p;
	*outlen = plen;
	rv = 0;
out:
	free(rp);
	free(rc);
	if (r)
		relay__queue_record__free_unpacked(r, NULL);
	return rv;
}

/* Builds the metadata of a stored record (packed: v, vlen, copied) and its items, whose active
 * ones get their domain from the table (a domain without an assignment: one made unowned,
 * epoch 0, not persisted); QUEUE_ECORRUPT if it is not one we could write. */
int
queue__meta_from_record(struct queue_fsm *q, const Relay__QueueRecord *r, const void *v,
			size_t vlen, struct queue_msg **out)
{
	if (!queue__id_ok(r->queue_id) || r->n_rcpts > QUEUE_RCPTS_MAX)
		return QUEUE_ECORRUPT;
	for (size_t i = 0; i < r->n_rcpts; i++)
		if ((unsigned)r->rcpts[i]->state >= QUEUE_RCPT_STATES || !r->rcpts[i]->rcpt ||
		    !r->rcpts[i]->rcpt->addr)
			return QUEUE_ECORRUPT;
	int rv = QUEUE_ENOMEM;
	struct queue_msg *m = queue__msg_new(r->queue_id, (uint32_t)r->n_rcpts);
	const char **addrs = calloc(r->n_rcpts ? r->n_rcpts : 1, sizeof(*addrs));
	struct queue__dom **nd = calloc(r->n_rcpts ? r->n_rcpts : 1, sizeof(*nd));
	if (!m || !addrs || !nd || !(m->rec = malloc(vlen ? vlen : 1)))
		goto out;
	memcpy(m->rec, v, vlen);
	m->rec_len = vlen;
	m->received_ms = r->received_ms;
	m->size = r->size;
	m->accept_index = r->accept_index;
	m->held = r->has_held && r->held;
	m->next_attempt_ms = r->has_next_attempt_ms ? r->next_attempt_ms : r->received_ms;
	for (size_t i = 0; i < r->n_rcpts; i++)
		addrs[i] = r->rcpts[i]->rcpt->addr;
	if ((rv = queue__group(m, addrs, nd)))
		goto out;
	rv = QUEUE_ENOMEM;
	uint64_t next = UINT64_MAX;
	for (uint32_t j = 0; j < m->nitems; j++) {
		m->items[j].hn.key = UINT64_MAX;
		m->items[j].hn.tie = m->accept_index;
	}
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const Relay__QueueRcpt *qr = r->rcpts[i];
		m->rcpts[i].state = (uint8_t)qr->state;
		m->rcpts[i].attempts = qr->attempts;
		m->rcpts[i].next_attempt_ms = qr->next_attempt_ms;
		m->rcpts[i].last_attempt_ms = qr->last_attempt_ms;
		m->rcpts[i].delay_notified = qr->has_delay_notified && qr->delay_notified;
		if (qr->state == RELAY__RCPT_STATE__RCPT_QUEUED) {
			struct queue__item *it = &m->items[m->ritem[i]];
			m->nqueued++;
			it->nqueued++;
			it->ndeferred += qr->attempts > 0;
			if (qr->next_attempt_ms < it->hn.key)
				it->hn.key = qr->next_attempt_ms;
			if (qr->next_attempt_ms < next)
				next = qr->next_attempt_ms;
		}
	}
	if (m->nqueued)
		m->next_attempt_ms = next; /* the same rule as apply */
	for (uint32_t j = 0; j < m->nitems; j++) {
		if (!m->items[j].nqueued)
			continue;
		struct queue__dom *d = queue__dom_find(q, nd[j]->name, nd[j]->len, nd[j]->hash);
		if (!d) {
			if (queue__dom_reserve(q, q->ndoms + 1))
				goto out;
			d = nd[j];
			nd[j] = NULL;
			queue__dom_insert(q, d);
			queue__dom_attach(q, d, NULL);
		}
		m->items[j].dom = d;
	}
	*out = m;
	m = NULL;
	rv = 0;
out:
	if (nd)
		for (size_t i = 0; i < r->n_rcpts; i++)
			free(nd[i]);
	free(nd);
	free(addrs);
	queue__msg_free(m);
	return rv;
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
	return queue__find(q, queue_id, n, queue__hash(queue_id, n));
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

static int
queue__store_err(int rv)
{
	switch (rv) {
	case STORE_ENOTFOUND:
		return QUEUE_ENOTFOUND;
	case STORE_ENOMEM:
		return QUEUE_ENOMEM;
	case STORE_ECORRUPT:
		return QUEUE_ECORRUPT;
	default:
		return QUEUE_EIO;
	}
}

int
queue_fsm_read_body(struct queue_fsm *q, const char *queue_id, void **body, size_t *len)
{
	if (!queue__id_ok(queue_id))
		return QUEUE_ENOTFOUND;
	int rv = store_get(q->store, STORE_CF_BODY, queue_id, strlen(queue_id), body, len);
	return rv ? queue__store_err(rv) : 0;
}

int
queue_fsm_read_record(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec)
{
	const struct queue_msg *m = queue_fsm_lookup(q, queue_id);
	if (!m)
		return QUEUE_ENOTFOUND;
	/* our own bytes (loaded and checked, or packed by apply): only ENOMEM can fail here */
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, m->rec_len, m->rec);
	if (!r)
		return QUEUE_ENOMEM;
	*rec = r;
	return 0;
}

void
queue_fsm_stats(const struct queue_fsm *q, struct queue_fsm_stats *st)
{
	*st = q->stats;
}

uint64_t
queue_fsm_next_due_ms(const struct queue_fsm *q)
{
	return q->heap.n ? q->heap.a[0]->key : UINT64_MAX;
}

struct queue__due_ctx {
	queue_due_cb cb;
	queue_item_cb icb;
	void *arg;
};

static int
queue__due_visit(void *ctx, const struct queue_hnode *x)
{
	const struct queue__due_ctx *c = ctx;
	return c->cb(c->arg, queue__msg_of(x));
}

int
queue_fsm_due(const struct queue_fsm *q, uint64_t now_ms, queue_due_cb cb, void *arg, size_t max)
{
	struct queue__due_ctx c = {cb, NULL, arg};
	return queue__heap_walk(&q->heap, now_ms, max, queue__due_visit, &c);
}

static int
queue__item_visit(void *ctx, const struct queue_hnode *x)
{
	const struct queue__due_ctx *c = ctx;
	const struct queue__item *it = (const struct queue__item *)x;
	struct queue_item qi = {it->msg, it->dom->name, it->dom->epoch, it->hn.key};
	return c->icb(c->arg, &qi);
}

/* The heap of owner ("" unowned), or NULL for a node that is not a member. */
static const struct queue__heap *
queue__heap_of(const struct queue_fsm *q, const char *owner)
{
	if (!owner || !owner[0])
		return &q->unowned_heap;
	size_t pos;
	const struct queue__member *mb = queue__member_find(q, owner, &pos);
	return mb ? &mb->heap : NULL;
}

int
queue_fsm_due_owned(const struct queue_fsm *q, const char *owner, uint64_t now_ms, queue_item_cb cb,
		    void *arg, size_t max)
{
	const struct queue__heap *h = queue__heap_of(q, owner);
	if (!h)
		return 0;
	struct queue__due_ctx c = {NULL, cb, arg};
	return queue__heap_walk(h, now_ms, max, queue__item_visit, &c);
}

uint64_t
queue_fsm_next_due_owned_ms(const struct queue_fsm *q, const char *owner)
{
	const struct queue__heap *h = queue__heap_of(q, owner);
	return h && h->n ? h->a[0]->key : UINT64_MAX;
}
