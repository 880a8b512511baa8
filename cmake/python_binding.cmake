# pybind11 module masked_ops._kernels: the same kernels without TensorFlow (see
# csrc/python/module.cpp). Optional: without pybind11 or the Python headers the
# rest of the build goes on. With the CUDA kernels (cmake/cuda.cmake sets
# MASKED_OPS_BUILT_WITH_CUDA and defines masked_ops_cuda_kernels) it also
# exposes the CUDA launchers.

execute_process(
  COMMAND ${Python3_EXECUTABLE} -m pybind11 --cmakedir
  OUTPUT_VARIABLE MASKED_OPS_PYBIND11_DIR
  OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE MASKED_OPS_PYBIND11_RC
  ERROR_QUIET)
if(NOT MASKED_OPS_PYBIND11_RC EQUAL 0)
  message(WARNING "masked_ops: pybind11 is not installed for ${Python3_EXECUTABLE}; "
                  "the masked_ops._kernels binding is not built")
  return()
endif()

find_package(Python3 COMPONENTS Interpreter Development.Module)
if(NOT Python3_Development.Module_FOUND)
  message(WARNING "masked_ops: no Python headers for ${Python3_EXECUTABLE}; "
                  "the masked_ops._kernels binding is not built")
  return()
endif()
find_package(pybind11 CONFIG REQUIRED PATHS ${MASKED_OPS_PYBIND11_DIR} NO_DEFAULT_PATH)
find_package(Threads REQUIRED)

# NO_EXTRAS: no link-time optimization, so the kernels are compiled exactly as
# in the TF library and both give bitwise-equal results.
# Every csrc/python/*.cpp, one per concern: a new file needs no edit here.
file(GLOB MASKED_OPS_BINDING_SOURCES CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_LIST_DIR}/../csrc/python/*.cpp)
pybind11_add_module(masked_ops_kernels MODULE NO_EXTRAS ${MASKED_OPS_BINDING_SOURCES})
set_target_properties(masked_ops_kernels PROPERTIES
  OUTPUT_NAME _kernels
  LIBRARY_OUTPUT_DIRECTORY ${MASKED_OPS_OUTPUT_DIR})
target_compile_options(masked_ops_kernels PRIVATE ${MASKED_OPS_CPU_KERNEL_FLAGS} -Wall -Wextra)
target_link_libraries(masked_ops_kernels PRIVATE Threads::Threads)

if(MASKED_OPS_BUILT_WITH_CUDA)
  # The kernels library brings its CUDA runtime; the binding calls it too
  # (pointer attributes, current device), so it needs the headers.
  find_package(CUDAToolkit REQUIRED)
  target_compile_definitions(masked_ops_kernels PRIVATE MASKED_OPS_WITH_CUDA)
  target_include_directories(masked_ops_kernels SYSTEM PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(masked_ops_kernels PRIVATE masked_ops_cuda_kernels)
  target_link_options(masked_ops_kernels PRIVATE "LINKER:--exclude-libs,libcudart_static.a")
endif()
