"""Wan VACE (``WanVACETransformer3DModel``) and Wan Animate (``WanAnimateTransformer3DModel``) with
radial attention, on tiny random-weight transformers and pipelines.

VACE: its control branch ``vace_blocks.j.attn1`` is self-attention over the same video token grid
as ``blocks.i.attn1`` and runs first, so it is radial too and comes first in the layer order
``dense_layers`` counts; reference images are latent frames in front of the video and count as
video frames of the mask. Animate: latent frame 0 is the reference image (also a video frame of the
mask); its face adapter (per-frame cross-attention to motion tokens) and ``attn2`` stay untouched.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    get_radial_state,
    remove_radial_attention,
)
from radial_attention.mask import radial_block_mask, video_layout  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402

from test_diffusers_integration import BS, _rel, oracle, run  # noqa: E402

F, H, W = 12, 14, 12  # latent frames (incl. the reference frame), T = 7 * 6 = 42, S = 504: not a multiple of 64
T = (H // 2) * (W // 2)

# name -> (builder, inputs): each a tiny transformer and its call kwargs for F x H x W latents.
MODELS = {
    "vace": (lambda: tiny.tiny_wan_vace_transformer(num_layers=2, vace_layers=(0, 1)), tiny.wan_vace_inputs),
    "animate": (tiny.tiny_wan_animate_transformer, tiny.wan_animate_inputs),
}


def _image(seed, size=32):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8"))


# ------------------------------------------------------------------------------ transformers
def test_attention_modules_are_the_video_self_attention_in_run_order():
    vace = tiny.tiny_wan_vace_transformer(num_layers=3, vace_layers=(0, 2))
    # The forward runs every control block first, then the main blocks.
    assert attention_modules(vace) == [
        "vace_blocks.0.attn1",
        "vace_blocks.1.attn1",
        "blocks.0.attn1",
        "blocks.1.attn1",
        "blocks.2.attn1",
    ]
    animate = tiny.tiny_wan_animate_transformer(num_layers=2)
    assert attention_modules(animate) == ["blocks.0.attn1", "blocks.1.attn1"]  # not face_adapter, not attn2


@pytest.mark.parametrize("name", sorted(MODELS))
def test_radial_equals_unpatched_model_with_the_mask_as_token_mask(name):
    build, inputs = MODELS[name]
    model = build()
    kwargs = inputs(model, F, H, W, batch=2)  # batch 2: batched CFG
    mask = radial_block_mask(F, T, preset="wan", block_size=BS)
    assert mask.density <= 0.6

    dense = run(model, kwargs)
    state = apply_radial_attention(model, block_size=BS)
    radial = run(model, kwargs)
    assert state.config.preset == "wan"  # Wan2.1's: none published for VACE / Animate
    assert list(state.masks) == [(F, T, 0, 0)]  # the reference frame counts as a video frame
    assert torch.equal(state.masks[(F, T, 0, 0)].to_dense(), mask.to_dense())
    remove_radial_attention(model)

    expected = oracle(model, kwargs, mask, F * T)  # every listed module masked, nothing else
    err = _rel(radial, expected)
    diff = _rel(radial, dense)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    assert diff > 5e-3 and diff > 1000 * err, f"radial output too close to dense ({diff}) to test anything"
    assert state.summary()["radial_calls"] == len(attention_modules(model))


def test_vace_dense_layers_count_the_control_blocks_first():
    build, inputs = MODELS["vace"]
    model = build()  # layers: vace_blocks.0, vace_blocks.1, blocks.0, blocks.1
    kwargs = inputs(model, F, H, W, batch=2)
    mask = radial_block_mask(F, T, preset="wan", block_size=BS)
    for dense_layers, masked in ((1, {1, 2, 3}), (2, {2, 3})):
        state = apply_radial_attention(model, dense_layers=dense_layers, block_size=BS)
        radial = run(model, kwargs)
        remove_radial_attention(model)
        assert {layer for (_, layer, kind) in state.calls if kind == "radial"} == masked
        assert _rel(radial, oracle(model, kwargs, mask, F * T, layers=masked)) < 1e-5
        assert _rel(radial, oracle(model, kwargs, mask, F * T)) > 1e-3  # the dense control blocks matter


@pytest.mark.parametrize("name", sorted(MODELS))
def test_all_dense_and_removal_are_exact(name):
    build, inputs = MODELS[name]
    model = build()
    kwargs = inputs(model, F, H, W, batch=2)
    before = run(model, kwargs)
    dicts = {n: set(vars(m)) for n, m in model.named_modules()}
    forwards = {n: m.forward for n, m in model.named_modules()}
    procs = {n: m.processor for n, m in model.named_modules() if hasattr(m, "processor")}

    state = apply_radial_attention(model, dense_layers=len(attention_modules(model)), block_size=BS)
    assert torch.equal(run(model, kwargs), before)
    assert state.summary()["radial_calls"] == 0
    remove_radial_attention(model)
    state = apply_radial_attention(model, dense_steps=1, block_size=BS)
    assert torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)

    apply_radial_attention(model, block_size=BS)
    assert not torch.equal(run(model, kwargs), before)
    if name == "animate":  # the face adapter (and every module but the listed ones) carries no hook
        hooked = {n for n, m in model.named_modules() if "_diffusers_hook" in vars(m)}
        assert hooked == {"", "blocks.0.attn1", "blocks.1.attn1"}
    remove_radial_attention(model)
    assert torch.equal(run(model, kwargs), before)
    assert {n: set(vars(m)) for n, m in model.named_modules()} == dicts
    assert all(m.forward == forwards[n] for n, m in model.named_modules())
    assert all(m.processor is procs[n] for n, m in model.named_modules() if hasattr(m, "processor"))
    assert get_radial_state(model) is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_latents_off_the_patch_are_clear_errors(name):
    build, inputs = MODELS[name]
    model = build()
    apply_radial_attention(model, block_size=BS)
    with pytest.raises(ValueError, match=r"multiples of its patch 1 x 2 x 2; got hidden_states .* W=11"):
        run(model, inputs(model, 4, 8, 11))
    remove_radial_attention(model)


def test_animate_without_a_segment_frame_is_a_clear_error():
    model = tiny.tiny_wan_animate_transformer()
    with pytest.raises(ValueError, match="reference frame and at least one segment frame, got frames=1"):
        tiny.wan_animate_inputs(model, 1, 8, 8)


def test_video_layout_counts_the_reference_frames():
    # Animate: 1280x720, a segment of 77 frames: 20 latent frames after the reference image's.
    layout = video_layout("wan-animate", 720, 1280, 77)
    assert (layout.frames, layout.tokens_per_frame, layout.seq_len) == (21, 3600, 75600)
    # VACE: one latent frame per reference image, the caller's choice (default none).
    assert video_layout("wan-vace", 480, 832, 81).frames == 21
    assert video_layout("wan-vace", 480, 832, 81, reference_frames=2).frames == 23
    with pytest.raises(ValueError, match="reference_frames must be a non-negative integer, got -1"):
        video_layout("wan-vace", 480, 832, 81, reference_frames=-1)


def test_sequence_parallel_counts_the_animate_reference_frame():
    from types import SimpleNamespace

    from radial_attention.cli.sequence_parallel import _video_tokens

    strides = SimpleNamespace(vae_scale_factor_temporal=4, vae_scale_factor_spatial=8)  # what the pipelines say
    animate = tiny.tiny_wan_animate_transformer(num_layers=1)
    assert _video_tokens(strides, animate, 32, 48, 9) == (1 + 3) * 2 * 3  # the segment's 3 frames after the reference
    vace = tiny.tiny_wan_vace_transformer(num_layers=1)
    assert _video_tokens(strides, vace, 32, 48, 9) == 3 * 2 * 3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sequence_parallelism_is_refused_clearly(name):
    # diffusers 0.42.1 has no context-parallel plan for either class: sequence parallelism cannot split them.
    from radial_attention.integrations.diffusers.context_parallel import check_sequence_parallel

    model = MODELS[name][0]()
    with pytest.raises(ValueError, match=f"{type(model).__name__} has no context-parallel plan"):
        check_sequence_parallel(model, 2)


@pytest.mark.parametrize("variant", ["wan-vace", "wan2.2-vace-fun-a14b", "wan-animate"])
def test_pixel_sizes_the_models_cannot_take_are_clear_errors(variant):
    layout = video_layout(variant, 480, 832, 81, reference_frames=0)  # VACE's default size
    assert (layout.frames, layout.tokens_per_frame) == (21, 1560)
    with pytest.raises(ValueError, match="height must be divisible by 16 .* got 470; nearest valid: 464 or 480"):
        video_layout(variant, 470, 832, 81)
    with pytest.raises(ValueError, match=r"num_frames must be 4k\+1 .* got 80"):
        video_layout(variant, 480, 832, 80)


# ------------------------------------------------------------------------------ pipelines
def _vace_call(pipe, **extra):
    from PIL import Image

    frames = 9
    video = [_image(i) for i in range(frames)]
    mask = [Image.fromarray(np.full((32, 32), 255 if i >= 4 else 0, dtype="uint8")) for i in range(frames)]
    call = dict(
        prompt="a cat",
        video=video,
        mask=mask,
        reference_images=[_image(99)],
        height=32,
        width=32,
        num_frames=frames,
        num_inference_steps=3,
        guidance_scale=2.0,  # CFG: two transformer calls a step
        max_sequence_length=16,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    call.update(extra)
    return pipe(**call).frames


def test_vace_pipeline_with_a_reference_image_runs_radial_and_removal_restores_it():
    pipe = tiny.tiny_wan_vace_pipeline(num_layers=2, vace_layers=(0,))  # layers: vace_blocks.0, blocks.0, blocks.1
    pipe.set_progress_bar_config(disable=True)
    before = _vace_call(pipe)
    state = apply_radial_attention(pipe, dense_steps=1, dense_last_steps=1, dense_layers=1, block_size=BS)
    _vace_call(pipe)
    # 9 pixel frames: 3 latent frames, plus the reference image's latent frame in front.
    assert list(state.masks) == [(1 + 3, 4, 0, 0)]
    kinds = {(s, layer): "radial" if s == 1 and layer >= 1 else "dense" for s in range(3) for layer in range(3)}
    assert dict(state.calls) == {(s, layer, kind): 2 for (s, layer), kind in kinds.items()}
    remove_radial_attention(pipe)
    assert torch.equal(_vace_call(pipe), before)


def test_vace_pipeline_with_two_experts_gets_the_wan22_preset():
    from diffusers import WanVACEPipeline

    pipe = tiny.tiny_wan_vace_pipeline(num_layers=2)
    two = WanVACEPipeline(
        **{k: v for k, v in pipe.components.items() if k != "transformer_2"},
        transformer_2=tiny.tiny_wan_vace_transformer(num_layers=2, seed=1),
        boundary_ratio=0.875,
    )
    two.set_progress_bar_config(disable=True)
    state = apply_radial_attention(two, block_size=BS)
    assert state.config.preset == "wan2.2"
    _vace_call(two, reference_images=None, num_inference_steps=2)
    # Both experts share one step count: 2 steps x 2 CFG calls x 3 layers, whichever expert ran.
    assert state.summary()["radial_calls"] == 2 * 2 * 3
    remove_radial_attention(two)


def _animate_call(pipe, **extra):
    call = dict(
        image=_image(5),
        pose_video=[_image(i) for i in range(9)],
        face_video=[_image(i, tiny.WAN_ANIMATE_FACE_SIZE) for i in range(9)],
        prompt="a cat",
        height=32,
        width=32,
        segment_frame_length=9,
        num_inference_steps=2,
        guidance_scale=2.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    )
    call.update(extra)
    return pipe(**call).frames


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_animate_pipeline_counts_steps_per_segment_with_the_reference_frame():
    # One pipeline call (its tiny VAE and motion encoder are slow on CPU; removal is exact on the
    # transformer above) of two segments: 17 pose frames, segments of 9 overlapping by 1 frame.
    # Each segment sets its scheduler's timesteps again, so the step count restarts per segment.
    pipe = tiny.tiny_wan_animate_pipeline(num_layers=2)
    pipe.set_progress_bar_config(disable=True)
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    pose = [_image(i) for i in range(17)]
    face = [_image(i, tiny.WAN_ANIMATE_FACE_SIZE) for i in range(17)]
    radial = _animate_call(pipe, pose_video=pose, face_video=face, guidance_scale=1.0)  # its default: no CFG
    # A segment of 9 pixel frames: 3 latent frames, after the reference image's latent frame.
    assert list(state.masks) == [(1 + 3, 4, 0, 0)]
    # One call per (segment, step, layer): step 0 dense, step 1 radial, in both segments.
    assert dict(state.calls) == {(0, 0, "dense"): 2, (0, 1, "dense"): 2, (1, 0, "radial"): 2, (1, 1, "radial"): 2}
    remove_radial_attention(pipe)
    assert get_radial_state(pipe) is None
    assert torch.isfinite(radial).all()


# ------------------------------------------------------------------------------ generate
def _write_video(path, frames, size):
    import imageio.v2 as imageio

    imageio.mimwrite(path, [np.asarray(_image(i, size)) for i in range(frames)], fps=8)
    return str(path)


def _generate(folder, out, *extra):
    from radial_attention.cli.main import main

    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "64", "--width", "64"]
    args += ["--frames", "9", "--steps", "2", "--dense-steps", "1", "--dense-layers", "0", "--block-size", "64"]
    args += ["--out", str(out), "--device", "cpu", *extra]
    return main(args)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_generate_writes_a_vace_video_with_a_control_video_and_a_reference_image(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("wan-vace", str(tmp_path / "tiny"))
    ref = tmp_path / "ref.png"
    _image(7, 64).save(ref)
    control = _write_video(tmp_path / "control.mp4", 12, 64)  # longer than --frames: cut to 9
    out = tmp_path / "video.mp4"
    assert _generate(folder, out, "--max-sequence-length", "16", "--reference-image", str(ref), "--video", control) == 0
    text = capsys.readouterr().out
    # 9 frames at 64x64: 3 latent frames of 4 x 4 tokens, and the reference image's frame in front.
    assert "F=4 T=16 extra=0: density" in text and "radial and" in text
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)

    short = _write_video(tmp_path / "short.mp4", 5, 64)
    assert _generate(folder, out, "--max-sequence-length", "16", "--video", short) != 0
    assert "--video has 5 frames; generating 9 needs at least as many" in capsys.readouterr().err
    assert _generate(folder, out, "--max-sequence-length", "16", "--pose-video", short) != 0
    assert "WanVACEPipeline takes no pose_video; drop --pose-video" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_generate_writes_a_wan_animate_video_from_pose_and_face_videos(tmp_path, capsys):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("wan-animate", str(tmp_path / "tiny"))
    character = tmp_path / "character.png"
    _image(7, 64).save(character)
    pose = _write_video(tmp_path / "pose.mp4", 9, 64)
    face = _write_video(tmp_path / "face.mp4", 9, tiny.WAN_ANIMATE_FACE_SIZE)
    out = tmp_path / "video.mp4"
    assert _generate(folder, out, "--image", str(character), "--face-video", face) != 0
    assert "WanAnimatePipeline needs its pose_video: pass --pose-video PATH" in capsys.readouterr().err
    assert _generate(folder, out, "--image", str(character), "--pose-video", pose, "--face-video", face) == 0
    text = capsys.readouterr().out
    assert "F=4 T=16 extra=0: density" in text and "radial and" in text  # the reference frame, then 3 latent frames
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_generate_refuses_a_condition_file_that_does_not_exist(tmp_path, capsys):
    from radial_attention.cli.main import main

    code = main(["generate", "--model", str(tmp_path), "--prompt", "a cat", "--video", str(tmp_path / "nope.mp4")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
