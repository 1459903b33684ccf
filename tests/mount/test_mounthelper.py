"""Boot-time mounts: `mount -t fuse.missionfs` through the installed helper, `umount`, the
systemd unit's ExecStart (`-o foreground`) with sd_notify READY/STOPPING, and wrong options."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.cli.mounthelper import (
    PROG,
    OptionError,
    mount_flags,
    parse_command_line,
    split_options,
)
from tests.support.mounts import MISSIONFS, ROOT, _mounted, wait_for

HELPER = Path("/usr/sbin") / PROG
UNIT = ROOT / "systemd" / "missionfs@.service"


@pytest.fixture(scope="module")
def helper() -> Path:
    """The helper mount(8) runs, linked to this checkout's venv (what setup.sh does)."""
    res = subprocess.run(
        [*MISSIONFS, "install-mount-helper"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    assert HELPER.resolve() == (Path(sys.executable).parent / PROG).resolve()
    return HELPER


def _daemon_pid(mnt: Path) -> int:
    return int(json.loads((mnt / "status").read_text())["pid"])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


@contextlib.contextmanager
def released(mnt: Path) -> Iterator[None]:
    """Whatever happens in the test, no mount and no daemon of ours are left behind."""
    pids: list[int] = []
    try:
        yield
    finally:
        if _mounted(mnt):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(_daemon_pid(mnt))
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        for pid in pids:
            with contextlib.suppress(AssertionError):
                wait_for(lambda p=pid: _gone(p), 30, f"daemon {pid} to exit")  # type: ignore[misc]
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=180, cwd=ROOT)


def _commit(mnt: Path, rel: str) -> None:
    os.rename(mnt / "pending" / rel, mnt / "claimed" / rel)
    tmp = mnt / "tmp" / "w.csv"
    tmp.write_text("name,lat,lon\nA cafe,40.705,-74.015\n")
    os.rename(tmp, mnt / "done" / rel)


def test_mount_t_fuse_missionfs_then_umount_keeps_the_index(
    helper: Path, mission: Path, tmp_path: Path
) -> None:
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    # What an fstab line carries: mount(8) drops x-* and passes _netdev/nofail/rw to the helper.
    opts = f"state={state},lease=60,durability=batched,_netdev,nofail,x-systemd.automount,defaults"
    with released(mnt):
        res = _mount("-t", "fuse.missionfs", str(mission), str(mnt), "-o", opts)
        assert res.returncode == 0, res.stderr
        status = json.loads((mnt / "status").read_text())
        assert status["lease_seconds"] == 60.0 and status["durability"] == "batched"
        assert status["state_dir"] == str(state)
        rel = "40.70/-74.02/plumber.csv"
        _commit(mnt, rel)
        os.rename(
            mnt / "pending/40.71/-74.01/plumber.csv", mnt / "claimed/40.71/-74.01/plumber.csv"
        )
        counts = json.loads((mnt / "status").read_text())["counts"]
        assert (counts["done"], counts["claimed"]) == (1, 1)
        pid = _daemon_pid(mnt)

        res = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        wait_for(lambda: _gone(pid), 60, "the daemon to exit after umount")
        log = (state / "missionfs.log").read_text()
        assert f"unmounted {mnt}" in log and "could not save" not in log, log[-2000:]

        res = _mount("-t", "fuse.missionfs", str(mission), str(mnt), "-o", f"state={state}")
        assert res.returncode == 0, res.stderr
        status = json.loads((mnt / "status").read_text())
        assert status["counts"]["done"] == 1 and (mnt / "done" / rel).is_file()
        assert status["counts"]["claimed"] == 1  # the live claim came back too (claims.log)
        assert subprocess.run(["umount", str(mnt)], timeout=60).returncode == 0


def test_mount_fuse3_type_hash_source_form(helper: Path, mission: Path, tmp_path: Path) -> None:
    """`-t fuse` with `mount.fuse.missionfs#MISSION`: mount.fuse3 runs our helper (in PATH)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with released(mnt):
        res = _mount(
            "-t", "fuse", f"{PROG}#{mission}", str(mnt), "-o", f"state={tmp_path / 's'},_netdev"
        )
        assert res.returncode == 0, res.stderr
        assert json.loads((mnt / "status").read_text())["counts"]["intent"] == 24
        assert subprocess.run(["umount", str(mnt)], timeout=60).returncode == 0


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ("state=/tmp/x,bogus=1", "unknown option 'bogus'"),
        ("ro", "option ro: a mission mount is read-write"),
        ("lease=abc", "option lease: invalid float value: 'abc'"),
        ("durability=sometimes", "option durability: invalid choice: 'sometimes'"),
        ("allow_other=yes", "option allow_other takes no value"),
        ("state", "option state needs a value"),
        ("metrics=0.0.0.0:9464", "not a loopback address"),
        ("env_file=/nonexistent/missionfs.env", "option env_file=/nonexistent/missionfs.env"),
    ],
)
def test_wrong_options_give_one_line_and_exit_2(
    helper: Path, mission: Path, tmp_path: Path, opts: str, message: str
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with released(mnt):
        res = _mount("-t", "fuse.missionfs", str(mission), str(mnt), "-o", opts)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.stderr
        assert lines[0].startswith(("mount.fuse.missionfs: ", "missionfs: "))
        assert not _mounted(mnt)


def test_every_mount_flag_is_an_option(mission: Path) -> None:
    """The options come from the mount command's parser: each flag maps back to itself."""
    flags = mount_flags()
    for name in ("state", "lease", "endpoint_url", "worker", "allow_other", "metrics", "quiet"):
        assert name in flags
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / PROG),
            str(mission),
            "/mnt/x",
            "-f",
            "-o",
            "rw,endpoint-url=http://127.0.0.1:9,uploaders=4,allow_other,refresh=2.5,"
            "foreground,x-systemd.device-timeout=5,metrics=127.0.0.1:9464,metrics_public",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    printed = shlex.split(res.stderr.strip().split(": missionfs ", 1)[1])
    assert printed == [
        "mount",
        str(mission),
        "/mnt/x",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--uploaders",
        "4",
        "--allow-other",
        "--refresh",
        "2.5",
        "--foreground",
        "--metrics",
        "127.0.0.1:9464",
        "--metrics-public",
    ]


def test_option_parsing_follows_mount8() -> None:
    assert split_options('a=1,b="x,y",,c') == ["a=1", "b=x,y", "c"]
    inv = parse_command_line(["-s", "SRC", "-o", "state=/s,frobnicate", "DIR", "-n", "-ofoo=1"])
    assert inv.argv == ["mount", "SRC", "DIR", "--state", "/s"]  # -s: unknowns ignored
    assert inv.ignored == ["frobnicate", "foo=1"]
    with pytest.raises(OptionError, match="unbalanced quote"):
        parse_command_line(["SRC", "DIR", "-o", 'endpoint_url="http://a,b'])
    with pytest.raises(OptionError, match="usage"):
        parse_command_line(["SRC", "-o", "state=/s"])


# -- the systemd unit's way: ExecStart in the foreground, Type=notify ---------------------------
def _exec_start(mission: Path, mnt: Path, state: Path, notify: Path) -> subprocess.Popen[bytes]:
    """What missionfs@.service runs, with $NOTIFY_SOCKET as systemd sets it."""
    return subprocess.Popen(
        [str(HELPER), str(mission), str(mnt), "-o", f"foreground,quiet,state={state}"],
        env=dict(os.environ, NOTIFY_SOCKET=str(notify)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _messages(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_unit_exec_start_notifies_ready_once_the_mount_answers(
    helper: Path, mission: Path, tmp_path: Path
) -> None:
    mnt, state, path = tmp_path / "mnt", tmp_path / "state", tmp_path / "notify.sock"
    mnt.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(120)  # a deadline, not a wait: recv returns when the datagram arrives
    proc = _exec_start(mission, mnt, state, path)
    with sock, released(mnt):
        try:
            ready = _messages(sock)
            assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
            # Ready means answering: the status file is served right now, no polling.
            assert json.loads((mnt / "status").read_text())["pid"] == proc.pid
            _commit(mnt, "40.72/-73.99/coffee shop.csv")

            proc.send_signal(signal.SIGTERM)  # `systemctl stop`
            assert _messages(sock)["STOPPING"] == "1"
            assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
            assert not _mounted(mnt)

            # A crash (SIGKILL) leaves a dead mount; the restart (Restart=on-failure) releases it.
            proc = _exec_start(mission, mnt, state, path)
            assert _messages(sock)["READY"] == "1"
            proc.kill()
            proc.wait(timeout=30)
            with pytest.raises(OSError):
                os.statvfs(mnt)  # ENOTCONN: the stale FUSE connection
            proc = _exec_start(mission, mnt, state, path)
            assert _messages(sock)["READY"] == "1"
            status = json.loads((mnt / "status").read_text())
            assert status["pid"] == proc.pid and status["counts"]["done"] == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_unit_file_verifies() -> None:
    """`systemd-analyze verify` (also in make lint) loads it without a running systemd."""
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True
    )
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stderr
    text = UNIT.read_text()
    assert "Type=notify" in text and f"ExecStart={HELPER} " in text and "-o foreground," in text
