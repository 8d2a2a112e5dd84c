/*
 * tls.c: OpenSSL glue behind tls.h.  Each connection has an SSL with two memory BIOs: rbio takes
 * what the socket read, wbio collects what must be written.  Nothing here touches a socket.
 */
#include "tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tls_ctx {
	SSL_CTX *ctx;
};

struct tls_conn {
	SSL *ssl;
	enum tls_auth auth; /* the check asked for (client conns) */
	BIO *rbio; /* owned by ssl */
	BIO *wbio; /* owned by ssl */
};

static void
tls_errstr(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256] = "";
	if (e != 0)
		ERR_error_string_n(e, buf, sizeof(buf));
	snprintf(err, errlen, "%s%s%s", what, buf[0] ? ": " : "", buf);
	ERR_clear_error();
}

/* The cipher list must leave at least one TLS 1.2 cipher (SSL_CTX_set_cipher_list fails when
 * nothing matches). */
static int
tls_set_ciphers(SSL_CTX *ctx, const char *ciphers, char *err, size_t errlen)
{
	if (ciphers == NULL)
		return 0;
	if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
		tls_errstr(err, errlen, "tls_ciphers: no cipher of the list is usable");
		return -1;
	}
	return 0;
}

int
tls_ciphers_check(const char *ciphers, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		tls_errstr(err, errlen, "SSL_CTX_new");
		return -1;
	}
	int rc = tls_set_ciphers(ctx, ciphers, err, errlen);
	SSL_CTX_free(ctx);
	return rc;
}

int
tls_ctx_new(const char *cert_file, const char *key_file, const char *ciphers, struct tls_ctx **out,
	    char *err, size_t errlen)
{
	struct tls_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	c->ctx = SSL_CTX_new(TLS_server_method());
	if (c->ctx == NULL) {
		tls_errstr(err, errlen, "SSL_CTX_new");
		goto err_after_alloc;
	}
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(c->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
	if (tls_set_ciphers(c->ctx, ciphers, err, errlen) != 0)
		goto err_after_ctx;
	if (SSL_CTX_use_certificate_chain_file(c->ctx, cert_file) != 1) {
		tls_errstr(err, errlen, "tls_cert");
		goto err_after_ctx;
	}
	if (SSL_CTX_use_PrivateKey_file(c->ctx, key_file, SSL_FILETYPE_PEM) != 1) {
		tls_errstr(err, errlen, "tls_key");
		goto err_after_ctx;
	}
	if (SSL_CTX_check_private_key(c->ctx) != 1) {
		tls_errstr(err, errlen, "tls_key does not match tls_cert");
		goto err_after_ctx;
	}
	*out = c;
	return 0;
err_after_ctx:
	SSL_CTX_free(c->ctx);
err_after_alloc:
	free(c);
	return -1;
}

void
tls_ctx_free(struct tls_ctx *ctx)
{
	if (ctx == NULL)
		return;
	SSL_CTX_free(ctx->ctx);
	free(ctx);
}

int
tls_client_ctx_new(const char *ca_file, struct tls_ctx **out, char *err, size_t errlen)
{
	struct tls_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx == NULL) {
		tls_errstr(err, errlen, "SSL_CTX_new");
		goto err_after_alloc;
	}
	SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(c->ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
	/* Never abort the handshake for the certificate: tls_conn_peer_check() decides after it
	 * (opportunistic conns, RFC 7435, do not check at all). */
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
	if (ca_file != NULL && ca_file[0] != '\0') {
		if (SSL_CTX_load_verify_locations(c->ctx, ca_file, NULL) != 1) {
			char what[300];
			snprintf(what, sizeof(what), "tls_ca_file %s", ca_file);
			tls_errstr(err, errlen, what);
			goto err_after_ctx;
		}
	} else if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
		tls_errstr(err, errlen, "the system CA store");
		goto err_after_ctx;
	}
	if (SSL_CTX_dane_enable(c->ctx) <= 0) {
		tls_errstr(err, errlen, "DANE");
		goto err_after_ctx;
	}
	*out = c;
	return 0;
err_after_ctx:
	SSL_CTX_free(c->ctx);
err_after_alloc:
	free(c);
	return -1;
}

static struct tls_conn *
tls_conn_make(struct tls_ctx *ctx)
{
	struct tls_conn *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->ssl = SSL_new(ctx->ctx);
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
		BIO_free(t->rbio);
		BIO_free(t->wbio);
		SSL_free(t->ssl);
		free(t);
		ERR_clear_error();
		return NULL;
	}
	SSL_set_bio(t->ssl, t->rbio, t->wbio);
	return t;
}

struct tls_conn *
tls_conn_new(struct tls_ctx *ctx)
{
	struct tls_conn *t = tls_conn_make(ctx);
	if (t != NULL)
		SSL_set_accept_state(t->ssl);
	return t;
}

struct tls_conn *
tls_conn_new_client(struct tls_ctx *ctx, const char *sni)
{
	struct tls_conn *t = tls_conn_make(ctx);
	if (t == NULL)
		return NULL;
	SSL_set_connect_state(t->ssl);
	if (sni != NULL && sni[0] != '\0' && strchr(sni, '.') != NULL)
		SSL_set_tlsext_host_name(t->ssl, sni); /* best effort */
	ERR_clear_error();
	return t;
}

/* Sets up the check of a client conn.  0, or -1 (nothing usable, or out of memory). */
static int
tls_conn_setup_check(struct tls_conn *t, const struct tls_peer_check *chk)
{
	SSL *ssl = t->ssl;
	if (chk->nnames == 0 || chk->names[0] == NULL || chk->names[0][0] == '\0')
		return -1; /* nothing to check the certificate against */
	if (chk->mode == TLS_AUTH_DANE) {
		/* names[0] is the TLSA base domain, the primary reference identifier */
		if (SSL_dane_enable(ssl, chk->names[0]) <= 0)
			return -1;
		/* RFC 7672 3.1.1: a DANE-EE(3) match needs no name check */
		SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
		size_t usable = 0;
		for (size_t i = 0; i < chk->ntlsa; i++) {
			const struct tls_tlsa *r = &chk->tlsa[i];
			if (SSL_dane_tlsa_add(ssl, r->usage, r->selector, r->mtype, r->data, r->len) >
			    0)
				usable++;
		}
		if (usable == 0)
			return -1;
	} else if (strchr(chk->names[0], ':') != NULL || strspn(chk->names[0], "0123456789.") ==
							       strlen(chk->names[0])) {
		/* an address literal route ([192.0.2.1]:25): the certificate's IP address */
		if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), chk->names[0]) != 1)
			return -1;
	} else if (SSL_set1_host(ssl, chk->names[0]) != 1) {
		return -1;
	}
	for (size_t i = 1; i < chk->nnames && i < TLS_NAMES_MAX; i++)
		if (chk->names[i] != NULL && chk->names[i][0] != '\0' &&
		    SSL_add1_host(ssl, chk->names[i]) != 1)
			return -1;
	/* RFC 6125 6.4.3: a wildcard is a whole left-most label (RFC 8461 4.1 too) */
	SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	t->auth = chk->mode;
	return 0;
}

struct tls_conn *
tls_conn_new_client_checked(struct tls_ctx *ctx, const char *sni, const struct tls_peer_check *chk)
{
	struct tls_conn *t = tls_conn_new_client(ctx, sni);
	if (t == NULL || chk == NULL || chk->mode == TLS_AUTH_NONE)
		return t;
	if (tls_conn_setup_check(t, chk) != 0) {
		ERR_clear_error();
		tls_conn_free(t);
		return NULL;
	}
	return t;
}

int
tls_conn_peer_check(struct tls_conn *t, char *why, size_t cap)
{
	if (t->auth == TLS_AUTH_NONE)
		return 0;
	if (SSL_get0_peer_certificate(t->ssl) == NULL) {
		snprintf(why, cap, "no certificate");
		return -1;
	}
	long rc = SSL_get_verify_result(t->ssl);
	if (rc != X509_V_OK) {
		snprintf(why, cap, "%s", X509_verify_cert_error_string(rc));
		return -1;
	}
	if (t->auth == TLS_AUTH_DANE && SSL_get0_dane_authority(t->ssl, NULL, NULL) < 0) {
		snprintf(why, cap, "no matching DANE TLSA record");
		return -1;
	}
	return 0;
}

void
tls_conn_free(struct tls_conn *t)
{
	if (t == NULL)
		return;
	SSL_free(t->ssl);
	free(t);
}

int
tls_conn_feed(struct tls_conn *t, const char *buf, size_t len)
{
	while (len > 0) {
		int n = BIO_write(t->rbio, buf, len > 65536 ? 65536 : (int)len);
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int
tls_conn_handshake(struct tls_conn *t, char *err, size_t errlen)
{
	int rc = SSL_do_handshake(t->ssl);
	if (rc == 1)
		return 1;
	int e = SSL_get_error(t->ssl, rc);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	tls_errstr(err, errlen, "handshake failed");
	return -1;
}

ssize_t
tls_conn_read(struct tls_conn *t, char *buf, size_t cap)
{
	int n = SSL_read(t->ssl, buf, cap > 1 << 30 ? 1 << 30 : (int)cap);
	if (n > 0)
		return n;
	int e = SSL_get_error(t->ssl, n);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	ERR_clear_error();
	return -1;
}

int
tls_conn_write(struct tls_conn *t, const char *buf, size_t len)
{
	while (len > 0) {
		int n = SSL_write(t->ssl, buf, len > 1 << 20 ? 1 << 20 : (int)len);
		if (n <= 0) {
			ERR_clear_error();
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int
tls_conn_shutdown(struct tls_conn *t)
{
	if (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)
		return 0;
	/* 0: our close_notify is in the wbio, the peer's not seen yet (we do not wait for it);
	 * 1: both sent.  Either way the alert is queued. */
	int rc = SSL_shutdown(t->ssl);
	ERR_clear_error();
	return rc >= 0 ? 0 : -1;
}

size_t
tls_conn_take_output(struct tls_conn *t, char *buf, size_t cap)
{
	int n = BIO_read(t->wbio, buf, cap > 1 << 30 ? 1 << 30 : (int)cap);
	return n > 0 ? (size_t)n : 0;
}

const char *
tls_conn_describe(struct tls_conn *t, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
	return buf;
}
