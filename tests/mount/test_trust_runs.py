"""The trust-run scripts of bench/ (hostile_run.py, outage_run.py) in a small configuration, so
that they cannot rot; and one check that the hostile run's witness oracle can fail.

The full runs, with their numbers, are in docs/benchmarks.md ("Trust runs").
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.support.mounts import ROOT


def script(name: str, *args: str, work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args, "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def verdict(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-2000:]


def test_hostile_run_passes_and_says_so(tmp_path: Path) -> None:
    res = script("hostile_run.py", "--commits", "1", work=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert verdict(res).startswith("hostile_run: OK:"), verdict(res)


def load_bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hostile_run_oracle_catches_a_witness_changed_behind_the_daemon(tmp_path: Path) -> None:
    h = load_bench("hostile_run").Hostile(tmp_path, 2)
    try:
        h.m.start()
        h.commit()
        h.commit()
        rel = sorted(h.committed)[0]
        (h.m.state / "scraped-tiles" / rel).write_bytes(b"name\nforged\n")
        h.witnesses()
    finally:
        h.m.cleanup()
    assert h.failures, "a forged witness went unnoticed"
    assert all(rel in f for f in h.failures), h.failures
    assert any("has the committed bytes" in f for f in h.failures), h.failures


def test_outage_run_diskfull_small(tmp_path: Path) -> None:
    res = script(
        "outage_run.py", "diskfull", "--commits", "10", "--full-refusals", "20", work=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    line = verdict(res)
    assert line.startswith("outage_run diskfull: OK:") and " lost 0 " in line, line
    assert "ENOSPC" in res.stdout  # the workers did meet the full disk


def test_outage_run_s3hang_small(tmp_path: Path) -> None:
    res = script("outage_run.py", "s3hang", "--commits", "4", "--hung-commits", "2", work=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    line = verdict(res)
    assert line.startswith("outage_run s3hang: OK:") and " lost 0 " in line, line
    assert "EAGAIN" in res.stdout  # claims were refused while S3 hung
