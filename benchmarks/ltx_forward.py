"""One LTX-Video / LTX-2 transformer forward, dense versus radial, at full width with random bf16 weights.

The configs of LTX-Video 0.9.x 2B (32 heads x 64) and LTX-2 (video 32 heads x 128, audio 32 x 64) from
``radial_attention.testing.configs``, with ``--layers`` of their blocks (identical in cost: a forward's
time grows by one block's per layer), on the packed latent of their usual video (32x VAE, 8x in time):
LTX-Video at 768x512x161 (21 x 16 x 24 = 8064 tokens), LTX-2 at 768x512x121 (16 x 384 = 6144 tokens, plus
its audio stream, which stays dense) and at its stage-2 size 1536x1024x121 (16 x 1536 = 24576). Each
case runs radial at block 64 (the families' default; Triton on Hopper, FA4 runs block 128 only) and 128.

    python benchmarks/ltx_forward.py --out results/           # on the GPU
    python benchmarks/ltx_forward.py --smoke --out /tmp/ltx   # tiny width and latent on the CPU (checks the script)

Prints one line per case and block size and writes ``ltx_forward.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention  # noqa: E402
from radial_attention.testing.configs import LTX_2, LTX_VIDEO_2B, without_depth  # noqa: E402

# name -> (family, latent grid [F, H, W] the transformer gets, audio latent frames for LTX-2)
CASES = {
    "ltx-video-2b-768x512x161": ("ltx", (21, 16, 24), None),
    "ltx-2-768x512x121": ("ltx2", (16, 16, 24), 126),  # ~5 s of audio: 121 / 24 fps * 16000 / 160 / 4
    "ltx-2-stage2-1536x1024x121": ("ltx2", (16, 32, 48), 126),
}


def _build(family, layers, smoke, dev, dt):
    from diffusers import LTX2VideoTransformer3DModel, LTXVideoTransformer3DModel

    cls, cfg = (LTXVideoTransformer3DModel, LTX_VIDEO_2B) if family == "ltx" else (LTX2VideoTransformer3DModel, LTX_2)
    cfg = dict(without_depth(cfg), num_layers=layers)
    if smoke:  # same structure, 2 heads, narrow text and audio
        cfg.update(num_attention_heads=2, cross_attention_dim=cfg["attention_head_dim"] * 2, caption_channels=32)
        if family == "ltx2":
            cfg.update(audio_num_attention_heads=2, audio_cross_attention_dim=cfg["audio_attention_head_dim"] * 2)
    torch.manual_seed(0)
    with torch.device(dev):
        model = cls(**cfg)
    return (model if dt == torch.float32 else model.to(dt)).eval()  # float32: no cast (diffusers warns)


def _inputs(model, family, grid, audio_frames, dev, dt, text_len=128):
    cfg = model.config
    f, h, w = grid
    kwargs = dict(
        hidden_states=torch.randn(1, f * h * w, cfg.in_channels, device=dev, dtype=dt),
        encoder_hidden_states=torch.randn(1, text_len, cfg.caption_channels, device=dev, dtype=dt),
        timestep=torch.tensor([500.0], device=dev),  # one call, no CFG
        encoder_attention_mask=torch.ones(1, text_len, device=dev),
        num_frames=f,
        height=h,
        width=w,
        return_dict=False,
    )
    if family == "ltx":
        kwargs["rope_interpolation_scale"] = (torch.tensor(8 / 25.0), 32, 32)
    else:
        kwargs.update(
            audio_hidden_states=torch.randn(1, audio_frames, cfg.audio_in_channels, device=dev, dtype=dt),
            audio_encoder_hidden_states=torch.randn(1, text_len, cfg.caption_channels, device=dev, dtype=dt),
            audio_encoder_attention_mask=torch.ones(1, text_len, device=dev),
            fps=24.0,
            audio_num_frames=audio_frames,
        )
    return kwargs


def _time(model, kwargs, reps):
    """Median ms of ``reps`` forwards after one warm-up (kernel JIT, mask build)."""
    import time

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
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", default=".")
    ap.add_argument("--smoke", action="store_true", help="tiny width and latent, float32 on the CPU")
    args = ap.parse_args()
    dev, dt = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)

    results = []
    for name, (family, grid, audio_frames) in CASES.items():
        if args.smoke:  # 12 frames of 6 x 7 tokens: a mask that keeps under half of the blocks at 64
            grid, audio_frames = (12, 6, 7), 5
        model = _build(family, args.layers, args.smoke, dev, dt)
        kwargs = _inputs(model, family, grid, audio_frames, dev, dt, text_len=8 if args.smoke else 128)
        dense_ms = _time(model, kwargs, args.reps)
        with torch.no_grad():
            dense_out = model(**kwargs)[0].float()
        for block in (64, 128):
            state = apply_radial_attention(model, backend=args.backend, block_size=block)
            radial_ms = _time(model, kwargs, args.reps)
            with torch.no_grad():
                radial_out = model(**kwargs)[0].float()
            masks = state.summary()["masks"]
            remove_radial_attention(model)
            row = dict(
                case=name,
                layers=args.layers,
                latent=list(grid),
                block_size=block,
                masks=masks,
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
    (out / "ltx_forward.json").write_text(json.dumps(dict(env=env, results=results), indent=1))


if __name__ == "__main__":
    main()
