"""Pure-PyTorch references: the executable specification of every op (and their CPU implementation)."""
from .quant import (  # noqa: F401
    int8_blockwise,
    quantize_per_token_int8,
    quantize_qk_int8,
    quantize_v_fp8,
    v_token_permutation,
)
