/*
 * relayctl: the admin CLI.  Sends one request to a node's admin endpoint (admin_listen) and
 * prints the reply as a table, or as JSON with --json (one object; schema in the README).
 *
 *   relayctl [options] status
 *   relayctl [options] queue list [--state active|deferred] [--domain D] [--limit N]
 *   relayctl [options] queue show ID
 *   relayctl [options] queue delete ID... | --all-deferred
 *
 * Options: --server HOST:PORT (default: $RELAYCTL_SERVER, else admin_listen of --config FILE,
 * else 127.0.0.1:7402), --config FILE (a relayd config: admin_listen and the cluster TLS files
 * are taken from it), --ca/--cert/--key FILE (mutual TLS with the cluster CA), --timeout DUR
 * (default 5s), --json.
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
#include <time.h>

#include "admin.pb-c.h"
#include "config.h"
#include "transport.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3 };

static struct {
	const char *server;
	const char *ca, *cert, *key;
	uint64_t timeout_ms;
	bool json;
} opt = {.timeout_ms = 5000};

static void __attribute__((noreturn, format(printf, 2, 3)))
die(int code, const char *fmt, ...)
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
	fprintf(out,
		"usage: relayctl [--server HOST:PORT] [--config FILE] [--json] [--timeout DUR]\n"
		"                [--ca FILE --cert FILE --key FILE] COMMAND\n"
		"commands:\n"
		"  status                                  members, roles, indexes, queue depth\n"
		"  queue list [--state active|deferred] [--domain D] [--limit N]\n"
		"  queue show ID\n"
		"  queue delete ID... | queue delete --all-deferred\n"
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
	struct transport_admin_config tc = {
	    .listen = opt.server,
	    .ca_file = opt.ca,
	    .cert_file = opt.cert,
	    .key_file = opt.key,
	};
	void *reply = NULL;
	size_t rlen = 0;
	int rc = transport_admin_request(&tc, NULL, buf, len, (unsigned)opt.timeout_ms, &reply,
					 &rlen);
	free(buf);
	if (rc == TRANSPORT_ETIMEDOUT || rc == TRANSPORT_ECLOSED || rc == TRANSPORT_ENNG)
		die(EXIT_UNREACHABLE, "no answer from %s within %" PRIu64 " ms (%s)", opt.server,
		    opt.timeout_ms, transport_strerror(rc));
	if (rc != 0)
		die(rc == TRANSPORT_EADDR ? EXIT_USAGE : EXIT_UNREACHABLE, "%s: %s", opt.server,
		    transport_strerror(rc));
	Relay__AdminReply *r = relay__admin_reply__unpack(NULL, rlen, reply);
	free(reply);
	if (r == NULL)
		die(EXIT_FAILED, "%s sent a reply that does not decode", opt.server);
	if (!r->ok && r->queue_delete == NULL)
		die(EXIT_FAILED, "%s", r->error ? r->error : "request failed");
	return r;
}

static int
cmd_status(void)
{
	Relay__StatusRequest sr = RELAY__STATUS_REQUEST__INIT;
	Relay__AdminRequest req = RELAY__ADMIN_REQUEST__INIT;
	req.req_case = RELAY__ADMIN_REQUEST__REQ_STATUS;
	req.status = &sr;
	Relay__AdminReply *r = call(&req);
	const Relay__StatusReply *s = r->status;
	if (s == NULL)
		die(EXIT_FAILED, "reply without status");
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
		printf(",\"members\":[");
		for (size_t i = 0; i < s->n_peers; i++) {
			const Relay__PeerStatus *p = s->peers[i];
			printf("%s{", i ? "," : "");
			json_kv_str("id", p->id, false);
			printf(",\"self\":%s,\"connected\":%s,\"healthy\":%s", p->self ? "true" : "false",
			       p->connected ? "true" : "false", p->healthy ? "true" : "false");
			if (p->has_match)
				json_kv_u64("match", p->match, true);
			if (p->has_lag)
				json_kv_u64("lag", p->lag, true);
			if (p->has_last_contact_ms)
				printf(",\"last_contact_ms\":%" PRId64, p->last_contact_ms);
			putchar('}');
		}
		printf("],\"queue\":{");
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
		       "  leader changes %" PRIu64 "\n\n",
		       s->commit_index, s->applied_index, s->last_index, s->leader_changes);
		printf("%-24s %-6s %-9s %-7s %10s %8s %12s\n", "MEMBER", "SELF", "CONNECTED",
		       "HEALTH", "MATCH", "LAG", "LAST_CONTACT");
		for (size_t i = 0; i < s->n_peers; i++) {
			const Relay__PeerStatus *p = s->peers[i];
			char m[24] = "-", l[24] = "-", c[24] = "-";
			if (p->has_match)
				snprintf(m, sizeof(m), "%" PRIu64, p->match);
			if (p->has_lag)
				snprintf(l, sizeof(l), "%" PRIu64, p->lag);
			if (p->has_last_contact_ms && p->last_contact_ms >= 0)
				snprintf(c, sizeof(c), "%" PRId64 "ms", p->last_contact_ms);
			printf("%-24s %-6s %-9s %-7s %10s %8s %12s\n", p->id, p->self ? "yes" : "",
			       p->connected ? "yes" : "no", p->healthy ? "ok" : "DOWN", m, l, c);
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
			       it->first_rcpt ? it->first_rcpt : "",
			       it->nqueued > 1 ? " ..." : "");
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
			if (rc->last_reply)
				json_kv_str("last_reply", rc->last_reply, true);
			if (rc->last_relay)
				json_kv_str("last_relay", rc->last_relay, true);
			putchar('}');
		}
		printf("]}\n");
	} else {
		char t[40], n[40];
		printf("queue id:  %s\nfrom:      <%s>\nreceived:  %s from %s at %s\nsize:      %" PRIu64
		       "\n",
		       q->queue_id, q->mail_from, fmt_time(q->received_ms, t, sizeof(t)),
		       q->client_addr ? q->client_addr : "?", q->node_id ? q->node_id : "?",
		       q->size);
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

int
main(int argc, char **argv)
{
	const char *config_file = NULL;
	static struct relay_config cfg;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		const char *a = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return EXIT_OK;
		} else if (strcmp(a, "--json") == 0) {
			opt.json = true;
		} else if (strcmp(a, "--server") == 0 && val) {
			opt.server = val;
			i++;
		} else if (strcmp(a, "--config") == 0 && val) {
			config_file = val;
			i++;
		} else if (strcmp(a, "--ca") == 0 && val) {
			opt.ca = val;
			i++;
		} else if (strcmp(a, "--cert") == 0 && val) {
			opt.cert = val;
			i++;
		} else if (strcmp(a, "--key") == 0 && val) {
			opt.key = val;
			i++;
		} else if (strcmp(a, "--timeout") == 0 && val) {
			if (config_parse_duration(val, &opt.timeout_ms) != 0 || opt.timeout_ms == 0)
				die(EXIT_USAGE, "--timeout: '%s' is not a duration (e.g. 5s)", val);
			i++;
		} else {
			usage(stderr);
			die(EXIT_USAGE, "unknown option '%s'", a);
		}
	}
	if (config_file != NULL) {
		if (config_init(&cfg) != 0 || config_load_file(&cfg, config_file) != 0)
			die(EXIT_USAGE, "%s", config_error());
		if (opt.server == NULL && cfg.admin_listen.n > 0)
			opt.server = cfg.admin_listen.v[0].text;
	}
	if (opt.server == NULL)
		opt.server = getenv("RELAYCTL_SERVER");
	if (opt.server == NULL)
		opt.server = "127.0.0.1:7402";
	if ((opt.ca || opt.cert || opt.key) && !(opt.ca && opt.cert && opt.key))
		die(EXIT_USAGE, "--ca, --cert and --key go together");
	if (i == argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	const char *cmd = argv[i++];
	if (strcmp(cmd, "status") == 0) {
		if (i != argc)
			die(EXIT_USAGE, "status takes no arguments");
		return cmd_status();
	}
	if (strcmp(cmd, "queue") == 0 && i < argc) {
		const char *sub = argv[i++];
		if (strcmp(sub, "list") == 0)
			return cmd_queue_list(argc - i, argv + i);
		if (strcmp(sub, "show") == 0)
			return cmd_queue_show(argc - i, argv + i);
		if (strcmp(sub, "delete") == 0)
			return cmd_queue_delete(argc - i, argv + i);
		die(EXIT_USAGE, "unknown queue command '%s' (list, show, delete)", sub);
	}
	usage(stderr);
	die(EXIT_USAGE, "unknown command '%s'", cmd);
}
