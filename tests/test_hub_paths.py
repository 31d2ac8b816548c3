"""Hub ids and model folders: every command that takes ``--model`` (generate, encode, train-lora)
with a Hub id, against a Hugging Face cache laid out like the real one
(``$HF_HOME/hub/models--Org--Name/snapshots/<sha>/`` + ``refs/main``) holding a tiny pipeline,
with the network off (``HF_HUB_OFFLINE=1``, and the download function made to fail if reached).
Also: ``generate``'s output checks and report, and ``tiny-pipeline``."""

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

import radial_attention.hub as hub  # noqa: E402
from radial_attention.cli.main import main, run_command  # noqa: E402

# A real Wan id with a dot in it (the dot used to be taken for a file extension).
REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
SHA = "0123456789abcdef0123456789abcdef01234567"
SMALL = ["--height", "64", "--width", "64", "--frames", "9", "--max-sequence-length", "16", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory):
    """A tiny Wan2.1 T2V pipeline (3 blocks) saved once for the module by the tiny-pipeline command."""
    out = tmp_path_factory.mktemp("tiny") / "wan"
    assert main(["tiny-pipeline", "--family", "wan", "--layers", "3", str(out)]) == 0
    return out


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A fresh, empty HF_HOME with HF_HUB_OFFLINE=1; any attempt to reach the Hub fails the test.
    Returns the cache folder ($HF_HOME/hub)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = hub._download

    def no_network(repo_id, *, cache_dir, allow_patterns, local_files_only):
        assert local_files_only, f"offline, but the Hub was asked for {repo_id}"
        return real(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns, local_files_only=True)

    monkeypatch.setattr(hub, "_download", no_network)
    return tmp_path / "hf-home" / "hub"


def put_in_cache(cache, folder, repo=REPO, *, drop=()):
    """Lay ``folder`` (a saved pipeline) out as the cache's snapshot of ``repo``, without the
    components in ``drop`` (a partial download)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / SHA
    shutil.copytree(folder, snap, ignore=lambda d, names: [n for n in names if d == str(folder) and n in drop])
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(SHA)
    return snap


def _write_clip(path, frames=9, size=64):
    import imageio
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    base = np.sin(xx / 7.0)[..., None] * 40 + np.cos(yy / 5.0)[..., None] * 30 + 100
    clip = [np.clip(base + 8 * i, 0, 255).astype(np.uint8).repeat(3, axis=2) for i in range(frames)]
    imageio.mimwrite(str(path), clip, fps=8, macro_block_size=16)


# ----------------------------------------------------------------------------- the resolver
def test_hub_id_rule_is_huggingface_hubs():
    for good in (REPO, "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "hunyuanvideo-community/HunyuanVideo", "a/b"):
        assert hub.is_hub_id(good), good
    for bad in (
        "tiny-wna",
        "a/b/c",
        "./Wan2.1",
        "/abs/path",
        "~/models/x",
        "org/name.git",
        "org/na--me",
        "org/.x",
        "",
        "org/",
    ):
        assert not hub.is_hub_id(bad), bad


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))  # wins over HF_HOME
    assert hub.hub_cache_dir() == tmp_path / "cache"
    assert hub.cache_repo_dir(REPO) == tmp_path / "cache" / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers"


def test_offline_lookup_finds_the_snapshot_or_says_where_it_looked(offline, tiny_wan_folder):
    with pytest.raises(hub.ModelNotFoundError) as e:
        hub.resolve_model(REPO)
    msg = str(e.value)
    assert "\n" not in msg and str(hub.cache_repo_dir(REPO)) in msg and f"`hf download {REPO}`" in msg
    assert "HF_HUB_OFFLINE" in msg and "huggingface-cli" not in msg
    snap = put_in_cache(offline, tiny_wan_folder)
    assert hub.resolve_model(REPO) == snap
    assert hub.resolve_model(str(tiny_wan_folder)) == tiny_wan_folder  # a local folder is used as it is
    with pytest.raises(hub.ModelNotFoundError, match="not a Hugging Face Hub id of the form org/name"):
        hub.resolve_model("no-such-folder")


def test_partial_snapshot_names_the_missing_component(offline, tiny_wan_folder):
    snap = put_in_cache(offline, tiny_wan_folder, drop=("vae",))
    with pytest.raises(hub.ModelNotFoundError, match=r"the cached copy .* lacks vae/") as e:
        hub.resolve_model(REPO)
    assert str(snap) in str(e.value)
    # train-lora needs only the transformer and the scheduler: the partial copy is enough for it.
    assert hub.resolve_model(REPO, components=["transformer", "scheduler"]) == snap


def test_online_download_fetches_only_the_needed_components(tmp_path, monkeypatch, tiny_wan_folder):
    """Not cached, Hub allowed: the resolver downloads (here a fake Hub that copies the tiny
    pipeline), encode without the transformer weights, plus transformer/config.json."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []
    real = hub._download

    def fake_hub(repo_id, *, cache_dir, allow_patterns, local_files_only):
        if local_files_only:
            return real(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns, local_files_only=True)
        asked.append(list(allow_patterns))
        snap = hub.cache_repo_dir(repo_id, cache_dir) / "snapshots" / SHA
        if not snap.exists():
            put_in_cache(cache_dir, tiny_wan_folder, repo_id)
        return str(snap)

    monkeypatch.setattr(hub, "_download", fake_hub)
    from radial_attention.train.encode import TRANSFORMER_COMPONENTS

    snap = hub.resolve_model(REPO, skip=TRANSFORMER_COMPONENTS, extra_files=["transformer/config.json"])
    assert snap == tmp_path / "cache" / "models--Wan-AI--Wan2.1-T2V-1.3B-Diffusers" / "snapshots" / SHA
    assert asked[0] == ["model_index.json"]
    assert "transformer/*" not in asked[1] and "vae/*" in asked[1] and "transformer/config.json" in asked[1]

    # A failing download: one line, naming the cache path and the command.
    def broken_hub(repo_id, *, cache_dir, allow_patterns, local_files_only):
        if local_files_only:
            return real(repo_id, cache_dir=cache_dir, allow_patterns=allow_patterns, local_files_only=True)
        raise ConnectionError("[Errno -2] Name or service not known\nmore lines")

    monkeypatch.setattr(hub, "_download", broken_hub)
    with pytest.raises(hub.ModelNotFoundError) as e:
        hub.resolve_model("Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    msg = str(e.value)
    assert "\n" not in msg and "downloading it from the Hugging Face Hub failed (ConnectionError" in msg
    assert (
        "models--Wan-AI--Wan2.2-T2V-A14B-Diffusers" in msg and "`hf download Wan-AI/Wan2.2-T2V-A14B-Diffusers`" in msg
    )


# ----------------------------------------------------------------------------- the commands, by Hub id
def test_generate_by_hub_id(offline, tiny_wan_folder, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    args = [
        "generate",
        "--model",
        REPO,
        "--prompt",
        "a cat",
        *SMALL,
        "--steps",
        "2",
        "--block-size",
        "64",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and f"hf download {REPO}" in err
    assert not out.exists()

    put_in_cache(offline, tiny_wan_folder)
    done = run_command(args)
    assert done.code == 0 and (done.report["pipeline"], done.report["model"]) == ("WanPipeline", REPO)
    assert done.report["video"] == str(out) and out.stat().st_size > 0


def test_encode_and_train_lora_by_hub_id(offline, tiny_wan_folder, tmp_path, capsys):
    vids = tmp_path / "videos"
    vids.mkdir()
    _write_clip(vids / "clip.mp4")
    (vids / "clip.txt").write_text("a red cat walks on the beach")
    data = tmp_path / "data"
    encode = [
        "encode",
        "--model",
        REPO,
        "--videos",
        str(vids),
        "--output",
        str(data),
        "--height",
        "64",
        "--width",
        "64",
        "--frames",
        "9",
        "--max-sequence-length",
        "16",
        "--no-progress",
        "--device",
        "cpu",
    ]
    train = [
        "train-lora",
        "--model",
        REPO,
        "--data",
        str(data),
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
        "--device",
        "cpu",
    ]
    for args in (encode, train):  # nothing cached: one message each, no traceback
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert str(hub.cache_repo_dir(REPO)) in err and f"hf download {REPO}" in err

    put_in_cache(offline, tiny_wan_folder)
    done = run_command(encode)
    assert done.code == 0 and (done.report["samples"], done.report["model_family"]) == (1, "wan")
    assert json.loads((data / "manifest.json").read_text())["source"]["model"] == REPO
    done = run_command(train)
    assert done.code == 0 and done.report["steps"] == 1
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    # The flow shift came from the cached snapshot's scheduler config (the tiny one says 3.0).
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["shift"] == 3.0


def test_train_lora_mistyped_model_name(tmp_path, capsys):
    rc = main(["train-lora", "--model", "tiny-wna", "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (
        "'tiny-wna' is not a Hugging Face Hub id of the form org/name, nor a built-in tiny model (tiny-wan, tiny-hunyuan)"
        in err
    )


def test_train_lora_a14b_expert_boundary_from_the_cached_snapshot(offline, tmp_path):
    """expert_timestep_range and load_transformer read a Hub id's cached model_index.json."""
    from radial_attention.testing import tiny
    from radial_attention.train.model import expert_timestep_range, load_transformer

    folder = tmp_path / "a14b"
    tiny.tiny_wan_pipeline("a14b", num_layers=1).save_pretrained(folder)
    repo = "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    put_in_cache(offline, folder, repo)
    assert expert_timestep_range(repo, "transformer") == (875.0, 1000.0)
    assert expert_timestep_range(repo, "transformer_2") == (0.0, 875.0)
    assert type(load_transformer(repo, subfolder="transformer_2")).__name__ == "WanTransformer3DModel"


def test_partial_weights_and_pickled_weights_are_one_clear_error(offline, tiny_wan_folder, tmp_path, capsys):
    """A snapshot missing a weights file, and a folder whose VAE is only a pickled .bin (which
    must not be loaded: it could run code), each stop with one line naming the folder."""
    from safetensors.torch import load_file

    snap = put_in_cache(offline, tiny_wan_folder)
    weights = snap / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    weights.unlink()
    args = ["generate", "--prompt", "a cat", *SMALL, "--steps", "1", "--out", str(tmp_path / "v.mp4")]
    assert main(["generate", "--model", REPO, *args[1:]]) == 2
    err = capsys.readouterr().err  # also diffusers' loading bar and its own log line
    assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1
    assert f"could not load {REPO!r} from {snap}" in err and f"`hf download {REPO}`" in err

    torch.save(state, snap / "vae" / "diffusion_pytorch_model.bin")  # what diffusers would unpickle
    local = tmp_path / "pickled"
    shutil.copytree(snap, local)
    assert main(["generate", "--model", str(local), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert f"could not load {str(local)!r}" in err and "diffusion_pytorch_model.safetensors" in err
    assert not (tmp_path / "v.mp4").exists()


# ----------------------------------------------------------------------------- generate: outputs and report
@pytest.mark.parametrize(
    "out, fps, expected",
    [
        ("video.txt", "16", "--out must end in .mp4 or .gif, got"),
        ("video.mp4", "-5", "argument --fps: expected a positive integer (>= 1), got '-5'"),
        ("video.mp4", "0", "argument --fps: expected a positive integer (>= 1), got '0'"),
        ("a-file/video.mp4", "16", "a-file is a file, not a folder"),
    ],
)
def test_generate_refuses_bad_outputs_before_loading(tmp_path, capsys, monkeypatch, out, fps, expected):
    import radial_attention.cli.generate_cmd as gen_cmd

    (tmp_path / "a-file").write_text("not a folder")

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(gen_cmd, "load_pipeline", must_not_load)
    rc = main(["generate", "--model", "x/y", "--prompt", "p", "--out", str(tmp_path / out), "--fps", fps])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err


def test_generate_reports_schedule_steps_lora_and_frames(tiny_wan_folder, tmp_path, capsys, monkeypatch):
    # The report's values (what generate prints is made of them).
    import radial_attention.cli.generate_cmd as gen_cmd
    from radial_attention.train.lora import add_lora, save_lora
    from radial_attention.testing import tiny

    t = tiny.tiny_wan_transformer("t2v", num_layers=3)
    add_lora(t, "wan", rank=2, init_seed=1)
    save_lora(t, "wan", tmp_path / "lora")
    gif = tmp_path / "out" / "v.gif"
    common = [
        "generate",
        "--model",
        str(tiny_wan_folder),
        "--prompt",
        "a cat",
        *SMALL[:4],
        "--frames",
        "10",
        *SMALL[6:],
        "--steps",
        "3",
        "--block-size",
        "64",
    ]
    done = run_command(common + ["--lora", str(tmp_path / "lora"), "--lora-scale", "0.5", "--out", str(gif)])
    assert done.code == 0
    r = done.report
    assert r["loras"] == [dict(folder=str(tmp_path / "lora"), into="transformer", scale=0.5)]
    assert (r["frames_asked"], r["frames"]) == (10, 9)  # rounded down to 4k+1
    # Wan2.1's recommended schedule by default: 12 dense steps (all 3 here), the first block dense.
    radial = r["radial"]
    assert (radial["preset"], radial["dense_steps"], radial["dense_last_steps"], radial["dense_layers"]) == (
        "wan",
        12,
        0,
        1,
    )
    assert radial["schedule"] == "wan preset's recommended schedule"
    assert len(r["step_seconds"]) == 3 and (r["dense_steps_timed"], r["radial_steps_timed"]) == (3, 0)
    import imageio.v3 as iio

    assert iio.improps(gif).shape[:3] == (9, 64, 64)

    # Explicit flags override; the per-step times split into dense and radial steps.
    done = run_command(common + ["--dense-steps", "1", "--dense-layers", "0", "--out", str(tmp_path / "v.mp4")])
    assert done.code == 0
    radial = done.report["radial"]
    assert (radial["dense_steps"], radial["dense_last_steps"], radial["dense_layers"]) == (1, 0, 0)
    assert radial["schedule"] == "from the command line"
    assert (done.report["dense_steps_timed"], done.report["radial_steps_timed"]) == (1, 2)
    assert done.report["video_shape"] == [9, 64, 64, 3] and os.path.getsize(tmp_path / "v.mp4") > 0

    # A writer that quietly writes nothing is an error, not "video written".
    monkeypatch.setattr(gen_cmd, "write_mp4", lambda frames, path, fps: None)
    assert main(common + ["--out", str(tmp_path / "empty.mp4")]) == 2
    assert "produced no file" in capsys.readouterr().err


def test_recommended_schedule_per_family():
    from radial_attention.cli.generate_cmd import recommended_schedule
    from radial_attention.testing import tiny

    assert recommended_schedule(tiny.tiny_wan_pipeline("t2v", num_layers=1), None) == ("wan", 12, 1)
    assert recommended_schedule(tiny.tiny_wan_pipeline("a14b", num_layers=1), None) == ("wan2.2", 11, 1)
    assert recommended_schedule(tiny.tiny_hunyuan_pipeline(), None) == ("hunyuan", 12, 0)
    assert recommended_schedule(tiny.tiny_hunyuan_pipeline(), "wan2.2") == ("wan2.2", 11, 1)  # --preset decides


# ----------------------------------------------------------------------------- tiny-pipeline
def test_tiny_pipeline_command(tiny_wan_folder, tmp_path, capsys):
    index = json.loads((tiny_wan_folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and hub.pipeline_components(index) == [
        "scheduler",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    ]
    assert main(["tiny-pipeline", str(tiny_wan_folder)]) == 2  # not an empty folder: refused
    assert "already exists" in capsys.readouterr().err
    assert main(["tiny-pipeline", "--family", "hunyuan", str(tmp_path / "h")]) == 0
    assert json.loads((tmp_path / "h" / "model_index.json").read_text())["_class_name"] == "HunyuanVideoPipeline"
    assert os.path.isfile(tmp_path / "h" / "transformer" / "config.json")
