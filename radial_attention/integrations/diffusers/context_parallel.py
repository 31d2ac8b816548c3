"""Radial attention under diffusers' own context parallelism (Ulysses).

The usual diffusers way to split a transformer's sequence over ``N`` GPUs is::

    transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))

It installs diffusers hooks that split the tokens at the first block (``_cp_plan``) and gather
them after ``proj_out``; in every self-attention the processor hands its local
``q, k, v [B, S/N, H, D]`` to ``dispatch_attention_fn``, whose native backend runs diffusers'
Ulysses all-to-all and then ONE ``torch.nn.functional.scaled_dot_product_attention`` call on
``[B, H/N, S, D]``: all tokens of ``H/N`` heads. That call is exactly the one radial attention's
diffusers integration answers with the block-sparse op (:mod:`.sdpa`), and the video layout it
reads comes from the transformer's full (unsplit) latent input, so the GLOBAL radial mask is applied to the full sequence, as on one GPU. Radial attention therefore
composes with diffusers' context parallelism without any code of its own in the attention path;
this module adds what the composition needs around it:

- :func:`enable_sequence_parallel`: validates the model for radial Ulysses (heads divisible by
  the degree, diffusers' native attention backend, a model with a context-parallel plan, no
  ring attention) with clear errors, then calls ``enable_parallelism`` on every transformer of a
  pipeline (Wan2.2 A14B has two).
- :func:`check_sequence_parallel`: the same checks alone, plus the sequence length of a video
  size when given.
- :func:`check_context_parallel` and :func:`refuse_training_under_context_parallel`: the one
  per-processor check and the one training guard, also used by
  :func:`~.apply.apply_radial_attention` and its attention hook (radial attention may go on
  before or after the split, and the split may come from ``enable_parallelism`` directly).
- :func:`sequence_parallel_degree`: the Ulysses degree a model runs with (1 if none).
- :func:`diffusers_cpu_context_parallel`: lets diffusers 0.42's ``enable_parallelism`` run on
  CPU-only gloo process groups (tests, ``--smoke``).

Limits (diffusers 0.42.1):
- inference only: under context parallelism diffusers' backward re-runs attention through its
  own saved-tensor op outside radial attention's hook, so gradients would be dense attention's
  (measured: the weight gradients of a tiny Wan then equal the dense model's, not the radial
  one's). The radial attention hook refuses a forward that could be differentiated
  (:func:`refuse_training_under_context_parallel`); train with
  :func:`radial_attention.distributed.ulysses_attention`, whose backward is the radial one.
- Ulysses only (``ring_degree == 1``): ring attention would call the attention once per key chunk.
- only the ``"native"`` attention backend: the other native variants (``_native_cudnn``, ...)
  call an aten kernel directly under context parallelism, which radial attention does not see.
- ``S`` must be divisible by ``N`` unless ``ulysses_anything=True`` (then diffusers' uneven
  gathers need NCCL: gloo's ``all_gather`` needs equal sizes).
- only models that define a ``_cp_plan`` (Wan; HunyuanVideo has none in diffusers 0.42).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .families import find_transformers


def _attention_processors(transformer):
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    for name, module in transformer.named_modules():
        if isinstance(module, (Attention, AttentionModuleMixin)) and getattr(module, "processor", None) is not None:
            yield name, module.processor


def _active_backend_name() -> str:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    backend, _ = _AttentionBackendRegistry.get_active_backend()
    return getattr(backend, "value", str(backend))


def _context_parallel_config(proc):
    """The ``ContextParallelConfig`` a processor runs under, or ``None``."""
    return getattr(getattr(proc, "_parallel_config", None), "context_parallel_config", None)


def check_context_parallel(where: str, proc, *, planned: bool = False) -> None:
    """Radial attention composes with diffusers' Ulysses context parallelism on the 'native' backend only.

    There diffusers does the all-to-all and then one SDPA call over all tokens of ``H/N`` heads,
    which is the call radial attention answers. Ring attention never sees all tokens; the
    ``_native_cudnn`` / ``_native_flash`` / ... variants call an aten kernel directly under context
    parallelism. A processor without a backend of its own runs diffusers' active default.

    Args:
        where: the module's path, for the error.
        proc: its attention processor.
        planned: check as if context parallelism were about to be enabled (before
            ``enable_parallelism``); otherwise a processor that does not run under it passes.

    Raises:
        ValueError: ring attention, or a backend other than 'native'.
    """
    if not planned and getattr(proc, "_parallel_config", None) is None:
        return
    cp = _context_parallel_config(proc)
    ring = getattr(cp, "ring_degree", 1) if cp is not None else 1
    if ring not in (None, 1):
        raise ValueError(
            f"{where} runs diffusers ring attention (ring_degree={ring}); radial attention composes with "
            "Ulysses context parallelism only (ring_degree=1)"
        )
    if not hasattr(proc, "_attention_backend"):
        return  # a processor that does not dispatch through diffusers' backends
    backend = getattr(proc._attention_backend, "value", proc._attention_backend)
    effective = backend if backend is not None else _active_backend_name()
    if effective != "native":
        raise ValueError(
            f"{where} uses diffusers attention backend {effective!r}; radial attention under context "
            "parallelism needs diffusers' 'native' backend (its Ulysses path makes the one torch SDPA call "
            "that radial attention replaces): call reset_attention_backend() / set_attention_backend('native') "
            "on the transformer"
        )


def refuse_training_under_context_parallel(where: str, module, args, kwargs) -> None:
    """``RuntimeError`` when a radial attention forward under context parallelism may be differentiated.

    diffusers' Ulysses backward recomputes attention with its own saved-tensor op, outside radial
    attention's hook, so the gradients would be dense attention's: silently wrong. Called by the
    radial attention hook of each self-attention module before its radial forward; inference
    (``torch.no_grad``, as diffusers pipelines run, or frozen parameters and inputs) passes.
    """
    if getattr(getattr(module, "processor", None), "_parallel_config", None) is None or not torch.is_grad_enabled():
        return
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    if any(p.requires_grad for p in module.parameters()) or any(t.requires_grad for t in tensors):
        raise RuntimeError(
            f"{where}: radial attention under diffusers context parallelism is inference only (diffusers' "
            "Ulysses backward would recompute dense attention). Run the forward under torch.no_grad() (or "
            "freeze the parameters), or train with radial_attention.distributed.ulysses_attention, whose "
            "backward is the radial one"
        )


def check_sequence_parallel(
    model, ulysses_degree: int, *, seq_len: Optional[int] = None, ulysses_anything: bool = False
) -> None:
    """Raise a clear error if radial attention cannot run on ``model`` split over ``ulysses_degree`` ranks.

    Args:
        model: a diffusers pipeline, transformer, or list of transformers.
        ulysses_degree: ranks of the sequence-parallel group (``>= 1``).
        seq_len: tokens of the self-attention for the video size to be generated (checked for
            divisibility unless ``ulysses_anything``).
        ulysses_anything: diffusers' uneven split (any ``S``).

    Raises:
        ValueError / TypeError naming what is wrong and what would work.
    """
    if isinstance(ulysses_degree, bool) or not isinstance(ulysses_degree, int) or ulysses_degree < 1:
        raise ValueError(f"ulysses_degree must be an integer >= 1, got {ulysses_degree!r}")
    for t in find_transformers(model)[0]:
        name = type(t).__name__
        if getattr(t, "_cp_plan", None) is None:
            raise ValueError(
                f"{name} has no context-parallel plan (_cp_plan) in this diffusers version, so diffusers cannot "
                "split its sequence; sequence-parallel radial attention through diffusers supports the Wan "
                "transformers (use radial_attention.distributed.ulysses_attention in your own model code otherwise)"
            )
        heads = getattr(t.config, "num_attention_heads", None)
        if heads is not None and heads % ulysses_degree:
            divisors = [d for d in range(1, heads + 1) if heads % d == 0]
            raise ValueError(
                f"{name} has {heads} attention heads, which {ulysses_degree} ranks cannot share (Ulysses gives "
                f"each rank heads/N whole heads): use a number of GPUs that divides {heads}: one of {divisors}"
            )
        for path, proc in _attention_processors(t):
            check_context_parallel(f"{name}.{path}", proc, planned=True)
    if seq_len is not None and not ulysses_anything and seq_len % ulysses_degree:
        raise ValueError(
            f"the video has {seq_len} tokens, which {ulysses_degree} ranks cannot split evenly; choose a size whose "
            f"token count is divisible by {ulysses_degree}, or pass ulysses_anything=True (diffusers' uneven split, "
            "NCCL only)"
        )


def enable_sequence_parallel(model, ulysses_degree: Optional[int] = None, *, ulysses_anything: bool = False) -> list:
    """Split every transformer of ``model`` across the ranks with diffusers' Ulysses context parallelism.

    Equivalent to ``t.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` for each
    transformer ``t`` (both experts of Wan2.2 A14B), after :func:`check_sequence_parallel`. Call it
    after moving the model to its device; radial attention may be applied before or after (with
    diffusers' native backend the radial op sees the full sequence of ``H/N`` heads).

    Args:
        model: a diffusers pipeline, transformer, or list of transformers.
        ulysses_degree: ranks to split over (default: the whole world). A degree of 1 changes nothing.
        ulysses_anything: allow sequence lengths the degree does not divide (diffusers' uneven split).

    Returns:
        the ``ContextParallelConfig`` given to each transformer (empty for a degree of 1).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialized: launch with torchrun and call "
            "radial_attention.distributed.init_distributed() first"
        )
    world = dist.get_world_size()
    n = world if ulysses_degree is None else ulysses_degree
    check_sequence_parallel(model, n, ulysses_anything=ulysses_anything)
    if n > world:
        raise ValueError(f"ulysses_degree={n} exceeds the world size {world}")
    if n == 1:
        return []
    from diffusers import ContextParallelConfig

    configs = []
    for t in find_transformers(model)[0]:
        cfg = ContextParallelConfig(ulysses_degree=n, ulysses_anything=ulysses_anything)
        t.enable_parallelism(config=cfg)
        configs.append(cfg)
    return configs


def sequence_parallel_degree(model) -> int:
    """The Ulysses degree a transformer (or a pipeline's first transformer) runs with; 1 without context parallelism."""
    cp = _context_parallel_config(find_transformers(model)[0][0])
    return 1 if cp is None else int(cp.ulysses_degree) * int(cp.ring_degree)


@contextlib.contextmanager
def diffusers_cpu_context_parallel():
    """Let diffusers 0.42's ``enable_parallelism`` run on a CPU-only machine (gloo).

    diffusers picks each rank's device as ``rank % torch.accelerator.device_count()``, which
    divides by zero without an accelerator. Inside this context (and only on a machine without
    one) the count reads 1, so the rank's device is the CPU. For tests and ``--smoke`` runs.
    """
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original
