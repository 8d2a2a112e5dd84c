/*
 * host_sim_check.c - host_sim's safety checks over every node (see host_sim.c's header:
 * election safety, commit consistency, leader completeness, not counted while installing,
 * durability).
 */
#include "host_sim.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
node_of_id(uint64_t id)
{
	for (int i = 1; i <= S->n_ids; i++)
		if (S->nd[i].raft_id == id)
			return i;
	return 0;
}

struct node *
leader(void)
{
	struct node *best = NULL;
	uint64_t bt = 0;
	for (int i = 1; i <= S->n_ids; i++) {
		struct node *n = &S->nd[i];
		if (!n->up)
			continue;
		struct raft_status st;
		raft_status(craft_raft(n->c), &st);
		if (st.role == RAFT_LEADER && st.term >= bt) {
			best = n;
			bt = st.term;
		}
	}
	return best;
}

static int
cmp_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

void
check_node(struct node *n)
{
	struct raft *r = craft_raft(n->c);
	struct raft_status st;
	raft_status(r, &st);
	if (raft_installing(r) && st.role != RAFT_FOLLOWER)
		fail("node %s is %s while installing a snapshot", n->name,
		     st.role == RAFT_LEADER ? "leader" : "a candidate");
	if (st.role == RAFT_LEADER) {
		uint64_t *l = vec_at(&S->leader_of_term, &S->n_lot, st.term);
		if (!*l) {
			*l = n->raft_id;
			S->n_leaders++;
		} else if (*l != n->raft_id) {
			fail("election safety: two leaders of term %" PRIu64, st.term);
		}
	}
	if (st.commit > st.last_index)
		fail("node %s commit %" PRIu64 " past last %" PRIu64, n->name, st.commit,
		     st.last_index);
	for (uint64_t i = n->seen_commit + 1; i <= st.commit; i++) {
		uint64_t t = raft_term_at(r, i);
		if (!t)
			continue;
		uint64_t *g = vec_at(&S->cterm, &S->n_cterm, i);
		if (!*g) {
			*g = t;
			*vec_at(&S->cseen, &S->n_cseen, i) = st.term;
		} else if (*g != t) {
			fail("committed entry %" PRIu64 " has term %" PRIu64 " on %s, %" PRIu64
			     " elsewhere",
			     i, t, n->name, *g);
		}
	}
	if (st.commit > n->seen_commit)
		n->seen_commit = st.commit;
	if (st.commit > S->commit_max)
		S->commit_max = st.commit;
	if (st.role != RAFT_LEADER) {
		n->last_commit = 0;
		return;
	}
	/* leader completeness (3.6.3) */
	if (n->lc_term != st.term) {
		n->lc_term = st.term;
		n->lc_checked = 0;
	}
	uint64_t from = n->lc_checked > st.snap_index ? n->lc_checked : st.snap_index;
	for (uint64_t i = from + 1; i <= S->commit_max; i++) {
		uint64_t g = i < S->n_cterm ? S->cterm[i] : 0;
		uint64_t t = raft_term_at(r, i);
		if (g && i < S->n_cseen && S->cseen[i] < st.term && t != g)
			fail("leader completeness: %s (term %" PRIu64 ") lacks committed %" PRIu64,
			     n->name, st.term, i);
	}
	n->lc_checked = S->commit_max;
	/* a node installing a snapshot is never counted towards a commit (checked when the commit
	 * moved under an unchanged configuration: a conf change takes effect on append) */
	if (n->last_commit && st.commit > n->last_commit &&
	    !memcmp(&n->last_conf, &st.conf, sizeof(st.conf))) {
		uint64_t m[RAFT_MAX_NODES * 2];
		unsigned k = 0, voters = 0;
		char who[160] = "";
		size_t o = 0;
		for (uint32_t j = 0; j < st.n_peers; j++) {
			const struct raft_peer_status *p = &st.peers[j];
			if (!p->voter)
				continue;
			voters++;
			int x = node_of_id(p->id);
			int installing = x && S->nd[x].up && S->nd[x].raft_id == p->id &&
					 raft_installing(craft_raft(S->nd[x].c));
			m[k++] = installing ? 0 : p->match;
			if (o < sizeof(who) - 40)
				o += (size_t)snprintf(who + o, sizeof(who) - o, " %s:%" PRIu64 "%s",
						      x ? S->nd[x].name : "?", p->match,
						      installing ? "(installing)" : "");
		}
		qsort(m, k, sizeof(m[0]), cmp_desc);
		if (voters && m[voters / 2] < st.commit)
			fail("%s committed %" PRIu64 " with a node installing a snapshot counted "
			     "(the quorum without it holds %" PRIu64 "):%s",
			     n->name, st.commit, m[voters / 2], who);
	}
	n->last_commit = st.commit;
	n->last_conf = st.conf;
}

/* Is node k installing a snapshot (the marker on its disk, or fetching now)? */
static int
disk_marker(struct node *k)
{
	void *v;
	size_t vl;
	int marker = store_get(k->dstore, STORE_CF_META, STORE_META_INSTALL,
			       sizeof(STORE_META_INSTALL) - 1, &v, &vl) == 0;
	if (marker)
		free(v);
	return marker;
}

int
install_marker(struct node *k)
{
	return (k->up && craft_fetching(k->c)) || disk_marker(k);
}

/* Does node k's disk hold committed entry i (with term t): in its log, or in a complete
 * applied state? */
static int
holds(struct node *k, uint64_t i, uint64_t t)
{
	int marker = disk_marker(k);
	uint64_t applied = 0;
	store_applied_get(k->dstore, &applied);
	if (!marker && applied >= i)
		return 1;
	struct store_entry e;
	void *buf;
	if (store_log_get(k->dstore, i, &e, &buf))
		return 0;
	int ok = e.term == t;
	free(buf);
	return ok;
}

void
check_durable(void)
{
	struct node *l = leader();
	if (!l || S->commit_max == 0)
		return;
	struct raft_status st;
	raft_status(craft_raft(l->c), &st);
	/* a leader some other live node has moved past (a paused one still says it leads) holds
	 * a configuration that may predate later changes: the voters it lists are not the ones
	 * that could form a quorum now (host_sim --seed 2007496 --nodes 3 --steps 10000
	 * --pauses: n1, paused as leader of term 4, listed the removed n4 and not n2 after
	 * term 7's leader crashed); check again once a current leader is up */
	for (int x = 1; x <= S->n_ids; x++) {
		struct raft_status o;
		if (!S->nd[x].up)
			continue;
		raft_status(craft_raft(S->nd[x].c), &o);
		if (o.term > st.term)
			return;
	}
	S->n_durable_checks++;
	for (int s = 0; s < SIM_DURABLE_SAMPLES; s++) {
		uint64_t i = s < SIM_DURABLE_SAMPLES / 2 ? S->commit_max - rnd_n(32)
							 : 1 + rnd_n(S->commit_max);
		if (i == 0 || i > S->commit_max || i >= S->n_cterm || !S->cterm[i])
			continue;
		unsigned have = 0, dead = 0;
		for (uint32_t j = 0; j < st.conf.n_voters; j++) {
			uint64_t id = st.conf.voters[j];
			int k = node_of_id(id), d = 0;
			for (int x = 1; x <= S->n_ids; x++)
				d |= S->nd[x].dead_id == id && S->nd[x].raft_id != id;
			for (uint64_t w = 0; w < S->n_wipe && w < S->n_dead_ids; w++)
				d |= S->dead_ids[w] == id; /* (an earlier one too: seed 1066) */
			if (d)
				dead++; /* a lost disk's incarnation: it never votes again */
			else if (k && holds(&S->nd[k], i, S->cterm[i]))
				have++;
		}
		/* no quorum the live identities could form lacks a holder */
		unsigned n = st.conf.n_voters, q = n / 2 + 1;
		if (n - dead - have >= q)
			fail("durability: committed entry %" PRIu64 " (term %" PRIu64
			     ") is held by %u of %u voters (%u of them lost their disk): a quorum "
			     "without it can form",
			     i, S->cterm[i], have, n, dead);
	}
}
