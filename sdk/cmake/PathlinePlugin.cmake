# pathline_add_plugin(NAME SOURCES src... [OUTPUT_DIRECTORY dir] [LINK_LIBRARIES libs...])
#
# Builds a Pathline plugin: a shared library (lib<NAME>.so) loaded with dlopen, linked against
# LibTorch through the SDK (Pathline::sdk, which also brings the C++ ABI flag LibTorch was built
# with and C++17), with hidden symbol visibility so that only the descriptor (PATHLINE_PLUGIN) and
# the SDK's types are exported.
#
# Used in tree by the built-in plugins and, installed with the PathlineSDK package, out of tree.
function(pathline_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIRECTORY" "SOURCES;LINK_LIBRARIES" ${ARGN})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "pathline_add_plugin(${name}): SOURCES is required")
  endif()
  if(NOT TARGET Pathline::sdk)
    message(FATAL_ERROR "pathline_add_plugin(${name}): no target Pathline::sdk; "
                        "call find_package(PathlineSDK CONFIG REQUIRED) first")
  endif()
  add_library(${name} MODULE ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE Pathline::sdk ${ARG_LINK_LIBRARIES})
  set_target_properties(${name} PROPERTIES
    PREFIX "lib"
    SUFFIX ".so"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIRECTORY)
    set_target_properties(${name} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIRECTORY})
  endif()
  # In tree only: the precompiled LibTorch header shared by every Pathline target.
  if(COMMAND pathline_use_pch)
    pathline_use_pch(${name})
  endif()
endfunction()
