/*
 * auth_pool.c: the AUTH worker threads (see auth_pool.h).
 *
 * One mutex guards both lists: `todo` (submitted, FIFO) and `done` (checked, waiting for the
 * loop).  A worker takes the head of `todo`, checks it without the lock, appends it to `done`
 * and wakes the loop with uv_async_send (coalesced by libuv: the async callback drains the whole
 * list).  `njobs` counts jobs from submit to callback, so max_jobs bounds the memory and the
 * crypt work a flood can queue.
 */
#include "auth_pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

struct auth_job {
	const struct auth_table *t; /* borrowed */
	char user[AUTH_NAME_MAX + 1];
	char pass[AUTH_NAME_MAX + 1]; /* wiped once checked */
	auth_pool_cb cb;
	void *arg;
	bool ok, canceled;
	struct auth_job *next;
};

struct auth_pool {
	uv_loop_t *loop;
	uv_async_t async; /* wakes the loop when `done` is not empty */
	pthread_t threads[AUTH_POOL_THREADS];
	size_t nthreads;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct auth_job *todo, *todo_tail; /* guarded by mu */
	struct auth_job *done, *done_tail; /* guarded by mu */
	bool stopping;			   /* guarded by mu */
	unsigned njobs, max_jobs;	   /* loop thread only */
	void (*stopped)(void *);
	void *stopped_arg;
};

static void
push(struct auth_job **head, struct auth_job **tail, struct auth_job *j)
{
	j->next = NULL;
	if (*tail)
		(*tail)->next = j;
	else
		*head = j;
	*tail = j;
}

static void *
worker(void *arg)
{
	struct auth_pool *p = arg;
	/* Linux: a thread's nice value is its own (setpriority on its tid) */
	setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), AUTH_POOL_NICE);
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (p->todo == NULL && !p->stopping)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->todo == NULL)
			break; /* stopping and nothing left */
		struct auth_job *j = p->todo;
		p->todo = j->next;
		if (p->todo == NULL)
			p->todo_tail = NULL;
		if (p->stopping) {
			j->canceled = true;
		} else {
			pthread_mutex_unlock(&p->mu);
			j->ok = auth_table_check(j->t, j->user, j->pass) == 1;
			pthread_mutex_lock(&p->mu);
		}
		explicit_bzero(j->pass, sizeof(j->pass));
		push(&p->done, &p->done_tail, j);
		uv_async_send(&p->async);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* On the loop: hands every finished job to its callback. */
static void
async_cb(uv_async_t *h)
{
	struct auth_pool *p = h->data;
	pthread_mutex_lock(&p->mu);
	struct auth_job *j = p->done;
	p->done = p->done_tail = NULL;
	pthread_mutex_unlock(&p->mu);
	while (j != NULL) {
		struct auth_job *next = j->next;
		p->njobs--;
		j->cb(j->arg, j->user, j->ok, j->canceled);
		free(j);
		j = next;
	}
}

int
auth_pool_start(uv_loop_t *loop, unsigned max_jobs, struct auth_pool **out, char *err,
		size_t errlen)
{
	struct auth_pool *p = calloc(1, sizeof(*p));
	if (p == NULL) {
		snprintf(err, errlen, "auth workers: out of memory");
		return -1;
	}
	p->loop = loop;
	p->max_jobs = max_jobs ? max_jobs : 1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	if (uv_async_init(loop, &p->async, async_cb) != 0) {
		snprintf(err, errlen, "auth workers: uv_async_init failed");
		goto err_after_alloc;
	}
	p->async.data = p;
	for (; p->nthreads < AUTH_POOL_THREADS; p->nthreads++) {
		int rc = pthread_create(&p->threads[p->nthreads], NULL, worker, p);
		if (rc != 0) {
			snprintf(err, errlen, "auth workers: pthread_create: %s", strerror(rc));
			break;
		}
	}
	if (p->nthreads == 0) {
		uv_close((uv_handle_t *)&p->async, NULL); /* the process exits on this error */
		return -1;
	}
	*out = p;
	return 0;
err_after_alloc:
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
	return -1;
}

int
auth_pool_submit(struct auth_pool *p, const struct auth_table *t, const char *user,
		 const char *password, auth_pool_cb cb, void *arg)
{
	if (p->njobs >= p->max_jobs)
		return AUTH_POOL_EBUSY;
	struct auth_job *j = calloc(1, sizeof(*j));
	if (j == NULL)
		return -ENOMEM;
	j->t = t;
	snprintf(j->user, sizeof(j->user), "%s", user);
	snprintf(j->pass, sizeof(j->pass), "%s", password);
	j->cb = cb;
	j->arg = arg;
	p->njobs++;
	pthread_mutex_lock(&p->mu);
	push(&p->todo, &p->todo_tail, j);
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

unsigned
auth_pool_jobs(const struct auth_pool *p)
{
	return p->njobs;
}

static void
pool_closed_cb(uv_handle_t *h)
{
	struct auth_pool *p = h->data;
	void (*done)(void *) = p->stopped;
	void *arg = p->stopped_arg;
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p);
	if (done != NULL)
		done(arg);
}

void
auth_pool_stop(struct auth_pool *p, void (*done)(void *arg), void *arg)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	async_cb(&p->async); /* the canceled and the last finished jobs */
	p->stopped = done;
	p->stopped_arg = arg;
	uv_close((uv_handle_t *)&p->async, pool_closed_cb);
}
