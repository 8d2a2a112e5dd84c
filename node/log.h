/*
 * log.h: one line per event on stderr: "<time> <node> <level> <id> key=value ...".
 * The id (session or queue id) comes first, as in Postfix and OpenSMTPD logs.  Never pass AUTH
 * secrets or message bodies.  Lines longer than LOG_LINE_MAX are cut.
 */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

#include <stddef.h>

#define LOG_LINE_MAX 2048

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_setup(const char *node_id, const char *level);
int log_enabled(enum log_level lvl);
void log_msg(enum log_level lvl, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(id, ...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, id, __VA_ARGS__); } while (0)
#define log_info(id, ...) log_msg(LOG_INFO, id, __VA_ARGS__)
#define log_warn(id, ...) log_msg(LOG_WARN, id, __VA_ARGS__)
#define log_error(id, ...) log_msg(LOG_ERROR, id, __VA_ARGS__)

/* Copies s into out with control characters and non-ASCII escaped (\xNN): peer text in logs. */
const char *log_safe(const char *s, size_t len, char *out, size_t cap);

#endif
