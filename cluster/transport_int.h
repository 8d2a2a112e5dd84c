/*
 * transport_int.h - inside the transport unit (cluster/transport*.c): what the peer transport
 * and the admin endpoint share, the TLS material read at open (transport_tls.c).  No library
 * header here: the admin endpoint's NNG plumbing is in transport_nng.h, so the peer transport
 * (transport.c) never sees <nng/...> (tests/layout).
 */
#ifndef RELAY_TRANSPORT_INT_H
#define RELAY_TRANSPORT_INT_H

#include <stdbool.h>

#define TRANSPORT_URL_MAX 300 /* an address, a URL, a host name */

/* The PEM material of one endpoint, read at open.  All owned; NULL when TLS is off. */
struct tls_material {
	char *ca;   /* CA chain */
	char *cert; /* own cert */
	char *key;  /* own key: wiped before free */
};

/* The peer transport's OpenSSL contexts from m (transport_tls.c): *srv requires a client cert
 * chained to m->ca, *cli a server cert chained to it; both present m's cert.  The caller frees
 * them (SSL_CTX_free).  0, TRANSPORT_ETLS or TRANSPORT_ENOMEM. */
struct ssl_ctx_st;
int transport__tls_ctx(const struct tls_material *m, struct ssl_ctx_st **srv,
		       struct ssl_ctx_st **cli);
/* Read ca/cert/key (all three or none); *on tells whether TLS is on.  0 or TRANSPORT_E*. */
int transport__tls_load(struct tls_material *m, const char *ca, const char *cert, const char *key,
			bool *on);
/* Free m (the key wiped first). */
void transport__tls_fini(struct tls_material *m);

#endif
