"""``radial-attention train-lora``: length-extension LoRA fine-tuning with radial attention.

Several GPUs: ``torchrun --nproc-per-node N -m radial_attention train-lora ...``
(one process per GPU, data-parallel).
"""

from __future__ import annotations

import argparse
import math

from radial_attention.cli.args import (
    add_command, device_name, finite_float, fraction, nonneg_float, nonneg_int, output_dir, positive_float, positive_int,
)

# train.model.PRECISIONS, spelled out so that building the parser does not import torch (a test keeps them equal).
PRECISION_CHOICES = ("auto", "fp32", "bf16-mixed", "bf16", "bf16-autocast")


def _float_pair(what: str, lo: float = -math.inf, hi: float = math.inf):
    """An argparse type for ``A,B`` of finite numbers in ``[lo, hi)``; ``what`` shows an example in the error."""

    def parse(text: str):
        try:
            a, b = (float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected two comma-separated {what}, got {text!r}") from None
        if not all(math.isfinite(x) and lo <= x < hi for x in (a, b)):
            where = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g})"
            raise argparse.ArgumentTypeError(f"expected two finite comma-separated {what}{where}, got {text!r}")
        return (a, b)

    return parse


def register(sub) -> None:
    p = add_command(
        sub, "train-lora",
        help="length-extension LoRA fine-tuning with radial attention (Wan2.1/2.2 T2V and I2V, HunyuanVideo T2V)",
        description=(
            "Train a LoRA on the self-attention projections of a Wan (2.1/2.2, T2V or I2V) or HunyuanVideo transformer with radial "
            "attention (the first --dense-layers blocks dense) on pre-encoded latents (radial-attention encode). "
            "Writes OUTPUT/pytorch_lora_weights.safetensors (pipe.load_lora_weights(OUTPUT) reads it), "
            "OUTPUT/loss.jsonl (curve: OUTPUT/loss.png) and OUTPUT/checkpoints/. Several GPUs: torchrun --nproc-per-node N "
            "-m radial_attention train-lora ..."
        ),
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="diffusers pipeline folder or Hub id, transformer folder, or tiny-wan / tiny-hunyuan")
    g.add_argument("--data", required=True, help="training data folder (docs/training-data.md; made by `radial-attention encode`)")
    g.add_argument("--output", required=True, type=output_dir, help="output folder")
    g.add_argument("--transformer-subfolder", choices=("transformer", "transformer_2"), default="transformer",
                   help="pipeline component to train (Wan2.2 A14B: transformer = high-noise expert, transformer_2 = "
                        "low-noise expert; load its LoRA with pipe.load_lora_weights(OUTPUT, load_into_transformer_2=True))")
    g = p.add_argument_group("LoRA")
    g.add_argument("--rank", type=positive_int, default=128, help="LoRA rank")
    g.add_argument("--alpha", type=positive_float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    g.add_argument("--lora-dropout", type=fraction, default=0.0, help="dropout on the LoRA branch, in [0, 1)")
    g.add_argument("--train-ff", action="store_true", help="also put LoRA on the feed-forward layers")
    g = p.add_argument_group("attention")
    g.add_argument("--attention", choices=("radial", "dense"), default="radial", help="radial, or dense (the baseline)")
    g.add_argument("--preset", default=None, help="radial mask preset (default: the model's)")
    g.add_argument("--decay", type=positive_float, default=None, help="mask decay (default: the preset's)")
    g.add_argument("--dense-layers", type=nonneg_int, default=2, help="first blocks that stay dense")
    g.add_argument("--block-size", type=int, default=128, choices=(64, 128), help="mask block size in tokens (64 for small videos)")
    g.add_argument("--backend", default="auto", help="attention op backend: auto, gather, reference, flex, triton")
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=positive_int, default=1000, help="optimizer steps")
    g.add_argument("--batch-size", type=positive_int, default=1, help="samples per process per micro-batch")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (AdamW)")
    g.add_argument("--weight-decay", type=nonneg_float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--adam-betas", type=_float_pair("numbers like 0.9,0.999", 0.0, 1.0), default=(0.9, 0.999), metavar="B1,B2",
                   help="AdamW betas, each in [0, 1)")
    g.add_argument("--warmup-steps", type=nonneg_int, default=0, help="linear learning-rate warm-up steps")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant", help="learning rate after the warm-up")
    g.add_argument("--max-grad-norm", type=nonneg_float, default=1.0, help="gradient clipping (0: off)")
    g = p.add_argument_group("objective")
    g.add_argument("--shift", type=positive_float, default=None, help="flow shift (default: the model's scheduler config; Wan 3, HunyuanVideo 7)")
    g.add_argument("--timestep-sampling", choices=("uniform", "logit_normal"), default="uniform",
                   help="distribution of the training noise levels")
    g.add_argument("--guidance", type=finite_float, default=1.0, help="HunyuanVideo embedded guidance scale during training")
    g.add_argument("--timestep-range", type=_float_pair("timesteps like 875,1000"), default=None, metavar="LO,HI",
                   help="train only on timesteps in [LO, HI] of 0-1000 (default: a Wan2.2 A14B expert's own range "
                        "from the pipeline's boundary_ratio, else all)")
    g = p.add_argument_group("runtime")
    g.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="auto: bf16-mixed on CUDA (bf16 weights, bf16 autocast, float32 LoRA and AdamW), fp32 on CPU; "
                        "bf16: no autocast, LoRA branch in float32 (more memory)")
    g.add_argument("--no-gradient-checkpointing", action="store_true",
                   help="keep all activations (faster, much more memory)")
    g.add_argument("--offload-checkpoints", action="store_true",
                   help="keep the checkpointed blocks' inputs in CPU memory (long videos on big models; one process)")
    g.add_argument("--device", type=device_name, default=None, help="default: CUDA (cuda:LOCAL_RANK under torchrun) if available, else CPU")
    g.add_argument("--collective-timeout", type=positive_float, default=1800.0, metavar="SECONDS",
                   help="several processes (torchrun): a collective (gradient all-reduce, barrier) that waits longer "
                        "than this fails the run instead of hanging")
    g.add_argument("--seed", type=int, default=0, help="seed of the LoRA init, data order and noise")
    g.add_argument("--checkpoint-every", type=nonneg_int, default=500, help="steps between checkpoints (0: none)")
    g.add_argument("--keep-checkpoints", type=nonneg_int, default=2, help="newest checkpoints of this run kept (0: all)")
    g.add_argument("--resume", default=None, help="'latest' (newest intact checkpoint in OUTPUT, or start fresh) or a checkpoint folder")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUTPUT that holds another one, deleting its checkpoints, loss.jsonl/png "
                        "and LoRA (without it such an OUTPUT is refused)")
    g.add_argument("--eval-every", type=nonneg_int, default=0, help="log a fixed-noise loss every N steps (0: off)")
    g.add_argument("--eval-samples", type=positive_int, default=4, help="samples in the fixed-noise eval loss")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels: a resumed run repeats the uninterrupted one bit for bit (slower)")
    p.set_defaults(func=run)


def run(args) -> int:
    from radial_attention.train import TrainConfig
    from radial_attention.train import data_parallel as dp
    from radial_attention.train.trainer import LoRATrainer

    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        output_dir=args.output,
        rank=args.rank,
        alpha=args.alpha,
        lora_dropout=args.lora_dropout,
        train_ff=args.train_ff,
        attention=args.attention,
        preset=args.preset,
        decay=args.decay,
        dense_layers=args.dense_layers,
        block_size=args.block_size,
        backend=args.backend,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        weight_decay=args.weight_decay,
        adam_betas=args.adam_betas,
        warmup_steps=args.warmup_steps,
        lr_schedule=args.lr_schedule,
        max_grad_norm=args.max_grad_norm,
        shift=args.shift,
        timestep_sampling=args.timestep_sampling,
        guidance=args.guidance,
        timestep_range=args.timestep_range,
        transformer_subfolder=args.transformer_subfolder,
        precision=args.precision,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        device=None if args.device == "auto" else args.device,
        collective_timeout_s=args.collective_timeout,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        progress=not args.no_progress,
        deterministic=args.deterministic,
        offload_checkpoints=args.offload_checkpoints,
        overwrite=args.overwrite,
    )
    try:
        trainer = LoRATrainer(cfg)
    except TypeError as e:  # an unsupported model class: a user error, reported like bad data
        raise ValueError(str(e)) from None
    try:
        if trainer.info.is_main:
            dens = trainer.radial_density()
            print(
                f"train-lora: {trainer.family} transformer, {len(trainer.dataset)} samples, "
                f"{trainer.info.world_size} process(es) on {trainer.device}, LoRA rank {cfg.rank}, "
                f"attention {cfg.attention}"
                + (f" (mask density {dens:.3f} on the first sample's layout, first {cfg.dense_layers} blocks dense)" if dens is not None else "")
                + (f", timesteps {trainer.timestep_range[0]:g}-{trainer.timestep_range[1]:g}" if trainer.timestep_range else "")
                + (f", resuming at step {trainer.step_count}" if trainer.step_count else "")
            )
        result = trainer.train()
        if trainer.info.is_main:
            last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
            print(f"train-lora: {result.steps} steps{last}; LoRA written to {result.lora_path}")
            if cfg.transformer_subfolder == "transformer_2":
                print(f"train-lora: load it with pipe.load_lora_weights({str(result.output_dir)!r}, load_into_transformer_2=True)")
    finally:
        dp.teardown(trainer.info)
    return 0
