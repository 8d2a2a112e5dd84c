/*
 * transport_raft.c: Raft messages on the wire (transport.h: transport_raft_encode, _decode),
 * relay.RaftMsg in proto/transport.proto.  Pure: bytes in, a message out, and back; no NNG.
 * A peer's bytes are untrusted: anything outside the bounds of raft.h (type, entry and
 * snapshot size, nodes per configuration) is TRANSPORT_EINVAL, never a crash.
 * Split from transport.c (which carries the messages) to keep each file to one job.
 */
#include "transport.h"

#include <stdlib.h>
#include <string.h>

#include "transport.pb-c.h"

static bool
raft_conf_fits(const struct raft_conf *c)
{
	return c->n_voters <= RAFT_MAX_NODES && c->n_learners <= RAFT_MAX_NODES;
}

int
transport_raft_encode(const struct raft_msg *m, void **buf, size_t *len)
{
	if (m == NULL || buf == NULL || len == NULL || m->type >= RAFT_MSG_TYPE_COUNT ||
	    (m->n_entries > 0 && m->entries == NULL) || (m->snap_len > 0 && m->snap_data == NULL))
		return TRANSPORT_EINVAL;
	if (m->snap_len > RAFT_SNAPSHOT_MAX_BYTES || !raft_conf_fits(&m->snap.conf))
		return TRANSPORT_ETOOBIG;
	int rv = TRANSPORT_ENOMEM;
	Relay__RaftMsg pm = RELAY__RAFT_MSG__INIT;
	Relay__RaftConf pc = RELAY__RAFT_CONF__INIT;
	Relay__RaftEntry *ents = NULL, **eptrs = NULL;
	pm.type = m->type;
	pm.has_reject = m->reject != 0;
	pm.reject = m->reject != 0;
	pm.has_force = m->force != 0;
	pm.force = m->force != 0;
	pm.from = m->from;
	pm.to = m->to;
	pm.term = m->term;
	pm.has_log_term = pm.has_index = pm.has_commit = pm.has_hint_index = pm.has_hint_term = 1;
	pm.log_term = m->log_term;
	pm.index = m->index;
	pm.commit = m->commit;
	pm.hint_index = m->hint_index;
	pm.hint_term = m->hint_term;
	pm.has_snap_total = m->snap_total != 0;
	pm.snap_total = m->snap_total;
	pm.has_snap_offset = m->snap_offset != 0;
	pm.snap_offset = m->snap_offset;
	pm.has_stamp = m->stamp != 0;
	pm.stamp = m->stamp;
	if (m->n_entries > 0) {
		ents = calloc(m->n_entries, sizeof(*ents));
		eptrs = calloc(m->n_entries, sizeof(*eptrs));
		if (ents == NULL || eptrs == NULL)
			goto out;
		for (uint32_t i = 0; i < m->n_entries; i++) {
			const struct raft_entry *e = &m->entries[i];
			if (e->len > RAFT_ENTRY_MAX_BYTES || (e->len > 0 && e->data == NULL)) {
				rv = TRANSPORT_ETOOBIG;
				goto out;
			}
			relay__raft_entry__init(&ents[i]);
			ents[i].index = e->index;
			ents[i].term = e->term;
			ents[i].has_type = 1;
			ents[i].type = e->type;
			ents[i].has_data = 1;
			ents[i].data.data = e->data;
			ents[i].data.len = e->len;
			eptrs[i] = &ents[i];
		}
		pm.n_entries = m->n_entries;
		pm.entries = eptrs;
	}
	if (m->type == RAFT_MSG_SNAP) {
		pm.has_snap_index = pm.has_snap_term = pm.has_snap_data = 1;
		pm.snap_index = m->snap.index;
		pm.snap_term = m->snap.term;
		pc.n_voters = m->snap.conf.n_voters;
		pc.voters = (uint64_t *)m->snap.conf.voters;
		pc.n_learners = m->snap.conf.n_learners;
		pc.learners = (uint64_t *)m->snap.conf.learners;
		pm.snap_conf = &pc;
		pm.snap_data.data = m->snap_data;
		pm.snap_data.len = m->snap_len;
	}
	size_t n = relay__raft_msg__get_packed_size(&pm);
	void *out = malloc(n > 0 ? n : 1);
	if (out == NULL)
		goto out;
	relay__raft_msg__pack(&pm, out);
	*buf = out;
	*len = n;
	rv = 0;
out:
	free(eptrs);
	free(ents);
	return rv;
}

int
transport_raft_decode(const void *data, size_t len, struct transport_raft_in *in)
{
	memset(in, 0, sizeof(*in));
	Relay__RaftMsg *pm = relay__raft_msg__unpack(NULL, len, data);
	if (pm == NULL)
		return TRANSPORT_EINVAL;
	struct raft_msg *m = &in->msg;
	if (pm->type >= RAFT_MSG_TYPE_COUNT || pm->n_entries > UINT32_MAX ||
	    pm->snap_data.len > RAFT_SNAPSHOT_MAX_BYTES ||
	    (pm->snap_conf != NULL && (pm->snap_conf->n_voters > RAFT_MAX_NODES ||
				       pm->snap_conf->n_learners > RAFT_MAX_NODES)))
		goto err_after_unpack;
	m->type = (uint8_t)pm->type;
	m->reject = pm->reject;
	m->force = pm->force;
	m->from = pm->from;
	m->to = pm->to;
	m->term = pm->term;
	m->log_term = pm->log_term;
	m->index = pm->index;
	m->commit = pm->commit;
	m->hint_index = pm->hint_index;
	m->hint_term = pm->hint_term;
	if (pm->n_entries > 0) {
		m->entries = calloc(pm->n_entries, sizeof(*m->entries));
		if (m->entries == NULL)
			goto err_after_unpack;
		for (size_t i = 0; i < pm->n_entries; i++) {
			const Relay__RaftEntry *e = pm->entries[i];
			if (e->data.len > RAFT_ENTRY_MAX_BYTES || e->type > RAFT_ENTRY_CONF)
				goto err_after_entries;
			m->entries[i] = (struct raft_entry){.index = e->index,
							    .term = e->term,
							    .type = (uint8_t)e->type,
							    .len = (uint32_t)e->data.len,
							    .data = e->data.data};
		}
		m->n_entries = (uint32_t)pm->n_entries;
	}
	m->snap.index = pm->snap_index;
	m->snap.term = pm->snap_term;
	if (pm->snap_conf != NULL) {
		const Relay__RaftConf *c = pm->snap_conf;
		m->snap.conf.n_voters = (uint32_t)c->n_voters;
		for (size_t i = 0; i < c->n_voters; i++)
			m->snap.conf.voters[i] = c->voters[i];
		m->snap.conf.n_learners = (uint32_t)c->n_learners;
		for (size_t i = 0; i < c->n_learners; i++)
			m->snap.conf.learners[i] = c->learners[i];
	}
	m->snap_total = pm->snap_total;
	m->snap_offset = pm->snap_offset;
	m->stamp = pm->has_stamp ? pm->stamp : 0;
	m->snap_len = pm->snap_data.len;
	m->snap_data = pm->snap_data.len > 0 ? pm->snap_data.data : NULL;
	in->pb = pm;
	return 0;

err_after_entries:
	free(m->entries);
err_after_unpack:
	relay__raft_msg__free_unpacked(pm, NULL);
	memset(in, 0, sizeof(*in));
	return TRANSPORT_EINVAL;
}

void
transport_raft_in_fini(struct transport_raft_in *in)
{
	free(in->msg.entries);
	if (in->pb != NULL)
		relay__raft_msg__free_unpacked(in->pb, NULL);
	memset(in, 0, sizeof(*in));
}
