"""The model registry (radial_attention.models) against the real diffusers models.

Every registered family must have a case here (``FORWARD_CASES``), so adding a model to the
registry without its test fails: the entry's patch and VAE strides are checked against the tiny
models and pipelines of ``radial_attention.testing.tiny``, and the layout the registry predicts
(video frames x tokens per frame, extra tokens after) against the self-attention calls of a real
tiny forward, module by module.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from radial_attention.mask import PRESETS, video_layout
from radial_attention.models import (
    FAMILIES,
    VARIANTS,
    family_for_pipeline,
    family_for_transformer,
    get_variant,
    patch_from_config,
    recommended_schedule,
)
from radial_attention.testing import tiny


# ------------------------------------------------------------------------------------- the data
def test_entries_are_consistent():
    names = [n for v in VARIANTS.values() for n in (v.name, *v.aliases)]
    assert len(names) == len(set(names)), "a variant name or alias is used twice"
    classes = [c for f in FAMILIES.values() for c in f.transformer_classes]
    assert len(classes) == len(set(classes)), "a transformer class is in two families"
    pipelines = [c for f in FAMILIES.values() for c in f.pipeline_classes]
    assert len(pipelines) == len(set(pipelines)), "a pipeline class is in two families"
    for fam in FAMILIES.values():
        assert any(v.family == fam.name for v in VARIANTS.values()), f"{fam.name} has no variant"
        assert fam.default_preset in PRESETS and (fam.expert_preset is None or fam.expert_preset in PRESETS)
        assert fam.extra_tokens in ("none", "after", "before", "both")
        assert fam.sdpa_calls in ("one", "per_batch_item", "zero_or_one")
        assert fam.hidden_states in ("BCFHW", "BFCHW", "BSC")
        assert fam.default_block_size in (64, 128)
        # Tokens before the video: their count at the usual prompt length, and where a call says it
        # (LTX-Video: none at the usual T2V call, the condition pipeline's keyframes from video_coords).
        assert fam.has_prefix_tokens == (fam.prefix_tokens_input is not None)
        assert fam.prefix_tokens == 0 or fam.has_prefix_tokens
        assert fam.prefix_tokens_input != "video_coords" or fam.hidden_states == "BSC"
        assert set(fam.image_to_video_pipelines) <= set(fam.pipeline_classes)
        assert fam.latent_normalisation in ("mean_std", "scaling_factor")
        assert fam.prompt_outputs[0] == "prompt_embeds"
        if fam.lora_pipeline_class is not None:  # train-lora needs the rest of the training fields
            assert fam.lora_attention_targets and fam.flow_shift is not None
    for v in VARIANTS.values():
        assert v.family in FAMILIES and v.preset in PRESETS
        assert v.block_size == FAMILIES[v.family].default_block_size
        assert get_variant(v.name) is v and all(get_variant(a.upper()) is v for a in v.aliases)


def test_class_names_exist_in_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for fam in FAMILIES.values():
        pipelines = (*fam.pipeline_classes, *fam.step_matrix_pipelines, *filter(None, [fam.lora_pipeline_class]))
        for name in (*fam.transformer_classes, *pipelines):
            assert hasattr(diffusers, name), f"{fam.name}: diffusers has no {name}"


def test_schedules_by_preset():
    # The reference's settings (README "Recommended schedules"); a preset no model names gets Wan2.1's.
    got = {p: (recommended_schedule(p).dense_steps, recommended_schedule(p).dense_layers) for p in PRESETS}
    assert got == {"wan": (12, 1), "wan-full": (12, 1), "hunyuan": (12, 0), "wan2.2": (11, 1)}


def test_registry_imports_no_library():
    """Plain data: the registry sits below the mask layer and imports neither torch nor diffusers."""
    root = pathlib.Path(__file__).resolve().parents[1] / "radial_attention" / "models"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for m in mods:
                top = m.split(".")[0]
                assert top in ("__future__", "dataclasses", "typing") or m == "radial_attention._deprecation", (
                    f"{path.name} imports {m}"
                )


def test_lookups_and_errors():
    assert family_for_transformer("WanTransformer3DModel") is FAMILIES["wan"]
    assert family_for_transformer("WanVACETransformer3DModel") is FAMILIES["wan-vace"]  # not Wan's: exact names
    assert family_for_transformer("WanAnimate2Transformer3DModel") is None  # no subclasses or prefixes
    assert family_for_pipeline("HunyuanVideoPipeline") is FAMILIES["hunyuan"]
    with pytest.raises(ValueError, match="unknown model family 'sora'; expected one of"):
        get_variant("sora")
    with pytest.raises(ValueError, match=r"patch_size must be \(t, h, w\) or one int, got \[1, 2\]"):
        patch_from_config({"patch_size": [1, 2]})
    assert patch_from_config({"patch_size": 2}) == (1, 2, 2)  # Mochi: no temporal patch
    assert patch_from_config({"patch_size": 2, "patch_size_t": None}) == (1, 2, 2)


def test_old_names_warn():
    import radial_attention.mask as mask
    from radial_attention.models import ModelVariant
    from radial_attention.train.model import family_of

    with pytest.warns(DeprecationWarning, match="radial_attention.mask.ModelFamily"):
        assert mask.ModelFamily is ModelVariant
    with pytest.warns(DeprecationWarning, match="train.model.family_of"):
        assert family_of(tiny.tiny_wan_transformer(num_layers=1)) == "wan"


# ------------------------------------------------------------------------------ a real forward
class _SelfAttentionLog(TorchFunctionMode):
    """``(module, q length, k length)`` of every SDPA call, with the attention module running it."""

    def __init__(self, model):
        super().__init__()
        self.calls, self._running = [], []
        self._hooks = []
        for name, m in model.named_modules():
            if hasattr(m, "processor"):
                self._hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: self._running.append(n)))
                self._hooks.append(m.register_forward_hook(self._ended))

    def _ended(self, module, args, output):
        self._running.pop()  # returns None: a forward hook's return value would replace the output

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            self.calls.append((self._running[-1] if self._running else None, q.shape[-2], k.shape[-2]))
        return func(*args, **kwargs)

    def close(self):
        for h in self._hooks:
            h.remove()


def _wan(variant):
    return lambda: tiny.tiny_wan_transformer(variant, num_layers=2)


def _hunyuan():
    return tiny.tiny_hunyuan_transformer(num_layers=1, num_single_layers=1)


def _cogvideox(version):
    return lambda: tiny.tiny_cogvideox_transformer(version, num_layers=2)


def _cogvideox_inputs(model, frames, height, width):
    # The pipeline pads the latent frames at the front to a multiple of patch_size_t (1.5: 2).
    p_t = model.config.patch_size_t or 1
    return tiny.cogvideox_inputs(model, -(-frames // p_t) * p_t, height, width)


TEXT = 5  # prompt tokens of the forwards below


def _wan_call(m, f, h, w):
    return tiny.wan_inputs(m, f, h, w, text_len=TEXT)


def _skyreels_df_call(m, f, h, w):
    # Diffusion forcing: one timestep per latent frame.
    kwargs = dict(tiny.wan_inputs(m, f, h, w, text_len=TEXT), enable_diffusion_forcing=True)
    kwargs["timestep"] = torch.linspace(900, 100, f)[None]
    return kwargs


def _hunyuan15_call(image):
    # TEXT condition tokens after the video: 2 Qwen + 2 byT5 + 1 image token (T2V: the image one masked).
    return lambda m, f, h, w: tiny.hunyuan15_inputs(m, f, h, w, text_len=2, text_len_2=2, image_tokens=1, image=image)


# family -> cases: (variant, tiny builder, inputs(model, latent F, H, W)). Each gets TEXT prompt tokens.
FORWARD_CASES = {
    "wan": [
        ("wan2.1", _wan("t2v"), lambda m, f, h, w: tiny.wan_inputs(m, f, h, w, text_len=TEXT)),
        ("wan2.1", _wan("i2v"), lambda m, f, h, w: tiny.wan_inputs(m, f, h, w)),  # I2V: image tokens to attn2
        ("wan2.2-a14b", _wan("a14b"), lambda m, f, h, w: tiny.wan_inputs(m, f, h, w, text_len=TEXT)),
        ("wan2.2-ti2v-5b", _wan("ti2v"), lambda m, f, h, w: tiny.wan_inputs(m, f, h, w, text_len=TEXT)),
    ],
    "hunyuan": [
        ("hunyuan", _hunyuan, lambda m, f, h, w: tiny.hunyuan_inputs(m, f, h, w, text_len=TEXT)),
    ],
    "skyreels-v2": [
        ("skyreels-v2", lambda: tiny.tiny_skyreels_transformer("t2v"), _wan_call),
        ("skyreels-v2", lambda: tiny.tiny_skyreels_transformer("i2v"), lambda m, f, h, w: tiny.wan_inputs(m, f, h, w)),
        ("skyreels-v2", lambda: tiny.tiny_skyreels_transformer("df"), _skyreels_df_call),
    ],
    # One SDPA call per batch item, with that item's valid prompt tokens (batch 1 here: one call).
    "mochi": [("mochi", tiny.tiny_mochi_transformer, lambda m, f, h, w: tiny.mochi_inputs(m, f, h, w, text_len=TEXT))],
    # Text first: the tiny models' max_text_seq_length (10) prompt tokens, then the video.
    "cogvideox": [
        ("cogvideox-1.0", _cogvideox("1.0"), _cogvideox_inputs),
        ("cogvideox-1.5", _cogvideox("1.5"), _cogvideox_inputs),
    ],
    # The control branch's self-attention (vace_blocks) runs first, over the same video tokens.
    "wan-vace": [
        (
            "wan-vace",
            lambda: tiny.tiny_wan_vace_transformer(num_layers=2, vace_layers=(0, 1)),
            lambda m, f, h, w: tiny.wan_vace_inputs(m, f, h, w, text_len=TEXT),
        ),
    ],
    # Latent frame 0 is the reference image: F = 1 + the segment's latent frames. The face adapter's
    # per-frame cross-attention (queries: one frame's tokens, keys: motion tokens) is not the video's.
    "wan-animate": [("wan-animate", tiny.tiny_wan_animate_transformer, tiny.wan_animate_inputs)],
    # Joint attention over [video, image, byT5, Qwen tokens], pairwise-masked (T2V and I2V).
    "hunyuan15": [
        ("hunyuanvideo-1.5", lambda: tiny.tiny_hunyuan15_transformer("t2v"), _hunyuan15_call(False)),
        ("hunyuanvideo-1.5", lambda: tiny.tiny_hunyuan15_transformer("i2v"), _hunyuan15_call(True)),
    ],
    # Packed tokens [B, S, C]: the latent grid is the forward's num_frames / height / width.
    "ltx": [("ltx-video", tiny.tiny_ltx_transformer, lambda m, f, h, w: tiny.ltx_inputs(m, f, h, w, text_len=TEXT))],
    # The audio self-attention (5 audio tokens) and the audio<->video cross-attention are not listed.
    "ltx2": [("ltx-2", tiny.tiny_ltx2_transformer, lambda m, f, h, w: tiny.ltx2_inputs(m, f, h, w, text_len=TEXT))],
}


# Families whose tokens after the video are not the prompt's (LTX-2: keyframes / references, none in a
# plain call); in the others' they are.
NOT_PROMPT_AFTER = {"ltx2"}


def test_every_family_has_a_forward_case():
    assert set(FORWARD_CASES) == set(FAMILIES), "add a case to FORWARD_CASES for every registry family"


@pytest.mark.filterwarnings("ignore:In CPU autocast:UserWarning")  # Mochi's RoPE asks for float32 autocast
@pytest.mark.parametrize(
    "family,variant,build,inputs",
    [(fam, *case) for fam, cases in FORWARD_CASES.items() for case in cases],
    ids=[f"{fam}-{case[0]}-{i}" for fam, cases in FORWARD_CASES.items() for i, case in enumerate(cases)],
)
def test_layout_of_a_real_forward_is_the_registry_prediction(family, variant, build, inputs):
    from radial_attention.integrations.diffusers.families import attention_paths, call_layout, family_of

    fam, v = FAMILIES[family], VARIANTS[variant]
    model = build()
    assert family_for_transformer(type(model).__name__) is fam
    assert patch_from_config(model.config) == v.patch, "the tiny config's patch is not the checkpoints'"
    # A pixel video the variant can take: 2 token rows x 3 token columns, 3 latent frames.
    height, width, frames = 2 * v.spatial_stride, 3 * v.spatial_stride, 2 * v.temporal_compression + 1
    # The registry's prediction: the prompt's tokens follow the video where the family says so.
    # CogVideoX: the whole prompt, first (LTX-Video's condition tokens: none in a plain call)
    prefix = tiny.COGVIDEOX_TEXT_TOKENS if fam.prefix_tokens else 0
    layout = video_layout(
        variant,
        height,
        width,
        frames,
        extra_tokens=TEXT if fam.has_extra_tokens and family not in NOT_PROMPT_AFTER else 0,
        prefix_tokens=prefix,
    )
    # Reference frames (Wan Animate's reference image) are latent frames in front of the video.
    assert (layout.frames, layout.tokens_per_frame) == (3 + fam.reference_frames, 6)
    t_vae, s_vae = v.vae_strides
    latent = ((frames - 1) // t_vae + 1 + fam.reference_frames, height // s_vae, width // s_vae)
    kwargs = inputs(model, *latent)
    log = _SelfAttentionLog(model)
    try:
        with torch.no_grad(), log:
            model(**kwargs)
    finally:
        log.close()
    # The self-attention over the video: queries and keys are the whole predicted sequence.
    seen = [name for name, q, k in log.calls if q == k == layout.seq_len]
    if fam.patchable:
        assert family_of(model) is fam
        # (packed families read the grid from the call's arguments, not from hidden_states' shape)
        got = call_layout(model, kwargs["hidden_states"], kwargs=kwargs)
        assert got == (layout.frames, layout.tokens_per_frame)
        assert seen == attention_paths(model), f"the video self-attention ran in {seen}"
        assert len(seen) == sum(len(getattr(model, blocks)) for blocks, _ in fam.self_attention)
    else:
        with pytest.raises(TypeError, match="radial attention supports the diffusers transformers"):
            family_of(model)
        assert seen and all(name is not None for name in seen)


@pytest.mark.parametrize(
    "build,variant",
    [
        (lambda: tiny.tiny_wan_pipeline("t2v", num_layers=1), "wan2.1"),
        (lambda: tiny.tiny_wan_pipeline("a14b", num_layers=1), "wan2.2-a14b"),
        (lambda: tiny.tiny_wan_pipeline("ti2v", num_layers=1), "wan2.2-ti2v-5b"),
        (lambda: tiny.tiny_hunyuan_pipeline(), "hunyuan"),
        (lambda: tiny.tiny_hunyuan15_pipeline(num_layers=1), "hunyuanvideo-1.5"),
    ],
    ids=["wan2.1", "wan2.2-a14b", "wan2.2-ti2v-5b", "hunyuan", "hunyuanvideo-1.5"],
)
def test_tiny_pipelines_match_their_variant(build, variant):
    """VAE strides the pipeline reports, the family encode sees, and the preset apply_radial_attention picks."""
    from radial_attention.integrations.diffusers.apply import _default_preset
    from radial_attention.integrations.diffusers.families import find_transformers
    from radial_attention.train.encode import pipeline_family

    pipe, v = build(), VARIANTS[variant]
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == v.vae_strides
    assert family_for_pipeline(type(pipe).__name__).name == v.family == pipeline_family(pipe)
    transformers, _, pipeline = find_transformers(pipe)
    assert _default_preset(transformers, pipeline) == v.preset
    for t in transformers:
        assert patch_from_config(t.config) == v.patch
