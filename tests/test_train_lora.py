"""LoRA training with radial attention on tiny real diffusers transformers (CPU, random weights).

Layout: latents [16, 8, 16, 24] -> 8 frames of 8x12 = 96 tokens (768 tokens), 64-token blocks:
the Wan mask keeps 33% of the blocks, HunyuanVideo's (16 text tokens appended) 31%.
"""

import contextlib
import argparse
import json

import pytest
import torch

from radial_attention.integrations.diffusers import apply_radial_attention, get_radial_state
from radial_attention.testing import tiny
from radial_attention.testing.data import write_synthetic_dataset
from radial_attention.train.data import DataError
from radial_attention.train.model import load_transformer, model_spec
from radial_attention.train.trainer import LoRATrainer, TrainConfig
from resume_check import assert_resume_is_exact

LATENT = (16, 8, 16, 24)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from threads, and a busy 2-core machine makes OpenMP spin badly.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(tmp_path, family="tiny-wan", n=4, shape=LATENT, name="data"):
    spec = model_spec(load_transformer(family))
    write_synthetic_dataset(tmp_path / name, spec, num_samples=n, latent_shape=shape, text_len=16, seed=3)
    return tmp_path / name


def _cfg(tmp_path, data, **kw):
    base = dict(
        model="tiny-wan",
        data=str(data),
        output_dir=str(tmp_path / "out"),
        block_size=64,
        lora_rank=8,
        lr=1e-2,
        max_steps=4,
        checkpoint_every=0,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------ training
def test_loss_falls_with_radial_attention(tmp_path):
    data = _data(tmp_path)
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=24))
    assert trainer.radial_density() <= 0.6
    before = trainer.evaluate()
    result = trainer.train()
    after = trainer.evaluate()
    print("eval loss before/after", before, after)
    assert after < 0.93 * before, (before, after)
    assert len(result.losses) == 24 and all(torch.isfinite(torch.tensor(result.losses)))
    # Radial attention really ran, in the blocks after the first two dense ones only.
    state = get_radial_state(trainer.transformer)
    layers = {(layer, kind) for (_, layer, kind) in state.calls}
    assert layers == {(0, "dense"), (1, "dense"), (2, "radial")}
    # The loss log has one line per step with loss and step time.
    log = [json.loads(x) for x in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    assert [r["loss"] for r in log] == result.losses and all(r["step_time_s"] > 0 for r in log)


def test_hunyuan_trains(tmp_path):
    data = _data(tmp_path, "tiny-hunyuan", n=2)
    trainer = LoRATrainer(_cfg(tmp_path, data, model="tiny-hunyuan", max_steps=3, dense_layers=1))
    assert trainer.radial_density() <= 0.6
    before = [p.detach().clone() for p in trainer.params]
    result = trainer.train()
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))
    assert get_radial_state(trainer.transformer).summary()["radial_calls"] > 0
    # LoRA sits on the video-side self-attention only (not the text-side add_*_proj).
    names = [n for n, _ in trainer.transformer.named_parameters() if "lora_A" in n]
    assert any("single_transformer_blocks.0.attn.to_q" in n for n in names)
    assert any("transformer_blocks.0.attn.to_out.0" in n for n in names)
    assert not any("add_q_proj" in n or "context_embedder" in n for n in names)


def test_lora_targets_wan(tmp_path):
    data = _data(tmp_path, n=1)
    t = LoRATrainer(_cfg(tmp_path, data, train_ff=False)).transformer
    mods = {n.rsplit(".lora_A", 1)[0] for n, _ in t.named_parameters() if "lora_A" in n}
    assert mods == {f"blocks.{i}.attn1.{p}" for i in range(3) for p in ("to_q", "to_k", "to_v", "to_out.0")}
    t2 = LoRATrainer(_cfg(tmp_path, data, train_ff=True, output_dir=str(tmp_path / "o2"))).transformer
    mods2 = {n.rsplit(".lora_A", 1)[0] for n, _ in t2.named_parameters() if "lora_A" in n}
    assert mods2 - mods == {f"blocks.{i}.ffn.net.{p}" for i in range(3) for p in ("0.proj", "2")}
    assert all(p.dtype == torch.float32 for n, p in t2.named_parameters() if p.requires_grad)
    assert all("lora_" in n for n, p in t2.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ the LoRA file
def test_saved_lora_loads_into_fresh_pipeline_and_reproduces_output(tmp_path):
    data = _data(tmp_path, n=2)
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=3, alpha=4.0))  # alpha != rank: scale 0.5 must survive
    result = trainer.train()
    assert result.lora_path.is_file()
    trained = trainer.transformer.eval()

    pipe = tiny.tiny_wan_pipeline(num_layers=3, seed=0)  # the same base weights as "tiny-wan"
    pipe.load_lora_weights(str(tmp_path / "out"))
    apply_radial_attention(pipe, dense_layers=2, block_size=64)
    kwargs = tiny.wan_inputs(trained, 8, 16, 24, text_len=16, seed=5)
    with torch.no_grad():
        ours = trained(**kwargs)[0]
        loaded = pipe.transformer(**kwargs)[0]
        pipe.transformer.disable_lora()
        base = pipe.transformer(**kwargs)[0]
        pipe.transformer.enable_lora()
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)
    assert (ours - base).abs().max() > 1e-3  # the LoRA changed the model: the check above is not vacuous

    # Whole denoising loop: the pipeline with the loaded LoRA gives the trained model's latents.
    pipe_ref = tiny.tiny_wan_pipeline(num_layers=3, seed=0)
    pipe_ref.transformer = trained
    call = dict(
        prompt="a red cat",
        height=128,
        width=192,
        num_frames=29,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="latent",
        max_sequence_length=16,
    )
    with torch.no_grad():
        a = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
        b = pipe_ref(**call, generator=torch.Generator().manual_seed(0)).frames
    assert a.shape == (1, 16, 8, 16, 24)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_wan22_a14b_low_noise_expert(tmp_path, capsys):
    """Wan2.2 A14B: train the low-noise expert (``transformer_2``) of a saved pipeline on its own
    noise levels (below boundary_ratio * 1000); the LoRA loads into a fresh pipeline's
    ``transformer_2`` (``load_into_transformer_2=True``) and reproduces the trained expert."""
    from radial_attention.train.model import expert_timestep_range

    folder = tmp_path / "a14b"
    tiny.tiny_wan_pipeline("a14b", num_layers=3, seed=0).save_pretrained(str(folder))
    t2v = tmp_path / "t2v"
    tiny.tiny_wan_pipeline("t2v", num_layers=2, seed=0).save_pretrained(str(t2v))
    assert expert_timestep_range(str(folder), "transformer") == (875.0, 1000.0)
    assert expert_timestep_range(str(folder), "transformer_2") == (0.0, 875.0)
    assert expert_timestep_range(str(t2v)) is None and expert_timestep_range("tiny-wan") is None

    data = _data(tmp_path, n=2)
    trainer = LoRATrainer(_cfg(tmp_path, data, model=str(folder), transformer_subfolder="transformer_2", max_steps=3))
    assert trainer.timestep_range == (0.0, 875.0) and trainer.objective.sigma_range == (0.0, 0.875)
    seen = []
    hook = trainer.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["timestep"].clone()), with_kwargs=True
    )
    result = trainer.train()
    hook.remove()
    assert seen and all(float(t.max()) <= 875.0 for t in seen)
    trained = trainer.transformer.eval()

    pipe = tiny.tiny_wan_pipeline("a14b", num_layers=3, seed=0)
    pipe.load_lora_weights(str(result.output_dir), load_into_transformer_2=True)
    apply_radial_attention(pipe, dense_layers=2, block_size=64)
    kwargs = tiny.wan_inputs(trained, 8, 16, 24, text_len=16, timestep=300.0, seed=5)
    with torch.no_grad():
        ours = trained(**kwargs)[0]
        loaded = pipe.transformer_2(**kwargs)[0]
        pipe.transformer_2.disable_lora()
        base = pipe.transformer_2(**kwargs)[0]
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)
    assert (ours - base).abs().max() > 1e-3
    assert not any("lora" in n for n, _ in pipe.transformer.named_parameters())  # the high-noise expert is untouched

    with pytest.raises(
        ValueError, match="timestep_range must be \\(lo, hi\\) with 0 <= lo < hi <= 1000, got \\(900, 100\\)"
    ):
        _cfg(tmp_path, data, timestep_range=(900, 100))
    with pytest.raises(FileNotFoundError, match="has no 'transformer_2' component"):
        LoRATrainer(_cfg(tmp_path, data, model=str(t2v), transformer_subfolder="transformer_2"))

    # The CLI: an explicit range overrides the expert's own; it says how to load the LoRA.
    from radial_attention.cli.main import main, run_command

    capsys.readouterr()
    args = [
        "train-lora",
        "--model",
        str(folder),
        "--data",
        str(data),
        "--output",
        str(tmp_path / "cli"),
        "--block-size",
        "64",
        "--lora-rank",
        "4",
        "--max-steps",
        "1",
        "--checkpoint-every",
        "0",
        "--no-progress",
        "--transformer-subfolder",
        "transformer_2",
    ]
    done = run_command(args + ["--timestep-range", "100,400"])
    assert done.code == 0 and done.report["timestep_range"] == [100, 400] and done.report["steps"] == 1
    # The instruction it prints: how to load a low-noise expert's LoRA (a message, like the errors).
    assert "load_into_transformer_2=True" in capsys.readouterr().out
    assert main(args + ["--timestep-range", "400"]) == 2  # argparse's usage error, as an exit code
    assert "expected two comma-separated timesteps like 875,1000, got '400'" in capsys.readouterr().err


def test_wan22_ti2v_5b_trains_text_to_video(tmp_path):
    """Wan2.2 TI2V-5B (48 latent channels) trains like Wan2.1 T2V. Its pipeline passes per-token
    timesteps [B, S]; in text-to-video they are all equal, and the transformer then gives the same
    output as with the scalar timestep [B] the trainer passes."""
    transformer = tiny.tiny_wan_transformer("ti2v", num_layers=3, seed=0)
    kwargs = tiny.wan_inputs(transformer, 4, 8, 12, text_len=16, timestep=700.0, seed=1)
    tokens = 4 * (8 // 2) * (12 // 2)
    with torch.no_grad():
        scalar = transformer(**kwargs)[0]
        per_token = transformer(**dict(kwargs, timestep=kwargs["timestep"][:, None].expand(-1, tokens)))[0]
    torch.testing.assert_close(scalar, per_token, atol=1e-5, rtol=1e-5)

    data = tmp_path / "data"
    write_synthetic_dataset(
        data, model_spec(transformer), num_samples=2, latent_shape=(48, 8, 16, 24), text_len=16, seed=3
    )
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=8), transformer=transformer)
    assert trainer.radial_density() <= 0.6
    before = trainer.evaluate()
    trainer.train()
    assert trainer.evaluate() < before


def test_wan_i2v_trains_with_condition_and_image_embeds(tmp_path):
    """Wan2.1 I2V: the sample's condition (mask + image latent) is concatenated to the noisy
    latents and its image embeddings go to the image cross-attention; the loss falls; data that
    lacks them, or has the wrong prompt length, is refused before training."""
    from radial_attention.train.data import CONDITION, IMAGE_EMBEDS
    from radial_attention.train.model import transformer_inputs

    transformer = tiny.tiny_wan_transformer("i2v", num_layers=3, seed=0)
    spec = model_spec(transformer)
    assert (spec.in_channels, spec.condition_channels, spec.image_dim, spec.text_len) == (16, 20, 24, 512)
    data = tmp_path / "data"
    write_synthetic_dataset(data, spec, num_samples=2, latent_shape=LATENT, seed=3)
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=8), transformer=transformer)
    batch = {k: v[None] for k, v in trainer.dataset[0].items()}
    kw = transformer_inputs("wan", batch, batch["latents"], torch.tensor([500.0]), dtype=torch.float32)
    assert kw["hidden_states"].shape == (1, 36, *LATENT[1:])
    torch.testing.assert_close(kw["hidden_states"][:, 16:], batch[CONDITION])
    assert kw["encoder_hidden_states_image"].shape == (1, 8, 24) and IMAGE_EMBEDS in batch
    assert trainer.radial_density() <= 0.6
    before = trainer.evaluate()
    trainer.train()
    assert trainer.evaluate() < before

    t2v_data = _data(tmp_path, n=2, name="t2v-data")  # no condition, 16 prompt tokens
    with pytest.raises(DataError, match="prompt_embeds must have exactly 512 tokens for this model"):
        LoRATrainer(_cfg(tmp_path, t2v_data), transformer=tiny.tiny_wan_transformer("i2v", num_layers=3))
    with pytest.raises(
        DataError,
        match=r"has a condition tensor \(20, 8, 16, 24\) \(image-to-video data\) but the model is text-to-video",
    ):
        LoRATrainer(_cfg(tmp_path, data))


# ------------------------------------------------------------------------------ resume
def test_resume_continues_the_same_run_exactly(tmp_path):
    data = _data(tmp_path, n=3)  # 3 samples, 2 micro-batches per step: steps straddle epochs
    common = dict(max_steps=6, grad_accum=2, lora_dropout=0.1, checkpoint_every=3, warmup_steps=2, lr_schedule="cosine")

    assert_resume_is_exact(
        lambda out, **kw: LoRATrainer(_cfg(tmp_path, data, output_dir=out, **common, **kw)),
        tmp_path,
        crash_in_step=5,
        checkpoint_step=3,
    )
    # The log of the resumed run is the log of the uninterrupted one (the lost step 4 is dropped).
    la = [json.loads(x) for x in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"], r["lr"]) for r in la] == [(r["step"], r["loss"], r["lr"]) for r in lb]


def test_resume_refuses_changed_settings(tmp_path):
    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=1, checkpoint_every=1)).train()
    with pytest.raises(ValueError, match=r"settings differ.*rank: saved 8, given 4"):
        LoRATrainer(_cfg(tmp_path, data, max_steps=2, lora_rank=4, resume="latest"))
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        LoRATrainer(_cfg(tmp_path, data, resume=str(tmp_path)))


def test_checkpoint_that_says_rank_still_resumes(tmp_path):
    """Checkpoints written before `rank` became `lora_rank` store "rank" in their settings: they
    resume, and a different rank is still refused."""
    from radial_attention.train import checkpoint as ckpt

    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=1, checkpoint_every=1)).train()
    (saved,) = ckpt.list_checkpoints(tmp_path / "out")
    state_file = saved / ckpt.STATE
    state = json.loads(state_file.read_text())
    state["settings"]["rank"] = state["settings"].pop("lora_rank")  # as an older version wrote it
    state_file.write_text(json.dumps(state))
    listing = json.loads((saved / ckpt.FILES).read_text())  # keep the checkpoint's own hashes right
    listing["files"][ckpt.STATE] = {"size": state_file.stat().st_size, "sha256": ckpt._sha256(state_file)}
    (saved / ckpt.FILES).write_text(json.dumps(listing))
    with pytest.raises(ValueError, match=r"settings differ.*lora_rank: saved 8, given 4"):
        LoRATrainer(_cfg(tmp_path, data, max_steps=2, lora_rank=4, resume="latest"))
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=2, resume="latest"))
    assert trainer.step_count == 1


# ------------------------------------------------------------------------------ bad input
def test_bad_data_fails_before_training(tmp_path):
    data = _data(tmp_path, n=2, shape=(16, 8, 16, 25))  # width 25: not a multiple of the 2x2 patch
    model = tiny.tiny_wan_transformer("t2v", num_layers=3)
    with pytest.raises(DataError, match=r"8x16x25 must be positive multiples of the model's patch size 1x2x2"):
        LoRATrainer(_cfg(tmp_path, data), transformer=model)
    assert not getattr(model, "peft_config", None)  # nothing was set up
    assert not (tmp_path / "out").exists()

    hy = _data(tmp_path, "tiny-hunyuan", n=1, name="hy")
    with pytest.raises(DataError, match="encoded for model family 'hunyuan' but the model being trained is 'wan'"):
        LoRATrainer(_cfg(tmp_path, hy))


def test_bad_settings():
    with pytest.raises(ValueError, match="attention must be one of"):
        TrainConfig(model="m", data="d", output_dir="o", attention="sparse")
    with pytest.raises(ValueError, match="grad_accum must be a positive integer, got 0"):
        TrainConfig(model="m", data="d", output_dir="o", grad_accum=0)
    from radial_attention.train.model import resolve_precision

    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")).weights == torch.float32
    from radial_attention.train.model import trainable_family

    with pytest.raises(TypeError, match="HunyuanVideo image-to-video transformers are not supported"):
        trainable_family(tiny.tiny_hunyuan_transformer(image_condition_type="latent_concat"))
    with pytest.raises(
        TypeError, match="supports diffusers WanTransformer3DModel, HunyuanVideoTransformer3DModel.* and .*, got Linear"
    ):
        trainable_family(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "family,precision", [("tiny-wan", "bf16-mixed"), ("tiny-hunyuan", "bf16-mixed"), ("tiny-wan", "bf16")]
)
def test_bf16_weights_train_with_float32_lora(tmp_path, family, precision):
    """The GPU default (precision "auto" on CUDA = "bf16-mixed") and "bf16", run on the CPU: bf16
    frozen weights (diffusers' float32 modules kept), float32 LoRA and optimizer state, finite losses."""
    data = _data(tmp_path, family, n=2, shape=(16, 4, 16, 24))
    trainer = LoRATrainer(_cfg(tmp_path, data, model=family, precision=precision, max_steps=2, dense_layers=1))
    result = trainer.train()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert {p.dtype for p in trainer.params} == {torch.float32}
    frozen = {p.dtype for n, p in trainer.transformer.named_parameters() if not p.requires_grad and "proj" in n}
    assert frozen == {torch.bfloat16}
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())
    assert get_radial_state(trainer.transformer).summary()["radial_calls"] > 0


def test_precision_names():
    from radial_attention.cli.main import build_parser
    from radial_attention.train.model import PRECISIONS, resolve_precision

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    precision = next(a for a in sub.choices["train-lora"]._actions if a.dest == "precision")
    assert tuple(precision.choices) == PRECISIONS
    cuda = resolve_precision("auto", torch.device("cuda"))
    assert (cuda.weights, cuda.autocast) == (torch.bfloat16, torch.bfloat16)
    assert resolve_precision("bf16", torch.device("cpu")).autocast is None


def test_bf16_mixed_lora_inputs_stay_bf16_through_the_recompute(tmp_path, monkeypatch):
    """Under bf16-mixed, peft's float32 copy of each LoRA input is skipped in the forward and in the
    checkpointed recompute inside the backward, and the LoRA gradients are the same as with it."""
    import radial_attention.train.trainer as trainer_mod

    data = _data(tmp_path, "tiny-wan", n=2, shape=(16, 4, 16, 24))
    trainer = LoRATrainer(_cfg(tmp_path, data, precision="bf16-mixed", dense_layers=1, gradient_checkpointing=True))
    seen = []
    lora_a = [m for n, m in trainer.transformer.named_modules() if n.endswith("lora_A.default")]
    assert lora_a
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype)) for m in lora_a]

    loss_off, grads_off = trainer.gradients([0, 1])
    dtypes_off, calls_off = set(seen), len(seen)
    seen.clear()
    # peft's default (input cast on), for comparison.
    monkeypatch.setattr(trainer_mod, "lora_input_cast_off", lambda model, precision: contextlib.nullcontext())
    loss_on, grads_on = trainer.gradients([0, 1])
    for h in handles:
        h.remove()

    assert dtypes_off == {torch.bfloat16}
    assert set(seen) == {torch.float32}
    assert calls_off == 2 * len(lora_a)  # the forward and the checkpoint's recompute
    assert loss_off == loss_on
    assert grads_off.keys() == grads_on.keys()
    for name in grads_off:
        torch.testing.assert_close(grads_off[name], grads_on[name], rtol=0, atol=0, msg=name)


def test_deterministic_flag_turns_on_deterministic_kernels(tmp_path):
    """``--deterministic``: process-wide deterministic kernels (on a GPU this is what makes a
    resumed run repeat the uninterrupted one bit for bit: benchmarks/train_cli_check.py)."""
    import torch.backends.cudnn as cudnn

    data = _data(tmp_path, n=2)
    saved = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(False)
        LoRATrainer(_cfg(tmp_path, data, max_steps=1))
        assert not torch.are_deterministic_algorithms_enabled()
        trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=1, deterministic=True, output_dir=str(tmp_path / "det")))
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert trainer.train().steps == 1  # the CPU path runs under it
    finally:
        torch.use_deterministic_algorithms(saved[0])
        cudnn.deterministic, cudnn.benchmark = saved[1], saved[2]


def test_wan_prompt_length_other_than_512_warns(tmp_path):
    """Wan does not mask prompt padding: data with another prompt length than the pipelines'
    512 gets a warning that says how to generate or re-encode; 512-token data does not."""
    import warnings

    short = _data(tmp_path, n=2)  # 16 tokens
    with pytest.warns(
        UserWarning,
        match=r"have \[16\] tokens; the model's pipelines \(such as WanPipeline\) generate with 512 .* max_sequence_length=16",
    ):
        LoRATrainer(_cfg(tmp_path, short))
    full = tmp_path / "full"
    write_synthetic_dataset(
        full, model_spec(load_transformer("tiny-wan")), num_samples=2, latent_shape=LATENT, text_len=512
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoRATrainer(_cfg(tmp_path, full, output_dir=str(tmp_path / "o2")))


def test_loss_curve_png(tmp_path):
    """loss.png: drawn from loss.jsonl at the end (and at checkpoints), with the eval points."""
    import matplotlib.image

    from radial_attention.train.plot import moving_average, read_log

    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=4, eval_every=2, eval_samples=1, checkpoint_every=2)).train()
    png = tmp_path / "out" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(str(png)).shape
    assert (height, width) == (500, 700)
    assert [r["step"] for r in read_log(tmp_path / "out" / "loss.jsonl") if "eval_loss" in r] == [2, 4]


def test_offloaded_checkpoints_give_the_same_gradients(tmp_path, monkeypatch):
    """offload_checkpoints: reentrant checkpointing with the block inputs saved through
    save_on_cpu; the LoRA gradients (first blocks included) equal plain checkpointing's."""
    import radial_attention.train.memory as memory

    data = _data(tmp_path, n=2)
    plain = LoRATrainer(_cfg(tmp_path, data, dense_layers=1))
    loss_a, grads_a = plain.gradients([0, 1])
    packed = []
    real = memory.offload_context

    @contextlib.contextmanager
    def spy(device, offload):  # the real context, its innermost hook replaced by one that records what it would move
        with real(device, offload):
            if not offload:
                yield
                return
            with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(tuple(t.shape)) or t, lambda t: t):
                yield

    import radial_attention.train.trainer as trainer_mod

    monkeypatch.setattr(trainer_mod, "offload_context", spy)
    offloaded = LoRATrainer(
        _cfg(tmp_path, data, dense_layers=1, offload_checkpoints=True, output_dir=str(tmp_path / "o"))
    )
    loss_b, grads_b = offloaded.gradients([0, 1])
    assert loss_a == loss_b
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(g.abs().max() > 0 for n, g in grads_b.items() if n.startswith("blocks.0."))  # block 0 learns too
    hidden = (2, 8 * 8 * 12, 2 * 16)  # [B, S, hidden]: a checkpointed block's input
    assert packed.count(hidden) >= 3  # one per block (3 blocks), saved through the offload hooks
    with pytest.raises(ValueError, match="offload_checkpoints needs gradient_checkpointing"):
        _cfg(tmp_path, data, offload_checkpoints=True, gradient_checkpointing=False)
