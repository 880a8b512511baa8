# MASKED_OPS_SANITIZE: build the CPU kernels and the pybind11 binding with
# AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`, together
# with MASKED_OPS_BINDING_ONLY=ON: TensorFlow does not run under ASan). Any
# undefined behaviour aborts instead of being reported and skipped. The module
# needs the sanitizer runtimes preloaded into the (uninstrumented) Python.
option(MASKED_OPS_SANITIZE "Build the kernels and the binding with ASan and UBSan" OFF)
if(MASKED_OPS_SANITIZE)
  set(MASKED_OPS_SANITIZE_FLAGS
      -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  foreach(target masked_ops_kernels masked_ops_tf)
    if(TARGET ${target})
      target_compile_options(${target} PRIVATE ${MASKED_OPS_SANITIZE_FLAGS})
      target_link_options(${target} PRIVATE ${MASKED_OPS_SANITIZE_FLAGS})
    endif()
  endforeach()
  message(STATUS "Sanitizers: ${MASKED_OPS_SANITIZE_FLAGS}")
endif()
