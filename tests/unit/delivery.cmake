# delivery area unit tests (included from tests/, so paths are relative to tests/).
foreach(_t test_mx test_retry test_mta_session test_dsn test_resolver)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/unit/${_t}.c)
    relay_unit_test(${_t} SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/${_t}.c LIBS relay_delivery)
  endif()
endforeach()
