"""Every shell example in docs/api.md runs against a live server and does what the text says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from proxyd.devpki import DevPKI
from tests.support.server import running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
MARK = "@@@ example done @@@"


def test_api_doc_examples(dev_pki: DevPKI, tmp_path: Path) -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 5
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    script = "".join(f"{block}\necho\necho '{MARK}'\n" for block in blocks)
    venv_bin = str(Path(sys.executable).parent)
    with running_server(dev_pki, tmp_path / "state") as server:
        env = {
            "PATH": f"{venv_bin}:/usr/bin:/bin",
            "PROXYD": f"https://localhost:{server.api_port}",
            "CERTS": str(dev_pki.root),
            "HOME": str(work),
        }
        proc = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        outputs = [part.strip() for part in proc.stdout.split(MARK)]
        events = [e.event.rule for e in reversed(server.repo.audit.query(limit=20))]
    assert json.loads(outputs[1])["status"] == "ok"
    fetched = json.loads(outputs[3])
    assert fetched["limited"] is True and "BEGIN CERTIFICATE" in fetched["chain"]
    refused = json.loads(outputs[4])
    assert (refused["status"], refused["rule"]) == (403, "retrieve.not_trusted")
    assert events[-3:] == ["store.owner", "retrieve.trusted", "retrieve.not_trusted"]
