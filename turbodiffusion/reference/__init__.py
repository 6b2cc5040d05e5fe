"""Pure-PyTorch references: the executable specification of every op (and their CPU implementation)."""
from .quant import (  # noqa: F401
    int8_blockwise,
    quantize_per_token_int8,
    quantize_qk_int8,
    quantize_v_fp8,
    v_token_permutation,
)
from .gemm import block128_to_per_channel, gemm_accumulator, w8a8_gemm  # noqa: F401,E402
from . import attention  # noqa: F401,E402
from .attention import attention_exact, attention_int8_fp8_mma, attention_int8_fp8_sm90  # noqa: F401,E402
from . import sla  # noqa: F401,E402
from .sla import (  # noqa: F401,E402
    attention_int8_fp8_sparse_mma,
    attention_int8_fp8_sparse_sm90,
    sla_attention,
    sla_block_map,
    sla_block_map_quantize_qk,
    sla_linear_state,
)
