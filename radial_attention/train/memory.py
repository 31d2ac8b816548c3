"""Gradient checkpointing, optionally with the checkpointed blocks' inputs kept in CPU memory.

With checkpointing, what stays on the GPU between a block's forward and its backward is the
block's input: one ``[S, hidden]`` tensor per block. At long lengths that is most of the memory:
Wan2.1-14B at 4x length (291,600 tokens x 5120, bf16) keeps ~3 GB per block, ~120 GB for its 40
blocks. ``offload=True`` moves those inputs to (pinned) CPU memory during the forward and brings
each back when its block's backward recomputes it.

How: diffusers lets a model take its own checkpoint function; the reentrant
``torch.utils.checkpoint`` saves a block's tensor inputs through ``save_for_backward``, which
``torch.autograd.graph.save_on_cpu`` intercepts during the forward. (The non-reentrant variant,
diffusers' default, holds the inputs in a closure that no saved-tensor hook sees.)
"""

from __future__ import annotations

import contextlib

import torch


def _reentrant_checkpoint(module, *args):
    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=True)


def enable_checkpointing(transformer, *, offload: bool = False) -> None:
    """Gradient checkpointing on every block; with ``offload`` the reentrant variant, whose saved
    inputs :func:`offload_context` can move to the CPU."""
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=_reentrant_checkpoint if offload else None)


def offload_context(device: torch.device, offload: bool):
    """The context a training forward runs in: block inputs (and the few other tensors saved
    outside the checkpointed blocks) go to CPU memory, pinned on CUDA so the copies are async."""
    if not offload:
        return contextlib.nullcontext()
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.device(device).type == "cuda")


def prepare_offload_input(hidden_states: torch.Tensor, offload: bool) -> torch.Tensor:
    """Reentrant checkpointing only back-propagates into blocks whose inputs require grad; the
    first block's input comes from frozen layers, so the model input is made to require it (its
    gradient is a cheap by-product) or the first blocks' LoRA would get no gradient."""
    if offload and not hidden_states.requires_grad:
        hidden_states = hidden_states.detach().requires_grad_(True)
    return hidden_states
