#!/usr/bin/env bash
# Everything only a CUDA machine can show, in one command; results under docs/results/gpu-<date>/.
#
#   1. NCCL: every plan that fits the GPUs, through the simulator (hand-offs, cfg/sp collectives, fsdp), verified
#   2. fp16 fidelity of vidpipe against the stock StableVideoDiffusionPipeline on the full-size random SVD-XT
#   3. bench against the stock pipeline, eager and with torch.compile (--compile both), and the latency of
#      cfg2 / sp2 on SVD-XT when there are 2 GPUs or more
#   4. memory-probe: pp vs fsdp (and sp2, cfg2.sp2.fsdp on 2+ GPUs) at 14 and 25 frames of 576 x 1024
#
# Usage: scripts/gpu-check.sh [OUT_DIR]   (from the repository root, after `make install` on the GPU machine)
# Each step's log and JSON go to OUT_DIR; a failed step is recorded in summary.txt and the next one runs.
set -uo pipefail
vidpipe=${VIDPIPE:-.venv/bin/vidpipe}
out=${1:-docs/results/gpu-$(date +%Y-%m-%d)}
mkdir -p "$out"
summary="$out/summary.txt"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no CUDA GPU visible (nvidia-smi); nothing to check here" >&2
  exit 2
fi
gpus=$(nvidia-smi -L | wc -l)
{
  echo "gpu-check $(date -Is) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  .venv/bin/python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
  echo "GPUs: $gpus"
} | tee "$summary"

step() {  # step NAME COMMAND...: run, log, record the outcome
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$summary"
  if "$@" >"$out/$name.log" 2>&1; then
    echo "   ok" | tee -a "$summary"
  else
    echo "   FAILED (exit $?): see $out/$name.log" | tee -a "$summary"
  fi
}

# Plans that fit this machine's GPU count.
plans="dp pp"
[ "$gpus" -ge 2 ] && plans="$plans fsdp cfg2 sp2"
[ "$gpus" -ge 4 ] && plans="$plans cfg2.sp2 pp2.cfg2 dp2.cfg2 sp4.fsdp"
[ "$gpus" -ge 8 ] && plans="$plans cfg2.sp4 pp2.cfg2.sp2"

# 1. NCCL, every plan, verified against one rank (simulate checks each sample).
for plan in $plans; do
  step "nccl-$plan" "$vidpipe" simulate --gpus "$gpus" --strategy "$plan" --steps 8 --samples 8 --device cuda \
    --json "$out/nccl-$plan.json"
done

# 2. fp16 fidelity against the stock pipeline on the full-size architecture (random weights, no download).
step fidelity-fp16 "$vidpipe" bench --model svd-xt-random --compare diffusers,dp --gpus 1 --frames 14 --steps 8 \
  --samples 2 --warmup-samples 0 --device cuda --json "$out/fidelity-fp16.json"

# 3. bench: the stock pipeline and vidpipe, eager and compiled; then latency of the split plans on SVD-XT.
compare="diffusers,dp"
gpu_list=1
[ "$gpus" -ge 2 ] && compare="$compare,cfg2,sp2" && gpu_list="1,2"
[ "$gpus" -ge 4 ] && compare="$compare,cfg2.sp2" && gpu_list="1,2,4"
[ "$gpus" -ge 8 ] && compare="$compare,cfg2.sp4" && gpu_list="1,2,4,8"
step bench-compile "$vidpipe" bench --model svd-xt-random --compare diffusers,dp --gpus 1 --frames 14 --steps 10 \
  --samples 2 --warmup-samples 1 --compile both --device cuda --json "$out/bench-compile.json" \
  --csv "$out/bench-compile.csv"
step bench-latency "$vidpipe" bench --model svd-xt-random --compare "$compare" --gpus "$gpu_list" --frames 25 \
  --steps 10 --samples 1 --warmup-samples 1 --device cuda --json "$out/bench-latency.json" \
  --csv "$out/bench-latency.csv" --plot "$out/plots"

# 4. What fits where, at SVD-XT's sizes.
probe_plans="pp,fsdp"
probe_gpus=1
[ "$gpus" -ge 2 ] && probe_plans="pp,fsdp,sp2,cfg2.sp2.fsdp" && probe_gpus="1,2"
[ "$gpus" -ge 4 ] && probe_gpus="1,2,4"
step memory-probe "$vidpipe" memory-probe --model svd-xt-random --strategy "$probe_plans" --gpus "$probe_gpus" \
  --frames 14,25 --size 576x1024 --json "$out/memory-probe.json"

echo "results in $out (summary: $summary)"
