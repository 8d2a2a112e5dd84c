# tests/fuzz/abuse.cmake: what a stranger or a peer can feed relayd beyond SMTP (issue 12):
# cluster frames and forwarded proposals from a peer, admin requests from a client (against the
# real admin endpoint over a real single node), and the DSN builder's inputs.
relay_fuzz_target(fuzz_cluster_frame SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_cluster_frame.c
  LIBS relay_transport relay_raft relay_queue relay_storage relay_proto)
relay_fuzz_target(fuzz_admin_request SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_admin_request.c
  LIBS relay_admin relay_cluster relay_config)
relay_fuzz_target(fuzz_dsn SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_dsn.c LIBS relay_delivery)
