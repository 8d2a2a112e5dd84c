# Unit tests of storage/ (the store and its in-memory twin), the queue state machine and the
# single-node cluster.  Included from tests/CMakeLists.txt.
relay_unit_test(test_store SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_store.c LIBS relay_storage)
relay_unit_test(test_queue_fsm SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_queue_fsm.c LIBS relay_cluster)
relay_unit_test(test_cluster SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster.c LIBS relay_cluster)
# The replicated cluster: three nodes on one loop over real transports (127.0.12.x).
relay_unit_test(test_cluster_raft SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_cluster_raft.c
                LIBS relay_cluster)
