"""Every subcommand turns bad arguments into one error line and exit code 2, before any real work.

Run in-process through ``main(argv)`` (fast); two subprocess runs prove the real exit code and
``python -m radial_attention``.
"""

import argparse
import os
import subprocess
import sys

import pytest
import torch

from radial_attention.cli import args as args_mod
from radial_attention.cli import main as cli_main
from radial_attention.cli.args import HelpFormatter, UsageError
from radial_attention.cli.main import build_parser, main

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error for a machine without CUDA")


def _bad_cases(tmp):
    """(argv, a fragment the error line must contain) per bad command line."""
    a_file = tmp / "a-file.txt"
    a_file.write_text("x")
    no_weights = tmp / "lora-without-weights"
    no_weights.mkdir(exist_ok=True)
    (no_weights / "README.md").write_text("no weights here")
    gen = ["generate", "--model", str(tmp / "pipe"), "--prompt", "p"]
    train = ["train-lora", "--model", "tiny-wan", "--data", str(tmp / "data"), "--output", str(tmp / "run")]
    enc = [
        "encode",
        "--model",
        str(tmp / "pipe"),
        "--output",
        str(tmp / "enc"),
        "--height",
        "64",
        "--width",
        "64",
        "--frames",
        "9",
    ]
    cases = [
        # mask
        (["mask", "--heads", "0"], "argument --heads: expected a positive integer"),
        (["mask", "--height", "0"], "argument --height: expected a positive integer"),
        (["mask", "--head-dim", "-3"], "argument --head-dim"),
        (["mask", "--decay", "nan"], "argument --decay: expected a finite number"),
        (["mask", "--latent-frames", "5"], "--latent-frames and --tokens-per-frame go together"),
        (["mask", "--latent-frames", "100000", "--tokens-per-frame", "100000"], "at most 8,192 blocks a side"),
        (["mask", "--model", "nope"], "unknown model family 'nope'"),
        (["mask", "--preset", "nope"], "unknown radial preset 'nope'"),
        (["mask", "--png", str(tmp / "m.jpg")], "expected a file name ending in .png"),
        # demo
        (["demo", "--steps", "1"], "no step would run radial attention"),
        (["demo", "--layers", "0"], "argument --layers: expected a positive integer"),
        (["demo", "--layers", "2", "--dense-layers", "2"], "no block would run radial attention"),
        (["demo", "--frames", "0"], "argument --frames"),
        (["demo", "--repeats", "0"], "argument --repeats"),
        # generate
        (gen + ["--max-sequence-length", "0"], "argument --max-sequence-length: expected a positive integer"),
        (gen + ["--lora", str(no_weights)], "no .safetensors file"),
        (gen + ["--lora", str(tmp / "missing")], "does not exist"),
        (gen + ["--out", ""], "argument --out: expected a file path, got an empty string"),
        (gen + ["--out", str(tmp)], "is a folder"),
        (gen + ["--steps", "0"], "argument --steps"),
        (gen + ["--lora-scale", "inf"], "argument --lora-scale: expected a finite number"),
        (gen + ["--collective-timeout", "0"], "argument --collective-timeout: expected a number > 0"),
        (gen + ["--sequence-parallel", "0"], "argument --sequence-parallel"),
        (gen + ["--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        # train-lora
        (train + ["--eval-samples", "0"], "argument --eval-samples: expected a positive integer"),
        (train + ["--max-grad-norm", "nan"], "argument --max-grad-norm: expected a finite number"),
        (train + ["--max-grad-norm", "-1"], "argument --max-grad-norm: expected a number >= 0"),
        (train[:-1] + [""], "argument --output: expected a folder path, got an empty string"),
        (train[:-1] + [str(a_file)], "is an existing file"),
        (train + ["--lr", "0"], "argument --lr: expected a number > 0"),
        (train + ["--lora-dropout", "1"], "argument --lora-dropout: expected a number in [0, 1)"),
        (train + ["--adam-betas", "0.9,1.5"], "argument --adam-betas: expected two finite comma-separated"),
        (train + ["--lora-rank", "0"], "argument --lora-rank: expected a positive integer"),
        (train + ["--rank", "0"], "argument --rank: expected a positive integer"),  # the deprecated name
        (train + ["--collective-timeout", "-1"], "argument --collective-timeout"),
        # encode
        (enc + ["--max-sequence-length", "0"], "argument --max-sequence-length: expected a positive integer"),
        (enc[:4] + [str(a_file)] + enc[5:], "is an existing file"),
        (enc[:-1] + ["0"], "argument --frames"),
        (enc + ["--frame-stride", "0"], "argument --frame-stride"),
        # bench
        (["bench", "--impls", "nope"], "argument --impls: invalid choice: 'nope'"),
        (["bench", "--cases", "nope"], "argument --cases: invalid choice: 'nope'"),
        (["bench", "--budget", "0"], "argument --budget"),
        (["bench", "--out", str(a_file)], "is an existing file"),
        (["bench", "--device", "cpu", "--cases", "wan14b-720p-81f"], "on a CPU, wan14b-720p-81f (75,600 tokens)"),
        # the top level
        (["nope"], "invalid choice: 'nope'"),
    ]
    if not torch.cuda.is_available():
        for argv in (["demo"], gen, train, enc, ["bench"]):
            cases.append((argv + ["--device", "cuda"], "CUDA is not available here"))
    return cases


def test_every_subcommand_reports_bad_arguments_in_one_line(tmp_path, capsys):
    cases = _bad_cases(tmp_path)
    commands = {argv[0] for argv, _ in cases}
    assert commands >= {"mask", "demo", "generate", "train-lora", "encode", "bench"}
    for argv, fragment in cases:
        rc = main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 2, (argv, rc, err)
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert lines[0].startswith("radial-attention"), (argv, err)
        assert ": error: " in lines[0] and fragment in lines[0], (argv, fragment, lines[0])
    # nothing was written by a refused command
    assert not (tmp_path / "run").exists() and not (tmp_path / "enc").exists()


def test_usage_errors_come_before_heavy_imports(tmp_path):
    """A bad argument stops argparse before diffusers is imported (the checks run first)."""
    code = (
        "import sys; from radial_attention.cli.main import main; "
        "rc = main(['train-lora', '--model', 'tiny-wan', '--data', 'd', '--output', 'o', '--eval-samples', '0']); "
        "print(rc, 'diffusers' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr


def test_real_exit_code_through_python_m(tmp_path):
    """`python -m radial_attention` (the package's __main__) exits 2 with one line for a user error."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-m", "radial_attention", "mask", "--heads", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "radial-attention mask: error: argument --heads: expected a positive integer (>= 1), got '0' "
        "(see radial-attention mask --help)"
    ]
    r = subprocess.run(
        [sys.executable, "-m", "radial_attention", "mask", "--latent-frames", "2", "--tokens-per-frame", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.strip() and not r.stderr  # the report on stdout, nothing on stderr


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch, capsys):
    with pytest.raises(UsageError, match="go together"):
        main(["--debug", "mask", "--latent-frames", "5"])
    monkeypatch.setenv(cli_main.DEBUG_ENV, "1")
    with pytest.raises(UsageError):
        main(["mask", "--latent-frames", "5"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors become one line; anything else (a bug) propagates."""
    from radial_attention.cli import mask_cmd

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mask_cmd, "run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["mask"])


def test_missing_internal_module_is_a_bug_not_a_user_error(monkeypatch):
    from radial_attention.cli import mask_cmd

    def broken(args):
        raise ModuleNotFoundError("No module named 'radial_attention.nope'", name="radial_attention.nope")

    monkeypatch.setattr(mask_cmd, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["mask"])


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_help_shows_every_default_once(capsys):
    parser, subs = _subparsers()
    assert set(subs) == {"mask", "demo", "generate", "train-lora", "encode", "bench", "tiny-pipeline"}
    for name, sub in subs.items():
        assert sub.formatter_class is HelpFormatter, name
        fmt = HelpFormatter(name)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = (fmt._get_help_string(action) or "").replace("%(default)s", "X")
            assert text, f"{name} {action.option_strings}: no help text"
            assert text.count("(default") <= 1, f"{name} {action.option_strings}: {text!r}"
            if action.default not in (None, False) and not action.required:
                assert "(default" in text, f"{name} {action.option_strings}: default {action.default!r} not shown"
        assert main([name, "--help"]) == 0
        shown = capsys.readouterr().out
        assert "(default: None)" not in shown and "(default: False)" not in shown, name


def test_bench_offers_the_packaged_harness_cases():
    """`bench --cases` offers exactly the cases the packaged harness runs (it once loaded
    benchmarks/attention.py by path, which a wheel does not have)."""
    import radial_attention
    from radial_attention.bench import attention

    (cases_action,) = [a for a in _subparsers()[1]["bench"]._actions if "--cases" in a.option_strings]
    assert set(cases_action.choices) == set(attention.CASES) | set(attention.CPU_CASES) | set(attention.SMOKE_CASES)
    assert set(cases_action.choices) >= {"wan14b-720p-81f", "cpu-wan1.3b-480p-17f", "smoke-wan"}
    assert attention.__file__.startswith(os.path.dirname(radial_attention.__file__))


def test_library_notices_are_silenced_one_message_at_a_time(monkeypatch):
    """The torchvision fallback notice (transformers) and torch's all_gather_tensor FutureWarning are
    hidden in a CLI run; other warnings and records of the same loggers and categories still show."""
    import logging
    import warnings

    from radial_attention.cli import mask_cmd

    logger = logging.getLogger("transformers.utils.import_utils")
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    def noisy(args):
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to "
            "`CLIPImageProcessorPil` for backward compatibility."
        )
        logger.warning("another transformers notice")
        warnings.warn(
            "`torch.distributed._functional_collectives.all_gather_tensor` is deprecated. Please use "
            "`torch.distributed._functional_collectives.all_gather_single` instead.",
            FutureWarning,
        )
        warnings.warn("some other future change", FutureWarning)
        return 0

    monkeypatch.setattr(mask_cmd, "run", noisy)
    handler = Collect()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["mask"]) == 0
            quiet = ([str(w.message) for w in caught], list(seen))
            caught.clear()
            seen.clear()
            assert main(["--debug", "mask"]) == 0  # --debug shows everything
            loud = ([str(w.message) for w in caught], list(seen))
    finally:
        logger.removeHandler(handler)
    assert quiet == (["some other future change"], ["another transformers notice"])
    assert len(loud[0]) == 2 and len(loud[1]) == 2
    assert not logger.filters  # the filter is gone after the run


def test_collective_timeout_reaches_the_process_group(monkeypatch, tmp_path):
    """--collective-timeout goes to init_process_group, for train-lora (DDP) and generate (sequence parallel)."""
    import datetime

    import torch.distributed as dist

    from radial_attention.distributed import launch
    from radial_attention.cli.sequence_parallel import SequenceParallelRun
    from radial_attention.train import data_parallel as dp

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: seen.append(kw["timeout"]))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    for key, value in {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(key, value)
    dp.setup("cpu", timeout_s=42.0)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)
    SequenceParallelRun.start(2, timeout_s=7.0)
    assert seen == [datetime.timedelta(seconds=42), datetime.timedelta(seconds=7)]


def test_cli_passes_the_collective_timeout_on(monkeypatch, tmp_path, capsys):
    from radial_attention.cli import sequence_parallel as sp_generate
    from radial_attention.train import trainer

    got = {}

    class Stop(ValueError):
        pass

    def fake_trainer(cfg, **kw):
        got["train"] = cfg.collective_timeout_s
        raise Stop("stopped after the config")

    def fake_start(degree, timeout_s):
        got["generate"] = timeout_s
        raise Stop("stopped after the config")

    monkeypatch.setattr(trainer, "LoRATrainer", fake_trainer)
    monkeypatch.setattr(sp_generate.SequenceParallelRun, "start", staticmethod(fake_start))
    assert (
        main(
            [
                "train-lora",
                "--model",
                "tiny-wan",
                "--data",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--collective-timeout",
                "42",
            ]
        )
        == 2
    )
    assert main(["generate", "--model", str(tmp_path), "--prompt", "p", "--collective-timeout", "7.5"]) == 2
    assert got == {"train": 42.0, "generate": 7.5}
    assert capsys.readouterr().err.count("stopped after the config") == 2


def test_train_config_rejects_nan_clipping_and_zero_eval_samples():
    from radial_attention.train import TrainConfig

    with pytest.raises(ValueError, match="max_grad_norm must be a finite number >= 0"):
        TrainConfig(model="m", data="d", output_dir="o", max_grad_norm=float("nan"))
    with pytest.raises(ValueError, match="eval_samples must be a positive integer"):
        TrainConfig(model="m", data="d", output_dir="o", eval_samples=0)
    with pytest.raises(ValueError, match="collective_timeout_s"):
        TrainConfig(model="m", data="d", output_dir="o", collective_timeout_s=0.0)
    assert TrainConfig(model="m", data="d", output_dir="o", max_grad_norm=0.0).max_grad_norm == 0.0


@pytest.mark.parametrize(
    "validator, good, bad, expected",
    [
        (args_mod.positive_int, ("1", 1), "0", "expected a positive integer (>= 1), got '0'"),
        (args_mod.nonneg_int, ("0", 0), "-1", "expected a non-negative integer (>= 0), got '-1'"),
        (args_mod.finite_float, ("-2.5", -2.5), "inf", "expected a finite number, got 'inf'"),
        (args_mod.positive_float, ("0.5", 0.5), "0", "expected a number > 0, got '0'"),
        (args_mod.nonneg_float, ("0", 0.0), "-0.1", "expected a number >= 0, got '-0.1'"),
        (args_mod.fraction, ("0", 0.0), "1", "expected a number in [0, 1), got '1'"),
        (args_mod.fraction, ("0.99", 0.99), "nan", "expected a finite number, got 'nan'"),
    ],
)
def test_number_validators_accept_the_boundary_and_name_the_range(validator, good, bad, expected):
    text, value = good
    assert validator(text) == value
    with pytest.raises(argparse.ArgumentTypeError) as err:
        validator(bad)
    assert str(err.value) == expected


@pytest.mark.parametrize("cuda", [False, True])
def test_resolve_device_picks_cuda_for_auto_only_when_there_is_one(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    for auto in ("auto", None):
        assert args_mod.resolve_device(auto) == torch.device("cuda" if cuda else "cpu")
    assert args_mod.resolve_device("cpu") == torch.device("cpu")
    assert args_mod.resolve_device("cuda:1") == torch.device("cuda", 1)  # explicit names are kept as given


@pytest.mark.parametrize("cuda", [False, True])
def test_resolve_dtype_takes_both_spellings_and_picks_bf16_for_auto_on_cuda(cuda):
    # One helper for the commands' --dtype (encode: fp32/bf16/fp16, generate and bench: torch's names).
    device = torch.device("cuda" if cuda else "cpu")
    for auto in ("auto", None):
        assert args_mod.resolve_dtype(auto, device) == (torch.bfloat16 if cuda else torch.float32)
        assert args_mod.resolve_dtype(auto, str(device)) == args_mod.resolve_dtype(auto, device)
    for short, name in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")):
        assert args_mod.resolve_dtype(short, device) == args_mod.resolve_dtype(name, device) == getattr(torch, name)


def test_run_command_hands_back_the_exit_code_and_the_report(monkeypatch, capsys):
    from radial_attention.cli import mask_cmd
    from radial_attention.cli.main import Outcome, run_command

    done = run_command(["mask", "--latent-frames", "2", "--tokens-per-frame", "10"])
    assert done.code == 0 and done.report["seq_len"] == 20 and done.report["png"] is None
    assert run_command(["mask", "--heads", "0"]) == Outcome(2)  # argparse's usage error: no report
    assert run_command(["mask", "--help"]) == Outcome(0)
    assert run_command(["mask", "--height", "100"]) == Outcome(2)  # the command's own ValueError
    monkeypatch.setattr(mask_cmd, "run", lambda args: 3)  # a command that returns an exit code
    assert run_command(["mask"]) == Outcome(3) and main(["mask"]) == 3
