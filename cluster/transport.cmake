# cluster/transport.cmake: relay_transport, peer and admin messaging over NNG (transport.h):
# transport.c carries the peer messages, transport_admin.c the admin endpoint (both over
# transport_int.h, whose endpoint plumbing is transport_ep.c), transport_raft.c encodes and
# decodes Raft messages.
# The only target that uses nng; it stays PRIVATE so nothing else includes <nng/nng.h>.
add_library(relay_transport STATIC ${CMAKE_CURRENT_LIST_DIR}/transport.c
            ${CMAKE_CURRENT_LIST_DIR}/transport_ep.c ${CMAKE_CURRENT_LIST_DIR}/transport_admin.c
            ${CMAKE_CURRENT_LIST_DIR}/transport_raft.c)
target_include_directories(relay_transport PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(relay_transport PUBLIC PkgConfig::UV PRIVATE relay_proto nng::nng Threads::Threads)
