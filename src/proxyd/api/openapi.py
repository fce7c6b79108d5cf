"""The OpenAPI 3.1 document, built from the same table that registers the routes.

Request bodies are the msgspec models of `models.py`, the ones the handlers
decode with: their schemas are generated, never written by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from .. import __version__
from .models import Body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SCHEMA_REF = "#/components/schemas/{name}"
PROBLEM = {"$ref": SCHEMA_REF.format(name="Problem")}
# The model each body-taking handler was registered with (make_app): read_body checks it.
BODY_MODELS = web.AppKey("body_models", dict)
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class FormField:
    """A field of an `application/x-www-form-urlencoded` request body (RFC 8693's form)."""

    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    summary: str
    open: bool = False  # True only for routes that need no policy decision
    body: type[Body] | None = None  # the model of the JSON request body
    response: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200
    query: tuple[tuple[str, str], ...] = ()  # (name, description)
    content_type: str = "application/json"
    body_optional: bool = False  # a request may leave the body out
    form: tuple[FormField, ...] = ()  # the fields of a form body, instead of a JSON model
    errors: tuple[tuple[int, str], ...] = ()  # (status, when) answered with error_schema
    error_schema: Mapping[str, Any] | None = None  # None: the problem details


def body_schemas(routes: list[ApiRoute]) -> tuple[dict[type[Body], Any], dict[str, Any]]:
    """Each body model's schema (a reference), and the components they refer to."""
    models = list(dict.fromkeys(r.body for r in routes if r.body is not None))
    refs, components = msgspec.json.schema_components(models, ref_template=SCHEMA_REF)
    return dict(zip(models, refs, strict=True)), components


def build_openapi(routes: list[ApiRoute]) -> dict[str, Any]:
    bodies, components = body_schemas(routes)
    if "Problem" in components:
        raise ValueError("a request body model is named Problem, like the problem details")
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
        for status, when in r.errors:
            op["responses"][str(status)] = _error_response(r, when)
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
                "required": not r.body_optional,
                "content": {"application/json": {"schema": bodies[r.body]}},
            }
        if r.form:
            op["requestBody"] = {"required": True, "content": {FORM: {"schema": form_schema(r)}}}
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
                },
                **components,
            },
            "securitySchemes": {"clientCertificate": {"type": "mutualTLS"}},
        },
        "security": [{"clientCertificate": []}],
    }


def form_schema(route: ApiRoute) -> dict[str, Any]:
    """The schema of a route's form body: every field a string, the required ones listed."""
    return {
        "type": "object",
        "properties": {
            f.name: {"type": "string", "description": f.description} for f in route.form
        },
        "required": [f.name for f in route.form if f.required],
    }


def _error_response(route: ApiRoute, when: str) -> dict[str, Any]:
    if route.error_schema is None:
        return {"description": when, "content": {"application/problem+json": {"schema": PROBLEM}}}
    return {
        "description": when,
        "content": {"application/json": {"schema": dict(route.error_schema)}},
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]
