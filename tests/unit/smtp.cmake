# tests/unit/smtp.cmake: the SMTP session machine's cmocka tests (included from tests/).
relay_unit_test(test_smtp_session
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_smtp_session.c
  LIBS relay_smtp)
