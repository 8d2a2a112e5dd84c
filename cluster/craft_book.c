/*
 * craft_book.c - the address book of the replicated host (craft_int.h): members by node id with
 * their cluster address and Peer state, changed only by committed Peer commands, stored in
 * raft_meta "raft_peers" with the applied state, carried in snapshot descriptors and in the
 * first chunk of a fetch session.  Every member but this node is dialed through the edge.
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
	for (size_t i = 0; i < c->n_peers; i++)
		if (c->peers[i].id == id)
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

/* Commands the host accepts: Peer (applied here) and what the queue state machine accepts. */
int
craft__validate(const Relay__Command *cmd)
{
	if (cmd->cmd_case == RELAY__COMMAND__CMD_PEER)
		return craft__peer_validate(cmd->peer);
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

/* Adds a member to the book; its index, or -1 when the book is full. */
int
craft__book_add(struct craft *c, const char *name, const char *addr, unsigned state, int local)
{
	if (c->n_peers >= CLUSTER_MAX_PEERS)
		return -1;
	size_t i = c->n_peers++;
	memset(&c->peers[i], 0, sizeof(c->peers[i]));
	snprintf(c->peers[i].name, sizeof(c->peers[i].name), "%s", name);
	snprintf(c->peers[i].addr, sizeof(c->peers[i].addr), "%s", addr ? addr : "");
	c->peers[i].id = cluster_peer_raft_id(name);
	c->last_contact[i] = -1;
	c->pstate[i] = (uint8_t)state;
	c->plocal[i] = (uint8_t)local;
	c->pprop_ms[i] = 0;
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
}

/* Adds the book to b (raft_meta "raft_peers"). */
int
craft__book_put(struct craft *c, struct store_batch *b)
{
	Relay__Peer ps[CLUSTER_MAX_PEERS], *pp[CLUSTER_MAX_PEERS];
	for (size_t i = 0; i < c->n_peers; i++) {
		craft__book_peer(c, i, &ps[i], 1);
		pp[i] = &ps[i];
	}
	Relay__PeerBook book = RELAY__PEER_BOOK__INIT;
	book.n_peers = c->n_peers;
	book.peers = pp;
	unsigned char buf[CLUSTER_MAX_PEERS * (CLUSTER_ID_MAX + CLUSTER_ADDR_MAX + 16) + 16];
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
	if (!book || book->n_peers > CLUSTER_MAX_PEERS) {
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
	c->self = SIZE_MAX;
	for (size_t i = 0; i < book->n_peers; i++) {
		const Relay__Peer *p = book->peers[i];
		int k = craft__book_add(c, p->node, p->addr, p->state, p->has_local && p->local);
		if (k >= 0 && !strcmp(p->node, self))
			c->self = (size_t)k;
	}
	relay__peer_book__free_unpacked(book, NULL);
	return 0;
}

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
	    (p->state != RELAY__PEER_STATE__PEER_ACTIVE || (i >= 0 && !c->plocal[i]))) {
		/* a publication of a config-known member after a Peer command for it: stale */
		craft__log(c, "index=%" PRIu64 " event=peer node=%s publication skipped", index,
			   p->node);
		return 0;
	}
	switch (p->state) {
	case RELAY__PEER_STATE__PEER_ACTIVE:
		if (i < 0) {
			if (!*addr)
				return CLUSTER_EBADADDR;
			if ((i = craft__book_add(c, p->node, addr, p->state, 0)) < 0)
				return CLUSTER_EFULL;
		} else {
			craft__book_set_addr(c, (size_t)i, addr);
		}
		break;
	case RELAY__PEER_STATE__PEER_LEAVING:
		if (i < 0)
			return CLUSTER_ENOMEMBER;
		break;
	default:
		if (i < 0)
			return 0;
		if ((size_t)i != c->self) {
			craft__log(c, "index=%" PRIu64 " event=peer node=%s state=left", index,
				   p->node);
			craft__book_del(c, (size_t)i);
			i = -1;
		}
		break;
	}
	if (i >= 0) {
		if (c->pstate[i] != p->state)
			c->pprop_ms[i] = 0;
		c->pstate[i] = (uint8_t)p->state;
		c->plocal[i] = 0;
		craft__log(c, "index=%" PRIu64 " event=peer node=%s addr=%s state=%s", index,
			   p->node, c->peers[i].addr, craft__peer_state_name(p->state));
	}
	int rv = craft__book_put(c, &c->next);
	if (rv) {
		craft__log(c, "address book not recorded error=\"%s\"", store_strerror(rv));
		status = cluster__store_err(rv);
	}
	return status;
}

/* Copies the entries of a carried address book into bk (validated: -1 on a bad one). */
int
craft__book_from_proto(struct craft_book *bk, Relay__Peer *const *peers, size_t n)
{
	bk->n = 0;
	if (n > CLUSTER_MAX_PEERS)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const Relay__Peer *p = peers[i];
		if (craft__peer_validate(p))
			return -1;
		struct craft_book_ent *e = &bk->e[i];
		snprintf(e->node, sizeof(e->node), "%s", p->node);
		snprintf(e->addr, sizeof(e->addr), "%s", p->addr ? p->addr : "");
		e->state = (uint8_t)p->state;
	}
	bk->n = n;
	return 0;
}

/* Fills ps/pp (borrowing from bk) for a message; returns how many. */
size_t
craft__book_to_proto(const struct craft_book *bk, Relay__Peer ps[CLUSTER_MAX_PEERS],
		     Relay__Peer *pp[CLUSTER_MAX_PEERS])
{
	for (size_t i = 0; i < bk->n; i++) {
		relay__peer__init(&ps[i]);
		ps[i].node = (char *)bk->e[i].node;
		ps[i].addr = (char *)bk->e[i].addr;
		ps[i].state = (Relay__PeerState)bk->e[i].state;
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
	Relay__Peer *kept[CLUSTER_MAX_PEERS];
	size_t n = 0;
	for (size_t i = 0; book && i < book->n_peers && n < CLUSTER_MAX_PEERS; i++)
		if (!(book->peers[i]->has_local && book->peers[i]->local))
			kept[n++] = book->peers[i];
	if (!book || book->n_peers > CLUSTER_MAX_PEERS ||
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
			keep = !strcmp(bk->e[k].node, c->peers[i].name);
		if (keep)
			i++;
		else
			craft__book_del(c, i);
	}
	for (size_t k = 0; k < bk->n; k++) {
		const struct craft_book_ent *e = &bk->e[k];
		int i = craft__peer_by_name(c, e->node);
		if (i < 0)
			i = craft__book_add(c, e->node, e->addr, e->state, 0);
		else
			craft__book_set_addr(c, (size_t)i, e->addr);
		if (i >= 0) {
			if (c->pstate[i] != e->state)
				c->pprop_ms[i] = 0;
			c->pstate[i] = e->state;
			c->plocal[i] = 0;
		}
	}
	return craft__book_put(c, b);
}
