/*
 * dkim.h: the pure part of DKIM signing (RFC 6376, RFC 8463): splitting a message into header
 * fields and body, relaxed canonicalization of both (RFC 6376 3.4.2, 3.4.4), choosing the header
 * fields to sign (5.4, with From oversigned: 5.4.2, 8.15), the domain of the From: address, and
 * the DKIM-Signature field's text.  No crypto here: the caller hashes what this module emits and
 * signs (node/smtp/dkim_sign.c with node/crypto.c).
 *
 * Signing one message (dkim_sign.c does this):
 *   dkim_parse(msg)                  the header fields and where the body starts
 *   dkim_from_domain()               the signing domain candidate
 *   dkim_body_relaxed(body) -> hash  bh=
 *   dkim_h_list(names)               h= (every instance present, From once more)
 *   dkim_sig_template()              "DKIM-Signature: v=1; a=...; ...; b="
 *   dkim_header_data(h, template)    the bytes to sign
 *   dkim_sig_add_b(signature)        the finished field, CRLF-terminated
 *
 * Bounds: DKIM_FIELDS_MAX header fields (a message with more is not signed), DKIM_FIELD_MAX
 * bytes of one canonical field, DKIM_NAMES_MAX names to sign.  Errors are -1; nothing is
 * allocated except by the caller's dkim_buf.
 */
#ifndef RELAY_DKIM_H
#define RELAY_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DKIM_FIELDS_MAX 1000	 /* header fields of one message */
#define DKIM_FIELD_MAX (64 * 1024) /* bytes of one header field, folded */
#define DKIM_NAMES_MAX 64	 /* names in a header list (dkim_headers) */
#define DKIM_NAME_MAX 64	 /* bytes in one field name */
#define DKIM_H_MAX 4096		 /* bytes of the h= value */
#define DKIM_SIG_FIELD_MAX 8192	 /* bytes of one DKIM-Signature field */

/* The header list signed by default: what carries the message's meaning to its reader and to
 * list software (RFC 6376 5.4.1), each instance present, and From once more than present. */
#define DKIM_DEFAULT_HEADERS                                                                       \
	"from", "reply-to", "sender", "subject", "date", "to", "cc", "message-id", "in-reply-to",  \
	    "references", "mime-version", "content-type", "content-transfer-encoding",             \
	    "content-disposition", "content-id", "list-id", "list-help", "list-unsubscribe",       \
	    "list-unsubscribe-post", "list-subscribe", "list-post", "list-owner", "list-archive"

struct dkim_field {
	size_t off;	 /* start in the message */
	size_t len;	 /* bytes up to (not including) the CRLF that ends it, folds included */
	size_t name_len; /* the field name, blanks before ':' excluded */
};

struct dkim_msg {
	struct dkim_field f[DKIM_FIELDS_MAX];
	size_t n;
	size_t body_off; /* after the empty line; the message length when there is none */
};

/* Splits msg into header fields and body.  0, or -1: a line of the header without ':' (not a
 * field), more than DKIM_FIELDS_MAX fields, or one longer than DKIM_FIELD_MAX. */
int dkim_parse(const char *msg, size_t len, struct dkim_msg *m);

/* The domain of the single From: mailbox, lowercased, in dom (cap >= 256).  0, or -1 (no From,
 * several From fields or mailboxes, no '@'). */
int dkim_from_domain(const char *msg, const struct dkim_msg *m, char *dom, size_t cap);

/* A growable output buffer bounded by max (the caller sets max; p is malloc'ed). */
struct dkim_buf {
	char *p;
	size_t len, cap, max;
};
int dkim_buf_put(struct dkim_buf *b, const void *data, size_t n);
void dkim_buf_free(struct dkim_buf *b);

/* Relaxed body canonicalization (RFC 6376 3.4.4), streamed: emit(arg, bytes, n) is called with
 * consecutive pieces of the canonical body (never more than 8 KiB each). */
typedef void (*dkim_emit_cb)(void *arg, const char *bytes, size_t n);
void dkim_body_relaxed(const char *body, size_t len, dkim_emit_cb emit, void *arg);

/* Relaxed canonicalization of one header field (RFC 6376 3.4.2) appended to out, with CRLF
 * when crlf.  0 or -1 (out full). */
int dkim_field_relaxed(const char *field, size_t len, bool crlf, struct dkim_buf *out);

/* The h= value for names (lowercase, "from" among them or added first): each name as many
 * times as it is present, "from" once more (oversigned); names absent are left out.  Folded
 * with "\r\n\t" so no line passes about 76 bytes.  0 or -1 (h too long). */
int dkim_h_list(const char *msg, const struct dkim_msg *m, const char *const *names, size_t n,
		char *h, size_t cap);

/* The bytes a signature covers (RFC 6376 3.7): for each name of h (a tag value: names split by
 * ':' with optional blanks and folds), the next instance of that field from the bottom,
 * canonicalized with CRLF (none left: nothing), then the DKIM-Signature field sig (its b= empty)
 * canonicalized without CRLF.  0 or -1 (out full, a bad h). */
int dkim_header_data(const char *msg, const struct dkim_msg *m, const char *h, const char *sig,
		     size_t siglen, struct dkim_buf *out);

struct dkim_sig_params {
	const char *algo;     /* "rsa-sha256" or "ed25519-sha256" */
	const char *domain;   /* d= */
	const char *selector; /* s= */
	uint64_t t;	      /* t= (seconds since the epoch) */
	const char *h;	      /* dkim_h_list */
	const char *bh;	      /* base64 body hash */
};

/* "DKIM-Signature: v=1; a=...; c=relaxed/relaxed; d=...; s=...; t=...; h=...; bh=...; b="
 * folded, NUL-terminated; returns its length or -1 (cap too small). */
int dkim_sig_template(const struct dkim_sig_params *p, char *out, size_t cap);

/* Appends the base64 signature (folded) and CRLF to the template of length len; returns the new
 * length or -1. */
int dkim_sig_add_b(char *sig, size_t len, size_t cap, const char *b64);

#endif
