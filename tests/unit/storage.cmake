# Unit tests of storage/ (the store and its in-memory twin), the queue state machine and the
# single-node cluster.  Included from tests/CMakeLists.txt.
relay_unit_test(test_store SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_store.c LIBS relay_storage)
relay_unit_test(test_queue_fsm SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_queue_fsm.c LIBS relay_cluster)
relay_unit_test(test_cluster SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster.c LIBS relay_cluster)
# The replicated cluster: three nodes on one loop over real transports (127.0.12.x).  Each case
# runs in its own process: NNG 1.5.2 can hang a socket close for good (nanomsg/nng#1543; the
# transport then leaves it behind after 3 s), and a process where that happened cannot close
# sockets any more.
add_executable(test_cluster_raft ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_raft.c)
target_link_libraries(test_cluster_raft PRIVATE relay_cluster PkgConfig::CMOCKA)
foreach(_case peers_parse replicate_failover_restart close_fails_pending_once
        no_quorum_times_out_then_commits snapshot_catch_up hostile_frames)
  add_test(NAME unit.test_cluster_raft.${_case} COMMAND test_cluster_raft test_${_case})
  set_tests_properties(unit.test_cluster_raft.${_case} PROPERTIES LABELS unit TIMEOUT 300)
endforeach()
# The lease core of delivery ownership (cluster/ownership.c): pure, simulated time.
relay_unit_test(test_ownership SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_ownership.c LIBS relay_cluster)
relay_unit_test(test_queue_own SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_queue_own.c LIBS relay_cluster)
