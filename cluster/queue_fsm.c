/*
 * queue_fsm.c - the queue state machine (see queue_fsm.h for the contract).
 *
 * Apply is a pure function of (in-memory state, index, command) -> (store writes, new in-memory
 * state): it reads no clock, no random numbers and nothing from the store, so a node applying
 * the committed log reaches the state of every other node.  Before any state changes, everything
 * that can fail (validation, allocation, batch space) is done; a failure leaves both the memory
 * and the batch as they were.
 *
 * In memory: one struct queue_msg per message holding its packed record (what the queue CF
 * holds) and metadata; in a hash table by queue id (chained, power of two buckets, grown at
 * load 1); on a list in apply order (the order of accept_index, which queue_fsm_new restores
 * after loading the records in key order); and, since every message in the queue has a queued
 * recipient, in a binary min-heap keyed by (next_attempt_ms, accept_index) - a total order, as
 * accept_index is unique - for the scheduler.  An Outcome or Delete unpacks the record, builds
 * the new one as a shallow copy pointing at the command's strings, and packs it.
 */
#include <assert.h>
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
	struct queue_msg **heap;       /* owned array (messages borrowed): next-attempt order */
	size_t nheap, heapcap;
	struct queue_counts counts;
	struct queue_fsm_stats stats;
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

static int
queue__accept_ok(const Relay__Accept *a)
{
	if (!a || !queue__id_ok(a->queue_id) || !queue__addr_ok(a->mail_from, 1))
		return 0;
	if (a->n_rcpts == 0 || a->n_rcpts > QUEUE_RCPTS_MAX)
		return 0;
	for (size_t i = 0; i < a->n_rcpts; i++)
		if (!a->rcpts[i] || !queue__addr_ok(a->rcpts[i]->addr, 0))
			return 0;
	if (a->body.len > QUEUE_BODY_MAX || (a->body.len && !a->body.data))
		return 0;
	return 1;
}

/* Optional one-line text: absent, or at most max bytes with no CR, LF (or other C0 control but
 * TAB) and no DEL: safe in a log line and in the record. */
static int
queue__line_ok(const char *s, size_t max)
{
	if (!s)
		return 1;
	size_t n = strnlen(s, max + 1);
	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return 0;
	}
	return 1;
}

static int
queue__dsn_status_ok(const char *s)
{
	if (!s)
		return 1;
	size_t n = strnlen(s, QUEUE_DSN_STATUS_MAX + 1);
	if (n > QUEUE_DSN_STATUS_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '.' || (s[i] >= '0' && s[i] <= '9')))
			return 0;
	return 1;
}

/* Recipient indexes: each < QUEUE_RCPTS_MAX, no repeats (a repeat would count an attempt
 * twice).  The bound against the message's recipients is checked at apply. */
static int
queue__indexes_ok(const uint32_t *idx, size_t n, int may_be_empty)
{
	if ((n == 0 && !may_be_empty) || n > QUEUE_RCPTS_MAX || (n && !idx))
		return 0;
	unsigned char seen[(QUEUE_RCPTS_MAX + 7) / 8] = {0};
	for (size_t i = 0; i < n; i++) {
		uint32_t k = idx[i];
		if (k >= QUEUE_RCPTS_MAX || (seen[k / 8] & (1u << (k % 8))))
			return 0;
		seen[k / 8] |= (unsigned char)(1u << (k % 8));
	}
	return 1;
}

static int
queue__outcome_ok(const Relay__Outcome *o)
{
	if (!o || !queue__id_ok(o->queue_id) ||
	    !queue__indexes_ok(o->rcpt_index, o->n_rcpt_index, 0))
		return 0;
	switch (o->kind) {
	case RELAY__OUTCOME_KIND__DELIVERED:
	case RELAY__OUTCOME_KIND__FAILED:
		break;
	case RELAY__OUTCOME_KIND__DEFERRED:
		if (!o->has_next_attempt_ms)
			return 0;
		break;
	default:
		return 0;
	}
	if (!queue__line_ok(o->reply, QUEUE_REPLY_MAX) ||
	    !queue__line_ok(o->relay, QUEUE_RELAY_MAX) || !queue__dsn_status_ok(o->dsn_status))
		return 0;
	if (o->dsn) {
		/* a DSN comes from the null reverse-path (RFC 3464 2., RFC 5321 4.5.5: no DSN
		 * about a DSN) and is another message */
		if (!queue__accept_ok(o->dsn) || o->dsn->mail_from[0] != 0 ||
		    !strcmp(o->dsn->queue_id, o->queue_id))
			return 0;
	}
	return 1;
}

int
queue_validate(const Relay__Command *cmd)
{
	if (!cmd)
		return QUEUE_EINVAL;
	switch (cmd->cmd_case) {
	case RELAY__COMMAND__CMD_ACCEPT:
		return queue__accept_ok(cmd->accept) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_OUTCOME:
		return queue__outcome_ok(cmd->outcome) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_DELETE:
		if (!cmd->delete_ || !queue__id_ok(cmd->delete_->queue_id) ||
		    !queue__indexes_ok(cmd->delete_->rcpt_index, cmd->delete_->n_rcpt_index, 1))
			return QUEUE_EINVAL;
		return 0;
	default:
		return QUEUE_EINVAL;
	}
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

/* The heap order: earliest next attempt first, then apply order (unique). */
static int
queue__before(const struct queue_msg *a, const struct queue_msg *b)
{
	if (a->next_attempt_ms != b->next_attempt_ms)
		return a->next_attempt_ms < b->next_attempt_ms;
	if (a->accept_index != b->accept_index)
		return a->accept_index < b->accept_index;
	return strcmp(a->queue_id, b->queue_id) < 0;
}

/* Makes room for n messages in the heap; ENOMEM leaves it as it was. */
static int
queue__heap_reserve(struct queue_fsm *q, size_t n)
{
	if (n <= q->heapcap)
		return 0;
	size_t nc = q->heapcap ? q->heapcap : QUEUE__BUCKETS_MIN;
	while (nc < n)
		nc *= 2;
	struct queue_msg **h = realloc(q->heap, nc * sizeof(*h));
	if (!h)
		return QUEUE_ENOMEM;
	q->heap = h;
	q->heapcap = nc;
	return 0;
}

static void
queue__heap_set(struct queue_fsm *q, size_t pos, struct queue_msg *m)
{
	q->heap[pos] = m;
	m->heap_pos = pos;
}

static void
queue__heap_up(struct queue_fsm *q, size_t pos)
{
	struct queue_msg *m = q->heap[pos];
	while (pos > 0) {
		size_t parent = (pos - 1) / 2;
		if (!queue__before(m, q->heap[parent]))
			break;
		queue__heap_set(q, pos, q->heap[parent]);
		pos = parent;
	}
	queue__heap_set(q, pos, m);
}

static void
queue__heap_down(struct queue_fsm *q, size_t pos)
{
	struct queue_msg *m = q->heap[pos];
	for (;;) {
		size_t c = 2 * pos + 1;
		if (c >= q->nheap)
			break;
		if (c + 1 < q->nheap && queue__before(q->heap[c + 1], q->heap[c]))
			c++;
		if (!queue__before(q->heap[c], m))
			break;
		queue__heap_set(q, pos, q->heap[c]);
		pos = c;
	}
	queue__heap_set(q, pos, m);
}

/* Precondition: room reserved (queue__heap_reserve). */
static void
queue__heap_insert(struct queue_fsm *q, struct queue_msg *m)
{
	assert(q->nheap < q->heapcap && m->heap_pos == SIZE_MAX);
	queue__heap_set(q, q->nheap++, m);
	queue__heap_up(q, m->heap_pos);
}

static void
queue__heap_remove(struct queue_fsm *q, struct queue_msg *m)
{
	size_t pos = m->heap_pos;
	if (pos == SIZE_MAX)
		return;
	assert(pos < q->nheap && q->heap[pos] == m);
	m->heap_pos = SIZE_MAX;
	struct queue_msg *last = q->heap[--q->nheap];
	if (pos == q->nheap)
		return;
	queue__heap_set(q, pos, last);
	queue__heap_up(q, pos);
	queue__heap_down(q, last->heap_pos);
}

/* After m's next_attempt_ms changed. */
static void
queue__heap_fix(struct queue_fsm *q, struct queue_msg *m)
{
	queue__heap_up(q, m->heap_pos);
	queue__heap_down(q, m->heap_pos);
}

/* Adds m to the table, the apply order, the counts and (if it has queued recipients) the heap.
 * Preconditions: room reserved in the table and the heap. */
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
	if (m->nqueued)
		queue__heap_insert(q, m);
}

/* The reverse of queue__link. */
static void
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
	queue__heap_remove(q, m);
}

static void
queue__msg_free(struct queue_msg *m)
{
	if (m) {
		free(m->rcpts);
		free(m->rec);
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
	m->heap_pos = SIZE_MAX;
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
	rec->has_update_index = 1;
	rec->update_index = index;
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

/* Builds the metadata of a stored record (packed: v, vlen, copied); QUEUE_ECORRUPT if it is not
 * one we could write. */
static int
queue__meta_from_record(const Relay__QueueRecord *r, const void *v, size_t vlen,
			struct queue_msg **out)
{
	if (!queue__id_ok(r->queue_id) || r->n_rcpts > QUEUE_RCPTS_MAX)
		return QUEUE_ECORRUPT;
	for (size_t i = 0; i < r->n_rcpts; i++)
		if ((unsigned)r->rcpts[i]->state >= QUEUE_RCPT_STATES)
			return QUEUE_ECORRUPT;
	struct queue_msg *m = queue__msg_new(r->queue_id, (uint32_t)r->n_rcpts);
	if (!m || !(m->rec = malloc(vlen ? vlen : 1))) {
		queue__msg_free(m);
		return QUEUE_ENOMEM;
	}
	memcpy(m->rec, v, vlen);
	m->rec_len = vlen;
	m->received_ms = r->received_ms;
	m->size = r->size;
	m->accept_index = r->accept_index;
	m->next_attempt_ms = r->has_next_attempt_ms ? r->next_attempt_ms : r->received_ms;
	uint64_t next = UINT64_MAX;
	for (size_t i = 0; i < r->n_rcpts; i++) {
		const Relay__QueueRcpt *qr = r->rcpts[i];
		m->rcpts[i].state = (uint8_t)qr->state;
		m->rcpts[i].attempts = qr->attempts;
		m->rcpts[i].next_attempt_ms = qr->next_attempt_ms;
		m->rcpts[i].last_attempt_ms = qr->last_attempt_ms;
		m->rcpts[i].delay_notified = qr->has_delay_notified && qr->delay_notified;
		if (qr->state == RELAY__RCPT_STATE__RCPT_QUEUED) {
			m->nqueued++;
			if (qr->next_attempt_ms < next)
				next = qr->next_attempt_ms;
		}
	}
	if (m->nqueued)
		m->next_attempt_ms = next; /* the same rule as apply */
	*out = m;
	return 0;
}

/* ---- apply ---- */

/* Builds the message of Accept a at index (not linked; its record packed) and reserves room
 * for it.  *out = NULL when the queue id is present (a duplicate: no-op). */
static int
queue__accept_prepare(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		      struct queue_msg **out)
{
	*out = NULL;
	size_t idlen = strlen(a->queue_id);
	if (queue__find(q, a->queue_id, idlen, queue__hash(a->queue_id, idlen)))
		return 0; /* duplicate: idempotent retry */
	int rv = QUEUE_ENOMEM;
	Relay__QueueRcpt *rcpts = calloc(a->n_rcpts, sizeof(*rcpts));
	Relay__QueueRcpt **ptrs = calloc(a->n_rcpts, sizeof(*ptrs));
	struct queue_msg *m = queue__msg_new(a->queue_id, (uint32_t)a->n_rcpts);
	if (!rcpts || !ptrs || !m || queue__reserve(q, q->counts.messages + 1) ||
	    queue__heap_reserve(q, q->nheap + 1))
		goto err_after_alloc;
	Relay__QueueRecord rec;
	queue_record_from_accept(a, index, &rec, rcpts, ptrs);
	m->rec_len = relay__queue_record__get_packed_size(&rec);
	m->rec = malloc(m->rec_len ? m->rec_len : 1);
	if (!m->rec)
		goto err_after_alloc;
	relay__queue_record__pack(&rec, m->rec);
	m->received_ms = a->received_ms;
	m->size = a->body.len;
	m->accept_index = index;
	m->next_attempt_ms = a->received_ms;
	m->nqueued = (uint32_t)a->n_rcpts;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		m->rcpts[i].state = QUEUE_RCPT_QUEUED;
		m->rcpts[i].next_attempt_ms = a->received_ms;
	}
	*out = m;
	m = NULL;
	rv = 0;
err_after_alloc:
	queue__msg_free(m);
	free(ptrs);
	free(rcpts);
	return rv;
}

/* Adds the writes of a prepared Accept; on failure the batch may hold part of them (the caller
 * rolls back to its mark). */
static int
queue__accept_writes(struct store_batch *b, const Relay__Accept *a, const struct queue_msg *m)
{
	size_t idlen = strlen(a->queue_id);
	unsigned char ikey[9 + QUEUE_ID_MAX];
	size_t iklen = queue__index_key(ikey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, a->queue_id);
	if (store_batch_put(b, STORE_CF_BODY, a->queue_id, idlen, a->body.data, a->body.len) ||
	    store_batch_put(b, STORE_CF_QUEUE, a->queue_id, idlen, m->rec, m->rec_len) ||
	    store_batch_put(b, STORE_CF_INDEX, ikey, iklen, "", 0))
		return QUEUE_ENOMEM;
	return 0;
}

static int
queue__apply_accept(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		    struct store_batch *b)
{
	struct queue_msg *m;
	int rv = queue__accept_prepare(q, index, a, &m);
	if (rv || !m)
		return rv;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (queue__accept_writes(b, a, m)) {
		b->len = mark_len;
		b->count = mark_count;
		queue__msg_free(m);
		return QUEUE_ENOMEM;
	}
	queue__link(q, m);
	return 0;
}

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
 * reported again (a duplicated proposal), not a new one. */
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
 * Applies an Outcome (o set) or a Delete (o NULL) to the recipients idx[0..nidx) of queue id
 * (every recipient when nidx is 0, only for a Delete).  Only recipients still queued change.
 * When none changes, nothing is written (and the Outcome's DSN is not enqueued).
 */
static int
queue__apply_change(struct queue_fsm *q, uint64_t index, const char *id, const uint32_t *idx,
		    size_t nidx, const Relay__Outcome *o, struct store_batch *b)
{
	size_t idlen = strlen(id);
	struct queue_msg *m = queue__find(q, id, idlen, queue__hash(id, idlen));
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
	uint8_t to = o ? queue__outcome_state(o->kind) : QUEUE_RCPT_DELETED;

	/* the state after: which recipients change, how many stay queued, the next attempt */
	uint32_t nchanged = 0, nqueued = 0;
	uint64_t next = UINT64_MAX;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		int ch = queue__changes(m, i, sel, o);
		uint8_t st = ch ? to : m->rcpts[i].state;
		uint64_t na = ch && to == QUEUE_RCPT_QUEUED ? o->next_attempt_ms
							    : m->rcpts[i].next_attempt_ms;
		nchanged += ch;
		if (st == QUEUE_RCPT_QUEUED) {
			nqueued++;
			if (na < next)
				next = na;
		}
	}
	if (!nchanged)
		return 0; /* duplicate or late: every listed recipient is final already */

	/* everything that can fail, before any change */
	int rv = QUEUE_ENOMEM;
	Relay__QueueRecord *r = relay__queue_record__unpack(NULL, m->rec_len, m->rec);
	Relay__QueueRcpt *rc = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*rc));
	Relay__QueueRcpt **rp = calloc(m->nrcpts ? m->nrcpts : 1, sizeof(*rp));
	unsigned char *packed = NULL;
	size_t plen = 0;
	struct queue_msg *dsn = NULL;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (!r || !rc || !rp)
		goto err_after_alloc;
	if (r->n_rcpts != m->nrcpts) {
		rv = QUEUE_ECORRUPT; /* our own bytes: cannot happen */
		goto err_after_alloc;
	}
	if (nqueued) {
		Relay__QueueRecord rec = *r; /* shallow: strings stay r's or o's */
		for (uint32_t i = 0; i < m->nrcpts; i++) {
			rc[i] = *r->rcpts[i];
			rp[i] = &rc[i];
			if (!queue__changes(m, i, sel, o))
				continue;
			rc[i].state = (Relay__RcptState)to;
			if (!o)
				continue;
			rc[i].has_attempts = 1;
			rc[i].attempts =
			    rc[i].attempts < UINT32_MAX ? rc[i].attempts + 1 : UINT32_MAX;
			rc[i].has_last_attempt_ms = 1;
			rc[i].last_attempt_ms = o->at_ms;
			rc[i].last_reply = o->reply;
			rc[i].last_relay = o->relay;
			rc[i].last_dsn_status = o->dsn_status;
			rc[i].has_epoch = 1;
			rc[i].epoch = o->has_epoch ? o->epoch : 0;
			if (to == QUEUE_RCPT_QUEUED) {
				rc[i].has_next_attempt_ms = 1;
				rc[i].next_attempt_ms = o->next_attempt_ms;
				if (o->has_delay_notified && o->delay_notified) {
					rc[i].has_delay_notified = 1;
					rc[i].delay_notified = 1;
				}
			}
		}
		rec.rcpts = rp;
		rec.has_next_attempt_ms = 1;
		rec.next_attempt_ms = next;
		rec.has_update_index = 1;
		rec.update_index = index;
		plen = relay__queue_record__get_packed_size(&rec);
		if (!(packed = malloc(plen ? plen : 1)))
			goto err_after_alloc;
		relay__queue_record__pack(&rec, packed);
	}
	if (o && o->dsn && (rv = queue__accept_prepare(q, index, o->dsn, &dsn)))
		goto err_after_alloc;
	rv = QUEUE_ENOMEM;

	unsigned char okey[9 + QUEUE_ID_MAX], nkey[9 + QUEUE_ID_MAX];
	size_t oklen = queue__index_key(okey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, id);
	size_t nklen = queue__index_key(nkey, QUEUE_INDEX_QUEUED, next, id);
	if (!nqueued) {
		if (store_batch_delete(b, STORE_CF_QUEUE, id, idlen) ||
		    store_batch_delete(b, STORE_CF_BODY, id, idlen) ||
		    store_batch_delete(b, STORE_CF_INDEX, okey, oklen))
			goto err_after_batch;
	} else {
		if (store_batch_put(b, STORE_CF_QUEUE, id, idlen, packed, plen))
			goto err_after_batch;
		if (next != m->next_attempt_ms &&
		    (store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
		     store_batch_put(b, STORE_CF_INDEX, nkey, nklen, "", 0)))
			goto err_after_batch;
	}
	if (dsn && queue__accept_writes(b, o->dsn, dsn))
		goto err_after_batch;

	/* commit: nothing below fails */
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		struct queue_rcpt_meta *mr = &m->rcpts[i];
		if (!queue__changes(m, i, sel, o))
			continue;
		q->counts.rcpts[QUEUE_RCPT_QUEUED]--;
		q->counts.rcpts[to]++;
		mr->state = to;
		if (!o) {
			q->stats.deleted++;
			continue;
		}
		if (to == QUEUE_RCPT_DELIVERED)
			q->stats.delivered++;
		else if (to == QUEUE_RCPT_FAILED)
			q->stats.failed++;
		else
			q->stats.deferred++;
		mr->attempts = mr->attempts < UINT32_MAX ? mr->attempts + 1 : UINT32_MAX;
		mr->last_attempt_ms = o->at_ms;
		if (to == QUEUE_RCPT_QUEUED) {
			mr->next_attempt_ms = o->next_attempt_ms;
			mr->delay_notified |= o->has_delay_notified && o->delay_notified;
		}
	}
	m->nqueued = nqueued;
	if (!nqueued) {
		queue__unlink(q, m);
		queue__msg_free(m);
		q->stats.messages_deleted++;
	} else {
		free(m->rec);
		m->rec = packed;
		m->rec_len = plen;
		packed = NULL;
		m->next_attempt_ms = next;
		queue__heap_fix(q, m);
	}
	if (dsn) {
		queue__link(q, dsn);
		q->stats.dsns++;
		dsn = NULL;
	}
	rv = 0;
	goto err_after_alloc;
err_after_batch:
	b->len = mark_len;
	b->count = mark_count;
err_after_alloc:
	queue__msg_free(dsn);
	free(packed);
	free(rp);
	free(rc);
	if (r)
		relay__queue_record__free_unpacked(r, NULL);
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
	case RELAY__COMMAND__CMD_OUTCOME:
		return queue__apply_change(q, index, cmd->outcome->queue_id,
					   cmd->outcome->rcpt_index, cmd->outcome->n_rcpt_index,
					   cmd->outcome, b);
	case RELAY__COMMAND__CMD_DELETE:
		return queue__apply_change(q, index, cmd->delete_->queue_id,
					   cmd->delete_->rcpt_index, cmd->delete_->n_rcpt_index,
					   NULL, b);
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
	free(q->heap);
	free(q);
}

int
queue_fsm_reload(struct queue_fsm *q)
{
	struct queue_fsm *n;
	int rv = queue_fsm_new(q->store, &n);
	if (rv)
		return rv;
	struct queue_fsm old = *q;
	*q = *n;
	q->stats = old.stats;
	*n = old;
	queue_fsm_free(n);
	return 0;
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
			rv = queue__meta_from_record(r, v, vlen, &m);
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
	if (queue__reserve(q, n) || queue__heap_reserve(q, n))
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
	return q->nheap ? q->heap[0]->next_attempt_ms : UINT64_MAX;
}

/* The frontier of a walk of the heap in order: a small heap of positions in q->heap. */
static int
queue__pos_before(const struct queue_fsm *q, size_t a, size_t b)
{
	return queue__before(q->heap[a], q->heap[b]);
}

static void
queue__frontier_push(const struct queue_fsm *q, size_t *f, size_t *n, size_t pos)
{
	size_t i = (*n)++;
	while (i > 0 && queue__pos_before(q, pos, f[(i - 1) / 2])) {
		f[i] = f[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	f[i] = pos;
}

static size_t
queue__frontier_pop(const struct queue_fsm *q, size_t *f, size_t *n)
{
	size_t top = f[0], last = f[--(*n)], i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && queue__pos_before(q, f[c + 1], f[c]))
			c++;
		if (!queue__pos_before(q, f[c], last))
			break;
		f[i] = f[c];
		i = c;
	}
	if (*n)
		f[i] = last;
	return top;
}

#define QUEUE__FRONTIER_STACK 256

int
queue_fsm_due(const struct queue_fsm *q, uint64_t now_ms, queue_due_cb cb, void *arg, size_t max)
{
	if (!q->nheap || !max || q->heap[0]->next_attempt_ms > now_ms)
		return 0;
	if (max > q->nheap)
		max = q->nheap;
	if (max > INT32_MAX)
		max = INT32_MAX; /* the count is returned as an int */
	/* each visit pops one position and pushes at most two: at most max + 1 are waiting */
	size_t stackbuf[QUEUE__FRONTIER_STACK];
	size_t *f = stackbuf;
	if (max + 1 > QUEUE__FRONTIER_STACK && !(f = malloc((max + 1) * sizeof(*f))))
		return QUEUE_ENOMEM;
	size_t n = 0;
	int calls = 0;
	queue__frontier_push(q, f, &n, 0);
	while (n && (size_t)calls < max) {
		size_t pos = queue__frontier_pop(q, f, &n);
		calls++;
		if (cb(arg, q->heap[pos]))
			break;
		for (size_t c = 2 * pos + 1; c <= 2 * pos + 2 && c < q->nheap; c++)
			if (q->heap[c]->next_attempt_ms <= now_ms)
				queue__frontier_push(q, f, &n, c);
	}
	if (f != stackbuf)
		free(f);
	return calls;
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
		h = queue__mix(h, m->nqueued);
		for (uint32_t i = 0; i < m->nrcpts; i++) {
			h = queue__mix(h, m->rcpts[i].state);
			h = queue__mix(h, m->rcpts[i].attempts);
			h = queue__mix(h, m->rcpts[i].next_attempt_ms);
			h = queue__mix(h, m->rcpts[i].last_attempt_ms);
			h = queue__mix(h, m->rcpts[i].delay_notified);
		}
		/* the record: envelope, replies, relays, epochs */
		h = queue__mix(h, m->rec_len);
		h = queue__mix(h, queue__hash((const char *)m->rec, m->rec_len));
	}
	return h;
}
