"""The attention benchmark as a script: ``python benchmarks/attention.py [options]`` is
``radial-attention bench [options]`` (the harness lives in :mod:`radial_attention.bench.attention`,
so that it ships with the package; see there for what it measures).

    python benchmarks/attention.py --out results/            # every case, on a GPU
    TRITON_INTERPRET=1 python benchmarks/attention.py --smoke --device cpu   # tiny, on the CPU
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout without an install

from radial_attention.bench.attention import main  # noqa: E402
from radial_attention.cli.args import HelpFormatter  # noqa: E402
from radial_attention.cli.bench_cmd import DESCRIPTION, add_arguments  # noqa: E402


def build_arg_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(build_arg_parser().parse_args()))
