"""`proxyd serve`: run the MyProxy and HTTPS listeners named in the configuration.

With `workers > 1` the parent prepares the state (migrations, master key)
once, then starts that many worker processes; each binds the same ports
with SO_REUSEPORT, so the kernel spreads connections over the cores.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
from collections.abc import Callable

from aiohttp import web

from voms_ext import VomsExtError

from .api.app import make_app
from .api.tasks import TASKS
from .config import Config
from .errors import ServeError
from .issuer import IssueError
from .logs import configure as configure_logging
from .myproxy.server import SESSION_TIMEOUT, MyProxyServer
from .repository import Repository
from .sealing import SealingError
from .taskqueue.base import load_taskqueue
from .taskqueue.fairshare import FairShare
from .taskqueue.model import TaskQueueError
from .tasks import TaskService
from .tlsctx import server_context

log = logging.getLogger("proxyd.serve")


async def run_listeners(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    try:
        repo = Repository.open(config)
    except (OSError, VomsExtError, SealingError, IssueError) as exc:
        raise ServeError(f"cannot start: {exc}") from None
    # ServeError (e.g. a key file readable by others) passes through as it is.
    stop = stop or asyncio.Event()
    runner: web.AppRunner | None = None
    myproxy: asyncio.Server | None = None
    sweeper: asyncio.Task[None] | None = None
    tasks = _task_service(repo)
    try:
        if config.myproxy.listen is not None:
            listen = config.myproxy.listen
            try:
                myproxy = await MyProxyServer(repo).start(
                    listen.host, listen.port, reuse_port=reuse_port
                )
            except OSError as exc:
                raise ServeError(f"cannot listen for MyProxy on {listen}: {exc.strerror}") from None
            log.info("MyProxy listening on %s", listen)
        if config.api.listen is not None:
            app = make_app(config, repo)
            if tasks is not None:
                app[TASKS] = tasks
                sweeper = asyncio.create_task(_sweep_stalled(tasks, config))
            # Idle keep-alive connections are dropped like MyProxy sessions, not after aiohttp's hour.
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=SESSION_TIMEOUT)
            await runner.setup()
            site = web.TCPSite(
                runner,
                config.api.listen.host,
                config.api.listen.port,
                ssl_context=server_context(config.server),
                reuse_port=reuse_port,
            )
            try:
                await site.start()
            except OSError as exc:
                raise ServeError(
                    f"cannot listen for HTTPS on {config.api.listen}: {exc.strerror}"
                ) from None
            log.info("HTTPS API listening on https://%s/", config.api.listen)
        if ready is not None:
            ready()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        log.info("shutting down")
        if sweeper is not None:
            sweeper.cancel()
        if myproxy is not None:
            myproxy.close()
            await myproxy.wait_closed()
        if runner is not None:
            await runner.cleanup()
        repo.engine.dispose()


def _task_service(repo: Repository) -> TaskService | None:
    tq = repo.config.taskqueue
    if tq.backend is None:
        return None
    options: dict[str, object] = {"audit": repo.audit}
    if tq.backend == "sql":
        options["fair_share"] = FairShare(shares=dict(tq.shares), half_life=tq.usage_half_life)
    try:
        queue = load_taskqueue(tq.backend, repo.engine, **options)
    except TaskQueueError as exc:
        raise ServeError(f"cannot start the task queue: {exc}") from None
    return TaskService(repo, queue)


async def _sweep_stalled(tasks: TaskService, config: Config) -> None:
    """Mark tasks whose pilot stopped sending heartbeats as stalled (they get rescheduled)."""
    interval = min(60.0, config.taskqueue.heartbeat_timeout.total_seconds() / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            stalled = await asyncio.to_thread(
                tasks.queue.mark_stalled, config.taskqueue.heartbeat_timeout
            )
        except Exception:
            log.exception("stalled-task sweep failed; it runs again in %.0f s", interval)
            continue
        if stalled:
            log.info("marked %d task(s) stalled: %s", len(stalled), stalled[:20])


def _worker(config: Config, json_lines: bool) -> None:
    configure_logging(json_lines=json_lines)
    asyncio.run(run_listeners(config, reuse_port=True))


def serve(config: Config, workers: int = 1, *, json_lines: bool = True) -> None:
    if workers <= 1:
        asyncio.run(run_listeners(config))
        return
    # Migrate and create the master key once, before workers race for them.
    try:
        Repository.open(config).engine.dispose()
    except (OSError, VomsExtError, SealingError, IssueError) as exc:
        raise ServeError(f"cannot start: {exc}") from None
    # Workers write their metrics to files that /metrics (on any worker) sums up;
    # set before they start, so each imports prometheus_client in multiprocess mode.
    metrics_dir = config.server.state_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(config, json_lines), name=f"proxyd-worker-{i}")
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    log.info("started %d workers", workers)

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.join()
