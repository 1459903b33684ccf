"""Everything one node knows about a mission, built once and injected everywhere.

A Workspace is the state dir opened for a mission: local store, start-up index, the state model,
the commit path and, with `[store] s3`, the sync engine. The daemon mounts one; `missionfs sync`,
`status` and `pending` use one without FUSE.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fusefs.engine.commit import Committer
from fusefs.engine.facts import Facts
from fusefs.engine.status import StatusBoard
from fusefs.model.mission import Mission, extend_intent
from fusefs.model.state import MissionState
from fusefs.statedir.index import FactIndex, walk_facts
from fusefs.statedir.journal import Journal, worker_id
from fusefs.statedir.layout import StateLayout
from fusefs.statedir.ratelog import LOG_REPEATS
from fusefs.statedir.store import LocalStore, replace_text, replace_text_if_changed

if TYPE_CHECKING:  # boto3 costs ~120 ms and 10 MiB: imported only for missions with S3
    from fusefs.engine.digest import DigestKeeper
    from fusefs.engine.sync import SyncEngine
    from fusefs.objects.base import ObjectStore
    from fusefs.objects.s3store import S3Store

log = logging.getLogger("missionfs")


def default_state_dir(mission: Mission) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "missionfs" / mission.name


@dataclass
class SyncOptions:
    endpoint_url: str | None = None
    worker: str | None = None
    uploaders: int = 16
    refresh: float = 30.0  # protocol v2's window W, if this node is the fleet's first
    full_refresh: float = 3600.0  # verification of this node's shards
    claim_timeout: float = 2.0  # seconds a claim waits for its lease before EAGAIN
    # The bucket behind mission.s3: None for S3 itself (made from the URL and endpoint on first
    # use); the engine test tier and simulations give an in-process MemoryStore here.
    objects: ObjectStore | None = None


@dataclass
class Workspace:
    mission: Mission
    store: LocalStore
    index: FactIndex
    state: MissionState
    status: StatusBoard
    facts: Facts
    committer: Committer
    sync: SyncEngine | None
    outside_plan: list[str]
    from_index: bool
    lease: float
    _lock: IO[str] | None = field(default=None, repr=False)
    digest: DigestKeeper | None = None

    def close(self) -> None:
        self.status.flush_refusals(everything=True)  # the last counts of repeated refusals
        LOG_REPEATS.flush(everything=True)
        self.committer.journal.close()
        self.store.dir_fds.close()
        self.committer.fsyncer.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class StateDirBusy(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def lock_state_dir(state_dir: Path) -> IO[str]:
    """One daemon per state dir: an flock held for the daemon's life, with its pid inside."""
    state_dir.mkdir(parents=True, exist_ok=True)
    f = open(StateLayout(state_dir).lock, "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        text = f.read().strip()
        f.close()
        raise StateDirBusy(int(text) if text.isdigit() else None) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def remember_mission(state_dir: Path, path: Path) -> None:
    """Record the mission file's absolute path, so commands given only state dirs (`diff A B`)
    can find their mission."""
    replace_text_if_changed(StateLayout(state_dir).mission_path, f"{path.resolve()}\n")


def remembered_mission(state_dir: Path) -> Path | None:
    try:
        text = StateLayout(state_dir).mission_path.read_text(
            encoding="utf-8", errors="surrogateescape"
        )
    except OSError:
        return None
    path = text.rstrip("\n")
    return Path(path) if path else None


class OtherMission(Exception):
    """The state dir holds another mission's witnesses (used with --force-mission only)."""

    def __init__(self, state_dir: Path, recorded: str, wanted: str) -> None:
        super().__init__(state_dir, recorded, wanted)
        self.state_dir, self.recorded, self.wanted = state_dir, recorded, wanted


def recorded_mission_name(state_dir: Path) -> str | None:
    """The mission name this state dir was used with: STATE/mission.name or, for state dirs
    made before it existed, the `name` in the mission file STATE/mission.path points to."""
    try:
        name = StateLayout(state_dir).mission_name.read_text(encoding="utf-8").strip()
        return name or None
    except (OSError, UnicodeDecodeError):
        pass
    path = remembered_mission(state_dir)
    if path is None:
        return None
    try:
        import tomllib

        with open(path, "rb") as f:
            found = tomllib.loads(f.read(2**20).decode("utf-8")).get("name")
    except (OSError, ValueError, RecursionError):  # moved, edited, truncated: no opinion
        return None
    return found if isinstance(found, str) and found else None


def check_mission(state_dir: Path, name: str, *, force: bool = False) -> None:
    """Refuse to use mission A's state dir for mission B: B would see every witness of A as
    "outside the plan", and commit its own beside them. `force` adopts the dir for B."""
    recorded = recorded_mission_name(state_dir)
    if recorded is not None and recorded != name and not force:
        raise OtherMission(state_dir, recorded, name)


def remember_mission_name(state_dir: Path, name: str) -> None:
    replace_text_if_changed(StateLayout(state_dir).mission_name, name + "\n")


def remember_s3(state_dir: Path, endpoint_url: str | None) -> None:
    """Keep the endpoint given on the command line, so that later commands on this state dir
    (`sync`, `log`, `fsck`, a remount) reach the same server without the flag."""
    if not endpoint_url:
        return
    text = json.dumps({"endpoint_url": endpoint_url}) + "\n"
    replace_text_if_changed(StateLayout(state_dir).s3_options, text)


def s3_endpoint(state_dir: Path, given: str | None) -> str | None:
    """The endpoint URL to use: the one given, else the one the state dir remembers."""
    if given:
        return given
    try:
        value = json.loads(StateLayout(state_dir).s3_options.read_text(encoding="utf-8")).get(
            "endpoint_url"
        )
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding this state dir, or None if no daemon runs on it."""
    try:
        lock_state_dir(state_dir).close()
    except StateDirBusy as busy:
        return busy.pid or -1
    return None


def with_bucket_intent(
    mission: Mission, s3: S3Store, state_dir: Path, *, contact: bool = True
) -> Mission:
    """Unite the bucket's intent/ tree; use the last copy seen when S3 is unreachable or must
    not be contacted (local commands)."""
    from fusefs.model.errors import S3NoCredentials, S3Unavailable

    cache = StateLayout(state_dir).intent_cache
    rels: list[str] | None = None
    if contact:
        try:
            rels = s3.intent_rels()
            cache.parent.mkdir(parents=True, exist_ok=True)
            replace_text(cache, "".join(r + "\n" for r in rels))
        except (S3Unavailable, S3NoCredentials) as e:
            log.warning("bucket intent/ not listed (%s); using the last copy seen", e)
    if rels is None:
        rels = cache.read_text(encoding="utf-8").splitlines() if cache.exists() else []
    return extend_intent(mission, rels, f"{s3.url}/{mission.name}/intent/")


def open_workspace(
    mission: Mission,
    state_dir: Path,
    *,
    lease: float = 900.0,
    sync: SyncOptions | None = None,
    lock: bool = True,
    progress: Callable[[int], None] | None = None,
    contact_s3: bool = True,
    durability: str = "strict",
) -> Workspace:
    """Open the state dir for `mission`; S3 errors that need the user raise S3ConfigError.

    contact_s3=False (read-only local commands): no request to S3 and no credentials needed;
    the bucket's intent comes from the copy kept at the last contact. `sync.objects` (the
    in-process test tier and the simulator): the object store behind the mission's `[store] s3`
    instead of S3. `durability`: "strict" (every commit fsyncs its directory) or "batched" (the
    daemon groups directory fsyncs).

    Every service gets what it uses in its constructor, in dependency order: the fact sets,
        then the sync engine (which subscribes to new local witnesses), the digest, the status
        board (which shows both) and last the committer."""
    lock_file = lock_state_dir(state_dir) if lock else None
    try:
        store = LocalStore(state_dir)
        store.prepare()
        if lock:
            remember_mission(state_dir, mission.path)
            remember_mission_name(state_dir, mission.name)
        opts = sync or SyncOptions()
        s3: S3Store | None = None
        if mission.s3:
            from fusefs.objects.s3store import S3Store

            if lock:
                remember_s3(state_dir, opts.endpoint_url)
            endpoint = s3_endpoint(state_dir, opts.endpoint_url)
            s3 = S3Store(
                mission.s3, mission.name, endpoint, pool=opts.uploaders + 8, objects=opts.objects
            )
            mission = with_bucket_intent(mission, s3, state_dir, contact=contact_s3)
        index = FactIndex(store.index_dir, mission.space)
        local = index.load()
        outside: list[str] = []
        from_index = local is not None
        if local is None:
            local, outside = walk_facts(store.scan_tiles(), mission.space, progress)
            index.snapshot(local, index.rotate())
        state = MissionState(mission.space, mission.intent, local.copy())
        wid = worker_id(state_dir, opts.worker)
        journal = Journal(store.layout.journal, wid)
        facts = Facts(state, local, index, journal)
        engine, digest = _sync_and_digest(
            mission, store, state, facts, journal, s3, wid, opts, lease
        )
        status = StatusBoard(
            mission.name,
            state,
            str(state_dir),
            lease,
            journal=journal,
            outside_plan=len(outside),
            sync_info=engine.info if engine is not None else None,
            digest_info=digest.info,
            durability=durability,
        )
        committer = Committer(state, store, status, facts, journal, batched=durability == "batched")
        status.fsync_mode = committer.fsyncer.describe
    except BaseException:
        if lock_file is not None:
            lock_file.close()
        raise
    return Workspace(
        mission,
        store,
        index,
        state,
        status,
        facts,
        committer,
        engine,
        outside,
        from_index,
        lease,
        lock_file,
        digest,
    )


def _sync_and_digest(
    mission: Mission,
    store: LocalStore,
    state: MissionState,
    facts: Facts,
    journal: Journal,
    s3: S3Store | None,
    worker: str,
    opts: SyncOptions,
    lease: float,
) -> tuple[SyncEngine | None, DigestKeeper]:
    """The sync engine (with S3) and the Merkle digest keeper, sharing the hash cache: the
    engine hands it the hashes it reads in manifests."""
    from fusefs.engine.digest import DigestKeeper, HashCache

    cache = HashCache(store.layout.hash_cache)
    engine = None
    if s3 is not None:
        from fusefs.engine.sync import SyncEngine

        engine = SyncEngine(
            state,
            store,
            s3,
            facts,
            worker,
            journal=journal,
            on_remote_hashes=cache.put_remote,
            uploaders=opts.uploaders,
            refresh=opts.refresh,
            full_refresh=opts.full_refresh,
            claims=mission.claims,
            lease_seconds=lease,
            claim_timeout=opts.claim_timeout,
        )
    digest = DigestKeeper.for_workspace(state, store, s3, cache)  # Merkle root, incremental
    facts.subscribe_content(digest.given)  # a commit's hash: its witness is never read back
    return engine, digest
