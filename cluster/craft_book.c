/*
 * craft_book.c - the address book of the replicated host (craft_int.h): members by node id with
 * their cluster address, incarnation and Peer state, changed only by committed Peer commands,
 * stored in raft_meta "raft_peers" with the applied state, carried in snapshot descriptors and
 * in the first chunk of a fetch session.  Every member but this node is dialed through the edge.
 *
 * A member's Raft id derives from its node id and incarnation (peers.h): a node that lost its
 * disk announces a new incarnation (craft_boot.c), the leader proposes Peer{node, ACTIVE,
 * incarnation}, and from then on the book maps the node to its new Raft id; the configuration
 * follows (craft_member.c: the old id out, the new one in as a learner, promoted once caught
 * up).  Each entry remembers the index of the Peer command that set it (since) and members that
 * left stay as tombstones (CRAFT_TOMBS), so a Peer command carrying expect_since_index applies
 * only to the entry its proposer saw: a late duplicate (a forward resubmitted after a leader
 * change) cannot undo a later removal, add or rejoin.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_util.h"
#include "craft_int.h"
#include "queue_fsm.h"

int
craft__peer_by_id(const struct craft *c, uint64_t id)
{
	if (id == 0)
		return -1; /* members whose incarnation is pending have no id yet */
	for (size_t i = 0; i < c->n_peers; i++)
		if (c->peers[i].id == id)
			return (int)i;
	/* the incarnation its frames carry (newer than the book may know) */
	for (size_t i = 0; i < c->n_peers; i++)
		if (c->pheard_id[i] == id)
			return (int)i;
	return -1;
}

int
craft__peer_by_name(const struct craft *c, const char *name)
{
	for (size_t i = 0; i < c->n_peers; i++)
		if (!strcmp(c->peers[i].name, name))
			return (int)i;
	return -1;
}

/* ---- the address book ---- */

const char *
craft__peer_state_name(unsigned st)
{
	switch (st) {
	case RELAY__PEER_STATE__PEER_ACTIVE:
		return "active";
	case RELAY__PEER_STATE__PEER_LEAVING:
		return "leaving";
	default:
		return "left";
	}
}

/* 0 when name is a valid node id and addr (may be NULL or "": not checked) a host:port. */
int
craft__id_addr_ok(const char *name, const char *addr)
{
	char spec[CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 8];
	struct cluster_peer p;
	if (!name || strlen(name) > CLUSTER_ID_MAX || (addr && strlen(addr) > CLUSTER_ADDR_MAX))
		return CLUSTER_EBADADDR;
	snprintf(spec, sizeof(spec), "%s=%s", name, addr && *addr ? addr : "x:1");
	return cluster_peer_parse(spec, &p, NULL, 0) ? CLUSTER_EBADADDR : 0;
}

/* Peer input or log content: a Peer command we can apply. */
int
craft__peer_validate(const Relay__Peer *p)
{
	if (!p || craft__id_addr_ok(p->node, p->addr))
		return CLUSTER_EINVAL;
	if (p->state != RELAY__PEER_STATE__PEER_ACTIVE &&
	    p->state != RELAY__PEER_STATE__PEER_LEAVING && p->state != RELAY__PEER_STATE__PEER_LEFT)
		return CLUSTER_EINVAL;
	return 0;
}

/* Commands the host accepts: Peer and ClusterId (applied here) and what the queue state machine
 * accepts. */
int
craft__validate(const Relay__Command *cmd)
{
	if (cmd->cmd_case == RELAY__COMMAND__CMD_PEER)
		return craft__peer_validate(cmd->peer);
	if (cmd->cmd_case == RELAY__COMMAND__CMD_CLUSTER)
		return cmd->cluster && cmd->cluster->cluster_id ? 0 : CLUSTER_EINVAL;
	return queue_validate(cmd) ? CLUSTER_EINVAL : 0;
}

/* Moves book slot src into dst (dst's content is gone). */
static void
craft__book_move(struct craft *c, size_t dst, size_t src)
{
	c->peers[dst] = c->peers[src];
	c->last_contact[dst] = c->last_contact[src];
	c->pstate[dst] = c->pstate[src];
	c->plocal[dst] = c->plocal[src];
	c->pprop_ms[dst] = c->pprop_ms[src];
	c->pinc[dst] = c->pinc[src];
	c->ppending[dst] = c->ppending[src];
	c->pprev[dst] = c->pprev[src];
	c->pserved[dst] = c->pserved[src];
	c->pserved_ms[dst] = c->pserved_ms[src];
	c->psince[dst] = c->psince[src];
	c->pheard_inc[dst] = c->pheard_inc[src];
	c->pheard_id[dst] = c->pheard_id[src];
	c->pstamp[dst] = c->pstamp[src];
	c->bt.answered[dst] = c->bt.answered[src];
	c->bt.member[dst] = c->bt.member[src];
	c->bt.offers_me[dst] = c->bt.offers_me[src];
	c->bt.same_peers[dst] = c->bt.same_peers[src];
	c->bt.cid[dst] = c->bt.cid[src];
	if (c->self == src)
		c->self = dst;
	/* the snapshot sessions name peers by slot */
	for (size_t k = 0; k < CRAFT_SNAP_SERVE_MAX; k++)
		if (c->serve[k].used && c->serve[k].peer == src)
			c->serve[k].peer = dst;
	if (c->fetch.src == src)
		c->fetch.src = dst;
}

/* Dials addr for book slot i (not self; nothing before craft_open dials the whole book). */
static void
craft__book_dial(struct craft *c, size_t i)
{
	if (!c->dialing || i == c->self || !c->peers[i].addr[0])
		return;
	int rv = c->io.peer_add(c->io.arg, c->peers[i].name, c->peers[i].addr);
	if (rv)
		craft__log(c, "peer %s=%s error=%d", c->peers[i].name, c->peers[i].addr, rv);
}

/* Dials every member of the book (craft_open, once the book is known). */
void
craft__book_dial_all(struct craft *c)
{
	c->dialing = 1;
	for (size_t i = 0; i < c->n_peers; i++)
		craft__book_dial(c, i);
}

/* Sets the incarnation of slot i (and so its Raft id; this node's own never changes here). */
void
craft__book_set_inc(struct craft *c, size_t i, uint64_t inc)
{
	if (i == c->self)
		return;
	c->pinc[i] = inc;
	c->ppending[i] = 0;
	c->peers[i].id = cluster_peer_raft_id_inc(c->peers[i].name, inc);
}

/* Slot i's incarnation is not known yet (no Raft id until it announces one). */
static void
craft__book_set_pending(struct craft *c, size_t i)
{
	c->ppending[i] = 1;
	c->pinc[i] = 0;
	c->peers[i].id = 0;
}

/* Adds a member to the book; its index, or -1 when the book is full.  pending: its incarnation
 * is not known yet (no Raft id). */
int
craft__book_add(struct craft *c, const char *name, const char *addr, unsigned state, int local,
		uint64_t inc, int pending)
{
	if (c->n_peers >= CLUSTER_MAX_PEERS)
		return -1;
	size_t i = c->n_peers++;
	memset(&c->peers[i], 0, sizeof(c->peers[i]));
	snprintf(c->peers[i].name, sizeof(c->peers[i].name), "%s", name);
	snprintf(c->peers[i].addr, sizeof(c->peers[i].addr), "%s", addr ? addr : "");
	c->pinc[i] = pending ? 0 : inc;
	c->ppending[i] = (uint8_t) !!pending;
	c->peers[i].id = pending ? 0 : cluster_peer_raft_id_inc(name, inc);
	c->last_contact[i] = -1;
	c->pstate[i] = (uint8_t)state;
	c->plocal[i] = (uint8_t)local;
	c->pprop_ms[i] = 0;
	c->pprev[i] = 0;
	c->pserved[i] = c->pserved_ms[i] = 0;
	c->psince[i] = 0;
	c->pheard_inc[i] = 0;
	c->pheard_id[i] = 0;
	c->pstamp[i] = 0;
	c->bt.answered[i] = c->bt.member[i] = c->bt.offers_me[i] = c->bt.same_peers[i] = 0;
	c->bt.cid[i] = 0;
	craft__book_dial(c, i);
	return (int)i;
}

/* Forgets member i (never self): its connection closes, its waiting messages are dropped. */
void
craft__book_del(struct craft *c, size_t i)
{
	if (i == c->self || i >= c->n_peers)
		return;
	if (c->dialing && c->peers[i].addr[0])
		c->io.peer_del(c->io.arg, c->peers[i].name);
	for (size_t k = 0; k < CRAFT_SNAP_SERVE_MAX; k++)
		if (c->serve[k].used && c->serve[k].peer == i)
			craft__serve_release(&c->serve[k]);
	if (c->fetch.src == i)
		c->fetch.src =
		    c->self; /* a silent source: the fetch moves on (craft__fetch_tick) */
	size_t last = --c->n_peers;
	if (i != last)
		craft__book_move(c, i, last);
}

static void
craft__book_set_addr(struct craft *c, size_t i, const char *addr)
{
	if (!addr || !*addr || !strcmp(c->peers[i].addr, addr))
		return;
	if (c->dialing && i != c->self && c->peers[i].addr[0])
		c->io.peer_del(c->io.arg, c->peers[i].name);
	snprintf(c->peers[i].addr, sizeof(c->peers[i].addr), "%s", addr);
	craft__book_dial(c, i);
}

/* Frames from member i carry incarnation inc (the edge's envelope): noted for the status, and
 * taken as its identity while only our config knows it (a node that joins learns the members'
 * incarnations this way before the log reaches it). */
void
craft__book_heard(struct craft *c, size_t i, uint64_t inc)
{
	if (i >= c->n_peers || i == c->self)
		return;
	if (c->pheard_inc[i] != inc || !c->pheard_id[i]) {
		c->pheard_inc[i] = inc;
		c->pheard_id[i] = cluster_peer_raft_id_inc(c->peers[i].name, inc);
	}
	if (c->plocal[i] && !c->psince[i] &&
	    (c->ppending[i] || (c->pinc[i] != inc && c->bt.phase != CRAFT_BOOT_DONE)))
		craft__book_set_inc(c, i, inc);
}

/* ---- tombstones ---- */

static int
craft__tomb_find(const struct craft *c, const char *node)
{
	for (size_t k = 0; k < c->n_tomb; k++)
		if (!strcmp(c->tomb[k].node, node))
			return (int)k;
	return -1;
}

static void
craft__tomb_del(struct craft *c, const char *node)
{
	int k = craft__tomb_find(c, node);
	if (k < 0)
		return;
	memmove(&c->tomb[k], &c->tomb[k + 1], (c->n_tomb - (size_t)k - 1) * sizeof(c->tomb[0]));
	c->n_tomb--;
}

/* Remembers that node left at index (the oldest tombstone goes when they are all used). */
static void
craft__tomb_add(struct craft *c, const char *node, uint64_t since)
{
	craft__tomb_del(c, node);
	if (c->n_tomb == CRAFT_TOMBS) {
		memmove(&c->tomb[0], &c->tomb[1], (CRAFT_TOMBS - 1) * sizeof(c->tomb[0]));
		c->n_tomb--;
	}
	snprintf(c->tomb[c->n_tomb].node, sizeof(c->tomb[0].node), "%s", node);
	c->tomb[c->n_tomb].since = since;
	c->n_tomb++;
}

/* The index of the Peer command that last set node's entry (its tombstone's, if it left); 0
 * when none did.  What a Peer command's expect_since_index is compared with. */
uint64_t
craft__member_since(const struct craft *c, const char *node)
{
	int i = craft__peer_by_name(c, node);
	if (i >= 0 && !c->plocal[i])
		return c->psince[i];
	/* a local entry (from `peers`, or discovered from a member's Hello reply) is not
	 * replicated: the tombstone, which is, wins (host_sim --seed 1110461727 --nodes 3 --steps
	 * 10000 --pauses: a leader that had discovered a removed member applied a Peer command
	 * the others skipped, and the books diverged) */
	int k = craft__tomb_find(c, node);
	if (k >= 0)
		return c->tomb[k].since;
	return i >= 0 ? c->psince[i] : 0;
}

/* ---- stored form ---- */

/* Fills p (borrowing from the book) for slot i. */
static void
craft__book_peer(const struct craft *c, size_t i, Relay__Peer *p, int with_local)
{
	relay__peer__init(p);
	p->node = (char *)c->peers[i].name;
	p->addr = (char *)c->peers[i].addr;
	p->state = (Relay__PeerState)c->pstate[i];
	if (with_local && c->plocal[i]) {
		p->has_local = 1;
		p->local = 1;
	}
	uint64_t inc = i == c->self ? c->inc : c->pinc[i];
	if (c->ppending[i] && i != c->self) {
		p->has_incarnation_pending = 1;
		p->incarnation_pending = 1;
	} else if (inc) {
		p->has_incarnation = 1;
		p->incarnation = inc;
	}
	p->has_since_index = c->psince[i] != 0;
	p->since_index = c->psince[i];
	p->has_replaced_incarnation = c->pprev[i] != 0;
	p->replaced_incarnation = c->pprev[i];
}

/* Adds the book (members, then tombstones as PEER_LEFT entries) to b (raft_meta "raft_peers"). */
int
craft__book_put(struct craft *c, struct store_batch *b)
{
	Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS], *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	size_t n = 0;
	for (size_t i = 0; i < c->n_peers; i++, n++) {
		craft__book_peer(c, i, &ps[n], 1);
		pp[n] = &ps[n];
	}
	for (size_t k = 0; k < c->n_tomb; k++, n++) {
		relay__peer__init(&ps[n]);
		ps[n].node = c->tomb[k].node;
		ps[n].addr = "";
		ps[n].state = RELAY__PEER_STATE__PEER_LEFT;
		ps[n].has_since_index = 1;
		ps[n].since_index = c->tomb[k].since;
		pp[n] = &ps[n];
	}
	Relay__PeerBook book = RELAY__PEER_BOOK__INIT;
	book.n_peers = n;
	book.peers = pp;
	unsigned char
	    buf[(CLUSTER_MAX_PEERS + CRAFT_TOMBS) * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 48) + 16];
	size_t len = relay__peer_book__get_packed_size(&book);
	if (len > sizeof(buf))
		return STORE_EINVAL;
	relay__peer_book__pack(&book, buf);
	return store_batch_put(b, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1,
			       buf, len);
}

/* Replaces the book with the stored one.  STORE_ENOTFOUND when none was stored. */
int
craft__book_load(struct craft *c, const char *self)
{
	void *v;
	size_t vlen;
	int rv = store_get(c->store, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1,
			   &v, &vlen);
	if (rv)
		return rv;
	Relay__PeerBook *book = relay__peer_book__unpack(NULL, vlen, v);
	free(v);
	if (!book || book->n_peers > CLUSTER_MAX_PEERS + CRAFT_TOMBS) {
		if (book)
			relay__peer_book__free_unpacked(book, NULL);
		return STORE_ECORRUPT;
	}
	for (size_t i = 0; i < book->n_peers; i++)
		if (craft__peer_validate(book->peers[i])) {
			relay__peer_book__free_unpacked(book, NULL);
			return STORE_ECORRUPT;
		}
	c->n_peers = 0;
	c->n_tomb = 0;
	c->self = SIZE_MAX;
	for (size_t i = 0; i < book->n_peers; i++) {
		const Relay__Peer *p = book->peers[i];
		if (p->state == RELAY__PEER_STATE__PEER_LEFT && strcmp(p->node, self)) {
			craft__tomb_add(c, p->node, p->has_since_index ? p->since_index : 0);
			continue;
		}
		int k = craft__book_add(c, p->node, p->addr, p->state, p->has_local && p->local,
					p->has_incarnation ? p->incarnation : 0,
					p->has_incarnation_pending && p->incarnation_pending);
		if (k < 0)
			continue;
		c->psince[k] = p->has_since_index ? p->since_index : 0;
		c->pprev[k] = p->has_replaced_incarnation ? p->replaced_incarnation : 0;
		if (!strcmp(p->node, self)) {
			c->self = (size_t)k;
			c->pinc[k] = c->inc;
			c->ppending[k] = 0;
			c->peers[k].id = c->id;
		}
	}
	relay__peer_book__free_unpacked(book, NULL);
	return 0;
}

/* ---- Peer commands ---- */

/* Applies a committed Peer command to the book (and the transport), and adds the book to the
 * next write.  Returns the status for the proposer. */
int
craft__apply_peer(struct craft *c, uint64_t index, const Relay__Peer *p)
{
	if (craft__peer_validate(p))
		return CLUSTER_EINVAL;
	int i = craft__peer_by_name(c, p->node);
	const char *addr = p->addr ? p->addr : "";
	int status = 0;
	if (p->has_local && p->local &&
	    (p->state != RELAY__PEER_STATE__PEER_ACTIVE || (i >= 0 && !c->plocal[i]) ||
	     craft__tomb_find(c, p->node) >= 0)) {
		/* a publication of a config-known member after a Peer command for it: stale */
		craft__log(c, "index=%" PRIu64 " event=peer node=%s publication skipped", index,
			   p->node);
		return 0;
	}
	if (p->has_expect_since_index && craft__member_since(c, p->node) != p->expect_since_index) {
		craft__log(c,
			   "index=%" PRIu64 " event=peer node=%s state=%s skipped: set at %" PRIu64
			   ", the command expects %" PRIu64,
			   index, p->node, craft__peer_state_name(p->state),
			   craft__member_since(c, p->node), p->expect_since_index);
		return CLUSTER_ESTALE;
	}
	uint64_t inc = p->has_incarnation ? p->incarnation : 0;
	int pending = !p->has_incarnation && p->has_incarnation_pending && p->incarnation_pending;
	/* What a command does depends only on what the log set: a local entry (from `peers`, or
	 * discovered from a member's Hello reply; other nodes may lack it or know it differently)
	 * counts as no entry, and a command that applies to it replaces it whole, as a snapshot's
	 * book does (craft__book_replace).  So does this node's own entry once marked left (the
	 * others keep a tombstone for it). */
	int logged = i >= 0 && !c->plocal[i] && c->pstate[i] != RELAY__PEER_STATE__PEER_LEFT;
	switch (p->state) {
	case RELAY__PEER_STATE__PEER_ACTIVE:
		if (!logged && !*addr)
			return CLUSTER_EBADADDR;
		craft__tomb_del(c, p->node); /* a local entry may hide one */
		if (i < 0) {
			if ((i = craft__book_add(c, p->node, addr, p->state, 0, inc, pending)) < 0)
				return CLUSTER_EFULL;
			break;
		}
		craft__book_set_addr(c, (size_t)i, addr);
		if ((size_t)i == c->self) {
			if (!pending && inc != c->inc)
				craft__log(c,
					   "index=%" PRIu64 " event=replaced node=%s "
					   "incarnation=%016" PRIx64 " (this process is %016" PRIx64
					   ": it leaves the configuration)",
					   index, p->node, inc, c->inc);
		} else if (!logged) {
			c->pprev[i] = 0;
			if (pending) {
				craft__book_set_pending(c, (size_t)i);
			} else {
				craft__book_set_inc(c, (size_t)i, inc);
			}
		} else if (!pending && (c->ppending[i] || c->pinc[i] != inc)) {
			if (!c->ppending[i])
				c->pprev[i] = c->pinc[i];
			craft__book_set_inc(c, (size_t)i, inc);
		}
		if (!logged)
			c->psince[i] = 0;
		break;
	case RELAY__PEER_STATE__PEER_LEAVING:
		if (!logged)
			return CLUSTER_ENOMEMBER;
		break;
	default:
		if (i >= 0 && (size_t)i == c->self)
			break; /* this node stays in its own book, marked left */
		craft__log(c, "index=%" PRIu64 " event=peer node=%s state=left", index, p->node);
		if (i >= 0)
			craft__book_del(c, (size_t)i);
		craft__tomb_add(c, p->node, index);
		i = -1;
		break;
	}
	if (i >= 0) {
		if (c->pstate[i] != p->state)
			c->pprop_ms[i] = 0;
		c->pstate[i] = (uint8_t)p->state;
		if (!(p->has_local && p->local))
			c->psince[i] = index;
		c->plocal[i] = 0;
		craft__log(c,
			   "index=%" PRIu64
			   " event=peer node=%s addr=%s state=%s incarnation=%s%016" PRIx64,
			   index, p->node, c->peers[i].addr, craft__peer_state_name(p->state),
			   c->ppending[i] ? "pending:" : "",
			   (size_t)i == c->self ? c->inc : c->pinc[i]);
	}
	int rv = craft__book_put(c, &c->next);
	if (rv) {
		craft__log(c, "address book not recorded error=\"%s\"", store_strerror(rv));
		status = cluster__store_err(rv);
	}
	return status;
}

/* ---- carried books (snapshots, bootstrap records) ---- */

/* Copies the entries of a carried address book into bk (validated: -1 on a bad one). */
int
craft__book_from_proto(struct craft_book *bk, Relay__Peer *const *peers, size_t n)
{
	bk->n = 0;
	if (n > CLUSTER_MAX_PEERS + CRAFT_TOMBS)
		return -1;
	size_t members = 0;
	for (size_t i = 0; i < n; i++) {
		const Relay__Peer *p = peers[i];
		if (craft__peer_validate(p))
			return -1;
		members += p->state != RELAY__PEER_STATE__PEER_LEFT;
		struct craft_book_ent *e = &bk->e[i];
		memset(e, 0, sizeof(*e));
		snprintf(e->node, sizeof(e->node), "%s", p->node);
		snprintf(e->addr, sizeof(e->addr), "%s", p->addr ? p->addr : "");
		e->state = (uint8_t)p->state;
		e->inc = p->has_incarnation ? p->incarnation : 0;
		e->pending =
		    !p->has_incarnation && p->has_incarnation_pending && p->incarnation_pending;
		e->since = p->has_since_index ? p->since_index : 0;
		e->prev = p->has_replaced_incarnation ? p->replaced_incarnation : 0;
	}
	if (members > CLUSTER_MAX_PEERS)
		return -1;
	bk->n = n;
	return 0;
}

/* Fills ps/pp (borrowing from bk) for a message; returns how many. */
size_t
craft__book_to_proto(const struct craft_book *bk, Relay__Peer ps[CLUSTER_MAX_PEERS + CRAFT_TOMBS],
		     Relay__Peer *pp[CLUSTER_MAX_PEERS + CRAFT_TOMBS])
{
	for (size_t i = 0; i < bk->n; i++) {
		const struct craft_book_ent *e = &bk->e[i];
		relay__peer__init(&ps[i]);
		ps[i].node = (char *)e->node;
		ps[i].addr = (char *)e->addr;
		ps[i].state = (Relay__PeerState)e->state;
		if (e->pending) {
			ps[i].has_incarnation_pending = 1;
			ps[i].incarnation_pending = 1;
		} else if (e->inc) {
			ps[i].has_incarnation = 1;
			ps[i].incarnation = e->inc;
		}
		ps[i].has_since_index = e->since != 0;
		ps[i].since_index = e->since;
		ps[i].has_replaced_incarnation = e->prev != 0;
		ps[i].replaced_incarnation = e->prev;
		pp[i] = &ps[i];
	}
	return bk->n;
}

/* The address book stored in a view (raft_meta "raft_peers", written with the applies, so it
 * is the book at the view's applied index), without the entries only a config knows.  None
 * (n 0) when the view holds no book or a damaged one (logged). */
void
craft__view_book(struct craft *c, struct craft_view *vw)
{
	vw->book.n = 0;
	void *v;
	size_t vlen;
	if (store_view_get(vw->v, STORE_CF_META, CRAFT_META_PEERS, sizeof(CRAFT_META_PEERS) - 1, &v,
			   &vlen))
		return;
	Relay__PeerBook *book = relay__peer_book__unpack(NULL, vlen, v);
	free(v);
	Relay__Peer *kept[CLUSTER_MAX_PEERS + CRAFT_TOMBS];
	size_t n = 0;
	for (size_t i = 0; book && i < book->n_peers && n < CLUSTER_MAX_PEERS + CRAFT_TOMBS; i++)
		if (!(book->peers[i]->has_local && book->peers[i]->local))
			kept[n++] = book->peers[i];
	if (!book || book->n_peers > CLUSTER_MAX_PEERS + CRAFT_TOMBS ||
	    craft__book_from_proto(&vw->book, kept, n))
		craft__log(c,
			   "snapshot view index=%" PRIu64 ": stored address book unreadable; "
			   "the snapshot carries none",
			   vw->index);
	if (book)
		relay__peer_book__free_unpacked(book, NULL);
}

/* A snapshot's address book replaces the part of ours that came from the log and goes into b;
 * this node and the members only our config knows stay (a snapshot carries no config-only
 * entries: before the leader publishes them, dropping ours would leave no node to fetch from).
 * None (n 0): ours is kept. */
int
craft__book_replace(struct craft *c, const struct craft_book *bk, struct store_batch *b)
{
	if (!bk->n)
		return 0;
	for (size_t i = 0; i < c->n_peers;) {
		int keep = i == c->self || c->plocal[i];
		for (size_t k = 0; !keep && k < bk->n; k++)
			keep = bk->e[k].state != RELAY__PEER_STATE__PEER_LEFT &&
			       !strcmp(bk->e[k].node, c->peers[i].name);
		if (keep)
			i++;
		else
			craft__book_del(c, i);
	}
	c->n_tomb = 0;
	for (size_t k = 0; k < bk->n; k++) {
		const struct craft_book_ent *e = &bk->e[k];
		int i = craft__peer_by_name(c, e->node);
		if (e->state == RELAY__PEER_STATE__PEER_LEFT) {
			/* as craft__apply_peer leaves it: this node marked left in its own book,
			 * any other node's local entry gone behind its tombstone */
			if (i >= 0 && (size_t)i == c->self) {
				c->pstate[i] = e->state;
				c->plocal[i] = 0;
				c->psince[i] = e->since;
				continue;
			}
			if (i >= 0)
				craft__book_del(c, (size_t)i);
			if (c->n_tomb < CRAFT_TOMBS)
				craft__tomb_add(c, e->node, e->since);
			continue;
		}
		if (i < 0)
			i = craft__book_add(c, e->node, e->addr, e->state, 0, e->inc, e->pending);
		else
			craft__book_set_addr(c, (size_t)i, e->addr);
		if (i < 0)
			continue;
		if ((size_t)i != c->self) {
			if (e->pending) {
				craft__book_set_pending(c, (size_t)i);
			} else if (c->ppending[i] || c->pinc[i] != e->inc) {
				craft__book_set_inc(c, (size_t)i, e->inc);
			}
		}
		if (c->pstate[i] != e->state)
			c->pprop_ms[i] = 0;
		c->pstate[i] = e->state;
		c->plocal[i] = 0;
		c->psince[i] = e->since;
		c->pprev[i] = e->prev;
	}
	return craft__book_put(c, b);
}
