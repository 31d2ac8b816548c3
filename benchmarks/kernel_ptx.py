"""PTX fingerprints of the Triton kernels, compiled on the CPU: does a change to kernels.py change the GPU code?

Compiles the variants of the forward, dQ, dK/dV and delta kernels that ``launch.py``'s config table
launches (sm_90 with its TMA tiles, sm_80 with pointer tiles; every head dim and block size of the
table, key_lengths on and off, a negative scale, fp16/bf16/fp32) with Triton's own compiler for an
NVIDIA target (no GPU needed), and hashes each PTX less its debug lines (``.loc``, ``.file``, debug
sections), so that moved source lines do not count. A restructuring of kernels.py that leaves every
hash unchanged compiles to the same instructions, so it runs at the same speed.

    python benchmarks/kernel_ptx.py --against HEAD~1         # this checkout's kernels.py against a git revision's
    python benchmarks/kernel_ptx.py --quick --out now.json   # head dim 128, block 128 only; hashes as JSON

The integer arguments get the specialization a real launch gives them (pointers and tile strides
divisible by 16; the index-list strides are ``do_not_specialize``); the fingerprint is for comparing
two versions of the kernels, not a copy of one particular launch. Exit status 1 when a hash differs.
About 3-4 s a variant on one CPU core (47 variants; ``--quick`` 29).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KERNELS = "radial_attention/ops/triton/kernels.py"
KINDS = {"fwd": "_fwd_kernel", "dq": "_bwd_dq_kernel", "dkdv": "_bwd_dkdv_kernel"}
FP32_POINTERS = {"LSE", "DELTA"}
INT32_POINTERS = {"KV_IDX", "KV_CNT", "ROW_ORDER", "KEY_LEN", "Q_IDX", "Q_CNT", "COL_ORDER"}
FLOATS = {"qk_scale", "ds_scale"}
UNSPECIALIZED_INTS = {"H", "S", "S_PAD", "NB"}  # sizes: a launch specializes them only when they happen to divide by 16
TILE_ARGS = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV"}


@dataclasses.dataclass(frozen=True)
class Variant:
    kind: str  # "fwd" | "dq" | "dkdv" | "delta"
    dtype: str  # "bf16" | "fp16" | "fp32"
    head_dim: int
    block_size: int
    capability: int  # 90 or 80
    use_tma: bool
    has_key_len: bool
    neg_scale: bool
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int

    def name(self) -> str:
        return (
            f"{self.kind} {self.dtype} D{self.head_dim} bs{self.block_size} sm{self.capability}"
            f"{' tma' if self.use_tma else ''}{' kl' if self.has_key_len else ''}{' neg' if self.neg_scale else ''}"
            f" {self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"
        )


def variants(quick: bool) -> list:
    """The launched variants of the config table (bf16 at every shape; the other options at D=128, bs=128)."""
    from radial_attention.ops.triton import launch

    out = []
    for (kind, cap, head_dim, bs), cfg in launch._CONFIGS.items():
        capability = 90 if cap >= (9, 0) else 80
        if quick and (head_dim, bs) != (128, 128):
            continue
        for has_key_len in (True, False):
            for neg_scale in (False, True) if kind == "fwd" else (False,):
                if (not has_key_len or neg_scale) and (head_dim, bs) != (128, 128):
                    continue
                out.append(Variant(kind, "bf16", head_dim, bs, capability, cfg.use_tma, has_key_len, neg_scale,
                                   cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages))  # fmt: skip
        if (head_dim, bs) == (128, 128):
            out.append(Variant(kind, "fp16", head_dim, bs, capability, cfg.use_tma, True, False,
                               cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages))  # fmt: skip
        if (head_dim, bs) == (64, 64):
            # float32 runs exact dots with 64 x 64 tiles, 4 warps, 2 stages (launch._config)
            out.append(Variant(kind, "fp32", head_dim, bs, capability, cfg.use_tma, True, False, 64, 64, 4, 2))
    out.append(Variant("delta", "bf16", 128, 128, 90, False, False, False, 128, 128, 4, 3))
    return out


def strip_debug(ptx: str) -> str:
    """PTX without line information and debug sections (their content follows source positions)."""
    kept, in_debug = [], False
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith(".section") and "debug" in s:
            in_debug = True
        elif in_debug:
            in_debug = s != "}"
        elif not (s.startswith((".loc", ".file", "$L__func_begin", "$L__func_end", "$L__tmp"))):
            kept.append(line)
    return "\n".join(kept)


def compile_variant(module, v: Variant) -> str:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(module, KINDS.get(v.kind, "_bwd_delta_kernel"))
    constants = dict(
        BS=v.block_size, BLOCK_M=v.block_m, BLOCK_N=v.block_n, D=v.head_dim, HAS_KEY_LEN=v.has_key_len,
        NEG_SCALE=v.neg_scale, USE_TMA=v.use_tma, DOT_PREC="ieee" if v.dtype == "fp32" else "tf32",
        OUT_DTYPE={"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}[v.dtype], INTERPRET=False,
        BLOCK=v.block_m,
    )  # fmt: skip
    signature, constexprs, attrs = {}, {}, {}
    unspecialized = set(fn.do_not_specialize) | UNSPECIALIZED_INTS
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr:
            signature[name], constexprs[name] = "constexpr", constants[name]
            continue
        if name in TILE_ARGS:
            rows = v.block_n if name in ("K", "V", "DK", "DV") else v.block_m
            signature[name] = f"tensordesc<{v.dtype}[1, 1, {rows}, {v.head_dim}]>" if v.use_tma else f"*{v.dtype}"
            aligned = not v.use_tma
        elif name in FP32_POINTERS or name in INT32_POINTERS:
            signature[name], aligned = ("*fp32" if name in FP32_POINTERS else "*i32"), True
        elif name in FLOATS:
            signature[name], aligned = "fp32", False
        else:
            signature[name], aligned = "i32", name not in unspecialized
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, signature, constexprs, attrs)
    options = {"num_warps": v.num_warps, "num_stages": v.num_stages}
    kernel = triton.compile(src, target=GPUTarget("cuda", v.capability, 32), options=options)
    return hashlib.sha256(strip_debug(kernel.asm["ptx"]).encode()).hexdigest()[:16]


def load_kernels(path: pathlib.Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fingerprints(path: pathlib.Path, name: str, todo: list) -> dict:
    module = load_kernels(path, name)
    result = {}
    for v in todo:
        result[v.name()] = compile_variant(module, v)
        print(f"  {name}: {v.name()}: {result[v.name()]}", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REV", help="compare with kernels.py at this git revision")
    parser.add_argument("--quick", action="store_true", help="head dim 128, block size 128 only")
    parser.add_argument("--out", type=pathlib.Path, help="write the hashes (and the revision's) as JSON")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
    # A fresh cache: every variant is compiled, none is read back from an earlier run.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="kernel_ptx_cache_")
    todo = variants(args.quick)
    report = {"now": fingerprints(ROOT / KERNELS, "kernels_now", todo)}
    if args.against:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.against}:{KERNELS}"], capture_output=True, text=True, check=True
        ).stdout
        with tempfile.TemporaryDirectory() as tmp:
            old = pathlib.Path(tmp) / "kernels.py"
            old.write_text(text)
            report[args.against] = fingerprints(old, "kernels_then", todo)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    if not args.against:
        return 0
    differ = [name for name, h in report["now"].items() if report[args.against][name] != h]
    print(f"{len(todo) - len(differ)} of {len(todo)} variants compile to the same PTX as at {args.against}")
    for name in differ:
        print(f"  differs: {name}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
