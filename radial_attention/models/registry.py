"""The one registry of video model families: everything radial attention knows about a model.

Plain data and arithmetic, no torch or diffusers import (it sits below every layer, so the mask
layer can read VAE strides and presets from it). Two kinds of entry:

- :class:`VideoModelFamily`: one diffusers transformer architecture, keyed by its transformer
  class name(s) and the pipeline class names ``encode`` takes: patch size keys, how its
  self-attention sequence is laid out (video tokens frame-major, then the extra tokens that are
  not video and where they sit), which attention modules are that self-attention (in run order),
  the default mask preset, the flow-matching shift, and what ``encode`` / ``train-lora`` need.
- :class:`ModelVariant`: one checkpoint line of a family at its usual sizes (Wan2.1, Wan2.2 A14B,
  Wan2.2 TI2V-5B ...): VAE strides, patch, preset, recommended dense schedule. ``video_layout``
  and the ``mask`` command take these names.

Who reads what: ``mask.video_layout`` and the ``mask`` command (variants: strides, patch,
preset, extra tokens, heads); ``integrations.diffusers.families`` (``family_of``: transformer
class -> family; the attention modules and the layout of a call, from
:attr:`VideoModelFamily.self_attention` and :attr:`~VideoModelFamily.hidden_states`);
``apply_radial_attention`` (default preset, whether extra tokens may follow the video, how many
SDPA calls one attention module call makes);
``generate`` (recommended schedule); sequence parallelism (:func:`video_token_grid`); ``encode``
(pipeline class -> family, latent normalisation, what ``encode_prompt`` returns, patch from the
folder's config); ``train-lora`` (LoRA targets, flow shift, model inputs, LoRA pipeline class, the
families a latent folder can be for: its own and those of ``shares_latents_with``); the demo
(strides). Nothing else in the package names a model, except the tiny test models of ``radial_attention.testing`` (and the built-in
``--model tiny-wan`` / ``tiny-hunyuan`` that train-lora builds from them).

Adding a model is one entry plus its tests:

1. A :class:`VideoModelFamily` in :data:`FAMILIES` (its transformer class name, self-attention
   modules, the ``hidden_states`` order, where the extra tokens sit: tokens *before* the video,
   as CogVideoX's text, need ``prefix_tokens_input``, the forward argument whose length the hook
   reads on every call; packed ``[B, S, C]`` tokens, as LTX's, are ``hidden_states="BSC"``, their
   grid the forward arguments ``num_frames, height, width``; a ``default_block_size`` of 64 where
   frames hold few tokens; leave ``self_attention`` empty while the attention hook
   cannot take it yet, ``pipeline_classes`` empty while ``encode`` cannot, ``lora_pipeline_class``
   ``None`` while ``train-lora`` cannot), and a :class:`ModelVariant` per checkpoint line in
   :data:`VARIANTS` (VAE strides and patch of the real checkpoints, preset, schedule if known).
2. A tiny builder in ``radial_attention.testing.tiny`` (random weights) and a case in
   ``tests/test_registry.py``, which checks the entry against a real forward of the tiny model
   (patch from its config, the layout the attention sees, the attention modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# ------------------------------------------------------------------------------------- families


@dataclass(frozen=True)
class VideoModelFamily:
    """One diffusers video transformer architecture and everything radial attention needs of it."""

    name: str
    description: str
    # Exact diffusers class names (``type(m).__name__ ==``, never isinstance: subclasses such as
    # VACE have other blocks).
    transformer_classes: Tuple[str, ...]
    # --- the self-attention over video tokens
    # (blocks attribute, attention attribute) pairs, in the order the forward runs them: every
    # ``getattr(model, blocks)[i].<attention>``; that order is the layer index ``dense_layers``
    # counts. Empty: radial attention cannot patch this family yet (the layout is still known).
    self_attention: Tuple[Tuple[str, str], ...]
    # How many torch SDPA calls one self-attention module call makes: "one" (the whole batch in one
    # call), or "per_batch_item" (Mochi: one call per batch item, each with batch 1 and its own
    # length, the video followed by that item's valid prompt tokens; each gets its own mask), or
    # "zero_or_one" (LTX-2: its perturbed-attention processor skips the attention when spatio-temporal
    # guidance perturbs every batch item of the block; then the module runs as it is).
    sdpa_calls: str = "one"
    # Dimension order of the transformer's ``hidden_states`` (the latent of one call): "BCFHW"
    # (Wan, HunyuanVideo), "BFCHW" (CogVideoX: frames before channels), or "BSC" (LTX-Video, LTX-2:
    # packed tokens; the layout comes from the forward arguments ``num_frames, height, width``, the
    # latent grid before the patch, or, for a family whose ``prefix_tokens_input`` is ``video_coords``,
    # from the token coordinates ``video_coords [B, 3, S]`` when a call passes them).
    hidden_states: str = "BCFHW"
    # Where tokens that are not video (text) sit in that self-attention: "none", "after" the
    # video, "before" it (CogVideoX) or "both" (the video is always frame-major: frame i holds
    # tokens Y + i*T .. Y + (i+1)*T - 1, Y the tokens before it).
    extra_tokens: str = "none"
    default_extra_tokens: int = 0  # how many after the video, at the usual prompt length (HunyuanVideo: 256)
    # How many tokens sit *before* the video at the usual prompt length (CogVideoX: 226 text tokens).
    prefix_tokens: int = 0
    # For a family with tokens before the video: the transformer forward argument whose dim 1 is
    # their count in one call (CogVideoX: encoder_hidden_states [B, L, C], whose L tokens go first),
    # or "video_coords" for a packed family (LTX-Video's condition pipeline: its keyframe tokens come
    # first, the main video grid is where the time coordinate starts at 0).
    prefix_tokens_input: Optional[str] = None
    # Forward arguments radial attention refuses when a call passes them (not None), with the reason
    # (LTX-2 IC-LoRA's soft video_self_attention_mask): refused before any block runs.
    refused_inputs: Tuple[Tuple[str, str], ...] = ()
    # The pipeline pads the latent frames at the front to a multiple of p_t (CogVideoX 1.5): token
    # frames = ceil(latent frames / p_t), and any VAE frame count works.
    pads_latent_frames: bool = False
    # Latent frames every call of the pipeline puts in front of the video, which the self-attention
    # counts as video frames (Wan Animate: 1, its reference image). VACE's reference images are
    # such frames too, one per image, but how many is the caller's choice: 0 here (video_layout
    # takes reference_frames=).
    reference_frames: int = 0
    # --- mask defaults
    default_preset: str = "wan"
    expert_preset: Optional[str] = None  # a pipeline switching two experts at a boundary (Wan2.2 A14B)
    # Mask block size when the user gives none: 64 for models whose frames hold few tokens (LTX's
    # 32x VAE: 384 tokens per 768x512 frame, three blocks of 128, where the mask keeps about half).
    default_block_size: int = 128
    # --- training (train-lora) and encode
    flow_shift: Optional[float] = None  # when the model folder has no scheduler config
    # The same for an image-to-video transformer, where it differs (SkyReels-V2: 5.0); None: flow_shift.
    image_to_video_flow_shift: Optional[float] = None
    lora_pipeline_class: Optional[str] = None  # whose save/load_lora_weights fit; None: no train-lora
    # LoRA targets, regexes over module names (peft full-matches them): the self-attention's
    # projections, and with train_ff the feed-forward.
    lora_attention_targets: Tuple[str, ...] = ()
    lora_ff_targets: Tuple[str, ...] = ()
    text_dim_key: str = "text_dim"  # config key of prompt_embeds' last dim
    pooled_dim_key: Optional[str] = None  # config key of pooled_prompt_embeds' size, if the model takes one
    image_dim_key: Optional[str] = None  # config key of image_embeds' last dim (image-to-video)
    # The prompt length the pipelines generate with when the model does not mask prompt padding
    # (Wan: 512; then it is part of the input, and image-to-video needs exactly that many).
    unmasked_text_tokens: Optional[int] = None
    # Sample tensors that become forward keywords besides hidden_states / timestep / prompt_embeds.
    call_inputs: Tuple[Tuple[str, str], ...] = ()
    embedded_guidance: bool = False  # a guidance-distilled model: forward takes guidance * 1000
    # Config values (set and not False) that train-lora refuses, with the reason.
    train_refuses: Tuple[Tuple[str, str], ...] = ()
    # Config values train-lora needs, ((key, value, reason): refused unless config[key] == value).
    train_requires: Tuple[Tuple[str, object, str], ...] = ()
    # A second prompt stream (HunyuanVideo 1.5's byT5): config key of prompt_embeds_2's last dim;
    # the samples then hold prompt_embeds_2 [L2, D2] and prompt_attention_mask_2 [L2] too.
    text_2_dim_key: Optional[str] = None
    # Text-to-video inputs the pipeline makes as zeros and train-lora makes too (not stored):
    # the condition channels (in_channels - out_channels, HunyuanVideo 1.5: condition latents and
    # mask) and image_embeds [B, t2v_image_tokens, config[t2v_image_dim_key]].
    t2v_zero_inputs: bool = False
    t2v_image_tokens: int = 0
    t2v_image_dim_key: Optional[str] = None
    # encode: the pipelines it takes, which of them are image-to-video, pipeline config values it
    # refuses ((pipeline class, config key, reason): refused when set and not False), how latents
    # are normalised ("mean_std": (z - latents_mean) / latents_std, or "scaling_factor":
    # z * scaling_factor), and what encode_prompt returns, in order (None: dropped).
    pipeline_classes: Tuple[str, ...] = ()
    image_to_video_pipelines: Tuple[str, ...] = ()
    encode_refuses: Tuple[Tuple[str, str, str], ...] = ()
    latent_normalisation: str = "scaling_factor"
    prompt_outputs: Tuple[Optional[str], ...] = ("prompt_embeds",)
    prompt_kwargs: Tuple[Tuple[str, object], ...] = ()  # fixed encode_prompt keywords
    takes_prompt_template: bool = False  # encode_prompt accepts prompt_template
    # Other families whose data folders this one trains on as they are, and the other way round:
    # the same VAE and latent normalisation, text encoder and prompt length (SkyReels-V2 and Wan2.1
    # share Wan2.1's VAE and UMT5). Shapes are still checked sample by sample (a 48-channel Wan2.2
    # TI2V-5B folder is refused for its channels). See :func:`shares_latents`.
    shares_latents_with: Tuple[str, ...] = ()
    # --- steps and masks the model makes itself
    # Pipelines whose denoising loop never steps ``pipe.scheduler`` (SkyReels-V2 diffusion forcing:
    # per-frame scheduler copies over a step matrix): the step is the position of the pipeline's
    # ``current_timestep`` row in that loop, the number of steps ``pipe.num_timesteps``.
    step_matrix_pipelines: Tuple[str, ...] = ()
    # Config key that, when > 1, makes the transformer pass a frame-block causal attention mask to
    # its self-attention (SkyReels-V2 ``num_frame_per_block``); radial attention refuses those calls.
    frame_causal_key: Optional[str] = None
    # The processor passes a bool [B, 1, S, S] attention mask, the outer product m[q] & m[k] of a
    # per-token mask m that keeps a prefix of the sequence (HunyuanVideo 1.5: the video, then the
    # valid image / byT5 / Qwen tokens, then padding). Radial attention turns it into key lengths and
    # zeroes the padded query rows, as torch SDPA gives them; any other [B, 1, S, S] mask raises.
    pairwise_prefix_mask: bool = False

    @property
    def patchable(self) -> bool:
        """``apply_radial_attention`` can patch this family."""
        return bool(self.self_attention)

    @property
    def has_extra_tokens(self) -> bool:
        """Extra (text) tokens may follow the video tokens in the self-attention."""
        return self.extra_tokens in ("after", "both")

    @property
    def has_prefix_tokens(self) -> bool:
        """Extra (text) tokens come before the video tokens in the self-attention."""
        return self.extra_tokens in ("before", "both")

    def patch(self, config) -> Tuple[int, int, int]:
        """``(p_t, p_h, p_w)`` of a transformer config (``model.config`` or a ``config.json`` dict)."""
        return patch_from_config(config)

    def preset_for(self, experts: int) -> str:
        """The default preset for a pipeline running ``experts`` transformers at a noise boundary."""
        return self.expert_preset if experts == 2 and self.expert_preset else self.default_preset


def _get(config, key, default=None):
    """``config[key]`` for a dict (config.json, diffusers' FrozenDict) or ``config.key``."""
    if isinstance(config, dict):
        return config.get(key, default)
    return getattr(config, key, default)


def patch_from_config(config) -> Tuple[int, int, int]:
    """``(p_t, p_h, p_w)`` from a diffusers transformer config.

    ``patch_size`` is either the 3-tuple (Wan) or the spatial size, with ``patch_size_t`` the
    temporal one (HunyuanVideo; absent or ``None``: 1, Mochi).
    """
    p = _get(config, "patch_size")
    if isinstance(p, (list, tuple)):
        if len(p) != 3:
            raise ValueError(f"patch_size must be (t, h, w) or one int, got {p!r}")
        return tuple(int(x) for x in p)
    if p is None:
        raise ValueError("the transformer config has no patch_size")
    return int(_get(config, "patch_size_t") or 1), int(p), int(p)


WAN = VideoModelFamily(
    name="wan",
    description="Wan2.1 / Wan2.2 (WanTransformer3DModel)",
    transformer_classes=("WanTransformer3DModel",),
    self_attention=(("blocks", "attn1"),),  # attn2 is cross-attention to text (and I2V image tokens)
    default_preset="wan",
    expert_preset="wan2.2",
    flow_shift=3.0,
    lora_pipeline_class="WanPipeline",
    lora_attention_targets=(r"blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)",),
    lora_ff_targets=(r"blocks\.\d+\.ffn\.net\.(0\.proj|2)",),
    text_dim_key="text_dim",
    image_dim_key="image_dim",
    unmasked_text_tokens=512,
    pipeline_classes=("WanPipeline", "WanImageToVideoPipeline"),
    image_to_video_pipelines=("WanImageToVideoPipeline",),
    encode_refuses=(
        (
            "WanImageToVideoPipeline",
            "expand_timesteps",
            "encode does not support Wan2.2 TI2V image-to-video (expand_timesteps); "
            "encode its text-to-video data with WanPipeline",
        ),
    ),
    latent_normalisation="mean_std",
    prompt_outputs=("prompt_embeds", None),  # (prompt_embeds, negative_prompt_embeds=None)
    prompt_kwargs=(("do_classifier_free_guidance", False),),
)
HUNYUAN = VideoModelFamily(
    name="hunyuan",
    description="HunyuanVideo T2V (HunyuanVideoTransformer3DModel)",
    transformer_classes=("HunyuanVideoTransformer3DModel",),
    # Joint attention: video tokens, then the prompt's. The text token refiner is not listed.
    self_attention=(("transformer_blocks", "attn"), ("single_transformer_blocks", "attn")),
    extra_tokens="after",
    default_extra_tokens=256,
    default_preset="hunyuan",
    flow_shift=7.0,
    lora_pipeline_class="HunyuanVideoPipeline",
    # The video side of the joint attention: to_q/k/v/out of the double-stream blocks; to_q/k/v
    # and proj_out (which carries the attention output) of the single-stream ones. The text-side
    # projections (add_*_proj) stay as they are.
    lora_attention_targets=(
        r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)",
        r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)",
        r"single_transformer_blocks\.\d+\.proj_out",
    ),
    lora_ff_targets=(r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)", r"single_transformer_blocks\.\d+\.proj_mlp"),
    text_dim_key="text_embed_dim",
    pooled_dim_key="pooled_projection_dim",
    call_inputs=(("prompt_attention_mask", "encoder_attention_mask"), ("pooled_prompt_embeds", "pooled_projections")),
    embedded_guidance=True,
    train_refuses=(
        ("image_condition_type", "HunyuanVideo image-to-video transformers are not supported by train-lora yet"),
    ),
    pipeline_classes=("HunyuanVideoPipeline",),
    latent_normalisation="scaling_factor",
    prompt_outputs=("prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask"),
    takes_prompt_template=True,
)
# SkyReels-V2: Wan's architecture (its attention processor is a copy of Wan's), a class of its own.
# The diffusion-forcing pipelines never step pipe.scheduler (each latent frame has a scheduler copy):
# their step count comes from the pipeline's own step-matrix row (see schedule.RadialState).
# Training: its T2V and I2V pipelines are copies of Wan2.1's (same VAE, UMT5 prompts of 512 tokens,
# I2V condition and CLIP image embeddings by the same methods), so encode and train-lora treat it as
# Wan. Every SkyReels-V2 pipeline has SkyReelsV2LoraLoaderMixin: a LoRA trained on the T2V model
# loads into the diffusion-forcing pipelines too (same module names).
SKYREELS_V2 = VideoModelFamily(
    name="skyreels-v2",
    description="SkyReels-V2 T2V / I2V / diffusion forcing (SkyReelsV2Transformer3DModel)",
    transformer_classes=("SkyReelsV2Transformer3DModel",),
    self_attention=(("blocks", "attn1"),),  # attn2 is cross-attention to text (and I2V image tokens)
    default_preset="wan",
    flow_shift=8.0,  # the pipelines' docstrings: 8.0 for T2V, 5.0 for I2V
    image_to_video_flow_shift=5.0,
    lora_pipeline_class="SkyReelsV2Pipeline",
    lora_attention_targets=(r"blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)",),
    lora_ff_targets=(r"blocks\.\d+\.ffn\.net\.(0\.proj|2)",),
    text_dim_key="text_dim",
    image_dim_key="image_dim",
    unmasked_text_tokens=512,  # the pipelines' max_sequence_length; the I2V attention splits text at 512
    # The fps embedding of diffusion-forcing checkpoints needs the fps the training forward does not pass.
    train_refuses=(
        (
            "inject_sample_info",
            "train-lora does not support SkyReels-V2 transformers with an fps embedding (inject_sample_info, "
            "diffusion forcing); train the T2V or I2V model: its LoRA loads into the diffusion-forcing pipelines",
        ),
    ),
    pipeline_classes=("SkyReelsV2Pipeline", "SkyReelsV2ImageToVideoPipeline"),
    image_to_video_pipelines=("SkyReelsV2ImageToVideoPipeline",),
    latent_normalisation="mean_std",
    prompt_outputs=("prompt_embeds", None),  # (prompt_embeds, negative_prompt_embeds=None)
    prompt_kwargs=(("do_classifier_free_guidance", False),),
    shares_latents_with=("wan",),
    step_matrix_pipelines=(
        "SkyReelsV2DiffusionForcingPipeline",
        "SkyReelsV2DiffusionForcingImageToVideoPipeline",
        "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
    ),
    frame_causal_key="num_frame_per_block",
)
MOCHI = VideoModelFamily(
    name="mochi",
    description="Mochi 1 (MochiTransformer3DModel)",
    transformer_classes=("MochiTransformer3DModel",),
    # Joint attention: video tokens, then the prompt's. The time embedding's attention pooling
    # (text only, outside these modules) is not listed.
    self_attention=(("transformer_blocks", "attn1"),),
    # MochiAttnProcessor2_0 loops over the batch: item b attends over [video, its valid prompt
    # tokens] (no mask), so the extra tokens after the video differ per call.
    sdpa_calls="per_batch_item",
    extra_tokens="after",  # each item's valid prompt tokens follow the video
    # No published radial settings for Mochi: HunyuanVideo's preset by analogy (joint attention
    # with the text after the video, no attention sink known), to be checked on real weights.
    default_preset="hunyuan",
)

COGVIDEOX = VideoModelFamily(
    name="cogvideox",
    description="CogVideoX 1.0 / 1.5 (CogVideoXTransformer3DModel)",
    transformer_classes=("CogVideoXTransformer3DModel",),
    # attn1 is joint attention over [text, video]; its processor calls F.scaled_dot_product_attention
    # directly (no dispatch_attention_fn), once per call. There is no cross-attention.
    self_attention=(("transformer_blocks", "attn1"),),
    hidden_states="BFCHW",
    extra_tokens="before",  # the prompt's max_text_seq_length tokens (226) come first, unmasked
    prefix_tokens=226,
    prefix_tokens_input="encoder_hidden_states",
    pads_latent_frames=True,
    # No published radial settings: HunyuanVideo's preset by analogy (joint text tokens, no
    # attention sink of Wan's kind). v-prediction (CogVideoX DDIM/DPM schedulers), not flow
    # matching: no train-lora / encode.
    default_preset="hunyuan",
)

# Wan VACE: Wan's blocks plus a control branch (vace_blocks) whose self-attention runs over the
# same video token grid (the control latents are patched like the video, zero-padded in tokens to
# its length, and get the same RoPE). The forward runs every vace_blocks.j first, then blocks.i:
# that is the layer order dense_layers counts (dense_layers=1 makes vace_blocks.0 dense).
# Reference images are extra latent frames the pipeline puts in front of the video; the
# transformer cannot tell them from video frames, so they count as video frames of the mask
# (frame 0, the sink of the wan preset, is the first reference image when there is one).
WAN_VACE = VideoModelFamily(
    name="wan-vace",
    description="Wan2.1 VACE / Wan2.2 VACE-Fun (WanVACETransformer3DModel)",
    transformer_classes=("WanVACETransformer3DModel",),
    self_attention=(("vace_blocks", "attn1"), ("blocks", "attn1")),  # attn2: cross-attention to text
    default_preset="wan",
    expert_preset="wan2.2",  # WanVACEPipeline with transformer_2 and boundary_ratio (Wan2.2 VACE-Fun A14B)
    flow_shift=3.0,  # 480p (the pipeline's docstring: 5.0 for 720p)
)
# Wan Animate: Wan2.1's blocks; latent frame 0 of every call is the reference image (1 + F latent
# frames), counted as a video frame (the wan preset's sink). Its face_adapter modules are
# per-frame cross-attention to motion tokens, and attn2 cross-attention to text and the CLIP image:
# neither is listed, so both stay as they are.
WAN_ANIMATE = VideoModelFamily(
    name="wan-animate",
    description="Wan2.2 Animate (WanAnimateTransformer3DModel)",
    transformer_classes=("WanAnimateTransformer3DModel",),
    self_attention=(("blocks", "attn1"),),
    reference_frames=1,
    default_preset="wan",
)

# HunyuanVideo 1.5: one kind of block (54 double-stream blocks, no single-stream ones), joint
# attention over [video, valid image (SigLIP, I2V only), valid byT5, valid Qwen, padding]: the model
# reorders each item's condition tokens so the valid ones are a prefix, and the processor masks the
# rest pairwise (pairwise_prefix_mask). 729 + 256 + 1000 = 1985 condition tokens in every call.
HUNYUAN15 = VideoModelFamily(
    name="hunyuan15",
    description="HunyuanVideo 1.5 T2V / I2V (HunyuanVideo15Transformer3DModel)",
    transformer_classes=("HunyuanVideo15Transformer3DModel",),
    # The text token refiner (context_embedder.token_refiner) attends over text only: not listed.
    self_attention=(("transformer_blocks", "attn"),),
    extra_tokens="after",
    default_extra_tokens=1985,
    pairwise_prefix_mask=True,
    # No published radial settings: HunyuanVideo's preset by analogy (same lab, the condition
    # tokens after the video as in HunyuanVideo, no attention sink of Wan's kind known).
    default_preset="hunyuan",
    # Training (text-to-video). The flow shift is a fallback only: the checkpoint folders carry
    # their scheduler config (default_shift reads it); 5.0 is an assumption, unchecked.
    flow_shift=5.0,
    # HunyuanVideo15Pipeline has no LoRA loader mixin (diffusers 0.42.1): the LoRA file is written
    # in the same format by HunyuanVideoPipeline.save_lora_weights ("transformer."-prefixed keys) and
    # loads with pipe.transformer.load_lora_adapter(folder, prefix="transformer").
    lora_pipeline_class="HunyuanVideoPipeline",
    lora_attention_targets=(r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)",),
    lora_ff_targets=(r"transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)",),
    text_dim_key="text_embed_dim",
    text_2_dim_key="text_embed_2_dim",
    call_inputs=(
        ("prompt_attention_mask", "encoder_attention_mask"),
        ("prompt_embeds_2", "encoder_hidden_states_2"),
        ("prompt_attention_mask_2", "encoder_attention_mask_2"),
    ),
    train_requires=(
        ("task_type", "t2v", "train-lora trains HunyuanVideo 1.5 text-to-video transformers only (task_type 't2v')"),
    ),
    t2v_zero_inputs=True,
    t2v_image_tokens=729,  # the pipeline's vision_num_semantic_tokens
    t2v_image_dim_key="image_embed_dim",
    pipeline_classes=("HunyuanVideo15Pipeline",),
    latent_normalisation="scaling_factor",  # the pipeline decodes latents / scaling_factor
    # encode_prompt returns (Qwen embeds, their mask, byT5 embeds, their mask), all padded to fixed
    # lengths (1000 and 256) by the pipeline itself.
    prompt_outputs=("prompt_embeds", "prompt_attention_mask", "prompt_embeds_2", "prompt_attention_mask_2"),
)

# LTX-Video: packed tokens [B, S, C]; the transformer gets the latent grid as num_frames / height /
# width (T2V, I2V), or only the tokens' coordinates video_coords (LTXConditionPipeline, whose
# keyframe-condition tokens come first, as dense tokens before the video; cut off after the call).
LTX = VideoModelFamily(
    name="ltx",
    description="LTX-Video T2V / I2V / condition (LTXVideoTransformer3DModel)",
    transformer_classes=("LTXVideoTransformer3DModel",),
    self_attention=(("transformer_blocks", "attn1"),),  # attn2 is cross-attention to text
    hidden_states="BSC",
    extra_tokens="before",  # the condition pipeline's keyframe tokens (0 in T2V / I2V)
    prefix_tokens_input="video_coords",
    # No published radial settings: Wan's preset (attention sink, half-window) at block 64, to be
    # checked on real weights; the flow shift is dynamic (calculate_shift from the sequence length).
    default_preset="wan",
    default_block_size=64,
    pipeline_classes=(),  # no encode / train-lora yet
)
# LTX-2: video and audio streams. Only the video self-attention (attn1) is radial; the audio
# self-attention (audio_attn1) and the audio<->video cross-attention are not listed and stay as they
# are. The condition / IC-LoRA pipelines append keyframe / reference tokens after the video grid
# (num_frames/height/width still describe the grid): dense tokens after the video.
LTX2 = VideoModelFamily(
    name="ltx2",
    description="LTX-2 video stream (LTX2VideoTransformer3DModel; its audio attention stays as it is)",
    transformer_classes=("LTX2VideoTransformer3DModel",),
    self_attention=(("transformer_blocks", "attn1"),),
    sdpa_calls="zero_or_one",  # STG perturbing every batch item skips the attention
    hidden_states="BSC",
    extra_tokens="after",  # keyframe-condition / IC-LoRA reference tokens (0 in T2V / I2V)
    refused_inputs=(
        (
            "video_self_attention_mask",
            "it is a soft (fractional) token-level mask over the video self-attention (IC-LoRA references with "
            "a conditioning strength), which the block-sparse mask cannot carry; call the pipeline without "
            "reference strengths, or remove_radial_attention for this generation",
        ),
    ),
    default_preset="wan",
    default_block_size=64,
)

FAMILIES: Dict[str, VideoModelFamily] = {
    f.name: f for f in (WAN, HUNYUAN, SKYREELS_V2, MOCHI, COGVIDEOX, WAN_VACE, WAN_ANIMATE, HUNYUAN15, LTX, LTX2)
}


# ------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Schedule:
    """A recommended dense schedule (the reference's, for 50 steps)."""

    dense_steps: int
    dense_layers: int


@dataclass(frozen=True)
class ModelVariant:
    """One checkpoint line of a family at its usual sizes: how pixels become tokens, its preset."""

    name: str
    family: str  # a key of FAMILIES
    description: str
    vae_strides: Tuple[int, int]  # (temporal, spatial) compression of its VAE
    patch: Tuple[int, int, int]  # (p_t, p_h, p_w) of its transformer config
    preset: str
    schedule: Optional[Schedule]  # None: none known
    aliases: Tuple[str, ...] = field(default=())
    heads: int = 24  # attention heads of the checkpoint (head dim 128): the mask command's FLOP count
    block_size: int = 128  # the mask block size its family defaults to (64: LTX)

    @property
    def model_family(self) -> VideoModelFamily:
        return FAMILIES[self.family]

    @property
    def temporal_compression(self) -> int:
        """Pixel frames per latent token frame (VAE stride x temporal patch)."""
        return self.vae_strides[0] * self.patch[0]

    @property
    def spatial_stride(self) -> int:
        """Pixels per token side (VAE stride x spatial patch)."""
        return self.vae_strides[1] * self.patch[1]

    @property
    def default_extra_tokens(self) -> int:
        """Extra (text) tokens after the video at the family's usual prompt length."""
        return self.model_family.default_extra_tokens

    @property
    def default_prefix_tokens(self) -> int:
        """Extra (text) tokens before the video at the family's usual prompt length (CogVideoX: 226)."""
        return self.model_family.prefix_tokens

    @property
    def default_text_tokens(self) -> int:
        """Deprecated name of :attr:`default_extra_tokens`."""
        from radial_attention._deprecation import warn_deprecated

        warn_deprecated("ModelFamily.default_text_tokens", "default_extra_tokens")
        return self.default_extra_tokens


_WAN_SCHEDULE = Schedule(dense_steps=12, dense_layers=1)


def _variant(name, family, description, *, vae, patch=(1, 2, 2), preset, schedule, aliases=(), heads) -> ModelVariant:
    block = FAMILIES[family].default_block_size
    return ModelVariant(name, family, description, vae, patch, preset, schedule, aliases, heads, block)


VARIANTS: Dict[str, ModelVariant] = {
    v.name: v
    for v in (
        _variant(
            "wan2.1", "wan", "Wan2.1 T2V/I2V 1.3B and 14B",
            vae=(4, 8), preset="wan", schedule=_WAN_SCHEDULE, aliases=("wan", "wan2.1-t2v", "wan2.1-i2v"), heads=40,
        ),
        _variant(
            "wan2.2-a14b", "wan", "Wan2.2 T2V/I2V A14B (two experts)",
            vae=(4, 8), preset="wan2.2", schedule=Schedule(dense_steps=11, dense_layers=1),
            aliases=("wan2.2",), heads=40,
        ),
        # The reference gives TI2V-5B no schedule of its own: Wan2.1's.
        _variant(
            "wan2.2-ti2v-5b", "wan", "Wan2.2 TI2V-5B (16x VAE)",
            vae=(4, 16), preset="wan", schedule=_WAN_SCHEDULE, aliases=("wan2.2-5b",), heads=24,
        ),
        _variant(
            "hunyuan", "hunyuan", "HunyuanVideo T2V (text tokens after the video)",
            vae=(4, 8), preset="hunyuan", schedule=Schedule(dense_steps=12, dense_layers=0),
            aliases=("hunyuanvideo", "hunyuan-video"), heads=24,
        ),
        # CogVideoX: no published radial settings. HunyuanVideo's preset and schedule by analogy
        # (12 of 50 dense steps is the reference's steps // 4; no dense layer, as HunyuanVideo).
        # heads: 5B has 48 heads of dim 64, i.e. 24 of dim 128 for the FLOP count.
        _variant(
            "cogvideox-1.0", "cogvideox", "CogVideoX 2B/5B (text before the video; no preset of its own)",
            vae=(4, 8), preset="hunyuan", schedule=Schedule(dense_steps=12, dense_layers=0),
            aliases=("cogvideox", "cogvideox-2b", "cogvideox-5b"), heads=24,
        ),
        _variant(
            "cogvideox-1.5", "cogvideox", "CogVideoX1.5-5B (patch_size_t=2; no preset of its own)",
            vae=(4, 8), patch=(2, 2, 2), preset="hunyuan", schedule=Schedule(dense_steps=12, dense_layers=0),
            aliases=("cogvideox1.5", "cogvideox-1.5-5b"), heads=24,
        ),
        # No published radial preset or schedule: Wan2.1's (the same architecture and VAE).
        _variant(
            "skyreels-v2", "skyreels-v2", "SkyReels-V2 T2V/I2V/DF 1.3B and 14B (Wan2.1's preset and schedule)",
            vae=(4, 8), preset="wan", schedule=_WAN_SCHEDULE, aliases=("skyreels", "skyreels-v2-df"), heads=40,
        ),
        # None published for Mochi: HunyuanVideo's preset and schedule by analogy (12 of 50 steps
        # dense, about a quarter as the reference's maintainers advise: 16 of Mochi's default 64).
        _variant(
            "mochi", "mochi", "Mochi 1 (no preset of its own; HunyuanVideo's settings)",
            vae=(6, 8), preset="hunyuan", schedule=Schedule(dense_steps=12, dense_layers=0),
            aliases=("mochi-1",), heads=24,
        ),
        # Wan VACE and Animate: Wan's architecture and VAE, no published radial settings: Wan2.1's
        # preset and schedule (Wan2.2's for the two-expert VACE-Fun A14B).
        _variant(
            "wan-vace", "wan-vace", "Wan2.1 VACE 1.3B / 14B (Wan2.1's preset and schedule)",
            vae=(4, 8), preset="wan", schedule=_WAN_SCHEDULE, aliases=("vace", "wan2.1-vace"), heads=40,
        ),
        _variant(
            "wan2.2-vace-fun-a14b", "wan-vace", "Wan2.2 VACE-Fun A14B, two experts (Wan2.2 A14B's preset and schedule)",
            vae=(4, 8), preset="wan2.2", schedule=Schedule(dense_steps=11, dense_layers=1),
            aliases=("wan2.2-vace",), heads=40,
        ),
        _variant(
            "wan-animate", "wan-animate", "Wan2.2 Animate 14B (Wan2.1's preset and schedule)",
            vae=(4, 8), preset="wan", schedule=_WAN_SCHEDULE, aliases=("wan2.2-animate", "animate"), heads=40,
        ),
        # HunyuanVideo 1.5 (480p and 720p checkpoints, T2V and I2V): 16x VAE, no patching (1, 1, 1),
        # 16 heads of dim 128. None published: HunyuanVideo's preset and schedule by analogy (12 of
        # 50 steps dense, no dense layer); unchecked on real weights.
        _variant(
            "hunyuanvideo-1.5", "hunyuan15", "HunyuanVideo 1.5 T2V/I2V 480p and 720p (HunyuanVideo's settings)",
            vae=(4, 16), patch=(1, 1, 1), preset="hunyuan", schedule=Schedule(dense_steps=12, dense_layers=0),
            aliases=("hunyuan15", "hunyuanvideo1.5", "hunyuan-video-1.5", "hunyuanvideo15"), heads=16,
        ),
        # LTX: 8x temporal / 32x spatial VAE, no patching. No published radial settings: Wan's preset and
        # schedule (what generate picks by preset: a quarter of the steps dense, the first block) at block 64.
        # heads: LTX-Video 2B has 32 heads of dim 64 (16 of dim 128 for the FLOP count); LTX-2 32 of 128.
        _variant(
            "ltx-video", "ltx", "LTX-Video 0.9.x T2V/I2V/condition (32x VAE; block 64; Wan's preset)",
            vae=(8, 32), patch=(1, 1, 1), preset="wan", schedule=_WAN_SCHEDULE,
            aliases=("ltx", "ltxvideo", "ltx-video-0.9"), heads=16,
        ),
        _variant(
            "ltx-2", "ltx2", "LTX-2 video stream (32x VAE; block 64; Wan's preset; audio stays dense)",
            vae=(8, 32), patch=(1, 1, 1), preset="wan", schedule=_WAN_SCHEDULE,
            aliases=("ltx2", "ltx-2-video"), heads=32,
        ),
    )
}  # fmt: skip
DEFAULT_VARIANT = "wan2.1"  # the schedule of presets no variant names (wan-full)


def get_variant(name: str) -> ModelVariant:
    """A variant by name or alias (case-insensitive); ``ValueError`` naming the known ones."""
    key = name.lower()
    for v in VARIANTS.values():
        if key == v.name or key in v.aliases:
            return v
    known = sorted({n for v in VARIANTS.values() for n in (v.name, *v.aliases)})
    raise ValueError(f"unknown model family {name!r}; expected one of {known}")


def recommended_schedule(preset: str) -> Schedule:
    """The dense schedule recommended with ``preset``: that of the first variant using it, else Wan2.1's."""
    for v in VARIANTS.values():
        if v.preset == preset and v.schedule is not None:
            return v.schedule
    return VARIANTS[DEFAULT_VARIANT].schedule


# ------------------------------------------------------------------------------------- lookups


def family_for_transformer(class_name: str) -> Optional[VideoModelFamily]:
    """The family whose transformer class is ``class_name`` (exact name), or ``None``."""
    for f in FAMILIES.values():
        if class_name in f.transformer_classes:
            return f
    return None


def family_for_pipeline(class_name: str) -> Optional[VideoModelFamily]:
    """The family whose ``encode`` pipelines include ``class_name``, or ``None``."""
    for f in FAMILIES.values():
        if class_name in f.pipeline_classes:
            return f
    return None


def shares_latents(data_family: str, model_family: str) -> bool:
    """Whether a data folder encoded for ``data_family`` trains a ``model_family`` transformer: the
    same family, or one of the two lists the other in ``shares_latents_with``."""
    if data_family == model_family:
        return True
    a, b = FAMILIES.get(data_family), FAMILIES.get(model_family)
    return (
        a is not None
        and b is not None
        and (model_family in a.shares_latents_with or data_family in b.shares_latents_with)
    )


def patchable_transformer_classes() -> Tuple[str, ...]:
    """Transformer class names ``apply_radial_attention`` takes, in registry order."""
    return tuple(c for f in FAMILIES.values() if f.patchable for c in f.transformer_classes)


def video_token_grid(
    height: int,
    width: int,
    num_frames: int,
    vae_strides: Tuple[int, int],
    patch: Tuple[int, int, int],
    *,
    pad_frames: bool = False,
) -> Tuple[int, int, int]:
    """``(F, H_tokens, W_tokens)`` of a ``num_frames x height x width`` pixel video (no checks).

    ``F = ((num_frames - 1) // t_vae + 1) // p_t`` latent token frames (rounded up instead with
    ``pad_frames``: a pipeline that pads the latent frames to a multiple of ``p_t``, CogVideoX
    1.5) and ``H_tokens = height // s_vae // p_h`` (likewise W): the self-attention's video is
    ``F x (H_tokens * W_tokens)`` tokens, frame-major.
    """
    t, s = vae_strides
    pt, ph, pw = patch
    latent = (num_frames - 1) // t + 1
    frames = -(-latent // pt) if pad_frames else latent // pt
    return frames, height // s // ph, width // s // pw
