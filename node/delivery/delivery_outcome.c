/*
 * delivery_outcome.c - the results of attempts (delivery_int.h): per-recipient results
 * of a job, the Outcome command proposed through the log (proposed again after a backoff
 * when the cluster refuses it: the recipients would be delivered twice otherwise), the DSN
 * built and enqueued with it (RFC 3464), and one log line per recipient outcome.
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

/* ------------------------------------------------------------ outcomes */

struct ogroup {
	uint8_t kind;
	bool delay_notified;
	const char *reply, *relay, *status;
	uint64_t next;
	uint64_t epoch;
	size_t n;
	uint32_t *idx;
	Relay__Accept *dsn; /* attached DSN, or NULL */
};

static void
outcome_cb(void *arg, int status)
{
	struct pending_prop *p = arg;
	struct dmsg *m = p->msg;
	struct delivery *d = m->d;
	if (status != 0 && !d->closing) {
		p->tries++;
		log_warn(m->qid, "event=outcome-propose-failed error=\"%s\" tries=%u",
			 cluster_strerror(status), p->tries);
		p->next = d->retry_list;
		d->retry_list = p;
		uint64_t wait = (uint64_t)DLV_REPROPOSE_MIN_MS << (p->tries < 6 ? p->tries : 6);
		if (wait > DLV_REPROPOSE_MAX_MS)
			wait = DLV_REPROPOSE_MAX_MS;
		if (!uv_is_active((uv_handle_t *)&d->retry_timer) ||
		    uv_timer_get_due_in(&d->retry_timer) > wait)
			uv_timer_start(&d->retry_timer, dlv__retry_timer_cb, wait, 0);
		return;
	}
	free(p->packed);
	free(p);
	m->nprops--;
	if (m->nprops == 0 && m->njobs == 0) {
		dlv__msg_free(m);
		dlv__sched_request(d);
		dlv__maybe_done(d);
	}
}

void
dlv__retry_timer_cb(uv_timer_t *t)
{
	struct delivery *d = t->data;
	struct pending_prop *l = d->retry_list;
	d->retry_list = NULL;
	while (l != NULL) {
		struct pending_prop *p = l;
		l = l->next;
		dlv__propose_packed(p);
	}
}

void
dlv__propose_packed(struct pending_prop *p)
{
	struct dmsg *m = p->msg;
	struct delivery *d = m->d;
	Relay__Command *cmd = relay__command__unpack(NULL, p->len, p->packed);
	int rc =
	    cmd ? (d->closing ? CLUSTER_ECLOSED : cluster_propose(d->cluster, cmd, outcome_cb, p))
		: CLUSTER_ENOMEM;
	if (cmd)
		relay__command__free_unpacked(cmd, NULL);
	if (rc != 0) {
		/* As if the callback had failed: retried later (or dropped when closing). */
		if (d->closing) {
			free(p->packed);
			free(p);
			if (--m->nprops == 0 && m->njobs == 0) {
				dlv__msg_free(m);
				dlv__maybe_done(d);
			}
			return;
		}
		outcome_cb(p, rc);
	}
}

/* Packs cmd and proposes it for m (counted in m->nprops). */
static void
msg_propose(struct dmsg *m, const Relay__Command *cmd)
{
	struct delivery *d = m->d;
	struct pending_prop *p = calloc(1, sizeof(*p));
	size_t len = relay__command__get_packed_size(cmd);
	if (p == NULL || (p->packed = malloc(len ? len : 1)) == NULL) {
		free(p);
		log_error(m->qid, "event=outcome-lost error=\"out of memory\"");
		return;
	}
	p->len = relay__command__pack(cmd, p->packed);
	p->msg = m;
	m->nprops++;
	int rc = cluster_propose(d->cluster, cmd, outcome_cb, p);
	if (rc != 0) {
		if (d->closing) {
			log_warn(m->qid, "event=outcome-dropped error=\"%s\"",
				 cluster_strerror(rc));
			m->nprops--;
			free(p->packed);
			free(p);
			return;
		}
		outcome_cb(p, rc); /* queues a retry */
	}
}

/* What an expired recipient's reply starts with; the last error follows (or "none"). */
#define DLV_EXPIRED_PREFIX "queue lifetime expired; last error: "

/* The message came from mynetworks or an authenticated client (Accept.trusted; a record from
 * before that field: authenticated, or its client address in mynetworks). */
static bool
msg_trusted(const struct delivery *d, const Relay__QueueRecord *rec)
{
	if (rec->has_trusted)
		return rec->trusted;
	if (rec->auth_user != NULL && rec->auth_user[0] != '\0')
		return true;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
	if (rec->client_addr == NULL)
		return false;
	if (inet_pton(AF_INET, rec->client_addr, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, rec->client_addr, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	else
		return false;
	return config_cidr_match(&d->cfg->mynetworks, (const struct sockaddr *)&ss) == 1;
}

/* Builds a DSN of `action` for the recipients flagged in sel (n of them) into acc (body and
 * strings owned by the caller's buffers: *body_out to free).  Returns 0 or -1. */
static int
msg_build_dsn(struct dmsg *m, enum dsn_action action, const bool *sel, size_t n, Relay__Accept *acc,
	      Relay__Recipient *r, Relay__Recipient **rp, char *qid, size_t qidcap, char **body_out)
{
	struct delivery *d = m->d;
	const Relay__QueueRecord *rec = m->rec;
	uint64_t now = clock_wall_ms(); /* DSN dates, the DSN's received_ms */
	struct dsn_rcpt *dr = calloc(n, sizeof(*dr));
	char(*orc)[MTA_ORCPT_MAX + 1] = calloc(n, sizeof(*orc));
	char(*rmta)[MX_NAME_MAX + 2] = calloc(n, sizeof(*rmta));
	char last[64], until[64], arrival[64], date[64], msgid[160], envid[MTA_ENVID_MAX + 1];
	int rc = -1;
	if (dr == NULL || orc == NULL || rmta == NULL)
		goto out;
	dlv__rfc5322_date(last, sizeof(last), now);
	dlv__rfc5322_date(arrival, sizeof(arrival), rec->received_ms);
	dlv__rfc5322_date(date, sizeof(date), now);
	dlv__rfc5322_date(until, sizeof(until), rec->received_ms + d->cfg->queue_lifetime_ms);
	size_t k = 0;
	for (size_t i = 0; i < rec->n_rcpts && k < n; i++) {
		if (!sel[i])
			continue;
		const struct rcpt_result *res = &m->res[i];
		const Relay__Recipient *rr = rec->rcpts[i]->rcpt;
		struct dsn_rcpt *x = &dr[k];
		x->final_rcpt = rr->addr;
		x->orcpt = dlv__orcpt_decode(rr->orcpt, orc[k], sizeof(orc[k]));
		x->action = action;
		x->status = res->status[0] ? res->status
					   : (action == DSN_ACTION_DELIVERED ? "2.0.0" : "5.0.0");
		if (res->relay && res->relay[0]) {
			snprintf(rmta[k], sizeof(rmta[k]), "%s", res->relay);
			char *br = strchr(rmta[k], '[');
			if (br)
				*br = '\0';
			x->remote_mta = rmta[k][0] ? rmta[k] : NULL;
		}
		x->diag = res->reply && res->reply[0] ? res->reply : NULL;
		x->expired = res->expired;
		if (res->expired && x->diag != NULL &&
		    strncmp(x->diag, DLV_EXPIRED_PREFIX, strlen(DLV_EXPIRED_PREFIX)) == 0) {
			/* the DSN says "expired" with Status 4.4.7; its Diagnostic-Code is the
			 * last reply itself (dsn.h) */
			x->diag += strlen(DLV_EXPIRED_PREFIX);
			if (strcmp(x->diag, "none") == 0)
				x->diag = NULL;
		}
		x->last_attempt = last;
		x->will_retry_until = action == DSN_ACTION_DELAYED ? until : NULL;
		k++;
	}
	queue_id_make(&d->qid, now, qid, qidcap);
	snprintf(msgid, sizeof(msgid), "%s@%s", qid, d->cfg->hostname);
	/* bounce_content (issue 12 sec. 1): a stranger's message is never sent back whole to an
	 * address the stranger named, only its headers (text/rfc822-headers) */
	bool headers_only = !msg_trusted(d, rec) && strcmp(d->cfg->bounce_content, "full") != 0;
	struct dsn_input in = {
	    .reporting_mta = d->cfg->hostname,
	    .mail_from = rec->mail_from,
	    .envid = dlv__xtext_decode(rec->envid, envid, sizeof(envid)),
	    .ret = headers_only	  ? DSN_RET_HDRS
		   : rec->has_ret ? (enum dsn_ret)rec->ret
				  : DSN_RET_DEFAULT,
	    .arrival_date = arrival,
	    .date = date,
	    .message_id = msgid,
	    .rcpts = dr,
	    .nrcpts = k,
	    .orig = m->body,
	    .orig_len = m->body_len,
	    .orig_max = DLV_DSN_ORIG_MAX,
	};
	char *body = NULL;
	size_t blen = 0;
	int brc = dsn_build(&in, &body, &blen);
	if (brc == -EINVAL) {
		/* A value the builder refuses (header injection guard): drop the optional ones. */
		in.envid = NULL;
		for (size_t j = 0; j < k; j++) {
			dr[j].orcpt = NULL;
			dr[j].remote_mta = NULL;
			dr[j].diag = NULL;
		}
		brc = dsn_build(&in, &body, &blen);
	}
	if (brc != 0) {
		log_warn(m->qid, "event=dsn-failed action=%s error=%d", dsn_action_name(action),
			 brc);
		goto out;
	}
	relay__recipient__init(r);
	r->addr = rec->mail_from;
	r->has_notify = true;
	r->notify = 8; /* NEVER, relay.proto numbering */
	rp[0] = r;
	relay__accept__init(acc);
	acc->queue_id = qid;
	acc->mail_from = "";
	acc->n_rcpts = 1;
	acc->rcpts = rp;
	acc->body.data = (uint8_t *)body;
	acc->body.len = blen;
	acc->received_ms = now;
	acc->has_body_type = true;
	acc->body_type = mta_body_is_8bit(body, blen) ? 1 : 0;
	acc->has_smtputf8 = rec->has_smtputf8 && rec->smtputf8;
	acc->smtputf8 = acc->has_smtputf8;
	acc->client_addr = "";
	acc->helo = "";
	acc->auth_user = "";
	acc->node_id = d->cfg->node_id;
	acc->has_trusted = true; /* ours (and from <>: it never bounces) */
	acc->trusted = true;
	*body_out = body;
	d->st.dsns++;
	log_info(m->qid, "event=dsn action=%s dsn_id=%s to=<%s> nrcpt=%zu bounce_content=%s",
		 dsn_action_name(action), qid, rec->mail_from, k,
		 headers_only ? "headers" : "full");
	rc = 0;
out:
	free(dr);
	free(orc);
	free(rmta);
	return rc;
}

static const char *
status_word(uint8_t kind)
{
	return kind == RES_DELIVERED ? "sent" : kind == RES_DEFERRED ? "deferred" : "bounced";
}

/*
 * Every job of m is done: decide deferrals (retry schedule, lifetime), log one line per
 * recipient, build the DSNs and propose the Outcomes.
 */
static void
msg_complete(struct dmsg *m)
{
	struct delivery *d = m->d;
	const Relay__QueueRecord *rec = m->rec;
	const struct queue_msg *meta = queue_fsm_lookup(d->q, m->qid);
	/* Queue times (received_ms, next_attempt_ms, lifetime) are wall times that travel in log
	 * entries; they decide when an item is due, never who may act on it. */
	uint64_t now = clock_wall_ms();
	size_t n = rec->n_rcpts;
	size_t na = n ? n : 1;
	bool *fail_sel = calloc(na, sizeof(bool)), *ok_sel = calloc(na, sizeof(bool)),
	     *delay_sel = calloc(na, sizeof(bool));
	struct ogroup *g = calloc(na, sizeof(*g));
	uint32_t *idxbuf = calloc(na, sizeof(uint32_t));
	size_t ng = 0, nfail = 0, nok = 0, ndelay = 0;
	if (!fail_sel || !ok_sel || !delay_sel || !g || !idxbuf) {
		log_error(m->qid, "event=outcome-lost error=\"out of memory\"");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct rcpt_result *r = &m->res[i];
		if (!r->in_job || r->kind == RES_NONE)
			continue;
		const Relay__QueueRcpt *qr = rec->rcpts[i];
		const char *from = rec->mail_from;
		unsigned notify = dlv__notify_from_queue(qr->rcpt);
		if (r->kind == RES_DEFERRED) {
			unsigned attempts =
			    (meta && i < meta->nrcpts ? meta->rcpts[i].attempts : 0) + 1;
			uint64_t next;
			if (retry_next(&d->retry, rec->received_ms, now, attempts,
				       mx_rng_next(&d->rng), &next) != 0 ||
			    retry_expired(&d->retry, rec->received_ms, now)) {
				r->kind = RES_FAILED;
				r->expired = true;
				char buf[MTA_TEXT_MAX + 64];
				snprintf(buf, sizeof(buf), DLV_EXPIRED_PREFIX "%s",
					 r->reply ? r->reply : "none");
				free(r->reply);
				r->reply = dlv__dup_max(buf, QUEUE_REPLY_MAX);
				if (r->status[0] == '\0' || r->status[0] == '2')
					snprintf(r->status, sizeof(r->status), "4.4.7");
			} else {
				/* An attempt a drain abandoned is due again at once (on the next
				 * owner). */
				r->next_attempt_ms = d->abandon ? now : next;
				if (d->cfg->delay_warning_time_ms > 0 && !qr->delay_notified &&
				    now >= rec->received_ms + d->cfg->delay_warning_time_ms &&
				    dsn_should_notify(from, notify, DSN_ACTION_DELAYED, false)) {
					r->delay_dsn = true;
					delay_sel[i] = true;
					ndelay++;
				}
			}
		}
		if (r->kind == RES_FAILED &&
		    dsn_should_notify(from, notify, DSN_ACTION_FAILED, false)) {
			fail_sel[i] = true;
			nfail++;
		}
		if (r->kind == RES_DELIVERED &&
		    dsn_should_notify(from, notify, DSN_ACTION_DELIVERED, false)) {
			ok_sel[i] = true;
			nok++;
		}
		if (r->kind == RES_DELIVERED)
			d->st.rcpts_delivered++;
		else if (r->kind == RES_DEFERRED)
			d->st.rcpts_deferred++;
		else
			d->st.rcpts_failed++;
		char safe[MTA_ADDR_MAX * 4 + 1];
		char rep[MTA_TEXT_MAX * 4 + 1];
		uint64_t delay = now > rec->received_ms ? now - rec->received_ms : 0;
		log_info(m->qid,
			 "to=<%s> relay=%s delay=%" PRIu64 ".%" PRIu64 " dsn=%s status=%s (%s)",
			 log_safe(qr->rcpt->addr, strlen(qr->rcpt->addr), safe, sizeof(safe)),
			 r->relay && r->relay[0] ? r->relay : "none", delay / 1000,
			 (delay % 1000) / 100, r->status[0] ? r->status : "-", status_word(r->kind),
			 log_safe(r->reply ? r->reply : "", r->reply ? strlen(r->reply) : 0, rep,
				  sizeof(rep)));
		/* group */
		const char *reply = r->reply ? r->reply : "", *relay = r->relay ? r->relay : "";
		size_t j;
		for (j = 0; j < ng; j++)
			if (g[j].kind == r->kind && g[j].delay_notified == r->delay_dsn &&
			    g[j].next == r->next_attempt_ms && g[j].epoch == r->epoch &&
			    strcmp(g[j].reply, reply) == 0 && strcmp(g[j].relay, relay) == 0 &&
			    strcmp(g[j].status, r->status) == 0)
				break;
		if (j == ng) {
			g[ng].kind = r->kind;
			g[ng].delay_notified = r->delay_dsn;
			g[ng].reply = reply;
			g[ng].relay = relay;
			g[ng].status = r->status;
			g[ng].next = r->next_attempt_ms;
			g[ng].epoch = r->epoch;
			ng++;
		}
		g[j].n++;
	}
	/* Lay out the indexes per group. */
	size_t off = 0;
	for (size_t j = 0; j < ng; j++) {
		g[j].idx = idxbuf + off;
		off += g[j].n;
		g[j].n = 0;
	}
	for (size_t i = 0; i < n; i++) {
		struct rcpt_result *r = &m->res[i];
		if (!r->in_job || r->kind == RES_NONE)
			continue;
		const char *reply = r->reply ? r->reply : "", *relay = r->relay ? r->relay : "";
		for (size_t j = 0; j < ng; j++)
			if (g[j].kind == r->kind && g[j].delay_notified == r->delay_dsn &&
			    g[j].next == r->next_attempt_ms && g[j].epoch == r->epoch &&
			    strcmp(g[j].reply, reply) == 0 && strcmp(g[j].relay, relay) == 0 &&
			    strcmp(g[j].status, r->status) == 0) {
				g[j].idx[g[j].n++] = (uint32_t)i;
				break;
			}
	}
	/* DSNs: one per message and reason, attached to the first group of that kind. */
	Relay__Accept acc[3];
	Relay__Recipient dr[3];
	Relay__Recipient *drp[3][1];
	char dqid[3][40];
	char *dbody[3] = {NULL, NULL, NULL};
	struct {
		size_t count;
		bool *sel;
		enum dsn_action action;
		uint8_t kind;
		bool delay;
	} want[3] = {
	    {nfail, fail_sel, DSN_ACTION_FAILED, RES_FAILED, false},
	    {ndelay, delay_sel, DSN_ACTION_DELAYED, RES_DEFERRED, true},
	    {nok, ok_sel, DSN_ACTION_DELIVERED, RES_DELIVERED, false},
	};
	for (int w = 0; w < 3; w++) {
		if (want[w].count == 0)
			continue;
		if (msg_build_dsn(m, want[w].action, want[w].sel, want[w].count, &acc[w], &dr[w],
				  drp[w], dqid[w], sizeof(dqid[w]), &dbody[w]) != 0)
			continue;
		for (size_t j = 0; j < ng; j++)
			if (g[j].kind == want[w].kind && g[j].dsn == NULL &&
			    (!want[w].delay || g[j].delay_notified)) {
				g[j].dsn = &acc[w];
				break;
			}
	}
	for (size_t j = 0; j < ng; j++) {
		Relay__Outcome o = RELAY__OUTCOME__INIT;
		o.queue_id = m->qid;
		o.n_rcpt_index = g[j].n;
		o.rcpt_index = g[j].idx;
		o.kind = g[j].kind == RES_DELIVERED  ? RELAY__OUTCOME_KIND__DELIVERED
			 : g[j].kind == RES_DEFERRED ? RELAY__OUTCOME_KIND__DEFERRED
						     : RELAY__OUTCOME_KIND__FAILED;
		o.at_ms = now;
		o.has_epoch = true;
		o.epoch = g[j].epoch;
		if (g[j].kind == RES_DEFERRED) {
			o.has_next_attempt_ms = true;
			o.next_attempt_ms = g[j].next;
		}
		o.reply = (char *)g[j].reply;
		o.relay = (char *)g[j].relay;
		o.dsn_status = (char *)g[j].status;
		o.dsn = g[j].dsn;
		if (g[j].delay_notified) {
			o.has_delay_notified = true;
			o.delay_notified = true;
		}
		Relay__Command cmd = RELAY__COMMAND__INIT;
		cmd.cmd_case = RELAY__COMMAND__CMD_OUTCOME;
		cmd.outcome = &o;
		msg_propose(m, &cmd);
	}
	for (int w = 0; w < 3; w++)
		free(dbody[w]);
out:
	free(fail_sel);
	free(ok_sel);
	free(delay_sel);
	free(g);
	free(idxbuf);
}

/* One job of m finished (or was dropped). */
void
dlv__msg_job_done(struct dmsg *m)
{
	struct delivery *d = m->d;
	if (--m->njobs > 0)
		return;
	/* Also while closing: what was delivered or failed before the close is proposed (the
	 * cluster closes after delivery); recipients cut by the close have no result and stay
	 * queued as they were. */
	msg_complete(m);
	if (m->nprops == 0) {
		dlv__msg_free(m);
		dlv__sched_request(d);
		dlv__maybe_done(d);
	}
}

void
dlv__job_free(struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		free(j->orcpt[k]);
	free(j);
}

/* Records the result of recipient slot k of job j. */
static void
job_set(struct djob *j, size_t k, uint8_t kind, const struct mta_diag *diag, const char *relay)
{
	struct rcpt_result *r = &j->msg->res[j->idx[k]];
	r->kind = kind;
	snprintf(r->status, sizeof(r->status), "%s",
		 diag && diag->enh[0] ? diag->enh
				      : (kind == RES_DELIVERED	? "2.0.0"
					 : kind == RES_DEFERRED ? "4.0.0"
								: "5.0.0"));
	free(r->reply);
	free(r->relay);
	r->reply = dlv__dup_max(diag ? diag->text : "", QUEUE_REPLY_MAX);
	r->relay = dlv__dup_max(relay, QUEUE_RELAY_MAX); /* the bounds queue_validate checks */
}

/* The job is over for this run: pending recipients become deferred with its last error. */
void
dlv__job_done(struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED) {
			struct mta_diag dg = j->last;
			if (dg.code == 0) {
				dg.code = 451;
				snprintf(dg.enh, sizeof(dg.enh), "4.4.1");
				snprintf(dg.text, sizeof(dg.text),
					 "451 4.4.1 no host could be reached");
			}
			j->rc[k].state = MTA_RCPT_DEFERRED;
			job_set(j, k, RES_DEFERRED, &dg, j->last_relay);
		}
	struct dmsg *m = j->msg;
	dlv__job_free(j);
	dlv__msg_job_done(m);
}

/*
 * The job ends without a result for its unfinished recipients: an attempt abandoned before its
 * end of data (the commit gate: the lease lapsed or the domain moved).  They stay queued as
 * they are: no Outcome, no retry step consumed, due again at once for whoever owns them (this
 * node once it holds a lease again, or the domain's new owner).  Recipients the destination
 * already answered for good (5xx/4xx to RCPT) keep those results (dlv__job_harvest first).
 */
void
dlv__job_drop(struct djob *j)
{
	struct dmsg *m = j->msg;
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED)
			m->res[j->idx[k]].in_job = false;
	dlv__job_free(j);
	dlv__msg_job_done(m);
}

/*
 * The job's destination is dead and its domains are deferred (DeferDomain committed): its
 * pending recipients end without an outcome (they stay queued; the state machine keeps them
 * out of the due lists until the deferral ends) - except when the message's queue_lifetime is
 * over: they are deferred with the destination's error, which msg_complete turns into a bounce.
 * Either way each recipient is counted deferred and gets its `status=deferred` log line, as an
 * operator reads them (Postfix logs "delivery temporarily suspended" per message likewise): only
 * the replicated Outcome is spared.
 */
void
dlv__job_suspend(struct djob *j, const struct mta_diag *dg, const char *relay)
{
	struct dmsg *m = j->msg;
	uint64_t now = clock_wall_ms();
	bool expired = retry_expired(&m->d->retry, m->rec->received_ms, now);
	for (size_t k = 0; k < j->n; k++) {
		if (j->rc[k].state != MTA_RCPT_PENDING && j->rc[k].state != MTA_RCPT_ACCEPTED)
			continue;
		if (expired) {
			j->rc[k].state = MTA_RCPT_DEFERRED;
			job_set(j, k, RES_DEFERRED, dg, relay);
			continue; /* counted and logged with the outcome */
		}
		m->res[j->idx[k]].in_job = false;
		m->d->st.rcpts_deferred++;
		const Relay__QueueRcpt *qr = m->rec->rcpts[j->idx[k]];
		char safe[MTA_ADDR_MAX * 4 + 1];
		char rep[MTA_TEXT_MAX * 4 + 1];
		uint64_t delay = now > m->rec->received_ms ? now - m->rec->received_ms : 0;
		log_info(m->qid,
			 "to=<%s> relay=%s delay=%" PRIu64 ".%" PRIu64
			 " dsn=%s status=deferred (%s; domain deferred as a whole)",
			 log_safe(qr->rcpt->addr, strlen(qr->rcpt->addr), safe, sizeof(safe)),
			 relay && relay[0] ? relay : "none", delay / 1000, (delay % 1000) / 100,
			 dg && dg->enh[0] ? dg->enh : "4.0.0",
			 log_safe(dg ? dg->text : "", dg ? strlen(dg->text) : 0, rep, sizeof(rep)));
	}
	dlv__job_free(j);
	dlv__msg_job_done(m);
}

/* Fails (permanent) or defers every recipient of j with one reason. */
void
dlv__job_finish_all(struct djob *j, bool permanent, const struct mta_diag *dg, const char *relay)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED) {
			j->rc[k].state = permanent ? MTA_RCPT_FAILED : MTA_RCPT_DEFERRED;
			job_set(j, k, permanent ? RES_FAILED : RES_DEFERRED, dg, relay);
		}
	dlv__job_done(j);
}

/* Harvests the final states of the job's transaction. */
void
dlv__job_harvest(struct djob *j, const char *relay)
{
	for (size_t k = 0; k < j->n; k++) {
		struct mta_rcpt *r = &j->rc[k];
		struct rcpt_result *res = &j->msg->res[j->idx[k]];
		if (res->kind != RES_NONE)
			continue;
		if (r->state == MTA_RCPT_DELIVERED)
			job_set(j, k, RES_DELIVERED, &r->diag, relay);
		else if (r->state == MTA_RCPT_FAILED)
			job_set(j, k, RES_FAILED, &r->diag, relay);
		else if (r->state == MTA_RCPT_DEFERRED)
			job_set(j, k, RES_DEFERRED, &r->diag, relay);
	}
}

bool
dlv__job_has_pending(const struct djob *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_PENDING || j->rc[k].state == MTA_RCPT_ACCEPTED)
			return true;
	return false;
}

/* Prepares the transaction for the job's pending recipients. */
void
dlv__job_txn(struct djob *j)
{
	const Relay__QueueRecord *rec = j->msg->rec;
	struct mta_txn *t = &j->txn;
	memset(t, 0, sizeof(*t));
	t->mail_from = rec->mail_from;
	t->ret = rec->has_ret ? (enum mta_ret)rec->ret : MTA_RET_NONE;
	t->envid = j->msg->envid[0] ? j->msg->envid : NULL;
	t->body = j->msg->body;
	t->body_len = j->msg->body_len;
	t->body_8bit = j->msg->body_8bit;
	t->rcpts = j->rc;
	t->nrcpts = j->n;
	for (size_t k = 0; k < j->n; k++)
		if (j->rc[k].state == MTA_RCPT_ACCEPTED)
			j->rc[k].state = MTA_RCPT_PENDING;
	t->smtputf8 = (rec->has_smtputf8 && rec->smtputf8) || mta_txn_needs_smtputf8(t);
}
