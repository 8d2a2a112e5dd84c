/*
 * admin.h: relayd's admin endpoint on admin_listen, for relayctl (proto/admin.proto over the
 * cluster transport's request/reply channel; mutual TLS with the cluster CA when cluster_ca,
 * cluster_cert and cluster_key are set, plain TCP otherwise, which config_check allows only on
 * loopback).
 *
 * Reads (status, queue list, queue show) answer from this node's applied state.  Changes
 * (queue delete|retry|hold|release, node add|remove, drain) are proposed through the cluster
 * like any other command and answered once committed and applied here, so every node shows the
 * same result; a leader transfer is handed to the leader (cluster_transfer_leader) and
 * answered at once.  Node add/remove and drain then take their course (cluster.h
 * "Membership", the draining node's delivery); relayctl follows them in status.
 */
#ifndef RELAY_ADMIN_H
#define RELAY_ADMIN_H

#include <stddef.h>
#include <uv.h>

#define ADMIN_LIST_MAX 10000	/* items in one queue list reply */
#define ADMIN_DELETE_MAX 10000	/* messages in one queue delete */
#define ADMIN_DOMAINS_MAX 1000	/* domains listed in one status reply */

struct relay_config;
struct cluster;
struct admin;

/* ca/cert/key: all three or NULL (plain TCP).  Returns 0, or -1 with a message in err. */
int admin_start(uv_loop_t *loop, const struct relay_config *cfg, const char *ca, const char *cert,
		const char *key, struct cluster *cluster, struct admin **out, char *err,
		size_t errlen);

/* Stops serving; a change in progress still completes in the cluster but is not answered.
 * done(arg) runs on the loop once everything is freed. */
void admin_stop(struct admin *a, void (*done)(void *arg), void *arg);

#endif
