"""[tokens]: what parses, and what is refused with the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.config import ConfigError, parse_config

BASE = """
[server]
host_cert = "/x"
host_key = "/x"
cert_dir = "/x"
state_dir = "/x"
"""


def test_tokens_are_off_by_default_and_parse_when_set() -> None:
    assert not parse_config(BASE, "/etc/p.toml").tokens.issuing
    t = parse_config(
        BASE
        + """
[tokens]
issuer = "https://proxyd.example.org:8443"
[tokens.scopes]
dteam = ["storage.read:/dteam", "storage.create:/dteam"]
[[tokens.issuers]]
url = "https://iam.example.org/"
audiences = ["https://proxyd.example.org"]
scope = "proxyd.retrieve"
vo = "dteam"
""",
        "/etc/p.toml",
    ).tokens
    assert t.issuing and t.scopes["dteam"] == ("storage.read:/dteam", "storage.create:/dteam")
    [i] = t.issuers
    assert (i.url, i.audiences, i.required_scope, i.vo) == (
        "https://iam.example.org/",
        ("https://proxyd.example.org",),
        "proxyd.retrieve",
        "dteam",
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[tokens]\nissuer = "http://p.example.org"\n', "[tokens] issuer must be the https:// URL"),
        ('[tokens]\nissuer = "https://p.example.org/"\n', "without a trailing slash"),
        ('[tokens]\nleeway = "10m"\n', "[tokens] leeway must be at most 5 minutes"),
        ('[tokens.scopes]\ndteam = "storage.read:/"\n', "'dteam' must be a list of scope strings"),
        ('[[tokens.issuers]]\nurl = "http://i"\naudiences = ["a"]\n', "must be an https:// URL"),
        ('[[tokens.issuers]]\nurl = "https://i"\n', "must name at least one audience"),
        (
            '[[tokens.issuers]]\nurl = "https://i"\naudiences = ["a"]\naud = 1\n',
            "unknown key(s) aud",
        ),
        ("[tokens]\nissuers = 3\n", "must be an array of tables"),
        ('[tokens]\nkeys = "x"\n', "[tokens] has unknown key(s) keys"),
    ],
)
def test_bad_token_settings_say_where_and_why(text: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + text, tmp_path / "p.toml")
    assert error in str(exc.value)
