# CMake package file of an installed diffgentor: find_package(diffgentor [VERSION] [REQUIRED]).
#
# Installed (copied verbatim, nothing substituted) by `make install` as
# <prefix>/lib/cmake/diffgentor/diffgentorConfig.cmake next to diffgentorConfigVersion.cmake.
# The prefix is found relative to this file, so the install is relocatable. It expects the
# layout of `make install`: <prefix>/lib/libdiffgentor.so (-> .so.<major> -> .so.<version>),
# <prefix>/include/diffgentor.h and <prefix>/include/diffgentor.hpp.
#
# Imported targets:
#   diffgentor::diffgentor  the C++17 binding (diffgentor.hpp) with the C header and library
#   diffgentor::c           the C library and diffgentor.h alone (for C programs)
# Variables: diffgentor_VERSION (from diffgentorConfigVersion.cmake), diffgentor_INCLUDE_DIR,
# diffgentor_LIBRARY.

get_filename_component(_dg_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
set(diffgentor_INCLUDE_DIR "${_dg_prefix}/include")
set(diffgentor_LIBRARY "${_dg_prefix}/lib/libdiffgentor.so")

set(_dg_missing "")
foreach(_dg_file "${diffgentor_LIBRARY}" "${diffgentor_INCLUDE_DIR}/diffgentor.h"
                 "${diffgentor_INCLUDE_DIR}/diffgentor.hpp")
  if(NOT EXISTS "${_dg_file}")
    list(APPEND _dg_missing "${_dg_file}")
  endif()
endforeach()

if(_dg_missing)
  set(diffgentor_FOUND FALSE)
  set(diffgentor_NOT_FOUND_MESSAGE
      "diffgentor installation in ${_dg_prefix} is incomplete; missing: ${_dg_missing}")
else()
  if(NOT TARGET diffgentor::c)
    add_library(diffgentor::c SHARED IMPORTED)
    set_target_properties(diffgentor::c PROPERTIES
      IMPORTED_LOCATION "${diffgentor_LIBRARY}"
      IMPORTED_SONAME "libdiffgentor.so.${diffgentor_VERSION_MAJOR}"
      INTERFACE_INCLUDE_DIRECTORIES "${diffgentor_INCLUDE_DIR}")
  endif()
  if(NOT TARGET diffgentor::diffgentor)
    add_library(diffgentor::diffgentor INTERFACE IMPORTED)
    set_target_properties(diffgentor::diffgentor PROPERTIES
      INTERFACE_LINK_LIBRARIES diffgentor::c
      INTERFACE_COMPILE_FEATURES cxx_std_17)
  endif()
  set(diffgentor_FOUND TRUE)
endif()

unset(_dg_prefix)
unset(_dg_missing)
unset(_dg_file)
