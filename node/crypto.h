/*
 * crypto.h: signing keys, SHA-256 and base64 for DKIM (issue 13 part 3), on OpenSSL.  With
 * node/tls.c the only files that include OpenSSL (tests/layout/check_layout.py).
 *
 * Keys: PEM private keys, RSA of at least CRYPTO_RSA_BITS_MIN bits (RFC 8301 3.2 asks for 1024,
 * we ask for 2048) or Ed25519 (RFC 8463).  Signatures as DKIM wants them:
 *   RSA      RSASSA-PKCS1-v1_5 with SHA-256 over the data (a=rsa-sha256, RFC 6376 3.3.1);
 *   Ed25519  PureEdDSA over the SHA-256 hash of the data (a=ed25519-sha256, RFC 8463 3).
 * The public key as DKIM publishes it (p= of the DNS TXT record): RSA as the base64 of its
 * SubjectPublicKeyInfo DER, Ed25519 as the base64 of its 32 raw bytes.
 *
 * Threads: a loaded key is read-only after crypto_key_load: it may sign from several threads at
 * once (the thread pool signs for the SMTP server).
 */
#ifndef RELAY_CRYPTO_H
#define RELAY_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define CRYPTO_RSA_BITS_MIN 2048
#define CRYPTO_RSA_BITS_MAX 8192
#define CRYPTO_SIG_MAX 1024     /* bytes of a signature (RSA 8192) */
#define CRYPTO_SHA256_LEN 32
#define CRYPTO_PUBLIC_B64_MAX 1500 /* base64 of an RSA-8192 SubjectPublicKeyInfo */

enum crypto_key_type { CRYPTO_KEY_RSA = 1, CRYPTO_KEY_ED25519 = 2 };

struct crypto_key;
struct crypto_sha256;

/* Loads a PEM private key.  0 and *out, or -1 with why in err (unreadable, not a key, RSA
 * under CRYPTO_RSA_BITS_MIN, another type). */
int crypto_key_load(const char *path, struct crypto_key **out, char *err, size_t errlen);
/* The same from PEM text in memory (tests). */
int crypto_key_from_pem(const char *pem, size_t len, struct crypto_key **out, char *err,
			size_t errlen);
void crypto_key_free(struct crypto_key *k);
enum crypto_key_type crypto_key_type(const struct crypto_key *k);
unsigned crypto_key_bits(const struct crypto_key *k);

/* Signs data as DKIM wants it (above).  0 with sig (CRYPTO_SIG_MAX bytes) and *siglen, or -1. */
int crypto_dkim_sign(struct crypto_key *k, const void *data, size_t len, unsigned char *sig,
		     size_t *siglen);

/* The p= value of the key's DNS record, NUL-terminated in out (CRYPTO_PUBLIC_B64_MAX).  0/-1. */
int crypto_key_public_b64(const struct crypto_key *k, char *out, size_t cap);

/* SHA-256, incremental.  new returns NULL when out of memory. */
struct crypto_sha256 *crypto_sha256_new(void);
void crypto_sha256_update(struct crypto_sha256 *h, const void *data, size_t len);
void crypto_sha256_final(struct crypto_sha256 *h, unsigned char out[CRYPTO_SHA256_LEN]);
void crypto_sha256_free(struct crypto_sha256 *h);

/* Base64 (RFC 4648, with padding) of len bytes into out, NUL-terminated; returns the length,
 * or 0 when cap is too small (cap >= 4 * ((len + 2) / 3) + 1 always fits). */
size_t crypto_base64(const void *data, size_t len, char *out, size_t cap);

#endif
