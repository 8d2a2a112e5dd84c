# Unit tests of cluster/transport (NNG peer and admin messaging over loopback).
# The tests generate their certificates at run time with scripts/make-cluster-certs.sh;
# test_transport links nng itself only to play a hostile raw peer.
#
# test_transport is one binary with two CTest entries (its arguments are cmocka globs: FILTER
# [SKIP]): unit.test_transport runs the cases without TLS, unit.test_transport_tls the ones
# whose name says "tls".  Only the TLS entry, and test_transport_restart, run LeakSanitizer with
# lsan-nng-tls.supp: there peers go away in the middle of TLS handshakes, and what NNG 1.5.2
# leaks then is NNG's own (that file says exactly what and why).
add_executable(test_transport ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_transport.c)
target_link_libraries(test_transport PRIVATE relay_transport relay_proto nng::nng PkgConfig::UV
                      Threads::Threads PkgConfig::CMOCKA)
target_compile_definitions(test_transport PRIVATE
  RELAY_CERT_SCRIPT="${PROJECT_SOURCE_DIR}/scripts/make-cluster-certs.sh")
add_test(NAME unit.test_transport COMMAND test_transport "*" "*tls*")
add_test(NAME unit.test_transport_tls COMMAND test_transport "*tls*")
set_tests_properties(unit.test_transport unit.test_transport_tls PROPERTIES LABELS unit
                     TIMEOUT 300)

# A peer in its own process (transport_peer) and the test that crashes and restarts it against a
# long-lived node in the test process (test_transport_restart): cluster TLS and plain TCP.
add_executable(transport_peer ${CMAKE_CURRENT_SOURCE_DIR}/unit/transport_peer.c)
target_link_libraries(transport_peer PRIVATE relay_transport nng::nng PkgConfig::UV)
relay_unit_test(test_transport_restart
                SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_transport_restart.c
                LIBS relay_transport nng::nng PkgConfig::UV)
add_dependencies(test_transport_restart transport_peer)
target_compile_definitions(test_transport_restart PRIVATE
  TRANSPORT_PEER_BIN="$<TARGET_FILE:transport_peer>"
  RELAY_CERT_SCRIPT="${PROJECT_SOURCE_DIR}/scripts/make-cluster-certs.sh")

if(RELAY_SANITIZE)
  set_tests_properties(unit.test_transport_tls unit.test_transport_restart PROPERTIES ENVIRONMENT
    "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/unit/lsan-nng-tls.supp")
endif()
