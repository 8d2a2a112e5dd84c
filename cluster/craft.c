/*
 * craft.c - the replicated host's pure part (craft.h, craft_int.h): proposals, the write path and
 * the readies of the Raft core, the inputs from the edge, opening and freeing.
 *
 * A run (craft_run, once per loop turn the edge is asked for by io.schedule):
 *   1. submits waiting proposals: raft_propose on the leader, or a PROPOSE frame (the packed,
 *      tagged Command) to the known leader, which proposes it as is;
 *   2. drains the core's readies, in order: hard state and entries go into the NEXT write batch
 *      (a suffix truncation first when entries[0] overwrites what we wrote), messages are handed
 *      to the edge at once (raft.h: the core holds back whatever needs durable state),
 *      committed entries are applied to the queue state machine, whose store writes and the
 *      applied index go into the next write's state batch, then raft_advance;
 *   3. starts the next write if none is in flight (io.write_start: the Raft state in ONE atomic
 *      write with the WAL, synced when it carries raft state; then the state batch in one
 *      atomic write without it, STORE_WRITE_NOWAL: a body is written once, in its entry's WAL
 *      record, and a crash loses only state that the log replays from its applied index).
 * Everything that arrived during the write in flight joins the next one: group commit.
 * craft_write_done() then lets the core count our own log towards commit (raft_persisted) and
 * release the acknowledgements and votes it held. The origin of a proposal completes its callback
 * when IT applies the entry carrying its tag (Command.origin_node/boot/seq): committed on a
 * majority and applied here (G1).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"

void
craft__log(struct craft *c, const char *fmt, ...)
{
	char line[CRAFT_LOG_LINE_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (c->io.log)
		c->io.log(c->io.arg, line);
	else
		cluster__log("%s", line);
}

uint64_t
craft__now(struct craft *c)
{
	return c->io.now_ms(c->io.arg);
}

void
craft__schedule(struct craft *c)
{
	if (!c->closing)
		c->io.schedule(c->io.arg);
}

/* Queues one message for member pi (the edge batches; a drop is what the network does). */
void
craft__out(struct craft *c, size_t pi, uint32_t kind, const void *data, size_t len)
{
	if (pi >= c->n_peers || pi == c->self)
		return;
	if (c->io.send(c->io.arg, c->peers[pi].name, kind, data, len))
		c->counters.raft_dropped++;
}

void
craft_count_drop(struct craft *c, unsigned n)
{
	c->counters.raft_dropped += n;
}

const char *
craft__role_name(enum raft_role r)
{
	switch (r) {
	case RAFT_LEADER:
		return "leader";
	case RAFT_CANDIDATE:
		return "candidate";
	case RAFT_PRECANDIDATE:
		return "precandidate";
	default:
		return "follower";
	}
}

static void
craft__list_push(struct craft_list *l, struct craft_prop *p)
{
	p->next = NULL;
	p->prev = l->tail;
	if (l->tail)
		l->tail->next = p;
	else
		l->head = p;
	l->tail = p;
}

static void
craft__hash_add(struct craft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	p->hnext = c->buckets[b];
	c->buckets[b] = p;
}

static struct craft_prop *
craft__hash_find(struct craft *c, uint64_t seq)
{
	size_t b = (size_t)(seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop *p = c->buckets[b]; p; p = p->hnext)
		if (p->seq == seq)
			return p;
	return NULL;
}

/* Takes p out of the pending list and the hash (the caller completes it). */
static void
craft__unlink(struct craft *c, struct craft_prop *p)
{
	size_t b = (size_t)(p->seq * 0x9e3779b97f4a7c15ull >> 20) & (c->nbuckets - 1);
	for (struct craft_prop **pp = &c->buckets[b]; *pp; pp = &(*pp)->hnext)
		if (*pp == p) {
			*pp = p->hnext;
			break;
		}
	if (c->unsent == p)
		c->unsent = p->next;
	if (p->prev)
		p->prev->next = p->next;
	else
		c->pending.head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		c->pending.tail = p->prev;
	p->next = p->prev = NULL;
	c->npending--;
	c->pending_bytes -= p->len;
}

/* Runs the callbacks of a detached list in order and frees it. */
void
craft__complete(struct craft *c, struct craft_list *done)
{
	struct craft_prop *p;
	while ((p = done->head)) {
		done->head = p->next;
		if (p->status)
			c->stats.failed_proposals++;
		p->cb(p->arg, p->status);
		free(p);
	}
	done->tail = NULL;
}

/* ---- the write path ---- */

/* Starts the next write if none is in flight: what queued up in c->next, as one atomic write. */
void
craft__start_write(struct craft *c)
{
	if (c->writing || c->retry_write || c->closing || (!c->next.len && !c->next_state.len))
		return;
	struct store_batch t = c->wbatch;
	c->wbatch = c->next;
	c->next = t;
	store_batch_clear(&c->next);
	t = c->wstate;
	c->wstate = c->next_state;
	c->next_state = t;
	store_batch_clear(&c->next_state);
	c->write_sync = c->next_sync;
	c->write_seq = c->next_seq_persist;
	c->write_bytes = c->next_bytes;
	c->write_applied = c->applied;
	c->next_sync = 0;
	c->next_seq_persist = 0;
	c->next_bytes = 0;
	c->writing = 1;
	int rv = c->io.write_start(c->io.arg, &c->wbatch, &c->wstate, c->write_sync);
	if (rv) {
		craft__log(c, "write not started error=%d", rv);
		craft_write_done(c, STORE_EIO); /* handled like a failed write, at once */
	}
}

void
craft_write_done(struct craft *c, int rv)
{
	c->writing = 0;
	if (c->write_sync)
		c->stats.fsyncs++;
	if (rv) {
		c->stats.failures++;
		craft__log(c, "write failed error=\"%s\"; retried", store_strerror(rv));
		/* the failed write applied nothing: put it back in front of what queued up since */
		if (store_batch_append(&c->wbatch, &c->next) ||
		    store_batch_append(&c->wstate, &c->next_state)) {
			craft__log(c, "write retry: out of memory; apply stopped");
			c->failed = CLUSTER_ENOMEM;
		}
		struct store_batch t = c->next;
		c->next = c->wbatch;
		c->wbatch = t;
		store_batch_clear(&c->wbatch);
		t = c->next_state;
		c->next_state = c->wstate;
		c->wstate = t;
		store_batch_clear(&c->wstate);
		c->next_sync |= c->write_sync;
		if (c->write_seq > c->next_seq_persist)
			c->next_seq_persist = c->write_seq;
		c->next_bytes += c->write_bytes;
		c->retry_write = 1;
	} else {
		store_batch_clear(&c->wbatch);
		store_batch_clear(&c->wstate);
		c->durable_applied = c->write_applied;
		/* the state machine's values up to there are in the store (its overlay lets go) */
		queue_fsm_written(c->fsm, c->durable_applied);
		if (c->write_sync) {
			c->stats.batches++;
			c->stats.bytes += c->write_bytes;
		}
		if (c->write_seq)
			raft_persisted(c->raft, c->write_seq);
	}
	if (c->closing)
		return;
	craft__maybe_snapshot(c);
	craft__schedule(c);
}

/* Adds what rd asks to persist (hard state, entries) to the next write. */
int
craft__persist(struct craft *c, const struct raft_ready *rd)
{
	int rv = 0;
	if (rd->hs_changed)
		rv = craft__hs_put(&c->next, &rd->hs);
	if (!rv && rd->n_entries) {
		uint64_t first = rd->entries[0].index;
		if (first <= c->log_last)
			rv = store_log_delete(&c->next, first, UINT64_MAX);
		for (size_t i = 0; !rv && i < rd->n_entries; i++) {
			const struct raft_entry *e = &rd->entries[i];
			struct store_entry se = {
			    .index = e->index,
			    .term = e->term,
			    .type = (enum store_entry_type)e->type,
			    .data = e->data,
			    .len = e->len,
			};
			rv = store_log_append(&c->next, &se);
			c->next_bytes += e->len;
		}
		if (!rv)
			c->log_last = rd->entries[rd->n_entries - 1].index;
	}
	if (rv)
		return cluster__store_err(rv);
	/* Entries, a term or a vote must be synced before the core acts on them; a commit index
	 * alone need not (raft relearns it from the leader; thesis 3.8 lists term, vote and log
	 * as the persistent state): it rides unsynced, made durable by the next synced write. */
	if (rd->n_entries || rd->hs.term != c->synced_term || rd->hs.vote != c->synced_vote)
		c->next_sync = 1;
	c->synced_term = rd->hs.term;
	c->synced_vote = rd->hs.vote;
	c->next_seq_persist = rd->seq;
	return 0;
}

/* Hands the messages of rd to the edge (it encodes and batches them). */
static void
craft__send(struct craft *c, const struct raft_ready *rd)
{
	uint64_t stamp = craft__now(c) + 1;
	for (size_t i = 0; i < rd->n_msgs; i++) {
		struct raft_msg m = rd->msgs[i];
		int pi = craft__peer_by_id(c, m.to);
		if (pi < 0 || (size_t)pi == c->self)
			continue;
		m.stamp = stamp;
		if (c->io.send_raft(c->io.arg, c->peers[pi].name, &m))
			c->counters.raft_dropped++;
	}
}

/* A committed configuration entry after the one tracked becomes c->conf_committed.  Called for
 * every committed entry handed out, also those not applied yet while a snapshot is fetched:
 * the configuration is the core's, not the queue's. */
static void
craft__track_conf(struct craft *c, const struct raft_entry *e)
{
	struct raft_conf conf;
	if (e->type != RAFT_ENTRY_CONF || e->index <= c->conf_index ||
	    raft_conf_decode(e->data, e->len, &conf))
		return;
	c->conf_committed = conf;
	c->conf_index = e->index;
	craft__log(c, "index=%" PRIu64 " event=conf voters=%" PRIu32 " learners=%" PRIu32, e->index,
		   conf.n_voters, conf.n_learners);
}

/* Applies one committed entry (index c->applied + 1) and moves the proposal it completes to
 * done: a Peer command to the address book, every other one to the queue state machine.  Sets
 * c->failed when apply must stop. */
void
craft__apply_entry(struct craft *c, const struct raft_entry *e, struct craft_list *done)
{
	int status = 0, qrv = 0;
	craft__track_conf(c, e);
	if (c->io.apply_before)
		c->io.apply_before(c->io.arg, e);
	if (e->type == RAFT_ENTRY_NORMAL) {
		Relay__Command *cmd = relay__command__unpack(NULL, e->len, e->data);
		if (!cmd) {
			/* we and the leader validated it: memory, or damage */
			craft__log(c, "index=%" PRIu64 " apply stopped: entry does not unpack",
				   e->index);
			c->failed = CLUSTER_ENOMEM;
			return;
		}
		int rv = 0;
		if (cmd->cmd_case == RELAY__COMMAND__CMD_PEER)
			status = craft__apply_peer(c, e->index, cmd->peer);
		else if (cmd->cmd_case == RELAY__COMMAND__CMD_CLUSTER)
			status = craft__apply_cluster_id(c, e->index, cmd->cluster);
		else
			rv = queue_apply(c->fsm, e->index, cmd, &c->next_state);
		if (rv == QUEUE_ENOMEM || rv == QUEUE_ECORRUPT) {
			craft__log(c,
				   "index=%" PRIu64 " apply stopped error=\"%s\"; restart "
				   "to replay",
				   e->index, queue_strerror(rv));
			relay__command__free_unpacked(cmd, NULL);
			c->failed = cluster__queue_err(rv);
			return;
		}
		if (rv) {
			craft__log(c, "index=%" PRIu64 " apply rejected error=\"%s\"", e->index,
				   queue_strerror(rv));
			status = cluster__queue_err(rv);
		}
		qrv = rv;
		if (cmd->has_origin_node && cmd->origin_node == c->id && cmd->has_origin_boot &&
		    cmd->origin_boot == c->boot && cmd->has_origin_seq) {
			struct craft_prop *p = craft__hash_find(c, cmd->origin_seq);
			if (p) {
				craft__unlink(c, p);
				p->status = status;
				craft__list_push(done, p);
			}
		}
		relay__command__free_unpacked(cmd, NULL);
	}
	c->applied = e->index;
	c->applied_bytes += e->len;
	c->log_bytes += e->len;
	c->stats.commits++;
	if (c->io.apply_after)
		c->io.apply_after(c->io.arg, e, qrv);
}

/* Applies the committed entries of rd (those not applied before) and moves the proposals they
 * complete to done.  While a snapshot's key/values are being fetched nothing is applied: the
 * entries stay in the log and craft__fetch_finish applies them. */
static void
craft__apply(struct craft *c, const struct raft_ready *rd, struct craft_list *done)
{
	uint64_t before = c->applied;
	for (size_t i = 0; i < rd->n_committed && !c->failed; i++) {
		const struct raft_entry *e = &rd->committed[i];
		if (e->index > c->handed)
			c->handed = e->index;
		if (c->fetch.active || e->index <= c->applied) {
			/* fetching; or applied before a restart, or by a snapshot */
			if (c->fetch.active)
				craft__track_conf(c, e);
			continue;
		}
		craft__apply_entry(c, e, done);
	}
	if (c->applied != before) {
		int rv = store_applied_put(&c->next_state, c->applied);
		if (rv) {
			craft__log(c, "apply state not recorded error=\"%s\"", store_strerror(rv));
			c->failed = cluster__store_err(rv);
		}
	}
}

static void
craft__soft_state(struct craft *c, enum raft_role role, uint64_t lead, uint64_t term)
{
	if (lead != c->lead) {
		int pi = craft__peer_by_id(c, lead);
		craft__log(c, "event=leader-change term=%" PRIu64 " leader=%s role=%s", term,
			   lead == 0 ? "none"
			   : pi >= 0 ? c->peers[pi].name
				     : "unknown",
			   craft__role_name(role));
		if (lead)
			c->counters.leader_changes++;
		c->lead = lead;
		/* resubmit everything not committed: to the new leader, or proposed here */
		c->unsent = c->pending.head;
	}
	c->role = role;
	c->term = term;
}

/* Submits p: 1 when done (proposed here or forwarded), 0 when it must wait. */
static int
craft__submit(struct craft *c, struct craft_prop *p)
{
	uint64_t now = craft__now(c);
	if (c->role == RAFT_LEADER) {
		int rv = raft_propose(c->raft, p->data, p->len, NULL, NULL);
		if (rv)
			return 0;
		p->sent_ms = now;
		return 1;
	}
	if (c->lead == 0 || c->lead == c->id)
		return 0;
	int pi = craft__peer_by_id(c, c->lead);
	if (pi < 0)
		return 0;
	/* With it goes what bounds its age at the leader (craft__forward_expired): the stamp of the
	 * leader's latest message here (sent before this, by the leader's clock) and what is left
	 * of the proposal's time here.  A forward that waited in a cut link's TCP stream until
	 * after the origin answered 451 is then dropped rather than committed: the client sends
	 * that message again, and it must not also be queued.  (A leader whose messages carry no
	 * stamp, one from before this, gets the plain kind.)
	 * A full queue drops it like the network would: the retry timer sends it again. */
	if (c->pstamp[pi]) {
		uint64_t budget = p->deadline > now ? p->deadline - now : 0;
		store_u64_encode(c->pstamp[pi], p->fwd_hdr);
		store_u64_encode(budget, p->fwd_hdr + 8);
		craft__out(c, (size_t)pi, CRAFT_KIND_PROPOSE_BY, p->fwd_hdr,
			   CRAFT_FWD_HDR + p->len);
	} else {
		craft__out(c, (size_t)pi, CRAFT_KIND_PROPOSE, p->data, p->len);
	}
	c->counters.forwarded++;
	p->sent_ms = now;
	return 1;
}

static void
craft__handle_ready(struct craft *c, struct raft_ready *rd)
{
	struct craft_list done = {0};
	int installed = 0;
	if (rd->snap) {
		int rv = craft__install(c, rd);
		if (rv) {
			craft__log(c, "apply stopped: snapshot not installed; restart to retry");
			c->failed = rv;
		} else {
			installed = 1;
		}
	} else if (rd->need_persist) {
		int rv = craft__persist(c, rd);
		if (rv) {
			craft__log(c, "persist: batch error=\"%s\"; apply stopped",
				   cluster_strerror(rv));
			c->failed = rv;
		}
	}
	craft__send(c, rd);
	if (!c->failed)
		craft__apply(c, rd, &done);
	craft__soft_state(c, rd->role, rd->lead, rd->term);
	uint64_t seq = rd->seq > c->install_seq ? rd->seq : c->install_seq;
	c->install_seq = 0;
	raft_advance(c->raft, rd);
	if (installed && seq)
		raft_persisted(c->raft, seq);
	if (c->install_ack) {
		/* an install that needed no fetch counts as soon as it is durable */
		c->install_ack = 0;
		int rv = raft_snapshot_installed(c->raft);
		if (rv)
			craft__log(c, "snapshot install: ack error=\"%s\"", raft_strerror(rv));
	}
	craft__complete(c, &done);
}

void
craft_run(struct craft *c)
{
	if (c->closing)
		return;
	if (c->have_held) {
		if (c->writing)
			return; /* the write's completion schedules the next run */
		c->have_held = 0;
		craft__handle_ready(c, &c->held);
	}
	int round;
	for (round = 0; round < CRAFT_RUN_ROUNDS && !c->closing && !c->failed; round++) {
		while (c->unsent && craft__submit(c, c->unsent))
			c->unsent = c->unsent->next;
		struct raft_ready rd;
		int got = 0;
		/* while a write is in flight the next one grows; past its bound the core waits */
		while (!c->closing && !c->failed &&
		       !(c->writing && c->next.len + c->next_state.len >= CRAFT_NEXT_MAX_BYTES) &&
		       raft_ready_get(c->raft, &rd) > 0) {
			got = 1;
			if (rd.snap && c->writing) {
				c->held = rd;
				c->have_held = 1;
				return;
			}
			craft__handle_ready(c, &rd);
		}
		if (!got)
			break;
	}
	if (c->closing)
		return;
	if (round == CRAFT_RUN_ROUNDS)
		craft__schedule(c); /* more work: the next loop turn, after I/O */
	if (!c->failed) {
		struct raft_status st;
		raft_status(c->raft, &st);
		craft__soft_state(c, st.role, st.lead, st.term);
	}
	craft__start_write(c);
}

/* The member a frame came from (its last contact noted), or -1. */
static int
craft__contact(struct craft *c, const char *from)
{
	int pi = craft__peer_by_name(c, from);
	if (pi >= 0)
		c->last_contact[pi] = (int64_t)craft__now(c);
	return pi;
}

void
craft_recv_raft(struct craft *c, const char *from, const struct raft_msg *m)
{
	if (c->closing)
		return;
	int pi = craft__contact(c, from);
	if (!m || c->have_held) {
		c->counters.raft_dropped++; /* malformed, or the core is busy with a held ready */
		return;
	}
	if (c->bt.phase == CRAFT_BOOT_DISCOVER)
		return; /* empty and not yet in any cluster: nothing to vote or acknowledge with (a
			   node that then adopts the bootstrap must not have promised anything) */
	/* the sender is who its frame says: the member's Raft id as our book has it, or as the
	 * incarnation its frames carry derives it (a member whose rejoin this node's book does not
	 * show yet: it learns of it from that member's log) */
	if (pi < 0 || (m->from != c->peers[pi].id && m->from != c->pheard_id[pi])) {
		c->counters.raft_dropped++; /* claims another sender than its frame */
	} else {
		/* the latest, not the largest: a member restarted elsewhere has another clock */
		c->pstamp[pi] = m->stamp;
		if (raft_step(c->raft, m))
			c->counters.raft_dropped++;
	}
	craft__schedule(c);
}

/* Frames log a foreign cluster at most this often. */
#define CRAFT_FOREIGN_LOG_MS 10000u

void
craft_recv_stranger(struct craft *c, const char *from, uint32_t kind, const void *data, size_t len)
{
	if (c->closing || !c->auto_join || kind != CRAFT_KIND_REJOIN ||
	    craft__peer_by_name(c, from) >= 0) {
		c->counters.raft_dropped++;
		return;
	}
	craft__recv_rejoin_from(c, from, data, len);
}

int
craft_recv_env(struct craft *c, const char *from, uint64_t cluster_id, uint64_t incarnation)
{
	int pi = craft__peer_by_name(c, from);
	if (pi < 0) {
		if (cluster_id && cluster_id == c->cluster_id)
			craft__ask_book(c, from);
		/* a node asking to join knows no cluster yet (0), or was admitted and its frames
		 * outran the Peer command here (ours) */
		if (c->auto_join && (!cluster_id || cluster_id == c->cluster_id))
			return CRAFT_ENV_STRANGER;
		return -1;
	}
	if (cluster_id && c->cluster_id && cluster_id != c->cluster_id) {
		c->counters.foreign_dropped++;
		uint64_t now = craft__now(c);
		if (!c->foreign_log_ms || now - c->foreign_log_ms >= CRAFT_FOREIGN_LOG_MS) {
			c->foreign_log_ms = now;
			craft__log(c,
				   "event=foreign-cluster from=%s cluster=%016" PRIx64
				   " ours=%016" PRIx64 ": frames dropped (dropped so far: %" PRIu64
				   ")",
				   from, cluster_id, c->cluster_id, c->counters.foreign_dropped);
		}
		return -1;
	}
	craft__book_heard(c, (size_t)pi, incarnation);
	return 0;
}

void
craft_envelope(const struct craft *c, uint64_t *cluster_id, uint64_t *incarnation)
{
	*cluster_id = c->cluster_id;
	*incarnation = c->inc;
}

/* 1 when a forwarded proposal (hdr: CRAFT_FWD_HDR bytes from member pi) may have outlived
 * its origin's wait: dropped, counted, logged now and then.  Its stamp is this node's clock + 1
 * when it sent a message the origin had before it sent the forward, so now - stamp bounds the
 * forward's age from above, with no clocks compared across nodes; budget is what the origin
 * still waited.  A stamp ahead of this clock is not one of ours (a leader before a restart on
 * another host): dropped too, the origin's retry carries a fresh one. */
int
craft__forward_expired(struct craft *c, int pi, const void *hdr)
{
	uint64_t stamp = store_u64_decode(hdr);
	uint64_t budget = store_u64_decode((const unsigned char *)hdr + 8);
	uint64_t now = craft__now(c);
	if (stamp != 0 && stamp - 1 <= now && now - (stamp - 1) < budget)
		return 0;
	c->counters.forwards_expired++;
	if (!c->expired_log_ms || now - c->expired_log_ms >= CRAFT_EXPIRED_LOG_MS) {
		c->expired_log_ms = now;
		craft__log(c,
			   "event=forward-expired from=%s age_ms>=%" PRId64 " budget_ms=%" PRIu64
			   ": its origin has answered 451; dropped (so far: %" PRIu64 ")",
			   pi >= 0 ? c->peers[pi].name : "?",
			   stamp ? (int64_t)now - (int64_t)(stamp - 1) : -1, budget,
			   c->counters.forwards_expired);
	}
	return 1;
}

/* 1 when cmd, a forwarded proposal, is a lease Renew from a node out of conf (removed: it gets
 * no more entries): refused, counted, logged now and then.  Its lease must lapse so that the
 * ownership core's REMOVED verdict, which waits a lease after the last Renew of that node it saw
 * commit (ownership.h), comes at all: a removed node that keeps running renews for ever.  (A
 * Renew appended before the removal is covered by that wait.) */
int
craft__renew_refused(struct craft *c, const struct raft_conf *conf, const Relay__Command *cmd)
{
	if (cmd->cmd_case != RELAY__COMMAND__CMD_RENEW ||
	    raft_conf_is_member(conf, cmd->origin_node))
		return 0;
	c->counters.renews_refused++;
	uint64_t now = craft__now(c);
	if (!c->refused_log_ms || now - c->refused_log_ms >= CRAFT_EXPIRED_LOG_MS) {
		c->refused_log_ms = now;
		int pi = craft__peer_by_id(c, cmd->origin_node);
		craft__log(c,
			   "event=renew-refused from=%s: not in the configuration, its lease "
			   "lapses (so far: %" PRIu64 ")",
			   pi >= 0 ? c->peers[pi].name : "?", c->counters.renews_refused);
	}
	return 1;
}

/* A forwarded proposal (peer input: checked) proposed here, the leader. */
static void
craft__propose_forward(struct craft *c, const void *data, size_t len)
{
	if (c->role != RAFT_LEADER || c->have_held || c->failed || len > RAFT_ENTRY_MAX_BYTES)
		return; /* the origin retries */
	Relay__Command *cmd = relay__command__unpack(NULL, len, data);
	if (!cmd)
		return;
	int ok = cmd->has_origin_node && cmd->has_origin_boot && cmd->has_origin_seq &&
		 craft__validate(cmd) == 0;
	if (ok && cmd->cmd_case == RELAY__COMMAND__CMD_RENEW) {
		/* (the configuration is read for Renews only: every accepted message comes
		 * this way from a follower) */
		struct raft_status st;
		raft_status(c->raft, &st);
		ok = !craft__renew_refused(c, &st.conf, cmd);
	}
	relay__command__free_unpacked(cmd, NULL);
	if (ok && raft_propose(c->raft, data, len, NULL, NULL) == 0)
		craft__schedule(c);
}

void
craft_recv(struct craft *c, const char *from, uint32_t kind, const void *data, size_t len)
{
	if (c->closing)
		return;
	int pi = craft__contact(c, from);
	if (kind == CRAFT_KIND_SNAP_FETCH || kind == CRAFT_KIND_SNAP_CHUNK) {
		if (pi < 0 || (size_t)pi == c->self) {
			c->counters.raft_dropped++;
			return;
		}
		if (kind == CRAFT_KIND_SNAP_FETCH)
			craft__serve(c, (size_t)pi, data, len);
		else
			craft__fetch_chunk(c, (size_t)pi, data, len);
		return;
	}
	if (kind == CRAFT_KIND_TRANSFER) {
		if (pi >= 0)
			craft__recv_transfer(c, data, len);
		return;
	}
	if (kind == CRAFT_KIND_HELLO || kind == CRAFT_KIND_HELLO_REPLY ||
	    kind == CRAFT_KIND_REJOIN) {
		if (pi < 0 || (size_t)pi == c->self) {
			c->counters.raft_dropped++;
			return;
		}
		if (kind == CRAFT_KIND_HELLO)
			craft__recv_hello(c, (size_t)pi, data, len);
		else if (kind == CRAFT_KIND_HELLO_REPLY)
			craft__recv_hello_reply(c, (size_t)pi, data, len);
		else
			craft__recv_rejoin(c, (size_t)pi, data, len);
		return;
	}
	if (kind == CRAFT_KIND_PROPOSE_BY) {
		if (len < CRAFT_FWD_HDR) {
			c->counters.raft_dropped++;
			return;
		}
		c->counters.forwards_received++;
		if (c->role != RAFT_LEADER)
			return; /* the origin retries */
		if (craft__forward_expired(c, pi, data))
			return;
		craft__propose_forward(c, (const unsigned char *)data + CRAFT_FWD_HDR,
				       len - CRAFT_FWD_HDR);
		return;
	}
	if (kind == CRAFT_KIND_PROPOSE) {
		c->counters.forwards_received++;
		craft__propose_forward(c, data, len);
	}
}

/* A campaign due after the leader's connection closed (craft_peer_down), while no leader is
 * known. */
static void
craft__fast_campaign(struct craft *c, uint64_t now)
{
	if (!c->fast_campaign_ms || now < c->fast_campaign_ms)
		return;
	if (now > c->fast_campaign_end_ms) {
		c->fast_campaign_ms = 0;
		return;
	}
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (rs.lead != 0 || rs.role == RAFT_LEADER || rs.role == RAFT_CANDIDATE) {
		c->fast_campaign_ms = 0; /* a leader is known, or the votes are out */
		return;
	}
	c->fast_campaign_ms = now + 1; /* the next tick again, up to fast_campaign_end_ms */
	(void)raft_campaign(c->raft);
}

/*
 * Failover without the election timeout.  A follower whose connection to its leader closes
 * (the leader's process died: its kernel closed every connection at once, so every follower
 * sees it) forgets that leader (raft_forget_leader: it grants pre-votes at once instead of
 * refusing them for an election timeout under check-quorum) and the voters campaign in turn of
 * their Raft ids, the first at once, the k-th k half election timeouts later (only if no leader
 * is known by then), so that two do not split the votes.  The first one campaigns again every
 * tick, up to an election timeout, while no leader is known: its first pre-vote can reach a
 * follower before that follower saw the close.  A
 * live leader whose connection merely dropped loses nothing but, at worst, its term: pre-vote
 * and check-quorum stand as they are against a leader that the others still hear, and a host
 * that goes silent without closing anything is found by the election timeout as before.
 */
void
craft_peer_down(struct craft *c, const char *name)
{
	if (c->closing || c->failed || c->bt.phase != CRAFT_BOOT_DONE)
		return;
	int pi = craft__peer_by_name(c, name);
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (pi < 0 || (size_t)pi == c->self || rs.role != RAFT_FOLLOWER || rs.lead == 0 ||
	    craft__peer_by_id(c, rs.lead) != pi || raft_forget_leader(c->raft) != 0)
		return;
	unsigned rank = 0, voter = 0;
	for (uint32_t i = 0; i < rs.conf.n_voters; i++) {
		uint64_t v = rs.conf.voters[i];
		voter |= v == rs.id;
		rank += v != rs.lead && v != rs.id && v < rs.id;
	}
	uint64_t now = craft__now(c);
	c->counters.leader_lost++;
	craft__log(c,
		   "event=leader-lost leader=%s term=%" PRIu64 " campaign_in_ms=%" PRIu64
		   ": its connection closed; electing without waiting for the timeout",
		   name, rs.term, voter ? (uint64_t)rank * (c->election_ms / 2) : 0);
	if (!voter)
		return; /* a learner only stops vouching for the leader */
	c->fast_campaign_ms = now + (uint64_t)rank * (c->election_ms / 2);
	c->fast_campaign_end_ms = rank == 0 ? now + c->election_ms : c->fast_campaign_ms;
	if (rank == 0)
		craft__fast_campaign(c, now);
	c->io.schedule(c->io.arg);
}

void
craft_tick(struct craft *c)
{
	if (c->closing)
		return;
	if (!c->have_held)
		raft_tick(c->raft);
	if (c->retry_write && !c->writing) {
		c->retry_write = 0;
		craft__start_write(c);
	}
	/* proposals: fail the overdue, resubmit the ones whose submission may have been lost */
	uint64_t now = craft__now(c);
	craft__fast_campaign(c, now);
	craft__boot_tick(c, now);
	craft__fetch_tick(c, now);
	craft__serve_expire(c, now);
	if (!c->writing)
		craft__maybe_snapshot(c); /* one due while a view was being digested */
	struct craft_list done = {0};
	int blocked = 0;
	for (struct craft_prop *p = c->pending.head, *nx; p; p = nx) {
		nx = p->next;
		if (now >= p->deadline) {
			craft__unlink(c, p);
			p->status = CLUSTER_ETIMEDOUT;
			c->counters.timed_out++;
			craft__list_push(&done, p);
			continue;
		}
		if (p == c->unsent)
			blocked = 1; /* from here on, not submitted yet */
		/* a leader's own log holds what it proposed: it resubmits only on a leader change
		 * (craft__soft_state), never while it stays leader (duplicates without quorum) */
		if (!blocked && !c->have_held && c->role != RAFT_LEADER &&
		    now - p->sent_ms >= c->retry_ms) {
			if (craft__submit(c, p))
				c->counters.forward_retries++;
		}
	}
	craft__complete(c, &done);
	craft__reconcile(c);
	craft__schedule(c);
}

int
craft_propose(struct craft *c, const Relay__Command *cmd, cluster_propose_cb cb, void *arg,
	      uint64_t *seq)
{
	int rv;
	if (c->closing) {
		rv = CLUSTER_ECLOSED;
		goto err;
	}
	if (c->failed) {
		rv = c->failed;
		goto err;
	}
	if (craft__validate(cmd)) {
		rv = CLUSTER_EINVAL;
		goto err;
	}
	if (c->npending >= c->max_pending || c->pending_bytes >= CRAFT_PENDING_MAX_BYTES) {
		rv = CLUSTER_EBUSY;
		goto err;
	}
	Relay__Command tagged = *cmd;
	tagged.has_origin_node = tagged.has_origin_boot = tagged.has_origin_seq = 1;
	tagged.origin_node = c->id;
	tagged.origin_boot = c->boot;
	tagged.origin_seq = c->next_seq;
	size_t len = relay__command__get_packed_size(&tagged);
	if (len > RAFT_ENTRY_MAX_BYTES) {
		rv = CLUSTER_ETOOBIG;
		goto err;
	}
	struct craft_prop *p = malloc(sizeof(*p) + len);
	if (!p) {
		rv = CLUSTER_ENOMEM;
		goto err;
	}
	memset(p, 0, sizeof(*p));
	p->seq = c->next_seq++;
	if (seq)
		*seq = p->seq;
	p->cb = cb;
	p->arg = arg;
	p->deadline = craft__now(c) + c->fail_ms;
	p->len = relay__command__pack(&tagged, p->data);
	craft__list_push(&c->pending, p);
	craft__hash_add(c, p);
	c->npending++;
	c->pending_bytes += p->len;
	if (!c->unsent)
		c->unsent = p;
	c->stats.proposals++;
	craft__schedule(c);
	return 0;
err:
	c->stats.rejected++;
	return rv;
}

/* ---- open, close ---- */

int
craft_open(const struct craft_config *cfg, struct store *store, const struct craft_io *io,
	   struct craft **out)
{
	char err[256] = "";
	int rv;
	struct craft *c = calloc(1, sizeof(*c));
	if (!c)
		return CLUSTER_ENOMEM;
	c->io = *io;
	c->store = store;
	const char *self_addr = cfg->cluster_advertise && *cfg->cluster_advertise
				    ? cfg->cluster_advertise
				    : cfg->cluster_listen;
	if (cluster_peers_parse(cfg->peers, cfg->n_peers, NULL, c->peers, err, sizeof(err)) ||
	    craft__id_addr_ok(cfg->node_id, self_addr)) {
		craft__log(c, "open: %s", err[0] ? err : "node_id or cluster_listen not valid");
		free(c);
		return CLUSTER_EINVAL;
	}
	c->n_peers = cfg->n_peers;
	c->self = SIZE_MAX;
	for (size_t i = 0; i < c->n_peers; i++) {
		c->last_contact[i] = -1;
		c->plocal[i] = 1;   /* until the log says */
		c->ppending[i] = 1; /* until the member says */
		c->peers[i].id = 0;
		if (!strcmp(c->peers[i].name, cfg->node_id))
			c->self = i;
	}
	c->bt.peers_digest = craft__peers_digest(c);
	c->auto_join = cfg->auto_join;
	if (c->self == SIZE_MAX) {
		/* not among the configured peers: a node joining an existing cluster */
		c->join = 1;
		int k = craft__book_add(c, cfg->node_id, self_addr, RELAY__PEER_STATE__PEER_ACTIVE,
					1, 0, 0);
		if (k < 0) {
			craft__log(c, "open: peers: at most %u members", CLUSTER_MAX_PEERS);
			free(c);
			return CLUSTER_EINVAL;
		}
		c->self = (size_t)k;
	}
	/* this data_dir's identity, first: the Raft id derives from it */
	struct raft_hard_state hs0;
	rv = craft__hs_get(store, &hs0);
	if (rv && rv != STORE_ENOTFOUND) {
		craft__log(c, "open: raft hard state error=\"%s\"", store_strerror(rv));
		free(c);
		return cluster__store_err(rv);
	}
	if ((rv = craft__ident_load(c, rv == 0)) || (rv = craft__bootrec_load(c))) {
		free(c);
		return rv;
	}
	c->id = cluster_peer_raft_id_inc(cfg->node_id, c->inc);
	c->peers[c->self].id = c->id;
	c->pinc[c->self] = c->inc;
	c->ppending[c->self] = 0;
	c->boot = c->io.random64(c->io.arg);
	c->next_seq = 1;
	c->max_pending = cfg->max_pending ? cfg->max_pending : CLUSTER_DEFAULT_MAX_PENDING;
	c->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : CLUSTER_DEFAULT_HEARTBEAT_MS;
	unsigned election =
	    cfg->election_ms ? cfg->election_ms : CLUSTER_DEFAULT_ELECTION_TIMEOUT_MS;
	if (election < 2 * c->heartbeat_ms)
		election = 2 * c->heartbeat_ms;
	c->election_ms = election;
	c->fail_ms = cfg->fail_ms ? cfg->fail_ms : CLUSTER_DEFAULT_PROPOSE_FAIL_MS;
	c->retry_ms = cfg->retry_ms ? cfg->retry_ms : 2 * election;
	c->retain_silent_ms = (uint64_t)CRAFT_RETAIN_SILENT_ELECTIONS * election;
	c->retain_entries = cfg->retain_entries ? cfg->retain_entries : CRAFT_RETAIN_ENTRIES;
	c->snapshot_spread = cfg->snapshot_spread;
	c->snap_chunk_bytes =
	    cfg->snap_chunk_bytes ? cfg->snap_chunk_bytes : CRAFT_SNAP_CHUNK_BYTES;
	c->snapshot_entries =
	    cfg->snapshot_entries ? cfg->snapshot_entries : CLUSTER_DEFAULT_SNAPSHOT_ENTRIES;
	if (c->snapshot_entries > CLUSTER_MAX_SNAPSHOT_ENTRIES) {
		craft__log(c,
			   "snapshot_entries %u is above %u: %u used (the in-memory log holds %u)",
			   c->snapshot_entries, CLUSTER_MAX_SNAPSHOT_ENTRIES,
			   CLUSTER_MAX_SNAPSHOT_ENTRIES, CLUSTER_LOG_ENTRIES);
		c->snapshot_entries = CLUSTER_MAX_SNAPSHOT_ENTRIES;
	}
	craft__snap_draw(c);
	c->nbuckets = 1024;
	while (c->nbuckets < c->max_pending)
		c->nbuckets <<= 1;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	store_batch_init(&c->wbatch);
	store_batch_init(&c->next);
	store_batch_init(&c->wstate);
	store_batch_init(&c->next_state);
	if (!c->buckets) {
		rv = CLUSTER_ENOMEM;
		goto err_after_alloc;
	}
	if ((rv = craft__install_recover(c)))
		goto err_after_alloc;
	if ((rv = queue_fsm_new(c->store, &c->fsm))) {
		craft__log(c, "open: loading the queue error=\"%s\"", queue_strerror(rv));
		rv = cluster__queue_err(rv);
		goto err_after_alloc;
	}
	c->rcfg = (struct raft_config){
	    .id = c->id,
	    .election_tick = election / c->heartbeat_ms,
	    .heartbeat_tick = 1,
	    .pre_vote = !cfg->no_pre_vote,
	    .check_quorum = !cfg->no_check_quorum,
	    .max_msg_bytes = cfg->max_msg_bytes,
	    .max_inflight = cfg->max_inflight,
	    .max_log_entries = CLUSTER_LOG_ENTRIES,
	    .rng_seed = c->io.random64(c->io.arg),
	    .defer_snapshot_ack = true,
	};
	if ((rv = raft_new(&c->rcfg, &c->raft))) {
		rv = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EINVAL;
		goto err_after_fsm;
	}
	/* the stored address book wins over config `peers` (they only bootstrap) */
	rv = craft__book_load(c, cfg->node_id);
	if (rv == 0 && c->self == SIZE_MAX) {
		int k = craft__book_add(c, cfg->node_id, cfg->cluster_listen,
					RELAY__PEER_STATE__PEER_ACTIVE, 1, c->inc, 0);
		c->self = k < 0 ? SIZE_MAX : (size_t)k;
		if (k >= 0)
			c->peers[k].id = c->id;
	}
	if (rv == 0 && c->self == SIZE_MAX) {
		craft__log(c, "open: the stored address book is full and lacks this node");
		rv = CLUSTER_ECORRUPT;
		goto err_after_raft;
	}
	if (rv == 0) {
		craft__log(c, "open: address book from the store members=%zu", c->n_peers);
	} else if (rv != STORE_ENOTFOUND) {
		craft__log(c, "open: address book error=\"%s\"", store_strerror(rv));
		rv = cluster__store_err(rv);
		goto err_after_raft;
	}
	if ((rv = craft__load(c)))
		goto err_after_raft;
	if ((rv = craft__book_put(c, &c->next))) {
		rv = cluster__store_err(rv);
		goto err_after_raft;
	}
	{
		struct raft_status rs;
		raft_status(c->raft, &rs);
		c->conf_committed = rs.conf;
	}
	c->stats.applied_index = c->applied;
	c->handed = c->applied;
	if (c->io.state_loaded && !c->fetch.active)
		c->io.state_loaded(c->io.arg, c->applied);
	craft__book_dial_all(c);
	if (c->fetch.active)
		craft__fetch_begin(c, c->fetch.min_index, c->fetch.hint);
	craft__log(c,
		   "event=cluster-open node=%s id=%016" PRIx64 " incarnation=%016" PRIx64
		   " cluster=%016" PRIx64 " peers=%zu listen=%s",
		   cfg->node_id, c->id, c->inc, c->cluster_id, c->n_peers, cfg->cluster_listen);
	craft__schedule(c);
	*out = c;
	return 0;
err_after_raft:
	raft_free(c->raft);
err_after_fsm:
	queue_fsm_free(c->fsm);
err_after_alloc:
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	store_batch_fini(&c->wstate);
	store_batch_fini(&c->next_state);
	free(c->buckets);
	free(c);
	return rv;
}

int
craft_busy(const struct craft *c)
{
	return c->writing || c->digesting;
}

void
craft_closing(struct craft *c)
{
	c->closing = 1;
}

/* Frees what craft owns (not the store, not the pending proposals' memory: the caller). */
static void
craft__release(struct craft *c)
{
	raft_free(c->raft);
	queue_fsm_free(c->fsm);
	for (size_t i = 0; i < CRAFT_SNAP_SERVE_MAX; i++)
		if (c->serve[i].used)
			craft__serve_release(&c->serve[i]);
	craft__view_unref(c->view);
	craft__view_unref(c->prep);
	free(c->fetch.val);
	store_batch_fini(&c->wbatch);
	store_batch_fini(&c->next);
	store_batch_fini(&c->wstate);
	store_batch_fini(&c->next_state);
	free(c->buckets);
	free(c);
}

void
craft_abandon(struct craft *c)
{
	if (!c)
		return;
	for (struct craft_prop *p = c->pending.head, *nx; p; p = nx) {
		nx = p->next;
		free(p);
	}
	craft__release(c);
}

void
craft_free(struct craft *c)
{
	if (!c)
		return;
	/* the applied state reached so far, rather than replaying it at the next open */
	if ((c->next.len || c->next_state.len) && !c->failed) {
		int rv = c->next.len ? c->io.write_now(c->io.arg, &c->next, STORE_WRITE_SYNC) : 0;
		if (!rv && c->next_state.len)
			rv = c->io.write_now(c->io.arg, &c->next_state, STORE_WRITE_NOWAL);
		if (rv)
			craft__log(c, "close: last write error=\"%s\"; replayed at open",
				   store_strerror(rv));
	}
	struct craft_list all = c->pending;
	memset(&c->pending, 0, sizeof(c->pending));
	c->unsent = NULL;
	for (struct craft_prop *p = all.head; p; p = p->next)
		p->status = CLUSTER_ECLOSED;
	craft__complete(c, &all);
	craft__release(c);
}

/* ---- read-only access ---- */

struct queue_fsm *
craft_queue(struct craft *c)
{
	return c->fsm;
}

struct raft *
craft_raft(struct craft *c)
{
	return c->raft;
}

uint64_t
craft_id(const struct craft *c)
{
	return c->id;
}

uint64_t
craft_boot(const struct craft *c)
{
	return c->boot;
}

uint64_t
craft_applied(const struct craft *c)
{
	return c->applied;
}

int
craft_fetching(const struct craft *c)
{
	return c->fetch.active;
}

int
craft_failed(const struct craft *c)
{
	return c->failed;
}

void
craft_snapshot_now(struct craft *c)
{
	c->snap_tried = 0;
	c->applied_bytes = CRAFT_SNAPSHOT_LOG_BYTES;
	craft__maybe_snapshot(c);
}
