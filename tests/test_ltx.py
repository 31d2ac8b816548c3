"""LTX-Video and LTX-2's video stream with radial attention (tiny real diffusers transformers, CPU,
random weights).

Both take packed tokens ``hidden_states [B, S, C]``: the layout comes from the forward arguments
``num_frames, height, width`` (or LTX-Video's ``video_coords``), not from the tensor. The oracle is the
unpatched model whose video self-attention (``transformer_blocks.i.attn1``) SDPA call gets the radial
mask as a token-level boolean mask; every other attention (text, LTX-2's audio and audio<->video)
runs as it is in both.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

pytest.importorskip("diffusers")

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    remove_radial_attention,
)
from radial_attention.mask import radial_block_mask, video_layout  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402

# Latent 12 frames x 6 x 7: T = 42 tokens per frame, S = 504 (not a multiple of the default block 64).
FRAMES, H, W = 12, 6, 7
T = H * W
BUILD = {"ltx": tiny.tiny_ltx_transformer, "ltx2": tiny.tiny_ltx2_transformer}
INPUTS = {"ltx": tiny.ltx_inputs, "ltx2": tiny.ltx2_inputs}


class _MaskedVideoSelfAttention(TorchFunctionMode):
    """The oracle: every SDPA call made while one of ``paths`` runs gets ``attn_mask=token_mask``
    (``token_mask`` a callable of the call's sequence length)."""

    def __init__(self, model, paths, token_mask):
        super().__init__()
        self.token_mask, self.running, self.hooks, self.masked = token_mask, [], [], 0
        for p in paths:
            m = model.get_submodule(p)
            self.hooks.append(m.register_forward_pre_hook(lambda mod, a: self.running.append(mod)))
            self.hooks.append(m.register_forward_hook(lambda mod, a, out: self.running.pop() and None))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.running:
            assert kwargs.get("attn_mask") is None  # no mask of the model's own in these calls
            q = args[0] if args else kwargs["query"]
            kwargs = dict(kwargs, attn_mask=self.token_mask(q.shape[-2]))
            self.masked += 1
        return func(*args, **kwargs)


def _run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)


def _oracle(model, kwargs, mask):
    paths = attention_modules(model)
    mode = _MaskedVideoSelfAttention(model, paths, mask.to_token_mask)
    try:
        with mode:
            out = _run(model, kwargs)
    finally:
        for h in mode.hooks:
            h.remove()
    assert mode.masked == len(paths)
    return out


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _check_against_oracle(model, kwargs, mask_key, mask, outputs=1):
    dense = _run(model, kwargs)
    state = apply_radial_attention(model)
    radial = _run(model, kwargs)
    assert state.config.block_size == 64 and state.config.preset == "wan"  # the family's defaults
    assert list(state.masks) == [mask_key]  # keyed (F, T, prefix Y, suffix X)
    assert torch.equal(state.masks[mask_key].to_dense(), mask.to_dense())
    assert state.summary()["radial_calls"] == len(attention_modules(model)) == 2
    remove_radial_attention(model)
    expected = _oracle(model, kwargs, mask)
    for i in range(outputs):  # LTX-2: video and audio
        err, diff = _rel(radial[i], expected[i]), _rel(radial[i], dense[i])
        assert err < 1e-5, f"output {i}: radial differs from the masked unpatched model by {err}"
        assert diff > 1e-3 and diff > 100 * err, f"output {i}: radial too close to dense ({diff}) to test anything"
    return radial, expected


# ------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("family", ["ltx", "ltx2"])
def test_radial_equals_unpatched_model_with_the_mask_as_token_mask(family):
    model = BUILD[family]()
    kwargs = INPUTS[family](model, FRAMES, H, W, batch=2)  # batch 2, as CFG runs it
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64)
    assert mask.density <= 0.6 and (FRAMES * T) % 64
    _check_against_oracle(model, kwargs, (FRAMES, T, 0, 0), mask, outputs=2 if family == "ltx2" else 1)


def test_ltx_condition_tokens_before_the_video_come_from_video_coords():
    # LTXConditionPipeline: one latent frame of a keyframe condition (pixel frame 16) first, then the
    # video grid; the transformer gets only video_coords (time divided by the frame rate) and
    # per-token timesteps.
    model = tiny.tiny_ltx_transformer()
    kwargs = tiny.ltx_inputs(model, FRAMES, H, W, batch=2)
    for k in ("num_frames", "height", "width", "rope_interpolation_scale"):
        kwargs.pop(k)
    coords = tiny.ltx_condition_coords(2, FRAMES, H, W, prefix_frames=1)
    coords[:, 0] /= 25.0
    kwargs.update(
        hidden_states=torch.randn(2, T + FRAMES * T, 8, generator=torch.Generator().manual_seed(1)),
        video_coords=coords,
        timestep=torch.cat([torch.zeros(2, T), torch.full((2, FRAMES * T), 500.0)], dim=1),
    )
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64, prefix_tokens=T)
    assert mask.density <= 0.6
    radial = _check_against_oracle(model, kwargs, (FRAMES, T, T, 0), mask)[0][0]
    # The prefix really is dense and first: the mask with those tokens after the video differs.
    after = radial_block_mask(FRAMES, T, preset="wan", block_size=64, extra_tokens=T)
    assert not torch.equal(after.to_dense(), mask.to_dense())
    assert _rel(radial, _oracle(model, kwargs, after)[0]) > 1e-3


def test_ltx_coords_of_a_plain_grid_and_the_cached_read():
    model = tiny.tiny_ltx_transformer(num_layers=1)
    kwargs = tiny.ltx_inputs(model, FRAMES, H, W)
    coords = tiny.ltx_condition_coords(1, FRAMES, H, W)
    state = apply_radial_attention(model)
    grid = dict(kwargs, video_coords=coords)
    for k in ("num_frames", "height", "width"):
        grid.pop(k)
    _run(model, grid)
    _run(model, dict(grid, timestep=torch.full((1,), 400.0)))  # same tensor: read once, then cached
    assert list(state.masks) == [(FRAMES, T, 0, 0)] and state.step == 1
    coords[0, 0, :T] = 8.0  # changed in place: read again, and refused (no time-0 frame)
    with pytest.raises(ValueError, match="no token has time coordinate 0"):
        _run(model, grid)


def test_ltx2_keyframe_tokens_after_the_video_are_dense_suffix_tokens():
    # LTX2ConditionPipeline appends keyframe tokens after the grid and still passes num_frames/height/width.
    model = tiny.tiny_ltx2_transformer()
    kwargs = tiny.ltx2_inputs(model, FRAMES, H, W, batch=2)
    extra = 20
    hidden = kwargs["hidden_states"]
    kwargs["hidden_states"] = torch.cat([hidden, hidden[:, :extra]], dim=1)
    grid = model.rope.prepare_video_coords(2, FRAMES, H, W, hidden.device, fps=24.0)
    kwargs["video_coords"] = torch.cat([grid, grid[:, :, :extra]], dim=2)
    kwargs["timestep"] = torch.full((2, FRAMES * T + extra), 500.0)  # per token, as the pipeline's video_timestep
    kwargs["audio_timestep"] = torch.full((2,), 500.0)
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64, extra_tokens=extra)
    assert mask.density <= 0.6
    _check_against_oracle(model, kwargs, (FRAMES, T, 0, extra), mask, outputs=2)


def test_ltx2_audio_stream_stays_as_it_is():
    model = tiny.tiny_ltx2_transformer()
    assert attention_modules(model) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    kwargs = tiny.ltx2_inputs(model, FRAMES, H, W, batch=2)
    # Without the audio<->video cross-attention the audio never sees the video: bit for bit the same.
    isolated = dict(kwargs, isolate_modalities=True)
    before = _run(model, isolated)
    apply_radial_attention(model)
    after = _run(model, isolated)
    assert torch.equal(after[1], before[1]) and not torch.equal(after[0], before[0])
    # With it, the audio changes only through the video it attends to: the audio self-attention's
    # calls are not hooked, so their processors still see their own audio sequences (5 tokens).
    audio = model.transformer_blocks[0].audio_attn1
    assert "_diffusers_hook" not in audio.__dict__ and "forward" not in audio.__dict__
    remove_radial_attention(model)


@pytest.mark.parametrize("family", ["ltx", "ltx2"])
def test_all_dense_schedule_and_removal_are_exactly_the_original(family):
    model = BUILD[family]()
    kwargs = INPUTS[family](model, FRAMES, H, W, batch=2)
    before = _run(model, kwargs)
    attn = model.get_submodule(attention_modules(model)[0])
    processor = attn.processor
    state = apply_radial_attention(model, dense_steps=1000, dense_backend="sdpa")
    for got, want in zip(_run(model, kwargs), before):
        assert torch.equal(got, want)
    assert state.summary()["radial_calls"] == 0 and state.summary()["dense_calls"] == 2
    remove_radial_attention(model)
    assert "_diffusers_hook" not in model.__dict__ and "forward" not in model.__dict__
    assert "_diffusers_hook" not in attn.__dict__ and "forward" not in attn.__dict__
    assert attn.processor is processor
    for got, want in zip(_run(model, kwargs), before):
        assert torch.equal(got, want)
    apply_radial_attention(model)  # radial once more, then removed: the original again
    assert not torch.equal(_run(model, kwargs)[0], before[0])
    remove_radial_attention(model)
    for got, want in zip(_run(model, kwargs), before):
        assert torch.equal(got, want)


def test_ltx2_spatio_temporal_guidance_that_skips_the_attention():
    model = tiny.tiny_ltx2_transformer(perturbed_attn=True)
    kwargs = dict(tiny.ltx2_inputs(model, FRAMES, H, W, batch=2), spatio_temporal_guidance_blocks=[1])
    everything = dict(kwargs, perturbation_mask=torch.tensor([0.0, 0.0]))  # block 1's attention skipped
    one = dict(kwargs, perturbation_mask=torch.tensor([1.0, 0.0]))  # one item perturbed: one call
    dense = [_run(model, everything), _run(model, one)]
    state = apply_radial_attention(model)
    radial = [_run(model, everything), _run(model, one)]
    assert dict(state.calls) == {(0, 0, "radial"): 2, (0, 1, "skipped"): 1, (0, 1, "radial"): 1}
    remove_radial_attention(model)
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64)
    for got, call, d in zip(radial, (everything, one), dense):
        expected = _oracle_tolerant(model, call, mask)
        assert _rel(got[0], expected[0]) < 1e-5 and _rel(got[1], expected[1]) < 1e-5
        assert _rel(got[0], d[0]) > 1e-3


def _oracle_tolerant(model, kwargs, mask):
    """``_oracle`` where a module may make no SDPA call (STG skipping the attention)."""
    mode = _MaskedVideoSelfAttention(model, attention_modules(model), mask.to_token_mask)
    try:
        with mode:
            return _run(model, kwargs)
    finally:
        for h in mode.hooks:
            h.remove()


# ------------------------------------------------------------------------------ refusals
def test_ltx2_soft_video_self_attention_mask_is_refused():
    model = tiny.tiny_ltx2_transformer(num_layers=1)
    kwargs = tiny.ltx2_inputs(model, FRAMES, H, W)
    apply_radial_attention(model)
    soft = torch.ones(1, FRAMES * T, FRAMES * T)
    with pytest.raises(ValueError, match="ltx2 transformer: radial attention cannot take video_self_attention_mask"):
        _run(model, dict(kwargs, video_self_attention_mask=soft))
    remove_radial_attention(model)
    _run(model, dict(kwargs, video_self_attention_mask=soft))  # the model itself takes it


@pytest.mark.parametrize(
    "family,change,match",
    [
        ("ltx", dict(num_frames=None), r"from the forward arguments num_frames, height, width \(latent sizes\) \(or "),
        ("ltx2", dict(height=None), r"num_frames, height, width \(latent sizes\); got num_frames=12, height=None"),
        ("ltx", dict(hidden_states=torch.randn(1, 8, FRAMES, H, W)), r"expected packed hidden_states \[B, S, C\]"),
        # A grid that is not the sequence: the model would fail in its RoPE; the hook says what it read.
        ("ltx", dict(num_frames=FRAMES + 1), r"S=504 tokens but num_frames x height x width = 13 x 6 x 7 latent"),
        (
            "ltx2",
            dict(num_frames=FRAMES - 1),
            r"S=504 tokens .* make 462 video tokens \(tokens after the video need video",
        ),
    ],
)
def test_sizes_the_model_cannot_take_are_refused_clearly(family, change, match):
    model = BUILD[family](num_layers=1)
    kwargs = INPUTS[family](model, FRAMES, H, W)
    apply_radial_attention(model)
    with pytest.raises((ValueError, RuntimeError), match=match):
        _run(model, dict(kwargs, **change))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c[:, 0].add_(1.0), "no token has time coordinate 0"),
        (lambda c: c[:, 0, 4 * T : 4 * T + 5].zero_(), "the time-0 tokens are not contiguous"),
        (lambda c: c[:, 0, -3:].fill_(1000.0), "are not frames of 42 tokens in time order"),
    ],
)
def test_ltx_video_coords_without_a_video_grid_are_refused(edit, match):
    from radial_attention.integrations.diffusers.families import layout_from_video_coords

    coords = tiny.ltx_condition_coords(2, FRAMES, H, W, prefix_frames=2)
    assert layout_from_video_coords(coords, coords.shape[2]) == (FRAMES, T, 2 * T)
    edit(coords)
    with pytest.raises(ValueError, match=match):
        layout_from_video_coords(coords, coords.shape[2])
    with pytest.raises(ValueError, match=r"expected video_coords \[B, 3, S\] with S=7 tokens"):
        layout_from_video_coords(coords, 7)


# ------------------------------------------------------------------------------ sizes and defaults
def test_usual_sizes_and_the_default_block_size():
    # LTX-Video 768x512x161: 21 latent frames of 24 x 16 tokens; LTX-2 768x512x121: 16 frames.
    lay = video_layout("ltx-video", 512, 768, 161)
    assert (lay.frames, lay.tokens_per_frame, lay.prefix_tokens, lay.extra_tokens) == (21, 384, 0, 0)
    assert (video_layout("ltx-2", 512, 768, 121).frames, video_layout("ltx2", 512, 768, 121).tokens_per_frame) == (
        16,
        384,
    )
    with pytest.raises(ValueError, match="num_frames must be 8k"):
        video_layout("ltx", 512, 768, 160)
    with pytest.raises(ValueError, match="height must be divisible by 32"):
        video_layout("ltx", 500, 768, 161)
    # Block 64 keeps the mask meaningful where 128 keeps about half of the blocks.
    d64 = radial_block_mask(21, 384, preset="wan", block_size=64).density
    d128 = radial_block_mask(21, 384, preset="wan", block_size=128).density
    assert round(d64, 3) == 0.353 and round(d128, 3) == 0.488
    # An explicit block size still wins.
    model = tiny.tiny_ltx_transformer(num_layers=1)
    assert apply_radial_attention(model, block_size=128).config.block_size == 128


def test_mask_command_defaults_to_the_models_block(capsys):
    from radial_attention.cli.main import main

    assert main(["mask", "--model", "ltx-video", "--height", "512", "--width", "768", "--frames", "161"]) == 0
    out = capsys.readouterr().out
    assert "block=64" in out and "density       0.3531" in out
    assert main(["mask", "--model", "wan2.1", "--height", "480", "--width", "832", "--frames", "81"]) == 0
    assert "block=128" in capsys.readouterr().out


# ------------------------------------------------------------------------------ whole pipelines
# 192 x 224 pixels, 89 frames -> 12 latent frames of 6 x 7 tokens (the tiny VAE has the real 32x / 8x strides).
VIDEO = dict(height=192, width=224, num_frames=89, max_sequence_length=tiny.LTX_TEXT_TOKENS, output_type="pt")


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def ltx_pipe():
    return tiny.tiny_ltx_pipeline()


def test_pipeline_end_to_end_with_cfg_and_schedule(ltx_pipe):
    pipe = ltx_pipe
    call = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=3, **VIDEO)
    assert (pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio) == (8, 32)
    dense = pipe(generator=_gen(), **call).frames
    state = apply_radial_attention(pipe, dense_steps=1)
    radial = pipe(generator=_gen(), **call).frames
    assert radial.shape == dense.shape and torch.isfinite(radial).all() and not torch.equal(radial, dense)
    # CFG is batched (one call per step), the step comes from the scheduler, block 64 by default.
    assert dict(state.calls) == {(s, layer, "dense" if s == 0 else "radial"): 1 for s in range(3) for layer in (0, 1)}
    assert list(state.masks) == [(FRAMES, T, 0, 0)] and state.config.block_size == 64
    remove_radial_attention(pipe)
    assert torch.equal(pipe(generator=_gen(), **call).frames, dense)


def _image():
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, VIDEO["height"], VIDEO["width"], generator=g)  # [0, 1], as diffusers expects


def test_image_to_video_and_condition_pipelines(ltx_pipe):
    from diffusers import LTXConditionPipeline, LTXImageToVideoPipeline
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    # Latents out (no decode: faster, and the comparison below is then of the transformer's work).
    call = dict(prompt="a red fox", num_inference_steps=2, guidance_scale=1.0, **dict(VIDEO, output_type="latent"))
    # Image-to-video: the image is blended into latent frame 0 (per-token timesteps): the T2V layout.
    i2v = LTXImageToVideoPipeline(**ltx_pipe.components)
    state = apply_radial_attention(i2v)
    assert torch.isfinite(i2v(image=_image(), generator=_gen(), **call).frames).all()
    assert list(state.masks) == [(FRAMES, T, 0, 0)] and state.summary()["radial_calls"] == 4
    remove_radial_attention(i2v)
    # Condition pipeline: a keyframe at pixel frame 40 becomes one latent frame of tokens before the
    # video (only video_coords reach the transformer); the radial run equals the unpatched pipeline
    # whose video self-attention gets the mask with that prefix.
    cond = LTXConditionPipeline(**ltx_pipe.components)
    conditions = lambda: [LTXVideoCondition(image=_image(), frame_index=40)]  # noqa: E731
    state = apply_radial_attention(cond)
    radial = cond(conditions=conditions(), generator=_gen(), **call).frames
    assert list(state.masks) == [(FRAMES, T, T, 0)] and state.summary()["radial_calls"] == 4
    remove_radial_attention(cond)
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64, prefix_tokens=T)
    mode = _MaskedVideoSelfAttention(cond.transformer, attention_modules(cond.transformer), mask.to_token_mask)
    try:
        with mode:
            expected = cond(conditions=conditions(), generator=_gen(), **call).frames
    finally:
        for h in mode.hooks:
            h.remove()
    dense = cond(conditions=conditions(), generator=_gen(), **call).frames
    assert mode.masked == 4
    assert float((radial - expected).abs().max()) < 1e-4 < float((radial - dense).abs().max())


@pytest.fixture(scope="module")
def ltx2_pipe():
    return tiny.tiny_ltx2_pipeline()


def test_ltx2_pipeline_end_to_end(ltx2_pipe):
    pipe = ltx2_pipe
    call = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=2, **VIDEO)
    assert (pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio) == (8, 32)
    dense = pipe(generator=_gen(), **call)
    state = apply_radial_attention(pipe, dense_steps=1)
    radial = pipe(generator=_gen(), **call)
    assert radial.frames.shape == dense.frames.shape and torch.isfinite(radial.frames).all()
    assert not torch.equal(radial.frames, dense.frames)
    # Every transformer call of a step (this pipeline makes several: CFG and its other guidance) is
    # dense at step 0 and radial after, the step coming from the scheduler.
    kinds = {(step, kind) for step, _, kind in state.calls}
    assert kinds == {(0, "dense"), (1, "radial")}
    assert list(state.masks) == [(FRAMES, T, 0, 0)] and state.config.block_size == 64
    remove_radial_attention(pipe)
    again = pipe(generator=_gen(), **call)
    assert torch.equal(again.frames, dense.frames) and torch.equal(again.audio, dense.audio)


def test_ltx2_condition_pipeline_keyframe_tokens_after_the_video(ltx2_pipe):
    from diffusers import LTX2ConditionPipeline
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    names = ("scheduler", "vae", "audio_vae", "text_encoder", "tokenizer", "connectors", "transformer", "vocoder")
    pipe = LTX2ConditionPipeline(**{n: ltx2_pipe.components[n] for n in names})
    # A keyframe at latent frame 5 (crf=0: no H.264 re-compression) is appended after the video grid:
    # one frame of 42 dense tokens after the video. Latents out: the transformer's work, no decode.
    call = dict(prompt="a red fox", num_inference_steps=2, guidance_scale=1.0, **dict(VIDEO, output_type="latent"))

    def run():
        conditions = [LTX2VideoCondition(frames=_image(), index=5, crf=0)]
        out = pipe(conditions=conditions, generator=_gen(), **call)
        return out.frames, out.audio

    dense = run()
    state = apply_radial_attention(pipe)
    radial = run()
    assert list(state.masks) == [(FRAMES, T, 0, T)] and state.summary()["radial_calls"] > 0
    remove_radial_attention(pipe)
    mask = radial_block_mask(FRAMES, T, preset="wan", block_size=64, extra_tokens=T)
    mode = _MaskedVideoSelfAttention(pipe.transformer, attention_modules(pipe.transformer), mask.to_token_mask)
    try:
        with mode:
            expected = run()
    finally:
        for h in mode.hooks:
            h.remove()
    for got, want, d in zip(radial, expected, dense):  # video and audio latents
        assert _rel(got, want) < 1e-4 < _rel(got, d)


@pytest.mark.parametrize("family", ["ltx-video", "ltx-2"])
def test_generate_on_a_saved_pipeline(family, tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.main import main
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline(family, str(tmp_path / "tiny"))
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "192"]
    args += ["--width", "224", "--frames", "90", "--steps", "2", "--dense-steps", "1"]
    args += ["--max-sequence-length", str(tiny.LTX_TEXT_TOKENS), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "90 rounded down to 89: this model takes 8k+1 frames" in text
    assert "preset wan" in text and "block 64" in text  # the family's defaults
    assert f"F={FRAMES} T={T} extra=0: density" in text
    frames = imageio.mimread(out)
    assert len(frames) >= 89 and frames[0].shape == (192, 224, 3)
