/*
 * auth_pool.h: the AUTH worker threads: password checks (crypt(3), deliberately slow) run here,
 * never on libuv's thread pool, where the store's synced writes run (issue 12 sec. 4: 1000 TLS
 * sessions sending AUTH must not stall every 250).
 *
 * AUTH_POOL_THREADS threads at a lower scheduling priority (nice +AUTH_POOL_NICE) take jobs from
 * one queue bounded by max_jobs (max_concurrent_auth: queued and running together); a job over
 * the bound is refused at once (AUTH_POOL_EBUSY, the glue answers 454 4.7.0).  Results come back
 * on the loop thread through a uv_async, in completion order.
 *
 * Lifetime: auth_pool_start() on the loop thread; auth_pool_stop() once no job is wanted any
 * more: jobs still queued complete with ok = 0 and canceled = true, the threads are joined
 * (a running crypt finishes first), the async handle closed, then done(arg) on the loop.
 */
#ifndef RELAY_AUTH_POOL_H
#define RELAY_AUTH_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "auth.h"

#define AUTH_POOL_THREADS 2 /* crypt workers (the relay has other work for the remaining cores) */
#define AUTH_POOL_NICE 10   /* their nice increment: accepting mail goes first */
#define AUTH_POOL_EBUSY (-16)

struct auth_pool;

/* A check's result, on the loop thread.  user: the name checked (borrowed for the call); ok:
 * the password matches; canceled: the pool stopped before the job ran (ok is 0). */
typedef void (*auth_pool_cb)(void *arg, const char *user, bool ok, bool canceled);

/* Starts the threads.  0, or -1 with a message in err. */
int auth_pool_start(uv_loop_t *loop, unsigned max_jobs, struct auth_pool **out, char *err,
		    size_t errlen);

/* Queues a check of user/password (both copied; the copy of the password is wiped after the
 * check) against table t (borrowed: it must live until cb).  0, AUTH_POOL_EBUSY (max_jobs in the
 * pool), or -ENOMEM; cb is called only after 0. */
int auth_pool_submit(struct auth_pool *p, const struct auth_table *t, const char *user,
		     const char *password, auth_pool_cb cb, void *arg);

/* Jobs queued or running now. */
unsigned auth_pool_jobs(const struct auth_pool *p);

/* See the lifetime above.  NULL p: done(arg) is not called. */
void auth_pool_stop(struct auth_pool *p, void (*done)(void *arg), void *arg);

#endif
