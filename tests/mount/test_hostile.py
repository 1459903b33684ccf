"""Hostile requests on a real mount: each gets its errno and the daemon lives on.

pyfuse3 treats any exception of a handler that is not a FUSEError as fatal (the mount then
answers ENOTCONN); each case here used to be one. Every test checks the errno the real process
sees, then that the daemon still serves: `status` readable and a normal claim + commit works.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mount.test_mount import CSV, REL, commit_via_tmp, sh
from tests.support.mounts import MISSIONFS, ROOT, Mount

TILE = "40.71/-74.00"
OTHER = "40.72/-73.99/plumber.csv"  # the task of the liveness check


def assert_alive(m: Mount, rel: str = OTHER) -> None:
    """The daemon still serves: status readable, a claim and a commit of `rel` succeed."""
    assert m.proc is not None and m.proc.poll() is None, m.daemon_log()
    before = m.status()["counts"]["done"]
    sh(f"mv 'pending/{rel}' 'claimed/{rel}'", m.mnt)
    commit_via_tmp(m, rel, name="alive-check")
    assert m.p(f"done/{rel}").read_text() == CSV
    assert m.status()["counts"]["done"] == before + 1


def oserror(fn: Callable[[], object]) -> int:
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    raise AssertionError("the call succeeded")


def test_long_name_in_tmp_create_is_enametoolong(mount: Mount) -> None:
    res = sh(f"echo x > tmp/{'n' * 300}", mount.mnt, check=False)
    assert res.returncode != 0 and "File name too long" in res.stderr, res.stderr
    assert (
        oserror(lambda: os.open(mount.p("tmp") / ("p" * 300), os.O_WRONLY | os.O_CREAT))
        == errno.ENAMETOOLONG
    )
    assert os.listdir(mount.p("tmp")) == []
    s = mount.status()
    assert s["request_errors"]["ENAMETOOLONG"] >= 2, s
    assert_alive(mount)


def test_rename_of_tmp_file_to_long_name_is_enametoolong(mount: Mount) -> None:
    mount.p("tmp/short").write_text(CSV)
    res = sh(f"mv tmp/short tmp/{'n' * 300}", mount.mnt, check=False)
    assert res.returncode != 0 and "File name too long" in res.stderr, res.stderr
    assert mount.p("tmp/short").read_text() == CSV  # nothing lost
    assert_alive(mount)


def test_repeated_bad_requests_are_counted_but_logged_once(mount: Mount) -> None:
    for _ in range(40):
        assert (
            oserror(lambda: os.open(mount.p("tmp") / ("q" * 300), os.O_WRONLY | os.O_CREAT))
            == errno.ENAMETOOLONG
        )
    assert mount.status()["request_errors"]["ENAMETOOLONG"] == 40
    logged = (mount.state / "missionfs.log").read_text(errors="replace")
    assert logged.count("failed with ENAMETOOLONG") == 1, logged
    assert "create(" in logged and "qqqq" in logged  # the handler and the name, for context
    res = subprocess.run(
        [*MISSIONFS, "status", str(mount.mnt)], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0 and "ENAMETOOLONG" in res.stdout, res.stderr
    assert_alive(mount)


def bad_name(m: Mount) -> bytes:
    return os.fsencode(m.p(f"done/{TILE}")) + b"/caf\xe9 \xff.csv"


def test_non_utf8_name_direct_write_in_done_is_eilseq(mount: Mount) -> None:
    path = bad_name(mount)
    assert oserror(lambda: os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)) == errno.EILSEQ
    s = mount.status()  # the refusal is in status, and status still renders as JSON
    assert any("not valid UTF-8" in e.get("error", "") for e in s["errors"]), s["errors"]
    journal = b"".join(p.read_bytes() for p in (mount.state / "journal").glob("*.jsonl"))
    assert b"not valid UTF-8" in journal
    res = subprocess.run(
        [*MISSIONFS, "status", str(mount.mnt)], capture_output=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0 and b"not valid UTF-8" in res.stdout, res.stderr
    assert_alive(mount)


def test_non_utf8_name_mv_into_done_is_eilseq(mount: Mount) -> None:
    mount.p("tmp/r").write_text(CSV)
    res = subprocess.run(
        ["mv", "tmp/r", bad_name(mount)], cwd=mount.mnt, capture_output=True, timeout=60
    )
    assert res.returncode != 0, res
    assert b"Invalid or incomplete multibyte" in res.stderr, res.stderr
    assert mount.p("tmp/r").read_text() == CSV  # the result stays where the user put it
    assert os.path.exists(mount.p(f"pending/{REL}"))
    assert_alive(mount)


def test_o_direct_write_and_read_of_tmp_file_work(mount: Mount) -> None:
    mount.p("tmp/x").write_text("old\n")  # an existing file: open() passes O_DIRECT through
    sh("dd if=/dev/zero of=tmp/x oflag=direct bs=4096 count=2 status=none", mount.mnt)
    assert mount.p("tmp/x").stat().st_size == 8192
    out = sh("dd if=tmp/x iflag=direct bs=4096 count=2 status=none | wc -c", mount.mnt)
    assert out.stdout.strip() == "8192"
    assert_alive(mount)


@pytest.fixture
def shared_mount(make_mount: Callable[..., Mount], mission: Path) -> Iterator[Mount]:
    """A mount with --allow-other on a mount point that every user can reach."""
    top = Path(tempfile.mkdtemp(prefix="mfs-hostile-"))
    os.chmod(top, 0o755)
    m = make_mount(mission, args=("--allow-other",), start=False)
    m.mnt = top / "mnt"
    try:
        m.start()
        yield m
    finally:
        m.cleanup()
        m.mnt.rmdir()
        top.rmdir()


def test_unprivileged_o_direct_read_cannot_kill_roots_mount(shared_mount: Mount) -> None:
    m = shared_mount
    data = "a,b\n" * 2048  # 8192 bytes
    m.p("tmp/shared").write_text(data)
    os.chmod(m.p("tmp/shared"), 0o644)
    res = subprocess.run(
        [
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
            *("dd", f"if={m.p('tmp/shared')}", "iflag=direct", "bs=4096", "status=none"),
        ],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == data.encode()
    assert_alive(m)


def test_truncate_to_a_petabyte_is_efbig(mount: Mount) -> None:
    mount.p("tmp/big").write_text(CSV)
    res = sh("truncate -s 1P tmp/big", mount.mnt, check=False)
    assert res.returncode != 0 and "File too large" in res.stderr, res.stderr
    assert mount.p("tmp/big").read_text() == CSV
    assert_alive(mount)


def test_write_at_offset_2_pow_50_is_efbig(mount: Mount) -> None:
    fd = os.open(mount.p("tmp/far"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert oserror(lambda: os.pwrite(fd, b"x", 2**50)) == errno.EFBIG
    finally:
        os.close(fd)
    assert mount.p("tmp/far").stat().st_size == 0
    assert mount.status()["request_errors"].get("EFBIG", 0) == 0  # refused before the disk
    assert_alive(mount)


# -- the boundary itself, on a handler class without a mount ---------------------------------
def test_boundary_maps_each_exception_to_its_errno_and_passes_fuse_errors() -> None:
    import pyfuse3
    import trio

    from fusefs.fuse.boundary import RequestErrors, error_boundary

    @error_boundary
    class Ops(pyfuse3.Operations):
        def __init__(self, exc: BaseException | None) -> None:
            super().__init__()
            self.exc = exc
            self.request_errors = RequestErrors(counts, None)

        async def getattr(self, inode: int, ctx: object = None) -> object:  # type: ignore[override]
            if self.exc is not None:
                raise self.exc
            return ("attr", inode, ctx)

    counts: dict[str, int] = {}

    async def answer(exc: BaseException | None) -> object:
        try:
            return await Ops(exc).getattr(7)  # the default of ctx is kept
        except pyfuse3.FUSEError as e:
            return e.errno

    cases: list[tuple[BaseException | None, object]] = [
        (None, ("attr", 7, None)),
        (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
        (OSError(errno.EDQUOT, "quota"), errno.EDQUOT),
        (UnicodeEncodeError("utf-8", "x\udcff", 1, 2, "surrogates not allowed"), errno.EILSEQ),
        (KeyError(3), errno.EIO),
        (pyfuse3.FUSEError(errno.ENOENT), errno.ENOENT),
    ]
    for exc, expected in cases:
        assert trio.run(answer, exc) == expected, exc
    assert counts == {"ENOSPC": 1, "EDQUOT": 1, "EILSEQ": 1, "EIO": 1}  # FUSEError not counted


def test_boundary_logs_a_run_of_the_same_failure_once_then_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker looping on a bad request: one line with the detail, then one count line (the
    Coalescer of ratelog.py, the same one the journal and the log use), not a line each."""
    import logging

    from fusefs.fuse.boundary import RequestErrors

    counts: dict[str, int] = {}
    errors = RequestErrors(counts, None)
    now = [100.0]
    errors._runs.clock = lambda: now[0]
    with caplog.at_level(logging.ERROR, logger="missionfs"):
        for _ in range(50):
            errors.record("write", "write(fh=3)", OSError(errno.ENOSPC, "full"))
        assert len(caplog.records) == 1
        now[0] += 61.0
        errors.flush()
    assert counts == {"ENOSPC": 50}
    assert len(caplog.records) == 2
    assert "repeated 49 times" in caplog.records[1].getMessage()
