"""`proxyd admin import-myproxy-config`: a myproxy-server.config as proxyd TOML.

`convert(text, source)` is pure: it reads the file the way myproxy-server
does (one directive per line, its values separated by blanks or quoted with
`"`, `#` comments, repeated lines accumulating) and returns the TOML and a
warning for every option proxyd cannot honour, with the reason. A file it
cannot read as a myproxy-server.config (an unknown directive, a missing or
malformed value, an unclosed quote) is refused with `MyProxyConfigError`,
naming the line: a policy line silently dropped would be a hole.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, check_pattern_list, parse_config

# MyProxy DN-pattern lists -> proxyd [policy] keys (aliases myproxy-server still reads).
_PATTERN_LISTS = {
    "accepted_credentials": "accepted_credentials",
    "allowed_clients": "accepted_credentials",
    "authorized_retrievers": "authorized_retrievers",
    "allowed_services": "authorized_retrievers",
    "default_retrievers": "default_retrievers",
    "authorized_renewers": "authorized_renewers",
    "default_renewers": "default_renewers",
    "authorized_key_retrievers": "key_retrievers",
    "default_key_retrievers": "default_key_retrievers",
    "trusted_retrievers": "trusted_retrievers",
    "default_trusted_retrievers": "default_trusted_retrievers",
}
# myproxy-server refuses everyone when these are absent; proxyd's defaults differ, so the
# conversion writes the empty list to keep the old behaviour.
_ABSENT_MEANS_NOBODY = ("accepted_credentials", "authorized_retrievers")
_BOOLEANS = {
    "allow_self_authorization": "allow_self_authorization",
    "check_multiple_credentials": "check_multiple_credentials",
}
_HOURS = {"max_proxy_lifetime": "max_proxy_lifetime", "max_cred_lifetime": "max_stored_lifetime"}
_TRUE = ("true", "enabled", "yes", "on", "1")
_FALSE = ("false", "disabled", "no", "off", "0")

_CA = "MyProxy CA mode is not supported: proxyd issues proxies of stored credentials only"
_CALLOUT = "proxyd runs no external call-outs"
# Options proxyd cannot honour -> why (and what to do instead, where there is something).
UNSUPPORTED: dict[str, str] = {
    "passphrase_policy_program": f"{_CALLOUT}; passphrases need at least 6 characters",
    "pam": "PAM authentication is not supported: passphrases and certificates only",
    "pam_id": "PAM authentication is not supported: passphrases and certificates only",
    "sasl": "SASL (Kerberos) authentication is not supported: passphrases and certificates only",
    "sasl_mech": "SASL authentication is not supported",
    "sasl_serverFQDN": "SASL authentication is not supported",
    "sasl_user_realm": "SASL authentication is not supported",
    "ignore_globus_limited_proxy_flag": (
        "a peer with a limited proxy never stores, retrieves or renews (invariant I1)"
    ),
    "syslog_ident": "proxyd logs to stderr (journald under systemd); set SyslogIdentifier=",
    "syslog_facility": "proxyd logs to stderr (journald under systemd); set SyslogFacility=",
    "request_timeout": "proxyd's MyProxy edge has its own fixed per-request time limits",
    "request_size_limit": "proxyd limits a MyProxy request to 16 KiB and 64 lines, fixed",
    "proxy_extfile": "issued proxies carry a fixed set of extensions; no extension files",
    "proxy_extapp": f"issued proxies carry a fixed set of extensions; {_CALLOUT}",
    "voms_userconf": (
        "not converted: add a [[voms]] table per VO, with vomses = the servers this file "
        "lists (proxyd then fetches ACs from them as myproxy-server did), see docs/myproxy.md"
    ),
    "allow_voms_attribute_requests": (
        "not needed: proxyd answers VONAME= for every VO that has a [[voms]] table"
    ),
    "slave_servers": (
        "no replication: run several instances on one PostgreSQL ([server] database)"
    ),
    "master_server": (
        "no replication: run several instances on one PostgreSQL ([server] database)"
    ),
    "accepted_credentials_mapfile": "username mapfiles are not supported; a DN-shaped "
    "username is reserved for that DN (rule store.username_reserved)",
    "accepted_credentials_mapapp": f"{_CALLOUT}; a DN-shaped username is reserved for that DN",
    "ocsp_policy": "OCSP is not supported; stored credentials are checked against CRLs at every use",
    "ocsp_responder_url": "OCSP is not supported; CRLs are checked at every use",
    "ocsp_responder_cert": "OCSP is not supported; CRLs are checked at every use",
    "disable_usage_stats": "nothing to disable: proxyd sends no usage statistics anywhere",
    "usage_stats_target": "proxyd sends no usage statistics anywhere",
    "pubcookie_granting_cert": "pubcookie authentication is not supported",
    "pubcookie_app_server_key": "pubcookie authentication is not supported",
    "max_cert_lifetime": f"{_CA} (max_proxy_lifetime caps issued proxies)",
    "min_keylen": f"{_CA} (certificate requests need RSA of at least 2048 bits, or EC)",
    "certificate_issuer_cert": _CA,
    "certificate_issuer_key": _CA,
    "certificate_issuer_key_passphrase": _CA,
    "certificate_issuer_subca_certfile": _CA,
    "certificate_issuer_hashalg": _CA,
    "certificate_issuer_email_domain": _CA,
    "certificate_issuer_program": _CA,
    "certificate_issuer_checker": _CA,
    "certificate_request_checker": _CA,
    "certificate_openssl_engine_id": _CA,
    "certificate_openssl_engine_pre": _CA,
    "certificate_openssl_engine_post": _CA,
    "certificate_openssl_engine_lockfile": _CA,
    "certificate_serialfile": _CA,
    "certificate_serial_skip": _CA,
    "certificate_out_dir": _CA,
    "certificate_extfile": _CA,
    "certificate_extapp": _CA,
    "certificate_mapfile": _CA,
    "certificate_mapapp": _CA,
    "ca_ldap_server": _CA,
    "ca_ldap_uid_attribute": _CA,
    "ca_ldap_searchbase": _CA,
    "ca_ldap_dn_attribute": _CA,
    "ca_ldap_connect_dn": _CA,
    "ca_ldap_connect_passphrase": _CA,
    "ca_ldap_start_tls": _CA,
}
SUPPORTED = (*_PATTERN_LISTS, *_BOOLEANS, *_HOURS, "cert_dir")

# What a completed conversion needs before proxyd can start (docs/configuration.md).
_SERVER_TODO = (
    "# Complete before use: the host credential proxyd serves with, and where it keeps\n"
    "# its database and master key (see docs/configuration.md).\n"
    '# host_cert = "/etc/grid-security/hostcert.pem"\n'
    '# host_key = "/etc/grid-security/hostkey.pem"\n'
    '# state_dir = "/var/lib/proxyd"\n'
)


class MyProxyConfigError(Exception):
    """A file that is not a usable myproxy-server.config; the message names the line."""


@dataclass
class Conversion:
    """The TOML for proxyd, and one warning per option it does not honour."""

    toml: str
    warnings: list[str] = field(default_factory=list)


def tokenize(line: str, where: str) -> list[str]:
    """One line's tokens as myproxy-server's vparse reads them: blank-separated, `"`
    quoting (a backslash before a quote keeps it in the token, backslash included), `#`
    outside a token starts a comment."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r\n":
            i += 1
        if i >= n or line[i] == "#":
            break
        if line[i] == '"':
            start = end = i + 1
            while True:
                end = line.find('"', end)
                if end == -1:
                    raise MyProxyConfigError(f"{where}: unclosed quote")
                if line[end - 1] != "\\":
                    break
                end += 1
            tokens.append(line[start:end])
            i = end + 1
        else:
            start = i
            while i < n and line[i] not in " \t\r\n":
                i += 1
            tokens.append(line[start:i])
    return tokens


def _toml_string(value: str) -> str:
    """A TOML literal string where possible (patterns keep their backslashes readable),
    else a basic string with escapes."""
    if "'" not in value and value.isprintable():
        return f"'{value}'"
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif not ch.isprintable() or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _hours(value: str, where: str) -> int:
    # myproxy-server reads it with atoi; anything but a whole number is a mistake here.
    if not value.isdigit():
        raise MyProxyConfigError(f"{where}: expected a whole number of hours, got {value!r}")
    return int(value)


def _boolean(value: str, where: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise MyProxyConfigError(
        f"{where}: expected true or false (also yes/no, on/off, enabled/disabled, 1/0), "
        f"got {value!r}"
    )


def convert(text: str, source: str = "myproxy-server.config") -> Conversion:
    """The proxyd TOML for a myproxy-server.config's text; see the module docstring."""
    patterns: dict[str, list[str]] = {}
    scalars: dict[str, str] = {}
    server: dict[str, str] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        if "\0" in line:
            raise MyProxyConfigError(f"{where}: a NUL character; this is not a text file")
        tokens = tokenize(line, where)
        if not tokens:
            continue
        directive, values = tokens[0], tokens[1:]
        if directive in UNSUPPORTED:
            warnings.append(f"{where}: {directive} ignored: {UNSUPPORTED[directive]}")
            continue
        if directive not in SUPPORTED:
            raise MyProxyConfigError(
                f"{where}: unknown option {directive[:80]!r} (myproxy-server.config(5) has no "
                "such option; check its spelling)"
            )
        if not values:
            raise MyProxyConfigError(f"{where}: {directive} needs a value")
        if directive in _PATTERN_LISTS:
            key = _PATTERN_LISTS[directive]
            for value in values:
                if not value:
                    raise MyProxyConfigError(f'{where}: {directive}: an empty pattern ""')
                try:  # proxyd reads the pattern as myproxy-server does, or says why not here
                    check_pattern_list(f"{where}: {directive}", (value,))
                except ConfigError as exc:
                    raise MyProxyConfigError(str(exc)) from None
                patterns.setdefault(key, []).append(value)
            continue
        if len(values) != 1:
            raise MyProxyConfigError(
                f"{where}: {directive} takes one value, got {len(values)} "
                "(quote a value that holds blanks)"
            )
        value = values[0]
        if directive == "cert_dir":
            server["cert_dir"] = _toml_string(value)
        elif directive in _BOOLEANS:
            scalars[_BOOLEANS[directive]] = (
                "true" if _boolean(value, f"{where}: {directive}") else "false"
            )
        else:
            hours = _hours(value, f"{where}: {directive}")
            if hours == 0:
                warnings.append(
                    f"{where}: {directive} 0 ignored: proxyd has no 'no maximum'; "
                    f"[policy] {_HOURS[directive]} keeps its default"
                )
            else:
                scalars[_HOURS[directive]] = f'"{hours}h"'
    for key in _ABSENT_MEANS_NOBODY:
        patterns.setdefault(key, [])
    lines = [
        f"# Converted from {source} by `proxyd admin import-myproxy-config`.",
        "",
        "[server]",
        _SERVER_TODO.rstrip("\n"),
        *(f"{k} = {v}" for k, v in server.items()),
        "",
        "[policy]",
    ]
    for key in sorted(patterns):
        if not patterns[key] and key in _ABSENT_MEANS_NOBODY:
            lines.append(f"# no {key} lines: myproxy-server allowed nobody")
        lines.append(f"{key} = [{', '.join(_toml_string(p) for p in patterns[key])}]")
    lines.extend(f"{k} = {v}" for k, v in sorted(scalars.items()))
    toml = "\n".join(lines) + "\n"
    _check_loads(toml, source)
    return Conversion(toml, warnings)


def _check_loads(toml: str, source: str) -> None:
    """The conversion must load once the server paths are filled in (patterns included)."""
    completed = toml.replace(
        '# host_cert = "/etc/grid-security/hostcert.pem"',
        'host_cert = "/etc/grid-security/hostcert.pem"',
    ).replace(
        '# host_key = "/etc/grid-security/hostkey.pem"',
        'host_key = "/etc/grid-security/hostkey.pem"',
    )
    try:
        parse_config(completed, "/etc/proxyd/proxyd.toml")
    except ConfigError as exc:
        message = str(exc).replace("/etc/proxyd/proxyd.toml: ", "", 1)
        raise MyProxyConfigError(
            f"{source}: the converted policy does not load: {message}"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Print the TOML on stdout and the warnings on stderr; 0 converted, 2 refused."""
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"proxyd admin: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        print(f"proxyd admin: {path}:{line}: not UTF-8 text", file=sys.stderr)
        return 2
    try:
        result = convert(text, str(path))
    except MyProxyConfigError as exc:
        print(f"proxyd admin: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(result.toml)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def add_parser(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser(
        "import-myproxy-config",
        help="print a myproxy-server.config as proxyd TOML; warn on what proxyd cannot honour",
    )
    p.add_argument("file", type=Path, help="e.g. /etc/myproxy-server.config")
    p.set_defaults(func=run)
