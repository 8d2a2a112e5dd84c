# tests/unit/smtp.cmake: the SMTP session machine's cmocka tests (included from tests/).
relay_unit_test(test_smtp_session
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_smtp_session.c
  LIBS relay_smtp)
# allocation-failure tests: malloc/calloc/realloc of relay_smtp and the test go through
# wrappers that fail on demand
relay_unit_test(test_smtp_nomem
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_smtp_nomem.c
  LIBS relay_smtp)
target_link_options(test_smtp_nomem PRIVATE
  -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc)
