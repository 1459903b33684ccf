"""The S3 side of trust: a hung S3 never stalls the mount, keys survive odd phrases, and local
commands need neither S3 nor credentials."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mount.test_s3 import MISSION, key_names, lease_names, rels, run
from tests.support.mounts import Mount, new_bucket, wait_for, write_mission
from tests.support.s3_proxy import S3Proxy
from tests.support.s3_servers import MotoServer, SeaweedServer, s3_env

EAGAIN_TEXT = "Resource temporarily unavailable"
PROMPT = 8.0  # seconds: "promptly" for a claim refused or a commit made while S3 hangs


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[S3Proxy]:
    p = S3Proxy(moto.endpoint).start()
    try:
        yield p
    finally:
        p.resume()  # let whatever still waits on it end before the mounts are cleaned up
        p.close()


def strict_mission(path: Path, bucket: str) -> Path:
    return write_mission(
        path, name=MISSION, extra=f'[store]\ns3 = "s3://{bucket}/runs"\nclaims = "strict"\n'
    )


def mv(m: Mount, src: str, dst: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """A real `mv` on the mount; its result and how long it took."""
    t0 = time.monotonic()
    res = subprocess.run(["mv", src, dst], cwd=m.mnt, capture_output=True, text=True, timeout=120)
    return res, time.monotonic() - t0


def s3_state(m: Mount) -> str:
    return str(m.status()["sync"].get("s3"))


def test_a_hung_s3_never_stalls_the_mount(
    moto: MotoServer, proxy: S3Proxy, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = strict_mission(tmp_path / "m.toml", bucket)
    m = make_mount(
        mission,
        name="a",
        env=s3_env(),
        args=("--endpoint-url", proxy.endpoint, "--refresh", "0.5", "--worker", "a"),
    )
    wait_for(lambda: m.status()["sync"]["online"], timeout=60, what="online")
    a, b, c = rels(mission)[:3]

    proxy.hang()  # connections accepted, requests read, never answered
    t0 = time.monotonic()
    claim = subprocess.Popen(
        ["mv", f"pending/{a}", f"claimed/{a}"],
        cwd=m.mnt,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: proxy.seen("/claims/") >= 1, timeout=PROMPT, what="the lease PUT sent")
        (m.mnt / "tmp" / "x").write_text("name\nb\n")
        t1 = time.monotonic()
        os.rename(m.mnt / "tmp" / "x", m.mnt / "done" / b)  # a commit behind the claim
        commit_seconds = time.monotonic() - t1
        _, err = claim.communicate(timeout=120)
    finally:
        if claim.poll() is None:
            claim.kill()
            claim.wait()
    claim_seconds = time.monotonic() - t0
    assert claim.returncode != 0 and EAGAIN_TEXT in err, err
    assert claim_seconds < PROMPT, f"claim refused after {claim_seconds:.1f} s"
    assert commit_seconds < PROMPT, f"commit waited {commit_seconds:.1f} s behind the claim"
    assert (m.mnt / "done" / b).read_text() == "name\nb\n"
    wait_for(lambda: s3_state(m) == "degraded", timeout=PROMPT, what="status degraded")
    assert not m.status()["sync"]["online"]
    assert (m.mnt / "pending" / a).exists() and m.status()["counts"]["claimed"] == 0

    proxy.mute()  # requests reach S3 and take effect, the answers are lost
    res, seconds = mv(m, f"pending/{c}", f"claimed/{c}")
    assert res.returncode != 0 and EAGAIN_TEXT in res.stderr and seconds < PROMPT, res.stderr
    wait_for(lambda: c in lease_names(moto, bucket), PROMPT, "the muted lease applied")
    assert (m.mnt / "pending" / c).exists()  # the claim was refused: the task is not ours

    proxy.resume()
    wait_for(
        lambda: mv(m, f"pending/{a}", f"claimed/{a}")[0].returncode == 0,
        timeout=60,
        what="a claim once S3 answers again",
    )
    wait_for(lambda: s3_state(m) == "online", timeout=60, what="status online again")
    # The lease the muted claim left behind is deleted: only the task we hold has one.
    try:
        wait_for(
            lambda: lease_names(moto, bucket) == {a},
            timeout=120,
            what="no lease left for a task we do not hold",
        )
    except AssertionError as e:
        left = lease_names(moto, bucket)
        raise AssertionError(f"{e}: leases {sorted(left)}, sync {m.status()['sync']}") from None
    assert (m.mnt / "pending" / c).exists() and (m.mnt / "claimed" / a).exists()

    proxy.slow(3.0)  # the lease PUT lands and its answer arrives after the claim gave up
    d = rels(mission)[3]
    res, seconds = mv(m, f"pending/{d}", f"claimed/{d}")
    assert res.returncode != 0 and EAGAIN_TEXT in res.stderr and seconds < PROMPT, res.stderr
    # It did land (the proxy holds the answer 3 s, so the lease exists for a while; on a loaded
    # machine it may reach the server only after the claim gave up: poll, don't look once).
    wait_for(lambda: d in lease_names(moto, bucket), PROMPT, "the late lease landed")
    wait_for(
        lambda: lease_names(moto, bucket) == {a},
        timeout=60,
        what="the late lease deleted when its answer came",
    )
    assert (m.mnt / "pending" / d).exists()


def test_a_phrase_with_a_backslash_is_done_on_a_fresh_node(
    seaweed: SeaweedServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    """SeaweedFS takes `\\` in a key for a path separator: the key must not contain one."""
    bucket = new_bucket(seaweed)
    mission = write_mission(
        tmp_path / "m.toml",
        name=MISSION,
        phrases=("coffee shop", "AC\\DC", "100% cotton"),
        extra=f'[store]\ns3 = "s3://{bucket}/runs"\n',
    )
    odd = [r for r in rels(mission) if "\\" in r or "%" in r][:2]
    plain = next(r for r in rels(mission) if "coffee" in r)
    a = make_mount(
        mission,
        name="a",
        env=s3_env(),
        args=("--endpoint-url", seaweed.endpoint, "--worker", "a"),
    )
    for i, rel in enumerate([*odd, plain]):
        (a.mnt / "tmp" / f"w{i}").write_text(f"name\n{i}\n")
        os.rename(a.mnt / "tmp" / f"w{i}", a.mnt / "done" / rel)
    res = run("sync", str(mission), "--state", str(a.state))
    assert res.returncode == 0, res.stderr
    in_bucket = key_names(seaweed, bucket, "scraped-tiles")
    assert plain in in_bucket  # an ordinary phrase keeps its key: existing buckets still work
    assert any("100%25 cotton" in k for k in in_bucket)  # the codec's own escapes unchanged
    assert not any("\\" in k for k in in_bucket)

    b_state = tmp_path / "b.state"  # a fresh node: one full listing of the bucket
    res = run("sync", str(mission), "--state", str(b_state), "--endpoint-url", seaweed.endpoint)
    assert res.returncode == 0, res.stderr
    res = run("pending", str(mission), "--state", str(b_state))
    assert res.returncode == 0, res.stderr
    pending = set(res.stdout.splitlines())
    assert pending and not pending & {*odd, plain}, sorted(pending & {*odd, plain})
    b = make_mount(mission, name="b", env=s3_env(), args=("--endpoint-url", seaweed.endpoint))
    for i, rel in enumerate(odd):
        assert (b.mnt / "done" / rel).read_text() == f"name\n{i}\n"  # fetched by its key


def no_aws_env(proxy: S3Proxy) -> dict[str, str]:
    """No credentials anywhere, and any HTTPS request (AWS itself) sent to a silent proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/credentials",
        AWS_CONFIG_FILE="/nonexistent/config",
        AWS_EC2_METADATA_DISABLED="true",
        HTTPS_PROXY=proxy.endpoint,
        https_proxy=proxy.endpoint,
    )
    return env


def test_local_commands_need_neither_s3_nor_credentials(
    moto: MotoServer,
    make_mount: Callable[..., Mount],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    bucket = new_bucket(moto)
    mission = write_mission(
        tmp_path / "m.toml", name=MISSION, extra=f'[store]\ns3 = "s3://{bucket}/runs"\n'
    )
    all_rels = rels(mission)
    silent = S3Proxy(moto.endpoint).start()  # where any HTTPS request (to AWS) would go
    silent.hang()
    request.addfinalizer(silent.close)
    aws_blocked = s3_env({"HTTPS_PROXY": silent.endpoint, "https_proxy": silent.endpoint})
    m = make_mount(
        mission, name="a", env=aws_blocked, args=("--endpoint-url", moto.endpoint, "--worker", "a")
    )
    (m.mnt / "tmp" / "x").write_text("name\nx\n")
    os.rename(m.mnt / "tmp" / "x", m.mnt / "done" / all_rels[0])
    # Our upload done and recorded before the unmount: one cut short by it (PUT made, result
    # abandoned) is redone by the sync below, whose listing then learns our witness too.
    wait_for(lambda: m.status()["sync"]["queue"] == 0, what="our witness uploaded")
    m.umount()
    # Another node's witness lands in the bucket (no manifest names it); the endpoint was
    # remembered: a verifying sync without the flag reaches moto and learns it.
    key = f"runs/{MISSION}/scraped-tiles/{all_rels[1]}"
    moto.client().put_object(Bucket=bucket, Key=key, Body=b"name\ny\n")
    res = run("sync", str(mission), "--state", str(m.state), "--verify", env=aws_blocked)
    assert res.returncode == 0 and "learned from the bucket 1" in res.stdout, (
        res.stdout + res.stderr
    )
    done = all_rels[:2]

    env = no_aws_env(silent)
    for args in (
        ("pending", str(mission), "--state", str(m.state)),
        ("status", str(mission), "--state", str(m.state), "--json"),
        ("fsck", str(mission), "--state", str(m.state), "--local"),
    ):
        t0 = time.monotonic()
        res = run(*args, env=env)
        seconds = time.monotonic() - t0
        assert res.returncode == 0, (args, res.stderr)
        assert seconds < PROMPT, (args, seconds)
        if args[0] == "pending":
            assert sorted(res.stdout.splitlines()) == all_rels[2:]
    # Forgetting the endpoint: nothing would be reached but AWS, which is never contacted.
    (m.state / "s3.json").unlink()
    res = run("pending", str(mission), "--state", str(m.state), env=env)
    assert res.returncode == 0 and sorted(res.stdout.splitlines()) == all_rels[2:], res.stderr
    assert silent.accepted == 0  # no request ever went out
    # An offline mount without credentials works locally and says why S3 is not used.
    b = make_mount(mission, name="a", env=env)
    assert sorted(str(p.relative_to(b.mnt / "done")) for p in b.mnt.glob("done/*/*/*")) == done
    wait_for(lambda: b.status()["sync"]["s3"] == "error", PROMPT, "status error")
    assert "no AWS credentials" in b.status()["sync"]["state"]
    b.umount()
