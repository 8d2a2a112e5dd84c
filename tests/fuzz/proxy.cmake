relay_fuzz_target(fuzz_proxy SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_proxy.c LIBS relay_proxy)
