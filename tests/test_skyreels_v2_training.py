"""SkyReels-V2 training (``encode`` / ``train-lora``) on tiny random-weight pipelines saved with
``save_pretrained``: the registry entry makes it train like Wan2.1 (the same VAE, UMT5 prompts of 512
tokens and image-to-video condition), its LoRA loads with ``load_lora_weights`` into every
SkyReels-V2 pipeline, diffusion forcing included, and Wan data folders train it (and back).
"""

import json

import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.cli.main import main  # noqa: E402
from radial_attention.integrations.diffusers import apply_radial_attention, get_radial_state  # noqa: E402
from radial_attention.models.registry import FAMILIES, shares_latents  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402
from radial_attention.testing.data import write_synthetic_dataset  # noqa: E402
from radial_attention.train.data import DataError, LatentDataset, validate_dataset  # noqa: E402
from radial_attention.train.encode import pipeline_family, read_video  # noqa: E402
from radial_attention.train.model import default_shift, model_spec, trainable_family  # noqa: E402
from radial_attention.train.trainer import LoRATrainer, TrainConfig  # noqa: E402

from resume_check import assert_resume_is_exact  # noqa: E402
from test_train_encode import _write_video  # noqa: E402

LATENT = (16, 8, 16, 24)  # 8 frames of 8x12 = 96 tokens: with 64-token blocks the Wan mask keeps 33%
SHIFT = 5.0  # the saved pipeline's scheduler flow_shift (the registry default is 8.0, Wan's 3.0)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pipeline(variant="t2v"):
    """The tiny SkyReels-V2 pipeline of ``variant`` with 3 blocks (2 dense + 1 radial by default)."""
    return tiny.tiny_skyreels_pipeline(variant, num_layers=3, seed=0)


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory):
    """A saved tiny ``SkyReelsV2Pipeline`` whose scheduler has flow_shift 5.0."""
    from diffusers import UniPCMultistepScheduler

    pipe = _pipeline("t2v")
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=SHIFT)
    folder = tmp_path_factory.mktemp("skyreels") / "pipe"
    pipe.save_pretrained(str(folder))
    return folder


def _cfg(tmp_path, model, data, **kw):
    base = dict(
        model=str(model),
        data=str(data),
        output_dir=str(tmp_path / "out"),
        block_size=64,
        lora_rank=8,
        lr=1e-2,
        max_steps=3,
        checkpoint_every=0,
        progress=False,
    )
    return TrainConfig(**dict(base, **kw))


def _synthetic(tmp_path, transformer, name="data", n=2, shape=LATENT, text_len=512):
    write_synthetic_dataset(
        tmp_path / name, model_spec(transformer), num_samples=n, latent_shape=shape, text_len=text_len, seed=3
    )
    return tmp_path / name


def _encode_args(model, videos, out, *extra):
    return ["encode", "--model", str(model), "--videos", str(videos), "--output", str(out), "--height", "64",
            "--width", "96", "--frames", "9", "--no-progress", *extra]  # fmt: skip


# ------------------------------------------------------------------------------ the registry entry
def test_registry_entry_trains_like_wan(tmp_path):
    fam = trainable_family(tiny.tiny_skyreels_transformer("t2v", num_layers=1))
    assert fam is FAMILIES["skyreels-v2"] and fam.lora_pipeline_class == "SkyReelsV2Pipeline"
    t2v = model_spec(tiny.tiny_skyreels_transformer("t2v", num_layers=1))
    assert (t2v.family, t2v.in_channels, t2v.condition_channels, t2v.text_len) == ("skyreels-v2", 16, 0, None)
    i2v = model_spec(tiny.tiny_skyreels_transformer("i2v", num_layers=1))
    assert (i2v.in_channels, i2v.condition_channels, i2v.image_dim, i2v.text_len) == (16, 20, 24, 512)
    # Flow shift: the folder's scheduler config, else the registry default (a bare transformer folder).
    bare = tmp_path / "transformer"
    tiny.tiny_skyreels_transformer("t2v", num_layers=1).save_pretrained(str(bare))
    assert default_shift(str(bare), "skyreels-v2") == 8.0
    assert default_shift(str(bare), "skyreels-v2", image_to_video=True) == 5.0  # its I2V pipelines' docstrings
    assert default_shift(str(bare), "wan", image_to_video=True) == 3.0  # no I2V shift of its own: flow_shift
    # encode takes the T2V and I2V pipelines; the diffusion-forcing ones are refused, naming those it takes.
    with pytest.raises(TypeError, match="encode supports .*SkyReelsV2ImageToVideoPipeline.* got SkyReelsV2Diffusion"):
        pipeline_family(tiny.tiny_skyreels_pipeline("df", num_layers=1))
    with pytest.raises(TypeError, match=r"train-lora supports diffusers .*SkyReelsV2Transformer3DModel.*, got Linear"):
        trainable_family(torch.nn.Linear(2, 2))
    # Diffusion-forcing checkpoints with an fps embedding need an fps the training forward does not pass.
    with pytest.raises(TypeError, match="inject_sample_info.*train the T2V or I2V model"):
        trainable_family(tiny.tiny_skyreels_transformer("df", num_layers=1, inject_sample_info=True))
    # Which data folders it trains on: its own and Wan's (one VAE, text encoder and normalisation).
    assert shares_latents("wan", "skyreels-v2") and shares_latents("skyreels-v2", "wan")
    assert not shares_latents("hunyuan", "skyreels-v2") and not shares_latents("skyreels-v2", "hunyuan")


# ------------------------------------------------------------------------------ encode + train-lora (CLI)
def test_encode_then_train_lora_cli(tmp_path, t2v_folder, capsys):
    """encode with the saved pipeline's own VAE and text encoder, then train-lora on the folder
    (flow shift from its scheduler config); the loss is finite and changes."""
    pipe = _pipeline("t2v")  # the same weights as the saved folder
    vids = tmp_path / "videos"
    vids.mkdir()
    for i in range(2):
        _write_video(vids / f"clip{i}.mp4", seed=i)
        (vids / f"clip{i}.txt").write_text(f"a red cat number {i} walks on the beach")
    data = tmp_path / "data"
    assert main(_encode_args(t2v_folder, vids, data, "--max-sequence-length", "16")) == 0
    assert "encode: 2 samples (skyreels-v2, latents [16, 3, 8, 12])" in capsys.readouterr().out
    doc = json.loads((data / "manifest.json").read_text())
    assert doc["model_family"] == "skyreels-v2" and doc["source"]["pipeline"] == "SkyReelsV2Pipeline"
    assert doc["source"]["normalisation"] == "(z - latents_mean) / latents_std"
    stored = LatentDataset(data, model_spec(pipe.transformer))[0]
    with torch.no_grad():
        z = pipe.vae.encode(read_video(vids / "clip0.mp4", 9, 64, 96)[None]).latent_dist.mode()
        mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
        emb, _ = pipe.encode_prompt(
            "a red cat number 0 walks on the beach", do_classifier_free_guidance=False, max_sequence_length=16
        )
    torch.testing.assert_close(stored["latents"], ((z - mean) / std)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored["prompt_embeds"], emb[0], atol=1e-6, rtol=1e-6)

    run = tmp_path / "run"
    args = ["train-lora", "--model", str(t2v_folder), "--data", str(data), "--output", str(run), "--block-size", "64",
            "--lora-rank", "4", "--lr", "1e-2", "--max-steps", "3", "--checkpoint-every", "0", "--no-progress"]  # fmt: skip
    with pytest.warns(UserWarning, match=r"have \[16\] tokens; the model's pipelines \(such as SkyReelsV2Pipeline\)"):
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train-lora: skyreels-v2 transformer, 2 samples" in printed and "3 steps" in printed
    assert json.loads((run / "train_config.json").read_text())["shift"] == SHIFT
    losses = [json.loads(x)["loss"] for x in (run / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))) and len(set(losses)) > 1
    fresh = _pipeline("t2v")
    fresh.load_lora_weights(str(run))
    assert any("lora_A" in n for n, _ in fresh.transformer.named_parameters())


# ------------------------------------------------------------------------------ training
def test_loss_falls_with_radial_attention(tmp_path, t2v_folder):
    data = _synthetic(tmp_path, tiny.tiny_skyreels_transformer("t2v", num_layers=1))
    trainer = LoRATrainer(_cfg(tmp_path, t2v_folder, data, max_steps=8))
    assert trainer.family == "skyreels-v2" and trainer.shift == SHIFT
    assert trainer.radial_density() <= 0.6
    before = trainer.evaluate()
    result = trainer.train()
    assert all(torch.isfinite(torch.tensor(result.losses))) and trainer.evaluate() < before
    layers = {(layer, kind) for (_, layer, kind) in get_radial_state(trainer.transformer).calls}
    assert layers == {(0, "dense"), (1, "dense"), (2, "radial")}
    mods = {n.rsplit(".lora_A", 1)[0] for n, _ in trainer.transformer.named_parameters() if "lora_A" in n}
    assert mods == {f"blocks.{i}.attn1.{p}" for i in range(3) for p in ("to_q", "to_k", "to_v", "to_out.0")}


def test_resume_continues_the_same_run_exactly(tmp_path, t2v_folder):

    data = _synthetic(tmp_path, tiny.tiny_skyreels_transformer("t2v", num_layers=1), n=3, shape=(16, 4, 16, 16))
    common = dict(max_steps=4, checkpoint_every=2, lora_dropout=0.1, warmup_steps=1, lr_schedule="cosine")
    assert_resume_is_exact(
        lambda out, **kw: LoRATrainer(_cfg(tmp_path, t2v_folder, data, output_dir=out, **common, **kw)),
        tmp_path,
        crash_in_step=4,
        checkpoint_step=2,
    )


# ------------------------------------------------------------------------------ the LoRA file
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lora_loads_into_the_t2v_and_diffusion_forcing_pipelines(tmp_path, t2v_folder):
    """pipe.load_lora_weights reproduces the trained transformer in SkyReelsV2Pipeline and in the
    diffusion-forcing pipelines (same mixin, same module names; the tiny DF transformer has the T2V
    one's weights), and the DF pipeline runs with it and radial attention."""
    data = _synthetic(tmp_path, tiny.tiny_skyreels_transformer("t2v", num_layers=1))
    trainer = LoRATrainer(_cfg(tmp_path, t2v_folder, data, alpha=4.0))  # alpha != rank: scale 0.5 must survive
    trainer.train()
    trained = trainer.transformer.eval()
    kwargs = tiny.wan_inputs(trained, 8, 16, 24, text_len=16, seed=5)
    with torch.no_grad():
        ours = trained(**kwargs)[0]
    from diffusers import SkyReelsV2DiffusionForcingVideoToVideoPipeline as VideoToVideo

    for variant in ("t2v", "df", "df-v2v", "df-i2v"):
        # The video-to-video DF pipeline takes the DF pipeline's components (no tiny builder of its own).
        pipe = VideoToVideo(**_pipeline("df").components) if variant == "df-v2v" else _pipeline(variant)
        pipe.load_lora_weights(str(tmp_path / "out"))
        apply_radial_attention(pipe, dense_layers=2, block_size=64)
        with torch.no_grad():
            loaded = pipe.transformer(**kwargs)[0]
            pipe.transformer.disable_lora()
            base = pipe.transformer(**kwargs)[0]
            pipe.transformer.enable_lora()
        torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5, msg=variant)
        assert (ours - base).abs().max() > 1e-3, variant  # the LoRA changed the model: not vacuous
    # The last one, the DF image-to-video pipeline, runs its loop with the LoRA and radial attention.
    import numpy as np
    from PIL import Image

    image = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
    with torch.no_grad():
        out = pipe(image=image, prompt="a cat", height=32, width=32, num_frames=9, num_inference_steps=2,
                   guidance_scale=1.0, output_type="latent", max_sequence_length=16, ar_step=1,
                   causal_block_size=1).frames  # fmt: skip
    assert out.shape == (1, 16, 3, 4, 4) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------ image-to-video
def test_encode_and_train_i2v(tmp_path, capsys):
    """SkyReelsV2ImageToVideoPipeline: encode stores the condition and image embeddings its own
    prepare_latents / encode_image make from the first frame, and 512-token prompts; train-lora
    trains on them; the LoRA loads into a fresh I2V pipeline and reproduces the trained model."""
    from PIL import Image

    pipe = _pipeline("i2v")
    pipe.save_pretrained(str(tmp_path / "pipe"))
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_video(vids / "clip0.mp4", seed=0)
    (vids / "clip0.txt").write_text("a red cat walks on the beach")
    data = tmp_path / "data"
    assert main(_encode_args(tmp_path / "pipe", vids, data)) == 0
    assert "encode: 1 samples (skyreels-v2, latents [16, 3, 8, 12])" in capsys.readouterr().out
    stored = LatentDataset(data, model_spec(pipe.transformer))[0]
    assert stored["prompt_embeds"].shape == (512, 32)
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

    trainer = LoRATrainer(_cfg(tmp_path, tmp_path / "pipe", data, lora_rank=4, max_steps=2))
    assert trainer.shift == 3.0  # the saved pipeline's scheduler config
    trainer.train()
    # A bare I2V transformer folder (no scheduler config): the registry's image-to-video shift.
    pipe.transformer.save_pretrained(str(tmp_path / "bare"))
    assert LoRATrainer(_cfg(tmp_path, tmp_path / "bare", data, output_dir=str(tmp_path / "o2"))).shift == 5.0
    trained = trainer.transformer.eval()
    fresh = _pipeline("i2v")
    fresh.load_lora_weights(str(tmp_path / "out"))
    kwargs = tiny.wan_inputs(trained, 3, 8, 12, seed=5)  # I2V: 512 text tokens and image embeddings
    with torch.no_grad():
        ours = trained(**kwargs)[0]
        torch.testing.assert_close(fresh.transformer(**kwargs)[0], ours, atol=1e-5, rtol=1e-5)
        fresh.transformer.disable_lora()
        assert (ours - fresh.transformer(**kwargs)[0]).abs().max() > 1e-4


# ------------------------------------------------------------------------------ data from other families
def test_wan_data_trains_skyreels_and_back_other_families_are_refused(tmp_path, t2v_folder):
    """Wan2.1 and SkyReels-V2 folders are interchangeable (same VAE, text encoder, normalisation);
    HunyuanVideo data, or Wan2.2 TI2V-5B's 48-channel latents, are refused before training."""
    sky = tiny.tiny_skyreels_transformer("t2v", num_layers=1)
    wan_data = _synthetic(tmp_path, tiny.tiny_wan_transformer("t2v", num_layers=1), name="wan")
    assert json.loads((wan_data / "manifest.json").read_text())["model_family"] == "wan"
    trainer = LoRATrainer(_cfg(tmp_path, t2v_folder, wan_data, max_steps=1))
    assert trainer.train().steps == 1
    sky_data = _synthetic(tmp_path, sky, name="sky")
    validate_dataset(sky_data, model_spec(tiny.tiny_wan_transformer("t2v", num_layers=1)))

    hunyuan = _synthetic(tmp_path, tiny.tiny_hunyuan_transformer(), name="hunyuan", shape=(16, 2, 4, 4), text_len=8)
    with pytest.raises(
        DataError,
        match=r"encoded for model family 'hunyuan' but the model being trained is 'skyreels-v2', which trains "
        r"on data encoded for \['wan', 'skyreels-v2'\]",
    ):
        LoRATrainer(_cfg(tmp_path, t2v_folder, hunyuan, output_dir=str(tmp_path / "o2")))
    ti2v = _synthetic(tmp_path, tiny.tiny_wan_transformer("ti2v", num_layers=1), name="ti2v", shape=(48, 2, 4, 4))
    with pytest.raises(DataError, match="latents have 48 channels but the model takes 16"):
        validate_dataset(ti2v, model_spec(sky))


def test_bad_data_is_refused_before_training(tmp_path):
    from safetensors.torch import load_file, save_file

    sky_i2v = tiny.tiny_skyreels_transformer("i2v", num_layers=1)
    short = _synthetic(tmp_path, tiny.tiny_skyreels_transformer("t2v", num_layers=1), text_len=16)
    with pytest.raises(DataError, match="prompt_embeds must have exactly 512 tokens for this model"):
        validate_dataset(short, model_spec(sky_i2v))
    with pytest.raises(DataError, match=r"has a condition tensor \(20, 8, 16, 24\) \(image-to-video data\)"):
        validate_dataset(_synthetic(tmp_path, sky_i2v, name="i2v"), model_spec(tiny.tiny_skyreels_transformer()))
    doc, samples = validate_dataset(short, model_spec(tiny.tiny_skyreels_transformer()))
    tensors = load_file(str(samples[1].file))
    tensors["latents"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(samples[1].file))
    with pytest.raises(DataError, match=r"sample #1 .*latents has 1 non-finite value\(s\) \(NaN/inf\)"):
        LoRATrainer(_cfg(tmp_path, "tiny-wan", short), transformer=tiny.tiny_skyreels_transformer())
