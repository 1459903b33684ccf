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
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs.model.mission import load_mission
from tests.mount.test_s3 import MISSION, listed, s3_mission, s3_mount
from tests.mount.test_s3 import commit as s3_commit
from tests.support.mounts import MISSIONFS, ROOT, Mount, new_bucket, wait_for
from tests.support.s3_servers import MotoServer, free_port

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


def all_rels(mission: Path) -> set[str]:
    mi = load_mission(mission)
    return {mi.space.rel(t) for t in mi.intent}


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


def test_a_refused_redirection_then_a_good_one_commits(mount: Mount, mission: Path) -> None:
    """The kernel releases a closed file after close() returned: the next writer must not find
    the refused one still "in progress" (EBUSY)."""
    todo = sorted(all_rels(mission))[:12]
    script = "".join(
        f"printf bad > 'done/{rel}' && printf 'a,b\\n' > 'done/{rel}' || exit 7\n" for rel in todo
    )
    res = sh(script, mount.mnt)
    assert res.returncode == 0, res.stderr
    for rel in todo:
        assert witness(mount, rel) == b"a,b\n"
    assert mount.status()["refused_direct_writes"] == len(todo)


# -- refusals a shell cannot see ---------------------------------------------------------------
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_a_refused_redirection_is_visible_in_status_and_kept(mount: Mount, shell: str) -> None:
    res = sh(f"printf 'bad' > 'done/{REL}'", mount.mnt, shell=shell)
    assert res.returncode == 0  # the shell cannot see a refusal made at close
    # The kernel sends the file's release (the last close, where it is refused) after the
    # shell's close() returned: the refusal shows within moments.
    wait_for(lambda: mount.status()["refused_direct_writes"] == 1, what="the refusal counted")
    st = mount.status()
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
    with open(big, "wb") as f:  # a header, then one 200 MB line: a hole of zero bytes
        f.write(b"name,address\n")
        f.seek(size - 1)
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


# -- remote-only witnesses: their size before the first read -----------------------------------
def test_remote_witnesses_have_their_size_before_any_read(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """A node that learned results from the bucket shows their real size before fetching them:
    from its start-up listing, from a manifest, and (a manifest without sizes, as older
    versions wrote) from a HEAD in the background. tar, rsync -a, copytree, du and find then
    see the committed bytes, not empty files."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    big = "name,note\n" + "café ☕,1\n" * 2000
    listed_early = {
        "40.70/-74.02/coffee shop.csv": big,
        "40.71/-74.02/plumber.csv": "h\nx\n",
        "40.72/-74.00/coffee shop.csv": "a,b\n1,2\n",
    }
    from_manifest = {"40.70/-74.01/plumber.csv": "name\n" + "é\n" * 3000}
    from_old_manifest = {"40.72/-73.99/plumber.csv": "x,y\n" + "3,4\n" * 100}
    bodies = {**listed_early, **from_manifest, **from_old_manifest}
    a = s3_mount(make_mount, mission, moto, "a")
    for rel, body in listed_early.items():
        s3_commit(a, rel, body)
    wait_for(lambda: a.status()["sync"]["queue"] == 0, timeout=60, what="a uploads")
    b = s3_mount(make_mount, mission, moto, "b")
    wait_for(lambda: set(listed_early) <= listed(b, "done"), timeout=60, what="b lists a's results")
    for rel, body in from_manifest.items():
        s3_commit(a, rel, body)
    moto.client()
    for rel, body in from_old_manifest.items():
        _put_old_manifest(moto, bucket, rel, body.encode())
    wait_for(lambda: set(bodies) <= listed(b, "done"), timeout=60, what="b learns the rest")

    def sizes_shown() -> bool:
        return all(
            os.stat(b.p(f"done/{rel}")).st_size == len(body.encode())
            for rel, body in bodies.items()
        )

    wait_for(sizes_shown, timeout=30, what="every size shown")
    assert b.status()["sync"]["fetched"] == 0  # nothing was read yet: the sizes came first
    paths = [str(b.p(f"done/{rel}")) for rel in bodies]
    du = subprocess.run(["du", "-b", *paths], capture_output=True, text=True, check=True)
    assert sorted(int(line.split("\t")[0]) for line in du.stdout.splitlines()) == sorted(
        len(body.encode()) for body in bodies.values()
    )
    found = subprocess.run(
        ["find", str(b.p("done")), "-type", "f", "-empty"], capture_output=True, text=True
    )
    assert found.returncode == 0 and found.stdout == ""
    copies = {  # each tool on its own row, while every file there is still remote-only
        "40.70": tmp_path / "rsync",
        "40.71": tmp_path / "copytree",
        "40.72": tmp_path / "tar",
    }
    subprocess.run(["rsync", "-a", f"{b.p('done/40.70')}/", f"{copies['40.70']}/"], check=True)
    shutil.copytree(b.p("done/40.71"), copies["40.71"])
    archive = tmp_path / "done.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(b.p("done/40.72")), "."], check=True)
    copies["40.72"].mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(copies["40.72"])], check=True)
    for rel, body in bodies.items():
        row, rest = rel.split("/", 1)
        assert (copies[row] / rest).read_bytes() == body.encode(), rel
        assert (b.mnt / "done" / rel).read_bytes() == body.encode()
    assert b.status()["sync"]["fetched"] == len(bodies)


def test_remote_sizes_after_a_restart(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """Sizes are kept with the remote facts: a node restarted after an unmount shows them."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    bodies = {
        "40.70/-74.02/coffee shop.csv": "h,x\n" + "ü,1\n" * 500,
        "40.72/-73.99/plumber.csv": CSV.decode(),
    }
    a = s3_mount(make_mount, mission, moto, "a")
    for rel, body in bodies.items():
        s3_commit(a, rel, body)
    wait_for(lambda: a.status()["sync"]["queue"] == 0, timeout=60, what="a uploads")
    b = s3_mount(make_mount, mission, moto, "b")
    wait_for(lambda: set(bodies) <= listed(b, "done"), timeout=60, what="b learns")
    b.umount()
    b.start()
    wait_for(
        lambda: all(
            os.stat(b.p(f"done/{rel}")).st_size == len(body.encode())
            for rel, body in bodies.items()
        ),
        timeout=30,
        what="sizes after the restart",
    )
    assert b.status()["sync"]["fetched"] == 0
    for rel, body in bodies.items():
        assert b.p(f"done/{rel}").read_bytes() == body.encode()


def _put_old_manifest(moto: MotoServer, bucket: str, rel: str, body: bytes) -> None:
    """A witness and a node manifest line as older versions wrote them: `rel<TAB>sha256`, no
    size; in a window a little ahead (the fleet's window, on the server's clock), so that it
    is merged into that window's segment when it closes."""
    sha = hashlib.sha256(body).hexdigest()
    root = f"runs/{MISSION}"
    client = moto.client()
    client.put_object(
        Bucket=bucket, Key=f"{root}/scraped-tiles/{rel}", Body=body, Metadata={"sha256": sha}
    )
    protocol = client.get_object(Bucket=bucket, Key=f"{root}/.missionfs/protocol.json")
    w = int(time.time() // json.loads(protocol["Body"].read())["window"]) + 2
    client.put_object(
        Bucket=bucket, Key=f"{root}/log/{w:010d}/old-00000001.txt", Body=f"{rel}\t{sha}\n".encode()
    )


def test_remote_sizes_after_a_kill_with_s3_unreachable(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """kill -9 of a node that learned results from the bucket, then a mount with S3
    unreachable (no listing, no HEAD can tell a size): `stat`, `ls -l`, `du -b` and
    `find -empty` show the committed sizes at once, from the state dir alone. Sizes learned
    before an unmount (the snapshot's sizes file) and after it (log lines only: the kill
    leaves no snapshot), from the listing, a manifest, and a HEAD (old manifest)."""
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    before_umount = {"40.70/-74.02/coffee shop.csv": "h,x\n" + "ü,1\n" * 500}
    after_umount = {"40.72/-73.99/plumber.csv": "name\n" + "é\n" * 3000}
    old_manifest = {"40.71/-74.01/plumber.csv": "x,y\n" + "3,4\n" * 100}
    bodies = {**before_umount, **after_umount, **old_manifest}
    a = s3_mount(make_mount, mission, moto, "a")
    for rel, body in before_umount.items():
        s3_commit(a, rel, body)
    wait_for(lambda: a.status()["sync"]["queue"] == 0, timeout=60, what="a uploads")
    b = s3_mount(make_mount, mission, moto, "b")

    def sizes_shown(rels: dict[str, str]) -> bool:
        return set(rels) <= listed(b, "done") and all(
            os.stat(b.p(f"done/{r}")).st_size == len(body.encode()) for r, body in rels.items()
        )

    wait_for(lambda: sizes_shown(before_umount), timeout=60, what="b learns and sizes")
    b.umount()
    b.start()
    for rel, body in after_umount.items():
        s3_commit(a, rel, body)
    for rel, body in old_manifest.items():
        _put_old_manifest(moto, bucket, rel, body.encode())
    wait_for(lambda: set(bodies) <= listed(b, "done"), timeout=60, what="b learns the rest")
    wait_for(lambda: sizes_shown(bodies), timeout=60, what="every size shown")
    assert b.status()["sync"]["fetched"] == 0
    b.kill9()
    b.args[b.args.index("--endpoint-url") + 1] = f"http://127.0.0.1:{free_port()}"  # nothing
    b.start()
    assert set(bodies) <= listed(b, "done")
    for rel, body in bodies.items():  # at once: no wait, nothing to wait for
        assert os.stat(b.p(f"done/{rel}")).st_size == len(body.encode()), rel
    paths = [str(b.p(f"done/{rel}")) for rel in bodies]
    du = subprocess.run(["du", "-b", *paths], capture_output=True, text=True, check=True)
    assert sorted(int(line.split("\t")[0]) for line in du.stdout.splitlines()) == sorted(
        len(body.encode()) for body in bodies.values()
    )
    rel, body = next(iter(after_umount.items()))
    ls = subprocess.run(["ls", "-ln", str(b.p(f"done/{rel}"))], capture_output=True, text=True)
    assert ls.returncode == 0 and ls.stdout.split()[4] == str(len(body.encode())), ls.stdout
    found = subprocess.run(
        ["find", str(b.p("done")), "-type", "f", "-empty"], capture_output=True, text=True
    )
    assert found.returncode == 0 and found.stdout == ""
    wait_for(lambda: "unreachable" in b.status()["sync"]["state"], timeout=60, what="offline")
    assert sizes_shown(bodies)
    assert b.status()["sync"]["fetched"] == 0
