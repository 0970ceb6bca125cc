# PathlineTorch.cmake: finds the LibTorch that Pathline and its plugins build against.
#
#   pathline_find_torch([PYTHONS python...] [HINTS dir...])
#
# Where it looks, first match wins:
#   1. what the user names: -DTorch_DIR=<libtorch>/share/cmake/Torch, -DCMAKE_PREFIX_PATH=<libtorch>
#      or Torch_ROOT (pytorch.org's archive, CPU or CUDA, or any LibTorch);
#   2. the HINTS (the installed SDK package passes the Torch its engine was built with);
#   3. the torch of each Python in PYTHONS, through torch.utils.cmake_prefix_path (the project's
#      .venv/bin/python made by tools/install-deps.sh, then python3).
# It stops with one message when none is found or the one found is older than
# PATHLINE_TORCH_MINIMUM_VERSION, and sets:
#   PATHLINE_TORCH_VERSION  e.g. 2.15.0
#   PATHLINE_TORCH_CUDA     ON when LibTorch has CUDA compiled in (target torch_cuda)
#   PATHLINE_TORCH_NCCL     ON when it also has c10d's NCCL backend and nccl.h was found
#   PATHLINE_TORCH_GLOO     ON when it has c10d's Gloo backend
#
# With a CUDA LibTorch it also mends how consumers link it: LibTorch's CMake package links the CUDA
# runtime of the CUDA toolkit it finds on the machine (which can be older than the one LibTorch was
# built with, as pip's torch wheels bring their own CUDA libraries). Pathline's code calls no CUDA
# runtime function itself, so that link is dropped; libtorch_cuda loads the runtime it was built
# with through its own RPATH, and the linker is told where those libraries are (-rpath-link).

set(PATHLINE_TORCH_MINIMUM_VERSION 2.5)

macro(pathline_find_torch)
  cmake_parse_arguments(_pft "" "" "PYTHONS;HINTS" ${ARGN})
  set(_pft_hints ${_pft_HINTS})
  if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
    foreach(_pft_python IN LISTS _pft_PYTHONS)
      if(IS_ABSOLUTE "${_pft_python}" AND NOT EXISTS "${_pft_python}")
        continue()
      endif()
      execute_process(
        COMMAND "${_pft_python}" -c "import torch.utils; print(torch.utils.cmake_prefix_path, end='')"
        OUTPUT_VARIABLE _pft_prefix
        RESULT_VARIABLE _pft_status
        ERROR_QUIET)
      if(_pft_status EQUAL 0 AND IS_DIRECTORY "${_pft_prefix}/Torch")
        list(APPEND _pft_hints "${_pft_prefix}/Torch")
        break()
      endif()
    endforeach()
  endif()

  # A CUDA LibTorch's package otherwise compiles and runs a CUDA program to list the GPUs' compute
  # capabilities (and fails on a machine without a GPU, or with C++20 set). Pathline compiles no
  # CUDA code of its own, so any list will do; a user's own TORCH_CUDA_ARCH_LIST is kept.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  # TorchConfig.cmake looks for its own libraries with find_library(... PATHS <prefix>/lib), which
  # searches the system folders first: with Debian's libtorch-dev installed beside the pinned torch,
  # the headers of one would be linked with the libraries of the other. The candidate prefixes join
  # CMAKE_PREFIX_PATH (searched before the system folders) for this one call.
  set(_pft_saved_prefix_path "${CMAKE_PREFIX_PATH}")
  set(_pft_dirs ${_pft_hints})
  if(Torch_DIR)
    list(PREPEND _pft_dirs "${Torch_DIR}")
  elseif(DEFINED ENV{Torch_DIR})
    list(PREPEND _pft_dirs "$ENV{Torch_DIR}")
  endif()
  foreach(_pft_dir IN LISTS _pft_dirs)
    get_filename_component(_pft_prefix "${_pft_dir}/../../.." ABSOLUTE)
    list(APPEND CMAKE_PREFIX_PATH "${_pft_prefix}")
  endforeach()
  find_package(Torch CONFIG QUIET HINTS ${_pft_hints})
  set(CMAKE_PREFIX_PATH "${_pft_saved_prefix_path}")
  if(Torch_FOUND AND TORCH_LIBRARY)
    get_filename_component(_pft_libdir "${TORCH_LIBRARY}" DIRECTORY)
    get_filename_component(_pft_libdir "${_pft_libdir}" REALPATH)
    get_filename_component(_pft_own "${TORCH_INSTALL_PREFIX}/lib" REALPATH)
    if(NOT _pft_libdir STREQUAL _pft_own)
      message(FATAL_ERROR
        "LibTorch at ${TORCH_INSTALL_PREFIX} would link ${TORCH_LIBRARY}, another LibTorch's library "
        "(TORCH_LIBRARY in this build folder's cache). Configure a fresh build folder, or pass "
        "-DTorch_DIR=${Torch_DIR} -DCMAKE_PREFIX_PATH=${TORCH_INSTALL_PREFIX}.")
    endif()
  endif()
  if(NOT Torch_FOUND)
    message(FATAL_ERROR
      "Pathline needs LibTorch ${PATHLINE_TORCH_MINIMUM_VERSION} or newer and found none. "
      "Run `bash tools/install-deps.sh` (it installs the pinned torch into .venv/), or name a LibTorch "
      "with -DTorch_DIR=<libtorch>/share/cmake/Torch or -DCMAKE_PREFIX_PATH=<libtorch>.")
  endif()
  set(PATHLINE_TORCH_VERSION "${Torch_VERSION}")
  if(NOT PATHLINE_TORCH_VERSION)
    # Older packages without a version file: read it from the header.
    file(STRINGS "${TORCH_INSTALL_PREFIX}/include/torch/csrc/api/include/torch/version.h" _pft_line
         REGEX "#define TORCH_VERSION \"")
    string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" PATHLINE_TORCH_VERSION "${_pft_line}")
  endif()
  if(PATHLINE_TORCH_VERSION VERSION_LESS PATHLINE_TORCH_MINIMUM_VERSION)
    message(FATAL_ERROR
      "Pathline needs LibTorch ${PATHLINE_TORCH_MINIMUM_VERSION} or newer; the one at ${Torch_DIR} is "
      "${PATHLINE_TORCH_VERSION}. Run `bash tools/install-deps.sh` (it installs the pinned torch into "
      ".venv/) and configure a fresh build folder, or name a newer LibTorch with -DTorch_DIR.")
  endif()

  # The package names MKL's library folders on the machine LibTorch was built on (/lib/intel64 and
  # the like), which would land in every binary's RUNPATH; libtorch_cpu links MKL itself.
  if(TARGET caffe2::mkl)
    set_property(TARGET caffe2::mkl PROPERTY INTERFACE_LINK_DIRECTORIES "")
  endif()

  set(PATHLINE_TORCH_CUDA OFF)
  set(PATHLINE_TORCH_NCCL OFF)
  set(PATHLINE_TORCH_GLOO OFF)
  if(TARGET torch_cpu)
    get_target_property(_pft_defs torch_cpu INTERFACE_COMPILE_DEFINITIONS)
    if("USE_C10D_GLOO" IN_LIST _pft_defs)
      set(PATHLINE_TORCH_GLOO ON)
    endif()
  endif()
  if(TARGET torch_cuda)
    set(PATHLINE_TORCH_CUDA ON)
    get_target_property(_pft_cuda_lib torch_cuda IMPORTED_LOCATION_RELEASE)
    if(NOT _pft_cuda_lib)
      get_target_property(_pft_cuda_lib torch_cuda IMPORTED_LOCATION)
    endif()
    get_filename_component(_pft_cuda_libdir "${_pft_cuda_lib}" DIRECTORY)
    # The folders libtorch_cuda finds its CUDA libraries in: its RPATH/RUNPATH, $ORIGIN expanded.
    file(READ_ELF "${_pft_cuda_lib}" RPATH _pft_rpath RUNPATH _pft_runpath CAPTURE_ERROR _pft_elf_error)
    set(_pft_libdirs)
    string(REPLACE ":" ";" _pft_entries "${_pft_rpath};${_pft_runpath}")
    foreach(_pft_entry IN LISTS _pft_entries)
      string(REPLACE "$ORIGIN" "${_pft_cuda_libdir}" _pft_entry "${_pft_entry}")
      if(_pft_entry AND IS_DIRECTORY "${_pft_entry}")
        get_filename_component(_pft_entry "${_pft_entry}" REALPATH)
        list(APPEND _pft_libdirs "${_pft_entry}")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES _pft_libdirs)
    # CUDA headers for the c10/ATen CUDA headers and c10d's NCCL backend: those shipped beside
    # the libraries LibTorch loads (pip's nvidia-* wheels) first, then the CUDA toolkit's.
    set(_pft_includes)
    foreach(_pft_dir IN LISTS _pft_libdirs)
      if(IS_DIRECTORY "${_pft_dir}/../include")
        get_filename_component(_pft_inc "${_pft_dir}/../include" REALPATH)
        list(APPEND _pft_includes "${_pft_inc}")
      endif()
    endforeach()
    if(CUDAToolkit_INCLUDE_DIRS)
      list(APPEND _pft_includes ${CUDAToolkit_INCLUDE_DIRS})
    endif()
    list(REMOVE_DUPLICATES _pft_includes)
    foreach(_pft_target torch_cuda c10_cuda)
      if(TARGET ${_pft_target})
        get_target_property(_pft_links ${_pft_target} INTERFACE_LINK_LIBRARIES)
        if(_pft_links)
          list(REMOVE_ITEM _pft_links torch::cudart CUDA::cudart caffe2::cudart)
          set_target_properties(${_pft_target} PROPERTIES INTERFACE_LINK_LIBRARIES "${_pft_links}")
        endif()
      endif()
    endforeach()
    set_property(TARGET torch_cuda APPEND PROPERTY INTERFACE_INCLUDE_DIRECTORIES ${_pft_includes})
    if(_pft_libdirs)
      list(JOIN _pft_libdirs ":" _pft_joined)
      set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_pft_joined}")
    endif()
    get_target_property(_pft_defs torch_cuda INTERFACE_COMPILE_DEFINITIONS)
    if("USE_C10D_NCCL" IN_LIST _pft_defs)
      find_path(PATHLINE_NCCL_INCLUDE_DIR nccl.h HINTS ${_pft_includes})
      if(PATHLINE_NCCL_INCLUDE_DIR)
        set(PATHLINE_TORCH_NCCL ON)
      endif()
    endif()
  endif()
endmacro()
