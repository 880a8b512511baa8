# XLA lowerings of the ops (csrc/tf/xla/), so they compile under jit_compile=True.
# TensorFlow's shipped tf2xla headers include farmhash and highwayhash, which the
# wheel lacks (Debian: libfarmhash-dev libhighwayhash-dev), and the lowerings link
# libtensorflow_cc. Without them the library is built without lowerings and
# Python emits the equivalent pure-TF formula under XLA instead.
# MASKED_OPS_XLA (environment, else cache): AUTO (default), ON (required) or OFF.
if(NOT TARGET masked_ops_tf)
  return()
endif()
set(MASKED_OPS_XLA AUTO CACHE STRING "Build XLA lowerings: AUTO, ON or OFF")
if(DEFINED ENV{MASKED_OPS_XLA})
  set(MASKED_OPS_XLA $ENV{MASKED_OPS_XLA} CACHE STRING "Build XLA lowerings: AUTO, ON or OFF" FORCE)
endif()

if(NOT MASKED_OPS_XLA STREQUAL "OFF")
  find_path(MASKED_OPS_FARMHASH_INCLUDE_DIR farmhash.h)
  find_path(MASKED_OPS_HIGHWAYHASH_INCLUDE_DIR highwayhash/sip_hash.h)
  find_file(MASKED_OPS_TF_CC_LIBRARY libtensorflow_cc.so.2 PATHS ${TF_LINK_DIRS} NO_DEFAULT_PATH)
  file(GLOB MASKED_OPS_XLA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/tf/xla/*.cc)
  set(MASKED_OPS_XLA_MISSING "")
  foreach(var MASKED_OPS_FARMHASH_INCLUDE_DIR MASKED_OPS_HIGHWAYHASH_INCLUDE_DIR
              MASKED_OPS_TF_CC_LIBRARY)
    if(NOT ${var})
      list(APPEND MASKED_OPS_XLA_MISSING ${var})
    endif()
  endforeach()
  if(MASKED_OPS_XLA_MISSING)
    if(MASKED_OPS_XLA STREQUAL "ON")
      message(FATAL_ERROR "MASKED_OPS_XLA=ON but not found: ${MASKED_OPS_XLA_MISSING} "
                          "(Debian: apt-get install libfarmhash-dev libhighwayhash-dev)")
    endif()
    message(STATUS "XLA lowerings: off (not found: ${MASKED_OPS_XLA_MISSING})")
  else()
    message(STATUS "XLA lowerings: on")
    target_sources(masked_ops_tf PRIVATE ${MASKED_OPS_XLA_SOURCES})
    target_include_directories(masked_ops_tf SYSTEM PRIVATE
      ${MASKED_OPS_FARMHASH_INCLUDE_DIR} ${MASKED_OPS_HIGHWAYHASH_INCLUDE_DIR})
    target_link_libraries(masked_ops_tf PRIVATE ${MASKED_OPS_TF_CC_LIBRARY})
  endif()
endif()
