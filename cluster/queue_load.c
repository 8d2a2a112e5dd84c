/*
 * queue_load.c - the queue state machine and its store (queue_fsm_int.h): tombstones of
 * removed queue ids, opening and reloading from the store (records, ownership keys,
 * tombstones), the ownership key/values a snapshot carries, and the state digest.
 */
#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

struct queue__tomb *
queue__tomb_find(const struct queue_fsm *q, const char *id, size_t n, uint64_t h)
{
	for (struct queue__tomb *t = q->tbuckets[h % QUEUE__TOMB_BUCKETS]; t; t = t->hnext)
		if (t->hash == h && !strncmp(t->id, id, n) && t->id[n] == 0)
			return t;
	return NULL;
}

struct queue__tomb *
queue__tomb_new(const char *id, size_t n, uint64_t index)
{
	struct queue__tomb *t = calloc(1, sizeof(*t) + n + 1);
	if (!t)
		return NULL;
	memcpy(t->id, id, n);
	t->hash = queue__hash(id, n);
	t->index = index;
	return t;
}

void
queue__tomb_push(struct queue_fsm *q, struct queue__tomb *t)
{
	size_t bi = t->hash % QUEUE__TOMB_BUCKETS;
	t->hnext = q->tbuckets[bi];
	q->tbuckets[bi] = t;
	t->next = NULL;
	if (q->ttail)
		q->ttail->next = t;
	else
		q->thead = t;
	q->ttail = t;
	q->ntombs++;
}

/* Forgets the oldest tombstone. */
void
queue__tomb_pop(struct queue_fsm *q)
{
	struct queue__tomb *t = q->thead;
	assert(t);
	struct queue__tomb **pp = &q->tbuckets[t->hash % QUEUE__TOMB_BUCKETS];
	while (*pp != t) {
		assert(*pp);
		pp = &(*pp)->hnext;
	}
	*pp = t->hnext;
	q->thead = t->next;
	if (!q->thead)
		q->ttail = NULL;
	q->ntombs--;
	free(t);
}

/* Makes id a tombstone of the command at index (the oldest forgotten beyond
 * QUEUE_TOMBSTONES_MAX): batch first, then memory.  0, or QUEUE_ENOMEM with nothing changed
 * (the batch rolled back to where it was). */
int
queue__tomb_add(struct queue_fsm *q, uint64_t index, const char *id, struct store_batch *b)
{
	size_t idlen = strlen(id), mark_len = b->len;
	unsigned mark_count = b->count;
	struct queue__tomb *t = queue__tomb_new(id, idlen, index);
	if (!t)
		return QUEUE_ENOMEM;
	size_t evict =
	    q->ntombs + 1 > QUEUE_TOMBSTONES_MAX ? q->ntombs + 1 - QUEUE_TOMBSTONES_MAX : 0;
	unsigned char tk[10];
	int bad = store_batch_put(b, STORE_CF_QUEUE, tk, queue__tomb_key(tk, index), id, idlen);
	struct queue__tomb *o = q->thead;
	for (size_t k = 0; !bad && k < evict; k++, o = o->next)
		bad = store_batch_delete(b, STORE_CF_QUEUE, tk, queue__tomb_key(tk, o->index));
	if (bad) {
		b->len = mark_len;
		b->count = mark_count;
		free(t);
		return QUEUE_ENOMEM;
	}
	queue__tomb_push(q, t);
	for (size_t k = 0; k < evict; k++)
		queue__tomb_pop(q);
	return 0;
}

/* ---- open / free ---- */

static int
queue__cmp_index(const void *a, const void *b)
{
	const struct queue_msg *x = *(struct queue_msg *const *)a,
			       *y = *(struct queue_msg *const *)b;
	if (x->accept_index != y->accept_index)
		return x->accept_index < y->accept_index ? -1 : 1;
	return strcmp(x->queue_id, y->queue_id);
}

void
queue_fsm_free(struct queue_fsm *q)
{
	if (!q)
		return;
	struct queue_msg *m = q->head, *next;
	for (; m; m = next) {
		next = m->next;
		queue__msg_free(m);
	}
	for (size_t i = 0; q->dbuckets && i < q->ndbuckets; i++) {
		struct queue__dom *d = q->dbuckets[i], *dn;
		for (; d; d = dn) {
			dn = d->hnext;
			queue__dom_free(d);
		}
	}
	for (size_t i = 0; i < q->nmembers; i++)
		queue__member_free(q->members[i]);
	while (q->thead)
		queue__tomb_pop(q);
	queue__quota_free(q);
	if (q->ov_buckets)
		queue__ov_free(q);
	free(q->ov_buckets);
	free(q->tbuckets);
	free(q->dbuckets);
	free(q->buckets);
	free(q->unowned_dheap.a);
	free(q->idle);
	free(q);
}

int
queue_fsm_reload(struct queue_fsm *q)
{
	struct queue_fsm *n;
	int rv = queue_fsm_new(q->store, &n);
	if (rv)
		return rv;
	if (n->nidle > q->idle_max) {
		queue_fsm_free(n);
		return QUEUE_ECORRUPT;
	}
	n->idle_max = q->idle_max;
	struct queue_fsm old = *q;
	*q = *n;
	q->stats = old.stats;
	*n = old;
	queue_fsm_free(n);
	return 0;
}

/* An assignment read before the members: its owner is resolved after them. */
struct queue__pending_owner {
	struct queue__dom *d;
	char owner[QUEUE_NODE_MAX + 1];
};

/* Loads an assignment key ('D'). */
static int
queue__load_dom_key(struct queue_fsm *q, const char *s, size_t sl, const unsigned char *v,
		    size_t vlen, struct queue__pending_owner **po, size_t *npo, size_t *cpo)
{
	size_t olen;
	const unsigned char *ow;
	if (sl > QUEUE_DOMAIN_MAX || memchr(s, 0, sl))
		return QUEUE_ECORRUPT;
	if (v[0] == QUEUE__OWN_VERSION) {
		if (vlen < QUEUE__DOM_VAL_LEN || vlen > QUEUE__DOM_VAL_LEN + QUEUE_NODE_MAX)
			return QUEUE_ECORRUPT;
		olen = vlen - QUEUE__DOM_VAL_LEN;
		ow = v + QUEUE__DOM_VAL_LEN;
	} else if (v[0] == QUEUE__DOM_VERSION_DEFER) {
		if (vlen < QUEUE__DOM_DEFER_VAL_LEN ||
		    vlen != QUEUE__DOM_DEFER_VAL_LEN + (size_t)v[29] || v[29] > QUEUE_NODE_MAX)
			return QUEUE_ECORRUPT;
		olen = v[29];
		ow = v + QUEUE__DOM_DEFER_VAL_LEN;
	} else {
		return QUEUE_ECORRUPT;
	}
	if (*npo == *cpo) {
		size_t nc = *cpo ? *cpo * 2 : 64;
		struct queue__pending_owner *np = realloc(*po, nc * sizeof(*np));
		if (!np)
			return QUEUE_ENOMEM;
		*po = np;
		*cpo = nc;
	}
	struct queue__dom *d;
	if (queue__dom_reserve(q, q->ndoms + 1) || !(d = queue__dom_new(s, sl)))
		return QUEUE_ENOMEM;
	d->epoch = store_u64_decode(v + 1);
	if (v[0] == QUEUE__DOM_VERSION_DEFER) {
		d->defer_until = store_u64_decode(v + 9);
		d->defer_at = store_u64_decode(v + 17);
		d->defer_count =
		    (uint32_t)v[25] << 24 | (uint32_t)v[26] << 16 | (uint32_t)v[27] << 8 | v[28];
	}
	d->persisted = 1;
	queue__dom_insert(q, d);
	struct queue__pending_owner *p = &(*po)[(*npo)++];
	p->d = d;
	memcpy(p->owner, ow, olen);
	p->owner[olen] = 0;
	return 0;
}

/* Loads one ownership key (k[0] == QUEUE_KEY_OWN). */
static int
queue__load_own(struct queue_fsm *q, const unsigned char *k, size_t klen, const unsigned char *v,
		size_t vlen, struct queue__pending_owner **po, size_t *npo, size_t *cpo)
{
	if (klen < 2)
		return QUEUE_ECORRUPT;
	/* versions: tombstones and reasons have none, an assignment 1 or 2 (its loader checks) */
	if ((k[1] == QUEUE__OWN_MEMBER || k[1] == QUEUE__OWN_QUOTA) &&
	    (vlen < 1 || v[0] != QUEUE__OWN_VERSION))
		return QUEUE_ECORRUPT;
	if (k[1] == QUEUE__OWN_DOMAIN && vlen < 1)
		return QUEUE_ECORRUPT;
	if (k[1] == QUEUE__OWN_QUOTA)
		return queue__quota_load(q, k, klen, v, vlen);
	const char *s = (const char *)k + 2;
	size_t sl = klen - 2;
	switch (k[1]) {
	case QUEUE__OWN_DOMAIN:
		return queue__load_dom_key(q, s, sl, v, vlen, po, npo, cpo);
	case QUEUE__OWN_DEFER: {
		/* after every 'D' key (key order): the reason of a deferred domain */
		struct queue__dom *d =
		    sl <= QUEUE_DOMAIN_MAX ? queue__dom_find(q, s, sl, queue__hash(s, sl)) : NULL;
		if (!d || !d->defer_count || vlen > QUEUE_REPLY_MAX)
			return QUEUE_ECORRUPT;
		d->defer_hash = (uint32_t)queue__hash((const char *)v, vlen);
		return 0;
	}
	case QUEUE__OWN_MEMBER: {
		if (!queue__token_ok(s, sl, QUEUE_NODE_MAX) ||
		    (vlen != QUEUE__MEMBER_VAL_LEN && vlen != QUEUE__MEMBER_VAL_LEN_V1) ||
		    v[1] >= QUEUE_MEMBER_REMOVED || q->nmembers == QUEUE_MEMBERS_MAX)
			return QUEUE_ECORRUPT;
		struct queue__member *mb = calloc(1, sizeof(*mb));
		if (!mb)
			return QUEUE_ENOMEM;
		memcpy(mb->node, s, sl);
		mb->state = v[1];
		mb->since_index = store_u64_decode(v + 2);
		mb->renew_index = store_u64_decode(v + 10);
		if (vlen == QUEUE__MEMBER_VAL_LEN) {
			mb->renew_at_ms = store_u64_decode(v + 18);
			mb->inflight = (uint32_t)v[26] << 24 | (uint32_t)v[27] << 16 |
				       (uint32_t)v[28] << 8 | v[29];
		}
		q->members[q->nmembers++] = mb; /* key order is node id order */
		return 0;
	}
	case QUEUE__OWN_TOMB: {
		if (klen != 10 || !queue__token_ok((const char *)v, vlen, QUEUE_ID_MAX))
			return QUEUE_ECORRUPT;
		struct queue__tomb *t =
		    queue__tomb_new((const char *)v, vlen, store_u64_decode(k + 2));
		if (!t)
			return QUEUE_ENOMEM;
		queue__tomb_push(q, t); /* key order is removal order */
		return 0;
	}
	default:
		return QUEUE_ECORRUPT;
	}
}

/* The ownership keys of the queue CF (they sort first: 0x01), then the assignments' owners. */
static int
queue__load_owner_keys(struct queue_fsm *q)
{
	struct queue__pending_owner *po = NULL;
	size_t npo = 0, cpo = 0;
	struct store_iter *it = NULL;
	int rv = QUEUE_ENOMEM;
	if (store_iter_new(q->store, STORE_CF_QUEUE, &it))
		goto out;
	const unsigned char first = QUEUE_KEY_OWN;
	for (store_iter_seek(it, &first, 1); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		if (!klen || k[0] != QUEUE_KEY_OWN)
			break;
		if ((rv = queue__load_own(q, k, klen, v, vlen, &po, &npo, &cpo)))
			goto out;
	}
	if (store_iter_status(it)) {
		rv = QUEUE_EIO;
		goto out;
	}
	/* the members are in: give the assignments their owners */
	for (size_t i = 0; i < npo; i++) {
		size_t pos;
		struct queue__member *mb = NULL;
		if (po[i].owner[0] && !(mb = queue__member_find(q, po[i].owner, &pos))) {
			rv = QUEUE_ECORRUPT;
			goto out;
		}
		uint64_t have = mb ? mb->ndomains : q->nunowned;
		if (queue__dheap_reserve(queue__owner_dheap(q, mb), have + 1)) {
			rv = QUEUE_ENOMEM;
			goto out;
		}
		queue__dom_attach(q, po[i].d, mb);
	}
	rv = 0;
out:
	free(po);
	store_iter_free(it);
	return rv;
}

/* The messages: one state value each in the index CF ('M'), or a legacy index key ('Q') whose
 * record holds the state.  *all (malloc'd) gets them, unlinked. */
static int
queue__load_msgs(struct queue_fsm *q, struct queue_msg ***all, size_t *n)
{
	size_t cap = 0;
	struct store_iter *it = NULL;
	int rv = QUEUE_ENOMEM;
	*all = NULL;
	*n = 0;
	if (store_iter_new(q->store, STORE_CF_INDEX, &it))
		goto out;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		struct queue_msg *m = NULL;
		if (klen && k[0] == QUEUE__INDEX_MSG)
			rv = queue__state_load(q, k, klen, v, vlen, &m);
		else if (klen && k[0] == QUEUE_INDEX_QUEUED && !vlen)
			rv = queue__legacy_load(q, k, klen, &m);
		else
			rv = QUEUE_ECORRUPT;
		if (!rv && *n == cap) {
			size_t nc = cap ? cap * 2 : 1024;
			struct queue_msg **na = realloc(*all, nc * sizeof(*na));
			if (na) {
				*all = na;
				cap = nc;
			} else {
				rv = QUEUE_ENOMEM;
			}
		}
		if (rv) {
			queue__msg_free(m);
			goto out;
		}
		(*all)[(*n)++] = m;
	}
	rv = store_iter_status(it) ? QUEUE_EIO : 0;
out:
	store_iter_free(it);
	return rv;
}

int
queue_fsm_new(struct store *s, struct queue_fsm **out)
{
	struct queue_fsm *q = calloc(1, sizeof(*q));
	if (!q)
		return QUEUE_ENOMEM;
	q->store = s;
	q->idle_max = QUEUE_IDLE_DOMAINS_MAX;
	q->nbuckets = QUEUE__BUCKETS_MIN;
	q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
	q->ndbuckets = QUEUE__DOM_BUCKETS_MIN;
	q->dbuckets = calloc(q->ndbuckets, sizeof(*q->dbuckets));
	q->tbuckets = calloc(QUEUE__TOMB_BUCKETS, sizeof(*q->tbuckets));
	q->ov_buckets = calloc(QUEUE__OV_BUCKETS, sizeof(*q->ov_buckets));
	q->idle = malloc(QUEUE_IDLE_DOMAINS_MAX * sizeof(*q->idle));
	struct queue_msg **all = NULL;
	size_t n = 0;
	int rv = QUEUE_ENOMEM;
	if (!q->buckets || !q->dbuckets || !q->tbuckets || !q->ov_buckets || !q->idle)
		goto err_after_alloc;
	if ((rv = queue__load_owner_keys(q)) || (rv = queue__load_msgs(q, &all, &n)))
		goto err_after_load;
	rv = QUEUE_ENOMEM;
	if (queue__reserve(q, n))
		goto err_after_load;
	if (n)
		qsort(all, n, sizeof(*all), queue__cmp_index);
	for (size_t i = 1; i < n; i++) {
		if (!queue__cmp_index(&all[i - 1], &all[i])) {
			rv = QUEUE_ECORRUPT; /* a legacy and a new key for one id; never trust the
						disk */
			goto err_after_load;
		}
	}
	for (size_t i = 0; i < n; i++) {
		queue__link(q, all[i]);
		all[i] = NULL;
	}
	for (size_t i = 0; i < q->ndbuckets; i++)
		for (struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext)
			d->leaving = 0; /* the load's count (queue__load_dom) */
	/* an assignment key without a queued recipient is an idle assignment (only keys make
	 * domains without one); more than the bound cannot be written */
	for (size_t i = 0; i < q->ndbuckets; i++) {
		for (struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext) {
			if (d->rcpts_queued)
				continue;
			if (q->nidle == q->idle_max) {
				rv = QUEUE_ECORRUPT;
				goto err_after_load;
			}
			queue__idle_insert(q, d);
		}
	}
	free(all);
	*out = q;
	return 0;
err_after_load:
	for (size_t i = 0; i < n; i++)
		queue__msg_free(all[i]);
	free(all);
err_after_alloc:
	queue_fsm_free(q);
	return rv;
}

int
queue_fsm_own_kv(const struct queue_fsm *q, queue_kv_cb cb, void *arg)
{
	unsigned char k[QUEUE__OWN_KEY_MAX], v[QUEUE__DOM_DEFER_VAL_LEN + QUEUE_NODE_MAX];
	int rv;
	for (size_t i = 0; i < q->nmembers; i++) {
		const struct queue__member *mb = q->members[i];
		size_t kl = queue__own_key(k, QUEUE__OWN_MEMBER, mb->node, strlen(mb->node));
		queue__member_val(v, mb->state, mb->since_index, mb->renew_index, mb->renew_at_ms,
				  mb->inflight);
		if ((rv = cb(arg, k, kl, v, QUEUE__MEMBER_VAL_LEN)))
			return rv;
	}
	for (size_t i = 0; i < q->ndbuckets; i++) {
		for (const struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext) {
			if (!d->persisted)
				continue;
			size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, d->name, d->len);
			size_t vl = queue__dom_val(v, d->epoch, d->owner, d->defer_until,
						   d->defer_at, d->defer_count);
			if ((rv = cb(arg, k, kl, v, vl)))
				return rv;
		}
	}
	for (const struct queue__tomb *t = q->thead; t; t = t->next) {
		size_t kl = queue__tomb_key(k, t->index);
		if ((rv = cb(arg, k, kl, t->id, strlen(t->id))))
			return rv;
	}
	return queue__quota_kv(q, cb, arg);
}

uint64_t
queue__mix(uint64_t h, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The digest's mixer: one multiply per word (queue__mix's eight per-byte rounds made the
 * digest the simulator takes after every apply a third of its time).  Each step is a bijection
 * of v for a given h, so a single changed word always changes that step's result.  Only the
 * digest uses it: shash, which the store keeps, stays on queue__mix. */
static inline uint64_t
queue__dmix(uint64_t h, uint64_t v)
{
	h = (h ^ v) * 0x9e3779b97f4a7c15ull;
	return h ^ (h >> 32);
}

uint64_t
queue_fsm_digest(const struct queue_fsm *q)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const struct queue_msg *m = q->head; m; m = m->next) {
		h = queue__dmix(h, queue__hash(m->queue_id, strlen(m->queue_id)));
		h = queue__dmix(h, m->received_ms);
		h = queue__dmix(h, m->size);
		h = queue__dmix(h, m->accept_index);
		h = queue__dmix(h, m->update_index);
		h = queue__dmix(h, m->next_attempt_ms);
		h = queue__dmix(h, m->nrcpts);
		h = queue__dmix(h, m->nqueued);
		h = queue__dmix(h, m->held);
		h = queue__dmix(h, m->nitems);
		for (uint32_t i = 0; i < m->nrcpts; i++) {
			h = queue__dmix(h, m->rcpts[i].state);
			h = queue__dmix(h, m->rcpts[i].item);
			h = queue__dmix(h, m->rcpts[i].attempts);
			h = queue__dmix(h, m->rcpts[i].next_attempt_ms);
			h = queue__dmix(h, m->rcpts[i].last_attempt_ms);
			h = queue__dmix(h, m->rcpts[i].delay_notified);
		}
		/* what the store holds besides: envelope, results (queue_store.c) */
		h = queue__dmix(h, m->shash);
	}
	/* members in node order */
	h = queue__dmix(h, q->nmembers);
	for (size_t i = 0; i < q->nmembers; i++) {
		const struct queue__member *mb = q->members[i];
		h = queue__dmix(h, queue__hash(mb->node, strlen(mb->node)));
		h = queue__dmix(h, mb->state);
		h = queue__dmix(h, mb->since_index);
		h = queue__dmix(h, mb->renew_index);
		h = queue__dmix(h, mb->renew_at_ms);
		h = queue__dmix(h, mb->inflight);
		h = queue__dmix(h, mb->ndomains);
	}
	/* assignments: a sum, whatever the order of the hash table */
	uint64_t ds = 0;
	for (size_t i = 0; i < q->ndbuckets; i++) {
		for (const struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext) {
			uint64_t x = queue__dmix(queue__dom_hash(d), d->epoch);
			x = queue__dmix(
			    x, d->owner ? queue__hash(d->owner->node, strlen(d->owner->node)) : 0);
			x = queue__dmix(x, d->rcpts_queued);
			x = queue__dmix(x, d->persisted);
			x = queue__dmix(x, d->defer_until);
			x = queue__dmix(x, d->defer_at);
			x = queue__dmix(x, d->defer_count);
			x = queue__dmix(x, d->defer_hash);
			ds += x;
		}
	}
	h = queue__dmix(h, q->ndoms);
	h = queue__dmix(h, ds);
	/* tombstones in removal order */
	h = queue__dmix(h, q->ntombs);
	for (const struct queue__tomb *t = q->thead; t; t = t->next) {
		h = queue__dmix(h, t->hash);
		h = queue__dmix(h, t->index);
	}
	/* quota windows */
	h = queue__dmix(h, q->nquota);
	h = queue__dmix(h, queue__quota_digest(q));
	return h;
}
