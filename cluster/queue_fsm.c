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
#define QUEUE__DOM_BUCKETS_MIN 256u
#define QUEUE__TOMB_BUCKETS 16384u /* fixed: QUEUE_TOMBSTONES_MAX / 4 per chain on average */
#define QUEUE__HEAP_MIN 64u
#define QUEUE__OWN_DOMAIN 'D'
#define QUEUE__OWN_MEMBER 'M'
#define QUEUE__OWN_TOMB 'T'
#define QUEUE__OWN_VERSION 1
#define QUEUE__OWN_KEY_MAX (2 + QUEUE_DOMAIN_MAX)
#define QUEUE__DOM_VAL_LEN 9 /* + owner */
#define QUEUE__MEMBER_VAL_LEN 30
#define QUEUE__MEMBER_VAL_LEN_V1 18 /* without renew_at_ms and inflight */
#define QUEUE__NO_STATE 0xff /* a member not in the table */

/* A binary min-heap of queue_hnode (borrowed), ordered by (key, tie, sub). */
struct queue__heap {
	struct queue_hnode **a; /* owned array */
	size_t n, cap;
};

/* (message, domain): the recipients of one message in one domain. */
struct queue__item {
	struct queue_hnode hn; /* key: earliest next attempt of its queued rcpts */
	struct queue_msg *msg;
	struct queue__dom *dom;		   /* while active (nqueued > 0); else NULL */
	struct queue__item *dprev, *dnext; /* the domain's active items */
	uint32_t nqueued;		   /* its queued recipients */
	uint32_t ndeferred;		   /* of which attempted at least once */
};

struct queue__member {
	char node[QUEUE_NODE_MAX + 1];
	uint8_t state; /* enum queue_member_state */
	uint64_t since_index, renew_index;
	uint64_t renew_at_ms; /* the last Renew's at_ms (the member's clock) */
	uint32_t inflight;    /* the attempts in flight it reported with it */
	uint64_t ndomains;
	struct queue__dom *doms; /* the domains it owns */
	struct queue__heap heap; /* the active items of those domains (held left out) */
};

struct queue__dom {
	struct queue__dom *hnext;	  /* hash chain */
	struct queue__dom *oprev, *onext; /* the owner's (or the unowned) list */
	struct queue__member *owner;	  /* NULL: unowned */
	struct queue__item *items;	  /* active items */
	uint64_t hash, epoch;
	uint64_t rcpts_queued, rcpts_deferred, nitems;
	uint64_t leaving; /* during an apply: its queued recipients this command finishes */
	/* its 'D' key is in the store (not: an assignment loaded from a store older than
	 * ownership: unowned, epoch 0, until a member becomes LIVE) */
	uint8_t persisted;
	uint8_t fresh;	  /* prepared: inserted at link */
	uint8_t evicting; /* during an apply: an idle assignment this command forgets */
	size_t ipos;	  /* idle (persisted, no queued recipient): its idle heap slot; else
			     SIZE_MAX */
	size_t len;
	char name[];
};

struct queue__tomb {
	struct queue__tomb *hnext, *next;
	uint64_t hash, index;
	char id[];
};

struct queue_fsm {
	struct store *store;	       /* borrowed */
	struct queue_msg **buckets;    /* owned array; the messages are owned too */
	size_t nbuckets;	       /* power of two */
	struct queue_msg *head, *tail; /* apply order */
	struct queue__heap heap;       /* messages in next-attempt order (held left out) */
	struct queue__member *members[QUEUE_MEMBERS_MAX]; /* owned; by node id */
	size_t nmembers;
	struct queue__dom **dbuckets; /* owned array; the domains are owned too */
	size_t ndbuckets;	      /* power of two */
	uint64_t ndoms;
	struct queue__dom *unowned; /* the domains without owner */
	uint64_t nunowned;
	struct queue__heap unowned_heap;
	struct queue__dom **idle; /* owned array (QUEUE_IDLE_DOMAINS_MAX): a min-heap of the idle
				     assignments by (epoch, name) */
	size_t nidle;
	struct queue__tomb **tbuckets;	   /* owned array (QUEUE__TOMB_BUCKETS); tombstones owned */
	struct queue__tomb *thead, *ttail; /* removal order: oldest first */
	size_t ntombs;
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

/* ---- validation ---- */

/* printable ASCII, no space, no quote or backslash: safe in logs, keys and JSON */
static int
queue__token_ok(const char *s, size_t n, size_t max)
{
	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\\')
			return 0;
	}
	return 1;
}

static int
queue__id_ok(const char *id)
{
	return id && queue__token_ok(id, strnlen(id, QUEUE_ID_MAX + 1), QUEUE_ID_MAX);
}

static int
queue__node_ok(const char *node)
{
	return node && queue__token_ok(node, strnlen(node, QUEUE_NODE_MAX + 1), QUEUE_NODE_MAX);
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
	case RELAY__COMMAND__CMD_MEMBER:
		if (!cmd->member || !queue__node_ok(cmd->member->node))
			return QUEUE_EINVAL;
		switch (cmd->member->state) {
		case RELAY__MEMBER_STATE__MEMBER_LIVE:
		case RELAY__MEMBER_STATE__MEMBER_DRAINING:
		case RELAY__MEMBER_STATE__MEMBER_DRAINED:
		case RELAY__MEMBER_STATE__MEMBER_DOWN:
		case RELAY__MEMBER_STATE__MEMBER_REMOVED:
			return 0;
		default:
			return QUEUE_EINVAL;
		}
	case RELAY__COMMAND__CMD_RENEW:
		return cmd->renew && queue__node_ok(cmd->renew->node) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_HOLD:
		return cmd->hold && queue__id_ok(cmd->hold->queue_id) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_RELEASE:
		return cmd->release && queue__id_ok(cmd->release->queue_id) ? 0 : QUEUE_EINVAL;
	case RELAY__COMMAND__CMD_RETRY:
		return cmd->retry && queue__id_ok(cmd->retry->queue_id) ? 0 : QUEUE_EINVAL;
	default:
		return QUEUE_EINVAL;
	}
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
static int
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
static void
queue__heap_insert(struct queue__heap *h, struct queue_hnode *x)
{
	assert(h->n < h->cap && x->pos == SIZE_MAX);
	queue__heap_set(h, h->n++, x);
	queue__heap_up(h, x->pos);
}

static void
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
static void
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

/* ---- domains, members, tombstones ---- */

static struct queue__dom *
queue__dom_find(const struct queue_fsm *q, const char *name, size_t len, uint64_t h)
{
	for (struct queue__dom *d = q->dbuckets[h & (q->ndbuckets - 1)]; d; d = d->hnext)
		if (d->hash == h && d->len == len && !memcmp(d->name, name, len))
			return d;
	return NULL;
}

/* Grows the domain table for n domains; ENOMEM leaves it as it was. */
static int
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
			d->hnext = b[d->hash & (nb - 1)];
			b[d->hash & (nb - 1)] = d;
		}
	}
	free(q->dbuckets);
	q->dbuckets = b;
	q->ndbuckets = nb;
	return 0;
}

static struct queue__dom *
queue__dom_new(const char *name, size_t len, uint64_t h)
{
	struct queue__dom *d = calloc(1, sizeof(*d) + len + 1);
	if (!d)
		return NULL;
	memcpy(d->name, name, len);
	d->len = len;
	d->hash = h;
	d->ipos = SIZE_MAX;
	return d;
}

/* The idle assignments: a binary min-heap in q->idle (room for QUEUE_IDLE_DOMAINS_MAX, never
 * more) ordered by (epoch, name) - a total order, as names are unique. */
static int
queue__dom_order(const struct queue__dom *x, const struct queue__dom *y)
{
	if (x->epoch != y->epoch)
		return x->epoch < y->epoch ? -1 : 1;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->name, y->name, n);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int
queue__cmp_dom_order(const void *a, const void *b)
{
	return queue__dom_order(*(struct queue__dom *const *)a, *(struct queue__dom *const *)b);
}

static void
queue__idle_set(struct queue_fsm *q, size_t pos, struct queue__dom *d)
{
	q->idle[pos] = d;
	d->ipos = pos;
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

/* Precondition: q->nidle < QUEUE_IDLE_DOMAINS_MAX. */
static void
queue__idle_insert(struct queue_fsm *q, struct queue__dom *d)
{
	assert(q->nidle < QUEUE_IDLE_DOMAINS_MAX && d->ipos == SIZE_MAX);
	queue__idle_set(q, q->nidle++, d);
	queue__idle_up(q, d->ipos);
}

static void
queue__idle_remove(struct queue_fsm *q, struct queue__dom *d)
{
	size_t pos = d->ipos;
	assert(pos < q->nidle && q->idle[pos] == d);
	d->ipos = SIZE_MAX;
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
	if (d->ipos != SIZE_MAX)
		queue__idle_down(q, d->ipos);
}

static struct queue__heap *
queue__owner_heap(struct queue_fsm *q, struct queue__member *mb)
{
	return mb ? &mb->heap : &q->unowned_heap;
}

/* Puts d on owner mb's list (NULL: unowned). */
static void
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
}

static void
queue__dom_detach(struct queue_fsm *q, struct queue__dom *d)
{
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
static void
queue__dom_insert(struct queue_fsm *q, struct queue__dom *d)
{
	size_t bi = d->hash & (q->ndbuckets - 1);
	d->hnext = q->dbuckets[bi];
	q->dbuckets[bi] = d;
	q->ndoms++;
}

/* Removes and frees d (no queued recipient left; idle or not). */
static void
queue__dom_forget(struct queue_fsm *q, struct queue__dom *d)
{
	assert(!d->nitems && !d->items && !d->rcpts_queued);
	if (d->ipos != SIZE_MAX)
		queue__idle_remove(q, d);
	queue__dom_detach(q, d);
	struct queue__dom **pp = &q->dbuckets[d->hash & (q->ndbuckets - 1)];
	while (*pp != d) {
		assert(*pp);
		pp = &(*pp)->hnext;
	}
	*pp = d->hnext;
	q->ndoms--;
	free(d);
}

/* Activates an item (nqueued > 0, dom set): on the domain's list and counts, in its owner's
 * heap unless the message is held.  Precondition: heap room reserved. */
static void
queue__item_on(struct queue_fsm *q, struct queue__item *it)
{
	struct queue__dom *d = it->dom;
	it->dprev = NULL;
	it->dnext = d->items;
	if (d->items)
		d->items->dprev = it;
	d->items = it;
	d->nitems++;
	d->rcpts_queued += it->nqueued;
	d->rcpts_deferred += it->ndeferred;
	if (!it->msg->held)
		queue__heap_insert(queue__owner_heap(q, d->owner), &it->hn);
}

/* The reverse of queue__item_on, counts left to the caller. */
static void
queue__item_off(struct queue_fsm *q, struct queue__item *it)
{
	struct queue__dom *d = it->dom;
	queue__heap_remove(queue__owner_heap(q, d->owner), &it->hn);
	if (it->dprev)
		it->dprev->dnext = it->dnext;
	else
		d->items = it->dnext;
	if (it->dnext)
		it->dnext->dprev = it->dprev;
	it->dprev = it->dnext = NULL;
	d->nitems--;
}

/* The member with that node id, or NULL; *pos its position or where it would go. */
static struct queue__member *
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
static struct queue__member *
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

static void
queue__member_free(struct queue__member *mb)
{
	if (mb) {
		free(mb->heap.a);
		free(mb);
	}
}

static struct queue__tomb *
queue__tomb_find(const struct queue_fsm *q, const char *id, size_t n, uint64_t h)
{
	for (struct queue__tomb *t = q->tbuckets[h % QUEUE__TOMB_BUCKETS]; t; t = t->hnext)
		if (t->hash == h && !strncmp(t->id, id, n) && t->id[n] == 0)
			return t;
	return NULL;
}

static struct queue__tomb *
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

static void
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
static void
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

/* ---- ownership keys ---- */

static size_t
queue__own_key(unsigned char *k, char type, const void *s, size_t n)
{
	k[0] = QUEUE_KEY_OWN;
	k[1] = (unsigned char)type;
	memcpy(k + 2, s, n);
	return 2 + n;
}

static size_t
queue__dom_val(unsigned char *v, uint64_t epoch, const struct queue__member *owner)
{
	size_t n = owner ? strlen(owner->node) : 0;
	v[0] = QUEUE__OWN_VERSION;
	store_u64_encode(epoch, v + 1);
	if (n)
		memcpy(v + QUEUE__DOM_VAL_LEN, owner->node, n);
	return QUEUE__DOM_VAL_LEN + n;
}

static int
queue__put_dom(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
	       const struct queue__member *owner)
{
	unsigned char k[QUEUE__OWN_KEY_MAX], v[QUEUE__DOM_VAL_LEN + QUEUE_NODE_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, d->name, d->len);
	return store_batch_put(b, STORE_CF_QUEUE, k, kl, v, queue__dom_val(v, epoch, owner))
		   ? QUEUE_ENOMEM
		   : 0;
}

static int
queue__del_dom(struct store_batch *b, const struct queue__dom *d)
{
	unsigned char k[QUEUE__OWN_KEY_MAX];
	size_t kl = queue__own_key(k, QUEUE__OWN_DOMAIN, d->name, d->len);
	return store_batch_delete(b, STORE_CF_QUEUE, k, kl) ? QUEUE_ENOMEM : 0;
}

static void
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

static size_t
queue__tomb_key(unsigned char *k, uint64_t index)
{
	k[0] = QUEUE_KEY_OWN;
	k[1] = QUEUE__OWN_TOMB;
	store_u64_encode(index, k + 2);
	return 10;
}

/* ---- the message table ---- */

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

/* Adds m to the table, the apply order, the counts, the message heap (if it has queued
 * recipients and is not held) and activates its items (whose dom is set).  Preconditions: room
 * reserved in the table and in every heap it enters. */
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
	m->hn.key = m->next_attempt_ms;
	m->hn.tie = m->accept_index;
	if (m->nqueued && !m->held)
		queue__heap_insert(&q->heap, &m->hn);
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			queue__item_on(q, &m->items[j]);
}

/* The reverse of queue__link for a message without queued recipients (no active item). */
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
	queue__heap_remove(&q->heap, &m->hn);
}

static void
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

static struct queue_msg *
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
static int
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

/* Repacks m's record with edit applied to a shallow copy (rc[i] the copies of the recipients;
 * strings stay the record's or whatever edit points at, until this returns).  *out malloc'd. */
typedef void (*queue__edit_fn)(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc);

static int
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
static int
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

/* ---- apply: Accept ---- */

/* A prepared Accept: the message (not linked, record packed, items grouped) and one domain
 * struct per item, inserted at link when its domain is new then (fresh), else freed. */
struct queue__prep {
	struct queue_msg *m;
	struct queue__dom **nd;
	int removed; /* the queue id is a tombstone: a no-op */
};

static void
queue__prep_free(struct queue__prep *p)
{
	if (p->nd && p->m)
		for (uint32_t j = 0; j < p->m->nrcpts; j++)
			free(p->nd[j]);
	free(p->nd);
	queue__msg_free(p->m);
	p->nd = NULL;
	p->m = NULL;
}

static int
queue__is_owner_state(uint8_t s)
{
	return s == QUEUE_MEMBER_LIVE || s == QUEUE_MEMBER_DRAINING;
}

/* Does an Accept in the command being applied keep domain d's assignment?  Yes when d still
 * has a queued recipient after the command, or when d is (or becomes) idle - persisted, not
 * forgotten by this command - and its owner may keep domains (LIVE or DRAINING). */
static int
queue__dom_stays(const struct queue__dom *d)
{
	if (!d || d->evicting)
		return 0;
	if (d->rcpts_queued > d->leaving)
		return 1;
	return d->persisted && d->owner && queue__is_owner_state(d->owner->state);
}

/* Builds the message of Accept a at index and reserves room for it.  p->m = NULL when the
 * queue id is present (a duplicate) or a tombstone (p->removed): a no-op. */
static int
queue__accept_prepare(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		      struct queue__prep *p)
{
	memset(p, 0, sizeof(*p));
	size_t idlen = strlen(a->queue_id);
	uint64_t h = queue__hash(a->queue_id, idlen);
	if (queue__find(q, a->queue_id, idlen, h))
		return 0; /* duplicate: idempotent retry */
	if (queue__tomb_find(q, a->queue_id, idlen, h)) {
		p->removed = 1; /* delivered and removed already: a late retry */
		return 0;
	}
	int rv = QUEUE_ENOMEM;
	Relay__QueueRcpt *rcpts = calloc(a->n_rcpts, sizeof(*rcpts));
	Relay__QueueRcpt **ptrs = calloc(a->n_rcpts, sizeof(*ptrs));
	const char **addrs = calloc(a->n_rcpts, sizeof(*addrs));
	p->m = queue__msg_new(a->queue_id, (uint32_t)a->n_rcpts);
	p->nd = calloc(a->n_rcpts, sizeof(*p->nd));
	struct queue_msg *m = p->m;
	if (!rcpts || !ptrs || !addrs || !m || !p->nd)
		goto err;
	for (size_t i = 0; i < a->n_rcpts; i++)
		addrs[i] = a->rcpts[i]->addr;
	if (queue__group(m, addrs, p->nd))
		goto err;
	m->received_ms = a->received_ms;
	m->size = a->body.len;
	m->accept_index = index;
	m->next_attempt_ms = a->received_ms;
	m->nqueued = (uint32_t)a->n_rcpts;
	for (size_t i = 0; i < a->n_rcpts; i++) {
		m->rcpts[i].state = QUEUE_RCPT_QUEUED;
		m->rcpts[i].next_attempt_ms = a->received_ms;
		m->items[m->ritem[i]].nqueued++;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		struct queue__dom *nd = p->nd[j];
		it->hn.key = a->received_ms;
		it->hn.tie = index;
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, nd->hash);
		struct queue__member *owner;
		if (queue__dom_stays(d)) {
			owner = d->owner;
		} else {
			nd->fresh = 1;
			owner = nd->owner = queue__winner(q, nd->name, NULL, NULL);
		}
		struct queue__heap *hp = queue__owner_heap(q, owner);
		if (queue__heap_reserve(hp, hp->n + m->nitems))
			goto err;
	}
	if (queue__reserve(q, q->counts.messages + 1) ||
	    queue__heap_reserve(&q->heap, q->heap.n + 1) ||
	    queue__dom_reserve(q, q->ndoms + m->nitems))
		goto err;
	Relay__QueueRecord rec;
	queue_record_from_accept(a, index, &rec, rcpts, ptrs);
	m->rec_len = relay__queue_record__get_packed_size(&rec);
	m->rec = malloc(m->rec_len ? m->rec_len : 1);
	if (!m->rec)
		goto err;
	relay__queue_record__pack(&rec, m->rec);
	rv = 0;
	goto out;
err:
	queue__prep_free(p);
out:
	free(addrs);
	free(ptrs);
	free(rcpts);
	return rv;
}

/* Adds the writes of a prepared Accept; on failure the batch may hold part of them (the caller
 * rolls back to its mark). */
static int
queue__accept_writes(struct store_batch *b, const Relay__Accept *a, const struct queue__prep *p,
		     uint64_t index)
{
	const struct queue_msg *m = p->m;
	size_t idlen = strlen(a->queue_id);
	unsigned char ikey[9 + QUEUE_ID_MAX];
	size_t iklen = queue__index_key(ikey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, a->queue_id);
	if (store_batch_put(b, STORE_CF_BODY, a->queue_id, idlen, a->body.data, a->body.len) ||
	    store_batch_put(b, STORE_CF_QUEUE, a->queue_id, idlen, m->rec, m->rec_len) ||
	    store_batch_put(b, STORE_CF_INDEX, ikey, iklen, "", 0))
		return QUEUE_ENOMEM;
	for (uint32_t j = 0; j < m->nitems; j++)
		if (p->nd[j]->fresh && queue__put_dom(b, p->nd[j], index, p->nd[j]->owner))
			return QUEUE_ENOMEM;
	return 0;
}

/* Links a prepared Accept: its new domains get their assignment (epoch index), an idle one
 * kept becomes active again, an idle one not kept (its owner may not keep domains) is
 * replaced. */
static void
queue__accept_link(struct queue_fsm *q, struct queue__prep *p, uint64_t index)
{
	struct queue_msg *m = p->m;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__dom *nd = p->nd[j];
		struct queue__dom *d = queue__dom_find(q, nd->name, nd->len, nd->hash);
		if (d && d->ipos != SIZE_MAX)
			queue__idle_remove(q, d);
		if (nd->fresh && d) {
			assert(!d->rcpts_queued);
			nd->fresh = 0;
			queue__dom_detach(q, d);
			queue__dom_attach(q, d, nd->owner);
			d->epoch = index;
			d->persisted = 1;
		} else if (nd->fresh) {
			d = nd;
			p->nd[j] = NULL;
			d->fresh = 0;
			d->epoch = index;
			d->persisted = 1;
			queue__dom_insert(q, d);
			queue__dom_attach(q, d, d->owner);
		}
		assert(d);
		m->items[j].dom = d;
	}
	queue__link(q, m);
	for (uint32_t j = 0; j < m->nitems; j++)
		free(p->nd[j]);
	free(p->nd);
	p->nd = NULL;
	p->m = NULL;
}

static int
queue__apply_accept(struct queue_fsm *q, uint64_t index, const Relay__Accept *a,
		    struct store_batch *b)
{
	struct queue__prep p;
	int rv = queue__accept_prepare(q, index, a, &p);
	if (rv)
		return rv;
	if (!p.m) {
		q->stats.removed_accepts += p.removed;
		return 0;
	}
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (queue__accept_writes(b, a, &p, index)) {
		b->len = mark_len;
		b->count = mark_count;
		queue__prep_free(&p);
		return QUEUE_ENOMEM;
	}
	queue__accept_link(q, &p, index);
	return 0;
}

/* ---- apply: Outcome, Delete ---- */

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
 * reported again (a duplicated proposal), not a new one.  Fencing is the caller's. */
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

struct queue__change_edit {
	const unsigned char *chg;
	const Relay__Outcome *o;
	uint8_t to;
	uint64_t next, index;
};

static void
queue__change_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc)
{
	const struct queue__change_edit *e = ctx;
	const Relay__Outcome *o = e->o;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		if (!e->chg[i])
			continue;
		rc[i].state = (Relay__RcptState)e->to;
		if (!o)
			continue;
		rc[i].has_attempts = 1;
		rc[i].attempts = rc[i].attempts < UINT32_MAX ? rc[i].attempts + 1 : UINT32_MAX;
		rc[i].has_last_attempt_ms = 1;
		rc[i].last_attempt_ms = o->at_ms;
		rc[i].last_reply = o->reply;
		rc[i].last_relay = o->relay;
		rc[i].last_dsn_status = o->dsn_status;
		rc[i].has_epoch = 1;
		rc[i].epoch = o->epoch;
		if (e->to == QUEUE_RCPT_QUEUED) {
			rc[i].has_next_attempt_ms = 1;
			rc[i].next_attempt_ms = o->next_attempt_ms;
			if (o->has_delay_notified && o->delay_notified) {
				rc[i].has_delay_notified = 1;
				rc[i].delay_notified = 1;
			}
		}
	}
	rec->has_next_attempt_ms = 1;
	rec->next_attempt_ms = e->next;
	rec->has_update_index = 1;
	rec->update_index = e->index;
}

/*
 * The idle assignments forgotten when the domains of m's items with forget[j] set lose their
 * last queued recipient: those persisted become idle, and when that makes more than
 * QUEUE_IDLE_DOMAINS_MAX idle ones, the excess with the smallest (epoch, name) among the idle
 * ones and the new ones go (the same as adding them one at a time, each time forgetting the
 * smallest).  *out (malloc'd, NULL when none) gets them, *n their count.  Changes nothing
 * (the idle heap is taken apart and put back).  O(k log n) for k new idle ones.
 */
static int
queue__idle_victims(struct queue_fsm *q, const struct queue_msg *m, const unsigned char *forget,
		    struct queue__dom ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	size_t nnew = 0;
	for (uint32_t j = 0; j < m->nitems; j++)
		nnew += forget[j] && m->items[j].dom->persisted;
	if (!nnew || q->nidle + nnew <= QUEUE_IDLE_DOMAINS_MAX)
		return 0;
	size_t e = q->nidle + nnew - QUEUE_IDLE_DOMAINS_MAX; /* <= nnew */
	struct queue__dom **nw = malloc(nnew * sizeof(*nw)), **old = malloc(e * sizeof(*old)),
			  **v = malloc(e * sizeof(*v));
	if (!nw || !old || !v) {
		free(nw);
		free(old);
		free(v);
		return QUEUE_ENOMEM;
	}
	size_t k = 0;
	for (uint32_t j = 0; j < m->nitems; j++)
		if (forget[j] && m->items[j].dom->persisted)
			nw[k++] = m->items[j].dom;
	if (nnew > 1)
		qsort(nw, nnew, sizeof(*nw), queue__cmp_dom_order);
	/* the e smallest idle ones (fewer when there are fewer), then the heap as it was */
	size_t nold = 0;
	while (nold < e && q->nidle) {
		old[nold] = q->idle[0];
		queue__idle_remove(q, old[nold++]);
	}
	for (size_t i = 0; i < nold; i++)
		queue__idle_insert(q, old[i]);
	size_t a = 0, c = 0;
	for (k = 0; k < e; k++)
		v[k] = c == nnew || (a < nold && queue__dom_order(old[a], nw[c]) < 0) ? old[a++]
										      : nw[c++];
	free(nw);
	free(old);
	*out = v;
	*n = e;
	return 0;
}

/*
 * Applies an Outcome (o set) or a Delete (o NULL) to the recipients idx[0..nidx) of queue id
 * (every recipient when nidx is 0, only for a Delete).  Only recipients still queued change,
 * and for an Outcome only those whose domain's epoch is o->epoch (fencing).  When none changes,
 * nothing is written (and the Outcome's DSN is not enqueued).
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

	/* which recipients change (fenced by epoch: epochs are log indexes >= 1, so 0 is
	 * always stale) */
	unsigned char chg[QUEUE_RCPTS_MAX];
	uint32_t nchanged = 0;
	uint64_t stale = 0;
	uint64_t epoch = o && o->has_epoch ? o->epoch : 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		chg[i] = (unsigned char)queue__changes(m, i, sel, o);
		if (chg[i] && o && (epoch == 0 || m->items[m->ritem[i]].dom->epoch != epoch)) {
			chg[i] = 0;
			stale++;
		}
		nchanged += chg[i];
	}
	if (!nchanged) {
		q->stats.stale_outcomes += stale;
		return 0; /* duplicate, late, or stale */
	}

	/* the state after: per recipient, per item, per message */
	uint32_t inq[QUEUE_RCPTS_MAX], idef[QUEUE_RCPTS_MAX];
	uint64_t inext[QUEUE_RCPTS_MAX];
	unsigned char forget[QUEUE_RCPTS_MAX];
	for (uint32_t j = 0; j < m->nitems; j++) {
		inq[j] = idef[j] = 0;
		inext[j] = UINT64_MAX;
	}
	uint32_t nqueued = 0;
	uint64_t next = UINT64_MAX;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		const struct queue_rcpt_meta *r = &m->rcpts[i];
		uint8_t st = chg[i] ? to : r->state;
		if (st != QUEUE_RCPT_QUEUED)
			continue;
		uint64_t na = chg[i] ? o->next_attempt_ms : r->next_attempt_ms;
		uint32_t j = m->ritem[i];
		inq[j]++;
		idef[j] += r->attempts > 0 || chg[i];
		if (na < inext[j])
			inext[j] = na;
		nqueued++;
		if (na < next)
			next = na;
	}

	/* everything that can fail, before any change */
	int rv;
	unsigned char *packed = NULL;
	size_t plen = 0;
	struct queue__prep dsn = {0};
	struct queue__tomb *tomb = NULL;
	size_t evict = 0;
	struct queue__dom **victims = NULL; /* the idle assignments this command forgets */
	size_t nvict = 0;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (nqueued) {
		struct queue__change_edit e = {chg, o, to, next, index};
		if ((rv = queue__repack(m, queue__change_edit, &e, &packed, &plen)))
			goto err_after_alloc;
	} else {
		rv = QUEUE_ENOMEM;
		if (!(tomb = queue__tomb_new(id, idlen, index)))
			goto err_after_alloc;
		evict =
		    q->ntombs + 1 > QUEUE_TOMBSTONES_MAX ? q->ntombs + 1 - QUEUE_TOMBSTONES_MAX : 0;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		forget[j] = 0;
		if (!it->nqueued)
			continue;
		it->dom->leaving = it->nqueued - inq[j];
		forget[j] = it->dom->rcpts_queued == it->dom->leaving;
	}
	if ((rv = queue__idle_victims(q, m, forget, &victims, &nvict)))
		goto err_after_alloc;
	for (size_t k = 0; k < nvict; k++)
		victims[k]->evicting = 1;
	if (o && o->dsn)
		rv = queue__accept_prepare(q, index, o->dsn, &dsn);
	for (uint32_t j = 0; j < m->nitems; j++)
		if (m->items[j].nqueued)
			m->items[j].dom->leaving = 0;
	for (size_t k = 0; k < nvict; k++)
		victims[k]->evicting = 0;
	if (rv)
		goto err_after_alloc;
	rv = QUEUE_ENOMEM;

	unsigned char okey[9 + QUEUE_ID_MAX], nkey[9 + QUEUE_ID_MAX];
	size_t oklen = queue__index_key(okey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, id);
	size_t nklen = queue__index_key(nkey, QUEUE_INDEX_QUEUED, next, id);
	if (!nqueued) {
		unsigned char tk[10];
		if (store_batch_delete(b, STORE_CF_QUEUE, id, idlen) ||
		    store_batch_delete(b, STORE_CF_BODY, id, idlen) ||
		    store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
		    store_batch_put(b, STORE_CF_QUEUE, tk, queue__tomb_key(tk, index), id, idlen))
			goto err_after_batch;
		struct queue__tomb *t = q->thead;
		for (size_t k = 0; k < evict; k++, t = t->next)
			if (store_batch_delete(b, STORE_CF_QUEUE, tk,
					       queue__tomb_key(tk, t->index)))
				goto err_after_batch;
	} else {
		if (store_batch_put(b, STORE_CF_QUEUE, id, idlen, packed, plen))
			goto err_after_batch;
		if (next != m->next_attempt_ms &&
		    (store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
		     store_batch_put(b, STORE_CF_INDEX, nkey, nklen, "", 0)))
			goto err_after_batch;
	}
	for (size_t k = 0; k < nvict; k++)
		if (queue__del_dom(b, victims[k]))
			goto err_after_batch;
	if (dsn.m && queue__accept_writes(b, o->dsn, &dsn, index))
		goto err_after_batch;

	/* commit: nothing below fails */
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		struct queue_rcpt_meta *mr = &m->rcpts[i];
		if (!chg[i])
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
	/* the evicted idle ones first (room in the idle heap), marked as such meanwhile */
	for (size_t k = 0; k < nvict; k++)
		if (victims[k]->ipos != SIZE_MAX)
			queue__dom_forget(q, victims[k]);
		else
			victims[k]->evicting = 1;
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		struct queue__dom *d = it->dom;
		d->rcpts_queued -= it->nqueued - inq[j];
		d->rcpts_deferred = d->rcpts_deferred - it->ndeferred + idef[j];
		it->nqueued = inq[j];
		it->ndeferred = idef[j];
		if (!inq[j]) {
			queue__item_off(q, it);
			it->dom = NULL;
			if (forget[j] && (!d->persisted || d->evicting))
				queue__dom_forget(q, d);
			else if (forget[j])
				queue__idle_insert(q, d);
		} else if (inext[j] != it->hn.key) {
			it->hn.key = inext[j];
			queue__heap_fix(queue__owner_heap(q, d->owner), &it->hn);
		}
	}
	m->nqueued = nqueued;
	if (!nqueued) {
		queue__unlink(q, m);
		queue__msg_free(m);
		q->stats.messages_deleted++;
		queue__tomb_push(q, tomb);
		tomb = NULL;
		for (size_t k = 0; k < evict; k++)
			queue__tomb_pop(q);
	} else {
		free(m->rec);
		m->rec = packed;
		m->rec_len = plen;
		packed = NULL;
		m->next_attempt_ms = next;
		m->hn.key = next;
		queue__heap_fix(&q->heap, &m->hn);
	}
	if (dsn.m) {
		queue__accept_link(q, &dsn, index);
		q->stats.dsns++;
	}
	q->stats.removed_accepts += dsn.removed;
	q->stats.stale_outcomes += stale;
	rv = 0;
	goto err_after_alloc;
err_after_batch:
	b->len = mark_len;
	b->count = mark_count;
err_after_alloc:
	queue__prep_free(&dsn);
	free(victims);
	free(tomb);
	free(packed);
	return rv;
}

/* ---- apply: Hold, Release, Retry ---- */

enum queue__sched { QUEUE__HOLD, QUEUE__RELEASE, QUEUE__RETRY };

struct queue__sched_edit {
	const struct queue_msg *m;
	int held, resched;
	uint64_t at_ms, index;
};

static void
queue__sched_edit(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc)
{
	const struct queue__sched_edit *e = ctx;
	rec->has_held = e->held;
	rec->held = e->held;
	rec->has_update_index = 1;
	rec->update_index = e->index;
	if (!e->resched)
		return;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		if (rc[i].state != RELAY__RCPT_STATE__RCPT_QUEUED)
			continue;
		rc[i].has_next_attempt_ms = 1;
		rc[i].next_attempt_ms = e->at_ms;
	}
	rec->has_next_attempt_ms = 1;
	rec->next_attempt_ms = e->at_ms;
}

static int
queue__apply_sched(struct queue_fsm *q, uint64_t index, const char *id, enum queue__sched kind,
		   uint64_t at_ms, struct store_batch *b)
{
	size_t idlen = strlen(id);
	struct queue_msg *m = queue__find(q, id, idlen, queue__hash(id, idlen));
	if (!m)
		return QUEUE_ENOTFOUND;
	if ((kind == QUEUE__HOLD && m->held) || (kind == QUEUE__RELEASE && !m->held))
		return 0; /* already so */
	struct queue__sched_edit e = {m, kind == QUEUE__HOLD || (kind == QUEUE__RETRY && m->held),
				      kind != QUEUE__HOLD, at_ms, index};
	uint64_t next = e.resched ? at_ms : m->next_attempt_ms;
	if (kind == QUEUE__RELEASE) {
		if (queue__heap_reserve(&q->heap, q->heap.n + 1))
			return QUEUE_ENOMEM;
		for (uint32_t j = 0; j < m->nitems; j++) {
			struct queue__item *it = &m->items[j];
			if (!it->nqueued)
				continue;
			struct queue__heap *hp = queue__owner_heap(q, it->dom->owner);
			if (queue__heap_reserve(hp, hp->n + m->nitems))
				return QUEUE_ENOMEM;
		}
	}
	unsigned char *packed;
	size_t plen;
	int rv = queue__repack(m, queue__sched_edit, &e, &packed, &plen);
	if (rv)
		return rv;
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	unsigned char okey[9 + QUEUE_ID_MAX], nkey[9 + QUEUE_ID_MAX];
	size_t oklen = queue__index_key(okey, QUEUE_INDEX_QUEUED, m->next_attempt_ms, id);
	size_t nklen = queue__index_key(nkey, QUEUE_INDEX_QUEUED, next, id);
	if (store_batch_put(b, STORE_CF_QUEUE, id, idlen, packed, plen) ||
	    (next != m->next_attempt_ms &&
	     (store_batch_delete(b, STORE_CF_INDEX, okey, oklen) ||
	      store_batch_put(b, STORE_CF_INDEX, nkey, nklen, "", 0)))) {
		b->len = mark_len;
		b->count = mark_count;
		free(packed);
		return QUEUE_ENOMEM;
	}

	/* commit */
	free(m->rec);
	m->rec = packed;
	m->rec_len = plen;
	if (kind == QUEUE__HOLD) {
		queue__heap_remove(&q->heap, &m->hn);
		for (uint32_t j = 0; j < m->nitems; j++)
			if (m->items[j].nqueued)
				queue__heap_remove(queue__owner_heap(q, m->items[j].dom->owner),
						   &m->items[j].hn);
		m->held = 1;
		q->stats.held++;
		return 0;
	}
	for (uint32_t i = 0; i < m->nrcpts; i++)
		if (m->rcpts[i].state == QUEUE_RCPT_QUEUED)
			m->rcpts[i].next_attempt_ms = at_ms;
	m->next_attempt_ms = m->hn.key = at_ms;
	if (kind == QUEUE__RELEASE) {
		m->held = 0;
		queue__heap_insert(&q->heap, &m->hn);
		q->stats.released++;
	} else {
		queue__heap_fix(&q->heap, &m->hn);
		q->stats.retried++;
	}
	for (uint32_t j = 0; j < m->nitems; j++) {
		struct queue__item *it = &m->items[j];
		if (!it->nqueued)
			continue;
		struct queue__heap *hp = queue__owner_heap(q, it->dom->owner);
		it->hn.key = at_ms;
		if (kind == QUEUE__RELEASE)
			queue__heap_insert(hp, &it->hn);
		else
			queue__heap_fix(hp, &it->hn);
	}
	return 0;
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

static int
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
	if (mc->has_expect_since_index &&
	    (mb ? mb->since_index : 0) != mc->expect_since_index)
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
		add[queue__slot(q, to[k], nm)] += doms[k]->nitems;
	}
	for (size_t s = 0; s < QUEUE_MEMBERS_MAX + 2; s++) {
		if (!add[s])
			continue;
		struct queue__heap *hp = s == QUEUE_MEMBERS_MAX + 1 ? &q->unowned_heap
					 : s == QUEUE_MEMBERS_MAX   ? &nm->heap
								    : &q->members[s]->heap;
		if (queue__heap_reserve(hp, hp->n + add[s]))
			goto out;
	}
	size_t mark_len = b->len;
	unsigned mark_count = b->count;
	if (ns == QUEUE_MEMBER_REMOVED) {
		unsigned char mk[2 + QUEUE_NODE_MAX];
		size_t mkl = queue__own_key(mk, QUEUE__OWN_MEMBER, self->node, strlen(self->node));
		if (store_batch_delete(b, STORE_CF_QUEUE, mk, mkl))
			goto err_after_batch;
	} else if (queue__put_member(b, self->node, ns, index, self->renew_index,
				     self->renew_at_ms, self->inflight)) {
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
		struct queue__heap *from = queue__owner_heap(q, d->owner);
		for (struct queue__item *it = d->items; it; it = it->dnext)
			queue__heap_remove(from, &it->hn);
		queue__dom_detach(q, d);
		queue__dom_attach(q, d, to[k]);
		d->epoch = index;
		d->persisted = 1;
		queue__idle_fix(q, d);
		struct queue__heap *hp = queue__owner_heap(q, to[k]);
		for (struct queue__item *it = d->items; it; it = it->dnext)
			if (!it->msg->held)
				queue__heap_insert(hp, &it->hn);
		q->stats.reassigned++;
	}
	if (ns == QUEUE_MEMBER_REMOVED) {
		assert(!self->ndomains && !self->heap.n);
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

static int
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
	case RELAY__COMMAND__CMD_MEMBER:
		return queue__apply_member(q, index, cmd->member, b);
	case RELAY__COMMAND__CMD_RENEW:
		return queue__apply_renew(q, index, cmd->renew, b);
	case RELAY__COMMAND__CMD_HOLD:
		return queue__apply_sched(q, index, cmd->hold->queue_id, QUEUE__HOLD, 0, b);
	case RELAY__COMMAND__CMD_RELEASE:
		return queue__apply_sched(q, index, cmd->release->queue_id, QUEUE__RELEASE,
					  cmd->release->at_ms, b);
	case RELAY__COMMAND__CMD_RETRY:
		return queue__apply_sched(q, index, cmd->retry->queue_id, QUEUE__RETRY,
					  cmd->retry->at_ms, b);
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
	for (size_t i = 0; q->dbuckets && i < q->ndbuckets; i++) {
		struct queue__dom *d = q->dbuckets[i], *dn;
		for (; d; d = dn) {
			dn = d->hnext;
			free(d);
		}
	}
	for (size_t i = 0; i < q->nmembers; i++)
		queue__member_free(q->members[i]);
	while (q->thead)
		queue__tomb_pop(q);
	free(q->tbuckets);
	free(q->dbuckets);
	free(q->buckets);
	free(q->heap.a);
	free(q->unowned_heap.a);
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

/* Loads one ownership key (k[0] == QUEUE_KEY_OWN). */
static int
queue__load_own(struct queue_fsm *q, const unsigned char *k, size_t klen, const unsigned char *v,
		size_t vlen, struct queue__pending_owner **po, size_t *npo, size_t *cpo)
{
	if (klen < 2 || (k[1] != QUEUE__OWN_TOMB && (vlen < 1 || v[0] != QUEUE__OWN_VERSION)))
		return QUEUE_ECORRUPT;
	const char *s = (const char *)k + 2;
	size_t sl = klen - 2;
	switch (k[1]) {
	case QUEUE__OWN_DOMAIN: {
		if (sl > QUEUE_DOMAIN_MAX || vlen < QUEUE__DOM_VAL_LEN ||
		    vlen > QUEUE__DOM_VAL_LEN + QUEUE_NODE_MAX || memchr(s, 0, sl))
			return QUEUE_ECORRUPT;
		if (*npo == *cpo) {
			size_t nc = *cpo ? *cpo * 2 : 64;
			struct queue__pending_owner *np = realloc(*po, nc * sizeof(*np));
			if (!np)
				return QUEUE_ENOMEM;
			*po = np;
			*cpo = nc;
		}
		uint64_t h = queue__hash(s, sl);
		struct queue__dom *d;
		if (queue__dom_reserve(q, q->ndoms + 1) || !(d = queue__dom_new(s, sl, h)))
			return QUEUE_ENOMEM;
		d->epoch = store_u64_decode(v + 1);
		d->persisted = 1;
		queue__dom_insert(q, d);
		struct queue__pending_owner *p = &(*po)[(*npo)++];
		p->d = d;
		memcpy(p->owner, v + QUEUE__DOM_VAL_LEN, vlen - QUEUE__DOM_VAL_LEN);
		p->owner[vlen - QUEUE__DOM_VAL_LEN] = 0;
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

int
queue_fsm_new(struct store *s, struct queue_fsm **out)
{
	struct queue_fsm *q = calloc(1, sizeof(*q));
	if (!q)
		return QUEUE_ENOMEM;
	q->store = s;
	q->nbuckets = QUEUE__BUCKETS_MIN;
	q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
	q->ndbuckets = QUEUE__DOM_BUCKETS_MIN;
	q->dbuckets = calloc(q->ndbuckets, sizeof(*q->dbuckets));
	q->tbuckets = calloc(QUEUE__TOMB_BUCKETS, sizeof(*q->tbuckets));
	q->idle = malloc(QUEUE_IDLE_DOMAINS_MAX * sizeof(*q->idle));
	struct queue_msg **all = NULL;
	size_t n = 0, cap = 0;
	struct queue__pending_owner *po = NULL;
	size_t npo = 0, cpo = 0;
	struct store_iter *it = NULL;
	int rv = QUEUE_ENOMEM;
	if (!q->buckets || !q->dbuckets || !q->tbuckets || !q->idle)
		goto err_after_alloc;
	if (store_iter_new(s, STORE_CF_QUEUE, &it))
		goto err_after_alloc;
	int owners_done = 0;
	for (store_iter_seek(it, NULL, 0); store_iter_valid(it); store_iter_next(it)) {
		size_t klen, vlen;
		const unsigned char *k = store_iter_key(it, &klen);
		const unsigned char *v = store_iter_value(it, &vlen);
		if (klen && k[0] == QUEUE_KEY_OWN) {
			if ((rv = queue__load_own(q, k, klen, v, vlen, &po, &npo, &cpo)))
				goto err_after_load;
			continue;
		}
		if (!owners_done) {
			/* the members are in: give the assignments their owners */
			for (size_t i = 0; i < npo; i++) {
				size_t pos;
				struct queue__member *mb = NULL;
				if (po[i].owner[0] &&
				    !(mb = queue__member_find(q, po[i].owner, &pos))) {
					rv = QUEUE_ECORRUPT;
					goto err_after_load;
				}
				queue__dom_attach(q, po[i].d, mb);
			}
			owners_done = 1;
		}
		Relay__QueueRecord *r = relay__queue_record__unpack(NULL, vlen, v);
		struct queue_msg *m = NULL;
		if (!r) {
			rv = QUEUE_ECORRUPT;
		} else {
			rv = queue__meta_from_record(q, r, v, vlen, &m);
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
	if (!owners_done) {
		for (size_t i = 0; i < npo; i++) {
			size_t pos;
			struct queue__member *mb = NULL;
			if (po[i].owner[0] && !(mb = queue__member_find(q, po[i].owner, &pos))) {
				rv = QUEUE_ECORRUPT;
				goto err_after_load;
			}
			queue__dom_attach(q, po[i].d, mb);
		}
	}
	rv = QUEUE_ENOMEM;
	if (queue__reserve(q, n) || queue__heap_reserve(&q->heap, n))
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
	for (size_t i = 0; i < n; i++) {
		struct queue_msg *m = all[i];
		for (uint32_t j = 0; j < m->nitems; j++) {
			if (!m->items[j].nqueued)
				continue;
			struct queue__heap *hp = queue__owner_heap(q, m->items[j].dom->owner);
			if (queue__heap_reserve(hp, hp->n + m->nitems))
				goto err_after_load;
		}
		queue__link(q, m);
		all[i] = NULL;
	}
	/* an assignment key without a queued recipient is an idle assignment (only keys make
	 * domains without one); more than the bound cannot be written */
	for (size_t i = 0; i < q->ndbuckets; i++) {
		for (struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext) {
			if (d->rcpts_queued)
				continue;
			if (q->nidle == QUEUE_IDLE_DOMAINS_MAX) {
				rv = QUEUE_ECORRUPT;
				goto err_after_load;
			}
			queue__idle_insert(q, d);
		}
	}
	free(all);
	free(po);
	store_iter_free(it);
	*out = q;
	return 0;
err_after_load:
	for (size_t i = 0; i < n; i++)
		queue__msg_free(all[i]);
	free(all);
err_after_alloc:
	free(po);
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

int
queue_fsm_domain_owner(const struct queue_fsm *q, const char *domain, char *owner, uint64_t *epoch)
{
	if (!domain)
		return QUEUE_ENOTFOUND;
	char d[QUEUE_DOMAIN_MAX + 1];
	size_t n = 0;
	for (; domain[n] && n < QUEUE_DOMAIN_MAX; n++)
		d[n] = (char)(domain[n] >= 'A' && domain[n] <= 'Z' ? domain[n] - 'A' + 'a'
								   : domain[n]);
	if (domain[n])
		return QUEUE_ENOTFOUND;
	d[n] = 0;
	const struct queue__dom *dm = queue__dom_find(q, d, n, queue__hash(d, n));
	if (!dm)
		return QUEUE_ENOTFOUND;
	snprintf(owner, QUEUE_NODE_MAX + 1, "%s", dm->owner ? dm->owner->node : "");
	*epoch = dm->epoch;
	return 0;
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

int
queue_fsm_own_kv(const struct queue_fsm *q, queue_kv_cb cb, void *arg)
{
	unsigned char k[QUEUE__OWN_KEY_MAX], v[QUEUE__DOM_VAL_LEN + QUEUE_NODE_MAX];
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
			if ((rv = cb(arg, k, kl, v, queue__dom_val(v, d->epoch, d->owner))))
				return rv;
		}
	}
	for (const struct queue__tomb *t = q->thead; t; t = t->next) {
		size_t kl = queue__tomb_key(k, t->index);
		if ((rv = cb(arg, k, kl, t->id, strlen(t->id))))
			return rv;
	}
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
		h = queue__mix(h, m->nqueued);
		h = queue__mix(h, m->held);
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
	/* members in node order */
	h = queue__mix(h, q->nmembers);
	for (size_t i = 0; i < q->nmembers; i++) {
		const struct queue__member *mb = q->members[i];
		h = queue__mix(h, queue__hash(mb->node, strlen(mb->node)));
		h = queue__mix(h, mb->state);
		h = queue__mix(h, mb->since_index);
		h = queue__mix(h, mb->renew_index);
		h = queue__mix(h, mb->renew_at_ms);
		h = queue__mix(h, mb->inflight);
		h = queue__mix(h, mb->ndomains);
	}
	/* assignments: a sum, whatever the order of the hash table */
	uint64_t ds = 0;
	for (size_t i = 0; i < q->ndbuckets; i++) {
		for (const struct queue__dom *d = q->dbuckets[i]; d; d = d->hnext) {
			uint64_t x = queue__mix(d->hash, d->epoch);
			x = queue__mix(
			    x, d->owner ? queue__hash(d->owner->node, strlen(d->owner->node)) : 0);
			x = queue__mix(x, d->rcpts_queued);
			x = queue__mix(x, d->persisted);
			ds += x;
		}
	}
	h = queue__mix(h, q->ndoms);
	h = queue__mix(h, ds);
	/* tombstones in removal order */
	h = queue__mix(h, q->ntombs);
	for (const struct queue__tomb *t = q->thead; t; t = t->next) {
		h = queue__mix(h, t->hash);
		h = queue__mix(h, t->index);
	}
	return h;
}
