"""Accuracy study of SLA block sizes (docs/sla.md): relative L1 of SLA outputs against the fp32 SLA
semantics with 64x64 blocks (the block size the released checkpoints were tuned with), top-k 0.1, on
the three standard input families (and "smooth", a stand-in with the locality of video tokens), for block sizes 64x64, 128x64, 64x128 and 128x128:
  * "fp32 blocks": the fp32 semantics at that block size (the effect of the block granularity alone);
  * "sagesla": ops.sage_sla at that block size (granularity + INT8/FP8 quantization);
  * "sla bf16": ops.sla at that block size (granularity + bf16);
and, for scale, dense exact attention against the same reference (what top-k drops).
Also prints, per family, the fraction of the reference's kept key blocks (64-key units) that each block
size keeps.

  GPU (the 1.3B-480p shape):  python scripts/sla_block_study.py --device cuda --n 32760 --heads 12
  CPU (reduced; the sparse kernel runs as its Python emulation):  python scripts/sla_block_study.py --device cpu --n 2048 --heads 2
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from _util import attention_inputs, rel_l1  # noqa: E402

from turbodiffusion import ops  # noqa: E402
from turbodiffusion import reference as ref  # noqa: E402

BLOCKS = [(64, 64), (128, 64), (64, 128), (128, 128)]
FAMILIES = ["gaussian", "bias", "peaky", "smooth"]


def smooth_inputs(h, n, d, seed, device):
    """q, k, v [1, N, H, D] with locality, a stand-in for video tokens: q and k share a field that varies
    smoothly along N (gaussian noise averaged over 129 tokens, unit std) plus independent noise, so each
    query attends mostly to nearby keys and the pooled means carry the structure the block map looks for."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(h * d, 1, n + 128, generator=g)
    field = torch.nn.functional.avg_pool1d(noise, 129, stride=1).view(h, d, n).permute(2, 0, 1) * math.sqrt(129)
    q = 0.5 * field + torch.randn(n, h, d, generator=g)
    k = 0.5 * field + torch.randn(n, h, d, generator=g)
    v = torch.randn(n, h, d, generator=g)
    return tuple(x[None].to(device=device, dtype=torch.bfloat16).contiguous() for x in (q, k, v))


def fp32_sla(q, k, v, w, b, lut, count, blkq, blkk, chunk):
    """fp32 SLA semantics with the given LUT, query blocks in chunks (O(chunk x N) memory), [B, N, H, D]."""
    n = q.shape[1]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    rows = chunk // blkq * blkq
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        qc = q[:, r0:r1]
        sel = slice(r0 // blkq, -(-r1 // blkq))
        o_s, _ = ref.sla.sla_masked_attention(qc, k, v, lut[:, :, sel], count[:, :, sel], "NHD", blkq, blkk)
        o_l = ref.sla.sla_linear_branch(qc, k, v, "NHD")
        out[:, r0:r1] = (o_s + o_l @ w.T + b).transpose(1, 2)
    return out


def dense_fp32(q, k, v, chunk):
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for r0 in range(0, q.shape[1], chunk):
        o, _ = ref.attention_exact(q[:, r0:r0 + chunk], k, v, "NHD", dtype=torch.float32)
        out[:, r0:r0 + chunk] = o.transpose(1, 2)
    return out


def kept_overlap(lut_ref, lut, blkq, blkk, mk64):
    """Fraction of the 64x64 reference's kept (query 64-block, key 64-block) pairs that `lut` also keeps."""
    def pairs(l, bq, bk):
        b, h, mq, kept = l.shape
        m = torch.zeros(b, h, mq, -(-mk64 * 64 // bk), dtype=torch.bool, device=l.device)
        m.scatter_(-1, l.long(), True)
        return m.repeat_interleave(bq // 64, 2).repeat_interleave(bk // 64, 3)[..., :mk64]
    a, c = pairs(lut_ref, 64, 64), pairs(lut, blkq, blkk)
    a = a[:, :, : c.shape[2]]
    c = c[:, :, : a.shape[2]]
    return ((a & c).sum() / a.sum().clamp_min(1)).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=32760)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--topk", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=4096, help="query rows per chunk of the fp32 reference")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--inputs", help="a torch.save'd dict of captured q, k, v [1, N, H, D] (e.g. one Wan self-attention "
                                    "call): studied as family 'captured' (sets --n, --heads, --d)")
    a = p.parse_args()
    captured = None
    if a.inputs:
        captured = {key: t.to(device=a.device, dtype=torch.bfloat16).contiguous()
                    for key, t in torch.load(a.inputs, map_location="cpu").items() if key in ("q", "k", "v")}
        _, a.n, a.heads, a.d = captured["q"].shape
        a.families = "captured"
    dev, n, h, d = a.device, a.n, a.heads, a.d
    print(f"# SLA block-size study: B 1, N {n}, H {h}, D {d}, top-k {a.topk}, device {dev}, seed {a.seed}\n")
    print("| family | blocks | kept blocks/row | kept 64x64 pairs of the reference | fp32 blocks rel L1 | "
          "sagesla rel L1 | sla bf16 rel L1 | dense rel L1 |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(a.seed)
    w = (torch.randn(d, d, generator=g) / math.sqrt(d)).to(dev)
    bias = (0.1 * torch.randn(d, generator=g)).to(dev)
    for fi, family in enumerate(a.families.split(",")):
        s = a.seed * 10 + fi
        if family == "captured":
            q, k, v = captured["q"], captured["k"], captured["v"]
        elif family == "smooth":
            q, k, v = smooth_inputs(h, n, d, s, dev)
        else:
            q = attention_inputs(1, h, n, d, "NHD", torch.bfloat16,
                                 family="peaky" if family == "peaky" else "gaussian", seed=s, device=dev)
            k = attention_inputs(1, h, n, d, "NHD", torch.bfloat16, family=family, seed=s + 1, device=dev)
            v = attention_inputs(1, h, n, d, "NHD", torch.bfloat16, seed=s + 2, device=dev)
        lut64, cnt64 = ops.sla_block_map(q, k, topk=a.topk, blkq=64, blkk=64)
        reference = fp32_sla(q, k, v, w, bias, lut64, cnt64, 64, 64, a.chunk)
        lin = (ref.sla.sla_linear_branch(q, k, v, "NHD") @ w.T + bias).transpose(1, 2)
        dense = rel_l1(dense_fp32(q, k, v, a.chunk) + lin, reference)  # all keys in the softmax branch
        for blkq, blkk in BLOCKS:
            lut, cnt = ops.sla_block_map(q, k, topk=a.topk, blkq=blkq, blkk=blkk)
            fp32 = rel_l1(fp32_sla(q, k, v, w, bias, lut, cnt, blkq, blkk, a.chunk), reference)
            sage = rel_l1(ops.sage_sla(q, k, v, w, bias, a.topk, blkq=blkq, blkk=blkk, lut=lut, count=cnt).float(),
                          reference)
            bf16 = rel_l1(ops.sla(q, k, v, w, bias, a.topk, blkq=blkq, blkk=blkk).float(), reference) \
                if n <= 8192 else float("nan")  # ops.sla materialises an N x N mask per head
            overlap = kept_overlap(lut64, lut, blkq, blkk, -(-n // 64))
            print(f"| {family} | {blkq}x{blkk} | {lut.shape[-1]} | {overlap:.3f} | {fp32:.4f} | {sage:.4f} | "
                  f"{bf16:.4f} | {dense:.4f} |", flush=True)


if __name__ == "__main__":
    main()
