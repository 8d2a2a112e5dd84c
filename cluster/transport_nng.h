/*
 * transport_nng.h - the admin endpoint's NNG plumbing (transport_ep.c), for transport_admin.c:
 * listening and dialing with mutual TLS from the shared material (transport_int.h), and a
 * bounded socket close.  With transport_admin.c and transport_ep.c, the one home of <nng/...>
 * (tests/layout).
 */
#ifndef RELAY_TRANSPORT_NNG_H
#define RELAY_TRANSPORT_NNG_H

#include <stdbool.h>

#include <nng/nng.h>

#include "transport_int.h"

/* How long a bounded close waits for NNG's socket close before leaving it behind. */
#define TRANSPORT_CLOSE_WAIT_MS 3000

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
