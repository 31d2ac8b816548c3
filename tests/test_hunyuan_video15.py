"""Radial attention on HunyuanVideo 1.5 (tiny real ``HunyuanVideo15Transformer3DModel``, CPU, random weights).

HunyuanVideo 1.5's joint attention runs over ``[video, valid image, valid byT5, valid Qwen
tokens, padding]`` (the model moves each item's valid condition tokens to the front), and its
processor hands SDPA the bool ``[B, 1, S, S]`` mask ``m[q] & m[k]`` of that per-token prefix mask
``m``: padded keys are dropped and padded query rows come out 0. Radial attention turns it into
``key_lengths`` and zeroes those rows. The oracle is the unpatched model whose SDPA calls get the
radial mask ANDed into the model's own mask, token-wise.
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
from radial_attention.integrations.diffusers.sdpa import key_lengths_from_pairwise_mask  # noqa: E402
from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # One thread: the tiny forwards are faster without thread contention on a shared CPU.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BS = 64
F_, H, W = 12, 6, 7  # patch 1: T = 42 tokens per frame, 504 video tokens: not a multiple of 64
T = H * W
EXTRA = 10 + 5 + 7  # Qwen + byT5 + image tokens of tiny.hunyuan15_inputs, valid ones first
S = F_ * T + EXTRA
# Batch 2 with different prompt lengths: Qwen 10 and 4 valid of 10, byT5 2 and 5 of 5.
LENGTHS = dict(prompt_lengths=[10, 4], prompt_lengths_2=[2, 5])


class _AndMask(TorchFunctionMode):
    """Hands every SDPA call the model's own mask AND the radial token mask (the oracle)."""

    def __init__(self, token_mask):
        super().__init__()
        self.token_mask = token_mask  # [1, 1, S, S] bool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is F.scaled_dot_product_attention:
            kwargs["attn_mask"] = kwargs["attn_mask"] & self.token_mask
        return func(*args, **kwargs)


class _OracleProcessor:
    def __init__(self, original, token_mask):
        self.original, self.token_mask = original, token_mask

    # Named arguments: diffusers' Attention drops keywords its processor's signature does not name.
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        with _AndMask(self.token_mask):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def oracle(model, kwargs, mask, layers=None):
    """The unpatched model, its video self-attention (blocks ``layers``) masked by ``mask`` token-wise;
    also the attention modules' outputs (video and condition tokens), by path."""
    paths = attention_modules(model)
    originals = {p: model.get_submodule(p).processor for p in paths}
    token_mask = mask.to_token_mask(S)
    try:
        for i, p in enumerate(paths):
            if layers is None or i in layers:
                model.get_submodule(p).set_processor(_OracleProcessor(originals[p], token_mask))
        return run(model, kwargs)
    finally:
        for p, proc in originals.items():
            model.get_submodule(p).set_processor(proc)


def run(model, kwargs):
    """``(output, {attention path: (video output, condition output)})`` of one forward."""
    seen, hooks = {}, []
    for p in attention_modules(model):
        hooks.append(model.get_submodule(p).register_forward_hook(lambda m, a, out, p=p: seen.__setitem__(p, out)))
    try:
        with torch.no_grad():
            return model(**kwargs)[0], seen
    finally:
        for h in hooks:
            h.remove()


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_radial_equals_the_unpatched_model_fed_the_same_mask(task):
    model = tiny.tiny_hunyuan15_transformer(task)
    kwargs = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, image=task == "i2v", **LENGTHS)
    mask = radial_block_mask(F_, T, preset="hunyuan", extra_tokens=EXTRA, block_size=BS)
    assert mask.density <= 0.6

    dense, _ = run(model, kwargs)
    state = apply_radial_attention(model, block_size=BS)
    radial, radial_attn = run(model, kwargs)
    assert state.config.preset == "hunyuan"  # the registry's default for HunyuanVideo 1.5 (by analogy)
    assert list(state.masks) == [(F_, T, 0, EXTRA)]
    assert torch.equal(state.masks[(F_, T, 0, EXTRA)].to_dense(), mask.to_dense())
    assert state.summary()["radial_calls"] == len(attention_modules(model)) == 2
    remove_radial_attention(model)

    expected, expected_attn = oracle(model, kwargs, mask)
    err, diff = _rel(radial, expected), _rel(radial, dense)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    assert diff > 5e-3 and diff > 1000 * err, f"radial output too close to dense ({diff}) to test anything"
    # Every token of every attention output, the padded condition tokens included (SDPA gives their
    # rows 0, so the module returns to_add_out's bias there): the same as the unpatched model's.
    for p, (video, cond) in radial_attn.items():
        assert _rel(video, expected_attn[p][0]) < 1e-5 and _rel(cond, expected_attn[p][1]) < 1e-5, p
    # Item 1 in T2V has 5 + 4 valid condition tokens: the rest are padding, their rows SDPA's zeros.
    valid = (5 + 4) if task == "t2v" else (7 + 5 + 4)
    bias = model.get_submodule(attention_modules(model)[0]).to_add_out.bias
    assert torch.allclose(radial_attn[attention_modules(model)[0]][1][1, valid:], bias.expand(EXTRA - valid, -1))


def test_image_tokens_are_attended_in_i2v_and_masked_in_t2v(monkeypatch):
    from radial_attention.integrations.diffusers import sdpa

    lengths, original = [], sdpa.key_lengths_from_pairwise_mask

    def spy(*args):
        out = original(*args)
        lengths.append(out.tolist())
        return out

    monkeypatch.setattr(sdpa, "key_lengths_from_pairwise_mask", spy)
    model = tiny.tiny_hunyuan15_transformer("i2v")
    apply_radial_attention(model, block_size=BS)
    i2v = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, image=True, **LENGTHS)
    run(model, tiny.hunyuan15_inputs(model, F_, H, W, batch=2, **LENGTHS))
    out, _ = run(model, i2v)
    # Key lengths per item: the video, then (I2V) 7 image tokens, then the valid byT5 and Qwen ones.
    v = F_ * T
    assert lengths == [[v + 2 + 10, v + 5 + 4]] * 2 + [[v + 7 + 2 + 10, v + 7 + 5 + 4]] * 2
    # I2V: the image tokens are valid keys, so the video's output depends on them.
    other = dict(i2v, image_embeds=torch.randn(i2v["image_embeds"].shape, generator=torch.Generator().manual_seed(1)))
    assert _rel(out, run(model, other)[0]) > 1e-3  # (its image projection starts with a LayerNorm)


def test_dense_layers_and_no_padding():
    model = tiny.tiny_hunyuan15_transformer("i2v", num_layers=3)
    mask = radial_block_mask(F_, T, preset="hunyuan", extra_tokens=EXTRA, block_size=BS)
    for lengths in (LENGTHS, {}):  # {}: every condition token valid, no key lengths at all
        kwargs = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, image=True, **lengths)
        apply_radial_attention(model, dense_layers=1, block_size=BS)
        radial, _ = run(model, kwargs)
        remove_radial_attention(model)
        assert _rel(radial, oracle(model, kwargs, mask, layers={1, 2})[0]) < 1e-5


def test_all_dense_equals_unpatched_exactly_and_removal_restores_the_model():
    model = tiny.tiny_hunyuan15_transformer()
    kwargs = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, **LENGTHS)
    before, _ = run(model, kwargs)
    modules = dict(model.named_modules())
    dicts = {name: set(vars(m)) for name, m in modules.items()}
    procs = {p: model.get_submodule(p).processor for p in attention_modules(model)}
    forwards = {name: m.forward for name, m in modules.items()}

    state = apply_radial_attention(model, dense_layers=2, block_size=BS)
    assert torch.equal(run(model, kwargs)[0], before)
    assert state.summary()["radial_calls"] == 0
    remove_radial_attention(model)
    apply_radial_attention(model, dense_steps=1, block_size=BS)
    assert torch.equal(run(model, kwargs)[0], before)
    remove_radial_attention(model)

    apply_radial_attention(model, block_size=BS)
    assert not torch.equal(run(model, kwargs)[0], before)
    remove_radial_attention(model)
    assert torch.equal(run(model, kwargs)[0], before)
    assert {name: set(vars(m)) for name, m in model.named_modules()} == dicts
    assert all(model.get_submodule(p).processor is proc for p, proc in procs.items())
    assert all(m.forward == forwards[name] for name, m in model.named_modules())
    assert get_radial_state(model) is None


def test_attention_paths_leave_the_token_refiner_alone():
    model = tiny.tiny_hunyuan15_transformer(num_layers=2)
    assert attention_modules(model) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]


# ------------------------------------------------------------------------------ masks it refuses
def _outer(keep):
    return keep[:, None, :, None] & keep[:, None, None, :]


def test_pairwise_mask_becomes_key_lengths_exactly():
    keep = torch.arange(9)[None, :] < torch.tensor([[9], [4]])
    assert key_lengths_from_pairwise_mask(_outer(keep), 2, 9, "x").tolist() == [9, 4]
    assert key_lengths_from_pairwise_mask(_outer(keep[1:]), 3, 9, "x").tolist() == [4, 4, 4]  # [1, ...]: broadcast


def test_the_mask_check_makes_no_full_size_integer_copy():
    """A sum over the [S, S] bool mask makes an int64 copy of it (8 bytes per entry: 21 GB at 480p);
    the check only uses all / any over it."""

    class Log(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.big = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            t = args[0] if args else None
            if (
                isinstance(t, torch.Tensor)
                and t.numel() >= 64 * 64
                and func not in (torch.Tensor.all, torch.Tensor.any)
            ):
                if getattr(func, "__name__", "") not in ("__getitem__", "__invert__", "diagonal", "__get__", "dim"):
                    self.big.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    keep = torch.arange(64)[None, :] < torch.tensor([[64], [40]])
    mask = _outer(keep)
    with Log() as log:
        assert key_lengths_from_pairwise_mask(mask, 2, 64, "x").tolist() == [64, 40]
    assert log.big == [], f"full-size operations on the mask: {log.big}"


@pytest.mark.parametrize(
    "case",
    ["not a prefix", "causal", "one entry dropped", "one entry added", "float", "shape"],
)
def test_masks_that_are_not_a_prefix_outer_product_raise(case):
    keep = torch.arange(9)[None, :] < torch.tensor([[9], [4]])
    m = _outer(keep).clone()
    if case == "not a prefix":  # m[q] & m[k] of a mask with a hole: the diagonal count is no prefix length
        hole = keep.clone()
        hole[0, 2] = False
        m = _outer(hole)
    elif case == "causal":
        m = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9)
    elif case == "one entry dropped":
        m[1, 0, 0, 3] = False
    elif case == "one entry added":
        m[1, 0, 2, 6] = True  # a valid query seeing a padded key
    elif case == "float":
        m = torch.zeros(2, 1, 9, 9).masked_fill(~m, float("-inf"))
    elif case == "shape":
        m = m.expand(2, 2, 9, 9)
    with pytest.raises(
        ValueError, match=r"^x: radial attention accepts (a \[B, 1, S, S\]|a pairwise) attention mask only"
    ):
        key_lengths_from_pairwise_mask(m, 2, 9, "x")


class _CausalProcessor:
    """The original processor, with a causal mask added to its SDPA call: not HunyuanVideo 1.5's mask."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        class Causal(TorchFunctionMode):
            def __torch_function__(self, func, types, a=(), kw=None):
                kw = dict(kw or {})
                if func is F.scaled_dot_product_attention:
                    s = kw["query"].shape[-2]  # diffusers passes every argument by keyword
                    kw["attn_mask"] = kw["attn_mask"] & torch.ones(s, s, dtype=torch.bool).tril()
                return func(*a, **kw)

        with Causal():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


def test_other_masks_and_sizes_it_cannot_take_raise_clearly():
    model = tiny.tiny_hunyuan15_transformer(num_layers=1)
    attn = model.transformer_blocks[0].attn
    attn.set_processor(_CausalProcessor(attn.processor))
    apply_radial_attention(model, block_size=BS)
    kwargs = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, **LENGTHS)
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn: radial attention accepts a \[B, 1, S, S\]"):
        run(model, kwargs)
    remove_radial_attention(model)
    with pytest.raises(ValueError, match=r"expected hidden_states \[B, C, F, H, W\], got \(1, 9, 6, 7\)"):
        apply_radial_attention(model, block_size=BS)
        run(model, dict(kwargs, hidden_states=torch.randn(1, 9, 6, 7)))
    remove_radial_attention(model)
    # The pixel sizes its 16x VAE (and 4x in time) cannot take, named with the nearest that work.
    from radial_attention.mask import video_layout

    with pytest.raises(ValueError, match=r"height must be divisible by 16 .*got 472; nearest valid: 464 or 480"):
        video_layout("hunyuanvideo-1.5", 472, 848, 121)
    with pytest.raises(ValueError, match=r"num_frames must be 4k\+1 .*got 120; nearest valid: 117 or 121"):
        video_layout("hunyuanvideo-1.5", 480, 848, 120)
    layout = video_layout("hunyuanvideo-1.5", 480, 848, 121)
    assert (layout.frames, layout.tokens_per_frame, layout.seq_len) == (31, 1590, 31 * 1590 + 1985)


def test_dense_steps_reach_fa4_dense_with_the_pairwise_mask(monkeypatch):
    """Dense steps on FA4's dense kernel (a stand-in here): key lengths, padded query rows zeroed."""
    from fake_fa4 import FakeFA4

    from radial_attention.ops import api, fa4

    fake = FakeFA4()
    monkeypatch.setattr(fa4, "_fa4", fake)
    monkeypatch.setattr(api, "_reasons", {})
    monkeypatch.setattr(fa4, "IMPORT_ERROR", None)
    monkeypatch.delitem(api._import_errors, "fa4", raising=False)
    monkeypatch.setitem(api._modules, "fa4", fa4)
    monkeypatch.setitem(api._checks, "fa4", lambda q, requires_grad, block_size: None)
    model = tiny.tiny_hunyuan15_transformer()
    kwargs = tiny.hunyuan15_inputs(model, F_, H, W, batch=2, **LENGTHS)
    want, want_attn = run(model, kwargs)
    apply_radial_attention(model, dense_steps=1, block_size=BS)
    got, got_attn = run(model, kwargs)
    remove_radial_attention(model)
    assert sum(1 for c in fake.calls if c[0] == "fwd") >= 2  # every block's dense call went to FA4
    assert _rel(got, want) < 1e-5
    for p, (video, cond) in got_attn.items():
        assert _rel(video, want_attn[p][0]) < 1e-5 and _rel(cond, want_attn[p][1]) < 1e-5, p


# ------------------------------------------------------------------------------ the whole pipeline
def test_hunyuan15_pipeline_end_to_end_with_cfg():
    pipe = tiny.tiny_hunyuan15_pipeline()
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    kwargs = dict(prompt='a cat and the text "hi"', height=64, width=96, num_frames=9, num_inference_steps=2)
    out = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).frames
    assert out.shape == (1, 9, 3, 64, 96) and torch.isfinite(out).all()
    # The guider runs the transformer once per condition (batch 1): two calls a step.
    assert dict(state.calls) == {(0, 0, "dense"): 2, (0, 1, "dense"): 2, (1, 0, "radial"): 2, (1, 1, "radial"): 2}
    # 3 latent frames of 4 x 6 tokens, then 729 image + 256 byT5 + 1000 Qwen condition tokens.
    assert list(state.masks) == [(3, 24, 0, 1985)]
    remove_radial_attention(pipe)
    assert get_radial_state(pipe) is None


def test_hunyuan15_image_to_video_pipeline_with_radial_attention():
    import numpy as np
    from PIL import Image

    pipe = tiny.tiny_hunyuan15_pipeline("i2v")
    image = Image.fromarray((np.random.RandomState(0).rand(64, 96, 3) * 255).astype("uint8"))
    kwargs = dict(image=image, prompt="a cat", num_frames=9, num_inference_steps=2, output_type="pt")
    dense = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    out = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert out.shape == dense.shape == (1, 9, 3, 32, 32) and torch.isfinite(out).all()  # size: target_size 32
    assert dict(state.calls) == {(0, 0, "dense"): 2, (0, 1, "dense"): 2, (1, 0, "radial"): 2, (1, 1, "radial"): 2}
    # 3 latent frames of 2 x 2 tokens, then 16 SigLIP image tokens (valid) + 256 byT5 + 1000 Qwen tokens.
    assert list(state.masks) == [(3, 4, 0, 16 + 256 + 1000)]
    remove_radial_attention(pipe)
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames, dense)


def test_tiny_pipeline_matches_the_registry_variant():
    from radial_attention.integrations.diffusers.apply import _default_preset
    from radial_attention.integrations.diffusers.families import find_transformers
    from radial_attention.models import VARIANTS, patch_from_config

    pipe, v = tiny.tiny_hunyuan15_pipeline(num_layers=1), VARIANTS["hunyuanvideo-1.5"]
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == v.vae_strides
    assert patch_from_config(pipe.transformer.config) == v.patch
    transformers, _, pipeline = find_transformers(pipe)
    assert _default_preset(transformers, pipeline) == v.preset == "hunyuan"


def test_generate_writes_a_video_from_a_saved_hunyuan15_pipeline(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.main import main
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("hunyuan15", str(tmp_path / "tiny-hunyuan15"))
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "64", "--width", "64"]
    args += ["--frames", "9", "--steps", "2", "--dense-steps", "1", "--block-size", "64"]
    args += ["--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "HunyuanVideo15Pipeline" in text and "preset hunyuan" in text and "4 radial and 4 dense" in text
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_generate_writes_a_video_from_a_saved_hunyuan15_i2v_pipeline(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    import numpy as np
    from PIL import Image

    from radial_attention.cli.main import main
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("hunyuan15-i2v", str(tmp_path / "tiny-hunyuan15-i2v"))
    first = tmp_path / "first.png"
    Image.fromarray((np.random.RandomState(0).rand(48, 48, 3) * 255).astype("uint8")).save(first)
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat", "--image", str(first), "--height", "32"]
    args += ["--width", "32", "--frames", "9", "--steps", "2", "--dense-steps", "1", "--block-size", "64"]
    args += ["--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "HunyuanVideo15ImageToVideoPipeline" in text and "sizes the video from its image" in text
    assert "4 radial and 4 dense" in text
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
