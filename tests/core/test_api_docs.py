"""Every shell example in docs/api.md runs against a live server and does what the text says."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from proxyd.devpki import DevPKI
from tests.support.server import running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


def test_api_doc_examples(dev_pki: DevPKI, tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) >= 5
    work = tmp_path / "work"
    work.mkdir()
    with running_server(dev_pki, tmp_path / "state") as server:
        env = {
            "PATH": "/usr/bin:/bin",
            "PROXYD": f"https://localhost:{server.api_port}",
            "CERTS": str(dev_pki.root),
        }
        outputs = []
        script = ""
        for block in blocks:
            script += block  # later examples rely on earlier ones (variables, files)
            proc = subprocess.run(
                ["bash", "-e", "-c", script + "\necho"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, (block, proc.stdout, proc.stderr)
            outputs.append(proc.stdout)
    # each run replays the earlier blocks; the last line(s) belong to the newest block
    health = json.loads(outputs[1].strip().splitlines()[-1])
    assert health["status"] == "ok"
    started = json.loads(outputs[2].strip().splitlines()[-1])
    assert set(started) == {"id", "csr"}
    # The delegation above was only started (its second step is proxy-init's job),
    # so the WMS request finds no credential yet: the answer is a problem document.
    fetched = json.loads(outputs[3].strip().splitlines()[-1])
    assert fetched["rule"] in ("credential.not_found", "retrieve.trusted") or "chain" in fetched
    refused = json.loads(outputs[4].strip().splitlines()[-1])
    assert refused["status"] in (403, 404) and "rule" in refused
