# Version file of the diffgentor CMake package (see diffgentorConfig.cmake); installed verbatim as
# <prefix>/lib/cmake/diffgentor/diffgentorConfigVersion.cmake. The version is read from the
# installed C header (DG_VERSION_*), so it always matches the installed library. Compatibility:
# same major version (the ABI, i.e. the SONAME number) and at least the requested version.

get_filename_component(_dg_header "${CMAKE_CURRENT_LIST_DIR}/../../../include/diffgentor.h"
                       ABSOLUTE)
set(PACKAGE_VERSION "")
if(EXISTS "${_dg_header}")
  file(STRINGS "${_dg_header}" _dg_lines REGEX "^#define DG_VERSION_(MAJOR|MINOR|PATCH) [0-9]+$")
  foreach(_dg_part MAJOR MINOR PATCH)
    set(_dg_${_dg_part} "")
    foreach(_dg_line IN LISTS _dg_lines)
      if(_dg_line MATCHES "^#define DG_VERSION_${_dg_part} ([0-9]+)$")
        set(_dg_${_dg_part} "${CMAKE_MATCH_1}")
      endif()
    endforeach()
  endforeach()
  if(NOT _dg_MAJOR STREQUAL "" AND NOT _dg_MINOR STREQUAL "" AND NOT _dg_PATCH STREQUAL "")
    set(PACKAGE_VERSION "${_dg_MAJOR}.${_dg_MINOR}.${_dg_PATCH}")
  endif()
endif()

if(PACKAGE_VERSION STREQUAL "")
  set(PACKAGE_VERSION "0")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)  # no readable header: not an installation we can use
elseif(NOT DEFINED PACKAGE_FIND_VERSION OR PACKAGE_FIND_VERSION STREQUAL "")
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
elseif(PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION
       OR NOT PACKAGE_FIND_VERSION_MAJOR STREQUAL _dg_MAJOR)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_VERSION VERSION_EQUAL PACKAGE_FIND_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()

unset(_dg_header)
unset(_dg_lines)
unset(_dg_line)
unset(_dg_part)
unset(_dg_MAJOR)
unset(_dg_MINOR)
unset(_dg_PATCH)
