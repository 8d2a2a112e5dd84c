/*
 * delivery.h - the delivery engine: turns queued recipients into SMTP transactions on the libuv
 * loop, and their results into Outcome commands proposed through the cluster.
 *
 * Shape (OpenSMTPD mta-like):
 *   scheduler  a timer wakes at the queue's next due time (queue_fsm_next_due_ms); due messages
 *              (queue_fsm_due, next-attempt order) are read (record + body) and split into jobs,
 *              one per (message, route), at most MTA_MAX_RCPTS recipients each.  A message with
 *              a job in flight is not started again.
 *   route      transport entry of the recipient domain, else relayhost, else the domain's MX.
 *              "[host]:port" and transport targets are looked up with resolver_host (no MX).
 *   destination one per route: resolves once (null MX / NXDOMAIN bounce, temporary errors defer),
 *              queues its jobs, and runs at most max_connections_per_destination connections
 *              (max_deliveries over all destinations).
 *   connection  one mta_session over libuv (+ client TLS for STARTTLS); takes the destination's
 *              jobs one after another (at most max_messages_per_connection; idle, it waits
 *              DLV_IDLE_MS for the next one), fails over to the next address / next MX on
 *              connect errors, non-220 greetings, 4xx to MAIL/DATA/dot, a lost connection,
 *              a phase deadline; every attempt ends within delivery_attempt_timeout
 *              (mta_session.h deadlines, on the monotonic clock: node/clock.h).
 *   commit     right before the end of data the lease is asked again (ownership.h
 *              own_may_commit): without it the connection closes without the "." and the
 *              recipients stay queued, with no Outcome (the lease bounds the whole attempt).
 *   outcome    when every job of a message is done: one Outcome per (kind, reply, relay) group,
 *              deferred ones with the next attempt from retry.h (or failed when queue_lifetime is
 *              over), a DSN (RFC 3464) per message and reason attached as the Outcome's dsn
 *              (failure, delay after delay_warning_time, success when NOTIFY=SUCCESS), never for
 *              the null reverse-path.  Nothing is applied directly: the queue changes only when
 *              the Outcome commits (G2, and G3: a crash before that re-delivers).
 *
 * Logs: one line per recipient outcome, Postfix-like:
 *   <queue id> to=<rcpt> relay=host[addr]:port delay=1.2 dsn=2.0.0 status=sent (250 2.0.0 Ok)
 *
 * Threads: everything runs on the loop thread.
 */
#ifndef RELAY_DELIVERY_H
#define RELAY_DELIVERY_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "queue_id.h"

struct relay_config;
struct cluster;
struct delivery;

/*
 * Starts the engine on loop: cfg and cluster are borrowed and must outlive it.  Returns 0 and
 * *out, or -1 with a message in err (bad DNS servers, TLS context).
 */
int delivery_start(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
		   struct delivery **out, char *err, size_t errlen);

/*
 * Stops starting jobs, aborts open connections (their recipients stay queued: the next run
 * retries them), waits for outcome proposals in flight, frees everything in close callbacks,
 * then calls done(arg) on the loop (never inside this call).  d must not be used afterwards.
 */
void delivery_close(struct delivery *d, void (*done)(void *arg), void *arg);

struct delivery_stats {
	uint64_t jobs_started, connections, messages_sent;
	uint64_t rcpts_delivered, rcpts_deferred, rcpts_failed, dsns;
	uint64_t inflight_msgs, active_conns;
	uint64_t dns_lookups;	/* MX or host lookups started (the resolver's cache answers some) */
	uint64_t dns_failures;	/* lookups that failed temporarily (SERVFAIL, timeout, ...) */
	uint64_t dns_permanent; /* lookups with a permanent answer: NXDOMAIN, null MX, no host */
	uint64_t rate_waits;	/* jobs held back by max_messages_per_minute_per_destination */
	uint64_t loops;		/* destinations bounced 5.4.6: every host was this node */
	/* delivery ownership */
	uint64_t member_proposals; /* Member commands proposed (own LIVE/DRAINED, leader verdicts) */
	uint64_t own_failures;	   /* Member/Renew proposals that failed */
	uint64_t jobs_dropped;	   /* queued jobs dropped: lease lost or domain moved */
	uint64_t renews;	   /* Renews committed */
	int64_t lease_left_ms;	   /* this node's lease: ms left (negative: lapsed; INT64_MIN: never
				      held), on the monotonic clock */
	uint64_t commits_refused;  /* attempts abandoned before their end of data: the lease (minus
				      its margin) lapsed or the domain moved */
	uint64_t dests_dead;	   /* destinations found dead (no DNS answer, no host reached) */
	uint64_t domains_deferred; /* DeferDomain commands proposed for them */
	uint64_t jobs_suspended;   /* jobs that ended without an outcome: their domain deferred */
	uint64_t expired_swept;	   /* messages bounced by the expiry sweep (domain deferred) */
	uint64_t phase_timeouts;   /* attempts cut by a phase deadline (RFC 5321 4.5.3.2) */
	uint64_t attempt_timeouts; /* attempts cut by delivery_attempt_timeout */
	int64_t self_state;	   /* enum queue_member_state of this node, -1 not a member */
};
void delivery_get_stats(const struct delivery *d, struct delivery_stats *st);

#endif
