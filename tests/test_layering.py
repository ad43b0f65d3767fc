"""Layering rules that imports alone can break: ``wan2.data``, ``wan2.diffusion`` and ``wan2.metrics`` know nothing
of Lightning (docs/architecture.md). Each package is imported, every submodule of it, in a fresh interpreter where
importing Lightning fails."""

import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# a meta-path finder that refuses Lightning's top-level packages, then every submodule of the package
BLOCK_AND_IMPORT = """
import importlib, importlib.abc, sys

BLOCKED = {"lightning", "pytorch_lightning", "lightning_fabric"}

class NoLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported (blocked: this package must not import Lightning)")
        return None

sys.meta_path.insert(0, NoLightning())
for name in sys.argv[1:]:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("imported", len(sys.argv) - 1)
"""


def submodules(package: str) -> list[str]:
    """``package`` and every module below it, found on disk (so a new module is checked without a test edit)."""
    folder = ROOT.joinpath(*package.split("."))
    return [package] + [f"{package}.{m.name}" for m in pkgutil.walk_packages([str(folder)])]


@pytest.mark.parametrize("package", ["wan2.data", "wan2.diffusion", "wan2.metrics"])
def test_package_imports_without_lightning(package):
    names = submodules(package)
    assert len(names) > 2, names  # the walk found the modules
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_IMPORT, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"imported {len(names)}", out.stdout


def test_the_blocker_catches_a_lightning_import():
    """The check can fail: ``wan2.lightning.data`` imports Lightning and is refused."""
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_IMPORT, "wan2.lightning.data"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "lightning imported (blocked" in out.stderr, out.stderr[-3000:]
