"""The engine of `scripts/gpu-check.sh`: which steps to run on this many GPUs, running them with timeouts, and one
JSON file plus one markdown summary of what they showed.

A step is one command (a vidpipe command, nvidia-smi, torchrun, or one of this package's own checks) with its own
timeout, log and, where it writes one, JSON report. A step that needs more GPUs than there are is skipped with the
reason; a failed step is recorded and the next one runs; the JSON and the markdown are rewritten after every step,
so a run stopped from outside keeps what it measured.

    cli.py      the subcommands: `run` (what gpu-check.sh calls) and the checks below
    context.py  a Step, the Context the plan depends on, where the repository is
    plan.py     which steps run, on how many GPUs, and why the others are skipped
    run.py      `run`: the machine and tools, the plan, every step within the budget
    steps.py    one step in a session of its own: timeout, leftover processes, its record
    figures.py  the figures of a step's JSON report and log
    report.py   gpu-check.json and summary.md
    checks/     `versions`, `compare-latents`, `serve-check`, `fault-check`

Only the standard library is imported to plan; psutil, httpx, torch and safetensors (the project's venv) are
imported by the steps that use them. The names below are what the tests use.
"""

from .cli import main, parser
from .context import IMAGE, REPO, Context, Step, rel
from .figures import figures_from_report, nccl_lines, step_figures
from .plan import GENERATE_PLANS, SERVE_PLANS, SIMULATE_PLANS, build_steps, min_gpus, most_gpus, plan_fits
from .report import finish_results, new_results, render_markdown, short_figures, write_results
from .run import help_options, make_context, print_plan, run_all
from .steps import processes_marked, reap_leftovers, record_of, run_step

__all__ = [
    "GENERATE_PLANS", "IMAGE", "REPO", "SERVE_PLANS", "SIMULATE_PLANS", "Context", "Step", "build_steps",
    "figures_from_report", "finish_results", "help_options", "main", "make_context", "min_gpus", "most_gpus",
    "nccl_lines", "new_results", "parser", "plan_fits", "print_plan", "processes_marked", "reap_leftovers",
    "record_of", "rel", "render_markdown", "run_all", "run_step", "short_figures", "step_figures", "write_results",
]
