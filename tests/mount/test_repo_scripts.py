"""The repository's own scripts and docs: which files `make lint` shellchecks, the Vagrant
provisioning, `make fresh-test`'s commands, and the README and docs/ pages (size, links, recipes).

`make lint` itself runs shellcheck and `vagrant validate`; these tests pin what they cover.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.support.mounts import Mount

REPO = Path(__file__).resolve().parents[2]


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


# ---- the README and docs/ ------------------------------------------------------------------------

README_MAX_BYTES = 12 * 1024  # issue 14: a README a newcomer reads in one go; the rest in docs/
DOC_PAGES = [REPO / "README.md", REPO / "SEMANTICS.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images excluded
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_readme_is_short() -> None:
    size = len((REPO / "README.md").read_bytes())  # what `wc -c` counts
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail to docs/"


def test_every_relative_link_resolves_inside_the_repository() -> None:
    assert (REPO / "docs/README.md").is_file()
    checked = 0
    for page in DOC_PAGES:
        for target in _relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: link {target!r}"
            assert dest.is_relative_to(REPO), f"{where} points outside the repository"
            assert dest.is_file(), f"{where} names no file"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), f"{where}: no heading #{anchor}"
            checked += 1
    assert checked >= 10  # the pages do link to each other: the parser found them


def test_nothing_points_to_the_shared_folder() -> None:
    """../shared is outside the repository: a clone has no such folder."""
    for page in DOC_PAGES:
        assert "../shared" not in page.read_text(encoding="utf-8"), page.relative_to(REPO)


def _readme_block(marker: str) -> str:
    """The code block after `<!-- fresh-test:MARKER` in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^<!-- fresh-test:{marker}\b[^\n]*\n```sh\n(.*?)^```", text, re.S | re.M)
    assert m, f"README.md has no <!-- fresh-test:{marker} --> code block"
    return m.group(1)


def test_fresh_test_runs_the_readmes_own_commands() -> None:
    """`make fresh-test` must start from what the README tells a user to type, not from a
    provisioning step that installs make first."""
    prereq, commands = _readme_block("prerequisite"), _readme_block("commands")
    assert "apt-get install -y make" in prereq
    assert re.search(r"^make demo\b", commands, re.M)
    assert re.search(r"^make test\b", commands, re.M)
    printed = subprocess.run(
        ["bash", str(REPO / "scripts/fresh-test.sh"), "--print-commands"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert printed == prereq + commands
    script = (REPO / "scripts/fresh-test.sh").read_text()
    assert "provision.sh" not in script.split("# ---- inside")[1]  # no provisioning of its own


def test_using_it_recipe_works_as_written(tmp_path: Path) -> None:
    """The README's "Using it" block, run by bash as a user would paste it (only the mount point
    is moved under tmp_path): absolute command paths survive `cd` into the mount, and the
    unmount happens from outside it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Using it\n.*?^```sh\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no sh block under ## Using it"
    mnt = tmp_path / "mnt"
    recipe = m.group(1).replace("/mnt/nyc", str(mnt))
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(REPO / ".venv")  # the recipe runs from a checkout
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    try:
        done = subprocess.run(
            ["bash", "-e", "-c", recipe],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        witnesses = list((tmp_path / "data/missionfs/nyc-coffee/scraped-tiles").rglob("*.csv"))
        assert len(witnesses) == 1
        pending = (work / "pending.txt").read_text().splitlines()
        assert len(pending) == 45 * 65 * 2 - 1  # the grid's tasks but the committed one
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            subprocess.run([str(REPO / ".venv/bin/missionfs"), "umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_workers_shell_loop_commits_every_task(mount: Mount, tmp_path: Path) -> None:
    """The README's shell worker, with `my-scraper` the synthetic source: it finishes a mission
    through tmp/ + mv and leaves nothing claimed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Workers\n.*?^```sh\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no sh block under ## Workers"
    loop = m.group(1).replace("/mnt/nyc", str(mount.mnt))
    loop = loop.replace("/tmp/todo.txt", str(tmp_path / "todo.txt"))
    total = mount.status()["counts"]["pending"]
    scraper = f'my-scraper() {{ "{REPO}/.venv/bin/python" -m scraper.synthetic; }}\n'
    done = subprocess.run(
        ["bash", "-c", scraper + loop], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == total > 0
    st = mount.status()["counts"]
    assert (st["pending"], st["claimed"]) == (0, 0)
    assert list((mount.mnt / "tmp").iterdir()) == []
