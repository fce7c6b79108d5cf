"""The example in docs/voms_ext.md runs, against the session's development PKI."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI

DOC = Path(__file__).resolve().parents[2] / "docs" / "voms_ext.md"


def _first_python_block(text: str) -> str:
    match = re.search(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    assert match, f"no ```python block in {DOC}"
    return match.group(1)


def test_example_reads_the_pki_location_from_the_environment() -> None:
    code = _first_python_block(DOC.read_text())
    assert 'os.environ.get("PROXYD_DEV_PKI", "certs-dev")' in code


def test_example_runs(
    dev_pki: DevPKI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _first_python_block(DOC.read_text())
    monkeypatch.setenv("PROXYD_DEV_PKI", str(dev_pki.root))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "__main__"})  # noqa: S102
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "identity : /C=XX/O=proxyd dev/OU=Users/CN=alice",
        "type     : RFC 3820 compliant limited proxy",
        "fqans    : /dteam/Role=NULL/Capability=NULL, /dteam/Role=production/Capability=NULL",
        "validity : 12.0 h",
    ]
    written = tmp_path / "x509up_alice"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # The printed output in the document is what the example prints.
    assert "\n".join(lines) in DOC.read_text()
