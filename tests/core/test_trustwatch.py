"""The trust directories are reloaded when their files change (fetch-crl, new CAs, new .lsc)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from proxyd.devpki import DevPKI
from proxyd.trustwatch import TrustWatcher
from tests.support.grid import install_crl, load_identity
from voms_ext import ChainError, validate_chain


def _copy_dirs(pki: DevPKI, tmp_path: Path) -> tuple[Path, Path]:
    cert_dir, voms_dir = tmp_path / "certificates", tmp_path / "vomsdir"
    shutil.copytree(pki.cert_dir, cert_dir)
    shutil.copytree(pki.voms_dir, voms_dir)
    return cert_dir, voms_dir


def test_an_unchanged_directory_gives_no_new_store(dev_pki: DevPKI, tmp_path: Path) -> None:
    watcher = TrustWatcher(*_copy_dirs(dev_pki, tmp_path))
    assert watcher.poll().store is None
    assert watcher.poll().error is None


def test_a_new_crl_revokes_without_a_restart(dev_pki: DevPKI, tmp_path: Path) -> None:
    cert_dir, voms_dir = _copy_dirs(dev_pki, tmp_path)
    alice = load_identity(dev_pki, "alice").cert
    watcher = TrustWatcher(cert_dir, voms_dir)
    reload = watcher.poll()
    assert reload.store is None

    install_crl(dev_pki, cert_dir, alice.serial_number)
    reload = watcher.poll()
    assert reload.store is not None and reload.error is None
    assert len(reload.store.crls) == 1
    with pytest.raises(ChainError, match="revoked"):
        validate_chain([alice], reload.store)
    assert watcher.poll().store is None  # once per change


def test_a_new_lsc_file_is_picked_up(dev_pki: DevPKI, tmp_path: Path) -> None:
    cert_dir, voms_dir = _copy_dirs(dev_pki, tmp_path)
    watcher = TrustWatcher(cert_dir, voms_dir)
    (voms_dir / "newvo").mkdir()
    (voms_dir / "newvo" / "voms.newvo.org.lsc").write_text(
        "/C=XX/O=newvo/CN=voms.newvo.org\n/C=XX/O=newvo/CN=NewVO CA\n"
    )
    reload = watcher.poll()
    assert reload.store is not None
    assert ("newvo", "voms.newvo.org") in reload.store.lsc


def test_an_emptied_directory_keeps_the_old_store_and_says_why(
    dev_pki: DevPKI, tmp_path: Path
) -> None:
    cert_dir, voms_dir = _copy_dirs(dev_pki, tmp_path)
    watcher = TrustWatcher(cert_dir, voms_dir)
    for anchor in cert_dir.glob("*.0"):
        anchor.unlink()
    reload = watcher.poll()
    assert reload.store is None
    assert reload.error is not None
    assert "holds no CA certificates" in reload.error and "stays in force" in reload.error
    assert watcher.poll().error is None  # reported once, not on every poll
