"""Sequence-parallel radial attention at the op level, on N GPUs (or N CPU processes).

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 torchrun --standalone --nproc-per-node 4 \\
        examples/sequence_parallel_attention.py
    torchrun --standalone --nproc-per-node 2 examples/sequence_parallel_attention.py --cpu    # gloo, tiny

Every rank makes the same q, k, v for a video (Wan2.1 1280x720, 81 frames: 75,600 tokens x 40
heads; --cpu: 8 frames x 64 tokens, 4 heads), keeps its slice of the sequence, runs
``ulysses_radial_attention`` (all-to-all -> radial op with the global mask on H/N heads ->
all-to-all back), gathers the output and, on rank 0, compares it with the attention of the whole
sequence on one device.
"""

import argparse
import time

import torch

from radial_attention.distributed import (
    gather_sequence,
    init_distributed,
    shard_sequence,
    shutdown,
    ulysses_radial_attention,
)
from radial_attention.ops import radial_attention


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="CPU processes joined by gloo, tiny sizes, float32")
    args = p.parse_args()
    ctx = init_distributed(backend="gloo" if args.cpu else None)
    if args.cpu:
        frames, tpf, heads, dim, dtype, bs, backend = 8, 64, 4, 16, torch.float32, 64, "reference"
    else:
        frames, tpf, heads, dim, dtype, bs, backend = 21, 3600, 40, 128, torch.bfloat16, 128, "auto"
    S = frames * tpf
    g = torch.Generator(device=ctx.device).manual_seed(0)
    q, k, v = (
        torch.randn(1, S, heads, dim, generator=g, device=ctx.device, dtype=dtype) for _ in range(3)
    )  # [B, S, H, D]
    layout = dict(frames=frames, tokens_per_frame=tpf, preset="wan", block_size=bs, backend=backend)

    q_local, k_local, v_local = (shard_sequence(t, dim=1) for t in (q, k, v))  # [B, ceil(S/N), H, D]
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out_local = ulysses_radial_attention(q_local, k_local, v_local, layout="BSHD", **layout)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3
    out = gather_sequence(out_local, dim=1, seq_len=S)  # [B, S, H, D] on every rank

    if ctx.is_main:
        ref = radial_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **layout).transpose(1, 2)
        err = (out.float() - ref.float()).abs().max().item()
        print(
            f"{ctx.world_size} rank(s), {S:,} tokens x {heads} heads: {ms:.1f} ms (first call, includes warm-up); "
            f"max |sequence-parallel - one device| = {err:.2e}"
        )
    shutdown()


if __name__ == "__main__":
    main()
