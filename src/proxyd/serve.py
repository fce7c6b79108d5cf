"""`proxyd serve`: run the listeners named in the configuration."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .api.app import make_app
from .config import Config
from .tlsctx import server_context

log = logging.getLogger("proxyd.serve")


async def _serve(config: Config) -> None:
    config.server.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    runners: list[web.AppRunner] = []
    if config.api.listen is not None:
        runner = web.AppRunner(make_app(config), access_log=None)
        await runner.setup()
        site = web.TCPSite(
            runner,
            config.api.listen.host,
            config.api.listen.port,
            ssl_context=server_context(config.server),
        )
        await site.start()
        runners.append(runner)
        log.info("HTTPS API listening on https://%s/", config.api.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for runner in runners:
            await runner.cleanup()


def serve(config: Config) -> None:
    asyncio.run(_serve(config))
