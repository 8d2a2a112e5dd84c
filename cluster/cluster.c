/*
 * cluster.c - single-node cluster: propose -> group-commit log write -> commit -> apply -> cb.
 * (Stub: being implemented.)
 */
#include "cluster.h"
#include "queue_fsm.h"

static const struct {
	int code;
	const char *str;
} cluster__errors[] = {
#define CLUSTER__ERRNO_STR(name, val, str) {val, str},
	CLUSTER_ERRNO_MAP(CLUSTER__ERRNO_STR)
#undef CLUSTER__ERRNO_STR
};

const char *cluster_strerror(int code)
{
	for (size_t i = 0; i < sizeof(cluster__errors) / sizeof(cluster__errors[0]); i++)
		if (cluster__errors[i].code == code)
			return cluster__errors[i].str;
	return code == 0 ? "success" : "unknown error";
}

int cluster_open(uv_loop_t *loop, const struct cluster_config *cfg, struct cluster **out)
{
	return CLUSTER_EIO;
}

int cluster_propose(struct cluster *c, const Relay__Command *cmd, cluster_propose_cb cb, void *arg)
{
	return CLUSTER_ECLOSED;
}

void cluster_close(struct cluster *c, void (*done)(void *arg), void *arg)
{
}

int cluster_dump_queue(const char *data_dir, FILE *out, int json)
{
	return CLUSTER_EIO;
}

void cluster_stats(struct cluster *c, struct cluster_stats *st)
{
}

struct queue_fsm *cluster_queue(struct cluster *c)
{
	return NULL;
}
