"""The engine of `scripts/gpu-check.sh`: which steps to run on this many GPUs, running them with timeouts, and
one JSON file plus one markdown summary of what they showed.

    python scripts/gpu_check run [OUT_DIR] [--quick] [--dry-run] [--gpus N] [--budget S] [--only REGEX]
                                 [--plan-json PATH]

The checks that are more than one command run as this package's other subcommands (in their own process, under
the step's timeout): `versions`, `compare-latents`, `serve-check`, `fault-check`.
"""

from __future__ import annotations

import argparse

from .checks.fault import command_fault_check
from .checks.latents import command_compare_latents
from .checks.serve import command_serve_check
from .checks.versions import command_versions
from .run import FULL_BUDGET_S, QUICK_BUDGET_S, command_run


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    sub = main.add_subparsers(dest="subcommand", required=True)
    run = sub.add_parser("run", help="plan and run the steps (what scripts/gpu-check.sh calls)")
    run.add_argument("out_dir", nargs="?", help="results folder (default docs/results/gpu-<date>/)")
    run.add_argument("--quick", action="store_true", help=f"the essentials (budget {QUICK_BUDGET_S} s)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; run nothing (no GPU needed)")
    run.add_argument("--gpus", type=int, help="GPUs to plan for (default: the visible ones)")
    run.add_argument("--budget", type=float, help=f"seconds for all steps (default {QUICK_BUDGET_S} with --quick, "
                                                  f"{FULL_BUDGET_S} otherwise)")
    run.add_argument("--only", help="run only the steps whose name matches this regular expression")
    run.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                     help="cpu: try the script's own machinery on a CPU (gloo; slow; with --only)")
    run.add_argument("--plan-json", help="also write the plan (every step, its command and skip reason) here")
    run.set_defaults(handler=command_run)
    versions = sub.add_parser("versions")
    versions.add_argument("--json", required=True)
    versions.add_argument("--device", default="cuda")
    versions.set_defaults(handler=command_versions)
    compare = sub.add_parser("compare-latents")
    compare.add_argument("--json", required=True)
    compare.add_argument("--reference", required=True)
    compare.add_argument("--tolerance", type=float)
    compare.add_argument("items", nargs="*", metavar="NAME=PATH")
    compare.set_defaults(handler=command_compare_latents)
    serve = sub.add_parser("serve-check")
    serve.add_argument("--json", required=True)
    serve.add_argument("--vidpipe", required=True)
    serve.add_argument("--submit", required=True, help="submit's arguments as a JSON list; {url} is replaced")
    serve.add_argument("command", nargs=argparse.REMAINDER)
    serve.set_defaults(handler=command_serve_check)
    fault = sub.add_parser("fault-check")
    fault.add_argument("--json", required=True)
    fault.add_argument("--vidpipe", required=True)
    fault.add_argument("--kind", choices=("raise", "kill"), required=True)
    fault.add_argument("--rank", type=int, required=True)
    fault.add_argument("--fault-step", type=int, default=3)
    fault.add_argument("command", nargs=argparse.REMAINDER)
    fault.set_defaults(handler=command_fault_check)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[0] == "--":
        args.command = args.command[1:]
    return args.handler(args)
