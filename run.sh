#!/usr/bin/env bash
# One entry point for a fresh machine: makes .venv (CPU torch, pinned Triton), installs the
# project, then runs what you ask.
#   bash run.sh demo      the main job on an embedded default model (no download)
#   bash run.sh test      the test suite (the same command CI runs)
#   bash run.sh <args>    any `radial-attention` subcommand, e.g. `bash run.sh mask --model wan2.1 --height 720 --width 1280 --frames 81`
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed-v1 ] || [ pyproject.toml -nt .venv/.installed-v1 ]; then
  "$PY" -m venv .venv
  # torch is pinned to the CPU build that the package index of this environment serves;
  # Triton 3.6.0 is the version on the GPU machine too (the interpreter tests need it here).
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 triton==3.6.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,diffusers,train,plot]"
  touch .venv/.installed-v1
fi
cmd=${1:-demo}
case "$cmd" in
  test) shift; exec .venv/bin/python -m pytest -q "$@" ;;
  *) exec .venv/bin/radial-attention "$@" ;;
esac
