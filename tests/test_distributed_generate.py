"""``radial-attention generate`` on 2 CPU processes under torchrun (gloo) writes the same video as
one process: the tiny Wan pipeline's tokens split with diffusers' Ulysses context parallelism,
radial attention on the whole sequence (mask keeping 56% of the blocks)."""

import subprocess
import sys

import pytest

pytest.importorskip("diffusers")
imageio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")

from radial_attention.cli.main import main, run_command  # noqa: E402

# 64x64 px, 33 frames: latent 9 frames x 4x4 = 144 tokens (3 blocks of 64), 72 per process.
ARGS = [
    "generate",
    "--prompt",
    "a cat walking in the snow",
    "--height",
    "64",
    "--width",
    "64",
    "--frames",
    "33",
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
    "--device",
    "cpu",
    "--backend",
    "reference",
]


# Runs one command line under torchrun and writes each process's exit code, report and printed text
# to OUT/rank<R>.json (argv: OUT, then the command line).
DRIVER = """
import contextlib, io, json, os, sys
from radial_attention.cli.main import run_command

printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    done = run_command(sys.argv[2:])
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump({"code": done.code, "report": done.report, "printed": printed.getvalue()}, f)
sys.exit(done.code)
"""


def test_generate_on_two_processes_equals_one_process(tmp_path):
    import json

    import numpy as np

    from radial_attention.testing import tiny

    folder = tmp_path / "tiny-wan"
    tiny.tiny_wan_pipeline("t2v", num_layers=2).save_pretrained(folder)
    one, two = tmp_path / "one.mp4", tmp_path / "two.mp4"
    done = run_command(ARGS + ["--model", str(folder), "--out", str(one)])
    # 3 steps x 2 blocks x 2 calls (classifier-free guidance): the first step dense.
    assert done.code == 0 and (done.report["radial_calls"], done.report["dense_calls"]) == (8, 4)
    assert done.report["sequence_parallel"] is None

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(driver),
            str(tmp_path),
        ]
        + ARGS
        + ["--model", str(folder), "--out", str(two), "--sequence-parallel", "2"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all_gather_tensor" not in proc.stderr  # diffusers' deprecated torch call: silenced (cli/quiet.py)
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for rank in (rank0, rank1):  # each process runs every block on its share of the tokens
        assert rank["code"] == 0 and rank["report"]["sequence_parallel"] == {"degree": 2, "backend": "gloo"}
        assert (rank["report"]["radial_calls"], rank["report"]["dense_calls"]) == (8, 4)
    # Rank 0 alone prints and writes the video.
    assert rank0["printed"] and rank1["printed"] == ""
    assert rank0["report"]["video"] == str(two) and rank1["report"]["video"] is None
    a = np.stack(imageio.mimread(one)).astype(np.int16)
    b = np.stack(imageio.mimread(two)).astype(np.int16)
    assert a.shape == b.shape == (33, 64, 64, 3)
    # Identical float frames encode identically; allow a stray rounding flip, nothing more.
    assert np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()


def test_sequence_parallel_without_torchrun_is_a_clear_error(tmp_path, capsys):
    rc = main(ARGS + ["--model", str(tmp_path / "none"), "--out", str(tmp_path / "v.mp4"), "--sequence-parallel", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--sequence-parallel 2 needs 2 processes" in err and "torchrun --standalone --nproc-per-node 2" in err


def test_token_count_check_of_a_pipeline():
    from radial_attention.integrations.diffusers.context_parallel import check_sequence_parallel
    from radial_attention.cli.sequence_parallel import _video_tokens
    from radial_attention.testing import tiny

    pipe = tiny.tiny_wan_pipeline("t2v", num_layers=1)
    # 48x48 px, 9 frames: 3 latent frames x (48/8/2)^2 = 3 x 9 = 27 tokens.
    assert _video_tokens(pipe, pipe.transformer, 48, 48, 9) == 27
    assert _video_tokens(pipe, pipe.transformer, 64, 64, 33) == 144
    with pytest.raises(ValueError, match="the video has 27 tokens, which 2 ranks cannot split evenly"):
        check_sequence_parallel(pipe, 2, seq_len=27)
