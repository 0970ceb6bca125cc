# pathline_add_plugin(NAME SOURCES src... [OUTPUT_DIRECTORY dir] [LINK_LIBRARIES libs...])
#
# Builds a Pathline plugin: a shared library (lib<NAME>.so) loaded with dlopen, linked against
# LibTorch through the SDK (Pathline::sdk, which also brings the C++ ABI flag LibTorch was built
# with and C++17), with hidden symbol visibility so that only the descriptor (PATHLINE_PLUGIN) and
# the SDK's types are exported.
#
# Used in tree by the built-in plugins and, installed with the PathlineSDK package, out of tree.
#
# Out of tree, every plugin of the project reuses one precompiled header of LibTorch and the SDK
# (target pathline_plugin_pch, made by the first call): LibTorch's headers otherwise cost 20-40 s of
# compiling per source file. Set PATHLINE_PLUGIN_PCH to OFF before the first call to go without.
set(PATHLINE_PLUGIN_PCH ON CACHE BOOL "pathline_add_plugin: share one precompiled header among the plugins")

# The shared precompiled header for plugins built out of tree. Its target is compiled like every
# plugin (position independent, hidden visibility, Pathline::sdk's flags), which is what lets GCC
# use it; plugins drop CMake's -D<name>_EXPORTS, which would differ per target and void it.
function(_pathline_plugin_pch target)
  if(NOT TARGET pathline_plugin_pch)
    set(anchor ${CMAKE_BINARY_DIR}/pathline_plugin_pch.cpp)
    if(NOT EXISTS ${anchor})
      file(WRITE ${anchor} "// Anchor of the precompiled header that the Pathline plugins of this project share.\n")
    endif()
    add_library(pathline_plugin_pch OBJECT ${anchor})
    target_link_libraries(pathline_plugin_pch PRIVATE Pathline::sdk)
    set_target_properties(pathline_plugin_pch PROPERTIES
      POSITION_INDEPENDENT_CODE ON
      CXX_VISIBILITY_PRESET hidden
      VISIBILITY_INLINES_HIDDEN ON)
    target_precompile_headers(pathline_plugin_pch PRIVATE <torch/torch.h> <pathline/plugin.hpp>)
  endif()
  target_precompile_headers(${target} REUSE_FROM pathline_plugin_pch)
  set_target_properties(${target} PROPERTIES DEFINE_SYMBOL "")
endfunction()

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
  # In tree: the precompiled LibTorch header shared by every Pathline target; out of tree: the one
  # the project's plugins share.
  if(COMMAND pathline_use_pch)
    pathline_use_pch(${name})
  elseif(PATHLINE_PLUGIN_PCH)
    _pathline_plugin_pch(${name})
  endif()
endfunction()
