"""What a careless or hostile user can hand train-lora and encode (issue 14): planted pickles,
data paths outside the data folder, NaN data and runaway losses, an output folder that holds
another run, damaged checkpoints, changed settings on resume, a corrupt video among good ones,
and a full disk while logging. Tiny models on the CPU, a few steps each."""

import errno
import hashlib
import json
import pathlib
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import radial_attention.train.trainer as trainer_mod
from radial_attention.train import checkpoint as ckpt
from radial_attention.testing.data import write_synthetic_dataset
from radial_attention.train.data import (
    DataError,
    LatentDataset,
    ModelSpec,
    read_manifest,
    validate_dataset,
)
from radial_attention.train.model import load_transformer, model_spec
from radial_attention.train.trainer import LoRATrainer, NonFiniteLossError, TrainConfig

LATENT = (16, 4, 8, 12)  # 4 frames of 4x6 tokens: a fast tiny-wan step
HUNYUAN = ModelSpec("hunyuan", in_channels=16, patch_size=(1, 2, 2), text_dim=16, pooled_dim=8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _quiet_prompt_length_warning():
    # The synthetic data's 16-token prompts trigger a deliberate Wan warning; not what these tests look at.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"prompt_embeds in .* have \[16\] tokens")
        yield


def _data(tmp_path, n=4, name="data", seed=3, family="tiny-wan"):
    spec = model_spec(load_transformer(family))
    write_synthetic_dataset(tmp_path / name, spec, num_samples=n, latent_shape=LATENT, text_len=16, seed=seed)
    return tmp_path / name


def _cfg(tmp_path, data, **kw):
    base = dict(
        model="tiny-wan",
        data=str(data),
        output_dir=str(tmp_path / "out"),
        block_size=64,
        lora_rank=4,
        lr=1e-2,
        max_steps=2,
        checkpoint_every=1,
        progress=False,
        dense_layers=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _steps(out):
    return [ckpt.step_of(p) for p in ckpt.list_checkpoints(out)]


def _reseal(folder):
    """Rewrite a checkpoint's files.json for its current files, as an attacker who edits a
    checkpoint would (so that only the loading itself stands between the file and the process)."""
    folder = pathlib.Path(folder)
    files = {
        f.name: {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name != ckpt.FILES
    }
    (folder / ckpt.FILES).write_text(json.dumps({"files": files}))


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------------------ 1. no code from user files
@pytest.mark.parametrize("victim", ["scheduler.pt", "rng-rank0.pt", "optimizer.pt"])
def test_resume_never_runs_code_from_a_planted_pickle(tmp_path, victim):
    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=1)).train()
    folder = ckpt.checkpoint_dir(tmp_path / "out", 1)
    marker = tmp_path / "pwned"
    torch.save({"state": _Planted(marker)}, folder / victim)
    _reseal(folder)
    with pytest.raises(ckpt.CheckpointError, match=rf"cannot load checkpoint file .*step-000001/{victim}"):
        LoRATrainer(_cfg(tmp_path, data, max_steps=2, resume=str(folder)))
    assert not marker.exists()


def test_no_unpickling_loads_in_the_package():
    """Every torch.load of the package is weights_only=True; no pickle / numpy allow_pickle loads.
    distributed/launch.py's in-process result passing (bytes from its own worker processes) is
    the one exception."""
    root = pathlib.Path(trainer_mod.__file__).parents[1]
    offenders = []
    for f in root.rglob("*.py"):
        if f.relative_to(root).as_posix() == "distributed/launch.py":
            continue
        text = f.read_text()
        for bad in ("weights_only=False", "pickle.load", "allow_pickle=True", "torch.load(", "np.load("):
            if bad in text and not (bad == "torch.load(" and f.name == "checkpoint.py"):
                offenders.append(f"{f.relative_to(root)}: {bad}")
    assert offenders == []
    assert "weights_only=True" in (root / "train" / "checkpoint.py").read_text()


@pytest.mark.parametrize(
    "entry", ["/etc/passwd", "../outside.safetensors", "samples/../../outside.safetensors", "C:\\data\\x.safetensors"]
)
def test_manifest_paths_must_stay_inside_the_data_folder(tmp_path, entry):
    data = _data(tmp_path, n=2)
    shutil.copy(data / "samples" / "000000.safetensors", tmp_path / "outside.safetensors")  # would exist
    doc = json.loads((data / "manifest.json").read_text())
    doc["samples"][1]["file"] = entry
    (data / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"sample #1 file .* leaves the data folder \(an absolute path or '\.\.'\)"
    ) as info:
        read_manifest(data)
    assert f"sample #1 file {entry!r} leaves" in str(info.value)


# ------------------------------------------------------------------------------ 2. non-finite values
def _poison(path, key="latents"):
    t = load_file(str(path))
    t[key] = t[key].clone()
    t[key].view(-1)[5] = float("nan")
    save_file(t, str(path))


def test_nan_in_the_data_is_refused_before_training(tmp_path):
    data = _data(tmp_path, n=3)
    _poison(data / "samples" / "000002.safetensors")
    with pytest.raises(DataError, match=r"sample #2 \(.*000002.safetensors\): latents has 1 non-finite value"):
        LoRATrainer(_cfg(tmp_path, data))
    assert not (tmp_path / "out").exists()
    validate_dataset(data, model_spec(load_transformer("tiny-wan")), values=False)  # the header-only check passes


def test_all_zero_hunyuan_prompt_mask_is_refused(tmp_path):
    root = tmp_path / "hy"
    write_synthetic_dataset(root, HUNYUAN, num_samples=2, latent_shape=LATENT, text_len=6, seed=1)
    path = root / "samples" / "000001.safetensors"
    t = load_file(str(path))
    t["prompt_attention_mask"] = torch.zeros(6, dtype=torch.int64)
    save_file(t, str(path))
    with pytest.raises(DataError, match=r"sample #1 .*000001.safetensors.*prompt_attention_mask is all zeros"):
        validate_dataset(root, HUNYUAN)


def test_infinite_learning_rate_is_refused():
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got inf"):
        TrainConfig(model="m", data="d", output_dir="o", lr=float("inf"))


def test_nan_loss_stops_the_run_naming_step_and_sample_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    """A sample turns NaN after validation (bad storage, a bug): the run stops at the first step
    that draws it, names that step and the sample, takes no optimizer step, saves nothing, and
    the last good checkpoints survive (rotation never runs for the bad step)."""
    data = _data(tmp_path, n=4)
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=8, grad_accum=2, keep_checkpoints=2))
    real = LatentDataset.__getitem__

    def poisoned(self, i):
        item = real(self, i)
        if i == 1 and trainer.step_count >= 3:
            item["latents"] = item["latents"].clone()
            item["latents"].view(-1)[0] = float("nan")
        return item

    monkeypatch.setattr(LatentDataset, "__getitem__", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    msg = str(info.value)
    bad_step = trainer.step_count + 1
    assert bad_step >= 4
    assert f"step {bad_step}: the loss is nan" in msg and "optimizer step was not taken" in msg
    assert "Non-finite on their own: #1 samples/000001.safetensors" in msg
    assert f"last good checkpoint is {ckpt.checkpoint_dir(tmp_path / 'out', bad_step - 1)}" in msg
    assert all(torch.isfinite(p).all() for p in trainer.params)  # no NaN update was applied
    assert _steps(tmp_path / "out") == [bad_step - 2, bad_step - 1]
    for folder in ckpt.list_checkpoints(tmp_path / "out"):
        ckpt.verify_checkpoint(folder)
        weights = load_file(str(folder / "pytorch_lora_weights.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()
    log = [json.loads(x) for x in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, bad_step))


def test_weights_that_blow_up_in_the_optimizer_step_stop_the_run(tmp_path):
    data = _data(tmp_path, n=2)
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=4, keep_checkpoints=1))

    def overflow(optimizer, args, kwargs):
        if trainer.step_count == 2:  # the third step's update overflows
            trainer.params[0].data.fill_(float("inf"))

    trainer.optimizer.register_step_post_hook(overflow)
    with pytest.raises(
        NonFiniteLossError, match=r"step 3: the LoRA weights became NaN/inf in the optimizer step \(lr 0.01"
    ):
        trainer.train()
    assert _steps(tmp_path / "out") == [2]
    with pytest.raises(NonFiniteLossError, match="step 3: the LoRA weights are not finite; no checkpoint written"):
        trainer.save_checkpoint()
    assert _steps(tmp_path / "out") == [2]


# ------------------------------------------------------------------------------ 3. a folder with another run
def test_a_new_run_in_a_used_output_folder_is_refused_or_overwritten(tmp_path):
    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=2)).train()
    out = tmp_path / "out"
    old_log = (out / "loss.jsonl").read_text()
    with pytest.raises(
        ValueError,
        match=r"already holds a training run \(checkpoints step-000001, step-000002; "
        r"loss.jsonl; train_config.json; pytorch_lora_weights.safetensors\): "
        r"continue it with --resume latest.*--overwrite",
    ):
        LoRATrainer(_cfg(tmp_path, data, max_steps=3, seed=1))
    assert (out / "loss.jsonl").read_text() == old_log and _steps(out) == [1, 2]
    with pytest.raises(ValueError, match="overwrite starts a new run .* cannot be combined with resume"):
        _cfg(tmp_path, data, overwrite=True, resume="latest")

    (out / "checkpoints" / "mine.bak").mkdir()  # not ours: overwrite leaves it
    with pytest.warns(UserWarning, match="overwrite: deleted the previous run .*step-000001, step-000002, loss.jsonl"):
        trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=3, seed=1, overwrite=True))
    trainer.train()
    assert _steps(out) == [2, 3]  # the new run's newest two, not deleted in favour of old ones
    assert {ckpt.run_id_of(p) for p in ckpt.list_checkpoints(out)} == {trainer.run_id}
    assert [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "checkpoints" / "mine.bak").is_dir()


def test_train_lora_cli_overwrite_flag(tmp_path, capsys):
    from radial_attention.cli.main import main

    data = _data(tmp_path, n=2)
    args = [
        "train-lora",
        "--model",
        "tiny-wan",
        "--data",
        str(data),
        "--output",
        str(tmp_path / "run"),
        "--block-size",
        "64",
        "--lora-rank",
        "4",
        "--dense-layers",
        "1",
        "--max-steps",
        "1",
        "--checkpoint-every",
        "1",
        "--no-progress",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a training run" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="overwrite: deleted"):
        assert main(args + ["--overwrite"]) == 0


def test_rotation_deletes_only_this_runs_older_checkpoints(tmp_path):
    def fake(step, run_id):
        folder = ckpt.checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / ckpt.STATE).write_text(json.dumps({"run_id": run_id} if run_id else {}))

    for step, rid in ((1, "a"), (2, "b"), (3, "a"), (4, None), (9, "b"), (5, "a")):
        fake(step, rid)
    ckpt.rotate(tmp_path, "a", keep=1)
    assert _steps(tmp_path) == [2, 4, 5, 9]


def test_stray_folders_do_not_break_a_run_or_resume(tmp_path):
    data = _data(tmp_path, n=2)
    out = tmp_path / "out"
    LoRATrainer(_cfg(tmp_path, data, max_steps=2, keep_checkpoints=1)).train()
    shutil.copytree(out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000004.bak")
    (out / "checkpoints" / "step-abc").mkdir()
    (out / "checkpoints" / "step-000009").write_text("a file, not a folder")
    assert _steps(out) == [2]
    trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=4, keep_checkpoints=1, resume="latest"))
    assert trainer.step_count == 2
    trainer.train()
    assert _steps(out) == [4]
    assert (out / "checkpoints" / "step-000004.bak").is_dir() and (out / "checkpoints" / "step-abc").is_dir()


# ------------------------------------------------------------------------------ 4. damaged checkpoints
def test_a_truncated_checkpoint_file_is_caught_and_latest_falls_back(tmp_path):
    data = _data(tmp_path, n=2)
    out = tmp_path / "out"
    LoRATrainer(_cfg(tmp_path, data, max_steps=3, keep_checkpoints=3)).train()
    listing = json.loads((ckpt.checkpoint_dir(out, 3) / ckpt.FILES).read_text())["files"]
    assert {"optimizer.pt", "scheduler.pt", "rng-rank0.pt", "state.json", "pytorch_lora_weights.safetensors"} <= set(
        listing
    )
    victim = ckpt.checkpoint_dir(out, 3) / "optimizer.pt"
    victim.write_bytes(victim.read_bytes()[:100])

    with pytest.warns(
        UserWarning,
        match=r"skipping broken checkpoint step-000003: checkpoint file .*step-000003/optimizer.pt "
        r"has 100 bytes, expected \d+ \(truncated",
    ):
        trainer = LoRATrainer(_cfg(tmp_path, data, max_steps=3, keep_checkpoints=3, resume="latest"))
    assert trainer.step_count == 2
    with pytest.raises(ckpt.CheckpointError, match=r"step-000003/optimizer.pt has 100 bytes"):
        LoRATrainer(_cfg(tmp_path, data, max_steps=3, resume=str(ckpt.checkpoint_dir(out, 3))))

    # A checkpoint from before files.json existed still resumes, with a warning that it is unverified.
    legacy = shutil.copytree(ckpt.checkpoint_dir(out, 2), tmp_path / "legacy")
    (legacy / ckpt.FILES).unlink()
    with pytest.warns(UserWarning, match=r"legacy has no files.json \(written by an older version\)"):
        assert LoRATrainer(_cfg(tmp_path, data, max_steps=3, resume=str(legacy))).step_count == 2

    # A changed byte (same size) is caught by the hash; with every checkpoint broken, resume says so.
    for step in (1, 2):
        f = ckpt.checkpoint_dir(out, step) / "pytorch_lora_weights.safetensors"
        raw = bytearray(f.read_bytes())
        raw[-1] ^= 0xFF
        f.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="skipping broken checkpoint"):
        with pytest.raises(
            ckpt.CheckpointError, match=r"every checkpoint in .* is broken: .*does not match its sha256"
        ):
            LoRATrainer(_cfg(tmp_path, data, max_steps=3, resume="latest"))


# ------------------------------------------------------------------------------ 5. settings on resume
def test_resume_refuses_other_alpha_attention_or_data(tmp_path):
    data = _data(tmp_path, n=2)
    LoRATrainer(_cfg(tmp_path, data, max_steps=1)).train()
    with pytest.raises(ValueError, match=r"settings differ.*alpha: saved 4.0, given 2.0"):
        LoRATrainer(_cfg(tmp_path, data, alpha=2.0, resume="latest"))
    with pytest.raises(ValueError, match=r"settings differ.*attention: saved 'radial', given 'dense'"):
        LoRATrainer(_cfg(tmp_path, data, attention="dense", resume="latest"))
    other = _data(tmp_path, n=2, name="other", seed=4)
    doc = json.loads((other / "manifest.json").read_text())
    doc["samples"][0]["caption"] = "another caption"
    (other / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"data folder: saved '{data}', given '{other}'"):
        LoRATrainer(_cfg(tmp_path, other, resume="latest"))
    # The same samples in a moved folder, and alpha given explicitly as its default, resume fine.
    moved = shutil.copytree(data, tmp_path / "moved")
    assert LoRATrainer(_cfg(tmp_path, moved, alpha=4.0, resume="latest")).step_count == 1


# ------------------------------------------------------------------------------ 6. encode with a bad video
def _clips(folder, names, bad=()):
    from test_train_encode import _write_video

    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        if name in bad:
            (folder / f"{name}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
        else:
            _write_video(folder / f"{name}.mp4", frames=5, height=32, width=32, seed=i)
        (folder / f"{name}.txt").write_text(f"caption of {name}")


def test_encode_keeps_finished_clips_resumes_and_skips_bad_videos(tmp_path, monkeypatch):
    import radial_attention.train.encode as encode_mod
    from radial_attention.testing import tiny

    pipe = tiny.tiny_wan_pipeline(num_layers=1, seed=0)
    vids = tmp_path / "videos"
    _clips(vids, ["a", "b", "c"], bad=("b",))
    out = tmp_path / "data"
    kw = dict(height=32, width=32, num_frames=5, max_sequence_length=8, progress=False, pipe=pipe)
    encoded = []
    real = encode_mod.encode_latents
    monkeypatch.setattr(
        encode_mod,
        "encode_latents",
        lambda pipe, family, video, **k: encoded.append(1) or real(pipe, family, video, **k),
    )

    with pytest.raises(
        DataError, match=r"cannot read video .*b.mp4.*The 1 clip\(s\) encoded so far are kept .*--skip-bad"
    ):
        encode_mod.encode_videos("", [str(vids)], out, **kw)
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["partial"] is True and [s["video"] for s in doc["samples"]] == [str(vids / "a.mp4")]
    with pytest.raises(DataError, match="the encode that writes this folder did not finish .*rerun the same"):
        read_manifest(out)
    with pytest.raises(DataError, match=r"unfinished encode with other settings \(num_frames: saved 5, given 9\)"):
        encode_mod.encode_videos("", [str(vids)], out, **dict(kw, num_frames=9))

    _clips(vids, ["a", "b", "c"])  # the bad video fixed: the rerun encodes only b and c
    first = (out / "samples" / "000000.safetensors").read_bytes()
    encoded.clear()
    manifest = encode_mod.encode_videos("", [str(vids)], out, **kw)
    assert len(encoded) == 2
    doc, samples = read_manifest(out)
    assert "partial" not in doc and [pathlib.Path(s["video"]).name for s in doc["samples"]] == [
        "a.mp4",
        "b.mp4",
        "c.mp4",
    ]
    assert (out / "samples" / "000000.safetensors").read_bytes() == first
    assert manifest == out / "manifest.json"

    # --skip-bad: a warning names the video, the manifest lists it, the CLI prints a summary.
    _clips(vids, ["b"], bad=("b",))
    with pytest.warns(UserWarning, match=r"encode: skipping .*b.mp4: cannot read video"):
        encode_mod.encode_videos("", [str(vids)], tmp_path / "skip", skip_bad=True, **kw)
    doc, samples = read_manifest(tmp_path / "skip")
    assert len(samples) == 2 and [pathlib.Path(s["video"]).name for s in doc["skipped"]] == ["b.mp4"]

    from radial_attention.cli.main import run_command

    pipe.save_pretrained(str(tmp_path / "pipe"))
    with pytest.warns(UserWarning, match="encode: skipping"):
        done = run_command(
            [
                "encode",
                "--model",
                str(tmp_path / "pipe"),
                "--videos",
                str(vids),
                "--output",
                str(tmp_path / "cli"),
                "--height",
                "32",
                "--width",
                "32",
                "--frames",
                "5",
                "--max-sequence-length",
                "8",
                "--no-progress",
                "--skip-bad",
            ]
        )
    assert done.code == 0 and done.report["samples"] == 2 and done.report["skipped"] == [str(vids / "b.mp4")]
    assert [s["video"] for s in read_manifest(tmp_path / "cli")[0]["skipped"]] == [str(vids / "b.mp4")]


# ------------------------------------------------------------------------------ 7. a full disk while logging
def test_a_full_disk_while_plotting_or_logging_does_not_end_the_run(tmp_path, monkeypatch):
    data = _data(tmp_path, n=2)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    class FullDiskFile:
        def write(self, text):
            no_space()

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(trainer_mod, "plot_loss", no_space)
    monkeypatch.setattr(trainer_mod, "open", lambda *a, **k: FullDiskFile(), raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = LoRATrainer(_cfg(tmp_path, data, max_steps=3)).train()
    assert result.steps == 3 and result.lora_path.is_file() and _steps(tmp_path / "out") == [2, 3]
    messages = [str(w.message) for w in seen if "could not write" in str(w.message)]
    assert len([m for m in messages if "loss.png" in m]) == 1  # three plot attempts, one warning
    assert len([m for m in messages if "loss.jsonl" in m]) == 1  # three log lines, one warning
    assert all("No space left on device" in m and "training goes on" in m for m in messages)
