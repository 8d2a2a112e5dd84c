/*
 * queue_fsm_int.h - private to the queue state machine (cluster/queue_*.c): its in-memory
 * objects and the functions its files share (queue__ names).  Nothing outside the state machine
 * includes it: callers use queue_fsm.h.
 *
 * The state machine's files, one seam each:
 *   queue_fsm.c       messages and scheduling: the message table, the due heaps, queries
 *   queue_store.c     the stored form: keys, the message state value, result values, the
 *                     overlay of values not written yet, reading records back
 *   queue_apply.c     applying message commands: Accept, Outcome, Delete, Hold, Release, Retry,
 *                     DeferDomain
 *   queue_own.c       ownership and members: domains, assignments, the member table, Member
 *                     and Renew, their keys
 *   queue_load.c      tombstones, open and reload from the store, snapshot key/values, digest
 *   queue_validate.c  validation of commands before anything changes
 *   queue_quota.c     hourly quota windows per user and client (queue_fsm.h "Quotas")
 *
 * Memory per queued message (queue_fsm.h "In memory"): one block holding struct queue_msg, its
 * recipients' scheduling state (struct queue_rcpt_meta, 24 bytes each), one struct queue__item
 * per distinct recipient domain and the queue id; plus a hash bucket and a slot in its domain's
 * heap.  Records (envelope, replies) and bodies stay in the store.
 */
#ifndef RELAY_QUEUE_FSM_INT_H
#define RELAY_QUEUE_FSM_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "queue_fsm.h"

/* A broken invariant of the state machine: say where, then stop, in every build (NDEBUG too). */
#define QUEUE__PANIC_IF(cond, ...)                                                                 \
	do {                                                                                       \
		if (cond) {                                                                        \
			fprintf(stderr, "queue_fsm panic in %s:%d: ", __func__, __LINE__);         \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

#define QUEUE__BUCKETS_MIN 1024u
#define QUEUE__DOM_BUCKETS_MIN 256u
#define QUEUE__TOMB_BUCKETS 16384u /* fixed: QUEUE_TOMBSTONES_MAX / 4 per chain on average */
#define QUEUE__OV_BUCKETS 4096u	   /* fixed: the overlay's messages */
#define QUEUE__NO_POS UINT32_MAX   /* in no heap */
#define QUEUE__OWN_DOMAIN 'D'
#define QUEUE__OWN_MEMBER 'M'
#define QUEUE__OWN_TOMB 'T'
#define QUEUE__OWN_QUOTA 'Q'
#define QUEUE__OWN_DEFER 'E'	/* a deferred domain's reason */
#define QUEUE__QUOTA_VAL_LEN 13 /* version, start_ms, count */
#define QUEUE__QUOTA_KEY_MAX (3 + QUEUE_QUOTA_NAME_MAX)
#define QUEUE__QUOTA_BUCKETS 16384u /* fixed: QUEUE_QUOTA_KEYS_MAX / 4 per chain on average */
#define QUEUE__QUOTA_SWEEP 2u	    /* ended windows one Accept forgets */
#define QUEUE__OWN_VERSION 1
#define QUEUE__DOM_VERSION_DEFER 2 /* an assignment value with a deferral */
#define QUEUE__OWN_KEY_MAX (2 + QUEUE_DOMAIN_MAX)
#define QUEUE__DOM_VAL_LEN 9	    /* version, epoch; + owner */
#define QUEUE__DOM_DEFER_VAL_LEN 30 /* version, epoch, until, at, count, owner length; + owner */
#define QUEUE__MEMBER_VAL_LEN 30
#define QUEUE__MEMBER_VAL_LEN_V1 18 /* without renew_at_ms and inflight */
#define QUEUE__NO_STATE 0xff	    /* a member not in the table */
/* Keys of a message besides its envelope (key: the queue id) in STORE_CF_QUEUE: queue id, 0,
 * kind, then the kind's suffix.  Queue ids never hold a 0 byte. */
#define QUEUE__KEY_RESULT QUEUE_KEY_RESULT /* + recipient index (u16 BE): its last result */
#define QUEUE__RESULT_KEY_MAX (QUEUE_ID_MAX + 4)
#define QUEUE__RESULT_VERSION 1
/* Index CF: 'M' + queue id -> the message's state (queue_store.c); a store written before it
 * has QUEUE_INDEX_QUEUED ('Q') + next attempt (u64 BE) + queue id -> "" (legacy). */
#define QUEUE__INDEX_MSG QUEUE_INDEX_MSG
#define QUEUE__STATE_VERSION 1
#define QUEUE__STATE_FIXED QUEUE_STATE_FIXED /* before its domains and recipients */
#define QUEUE__STATE_RCPT QUEUE_STATE_RCPT   /* one recipient in the state value */
#define QUEUE__INDEX_KEY_MAX (9 + QUEUE_ID_MAX)

/* (message, domain): the recipients of one message in one domain. */
struct queue__item {
	uint64_t key;		/* earliest next attempt of its queued recipients */
	struct queue_msg *msg;	/* the message holding it */
	struct queue__dom *dom; /* while active (nqueued > 0); else NULL */
	uint32_t pos;		/* slot in dom's item heap; QUEUE__NO_POS when in none */
	uint16_t sub;		/* its number in the message */
	uint16_t nqueued;	/* its queued recipients */
	uint16_t ndeferred;	/* of which attempted at least once */
};

/* A binary min-heap of items (borrowed) ordered by (key, accept_index, sub). */
struct queue__iheap {
	struct queue__item **a; /* owned array */
	uint32_t n, cap;
};

/* A binary min-heap of domains (borrowed) ordered by their due key (queue__dom_due). */
struct queue__dheap {
	struct queue__dom **a; /* owned array */
	uint32_t n, cap;
};

struct queue__member {
	char node[QUEUE_NODE_MAX + 1];
	uint8_t state; /* enum queue_member_state */
	uint64_t since_index, renew_index;
	uint64_t renew_at_ms; /* the last Renew's at_ms (the member's clock) */
	uint32_t inflight;    /* the attempts in flight it reported with it */
	uint64_t ndomains;
	struct queue__dom *doms;   /* the domains it owns */
	struct queue__dheap dheap; /* those with an item in their heap; cap >= ndomains */
};

struct queue__dom {
	struct queue__dom *hnext;	  /* hash chain */
	struct queue__dom *oprev, *onext; /* the owner's (or the unowned) list */
	struct queue__member *owner;	  /* NULL: unowned */
	uint64_t epoch;
	uint64_t defer_until, defer_at; /* DeferDomain: no attempt before until (0: none) */
	struct queue__iheap ih;		/* its active items that may be due (not held, not busy);
					   cap >= nitems */
	uint32_t nitems;		/* active items (held and busy ones included) */
	uint32_t rcpts_queued, rcpts_deferred;
	uint32_t leaving;     /* during an apply: its queued recipients this command finishes */
	uint32_t opos;	      /* slot in its owner's domain heap; QUEUE__NO_POS when in none */
	uint32_t ipos;	      /* idle (persisted, no queued recipient): its idle heap slot */
	uint32_t defer_count; /* DeferDomain commands since the last delivery */
	uint32_t defer_hash;  /* of the deferral's reason (digest) */
	/* its 'D' key is in the store (not: an assignment loaded from a store older than
	 * ownership: unowned, epoch 0, until a member becomes LIVE) */
	uint8_t persisted;
	uint8_t fresh;	  /* prepared: inserted at link */
	uint8_t evicting; /* during an apply: an idle assignment this command forgets */
	uint8_t len;
	char name[];
};

struct queue__tomb {
	struct queue__tomb *hnext, *next;
	uint64_t hash, index;
	char id[];
};

/* One quota window (queue_fsm.h "Quotas"). */
struct queue__quota {
	struct queue__quota *hnext; /* hash chain */
	uint64_t hash;		    /* of kind + name */
	uint64_t start_ms;
	uint32_t count;
	size_t hpos; /* slot in queue_fsm.qheap */
	char kind;
	size_t len;
	char name[];
};

/* A stored value written by apply and maybe not in the store yet (queue_store.c). */
struct queue__ov {
	struct queue__ov *next;	 /* the overlay's FIFO, oldest first */
	struct queue__ov *mnext; /* the same message's, newest first */
	struct queue_msg *msg;	 /* NULL once the message is gone */
	uint64_t index;		 /* of the command that wrote it */
	uint32_t rcpt;		 /* QUEUE__OV_ENVELOPE or a recipient's result */
	uint32_t len;
	unsigned char data[];
};
#define QUEUE__OV_ENVELOPE UINT32_MAX

struct queue_fsm {
	struct store *store;	       /* borrowed */
	struct queue_msg **buckets;    /* owned array; the messages are owned too */
	size_t nbuckets;	       /* power of two */
	struct queue_msg *head, *tail; /* apply order */
	struct queue__member *members[QUEUE_MEMBERS_MAX]; /* owned; by node id */
	size_t nmembers;
	struct queue__dom **dbuckets; /* owned array; the domains are owned too */
	size_t ndbuckets;	      /* power of two */
	uint64_t ndoms;
	struct queue__dom *unowned; /* the domains without owner */
	uint64_t nunowned;
	struct queue__dheap unowned_dheap;
	struct queue__dom **idle; /* owned array (QUEUE_IDLE_DOMAINS_MAX): a min-heap of the idle
				     assignments by (epoch, name) */
	size_t nidle;
	size_t idle_max; /* QUEUE_IDLE_DOMAINS_MAX, or the test bound (queue_fsm_set_idle_max) */
	struct queue__tomb **tbuckets;	   /* owned array (QUEUE__TOMB_BUCKETS); tombstones owned */
	struct queue__tomb *thead, *ttail; /* removal order: oldest first */
	size_t ntombs;
	struct queue__quota **qbuckets; /* owned array (QUEUE__QUOTA_BUCKETS); windows owned */
	struct queue__quota **qheap; /* owned array (QUEUE_QUOTA_KEYS_MAX): min-heap by (start_ms,
					kind, name) */
	size_t nquota;
	/* the overlay (queue_store.c): values apply wrote that the store may not hold yet */
	struct queue__ov *ov_head, *ov_tail;
	struct queue__ov **ov_buckets; /* owned array (QUEUE__OV_BUCKETS), by message */
	size_t ov_bytes;
	uint64_t written_index; /* queue_fsm_written */
	struct queue_counts counts;
	struct queue_fsm_stats stats;
};

/* ---- queue_fsm.c ---- */

uint64_t queue__hash(const char *s, size_t n);
uint64_t queue__mix(uint64_t h, uint64_t v);
struct queue_msg *queue__find(const struct queue_fsm *q, const char *id, size_t n);
int queue__reserve(struct queue_fsm *q, uint64_t nmsgs);
void queue__link(struct queue_fsm *q, struct queue_msg *m);
void queue__unlink(struct queue_fsm *q, struct queue_msg *m);
struct queue_msg *queue__msg_alloc(const char *id, size_t idlen, uint32_t nrcpts, uint32_t nitems);
void queue__msg_free(struct queue_msg *m);
/* Recipient domains of a message: names[j] (QUEUE_DOMAIN_MAX + 1 bytes each, nrcpts slots)
 * the distinct domains in first-seen order, item[i] recipient i's. Returns the count. */
uint32_t queue__group(const char *const *addrs, uint32_t nrcpts,
		      char (*names)[QUEUE_DOMAIN_MAX + 1], uint16_t *item);
int queue__in_heap(const struct queue__item *it);
int queue__iheap_reserve(struct queue__iheap *h, uint32_t n);
int queue__dheap_reserve(struct queue__dheap *h, uint64_t n);
void queue__item_heap_on(struct queue_fsm *q, struct queue__item *it);
void queue__item_heap_off(struct queue_fsm *q, struct queue__item *it);
void queue__item_rekey(struct queue_fsm *q, struct queue__item *it, uint64_t key);
void queue__dom_resched(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_dheap_off(struct queue_fsm *q, struct queue__dom *d);
struct queue__dheap *queue__owner_dheap(struct queue_fsm *q, struct queue__member *mb);

/* ---- queue_store.c ---- */

/* A message's state value as a command leaves it (the message itself keeps the state before
 * until the command commits). */
struct queue__state {
	const struct queue_msg *m;	     /* id, accept_index, received_ms, size, counts */
	const struct queue_rcpt_meta *rcpts; /* m->nrcpts: the recipients after */
	const char *const *names; /* m->nitems: each item's domain, NULL: none of it queued */
	uint8_t held;
	uint64_t update_index, shash;
};

size_t queue__index_key(unsigned char *k, const struct queue_msg *m);
size_t queue__result_key(unsigned char *k, const char *id, size_t idlen, uint32_t rcpt);
size_t queue__state_len(const struct queue__state *s);
void queue__state_encode(const struct queue__state *s, unsigned char *v);
int queue__put_state(struct store_batch *b, const struct queue__state *s);
int queue__del_msg(struct store_batch *b, const struct queue_msg *m);
int queue__state_load(struct queue_fsm *q, const unsigned char *k, size_t klen,
		      const unsigned char *v, size_t vlen, struct queue_msg **out);
int queue__legacy_load(struct queue_fsm *q, const unsigned char *k, size_t klen,
		       struct queue_msg **out);
size_t queue__result_len(const Relay__Outcome *o);
void queue__result_encode(const Relay__Outcome *o, unsigned char *v);
int queue__ov_add(struct queue_fsm *q, struct queue_msg *m, uint64_t index, uint32_t rcpt,
		  const void *data, size_t len, struct queue__ov **out);
void queue__ov_link(struct queue_fsm *q, struct queue__ov *e);
void queue__ov_drop_msg(struct queue_fsm *q, struct queue_msg *m);
void queue__ov_free(struct queue_fsm *q);

/* ---- queue_validate.c ---- */

int queue__token_ok(const char *s, size_t n, size_t max);
int queue__id_ok(const char *id);

/* ---- queue_apply.c ---- */

int queue__is_owner_state(uint8_t s);

/* ---- queue_own.c ---- */

struct queue__dom *queue__dom_find(const struct queue_fsm *q, const char *name, size_t len,
				   uint64_t h);
int queue__dom_reserve(struct queue_fsm *q, uint64_t n);
struct queue__dom *queue__dom_new(const char *name, size_t len);
uint64_t queue__dom_hash(const struct queue__dom *d);
int queue__dom_order(const struct queue__dom *x, const struct queue__dom *y);
int queue__cmp_dom_order(const void *a, const void *b);
void queue__idle_insert(struct queue_fsm *q, struct queue__dom *d);
void queue__idle_remove(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_attach(struct queue_fsm *q, struct queue__dom *d, struct queue__member *mb);
void queue__dom_detach(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_insert(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_forget(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_free(struct queue__dom *d);
void queue__item_on(struct queue_fsm *q, struct queue__item *it);
void queue__item_off(struct queue_fsm *q, struct queue__item *it);
struct queue__member *queue__member_find(const struct queue_fsm *q, const char *node, size_t *pos);
struct queue__member *queue__winner(const struct queue_fsm *q, const char *domain,
				    struct queue__member *incl, const struct queue__member *excl);
void queue__member_free(struct queue__member *mb);
size_t queue__own_key(unsigned char *k, char type, const void *s, size_t n);
size_t queue__dom_val(unsigned char *v, uint64_t epoch, const struct queue__member *owner,
		      uint64_t until, uint64_t at, uint32_t count);
int queue__put_dom(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
		   const struct queue__member *owner);
int queue__put_dom_defer(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
			 const struct queue__member *owner, uint64_t until, uint64_t at,
			 uint32_t count);
int queue__del_dom(struct store_batch *b, const struct queue__dom *d);
void queue__member_val(unsigned char *v, uint8_t state, uint64_t since, uint64_t renew,
		       uint64_t renew_at, uint32_t inflight);
size_t queue__tomb_key(unsigned char *k, uint64_t index);
int queue__apply_member(struct queue_fsm *q, uint64_t index, const Relay__Member *mc,
			struct store_batch *b);
int queue__apply_renew(struct queue_fsm *q, uint64_t index, const Relay__Renew *r,
		       struct store_batch *b);

/* ---- queue_load.c ---- */

struct queue__tomb *queue__tomb_find(const struct queue_fsm *q, const char *id, size_t n,
				     uint64_t h);
struct queue__tomb *queue__tomb_new(const char *id, size_t n, uint64_t index);
void queue__tomb_push(struct queue_fsm *q, struct queue__tomb *t);
void queue__tomb_pop(struct queue_fsm *q);
int queue__tomb_add(struct queue_fsm *q, uint64_t index, const char *id, struct store_batch *b);

/* ---- queue_quota.c ---- */

struct queue__quota_prep;
/* An Accept's quotas in the phases of apply: begin decides (QUEUE_EQUOTA: over a limit;
 * QUEUE_ENOMEM) and prepares, changing nothing (*p NULL when nothing is counted); write adds
 * the store writes; end commits (commit != 0) or drops the preparation, and frees it. */
int queue__quota_begin(struct queue_fsm *q, const Relay__Accept *a, struct queue__quota_prep **p);
int queue__quota_write(struct store_batch *b, const struct queue__quota_prep *p);
void queue__quota_end(struct queue_fsm *q, struct queue__quota_prep *p, int commit);
int queue__quota_load(struct queue_fsm *q, const unsigned char *k, size_t klen,
		      const unsigned char *v, size_t vlen);
int queue__quota_kv(const struct queue_fsm *q, queue_kv_cb cb, void *arg);
uint64_t queue__quota_digest(const struct queue_fsm *q);
void queue__quota_free(struct queue_fsm *q);

#endif
