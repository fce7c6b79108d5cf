"""contrib/ and the operator-facing docs, checked against the code they describe.

- contrib/proxyd.toml parses with `parse_config` and sets every key config.py accepts;
- the systemd units carry the hardening directives, and their commands parse with
  the real argument parsers;
- the Prometheus rules and the Grafana dashboard use only the metrics (and labels)
  of `proxyd.metrics`; the rules file is checked with a small parser for the YAML
  subset it is written in (PyYAML is not a dependency);
- README's links resolve and every docs/*.md is linked from it;
- every proxyd command in the new docs parses with the real parsers, and every
  test, contrib file and metric they name exists;
- the export checker in docs/auditor.md verifies a real export.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from proxyd import config as config_module
from proxyd import metrics as metrics_module
from proxyd.cli import audit as audit_cli
from proxyd.cli import main as proxyd_cli
from proxyd.cli import pilot as pilot_cli
from proxyd.cli import proxy_destroy, proxy_info, proxy_init
from proxyd.config import parse_config
from proxyd.policy import Operation
from proxyd.reminders.settings import RemindersConfig
from proxyd.tokens.settings import TokensConfig
from tests.support.tools import REQUIRE_INTEROP, require_tool

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
DOCS = ROOT / "docs"
SYSTEMD = CONTRIB / "systemd"
CONFIG_PATH = "/etc/proxyd/proxyd.toml"  # where contrib/proxyd.toml is installed
NEW_DOCS = (
    "quickstart",
    "operator",
    "auditor",
    "architecture",
    "pilot-security-review",
    "tutorial",
)

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "proxyd": proxyd_cli.build_parser,
    "proxyd-audit": audit_cli.build_parser,
    "proxyd-pilot": pilot_cli.build_parser,
    "proxy-init": proxy_init.build_parser,
    "proxy-info": proxy_info.build_parser,
    "proxy-destroy": proxy_destroy.build_parser,
}


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Parse a command line with the real parser of its program; fail with argparse's reason."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return PARSERS[argv[0]]().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{shlex.join(argv)!r} does not parse: {err.getvalue().strip()}")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# --- contrib/proxyd.toml ---------------------------------------------------------------

SECTIONS: dict[str, type] = {
    "server": config_module.ServerConfig,
    "myproxy": config_module.MyProxyConfig,
    "api": config_module.ApiConfig,
    "aa": config_module.AaConfig,
    "metrics": config_module.MetricsConfig,
    "policy": config_module.PolicyConfig,
    "sealing": config_module.SealingConfig,
    "taskqueue": config_module.TaskQueueConfig,
    "reminders": RemindersConfig,
    "tokens": TokensConfig,
}


def contrib_config() -> config_module.Config:
    return parse_config((CONTRIB / "proxyd.toml").read_text(), CONFIG_PATH)


def test_production_config_parses_and_sets_every_key() -> None:
    text = (CONTRIB / "proxyd.toml").read_text()
    parse_config(text, CONFIG_PATH)  # the paths need not exist
    doc = tomllib.loads(text)
    # upstream_voms holds the [[voms]] tables that name a vomses file instead of an AA key.
    known_sections = {*SECTIONS, "voms", "upstream_voms"}
    config_fields = {f.name for f in dataclasses.fields(config_module.Config)} - {"source"}
    assert known_sections == config_fields, "a config section is not covered by this test"
    for section, cls in SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(doc[section]) == keys, f"[{section}]: missing {keys - set(doc[section])}"
    assert doc["voms"], "at least one [[voms]] table"
    for table in doc["voms"]:
        assert set(table) == {f.name for f in dataclasses.fields(config_module.VoConfig)}
    assert doc["taskqueue"]["shares"], "show the shares table"


def test_production_config_values_are_safe() -> None:
    cfg = contrib_config()
    p = cfg.policy
    assert p.full_delegation_hosts == () and p.key_retrievers == ()
    assert p.allow_self_authorization is False
    assert p.pilot_dns or p.pilot_fqans
    assert cfg.myproxy.tls_min_version == "1.2"
    defaults = config_module.SealingConfig()
    assert cfg.sealing.argon2_time_cost >= defaults.argon2_time_cost
    assert cfg.sealing.argon2_memory_kib >= defaults.argon2_memory_kib
    # Everything proxyd writes must be under the unit's ReadWritePaths (ProtectSystem=strict):
    # the master key is rotated by writing a new file next to it.
    writable = [Path(v) for v in unit("proxyd.service")["Service"]["ReadWritePaths"]]
    db = Path(cfg.server.database.removeprefix("sqlite:///"))
    for path in (cfg.server.state_dir, cfg.server.master_key_file, db):
        assert any(path == w or w in path.parents for w in writable), path


# --- systemd units -------------------------------------------------------------------------


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}}; continuation lines joined."""
    text = (SYSTEMD / name).read_text()
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical = re.sub(r"\\\n", " ", text)
    for number, raw in enumerate(logical.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{name}:{number}: not a key=value line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def last(section: dict[str, list[str]], key: str) -> str | None:
    values = section.get(key)
    return values[-1] if values else None


HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "NoNewPrivileges": "true",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
}


def test_proxyd_service_is_hardened() -> None:
    service = unit("proxyd.service")["Service"]
    expected = {
        **HARDENING,
        "User": "proxyd",
        "Group": "proxyd",
        "UMask": "0077",
        "Restart": "on-failure",
        "ExecStart": f"/usr/bin/proxyd serve --config {CONFIG_PATH} --workers 2",
    }
    for key, value in expected.items():
        assert last(service, key) == value, key
    assert "/var/lib/proxyd" in service["ReadWritePaths"]
    cfg = contrib_config()
    ports = [x.port for x in (cfg.myproxy.listen, cfg.api.listen) if x is not None]
    needed = "" if all(port >= 1024 for port in ports) else "CAP_NET_BIND_SERVICE"
    assert last(service, "CapabilityBoundingSet") == needed
    assert last(service, "AmbientCapabilities") in (None, needed)
    args = parse_command(_argv(service))
    assert (args.command, args.config, args.workers) == ("serve", CONFIG_PATH, 2)


def _argv(service: dict[str, list[str]], key: str = "ExecStart") -> list[str]:
    argv = shlex.split(service[key][-1].replace("%i", "SITE-EXAMPLE"))
    assert argv[0].startswith("/usr/bin/"), argv
    return [Path(argv[0]).name, *argv[1:]]


def test_expire_service_and_timer() -> None:
    service = unit("proxyd-expire.service")["Service"]
    for key, value in {**HARDENING, "User": "proxyd", "Type": "oneshot"}.items():
        assert last(service, key) == value, key
    assert last(service, "CapabilityBoundingSet") == ""
    args = parse_command(_argv(service))
    assert (args.command, args.admin_command, args.config) == ("admin", "expire", CONFIG_PATH)
    assert not args.dry_run
    timer = unit("proxyd-expire.timer")
    assert last(timer["Timer"], "OnCalendar") == "daily"
    assert last(timer["Timer"], "Persistent") == "true"
    assert last(timer["Timer"], "Unit") == "proxyd-expire.service"
    assert last(timer["Install"], "WantedBy") == "timers.target"


def test_audit_anchor_service_and_timer() -> None:
    service = unit("proxyd-audit-anchor.service")["Service"]
    for key, value in {**HARDENING, "User": "proxyd", "Type": "oneshot"}.items():
        assert last(service, key) == value, key
    args = parse_command(_argv(service))
    assert (args.command, args.config) == ("anchor", CONFIG_PATH)
    timer = unit("proxyd-audit-anchor.timer")
    assert last(timer["Timer"], "OnCalendar") == "hourly"
    assert last(timer["Timer"], "Unit") == "proxyd-audit-anchor.service"
    assert last(timer["Install"], "WantedBy") == "timers.target"


def test_pilot_template_unit() -> None:
    service = unit("proxyd-pilot@.service")["Service"]
    for key, value in HARDENING.items():
        assert last(service, key) == value, key
    args = parse_command(_argv(service))
    assert args.site == "SITE-EXAMPLE" and args.identity_switch == "account-map"
    assert args.account_map is not None
    caps = set((last(service, "CapabilityBoundingSet") or "").split())
    assert caps <= {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE"} | {
        "CAP_FOWNER",
        "CAP_KILL",
    }
    # What a stopped pilot leaves behind is removed: the agent's work directories.
    agent = (ROOT / "src/proxyd/pilot/agent.py").read_text()
    assert 'mkdtemp(prefix=f"task-' in agent
    stop = last(service, "ExecStopPost") or ""
    assert f"{args.workdir}/task-*".replace("SITE-EXAMPLE", "%i") in stop
    assert str(args.workdir).startswith(service["ReadWritePaths"][-1])


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: no unknown key, no value it cannot parse.

    Skipped on a machine without systemd-analyze; under PROXYD_REQUIRE_INTEROP=1
    (CI, which installs the systemd package) a missing or failing tool fails.
    """
    tool = require_tool("systemd-analyze")
    binary = Path(sys.executable).with_name("proxyd")
    names = []
    for path in sorted(SYSTEMD.iterdir()):
        text = path.read_text().replace("/usr/bin/", f"{binary.parent}/")
        name = path.name.replace("@.", "@SITE.")
        (tmp_path / name).write_text(text)
        names.append(f"./{name}")
    proc = subprocess.run(
        [tool, "verify", "--man=no", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = [line for line in proc.stderr.splitlines() if str(tmp_path) in line]
    if proc.returncode != 0 and not ours:
        message = f"systemd-analyze cannot run here: {proc.stderr.strip()[:400]}"
        if REQUIRE_INTEROP:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    assert ours == []


def test_logrotate_snippet(tmp_path: Path) -> None:
    text = (CONTRIB / "logrotate" / "proxyd").read_text()
    match = re.search(r"^(/\S+)\s*\{(.*?)^\}", text, re.MULTILINE | re.DOTALL)
    assert match is not None
    pattern, body = match.group(1), match.group(2).split()
    assert "copytruncate" in body  # systemd holds the file; proxyd cannot reopen it
    service = (SYSTEMD / "proxyd.service").read_text()
    log_file = re.search(r"StandardError=append:(\S+)", service)
    assert log_file is not None and fnmatch.fnmatch(log_file.group(1), pattern)
    tool = require_tool("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "proxyd.log").write_text("{}\n")
    conf = tmp_path / "proxyd"
    conf.write_text(text.replace(str(Path(pattern).parent), str(logs)))
    conf.chmod(0o644)
    proc = subprocess.run(
        [tool, "-d", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "error:" not in proc.stderr, proc.stderr


# --- metrics, PromQL ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    labels: frozenset[str]


def known_samples() -> dict[str, Metric]:
    """Every sample name proxyd exports for the metrics of proxyd.metrics."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum")}
    out: dict[str, Metric] = {}
    for value in vars(metrics_module).values():
        if isinstance(value, MetricWrapperBase):
            metric = Metric(value._name, value._type, frozenset(value._labelnames))
            for suffix in (*suffixes.get(metric.kind, ("",)), "_created"):
                out[metric.name + suffix] = metric
    assert {"proxyd_decisions_total", "proxyd_request_seconds_bucket"} <= set(out)
    return out


def rule_names() -> set[str]:
    """String literals of src/proxyd shaped like rule names (a superset of the rules)."""
    names = set()
    for path in (ROOT / "src" / "proxyd").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[a-z_]+\.[a-z_]+", node.value)
            ):
                names.add(node.value)
    assert {"ban.peer", "auth.cannot_unseal", "payload.not_assigned"} <= names
    return names


LABEL_VALUES: dict[str, set[str]] = {
    "decision": {"allow", "deny"},
    "operation": {op.value for op in Operation},
    "type": {"limited", "full"},
    "interface": {"https", "myproxy"},
}
TARGET_LABELS = {"job", "instance"}
_PROMQL_AGGREGATIONS = (
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile"
)
_PROMQL_KEYWORDS = "by without on ignoring group_left group_right bool and or unless offset"
_PROMQL_FUNCTIONS = (
    "rate irate increase delta idelta deriv predict_linear resets changes histogram_quantile "
    "absent absent_over_time vector scalar time clamp clamp_min clamp_max abs ceil floor round "
    "sort sort_desc label_replace label_join avg_over_time min_over_time max_over_time "
    "sum_over_time count_over_time last_over_time"
)
PROMQL_WORDS = frozenset(f"{_PROMQL_AGGREGATIONS} {_PROMQL_KEYWORDS} {_PROMQL_FUNCTIONS}".split())
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


def check_promql(expr: str) -> set[str]:
    """The metric samples an expression uses; fails on unknown metrics, labels or values."""
    samples, rules = known_samples(), rule_names()
    values = {**LABEL_VALUES, "rule": rules}
    used: set[str] = set()
    for name, body in _SELECTOR.findall(expr):
        assert name in samples, f"{name!r} is not a proxyd metric: {expr}"
        used.add(name)
        allowed = (
            samples[name].labels | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        )
        matchers = _MATCHER.findall(body)
        assert ",".join(m.group(0).strip() for m in _MATCHER.finditer(body)) == ",".join(
            p.strip() for p in body.split(",") if p.strip()
        ), f"cannot read the matchers {body!r}"
        for label, op, raw in matchers:
            assert label in allowed, f"{name} has no label {label!r}: {expr}"
            value = re.sub(r"\\(.)", r"\1", raw)
            if label not in values or "$" in value:
                continue
            if op in ("=", "!="):
                assert value in values[label], f"{label}={value!r} never occurs: {expr}"
            else:
                for alternative in value.split("|"):
                    assert any(re.fullmatch(alternative, v) for v in values[label]), (
                        f"{label}=~{alternative!r} matches no known value: {expr}"
                    )
    rest = _STRING.sub('""', expr)
    rest = _SELECTOR.sub(lambda m: m.group(1), rest)
    rest = re.sub(r"\[[^\]]*\]", "", rest)
    grouping = {g.strip() for _, gs in _GROUPING.findall(rest) for g in gs.split(",") if g.strip()}
    rest = _GROUPING.sub(lambda m: m.group(1), rest)
    rest = re.sub(r"\b\d+(\.\d+)?\b", "", rest)
    for token in re.findall(r"[A-Za-z_:][\w:]*", rest):
        if token not in PROMQL_WORDS:
            assert token in samples, f"{token!r} is neither PromQL nor a proxyd metric: {expr}"
            used.add(token)
    assert used, f"no proxyd metric in {expr}"
    labels = set().union(*(samples[n].labels for n in used)) | TARGET_LABELS
    if any(n.endswith("_bucket") for n in used):
        labels.add("le")
    assert grouping <= labels, f"grouping by unknown labels {grouping - labels}: {expr}"
    return used


def test_the_promql_checker_catches_mistakes() -> None:
    check_promql('sum by (rule) (rate(proxyd_decisions_total{decision="deny"}[5m]))')
    for bad in (
        "rate(proxyd_decisions[5m])",  # the counter's sample is _total
        'sum(rate(proxyd_decisions_total{outcome="deny"}[5m]))',  # no such label
        'sum(rate(proxyd_decisions_total{decision="denied"}[5m]))',  # no such value
        'sum(rate(proxyd_decisions_total{rule="ban.everyone"}[5m]))',  # no such rule
        "sum by (route) (rate(proxyd_proxies_issued_total[5m]))",  # not its label
        "up == 0",  # not a proxyd metric
    ):
        with pytest.raises(AssertionError):
            check_promql(bad)


# --- a parser for the YAML subset of the Prometheus rules ------------------------------------

_PLAIN_START = set("-?:,[]{}#&*!|>'\"%@`")


class YamlSubset:
    """Block mappings, block sequences, block scalars (| and >) and quoted or plain scalars.

    Anything outside that subset is an error, so what this reads is what a
    real YAML parser (Prometheus) reads.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def error(self, message: str) -> AssertionError:
        return AssertionError(f"line {self.i + 1}: {message}")

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            stripped = self.lines[self.i].strip()
            if stripped and not stripped.startswith("#"):
                line = self.lines[self.i]
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    raise self.error("tab in indentation")
                return len(line) - len(line.lstrip(" ")), stripped
            self.i += 1
        return None

    def parse(self) -> Any:
        first = self.peek()
        if first is None:
            raise self.error("empty document")
        value = self.block(first[0])
        if self.peek() is not None:
            raise self.error("content after the document")
        return value

    def block(self, indent: int) -> Any:
        here = self.peek()
        assert here is not None
        if here[1] == "-" or here[1].startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (here := self.peek()) is not None and here[0] == indent:
            text = here[1]
            if not (text == "-" or text.startswith("- ")):
                break
            content = text[2:].strip()
            if content and not re.match(r"[^\s:]+:(\s|$)", content):
                items.append(self.scalar(content))
                self.i += 1
                continue
            line = self.lines[self.i]
            self.lines[self.i] = line[:indent] + " " + line[indent + 1 :]
            items.append(self.block(indent + 2))
        if (here := self.peek()) is not None and here[0] > indent:
            raise self.error("unexpected indentation")
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (here := self.peek()) is not None and here[0] == indent:
            match = re.fullmatch(r"([A-Za-z_][\w-]*):(?:\s+(.*))?", here[1])
            if match is None:
                raise self.error(f"expected 'key: value', got {here[1]!r}")
            key, rest = match.group(1), (match.group(2) or "").strip()
            if key in out:
                raise self.error(f"duplicate key {key!r}")
            self.i += 1
            if rest in ("|", "|-", ">", ">-"):
                out[key] = self.block_scalar(indent, rest)
            elif rest:
                out[key] = self.scalar(rest)
            else:
                child = self.peek()
                if child is None or child[0] <= indent:
                    raise self.error(f"{key!r} has no value")
                out[key] = self.block(child[0])
        if (here := self.peek()) is not None and here[0] > indent:
            raise self.error("unexpected indentation")
        return out

    def block_scalar(self, parent: int, style: str) -> str:
        body: list[str] = []
        block_indent: int | None = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                width = len(line) - len(line.lstrip(" "))
                if width <= parent:
                    break
                block_indent = width if block_indent is None else block_indent
                if width < block_indent:
                    raise self.error("block scalar line indented less than its first line")
                body.append(line[block_indent:])
            else:
                body.append("")
            self.i += 1
        while body and body[-1] == "":
            body.pop()
        if style.startswith(">"):
            paragraphs = "\n".join(body).split("\n\n")
            text = "\n".join(" ".join(p.split("\n")) for p in paragraphs)
        else:
            text = "\n".join(body)
        return text if style.endswith("-") else text + "\n"

    def scalar(self, text: str) -> str:
        if text.startswith('"'):
            try:
                value, end = json.JSONDecoder().raw_decode(text)
            except ValueError as exc:
                raise self.error(f"bad double-quoted string {text!r}: {exc}") from None
            if text[end:].strip():
                raise self.error(f"text after a quoted string: {text!r}")
            return str(value)
        if text.startswith("'"):
            if not (len(text) > 1 and text.endswith("'")):
                raise self.error(f"bad single-quoted string {text!r}")
            return text[1:-1].replace("''", "'")
        if text[0] in _PLAIN_START or ": " in text or " #" in text or text.endswith(":"):
            raise self.error(f"plain scalar {text!r} would mean something else in YAML; quote it")
        return text


def test_the_yaml_subset_parser() -> None:
    doc = YamlSubset(
        'a:\n  - b: 1\n    c: |\n      x\n        y\n  - plain\nd: >-\n  one\n  two\ne: "q: \\""\n'
    ).parse()
    assert doc == {"a": [{"b": "1", "c": "x\n  y\n"}, "plain"], "d": "one two", "e": 'q: "'}
    for bad in ("a: b: c\n", "a: 1\na: 2\n", "a:\n  b: 1\n   c: 2\n", "a: {b: 1}\n", "a:\n"):
        with pytest.raises(AssertionError):
            YamlSubset(bad).parse()


def test_alert_rules_use_only_real_metrics() -> None:
    doc = YamlSubset((CONTRIB / "prometheus" / "proxyd-alerts.yml").read_text()).parse()
    assert set(doc) == {"groups"}
    names: set[str] = set()
    used: set[str] = set()
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhdw]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            used |= check_promql(rule["expr"])
    bases = {known_samples()[s].name for s in used}
    assert bases == {m.name for m in known_samples().values()}, "every metric is alerted on"


# --- Grafana ----------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def test_dashboard_uses_only_real_metrics() -> None:
    dashboard = json.loads((CONTRIB / "grafana" / "proxyd-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    used: set[str] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used |= check_promql(target["expr"])
    for name in re.findall(r"proxyd_\w+", json.dumps(dashboard["templating"])):
        assert name in known_samples(), name
    bases = {known_samples()[s].name for s in used}
    assert bases == {m.name for m in known_samples().values()}, "every metric has a panel"


# --- README and docs ----------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_and_doc_links_resolve() -> None:
    for page in (ROOT / "README.md", *sorted(DOCS.glob("*.md"))):
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_readme_links_every_doc() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Documentation") :]
    linked = {(ROOT / t).resolve() for t in _LINK.findall(section)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert missing == [], f"README's Documentation section does not link {missing}"


def _shell_commands(text: str) -> Iterator[list[str]]:
    """Command lines of the ```sh and ```console blocks: prompts, sudo, pipes removed."""
    fenced = re.compile(r"^[ \t]*```(?:sh|console)\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
    for block in fenced.findall(text):
        pending = ""
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = pending + raw.strip()
            if line.startswith("$ "):
                line = line[2:]
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # a quoted argument goes on over the next line
                pending = line + "\n"
                continue
            pending = ""
            for i, word in enumerate(words):
                if word in ("|", "||", "&&", ";", ">", ">>"):
                    words = words[:i]
                    break
            if words[:1] == ["sudo"]:
                words = words[3:] if words[1:2] == ["-u"] else words[1:]
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]
            if words and words[0] in PARSERS:
                yield words


def test_doc_commands_parse() -> None:
    seen = 0
    for name in NEW_DOCS:
        for argv in _shell_commands((DOCS / f"{name}.md").read_text()):
            parse_command(argv)
            seen += 1
    assert seen >= 30


def test_admin_and_audit_subcommands_in_docs_exist() -> None:
    """Every `proxyd admin X` and `proxyd-audit X` mentioned, in code blocks or inline."""
    admin = subcommands(subcommands(proxyd_cli.build_parser())["admin"])
    audit = subcommands(audit_cli.build_parser())
    proxyd = subcommands(proxyd_cli.build_parser())
    mentioned = 0
    for name in NEW_DOCS:
        text = (DOCS / f"{name}.md").read_text()
        prose = re.sub(r"^[ \t]*```.*?^[ \t]*```", "", text, flags=re.MULTILINE | re.DOTALL)
        spans = re.findall(r"`([^`]+)`", prose) + [" ".join(argv) for argv in _shell_commands(text)]
        for span in spans:
            words = span.split()
            for program, choices in (("proxyd-audit", audit), ("proxyd", proxyd)):
                if words[:1] != [program]:
                    continue
                rest = _skip_global_options(words[1:])
                if program == "proxyd" and rest[:1] == ["admin"]:
                    program, choices, rest = "proxyd admin", admin, _skip_global_options(rest[1:])
                if rest:
                    assert rest[0] in choices, f"docs/{name}.md: `{span}`: no {program} {rest[0]}"
                    mentioned += 1
    assert mentioned >= 30


def _skip_global_options(words: list[str]) -> list[str]:
    while words and words[0] in ("--config", "-c", "--server"):
        words = words[2:]
    return words


def test_tests_contrib_files_and_metrics_named_in_docs_exist() -> None:
    defined: dict[Path, set[str]] = {}
    everywhere: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names = {
            n.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        defined[path.resolve()] = names
        everywhere |= names
    samples = known_samples()
    bases = {m.name for m in samples.values()}
    for name in NEW_DOCS:
        text = (DOCS / f"{name}.md").read_text()
        current: Path | None = None
        for match in re.finditer(r"(tests/[\w/]+\.py)|::([\w:]+)|`(test_\w+)`", text):
            if match.group(1):
                current = (ROOT / match.group(1)).resolve()
                assert current.exists(), f"docs/{name}.md names missing {match.group(1)}"
            elif match.group(2):
                assert current is not None and current in defined, match.group(0)
                for part in match.group(2).split("::"):
                    assert part in defined[current], f"docs/{name}.md: no {part} in {current}"
            else:
                assert match.group(3) in everywhere, f"docs/{name}.md: no test {match.group(3)}"
        for path in re.findall(r"`(contrib/[^`\s]+)`", text):
            assert (ROOT / path).exists(), f"docs/{name}.md names missing {path}"
        for metric in re.findall(r"\bproxyd_[a-z_]+", text):
            assert metric in samples or metric in bases, f"docs/{name}.md: no metric {metric}"


def test_the_export_checker_in_auditor_md_verifies_a_real_export(tmp_path: Path) -> None:
    from proxyd.audit import AuditEvent, AuditLog
    from proxyd.store.db import make_engine, migrate

    script = re.search(r"```python\n(.*?)```", (DOCS / "auditor.md").read_text(), re.DOTALL)
    assert script is not None
    checker = tmp_path / "check_export.py"
    checker.write_text(script.group(1))
    database = tmp_path / "state" / "proxyd.db"
    engine = make_engine(f"sqlite:///{database}")
    migrate(engine)
    log = AuditLog(engine)
    t0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    for n in range(5):
        log.append(
            AuditEvent(
                time=t0 + dt.timedelta(seconds=n),
                actor_dn="/DC=org/DC=example/CN=wms.example.org",
                actor_kind="host",
                peer="192.0.2.7",
                operation="retrieve",
                rule="retrieve.trusted",
                decision="allow",
                owner_dn="/DC=org/DC=example/CN=Jürgen Müller",
                credential_name="default",
                serial=str(1000 + n),
                lifetime_s=3600,
                fqans=("/dteam/Role=NULL/Capability=NULL",),
                detail="limited",
            )
        )
    engine.dispose()
    config = tmp_path / "proxyd.toml"
    config.write_text(
        f'[server]\nhost_cert = "x"\nhost_key = "y"\ndatabase = "sqlite:///{database}"\n'
    )
    export = tmp_path / "audit.jsonl"
    assert audit_cli.main(["--config", str(config), "export", "--output", str(export)]) == 0
    ok = subprocess.run(
        [sys.executable, str(checker), str(export)], capture_output=True, text=True, timeout=60
    )
    # The five events, and the export's own read (decided and recorded before it reads).
    assert ok.returncode == 0 and "6 events chain correctly; head seq 6" in ok.stdout, ok.stderr
    lines = export.read_text().splitlines()
    lines[2] = lines[2].replace('"serial": "1002"', '"serial": "9999"')
    export.write_text("\n".join(lines) + "\n")
    bad = subprocess.run(
        [sys.executable, str(checker), str(export)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1 and "chain broken at seq 3" in bad.stderr
