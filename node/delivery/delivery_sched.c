/*
 * delivery_sched.c - the scheduler of the delivery engine (delivery_int.h): which queued
 * messages are due and owned by this node, reading their records and bodies, splitting them
 * into jobs per route, and the bounds on what is in flight (messages, body bytes).
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

/* ------------------------------------------------------------ scheduler */

/* How a message starts: its due recipients into jobs, or (the expiry sweep) its recipients
 * whose domain is deferred, bounced at once as expired. */
enum sched_mode { SCHED_DUE, SCHED_EXPIRE };

/* An expired recipient of a deferred domain: deferred with the domain's reason, which
 * msg_complete turns into a bounce ("queue lifetime expired"). */
static void
sched_expire_rcpt(struct delivery *d, struct rcpt_result *r, const char *dom)
{
	char why[QUEUE_REPLY_MAX + 1];
	if (queue_fsm_domain_reason(d->q, dom, why, sizeof(why)) != 0 || why[0] == '\0')
		snprintf(why, sizeof(why), "451 4.4.1 %s: delivery temporarily suspended", dom);
	r->kind = RES_DEFERRED;
	snprintf(r->status, sizeof(r->status), "4.4.1");
	r->reply = dlv__dup_max(why, QUEUE_REPLY_MAX);
	r->relay = dlv__xstrdup("");
}

/* Splits a due message into jobs and queues them on their destinations.  now: the wall clock
 * (queue times), mono: the monotonic clock (the lease).  Returns 0, -2 when its body is not in
 * the store yet, or -1 when it cannot be read now. */
static int
sched_start_msg(struct delivery *d, const struct queue_msg *qm, uint64_t now, uint64_t mono,
		enum sched_mode mode)
{
	struct dmsg *m = calloc(1, sizeof(*m));
	if (m == NULL)
		return -1;
	m->d = d;
	snprintf(m->qid, sizeof(m->qid), "%s", qm->queue_id);
	void *body = NULL;
	size_t blen = 0;
	/* the envelope and the recipients' states: no last results (one store read) */
	int rc = queue_fsm_read_envelope(d->q, qm->queue_id, &m->rec);
	if (rc == 0)
		rc = queue_fsm_read_body(d->q, qm->queue_id, &body, &blen);
	if (rc != 0) {
		if (m->rec)
			relay__queue_record__free_unpacked(m->rec, NULL);
		free(m);
		/* ENOTFOUND: the Accept was applied, its batch is not written yet (the body; the
		 * envelope too when the state machine's overlay was full).  Long after arrival it
		 * is a damaged store: retried every second (and logged), never spun on. */
		if (rc == QUEUE_ENOTFOUND && now < qm->received_ms + 10000)
			return -2;
		log_warn(qm->queue_id, "event=read-failed error=\"%s\"",
			 rc == QUEUE_ENOTFOUND ? "envelope or body missing" : queue_strerror(rc));
		return -1;
	}
	m->body = body;
	m->body_len = blen;
	m->body_8bit = (m->rec->has_body_type && m->rec->body_type == 1) ||
		       mta_body_is_8bit(m->body, m->body_len);
	if (dlv__xtext_decode(m->rec->envid, m->envid, sizeof(m->envid)) == NULL)
		m->envid[0] = '\0';
	m->res = calloc(m->rec->n_rcpts ? m->rec->n_rcpts : 1, sizeof(*m->res));
	if (m->res == NULL) {
		free(body);
		relay__queue_record__free_unpacked(m->rec, NULL);
		free(m);
		return -1;
	}
	uint64_t h = dlv__hash_str(m->qid) % DLV_HASH_BUCKETS;
	m->hnext = d->msgs[h];
	d->msgs[h] = m;
	d->nmsgs++;
	d->inflight_bytes += blen;
	/* out of the due lists while in flight (dlv__msg_free puts it back) */
	(void)queue_fsm_set_busy(d->q, m->qid, 1);
	m->njobs = 1; /* held while the jobs are made */

	/* Group the due recipients by destination, at most MTA_MAX_RCPTS per job. */
	const Relay__QueueRecord *rec = m->rec;
	struct djob *open[16];
	size_t nopen = 0;
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		const Relay__QueueRcpt *qr = rec->rcpts[i];
		if (qr->state != RELAY__RCPT_STATE__RCPT_QUEUED)
			continue;
		if (mode == SCHED_DUE && qr->has_next_attempt_ms && qr->next_attempt_ms > now)
			continue;
		/* Only the recipients of domains this node owns, at the epoch it owns them (G4);
		 * not those of a deferred domain (DeferDomain), unless they expire. */
		char dom[QUEUE_DOMAIN_MAX + 1];
		struct queue_domain_info di;
		queue_addr_domain(qr->rcpt->addr, dom);
		if (queue_fsm_domain_info(d->q, dom, &di) != 0 ||
		    !own_may_start(&d->own, mono, d->self_state, di.owner, di.epoch, di.epoch))
			continue;
		if ((mode == SCHED_DUE) != (di.defer_until <= now))
			continue;
		uint64_t ep = di.epoch;
		m->res[i].epoch = ep;
		if (mode == SCHED_EXPIRE) {
			m->res[i].in_job = true;
			sched_expire_rcpt(d, &m->res[i], dom);
			continue;
		}
		struct ddest *x = dlv__dest_get(d, qr->rcpt->addr);
		m->res[i].in_job = true;
		if (x == NULL) {
			struct rcpt_result *r = &m->res[i];
			r->kind = RES_FAILED;
			snprintf(r->status, sizeof(r->status), "5.1.2");
			r->reply = dlv__xstrdup("550 5.1.2 bad destination (route)");
			r->relay = dlv__xstrdup("");
			continue;
		}
		struct djob *j = NULL;
		for (size_t k = 0; k < nopen; k++)
			if (open[k]->dest == x && open[k]->n < MTA_MAX_RCPTS) {
				j = open[k];
				break;
			}
		if (j == NULL) {
			j = calloc(1, sizeof(*j));
			if (j == NULL) {
				m->res[i].in_job = false;
				continue;
			}
			j->msg = m;
			j->dest = x;
			m->njobs++;
			if (nopen == sizeof(open) / sizeof(open[0])) {
				dlv__dest_push(open[0]->dest, open[0]);
				dlv__dest_pump(open[0]->dest);
				memmove(open, open + 1, (nopen - 1) * sizeof(open[0]));
				nopen--;
			}
			open[nopen++] = j;
		}
		struct mta_rcpt *r = &j->rc[j->n];
		memset(r, 0, sizeof(*r));
		r->addr = qr->rcpt->addr;
		r->notify = dlv__notify_from_queue(qr->rcpt);
		r->orcpt = NULL;
		if (qr->rcpt->orcpt != NULL && qr->rcpt->orcpt[0] != '\0') {
			char buf[MTA_ORCPT_MAX + 1];
			if (dlv__orcpt_decode(qr->rcpt->orcpt, buf, sizeof(buf)) != NULL)
				r->orcpt = j->orcpt[j->n] = strdup(buf);
		}
		r->state = MTA_RCPT_PENDING;
		j->idx[j->n++] = (uint32_t)i;
	}
	struct ddest *touched[sizeof(open) / sizeof(open[0])];
	size_t nt = 0;
	for (size_t k = 0; k < nopen; k++) {
		struct ddest *x = open[k]->dest;
		dlv__dest_push(x, open[k]);
		bool seen = false;
		for (size_t t = 0; t < nt; t++)
			seen |= touched[t] == x;
		if (!seen)
			touched[nt++] = x;
	}
	for (size_t t = 0; t < nt; t++)
		dlv__dest_pump(touched[t]);
	for (size_t t = 0; t < nt; t++)
		dlv__dest_maybe_free(touched[t]); /* those a synchronous failure left empty */
	dlv__msg_job_done(m); /* drop the hold: completes at once when no job was made */
	return 0;
}

static uint64_t
sched_inflight_max(const struct delivery *d)
{
	return d->cfg->max_deliveries * DLV_INFLIGHT_PER_SLOT;
}

struct scan_ctx {
	struct delivery *d;
	uint64_t now;
	size_t room; /* messages we may still start in this scan */
	size_t n;
	char (*ids)[QUEUE_ID_MAX + 1]; /* due and not in flight, in next-attempt order */
	size_t nbusy;
	char (*busy)[QUEUE_ID_MAX + 1]; /* in flight but in the due lists (after a reload) */
	uint64_t next_due;		/* earliest next attempt not due yet and not in flight */
	bool more;			/* stopped with more due: scan again */
};

static int
scan_cb(void *arg, const struct queue_item *it)
{
	struct scan_ctx *sc = arg;
	const struct queue_msg *m = it->msg;
	if (it->next_attempt_ms > sc->now) {
		sc->next_due = it->next_attempt_ms;
		return 1;
	}
	if (dlv__msg_find(sc->d, m->queue_id) != NULL) {
		/* in flight, yet due: its busy mark went with a reload of the state machine;
		 * marked again after the walk */
		if (sc->nbusy < DLV_SCHED_BATCH)
			snprintf(sc->busy[sc->nbusy++], QUEUE_ID_MAX + 1, "%s", m->queue_id);
		return 0;
	}
	/* A message with several due domains of ours shows up once per domain: the start loop
	 * skips the copies (dlv__msg_find), they only take a slot of this scan. */
	if (sc->n == sc->room) {
		sc->more = true;
		return 1;
	}
	snprintf(sc->ids[sc->n++], QUEUE_ID_MAX + 1, "%s", m->queue_id);
	return 0;
}

/*
 * The expiry sweep: a recipient of a deferred domain is due again only when the deferral ends,
 * so its queue_lifetime could end meanwhile and its bounce wait for the destination's next
 * round.  Once per DLV_SWEEP_MS the oldest messages (apply order: the order they arrived, up to
 * the nodes' clock skew) are looked at, at most DLV_SWEEP_WALK of them, stopping at the first
 * whose lifetime is not over; an expired one (not held, not in flight) with a queued recipient
 * of a domain this node owns and that is deferred bounces now (Postfix bounces a message to a
 * dead destination when its time is up the same way).  Returns the messages started (at most
 * room).  Known gap: more than DLV_SWEEP_WALK expired messages of other owners at the head of
 * the queue (an owner that cannot act) hide the later ones until their domains move.
 */
static size_t
sched_sweep(struct delivery *d, uint64_t now, uint64_t mono, size_t room)
{
	d->sweep_ms = now;
	size_t started = 0, walked = 0;
	char ids[DLV_SCHED_BATCH][QUEUE_ID_MAX + 1];
	size_t n = 0;
	for (const struct queue_msg *m = queue_fsm_first(d->q);
	     m != NULL && walked < DLV_SWEEP_WALK && n < room && n < DLV_SCHED_BATCH;
	     m = queue_fsm_next(d->q, m), walked++) {
		if (!retry_expired(&d->retry, m->received_ms, now))
			break;
		if (m->held || dlv__msg_find(d, m->queue_id) != NULL)
			continue;
		/* deferred past now: what queue_fsm_due_ms says beyond the own next attempt */
		if (queue_fsm_due_ms(d->q, m) <= now)
			continue; /* due: the scan attempts it (its last try) */
		snprintf(ids[n++], QUEUE_ID_MAX + 1, "%s", m->queue_id);
	}
	for (size_t i = 0; i < n; i++) {
		const struct queue_msg *qm = queue_fsm_lookup(d->q, ids[i]);
		if (qm == NULL || sched_start_msg(d, qm, now, mono, SCHED_EXPIRE) != 0)
			continue;
		started++;
		d->st.expired_swept++;
	}
	return started;
}

/* Starts the due items this node owns (queue_fsm_due_owned) whose messages are not in flight,
 * within the in-memory bounds, in next-attempt order; arms the timer for the earliest one not
 * due yet.  Nothing starts without a lease and the LIVE state (the ownership tick asks for a
 * scan when they come back).  Bounded work per scan: at most DLV_SCHED_BATCH messages start
 * (each one reads its envelope and body from the store); with more due and room left the next
 * loop turn scans again.  Messages in flight are out of the due lists (queue_fsm_set_busy), so
 * the walk costs O(k log k) for the k items it starts, whatever the queue size. */
static void
sched_scan(struct delivery *d)
{
	d->scan_wanted = false;
	if (d->closing)
		return;
	/* Two clocks (clock.h): what is due is a wall time of the queue; who may act, the lease, is
	 * the monotonic clock's. */
	uint64_t now = clock_wall_ms(), mono = clock_mono_ms();
	uv_timer_stop(&d->sched_timer);
	d->armed_ms = 0;
	if (!own_may_act(&d->own, mono, d->self_state))
		return; /* dlv__own_tick_cb rescans when this node may start again */
	uint64_t max = sched_inflight_max(d);
	size_t room = d->nmsgs < max ? (size_t)(max - d->nmsgs) : 0;
	if (d->inflight_bytes >= DLV_INFLIGHT_BYTES_MAX)
		room = 0;
	if (room > DLV_SCHED_BATCH)
		room = DLV_SCHED_BATCH;
	if (room > 0 && now >= d->sweep_ms + DLV_SWEEP_MS)
		room -= sched_sweep(d, now, mono, room);
	if (room == 0)
		return; /* a finishing message asks for a new scan */
	char ids[DLV_SCHED_BATCH][QUEUE_ID_MAX + 1], busy[DLV_SCHED_BATCH][QUEUE_ID_MAX + 1];
	struct scan_ctx sc = {
	    .d = d, .now = now, .room = room, .ids = ids, .busy = busy, .next_due = UINT64_MAX};
	/* a message has at most QUEUE_RCPTS_MAX domains: its copies only take slots */
	int rc = queue_fsm_due_owned(d->q, d->own.self, UINT64_MAX, scan_cb, &sc,
				     room + DLV_SCHED_BATCH + 1);
	uint64_t retry_at = UINT64_MAX;
	if (rc < 0)
		retry_at = now + 1000;
	for (size_t i = 0; i < sc.nbusy; i++)
		(void)queue_fsm_set_busy(d->q, sc.busy[i], 1);
	size_t started = 0;
	for (size_t i = 0; i < sc.n; i++) {
		const struct queue_msg *qm = queue_fsm_lookup(d->q, sc.ids[i]);
		if (qm == NULL || dlv__msg_find(d, sc.ids[i]) != NULL)
			continue;
		if (d->inflight_bytes >= DLV_INFLIGHT_BYTES_MAX) {
			retry_at = now; /* the next finishing message rescans */
			sc.more = false;
			break;
		}
		int st = sched_start_msg(d, qm, now, mono, SCHED_DUE);
		started += st == 0;
		if (st == -2 && now + 20 < retry_at)
			retry_at = now + 20; /* body not written yet: the cluster's next write */
		else if (st != 0 && now + 1000 < retry_at)
			retry_at = now + 1000;
	}
	if (started && (sc.more || (rc > 0 && (size_t)rc >= room + DLV_SCHED_BATCH + 1))) {
		dlv__sched_request(d); /* the rest next turn: other work goes first */
		return;
	}
	uint64_t next = sc.next_due < retry_at ? sc.next_due : retry_at;
	if (next != UINT64_MAX && next > now) {
		d->armed_ms = next;
		uv_timer_start(&d->sched_timer, dlv__sched_timer_cb, next - now, 0);
	}
}

void
dlv__sched_timer_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	d->armed_ms = 0;
	sched_scan(d);
}

/* Asks for a scan at the end of this loop turn (dlv__check_cb), coalesced; the zero timer makes
 * sure the loop does not block in poll first when the request comes from a timer or close callback.
 */
void
dlv__sched_request(struct delivery *d)
{
	if (d->closing || d->scan_wanted)
		return;
	d->scan_wanted = true;
	d->armed_ms = 0;
	uv_timer_start(&d->sched_timer, dlv__sched_timer_cb, 0, 0);
}

/* Once per loop turn: scan when asked to, or when the queue changed (commands applied). */
void
dlv__check_cb(uv_check_t *h)
{
	struct delivery *d = h->data;
	if (d->closing)
		return;
	struct cluster_stats st;
	cluster_stats(d->cluster, &st);
	if (st.applied_index != d->seen_applied) {
		d->seen_applied = st.applied_index;
		d->scan_wanted = true; /* the scan below */
	}
	if (d->scan_wanted)
		sched_scan(d);
}
