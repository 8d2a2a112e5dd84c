/*
 * cluster_util.c - what the single node (cluster.c) and the replicated host (cluster_raft.c)
 * share: the error strings (cluster_strerror), the "cluster:" log line, error mapping from the
 * store and the queue state machine, the database path, and the queue counters of struct
 * cluster_stats with its log write histograms.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cluster_types.h"
#include "cluster_util.h"
#include "queue_fsm.h"
#include "store.h"

static const struct {
	int code;
	const char *str;
} cluster__errors[] = {
#define CLUSTER__ERRNO_STR(name, val, str) {val, str},
    CLUSTER_ERRNO_MAP(CLUSTER__ERRNO_STR)
#undef CLUSTER__ERRNO_STR
};

const char *
cluster_strerror(int code)
{
	for (size_t i = 0; i < sizeof(cluster__errors) / sizeof(cluster__errors[0]); i++)
		if (cluster__errors[i].code == code)
			return cluster__errors[i].str;
	return code == 0 ? "success" : "unknown error";
}

void
cluster__log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("cluster: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

int
cluster__store_err(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case STORE_ENOMEM:
		return CLUSTER_ENOMEM;
	case STORE_ECORRUPT:
		return CLUSTER_ECORRUPT;
	case STORE_ETOOBIG:
		return CLUSTER_ETOOBIG;
	case STORE_EINVAL:
		return CLUSTER_EINVAL;
	case STORE_ENOTFOUND:
		return CLUSTER_ENOTFOUND;
	default:
		return CLUSTER_EIO;
	}
}

int
cluster__queue_err(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case QUEUE_EINVAL:
		return CLUSTER_EINVAL;
	case QUEUE_ENOMEM:
		return CLUSTER_ENOMEM;
	case QUEUE_ECORRUPT:
		return CLUSTER_ECORRUPT;
	case QUEUE_ENOTFOUND:
		return CLUSTER_ENOTFOUND;
	case QUEUE_EQUOTA:
		return CLUSTER_EQUOTA;
	default:
		return CLUSTER_EIO;
	}
}

int
cluster__mkdirs(const char *path)
{
	char buf[CLUSTER__PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf))
		return CLUSTER_EINVAL;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != 0)
			continue;
		char save = buf[i];
		buf[i] = 0;
		if (mkdir(buf, 0700) && errno != EEXIST) {
			cluster__log("mkdir path=%s error=\"%s\"", buf, strerror(errno));
			return CLUSTER_EIO;
		}
		buf[i] = save;
	}
	return 0;
}

int
cluster__db_path(const char *data_dir, char *out, size_t size)
{
	if (!data_dir || !*data_dir)
		return CLUSTER_EINVAL;
	int n = snprintf(out, size, "%s/db", data_dir);
	return n < 0 || (size_t)n >= size ? CLUSTER_EINVAL : 0;
}

void
cluster__queue_stats(struct queue_fsm *fsm, struct cluster_stats *st)
{
	struct queue_counts qc;
	queue_fsm_counts(fsm, &qc);
	st->messages = qc.messages;
	st->rcpts_queued = qc.rcpts[QUEUE_RCPT_QUEUED];
	st->rcpts_delivered = qc.rcpts[QUEUE_RCPT_DELIVERED];
	st->rcpts_failed = qc.rcpts[QUEUE_RCPT_FAILED];
	st->rcpts_deleted = qc.rcpts[QUEUE_RCPT_DELETED];
	struct queue_fsm_stats qs;
	queue_fsm_stats(fsm, &qs);
	st->outcomes_delivered = qs.delivered;
	st->outcomes_deferred = qs.deferred;
	st->outcomes_failed = qs.failed;
	st->deletes = qs.deleted;
	st->messages_deleted = qs.messages_deleted;
	st->dsns = qs.dsns;
}

size_t
cluster_status_members(const struct cluster_status *st, const char **out, size_t cap)
{
	size_t n = 0;
	if (!st->replicated)
		return 0;
	for (unsigned i = 0; i < st->n_peers && n < cap; i++) {
		const struct cluster_peer_status *p = &st->peers[i];
		if (p->in_conf || (strcmp(p->membership, "leaving") != 0 &&
				   strcmp(p->membership, "removed") != 0))
			out[n++] = p->name;
	}
	return n;
}

void
cluster__hist_add(struct cluster_hist *h, uint64_t us)
{
	static const uint64_t bounds[CLUSTER_WRITE_NBUCKETS] = CLUSTER_WRITE_BUCKETS_US;
	for (size_t i = 0; i < CLUSTER_WRITE_NBUCKETS; i++)
		if (us <= bounds[i])
			h->bucket[i]++;
	h->count++;
	h->sum_us += us;
}
