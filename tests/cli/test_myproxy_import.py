"""`proxyd admin import-myproxy-config FILE`: a myproxy-server.config as proxyd TOML.

The TOML must load with `proxyd.config.load_config` once the server paths are
filled in; every option proxyd cannot honour is warned about with the reason;
a file that is not a myproxy-server.config is refused (exit 2) naming the line.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path

import pytest

from proxyd.cli.main import main
from proxyd.cli.myproxy_import import (
    SUPPORTED,
    UNSUPPORTED,
    MyProxyConfigError,
    convert,
    tokenize,
)
from proxyd.config import load_config

# What CMS's myproxy.cern.ch-style configuration looks like: CRAB's task workers by regex,
# a robot DN, defaults that make per-credential policies mandatory, comments and blanks.
CMS = r"""
# myproxy-server.config for a CMS-like site
accepted_credentials  "*"
authorized_retrievers "*"
default_retrievers    "none"

authorized_renewers   "*/CN=crab-(preprod|prod)-tw(01|02).cern.ch" "*/CN=Robot: cms crab"
default_renewers      "none"

trusted_retrievers    "/DC=ch/DC=cern/OU=computers/CN=crab-(preprod|prod)-tw(01|02).cern.ch|/DC=ch/DC=cern/OU=computers/CN=vocms0(1|2)[0-9][0-9].cern.ch"
trusted_retrievers    "*/CN=Robot: cms crab"   # a second line adds to the first
default_trusted_retrievers "none"

authorized_key_retrievers "*/CN=Jim Basney \(admin\)"
max_proxy_lifetime 168
max_cred_lifetime 720
allow_self_authorization  true
check_multiple_credentials yes
cert_dir /etc/grid-security/certificates
"""

CMS_POLICY = {
    "accepted_credentials": ["*"],
    "authorized_retrievers": ["*"],
    "default_retrievers": ["none"],
    "authorized_renewers": ["*/CN=crab-(preprod|prod)-tw(01|02).cern.ch", "*/CN=Robot: cms crab"],
    "default_renewers": ["none"],
    "trusted_retrievers": [
        "/DC=ch/DC=cern/OU=computers/CN=crab-(preprod|prod)-tw(01|02).cern.ch"
        "|/DC=ch/DC=cern/OU=computers/CN=vocms0(1|2)[0-9][0-9].cern.ch",
        "*/CN=Robot: cms crab",
    ],
    "default_trusted_retrievers": ["none"],
    "key_retrievers": [r"*/CN=Jim Basney \(admin\)"],
    "max_proxy_lifetime": "168h",
    "max_stored_lifetime": "720h",
    "allow_self_authorization": True,
    "check_multiple_credentials": True,
}


def completed(toml: str, tmp_path: Path) -> Path:
    """The conversion with the server paths filled in, as the operator would."""
    text = toml.replace("# host_cert = ", "host_cert = ").replace("# host_key = ", "host_key = ")
    text = text.replace('# state_dir = "/var/lib/proxyd"', f'state_dir = "{tmp_path / "state"}"')
    path = tmp_path / "proxyd.toml"
    path.write_text(text)
    return path


def test_a_cms_like_config_converts_and_loads(tmp_path: Path) -> None:
    result = convert(CMS, "/etc/myproxy-server.config")
    assert result.warnings == []
    assert tomllib.loads(result.toml)["policy"] == CMS_POLICY
    config = load_config(completed(result.toml, tmp_path))
    policy = config.policy
    assert policy.trusted_retrievers == tuple(CMS_POLICY["trusted_retrievers"])  # type: ignore[arg-type]
    assert policy.default_trusted_retrievers == ("none",)
    assert policy.default_retrievers == ("none",)
    assert policy.default_renewers == ("none",)
    assert policy.default_key_retrievers is None  # not in the file: not set
    assert policy.key_retrievers == (r"*/CN=Jim Basney \(admin\)",)
    assert policy.max_proxy_lifetime == dt.timedelta(hours=168)
    assert policy.max_stored_lifetime == dt.timedelta(hours=720)
    assert policy.allow_self_authorization and policy.check_multiple_credentials
    assert config.server.cert_dir == Path("/etc/grid-security/certificates")
    assert config.server.host_cert == Path("/etc/grid-security/hostcert.pem")


def test_absent_accept_and_retrieve_lines_keep_myproxys_nobody(tmp_path: Path) -> None:
    result = convert('authorized_renewers "*"\n', "f")
    policy = tomllib.loads(result.toml)["policy"]
    assert policy["accepted_credentials"] == [] and policy["authorized_retrievers"] == []
    assert "# no accepted_credentials lines: myproxy-server allowed nobody" in result.toml
    loaded = load_config(completed(result.toml, tmp_path)).policy
    assert loaded.accepted_credentials == () and loaded.authorized_retrievers == ()


def test_aliases_and_false_booleans() -> None:
    policy = tomllib.loads(
        convert(
            'allowed_clients "/O=A/*"\nallowed_services "/O=B/*"\n'
            "allow_self_authorization off\ncheck_multiple_credentials FALSE\n",
            "f",
        ).toml
    )["policy"]
    assert policy["accepted_credentials"] == ["/O=A/*"]
    assert policy["authorized_retrievers"] == ["/O=B/*"]
    assert policy["allow_self_authorization"] is False
    assert policy["check_multiple_credentials"] is False


def test_every_unsupported_option_is_warned_with_its_line_and_reason() -> None:
    text = "".join(f'{option} "some value"\n' for option in UNSUPPORTED)
    result = convert(text, "/etc/myproxy-server.config")
    assert len(result.warnings) == len(UNSUPPORTED)
    for number, (option, why) in enumerate(UNSUPPORTED.items(), start=1):
        assert result.warnings[number - 1] == (
            f"/etc/myproxy-server.config:{number}: {option} ignored: {why}"
        )
    # Secrets in ignored options are never repeated.
    assert not any("some value" in w for w in result.warnings)


@pytest.mark.parametrize(
    "option",
    [
        "pam",
        "sasl",
        "certificate_issuer_cert",
        "ca_ldap_server",
        "passphrase_policy_program",
        "max_cert_lifetime",
        "proxy_extapp",
        "allow_voms_attribute_requests",
        "voms_userconf",
        "syslog_ident",
        "request_timeout",
        "request_size_limit",
        "min_keylen",
        "slave_servers",
        "disable_usage_stats",
    ],
)
def test_the_briefs_unsupported_options_are_all_known(option: str) -> None:
    assert option in UNSUPPORTED and option not in SUPPORTED


def test_a_zero_lifetime_keeps_proxyds_maximum_with_a_warning() -> None:
    result = convert("max_proxy_lifetime 0\n", "f")
    assert "max_proxy_lifetime" not in tomllib.loads(result.toml)["policy"]
    assert result.warnings == [
        "f:1: max_proxy_lifetime 0 ignored: proxyd has no 'no maximum'; "
        "[policy] max_proxy_lifetime keeps its default"
    ]


def test_tokens_as_myproxy_reads_them() -> None:
    assert tokenize('a "b c" d # e "f"', "w") == ["a", "b c", "d"]
    assert tokenize(r'x "say \"hi\""', "w") == ["x", r"say \"hi\""]  # vparse keeps the \
    assert tokenize('x ""', "w") == ["x", ""]
    assert tokenize("   # only a comment", "w") == []


def test_patterns_that_need_toml_escapes_round_trip(tmp_path: Path) -> None:
    pattern = "*/CN=O'Brien \\(x\\)"
    toml = convert(f'authorized_retrievers "{pattern}"\n', "f").toml
    assert tomllib.loads(toml)["policy"]["authorized_retrievers"] == [pattern]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("authorized_retrievers\n", "f:1: authorized_retrievers needs a value"),
        ('\n\nauthorized_retrievers "*\n', "f:3: unclosed quote"),
        (
            "hello world\n",
            "f:1: unknown option 'hello' (myproxy-server.config(5) has no such option; "
            "check its spelling)",
        ),
        (
            "max_proxy_lifetime 12h\n",
            "f:1: max_proxy_lifetime: expected a whole number of hours, got '12h'",
        ),
        (
            "max_cred_lifetime 12 24\n",
            "f:1: max_cred_lifetime takes one value, got 2 (quote a value that holds blanks)",
        ),
        (
            "allow_self_authorization maybe\n",
            "f:1: allow_self_authorization: expected true or false (also yes/no, on/off, "
            "enabled/disabled, 1/0), got 'maybe'",
        ),
        ('trusted_retrievers ""\n', 'f:1: trusted_retrievers: an empty pattern ""'),
        ("cert_dir /a\0b\n", "f:1: a NUL character; this is not a text file"),
    ],
)
def test_what_is_not_a_myproxy_server_config_is_refused_naming_the_line(
    text: str, error: str
) -> None:
    with pytest.raises(MyProxyConfigError) as err:
        convert(text, "f")
    assert str(err.value) == error


def test_the_command_prints_toml_and_warns_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "myproxy-server.config"
    source.write_text(CMS + 'pam "sufficient"\ncertificate_issuer_key_passphrase "s3cret"\n')
    assert main(["admin", "import-myproxy-config", str(source)]) == 0
    out = capsys.readouterr()
    assert tomllib.loads(out.out)["policy"] == CMS_POLICY
    lines = CMS.count("\n")
    assert out.err.splitlines() == [
        f"warning: {source}:{lines + 1}: pam ignored: {UNSUPPORTED['pam']}",
        f"warning: {source}:{lines + 2}: certificate_issuer_key_passphrase ignored: "
        f"{UNSUPPORTED['certificate_issuer_key_passphrase']}",
    ]
    assert "s3cret" not in out.err + out.out
    load_config(completed(out.out, tmp_path))


def test_the_command_refuses_garbage_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary"
    binary.write_bytes(b'authorized_retrievers "*"\n\x89PNG\r\n\x1a\n\xff\xfe')
    assert main(["admin", "import-myproxy-config", str(binary)]) == 2
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", f"proxyd admin: {binary}:2: not UTF-8 text\n")

    prose = tmp_path / "prose"
    prose.write_text("This is not a configuration file.\n")
    assert main(["admin", "import-myproxy-config", str(prose)]) == 2
    assert capsys.readouterr().err == (
        f"proxyd admin: {prose}:1: unknown option 'This' (myproxy-server.config(5) has no "
        "such option; check its spelling)\n"
    )

    missing = tmp_path / "missing"
    assert main(["admin", "import-myproxy-config", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"proxyd admin: {missing}: cannot read: No such file or directory\n"
    )


def test_the_option_mapping_in_the_docs_names_every_option() -> None:
    """docs/myproxy.md's table maps every option the converter knows, and no other."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "myproxy.md").read_text()
    start = doc.index("| myproxy-server.config | proxyd.toml | notes |")
    table = doc[start : doc.index("\n\n", start)]
    first_cells = [row.split(" | ")[0] for row in table.splitlines()[2:]]
    named = {name for cell in first_cells for name in re.findall(r"`([a-zA-Z_]+)`", cell)}
    assert named == set(SUPPORTED) | set(UNSUPPORTED)


def test_a_pattern_proxyd_cannot_read_as_myproxy_does_is_refused_on_its_line() -> None:
    with pytest.raises(MyProxyConfigError) as err:
        convert('authorized_retrievers "*"\ntrusted_retrievers "*/CN=(a"\n', "f")
    # The reason is the pattern checker's ([policy] keys say the same at load time).
    assert str(err.value).startswith("f:2: trusted_retrievers: pattern '*/CN=(a'")
