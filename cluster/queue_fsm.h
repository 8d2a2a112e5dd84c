/*
 * queue_fsm.h - the queue state machine: deterministic apply of committed Commands.
 *
 * Contract: queue_apply(q, index, cmd, batch) turns one committed command into store writes
 * (added to batch, which the caller writes after the log append is durable) and updates the
 * in-memory queue index.  It reads no clock, no random numbers and no disk: every node applying
 * the same commands in the same order reaches the same state (byte-identical store writes).
 *
 *   Accept   body -> body CF, record (envelope + one QueueRcpt per recipient, state queued,
 *            next attempt = received_ms) -> queue CF, an entry in the index CF (state queued,
 *            next attempt).  A second Accept for a queue id already present is a no-op
 *            (idempotent retry after an ambiguous failure).
 *
 * The in-memory index holds metadata only (queue id, received time, size, recipient states,
 * attempts, next attempts), rebuilt by queue_fsm_new from the queue CF without reading bodies.
 * Bodies and full records are read from the store on demand (queue_fsm_read_body/_record).
 *
 * Failure modes: an invalid command (queue_validate) is rejected deterministically with
 * QUEUE_EINVAL and changes nothing; QUEUE_ENOMEM also changes nothing (neither memory nor
 * batch) and the caller must stop applying (the entry is replayed on the next open).  A damaged
 * queue record at queue_fsm_new gives QUEUE_ECORRUPT.
 */
#ifndef RELAY_QUEUE_FSM_H
#define RELAY_QUEUE_FSM_H

#include <stddef.h>
#include <stdint.h>

#include "relay.pb-c.h"
#include "store.h"

#define QUEUE_ERRNO_MAP(X)                                                                         \
	X(QUEUE_EINVAL, -1, "invalid command")                                                     \
	X(QUEUE_ENOMEM, -2, "out of memory")                                                       \
	X(QUEUE_EIO, -3, "storage error")                                                          \
	X(QUEUE_ECORRUPT, -4, "corrupt queue record")                                              \
	X(QUEUE_ENOTFOUND, -5, "no such message")

enum queue_errno {
#define QUEUE__ERRNO_ENUM(name, val, str) name = (val),
	QUEUE_ERRNO_MAP(QUEUE__ERRNO_ENUM)
#undef QUEUE__ERRNO_ENUM
};

const char *queue_strerror(int code);

/* Bounds on what one Accept may carry (checked by queue_validate). */
#define QUEUE_ID_MAX 64u      /* bytes in a queue id */
#define QUEUE_ADDR_MAX 512u   /* bytes in a mail address (RFC 5321 4.5.3.1: 256 path) */
#define QUEUE_RCPTS_MAX 1000u /* recipients per message (RFC 5321 4.5.3.1.8: >= 100) */
#define QUEUE_BODY_MAX ((size_t)128 << 20) /* body bytes */

/* Recipient states: the same values as Relay__RcptState. */
enum queue_rcpt_state {
	QUEUE_RCPT_QUEUED = RELAY__RCPT_STATE__RCPT_QUEUED,
	QUEUE_RCPT_DELIVERED = RELAY__RCPT_STATE__RCPT_DELIVERED,
	QUEUE_RCPT_FAILED = RELAY__RCPT_STATE__RCPT_FAILED,
	QUEUE_RCPT_DELETED = RELAY__RCPT_STATE__RCPT_DELETED,
};
#define QUEUE_RCPT_STATES 4

/* Index CF key: state byte, big-endian next attempt ms, queue id. */
#define QUEUE_INDEX_QUEUED 'Q'

struct queue_rcpt_meta {
	uint8_t state; /* enum queue_rcpt_state */
	uint32_t attempts;
	uint64_t next_attempt_ms;
};

/* One message's metadata, owned by the fsm; valid until the message is removed or the fsm is
 * freed.  Read-only for users. */
struct queue_msg {
	char queue_id[QUEUE_ID_MAX + 1];
	uint64_t received_ms;
	uint64_t size;		  /* body bytes */
	uint64_t accept_index;	  /* log index of its Accept */
	uint64_t next_attempt_ms; /* earliest next attempt of its queued recipients */
	uint32_t nrcpts;
	struct queue_rcpt_meta *rcpts; /* nrcpts items */
	/* internal */
	struct queue_msg *prev, *next; /* apply order */
	struct queue_msg *hnext;       /* hash chain */
	uint64_t hash;
};

struct queue_counts {
	uint64_t messages;
	uint64_t rcpts[QUEUE_RCPT_STATES]; /* by enum queue_rcpt_state */
};

struct queue_fsm;

/* Creates a state machine over s (borrowed; must outlive it) and loads the metadata of every
 * queue record.  QUEUE_ECORRUPT / QUEUE_EIO / QUEUE_ENOMEM on failure. */
int queue_fsm_new(struct store *s, struct queue_fsm **out);
void queue_fsm_free(struct queue_fsm *q);

/* 0 if cmd is a command queue_apply accepts, else QUEUE_EINVAL.  Pure. */
int queue_validate(const Relay__Command *cmd);

/* Applies cmd, committed at log index.  Adds its store writes to b (not written here). */
int queue_apply(struct queue_fsm *q, uint64_t index, const Relay__Command *cmd,
		struct store_batch *b);

/* Lookup by queue id (NULL if absent); iteration in apply order. */
const struct queue_msg *queue_fsm_lookup(const struct queue_fsm *q, const char *queue_id);
const struct queue_msg *queue_fsm_first(const struct queue_fsm *q);
const struct queue_msg *queue_fsm_next(const struct queue_fsm *q, const struct queue_msg *m);

void queue_fsm_counts(const struct queue_fsm *q, struct queue_counts *c);

/* Reads one body (*body malloc'ed, caller frees) or the full record (free with
 * relay__queue_record__free_unpacked(rec, NULL)).  QUEUE_ENOTFOUND, QUEUE_EIO, QUEUE_ECORRUPT. */
int queue_fsm_read_body(struct queue_fsm *q, const char *queue_id, void **body, size_t *len);
int queue_fsm_read_record(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec);

/* Builds the stored record of an Accept committed at index (pure; used by apply and by the
 * offline dump for entries not applied yet).  Pointers in *rec borrow from a and from rcpts
 * (nrcpts = a->n_rcpts items, rcpt_ptrs the same count) - nothing is allocated. */
void queue_record_from_accept(const Relay__Accept *a, uint64_t index, Relay__QueueRecord *rec,
			      Relay__QueueRcpt *rcpts, Relay__QueueRcpt **rcpt_ptrs);

/* Digest of the in-memory state (for determinism tests and consistency checks). */
uint64_t queue_fsm_digest(const struct queue_fsm *q);

#endif
