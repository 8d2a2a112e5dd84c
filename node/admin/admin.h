/*
 * admin.h: relayd's admin endpoint for relayctl (proto/admin.proto over the cluster transport's
 * request/reply channel), on admin_socket (a unix socket, mode 0600) and/or admin_listen (TCP:
 * mutual TLS when admin_ca is set, relayctl's certificates being of admin_ca and the node's its
 * cluster cert; plain otherwise, which config_check allows only on loopback).
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

/* Listens on cfg->admin_listen (if set) and unix_path (if not NULL).  ca/cert/key (admin_ca and
 * the node's cluster cert and key): all three or NULL (plain TCP).  Returns 0, or -1 with a
 * message in err. */
int admin_start(uv_loop_t *loop, const struct relay_config *cfg, const char *ca, const char *cert,
		const char *key, const char *unix_path, struct cluster *cluster, struct admin **out,
		char *err, size_t errlen);

/* For tests and the fuzz harness (tests/fuzz/fuzz_admin_request.c): an endpoint without a
 * listener; admin_request() hands it a request as the listener would, and its one reply goes
 * to reply(reply_arg, ...) (now or from a later cluster callback on the loop).  0 or -1. */
int admin_new_local(uv_loop_t *loop, const struct relay_config *cfg, struct cluster *cluster,
		    void (*reply)(void *arg, const void *data, size_t len), void *reply_arg,
		    struct admin **out);
/* One request (data borrowed for the call), answered once; the next only after the reply. */
void admin_request(struct admin *a, const void *data, size_t len);

/* Stops serving; a change in progress still completes in the cluster but is not answered.
 * done(arg) runs on the loop once everything is freed. */
void admin_stop(struct admin *a, void (*done)(void *arg), void *arg);

#endif
