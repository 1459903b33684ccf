"""Issue 13, "no wedge after kill -9": the kill -9 loop on a real mount, recovered by the CLI.

Each try kills the daemon under 4 renaming workers (half of the tries at the worst moment: while
its notify thread waits in the kernel for a directory lock held by an unanswered rename, which
left a zombie holding /dev/fuse before the fix). The next `missionfs mount` or `missionfs umount`
must recover within a deadline, every worker must end (none stuck in D state) and no commit
whose `mv` exited 0 may be missing; `missionfs fsck` is the final oracle.

MISSIONFS_KILL9_TRIES sets the number of tries (8 here; bench/kill9_loop.py runs 50).
"""

from __future__ import annotations

import os
from pathlib import Path

from fusefs.mission import load_mission
from tests.conftest import write_mission
from tests.kill9_util import MISSION, Loop

TRIES = int(os.environ.get("MISSIONFS_KILL9_TRIES", "8"))


def test_kill9_loop_never_wedges_nor_loses_a_commit(tmp_path: Path) -> None:
    mission = write_mission(tmp_path / "mission.toml", **MISSION)  # type: ignore[arg-type]
    m = load_mission(mission)
    loop = Loop(tmp_path, mission, sorted(m.space.rel(t) for t in m.intent))
    try:
        loop.setup()
        results = [loop.one_try(n) for n in range(TRIES)]
        fsck = loop.finish()
    finally:
        loop.cleanup()
    report = "\n".join(
        f"try {r.n} kill {r.kill_at} via {r.via}: {r.wedged or 'ok'} {r.recovered}"
        for r in results
    )
    assert [r.wedged for r in results if r.wedged] == [], report
    assert [r.lost for r in results if r.lost] == [], report
    assert [r.died for r in results if r.died] == [], report
    assert all(r.recover_s < 30 for r in results), report
    assert sum(r.commits for r in results) >= TRIES, report  # the workers did commit
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    print(report)
