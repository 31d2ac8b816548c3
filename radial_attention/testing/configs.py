"""The transformer configs of the real checkpoints, for full-width benchmarks with random weights.

Values of the diffusers ``transformer/config.json`` of Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
Wan-AI/Wan2.1-T2V-14B-Diffusers and hunyuanvideo-community/HunyuanVideo (and Wan VACE / Animate below) (kwargs of
``WanTransformer3DModel`` / ``HunyuanVideoTransformer3DModel``). One copy for every benchmark:
they build as many blocks as they measure (``without_depth(cfg)`` plus their own ``num_layers``).
"""

from __future__ import annotations

WAN21_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
WAN21_14B = dict(WAN21_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
HUNYUAN_VIDEO = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=24,
    attention_head_dim=128,
    num_layers=20,
    num_single_layers=40,
    num_refiner_layers=2,
    mlp_ratio=4.0,
    patch_size=2,
    patch_size_t=1,
    qk_norm="rms_norm",
    guidance_embeds=True,
    text_embed_dim=4096,
    pooled_projection_dim=768,
    rope_theta=256.0,
    rope_axes_dim=(16, 56, 56),
)
# Wan-AI/Wan2.1-VACE-1.3B / -14B (alibaba-pai/Wan2.2-VACE-Fun-A14B: each expert as 14B), as diffusers'
# conversion script writes them (WanVACETransformer3DModel). vace_layers: the main blocks a control
# block's hint is added after; there are len(vace_layers) control blocks, whose self-attention runs
# first. With fewer blocks (without_depth), keep only the vace_layers below num_layers (0 must stay).
WAN_VACE_1_3B = dict(WAN21_1_3B, vace_layers=list(range(0, 30, 2)), vace_in_channels=96)
WAN_VACE_14B = dict(WAN21_14B, vace_layers=list(range(0, 40, 5)), vace_in_channels=96)
# Wan-AI/Wan2.2-Animate-14B (WanAnimateTransformer3DModel): Wan2.1 14B's blocks with image cross-attention
# (CLIP, 1280 wide), 36 input channels, a motion encoder over 512x512 face frames and a face adapter
# after every 5th block.
WAN_ANIMATE_14B = dict(
    WAN21_14B,
    in_channels=36,
    latent_channels=16,
    image_dim=1280,
    added_kv_proj_dim=5120,
    motion_encoder_size=512,
    motion_style_dim=512,
    motion_dim=20,
    motion_encoder_dim=512,
    face_encoder_hidden_dim=1024,
    face_encoder_num_heads=4,
    inject_face_latents_blocks=5,
)
# LTX-Video 0.9.x 2B (Lightricks/LTX-Video) and LTX-2 (Lightricks/LTX-2): the class defaults of
# LTXVideoTransformer3DModel / LTX2VideoTransformer3DModel, which diffusers sets to those checkpoints'
# (unchecked against a downloaded config.json). Packed tokens: call them with hidden_states
# [B, F*H*W, 128] and num_frames, height, width (768x512x161 -> 21 x 16 x 24; LTX-2 121 frames -> 16).
LTX_VIDEO_2B = dict(
    in_channels=128,
    out_channels=128,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=32,
    attention_head_dim=64,
    cross_attention_dim=2048,
    num_layers=28,
    caption_channels=4096,
    qk_norm="rms_norm_across_heads",
)
LTX_2 = dict(
    in_channels=128,
    out_channels=128,
    num_attention_heads=32,
    attention_head_dim=128,
    cross_attention_dim=4096,
    audio_in_channels=128,
    audio_out_channels=128,
    audio_num_attention_heads=32,
    audio_attention_head_dim=64,
    audio_cross_attention_dim=2048,
    num_layers=48,
    caption_channels=3840,
)
DEPTH_KEYS = ("num_layers", "num_single_layers")


def without_depth(config: dict) -> dict:
    """``config`` without its block counts, for a model built with a chosen number of blocks."""
    return {k: v for k, v in config.items() if k not in DEPTH_KEYS}
