#!/usr/bin/env bash
# The project's GPU run: correctness checks and timings, one device call per group of sections.
#
#   bash benchmarks/run_gpu.sh attention flex      # kernels: attention benchmark + Flex GPU check
#   bash benchmarks/run_gpu.sh attention-long      # Wan 1.3B 161f and HunyuanVideo 4x, Triton/Flex/dense only
#   bash benchmarks/run_gpu.sh pipeline training   # whole transformer forwards, training steps
#   bash benchmarks/run_gpu.sh triton-check training-wan     # kernel correctness; Wan training steps
#   bash benchmarks/run_gpu.sh training-hunyuan sp-1gpu      # HunyuanVideo training; 1-GPU sequence-parallel baseline
#   bash benchmarks/run_gpu.sh triton-check attention-quick  # after a kernel change: correctness, then speed
#   source .gpu-b/install.sh && bash benchmarks/run_gpu.sh gpu-tests attention-peers   # FA4 (see ../shared/tools/gpu-wheels.sh)
#   bash benchmarks/run_gpu.sh pipeline-fa4 training-wan14b-4x attention-peers-4x-bwd
#
# Writes everything under $OUT (the device tool's output folder) or ./gpu-results.
# Missing Python packages (diffusers, peft, flashinfer) are installed from wheels in .whl/ when
# present (see the device notes in benchmarks/NOTES.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Fewer OOMs from fragmentation at the long training lengths (tens of GB per activation).
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
# NVLink multicast stays off on shared machines.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
{
  date -u +"date %Y-%m-%dT%H:%MZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/env.txt"

status=0
run() {  # run NAME SECONDS CMD...: one section with a time limit, its log under $OUT
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.log"
  echo "=== $name rc=$rc"
  [ $rc -eq 0 ] || status=1
}

for section in "$@"; do
  case "$section" in
    attention) run attention 560 python3 benchmarks/attention.py --out "$OUT" ;;
    attention-long)  # the cases the first kernel runs left out, without FlashInfer's minutes of JIT build
      run attention_long 300 python3 benchmarks/attention.py --cases wan1.3b-480p-161f hunyuan-720p-4x \
        --impls triton flex --out "$OUT" ;;
    attention-quick)  # a kernel regression check after a change: two real cases, Triton and Flex beside cuDNN
      run attention_quick 240 python3 benchmarks/attention.py --cases wan14b-720p-81f hunyuan-768p-117f \
        --impls triton flex --dense cudnn --out "$OUT/attention-quick" ;;
    flex) run flex_check 150 python3 benchmarks/flex_check.py --out "$OUT" ;;
    pipeline) run pipeline 270 python3 benchmarks/pipeline.py --out "$OUT" ;;
    training) run training 560 python3 benchmarks/training.py --case-budget-s 10 --out "$OUT" ;;
    # The training benchmark in two device calls: Wan models, then HunyuanVideo added to the Wan
    # results (copy the first call's training.json into benchmarks/results/ in between).
    training-wan) run training_wan 450 python3 benchmarks/training.py --models wan1.3b,wan14b --case-budget-s 10 --out "$OUT" ;;
    training-hunyuan)
      cp benchmarks/results/training.json "$OUT/" 2>/dev/null
      run training_hunyuan 420 python3 benchmarks/training.py --models hunyuan --case-budget-s 10 --append --out "$OUT" ;;
    training-full)  # Wan2.1-1.3B at full depth (30 blocks, the recipe's first 2 dense): checks the per-block estimate
      run training_full_depth 300 python3 benchmarks/training.py --models wan1.3b --layers 30 --radial-dense-layers 2 \
        --case-budget-s 10 --out "$OUT/training-full-depth" ;;
    training-hunyuan-deeper)  # HunyuanVideo 4x with 2+2 blocks: the per-block estimate on the paper's model
      run training_hunyuan_deeper 480 python3 benchmarks/training.py --models hunyuan --lengths 4 --layers 2 \
        --case-budget-s 1 --out "$OUT/training-hunyuan-2x2" ;;
    training-offload)  # Wan2.1-1.3B at 4x, all 30 blocks, radial: checkpointed inputs on the GPU vs in CPU memory
      for mode in off on; do
        run "training_offload_$mode" 150 python3 benchmarks/training.py --models wan1.3b --lengths 4 --layers 30 \
          --radial-dense-layers 2 --variants radial --case-budget-s 1 --out "$OUT/offload-$mode" \
          $([ "$mode" = on ] && echo --offload-checkpoints)
      done ;;
    train-cli)  # the real train-lora CLI on the GPU: radial run, exact resume, dense baseline
      run train_cli_check 300 python3 benchmarks/train_cli_check.py --out "$OUT/train-cli" --work /tmp/train-cli ;;
    sp-1gpu)  # the single-GPU baseline of the sequence-parallel benchmark (the multi-GPU runs need an x2+ machine)
      run sequence_parallel_1gpu 240 torchrun --standalone --nproc-per-node 1 benchmarks/sequence_parallel.py \
        --out "$OUT/sequence_parallel_1gpu" ;;
    gpu-tests)  # the GPU test tier: every CUDA backend against float64, compile, FA4 dense
      run gpu_tests 240 python3 -m pytest -m gpu -q -rs -p no:cacheprovider tests/gpu ;;
    gpu-tests-fa4)  # the fa4 part of the GPU tier only (after an fa4 change)
      run gpu_tests_fa4 150 python3 -m pytest -m gpu -q -rs -p no:cacheprovider -k fa4 tests/gpu ;;
    attention-peers-wan)  # a quick side-by-side re-check: the two Wan 81-frame cases, forward
      run attention_peers_wan 120 python3 benchmarks/attention_peers.py --cases wan1.3b-480p-81f,wan14b-720p-81f \
        --modes fwd --contestants cudnn-dense,fa4-dense,ours-fa4,fa4-direct,ours-triton --out "$OUT/peers-wan" ;;
    attention-peers-wan-bwd)  # fwd+bwd of Wan2.1-14B 720p 81f: the training path of ours-fa4 beside FA4 direct and dense
      run attention_peers_wan_bwd 150 python3 benchmarks/attention_peers.py --cases wan14b-720p-81f --modes fwd+bwd \
        --contestants cudnn-dense,fa4-dense,ours-fa4,fa4-direct --out "$OUT/peers-wan-bwd" ;;
    attention-peers)  # ours (fa4, triton, flex) beside FA4 dense/direct, cuDNN dense and cuDNN-frontend BSA
      run attention_peers 420 python3 benchmarks/attention_peers.py --no-bwd hunyuan-720p-509f-4x --out "$OUT" ;;
    attention-peers-4x-bwd)
      run attention_peers_4x 300 python3 benchmarks/attention_peers.py --cases hunyuan-720p-509f-4x --modes fwd+bwd \
        --out "$OUT/peers-4x" ;;
    fa4-overhead)  # what the fa4 wrapper costs over FA4 direct: host time per call, a profile, single vs back to back
      run fa4_overhead 180 python3 benchmarks/fa4_overhead.py --out "$OUT/fa4-overhead" ;;
    fa4-rounds-4x)  # HunyuanVideo 4x forward: FA4 dense, FA4 direct, ours interleaved in rounds (drift cancels)
      run fa4_rounds_4x 240 python3 benchmarks/fa4_overhead.py --no-host --cases hunyuan-720p-509f-4x --rounds 3 \
        --stream 2 --out "$OUT/fa4-rounds-4x" ;;
    models)  # one transformer forward per registry model at its usual size: cuDNN / FA4 dense vs radial
      run models 540 python3 benchmarks/models.py --out "$OUT/models" ;;
    pipeline-fa4)  # Wan2.1-14B 720p forward (4 blocks) and HunyuanVideo 4x, dense FA4/cuDNN vs radial (auto: fa4)
      run pipeline_fa4 300 python3 benchmarks/pipeline.py --cases wan14b-720p-81f,hunyuan-720p-509f \
        --dense-backends fa4,cudnn --out "$OUT/pipeline-fa4" ;;
    training-wan14b-4x)
      run training_wan14b_4x 300 python3 benchmarks/training.py --models wan14b --lengths 4 --case-budget-s 10 \
        --out "$OUT/training-wan14b-4x" ;;
    triton-check) run triton_check 200 python3 benchmarks/triton_check.py --no-sweep --no-flashinfer --out "$OUT" ;;
    *) echo "unknown section $section"; status=1 ;;
  esac
done
exit $status
