"""`python -m scraper MNT` / `missionfs-scrape MNT`: the reference worker's command line.

Errors in the input are one line (`missionfs-scrape: ...`, exit status 2); a run that gave up
on some tasks exits with 1 and lists them; SIGINT/SIGTERM stop claiming, let in-flight tasks
finish for a few seconds and give back the claims that are left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from .source import Source
from .worker import Pool, Summary

PROG = "missionfs-scrape"


class UserError(Exception):
    """Printed as one line `missionfs-scrape: ...`, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        status = run(args)
        sys.stdout.flush()
        return status
    except UserError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `missionfs-scrape MNT --json | head -c 10`: as missionfs does
        from fusefs.cli.common import closed_pipe

        return closed_pipe()


def parser() -> argparse.ArgumentParser:
    from .overpass import DEFAULT_URL

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Claim pending tasks of a missionfs mount, fetch their rows, commit them.",
    )
    p.add_argument("mount", type=Path, help="a missionfs mount point")
    p.add_argument("--source", choices=("overpass", "synthetic"), default="overpass")
    p.add_argument("--workers", type=int, default=4, help="concurrent workers (threads), 4")
    p.add_argument("--follow", action="store_true", help="keep polling for new pending tasks")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between polls (--follow), 5")
    p.add_argument(
        "--attempts", type=int, default=3, help="tries per task before giving up on it, 3"
    )
    p.add_argument(
        "--retry-delay", type=float, default=5.0, help="first cool-down before a retry (s), 5"
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar, no summary (failures still shown)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    o = p.add_argument_group("overpass source")
    o.add_argument("--overpass-url", default=DEFAULT_URL, help=f"endpoint ({DEFAULT_URL})")
    o.add_argument(
        "--rate", type=float, default=1.0, help="requests/s for the whole process (0: no limit), 1"
    )
    o.add_argument("--http-retries", type=int, default=4, help="retries per request, 4")
    o.add_argument("--backoff", type=float, default=2.0, help="first retry backoff (s), 2")
    o.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout (s), 60")
    o.add_argument("--contact", help="e-mail or URL added to the User-Agent")
    s = p.add_argument_group("synthetic source")
    s.add_argument("--delay", type=float, default=0.0, help="simulated seconds per task, 0")
    return p


def _check(args: argparse.Namespace) -> None:
    positive = {"--poll": args.poll, "--timeout": args.timeout}
    for flag, value in positive.items():
        if not value > 0:
            raise UserError(f"{flag} {value}: must be a positive number of seconds")
    at_least = {"--workers": (args.workers, 1), "--attempts": (args.attempts, 1)}
    for flag, (value, low) in at_least.items():
        if value < low:
            raise UserError(f"{flag} {value}: must be at least {low}")
    non_negative = {
        "--rate": args.rate,
        "--http-retries": args.http_retries,
        "--backoff": args.backoff,
        "--retry-delay": args.retry_delay,
        "--delay": args.delay,
    }
    for flag, value in non_negative.items():
        if value < 0:
            raise UserError(f"{flag} {value}: must not be negative")


def read_status(mnt: Path) -> dict[str, Any]:
    """The mount's status file; a clear error if MNT is not a live missionfs mount."""
    hint = f"mount one with: missionfs mount MISSION.toml {mnt}"
    if not mnt.is_dir():
        raise UserError(f"{mnt}: no such directory; {hint}")
    try:
        status = json.loads((mnt / "status").read_bytes())
        counts = status["counts"]
        int(counts["intent"]) + int(counts["done"])
    except FileNotFoundError:
        raise UserError(f"{mnt}: not a missionfs mount (no status file); {hint}") from None
    except OSError as e:
        raise UserError(f"{mnt}: the mount does not answer ({e.strerror}); {hint}") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{mnt}/status: not a missionfs status object") from None
    return dict(status)


def make_source(args: argparse.Namespace) -> Source:
    if args.source == "synthetic":
        from .synthetic import SyntheticSource

        return SyntheticSource(delay=args.delay)
    from .overpass import OverpassSource

    try:
        return OverpassSource(
            url=args.overpass_url,
            rate=args.rate,
            retries=args.http_retries,
            backoff=args.backoff,
            timeout=args.timeout,
            contact=args.contact,
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    mnt: Path = args.mount.absolute()
    status = read_status(mnt)
    source = make_source(args)
    bar = None if args.quiet else _progress_bar(status)

    def report(msg: str) -> None:
        line = f"{PROG}: {msg}"
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    pool = Pool(
        mnt,
        source,
        args.workers,
        follow=args.follow,
        poll=args.poll,
        attempts=args.attempts,
        retry_delay=args.retry_delay,
        lease=float(status.get("lease_seconds") or 0) or None,
        report=report,
    )
    tick = _ticker(mnt, bar) if bar is not None else None
    with _stop_on_signals(pool.request_stop):
        summary = pool.run(tick)
    if bar is not None:
        bar.close()
    final = _try_status(mnt)
    if args.json:
        print(json.dumps({**summary.as_dict(), "status": final}, ensure_ascii=False))
    if not args.quiet:
        print(human_summary(summary, final, source), file=sys.stderr)
    elif summary.error:
        print(f"{PROG}: {summary.error}", file=sys.stderr)
    return 1 if summary.failed or summary.error else 0


def _progress_bar(status: dict[str, Any]) -> Any:
    from tqdm import tqdm

    counts = status["counts"]
    sized = _width_known()
    bar = tqdm(
        total=counts["intent"],
        initial=counts["done"],
        unit=" task",
        desc=f"{status.get('mission', 'mission')}",
        file=sys.stderr,
        dynamic_ncols=sized,
        ncols=None if sized else 100,
        nrows=None if sized else 24,
        smoothing=0.1,
    )
    bar.set_postfix(pending=counts["pending"], claimed=counts["claimed"], refresh=False)
    return bar


def _width_known() -> bool:
    """A pty with no size (e.g. under `script`) reports 0 columns: the bar would vanish."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):
        return True  # not a terminal: tqdm picks its own width


def _ticker(mnt: Path, bar: Any) -> Callable[[], None]:
    """Mission-wide progress (every worker on this mount counts) from the status file."""

    def tick() -> None:
        st = _try_status(mnt)
        if st is None:
            return
        c = st["counts"]
        bar.set_postfix(pending=c["pending"], claimed=c["claimed"], refresh=False)
        bar.update(c["done"] - bar.n)

    return tick


def _try_status(mnt: Path) -> dict[str, Any] | None:
    try:
        st = json.loads((mnt / "status").read_bytes())
        return st if isinstance(st, dict) and isinstance(st.get("counts"), dict) else None
    except (OSError, ValueError):
        return None


class _stop_on_signals:
    """SIGINT/SIGTERM ask the pool to stop (only possible from the main thread)."""

    def __init__(self, stop: Callable[[str], None]) -> None:
        self.stop = stop
        self.old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.Signals(signum).name)

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handler)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


def human_summary(s: Summary, status: dict[str, Any] | None, source: Source) -> str:
    rate = s.committed / s.seconds if s.seconds > 0 else 0.0
    lines = [
        f"{PROG}: {s.committed} task(s) committed in {s.seconds:.1f} s ({rate:.1f} tasks/s) by "
        f"{s.workers} worker(s), source {s.source}"
        + ("" if s.stopped == "done" else f"; stopped ({s.stopped})"),
        f"  lost claim races {s.lost_races}, already done by others {s.already_done}, "
        f"claims released {s.released}, claims expired under us {s.claims_lost}"
        + (f", claims refused (S3 unreachable) {s.claims_refused}" if s.claims_refused else ""),
    ]
    if status is not None:
        c = status["counts"]
        lines.append(
            f"  mission {status.get('mission', '?')}: {c['done']}/{c['intent']} done, "
            f"{c['pending']} pending, {c['claimed']} claimed"
        )
    for rel, why in sorted(s.failed.items()):
        lines.append(f"  failed (left pending): {rel}: {why}")
    if s.error:
        lines.append(f"  error: {s.error}")
    if source.attribution and s.committed:
        lines.append(f"  {source.attribution}")
    return "\n".join(lines)
