"""No module of ``parrot_ipc`` grows past about 400 lines (issue 12): a module that does one
job fits on a few screens. The bound allows a little slack over 400, not a second job."""

from __future__ import annotations

from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "parrot_ipc"
MAX_LINES = 420


def test_no_module_is_over_about_400_lines() -> None:
    sizes = {p.relative_to(PKG).as_posix(): len(p.read_text().splitlines()) for p in PKG.rglob("*.py")}
    assert len(sizes) > 50  # the walk really sees every layer's modules
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert too_big == {}, f"split these modules (over {MAX_LINES} lines): {too_big}"
