"""The OpenAPI 3.1 document, built from the same table that registers the routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import __version__

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEM = {"$ref": "#/components/schemas/Problem"}


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    open: bool = False  # True only for routes that need no policy decision
    body: Mapping[str, Any] | None = None
    response: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    content_type: str = "application/json"


def build_openapi(routes: list[ApiRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": r.handler.__name__,
            "responses": {
                str(r.status): {
                    "description": "success",
                    "content": {r.content_type: {"schema": dict(r.response)}},
                },
                "default": {
                    "description": "problem",
                    "content": {"application/problem+json": {"schema": PROBLEM}},
                },
            },
        }
        if r.open:
            op["security"] = []
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(r.path)
        ]
        params += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": desc,
                "schema": {"type": "string"},
            }
            for name, desc in r.query
        ]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": dict(r.body)}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "proxyd",
            "version": __version__,
            "description": "Credential delegation for grid WMS",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Problem": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "rule": {"type": "string"},
                    },
                    "required": ["title", "status", "detail"],
                }
            },
            "securitySchemes": {"clientCertificate": {"type": "mutualTLS"}},
        },
        "security": [{"clientCertificate": []}],
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
