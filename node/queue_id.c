/*
 * queue_id.c: the queue id scheme of queue_id.h.
 */
#include "queue_id.h"

#include <inttypes.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>

void
queue_id_gen_init(struct queue_id_gen *g, const char *node_id, const char *salt)
{
	uint32_t h = 2166136261u;
	for (const char *p = node_id; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	if (salt != NULL) {
		h = (h ^ '/') * 16777619u;
		for (const char *p = salt; *p; p++)
			h = (h ^ (uint8_t)*p) * 16777619u;
	}
	g->hash = h;
	struct timeval tv;
	gettimeofday(&tv, NULL);
	g->counter = (uint32_t)(tv.tv_usec ^ (tv.tv_sec << 7) ^ (getpid() << 3)) & 0xfffff;
}

void
queue_id_make(struct queue_id_gen *g, uint64_t ms, char *out, size_t cap)
{
	g->counter = (g->counter + 1) & 0xfffff;
	snprintf(out, cap, "%011" PRIX64 "%06" PRIX32 "%05" PRIX32, ms & (uint64_t)0xfffffffffff,
		 g->hash & 0xffffff, g->counter);
}
