"""The ``radial-attention`` command. Each subcommand lives in its own module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (args -> exit code)."""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radial-attention",
        description="Radial Attention for video diffusion transformers: masks, kernels, diffusers integration, LoRA training.",
    )
    from radial_attention import __version__

    parser.add_argument("--version", action="version", version=f"radial-attention {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"radial-attention {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
