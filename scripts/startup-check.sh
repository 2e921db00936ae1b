#!/usr/bin/env bash
# Start-up cost, measured in one run: `python -c "import torch, diffusers"` against the time from launching
# `vidpipe simulate --gpus 4` to every rank's first step (the report's launch_to_first_step_s), N times each,
# interleaved so that machine drift hits both alike. Target (issue: fast start): ratio <= 1.5.
# Usage: scripts/startup-check.sh [N]   (from the repository root, after `make install`)
set -euo pipefail
runs=${1:-3}
py=.venv/bin/python
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$runs"); do
  import_s=$($py - <<'PY'
import subprocess, sys, time
start = time.perf_counter()
subprocess.run([sys.executable, "-c", "import torch, diffusers"], check=True)
print(f"{time.perf_counter() - start:.3f}")
PY
)
  .venv/bin/vidpipe simulate --gpus 4 --steps 4 --samples 1 --warmup-samples 0 --device cpu \
    --json "$out/s$i.json" >/dev/null 2>&1
  $py -c "
import json
first = json.load(open('$out/s$i.json'))['launch_to_first_step_s']
print(f'run $i: import torch, diffusers {$import_s:.2f} s; launch -> every rank\'s first step {first:.2f} s; '
      f'ratio {first / $import_s:.2f}')"
done
