# masked_ops/_math_check.so: the kernels' host float32 math (loss_math.h) over
# arrays, for the tests' checks against float64 (see csrc/python/math_check.cpp).
# A plain shared library loaded with ctypes: no Python or TensorFlow needed.
add_library(masked_ops_math_check MODULE ${CMAKE_CURRENT_LIST_DIR}/../csrc/python/math_check.cpp)
set_target_properties(masked_ops_math_check PROPERTIES
  OUTPUT_NAME _math_check PREFIX "" SUFFIX ".so"
  CXX_VISIBILITY_PRESET hidden
  LIBRARY_OUTPUT_DIRECTORY ${MASKED_OPS_OUTPUT_DIR})
target_compile_options(masked_ops_math_check PRIVATE ${MASKED_OPS_CPU_KERNEL_FLAGS} -Wall -Wextra)
