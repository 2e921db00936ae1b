#!/usr/bin/env bash
# 20 back-to-back 4-rank runs, then count what is left behind: vidpipe/worker processes and listening sockets.
# Usage: scripts/back-to-back.sh [RUNS]   (run from the repository root after `make install`)
set -u
runs=${1:-20}
out=$(mktemp -d)
ok=0
for i in $(seq 1 "$runs"); do
  .venv/bin/vidpipe simulate --gpus 4 --steps 8 --samples 8 --device cpu --json "$out/run-$i.json" >/dev/null 2>&1 \
    && ok=$((ok + 1))
done
sleep 2
echo "runs succeeded: $ok/$runs"
echo "vidpipe processes left: $(pgrep -fc 'vidpipe|forkserver' || true)"
echo "listening python sockets: $(ss -ltnp 2>/dev/null | grep -c python || true)"
rm -rf "$out"
