"""The command line: mount/umount as a daemon, status, pending, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import MISSIONFS, ROOT, Mount, wait_for, write_mission


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*MISSIONFS, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def _one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("missionfs: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_background_mount_status_pending_umount(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml")
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    try:
        run("mount", str(mission), str(mnt), "--state", str(state), check=True)
        assert os.path.ismount(mnt)
        rel = "40.70/-74.02/plumber.csv"
        (mnt / "done" / rel).write_text("a\n1\n")
        st = json.loads(run("status", str(mnt), "--json", check=True).stdout)
        assert st["counts"]["done"] == 1 and st["counts"]["pending"] == 23
        human = run("status", str(mnt), check=True).stdout
        assert "1/24 done" in human
        claimed = "40.70/-74.01/plumber.csv"
        os.rename(mnt / "pending" / claimed, mnt / "claimed" / claimed)
        # Beside the running daemon, `pending` sees its claims (STATE/claims.log).
        beside = run("pending", str(mission), "--state", str(state), check=True).stdout.split("\n")
        assert claimed not in beside and "40.70/-74.01/coffee shop.csv" in beside
        pid = st["pid"]
        run("umount", str(mnt), check=True)
        assert not os.path.ismount(mnt)
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
        # Without a mount, the same answers come from the state directory.
        st2 = json.loads(
            run("status", str(mission), "--state", str(state), "--json", check=True).stdout
        )
        # The claim outlives the daemon (a remount holds it again), so it is not pending here.
        assert st2["counts"]["done"] == 1 and st2["counts"]["claimed"] == 1
        assert st2["counts"]["pending"] == 22
        pending = run(
            "pending", str(mission), "--state", str(state), check=True
        ).stdout.splitlines()
        assert len(pending) == 22 and rel not in pending and claimed not in pending
        assert "40.70/-74.02/coffee shop.csv" in pending
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def test_pending_without_any_state_lists_the_whole_intent(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml")
    out = run(
        "pending", str(mission), "--state", str(tmp_path / "s"), check=True
    ).stdout.splitlines()
    assert len(out) == 24 == len(set(out))


def test_bad_mission_is_refused_before_mounting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0\nphrases = ["a"]\n'
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _one_line_error(run("mount", str(bad), str(mnt)), "grid.step = 0", "must be positive")
    assert not os.path.ismount(mnt)


def test_missing_mountpoint_and_double_mount(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml")
    _one_line_error(run("mount", str(mission), str(tmp_path / "nope")), "mkdir -p")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("mount", str(mission), str(mnt), "--state", str(tmp_path / "s"), check=True)
        _one_line_error(
            run("mount", str(mission), str(mnt), "--state", str(tmp_path / "s")),
            "already a mount point",
        )
    finally:
        run("umount", str(mnt))
    assert not os.path.ismount(mnt)
    _one_line_error(run("umount", str(mnt)), "is not mounted")


def test_umount_releases_a_dead_mount(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen(
        [
            *MISSIONFS,
            "mount",
            str(mission),
            str(mnt),
            "--state",
            str(tmp_path / "s"),
            "--foreground",
            "--quiet",
        ],
        cwd=ROOT,
    )
    try:
        wait_for(lambda: os.path.ismount(mnt), what="mount")
        proc.kill()
        proc.wait(timeout=30)
        res = run("umount", str(mnt))
        assert res.returncode == 0, res.stderr
        assert "dead mount" in res.stderr
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def test_state_dir_defaults_to_xdg_data_home(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "m.toml", name="xdg-test")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    res = subprocess.run(
        [*MISSIONFS, "status", str(mission), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state_dir"] == str(tmp_path / "xdg" / "missionfs" / "xdg-test")
    assert (tmp_path / "xdg" / "missionfs" / "xdg-test" / "scraped-tiles").is_dir()


def _big_state(tmp_path: Path) -> tuple[Path, Path]:
    """A 40 x 40 tile mission with a witness in every tile and a 5,000-line journal: every
    listing below is far larger than a pipe's buffer, so the writer meets the closed pipe."""
    mission = write_mission(  # pending: 3 phrases x 1,600 tiles, ~140 KB (a pipe holds 64)
        tmp_path / "big.toml",
        south="40.00",
        west="-74.40",
        north="40.40",
        east="-74.00",
        phrases=("coffee shop", "plumber", "bakery", "dentist"),
    )
    state = tmp_path / "state"
    for i in range(40):
        for j in range(40):
            tile = state / "scraped-tiles" / f"40.{i:02d}" / f"-74.{39 - j:02d}"
            tile.mkdir(parents=True)
            (tile / "plumber.csv").write_text(f"name\n{i}-{j}\n")
    (state / "journal").mkdir()
    entry = '{"t":1764460800.0,"ev":"commit","rel":"40.00/-74.00/plumber.csv","worker":"w"}\n'
    (state / "journal" / "journal-000000.jsonl").write_text(entry * 5000)
    return mission, state


def test_every_listing_survives_a_closed_pipe(tmp_path: Path) -> None:
    """`missionfs CMD | head -n1`: one line out, nothing on stderr, status 141 (as `seq | head`
    and git give), for each command whose output can be long."""
    mission, state = _big_state(tmp_path)
    cli = " ".join(MISSIONFS)
    for cmd in (
        f"pending {mission} --state {state} --quiet",
        f"log {mission} --state {state}",
        f"log {mission} --state {state} --json",
        f"digest {mission} --state {state} --depth tile --quiet",
        f"digest {mission} --state {state} --depth tile --json --quiet",
    ):
        res = subprocess.run(
            ["bash", "-c", f'{cli} {cmd} | head -n1; echo "rc=${{PIPESTATUS[0]}}"'],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        out = res.stdout.splitlines()
        assert len(out) == 2 and out[0].strip(), (cmd, res.stdout)
        assert res.stderr == "", (cmd, res.stderr)
        assert out[1] == "rc=141", (cmd, out[1])


def test_a_state_dir_refuses_another_mission(tmp_path: Path) -> None:
    """Mission beta on alpha's state dir: one line naming both and the override, status 2, for
    every command that takes a state dir; --force-mission adopts the dir for beta."""
    alpha = write_mission(tmp_path / "alpha.toml", name="alpha")
    beta = write_mission(tmp_path / "beta.toml", name="beta", phrases=("bakery",))
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    mnt.mkdir()
    try:
        run("mount", str(alpha), str(mnt), "--state", str(state), check=True)
        try:
            (mnt / "done" / "40.70/-74.02/plumber.csv").write_text("a\n1\n")
        finally:
            run("umount", str(mnt), check=True)
        st = ("--state", str(state))
        for cmd in (
            ("mount", str(beta), str(mnt), *st),
            ("status", str(beta), *st),
            ("pending", str(beta), *st),
            ("log", str(beta), *st),
            ("fsck", str(beta), *st, "--repair"),
            ("digest", str(beta), *st),
        ):
            res = run(*cmd)
            _one_line_error(
                res, f"{state} belongs to mission 'alpha', not 'beta'", "--force-mission"
            )
            assert not os.path.ismount(mnt)
        assert (
            json.loads(run("status", str(alpha), *st, "--json", check=True).stdout)["counts"][
                "done"
            ]
            == 1
        )
        (state / "mission.name").unlink()  # a state dir made before mission.name: mission.path
        _one_line_error(run("pending", str(beta), *st), "belongs to mission 'alpha'")
        run("mount", str(beta), str(mnt), *st, "--force-mission", "--umask", "077", check=True)
        try:
            assert json.loads((mnt / "status").read_text())["mission"] == "beta"
            (mnt / "done" / "40.70/-74.01/bakery.csv").write_text("a\n2\n")  # by the daemon
            assert (state / "scraped-tiles/40.70/-74.01").stat().st_mode & 0o777 == 0o700
            assert (state / "scraped-tiles/40.70/-74.01/bakery.csv").stat().st_mode & 0o777 == 0o600
        finally:
            run("umount", str(mnt), check=True)
        assert (state / "mission.name").read_text() == "beta\n"
        _one_line_error(run("status", str(alpha), *st), "belongs to mission 'beta', not 'alpha'")
    finally:  # whatever failed, no mount is left behind
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@pytest.mark.parametrize(
    ("umask", "dir_mode", "file_mode"),
    [(None, 0o750, 0o640), ("077", 0o700, 0o600), ("022", 0o755, 0o644)],
)
def test_umask_sets_the_modes_of_every_state_file(
    make_mount: Callable[..., Mount],
    tmp_path: Path,
    umask: str | None,
    dir_mode: int,
    file_mode: int,
) -> None:
    """Default 027: the state dir and everything in it (index, journal, log, witnesses) is
    closed to others, readable by the group; --umask says otherwise."""
    mission = write_mission(tmp_path / "m.toml")
    old = os.umask(0o022)  # the daemon inherits 022 from here, as from a usual shell
    try:
        m = make_mount(mission, args=() if umask is None else ("--umask", umask))
    finally:
        os.umask(old)
    fd = os.open(m.p("tmp/w.csv"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"name\nx\n")
    os.close(fd)
    os.rename(m.p("tmp/w.csv"), m.p("done/40.70/-74.02/plumber.csv"))
    (m.p("done/40.71/-74.02/plumber.csv")).write_text("name\ny\n")  # a direct write
    m.umount()
    seen = {"journal/", "index/", "missionfs.log", "scraped-tiles/40.70/-74.02/plumber.csv"}
    found: dict[str, int] = {}
    for path in [m.state, *m.state.rglob("*")]:
        rel = str(path.relative_to(m.state)) + ("/" if path.is_dir() else "")
        found[rel] = path.stat().st_mode & 0o777
        want = dir_mode if path.is_dir() else file_mode
        assert found[rel] == want, f"{rel}: {found[rel]:o}, want {want:o}"
    assert seen <= set(found), sorted(found)
    assert any(r.startswith("journal/journal-") for r in found)


def test_usage_mistakes_are_one_line_and_status_2() -> None:
    """A wrong flag value, a missing argument or an unknown command: one line naming the
    command and the help to read, exit status 2 (not argparse's usage block)."""
    for args, words in (
        (("nosuch",), "invalid choice: 'nosuch'"),
        (("map",), "missionfs map: the following arguments are required: mission"),
        (("mount", "--lease", "abc", "m.toml", "/mnt/x"), "missionfs mount: argument --lease"),
        (("status", "--nosuch", "m.toml"), "unrecognized arguments: --nosuch"),
    ):
        res = run(*args)
        assert res.returncode == 2, (args, res)
        assert res.stdout == "" and res.stderr.count("\n") == 1, (args, res.stderr)
        assert words in res.stderr and "--help" in res.stderr, (args, res.stderr)


def test_fleet_uses_the_endpoint_the_state_dir_remembers(tmp_path: Path, moto: object) -> None:
    """`missionfs fleet --state S` without --endpoint-url reaches the server S was mounted
    with, as sync, log and fsck do (it went to the AWS default endpoint before)."""
    from fusefs.engine.workspace import remember_s3
    from tests.mount.test_s3 import s3_mission
    from tests.support.mounts import new_bucket
    from tests.support.s3_servers import MotoServer, s3_env

    assert isinstance(moto, MotoServer)
    mission = s3_mission(tmp_path / "m.toml", new_bucket(moto))
    state = tmp_path / "state"
    state.mkdir()
    remember_s3(state, moto.endpoint)
    res = subprocess.run(
        [*MISSIONFS, "fleet", str(mission), "--state", str(state), "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**s3_env(), "AWS_EC2_METADATA_DISABLED": "true"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["workers"] == []
