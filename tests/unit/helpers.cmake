# relay_unit_test(NAME SOURCES a.c b.c LIBS x y)
#   builds a cmocka test executable NAME (in the room's build dir) and registers it as unit.NAME
#   with label "unit".  tests/unit is on its include path (cmocka_filter.h: a runner that takes a
#   test filter as argv[1] fails when it selects no test).
function(relay_unit_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CMOCKA)
  target_include_directories(${name} PRIVATE ${CMAKE_CURRENT_FUNCTION_LIST_DIR})
  add_test(NAME unit.${name} COMMAND ${name})
  set_tests_properties(unit.${name} PROPERTIES LABELS unit TIMEOUT 300)
endfunction()
