/*
 * smtp_session.h: the pure SMTP server session machine (RFC 5321 and extensions).
 *
 * Contract.  The machine is a function of (state, bytes in) -> (bytes consumed, reply bytes out,
 * at most one pending event).  It does no I/O, reads no clock, never sleeps, never calls back
 * into the glue except the optional trace and reject hooks, and never allocates memory in
 * proportion to a size the peer merely claims (SIZE=, BDAT <n>): it allocates in proportion to
 * bytes actually received, bounded by the configured limits and by the node-wide receive budget
 * (struct smtp_budget) its sessions share.
 *
 * Happy path (the glue's loop, see node/ for the libuv side):
 *
 *   smtp_session_new(&s, &cfg, &client);           queues "220 <host> ESMTP relayd"
 *   loop:
 *     write smtp_session_output() to the socket; smtp_session_output_consume(n)
 *     n = smtp_session_feed(s, buf, len);          keep buf[n..len) for a later feed
 *     switch (smtp_session_event(s, &ev)):
 *       SMTP_EV_NONE:     read more (if n < len, the output is above SMTP_OUTPUT_HIWAT:
 *                         drain it, then feed the rest again)
 *       SMTP_EV_STARTTLS: flush output, DISCARD buf[n..len) and anything else already read
 *                         (RFC 3207 sec 4, CVE-2011-0411), handshake, smtp_session_tls_done()
 *       SMTP_EV_AUTH:     verify, later smtp_session_auth_result()
 *       SMTP_EV_MESSAGE:  propose to the cluster, later smtp_session_message_result()
 *       SMTP_EV_CLOSE:    flush output, close
 *     after an event is resolved, feed the kept bytes again.
 *
 * Failure modes.  Every peer mistake becomes a reply (and a counter increment), or for
 * unrecoverable framing errors (a BDAT size that cannot be parsed) a reply and SMTP_EV_CLOSE.
 * Too many errors in one session: "421 4.7.0" and SMTP_EV_CLOSE.  ENOMEM while growing a body
 * becomes "451 4.3.0" at the end of the message; ENOMEM on anything else small is answered 451
 * as well.  Only smtp_session_new() can fail with an error return.
 *
 * Threading: a session is used by one thread.  Counters are plain integers: share one
 * struct smtp_counters only between sessions that run on the same thread.
 *
 * Enhanced status codes (RFC 2034, RFC 3463) prefix the text of every 2xx/4xx/5xx reply except
 * the greeting and the successful replies to HELO/EHLO (RFC 2034 sec 3); 334 and 354 are
 * intermediate replies and carry none.  Reply text is ASCII: other bytes (a UTF-8 address
 * echoed in "554 5.7.1 <addr>: Relay access denied") are shown as '?'.
 *
 * Protocol notes (details in smtp_commands.c and smtp_data.c):
 *   - DATA ends only on CR LF "." CR LF; bare CR and bare LF in a body are stored as CR LF and
 *     never take part in an end-of-data sequence (SMTP smuggling); counter bare_newline counts
 *     the messages where that happened.  Over max_message_size the body is still read to its
 *     end (nothing more is stored), then answered 552 5.3.4.
 *   - BDAT <n> [LAST]: the n bytes are always consumed, even when the command is refused; the
 *     reply follows the chunk.  A chunk that does not fit the size budget is answered 552 5.3.4
 *     at once and ends the transaction (later chunks then get 503 5.5.1).  A count that cannot
 *     be parsed (not 1..20 digits, or over 2^64-1) cannot be resynchronized: 501 and close.
 *   - Errors toward max_errors: every 4xx/5xx answer to a command, AUTH failures included,
 *     except 452 4.5.3 (too many recipients: the client sends them in the next transaction),
 *     452 4.3.1 (receive budget) and answers at the end of a message (552, 554, 451).
 *   - Postmaster (RFC 5321 4.5.1): RCPT TO:<postmaster> and <postmaster@hostname> (any case)
 *     are accepted from anyone and rewritten to cfg->postmaster; with none configured they get
 *     550 5.1.1 (counter no_postmaster), never a recipient that could only bounce.
 *   - Hops: a message whose header section holds max_hops or more Received: fields is refused
 *     at its end with 554 5.4.6 (a mail loop; RFC 5321 6.3).
 *   - Receive budget: body memory is reserved from cfg->budget as it grows.  DATA when the
 *     budget cannot take the declared SIZE (or has no room at all), and BDAT with a chunk
 *     larger than what is left, get 452 4.3.1; a DATA body that outgrows what is left is read
 *     to its end without being stored and answered 452 4.3.1.  Untrusted clients (neither
 *     mynetworks nor authenticated) may fill the budget only to SMTP_BUDGET_UNTRUSTED_PCT
 *     percent, so a stranger's uploads cannot keep trusted mail out.
 *   - Every 4xx/5xx reply is reported once to the reject hook (command, code, enhanced code,
 *     the counter that counted it) for the glue's one log line per refusal.
 */
#ifndef RELAY_SMTP_SESSION_H
#define RELAY_SMTP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mailbox.h" /* SMTP_LOCAL_MAX, SMTP_DOMAIN_MAX, SMTP_PATH_MAX */

/* Limits.  The config fields override the defaults; 0 in a config field means the default. */
#define SMTP_LINE_MAX_DEFAULT 2048 /* command line incl. CRLF (RFC 5321 4.5.3.1.4: >= 512) */
#define SMTP_LINE_MAX_MIN 512	   /* smaller configured values are raised to this */
#define SMTP_LINE_MAX_MAX 65536	   /* larger configured values are lowered to this */
#define SMTP_MAX_MESSAGE_SIZE_DEFAULT (10u << 20)
#define SMTP_MAX_RECIPIENTS_DEFAULT 100 /* RFC 5321 4.5.3.1.8: at least 100 must be accepted */
#define SMTP_MAX_ERRORS_DEFAULT 10
#define SMTP_OUTPUT_HIWAT (64 * 1024) /* feed stops while this much output is undrained */
#define SMTP_AUTH_LINE_MAX 2048	      /* one AUTH continuation line incl. CRLF (base64) */
#define SMTP_AUTH_FIELD_MAX 255	      /* authzid, user, password each (RFC 4616 sec 2) */
#define SMTP_HELO_MAX 255	      /* EHLO/HELO argument */
#define SMTP_ENVID_MAX 100	      /* RFC 3461 sec 4.4 */
#define SMTP_ORCPT_MAX 500	      /* RFC 3461 sec 4.2 */
#define SMTP_REPLY_TEXT_MAX 256	      /* text of a glue-supplied reply (message_result) */
#define SMTP_MAX_HOPS_DEFAULT 50      /* Received: fields that mean a loop (Postfix hopcount) */
#define SMTP_BUDGET_UNTRUSTED_PCT 75  /* share of the receive budget strangers may fill */

/*
 * Reject/event counters, one per reason.  X(field, "help text").  The glue can walk this
 * list to export Prometheus metrics.
 */
#define SMTP_COUNTERS(X)                                                                           \
	X(bad_command, "unknown command or empty/NUL command line")                                \
	X(bad_syntax, "command or parameter syntax error")                                         \
	X(bad_address, "malformed sender or recipient address")                                    \
	X(relay_denied, "recipient refused: relay access denied")                                  \
	X(too_big, "message or declared SIZE over max_message_size")                               \
	X(too_many_rcpts, "recipient refused: max_recipients reached")                             \
	X(too_many_errors, "session closed after max_errors errors")                               \
	X(line_too_long, "command line over max_line_length")                                      \
	X(bad_sequence, "command out of sequence")                                                 \
	X(auth_failed, "AUTH refused by the verifier, cancelled or malformed")                     \
	X(bare_newline, "messages with bare CR/LF normalized to CRLF (smuggling defence)")         \
	X(need_smtputf8, "UTF-8 address without the SMTPUTF8 parameter")                           \
	X(sender_denied, "MAIL refused: sender address not owned by the authenticated user")       \
	X(over_quota, "MAIL or message refused: hourly message quota reached")                     \
	X(nomem, "replies 451 because an allocation failed")                                       \
	X(timeouts, "sessions closed by smtp_session_timeout")                                     \
	X(tls_failed, "STARTTLS handshakes reported failed")                                       \
	X(no_postmaster, "RCPT TO:<postmaster> refused: postmaster_address not set")               \
	X(too_many_hops, "message refused: max_hops Received: headers or more (mail loop)")       \
	X(over_budget, "transaction refused 452 4.3.1: max_receive_memory would be exceeded")     \
	X(auth_throttled, "AUTH answered 454 4.7.0: per-client failures or concurrency limit")    \
	X(messages, "SMTP_EV_MESSAGE events raised")

struct smtp_counters {
#define SMTP__COUNTER_FIELD(name, help) uint64_t name;
	SMTP_COUNTERS(SMTP__COUNTER_FIELD)
#undef SMTP__COUNTER_FIELD
};

struct smtp_session;

/*
 * Trace hook: called on every state transition (smtp_enter_state) with the state names.  It
 * never receives message data or AUTH secrets.  It must not call back into the session.
 */
typedef void (*smtp_trace_cb)(void *arg, const struct smtp_session *s, const char *from_state,
			      const char *to_state);

/*
 * Reject hook: called once for every 4xx/5xx reply the machine queues (final line), with the
 * command it answers ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", ...; "-" when none, e.g. a
 * timeout), the codes, and the name of the counter that counted it (SMTP_COUNTERS; "result" for
 * a refusal the glue chose with smtp_session_message_result).  arg is the client's hook_arg.
 * Never given message data or AUTH secrets; it must not call back into the session.
 */
typedef void (*smtp_reject_cb)(void *arg, const struct smtp_session *s, const char *cmd, int code,
			       const char *enh, const char *reason);

/*
 * The node-wide receive budget (max_receive_memory): bytes of bodies being received and of
 * messages proposed but not yet committed.  Plain integers: shared only by sessions and glue on
 * one thread.  The sessions reserve body memory from it; the glue reserves its proposals with
 * smtp_budget_take() and gives them back with smtp_budget_give().
 */
struct smtp_budget {
	uint64_t limit; /* bytes */
	uint64_t used;	/* bytes reserved now */
	uint64_t peak;	/* largest used seen */
};

/* Reserves n bytes if used + n stays within limit (trusted) or within
 * SMTP_BUDGET_UNTRUSTED_PCT percent of it (!trusted).  NULL b always succeeds. */
bool smtp_budget_take(struct smtp_budget *b, uint64_t n, bool trusted);
/* Gives back n bytes reserved before. */
void smtp_budget_give(struct smtp_budget *b, uint64_t n);
/* Bytes a client may still reserve (UINT64_MAX for a NULL budget). */
uint64_t smtp_budget_room(const struct smtp_budget *b, bool trusted);

/* What a MAIL FROM policy hook says about a sender it refuses (code 0: accepted). */
enum smtp_mail_refusal {
	SMTP_MAIL_SENDER_DENIED = 1, /* counted in sender_denied */
	SMTP_MAIL_OVER_QUOTA,	     /* counted in over_quota */
};
struct smtp_mail_verdict {
	int code;		 /* 0: accept; else a 4xx/5xx reply code */
	enum smtp_mail_refusal reason;
	char enh[12];		 /* "5.7.1" */
	char text[SMTP_REPLY_TEXT_MAX + 1];
};

/*
 * MAIL FROM policy hook: called once a MAIL command is otherwise valid, before its 250, with
 * the session's check_arg (struct smtp_session_client), the authenticated user (NULL when
 * none) and the reverse-path without brackets ("" for <>).  It fills v (zeroed by the caller)
 * and must not call back into the session.  A refusal is answered "<code> <enh> <text>" and
 * counts as a peer error.
 */
typedef void (*smtp_mail_check_cb)(void *check_arg, const char *auth_user, const char *mail_from,
				   struct smtp_mail_verdict *v);

/* Server-wide settings.  Borrowed by every session; must outlive them. */
struct smtp_session_config {
	const char *hostname;	    /* greeting, EHLO, 421s; borrowed; NULL means "localhost" */
	uint64_t max_message_size;  /* body bytes (CRLF-normalized, after dot-unstuffing) */
	uint64_t max_recipients;    /* per transaction */
	uint64_t max_line_length;   /* command line incl. CRLF, clamped to [MIN, MAX] */
	uint64_t max_errors;	    /* per session; then 421 4.7.0 and close */
	char *const *relay_domains; /* lowercase domains we accept mail for; borrowed */
	size_t n_relay_domains;
	bool tls_available;		/* a certificate is configured: offer STARTTLS */
	bool auth_available;		/* AUTH configured: offer AUTH PLAIN LOGIN after TLS */
	const char *postmaster;		/* where <postmaster> goes; NULL or "": refused; borrowed */
	uint64_t max_hops;		/* Received: fields refused at; 0: SMTP_MAX_HOPS_DEFAULT */
	struct smtp_budget *budget;	/* may be NULL (no node-wide bound); borrowed */
	struct smtp_counters *counters; /* may be NULL; borrowed */
	smtp_mail_check_cb mail_check;	/* may be NULL: every valid MAIL is accepted */
	smtp_trace_cb trace_cb;		/* may be NULL */
	void *trace_arg;
	smtp_reject_cb reject_cb; /* may be NULL; gets the client's hook_arg */
};

/* Facts about the client the glue knows at accept time.  Copied by smtp_session_new. */
struct smtp_session_client {
	bool trusted;	 /* in mynetworks: may relay to any domain (G5) */
	bool tls_active; /* connection already on TLS (implicit TLS listener) */
	void *check_arg; /* passed to cfg->mail_check; borrowed */
	void *hook_arg;	 /* passed to reject_cb; not used otherwise */
};

enum smtp_event_type {
	SMTP_EV_NONE = 0,
	SMTP_EV_STARTTLS, /* "220 2.0.0 Ready to start TLS" queued; resolve: tls_done */
	SMTP_EV_AUTH,	  /* credentials to verify; resolve: smtp_session_auth_result */
	SMTP_EV_MESSAGE,  /* envelope + body; resolve: smtp_session_message_result */
	SMTP_EV_CLOSE,	  /* flush the output, then close; permanent */
};

/* DSN NOTIFY bits (RFC 3461 sec 4.1); 0 means no NOTIFY parameter was given. */
#define SMTP_NOTIFY_SUCCESS 1u
#define SMTP_NOTIFY_FAILURE 2u
#define SMTP_NOTIFY_DELAY 4u
#define SMTP_NOTIFY_NEVER 8u

enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL = 1, SMTP_RET_HDRS = 2 }; /* RFC 3461 4.3 */
enum smtp_body { SMTP_BODY_7BIT = 0, SMTP_BODY_8BITMIME = 1 };		   /* RFC 6152 */

struct smtp_rcpt {
	const char *addr;  /* mailbox without brackets; "postmaster" possible; owned by session */
	unsigned notify;   /* SMTP_NOTIFY_* bits */
	const char *orcpt; /* "addr-type;xtext" as received, or NULL; owned by session */
};

/*
 * The envelope of one transaction.  All pointers are owned by the session and valid until the
 * event is resolved (smtp_session_message_result) or the session is freed.
 */
struct smtp_envelope {
	const char *helo;	/* EHLO/HELO argument */
	bool esmtp;		/* EHLO (true) or HELO (false) */
	const char *mail_from;	/* without brackets; "" for the null path <> */
	enum smtp_ret ret;	/* RET= */
	const char *envid;	/* ENVID= xtext as received, or NULL */
	enum smtp_body body;	/* BODY= */
	bool smtputf8;		/* SMTPUTF8 parameter given (RFC 6531) */
	uint64_t size_declared; /* SIZE= value, 0 if absent */
	const char *auth_user;	/* authenticated user (RFC 4954), or NULL */
	bool tls;		/* the message arrived over TLS */
	bool chunking;		/* the body came by BDAT (RFC 3030) rather than DATA */
	const struct smtp_rcpt *rcpts;
	size_t n_rcpts; /* >= 1 */
};

struct smtp_event {
	enum smtp_event_type type;
	union {
		/* SMTP_EV_AUTH: NUL-terminated strings, owned by the session, valid until
		 * smtp_session_auth_result(); wiped afterwards.  Never log the password. */
		struct {
			const char *mechanism; /* "PLAIN" or "LOGIN" */
			const char *authzid;   /* "" when none (always "" for LOGIN) */
			const char *user;
			const char *password;
		} auth;
		/* SMTP_EV_MESSAGE: the body has CRLF line ends only (bare CR and bare LF are
		 * normalized, RFC 5321 2.3.8) and is dot-unstuffed (DATA).  A BDAT body is kept
		 * as sent (after normalization) and may lack a final CRLF.  Owned by the
		 * session, valid until smtp_session_message_result(). */
		struct {
			const struct smtp_envelope *env;
			const char *body;
			size_t body_len;
		} message;
	};
};

/*
 * Allocates a session and queues the greeting "220 <hostname> ESMTP relayd".  cfg is borrowed
 * (must outlive the session); client is copied.  Returns 0 and *out, or -ENOMEM/-EINVAL.
 */
int smtp_session_new(struct smtp_session **out, const struct smtp_session_config *cfg,
		     const struct smtp_session_client *client);

/* Frees the session and everything it owns (wipes AUTH material).  NULL is a no-op. */
void smtp_session_free(struct smtp_session *s);

/*
 * Consumes client bytes; returns how many were consumed (0..len).  Every complete command line
 * is processed and answered in order (PIPELINING, RFC 2920).  A partial line is kept inside
 * (bounded by max_line_length; an overlong line is discarded up to its LF and answered
 * "500 5.5.2 Line too long").  Returns < len when:
 *   - an event is pending (STARTTLS: right after the STARTTLS line's LF; MESSAGE: right after
 *     the end of data; AUTH: after the AUTH line or continuation),
 *   - the output holds at least SMTP_OUTPUT_HIWAT bytes (drain, then feed the rest),
 *   - the session is closing (SMTP_EV_CLOSE).
 * The glue keeps the unconsumed bytes and feeds them again once the reason is gone, except
 * after SMTP_EV_STARTTLS, where it must discard them.
 */
size_t smtp_session_feed(struct smtp_session *s, const char *buf, size_t len);

/* Reply bytes waiting to be written: *buf (owned by the session, valid until the next call on
 * s) and *len (0 when nothing is pending). */
void smtp_session_output(const struct smtp_session *s, const char **buf, size_t *len);

/* Marks n bytes of the output as written (n <= the length smtp_session_output gave). */
void smtp_session_output_consume(struct smtp_session *s, size_t n);

/*
 * Fills *ev with the pending event and returns its type (SMTP_EV_NONE when none).  Calling it
 * again returns the same event until it is resolved.  SMTP_EV_CLOSE is permanent.  An event
 * other than CLOSE is always resolved by exactly one result call.
 */
enum smtp_event_type smtp_session_event(const struct smtp_session *s, struct smtp_event *ev);

/*
 * Resolves SMTP_EV_STARTTLS.  ok: the session restarts fresh (RFC 3207 sec 4.2: no HELO/EHLO,
 * no envelope, not authenticated), TLS is active, STARTTLS is no longer offered and AUTH is
 * (when auth_available).  !ok: the session closes (SMTP_EV_CLOSE, nothing queued).
 * Returns 0, or -EINVAL if no STARTTLS event is pending.
 */
int smtp_session_tls_done(struct smtp_session *s, int ok);

/* Resolves SMTP_EV_AUTH: "235 2.7.0 Authentication successful" or
 * "535 5.7.8 Authentication credentials invalid".  Returns 0 or -EINVAL. */
int smtp_session_auth_result(struct smtp_session *s, int ok);

/* Resolves SMTP_EV_AUTH without a verdict: the glue would not check now (too many failures from
 * this client, too many checks at once): "454 4.7.0 Temporary authentication failure", counted
 * auth_throttled and as a peer error.  Returns 0 or -EINVAL. */
int smtp_session_auth_tempfail(struct smtp_session *s);

/*
 * Resolves SMTP_EV_MESSAGE: queues "<code> <enhanced> <text>" and resets the transaction
 * (RFC 5321 4.1.4; HELO and AUTH state stay).  code must be 200..599; enhanced must look like
 * "d.ddd.ddd" with a class matching code (else a default is used); text is copied, cut at
 * SMTP_REPLY_TEXT_MAX and control characters replaced.  NULL enhanced/text allowed.
 * Returns 0, or -EINVAL if no message is pending or code is out of range (the event stays).
 */
int smtp_session_message_result(struct smtp_session *s, int code, const char *enhanced,
				const char *text);

/*
 * The glue's command or data timer fired: queues "421 4.4.2 <host> Error: timeout exceeded"
 * and closes.  If an event is pending, the reply is queued when the event is resolved (the
 * glue should not time out a session waiting on itself).  Idempotent.
 */
void smtp_session_timeout(struct smtp_session *s);

/*
 * SIGTERM: queues "421 4.3.2 Service shutting down" and closes.  If an event is pending
 * (notably a MESSAGE being proposed), the 421 follows the event's result reply: the glue waits
 * for the cluster's answer, resolves the event, then flushes and closes.  Idempotent.
 */
void smtp_session_shutdown(struct smtp_session *s);

/* True while receiving a DATA body or a BDAT chunk: use the data timeout (RFC 5321 4.5.3.2.5,
 * 4.5.3.2.6), else the command timeout (4.5.3.2.7). */
bool smtp_session_in_data(const struct smtp_session *s);

/* True from the DATA 354 (or the first BDAT chunk) until the message ends: the span the glue
 * bounds with data_total_timeout and min_data_rate. */
bool smtp_session_in_message(const struct smtp_session *s);

/* While SMTP_EV_MESSAGE is pending and the glue holds its own copy of the body: frees the
 * session's body and gives its reservation back to the budget (event.message.body is invalid
 * afterwards).  Idempotent. */
void smtp_session_drop_body(struct smtp_session *s);

/* Current state name, for logs ("greeted", "helo", "mail", "rcpt", "data", ...). */
const char *smtp_session_state_name(const struct smtp_session *s);

#endif
