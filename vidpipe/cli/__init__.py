"""The `vidpipe` command line. Commands are thin: build a config, make one library call.

`main` is the one place where known errors become one-line messages with the right exit code.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

# NOTE: before anything imports torch: diffusers asks for an accelerator at import time, and without this torch asks
# the CUDA runtime (cudaGetDeviceCount), which starts the driver in the launcher. With it, torch asks NVML. A user's
# own setting wins.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import typer  # noqa: E402

from vidpipe.cli.bench import bench
from vidpipe.cli.doctor import doctor
from vidpipe.cli.generate import generate
from vidpipe.cli.memory_probe import memory_probe
from vidpipe.cli.serve import serve
from vidpipe.cli.simulate import simulate
from vidpipe.cli.submit import submit
from vidpipe.errors import VidpipeError

# typer.BadParameter is click's BadParameter, whichever click typer runs on (its own vendored copy in recent
# releases, the click package before): its base class is the UsageError that main() must catch.
ClickUsageError = typer.BadParameter.__mro__[1]

app = typer.Typer(
    name="vidpipe",
    help="Image-to-video with Stable Video Diffusion, spread over several GPUs (plans of pp, dp, cfg, sp, fsdp), "
         "measured honestly; and a warm server.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """vidpipe: generate, simulate, bench, memory-probe, serve, submit, doctor. Run `vidpipe COMMAND --help` for
    each."""


app.command(no_args_is_help=True)(generate)
app.command(no_args_is_help=False)(simulate)
app.command(no_args_is_help=False)(bench)
app.command("memory-probe", no_args_is_help=False)(memory_probe)
app.command(no_args_is_help=False)(serve)
app.command(no_args_is_help=True)(submit)
app.command(no_args_is_help=False)(doctor)


def _error(message: str) -> None:
    print(f"vidpipe: error: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to exit codes (2 usage, 1 failure, 128+sig)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    command = typer.main.get_command(app)
    try:
        code = command.main(args=args, prog_name="vidpipe", standalone_mode=False)
    except ClickUsageError as error:
        hint = f" (see vidpipe {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
        _error(error.format_message().replace("\n", " ") + hint)
        sys.exit(2)
    except typer.Abort:
        _error("interrupted")
        sys.exit(130)
    except VidpipeError as error:
        if debug:
            traceback.print_exc()
            if getattr(error, "details", ""):
                print(f"the failing rank's traceback:\n{error.details}", file=sys.stderr)
        _error(str(error))
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        _error("interrupted")
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line unless --debug
        if debug:
            traceback.print_exc()
        _error(f"{type(error).__name__}: {error} (rerun with --debug for the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
