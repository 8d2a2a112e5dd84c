/*
 * stress_transport_close.c: a measurement, not a CTest entry (run it under the ASan build).
 *
 * Node n1 (long-lived) and node n2 send 4 KiB frames to each other as fast as the loop turns;
 * n2 is closed 20-220 ms after it opened, mid-traffic, and opened again on the same address, up
 * to ITERS times: closes with frames half written and half read, handshakes in flight and peers
 * redialing.  Exit 0 when every close returned at once (2.5 s at most) and traffic flowed; 2
 * when a close took longer and traffic resumed afterwards, 1 when it did not.  (Written for
 * the NNG 1.5.2 transport before, whose socket close never returned about once in a few hundred:
 * nanomsg/nng#1543.)
 *
 *   build/tests/unit/cluster/stress_transport_close [ITERS [ADDR1 ADDR2]]
 * (defaults: 4000 127.0.0.91:47001 127.0.0.92:47002)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "transport.h"

static uv_loop_t loop;
static struct transport *t1, *t2;
static unsigned long recv1, recv2;
static char frame[4096];

static void
recv_cb1(void *arg, const char *from, uint32_t kind, const void *d, size_t l)
{
	recv1++;
}

static void
recv_cb2(void *arg, const char *from, uint32_t kind, const void *d, size_t l)
{
	recv2++;
}

static void
send_tick(uv_timer_t *h)
{
	for (int i = 0; i < 20; i++) {
		if (t1 != NULL)
			(void)transport_send(t1, "n2", 1, frame, sizeof(frame));
		if (t2 != NULL)
			(void)transport_send(t2, "n1", 1, frame, sizeof(frame));
	}
}

static void
stop_cb(uv_timer_t *h)
{
	uv_stop(&loop);
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct transport *
open_node(const char *id, const char *listen, transport_recv_cb cb, const char *peer,
	  const char *peer_addr)
{
	struct transport_config c = {.node_id = id, .listen = listen};
	struct transport *t;
	int rv = transport_open(&loop, &c, cb, NULL, &t);
	if (rv != 0 || (rv = transport_add_peer(t, peer, peer_addr)) != 0) {
		fprintf(stderr, "%s: %s\n", id, transport_strerror(rv));
		exit(1);
	}
	return t;
}

static void
run_ms(uv_timer_t *stop, unsigned ms)
{
	uv_timer_start(stop, stop_cb, ms, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
}

int
main(int argc, char **argv)
{
	int iters = argc > 1 ? atoi(argv[1]) : 4000;
	const char *a1 = argc > 3 ? argv[2] : "127.0.0.91:47001";
	const char *a2 = argc > 3 ? argv[3] : "127.0.0.92:47002";
	uv_timer_t tick, stop;
	uv_loop_init(&loop);
	srand((unsigned)getpid());
	uv_timer_init(&loop, &tick);
	uv_timer_init(&loop, &stop);
	uv_timer_start(&tick, send_tick, 1, 1);
	t1 = open_node("n1", a1, recv_cb1, "n2", a2);
	for (int i = 0; i < iters; i++) {
		t2 = open_node("n2", a2, recv_cb2, "n1", a1);
		run_ms(&stop, 20 + (unsigned)(rand() % 200));
		struct transport *t = t2;
		t2 = NULL;
		double t0 = now_s();
		transport_close(t, NULL, NULL);
		double took = now_s() - t0;
		if (took < 2.5) {
			if (i % 100 == 0)
				fprintf(stderr, "close %d: n1 got %lu frames, n2 %lu\n", i, recv1, recv2);
			continue;
		}
		fprintf(stderr, "close %d: did not return (%.1f s); n2 opened again\n", i, took);
		t2 = open_node("n2", a2, recv_cb2, "n1", a1);
		unsigned long r1 = recv1, r2 = recv2;
		double t1s = now_s();
		while (now_s() - t1s < 60 && (recv1 < r1 + 200 || recv2 < r2 + 200))
			run_ms(&stop, 100);
		int ok = recv1 >= r1 + 200 && recv2 >= r2 + 200;
		printf("close %d hung; afterwards n2 got %lu frames and n1 %lu within %.1f s: %s\n", i,
		       recv2 - r2, recv1 - r1, now_s() - t1s,
		       ok ? "traffic resumed" : "traffic did NOT resume");
		return ok ? 2 : 1;
	}
	printf("%d closes mid-traffic, none hung\n", iters);
	return 0;
}
