#!/usr/bin/env bash
# Sequence-parallel scaling benchmark on every GPU of this machine (1, 2, 4, ... N in one launch):
# attention alone and a Wan2.1-14B transformer forward, dense and radial, 1280x720 at 81 and 161
# frames, each multi-GPU output checked against 1 GPU. Writes benchmarks/results/sequence_parallel_<N>gpu.{json,md}.
#
#   bash examples/benchmark_multi_gpu.sh                # all visible GPUs
#   bash examples/benchmark_multi_gpu.sh 4 --layers 8   # 4 GPUs, extra arguments to the script
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; else NPROC=$(nvidia-smi -L | wc -l); fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
exec torchrun --standalone --nproc-per-node "$NPROC" benchmarks/sequence_parallel.py \
  --out "benchmarks/results/sequence_parallel_${NPROC}gpu" "$@"
