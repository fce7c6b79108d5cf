"""The dashboard's layers: the edge moves bytes, the read model decides, templates escape.

- `proxyd.api.ui` imports neither SQLAlchemy nor `proxyd.store`;
- every `proxyd.core.dashboard.Dashboard` read makes exactly one audited
  `audit_read` decision, before it reads or validates anything;
- `make_app` gives the application an autoescaping template environment.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxyd.api import ui
from proxyd.api.app import make_app
from proxyd.config import load_config
from proxyd.core.dashboard import BadRequest, Dashboard, Denied
from proxyd.devpki import DevPKI
from proxyd.principal import Principal
from proxyd.repository import Repository
from proxyd.taskqueue import load_taskqueue
from proxyd.tasks import TaskService
from tests.support.grid import load_identity, make_repository, principal
from tests.ui.conftest import CAROL


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a source file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative to `package`
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_edge_imports_neither_sqlalchemy_nor_the_store() -> None:
    imported = _imports(Path(ui.__file__), "proxyd.api")
    assert "proxyd.core.dashboard" in imported
    assert not {m for m in imported if m.split(".")[0] == "sqlalchemy"}
    assert not {m for m in imported if m.startswith(("proxyd.store", "proxyd.repository"))}


def test_make_app_sets_up_autoescaping_templates(dev_pki: DevPKI, tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    repo = make_repository(dev_pki, tmp_path / "state")
    try:
        app = make_app(repo.config, repo)
        env = app[ui.TEMPLATES]  # setup_ui(app) in make_app
        assert ui.setup_ui(app) is env  # once
        assert env.from_string("{{ x }}").render(x="<b>\"'&") == "&lt;b&gt;&#34;&#39;&amp;"
        for name in ("base.html", "error.html", "log.html", "overview.html"):
            assert env.get_template(name).environment.autoescape is not False
        assert "app" not in env.globals  # templates cannot reach the Repository
    finally:
        repo.engine.dispose()


def test_setup_ui_on_a_bare_application() -> None:
    env = ui.setup_ui(web.Application())
    assert env.from_string("{{ x }}").render(x="a\u202eb") == "a\\u202eb"  # names.escape
    assert env.from_string("{{ x|wbr }}").render(x="/CN=<i>") == "/<wbr>CN=&lt;i&gt;"


# --- the read model ----------------------------------------------------------------------


@pytest.fixture
def repo(dev_pki: DevPKI, tmp_path: Path) -> Iterator[Repository]:
    tmp_path.chmod(0o700)
    policy = dataclasses.replace(load_config(dev_pki.config).policy, auditors=(CAROL,))
    repo = make_repository(dev_pki, tmp_path / "state", policy=policy)
    yield repo
    repo.engine.dispose()


def _reads(repo: Repository) -> list[tuple[str, str]]:
    return [
        (s.event.decision, s.event.rule)
        for s in repo.audit.query(operation="audit_read", limit=1000)
    ]


def _who(repo: Repository, dev_pki: DevPKI, name: str) -> Principal:
    return principal(repo, load_identity(dev_pki, name))


READS: list[tuple[str, Callable[[Dashboard, Principal], Any]]] = [
    ("overview", lambda d, p: d.overview(p)),
    ("log", lambda d, p: d.log(p, {"decision": "deny"})),
    ("credentials", lambda d, p: d.credentials(p)),
    ("tasks", lambda d, p: d.tasks(p)),
    ("pilots", lambda d, p: d.pilots(p)),
    ("accounting", lambda d, p: d.accounting(p, "site")),
]


@pytest.mark.parametrize("queue", [False, True])
@pytest.mark.parametrize(("page", "read"), READS)
def test_each_read_is_one_audited_decision(
    repo: Repository, dev_pki: DevPKI, page: str, read: Callable[..., Any], queue: bool
) -> None:
    tasks = TaskService(repo, load_taskqueue("sql", repo.engine, audit=repo.audit))
    board = Dashboard(repo, tasks if queue else None)
    read(board, _who(repo, dev_pki, "carol"))
    assert _reads(repo) == [("allow", "audit_read.auditors")]
    with pytest.raises(Denied):
        read(board, _who(repo, dev_pki, "alice"))
    assert _reads(repo)[0] == ("deny", "audit_read.auditors") and len(_reads(repo)) == 2


def test_bad_input_is_refused_after_the_decision(repo: Repository, dev_pki: DevPKI) -> None:
    board = Dashboard(repo)
    with pytest.raises(Denied):  # a non-auditor learns nothing from the filters
        board.log(_who(repo, dev_pki, "alice"), {"limit": "ten"})
    with pytest.raises(BadRequest, match="'limit' must be a whole number"):
        board.log(_who(repo, dev_pki, "carol"), {"limit": "ten"})
    with pytest.raises(BadRequest, match="'since' must be before 'until'"):
        board.log(_who(repo, dev_pki, "carol"), {"since": "2026-02-02", "until": "2026-02-01"})
    assert [d for d, _ in _reads(repo)] == ["allow", "allow", "deny"]
