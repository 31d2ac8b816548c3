#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv (CPU torch, pinned Triton), installs the
# project, then runs what you ask.
#   bash run.sh demo      the main job on an embedded default model (no download)
#   bash run.sh test      the test suite (CI's first job; .ci/run adds lint, wheel and min-versions)
#   bash run.sh lint      ruff check and ruff format --check (CI's second job)
#   bash run.sh <args>    any `radial-attention` subcommand, e.g. `bash run.sh mask --model wan2.1 --height 720 --width 1280 --frames 81`
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
step() { echo "run.sh: $*" >&2; }
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed-v1 ] || [ pyproject.toml -nt .venv/.installed-v1 ]; then
  # First run (or pyproject.toml changed): a few minutes, mostly downloading torch. pip prints what it
  # fetches and installs (no -q), with its progress bars on a terminal.
  step "[1/3] creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
  # torch is pinned to the CPU build that the package index of this environment serves;
  # Triton 3.6.0 is the version on the GPU machine too (the interpreter tests need it here).
  step "[2/3] installing torch 2.13.0 (CPU) and triton 3.6.0 (the largest download)"
  .venv/bin/python -m pip install --disable-pip-version-check torch==2.13.0 triton==3.6.0
  # dev = test (pytest, hypothesis) + ruff, the linter CI runs.
  step "[3/3] installing radial-attention and its extras (diffusers, train, plot, dev)"
  .venv/bin/python -m pip install --disable-pip-version-check -e ".[dev,diffusers,train,plot]"
  touch .venv/.installed-v1
  step "environment ready in .venv"
fi
cmd=${1:-demo}
case "$cmd" in
  test) shift; exec .venv/bin/python -m pytest -q "$@" ;;
  lint) shift; .venv/bin/ruff check "${@:-.}" && exec .venv/bin/ruff format --check "${@:-.}" ;;
  *) exec .venv/bin/radial-attention "$@" ;;
esac
