"""Radial attention on Mochi (tiny real ``MochiTransformer3DModel``, CPU, random weights).

Mochi's processor (``MochiAttnProcessor2_0``) attends once per batch item inside one module
call: item ``b`` attends over ``[video, its valid prompt tokens]`` with no mask, so each call has
its own length and gets its own radial mask (``extra_tokens`` = that item's prompt length). The
oracle is the unpatched model whose per-item SDPA calls are handed that mask token-wise.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

pytest.importorskip("diffusers")

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    get_radial_state,
    remove_radial_attention,
)
from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")  # Mochi's RoPE asks for fp32 autocast

BS = 64
F_, H, W = 12, 14, 12  # T = 7 * 6 = 42 tokens per frame, 504 video tokens: not a multiple of 64
T = 42
LENGTHS = [3, 16]  # the two batch items' valid prompt tokens (as with CFG: a prompt and an empty-ish one)


class _MaskEachCall(TorchFunctionMode):
    """Hands every SDPA call the radial mask of its own length, token-wise (the oracle)."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks  # extra tokens -> RadialBlockMask

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            q = args[0]
            S = q.shape[-2]
            kwargs["attn_mask"] = self.masks[S - F_ * T].to_token_mask(S)[0, 0]
        return func(*args, **kwargs)


class _OracleProcessor:
    def __init__(self, original, masks, layer, layers):
        self.original, self.masks, self.on = original, masks, layers is None or layer in layers

    def __call__(self, attn, *args, **kwargs):
        if not self.on:
            return self.original(attn, *args, **kwargs)
        with _MaskEachCall(self.masks):
            return self.original(attn, *args, **kwargs)


def oracle(model, kwargs, masks, layers=None):
    paths = attention_modules(model)
    originals = {p: model.get_submodule(p).processor for p in paths}
    try:
        for i, p in enumerate(paths):
            _set_processor(model.get_submodule(p), _OracleProcessor(originals[p], masks, i, layers))
        return run(model, kwargs)
    finally:
        for p, proc in originals.items():
            _set_processor(model.get_submodule(p), proc)


def _set_processor(attn, processor):
    attn.processor = processor  # MochiAttention has no set_processor; its forward calls self.processor


def run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)[0]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_each_batch_item_gets_the_mask_of_its_own_prompt_length():
    model = tiny.tiny_mochi_transformer()
    kwargs = tiny.mochi_inputs(model, F_, H, W, batch=2, prompt_lengths=LENGTHS)
    masks = {x: radial_block_mask(F_, T, preset="hunyuan", extra_tokens=x, block_size=BS) for x in LENGTHS}
    assert all(m.density <= 0.6 for m in masks.values())

    dense = run(model, kwargs)
    state = apply_radial_attention(model, block_size=BS)
    radial = run(model, kwargs)
    assert state.config.preset == "hunyuan"  # the registry's default for Mochi (by analogy)
    assert sorted(state.masks) == [(F_, T, 0, 3), (F_, T, 0, 16)]  # (F, T, prefix, extra)
    for x in LENGTHS:
        assert torch.equal(state.masks[(F_, T, 0, x)].to_dense(), masks[x].to_dense())  # (F, T, prefix, extra)
    assert state.summary()["radial_calls"] == len(attention_modules(model)) == 2
    remove_radial_attention(model)

    expected = oracle(model, kwargs, masks)
    err, diff = _rel(radial, expected), _rel(radial, dense)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    assert diff > 5e-3 and diff > 1000 * err, f"radial output too close to dense ({diff}) to test anything"
    # Each item's own mask: item 0 with item 1's mask (or the other way) is a different output.
    swapped = oracle(model, kwargs, {3: masks[3], 16: radial_block_mask(F_, T, preset="wan", extra_tokens=16)})
    assert _rel(radial[1], swapped[1]) > 1e-3 and _rel(radial[0], swapped[0]) < 1e-5


def test_an_item_with_no_prompt_tokens_and_dense_layers():
    model = tiny.tiny_mochi_transformer(num_layers=3)
    kwargs = tiny.mochi_inputs(model, F_, H, W, batch=2, prompt_lengths=[0, 5])
    masks = {x: radial_block_mask(F_, T, preset="hunyuan", extra_tokens=x, block_size=BS) for x in (0, 5)}
    apply_radial_attention(model, dense_layers=1, block_size=BS)
    radial = run(model, kwargs)
    remove_radial_attention(model)
    assert _rel(radial, oracle(model, kwargs, masks, layers={1, 2})) < 1e-5


def test_all_dense_equals_unpatched_exactly_and_removal_restores_the_model():
    model = tiny.tiny_mochi_transformer()
    kwargs = tiny.mochi_inputs(model, F_, H, W, batch=2, prompt_lengths=LENGTHS)
    before = run(model, kwargs)
    modules = dict(model.named_modules())
    dicts = {name: set(vars(m)) for name, m in modules.items()}
    procs = {p: model.get_submodule(p).processor for p in attention_modules(model)}
    forwards = {name: m.forward for name, m in modules.items()}

    state = apply_radial_attention(model, dense_layers=2, block_size=BS)
    assert torch.equal(run(model, kwargs), before)
    assert state.summary()["radial_calls"] == 0
    remove_radial_attention(model)
    apply_radial_attention(model, dense_steps=1, block_size=BS)
    assert torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)

    apply_radial_attention(model, block_size=BS)
    assert not torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)
    assert torch.equal(run(model, kwargs), before)
    assert {name: set(vars(m)) for name, m in model.named_modules()} == dicts
    assert all(model.get_submodule(p).processor is proc for p, proc in procs.items())
    assert all(m.forward == forwards[name] for name, m in model.named_modules())
    assert get_radial_state(model) is None


def test_latent_sizes_mochi_cannot_take_raise_clearly():
    model = tiny.tiny_mochi_transformer(num_layers=1)
    apply_radial_attention(model, block_size=BS)
    with pytest.raises(ValueError, match=r"multiples of its patch 1 x 2 x 2; got hidden_states .*\(F=4, H=7, W=8\)"):
        run(model, tiny.mochi_inputs(model, 4, 7, 8))
    with pytest.raises(ValueError, match=r"expected hidden_states \[B, C, F, H, W\], got \(1, 12, 8, 8\)"):
        run(model, dict(tiny.mochi_inputs(model, 4, 8, 8), hidden_states=torch.randn(1, 12, 8, 8)))


class _BatchedProcessor:
    """A processor that attends over the whole batch in one call (the video only): not Mochi's way."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb=None):
        q, k, v = (
            f(hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return attn.to_out[0](out), attn.to_add_out(encoder_hidden_states) if hasattr(
            attn, "to_add_out"
        ) else encoder_hidden_states


class _TwiceProcessor:
    """Runs the original processor twice: two SDPA calls in one module call."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, *args, **kwargs):
        self.original(attn, *args, **kwargs)
        return self.original(attn, *args, **kwargs)


def test_the_number_of_sdpa_calls_is_checked_per_family():
    model = tiny.tiny_mochi_transformer(num_layers=1)
    apply_radial_attention(model, block_size=BS)
    _set_processor(model.transformer_blocks[0].attn1, _BatchedProcessor())
    with pytest.raises(ValueError, match=r"attends once per batch item.*batch 1 in each call; got \(2, 2, 64, 16\)"):
        run(model, tiny.mochi_inputs(model, 4, 8, 8, batch=2))
    attn = model.transformer_blocks[0].attn1
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    _set_processor(attn, _TwiceProcessor(MochiAttnProcessor2_0()))
    with pytest.raises(
        RuntimeError, match=r"to make one per batch item \(2\) torch scaled_dot_product_attention call, it made 4"
    ):
        run(model, tiny.mochi_inputs(model, 4, 8, 8, batch=2))
    remove_radial_attention(model)

    # Every other family still makes exactly one call per module call.
    wan = tiny.tiny_wan_transformer("t2v", num_layers=1)
    apply_radial_attention(wan, block_size=BS)
    _set_processor(wan.blocks[0].attn1, _TwiceProcessor(wan.blocks[0].attn1.processor))
    with pytest.raises(RuntimeError, match=r"to make one torch scaled_dot_product_attention call, it made 2"):
        run(wan, tiny.wan_inputs(wan, 4, 8, 8, batch=2))


# ------------------------------------------------------------------------------ the whole pipeline
# 64x64 px, 13 frames: latent 3 frames x 8x8 -> 3 x 16 = 48 video tokens, then each item's prompt tokens.
VIDEO = dict(height=64, width=64, num_frames=13, max_sequence_length=16, output_type="pt")


def test_mochi_pipeline_end_to_end_with_cfg():
    pipe = tiny.tiny_mochi_pipeline()
    kwargs = dict(VIDEO, prompt="a cat on a red bench", negative_prompt="blurry", num_inference_steps=3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dense = pipe(generator=gen(), **kwargs).frames
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    out = pipe(generator=gen(), **kwargs).frames
    assert out.shape == (1, 13, 3, 64, 64) and torch.isfinite(out).all()
    # Batched CFG: one transformer call a step, two SDPA calls (prompt and negative prompt) per block.
    assert dict(state.calls) == {
        (0, 0, "dense"): 1,
        (0, 1, "dense"): 1,
        **{(s, i, "radial"): 1 for s in (1, 2) for i in (0, 1)},
    }
    # "a cat on a red bench" + </s> = 7 tokens, "blurry" + </s> = 2: one mask per prompt length.
    assert sorted(state.masks) == [(3, 16, 0, 2), (3, 16, 0, 7)]
    remove_radial_attention(pipe)
    assert torch.equal(pipe(generator=gen(), **kwargs).frames, dense)


def test_generate_writes_a_video_from_a_saved_mochi_pipeline(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.main import run_command
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("mochi", str(tmp_path / "tiny-mochi"))
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "64", "--width", "64"]
    args += ["--frames", "13", "--steps", "3", "--dense-steps", "1", "--block-size", "64"]
    args += ["--max-sequence-length", "16", "--out", str(out), "--device", "cpu"]
    done = run_command(args)
    assert done.code == 0 and done.report["pipeline"] == "MochiPipeline"
    assert done.report["radial"]["preset"] == "hunyuan" and done.report["radial_calls"] > 0
    frames = imageio.mimread(out)
    assert len(frames) == 13 and frames[0].shape == (64, 64, 3)


def test_tiny_pipeline_matches_the_registry_variant():
    from radial_attention.integrations.diffusers.apply import _default_preset
    from radial_attention.integrations.diffusers.families import find_transformers
    from radial_attention.models import VARIANTS, patch_from_config

    pipe, v = tiny.tiny_mochi_pipeline(num_layers=1), VARIANTS["mochi"]
    # MochiPipeline names its strides vae_temporal_scale_factor / vae_spatial_scale_factor.
    assert (pipe.vae_temporal_scale_factor, pipe.vae_spatial_scale_factor) == v.vae_strides
    assert patch_from_config(pipe.transformer.config) == v.patch
    transformers, _, pipeline = find_transformers(pipe)
    assert _default_preset(transformers, pipeline) == v.preset == "hunyuan"


def test_generate_rounds_frames_with_mochis_own_stride_name():
    from types import SimpleNamespace

    from radial_attention.cli.generate_cmd import _frames_the_model_takes

    assert _frames_the_model_takes(SimpleNamespace(vae_temporal_scale_factor=6), 20) == 19  # Mochi: 6k+1
    assert _frames_the_model_takes(SimpleNamespace(vae_scale_factor_temporal=4), 20) == 17  # Wan: 4k+1
    assert _frames_the_model_takes(SimpleNamespace(), 20) == 20
