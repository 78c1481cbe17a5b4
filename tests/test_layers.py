"""The layers of the README's layout, as import-linter contracts in pyproject.toml: they hold
for this tree, and they fail on a tree with an import they forbid (so the check can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
WRONG_TREE = Path(__file__).resolve().parent / "fixtures" / "wrong_layers"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """The project's contracts checked on the packages of ``tree`` (imported from there)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_layers_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_breaks_its_contract() -> None:
    result = lint_imports(WRONG_TREE)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    assert broken == [
        "shared is the library: it never imports services, workers or the CLI BROKEN",
        "nothing outside tests imports tests BROKEN",
    ]
    assert "shared.storage -> services.search" in result.stdout
    assert "bench -> tests" in result.stdout
