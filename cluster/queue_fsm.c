/*
 * queue_fsm.c - the queue state machine (see queue_fsm.h for the contract).
 *
 * Apply is a pure function of (in-memory state, index, command) -> (store writes, new in-memory
 * state): it reads no clock, no random numbers and nothing from the store, so a node applying
 * the committed log reaches the state of every other node.  Before any state changes, everything
 * that can fail (validation, allocation, batch space) is done; a failure leaves both the memory
 * and the batch as they were.
 *
 * In memory: one struct queue_msg per message, in a hash table by queue id (chained, power of
 * two buckets, grown at load 1) and on a list in apply order (the order of accept_index, which
 * queue_fsm_new restores after loading the records in key order).
 */
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"

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

#define QUEUE__BUCKETS_MIN 1024u

struct queue_fsm {
	struct store *store;	       /* borrowed */
	struct queue_msg **buckets;    /* owned array; the messages are owned too */
	size_t nbuckets;	       /* power of two */
	struct queue_msg *head, *tail; /* apply order */
	struct queue_counts counts;
};

static uint64_t
queue__hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* ---- validation ---- */

static int
queue__id_ok(const char *id)
{
	if (!id)
		return 0;
	size_t n = strnlen(id, QUEUE_ID_MAX + 1);
	if (n == 0 || n > QUEUE_ID_MAX)
		return 0;
	/* printable ASCII, no space, no quote or backslash: safe in logs, keys and JSON */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];
		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
			return 0;
	}
	return 1;
}

static int
queue__addr_ok(const char *a, int may_be_empty)
{
	if (!a)
		return 0;
	size_t n = strnlen(a, QUEUE_ADDR_MAX + 1);
	return n <= QUEUE_ADDR_MAX && (n > 0 || may_be_empty);
}

int
queue_validate(const Relay__Command *cmd)
{
	if (!cmd || cmd->cmd_case != RELAY__COMMAND__CMD_ACCEPT || !cmd->accept)
		return QUEUE_EINVAL;
	const Relay__Accept *a = cmd->accept;
	if (!queue__id_ok(a->queue_id) || !queue__addr_ok(a->mail_from, 1))
		return QUEUE_EINVAL;
	if (a->n_rcpts == 0 || a->n_rcpts > QUEUE_RCPTS_MAX)
		return QUEUE_EINVAL;
	for (size_t i = 0; i < a->n_rcpts; i++)
		if (!a->rcpts[i] || !queue__addr_ok(a->rcpts[i]->addr, 0))
			return QUEUE_EINVAL;
	if (a->body.len > QUEUE_BODY_MAX || (a->body.len && !a->body.data))
		return QUEUE_EINVAL;
	return 0;
}

/* ---- the in-memory index ---- */

static struct queue_msg *
queue__find(const struct queue_fsm *q, const char *id, size_t n, uint64_t h)
{
	for (struct queue_msg *m = q->buckets[h & (q->nbuckets - 1)]; m; m = m->hnext)
		if (m->hash == h && !strncmp(m->queue_id, id, n) && m->queue_id[n] == 0)
			return m;
	return NULL;
}

/* Grows the table when full; ENOMEM leaves it as it was (still usable). */
static int
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

static void
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
}

static void
queue__msg_free(struct queue_msg *m)
{
	if (m) {
		free(m->rcpts);
		free(m);
	}
}

static struct queue_msg *
queue__msg_new(const char *id, uint32_t nrcpts)
{
	struct queue_msg *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->rcpts = calloc(nrcpts ? nrcpts : 1, sizeof(*m->rcpts));
	if (!m->rcpts) {
		free(m);
		return NULL;
	}
	size_t n = strlen(id);
	memcpy(m->queue_id, id, n + 1);
	m->hash = queue__hash(id, n);
	m->nrcpts = nrcpts;
	return m;
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
}

/* Index CF key for a message: state, next attempt, queue id. */
static size_t
queue__index_key(unsigned char *k, uint8_t state, uint64_t next_ms, const char *id)
{
	size_t n = strlen(id);
	k[0] = state;
	store_u64_encode(next_ms, k + 1);
	memcpy(k + 9, id, n);
	return 9 + n;
}

/* Builds the metadata of a stored record; QUEUE_ECORRUPT if it is not one we could write. */
static int
queue__meta_from_record(const Relay__QueueRecord *r, struct queue_msg **out)
{
	if (!queue__id_ok(r->queue_id) || r->n_rcpts > QUEUE_RCPTS_MAX)
		return QUEUE_ECORRUPT;
	for (size_t i = 0; i < r->n_rcpts; i++)
		if ((unsigned)r->rcpts[i]->state >= QUEUE_RCPT_STATES)
			return QUEUE_ECORRUPT;
	struct queue_msg *m = queue__msg_new(r->queue_id, (uint32_t)r->n_rcpts);
	if (!m)
		return QUEUE_ENOMEM;
	m->received_ms = r->received_ms;
	m->size = r->size;
	m->accept_index = r->accept_index;
	m->next_attempt_ms = r->has_next_attempt_ms ? r->next_attempt_ms : r->received_ms;
	for (size_t i = 0; i < r->n_rcpts; i++) {
		m->rcpts[i].state = (uint8_t)r->rcpts[i]->state;
		m->rcpts[i].attempts = r->rcpts[i]->attempts;
		m->rcpts[i].next_attempt_ms = r->rcpts[i]->next_attempt_ms;
	}
	*out = m;
	return 0;
}

/* ---- apply ---- */

static int
queue__apply_accept(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		    struct store_batch *b)
{
	size_t idlen = strlen(a->queue_id);
	uint64_t h = queue__hash(a->queue_id, idlen);
	if (queue__find(q, a->queue_id, idlen, h))
		return 0; /* duplicate: idempotent retry */

	int rv = QUEUE_ENOMEM;
	Relay__QueueRcpt *rcpts = calloc(a->n_rcpts, sizeof(*rcpts));
	Relay__QueueRcpt **ptrs = calloc(a->n_rcpts, sizeof(*ptrs));
	struct queue_msg *m = queue__msg_new(a->queue_id, (uint32_t)a->n_rcpts);
	unsigned char *packed = NULL;
	if (!rcpts || !ptrs || !m || queue__reserve(q, q->counts.messages + 1))
		goto err_after_alloc;
	Relay__QueueRecord rec;
	queue_record_from_accept(a, index, &rec, rcpts, ptrs);
	size_t plen = relay__queue_record__get_packed_size(&rec);
	packed = malloc(plen ? plen : 1);
	if (!packed)
		goto err_after_alloc;
	relay__queue_record__pack(&rec, packed);

	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	unsigned char ikey[9 + QUEUE_ID_MAX];
	size_t iklen = queue__index_key(ikey, QUEUE_INDEX_QUEUED, a->received_ms, a->queue_id);
	if (store_batch_put(b, STORE_CF_BODY, a->queue_id, idlen, a->body.data, a->body.len) ||
	    store_batch_put(b, STORE_CF_QUEUE, a->queue_id, idlen, packed, plen) ||
	    store_batch_put(b, STORE_CF_INDEX, ikey, iklen, "", 0)) {
		b->len = mark_len;
		b->count = mark_count;
		goto err_after_alloc;
	}

	m->received_ms = a->received_ms;
	m->size = a->body.len;
	m->accept_index = index;
	m->next_attempt_ms = a->received_ms;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		m->rcpts[i].state = QUEUE_RCPT_QUEUED;
		m->rcpts[i].next_attempt_ms = a->received_ms;
	}
	queue__link(q, m);
	m = NULL;
	rv = 0;
err_after_alloc:
	free(packed);
	queue__msg_free(m);
	free(ptrs);
	free(rcpts);
	return rv;
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
	default:
		return QUEUE_EINVAL;
	}
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
	free(q->buckets);
	free(q);
}

int
queue_fsm_new(struct store *s, struct queue_fsm **out)
{
	struct queue_fsm *q = calloc(1, sizeof(*q));
	if (!q)
		return QUEUE_ENOMEM;
	q->store = s;
	q->nbuckets = QUEUE__BUCKETS_MIN;
	q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
	struct queue_msg **all = NULL;
	size_t n = 0, cap = 0;
	struct store_iter *it = NULL;
	int rv = QUEUE_ENOMEM;
	if (!q->buckets)
		goto err_after_alloc;
	if (store_iter_new(s, STORE_CF_QUEUE, &it))
		goto err_after_alloc;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vlen, v);
		struct queue_msg *m = NULL;
		if (!r) {
			rv = QUEUE_ECORRUPT;
		} else {
			rv = queue__meta_from_record(r, &m);
			if (!rv && (strlen(r->queue_id) != klen || memcmp(k, r->queue_id, klen)))
				rv = QUEUE_ECORRUPT;
			relay__queue_record__free_unpacked(r, NULL);
		}
		if (!rv && n == cap) {
			size_t nc = cap ? cap * 2 : 1024;
			struct queue_msg **na = realloc(all, nc * sizeof(*na));
			if (na) {
				all = na;
				cap = nc;
			} else {
				rv = QUEUE_ENOMEM;
			}
		}
		if (rv) {
			queue__msg_free(m);
			goto err_after_load;
		}
		all[n++] = m;
	}
	if (store_iter_status(it)) {
		rv = QUEUE_EIO;
		goto err_after_load;
	}
	rv = QUEUE_ENOMEM;
	if (queue__reserve(q, n))
		goto err_after_load;
	if (n)
		qsort(all, n, sizeof(*all), queue__cmp_index);
	for (size_t i = 1; i < n; i++) {
		if (!queue__cmp_index(&all[i - 1], &all[i])) {
			rv = QUEUE_ECORRUPT; /* cannot happen with unique keys; never trust the disk
					      */
			goto err_after_load;
		}
	}
	for (size_t i = 0; i < n; i++)
		queue__link(q, all[i]);
	free(all);
	store_iter_free(it);
	*out = q;
	return 0;
err_after_load:
	for (size_t i = 0; i < n; i++)
		queue__msg_free(all[i]);
	free(all);
err_after_alloc:
	store_iter_free(it);
	queue_fsm_free(q);
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
	if (!queue__id_ok(queue_id))
		return QUEUE_ENOTFOUND;
	void *v;
	size_t vlen;
	int rv = store_get(q->store, STORE_CF_QUEUE, queue_id, strlen(queue_id), &v, &vlen);
	if (rv)
		return queue__store_err(rv);
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vlen, v);
	free(v);
	if (!r)
		return QUEUE_ECORRUPT;
	*rec = r;
	return 0;
}

static uint64_t
queue__mix(uint64_t h, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

uint64_t
queue_fsm_digest(const struct queue_fsm *q)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const struct queue_msg *m = q->head; m; m = m->next) {
		h = queue__mix(h, m->hash);
		h = queue__mix(h, m->received_ms);
		h = queue__mix(h, m->size);
		h = queue__mix(h, m->accept_index);
		h = queue__mix(h, m->next_attempt_ms);
		h = queue__mix(h, m->nrcpts);
		for (uint32_t i = 0; i < m->nrcpts; i++) {
			h = queue__mix(h, m->rcpts[i].state);
			h = queue__mix(h, m->rcpts[i].attempts);
			h = queue__mix(h, m->rcpts[i].next_attempt_ms);
		}
	}
	return h;
}
