/*
 * dkim_sign.c: signs accepted messages with the keys of dkim_keys (dkim_sign.h): dkim.c does
 * the canonical forms and the field text, crypto.c the hashes and signatures.
 */
#include "dkim_sign.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "crypto.h"
#include "dkim.h"
#include "log.h"

#define DKIM__HEADER_DATA_MAX (1u << 20) /* canonical bytes one signature covers */

struct dkim_key_ent {
	char domain[256];
	char selector[64];
	struct crypto_key *key; /* owned */
};

struct dkim_signer {
	struct dkim_key_ent keys[DKIM_KEYS_MAX];
	size_t n;
	bool subdomains;
	const char *names[DKIM_NAMES_MAX]; /* borrowed: from the config or the default list */
	size_t nnames;
};

static const char *const dkim_default_headers[] = {DKIM_DEFAULT_HEADERS};

void
dkim_signer_free(struct dkim_signer *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->n; i++)
		crypto_key_free(s->keys[i].key);
	free(s);
}

static const char *
key_type_name(enum crypto_key_type t)
{
	return t == CRYPTO_KEY_ED25519 ? "ed25519" : "rsa";
}

int
dkim_signer_new(const struct relay_config *cfg, struct dkim_signer **out, char *err,
		size_t errlen)
{
	*out = NULL;
	if (cfg->dkim_keys.n == 0)
		return 0;
	if (cfg->dkim_keys.n > DKIM_KEYS_MAX) {
		snprintf(err, errlen, "dkim_keys: more than %d keys", DKIM_KEYS_MAX);
		return -1;
	}
	struct dkim_signer *s = calloc(1, sizeof(*s));
	if (s == NULL) {
		snprintf(err, errlen, "dkim_keys: out of memory");
		return -1;
	}
	s->subdomains = cfg->dkim_sign_subdomains;
	if (cfg->dkim_headers.n > 0) {
		for (size_t i = 0; i < cfg->dkim_headers.n && i < DKIM_NAMES_MAX; i++)
			s->names[s->nnames++] = cfg->dkim_headers.v[i];
	} else {
		for (size_t i = 0; i < sizeof(dkim_default_headers) / sizeof(*dkim_default_headers);
		     i++)
			s->names[s->nnames++] = dkim_default_headers[i];
	}
	for (size_t i = 0; i < cfg->dkim_keys.n; i++) {
		const char *e = cfg->dkim_keys.v[i]; /* checked by config_check */
		const char *c1 = strchr(e, ':'), *c2 = strchr(c1 + 1, ':');
		struct dkim_key_ent *k = &s->keys[s->n];
		snprintf(k->domain, sizeof(k->domain), "%.*s", (int)(c1 - e), e);
		for (char *p = k->domain; *p; p++)
			*p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
		snprintf(k->selector, sizeof(k->selector), "%.*s", (int)(c2 - c1 - 1), c1 + 1);
		char why[400];
		if (crypto_key_load(c2 + 1, &k->key, why, sizeof(why)) != 0) {
			snprintf(err, errlen, "dkim_keys: %s: %s", e, why);
			goto err_after_alloc;
		}
		s->n++;
		for (size_t j = 0; j + 1 < s->n; j++) {
			if (strcmp(s->keys[j].domain, k->domain) != 0)
				continue;
			if (crypto_key_type(s->keys[j].key) == crypto_key_type(k->key)) {
				snprintf(err, errlen,
					 "dkim_keys: %s: %s has two %s keys (one RSA and one Ed25519 "
					 "at most)",
					 e, k->domain, key_type_name(crypto_key_type(k->key)));
				goto err_after_alloc;
			}
		}
		char p[CRYPTO_PUBLIC_B64_MAX];
		if (crypto_key_public_b64(k->key, p, sizeof(p)) != 0) {
			snprintf(err, errlen, "dkim_keys: %s: cannot derive its public key", e);
			goto err_after_alloc;
		}
		/* the record to publish, in zone-file form (RFC 6376 3.6.2.1) */
		log_info("-", "event=dkim-key domain=%s selector=%s type=%s bits=%u "
			      "dns=\"%s._domainkey.%s. IN TXT 'v=DKIM1; k=%s; p=%s'\"",
			 k->domain, k->selector, key_type_name(crypto_key_type(k->key)),
			 crypto_key_bits(k->key), k->selector, k->domain,
			 key_type_name(crypto_key_type(k->key)), p);
	}
	*out = s;
	return 0;
err_after_alloc:
	dkim_signer_free(s);
	return -1;
}

/* The keys of domain, or with subdomains of its nearest parent that has some: the first index
 * and the domain found (NULL: none). */
static const char *
find_keys(const struct dkim_signer *s, const char *domain)
{
	for (const char *d = domain; d != NULL;) {
		for (size_t i = 0; i < s->n; i++)
			if (strcmp(s->keys[i].domain, d) == 0)
				return s->keys[i].domain;
		if (!s->subdomains)
			break;
		d = strchr(d, '.');
		if (d != NULL)
			d++;
	}
	return NULL;
}

static void
hash_emit(void *arg, const char *bytes, size_t n)
{
	crypto_sha256_update(arg, bytes, n);
}

/* One signature with key k over the message: appended to out.  0 or -1. */
static int
sign_one(const struct dkim_msg *m, struct dkim_key_ent *k, const char *msg, const char *h,
	 const char *bh, uint64_t now_s, struct dkim_buf *out)
{
	char sig[DKIM_SIG_FIELD_MAX];
	struct dkim_sig_params p = {
	    .algo = crypto_key_type(k->key) == CRYPTO_KEY_ED25519 ? "ed25519-sha256" : "rsa-sha256",
	    .domain = k->domain,
	    .selector = k->selector,
	    .t = now_s,
	    .h = h,
	    .bh = bh,
	};
	int len = dkim_sig_template(&p, sig, sizeof(sig));
	if (len < 0)
		return -1;
	struct dkim_buf data = {.max = DKIM__HEADER_DATA_MAX};
	unsigned char raw[CRYPTO_SIG_MAX];
	char b64[2 * CRYPTO_SIG_MAX];
	size_t rawlen;
	int rc = -1;
	if (dkim_header_data(msg, m, h, sig, (size_t)len, &data) == 0 &&
	    crypto_dkim_sign(k->key, data.p, data.len, raw, &rawlen) == 0 &&
	    crypto_base64(raw, rawlen, b64, sizeof(b64)) > 0 &&
	    (len = dkim_sig_add_b(sig, (size_t)len, sizeof(sig), b64)) > 0)
		rc = dkim_buf_put(out, sig, (size_t)len);
	dkim_buf_free(&data);
	return rc;
}

enum dkim_sign_result
dkim_signer_sign(struct dkim_signer *s, const char *msg, size_t len, uint64_t now_s, char **hdrs,
		 size_t *hlen, char *domain, char *reason)
{
	char from[256], r[96] = "";
	enum dkim_sign_result res = DKIM_SIGN_SKIPPED;
	*hdrs = NULL;
	*hlen = 0;
	if (s == NULL)
		return DKIM_SIGN_NO_KEY;
	struct dkim_msg *m = malloc(sizeof(*m)); /* per call: signing runs on several threads */
	if (m == NULL) {
		res = DKIM_SIGN_FAILED;
		snprintf(r, sizeof(r), "out of memory");
		goto out;
	}
	if (dkim_parse(msg, len, m) != 0) {
		snprintf(r, sizeof(r), "header fields do not parse (or more than %d)",
			 DKIM_FIELDS_MAX);
		goto out;
	}
	if (dkim_from_domain(msg, m, from, sizeof(from)) != 0) {
		snprintf(r, sizeof(r), "no single From: mailbox with an ASCII domain");
		goto out;
	}
	const char *d = find_keys(s, from);
	if (d == NULL) {
		res = DKIM_SIGN_NO_KEY;
		snprintf(r, sizeof(r), "no key for %.80s", from);
		goto out;
	}
	res = DKIM_SIGN_FAILED;
	snprintf(r, sizeof(r), "out of memory or a crypto failure");
	char h[DKIM_H_MAX], bh[64];
	unsigned char digest[CRYPTO_SHA256_LEN];
	struct crypto_sha256 *hash = crypto_sha256_new();
	if (hash == NULL)
		goto out;
	dkim_body_relaxed(msg + m->body_off, len - m->body_off, hash_emit, hash);
	crypto_sha256_final(hash, digest);
	crypto_sha256_free(hash);
	if (crypto_base64(digest, sizeof(digest), bh, sizeof(bh)) == 0 ||
	    dkim_h_list(msg, m, s->names, s->nnames, h, sizeof(h)) != 0)
		goto out;
	struct dkim_buf o = {.max = 4 * DKIM_SIG_FIELD_MAX};
	/* Ed25519 first, then RSA (the order of RFC 8463's example) */
	for (int pass = 0; pass < 2; pass++) {
		enum crypto_key_type want = pass == 0 ? CRYPTO_KEY_ED25519 : CRYPTO_KEY_RSA;
		for (size_t i = 0; i < s->n; i++) {
			if (strcmp(s->keys[i].domain, d) != 0 ||
			    crypto_key_type(s->keys[i].key) != want)
				continue;
			if (sign_one(m, &s->keys[i], msg, h, bh, now_s, &o) != 0) {
				dkim_buf_free(&o);
				goto out;
			}
		}
	}
	*hdrs = o.p;
	*hlen = o.len;
	snprintf(domain, 256, "%s", d);
	res = DKIM_SIGNED;
out:
	free(m);
	if (reason != NULL)
		snprintf(reason, 96, "%s", r);
	return res;
}
