"""The repository's own scripts: which files `make lint` shellchecks, and the Vagrant provisioning.

`make lint` itself runs shellcheck and `vagrant validate`; these tests pin what they cover.
"""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _listed(root: Path) -> list[str]:
    out = subprocess.run(
        ["bash", str(root / "scripts/shellcheck-all.sh"), "--list"],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    ).stdout
    return out.split()


def test_every_shell_script_is_checked_even_without_git(tmp_path: Path) -> None:
    root = tmp_path / "copy"  # a copied checkout: no .git, so the tree is walked
    for rel in ("scripts", "vagrant", ".ci"):
        shutil.copytree(REPO / rel, root / rel)
    examples = root / "scraper/examples"
    examples.mkdir(parents=True)
    (examples / "worker").write_text("#!/bin/sh\necho hi\n")
    (examples / "worker.py").write_text("#!/usr/bin/env python3\nprint('hi')\n")
    (root / "scripts/tool").write_text("#!/usr/bin/env bash\necho hi\n")
    (root / "docs").mkdir()
    (root / "docs/snippet.sh").write_text("echo hi\n")
    (root / "fusefs").mkdir()
    (root / "fusefs/run").write_text("#!/bin/bash\necho not checked: not a script folder\n")
    (root / ".venv/bin").mkdir(parents=True)
    (root / ".venv/bin/activate.sh").write_text("echo ignored\n")

    listed = _listed(root)
    for rel in (
        ".ci/run",
        "scripts/setup.sh",
        "scripts/demo.sh",
        "scripts/fresh-test.sh",
        "vagrant/provision.sh",
        "scraper/examples/worker",
        "scripts/tool",
        "docs/snippet.sh",
    ):
        assert rel in listed
    for rel in ("scraper/examples/worker.py", "fusefs/run", ".venv/bin/activate.sh"):
        assert rel not in listed


def test_provisioning_uses_the_projects_own_setup() -> None:
    vagrantfile = (REPO / "vagrant/Vagrantfile").read_text()
    assert 'config.vm.synced_folder "..", "/vagrant"' in vagrantfile
    assert 'path: "provision.sh"' in vagrantfile
    provision = (REPO / "vagrant/provision.sh").read_text()
    assert "make test" in provision
    # no second package list: the only package it installs itself is make
    installs = [line for line in provision.splitlines() if "apt-get install" in line]
    assert installs and all(line.rstrip().endswith("make >/dev/null") for line in installs)
