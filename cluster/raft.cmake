# relay_raft: the Raft core (cluster/raft.c), a pure state machine.  libc only: no I/O, no
# clock, no other library.  Simulator and scenario tests live in tests/sim/.
add_library(relay_raft STATIC ${CMAKE_CURRENT_LIST_DIR}/raft.c)
target_include_directories(relay_raft PUBLIC ${CMAKE_CURRENT_LIST_DIR})
