/*
 * delivery_own.c - the ownership runtime (delivery_int.h): hosts the pure lease core
 * (cluster/ownership.h) on the loop: Member and Renew proposals, the lease this node holds,
 * the leader's verdicts on other members, and drain.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "delivery.h"
#include "delivery_int.h"

/* ------------------------------------------------------------ ownership */

static void
own_prop_cb(void *arg, int status)
{
	struct own_prop *p = arg;
	struct delivery *d = p->d;
	if (d != NULL) {
		if (p->prev)
			p->prev->next = p->next;
		else
			d->own_props = p->next;
		if (p->next)
			p->next->prev = p->prev;
		d->n_own_props--;
		if (p->renew)
			own_renew_done(&d->own, status == 0, clock_mono_ms());
		if (status != 0)
			d->st.own_failures++;
	}
	free(p);
}

/* Proposes cmd for ownership; false when it could not be proposed now. */
static bool
own_propose(struct delivery *d, const Relay__Command *cmd, bool renew)
{
	if (d->closing || d->n_own_props >= DLV_OWN_PROPS_MAX)
		return false;
	struct own_prop *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return false;
	p->d = d;
	p->renew = renew;
	int rc = cluster_propose(d->cluster, cmd, own_prop_cb, p);
	if (rc != 0) {
		free(p);
		d->st.own_failures++;
		return false;
	}
	p->next = d->own_props;
	if (p->next)
		p->next->prev = p;
	d->own_props = p;
	d->n_own_props++;
	return true;
}

/* Proposes Member{node, state}; with expect_renew_index = expect if has_expect, and with
 * expect_since_index = expect_since unless it is 0 (queue_fsm.h). */
static bool
own_propose_member(struct delivery *d, const char *node, uint8_t state, bool has_expect,
		   uint64_t expect, uint64_t expect_since)
{
	Relay__Member mb = RELAY__MEMBER__INIT;
	mb.node = (char *)node;
	mb.state = (Relay__MemberState)state;
	mb.has_at_ms = true;
	mb.at_ms = clock_wall_ms(); /* recorded, for display: never compared with a lease */
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
	bool ok = own_propose(d, &cmd, false);
	if (ok) {
		d->st.member_proposals++;
		log_info("-", "event=member-propose node=%s state=%s", node,
			 queue_member_state_name(state));
	}
	return ok;
}

/* Queued jobs (not on a connection yet) that this node may no longer start end without a
 * result: their recipients stay as they are in the queue (their new owner, or this node once
 * it holds a lease again, starts them). */
static void
own_prune_jobs(struct delivery *d, uint64_t now)
{
	struct djob *drop = NULL;
	for (struct ddest *x = d->dest_list; x; x = x->next) {
		struct djob *keep_head = NULL, *keep_tail = NULL, *j;
		size_t kept = 0;
		while ((j = dlv__dest_pop(x)) != NULL) {
			bool ok = j->n > 0;
			if (ok) {
				const Relay__QueueRcpt *qr = j->msg->rec->rcpts[j->idx[0]];
				char dom[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
				uint64_t ep = 0;
				queue_addr_domain(qr->rcpt->addr, dom);
				ok = queue_fsm_domain_owner(d->q, dom, owner, &ep) == 0 &&
				     own_may_start(&d->own, now, d->self_state, owner, ep,
						   j->msg->res[j->idx[0]].epoch);
			}
			j->next = NULL;
			if (ok) {
				if (keep_tail)
					keep_tail->next = j;
				else
					keep_head = j;
				keep_tail = j;
				kept++;
			} else {
				j->next = drop;
				drop = j;
			}
		}
		x->qhead = keep_head;
		x->qtail = keep_tail;
		x->nqueued = kept;
	}
	while (drop != NULL) {
		struct djob *j = drop;
		drop = j->next;
		struct dmsg *m = j->msg;
		for (size_t k = 0; k < j->n; k++)
			m->res[j->idx[k]].in_job = false;
		d->st.jobs_dropped++;
		dlv__job_free(j);
		dlv__msg_job_done(m);
	}
}

/* This node's state in the member table mem[0..n) (queue_fsm_members), -1 when absent. */
int
dlv__own_self_state(const struct delivery *d, const struct queue_member *mem, size_t n,
		    uint64_t *since)
{
	if (since)
		*since = 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(mem[i].node, d->own.self) == 0) {
			if (since)
				*since = mem[i].since_index;
			return mem[i].state;
		}
	return -1;
}

/*
 * May the attempt of job j commit now (send its end of data)?  Right before the "." of DATA:
 * every recipient the destination accepted must still be this node's, at the epoch the attempt
 * started under, with the lease running at least its margin longer (own_may_commit), read from
 * the applied state now (not the last tick's).  Also false when the clock says the lease is
 * gone for any other reason.
 */
bool
dlv__own_may_commit(struct delivery *d, const struct djob *j, uint64_t mono)
{
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(d->q, mem, QUEUE_MEMBERS_MAX);
	int self = dlv__own_self_state(d, mem, nm, NULL);
	for (size_t k = 0; k < j->n; k++) {
		if (j->rc[k].state != MTA_RCPT_ACCEPTED)
			continue;
		const Relay__QueueRcpt *qr = j->msg->rec->rcpts[j->idx[k]];
		char dom[QUEUE_DOMAIN_MAX + 1], owner[QUEUE_NODE_MAX + 1];
		uint64_t ep = 0;
		queue_addr_domain(qr->rcpt->addr, dom);
		if (queue_fsm_domain_owner(d->q, dom, owner, &ep) != 0 ||
		    !own_may_commit(&d->own, mono, self, owner, ep, j->msg->res[j->idx[k]].epoch))
			return false;
	}
	return true;
}

/* Drain timeout: the attempts in flight are cut; their recipients are deferred (due at once). */
static void
own_abandon(struct delivery *d)
{
	d->abandon = true;
	for (struct dconn *c = d->conns, *next; c; c = next) {
		next = c->next;
		dlv__conn_close(c);
	}
	log_warn("-", "event=drain-abandon note=\"attempts in flight cut after drain_timeout\"");
}

void
dlv__own_tick_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	if (d->closing)
		return;
	/* The lease core runs on the monotonic clock only (ownership.h "Time"). */
	uint64_t now = clock_mono_ms();
	struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t nm = queue_fsm_members(d->q, mem, QUEUE_MEMBERS_MAX);
	d->self_state = dlv__own_self_state(d, mem, nm, &d->self_since);
	/* Owner side: be a member, keep the lease. */
	if (own_self_live_due(&d->own, now, d->self_state, !d->own_booted)) {
		if (!own_propose_member(d, d->own.self, QUEUE_MEMBER_LIVE, false, 0, 0))
			d->own.live_proposed_ms = 0; /* try again next tick */
	}
	d->own_booted = true;
	if (own_renew_due(&d->own, now)) {
		Relay__Renew rn = RELAY__RENEW__INIT;
		rn.node = d->own.self;
		rn.has_at_ms = true;
		rn.at_ms = clock_wall_ms(); /* recorded (status: renew age), never a lease time */
		rn.has_inflight = true;
		rn.inflight = d->nmsgs > UINT32_MAX ? UINT32_MAX : (uint32_t)d->nmsgs;
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_RENEW;
		cmd.renew = &rn;
		own_renew_sent(&d->own, now);
		if (!own_propose(d, &cmd, true))
			own_renew_done(&d->own, false, now);
	}
	/* Drain. */
	switch (own_drain_tick(&d->own, now, d->self_state, d->nmsgs)) {
	case 2:
		own_abandon(d);
		break;
	case 1:
		/* only if still the DRAINING it judged (ownership.h: Drain) */
		if (!own_propose_member(d, d->own.self, QUEUE_MEMBER_DRAINED, false, 0,
					d->self_since))
			d->own.drained_proposed_ms = 0;
		break;
	default:
		break;
	}
	if (d->self_state != QUEUE_MEMBER_DRAINING)
		d->abandon = false;
	/* Leader side: verdicts on the others' leases and on members that left. */
	struct cluster_status cst;
	cluster_status(d->cluster, &cst);
	bool leader = cst.role != NULL && strcmp(cst.role, "leader") == 0;
	const char *conf[CLUSTER_MAX_PEERS];
	size_t nconf = cluster_status_members(&cst, conf, CLUSTER_MAX_PEERS);
	struct own_action act[OWN_MAX_ACTIONS];
	size_t na = own_leader_tick(&d->own, now, leader, cst.term, mem, nm, conf, nconf, act,
				    OWN_MAX_ACTIONS);
	for (size_t i = 0; i < na; i++) {
		if (act[i].state == QUEUE_MEMBER_DOWN)
			log_warn("-", "event=lease-lapsed node=%s renew_index=%" PRIu64,
				 act[i].node, act[i].expect_renew_index);
		own_propose_member(d, act[i].node, act[i].state, act[i].has_expect,
				   act[i].expect_renew_index, 0);
	}
	if (d->own.clock_backsteps != d->backsteps_seen) {
		/* cannot happen with a monotonic clock: a broken clock_mono_ms, logged loudly */
		d->backsteps_seen = d->own.clock_backsteps;
		log_error("-",
			  "event=clock-went-back backsteps=%" PRIu64
			  " note=\"the monotonic clock went back: lease dropped\"",
			  d->own.clock_backsteps);
	}
	/* Start or stop. */
	bool may = own_may_act(&d->own, now, d->self_state);
	if (may != d->may_start) {
		log_info("-", "event=%s state=%d lease_ms_left=%" PRId64,
			 may ? "ownership-resumed" : "ownership-paused", d->self_state,
			 d->own.lease_until > now ? (int64_t)(d->own.lease_until - now)
						  : -(int64_t)(now - d->own.lease_until));
		d->may_start = may;
		if (may)
			dlv__sched_request(d);
	}
	own_prune_jobs(d, now);
	/* Destinations waiting for their rate limit. */
	if (d->rate_waiters) {
		d->rate_waiters = false;
		for (struct ddest *x = d->dest_list; x; x = x->next)
			if (x->nqueued > 0)
				dlv__dest_pump(x);
	}
}
