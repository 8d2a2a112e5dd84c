/*
 * smtp_session_int.h: private to the SMTP session machine, shared by its three files:
 * smtp_session.c (states, output, the line reader and the API), smtp_commands.c (the command
 * table and its handlers, AUTH) and smtp_data.c (DATA and BDAT bodies).  Nothing else includes
 * it: callers use smtp_session.h.
 */
#ifndef RELAY_SMTP_SESSION_INT_H
#define RELAY_SMTP_SESSION_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_session.h"

#define SMTP__OUTPUT_SLACK 8192 /* room above the high-water mark for one command's replies */
#define SMTP__OUTPUT_INIT 1024	/* initial output buffer */
#define SMTP__BODY_INIT 4096	/* initial body buffer */
#define SMTP__REPLY_MAX 1024	/* one formatted reply line */
#define SMTP__VERB_MAX 16	/* longest verb we look up */
#define SMTP__DIGITS_MAX 20	/* decimal digits of a uint64_t */
#define SMTP__AUTH_DECODED_MAX ((SMTP_AUTH_LINE_MAX / 4) * 3)

enum smtp__state {
	ST_GREETED,    /* no HELO/EHLO yet */
	ST_HELO,       /* ready for MAIL */
	ST_MAIL,       /* MAIL accepted */
	ST_RCPT,       /* at least one RCPT accepted (also between BDAT chunks) */
	ST_DATA,       /* receiving a DATA body */
	ST_BDAT,       /* receiving a BDAT chunk */
	ST_AUTH_PLAIN, /* 334 sent, waiting for the PLAIN response */
	ST_AUTH_USER,  /* 334 Username: sent */
	ST_AUTH_PASS,  /* 334 Password: sent */
	ST_AUTH_WAIT,  /* SMTP_EV_AUTH pending */
	ST_TLS_WAIT,   /* SMTP_EV_STARTTLS pending */
	ST_MSG_WAIT,   /* SMTP_EV_MESSAGE pending */
	ST_CLOSED,     /* SMTP_EV_CLOSE */
};

/* DATA body scanner states (see data_consume). */
enum smtp__dstate { D_BOL, D_MID, D_CR, D_DOT, D_DOTCR };

/* What to say when a deferred close (timeout/shutdown during an event) happens. */
enum smtp__deferred { DEF_NONE, DEF_TIMEOUT, DEF_SHUTDOWN };

struct smtp_session {
	const struct smtp_session_config *cfg; /* borrowed */
	struct smtp_session_client client;
	const char *hostname;
	uint64_t max_size, max_rcpts, max_errors, max_hops;
	size_t line_max;
	const char *cur_cmd;	   /* the command being answered (static string), for the hook */
	const char *reject_reason; /* the counter of the refusal being replied, for the hook */

	enum smtp__state state;
	enum smtp_event_type ev;
	enum smtp__deferred deferred;

	/* output: bytes [out_off, out_len) are pending */
	char *out;
	size_t out_off, out_len, out_cap;

	/* command line being assembled */
	char *line;
	size_t line_len, line_cap;
	bool line_overflow;

	/* session */
	bool tls, esmtp, helo_done, authenticated;
	uint64_t errors;
	char helo[SMTP_HELO_MAX + 1];
	char auth_user[SMTP_AUTH_FIELD_MAX + 1];

	/* transaction (RFC 5321 4.1.4) */
	bool in_txn, bdat_used;
	char mail_from[SMTP_PATH_MAX];
	char envid[SMTP_ENVID_MAX + 1];
	bool has_envid, smtputf8;
	enum smtp_ret ret;
	enum smtp_body body_type;
	uint64_t size_declared;
	struct smtp_rcpt *rcpts; /* owned, with owned strings */
	size_t n_rcpts, rcpts_cap;

	/* body */
	char *body; /* owned */
	size_t body_len, body_cap;
	uint64_t body_total; /* bytes the body would have, including the dropped ones */
	bool too_big, nomem, normalized;
	bool over_budget; /* the receive budget ran out: the rest is dropped, then 452 4.3.1 */
	enum smtp__dstate dstate;
	uint64_t chunk_left, chunk_size;
	bool chunk_last, bdat_cr;
	int chunk_reject; /* 0, or the code the chunk is answered with after it is consumed */

	/* AUTH: mechanism, authzid, user, password at fixed offsets (AUTH_OFF_*), each
	 * NUL-terminated; wiped as soon as the exchange ends */
	char auth_buf[8 + 3 * (SMTP_AUTH_FIELD_MAX + 1)];
	struct smtp_envelope env;
};

/* Counts one event under its reason; a 4xx/5xx reply that follows reports the same reason to
 * the reject hook. */
#define COUNT(s, name)                                                                             \
	do {                                                                                       \
		(s)->reject_reason = #name;                                                        \
		if ((s)->cfg->counters != NULL)                                                    \
			(s)->cfg->counters->name++;                                                \
	} while (0)

#define REJECT(s, counter, code, enh, ...)                                                         \
	do {                                                                                       \
		COUNT(s, counter);                                                                 \
		smtp__reply(s, code, enh, __VA_ARGS__);                                            \
		smtp__peer_error(s);                                                               \
	} while (0)

/* AUTH material in smtp_session.auth_buf: mechanism, authzid, user, password, each
 * NUL-terminated at a fixed offset. */
#define AUTH_OFF_MECH 0
#define AUTH_OFF_AUTHZID 8
#define AUTH_OFF_USER (AUTH_OFF_AUTHZID + SMTP_AUTH_FIELD_MAX + 1)
#define AUTH_OFF_PASS (AUTH_OFF_USER + SMTP_AUTH_FIELD_MAX + 1)

/* ---- smtp_session.c ---- */

/* Enters st, tracing the transition through cfg->trace_cb (the one place states change). */
void smtp__enter_state(struct smtp_session *s, enum smtp__state st);
/* Appends n bytes of output (closes the session when the output bound is hit). */
void smtp__out_put(struct smtp_session *s, const char *p, size_t n);
/* One final reply line "<code> <enh> <text>"; enh may be NULL. */
void smtp__reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* One reply line of a multiline reply ("<code>-..."). */
void smtp__reply_more(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Closes at once (SMTP_EV_CLOSE). */
void smtp__close_now(struct smtp_session *s);
/* Counts a peer error toward max_errors (421 and close at the limit); reply already queued. */
void smtp__peer_error(struct smtp_session *s);
/* Drops the body of the transaction; the envelope stays. */
void smtp__body_reset(struct smtp_session *s);
/* Ends the transaction (RFC 5321 4.1.4): envelope and body dropped. */
void smtp__txn_reset(struct smtp_session *s);
/* Wipes AUTH material. */
void smtp__auth_wipe(struct smtp_session *s);
/* The command state the session returns to after a reply that ends a phase. */
enum smtp__state smtp__idle_state(const struct smtp_session *s);
/* The client counts as trusted for the receive budget: mynetworks or authenticated. */
bool smtp__budget_trusted(const struct smtp_session *s);

/* ---- smtp_commands.c ---- */

/* 1 while an AUTH exchange waits for a continuation line. */
bool smtp__in_auth_exchange(const struct smtp_session *s);
/* One complete command line, LF removed; line[n] is writable. */
void smtp__process_line(struct smtp_session *s, char *line, size_t n);
/* A failed AUTH exchange: the reply, material wiped, counted as a peer error. */
void smtp__auth_fail(struct smtp_session *s, int code, const char *enh, const char *text);

/* ---- smtp_data.c ---- */

/* Consume DATA / BDAT body bytes; return how many were used. */
size_t smtp__data_consume(struct smtp_session *s, const char *p, size_t n);
size_t smtp__bdat_consume(struct smtp_session *s, const char *p, size_t n);
/* A BDAT chunk fully received (also a BDAT 0): its reply, or the end of the message. */
void smtp__bdat_chunk_done(struct smtp_session *s);

#endif
