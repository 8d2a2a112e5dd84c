/*
 * queue_store.c - the queue state machine's stored form (queue_fsm_int.h): the keys and values
 * of a message, the overlay of values apply wrote that the store may not hold yet, and reading
 * a record back (queue_fsm_read_record).
 *
 * A message in the store (queue_fsm.h "Stored form"):
 *   queue CF  queue id                 -> its envelope: the packed Relay__QueueRecord built from
 *                                         the Accept (queue_record_from_accept), never rewritten
 *             queue id, 0, 'l', i (u16) -> recipient i's last result (an Outcome's reply, relay,
 *                                         status and epoch), written by each Outcome for it
 *   index CF  'M', queue id            -> its state: what the scheduler keeps in memory (below)
 *   body CF   queue id                 -> its body
 * The state value (big-endian integers):
 *   version (1), flags (bit 0: held), accept_index (8), received_ms (8), size (8),
 *   update_index (8), shash (8), nrcpts (2), nitems (2),
 *   nitems x (length (1), domain: "" for an item without a queued recipient),
 *   nrcpts x (item (2), state (1), delay_notified (1), attempts (4), next_attempt_ms (8),
 *   last_attempt_ms (8))
 * so queue_fsm_new reads only the index CF (and the ownership keys) to rebuild memory.  shash
 * chains the hashes of what the message's other keys hold (its envelope, then every result
 * written, in apply order), so the digest covers them without reading them.
 *
 * A store written before the state value (a "legacy" message) has the full record (recipient
 * states included) at the queue id and QUEUE_INDEX_QUEUED, next attempt, queue id -> "" in the
 * index CF; it loads from the record, and the first command that changes it writes its state
 * value and deletes the old index key.
 *
 * The overlay: apply adds the envelopes and results it writes, with their index; the host says
 * which indexes are in the store (queue_fsm_written) and those entries go.  Reads look in the
 * overlay first, so a record reads back as applied even before the host wrote the batch.  It
 * holds at most QUEUE_OVERLAY_BYTES_MAX; beyond that the oldest entries go early and a read of
 * them may see the store one write behind (an envelope not there yet reads as not found).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "queue_fsm_int.h"

/* ---- keys ---- */

/* The message's index key: 'M' + queue id, or the legacy one ('Q', next attempt, queue id). */
size_t
queue__index_key(unsigned char *k, const struct queue_msg *m)
{
	size_t n = strlen(m->queue_id);
	if (m->legacy) {
		k[0] = QUEUE_INDEX_QUEUED;
		store_u64_encode(m->next_attempt_ms, k + 1);
		memcpy(k + 9, m->queue_id, n);
		return 9 + n;
	}
	k[0] = QUEUE__INDEX_MSG;
	memcpy(k + 1, m->queue_id, n);
	return 1 + n;
}

size_t
queue__result_key(unsigned char *k, const char *id, size_t idlen, uint32_t rcpt)
{
	memcpy(k, id, idlen);
	k[idlen] = 0;
	k[idlen + 1] = QUEUE__KEY_RESULT;
	k[idlen + 2] = (unsigned char)(rcpt >> 8);
	k[idlen + 3] = (unsigned char)rcpt;
	return idlen + 4;
}

/* ---- the state value ---- */

size_t
queue__state_len(const struct queue__state *s)
{
	size_t n = QUEUE__STATE_FIXED + (size_t)s->m->nrcpts * QUEUE__STATE_RCPT;
	for (uint32_t j = 0; j < s->m->nitems; j++)
		n += 1 + (s->names[j] ? strlen(s->names[j]) : 0);
	return n;
}

static unsigned char *
queue__put16(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
	return p + 2;
}

static unsigned char *
queue__put64(unsigned char *p, uint64_t v)
{
	store_u64_encode(v, p);
	return p + 8;
}

void
queue__state_encode(const struct queue__state *s, unsigned char *v)
{
	const struct queue_msg *m = s->m;
	unsigned char *p = v;
	*p++ = QUEUE__STATE_VERSION;
	*p++ = s->held ? 1 : 0;
	p = queue__put64(p, m->accept_index);
	p = queue__put64(p, m->received_ms);
	p = queue__put64(p, m->size);
	p = queue__put64(p, s->update_index);
	p = queue__put64(p, s->shash);
	p = queue__put16(p, m->nrcpts);
	p = queue__put16(p, m->nitems);
	for (uint32_t j = 0; j < m->nitems; j++) {
		size_t n = s->names[j] ? strlen(s->names[j]) : 0;
		*p++ = (unsigned char)n;
		memcpy(p, s->names[j] ? s->names[j] : "", n);
		p += n;
	}
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		const struct queue_rcpt_meta *r = &s->rcpts[i];
		p = queue__put16(p, r->item);
		*p++ = r->state;
		*p++ = r->delay_notified;
		*p++ = (unsigned char)(r->attempts >> 24);
		*p++ = (unsigned char)(r->attempts >> 16);
		*p++ = (unsigned char)(r->attempts >> 8);
		*p++ = (unsigned char)r->attempts;
		p = queue__put64(p, r->next_attempt_ms);
		p = queue__put64(p, r->last_attempt_ms);
	}
}

/* Adds the message's state value (and, for a legacy message, the deletion of its old index
 * key) to b. */
int
queue__put_state(struct store_batch *b, const struct queue__state *s)
{
	const struct queue_msg *m = s->m;
	size_t len = queue__state_len(s);
	unsigned char *v = malloc(len);
	unsigned char k[QUEUE__INDEX_KEY_MAX];
	if (!v)
		return QUEUE_ENOMEM;
	queue__state_encode(s, v);
	int bad = 0;
	if (m->legacy)
		bad = store_batch_delete(b, STORE_CF_INDEX, k, queue__index_key(k, m));
	size_t n = strlen(m->queue_id);
	k[0] = QUEUE__INDEX_MSG;
	memcpy(k + 1, m->queue_id, n);
	if (!bad)
		bad = store_batch_put(b, STORE_CF_INDEX, k, 1 + n, v, len);
	free(v);
	return bad ? QUEUE_ENOMEM : 0;
}

/* Adds the deletion of every key of m to b: envelope, body, index key, and the results of the
 * recipients attempted before this command (attempts: their counts before it). */
int
queue__del_msg(struct store_batch *b, const struct queue_msg *m)
{
	unsigned char k[QUEUE__INDEX_KEY_MAX];
	const char *id = m->queue_id;
	size_t idlen = strlen(id);
	if (store_batch_delete(b, STORE_CF_QUEUE, id, idlen) ||
	    store_batch_delete(b, STORE_CF_BODY, id, idlen) ||
	    store_batch_delete(b, STORE_CF_INDEX, k, queue__index_key(k, m)))
		return QUEUE_ENOMEM;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		if (!m->rcpts[i].attempts)
			continue;
		unsigned char rk[QUEUE__RESULT_KEY_MAX];
		if (store_batch_delete(b, STORE_CF_QUEUE, rk, queue__result_key(rk, id, idlen, i)))
			return QUEUE_ENOMEM;
	}
	return 0;
}

/* ---- loading a message ---- */

static uint32_t
queue__get16(const unsigned char *p)
{
	return (uint32_t)p[0] << 8 | p[1];
}

/* Finds or makes (unowned, epoch 0, not persisted: a store older than ownership) the domain of
 * an active item, with room for one more item in its heap. */
static int
queue__load_dom(struct queue_fsm *q, const char *name, size_t len, struct queue__dom **out)
{
	struct queue__dom *d = queue__dom_find(q, name, len, queue__hash(name, len));
	if (!d) {
		if (queue__dom_reserve(q, q->ndoms + 1) ||
		    queue__dheap_reserve(&q->unowned_dheap, q->nunowned + 1) ||
		    !(d = queue__dom_new(name, len)))
			return QUEUE_ENOMEM;
		queue__dom_insert(q, d);
		queue__dom_attach(q, d, NULL);
	}
	/* while loading, leaving counts the items loaded for d (linked after all are loaded:
	 * queue_fsm_new clears it) */
	if (queue__iheap_reserve(&d->ih, d->leaving + 1))
		return QUEUE_ENOMEM;
	d->leaving++;
	*out = d;
	return 0;
}

/* Counts, keys and next attempt of m from its recipients' states (the rule of apply). */
static void
queue__msg_derive(struct queue_msg *m)
{
	uint64_t next = UINT64_MAX;
	m->nqueued = 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		const struct queue_rcpt_meta *r = &m->rcpts[i];
		if (r->state != QUEUE_RCPT_QUEUED)
			continue;
		struct queue__item *it = &m->items[r->item];
		m->nqueued++;
		it->nqueued++;
		it->ndeferred += r->attempts > 0;
		if (r->next_attempt_ms < it->key)
			it->key = r->next_attempt_ms;
		if (r->next_attempt_ms < next)
			next = r->next_attempt_ms;
	}
	if (m->nqueued)
		m->next_attempt_ms = next;
}

/* Builds the message of a state value (k: 'M' + queue id); its active items get their domain
 * (not linked yet).  QUEUE_ECORRUPT if it is not one we could write. */
int
queue__state_load(struct queue_fsm *q, const unsigned char *k, size_t klen, const unsigned char *v,
		  size_t vlen, struct queue_msg **out)
{
	char id[QUEUE_ID_MAX + 1];
	if (klen < 2 || klen - 1 > QUEUE_ID_MAX || vlen < QUEUE__STATE_FIXED ||
	    v[0] != QUEUE__STATE_VERSION || v[1] > 1)
		return QUEUE_ECORRUPT;
	memcpy(id, k + 1, klen - 1);
	id[klen - 1] = 0;
	uint32_t nrcpts = queue__get16(v + 42), nitems = queue__get16(v + 44);
	if (!queue__id_ok(id) || !nrcpts || nrcpts > QUEUE_RCPTS_MAX || !nitems || nitems > nrcpts)
		return QUEUE_ECORRUPT;
	/* the domains, then the recipients: the exact length */
	const unsigned char *p = v + QUEUE__STATE_FIXED, *end = v + vlen;
	const unsigned char *names = p;
	for (uint32_t j = 0; j < nitems; j++) {
		if (p >= end || (size_t)(end - p) < 1u + p[0] || memchr(p + 1, 0, p[0]))
			return QUEUE_ECORRUPT;
		p += 1 + p[0];
	}
	if ((size_t)(end - p) != (size_t)nrcpts * QUEUE__STATE_RCPT)
		return QUEUE_ECORRUPT;
	struct queue_msg *m = queue__msg_alloc(id, klen - 1, nrcpts, nitems);
	if (!m)
		return QUEUE_ENOMEM;
	m->held = v[1] & 1;
	m->accept_index = store_u64_decode(v + 2);
	m->received_ms = store_u64_decode(v + 10);
	m->size = store_u64_decode(v + 18);
	m->update_index = store_u64_decode(v + 26);
	m->shash = store_u64_decode(v + 34);
	m->next_attempt_ms = m->received_ms;
	for (uint32_t i = 0; i < nrcpts; i++, p += QUEUE__STATE_RCPT) {
		struct queue_rcpt_meta *r = &m->rcpts[i];
		r->item = (uint16_t)queue__get16(p);
		r->state = p[2];
		r->delay_notified = p[3];
		r->attempts =
		    (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
		r->next_attempt_ms = store_u64_decode(p + 8);
		r->last_attempt_ms = store_u64_decode(p + 16);
		if (r->item >= nitems || r->state >= QUEUE_RCPT_STATES || r->delay_notified > 1) {
			queue__msg_free(m);
			return QUEUE_ECORRUPT;
		}
	}
	queue__msg_derive(m);
	p = names;
	for (uint32_t j = 0; j < nitems; p += 1 + p[0], j++) {
		if (!m->items[j].nqueued)
			continue;
		int rv = queue__load_dom(q, (const char *)p + 1, p[0], &m->items[j].dom);
		if (rv) {
			queue__msg_free(m);
			return rv;
		}
	}
	*out = m;
	return 0;
}

/* Builds a legacy message (k: 'Q', next attempt, queue id) from its full record. */
int
queue__legacy_load(struct queue_fsm *q, const unsigned char *k, size_t klen, struct queue_msg **out)
{
	if (klen <= 9 || klen - 9 > QUEUE_ID_MAX)
		return QUEUE_ECORRUPT;
	void *v;
	size_t vlen;
	int rv = store_get(q->store, STORE_CF_QUEUE, k + 9, klen - 9, &v, &vlen);
	if (rv)
		return rv == STORE_ENOMEM      ? QUEUE_ENOMEM
		       : rv == STORE_ENOTFOUND ? QUEUE_ECORRUPT
					       : QUEUE_EIO;
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vlen, v);
	char(*names)[QUEUE_DOMAIN_MAX + 1] = NULL;
	rv = QUEUE_ECORRUPT;
	if (!r || !queue__id_ok(r->queue_id) || strlen(r->queue_id) != klen - 9 ||
	    memcmp(r->queue_id, k + 9, klen - 9) || !r->n_rcpts || r->n_rcpts > QUEUE_RCPTS_MAX)
		goto out;
	const char *addrs[QUEUE_RCPTS_MAX];
	for (size_t i = 0; i < r->n_rcpts; i++) {
		if ((unsigned)r->rcpts[i]->state >= QUEUE_RCPT_STATES || !r->rcpts[i]->rcpt ||
		    !r->rcpts[i]->rcpt->addr)
			goto out;
		addrs[i] = r->rcpts[i]->rcpt->addr;
	}
	names = malloc(r->n_rcpts * sizeof(*names));
	rv = QUEUE_ENOMEM;
	if (!names)
		goto out;
	uint16_t item[QUEUE_RCPTS_MAX];
	uint32_t nitems = queue__group(addrs, (uint32_t)r->n_rcpts, names, item);
	struct queue_msg *m = queue__msg_alloc(r->queue_id, klen - 9, (uint32_t)r->n_rcpts, nitems);
	if (!m)
		goto out;
	m->legacy = 1;
	m->held = r->has_held && r->held;
	m->accept_index = r->accept_index;
	m->received_ms = r->received_ms;
	m->size = r->size;
	m->update_index = r->has_update_index ? r->update_index : r->accept_index;
	m->shash = queue__hash(v, vlen);
	m->next_attempt_ms = r->has_next_attempt_ms ? r->next_attempt_ms : r->received_ms;
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const Relay__QueueRcpt *qr = r->rcpts[i];
		struct queue_rcpt_meta *mr = &m->rcpts[i];
		mr->item = item[i];
		mr->state = (uint8_t)qr->state;
		mr->attempts = qr->attempts;
		mr->next_attempt_ms = qr->next_attempt_ms;
		mr->last_attempt_ms = qr->last_attempt_ms;
		mr->delay_notified = qr->has_delay_notified && qr->delay_notified;
	}
	queue__msg_derive(m);
	/* its index key names its next attempt: the one the record says */
	if (store_u64_decode(k + 1) != m->next_attempt_ms) {
		rv = QUEUE_ECORRUPT;
		queue__msg_free(m);
		goto out;
	}
	for (uint32_t j = 0; j < nitems; j++) {
		if (!m->items[j].nqueued)
			continue;
		if ((rv = queue__load_dom(q, names[j], strlen(names[j]), &m->items[j].dom))) {
			queue__msg_free(m);
			goto out;
		}
	}
	*out = m;
	rv = 0;
out:
	free(names);
	if (r)
		relay__queue_record__free_unpacked(r, NULL);
	free(v);
	return rv;
}

/* ---- results ---- */

size_t
queue__result_len(const Relay__Outcome *o)
{
	return 1 + 8 + 1 + (o->dsn_status ? strlen(o->dsn_status) : 0) + 2 +
	       (o->relay ? strlen(o->relay) : 0) + 2 + (o->reply ? strlen(o->reply) : 0);
}

/* version, epoch (8), status length (1), status, relay length (2), relay, reply length (2),
 * reply (validated bounds: QUEUE_DSN_STATUS_MAX, QUEUE_RELAY_MAX, QUEUE_REPLY_MAX). */
void
queue__result_encode(const Relay__Outcome *o, unsigned char *v)
{
	unsigned char *p = v;
	*p++ = QUEUE__RESULT_VERSION;
	p = queue__put64(p, o->has_epoch ? o->epoch : 0);
	size_t n = o->dsn_status ? strlen(o->dsn_status) : 0;
	*p++ = (unsigned char)n;
	memcpy(p, o->dsn_status ? o->dsn_status : "", n);
	p += n;
	n = o->relay ? strlen(o->relay) : 0;
	p = queue__put16(p, (uint32_t)n);
	memcpy(p, o->relay ? o->relay : "", n);
	p += n;
	n = o->reply ? strlen(o->reply) : 0;
	p = queue__put16(p, (uint32_t)n);
	memcpy(p, o->reply ? o->reply : "", n);
}

static char *
queue__strndup(const unsigned char *p, size_t n)
{
	char *s = malloc(n + 1);
	if (s) {
		memcpy(s, p, n);
		s[n] = 0;
	}
	return s;
}

/* Puts a result value into a recipient of an unpacked record (strings owned by it). */
static int
queue__result_decode(const unsigned char *v, size_t vlen, Relay__QueueRcpt *rc)
{
	if (vlen < 14 || v[0] != QUEUE__RESULT_VERSION)
		return QUEUE_ECORRUPT;
	const unsigned char *p = v + 9, *end = v + vlen;
	size_t ns = *p++;
	if ((size_t)(end - p) < ns + 2)
		return QUEUE_ECORRUPT;
	const unsigned char *st = p;
	p += ns;
	size_t nrel = queue__get16(p);
	p += 2;
	if ((size_t)(end - p) < nrel + 2)
		return QUEUE_ECORRUPT;
	const unsigned char *rel = p;
	p += nrel;
	size_t nrep = queue__get16(p);
	p += 2;
	if ((size_t)(end - p) != nrep)
		return QUEUE_ECORRUPT;
	char *a = queue__strndup(st, ns), *b = queue__strndup(rel, nrel),
	     *c = queue__strndup(p, nrep);
	if (!a || !b || !c) {
		free(a);
		free(b);
		free(c);
		return QUEUE_ENOMEM;
	}
	free(rc->last_dsn_status);
	free(rc->last_relay);
	free(rc->last_reply);
	rc->last_dsn_status = a;
	rc->last_relay = b;
	rc->last_reply = c;
	rc->has_epoch = 1;
	rc->epoch = store_u64_decode(v + 1);
	return 0;
}

/* ---- the overlay ---- */

static size_t
queue__ov_bucket(const struct queue_msg *m)
{
	return (size_t)(((uintptr_t)m >> 4) * 0x9e3779b97f4a7c15ull >> 40) % QUEUE__OV_BUCKETS;
}

/* A new entry, not linked (queue__ov_link does it where nothing may fail). */
int
queue__ov_add(struct queue_fsm *q, struct queue_msg *m, uint64_t index, uint32_t rcpt,
	      const void *data, size_t len, struct queue__ov **out)
{
	(void)q;
	struct queue__ov *e = malloc(sizeof(*e) + (len ? len : 1));
	if (!e)
		return QUEUE_ENOMEM;
	e->next = e->mnext = NULL;
	e->msg = m;
	e->index = index;
	e->rcpt = rcpt;
	e->len = (uint32_t)len;
	memcpy(e->data, data, len);
	*out = e;
	return 0;
}

static void
queue__ov_unchain(struct queue_fsm *q, struct queue__ov *e)
{
	if (!e->msg)
		return;
	struct queue__ov **pp = &q->ov_buckets[queue__ov_bucket(e->msg)];
	while (*pp && *pp != e)
		pp = &(*pp)->mnext;
	if (*pp)
		*pp = e->mnext;
	e->msg = NULL;
}

static void
queue__ov_pop(struct queue_fsm *q)
{
	struct queue__ov *e = q->ov_head;
	q->ov_head = e->next;
	if (!q->ov_head)
		q->ov_tail = NULL;
	queue__ov_unchain(q, e);
	q->ov_bytes -= sizeof(*e) + e->len;
	free(e);
}

void
queue__ov_link(struct queue_fsm *q, struct queue__ov *e)
{
	size_t bi = queue__ov_bucket(e->msg);
	e->mnext = q->ov_buckets[bi];
	q->ov_buckets[bi] = e;
	e->next = NULL;
	if (q->ov_tail)
		q->ov_tail->next = e;
	else
		q->ov_head = e;
	q->ov_tail = e;
	q->ov_bytes += sizeof(*e) + e->len;
	while (q->ov_bytes > QUEUE_OVERLAY_BYTES_MAX && q->ov_head != e)
		queue__ov_pop(q);
}

/* m goes away: its entries stay in the FIFO (bytes counted) but are found no more. */
void
queue__ov_drop_msg(struct queue_fsm *q, struct queue_msg *m)
{
	struct queue__ov **pp = &q->ov_buckets[queue__ov_bucket(m)];
	while (*pp) {
		struct queue__ov *e = *pp;
		if (e->msg == m) {
			*pp = e->mnext;
			e->msg = NULL;
		} else {
			pp = &e->mnext;
		}
	}
}

void
queue__ov_free(struct queue_fsm *q)
{
	while (q->ov_head)
		queue__ov_pop(q);
}

void
queue_fsm_written(struct queue_fsm *q, uint64_t index)
{
	if (index > q->written_index)
		q->written_index = index;
	while (q->ov_head && q->ov_head->index <= index)
		queue__ov_pop(q);
}

static const struct queue__ov *
queue__ov_find(const struct queue_fsm *q, const struct queue_msg *m, uint32_t rcpt)
{
	for (const struct queue__ov *e = q->ov_buckets[queue__ov_bucket(m)]; e; e = e->mnext)
		if (e->msg == m && e->rcpt == rcpt)
			return e;
	return NULL;
}

/* ---- reading back ---- */

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

/* The record of m as applied: its envelope (overlay or store) with the recipients' states from
 * memory and, when results is set, their last results (overlay or store). */
static int
queue__read(struct queue_fsm *q, const struct queue_msg *m, int results, Relay__QueueRecord **out)
{
	const char *id = m->queue_id;
	size_t idlen = strlen(id);
	const struct queue__ov *e = queue__ov_find(q, m, QUEUE__OV_ENVELOPE);
	Relay__QueueRecord *r;
	if (e) {
		r = relay__queue_record__unpack(NULL, e->len, e->data);
		if (!r)
			return QUEUE_ENOMEM; /* our own bytes */
	} else {
		void *v;
		size_t vlen;
		int rv = store_get(q->store, STORE_CF_QUEUE, id, idlen, &v, &vlen);
		if (rv)
			return queue__store_err(rv);
		r = relay__queue_record__unpack(NULL, vlen, v);
		free(v);
		if (!r)
			return QUEUE_ECORRUPT;
	}
	int rv = QUEUE_ECORRUPT;
	if (r->n_rcpts != m->nrcpts || !r->queue_id || strcmp(r->queue_id, id))
		goto err;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		Relay__QueueRcpt *rc = r->rcpts[i];
		const struct queue_rcpt_meta *mr = &m->rcpts[i];
		if (!rc->rcpt || !rc->rcpt->addr)
			goto err;
		rc->state = (Relay__RcptState)mr->state;
		rc->has_attempts = 1;
		rc->attempts = mr->attempts;
		rc->has_next_attempt_ms = 1;
		rc->next_attempt_ms = mr->next_attempt_ms;
		rc->has_last_attempt_ms = mr->attempts > 0;
		rc->last_attempt_ms = mr->last_attempt_ms;
		rc->has_delay_notified = mr->delay_notified;
		rc->delay_notified = mr->delay_notified;
		if (!results || !mr->attempts)
			continue;
		const struct queue__ov *x = queue__ov_find(q, m, i);
		if (x) {
			if ((rv = queue__result_decode(x->data, x->len, rc)))
				goto err;
			continue;
		}
		unsigned char rk[QUEUE__RESULT_KEY_MAX];
		void *v;
		size_t vlen;
		int grv = store_get(q->store, STORE_CF_QUEUE, rk,
				    queue__result_key(rk, id, idlen, i), &v, &vlen);
		if (grv == STORE_ENOTFOUND)
			continue; /* a legacy record carries its own */
		if (grv) {
			rv = queue__store_err(grv);
			goto err;
		}
		rv = queue__result_decode(v, vlen, rc);
		free(v);
		if (rv)
			goto err;
	}
	r->has_next_attempt_ms = 1;
	r->next_attempt_ms = m->next_attempt_ms;
	r->has_held = m->held;
	r->held = m->held;
	r->has_update_index = 1;
	r->update_index = m->update_index;
	*out = r;
	return 0;
err:
	relay__queue_record__free_unpacked(r, NULL);
	return rv;
}

int
queue_fsm_read_record(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec)
{
	const struct queue_msg *m = queue_fsm_lookup(q, queue_id);
	return m ? queue__read(q, m, 1, rec) : QUEUE_ENOTFOUND;
}

int
queue_fsm_read_envelope(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec)
{
	const struct queue_msg *m = queue_fsm_lookup(q, queue_id);
	return m ? queue__read(q, m, 0, rec) : QUEUE_ENOTFOUND;
}

/* ---- the envelope of an Accept ---- */

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

/* ---- streaming a store's messages (no state machine) ---- */

/* Puts a state value into the record of its message (the recipients' states, held, update
 * index, next attempt).  QUEUE_ECORRUPT if it does not fit the record. */
static int
queue__state_into(const unsigned char *v, size_t vlen, Relay__QueueRecord *r)
{
	if (vlen < QUEUE__STATE_FIXED || v[0] != QUEUE__STATE_VERSION ||
	    queue__get16(v + 42) != r->n_rcpts)
		return QUEUE_ECORRUPT;
	uint32_t nitems = queue__get16(v + 44);
	const unsigned char *p = v + QUEUE__STATE_FIXED, *end = v + vlen;
	for (uint32_t j = 0; j < nitems; j++) {
		if (p >= end || (size_t)(end - p) < 1u + p[0])
			return QUEUE_ECORRUPT;
		p += 1 + p[0];
	}
	if ((size_t)(end - p) != r->n_rcpts * (size_t)QUEUE__STATE_RCPT)
		return QUEUE_ECORRUPT;
	uint64_t next = UINT64_MAX;
	for (size_t i = 0; i < r->n_rcpts; i++, p += QUEUE__STATE_RCPT) {
		Relay__QueueRcpt *rc = r->rcpts[i];
		if (p[2] >= QUEUE_RCPT_STATES)
			return QUEUE_ECORRUPT;
		rc->state = (Relay__RcptState)p[2];
		rc->has_delay_notified = p[3];
		rc->delay_notified = p[3];
		rc->has_attempts = 1;
		rc->attempts =
		    (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
		rc->has_next_attempt_ms = 1;
		rc->next_attempt_ms = store_u64_decode(p + 8);
		rc->has_last_attempt_ms = rc->attempts > 0;
		rc->last_attempt_ms = store_u64_decode(p + 16);
		if (rc->state == RELAY__RCPT_STATE__RCPT_QUEUED && rc->next_attempt_ms < next)
			next = rc->next_attempt_ms;
	}
	r->has_held = v[1] & 1;
	r->held = v[1] & 1;
	r->has_update_index = 1;
	r->update_index = store_u64_decode(v + 26);
	if (next != UINT64_MAX) {
		r->has_next_attempt_ms = 1;
		r->next_attempt_ms = next;
	}
	return 0;
}

/* The message being assembled by queue_store_stream: its envelope with its state, then its
 * results as the iterator reaches them (they follow its key). */
struct queue__stream {
	struct store *s;
	queue_record_cb cb;
	void *arg;
	Relay__QueueRecord *r;
	int stop, bad;
};

static void
queue__stream_emit(struct queue__stream *st)
{
	if (st->r && !st->stop)
		st->stop = st->cb(st->arg, st->r);
	if (st->r)
		relay__queue_record__free_unpacked(st->r, NULL);
	st->r = NULL;
}

/* A new envelope: unpacked, with its state value (none: a legacy record holds its own). */
static void
queue__stream_envelope(struct queue__stream *st, const unsigned char *k, size_t kl,
		       const unsigned char *v, size_t vl)
{
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vl, v);
	if (!r || !r->queue_id || strlen(r->queue_id) != kl || memcmp(r->queue_id, k, kl)) {
		if (r)
			relay__queue_record__free_unpacked(r, NULL);
		st->bad = 1;
		return;
	}
	for (size_t i = 0; i < r->n_rcpts; i++)
		if (!r->rcpts[i]->rcpt) {
			relay__queue_record__free_unpacked(r, NULL);
			st->bad = 1;
			return;
		}
	unsigned char ik[QUEUE__INDEX_KEY_MAX];
	ik[0] = QUEUE__INDEX_MSG;
	memcpy(ik + 1, k, kl);
	void *sv;
	size_t svl;
	int rv = store_get(st->s, STORE_CF_INDEX, ik, 1 + kl, &sv, &svl);
	if (rv == 0) {
		if (queue__state_into(sv, svl, r))
			st->bad = 1;
		free(sv);
	} else if (rv != STORE_ENOTFOUND) {
		st->bad = 1;
	}
	st->r = r;
}

int
queue_store_stream(struct store *s, queue_record_cb cb, void *arg, int *bad)
{
	struct queue__stream st = {s, cb, arg, NULL, 0, 0};
	struct store_iter *it;
	if (store_iter_new(s, STORE_CF_QUEUE, &it))
		return QUEUE_ENOMEM;
	const unsigned char first = QUEUE_KEY_OWN + 1; /* after the ownership keys */
	for (store_iter_seek(it, &first, 1); store_iter_valid(it) && !st.stop;
	     store_iter_next(it)) {
		size_t kl, vl;
		const unsigned char *k = store_iter_key(it, &kl);
		const unsigned char *v = store_iter_value(it, &vl);
		const unsigned char *z = memchr(k, 0, kl);
		if (!z) {
			queue__stream_emit(&st);
			queue__stream_envelope(&st, k, kl, v, vl);
			continue;
		}
		/* a result of the message being assembled (id, 0, 'l', recipient) */
		size_t idl = (size_t)(z - k);
		uint32_t i = kl == idl + 4 ? queue__get16(k + idl + 2) : UINT32_MAX;
		if (!st.r || strlen(st.r->queue_id) != idl || memcmp(st.r->queue_id, k, idl) ||
		    k[idl + 1] != QUEUE__KEY_RESULT || i >= st.r->n_rcpts ||
		    queue__result_decode(v, vl, st.r->rcpts[i]))
			st.bad = 1;
	}
	queue__stream_emit(&st);
	int rv = store_iter_status(it) ? QUEUE_EIO : 0;
	store_iter_free(it);
	*bad |= st.bad;
	return rv;
}

int
queue_store_domain_owner(struct store *s, const char *domain, char *owner, uint64_t *epoch)
{
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t n = strlen(domain);
	if (n > QUEUE_DOMAIN_MAX)
		return QUEUE_ENOTFOUND;
	size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, domain, n);
	void *v;
	size_t vl;
	if (store_get(s, STORE_CF_QUEUE, k, kl, &v, &vl))
		return QUEUE_ENOTFOUND;
	const unsigned char *p = v;
	size_t off = vl >= QUEUE__DOM_DEFER_VAL_LEN && p[0] == QUEUE__DOM_VERSION_DEFER
			 ? QUEUE__DOM_DEFER_VAL_LEN
			 : QUEUE__DOM_VAL_LEN;
	int rv = QUEUE_ECORRUPT;
	if (vl >= off && vl - off <= QUEUE_NODE_MAX) {
		*epoch = store_u64_decode(p + 1);
		memcpy(owner, p + off, vl - off);
		owner[vl - off] = 0;
		rv = 0;
	}
	free(v);
	return rv;
}
