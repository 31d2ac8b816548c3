"""``radial-attention encode``: mp4 + captions -> data folder, with a tiny pipeline's own VAE and
text encoder (saved with ``save_pretrained`` to a temporary folder), then ``train-lora`` on it."""

import json

import imageio
import numpy as np
import pytest
import torch

from radial_attention.cli.main import main, run_command
from radial_attention.testing import tiny
from radial_attention.train.data import DataError, LatentDataset, validate_dataset
from radial_attention.train.encode import collect_videos, encode_videos, read_video
from radial_attention.train.model import model_spec


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _encoded(done):
    """``(samples, model family, first latent shape)`` of an encode run: its report, checked against
    the manifest it wrote."""
    r = done.report
    doc = json.loads(open(r["manifest"]).read())
    assert (len(doc["samples"]), doc["model_family"], doc["samples"][0]["latent_shape"]) == (
        r["samples"],
        r["model_family"],
        r["latent_shape"],
    )
    return r["samples"], r["model_family"], r["latent_shape"]


def _write_video(path, frames=13, height=64, width=96, seed=0):
    """Frame i: a smooth random picture plus a brightness ramp over time (easy on the codec)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.sin(xx / 7.0 + rng.uniform(0, 6))[..., None] * 40 + np.cos(yy / 5.0)[..., None] * 30 + 100
    out = []
    for i in range(frames):
        img = np.clip(base + np.array([10 * i, 5 * i, -3 * i]), 0, 255).astype(np.uint8)
        out.append(np.broadcast_to(img, (height, width, 3)).copy())
    imageio.mimwrite(str(path), out, fps=8, macro_block_size=16)
    return np.stack(out)


def test_read_video_frames_resize_and_stride(tmp_path):
    src = _write_video(tmp_path / "v.mp4", frames=9, height=64, width=96)
    v = read_video(tmp_path / "v.mp4", 5, 64, 96)
    assert v.shape == (3, 5, 64, 96) and v.dtype == torch.float32 and -1 <= v.min() and v.max() <= 1
    expect = torch.from_numpy(src[:5]).permute(3, 0, 1, 2).float() / 127.5 - 1
    assert (v - expect).abs().mean() < 0.03  # h264 is lossy
    s = read_video(tmp_path / "v.mp4", 5, 64, 96, frame_stride=2)  # frames 0, 2, 4, 6, 8
    torch.testing.assert_close(s[:, 2], read_video(tmp_path / "v.mp4", 5, 64, 96)[:, 4])
    small = read_video(tmp_path / "v.mp4", 3, 32, 32)  # cover 32x32: resize to 32x48, crop the middle
    assert small.shape == (3, 3, 32, 32)
    with pytest.raises(DataError, match=r"has 9 frames, needs 13"):
        read_video(tmp_path / "v.mp4", 13, 64, 96)


def test_collect_videos_errors(tmp_path):
    _write_video(tmp_path / "a.mp4", frames=2)
    _write_video(tmp_path / "b.mp4", frames=2)
    (tmp_path / "a.txt").write_text("a red cat\n")
    with pytest.raises(DataError, match=r"1 video\(s\) have no caption.*b.mp4"):
        collect_videos([str(tmp_path)])
    (tmp_path / "caps.jsonl").write_text(json.dumps({"video": "b.mp4", "caption": "a dog"}) + "\n")
    items = collect_videos([str(tmp_path)], str(tmp_path / "caps.jsonl"))
    assert [(i.video.name, i.caption) for i in items] == [("a.mp4", "a red cat"), ("b.mp4", "a dog")]
    with pytest.raises(DataError, match="does not exist"):
        collect_videos([str(tmp_path / "missing.mp4")])
    (tmp_path / "bad.jsonl").write_text('{"video": "b.mp4"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: expected a JSON object with \"video\" and \"caption\""):
        collect_videos([str(tmp_path)], str(tmp_path / "bad.jsonl"))


def test_encode_cli_wan_then_train(tmp_path, capsys):
    pipe = tiny.tiny_wan_pipeline(num_layers=3, seed=0)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_video(vids / "clip0.mp4", seed=0)
    _write_video(vids / "clip1.mp4", seed=1)
    (vids / "clip0.txt").write_text("a red cat walks on the beach")
    (tmp_path / "caps.jsonl").write_text(
        json.dumps({"video": "videos/clip1.mp4", "caption": "a dog swims in the sea"}) + "\n"
    )
    out = tmp_path / "data"
    common = [
        "encode",
        "--model",
        str(tmp_path / "pipe"),
        "--videos",
        str(vids),
        "--captions",
        str(tmp_path / "caps.jsonl"),
        "--output",
        str(out),
        "--height",
        "64",
        "--width",
        "96",
        "--max-sequence-length",
        "16",
        "--no-progress",
    ]
    done = run_command(common + ["--frames", "9"])
    assert done.code == 0 and _encoded(done) == (2, "wan", [16, 3, 8, 12])

    doc, samples = validate_dataset(out, model_spec(pipe.transformer))
    assert [s["caption"] for s in doc["samples"]] == ["a red cat walks on the beach", "a dog swims in the sea"]
    assert doc["source"]["num_frames"] == 9 and doc["source"]["latents"] == "mode"
    stored = LatentDataset(out, model_spec(pipe.transformer))[0]

    # What the pipeline's own VAE and text encoder give for that video and caption.
    with torch.no_grad():
        video = read_video(vids / "clip0.mp4", 9, 64, 96)
        z = pipe.vae.encode(video[None]).latent_dist.mode()
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        emb, _ = pipe.encode_prompt(
            "a red cat walks on the beach", do_classifier_free_guidance=False, max_sequence_length=16
        )
    torch.testing.assert_close(stored["latents"], ((z - mean) / std)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored["prompt_embeds"], emb[0], atol=1e-6, rtol=1e-6)
    # The stored latents decode back through the pipeline's inverse normalisation.
    assert stored["latents"].shape == (16, 3, 8, 12)

    # Errors, reported by the CLI before anything is written.
    assert main(common + ["--frames", "9"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(common + ["--frames", "10", "--overwrite"]) == 2
    assert "num_frames must be 4k+1" in capsys.readouterr().err
    assert main(common + ["--frames", "17", "--overwrite"]) == 2
    assert "has 13 frames, needs 17" in capsys.readouterr().err

    # train-lora reads the folder (and the pipeline's flow shift from its scheduler config).
    done = run_command(
        [
            "train-lora",
            "--model",
            str(tmp_path / "pipe"),
            "--data",
            str(out),
            "--output",
            str(tmp_path / "run"),
            "--block-size",
            "64",
            "--lora-rank",
            "4",
            "--max-steps",
            "2",
            "--checkpoint-every",
            "0",
            "--no-progress",
        ]
    )
    assert done.code == 0 and (done.report["family"], done.report["samples"], done.report["steps"]) == ("wan", 2, 2)
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["shift"] == 3.0
    fresh = tiny.tiny_wan_pipeline(num_layers=3, seed=0)
    fresh.load_lora_weights(str(tmp_path / "run"))
    assert any("lora_A" in n for n, _ in fresh.transformer.named_parameters())


def test_encode_hunyuan(tmp_path):
    pipe = tiny.tiny_hunyuan_pipeline(seed=0)
    _write_video(tmp_path / "v.mp4")
    (tmp_path / "v.txt").write_text("a bird flies over the mountains")
    template = {"template": "{}", "crop_start": 0}
    manifest = encode_videos(
        "",
        [str(tmp_path / "v.mp4")],
        tmp_path / "data",
        height=64,
        width=96,
        num_frames=9,
        max_sequence_length=16,
        prompt_template=template,
        progress=False,
        pipe=pipe,
    )
    doc, samples = validate_dataset(manifest.parent, model_spec(pipe.transformer))
    assert doc["model_family"] == "hunyuan" and doc["source"]["normalisation"] == "z * scaling_factor"
    item = LatentDataset(manifest.parent, model_spec(pipe.transformer))[0]
    assert item["latents"].shape == (4, 3, 8, 12)
    with torch.no_grad():
        emb, pooled, mask = pipe.encode_prompt(
            "a bird flies over the mountains", prompt_template=template, max_sequence_length=16
        )
        z = pipe.vae.encode(read_video(tmp_path / "v.mp4", 9, 64, 96)[None]).latent_dist.mode()
    torch.testing.assert_close(item["prompt_embeds"], emb[0])
    torch.testing.assert_close(item["pooled_prompt_embeds"], pooled[0])
    assert torch.equal(item["prompt_attention_mask"], mask[0].long())
    torch.testing.assert_close(item["latents"], z[0] * pipe.vae.config.scaling_factor, atol=1e-5, rtol=1e-5)


def test_encode_and_train_wan22_ti2v(tmp_path):
    """Wan2.2 TI2V-5B: its 48-channel VAE (16x spatial) through encode, then train-lora, then the
    LoRA loads into a fresh TI2V pipeline."""
    tiny.tiny_wan_pipeline("ti2v", num_layers=3, seed=0).save_pretrained(str(tmp_path / "pipe"))
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_video(vids / "clip0.mp4", seed=0)
    (vids / "clip0.txt").write_text("a red cat walks on the beach")
    done = run_command(
        [
            "encode",
            "--model",
            str(tmp_path / "pipe"),
            "--videos",
            str(vids),
            "--output",
            str(tmp_path / "data"),
            "--height",
            "64",
            "--width",
            "96",
            "--max-sequence-length",
            "16",
            "--frames",
            "9",
            "--no-progress",
        ]
    )
    assert done.code == 0 and _encoded(done) == (1, "wan", [48, 3, 4, 6])
    assert (
        main(
            [
                "train-lora",
                "--model",
                str(tmp_path / "pipe"),
                "--data",
                str(tmp_path / "data"),
                "--output",
                str(tmp_path / "run"),
                "--block-size",
                "64",
                "--lora-rank",
                "4",
                "--max-steps",
                "1",
                "--checkpoint-every",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    fresh = tiny.tiny_wan_pipeline("ti2v", num_layers=3, seed=0)
    fresh.load_lora_weights(str(tmp_path / "run"))
    assert any("lora_A" in n for n, _ in fresh.transformer.named_parameters())


def test_encode_and_train_wan_i2v(tmp_path):
    """Wan2.1 image-to-video: encode stores the condition and image embeddings the pipeline's own
    prepare_latents / encode_image make from the clip's first frame, and 512-token prompts;
    train-lora trains on them; the LoRA loads into a fresh I2V pipeline and reproduces the
    trained transformer."""
    from PIL import Image

    from radial_attention.integrations.diffusers import apply_radial_attention

    pipe = tiny.tiny_wan_i2v_pipeline(num_layers=3, seed=0)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_video(vids / "clip0.mp4", seed=0)
    (vids / "clip0.txt").write_text("a red cat walks on the beach")
    out = tmp_path / "data"
    done = run_command(
        [
            "encode",
            "--model",
            str(tmp_path / "pipe"),
            "--videos",
            str(vids),
            "--output",
            str(out),
            "--height",
            "64",
            "--width",
            "96",
            "--frames",
            "9",
            "--no-progress",
        ]
    )
    assert done.code == 0 and _encoded(done) == (1, "wan", [16, 3, 8, 12])
    stored = LatentDataset(out, model_spec(pipe.transformer))[0]
    assert stored["prompt_embeds"].shape == (512, 32)  # the pipelines generate with 512 tokens

    video = read_video(vids / "clip0.mp4", 9, 64, 96)
    first = Image.fromarray(((video[:, 0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    with torch.no_grad():
        pixels = pipe.video_processor.preprocess(first, height=64, width=96)
        _, condition = pipe.prepare_latents(
            pixels, 1, 16, 64, 96, 9, torch.float32, torch.device("cpu"), None, torch.zeros(1, 16, 3, 8, 12)
        )
        image_embeds = pipe.encode_image(first, torch.device("cpu"))
    torch.testing.assert_close(stored["condition"], condition[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stored["image_embeds"], image_embeds[0], atol=1e-6, rtol=1e-6)
    assert stored["condition"][:4, 0].eq(1).all() and stored["condition"][:4, 1:].eq(0).all()  # first-frame mask

    from radial_attention.train.trainer import LoRATrainer, TrainConfig

    trainer = LoRATrainer(
        TrainConfig(
            model=str(tmp_path / "pipe"),
            data=str(out),
            output_dir=str(tmp_path / "run"),
            block_size=64,
            lora_rank=4,
            lr=1e-2,
            max_steps=2,
            checkpoint_every=0,
            progress=False,
        )
    )
    trainer.train()
    trained = trainer.transformer.eval()
    fresh = tiny.tiny_wan_i2v_pipeline(num_layers=3, seed=0)
    fresh.load_lora_weights(str(tmp_path / "run"))
    apply_radial_attention(fresh, dense_layers=2, block_size=64)
    kwargs = tiny.wan_inputs(trained, 3, 8, 12, text_len=512, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(fresh.transformer(**kwargs)[0], trained(**kwargs)[0], atol=1e-5, rtol=1e-5)
        fresh.transformer.disable_lora()
        base = fresh.transformer(**kwargs)[0]
    with torch.no_grad():
        assert (trained(**kwargs)[0] - base).abs().max() > 1e-4  # the LoRA is not a no-op


def test_encode_and_train_wan22_i2v_a14b_expert(tmp_path, capsys):
    """Wan2.2 I2V A14B: no image encoder, so samples hold the condition only; the low-noise expert
    trains on its own noise levels (below boundary_ratio 0.9) and its LoRA loads into a fresh
    pipeline's transformer_2 and reproduces the trained expert; the whole pipeline then runs with
    radial attention."""
    from PIL import Image

    from radial_attention.integrations.diffusers import apply_radial_attention
    from radial_attention.train.trainer import LoRATrainer, TrainConfig

    tiny.tiny_wan_i2v_pipeline(num_layers=3, seed=0, variant="a14b").save_pretrained(str(tmp_path / "pipe"))
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_video(vids / "clip0.mp4", seed=0)
    (vids / "clip0.txt").write_text("a red cat walks on the beach")
    out = tmp_path / "data"
    assert (
        main(
            [
                "encode",
                "--model",
                str(tmp_path / "pipe"),
                "--videos",
                str(vids),
                "--output",
                str(out),
                "--height",
                "64",
                "--width",
                "96",
                "--frames",
                "9",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    fresh = tiny.tiny_wan_i2v_pipeline(num_layers=3, seed=0, variant="a14b")
    stored = LatentDataset(out, model_spec(fresh.transformer_2))[0]
    assert set(stored) == {"latents", "prompt_embeds", "condition"} and stored["condition"].shape == (20, 3, 8, 12)

    trainer = LoRATrainer(
        TrainConfig(
            model=str(tmp_path / "pipe"),
            data=str(out),
            output_dir=str(tmp_path / "run"),
            transformer_subfolder="transformer_2",
            block_size=64,
            lora_rank=4,
            lr=1e-2,
            max_steps=2,
            checkpoint_every=0,
            progress=False,
        )
    )
    assert trainer.timestep_range == (0.0, 900.0)
    trainer.train()
    trained = trainer.transformer.eval()
    fresh.load_lora_weights(str(tmp_path / "run"), load_into_transformer_2=True)
    apply_radial_attention(fresh, dense_layers=2, block_size=64)
    kwargs = tiny.wan_inputs(trained, 3, 8, 12, text_len=512, timestep=400.0, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(fresh.transformer_2(**kwargs)[0], trained(**kwargs)[0], atol=1e-5, rtol=1e-5)
        image = Image.fromarray(
            (torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8).numpy()
        )
        video = fresh(
            image=image,
            prompt="a cat",
            height=64,
            width=96,
            num_frames=9,
            num_inference_steps=3,
            guidance_scale=1.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        ).frames
    assert video.shape == (1, 16, 3, 8, 12) and torch.isfinite(video).all()
