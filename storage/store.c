/*
 * store.c - the backend-neutral half of the storage interface: error strings, write batches
 * (an encoded list of operations), dispatch to the backend, and the encodings of raft log
 * entries, hard state and the applied index.
 *
 * Batch encoding, one record per operation: op (1 byte), cf (1 byte), key length (4 bytes LE),
 * value length (4 bytes LE), key, value.  Backends walk it with store_batch_next.
 *
 * Log entry value: version (1), type (1), term (8, BE), crc32 over type, term and data (4, BE),
 * data.  A wrong version, a short value or a crc mismatch decode as STORE_ECORRUPT.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "store.h"

static const struct {
	int code;
	const char *str;
} store__errors[] = {
#define STORE__ERRNO_STR(name, val, str) {val, str},
    STORE_ERRNO_MAP(STORE__ERRNO_STR)
#undef STORE__ERRNO_STR
};

const char *
store_strerror(int code)
{
	for (size_t i = 0; i < sizeof(store__errors) / sizeof(store__errors[0]); i++)
		if (store__errors[i].code == code)
			return store__errors[i].str;
	return code == 0 ? "success" : "unknown error";
}

static const char *const store__cf_names[STORE_CF__COUNT] = {
    [STORE_CF_LOG] = "raft_log", [STORE_CF_META] = "raft_meta", [STORE_CF_BODY] = "body",
    [STORE_CF_QUEUE] = "queue",	 [STORE_CF_INDEX] = "index",
};

const char *
store_cf_name(enum store_cf cf)
{
	return (unsigned)cf < STORE_CF__COUNT ? store__cf_names[cf] : "?";
}

/* ---- integers ---- */

void
store_u64_encode(uint64_t v, unsigned char b[8])
{
	for (int i = 7; i >= 0; i--) {
		b[i] = (unsigned char)v;
		v >>= 8;
	}
}

uint64_t
store_u64_decode(const unsigned char b[8])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | b[i];
	return v;
}

static void
store__u32_encode(uint32_t v, unsigned char b[4])
{
	b[0] = (unsigned char)(v >> 24);
	b[1] = (unsigned char)(v >> 16);
	b[2] = (unsigned char)(v >> 8);
	b[3] = (unsigned char)v;
}

static uint32_t
store__u32_decode(const unsigned char b[4])
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

void
store_log_key(uint64_t index, unsigned char key[STORE_LOG_KEY_LEN])
{
	store_u64_encode(index, key);
}

/* ---- crc32 (IEEE 802.3 polynomial, reflected) ---- */

/* zlib's crc32 (same polynomial and values as a table-driven one, several times faster on
 * large bodies: the log append of a 100 KiB message was a fifth of relayd's CPU). */
static uint32_t
store__crc32(uint32_t crc, const unsigned char *p, size_t n)
{
	while (n > 0) {
		uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
		crc = (uint32_t)crc32((uLong)crc, p, chunk);
		p += chunk;
		n -= chunk;
	}
	return crc;
}

/* ---- batches ---- */

#define STORE__REC_HDR 10

void
store_batch_init(struct store_batch *b)
{
	memset(b, 0, sizeof(*b));
}

void
store_batch_fini(struct store_batch *b)
{
	free(b->buf);
	memset(b, 0, sizeof(*b));
}

void
store_batch_clear(struct store_batch *b)
{
	b->len = 0;
	b->count = 0;
}

/* Appends a record with the key copied and room for vlen value bytes; returns the value's
 * address (to be filled by the caller) or NULL with *rv set. */
static unsigned char *
store__batch_reserve(struct store_batch *b, enum store_op op, enum store_cf cf, const void *key,
		     size_t klen, size_t vlen, int *rv)
{
	if ((unsigned)cf >= STORE_CF__COUNT || (klen && !key)) {
		*rv = STORE_EINVAL;
		return NULL;
	}
	if (klen > STORE_KEY_MAX || vlen > STORE_VALUE_MAX) {
		*rv = STORE_ETOOBIG;
		return NULL;
	}
	size_t need = STORE__REC_HDR + klen + vlen;
	if (b->len + need > STORE_BATCH_MAX) {
		*rv = STORE_ETOOBIG;
		return NULL;
	}
	if (b->len + need > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + need)
			cap *= 2;
		unsigned char *nb = realloc(b->buf, cap);
		if (!nb) {
			*rv = STORE_ENOMEM;
			return NULL;
		}
		b->buf = nb;
		b->cap = cap;
	}
	unsigned char *p = b->buf + b->len;
	p[0] = (unsigned char)op;
	p[1] = (unsigned char)cf;
	uint32_t kl = (uint32_t)klen, vl = (uint32_t)vlen;
	memcpy(p + 2, &kl, 4);
	memcpy(p + 6, &vl, 4);
	if (klen)
		memcpy(p + STORE__REC_HDR, key, klen);
	b->len += need;
	b->count++;
	return p + STORE__REC_HDR + klen;
}

static int
store__batch_add(struct store_batch *b, enum store_op op, enum store_cf cf, const void *key,
		 size_t klen, const void *val, size_t vlen)
{
	int rv = 0;
	if (vlen && !val)
		return STORE_EINVAL;
	unsigned char *v = store__batch_reserve(b, op, cf, key, klen, vlen, &rv);
	if (!v)
		return rv;
	if (vlen)
		memcpy(v, val, vlen);
	return 0;
}

int
store_batch_put(struct store_batch *b, enum store_cf cf, const void *key, size_t klen,
		const void *val, size_t vlen)
{
	return store__batch_add(b, STORE_OP_PUT, cf, key, klen, val, vlen);
}

int
store_batch_delete(struct store_batch *b, enum store_cf cf, const void *key, size_t klen)
{
	return store__batch_add(b, STORE_OP_DELETE, cf, key, klen, NULL, 0);
}

int
store_batch_delete_range(struct store_batch *b, enum store_cf cf, const void *begin, size_t blen,
			 const void *end, size_t elen)
{
	return store__batch_add(b, STORE_OP_DELETE_RANGE, cf, begin, blen, end, elen);
}

int
store_batch_append(struct store_batch *dst, const struct store_batch *src)
{
	if (!src->len)
		return 0;
	if (dst->len + src->len > STORE_BATCH_MAX)
		return STORE_ETOOBIG;
	if (dst->len + src->len > dst->cap) {
		size_t cap = dst->cap ? dst->cap : 4096;
		while (cap < dst->len + src->len)
			cap *= 2;
		unsigned char *nb = realloc(dst->buf, cap);
		if (!nb)
			return STORE_ENOMEM;
		dst->buf = nb;
		dst->cap = cap;
	}
	memcpy(dst->buf + dst->len, src->buf, src->len);
	dst->len += src->len;
	dst->count += src->count;
	return 0;
}

int
store_batch_next(const struct store_batch *b, size_t *pos, enum store_op *op, enum store_cf *cf,
		 const unsigned char **key, size_t *klen, const unsigned char **val, size_t *vlen)
{
	if (*pos >= b->len)
		return 0;
	if (b->len - *pos < STORE__REC_HDR)
		return STORE_ECORRUPT;
	const unsigned char *p = b->buf + *pos;
	uint32_t kl, vl;
	memcpy(&kl, p + 2, 4);
	memcpy(&vl, p + 6, 4);
	if ((size_t)kl + vl > b->len - *pos - STORE__REC_HDR)
		return STORE_ECORRUPT;
	if (p[0] < STORE_OP_PUT || p[0] > STORE_OP_DELETE_RANGE || p[1] >= STORE_CF__COUNT)
		return STORE_ECORRUPT;
	*op = (enum store_op)p[0];
	*cf = (enum store_cf)p[1];
	*key = p + STORE__REC_HDR;
	*klen = kl;
	*val = p + STORE__REC_HDR + kl;
	*vlen = vl;
	*pos += STORE__REC_HDR + (size_t)kl + vl;
	return 1;
}

/* ---- dispatch ---- */

void
store_free(struct store *s)
{
	if (s)
		s->ops->free(s);
}

void
store_inject_write_failures(struct store *s, unsigned n)
{
	__atomic_store_n(&s->fail_writes, n, __ATOMIC_SEQ_CST);
}

int
store_write(struct store *s, const struct store_batch *b, int mode)
{
	if (mode != STORE_WRITE_WAL && mode != STORE_WRITE_SYNC && mode != STORE_WRITE_NOWAL)
		return STORE_EINVAL;
	unsigned n = __atomic_load_n(&s->fail_writes, __ATOMIC_SEQ_CST);
	while (n) {
		if (__atomic_compare_exchange_n(&s->fail_writes, &n, n - 1, 0, __ATOMIC_SEQ_CST,
						__ATOMIC_SEQ_CST))
			return STORE_EIO;
	}
	return s->ops->write(s, b, mode);
}

int
store_get(struct store *s, enum store_cf cf, const void *key, size_t klen, void **val, size_t *vlen)
{
	if ((unsigned)cf >= STORE_CF__COUNT)
		return STORE_EINVAL;
	return s->ops->get(s, cf, key, klen, val, vlen);
}

int
store_iter_new(struct store *s, enum store_cf cf, struct store_iter **out)
{
	if ((unsigned)cf >= STORE_CF__COUNT)
		return STORE_EINVAL;
	return s->ops->iter_new(s, cf, out);
}

void
store_iter_free(struct store_iter *it)
{
	if (it)
		it->ops->free(it);
}

void
store_iter_seek(struct store_iter *it, const void *key, size_t klen)
{
	it->ops->seek(it, key, klen);
}

void
store_iter_seek_last(struct store_iter *it)
{
	it->ops->seek_last(it);
}

int
store_iter_valid(struct store_iter *it)
{
	return it->ops->valid(it);
}

void
store_iter_next(struct store_iter *it)
{
	it->ops->next(it);
}

const unsigned char *
store_iter_key(struct store_iter *it, size_t *klen)
{
	return it->ops->key(it, klen);
}

const unsigned char *
store_iter_value(struct store_iter *it, size_t *vlen)
{
	return it->ops->value(it, vlen);
}

int
store_iter_status(struct store_iter *it)
{
	return it->ops->status(it);
}

/* ---- views ---- */

int
store_view_new(struct store *s, struct store_view **out)
{
	return s->ops->view_new(s, out);
}

void
store_view_free(struct store_view *v)
{
	if (v)
		v->s->ops->view_free(v);
}

int
store_view_get(struct store_view *v, enum store_cf cf, const void *key, size_t klen, void **val,
	       size_t *vlen)
{
	if ((unsigned)cf >= STORE_CF__COUNT)
		return STORE_EINVAL;
	return v->s->ops->view_get(v, cf, key, klen, val, vlen);
}

int
store_view_iter_new(struct store_view *v, enum store_cf cf, struct store_iter **out)
{
	if ((unsigned)cf >= STORE_CF__COUNT)
		return STORE_EINVAL;
	return v->s->ops->view_iter_new(v, cf, out);
}

int
store_batch_wipe_cf(struct store_batch *b, enum store_cf cf)
{
	/* every key of at most STORE_KEY_MAX bytes sorts below STORE_KEY_MAX + 1 bytes of 0xff */
	unsigned char end[STORE_KEY_MAX + 1];
	memset(end, 0xff, sizeof(end));
	return store_batch_delete_range(b, cf, NULL, 0, end, sizeof(end));
}

void
store_digest_init(struct store_digest *d)
{
	memset(d, 0, sizeof(*d));
}

void
store_digest_kv(struct store_digest *d, enum store_cf cf, const void *key, size_t klen,
		uint64_t vlen)
{
	unsigned char h[1 + 4], l[8];
	h[0] = (unsigned char)cf;
	store__u32_encode((uint32_t)klen, h + 1);
	store_u64_encode(vlen, l);
	d->crc = store__crc32(d->crc, h, sizeof(h));
	if (klen)
		d->crc = store__crc32(d->crc, key, klen);
	d->crc = store__crc32(d->crc, l, sizeof(l));
	d->keys++;
	d->bytes += klen + vlen;
}

void
store_digest_data(struct store_digest *d, const void *data, size_t len)
{
	if (len)
		d->crc = store__crc32(d->crc, data, len);
}

int
store_view_digest(struct store_view *v, const enum store_cf *cfs, size_t n, struct store_digest *d)
{
	store_digest_init(d);
	for (size_t i = 0; i < n; i++) {
		struct store_iter *it;
		int rv = store_view_iter_new(v, cfs[i], &it);
		if (rv)
			return rv;
		for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
			size_t kl, vl;
			const unsigned char *k = store_iter_key(it, &kl);
			const unsigned char *val = store_iter_value(it, &vl);
			store_digest_kv(d, cfs[i], k, kl, vl);
			store_digest_data(d, val, vl);
		}
		rv = store_iter_status(it);
		store_iter_free(it);
		if (rv)
			return rv;
	}
	return 0;
}

/* ---- the raft log ---- */

#define STORE__ENTRY_VERSION 1
#define STORE__ENTRY_HDR 14
/* Above this many entries store_log_delete uses one range tombstone instead of point deletes. */
#define STORE__POINT_DELETE_MAX 256

static uint32_t
store__entry_crc(const unsigned char *hdr, const unsigned char *data, size_t len)
{
	/* type and term: hdr[1..9] */
	uint32_t crc = store__crc32(0, hdr + 1, 9);
	return store__crc32(crc, data, len);
}

int
store_log_append(struct store_batch *b, const struct store_entry *e)
{
	if (e->index == 0 || (unsigned)e->type > STORE_ENTRY_CONFIG || (e->len && !e->data))
		return STORE_EINVAL;
	if (e->len > STORE_VALUE_MAX - STORE__ENTRY_HDR)
		return STORE_ETOOBIG;
	unsigned char key[STORE_LOG_KEY_LEN];
	store_log_key(e->index, key);
	int rv = 0;
	unsigned char *v = store__batch_reserve(b, STORE_OP_PUT, STORE_CF_LOG, key, sizeof(key),
						STORE__ENTRY_HDR + e->len, &rv);
	if (!v)
		return rv;
	v[0] = STORE__ENTRY_VERSION;
	v[1] = (unsigned char)e->type;
	store_u64_encode(e->term, v + 2);
	if (e->len)
		memcpy(v + STORE__ENTRY_HDR, e->data, e->len);
	store__u32_encode(store__entry_crc(v, e->data, e->len), v + 10);
	return 0;
}

int
store_log_delete(struct store_batch *b, uint64_t first, uint64_t last)
{
	if (first == 0 || last < first)
		return first == 0 ? STORE_EINVAL : 0;
	unsigned char k1[STORE_LOG_KEY_LEN], k2[STORE_LOG_KEY_LEN];
	if (last - first < STORE__POINT_DELETE_MAX) {
		size_t len = b->len;
		unsigned count = b->count;
		for (uint64_t i = first; i <= last; i++) {
			store_log_key(i, k1);
			int rv = store_batch_delete(b, STORE_CF_LOG, k1, sizeof(k1));
			if (rv) {
				b->len = len;
				b->count = count;
				return rv;
			}
		}
		return 0;
	}
	store_log_key(first, k1);
	if (last == UINT64_MAX) {
		/* a 9-byte key sorts after every 8-byte index key */
		static const unsigned char end[9] = {0xff, 0xff, 0xff, 0xff, 0xff,
						     0xff, 0xff, 0xff, 0xff};
		return store_batch_delete_range(b, STORE_CF_LOG, k1, sizeof(k1), end, sizeof(end));
	}
	store_log_key(last + 1, k2);
	return store_batch_delete_range(b, STORE_CF_LOG, k1, sizeof(k1), k2, sizeof(k2));
}

int
store_entry_decode(const unsigned char *key, size_t klen, const unsigned char *val, size_t vlen,
		   struct store_entry *e)
{
	if (klen != STORE_LOG_KEY_LEN || vlen < STORE__ENTRY_HDR ||
	    val[0] != STORE__ENTRY_VERSION || val[1] > STORE_ENTRY_CONFIG)
		return STORE_ECORRUPT;
	const unsigned char *data = val + STORE__ENTRY_HDR;
	size_t len = vlen - STORE__ENTRY_HDR;
	if (store__u32_decode(val + 10) != store__entry_crc(val, data, len))
		return STORE_ECORRUPT;
	e->index = store_u64_decode(key);
	e->term = store_u64_decode(val + 2);
	e->type = (enum store_entry_type)val[1];
	e->data = data;
	e->len = len;
	return e->index ? 0 : STORE_ECORRUPT;
}

int
store_log_get(struct store *s, uint64_t index, struct store_entry *e, void **buf)
{
	unsigned char key[STORE_LOG_KEY_LEN];
	void *val;
	size_t vlen;
	store_log_key(index, key);
	int rv = store_get(s, STORE_CF_LOG, key, sizeof(key), &val, &vlen);
	if (rv)
		return rv;
	rv = store_entry_decode(key, sizeof(key), val, vlen, e);
	if (rv) {
		free(val);
		return rv;
	}
	*buf = val;
	return 0;
}

int
store_log_bounds(struct store *s, uint64_t *first, uint64_t *last)
{
	struct store_iter *it;
	int rv = store_iter_new(s, STORE_CF_LOG, &it);
	if (rv)
		return rv;
	*first = *last = 0;
	const unsigned char *k;
	size_t klen;
	store_iter_seek(it, NULL, 0);
	if (store_iter_valid(it)) {
		k = store_iter_key(it, &klen);
		if (klen != STORE_LOG_KEY_LEN) {
			rv = STORE_ECORRUPT;
			goto out;
		}
		*first = store_u64_decode(k);
		store_iter_seek_last(it);
		if (!store_iter_valid(it)) {
			rv = STORE_EIO;
			goto out;
		}
		k = store_iter_key(it, &klen);
		if (klen != STORE_LOG_KEY_LEN) {
			rv = STORE_ECORRUPT;
			goto out;
		}
		*last = store_u64_decode(k);
	}
	rv = store_iter_status(it);
out:
	store_iter_free(it);
	return rv;
}

/* ---- raft_meta ---- */

#define STORE__META_VERSION 1

int
store_hardstate_put(struct store_batch *b, const struct store_hardstate *hs)
{
	size_t vl = strnlen(hs->vote, STORE_VOTE_MAX + 1);
	if (vl > STORE_VOTE_MAX)
		return STORE_EINVAL;
	unsigned char v[1 + 8 + 1 + STORE_VOTE_MAX];
	v[0] = STORE__META_VERSION;
	store_u64_encode(hs->term, v + 1);
	v[9] = (unsigned char)vl;
	memcpy(v + 10, hs->vote, vl);
	return store_batch_put(b, STORE_CF_META, STORE_META_HARDSTATE,
			       sizeof(STORE_META_HARDSTATE) - 1, v, 10 + vl);
}

int
store_hardstate_get(struct store *s, struct store_hardstate *hs)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(s, STORE_CF_META, STORE_META_HARDSTATE, sizeof(STORE_META_HARDSTATE) - 1,
			   (void **)&v, &vlen);
	if (rv)
		return rv;
	if (vlen < 10 || v[0] != STORE__META_VERSION || vlen != 10u + v[9]) {
		free(v);
		return STORE_ECORRUPT;
	}
	hs->term = store_u64_decode(v + 1);
	memcpy(hs->vote, v + 10, v[9]);
	hs->vote[v[9]] = 0;
	free(v);
	return 0;
}

int
store_applied_put(struct store_batch *b, uint64_t index)
{
	unsigned char v[9];
	v[0] = STORE__META_VERSION;
	store_u64_encode(index, v + 1);
	return store_batch_put(b, STORE_CF_META, STORE_META_APPLIED, sizeof(STORE_META_APPLIED) - 1,
			       v, sizeof(v));
}

static int store__applied_decode(int rv, unsigned char *v, size_t vlen, uint64_t *index);

int
store_applied_get(struct store *s, uint64_t *index)
{
	unsigned char *v = NULL;
	size_t vlen = 0;
	int rv = store_get(s, STORE_CF_META, STORE_META_APPLIED, sizeof(STORE_META_APPLIED) - 1,
			   (void **)&v, &vlen);
	return store__applied_decode(rv, v, vlen, index);
}

int
store_view_applied_get(struct store_view *vw, uint64_t *index)
{
	unsigned char *v = NULL;
	size_t vlen = 0;
	int rv = store_view_get(vw, STORE_CF_META, STORE_META_APPLIED,
				sizeof(STORE_META_APPLIED) - 1, (void **)&v, &vlen);
	return store__applied_decode(rv, v, vlen, index);
}

/* Decodes an applied-index value read with result rv (v is freed). */
static int
store__applied_decode(int rv, unsigned char *v, size_t vlen, uint64_t *index)
{
	if (rv == STORE_ENOTFOUND) {
		*index = 0;
		return 0;
	}
	if (rv)
		return rv;
	if (vlen != 9 || v[0] != STORE__META_VERSION) {
		free(v);
		return STORE_ECORRUPT;
	}
	*index = store_u64_decode(v + 1);
	free(v);
	return 0;
}
