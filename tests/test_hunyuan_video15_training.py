"""HunyuanVideo 1.5 text-to-video training (``encode`` / ``train-lora``) on its tiny random-weight pipeline.

Its samples hold both prompt streams (Qwen ``prompt_embeds`` + mask, byT5 ``prompt_embeds_2`` +
mask); train-lora makes the text-to-video zeros the pipeline makes (condition latents and mask
channels, 729 image embeddings). ``HunyuanVideo15Pipeline`` has no LoRA loader mixin in diffusers
0.42.1: the LoRA file loads with ``pipe.transformer.load_lora_adapter(folder, prefix="transformer")``
(and ``generate --lora`` does that).
"""

import json

import pytest
import torch

pytest.importorskip("diffusers")

from radial_attention.cli.main import main  # noqa: E402
from radial_attention.integrations.diffusers import apply_radial_attention, get_radial_state  # noqa: E402
from radial_attention.models.registry import FAMILIES  # noqa: E402
from radial_attention.testing import tiny  # noqa: E402
from radial_attention.testing.data import write_synthetic_dataset  # noqa: E402
from radial_attention.train.data import DataError, LatentDataset, read_manifest, write_manifest  # noqa: E402
from radial_attention.train.encode import pipeline_family, read_video  # noqa: E402
from radial_attention.train.model import model_spec, trainable_family, transformer_inputs  # noqa: E402
from radial_attention.train.trainer import LoRATrainer, TrainConfig  # noqa: E402

from resume_check import assert_resume_is_exact  # noqa: E402
from test_train_encode import _write_video  # noqa: E402

LAYERS = 3  # 2 dense (the default dense_layers) + 1 radial block
LATENT = (4, 3, 4, 6)  # the tiny VAE's 4 channels; 3 latent frames of 4x6 tokens (64x96 px, 9 frames)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny ``HunyuanVideo15Pipeline`` (its scheduler's shift: 5.0)."""
    out = tmp_path_factory.mktemp("hv15") / "pipe"
    tiny.tiny_hunyuan15_pipeline(num_layers=LAYERS).save_pretrained(str(out))
    return out


def _cfg(tmp_path, model, data, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(tmp_path / "out"), block_size=64, lora_rank=4)
    base.update(lr=1e-2, max_steps=2, checkpoint_every=0, progress=False)
    return TrainConfig(**dict(base, **kw))


def _synthetic(tmp_path, name="data", n=2):
    spec = model_spec(tiny.tiny_hunyuan15_transformer(num_layers=1))
    write_synthetic_dataset(tmp_path / name, spec, num_samples=n, latent_shape=LATENT, text_len=8, seed=3)
    return tmp_path / name


# ------------------------------------------------------------------------------ the registry entry
def test_registry_entry_and_what_a_sample_holds():
    t2v = tiny.tiny_hunyuan15_transformer("t2v", num_layers=1)
    fam = trainable_family(t2v)
    assert fam is FAMILIES["hunyuan15"] and pipeline_family(tiny.tiny_hunyuan15_pipeline(num_layers=1)) == "hunyuan15"
    spec = model_spec(t2v)
    # 9 input channels = 4 noisy latents + 5 zeros (condition latents and mask) the trainer adds.
    assert (spec.in_channels, spec.condition_channels, spec.zero_condition_channels) == (4, 0, 5)
    assert (spec.text_dim, spec.text_2_dim, spec.zero_image_embeds, spec.needs_mask) == (16, 8, (729, 12), True)
    with pytest.raises(TypeError, match=r"text-to-video transformers only \(task_type 't2v'\); got task_type='i2v'"):
        trainable_family(tiny.tiny_hunyuan15_transformer("i2v", num_layers=1))
    # The forward gets what the pipeline passes: [latents, zeros] channels, zero image embeddings, both streams.
    batch = {
        "prompt_embeds": torch.randn(2, 8, 16),
        "prompt_attention_mask": torch.ones(2, 8, dtype=torch.long),
        "prompt_embeds_2": torch.randn(2, 4, 8),
        "prompt_attention_mask_2": torch.zeros(2, 4, dtype=torch.long),
    }
    kw = transformer_inputs("hunyuan15", batch, torch.randn(2, 4, 3, 4, 6), torch.tensor([500.0, 20.0]), dtype=torch.float32, spec=spec)  # fmt: skip
    assert kw["hidden_states"].shape == (2, 9, 3, 4, 6) and not kw["hidden_states"][:, 4:].any()
    assert kw["image_embeds"].shape == (2, 729, 12) and not kw["image_embeds"].any()
    assert kw["encoder_hidden_states_2"] is not None and kw["encoder_attention_mask_2"].dtype == torch.long
    with torch.no_grad():
        assert t2v(**kw)[0].shape == (2, 4, 3, 4, 6)


# ------------------------------------------------------------------------------ encode + train-lora (CLI)
def test_encode_then_train_lora_then_the_lora_loads(tmp_path, folder, capsys):
    pipe = tiny.tiny_hunyuan15_pipeline(num_layers=LAYERS)  # the same weights as the saved folder
    vids = tmp_path / "videos"
    vids.mkdir()
    captions = ["a dog runs", 'a red cat says "hi"']  # the second has quoted text: byT5 tokens
    for i, caption in enumerate(captions):
        _write_video(vids / f"clip{i}.mp4", seed=i)
        (vids / f"clip{i}.txt").write_text(caption)
    data = tmp_path / "data"
    enc = ["encode", "--model", str(folder), "--videos", str(vids), "--output", str(data), "--height", "64",
           "--width", "96", "--frames", "9", "--no-progress"]  # fmt: skip
    # Its pipeline pads prompts itself: --max-sequence-length is refused, before anything is written.
    assert main([*enc, "--max-sequence-length", "16"]) == 2
    assert "drop --max-sequence-length" in capsys.readouterr().err and not data.exists()
    assert main(enc) == 0
    assert "encode: 2 samples (hunyuan15, latents [4, 3, 4, 6])" in capsys.readouterr().out
    doc, _ = read_manifest(data)
    assert (
        doc["source"]["pipeline"] == "HunyuanVideo15Pipeline" and doc["source"]["normalisation"] == "z * scaling_factor"
    )
    stored = LatentDataset(data, model_spec(pipe.transformer))[1]
    with torch.no_grad():
        z = pipe.vae.encode(read_video(vids / "clip1.mp4", 9, 64, 96)[None]).latent_dist.mode()
        emb, mask, emb_2, mask_2 = pipe.encode_prompt(captions[1], device="cpu")
    torch.testing.assert_close(stored["latents"], z[0] * pipe.vae.config.scaling_factor, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored["prompt_embeds"], emb[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stored["prompt_embeds_2"], emb_2[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(stored["prompt_attention_mask"], mask[0].long())
    assert torch.equal(stored["prompt_attention_mask_2"], mask_2[0].long()) and stored["prompt_attention_mask_2"].any()

    run = tmp_path / "run"
    args = ["train-lora", "--model", str(folder), "--data", str(data), "--output", str(run), "--block-size", "64",
            "--lora-rank", "4", "--lr", "1e-2", "--max-steps", "2", "--checkpoint-every", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "train-lora: hunyuan15 transformer, 2 samples" in capsys.readouterr().out
    assert json.loads((run / "train_config.json").read_text())["shift"] == 5.0  # the folder's scheduler
    losses = [json.loads(x)["loss"] for x in (run / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))

    # The LoRA file in a fresh pipeline's transformer (no loader mixin on the pipeline) = the trained model.
    from safetensors.torch import load_file

    saved = load_file(str(run / "pytorch_lora_weights.safetensors"))
    fresh = tiny.tiny_hunyuan15_pipeline(num_layers=LAYERS)
    assert not hasattr(fresh, "load_lora_weights")
    from radial_attention.cli.generate_cmd import load_loras

    load_loras(fresh, str(run), None)
    state = {n: p for n, p in fresh.transformer.named_parameters() if "lora" in n}
    assert len(state) == len(saved) > 0
    for key, value in saved.items():  # "transformer.x.lora_A.weight" -> "x.lora_A.radial-lora.weight"
        name = key.removeprefix("transformer.").replace(".weight", ".radial-lora.weight")
        assert torch.equal(state[name], value), key
    kwargs = tiny.hunyuan15_inputs(fresh.transformer, 3, 4, 6, text_len=8, text_len_2=4)
    with torch.no_grad():
        loaded = fresh.transformer(**kwargs)[0]
        fresh.transformer.disable_lora()
        base = fresh.transformer(**kwargs)[0]
    assert (loaded - base).abs().max() > 1e-4  # the LoRA is live


# ------------------------------------------------------------------------------ training
def test_loss_falls_with_radial_attention_and_bad_data_is_caught_first(tmp_path, folder):
    data = _synthetic(tmp_path)
    trainer = LoRATrainer(_cfg(tmp_path, folder, data, max_steps=8))
    before = trainer.evaluate()
    result = trainer.train()
    assert all(torch.isfinite(torch.tensor(result.losses))) and trainer.evaluate() < before  # the loss falls
    layers = {(layer, kind) for (_, layer, kind) in get_radial_state(trainer.transformer).calls}
    assert layers == {(0, "dense"), (1, "dense"), (2, "radial")}
    mods = {n.rsplit(".lora_A", 1)[0] for n, _ in trainer.transformer.named_parameters() if "lora_A" in n}
    assert mods == {f"transformer_blocks.{i}.attn.{p}" for i in range(LAYERS) for p in ("to_q", "to_k", "to_v", "to_out.0")}  # fmt: skip

    # A folder without the byT5 stream (or with the wrong width) is refused before training, naming the file.
    from safetensors.torch import load_file, save_file

    doc, samples = read_manifest(data)
    for name, edit in (("no-byt5", lambda t: t.pop("prompt_embeds_2")), ("wide", lambda t: t.update(prompt_embeds_2=torch.randn(4, 9)))):  # fmt: skip
        bad = tmp_path / name
        tensors = load_file(str(samples[0].file))
        edit(tensors)
        (bad / "samples").mkdir(parents=True)
        save_file(tensors, str(bad / "samples" / "000000.safetensors"))
        write_manifest(bad, "hunyuan15", [{"file": "samples/000000.safetensors"}])
        with pytest.raises(DataError, match=r"sample #0 .*prompt_embeds_2 must be \[L2, 8\] for this model"):
            LoRATrainer(_cfg(tmp_path, folder, bad))


def test_resume_continues_the_same_run_exactly(tmp_path, folder):

    data = _synthetic(tmp_path, n=3)
    common = dict(max_steps=4, checkpoint_every=2, lora_dropout=0.1, warmup_steps=1, lr_schedule="cosine")
    assert_resume_is_exact(
        lambda out, **kw: LoRATrainer(_cfg(tmp_path, folder, data, output_dir=out, **common, **kw)),
        tmp_path,
        crash_in_step=4,
        checkpoint_step=2,
    )


def test_generate_with_the_lora_and_radial_attention(tmp_path, folder):
    """``generate --lora`` on the saved pipeline: the LoRA goes into its transformer."""
    data = _synthetic(tmp_path)
    LoRATrainer(_cfg(tmp_path, folder, data, max_steps=1)).train()
    pipe = tiny.tiny_hunyuan15_pipeline(num_layers=LAYERS)
    from radial_attention.cli.generate_cmd import load_loras

    load_loras(pipe, str(tmp_path / "out"), None, scale=0.5)
    state = apply_radial_attention(pipe, dense_steps=0, block_size=64)
    out = pipe(prompt="a cat", height=64, width=96, num_frames=9, num_inference_steps=1, output_type="pt").frames
    assert torch.isfinite(out).all() and state.summary()["radial_calls"] > 0
