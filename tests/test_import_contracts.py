"""The import contracts of pyproject.toml (import-linter) hold, and would catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_contracts_are_kept() -> None:
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "only fusefs.objects imports boto3 and botocore KEPT" in res.stdout


def test_a_breach_of_each_contract_is_caught(tmp_path: Path) -> None:
    """A copy of the package with fusefs.objects importing a fusefs module, and another module
    importing boto3: both contracts break."""
    shutil.copytree(
        ROOT / "fusefs", tmp_path / "fusefs", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "fusefs" / "objects" / "memory.py", "a") as f:
        f.write("\nfrom fusefs import codec  # noqa\n")
    with open(tmp_path / "fusefs" / "status.py", "a") as f:
        f.write("\nimport boto3  # noqa\n")
    res = lint(tmp_path)
    assert res.returncode != 0
    assert "fusefs.objects.memory -> fusefs.model.codec" in res.stdout
    assert "fusefs.engine.status -> boto3" in res.stdout
