/*
 * transport_peer.c: a peer in its own process, for test_transport_restart (tests/unit).
 *
 *   transport_peer ID LISTEN PEER_ID PEER_ADDR [CERT_DIR]
 *
 * Opens cluster/transport as node ID on LISTEN ("host:port"), adds PEER_ID at PEER_ADDR and
 * prints "ready PORT\n" on stdout.  Then, until SIGTERM (transport_close, exit 0) or SIGKILL:
 *   - every TP_HELLO_MS it sends kind TP_KIND_HELLO "hello PID N" to the peer (light load);
 *   - each message of kind TP_KIND_PING from the peer is answered with kind TP_KIND_PONG
 *     "pong PID <the ping's payload>", so the peer sees that both directions work.
 * With CERT_DIR, mutual TLS with CERT_DIR/ca.crt, CERT_DIR/ID.crt and CERT_DIR/ID.key
 * (scripts/make-cluster-certs.sh); without it plain TCP.  Exits 2 on bad usage or when the
 * transport does not open.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "transport.h"
#include "transport_peer.h"

static uv_loop_t loop;
static uv_timer_t hello;
static uv_signal_t term;
static struct transport *t;
static const char *peer_id;
static unsigned long n_hello;

static void
recv_cb(void *arg, const char *from, uint32_t kind, const void *data, size_t len)
{
	if (kind != TP_KIND_PING || strcmp(from, peer_id) != 0)
		return;
	char buf[TP_MSG_MAX];
	int n = snprintf(buf, sizeof(buf), "pong %ld %.*s", (long)getpid(),
			 (int)(len < 64 ? len : 64), (const char *)data);
	if (n > 0 && (size_t)n < sizeof(buf))
		(void)transport_send(t, peer_id, TP_KIND_PONG, buf, (size_t)n);
}

static void
hello_cb(uv_timer_t *h)
{
	char buf[TP_MSG_MAX];
	int n = snprintf(buf, sizeof(buf), "hello %ld %lu", (long)getpid(), n_hello++);
	(void)transport_send(t, peer_id, TP_KIND_HELLO, buf, (size_t)n);
}

static uv_signal_t usr1;

/* SIGUSR1: the transport's counters on stdout (for a stalled test's report). */
static void
usr1_cb(uv_signal_t *h, int sig)
{
	struct transport_stats s;
	if (t == NULL)
		return;
	transport_stats(t, &s);
	printf("node2 transport: sent=%llu received=%llu unauth=%llu malformed=%llu "
	       "handshake_failures=%llu redials=%llu inbound=%u peers_connected=%u\n",
	       (unsigned long long)s.sent, (unsigned long long)s.received,
	       (unsigned long long)s.dropped_unauth, (unsigned long long)s.dropped_malformed,
	       (unsigned long long)s.handshake_failures, (unsigned long long)s.redials, s.inbound,
	       s.peers_connected);
	fflush(stdout);
}

static void
term_cb(uv_signal_t *h, int sig)
{
	uv_close((uv_handle_t *)&usr1, NULL);
	uv_timer_stop(&hello);
	uv_close((uv_handle_t *)&hello, NULL);
	uv_close((uv_handle_t *)&term, NULL);
	transport_close(t, NULL, NULL);
	t = NULL;
}

int
main(int argc, char **argv)
{
	if (argc != 5 && argc != 6) {
		fprintf(stderr, "usage: %s ID LISTEN PEER_ID PEER_ADDR [CERT_DIR]\n", argv[0]);
		return 2;
	}
	char ca[512], cert[512], key[512];
	struct transport_config cfg = {.node_id = argv[1], .listen = argv[2]};
	if (argc == 6) {
		snprintf(ca, sizeof(ca), "%s/ca.crt", argv[5]);
		snprintf(cert, sizeof(cert), "%s/%s.crt", argv[5], argv[1]);
		snprintf(key, sizeof(key), "%s/%s.key", argv[5], argv[1]);
		cfg.ca_file = ca;
		cfg.cert_file = cert;
		cfg.key_file = key;
	}
	peer_id = argv[3];
	uv_loop_init(&loop);
	int rv = transport_open(&loop, &cfg, recv_cb, NULL, &t);
	if (rv != 0) {
		fprintf(stderr, "transport_peer: open %s: %s\n", argv[2], transport_strerror(rv));
		return 2;
	}
	if ((rv = transport_add_peer(t, peer_id, argv[4])) != 0) {
		fprintf(stderr, "transport_peer: add_peer %s: %s\n", argv[4],
			transport_strerror(rv));
		return 2;
	}
	uv_timer_init(&loop, &hello);
	uv_timer_start(&hello, hello_cb, TP_HELLO_MS, TP_HELLO_MS);
	uv_signal_init(&loop, &term);
	uv_signal_start(&term, term_cb, SIGTERM);
	uv_signal_init(&loop, &usr1);
	uv_signal_start(&usr1, usr1_cb, SIGUSR1);
	printf("ready %d\n", transport_listen_port(t));
	fflush(stdout);
	dup2(STDERR_FILENO, STDOUT_FILENO); /* the reader of "ready" has gone */
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	return 0;
}
