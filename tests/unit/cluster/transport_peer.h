/* transport_peer.h: what transport_peer (a peer process) and test_transport_restart share. */
#ifndef RELAY_TRANSPORT_PEER_H
#define RELAY_TRANSPORT_PEER_H

#define TP_KIND_HELLO 5u /* peer -> test: "hello PID N", every TP_HELLO_MS */
#define TP_KIND_PING 6u	 /* test -> peer: any text */
#define TP_KIND_PONG 7u	 /* peer -> test: "pong PID <ping text>" */
#define TP_HELLO_MS 50
#define TP_MSG_MAX 128

#endif
