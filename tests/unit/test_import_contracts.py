"""The import contracts of pyproject.toml (import-linter) hold, and would catch a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
    """A copy of the package with one breach of each contract: a lower layer importing a higher
    one, a module outside fusefs.objects importing boto3, and an import cycle inside a layer."""
    shutil.copytree(
        ROOT / "fusefs", tmp_path / "fusefs", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    breaches = {
        "objects/memory.py": "from fusefs.engine import status  # noqa",
        "engine/status.py": "import boto3  # noqa",
        "model/codec.py": "from fusefs.model import state  # noqa",  # state imports codec
    }
    for where, line in breaches.items():
        with open(tmp_path / "fusefs" / where, "a") as f:
            f.write(f"\n{line}\n")
    res = lint(tmp_path)
    assert res.returncode != 0
    assert "fusefs.objects.memory -> fusefs.engine.status" in res.stdout
    assert "fusefs.engine.status -> boto3" in res.stdout
    assert "No cycles are allowed in fusefs.model" in res.stdout, res.stdout
