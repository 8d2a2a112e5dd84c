/*
 * metrics.c: the /metrics text and the /readyz decision (see metrics.h).
 */
#include "metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cluster.h"
#include "delivery.h"
#include "queue_fsm.h"
#include "smtp_server.h"

static void
family(struct http_text *t, const char *name, const char *type, const char *help)
{
	http_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
counter(struct http_text *t, const char *name, const char *help, uint64_t v)
{
	family(t, name, "counter", help);
	http_printf(t, "%s %" PRIu64 "\n", name, v);
}

static void
gauge(struct http_text *t, const char *name, const char *help, uint64_t v)
{
	family(t, name, "gauge", help);
	http_printf(t, "%s %" PRIu64 "\n", name, v);
}

static void
render_smtp(struct http_text *t, const struct smtp_server *srv)
{
	struct smtp_server_stats st;
	smtp_server_stats(srv, &st);
	const struct smtp_counters *sc = smtp_server_counters(srv);

	counter(t, "relay_smtp_sessions_total", "SMTP sessions started.", st.sessions_total);
	gauge(t, "relay_smtp_sessions_active", "SMTP sessions open now.", st.sessions_active);
	counter(t, "relay_smtp_connections_refused_total",
		"Connections refused by max_connections or max_connections_per_client.",
		st.refused);
	family(t, "relay_smtp_proxy_rejected_total", "counter",
	       "Connections cut for a PROXY protocol problem, by reason.");
	http_printf(t, "relay_smtp_proxy_rejected_total{reason=\"invalid\"} %" PRIu64 "\n",
		    st.proxy_invalid);
	http_printf(t, "relay_smtp_proxy_rejected_total{reason=\"not_allowed\"} %" PRIu64 "\n",
		    st.proxy_refused);
	counter(t, "relay_tls_handshakes_total", "Completed STARTTLS handshakes.",
		st.tls_handshakes);
	counter(t, "relay_tls_handshake_failures_total", "Failed STARTTLS handshakes.",
		sc->tls_failed);
	family(t, "relay_smtp_auth_total", "counter", "AUTH attempts by result.");
	http_printf(t, "relay_smtp_auth_total{result=\"ok\"} %" PRIu64 "\n", st.auth_ok);
	http_printf(t, "relay_smtp_auth_total{result=\"failed\"} %" PRIu64 "\n", st.auth_failed);
	http_printf(t, "relay_smtp_auth_total{result=\"throttled\"} %" PRIu64 "\n",
		    st.auth_throttled);
	gauge(t, "relay_smtp_auth_checks", "Password checks queued or running on the AUTH workers.",
	      st.auth_jobs);
	family(t, "relay_smtp_data_cut_total", "counter",
	       "Messages cut with 421 4.4.2 during their data, by deadline.");
	http_printf(t, "relay_smtp_data_cut_total{reason=\"min_data_rate\"} %" PRIu64 "\n",
		    st.data_rate_cut);
	http_printf(t, "relay_smtp_data_cut_total{reason=\"data_total_timeout\"} %" PRIu64 "\n",
		    st.data_total_cut);
	gauge(t, "relay_smtp_receive_memory_bytes",
	      "Bytes of bodies being received and of proposals not yet committed "
	      "(max_receive_memory).",
	      st.receive_memory_used);
	gauge(t, "relay_smtp_receive_memory_peak_bytes",
	      "Largest relay_smtp_receive_memory_bytes seen.", st.receive_memory_peak);
	gauge(t, "relay_smtp_receive_memory_limit_bytes", "max_receive_memory.",
	      st.receive_memory_limit);
	counter(t, "relay_messages_accepted_total", "Messages answered 250 (committed).",
		st.accepted);
	family(t, "relay_messages_rejected_total", "counter",
	       "Messages, recipients and commands refused, by reason.");
#define X(name, help)                                                                              \
	if (strcmp(#name, "messages") != 0)                                                        \
		http_printf(t,                                                                     \
			    "relay_messages_rejected_total{reason=\"" #name "\"} %" PRIu64 "\n",   \
			    sc->name);
	SMTP_COUNTERS(X)
#undef X
	http_printf(t, "relay_messages_rejected_total{reason=\"queue_unavailable\"} %" PRIu64 "\n",
		    st.accept_failed);
	family(t, "relay_dkim_messages_total", "counter",
	       "Messages from mynetworks or AUTH clients by DKIM signing result (dkim_keys).");
	http_printf(t, "relay_dkim_messages_total{result=\"signed\"} %" PRIu64 "\n", st.dkim[0]);
	http_printf(t, "relay_dkim_messages_total{result=\"no_key\"} %" PRIu64 "\n", st.dkim[1]);
	http_printf(t, "relay_dkim_messages_total{result=\"unsigned\"} %" PRIu64 "\n", st.dkim[2]);

	static const unsigned bounds[SMTP_LATENCY_NBUCKETS] = SMTP_LATENCY_BUCKETS_MS;
	family(t, "relay_proposal_latency_seconds", "histogram",
	       "From the end of DATA/BDAT to the cluster's answer (commit and apply).");
	for (size_t i = 0; i < SMTP_LATENCY_NBUCKETS; i++)
		http_printf(t, "relay_proposal_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
			    bounds[i] / 1000.0, st.latency_bucket[i]);
	http_printf(t, "relay_proposal_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
		    st.latency_count);
	http_printf(t, "relay_proposal_latency_seconds_sum %.6f\n", st.latency_sum_s);
	http_printf(t, "relay_proposal_latency_seconds_count %" PRIu64 "\n", st.latency_count);
}

/* The samples of one stage of relay_cluster_log_write_seconds. */
static void
write_hist(struct http_text *t, const char *stage, const struct cluster_hist *h)
{
	static const unsigned bounds[CLUSTER_WRITE_NBUCKETS] = CLUSTER_WRITE_BUCKETS_US;
	for (size_t i = 0; i < CLUSTER_WRITE_NBUCKETS; i++)
		http_printf(
		    t,
		    "relay_cluster_log_write_seconds_bucket{stage=\"%s\",le=\"%g\"} %" PRIu64 "\n",
		    stage, bounds[i] / 1e6, h->bucket[i]);
	http_printf(
	    t, "relay_cluster_log_write_seconds_bucket{stage=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
	    stage, h->count);
	http_printf(t, "relay_cluster_log_write_seconds_sum{stage=\"%s\"} %.6f\n", stage,
		    h->sum_us / 1e6);
	http_printf(t, "relay_cluster_log_write_seconds_count{stage=\"%s\"} %" PRIu64 "\n", stage,
		    h->count);
}

/* The peer transport (replicated mode): frames, drops, the endpoint guard's repairs. */
static void
render_transport(struct http_text *t, const struct cluster_transport_counts *x)
{
	counter(t, "relay_cluster_frames_sent_total",
		"Peer frames written to a cluster connection (all their bytes in the kernel).",
		x->frames_sent);
	counter(t, "relay_cluster_frames_received_total",
		"Peer frames received and taken (a stranger's included).", x->frames_received);
	counter(t, "relay_cluster_stranger_frames_total",
		"Frames taken from a node outside the address book holding a certificate of the "
		"cluster CA (a join request).",
		x->strangers);
	family(t, "relay_cluster_frames_dropped_total", "counter",
	       "Peer frames dropped: not sent because the peer's queue was full (queue_full); "
	       "received with a wrong recipient or cluster, an unknown sender or one its "
	       "certificate does not name (unauthenticated), or undecodable or over the size "
	       "bound (malformed).");
	static const char *const reasons[] = {"queue_full", "unauthenticated", "malformed"};
	const uint64_t v[] = {x->dropped_full, x->dropped_unauth, x->dropped_malformed};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		http_printf(t, "relay_cluster_frames_dropped_total{reason=\"%s\"} %" PRIu64 "\n",
			    reasons[i], v[i]);
	counter(t, "relay_cluster_write_errors_total",
		"Cluster connections closed by a failed write (the frame being written is sent "
		"again on the next connection).",
		x->send_errors);
	counter(t, "relay_cluster_redials_total",
		"Connections to a peer closed and dialed again because a connect and handshake, "
		"or a send, stood still.",
		x->redials);
	counter(t, "relay_cluster_handshake_failures_total",
		"Cluster connections whose TLS or protocol handshake was refused or cut (either "
		"end).",
		x->handshake_failures);
	counter(t, "relay_cluster_inbound_refused_total",
		"Inbound cluster connections closed at once: too many open.", x->inbound_refused);
	counter(t, "relay_cluster_stale_connections_closed_total",
		"Inbound peer connections closed after a newer one from the same peer superseded "
		"them.",
		x->stale_closed);
	gauge(t, "relay_cluster_inbound_connections", "Inbound cluster connections open.",
	      x->inbound);
}

static void
render_cluster(struct http_text *t, struct cluster *c)
{
	struct cluster_stats cs;
	cluster_stats(c, &cs);
	counter(t, "relay_cluster_proposals_total", "Proposals taken by the cluster.",
		cs.proposals);
	counter(t, "relay_cluster_proposals_failed_total",
		"Proposals refused or completed with an error.", cs.rejected + cs.failed_proposals);
	counter(t, "relay_cluster_log_writes_total", "Synced group-commit log writes.", cs.batches);
	counter(t, "relay_cluster_log_bytes_total", "Log bytes written.", cs.bytes);
	counter(t, "relay_cluster_write_failures_total", "Failed storage writes.", cs.failures);
	family(t, "relay_cluster_log_write_seconds", "histogram",
	       "Synced log writes: storage time on the worker thread (stage=\"disk\") and from "
	       "handing the write over to its completion on the loop (stage=\"turn\").");
	write_hist(t, "disk", &cs.write_disk);
	write_hist(t, "turn", &cs.write_turn);
	struct cluster_status st;
	cluster_status(c, &st);
	gauge(t, "relay_raft_commit_index", "Last committed log index.",
	      st.replicated ? st.commit_index : cs.last_index);
	gauge(t, "relay_raft_applied_index", "Last log index applied to the queue.",
	      cs.applied_index);
	gauge(t, "relay_queue_messages", "Messages in the queue.", cs.messages);
	family(t, "relay_queue_recipients", "gauge", "Recipients in the queue by state.");
	http_printf(t, "relay_queue_recipients{state=\"queued\"} %" PRIu64 "\n", cs.rcpts_queued);
	http_printf(t, "relay_queue_recipients{state=\"delivered\"} %" PRIu64 "\n",
		    cs.rcpts_delivered);
	http_printf(t, "relay_queue_recipients{state=\"failed\"} %" PRIu64 "\n", cs.rcpts_failed);
	http_printf(t, "relay_queue_recipients{state=\"deleted\"} %" PRIu64 "\n", cs.rcpts_deleted);

	gauge(t, "relay_raft_term", "Current Raft term.", st.term);
	gauge(t, "relay_raft_last_index", "Last index in this node's Raft log.", st.last_index);
	gauge(t, "relay_raft_snapshot_index", "Index of the latest snapshot.", st.snapshot_index);
	gauge(t, "relay_raft_is_leader", "1 while this node is the Raft leader.",
	      strcmp(st.role, "leader") == 0);
	gauge(t, "relay_raft_has_leader", "1 while this node knows a leader.",
	      st.leader[0] != '\0' || !st.replicated);
	counter(t, "relay_raft_leader_changes_total", "Times the known leader changed.",
		st.leader_changes);
	counter(t, "relay_cluster_forwarded_total",
		"Proposals forwarded to the leader (retries included).", st.forwarded);
	counter(t, "relay_cluster_forward_retries_total", "Forwards sent again.",
		st.forward_retries);
	counter(t, "relay_cluster_forwards_expired_total",
		"Forwarded proposals the leader dropped: they arrived after their origin had "
		"answered 451 (a cut link's backlog).",
		st.forwards_expired);
	counter(t, "relay_cluster_renews_refused_total",
		"Forwarded lease Renews the leader dropped: their node is not in the Raft "
		"configuration (removed), so its lease must lapse.",
		st.renews_refused);
	counter(t, "relay_raft_leader_lost_total",
		"Times this follower's connection to its leader closed and it elected a new one "
		"without waiting for the election timeout.",
		st.leader_lost);
	counter(t, "relay_cluster_proposals_timed_out_total",
		"Proposals not committed within propose_timeout.", st.timed_out);
	counter(t, "relay_raft_snapshots_total", "Snapshots taken.", st.snapshots);
	counter(t, "relay_raft_snapshots_installed_total",
		"Snapshots received from a leader and fetched completely.", st.snapshots_installed);
	gauge(t, "relay_raft_snapshot_installing",
	      "1 while a snapshot's key/values are being fetched (the queue is incomplete).",
	      (uint64_t)st.snapshot_installing);
	counter(t, "relay_raft_snapshot_fetches_total",
		"Snapshot fetch sessions started (a restarted one counts again).",
		st.snapshot_fetches);
	counter(t, "relay_raft_snapshot_fetch_bytes_total",
		"Key and value bytes received by snapshot fetches.", st.snapshot_fetch_bytes);
	counter(t, "relay_raft_snapshot_fetch_failures_total",
		"Snapshot fetch requests unanswered, refused or answered badly.",
		st.snapshot_fetch_failures);
	counter(t, "relay_raft_snapshot_serves_total",
		"Snapshot fetch sessions served to other nodes.", st.snapshot_serves);
	counter(t, "relay_raft_snapshot_served_bytes_total",
		"Key and value bytes sent to other nodes' snapshot fetches.",
		st.snapshot_served_bytes);
	counter(t, "relay_raft_snapshots_deferred_total",
		"Compactions the leader put off for a member that still needs its log.",
		st.snapshots_deferred);
	counter(t, "relay_raft_retention_exceeded_total",
		"Compactions made anyway: the log kept for a member passed its bound.",
		st.retention_exceeded);
	counter(t, "relay_raft_dropped_messages_total",
		"Raft messages dropped (outbox or peer queue full, undecodable).", st.raft_dropped);
	counter(t, "relay_raft_foreign_frames_total",
		"Peer frames dropped because they carry another cluster's id.", st.foreign_dropped);
	if (st.replicated)
		render_transport(t, &st.transport);
	if (st.n_peers) {
		family(t, "relay_raft_peer_lag", "gauge",
		       "Leader only: entries a member is behind the leader's log.");
		for (unsigned i = 0; i < st.n_peers; i++)
			http_printf(t, "relay_raft_peer_lag{peer=\"%s\"} %" PRIu64 "\n",
				    st.peers[i].name, st.peers[i].lag);
		family(t, "relay_raft_peer_last_contact_seconds", "gauge",
		       "Time since a message from the member arrived (-1: never).");
		for (unsigned i = 0; i < st.n_peers; i++)
			http_printf(t, "relay_raft_peer_last_contact_seconds{peer=\"%s\"} %.3f\n",
				    st.peers[i].name,
				    st.peers[i].last_contact_ms < 0
					? -1.0
					: st.peers[i].last_contact_ms / 1000.0);
		family(t, "relay_raft_peer_connected", "gauge",
		       "1 while a cluster connection to the member is up.");
		for (unsigned i = 0; i < st.n_peers; i++)
			http_printf(t, "relay_raft_peer_connected{peer=\"%s\"} %d\n",
				    st.peers[i].name, st.peers[i].connected);
		family(t, "relay_raft_peer_queued_frames", "gauge",
		       "Frames waiting in the transport for the member (bounded per member; beyond "
		       "the bound dropped: "
		       "relay_cluster_frames_dropped_total{reason=\"queue_full\"}).");
		for (unsigned i = 0; i < st.n_peers; i++)
			http_printf(t, "relay_raft_peer_queued_frames{peer=\"%s\"} %u\n",
				    st.peers[i].name, st.peers[i].queued);
		family(t, "relay_raft_peer_queued_bytes", "gauge",
		       "Payload bytes of the frames waiting for the member.");
		for (unsigned i = 0; i < st.n_peers; i++)
			http_printf(t, "relay_raft_peer_queued_bytes{peer=\"%s\"} %" PRIu64 "\n",
				    st.peers[i].name, st.peers[i].queued_bytes);
	}
}

/* Delivery ownership: the member table and assignments (applied state), this node's lease. */
static void
render_ownership(struct http_text *t, struct cluster *c, const struct delivery *dl)
{
	struct queue_fsm *q = cluster_queue(c);
	static struct queue_member mem[QUEUE_MEMBERS_MAX]; /* loop thread only */
	size_t n = queue_fsm_members(q, mem, QUEUE_MEMBERS_MAX);
	family(t, "relay_ownership_member_state", "gauge",
	       "1 for each member's delivery-ownership state (applied member table).");
	for (size_t i = 0; i < n; i++)
		http_printf(t, "relay_ownership_member_state{node=\"%s\",state=\"%s\"} 1\n",
			    mem[i].node, queue_member_state_name(mem[i].state));
	family(t, "relay_ownership_domains", "gauge", "Destination domains a member owns.");
	for (size_t i = 0; i < n; i++)
		http_printf(t, "relay_ownership_domains{node=\"%s\"} %" PRIu64 "\n", mem[i].node,
			    mem[i].domains);
	family(t, "relay_ownership_recipients", "gauge",
	       "Queued recipients in the domains a member owns.");
	for (size_t i = 0; i < n; i++)
		http_printf(t, "relay_ownership_recipients{node=\"%s\"} %" PRIu64 "\n", mem[i].node,
			    mem[i].rcpts_owned);
	struct queue_fsm_stats qs;
	queue_fsm_stats(q, &qs);
	counter(t, "relay_ownership_stale_outcomes_total",
		"Recipients of outcomes ignored for a stale ownership epoch (fencing).",
		qs.stale_outcomes);
	counter(t, "relay_ownership_reassigned_total", "Domain assignments moved to another owner.",
		qs.reassigned);
	counter(t, "relay_queue_domain_deferrals_total",
		"DeferDomain commands applied: a dead destination's domain deferred as a whole.",
		qs.defers);
	if (dl != NULL) {
		struct delivery_stats ds;
		delivery_get_stats(dl, &ds);
		family(t, "relay_ownership_lease_remaining_seconds", "gauge",
		       "Time left on this node's delivery lease (negative: lapsed).");
		/* computed by the engine on its monotonic clock: never against this wall clock */
		double left =
		    ds.lease_left_ms == INT64_MIN ? -1.0 : (double)ds.lease_left_ms / 1000.0;
		http_printf(t, "relay_ownership_lease_remaining_seconds %.3f\n", left);
		counter(t, "relay_delivery_commits_refused_total",
			"Attempts abandoned before their end of data: the lease (minus its margin) "
			"lapsed or the domain moved; the recipients stay queued.",
			ds.commits_refused);
		family(t, "relay_delivery_timeouts_total", "counter",
		       "Attempts cut by a deadline: a phase's (RFC 5321 4.5.3.2) or the attempt's "
		       "(delivery_attempt_timeout).");
		http_printf(t, "relay_delivery_timeouts_total{deadline=\"phase\"} %" PRIu64 "\n",
			    ds.phase_timeouts);
		http_printf(t, "relay_delivery_timeouts_total{deadline=\"attempt\"} %" PRIu64 "\n",
			    ds.attempt_timeouts);
		counter(t, "relay_ownership_renews_total", "Lease renewals committed.", ds.renews);
		counter(t, "relay_ownership_member_proposals_total",
			"Member commands this node proposed.", ds.member_proposals);
		counter(
		    t, "relay_ownership_jobs_dropped_total",
		    "Queued delivery jobs dropped because the lease lapsed or the domain moved.",
		    ds.jobs_dropped);
		gauge(t, "relay_delivery_inflight_messages", "Messages with attempts in flight.",
		      ds.inflight_msgs);
		family(t, "relay_delivery_recipients_total", "counter",
		       "Recipients this node attempted, by result (bounced: failed for good, DSN "
		       "to the sender).");
		http_printf(t,
			    "relay_delivery_recipients_total{result=\"delivered\"} %" PRIu64 "\n",
			    ds.rcpts_delivered);
		http_printf(t, "relay_delivery_recipients_total{result=\"deferred\"} %" PRIu64 "\n",
			    ds.rcpts_deferred);
		http_printf(t, "relay_delivery_recipients_total{result=\"bounced\"} %" PRIu64 "\n",
			    ds.rcpts_failed);
		counter(t, "relay_delivery_dsns_total", "DSN messages this node generated.",
			ds.dsns);
		counter(t, "relay_delivery_connections_total", "Outgoing SMTP connections opened.",
			ds.connections);
		counter(t, "relay_delivery_messages_sent_total",
			"Messages handed to a destination (one per SMTP transaction).",
			ds.messages_sent);
		counter(t, "relay_delivery_dead_destinations_total",
			"Destinations found dead (no DNS answer, no host reached): their jobs wait "
			"for the deferral of their domains.",
			ds.dests_dead);
		counter(t, "relay_delivery_domain_deferrals_proposed_total",
			"DeferDomain commands this node proposed.", ds.domains_deferred);
		counter(t, "relay_delivery_jobs_suspended_total",
			"Jobs of a dead destination that ended without an outcome (their domain "
			"deferred).",
			ds.jobs_suspended);
		counter(t, "relay_delivery_expired_swept_total",
			"Messages of a deferred domain bounced when their queue_lifetime ended.",
			ds.expired_swept);
		counter(t, "relay_delivery_rate_limited_total",
			"Times a destination's next message waited for "
			"max_messages_per_minute_per_destination.",
			ds.rate_waits);
		counter(t, "relay_delivery_loops_total",
			"Destinations whose every host was this node: recipients bounced 5.4.6.",
			ds.loops);
		counter(t, "relay_dns_lookups_total", "MX or host lookups started for deliveries.",
			ds.dns_lookups);
		family(t, "relay_dns_failures_total", "counter",
		       "Lookups that failed, temporary (deferred) or permanent (bounced).");
		http_printf(t, "relay_dns_failures_total{kind=\"temporary\"} %" PRIu64 "\n",
			    ds.dns_failures);
		http_printf(t, "relay_dns_failures_total{kind=\"permanent\"} %" PRIu64 "\n",
			    ds.dns_permanent);
	}
}

/* Bound on applied entries behind the commit index for /readyz. */
#define METRICS_READY_MAX_LAG 1000

/* /readyz for the cluster: a leader is known and this node applied close to the commit index. */
static bool
cluster_ready(struct cluster *c, char *reason, size_t reason_len)
{
	struct cluster_status st;
	cluster_status(c, &st);
	if (!st.replicated)
		return true;
	if (st.leader[0] == '\0') {
		snprintf(reason, reason_len, "no leader");
		return false;
	}
	if (st.snapshot_installing) {
		snprintf(reason, reason_len, "catching up: fetching a snapshot");
		return false;
	}
	if (st.commit_index > st.applied_index + METRICS_READY_MAX_LAG) {
		snprintf(reason, reason_len, "catching up: applied %" PRIu64 " of %" PRIu64,
			 st.applied_index, st.commit_index);
		return false;
	}
	return true;
}

void
metrics_fill(void *arg, struct http_text *t, bool *ready, char *reason, size_t reason_len)
{
	const struct metrics_sources *m = arg;
	gauge(t, "relay_up", "1 while relayd runs.", 1);
	if (m->smtp != NULL)
		render_smtp(t, m->smtp);
	if (m->cluster != NULL) {
		render_cluster(t, m->cluster);
		render_ownership(t, m->cluster, m->delivery);
	}
	*ready = m->cluster != NULL && m->smtp != NULL && !m->stopping;
	if (m->stopping)
		snprintf(reason, reason_len, "shutting down");
	else if (!*ready)
		snprintf(reason, reason_len, "starting");
	else
		*ready = cluster_ready(m->cluster, reason, reason_len);
}
