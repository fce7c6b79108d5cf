"""The VOMS AA wire codec: captured bytes of the real tools, both sides, round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.rules import RULES
from proxyd.vomsaa import wire
from proxyd.vomsaa.wire import AaError, AcRequest, WireError

# Captured from voms-proxy-init 2.1 / Debian 12 voms-server 2.1.0~rc3 (PROTOCOLS.md §4).
CAPTURED_LEGACY_REQUEST = (
    b'<?xml version="1.0" encoding="US-ASCII"?><voms><command>B/dteam:production</command>'
    b"<base64>1</base64><version>4</version><lifetime>3600</lifetime></voms>"
)
CAPTURED_LEGACY_ERROR = (
    b'<?xml version="1.0" encoding = "US-ASCII"?><vomsans><version>3</version><error><item>'
    b"<number>1001</number><message>dteam: User unknown to this VO.</message></item></error>"
    b"<ac>QQ==\n</ac></vomsans>"
)
CAPTURED_REST_REQUEST = (
    b"GET /generate-ac?fqans=/dteam/Role=production,/dteam/analysis&lifetime=1800"
    b"&order=/dteam/analysis&targets=host.example.org HTTP/1.0\n"
    b"User-Agent: voms APIs 2.0\nAccept: */*\nHost: voms.example.org:15000\n\n"
)
DER = bytes(range(256)) * 3  # stands for an AC: the codec does not look inside


def test_captured_legacy_request_parses() -> None:
    req = wire.parse_legacy_request(CAPTURED_LEGACY_REQUEST)
    assert req == AcRequest(("/dteam/Role=production",), 3600)
    assert wire.encode_legacy_request(req) == CAPTURED_LEGACY_REQUEST
    assert wire.request_complete(CAPTURED_LEGACY_REQUEST)
    assert not wire.request_complete(CAPTURED_LEGACY_REQUEST[:-3])
    assert not wire.is_rest(CAPTURED_LEGACY_REQUEST)


def test_legacy_commands() -> None:
    xml = (
        b"<voms><command>G/dteam</command><command>B/dteam/analysis:admin</command>"
        b"<order>/dteam/analysis</order><targets>a.example.org,b.example.org</targets>"
        b"<base64>1</base64><version>4</version><lifetime></lifetime></voms>"
    )
    req = wire.parse_legacy_request(xml)
    assert req.fqans == ("/dteam", "/dteam/analysis/Role=admin")
    assert req.lifetime is None
    assert req.order == ("/dteam/analysis",)
    assert req.targets == ("a.example.org", "b.example.org")
    everything = wire.parse_legacy_request(b"<voms><command>A</command></voms>")
    assert everything.fqans == "all"
    assert b"<command>A</command>" in wire.encode_legacy_request(everything)


def test_captured_rest_request_parses() -> None:
    req = wire.parse_rest_request(CAPTURED_REST_REQUEST)
    assert req == AcRequest(
        ("/dteam/Role=production", "/dteam/analysis"),
        1800,
        order=("/dteam/analysis",),
        targets=("host.example.org",),
    )
    assert wire.encode_rest_request(req, "voms.example.org", 15000) == CAPTURED_REST_REQUEST
    assert wire.is_rest(CAPTURED_REST_REQUEST)
    assert wire.request_complete(CAPTURED_REST_REQUEST)
    assert not wire.request_complete(CAPTURED_REST_REQUEST[:-1])
    # No fqans= means the VO's root group to voms-server; other parameters are ignored.
    bare = wire.parse_rest_request(b"GET /generate-ac?x=1 HTTP/1.0\r\n\r\n")
    assert bare.fqans == ()
    listing = wire.parse_rest_request(b"GET /generate-ac?fqans=all&lifetime=60 HTTP/1.0\n\n")
    assert listing.fqans == "all" and listing.lifetime == 60


def test_captured_legacy_error() -> None:
    answer = wire.parse_legacy_answer(CAPTURED_LEGACY_ERROR)
    assert answer.ac is None
    assert not answer.ok
    assert answer.errors == (AaError(1001, "dteam: User unknown to this VO."),)
    assert answer.rule == "voms.upstream_unknown_user"
    assert answer.message == "dteam: User unknown to this VO."
    assert wire.encode_legacy_answer(AaError(1001, "dteam: User unknown to this VO.")) == (
        CAPTURED_LEGACY_ERROR
    )


def test_legacy_answer_with_ac_and_warning() -> None:
    data = wire.encode_legacy_answer(DER, warnings=[AaError(2, "short validity")])
    text = data.decode()
    lines = text[text.index("<ac>") + 4 : text.index("</ac>")].split("\n")
    assert all(len(line) == 64 for line in lines[:-2]) and lines[-1] == ""
    answer = wire.parse_legacy_answer(data)
    assert answer.ok and answer.ac == DER
    assert answer.warnings == ("short validity",)
    assert answer.rule is None


def test_rest_answer_shape_is_what_voms_proxy_init_requires() -> None:
    data = wire.encode_rest_answer(DER)
    assert data.startswith(b"HTTP/1.1 200 ")
    body = data[data.index(b"<?xml") :]
    assert b"<voms><ac>" in body and b"\n" in body
    answer = wire.parse_rest_answer(data)
    assert answer.ok and answer.ac == DER and answer.status == 200
    assert answer.http_version == "1.1"


@pytest.mark.parametrize(
    ("code", "status", "message", "rule"),
    [
        ("NoSuchUser", 403, "dteam: User unknown to this VO.", "voms.upstream_unknown_user"),
        ("SuspendedUser", 403, "User is currently suspended!", "voms.upstream_suspended_user"),
        (
            "BadRequest",
            400,
            "dteam: Unable to satisfy B/dteam:admin request!",
            "voms.upstream_role_not_held",
        ),
        ("BadRequest", 400, "Unable to interpret command: X", "voms.upstream_bad_request"),
        ("InternalError", 500, "dteam: Problems in DB communication.", "voms.upstream_error"),
    ],
)
def test_rest_errors(code: str, status: int, message: str, rule: str) -> None:
    data = wire.encode_rest_answer(AaError(code, message))
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    answer = wire.parse_rest_answer(data)
    assert answer.status == status and answer.ac is None
    assert answer.errors == (AaError(code, message),)
    assert answer.rule == rule


@pytest.mark.parametrize(
    ("number", "message", "rule"),
    [
        (1001, "dteam: User unknown to this VO.", "voms.upstream_unknown_user"),
        (1001, "dteam: Unable to satisfy B/dteam:admin request!", "voms.upstream_role_not_held"),
        (1002, "dteam : no valid VOMS attributes found", "voms.upstream_role_not_held"),
        (1003, "dteam: Problems in DB communication.", "voms.upstream_error"),
        (
            1004,
            "User is currently suspended!\nSuspension reason: x",
            "voms.upstream_suspended_user",
        ),
        (1005, "Unable to interpret command: X", "voms.upstream_bad_request"),
        (1006, "unexpected", "voms.upstream_error"),
        (1999, "new in some later server", "voms.upstream_error"),
    ],
)
def test_legacy_error_numbers_map_to_rules(number: int, message: str, rule: str) -> None:
    answer = wire.parse_legacy_answer(wire.encode_legacy_answer(AaError(number, message)))
    assert answer.rule == rule
    assert answer.message == message.strip()


def test_every_rule_the_codec_names_is_registered() -> None:
    names = {v for k, v in vars(wire).items() if k.startswith("RULE_")}
    assert len(names) == 8
    assert names <= set(RULES)


@pytest.mark.parametrize(
    "rule",
    [
        "voms.upstream_unknown_user",
        "voms.upstream_suspended_user",
        "voms.upstream_role_not_held",
        "voms.upstream_bad_request",
        "voms.upstream_error",
    ],
)
def test_errors_for_rules_round_trip(rule: str) -> None:
    message = "dteam: Unable to satisfy request" if "role" in rule else "refused"
    legacy = wire.parse_legacy_answer(wire.encode_legacy_answer(wire.legacy_error(rule, message)))
    rest = wire.parse_rest_answer(wire.encode_rest_answer(wire.rest_error(rule, message)))
    assert legacy.rule == rule
    assert rest.rule == rule


def test_debian_rest_handler_closes_silently() -> None:
    with pytest.raises(WireError, match="closed the connection without answering"):
        wire.parse_rest_answer(b"")
    with pytest.raises(WireError, match="closed the connection without answering"):
        wire.parse_legacy_answer(b"  ")


def test_rest_answer_without_xml_has_status_only() -> None:
    answer = wire.parse_rest_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert answer.status == 404 and answer.ac is None and not answer.errors
    assert answer.rule == "voms.upstream_error"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"<voms></voms>", "no <command>"),
        (b"<voms><command>G/dteam</command>", "truncated, <voms> is never closed"),
        (b"<voms><command>X/dteam</command></voms>", "command 1: command 'X/dteam' is not"),
        (b"<voms><command>G/dteam</command><foo>1</foo></voms>", "unknown element <foo>"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><voms></voms>', "unexpected markup"),
        (b"<voms><command>G/dteam&a;</command></voms>", "unsupported entity"),
        (b'<voms a="1"><command>G/dteam</command></voms>', "unexpected markup"),
        (b"<voms><command>G/dteam</command></vomsx>", "closes <voms>"),
        (b"<voms><command>G/dteam</command></voms>trailing", "data after </voms>"),
        (b"<voms><command>A</command><command>G/dteam</command></voms>", "cannot be combined"),
        (b"<voms><command>G/dteam</command><lifetime>x</lifetime></voms>", "not a number"),
        (b"<voms><command>G/dteam</command><base64>0</base64></voms>", "only base64"),
        (b"<x>" * 10 + b"</x>" * 10, "expected <voms>"),
        (b"<voms>" + b"<command>G/dteam</command>" * 2000 + b"</voms>", "more than 16384"),
        (b"<voms><command>G/dte am</command></voms>", "holds ' '"),
    ],
)
def test_bad_legacy_requests(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match) as info:
        wire.parse_legacy_request(data)
    assert str(info.value).startswith("legacy request")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"POST /generate-ac HTTP/1.0\n\n", "is not 'GET /generate-ac"),
        (b"GET /other?fqans=/dteam HTTP/1.0\n\n", "unknown path '/other'"),
        (b"GET /generate-ac?fqans HTTP/1.0\n\n", "has no '='"),
        (b"GET /generate-ac?lifetime=1&lifetime=2 HTTP/1.0\n\n", "given twice"),
        (b"GET /generate-ac?lifetime=abc HTTP/1.0\n\n", "lifetime 'abc' is not a number"),
        (b"GET /generate-ac?fqans=dteam HTTP/1.0\n\n", r"fqans\[0\] 'dteam'"),
        (b"GET /generate-ac?fqans=/dteam\xff HTTP/1.0\n\n", "non-ASCII byte"),
    ],
)
def test_bad_rest_requests(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.parse_rest_request(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"<vomsans><version>3</version></vomsans>", "neither an AC nor an error"),
        (b"<vomsans><ac>!!!</ac></vomsans>", "not valid base64"),
        (b"<vomsans><error><item><message>x</message></item></error></vomsans>", "without"),
        (b"<vomsans><ac>QQ==</ac><ac>QQ==</ac></vomsans>", "appears 2 times"),
        (b"<vomsans><ac>" + b"A" * 300_000 + b"</ac></vomsans>", "more than 262144"),
    ],
)
def test_bad_legacy_answers(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        wire.parse_legacy_answer(data)


def test_bad_rest_answer_status_line() -> None:
    with pytest.raises(WireError, match="is not an HTTP status line"):
        wire.parse_rest_answer(b"<?xml version='1.0'?><voms></voms>")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fqans": ("/dteam", "x")}, r"fqans\[1\] 'x'"),
        ({"fqans": ("/dteam,/ops",)}, "holds ','"),
        ({"fqans": ("/dteam",), "lifetime": 0}, "not a positive duration"),
        ({"fqans": ("/dteam",), "targets": ("a&b",)}, "holds '&'"),
        ({"fqans": ("/dteam",) * 65}, "more than 64"),
    ],
)
def test_bad_ac_requests(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(WireError, match=match):
        AcRequest(**kwargs)  # type: ignore[arg-type]


def test_encode_refuses_what_the_other_protocol_needs() -> None:
    with pytest.raises(WireError, match="not a number"):
        wire.encode_legacy_answer(AaError("NoSuchUser", "x"))
    with pytest.raises(WireError, match="is not one of"):
        wire.encode_rest_answer(AaError(1001, "x"))
    with pytest.raises(WireError, match="at least one FQAN"):
        wire.encode_legacy_request(AcRequest(()))


def test_messages_are_escaped_and_restored() -> None:
    message = "a <b> & c"
    data = wire.encode_legacy_answer(AaError(1001, message))
    assert b"<b>" not in data
    assert wire.parse_legacy_answer(data).message == message


# --- round trips ----------------------------------------------------------------------------------

_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum()
)


@st.composite
def fqans(draw: st.DrawFn) -> str:
    groups = draw(st.lists(_NAME, min_size=1, max_size=3))
    fqan = "/" + "/".join(groups)
    role = draw(st.none() | _NAME)
    return fqan if role is None else f"{fqan}/Role={role}"


requests = st.builds(
    AcRequest,
    st.just(wire.ALL) | st.lists(fqans(), min_size=1, max_size=5, unique=True).map(tuple),
    st.none() | st.integers(1, 10 * 365 * 86400),
    st.lists(fqans(), max_size=3).map(tuple),
    st.lists(_NAME, max_size=3).map(tuple),
)
messages = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=200).map(
    str.strip
)


@given(requests)
def test_legacy_request_round_trip(req: AcRequest) -> None:
    data = wire.encode_legacy_request(req)
    assert wire.request_complete(data)
    assert wire.parse_legacy_request(data) == req


@given(requests, _NAME, st.integers(1, 65535))
def test_rest_request_round_trip(req: AcRequest, host: str, port: int) -> None:
    data = wire.encode_rest_request(req, host, port)
    assert wire.request_complete(data) and wire.is_rest(data)
    assert wire.parse_rest_request(data) == req


# b"A" is voms-server's own "no AC" placeholder (`QQ==`), never an AC.
@given(
    st.binary(min_size=1, max_size=4096).filter(lambda b: b != b"A"), st.lists(messages, max_size=3)
)
def test_ac_answers_round_trip(der: bytes, warnings: list[str]) -> None:
    legacy = wire.parse_legacy_answer(
        wire.encode_legacy_answer(der, warnings=[AaError(2, w) for w in warnings])
    )
    rest = wire.parse_rest_answer(wire.encode_rest_answer(der, warnings=warnings))
    assert legacy.ac == rest.ac == der
    assert legacy.warnings == rest.warnings == tuple(warnings)


@given(st.integers(1000, 9999), messages)
def test_legacy_error_round_trip(number: int, message: str) -> None:
    answer = wire.parse_legacy_answer(wire.encode_legacy_answer(AaError(number, message)))
    assert answer.errors == (AaError(number, message),)
    assert answer.ac is None


@given(st.sampled_from(sorted(wire.REST_STATUS)), messages)
def test_rest_error_round_trip(code: str, message: str) -> None:
    answer = wire.parse_rest_answer(wire.encode_rest_answer(AaError(code, message)))
    assert answer.errors == (AaError(code, message),)
    assert answer.status == wire.REST_STATUS[code]


@given(st.binary(max_size=2048))
def test_parsers_raise_only_wire_errors(data: bytes) -> None:
    for parse in (
        wire.parse_legacy_request,
        wire.parse_rest_request,
        wire.parse_legacy_answer,
        wire.parse_rest_answer,
    ):
        with contextlib.suppress(WireError):
            parse(data)
