"""A tiny Wan transformer under diffusers' Ulysses context parallelism with radial attention.

Two and four CPU processes (gloo) run the same random-weight model, split with
``enable_parallelism(ContextParallelConfig(ulysses_degree=N))`` (the usual diffusers way) or
:func:`enable_sequence_parallel`; their output must equal the single-process model's, with radial
attention on (mask keeping 23% of the blocks, so radial and dense differ clearly).
"""

import pytest
import torch

from radial_attention.distributed import run_workers
from radial_attention.distributed.launch import DEFAULT_PRELOAD

TIMEOUT_S = 180
# The forkserver imports diffusers once, so that no worker imports it again.
PRELOAD = list(DEFAULT_PRELOAD) + [
    "diffusers",
    "diffusers.models.transformers.transformer_wan",
    "diffusers.hooks.context_parallel",
    "radial_attention.integrations.diffusers",
]
HEADS, FRAMES, SIZE = 4, 8, 16  # latent 8 frames x 16x16 -> T = 64 tokens per frame, S = 512


def _model(heads=HEADS):
    from radial_attention.testing.tiny import tiny_wan_transformer, wan_inputs

    model = tiny_wan_transformer(num_heads=heads, head_dim=16, num_layers=2, seed=3)
    return model, wan_inputs(model, FRAMES, SIZE, SIZE, seed=4)


def _radial(model):
    from radial_attention.integrations.diffusers import apply_radial_attention

    return apply_radial_attention(model, block_size=64, backend="reference")


def _run_wan(rank, world, cases):
    """Worker: the tiny Wan output of every case, or the error it raised."""
    from diffusers import ContextParallelConfig

    from radial_attention.integrations.diffusers.context_parallel import (
        diffusers_cpu_context_parallel,
        enable_sequence_parallel,
        sequence_parallel_degree,
    )

    results = {}
    for case in cases:
        try:
            model, inputs = _model(case.get("heads", HEADS))
            state = _radial(model) if case["radial"] and not case.get("radial_last") else None
            with diffusers_cpu_context_parallel():
                if case["how"] == "enable_parallelism":
                    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
                else:
                    if case.get("backend"):
                        model.set_attention_backend(case["backend"])
                    enable_sequence_parallel(model)
            if case.get("radial_last"):
                state = _radial(model)
            with torch.set_grad_enabled(bool(case.get("grad"))):
                out = model(**inputs)[0].detach()
            results[case["name"]] = dict(
                out=out, degree=sequence_parallel_degree(model), summary=None if state is None else state.summary()
            )
        except Exception as e:
            results[case["name"]] = dict(error=f"{type(e).__name__}: {e}")
    return results


CASES_2 = [
    dict(name="radial_then_enable_parallelism", radial=True, how="enable_parallelism"),
    dict(name="radial_then_enable_sequence_parallel", radial=True, how="enable_sequence_parallel"),
    dict(name="enable_parallelism_then_radial", radial=True, radial_last=True, how="enable_parallelism"),
    dict(name="training_refused_direct", radial=True, how="enable_parallelism", grad=True),
    dict(name="dense", radial=False, how="enable_parallelism"),
    dict(name="heads_error", radial=False, how="enable_sequence_parallel", heads=3),
    dict(name="training_refused", radial=True, how="enable_sequence_parallel", grad=True),
    # Last: set_attention_backend also changes diffusers' process-wide default backend.
    dict(name="backend_error", radial=False, how="enable_sequence_parallel", backend="_native_math"),
]
CASES_4 = [dict(name="radial_then_enable_parallelism", radial=True, how="enable_parallelism")]


@pytest.fixture(scope="module")
def single_process():
    model, inputs = _model()
    with torch.no_grad():
        dense = model(**inputs)[0]
    state = _radial(model)
    with torch.no_grad():
        radial = model(**inputs)[0]
    assert max(m.density for m in state.masks.values()) <= 0.6
    return dict(dense=dense, radial=radial)


@pytest.fixture(scope="module")
def world2():
    return run_workers(_run_wan, 2, CASES_2, timeout_s=TIMEOUT_S, preload=PRELOAD)


def _check(results, name, expected):
    for rank, res in enumerate(results):
        r = res[name]
        assert "error" not in r, r.get("error")
        assert r["degree"] == len(results)
        torch.testing.assert_close(r["out"], expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"rank {rank}: {m}")


def test_radial_differs_from_dense(single_process):
    # Otherwise the comparisons below would not show that the radial mask is applied.
    assert (single_process["radial"] - single_process["dense"]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "name", ["radial_then_enable_parallelism", "radial_then_enable_sequence_parallel", "enable_parallelism_then_radial"]
)
def test_two_ranks_equal_single_process_radial(world2, single_process, name):
    _check(world2, name, single_process["radial"])
    summary = world2[0][name]["summary"]
    assert summary["radial_calls"] == 2 and summary["dense_calls"] == 0  # both blocks ran radial


def test_two_ranks_dense_equal_single_process_dense(world2, single_process):
    _check(world2, "dense", single_process["dense"])


def test_four_ranks_equal_single_process_radial(single_process):
    results = run_workers(_run_wan, 4, CASES_4, timeout_s=TIMEOUT_S, preload=PRELOAD)
    _check(results, "radial_then_enable_parallelism", single_process["radial"])


def test_heads_not_divisible_is_a_clear_error(world2):
    msg = world2[0]["heads_error"]["error"]
    assert msg.startswith("ValueError") and "3 attention heads" in msg and "2 ranks cannot share" in msg, msg


def test_non_native_backend_is_a_clear_error(world2):
    msg = world2[0]["backend_error"]["error"]
    assert msg.startswith("ValueError") and "'_native_math'" in msg and "'native'" in msg, msg


def test_check_sequence_parallel_without_a_group():
    from radial_attention.integrations.diffusers.context_parallel import check_sequence_parallel

    model, _ = _model()
    check_sequence_parallel(model, 2, seq_len=FRAMES * 64)
    with pytest.raises(ValueError, match="cannot split evenly"):
        check_sequence_parallel(model, 4, seq_len=FRAMES * 64 + 2)
    check_sequence_parallel(model, 4, seq_len=FRAMES * 64 + 2, ulysses_anything=True)
    with pytest.raises(ValueError, match="which 3 ranks cannot share"):
        check_sequence_parallel(model, 3)
    with pytest.raises(ValueError, match="ulysses_degree must be an integer"):
        check_sequence_parallel(model, 0)


def test_radial_training_under_context_parallelism_is_refused(world2):
    # diffusers' Ulysses backward would recompute dense attention: refuse rather than give wrong gradients.
    msg = world2[0]["training_refused"]["error"]
    assert msg.startswith("RuntimeError") and "inference only" in msg and "ulysses_attention" in msg, msg


def test_radial_training_under_direct_enable_parallelism_is_refused(world2):
    # The guard lives in the radial attention hook too, not only in enable_sequence_parallel.
    msg = world2[0]["training_refused_direct"]["error"]
    assert msg.startswith("RuntimeError") and "inference only" in msg, msg


class _Proc:
    """A stand-in attention processor: its diffusers backend and, once split, its parallel config."""

    def __init__(self, backend=None, ring=None):
        self._attention_backend = backend
        self._parallel_config = None
        if ring is not None:
            from types import SimpleNamespace

            self._parallel_config = SimpleNamespace(context_parallel_config=SimpleNamespace(ring_degree=ring))


def test_one_context_parallel_check_for_apply_and_enable():
    """apply_radial_attention and check_sequence_parallel share check_context_parallel."""
    from radial_attention.integrations.diffusers import apply, context_parallel as cp

    assert apply.check_context_parallel is cp.check_context_parallel
    cp.check_context_parallel("m", _Proc("_native_math"))  # not split: radial attention's own check decides
    with pytest.raises(ValueError, match=r"m uses diffusers attention backend '_native_math'.*'native'"):
        cp.check_context_parallel("m", _Proc("_native_math"), planned=True)
    with pytest.raises(ValueError, match=r"ring attention \(ring_degree=2\).*Ulysses"):
        cp.check_context_parallel("m", _Proc("native", ring=2))
    cp.check_context_parallel("m", _Proc("native", ring=1))


def test_one_training_guard():
    from radial_attention.integrations.diffusers import context_parallel as cp

    module = torch.nn.Linear(2, 2)
    module.processor = _Proc("native", ring=1)
    x = torch.zeros(1, 2)
    with pytest.raises(RuntimeError, match="inference only.*ulysses_attention"):
        cp.refuse_training_under_context_parallel("m", module, (x,), {})
    with torch.no_grad():
        cp.refuse_training_under_context_parallel("m", module, (x,), {})
    module.requires_grad_(False)
    cp.refuse_training_under_context_parallel("m", module, (x,), {})  # frozen, input needs no grad
    with pytest.raises(RuntimeError, match="inference only"):
        cp.refuse_training_under_context_parallel("m", module, (x.requires_grad_(),), {})
    module.processor._parallel_config = None  # not split: no guard
    cp.refuse_training_under_context_parallel("m", module, (x,), {})


def test_context_parallel_finds_transformers_like_apply():
    """One helper finds a pipeline's transformers: an unsupported model is the same TypeError, and a
    transformer given twice is checked (and would be split) once."""
    from radial_attention.integrations.diffusers.context_parallel import check_sequence_parallel
    from radial_attention.integrations.diffusers.families import find_transformers

    with pytest.raises(TypeError, match="radial attention supports the diffusers transformers"):
        check_sequence_parallel(torch.nn.Linear(2, 2), 2)
    model, _ = _model()
    assert find_transformers([model, model])[0] == [model]
    check_sequence_parallel([model, model], 2)
