"""Are this machine's CPU cores equal devices? What keeping two ranks in lockstep costs here, without vidpipe.

The CPU latency figures (`VIDPIPE_THREADS_PER_RANK=1 vidpipe bench ... --device cpu`) treat two cores as two GPUs.
This measures how far that holds. Two processes of one thread each run the same work units at the same time (a
unit is ~70 ms of matmuls, about one segment of a wan-small sp2 call between two all-to-alls), and one process runs
them alone. From the per-unit times it reports:

- each core's mean unit time, alone and side by side (a core slower than the other sets the pace of any plan);
- what syncing after every k units would cost: sum over groups of k units of the slower core's time, over the
  mean core's own time. k = 1 is sp2's lockstep (it syncs twice per transformer block); k = 64 is about cfg2's
  (one all-gather per step); k = all is two independent runs.

Usage: python scripts/cpu-lockstep.py [UNITS] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

SYNC_EVERY = (1, 2, 8, 34, 64)


def _work_units(units: int, start_at: float, queue) -> None:
    import torch

    torch.set_num_threads(1)
    a, w = torch.randn(600, 768), torch.randn(768, 2048)

    def unit() -> None:
        for _ in range(2):
            a @ w

    for _ in range(5):  # warm
        unit()
    while time.time() < start_at:
        time.sleep(0.005)
    times = []
    for _ in range(units):
        started = time.perf_counter()
        unit()
        times.append(time.perf_counter() - started)
    queue.put(times)


def run(processes: int, units: int) -> list[list[float]]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    start_at = time.time() + 5.0  # after every process has imported torch and warmed
    workers = [context.Process(target=_work_units, args=(units, start_at, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return results


def lockstep_cost(a: list[float], b: list[float], every: int) -> float:
    paced = sum(max(sum(a[i : i + every]), sum(b[i : i + every])) for i in range(0, len(a), every))
    return paced / ((sum(a) + sum(b)) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("units", type=int, nargs="?", default=600)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    (alone,) = run(1, args.units // 2)
    a, b = run(2, args.units)
    report = {
        "unit_ms_alone": 1e3 * statistics.mean(alone),
        "unit_ms_side_by_side": [1e3 * statistics.mean(a), 1e3 * statistics.mean(b)],
        "side_by_side_over_alone": (statistics.mean(a) + statistics.mean(b)) / 2 / statistics.mean(alone),
        "lockstep_cost": {str(k): lockstep_cost(a, b, k) for k in (*SYNC_EVERY, args.units)},
    }
    print(f"one unit alone: {report['unit_ms_alone']:.1f} ms; side by side: "
          f"{report['unit_ms_side_by_side'][0]:.1f} and {report['unit_ms_side_by_side'][1]:.1f} ms "
          f"({report['side_by_side_over_alone']:.3f}x alone)")
    for every, cost in report["lockstep_cost"].items():
        print(f"synced every {every:>4} units: the pair runs at {cost:.3f}x the mean core's own time")
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
