/*
 * fuzz_dsn.c - the DSN builder's inputs (issue 12): everything in a bounce but the times comes
 * from a message a stranger may have sent (sender, ENVID, recipients, ORCPT, the remote reply,
 * the original).  Byte 0: action (bits 0-2), RET (bits 3-4), 1-4 recipients (bits 5-6);
 * byte 1: orig_max (x 64).  The rest, split at NUL bytes: mail_from, envid, then per recipient
 * address, orcpt, status, remote MTA, diagnostic; the remainder is the original message.
 * The original is made CRLF first (the builder's precondition, as the queue holds bodies).
 * Invariants: 0 or -EINVAL/-ENOMEM; on success the report is NUL-terminated at its length,
 * every line ends in CRLF, the original's body is never in a headers-only report (RET=HDRS),
 * and the report's size is bounded by the inputs and orig_max.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"

#define FIELDS_MAX (2 + 4 * 5)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	unsigned f0 = data[0];
	size_t nrcpts = 1 + ((f0 >> 5) & 3);
	char *copy = malloc(size + 1);
	if (copy == NULL)
		return 0;
	memcpy(copy, data + 2, size - 2);
	copy[size - 2] = '\0';
	const char *field[FIELDS_MAX] = {0};
	size_t nf = 0, pos = 0, rest = size - 2;
	while (nf < 2 + nrcpts * 5 && pos <= rest) {
		field[nf++] = copy + pos;
		char *z = memchr(copy + pos, '\0', rest - pos + 1);
		pos = (size_t)(z - copy) + 1;
	}
	/* the original as the queue holds it: CRLF lines (dsn.h's precondition; the SMTP session
	 * rewrites every bare CR or LF), so a bare one here is made CRLF as the session would */
	const char *raw = pos <= rest ? copy + pos : "";
	size_t raw_len = pos <= rest ? rest - pos : 0;
	char *norm = malloc(2 * raw_len + 1);
	if (norm == NULL) {
		free(copy);
		return 0;
	}
	size_t orig_len = 0;
	for (size_t i = 0; i < raw_len; i++) {
		if (raw[i] == '\r' && i + 1 < raw_len && raw[i + 1] == '\n') {
			norm[orig_len++] = '\r';
			norm[orig_len++] = '\n';
			i++;
		} else if (raw[i] == '\r' || raw[i] == '\n') {
			norm[orig_len++] = '\r';
			norm[orig_len++] = '\n';
		} else {
			norm[orig_len++] = raw[i];
		}
	}
	norm[orig_len] = '\0';
	const char *orig = norm;
	struct dsn_rcpt rc[4];
	memset(rc, 0, sizeof(rc));
	for (size_t i = 0; i < nrcpts; i++) {
		const char **f = field + 2 + i * 5;
		rc[i].final_rcpt = f[0] ? f[0] : "x@y.test";
		rc[i].orcpt = f[1] && f[1][0] ? f[1] : NULL;
		rc[i].action = (enum dsn_action)((f0 & 7) % 5);
		rc[i].status = f[2] && f[2][0] ? f[2] : "5.0.0";
		rc[i].remote_mta = f[3] && f[3][0] ? f[3] : NULL;
		rc[i].diag = f[4] && f[4][0] ? f[4] : NULL;
		rc[i].last_attempt = "Thu, 3 Dec 2026 10:00:00 +0000";
	}
	struct dsn_input in = {
	    .reporting_mta = "relay.test",
	    .mail_from = field[0] && field[0][0] ? field[0] : "s@src.test",
	    .envid = field[1] && field[1][0] ? field[1] : NULL,
	    .ret = (enum dsn_ret)(((f0 >> 3) & 3) % 3),
	    .arrival_date = "Thu, 3 Dec 2026 09:00:00 +0000",
	    .date = "Thu, 3 Dec 2026 10:00:01 +0000",
	    .message_id = "1A23D8D1A1DA7E9FE561B1@relay.test",
	    .rcpts = rc,
	    .nrcpts = nrcpts,
	    .orig = orig,
	    .orig_len = orig_len,
	    .orig_max = (size_t)data[1] * 64,
	};
	char *out = NULL;
	size_t len = 0;
	int rc0 = dsn_build(&in, &out, &len);
	if (rc0 != 0) {
		if ((rc0 != -EINVAL && rc0 != -ENOMEM) || out != NULL)
			abort();
		free(norm);
		free(copy);
		return 0;
	}
	if (out == NULL || out[len] != '\0' || strlen(out) > len)
		abort();
	for (size_t i = 0; i < len; i++)
		if (out[i] == '\n' && (i == 0 || out[i - 1] != '\r'))
			abort();
	/* bounded: the fixed parts, every field a few times over, the original at most once */
	size_t max = 16384 + orig_len + 8 * (pos < size ? pos : size);
	if (len > max)
		abort();
	/* RET=HDRS: the original's body never comes back (unless its bytes are also in a field
	 * or in the original's headers, which are returned) */
	const char *sep = in.ret == DSN_RET_HDRS ? strstr(orig, "\r\n\r\n") : NULL;
	if (sep != NULL && strlen(sep + 4) >= 32) {
		char needle[33];
		memcpy(needle, sep + 4, 32);
		needle[32] = '\0';
		bool elsewhere = false;
		for (size_t i = 0; i < nf; i++)
			elsewhere |= field[i] != NULL && strstr(field[i], needle) != NULL;
		char *hdrs = strndup(orig, (size_t)(sep - orig) + 4);
		elsewhere |= hdrs == NULL || strstr(hdrs, needle) != NULL;
		/* or in what the report says of its own: the same report built from the headers
		 * alone (a body that starts with our MIME boundary, =_dsn_<Message-ID>_0, is no
		 * body coming back: the boundary need only be absent from what is included) */
		if (!elsewhere) {
			struct dsn_input in2 = in;
			in2.orig = hdrs;
			in2.orig_len = (size_t)(sep - orig) + 4;
			char *out2 = NULL;
			size_t len2 = 0;
			if (dsn_build(&in2, &out2, &len2) != 0 || strstr(out2, needle) != NULL)
				elsewhere = true;
			free(out2);
		}
		free(hdrs);
		if (!elsewhere && strstr(out, needle) != NULL)
			abort();
	}
	free(out);
	free(norm);
	free(copy);
	return 0;
}
