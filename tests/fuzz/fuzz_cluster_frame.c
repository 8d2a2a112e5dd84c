/*
 * fuzz_cluster_frame.c - what a cluster peer sends (issue 12 sec. 5: protobuf from a peer).
 * Byte 0 picks the path, the rest is the peer's bytes:
 *   0  a PeerFrame (transport.proto) as the transport unpacks it; a RAFT kind's payload
 *      goes on as in 1
 *   1  a RaftMsg payload: transport_raft_decode(), then raft_step() into a fresh core of a
 *      3-voter cluster (byte 1: a follower, or a candidate that campaigned), and every ready
 *      the core then produces is drained
 *   2  a forwarded proposal (a packed Command, CRAFT_KIND_PROPOSE): queue_validate(), and if
 *      valid queue_apply() into an in-memory queue state machine that already holds a
 *      message (so Outcome, Delete, Hold ... find one), twice (a duplicate is a no-op)
 *   3  SnapshotFetch and SnapshotChunk unpacked as the snapshot server and client do
 * Invariants: decode errors are errors, never crashes; a message the decoder accepts never
 * makes raft_step or queue_apply crash or break their bounds (ASan/UBSan catch the rest).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue_fsm.h"
#include "raft.h"
#include "relay.pb-c.h"
#include "store.h"
#include "transport.h"
#include "transport.pb-c.h"

static void
drain_ready(struct raft *r)
{
	struct raft_ready rd;
	for (int guard = 0; guard < 64 && raft_ready_get(r, &rd) == 1; guard++) {
		if (rd.n_msgs > 1024 || rd.n_committed > 4096)
			abort();
		uint64_t seq = rd.need_persist ? rd.seq : 0;
		raft_advance(r, &rd);
		if (seq)
			raft_persisted(r, seq);
	}
}

static void
raft_path(const uint8_t *data, size_t size, bool campaign)
{
	struct transport_raft_in in;
	if (transport_raft_decode(data, size, &in) != 0)
		return;
	struct raft_config cfg = {.id = 1, .election_tick = 10, .heartbeat_tick = 1,
				  .pre_vote = true, .check_quorum = true, .rng_seed = 7};
	struct raft *r;
	if (raft_new(&cfg, &r) != 0)
		abort();
	struct raft_conf conf = {.n_voters = 3, .voters = {1, 2, 3}};
	if (raft_bootstrap(r, &conf) != 0)
		abort();
	drain_ready(r);
	if (campaign) {
		raft_campaign(r);
		drain_ready(r);
	}
	int rc = raft_step(r, &in.msg);
	if (rc > 0)
		abort();
	drain_ready(r);
	for (int i = 0; i < 3; i++) {
		raft_tick(r);
		drain_ready(r);
	}
	raft_free(r);
	transport_raft_in_fini(&in);
}

static void
frame_path(const uint8_t *data, size_t size)
{
	Relay__PeerFrame *f = relay__peer_frame__unpack(NULL, size, data);
	if (f == NULL)
		return;
	if (f->from == NULL || f->to == NULL || (f->payload.len > 0 && f->payload.data == NULL))
		abort();
	if (f->has_kind && f->kind == TRANSPORT_KIND_RAFT)
		raft_path(f->payload.data, f->payload.len, false);
	relay__peer_frame__free_unpacked(f, NULL);
}

/* An Accept of queue id 1A00000000000000000001 with two recipients, applied at index 1. */
static void
seed(struct queue_fsm *q, struct store *s)
{
	Relay__Recipient r0 = RELAY__RECIPIENT__INIT, r1 = RELAY__RECIPIENT__INIT;
	r0.addr = "a@one.test";
	r1.addr = "b@two.test";
	Relay__Recipient *rp[] = {&r0, &r1};
	Relay__Accept a = RELAY__ACCEPT__INIT;
	a.queue_id = "1A00000000000000000001";
	a.mail_from = "s@src.test";
	a.n_rcpts = 2;
	a.rcpts = rp;
	a.body.data = (uint8_t *)"Subject: s\r\n\r\nbody\r\n";
	a.body.len = 20;
	a.received_ms = 1700000000000ull;
	Relay__Command c = RELAY__COMMAND__INIT;
	c.cmd_case = RELAY__COMMAND__CMD_ACCEPT;
	c.accept = &a;
	struct store_batch b;
	store_batch_init(&b);
	if (queue_apply(q, 1, &c, &b) != 0 || store_write(s, &b, 0) != 0)
		abort();
	store_batch_fini(&b);
}

static void
command_path(const uint8_t *data, size_t size)
{
	Relay__Command *cmd = relay__command__unpack(NULL, size, data);
	if (cmd == NULL)
		return;
	if (queue_validate(cmd) == 0) {
		struct store *s;
		struct queue_fsm *q;
		if (store_mem_new(&s) != 0 || queue_fsm_new(s, &q) != 0)
			abort();
		seed(q, s);
		for (uint64_t index = 2; index <= 3; index++) {
			struct store_batch b;
			store_batch_init(&b);
			if (queue_apply(q, index, cmd, &b) == 0 && store_write(s, &b, 0) != 0)
				abort();
			store_batch_fini(&b);
		}
		struct queue_counts qc;
		queue_fsm_counts(q, &qc);
		queue_fsm_free(q);
		store_free(s);
	}
	relay__command__free_unpacked(cmd, NULL);
}

static void
snapshot_path(const uint8_t *data, size_t size)
{
	Relay__SnapshotFetch *f = relay__snapshot_fetch__unpack(NULL, size, data);
	if (f != NULL)
		relay__snapshot_fetch__free_unpacked(f, NULL);
	Relay__SnapshotChunk *c = relay__snapshot_chunk__unpack(NULL, size, data);
	if (c != NULL) {
		for (size_t i = 0; i < c->n_kvs; i++)
			if (c->kvs[i]->key.len > 0 && c->kvs[i]->key.data == NULL)
				abort();
		relay__snapshot_chunk__free_unpacked(c, NULL);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	switch (data[0] % 4) {
	case 0:
		frame_path(data + 1, size - 1);
		break;
	case 1:
		raft_path(data + 2, size - 2, data[1] & 1);
		break;
	case 2:
		command_path(data + 1, size - 1);
		break;
	default:
		snapshot_path(data + 1, size - 1);
		break;
	}
	return 0;
}
