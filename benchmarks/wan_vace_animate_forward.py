"""One Wan VACE / Wan Animate transformer forward, dense versus radial, at full width with random bf16 weights.

The real configs (``radial_attention.testing.configs``: Wan2.1-VACE-14B, Wan2.2-Animate-14B) with
``--layers`` (default 10) of their 40 main blocks (VACE: and the control blocks whose ``vace_layers`` fall below
that, which run first; every block costs the same, so a forward grows by one block's time per
layer), on the latent of their usual video:

- VACE 832x480, 81 frames and one reference image: 1 + 21 latent frames x 1560 tokens;
- VACE 1280x720, 81 frames, no reference image: 21 x 3600;
- Animate 1280x720, one segment of 77 frames: the reference image's latent frame + 20, x 3600
  (face video 77 x 512 x 512 for its motion encoder, 512 text tokens, 257 CLIP image tokens).

    python benchmarks/wan_vace_animate_forward.py --out results/            # on the GPU
    python benchmarks/wan_vace_animate_forward.py --smoke --out /tmp/wva     # tiny models on the CPU (checks the script)

Prints one line per case and writes ``wan_vace_animate_forward.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    remove_radial_attention,
)
from radial_attention.testing import configs, tiny  # noqa: E402

# case -> (family, latent [F, H, W] of hidden_states, F counting the reference frame)
CASES = {
    "wan-vace-14b-832x480x81+1ref": ("vace", (22, 60, 104)),
    "wan-vace-14b-1280x720x81": ("vace", (21, 90, 160)),
    "wan-animate-14b-1280x720-seg77": ("animate", (21, 90, 160)),
}


def _model(family, layers, smoke, dev):
    if smoke:
        if family == "vace":
            return tiny.tiny_wan_vace_transformer(num_layers=layers, vace_layers=(0,))
        return tiny.tiny_wan_animate_transformer(num_layers=layers)
    from diffusers import WanAnimateTransformer3DModel, WanVACETransformer3DModel

    if family == "vace":
        cfg = dict(configs.WAN_VACE_14B, num_layers=layers)
        cfg["vace_layers"] = [i for i in cfg["vace_layers"] if i < layers]  # 0 always stays
        cls = WanVACETransformer3DModel
    else:
        # A face adapter after every 5th block (blocks 0, 5, ...): layers // 5 of them, one per 5 blocks.
        if layers % 5:
            raise SystemExit(
                f"--layers must be a multiple of 5 for Wan Animate (a face adapter per 5 blocks), got {layers}"
            )
        cfg = dict(configs.WAN_ANIMATE_14B, num_layers=layers)
        cls = WanAnimateTransformer3DModel
    torch.manual_seed(0)
    with torch.device(dev):
        model = cls(**cfg)
    return model.to(torch.bfloat16).eval()


def _inputs(model, family, f, h, w, dev):
    if family == "vace":
        kwargs = tiny.wan_vace_inputs(model, f, h, w, text_len=512)
    else:
        kwargs = tiny.wan_animate_inputs(model, f, h, w, image_tokens=257)
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _time(model, kwargs, reps):
    """Median ms of ``reps`` forwards after one warm-up (kernel JIT, mask build)."""
    cuda = torch.cuda.is_available()
    with torch.no_grad():
        model(**kwargs)
        times = []
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**kwargs)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--layers", type=int, default=10, help="main blocks (VACE: plus its control blocks below that; Animate: 5k)"
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--out", default=".")
    ap.add_argument("--smoke", action="store_true", help="tiny models and latents, float32 on the CPU")
    args = ap.parse_args()
    dev = "cpu" if args.smoke else "cuda"
    results = []
    for name in args.cases.split(","):
        family, (f, h, w) = CASES[name]
        if args.smoke:
            f, h, w = 6, 14, 12  # T = 42, S = 252: four 64-blocks
        model = _model(family, args.layers, args.smoke, dev)
        kwargs = _inputs(model, family, f, h, w, dev)
        dense_ms = _time(model, kwargs, args.reps)
        with torch.no_grad():
            dense_out = model(**kwargs)[0].float()
        state = apply_radial_attention(model, backend=args.backend, block_size=64 if args.smoke else 128)
        radial_ms = _time(model, kwargs, args.reps)
        with torch.no_grad():
            radial_out = model(**kwargs)[0].float()
        summary = state.summary()
        remove_radial_attention(model)
        assert summary["radial_calls"] == (1 + args.reps + 1) * len(attention_modules(model))
        row = dict(
            case=name,
            layers=args.layers,
            attention_layers=len(attention_modules(model)),  # VACE: control blocks + main blocks
            latent=[f, h, w],
            masks=summary["masks"],
            preset=state.config.preset,
            dense_ms=round(dense_ms, 2),
            radial_ms=round(radial_ms, 2),
            speedup=round(dense_ms / radial_ms, 3),
            rel_diff_vs_dense=float((radial_out - dense_out).abs().max() / dense_out.abs().max()),
        )
        results.append(row)
        print(json.dumps(row), flush=True)
        del model
        if dev == "cuda":
            torch.cuda.empty_cache()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(gpu=torch.cuda.get_device_name() if dev == "cuda" else "cpu (smoke)", torch=torch.__version__)
    (out / "wan_vace_animate_forward.json").write_text(json.dumps(dict(env=env, results=results), indent=1))


if __name__ == "__main__":
    main()
