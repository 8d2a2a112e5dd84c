/*
 * tls.h: the only OpenSSL user in relayd.  TLS over memory BIOs, so the libuv glue moves
 * ciphertext and the SMTP machines (server and delivery client) only ever see plaintext.
 *
 * Use: tls_conn_feed() the bytes read from the socket; tls_conn_handshake() until it returns 1;
 * then tls_conn_read() plaintext and tls_conn_write() replies; after every call, send what
 * tls_conn_take_output() returns.  TLS 1.2 is the minimum (RFC 8996).
 *
 * Client side (delivery STARTTLS): tls_client_ctx_new() makes a context for opportunistic TLS
 * (RFC 7435): the server certificate is not verified, because MX hosts rarely have one that
 * matches and an unauthenticated TLS session is still better than plaintext.  A client conn
 * starts its handshake on the first tls_conn_handshake() call (the ClientHello is then in
 * tls_conn_take_output()).
 */
#ifndef RELAY_TLS_H
#define RELAY_TLS_H

#include <stddef.h>
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

/* A client context (opportunistic: no certificate verification).  0 or -1 (err). */
int tls_client_ctx_new(struct tls_ctx **out, char *err, size_t errlen);

struct tls_conn *tls_conn_new(struct tls_ctx *ctx);
/* A client conn on a client context; sni (borrowed, copied) is the server name, or NULL. */
struct tls_conn *tls_conn_new_client(struct tls_ctx *ctx, const char *sni);
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
