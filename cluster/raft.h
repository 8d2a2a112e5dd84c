/*
 * raft.h - the Raft consensus core as a pure state machine.
 *
 * Contract.  The core does no I/O: it owns no socket, no clock, no disk and no source of
 * randomness other than a PRNG seeded from struct raft_config.  Its inputs are:
 *   raft_tick()            one logical tick (the host decides how long a tick is),
 *   raft_step()            one message received from a peer,
 *   raft_propose()         a client command (leader only),
 *   raft_propose_conf()    a single-server membership change (leader only; thesis 4.1),
 *   raft_transfer_leader() a leadership transfer request (thesis 3.10),
 *   raft_persisted()       "everything in ready number seq is durable",
 *   raft_compact()         "I have a durable snapshot of my state machine at index i" (thesis 5).
 * Its outputs come out of one structure, struct raft_ready, that the host fetches with
 * raft_ready_get() and gives back with raft_advance().  Happy path for the host:
 *
 *   while (raft_ready_get(r, &rd) > 0) {
 *       start writing rd.snap (install), rd.hs, rd.entries to disk, in that order, as ONE
 *         ordered write numbered rd.seq (when rd.need_persist);
 *       send every message in rd.msgs (they are safe to send now: see below);
 *       apply rd.snap_data to the state machine if rd.snap, then apply rd.committed in order
 *         (committed entries are always durable locally already);
 *       raft_advance(r, &rd);
 *   }
 *   ... later, when the write numbered seq is durable (fsync returned): raft_persisted(r, seq).
 *
 * Persist before send.  The core never puts into rd.msgs a message whose meaning depends on
 * state that is not yet durable: vote grants, append acknowledgements and vote requests are
 * held inside the core until the host reports (raft_persisted) that the ready carrying the
 * vote, term or entries they depend on is on disk.  A leader's own AppendEntries go out at
 * once (the leader writes its log in parallel with replication, thesis 10.2.1) but the leader
 * counts itself towards a commit quorum only for entries reported persisted.  A host may thus
 * send rd.msgs before the write of the same ready finishes.  If the host crashes, held
 * messages die with it, which is exactly what makes this safe.
 *
 * Pointers in a ready (entries, committed, msgs and their entries, snapshot data) are owned by
 * the core and valid until raft_advance(); between raft_ready_get() and raft_advance() the host
 * calls no other function on the same struct raft.  Messages passed to raft_step() are
 * borrowed: the core copies what it keeps.  A struct raft is used by one thread at a time.
 * Durable writes complete in seq order; raft_persisted(seq) covers every earlier seq.
 *
 * Bounds.  Every queue is bounded by a field of struct raft_config (a default is used when the
 * field is 0): the outbox and the persist-wait queue (max_outbox messages each; overflow drops
 * the message, which Raft tolerates, and counts it), in-flight AppendEntries per follower
 * (max_inflight messages, at most RAFT_MAX_INFLIGHT, and max_inflight_bytes; raft_new allocates the rings of every member a
 * configuration can hold, so a membership change never fails to track one), entries and bytes
 * per message (max_msg_entries, max_msg_bytes), uncommitted entries at the leader
 * (max_uncommitted), entries in the in-memory log (max_log_entries: the host must compact),
 * committed entries handed out per ready (max_apply_batch), entry size
 * (RAFT_ENTRY_MAX_BYTES), snapshot size (RAFT_SNAPSHOT_MAX_BYTES; sent in chunks of at most
 * max_msg_bytes, one in flight per follower; a follower assembles one snapshot at a time)
 * and readies fetched but not yet reported durable (RAFT_MAX_UNPERSISTED_READIES; beyond it
 * new state simply waits in the core).
 *
 * Failure modes.  Malformed peer input makes raft_step() return RAFT_EINVAL and changes
 * nothing.  Allocation failure returns RAFT_ENOMEM from the call that needed memory; when it
 * happens while handling a message the message is dropped (peers retry).  A broken invariant
 * (e.g. asked to truncate a committed entry) aborts: that is a bug, not an input.
 *
 * Features: randomized election timeouts (3.4), pre-vote (9.6), check-quorum and leader
 * leases against disruptive servers (4.2.3, 6.2), log replication with conflict-term hints and
 * probe/replicate flow control (3.5), commit by counting current-term entries only (3.6.2),
 * a no-op entry at the start of each term (6.4), single-server membership changes taking effect
 * on append (4.1) with non-voting learners (4.2.1), leadership transfer (3.10), log compaction
 * with InstallSnapshot (chapter 5, Figure 5.3).
 */
#ifndef RELAY_RAFT_H
#define RELAY_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RAFT_MAX_NODES 16		    /* voters + learners in one configuration */
#define RAFT_ENTRY_MAX_BYTES (132u << 20)   /* one entry's data (a 128 MiB body + envelope) */
#define RAFT_SNAPSHOT_MAX_BYTES (64u << 20) /* opaque snapshot data */
#define RAFT_MAX_UNPERSISTED_READIES 64	    /* readies fetched but not yet reported durable */
#define RAFT_MAX_INFLIGHT 1024		    /* largest raft_config.max_inflight */

/* Error codes: 0 or negative.  One table, one string each. */
#define RAFT_ERRNO_MAP(X)                                                                          \
	X(OK, 0, "success")                                                                        \
	X(ENOTLEADER, -1, "not the leader")                                                        \
	X(ETRANSFER, -2, "leadership transfer in progress")                                        \
	X(EFULL, -3, "bounded queue full")                                                         \
	X(ETOOBIG, -4, "entry or snapshot too large")                                              \
	X(ENOMEM, -5, "out of memory")                                                             \
	X(EINVAL, -6, "invalid argument or malformed message")                                     \
	X(ECONFPENDING, -7, "a membership change is pending or the term has no committed entry")   \
	X(ESTATE, -8, "call not allowed in the current state")                                     \
	X(ECOMPACTED, -9, "index compacted away")

enum raft_errno {
#define RAFT__ERRNO_ENUM(name, val, str) RAFT_##name = (val),
	RAFT_ERRNO_MAP(RAFT__ERRNO_ENUM)
#undef RAFT__ERRNO_ENUM
};

const char *raft_strerror(int err);

enum raft_role { RAFT_FOLLOWER, RAFT_PRECANDIDATE, RAFT_CANDIDATE, RAFT_LEADER };

enum raft_entry_type { RAFT_ENTRY_NORMAL = 0, RAFT_ENTRY_NOOP = 1, RAFT_ENTRY_CONF = 2 };

/* One log entry.  data is owned by whoever owns the array the entry lives in. */
struct raft_entry {
	uint64_t index;
	uint64_t term;
	uint8_t type; /* enum raft_entry_type */
	uint32_t len;
	void *data;
};

/* A configuration: voters count towards quorums, learners only receive the log. */
struct raft_conf {
	uint32_t n_voters;
	uint32_t n_learners;
	uint64_t voters[RAFT_MAX_NODES];
	uint64_t learners[RAFT_MAX_NODES];
};

enum raft_conf_op { RAFT_CONF_ADD_VOTER, RAFT_CONF_ADD_LEARNER, RAFT_CONF_REMOVE };

struct raft_snap_meta {
	uint64_t index; /* last index the snapshot covers */
	uint64_t term;	/* term of that entry */
	struct raft_conf conf;
};

struct raft_hard_state {
	uint64_t term;
	uint64_t vote; /* 0: none */
	uint64_t commit;
};

enum raft_msg_type {
	RAFT_MSG_APP,		 /* AppendEntries (3.5) */
	RAFT_MSG_APP_RESP,	 /* its answer; also answers SNAP */
	RAFT_MSG_VOTE,		 /* RequestVote (3.4) */
	RAFT_MSG_VOTE_RESP,	 /* */
	RAFT_MSG_PREVOTE,	 /* pre-vote (9.6): term = candidate's term + 1, not adopted */
	RAFT_MSG_PREVOTE_RESP,	 /* */
	RAFT_MSG_HEARTBEAT,	 /* empty AppendEntries carrying a safe commit index */
	RAFT_MSG_HEARTBEAT_RESP, /* */
	RAFT_MSG_SNAP,		 /* InstallSnapshot (5.1, Figure 5.3), one chunk */
	RAFT_MSG_TIMEOUT_NOW,	 /* leadership transfer (3.10): start an election now */
	RAFT_MSG_SNAP_RESP, /* chunk received: index = snapshot index, snap_offset = bytes held */
	RAFT_MSG_TYPE_COUNT
};

const char *raft_msg_type_name(int type);

/*
 * One message.  A plain struct so that the transport can encode it.  entries and snap_data
 * are owned by whoever owns the message (the core, for messages in a ready; the transport,
 * for messages passed to raft_step, which the core only borrows).
 */
struct raft_msg {
	uint8_t type; /* enum raft_msg_type */
	uint8_t reject;
	uint8_t force; /* VOTE/PREVOTE: leadership transfer, ignore the leader lease (3.10) */
	uint64_t from;
	uint64_t to;
	uint64_t term;
	uint64_t log_term; /* APP: term of entry index; VOTE: candidate's last log term */
	uint64_t index;	   /* APP: index before entries; VOTE: last log index; APP_RESP: match or
			      rejected index */
	uint64_t commit;
	uint64_t hint_index; /* APP_RESP reject: follower's guess of the conflict (3.5) */
	uint64_t hint_term;  /* and the term it has there */
	uint32_t n_entries;
	struct raft_entry *entries;
	struct raft_snap_meta snap; /* SNAP */
	uint64_t snap_total;	    /* SNAP: size of the whole snapshot data */
	uint64_t snap_offset;	    /* SNAP: where this chunk starts; SNAP_RESP: bytes held */
	uint64_t snap_len;	    /* SNAP: this chunk (at most max_msg_bytes) */
	void *snap_data;
	/* The host's, neither set nor read by the core (0 from it): the sender's io clock + 1
	 * (ms) when it sent this message, 0 none.  A follower echoes its leader's latest in a
	 * forwarded proposal, so the leader can tell one that arrives too late (craft.c). */
	uint64_t stamp;
};

struct raft_config {
	uint64_t id;		 /* this node, nonzero */
	unsigned election_tick;	 /* election timeout, ticks; randomized in [e, 2e) (default 10) */
	unsigned heartbeat_tick; /* default 1 */
	bool pre_vote;
	bool check_quorum;
	unsigned max_inflight;	   /* AppendEntries in flight per follower (default 64) */
	size_t max_inflight_bytes; /* and their entry bytes (default 16 MiB; one always goes):
				      heartbeats queue behind them, so this bounds their delay */
	unsigned max_msg_entries;  /* default 64 */
	size_t max_msg_bytes;	   /* entry bytes per APP (one entry always fits) and snapshot
				      chunk size; default 1 MiB */
	unsigned max_outbox;	   /* default 1024 */
	unsigned max_uncommitted;  /* leader refuses proposals beyond this many uncommitted
				      entries, or twice this many unapplied (default 4096) */
	unsigned max_log_entries;  /* in-memory log (default 65536) */
	unsigned max_apply_batch;  /* committed entries per ready (default 256) */
	uint64_t rng_seed;	   /* randomized election timeouts */
	/* A snapshot from the leader counts only once the host holds its data: it is handed
	 * out in a ready as always, but its acknowledgement is withheld until the host calls
	 * raft_snapshot_installed(); until then the node acknowledges no append, grants no vote
	 * (pre-vote included) and does not campaign (raft_set_installing() after a restart). */
	bool defer_snapshot_ack;
};

/* Output of the core.  See the contract at the top. */
struct raft_ready {
	/* Persist (when need_persist), in this order, as one ordered write numbered seq. */
	bool need_persist;
	uint64_t seq;
	bool hs_changed;
	struct raft_hard_state hs;
	const struct raft_snap_meta *snap; /* NULL, or a snapshot received from the leader: */
	const void *snap_data;		   /* store it, drop the whole log, restore the */
	size_t snap_len;		   /* state machine from it */
	const struct raft_entry *entries;  /* append; entries[0].index may overwrite a suffix */
	size_t n_entries;
	/* Send now. */
	struct raft_msg *msgs;
	size_t n_msgs;
	/* Apply, in order, after snap if any. */
	const struct raft_entry *committed;
	size_t n_committed;
	/* Soft state, informational. */
	enum raft_role role;
	uint64_t lead;
	uint64_t term;
};

struct raft_status {
	uint64_t id;
	enum raft_role role;
	uint64_t lead;
	uint64_t term;
	uint64_t vote;
	uint64_t commit;
	uint64_t applied;
	uint64_t first_index;
	uint64_t last_index;
	uint64_t persisted_index;
	uint64_t snap_index;
	uint64_t snap_term;
	uint64_t transferee;
	uint64_t dropped_msgs; /* outbox overflow */
	struct raft_conf conf; /* latest configuration in the log */
	/* Leader only: what it knows of each member (for lag, catch-up before promoting a
	 * learner (4.2.1), and operator status). */
	uint32_t n_peers;
	struct raft_peer_status {
		uint64_t id;
		bool voter;
		bool active;	/* heard from in the current election timeout */
		uint8_t state;	/* 0 probe, 1 replicate, 2 snapshot */
		uint64_t match; /* highest index known replicated (self: persisted) */
		uint64_t next;
		uint64_t pending_snap; /* state 2: the snapshot it is sent (0 otherwise) */
	} peers[RAFT_MAX_NODES];
};

struct raft;

/* Allocate a core.  It must be given its durable state with raft_restore() before use. */
int raft_new(const struct raft_config *cfg, struct raft **out);
void raft_free(struct raft *r);

/*
 * Load durable state.  snap describes the last durable snapshot (for a fresh cluster: index 0,
 * term 0 and the initial configuration; a node joining later passes an empty configuration);
 * ents (borrowed, copied) are the durable entries after snap->index.  Called once, first.
 */
int raft_restore(struct raft *r, const struct raft_hard_state *hs,
		 const struct raft_snap_meta *snap, const void *snap_data, size_t snap_len,
		 const struct raft_entry *ents, size_t n);

/*
 * For a host whose state machine is itself durable (it stores its applied index with its
 * state): entries up to index were applied before the restart, do not hand them out again.
 * Call after raft_restore(); snapshot index <= index <= last index.  The core hands out only
 * committed entries that are also durable locally, so such a state machine never gets ahead
 * of the log; a snapshot from the leader (rd.snap) must become the state machine's state in
 * the same durable write that stores it, or after raft_persisted() for it.
 */
int raft_set_applied(struct raft *r, uint64_t index);

/*
 * defer_snapshot_ack: the data of the snapshot last handed out (rd.snap) is now durable here;
 * the acknowledgement withheld since then goes to the leader, and the node may vote and campaign
 * again.  After a restart in the middle of an install, raft_set_installing() (after
 * raft_restore) puts the core back into that state.  raft_installing() tells which.
 */
int raft_snapshot_installed(struct raft *r);
int raft_set_installing(struct raft *r);
bool raft_installing(const struct raft *r);

/*
 * Start a brand-new cluster: every initial member calls this (instead of raft_restore) with
 * the same configuration.  It puts the configuration at index 1, term 1, committed; the first
 * ready carries it to be persisted.  A server that joins later calls raft_restore with an
 * empty state and learns the configuration from the leader.
 */
int raft_bootstrap(struct raft *r, const struct raft_conf *conf);

void raft_tick(struct raft *r);
int raft_step(struct raft *r, const struct raft_msg *m);

/* Append a NORMAL entry (data copied).  On success *index and *term (may be NULL) tell where. */
int raft_propose(struct raft *r, const void *data, size_t len, uint64_t *index, uint64_t *term);
/* Append a configuration entry changing one server (thesis 4.1). */
int raft_propose_conf(struct raft *r, enum raft_conf_op op, uint64_t id, uint64_t *index,
		      uint64_t *term);
int raft_transfer_leader(struct raft *r, uint64_t target);
/* Start an election at once (tests, manual bootstrap).  Ignored unless a voter. */
int raft_campaign(struct raft *r);

/* 1 and fills *rd when there is work, 0 when none, RAFT_ESTATE if a ready is outstanding. */
int raft_ready_get(struct raft *r, struct raft_ready *rd);
void raft_advance(struct raft *r, struct raft_ready *rd);
/* The write numbered seq, and every earlier one, is durable. */
void raft_persisted(struct raft *r, uint64_t seq);

/*
 * The host holds a durable snapshot of its state machine at index (<= applied and <= the
 * persisted index, so a snapshot is never newer than the durable log); data (copied)
 * is what followers that are too far behind get.  Drops entries <= index from memory.
 */
int raft_compact(struct raft *r, uint64_t index, const void *data, size_t len);

void raft_status(const struct raft *r, struct raft_status *st);
/* Term of the entry at index, 0 when unknown (compacted or past the end). */
uint64_t raft_term_at(const struct raft *r, uint64_t index);
/* The entry at index, NULL when not in memory.  Valid until the next call into r. */
const struct raft_entry *raft_entry_at(const struct raft *r, uint64_t index);
/* Meta of the latest snapshot the core holds (after raft_compact or an install). */
void raft_snap_meta(const struct raft *r, struct raft_snap_meta *meta);

/* Encode / decode a configuration as stored in a RAFT_ENTRY_CONF entry. */
size_t raft_conf_encoded_len(const struct raft_conf *c);
void raft_conf_encode(const struct raft_conf *c, void *buf);
int raft_conf_decode(const void *buf, size_t len, struct raft_conf *c);
bool raft_conf_is_voter(const struct raft_conf *c, uint64_t id);
bool raft_conf_is_member(const struct raft_conf *c, uint64_t id);

#endif
