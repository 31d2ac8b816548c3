"""CogVideoX 1.0 / 1.5 with radial attention (tiny real diffusers transformers, CPU, random weights).

CogVideoX is the model whose text tokens come *before* the video in the self-attention
(``[text, video]``, attn1 of every block) and whose processor calls
``F.scaled_dot_product_attention`` directly. The oracle is the unpatched model whose SDPA call
gets the radial mask (``prefix_tokens`` = the prompt's length) as a token-level boolean mask.
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

BS = 64
TEXT = tiny.COGVIDEOX_TEXT_TOKENS  # 10 prompt tokens before the video
# version -> latent (F, H, W) fed to the transformer; 14 x 12 latent -> T = 7 * 6 = 42 tokens per frame.
# 1.0: 12 token frames; 1.5: 24 latent frames -> 12 token frames (patch_size_t = 2). S = 10 + 504 = 514,
# not a multiple of 64.
SIZES = {"1.0": (12, 14, 12), "1.5": (24, 14, 12)}


class _MaskedSDPA(TorchFunctionMode):
    """Gives every SDPA call inside it ``attn_mask=token_mask`` (the oracle's masked attention)."""

    def __init__(self, token_mask):
        super().__init__()
        self.token_mask = token_mask

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            assert kwargs.get("attn_mask") is None  # CogVideoX passes no mask of its own
            kwargs = dict(kwargs, attn_mask=self.token_mask)
        return func(*args, **kwargs)


class _MaskedProcessor:
    """Test-only processor: the original one, its SDPA call given a token-level mask."""

    def __init__(self, original, token_mask):
        self.original, self.token_mask = original, token_mask

    # Explicit keywords: diffusers drops the ones a processor's signature does not name.
    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        with _MaskedSDPA(self.token_mask):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def _oracle(model, kwargs, mask, seq_len):
    paths = attention_modules(model)
    originals = {p: model.get_submodule(p).processor for p in paths}
    token_mask = mask.to_token_mask(seq_len)
    try:
        for p in paths:
            model.get_submodule(p).set_processor(_MaskedProcessor(originals[p], token_mask))
        return _run(model, kwargs)
    finally:
        for p, proc in originals.items():
            model.get_submodule(p).set_processor(proc)


def _run(model, kwargs):
    with torch.no_grad():
        return model(**kwargs)[0]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_radial_equals_unpatched_model_with_the_mask_as_token_mask(version):
    model = tiny.tiny_cogvideox_transformer(version)
    f, h, w = SIZES[version]
    kwargs = tiny.cogvideox_inputs(model, f, h, w, batch=2)  # batch 2, as CFG runs it
    frames = 12
    mask = radial_block_mask(frames, 42, preset="hunyuan", prefix_tokens=TEXT, block_size=BS)
    assert mask.density <= 0.6
    S = TEXT + frames * 42

    dense = _run(model, kwargs)
    state = apply_radial_attention(model, block_size=BS)
    radial = _run(model, kwargs)
    assert state.config.preset == "hunyuan"  # the family's default, by analogy (no published preset)
    assert list(state.masks) == [(frames, 42, TEXT, 0)]  # keyed (F, T, prefix Y, suffix X)
    assert torch.equal(state.masks[(frames, 42, TEXT, 0)].to_dense(), mask.to_dense())
    # One direct SDPA call per hooked attn1 (the hook raises on any other count).
    assert state.summary()["radial_calls"] == len(attention_modules(model)) == 2
    remove_radial_attention(model)

    expected = _oracle(model, kwargs, mask, S)
    err, diff = _rel(radial, expected), _rel(radial, dense)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    assert diff > 5e-3 and diff > 1000 * err, f"radial output too close to dense ({diff}) to test anything"
    # The text really sits first: the mask of the same tokens with the text after the video differs.
    after = radial_block_mask(frames, 42, preset="hunyuan", extra_tokens=TEXT, block_size=BS)
    assert _rel(radial, _oracle(model, kwargs, after, S)) > 100 * err


def test_prefix_length_is_read_from_each_call():
    # 1.5 has RoPE and no positional table: any prompt length works, and each gets its own mask.
    model = tiny.tiny_cogvideox_transformer("1.5")
    state = apply_radial_attention(model, block_size=BS)
    kwargs = tiny.cogvideox_inputs(model, 24, 14, 12)
    short = dict(kwargs, encoder_hidden_states=kwargs["encoder_hidden_states"][:, :7])
    radial = _run(model, short)
    assert list(state.masks) == [(12, 42, 7, 0)]
    remove_radial_attention(model)
    mask = radial_block_mask(12, 42, preset="hunyuan", prefix_tokens=7, block_size=BS)
    assert _rel(radial, _oracle(model, short, mask, 7 + 12 * 42)) < 1e-5


def test_positional_call():
    # CogVideoX's forward is (hidden_states, encoder_hidden_states, timestep, ...): the hook binds by
    # signature, so the timestep (not the prompt in second place) counts the steps.
    model = tiny.tiny_cogvideox_transformer("1.0", num_layers=1)
    kwargs = tiny.cogvideox_inputs(model, 12, 14, 12)
    state = apply_radial_attention(model, dense_steps=1, block_size=BS)
    with torch.no_grad():
        for t in (500, 400):  # step 0 dense, step 1 radial
            model(kwargs["hidden_states"], kwargs["encoder_hidden_states"], torch.tensor([t]))
    assert state.step == 1 and dict(state.calls) == {(0, 0, "dense"): 1, (1, 0, "radial"): 1}
    assert list(state.masks) == [(12, 42, TEXT, 0)]


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_all_dense_schedule_and_removal_are_exactly_the_original(version):
    model = tiny.tiny_cogvideox_transformer(version)
    kwargs = tiny.cogvideox_inputs(model, *SIZES[version], batch=2)
    before = _run(model, kwargs)
    attn = model.get_submodule(attention_modules(model)[0])
    processor = attn.processor
    state = apply_radial_attention(model, dense_steps=1000, block_size=BS, dense_backend="sdpa")
    assert torch.equal(_run(model, kwargs), before)
    assert state.summary()["radial_calls"] == 0 and state.summary()["dense_calls"] == 2
    remove_radial_attention(model)
    assert "_diffusers_hook" not in model.__dict__ and "forward" not in model.__dict__
    assert "_diffusers_hook" not in attn.__dict__ and "forward" not in attn.__dict__
    assert attn.processor is processor
    assert torch.equal(_run(model, kwargs), before)
    apply_radial_attention(model, block_size=BS)  # radial once more, then removed: the original again
    assert not torch.equal(_run(model, kwargs), before)
    remove_radial_attention(model)
    assert torch.equal(_run(model, kwargs), before)


@pytest.mark.parametrize(
    "version,size,match",
    [
        ("1.5", (23, 14, 12), r"multiples of its patch 2 x 2 x 2; got .*F=23, H=14, W=12.*pads the latent frames"),
        ("1.5", (24, 13, 12), r"multiples of its patch 2 x 2 x 2; got .*F=24, H=13, W=12"),
        ("1.0", (12, 14, 11), r"multiples of its patch 1 x 2 x 2; got hidden_states \[B, F, C, H, W\]"),
    ],
)
def test_sizes_the_model_cannot_take_are_refused_clearly(version, size, match):
    model = tiny.tiny_cogvideox_transformer(version, num_layers=1)
    apply_radial_attention(model, block_size=BS)
    f, h, w = size
    kwargs = tiny.cogvideox_inputs(model, 12, 14, 12)
    kwargs["hidden_states"] = torch.randn(1, f, 4, h, w)
    kwargs.pop("image_rotary_emb", None)
    with pytest.raises(ValueError, match=match):
        _run(model, kwargs)
    with pytest.raises(ValueError, match=r"expected hidden_states \[B, F, C, H, W\], got \(1, 4, 12, 14\)"):
        _run(model, dict(kwargs, hidden_states=torch.randn(1, 4, 12, 14)))


def test_video_layout_of_the_usual_sizes():
    # 1.0 at 720x480x49: 13 latent frames of 45 x 30 tokens, the 226 text tokens first.
    lay = video_layout("cogvideox", 480, 720, 49)
    assert (lay.frames, lay.tokens_per_frame, lay.prefix_tokens, lay.extra_tokens) == (13, 1350, 226, 0)
    assert lay.seq_len == 226 + 13 * 1350
    # 1.5 at 1360x768x81: 21 latent frames, padded to 22 by the pipeline -> 11 token frames of 85 x 48.
    lay = video_layout("cogvideox-1.5", 768, 1360, 81)
    assert (lay.frames, lay.tokens_per_frame, lay.prefix_tokens) == (11, 4080, 226)
    assert video_layout("cogvideox-1.5", 768, 1360, 85).frames == 11  # 22 latent frames: no padding
    with pytest.raises(ValueError, match=r"num_frames must be 4k\+1"):
        video_layout("cogvideox-1.5", 768, 1360, 80)
    with pytest.raises(ValueError, match="height must be divisible by 16"):
        video_layout("cogvideox-1.5", 760, 1360, 81)


# ------------------------------------------------------------------------------ whole pipelines
VIDEO = dict(height=64, width=64, max_sequence_length=TEXT, output_type="pt")  # 8 x 8 latent -> T = 16


# 1.5 only (1.0's pipeline runs in test_image_to_video_pipeline): 17 frames -> 5 latent frames,
# padded to 6 -> 3 token frames.
@pytest.mark.parametrize("version,num_frames,frames", [("1.5", 17, 3)])
def test_pipeline_end_to_end_with_cfg_and_schedule(version, num_frames, frames):
    pipe = tiny.tiny_cogvideox_pipeline(version)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    call = dict(prompt="a red fox", negative_prompt="blurry", num_inference_steps=3, num_frames=num_frames, **VIDEO)
    dense = pipe(generator=gen(), **call).frames
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    radial = pipe(generator=gen(), **call).frames
    assert radial.shape == dense.shape and torch.isfinite(radial).all()
    assert not torch.equal(radial, dense)
    # CFG is batched (one call per step); the step comes from the scheduler; the text is the prefix.
    assert dict(state.calls) == {(s, layer, "dense" if s == 0 else "radial"): 1 for s in range(3) for layer in (0, 1)}
    assert list(state.masks) == [(frames, 16, TEXT, 0)]
    assert video_layout(f"cogvideox-{version}", 64, 64, num_frames).frames == frames
    remove_radial_attention(pipe)
    assert torch.equal(pipe(generator=gen(), **call).frames, dense)


def test_generate_on_a_saved_pipeline(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.main import run_command
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("cogvideox-1.5", str(tmp_path / "tiny-cogvideox"))
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "64"]
    args += ["--width", "64", "--frames", "9", "--steps", "3", "--dense-steps", "1", "--block-size", "64"]
    args += ["--max-sequence-length", str(TEXT), "--out", str(out), "--device", "cpu"]
    done = run_command(args)
    assert done.code == 0 and done.report["radial"]["preset"] == "hunyuan"  # the family's preset
    assert done.report["radial_calls"] > 0
    (layout,) = done.report["masks"]
    assert f"prefix={TEXT}" in layout  # the mask has the text before the video
    frames = imageio.mimread(out)
    assert len(frames) >= 9 and frames[0].shape == (64, 64, 3)


def test_mask_command_puts_the_text_before_the_video():
    from radial_attention.cli.main import run_command

    done = run_command(["mask", "--model", "cogvideox", "--height", "480", "--width", "720", "--frames", "49"])
    r = done.report
    assert done.code == 0 and (r["seq_len"], r["prefix_tokens"], r["extra_tokens"]) == (17_776, 226, 0)
    assert r["frames"] * r["tokens_per_frame"] == 17_550
    expected = radial_block_mask(13, 1350, preset="hunyuan", prefix_tokens=226).density
    assert r["mask"].density == expected and abs(expected - 0.5646) < 1e-4


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_image_to_video_pipeline(version):
    # The image latents are concatenated on channels: the layout is the text-to-video one.
    from diffusers import CogVideoXImageToVideoPipeline

    base = tiny.tiny_cogvideox_pipeline(version)
    extra = {"ofs_embed_dim": 8} if version == "1.5" else {}  # 1.5 I2V takes the ofs embedding
    parts = {k: getattr(base, k) for k in ("tokenizer", "text_encoder", "vae", "scheduler")}
    pipe = CogVideoXImageToVideoPipeline(
        transformer=tiny.tiny_cogvideox_transformer(version, in_channels=8, **extra), **parts
    )
    call = dict(image=torch.rand(1, 3, 64, 64), prompt="a fox", num_inference_steps=2, num_frames=17, **VIDEO)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dense = pipe(generator=gen(), **call).frames
    state = apply_radial_attention(pipe, block_size=BS)
    radial = pipe(generator=gen(), **call).frames
    assert torch.isfinite(radial).all() and not torch.equal(radial, dense)
    assert state.summary()["radial_calls"] == 2 * 2 and list(state.masks) == [
        (5 if version == "1.0" else 3, 16, TEXT, 0)
    ]
    remove_radial_attention(pipe)
    assert torch.equal(pipe(generator=gen(), **call).frames, dense)
