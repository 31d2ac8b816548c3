"""End-to-end check of ``radial-attention train-lora`` itself on a GPU (the training benchmark
times the same step without the trainer around it).

Builds a Wan2.1-1.3B-width transformer (12 heads x 128, FFN 8960; ``--layers`` blocks, random bf16
weights) saved as a transformer folder, and a synthetic data folder of 832x480 81-frame latents
(``[16, 21, 60, 104]``: 32,760 tokens, mask density 0.33), then runs the CLI:

1. radial attention (first 2 blocks dense, default precision = ``bf16-mixed`` on CUDA), ``--max-steps``
   steps with a checkpoint half-way;
2. dense attention, same settings (the baseline);
3. run 1 resumed from its checkpoint, and the same pair again with ``--deterministic``: the
   resumed losses after the checkpoint must equal the uninterrupted run's bit for bit in the
   deterministic pair (the default pair differs in the last digits: non-deterministic GPU kernels).

Reports each run's losses, median step time and peak memory, and whether the loss fell.

    python benchmarks/train_cli_check.py --out $OUT/train-cli
    python benchmarks/train_cli_check.py --smoke --out /tmp/train-cli   # CPU, tiny, seconds
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without install

from radial_attention.cli.main import main as cli  # noqa: E402
from radial_attention.testing.data import write_synthetic_dataset  # noqa: E402
from radial_attention.testing.configs import WAN21_1_3B, without_depth  # noqa: E402
from radial_attention.train.model import model_spec  # noqa: E402

WAN_1_3B = without_depth(WAN21_1_3B)  # Wan2.1-1.3B at full width; --layers blocks
SMOKE = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=32, freq_dim=32)


def read_log(run: pathlib.Path) -> list:
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines() if line.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for train_cli_check.json")
    ap.add_argument(
        "--work", default=None, help="folder for the model, data and runs (default: --out); GBs at full width"
    )
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    report_dir = pathlib.Path(args.out)
    report_dir.mkdir(parents=True, exist_ok=True)
    out = pathlib.Path(args.work or args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.smoke
    latent = (16, 21, 60, 104) if not args.smoke else (16, 8, 16, 24)

    import diffusers

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**(SMOKE if args.smoke else WAN_1_3B), num_layers=args.layers)
    model.save_pretrained(str(out / "transformer"))
    write_synthetic_dataset(
        out / "data",
        model_spec(model),
        num_samples=args.samples,
        latent_shape=latent,
        text_len=512 if not args.smoke else 16,
        seed=1,
    )
    del model

    half = args.steps // 2
    common = [
        "train-lora",
        "--model",
        str(out / "transformer"),
        "--data",
        str(out / "data"),
        "--lr",
        "1e-4",
        "--max-steps",
        str(args.steps),
        "--no-progress",
        "--seed",
        "0",
    ]
    if args.smoke:
        common += ["--block-size", "64", "--lora-rank", "4", "--lr", "1e-2"]
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layers": args.layers,
        "latent": latent,
        "steps": args.steps,
        "runs": {},
    }
    runs = [
        # --overwrite: a rerun of this check replaces the previous one's runs (train-lora refuses a used folder otherwise).
        (
            "radial",
            [
                "--output",
                str(out / "radial"),
                "--checkpoint-every",
                str(half),
                "--keep-checkpoints",
                "0",
                "--overwrite",
            ],
        ),
        ("dense", ["--output", str(out / "dense"), "--attention", "dense", "--checkpoint-every", "0", "--overwrite"]),
    ]
    for name, extra in runs:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        rc = cli(common + extra)
        log = read_log(out / name)
        times = [r["step_time_s"] for r in log[2:]] or [r["step_time_s"] for r in log]  # first steps compile
        report["runs"][name] = {
            "rc": rc,
            "wall_s": time.perf_counter() - t0,
            "losses": [r["loss"] for r in log],
            "median_step_s": statistics.median(times),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
        print(f"{name}: rc {rc}, median step {report['runs'][name]['median_step_s'] * 1e3:.1f} ms", flush=True)

    # Resume from a half-way checkpoint into a fresh folder: the same later losses. Bit for bit only
    # with --deterministic (process-wide, so these runs come after the timed ones).
    for mode, flags in (("default", []), ("deterministic", ["--deterministic"])):
        base = out / f"radial-{mode}" if flags else out / "radial"
        if flags:
            cli(
                common
                + flags
                + ["--output", str(base), "--checkpoint-every", str(half), "--keep-checkpoints", "0", "--overwrite"]
            )
        resumed = out / f"radial-{mode}-resumed"
        first = base / "checkpoints" / f"step-{half:06d}"
        rc = (
            cli(common + flags + ["--output", str(resumed), "--checkpoint-every", "0", "--resume", str(first)])
            if first.is_dir()
            else 2
        )
        after = (
            [r["loss"] for r in read_log(resumed)][-(args.steps - half) :] if (resumed / "loss.jsonl").is_file() else []
        )
        ref = [r["loss"] for r in read_log(base)][half:]
        report[f"resume_{mode}"] = {
            "rc": rc,
            "from": str(first),
            "losses": after,
            "uninterrupted": ref,
            "equal_to_uninterrupted": after == ref,
            "max_abs_diff": max((abs(a - b) for a, b in zip(after, ref)), default=None),
            "first_step_equal": bool(after) and after[0] == ref[0],
        }
        print(
            f"resume ({mode}): equal {after == ref}, max |diff| {report[f'resume_{mode}']['max_abs_diff']}", flush=True
        )
    for name in ("radial", "dense"):
        ls = report["runs"][name]["losses"]
        report["runs"][name]["loss_fell"] = statistics.mean(ls[-3:]) < statistics.mean(ls[:3])
    r, d = report["runs"]["radial"], report["runs"]["dense"]
    report["step_speedup"] = d["median_step_s"] / r["median_step_s"]
    (report_dir / "train_cli_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    for name, v in report["runs"].items():
        print(
            name,
            {k: v[k] for k in ("rc", "median_step_s", "peak_memory_gib", "loss_fell")},
            "losses",
            [round(x, 4) for x in v["losses"]],
        )
    ok = all(v["rc"] == 0 for v in report["runs"].values()) and report["resume_deterministic"]["equal_to_uninterrupted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
