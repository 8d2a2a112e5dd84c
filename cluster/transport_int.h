/*
 * transport_int.h - inside the transport unit (transport.c, transport_admin.c, transport_ep.c):
 * what the peer transport and the admin endpoint share, addresses and TLS material over NNG
 * (transport_ep.c).  Nothing outside cluster/transport*.c includes it (the unit is the one
 * home of <nng/...>: tests/layout).
 */
#ifndef RELAY_TRANSPORT_INT_H
#define RELAY_TRANSPORT_INT_H

#include <stdbool.h>

#include <nng/nng.h>

#define TRANSPORT_URL_MAX 300
/* How long a bounded close (and transport_close) waits for NNG's socket close before leaving it
 * behind. */
#define TRANSPORT_CLOSE_WAIT_MS 3000

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
/* Listen on addr ("host:port") with sock, TLS server config from m when tls; *port gets the
 * bound port. */
int transport__listen_on(nng_socket sock, bool tls, const struct tls_material *m, const char *addr,
			 nng_listener *l, int *port);
/* Listen on a unix socket path (mode 0600). */
int transport__listen_unix(nng_socket sock, const char *path);
/* Start a dialer on sock that reconnects forever (closed with the socket); *out may be NULL. */
int transport__dial_to(nng_socket sock, bool tls, const struct tls_material *m,
		       const char *server_name, const char *addr, nng_dialer *out);
/* nng_close(sock) on a helper thread, waited for at most TRANSPORT_CLOSE_WAIT_MS: NNG 1.5.2's
 * close waits for its connections to be reaped, forever once the process-wide reaper is stuck
 * (nanomsg/nng#1543).  Returns true if it returned in time; else it is left behind (logged as
 * event=close-stuck with what) and the helper ends if it ever returns.  Nothing of the caller's
 * may be reached from sock's callbacks after this (the helper only holds the socket). */
bool transport__close_bounded(nng_socket sock, const char *what);

#endif
