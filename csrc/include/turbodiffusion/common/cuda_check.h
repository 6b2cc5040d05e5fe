// Error checking for CUDA runtime calls in torch-free code: failures throw std::runtime_error
// (which torch turns into a Python RuntimeError), never exit().
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#define TD_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t td_err_ = (expr);                                                             \
    if (td_err_ != cudaSuccess) {                                                             \
      throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorString(td_err_) +     \
                               " at " __FILE__ ":" + std::to_string(__LINE__) + ": " #expr);  \
    }                                                                                         \
  } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define TD_CHECK_LAUNCH() TD_CUDA_CHECK(cudaGetLastError())
