# cluster/transport.cmake: relay_transport, peer and admin messaging (transport.h):
# transport.c carries the peer messages over libuv TCP with OpenSSL (its contexts in
# transport_tls.c, which also reads the PEM material both share: transport_int.h),
# transport_admin.c the admin endpoint over NNG (its plumbing in transport_ep.c, over
# transport_nng.h), transport_raft.c encodes and decodes Raft messages.
# The only target that uses nng; it stays PRIVATE so nothing else includes <nng/nng.h>.
add_library(relay_transport STATIC ${CMAKE_CURRENT_LIST_DIR}/transport.c
            ${CMAKE_CURRENT_LIST_DIR}/transport_ep.c ${CMAKE_CURRENT_LIST_DIR}/transport_admin.c
            ${CMAKE_CURRENT_LIST_DIR}/transport_raft.c ${CMAKE_CURRENT_LIST_DIR}/transport_tls.c)
target_include_directories(relay_transport PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(relay_transport PUBLIC PkgConfig::UV PRIVATE relay_proto nng::nng OpenSSL::SSL Threads::Threads)
