"""One transformer forward per model of the registry, dense vs radial, at the model's usual size (GPU).

For each case: the diffusers transformer at **full width** (the released checkpoint's heads, head
dim, FFN; random bf16 weights) with a few blocks, on a latent of the model's usual size and
length; the radial mask density there; one forward with dense attention (cuDNN SDPA, what a
diffusers user runs, and FlashAttention-4's dense kernel where it runs) and one with
``apply_radial_attention`` (the model's default preset and block size, ``backend="auto"``: fa4 on
Hopper). Per-block times (CUDA events on the blocks) give the full-depth estimate
``outside + sum over block groups of mean block time x full depth``.

    python benchmarks/models.py --out results/                 # every case, on the GPU
    python benchmarks/models.py --cases wan2.1-14b-720p,mochi   # some
    python benchmarks/models.py --smoke                        # tiny models on the CPU: checks the script

Writes ``models.json`` / ``models.md``. A case that fails or runs out of memory is recorded and the
others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pathlib
import sys
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention  # noqa: E402
from radial_attention.models import registry  # noqa: E402
from radial_attention.testing import configs, tiny  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pipeline import SDPA_BACKENDS, BlockTimer, full_forward, measure  # noqa: E402  (the timing of benchmarks/pipeline.py)

# name: variant (registry), transformer class, full-width config (None: the class defaults, which
# are the released checkpoint's), blocks built {config key: n}, full depth {block list attribute: n},
# latent (frames, height, width) at the usual size, the input builder of radial_attention.testing.tiny
# and its keywords, a note on the size.
CASES = {
    "wan2.1-1.3b-480p": dict(
        variant="wan2.1",
        cls="WanTransformer3DModel",
        config=configs.without_depth(configs.WAN21_1_3B),
        build={"num_layers": 2},
        depth={"blocks": 30},
        latent=(21, 60, 104),
        inputs=("wan_inputs", dict(text_len=512)),
        size="832x480, 81 frames",
    ),
    "wan2.1-14b-720p": dict(
        variant="wan2.1",
        cls="WanTransformer3DModel",
        config=configs.without_depth(configs.WAN21_14B),
        build={"num_layers": 2},
        depth={"blocks": 40},
        latent=(21, 90, 160),
        inputs=("wan_inputs", dict(text_len=512)),
        size="1280x720, 81 frames",
    ),
    "hunyuan-720p": dict(
        variant="hunyuan",
        cls="HunyuanVideoTransformer3DModel",
        config=configs.without_depth(configs.HUNYUAN_VIDEO),
        build={"num_layers": 1, "num_single_layers": 1},
        depth={"transformer_blocks": 20, "single_transformer_blocks": 40},
        latent=(33, 90, 160),
        inputs=("hunyuan_inputs", dict(text_len=256)),
        size="1280x720, 129 frames, 256 prompt tokens",
    ),
    # HunyuanVideo 1.5 (class defaults: 16 heads x 128, 54 blocks) text-to-video: after the video
    # 729 image (zeros, all masked in T2V), 256 byT5 and 1000 Qwen tokens, the valid ones first and
    # the rest masked pairwise ([B, 1, S, S]): a 120-token prompt, 20 byT5 tokens. cuDNN SDPA takes
    # no such mask: the dense baseline is torch SDPA's default choice (what diffusers runs).
    "hunyuan15-480p": dict(
        variant="hunyuanvideo-1.5",
        cls="HunyuanVideo15Transformer3DModel",
        config=None,
        build={"num_layers": 2},
        depth={"transformer_blocks": 54},
        latent=(31, 30, 53),
        inputs=(
            "hunyuan15_inputs",
            dict(text_len=1000, text_len_2=256, image_tokens=729, prompt_lengths=[120], prompt_lengths_2=[20]),
        ),
        size="848x480, 121 frames, 1985 condition tokens (140 valid)",
        # cuDNN takes no pairwise mask; a bare FA4 DenseSDPA would hand it to SDPA: the library's own
        # dense steps (FA4 with the mask as key lengths) are the fastest dense baseline.
        dense=("default", "ours-dense"),
        cast_timestep=True,  # its pipeline passes the timestep in the latent's dtype
    ),
    # LTX-Video 2B (class defaults: 32 heads x 64, 28 blocks) and LTX-2 (32 x 128, 48 blocks; its audio
    # stream, 126 latent frames for ~5 s, stays dense): packed tokens, 32x VAE, so few tokens per frame
    # (384 at 768x512): the family's block is 64 (Triton: fa4 runs 128 only); the -b128 cases show 128 on fa4.
    "ltx-video-2b-768x512x161": dict(
        variant="ltx-video",
        cls="LTXVideoTransformer3DModel",
        config=configs.without_depth(configs.LTX_VIDEO_2B),
        build={"num_layers": 2},
        depth={"transformer_blocks": 28},
        latent=(21, 16, 24),
        inputs=("ltx_inputs", dict(text_len=128)),
        size="768x512, 161 frames",
    ),
    "ltx-2-768x512x121": dict(
        variant="ltx-2",
        cls="LTX2VideoTransformer3DModel",
        config=configs.without_depth(configs.LTX_2),
        build={"num_layers": 2},
        depth={"transformer_blocks": 48},
        latent=(16, 16, 24),
        inputs=("ltx2_inputs", dict(text_len=128, audio_frames=126)),
        size="768x512, 121 frames (+ audio)",
    ),
    # SkyReels-V2 14B: Wan2.1-14B's architecture (40 heads, FFN 13824).
    "skyreels-v2-14b-720p": dict(
        variant="skyreels-v2",
        cls="SkyReelsV2Transformer3DModel",
        config=configs.without_depth(configs.WAN21_14B),
        build={"num_layers": 2},
        depth={"blocks": 40},
        latent=(31, 90, 160),
        inputs=("wan_inputs", dict(text_len=512)),
        size="1280x720, 121 frames",
    ),
    # Wan2.1-VACE-14B: Wan2.1-14B plus 8 control blocks (vace_layers 0, 5, ..., 35) that run first;
    # built with 5 main blocks and the control block at 0. One reference image: 1 + 21 latent frames.
    "wan-vace-14b-480p+ref": dict(
        variant="wan-vace",
        cls="WanVACETransformer3DModel",
        config=dict(configs.without_depth(configs.WAN_VACE_14B), vace_layers=[0]),
        build={"num_layers": 5},
        depth={"vace_blocks": 8, "blocks": 40},
        latent=(22, 60, 104),
        inputs=("wan_vace_inputs", dict(text_len=512)),
        size="832x480, 81 frames + 1 reference image",
    ),
    # Wan2.2-Animate-14B: a face adapter after every 5th block, so 5 blocks built. Latent frame 0 is
    # the reference image; face video 77 x 512 x 512 for the motion encoder, 257 CLIP image tokens.
    "wan-animate-14b-720p": dict(
        variant="wan-animate",
        cls="WanAnimateTransformer3DModel",
        config=configs.without_depth(configs.WAN_ANIMATE_14B),
        build={"num_layers": 5},
        depth={"blocks": 40},
        latent=(21, 90, 160),
        inputs=("wan_animate_inputs", dict(image_tokens=257)),
        size="1280x720, one 77-frame segment + the reference frame",
    ),
    "mochi-480p": dict(
        variant="mochi",
        cls="MochiTransformer3DModel",
        config=None,  # the class defaults are Mochi 1's (24 heads x 128, 48 blocks)
        build={"num_layers": 2},
        depth={"transformer_blocks": 48},
        latent=(28, 60, 106),
        inputs=("mochi_inputs", dict(text_len=256)),
        size="848x480, 163 frames, 256 prompt tokens",
        # cuDNN SDPA refuses Mochi's per-item calls ("No available kernel", H200, torch 2.11): torch's own choice.
        dense=("default", "fa4"),
    ),
    # CogVideoX-5B: 48 heads x 64, 42 blocks, RoPE; 1.5-5B adds patch_size_t=2 and a bigger sample grid.
    "cogvideox-5b-480p": dict(
        variant="cogvideox-1.0",
        cls="CogVideoXTransformer3DModel",
        config=dict(
            num_attention_heads=48,
            attention_head_dim=64,
            use_rotary_positional_embeddings=True,
            sample_height=60,
            sample_width=90,
            sample_frames=49,
        ),
        build={"num_layers": 2},
        depth={"transformer_blocks": 42},
        latent=(13, 60, 90),
        inputs=("cogvideox_inputs", {}),
        size="720x480, 49 frames, 226 prompt tokens",
    ),
    "cogvideox1.5-5b-768p": dict(
        variant="cogvideox-1.5",
        cls="CogVideoXTransformer3DModel",
        config=dict(
            num_attention_heads=48,
            attention_head_dim=64,
            patch_size_t=2,
            use_rotary_positional_embeddings=True,
            sample_height=96,
            sample_width=170,
            sample_frames=81,
            patch_bias=False,
        ),
        build={"num_layers": 2},
        depth={"transformer_blocks": 42},
        latent=(22, 96, 170),
        inputs=("cogvideox_inputs", {}),
        size="1360x768, 81 frames (the pipeline pads 21 latent frames to 22), 226 prompt tokens",
    ),
}


def _like(name: str, **changes) -> dict:
    """A case that differs from ``CASES[name]`` only in ``changes`` (size, latent, block, config)."""
    return dict(CASES[name], **changes)


CASES.update(
    {
        "hunyuan15-720p": _like(
            "hunyuan15-480p",
            config=dict(target_size=960),
            latent=(31, 45, 80),
            size="1280x720, 121 frames, 1985 condition tokens (140 valid)",
        ),
        "ltx-video-2b-768x512x161-b128": _like(
            "ltx-video-2b-768x512x161", size="768x512, 161 frames (block 128)", block_size=128
        ),
        "ltx-2-stage2-1536x1024x121": _like(
            "ltx-2-768x512x121", latent=(16, 32, 48), size="1536x1024, 121 frames (stage 2, + audio)"
        ),
        "wan-vace-14b-720p": _like("wan-vace-14b-480p+ref", latent=(21, 90, 160), size="1280x720, 81 frames"),
    }
)
CASES["ltx-2-stage2-1536x1024x121-b128"] = _like(
    "ltx-2-stage2-1536x1024x121", size="1536x1024, 121 frames (stage 2, + audio; block 128)", block_size=128
)

SMOKE = {
    "smoke-wan": dict(
        variant="wan2.1",
        cls="WanTransformer3DModel",
        config=configs.without_depth(dict(tiny.WAN_TINY, num_attention_heads=2, attention_head_dim=64)),
        build={"num_layers": 2},
        depth={"blocks": 30},
        latent=(5, 16, 24),
        inputs=("wan_inputs", dict(text_len=16)),
        size="tiny",
        block_size=64,
    ),
    "smoke-hunyuan": dict(
        variant="hunyuan",
        cls="HunyuanVideoTransformer3DModel",
        config=configs.without_depth(
            dict(tiny.HUNYUAN_TINY, num_attention_heads=2, attention_head_dim=64, rope_axes_dim=(16, 24, 24))
        ),
        build={"num_layers": 1, "num_single_layers": 1},
        depth={"transformer_blocks": 20, "single_transformer_blocks": 40},
        latent=(5, 16, 16),
        inputs=("hunyuan_inputs", dict(text_len=16)),
        size="tiny",
        block_size=64,
    ),
}


def _to(obj, device, dtype):
    """Tensors (in nests of tuples/lists/dicts) moved to ``device``; float32 activations (2+ dims: not
    timesteps) cast to the model's ``dtype`` (some tiny input builders make float32)."""
    if torch.is_tensor(obj):
        cast = obj.dtype == torch.float32 and obj.dim() >= 2 and dtype != torch.float32
        return obj.to(device, dtype) if cast else obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(x, device, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


def build(case, device, dtype):
    import diffusers

    cls = getattr(diffusers, case["cls"])
    cfg = dict(case["config"] or {})
    cfg.update(case["build"])
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**cfg)
    return model.to(dtype).eval()


def run_case(name, case, args, device, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from radial_attention.integrations.diffusers.sdpa import DenseSDPA
    from radial_attention.ops import resolve_backend, resolve_dense_backend

    variant = registry.get_variant(case["variant"])
    family = variant.model_family
    res = dict(case=name, variant=variant.name, size=case["size"], status="ok")
    model = build(case, device, dtype)
    F_, H_, W_ = case["latent"]
    builder, kw = case["inputs"]
    kwargs = _to(getattr(tiny, builder)(model, F_, H_, W_, **kw), device, dtype)
    if case.get("cast_timestep"):
        kwargs["timestep"] = kwargs["timestep"].to(dtype)
    groups = tuple(dict.fromkeys(attr for attr, _ in family.self_attention))
    timer = BlockTimer(model, groups, device)
    fn = lambda: model(**kwargs)  # noqa: E731, F821 (`del model, kwargs` at the end frees the GPU memory)
    dense = {}
    head_dim = model.config.attention_head_dim
    with torch.no_grad():
        for be in case.get("dense", args.dense) if not args.dense_given else args.dense:
            try:
                if be == "ours-dense":
                    # The library's own dense path (its dense steps): every step dense, FA4's dense kernel
                    # where it runs, with the model's padding masks (HunyuanVideo 1.5's pairwise one too)
                    # as key lengths.
                    apply_radial_attention(model, dense_steps=10**9, backend="auto", dense_backend="auto")
                    try:
                        dense[be] = measure(timer, fn, args.warmup, args.reps)
                    finally:
                        remove_radial_attention(model)
                    print(f"  dense {be:<6} {dense[be][0] * 1e3:9.1f} ms ({case['build']})", flush=True)
                    continue
                if be == "fa4":
                    resolve_dense_backend("fa4", torch.empty(1, 1, 128, head_dim, device=device, dtype=dtype))
                    ctx = DenseSDPA("fa4", "benchmark")
                else:
                    ctx = (
                        contextlib.nullcontext()
                        if be == "default"
                        else sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[be])])
                    )
                with ctx:
                    dense[be] = measure(timer, fn, args.warmup, args.reps)
                print(f"  dense {be:<6} {dense[be][0] * 1e3:9.1f} ms ({case['build']})", flush=True)
            except (RuntimeError, ValueError) as e:
                print(f"  dense {be:<6} not available: {str(e).splitlines()[0][:160]}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if not dense:
            raise RuntimeError("no dense attention kernel ran")
        overrides = {"block_size": case["block_size"]} if "block_size" in case else {}
        state = apply_radial_attention(model, backend="auto", dense_backend="auto", **overrides)
        try:
            radial = measure(timer, fn, args.warmup, args.reps)
            summary = state.summary()
        finally:
            remove_radial_attention(model)
            timer.remove()
    masks = summary["masks"]  # {layout: density} of the masks the calls used
    cfg = state.config
    res.update(
        heads=model.config.num_attention_heads,
        head_dim=head_dim,
        latent=case["latent"],
        built=case["build"],
        depth=case["depth"],
        radial_calls=summary["radial_calls"],
        dense_calls=summary["dense_calls"],
        preset=cfg.preset,
        radial_backend=resolve_backend(
            "auto", torch.empty(1, 1, 128, head_dim, device=device, dtype=dtype), False, cfg.block_size
        ),
        block_size=cfg.block_size,
        density=max(masks.values()) if masks else None,
        masks=masks,
    )
    print(f"  radial {radial[0] * 1e3:9.1f} ms; {summary}", flush=True)
    res["built_ms"] = {**{k: round(v[0] * 1e3, 2) for k, v in dense.items()}, "radial": round(radial[0] * 1e3, 2)}
    full = {k: full_forward(*v, case["depth"]) for k, v in dense.items()}
    full["radial"] = full_forward(*radial, case["depth"])
    res["full_depth_ms"] = {k: round(v * 1e3, 1) for k, v in full.items()}
    res["speedup_full_depth"] = {k: round(full[k] / full["radial"], 3) for k in dense}
    del model, kwargs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def markdown(results, env):
    kind = (
        "SMOKE run, tiny models on the CPU: not a measurement" if env["smoke"] else "bf16, random weights, full width"
    )
    lines = [
        f"One transformer forward per model ({env['date']}, {env['device']}, torch {env['torch']}, "
        f"diffusers {env['diffusers']}; {kind}, batch 1)",
        "",
        "| case | size | latent (F, H, W) | heads x dim | mask density (preset, block, backend) | built blocks, ms | full depth, ms | radial speed-up (full depth) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r.get('size', '')} | | | | {r['status']} | | |")
            continue
        b, f, s = r["built_ms"], r["full_depth_ms"], r["speedup_full_depth"]
        built = " / ".join(f"{k} {v:.1f}" for k, v in b.items())
        full = " / ".join(f"{k} {v:.0f}" for k, v in f.items())
        speed = ", ".join(f"{v:.2f}x vs {k}" for k, v in s.items())
        lines.append(
            f"| {r['case']} | {r['size']} | {tuple(r['latent'])} | {r['heads']} x {r['head_dim']} | "
            f"{r['density'] if r['density'] is not None else '?'} ({r['preset']}, {r['block_size']}, {r['radial_backend']}) | "
            f"{built} ({r['built']}) | {full} ({r['depth']}) | **{speed}** |"
        )
    lines += [
        "",
        "Dense kernels: cudnn = torch SDPA's cuDNN kernel (what diffusers runs), default = torch SDPA's own "
        "choice (HunyuanVideo 1.5's pairwise mask rules cuDNN out), ours-dense = the library's dense steps "
        "(FA4's dense kernel, padding masks as key lengths), fa4 = FlashAttention-4's dense "
        "kernel (every SDPA call of the model). Full depth = measured time outside the blocks + mean measured "
        "block time x the checkpoint's block count, per block group. Density: the largest kept fraction of "
        "blocks among the masks the calls used.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the script, measures nothing)")
    p.add_argument(
        "--dense",
        default=None,
        help="dense kernels, comma-separated: cudnn, flash, math, default (torch's own choice), fa4, "
        "ours-dense (the library's dense steps: FA4 dense with the model's padding masks as key lengths) "
        "(default: the case's, else cudnn,fa4; smoke: math)",
    )
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    table = SMOKE if args.smoke else CASES
    names = list(table) if args.cases is None else args.cases.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown case(s) {unknown}; expected some of {list(table)}")
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    args.dense_given = args.dense is not None
    args.dense = (args.dense or ("math" if args.smoke else "cudnn,fa4")).split(",")
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 1)
    args.reps = args.reps if args.reps is not None else (1 if args.smoke else 3)
    import diffusers

    env = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        smoke=args.smoke,
    )
    results = []
    for name in names:
        print(f"\n== {name}", flush=True)
        try:
            results.append(run_case(name, table[name], args, device, dtype))
        except torch.cuda.OutOfMemoryError:
            results.append(dict(case=name, status="out of memory"))
            torch.cuda.empty_cache()
        except Exception as e:  # one model that fails is recorded, the others go on
            traceback.print_exc()
            results.append(dict(case=name, status=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(dict(env=env, results=results), indent=1))
    md = markdown(results, env)
    (out / "models.md").write_text(md)
    print("\n" + md)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
