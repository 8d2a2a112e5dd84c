/*
 * raft.c - the Raft core: elections, replication, membership, transfer, compaction.
 *
 * Contract: see raft.h.  This file depends on libc only and does no I/O.
 *
 * Layout of the state.  The in-memory log holds the entries after the latest snapshot:
 * log[k] has index snap_index + 1 + k.  Three cursors run over it:
 *   fetched_index   entries up to here were handed to the host in some ready (to persist),
 *   persisted_index entries up to here are reported durable (raft_persisted),
 *   applied         entries up to here were handed to the host to apply.
 * Readies that carry something to persist get a sequence number; a small ring remembers
 * (seq, last index, its term, hard state) for each until it is reported durable.
 *
 * Messages that need durable state (everything but a leader's replication traffic) are
 * tagged with the seq of the ready that carries that state and wait in `held` until
 * raft_persisted() reaches that seq ("persist before send"; thesis 3.8 and etcd's rule).
 * A leader's replication traffic waits only for its term and vote, never for its entries.
 */
#include "raft.h"

#include <stdlib.h>
#include <string.h>

#define DEF(v, d) ((v) ? (v) : (d))

enum pr_state { PR_PROBE, PR_REPLICATE, PR_SNAPSHOT };
enum vote_state { VS_NONE, VS_GRANT, VS_REJECT };

struct raft_progress {
	uint64_t id;
	bool voter;
	uint64_t match;
	uint64_t next;
	enum pr_state state;
	bool probe_sent;       /* PROBE: one message per heartbeat until answered */
	bool active;	       /* heard from in this election timeout (check-quorum) */
	uint8_t vote;	       /* enum vote_state, during an election */
	uint64_t pending_snap; /* SNAPSHOT: index of the snapshot being sent */
	uint64_t snap_acked;   /* SNAPSHOT: bytes the follower said it holds */
	unsigned snap_ticks;
	uint64_t *infl;	   /* ring of last indexes of in-flight appends, cap max_inflight; */
	uint64_t *infl_sz; /* and of their entry bytes; both borrowed from raft.infl_pool */
	unsigned infl_start, infl_count;
	uint64_t infl_bytes; /* entry bytes in flight (REPLICATE) */
};

/* Progress slots.  A configuration has at most RAFT_MAX_NODES members, so while conf_apply
 * moves from the old configuration to the new one, old and new together fit. */
#define RAFT_PRS_CAP (RAFT_MAX_NODES * 2)

struct raft_pending {
	uint64_t seq;
	uint64_t index; /* last log index when the ready was fetched */
	uint64_t term;	/* its term */
	struct raft_hard_state hs;
};

struct raft_held {
	uint64_t seq;
	struct raft_msg m;
};

struct raft {
	struct raft_config cfg;
	uint64_t id;

	/* hard state */
	uint64_t term, vote, commit;
	/* soft state */
	enum raft_role role;
	uint64_t lead;
	uint64_t transferee;

	/* log */
	struct raft_entry *log;
	size_t log_len, log_cap;
	struct raft_snap_meta snap; /* latest snapshot */
	void *snap_data;
	size_t snap_len;
	struct { /* follower: a snapshot being received in chunks */
		bool active;
		uint64_t from, term, total, got;
		struct raft_snap_meta meta;
		uint8_t *buf;
	} rx;
	bool snap_install; /* received from leader; not yet handed out in a ready */
	/* defer_snapshot_ack: the host is installing the snapshot's data; until
	 * raft_snapshot_installed() this node acknowledges nothing, votes for no one and does not
	 * campaign (it holds no state to stand for) */
	bool installing;
	bool snap_unapplied; /* handed out, applied at raft_advance */
	uint64_t applied, fetched_index, persisted_index;

	/* configuration: latest in the log (takes effect on append, 4.1) */
	struct raft_conf conf;
	uint64_t conf_index;
	struct raft_progress prs[RAFT_PRS_CAP];
	unsigned n_prs;
	/* In-flight rings for the progress slots: RAFT_PRS_CAP rings of max_inflight each,
	 * allocated once by raft_new (owned), so that a membership change allocates nothing and
	 * never leaves a member untracked (a leader that tracked fewer voters than a quorum would
	 * count commits on a partial view). */
	uint64_t *infl_pool;
	uint32_t infl_free; /* bit i set: ring i of infl_pool is free */

	/* timers */
	unsigned election_elapsed, heartbeat_elapsed, rand_timeout;

	/* ready bookkeeping */
	bool loaded; /* raft_restore or raft_bootstrap was called */
	bool ready_out;
	bool persist_deferred;
	struct raft_hard_state fetched_hs, persisted_hs;
	uint64_t next_seq, persisted_seq, last_fetched_seq, hs_fetch_seq;
	struct raft_pending pend[RAFT_MAX_UNPERSISTED_READIES];
	unsigned pend_start, pend_count;
	struct raft_msg *outbox;
	unsigned n_out;
	struct raft_held *held;
	unsigned n_held;

	uint64_t rng;
	uint64_t dropped;
};

/* ---------------------------------------------------------------- errors, names */

const char *
raft_strerror(int err)
{
	switch (err) {
#define RAFT__ERRNO_STR(name, val, str)                                                            \
	case val:                                                                                  \
		return str;
		RAFT_ERRNO_MAP(RAFT__ERRNO_STR)
#undef RAFT__ERRNO_STR
	}
	return "unknown error";
}

const char *
raft_msg_type_name(int type)
{
	static const char *names[] = {"APP",	 "APP_RESP",	 "VOTE",      "VOTE_RESP",
				      "PREVOTE", "PREVOTE_RESP", "HEARTBEAT", "HEARTBEAT_RESP",
				      "SNAP",	 "TIMEOUT_NOW",	 "SNAP_RESP"};
	if (type < 0 || type >= RAFT_MSG_TYPE_COUNT)
		return "?";
	return names[type];
}

/* ---------------------------------------------------------------- small helpers */

static uint64_t
rng_next(struct raft *r)
{
	/* splitmix64 */
	uint64_t z = (r->rng += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void
reset_rand_timeout(struct raft *r)
{
	r->rand_timeout = r->cfg.election_tick + (unsigned)(rng_next(r) % r->cfg.election_tick);
}

static inline uint64_t
first_index(const struct raft *r)
{
	return r->snap.index + 1;
}

static inline uint64_t
last_index(const struct raft *r)
{
	return r->snap.index + r->log_len;
}

static inline struct raft_entry *
entry_at(const struct raft *r, uint64_t i)
{
	if (i <= r->snap.index || i > last_index(r))
		return NULL;
	return &r->log[i - first_index(r)];
}

/* 0 when unknown */
uint64_t
raft_term_at(const struct raft *r, uint64_t i)
{
	if (i == r->snap.index)
		return r->snap.term;
	struct raft_entry *e = entry_at(r, i);
	return e ? e->term : 0;
}

const struct raft_entry *
raft_entry_at(const struct raft *r, uint64_t index)
{
	return entry_at(r, index);
}

static inline uint64_t
last_term(const struct raft *r)
{
	return raft_term_at(r, last_index(r));
}

static void
entry_free(struct raft_entry *e)
{
	free(e->data);
	e->data = NULL;
}

static int
entry_copy(struct raft_entry *dst, const struct raft_entry *src)
{
	*dst = *src;
	dst->data = NULL;
	if (src->len) {
		dst->data = malloc(src->len);
		if (!dst->data)
			return RAFT_ENOMEM;
		memcpy(dst->data, src->data, src->len);
	}
	return 0;
}

static void
msg_free(struct raft_msg *m)
{
	for (uint32_t i = 0; i < m->n_entries; i++)
		entry_free(&m->entries[i]);
	free(m->entries);
	free(m->snap_data);
	m->entries = NULL;
	m->snap_data = NULL;
	m->n_entries = 0;
}

/* ---------------------------------------------------------------- configurations */

bool
raft_conf_is_voter(const struct raft_conf *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_voters; i++)
		if (c->voters[i] == id)
			return true;
	return false;
}

static bool
conf_is_learner(const struct raft_conf *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_learners; i++)
		if (c->learners[i] == id)
			return true;
	return false;
}

bool
raft_conf_is_member(const struct raft_conf *c, uint64_t id)
{
	return raft_conf_is_voter(c, id) || conf_is_learner(c, id);
}

static void
put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* Format: u64 n_voters, u64 n_learners, then the ids, all little-endian. */
size_t
raft_conf_encoded_len(const struct raft_conf *c)
{
	return 16 + 8 * ((size_t)c->n_voters + c->n_learners);
}

void
raft_conf_encode(const struct raft_conf *c, void *buf)
{
	uint8_t *p = buf;
	put64(p, c->n_voters);
	put64(p + 8, c->n_learners);
	p += 16;
	for (uint32_t i = 0; i < c->n_voters; i++, p += 8)
		put64(p, c->voters[i]);
	for (uint32_t i = 0; i < c->n_learners; i++, p += 8)
		put64(p, c->learners[i]);
}

static bool
conf_valid(const struct raft_conf *c)
{
	if (c->n_voters > RAFT_MAX_NODES || c->n_learners > RAFT_MAX_NODES ||
	    c->n_voters + c->n_learners > RAFT_MAX_NODES)
		return false;
	for (uint32_t i = 0; i < c->n_voters + c->n_learners; i++) {
		uint64_t id = i < c->n_voters ? c->voters[i] : c->learners[i - c->n_voters];
		if (id == 0)
			return false;
		for (uint32_t j = 0; j < i; j++) {
			uint64_t o = j < c->n_voters ? c->voters[j] : c->learners[j - c->n_voters];
			if (o == id)
				return false;
		}
	}
	return true;
}

int
raft_conf_decode(const void *buf, size_t len, struct raft_conf *c)
{
	const uint8_t *p = buf;
	if (len < 16)
		return RAFT_EINVAL;
	uint64_t nv = get64(p), nl = get64(p + 8);
	if (nv > RAFT_MAX_NODES || nl > RAFT_MAX_NODES || len != 16 + 8 * (nv + nl))
		return RAFT_EINVAL;
	memset(c, 0, sizeof(*c));
	c->n_voters = (uint32_t)nv;
	c->n_learners = (uint32_t)nl;
	p += 16;
	for (uint32_t i = 0; i < nv; i++, p += 8)
		c->voters[i] = get64(p);
	for (uint32_t i = 0; i < nl; i++, p += 8)
		c->learners[i] = get64(p);
	return conf_valid(c) ? 0 : RAFT_EINVAL;
}

static struct raft_progress *
pr_find(struct raft *r, uint64_t id)
{
	for (unsigned i = 0; i < r->n_prs; i++)
		if (r->prs[i].id == id)
			return &r->prs[i];
	return NULL;
}

static void
pr_reset_infl(struct raft_progress *pr)
{
	pr->infl_start = pr->infl_count = 0;
	pr->infl_bytes = 0;
}

/* A free in-flight ring of the pool: 2 x max_inflight values, the indexes then their bytes.
 * Cannot fail: rings and progress slots are as many. */
static uint64_t *
infl_ring_take(struct raft *r)
{
	if (r->infl_free == 0)
		abort(); /* invariant: more progress entries than RAFT_PRS_CAP */
	unsigned i = (unsigned)__builtin_ctz(r->infl_free);
	r->infl_free &= ~(1u << i);
	return r->infl_pool + (size_t)i * 2 * r->cfg.max_inflight;
}

static void
infl_ring_put(struct raft *r, uint64_t *ring)
{
	if (!ring)
		return;
	size_t i = (size_t)(ring - r->infl_pool) / (2 * (size_t)r->cfg.max_inflight);
	r->infl_free |= 1u << i;
}

/* Make progress entries match r->conf, keeping what is known about remaining members.  Every
 * member gets an entry: nothing here can fail. */
static void
conf_apply(struct raft *r, const struct raft_conf *c, uint64_t index)
{
	struct raft_progress old[RAFT_PRS_CAP];
	unsigned n_old = r->n_prs;
	memcpy(old, r->prs, sizeof(old[0]) * n_old);
	r->conf = *c;
	r->conf_index = index;
	r->n_prs = 0;
	for (uint32_t i = 0; i < c->n_voters + c->n_learners; i++) {
		uint64_t id = i < c->n_voters ? c->voters[i] : c->learners[i - c->n_voters];
		struct raft_progress *pr = &r->prs[r->n_prs++];
		unsigned k;
		for (k = 0; k < n_old; k++)
			if (old[k].id == id)
				break;
		if (k < n_old) {
			*pr = old[k];
			old[k].infl = NULL;
			old[k].infl_sz = NULL;
		} else {
			memset(pr, 0, sizeof(*pr));
			pr->id = id;
			pr->next = last_index(r) + 1;
			pr->state = PR_PROBE;
			pr->active = true;
			pr->infl = infl_ring_take(r);
			pr->infl_sz = pr->infl + r->cfg.max_inflight;
		}
		pr->voter = i < c->n_voters;
	}
	for (unsigned k = 0; k < n_old; k++)
		infl_ring_put(r, old[k].infl);
	if (r->transferee && !raft_conf_is_voter(c, r->transferee))
		r->transferee = 0;
}

/* Recompute the latest configuration after the log's suffix changed. */
static void
conf_recompute(struct raft *r)
{
	for (uint64_t i = last_index(r); i > r->snap.index; i--) {
		struct raft_entry *e = entry_at(r, i);
		struct raft_conf c;
		if (e->type == RAFT_ENTRY_CONF && raft_conf_decode(e->data, e->len, &c) == 0) {
			conf_apply(r, &c, i);
			return;
		}
	}
	conf_apply(r, &r->snap.conf, r->snap.index);
}

static unsigned
quorum(const struct raft *r)
{
	return r->conf.n_voters / 2 + 1;
}

static bool
promotable(const struct raft *r)
{
	return raft_conf_is_voter(&r->conf, r->id) && !r->snap_install && !r->installing;
}

/* ---------------------------------------------------------------- outbox */

static bool
is_leader_traffic(const struct raft *r, const struct raft_msg *m)
{
	return r->role == RAFT_LEADER &&
	       (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT ||
		m->type == RAFT_MSG_SNAP || m->type == RAFT_MSG_TIMEOUT_NOW);
}

/* The seq of the ready a message must wait for, 0 when it may go now. */
static uint64_t
hold_tag(const struct raft *r, const struct raft_msg *m)
{
	bool tv_unfetched = r->term != r->fetched_hs.term || r->vote != r->fetched_hs.vote;
	if (is_leader_traffic(r, m)) {
		if (tv_unfetched)
			return r->next_seq;
		if (r->hs_fetch_seq > r->persisted_seq)
			return r->hs_fetch_seq;
		return 0;
	}
	if (tv_unfetched || r->fetched_index < last_index(r) || r->snap_install)
		return r->next_seq;
	if (r->last_fetched_seq > r->persisted_seq)
		return r->last_fetched_seq;
	return 0;
}

/* Queue m (ownership of its buffers passes to the core, even on drop). */
static void
send(struct raft *r, struct raft_msg *m)
{
	m->from = r->id;
	if (!m->term)
		m->term = r->term;
	uint64_t tag = hold_tag(r, m);
	if (tag) {
		if (r->n_held >= r->cfg.max_outbox)
			goto drop;
		r->held[r->n_held].seq = tag;
		r->held[r->n_held].m = *m;
		r->n_held++;
		return;
	}
	if (r->n_out >= r->cfg.max_outbox)
		goto drop;
	r->outbox[r->n_out++] = *m;
	return;
drop:
	r->dropped++;
	msg_free(m);
}

static void
release_held(struct raft *r)
{
	unsigned k = 0;
	for (unsigned i = 0; i < r->n_held; i++) {
		struct raft_held *h = &r->held[i];
		if (h->seq <= r->persisted_seq) {
			if (r->n_out < r->cfg.max_outbox) {
				r->outbox[r->n_out++] = h->m;
			} else {
				r->dropped++;
				msg_free(&h->m);
			}
		} else {
			r->held[k++] = *h;
		}
	}
	r->n_held = k;
}

/* ---------------------------------------------------------------- log mutation */

static int
log_reserve(struct raft *r, size_t n)
{
	if (r->log_len + n <= r->log_cap)
		return 0;
	size_t cap = r->log_cap ? r->log_cap : 64;
	while (cap < r->log_len + n)
		cap *= 2;
	struct raft_entry *l = realloc(r->log, cap * sizeof(*l));
	if (!l)
		return RAFT_ENOMEM;
	r->log = l;
	r->log_cap = cap;
	return 0;
}

/* Drop entries with index >= from.  Committed entries are never truncated (3.5). */
static void
log_truncate(struct raft *r, uint64_t from)
{
	if (from > last_index(r))
		return;
	if (from <= r->commit || from <= r->snap.index)
		abort(); /* invariant: committed entries are immutable */
	for (uint64_t i = from; i <= last_index(r); i++)
		entry_free(entry_at(r, i));
	r->log_len = from - first_index(r);
	if (r->fetched_index >= from)
		r->fetched_index = from - 1;
	if (r->persisted_index >= from)
		r->persisted_index = from - 1;
	if (r->conf_index >= from)
		conf_recompute(r);
}

/* Append copies of ents (which follow last_index). */
static int
log_append(struct raft *r, const struct raft_entry *ents, size_t n)
{
	int rv = log_reserve(r, n);
	if (rv)
		return rv;
	for (size_t i = 0; i < n; i++) {
		struct raft_entry *e = &r->log[r->log_len];
		rv = entry_copy(e, &ents[i]);
		if (rv)
			return rv;
		e->index = last_index(r) + 1;
		r->log_len++;
		struct raft_conf c;
		if (e->type == RAFT_ENTRY_CONF && raft_conf_decode(e->data, e->len, &c) == 0)
			conf_apply(r, &c, e->index); /* takes effect when appended (4.1) */
	}
	return 0;
}

/* Drop entries <= index from memory (index must be in the log). */
static void
log_compact(struct raft *r, uint64_t index)
{
	uint64_t n = index - r->snap.index;
	for (uint64_t k = 0; k < n; k++)
		entry_free(&r->log[k]);
	memmove(r->log, r->log + n, (r->log_len - n) * sizeof(*r->log));
	r->log_len -= n;
}

/* ---------------------------------------------------------------- role changes */

static void
abort_transfer(struct raft *r)
{
	r->transferee = 0;
}

static void rx_reset(struct raft *r);

static void
become_follower(struct raft *r, uint64_t term, uint64_t lead)
{
	if (term != r->term) {
		r->term = term;
		r->vote = 0;
		rx_reset(r); /* a transfer from an older leader will not complete */
	}
	r->role = RAFT_FOLLOWER;
	r->lead = lead;
	r->election_elapsed = 0;
	r->heartbeat_elapsed = 0;
	abort_transfer(r);
	reset_rand_timeout(r);
}

static void
reset_votes(struct raft *r)
{
	for (unsigned i = 0; i < r->n_prs; i++)
		r->prs[i].vote = VS_NONE;
}

/* Returns +1 won, -1 lost, 0 pending. */
static int
tally(struct raft *r, uint64_t from, bool grant)
{
	struct raft_progress *pr = pr_find(r, from);
	if (pr && pr->voter && pr->vote == VS_NONE)
		pr->vote = grant ? VS_GRANT : VS_REJECT;
	unsigned g = 0, rej = 0;
	for (unsigned i = 0; i < r->n_prs; i++) {
		if (!r->prs[i].voter)
			continue;
		g += r->prs[i].vote == VS_GRANT;
		rej += r->prs[i].vote == VS_REJECT;
	}
	if (g >= quorum(r))
		return 1;
	if (rej >= quorum(r))
		return -1;
	return 0;
}

static void bcast_append(struct raft *r, bool send_empty);
static bool maybe_commit(struct raft *r);

static void
become_leader(struct raft *r)
{
	r->role = RAFT_LEADER;
	r->lead = r->id;
	r->election_elapsed = 0;
	r->heartbeat_elapsed = 0;
	abort_transfer(r);
	for (unsigned i = 0; i < r->n_prs; i++) {
		struct raft_progress *pr = &r->prs[i];
		pr->match = 0;
		pr->next = last_index(r) + 1;
		pr->state = PR_PROBE;
		pr->probe_sent = false;
		pr->active = true;
		pr_reset_infl(pr);
	}
	struct raft_progress *self = pr_find(r, r->id);
	if (self)
		self->match = r->persisted_index;
	/* A no-op of the new term lets the leader commit, and so learn the commit index (6.4). */
	struct raft_entry noop = {.term = r->term, .type = RAFT_ENTRY_NOOP};
	if (log_append(r, &noop, 1) == 0)
		bcast_append(r, true);
}

static void
send_vote_requests(struct raft *r, bool pre, bool force)
{
	for (unsigned i = 0; i < r->n_prs; i++) {
		struct raft_progress *pr = &r->prs[i];
		if (!pr->voter || pr->id == r->id)
			continue;
		struct raft_msg m = {
		    .type = pre ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE,
		    .to = pr->id,
		    .term = pre ? r->term + 1 : r->term,
		    .index = last_index(r),
		    .log_term = last_term(r),
		    .force = force,
		};
		send(r, &m);
	}
}

/* Start an election: pre-vote first when configured (9.6), unless forced by TimeoutNow. */
static void
campaign(struct raft *r, bool pre, bool force)
{
	if (!promotable(r))
		return;
	r->lead = 0;
	r->election_elapsed = 0;
	reset_rand_timeout(r);
	abort_transfer(r);
	reset_votes(r);
	rx_reset(r);
	if (pre) {
		r->role = RAFT_PRECANDIDATE;
	} else {
		r->role = RAFT_CANDIDATE;
		r->term++;
		r->vote = r->id;
	}
	if (tally(r, r->id, true) > 0) {
		if (pre)
			campaign(r, false, force);
		else
			become_leader(r);
		return;
	}
	send_vote_requests(r, pre, force);
}

int
raft_campaign(struct raft *r)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (r->role == RAFT_LEADER)
		return 0;
	if (!promotable(r))
		return RAFT_ESTATE;
	campaign(r, r->cfg.pre_vote, false);
	return 0;
}

int
raft_forget_leader(struct raft *r)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (r->role == RAFT_FOLLOWER)
		r->lead = 0;
	return 0;
}

/* ---------------------------------------------------------------- replication (leader) */

static void
infl_add(struct raft *r, struct raft_progress *pr, uint64_t last, uint64_t bytes)
{
	unsigned cap = r->cfg.max_inflight;
	unsigned k = (pr->infl_start + pr->infl_count) % cap;
	pr->infl[k] = last;
	pr->infl_sz[k] = bytes;
	pr->infl_count++;
	pr->infl_bytes += bytes;
}

static void
infl_free_to(struct raft *r, struct raft_progress *pr, uint64_t index)
{
	unsigned cap = r->cfg.max_inflight;
	while (pr->infl_count && pr->infl[pr->infl_start] <= index) {
		pr->infl_bytes -= pr->infl_sz[pr->infl_start];
		pr->infl_start = (pr->infl_start + 1) % cap;
		pr->infl_count--;
	}
}

/* REPLICATE: the window is full (messages, or bytes: one message always fits). */
static bool
infl_full(const struct raft *r, const struct raft_progress *pr)
{
	return pr->infl_count >= r->cfg.max_inflight ||
	       (pr->infl_count && pr->infl_bytes >= r->cfg.max_inflight_bytes);
}

static void
pr_become_probe(struct raft_progress *pr)
{
	uint64_t next = pr->match + 1;
	if (pr->state == PR_SNAPSHOT && pr->pending_snap + 1 > next)
		next = pr->pending_snap + 1;
	pr->state = PR_PROBE;
	pr->next = next;
	pr->probe_sent = false;
	pr_reset_infl(pr);
}

static void
pr_become_replicate(struct raft_progress *pr)
{
	pr->state = PR_REPLICATE;
	pr->next = pr->match + 1;
	pr_reset_infl(pr);
}

/* Send the chunk of the current snapshot that starts at pr->snap_acked (stop-and-wait). */
static void
send_snap_chunk(struct raft *r, struct raft_progress *pr)
{
	uint64_t off = pr->snap_acked;
	uint64_t n = r->snap_len - off;
	if (n > r->cfg.max_msg_bytes)
		n = r->cfg.max_msg_bytes;
	struct raft_msg m = {.type = RAFT_MSG_SNAP,
			     .to = pr->id,
			     .snap = r->snap,
			     .snap_total = r->snap_len,
			     .snap_offset = off,
			     .snap_len = n};
	if (n) {
		m.snap_data = malloc(n);
		if (!m.snap_data)
			return;
		memcpy(m.snap_data, (const uint8_t *)r->snap_data + off, n);
	}
	pr->snap_ticks = 0;
	send(r, &m);
}

static void
send_snapshot(struct raft *r, struct raft_progress *pr)
{
	pr->state = PR_SNAPSHOT;
	pr->pending_snap = r->snap.index;
	pr->snap_acked = 0;
	pr_reset_infl(pr);
	send_snap_chunk(r, pr);
}

/* A follower holds snap_offset bytes of the snapshot at index: send it the next chunk. */
static void
leader_handle_snap_resp(struct raft *r, const struct raft_msg *m)
{
	struct raft_progress *pr = pr_find(r, m->from);
	if (!pr)
		return;
	pr->active = true;
	if (pr->state != PR_SNAPSHOT || m->index != pr->pending_snap)
		return; /* stale */
	if (pr->pending_snap != r->snap.index) {
		send_snapshot(r, pr); /* compacted meanwhile: send the new one */
		return;
	}
	if (m->snap_offset > r->snap_len || m->snap_offset == r->snap_len)
		return; /* the follower has it all; its APP_RESP ends the transfer */
	pr->snap_acked = m->snap_offset;
	send_snap_chunk(r, pr);
}

/* Send what the follower needs next, within its flow-control window.  True if sent. */
static bool
send_append(struct raft *r, struct raft_progress *pr, bool send_empty)
{
	if (pr->id == r->id || pr->state == PR_SNAPSHOT)
		return false;
	if (pr->state == PR_PROBE && pr->probe_sent)
		return false;
	if (pr->state == PR_REPLICATE && infl_full(r, pr))
		return false;
	uint64_t prev = pr->next - 1;
	if (prev < r->snap.index) {
		send_snapshot(r, pr);
		return true;
	}
	uint64_t last = last_index(r);
	uint32_t n = 0;
	size_t bytes = 0;
	for (uint64_t i = pr->next; i <= last && n < r->cfg.max_msg_entries; i++) {
		size_t l = entry_at(r, i)->len;
		if (n > 0 && bytes + l > r->cfg.max_msg_bytes)
			break;
		bytes += l;
		n++;
	}
	if (n == 0 && !send_empty && pr->state == PR_REPLICATE)
		return false;
	struct raft_msg m = {.type = RAFT_MSG_APP,
			     .to = pr->id,
			     .index = prev,
			     .log_term = raft_term_at(r, prev),
			     .commit = r->commit};
	if (n) {
		m.entries = calloc(n, sizeof(*m.entries));
		if (!m.entries)
			return false;
		for (uint32_t k = 0; k < n; k++) {
			if (entry_copy(&m.entries[k], entry_at(r, pr->next + k))) {
				m.n_entries = k;
				msg_free(&m);
				return false;
			}
		}
		m.n_entries = n;
	}
	if (pr->state == PR_REPLICATE) {
		if (n) {
			pr->next += n;
			infl_add(r, pr, pr->next - 1, bytes);
		}
	} else {
		pr->probe_sent = true;
	}
	send(r, &m);
	return true;
}

static void
bcast_append(struct raft *r, bool send_empty)
{
	for (unsigned i = 0; i < r->n_prs; i++)
		send_append(r, &r->prs[i], send_empty);
}

static void
send_heartbeat(struct raft *r, struct raft_progress *pr)
{
	uint64_t c = pr->match < r->commit ? pr->match : r->commit;
	struct raft_msg m = {.type = RAFT_MSG_HEARTBEAT, .to = pr->id, .commit = c};
	send(r, &m);
}

static int
cmp_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* Advance commit to the highest current-term index on a quorum (3.6.2).  True if moved. */
static bool
maybe_commit(struct raft *r)
{
	uint64_t m[RAFT_PRS_CAP];
	unsigned n = 0;
	for (unsigned i = 0; i < r->n_prs; i++) {
		struct raft_progress *pr = &r->prs[i];
		if (!pr->voter)
			continue;
		m[n++] = pr->id == r->id ? r->persisted_index : pr->match;
	}
	/* conf_apply tracks every voter, so n is the number of voters; were one ever missing,
	 * m[quorum - 1] would not be a quorum's view: never commit on a partial view. */
	if (n < quorum(r))
		return false;
	qsort(m, n, sizeof(m[0]), cmp_desc);
	uint64_t c = m[quorum(r) - 1];
	if (c <= r->commit || raft_term_at(r, c) != r->term)
		return false;
	r->commit = c;
	return true;
}

/* After commit moved at a leader: tell followers, and leave if a committed config removed us
 * (4.2.2). */
static void
leader_committed(struct raft *r)
{
	if (r->conf_index <= r->commit && !raft_conf_is_voter(&r->conf, r->id)) {
		bcast_append(r, true);
		become_follower(r, r->term, 0);
		return;
	}
	bcast_append(r, true);
}

static void
send_timeout_now(struct raft *r, uint64_t to)
{
	struct raft_msg m = {.type = RAFT_MSG_TIMEOUT_NOW, .to = to};
	send(r, &m);
}

/* The leader's own view of the conflict point given a follower hint (3.5). */
static uint64_t
find_conflict_by_term(const struct raft *r, uint64_t index, uint64_t term)
{
	if (index > last_index(r))
		index = last_index(r);
	while (index > r->snap.index) {
		uint64_t t = raft_term_at(r, index);
		if (t <= term)
			break;
		index--;
	}
	return index;
}

static void
leader_handle_app_resp(struct raft *r, const struct raft_msg *m)
{
	struct raft_progress *pr = pr_find(r, m->from);
	if (!pr)
		return;
	pr->active = true;
	if (m->reject) {
		if (pr->state == PR_REPLICATE) {
			if (m->index <= pr->match)
				return; /* stale */
			pr_become_probe(pr);
		} else if (pr->state == PR_PROBE) {
			if (pr->next - 1 != m->index)
				return; /* stale */
			uint64_t hint = m->hint_index;
			if (m->hint_term)
				hint = find_conflict_by_term(r, m->hint_index, m->hint_term);
			uint64_t next = hint + 1 < m->index ? hint + 1 : m->index;
			if (next < pr->match + 1)
				next = pr->match + 1;
			if (next < 1)
				next = 1;
			pr->next = next;
			pr->probe_sent = false;
		} else {
			return;
		}
		send_append(r, pr, true);
		return;
	}
	if (m->index > last_index(r))
		return; /* acknowledges entries we do not have: stale term confusion; ignore */
	bool updated = false;
	if (pr->match < m->index) {
		pr->match = m->index;
		updated = true;
	}
	if (pr->next < m->index + 1)
		pr->next = m->index + 1;
	if (pr->state == PR_PROBE) {
		if (updated || pr->match + 1 == pr->next)
			pr_become_replicate(pr);
		pr->probe_sent = false;
	} else if (pr->state == PR_SNAPSHOT) {
		if (pr->match >= pr->pending_snap) {
			pr_become_probe(pr);
			pr_become_replicate(pr);
		}
	} else {
		infl_free_to(r, pr, m->index);
	}
	if (updated && maybe_commit(r))
		leader_committed(r);
	if (r->role != RAFT_LEADER)
		return;
	while (send_append(r, pr, false))
		;
	if (m->from == r->transferee && pr->match == last_index(r))
		send_timeout_now(r, m->from);
}

static void
leader_handle_heartbeat_resp(struct raft *r, const struct raft_msg *m)
{
	struct raft_progress *pr = pr_find(r, m->from);
	if (!pr)
		return;
	pr->active = true;
	pr->probe_sent = false;
	if (pr->state == PR_SNAPSHOT) {
		/* A chunk (or its answer) may be lost: resend after an election timeout; the
		 * follower says where it is, or that it is done. */
		if (++pr->snap_ticks >= r->cfg.election_tick / DEF(r->cfg.heartbeat_tick, 1) + 1) {
			if (pr->pending_snap == r->snap.index && pr->snap_acked <= r->snap_len)
				send_snap_chunk(r, pr);
			else
				pr_become_probe(pr);
		}
	} else if (pr->state == PR_REPLICATE && infl_full(r, pr)) {
		/* Appends in the window may all be lost: restart from what is known to match. */
		pr_become_probe(pr);
	}
	if (pr->match < last_index(r))
		send_append(r, pr, true);
}

/* ---------------------------------------------------------------- follower side */

static void
reply(struct raft *r, const struct raft_msg *in, struct raft_msg *m)
{
	m->to = in->from;
	send(r, m);
}

static void
commit_to(struct raft *r, uint64_t c)
{
	if (c > last_index(r))
		c = last_index(r);
	if (c > r->commit)
		r->commit = c;
}

static bool
valid_entries(const struct raft_msg *m, const struct raft_config *cfg)
{
	uint64_t t = m->log_term;
	for (uint32_t i = 0; i < m->n_entries; i++) {
		const struct raft_entry *e = &m->entries[i];
		if (e->index != m->index + 1 + i || e->term < t || e->term > m->term ||
		    e->len > RAFT_ENTRY_MAX_BYTES || (e->len && !e->data) || e->type > 2)
			return false;
		t = e->term;
	}
	return true;
}

static void
handle_append(struct raft *r, const struct raft_msg *m)
{
	struct raft_msg out = {.type = RAFT_MSG_APP_RESP};
	if (r->installing) {
		/* Nothing is acknowledged before the snapshot's data is here: an append beyond our
		 * log is answered with where the log ends (a rejection never raises the leader's
		 * match), one that fits is left unanswered (the leader probes again) and not
		 * taken (the in-memory log stays the snapshot alone). */
		if (m->index > last_index(r)) {
			out.reject = 1;
			out.index = m->index;
			out.hint_index = last_index(r);
			out.hint_term = raft_term_at(r, out.hint_index);
			reply(r, m, &out);
		}
		return;
	}
	if (m->index < r->commit) {
		out.index = r->commit;
		reply(r, m, &out);
		return;
	}
	uint64_t t = raft_term_at(r, m->index);
	if (m->index <= last_index(r) && t == m->log_term) {
		uint64_t lastnew = m->index + m->n_entries;
		uint32_t k;
		for (k = 0; k < m->n_entries; k++) {
			const struct raft_entry *e = &m->entries[k];
			if (e->index > last_index(r) || raft_term_at(r, e->index) != e->term)
				break;
		}
		if (k < m->n_entries) {
			size_t room = r->cfg.max_log_entries * 2;
			if (m->entries[k].index - first_index(r) + (m->n_entries - k) > room)
				return; /* in-memory log bound: drop; the host must compact */
			log_truncate(r, m->entries[k].index);
			if (log_append(r, &m->entries[k], m->n_entries - k))
				return;
		}
		commit_to(r, m->commit < lastnew ? m->commit : lastnew);
		out.index = lastnew;
		reply(r, m, &out);
		return;
	}
	/* Reject with a hint: the last index at or below the probe whose term is <= the
	 * leader's term there, so the leader can skip a whole term per round trip (3.5). */
	uint64_t hint = find_conflict_by_term(r, m->index, m->log_term);
	out.reject = 1;
	out.index = m->index;
	out.hint_index = hint;
	out.hint_term = raft_term_at(r, hint);
	reply(r, m, &out);
}

static void
handle_heartbeat(struct raft *r, const struct raft_msg *m)
{
	commit_to(r, m->commit);
	struct raft_msg out = {.type = RAFT_MSG_HEARTBEAT_RESP};
	reply(r, m, &out);
}

static void
rx_reset(struct raft *r)
{
	free(r->rx.buf);
	memset(&r->rx, 0, sizeof(r->rx));
}

static int
handle_snapshot(struct raft *r, const struct raft_msg *m)
{
	struct raft_msg out = {.type = RAFT_MSG_APP_RESP};
	const struct raft_snap_meta *s = &m->snap;
	if (r->installing) {
		/* The one being installed: "all its bytes are here" keeps the leader from resending
		 * it; its acknowledgement comes with raft_snapshot_installed().  Another one waits:
		 * the install in progress completes first (the leader resends). */
		if (s->index == r->snap.index && s->term == r->snap.term) {
			struct raft_msg ack = {.type = RAFT_MSG_SNAP_RESP,
					       .index = s->index,
					       .snap_offset = m->snap_total};
			reply(r, m, &ack);
		}
		return 0;
	}
	if (s->index <= r->commit) {
		out.index = r->commit;
		reply(r, m, &out);
		return 0;
	}
	if (raft_term_at(r, s->index) == s->term && s->index <= last_index(r)) {
		/* We have the entry: fast-forward the commit index only. */
		commit_to(r, s->index);
		out.index = r->commit;
		reply(r, m, &out);
		return 0;
	}
	/* Assemble the chunks; answer each with how much we hold (5.1, Figure 5.3). */
	struct raft_msg ack = {.type = RAFT_MSG_SNAP_RESP, .index = s->index};
	if (m->snap_offset == 0) {
		rx_reset(r);
		if (m->snap_total) {
			r->rx.buf = malloc(m->snap_total);
			if (!r->rx.buf)
				return RAFT_ENOMEM;
		}
		r->rx.active = true;
		r->rx.from = m->from;
		r->rx.term = m->term;
		r->rx.total = m->snap_total;
		r->rx.meta = *s;
	} else if (!r->rx.active || r->rx.from != m->from || r->rx.term != m->term ||
		   r->rx.total != m->snap_total || r->rx.meta.index != s->index ||
		   r->rx.meta.term != s->term) {
		ack.snap_offset = 0; /* not the transfer we have: start over */
		reply(r, m, &ack);
		return 0;
	}
	if (m->snap_offset != r->rx.got) {
		ack.snap_offset = r->rx.got; /* duplicate or out of order: say where we are */
		reply(r, m, &ack);
		return 0;
	}
	if (m->snap_len)
		memcpy(r->rx.buf + r->rx.got, m->snap_data, m->snap_len);
	r->rx.got += m->snap_len;
	if (r->rx.got < r->rx.total) {
		ack.snap_offset = r->rx.got;
		reply(r, m, &ack);
		return 0;
	}
	void *data = r->rx.buf;
	r->rx.buf = NULL;
	rx_reset(r);
	/* Replace the whole log by the snapshot (5.1, Figure 5.3). */
	for (size_t i = 0; i < r->log_len; i++)
		entry_free(&r->log[i]);
	r->log_len = 0;
	free(r->snap_data);
	r->snap_data = data;
	r->snap_len = m->snap_total;
	r->snap = *s;
	r->snap_install = true;
	r->commit = s->index;
	if (r->cfg.defer_snapshot_ack) {
		/* the host acknowledges once it holds the data (raft_snapshot_installed) */
		r->installing = true;
		r->fetched_index = s->index;
		if (r->persisted_index >= s->index)
			r->persisted_index = s->index - 1;
		conf_apply(r, &s->conf, s->index);
		return 0;
	}
	r->fetched_index = s->index;
	if (r->persisted_index >= s->index)
		r->persisted_index = s->index - 1;
	conf_apply(r, &s->conf, s->index);
	out.index = s->index;
	reply(r, m, &out);
	return 0;
}

/* ---------------------------------------------------------------- step */

static bool
log_up_to_date(const struct raft *r, uint64_t term, uint64_t index)
{
	uint64_t lt = last_term(r);
	return term > lt || (term == lt && index >= last_index(r));
}

static bool
valid_msg(const struct raft *r, const struct raft_msg *m)
{
	if (m->type >= RAFT_MSG_TYPE_COUNT || m->to != r->id || m->from == 0 || m->from == r->id)
		return false;
	if (m->n_entries && (m->type != RAFT_MSG_APP || !m->entries))
		return false;
	if (m->type == RAFT_MSG_APP && !valid_entries(m, &r->cfg))
		return false;
	if (m->type == RAFT_MSG_SNAP &&
	    (m->snap_total > RAFT_SNAPSHOT_MAX_BYTES || m->snap_offset > m->snap_total ||
	     m->snap_len > m->snap_total - m->snap_offset || (m->snap_len && !m->snap_data) ||
	     !conf_valid(&m->snap.conf) || m->snap.index == 0 || m->snap.term == 0 ||
	     m->snap.term > m->term))
		return false;
	/* requests carry the sender's term (>= 1); a node that never saw a term may answer 0 */
	bool response = m->type == RAFT_MSG_APP_RESP || m->type == RAFT_MSG_SNAP_RESP ||
			m->type == RAFT_MSG_VOTE_RESP || m->type == RAFT_MSG_PREVOTE_RESP ||
			m->type == RAFT_MSG_HEARTBEAT_RESP;
	if (m->term == 0 && !response)
		return false;
	return true;
}

static void
handle_vote(struct raft *r, const struct raft_msg *m)
{
	bool pre = m->type == RAFT_MSG_PREVOTE;
	/* a node installing a snapshot's data holds no state it could vouch for */
	bool can = !r->installing && (r->vote == m->from || (r->vote == 0 && r->lead == 0) ||
				      (pre && m->term > r->term));
	struct raft_msg out = {.type = pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP};
	if (can && log_up_to_date(r, m->log_term, m->index)) {
		out.term = m->term;
		if (!pre) {
			r->vote = m->from;
			r->election_elapsed = 0;
		}
	} else {
		out.term = r->term;
		out.reject = 1;
	}
	reply(r, m, &out);
}

int
raft_step(struct raft *r, const struct raft_msg *m)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (!valid_msg(r, m))
		return RAFT_EINVAL;

	bool vote_req = m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE;
	if (m->term > r->term) {
		if (vote_req && !m->force && r->cfg.check_quorum && r->lead != 0 &&
		    r->election_elapsed < r->cfg.election_tick)
			return 0; /* we have a live leader: ignore the disruption (4.2.3) */
		if (m->type == RAFT_MSG_PREVOTE) {
			/* pre-vote never changes our term */
		} else if (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject) {
			/* granted pre-votes carry the prospective term */
		} else if (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT ||
			   m->type == RAFT_MSG_SNAP) {
			become_follower(r, m->term, m->from);
		} else {
			become_follower(r, m->term, 0);
		}
	} else if (m->term < r->term) {
		if ((r->cfg.check_quorum || r->cfg.pre_vote || !promotable(r)) &&
		    (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT)) {
			/* A stale leader (e.g. after a partition) learns our term and steps down.
			 * Without pre-vote and check-quorum etcd ignores it, counting on this node
			 * to campaign at its term; one that may not campaign (its log says it is
			 * no voter: removed, and added back by entries it lacks) then stayed
			 * behind a leader it ignored for ever (tests/sim, raft_sim --seed
			 * 7000006370 --nodes 3 --prevote 0 --check-quorum 0). */
			struct raft_msg out = {.type = RAFT_MSG_APP_RESP};
			reply(r, m, &out);
		} else if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_VOTE) {
			/* Reject with our term so that the candidate updates itself (Figure 3.1).
			 * etcd ignores a stale vote request, but a candidate that we never contact
			 * (our configuration is older than its and leaves it out) would then never
			 * learn our term: without pre-vote, stale members campaigning at ever
			 * higher terms kept it below them for ever (tests/sim, seed 412386). */
			struct raft_msg out = {.type = m->type == RAFT_MSG_PREVOTE
							   ? RAFT_MSG_PREVOTE_RESP
							   : RAFT_MSG_VOTE_RESP,
					       .reject = 1};
			reply(r, m, &out);
		}
		return 0;
	}

	if (vote_req) {
		handle_vote(r, m);
		return 0;
	}

	switch (r->role) {
	case RAFT_LEADER:
		switch (m->type) {
		case RAFT_MSG_APP_RESP:
			leader_handle_app_resp(r, m);
			break;
		case RAFT_MSG_HEARTBEAT_RESP:
			leader_handle_heartbeat_resp(r, m);
			break;
		case RAFT_MSG_SNAP_RESP:
			leader_handle_snap_resp(r, m);
			break;
		default:
			break;
		}
		return 0;
	case RAFT_PRECANDIDATE:
	case RAFT_CANDIDATE: {
		bool pre = r->role == RAFT_PRECANDIDATE;
		if (m->type == RAFT_MSG_APP || m->type == RAFT_MSG_HEARTBEAT ||
		    m->type == RAFT_MSG_SNAP) {
			become_follower(r, m->term, m->from);
			break; /* handled as a follower below */
		}
		if ((pre && m->type == RAFT_MSG_PREVOTE_RESP) ||
		    (!pre && m->type == RAFT_MSG_VOTE_RESP)) {
			int res = tally(r, m->from, !m->reject);
			if (res > 0) {
				if (pre)
					campaign(r, false, false);
				else
					become_leader(r);
			} else if (res < 0) {
				become_follower(r, r->term, 0);
			}
		}
		return 0;
	}
	case RAFT_FOLLOWER:
		break;
	}

	/* follower */
	switch (m->type) {
	case RAFT_MSG_APP:
		r->election_elapsed = 0;
		r->lead = m->from;
		handle_append(r, m);
		break;
	case RAFT_MSG_HEARTBEAT:
		r->election_elapsed = 0;
		r->lead = m->from;
		handle_heartbeat(r, m);
		break;
	case RAFT_MSG_SNAP:
		r->election_elapsed = 0;
		r->lead = m->from;
		return handle_snapshot(r, m);
	case RAFT_MSG_TIMEOUT_NOW:
		/* Leadership transfer: skip pre-vote and the lease (3.10). */
		if (promotable(r))
			campaign(r, false, true);
		break;
	default:
		break;
	}
	return 0;
}

/* ---------------------------------------------------------------- tick */

static bool
quorum_active(struct raft *r)
{
	unsigned n = 0;
	for (unsigned i = 0; i < r->n_prs; i++) {
		struct raft_progress *pr = &r->prs[i];
		if (pr->voter && (pr->id == r->id || pr->active))
			n++;
		if (pr->id != r->id)
			pr->active = false;
	}
	return n >= quorum(r);
}

void
raft_tick(struct raft *r)
{
	if (r->ready_out)
		return;
	if (r->role == RAFT_LEADER) {
		r->heartbeat_elapsed++;
		r->election_elapsed++;
		if (r->election_elapsed >= r->cfg.election_tick) {
			r->election_elapsed = 0;
			if (r->cfg.check_quorum && !quorum_active(r)) {
				/* Cannot reach a majority: stop serving (6.2, 4.2.3). */
				become_follower(r, r->term, 0);
				return;
			}
			if (r->transferee)
				abort_transfer(r); /* took longer than an election timeout (3.10) */
		}
		if (r->heartbeat_elapsed >= r->cfg.heartbeat_tick) {
			r->heartbeat_elapsed = 0;
			for (unsigned i = 0; i < r->n_prs; i++)
				if (r->prs[i].id != r->id)
					send_heartbeat(r, &r->prs[i]);
		}
		return;
	}
	/* A node that cannot campaign (a learner, or out of its latest configuration) keeps
	 * counting, saturated, as etcd's tickElection does: an election timeout after its
	 * leader's last message it answers vote requests again (the check-quorum guard in
	 * raft_step).  Restarting the count at each randomized timeout, as it did, kept it
	 * ignoring most of them for ever after its leader was gone; a voter the others count on
	 * that missed its own re-add then blocked every election (tests/sim, seed 213904). */
	if (r->election_elapsed < r->rand_timeout)
		r->election_elapsed++;
	if (r->election_elapsed >= r->rand_timeout && promotable(r)) {
		r->election_elapsed = 0;
		campaign(r, r->cfg.pre_vote, false);
	}
}

/* ---------------------------------------------------------------- proposals */

static int
leader_append(struct raft *r, uint8_t type, const void *data, size_t len, uint64_t *index,
	      uint64_t *term)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (r->role != RAFT_LEADER)
		return RAFT_ENOTLEADER;
	if (r->transferee)
		return RAFT_ETRANSFER;
	if (len > RAFT_ENTRY_MAX_BYTES)
		return RAFT_ETOOBIG;
	/* back-pressure: bounded uncommitted and unapplied entries, bounded in-memory log */
	if (last_index(r) - r->commit >= r->cfg.max_uncommitted ||
	    last_index(r) - r->applied >= 2 * (uint64_t)r->cfg.max_uncommitted ||
	    r->log_len >= r->cfg.max_log_entries)
		return RAFT_EFULL;
	struct raft_entry e = {
	    .term = r->term, .type = type, .len = (uint32_t)len, .data = (void *)data};
	int rv = log_append(r, &e, 1);
	if (rv)
		return rv;
	if (index)
		*index = last_index(r);
	if (term)
		*term = r->term;
	bcast_append(r, false);
	return 0;
}

int
raft_propose(struct raft *r, const void *data, size_t len, uint64_t *index, uint64_t *term)
{
	return leader_append(r, RAFT_ENTRY_NORMAL, data, len, index, term);
}

static void
conf_remove(uint64_t *ids, uint32_t *n, uint64_t id)
{
	for (uint32_t i = 0; i < *n; i++) {
		if (ids[i] == id) {
			ids[i] = ids[--*n];
			return;
		}
	}
}

int
raft_propose_conf(struct raft *r, enum raft_conf_op op, uint64_t id, uint64_t *index,
		  uint64_t *term)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (r->role != RAFT_LEADER)
		return RAFT_ENOTLEADER;
	if (id == 0)
		return RAFT_EINVAL;
	/* One change at a time, and only once this term has a committed entry: otherwise a
	 * change from an earlier term may still be in flight (4.1; Ongaro, raft-dev 2015). */
	if (r->conf_index > r->commit || raft_term_at(r, r->commit) != r->term)
		return RAFT_ECONFPENDING;
	struct raft_conf c = r->conf;
	bool voter = raft_conf_is_voter(&c, id), learner = conf_is_learner(&c, id);
	switch (op) {
	case RAFT_CONF_ADD_VOTER:
		if (voter)
			return RAFT_EINVAL;
		if (learner)
			conf_remove(c.learners, &c.n_learners, id);
		if (c.n_voters + c.n_learners >= RAFT_MAX_NODES)
			return RAFT_EFULL;
		c.voters[c.n_voters++] = id;
		break;
	case RAFT_CONF_ADD_LEARNER:
		if (voter || learner)
			return RAFT_EINVAL;
		if (c.n_voters + c.n_learners >= RAFT_MAX_NODES)
			return RAFT_EFULL;
		c.learners[c.n_learners++] = id;
		break;
	case RAFT_CONF_REMOVE:
		if (!voter && !learner)
			return RAFT_EINVAL;
		if (voter && c.n_voters == 1)
			return RAFT_EINVAL;
		conf_remove(c.voters, &c.n_voters, id);
		conf_remove(c.learners, &c.n_learners, id);
		break;
	default:
		return RAFT_EINVAL;
	}
	uint8_t buf[16 + 8 * RAFT_MAX_NODES];
	raft_conf_encode(&c, buf);
	return leader_append(r, RAFT_ENTRY_CONF, buf, raft_conf_encoded_len(&c), index, term);
}

int
raft_transfer_leader(struct raft *r, uint64_t target)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (r->role != RAFT_LEADER)
		return RAFT_ENOTLEADER;
	if (target == r->id || !raft_conf_is_voter(&r->conf, target))
		return RAFT_EINVAL;
	if (r->transferee == target)
		return 0;
	r->transferee = target;
	r->election_elapsed = 0; /* the transfer times out after one election timeout */
	struct raft_progress *pr = pr_find(r, target);
	if (!pr)
		return RAFT_EINVAL;
	if (pr->match == last_index(r))
		send_timeout_now(r, target);
	else
		send_append(r, pr, true);
	return 0;
}

/* ---------------------------------------------------------------- ready */

static void after_persist(struct raft *r);

int
raft_ready_get(struct raft *r, struct raft_ready *rd)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	memset(rd, 0, sizeof(*rd));
	struct raft_hard_state hs = {r->term, r->vote, r->commit};
	bool hs_changed = memcmp(&hs, &r->fetched_hs, sizeof(hs)) != 0;
	bool ents = r->fetched_index < last_index(r);
	if ((hs_changed || ents || r->snap_install) &&
	    r->pend_count < RAFT_MAX_UNPERSISTED_READIES) {
		rd->need_persist = true;
		rd->seq = r->next_seq++;
		if (hs.term != r->fetched_hs.term || hs.vote != r->fetched_hs.vote)
			r->hs_fetch_seq = rd->seq;
		rd->hs_changed = hs_changed;
		rd->hs = hs;
		if (r->snap_install) {
			rd->snap = &r->snap;
			rd->snap_data = r->snap_data;
			rd->snap_len = r->snap_len;
			r->snap_install = false;
			r->snap_unapplied = true;
		}
		if (ents) {
			rd->entries = entry_at(r, r->fetched_index + 1);
			rd->n_entries = last_index(r) - r->fetched_index;
		}
		struct raft_pending *p =
		    &r->pend[(r->pend_start + r->pend_count++) % RAFT_MAX_UNPERSISTED_READIES];
		p->seq = rd->seq;
		p->index = last_index(r);
		p->term = last_term(r);
		p->hs = hs;
		r->fetched_hs = hs;
		r->fetched_index = last_index(r);
		r->last_fetched_seq = rd->seq;
	}
	uint64_t from = (r->snap_unapplied ? r->snap.index : r->applied) + 1;
	if (!r->snap_install) { /* else a snapshot waits for a free persist slot */
		/* Only entries durable here too: a host whose state machine is durable never
		 * gets ahead of its own log (see raft_set_applied). */
		uint64_t to = r->commit < r->persisted_index ? r->commit : r->persisted_index;
		if (to >= from + r->cfg.max_apply_batch)
			to = from + r->cfg.max_apply_batch - 1;
		if (to >= from) {
			rd->committed = entry_at(r, from);
			rd->n_committed = to - from + 1;
		}
	}
	rd->msgs = r->outbox;
	rd->n_msgs = r->n_out;
	rd->role = r->role;
	rd->lead = r->lead;
	rd->term = r->term;
	if (!rd->need_persist && !rd->n_committed && !rd->n_msgs)
		return 0;
	r->ready_out = true;
	return 1;
}

void
raft_advance(struct raft *r, struct raft_ready *rd)
{
	if (!r->ready_out)
		return;
	for (size_t i = 0; i < rd->n_msgs; i++)
		msg_free(&r->outbox[i]);
	/* messages are only added while no ready is out */
	r->n_out = 0;
	if (rd->snap) {
		r->snap_unapplied = false;
		if (r->applied < rd->snap->index)
			r->applied = rd->snap->index;
	}
	if (rd->n_committed)
		r->applied = rd->committed[rd->n_committed - 1].index;
	r->ready_out = false;
	memset(rd, 0, sizeof(*rd));
	if (r->persist_deferred)
		after_persist(r);
}

void
raft_persisted(struct raft *r, uint64_t seq)
{
	if (seq <= r->persisted_seq || seq >= r->next_seq)
		return; /* old news, or a write the core never asked for */
	while (r->pend_count && r->pend[r->pend_start].seq <= seq) {
		struct raft_pending *p = &r->pend[r->pend_start];
		r->persisted_hs = p->hs;
		if (p->index > r->persisted_index && p->index <= last_index(r) &&
		    raft_term_at(r, p->index) == p->term)
			r->persisted_index = p->index;
		r->pend_start = (r->pend_start + 1) % RAFT_MAX_UNPERSISTED_READIES;
		r->pend_count--;
	}
	r->persisted_seq = seq;
	if (r->ready_out) {
		r->persist_deferred = true; /* finish in raft_advance */
		return;
	}
	after_persist(r);
}

static void
after_persist(struct raft *r)
{
	r->persist_deferred = false;
	release_held(r);
	if (r->role == RAFT_LEADER) {
		struct raft_progress *self = pr_find(r, r->id);
		if (self)
			self->match = r->persisted_index;
		if (maybe_commit(r))
			leader_committed(r);
	}
}

/* ---------------------------------------------------------------- snapshots */

int
raft_compact(struct raft *r, uint64_t index, const void *data, size_t len)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (index <= r->snap.index)
		return 0;
	/* The snapshot must not get ahead of the durable log and hard state: its term must
	 * never be newer than the durable term. */
	if (index > r->applied || index > r->persisted_index || r->snap_unapplied ||
	    index > last_index(r))
		return RAFT_EINVAL;
	if (len > RAFT_SNAPSHOT_MAX_BYTES)
		return RAFT_ETOOBIG;
	void *copy = NULL;
	if (len) {
		copy = malloc(len);
		if (!copy)
			return RAFT_ENOMEM;
		memcpy(copy, data, len);
	}
	/* The configuration as of index: the last config entry at or before it. */
	struct raft_conf c = r->snap.conf;
	for (uint64_t i = index; i > r->snap.index; i--) {
		struct raft_entry *e = entry_at(r, i);
		if (e->type == RAFT_ENTRY_CONF && raft_conf_decode(e->data, e->len, &c) == 0)
			break;
	}
	uint64_t term = raft_term_at(r, index);
	log_compact(r, index);
	r->snap.index = index;
	r->snap.term = term;
	r->snap.conf = c;
	free(r->snap_data);
	r->snap_data = copy;
	r->snap_len = len;
	if (r->fetched_index < index)
		r->fetched_index = index;
	return 0;
}

void
raft_snap_meta(const struct raft *r, struct raft_snap_meta *meta)
{
	*meta = r->snap;
}

/* ---------------------------------------------------------------- lifecycle */

int
raft_new(const struct raft_config *cfg, struct raft **out)
{
	if (!cfg || cfg->id == 0)
		return RAFT_EINVAL;
	struct raft *r = calloc(1, sizeof(*r));
	if (!r)
		return RAFT_ENOMEM;
	r->cfg = *cfg;
	r->cfg.election_tick = DEF(cfg->election_tick, 10);
	r->cfg.heartbeat_tick = DEF(cfg->heartbeat_tick, 1);
	r->cfg.max_inflight = DEF(cfg->max_inflight, 64);
	if (r->cfg.max_inflight > RAFT_MAX_INFLIGHT) {
		free(r);
		return RAFT_EINVAL;
	}
	r->cfg.max_inflight_bytes = DEF(cfg->max_inflight_bytes, (size_t)16 << 20);
	r->cfg.max_msg_entries = DEF(cfg->max_msg_entries, 64);
	r->cfg.max_msg_bytes = DEF(cfg->max_msg_bytes, 1u << 20);
	r->cfg.max_outbox = DEF(cfg->max_outbox, 1024);
	r->cfg.max_uncommitted = DEF(cfg->max_uncommitted, 4096);
	r->cfg.max_log_entries = DEF(cfg->max_log_entries, 65536);
	r->cfg.max_apply_batch = DEF(cfg->max_apply_batch, 256);
	r->id = cfg->id;
	r->rng = cfg->rng_seed;
	r->next_seq = 1;
	r->outbox = calloc(r->cfg.max_outbox, sizeof(*r->outbox));
	r->held = calloc(r->cfg.max_outbox, sizeof(*r->held));
	r->infl_pool =
	    calloc((size_t)RAFT_PRS_CAP * 2 * r->cfg.max_inflight, sizeof(*r->infl_pool));
	r->infl_free = (uint32_t)((1ull << RAFT_PRS_CAP) - 1);
	if (!r->outbox || !r->held || !r->infl_pool) {
		raft_free(r);
		return RAFT_ENOMEM;
	}
	reset_rand_timeout(r);
	*out = r;
	return 0;
}

void
raft_free(struct raft *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->log_len; i++)
		entry_free(&r->log[i]);
	free(r->log);
	for (unsigned i = 0; i < r->n_out; i++)
		msg_free(&r->outbox[i]);
	for (unsigned i = 0; i < r->n_held; i++)
		msg_free(&r->held[i].m);
	free(r->outbox);
	free(r->held);
	free(r->infl_pool);
	free(r->snap_data);
	free(r->rx.buf);
	free(r);
}

int
raft_restore(struct raft *r, const struct raft_hard_state *hs, const struct raft_snap_meta *snap,
	     const void *snap_data, size_t snap_len, const struct raft_entry *ents, size_t n)
{
	if (r->loaded)
		return RAFT_ESTATE;
	if (!conf_valid(&snap->conf) || snap_len > RAFT_SNAPSHOT_MAX_BYTES)
		return RAFT_EINVAL;
	r->loaded = true;
	for (size_t i = 0; i < n; i++)
		if (ents[i].index != snap->index + 1 + i || ents[i].len > RAFT_ENTRY_MAX_BYTES)
			return RAFT_EINVAL;
	r->snap = *snap;
	if (snap_len) {
		r->snap_data = malloc(snap_len);
		if (!r->snap_data)
			return RAFT_ENOMEM;
		memcpy(r->snap_data, snap_data, snap_len);
		r->snap_len = snap_len;
	}
	conf_apply(r, &snap->conf, snap->index);
	int rv = log_append(r, ents, n);
	if (rv)
		return rv;
	r->term = hs->term;
	r->vote = hs->vote;
	r->commit = hs->commit;
	if (r->commit < snap->index)
		r->commit = snap->index;
	if (r->commit > last_index(r))
		r->commit = last_index(r);
	r->applied = snap->index;
	r->fetched_index = r->persisted_index = last_index(r);
	r->fetched_hs = r->persisted_hs = (struct raft_hard_state){r->term, r->vote, r->commit};
	r->role = RAFT_FOLLOWER;
	r->lead = 0;
	return 0;
}

void
raft_status(const struct raft *r, struct raft_status *st)
{
	memset(st, 0, sizeof(*st));
	st->id = r->id;
	st->role = r->role;
	st->lead = r->lead;
	st->term = r->term;
	st->vote = r->vote;
	st->commit = r->commit;
	st->applied = r->applied;
	st->first_index = first_index(r);
	st->last_index = last_index(r);
	st->persisted_index = r->persisted_index;
	st->snap_index = r->snap.index;
	st->snap_term = r->snap.term;
	st->transferee = r->transferee;
	st->dropped_msgs = r->dropped;
	st->conf = r->conf;
	if (r->role != RAFT_LEADER)
		return;
	for (unsigned i = 0; i < r->n_prs && i < RAFT_MAX_NODES; i++) {
		const struct raft_progress *pr = &r->prs[i];
		struct raft_peer_status *p = &st->peers[st->n_peers++];
		p->id = pr->id;
		p->voter = pr->voter;
		p->active = pr->id == r->id || pr->active;
		p->state = (uint8_t)pr->state;
		p->match = pr->id == r->id ? r->persisted_index : pr->match;
		p->next = pr->next;
		p->pending_snap = pr->state == PR_SNAPSHOT ? pr->pending_snap : 0;
	}
}

int
raft_snapshot_installed(struct raft *r)
{
	if (r->ready_out)
		return RAFT_ESTATE;
	if (!r->installing)
		return 0;
	r->installing = false;
	if (r->lead && r->lead != r->id) {
		/* the acknowledgement withheld since the snapshot arrived (to the current leader:
		 * it probes from there) */
		struct raft_msg out = {
		    .type = RAFT_MSG_APP_RESP, .to = r->lead, .index = r->snap.index};
		send(r, &out);
	}
	return 0;
}

int
raft_set_installing(struct raft *r)
{
	if (r->ready_out || !r->cfg.defer_snapshot_ack || r->snap.index == 0 ||
	    r->role == RAFT_LEADER)
		return RAFT_ESTATE;
	r->installing = true;
	return 0;
}

bool
raft_installing(const struct raft *r)
{
	return r->installing;
}

int
raft_set_applied(struct raft *r, uint64_t index)
{
	if (r->ready_out || r->snap_install || r->snap_unapplied)
		return RAFT_ESTATE;
	if (index < r->applied || index > last_index(r))
		return RAFT_EINVAL;
	/* The host applied only committed, locally durable entries: they are in our log, and the
	 * durable commit index may just lag behind them. */
	r->applied = index;
	if (r->commit < index)
		r->commit = index;
	return 0;
}

int
raft_bootstrap(struct raft *r, const struct raft_conf *conf)
{
	if (!conf_valid(conf) || conf->n_voters == 0)
		return RAFT_EINVAL;
	struct raft_snap_meta empty = {0};
	struct raft_hard_state hs0 = {0};
	int rv = raft_restore(r, &hs0, &empty, NULL, 0, NULL, 0);
	if (rv)
		return rv;
	uint8_t buf[16 + 8 * RAFT_MAX_NODES];
	raft_conf_encode(conf, buf);
	struct raft_entry e = {.term = 1,
			       .type = RAFT_ENTRY_CONF,
			       .len = (uint32_t)raft_conf_encoded_len(conf),
			       .data = buf};
	rv = log_append(r, &e, 1);
	if (rv)
		return rv;
	r->term = 1;
	r->commit = 1;
	return 0;
}
