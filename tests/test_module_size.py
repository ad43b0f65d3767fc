"""Every module under ``wan2/`` stays readable: at most 600 lines (issue 15; docs/architecture.md)."""

from tests.conftest import ROOT

MAX_LINES = 600


def test_no_module_under_wan2_is_over_600_lines():
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "wan2").rglob("*.py")
    }
    assert len(sizes) > 20, sizes  # the walk found the package
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"split these modules (at most {MAX_LINES} lines each): {over}"
