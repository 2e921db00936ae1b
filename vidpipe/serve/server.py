"""Start `vidpipe serve`: resolve the model and plan, start the warm ranks, then the HTTP server; stop cleanly."""

from __future__ import annotations

import signal
import socket
from dataclasses import replace
from pathlib import Path

from vidpipe.config import ServeConfig
from vidpipe.errors import Interrupted, UsageError
from vidpipe.jobs.run import place
from vidpipe.report import stderr_console

#: Ranks when --gpus is not given on a machine without CUDA (with CUDA: every visible GPU).
DEFAULT_GPUS = 1


def serve(config: ServeConfig) -> None:
    import uvicorn

    from vidpipe.models.registry import resolve_model
    from vidpipe.models.svd.adapter import SVDParams, default_size
    from vidpipe.runtime.devices import cuda_device_count, resolve_device_type
    from vidpipe.runtime.launch import under_torchrun
    from vidpipe.serve.app import ApiSettings, create_app
    from vidpipe.serve.engine import Engine, ServeSettings
    from vidpipe.serve.store import JobStore

    if under_torchrun():
        raise UsageError("serve starts and restarts its own ranks: run it directly, not under torchrun")
    source = resolve_model(config.model, config.offline, Path(config.cache_dir) if config.cache_dir else None)
    frames, height, width = default_size(source)
    run = config.run
    if run.gpus is None:
        device_type = resolve_device_type(run.device, 1)
        run = replace(run, gpus=cuda_device_count() if device_type == "cuda" else DEFAULT_GPUS)
    placement = place(run, max(25, run.plan(run.gpus).groups), default_gpus=DEFAULT_GPUS, frames=frames)
    out = Path(config.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    sock = _bind(config.host, config.port)
    store = JobStore(out / "jobs.sqlite3")
    params = SVDParams(steps=25, frames=frames, height=height, width=width, vae_device=config.vae_device)
    engine = Engine(ServeSettings(source, config.model, placement, params, out, config.max_queue, run.compile), store)
    app = create_app(engine, ApiSettings(config.token, int(config.max_upload_mb * 1024 * 1024), source))
    host, port = sock.getsockname()[:2]
    stderr_console.print(
        f"vidpipe serve: http://{host}:{port}/ (plan {placement.plan.name}, model {config.model}, "
        f"{placement.spec.world_size} {placement.spec.device_type} rank(s); loading: GET /v1/health says when "
        f"ready); jobs and files in {out}", highlight=False, markup=False)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))
    previous = _interrupt_on_signals()  # uvicorn stops gracefully, then re-raises the signal into these
    try:
        engine.start()
        server.run(sockets=[sock])
    except Interrupted as stop:
        # A server stopped by Ctrl-C or SIGTERM is a normal stop: nothing is lost, unfinished jobs run next time.
        stderr_console.print(f"vidpipe serve: stopped ({stop.signal_name}); unfinished jobs stay queued for the next "
                             "start", highlight=False, markup=False)
    finally:
        engine.stop()
        store.close()
        sock.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); choose another "
                         "--port, or 0 for any free one") from None
    sock.listen(128)
    return sock


def _interrupt_on_signals() -> dict:
    def handler(signum, _frame):
        raise Interrupted(signum)

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
