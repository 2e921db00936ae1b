"""gpu-check.json and summary.md: the results of every step, as JSON and as the table to paste into a note."""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path

from .context import Context
from .figures import MEMORY_KEYS


def new_results(ctx: Context, budget_s: float, dry_run: bool, gpus_source: str) -> dict:
    return {
        "gpu_check": 1, "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "finished_at": None, "host": socket.gethostname(), "mode": "quick" if ctx.quick else "full",
        "dry_run": dry_run, "device": ctx.device, "gpus_visible": ctx.gpus, "gpus_source": gpus_source,
        "budget_s": budget_s, "seconds": None, "out_dir": str(ctx.out), "environment": {}, "steps": [],
        "counts": {}, "exit_code": None,
    }


def finish_results(results: dict, seconds: float) -> dict:
    """Counts and the exit code: 0 when every step that ran passed (skipped ones do not count), else 1."""
    statuses = [step["status"] for step in results["steps"]]
    results["counts"] = {status: statuses.count(status) for status in ("ok", "failed", "skipped")}
    results["seconds"] = round(seconds, 1)
    results["finished_at"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["exit_code"] = 1 if "failed" in statuses or "planned" in statuses else 0
    versions = next((s for s in results["steps"] if s["name"] == "versions" and s["status"] == "ok"), None)
    if versions:
        results["environment"] = versions["figures"]
    return results


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    """gpu-check.json and summary.md in `out` (each written whole, then renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "gpu-check.json", out / "summary.md"
    texts = json.dumps(results, indent=2, default=str) + "\n", render_markdown(results)
    for path, text in zip(paths, texts, strict=True):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return paths


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def _max(values) -> float | None:
    values = [v for v in values or [] if isinstance(v, (int, float))]
    return max(values) if values else None


def _run_line(run: dict) -> str:
    label = f"{run.get('strategy') or run.get('plan')} x{run.get('world_size')}"  # bench: 'dp+compile'
    if run.get("status") not in (None, "ok"):
        return f"{label}: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else "")
    parts = [f"step {_num(run.get('step_time_s'), 3)} s"]
    if run.get("step_time_vs_baseline") is not None:
        parts.append(f"{_num(run['step_time_vs_baseline'])}x stock's step")
    if run.get("latency_mean_s") is not None:
        parts.append(f"latency {_num(run['latency_mean_s'])} s")
    if run.get("throughput_samples_per_s") is not None:
        parts.append(f"{_num(run['throughput_samples_per_s'], 3)} samples/s")
    if run.get("verified") is not None:
        parts.append(f"verified {_num(run['verified'])}")
    if run.get("verify_max_abs_diff") is not None:
        parts.append(f"max diff {_num(run['verify_max_abs_diff'], 2)}")
    if run.get("repeats", 1) > 1:
        parts.append(f"{run['repeats']} repeats")
    return f"{label}: " + ", ".join(parts)


def short_figures(record: dict) -> str:
    """A step's figures in one table cell."""
    figures = record.get("figures") or {}
    name = record["name"]
    if name == "versions":
        gpus = figures.get("gpus") or []
        return (f"{len(gpus)} x {gpus[0]['name'] if gpus else '?'}, driver {figures.get('driver')}, torch "
                f"{figures.get('torch')}, CUDA {figures.get('torch_cuda')}, NCCL {figures.get('nccl')}, diffusers "
                f"{figures.get('diffusers')}")
    if "runs" in figures:
        return "; ".join(_run_line(run) for run in figures["runs"])
    if "rows" in figures:
        fits = sum(row.get("fits") is True for row in figures["rows"])
        return f"{fits} of {len(figures['rows'])} configurations fit"
    if "compared" in figures:
        compared = {key: c for key, c in figures["compared"].items() if c.get("files")}
        text = "; ".join(f"{key}: max diff {_num(c['max_abs_diff'], 2)} (relative {_num(c['relative_diff'], 2)}), "
                         f"NaN {c['nan']}" for key, c in compared.items())
        missing = [key for key in figures["compared"] if key not in compared]
        return text + (f"; no latents from {', '.join(missing)}" if missing else "")
    if "checks" in figures and isinstance(figures["checks"], dict):  # the serve and fault checks
        failed = [key for key, passed in figures["checks"].items() if passed is not True]
        scalars = [f"{key} {_num(value)}" for key, value in figures.get("summary", {}).items()
                   if isinstance(value, (int, float, str))]
        return ", ".join(scalars + [f"failed checks: {', '.join(failed)}"] * bool(failed))
    if "checks" in figures and isinstance(figures["checks"], list):  # vidpipe doctor
        statuses = [check.get("status") for check in figures["checks"] if isinstance(check, dict)]
        return ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    parts = []
    if "plan" in figures:
        parts.append(_run_line(figures))
    if "mp4_files" in figures:
        parts.append(f"{figures['mp4_files']} MP4 ({sum(figures.get('mp4_bytes', []))} B)")
    if (record.get("env") or {}).get("NCCL_DEBUG"):
        parts.append(figures.get("nccl_version_line") or "no NCCL version line in the log")
    return "; ".join(parts)


def memory_rows(results: dict) -> list[tuple]:
    """(step, plan, GPUs, allocated, reserved, driver): the max over ranks of each, where a report has them."""
    rows = []
    for record in results["steps"]:
        figures = record.get("figures") or {}
        for run in figures.get("runs") or ([figures] if "peak_memory_gb_per_rank" in figures else []):
            if "peak_memory_gb_per_rank" not in run:
                continue
            rows.append((record["name"], run.get("strategy") or run.get("plan"), run.get("world_size"),
                         *(_max(run.get(key)) for key in MEMORY_KEYS), run.get("peak_memory_kind")))
    return rows


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict) -> str:
    env = results.get("environment") or {}
    gpus = env.get("gpus") or []
    counts = results.get("counts") or {}
    lines = [
        f"# gpu-check {results['started_at'][:10]} ({results['mode']}, {results['gpus_visible']} GPU(s) visible)",
        "",
        f"Host {results['host']}; {len(gpus)} x {gpus[0]['name'] if gpus else 'GPU ?'}; driver "
        f"{env.get('driver', '?')}; torch {env.get('torch', '?')}, CUDA {env.get('torch_cuda', '?')}, NCCL "
        f"{env.get('nccl', '?')}, diffusers {env.get('diffusers', '?')}.",
        f"{len(results['steps'])} steps: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped, in {_num(results.get('seconds'), 1)} s (budget "
        f"{results['budget_s']:.0f} s). Every figure and command: `gpu-check.json`; each step's log beside it.",
        "",
        "| # | step | GPUs | status | s | figures, or why not |",
        "|---|---|---|---|---|---|",
    ]
    skipped: dict[str, list[str]] = {}
    for number, record in enumerate(results["steps"], start=1):
        if record["status"] == "skipped":
            skipped.setdefault(record["reason"] or "", []).append(record["name"])
            continue
        status = {"failed": "**FAILED**"}.get(record["status"], record["status"])
        detail = record["reason"] if record["status"] != "ok" else short_figures(record)
        if record["status"] == "failed" and short_figures(record):
            detail = f"{record['reason']} ({short_figures(record)})"
        lines.append(f"| {number} | {record['name']} | {record['gpus']} | {status} | {_num(record['seconds'], 1)} "
                     f"| {_cell(detail or '')} |")
    if skipped:
        lines += ["", "Skipped:"] + [f"- {', '.join(names)}: {reason}" for reason, names in skipped.items()]
    memory = memory_rows(results)
    if memory:
        lines += ["", "## Peak memory per rank (GB, the largest rank)", "",
                  "| step | plan | GPUs | allocated | reserved | driver | kind |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {' | '.join(_cell(_num(v)) for v in row)} |" for row in memory]
    nccl = next((r["figures"] for r in results["steps"] if (r.get("figures") or {}).get("nccl_info_lines")), None)
    if nccl:
        lines += ["", "## NCCL (NCCL_DEBUG=INFO)", "", f"- {nccl.get('nccl_version_line') or 'no version line'}"]
        lines += [f"- `{line}`" for line in nccl.get("nccl_transport_lines", [])]
    topology = next((r["figures"].get("output") for r in results["steps"]
                     if r["name"] == "topology" and r["status"] == "ok"), None)
    if topology:
        lines += ["", "## nvidia-smi topo -m", "", "```", topology.rstrip(), "```"]
    failed = [r for r in results["steps"] if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""]
        lines += [f"- {r['name']}: {r['reason']} (log `{r['log']}`)" for r in failed]
    return "\n".join(lines) + "\n"
