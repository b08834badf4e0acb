# Fails unless every public C function declared in include/diffgentor.h is called by the C++
# binding's public header(s), i.e. reachable from the C++ API. Run by ctest (c_api_coverage):
#
#   cmake -DHEADER=include/diffgentor.h -DBINDING_DIR=bindings/cpp/include -P c_api_coverage.cmake
#
# A declaration is a line of the header that starts outside a comment or preprocessor line and
# names `dg_<name>(`; a call is `dg_<name>(` in a *.hpp/*.h of BINDING_DIR outside `//` comments
# (tests and examples do not count). A name in the allow-list that is called, or that the header
# no longer declares, also fails, so the list cannot go stale.

cmake_minimum_required(VERSION 3.14)

# Deliberate omissions, each with its reason. Empty: the binding reaches the whole C ABI.
set(ALLOWED
)

foreach(var HEADER BINDING_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "c_api_coverage: pass -D${var}=...")
  endif()
endforeach()

# The lines of a file as a CMake list. `;`, `[` and `]` would split or glue list elements, so
# they become `,`, `<` and `>` first (none of them matters to the patterns below).
function(read_lines file out)
  file(READ "${file}" _text)
  string(REPLACE ";" "," _text "${_text}")
  string(REPLACE "[" "<" _text "${_text}")
  string(REPLACE "]" ">" _text "${_text}")
  string(REPLACE "\n" ";" _text "${_text}")
  set(${out} "${_text}" PARENT_SCOPE)
endfunction()

read_lines("${HEADER}" _header_lines)
set(_declared "")
foreach(_line IN LISTS _header_lines)
  # Skip comment bodies (" * ...", "/**"), preprocessor lines, blank and indented lines
  # (continuations of a parameter list), and the dg_progress_fn typedef.
  if(_line MATCHES "^[ \t]" OR _line MATCHES "^(/|#|\\*|typedef)" OR _line STREQUAL "")
    continue()
  endif()
  if(_line MATCHES "[^A-Za-z0-9_](dg_[a-z0-9_]+)\\(")
    list(APPEND _declared "${CMAKE_MATCH_1}")
  endif()
endforeach()
list(REMOVE_DUPLICATES _declared)
list(LENGTH _declared _n_declared)
# A parser that finds (almost) nothing must not pass vacuously.
if(_n_declared LESS 40)
  message(FATAL_ERROR "c_api_coverage: found only ${_n_declared} declarations in ${HEADER}")
endif()

file(GLOB _binding_files "${BINDING_DIR}/*.hpp" "${BINDING_DIR}/*.h")
set(_code "")
foreach(_file IN LISTS _binding_files)
  read_lines("${_file}" _lines)
  foreach(_line IN LISTS _lines)
    string(REGEX REPLACE "//.*$" "" _line "${_line}")
    string(APPEND _code "${_line}\n")
  endforeach()
endforeach()

set(_missing "")
set(_called 0)
foreach(_fn IN LISTS _declared)
  if(_code MATCHES "(^|[^A-Za-z0-9_])${_fn}\\(")
    math(EXPR _called "${_called} + 1")
    if(_fn IN_LIST ALLOWED)
      message(SEND_ERROR "c_api_coverage: ${_fn} is allow-listed but called: drop it from ALLOWED")
    endif()
  elseif(NOT _fn IN_LIST ALLOWED)
    list(APPEND _missing "${_fn}")
  endif()
endforeach()
foreach(_fn IN LISTS ALLOWED)
  if(NOT _fn IN_LIST _declared)
    message(SEND_ERROR "c_api_coverage: allow-listed ${_fn} is not declared in ${HEADER}")
  endif()
endforeach()

list(LENGTH _missing _n_missing)
if(_n_missing GREATER 0)
  foreach(_fn IN LISTS _missing)
    message(STATUS "c_api_coverage: not called: ${_fn}")
  endforeach()
  string(REPLACE ";" " " _missing "${_missing}")
  message(FATAL_ERROR "c_api_coverage: ${_n_missing} of ${_n_declared} C functions are not "
                      "called in ${BINDING_DIR}: ${_missing}")
endif()
message(STATUS "c_api_coverage: all ${_n_declared} C functions declared in ${HEADER} are called "
               "(${_called}) by ${BINDING_DIR}")
