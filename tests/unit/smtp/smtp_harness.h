/*
 * smtp_harness.h: a test double of the libuv glue for the pure SMTP session machine.
 *
 * It plays a byte script into a session the way the glue does: bytes "arrive" in pieces of
 * `split` bytes (0: all at once), unconsumed bytes are kept and fed again, the output is drained
 * into a transcript after every call, and events are resolved from a policy (TLS ok/fail, AUTH
 * ok/fail, message reply).  On SMTP_EV_STARTTLS the rest of the script is discarded, as RFC 3207
 * requires of the glue; the test plays the post-handshake part as a new script.  Header-only so
 * each test file can include it.
 */
#ifndef RELAY_TEST_SMTP_HARNESS_H
#define RELAY_TEST_SMTP_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_session.h"

#define H_TRANSCRIPT_MAX (1u << 20)
#define H_BODY_MAX (1u << 20)
#define H_RCPTS_MAX 16

struct h_msg {
	char helo[SMTP_HELO_MAX + 1];
	char mail_from[SMTP_PATH_MAX];
	char envid[SMTP_ENVID_MAX + 1];
	bool has_envid, smtputf8, esmtp, tls, chunking;
	enum smtp_ret ret;
	enum smtp_body body_type;
	uint64_t size_declared;
	char auth_user[SMTP_AUTH_FIELD_MAX + 1];
	bool has_auth_user;
	size_t n_rcpts;
	char rcpt[H_RCPTS_MAX][SMTP_PATH_MAX];
	unsigned notify[H_RCPTS_MAX];
	char orcpt[H_RCPTS_MAX][SMTP_ORCPT_MAX + 1];
	bool has_orcpt[H_RCPTS_MAX];
	char *body;
	size_t body_len;
};

struct h_policy {
	int tls_ok;	      /* 1 ok, 0 fail */
	int auth_ok;	      /* 1 ok, 0 fail */
	int msg_code;	      /* 0 means 250 */
	const char *msg_enh;  /* NULL allowed */
	const char *msg_text; /* NULL allowed */
};

struct harness {
	struct smtp_session_config cfg;
	struct smtp_session_client client;
	struct smtp_counters counters;
	struct smtp_session *s;
	struct h_policy pol;
	char *out;
	size_t out_len;
	bool closed;
	int starttls_events, auth_events, msg_events;
	size_t tls_discarded; /* script bytes dropped after STARTTLS */
	char auth_mech[8], auth_authzid[SMTP_AUTH_FIELD_MAX + 1],
	    auth_user[SMTP_AUTH_FIELD_MAX + 1], auth_pass[SMTP_AUTH_FIELD_MAX + 1];
	struct h_msg msg;	/* the last message */
	size_t max_pending_out; /* largest undrained output seen */
	size_t drain_step;	/* 0: drain all; else at most this much per drain */
};

static char *h_relay_domains[] = {"example.org", "relay.example"};

static void
h_setup(struct harness *h)
{
	memset(h, 0, sizeof(*h));
	h->cfg.hostname = "mx.example.org";
	h->cfg.max_message_size = 100000;
	h->cfg.max_recipients = 5;
	h->cfg.max_errors = 10;
	h->cfg.relay_domains = h_relay_domains;
	h->cfg.n_relay_domains = 2;
	h->cfg.tls_available = true;
	h->cfg.auth_available = true;
	h->cfg.counters = &h->counters;
	h->cfg.postmaster = "ops@example.org";
	h->pol.tls_ok = 1;
	h->pol.auth_ok = 1;
	h->out = calloc(1, H_TRANSCRIPT_MAX + 1);
	h->msg.body = calloc(1, H_BODY_MAX + 1);
}

/* Starts the session (after the test adjusted cfg/client). */
static int
h_start(struct harness *h)
{
	return smtp_session_new(&h->s, &h->cfg, &h->client);
}

static void
h_teardown(struct harness *h)
{
	smtp_session_free(h->s);
	free(h->out);
	free(h->msg.body);
}

static void
h_reset_transcript(struct harness *h)
{
	h->out_len = 0;
	h->out[0] = '\0';
}

static void
h_drain(struct harness *h)
{
	for (;;) {
		const char *b;
		size_t n;
		smtp_session_output(h->s, &b, &n);
		if (n > h->max_pending_out)
			h->max_pending_out = n;
		if (n == 0)
			return;
		if (h->drain_step && n > h->drain_step)
			n = h->drain_step;
		if (h->out_len + n > H_TRANSCRIPT_MAX) {
			/* keep the tail only; tests with huge transcripts check counters */
			h->out_len = 0;
		}
		memcpy(h->out + h->out_len, b, n);
		h->out_len += n;
		h->out[h->out_len] = '\0';
		smtp_session_output_consume(h->s, n);
	}
}

static void
h_copy_message(struct harness *h, const struct smtp_event *ev)
{
	const struct smtp_envelope *e = ev->message.env;
	struct h_msg *m = &h->msg;
	char *body = m->body;

	memset(m, 0, sizeof(*m));
	m->body = body;
	snprintf(m->helo, sizeof(m->helo), "%s", e->helo);
	snprintf(m->mail_from, sizeof(m->mail_from), "%s", e->mail_from);
	if (e->envid) {
		m->has_envid = true;
		snprintf(m->envid, sizeof(m->envid), "%s", e->envid);
	}
	m->smtputf8 = e->smtputf8;
	m->esmtp = e->esmtp;
	m->tls = e->tls;
	m->chunking = e->chunking;
	m->ret = e->ret;
	m->body_type = e->body;
	m->size_declared = e->size_declared;
	if (e->auth_user) {
		m->has_auth_user = true;
		snprintf(m->auth_user, sizeof(m->auth_user), "%s", e->auth_user);
	}
	m->n_rcpts = e->n_rcpts;
	for (size_t i = 0; i < e->n_rcpts && i < H_RCPTS_MAX; i++) {
		snprintf(m->rcpt[i], sizeof(m->rcpt[i]), "%s", e->rcpts[i].addr);
		m->notify[i] = e->rcpts[i].notify;
		if (e->rcpts[i].orcpt) {
			m->has_orcpt[i] = true;
			snprintf(m->orcpt[i], sizeof(m->orcpt[i]), "%s", e->rcpts[i].orcpt);
		}
	}
	m->body_len = ev->message.body_len < H_BODY_MAX ? ev->message.body_len : H_BODY_MAX;
	memcpy(m->body, ev->message.body, m->body_len);
	m->body[m->body_len] = '\0';
}

/* Resolves a pending event.  Returns false when the session is closed. */
static bool
h_event(struct harness *h, bool *tls_discard)
{
	struct smtp_event ev;

	switch (smtp_session_event(h->s, &ev)) {
	case SMTP_EV_NONE:
		return true;
	case SMTP_EV_CLOSE:
		h->closed = true;
		return false;
	case SMTP_EV_STARTTLS:
		h->starttls_events++;
		h_drain(h); /* the 220 goes out in clear text first */
		*tls_discard = true;
		smtp_session_tls_done(h->s, h->pol.tls_ok);
		return true;
	case SMTP_EV_AUTH:
		h->auth_events++;
		snprintf(h->auth_mech, sizeof(h->auth_mech), "%s", ev.auth.mechanism);
		snprintf(h->auth_authzid, sizeof(h->auth_authzid), "%s", ev.auth.authzid);
		snprintf(h->auth_user, sizeof(h->auth_user), "%s", ev.auth.user);
		snprintf(h->auth_pass, sizeof(h->auth_pass), "%s", ev.auth.password);
		smtp_session_auth_result(h->s, h->pol.auth_ok);
		return true;
	case SMTP_EV_MESSAGE:
		h->msg_events++;
		h_copy_message(h, &ev);
		smtp_session_message_result(h->s, h->pol.msg_code ? h->pol.msg_code : 250,
					    h->pol.msg_enh ? h->pol.msg_enh : "2.0.0",
					    h->pol.msg_text ? h->pol.msg_text
							    : "Ok: queued as 0123ABC");
		return true;
	}
	return true;
}

/*
 * Plays in[0..len) arriving `split` bytes at a time (0: all at once).  Returns the bytes
 * consumed by the session (len unless it closed or STARTTLS discarded the rest), or (size_t)-1
 * when the session got stuck (feed consumed nothing with no reason).
 */
static size_t
h_play_split(struct harness *h, const char *in, size_t len, size_t split)
{
	size_t off = 0, avail = 0, consumed = 0;

	if (split == 0)
		split = len ? len : 1;
	for (;;) {
		bool discard = false;
		h_drain(h);
		if (!h_event(h, &discard))
			break;
		if (discard) {
			h->tls_discarded += len - off;
			off = avail = len;
			continue;
		}
		struct smtp_event ev;
		if (smtp_session_event(h->s, &ev) != SMTP_EV_NONE)
			continue;
		if (off < avail) {
			size_t n = smtp_session_feed(h->s, in + off, avail - off);
			off += n;
			consumed += n;
			if (n > 0)
				continue;
			const char *b;
			size_t ol;
			smtp_session_output(h->s, &b, &ol);
			if (ol > 0 || smtp_session_event(h->s, &ev) != SMTP_EV_NONE)
				continue;
			return (size_t)-1;
		}
		if (avail == len)
			break;
		avail = avail + split < len ? avail + split : len;
	}
	h_drain(h);
	return consumed;
}

static size_t
h_play(struct harness *h, const char *in)
{
	return h_play_split(h, in, strlen(in), 0);
}

#define EHLO_REPLY_PLAIN                                                                           \
	"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"              \
	"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n"
#define EHLO_REPLY EHLO_REPLY_PLAIN "250-STARTTLS\r\n250 DSN\r\n"
#define EHLO_REPLY_TLS EHLO_REPLY_PLAIN "250-AUTH PLAIN LOGIN\r\n250 DSN\r\n"
#define GREETING "220 mx.example.org ESMTP relayd\r\n"

#endif
