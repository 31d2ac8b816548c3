"""Radial attention under diffusers' own context parallelism (Ulysses).

The usual diffusers way to split a transformer's sequence over ``N`` GPUs is::

    transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))

It installs diffusers hooks that split the tokens at the first block (``_cp_plan``) and gather
them after ``proj_out``; in every self-attention the processor hands its local
``q, k, v [B, S/N, H, D]`` to ``dispatch_attention_fn``, whose native backend runs diffusers'
Ulysses all-to-all and then ONE ``torch.nn.functional.scaled_dot_product_attention`` call on
``[B, H/N, S, D]``: all tokens of ``H/N`` heads. That call is exactly the one radial attention's
diffusers integration answers with the block-sparse op (:mod:`radial_attention.integrations.diffusers.sdpa`),
and the video layout it reads comes from the transformer's full (unsplit) latent input, so the
GLOBAL radial mask is applied to the full sequence, as on one GPU. Radial attention therefore
composes with diffusers' context parallelism without any code of its own in the attention path;
this module adds what the composition needs around it:

- :func:`enable_sequence_parallel`: validates the model for radial Ulysses (heads divisible by
  the degree, diffusers' native attention backend, a model with a context-parallel plan, no
  ring attention) with clear errors, then calls ``enable_parallelism`` on every transformer of a
  pipeline (Wan2.2 A14B has two).
- :func:`check_sequence_parallel`: the same checks alone, plus the sequence length of a video
  size when given.
- :func:`sequence_parallel_degree`: the Ulysses degree a model runs with (1 if none).
- :func:`diffusers_cpu_context_parallel`: lets diffusers 0.42's ``enable_parallelism`` run on
  CPU-only gloo process groups (tests, ``--smoke``).

Limits (diffusers 0.42.1):
- inference only: under context parallelism diffusers' backward re-runs attention through its
  own saved-tensor op outside radial attention's hook, so gradients would be dense attention's
  (measured: the weight gradients of a tiny Wan then equal the dense model's, not the radial
  one's). :func:`enable_sequence_parallel` installs a hook that refuses a radial forward that
  could be differentiated; train with :func:`radial_attention.distributed.ulysses_attention`,
  whose backward is the radial one.
- Ulysses only (``ring_degree == 1``): ring attention would call the attention once per key chunk.
- only the ``"native"`` attention backend: the other native variants (``_native_cudnn``, ...)
  call an aten kernel directly under context parallelism, which radial attention does not see.
- ``S`` must be divisible by ``N`` unless ``ulysses_anything=True`` (then diffusers' uneven
  gathers need NCCL: gloo's ``all_gather`` needs equal sizes).
- only models that define a ``_cp_plan`` (Wan; HunyuanVideo has none in diffusers 0.42).
"""

from __future__ import annotations

import contextlib
from typing import List, Optional

import torch

# diffusers backends under which the context-parallel attention is a torch SDPA call (None = the
# active default, "native" unless DIFFUSERS_ATTN_BACKEND says otherwise).
CP_RADIAL_BACKENDS = (None, "native")


def _transformers(model) -> List[torch.nn.Module]:
    """The diffusers transformers of a pipeline (components with an ``enable_parallelism``), or ``[model]``."""
    if hasattr(model, "components") and isinstance(getattr(model, "components"), dict):
        # diffusers pipelines name their denoisers "transformer", "transformer_2" (Wan2.2 A14B).
        found = [
            m for name, m in model.components.items()
            if name.startswith("transformer") and isinstance(m, torch.nn.Module) and hasattr(m, "enable_parallelism")
        ]
        if not found:
            raise TypeError(f"{type(model).__name__} has no video transformer to split across ranks")
        return found
    if isinstance(model, (list, tuple)):
        return list(model)
    return [model]


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


def check_sequence_parallel(model, ulysses_degree: int, *, seq_len: Optional[int] = None, ulysses_anything: bool = False) -> None:
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
    for t in _transformers(model):
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
            if not hasattr(proc, "_attention_backend"):
                continue
            backend = proc._attention_backend
            backend = getattr(backend, "value", backend)
            effective = backend if backend is not None else _active_backend_name()
            if effective != "native":
                raise ValueError(
                    f"{name}.{path} uses diffusers attention backend {effective!r}; radial attention under context "
                    "parallelism needs diffusers' 'native' backend (its Ulysses path makes the one torch SDPA call "
                    "that radial attention replaces): call transformer.reset_attention_backend() / "
                    "set_attention_backend('native')"
                )
            cp = getattr(getattr(proc, "_parallel_config", None), "context_parallel_config", None)
            if cp is not None and cp.ring_degree > 1:
                raise ValueError(
                    f"{name}.{path} runs ring attention (ring_degree={cp.ring_degree}); radial attention supports "
                    "diffusers' Ulysses context parallelism only (ring_degree=1)"
                )
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
    for t in _transformers(model):
        cfg = ContextParallelConfig(ulysses_degree=n, ulysses_anything=ulysses_anything)
        t.enable_parallelism(config=cfg)
        _install_training_guard(t)
        configs.append(cfg)
    return configs


GUARD_HOOK = "radial_sequence_parallel_no_grad"


def _install_training_guard(transformer) -> None:
    """A pre-forward hook that refuses a radial forward with gradients under context parallelism.

    diffusers' Ulysses backward recomputes attention with its own saved-tensor op, outside radial
    attention's hook, so the gradients would be dense attention's: silently wrong. Inference
    (``torch.no_grad``, as diffusers pipelines run) passes through untouched.
    """
    from diffusers.hooks import HookRegistry, ModelHook

    from radial_attention.integrations.diffusers import get_radial_state

    def has_radial(module) -> bool:
        try:
            return get_radial_state(module) is not None
        except TypeError:  # a model class radial attention does not support
            return False

    class NoGradUnderContextParallel(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            if torch.is_grad_enabled() and has_radial(module):
                tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
                if any(t.requires_grad for t in tensors) or any(p.requires_grad for p in module.parameters()):
                    raise RuntimeError(
                        f"{type(module).__name__}: radial attention under diffusers context parallelism is inference "
                        "only: diffusers' Ulysses backward would recompute dense attention. Run the forward under "
                        "torch.no_grad() (or freeze the parameters), or train with "
                        "radial_attention.distributed.ulysses_attention, whose backward is the radial one"
                    )
            return args, kwargs

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(GUARD_HOOK) is None:
        registry.register_hook(NoGradUnderContextParallel(), GUARD_HOOK)


def sequence_parallel_degree(model) -> int:
    """The Ulysses degree a transformer (or a pipeline's first transformer) runs with; 1 without context parallelism."""
    t = _transformers(model)[0]
    cp = getattr(getattr(t, "_parallel_config", None), "context_parallel_config", None)
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
