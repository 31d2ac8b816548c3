"""The ``radial-attention`` command. Each subcommand lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (args -> exit code, or a
report dict of the values it printed: :func:`run_command` hands it back, for tests and scripts).

Errors: a user error (a bad argument, a missing file, bad data: ``ValueError`` and its
subclasses such as :class:`~radial_attention.cli.args.UsageError`, ``FileNotFoundError`` and the
other path errors, a missing optional package) is printed as one line,
``radial-attention CMD: error: ...``, with exit code 2. Anything else is a bug and keeps its
traceback. ``--debug`` (or ``RADIAL_ATTENTION_DEBUG=1``) shows the traceback of user errors too,
and the library notices that :mod:`radial_attention.cli.quiet` otherwise hides.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from typing import Optional
from importlib import import_module

from radial_attention.cli.args import HelpFormatter, Parser
from radial_attention.cli.quiet import quiet_library_notices

# One module per subcommand; a module is imported only to build its parser (keep imports inside
# the command functions so `radial-attention mask` stays light).
SUBCOMMAND_MODULES = [
    "radial_attention.cli.mask_cmd",
    "radial_attention.cli.demo_cmd",
    "radial_attention.cli.generate_cmd",
    "radial_attention.cli.train_cmd",
    "radial_attention.cli.encode_cmd",
    "radial_attention.cli.bench_cmd",
    "radial_attention.cli.tiny_cmd",
]

# Exceptions that mean "the user asked for something that cannot be done", not "the code is wrong".
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ModuleNotFoundError,
)
DEBUG_ENV = "RADIAL_ATTENTION_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="radial-attention",
        description="Radial Attention for video diffusion transformers: masks, kernels, diffusers integration, LoRA training.",
        formatter_class=HelpFormatter,
    )
    from radial_attention import __version__

    parser.add_argument("--version", action="version", version=f"radial-attention {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of user errors too (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if isinstance(e, ModuleNotFoundError) and e.name:
        text += (
            f" (an optional dependency: pip install 'radial-attention[diffusers,train,plot]' or the package {e.name!r})"
        )
    return text or type(e).__name__


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one command line did: its exit ``code`` and the ``report`` its command returned (the
    values it printed, as a dict: see each command's ``run``), or None (an error, ``--help``, or a
    command that reports nothing). For tests and scripts; the command line itself prints."""

    code: int
    report: Optional[dict] = None


def run_command(argv=None) -> Outcome:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) as :func:`main` does, returning the
    exit code and the command's report. A command's ``func`` returns an exit code, or a report
    dict (exit code 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage error (2) or --help / --version (0)
        return Outcome(e.code if isinstance(e.code, int) else (0 if e.code is None else 2))
    if not getattr(args, "func", None):
        parser.print_help()
        return Outcome(2)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with contextlib.nullcontext() if debug else quiet_library_notices():
            result = args.func(args)
    except USER_ERRORS as e:
        # A module of this package that cannot be imported is a bug, not a missing optional package.
        if debug or (isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "radial_attention"):
            raise
        print(f"radial-attention {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return Outcome(2)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"radial-attention {args.command}: interrupted", file=sys.stderr)
        return Outcome(130)
    if isinstance(result, dict):
        return Outcome(0, result)
    return Outcome(int(result or 0))


def main(argv=None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code (argparse's
    own usage errors and ``--help`` included, so that ``main([...])`` never raises SystemExit)."""
    return run_command(argv).code


if __name__ == "__main__":
    sys.exit(main())
