"""One CogVideoX transformer forward, dense versus radial, at full width with random bf16 weights.

The real configs of CogVideoX-5B (1.0, 48 heads x 64, RoPE) and CogVideoX1.5-5B (patch_size_t=2),
with ``--layers`` of their 42 blocks (the blocks are identical in cost, so a forward's time grows
by one block's per layer), on the latent of their usual video: 1.0 at 720x480x49 (13 x 1350 video
tokens after the 226 text tokens), 1.5 at 1360x768x81 (21 latent frames padded to 22: 11 x 4080).

    python benchmarks/cogvideox_forward.py --out results/     # on the GPU
    python benchmarks/cogvideox_forward.py --smoke --out /tmp/cog   # tiny width and latent on the CPU (checks the script)

Prints one line per case and writes ``cogvideox_forward.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention  # noqa: E402

COG5B = dict(
    num_attention_heads=48,
    attention_head_dim=64,
    in_channels=16,
    out_channels=16,
    time_embed_dim=512,
    text_embed_dim=4096,
    patch_size=2,
    temporal_compression_ratio=4,
    max_text_seq_length=226,
    use_rotary_positional_embeddings=True,
    sample_height=60,
    sample_width=90,
    sample_frames=49,
)
# (config overrides, latent [F, H, W] the transformer gets)
CASES = {
    "cogvideox-1.0-5b-720x480x49": (dict(), (13, 60, 90)),
    "cogvideox-1.5-5b-1360x768x81": (
        dict(patch_size_t=2, sample_height=96, sample_width=170, sample_frames=81, patch_bias=False),
        (22, 96, 170),
    ),
}


def _inputs(model, f, h, w, dev, dt):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cfg = model.config
    p, p_t = cfg.patch_size, cfg.patch_size_t or 1
    rope = get_3d_rotary_pos_embed(
        embed_dim=cfg.attention_head_dim,
        crops_coords=None if p_t > 1 else ((0, 0), (h // p, w // p)),
        grid_size=(h // p, w // p),
        temporal_size=f // p_t,
        grid_type="slice" if p_t > 1 else "linspace",
        max_size=(h // p, w // p) if p_t > 1 else None,
        device=dev,
    )
    return dict(
        hidden_states=torch.randn(1, f, cfg.in_channels, h, w, device=dev, dtype=dt),
        encoder_hidden_states=torch.randn(1, 226, cfg.text_embed_dim, device=dev, dtype=dt),
        timestep=torch.tensor([500], device=dev),  # one call, no CFG
        image_rotary_emb=rope,
        return_dict=False,
    )


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
    from diffusers import CogVideoXTransformer3DModel

    results = []
    for name, (over, (f, h, w)) in CASES.items():
        cfg = dict(COG5B, num_layers=args.layers, **over)
        if args.smoke:  # same structure, 2 heads x 64, a 6 x 16 x 16 latent (2 blocks of text+video)
            cfg.update(num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, sample_height=16, sample_width=16)
            f, h, w = 6, 16, 16
        torch.manual_seed(0)
        with torch.device(dev):
            model = CogVideoXTransformer3DModel(**cfg)
        model = model.to(dt).eval()
        kwargs = _inputs(model, f, h, w, dev, dt)
        dense_ms = _time(model, kwargs, args.reps)
        with torch.no_grad():
            dense_out = model(**kwargs)[0].float()
        state = apply_radial_attention(model, backend=args.backend, block_size=64 if args.smoke else 128)
        radial_ms = _time(model, kwargs, args.reps)
        with torch.no_grad():
            radial_out = model(**kwargs)[0].float()
        masks = state.summary()["masks"]
        remove_radial_attention(model)
        row = dict(
            case=name,
            layers=args.layers,
            latent=[f, h, w],
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
        torch.cuda.empty_cache()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(gpu=torch.cuda.get_device_name() if dev == "cuda" else "cpu (smoke)", torch=torch.__version__)
    (out / "cogvideox_forward.json").write_text(json.dumps(dict(env=env, results=results), indent=1))


if __name__ == "__main__":
    main()
