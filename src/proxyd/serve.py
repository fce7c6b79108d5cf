"""`proxyd serve`: run the MyProxy, HTTPS and VOMS AA listeners named in the configuration.

With `workers > 1` the parent prepares the state (migrations, master key)
once, then starts that many worker processes; each binds the same ports
with SO_REUSEPORT, so the kernel spreads connections over the cores.
Connection limits ([myproxy]/[api]/[aa] max_connections, max_connections_per_peer)
are kept by each listener of each process (connlimit.py): with N workers an
edge holds up to N times max_connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import shutil
import signal
from collections.abc import Callable

from aiohttp import web

from voms_ext import VomsExtError

from .api.app import make_app
from .api.tasks import TASKS
from .config import Config
from .connlimit import ConnectionGate, LimitedTCPSite
from .errors import ServeError
from .issuer import IssueError
from .logs import configure as configure_logging
from .metrics import exposition
from .myproxy.server import SESSION_TIMEOUT, MyProxyServer
from .principal import local_operator
from .repository import Repository
from .sealing import SealingError
from .taskqueue.model import TaskQueueError
from .tasks import TaskService, open_task_service
from .tlsctx import server_context
from .trustwatch import TrustWatcher
from .vomsaa.server import AaServer

log = logging.getLogger("proxyd.serve")
API_HANDSHAKE_TIMEOUT = 60.0  # asyncio's default, as before the connection limits


async def run_listeners(
    config: Config,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    # Taken before the trust store is loaded, so a change during start-up is not missed.
    watcher = TrustWatcher(config.server.cert_dir, config.server.voms_dir)
    try:
        repo = Repository.open(config)
    except (OSError, VomsExtError, SealingError, IssueError) as exc:
        raise ServeError(f"cannot start: {exc}") from None
    # ServeError (e.g. a key file readable by others) passes through as it is.
    _ensure_fd_limit(config)
    stop = stop or asyncio.Event()
    runner: web.AppRunner | None = None
    metrics_runner: web.AppRunner | None = None
    myproxy: asyncio.AbstractServer | None = None
    aa: asyncio.AbstractServer | None = None
    sweeper: asyncio.Task[None] | None = None
    reload_now = asyncio.Event()
    trust_task: asyncio.Task[None] | None = None
    reminder_task: asyncio.Task[None] | None = None
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
        if config.aa.listen is not None:
            aa_listen = config.aa.listen
            try:
                aa = await AaServer(repo).start(
                    aa_listen.host, aa_listen.port, reuse_port=reuse_port
                )
            except OSError as exc:
                raise ServeError(
                    f"cannot listen for VOMS AA requests on {aa_listen}: {exc.strerror}"
                ) from None
            log.info("VOMS AA listening on %s", aa_listen)
        if config.api.listen is not None:
            app = make_app(config, repo)
            if tasks is not None:
                app[TASKS] = tasks
                sweeper = asyncio.create_task(_sweep_stalled(tasks, config))
            # Idle keep-alive connections are dropped like MyProxy sessions, not after aiohttp's hour.
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=SESSION_TIMEOUT)
            await runner.setup()
            # Over [api] max_connections(_per_peer), a connection is closed before TLS.
            site = LimitedTCPSite(
                runner,
                config.api.listen.host,
                config.api.listen.port,
                ssl_context=server_context(config.server),
                gate=ConnectionGate(
                    "https",
                    config.api.max_connections,
                    min(config.api.max_connections_per_peer, config.api.max_connections),
                ),
                handshake_timeout=API_HANDSHAKE_TIMEOUT,
                reuse_port=reuse_port,
            )
            try:
                await site.start()
            except OSError as exc:
                raise ServeError(
                    f"cannot listen for HTTPS on {config.api.listen}: {exc.strerror}"
                ) from None
            log.info("HTTPS API listening on https://%s/", config.api.listen)
        if config.metrics.listen is not None:
            metrics_runner = await _start_metrics(config, reuse_port)
        trust_task = asyncio.create_task(_watch_trust(repo, watcher, config, reload_now))
        if config.reminders.enabled:
            reminder_task = asyncio.create_task(_remind_expiring(repo, config))
        if ready is not None:
            ready()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
        await stop.wait()
    finally:
        log.info("shutting down")
        background = [t for t in (trust_task, sweeper, reminder_task) if t is not None]
        for task in background:
            task.cancel()
        # Wait for them to end, so that none is destroyed while pending.
        await asyncio.gather(*background, return_exceptions=True)
        for edge in (myproxy, aa):
            if edge is not None:
                edge.close()
                await edge.wait_closed()
        for each in (runner, metrics_runner):
            if each is not None:
                await each.cleanup()
        repo.engine.dispose()


async def _metrics_only(request: web.Request) -> web.Response:
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _start_metrics(config: Config, reuse_port: bool) -> web.AppRunner:
    """[metrics] listen: plain HTTP, /metrics only, no identity (who can reach the address may
    read the counters, as with any Prometheus exporter: bind it to loopback or an internal
    network). Scrapes here make no policy decision and no audit event."""
    listen = config.metrics.listen
    assert listen is not None
    app = web.Application()
    app.router.add_get("/metrics", _metrics_only)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, listen.host, listen.port, reuse_port=reuse_port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ServeError(f"cannot listen for metrics on {listen}: {exc.strerror}") from None
    log.info("metrics listening on http://%s/metrics", listen)
    return runner


def _ensure_fd_limit(config: Config) -> None:
    """The connection limits only protect if the process may open that many sockets.

    Raise the soft open-file limit towards the hard one if it is short (a
    login shell's 1024 is); warn if even the hard limit is short, since
    accept() would then fail with EMFILE before max_connections is reached.
    """
    wanted = 64  # database, log, metrics files, listening sockets, worker pipes
    if config.myproxy.listen is not None:
        wanted += config.myproxy.max_connections
    if config.api.listen is not None:
        wanted += config.api.max_connections
    if config.aa.listen is not None:
        wanted += config.aa.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft < wanted:
        log.warning(
            "the open-file limit (%d) is lower than the connection limits need (%d): "
            "accept() will fail before max_connections is reached; raise LimitNOFILE "
            "or lower [myproxy]/[api] max_connections",
            soft,
            wanted,
        )


def _task_service(repo: Repository) -> TaskService | None:
    try:
        return open_task_service(repo)
    except TaskQueueError as exc:
        raise ServeError(f"cannot start the task queue: {exc}") from None


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


async def _remind_expiring(repo: Repository, config: Config) -> None:
    """Tell owners before their stored credentials expire ([reminders]); every worker runs
    this, and each reminder is claimed in the database, so it goes out once."""
    interval = config.reminders.interval.total_seconds()
    operator = local_operator()
    while True:
        try:
            sent = await asyncio.to_thread(repo.remind_expiring, operator)
        except Exception:
            log.exception("expiry-reminder sweep failed; it runs again in %.0f s", interval)
        else:
            if sent:
                log.info("sent %d expiry reminder(s)", len(sent))
        await asyncio.sleep(interval)


async def _watch_trust(
    repo: Repository, watcher: TrustWatcher, config: Config, now: asyncio.Event
) -> None:
    """Swap in a new trust store when the trust directories change (or at SIGHUP).

    fetch-crl and CA bundle updates then take effect without a restart; a
    revoked certificate is refused within `trust_reload_interval`.
    """
    interval = config.server.trust_reload_interval.total_seconds()
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(now.wait(), interval)
        now.clear()
        try:
            reload = await asyncio.to_thread(watcher.poll)
        except Exception:
            log.exception("checking the trust directories failed; trying again in %.0f s", interval)
            continue
        if reload.error is not None:
            log.error("trust directories not reloaded: %s", reload.error)
        elif reload.store is not None:
            store = reload.store
            repo.trust = store  # one assignment: requests see the old store or the new one
            log.info(
                "trust directories reloaded: %d CA certificates, %d CRLs, %d VOMS .lsc files",
                len(store.anchors),
                len(store.crls),
                len(store.lsc),
            )
            for problem in store.problems:
                log.warning("trust directories: %s", problem)


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

    def reload(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for proc in procs:
        proc.join()
