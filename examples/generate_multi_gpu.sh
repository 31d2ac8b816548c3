#!/usr/bin/env bash
# Generate a video with radial attention on N GPUs of one machine (Ulysses sequence parallelism).
#
#   bash examples/generate_multi_gpu.sh 4 --prompt "a cat surfing a wave at sunset"
#   The first argument, if a number, is the GPU count (default: every visible GPU); the rest goes to `generate`.
#
# Each GPU holds the whole pipeline and 1/N of the video tokens; the 14B model's 40 heads allow
# N = 1, 2, 4, 5, 8, 10, 20, 40 (N must divide the heads and the token count: 1280x720 at 81 frames
# is 75,600 tokens, at 161 frames 147,600).
set -euo pipefail
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; else NPROC=$(nvidia-smi -L | wc -l); fi
# NVLink multicast (NVLS) stays off: required on the machines this project runs on.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
# A local folder or a Hub id (read from the Hugging Face cache: `hf download $MODEL` once first,
# so the N processes do not all download it). The dense schedule is the model's recommended one
# (Wan2.1: 12 dense steps, 1 dense block; Wan2.2 A14B: 11, 1); --dense-steps/--dense-layers override.
MODEL=${MODEL:-Wan-AI/Wan2.1-T2V-14B-Diffusers}
exec torchrun --standalone --nproc-per-node "$NPROC" -m radial_attention generate \
  --model "$MODEL" --height 720 --width 1280 --frames 81 --steps 50 \
  --sequence-parallel "$NPROC" \
  --out "${OUT:-radial-sp${NPROC}.mp4}" "$@"
