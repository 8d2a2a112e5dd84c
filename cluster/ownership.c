/*
 * ownership.c - the lease core of delivery ownership; see ownership.h.
 */
#include "ownership.h"

#include <stdio.h>
#include <string.h>

void
own_init(struct own *o, const struct own_config *cfg)
{
	memset(o, 0, sizeof(*o));
	snprintf(o->self, sizeof(o->self), "%s", cfg->self ? cfg->self : "");
	o->lease_ms = cfg->lease_ms ? cfg->lease_ms : OWN_DEFAULT_LEASE_MS;
	o->renew_ms = cfg->renew_ms ? cfg->renew_ms : o->lease_ms / 4;
	if (o->renew_ms == 0)
		o->renew_ms = 1;
	o->grace_ms = cfg->grace_ms ? cfg->grace_ms : o->lease_ms / 4;
	if (cfg->grace_ms == 0 && o->grace_ms < 1000)
		o->grace_ms = 1000;
	o->retry_ms = cfg->retry_ms ? cfg->retry_ms : o->lease_ms / 2;
	if (o->retry_ms == 0)
		o->retry_ms = 1;
	o->drain_timeout_ms =
	    cfg->drain_timeout_ms ? cfg->drain_timeout_ms : OWN_DEFAULT_DRAIN_TIMEOUT_MS;
	o->margin_ms = cfg->margin_ms ? cfg->margin_ms : o->lease_ms / 8;
	if (cfg->margin_ms == 0 && o->margin_ms < OWN_COMMIT_MARGIN_MIN_MS)
		o->margin_ms = OWN_COMMIT_MARGIN_MIN_MS;
	if (o->margin_ms > o->lease_ms / 2)
		o->margin_ms = o->lease_ms / 2; /* a lease must leave room to act */
}

/* ---------------------------------------------------------------- the clock */

static uint64_t
clamp(uint64_t t, uint64_t now)
{
	return t > now ? (now ? now : 1) : t;
}

/*
 * Every call that changes *o passes its time here first.  A time earlier than one given before
 * means the host's clock went back (it must be monotonic, see ownership.h): what was counted on
 * the old clock cannot be trusted.  The lease is dropped, the renew in flight will not extend it,
 * and every remembered time later than now is brought back to now: a renew is due at once, and
 * the leader's verdicts wait a whole lease + grace again from now (late, never early).
 */
static void
own_clock(struct own *o, uint64_t now)
{
	if (now >= o->clock_ms) {
		o->clock_ms = now;
		return;
	}
	o->clock_backsteps++;
	o->clock_ms = now;
	o->lease_until = 0;
	if (o->renew_inflight)
		o->renew_distrusted = true;
	o->renew_sent_ms = clamp(o->renew_sent_ms, now);
	if (o->last_renew_ms > now)
		o->last_renew_ms = 0; /* due at once (own_renew_due) */
	o->live_proposed_ms = clamp(o->live_proposed_ms, now);
	o->drain_seen_ms = clamp(o->drain_seen_ms, now);
	o->drained_proposed_ms = clamp(o->drained_proposed_ms, now);
	o->leader_since_ms = clamp(o->leader_since_ms, now);
	for (size_t i = 0; i < QUEUE_MEMBERS_MAX; i++) {
		struct own_seen *s = &o->seen[i];
		s->seen_ms = clamp(s->seen_ms, now);
		s->proposed_ms = clamp(s->proposed_ms, now);
		s->out_since_ms = clamp(s->out_since_ms, now);
	}
}

/* ---------------------------------------------------------------- owner side */

bool
own_renew_due(const struct own *o, uint64_t now)
{
	if (o->renew_inflight)
		return false;
	if (o->last_renew_ms == 0 || now >= o->last_renew_ms + o->renew_ms)
		return true;
	return false;
}

void
own_renew_sent(struct own *o, uint64_t now)
{
	own_clock(o, now);
	o->renew_inflight = true;
	o->renew_distrusted = false;
	o->renew_sent_ms = now;
	o->last_renew_ms = now ? now : 1;
}

void
own_renew_done(struct own *o, bool ok, uint64_t now)
{
	own_clock(o, now);
	if (!o->renew_inflight)
		return;
	o->renew_inflight = false;
	if (o->renew_distrusted) {
		o->renew_distrusted = false;
		ok = false; /* sent on a clock that went back since: its time means nothing now */
	}
	if (!ok) {
		o->renew_failures++;
		return;
	}
	o->renews++;
	uint64_t until = o->renew_sent_ms + o->lease_ms;
	if (until > o->lease_until)
		o->lease_until = until;
}

bool
own_lease_held(const struct own *o, uint64_t now)
{
	return o->lease_until != 0 && now >= o->clock_ms && now < o->lease_until;
}

bool
own_lease_margin(const struct own *o, uint64_t now)
{
	return own_lease_held(o, now) && now + o->margin_ms < o->lease_until;
}

bool
own_may_act(const struct own *o, uint64_t now, int self_state)
{
	return self_state == QUEUE_MEMBER_LIVE && own_lease_margin(o, now);
}

/* Is the item's domain this node's at the epoch the attempt carries? */
static bool
own_item_mine(const struct own *o, const char *owner, uint64_t epoch, uint64_t item_epoch)
{
	return owner != NULL && strcmp(owner, o->self) == 0 && epoch != 0 && epoch == item_epoch;
}

bool
own_may_start(const struct own *o, uint64_t now, int self_state, const char *owner, uint64_t epoch,
	      uint64_t item_epoch)
{
	return own_item_mine(o, owner, epoch, item_epoch) && own_may_act(o, now, self_state);
}

bool
own_may_commit(const struct own *o, uint64_t now, int self_state, const char *owner, uint64_t epoch,
	       uint64_t item_epoch)
{
	return own_item_mine(o, owner, epoch, item_epoch) &&
	       (self_state == QUEUE_MEMBER_LIVE || self_state == QUEUE_MEMBER_DRAINING) &&
	       own_lease_margin(o, now);
}

bool
own_self_live_due(struct own *o, uint64_t now, int self_state, bool revive)
{
	bool want = self_state < 0 || self_state == QUEUE_MEMBER_DOWN ||
		    self_state == QUEUE_MEMBER_REMOVED ||
		    (revive && self_state == QUEUE_MEMBER_DRAINED);
	own_clock(o, now);
	if (!want)
		return false;
	if (o->live_proposed_ms != 0 && now < o->live_proposed_ms + o->retry_ms)
		return false;
	o->live_proposed_ms = now ? now : 1;
	return true;
}

int
own_drain_tick(struct own *o, uint64_t now, int self_state, size_t inflight)
{
	own_clock(o, now);
	if (self_state != QUEUE_MEMBER_DRAINING) {
		o->drain_seen_ms = 0;
		o->drained_proposed_ms = 0;
		return 0;
	}
	if (o->drain_seen_ms == 0)
		o->drain_seen_ms = now ? now : 1;
	bool timed_out = now >= o->drain_seen_ms + o->drain_timeout_ms;
	if (inflight > 0 && !timed_out)
		return 0;
	if (inflight > 0)
		return 2; /* the host abandons them, then calls again */
	if (o->drained_proposed_ms != 0 && now < o->drained_proposed_ms + o->retry_ms)
		return 0;
	o->drained_proposed_ms = now ? now : 1;
	return 1;
}

/* ---------------------------------------------------------------- leader side */

static struct own_seen *
seen_find(struct own *o, const char *node, bool create)
{
	struct own_seen *free_slot = NULL;
	for (size_t i = 0; i < QUEUE_MEMBERS_MAX; i++) {
		struct own_seen *s = &o->seen[i];
		if (s->used && strcmp(s->node, node) == 0)
			return s;
		if (!s->used && free_slot == NULL)
			free_slot = s;
	}
	if (!create || free_slot == NULL)
		return NULL;
	memset(free_slot, 0, sizeof(*free_slot));
	free_slot->used = true;
	snprintf(free_slot->node, sizeof(free_slot->node), "%s", node);
	return free_slot;
}

static bool
in_conf(const char *node, const char *const *conf, size_t nconf)
{
	for (size_t i = 0; i < nconf; i++)
		if (conf[i] != NULL && strcmp(conf[i], node) == 0)
			return true;
	return false;
}

/* May an action for s be proposed now (not repeated within retry_ms)? */
static bool
act_ok(const struct own *o, const struct own_seen *s, uint8_t state, uint64_t now)
{
	if (s->proposed_ms == 0 || s->proposed_state != state)
		return true;
	return now >= s->proposed_ms + o->retry_ms;
}

static size_t
act_add(struct own_action *out, size_t n, size_t cap, struct own_seen *s, uint8_t state,
	bool has_expect, uint64_t expect, uint64_t now)
{
	if (n >= cap)
		return n;
	struct own_action *a = &out[n];
	memset(a, 0, sizeof(*a));
	snprintf(a->node, sizeof(a->node), "%s", s->node);
	a->state = state;
	a->has_expect = has_expect;
	a->expect_renew_index = expect;
	s->proposed_ms = now ? now : 1;
	s->proposed_state = state;
	return n + 1;
}

size_t
own_leader_tick(struct own *o, uint64_t now, bool leader, uint64_t term,
		const struct queue_member *members, size_t n, const char *const *conf, size_t nconf,
		struct own_action *out, size_t cap)
{
	own_clock(o, now);
	if (!leader) {
		o->leader = false;
		return 0;
	}
	if (!o->leader || o->term != term) {
		/* A new reign: every member gets a whole lease from now. */
		o->leader = true;
		o->term = term;
		o->leader_since_ms = now;
		memset(o->seen, 0, sizeof(o->seen));
		for (size_t i = 0; i < n && i < QUEUE_MEMBERS_MAX; i++) {
			struct own_seen *s = seen_find(o, members[i].node, true);
			if (s != NULL) {
				s->renew_index = members[i].renew_index;
				s->seen_ms = now ? now : 1;
			}
		}
	}
	/* Forget members that left the table. */
	for (size_t i = 0; i < QUEUE_MEMBERS_MAX; i++) {
		struct own_seen *s = &o->seen[i];
		if (!s->used)
			continue;
		bool present = false;
		for (size_t k = 0; k < n && !present; k++)
			present = strcmp(members[k].node, s->node) == 0;
		if (!present)
			s->used = false;
	}
	size_t na = 0;
	for (size_t i = 0; i < n; i++) {
		const struct queue_member *m = &members[i];
		struct own_seen *s = seen_find(o, m->node, true);
		if (s == NULL)
			continue; /* cannot happen: the table is bounded by the same constant */
		if (s->seen_ms == 0 || m->renew_index != s->renew_index) {
			s->renew_index = m->renew_index;
			s->seen_ms = now ? now : 1;
		}
		if (nconf > 0 && !in_conf(m->node, conf, nconf)) {
			if (s->out_since_ms == 0)
				s->out_since_ms = now ? now : 1;
			/* Counted from the later of the two: a Renew of its that commits after it
			 * left (a forward) reaches it if it is added back; DOWN's argument then
			 * holds, and the precondition makes a later one void the verdict. */
			uint64_t from = s->out_since_ms > s->seen_ms ? s->out_since_ms : s->seen_ms;
			if (now >= from + o->lease_ms + o->grace_ms &&
			    act_ok(o, s, QUEUE_MEMBER_REMOVED, now)) {
				na = act_add(out, na, cap, s, QUEUE_MEMBER_REMOVED, true,
					     m->renew_index, now);
				o->removes++;
			}
			continue;
		}
		s->out_since_ms = 0;
		switch (m->state) {
		case QUEUE_MEMBER_LIVE:
		case QUEUE_MEMBER_DRAINING:
			if (now >= s->seen_ms + o->lease_ms + o->grace_ms &&
			    act_ok(o, s, QUEUE_MEMBER_DOWN, now)) {
				na = act_add(out, na, cap, s, QUEUE_MEMBER_DOWN, true,
					     m->renew_index, now);
				o->downs++;
			}
			break;
		case QUEUE_MEMBER_DOWN:
			if (m->renew_index > m->since_index &&
			    act_ok(o, s, QUEUE_MEMBER_LIVE, now)) {
				na = act_add(out, na, cap, s, QUEUE_MEMBER_LIVE, false, 0, now);
				o->lives++;
			}
			break;
		default:
			break;
		}
	}
	return na;
}
