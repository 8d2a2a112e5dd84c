/*
 * admin.c: relayd's admin endpoint (admin.h): decodes an AdminRequest, answers from this node's
 * view (status, queue list/show) or proposes the change through the cluster (queue delete), and
 * replies one AdminReply.  Requests are served one at a time (the transport reads the next one
 * only after the reply), so a change in progress simply holds the next request back.
 *
 * Failure modes: an undecodable request gets ok=false "malformed request"; a change whose
 * proposal fails reports the cluster error per queue id; nothing a client sends is trusted
 * beyond the protobuf bounds (ids are checked against QUEUE_ID_MAX, lists against
 * ADMIN_LIST_MAX / ADMIN_DELETE_MAX).
 */
#include "admin.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/time.h>

#include "admin.pb-c.h"
#include "cluster.h"
#include "config.h"
#include "log.h"
#include "queue_fsm.h"
#include "smtp_server.h" /* smtp_quota_client_key */
#include "transport.h"

#include <arpa/inet.h>

/* The queue change in progress: one command per message through the log. */
enum admin_op { ADMIN_OP_DELETE, ADMIN_OP_RETRY, ADMIN_OP_HOLD, ADMIN_OP_RELEASE };

static const char *const admin_op_names[] = {"delete", "retry", "hold", "release"};

struct admin {
	uv_loop_t *loop;
	struct transport_admin *ta; /* NULL for a local endpoint (admin_new_local) */
	void (*reply)(void *arg, const void *data, size_t len); /* local: where replies go */
	void *reply_arg;
	struct cluster *cluster;
	const struct relay_config *cfg;
	bool closing;
	/* the cluster change in progress (node add/remove, drain): its callback replies */
	struct admin_cc *cc;
	/* the queue change in progress */
	enum admin_op op;
	size_t del_pending;
	size_t n_deleted, n_not_found, n_failed;
	char **deleted, **not_found; /* owned, each up to ADMIN_DELETE_MAX */
	char del_error[160];
	struct admin_del **dels; /* owned array; entries borrowed until their callback */
	size_t ndels;
};

/* A cluster change waiting for its commit. */
struct admin_cc {
	struct admin *a; /* NULL once the admin endpoint closed (the callback then only frees) */
	char what[16];	 /* "node add", "node remove", "drain" */
	char node[QUEUE_NODE_MAX + 1];
};

struct admin_del {
	struct admin *a; /* NULL once the admin endpoint closed (the callback then only frees) */
	size_t slot;	 /* position in a->dels */
	char queue_id[QUEUE_ID_MAX + 1];
};

static uint64_t
admin_now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* The reply bytes to the client (the listener's, or a local endpoint's hook). */
static void
admin_reply_bytes(struct admin *a, const void *data, size_t len)
{
	if (a->ta != NULL)
		transport_admin_reply(a->ta, data, len);
	else
		a->reply(a->reply_arg, data, len);
}

static void
admin_send(struct admin *a, const Relay__AdminReply *r)
{
	size_t len = relay__admin_reply__get_packed_size(r);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL) {
		/* cannot even say so: reply an empty (undecodable) frame, the client reports it */
		admin_reply_bytes(a, "", 0);
		return;
	}
	relay__admin_reply__pack(r, buf);
	admin_reply_bytes(a, buf, len);
	free(buf);
}

static void
admin_error(struct admin *a, const char *msg)
{
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = false;
	r.error = (char *)msg;
	admin_send(a, &r);
}

/* A message is "deferred" when a queued recipient was tried and waits for its next attempt,
 * or when it waits for its domain's deferral (a dead destination: DeferDomain). */
static bool
admin_msg_deferred(const struct queue_fsm *q, const struct queue_msg *m, uint64_t now,
		   uint32_t *max_attempts)
{
	bool tried = false;
	uint32_t att = 0;
	for (uint32_t i = 0; i < m->nrcpts; i++) {
		const struct queue_rcpt_meta *r = &m->rcpts[i];
		if (r->state != QUEUE_RCPT_QUEUED)
			continue;
		if (r->attempts > att)
			att = r->attempts;
		if (r->attempts > 0)
			tried = true;
	}
	if (max_attempts)
		*max_attempts = att;
	uint64_t due = queue_fsm_due_ms(q, m);
	return due > now && (tried || due > m->next_attempt_ms);
}

/* In the queue state machine's member table (ownership). */
static bool
admin_member_known(struct admin *a, const char *node)
{
	static struct queue_member mem[QUEUE_MEMBERS_MAX];
	size_t n = queue_fsm_members(cluster_queue(a->cluster), mem, QUEUE_MEMBERS_MAX);
	for (size_t i = 0; i < n && i < QUEUE_MEMBERS_MAX; i++)
		if (strcmp(mem[i].node, node) == 0)
			return true;
	return false;
}

static void
admin_set_ownership(Relay__PeerStatus *p, const struct queue_member *m)
{
	p->owner_state = (char *)queue_member_state_name(m->state);
	p->has_domains = p->has_rcpts_owned = p->has_rcpts_deferred = true;
	p->domains = m->domains;
	p->rcpts_owned = m->rcpts_owned;
	p->rcpts_deferred = m->rcpts_deferred;
	p->has_inflight = p->has_renew_age_ms = true;
	p->inflight = m->inflight;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	p->renew_age_ms = m->renew_at_ms == 0 ? -1 : now - (int64_t)m->renew_at_ms;
}

/* Domains for one status reply: at most ADMIN_DOMAINS_MAX, strings copied. */
struct admin_domains {
	Relay__DomainStatus *ds;
	Relay__DomainStatus **dp;
	char (*names)[QUEUE_DOMAIN_MAX + 1];
	char (*owners)[QUEUE_NODE_MAX + 1];
	size_t n;
	bool truncated;
};

static int
admin_domain_cb(void *arg, const char *domain, const char *owner, uint64_t epoch,
		uint64_t rcpts_queued)
{
	struct admin_domains *d = arg;
	if (d->n == ADMIN_DOMAINS_MAX) {
		d->truncated = true;
		return 1;
	}
	Relay__DomainStatus *x = &d->ds[d->n];
	relay__domain_status__init(x);
	snprintf(d->names[d->n], sizeof(d->names[d->n]), "%s", domain);
	snprintf(d->owners[d->n], sizeof(d->owners[d->n]), "%s", owner ? owner : "");
	x->domain = d->names[d->n];
	x->owner = d->owners[d->n];
	x->epoch = epoch;
	x->rcpts_queued = rcpts_queued;
	d->dp[d->n] = x;
	d->n++;
	return 0;
}

static void
admin_status(struct admin *a)
{
	struct cluster_status cs;
	struct queue_counts qc;
	struct queue_fsm *q = cluster_queue(a->cluster);
	uint64_t now = admin_now_ms(), oldest = 0, deferred = 0;
	cluster_status(a->cluster, &cs);
	queue_fsm_counts(q, &qc);
	for (const struct queue_msg *m = queue_fsm_first(q); m != NULL; m = queue_fsm_next(q, m)) {
		if (oldest == 0 || m->received_ms < oldest)
			oldest = m->received_ms;
		for (uint32_t i = 0; i < m->nrcpts; i++)
			if (m->rcpts[i].state == QUEUE_RCPT_QUEUED && m->rcpts[i].attempts > 0)
				deferred++;
	}
	Relay__StatusReply st = RELAY__STATUS_REPLY__INIT;
	st.node_id = (char *)a->cfg->node_id;
	st.role = (char *)(cs.replicated ? cs.role : "single");
	st.has_term = true;
	st.term = cs.term;
	st.leader = cs.replicated ? cs.leader : (char *)a->cfg->node_id;
	st.has_commit_index = st.has_applied_index = st.has_last_index = true;
	st.commit_index = cs.commit_index;
	st.applied_index = cs.applied_index;
	st.last_index = cs.last_index;
	st.has_messages = st.has_rcpts_queued = st.has_rcpts_deferred = st.has_oldest_ms = true;
	st.messages = qc.messages;
	st.rcpts_queued = qc.rcpts[QUEUE_RCPT_QUEUED];
	st.rcpts_deferred = deferred;
	st.oldest_ms = oldest;
	st.has_leader_changes = st.has_now_ms = true;
	st.leader_changes = cs.leader_changes;
	st.now_ms = now;
	/* members: the address book, then members only the queue's member table knows */
	static Relay__PeerStatus ps[CLUSTER_MAX_PEERS + QUEUE_MEMBERS_MAX];
	static Relay__PeerStatus *pp[CLUSTER_MAX_PEERS + QUEUE_MEMBERS_MAX];
	static struct queue_member mem[QUEUE_MEMBERS_MAX];
	bool mem_used[QUEUE_MEMBERS_MAX] = {false};
	size_t nmem = queue_fsm_members(q, mem, QUEUE_MEMBERS_MAX);
	if (nmem > QUEUE_MEMBERS_MAX)
		nmem = QUEUE_MEMBERS_MAX;
	Relay__PeerStatus self = RELAY__PEER_STATUS__INIT;
	Relay__PeerStatus *selfp = &self;
	if (cs.replicated) {
		for (unsigned i = 0; i < cs.n_peers && i < CLUSTER_MAX_PEERS; i++) {
			const struct cluster_peer_status *p = &cs.peers[i];
			relay__peer_status__init(&ps[i]);
			ps[i].id = (char *)p->name;
			ps[i].addr = (char *)p->addr;
			ps[i].membership = (char *)(p->membership ? p->membership : "");
			ps[i].has_self = ps[i].has_connected = ps[i].has_healthy = true;
			ps[i].self = p->self;
			ps[i].connected = p->connected;
			ps[i].has_last_contact_ms = true;
			ps[i].last_contact_ms = p->last_contact_ms;
			ps[i].has_incarnation = ps[i].has_incarnation_known = true;
			ps[i].incarnation = p->incarnation;
			ps[i].incarnation_known = p->incarnation_known;
			ps[i].has_replaced_incarnation = p->replaced_incarnation != 0;
			ps[i].replaced_incarnation = p->replaced_incarnation;
			if (strcmp(st.role, "leader") == 0) {
				ps[i].has_match = ps[i].has_lag = true;
				ps[i].match = p->match;
				ps[i].lag = p->lag;
			}
			/* healthy: ourselves, or heard from within a few election timeouts */
			ps[i].healthy = p->self || (p->connected && p->last_contact_ms >= 0 &&
						    p->last_contact_ms < 5000);
			pp[i] = &ps[i];
		}
		st.n_peers = cs.n_peers;
		st.peers = pp;
		st.has_cluster_id = st.has_incarnation = true;
		st.cluster_id = cs.cluster_id;
		st.incarnation = cs.incarnation;
		st.boot_phase = (char *)(cs.boot_phase ? cs.boot_phase : "");
	} else {
		self.id = (char *)a->cfg->node_id;
		self.membership = "voter";
		self.has_self = self.has_connected = self.has_healthy = true;
		self.self = self.connected = self.healthy = true;
		st.n_peers = 1;
		st.peers = &selfp;
	}
	for (size_t i = 0; i < st.n_peers; i++)
		for (size_t k = 0; k < nmem; k++)
			if (!mem_used[k] && strcmp(mem[k].node, st.peers[i]->id) == 0) {
				admin_set_ownership(st.peers[i], &mem[k]);
				mem_used[k] = true;
				/* A follower hears only from the leader; a member whose lease renewal
				 * committed recently reached the majority, so it is healthy too. */
				Relay__PeerStatus *x = st.peers[i];
				if (!x->healthy && x->renew_age_ms >= 0 &&
				    (uint64_t)x->renew_age_ms < 2 * a->cfg->lease_ms + 1000 &&
				    (mem[k].state == QUEUE_MEMBER_LIVE ||
				     mem[k].state == QUEUE_MEMBER_DRAINING))
					x->healthy = true;
			}
	if (cs.replicated) {
		for (size_t k = 0; k < nmem; k++) {
			if (mem_used[k])
				continue;
			Relay__PeerStatus *x = &ps[st.n_peers];
			relay__peer_status__init(x);
			x->id = mem[k].node;
			x->membership = "";
			admin_set_ownership(x, &mem[k]);
			pp[st.n_peers++] = x;
		}
	}
	struct admin_domains dom = {
	    .ds = calloc(ADMIN_DOMAINS_MAX, sizeof(*dom.ds)),
	    .dp = calloc(ADMIN_DOMAINS_MAX, sizeof(*dom.dp)),
	    .names = calloc(ADMIN_DOMAINS_MAX, sizeof(*dom.names)),
	    .owners = calloc(ADMIN_DOMAINS_MAX, sizeof(*dom.owners)),
	};
	if (dom.ds && dom.dp && dom.names && dom.owners) {
		queue_fsm_domains(q, admin_domain_cb, &dom);
		st.n_domains = dom.n;
		st.domains = dom.dp;
		st.has_domains_truncated = true;
		st.domains_truncated = dom.truncated;
	}
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = true;
	r.status = &st;
	admin_send(a, &r);
	free(dom.ds);
	free(dom.dp);
	free(dom.names);
	free(dom.owners);
}

static bool
admin_rcpt_in_domain(const Relay__QueueRecord *rec, const char *domain)
{
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		const Relay__QueueRcpt *r = rec->rcpts[i];
		if (r->state != RELAY__RCPT_STATE__RCPT_QUEUED || r->rcpt == NULL ||
		    r->rcpt->addr == NULL)
			continue;
		const char *at = strrchr(r->rcpt->addr, '@');
		if (at != NULL && strcasecmp(at + 1, domain) == 0)
			return true;
	}
	return false;
}

static void
admin_queue_list(struct admin *a, const Relay__QueueListRequest *req)
{
	struct queue_fsm *q = cluster_queue(a->cluster);
	uint64_t now = admin_now_ms();
	uint32_t limit = req->has_limit && req->limit > 0 && req->limit < ADMIN_LIST_MAX
			     ? req->limit
			     : ADMIN_LIST_MAX;
	const char *want = req->state && req->state[0] ? req->state : NULL;
	if (want && strcmp(want, "active") && strcmp(want, "deferred")) {
		admin_error(a, "queue list: --state must be active or deferred");
		return;
	}
	Relay__QueueListItem *items = calloc(limit, sizeof(*items));
	Relay__QueueListItem **ip = calloc(limit, sizeof(*ip));
	Relay__QueueRecord **recs = calloc(limit, sizeof(*recs));
	if (items == NULL || ip == NULL || recs == NULL) {
		free(items);
		free(ip);
		free(recs);
		admin_error(a, "out of memory");
		return;
	}
	size_t n = 0;
	bool truncated = false;
	for (const struct queue_msg *m = queue_fsm_first(q); m != NULL; m = queue_fsm_next(q, m)) {
		uint32_t att;
		bool deferred = admin_msg_deferred(q, m, now, &att);
		if (want && strcmp(want, deferred ? "deferred" : "active") != 0)
			continue;
		/* the domain from memory: only the messages listed are read from the store */
		if (req->domain && req->domain[0] && !queue_fsm_msg_in_domain(q, m, req->domain))
			continue;
		Relay__QueueRecord *rec = NULL;
		if (queue_fsm_read_envelope(q, m->queue_id, &rec) != 0 || rec == NULL)
			continue;
		if (req->domain && req->domain[0] && !admin_rcpt_in_domain(rec, req->domain)) {
			relay__queue_record__free_unpacked(rec, NULL);
			continue;
		}
		if (n == limit) {
			relay__queue_record__free_unpacked(rec, NULL);
			truncated = true;
			break;
		}
		Relay__QueueListItem *it = &items[n];
		relay__queue_list_item__init(it);
		it->queue_id = (char *)m->queue_id;
		it->from = rec->mail_from;
		it->received_ms = m->received_ms;
		it->size = m->size;
		it->nrcpts = m->nrcpts;
		it->nqueued = m->nqueued;
		it->has_next_attempt_ms = it->has_attempts = true;
		it->next_attempt_ms = queue_fsm_due_ms(q, m);
		it->attempts = att;
		it->state = deferred ? "deferred" : "active";
		for (size_t i = 0; i < rec->n_rcpts; i++)
			if (rec->rcpts[i]->state == RELAY__RCPT_STATE__RCPT_QUEUED &&
			    rec->rcpts[i]->rcpt) {
				it->first_rcpt = rec->rcpts[i]->rcpt->addr;
				break;
			}
		recs[n] = rec;
		ip[n] = it;
		n++;
	}
	Relay__QueueListReply lr = RELAY__QUEUE_LIST_REPLY__INIT;
	lr.n_items = n;
	lr.items = ip;
	lr.has_truncated = lr.has_now_ms = true;
	lr.truncated = truncated;
	lr.now_ms = now;
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = true;
	r.queue_list = &lr;
	admin_send(a, &r);
	for (size_t i = 0; i < n; i++)
		relay__queue_record__free_unpacked(recs[i], NULL);
	free(recs);
	free(ip);
	free(items);
}

/* A queued recipient whose domain is deferred as a whole (a dead destination: DeferDomain)
 * shows the deferral, as Postfix's mailq shows "delivery temporarily suspended": its end as
 * next_attempt_ms and, when the destination was tried after the recipient's own last attempt,
 * that try (the deferral's at_ms and reason) as last_attempt_ms and last_reply.  The strings
 * are the record's (freed with it). */
static void
admin_show_deferral(struct queue_fsm *q, Relay__QueueRecord *rec, uint64_t now)
{
	for (size_t i = 0; i < rec->n_rcpts; i++) {
		Relay__QueueRcpt *rc = rec->rcpts[i];
		if (rc->state != RELAY__RCPT_STATE__RCPT_QUEUED || rc->rcpt == NULL ||
		    rc->rcpt->addr == NULL)
			continue;
		char dom[QUEUE_DOMAIN_MAX + 1], why[QUEUE_REPLY_MAX + 1];
		struct queue_domain_info di;
		queue_addr_domain(rc->rcpt->addr, dom);
		if (queue_fsm_domain_info(q, dom, &di) != 0 || di.defer_until <= now)
			continue;
		if (!rc->has_next_attempt_ms || rc->next_attempt_ms < di.defer_until) {
			rc->has_next_attempt_ms = true;
			rc->next_attempt_ms = di.defer_until;
		}
		if ((rc->has_last_attempt_ms && rc->last_attempt_ms > di.defer_at) ||
		    queue_fsm_domain_reason(q, dom, why, sizeof(why)) != 0 || why[0] == '\0')
			continue;
		char *dup = strdup(why);
		if (dup == NULL)
			continue;
		free(rc->last_reply);
		rc->last_reply = dup;
		rc->has_last_attempt_ms = true;
		rc->last_attempt_ms = di.defer_at;
	}
}

static void
admin_queue_show(struct admin *a, const Relay__QueueShowRequest *req)
{
	Relay__QueueRecord *rec = NULL;
	if (strlen(req->queue_id) > QUEUE_ID_MAX ||
	    queue_fsm_read_record(cluster_queue(a->cluster), req->queue_id, &rec) != 0 ||
	    rec == NULL) {
		char msg[QUEUE_ID_MAX + 40];
		snprintf(msg, sizeof(msg), "no such message: %.*s", (int)QUEUE_ID_MAX,
			 req->queue_id);
		admin_error(a, msg);
		return;
	}
	admin_show_deferral(cluster_queue(a->cluster), rec, admin_now_ms());
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = true;
	r.queue_show = rec;
	admin_send(a, &r);
	relay__queue_record__free_unpacked(rec, NULL);
}

static void
admin_del_reset(struct admin *a)
{
	for (size_t i = 0; i < a->n_deleted; i++)
		free(a->deleted[i]);
	for (size_t i = 0; i < a->n_not_found; i++)
		free(a->not_found[i]);
	free(a->deleted);
	free(a->not_found);
	free(a->dels);
	a->deleted = a->not_found = NULL;
	a->dels = NULL;
	a->ndels = 0;
	a->n_deleted = a->n_not_found = a->n_failed = 0;
	a->del_error[0] = '\0';
}

static void
admin_del_finish(struct admin *a)
{
	Relay__QueueDeleteReply dr = RELAY__QUEUE_DELETE_REPLY__INIT;
	Relay__QueueChangeReply cr = RELAY__QUEUE_CHANGE_REPLY__INIT;
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = a->n_failed == 0;
	r.error = a->n_failed ? a->del_error : NULL;
	if (a->op == ADMIN_OP_DELETE) {
		dr.n_deleted = a->n_deleted;
		dr.deleted = a->deleted;
		dr.n_not_found = a->n_not_found;
		dr.not_found = a->not_found;
		r.queue_delete = &dr;
	} else {
		cr.n_done = a->n_deleted;
		cr.done = a->deleted;
		cr.n_not_found = a->n_not_found;
		cr.not_found = a->not_found;
		r.queue_change = &cr;
	}
	admin_send(a, &r);
	admin_del_reset(a);
}

static void
admin_del_cb(void *arg, int status)
{
	struct admin_del *d = arg;
	struct admin *a = d->a;
	if (a != NULL)
		a->dels[d->slot] = NULL;
	if (a != NULL && !a->closing) {
		if (status == 0) {
			a->deleted[a->n_deleted++] = strdup(d->queue_id);
			log_info(d->queue_id, "event=%s by=admin",
				 a->op == ADMIN_OP_DELETE  ? "deleted"
				 : a->op == ADMIN_OP_RETRY ? "retry"
				 : a->op == ADMIN_OP_HOLD  ? "held"
							   : "released");
		} else if (status == CLUSTER_ENOTFOUND) {
			a->not_found[a->n_not_found++] = strdup(d->queue_id);
		} else {
			a->n_failed++;
			snprintf(a->del_error, sizeof(a->del_error), "%s %s: %s",
				 admin_op_names[a->op], d->queue_id, cluster_strerror(status));
		}
		if (--a->del_pending == 0)
			admin_del_finish(a);
	}
	free(d);
}

static int
admin_del_one(struct admin *a, const char *id)
{
	struct admin_del *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return CLUSTER_ENOMEM;
	d->a = a;
	d->slot = a->ndels;
	snprintf(d->queue_id, sizeof(d->queue_id), "%s", id);
	Relay__Delete del = RELAY__DELETE__INIT;
	Relay__Retry retry = RELAY__RETRY__INIT;
	Relay__Hold hold = RELAY__HOLD__INIT;
	Relay__Release rel = RELAY__RELEASE__INIT;
	Relay__Command cmd = RELAY__COMMAND__INIT;
	uint64_t now = admin_now_ms(); /* the proposing node's clock (relay.proto) */
	switch (a->op) {
	case ADMIN_OP_DELETE:
		del.queue_id = d->queue_id;
		cmd.cmd_case = RELAY__COMMAND__CMD_DELETE;
		cmd.delete_ = &del;
		break;
	case ADMIN_OP_RETRY:
		retry.queue_id = d->queue_id;
		retry.at_ms = now;
		cmd.cmd_case = RELAY__COMMAND__CMD_RETRY;
		cmd.retry = &retry;
		break;
	case ADMIN_OP_HOLD:
		hold.queue_id = d->queue_id;
		cmd.cmd_case = RELAY__COMMAND__CMD_HOLD;
		cmd.hold = &hold;
		break;
	case ADMIN_OP_RELEASE:
		rel.queue_id = d->queue_id;
		rel.at_ms = now;
		cmd.cmd_case = RELAY__COMMAND__CMD_RELEASE;
		cmd.release = &rel;
		break;
	}
	int rc = cluster_propose(a->cluster, &cmd, admin_del_cb, d);
	if (rc != 0) {
		free(d);
		return rc;
	}
	a->dels[a->ndels++] = d;
	return 0;
}

/* One command per message (queue_ids, plus every deferred message when all_deferred). */
static void
admin_queue_op(struct admin *a, enum admin_op op, char **queue_ids, size_t n_queue_ids,
	       bool all_deferred)
{
	struct queue_fsm *q = cluster_queue(a->cluster);
	const char *ids[ADMIN_DELETE_MAX];
	size_t n = 0;
	a->op = op;
	if (n_queue_ids > ADMIN_DELETE_MAX) {
		char msg[80];
		snprintf(msg, sizeof(msg), "queue %s: more than %u ids in one request",
			 admin_op_names[op], ADMIN_DELETE_MAX);
		admin_error(a, msg);
		return;
	}
	for (size_t i = 0; i < n_queue_ids && n < ADMIN_DELETE_MAX; i++)
		if (strlen(queue_ids[i]) <= QUEUE_ID_MAX)
			ids[n++] = queue_ids[i];
	uint64_t now = admin_now_ms();
	if (all_deferred)
		for (const struct queue_msg *m = queue_fsm_first(q);
		     m != NULL && n < ADMIN_DELETE_MAX; m = queue_fsm_next(q, m))
			if (admin_msg_deferred(q, m, now, NULL))
				ids[n++] = m->queue_id;
	a->deleted = calloc(n ? n : 1, sizeof(char *));
	a->not_found = calloc(n ? n : 1, sizeof(char *));
	a->dels = calloc(n ? n : 1, sizeof(*a->dels));
	if (a->deleted == NULL || a->not_found == NULL || a->dels == NULL) {
		admin_del_reset(a);
		admin_error(a, "out of memory");
		return;
	}
	if (n == 0) {
		admin_del_finish(a);
		return;
	}
	/* ids may point into the fsm (all_deferred): copy each before proposing */
	a->del_pending = n + 1; /* +1 held until every proposal is out */
	for (size_t i = 0; i < n; i++) {
		char id[QUEUE_ID_MAX + 1];
		snprintf(id, sizeof(id), "%s", ids[i]);
		int rc = admin_del_one(a, id);
		if (rc != 0) {
			a->n_failed++;
			snprintf(a->del_error, sizeof(a->del_error), "delete %s: %s", id,
				 cluster_strerror(rc));
			a->del_pending--;
		}
	}
	if (--a->del_pending == 0)
		admin_del_finish(a);
}

static void
admin_queue_delete(struct admin *a, const Relay__QueueDeleteRequest *req)
{
	admin_queue_op(a, ADMIN_OP_DELETE, req->queue_ids, req->n_queue_ids,
		       req->has_all_deferred && req->all_deferred);
}

static void
admin_queue_change(struct admin *a, const Relay__QueueChangeRequest *req)
{
	enum admin_op op;
	if (strcmp(req->action, "retry") == 0)
		op = ADMIN_OP_RETRY;
	else if (strcmp(req->action, "hold") == 0)
		op = ADMIN_OP_HOLD;
	else if (strcmp(req->action, "release") == 0)
		op = ADMIN_OP_RELEASE;
	else {
		admin_error(a, "queue: action must be retry, hold or release");
		return;
	}
	admin_queue_op(a, op, req->queue_ids, req->n_queue_ids,
		       req->has_all_deferred && req->all_deferred);
}

/* ---- cluster changes ---- */

static void
admin_cc_reply(struct admin *a, const char *node, int status, const char *what)
{
	struct cluster_status cs;
	cluster_status(a->cluster, &cs);
	if (status != 0) {
		/* one snprintf: a long node id is cut, never written past msg (was: strcat after a
		 * full buffer wrote msg[200]) */
		char msg[200];
		snprintf(msg, sizeof(msg), "%s %s: %s%s%s%s", what, node, cluster_strerror(status),
			 cs.leader[0] ? " (leader: " : "", cs.leader[0] ? cs.leader : "",
			 cs.leader[0] ? ")" : "");
		admin_error(a, msg);
		return;
	}
	Relay__ClusterChangeReply cr = RELAY__CLUSTER_CHANGE_REPLY__INIT;
	cr.leader = cs.leader;
	cr.node = (char *)node;
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = true;
	r.cluster_change = &cr;
	admin_send(a, &r);
}

static void
admin_cc_cb(void *arg, int status)
{
	struct admin_cc *cc = arg;
	struct admin *a = cc->a;
	if (a != NULL) {
		a->cc = NULL;
		if (!a->closing) {
			log_info("-", "event=admin-%s node=%s status=\"%s\"", cc->what, cc->node,
				 status ? cluster_strerror(status) : "committed");
			admin_cc_reply(a, cc->node, status, cc->what);
		}
	}
	free(cc);
}

/* Starts one cluster change: start(cluster, node, extra, cb, cc) proposes it. */
static void
admin_cc_start(struct admin *a, const char *what, const char *node, int rc_or_start,
	       struct admin_cc *cc)
{
	if (rc_or_start != 0) {
		free(cc);
		admin_cc_reply(a, node, rc_or_start, what);
		return;
	}
	a->cc = cc;
}

static struct admin_cc *
admin_cc_new(struct admin *a, const char *what, const char *node)
{
	struct admin_cc *cc = calloc(1, sizeof(*cc));
	if (cc == NULL)
		return NULL;
	cc->a = a;
	snprintf(cc->what, sizeof(cc->what), "%s", what);
	snprintf(cc->node, sizeof(cc->node), "%s", node);
	return cc;
}

static void
admin_node_add(struct admin *a, const Relay__NodeAddRequest *req)
{
	struct admin_cc *cc = admin_cc_new(a, "node add", req->id);
	if (cc == NULL) {
		admin_error(a, "out of memory");
		return;
	}
	admin_cc_start(a, "node add", req->id,
		       cluster_member_add(a->cluster, req->id, req->addr, admin_cc_cb, cc), cc);
}

static void
admin_node_remove(struct admin *a, const Relay__NodeRemoveRequest *req)
{
	struct admin_cc *cc = admin_cc_new(a, "node remove", req->id);
	if (cc == NULL) {
		admin_error(a, "out of memory");
		return;
	}
	admin_cc_start(a, "node remove", req->id,
		       cluster_member_remove(a->cluster, req->id, admin_cc_cb, cc), cc);
}

static void
admin_leader_transfer(struct admin *a, const Relay__LeaderTransferRequest *req)
{
	const char *target = req->id ? req->id : "";
	int rc = cluster_transfer_leader(a->cluster, target, req->from_leader);
	admin_cc_reply(a, target[0] ? target : "(most caught-up voter)", rc, "leader transfer");
}

/* A node the cluster knows: in the address book or in the queue's member table. */
static bool
admin_node_known(struct admin *a, const char *node)
{
	struct cluster_status cs;
	cluster_status(a->cluster, &cs);
	if (!cs.replicated)
		return strcmp(node, a->cfg->node_id) == 0;
	for (unsigned i = 0; i < cs.n_peers; i++)
		if (strcmp(cs.peers[i].name, node) == 0)
			return true;
	return admin_member_known(a, node);
}

static void
admin_drain(struct admin *a, const Relay__DrainRequest *req)
{
	const char *node = req->id && req->id[0] ? req->id : a->cfg->node_id;
	if (strlen(node) > QUEUE_NODE_MAX || !admin_node_known(a, node)) {
		admin_cc_reply(a, node, CLUSTER_ENOMEMBER, "drain");
		return;
	}
	struct admin_cc *cc = admin_cc_new(a, "drain", node);
	if (cc == NULL) {
		admin_error(a, "out of memory");
		return;
	}
	Relay__Member m = RELAY__MEMBER__INIT;
	m.node = cc->node;
	m.state = RELAY__MEMBER_STATE__MEMBER_DRAINING;
	m.has_at_ms = true;
	m.at_ms = admin_now_ms();
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_MEMBER;
	cmd.member = &m;
	admin_cc_start(a, "drain", node, cluster_propose(a->cluster, &cmd, admin_cc_cb, cc), cc);
}

/* ---- relayctl quota (issue 13 part 2) ---- */

struct admin_quota {
	Relay__QuotaWindow *w; /* owned array of ADMIN_LIST_MAX */
	char (*names)[QUEUE_QUOTA_NAME_MAX + 1];
	size_t n;
	uint64_t now;
	bool truncated;
	const struct relay_config *cfg;
};

static void
admin_quota_add(struct admin_quota *aq, const struct queue_quota *w)
{
	if (aq->n == ADMIN_LIST_MAX) {
		aq->truncated = true;
		return;
	}
	Relay__QuotaWindow *x = &aq->w[aq->n];
	relay__quota_window__init(x);
	bool user = w->kind == QUEUE_QUOTA_USER;
	x->kind = user ? "user" : "client";
	memcpy(aq->names[aq->n], w->name, sizeof(aq->names[0]));
	x->name = aq->names[aq->n];
	x->count = w->count;
	x->start_ms = w->start_ms;
	x->reset_ms = w->start_ms + QUEUE_QUOTA_WINDOW_MS;
	x->has_limit = true;
	x->limit = user ? aq->cfg->max_messages_per_hour_per_user
			: aq->cfg->max_messages_per_hour_per_client;
	aq->n++;
}

static int
admin_quota_cb(void *arg, const struct queue_quota *w)
{
	struct admin_quota *aq = arg;
	if (aq->now < w->start_ms + QUEUE_QUOTA_WINDOW_MS) /* ended windows count nothing */
		admin_quota_add(aq, w);
	return 0;
}

static int
admin_quota_cmp(const void *a, const void *b)
{
	const Relay__QuotaWindow *x = a, *y = b;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	int c = strcmp(x->kind, y->kind);
	return c ? c : strcmp(x->name, y->name);
}

/* The name as a client address, if it is one: its quota key in key (else ""). */
static void
admin_quota_client(const char *name, char *key, size_t cap)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	key[0] = '\0';
	if (inet_pton(AF_INET, name, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
		ss.ss_family = AF_INET;
	else if (inet_pton(AF_INET6, name, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
		ss.ss_family = AF_INET6;
	else
		return;
	smtp_quota_client_key(&ss, key, cap);
}

static void
admin_quota(struct admin *a, const Relay__QuotaRequest *req)
{
	const struct queue_fsm *fsm = cluster_queue(a->cluster);
	struct admin_quota aq = {.now = admin_now_ms(), .cfg = a->cfg};
	char key[INET6_ADDRSTRLEN + 8] = "";
	aq.w = calloc(ADMIN_LIST_MAX, sizeof(*aq.w));
	aq.names = calloc(ADMIN_LIST_MAX, sizeof(*aq.names));
	Relay__QuotaWindow **wp = calloc(ADMIN_LIST_MAX, sizeof(*wp));
	if (aq.w == NULL || aq.names == NULL || wp == NULL) {
		admin_error(a, "out of memory");
		goto out;
	}
	if (req->name != NULL && req->name[0] != '\0') {
		struct queue_quota w;
		if (strlen(req->name) <= QUEUE_QUOTA_NAME_MAX &&
		    queue_fsm_quota(fsm, QUEUE_QUOTA_USER, req->name, &w) == 0)
			admin_quota_cb(&aq, &w);
		admin_quota_client(req->name, key, sizeof(key));
		if (key[0] && queue_fsm_quota(fsm, QUEUE_QUOTA_CLIENT, key, &w) == 0)
			admin_quota_cb(&aq, &w);
	} else {
		queue_fsm_quotas(fsm, admin_quota_cb, &aq);
	}
	qsort(aq.w, aq.n, sizeof(*aq.w), admin_quota_cmp);
	for (size_t i = 0; i < aq.n; i++)
		wp[i] = &aq.w[i];
	Relay__QuotaReply qr = RELAY__QUOTA_REPLY__INIT;
	qr.windows = wp;
	qr.n_windows = aq.n;
	qr.has_now_ms = true;
	qr.now_ms = aq.now;
	qr.has_truncated = true;
	qr.truncated = aq.truncated;
	qr.client_key = key[0] ? key : NULL;
	Relay__AdminReply r = RELAY__ADMIN_REPLY__INIT;
	r.ok = true;
	r.quota = &qr;
	admin_send(a, &r);
out:
	free(wp);
	free(aq.names);
	free(aq.w);
}

static void
admin_request_cb(void *arg, const void *data, size_t len)
{
	struct admin *a = arg;
	Relay__AdminRequest *req = relay__admin_request__unpack(NULL, len, data);
	if (req == NULL) {
		log_info("-", "event=admin-malformed bytes=%zu", len);
		admin_error(a, "malformed request");
		return;
	}
	switch (req->req_case) {
	case RELAY__ADMIN_REQUEST__REQ_STATUS:
		admin_status(a);
		break;
	case RELAY__ADMIN_REQUEST__REQ_QUEUE_LIST:
		admin_queue_list(a, req->queue_list);
		break;
	case RELAY__ADMIN_REQUEST__REQ_QUEUE_SHOW:
		admin_queue_show(a, req->queue_show);
		break;
	case RELAY__ADMIN_REQUEST__REQ_QUEUE_DELETE:
		admin_queue_delete(a, req->queue_delete);
		break;
	case RELAY__ADMIN_REQUEST__REQ_QUEUE_CHANGE:
		admin_queue_change(a, req->queue_change);
		break;
	case RELAY__ADMIN_REQUEST__REQ_NODE_ADD:
		admin_node_add(a, req->node_add);
		break;
	case RELAY__ADMIN_REQUEST__REQ_NODE_REMOVE:
		admin_node_remove(a, req->node_remove);
		break;
	case RELAY__ADMIN_REQUEST__REQ_LEADER_TRANSFER:
		admin_leader_transfer(a, req->leader_transfer);
		break;
	case RELAY__ADMIN_REQUEST__REQ_DRAIN:
		admin_drain(a, req->drain);
		break;
	case RELAY__ADMIN_REQUEST__REQ_QUOTA:
		admin_quota(a, req->quota);
		break;
	default:
		admin_error(a, "unknown request (relayctl newer than this node?)");
		break;
	}
	relay__admin_request__free_unpacked(req, NULL);
}

int
admin_new_local(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
		void (*reply)(void *arg, const void *data, size_t len), void *reply_arg,
		struct admin **out)
{
	struct admin *a = calloc(1, sizeof(*a));
	if (a == NULL)
		return -1;
	a->loop = loop;
	a->cfg = cfg;
	a->cluster = cluster;
	a->reply = reply;
	a->reply_arg = reply_arg;
	*out = a;
	return 0;
}

void
admin_request(struct admin *a, const void *data, size_t len)
{
	admin_request_cb(a, data, len);
}

int
admin_start(uv_loop_t *loop, const struct relay_config *cfg, const char *ca, const char *cert,
	    const char *key, const char *unix_path, struct cluster *cluster, struct admin **out,
	    char *err, size_t errlen)
{
	struct admin *a = calloc(1, sizeof(*a));
	if (a == NULL) {
		snprintf(err, errlen, "admin: out of memory");
		return -1;
	}
	a->loop = loop;
	a->cfg = cfg;
	a->cluster = cluster;
	struct transport_admin_config tc = {
	    .listen = cfg->admin_listen.n > 0 ? cfg->admin_listen.v[0].text : NULL,
	    .unix_path = unix_path,
	    .ca_file = ca,
	    .cert_file = cert,
	    .key_file = key,
	};
	int rc = transport_admin_listen(loop, &tc, admin_request_cb, a, &a->ta);
	if (rc != 0) {
		snprintf(err, errlen, "admin_listen/admin_socket: cannot listen on %s%s%s: %s",
			 tc.listen ? tc.listen : "", tc.listen && unix_path ? " and " : "",
			 unix_path ? unix_path : "", transport_strerror(rc));
		free(a);
		return -1;
	}
	*out = a;
	return 0;
}

struct admin_close {
	struct admin *a;
	void (*done)(void *);
	void *arg;
};

static void
admin_closed_cb(void *arg)
{
	struct admin_close *cl = arg;
	admin_del_reset(cl->a);
	free(cl->a);
	if (cl->done)
		cl->done(cl->arg);
	free(cl);
}

void
admin_stop(struct admin *a, void (*done)(void *arg), void *arg)
{
	struct admin_close *cl = calloc(1, sizeof(*cl));
	a->closing = true;
	for (size_t i = 0; i < a->ndels; i++)
		if (a->dels[i] != NULL)
			a->dels[i]->a = NULL; /* their callbacks may come after a is freed */
	if (a->cc != NULL)
		a->cc->a = NULL;
	if (a->ta == NULL) {
		/* local: nothing listens; freed now, done() called from here */
		free(cl);
		admin_del_reset(a);
		free(a);
		if (done != NULL)
			done(arg);
		return;
	}
	if (cl == NULL) {
		/* leak the small struct rather than free it under the transport */
		transport_admin_close(a->ta, done, arg);
		return;
	}
	cl->a = a;
	cl->done = done;
	cl->arg = arg;
	transport_admin_close(a->ta, admin_closed_cb, cl);
}
