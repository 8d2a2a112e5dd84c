/*
 * log.c: the line format of log.h.  One write(2) per line so lines from one process never
 * interleave.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_node[64] = "relayd";
static enum log_level log_min = LOG_INFO;

void
log_setup(const char *node_id, const char *level)
{
	if (node_id != NULL && node_id[0] != '\0')
		snprintf(log_node, sizeof(log_node), "%s", node_id);
	if (level == NULL || strcmp(level, "info") == 0)
		log_min = LOG_INFO;
	else if (strcmp(level, "debug") == 0)
		log_min = LOG_DEBUG;
	else if (strcmp(level, "warn") == 0)
		log_min = LOG_WARN;
	else if (strcmp(level, "error") == 0)
		log_min = LOG_ERROR;
}

int
log_enabled(enum log_level lvl)
{
	return lvl >= log_min;
}

void
log_msg(enum log_level lvl, const char *id, const char *fmt, ...)
{
	static const char *const names[] = {"debug", "info", "warn", "error"};
	if (lvl < log_min)
		return;
	char line[LOG_LINE_MAX];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s %s ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (int)(tv.tv_usec / 1000), log_node, names[lvl],
			 id != NULL && id[0] != '\0' ? id : "-");
	if (n < 0)
		return;
	if ((size_t)n < sizeof(line)) {
		va_list ap;
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		va_end(ap);
		if (m > 0)
			n += m;
	}
	if ((size_t)n >= sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w;
}

const char *
log_safe(const char *s, size_t len, char *out, size_t cap)
{
	size_t o = 0;
	if (cap == 0)
		return "";
	for (size_t i = 0; i < len && o + 5 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			out[o++] = (char)c;
		} else {
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
		}
	}
	out[o] = '\0';
	return out;
}
