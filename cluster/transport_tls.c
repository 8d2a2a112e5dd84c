/*
 * transport_tls.c: the PEM material that both the peer transport and the admin endpoint read at
 * open (transport_int.h), and the OpenSSL contexts of the peer transport (transport.c) built
 * from it.  Mutual authentication on both ends: the server
 * context requires a client certificate chained to the cluster CA, the client context requires
 * the server's chained to it (the name it must carry is set per connection, transport.c).
 * TLS 1.2 at least: nodes of the versions before this transport speak NNG's TLS (mbedTLS 2.28,
 * TLS 1.2), so a rolling upgrade has both sides talk during it.
 */
#include "transport.h"
#include "transport_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* ---- the PEM material (the peer transport's and the admin endpoint's) ---- */

void
transport__tls_fini(struct tls_material *m)
{
	free(m->ca);
	free(m->cert);
	if (m->key != NULL) {
		explicit_bzero(m->key, strlen(m->key));
		free(m->key);
	}
	memset(m, 0, sizeof(*m));
}

/* Read a whole PEM file, at most TRANSPORT_PEM_MAX bytes, NUL-terminated. */
static int
read_pem(const char *path, char **out)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return TRANSPORT_ETLS;
	char *buf = malloc(TRANSPORT_PEM_MAX + 1);
	if (buf == NULL) {
		fclose(f);
		return TRANSPORT_ENOMEM;
	}
	size_t n = fread(buf, 1, TRANSPORT_PEM_MAX + 1, f);
	int bad = ferror(f) || n == 0 || n > TRANSPORT_PEM_MAX;
	fclose(f);
	if (bad) {
		free(buf);
		return TRANSPORT_ETLS;
	}
	buf[n] = '\0';
	*out = buf;
	return 0;
}

/* 0 and *on = false when no file is named; all three or none. */
int
transport__tls_load(struct tls_material *m, const char *ca, const char *cert, const char *key,
		    bool *on)
{
	memset(m, 0, sizeof(*m));
	*on = false;
	if (ca == NULL && cert == NULL && key == NULL)
		return 0;
	if (ca == NULL || cert == NULL || key == NULL)
		return TRANSPORT_EINVAL;
	int rv;
	if ((rv = read_pem(ca, &m->ca)) != 0 || (rv = read_pem(cert, &m->cert)) != 0 ||
	    (rv = read_pem(key, &m->key)) != 0) {
		transport__tls_fini(m);
		return rv;
	}
	*on = true;
	return 0;
}

/* ---- the peer transport's contexts ---- */

/* Every certificate of a PEM text into the store.  0 when at least one was added. */
static int
add_cas(X509_STORE *store, const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	if (b == NULL)
		return TRANSPORT_ENOMEM;
	int n = 0;
	X509 *x;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (X509_STORE_add_cert(store, x) == 1)
			n++;
		X509_free(x);
	}
	ERR_clear_error(); /* the end of the text reads as an error */
	BIO_free(b);
	return n > 0 ? 0 : TRANSPORT_ETLS;
}

/* The own certificate (the first in the PEM text), its chain (the rest) and the key. */
static int
use_own(SSL_CTX *ctx, const char *cert_pem, const char *key_pem)
{
	int rv = TRANSPORT_ETLS;
	BIO *cb = BIO_new_mem_buf(cert_pem, -1);
	BIO *kb = BIO_new_mem_buf(key_pem, -1);
	X509 *x = NULL;
	EVP_PKEY *k = NULL;
	if (cb == NULL || kb == NULL) {
		rv = TRANSPORT_ENOMEM;
		goto out;
	}
	if ((x = PEM_read_bio_X509(cb, NULL, NULL, NULL)) == NULL ||
	    SSL_CTX_use_certificate(ctx, x) != 1)
		goto out;
	X509 *c;
	while ((c = PEM_read_bio_X509(cb, NULL, NULL, NULL)) != NULL)
		if (SSL_CTX_add0_chain_cert(ctx, c) != 1) {
			X509_free(c);
			goto out;
		}
	ERR_clear_error();
	if ((k = PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL)) == NULL ||
	    SSL_CTX_use_PrivateKey(ctx, k) != 1 || SSL_CTX_check_private_key(ctx) != 1)
		goto out;
	rv = 0;
out:
	X509_free(x);
	EVP_PKEY_free(k);
	BIO_free(cb);
	BIO_free(kb);
	ERR_clear_error();
	return rv;
}

static int
ctx_new(const struct tls_material *m, bool server, SSL_CTX **out)
{
	SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (ctx == NULL)
		return TRANSPORT_ENOMEM;
	int rv = TRANSPORT_ETLS;
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		goto err;
	if ((rv = add_cas(SSL_CTX_get_cert_store(ctx), m->ca)) != 0 ||
	    (rv = use_own(ctx, m->cert, m->key)) != 0)
		goto err;
	SSL_CTX_set_verify(
	    ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
	    NULL);
	/* connections last; nothing is resumed, so no tickets or cache (and no bytes the
	   server writes after its handshake) */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
	if (server)
		SSL_CTX_set_num_tickets(ctx, 0);
	*out = ctx;
	return 0;
err:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return rv;
}

int
transport__tls_ctx(const struct tls_material *m, struct ssl_ctx_st **srv, struct ssl_ctx_st **cli)
{
	SSL_CTX *s = NULL, *c = NULL;
	int rv;
	if ((rv = ctx_new(m, true, &s)) != 0)
		return rv;
	if ((rv = ctx_new(m, false, &c)) != 0) {
		SSL_CTX_free(s);
		return rv;
	}
	*srv = s;
	*cli = c;
	return 0;
}
