"""LoRA adapters on the transformer (peft, through diffusers' ``add_adapter``), and the LoRA file
in the format ``pipe.load_lora_weights`` reads (``pytorch_lora_weights.safetensors`` with diffusers'
``transformer.`` key prefix and the adapter config in the safetensors metadata).
"""

from __future__ import annotations

import pathlib
from typing import Dict, Optional

import torch

from .model import lora_target_regex, pipeline_class

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def add_lora(
    transformer,
    family: str,
    *,
    rank: int = 128,
    alpha: Optional[float] = None,
    dropout: float = 0.0,
    train_ff: bool = False,
    init_seed: Optional[int] = None,
):
    """Inject a LoRA adapter named ``"default"`` into the transformer's self-attention projections
    (and feed-forward layers with ``train_ff``), freeze everything else, keep LoRA weights in float32.

    Args:
        rank: LoRA rank ``r``.
        alpha: LoRA alpha (scale ``alpha / r``); default ``r`` (scale 1, which is also what loaders
            that ignore the stored adapter config assume).
        dropout: LoRA dropout.
        init_seed: seed for the LoRA ``A`` initialisation (``B`` starts at zero, so the adapted model
            starts equal to the base model); ``None`` uses the global RNG.

    Returns:
        The ``peft.LoraConfig`` used.
    """
    from peft import LoraConfig

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = float(rank if alpha is None else alpha)
    if alpha <= 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights=True,
        target_modules=lora_target_regex(family, train_ff),
    )
    transformer.requires_grad_(False)
    if init_seed is None:
        transformer.add_adapter(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            transformer.add_adapter(config)
    n = 0
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            p.data = p.data.float()  # trained in float32 even when the frozen weights are bf16
            n += 1
    if n == 0:
        raise RuntimeError(f"no module of the {family} transformer matched the LoRA targets {config.target_modules!r}")
    return config


def lora_parameters(transformer):
    """The trainable LoRA parameters, in a fixed order (``named_parameters`` order)."""
    return [p for n, p in transformer.named_parameters() if p.requires_grad]


def lora_state_dict(transformer) -> Dict[str, torch.Tensor]:
    """peft's state dict of the ``default`` adapter (keys like ``blocks.0.attn1.to_q.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def save_lora(transformer, family: str, out_dir, *, is_main_process: bool = True) -> pathlib.Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` through the family pipeline's
    ``save_lora_weights`` (what ``pipe.load_lora_weights(out_dir)`` reads). Returns the file path."""
    out_dir = pathlib.Path(out_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in lora_state_dict(transformer).items()}
    metadata = transformer.peft_config["default"].to_dict()
    pipeline_class(family).save_lora_weights(
        str(out_dir),
        transformer_lora_layers=state,
        is_main_process=is_main_process,
        weight_name=LORA_WEIGHTS_NAME,
        transformer_lora_adapter_metadata=metadata,
    )
    return out_dir / LORA_WEIGHTS_NAME


def load_lora_into(transformer, lora_dir) -> None:
    """Copy the weights of a LoRA file written by :func:`save_lora` into the transformer's existing
    ``default`` adapter (used to resume; the adapter config must match)."""
    from safetensors.torch import load_file

    path = pathlib.Path(lora_dir) / LORA_WEIGHTS_NAME
    saved = load_file(str(path))
    prefix = "transformer."
    current = lora_state_dict(transformer)
    expected = {prefix + k for k in current}
    if set(saved) != expected:
        missing = sorted(expected - set(saved))[:3]
        extra = sorted(set(saved) - expected)[:3]
        raise ValueError(
            f"{path}: LoRA keys do not match the model's adapter (rank/targets changed?): missing {missing}, "
            f"unexpected {extra}"
        )
    params = dict(transformer.named_parameters())
    with torch.no_grad():
        for k in current:
            # peft state-dict keys drop the adapter name: "x.lora_A.weight" <- "x.lora_A.default.weight"
            pname = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            src = saved[prefix + k]
            if params[pname].shape != src.shape:
                raise ValueError(
                    f"{path}: {k} has shape {tuple(src.shape)}, the model's adapter {tuple(params[pname].shape)}"
                )
            params[pname].copy_(src)
