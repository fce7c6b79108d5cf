"""MyProxy's pattern language (proxyd.patterns), table by table.

The judges: the man page myproxy-server.config(5) for the rewrite into a POSIX
ERE, and glibc's own regcomp/regexec (what myproxy-server calls) for what the
ERE then matches. The real myproxy-server is compared in
tests/interop/test_pattern_differential.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import re
import time
from pathlib import Path

import pytest

from proxyd.config import ConfigError, parse_config
from proxyd.names import InvalidField, check_patterns
from proxyd.patterns import (
    PatternError,
    any_matches,
    check_pattern,
    dn_denied,
    glob_matches,
    matches,
    same_dn,
    to_ere,
    translate,
)

# --- the man page's conversion tables, row for row ------------------------------------------
# myproxy-server.config(5), REGULAR EXPRESSIONS: "[ MyProxy regex ] => [ POSIX ERE ]" (each rule,
# here with the ^( )$ that MyProxy wraps every pattern in) ...
MAN_PAGE_RULES = [
    ("*", "^(.*)$"),
    ("?", "^(.)$"),
    (".", "^(\\.)$"),
    ("\\*", "^(*)$"),
    ("\\?", "^(?)$"),
    ("\\.", "^(.)$"),
]
# ... and its examples, verbatim.
MAN_PAGE_EXAMPLES = [
    ("*/CN=Jim Basney", "^(.*/CN=Jim Basney)$"),
    ("*/CN=Test User ?", "^(.*/CN=Test User .)$"),
    ("*/CN=James A. Basney", "^(.*/CN=James A\\. Basney)$"),
    ("/O=Test/CN=[:alnum:]\\*", "^(/O=Test/CN=[:alnum:]*)$"),
    ("*/CN=Jim Basney|*/CN=James Basney", "^(.*/CN=Jim Basney|.*/CN=James Basney)$"),
    # and the escaped parentheses of its text: "*/CN=Jim Basney \(admin\)"
    ("*/CN=Jim Basney \\(admin\\)", "^(.*/CN=Jim Basney \\(admin\\))$"),
]
# What the source (regex_compare) does beyond the man page: an escaped backslash is one
# backslash that escapes the next ERE character; a trailing lone backslash is dropped.
SOURCE_RULES = [
    ("a\\\\b", "^(a\\b)$"),
    ("a\\\\.", "^(a\\\\.)$"),
    ("a\\\\*", "^(a\\.*)$"),
    ("abc\\", "^(abc)$"),
    ("\\(x\\)", "^(\\(x\\))$"),
]


@pytest.mark.parametrize(("pattern", "ere"), MAN_PAGE_RULES + MAN_PAGE_EXAMPLES + SOURCE_RULES)
def test_the_rewrite_into_an_ere_is_myproxys(pattern: str, ere: str) -> None:
    assert to_ere(pattern) == ere


def test_the_man_pages_alnum_example_is_refused_as_the_trap_it_is() -> None:
    # POSIX reads a bare [:alnum:] as the set of ':', 'a', 'l', 'n', 'u', 'm'.
    with pytest.raises(PatternError) as err:
        check_pattern("/O=Test/CN=[:alnum:]\\*")
    assert "set of the characters ':alnum:'" in err.value.message
    assert "write '[[:alnum:]]'" in err.value.message
    check_pattern("/O=Test/CN=[[:alnum:]]\\*")
    assert matches("/O=Test/CN=[[:alnum:]]\\*", "/O=Test/CN=abc123")
    assert not matches("/O=Test/CN=[[:alnum:]]\\*", "/O=Test/CN=abc 123")


# --- what matches -----------------------------------------------------------------------------

CRAB = (
    "/DC=ch/DC=cern/OU=computers/CN=crab-(preprod|prod)-tw(01|02).cern.ch"
    "|/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=cmscrab/CN=Robot: cms crab"
)
CERN = "/DC=ch/DC=cern/OU=computers/CN="
ROBOT = "/DC=ch/DC=cern/OU=Organic Units/OU=Users/CN=cmscrab/CN=Robot: cms crab"
HOST = "/C=XX/O=proxyd dev/OU=Hosts/CN=host.example.org"

MATCHES = [
    # alternation and groups (CMS CRAB's -x -R policy)
    (CRAB, CERN + "crab-prod-tw01.cern.ch", True),
    (CRAB, CERN + "crab-preprod-tw02.cern.ch", True),
    (CRAB, ROBOT, True),
    (CRAB, CERN + "crab-dev-tw01.cern.ch", False),
    (CRAB, CERN + "crab-prod-tw03.cern.ch", False),
    ("*/CN=alice|*/CN=bob", "/C=XX/CN=bob", True),
    ("*/CN=alice|*/CN=bob", "/C=XX/CN=carol", False),
    # anchoring: the whole DN, every alternative
    ("*/CN=host.example.org", HOST, True),
    ("*/CN=host.example.org", HOST + ".evil", False),
    ("*/CN=host.example.org", HOST.replace(".example", "Xexample"), False),
    ("*/CN=host.example.org|*/CN=x", HOST + "/CN=x/evil", False),
    ("/C=XX/O=proxyd dev/OU=Hosts/CN=host", HOST, False),
    ("*/CN=a|b", "/CN=a", True),
    ("*/CN=a|b", "b", True),
    ("*/CN=a|b", "/CN=ab", False),
    # `?` is one character, `\.` any character, `\*` repeats
    ("*/CN=user?", "/CN=user1", True),
    ("*/CN=user?", "/CN=user12", False),
    ("*/CN=host\\.example", "/CN=hostXexample", True),
    ("*/CN=a\\*b", "/CN=aaab", True),
    ("*/CN=a\\*b", "/CN=b", True),
    ("*/CN=ab\\?", "/CN=a", True),
    ("*/CN=(ab)+", "/CN=ababab", True),
    ("*/CN=a\\+", "/CN=a+", True),
    ("*/CN=a\\+", "/CN=aa", False),
    ("*/CN=x{2}", "/CN=xx", True),
    ("*/CN=x{2}", "/CN=xxx", False),
    # escapes
    ("*/CN=Jim Basney \\(admin\\)", "/O=x/CN=Jim Basney (admin)", True),
    ("*/CN=Jim Basney (admin)", "/O=x/CN=Jim Basney (admin)", False),
    ("*/CN=a\\|b", "/CN=a|b", True),
    ("*/CN=a\\|b", "/CN=a", False),
    ("*/CN=\\[x\\]", "/CN=[x]", True),
    ("*/CN=a\\\\.b", "/CN=a\\xb", True),
    # case: exact
    ("*/CN=Alice", "/CN=Alice", True),
    ("*/CN=Alice", "/CN=alice", False),
    ("*/cn=Alice", "/CN=Alice", False),
    # POSIX classes and bracket expressions (backslash is literal inside brackets)
    ("*/CN=[[:digit:]][[:digit:]]", "/CN=42", True),
    ("*/CN=[[:digit:]][[:digit:]]", "/CN=4a", False),
    ("*/CN=[[:upper:]]*", "/CN=Zed", True),
    ("*/CN=[[:upper:]]*", "/CN=zed", False),
    ("*/CN=[[:alpha:][:digit:]_-]+", "/CN=a_b-1", True),
    ("*/CN=[[:space:]]", "/CN= ", True),
    ("*/CN=[^/]\\+", "/CN=a/b", False),
    ("*/CN=[a-c]", "/CN=b", True),
    ("*/CN=[a-c]", "/CN=d", False),
    ("*/CN=[]a]", "/CN=]", True),
    ("*/CN=[a-]", "/CN=-", True),
    ("*/CN=[\\]", "/CN=\\", True),
    ("*/CN=[.]", "/CN=\\", True),  # MyProxy turned the `.` into `\.`: two members
    ("*/CN=[[\\.-\\.]]", "/CN=-", True),  # MyProxy needs `\.` for a POSIX `.`
    ("*/CN=[[=e=]]", "/CN=e", True),
    # unicode: by character
    ("*/CN=Jos? M", "/CN=José M", True),
    # prefixes
    ("SUBJECT:*/CN=alice", "/CN=alice", True),
    ("subject:*/CN=alice", "/CN=alice", True),
    ("SUBJECT:*/CN=alice", "/CN=bob", False),
]


@pytest.mark.parametrize(("pattern", "dn", "expected"), MATCHES)
def test_what_a_pattern_matches(pattern: str, dn: str, expected: bool) -> None:
    check_pattern(pattern)
    assert matches(pattern, dn) is expected


FQANS = ("/dteam", "/dteam/Role=production")
FQAN_MATCHES = [
    ("FQAN:/dteam/Role=NULL/Capability=NULL", True),  # the long form myproxy-server sees
    ("FQAN:/dteam/Role=production/Capability=NULL", True),
    ("fqan:/dteam/*", True),
    ("FQAN:/dteam", False),  # short forms are not what VOMS puts in the AC
    ("FQAN:/atlas/*", False),
    ("FQAN:*Role=production*", True),
    ("FQAN:*Role=pilot*", False),
]


@pytest.mark.parametrize(("pattern", "expected"), FQAN_MATCHES)
def test_fqan_patterns_match_the_peers_verified_fqans(pattern: str, expected: bool) -> None:
    check_pattern(pattern)
    assert matches(pattern, "/CN=anyone", FQANS) is expected
    assert not matches(pattern, "/CN=anyone")  # no FQANs: no match, never the DN
    assert not matches(pattern, pattern[5:], ())


def test_any_matches_takes_the_fqans_to_every_pattern() -> None:
    assert any_matches(("*/CN=nobody", "FQAN:/dteam/*"), "/CN=x", FQANS)
    assert not any_matches(("*/CN=nobody", "FQAN:/ops/*"), "/CN=x", FQANS)


# --- what is refused, and why -------------------------------------------------------------------

REFUSED = [
    ("*/CN=a(b", 7, "this '(' is never closed"),
    ("a)|(b", 2, "would close the '^(' that MyProxy wraps"),
    ("*/CN=x\\1", 7, "back-reference"),
    ("*/CN=\\d+", 6, "'\\d' is a GNU or Perl escape"),
    ("*/CN=\\w", 6, "'\\w' is a GNU or Perl escape"),
    ("*/CN=\\<x", 6, "GNU word or buffer anchor"),
    ("\\*abc", 1, "'*' has nothing to repeat"),
    ("*/CN=a|+", 8, "'+' has nothing to repeat"),
    ("*/CN=a{", 7, "'{' starts an interval"),
    ("*/CN=a{x}", 7, "is not an interval"),
    ("*/CN=a{3,1}", 7, "runs backwards"),
    ("*/CN=a{300}", 7, "over 255 repetitions"),
    ("*/CN=[abc", 6, "this '[' is never closed"),
    ("*/CN=[[:word:]]", 6, "'[:word:]' is no POSIX class"),
    ("*/CN=[z-a]", 6, "the range 'z-a' runs backwards"),
    ("*/CN=[[\\.space\\.]]", 6, "only one-character collating elements"),
    ("*/CN=[:digit:]", 6, "not the class it looks like"),
    ("*/CN=x\\\\", 7, "escapes MyProxy's closing ')'"),
    ("FQAN:/dteam(", 12, "never closed"),
    ("(" * 17 + "a" + ")" * 17, 17, "parentheses nested more than 16 deep"),
    ("(a{255}){255}", 1, "too complex"),
    ("", None, "must not be empty"),
]


@pytest.mark.parametrize(("pattern", "position", "why"), REFUSED)
def test_refused_patterns_say_where_and_why(pattern: str, position: int | None, why: str) -> None:
    with pytest.raises(PatternError) as err:
        check_pattern(pattern)
    assert why in err.value.message
    assert err.value.position == (None if position is None else position - 1)
    if position is not None:
        assert f"at character {position}:" in err.value.message
    # An allow rule that cannot be read grants nothing (myproxy-server: no match).
    assert not pattern or not matches(pattern, pattern)


def test_the_config_names_file_key_and_why(tmp_path: Path) -> None:
    base = '[server]\nhost_cert = "c.pem"\nhost_key = "k.pem"\n[policy]\n'
    with pytest.raises(ConfigError) as err:
        parse_config(
            base + 'authorized_retrievers = ["*/CN=ok", "*/CN=a(b"]\n', tmp_path / "p.toml"
        )
    assert str(err.value) == (
        f"{tmp_path / 'p.toml'}: [policy] authorized_retrievers: pattern '*/CN=a(b' at "
        "character 7: this '(' is never closed; for a literal parenthesis write '\\('"
    )
    with pytest.raises(ConfigError, match=r"\[policy\] banned_dns: .*'FQAN:' is not allowed"):
        parse_config(base + 'banned_dns = ["FQAN:/dteam/*"]\n', tmp_path / "p.toml")
    config = parse_config(base + f"trusted_retrievers = [{CRAB!r}]\n", tmp_path / "p.toml")
    assert config.policy.trusted_retrievers == (CRAB,)


def test_request_fields_are_checked_as_one_pattern_each() -> None:
    assert check_patterns([CRAB], "RETRIEVER") == (CRAB,)
    with pytest.raises(InvalidField) as err:
        check_patterns(["*/CN=[abc"], "RETRIEVER")
    assert err.value.message.startswith('RETRIEVER "*/CN=[abc" refused: at character 6: ')


# --- deny rules: never match less than the glob reading did ---------------------------------

BOB = "/C=XX/O=proxyd dev/OU=Users/CN=bob"
DENY = [
    ("*/cn=BOB", True),
    ("CN=bob,OU=Users,O=proxyd dev,C=XX", True),
    ("/countryName=XX/organizationName=proxyd dev/OU=Users/commonName=bob", True),
    ("*/CN=(alice|BOB)", True),  # a regex, without regard to case
    ("*/CN=[b]o[[:lower:]]", True),
    ("/C=XX/O=proxyd dev/OU=Users/CN=b.b", False),  # `.` stays literal
    ("*/CN=alice", False),
    ("FQAN:/dteam/*", False),
]


@pytest.mark.parametrize(("pattern", "expected"), DENY)
def test_deny_patterns(pattern: str, expected: bool) -> None:
    assert dn_denied(pattern, BOB) is expected


def test_a_deny_pattern_matches_what_the_glob_reading_matched() -> None:
    # `(`, `)`, `|`, `+`, `{` were literal for a glob: a DN holding them is still denied by
    # the pattern that spells them, though the regex reading means something else.
    odd = "/C=XX/O=proxyd dev/OU=Users/CN=Jim (admin) a+b {x}"
    assert dn_denied(odd, odd)
    assert dn_denied("*(admin)*", odd)
    assert same_dn(BOB, "CN=bob,OU=Users,O=proxyd dev,C=XX")


def test_globs_stay_globs_where_proxyd_uses_them() -> None:
    assert glob_matches("*.cern.ch", "lcg.cern.ch")
    assert not glob_matches("*.cern.ch", "lcgXcern.ch")
    assert glob_matches("site(1)", "site(1)")


# --- glibc's regcomp/regexec as the judge of the translation --------------------------------


class _Regex(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_byte * 256)]  # larger than glibc's regex_t


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library to compare with")
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "regcomp") or not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("the C library is not glibc (myproxy-server's regex engine)")
    return libc


def _posix(libc: ctypes.CDLL, ere: str, text: str) -> bool | None:
    """regexec's verdict as myproxy-server gets it, or None when regcomp refuses the ERE."""
    regex = _Regex()
    if libc.regcomp(ctypes.byref(regex), ere.encode(), 1) != 0:  # REG_EXTENDED
        return None
    try:
        return bool(libc.regexec(ctypes.byref(regex), text.encode(), 0, None, 0) == 0)
    finally:
        libc.regfree(ctypes.byref(regex))


PIECES = [*"ab.*?\\()|[]^$-{},:1/", "[:alpha:]", "[[:digit:]]", "{1,2}", "/CN=", "[^a]"]
TEXT = [*"ab.*?\\()|[]^$-{},:1/ "]


def test_every_accepted_pattern_matches_as_glibc_does() -> None:
    """Random patterns over MyProxy's metacharacters: each one proxyd accepts compiles under
    glibc and matches the same texts; each one glibc refuses, proxyd refuses too."""
    libc = _libc()
    rng = random.Random(20261207)
    compared = refused = 0
    for _ in range(3000):
        pattern = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 7)))
        ere = to_ere(pattern)
        try:
            check_pattern(pattern)
        except PatternError:
            refused += 1
            continue
        assert _posix(libc, ere, "") is not None, f"glibc cannot compile {ere!r} ({pattern!r})"
        texts = ["".join(rng.choice(TEXT) for _ in range(rng.randint(0, 6))) for _ in range(12)]
        texts += [pattern, pattern.replace("\\", ""), pattern.replace("*", "ab")]
        for text in texts:
            assert matches(pattern, text) is _posix(libc, ere, text), (pattern, ere, text)
            compared += 1
    assert compared > 10000 and refused > 100  # the table exercised both sides


def test_the_python_rendering_means_the_same() -> None:
    """`translate` (for people) and the matcher (what proxyd runs) agree."""
    rng = random.Random(7)
    for _ in range(2000):
        pattern = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 6)))
        try:
            expression = re.compile(translate(pattern), re.DOTALL)
        except PatternError:
            continue
        for _ in range(8):
            text = "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 6)))
            assert (expression.fullmatch(text) is not None) is matches(pattern, text), (
                pattern,
                text,
            )


@pytest.mark.parametrize(
    "pattern",
    ["*?*?*?*?*?*?*?*?x", "*a*a*a*a*a*a*a*a*a*a*b", "(a\\*)\\*b", "((a|aa)\\*)\\*b"],
)
def test_no_pattern_takes_more_than_linear_time(pattern: str) -> None:
    """Per-credential patterns come from requests: a backtracking engine would spend hours
    on these against a long DN (Python's re: 13 s for four stars over 200 characters)."""
    dn = "/C=XX/O=proxyd dev/OU=Users/CN=" + "a" * 300
    started = time.monotonic()
    assert not matches(pattern, dn)
    assert not dn_denied(pattern, dn)
    assert time.monotonic() - started < 2
