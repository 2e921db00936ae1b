#!/usr/bin/env bash
# Everything only a CUDA machine (1 to 8 GPUs) can show, in one command: one JSON file and one markdown summary.
#
#   scripts/gpu-check.sh [OUT_DIR] [--quick] [--dry-run] [--gpus N] [--budget SECONDS] [--only REGEX]
#
#   --quick        the essentials, about 5 minutes on 1 GPU (hard budget 480 s): what a lent machine's
#                  10-minute command limit allows. Without it: every step, budget 4 h.
#   --dry-run      print the steps that would run, their commands and timeouts, and what is skipped and why;
#                  needs no GPU (--gpus N plans for N GPUs).
#   --only REGEX   run only the steps whose names match (to rerun what failed).
#
# Steps (each as far as the GPU count allows; a plan that needs more GPUs than there are is skipped, with the
# reason): versions (nvidia-smi, driver, torch, CUDA, NCCL, diffusers), `nvidia-smi topo -m`, `vidpipe doctor`;
# `generate` end to end to MP4 on 1 rank and on pp2, cfg2, sp2, fsdp and the hybrids, each plan's latents
# against 1 rank; fp16 and bf16 against fp32; `serve` (a job cancelled, one finished with `submit`, SIGTERM,
# nothing left); torchrun; a rank that raises or is SIGKILLed mid-run; one run under NCCL_DEBUG=INFO; `bench
# --repeats`; compiled split plans; SVD-XT (random weights, 25 x 576 x 1024) against the stock pipeline, eager
# and compiled; Wan (full run): the tiny model through dp, pp2, cfg2, sp2, sp3, fsdp.sp2 and cfg2.sp2 in bf16
# against 1 rank, wan-small at 81 x 480 x 832 on cfg2/sp2 and Wan 2.1 14B (random weights, 480p) on one GPU, beside
# the stock pipeline; memory-probe; `simulate` over NCCL for every plan that fits. Each step has its own timeout;
# a failed one is recorded and the next one runs.
#
# Results in OUT_DIR (default docs/results/gpu-<date>/): gpu-check.json (every step: command, GPUs, status,
# reason, seconds, exit code, the figures of its own JSON report), summary.md (the table to paste into a note),
# and each step's log and report. Exit 0 when every step that ran passed, 1 otherwise, 2 when no GPU is visible
# (unless --dry-run). Run from anywhere after `make install` on the GPU machine.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" "$repo/scripts/gpu_check" run "$@"
