"""The mount never shows or keeps something other than what was committed (issue 13, "never lie").

Real mounts driven by real processes: bash and dash redirections, descriptors kept across a
commit, a shared mmap, two direct writers, `install`, `rsync --inplace`, a 200 MB commit. The
oracles are the witness bytes on disk, the journal's SHA-256 (`missionfs log --json`) and,
after unmounting, `missionfs fsck`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MISSIONFS, ROOT, Mount, wait_for

REL = "40.71/-74.00/coffee shop.csv"
CSV = b"name,address\nJoe's,1 Main St\n"


def sh(cmd: str, cwd: Path, shell: str = "bash") -> subprocess.CompletedProcess[str]:
    return subprocess.run([shell, "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=60)


def journal_commit(m: Mount, rel: str) -> dict:
    res = subprocess.run(
        [*MISSIONFS, "log", str(m.mission), rel, "--state", str(m.state), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    commits = [json.loads(line) for line in res.stdout.splitlines()]
    commits = [e for e in commits if e["ev"] == "commit" and e.get("rel") == rel]
    assert len(commits) == 1, commits
    return commits[0]


def witness(m: Mount, rel: str) -> bytes:
    return (m.state / "scraped-tiles" / rel).read_bytes()


def assert_witness_is_the_commit(m: Mount, rel: str, body: bytes) -> None:
    """On disk, through the mount, and in the journal: the committed bytes, nothing else."""
    entry = journal_commit(m, rel)
    assert witness(m, rel) == body
    assert m.p(f"done/{rel}").read_bytes() == body
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert entry["size"] == len(body)


def assert_fsck_clean(m: Mount) -> None:
    m.umount()
    res = subprocess.run(
        [*MISSIONFS, "fsck", str(m.mission), "--state", str(m.state), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def pending(m: Mount, rel: str) -> bool:
    return m.p(f"pending/{rel}").exists()


# -- write-once after commit -------------------------------------------------------------------
def test_a_descriptor_kept_across_the_commit_cannot_change_the_witness_bash(mount: Mount) -> None:
    res = sh(
        f"exec 3>tmp/x; printf 'a,b\\n1,2\\n' > tmp/x; mv tmp/x 'done/{REL}' || exit 9;"
        " echo more >&3; echo rc=$?; : > /dev/null 1>&3; exec 3>&-",
        mount.mnt,
    )
    assert res.returncode == 0, res.stderr
    assert "rc=1" in res.stdout and "Operation not permitted" in res.stderr, res
    assert_witness_is_the_commit(mount, REL, b"a,b\n1,2\n")
    assert_fsck_clean(mount)


def test_a_descriptor_kept_across_the_commit_cannot_change_the_witness_python(
    mount: Mount,
) -> None:
    fd = os.open(mount.p("tmp/y"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, CSV) == len(CSV)
        os.rename(mount.p("tmp/y"), mount.p(f"done/{REL}"))
        with pytest.raises(OSError) as e:
            os.write(fd, b"Evil,2 Main St\n")
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"X", 0)
        assert e.value.errno == errno.EPERM
        with pytest.raises(OSError) as e:
            os.ftruncate(fd, 3)
        assert e.value.errno == errno.EPERM
    finally:
        os.close(fd)
    assert_witness_is_the_commit(mount, REL, CSV)
    assert_fsck_clean(mount)


def test_a_shared_mmap_cannot_change_the_witness(mount: Mount) -> None:
    body = b"name,address\n" + b"Joe's,1 Main St\n" * 300  # more than one page
    p = mount.p("tmp/mapped")
    p.write_bytes(body)
    with open(p, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            os.rename(p, mount.p(f"done/{REL}"))
            mm[0:4] = b"EVIL"
            mm[-5:] = b"EVIL\n"
            try:
                mm.flush()
                refused = False
            except OSError:
                refused = True
        finally:
            mm.close()
    assert_witness_is_the_commit(mount, REL, body)
    assert refused  # msync reports the refused writeback
    assert_fsck_clean(mount)


def test_a_direct_write_descriptor_shared_after_its_commit_cannot_write(mount: Mount) -> None:
    fd = os.open(mount.p(f"done/{REL}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    dup = os.dup(fd)
    try:
        os.write(fd, CSV)
        os.close(fd)  # a complete close: the commit
        with pytest.raises(OSError) as e:
            os.write(dup, b"more,rows\n")
        assert e.value.errno == errno.EPERM
    finally:
        os.close(dup)
    assert_witness_is_the_commit(mount, REL, CSV)


# -- one direct writer per task ----------------------------------------------------------------
def test_a_second_direct_writer_gets_ebusy_and_the_first_commits(mount: Mount) -> None:
    first = open(mount.p(f"done/{REL}"), "wb")  # noqa: SIM115 - closed below
    try:
        with pytest.raises(OSError) as e:
            open(mount.p(f"done/{REL}"), "wb")  # noqa: SIM115 - must fail
        assert e.value.errno == errno.EBUSY
        res = sh(f"printf 'h\\nother\\n' > 'done/{REL}'", mount.mnt)
        assert res.returncode != 0 and "busy" in res.stderr.lower(), res
        first.write(CSV)
    finally:
        first.close()  # must commit (today: EEXIST although no witness exists)
    assert not pending(mount, REL)
    assert_witness_is_the_commit(mount, REL, CSV)


# -- refusals a shell cannot see ---------------------------------------------------------------
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_a_refused_redirection_is_visible_in_status_and_kept(mount: Mount, shell: str) -> None:
    res = sh(f"printf 'bad' > 'done/{REL}'", mount.mnt, shell=shell)
    assert res.returncode == 0  # the shell cannot see a refusal made at close
    st = mount.status()
    assert st["refused_direct_writes"] == 1
    errors = [e for e in st["errors"] if e["path"] == f"done/{REL}"]
    assert errors and "newline" in errors[-1]["error"], st["errors"]
    assert pending(mount, REL)
    kept = [p for p in (mount.state / "rejected").iterdir() if not p.name.endswith(".why")]
    assert [p.read_bytes() for p in kept] == [b"bad"]
    log = (mount.state / "missionfs.log").read_text()
    assert f"refused direct write of done/{REL}" in log


# -- chmod/chown of a just-committed witness ---------------------------------------------------
def test_install_commits_and_its_chmod_to_the_same_mode_succeeds(
    mount: Mount, tmp_path: Path
) -> None:
    src = tmp_path / "f.csv"
    src.write_bytes(CSV)
    res = subprocess.run(
        ["install", "-m", "644", str(src), str(mount.p(f"done/{REL}"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert not pending(mount, REL)
    assert_witness_is_the_commit(mount, REL, CSV)
    # A retry finds the witness; a real change of mode, owner or times is still refused.
    again = subprocess.run(
        ["install", "-m", "644", str(src), str(mount.p(f"done/{REL}"))], capture_output=True
    )
    assert again.returncode != 0
    target = mount.p(f"done/{REL}")
    for change in (
        lambda: os.chmod(target, 0o755),
        lambda: os.chown(target, 1234, 1234),
        lambda: os.utime(target, (1, 1)),
        lambda: os.truncate(target, 1),
    ):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.EPERM
    st = os.stat(target)
    os.chmod(target, 0o444)
    os.chown(target, st.st_uid, st.st_gid)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert witness(mount, REL) == CSV


def test_rsync_inplace_commits_and_exits_zero(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "f.csv"
    src.write_bytes(CSV)
    res = subprocess.run(
        ["rsync", "--inplace", str(src), str(mount.p(f"done/{REL}"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert not pending(mount, REL)
    assert_witness_is_the_commit(mount, REL, CSV)


# -- commits stream ----------------------------------------------------------------------------
def test_a_200_mb_commit_costs_the_daemon_far_less_than_200_mb(mount: Mount) -> None:
    size = 200 * 2**20
    big = mount.state / "tmp" / "big.csv"  # written beside the mount: the commit is the test
    with open(big, "wb") as f:  # holes of zero bytes, a newline every 64 KiB
        f.write(b"name,address\n")
        for end in range(64 * 1024, size + 1, 64 * 1024):
            f.seek(end - 1)
            f.write(b"\n")
    sha = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    assert mount.proc is not None
    hwm_kib = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{mount.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    )
    before = hwm_kib * 1024
    wait_for(lambda: mount.p("tmp/big.csv").exists(), timeout=90, what="tmp/ sees the file")
    os.rename(mount.p("tmp/big.csv"), mount.p(f"done/{REL}"))
    status = Path(f"/proc/{mount.proc.pid}/status").read_text()
    hwm = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) * 1024
    assert hwm - before < 32 * 2**20, (before, hwm)  # far under the file's 200 MB
    assert hwm < size / 2, hwm
    entry = journal_commit(mount, REL)
    assert entry["sha256"] == sha.hexdigest() and entry["size"] == size
    assert os.stat(mount.p(f"done/{REL}")).st_size == size
