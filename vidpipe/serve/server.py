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

    from vidpipe.runtime.launch import under_torchrun
    from vidpipe.serve.store import open_store

    if under_torchrun():
        raise UsageError("serve starts and restarts its own ranks: run it directly, not under torchrun")
    out = Path(config.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    store = open_store(config.store, out)  # first: an unreachable database is one line before any model loads
    try:
        engine, app, sock, fleet = _prepare(config, store, out)
    except BaseException:
        store.close()
        raise
    host, port = sock.getsockname()[:2]
    stderr_console.print(
        f"vidpipe serve: http://{host}:{port}/ (node {fleet.node}, plan {engine.plan.name}, model {config.model}, "
        f"{engine.world_size} {engine.settings.placement.spec.device_type} rank(s); loading: GET /v1/health says "
        f"when ready); jobs in the {store.name}, files in {out}", highlight=False, markup=False)
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


def _prepare(config: ServeConfig, store, out: Path):
    """The model, the plan, the listening socket and the engine; nothing started yet."""
    from vidpipe.jobspec import job_base
    from vidpipe.models.registry import family_module, resolve_model
    from vidpipe.parallel.plan import ParallelPlan
    from vidpipe.runtime.devices import cuda_device_count, resolve_device_type
    from vidpipe.serve.app import ApiSettings, create_app
    from vidpipe.serve.engine import Engine, ServeSettings
    from vidpipe.serve.lease import FleetSettings

    source = resolve_model(config.model, config.offline, Path(config.cache_dir) if config.cache_dir else None)
    family = family_module(source.family)
    # A job starts from generate's defaults, completed by the model's family, and the server's own devices.
    given = {"text_encoder_device"} if config.text_encoder_device is not None else set()
    base = job_base(model=config.model, vae_device=config.vae_device,
                    text_encoder_device=config.text_encoder_device or "gpu", given=frozenset(given))
    run = config.run
    if run.gpus is None:
        device_type = resolve_device_type(run.device, 1)
        run = replace(run, gpus=cuda_device_count() if device_type == "cuda" else DEFAULT_GPUS)
    plan = run.plan(run.gpus)
    # The ranks load with a job's defaults (a job of no options); jobs may choose more steps than a pp plan's stages.
    params = family.job_params(base, source, ParallelPlan("dp", 1))
    family.check_job(plan, replace(params, steps=max(params.steps, plan.groups)))
    placement = place(run, max(params.steps, plan.groups), default_gpus=DEFAULT_GPUS)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    fleet = FleetSettings(config.node_name or f"{socket.gethostname()}:{port}", f"http://{host}:{port}/",
                          config.lease_timeout_s, config.max_attempts)
    try:
        _check_node_name(store, fleet)
    except UsageError:
        sock.close()
        raise
    engine = Engine(ServeSettings(source, config.model, placement, params, out, base, config.limits, config.max_queue,
                                  config.max_queued_per_client, run.compile, fleet), store)
    app = create_app(engine, ApiSettings(config.tokens, int(config.max_upload_mb * 1024 * 1024)))
    return engine, app, sock, fleet


def _check_node_name(store, fleet) -> None:
    """Two live nodes of one name would take each other's jobs for their own: refuse to start as a node that
    heartbeat moments ago (a node killed and started again has missed a few beats by then)."""
    for node in store.nodes():
        if node["name"] == fleet.node and node["status"] != "stopped" and node["seconds_since"] < 3 * fleet.beat_s:
            raise UsageError(f"--node-name {fleet.node}: a node of that name is running ({node['url']}, heartbeat "
                             f"{node['seconds_since']:.1f} s ago): give each node its own --node-name")


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
    # NOTE: accepted connections inherit TCP_NODELAY from the listening socket, and uvicorn does not set it on a
    # socket it is handed: without it every keep-alive answer waited for the client's delayed ACK (44 ms a request).
    if family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    return sock


def _interrupt_on_signals() -> dict:
    def handler(signum, _frame):
        raise Interrupted(signum)

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
