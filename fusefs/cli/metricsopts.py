# layer: cli
"""`--metrics ADDR:PORT` and `--metrics-public` of `missionfs mount` (served by metrics.py).

Kept apart from metrics.py so that every CLI command, which builds the mount parser, does not
import prometheus_client (~50 ms). A non-loopback address needs --metrics-public: the metrics
name the bucket, the worker and the state directory.
"""

from __future__ import annotations

import argparse
import ipaddress


def add_mount_options(m: argparse.ArgumentParser) -> None:
    m.add_argument(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (loopback only, unless "
        "--metrics-public); off by default",
    )
    m.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow --metrics on a non-loopback address (the metrics name bucket and worker)",
    )


def parse_listen(text: str | None, public: bool = False) -> tuple[str, int] | None:
    """`ADDR:PORT` ([v6]:PORT, or :PORT for 127.0.0.1) -> (addr, port); ValueError with the
    one-line reason for anything else."""
    if text is None:
        return None
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"--metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9464")
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--metrics {text!r}: {host!r} is not an IP address") from None
    if not ip.is_loopback and not public:
        raise ValueError(
            f"--metrics {text!r}: not a loopback address; add --metrics-public to serve "
            "metrics to the network"
        )
    return host, int(port_s)


def forwarded(args: argparse.Namespace) -> list[str]:
    """The metrics flags again, for the daemon that `missionfs mount` spawns."""
    out = ["--metrics", args.metrics] if getattr(args, "metrics", None) else []
    return out + (["--metrics-public"] if getattr(args, "metrics_public", False) else [])
