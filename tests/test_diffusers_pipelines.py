"""Whole diffusers pipelines from tiny components with radial attention, and the demo / generate commands."""

import os

import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.cli.main import main, run_command  # noqa: E402
from radial_attention.integrations.diffusers import apply_radial_attention, remove_radial_attention  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402

# 64x64 px, 17 frames: latent 5 frames x 8x8 -> 5 x 16 = 80 tokens (2 blocks of 64).
VIDEO = dict(height=64, width=64, num_frames=17, max_sequence_length=16, output_type="pt")


def _expected_calls(steps, layers, dense_steps, dense_last, dense_layers, calls_per_step):
    out = {}
    for s in range(steps):
        for layer in range(layers):
            sparse = dense_steps <= s < steps - dense_last and layer >= dense_layers
            out[(s, layer, "radial" if sparse else "dense")] = calls_per_step
    return out


def test_wan_pipeline_end_to_end_with_cfg_and_schedule():
    pipe = tiny.tiny_wan_pipeline("t2v", num_layers=2)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dense = pipe("a red fox running", negative_prompt="blurry", num_inference_steps=4, generator=gen(), **VIDEO).frames
    state = apply_radial_attention(pipe, dense_steps=1, dense_last_steps=1, dense_layers=1, block_size=64)
    radial = pipe("a red fox running", negative_prompt="blurry", num_inference_steps=4, generator=gen(), **VIDEO).frames
    assert radial.shape == dense.shape == (1, 17, 3, 64, 64)
    assert torch.isfinite(radial).all()
    # CFG: two transformer calls per step; the step count comes from the pipeline's scheduler.
    assert dict(state.calls) == _expected_calls(4, 2, 1, 1, 1, calls_per_step=2)
    assert list(state.masks) == [(5, 16, 0, 0)]
    # A second call with another step count and size: counted afresh, a new mask.
    state.calls.clear()
    pipe("a cat", num_inference_steps=3, generator=gen(), **dict(VIDEO, height=48, num_frames=9))
    assert dict(state.calls) == _expected_calls(3, 2, 1, 1, 1, calls_per_step=2)
    assert list(state.masks) == [(5, 16, 0, 0), (3, 12, 0, 0)]
    remove_radial_attention(pipe)
    again = pipe("a red fox running", negative_prompt="blurry", num_inference_steps=4, generator=gen(), **VIDEO).frames
    assert torch.equal(again, dense)


def test_wan22_a14b_pipeline_two_experts_share_the_step_count():
    pipe = tiny.tiny_wan_pipeline("a14b", num_layers=1)
    state = apply_radial_attention(pipe, dense_steps=1, dense_last_steps=1, block_size=64)
    assert state.config.preset == "wan2.2"
    seen = []  # which expert ran each step
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.append(n))
        for n, m in (("high", pipe.transformer), ("low", pipe.transformer_2))
    ]
    pipe("a boat", num_inference_steps=6, guidance_scale=1.0, generator=torch.Generator().manual_seed(0), **VIDEO)
    for h in hooks:
        h.remove()
    assert "high" in seen and "low" in seen  # both experts ran
    assert dict(state.calls) == _expected_calls(6, 1, 1, 1, 0, calls_per_step=1)
    remove_radial_attention(pipe)


def test_wan22_ti2v_pipeline_runs_radial():
    pipe = tiny.tiny_wan_pipeline("ti2v", num_layers=1)
    state = apply_radial_attention(pipe, block_size=64)
    out = pipe(
        "a bird",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        **dict(VIDEO, height=128, width=128),
    ).frames
    assert out.shape == (1, 17, 3, 128, 128) and torch.isfinite(out).all()
    assert state.config.preset == "wan" and list(state.masks) == [(5, 16, 0, 0)]
    assert state.summary()["radial_calls"] == 2 * 2  # 2 steps x CFG


def test_wan21_i2v_pipeline_end_to_end():
    """The whole Wan2.1 image-to-video pipeline (image encoder, condition, image cross-attention)
    with radial self-attention; removal gives the exact original video back."""
    from PIL import Image

    pipe = tiny.tiny_wan_i2v_pipeline(num_layers=2)
    image = Image.fromarray(
        (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
    )
    call = dict(VIDEO, image=image, num_inference_steps=3, max_sequence_length=512)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dense = pipe(prompt="a red fox running", negative_prompt="blurry", generator=gen(), **call).frames
    state = apply_radial_attention(pipe, dense_steps=1, dense_layers=1, block_size=64)
    radial = pipe(prompt="a red fox running", negative_prompt="blurry", generator=gen(), **call).frames
    assert radial.shape == dense.shape == (1, 17, 3, 64, 64) and torch.isfinite(radial).all()
    assert dict(state.calls) == _expected_calls(3, 2, 1, 0, 1, calls_per_step=2)
    assert not torch.equal(radial, dense)  # 80 tokens in 2 blocks: the mask drops some
    remove_radial_attention(pipe)
    assert torch.equal(
        pipe(prompt="a red fox running", negative_prompt="blurry", generator=gen(), **call).frames, dense
    )


def test_hunyuan_pipeline_end_to_end():
    pipe = tiny.tiny_hunyuan_pipeline()
    kwargs = dict(
        VIDEO,
        prompt="a dog on the beach",
        prompt_template={"template": "{}", "crop_start": 0},
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
    )
    state = apply_radial_attention(pipe, dense_steps=1, block_size=64)
    out = pipe(**kwargs).frames
    assert out.shape == (1, 17, 3, 64, 64) and torch.isfinite(out).all()
    assert dict(state.calls) == _expected_calls(3, 2, 1, 0, 0, calls_per_step=1)
    assert list(state.masks) == [(5, 16, 0, 16)]  # 16 prompt tokens after the video
    remove_radial_attention(pipe)


def test_generate_on_a_saved_pipeline(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    folder = tmp_path / "tiny-wan"
    tiny.tiny_wan_pipeline("t2v", num_layers=2).save_pretrained(folder)
    out = tmp_path / "video.mp4"
    done = run_command(
        [
            "generate",
            "--model",
            str(folder),
            "--prompt",
            "a cat walking in the snow",
            "--height",
            "64",
            "--width",
            "64",
            "--frames",
            "9",
            "--steps",
            "3",
            "--dense-steps",
            "1",
            "--dense-layers",
            "0",
            "--block-size",
            "64",
            "--max-sequence-length",
            "16",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert done.code == 0
    # 3 steps x 2 blocks x 2 calls (classifier-free guidance): the first step dense, the other two radial.
    r = done.report
    assert (r["radial_calls"], r["dense_calls"]) == (8, 4)
    # One mask: 3 latent frames x 4x4 tokens = 48 tokens, a single block of 64 (density 1).
    assert r["masks"] == {"F=3 T=16 extra=0": 1.0}
    assert r["video"] == str(out) and r["video_shape"] == [9, 64, 64, 3]
    frames = imageio.mimread(out)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)


def test_generate_with_trained_loras_on_both_a14b_experts(tmp_path, capsys, monkeypatch):
    """generate --lora / --lora-2 / --lora-scale: the same frames as loading the LoRAs in Python;
    scale 0 gives the frames without them."""
    import numpy as np

    import radial_attention.cli.generate_cmd as gen_cmd
    from radial_attention.train.lora import add_lora, save_lora

    folder = tmp_path / "a14b"
    tiny.tiny_wan_pipeline("a14b", num_layers=2).save_pretrained(folder)
    loras = []
    for n, seed in ((1, 7), (2, 8)):  # random non-zero LoRAs in train-lora's file format
        t = tiny.tiny_wan_transformer("a14b", num_layers=2)
        add_lora(t, "wan", rank=4, init_seed=seed)
        with torch.no_grad():
            for name, prm in t.named_parameters():
                if "lora_B" in name:
                    prm.normal_(0, 0.2, generator=torch.Generator().manual_seed(seed))
        save_lora(t, "wan", tmp_path / f"lora{n}")
        loras.append(str(tmp_path / f"lora{n}"))

    captured = []

    def capture(frames, path, fps):  # keep the frames; write a stand-in file (generate checks one was written)
        captured.append(np.array(frames))
        open(path, "wb").write(b"mp4")

    monkeypatch.setattr(gen_cmd, "write_mp4", capture)
    common = [
        "generate",
        "--model",
        str(folder),
        "--prompt",
        "a cat",
        "--height",
        "64",
        "--width",
        "64",
        "--frames",
        "9",
        "--steps",
        "2",
        "--dense-steps",
        "1",
        "--dense-layers",
        "0",
        "--block-size",
        "64",
        "--guidance-scale",
        "1",
        "--max-sequence-length",
        "16",
        "--out",
        str(tmp_path / "v.mp4"),
        "--device",
        "cpu",
    ]
    assert main(common + ["--lora", loras[0], "--lora-2", loras[1], "--lora-scale", "0.8"]) == 0
    assert main(common) == 0
    assert main(common + ["--lora", loras[0], "--lora-2", loras[1], "--lora-scale", "0"]) == 0
    with_lora, without, scale0 = captured
    assert not np.array_equal(with_lora, without) and np.array_equal(scale0, without)

    pipe = tiny.tiny_wan_pipeline("a14b", num_layers=2)  # the same weights as the saved folder
    pipe.load_lora_weights(loras[0], adapter_name="a")
    pipe.load_lora_weights(loras[1], adapter_name="b", load_into_transformer_2=True)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.8, 0.8])
    apply_radial_attention(pipe, dense_steps=1, dense_layers=0, block_size=64)
    frames = pipe(
        prompt="a cat",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=1.0,
        max_sequence_length=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    np.testing.assert_array_equal(gen_cmd._frames_to_uint8(frames), with_lora)

    assert main(common + ["--lora", str(tmp_path / "nope")]) == 2
    assert "LoRA folder" in capsys.readouterr().err
    t2v = tmp_path / "t2v"
    tiny.tiny_wan_pipeline("t2v", num_layers=2).save_pretrained(t2v)
    assert main([*common[:2], str(t2v), *common[3:], "--lora-2", loras[1]]) == 2
    assert "--lora-2 needs a pipeline with a transformer_2" in capsys.readouterr().err


def test_generate_without_weights_says_where_it_looked(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    rc = main(["generate", "--model", str(missing), "--prompt", "x", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err and "no such folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["generate", "--model", str(empty), "--prompt", "x", "--out", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and os.path.join(str(empty), "model_index.json") in err
    assert not (tmp_path / "v.mp4").exists()


def test_demo_runs_small(tmp_path):
    png = tmp_path / "mask.png"
    done = run_command(
        [
            "demo",
            "--frames",
            "33",
            "--height",
            "64",
            "--width",
            "96",
            "--steps",
            "2",
            "--layers",
            "1",
            "--block-size",
            "64",
            "--png",
            str(png),
            "--device",
            "cpu",
            "--backend",
            "reference",
        ]
    )
    assert done.code == 0
    r = done.report
    # --dense-steps 1 (the default) of 2: the first step dense by the schedule, the second radial.
    assert [step["mode"] for step in r["steps"]] == ["dense (schedule)", "radial"]
    assert r["steps"][0]["relative_difference"] == 0.0 < r["steps"][1]["relative_difference"]
    assert 0 < r["density"] < 1 and r["backend"] == "reference"
    assert r["png"] == str(png) and png.stat().st_size > 0
