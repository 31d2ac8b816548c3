"""``radial-attention train-lora``: length-extension LoRA fine-tuning with radial attention.

Several GPUs: ``torchrun --nproc-per-node N -m radial_attention train-lora ...``
(one process per GPU, data-parallel).
"""

from __future__ import annotations

import argparse
import dataclasses

from radial_attention.cli import args as validators
from radial_attention.cli.args import add_command, add_deprecated_alias
from radial_attention.models import FAMILIES
from radial_attention.train.config import TrainConfig, cli_option


def _flag(f: dataclasses.Field, opt) -> str:
    """The option name of a field: its metadata's, else ``--field-name``."""
    return opt.flag or "--" + f.name.replace("_", "-")


def _add_option(group, f: dataclasses.Field, opt) -> argparse.Action:
    """The argparse option of TrainConfig field ``f`` as its metadata ``opt`` describes it."""
    flag = _flag(f, opt)
    if f.type in ("bool", bool):
        # A flag: --x turns an off-by-default setting on; --no-x (negate) turns an on-by-default one off.
        return group.add_argument(flag, action="store_true", help=opt.help)
    kwargs = dict(help=opt.help, choices=opt.choices, metavar=opt.metavar)
    if opt.type is not None:
        kwargs["type"] = getattr(validators, opt.type)
    if f.default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
    return group.add_argument(flag, **kwargs)


def _options():
    """``(field, its CliOption)`` of every TrainConfig field offered on the command line, in field order."""
    return [(f, cli_option(f)) for f in dataclasses.fields(TrainConfig) if cli_option(f) is not None]


def register(sub) -> None:
    # The transformers train-lora takes: those of the registry families with a LoRA pipeline class.
    trainable = ", ".join(c for f in FAMILIES.values() if f.lora_pipeline_class for c in f.transformer_classes)
    p = add_command(
        sub,
        "train-lora",
        help=f"length-extension LoRA fine-tuning with radial attention ({trainable})",
        description=(
            f"Train a LoRA on the self-attention projections of a video transformer ({trainable}) with radial "
            "attention (the first --dense-layers blocks dense) on pre-encoded latents (radial-attention encode). "
            "Writes OUTPUT/pytorch_lora_weights.safetensors (pipe.load_lora_weights(OUTPUT) reads it), "
            "OUTPUT/loss.jsonl (curve: OUTPUT/loss.png) and OUTPUT/checkpoints/. Several GPUs: torchrun --nproc-per-node N "
            "-m radial_attention train-lora ..."
        ),
    )
    # The options are TrainConfig's fields (radial_attention.train.config): one option per field,
    # help text, validator and choices from the field's metadata.
    groups = {}
    for f, opt in _options():
        if opt.group not in groups:
            groups[opt.group] = p.add_argument_group(opt.group)
        action = _add_option(groups[opt.group], f, opt)
        for old in opt.deprecated_flags:
            add_deprecated_alias(groups[opt.group], old, action)
    p.set_defaults(func=run)


def config_from_args(args) -> TrainConfig:
    """The TrainConfig of parsed ``train-lora`` arguments (each field from its option)."""
    values = {}
    for f, opt in _options():
        value = getattr(args, _flag(f, opt)[2:].replace("-", "_"))  # argparse's destination of the flag
        values[f.name] = (not value) if opt.negate else value
    return TrainConfig(**values)


def run(args) -> dict:
    """Train; rank 0 prints the report. Returns it as values: ``{"family", "samples", "world_size",
    "device", "lora_rank", "attention", "mask_density" (None unless radial), "timestep_range",
    "resumed_at" (the step a resumed run started at, 0 for a new run), "steps", "losses" (this run's),
    "lora_path", "output_dir"}``."""
    from radial_attention.train import data_parallel as dp
    from radial_attention.train.trainer import LoRATrainer

    cfg = config_from_args(args)
    try:
        trainer = LoRATrainer(cfg)
    except TypeError as e:  # an unsupported model class: a user error, reported like bad data
        raise ValueError(str(e)) from None
    try:
        dens = trainer.radial_density()
        resumed_at = trainer.step_count
        if trainer.info.is_main:
            print(
                f"train-lora: {trainer.family} transformer, {len(trainer.dataset)} samples, "
                f"{trainer.info.world_size} process(es) on {trainer.device}, LoRA rank {cfg.lora_rank}, "
                f"attention {cfg.attention}"
                + (
                    f" (mask density {dens:.3f} on the first sample's layout, first {cfg.dense_layers} blocks dense)"
                    if dens is not None
                    else ""
                )
                + (
                    f", timesteps {trainer.timestep_range[0]:g}-{trainer.timestep_range[1]:g}"
                    if trainer.timestep_range
                    else ""
                )
                + (f", resuming at step {resumed_at}" if resumed_at else "")
            )
        result = trainer.train()
        if trainer.info.is_main:
            last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
            print(f"train-lora: {result.steps} steps{last}; LoRA written to {result.lora_path}")
            if cfg.transformer_subfolder == "transformer_2":
                print(
                    f"train-lora: load it with pipe.load_lora_weights({str(result.output_dir)!r}, load_into_transformer_2=True)"
                )
    finally:
        dp.teardown(trainer.info)
    return dict(
        family=trainer.family,
        samples=len(trainer.dataset),
        world_size=trainer.info.world_size,
        device=str(trainer.device),
        lora_rank=cfg.lora_rank,
        attention=cfg.attention,
        mask_density=dens,
        timestep_range=None if trainer.timestep_range is None else list(trainer.timestep_range),
        resumed_at=resumed_at,
        steps=result.steps,
        losses=list(result.losses),
        lora_path=str(result.lora_path),
        output_dir=str(result.output_dir),
    )
