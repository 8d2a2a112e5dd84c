/*
 * metrics.h: renders relayd's Prometheus metrics (text format 0.0.4) from the counters of each
 * part, on the loop thread.  Names: relay_<area>_<what>[_total|_seconds], one HELP and TYPE line
 * per family.  See README "HTTP endpoint" for the list.
 */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

struct smtp_server;
struct cluster;
struct delivery;

struct metrics_sources {
	const struct smtp_server *smtp; /* may be NULL (not started yet / stopped) */
	struct cluster *cluster;	/* may be NULL */
	const struct delivery *delivery; /* may be NULL */
	const char *node_id;
	bool stopping;
};

/* http_fill_cb for http_start: arg is a struct metrics_sources *. */
void metrics_fill(void *arg, struct http_text *t, bool *ready, char *reason, size_t reason_len);

#endif
