// Runtime value -> compile-time constant, one small macro per parameter. Each ends in an error
// naming the unsupported value, so a new instantiation is one line here and nothing else.
#pragma once
#include <stdexcept>
#include <string>

#define TD_DISPATCH_CASE(VALUE, NAME, ...) \
  case VALUE: {                            \
    constexpr int NAME = VALUE;            \
    __VA_ARGS__();                         \
    break;                                 \
  }

// Head dims with an instantiation: 64 and 128.
#define TD_DISPATCH_HEAD_DIM(d, NAME, ...)                                                     \
  switch (d) {                                                                                 \
    TD_DISPATCH_CASE(64, NAME, __VA_ARGS__)                                                    \
    TD_DISPATCH_CASE(128, NAME, __VA_ARGS__)                                                   \
    default:                                                                                   \
      throw std::invalid_argument("head dim " + std::to_string(d) + " is not supported (64, 128)"); \
  }

// Element type of 16-bit inputs: is_bf16 selects __nv_bfloat16, otherwise __half.
#define TD_DISPATCH_HALF(is_bf16, T, ...) \
  if (is_bf16) {                          \
    using T = __nv_bfloat16;              \
    __VA_ARGS__();                        \
  } else {                                \
    using T = __half;                     \
    __VA_ARGS__();                        \
  }
