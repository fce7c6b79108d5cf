"""The aiohttp application. Handlers are thin: parse, call the core, serialise."""

from __future__ import annotations

from aiohttp import web

from .. import __version__
from ..config import Config

CONFIG = web.AppKey("config", Config)
routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Open route: liveness for load balancers; says nothing about credentials."""
    return web.json_response({"status": "ok", "version": __version__})


def make_app(config: Config) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CONFIG] = config
    app.add_routes(routes)
    return app
