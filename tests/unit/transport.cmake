# Unit tests of cluster/transport (NNG peer and admin messaging over loopback).
# The test generates its certificates at run time with scripts/make-cluster-certs.sh and links
# nng itself only to play a hostile raw peer.
relay_unit_test(test_transport SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_transport.c
                LIBS relay_transport relay_proto nng::nng PkgConfig::UV Threads::Threads)
target_compile_definitions(test_transport PRIVATE
  RELAY_CERT_SCRIPT="${PROJECT_SOURCE_DIR}/scripts/make-cluster-certs.sh")
# Under LeakSanitizer: NNG's own TLS connection state, left behind by the NNG/mbedTLS stall the
# TLS reconnect case retries around, is not a leak of ours (lsan-nng-tls.supp says exactly what).
if(RELAY_SANITIZE)
  set_tests_properties(unit.test_transport PROPERTIES ENVIRONMENT
    "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/unit/lsan-nng-tls.supp")
endif()
