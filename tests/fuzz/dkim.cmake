# tests/fuzz/dkim.cmake: libFuzzer harness of DKIM's pure part (included from tests/fuzz/).
relay_fuzz_target(fuzz_dkim
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_dkim.c
  LIBS relay_smtp)
