# relay_unit_test(NAME SOURCES a.c b.c LIBS x y)
#   builds a cmocka test executable NAME (in the room's build dir) and registers it as unit.NAME
#   with label "unit".
function(relay_unit_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} PkgConfig::CMOCKA)
  add_test(NAME unit.${name} COMMAND ${name})
  set_tests_properties(unit.${name} PROPERTIES LABELS unit TIMEOUT 300)
endfunction()
