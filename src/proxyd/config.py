"""proxyd configuration: one TOML file parsed into frozen dataclasses.

Every error names the file, the key and what would fix it. Unknown keys are
errors, not warnings: a misspelt policy key silently ignored is a hole.
Relative paths are resolved against the directory of the config file.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voms_ext.errors import VomsExtError
from voms_ext.fqan import parse_fqan

from .configsection import ConfigError as ConfigError
from .configsection import Listen as Listen
from .configsection import Section as _Section
from .configsection import section as _section
from .patterns import PatternError, check_pattern
from .reminders.settings import RemindersConfig, parse_reminders
from .tasklimits import LimitsError, TaskLimits, parse_limits
from .tokens.settings import TokensConfig, parse_tokens
from .vomsaa.vomses import UpstreamVoConfig, VomsesError, load_vomses

# Connection limits per edge and per worker process (see connlimit.py).
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_CONNECTIONS_PER_PEER = 64
MAX_CONNECTIONS_CEILING = 1_000_000
MYPROXY_LISTEN = Listen("127.0.0.1", 7512)
API_LISTEN = Listen("127.0.0.1", 8443)


@dataclass(frozen=True)
class ServerConfig:
    host_cert: Path
    host_key: Path
    cert_dir: Path
    voms_dir: Path | None
    state_dir: Path
    database: str
    master_key_file: Path
    # How often the trust directories are checked for changes (CRLs, CAs, .lsc).
    trust_reload_interval: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class MyProxyConfig:
    listen: Listen | None = MYPROXY_LISTEN
    tls_min_version: str = "1.2"
    tls_max_version: str = "1.3"
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER


@dataclass(frozen=True)
class ApiConfig:
    listen: Listen | None = API_LISTEN
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER


@dataclass(frozen=True)
class AaConfig:
    # proxyd as a VOMS server for the [[voms]] tables with an AA key (REST and legacy XML,
    # what voms-proxy-init speaks); off by default.
    listen: Listen | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_peer: int = DEFAULT_MAX_CONNECTIONS_PER_PEER


@dataclass(frozen=True)
class MetricsConfig:
    # A plain-HTTP listener that serves only /metrics, for a Prometheus on the host or an
    # internal network; off by default. On the HTTPS API, /metrics needs an identity in
    # [policy] metrics_readers, admins or auditors.
    listen: Listen | None = None


@dataclass(frozen=True)
class PolicyConfig:
    max_proxy_lifetime: dt.timedelta = dt.timedelta(hours=12)
    max_stored_lifetime: dt.timedelta = dt.timedelta(days=7)
    trusted_retrievers: tuple[str, ...] = ()
    authorized_retrievers: tuple[str, ...] = ("*",)
    authorized_renewers: tuple[str, ...] = ()
    full_delegation_hosts: tuple[str, ...] = ()
    key_retrievers: tuple[str, ...] = ()
    pilot_dns: tuple[str, ...] = ()
    pilot_fqans: tuple[str, ...] = ()
    banned_dns: tuple[str, ...] = ()
    allow_self_authorization: bool = False
    auditors: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    payload_lifetime_margin: dt.timedelta = dt.timedelta(minutes=10)
    passphrase_attempts: int = 5
    lockout_base: dt.timedelta = dt.timedelta(seconds=2)
    lockout_max: dt.timedelta = dt.timedelta(hours=1)
    metrics_readers: tuple[str, ...] = ()
    # MyProxy's server-wide defaults for a credential stored without its own list of that
    # kind (None: not set, and then the server-wide list alone decides, as in MyProxy).
    default_retrievers: tuple[str, ...] | None = None
    default_renewers: tuple[str, ...] | None = None
    default_trusted_retrievers: tuple[str, ...] | None = None
    default_key_retrievers: tuple[str, ...] | None = None
    # Who may store (and destroy) credentials at all; everyone unless restricted.
    accepted_credentials: tuple[str, ...] = ("*",)
    # A GET without a credential name tries each of the user's credentials in turn.
    check_multiple_credentials: bool = False


@dataclass(frozen=True)
class VoConfig:
    """One VO served by proxyd's attribute authority."""

    vo: str
    uri: str
    aa_cert: Path
    aa_key: Path
    max_lifetime: dt.timedelta = dt.timedelta(hours=24)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskQueueConfig:
    backend: str | None = "sql"  # None: no task queue on this server
    heartbeat_timeout: dt.timedelta = dt.timedelta(minutes=30)
    shares: Mapping[str, float] = field(default_factory=dict)  # group FQAN -> share
    usage_half_life: dt.timedelta = dt.timedelta(hours=24)
    # The longest wall time a task may ask for (max_wall_s); at most MAX_WALL_TIME.
    max_wall_time: dt.timedelta = dt.timedelta(days=30)
    # Pilot DN glob (`*`, `?`, all else literal: proxyd's own option, not a MyProxy regex)
    # -> the only sites (normalised names) a pilot with a matching DN may claim; a pilot
    # matching no pattern may claim any site.
    pilot_sites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A stalled or failed task is queued again until it has been matched this many times.
    max_attempts: int = 3
    limits: TaskLimits = field(default_factory=TaskLimits)  # [taskqueue.limits]

    def sites_of(self, pilot_dn: str) -> frozenset[str] | None:
        """The sites `pilot_dn` is bound to (all matching patterns together), or None."""
        from .patterns import glob_matches

        bound = [
            sites for pattern, sites in self.pilot_sites.items() if glob_matches(pattern, pilot_dn)
        ]
        return frozenset(s for sites in bound for s in sites) if bound else None


MAX_WALL_TIME = dt.timedelta(days=365)  # taskqueue.model.MAX_WALL_S


@dataclass(frozen=True)
class SealingConfig:
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1


@dataclass(frozen=True)
class Config:
    source: Path
    server: ServerConfig
    myproxy: MyProxyConfig
    api: ApiConfig
    policy: PolicyConfig
    voms: tuple[VoConfig, ...]
    sealing: SealingConfig
    taskqueue: TaskQueueConfig = field(default_factory=TaskQueueConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    aa: AaConfig = field(default_factory=AaConfig)
    # [[voms]] tables with `vomses`: VOs whose ACs come from the VO's own VOMS servers.
    upstream_voms: tuple[UpstreamVoConfig, ...] = ()
    reminders: RemindersConfig = field(default_factory=RemindersConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)

    def vo(self, name: str) -> VoConfig | None:
        for vo in self.voms:
            if vo.vo == name:
                return vo
        return None


def _server(source: Path, doc: Mapping[str, Any]) -> ServerConfig:
    s = _section(source, doc, "server")
    state_dir = s.path("state_dir", "state")
    assert state_dir is not None
    database = s.str("database") or f"sqlite:///{state_dir / 'proxyd.db'}"
    if "\0" in database:
        raise ConfigError(f"{s.where('database')} contains a NUL character")
    if database.startswith("sqlite:///") and not database.startswith("sqlite:////"):
        rel = database.removeprefix("sqlite:///")
        if rel and not rel.startswith(":memory:"):
            database = f"sqlite:///{(source.parent / rel).resolve()}"
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", database):
        raise ConfigError(
            f"{s.where('database')} must be an sqlite:/// or postgresql:// URL, got {database!r}"
        )
    cfg = ServerConfig(
        host_cert=s.path("host_cert", required=True),  # type: ignore[arg-type]
        host_key=s.path("host_key", required=True),  # type: ignore[arg-type]
        cert_dir=s.path("cert_dir", "/etc/grid-security/certificates"),  # type: ignore[arg-type]
        voms_dir=s.path("voms_dir"),
        state_dir=state_dir,
        database=database,
        master_key_file=s.path("master_key_file", str(state_dir / "master.key")),  # type: ignore[arg-type]
        trust_reload_interval=s.duration("trust_reload_interval", dt.timedelta(minutes=1)),
    )
    s.finish()
    return cfg


def _policy(source: Path, doc: Mapping[str, Any]) -> PolicyConfig:
    s = _section(source, doc, "policy")
    d = PolicyConfig()
    cfg = PolicyConfig(
        max_proxy_lifetime=s.duration("max_proxy_lifetime", d.max_proxy_lifetime),
        max_stored_lifetime=s.duration("max_stored_lifetime", d.max_stored_lifetime),
        trusted_retrievers=s.strings("trusted_retrievers"),
        authorized_retrievers=s.strings("authorized_retrievers", d.authorized_retrievers),
        authorized_renewers=s.strings("authorized_renewers"),
        full_delegation_hosts=s.strings("full_delegation_hosts"),
        key_retrievers=s.strings("key_retrievers"),
        pilot_dns=s.strings("pilot_dns"),
        pilot_fqans=s.strings("pilot_fqans"),
        banned_dns=s.strings("banned_dns"),
        allow_self_authorization=s.bool("allow_self_authorization", False),
        auditors=s.strings("auditors"),
        admins=s.strings("admins"),
        payload_lifetime_margin=s.duration("payload_lifetime_margin", d.payload_lifetime_margin),
        passphrase_attempts=s.int("passphrase_attempts", d.passphrase_attempts, minimum=1),
        lockout_base=s.duration("lockout_base", d.lockout_base),
        lockout_max=s.duration("lockout_max", d.lockout_max),
        metrics_readers=s.strings("metrics_readers"),
        default_retrievers=_unless_absent(s, "default_retrievers"),
        default_renewers=_unless_absent(s, "default_renewers"),
        default_trusted_retrievers=_unless_absent(s, "default_trusted_retrievers"),
        default_key_retrievers=_unless_absent(s, "default_key_retrievers"),
        accepted_credentials=s.strings("accepted_credentials", d.accepted_credentials),
        check_multiple_credentials=s.bool("check_multiple_credentials", False),
    )
    _check_patterns(s, cfg)
    s.finish()
    return cfg


# [policy] lists of MyProxy DN patterns (patterns.py): allow lists may also hold `FQAN:`
# patterns; deny lists match DNs only.
ALLOW_PATTERN_FIELDS = (
    "trusted_retrievers",
    "authorized_retrievers",
    "authorized_renewers",
    "full_delegation_hosts",
    "key_retrievers",
    "auditors",
    "admins",
    "metrics_readers",
    "default_retrievers",
    "default_renewers",
    "default_trusted_retrievers",
    "default_key_retrievers",
    "accepted_credentials",
)
DENY_PATTERN_FIELDS = ("pilot_dns", "banned_dns")


def check_pattern_list(where: str, values: tuple[str, ...] | None, *, fqan: bool = True) -> None:
    """ConfigError naming `where` (file, table, key) and why, for the first pattern of
    `values` that proxyd cannot read as myproxy-server would."""
    for value in values or ():
        try:
            check_pattern(value, fqan=fqan)
        except PatternError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None


def _check_patterns(s: _Section, cfg: PolicyConfig) -> None:
    for key in ALLOW_PATTERN_FIELDS:
        check_pattern_list(s.where(key), getattr(cfg, key))
    for key in DENY_PATTERN_FIELDS:
        check_pattern_list(s.where(key), getattr(cfg, key), fqan=False)


def _unless_absent(s: _Section, key: str) -> tuple[str, ...] | None:
    """A default_* pattern list, or None when the key is absent: not set at all, which
    differs from an empty list (nobody passes)."""
    value = s.strings(key)
    return value if key in s.data else None


def _voms(source: Path, doc: Mapping[str, Any]) -> tuple[VoConfig, ...]:
    entries = doc.get("voms", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: voms must be an array of tables ([[voms]])")
    out: list[VoConfig] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: voms entry {index + 1} must be a table ([[voms]])")
        s = _Section(source, f"voms #{index + 1}", entry)
        vo = s.str("vo", required=True)
        assert vo is not None
        if "vomses" in entry or "aa_cert" not in entry:
            continue  # _upstream_voms reads it (or says which of the two is missing)
        uri = s.str("uri", required=True)
        assert uri is not None
        if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", uri):
            raise ConfigError(
                f"{s.where('uri')} must be HOST:PORT (VOMS clients need the port), got {uri!r}"
            )
        members: dict[str, tuple[str, ...]] = {}
        for dn, fqans in s.table("members").items():
            if not isinstance(fqans, list) or not all(isinstance(f, str) for f in fqans):
                raise ConfigError(f"{s.where('members')}: {dn!r} must map to a list of FQANs")
            normalised = []
            for fqan in fqans:
                try:
                    parsed = parse_fqan(fqan)
                except VomsExtError as exc:
                    raise ConfigError(f"{s.where('members')}: {dn!r}: {exc}") from None
                if parsed.vo != vo:
                    raise ConfigError(
                        f"{s.where('members')}: {dn!r}: FQAN {fqan!r} is not in VO {vo!r}"
                    )
                normalised.append(str(parsed))
            members[dn] = tuple(normalised)
        out.append(
            VoConfig(
                vo=vo,
                uri=uri,
                aa_cert=s.path("aa_cert", required=True),  # type: ignore[arg-type]
                aa_key=s.path("aa_key", required=True),  # type: ignore[arg-type]
                max_lifetime=s.duration("max_lifetime", dt.timedelta(hours=24)),
                members=members,
            )
        )
        s.finish()
    names = [v.vo for v in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: a VO appears in more than one [[voms]] table: {names}")
    return tuple(out)


def _upstream_voms(source: Path, doc: Mapping[str, Any]) -> tuple[UpstreamVoConfig, ...]:
    """The [[voms]] tables naming the VO's servers (`vomses`) instead of an AA key."""
    out: list[UpstreamVoConfig] = []
    entries = doc.get("voms", [])
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict) or ("vomses" not in entry and "aa_cert" in entry):
            continue
        s = _Section(source, f"voms #{index + 1}", entry)
        vo = s.str("vo", required=True)
        signing = sorted(k for k in ("aa_cert", "aa_key", "uri", "members") if k in entry)
        if "vomses" not in entry or signing:
            raise ConfigError(
                f"{s.where('vomses')}: give exactly one of aa_cert/aa_key (proxyd signs the "
                f"ACs) and vomses (the VO's VOMS servers sign them); found "
                f"{', '.join(signing) or 'neither'}{' and vomses' if 'vomses' in entry else ''}"
            )
        vomses = s.path("vomses", required=True)
        assert vo is not None and vomses is not None
        try:
            servers = load_vomses(vomses, vo)
        except VomsesError as exc:
            raise ConfigError(f"{s.where('vomses')}: {exc}") from None
        timeout = s.duration("timeout", dt.timedelta(seconds=10))
        if timeout > dt.timedelta(minutes=5):
            raise ConfigError(f"{s.where('timeout')} must be at most 5m, got {timeout}")
        out.append(
            UpstreamVoConfig(
                vo, vomses, servers, timeout, s.duration("max_lifetime", dt.timedelta(hours=24))
            )
        )
        s.finish()
    names = [v.vo for v in out] + [v.vo for v in _voms(source, doc)]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: a VO appears in more than one [[voms]] table: {names}")
    return tuple(out)


def parse_config(text: str, source: str | Path = "<string>") -> Config:
    path = Path(source).absolute()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    try:
        return _parse(path, doc)
    except (TypeError, ValueError, OverflowError, AttributeError) as exc:
        # A value of a shape TOML allows and the schema does not, not caught above.
        raise ConfigError(f"{path}: invalid configuration: {exc}") from None


def _connection_limits(s: _Section) -> tuple[int, int]:
    """[myproxy]/[api] max_connections and max_connections_per_peer (per worker process)."""
    total = s.int(
        "max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1, maximum=MAX_CONNECTIONS_CEILING
    )
    explicit = "max_connections_per_peer" in s.data
    per_peer = s.int(
        "max_connections_per_peer",
        min(DEFAULT_MAX_CONNECTIONS_PER_PEER, total),
        minimum=1,
        maximum=MAX_CONNECTIONS_CEILING,
    )
    if explicit and per_peer > total:
        raise ConfigError(
            f"{s.where('max_connections_per_peer')} ({per_peer}) is larger than "
            f"[{s.name}] max_connections ({total}), so it could never apply; "
            f"lower it or raise max_connections"
        )
    return total, per_peer


def _parse(path: Path, doc: Mapping[str, Any]) -> Config:
    known = {
        "server",
        "myproxy",
        "api",
        "aa",
        "metrics",
        "policy",
        "voms",
        "sealing",
        "taskqueue",
        "reminders",
        "tokens",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; known are {', '.join(sorted(known))}"
        )
    server = _server(path, doc)
    m = _section(path, doc, "myproxy")
    mp_total, mp_per_peer = _connection_limits(m)
    myproxy = MyProxyConfig(
        listen=m.listen("listen", MyProxyConfig.listen),
        tls_min_version=m.str("tls_min_version", "1.2") or "1.2",
        tls_max_version=m.str("tls_max_version", "1.3") or "1.3",
        max_connections=mp_total,
        max_connections_per_peer=mp_per_peer,
    )
    for key in ("tls_min_version", "tls_max_version"):
        if getattr(myproxy, key) not in ("1.2", "1.3"):
            raise ConfigError(f'{m.where(key)} must be "1.2" or "1.3"')
    m.finish()
    a = _section(path, doc, "api")
    api_total, api_per_peer = _connection_limits(a)
    api = ApiConfig(
        listen=a.listen("listen", ApiConfig.listen),
        max_connections=api_total,
        max_connections_per_peer=api_per_peer,
    )
    a.finish()
    aa = _aa(path, doc)
    x = _section(path, doc, "metrics")
    metrics = MetricsConfig(listen=x.listen("listen", None))
    x.finish()
    g = _section(path, doc, "sealing")
    sealing = SealingConfig(
        argon2_time_cost=g.int("argon2_time_cost", 3, minimum=1),
        argon2_memory_kib=g.int("argon2_memory_kib", 65536, minimum=8),
        argon2_parallelism=g.int("argon2_parallelism", 1, minimum=1),
    )
    g.finish()
    t = _section(path, doc, "taskqueue")
    backend = t.str("backend", "sql")
    shares: dict[str, float] = {}
    for group, share in t.table("shares").items():
        if isinstance(share, bool) or not isinstance(share, int | float) or share <= 0:
            raise ConfigError(f"{t.where('shares')}: {group!r} must map to a positive number")
        shares[group] = float(share)
    max_wall_time = t.duration("max_wall_time", TaskQueueConfig.max_wall_time)
    if max_wall_time > MAX_WALL_TIME or max_wall_time.total_seconds() % 1:
        raise ConfigError(
            f"{t.where('max_wall_time')} must be a whole number of seconds of at most 365 days"
        )
    taskqueue = TaskQueueConfig(
        backend=None if backend == "off" else backend,
        heartbeat_timeout=t.duration("heartbeat_timeout", dt.timedelta(minutes=30)),
        shares=shares,
        usage_half_life=t.duration("usage_half_life", dt.timedelta(hours=24)),
        max_wall_time=max_wall_time,
        pilot_sites=_pilot_sites(t),
        max_attempts=t.int("max_attempts", 3, minimum=1, maximum=100),
        limits=_limits(t),
    )
    t.finish()
    return Config(
        source=path,
        server=server,
        myproxy=myproxy,
        api=api,
        policy=_policy(path, doc),
        voms=_voms(path, doc),
        upstream_voms=_upstream_voms(path, doc),
        sealing=sealing,
        taskqueue=taskqueue,
        metrics=metrics,
        aa=aa,
        reminders=_reminders(path, doc),
        tokens=_tokens(path, doc),
    )


def _aa(path: Path, doc: Mapping[str, Any]) -> AaConfig:
    s = _section(path, doc, "aa")
    total, per_peer = _connection_limits(s)
    aa = AaConfig(
        listen=s.listen("listen", None), max_connections=total, max_connections_per_peer=per_peer
    )
    s.finish()
    entries = doc.get("voms", [])
    signing = isinstance(entries, list) and any(
        isinstance(e, dict) and "aa_key" in e for e in entries
    )
    if aa.listen is not None and not signing:
        raise ConfigError(
            f"{s.where('listen')}: the AA endpoint serves the VOs proxyd signs ACs for, and no "
            f'[[voms]] table has aa_cert and aa_key; add one or set listen = "off"'
        )
    return aa


def _limits(t: _Section) -> TaskLimits:
    try:
        return parse_limits(f"{t.source}: [taskqueue.limits]", t.table("limits"))
    except LimitsError as exc:
        raise ConfigError(str(exc)) from None


def _pilot_sites(t: _Section) -> dict[str, tuple[str, ...]]:
    """[taskqueue.pilot_sites]: pilot DN pattern -> list of site names (normalised)."""
    from .taskqueue.model import InvalidTask, normalise_site  # imports policy, which imports us

    bound: dict[str, tuple[str, ...]] = {}
    for pattern, sites in t.table("pilot_sites").items():
        where = f"{t.where('pilot_sites')}: {pattern!r}"
        if not pattern or not pattern.strip():
            raise ConfigError(f"{t.where('pilot_sites')}: a pilot DN pattern must not be empty")
        if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
            raise ConfigError(f"{where} must map to a list of site names")
        try:
            bound[pattern] = tuple(sorted({normalise_site(s, "site") for s in sites}))
        except InvalidTask as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return bound


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: configuration is not UTF-8 text") from None
    return parse_config(text, p)


def _reminders(path: Path, doc: Mapping[str, Any]) -> RemindersConfig:
    r = _section(path, doc, "reminders")
    smtp = r.table("smtp")
    config = parse_reminders(r, _Section(path, "reminders.smtp", smtp) if smtp else None)
    r.finish()
    return config


def _tokens(path: Path, doc: Mapping[str, Any]) -> TokensConfig:
    t = _section(path, doc, "tokens")
    config = parse_tokens(t)
    t.finish()
    return config
