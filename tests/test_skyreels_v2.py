"""SkyReels-V2 (Wan's architecture) with radial attention: what its own tests in
test_diffusers_integration.py (patched == the unpatched model fed the same mask, T2V / I2V / DF)
do not cover: all-dense and removal exactness, the diffusion-forcing pipeline's step count (its
loop never steps ``pipe.scheduler``) and its frame-block causal mask (``causal_block_size > 1``).
"""

import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.integrations.diffusers import (  # noqa: E402
    apply_radial_attention,
    attention_modules,
    get_radial_state,
    remove_radial_attention,
)
from radial_attention.mask import radial_block_mask  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402

from test_diffusers_integration import BS, _rel, oracle, run  # noqa: E402


def _df_inputs(model, frames, h, w, batch=2):
    kwargs = tiny.wan_inputs(model, frames, h, w, batch=batch)
    return dict(kwargs, timestep=torch.linspace(999, 0, frames).expand(batch, frames), enable_diffusion_forcing=True)


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_all_dense_and_removal_are_exact(variant):
    model = tiny.tiny_skyreels_transformer(variant)
    kwargs = tiny.wan_inputs(model, 12, 14, 12, batch=2)
    before = run(model, kwargs)
    forwards = {name: m.forward for name, m in model.named_modules()}
    apply_radial_attention(model, dense_layers=2, block_size=BS)  # every block dense
    assert torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)
    state = apply_radial_attention(model, block_size=BS)
    assert state.config.preset == "wan"  # Wan2.1's: no SkyReels-V2 preset is published
    assert not torch.equal(run(model, kwargs), before)
    remove_radial_attention(model)
    assert torch.equal(run(model, kwargs), before)
    assert all(m.forward == forwards[name] for name, m in model.named_modules())
    assert get_radial_state(model) is None


def test_frame_block_causal_mask_is_anded_into_the_radial_mask_when_aligned():
    # num_frame_per_block=2, T = 8 x 16 = 128 tokens: one causal block is 256 tokens = 4 mask blocks.
    # (At smaller T the tiny radial mask is already lower-triangular and the test would see nothing.)
    model = tiny.tiny_skyreels_transformer("df", num_frame_per_block=2)
    F, T = 12, 128
    kwargs = _df_inputs(model, F, 16, 32)
    dense = run(model, kwargs)  # the model's own attention with its causal mask
    state = apply_radial_attention(model, block_size=BS)
    radial = run(model, kwargs)
    remove_radial_attention(model)

    radial_only = radial_block_mask(F, T, preset="wan", block_size=BS)
    combined = state.masks[(F, T, 0, 0, 2)]  # (F, T, prefix, extra, frame block)
    group = torch.arange(combined.num_blocks) // 4  # 4 mask blocks per causal block
    assert torch.equal(combined.to_dense(), radial_only.to_dense() & (group[None, :] <= group[:, None]))
    assert combined.density < radial_only.density <= 0.6
    # The oracle's processor ANDs the model's own causal mask with the radial token mask.
    expected = oracle(model, kwargs, radial_only, F * T)
    err = _rel(radial, expected)
    assert err < 1e-5, f"radial differs from the masked unpatched model by {err}"
    assert _rel(radial, dense) > 1000 * err
    assert state.summary()["masks"]["F=12 T=128 extra=0 frame_block=2"] == round(combined.density, 4)


def test_frame_block_causal_mask_off_the_block_grid_is_refused():
    model = tiny.tiny_skyreels_transformer("df", num_frame_per_block=2)
    kwargs = _df_inputs(model, 12, 14, 12)  # T = 42: a causal block of 84 tokens, not a multiple of 64
    apply_radial_attention(model, block_size=BS)
    with pytest.raises(ValueError, match=r"num_frame_per_block=2 .* 84 tokens, not a multiple of block_size=64"):
        run(model, kwargs)
    with pytest.raises(ValueError, match="num_frame_per_block=2 .* must divide the latent frames .* F=11"):
        run(model, _df_inputs(model, 11, 14, 12))
    remove_radial_attention(model)
    model.register_to_config(num_frame_per_block=1)  # causal_block_size=1: no mask, radial runs
    apply_radial_attention(model, block_size=BS)
    run(model, kwargs)
    remove_radial_attention(model)


def _df_run(pipe, steps_seen, **call):
    """Run the tiny DF pipeline; ``steps_seen`` gets (pipeline iteration i, radial step, its total) per iteration."""

    def on_step_end(p, i, t, kwargs):
        state = get_radial_state(p)
        if state is not None:  # None: an unpatched run
            steps_seen.append((i, state.step, state.total_steps, p.num_timesteps))
        return {}

    args = dict(
        prompt="a cat",
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=2.0,  # CFG: two transformer calls per iteration
        output_type="latent",
        max_sequence_length=16,
        callback_on_step_end=on_step_end,
    )
    args.update(call)
    return pipe(**args)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_diffusion_forcing_pipeline_counts_its_own_iterations_as_steps():
    # Its loop steps per-frame scheduler copies, never pipe.scheduler: the step used to be 0 on every
    # call (every call dense with dense_steps > 0). Now step == the pipeline's iteration index.
    pipe = tiny.tiny_skyreels_pipeline("df", num_layers=2)
    state = apply_radial_attention(pipe, dense_steps=2, dense_last_steps=1, block_size=BS)
    seen = []
    _df_run(pipe, seen, num_frames=21, ar_step=1, causal_block_size=1)  # 6 latent frames, async: 9 iterations
    assert [(i, s) for i, s, _, _ in seen] == [(i, i) for i in range(9)]
    assert all(total == n == 9 for _, _, total, n in seen)
    expected = {(s, layer, "radial" if 2 <= s < 8 else "dense"): 2 for s in range(9) for layer in range(2)}
    assert dict(state.calls) == expected
    # A second call starts over; a long video's windows each start over at step 0.
    seen.clear()
    _df_run(pipe, seen, num_frames=37, base_num_frames=21, overlap_history=9, ar_step=0, causal_block_size=1)
    windows = [i for i, *_ in seen]
    assert windows.count(0) >= 2, "expected a long video of several windows"
    assert [s for _, s, _, _ in seen] == windows
    assert all(total == n for _, _, total, n in seen)
    remove_radial_attention(pipe)


def test_attention_modules_are_the_self_attention():
    model = tiny.tiny_skyreels_transformer("i2v", num_layers=3)
    assert attention_modules(model) == ["blocks.0.attn1", "blocks.1.attn1", "blocks.2.attn1"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("variant", ["t2v", "df"])
def test_generate_writes_a_video_from_a_saved_tiny_pipeline(variant, tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    from radial_attention.cli.main import run_command
    from radial_attention.cli.tiny_cmd import save_tiny_pipeline

    folder = save_tiny_pipeline("skyreels-v2" if variant == "t2v" else "skyreels-v2-df", str(tmp_path / "tiny"))
    out = tmp_path / "video.mp4"
    args = ["generate", "--model", folder, "--prompt", "a cat walking in the snow", "--height", "64", "--width", "64"]
    args += ["--frames", "9", "--steps", "3", "--dense-steps", "1", "--dense-layers", "0", "--block-size", "64"]
    args += ["--max-sequence-length", "16", "--out", str(out), "--device", "cpu"]
    done = run_command(args)
    assert done.code == 0 and done.report["radial_calls"] > 0 and done.report["dense_calls"] > 0
    assert done.report["masks"] and all(0 < d <= 1 for d in done.report["masks"].values())
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_t2v_pipeline_steps_come_from_its_scheduler():
    pipe = tiny.tiny_skyreels_pipeline("t2v", num_layers=2)
    state = apply_radial_attention(pipe, dense_steps=1, dense_last_steps=1, dense_layers=1, block_size=BS)
    pipe("a cat", height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=2.0,
         output_type="latent", max_sequence_length=16)  # fmt: skip
    kinds = {(s, layer): "radial" if 1 <= s < 3 and layer >= 1 else "dense" for s in range(4) for layer in range(2)}
    assert dict(state.calls) == {(s, layer, kind): 2 for (s, layer), kind in kinds.items()}  # CFG: 2 calls a step
    remove_radial_attention(pipe)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("variant", ["i2v", "df-i2v"])
def test_image_to_video_pipelines_run_and_count_steps(variant):
    # SkyReelsV2ImageToVideoPipeline steps its scheduler; the DF image-to-video one has the DF loop.
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
    pipe = tiny.tiny_skyreels_pipeline(variant, num_layers=2)
    call = dict(image=image, num_frames=9, max_sequence_length=512 if variant == "i2v" else 16)
    if variant == "df-i2v":
        call.update(ar_step=1, causal_block_size=1)

    def latents(**extra):
        g = torch.Generator().manual_seed(0)
        return _df_run(pipe, [], generator=g, num_inference_steps=3, **call, **extra).frames

    before = latents()
    state = apply_radial_attention(pipe, dense_steps=1, block_size=BS)
    seen = []
    _df_run(pipe, seen, num_inference_steps=3, **call)
    assert seen and [s for _, s, _, _ in seen] == [i for i, *_ in seen] == list(range(len(seen)))
    assert state.summary()["radial_calls"] == 2 * 2 * (len(seen) - 1)  # CFG x layers x radial steps
    remove_radial_attention(pipe)
    assert torch.equal(latents(), before)


def test_sizes_the_model_cannot_take_are_clear_errors():
    from radial_attention.mask import video_layout

    layout = video_layout("skyreels-v2", 544, 960, 97)  # its pipelines' default size
    assert (layout.frames, layout.tokens_per_frame) == (25, 2040)
    with pytest.raises(ValueError, match="height must be divisible by 16 .* got 540; nearest valid: 528 or 544"):
        video_layout("skyreels-v2", 540, 960, 97)
    with pytest.raises(ValueError, match="num_frames must be 4k\\+1 .* got 96"):
        video_layout("skyreels-v2", 544, 960, 96)


def test_bare_transformer_with_async_frame_timesteps_and_a_step_schedule_is_refused():
    model = tiny.tiny_skyreels_transformer("df", num_layers=1)
    kwargs = _df_inputs(model, 4, 8, 8)  # timesteps 999 .. 0 across the frames
    apply_radial_attention(model, dense_steps=1, block_size=BS)
    with pytest.raises(ValueError, match="per-frame timesteps that differ across frames .* apply radial attention to"):
        run(model, kwargs)
    run(model, dict(kwargs, timestep=torch.full((2, 4), 500.0)))  # synchronous: countable
    remove_radial_attention(model)
