/*
 * relayctl: the admin CLI.  Sends one request to a node's admin endpoint (admin_socket or
 * admin_listen) and prints the reply as a table, or as JSON with --json (one object; schema in
 * the README).
 *
 *   relayctl [options] status
 *   relayctl [options] queue list [--state active|deferred] [--domain D] [--limit N]
 *   relayctl [options] queue show ID
 *   relayctl [options] queue retry|hold|release|delete ID... | --all-deferred
 *   relayctl [options] node add ID ADDR | node remove ID
 *   relayctl [options] leader transfer [ID]
 *   relayctl [options] drain [ID]
 *
 * Options (anywhere on the line): --server HOST:PORT or unix:PATH (default: the admin_socket of
 * --config FILE when that socket exists, else its admin_listen, else $RELAYCTL_SERVER, else
 * 127.0.0.1:7402), --config FILE (a relayd config), --ca/--cert/--key FILE (mutual TLS on
 * admin_listen: --ca the cluster CA, which signed the node's certificate, --cert/--key
 * relayctl's certificate of admin_ca; with --config, --ca defaults to its cluster_ca),
 * --timeout DUR, --json.  A unix socket needs no certificate: its file mode (0600) admits
 * relayd's user and root.  --timeout bounds one request (default 5s), or the whole wait of a
 * command that follows a change to its end (node add, node remove, leader transfer, drain;
 * default 60s).
 *
 * Cluster changes work through any node (cluster.h "Membership"): node add/remove and drain
 * are proposed through the log (a follower forwards the proposal to the leader) and leader
 * transfer is forwarded to the leader by the node; relayctl then polls `status` on the same
 * node every RELAYCTL_POLL_MS until the change is done (node add: the node is a voter; node
 * remove: the node is gone from the member list; leader transfer: another leader, the one named
 * if any; drain: the member is drained), repeating a transfer that did not happen.
 *
 * Exit codes: 0 ok, 1 the request failed (the node said why), 2 usage, 3 no node reachable.
 * Every failure prints one line on stderr.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "admin.pb-c.h"
#include "config.h"
#include "transport.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

#define RELAYCTL_REQUEST_TIMEOUT_MS 5000u /* one request, unless --timeout says */
#define RELAYCTL_WAIT_TIMEOUT_MS 60000u	  /* a waiting command, unless --timeout says */
#define RELAYCTL_POLL_MS 200u		  /* between two status polls while waiting */
#define RELAYCTL_TRANSFER_RETRY_MS 3000u  /* a transfer not done by then is asked again */

static struct {
	const char *server;
	const char *ca, *cert, *key;
	uint64_t timeout_ms; /* 0: not given */
	uint64_t req_timeout_ms;
	bool json;
} opt = {.req_timeout_ms = RELAYCTL_REQUEST_TIMEOUT_MS};

static void __attribute__((noreturn, format(printf, 2, 3))) die(int code, const char *fmt, ...)
{
	va_list ap;
	fputs("relayctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static void
usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: relayctl [--server HOST:PORT|unix:PATH] [--config FILE] [--json] [--timeout DUR]\n"
	    "                [--ca FILE --cert FILE --key FILE] COMMAND\n"
	    "commands:\n"
	    "  status                                  members, roles, indexes, queue depth\n"
	    "  queue list [--state active|deferred] [--domain D] [--limit N]\n"
	    "  queue show ID\n"
	    "  queue retry|hold|release|delete ID... | --all-deferred\n"
	    "  node add ID HOST:PORT                   add a member (waits until it votes)\n"
	    "  node remove ID                          remove a member (waits until gone)\n"
	    "  leader transfer [ID]                    move leadership (default: the most\n"
	    "                                          caught-up other voter)\n"
	    "  drain [ID]                              hand a member's deliveries over (default:\n"
	    "                                          the node answering); waits until drained\n"
	    "  quota [USER|ADDR]                       messages counted this hour per user and\n"
	    "                                          client (cluster-wide hourly quotas)\n"
	    "--timeout: one request (default 5s), or the whole wait (default 60s)\n"
	    "exit codes: 0 ok, 1 request failed, 2 usage, 3 no node reachable\n");
}

/* ---- JSON output helpers ---- */

static void
json_str(const char *s)
{
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

static void
json_kv_str(const char *k, const char *v, bool comma)
{
	printf("%s\"%s\":", comma ? "," : "", k);
	json_str(v);
}

static void
json_kv_u64(const char *k, uint64_t v, bool comma)
{
	printf("%s\"%s\":%" PRIu64, comma ? "," : "", k, v);
}

/* ---- human output helpers ---- */

static const char *
fmt_age(uint64_t now, uint64_t then, char *buf, size_t cap)
{
	if (then == 0 || then > now) {
		snprintf(buf, cap, "-");
		return buf;
	}
	uint64_t s = (now - then) / 1000;
	if (s < 120)
		snprintf(buf, cap, "%" PRIu64 "s", s);
	else if (s < 7200)
		snprintf(buf, cap, "%" PRIu64 "m", s / 60);
	else if (s < 172800)
		snprintf(buf, cap, "%" PRIu64 "h", s / 3600);
	else
		snprintf(buf, cap, "%" PRIu64 "d", s / 86400);
	return buf;
}

static const char *
fmt_time(uint64_t ms, char *buf, size_t cap)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	if (ms == 0 || gmtime_r(&t, &tm) == NULL) {
		snprintf(buf, cap, "-");
		return buf;
	}
	strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

/* ---- requests ---- */

static Relay__AdminReply *
call(const Relay__AdminRequest *req)
{
	size_t len = relay__admin_request__get_packed_size(req);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL)
		die(EXIT_FAILED, "out of memory");
	relay__admin_request__pack(req, buf);
	bool unix_sock = strncmp(opt.server, "unix:", 5) == 0;
	struct transport_admin_config tc = {
	    .listen = unix_sock ? NULL : opt.server,
	    .unix_path = unix_sock ? opt.server + 5 : NULL,
	    .ca_file = unix_sock ? NULL : opt.ca,
	    .cert_file = unix_sock ? NULL : opt.cert,
	    .key_file = unix_sock ? NULL : opt.key,
	};
	void *reply = NULL;
	size_t rlen = 0;
	int rc = transport_admin_request(&tc, NULL, buf, len, (unsigned)opt.req_timeout_ms, &reply,
					 &rlen);
	free(buf);
	if (rc == TRANSPORT_ETIMEDOUT || rc == TRANSPORT_ECLOSED || rc == TRANSPORT_ENNG)
		die(EXIT_UNREACHABLE, "no answer from %s within %" PRIu64 " ms (%s)", opt.server,
		    opt.req_timeout_ms, transport_strerror(rc));
	if (rc != 0)
		die(rc == TRANSPORT_EADDR ? EXIT_USAGE : EXIT_UNREACHABLE, "%s: %s", opt.server,
		    transport_strerror(rc));
	Relay__AdminReply *r = relay__admin_reply__unpack(NULL, rlen, reply);
	free(reply);
	if (r == NULL)
		die(EXIT_FAILED, "%s sent a reply that does not decode", opt.server);
	if (!r->ok && r->queue_delete == NULL && r->queue_change == NULL)
		die(EXIT_FAILED, "%s", r->error ? r->error : "request failed");
	return r;
}

/* The status reply of the server (free with relay__admin_reply__free_unpacked). */
static Relay__AdminReply *
fetch_status(void)
{
	Relay__StatusRequest sr = RELAY__STATUS_REQUEST__INIT;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_STATUS;
	req.status = &sr;
	Relay__AdminReply *r = call(&req);
	if (r->status == NULL)
		die(EXIT_FAILED, "reply without status");
	return r;
}

static const Relay__PeerStatus *
find_member(const Relay__StatusReply *s, const char *id)
{
	for (size_t i = 0; i < s->n_peers; i++)
		if (strcmp(s->peers[i]->id, id) == 0)
			return s->peers[i];
	return NULL;
}

/* A member's role as the answering node sees it: leader or follower for a voter, else its
 * membership (learner, joining, leaving, removed), "" when only the queue knows it. */
static const char *
member_role(const Relay__StatusReply *s, const Relay__PeerStatus *p)
{
	if (p->membership == NULL)
		return "";
	if (strcmp(p->membership, "voter") == 0)
		return s->leader && strcmp(s->leader, p->id) == 0 ? "leader" : "follower";
	return p->membership;
}

static int
cmd_status(void)
{
	Relay__AdminReply *r = fetch_status();
	const Relay__StatusReply *s = r->status;
	if (opt.json) {
		putchar('{');
		json_kv_str("node_id", s->node_id, false);
		json_kv_str("role", s->role, true);
		json_kv_u64("term", s->term, true);
		json_kv_str("leader", s->leader, true);
		json_kv_u64("commit_index", s->commit_index, true);
		json_kv_u64("applied_index", s->applied_index, true);
		json_kv_u64("last_index", s->last_index, true);
		json_kv_u64("leader_changes", s->leader_changes, true);
		if (s->has_cluster_id) {
			printf(",\"cluster_id\":\"%016" PRIx64 "\",\"incarnation\":\"%016" PRIx64 "\"",
			       s->cluster_id, s->incarnation);
			json_kv_str("boot_phase", s->boot_phase ? s->boot_phase : "", true);
		}
		printf(",\"members\":[");
		for (size_t i = 0; i < s->n_peers; i++) {
			const Relay__PeerStatus *p = s->peers[i];
			printf("%s{", i ? "," : "");
			json_kv_str("id", p->id, false);
			json_kv_str("addr", p->addr, true);
			json_kv_str("membership", p->membership, true);
			json_kv_str("role", member_role(s, p), true);
			printf(",\"self\":%s,\"connected\":%s,\"healthy\":%s",
			       p->self ? "true" : "false", p->connected ? "true" : "false",
			       p->healthy ? "true" : "false");
			if (p->has_match)
				json_kv_u64("match", p->match, true);
			if (p->has_lag)
				json_kv_u64("lag", p->lag, true);
			if (p->has_last_contact_ms)
				printf(",\"last_contact_ms\":%" PRId64, p->last_contact_ms);
			if (p->has_incarnation) {
				if (p->incarnation_known)
					printf(",\"incarnation\":\"%016" PRIx64 "\"", p->incarnation);
				else
					printf(",\"incarnation\":null");
			}
			if (p->has_replaced_incarnation)
				printf(",\"replacing_incarnation\":\"%016" PRIx64 "\"",
				       p->replaced_incarnation);
			printf(",\"ownership\":");
			if (p->owner_state) {
				putchar('{');
				json_kv_str("state", p->owner_state, false);
				json_kv_u64("domains", p->domains, true);
				json_kv_u64("rcpts_owned", p->rcpts_owned, true);
				json_kv_u64("rcpts_deferred", p->rcpts_deferred, true);
				json_kv_u64("inflight", p->inflight, true);
				printf(",\"renew_age_ms\":%" PRId64, p->renew_age_ms);
				putchar('}');
			} else {
				printf("null");
			}
			putchar('}');
		}
		printf("],\"domains\":[");
		for (size_t i = 0; i < s->n_domains; i++) {
			const Relay__DomainStatus *d = s->domains[i];
			printf("%s{", i ? "," : "");
			json_kv_str("domain", d->domain, false);
			json_kv_str("owner", d->owner, true);
			json_kv_u64("epoch", d->epoch, true);
			json_kv_u64("rcpts_queued", d->rcpts_queued, true);
			putchar('}');
		}
		printf("],\"domains_truncated\":%s", s->domains_truncated ? "true" : "false");
		printf(",\"queue\":{");
		json_kv_u64("messages", s->messages, false);
		json_kv_u64("rcpts_queued", s->rcpts_queued, true);
		json_kv_u64("rcpts_deferred", s->rcpts_deferred, true);
		json_kv_u64("oldest_age_ms",
			    s->oldest_ms && s->now_ms > s->oldest_ms ? s->now_ms - s->oldest_ms : 0,
			    true);
		printf("}}\n");
	} else {
		char age[32];
		printf("node %s  role %s  term %" PRIu64 "  leader %s\n", s->node_id, s->role,
		       s->term, s->leader && s->leader[0] ? s->leader : "(none)");
		printf("commit %" PRIu64 "  applied %" PRIu64 "  last %" PRIu64
		       "  leader changes %" PRIu64 "\n",
		       s->commit_index, s->applied_index, s->last_index, s->leader_changes);
		if (s->has_cluster_id)
			printf("cluster %016" PRIx64 "  incarnation %016" PRIx64 "%s%s\n",
			       s->cluster_id, s->incarnation,
			       s->boot_phase && s->boot_phase[0] ? "  " : "",
			       s->boot_phase ? s->boot_phase : "");
		putchar('\n');
		printf("%-16s %-22s %-8s %-8s %-4s %-9s %-6s %8s %6s %12s  %-8s %7s %6s %8s %8s "
		       "%9s\n",
		       "MEMBER", "ADDRESS", "ROLE", "INCARN", "SELF", "CONNECTED", "HEALTH", "MATCH",
		       "LAG", "LAST_CONTACT", "OWNER", "DOMAINS", "RCPTS", "DEFERRED", "INFLIGHT",
		       "RENEW_AGE");
		for (size_t i = 0; i < s->n_peers; i++) {
			const Relay__PeerStatus *p = s->peers[i];
			char m[24] = "-", l[24] = "-", c[24] = "-", od[24] = "-", orc[24] = "-",
			     odf[24] = "-", oif[24] = "-", ora[24] = "-";
			if (p->has_match)
				snprintf(m, sizeof(m), "%" PRIu64, p->match);
			if (p->has_lag)
				snprintf(l, sizeof(l), "%" PRIu64, p->lag);
			if (p->has_last_contact_ms && p->last_contact_ms >= 0)
				snprintf(c, sizeof(c), "%" PRId64 "ms", p->last_contact_ms);
			if (p->owner_state) {
				snprintf(od, sizeof(od), "%" PRIu64, p->domains);
				snprintf(orc, sizeof(orc), "%" PRIu64, p->rcpts_owned);
				snprintf(odf, sizeof(odf), "%" PRIu64, p->rcpts_deferred);
				snprintf(oif, sizeof(oif), "%" PRIu32, p->inflight);
				if (p->renew_age_ms >= 0)
					snprintf(ora, sizeof(ora), "%" PRId64 "ms", p->renew_age_ms);
			}
			/* the incarnation, short (8 hex digits; --json has all 16) */
			char inc[24] = "-";
			if (p->has_incarnation)
				snprintf(inc, sizeof(inc), p->incarnation_known ? "%08" PRIx64 : "pending",
					 p->incarnation >> 32);
			printf("%-16s %-22s %-8s %-8s %-4s %-9s %-6s %8s %6s %12s  %-8s %7s %6s %8s %8s "
			       "%9s\n",
			       p->id, p->addr && p->addr[0] ? p->addr : "-",
			       member_role(s, p)[0] ? member_role(s, p) : "-", inc,
			       p->self ? "yes" : "", p->connected ? "yes" : "no",
			       p->healthy ? "ok" : "DOWN", m, l, c,
			       p->owner_state ? p->owner_state : "-", od, orc, odf, oif, ora);
		}
		for (size_t i = 0; i < s->n_peers; i++) {
			const Relay__PeerStatus *p = s->peers[i];
			if (p->has_replaced_incarnation)
				printf("rejoin: %s incarnation %016" PRIx64 " (%s) replaces %016" PRIx64
				       ", still in the configuration\n",
				       p->id, p->incarnation, member_role(s, p),
				       p->replaced_incarnation);
		}
		if (s->n_domains) {
			printf("\n%-32s %-16s %10s %8s\n", "DOMAIN", "OWNER", "EPOCH", "RCPTS");
			for (size_t i = 0; i < s->n_domains; i++) {
				const Relay__DomainStatus *d = s->domains[i];
				printf("%-32s %-16s %10" PRIu64 " %8" PRIu64 "\n", d->domain,
				       d->owner[0] ? d->owner : "(unowned)", d->epoch,
				       d->rcpts_queued);
			}
			if (s->domains_truncated)
				printf("(more domains not shown)\n");
		}
		printf("\nqueue: %" PRIu64 " messages, %" PRIu64 " recipients queued (%" PRIu64
		       " deferred), oldest %s\n",
		       s->messages, s->rcpts_queued, s->rcpts_deferred,
		       fmt_age(s->now_ms, s->oldest_ms, age, sizeof(age)));
	}
	relay__admin_reply__free_unpacked(r, NULL);
	return EXIT_OK;
}

static int
cmd_queue_list(int argc, char **argv)
{
	Relay__QueueListRequest lr = RELAY__QUEUE_LIST_REQUEST__INIT;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--state") == 0 && i + 1 < argc) {
			lr.state = argv[++i];
			if (strcmp(lr.state, "active") && strcmp(lr.state, "deferred"))
				die(EXIT_USAGE, "--state must be active or deferred");
		} else if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc) {
			lr.domain = argv[++i];
		} else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
			char *end;
			unsigned long v = strtoul(argv[++i], &end, 10);
			if (*end || v == 0 || v > 1000000)
				die(EXIT_USAGE, "--limit wants a positive number");
			lr.has_limit = true;
			lr.limit = (uint32_t)v;
		} else {
			die(EXIT_USAGE, "queue list: unknown argument '%s'", argv[i]);
		}
	}
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_QUEUE_LIST;
	req.queue_list = &lr;
	Relay__AdminReply *r = call(&req);
	const Relay__QueueListReply *l = r->queue_list;
	if (l == NULL)
		die(EXIT_FAILED, "reply without a list");
	if (opt.json) {
		printf("{\"items\":[");
		for (size_t i = 0; i < l->n_items; i++) {
			const Relay__QueueListItem *it = l->items[i];
			printf("%s{", i ? "," : "");
			json_kv_str("queue_id", it->queue_id, false);
			json_kv_str("from", it->from, true);
			json_kv_u64("received_ms", it->received_ms, true);
			json_kv_u64("size", it->size, true);
			json_kv_u64("nrcpts", it->nrcpts, true);
			json_kv_u64("nqueued", it->nqueued, true);
			json_kv_u64("next_attempt_ms", it->next_attempt_ms, true);
			json_kv_u64("attempts", it->attempts, true);
			json_kv_str("state", it->state, true);
			json_kv_str("first_rcpt", it->first_rcpt, true);
			putchar('}');
		}
		printf("],\"truncated\":%s}\n", l->truncated ? "true" : "false");
	} else {
		char age[32], next[32];
		printf("%-24s %-8s %6s %8s %5s %9s  %-30s %s\n", "QUEUE_ID", "STATE", "AGE", "SIZE",
		       "RCPTS", "ATTEMPTS", "FROM", "TO");
		for (size_t i = 0; i < l->n_items; i++) {
			const Relay__QueueListItem *it = l->items[i];
			char rc[24];
			snprintf(rc, sizeof(rc), "%u/%u", it->nqueued, it->nrcpts);
			printf("%-24s %-8s %6s %8" PRIu64 " %5s %9u  <%s> %s%s\n", it->queue_id,
			       it->state, fmt_age(l->now_ms, it->received_ms, age, sizeof(age)),
			       it->size, rc, it->attempts, it->from,
			       it->first_rcpt ? it->first_rcpt : "", it->nqueued > 1 ? " ..." : "");
		}
		(void)next;
		printf("%zu message%s%s\n", l->n_items, l->n_items == 1 ? "" : "s",
		       l->truncated ? " (more: raise --limit)" : "");
	}
	relay__admin_reply__free_unpacked(r, NULL);
	return EXIT_OK;
}

static const char *
rcpt_state_name(Relay__RcptState s)
{
	switch (s) {
	case RELAY__RCPT_STATE__RCPT_QUEUED:
		return "queued";
	case RELAY__RCPT_STATE__RCPT_DELIVERED:
		return "delivered";
	case RELAY__RCPT_STATE__RCPT_FAILED:
		return "failed";
	case RELAY__RCPT_STATE__RCPT_DELETED:
		return "deleted";
	default:
		return "unknown";
	}
}

static int
cmd_queue_show(int argc, char **argv)
{
	if (argc != 1)
		die(EXIT_USAGE, "queue show wants one queue id");
	Relay__QueueShowRequest sr = RELAY__QUEUE_SHOW_REQUEST__INIT;
	sr.queue_id = argv[0];
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_QUEUE_SHOW;
	req.queue_show = &sr;
	Relay__AdminReply *r = call(&req);
	const Relay__QueueRecord *q = r->queue_show;
	if (q == NULL)
		die(EXIT_FAILED, "reply without a message");
	if (opt.json) {
		putchar('{');
		json_kv_str("queue_id", q->queue_id, false);
		json_kv_str("from", q->mail_from, true);
		json_kv_u64("received_ms", q->received_ms, true);
		json_kv_u64("size", q->size, true);
		json_kv_str("client_addr", q->client_addr, true);
		json_kv_str("node_id", q->node_id, true);
		printf(",\"held\":%s", q->has_held && q->held ? "true" : "false");
		if (q->envid)
			json_kv_str("envid", q->envid, true);
		printf(",\"rcpts\":[");
		for (size_t i = 0; i < q->n_rcpts; i++) {
			const Relay__QueueRcpt *rc = q->rcpts[i];
			printf("%s{", i ? "," : "");
			json_kv_str("addr", rc->rcpt ? rc->rcpt->addr : "", false);
			json_kv_str("state", rcpt_state_name(rc->state), true);
			json_kv_u64("attempts", rc->attempts, true);
			json_kv_u64("next_attempt_ms", rc->next_attempt_ms, true);
			json_kv_u64("last_attempt_ms", rc->last_attempt_ms, true);
			if (rc->last_reply)
				json_kv_str("last_reply", rc->last_reply, true);
			if (rc->last_relay)
				json_kv_str("last_relay", rc->last_relay, true);
			putchar('}');
		}
		printf("]}\n");
	} else {
		char t[40], n[40];
		printf("queue id:  %s\nfrom:      <%s>\nreceived:  %s from %s at %s\nsize:      "
		       "%" PRIu64 "\n",
		       q->queue_id, q->mail_from, fmt_time(q->received_ms, t, sizeof(t)),
		       q->client_addr ? q->client_addr : "?", q->node_id ? q->node_id : "?",
		       q->size);
		if (q->has_held && q->held)
			printf("held:      yes (relayctl queue release %s)\n", q->queue_id);
		for (size_t i = 0; i < q->n_rcpts; i++) {
			const Relay__QueueRcpt *rc = q->rcpts[i];
			printf("rcpt:      <%s> %s attempts=%u next=%s%s%s%s%s\n",
			       rc->rcpt ? rc->rcpt->addr : "", rcpt_state_name(rc->state),
			       rc->attempts, fmt_time(rc->next_attempt_ms, n, sizeof(n)),
			       rc->last_relay && rc->last_relay[0] ? " relay=" : "",
			       rc->last_relay ? rc->last_relay : "",
			       rc->last_reply && rc->last_reply[0] ? " reply=" : "",
			       rc->last_reply ? rc->last_reply : "");
		}
	}
	relay__admin_reply__free_unpacked(r, NULL);
	return EXIT_OK;
}

static int
cmd_queue_delete(int argc, char **argv)
{
	Relay__QueueDeleteRequest dr = RELAY__QUEUE_DELETE_REQUEST__INIT;
	char **ids = calloc((size_t)argc + 1, sizeof(char *));
	size_t n = 0;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--all-deferred") == 0) {
			dr.has_all_deferred = dr.all_deferred = true;
		} else if (argv[i][0] == '-') {
			die(EXIT_USAGE, "queue delete: unknown option '%s'", argv[i]);
		} else {
			ids[n++] = argv[i];
		}
	}
	if (n == 0 && !dr.all_deferred)
		die(EXIT_USAGE, "queue delete wants queue ids or --all-deferred");
	dr.n_queue_ids = n;
	dr.queue_ids = ids;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_QUEUE_DELETE;
	req.queue_delete = &dr;
	Relay__AdminReply *r = call(&req);
	free(ids);
	const Relay__QueueDeleteReply *d = r->queue_delete;
	int rc = r->ok ? (d && d->n_not_found ? EXIT_FAILED : EXIT_OK) : EXIT_FAILED;
	if (opt.json) {
		printf("{\"deleted\":[");
		for (size_t i = 0; d && i < d->n_deleted; i++) {
			printf("%s", i ? "," : "");
			json_str(d->deleted[i]);
		}
		printf("],\"not_found\":[");
		for (size_t i = 0; d && i < d->n_not_found; i++) {
			printf("%s", i ? "," : "");
			json_str(d->not_found[i]);
		}
		printf("]");
		if (!r->ok)
			json_kv_str("error", r->error, true);
		printf("}\n");
	} else {
		for (size_t i = 0; d && i < d->n_deleted; i++)
			printf("%s deleted\n", d->deleted[i]);
		for (size_t i = 0; d && i < d->n_not_found; i++)
			printf("%s not found\n", d->not_found[i]);
	}
	if (!r->ok)
		fprintf(stderr, "relayctl: %s\n", r->error ? r->error : "delete failed");
	else if (d && d->n_not_found)
		fprintf(stderr, "relayctl: %zu of the messages were not in the queue\n",
			d->n_not_found);
	relay__admin_reply__free_unpacked(r, NULL);
	return rc;
}

/* relayctl queue retry|hold|release ID... | --all-deferred */
static int
cmd_queue_change(const char *action, int argc, char **argv)
{
	Relay__QueueChangeRequest cr = RELAY__QUEUE_CHANGE_REQUEST__INIT;
	char **ids = calloc((size_t)argc + 1, sizeof(char *));
	size_t n = 0;
	if (ids == NULL)
		die(EXIT_FAILED, "out of memory");
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--all-deferred") == 0)
			cr.has_all_deferred = cr.all_deferred = true;
		else if (argv[i][0] == '-')
			die(EXIT_USAGE, "queue %s: unknown option '%s'", action, argv[i]);
		else
			ids[n++] = argv[i];
	}
	if (n == 0 && !cr.all_deferred)
		die(EXIT_USAGE, "queue %s wants queue ids or --all-deferred", action);
	cr.action = (char *)action;
	cr.n_queue_ids = n;
	cr.queue_ids = ids;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_QUEUE_CHANGE;
	req.queue_change = &cr;
	Relay__AdminReply *r = call(&req);
	free(ids);
	const Relay__QueueChangeReply *d = r->queue_change;
	int rc = r->ok ? (d && d->n_not_found ? EXIT_FAILED : EXIT_OK) : EXIT_FAILED;
	const char *past = strcmp(action, "hold") == 0	    ? "held"
			   : strcmp(action, "release") == 0 ? "released"
							    : "scheduled for a retry now";
	if (opt.json) {
		printf("{");
		json_kv_str("action", action, false);
		printf(",\"done\":[");
		for (size_t i = 0; d && i < d->n_done; i++) {
			printf("%s", i ? "," : "");
			json_str(d->done[i]);
		}
		printf("],\"not_found\":[");
		for (size_t i = 0; d && i < d->n_not_found; i++) {
			printf("%s", i ? "," : "");
			json_str(d->not_found[i]);
		}
		printf("]");
		if (!r->ok)
			json_kv_str("error", r->error, true);
		printf("}\n");
	} else {
		for (size_t i = 0; d && i < d->n_done; i++)
			printf("%s %s\n", d->done[i], past);
		for (size_t i = 0; d && i < d->n_not_found; i++)
			printf("%s not found\n", d->not_found[i]);
	}
	if (!r->ok)
		fprintf(stderr, "relayctl: %s\n", r->error ? r->error : "request failed");
	else if (d && d->n_not_found)
		fprintf(stderr, "relayctl: %zu of the messages were not in the queue\n",
			d->n_not_found);
	relay__admin_reply__free_unpacked(r, NULL);
	return rc;
}

/* ---- waiting for a cluster change ---- */

static uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t wait_deadline;

/* Starts the wait of a waiting command: --timeout bounds it, each request gets what is left. */
static void
wait_begin(void)
{
	uint64_t total = opt.timeout_ms ? opt.timeout_ms : RELAYCTL_WAIT_TIMEOUT_MS;
	wait_deadline = now_ms() + total;
	opt.req_timeout_ms =
	    total < RELAYCTL_REQUEST_TIMEOUT_MS ? total : RELAYCTL_REQUEST_TIMEOUT_MS;
}

/* Sleeps one poll interval; false when the deadline has passed (a request started before it
 * may overrun it by its own timeout at most). */
static bool
wait_more(void)
{
	uint64_t now = now_ms();
	if (now >= wait_deadline)
		return false;
	uint64_t left = wait_deadline - now;
	struct timespec ts = {0,
			      (long)(left < RELAYCTL_POLL_MS ? left : RELAYCTL_POLL_MS) * 1000000L};
	nanosleep(&ts, NULL);
	return true;
}

static uint64_t
wait_total_s(void)
{
	return (opt.timeout_ms ? opt.timeout_ms : RELAYCTL_WAIT_TIMEOUT_MS) / 1000;
}

static void
check_node_id(const char *what, const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > 63)
		die(EXIT_USAGE, "%s: '%s' is not a node id", what, id);
	for (const char *p = id; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
			die(EXIT_USAGE,
			    "%s: '%s' is not a node id (letters, digits, '-', '_', '.')", what, id);
}

/* relayctl node add ID ADDR | node remove ID */
static int
cmd_node(int argc, char **argv)
{
	if (argc < 1)
		die(EXIT_USAGE, "node wants add ID HOST:PORT or remove ID");
	bool add = strcmp(argv[0], "add") == 0;
	if (!add && strcmp(argv[0], "remove") != 0)
		die(EXIT_USAGE, "unknown node command '%s' (add, remove)", argv[0]);
	if (add && argc != 3)
		die(EXIT_USAGE, "node add wants ID HOST:PORT");
	if (!add && argc != 2)
		die(EXIT_USAGE, "node remove wants one ID");
	const char *id = argv[1];
	check_node_id(add ? "node add" : "node remove", id);
	if (add) {
		const char *colon = strrchr(argv[2], ':');
		char *end;
		unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
		if (colon == NULL || colon == argv[2] || *end || port == 0 || port > 65535)
			die(EXIT_USAGE, "node add: '%s' is not host:port", argv[2]);
	}
	wait_begin();
	Relay__NodeAddRequest ar = RELAY__NODE_ADD_REQUEST__INIT;
	Relay__NodeRemoveRequest rr = RELAY__NODE_REMOVE_REQUEST__INIT;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	if (add) {
		ar.id = (char *)id;
		ar.addr = argv[2];
		req.req_case = RELAY__ADMIN_REQUEST__REQ_NODE_ADD;
		req.node_add = &ar;
	} else {
		rr.id = (char *)id;
		req.req_case = RELAY__ADMIN_REQUEST__REQ_NODE_REMOVE;
		req.node_remove = &rr;
	}
	Relay__AdminReply *r = call(&req);
	relay__admin_reply__free_unpacked(r, NULL);
	/* follow it in status */
	char membership[32] = "", server_id[64] = "", leader[64] = "", addr[300] = "";
	for (;;) {
		Relay__AdminReply *sr = fetch_status();
		const Relay__StatusReply *st = sr->status;
		const Relay__PeerStatus *p = find_member(st, id);
		snprintf(server_id, sizeof(server_id), "%s", st->node_id);
		snprintf(leader, sizeof(leader), "%s", st->leader ? st->leader : "");
		snprintf(membership, sizeof(membership), "%s",
			 p ? (p->membership && p->membership[0] ? p->membership : "queue-only")
			   : "gone");
		if (p && p->addr)
			snprintf(addr, sizeof(addr), "%s", p->addr);
		relay__admin_reply__free_unpacked(sr, NULL);
		bool done =
		    add ? strcmp(membership, "voter") == 0 : strcmp(membership, "gone") == 0;
		if (!add && strcmp(server_id, id) == 0) {
			/* the node answering is the one leaving: it never hears the end */
			fprintf(stderr,
				"relayctl: %s is the node answering: it cannot see its own "
				"removal finish; ask another node\n",
				id);
			done = true;
		}
		if (done)
			break;
		if (!wait_more())
			die(EXIT_FAILED, "node %s %s: not done after %" PRIu64 " s (now: %s)",
			    add ? "add" : "remove", id, wait_total_s(), membership);
	}
	if (opt.json) {
		printf("{");
		json_kv_str("node", id, false);
		json_kv_str("action", add ? "add" : "remove", true);
		json_kv_str("membership", membership, true);
		if (add)
			json_kv_str("addr", addr, true);
		json_kv_str("leader", leader, true);
		printf("}\n");
	} else if (add) {
		printf("%s added at %s: voter (leader %s)\n", id, addr, leader[0] ? leader : "?");
	} else {
		printf("%s removed (leader %s)\n", id, leader[0] ? leader : "?");
	}
	return EXIT_OK;
}

/* relayctl leader transfer [ID] */
static int
cmd_leader(int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "transfer") != 0)
		die(EXIT_USAGE, "leader wants transfer [ID]");
	if (argc > 2)
		die(EXIT_USAGE, "leader transfer takes at most one ID");
	const char *target = argc == 2 ? argv[1] : "";
	if (target[0])
		check_node_id("leader transfer", target);
	wait_begin();
	Relay__AdminReply *sr = fetch_status();
	char from[64];
	snprintf(from, sizeof(from), "%s", sr->status->leader ? sr->status->leader : "");
	relay__admin_reply__free_unpacked(sr, NULL);
	if (!from[0])
		die(EXIT_FAILED, "leader transfer: %s knows no leader now", opt.server);
	if (target[0] && strcmp(target, from) == 0)
		die(EXIT_FAILED, "leader transfer: %s is the leader already", target);
	uint64_t asked = 0;
	char leader[64] = "";
	for (;;) {
		if (asked == 0 || now_ms() - asked >= RELAYCTL_TRANSFER_RETRY_MS) {
			Relay__LeaderTransferRequest lt = RELAY__LEADER_TRANSFER_REQUEST__INIT;
			lt.id = (char *)target;
			lt.from_leader = from;
			Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
			req.req_case = RELAY__ADMIN_REQUEST__REQ_LEADER_TRANSFER;
			req.leader_transfer = &lt;
			Relay__AdminReply *r = call(&req);
			relay__admin_reply__free_unpacked(r, NULL);
			asked = now_ms();
		}
		if (!wait_more())
			die(EXIT_FAILED, "leader transfer: %s still %s after %" PRIu64 " s", from,
			    leader[0] ? "leads or was followed by no one" : "leads",
			    wait_total_s());
		sr = fetch_status();
		snprintf(leader, sizeof(leader), "%s",
			 sr->status->leader ? sr->status->leader : "");
		relay__admin_reply__free_unpacked(sr, NULL);
		if (leader[0] && strcmp(leader, from) != 0 &&
		    (!target[0] || strcmp(leader, target) == 0))
			break;
		if (leader[0] && target[0] && strcmp(leader, from) != 0 && strcmp(leader, target))
			die(EXIT_FAILED, "leader transfer: %s took over instead of %s", leader,
			    target);
	}
	if (opt.json) {
		printf("{");
		json_kv_str("from", from, false);
		json_kv_str("leader", leader, true);
		printf("}\n");
	} else {
		printf("leadership moved from %s to %s\n", from, leader);
	}
	return EXIT_OK;
}

/* relayctl drain [ID] */
static int
cmd_drain(int argc, char **argv)
{
	if (argc > 1)
		die(EXIT_USAGE, "drain takes at most one ID");
	const char *id = argc == 1 ? argv[0] : "";
	if (id[0])
		check_node_id("drain", id);
	wait_begin();
	Relay__DrainRequest dr = RELAY__DRAIN_REQUEST__INIT;
	dr.id = (char *)id;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_DRAIN;
	req.drain = &dr;
	Relay__AdminReply *r = call(&req);
	char node[64];
	snprintf(node, sizeof(node), "%s",
		 r->cluster_change && r->cluster_change->node ? r->cluster_change->node : id);
	relay__admin_reply__free_unpacked(r, NULL);
	char state[32] = "";
	uint64_t domains = 0, owned = 0;
	for (;;) {
		Relay__AdminReply *sr = fetch_status();
		const Relay__PeerStatus *p = find_member(sr->status, node);
		snprintf(state, sizeof(state), "%s",
			 p && p->owner_state ? p->owner_state : "unknown");
		domains = p ? p->domains : 0;
		owned = p ? p->rcpts_owned : 0;
		relay__admin_reply__free_unpacked(sr, NULL);
		if (strcmp(state, "drained") == 0)
			break;
		if (!wait_more())
			die(EXIT_FAILED,
			    "drain %s: not drained after %" PRIu64
			    " s (state %s, still owns %" PRIu64 " domains, %" PRIu64 " recipients)",
			    node, wait_total_s(), state, domains, owned);
	}
	if (opt.json) {
		printf("{");
		json_kv_str("node", node, false);
		json_kv_str("owner_state", state, true);
		printf("}\n");
	} else {
		printf("%s drained\n", node);
	}
	return EXIT_OK;
}

/* A global option at argv[*i] (taking its value): true when it was one. */
static bool
global_option(int argc, char **argv, int *i, const char **config_file)
{
	const char *a = argv[*i];
	const char *val = *i + 1 < argc ? argv[*i + 1] : NULL;
	const char **dst = NULL;
	if (strcmp(a, "--json") == 0) {
		opt.json = true;
		return true;
	}
	if (strcmp(a, "--server") == 0)
		dst = &opt.server;
	else if (strcmp(a, "--config") == 0)
		dst = config_file;
	else if (strcmp(a, "--ca") == 0)
		dst = &opt.ca;
	else if (strcmp(a, "--cert") == 0)
		dst = &opt.cert;
	else if (strcmp(a, "--key") == 0)
		dst = &opt.key;
	else if (strcmp(a, "--timeout") != 0)
		return false;
	if (val == NULL)
		die(EXIT_USAGE, "%s wants a value", a);
	if (dst != NULL) {
		*dst = val;
	} else {
		if (config_parse_duration(val, &opt.timeout_ms) != 0 || opt.timeout_ms == 0)
			die(EXIT_USAGE, "--timeout: '%s' is not a duration (e.g. 5s)", val);
		opt.req_timeout_ms = opt.timeout_ms;
	}
	(*i)++;
	return true;
}

/* relayctl quota [USER|ADDR]: the hourly quota windows (max_messages_per_hour_per_*). */
static int
cmd_quota(int argc, char **argv)
{
	Relay__QuotaRequest qr = RELAY__QUOTA_REQUEST__INIT;
	if (argc > 1)
		die(EXIT_USAGE, "quota takes at most one USER or ADDR");
	if (argc == 1)
		qr.name = argv[0];
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_QUOTA;
	req.quota = &qr;
	Relay__AdminReply *r = call(&req);
	const Relay__QuotaReply *q = r->quota;
	if (q == NULL)
		die(EXIT_FAILED, "reply without quotas (a node older than relayctl?)");
	if (opt.json) {
		printf("{\"now_ms\":%" PRIu64 ",", q->now_ms);
		if (q->client_key)
			json_kv_str("client_key", q->client_key, false), putchar(',');
		printf("\"windows\":[");
		for (size_t i = 0; i < q->n_windows; i++) {
			const Relay__QuotaWindow *w = q->windows[i];
			printf("%s{", i ? "," : "");
			json_kv_str("kind", w->kind, false);
			json_kv_str("name", w->name, true);
			json_kv_u64("count", w->count, true);
			json_kv_u64("limit", w->limit, true);
			json_kv_u64("start_ms", w->start_ms, true);
			json_kv_u64("reset_ms", w->reset_ms, true);
			putchar('}');
		}
		printf("],\"truncated\":%s}\n", q->truncated ? "true" : "false");
	} else {
		char in[32];
		printf("%-7s %-40s %7s %7s  %s\n", "KIND", "NAME", "COUNT", "LIMIT", "RESETS IN");
		for (size_t i = 0; i < q->n_windows; i++) {
			const Relay__QuotaWindow *w = q->windows[i];
			char lim[24];
			snprintf(lim, sizeof(lim), w->limit ? "%" PRIu64 : "-", w->limit);
			printf("%-7s %-40s %7u %7s  %s\n", w->kind, w->name, w->count, lim,
			       fmt_age(w->reset_ms, q->now_ms, in, sizeof(in)));
		}
		if (q->n_windows == 0 && qr.name)
			printf("nothing counted for %s this hour\n", qr.name);
		if (q->truncated)
			printf("(more windows than shown)\n");
	}
	relay__admin_reply__free_unpacked(r, NULL);
	return EXIT_OK;
}

int
main(int argc, char **argv)
{
	const char *config_file = NULL;
	static struct relay_config cfg;
	/* global options anywhere; the rest (command and its arguments) in order (static: lives
	 * until exit) */
	static char **args;
	args = calloc((size_t)argc + 1, sizeof(char *));
	int nargs = 0;
	if (args == NULL)
		die(EXIT_FAILED, "out of memory");
	for (int k = 1; k < argc; k++) {
		if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
			usage(stdout);
			return EXIT_OK;
		}
		if (!global_option(argc, argv, &k, &config_file))
			args[nargs++] = argv[k];
	}
	if (nargs > 0 && args[0][0] == '-') {
		usage(stderr);
		die(EXIT_USAGE, "unknown option '%s'", args[0]);
	}
	if (config_file != NULL) {
		/* as relayd reads it: the file, then RELAYD_* variables (a pod's cluster cert/key) */
		if (config_init(&cfg) != 0 || config_load_file(&cfg, config_file) != 0 ||
		    config_load_env(&cfg, environ) != 0)
			die(EXIT_USAGE, "%s", config_error());
		/* the node's unix socket when it is there (same host, relayd's user or root) */
		static char sock[CONFIG_SOCKET_PATH_MAX + 8];
		char path[CONFIG_SOCKET_PATH_MAX];
		struct stat sb;
		if (opt.server == NULL && config_admin_socket_path(&cfg, path, sizeof(path)) == 0 &&
		    stat(path, &sb) == 0 && S_ISSOCK(sb.st_mode)) {
			snprintf(sock, sizeof(sock), "unix:%s", path);
			opt.server = sock;
		}
		if (opt.server == NULL && cfg.admin_listen.n > 0)
			opt.server = cfg.admin_listen.v[0].text;
		/* admin_listen with admin_ca is mutual TLS: the node shows its cluster cert (checked
		 * against cluster_ca), we show a certificate of admin_ca, never a member's */
		if (opt.server != NULL && strncmp(opt.server, "unix:", 5) != 0 && cfg.admin_ca[0]) {
			if (opt.ca == NULL)
				opt.ca = cfg.cluster_ca;
			if (opt.cert == NULL || opt.key == NULL)
				die(EXIT_USAGE, "%s is mutual TLS (admin_ca): give --cert and --key, a "
				    "certificate of admin_ca (scripts/make-cluster-certs.sh: admin.crt)",
				    opt.server);
		}
	}
	if (opt.server == NULL)
		opt.server = getenv("RELAYCTL_SERVER");
	if (opt.server == NULL)
		opt.server = "127.0.0.1:7402";
	if ((opt.ca || opt.cert || opt.key) && !(opt.ca && opt.cert && opt.key))
		die(EXIT_USAGE, "--ca, --cert and --key go together");
	if (nargs == 0) {
		usage(stderr);
		die(EXIT_USAGE, "no command given");
	}
	int i = 0;
	argc = nargs;
	argv = args;
	const char *cmd = argv[i++];
	if (strcmp(cmd, "status") == 0) {
		if (i != argc)
			die(EXIT_USAGE, "status takes no arguments ('%s')", argv[i]);
		return cmd_status();
	}
	if (strcmp(cmd, "queue") == 0) {
		if (i == argc)
			die(EXIT_USAGE, "queue wants list, show, retry, hold, release or delete");
		const char *sub = argv[i++];
		if (strcmp(sub, "list") == 0)
			return cmd_queue_list(argc - i, argv + i);
		if (strcmp(sub, "show") == 0)
			return cmd_queue_show(argc - i, argv + i);
		if (strcmp(sub, "delete") == 0)
			return cmd_queue_delete(argc - i, argv + i);
		if (strcmp(sub, "retry") == 0 || strcmp(sub, "hold") == 0 ||
		    strcmp(sub, "release") == 0)
			return cmd_queue_change(sub, argc - i, argv + i);
		die(EXIT_USAGE,
		    "unknown queue command '%s' (list, show, retry, hold, release, delete)", sub);
	}
	if (strcmp(cmd, "node") == 0)
		return cmd_node(argc - i, argv + i);
	if (strcmp(cmd, "leader") == 0)
		return cmd_leader(argc - i, argv + i);
	if (strcmp(cmd, "drain") == 0)
		return cmd_drain(argc - i, argv + i);
	if (strcmp(cmd, "quota") == 0)
		return cmd_quota(argc - i, argv + i);
	usage(stderr);
	die(EXIT_USAGE, "unknown command '%s'", cmd);
}
