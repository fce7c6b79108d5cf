"""Every example in docs/cli.md, run in order against a real proxyd, output checked.

The page's ```console blocks are a session: `$ command` lines and the output
they print (stdout, then stderr). Commands are proxy-init, proxy-info,
proxy-destroy, `echo` and `export PROXYD_URL=...`, joined with `&&` / `||`.
They run in-process with the dev PKI, alice's credential and a test server
(the URL and the proxy path of the page are mapped to the test's).
Interactive pass phrase prompts are answered by the test and echoed as the
page shows them. Output is compared after masking what differs per run
(times, serials, ports); a `...` line stands for any number of lines.
"""

from __future__ import annotations

import io
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.cli import common, proxy_destroy, proxy_info, proxy_init
from proxyd.devpki import DevPKI
from tests.support.server import RunningServer, running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
DOC_PROXY = "/tmp/x509up_u1000"
DOC_URL = "https://localhost:8443"
TOOLS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "proxy-init": proxy_init.main,
    "proxy-info": proxy_info.main,
    "proxy-destroy": proxy_destroy.main,
}
ERROR_LINE = re.compile(r"^proxy-(init|info|destroy): ", re.MULTILINE)


@dataclass(frozen=True)
class Example:
    line: int  # of the `$` line in the page
    command: str
    output: tuple[str, ...]


def examples() -> list[Example]:
    out: list[Example] = []
    text = DOC.read_text()
    for block in re.finditer(r"^```console\n(.*?)^```$", text, re.DOTALL | re.MULTILINE):
        first_line = text[: block.start()].count("\n") + 2
        current: tuple[int, str] | None = None
        output: list[str] = []
        for offset, line in enumerate(block.group(1).splitlines()):
            if line.startswith("$ "):
                if current is not None:
                    out.append(Example(current[0], current[1], tuple(output)))
                current, output = (first_line + offset, line[2:]), []
            else:
                assert current is not None, f"docs/cli.md:{first_line + offset}: output before $"
                output.append(line)
        if current is not None:
            out.append(Example(current[0], current[1], tuple(output)))
    return out


EXAMPLES = examples()


def test_the_page_has_only_console_examples() -> None:
    """Every code block is a console session this module runs (nothing left unchecked)."""
    fences = re.findall(r"^```(\w*)$", DOC.read_text(), re.MULTILINE)
    assert fences and all(f in ("console", "") for f in fences)
    assert fences.count("console") == fences.count("")
    assert len(EXAMPLES) >= 15


@dataclass
class Session:
    pki: DevPKI
    server: RunningServer
    home: Path
    proxy: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def session(dev_pki: DevPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    base = tmp_path_factory.mktemp("cli-docs")
    base.chmod(0o700)
    home = base / "home"
    home.mkdir()
    cert, key = dev_pki.user("alice")
    env = {
        "HOME": str(home),
        "X509_CERT_DIR": str(dev_pki.cert_dir),
        "X509_VOMS_DIR": str(dev_pki.voms_dir),
        "X509_USER_CERT": str(cert),
        "X509_USER_KEY": str(key),
        "X509_USER_PROXY": str(base / "x509up_doc"),
    }
    with running_server(dev_pki, base / "state") as server:
        yield Session(dev_pki, server, home, base / "x509up_doc", env)


def mask(text: str) -> str:
    """What differs from run to run, replaced by placeholders (page and output alike)."""
    text = re.sub(r"https://localhost:\d+", DOC_URL, text)
    text = re.sub(r"/CN=\d+\b", "/CN=<serial>", text)
    text = re.sub(r"\b\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\b", "<date>", text)
    text = re.sub(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b", "<iso>", text)
    text = re.sub(r"\b\d+:\d\d:\d\d\b", "<h:mm:ss>", text)
    text = re.sub(r'"timeleft": \d+', '"timeleft": <n>', text)
    return re.sub(r"^\d+$", "<n>", text, flags=re.MULTILINE)


def matches(expected: Sequence[str], actual: str) -> bool:
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == "..." else re.escape(mask(line)) + "\n" for line in expected
    )
    return re.fullmatch(pattern, mask(actual)) is not None


def run_line(
    command: str,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str]:
    """A tiny shell: `a && b`, `a || b`; exit status of the last command run, all output."""
    tokens = shlex.split(command)
    segments: list[tuple[str | None, list[str]]] = [(None, [])]
    for token in tokens:
        if token in ("&&", "||"):
            segments.append((token, []))
        else:
            segments[-1][1].append(token)
    output = ""
    rc = 0
    for op, argv in segments:
        if (op == "&&" and rc != 0) or (op == "||" and rc == 0):
            continue
        name, args = argv[0], argv[1:]
        if name == "echo":
            output += " ".join(args) + "\n"
            rc = 0
        elif name == "export":
            (assignment,) = args
            var, _, _value = assignment.partition("=")
            assert var == "PROXYD_URL", f"the page may only export PROXYD_URL, not {var}"
            monkeypatch.setenv(var, f"https://localhost:{session.server.api_port}")
            rc = 0
        else:
            assert name in TOOLS, f"unknown command {name!r} in docs/cli.md"
            capsys.readouterr()
            monkeypatch.setattr("sys.stdin", io.StringIO(""))
            try:
                rc = TOOLS[name](args)
            except SystemExit as exc:  # a usage error
                rc = int(exc.code or 0)
            captured = capsys.readouterr()
            output += captured.out + captured.err
    return rc, output.replace(str(session.proxy), DOC_PROXY)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line{e.line}" for e in EXAMPLES])
def test_example(
    example: Example,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in session.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PROXYD_URL", raising=False)
    if example.line > EXAMPLES[0].line:  # every example after the export uses the server
        monkeypatch.setenv("PROXYD_URL", f"https://localhost:{session.server.api_port}")

    def fake_getpass(prompt: str) -> str:
        print(prompt.rstrip())  # the page shows the prompts
        return "doc example pass phrase"

    monkeypatch.setattr(common.getpass, "getpass", fake_getpass)
    rc, output = run_line(example.command, session, monkeypatch, capsys)
    expected_rc = 1 if ERROR_LINE.search("\n".join(example.output)) else 0
    where = f"docs/cli.md:{example.line}: $ {example.command}"
    assert rc == expected_rc, f"{where}\nexit {rc}, output:\n{output}"
    assert matches(example.output, output), (
        f"{where}\n--- the page says:\n"
        + "\n".join(example.output)
        + f"\n--- the command printed:\n{output}"
    )


def test_the_output_check_is_strict() -> None:
    """Control for the matcher: masks only what varies, `...` only where written."""
    assert matches(["timeleft : 1:59:59", "7199"], "timeleft : 11:02:03\n43000\n")
    assert not matches(["type     : RFC 3820 compliant limited proxy"], "type     : other\n")
    assert not matches(["a", "b"], "a\nb\nc\n")
    assert matches(["a", "...", "c"], "a\nb\nb2\nc\n")
    assert not matches(["a", "...", "c"], "a\nb\n")
    assert not matches(["Your identity: x"], "Your identity: x\nextra\n")
