"""The errors vidpipe turns into one-line messages (see `vidpipe.cli.main`)."""


class VidpipeError(Exception):
    """A failure with a message meant for the user; exit code 1."""

    exit_code = 1


class UsageError(VidpipeError):
    """Bad input from the user (a flag, a file, a size); exit code 2."""

    exit_code = 2


class RankFailed(VidpipeError):
    """A worker raised, died or stalled; the message names the rank (`details`: the worker's traceback). `rank`:
    the rank at fault when known; `exitcode`: its process's (negative: the signal that killed it), None while it
    lives (it raised or stalled)."""

    exit_code = 1

    def __init__(self, message: str, details: str = "", rank: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.details = details
        self.rank = rank
        self.exitcode = exitcode


class Interrupted(VidpipeError):
    """The run was stopped by SIGINT / SIGTERM."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {self.signal_name}: all ranks stopped")
