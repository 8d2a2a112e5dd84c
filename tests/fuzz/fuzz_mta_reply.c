/*
 * fuzz_mta_reply.c - arbitrary server bytes against the SMTP client side.
 * Byte 0 picks the mode: even = mta_reply_parse() over the input, replies
 * back to back; odd = the whole mta_session machine, with byte 1 choosing the
 * TLS policy, pipelining-friendly transaction shape and write sizes, and the
 * rest fed as server bytes in chunks, answering every event like the glue.
 * Invariants checked: consumed <= fed, no recipient left ACCEPTED after the
 * transaction ends, the output never exceeds its bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mta_session.h"

static void
parse_all(const uint8_t *data, size_t size)
{
	static struct mta_reply r;
	size_t off = 0;
	while (off < size) {
		int n = mta_reply_parse((const char *)data + off, size - off, &r);
		if (n < 0)
			break;
		if (n == 0 || (size_t)n > size - off)
			abort();
		if (r.code < 200 || r.code > 599 || r.nlines == 0 || r.nlines > MTA_REPLY_MAX_LINES)
			abort();
		for (size_t i = 0; i < r.nlines; i++)
			(void)strlen(mta_reply_line(&r, i));
		off += (size_t)n;
	}
}

static void
check_txn(const struct mta_txn *t)
{
	for (size_t i = 0; i < t->nrcpts; i++)
		if (t->rcpts[i].state == MTA_RCPT_ACCEPTED)
			abort();
}

static void
drain(struct mta_session *s, size_t step)
{
	for (int guard = 0; guard < 100000; guard++) {
		struct mta_iov iov[4];
		size_t n = mta_session_output(s, iov, 4), tot = 0;
		if (n == 0)
			return;
		for (size_t i = 0; i < n; i++) {
			if (iov[i].len == 0 || iov[i].base == NULL)
				abort();
			tot += iov[i].len;
		}
		mta_session_output_done(s, tot < step ? tot : step);
	}
	abort(); /* output that never ends */
}

static void
run_machine(const uint8_t *data, size_t size)
{
	static struct mta_session s;
	static const char body[] = "Subject: x\r\n\r\n.dot\r\nline\r\n..\r\nend";
	struct mta_rcpt r[3] = {
	    {.addr = "a@d.example", .notify = MTA_NOTIFY_SUCCESS, .orcpt = "rfc822;a@d.example"},
	    {.addr = "b@d.example"},
	    {.addr = "c@d.example", .notify = MTA_NOTIFY_NEVER}};
	struct mta_rcpt r2[1] = {{.addr = "e@d.example"}};
	struct mta_txn t = {.mail_from = "s@x.example",
			    .ret = MTA_RET_HDRS,
			    .envid = "id+1",
			    .body = body,
			    .body_len = sizeof(body) - 1,
			    .rcpts = r,
			    .nrcpts = 3};
	struct mta_txn t2 = {.mail_from = "", .body = "", .body_len = 0, .rcpts = r2, .nrcpts = 1};
	struct mta_config cfg = {.helo_name = "relay.example"};
	uint8_t flags = size > 1 ? data[1] : 0;
	bool next_done = false;

	cfg.tls = (enum mta_tls_policy)(flags % 3);
	cfg.tls_active = flags & 4;
	cfg.commit_gate = flags & 2; /* the end of data waits for mta_session_commit */
	t.body_8bit = flags & 8;
	t.smtputf8 = flags & 16;
	size_t step = 1 + (flags >> 5) * 37u;
	size_t chunk = 1 + (flags >> 5) * 11u;
	if (mta_session_init(&s, &cfg, &t) != 0)
		abort();
	data += size > 2 ? 2 : size;
	size -= size > 2 ? 2 : size;

	char in[MTA_REPLY_MAX + 64];
	size_t have = 0, off = 0;
	while (mta_session_event(&s) != MTA_EV_CLOSED) {
		drain(&s, step);
		switch (mta_session_event(&s)) {
		case MTA_EV_STARTTLS:
			mta_session_tls_done(&s, (flags & 1) != 0);
			have = 0; /* plaintext buffered before the handshake is dropped */
			continue;
		case MTA_EV_TXN_DONE:
			check_txn(s.txn);
			if (!next_done) {
				next_done = true;
				if (mta_session_next(&s, &t2) != 0)
					abort();
			} else {
				mta_session_quit(&s);
			}
			continue;
		case MTA_EV_COMMIT:
			/* the glue's answer: from the input, so both paths are explored */
			mta_session_commit(&s, off < size && (data[off] & 1), "fuzz: no commit");
			continue;
		case MTA_EV_CLOSED:
			continue;
		case MTA_EV_NONE:
			break;
		}
		if (off >= size) {
			mta_session_abort(&s, "eof");
			break;
		}
		size_t n = size - off < chunk ? size - off : chunk;
		if (n > sizeof(in) - have)
			n = sizeof(in) - have;
		memcpy(in + have, data + off, n);
		off += n;
		have += n;
		size_t used = mta_session_feed(&s, in, have);
		if (used > have)
			abort();
		memmove(in, in + used, have - used);
		have -= used;
		if (have == sizeof(in) && mta_session_event(&s) == MTA_EV_NONE)
			abort(); /* a full buffer must have been rejected by the parser */
	}
	check_txn(&t);
	check_txn(&t2);
	(void)mta_session_timeout_ms(&s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if ((data[0] & 1) == 0)
		parse_all(data + 1, size - 1);
	else
		run_machine(data, size);
	return 0;
}
