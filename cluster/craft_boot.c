/*
 * craft_boot.c - identity, discovery, bootstrap and rejoin of the replicated host (craft_int.h).
 *
 * Identity.  A data_dir gets an incarnation, a random 64-bit number, when it is first
 * initialized: raft_meta "raft_ident" (with the cluster id once known) is written, synced,
 * before anything else.  The node's Raft id derives from its node id and incarnation
 * (peers.h), so a node whose disk was replaced comes back as a NEW Raft member: in nobody's
 * configuration, it cannot vote, be counted or campaign until the configuration admits it, and
 * the core ignores messages addressed to its former self.  A store written before incarnations
 * is incarnation 0 (Raft id as before).  The cluster id (random, drawn by the seed at bootstrap)
 * travels in every frame (the edge's envelope); frames of another cluster are dropped, counted
 * and logged.
 *
 * When a node bootstraps, and when it waits.  A node with Raft state never bootstraps.  An empty
 * node (no Raft state) asks every member of its config `peers` what it is (Hello, answered by
 * HelloReply, every CRAFT_HELLO_MS) and decides (craft__boot_decide, a pure function):
 *   - some member has Raft state and its bootstrap record holds this node at its current
 *     incarnation: adopt exactly that bootstrap (a member that missed the first offer);
 *   - some member has Raft state: a cluster exists, this node lost its disk (or joins): it asks
 *     the leader, through any member, to take it in under its incarnation (Rejoin, every
 *     retry_ms, until the configuration holds it); the leader proposes Peer{node, ACTIVE,
 *     incarnation} (if the book has the node; a node not in the book waits for relayctl node add)
 *     and then steers the configuration: the old incarnation out, the new one in as a learner,
 *     promoted once caught up;
 *   - every member answered, all empty, all with the same `peers`: the seed (the smallest node id
 *     in `peers`) draws the cluster id and bootstraps with every member as a voter at the
 *     incarnation it answered; the others then adopt its bootstrap (previous case);
 *   - otherwise it waits, logging event=bootstrap-wait with the members that did not answer (or
 *     whose `peers` differ).
 * A bootstrap is written (ident with the cluster id, bootstrap record, address book) in one
 * synced write before the core is created from it and before any offer is made, so a crash
 * replays the same bootstrap.  A node outside its own `peers` never bootstraps.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"

/* Discovery: Hellos this often (ms); bootstrap-wait logged at most this often. */
#define CRAFT_HELLO_MS 200u
#define CRAFT_BOOT_LOG_MS 5000u
#define CRAFT_IDENT_LEN 17

/* ---- the pure decision ---- */

/* What an empty node does, from what the members of `peers` answered (see the file comment).
 * *who: the member to adopt from or rejoin through, or (WAIT) the first one missing. */
int
craft__boot_decide(const struct craft_boot_peer *p, size_t n, int join, size_t *who)
{
	*who = SIZE_MAX;
	for (size_t i = 0; i < n; i++)
		if (!p[i].self && p[i].answered && p[i].member && p[i].offers_me) {
			*who = i;
			return CRAFT_BOOT_ADOPT;
		}
	for (size_t i = 0; i < n; i++)
		if (!p[i].self && p[i].answered && p[i].member) {
			*who = i;
			return CRAFT_BOOT_JOIN;
		}
	if (join)
		return CRAFT_BOOT_WAIT; /* outside its own `peers`: never bootstraps */
	size_t seed = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		if (!p[i].self && (!p[i].answered || !p[i].same_peers)) {
			*who = i;
			return CRAFT_BOOT_WAIT;
		}
		if (seed == SIZE_MAX || strcmp(p[i].node, p[seed].node) < 0)
			seed = i;
	}
	if (seed != SIZE_MAX && p[seed].self)
		return CRAFT_BOOT_SEED;
	*who = seed;
	return CRAFT_BOOT_WAIT; /* for the seed's bootstrap */
}

/* ---- identity ---- */

static int
craft__ident_put(struct store_batch *b, uint64_t inc, uint64_t cid)
{
	unsigned char v[CRAFT_IDENT_LEN];
	v[0] = CRAFT_META_VERSION;
	store_u64_encode(inc, v + 1);
	store_u64_encode(cid, v + 9);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_IDENT, sizeof(CRAFT_META_IDENT) - 1, v,
			       sizeof(v));
}

/* Loads this data_dir's identity, or creates it (written and synced at once): incarnation 0 for
 * a store that has Raft state from before incarnations, a random one for an empty store. */
int
craft__ident_load(struct craft *c, int has_raft_state)
{
	unsigned char *v;
	size_t vlen;
	int rv = store_get(c->store, STORE_CF_META, CRAFT_META_IDENT, sizeof(CRAFT_META_IDENT) - 1,
			   (void **)&v, &vlen);
	if (rv == 0) {
		if (vlen != CRAFT_IDENT_LEN || v[0] != CRAFT_META_VERSION) {
			free(v);
			craft__log(c, "open: raft_ident damaged");
			return CLUSTER_ECORRUPT;
		}
		c->inc = store_u64_decode(v + 1);
		c->cluster_id = store_u64_decode(v + 9);
		free(v);
		return 0;
	}
	if (rv != STORE_ENOTFOUND)
		return cluster__store_err(rv);
	c->inc = has_raft_state ? 0 : c->io.random64(c->io.arg);
	c->cluster_id = 0;
	struct store_batch b;
	store_batch_init(&b);
	rv = craft__ident_put(&b, c->inc, 0);
	if (!rv)
		rv = c->io.write_now(c->io.arg, &b, 1);
	store_batch_fini(&b);
	if (rv) {
		craft__log(c, "open: raft_ident not written error=\"%s\"", store_strerror(rv));
		return cluster__store_err(rv);
	}
	craft__log(c, "event=identity incarnation=%016" PRIx64 "%s", c->inc,
		   has_raft_state ? " (a store from before incarnations)" : " (a new data_dir)");
	return 0;
}

/* ---- the bootstrap record ---- */

/* Loads raft_meta "raft_boot" into c->bt (have_rec 0 when none). */
int
craft__bootrec_load(struct craft *c)
{
	void *v;
	size_t vlen;
	int rv = store_get(c->store, STORE_CF_META, CRAFT_META_BOOT, sizeof(CRAFT_META_BOOT) - 1,
			   &v, &vlen);
	if (rv == STORE_ENOTFOUND)
		return 0;
	if (rv)
		return cluster__store_err(rv);
	Relay__BootRecord *r = relay__boot_record__unpack(NULL, vlen, v);
	free(v);
	if (!r || !r->cluster_id || r->n_peers > CLUSTER_MAX_PEERS ||
	    craft__book_from_proto(&c->bt.rec, r->peers, r->n_peers)) {
		if (r)
			relay__boot_record__free_unpacked(r, NULL);
		craft__log(c, "open: raft_boot damaged");
		return CLUSTER_ECORRUPT;
	}
	c->bt.rec_cid = r->cluster_id;
	c->bt.have_rec = 1;
	relay__boot_record__free_unpacked(r, NULL);
	return 0;
}

static int
craft__bootrec_put(struct craft *c, struct store_batch *b)
{
	Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS], *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	Relay__BootRecord r = RELAY__BOOT_RECORD__INIT;
	r.cluster_id = c->bt.rec_cid;
	r.n_peers = craft__book_to_proto(&c->bt.rec, ps, pp);
	r.peers = pp;
	unsigned char buf[CRAFT_BOOTREC_MAX];
	size_t len = relay__boot_record__get_packed_size(&r);
	if (len > sizeof(buf))
		return STORE_EINVAL;
	relay__boot_record__pack(&r, buf);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_BOOT, sizeof(CRAFT_META_BOOT) - 1, buf,
			       len);
}

/* 1 when the record holds node at incarnation inc. */
static int
craft__rec_has(const struct craft_book *rec, const char *node, uint64_t inc)
{
	for (size_t k = 0; k < rec->n; k++)
		if (!strcmp(rec->e[k].node, node) && !rec->e[k].pending && rec->e[k].inc == inc)
			return 1;
	return 0;
}

/* FNV-1a of the sorted node ids of config `peers` (the book before any state): nodes whose
 * `peers` differ never bootstrap together. */
uint64_t
craft__peers_digest(const struct craft *c)
{
	const char *names[CLUSTER_MAX_PEERS];
	size_t n = 0;
	for (size_t i = 0; i < c->n_peers; i++)
		names[n++] = c->peers[i].name;
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
			const char *t = names[j];
			names[j] = names[j - 1];
			names[j - 1] = t;
		}
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		for (const unsigned char *p = (const unsigned char *)names[i];; p++) {
			h ^= *p;
			h *= 0x100000001b3ull;
			if (!*p)
				break;
		}
	return h;
}

/* Writes the bootstrap in rec (cluster id cid) in one synced write, then makes a new core from
 * it: every member of rec a voter at its incarnation. */
static int
craft__bootstrap(struct craft *c, uint64_t cid, const struct craft_book *rec, const char *how)
{
	c->bt.rec = *rec;
	c->bt.rec_cid = cid;
	/* the book: the initial members at their incarnations, known from the bootstrap */
	for (size_t k = 0; k < rec->n; k++) {
		const struct craft_book_ent *e = &rec->e[k];
		int i = craft__peer_by_name(c, e->node);
		if (i < 0)
			i = craft__book_add(c, e->node, e->addr, RELAY__PEER_STATE__PEER_ACTIVE, 1,
					    e->inc, 0);
		else if ((size_t)i != c->self)
			craft__book_set_inc(c, (size_t)i, e->inc);
	}
	struct store_batch b;
	store_batch_init(&b);
	int rv = craft__ident_put(&b, c->inc, cid);
	if (!rv)
		rv = craft__bootrec_put(c, &b);
	if (!rv)
		rv = craft__book_put(c, &b);
	if (!rv)
		rv = c->io.write_now(c->io.arg, &b, 1);
	store_batch_fini(&b);
	c->stats.fsyncs++;
	if (rv) {
		craft__log(c, "bootstrap not written error=\"%s\"; retried", store_strerror(rv));
		return cluster__store_err(rv);
	}
	c->cluster_id = cid;
	c->bt.have_rec = 1;
	struct raft_conf conf = {0};
	for (size_t k = 0; k < rec->n && conf.n_voters < RAFT_MAX_NODES; k++)
		conf.voters[conf.n_voters++] =
		    cluster_peer_raft_id_inc(rec->e[k].node, rec->e[k].inc);
	struct raft *r = NULL;
	if ((rv = raft_new(&c->rcfg, &r)) == 0 && (rv = raft_bootstrap(r, &conf)))
		raft_free(r);
	if (rv) {
		craft__log(c, "bootstrap error=\"%s\"; restart to replay it", raft_strerror(rv));
		c->failed = rv == RAFT_ENOMEM ? CLUSTER_ENOMEM : CLUSTER_EINVAL;
		return c->failed;
	}
	raft_free(c->raft);
	c->raft = r;
	c->conf_committed = conf;
	c->conf_index = 1;
	c->bt.phase = CRAFT_BOOT_DONE;
	craft__log(c, "event=bootstrap as=%s cluster=%016" PRIx64 " voters=%" PRIu32, how, cid,
		   conf.n_voters);
	craft__schedule(c);
	return 0;
}

/* Replays the bootstrap of the stored record (a crash came before its first Raft write). */
int
craft__boot_replay(struct craft *c)
{
	struct raft_conf conf = {0};
	for (size_t k = 0; k < c->bt.rec.n && conf.n_voters < RAFT_MAX_NODES; k++)
		conf.voters[conf.n_voters++] =
		    cluster_peer_raft_id_inc(c->bt.rec.e[k].node, c->bt.rec.e[k].inc);
	int rv = raft_bootstrap(c->raft, &conf);
	if (rv) {
		craft__log(c, "open: bootstrap error=\"%s\"", raft_strerror(rv));
		return CLUSTER_EINVAL;
	}
	c->bt.phase = CRAFT_BOOT_DONE;
	craft__log(c, "event=bootstrap as=replay cluster=%016" PRIx64 " voters=%" PRIu32,
		   c->bt.rec_cid, conf.n_voters);
	return 0;
}

/* ---- frames ---- */

static void
craft__send_hello(struct craft *c, size_t pi)
{
	Relay__Hello h = RELAY__HELLO__INIT;
	h.node = c->peers[c->self].name;
	h.incarnation = c->inc;
	h.has_cluster_id = c->cluster_id != 0;
	h.cluster_id = c->cluster_id;
	h.state = c->bt.phase == CRAFT_BOOT_DONE ? RELAY__NODE_STATE__NODE_MEMBER
						 : RELAY__NODE_STATE__NODE_EMPTY;
	h.addr = c->peers[c->self].addr;
	h.has_peers_digest = 1;
	h.peers_digest = c->bt.peers_digest;
	unsigned char buf[CRAFT_HELLO_MAX];
	size_t len = relay__hello__get_packed_size(&h);
	if (len > sizeof(buf))
		return;
	relay__hello__pack(&h, buf);
	craft__out(c, pi, CRAFT_KIND_HELLO, buf, len);
}

/* A Hello from member pi: answer what this node is. */
void
craft__recv_hello(struct craft *c, size_t pi, const void *data, size_t len)
{
	Relay__Hello *h = relay__hello__unpack(NULL, len, data);
	if (!h || strcmp(h->node, c->peers[pi].name)) {
		c->counters.raft_dropped++;
		if (h)
			relay__hello__free_unpacked(h, NULL);
		return;
	}
	craft__book_heard(c, pi, h->incarnation);
	Relay__HelloReply r = RELAY__HELLO_REPLY__INIT;
	Relay__BootRecord br = RELAY__BOOT_RECORD__INIT;
	Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS], *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	r.node = c->peers[c->self].name;
	r.incarnation = c->inc;
	r.has_cluster_id = c->cluster_id != 0;
	r.cluster_id = c->cluster_id;
	int member = c->bt.phase == CRAFT_BOOT_DONE;
	r.state = member ? RELAY__NODE_STATE__NODE_MEMBER : RELAY__NODE_STATE__NODE_EMPTY;
	int li = craft__peer_by_id(c, c->lead);
	r.leader = li >= 0 ? c->peers[li].name : "";
	/* the bootstrap is offered only once it is durable (craft__bootstrap wrote it first) */
	if (member && c->bt.have_rec && craft__rec_has(&c->bt.rec, h->node, h->incarnation)) {
		br.cluster_id = c->bt.rec_cid;
		br.n_peers = craft__book_to_proto(&c->bt.rec, ps, pp);
		br.peers = pp;
		r.boot = &br;
	}
	if (!c->ppending[pi] && (c->psince[pi] || !c->plocal[pi])) {
		r.has_known_incarnation = 1;
		r.known_incarnation = c->pinc[pi];
	}
	r.has_peers_digest = 1;
	r.peers_digest = c->bt.peers_digest;
	/* a member tells who the members are (the book as the log has it) */
	Relay__Peer mps[CLUSTER_MAX_PEERS], *mpp[CLUSTER_MAX_PEERS];
	if (member) {
		for (size_t i = 0; i < c->n_peers; i++) {
			if (c->plocal[i] || c->ppending[i] ||
			    c->pstate[i] == RELAY__PEER_STATE__PEER_LEFT)
				continue;
			Relay__Peer *mp = &mps[r.n_members];
			relay__peer__init(mp);
			mp->node = c->peers[i].name;
			mp->addr = c->peers[i].addr;
			mp->state = (Relay__PeerState)c->pstate[i];
			mp->has_incarnation = 1;
			mp->incarnation = i == c->self ? c->inc : c->pinc[i];
			mpp[r.n_members++] = mp;
		}
		r.members = mpp;
	}
	unsigned char buf[CRAFT_HELLO_MAX];
	size_t rl = relay__hello_reply__get_packed_size(&r);
	if (rl <= sizeof(buf)) {
		relay__hello_reply__pack(&r, buf);
		craft__out(c, pi, CRAFT_KIND_HELLO_REPLY, buf, rl);
	}
	relay__hello__free_unpacked(h, NULL);
}

void
craft__ask_book(struct craft *c, const char *from)
{
	uint64_t now = craft__now(c);
	if (c->bt.phase != CRAFT_BOOT_DONE ||
	    (c->ask_book_ms && now - c->ask_book_ms < c->retry_ms))
		return;
	c->ask_book_ms = now ? now : 1;
	craft__log(c, "event=unknown-member from=%s: asking the members who the members are", from);
	for (size_t i = 0; i < c->n_peers; i++)
		if (i != c->self && c->pstate[i] != RELAY__PEER_STATE__PEER_LEFT)
			craft__send_hello(c, i);
}

/* A HelloReply from member pi (discovering, rejoining, or asked by craft__ask_book). */
void
craft__recv_hello_reply(struct craft *c, size_t pi, const void *data, size_t len)
{
	Relay__HelloReply *r = relay__hello_reply__unpack(NULL, len, data);
	if (!r || strcmp(r->node, c->peers[pi].name)) {
		c->counters.raft_dropped++;
		if (r)
			relay__hello_reply__free_unpacked(r, NULL);
		return;
	}
	int member = r->state == RELAY__NODE_STATE__NODE_MEMBER;
	if (c->bt.phase == CRAFT_BOOT_DONE) {
		/* a member asked (craft__ask_book): only a member of this cluster is believed */
		member =
		    member && r->has_cluster_id && c->cluster_id && r->cluster_id == c->cluster_id;
	} else {
		craft__book_heard(c, pi, r->incarnation);
		c->bt.answered[pi] = 1;
		c->bt.member[pi] = r->state == RELAY__NODE_STATE__NODE_MEMBER;
		c->bt.cid[pi] = r->has_cluster_id ? r->cluster_id : 0;
		c->bt.same_peers[pi] = r->has_peers_digest && r->peers_digest == c->bt.peers_digest;
		c->bt.offers_me[pi] = 0;
		if (r->boot && r->boot->cluster_id && c->bt.member[pi] &&
		    craft__book_from_proto(&c->bt.offer, r->boot->peers, r->boot->n_peers) == 0 &&
		    craft__rec_has(&c->bt.offer, c->peers[c->self].name, c->inc)) {
			c->bt.offers_me[pi] = 1;
			c->bt.offer_cid = r->boot->cluster_id;
			c->bt.have_offer = 1;
		}
		if (r->leader && *r->leader)
			snprintf(c->bt.leader, sizeof(c->bt.leader), "%s", r->leader);
		member = c->bt.member[pi];
	}
	{
		/* members this node's `peers` lack: known (and dialed) from now on, as if from
		 * config, so that their frames (the leader's) are taken */
		for (size_t k = 0; member && k < r->n_members; k++) {
			const Relay__Peer *mp = r->members[k];
			if (craft__peer_validate(mp) || !mp->addr || !*mp->addr ||
			    craft__peer_by_name(c, mp->node) >= 0)
				continue;
			int i = craft__book_add(
			    c, mp->node, mp->addr, RELAY__PEER_STATE__PEER_ACTIVE, 1,
			    mp->has_incarnation ? mp->incarnation : 0, !mp->has_incarnation);
			if (i >= 0)
				craft__log(c, "event=discover-member node=%s addr=%s (from %s)",
					   mp->node, mp->addr, c->peers[pi].name);
		}
	}
	relay__hello_reply__free_unpacked(r, NULL);
}

static void
craft__send_rejoin(struct craft *c, size_t pi, const char *node, uint64_t inc, const char *addr,
		   uint32_t hops)
{
	Relay__Rejoin j = RELAY__REJOIN__INIT;
	j.node = (char *)node;
	j.incarnation = inc;
	j.addr = (char *)addr;
	j.has_hops = hops != 0;
	j.hops = hops;
	unsigned char buf[CRAFT_HELLO_MAX];
	size_t len = relay__rejoin__get_packed_size(&j);
	if (len > sizeof(buf))
		return;
	relay__rejoin__pack(&j, buf);
	craft__out(c, pi, CRAFT_KIND_REJOIN, buf, len);
}

/* The leader, auto_join on: proposes Peer{node, addr, ACTIVE, incarnation} for a node the book
 * lacks, at most once per retry_ms (what the other members forwarded included). */
static void
craft__auto_join(struct craft *c, const Relay__Rejoin *j, uint64_t now)
{
	if (c->aj_prop_ms && now - c->aj_prop_ms < c->retry_ms)
		return;
	c->aj_prop_ms = now ? now : 1;
	if (c->n_peers >= CLUSTER_MAX_PEERS) {
		craft__log(c, "event=auto-join-refused node=%s: the cluster has %u members already",
			   j->node, (unsigned)CLUSTER_MAX_PEERS);
		return;
	}
	int rv = craft__propose_peer_x(c, j->node, j->addr, RELAY__PEER_STATE__PEER_ACTIVE,
				       craft__member_since(c, j->node), j->incarnation, 0, 0, NULL,
				       NULL);
	craft__log(c, "event=auto-join node=%s addr=%s incarnation=%016" PRIx64 "%s%s", j->node,
		   j->addr, j->incarnation, rv ? " error=" : "", rv ? cluster_strerror(rv) : "");
}

/* A Rejoin (from the node itself, or forwarded by a member; stranger: from a node the book
 * lacks, auto_join on): the leader proposes the node's new incarnation (auto_join: the node
 * itself); any other member forwards it to the leader it knows. */
static void
craft__rejoin(struct craft *c, const char *stranger, const void *data, size_t len)
{
	Relay__Rejoin *j = relay__rejoin__unpack(NULL, len, data);
	if (!j || craft__id_addr_ok(j->node, j->addr) || !*j->addr ||
	    (stranger && (strcmp(j->node, stranger) || (j->has_hops && j->hops)))) {
		c->counters.raft_dropped++;
		if (j)
			relay__rejoin__free_unpacked(j, NULL);
		return;
	}
	uint64_t now = craft__now(c);
	if (c->bt.phase != CRAFT_BOOT_DONE || c->failed)
		goto out;
	if (c->role != RAFT_LEADER) {
		int li = craft__peer_by_id(c, c->lead);
		uint32_t hops = j->has_hops ? j->hops : 0;
		if (li >= 0 && (size_t)li != c->self && hops < CRAFT_REJOIN_HOPS)
			craft__send_rejoin(c, (size_t)li, j->node, j->incarnation, j->addr,
					   hops + 1);
		goto out;
	}
	int i = craft__peer_by_name(c, j->node);
	if (i < 0 && c->auto_join) {
		craft__auto_join(c, j, now);
		goto out;
	}
	if (i < 0 || c->pstate[i] != RELAY__PEER_STATE__PEER_ACTIVE || (size_t)i == c->self) {
		if (now - c->bt.log_ms >= CRAFT_BOOT_LOG_MS) {
			craft__log(c, "event=rejoin-refused node=%s incarnation=%016" PRIx64 ": %s",
				   j->node, j->incarnation,
				   i < 0 ? "not in the address book (relayctl node add it)"
				   : (size_t)i == c->self ? "it is this node"
							  : "leaving the cluster");
			c->bt.log_ms = now;
		}
		goto out;
	}
	if (!c->ppending[i] && c->pinc[i] == j->incarnation)
		goto out; /* known: the configuration follows (craft__reconcile) */
	if (!c->ppending[i] && c->pheard_inc[i] == c->pinc[i] && c->last_contact[i] >= 0 &&
	    now - (uint64_t)c->last_contact[i] < c->election_ms) {
		/* the incarnation in the book spoke within an election timeout: its process lives,
		 * so this is a late copy of an older incarnation's Rejoin (or a second process with
		 * the same name); a replaced disk's new process is admitted once the old one is
		 * silent (host_sim --nodes 5 --seed 193: a stale Rejoin replaced the live member
		 * by a dead one, which stayed a learner forever) */
		if (now - c->bt.log_ms >= CRAFT_BOOT_LOG_MS) {
			craft__log(c,
				   "event=rejoin-refused node=%s incarnation=%016" PRIx64
				   ": incarnation %016" PRIx64 " is alive",
				   j->node, j->incarnation, c->pinc[i]);
			c->bt.log_ms = now;
		}
		goto out;
	}
	if (c->pprop_ms[i] && now - c->pprop_ms[i] < c->retry_ms)
		goto out;
	Relay__Peer p = RELAY__PEER__INIT;
	p.node = j->node;
	p.addr = j->addr;
	p.state = RELAY__PEER_STATE__PEER_ACTIVE;
	p.has_incarnation = 1;
	p.incarnation = j->incarnation;
	p.has_expect_since_index = 1;
	p.expect_since_index = c->psince[i];
	Relay__Command cmd = RELAY__COMMAND__INIT;
	cmd.cmd_case = RELAY__COMMAND__CMD_PEER;
	cmd.peer = &p;
	int rv = craft_propose(c, &cmd, craft__noop_cb, NULL, NULL);
	c->pprop_ms[i] = now;
	craft__log(c,
		   "event=rejoin node=%s incarnation=%016" PRIx64 " replaces=%s%016" PRIx64 "%s%s",
		   j->node, j->incarnation, c->ppending[i] ? "pending:" : "", c->pinc[i],
		   rv ? " error=" : "", rv ? cluster_strerror(rv) : "");
out:
	relay__rejoin__free_unpacked(j, NULL);
}

void
craft__recv_rejoin(struct craft *c, size_t pi, const void *data, size_t len)
{
	(void)pi;
	craft__rejoin(c, NULL, data, len);
}

void
craft__recv_rejoin_from(struct craft *c, const char *stranger, const void *data, size_t len)
{
	craft__rejoin(c, stranger, data, len);
}

/* ---- the discovery loop (every tick while the node is empty) ---- */

static void
craft__boot_wait_log(struct craft *c, uint64_t now, size_t who, int verdict_wait_seed)
{
	if (now - c->bt.log_ms < CRAFT_BOOT_LOG_MS)
		return;
	c->bt.log_ms = now;
	char missing[CLUSTER_MAX_PEERS * (CLUSTER_ID_MAX + 1) + 1] = "";
	size_t o = 0;
	for (size_t i = 0; i < c->n_peers && o < sizeof(missing) - CLUSTER_ID_MAX - 2; i++)
		if (i != c->self && (!c->bt.answered[i] || !c->bt.same_peers[i]))
			o += (size_t)snprintf(missing + o, sizeof(missing) - o, "%s%s%s",
					      o ? "," : "", c->peers[i].name,
					      c->bt.answered[i] ? "(other peers)" : "");
	if (c->join && c->auto_join)
		craft__log(
		    c,
		    "event=join-wait peers=%zu auto_join=yes: asked the members to add this "
		    "node; none answered as a member yet (their leader adds it; `peers` must "
		    "name current members)",
		    c->n_peers - 1);
	else if (c->join)
		craft__log(c,
			   "event=join-wait peers=%zu: no member with a cluster answered "
			   "(start this node with `peers` naming current members, and `relayctl "
			   "node add` it, or set auto_join)",
			   c->n_peers - 1);
	else if (verdict_wait_seed && who < c->n_peers)
		craft__log(c,
			   "event=bootstrap-wait seed=%s: every member is empty; the seed "
			   "bootstraps",
			   c->peers[who].name);
	else
		craft__log(c,
			   "event=bootstrap-wait missing=%s: a new cluster forms only once "
			   "every member of peers answered",
			   missing);
}

void
craft__boot_tick(struct craft *c, uint64_t now)
{
	if (c->bt.phase == CRAFT_BOOT_DONE)
		return;
	if (now >= c->bt.next_hello_ms) {
		for (size_t i = 0; i < c->n_peers; i++)
			if (i != c->self && c->peers[i].addr[0])
				craft__send_hello(c, i);
		c->bt.next_hello_ms = now + CRAFT_HELLO_MS;
	}
	if (c->bt.phase == CRAFT_BOOT_REJOIN) {
		struct raft_status rs;
		raft_status(c->raft, &rs);
		if (raft_conf_is_member(&rs.conf, c->id)) {
			c->bt.phase = CRAFT_BOOT_DONE;
			craft__log(c, "event=rejoined incarnation=%016" PRIx64, c->inc);
			return;
		}
		if (now < c->bt.next_rejoin_ms)
			return;
		c->bt.next_rejoin_ms = now + c->retry_ms;
		int li = craft__peer_by_name(c, c->bt.leader);
		for (size_t i = 0; i < c->n_peers; i++)
			if (i != c->self && ((li >= 0 && (size_t)li == i) ||
					     (li < 0 && c->bt.answered[i] && c->bt.member[i])))
				craft__send_rejoin(c, i, c->peers[c->self].name, c->inc,
						   c->peers[c->self].addr, 0);
		return;
	}
	struct craft_boot_peer bp[CLUSTER_MAX_PEERS] = {0};
	for (size_t i = 0; i < c->n_peers; i++)
		bp[i] = (struct craft_boot_peer){.node = c->peers[i].name,
						 .self = i == c->self,
						 .answered = c->bt.answered[i],
						 .member = c->bt.member[i],
						 .offers_me = c->bt.offers_me[i],
						 .same_peers = c->bt.same_peers[i]};
	size_t who;
	int v = craft__boot_decide(bp, c->n_peers, c->join, &who);
	switch (v) {
	case CRAFT_BOOT_SEED: {
		struct craft_book rec = {0};
		for (size_t i = 0; i < c->n_peers && rec.n < CLUSTER_MAX_PEERS; i++) {
			struct craft_book_ent *e = &rec.e[rec.n++];
			snprintf(e->node, sizeof(e->node), "%s", c->peers[i].name);
			snprintf(e->addr, sizeof(e->addr), "%s", c->peers[i].addr);
			e->state = RELAY__PEER_STATE__PEER_ACTIVE;
			e->inc = i == c->self ? c->inc : c->pinc[i];
		}
		craft__bootstrap(c, c->io.random64(c->io.arg), &rec, "seed");
		break;
	}
	case CRAFT_BOOT_ADOPT:
		craft__bootstrap(c, c->bt.offer_cid, &c->bt.offer, "member");
		break;
	case CRAFT_BOOT_JOIN: {
		/* a cluster exists: this node belongs to it from now on, as a new incarnation */
		uint64_t cid = c->bt.cid[who];
		if (cid && cid != c->cluster_id) {
			struct store_batch b;
			store_batch_init(&b);
			int rv = craft__ident_put(&b, c->inc, cid);
			if (!rv)
				rv = c->io.write_now(c->io.arg, &b, 1);
			store_batch_fini(&b);
			if (rv)
				break; /* the next tick tries again */
			c->cluster_id = cid;
		}
		c->bt.phase = CRAFT_BOOT_REJOIN;
		c->bt.next_rejoin_ms = 0;
		craft__log(c,
			   "event=rejoin-ask cluster=%016" PRIx64 " incarnation=%016" PRIx64
			   " through=%s leader=%s",
			   c->cluster_id, c->inc, c->peers[who].name,
			   c->bt.leader[0] ? c->bt.leader : "unknown");
		break;
	}
	default:
		if (c->join && c->auto_join && now >= c->bt.next_rejoin_ms) {
			/* not in the book of any member yet (they answer no Hello): ask to be
			 * added; once it is, they answer and the rejoin goes on as for any member
			 */
			c->bt.next_rejoin_ms = now + c->retry_ms;
			for (size_t i = 0; i < c->n_peers; i++)
				if (i != c->self && c->peers[i].addr[0])
					craft__send_rejoin(c, i, c->peers[c->self].name, c->inc,
							   c->peers[c->self].addr, 0);
		}
		craft__boot_wait_log(
		    c, now, who, who < c->n_peers && c->bt.answered[who] && c->bt.same_peers[who]);
	}
}

/* ---- legacy clusters: a cluster id through the log ---- */

/* Applies a committed ClusterId: stored where the node has none (its ident joins the next
 * write). */
int
craft__apply_cluster_id(struct craft *c, uint64_t index, const Relay__ClusterId *cl)
{
	if (!cl || !cl->cluster_id)
		return CLUSTER_EINVAL;
	if (c->cluster_id == cl->cluster_id)
		return 0;
	if (c->cluster_id) {
		craft__log(c,
			   "index=%" PRIu64 " cluster id %016" PRIx64
			   " ignored: this node's is %016" PRIx64,
			   index, cl->cluster_id, c->cluster_id);
		return 0;
	}
	c->cluster_id = cl->cluster_id;
	craft__log(c, "index=%" PRIu64 " event=cluster-id cluster=%016" PRIx64, index,
		   c->cluster_id);
	int rv = craft__ident_put(&c->next, c->inc, c->cluster_id);
	return rv ? cluster__store_err(rv) : 0;
}
