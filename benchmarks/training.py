"""Time of one LoRA training step (forward + backward + AdamW step), dense versus radial attention,
at 1x, 2x and 4x video length, for Wan2.1-1.3B, Wan2.1-14B and HunyuanVideo.

Each model is the real diffusers transformer class at full width (real heads, head dim, FFN)
with only a few blocks (``--layers``: as many as the time allows), random bf16 weights, a rank-128
LoRA on the self-attention projections (float32, AdamW), gradient checkpointing on, the
flow-matching loss of ``radial_attention.train`` on random latents: the same step that
``radial-attention train-lora`` runs. Per (model, length) it times:

- ``dense``: the unchanged model; torch SDPA with kernel priority cuDNN > flash > efficient
  (``--dense-sdpa``), also used by the cross-attention in every variant;
- ``radial``: every measured block radial (``apply_radial_attention(dense_layers=0)``; with
  ``--radial-dense-layers 2`` the recipe's first 2 blocks dense, e.g. for a full-depth run),
  ``--backend``, default ``auto``: the Triton kernels on a GPU);
- ``overhead``: the same model with 0 blocks (embeddings, output projection, loss, backward
  through them), to separate per-block time from the rest.

The full-depth estimate: ``overhead + L * block`` for dense, and ``overhead + 2 * dense_block +
(L - 2) * radial_block`` for the paper's recipe (first 2 blocks dense), with ``L`` the model's
block count (HunyuanVideo: 20 dual-stream + 40 single-stream blocks, measured as pairs and
counted as 60 blocks of the measured average). Cases that run out of memory are recorded as OOM.

    python benchmarks/training.py --out results/training             # GPU, every case
    python benchmarks/training.py --models wan14b --lengths 4 --out results/training
    python benchmarks/training.py --smoke --out /tmp/train-smoke      # tiny, CPU, seconds

Writes ``training.json`` (after every case, so a run cut short keeps what it measured) and
``training.md`` to ``--out``; prints the table last.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without install

from radial_attention.testing.configs import HUNYUAN_VIDEO, WAN21_14B, without_depth  # noqa: E402
from radial_attention.train.lora import add_lora, lora_parameters  # noqa: E402
from radial_attention.train.memory import enable_checkpointing, offload_context, prepare_offload_input  # noqa: E402
from radial_attention.train.model import (  # noqa: E402
    PRECISIONS,
    Precision,
    autocast_context,
    cast_like_from_pretrained,
    trainable_family,
    lora_input_cast_off,
    resolve_precision,
    transformer_inputs,
)
from radial_attention.train.objective import FlowMatching  # noqa: E402


# ----------------------------------------------------------------------------- models and lengths
@dataclasses.dataclass(frozen=True)
class ModelCase:
    name: str
    family: str  # "wan" | "hunyuan"
    config: dict  # transformer config without the block counts
    full_blocks: int  # blocks of the real model
    latent_1x: tuple  # (C, F, H, W) at 1x length
    frames_by_length: dict  # length factor -> (video frames, latent frames)
    video: str  # resolution in words
    text_tokens: int
    real_prompt_tokens: int  # HunyuanVideo: unmasked prompt tokens
    default_layers: int
    shift: float


# The real checkpoints' configs without their depth (the blocks measured are built: num_layers=...).
WAN_BASE = {k: v for k, v in without_depth(WAN21_14B).items() if k not in ("num_attention_heads", "ffn_dim")}
HY_BASE = without_depth(HUNYUAN_VIDEO)
WAN_FRAMES = {1: (81, 21), 2: (161, 41), 4: (321, 81)}
HY_FRAMES = {1: (125, 32), 2: (253, 64), 4: (509, 128)}

MODELS = {
    "wan1.3b": ModelCase(
        "Wan2.1-T2V-1.3B",
        "wan",
        dict(WAN_BASE, num_attention_heads=12, ffn_dim=8960),
        30,
        (16, 21, 60, 104),
        WAN_FRAMES,
        "832x480",
        512,
        512,
        4,
        3.0,
    ),
    "wan14b": ModelCase(
        "Wan2.1-T2V-14B",
        "wan",
        dict(WAN_BASE, num_attention_heads=40, ffn_dim=13824),
        40,
        (16, 21, 90, 160),
        WAN_FRAMES,
        "1280x720",
        512,
        512,
        2,
        5.0,
    ),
    "hunyuan": ModelCase(
        "HunyuanVideo-T2V", "hunyuan", HY_BASE, 60, (16, 32, 90, 160), HY_FRAMES, "1280x720", 256, 64, 1, 7.0
    ),
}

# --smoke: the same code on tiny configs (CPU, fp32, seconds).
SMOKE_MODELS = {
    "wan1.3b": ModelCase(
        "tiny Wan (smoke)",
        "wan",
        dict(
            WAN_BASE,
            num_attention_heads=2,
            attention_head_dim=16,
            ffn_dim=64,
            text_dim=32,
            freq_dim=32,
            rope_max_seq_len=256,
        ),
        30,
        (16, 2, 16, 24),
        {1: (5, 2), 2: (13, 4), 4: (29, 8)},
        "tiny",
        16,
        16,
        2,
        3.0,
    ),
    "hunyuan": ModelCase(
        "tiny HunyuanVideo (smoke)",
        "hunyuan",
        dict(
            HY_BASE,
            num_attention_heads=2,
            attention_head_dim=16,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
        ),
        60,
        (16, 2, 16, 24),
        {1: (5, 2), 2: (13, 4), 4: (29, 8)},
        "tiny",
        16,
        8,
        1,
        7.0,
    ),
}


def build_transformer(case: ModelCase, layers: int, device, dtype):
    """The model class at full width with ``layers`` blocks (HunyuanVideo: ``layers`` dual-stream +
    ``layers`` single-stream), random weights created directly on ``device``."""
    import diffusers

    with torch.device(device):
        torch.manual_seed(0)
        if case.family == "wan":
            model = diffusers.WanTransformer3DModel(**case.config, num_layers=layers)
        else:
            model = diffusers.HunyuanVideoTransformer3DModel(**case.config, num_layers=layers, num_single_layers=layers)
    return cast_like_from_pretrained(model, dtype)  # bf16, with diffusers' float32 modules kept as from_pretrained does


def blocks_of(case: ModelCase, layers: int) -> int:
    return layers if case.family == "wan" else 2 * layers


def make_batch(case: ModelCase, latent_frames: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, _, h, w = case.latent_1x
    cfg = case.config
    text_dim = cfg["text_dim"] if case.family == "wan" else cfg["text_embed_dim"]
    batch = {
        "latents": torch.randn(1, c, latent_frames, h, w, generator=g),
        "prompt_embeds": torch.randn(1, case.text_tokens, text_dim, generator=g),
    }
    if case.family == "hunyuan":
        batch["prompt_attention_mask"] = (torch.arange(case.text_tokens) < case.real_prompt_tokens).long()[None]
        batch["pooled_prompt_embeds"] = torch.randn(1, cfg["pooled_projection_dim"], generator=g)
    return {k: v.to(device) for k, v in batch.items()}


def density_of(case: ModelCase, latent_frames: int, block_size: int) -> float:
    from radial_attention.mask.radial import radial_block_mask

    _, _, h, w = case.latent_1x
    tpf = (h // 2) * (w // 2)
    text = case.real_prompt_tokens if case.family == "hunyuan" else 0
    preset = "wan" if case.family == "wan" else "hunyuan"
    return radial_block_mask(latent_frames, tpf, preset=preset, extra_tokens=text, block_size=block_size).density


# ----------------------------------------------------------------------------- timing
def sdpa_context(names: str, device):
    """torch SDPA kernel priority for the whole step (both variants: it also serves cross-attention)."""
    if names == "default" or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    backends = [table[n] for n in names.split(",")]
    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # older torch: no priority, only the allowed set
        return sdpa_kernel(backends)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """One training step of a LoRA on ``model``: forward (autocast), flow-matching loss, backward, AdamW:
    the step of ``radial_attention.train.LoRATrainer`` at the same precision."""

    def __init__(
        self,
        model,
        case: ModelCase,
        device,
        precision: Precision,
        lora: bool = True,
        rank: int = 128,
        offload: bool = False,
    ):
        self.model, self.case, self.batch, self.device = model, case, None, torch.device(device)
        self.precision, self.offload = precision, offload
        self.objective = FlowMatching(shift=case.shift)
        self.params = []
        if lora:
            add_lora(model, case.family, rank=rank, init_seed=0)
            self.params = lora_parameters(model)
            # LoRA B starts at zero; make it non-zero so the step does the full LoRA work either way.
            with torch.no_grad():
                for p in self.params:
                    p.normal_(0, 1e-3)
            self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        enable_checkpointing(model, offload=offload)
        model.train()
        # Noise drawn on the device: a CPU draw of a 4x-length latent would add ~0.1 s to every step.
        self.gen = torch.Generator(self.device).manual_seed(0)

    def step(self) -> float:
        x0 = self.batch["latents"]
        if not self.params:  # overhead model: no blocks, no LoRA; backward into the input instead
            x0 = x0.clone().requires_grad_(True)
        x_t, t, target, _ = self.objective.sample(x0.detach(), self.gen)
        if not self.params:
            x_t = x_t + 0 * x0  # keep the graph to the leaf
        kw = transformer_inputs(self.case.family, self.batch, x_t, t, dtype=self.precision.compute)
        kw["hidden_states"] = prepare_offload_input(kw["hidden_states"], self.offload)
        # As the trainer does: peft's float32 LoRA-input copies stay off through the backward's recompute.
        with lora_input_cast_off(self.model, self.precision):
            with autocast_context(self.precision, self.device.type), offload_context(self.device, self.offload):
                pred = self.model(**kw)[0]
            loss = self.objective.loss(pred, target)
            loss.backward()
        if self.params:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()


def time_steps(stepper: Stepper, warmup: int, repeats: int, case_budget_s: float, device) -> dict:
    """Median step time after ``warmup`` steps; fewer repeats when one step would blow the budget."""
    t_warm = 0.0
    for _ in range(warmup):
        sync(device)
        t0 = time.perf_counter()
        stepper.step()
        sync(device)
        t_warm = time.perf_counter() - t0
    n = max(1, min(repeats, int(case_budget_s // max(t_warm, 1e-9)))) if warmup else repeats
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        loss = stepper.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "times_s": times, "warmup_s": t_warm, "loss": loss}


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ----------------------------------------------------------------------------- the run
def run_model(key: str, case: ModelCase, args, device, precision: Precision, results: list, save) -> None:
    from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention

    layers = args.layers or case.default_layers
    dtype = precision.weights
    try:
        model = build_transformer(case, layers, device, dtype)
        trainable_family(model)
        stepper = Stepper(
            model, case, device, precision, rank=args.rank, offload=args.offload_checkpoints
        )  # LoRA + AdamW, once per model
    except Exception as exc:  # noqa: BLE001 - recorded per case
        results.append({"model": key, "variant": "build", "error": f"{type(exc).__name__}: {exc}", "oom": is_oom(exc)})
        save()
        return
    for length in args.lengths:
        frames, latent_frames = case.frames_by_length[length]
        _, _, h, w = case.latent_1x
        tokens = latent_frames * (h // 2) * (w // 2)
        common = {
            "model": key,
            "model_name": case.name,
            "length": length,
            "video_frames": frames,
            "video": case.video,
            "latent_frames": latent_frames,
            "video_tokens": tokens,
            "text_tokens": case.text_tokens,
            "layers": layers,
            "blocks_measured": blocks_of(case, layers),
            "blocks_full": case.full_blocks,
            "radial_dense_layers": min(args.radial_dense_layers, blocks_of(case, layers)),
            "density": density_of(case, latent_frames, args.block_size),
        }
        batch = make_batch(case, latent_frames, device)
        for variant in args.variants:
            rec = dict(common, variant=variant)
            t0 = time.perf_counter()
            try:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                if variant == "overhead":
                    m0 = build_transformer(case, 0, device, dtype)
                    st = Stepper(m0, case, device, precision, lora=False, offload=args.offload_checkpoints)
                    st.batch = batch
                    with sdpa_context(args.dense_sdpa, device):
                        rec.update(time_steps(st, args.warmup, args.repeats, args.case_budget_s, device))
                    del st, m0
                else:
                    stepper.batch = batch
                    if variant == "radial":
                        state = apply_radial_attention(
                            model,
                            dense_layers=args.radial_dense_layers,
                            block_size=args.block_size,
                            backend=args.backend,
                        )
                    try:
                        with sdpa_context(args.dense_sdpa, device):
                            rec.update(time_steps(stepper, args.warmup, args.repeats, args.case_budget_s, device))
                        if variant == "radial":
                            summary = state.summary()
                            rec["radial_calls"] = summary["radial_calls"]
                            rec["masks"] = summary["masks"]  # the density the integration really used, per layout
                            rec["attention_backend"] = _backend_used(args.backend, device, dtype)
                    finally:
                        if variant == "radial":
                            remove_radial_attention(model)
                if device.type == "cuda":
                    rec["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            except Exception as exc:  # noqa: BLE001 - OOM and anything else is recorded per case
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
                rec["oom"] = is_oom(exc)
                if not rec["oom"]:
                    rec["traceback"] = traceback.format_exc()[-2000:]
                if stepper.params:
                    stepper.optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rec["wall_s"] = time.perf_counter() - t0
            results.append(rec)
            save()
            status = "OOM" if rec.get("oom") else ("error" if "error" in rec else f"{rec['median_s'] * 1e3:.1f} ms")
            print(f"  {key} {length}x {variant}: {status}", flush=True)
        del batch
    del model, stepper
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _backend_used(backend: str, device, dtype) -> str:
    from radial_attention.ops import resolve_backend

    q = torch.empty(
        1,
        1,
        128,
        128,
        device=device,
        dtype=torch.bfloat16 if torch.device(device).type == "cuda" else dtype,
        requires_grad=True,
    )
    try:
        return resolve_backend(backend, q, requires_grad=True)
    except ValueError as e:
        return f"unresolved ({e})"


def summarize(results: list) -> list:
    """One row per (model, length): measured times, speed-up, full-depth estimate."""
    rows = []
    keys = []
    for r in results:
        k = (r.get("model"), r.get("length"))
        if r.get("length") is not None and k not in keys:
            keys.append(k)
    for k in keys:
        by = {r["variant"]: r for r in results if (r.get("model"), r.get("length")) == k}
        any_r = next(iter(by.values()))
        row = {
            f: any_r[f]
            for f in (
                "model",
                "model_name",
                "length",
                "video_frames",
                "video",
                "video_tokens",
                "layers",
                "blocks_measured",
                "blocks_full",
                "density",
            )
        }
        row["radial_dense_layers"] = any_r.get("radial_dense_layers", 0)

        def t(v):
            r = by.get(v)
            if r is None:
                return None
            if "error" in r:
                return "OOM" if r.get("oom") else "error"
            return r["median_s"]

        masks = (by.get("radial") or {}).get("masks")
        if masks:  # the density of the mask the integration built (HunyuanVideo: with all text tokens)
            row["density"] = next(iter(masks.values()))
        row.update(overhead_s=t("overhead"), dense_s=t("dense"), radial_s=t("radial"))
        d, rr, o = row["dense_s"], row["radial_s"], row["overhead_s"]
        if isinstance(d, float) and isinstance(rr, float):
            row["speedup"] = d / rr
            if isinstance(o, float):
                n, k, L = row["blocks_measured"], row["radial_dense_layers"], row["blocks_full"]
                bd = max(d - o, 0.0) / n
                if n > k:  # per radial block: the radial run's time less its k dense blocks
                    br = max(rr - o - k * bd, 0.0) / (n - k)
                    # A full-depth run with the recipe (n == L, k == 2) gives back its own measured time.
                    row["full_dense_s"] = o + L * bd
                    row["full_radial_s"] = o + 2 * bd + (L - 2) * br
                    row["full_speedup"] = row["full_dense_s"] / row["full_radial_s"]
                    row["block_speedup"] = bd / br if br > 0 else None
        rows.append(row)
    return rows


def fmt(v, unit="ms"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v * 1e3:.1f}" if unit == "ms" else f"{v:.2f}"


def markdown(rows: list, meta: dict) -> str:
    lines = [
        f"# Training step: dense vs radial ({meta['device_name']}, {meta['dtype']}, torch {meta['torch']})",
        "",
        f"One LoRA training step (rank {meta['rank']}, self-attention q/k/v/out; forward + backward + AdamW; "
        f"precision `{meta.get('precision', 'bf16 weights + bf16 autocast, peft float32 LoRA inputs')}`), "
        f"gradient checkpointing, batch 1, random weights, full model width, the first `layers` blocks only "
        f"(HunyuanVideo: that many dual- and single-stream blocks each). Dense: torch SDPA "
        f"(priority {meta['dense_sdpa']}); radial: every measured block radial, block {meta['block_size']}, backend "
        f"`{meta['backend']}`. Median of up to {meta['repeats']} steps after {meta['warmup']} warm-up step(s). "
        f"Full-depth estimate: overhead (0-block model) + per-block times, with the first 2 blocks dense in the radial "
        f"recipe.",
        "",
        *(
            [
                "**Smoke run** (tiny configs on the CPU, where the radial backend is the dense-cost reference): "
                "the times only show that the script works.",
                "",
            ]
            if meta.get("smoke")
            else []
        ),
        "| model | length | video | tokens | density | blocks measured | dense step (ms) | radial step (ms) | "
        "speed-up (measured) | per-block speed-up | full depth: dense (s) | full depth: radial, 2 dense blocks (s) | "
        "full-depth speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model_name']} | {r['length']}x ({r['video_frames']} frames) | {r['video']} | {r['video_tokens']:,} | "
            f"{r['density']:.3f} | {r['blocks_measured']} of {r['blocks_full']}"
            f"{f' ({k} dense in radial)' if (k := r.get('radial_dense_layers', 0)) else ''} | {fmt(r['dense_s'])} | {fmt(r['radial_s'])} | "
            f"{fmt(r.get('speedup'), 'x')}x | {fmt(r.get('block_speedup'), 'x')}x | {fmt(r.get('full_dense_s'), 's')} | "
            f"{fmt(r.get('full_radial_s'), 's')} | {fmt(r.get('full_speedup'), 'x')}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="folder for training.json and training.md")
    ap.add_argument("--smoke", action="store_true", help="tiny configs on the CPU (checks the script, not speed)")
    ap.add_argument("--models", default=None, help=f"comma-separated subset of {list(MODELS)}")
    ap.add_argument("--lengths", default="1,2,4", help="video length factors (of 1, 2, 4)")
    ap.add_argument(
        "--layers", type=int, default=None, help="blocks per model (default: wan1.3b 4, wan14b 2, hunyuan 1+1)"
    )
    ap.add_argument(
        "--radial-dense-layers",
        type=int,
        default=0,
        help="blocks kept dense in the radial variant (0: all measured blocks radial; the recipe has 2)",
    )
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument(
        "--offload-checkpoints",
        action="store_true",
        help="as train-lora's: the checkpointed blocks' inputs in CPU memory",
    )
    ap.add_argument("--variants", default="overhead,dense,radial", help="which of overhead, dense, radial to time")
    ap.add_argument("--block-size", type=int, default=128, choices=(64, 128))
    ap.add_argument("--backend", default="auto", help="radial attention backend")
    ap.add_argument("--dense-sdpa", default="cudnn,flash,efficient", help="torch SDPA kernel priority, or 'default'")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case-budget-s", type=float, default=40.0, help="cap on timed seconds per case (fewer repeats)")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="as train-lora's --precision (auto: bf16-mixed on CUDA, fp32 on the CPU)",
    )
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the cases of an existing training.json in --out (a rerun of a case replaces it)",
    )
    args = ap.parse_args(argv)

    table = SMOKE_MODELS if args.smoke else MODELS
    keys = list(table) if args.models is None else [m.strip() for m in args.models.split(",")]
    for k in keys:
        if k not in table:
            ap.error(f"unknown model {k!r}; expected some of {list(table)}")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",")]
    if not args.variants or not set(args.variants) <= {"overhead", "dense", "radial"}:
        ap.error(f"--variants must be among overhead, dense, radial; got {args.variants}")
    for n in args.lengths:
        if n not in (1, 2, 4):
            ap.error(f"lengths must be among 1, 2, 4; got {n}")
    if args.smoke:
        args.block_size = 64
        args.repeats = min(args.repeats, 1)
        args.rank = min(args.rank, 8)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    precision = resolve_precision(args.precision, device)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": str(precision.weights).replace("torch.", ""),
        "offload_checkpoints": args.offload_checkpoints,
        "precision": args.precision
        if args.precision != "auto"
        else ("bf16-mixed" if device.type == "cuda" else "fp32"),
        "smoke": args.smoke,
        "rank": args.rank,
        "block_size": args.block_size,
        "backend": args.backend,
        "dense_sdpa": args.dense_sdpa,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    results: list = []
    if args.append and (out / "training.json").is_file():
        old = json.loads((out / "training.json").read_text())
        rerun = {(k, n) for k in keys for n in args.lengths}
        results = [
            r
            for r in old.get("results", [])
            if (r.get("model"), r.get("length")) not in rerun
            and not (r.get("variant") == "build" and r.get("model") in keys)
        ]
        meta["earlier_runs"] = old.get("meta", {}).get("earlier_runs", []) + [old.get("meta", {})]

    def save():
        (out / "training.json").write_text(
            json.dumps({"meta": meta, "results": results, "summary": summarize(results)}, indent=1, default=str)
        )

    for k in keys:
        print(f"{table[k].name}:", flush=True)
        run_model(k, table[k], args, device, precision, results, save)
    rows = summarize(results)
    md = markdown(rows, meta)
    (out / "training.md").write_text(md)
    save()
    print()
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
