"""FQAN parsing, normalisation and glob matching (voms_ext.fqan)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voms_ext import Fqan, FqanError, VomsExtError, fqan_matches, normalise_fqan, parse_fqan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/dteam", Fqan("dteam")),
        ("/dteam/Role=NULL/Capability=NULL", Fqan("dteam")),
        ("/dteam/Role=NULL", Fqan("dteam")),
        ("/dteam/Capability=NULL", Fqan("dteam")),
        ("/dteam/Role=production", Fqan("dteam", (), "production")),
        ("/dteam/Role=production/Capability=NULL", Fqan("dteam", (), "production")),
        ("/dteam/analysis/sub-1/Role=pilot", Fqan("dteam", ("analysis", "sub-1"), "pilot")),
        ("/dteam/Role=NULL/Capability=cap", Fqan("dteam", (), None, "cap")),
        ("/dteam/Capability=cap", Fqan("dteam", (), None, "cap")),
        ("/vo.example.org/g_1/Role=r.2", Fqan("vo.example.org", ("g_1",), "r.2")),
        # Groups that only look like keywords are groups.
        ("/dteam/Role/NULL", Fqan("dteam", ("Role", "NULL"))),
    ],
)
def test_parse(text: str, expected: Fqan) -> None:
    assert parse_fqan(text) == expected


@pytest.mark.parametrize(
    ("text", "short", "long", "group"),
    [
        ("/dteam", "/dteam", "/dteam/Role=NULL/Capability=NULL", "/dteam"),
        (
            "/dteam/Role=NULL/Capability=NULL",
            "/dteam",
            "/dteam/Role=NULL/Capability=NULL",
            "/dteam",
        ),
        (
            "/dteam/analysis/Role=production",
            "/dteam/analysis/Role=production",
            "/dteam/analysis/Role=production/Capability=NULL",
            "/dteam/analysis",
        ),
        (
            "/dteam/Capability=c",
            "/dteam/Capability=c",
            "/dteam/Role=NULL/Capability=c",
            "/dteam",
        ),
    ],
)
def test_short_long_and_group_forms(text: str, short: str, long: str, group: str) -> None:
    fqan = parse_fqan(text)
    assert str(fqan) == normalise_fqan(text) == short
    assert fqan.long == long
    assert fqan.group == group
    assert parse_fqan(long) == parse_fqan(short) == fqan


def test_spellings_compare_and_hash_equal() -> None:
    spellings = ["/dteam", "/dteam/Role=NULL", "/dteam/Role=NULL/Capability=NULL"]
    assert len({parse_fqan(s) for s in spellings}) == 1


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("", "must start with '/'"),
        ("dteam", "must start with '/'"),
        ("/", "does not begin with a VO name"),
        ("//dteam", "does not begin with a VO name"),
        ("/Role=x", "does not begin with a VO name"),
        ("/dteam/", "is empty"),
        ("/dteam//a", "is empty"),
        ("/dteam/a b", "has characters other than"),
        ("/dteam/gr*p", "has characters other than"),
        ("/dte am", "has characters other than"),
        ("/dteam/Role=", "invalid role ''"),
        ("/dteam/Role=a b", "invalid role"),
        ("/dteam/Capability=", "invalid capability"),
        ("/dteam/Role=a/Role=b", "Role= must appear once"),
        ("/dteam/Capability=c/Role=a", "Role= must appear once, before Capability="),
        ("/dteam/Capability=a/Capability=b", "Capability= appears twice"),
        ("/dteam/Role=a/group", "group 'group' after Role/Capability"),
        ("/dteam/role=a", "has characters other than"),
    ],
)
def test_invalid(text: str, phrase: str) -> None:
    with pytest.raises(FqanError) as info:
        parse_fqan(text)
    assert phrase in str(info.value)
    assert repr(text) in str(info.value)
    with pytest.raises(FqanError):
        normalise_fqan(text)


@pytest.mark.parametrize("value", [None, 1, b"/dteam"])
def test_non_string_is_an_fqan_error(value: object) -> None:
    with pytest.raises(FqanError):
        parse_fqan(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "fqan", "matches"),
    [
        ("/dteam", "/dteam", True),
        ("/dteam", "/dteam/Role=NULL/Capability=NULL", True),
        ("/dteam", "/dteam/Role=production", False),
        ("/dteam", "/dteam/analysis", False),
        ("/dteam", "/dteamx", False),
        ("/dteam/*", "/dteam/analysis", True),
        ("/dteam/*", "/dteam/analysis/sub/Role=x", True),
        ("/dteam/*", "/dteam/Role=production", True),
        ("/dteam/*", "/dteam", False),
        ("/dteam/*", "/atlas/analysis", False),
        ("/*/Role=pilot", "/dteam/Role=pilot", True),
        ("/*/Role=pilot", "/atlas/prod/Role=pilot/Capability=NULL", True),
        ("/*/Role=pilot", "/dteam/Role=pilot/Capability=c", False),
        ("/*/Role=pilot", "/dteam/Role=pilots", False),
        ("/*/Role=pilot", "/dteam", False),
        ("/dteam/Role=production", "/dteam/Role=production/Capability=NULL", True),
        ("/dteam/Role=production", "/dteam/analysis/Role=production", False),
        ("/d?eam", "/dteam", True),
        ("/*", "/ops", True),
        # Matching is case-sensitive, as VOMS group names are.
        ("/DTEAM", "/dteam", False),
    ],
)
def test_fqan_matches(pattern: str, fqan: str, matches: bool) -> None:
    assert fqan_matches(pattern, fqan) is matches
    assert fqan_matches(pattern, parse_fqan(fqan)) is matches


def test_fqan_matches_rejects_an_invalid_fqan() -> None:
    with pytest.raises(FqanError):
        fqan_matches("/*", "dteam")


# --- properties ----------------------------------------------------------------------

NAME = st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
ROLE = NAME.filter(lambda s: s != "NULL")


@st.composite
def short_fqans(draw: st.DrawFn) -> str:
    vo = draw(NAME)
    groups = draw(st.lists(NAME, max_size=4))
    text = "/" + "/".join([vo, *groups])
    if draw(st.booleans()):
        text += f"/Role={draw(ROLE)}"
    if draw(st.booleans()):
        text += f"/Capability={draw(ROLE)}"
    return text


@settings(max_examples=200, deadline=None)
@given(short_fqans())
def test_round_trip_short_form(text: str) -> None:
    fqan = parse_fqan(text)
    assert str(fqan) == text
    assert parse_fqan(fqan.long) == fqan
    assert fqan.long.startswith(fqan.group + "/Role=")
    assert fqan_matches(text, fqan)
    assert fqan_matches(f"/{fqan.vo}*", fqan)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_random_text_only_raises_fqan_error(text: str) -> None:
    try:
        fqan = parse_fqan(text)
    except VomsExtError as exc:
        assert isinstance(exc, FqanError)
        return
    assert parse_fqan(str(fqan)) == fqan
