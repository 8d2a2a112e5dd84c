/*
 * queue_fsm_int.h - private to the queue state machine (cluster/queue_*.c): its in-memory
 * objects and the functions its files share (queue__ names).  Nothing outside the state machine
 * includes it: callers use queue_fsm.h.
 *
 * The state machine's files, one seam each:
 *   queue_fsm.c       messages and scheduling: the message table, records, heaps, queries
 *   queue_apply.c     applying message commands: Accept, Outcome, Delete, Hold, Release, Retry
 *   queue_own.c       ownership and members: domains, assignments, the member table, Member
 *                     and Renew, their keys
 *   queue_load.c      tombstones, open and reload from the store, snapshot key/values, digest
 *   queue_validate.c  validation of commands before anything changes
 *   queue_quota.c     hourly quota windows per user and client (queue_fsm.h "Quotas")
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
#define QUEUE__HEAP_MIN 64u
#define QUEUE__OWN_DOMAIN 'D'
#define QUEUE__OWN_MEMBER 'M'
#define QUEUE__OWN_TOMB 'T'
#define QUEUE__OWN_QUOTA 'Q'
#define QUEUE__QUOTA_VAL_LEN 13	 /* version, start_ms, count */
#define QUEUE__QUOTA_KEY_MAX (3 + QUEUE_QUOTA_NAME_MAX)
#define QUEUE__QUOTA_BUCKETS 16384u /* fixed: QUEUE_QUOTA_KEYS_MAX / 4 per chain on average */
#define QUEUE__QUOTA_SWEEP 2u	    /* ended windows one Accept forgets */
#define QUEUE__OWN_VERSION 1
#define QUEUE__OWN_KEY_MAX (2 + QUEUE_DOMAIN_MAX)
#define QUEUE__DOM_VAL_LEN 9 /* + owner */
#define QUEUE__MEMBER_VAL_LEN 30
#define QUEUE__MEMBER_VAL_LEN_V1 18 /* without renew_at_ms and inflight */
#define QUEUE__NO_STATE 0xff	    /* a member not in the table */

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
	struct queue__quota **qbuckets; /* owned array (QUEUE__QUOTA_BUCKETS); windows owned */
	struct queue__quota **qheap;	/* owned array (QUEUE_QUOTA_KEYS_MAX): min-heap by (start_ms,
					   kind, name) */
	size_t nquota;
	struct queue_counts counts;
	struct queue_fsm_stats stats;
};

/* An edit of one recipient of a record being repacked (queue__repack). */
typedef void (*queue__edit_fn)(void *ctx, Relay__QueueRecord *rec, Relay__QueueRcpt *rc);

/* ---- queue_fsm.c ---- */

uint64_t queue__hash(const char *s, size_t n);
int queue__heap_reserve(struct queue__heap *h, size_t n);
void queue__heap_insert(struct queue__heap *h, struct queue_hnode *x);
void queue__heap_remove(struct queue__heap *h, struct queue_hnode *x);
void queue__heap_fix(struct queue__heap *h, struct queue_hnode *x);
struct queue_msg *queue__find(const struct queue_fsm *q, const char *id, size_t n, uint64_t h);
int queue__reserve(struct queue_fsm *q, uint64_t nmsgs);
void queue__link(struct queue_fsm *q, struct queue_msg *m);
void queue__unlink(struct queue_fsm *q, struct queue_msg *m);
void queue__msg_free(struct queue_msg *m);
struct queue_msg *queue__msg_new(const char *id, uint32_t nrcpts);
int queue__group(struct queue_msg *m, const char *const *addrs, struct queue__dom **nd);
size_t queue__index_key(unsigned char *k, uint8_t state, uint64_t next_ms, const char *id);
int queue__repack(const struct queue_msg *m, queue__edit_fn edit, void *ctx, unsigned char **out,
		  size_t *outlen);
int queue__meta_from_record(struct queue_fsm *q, const Relay__QueueRecord *r, const void *v,
			    size_t vlen, struct queue_msg **out);

/* ---- queue_validate.c ---- */

int queue__token_ok(const char *s, size_t n, size_t max);
int queue__id_ok(const char *id);

/* ---- queue_apply.c ---- */

int queue__is_owner_state(uint8_t s);

/* ---- queue_own.c ---- */

struct queue__dom *queue__dom_find(const struct queue_fsm *q, const char *name, size_t len,
				   uint64_t h);
int queue__dom_reserve(struct queue_fsm *q, uint64_t n);
struct queue__dom *queue__dom_new(const char *name, size_t len, uint64_t h);
int queue__dom_order(const struct queue__dom *x, const struct queue__dom *y);
int queue__cmp_dom_order(const void *a, const void *b);
void queue__idle_insert(struct queue_fsm *q, struct queue__dom *d);
void queue__idle_remove(struct queue_fsm *q, struct queue__dom *d);
struct queue__heap *queue__owner_heap(struct queue_fsm *q, struct queue__member *mb);
void queue__dom_attach(struct queue_fsm *q, struct queue__dom *d, struct queue__member *mb);
void queue__dom_detach(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_insert(struct queue_fsm *q, struct queue__dom *d);
void queue__dom_forget(struct queue_fsm *q, struct queue__dom *d);
void queue__item_on(struct queue_fsm *q, struct queue__item *it);
void queue__item_off(struct queue_fsm *q, struct queue__item *it);
struct queue__member *queue__member_find(const struct queue_fsm *q, const char *node, size_t *pos);
struct queue__member *queue__winner(const struct queue_fsm *q, const char *domain,
				    struct queue__member *incl, const struct queue__member *excl);
void queue__member_free(struct queue__member *mb);
size_t queue__own_key(unsigned char *k, char type, const void *s, size_t n);
size_t queue__dom_val(unsigned char *v, uint64_t epoch, const struct queue__member *owner);
int queue__put_dom(struct store_batch *b, const struct queue__dom *d, uint64_t epoch,
		   const struct queue__member *owner);
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
