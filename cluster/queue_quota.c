/*
 * queue_quota.c - hourly message quotas of the queue state machine (queue_fsm.h "Quotas",
 * queue_fsm_int.h): the windows per user and per client, counted by apply from the committed
 * Accepts, their keys in STORE_CF_QUEUE, their part of snapshots and of the digest.
 *
 * An Accept is handled in the phases of every apply: quota_prepare decides (over a limit or
 * not), allocates and picks the windows to forget, changing nothing; quota_writes adds the
 * store writes; quota_commit changes memory and cannot fail.  Every choice depends only on the
 * applied state and the Accept (its received_ms and the limits it carries), and windows are
 * ordered totally by (start_ms, kind, name), so every node forgets the same ones.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

#define QUOTA__PICK_MAX (QUEUE__QUOTA_SWEEP + 4) /* windows looked at, ours skipped */

/* ---- the table: hash chains and a min-heap by (start_ms, kind, name) ---- */

static uint64_t
quota_hash(char kind, const char *name, size_t len)
{
	return queue__hash(name, len) ^ (uint64_t)(unsigned char)kind * 0x9e3779b97f4a7c15ull;
}

static struct queue__quota *
quota_find(const struct queue_fsm *q, char kind, const char *name, size_t len, uint64_t h)
{
	if (!q->qbuckets)
		return NULL;
	for (struct queue__quota *w = q->qbuckets[h % QUEUE__QUOTA_BUCKETS]; w; w = w->hnext)
		if (w->hash == h && w->kind == kind && w->len == len && !memcmp(w->name, name, len))
			return w;
	return NULL;
}

static struct queue__quota *
quota_new(char kind, const char *name, size_t len, uint64_t h)
{
	struct queue__quota *w = calloc(1, sizeof(*w) + len + 1);
	if (!w)
		return NULL;
	w->kind = kind;
	w->len = len;
	memcpy(w->name, name, len);
	w->hash = h;
	w->hpos = SIZE_MAX;
	return w;
}

static int
quota_less(const struct queue__quota *a, const struct queue__quota *b)
{
	if (a->start_ms != b->start_ms)
		return a->start_ms < b->start_ms;
	if (a->kind != b->kind)
		return a->kind < b->kind;
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->name, b->name, n);
	return c ? c < 0 : a->len < b->len;
}

static void
heap_set(struct queue_fsm *q, size_t i, struct queue__quota *w)
{
	q->qheap[i] = w;
	w->hpos = i;
}

static void
heap_up(struct queue_fsm *q, size_t i)
{
	struct queue__quota *w = q->qheap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!quota_less(w, q->qheap[p]))
			break;
		heap_set(q, i, q->qheap[p]);
		i = p;
	}
	heap_set(q, i, w);
}

static void
heap_down(struct queue_fsm *q, size_t i)
{
	struct queue__quota *w = q->qheap[i];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct queue__quota *best = w;
		if (l < q->nquota && quota_less(q->qheap[l], best))
			m = l, best = q->qheap[l];
		if (r < q->nquota && quota_less(q->qheap[r], best))
			m = r;
		if (m == i)
			break;
		heap_set(q, i, q->qheap[m]);
		i = m;
	}
	heap_set(q, i, w);
}

static int
quota_table_init(struct queue_fsm *q)
{
	if (q->qbuckets)
		return 0;
	q->qbuckets = calloc(QUEUE__QUOTA_BUCKETS, sizeof(*q->qbuckets));
	q->qheap = malloc(QUEUE_QUOTA_KEYS_MAX * sizeof(*q->qheap));
	if (!q->qbuckets || !q->qheap) {
		free(q->qbuckets);
		free(q->qheap);
		q->qbuckets = NULL;
		q->qheap = NULL;
		return QUEUE_ENOMEM;
	}
	return 0;
}

/* Links w (hash and heap); the table has room (nquota < QUEUE_QUOTA_KEYS_MAX). */
static void
quota_link(struct queue_fsm *q, struct queue__quota *w)
{
	QUEUE__PANIC_IF(q->nquota >= QUEUE_QUOTA_KEYS_MAX, "quota table full (%zu)", q->nquota);
	size_t bi = w->hash % QUEUE__QUOTA_BUCKETS;
	w->hnext = q->qbuckets[bi];
	q->qbuckets[bi] = w;
	heap_set(q, q->nquota++, w);
	heap_up(q, w->hpos);
}

/* Unlinks and frees w. */
static void
quota_forget(struct queue_fsm *q, struct queue__quota *w)
{
	struct queue__quota **pp = &q->qbuckets[w->hash % QUEUE__QUOTA_BUCKETS];
	while (*pp != w) {
		QUEUE__PANIC_IF(*pp == NULL, "quota window not in its chain");
		pp = &(*pp)->hnext;
	}
	*pp = w->hnext;
	size_t i = w->hpos;
	struct queue__quota *last = q->qheap[--q->nquota];
	if (i < q->nquota) {
		heap_set(q, i, last);
		heap_down(q, i);
		heap_up(q, last->hpos);
	}
	free(w);
}

void
queue__quota_free(struct queue_fsm *q)
{
	for (size_t i = 0; i < q->nquota; i++)
		free(q->qheap[i]);
	free(q->qheap);
	free(q->qbuckets);
	q->qheap = NULL;
	q->qbuckets = NULL;
	q->nquota = 0;
}

/* ---- keys ---- */

static size_t
quota_key(unsigned char *k, const struct queue__quota *w)
{
	k[0] = QUEUE_KEY_OWN;
	k[1] = QUEUE__OWN_QUOTA;
	k[2] = (unsigned char)w->kind;
	memcpy(k + 3, w->name, w->len);
	return 3 + w->len;
}

static void
quota_val(unsigned char *v, uint64_t start_ms, uint32_t count)
{
	v[0] = QUEUE__OWN_VERSION;
	store_u64_encode(start_ms, v + 1);
	v[9] = (unsigned char)(count >> 24);
	v[10] = (unsigned char)(count >> 16);
	v[11] = (unsigned char)(count >> 8);
	v[12] = (unsigned char)count;
}

/* A name as apply accepts it: 1..QUEUE_QUOTA_NAME_MAX bytes, no control character. */
static int
quota_name_ok(const char *s, size_t n)
{
	if (n == 0 || n > QUEUE_QUOTA_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

int
queue__quota_load(struct queue_fsm *q, const unsigned char *k, size_t klen,
		  const unsigned char *v, size_t vlen)
{
	if (klen < 4 || (k[2] != QUEUE_QUOTA_USER && k[2] != QUEUE_QUOTA_CLIENT) ||
	    !quota_name_ok((const char *)k + 3, klen - 3) || vlen != QUEUE__QUOTA_VAL_LEN ||
	    v[0] != QUEUE__OWN_VERSION || q->nquota == QUEUE_QUOTA_KEYS_MAX)
		return QUEUE_ECORRUPT;
	if (quota_table_init(q))
		return QUEUE_ENOMEM;
	const char *name = (const char *)k + 3;
	size_t len = klen - 3;
	uint64_t h = quota_hash((char)k[2], name, len);
	if (quota_find(q, (char)k[2], name, len, h))
		return QUEUE_ECORRUPT;
	struct queue__quota *w = quota_new((char)k[2], name, len, h);
	if (!w)
		return QUEUE_ENOMEM;
	w->start_ms = store_u64_decode(v + 1);
	w->count = (uint32_t)v[9] << 24 | (uint32_t)v[10] << 16 | (uint32_t)v[11] << 8 | v[12];
	quota_link(q, w);
	return 0;
}

int
queue__quota_kv(const struct queue_fsm *q, queue_kv_cb cb, void *arg)
{
	unsigned char k[QUEUE__QUOTA_KEY_MAX], v[QUEUE__QUOTA_VAL_LEN];
	for (size_t i = 0; i < q->nquota; i++) {
		const struct queue__quota *w = q->qheap[i];
		size_t kl = quota_key(k, w);
		quota_val(v, w->start_ms, w->count);
		int rv = cb(arg, k, kl, v, sizeof(v));
		if (rv)
			return rv;
	}
	return 0;
}

uint64_t
queue__quota_digest(const struct queue_fsm *q)
{
	/* a sum, whatever the order of the heap */
	uint64_t s = 0;
	for (size_t i = 0; i < q->nquota; i++) {
		const struct queue__quota *w = q->qheap[i];
		uint64_t x = w->hash;
		x = (x ^ w->start_ms) * 0x100000001b3ull;
		x = (x ^ w->count) * 0x100000001b3ull;
		x = (x ^ w->len) * 0x100000001b3ull;
		s += x;
	}
	return s ^ (uint64_t)q->nquota << 40;
}

/* ---- apply ---- */

struct quota__key {
	char kind;
	const char *name; /* borrowed from the Accept */
	size_t len;
	uint64_t hash;
	uint32_t limit;
	struct queue__quota *w;	    /* its window, or NULL */
	struct queue__quota *fresh; /* allocated: no window yet */
	int renew;		    /* its window is over: a new one starts at the Accept */
};

struct queue__quota_prep {
	struct quota__key k[2];
	int n;
	uint64_t at; /* the Accept's received_ms */
	struct queue__quota *victims[QUOTA__PICK_MAX];
	size_t nvict;
	uint64_t evicted_live; /* victims whose window had not ended */
};

static int
quota_ours(const struct queue__quota_prep *p, const struct queue__quota *w)
{
	for (int i = 0; i < p->n; i++)
		if (p->k[i].w == w)
			return 1;
	return 0;
}

/* The windows in (start_ms, kind, name) order, the Accept's own skipped, at most max: a
 * best-first walk of the heap (the i-th smallest is within depth i), nothing changed. */
static size_t
quota_smallest(const struct queue_fsm *q, const struct queue__quota_prep *p,
	       struct queue__quota **out, size_t max)
{
	size_t cand[2 * QUOTA__PICK_MAX + 1], nc = 0, n = 0, taken = 0;
	if (q->nquota)
		cand[nc++] = 0;
	while (nc && n < max && taken < QUOTA__PICK_MAX) {
		size_t bi = 0;
		for (size_t i = 1; i < nc; i++)
			if (quota_less(q->qheap[cand[i]], q->qheap[cand[bi]]))
				bi = i;
		size_t slot = cand[bi];
		cand[bi] = cand[--nc];
		taken++;
		if (!quota_ours(p, q->qheap[slot]))
			out[n++] = q->qheap[slot];
		for (size_t c = 2 * slot + 1; c <= 2 * slot + 2 && c < q->nquota; c++)
			cand[nc++] = c;
	}
	return n;
}

static void
quota_prep_free(struct queue__quota_prep *p)
{
	for (int i = 0; i < p->n; i++) {
		free(p->k[i].fresh);
		p->k[i].fresh = NULL;
	}
}

/* Decides for Accept a: QUEUE_EQUOTA (over a limit), 0 (p ready; p->n == 0 when nothing is
 * counted) or QUEUE_ENOMEM.  Changes nothing. */
static int
quota_prepare(struct queue_fsm *q, const Relay__Accept *a, struct queue__quota_prep *p)
{
	memset(p, 0, sizeof(*p));
	p->at = a->received_ms;
	if (a->has_quota_user && a->quota_user && a->auth_user && a->auth_user[0])
		p->k[p->n++] = (struct quota__key){.kind = QUEUE_QUOTA_USER,
						   .name = a->auth_user,
						   .len = strlen(a->auth_user),
						   .limit = a->quota_user};
	if (a->has_quota_client && a->quota_client && a->client_key && a->client_key[0])
		p->k[p->n++] = (struct quota__key){.kind = QUEUE_QUOTA_CLIENT,
						   .name = a->client_key,
						   .len = strlen(a->client_key),
						   .limit = a->quota_client};
	if (!p->n)
		return 0;
	if (quota_table_init(q))
		return QUEUE_ENOMEM;
	size_t nfresh = 0;
	for (int i = 0; i < p->n; i++) {
		struct quota__key *k = &p->k[i];
		k->hash = quota_hash(k->kind, k->name, k->len);
		k->w = quota_find(q, k->kind, k->name, k->len, k->hash);
		k->renew = !k->w || p->at >= k->w->start_ms + QUEUE_QUOTA_WINDOW_MS;
		uint32_t count = k->renew ? 0 : k->w->count;
		if (count >= k->limit)
			return QUEUE_EQUOTA;
		nfresh += !k->w;
	}
	for (int i = 0; i < p->n; i++) {
		struct quota__key *k = &p->k[i];
		if (!k->w && !(k->fresh = quota_new(k->kind, k->name, k->len, k->hash))) {
			quota_prep_free(p);
			return QUEUE_ENOMEM;
		}
	}
	/* what to forget: ended windows (a prefix of the order), up to the sweep, and as many
	 * more as the bound needs */
	size_t room = q->nquota + nfresh > QUEUE_QUOTA_KEYS_MAX
			  ? q->nquota + nfresh - QUEUE_QUOTA_KEYS_MAX
			  : 0;
	struct queue__quota *order[QUOTA__PICK_MAX];
	size_t n = quota_smallest(q, p, order, QUEUE__QUOTA_SWEEP + 2);
	for (size_t i = 0, swept = 0; i < n; i++) {
		int ended = p->at >= order[i]->start_ms + QUEUE_QUOTA_WINDOW_MS;
		if (ended && swept < QUEUE__QUOTA_SWEEP) {
			swept++;
		} else if (room) {
			p->evicted_live += !ended;
		} else {
			break;
		}
		room -= room > 0;
		p->victims[p->nvict++] = order[i];
	}
	QUEUE__PANIC_IF(room != 0, "quota table: %zu windows short of room", room);
	return 0;
}

static int
quota_writes(struct store_batch *b, const struct queue__quota_prep *p)
{
	unsigned char k[QUEUE__QUOTA_KEY_MAX], v[QUEUE__QUOTA_VAL_LEN];
	for (size_t i = 0; i < p->nvict; i++)
		if (store_batch_delete(b, STORE_CF_QUEUE, k, quota_key(k, p->victims[i])))
			return QUEUE_ENOMEM;
	for (int i = 0; i < p->n; i++) {
		const struct quota__key *qk = &p->k[i];
		const struct queue__quota *w = qk->w ? qk->w : qk->fresh;
		quota_val(v, qk->renew ? p->at : w->start_ms, qk->renew ? 1 : w->count + 1);
		if (store_batch_put(b, STORE_CF_QUEUE, k, quota_key(k, w), v, sizeof(v)))
			return QUEUE_ENOMEM;
	}
	return 0;
}

static void
quota_commit(struct queue_fsm *q, struct queue__quota_prep *p)
{
	for (size_t i = 0; i < p->nvict; i++)
		quota_forget(q, p->victims[i]);
	q->stats.quota_evicted += p->evicted_live;
	for (int i = 0; i < p->n; i++) {
		struct quota__key *k = &p->k[i];
		if (k->fresh) {
			k->fresh->start_ms = p->at;
			k->fresh->count = 1;
			quota_link(q, k->fresh);
			k->fresh = NULL;
		} else if (k->renew) {
			k->w->start_ms = p->at;
			k->w->count = 1;
			heap_down(q, k->w->hpos);
			heap_up(q, k->w->hpos);
		} else {
			k->w->count++;
		}
	}
}

/* ---- what queue_apply.c calls ---- */

int
queue__quota_begin(struct queue_fsm *q, const Relay__Accept *a, struct queue__quota_prep **out)
{
	*out = NULL;
	struct queue__quota_prep *p = malloc(sizeof(*p));
	if (!p)
		return QUEUE_ENOMEM;
	int rv = quota_prepare(q, a, p);
	if (rv || !p->n) {
		free(p);
		return rv;
	}
	*out = p;
	return 0;
}

int
queue__quota_write(struct store_batch *b, const struct queue__quota_prep *p)
{
	return p ? quota_writes(b, p) : 0;
}

void
queue__quota_end(struct queue_fsm *q, struct queue__quota_prep *p, int commit)
{
	if (!p)
		return;
	if (commit)
		quota_commit(q, p);
	quota_prep_free(p);
	free(p);
}

/* ---- queries ---- */

static void
quota_out(const struct queue__quota *w, struct queue_quota *out)
{
	out->kind = w->kind;
	memcpy(out->name, w->name, w->len);
	out->name[w->len] = 0;
	out->start_ms = w->start_ms;
	out->count = w->count;
}

int
queue_fsm_quota(const struct queue_fsm *q, char kind, const char *name, struct queue_quota *out)
{
	size_t len = strlen(name);
	if (len > QUEUE_QUOTA_NAME_MAX)
		return QUEUE_ENOTFOUND;
	const struct queue__quota *w = quota_find(q, kind, name, len, quota_hash(kind, name, len));
	if (!w)
		return QUEUE_ENOTFOUND;
	quota_out(w, out);
	return 0;
}

size_t
queue_fsm_quotas(const struct queue_fsm *q, queue_quota_cb cb, void *arg)
{
	struct queue_quota w;
	size_t n = 0;
	for (size_t i = 0; i < q->nquota; i++) {
		quota_out(q->qheap[i], &w);
		n++;
		if (cb(arg, &w))
			break;
	}
	return n;
}
