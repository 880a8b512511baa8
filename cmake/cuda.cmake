# CUDA kernels (csrc/kernels/*.cu): a static library without TensorFlow headers,
# linked into the TF op library (GPU kernels registered) and the binding.
# MASKED_OPS_CUDA (cache or environment): AUTO (default: build when a CUDA
# compiler is found), ON (required) or OFF. CMAKE_CUDA_ARCHITECTURES overrides
# the architectures (default: SASS for sm_75 to sm_90, plus PTX for sm_90 so
# newer GPUs can JIT-compile it).
if(NOT DEFINED MASKED_OPS_CUDA)
  if(DEFINED ENV{MASKED_OPS_CUDA})
    set(MASKED_OPS_CUDA_DEFAULT $ENV{MASKED_OPS_CUDA})
  else()
    set(MASKED_OPS_CUDA_DEFAULT AUTO)
  endif()
  set(MASKED_OPS_CUDA ${MASKED_OPS_CUDA_DEFAULT} CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
endif()
string(TOUPPER "${MASKED_OPS_CUDA}" MASKED_OPS_CUDA_MODE)
if(MASKED_OPS_CUDA_MODE STREQUAL "")
  set(MASKED_OPS_CUDA_MODE AUTO)
endif()
if(NOT MASKED_OPS_CUDA_MODE MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "MASKED_OPS_CUDA must be AUTO, ON or OFF, got '${MASKED_OPS_CUDA}'")
endif()

set(MASKED_OPS_BUILT_WITH_CUDA OFF)
if(MASKED_OPS_CUDA_MODE STREQUAL "OFF")
  message(STATUS "CUDA kernels: off (MASKED_OPS_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(MASKED_OPS_CUDA_MODE STREQUAL "ON")
    message(FATAL_ERROR "MASKED_OPS_CUDA=ON but no CUDA compiler was found "
                        "(put nvcc on PATH or set CUDACXX)")
  endif()
  message(STATUS "CUDA kernels: off (no CUDA compiler found)")
  return()
endif()

if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90" CACHE STRING
      "CUDA architectures of the kernels" FORCE)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
message(STATUS "CUDA kernels: on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
               "${CMAKE_CUDA_ARCHITECTURES})")

file(GLOB MASKED_OPS_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/kernels/*.cu)
add_library(masked_ops_cuda_kernels STATIC ${MASKED_OPS_CUDA_SOURCES})
# cudart is linked statically (below), so the library runs beside whichever CUDA
# runtime TensorFlow loads; only the driver must be new enough for this toolkit.
set_target_properties(masked_ops_cuda_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_RUNTIME_LIBRARY None
  CUDA_VISIBILITY_PRESET hidden
  CXX_VISIBILITY_PRESET hidden)
target_compile_options(masked_ops_cuda_kernels PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -Xcompiler=-Wall,-Wextra>)
# LINK_ONLY: consumers get the runtime but not the CUDA include path, so the TF
# glue cannot pick up CUDA headers by accident.
target_link_libraries(masked_ops_cuda_kernels PUBLIC $<LINK_ONLY:CUDA::cudart_static>)
set(MASKED_OPS_BUILT_WITH_CUDA ON)

if(TARGET masked_ops_tf)
  target_link_libraries(masked_ops_tf PRIVATE masked_ops_cuda_kernels)
  target_compile_definitions(masked_ops_tf PRIVATE MASKED_OPS_WITH_CUDA=1)
  # Keep the static CUDA runtime's symbols inside the library, away from any
  # runtime TensorFlow has loaded.
  target_link_options(masked_ops_tf PRIVATE "LINKER:--exclude-libs,libcudart_static.a")
endif()
