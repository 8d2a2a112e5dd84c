/*
 * tls.h: the only OpenSSL user in relayd.  TLS over memory BIOs, so the libuv glue moves
 * ciphertext and the SMTP machines (server and delivery client) only ever see plaintext.
 *
 * Use: tls_conn_feed() the bytes read from the socket; tls_conn_handshake() until it returns 1;
 * then tls_conn_read() plaintext and tls_conn_write() replies; after every call, send what
 * tls_conn_take_output() returns.  TLS 1.2 is the minimum (RFC 8996).
 *
 * Client side (delivery STARTTLS): tls_client_ctx_new() makes the one client context: it trusts
 * a CA file (or the system store) and has DANE (RFC 7671) enabled.  A client conn made without
 * a check is opportunistic TLS (RFC 7435): the server certificate is not verified, because MX
 * hosts rarely have one that matches and an unauthenticated TLS session is still better than
 * plaintext.  With a check (struct tls_peer_check) the handshake still completes whatever the
 * certificate (SSL_VERIFY_NONE, as Postfix does), and tls_conn_peer_check() says afterwards,
 * before any SMTP byte goes over the session, whether the peer is who the check asked for:
 * PKIX (the chain ends at a trusted CA and a name matches, RFC 6125) or DANE (a TLSA record
 * matches, RFC 7672 3: DANE-EE(3) without name or date checks, DANE-TA(2) with both).  A client
 * conn starts its handshake on the first tls_conn_handshake() call (the ClientHello is then in
 * tls_conn_take_output()).
 */
#ifndef RELAY_TLS_H
#define RELAY_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tls_ctx;
struct tls_conn;

/* Loads cert chain and key; ciphers (NULL: OpenSSL's default) is the TLS 1.2 cipher list
 * (tls_ciphers).  Returns 0 or -1 with a message in err. */
int tls_ctx_new(const char *cert_file, const char *key_file, const char *ciphers,
		struct tls_ctx **out, char *err, size_t errlen);

/* Checks a TLS 1.2 cipher list (tls_ciphers) without a certificate: 0, or -1 with a message in
 * err naming what OpenSSL refused. */
int tls_ciphers_check(const char *ciphers, char *err, size_t errlen);
void tls_ctx_free(struct tls_ctx *ctx);

/* The client context: ca_file (PEM) is the trust store for checked conns; NULL or "" means the
 * system store.  0 or -1 (err names the file). */
int tls_client_ctx_new(const char *ca_file, struct tls_ctx **out, char *err, size_t errlen);

#define TLS_NAMES_MAX 2 /* reference identifiers of one check */

enum tls_auth {
	TLS_AUTH_NONE = 0, /* opportunistic: no check */
	TLS_AUTH_PKIX,	   /* chain to a trusted CA, and a certificate name matches names[] */
	TLS_AUTH_DANE,	   /* a TLSA record matches (names[0] is the TLSA base domain) */
};

/* One TLSA record (RFC 6698 2.1); data borrowed. */
struct tls_tlsa {
	uint8_t usage, selector, mtype;
	const uint8_t *data;
	size_t len;
};

/* What a checked client conn must prove.  Everything borrowed; copied by the conn. */
struct tls_peer_check {
	enum tls_auth mode;
	const char *names[TLS_NAMES_MAX]; /* RFC 6125 reference identifiers (host names) */
	size_t nnames;
	const struct tls_tlsa *tlsa; /* TLS_AUTH_DANE: the usable records */
	size_t ntlsa;
};

struct tls_conn *tls_conn_new(struct tls_ctx *ctx);
/* A client conn on a client context; sni (borrowed, copied) is the server name, or NULL. */
struct tls_conn *tls_conn_new_client(struct tls_ctx *ctx, const char *sni);
/* The same with a check (NULL or mode TLS_AUTH_NONE: none).  NULL when out of memory or when
 * no record of a DANE check can be used (nothing would ever match). */
struct tls_conn *tls_conn_new_client_checked(struct tls_ctx *ctx, const char *sni,
					     const struct tls_peer_check *chk);

/* After a completed handshake: 0 when the peer passed the conn's check (or it has none), -1
 * with the reason in why ("unable to get local issuer certificate", "hostname mismatch", "no
 * matching DANE TLSA record", ...). */
int tls_conn_peer_check(struct tls_conn *t, char *why, size_t cap);
void tls_conn_free(struct tls_conn *t);

/* Ciphertext from the peer.  Returns 0 or -1. */
int tls_conn_feed(struct tls_conn *t, const char *buf, size_t len);

/* Drives the handshake: 1 done, 0 needs more input, -1 failed (reason in err). */
int tls_conn_handshake(struct tls_conn *t, char *err, size_t errlen);

/* Plaintext: >0 bytes read, 0 needs more input, -1 the session is over (close). */
ssize_t tls_conn_read(struct tls_conn *t, char *buf, size_t cap);

/* Encrypts plaintext into the output.  Returns 0 or -1. */
int tls_conn_write(struct tls_conn *t, const char *buf, size_t len);

/* Queues our close_notify alert (RFC 8446 6.1, RFC 5246 7.2.1) into the output: call it before
 * closing a connection we end ourselves, then send tls_conn_take_output().  Returns 0 or -1.
 * Idempotent. */
int tls_conn_shutdown(struct tls_conn *t);

/* Ciphertext to send: copies up to cap bytes, returns the count (0 when none). */
size_t tls_conn_take_output(struct tls_conn *t, char *buf, size_t cap);

/* "TLSv1.3 TLS_AES_256_GCM_SHA384" style description for logs and Received:. */
const char *tls_conn_describe(struct tls_conn *t, char *buf, size_t cap);

#endif
