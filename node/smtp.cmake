# node/smtp.cmake: relay_smtp, the pure SMTP server session machine (no I/O, no libuv).
add_library(relay_smtp STATIC
  ${CMAKE_CURRENT_SOURCE_DIR}/smtp_session.c
  ${CMAKE_CURRENT_SOURCE_DIR}/smtp_addr.c
  ${CMAKE_CURRENT_SOURCE_DIR}/smtp_received.c)
target_include_directories(relay_smtp PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
