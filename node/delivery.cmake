# delivery: the pure delivery cores (mta_session, mx, dsn, retry) and the
# c-ares/libuv resolver glue.  resolver.c is the only file that includes <ares.h>.
set(_dlv_sources)
foreach(_f mta_session.c mx.c dsn.c retry.c resolver.c)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_f})
    list(APPEND _dlv_sources ${CMAKE_CURRENT_SOURCE_DIR}/${_f})
  endif()
endforeach()
add_library(relay_delivery STATIC ${_dlv_sources})
target_include_directories(relay_delivery PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(relay_delivery PUBLIC PkgConfig::CARES PkgConfig::UV)
