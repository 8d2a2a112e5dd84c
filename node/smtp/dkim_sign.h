/*
 * dkim_sign.h: DKIM signing of accepted messages (issue 13 part 3; dkim_keys,
 * dkim_sign_subdomains, dkim_headers).
 *
 * The accepting node signs a message from mynetworks or an authenticated client once, before
 * its Accept is proposed, so the replicated body carries the signature(s): with every key of
 * the From: domain (or, with dkim_sign_subdomains, of its nearest parent that has keys), an RSA
 * one (a=rsa-sha256) and an Ed25519 one (a=ed25519-sha256, RFC 8463) when the domain has both.
 * relaxed/relaxed canonicalization; h= from dkim_headers (default DKIM_DEFAULT_HEADERS), every
 * instance present, From once more (oversigned).  The pure work is node/smtp/dkim.c, the crypto
 * node/crypto.c.
 *
 * Failure modes: a key that does not load is a startup error (dkim_signer_new); a message that
 * cannot be signed (no From, several mailboxes, too many header fields) or whose signing fails
 * is accepted unsigned and logged by the caller (DKIM_SIGN_SKIPPED, DKIM_SIGN_FAILED).
 */
#ifndef RELAY_DKIM_SIGN_H
#define RELAY_DKIM_SIGN_H

#include <stddef.h>
#include <stdint.h>

struct relay_config;
struct dkim_signer;

#define DKIM_KEYS_MAX 64 /* entries of dkim_keys */

enum dkim_sign_result {
	DKIM_SIGNED = 0,	  /* *hdrs holds the DKIM-Signature field(s) */
	DKIM_SIGN_NO_KEY = 1,	  /* the From: domain has no key: sent unsigned, as expected */
	DKIM_SIGN_SKIPPED = 2,	  /* the message cannot be signed (why: in the reason) */
	DKIM_SIGN_FAILED = -1,	  /* out of memory or a crypto failure */
};

/* Loads every key of cfg->dkim_keys.  0 and *out (NULL when no key is configured), or -1 with
 * "dkim_keys: ENTRY: why" in err.  Logs each key with the DNS record to publish. */
int dkim_signer_new(const struct relay_config *cfg, struct dkim_signer **out, char *err,
		    size_t errlen);
void dkim_signer_free(struct dkim_signer *s);

/*
 * Signs msg (the message as the client sent it, CRLF line ends).  DKIM_SIGNED: *hdrs
 * (malloc'ed, the caller frees) holds the field(s) to put above the message, CRLF-terminated,
 * *hlen bytes, and domain (256 bytes) the d= used.  Otherwise *hdrs is NULL and reason (when
 * not NULL, 96 bytes) says why for the log.  now_s is the t= tag.  Thread-safe: s is only read
 * (the SMTP server signs on the libuv thread pool).
 */
enum dkim_sign_result dkim_signer_sign(struct dkim_signer *s, const char *msg, size_t len,
				       uint64_t now_s, char **hdrs, size_t *hlen, char *domain,
				       char *reason);

#endif
