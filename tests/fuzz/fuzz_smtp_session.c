/*
 * fuzz_smtp_session.c: libFuzzer harness for the pure SMTP session machine.
 *
 * Input layout: byte 0 selects the configuration (trusted client, implicit TLS, TLS/AUTH
 * available, small or default limits), byte 1 seeds a tiny PRNG, the rest is the client's byte
 * stream.  The harness plays the glue: bytes arrive in PRNG-sized pieces, unconsumed bytes are
 * kept and fed again, output is drained in PRNG-sized pieces, every event is resolved with a
 * PRNG-chosen outcome (TLS ok/fail, AUTH ok/fail, 250/451/554 for messages), and timeouts or
 * shutdowns are injected now and then.  After STARTTLS the bytes already read are discarded.
 *
 * Invariants checked (abort on violation, so libFuzzer reports them):
 *   - every output line is "ddd" [ -] text CRLF, text printable, line length bounded;
 *   - pending output stays under SMTP_OUTPUT_HIWAT plus one command's replies;
 *   - feed never consumes more than it is given and never stalls without a reason;
 *   - message bodies fit max_message_size and have only CRLF line ends (no bare CR/LF);
 *   - envelopes have 1..max_recipients recipients; an untrusted, unauthenticated client only
 *     gets recipients in relay_domains (or postmaster) (G5);
 *   - AUTH fields are non-empty where required and within SMTP_AUTH_FIELD_MAX;
 *   - differential: with outcomes fixed per event and no injected timeouts, feeding the input
 *     in random pieces and all at once gives byte-identical output (for this check only, the
 *     bytes after STARTTLS are not discarded, so both runs see the same stream).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_session.h"

#define FZ_REPLY_LINE_MAX 1024
#define FZ_OUTPUT_BOUND (SMTP_OUTPUT_HIWAT + 4096)

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__,         \
				__LINE__);                                                         \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

static char *fz_domains[] = {"example.org", "relay.example"};

struct fz {
	uint32_t rng;
	/* output line checker */
	int col;	    /* bytes into the current line */
	bool cr;	    /* saw CR, need LF */
	bool authed;	    /* an AUTH succeeded since the last TLS reset */
	bool tls;	    /* TLS active */
	bool diff;	    /* differential run: fixed outcomes, no injected events */
	uint32_t seed;	    /* outcome seed of a differential run */
	unsigned events;    /* events resolved so far */
	uint64_t hash;	    /* FNV-1a of all output */
	uint64_t out_total; /* bytes of output */
	uint64_t max_size;
	uint64_t max_rcpts;
	bool trusted;
};

static uint32_t
fz_next(struct fz *f)
{
	/* xorshift32 */
	uint32_t x = f->rng ? f->rng : 0x9e3779b9u;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	f->rng = x;
	return x;
}

static void
fz_check_output(struct fz *f, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)b[i];
		f->hash = (f->hash ^ c) * 0x100000001b3ull;
		f->out_total++;
		if (f->cr) {
			CHECK(c == '\n');
			f->cr = false;
			f->col = 0;
			continue;
		}
		if (f->col < 3)
			CHECK(c >= '0' && c <= '9');
		if (f->col == 0)
			CHECK(c >= '2' && c <= '5');
		else if (f->col == 3)
			CHECK(c == ' ' || c == '-' || c == '\r');
		else if (f->col > 3 && c != '\r')
			CHECK(c >= 0x20 && c <= 0x7e);
		if (c == '\r') {
			CHECK(f->col >= 3);
			f->cr = true;
		}
		f->col++;
		CHECK(f->col <= FZ_REPLY_LINE_MAX);
	}
}

static void
fz_drain(struct fz *f, struct smtp_session *s, bool all)
{
	const char *b;
	size_t n;

	for (;;) {
		smtp_session_output(s, &b, &n);
		CHECK(n <= FZ_OUTPUT_BOUND);
		if (n == 0)
			return;
		size_t take = all ? n : 1 + fz_next(f) % n;
		fz_check_output(f, b, take);
		smtp_session_output_consume(s, take);
		if (!all)
			return;
	}
}

static bool
fz_rcpt_allowed(const struct fz *f, const char *addr)
{
	if (f->trusted || f->authed)
		return true;
	const char *at = strrchr(addr, '@');
	if (at == NULL)
		return strcasecmp(addr, "postmaster") == 0;
	for (size_t i = 0; i < sizeof(fz_domains) / sizeof(fz_domains[0]); i++)
		if (strcasecmp(at + 1, fz_domains[i]) == 0)
			return true;
	return false;
}

static void
fz_check_message(const struct fz *f, const struct smtp_event *ev)
{
	const struct smtp_envelope *e = ev->message.env;
	const char *b = ev->message.body;
	size_t n = ev->message.body_len;

	CHECK(e != NULL && b != NULL);
	CHECK(n <= f->max_size);
	for (size_t i = 0; i < n; i++) {
		if (b[i] == '\r')
			CHECK(i + 1 < n && b[i + 1] == '\n');
		if (b[i] == '\n')
			CHECK(i > 0 && b[i - 1] == '\r');
	}
	CHECK(e->n_rcpts >= 1 && e->n_rcpts <= f->max_rcpts);
	CHECK(e->mail_from != NULL && strlen(e->mail_from) < SMTP_PATH_MAX);
	CHECK(e->helo != NULL && e->helo[0] != '\0');
	for (size_t i = 0; i < e->n_rcpts; i++) {
		CHECK(e->rcpts[i].addr != NULL && strlen(e->rcpts[i].addr) < SMTP_PATH_MAX);
		CHECK(fz_rcpt_allowed(f, e->rcpts[i].addr));
		unsigned nt = e->rcpts[i].notify;
		CHECK(!(nt & SMTP_NOTIFY_NEVER) || nt == SMTP_NOTIFY_NEVER);
		CHECK(e->rcpts[i].orcpt == NULL || strlen(e->rcpts[i].orcpt) <= SMTP_ORCPT_MAX);
	}
	CHECK(e->envid == NULL || strlen(e->envid) <= SMTP_ENVID_MAX);
	CHECK(e->auth_user == NULL || f->authed);
	CHECK(e->tls == f->tls);
}

/* An outcome word for the next event: PRNG in the randomized run, fixed per event index in a
 * differential run (so that both runs of a pair resolve events alike). */
static uint32_t
fz_outcome(struct fz *f)
{
	if (!f->diff)
		return fz_next(f);
	uint32_t x = f->seed ^ (0x9e3779b9u * ++f->events);
	x ^= x >> 15;
	x *= 0x2c1b3c6du;
	x ^= x >> 12;
	return x;
}

/* Plays one session over in[0..len).  whole: all bytes arrive at once. */
static void
fz_run(struct fz *f, const struct smtp_session_config *cfg,
       const struct smtp_session_client *client, const char *in, size_t len, bool whole)
{
	struct smtp_session *s;

	f->trusted = client->trusted;
	f->tls = client->tls_active;
	f->authed = false;
	f->col = 0;
	f->cr = false;
	f->hash = 0xcbf29ce484222325ull;
	f->out_total = 0;
	f->events = 0;
	if (smtp_session_new(&s, cfg, client) != 0)
		return;

	size_t off = 0, avail = 0;
	for (;;) {
		struct smtp_event ev;
		enum smtp_event_type t = smtp_session_event(s, &ev);

		if (t == SMTP_EV_CLOSE) {
			fz_drain(f, s, true);
			CHECK(smtp_session_feed(s, "NOOP\r\n", 6) == 0);
			break;
		}
		if (t == SMTP_EV_STARTTLS) {
			uint32_t r = fz_outcome(f);
			fz_drain(f, s, true);
			if (!f->diff)
				off = avail; /* RFC 3207: discard what was read after STARTTLS */
			bool ok = r & 1;
			CHECK(smtp_session_tls_done(s, ok) == 0);
			CHECK(!f->tls);
			if (ok) {
				f->authed = false;
				f->tls = true;
			}
			continue;
		}
		if (t == SMTP_EV_AUTH) {
			uint32_t r = fz_outcome(f);
			CHECK(ev.auth.user[0] != '\0' && ev.auth.password[0] != '\0');
			CHECK(strlen(ev.auth.user) <= SMTP_AUTH_FIELD_MAX);
			CHECK(strlen(ev.auth.password) <= SMTP_AUTH_FIELD_MAX);
			CHECK(strlen(ev.auth.authzid) <= SMTP_AUTH_FIELD_MAX);
			CHECK(f->tls && !f->authed); /* AUTH only over TLS, only once */
			bool ok = r & 1;
			if (!f->diff && (r >> 8) % 16 == 0)
				smtp_session_timeout(s); /* deferred until resolved */
			CHECK(smtp_session_auth_result(s, ok) == 0);
			if (ok)
				f->authed = true;
			continue;
		}
		if (t == SMTP_EV_MESSAGE) {
			uint32_t r = fz_outcome(f);
			fz_check_message(f, &ev);
			static const int codes[] = {250, 451, 554, 250};
			int code = codes[r % 4];
			if (!f->diff && (r >> 8) % 16 == 0)
				smtp_session_shutdown(s); /* deferred until resolved */
			CHECK(smtp_session_message_result(s, code, (r & 4) ? "x.y" : NULL,
							  (r & 8) ? "Ok: queued as 0123ABC\r\n"
								  : NULL) == 0);
			continue;
		}
		CHECK(smtp_session_auth_result(s, 1) < 0);
		CHECK(smtp_session_tls_done(s, 1) < 0);
		CHECK(smtp_session_message_result(s, 250, NULL, NULL) < 0);

		uint32_t r = fz_next(f);
		/* drain some output, sometimes all of it */
		fz_drain(f, s, (r & 3) != 0);
		if (!f->diff && (r >> 4) % 4096 == 0)
			smtp_session_timeout(s);

		if (off < avail) {
			size_t n = smtp_session_feed(s, in + off, avail - off);
			CHECK(n <= avail - off);
			off += n;
			if (n == 0) {
				/* a stall needs a reason: an event or undrained output */
				const char *b;
				size_t ol;
				smtp_session_output(s, &b, &ol);
				CHECK(ol > 0 || smtp_session_event(s, &ev) != SMTP_EV_NONE);
				fz_drain(f, s, true);
			}
			continue;
		}
		if (avail == len) {
			/* end of input: the peer hangs up */
			fz_drain(f, s, true);
			break;
		}
		size_t piece = whole ? len : 1 + (fz_next(f) % ((r & 0x100) ? 4096 : 16));
		avail = avail + piece < len ? avail + piece : len;
	}
	smtp_session_free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_session_config cfg = {0};
	struct smtp_session_client client = {0};
	struct smtp_counters counters = {0};
	struct fz f = {0};

	if (size < 2)
		return 0;
	uint8_t mode = data[0];
	const char *in = (const char *)data + 2;
	size_t len = size - 2;

	cfg.hostname = "mx.example.org";
	cfg.relay_domains = fz_domains;
	cfg.n_relay_domains = 2;
	cfg.tls_available = mode & 1;
	cfg.auth_available = mode & 2;
	client.tls_active = mode & 4;
	client.trusted = mode & 8;
	cfg.max_message_size = (mode & 16) ? 256 : 0;
	cfg.max_recipients = (mode & 32) ? 3 : 0;
	cfg.max_errors = (mode & 64) ? 3 : 50;
	cfg.max_line_length = (mode & 128) ? 512 : 0;
	cfg.counters = &counters;
	f.max_size = cfg.max_message_size ? cfg.max_message_size : SMTP_MAX_MESSAGE_SIZE_DEFAULT;
	f.max_rcpts = cfg.max_recipients ? cfg.max_recipients : SMTP_MAX_RECIPIENTS_DEFAULT;

	/* randomized: pieces, partial drains, outcomes, injected timeouts/shutdowns */
	f.rng = 0x01000193u * (uint32_t)(data[1] + 1) ^ (uint32_t)size;
	fz_run(&f, &cfg, &client, in, len, false);

	/* differential: random pieces vs one piece, same outcomes */
	f.diff = true;
	f.seed = data[1];
	fz_run(&f, &cfg, &client, in, len, false);
	uint64_t h1 = f.hash, n1 = f.out_total;
	fz_run(&f, &cfg, &client, in, len, true);
	CHECK(f.hash == h1 && f.out_total == n1);
	return 0;
}
