"""`missionfs mount --metrics`: Prometheus text scraped over HTTP from a real mount, parsed
with prometheus_client's own parser and checked against the status file."""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fusefs.engine.metrics import reason_label, s3_outcome
from tests.mount.test_s3 import new_bucket, s3_mission
from tests.support.mounts import MISSIONFS, ROOT, Mount, _mounted, wait_for
from tests.support.s3_servers import MotoServer, s3_env

DASHBOARD = ROOT / "docs" / "grafana-missionfs.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        assert r.status == 200
        return str(r.read().decode())


def scrape(port: int) -> Samples:
    text = scrape_text(port)
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def commit(m: Mount, rel: str, body: str = "name,lat,lon\nA cafe,40.705,-74.015\n") -> None:
    tmp = m.mnt / "tmp" / f"w{abs(hash(rel))}"
    tmp.write_text(body)
    os.rename(tmp, m.mnt / "done" / rel)


def refuse(m: Mount, rel: str, body: str) -> int:
    """A commit the daemon refuses; returns its errno."""
    tmp = m.mnt / "tmp" / "bad"
    tmp.write_bytes(body.encode())
    with pytest.raises(OSError) as e:
        os.rename(tmp, m.mnt / "done" / rel)
    os.unlink(tmp)
    return int(e.value.errno or 0)


def test_metrics_of_a_local_mount_match_the_status_file(
    make_mount: Callable[..., Mount], mission: Path
) -> None:
    port = free_port()
    m = make_mount(mission, args=("--metrics", f"127.0.0.1:{port}"))
    claimed = ["40.70/-74.02/plumber.csv", "40.71/-74.01/plumber.csv", "40.72/-74.00/plumber.csv"]
    for rel in claimed:
        os.rename(m.p(f"pending/{rel}"), m.p(f"claimed/{rel}"))
    commit(m, claimed[0])
    commit(m, "40.70/-74.01/coffee shop.csv")  # committed without a claim
    assert refuse(m, claimed[0], "name\nother\n") == errno.EEXIST  # immutable witness
    assert refuse(m, claimed[1], "a,b\n1,2") == errno.EBADMSG  # truncated
    assert refuse(m, claimed[1], "a,b\n1,2,3\n") == errno.EBADMSG  # a field too many

    samples, status = scrape(port), m.status()
    assert labelled(samples, "missionfs_tasks", "state") == {
        k: float(v) for k, v in status["counts"].items()
    }
    assert value(samples, "missionfs_tasks", state="done") == 2
    assert value(samples, "missionfs_tasks", state="claimed") == 2
    assert labelled(samples, "missionfs_commits_total", "source") == {
        k: float(v) for k, v in status["commits"].items()
    }
    assert value(samples, "missionfs_refusals_total") == status["refused"] == 3
    reasons = labelled(samples, "missionfs_refusals_by_reason_total", "reason")
    assert reasons == {"a_witness_exists_and_is_immutable": 1, "not_a_well_formed_csv": 2}
    assert labelled(samples, "missionfs_claims_total", "outcome") == {"claimed": 3}
    digest = status["digest"]["state"]
    assert value(samples, "missionfs_digest_state", missionfs_digest_state=digest) == 1
    assert sum(labelled(samples, "missionfs_digest_state", "missionfs_digest_state").values()) == 1
    assert value(samples, "missionfs_mount_info", mission="test-mission", store="local",
                 durability="strict", state_dir=str(m.state)) == 1  # fmt: skip
    assert ("missionfs_upload_queue", ()) not in samples  # no S3: no sync metrics
    m.umount()


def test_metrics_of_an_s3_mount(
    moto: MotoServer, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    port = free_port()
    m = make_mount(
        mission,
        env=s3_env(),
        args=("--endpoint-url", moto.endpoint, "--refresh", "0.5", "--worker", "w1",
              "--metrics", f"127.0.0.1:{port}"),
    )  # fmt: skip
    rels = ["40.70/-74.02/plumber.csv", "40.71/-74.00/coffee shop.csv"]
    for rel in rels:
        commit(m, rel)
    wait_for(lambda: m.status()["sync"]["uploaded"] == 2 and m.status()["sync"]["queue"] == 0,
             60, "uploads")  # fmt: skip
    samples, info = scrape(port), m.status()["sync"]
    assert value(samples, "missionfs_uploads_total") == info["uploaded"] == 2
    assert value(samples, "missionfs_upload_queue") == 0
    assert value(samples, "missionfs_upload_queue_oldest_age_seconds") == 0
    assert value(samples, "missionfs_s3_online") == 1
    assert value(samples, "missionfs_conflicts_total") == info["conflicts"] == 0
    s3 = {
        (dict(k[1])["kind"], dict(k[1])["outcome"]): v
        for k, v in samples.items()
        if k[0] == "missionfs_s3_requests_total"
    }
    assert s3[("HeadBucket", "ok")] >= 1  # the start-up check is counted
    assert s3[("PutObject", "ok")] >= 2  # the two witnesses (plus manifests, the probe)
    assert s3.get(("PutObject", "precondition_failed"), 0) >= 1  # the conditional-write probe
    # The library's own count of calls (one per call, not per attempt) agrees on the witnesses.
    assert value(samples, "missionfs_s3_calls_total", op="PUT") >= 2
    wait_for(lambda: 0 <= value(scrape(port), "missionfs_refresh_lag_seconds") < 30, 30,
             "a refresh")  # fmt: skip
    # Every metric the sample Grafana dashboard queries is served by an S3 mount.
    served = set(re.findall(r"^# TYPE (\S+)", scrape_text(port), re.M))
    wanted = set(re.findall(r"(missionfs_[a-z_]+)\{", DASHBOARD.read_text()))
    assert wanted and wanted <= served
    m.umount()


def test_queue_age_and_network_errors_while_s3_is_unreachable(
    make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    mission = s3_mission(tmp_path / "m.toml", "nobucket")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: the worker works offline
    port = free_port()
    m = make_mount(
        mission,
        env=s3_env(),
        args=("--endpoint-url", endpoint, "--refresh", "0.5", "--metrics", f"127.0.0.1:{port}"),
    )
    before = time.time()
    commit(m, "40.70/-74.02/plumber.csv")
    after = time.time()
    wait_for(lambda: m.status()["sync"]["queue"] == 1, 30, "the queued witness")
    samples = scrape(port)
    now = time.time()
    assert value(samples, "missionfs_upload_queue") == 1
    age = value(samples, "missionfs_upload_queue_oldest_age_seconds")
    # The witness's own mtime: between the commit and the scrape, not "since first scraped".
    assert now - after - 1 <= age <= now - before + 1
    assert age > 0
    assert value(samples, "missionfs_s3_online") == 0
    outcomes = labelled(samples, "missionfs_s3_requests_total", "outcome")
    assert outcomes == {"network_error": outcomes["network_error"]} and outcomes["network_error"]
    m.umount()


class SlowDownProxy(ThreadingHTTPServer):
    """An S3 endpoint in front of moto that answers the first PUT of each witness with
    503 SlowDown, as S3 does under load (botocore then retries it)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream.removeprefix("http://")
        self.throttled: set[str] = set()
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SlowDownProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            throttle = (
                self.command == "PUT"
                and "/scraped-tiles/" in self.path
                and self.path not in self.server.throttled
            )
            if throttle:
                self.server.throttled.add(self.path)
        if throttle:
            error = (
                b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            )
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in (
                "transfer-encoding",
                "connection",
                "content-length",
                "server",
                "date",
            ):
                self.send_header(k, v)
        self.send_header(
            "Content-Length",
            str(len(data) if self.command != "HEAD" else r.getheader("Content-Length") or 0),
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@pytest.fixture
def slowdown(moto: MotoServer) -> Iterator[SlowDownProxy]:
    proxy = SlowDownProxy(moto.endpoint)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=30)


def test_throttled_requests_are_counted(
    moto: MotoServer, slowdown: SlowDownProxy, make_mount: Callable[..., Mount], tmp_path: Path
) -> None:
    bucket = new_bucket(moto)
    mission = s3_mission(tmp_path / "m.toml", bucket)
    port = free_port()
    m = make_mount(
        mission,
        env=s3_env(),
        args=("--endpoint-url", slowdown.endpoint, "--refresh", "0.5", "--worker", "w1",
              "--metrics", f"127.0.0.1:{port}"),
    )  # fmt: skip
    rels = ["40.70/-74.02/plumber.csv", "40.71/-74.00/coffee shop.csv", "40.72/-74.01/plumber.csv"]
    for rel in rels:
        commit(m, rel)
    wait_for(lambda: m.status()["sync"]["uploaded"] == 3, 60, "uploads through the proxy")
    samples = scrape(port)
    puts = {
        dict(k[1])["outcome"]: v
        for k, v in samples.items()
        if k[0] == "missionfs_s3_requests_total" and dict(k[1])["kind"] == "PutObject"
    }
    assert len(slowdown.throttled) == 3  # the proxy did answer SlowDown, once per witness
    assert puts["throttled"] == 3 and puts["ok"] >= 3, puts
    assert value(samples, "missionfs_uploads_total") == 3
    m.umount()


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("0.0.0.0:9464", "not a loopback address; add --metrics-public"),
        ("192.0.2.1:9464", "not a loopback address"),
        ("9464", "expected ADDR:PORT"),
        ("127.0.0.1:70000", "expected ADDR:PORT"),
        ("example.org:9464", "is not an IP address"),
    ],
)
def test_bad_metrics_address_is_one_line_exit_2(
    mission: Path, tmp_path: Path, flag: str, message: str
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(
        [*MISSIONFS, "mount", str(mission), str(mnt), "--state", str(tmp_path / "s"),
         "--metrics", flag],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr
    assert not _mounted(mnt)


def test_metrics_port_in_use_refuses_the_mount(mission: Path, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = subprocess.run(
            [*MISSIONFS, "mount", str(mission), str(mnt), "--state", str(tmp_path / "s"),
             "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in lines[0]
    assert not _mounted(mnt)


def test_labels_stay_bounded() -> None:
    assert reason_label("not a well-formed CSV: line 3: bad quote") == "not_a_well_formed_csv"
    assert reason_label("x; bytes kept in /s/rejected/1") == "x"
    assert s3_outcome({"status_code": 503}, {"Error": {"Code": "SlowDown"}}, None) == "throttled"
    assert s3_outcome({"status_code": 400}, {"Error": {"Code": "SlowDown"}}, None) == "throttled"
    assert s3_outcome({"status_code": 429}, {}, None) == "throttled"
    assert s3_outcome({"status_code": 412}, {}, None) == "precondition_failed"
    assert s3_outcome({"status_code": 404}, {}, None) == "not_found"
    assert s3_outcome({"status_code": 500}, {}, None) == "server_error"
    assert s3_outcome({"status_code": 403}, {}, None) == "client_error"
    assert s3_outcome(None, None, OSError("refused")) == "network_error"
    assert s3_outcome({"status_code": 200}, {}, None) == "ok"
