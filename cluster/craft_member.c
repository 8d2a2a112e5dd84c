/*
 * craft_member.c - membership on the replicated host (craft_int.h): the leader steers the Raft
 * configuration towards the address book one change at a time (cluster.h "Membership"), the
 * node's membership and leadership-transfer calls, stats and status.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"

void
craft__noop_cb(void *arg, int status)
{
	(void)arg;
	(void)status;
}

/* Proposes Peer{node, addr, state} on behalf of this node (cb NULL: no one waits for it),
 * expecting the member's entry as set at expect_since (craft_book.c); pending: an ACTIVE whose
 * incarnation is not known yet, else inc. */
int
craft__propose_peer_x(struct craft *c, const char *node, const char *addr, unsigned state,
		      uint64_t expect_since, uint64_t inc, int pending, int local,
		      cluster_propose_cb cb, void *arg)
{
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = (char *)node;
	p.addr = (char *)(addr ? addr : "");
	p.state = (Relay__PeerState)state;
	p.has_expect_since_index = 1;
	p.expect_since_index = expect_since;
	if (state == RELAY__PEER_STATE__PEER_ACTIVE) {
		if (pending) {
			p.has_incarnation_pending = 1;
			p.incarnation_pending = 1;
		} else {
			p.has_incarnation = 1;
			p.incarnation = inc;
		}
	}
	if (local) {
		p.has_local = 1;
		p.local = 1;
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_PEER;
	cmd.peer = &p;
	return craft_propose(c, &cmd, cb ? cb : craft__noop_cb, arg, NULL);
}

int
craft__propose_peer(struct craft *c, const char *node, const char *addr, unsigned state,
		    cluster_propose_cb cb, void *arg)
{
	return craft__propose_peer_x(c, node, addr, state, craft__member_since(c, node), 0, 1, 0,
				     cb, arg);
}

/* Proposes Peer{node, addr, ACTIVE, incarnation, local} for book slot i, a member known from
 * config or the bootstrap only: it applies only while no Peer command for that node has applied
 * (craft__apply_peer), so a publication that reaches the log after a removal does not bring the
 * member back. */
static void
craft__publish_peer(struct craft *c, size_t i)
{
	craft__propose_peer_x(c, c->peers[i].name, c->peers[i].addr, RELAY__PEER_STATE__PEER_ACTIVE,
			      0, i == c->self ? c->inc : c->pinc[i], c->ppending[i], 1, NULL, NULL);
}

static const struct raft_peer_status *
craft__progress(const struct raft_status *rs, uint64_t id)
{
	for (uint32_t k = 0; k < rs->n_peers; k++)
		if (rs->peers[k].id == id)
			return &rs->peers[k];
	return NULL;
}

/* One configuration change; 1 when one was appended (or must wait), 0 to look further. */
static int
craft__conf_change(struct craft *c, size_t i, enum raft_conf_op op, const char *what, uint64_t now)
{
	int rv = raft_propose_conf(c->raft, op, c->peers[i].id, NULL, NULL);
	if (rv == 0) {
		craft__log(c, "event=conf-change op=%s node=%s", what, c->peers[i].name);
		c->pprop_ms[i] = now;
		craft__schedule(c);
		return 1;
	}
	if (rv == RAFT_ECONFPENDING || rv == RAFT_EFULL || rv == RAFT_ETRANSFER)
		return 1; /* the next tick tries again */
	if (now - c->pprop_ms[i] >= c->retry_ms) {
		craft__log(c, "conf-change op=%s node=%s error=\"%s\"", what, c->peers[i].name,
			   raft_strerror(rv));
		c->pprop_ms[i] = now;
	}
	return 0;
}

/* The since index of node in the queue's member table (0: not in it). */
static uint64_t
craft__member_state_since(struct craft *c, const char *node)
{
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(c->fsm, mem, QUEUE_MEMBERS_MAX);
	for (size_t k = 0; k < n && k < QUEUE_MEMBERS_MAX; k++)
		if (!strcmp(mem[k].node, node))
			return mem[k].since_index;
	return 0;
}

/* event=member-remove-wait is logged at most this often */
#define CRAFT_MEMBER_WAIT_LOG_MS 5000u

/* 1 when id is the Raft id of some member of the book that is in the cluster (active or
 * leaving, incarnation known). */
static int
craft__id_in_book(const struct craft *c, uint64_t id)
{
	int i = craft__peer_by_id(c, id);
	return i >= 0 && c->pstate[i] != RELAY__PEER_STATE__PEER_LEFT;
}

/* A configuration member whose Raft id no member of the book has is a former incarnation of a
 * member that rejoined with a new one (its disk was replaced): it is taken out first, one at a
 * time, before the new incarnation is added.  Only once this leader has applied its whole
 * committed log, so that its book is not older than the configuration it reads.  1 when a
 * change was appended or must wait. */
static int
craft__remove_replaced(struct craft *c, const struct raft_status *rs, uint64_t now)
{
	if (c->applied < rs->commit || c->fetch.active)
		return 0;
	for (uint32_t k = 0; k < rs->conf.n_voters + rs->conf.n_learners; k++) {
		uint64_t id = k < rs->conf.n_voters ? rs->conf.voters[k]
						    : rs->conf.learners[k - rs->conf.n_voters];
		if (id == c->id || craft__id_in_book(c, id))
			continue;
		if (c->orphan_prop_ms && now - c->orphan_prop_ms < c->retry_ms)
			return 1;
		int rv = raft_propose_conf(c->raft, RAFT_CONF_REMOVE, id, NULL, NULL);
		if (rv == 0) {
			craft__log(c, "event=conf-change op=remove-replaced id=%016" PRIx64, id);
			c->orphan_prop_ms = now;
			craft__schedule(c);
			return 1;
		}
		if (rv == RAFT_ECONFPENDING || rv == RAFT_EFULL || rv == RAFT_ETRANSFER)
			return 1;
		craft__log(c, "conf-change op=remove-replaced id=%016" PRIx64 " error=\"%s\"", id,
			   raft_strerror(rv));
		c->orphan_prop_ms = now;
		return 1;
	}
	return 0;
}

/* A leader of a cluster bootstrapped before cluster ids existed gives it one (ClusterId). */
static void
craft__cluster_id(struct craft *c, uint64_t now)
{
	if (c->cluster_id || (c->cid_prop_ms && now - c->cid_prop_ms < c->retry_ms))
		return;
	Relay__ClusterId cl = RELAY__CLUSTER_ID__INIT;
	cl.cluster_id = c->io.random64(c->io.arg);
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_CLUSTER;
	cmd.cluster = &cl;
	craft_propose(c, &cmd, craft__noop_cb, NULL, NULL);
	c->cid_prop_ms = now;
}

/* Leader, each tick: at most one configuration change towards the book (cluster.h). */
void
craft__reconcile(struct craft *c)
{
	if (c->role != RAFT_LEADER || c->failed || c->have_held || c->closing)
		return;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (rs.role != RAFT_LEADER || rs.transferee)
		return;
	uint64_t now = craft__now(c);
	if (craft__remove_replaced(c, &rs, now))
		return;
	craft__cluster_id(c, now);
	int throttled;
	for (size_t i = 0; i < c->n_peers; i++) {
		uint64_t id = c->peers[i].id;
		if (c->ppending[i] && i != c->self)
			continue; /* added, its incarnation not announced yet: no Raft id */
		int member = raft_conf_is_member(&rs.conf, id);
		int voter = raft_conf_is_voter(&rs.conf, id);
		throttled = c->pprop_ms[i] && now - c->pprop_ms[i] < c->retry_ms;
		switch (c->pstate[i]) {
		case RELAY__PEER_STATE__PEER_ACTIVE:
			if (c->plocal[i]) {
				/* a bootstrap member known from config only: put it in the log so
				 * that nodes joining later learn its address */
				if (member && !throttled && c->peers[i].addr[0]) {
					craft__publish_peer(c, i);
					c->pprop_ms[i] = now;
				}
				break;
			}
			if (!member) {
				if (craft__conf_change(c, i, RAFT_CONF_ADD_LEARNER, "add-learner",
						       now))
					return;
			} else if (!voter) {
				const struct raft_peer_status *pr = craft__progress(&rs, id);
				if (pr && pr->state == 1 &&
				    pr->match + CRAFT_PROMOTE_LAG >= rs.commit &&
				    craft__conf_change(c, i, RAFT_CONF_ADD_VOTER, "promote", now))
					return;
			}
			break;
		case RELAY__PEER_STATE__PEER_LEAVING:
			if (member) {
				if (craft__conf_change(c, i, RAFT_CONF_REMOVE, "remove", now))
					return;
			} else if (!raft_conf_is_member(&c->conf_committed, id) && !throttled) {
				/* out of the committed configuration.  Its deliveries move when the
				 * leader's ownership core (ownership.c) sets it REMOVED: only lease
				 * + grace after that leader saw it out, since a removed node
				 * receives no more entries and may still hold a lease it cannot
				 * learn has ended. Proposing REMOVED here at once moved its domains
				 * under a live owner's attempt (tests/sim: host_sim --seed 298
				 * --nodes 3 --pauses). Once it is out of the member table, every
				 * node forgets it. */
				c->pprop_ms[i] = now;
				if (craft__member_state_since(c, c->peers[i].name)) {
					if (now - c->member_wait_log_ms >=
					    CRAFT_MEMBER_WAIT_LOG_MS) {
						craft__log(
						    c,
						    "event=member-remove-wait node=%s: out of the "
						    "configuration; its deliveries move once its "
						    "lease has lapsed",
						    c->peers[i].name);
						c->member_wait_log_ms = now;
					}
					break;
				}
				int rv = craft__propose_peer_x(c, c->peers[i].name, "",
							       RELAY__PEER_STATE__PEER_LEFT,
							       c->psince[i], 0, 0, 0, NULL, NULL);
				craft__log(c, "event=member-removed node=%s%s%s", c->peers[i].name,
					   rv ? " error=" : "", rv ? cluster_strerror(rv) : "");
			}
			break;
		default:
			break;
		}
	}
}

int
craft_member_add(struct craft *c, const char *id, const char *addr, cluster_propose_cb cb,
		 void *arg)
{
	if (craft__id_addr_ok(id, addr) || !addr || !*addr)
		return CLUSTER_EBADADDR;
	int i = craft__peer_by_name(c, id);
	if (i >= 0 && c->pstate[i] == RELAY__PEER_STATE__PEER_ACTIVE &&
	    (!c->plocal[i] || raft_conf_is_member(&c->conf_committed, c->peers[i].id)))
		return CLUSTER_EEXIST;
	if (i < 0 && c->n_peers >= CLUSTER_MAX_PEERS)
		return CLUSTER_EFULL;
	/* its incarnation: known if it is in the book already (from config), else it announces
	 * it when it asks to join (craft_boot.c), and only then is it added */
	int pending = i < 0 || c->ppending[i];
	return craft__propose_peer_x(c, id, addr, RELAY__PEER_STATE__PEER_ACTIVE,
				     craft__member_since(c, id), pending ? 0 : c->pinc[i], pending,
				     0, cb, arg);
}

int
craft_member_remove(struct craft *c, const char *id, cluster_propose_cb cb, void *arg)
{
	if (craft__id_addr_ok(id, NULL))
		return CLUSTER_EBADADDR;
	int i = craft__peer_by_name(c, id);
	if (i < 0 || c->pstate[i] == RELAY__PEER_STATE__PEER_LEFT)
		return CLUSTER_ENOMEMBER;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	if (raft_conf_is_voter(&rs.conf, c->peers[i].id) && rs.conf.n_voters == 1)
		return CLUSTER_EINVAL; /* the last voter */
	if (c->plocal[i] && !craft__member_since(c, id) && !c->ppending[i] && c->peers[i].addr[0])
		/* a bootstrap member only configs know yet: a LEAVING applies only to what the log
		 * set (craft__apply_peer), so its publication goes first, in the same order */
		craft__publish_peer(c, (size_t)i);
	return craft__propose_peer(c, id, "", RELAY__PEER_STATE__PEER_LEAVING, cb, arg);
}

/* On the leader: starts a transfer to target (NULL/"": the most caught-up other voter). */
static int
craft__transfer_here(struct craft *c, const char *target)
{
	struct raft_status rs;
	raft_status(c->raft, &rs);
	uint64_t to = 0;
	if (target && *target) {
		int ti = craft__peer_by_name(c, target);
		if (ti < 0 || !raft_conf_is_voter(&rs.conf, c->peers[ti].id))
			return CLUSTER_ENOMEMBER;
		to = c->peers[ti].id;
		if (to == c->id)
			return CLUSTER_EINVAL;
	} else {
		uint64_t best = 0;
		int best_active = -1;
		for (uint32_t k = 0; k < rs.n_peers; k++) {
			const struct raft_peer_status *p = &rs.peers[k];
			if (p->id == c->id || !p->voter)
				continue;
			if (!to || (int)p->active > best_active ||
			    ((int)p->active == best_active && p->match > best)) {
				to = p->id;
				best = p->match;
				best_active = p->active;
			}
		}
		if (!to)
			return CLUSTER_EINVAL;
	}
	int rv = raft_transfer_leader(c->raft, to);
	if (rv == RAFT_ENOTLEADER)
		return CLUSTER_ENOLEADER;
	if (rv)
		return CLUSTER_EINVAL;
	int pi = craft__peer_by_id(c, to);
	craft__log(c, "event=leader-transfer to=%s", pi >= 0 ? c->peers[pi].name : "?");
	craft__schedule(c);
	return 0;
}

int
craft_transfer_leader(struct craft *c, const char *target, const char *from_leader)
{
	if (c->closing)
		return CLUSTER_ECLOSED;
	if (target && *target && craft__peer_by_name(c, target) < 0)
		return CLUSTER_ENOMEMBER;
	if (c->lead == 0)
		return CLUSTER_ENOLEADER;
	int li = craft__peer_by_id(c, c->lead);
	if (li < 0)
		return CLUSTER_ENOLEADER;
	if (from_leader && *from_leader && strcmp(from_leader, c->peers[li].name))
		return 0; /* leadership moved already */
	if (target && *target && !strcmp(target, c->peers[li].name))
		return 0; /* already the leader */
	if (c->role == RAFT_LEADER)
		return craft__transfer_here(c, target);
	/* forward: "target\nfrom_leader" */
	char buf[2 * CLUSTER_ID_MAX + 2];
	int n = snprintf(buf, sizeof(buf), "%s\n%s", target ? target : "", c->peers[li].name);
	craft__out(c, (size_t)li, CRAFT_KIND_TRANSFER, buf, (size_t)n);
	return 0;
}

/* A forwarded transfer request (peer input: checked). */
void
craft__recv_transfer(struct craft *c, const void *data, size_t len)
{
	char buf[2 * CLUSTER_ID_MAX + 2];
	if (c->role != RAFT_LEADER || len >= sizeof(buf))
		return;
	memcpy(buf, data, len);
	buf[len] = 0;
	char *nl = strchr(buf, '\n');
	if (!nl)
		return;
	*nl = 0;
	const char *from = nl + 1;
	if (*from && strcmp(from, c->peers[c->self].name))
		return; /* meant for an earlier leader: it moved already */
	int rv = craft__transfer_here(c, buf);
	if (rv)
		craft__log(c, "leader-transfer (forwarded) to=%s error=\"%s\"", *buf ? buf : "any",
			   cluster_strerror(rv));
}

/* ---- open ---- */

/* ---- stats and status ---- */

void
craft_stats(struct craft *c, struct cluster_stats *st)
{
	*st = c->stats;
	st->applied_index = c->applied;
	st->last_index = c->log_last;
	st->pending = c->npending;
	cluster__queue_stats(c->fsm, st);
}

void
craft_status(struct craft *c, struct cluster_status *st)
{
	*st = c->counters;
	st->replicated = 1;
	struct raft_status rs;
	raft_status(c->raft, &rs);
	st->role = craft__role_name(rs.role);
	st->term = rs.term;
	st->leader_id = rs.lead;
	int li = craft__peer_by_id(c, rs.lead);
	st->leader[0] = 0;
	if (li >= 0)
		snprintf(st->leader, sizeof(st->leader), "%s", c->peers[li].name);
	st->commit_index = rs.commit;
	st->applied_index = c->applied;
	st->last_index = rs.last_index;
	st->snapshot_index = rs.snap_index;
	st->snapshot_installing = c->fetch.active;
	st->raft_dropped += rs.dropped_msgs;
	st->cluster_id = c->cluster_id;
	st->incarnation = c->inc;
	st->boot_phase = c->bt.phase == CRAFT_BOOT_DISCOVER ? "discovering"
			 : c->bt.phase == CRAFT_BOOT_REJOIN ? "rejoining"
							    : "";
	uint64_t now = craft__now(c);
	st->n_peers = (unsigned)c->n_peers;
	for (size_t i = 0; i < c->n_peers; i++) {
		struct cluster_peer_status *p = &st->peers[i];
		memset(p, 0, sizeof(*p));
		snprintf(p->name, sizeof(p->name), "%s", c->peers[i].name);
		snprintf(p->addr, sizeof(p->addr), "%s", c->peers[i].addr);
		p->id = c->peers[i].id;
		p->incarnation = i == c->self ? c->inc : c->pinc[i];
		p->incarnation_known = i == c->self || !c->ppending[i];
		uint64_t prev_id =
		    c->pprev[i] ? cluster_peer_raft_id_inc(c->peers[i].name, c->pprev[i]) : 0;
		if (prev_id && raft_conf_is_member(&rs.conf, prev_id))
			p->replaced_incarnation = c->pprev[i];
		p->in_conf = raft_conf_is_member(&c->conf_committed, p->id) ||
			     (prev_id && raft_conf_is_member(&c->conf_committed, prev_id));
		if (c->pstate[i] == RELAY__PEER_STATE__PEER_LEFT)
			p->membership = "removed";
		else if (c->pstate[i] == RELAY__PEER_STATE__PEER_LEAVING)
			p->membership = "leaving";
		else if (raft_conf_is_voter(&rs.conf, p->id))
			p->membership = "voter";
		else if (raft_conf_is_member(&rs.conf, p->id))
			p->membership = "learner";
		else
			p->membership = "joining";
		p->self = i == c->self;
		if (p->self) {
			p->connected = 1;
			p->last_contact_ms = 0;
		} else {
			p->connected = c->io.peer_connected(c->io.arg, c->peers[i].name);
			p->last_contact_ms = c->last_contact[i] < 0
						 ? -1
						 : (int64_t)(now - (uint64_t)c->last_contact[i]);
		}
		for (uint32_t k = 0; k < rs.n_peers; k++)
			if (rs.peers[k].id == p->id) {
				p->match = rs.peers[k].match;
				p->lag = rs.last_index > p->match ? rs.last_index - p->match : 0;
			}
	}
}
