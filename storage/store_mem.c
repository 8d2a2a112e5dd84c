/*
 * store_mem.c - the in-memory twin of the RocksDB backend, for unit tests.
 *
 * Each column family is a sorted array of pointers to (key, value) copies, ordered like RocksDB's
 * default bytewise comparator (memcmp, shorter first on a tie).  A write applies its batch under
 * one mutex, so it is atomic; an iterator works on a private copy taken at creation (a
 * snapshot).
 * An insert or delete moves the shorter side of the array (free room is kept at both ends), so
 * appending, and deleting oldest first (the log, swept tables), cost no move at all; anything
 * else is linear: fine for tests, not for production sizes.  Nothing is persisted.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

struct store_mem_kv {
	unsigned char *key, *val;
	size_t klen, vlen;
};

/* kv[0..n) sorted, each owned; the allocation starts off elements before kv and holds cap of
 * them.  Pointers rather than the pairs themselves: an insert or delete in the middle moves a
 * quarter of the bytes (under ASan every memmove is a byte loop). */
struct store_mem_cf {
	struct store_mem_kv **kv;
	size_t n, cap, off;
};

struct store_mem {
	struct store base;
	pthread_mutex_t mu;
	struct store_mem_cf cf[STORE_CF__COUNT];
};

/* A view: private copies of every column family. */
struct store_mem_view {
	struct store_view base;
	struct store_mem_cf cf[STORE_CF__COUNT]; /* owned copies */
};

struct store_mem_iter {
	struct store_iter base;
	struct store_mem_cf snap; /* owned copies */
	size_t pos;
};

static int
store__mem_cmp(const unsigned char *a, size_t al, const unsigned char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	if (c)
		return c;
	return al < bl ? -1 : al > bl;
}

/* Index of the first key >= key. */
static size_t
store__mem_lower(const struct store_mem_cf *cf, const void *key, size_t klen)
{
	size_t lo = 0, hi = cf->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (store__mem_cmp(cf->kv[mid]->key, cf->kv[mid]->klen, key, klen) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void
store__mem_kv_free(struct store_mem_kv *kv)
{
	free(kv->key);
	free(kv->val);
	free(kv);
}

/* Room for one more element: at the end, or (when the front holds at least half) the elements
 * moved back to the start of the allocation. */
static int
store__mem_room(struct store_mem_cf *cf)
{
	if (cf->off + cf->n < cf->cap)
		return 0;
	struct store_mem_kv **base = cf->cap ? cf->kv - cf->off : NULL;
	if (cf->off && cf->off >= cf->cap / 2) {
		memmove(base, cf->kv, cf->n * sizeof(*cf->kv));
		cf->kv = base;
		cf->off = 0;
		return 0;
	}
	size_t cap = cf->cap ? cf->cap * 2 : 64;
	struct store_mem_kv **nb = realloc(base, cap * sizeof(*nb));
	if (!nb)
		return STORE_ENOMEM;
	cf->kv = nb + cf->off;
	cf->cap = cap;
	return 0;
}

static int
store__mem_put(struct store_mem_cf *cf, const unsigned char *k, size_t kl, const unsigned char *v,
	       size_t vl)
{
	unsigned char *val = malloc(vl ? vl : 1);
	if (!val)
		return STORE_ENOMEM;
	if (vl)
		memcpy(val, v, vl);
	size_t i = store__mem_lower(cf, k, kl);
	if (i < cf->n && !store__mem_cmp(cf->kv[i]->key, cf->kv[i]->klen, k, kl)) {
		free(cf->kv[i]->val);
		cf->kv[i]->val = val;
		cf->kv[i]->vlen = vl;
		return 0;
	}
	int front = cf->off && i < cf->n - i; /* the front is shorter and has room: it moves */
	unsigned char *key = malloc(kl ? kl : 1);
	struct store_mem_kv *kv = malloc(sizeof(*kv));
	if (!key || !kv || (!front && store__mem_room(cf))) {
		free(kv);
		free(key);
		free(val);
		return STORE_ENOMEM;
	}
	if (kl)
		memcpy(key, k, kl);
	if (front) {
		memmove(cf->kv - 1, cf->kv, i * sizeof(*cf->kv));
		cf->kv--;
		cf->off--;
	} else {
		memmove(cf->kv + i + 1, cf->kv + i, (cf->n - i) * sizeof(*cf->kv));
	}
	*kv = (struct store_mem_kv){key, val, kl, vl};
	cf->kv[i] = kv;
	cf->n++;
	return 0;
}

/* Drops kv[i..j) (already freed): the shorter side moves. */
static void
store__mem_remove(struct store_mem_cf *cf, size_t i, size_t j)
{
	if (i < cf->n - j) {
		memmove(cf->kv + (j - i), cf->kv, i * sizeof(*cf->kv));
		cf->kv += j - i;
		cf->off += j - i;
	} else {
		memmove(cf->kv + i, cf->kv + j, (cf->n - j) * sizeof(*cf->kv));
	}
	cf->n -= j - i;
}

static void
store__mem_delete_range(struct store_mem_cf *cf, const unsigned char *b, size_t bl,
			const unsigned char *e, size_t el)
{
	size_t i = store__mem_lower(cf, b, bl), j = store__mem_lower(cf, e, el);
	if (j <= i)
		return;
	for (size_t x = i; x < j; x++)
		store__mem_kv_free(cf->kv[x]);
	store__mem_remove(cf, i, j);
}

static int
store__mem_write(struct store *base, const struct store_batch *b, int mode)
{
	struct store_mem *s = (struct store_mem *)base;
	size_t pos = 0;
	enum store_op op;
	enum store_cf cf;
	const unsigned char *k, *v;
	size_t kl, vl;
	int rv;
	/* validate first so a damaged batch applies nothing */
	while ((rv = store_batch_next(b, &pos, &op, &cf, &k, &kl, &v, &vl)) == 1)
		;
	if (rv < 0)
		return rv;
	pthread_mutex_lock(&s->mu);
	pos = 0;
	while ((rv = store_batch_next(b, &pos, &op, &cf, &k, &kl, &v, &vl)) == 1) {
		switch (op) {
		case STORE_OP_PUT:
			/* an ENOMEM here leaves a partial write: acceptable for a test twin */
			if (store__mem_put(&s->cf[cf], k, kl, v, vl)) {
				pthread_mutex_unlock(&s->mu);
				return STORE_ENOMEM;
			}
			break;
		case STORE_OP_DELETE: {
			size_t i = store__mem_lower(&s->cf[cf], k, kl);
			struct store_mem_cf *c = &s->cf[cf];
			if (i < c->n && !store__mem_cmp(c->kv[i]->key, c->kv[i]->klen, k, kl)) {
				store__mem_kv_free(c->kv[i]);
				store__mem_remove(c, i, i + 1);
			}
			break;
		}
		case STORE_OP_DELETE_RANGE:
			store__mem_delete_range(&s->cf[cf], k, kl, v, vl);
			break;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return 0;
}

static int
store__mem_get(struct store *base, enum store_cf cfi, const void *key, size_t klen, void **val,
	       size_t *vlen)
{
	struct store_mem *s = (struct store_mem *)base;
	int rv = STORE_ENOTFOUND;
	pthread_mutex_lock(&s->mu);
	struct store_mem_cf *cf = &s->cf[cfi];
	size_t i = store__mem_lower(cf, key, klen);
	if (i < cf->n && !store__mem_cmp(cf->kv[i]->key, cf->kv[i]->klen, key, klen)) {
		void *v = malloc(cf->kv[i]->vlen ? cf->kv[i]->vlen : 1);
		if (!v) {
			rv = STORE_ENOMEM;
		} else {
			memcpy(v, cf->kv[i]->val, cf->kv[i]->vlen);
			*val = v;
			*vlen = cf->kv[i]->vlen;
			rv = 0;
		}
	}
	pthread_mutex_unlock(&s->mu);
	return rv;
}

static void
store__mem_cf_fini(struct store_mem_cf *cf)
{
	for (size_t i = 0; i < cf->n; i++)
		store__mem_kv_free(cf->kv[i]);
	free(cf->cap ? cf->kv - cf->off : NULL);
	memset(cf, 0, sizeof(*cf));
}

static void
store__mem_iter_free(struct store_iter *base)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	store__mem_cf_fini(&it->snap);
	free(it);
}

static void
store__mem_iter_seek(struct store_iter *base, const void *key, size_t klen)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	it->pos = klen ? store__mem_lower(&it->snap, key, klen) : 0;
}

static void
store__mem_iter_seek_last(struct store_iter *base)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	it->pos = it->snap.n ? it->snap.n - 1 : 0;
}

static int
store__mem_iter_valid(struct store_iter *base)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	return it->pos < it->snap.n;
}

static void
store__mem_iter_next(struct store_iter *base)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	if (it->pos < it->snap.n)
		it->pos++;
}

static const unsigned char *
store__mem_iter_key(struct store_iter *base, size_t *klen)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	*klen = it->snap.kv[it->pos]->klen;
	return it->snap.kv[it->pos]->key;
}

static const unsigned char *
store__mem_iter_value(struct store_iter *base, size_t *vlen)
{
	struct store_mem_iter *it = (struct store_mem_iter *)base;
	*vlen = it->snap.kv[it->pos]->vlen;
	return it->snap.kv[it->pos]->val;
}

static int
store__mem_iter_status(struct store_iter *base)
{
	return 0;
}

static const struct store_iter_ops store__mem_iter_ops = {
    .free = store__mem_iter_free,
    .seek = store__mem_iter_seek,
    .seek_last = store__mem_iter_seek_last,
    .valid = store__mem_iter_valid,
    .next = store__mem_iter_next,
    .key = store__mem_iter_key,
    .value = store__mem_iter_value,
    .status = store__mem_iter_status,
};

static int store__mem_cf_copy(struct store_mem_cf *dst, const struct store_mem_cf *src);

static int
store__mem_iter_new(struct store *base, enum store_cf cfi, struct store_iter **out)
{
	struct store_mem *s = (struct store_mem *)base;
	struct store_mem_iter *it = calloc(1, sizeof(*it));
	if (!it)
		return STORE_ENOMEM;
	it->base.ops = &store__mem_iter_ops;
	pthread_mutex_lock(&s->mu);
	int rv = store__mem_cf_copy(&it->snap, &s->cf[cfi]);
	pthread_mutex_unlock(&s->mu);
	if (rv) {
		store__mem_iter_free(&it->base);
		return rv;
	}
	*out = &it->base;
	return 0;
}

/* Copies src into dst (empty).  STORE_ENOMEM leaves dst partly filled (the caller frees it). */
static int
store__mem_cf_copy(struct store_mem_cf *dst, const struct store_mem_cf *src)
{
	for (size_t i = 0; i < src->n; i++)
		if (store__mem_put(dst, src->kv[i]->key, src->kv[i]->klen, src->kv[i]->val,
				   src->kv[i]->vlen))
			return STORE_ENOMEM;
	return 0;
}

static void
store__mem_view_free(struct store_view *base)
{
	struct store_mem_view *v = (struct store_mem_view *)base;
	for (int i = 0; i < STORE_CF__COUNT; i++)
		store__mem_cf_fini(&v->cf[i]);
	free(v);
}

static int
store__mem_view_new(struct store *base, struct store_view **out)
{
	struct store_mem *s = (struct store_mem *)base;
	struct store_mem_view *v = calloc(1, sizeof(*v));
	if (!v)
		return STORE_ENOMEM;
	v->base.s = base;
	int rv = 0;
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < STORE_CF__COUNT && !rv; i++)
		rv = store__mem_cf_copy(&v->cf[i], &s->cf[i]);
	pthread_mutex_unlock(&s->mu);
	if (rv) {
		store__mem_view_free(&v->base);
		return rv;
	}
	*out = &v->base;
	return 0;
}

static int
store__mem_view_get(struct store_view *base, enum store_cf cfi, const void *key, size_t klen,
		    void **val, size_t *vlen)
{
	struct store_mem_view *v = (struct store_mem_view *)base;
	struct store_mem_cf *cf = &v->cf[cfi];
	size_t i = store__mem_lower(cf, key, klen);
	if (i >= cf->n || store__mem_cmp(cf->kv[i]->key, cf->kv[i]->klen, key, klen))
		return STORE_ENOTFOUND;
	void *c = malloc(cf->kv[i]->vlen ? cf->kv[i]->vlen : 1);
	if (!c)
		return STORE_ENOMEM;
	memcpy(c, cf->kv[i]->val, cf->kv[i]->vlen);
	*val = c;
	*vlen = cf->kv[i]->vlen;
	return 0;
}

static int
store__mem_view_iter_new(struct store_view *base, enum store_cf cfi, struct store_iter **out)
{
	struct store_mem_view *v = (struct store_mem_view *)base;
	struct store_mem_iter *it = calloc(1, sizeof(*it));
	if (!it)
		return STORE_ENOMEM;
	it->base.ops = &store__mem_iter_ops;
	if (store__mem_cf_copy(&it->snap, &v->cf[cfi])) {
		store__mem_iter_free(&it->base);
		return STORE_ENOMEM;
	}
	*out = &it->base;
	return 0;
}

static void
store__mem_free(struct store *base)
{
	struct store_mem *s = (struct store_mem *)base;
	for (int i = 0; i < STORE_CF__COUNT; i++)
		store__mem_cf_fini(&s->cf[i]);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static const struct store_ops store__mem_ops = {
    .write = store__mem_write,
    .get = store__mem_get,
    .iter_new = store__mem_iter_new,
    .free = store__mem_free,
    .view_new = store__mem_view_new,
    .view_free = store__mem_view_free,
    .view_get = store__mem_view_get,
    .view_iter_new = store__mem_view_iter_new,
};

int
store_mem_new(struct store **out)
{
	struct store_mem *s = calloc(1, sizeof(*s));
	if (!s)
		return STORE_ENOMEM;
	s->base.ops = &store__mem_ops;
	pthread_mutex_init(&s->mu, NULL);
	*out = &s->base;
	return 0;
}
