/*
 * fuzz_admin_request.c - what a relayctl client sends (issue 12 sec. 5: protobuf from a client),
 * against the real admin endpoint (admin_new_local: no listener) over a real single node: a
 * cluster opened once per process in a temporary data_dir, seeded with three messages
 * (queue ids 1A00000000000000000001 to ...03), on a libuv loop that runs until the request is
 * answered.  Changes go through the log as they do in relayd, so state carries over between
 * inputs (a deleted message stays deleted), as it would on a node.
 * Invariants: every request gets exactly one reply, within a deadline; every reply decodes;
 * a failure says why.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "admin.pb-c.h"
#include "cluster.h"
#include "config.h"
#include "relay.pb-c.h"

#define FUZZ_REPLY_DEADLINE_MS 10000

static uv_loop_t loop;
static struct cluster *cl;
static struct admin *ad;
static struct relay_config cfg;
static char dir[64];
static int replies, seeded;
static uv_timer_t guard;
static bool guard_fired;

static void
reply_cb(void *arg, const void *data, size_t len)
{
	(void)arg;
	Relay__AdminReply *r = relay__admin_reply__unpack(NULL, len, data);
	if (r == NULL)
		abort();
	if (!r->ok && r->error == NULL && r->queue_delete == NULL && r->queue_change == NULL)
		abort();
	relay__admin_reply__free_unpacked(r, NULL);
	replies++;
}

static void
seed_cb(void *arg, int status)
{
	(void)arg;
	if (status != 0)
		abort();
	seeded++;
}

static void
guard_cb(uv_timer_t *t)
{
	(void)t;
	guard_fired = true;
}

static void
cleanup(void)
{
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz_admin_request: could not remove %s\n", dir);
}

static void
run_until(int *counter, int want)
{
	guard_fired = false;
	uv_timer_start(&guard, guard_cb, FUZZ_REPLY_DEADLINE_MS, 0);
	while (*counter < want && !guard_fired)
		uv_run(&loop, UV_RUN_ONCE);
	uv_timer_stop(&guard);
	if (*counter != want)
		abort(); /* no reply within the deadline, or more than one */
}

static void
setup(void)
{
	snprintf(dir, sizeof(dir), "/tmp/fuzz-admin-XXXXXX");
	if (mkdtemp(dir) == NULL || uv_loop_init(&loop) != 0)
		abort();
	atexit(cleanup);
	uv_timer_init(&loop, &guard);
	if (config_init(&cfg) != 0 || config_set(&cfg, "node_id", "fuzz1", "fuzz") != 0 ||
	    config_set(&cfg, "data_dir", dir, "fuzz") != 0)
		abort();
	struct cluster_config cc = {.node_id = "fuzz1", .data_dir = dir};
	if (cluster_open(&loop, &cc, &cl) != 0)
		abort();
	for (int i = 1; i <= 3; i++) {
		char qid[32], rcpt[32];
		snprintf(qid, sizeof(qid), "1A000000000000000000%02d", i); /* 22 hex digits */
		snprintf(rcpt, sizeof(rcpt), "r%d@d%d.test", i, i);
		Relay__Recipient r = RELAY__RECIPIENT__INIT;
		r.addr = rcpt;
		Relay__Recipient *rp[] = {&r};
		Relay__Accept a = RELAY__ACCEPT__INIT;
		a.queue_id = qid;
		a.mail_from = "s@src.test";
		a.n_rcpts = 1;
		a.rcpts = rp;
		a.body.data = (uint8_t *)"Subject: s\r\n\r\nbody\r\n";
		a.body.len = 20;
		a.received_ms = 1700000000000ull;
		Relay__Command c = RELAY__COMMAND__INIT;
		c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
		c.accept = &a;
		if (cluster_propose(cl, &c, seed_cb, NULL) != 0)
			abort();
		run_until(&seeded, i);
	}
	if (admin_new_local(&loop, &cfg, cl, reply_cb, NULL, &ad) != 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (ad == NULL)
		setup();
	int want = replies + 1;
	admin_request(ad, data, size);
	run_until(&replies, want);
	return 0;
}
