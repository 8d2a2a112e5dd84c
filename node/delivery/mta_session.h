/*
 * mta_session.h - the SMTP client state machine of delivery (one connection).
 *
 * Contract: pure.  Replies in, commands out: no sockets, no clock, no OpenSSL.
 * The glue (libuv + TLS) owns the connection; it feeds the server's bytes to
 * mta_session_feed(), writes what mta_session_output() exposes, acts on the
 * event mta_session_event() reports, and keeps the deadlines that struct
 * mta_deadline computes from its monotonic clock (RFC 5321 4.5.3.2 per
 * phase, partial replies extend nothing; a total per attempt).
 *
 * Happy path: greeting 220 -> EHLO (HELO on 5xx) -> STARTTLS when offered and
 * policy allows (event MTA_EV_STARTTLS: the glue handshakes, calls
 * mta_session_tls_done(), and the machine sends EHLO again, RFC 3207 4.2) ->
 * MAIL, RCPT..., DATA (one PIPELINING group, RFC 2920 3.1, or one at a time)
 * -> the body, dot-stuffed (RFC 5321 4.5.2), then "." -> final reply ->
 * MTA_EV_TXN_DONE.  With cfg.commit_gate the machine stops before the "."
 * (MTA_EV_COMMIT): the glue says whether it may still commit the
 * transaction (mta_session_commit(); a delivery lease, cluster/ownership.h);
 * when not, the session closes without the "." (MTA_CLOSE_ABANDONED): the
 * server must not deliver a message whose data did not end (RFC 5321 4.1.1.4,
 * 3.8), and the recipients stay PENDING.  The glue then calls mta_session_next() to send another
 * transaction on the connection (RSET first when the last one was left open)
 * or mta_session_quit().
 *
 * Outcomes are written into the caller's transaction: every recipient ends
 * DELIVERED (2xx after data), DEFERRED (4xx to its RCPT), FAILED (5xx to its
 * RCPT; 5xx to MAIL, DATA or the final dot; local checks: SIZE 5.3.4 RFC
 * 1870, SMTPUTF8 5.6.7 RFC 6531 3.4, bad address syntax 5.1.3/5.1.7), or
 * stays PENDING, meaning "try the next host": 4xx to MAIL, DATA or the final
 * dot, 421, a greeting other than 220, a malformed reply, a lost connection,
 * a timeout, TLS required but not offered (a synthesized "451 4.7.4").  The
 * glue's failover logic moves PENDING recipients to the next address / MX,
 * and defers them when every host failed.  Every outcome keeps the reply
 * (struct mta_diag) for logs and DSNs.
 *
 * Failure handling: a malformed or oversized reply, or plaintext that follows
 * the 220 to STARTTLS (command injection, CVE-2011-0411), closes the session
 * at once (MTA_EV_CLOSED, no QUIT).  Nothing a server sends can make the
 * machine allocate or overflow: every buffer below has a named bound.
 */
#ifndef RELAY_MTA_SESSION_H
#define RELAY_MTA_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bounds. */
#define MTA_REPLY_LINE_MAX 1000 /* RFC 5321 4.5.3.1.5 says 512; servers exceed it */
#define MTA_REPLY_MAX_LINES 64	/* lines in one (EHLO) reply */
#define MTA_REPLY_MAX 8192	/* bytes of one reply on the wire */
#define MTA_TEXT_MAX 512	/* reply text kept with an outcome */
#define MTA_ENH_MAX 16		/* "5.1.10" plus room */
#define MTA_ADDR_MAX 256	/* RFC 5321 4.5.3.1.3 path */
#define MTA_ENVID_MAX 100	/* RFC 3461 4.4 */
#define MTA_ORCPT_MAX 500	/* RFC 3461 4.2 */
#define MTA_CMD_MAX 2048	/* one command line with its parameters */
#define MTA_OUT_MAX 16384	/* command output buffer */
#define MTA_MAX_RCPTS 100	/* per transaction, RFC 5321 4.5.3.1.8 */

/* Timeouts, RFC 5321 4.5.3.2 (milliseconds). */
#define MTA_TIMEOUT_GREETING (5 * 60 * 1000)   /* 4.5.3.2.1 initial 220 */
#define MTA_TIMEOUT_MAIL (5 * 60 * 1000)       /* 4.5.3.2.2 */
#define MTA_TIMEOUT_RCPT (5 * 60 * 1000)       /* 4.5.3.2.3 */
#define MTA_TIMEOUT_DATA_INIT (2 * 60 * 1000)  /* 4.5.3.2.4 DATA -> 354 */
#define MTA_TIMEOUT_DATA_BLOCK (3 * 60 * 1000) /* 4.5.3.2.5 each body write */
#define MTA_TIMEOUT_DATA_TERM (10 * 60 * 1000) /* 4.5.3.2.6 "." -> 250 */
#define MTA_TIMEOUT_OTHER (5 * 60 * 1000)      /* EHLO, STARTTLS, RSET, QUIT */
#define MTA_TIMEOUT_TLS (5 * 60 * 1000)	       /* TLS handshake (smtp_starttls_timeout) */

/* --- replies ------------------------------------------------------------ */

struct mta_reply {
	int code;	       /* 200..599 */
	char enh[MTA_ENH_MAX]; /* RFC 2034 enhanced code of the first line, or "" */
	size_t nlines;
	size_t len; /* bytes used in text */
	uint16_t line_off[MTA_REPLY_MAX_LINES];
	char text[MTA_REPLY_MAX]; /* each line's text after "NNN-"/"NNN ", NUL-terminated;
				     the first without its enhanced code; control and 8-bit
				     bytes replaced by '?' */
};

/*
 * Parse one complete reply (RFC 5321 4.2: "NNN-text" continuation lines, then
 * "NNN text"; CRLF, a bare LF is accepted).  Returns the bytes consumed, -2 if
 * the reply is incomplete, -1 on error (bad code, codes differing between
 * lines, too many lines, a line or reply over its bound).  Allocates nothing.
 */
int mta_reply_parse(const char *buf, size_t len, struct mta_reply *out);

/* Text of line i (i < nlines). */
const char *mta_reply_line(const struct mta_reply *r, size_t i);

/* The outcome reply kept with a recipient or transaction. */
struct mta_diag {
	int code;		 /* 0 = none */
	char enh[MTA_ENH_MAX];	 /* enhanced status: the server's, or derived from code */
	char text[MTA_TEXT_MAX]; /* "550 5.1.1 text of the reply" (lines joined by ' ') */
	bool local;		 /* synthesized by this machine, not said by the server */
};

/* Fill d from a reply (enh derived as "X.0.0" when the server gave none). */
void mta_diag_from_reply(struct mta_diag *d, const struct mta_reply *r);

/* --- transactions ------------------------------------------------------- */

enum mta_notify { /* RFC 3461 4.1; 0 = NOTIFY not given */
		  MTA_NOTIFY_NEVER = 1,
		  MTA_NOTIFY_SUCCESS = 2,
		  MTA_NOTIFY_FAILURE = 4,
		  MTA_NOTIFY_DELAY = 8,
};

enum mta_ret { MTA_RET_NONE = 0, MTA_RET_FULL, MTA_RET_HDRS }; /* RFC 3461 4.3 */

enum mta_rcpt_state {
	MTA_RCPT_PENDING = 0, /* to do (in) / try the next host (out) */
	MTA_RCPT_ACCEPTED,    /* transient: RCPT said 2xx, data not finished */
	MTA_RCPT_DELIVERED,
	MTA_RCPT_DEFERRED,
	MTA_RCPT_FAILED,
};

struct mta_rcpt {
	const char *addr;	   /* borrowed; without <>; not NULL */
	unsigned notify;	   /* MTA_NOTIFY_* bits, 0 = not given */
	const char *orcpt;	   /* borrowed; "addr-type;address" decoded (xtext is applied
				      here), or NULL */
	enum mta_rcpt_state state; /* in: only PENDING recipients are sent; out */
	struct mta_diag diag;	   /* out: the reply behind the state */
};

enum mta_txn_result {
	MTA_TXN_DONE = 0,  /* every recipient has a final state for this attempt */
	MTA_TXN_NEXT_HOST, /* some are PENDING: try them on the next host */
};

struct mta_txn {
	const char *mail_from; /* borrowed; "" = null reverse-path <> */
	enum mta_ret ret;
	const char *envid; /* borrowed, decoded, or NULL */
	const char *body;  /* borrowed; CRLF lines, NOT dot-stuffed; not copied */
	size_t body_len;
	bool body_8bit;		/* see mta_body_is_8bit() */
	bool smtputf8;		/* see mta_txn_needs_smtputf8() */
	size_t size;		/* SIZE to declare; 0 = body_len */
	struct mta_rcpt *rcpts; /* borrowed; results written in place */
	size_t nrcpts;		/* <= MTA_MAX_RCPTS */
	/* out */
	enum mta_txn_result result;
	struct mta_diag diag; /* the last reply that decided the transaction */
};

/* True when the body has a byte >= 0x80 (BODY=8BITMIME, RFC 6152). */
bool mta_body_is_8bit(const char *body, size_t len);
/* True when an address (sender or recipient) is not ASCII (RFC 6531 3.4). */
bool mta_txn_needs_smtputf8(const struct mta_txn *txn);

/* --- the session -------------------------------------------------------- */

enum mta_tls_policy {
	MTA_TLS_NONE = 0,      /* never STARTTLS */
	MTA_TLS_OPPORTUNISTIC, /* STARTTLS when offered */
	MTA_TLS_REQUIRED,      /* no TLS, no mail: try the next host */
};

struct mta_config {
	const char *helo_name; /* borrowed; our EHLO name */
	enum mta_tls_policy tls;
	bool tls_active;  /* TLS already on (implicit TLS port) */
	bool commit_gate; /* stop before the end of data: MTA_EV_COMMIT */
};

enum mta_event {
	MTA_EV_NONE = 0, /* write the output, then feed more input */
	MTA_EV_STARTTLS, /* handshake now, then mta_session_tls_done() */
	MTA_EV_TXN_DONE, /* outcome in the txn; mta_session_next() or _quit() */
	MTA_EV_CLOSED,	 /* close the connection; see close_reason and diag */
	MTA_EV_COMMIT,	 /* the body is out but for its end: mta_session_commit() */
};

enum mta_close {
	MTA_CLOSE_OK = 0,    /* QUIT after the work was done */
	MTA_CLOSE_NEXT_HOST, /* this host failed: s->diag says why */
	MTA_CLOSE_ABANDONED, /* the glue refused the commit: no "." was sent; the
				recipients are PENDING, but not for another host */
};

enum mta_ext {
	MTA_EXT_PIPELINING = 1 << 0,
	MTA_EXT_SIZE = 1 << 1,
	MTA_EXT_8BITMIME = 1 << 2,
	MTA_EXT_SMTPUTF8 = 1 << 3,
	MTA_EXT_STARTTLS = 1 << 4,
	MTA_EXT_DSN = 1 << 5,
	MTA_EXT_ENHANCEDSTATUSCODES = 1 << 6,
	MTA_EXT_CHUNKING = 1 << 7,
};

enum mta_state {
	MTA_S_GREETING = 0,
	MTA_S_EHLO,
	MTA_S_HELO,
	MTA_S_STARTTLS,
	MTA_S_TLS_WAIT,
	MTA_S_TXN,	/* MAIL/RCPT/DATA in flight */
	MTA_S_BODY,	/* writing the body */
	MTA_S_DATA_END, /* waiting for the reply to "." */
	MTA_S_READY,	/* transaction done, waiting for the glue */
	MTA_S_QUIT,
	MTA_S_CLOSED,
};

struct mta_iov {
	const char *base; /* borrowed: the session's buffer or the txn body */
	size_t len;
};

struct mta_session {
	/* public, read-only */
	enum mta_state state;
	enum mta_event event;
	enum mta_close close_reason;
	struct mta_diag diag; /* why the session closed, when it failed */
	unsigned ext;	      /* MTA_EXT_* the server offered */
	uint64_t ext_size;    /* SIZE the server declared, 0 = none */
	bool tls_active;
	bool body_8bit_unsupported; /* sent 8-bit without 8BITMIME (logged by glue) */
	unsigned phase_seq;	    /* changes whenever a new wait starts (a state, a complete
				       reply, a body write done): struct mta_deadline */
	/* private */
	struct mta_config cfg;
	struct mta_txn *txn;
	bool txn_open;
	bool rset_needed;
	bool mail_ok;
	int mail_fail; /* 0, 4 or 5: class of a failed MAIL reply */
	bool discard_body;
	bool committed; /* the glue allowed the end of data (commit_gate) */
	size_t naccepted;
	struct mta_diag mail_diag;
	bool in_txn[MTA_MAX_RCPTS];
	int gen; /* next command of the transaction to emit */
	size_t gen_rcpt;
	struct {
		uint8_t kind;
		uint8_t rcpt;
	} exp[MTA_MAX_RCPTS + 8]; /* replies expected, in order */
	size_t exp_head, exp_count;
	char out[MTA_OUT_MAX];
	size_t out_off, out_len;
	/* body cursor */
	int bphase;
	size_t bpos;
	struct mta_reply reply; /* scratch */
};

/*
 * Start a session for a new connection (the greeting is awaited) that will
 * carry txn first.  cfg is copied, its strings borrowed.  Returns 0, or
 * -EINVAL for too many recipients or no helo name (then nothing changed).
 */
int mta_session_init(struct mta_session *s, const struct mta_config *cfg, struct mta_txn *txn);

/*
 * Feed server bytes.  Returns the bytes consumed (complete replies only; the
 * caller keeps the rest and feeds it again with more data).  Consumes nothing
 * while an event is pending.  The caller's input buffer needs at most
 * MTA_REPLY_MAX bytes: an incomplete reply longer than that is an error here.
 */
size_t mta_session_feed(struct mta_session *s, const char *buf, size_t len);

/* The pending event (not cleared by reading it). */
enum mta_event mta_session_event(const struct mta_session *s);

/*
 * Up to max segments to write next, in order, without advancing; returns the
 * count (0: nothing to write).  After writing n bytes, call
 * mta_session_output_done(s, n).  Body segments point into txn->body.
 */
size_t mta_session_output(const struct mta_session *s, struct mta_iov *iov, size_t max);
void mta_session_output_done(struct mta_session *s, size_t n);

/* After MTA_EV_STARTTLS: ok = the handshake succeeded.  On failure the
 * session closes with "try the next host" (the glue may retry that host in
 * plaintext when the policy is opportunistic). */
void mta_session_tls_done(struct mta_session *s, bool ok);

/*
 * After MTA_EV_COMMIT: ok = the glue may commit (the "." follows in the
 * output).  Otherwise the session closes at once without it
 * (MTA_CLOSE_ABANDONED, diag "421 4.4.2 <why>"): a QUIT or RSET would be body
 * text inside DATA, only closing the connection aborts the transaction.  The
 * glue checks right before: with no body bytes of its own left unsent.
 */
void mta_session_commit(struct mta_session *s, bool ok, const char *why);

/* After MTA_EV_TXN_DONE: run txn on the same connection.  0, or -EINVAL
 * (wrong state, too many recipients; nothing changed). */
int mta_session_next(struct mta_session *s, struct mta_txn *txn);

/* After MTA_EV_TXN_DONE (or any time): send QUIT; MTA_EV_CLOSED follows. */
void mta_session_quit(struct mta_session *s);

/*
 * The connection broke or the glue's timer fired: the current transaction's
 * unfinished recipients stay PENDING (try the next host) with a local
 * "421 4.4.2 <why>" diag; the session is CLOSED.  If the body was already
 * sent this may deliver twice (RFC 1047; DESIGN G3 at-least-once).
 */
void mta_session_abort(struct mta_session *s, const char *why);

/* Milliseconds of the RFC 5321 4.5.3.2 timeout of the current phase, 0 = none. */
unsigned mta_session_timeout_ms(const struct mta_session *s);

/* --- deadlines ---------------------------------------------------------- */

/*
 * The deadlines of one attempt, pure: every `now` is the glue's monotonic
 * clock (node/clock.h), never the wall clock.
 *
 * Phase: each wait of the session (the greeting, the reply to each command,
 * the STARTTLS handshake, each body write, the reply to the end of data, the
 * reply to QUIT) must end within mta_session_timeout_ms() of its start.  A
 * phase starts when s->phase_seq changes; bytes that do not complete a reply
 * or a write do not change it, so a server trickling a reply one byte a
 * minute is cut when its phase ends (Postfix smtp_per_record_deadline; RFC
 * 5321 4.5.3.2 gives the values).  The glue's own phase before the session
 * (the TCP connect) is set with mta_deadline_glue_phase().
 *
 * Attempt: one total bound from the start of the attempt (a job taken by a
 * connection, across the hosts it fails over to) to its end of data.  It does
 * not cut the wait for the reply to the end of data, which keeps its RFC 5321
 * 4.5.3.2.6 ten minutes (a client that gives up after the "." risks a
 * duplicate, RFC 1047), nor the QUIT after the work.
 */
struct mta_deadline {
	uint64_t attempt_until; /* 0: none */
	uint64_t phase_until;	/* 0: none */
	unsigned phase_seq;	/* the session phase phase_until belongs to */
	bool glue_phase;	/* phase_until is the glue's (connect), not the session's */
};

enum mta_expiry { MTA_DL_NONE = 0, MTA_DL_PHASE, MTA_DL_ATTEMPT };

/* A new attempt starts at now: total_ms from now (0: no total). */
void mta_deadline_attempt(struct mta_deadline *dl, uint64_t now, uint64_t total_ms);

/* The glue's own phase (connecting) starts at now and lasts ms (0: none). */
void mta_deadline_glue_phase(struct mta_deadline *dl, uint64_t now, uint64_t ms);

/*
 * Takes note of the session's phase (s NULL: the glue's phase runs): a phase
 * that started since the last call gets its deadline from now.  Returns when
 * the glue must look again: the earliest deadline that applies, 0 for none.
 */
uint64_t mta_deadline_update(struct mta_deadline *dl, const struct mta_session *s, uint64_t now);

/* Which deadline has passed at now (the attempt's first), after update. */
enum mta_expiry mta_deadline_expired(const struct mta_deadline *dl, const struct mta_session *s,
				     uint64_t now);

/* Name of a state, for logs. */
const char *mta_state_name(enum mta_state st);

#endif
