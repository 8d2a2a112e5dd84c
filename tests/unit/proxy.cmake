relay_unit_test(test_proxy SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_proxy.c LIBS relay_proxy)
