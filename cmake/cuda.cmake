# CUDA kernels (csrc/kernels/*.cu): a static library without TensorFlow headers,
# linked into the TF op library (GPU kernels registered) and the binding.
# MASKED_OPS_CUDA (cache or environment): AUTO (default: build when a CUDA
# compiler is found), ON (required) or OFF. Any nvcc works: CUDACXX or
# CMAKE_CUDA_COMPILER picks one (a CUDA 12 nvcc for R525-R570 drivers, see
# README.md). CMAKE_CUDA_ARCHITECTURES overrides the architectures (default:
# SASS for sm_75 to sm_90, plus sm_70 with nvcc < 13, which still supports it,
# and PTX for sm_90 so newer GPUs can JIT-compile it).
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

set(MASKED_OPS_CUDA_DEFAULT_ARCHITECTURES OFF)
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(MASKED_OPS_CUDA_DEFAULT_ARCHITECTURES ON)
endif()
enable_language(CUDA)
if(MASKED_OPS_CUDA_DEFAULT_ARCHITECTURES)
  set(MASKED_OPS_ARCHS "75-real;80-real;86-real;89-real;90")
  if(CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13)
    list(PREPEND MASKED_OPS_ARCHS "70-real")
  endif()
  set(CMAKE_CUDA_ARCHITECTURES "${MASKED_OPS_ARCHS}" CACHE STRING
      "CUDA architectures of the kernels" FORCE)
endif()
find_package(CUDAToolkit REQUIRED)
message(STATUS "CUDA kernels: on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
               "${CMAKE_CUDA_ARCHITECTURES}; the static CUDA ${CUDAToolkit_VERSION_MAJOR} runtime "
               "needs a driver supporting CUDA ${CUDAToolkit_VERSION_MAJOR}.x)")

# IEEE arithmetic, no contraction: subnormals are kept on every path, and the
# same operations round the same way on every GPU architecture (PTX mul/add
# without a rounding mode may be fused into FMA differently per target) and
# as on the CPU (-ffp-contract=off there).
if(CMAKE_CUDA_FLAGS MATCHES "use_fast_math|ftz=true|fmad=true|prec-div=false|prec-sqrt=false")
  message(FATAL_ERROR "CMAKE_CUDA_FLAGS='${CMAKE_CUDA_FLAGS}' asks for fast math; the masked_ops "
                      "kernels keep IEEE semantics (subnormals, no FMA contraction): drop it")
endif()
set(MASKED_OPS_CUDA_IEEE_FLAGS --ftz=false --prec-div=true --prec-sqrt=true --fmad=false)

# Settings shared by every CUDA object of the kernels library.
function(masked_ops_cuda_settings target)
  # cudart is linked statically (below), so the library runs beside whichever
  # CUDA runtime TensorFlow loads; only the driver must be new enough for it.
  set_target_properties(${target} PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON
    CUDA_RUNTIME_LIBRARY None
    CUDA_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr ${MASKED_OPS_CUDA_IEEE_FLAGS}
                               -Xcompiler=-Wall,-Wextra>)
endfunction()

add_library(masked_ops_cuda_kernels STATIC ${CMAKE_CURRENT_SOURCE_DIR}/csrc/kernels/cuda_common.cu)
masked_ops_cuda_settings(masked_ops_cuda_kernels)
# Named in the error of a launch on a GPU the kernels were not built for.
string(REPLACE ";" "," MASKED_OPS_ARCHS_TEXT "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(masked_ops_cuda_kernels PRIVATE
  "MASKED_OPS_CUDA_ARCHITECTURES=\"${MASKED_OPS_ARCHS_TEXT}\"")
# The launchers of every loss in csrc/kernels/loss_list.h: one translation unit
# per loss (slot), so that nvcc compiles them in parallel.
set(MASKED_OPS_CUDA_LOSS_SLOTS 8)
math(EXPR MASKED_OPS_LAST_SLOT "${MASKED_OPS_CUDA_LOSS_SLOTS} - 1")
foreach(slot RANGE 0 ${MASKED_OPS_LAST_SLOT})
  add_library(masked_ops_cuda_loss_${slot} OBJECT
              ${CMAKE_CURRENT_SOURCE_DIR}/csrc/kernels/masked_loss_instances.cu)
  masked_ops_cuda_settings(masked_ops_cuda_loss_${slot})
  target_compile_definitions(masked_ops_cuda_loss_${slot} PRIVATE
    MASKED_OPS_CUDA_LOSS_SLOT=${slot} MASKED_OPS_CUDA_LOSS_SLOTS=${MASKED_OPS_CUDA_LOSS_SLOTS})
  target_sources(masked_ops_cuda_kernels PRIVATE $<TARGET_OBJECTS:masked_ops_cuda_loss_${slot}>)
endforeach()
# LINK_ONLY: consumers get the runtime but not the CUDA include path, so the TF
# glue cannot pick up CUDA headers by accident. dl: driver_version() loads
# libcuda itself.
target_link_libraries(masked_ops_cuda_kernels PUBLIC $<LINK_ONLY:CUDA::cudart_static> ${CMAKE_DL_LIBS})
set(MASKED_OPS_BUILT_WITH_CUDA ON)

if(TARGET masked_ops_tf)
  target_link_libraries(masked_ops_tf PRIVATE masked_ops_cuda_kernels)
  target_compile_definitions(masked_ops_tf PRIVATE MASKED_OPS_WITH_CUDA=1)
  # Keep the static CUDA runtime's symbols inside the library, away from any
  # runtime TensorFlow has loaded.
  target_link_options(masked_ops_tf PRIVATE "LINKER:--exclude-libs,libcudart_static.a")
endif()
