"""Issue «One gate»: small modules with one job, none in src/ over 600 lines."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 600


def test_no_module_in_src_is_over_600_lines() -> None:
    sizes = {
        str(path.relative_to(SRC)): len(path.read_text().splitlines())
        for path in sorted(SRC.rglob("*.py"))
    }
    assert len(sizes) > 100, f"found only {len(sizes)} modules under {SRC}"
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"
