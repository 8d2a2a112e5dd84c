# tests/fuzz/smtp.cmake: libFuzzer harness of the SMTP session machine (included from tests/fuzz/).
relay_fuzz_target(fuzz_smtp_session
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_smtp_session.c
  LIBS relay_smtp)
