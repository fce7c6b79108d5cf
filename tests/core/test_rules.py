"""One registry of rule names (proxyd.rules): the source, the registry and docs/policy.md agree.

The scanner reads every module of src/proxyd and collects what stands in a
*rule position*: an argument bound to a parameter or dataclass field named
`rule` (`_deny`, `Decision`, `Denied`, `NotFound`, `BadRequest`, `Problem`,
`queue_event`, `record_failure`, ... found by their signatures, also when the
callable is passed on, as to `to_thread`), a `rule=` keyword, a `"rule":` dict
entry, an assignment to `rule` or `.rule`, a comparison or `or` with
`rule`/`.rule`, the default of a `rule` parameter, what a `rule` property
returns, and what a function called in a rule position returns. Names and
constants are followed to their assignments; f-strings are rule templates,
expanded from an enclosing `if X in (...)` or by TEMPLATES below. Log
channels, file names and audit operation names (`task.match`, `site.mask`)
are not in rule positions and so are not rules.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path

from proxyd import names, policy
from proxyd.config import PolicyConfig
from proxyd.principal import Principal, PrincipalKind
from proxyd.rules import RULES, Rule, rule, rules_for_docs

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "proxyd"
POLICY_DOC = ROOT / "docs" / "policy.md"
REGISTRY = SRC / "rules.py"  # the registry does not vouch for itself
RULE_SHAPE = re.compile(r"[a-z_]+\.[a-z_]+")
TEMPLATE_TEXT = re.compile(r"[a-z_.]*")
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_COLLECTIONS = frozenset({"frozenset", "set", "tuple", "list", "sorted"})


@dataclasses.dataclass(frozen=True)
class Use:
    """A rule name, or an f-string template of rule names, in a rule position."""

    name: str
    where: str
    choices: frozenset[str] = frozenset()  # a template's values from `if X in (...)`

    @property
    def is_template(self) -> bool:
        return "{" in self.name


def _callee(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_rule_ref(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "rule") or (
        isinstance(node, ast.Attribute) and node.attr == "rule"
    )


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


class RuleScanner:
    """The rule names that a set of Python sources use in rule positions."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.modules = {where: ast.parse(text) for where, text in sources.items()}
        self.parent: dict[ast.AST, ast.AST] = {}
        self.module_of: dict[ast.AST, str] = {}
        for where, tree in self.modules.items():
            for node in ast.walk(tree):
                self.module_of[node] = where
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node
        self.constants: dict[str, dict[str, list[ast.expr]]] = {w: {} for w in self.modules}
        self.returns: dict[str, list[ast.expr]] = {}
        self.slots: dict[str, set[int]] = {}  # callable -> positional index of its `rule`
        self._index()

    # --- what the sources define ---------------------------------------------------------

    def _index(self) -> None:
        classes: list[ast.ClassDef] = []
        for where, tree in self.modules.items():
            for stmt in tree.body:
                targets: list[ast.expr] = []
                value: ast.expr | None = None
                if isinstance(stmt, ast.Assign):
                    targets, value = stmt.targets, stmt.value
                elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    targets, value = [stmt.target], stmt.value
                for t in targets:
                    if isinstance(t, ast.Name) and value is not None:
                        self.constants[where].setdefault(t.id, []).append(value)
            for node in ast.walk(tree):
                if isinstance(node, _FUNCTIONS):
                    self.returns.setdefault(node.name, []).extend(
                        r.value for r in self._own_returns(node) if r.value is not None
                    )
                    self._function_slot(node)
                elif isinstance(node, ast.ClassDef):
                    classes.append(node)
        for cls in classes:
            if _is_dataclass(cls):
                fields = [
                    s.target.id
                    for s in cls.body
                    if isinstance(s, ast.AnnAssign)
                    and isinstance(s.target, ast.Name)
                    and "ClassVar" not in ast.unparse(s.annotation)
                ]
                if "rule" in fields:
                    self.slots.setdefault(cls.name, set()).add(fields.index("rule"))
        changed = True
        while changed:  # classes without a `rule` signature of their own inherit their base's
            changed = False
            for cls in classes:
                own = any(isinstance(s, _FUNCTIONS) and s.name == "__init__" for s in cls.body)
                if own or cls.name in self.slots:
                    continue
                for base in cls.bases:
                    name = _callee(base)
                    if name is not None and name in self.slots:
                        self.slots[cls.name] = set(self.slots[name])
                        changed = True

    def _own_returns(self, func: ast.AST) -> Iterator[ast.Return]:
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and self._function_of(node) is func:
                yield node

    def _function_slot(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        params = [a.arg for a in (*func.args.posonlyargs, *func.args.args)]
        if "rule" not in params:
            return
        index = params.index("rule")
        in_class = isinstance(self.parent.get(func), ast.ClassDef)
        static = any(ast.unparse(d) == "staticmethod" for d in func.decorator_list)
        if in_class and not static and params[0] in ("self", "cls"):
            index -= 1
        if func.name == "__init__":
            cls = self.parent[func]
            assert isinstance(cls, ast.ClassDef)
            self.slots.setdefault(cls.name, set()).add(index)
        else:
            self.slots.setdefault(func.name, set()).add(index)

    def _function_of(
        self, node: ast.AST
    ) -> ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None:
        up = self.parent.get(node)
        while up is not None:
            if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return up
            up = self.parent.get(up)
        return None

    # --- rule positions ------------------------------------------------------------------

    def positions(self) -> Iterator[ast.expr]:
        """Every expression whose value becomes (or is compared with) a rule."""
        for tree in self.modules.values():
            for node in ast.walk(tree):
                yield from self._positions_at(node)

    def _positions_at(self, node: ast.AST) -> Iterator[ast.expr]:
        if isinstance(node, ast.Call):
            yield from self._call_positions(node)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_rule_ref(o) for o in operands):
                yield from (o for o in operands if not _is_rule_ref(o))
        elif isinstance(node, ast.BoolOp):
            if any(_is_rule_ref(v) for v in node.values):
                yield from (v for v in node.values if not _is_rule_ref(v))
        elif isinstance(node, ast.Assign):
            if any(_is_rule_ref(t) for t in node.targets):
                yield node.value
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None and _is_rule_ref(node.target):
                yield node.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "rule":
                    yield value
        elif isinstance(node, _FUNCTIONS):
            yield from self._function_positions(node)

    def _call_positions(self, call: ast.Call) -> Iterator[ast.expr]:
        for kw in call.keywords:
            if kw.arg == "rule":
                yield kw.value
        name = _callee(call.func)
        if name is not None:
            yield from self._slot_args(name, call.args, 0)
        for i, arg in enumerate(call.args):  # a rule-taking callable handed on with its arguments
            passed = _callee(arg)
            if passed is not None and passed in self.slots:
                yield from self._slot_args(passed, call.args, i + 1)

    def _slot_args(self, name: str, args: list[ast.expr], start: int) -> Iterator[ast.expr]:
        for index in self.slots.get(name, ()):
            at = start + index
            if at < len(args) and not any(isinstance(a, ast.Starred) for a in args[: at + 1]):
                yield args[at]

    def _function_positions(
        self, func: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> Iterator[ast.expr]:
        if func.name == "rule":
            yield from (r.value for r in self._own_returns(func) if r.value is not None)
        positional = [*func.args.posonlyargs, *func.args.args]
        for arg, default in zip(
            positional[len(positional) - len(func.args.defaults) :], func.args.defaults, strict=True
        ):
            if arg.arg == "rule":
                yield default
        for arg, kw_default in zip(func.args.kwonlyargs, func.args.kw_defaults, strict=True):
            if arg.arg == "rule" and kw_default is not None:
                yield kw_default

    # --- values of an expression ---------------------------------------------------------

    def uses(self) -> set[Use]:
        found: set[Use] = set()
        for expr in self.positions():
            found |= set(self.values(expr, set()))
        return found

    def values(self, expr: ast.expr, seen: set[int]) -> Iterator[Use]:
        if id(expr) in seen:
            return
        seen.add(id(expr))
        where = f"{self.module_of.get(expr, '?')}:{getattr(expr, 'lineno', 0)}"
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, str) and RULE_SHAPE.fullmatch(expr.value):
                yield Use(expr.value, where)
        elif isinstance(expr, ast.JoinedStr):
            template = self._template(expr)
            if template is not None:
                yield Use(template, where, self._choices(expr, template))
        elif isinstance(expr, ast.IfExp):
            yield from self.values(expr.body, seen)
            yield from self.values(expr.orelse, seen)
        elif isinstance(expr, ast.BoolOp):
            for v in expr.values:
                yield from self.values(v, seen)
        elif isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
            for e in expr.elts:
                yield from self.values(e, seen)
        elif isinstance(expr, ast.Starred):
            yield from self.values(expr.value, seen)
        elif isinstance(expr, ast.Call):
            name = _callee(expr.func)
            if name in _COLLECTIONS:
                for a in expr.args:
                    yield from self.values(a, seen)
            elif name is not None:
                for r in self.returns.get(name, ()):
                    yield from self.values(r, seen)
        elif isinstance(expr, ast.Name):
            for v in self._assigned(expr):
                yield from self.values(v, seen)
        elif isinstance(expr, ast.Attribute) and expr.attr.isupper():
            for module in self.constants.values():
                for v in module.get(expr.attr, ()):
                    yield from self.values(v, seen)

    def _assigned(self, name: ast.Name) -> list[ast.expr]:
        """What `name` may hold: its assignments in the enclosing function, else the module
        constant of that name (in its own module first, then an imported one)."""
        func = self._function_of(name)
        if func is not None:
            local = [
                n.value
                for n in ast.walk(func)
                if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name.id for t in n.targets)
            ]
            if local:
                return local
            params = func.args
            if name.id in {a.arg for a in (*params.posonlyargs, *params.args, *params.kwonlyargs)}:
                return []  # a parameter: its rule positions are at the callers
        own = self.constants.get(self.module_of.get(name, ""), {}).get(name.id)
        if own:
            return own
        return [v for module in self.constants.values() for v in module.get(name.id, ())]

    @staticmethod
    def _template(expr: ast.JoinedStr) -> str | None:
        parts: list[str] = []
        literal = ""
        for v in expr.values:
            if isinstance(v, ast.Constant) and isinstance(v.value, str):
                if not TEMPLATE_TEXT.fullmatch(v.value):
                    return None
                parts.append(v.value)
                literal += v.value
            elif isinstance(v, ast.FormattedValue):
                parts.append("{" + ast.unparse(v.value) + "}")
        return "".join(parts) if "." in literal else None

    def _choices(self, expr: ast.JoinedStr, template: str) -> frozenset[str]:
        """The values of a one-field template from an enclosing `if <field> in (<strings>)`."""
        fields = [v for v in expr.values if isinstance(v, ast.FormattedValue)]
        if len(fields) != 1:
            return frozenset()
        field = ast.unparse(fields[0].value)
        up = self.parent.get(expr)
        while up is not None:
            if isinstance(up, (ast.If, ast.IfExp, ast.While)):
                for cmp in ast.walk(up.test):
                    if (
                        isinstance(cmp, ast.Compare)
                        and ast.unparse(cmp.left) == field
                        and isinstance(cmp.ops[0], ast.In)
                        and isinstance(cmp.comparators[0], (ast.Tuple, ast.List, ast.Set))
                    ):
                        options = [
                            e.value
                            for e in cmp.comparators[0].elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        ]
                        return frozenset(template.replace("{" + field + "}", o) for o in options)
            up = self.parent.get(up)
        return frozenset()


def _listed_rules() -> frozenset[str]:
    """policy._listed: `<operation>.<config list>` for each operation allowed by a DN list."""
    config_lists = {f.name for f in dataclasses.fields(PolicyConfig)}
    nobody = Principal("/C=XX/O=nowhere/CN=nobody", PrincipalKind.USER)
    out = set()
    for op in policy.Operation:
        decision = policy.decide(policy.Request(op), nobody, None, PolicyConfig())
        area, _, rest = decision.rule.partition(".")
        if area == op.value and rest in config_lists:
            out.add(decision.rule)
    return frozenset(out)


# Templates whose values no enclosing `if X in (...)` names: how to list them.
TEMPLATES: dict[str, Callable[[], frozenset[str]]] = {
    "{request.operation.value}.{patterns_of}": _listed_rules,
    "request.bad_{self.kind.label}": lambda: frozenset(
        f"request.bad_{k.label}" for k in vars(names).values() if isinstance(k, names.Kind)
    ),
}


def expand(uses: set[Use]) -> tuple[dict[str, set[str]], list[str]]:
    """Rule name -> where it is used, and the templates that cannot be expanded."""
    out: dict[str, set[str]] = {}
    unknown = []
    for use in uses:
        if not use.is_template:
            out.setdefault(use.name, set()).add(use.where)
            continue
        values = use.choices or (TEMPLATES[use.name]() if use.name in TEMPLATES else None)
        if not values:
            unknown.append(f"{use.name} at {use.where}")
            continue
        shape = re.compile(re.sub(r"\\\{[^}]*\\\}", "[a-z_]+", re.escape(use.name)))
        for value in values:
            assert shape.fullmatch(value), f"{value} does not fit the template {use.name}"
            out.setdefault(value, set()).add(f"{use.where} ({use.name})")
    return out, sorted(unknown)


@cache
def source_rules() -> tuple[dict[str, set[str]], list[str], frozenset[str]]:
    sources = {
        str(p.relative_to(SRC.parent)): p.read_text()
        for p in sorted(SRC.rglob("*.py"))
        if p != REGISTRY
    }
    uses = RuleScanner(sources).uses()
    found, unknown = expand(uses)
    templates = frozenset(u.name for u in uses if u.is_template and not u.choices)
    return found, unknown, templates


# --- the source and the registry ----------------------------------------------------------


def test_every_rule_the_source_uses_is_registered() -> None:
    found, unknown, _ = source_rules()
    assert not unknown, f"rule templates the test cannot expand (add them to TEMPLATES): {unknown}"
    missing = {name: sorted(where) for name, where in found.items() if name not in RULES}
    assert not missing, (
        "rules used in src/proxyd but not registered in proxyd.rules:\n"
        + "\n".join(f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items()))
    )


def test_every_registered_rule_is_used() -> None:
    found, _, _ = source_rules()
    stale = sorted(set(RULES) - set(found))
    assert not stale, f"registered rules that no source uses in a rule position any more: {stale}"


def test_every_template_table_entry_is_used() -> None:
    _, _, templates = source_rules()
    assert set(TEMPLATES) == templates, (
        f"TEMPLATES lists {sorted(set(TEMPLATES) - templates)} that the source no longer "
        f"builds; the source builds {sorted(templates - set(TEMPLATES))} that it does not list"
    )


def test_known_rules_are_found_where_they_are_made() -> None:
    """A few rules of each kind of position, so a scanner that lost one fails loudly."""
    found, _, _ = source_rules()
    expected = {
        "ban.peer": "policy/decide.py",  # _deny(...)
        "admin.local_operator": "policy/model.py",  # Decision(True, ...)
        "credential.revoked": "policy/decide.py",  # f"credential.{verdict}" under `in (...)`
        "admin.admins": "policy/decide.py",  # policy._listed
        "auth.cannot_unseal": "core/base.py",  # self._auth_failure(..., rule, message)
        "renew.challenge_unanswered": "myproxy/server.py",  # to_thread(record_failure, ...)
        "auth.expired": "authfail.py",  # returned by reason_class, passed as rule=
        "queue.fair_share": "taskqueue/base.py",  # RULE_MATCH passed to queue_event
        "task.state_conflict": "tasks.py",  # STATE_CONFLICT
        "request.bad_pattern": "names.py",  # the InvalidField.rule property
        "task.not_found": "api/tasks.py",  # Problem(404, message, rule)
    }
    wrong = {
        name: sorted(found.get(name, ()))
        for name, module in expected.items()
        if not any(w.startswith(f"proxyd/{module}:") for w in found.get(name, ()))
    }
    assert not wrong, f"rules not found in the module that makes them: {wrong}"


def test_operations_and_other_dotted_names_are_not_rules() -> None:
    found, _, _ = source_rules()
    not_rules = {"task.match", "task.stall", "site.mask", "owner.ban", "proxyd.access", "ca.pem"}
    assert not_rules.isdisjoint(found), sorted(not_rules & set(found))


SNIPPET = """
import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger("proxyd.snippet")
RULE_SWEEP = "queue.swept"

@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str

class Refused(Exception):
    def __init__(self, message: str, rule: str | None = None) -> None:
        self.rule = rule

class Gone(Refused):
    pass

def _deny(rule: str, why: str) -> Decision:
    return Decision(False, rule)

def classify(text: str) -> str:
    return "auth.odd" if text else "auth.even"

class Repo:
    def record(self, who: str, rule: str, *, hint: str = "x.y") -> None:
        pass

def decide(kind: str, verdict: str) -> Decision:
    if kind == "a":
        return _deny("made.up", "because")
    if verdict in ("stale", "gone"):
        return _deny(f"cred.{verdict}", "no longer valid")
    rule = "local.var" if kind else "local.other"
    return Decision(True, rule)

async def edge(repo: Repo, exc: Refused) -> None:
    await asyncio.to_thread(repo.record, "who", "handed.on")
    if exc.rule == "compared.rule" or exc.rule in {"set.member"}:
        raise Gone("inherited", "from.base")
    raise Refused("message", rule=classify("x"))

def sweep(e: object) -> dict[str, str]:
    return {"operation": "task.sweep", "rule": RULE_SWEEP, "file": "ca.pem"}
"""


def test_the_scanner_finds_rules_in_a_snippet() -> None:
    uses = RuleScanner({"snippet.py": SNIPPET}).uses()
    found, unknown = expand(uses)
    assert not unknown
    assert set(found) == {
        "made.up",
        "cred.stale",
        "cred.gone",
        "local.var",
        "local.other",
        "handed.on",
        "compared.rule",
        "set.member",
        "from.base",
        "auth.odd",
        "auth.even",
        "queue.swept",
    }, sorted(found)
    assert found["made.up"] == {"snippet.py:33"}


def test_the_scanner_reports_a_template_it_cannot_expand() -> None:
    snippet = 'def _deny(rule, why):\n    pass\n\ndef f(x):\n    _deny(f"area.{x}", "")\n'
    _, unknown = expand(RuleScanner({"m.py": snippet}).uses())
    assert unknown == ["area.{x} at m.py:5"]


# --- the registry itself, the docs and the rendered table ---------------------------------


def test_registry_entries_are_well_formed() -> None:
    assert len(RULES) >= 80
    for name, entry in RULES.items():
        assert isinstance(entry, Rule) and entry.name == name
    assert list(RULES) == sorted(RULES)
    assert rule("ban.peer").invariant == "I5"
    try:
        rule("ban.everyone")
    except KeyError as exc:
        assert "ban.everyone" in str(exc)
    else:
        raise AssertionError("an unknown rule name was accepted")


def test_every_registered_rule_is_in_the_policy_docs() -> None:
    text = POLICY_DOC.read_text()
    missing = [r for r in RULES.values() if f"`{r.name}`" not in text]
    assert not missing, f"{len(missing)} rules are not in docs/policy.md:\n" + "\n".join(
        f"  `{r.name}`: {r.meaning}" for r in missing
    )


def test_rendered_table_holds_every_rule_once() -> None:
    table = rules_for_docs()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(RULES)
    for name in RULES:
        assert table.count(f"`{name}`") == 1, name
    assert [row.split("`")[1] for row in rows] == sorted(RULES)
    assert f"| `ban.peer` | {RULES['ban.peer'].meaning} | I5 |" in rows


def test_the_policy_docs_table_is_the_generated_one() -> None:
    """docs/policy.md's "Every rule" table is rules_for_docs() exactly: no hand edits drift."""
    text = POLICY_DOC.read_text()
    begin, end = "<!-- rules:begin -->\n", "\n<!-- rules:end -->"
    assert begin in text and end in text, "docs/policy.md lost its rules:begin/end markers"
    table = text.split(begin, 1)[1].split(end, 1)[0]
    assert table == rules_for_docs(), (
        "regenerate the table in docs/policy.md (see the command above it)"
    )
