# delivery area fuzz harnesses (included from tests/fuzz/).
foreach(_t fuzz_mta_reply fuzz_dns_answer fuzz_tls_records)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_t}.c)
    relay_fuzz_target(${_t} SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/${_t}.c LIBS relay_delivery)
  endif()
endforeach()
