"""kill -9 the daemon under 4 renaming workers, TRIES times; recover with the real CLI each time.

Usage: python bench/kill9_loop.py [--tries 50] [--work DIR] [--no-guardian]

--no-guardian runs the daemons with MISSIONFS_GUARDIAN=0, so only the next `missionfs mount` or
`missionfs umount` can release a killed daemon's mount (the recovery path of issue 13).

Prints one line per try and a summary `tries N wedges W lost L deaths D`; exit status 1 if any
try wedged, lost an acknowledged commit or found no daemon after recovery, or if the final
`missionfs fsck` is not clean. See tests/support/kill9_util.py for what one try does.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefs.model.mission import load_mission
from tests.support.kill9_util import MISSION, Loop
from tests.support.mounts import write_mission


def guardian_lines(work: Path) -> int:
    """How many stuck daemons the guardians aborted (they log it in STATE/missionfs.log)."""
    log = work / "state" / "missionfs.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sum("guardian:" in line for line in lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=50)
    p.add_argument("--no-guardian", action="store_true", help="MISSIONFS_GUARDIAN=0")
    p.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    args = p.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kill9-"))
    work.mkdir(parents=True, exist_ok=True)
    mission = write_mission(work / "mission.toml", **MISSION)
    m = load_mission(mission)
    rels = sorted(m.space.rel(t) for t in m.intent)
    loop = Loop(work, mission, rels, guardian=not args.no_guardian)
    wedges = lost = deaths = zombies = 0
    t0 = time.monotonic()
    try:
        loop.setup()
        for n in range(args.tries):
            r = loop.one_try(n)
            wedges += bool(r.wedged)
            zombies += "stuck in the kernel" in r.recovered
            lost += len(r.lost)
            deaths += bool(r.died)
            print(
                f"try {n:2d} kill {r.kill_at:16s} via {r.via:6s} commits {r.commits:3d} recovered in "
                f"{r.recover_s:5.2f} s  {r.wedged or 'ok'}"
                + (f"  LOST {r.lost[:3]}" if r.lost else "")
                + (f"  DIED {r.died}" if r.died else "")
                + (f"\n    {r.recovered}" if r.recovered else ""),
                flush=True,
            )
        fsck = loop.finish()
    finally:
        loop.cleanup()
    print(
        f"tries {args.tries} wedges {wedges} lost {lost} deaths {deaths} "
        f"stuck-daemons-released-by-cli {zombies} "
        f"aborted-by-guardian {guardian_lines(work)} "
        f"acknowledged commits {len(loop.acked)} fsck exit {fsck.returncode} "
        f"({time.monotonic() - t0:.0f} s)"
    )
    if fsck.returncode != 0:
        print(fsck.stdout + fsck.stderr)
    return int(bool(wedges or lost or deaths or fsck.returncode))


if __name__ == "__main__":
    sys.exit(main())
