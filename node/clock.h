/*
 * clock.h - the two clocks of a node, in milliseconds.  Every time in node/ is a uint64_t named
 * *_ms read from one of these two functions, and each decision names which one it reads:
 *
 *   clock_mono_ms()  CLOCK_BOOTTIME (CLOCK_MONOTONIC where the kernel lacks it): never steps,
 *                    counts time a suspended machine slept.  Everything that decides who may act
 *                    or how long something may take reads it: the delivery lease and the
 *                    leader's verdicts on the others' leases (cluster/ownership.h is fed this
 *                    clock), the deadlines of a delivery attempt and its phases, rate limits,
 *                    cache expiries.  Its values mean nothing on another node or after a restart:
 *                    they are never written to the log, the store or the wire.
 *   clock_wall_ms()  CLOCK_REALTIME (Unix time): may jump when NTP or an operator steps it.  Only
 *                    for times that are recorded or shown: the at_ms fields of log entries
 *                    (Renew, Member, Outcome, ...), received_ms, next_attempt_ms and queue
 *                    lifetimes (times that travel inside entries, shared by the cluster), DSN and
 *                    log dates.  Never compared with a lease or a deadline.
 *
 * BOOTTIME rather than MONOTONIC: a node whose machine was suspended must see its lease as
 * lapsed when it wakes, as the leader, which kept counting, does (MONOTONIC stops while
 * suspended).  Both clocks are slewed alike by NTP (rate only, bounded); the lease core's grace
 * covers rate differences.
 */
#ifndef RELAY_CLOCK_H
#define RELAY_CLOCK_H

#include <stdint.h>

/* Milliseconds on the node's monotonic clock (see above); never 0 on a running system. */
uint64_t clock_mono_ms(void);

/* Milliseconds since the Unix epoch (wall clock, may step). */
uint64_t clock_wall_ms(void);

#endif
