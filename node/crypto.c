/*
 * crypto.c: DKIM's keys, signatures, SHA-256 and base64 on OpenSSL (crypto.h).
 */
#include "crypto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

struct crypto_key {
	EVP_PKEY *pkey; /* owned */
	enum crypto_key_type type;
	unsigned bits;
};

struct crypto_sha256 {
	EVP_MD_CTX *md;
};

static void
ossl_error(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[160] = "";
	if (e)
		ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
}

static int
key_from_bio(BIO *bio, struct crypto_key **out, char *err, size_t errlen)
{
	EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
	if (pkey == NULL) {
		ossl_error(err, errlen, "not a PEM private key");
		return -1;
	}
	struct crypto_key *k = calloc(1, sizeof(*k));
	if (k == NULL) {
		EVP_PKEY_free(pkey);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	k->pkey = pkey;
	k->bits = (unsigned)EVP_PKEY_get_bits(pkey);
	switch (EVP_PKEY_get_base_id(pkey)) {
	case EVP_PKEY_RSA:
		k->type = CRYPTO_KEY_RSA;
		if (k->bits < CRYPTO_RSA_BITS_MIN || k->bits > CRYPTO_RSA_BITS_MAX) {
			snprintf(err, errlen, "an RSA key of %u bits (want %d to %d)", k->bits,
				 CRYPTO_RSA_BITS_MIN, CRYPTO_RSA_BITS_MAX);
			goto err_after_key;
		}
		break;
	case EVP_PKEY_ED25519:
		k->type = CRYPTO_KEY_ED25519;
		break;
	default:
		snprintf(err, errlen, "a key of type %s (want RSA or Ed25519)",
			 OBJ_nid2sn(EVP_PKEY_get_base_id(pkey)));
		goto err_after_key;
	}
	*out = k;
	return 0;
err_after_key:
	crypto_key_free(k);
	return -1;
}

int
crypto_key_load(const char *path, struct crypto_key **out, char *err, size_t errlen)
{
	BIO *bio = BIO_new_file(path, "r");
	if (bio == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno ? errno : ENOENT));
		ERR_clear_error();
		return -1;
	}
	char msg[256];
	int rc = key_from_bio(bio, out, msg, sizeof(msg));
	BIO_free(bio);
	if (rc != 0)
		snprintf(err, errlen, "%s: %s", path, msg);
	return rc;
}

int
crypto_key_from_pem(const char *pem, size_t len, struct crypto_key **out, char *err,
		    size_t errlen)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	if (bio == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	int rc = key_from_bio(bio, out, err, errlen);
	BIO_free(bio);
	return rc;
}

void
crypto_key_free(struct crypto_key *k)
{
	if (k == NULL)
		return;
	EVP_PKEY_free(k->pkey);
	free(k);
}

enum crypto_key_type
crypto_key_type(const struct crypto_key *k)
{
	return k->type;
}

unsigned
crypto_key_bits(const struct crypto_key *k)
{
	return k->bits;
}

int
crypto_dkim_sign(struct crypto_key *k, const void *data, size_t len, unsigned char *sig,
		 size_t *siglen)
{
	unsigned char hash[CRYPTO_SHA256_LEN];
	const EVP_MD *md = EVP_sha256();
	if (k->type == CRYPTO_KEY_ED25519) {
		/* RFC 8463 3: Ed25519 signs the SHA-256 hash, not the data */
		if (EVP_Digest(data, len, hash, NULL, md, NULL) != 1)
			goto err;
		data = hash;
		len = sizeof(hash);
		md = NULL; /* PureEdDSA: no digest of its own */
	}
	size_t n = CRYPTO_SIG_MAX;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new(); /* per call: keys sign from several threads */
	if (ctx == NULL || EVP_DigestSignInit(ctx, NULL, md, NULL, k->pkey) != 1 ||
	    EVP_DigestSign(ctx, NULL, &n, data, len) != 1 || n > CRYPTO_SIG_MAX ||
	    EVP_DigestSign(ctx, sig, &n, data, len) != 1) {
		EVP_MD_CTX_free(ctx);
		goto err;
	}
	EVP_MD_CTX_free(ctx);
	*siglen = n;
	return 0;
err:
	ERR_clear_error();
	return -1;
}

int
crypto_key_public_b64(const struct crypto_key *k, char *out, size_t cap)
{
	unsigned char raw[CRYPTO_PUBLIC_B64_MAX], *p = raw;
	size_t n = sizeof(raw);
	if (k->type == CRYPTO_KEY_ED25519) {
		if (EVP_PKEY_get_raw_public_key(k->pkey, raw, &n) != 1)
			goto err;
	} else {
		int len = i2d_PUBKEY(k->pkey, NULL);
		if (len <= 0 || (size_t)len > sizeof(raw) || i2d_PUBKEY(k->pkey, &p) != len)
			goto err;
		n = (size_t)len;
	}
	return crypto_base64(raw, n, out, cap) ? 0 : -1;
err:
	ERR_clear_error();
	return -1;
}

struct crypto_sha256 *
crypto_sha256_new(void)
{
	struct crypto_sha256 *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return NULL;
	if ((h->md = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1) {
		crypto_sha256_free(h);
		return NULL;
	}
	return h;
}

void
crypto_sha256_update(struct crypto_sha256 *h, const void *data, size_t len)
{
	if (len)
		EVP_DigestUpdate(h->md, data, len);
}

void
crypto_sha256_final(struct crypto_sha256 *h, unsigned char out[CRYPTO_SHA256_LEN])
{
	unsigned n = CRYPTO_SHA256_LEN;
	EVP_DigestFinal_ex(h->md, out, &n);
}

void
crypto_sha256_free(struct crypto_sha256 *h)
{
	if (h == NULL)
		return;
	EVP_MD_CTX_free(h->md);
	free(h);
}

size_t
crypto_base64(const void *data, size_t len, char *out, size_t cap)
{
	if (len > (size_t)1 << 28 || cap < 4 * ((len + 2) / 3) + 1)
		return 0;
	int n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return n < 0 ? 0 : (size_t)n;
}
