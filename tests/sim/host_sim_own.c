/*
 * host_sim_own.c - delivery ownership in host_sim; see host_sim_own.h.
 *
 * Every node runs the real lease core (cluster/ownership.c) on ITS OWN monotonic clock (the
 * drifting clock its craft timers run on), hosted as node/delivery/delivery_own.c hosts it:
 * every HSO_TICK_MS of that clock it proposes itself LIVE when it is not (own_self_live_due),
 * its Renew through its own craft_propose (own_renew_sent / own_renew_done from the proposal's
 * callback: the lease runs from the proposal once it is applied here), DRAINED when draining
 * (own_drain_tick), and as leader the DOWN / LIVE / REMOVED verdicts of own_leader_tick over
 * the applied member table and the address book of craft_status (as relayd passes
 * cluster_status's peers).  A crash loses the core's memory (lease, renew in flight).
 *
 * Attempts: at its tick, a node that may act (own_may_act) starts attempts, up to HSO_ATT, on
 * items (message, domain) its applied state gives it (queue_fsm_due_owned) when own_may_start
 * passes with the owner and epoch of queue_fsm_domain_owner (as own_prune_jobs checks).  An
 * attempt sends its data for a random time of the node's clock (mostly short, sometimes a slow
 * destination: seconds, several leases), then asks the gate relayd asks before the final "."
 * (dlv__own_may_commit: own_may_commit with the owner, epoch and member state read from the
 * applied state NOW, against the epoch the attempt started under).  Refused: the attempt is
 * abandoned (the connection closed), no Outcome, the recipients stay queued.  Passed: the node
 * is in the committing window of that domain until the end of data reaches the destination
 * (1 to margin/2 units of true time later: the margin is what covers that transit); then it
 * proposes Outcome{DELIVERED, epoch} through craft_propose, as delivery_outcome does.  A crash
 * in the window does not stop the end of data already sent: the window runs to its end (the
 * destination delivers), only the Outcome is lost (the recipient is delivered again later: at
 * least once).
 *
 * Check (true time): whenever a node enters a committing window of a domain, no OTHER node's
 * window of that domain is still open.  A failure goes through env->fail: the simulator prints
 * its one-line reproduction.
 */
#include "host_sim_own.h"

#include "cluster_types.h"
#include "craft.h"
#include "ownership.h"
#include "queue_fsm.h"
#include "relay.pb-c.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define HSO_NODES 8	/* node slots (host_sim: SIM_MAX + 1) */
#define HSO_ATT 4	/* attempts in flight per node */
#define HSO_RCPTS 16	/* recipients of one item an attempt carries (more: left for later) */
#define HSO_PICKS 16	/* owned items looked at per tick */
#define HSO_SEND_MIN 20 /* an attempt's data takes HSO_SEND_MIN + rnd(HSO_SEND_SPREAD) units */
#define HSO_SEND_SPREAD 400
#define HSO_SLOW_IN 4	     /* one attempt in HSO_SLOW_IN is slow (a big message): */
#define HSO_SLOW_SPREAD 6000 /* up to this much more */
#define HSO_WINDOWS (HSO_NODES * HSO_ATT)

enum { ATT_FREE, ATT_SENDING, ATT_COMMITTING, ATT_OUTCOME };

struct hso_node;

struct hso_att {
	int phase;
	struct hso_node *nd;
	char qid[QUEUE_ID_MAX + 1];
	char dom[QUEUE_DOMAIN_MAX + 1];
	uint32_t idx[HSO_RCPTS];
	size_t n;
	uint64_t epoch;	  /* the domain's epoch when it started (the Outcome carries it) */
	uint64_t due;	  /* node clock: the data is sent, the "." is next */
	uint64_t win_end; /* true time: the "." has reached the destination */
};

struct hso_node {
	int up, idx;
	char name[QUEUE_NODE_MAX + 1];
	struct craft *c;
	struct own own;
	int booted;
	int self_state;
	uint64_t self_since;
	uint64_t backsteps_seen;
	struct hso_att att[HSO_ATT];
};

/* An open committing window, in true time (it outlives a crash of its node). */
struct hso_win {
	int used, node;
	char dom[QUEUE_DOMAIN_MAX + 1];
	char qid[QUEUE_ID_MAX + 1];
	uint64_t epoch, start, end;
};

static struct {
	struct hso_env env;
	int n_ids, quiet;
	uint64_t lease_ms;
	struct hso_node nd[HSO_NODES];
	struct hso_win win[HSO_WINDOWS];
	struct hso_stats st;
	uint64_t dsn_seq; /* DSN queue ids: D%08 */
} G;

#define NOW (*G.env.now)

void
hso_init(const struct hso_env *env, int n_ids, uint64_t lease_ms)
{
	memset(&G, 0, sizeof(G));
	G.env = *env;
	G.n_ids = n_ids < HSO_NODES ? n_ids : HSO_NODES - 1;
	G.lease_ms = lease_ms;
}

void
hso_fini(void)
{
	memset(&G.nd, 0, sizeof(G.nd));
}

void
hso_quiet(void)
{
	G.quiet = 1;
}

void
hso_stats(struct hso_stats *st)
{
	*st = G.st;
}

static struct hso_node *
node_at(int idx)
{
	if (idx < 1 || idx > G.n_ids)
		G.env.fail("host_sim_own: node %d out of range", idx);
	return &G.nd[idx];
}

void
hso_start(int idx, const char *name, struct craft *c, uint64_t mono)
{
	struct hso_node *nd = node_at(idx);
	memset(nd, 0, sizeof(*nd));
	nd->idx = idx;
	nd->up = 1;
	nd->c = c;
	snprintf(nd->name, sizeof(nd->name), "%s", name);
	struct own_config oc = {.self = name, .lease_ms = G.lease_ms}; /* relayd: `lease` only */
	own_init(&nd->own, &oc);
	nd->own.clock_ms = mono;
	nd->self_state = -1;
}

void
hso_crash(int idx)
{
	struct hso_node *nd = node_at(idx);
	/* craft_abandon completes no proposal: no callback will come for these */
	nd->up = 0;
	nd->c = NULL;
	for (size_t k = 0; k < HSO_ATT; k++)
		nd->att[k].phase = ATT_FREE;
}

/* This node's state in the member table (-1: absent), as dlv__own_self_state. */
static int
self_state(const struct hso_node *nd, const struct queue_member *mem, size_t n, uint64_t *since)
{
	*since = 0;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(mem[i].node, nd->name)) {
			*since = mem[i].since_index;
			return mem[i].state;
		}
	return -1;
}

static size_t
inflight(const struct hso_node *nd)
{
	size_t n = 0;
	for (size_t k = 0; k < HSO_ATT; k++)
		n += nd->att[k].phase != ATT_FREE;
	return n;
}

/* ------------------------------------------------------------ proposals */

static void
renew_cb(void *arg, int status)
{
	struct hso_node *nd = arg;
	if (!nd->up)
		return;
	own_renew_done(&nd->own, status == 0, G.env.mono(nd->idx));
	if (status == 0)
		G.st.renews_ok++;
	else
		G.st.renews_failed++;
}

static void
member_cb(void *arg, int status)
{
	(void)arg, (void)status;
}

static void
outcome_cb(void *arg, int status)
{
	struct hso_att *a = arg;
	if (status == 0)
		G.st.outcomes_ok++;
	else
		G.st.outcomes_failed++;
	if (a->nd->up && a->phase == ATT_OUTCOME)
		a->phase = ATT_FREE;
}

static bool
propose_member(struct hso_node *nd, const char *node, uint8_t state, bool has_expect,
	       uint64_t expect, uint64_t expect_since, uint64_t wall)
{
	Relay__Member mb = RELAY__MEMBER__INIT;
	mb.node = (char *)node;
	mb.state = (Relay__MemberState)state;
	mb.has_at_ms = true;
	mb.at_ms = wall;
	if (has_expect) {
		mb.has_expect_renew_index = true;
		mb.expect_renew_index = expect;
	}
	if (expect_since != 0) {
		mb.has_expect_since_index = true;
		mb.expect_since_index = expect_since;
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	cmd.member = &mb;
	if (craft_propose(nd->c, &cmd, member_cb, NULL, NULL))
		return false;
	G.st.members++;
	G.env.trace("%s proposes member %s %s", nd->name, node, queue_member_state_name(state));
	return true;
}

/* ------------------------------------------------------------ attempts */

struct picks {
	size_t n;
	struct {
		char qid[QUEUE_ID_MAX + 1];
		char dom[QUEUE_DOMAIN_MAX + 1];
		uint64_t epoch;
	} p[HSO_PICKS];
};

static int
pick_cb(void *arg, const struct queue_item *it)
{
	struct picks *l = arg;
	if (l->n >= HSO_PICKS)
		return 1;
	snprintf(l->p[l->n].qid, sizeof(l->p[0].qid), "%s", it->msg->queue_id);
	snprintf(l->p[l->n].dom, sizeof(l->p[0].dom), "%s", it->domain);
	l->p[l->n].epoch = it->epoch;
	l->n++;
	return 0;
}

static bool
in_flight(const struct hso_node *nd, const char *qid, const char *dom)
{
	for (size_t k = 0; k < HSO_ATT; k++)
		if (nd->att[k].phase != ATT_FREE && !strcmp(nd->att[k].qid, qid) &&
		    !strcmp(nd->att[k].dom, dom))
			return true;
	return false;
}

/* Starts what it may on the items its applied state gives it (own_may_start per item). */
static void
start_attempts(struct hso_node *nd, uint64_t now)
{
	struct queue_fsm *q = craft_queue(nd->c);
	struct picks l = {.n = 0};
	/* simulated time is short and nothing is deferred: every owned item is due */
	if (queue_fsm_due_owned(q, nd->name, UINT64_MAX / 2, pick_cb, &l, HSO_PICKS) <= 0)
		return;
	for (size_t i = 0; i < l.n; i++) {
		struct hso_att *a = NULL;
		for (size_t k = 0; k < HSO_ATT && !a; k++)
			if (nd->att[k].phase == ATT_FREE)
				a = &nd->att[k];
		if (!a)
			return;
		if (in_flight(nd, l.p[i].qid, l.p[i].dom))
			continue;
		char owner[QUEUE_NODE_MAX + 1];
		uint64_t ep = 0;
		if (queue_fsm_domain_owner(q, l.p[i].dom, owner, &ep) ||
		    !own_may_start(&nd->own, now, nd->self_state, owner, ep, l.p[i].epoch))
			continue;
		const struct queue_msg *m = queue_fsm_lookup(q, l.p[i].qid);
		Relay__QueueRecord *rec = NULL;
		if (!m || queue_fsm_read_record(q, l.p[i].qid, &rec))
			continue;
		uint32_t idx[HSO_RCPTS];
		size_t n = 0;
		for (size_t r = 0; r < rec->n_rcpts && r < m->nrcpts && n < HSO_RCPTS; r++) {
			char d[QUEUE_DOMAIN_MAX + 1];
			if (m->rcpts[r].state != QUEUE_RCPT_QUEUED || !rec->rcpts[r]->rcpt)
				continue;
			queue_addr_domain(rec->rcpts[r]->rcpt->addr, d);
			if (!strcmp(d, l.p[i].dom))
				idx[n++] = (uint32_t)r;
		}
		relay__queue_record__free_unpacked(rec, NULL);
		if (!n)
			continue;
		memset(a, 0, sizeof(*a));
		a->phase = ATT_SENDING;
		a->nd = nd;
		a->n = n;
		memcpy(a->idx, idx, n * sizeof(idx[0]));
		snprintf(a->qid, sizeof(a->qid), "%s", l.p[i].qid);
		snprintf(a->dom, sizeof(a->dom), "%s", l.p[i].dom);
		a->epoch = l.p[i].epoch;
		uint64_t d = HSO_SEND_MIN + G.env.rnd_n(HSO_SEND_SPREAD);
		if (G.env.rnd_n(HSO_SLOW_IN) == 0)
			d += G.env.rnd_n(HSO_SLOW_SPREAD);
		a->due = now + d;
		G.st.attempts++;
		G.env.trace("%s starts an attempt on %s (%s) epoch=%" PRIu64 " for %" PRIu64 " ms",
			    nd->name, a->qid, a->dom, a->epoch, d);
	}
}

/* The gate, as dlv__own_may_commit: read from the applied state now. */
static bool
may_commit(struct hso_node *nd, const struct hso_att *a, uint64_t now)
{
	struct queue_fsm *q = craft_queue(nd->c);
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(q, mem, QUEUE_MEMBERS_MAX);
	uint64_t since;
	int self = self_state(nd, mem, nm, &since);
	char owner[QUEUE_NODE_MAX + 1];
	uint64_t ep = 0;
	return queue_fsm_domain_owner(q, a->dom, owner, &ep) == 0 &&
	       own_may_commit(&nd->own, now, self, owner, ep, a->epoch);
}

/* Node nd enters the committing window of a's domain now, for w units: the check. */
static void
window_open(struct hso_node *nd, const struct hso_att *a, uint64_t w)
{
	struct hso_win *slot = NULL;
	G.st.overlap_checks++;
	for (size_t i = 0; i < HSO_WINDOWS; i++) {
		struct hso_win *x = &G.win[i];
		if (x->used && x->end < NOW)
			x->used = 0; /* over */
		if (!x->used) {
			if (!slot)
				slot = x;
			continue;
		}
		if (x->node != nd->idx && !strcmp(x->dom, a->dom))
			G.env.fail("ownership: n%d (%s epoch %" PRIu64
				   ", committing since t=%" PRIu64 " until t=%" PRIu64
				   ") and %s (%s epoch %" PRIu64
				   ") both send the end of data for %s",
				   x->node, x->qid, x->epoch, x->start, x->end, nd->name, a->qid,
				   a->epoch, a->dom);
	}
	if (!slot)
		G.env.fail("host_sim_own: more than %d committing windows", HSO_WINDOWS);
	slot->used = 1;
	slot->node = nd->idx;
	snprintf(slot->dom, sizeof(slot->dom), "%s", a->dom);
	snprintf(slot->qid, sizeof(slot->qid), "%s", a->qid);
	slot->epoch = a->epoch;
	slot->start = NOW;
	slot->end = NOW + w;
}

static void
propose_outcome(struct hso_node *nd, struct hso_att *a, uint64_t wall)
{
	Relay__Outcome out = RELAY__OUTCOME__INIT;
	out.queue_id = a->qid;
	out.rcpt_index = a->idx;
	out.n_rcpt_index = a->n;
	out.kind = RELAY__OUTCOME_KIND__DELIVERED;
	out.at_ms = wall;
	out.reply = "250 2.0.0 ok";
	out.relay = "mx.sim.example[192.0.2.1]:25";
	out.dsn_status = "2.0.0";
	out.has_epoch = true;
	out.epoch = a->epoch;
	/* With outcome_kinds, as delivery_outcome.c words them: a DEFERRED with its next attempt
	 * (sometimes the delay warning: a DSN to the sender), a FAILED (a bounce, or none for a
	 * null sender's message).  A DSN is an Accept of its own, to src.example: a new domain
	 * to own and attempt. */
	Relay__Accept dsn = RELAY__ACCEPT__INIT;
	Relay__Recipient drc = RELAY__RECIPIENT__INIT, *drp = &drc;
	char dqid[QUEUE_ID_MAX + 1];
	bool with_dsn = false;
	unsigned k = G.env.outcome_kinds ? (unsigned)G.env.rnd_n(10) : 0;
	if (k >= 6 && k < 9) {
		out.kind = RELAY__OUTCOME_KIND__DEFERRED;
		out.reply = "451 4.3.0 try again later";
		out.dsn_status = "4.3.0";
		out.has_next_attempt_ms = true;
		out.next_attempt_ms = wall + 100 + G.env.rnd_n(3000);
		if (G.env.rnd_n(5) == 0) {
			out.has_delay_notified = true;
			out.delay_notified = true;
			with_dsn = true;
		}
		G.st.deferred++;
	} else if (k == 9) {
		out.kind = RELAY__OUTCOME_KIND__FAILED;
		out.reply = "550 5.1.1 no such user";
		out.dsn_status = "5.1.1";
		with_dsn = G.env.rnd_n(2) != 0;
		G.st.failed++;
	}
	if (with_dsn) {
		snprintf(dqid, sizeof(dqid), "D%08" PRIu64, ++G.dsn_seq);
		dsn.queue_id = dqid;
		dsn.mail_from = "";
		drc.addr = "sender@src.example";
		dsn.rcpts = &drp;
		dsn.n_rcpts = 1;
		dsn.body.data = (uint8_t *)"delivery status notification";
		dsn.body.len = 28;
		dsn.received_ms = wall;
		out.dsn = &dsn;
		G.st.dsns++;
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
	cmd.outcome = &out;
	if (craft_propose(nd->c, &cmd, outcome_cb, a, NULL)) {
		a->phase = ATT_FREE; /* lost: the recipients are delivered again later */
		G.st.outcomes_failed++;
		return;
	}
	G.env.outcome_proposed(a->qid);
	a->phase = ATT_OUTCOME;
}

void
hso_step(int idx, int up, uint64_t mono, uint64_t wall)
{
	struct hso_node *nd = node_at(idx);
	if (!up || !nd->up)
		return;
	for (size_t k = 0; k < HSO_ATT; k++) {
		struct hso_att *a = &nd->att[k];
		if (a->phase == ATT_SENDING && mono >= a->due) {
			if (!may_commit(nd, a, mono)) {
				G.st.aborted++;
				G.env.trace("%s abandons its attempt on %s (%s): the gate refuses",
					    nd->name, a->qid, a->dom);
				a->phase = ATT_FREE;
				continue;
			}
			G.st.commits++;
			uint64_t w = 1 + G.env.rnd_n(nd->own.margin_ms / 2);
			window_open(nd, a, w);
			a->phase = ATT_COMMITTING;
			a->win_end = NOW + w;
			G.env.trace("%s sends the end of data of %s (%s) epoch=%" PRIu64, nd->name,
				    a->qid, a->dom, a->epoch);
		}
		if (a->phase == ATT_COMMITTING && NOW >= a->win_end)
			propose_outcome(nd, a, wall);
	}
}

int
hso_operator_drain(int via, const char *node, uint64_t wall)
{
	struct hso_node *nd = node_at(via);
	if (!nd->up || G.quiet)
		return -1;
	if (!propose_member(nd, node, QUEUE_MEMBER_DRAINING, false, 0, 0, wall))
		return -1;
	G.st.drains++;
	return 0;
}

/* ------------------------------------------------------------ the tick */

void
hso_tick(int idx, uint64_t now, uint64_t wall)
{
	struct hso_node *nd = node_at(idx);
	if (!nd->up || G.quiet)
		return;
	struct queue_fsm *q = craft_queue(nd->c);
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(q, mem, QUEUE_MEMBERS_MAX);
	nd->self_state = self_state(nd, mem, nm, &nd->self_since);
	/* owner side: be a member, keep the lease */
	if (own_self_live_due(&nd->own, now, nd->self_state, !nd->booted) &&
	    !propose_member(nd, nd->name, QUEUE_MEMBER_LIVE, false, 0, 0, wall))
		nd->own.live_proposed_ms = 0;
	nd->booted = 1;
	if (own_renew_due(&nd->own, now)) {
		Relay__Renew rn = RELAY__RENEW__INIT;
		rn.node = nd->name;
		rn.has_at_ms = true;
		rn.at_ms = wall;
		rn.has_inflight = true;
		rn.inflight = (uint32_t)inflight(nd);
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
		cmd.renew = &rn;
		own_renew_sent(&nd->own, now);
		if (craft_propose(nd->c, &cmd, renew_cb, nd, NULL))
			own_renew_done(&nd->own, false, now);
	}
	/* drain */
	switch (own_drain_tick(&nd->own, now, nd->self_state, inflight(nd))) {
	case 2:
		/* cut what is still sending (an end of data on the wire still arrives) */
		for (size_t k = 0; k < HSO_ATT; k++)
			if (nd->att[k].phase == ATT_SENDING)
				nd->att[k].phase = ATT_FREE;
		break;
	case 1:
		if (!propose_member(nd, nd->name, QUEUE_MEMBER_DRAINED, false, 0, nd->self_since,
				    wall))
			nd->own.drained_proposed_ms = 0;
		break;
	default:
		break;
	}
	/* leader side: verdicts on the others' leases and on members that left */
	struct cluster_status cst;
	craft_status(nd->c, &cst);
	bool leader = cst.role != NULL && !strcmp(cst.role, "leader");
	const char *conf[CLUSTER_MAX_PEERS];
	size_t nconf = cluster_status_members(&cst, conf, CLUSTER_MAX_PEERS);
	struct own_action act[OWN_MAX_ACTIONS];
	size_t na = own_leader_tick(&nd->own, now, leader, cst.term, mem, nm, conf, nconf, act,
				    OWN_MAX_ACTIONS);
	for (size_t i = 0; i < na && nd->up; i++) {
		G.st.verdicts++;
		propose_member(nd, act[i].node, act[i].state, act[i].has_expect,
			       act[i].expect_renew_index, 0, wall);
	}
	if (nd->own.clock_backsteps != nd->backsteps_seen) {
		/* the node's monotonic clock went back: host_sim's clocks never do */
		G.st.backsteps++;
		G.env.fail("%s: the monotonic clock went back (ownership.c saw %" PRIu64 ")",
			   nd->name, nd->own.clock_backsteps);
	}
	if (own_may_act(&nd->own, now, nd->self_state))
		start_attempts(nd, now);
}
