/*
 * queue_fsm.h - the queue state machine: deterministic apply of committed Commands.
 *
 * Contract: queue_apply(q, index, cmd, batch) turns one committed command into store writes
 * (added to batch, which the caller writes after the log append is durable) and updates the
 * in-memory state.  It reads no clock, no random numbers and no disk: every node applying the
 * same commands in the same order reaches the same state (byte-identical store writes).  What
 * apply needs of a message (its recipients' states, attempts, next attempts, domains) is in
 * memory; everything it writes is built from that and the command, so it never reads back
 * what an earlier apply wrote (the store lags apply by the writes the host has not made yet).
 *
 * THE RULE for every other component: the queue state is exactly the key/values of
 * STORE_CF_QUEUE, STORE_CF_BODY and STORE_CF_INDEX.  Copying those three column families
 * wholesale (a snapshot) and calling queue_fsm_reload (or queue_fsm_new) gives the same state
 * (queue_fsm_digest) as applying the log.  STORE_CF_QUEUE holds the messages' envelopes (key:
 * queue id, never starting with QUEUE_KEY_OWN), their recipients' last results (key: queue id,
 * a 0 byte, ...) and the ownership state (keys starting with QUEUE_KEY_OWN = 0x01: members,
 * domain assignments, deferrals, tombstones, quotas; see "Delivery ownership").  Anything that
 * lists the messages of STORE_CF_QUEUE skips the keys starting with 0x01 and those holding a 0
 * byte.  Stored form: see QUEUE_INDEX_MSG below and queue_store.c.
 *
 *   Accept   body -> body CF, envelope (the Accept's record: QueueRecord with one QueueRcpt per
 *            recipient, state queued, next attempt = received_ms) -> queue CF, its state value
 *            -> index CF, and an assignment for each of its domains that has none (an idle
 *            one is reused or replaced: see "Delivery ownership").  A second Accept for a
 *            queue id already present is a no-op (idempotent retry after an ambiguous
 *            failure), and so is an Accept for a queue id removed recently (a tombstone,
 *            below), counted in stats.removed_accepts.
 *   Outcome  for each listed recipient still queued whose domain's current epoch is
 *            outcome.epoch (fencing, below): DELIVERED -> delivered, FAILED -> failed,
 *            DEFERRED -> stays queued with next_attempt_ms and delay_notified (sticky) set; every
 *            kind counts the attempt and records at_ms (in the state value) and reply, relay,
 *            dsn_status and epoch (the recipient's result key).  Recipients already final are
 *            left alone, and a DEFERRED whose at_ms equals the recipient's last attempt is that
 *            attempt again, so a duplicated outcome is a no-op; an outcome for a queue id not
 *            in the queue is a no-op (0).  The attached DSN (an Accept from <>) is applied like
 *            an Accept in the same apply (assignments included), only when the outcome changed
 *            at least one recipient (a replayed outcome does not enqueue its DSN again even
 *            after the first copy was delivered and deleted).  A DELIVERED recipient lifts its
 *            domain's deferral (DeferDomain).
 *   Delete   the listed recipients (all when none is listed) still queued become deleted.  An
 *            unknown queue id gives QUEUE_ENOTFOUND (deterministic; nothing changes).
 *   DeferDomain  the domain's owner (at the command's epoch: fenced like an Outcome; otherwise
 *            a no-op, counted in stats.stale_defers) says its destination is dead: no queued
 *            recipient of the domain is due before until_ms (an until not later than the one in
 *            force is a no-op).  One entry for a domain's whole backlog: nothing of its
 *            messages is written, only the assignment (a version 2 value with until, at and
 *            the count of deferrals since the last delivery) and the reason (01 'E' domain ->
 *            reply).  Lifted by a delivery to the domain and by a Retry of one of its messages.
 *   Member, Renew, Hold, Release, Retry: see "Delivery ownership" below.
 *
 *   A message whose recipients are all final (delivered / failed / deleted) is removed:
 *   envelope, results, body and state value, and its queue id becomes a tombstone.  The index
 *   CF holds exactly one state value per message in the queue (every message in the queue has
 *   a queued recipient).  (A stored message without a queued recipient, which this code never
 *   writes, is loaded but never scheduled.)
 *
 *   Tombstones (dedup of late Accepts): a retried forward of an Accept can commit after the
 *   message was delivered and removed; applying it would deliver it again.  So the last
 *   QUEUE_TOMBSTONES_MAX removed queue ids are kept (key 01 'T' + big-endian index of the
 *   removing command -> queue id), the oldest evicted first (in removal order, in the same
 *   batch as the removal that overflows them), and an Accept (or an Outcome's DSN) for one of
 *   them is a no-op.  A retry that commits after QUEUE_TOMBSTONES_MAX later removals enqueues
 *   the message again (at-least-once, G3).
 *
 * In memory, per message, only what scheduling and apply need: one allocation holding struct
 * queue_msg (times, counts, the hash of its stored values), its recipients' states (24 bytes
 * each), one item per recipient domain (40 bytes) and its queue id; a hash table by queue id;
 * the apply order.  About 220 bytes for a message of one recipient (README "Benchmarks").  Due
 * order: each domain keeps its items in a heap by next attempt, each owner its domains in a
 * heap by their first item (or their deferral's end): queue_fsm_due_owned walks both in
 * O(k log k); a domain moving to another owner, or deferred, is O(log n).  The idle
 * assignments are in a heap by (epoch, domain) (eviction: O(log n) per change).  All of it is
 * rebuilt by queue_fsm_new from the index CF and the ownership keys (envelopes, results and
 * bodies are not read).  Envelopes, results and bodies are read from the store on demand
 * (queue_fsm_read_record, queue_fsm_read_body); the values apply wrote and the host has not yet
 * (queue_fsm_written) are read from a bounded overlay.
 *
 * Failure modes: an invalid command (queue_validate, a recipient index past the message's
 * recipients, or a Member for one member more than QUEUE_MEMBERS_MAX) is rejected
 * deterministically with QUEUE_EINVAL and changes nothing; QUEUE_ENOMEM also changes nothing
 * (neither memory nor batch) and the caller must stop applying (the entry is replayed on the
 * next open).  A damaged state value or ownership key at queue_fsm_new gives QUEUE_ECORRUPT; a
 * damaged envelope or result, when it is read.
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
	X(QUEUE_ENOTFOUND, -5, "no such message")                                                 \
	X(QUEUE_EQUOTA, -6, "hourly message quota reached")

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
/* Bounds on what one Outcome may carry. */
#define QUEUE_REPLY_MAX 1000u	 /* bytes of reply text, one line (no CR, LF or NUL) */
#define QUEUE_RELAY_MAX 300u	 /* bytes in "host[addr]:port" (RFC 1035 name: 255) */
#define QUEUE_DSN_STATUS_MAX 16u /* bytes in an RFC 3463 status "5.1.1" (digits, dots) */

/* Recipient states: the same values as Relay__RcptState. */
enum queue_rcpt_state {
	QUEUE_RCPT_QUEUED = RELAY__RCPT_STATE__RCPT_QUEUED,
	QUEUE_RCPT_DELIVERED = RELAY__RCPT_STATE__RCPT_DELIVERED,
	QUEUE_RCPT_FAILED = RELAY__RCPT_STATE__RCPT_FAILED,
	QUEUE_RCPT_DELETED = RELAY__RCPT_STATE__RCPT_DELETED,
};
#define QUEUE_RCPT_STATES 4

/* Stored form (queue_store.c): index CF key 'M' + queue id -> the message's state value
 * (QUEUE_STATE_FIXED bytes, its domains, QUEUE_STATE_RCPT bytes per recipient); queue CF key
 * queue id -> its envelope, queue id + 0 + QUEUE_KEY_RESULT + recipient (u16 BE) -> that
 * recipient's last result.  A store written before the state value has index keys 'Q' + next
 * attempt (u64 BE) + queue id with an empty value (legacy: the record holds the state). */
#define QUEUE_INDEX_MSG 'M'
#define QUEUE_INDEX_QUEUED 'Q'
#define QUEUE_KEY_RESULT 'l'
#define QUEUE_STATE_FIXED 46
#define QUEUE_STATE_RCPT 24

struct queue_rcpt_meta {
	uint8_t state;		/* enum queue_rcpt_state */
	uint8_t delay_notified; /* a "delayed" DSN was sent for it */
	uint16_t item;		/* internal: its item (recipient domain) in the message */
	uint32_t attempts;
	uint64_t next_attempt_ms;
	uint64_t last_attempt_ms; /* 0: never attempted */
};

struct queue__item;

/* One message's scheduling state, owned by the fsm; valid until the message is removed or the
 * fsm is freed.  Read-only for users.  One allocation holds it, its recipients, its items and
 * its queue id (queue_fsm.h "In memory"). */
struct queue_msg {
	const char *queue_id; /* in the same allocation */
	uint64_t received_ms;
	uint64_t size;		  /* body bytes */
	uint64_t accept_index;	  /* log index of its Accept */
	uint64_t update_index;	  /* log index of the last command that changed it */
	uint64_t next_attempt_ms; /* earliest next attempt of its queued recipients (a domain's
				     deferral not counted: queue_fsm_due_ms) */
	uint32_t nrcpts;
	uint32_t nqueued;	       /* recipients still queued (> 0 while in the queue) */
	uint8_t held;		       /* relayctl queue hold: in no due list */
	/* internal */
	uint8_t busy;		       /* queue_fsm_set_busy (local, not replicated) */
	uint8_t legacy;		       /* stored before the state value: 'Q' index key */
	uint16_t nitems;
	struct queue_rcpt_meta *rcpts; /* nrcpts items */
	struct queue_msg *prev, *next; /* apply order */
	struct queue_msg *hnext;       /* hash chain */
	struct queue__item *items;     /* one per distinct recipient domain */
	uint64_t shash; /* digest of its stored envelope and results (queue_store.c) */
};

struct queue_counts {
	uint64_t messages;
	uint64_t rcpts[QUEUE_RCPT_STATES]; /* by enum queue_rcpt_state */
};

/* What apply did since queue_fsm_new (entries replayed at open included; not persisted). */
struct queue_fsm_stats {
	uint64_t delivered;	   /* recipients made delivered by an Outcome */
	uint64_t deferred;	   /* recipients deferred by an Outcome */
	uint64_t failed;	   /* recipients made failed by an Outcome */
	uint64_t deleted;	   /* recipients made deleted by a Delete */
	uint64_t messages_deleted; /* messages removed because every recipient was final */
	uint64_t dsns;		   /* DSN messages enqueued with an Outcome */
	uint64_t stale_outcomes;   /* recipients an Outcome listed with a stale epoch (ignored) */
	uint64_t held;		   /* Hold commands applied (not the no-ops) */
	uint64_t released;	   /* Release commands applied (not the no-ops) */
	uint64_t retried;	   /* Retry commands applied */
	uint64_t member_changes;   /* Member commands that changed a member's state */
	uint64_t reassigned;	   /* domain assignments a Member command gave a new owner
				      (to or from unowned included) */
	uint64_t removed_accepts;  /* Accepts (and DSNs) ignored: their queue id is a tombstone */
	uint64_t quota_refused;	   /* Accepts refused over a quota (QUEUE_EQUOTA) */
	uint64_t quota_evicted;	   /* quota windows forgotten before they ended (table full) */
	uint64_t defers;	   /* DeferDomain commands that deferred a domain */
	uint64_t stale_defers;	   /* DeferDomain commands ignored: stale epoch or no domain */
};

struct queue_fsm;

/* Creates a state machine over s (borrowed; must outlive it) and loads the metadata of every
 * queue record.  QUEUE_ECORRUPT / QUEUE_EIO / QUEUE_ENOMEM on failure. */
int queue_fsm_new(struct store *s, struct queue_fsm **out);
void queue_fsm_free(struct queue_fsm *q);

/* Replaces q's state with the queue CF as stored now (after a snapshot install), in place: q
 * stays valid for its users; its stats (since queue_fsm_new) are kept.  On failure q is
 * unchanged. */
int queue_fsm_reload(struct queue_fsm *q);

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
void queue_fsm_stats(const struct queue_fsm *q, struct queue_fsm_stats *st);

/*
 * The whole queue in due order (tests and tools; the delivery engine uses
 * queue_fsm_due_owned).
 *
 * queue_fsm_due calls cb(arg, m) for the messages due by now_ms, earliest first: a message
 * comes at its first due item (queue_fsm_due_owned's order over every owner: a domain's
 * deferral counts), at most max of them; cb returns 0 to go on, nonzero to stop.  Held and
 * busy messages are left out.  Returns the number of calls, or QUEUE_ENOMEM (then cb was never
 * called; memory running out later ends the walk early).  Cost O(k log k) for k items visited.
 * cb must not apply commands or free the fsm (it may read: lookup, read_record).
 * queue_fsm_next_due_ms gives the earliest due time in the queue, UINT64_MAX when nothing is
 * due, in O(members): the timer of a scheduler.  Both are in-memory, rebuilt on open.
 */
typedef int (*queue_due_cb)(void *arg, const struct queue_msg *m);
int queue_fsm_due(const struct queue_fsm *q, uint64_t now_ms, queue_due_cb cb, void *arg,
		  size_t max);
uint64_t queue_fsm_next_due_ms(const struct queue_fsm *q);

/* Reads one body from the store (*body malloc'ed, caller frees), or the record of a message as
 * applied: its envelope (the Accept's record, from the overlay or the store) with every
 * recipient's state, attempts, next attempt and delay_notified from memory and, for
 * read_record, its last result (reply, relay, dsn_status, epoch: overlay or store); free with
 * relay__queue_record__free_unpacked(rec, NULL).  read_envelope skips the results (the
 * delivery engine's read: one store read).  QUEUE_ENOTFOUND, QUEUE_EIO, QUEUE_ECORRUPT (the
 * stored envelope or result is damaged), QUEUE_ENOMEM.  The body of a message whose Accept was
 * just applied is in the store once the caller has written the apply batch (cluster: the next
 * write after the proposal's callback); until then QUEUE_ENOTFOUND.  So may be its envelope
 * when more than QUEUE_OVERLAY_BYTES_MAX of values wait for queue_fsm_written. */
int queue_fsm_read_body(struct queue_fsm *q, const char *queue_id, void **body, size_t *len);
int queue_fsm_read_record(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec);
int queue_fsm_read_envelope(struct queue_fsm *q, const char *queue_id, Relay__QueueRecord **rec);

/* Every message a store holds, without a state machine (constant memory: relayd
 * --dump-queue), in queue id order: cb(arg, rec) with the record as queue_fsm_read_record
 * gives it (envelope, states from its state value, results); rec is freed after cb returns;
 * cb returns nonzero to stop.  A damaged envelope, state value or result sets *bad (the
 * message is skipped or shown as far as it could be read).  0 or QUEUE_EIO / QUEUE_ENOMEM.
 * queue_store_domain_owner reads a domain's assignment from the store the same way. */
typedef int (*queue_record_cb)(void *arg, Relay__QueueRecord *rec);
int queue_store_stream(struct store *s, queue_record_cb cb, void *arg, int *bad);
int queue_store_domain_owner(struct store *s, const char *domain, char *owner, uint64_t *epoch);

/* The host's word that the apply writes of every command up to index are in the store: the
 * overlay (queue_store.c) forgets the values they wrote.  Hosts that write each batch before
 * the next read may skip it (the overlay then stays at its bound). */
#define QUEUE_OVERLAY_BYTES_MAX ((size_t)16 << 20)
void queue_fsm_written(struct queue_fsm *q, uint64_t index);

/* Marks a message in flight (busy) or not on this node: its items leave the due lists
 * (queue_fsm_due, queue_fsm_due_owned) while busy, so a scheduler walking them never meets its
 * own attempts.  Local: not replicated, not in the digest, lost by queue_fsm_reload.
 * QUEUE_ENOTFOUND for a queue id not in the queue.  O(items log n). */
int queue_fsm_set_busy(struct queue_fsm *q, const char *queue_id, int busy);

/* When m is next due: the earliest over its queued recipients' domains of max(their next
 * attempt, the domain's deferral); UINT64_MAX when none is queued. */
uint64_t queue_fsm_due_ms(const struct queue_fsm *q, const struct queue_msg *m);

/* 1 when m has a queued recipient in domain (compared ASCII-lowercased), else 0: from memory,
 * without reading its envelope. */
int queue_fsm_msg_in_domain(const struct queue_fsm *q, const struct queue_msg *m,
			    const char *domain);

/* Builds the stored record of an Accept committed at index (pure; used by apply).  Pointers in *rec
 * borrow from a and from rcpts (nrcpts = a->n_rcpts items, rcpt_ptrs the same count) - nothing is
 * allocated. */
void queue_record_from_accept(const Relay__Accept *a, uint64_t index, Relay__QueueRecord *rec,
			      Relay__QueueRcpt *rcpts, Relay__QueueRcpt **rcpt_ptrs);

/*
 * ---- Delivery ownership (issue 5) ----
 *
 * An item is (message, destination domain): the queued recipients of one message whose address
 * has that domain (the part after the last '@', ASCII-lowercased).  Ownership is per domain: every
 * domain with at least one queued recipient has an assignment (owner, epoch), active; some
 * domains without one keep theirs, idle (below).  owner is a member
 * node id or "" (unowned: no LIVE member); epoch is the log index of the command that made the
 * assignment, so a domain's epochs only grow and two assignments of one domain never share one
 * (the domains assigned by one command share its index).  Epochs are indexes >= 1: an Outcome
 * with epoch 0 (or none) is always stale.
 *
 * Members: a table node id -> state (enum queue_member_state), changed only by Member commands
 * (Renew records the renew index of a known member and is otherwise a no-op; a Renew from an
 * unknown node is a no-op).  At most QUEUE_MEMBERS_MAX members (a Member command for one more is
 * QUEUE_EINVAL).  REMOVED deletes the entry.  A Member command that sets the state a member
 * already has, or REMOVED for an unknown node, is a no-op (nothing written).
 *
 * Assignment rules (all in apply, deterministic):
 *   - an Accept (or a DSN enqueued by an Outcome) whose recipient has a domain without an
 *     assignment creates one: owner = rendezvous winner among LIVE members (the highest
 *     queue_rendezvous(node, domain); ties: the lower node id), epoch = this index; "" when no
 *     member is LIVE;
 *   - a Member command that takes a node out of LIVE/DRAINING (DRAINED, DOWN, REMOVED) moves every
 *     domain it owns (active or idle) to the rendezvous winner among the LIVE members, epoch = this
 *     index;
 *   - a Member command that makes a node LIVE gives every unowned domain (active or idle) an
 *     owner (the winner
 *     among the LIVE members, itself included; epoch = this index); existing assignments stay
 *     where they are (sticky: no rebalancing, so no attempt in flight is fenced off needlessly);
 *   - a Member command with expect_renew_index set (the leader's DOWN) is a no-op unless the
 *     member is in the table and its renew_index equals it;
 *   - a Member command with expect_since_index set (a member's own DRAINED: the since_index of
 *     the DRAINING it saw) is a no-op unless the member's since_index equals it (0: not in the
 *     table), i.e. its state was not set again meanwhile (e.g. LIVE);
 *   - DRAINING changes no assignment (the draining node finishes its attempts, then proposes
 *     DRAINED);
 *   - an assignment whose domain has no queued recipient left becomes idle: it stays (key, owner,
 *     epoch) so that a previous owner still finishing an attempt never overlaps a new owner.
 *     An Accept (or DSN) for an idle domain whose owner is LIVE or DRAINING makes it active
 *     again, same owner and epoch (the rule of an active domain); otherwise (unowned, or an
 *     owner that may not keep domains) it gets a new assignment as above.  At most
 *     QUEUE_IDLE_DOMAINS_MAX are idle: when one more becomes idle, the idle one with the
 *     smallest (epoch, domain) is forgotten (its key deleted in the same batch; several at
 *     once: the same as one at a time), and a later Accept for it makes a new assignment.  An
 *     assignment never persisted (a store older than ownership, below) is forgotten, not kept
 *     idle.  In an Outcome, the domains it empties become idle (or are forgotten) before its
 *     DSN is enqueued.  Held recipients are queued.
 * A command that moves domains writes their assignments in domain order.
 *
 * Fencing (G4): an Outcome changes a listed recipient only when outcome->epoch equals the current
 * epoch of that recipient's domain; the other listed recipients that are still queued are
 * skipped and counted in queue_fsm_stats.stale_outcomes (recipients; those already final are a
 * duplicate, not counted).  An outcome that changed no recipient writes nothing and does not
 * enqueue its DSN.  Hold/Release/Retry/Delete are operator commands and carry no epoch; an
 * Outcome for a held message applies like any other (an attempt in flight when it was held).
 *
 * Hold/Release/Retry: Hold marks the message held (its state value): it leaves every due
 * list (queue_fsm_due, queue_fsm_due_owned) until Release, which clears the flag and sets the
 * next attempt of its queued recipients to at_ms.  Retry sets the next attempt of the queued
 * recipients to at_ms (held stays held) and lifts the deferrals of their domains (the
 * operator's "now").  Hold of a held message and Release of a message not
 * held are no-ops (nothing written).  Unknown queue id: QUEUE_ENOTFOUND (nothing changes).
 *
 * Everything above is persisted by the apply batch in STORE_CF_QUEUE under keys starting with
 * QUEUE_KEY_OWN (queue ids never do):
 *   01 'D' domain         -> 1 (version), epoch (u64 BE), owner node id (no bytes: unowned);
 *                            or, deferred since its last delivery (DeferDomain): 2 (version),
 *                            epoch, until_ms, at_ms (u64 BE), count (u32 BE), owner length
 *                            (u8), owner node id
 *   01 'E' domain         -> the reason of its deferral (the DeferDomain's reply)
 *   01 'M' node id        -> 1 (version), state (u8), since_index (u64 BE), renew_index (u64 BE),
 *                            last Renew's at_ms (u64 BE), inflight (u32 BE) (these two absent
 *                            in stores written before them: 0)
 *   01 'T' index (u64 BE) -> the queue id removed by the command at that index
 * so a restart, queue_fsm_reload after a snapshot install, and any snapshot that copies the
 * queue CFs carry it; all of it is part of queue_fsm_digest.  A store written before ownership
 * (records without 'D' keys) loads its domains unowned at epoch 0, not persisted, until a member
 * becomes LIVE and takes them; an assignment key whose domain has no queued recipient is an idle
 * assignment (more than QUEUE_IDLE_DOMAINS_MAX of them: QUEUE_ECORRUPT).
 */
#define QUEUE_MEMBERS_MAX 64u
#define QUEUE_IDLE_DOMAINS_MAX 4096u /* idle assignments kept (see "Delivery ownership") */
#define QUEUE_TOMBSTONES_MAX 65536u /* removed queue ids remembered (dedup of late Accepts) */
#define QUEUE_KEY_OWN 0x01	    /* first byte of every ownership key in STORE_CF_QUEUE */
/* A node id: 1..QUEUE_NODE_MAX bytes of printable ASCII without space, '"' or '\' (the rule
 * of queue ids), checked by queue_validate for Member and Renew. */
#define QUEUE_NODE_MAX 63u    /* bytes in a node id */
#define QUEUE_DOMAIN_MAX 255u /* bytes in a domain */

enum queue_member_state {
	QUEUE_MEMBER_LIVE = RELAY__MEMBER_STATE__MEMBER_LIVE,
	QUEUE_MEMBER_DRAINING = RELAY__MEMBER_STATE__MEMBER_DRAINING,
	QUEUE_MEMBER_DRAINED = RELAY__MEMBER_STATE__MEMBER_DRAINED,
	QUEUE_MEMBER_DOWN = RELAY__MEMBER_STATE__MEMBER_DOWN,
	QUEUE_MEMBER_REMOVED = RELAY__MEMBER_STATE__MEMBER_REMOVED,
};

struct queue_member {
	char node[QUEUE_NODE_MAX + 1];
	uint8_t state;		 /* enum queue_member_state */
	uint64_t since_index;	 /* log index of the Member command that set state */
	uint64_t renew_index;	 /* log index of its last applied Renew; 0 none */
	uint64_t renew_at_ms;	 /* that Renew's at_ms (the member's clock; 0 unknown) */
	uint32_t inflight;	 /* messages with attempts in flight it reported with it */
	uint64_t domains;	 /* domains it owns now (idle ones included) */
	uint64_t rcpts_owned;	 /* queued recipients in those domains (held included) */
	uint64_t rcpts_deferred; /* of which attempted at least once */
};

/* "live", "draining", "drained", "down" or "removed" (anything else); never NULL. */
const char *queue_member_state_name(unsigned state);

/* The members in node id order; returns the count (at most cap are written). */
size_t queue_fsm_members(const struct queue_fsm *q, struct queue_member *out, size_t cap);

/* The rendezvous score of (node, domain): FNV-1a 64 over node, a 0 byte, domain.  Pure. */
uint64_t queue_rendezvous(const char *node, const char *domain);

/* The domain of an address as ownership sees it: after the last '@', ASCII-lowercased, at most
 * QUEUE_DOMAIN_MAX bytes ("" when there is no '@').  out has QUEUE_DOMAIN_MAX + 1 bytes. */
void queue_addr_domain(const char *addr, char *out);

/* A domain's assignment, active or idle (domain compared ASCII-lowercased): 0 with owner
 * (QUEUE_NODE_MAX + 1 bytes; "" unowned) and *epoch, or QUEUE_ENOTFOUND when it has none. */
int queue_fsm_domain_owner(const struct queue_fsm *q, const char *domain, char *owner,
			   uint64_t *epoch);

/* A domain's assignment and deferral (DeferDomain), active or idle (domain compared
 * ASCII-lowercased): 0 and *out, or QUEUE_ENOTFOUND when it has no assignment. */
struct queue_domain_info {
	char owner[QUEUE_NODE_MAX + 1]; /* "" unowned */
	uint64_t epoch;
	uint64_t defer_until, defer_at; /* 0: not deferred */
	uint32_t defer_count;		/* DeferDomain commands since its last delivery */
	uint64_t rcpts_queued;
};
int queue_fsm_domain_info(const struct queue_fsm *q, const char *domain,
			  struct queue_domain_info *out);

/* A deferred domain's reason as stored (the DeferDomain's reply; "" none), into buf (cap
 * bytes).  Reads the store: one write behind apply at most. */
int queue_fsm_domain_reason(struct queue_fsm *q, const char *domain, char *buf, size_t cap);

/* Test knob (the simulator's eviction mode): sets the bound of idle assignments below
 * QUEUE_IDLE_DOMAINS_MAX for this fsm.  Every node of a test must use the same bound (it is
 * part of the replicated rules).  Only on an fsm with at most n idle assignments. */
void queue_fsm_test_idle_max(struct queue_fsm *q, size_t n);

/* Every assignment (idle ones included, with 0 queued recipients), in domain order: cb(arg,
 * domain, owner, epoch, queued recipients); cb returns nonzero to stop.  Returns the number of
 * calls (0 also when out of memory). */
typedef int (*queue_domain_cb)(void *arg, const char *domain, const char *owner, uint64_t epoch,
			       uint64_t rcpts_queued);
size_t queue_fsm_domains(const struct queue_fsm *q, queue_domain_cb cb, void *arg);

/*
 * The owner's scheduler view: the items owned by `owner` due by now_ms - an item is due at the
 * earliest next attempt of its queued recipients, or at its domain's deferral's end if later -
 * earliest first (ties: the item's own next attempt, apply order, then the item's first
 * recipient), held and busy messages left out, at most max calls; cb returns nonzero to stop.
 * Returns the number of calls or QUEUE_ENOMEM.  owner "" gives the unowned items; a node that
 * is not a member has none.  O(k log k) for k calls, whatever the queue size (a heap of items
 * per domain, a heap of domains per owner: a domain moving is one node).
 * queue_fsm_next_due_owned_ms: the earliest due time among owner's items (held and busy left
 * out), UINT64_MAX when none; O(1).  cb must not apply commands; it->msg and it->domain are
 * valid until the next apply.
 */
struct queue_item {
	const struct queue_msg *msg;
	const char *domain;
	uint64_t epoch;		  /* the domain's current epoch */
	uint64_t next_attempt_ms; /* when it is due (its domain's deferral counted) */
};
typedef int (*queue_item_cb)(void *arg, const struct queue_item *it);
int queue_fsm_due_owned(const struct queue_fsm *q, const char *owner, uint64_t now_ms,
			queue_item_cb cb, void *arg, size_t max);
uint64_t queue_fsm_next_due_owned_ms(const struct queue_fsm *q, const char *owner);

/* The ownership state as the store holds it once the apply batches are written: every key of
 * STORE_CF_QUEUE that starts with QUEUE_KEY_OWN, with its value, in no particular order,
 * except the deferrals' reasons (01 'E': not in memory).  cb returns nonzero to stop (that
 * value is returned); 0 when all were given. */
typedef int (*queue_kv_cb)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);
int queue_fsm_own_kv(const struct queue_fsm *q, queue_kv_cb cb, void *arg);

/*
 * ---- Quotas (issue 13 part 2) ----
 *
 * Hourly message quotas per authenticated user and per client, exact across the cluster
 * because every node counts the same committed Accepts.  An Accept with quota_user > 0 is
 * counted under (QUEUE_QUOTA_USER, auth_user), one with quota_client > 0 under
 * (QUEUE_QUOTA_CLIENT, client_key).  Each (kind, name) has one window: start_ms and the
 * messages accepted in it.  Times come from the Accepts (received_ms, the proposer's clock),
 * never from the applying node:
 *   - no window, or received_ms >= start_ms + QUEUE_QUOTA_WINDOW_MS: the window is over; the
 *     Accept opens a new one (start_ms = received_ms, count 0 before it);
 *   - otherwise (an earlier received_ms too, from a node whose clock lags) it falls in the
 *     current window.
 * If count >= the limit the Accept carries for any of its keys, it is refused: apply returns
 * QUEUE_EQUOTA, nothing is queued or counted, and the queue id becomes a tombstone (like a
 * removed message: a retried forward of the same Accept is then a no-op, never a message
 * queued after its client heard 450).  Else each key's count grows by one.  A duplicate
 * Accept (queue id present or a tombstone) is a no-op before any quota is looked at.
 *
 * Bound: at most QUEUE_QUOTA_KEYS_MAX windows.  Each counted Accept forgets up to
 * QUEUE__QUOTA_SWEEP windows that ended by its received_ms (oldest start first); when a new
 * window would exceed the bound, the window with the oldest start (ties: kind, then name) that
 * the Accept does not use is forgotten, ended or not (stats.quota_evicted counts those not
 * ended: beyond QUEUE_QUOTA_KEYS_MAX senders an hour, the oldest windows restart early).
 * Persisted in STORE_CF_QUEUE (part of snapshots and of queue_fsm_digest):
 *   01 'Q' kind name -> 1 (version), start_ms (u64 BE), count (u32 BE)
 */
#define QUEUE_QUOTA_WINDOW_MS 3600000ull /* one hour */
#define QUEUE_QUOTA_KEYS_MAX 65536u	 /* windows kept (users and clients together) */
#define QUEUE_QUOTA_NAME_MAX 255u	 /* bytes in a user name or client key */
#define QUEUE_QUOTA_USER 'u'
#define QUEUE_QUOTA_CLIENT 'c'

struct queue_quota {
	char kind; /* QUEUE_QUOTA_USER or QUEUE_QUOTA_CLIENT */
	char name[QUEUE_QUOTA_NAME_MAX + 1];
	uint64_t start_ms; /* the window: [start_ms, start_ms + QUEUE_QUOTA_WINDOW_MS) */
	uint32_t count;	   /* messages accepted in it */
};

/* The window of (kind, name) as applied: 0 and *out, or QUEUE_ENOTFOUND.  A window whose end
 * has passed (by the caller's clock) is still returned: the caller compares. */
int queue_fsm_quota(const struct queue_fsm *q, char kind, const char *name, struct queue_quota *out);

/* Every window, in no particular order; cb returns nonzero to stop.  Returns the calls made. */
typedef int (*queue_quota_cb)(void *arg, const struct queue_quota *w);
size_t queue_fsm_quotas(const struct queue_fsm *q, queue_quota_cb cb, void *arg);

/* Digest of the in-memory state (for determinism tests and consistency checks). */
uint64_t queue_fsm_digest(const struct queue_fsm *q);

#endif
