/*
 * smtp_server_msg.c: a message of the SMTP server glue (smtp_server_int.h), from SMTP_EV_MESSAGE
 * to the cluster's answer: DKIM signing on the thread pool, the hourly quotas checked against the
 * applied windows, the receive budget's share of a proposal (max_receive_memory: the proposal
 * takes the body's place until the cluster answers), the Accept proposed, and its result
 * ("250 2.0.0 Ok: queued as <id>", "451 4.3.0", "452 4.3.1", a quota's 450).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"
#include "dkim_sign.h"
#include "log.h"
#include "queue_fsm.h" /* the quota windows (queue_fsm_quota) */
#include "queue_id.h"
#include "relay.pb-c.h"
#include "smtp_received.h"
#include "smtp_server_int.h"

/* Drops one hold on the budget (the last frees it). */
void
smtp_server__budget_unref(struct recv_budget *b)
{
	if (--b->refs == 0)
		free(b);
}

/* ---- quotas (max_messages_per_hour_per_user / _per_client; cluster/queue_fsm.h) ---- */

void
smtp_quota_client_key(const struct sockaddr_storage *ss, char *out, size_t cap)
{
	char a[INET6_ADDRSTRLEN];
	if (ss->ss_family == AF_INET6) {
		struct in6_addr x = ((const struct sockaddr_in6 *)ss)->sin6_addr;
		if (IN6_IS_ADDR_V4MAPPED(&x)) {
			inet_ntop(AF_INET, &x.s6_addr[12], a, sizeof(a));
			snprintf(out, cap, "%s", a);
			return;
		}
		memset(&x.s6_addr[8], 0, 8);
		inet_ntop(AF_INET6, &x, a, sizeof(a));
		snprintf(out, cap, "%s/64", a);
		return;
	}
	inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof(a));
	snprintf(out, cap, "%s", a);
}

/*
 * Is (user, client key) over its quota at at_ms, by this node's applied windows?  1 with the
 * 450 text (naming what is over and when its window resets) in text, else 0.  user or ckey
 * NULL/"": not counted.
 */
int
smtp_server__quota_over(struct smtp_server *srv, const char *user, const char *ckey,
			uint64_t at_ms, char *text, size_t cap)
{
	const struct relay_config *cfg = srv->cfg;
	const struct queue_fsm *fsm = cluster_queue(srv->cluster);
	struct queue_quota w;
	struct {
		char kind;
		const char *name, *what;
		uint64_t limit;
	} keys[2] = {
	    {QUEUE_QUOTA_USER, user, "user", cfg->max_messages_per_hour_per_user},
	    {QUEUE_QUOTA_CLIENT, ckey, "client", cfg->max_messages_per_hour_per_client},
	};
	for (int i = 0; i < 2; i++) {
		if (keys[i].limit == 0 || keys[i].name == NULL || keys[i].name[0] == '\0' ||
		    fsm == NULL || queue_fsm_quota(fsm, keys[i].kind, keys[i].name, &w) != 0)
			continue;
		uint64_t end = w.start_ms + QUEUE_QUOTA_WINDOW_MS;
		if (at_ms >= end || w.count < keys[i].limit)
			continue;
		char when[32];
		time_t t = (time_t)(end / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		snprintf(text, cap,
			 "Hourly message quota reached for %s %s (%" PRIu64 " per hour); it resets "
			 "at %s",
			 keys[i].what, keys[i].name, keys[i].limit, when);
		return 1;
	}
	return 0;
}

static void
propose_cb(void *arg, int status)
{
	struct proposal *p = arg;
	struct conn *c = p->conn;
	uint64_t ns = uv_hrtime() - p->t0, ms = ns / 1000000;
	smtp_budget_give(&p->budget->b, p->reserved); /* committed or failed: the cluster let go */
	smtp_server__budget_unref(p->budget);
	if (c != NULL) {
		smtp_server__stats_latency(p->srv, ns);
		if (status == 0)
			p->srv->stats.accepted++;
		else
			p->srv->stats.accept_failed++;
	}
	char qtext[SMTP_REPLY_TEXT_MAX];
	if (status == CLUSTER_EQUOTA &&
	    !smtp_server__quota_over(p->srv, p->user, p->client_key, p->received_ms, qtext, sizeof(qtext)))
		snprintf(qtext, sizeof(qtext), "Hourly message quota reached; try again later");
	if (status == 0)
		log_info(p->queue_id, "event=queued size=%zu nrcpt=%zu commit_ms=%" PRIu64 "%s",
			 p->size, p->nrcpt, ms, c == NULL ? " client=gone" : "");
	else if (status == CLUSTER_EQUOTA)
		log_info(p->queue_id, "event=reject cmd=DATA code=450 enh=4.7.1 reason=\"%s\"%s",
			 qtext, c == NULL ? " client=gone" : "");
	else
		log_warn(p->queue_id, "event=propose-failed error=\"%s\" commit_ms=%" PRIu64,
			 cluster_strerror(status), ms);
	if (c != NULL) {
		c->prop = NULL;
		c->busy = false;
		char text[96];
		if (status == 0) {
			snprintf(text, sizeof(text), "Ok: queued as %s", p->queue_id);
			smtp_session_message_result(c->sess, 250, "2.0.0", text);
			c->messages++;
		} else if (status == CLUSTER_EQUOTA) {
			p->srv->counters.over_quota++;
			smtp_session_message_result(c->sess, 450, "4.7.1", qtext);
		} else {
			c->result_reason = "queue_unavailable";
			smtp_session_message_result(c->sess, 451, "4.3.0",
						    "Queue unavailable, try again later");
		}
		/* the propose timer is still armed: the client's next command has its own
		 * timeout from this reply (an answer just before propose_timeout was followed by a
		 * spurious 421 "timeout exceeded" when that timer fired: test_minority, ASan) */
		smtp_server__arm_timer(c);
		if (c->shutdown_after_message)
			smtp_session_shutdown(c->sess);
		smtp_server__conn_process(c);
	}
	free(p);
}

/* A message the glue cannot propose (out of memory): 451, its reject line says why. */
static void
conn_reject_message(struct conn *c, const char *why)
{
	c->result_reason = why;
	smtp_session_message_result(c->sess, 451, "4.3.0", "Queue unavailable, try again later");
}

/*
 * DKIM (dkim_sign.h): a message of a client from mynetworks or authenticated is signed on the
 * libuv thread pool (an RSA signature costs a fraction of a millisecond: not on the loop),
 * then proposed with its signature.  The job holds a ref on the conn, which keeps the session
 * and so the message body (owned by the pending SMTP_EV_MESSAGE) alive; a conn that closed
 * meanwhile drops the result.
 */
struct sign_job {
	uv_work_t req;
	struct conn *conn;	   /* holds a ref */
	struct dkim_signer *signer; /* borrowed (the server's; read-only) */
	const char *body;	   /* borrowed from the session's pending event */
	size_t body_len;
	uint64_t ms;		   /* receive time: t= and the Accept's received_ms */
	enum dkim_sign_result result;
	char *sig; /* owned: the DKIM-Signature field(s) */
	size_t siglen;
	char domain[256], why[96];
};

static void conn_propose_message(struct conn *c, const struct smtp_event *ev, uint64_t ms,
				 struct sign_job *j);

static void
sign_work_cb(uv_work_t *req)
{
	struct sign_job *j = req->data;
	j->result = dkim_signer_sign(j->signer, j->body, j->body_len, j->ms / 1000, &j->sig,
				     &j->siglen, j->domain, j->why);
}

static void
sign_after_cb(uv_work_t *req, int status)
{
	struct sign_job *j = req->data;
	struct conn *c = j->conn;
	struct smtp_event ev;
	if (status != 0) { /* cancelled: queued unsigned */
		j->result = DKIM_SIGN_FAILED;
		snprintf(j->why, sizeof(j->why), "signing job cancelled");
	}
	if (!c->closing && smtp_session_event(c->sess, &ev) == SMTP_EV_MESSAGE) {
		c->busy = false;
		conn_propose_message(c, &ev, j->ms, j);
		smtp_server__conn_process(c);
	}
	free(j->sig);
	free(j);
	smtp_server__conn_unref(c);
}

void
smtp_server__start_message(struct conn *c, const struct smtp_event *ev)
{
	struct smtp_server *srv = c->srv;
	uint64_t ms = smtp_server__now_ms();
	if (srv->dkim == NULL || !(c->trusted || ev->message.env->auth_user != NULL)) {
		conn_propose_message(c, ev, ms, NULL);
		return;
	}
	struct sign_job *j = calloc(1, sizeof(*j));
	if (j == NULL) {
		conn_reject_message(c, "out of memory");
		return;
	}
	j->req.data = j;
	j->conn = c;
	j->signer = srv->dkim;
	j->body = ev->message.body;
	j->body_len = ev->message.body_len;
	j->ms = ms;
	if (uv_queue_work(srv->loop, &j->req, sign_work_cb, sign_after_cb) != 0) {
		free(j);
		conn_reject_message(c, "cannot queue the signing job");
		return;
	}
	c->refs++;
	c->busy = true;
}

/* Logs and counts a signing result under the message's queue id. */
static void
conn_dkim_log(struct smtp_server *srv, const char *queue_id, const struct sign_job *j)
{
	srv->stats.dkim[j->result == DKIM_SIGNED ? 0 : j->result == DKIM_SIGN_NO_KEY ? 1 : 2]++;
	if (j->result == DKIM_SIGNED)
		log_info(queue_id, "event=dkim-signed d=%s", j->domain);
	else if (j->result == DKIM_SIGN_NO_KEY)
		log_debug(queue_id, "event=dkim-unsigned reason=\"%s\"", j->why);
	else
		log_warn(queue_id, "event=dkim-unsigned reason=\"%s\"", j->why);
}

/* Proposes the message of ev (received at ms) with the signature of j (NULL: unsigned). */
static void
conn_propose_message(struct conn *c, const struct smtp_event *ev, uint64_t ms, struct sign_job *j)
{
	struct smtp_server *srv = c->srv;
	const struct smtp_envelope *env = ev->message.env;
	struct proposal *p = calloc(1, sizeof(*p));
	char hdr[SMTP_RECEIVED_MAX], date[64], caddr[INET6_ADDRSTRLEN + 16];
	if (p == NULL) {
		conn_reject_message(c, "nomem");
		return;
	}
	queue_id_make(&srv->qid, ms, p->queue_id, sizeof(p->queue_id));
	smtp_server__date(date, sizeof(date), (time_t)(ms / 1000));
	snprintf(caddr, sizeof(caddr), "%s%s", c->peer.ss_family == AF_INET6 ? "IPv6:" : "",
		 c->addr);
	struct smtp_received_info ri = {
	    .helo = env->helo,
	    .client_addr = caddr,
	    .hostname = srv->cfg->hostname,
	    .esmtp = env->esmtp,
	    .tls = env->tls,
	    .auth = env->auth_user != NULL,
	    .smtputf8 = env->smtputf8,
	    .queue_id = p->queue_id,
	    .rcpt = env->n_rcpts == 1 ? env->rcpts[0].addr : NULL,
	    .date = date,
	};
	int hlen = smtp_received_header(hdr, sizeof(hdr), &ri);
	if (hlen < 0)
		hlen = 0;
	const char *sig = j && j->result == DKIM_SIGNED ? j->sig : NULL;
	size_t siglen = sig ? j->siglen : 0;
	if (j != NULL)
		conn_dkim_log(srv, p->queue_id, j);
	size_t blen = (size_t)hlen + siglen + ev->message.body_len;
	uint8_t *body = malloc(blen ? blen : 1);
	Relay__Recipient *rv = calloc(env->n_rcpts, sizeof(*rv));
	Relay__Recipient **rp = calloc(env->n_rcpts, sizeof(*rp));
	if (body == NULL || rv == NULL || rp == NULL) {
		free(body);
		free(rv);
		free(rp);
		free(p);
		conn_reject_message(c, "nomem");
		return;
	}
	/* our Received:, the DKIM-Signature field(s), then the message as the client sent it */
	memcpy(body, hdr, (size_t)hlen);
	if (siglen)
		memcpy(body + hlen, sig, siglen);
	memcpy(body + (size_t)hlen + siglen, ev->message.body, ev->message.body_len);
	/* The proposal takes the body's place in the receive budget until the cluster answers:
	 * the session's copy goes now (the cluster packs its own). */
	smtp_session_drop_body(c->sess);
	bool trusted = c->trusted || env->auth_user != NULL;
	if (!smtp_budget_take(&srv->budget->b, blen, trusted)) {
		free(body);
		free(rv);
		free(rp);
		free(p);
		srv->counters.over_budget++;
		c->result_reason = "over_budget";
		smtp_session_message_result(c->sess, 452, "4.3.1",
					    "Insufficient system storage, try again later");
		return;
	}
	p->budget = srv->budget;
	p->budget->refs++;
	p->reserved = blen;
	for (size_t i = 0; i < env->n_rcpts; i++) {
		relay__recipient__init(&rv[i]);
		rv[i].addr = (char *)env->rcpts[i].addr;
		rv[i].has_notify = env->rcpts[i].notify != 0;
		rv[i].notify = env->rcpts[i].notify;
		rv[i].orcpt = (char *)env->rcpts[i].orcpt;
		rp[i] = &rv[i];
	}
	Relay__Accept acc = RELAY__ACCEPT__INIT;
	acc.queue_id = p->queue_id;
	acc.mail_from = (char *)env->mail_from;
	acc.n_rcpts = env->n_rcpts;
	acc.rcpts = rp;
	acc.body.data = body;
	acc.body.len = blen;
	acc.received_ms = ms;
	acc.has_ret = env->ret != SMTP_RET_NONE;
	acc.ret = env->ret;
	acc.envid = (char *)env->envid;
	acc.has_smtputf8 = env->smtputf8;
	acc.smtputf8 = env->smtputf8;
	acc.has_body_type = true;
	acc.body_type = env->body;
	acc.client_addr = c->addr;
	acc.helo = (char *)env->helo;
	acc.auth_user = (char *)env->auth_user;
	acc.node_id = srv->cfg->node_id;
	/* bounce_content: what a DSN may return of it (issue 12 sec. 1) */
	acc.has_trusted = true;
	acc.trusted = trusted;
	/* quotas: the limits in force here travel with the Accept (queue_fsm.h "Quotas") */
	p->received_ms = ms;
	if (env->auth_user != NULL && srv->cfg->max_messages_per_hour_per_user > 0) {
		acc.has_quota_user = true;
		acc.quota_user = (uint32_t)srv->cfg->max_messages_per_hour_per_user;
		snprintf(p->user, sizeof(p->user), "%s", env->auth_user);
	}
	if (!c->trusted && srv->cfg->max_messages_per_hour_per_client > 0) {
		acc.has_quota_client = true;
		acc.quota_client = (uint32_t)srv->cfg->max_messages_per_hour_per_client;
		acc.client_key = c->qkey;
		snprintf(p->client_key, sizeof(p->client_key), "%s", c->qkey);
	}
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	cmd.accept = &acc;

	p->conn = c;
	p->srv = srv;
	p->t0 = uv_hrtime();
	p->size = blen;
	p->nrcpt = env->n_rcpts;
	char safe[SMTP_PATH_MAX * 4 + 1];
	log_info(p->queue_id, "session=%s client=%s from=<%s> nrcpt=%zu size=%zu%s%s", c->id,
		 c->addr, log_safe(env->mail_from, strlen(env->mail_from), safe, sizeof(safe)),
		 env->n_rcpts, blen, env->tls ? " tls=yes" : "",
		 env->auth_user ? " auth=yes" : "");
	int rc = cluster_propose(srv->cluster, &cmd, propose_cb, p);
	free(body);
	free(rv);
	free(rp);
	if (rc != 0) {
		log_warn(p->queue_id, "event=propose-failed error=\"%s\"", cluster_strerror(rc));
		srv->stats.accept_failed++;
		smtp_budget_give(&p->budget->b, p->reserved);
		smtp_server__budget_unref(p->budget);
		free(p);
		c->result_reason = "queue_unavailable";
		smtp_session_message_result(c->sess, 451, "4.3.0",
					    "Queue unavailable, try again later");
		return;
	}
	c->prop = p;
	c->busy = true;
	smtp_server__arm_timer(c);
}

