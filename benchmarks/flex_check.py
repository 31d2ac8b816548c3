"""GPU correctness of the FlexAttention backend (``radial_attention.ops.flex``), forward and backward.

CI runs Flex only on the CPU and only forward (torch has no CPU backward for it), so its gradients
and its CUDA kernels are checked here: each case runs the flex backend on awkward inputs (S not a
multiple of the block, batch 2, per-batch/per-head masks with empty and full rows, key_lengths
that empty a whole batch item, a [B, S, H, D] layout, 64- and 128-blocks, fp16/bf16/fp32, head
dims 64/128) and compares outputs and q/k/v gradients with a float64 masked softmax. The error
allowed is twice that of torch's dense SDPA (math kernel, same dtype, same token mask) against the
same float64 result, or a small floor. A last case runs the op inside torch.compile(fullgraph=True)
with backward.

    python benchmarks/flex_check.py              # GPU: all cases, fwd + bwd
    python benchmarks/flex_check.py --smoke      # CPU: tiny sizes, forward only
Exit status 1 if any case fails; ``--out DIR`` also writes ``flex_check.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from radial_attention.mask import BlockSparseMask  # noqa: E402
from radial_attention.ops import block_sparse_attention  # noqa: E402
from radial_attention.testing.oracle import masked_attention_f64, token_allowed  # noqa: E402

CASES = [
    # dtype, D, bs, B, H, S, mask batch/head dims, key_lengths, [B, S, H, D] layout
    dict(dtype="bfloat16", D=128, bs=128, B=2, H=3, S=1000, mdims=(1, 3), kl=[1000, 0], bshd=True),
    dict(dtype="bfloat16", D=128, bs=64, B=2, H=2, S=700, mdims=(2, 1), kl=[650, 129], bshd=False),
    dict(dtype="float16", D=64, bs=128, B=1, H=2, S=1024, mdims=(), kl=None, bshd=False),
    dict(dtype="float16", D=64, bs=64, B=2, H=2, S=333, mdims=(2, 2), kl=[333, 64], bshd=True),
    dict(dtype="float32", D=128, bs=128, B=2, H=1, S=515, mdims=(), kl=[300, 515], bshd=False),
    dict(dtype="float32", D=64, bs=64, B=1, H=2, S=256, mdims=(1, 2), kl=None, bshd=True),
]
SMOKE_CASES = [
    dict(dtype="float32", D=64, bs=128, B=2, H=2, S=200, mdims=(1, 2), kl=[200, 0], bshd=True),
    dict(dtype="bfloat16", D=64, bs=64, B=1, H=2, S=150, mdims=(), kl=None, bshd=False),
]
FLOOR = {"float32": 1e-5, "bfloat16": 1e-2, "float16": 2e-3}


def f64_attention(q, k, v, m4, bs, kl, scale):
    """The float64 oracle (radial_attention.testing.oracle), computed on q's device."""
    return masked_attention_f64(q, k, v, m4, bs, scale, kl, device=q.device)


def sdpa_same_dtype(q, k, v, allowed, scale):
    """Dense SDPA (math) in q's dtype with the token mask; rows with no key set to 0."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    has = allowed.any(-1, keepdim=True)
    return out.masked_fill(~has, 0.0)


def grads(fn, q, k, v, g):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), g.to(out.dtype)))


def max_err(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def run_case(case, device, backward: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    dtype = getattr(torch, case["dtype"])
    B, H, S, D, bs = case["B"], case["H"], case["S"], case["D"], case["bs"]
    nb = -(-S // bs)
    m = torch.rand(*case["mdims"], nb, nb) < 0.4
    m[..., 0, :] = False  # an empty query block
    m[..., nb - 1, :] = True  # a full one
    mask = BlockSparseMask(m, bs)
    kl = None if case["kl"] is None else torch.tensor(case["kl"], device=device)
    if case["bshd"]:  # [B, S, H, D] viewed as [B, H, S, D]
        q, k, v = (torch.randn(B, S, H, D, device=device, dtype=dtype).transpose(1, 2) for _ in range(3))
    else:
        q, k, v = (torch.randn(B, H, S, D, device=device, dtype=dtype) for _ in range(3))
    scale = D**-0.5
    m4 = mask.dense4d()
    allowed = token_allowed(m4, B, H, S, bs, kl, device=device)
    flex = lambda q, k, v: block_sparse_attention(q, k, v, mask, backend="flex", key_lengths=kl)  # noqa: E731
    rec = {"case": case}
    t0 = time.perf_counter()
    if not backward:
        with torch.no_grad():
            out = flex(q, k, v)
        want = f64_attention(q, k, v, m4, bs, kl, scale)
        base = sdpa_same_dtype(q, k, v, allowed, scale)
        rec["out_err"], rec["sdpa_out_err"] = max_err(out, want), max_err(base, want)
        rec["ok"] = bool(torch.isfinite(out).all()) and rec["out_err"] <= max(
            2 * rec["sdpa_out_err"], FLOOR[case["dtype"]]
        )
    else:
        g = torch.randn(B, H, S, D, device=device)
        got = grads(flex, q, k, v, g)
        want = grads(lambda q, k, v: f64_attention(q, k, v, m4, bs, kl, scale), q.double(), k.double(), v.double(), g)
        base = grads(lambda q, k, v: sdpa_same_dtype(q, k, v, allowed, scale), q, k, v, g)
        rec["ok"] = True
        for name, a, w, b in zip(("out", "dq", "dk", "dv"), got, want, base):
            e, eb = max_err(a, w), max_err(b, w)
            rec[f"{name}_err"], rec[f"sdpa_{name}_err"] = e, eb
            rec["ok"] &= bool(torch.isfinite(a).all()) and e <= max(
                2 * eb, FLOOR[case["dtype"]] * (1 + w.abs().max().item())
            )
    rec["empty_rows_zero"] = (
        bool(torch.all(got[0][:, :, :bs] == 0)) if backward else bool(torch.all(out[:, :, :bs] == 0))
    )
    rec["ok"] &= rec["empty_rows_zero"]
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def run_compiled(device, backward: bool) -> dict:
    """The op inside torch.compile(fullgraph=True), a pointwise op after it, with backward on CUDA."""
    torch.manual_seed(1)
    B, H, S, D, bs = 2, 2, 300, 64, 128
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    m = torch.rand(1, H, 3, 3) < 0.5
    m[..., 2, :] = True
    mask = BlockSparseMask(m, bs)
    kl = torch.tensor([300, 150], device=device)

    @torch.compile(fullgraph=True)
    def layer(q, k, v, kl):
        return block_sparse_attention(q, k, v, mask, backend="flex", key_lengths=kl) * 2.0

    q, k, v = (torch.randn(B, S, H, D, device=device, dtype=dtype).transpose(1, 2) for _ in range(3))
    m4 = mask.dense4d()
    rec = {"case": "torch.compile(fullgraph=True)"}
    if backward:
        g = torch.randn(B, H, S, D, device=device)
        got = grads(lambda q, k, v: layer(q, k, v, kl), q, k, v, g)
        want = grads(
            lambda q, k, v: 2.0 * f64_attention(q, k, v, m4, bs, kl, D**-0.5), q.double(), k.double(), v.double(), g
        )
        errs = [max_err(a, w) / (1 + w.abs().max().item()) for a, w in zip(got, want)]
    else:
        with torch.no_grad():
            errs = [max_err(layer(q, k, v, kl), 2.0 * f64_attention(q, k, v, m4, bs, kl, D**-0.5)) / 2.0]
    rec["relative_errs"] = errs
    rec["ok"] = all(e < (3e-2 if dtype == torch.bfloat16 else 1e-4) for e in errs)
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny CPU run, forward only")
    p.add_argument("--out", default=None, help="directory for flex_check.json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    backward = device.type == "cuda"
    cases = SMOKE_CASES if args.smoke else CASES
    records = []
    for i, case in enumerate(cases):
        try:
            rec = run_case(case, device, backward, seed=i)
        except Exception as exc:  # keep going: report every case
            rec = {
                "case": case,
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:],
            }
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "trace"}), flush=True)
    try:
        rec = run_compiled(device, backward)
    except Exception as exc:
        rec = {
            "case": "torch.compile(fullgraph=True)",
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc()[-2000:],
        }
    records.append(rec)
    print(json.dumps({k: v for k, v in rec.items() if k != "trace"}), flush=True)
    env = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "backward": backward,
    }
    failed = [r for r in records if not r["ok"]]
    print(f"flex_check on {env['device']} (torch {env['torch']}): {len(records) - len(failed)}/{len(records)} ok")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "flex_check.json").write_text(json.dumps({"env": env, "records": records}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
