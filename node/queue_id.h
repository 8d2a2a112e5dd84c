/*
 * queue_id.h: queue ids for messages a node creates (SMTP accepts, DSNs).
 *
 * 22 hex digits: 11 of unix ms, 6 of an FNV-1a hash of "<node_id>" or "<node_id>/<salt>", 5 of
 * a per-generator counter that starts at a value drawn from the clock and the pid.  Distinct
 * node ids (and salts) keep ids unique across nodes and generators; the counter keeps them
 * unique within a millisecond (up to 2^20 ids per ms per generator).
 */
#ifndef RELAY_QUEUE_ID_H
#define RELAY_QUEUE_ID_H

#include <stddef.h>
#include <stdint.h>

#define QUEUE_ID_LEN 22

struct queue_id_gen {
	uint32_t hash;
	uint32_t counter;
};

/* salt may be NULL (the hash of node_id alone). */
void queue_id_gen_init(struct queue_id_gen *g, const char *node_id, const char *salt);
void queue_id_make(struct queue_id_gen *g, uint64_t now_ms, char *out, size_t cap);

#endif
