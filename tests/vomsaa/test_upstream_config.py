"""[[voms]] vomses: the standard vomses format, exactly one AC source per VO, server selection."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from proxyd.config import ConfigError, parse_config
from proxyd.vomsaa.vomses import VomsesEntry, VomsesError, load_vomses, parse_line, select

BASE = '[server]\nhost_cert = "h.pem"\nhost_key = "k.pem"\n'
LINE = '"dteam" "voms1.example.org" "15004" "/C=XX/O=VO/CN=voms1.example.org" "dteam"\n'
SECOND = '"dteam" "voms2.example.org" "15004" "/C=XX/O=VO/CN=voms2.example.org" "dteam" "24"\n'
OPS = '"ops" "voms1.example.org" "15009" "/C=XX/O=VO/CN=voms1.example.org" "ops"\n'


def test_config_with_vomses(tmp_path: Path) -> None:
    (tmp_path / "vomses").write_text(f"# the VO's servers\n{LINE}{OPS}\n{SECOND}")
    text = f'{BASE}[[voms]]\nvo = "dteam"\nvomses = "vomses"\ntimeout = "30s"\n'
    config = parse_config(text, tmp_path / "proxyd.toml")
    assert config.voms == ()
    (up,) = config.upstream_voms
    assert up.vo == "dteam" and up.vomses == tmp_path / "vomses"
    assert up.timeout == dt.timedelta(seconds=30)
    assert up.max_lifetime == dt.timedelta(hours=24)
    assert [str(s) for s in up.servers] == ["voms1.example.org:15004", "voms2.example.org:15004"]
    assert up.servers[0].dn == "/C=XX/O=VO/CN=voms1.example.org"


def test_a_vomses_directory_is_read_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b-second").write_text(SECOND)
    (tmp_path / "a-first").write_text(LINE)
    (tmp_path / ".hidden").write_text("garbage")
    assert [s.host for s in load_vomses(tmp_path, "dteam")] == [
        "voms1.example.org",
        "voms2.example.org",
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'vomses = "vomses"\naa_cert = "a"\naa_key = "b"\nuri = "h:1"\n',
            "give exactly one of aa_cert/aa_key (proxyd signs the ACs) and vomses (the VO's "
            "VOMS servers sign them); found aa_cert, aa_key, uri and vomses",
        ),
        ("", "[voms #1] vomses: give exactly one of aa_cert/aa_key"),
        ('vomses = "vomses"\ntimeout = "1h"\n', "[voms #1] timeout must be at most 5m"),
        ('vomses = "vomses"\ntimeot = "1s"\n', "unknown key(s) timeot"),
        ('vomses = "nowhere"\n', "nowhere: no such vomses file or directory"),
        ('vomses = "ops-only"\n', "ops-only: no server of VO 'dteam'"),
    ],
)
def test_config_mistakes(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "vomses").write_text(LINE)
    (tmp_path / "ops-only").write_text(OPS)
    with pytest.raises(ConfigError) as info:
        parse_config(f'{BASE}[[voms]]\nvo = "dteam"\n{toml}', tmp_path / "proxyd.toml")
    assert message in str(info.value)


def test_a_vo_is_local_or_upstream_not_both(tmp_path: Path) -> None:
    (tmp_path / "vomses").write_text(LINE)
    text = (
        f'{BASE}[[voms]]\nvo = "dteam"\nvomses = "vomses"\n'
        '[[voms]]\nvo = "dteam"\nuri = "h:1"\naa_cert = "a"\naa_key = "b"\n'
    )
    with pytest.raises(ConfigError, match="a VO appears in more than one"):
        parse_config(text, tmp_path / "proxyd.toml")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('"dteam" "h" "15004" "/CN=x"', "4 fields, expected 5"),
        ('"dteam" "h" "15004" "/CN=x" "dteam" "24" "x"', "more than 6 fields"),
        ("dteam h 15004 /CN=x dteam", "expected a double-quoted field at column 1"),
        ('"dteam" "h" "x" "/CN=x" "dteam"', "port 'x' is not a TCP port"),
        ('"dteam" "h" "70000" "/CN=x" "dteam"', "port '70000' is not a TCP port"),
        ('"dteam" "h h" "1" "/CN=x" "dteam"', "host 'h h' is not a host name"),
        ('"dteam" "h" "1" "CN=x" "dteam"', "is not a slash-form DN"),
        ('"dteam" "h" "1" "/CN=x" "d/team"', "VO name 'd/team'"),
    ],
)
def test_bad_vomses_lines(line: str, message: str) -> None:
    with pytest.raises(VomsesError) as info:
        parse_line(line, "vomses, line 3")
    assert str(info.value).startswith("vomses, line 3: ")
    assert message in str(info.value)


def test_client_vomses_select_among_configured_servers_never_add() -> None:
    one = parse_line(LINE, "x")
    two = parse_line(SECOND, "x")
    assert isinstance(one, VomsesEntry) and isinstance(two, VomsesEntry)
    configured = (one, two)
    assert select(configured, [SECOND.strip()]) == (two,)
    # An unknown server is never added: with nothing configured named, all configured are used.
    stranger = '"dteam" "evil.example.org" "15004" "/CN=evil.example.org" "dteam"'
    assert select(configured, [stranger]) == configured
    assert select(configured, [stranger, LINE.strip()]) == (one,)
    assert select(configured, ["not a vomses line"]) == configured
    assert select(configured, []) == configured
