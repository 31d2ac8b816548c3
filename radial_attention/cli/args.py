"""Argument checking shared by the subcommands: argparse ``type=`` validators, the help formatter
and :class:`UsageError`.

Validators run while argparse parses, so a bad value stops the command with
``radial-attention CMD: error: argument --x: ...`` (exit 2) before torch, a model or data is
loaded. Checks that need several arguments together, or the machine (a CUDA device), raise
:class:`UsageError` from the command; ``main`` reports it the same way.
"""

from __future__ import annotations

import argparse
import math
import os
import sys


class UsageError(ValueError):
    """A user error found by the CLI (bad combination of arguments, missing device...): reported
    as one line and exit code 2, never as a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default once, as ``(default: X)``; nothing is added where the default is
    ``None`` or a flag's ``False``, or where the help text says its default itself ("(default:
    the preset's)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or action.required or "(default" in text:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like the commands' own errors:
    ``radial-attention mask: error: argument --heads: expected ... (see radial-attention mask --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """``sub.add_parser`` with the shared help formatter."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    return sub.add_parser(name, **kwargs)


def add_deprecated_alias(parser, old: str, new_action: argparse.Action) -> None:
    """Accept option ``old`` as a hidden alias of ``new_action`` (same value type and destination)
    for one release; using it prints a one-line deprecation notice to stderr and goes on.

    A separate (hidden) option rather than a second name of the new one, so that ``--help`` shows
    only the new name and an error names the option the user typed (``argument --rank: ...``).
    """
    new = new_action.option_strings[0]

    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            # DeprecationWarning is hidden outside __main__ by default: tell a command-line user directly.
            print(
                f"{parser.prog}: warning: {option_string} is deprecated and goes in radial-attention 0.2; use {new}",
                file=sys.stderr,
            )
            setattr(namespace, self.dest, values)

    # default None: the namespace keeps the new option's default (argparse sets the first one it meets).
    parser.add_argument(
        old,
        action=_Deprecated,
        dest=new_action.dest,
        type=new_action.type,
        choices=new_action.choices,
        metavar=new_action.metavar,
        default=None,
        help=argparse.SUPPRESS,
    )


# ----------------------------------------------------------------------------- numbers
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _expect(value, ok: bool, expected: str, text: str):
    """``value`` if ``ok``, else the argparse error ``expected EXPECTED, got 'TEXT'``."""
    if not ok:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def integer(text: str) -> int:
    """Any integer."""
    return _int(text)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text)
    return _expect(v, v >= 1, "a positive integer (>= 1)", text)


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    v = _int(text)
    return _expect(v, v >= 0, "a non-negative integer (>= 0)", text)


def finite_float(text: str) -> float:
    """A float that is not nan or +-inf (``float('nan')`` would parse and then silently disable
    a comparison such as gradient clipping's)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return _expect(v, math.isfinite(v), "a finite number", text)


def positive_float(text: str) -> float:
    """A finite float > 0."""
    v = finite_float(text)
    return _expect(v, v > 0, "a number > 0", text)


def nonneg_float(text: str) -> float:
    """A finite float >= 0."""
    v = finite_float(text)
    return _expect(v, v >= 0, "a number >= 0", text)


def fraction(text: str) -> float:
    """A float in [0, 1) (a dropout probability)."""
    v = finite_float(text)
    return _expect(v, 0.0 <= v < 1.0, "a number in [0, 1)", text)


def float_pair(what: str, lo: float = -math.inf, hi: float = math.inf):
    """An argparse type for ``A,B`` of finite numbers in ``[lo, hi)``; ``what`` shows an example in the error."""

    def parse(text: str):
        try:
            a, b = (float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected two comma-separated {what}, got {text!r}") from None
        if not all(math.isfinite(x) and lo <= x < hi for x in (a, b)):
            where = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g})"
            raise argparse.ArgumentTypeError(f"expected two finite comma-separated {what}{where}, got {text!r}")
        return (a, b)

    return parse


beta_pair = float_pair("numbers like 0.9,0.999", 0.0, 1.0)  # AdamW's betas
timestep_pair = float_pair("timesteps like 875,1000")


# ----------------------------------------------------------------------------- paths
def output_dir(text: str) -> str:
    """A folder to write into: not empty (``""`` would write into the current folder) and not an
    existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder path, got an empty string")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder, but {os.path.abspath(text)} is an existing file")
    return text


def output_file(text: str) -> str:
    """A file to write: not empty and not an existing folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file path, got an empty string")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file, but {os.path.abspath(text)} is a folder")
    return text


def lora_source(text: str) -> str:
    """A LoRA for ``pipe.load_lora_weights``: a folder holding a ``.safetensors`` file (train-lora
    writes ``pytorch_lora_weights.safetensors``) or such a file itself."""
    path = os.path.expanduser(text)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise argparse.ArgumentTypeError(
                f"expected a LoRA folder or a .safetensors file, got {os.path.abspath(path)}"
            )
        return text
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"LoRA folder {os.path.abspath(path)} does not exist")
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise argparse.ArgumentTypeError(
            f"expected a LoRA folder holding pytorch_lora_weights.safetensors (train-lora writes one), but "
            f"{os.path.abspath(path)} has no .safetensors file"
        )
    return text


# ----------------------------------------------------------------------------- devices
def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine (torch is
    imported only to check one)."""
    name = text.strip().lower()
    if name in ("auto", "cpu"):
        return name
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text!r} asked for, but CUDA is not available here (torch {torch.__version__}"
            f"{', a CPU-only build' if torch.version.cuda is None else ', no GPU visible'}); use --device cpu"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    return name


def resolve_device(name):
    """The ``torch.device`` for a :func:`device_name` value: ``auto`` (or None) is CUDA when one is
    available, else the CPU."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- dtypes
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # short spelling -> torch's


def resolve_dtype(name, device):
    """The ``torch.dtype`` of a ``--dtype`` value: ``float32`` / ``bfloat16`` / ``float16`` or their
    short names ``fp32`` / ``bf16`` / ``fp16``; ``auto`` (or None) is bfloat16 on a CUDA ``device``,
    float32 elsewhere (the CPU has no fast bfloat16 matmuls)."""
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, _DTYPE_NAMES.get(name, name))
