"""Tiny diffusers video models and pipelines with random weights, built offline from small configs.

Everything here is a *real* diffusers / transformers class (``WanTransformer3DModel``,
``HunyuanVideoTransformer3DModel``, ``AutoencoderKLWan``, ``UMT5EncoderModel``, ...) built from a
small built-in config: same code paths as the released checkpoints, a few thousand to a few
million random parameters, no download. The tests, the benchmarks, the ``demo`` and
``tiny-pipeline`` commands and ``train-lora --model tiny-wan`` use them; a tiny pipeline can be
written with ``save_pretrained`` and read back with ``from_pretrained`` from a local folder
(``generate`` is tested that way). Its old path in the diffusers integration still imports, with
a ``DeprecationWarning``, for one release (:data:`radial_attention._deprecation.MOVED`).

Builders (all take ``seed`` and leave the global RNG as it was):

    tiny_wan_transformer(variant="t2v"|"i2v"|"ti2v"|"a14b", ...)  WanTransformer3DModel
    tiny_wan_a14b_transformers(...)                               (high-noise, low-noise) experts
    tiny_hunyuan_transformer(...)                                 HunyuanVideoTransformer3DModel
    tiny_mochi_transformer(...)                                   MochiTransformer3DModel
    tiny_hunyuan15_transformer(task_type="t2v"|"i2v", ...)        HunyuanVideo15Transformer3DModel
    tiny_skyreels_transformer(variant="t2v"|"i2v"|"df", ...)      SkyReelsV2Transformer3DModel
    tiny_skyreels_pipeline(variant="t2v"|"i2v"|"df"|"df-i2v")     SkyReelsV2Pipeline, ...ImageToVideo, ...DiffusionForcing...
    tiny_wan_pipeline(variant="t2v"|"a14b"|"ti2v", ...)           WanPipeline
    tiny_wan_vace_transformer(vace_layers=(0,), ...)              WanVACETransformer3DModel (+ wan_vace_inputs)
    tiny_wan_vace_pipeline(...)                                   WanVACEPipeline
    tiny_wan_animate_transformer(...)                             WanAnimateTransformer3DModel (+ wan_animate_inputs)
    tiny_wan_animate_pipeline(...)                                WanAnimatePipeline (16x16 face frames)
    tiny_wan_i2v_pipeline(...)                                    WanImageToVideoPipeline (Wan2.1 I2V)
    tiny_hunyuan_pipeline(...)                                    HunyuanVideoPipeline
    tiny_mochi_pipeline(...)                                      MochiPipeline (6x temporal VAE: frames 6k+1)
    tiny_hunyuan15_pipeline(variant="t2v"|"i2v", ...)             HunyuanVideo15Pipeline, ...ImageToVideoPipeline (16x VAE)
    tiny_ltx_transformer(...), ltx_inputs(...)                    LTXVideoTransformer3DModel (packed [B, S, C] tokens)
    tiny_ltx2_transformer(...), ltx2_inputs(...)                  LTX2VideoTransformer3DModel (video + audio)
    tiny_ltx_pipeline(...), tiny_ltx2_pipeline(...)               LTXPipeline (or I2V), LTX2Pipeline (32x VAE)
    tiny_tokenizer(...)                                           word-level fast tokenizer
    tiny_clip_vision_encoder(image_dim, ...)                      (CLIPVisionModel, CLIP image processor)

Latent shapes (``[B, C, F, H, W]``; tokens per frame ``T = (H/2) * (W/2)`` with the 2x2 patch):

    Wan T2V / A14B:  C = 16    Wan I2V: C = 36 (16 noise + 4 mask + 16 image latents, in that order)
    Wan TI2V-5B:     C = 48    HunyuanVideo: C = 16 (tiny pipeline: 4, its tiny VAE's latent width)
    Mochi:           C = 12

Wan2.1 I2V (``tiny_wan_i2v_pipeline``): diffusers' ``WanAttnProcessor`` takes the *last 512*
tokens of the cross-attention context as text and the rest as CLIP image tokens, so call the
pipeline with ``max_sequence_length=512`` (the default of ``__call__``, but ``encode_prompt``'s
default is 226: pass 512 there too; any other length mixes image and text tokens without an
error). Height and width multiples of 16, frames ``4k+1``. Its ``prompt_clean`` calls
``ftfy`` unconditionally (diffusers 0.42): ``ftfy`` is in this package's ``diffusers`` extra.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from radial_attention.testing import configs

# A small English vocabulary for the word-level tokenizer: enough for demo prompts. Words outside
# it map to <unk>, which is fine for random-weight models.
_WORDS = (
    "a an the of and in on with at to from by for is are was be this that it its as into over under "
    "cat dog bird fish horse cow sheep fox bear lion tiger monkey panda rabbit duck owl whale dolphin "
    "man woman child boy girl person people astronaut robot car train boat ship plane bike bus "
    "red orange yellow green blue purple pink white black gray brown golden silver dark bright "
    "big small tall short long old young happy sad fast slow calm wild soft warm cold "
    "walking running jumping flying swimming dancing sitting standing playing reading sleeping eating "
    "walks runs jumps flies swims dances sits stands plays reads sleeps eats drives rides looks "
    "sky sea ocean river lake beach forest tree trees flower flowers grass field mountain mountains hill "
    "city street road bridge house room window door garden park desert snow rain sun moon star stars "
    "night day morning evening sunset sunrise light shadow water fire wind cloud clouds wave waves "
    "video scene shot camera view close up wide slow motion cinematic style photo realistic detailed "
    "high quality background foreground left right center top bottom through around across "
)

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>", "<s>")


@contextlib.contextmanager
def _seeded(seed: int):
    """Build modules from ``seed`` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _cast(model, dtype):
    """``model`` in ``dtype``, eval mode. A float32 build needs no cast; for a low-precision one,
    diffusers' warning about modules it would rather keep in float32 is silenced (these are test
    and demo models; ``from_pretrained(dtype=...)`` is the way for real checkpoints)."""
    if dtype != torch.float32:
        from diffusers.utils import logging as dlogging

        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()
        try:
            model = model.to(dtype)
        finally:
            dlogging.set_verbosity(level)
    return model.eval()


def _seeded_build(model_cls, cfg, seed: int, dtype=torch.float32):
    """``model_cls(**cfg)`` (``cfg`` a dict of keywords) or ``model_cls(cfg)`` (a transformers config
    object) with weights drawn from ``seed``, in ``dtype``, eval mode."""
    with _seeded(seed):
        model = model_cls(**cfg) if isinstance(cfg, dict) else model_cls(cfg)
    # Cast only when asked: a float32 build needs no cast (diffusers warns about fp32-kept modules).
    return _cast(model, dtype)


# ----------------------------------------------------------------------------------- configs
# Small but structurally faithful: the real checkpoints' configs (testing/configs.py) with the widths
# and depths shrunk, so the 2x2 spatial patch, latent channel counts and norms are the real ones.
WAN_TINY = dict(
    configs.WAN21_1_3B,
    num_attention_heads=2,
    attention_head_dim=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=256,
)

HUNYUAN_TINY = dict(
    configs.HUNYUAN_VIDEO,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    mlp_ratio=2.0,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(4, 6, 6),  # sums to attention_head_dim
)

# CLIP vision tower for the tiny Wan2.1 I2V pipeline (hidden_size comes from the transformer's
# image_dim). 32x32 crops, 8x8 patches: 16 patches + CLS = 17 image tokens (real Wan: 257 x 1280).
CLIP_VISION_TINY = dict(
    intermediate_size=48,
    num_hidden_layers=2,  # the pipeline uses hidden_states[-2], the output of layer 1
    image_size=32,
    patch_size=8,
    num_channels=3,
)

WAN_VARIANTS = ("t2v", "i2v", "ti2v", "a14b")


def _tiny_wan_family(
    model_class: str,
    variant: str,
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
):
    """The diffusers class ``model_class`` (Wan, SkyReels-V2, Wan VACE, Wan Animate: one architecture)
    built from :data:`WAN_TINY` at this size with weights drawn from ``seed``: ``variant`` ``"i2v"``
    adds 36 input channels and image cross-attention, ``"ti2v"`` 48 channels; ``overrides`` last."""
    import diffusers

    cfg = dict(WAN_TINY, num_layers=num_layers, num_attention_heads=num_heads, attention_head_dim=head_dim)
    if variant == "i2v":
        cfg.update(in_channels=36, image_dim=24, added_kv_proj_dim=num_heads * head_dim)
    elif variant == "ti2v":
        cfg.update(in_channels=48, out_channels=48)
    cfg.update(overrides)
    return _seeded_build(getattr(diffusers, model_class), cfg, seed, dtype)


def tiny_wan_transformer(variant: str = "t2v", **kwargs):
    """A ``WanTransformer3DModel`` from a tiny config with random weights.

    Args:
        variant: ``"t2v"`` (Wan2.1 T2V: 16 latent channels), ``"i2v"`` (Wan2.1 I2V: 36 input
            channels and image cross-attention keys ``add_k_proj``/``add_v_proj``; call it with
            ``encoder_hidden_states`` of exactly 512 text tokens, which Wan's processor assumes,
            and ``encoder_hidden_states_image`` ``[B, n_img, image_dim]``), ``"ti2v"`` (Wan2.2
            TI2V-5B: 48 channels, per-token timesteps ``[B, S]`` in its pipeline) or ``"a14b"``
            (one Wan2.2 A14B expert: same structure as T2V).
        num_layers, num_heads, head_dim: size (keywords; default 2, 2, 16; ``head_dim`` >= 6: Wan's
            RoPE splits it 3 ways).
        seed: weights are drawn from this seed (default 0); dtype: default float32.
        any other keyword: a ``WanTransformer3DModel`` config value.

    The SkyReels-V2, VACE and Animate builders below take the same keywords.
    """
    if variant not in WAN_VARIANTS:
        raise ValueError(f"unknown Wan variant {variant!r}; expected one of {WAN_VARIANTS}")
    return _tiny_wan_family("WanTransformer3DModel", variant, **kwargs)


def tiny_wan_a14b_transformers(*, seed: int = 0, **kwargs):
    """The two experts of a Wan2.2 A14B-like model: ``(transformer, transformer_2)``, different weights."""
    return (
        tiny_wan_transformer("a14b", seed=seed, **kwargs),
        tiny_wan_transformer("a14b", seed=seed + 1, **kwargs),
    )


SKYREELS_VARIANTS = ("t2v", "i2v", "df")


def tiny_skyreels_transformer(variant: str = "t2v", **kwargs):
    """A ``SkyReelsV2Transformer3DModel`` from Wan's tiny config (the same architecture), random weights.

    ``variant``: ``"t2v"`` (16 latent channels), ``"i2v"`` (36 input channels and image
    cross-attention, called like Wan I2V: exactly 512 text tokens, ``encoder_hidden_states_image``)
    or ``"df"`` (diffusion forcing: like T2V, called with per-frame ``timestep [B, F]`` and
    ``enable_diffusion_forcing=True``; ``num_frame_per_block=k`` makes it pass a frame-block causal
    mask). ``tiny.wan_inputs`` builds its call kwargs. Keywords: :func:`tiny_wan_transformer`'s.
    """
    if variant not in SKYREELS_VARIANTS:
        raise ValueError(f"unknown SkyReels-V2 variant {variant!r}; expected one of {SKYREELS_VARIANTS}")
    return _tiny_wan_family("SkyReelsV2Transformer3DModel", variant, **kwargs)


def tiny_hunyuan_transformer(
    *,
    num_layers: int = 1,
    num_single_layers: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    in_channels: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
):
    """A ``HunyuanVideoTransformer3DModel`` (T2V) from a tiny config with random weights.

    Call it with ``hidden_states [B, C, F, H, W]``, ``encoder_hidden_states [B, L, 16]``,
    ``encoder_attention_mask [B, L]`` (1 = real prompt token, prompt tokens first),
    ``pooled_projections [B, 8]`` and ``guidance [B]`` (it is guidance-distilled).
    """
    if head_dim % 2 or head_dim < 8:
        raise ValueError(f"head_dim must be even and >= 8 (RoPE splits it over t, h, w), got {head_dim}")
    hw = (head_dim * 3 // 8) // 2 * 2  # even RoPE dims for h and w; t takes the rest
    rope = (head_dim - 2 * hw, hw, hw)
    cfg = dict(
        HUNYUAN_TINY,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=in_channels,
        out_channels=in_channels,
        rope_axes_dim=rope,
    )
    cfg.update(overrides)
    from diffusers import HunyuanVideoTransformer3DModel

    return _seeded_build(HunyuanVideoTransformer3DModel, cfg, seed, dtype)


MOCHI_TINY = dict(
    patch_size=2,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    pooled_projection_dim=16,
    in_channels=12,  # Mochi's latent channels
    text_embed_dim=16,
    time_embed_dim=8,
    max_sequence_length=16,
)


def tiny_mochi_transformer(*, num_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A ``MochiTransformer3DModel`` from a tiny config with random weights.

    Call it with ``hidden_states [B, 12, F, H, W]``, ``encoder_hidden_states [B, L, 16]`` and
    ``encoder_attention_mask [B, L]`` (1 = real prompt token; :func:`mochi_inputs`). Its attention
    processor runs one SDPA call per batch item, over the video and that item's valid prompt tokens.
    """
    cfg = dict(MOCHI_TINY, num_layers=num_layers)
    cfg.update(overrides)
    from diffusers import MochiTransformer3DModel

    return _seeded_build(MochiTransformer3DModel, cfg, seed, dtype)


HUNYUAN15_TINY = dict(
    in_channels=9,  # 4 noise + 4 condition latents + 1 mask, concatenated on channels (real: 32 + 32 + 1)
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    num_refiner_layers=1,
    patch_size=1,  # the checkpoints' (1, 1, 1): one token per latent pixel
    patch_size_t=1,
    text_embed_dim=16,  # Qwen2.5-VL hidden size (real: 3584)
    text_embed_2_dim=8,  # byT5 d_model (real: 1472)
    image_embed_dim=12,  # SigLIP hidden size (real: 1152)
    rope_axes_dim=(4, 6, 6),  # sums to attention_head_dim
    target_size=32,
)


def tiny_hunyuan15_transformer(
    task_type: str = "t2v", *, num_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides
):
    """A ``HunyuanVideo15Transformer3DModel`` from a tiny config with random weights (``task_type``
    ``"t2v"`` or ``"i2v"``: the same weights' shapes; the forward tells them apart by ``image_embeds``,
    all zeros for text-to-video). Call it with :func:`hunyuan15_inputs`. Its joint attention runs
    over ``[video, valid image, valid byT5, valid Qwen tokens, padding]`` with a pairwise mask."""
    if task_type not in ("t2v", "i2v"):
        raise ValueError(f"task_type must be 't2v' or 'i2v', got {task_type!r}")
    cfg = dict(HUNYUAN15_TINY, num_layers=num_layers, task_type=task_type)
    cfg.update(overrides)
    from diffusers import HunyuanVideo15Transformer3DModel

    return _seeded_build(HunyuanVideo15Transformer3DModel, cfg, seed, dtype)


# ----------------------------------------------------------------------------------- text side
def tiny_tokenizer(model_max_length: int = 512, words: Optional[str] = None):
    """A word-level fast tokenizer built offline with the ``tokenizers`` library.

    Lower-cases, splits on whitespace and punctuation, appends ``</s>``. Vocabulary: the special
    tokens ``<pad>=0, </s>=1, <unk>=2, <s>=3``, then a small built-in English word list (or
    ``words``). Returned as a transformers fast tokenizer, so pipelines save and load it.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in (words or _WORDS).split():
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        model_max_length=model_max_length,
    )


def _vocab_size(tokenizer) -> int:
    # Round up for a tidy embedding table.
    return ((len(tokenizer) + 63) // 64) * 64


def _t5_style_encoder(
    kind: str, vocab_size: int, d_model: int, *, d_ff: int, num_layers: int, num_heads: int, seed: int
):
    """A T5-family text encoder (``kind``: ``"umt5"`` or ``"t5"``) with random weights drawn from
    ``seed``: ``d_kv=8``, small relative-position buckets, the tiny tokenizer's pad/eos ids."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = {"umt5": (UMT5Config, UMT5EncoderModel), "t5": (T5Config, T5EncoderModel)}[kind]
    cfg = config_cls(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return _seeded_build(model_cls, cfg, seed)


def tiny_umt5_encoder(vocab_size: int, d_model: int = 32, seed: int = 0):
    """A 2-layer ``UMT5EncoderModel`` (Wan's text encoder class) with random weights."""
    return _t5_style_encoder("umt5", vocab_size, d_model, d_ff=64, num_layers=2, num_heads=4, seed=seed)


def tiny_t5_encoder(vocab_size: int, d_model: int = 16, seed: int = 0):
    """A 2-layer ``T5EncoderModel`` (Mochi's text encoder class) with random weights."""
    return _t5_style_encoder("t5", vocab_size, d_model, d_ff=32, num_layers=2, num_heads=2, seed=seed)


# ----------------------------------------------------------------------------------- VAEs
def tiny_wan_vae(variant: str = "t2v", seed: int = 0):
    """A tiny ``AutoencoderKLWan``: 8x spatial / 4x temporal, 16 latent channels (``"ti2v"``: the
    Wan2.2 residual VAE, 16x spatial, 48 latent channels)."""
    from diffusers import AutoencoderKLWan

    if variant == "ti2v":
        cfg = dict(
            base_dim=3,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        )
    else:
        cfg = dict(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    return _seeded_build(AutoencoderKLWan, cfg, seed)


def tiny_hunyuan_vae(latent_channels: int = 4, seed: int = 0):
    """A tiny ``AutoencoderKLHunyuanVideo``: 8x spatial / 4x temporal compression."""
    from diffusers import AutoencoderKLHunyuanVideo

    with _seeded(seed):
        return AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ).eval()


def tiny_mochi_vae(seed: int = 0):
    """A tiny ``AutoencoderKLMochi``: 8x spatial / 6x temporal compression, 12 latent channels
    (channel widths 32: its group norms have 32 groups)."""
    from diffusers import AutoencoderKLMochi

    with _seeded(seed):
        return AutoencoderKLMochi(
            latent_channels=12,
            out_channels=3,
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        ).eval()


# ----------------------------------------------------------------------------------- pipelines
def _wan_components(seed: int, vae: str = "t2v") -> dict:
    """The tokenizer, UMT5 ``text_encoder`` (seed ``seed + 10``), ``vae`` (:func:`tiny_wan_vae` of that
    variant, seed ``seed + 20``) and UniPC flow ``scheduler`` every tiny Wan-family pipeline shares, so
    the T2V, I2V, SkyReels, VACE and Animate pipelines of one seed encode prompts and latents alike."""
    from diffusers import UniPCMultistepScheduler

    tokenizer = tiny_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=tiny_umt5_encoder(_vocab_size(tokenizer), d_model=WAN_TINY["text_dim"], seed=seed + 10),
        vae=tiny_wan_vae(vae, seed=seed + 20),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


def _clip_image_side(transformer, seed: int) -> dict:
    """``image_encoder`` / ``image_processor`` for an image-conditioned Wan-family pipeline: the tiny CLIP
    vision tower as wide as ``transformer``'s image embedder (the pipeline feeds it the encoder's
    ``hidden_states[-2]``, so the widths must match), seed ``seed + 30``."""
    image_encoder, image_processor = tiny_clip_vision_encoder(transformer.config.image_dim, seed=seed + 30)
    return dict(image_encoder=image_encoder, image_processor=image_processor)


def tiny_wan_pipeline(variant: str = "t2v", *, num_layers: int = 2, seed: int = 0):
    """A whole ``WanPipeline`` from tiny components (no download).

    ``variant``: ``"t2v"`` (Wan2.1 T2V), ``"a14b"`` (Wan2.2 A14B: two experts and
    ``boundary_ratio=0.875``) or ``"ti2v"`` (Wan2.2 TI2V-5B: 48-channel residual VAE,
    ``expand_timesteps=True``). Height and width must be multiples of 16 (``"ti2v"``: 32);
    frames ``4k+1``. Use ``max_sequence_length`` <= 512.
    """
    from diffusers import WanPipeline

    if variant not in ("t2v", "a14b", "ti2v"):
        raise ValueError(f"tiny_wan_pipeline variant must be 't2v', 'a14b' or 'ti2v', got {variant!r}")
    kwargs = {}
    if variant == "a14b":
        t1, t2 = tiny_wan_a14b_transformers(num_layers=num_layers, seed=seed)
        kwargs.update(transformer=t1, transformer_2=t2, boundary_ratio=0.875)
    else:
        kwargs.update(transformer=tiny_wan_transformer(variant, num_layers=num_layers, seed=seed))
    if variant == "ti2v":
        kwargs.update(expand_timesteps=True)
    return WanPipeline(**_wan_components(seed, vae="ti2v" if variant == "ti2v" else "t2v"), **kwargs)


def tiny_clip_vision_encoder(image_dim: int, *, seed: int = 0):
    """A tiny ``CLIPVisionModel`` whose hidden size is ``image_dim`` (the Wan I2V transformer's
    ``image_dim``), with random weights, and a matching ``CLIPImageProcessor``: ``(encoder, processor)``.

    The processor resizes the shortest edge to 32 and center-crops 32x32, so the encoder sees
    ``pixel_values [B, 3, 32, 32]`` and returns 17 tokens ``[B, 17, image_dim]`` per hidden state.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:
        # transformers >= 5: the PIL backend explicitly, so results do not depend on whether
        # torchvision is installed (CLIPImageProcessor would pick the torchvision backend if it is).
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: CLIPImageProcessor is the PIL/numpy one
        from transformers import CLIPImageProcessor as ImageProcessor

    if image_dim < 1:
        raise ValueError(f"image_dim must be a positive int, got {image_dim!r}")
    size = CLIP_VISION_TINY["image_size"]
    cfg = CLIPVisionConfig(
        hidden_size=image_dim,
        num_attention_heads=2 if image_dim % 2 == 0 else 1,
        projection_dim=image_dim,
        **CLIP_VISION_TINY,
    )
    encoder = _seeded_build(CLIPVisionModel, cfg, seed)
    processor = ImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_convert_rgb=True,
    )
    return encoder, processor


def tiny_wan_i2v_pipeline(*, num_layers: int = 2, seed: int = 0, variant: str = "wan2.1"):
    """A whole Wan2.1 image-to-video ``WanImageToVideoPipeline`` from tiny components (no download).

    Components: ``tiny_wan_transformer("i2v")`` (36 input channels = 16 noise + 4 mask + 16 image
    latents; image cross-attention), a tiny CLIP vision encoder with hidden size = the
    transformer's ``image_dim`` (24) and its image processor (32x32 crops, 17 image tokens), and
    the same tokenizer, UMT5 text encoder, 16-channel VAE and UniPC flow scheduler as
    ``tiny_wan_pipeline("t2v", seed=seed)`` (same weights: the latent layout matches T2V's).

    Call it with a PIL image, ``max_sequence_length=512`` (Wan's attention processor assumes
    exactly 512 text tokens and treats the rest of the context as image tokens; another length
    runs without an error but mixes them up; ``pipe.encode_prompt`` defaults to 226, so pass 512
    there too), height and width multiples of 16 and frames
    ``4k+1``; the output latents are ``[B, 16, (frames - 1) // 4 + 1, height / 8, width / 8]``.
    A string prompt needs ``ftfy`` (diffusers' I2V ``prompt_clean`` calls it unconditionally; it is
    in this package's ``diffusers`` extra).

    ``variant="a14b"``: Wan2.2 I2V A14B instead: two experts (``transformer`` high-noise,
    ``transformer_2`` low-noise, ``boundary_ratio=0.9``) with 36 input channels and no image
    encoder or image cross-attention (the image enters only through the condition channels).
    """
    from diffusers import WanImageToVideoPipeline

    if variant not in ("wan2.1", "a14b"):
        raise ValueError(f"tiny_wan_i2v_pipeline variant must be 'wan2.1' or 'a14b', got {variant!r}")
    experts = {}
    if variant == "a14b":
        no_image = dict(image_dim=None, added_kv_proj_dim=None)
        transformer = tiny_wan_transformer("i2v", num_layers=num_layers, seed=seed, **no_image)
        experts = dict(
            transformer_2=tiny_wan_transformer("i2v", num_layers=num_layers, seed=seed + 1, **no_image),
            boundary_ratio=0.9,
        )
        image_side = dict(image_encoder=None, image_processor=None)
    else:
        transformer = tiny_wan_transformer("i2v", num_layers=num_layers, seed=seed)
        image_side = _clip_image_side(transformer, seed)
    # Text side, VAE and scheduler: exactly tiny_wan_pipeline("t2v")'s (same seeds).
    return WanImageToVideoPipeline(**_wan_components(seed), **image_side, transformer=transformer, **experts)


SKYREELS_PIPELINES = ("t2v", "i2v", "df", "df-i2v")


def tiny_skyreels_pipeline(variant: str = "t2v", *, num_layers: int = 2, seed: int = 0):
    """A whole SkyReels-V2 pipeline from tiny components (no download).

    ``variant``: ``"t2v"`` (``SkyReelsV2Pipeline``), ``"i2v"`` (``SkyReelsV2ImageToVideoPipeline``:
    ``tiny_skyreels_transformer("i2v")`` and a tiny CLIP vision encoder, called like Wan2.1 I2V:
    a PIL image and ``max_sequence_length=512``), ``"df"`` (``SkyReelsV2DiffusionForcingPipeline``)
    or ``"df-i2v"`` (``SkyReelsV2DiffusionForcingImageToVideoPipeline``: the image becomes the first
    latent frame; 16-channel transformer). The text side, 16-channel VAE and UniPC flow scheduler are
    ``tiny_wan_pipeline("t2v", seed=seed)``'s. Height and width multiples of 16, frames ``4k+1``;
    for the DF pipelines ``ar_step`` / ``causal_block_size`` as in diffusers (``causal_block_size``
    must divide the latent frames ``(frames - 1) // 4 + 1``).
    """
    import diffusers

    classes = {
        "t2v": "SkyReelsV2Pipeline",
        "i2v": "SkyReelsV2ImageToVideoPipeline",
        "df": "SkyReelsV2DiffusionForcingPipeline",
        "df-i2v": "SkyReelsV2DiffusionForcingImageToVideoPipeline",
    }
    if variant not in classes:
        raise ValueError(f"tiny_skyreels_pipeline variant must be one of {SKYREELS_PIPELINES}, got {variant!r}")
    transformer = tiny_skyreels_transformer(
        {"i2v": "i2v", "t2v": "t2v"}.get(variant, "df"), num_layers=num_layers, seed=seed
    )
    image_side = _clip_image_side(transformer, seed) if variant == "i2v" else {}
    return getattr(diffusers, classes[variant])(**_wan_components(seed), transformer=transformer, **image_side)


def tiny_hunyuan_pipeline(*, num_layers: int = 1, num_single_layers: int = 1, seed: int = 0):
    """A whole ``HunyuanVideoPipeline`` from tiny components (no download).

    Llama text encoder (hidden 16) + CLIP text encoder (hidden 8) with word-level tokenizers, a
    tiny 4-channel HunyuanVideo VAE. Call it with ``prompt_template={"template": "{}",
    "crop_start": 0}`` (the default template is written for the real Llama tokenizer) and a
    small ``max_sequence_length``. Height and width multiples of 16, frames ``4k+1``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer(model_max_length=77)
    vocab = _vocab_size(tokenizer)
    llama = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
        max_position_embeddings=1024,
    )
    clip = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
        projection_dim=8,
    )
    text_encoder = _seeded_build(LlamaModel, llama, seed + 10)
    text_encoder_2 = _seeded_build(CLIPTextModel, clip, seed + 11)
    transformer = tiny_hunyuan_transformer(
        num_layers=num_layers, num_single_layers=num_single_layers, in_channels=4, seed=seed
    )
    return HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=tiny_hunyuan_vae(4, seed=seed + 20),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )


# HunyuanVideo 1.5's pipeline crops the first 108 tokens of its Qwen chat template (the system
# message, as the real tokenizer splits it): the tiny template writes 108 filler words, then the
# prompt, so the prompt is what survives the crop.
_HUNYUAN15_CHAT_TEMPLATE = (
    "{{ 'the ' * 108 }}{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
)


def tiny_hunyuan15_vae(latent_channels: int = 4, seed: int = 0):
    """A tiny ``AutoencoderKLHunyuanVideo15``: 16x spatial / 4x temporal compression, as the real one."""
    from diffusers import AutoencoderKLHunyuanVideo15

    with _seeded(seed):
        return AutoencoderKLHunyuanVideo15(
            latent_channels=latent_channels, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1
        ).eval()


def tiny_hunyuan15_pipeline(variant: str = "t2v", *, num_layers: int = 2, seed: int = 0):
    """A whole ``HunyuanVideo15Pipeline`` (``variant="t2v"``) or ``HunyuanVideo15ImageToVideoPipeline``
    (``"i2v"``) from tiny components (no download).

    Qwen2.5-VL text model (hidden 16) with a word-level tokenizer and a chat template of its own,
    byT5 (d_model 8, the byte-level ``ByT5Tokenizer``, used for quoted text in the prompt), a tiny
    4-channel VAE (16x spatial, 4x temporal), CFG through its guider; I2V adds a SigLIP vision
    tower (hidden 12, 32x32 crops in 8x8 patches: 16 image tokens; real: 729). The pipeline pads
    every prompt to 1000 Qwen + 256 byT5 tokens, so its self-attention has 1256 condition tokens
    after the video plus the image tokens (T2V: 729 zeros, masked), as the real model. T2V: height
    and width multiples of 16, frames ``4k+1``. I2V takes no height / width: the image's aspect
    ratio at the transformer's ``target_size`` (32 here) decides the size.
    """
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    if variant not in ("t2v", "i2v"):
        raise ValueError(f"variant must be 't2v' or 'i2v', got {variant!r}")
    tokenizer = tiny_tokenizer(model_max_length=2048)
    tokenizer.chat_template = _HUNYUAN15_CHAT_TEMPLATE
    vocab = _vocab_size(tokenizer)
    qwen = Qwen2_5_VLTextConfig(
        vocab_size=vocab,
        hidden_size=HUNYUAN15_TINY["text_embed_dim"],
        intermediate_size=32,
        num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},  # 2 * sum = head dim 8
        pad_token_id=0,
        bos_token_id=3,
        eos_token_id=1,
    )
    byt5 = T5Config(
        vocab_size=384,  # ByT5Tokenizer: 3 special tokens + 256 bytes + 125 extra ids
        d_model=HUNYUAN15_TINY["text_embed_2_dim"],
        d_kv=4,
        d_ff=16,
        num_layers=1,
        num_heads=2,
    )
    components = dict(
        text_encoder=_seeded_build(Qwen2_5_VLTextModel, qwen, seed + 10),
        tokenizer=tokenizer,
        transformer=tiny_hunyuan15_transformer(variant, num_layers=num_layers, seed=seed),
        vae=tiny_hunyuan15_vae(4, seed=seed + 20),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=_seeded_build(T5EncoderModel, byt5, seed + 11),
        tokenizer_2=ByT5Tokenizer(),
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )
    if variant == "t2v":
        from diffusers import HunyuanVideo15Pipeline

        return HunyuanVideo15Pipeline(**components)
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    siglip = SiglipVisionConfig(
        hidden_size=HUNYUAN15_TINY["image_embed_dim"],
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return HunyuanVideo15ImageToVideoPipeline(
        **components,
        image_encoder=_seeded_build(SiglipVisionModel, siglip, seed + 12),
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )


def tiny_mochi_pipeline(*, num_layers: int = 2, seed: int = 0):
    """A ``MochiPipeline`` of tiny random components (T5 text encoder, Mochi VAE, flow-matching
    scheduler). Prompts up to 16 tokens (``max_sequence_length=16``); frames ``6k+1``, height and
    width multiples of 16."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    tokenizer = tiny_tokenizer(model_max_length=MOCHI_TINY["max_sequence_length"])
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_mochi_vae(seed=seed + 20),
        text_encoder=tiny_t5_encoder(_vocab_size(tokenizer), d_model=MOCHI_TINY["text_embed_dim"], seed=seed + 10),
        tokenizer=tokenizer,
        transformer=tiny_mochi_transformer(num_layers=num_layers, seed=seed),
    )


# ----------------------------------------------------------------------------------- inputs
def _latent_and_prompt(
    transformer, g, batch: int, frames: int, height: int, width: int, text_len: int, text_dim: int, timestep
):
    """The call kwargs every latent-video transformer here takes: random ``hidden_states [batch, C, frames,
    height, width]`` then ``encoder_hidden_states [batch, text_len, text_dim]`` (drawn from ``g`` in that
    order, in the transformer's dtype) and ``timestep [batch]``."""
    dtype = transformer.dtype
    return dict(
        hidden_states=torch.randn(batch, transformer.config.in_channels, frames, height, width, generator=g).to(dtype),
        timestep=torch.full((batch,), float(timestep)),
        encoder_hidden_states=torch.randn(batch, text_len, text_dim, generator=g).to(dtype),
    )


def _prompt_mask(
    batch: int, text_len: int, prompt_lengths, *, shortest: int, name: str = "prompt_lengths"
) -> torch.Tensor:
    """The prompt padding mask ``[batch, text_len]`` (1 = real token) of ``prompt_lengths`` (one
    length per batch item in ``shortest..text_len``; default: all ``text_len``); ``name`` for the error."""
    lengths = [text_len] * batch if prompt_lengths is None else list(prompt_lengths)
    if len(lengths) != batch or any(not shortest <= n <= text_len for n in lengths):
        raise ValueError(f"{name} must be {batch} values in {shortest}..{text_len}, got {prompt_lengths!r}")
    return (torch.arange(text_len)[None, :] < torch.tensor(lengths)[:, None]).long()


def hunyuan15_inputs(
    transformer,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    text_len: int = 10,
    text_len_2: int = 5,
    image_tokens: int = 7,
    prompt_lengths=None,
    prompt_lengths_2=None,
    image: bool = False,
    timestep: float = 500.0,
    seed: int = 0,
):
    """Random call kwargs for a HunyuanVideo 1.5 transformer on a latent ``[batch, C, frames, height, width]``.

    ``prompt_lengths`` / ``prompt_lengths_2`` (one per item, default all valid) set the Qwen and byT5
    masks ``encoder_attention_mask [B, text_len]`` / ``encoder_attention_mask_2 [B, text_len_2]``;
    ``image``: random SigLIP ``image_embeds [B, image_tokens, C]`` (image-to-video: all valid), else
    zeros (text-to-video: the model masks them all). The self-attention then has
    ``text_len + text_len_2 + image_tokens`` tokens after the video, the valid ones first.
    """
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    dtype = transformer.dtype
    embeds = torch.randn(batch, image_tokens, cfg.image_embed_dim, generator=g).to(dtype)
    return dict(
        **_latent_and_prompt(transformer, g, batch, frames, height, width, text_len, cfg.text_embed_dim, timestep),
        encoder_attention_mask=_prompt_mask(batch, text_len, prompt_lengths, shortest=0),
        encoder_hidden_states_2=torch.randn(batch, text_len_2, cfg.text_embed_2_dim, generator=g).to(dtype),
        encoder_attention_mask_2=_prompt_mask(batch, text_len_2, prompt_lengths_2, shortest=0, name="prompt_lengths_2"),
        image_embeds=embeds if image else torch.zeros_like(embeds),
        return_dict=False,
    )


def wan_inputs(
    transformer,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    text_len: int = 16,
    timestep: float = 500.0,
    image_tokens: int = 8,
    seed: int = 0,
):
    """Random call kwargs for a Wan transformer on a latent video ``[batch, C, frames, height, width]``.

    ``height``/``width`` are latent sizes (pixels / 8, or / 16 for TI2V). I2V models get 512 text
    tokens (their processor assumes 512) and ``image_tokens`` image embeddings.
    """
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    i2v = cfg.added_kv_proj_dim is not None
    n_text = 512 if i2v else text_len
    kwargs = dict(
        **_latent_and_prompt(transformer, g, batch, frames, height, width, n_text, cfg.text_dim, timestep),
        return_dict=False,
    )
    if i2v:
        image = torch.randn(batch, image_tokens, cfg.image_dim, generator=g)
        kwargs["encoder_hidden_states_image"] = image.to(transformer.dtype)
    return kwargs


def hunyuan_inputs(
    transformer,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    text_len: int = 16,
    prompt_lengths=None,
    timestep: float = 500.0,
    seed: int = 0,
):
    """Random call kwargs for a HunyuanVideo transformer; ``prompt_lengths`` (one per batch item,
    default all ``text_len``) sets the prompt padding mask ``encoder_attention_mask [B, text_len]``."""
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    dtype = transformer.dtype
    mask = _prompt_mask(batch, text_len, prompt_lengths, shortest=1)
    return dict(
        **_latent_and_prompt(transformer, g, batch, frames, height, width, text_len, cfg.text_embed_dim, timestep),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g).to(dtype),
        guidance=torch.full((batch,), 6000.0).to(dtype),
        return_dict=False,
    )


def mochi_inputs(
    transformer,
    frames: int,
    height: int,
    width: int,
    *,
    batch: int = 1,
    text_len: Optional[int] = None,
    prompt_lengths=None,
    timestep: float = 500.0,
    seed: int = 0,
):
    """Random call kwargs for a Mochi transformer; ``prompt_lengths`` (one per batch item, default
    all ``text_len``, itself default the config's ``max_sequence_length``) sets the prompt mask
    ``encoder_attention_mask [B, text_len]``: Mochi attends over each item's valid prompt tokens only."""
    cfg = transformer.config
    text_len = cfg.max_sequence_length if text_len is None else text_len
    g = torch.Generator().manual_seed(seed)
    mask = _prompt_mask(batch, text_len, prompt_lengths, shortest=0)
    return dict(
        **_latent_and_prompt(transformer, g, batch, frames, height, width, text_len, cfg.text_embed_dim, timestep),
        encoder_attention_mask=mask,
        return_dict=False,
    )


# ----------------------------------------------------------------------------------- CogVideoX
COGVIDEOX_TEXT_TOKENS = 10  # the tiny models' max_text_seq_length: the prompt length they must get (real: 226)


def tiny_cogvideox_transformer(
    version: str = "1.0",
    *,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides,
):
    """A ``CogVideoXTransformer3DModel`` from a tiny config with random weights.

    ``version="1.0"``: spatial patch 2, no temporal patch, sincos positional embeddings (CogVideoX-2B).
    ``"1.5"``: ``patch_size_t=2`` and RoPE (CogVideoX1.5-5B; pass ``image_rotary_emb``, see
    :func:`cogvideox_inputs`). Call it with ``hidden_states [B, F, C, H, W]`` (frames before
    channels), ``encoder_hidden_states [B, 10, 16]`` (exactly ``max_text_seq_length`` tokens:
    the positional embedding covers them) and ``timestep [B]``.
    """
    if version not in ("1.0", "1.5"):
        raise ValueError(f"unknown CogVideoX version {version!r}; expected '1.0' or '1.5'")
    cfg = dict(
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=16,
        num_layers=num_layers,
        sample_width=8,
        sample_height=6,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TEXT_TOKENS,
    )
    if version == "1.5":
        # sample_height/width bound the RoPE grid the pipeline computes (latents up to 16 x 16 here).
        cfg.update(patch_size_t=2, use_rotary_positional_embeddings=True, sample_height=16, sample_width=16)
    cfg.update(overrides)
    from diffusers import CogVideoXTransformer3DModel

    return _seeded_build(CogVideoXTransformer3DModel, cfg, seed, dtype)


def cogvideox_inputs(model, frames: int, height: int, width: int, *, batch: int = 1, seed: int = 0) -> dict:
    """Forward keywords for a tiny CogVideoX transformer: latent ``[B, F, C, H, W]``, the prompt, and
    (RoPE models) the rotary embedding the pipeline would compute for this size."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(
        hidden_states=torch.randn(batch, frames, cfg.in_channels, height, width, generator=g),
        encoder_hidden_states=torch.randn(batch, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g),
        timestep=torch.full((batch,), 500, dtype=torch.long),
        return_dict=False,
    )
    if cfg.use_rotary_positional_embeddings:
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        # As CogVideoXPipeline computes it: the config's sample grid, sliced to this size.
        p, p_t = cfg.patch_size, cfg.patch_size_t or 1
        kwargs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim,
            crops_coords=None,
            grid_size=(height // p, width // p),
            temporal_size=frames // p_t,
            grid_type="slice",
            max_size=(cfg.sample_height // p, cfg.sample_width // p),
        )
    return kwargs


def tiny_cogvideox_vae(seed: int = 0):
    """A tiny ``AutoencoderKLCogVideoX``: 8x spatial / 4x temporal compression, 4 latent channels."""
    from diffusers import AutoencoderKLCogVideoX

    with _seeded(seed):
        return AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        ).eval()


def tiny_cogvideox_pipeline(version: str = "1.0", *, num_layers: int = 2, seed: int = 0):
    """A whole ``CogVideoXPipeline`` from tiny components (no download): the tiny transformer of
    ``version`` (see :func:`tiny_cogvideox_transformer`), a T5 text encoder (CogVideoX's class), a
    tiny CogVideoX VAE and ``CogVideoXDPMScheduler``. Call it with ``max_sequence_length=10`` (the
    transformer's ``max_text_seq_length``), height and width multiples of 16, frames ``4k+1``."""
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    tokenizer = tiny_tokenizer()
    transformer = tiny_cogvideox_transformer(version, num_layers=num_layers, seed=seed)
    # A 1-layer T5 encoder (CogVideoX's class) as wide as the transformer's text embedding.
    text_encoder = _t5_style_encoder(
        "t5",
        _vocab_size(tokenizer),
        transformer.config.text_embed_dim,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        seed=seed + 10,
    )
    scheduler = CogVideoXDPMScheduler(timestep_spacing="trailing", prediction_type="v_prediction")
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_cogvideox_vae(seed + 20),
        transformer=transformer,
        scheduler=scheduler,
    )


# ----------------------------------------------------------------------------------- Wan VACE / Animate
# The VACE control latents: 2 x 16 VAE latent channels (inactive, reactive) + 8 x 8 = 64 mask channels
# (the pixel mask folded per VAE pixel), what WanVACEPipeline makes with the 16-channel 8x VAE (real: 96).
WAN_VACE_IN_CHANNELS = 96


def tiny_wan_vace_transformer(*, vace_layers=(0,), **kwargs):
    """A ``WanVACETransformer3DModel`` from Wan's tiny config, random weights.

    ``vace_layers``: the main blocks after which a control hint is added (must contain 0 and stay
    below ``num_layers``); there are ``len(vace_layers)`` control blocks ``vace_blocks``, which the
    forward runs first. Called with ``hidden_states [B, 16, F, H, W]`` and ``control_hidden_states
    [B, 96, F, H, W]`` (:func:`wan_vace_inputs`). Other keywords: :func:`tiny_wan_transformer`'s.
    """
    kwargs.setdefault("vace_in_channels", WAN_VACE_IN_CHANNELS)
    return _tiny_wan_family("WanVACETransformer3DModel", "t2v", vace_layers=list(vace_layers), **kwargs)


def wan_vace_inputs(transformer, frames: int, height: int, width: int, *, batch: int = 1, seed: int = 0, **kw):
    """:func:`wan_inputs` plus random ``control_hidden_states [batch, vace_in_channels, frames, height, width]``."""
    kwargs = wan_inputs(transformer, frames, height, width, batch=batch, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    c = transformer.config.vace_in_channels
    kwargs["control_hidden_states"] = torch.randn(batch, c, frames, height, width, generator=g).to(transformer.dtype)
    return kwargs


# Motion encoder widths of the tiny Animate model: one entry per resolution of its face-image pyramid
# (the real model: 512 .. 32 channels for 4 .. 512 pixels).
_ANIMATE_MOTION_CHANNELS = {str(2**k): 16 for k in range(2, 10)}
WAN_ANIMATE_FACE_SIZE = 16  # face video frames are face_size x face_size pixels (real: 512)


def tiny_wan_animate_transformer(**kwargs):
    """A ``WanAnimateTransformer3DModel`` from Wan's tiny config, random weights.

    36 input channels (16 noise + 4 mask + 16 reference/condition latents), 16 out; image
    cross-attention (``image_dim`` 24, like the tiny Wan I2V: call it with exactly 512 text tokens);
    a tiny motion encoder over ``16 x 16`` face frames and a face adapter after every 2nd block.
    Called with ``hidden_states [B, 36, 1 + F, H, W]`` (latent frame 0: the reference image),
    ``pose_hidden_states [B, 16, F, H, W]`` and ``face_pixel_values [B, 3, frames, 16, 16]``
    (:func:`wan_animate_inputs`). Keywords: :func:`tiny_wan_transformer`'s.
    """
    # "i2v": 36 input channels, image cross-attention; any of these can be overridden by a keyword.
    animate = dict(
        latent_channels=16,
        out_channels=16,
        motion_encoder_channel_sizes=dict(_ANIMATE_MOTION_CHANNELS),
        motion_encoder_size=WAN_ANIMATE_FACE_SIZE,
        motion_style_dim=8,
        motion_dim=4,
        motion_encoder_dim=8,
        face_encoder_hidden_dim=16,
        face_encoder_num_heads=2,
        inject_face_latents_blocks=2,
        motion_encoder_batch_size=256,  # the whole face video in one batch: far fewer (slow) tiny conv calls on CPU
    )
    return _tiny_wan_family("WanAnimateTransformer3DModel", "i2v", **{**animate, **kwargs})


def wan_animate_inputs(transformer, frames: int, height: int, width: int, *, batch: int = 1, seed: int = 0, **kw):
    """Random call kwargs for a Wan Animate transformer on ``frames`` latent frames in all: frame 0
    the reference image, ``frames - 1`` the segment (pose latents for those, and a face video of
    the segment's ``4 * (frames - 2) + 1`` pixel frames, which the face encoder brings down 4x in
    time; Wan I2V's 512 text tokens and image embeddings)."""
    if frames < 2:
        raise ValueError(f"Wan Animate needs the reference frame and at least one segment frame, got frames={frames}")
    kwargs = wan_inputs(transformer, frames, height, width, batch=batch, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    dtype = transformer.dtype
    size = transformer.config.motion_encoder_size
    kwargs["pose_hidden_states"] = torch.randn(batch, 16, frames - 1, height, width, generator=g).to(dtype)
    kwargs["face_pixel_values"] = torch.randn(batch, 3, 4 * (frames - 2) + 1, size, size, generator=g).to(dtype)
    return kwargs


def tiny_wan_vace_pipeline(*, num_layers: int = 2, vace_layers=(0,), seed: int = 0):
    """A whole ``WanVACEPipeline`` from tiny components (no download): ``tiny_wan_vace_transformer``
    and ``tiny_wan_pipeline("t2v", seed=seed)``'s text side, 16-channel VAE and UniPC flow scheduler.

    Call it like diffusers' VACE: ``video`` / ``mask`` (lists of PIL frames, optional), and
    ``reference_images`` (each becomes one more latent frame in front of the video), height and
    width multiples of 16, frames ``4k+1``, a small ``max_sequence_length``.
    """
    from diffusers import WanVACEPipeline

    transformer = tiny_wan_vace_transformer(num_layers=num_layers, vace_layers=vace_layers, seed=seed)
    return WanVACEPipeline(**_wan_components(seed), transformer=transformer)


def tiny_wan_animate_pipeline(*, num_layers: int = 2, seed: int = 0):
    """A whole ``WanAnimatePipeline`` from tiny components (no download): ``tiny_wan_animate_transformer``,
    a tiny CLIP vision encoder (hidden size = its ``image_dim``) and ``tiny_wan_pipeline("t2v",
    seed=seed)``'s text side, VAE and scheduler.

    Call it with ``image`` (the character, PIL), ``pose_video`` and ``face_video`` (lists of PIL
    frames; face frames are resized to 16 x 16), ``segment_frame_length`` ``4k+1``, height and width
    multiples of 16 and ``max_sequence_length=512`` (Wan I2V's image cross-attention split).
    """
    from diffusers import WanAnimatePipeline

    transformer = tiny_wan_animate_transformer(num_layers=num_layers, seed=seed)
    return WanAnimatePipeline(**_wan_components(seed), **_clip_image_side(transformer, seed), transformer=transformer)


# ----------------------------------------------------------------------------------- LTX-Video, LTX-2
def tiny_ltx_transformer(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 8, seed: int = 0, dtype=torch.float32, **overrides
):
    """An ``LTXVideoTransformer3DModel`` from a tiny config with random weights (no patching, as the
    checkpoints). Call it with packed ``hidden_states [B, S, 8]`` and the latent grid ``num_frames,
    height, width`` (or ``video_coords [B, 3, S]``): see :func:`ltx_inputs`."""
    cfg = dict(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        cross_attention_dim=16,
        num_layers=num_layers,
        caption_channels=16,
    )
    cfg.update(overrides)
    from diffusers import LTXVideoTransformer3DModel

    return _seeded_build(LTXVideoTransformer3DModel, cfg, seed, dtype)


def ltx_inputs(model, frames: int, height: int, width: int, *, batch: int = 1, text_len: int = 7, seed: int = 0):
    """Forward keywords for a tiny LTX-Video transformer, as ``LTXPipeline`` calls it: packed latent
    ``[B, F*H*W, C]`` plus the latent grid ``num_frames, height, width``."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, cfg.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.caption_channels, generator=g),
        timestep=torch.full((batch,), 500.0),
        encoder_attention_mask=torch.ones(batch, text_len),
        num_frames=frames,
        height=height,
        width=width,
        rope_interpolation_scale=(torch.tensor(8 / 25.0), 32, 32),
        return_dict=False,
    )


def ltx_condition_coords(batch: int, frames: int, height: int, width: int, prefix_frames: int = 0, frame_index=16):
    """``video_coords [B, 3, S]`` as ``LTXConditionPipeline`` builds them (before its division of time by
    the frame rate): ``prefix_frames`` latent frames of a keyframe condition at pixel frame ``frame_index``,
    then the main ``frames x height x width`` grid (time ``(8f + 1 - 8).clamp(0)``, space x 32)."""

    def grid(f, t_offset):
        t, h, w = torch.meshgrid(torch.arange(f), torch.arange(height), torch.arange(width), indexing="ij")
        t = (t * 8 + 1 - 8).clamp(min=0) + t_offset
        return torch.stack([t, h * 32, w * 32]).reshape(3, -1).float()

    parts = ([grid(prefix_frames, frame_index)] if prefix_frames else []) + [grid(frames, 0)]
    return torch.cat(parts, dim=1)[None].repeat(batch, 1, 1)


def tiny_ltx2_transformer(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 8, seed: int = 0, dtype=torch.float32, **overrides
):
    """An ``LTX2VideoTransformer3DModel`` (video + audio streams) from a tiny config with random
    weights. ``perturbed_attn=True`` gives it the STG processor. Inputs: :func:`ltx2_inputs`."""
    cfg = dict(
        in_channels=8,
        out_channels=8,
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        cross_attention_dim=16,
        audio_in_channels=4,
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=num_layers,
        caption_channels=16,
    )
    cfg.update(overrides)
    from diffusers import LTX2VideoTransformer3DModel

    return _seeded_build(LTX2VideoTransformer3DModel, cfg, seed, dtype)


def ltx2_inputs(
    model, frames: int, height: int, width: int, *, batch: int = 1, text_len: int = 7, audio_frames: int = 5, seed=0
):
    """Forward keywords for a tiny LTX-2 transformer: packed video ``[B, F*H*W, C]`` with its latent grid,
    audio ``[B, audio_frames, C_audio]``, the prompt for both streams."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, frames * height * width, cfg.in_channels, generator=g),
        audio_hidden_states=torch.randn(batch, audio_frames, cfg.audio_in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.caption_channels, generator=g),
        # caption_channels wide too: the model projects both prompts itself.
        audio_encoder_hidden_states=torch.randn(batch, text_len, cfg.caption_channels, generator=g),
        timestep=torch.full((batch,), 500.0),
        encoder_attention_mask=torch.ones(batch, text_len),
        audio_encoder_attention_mask=torch.ones(batch, text_len),
        num_frames=frames,
        height=height,
        width=width,
        fps=24.0,
        audio_num_frames=audio_frames,
        return_dict=False,
    )


def tiny_ltx_vae(seed: int = 0):
    """A tiny ``AutoencoderKLLTXVideo`` with the real strides: 32x spatial (patch 4 x three 2x
    stages), 8x temporal, 8 latent channels (the tiny LTX transformer's ``in_channels``)."""
    from diffusers import AutoencoderKLLTXVideo

    with _seeded(seed):
        return AutoencoderKLLTXVideo(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            patch_size=4,
            patch_size_t=1,
        ).eval()


LTX_TEXT_TOKENS = 16  # the tiny LTX pipeline's prompt length (max_sequence_length; real: 128)


def tiny_ltx_pipeline(*, num_layers: int = 2, seed: int = 0, image_to_video: bool = False):
    """An ``LTXPipeline`` (or ``LTXImageToVideoPipeline``) of tiny random components: T5 text encoder
    (16 wide, the transformer's ``caption_channels``), LTX VAE with the real 32x / 8x strides,
    flow-matching scheduler. Height and width multiples of 32, frames ``8k+1``; call it with
    ``max_sequence_length=16``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline, LTXPipeline

    tokenizer = tiny_tokenizer(model_max_length=LTX_TEXT_TOKENS)
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_ltx_vae(seed=seed + 20),
        text_encoder=tiny_t5_encoder(_vocab_size(tokenizer), d_model=16, seed=seed + 10),
        tokenizer=tokenizer,
        transformer=tiny_ltx_transformer(num_layers=num_layers, seed=seed),
    )


def tiny_gemma3_encoder(vocab_size: int, hidden_size: int = 16, num_layers: int = 2, seed: int = 0):
    """A ``Gemma3ForConditionalGeneration`` (LTX-2's text encoder class) with random weights: a
    ``num_layers``-layer text model and a one-layer SigLIP vision tower the text-only prompts never use."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        sliding_window=8,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=vocab_size - 1,
    )
    return _seeded_build(Gemma3ForConditionalGeneration, cfg, seed)


def tiny_ltx2_pipeline(*, num_layers: int = 2, seed: int = 0):
    """An ``LTX2Pipeline`` (video + audio) of tiny random components: Gemma 3 text encoder, text
    connectors, LTX-2 video VAE with the real 32x / 8x strides (set in its config, as the checkpoint's:
    the class's formula would report 64 / 16), audio VAE and vocoder. Height and width multiples of
    32, frames ``8k+1``; call it with ``max_sequence_length=16``. Its output has ``.frames`` and ``.audio``."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, LTX2Pipeline
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = tiny_tokenizer(model_max_length=LTX_TEXT_TOKENS)
    text_layers = 2
    text_encoder = tiny_gemma3_encoder(_vocab_size(tokenizer), hidden_size=16, num_layers=text_layers, seed=seed + 10)
    with _seeded(seed + 20):
        connectors = LTX2TextConnectors(
            caption_channels=16,  # the text encoder's width, and the transformer's caption_channels
            text_proj_in_factor=text_layers + 1,  # every hidden state of the encoder, embeddings included
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=8,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=None,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=8,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=None,
            connector_rope_base_seq_len=32,
            rope_double_precision=False,
            video_hidden_dim=16,
            audio_hidden_dim=16,
        ).eval()
        vae = AutoencoderKLLTX2Video(
            latent_channels=8,
            block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            upsample_residual=(False, False, False),
            upsample_factor=(1, 1, 1),
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        ).eval()
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=4, ch_mult=(1,), num_res_blocks=1, resolution=32, latent_channels=2, mel_bins=8
        ).eval()
        vocoder = LTX2Vocoder(
            in_channels=16,  # audio VAE output channels (2) x mel bins (8)
            hidden_channels=8,
            upsample_kernel_sizes=[4, 4],
            upsample_factors=[2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            output_sampling_rate=16000,
        ).eval()
    return LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=tiny_ltx2_transformer(num_layers=num_layers, seed=seed),
        vocoder=vocoder,
    )
