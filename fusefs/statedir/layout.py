"""Every path under a state dir (STATE), in one place: no other module joins names to STATE.

Why: the state dir is read by more processes than the daemon (status, pending, digest, fsck,
log, umount's recovery), so its names are a file format; keeping them here makes the format one
list that can be read, tested ("a mount creates nothing this module does not name") and changed
in one place.

    STATE/
      scraped-tiles/{lat}/{lon}/{phrase}.csv  the Fact tree: witness files only (store.py;
                                 written by commits, S3 fetches and conflict resolution)
      tmp/                       the mount's tmp/ (Maildir-style scratch, the workers')
      staging/                   direct writes to done/ until they are committed; fetches in
                                 flight (`fetch.*`) (store.py)
      rejected/                  refused direct writes with a `.why` note (store.py, fsck)
      quarantine/                witnesses fsck --repair moved aside, with `.why` notes (fsck)
      conflicts/                 our witness after a lost race, `{rel}.{worker}.csv` (store.py)
      index/                     start-up index: facts/remote/synced `.roaring` + `-{g}.log` (+
                                 `.sizes`) (index.py, written by the daemon, fsck --repair)
      index/hashes.sqlite        content-hash cache of the Merkle digest (engine/digest.py)
      index/intent-s3.txt        last listing of the bucket's intent/ tree (engine/workspace.py)
      index/fact-log.json        the fact log's cursor, manifest sequence and unpublished lines
                                 (engine/factlog.py, protocol v2)
      journal/                   append-only history, one JSONL file per day (journal.py)
      claims.log                 live claims, restored at the next mount (claimlog.py)
      daemon.lock                flock held by the daemon (or fsck, sync) with its pid
      worker-id                  this state dir's worker name in the fleet (journal.py)
      mission.path               where the mission file was when last used (workspace.py)
      mission.name               whose witnesses these are (workspace.py)
      s3.json                    the S3 endpoint given at mount or sync (workspace.py)
      mount.json                 the running daemon's FUSE connection, for kill -9 recovery
                                 (fuse/fuseconn.py)
      missionfs.log              the daemon's log, rotated (.1, .2, ...) (cli/mount.py)
      daemon.err                 stderr of a background daemon (cli/mount.py)
      sync-result.json           the daemon's answer to `missionfs sync` (fuse/daemon.py)
      fleet-manifests.json       `missionfs fleet`'s per-worker counts (engine/fleetview.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WITNESS_DIR = "scraped-tiles"
CLAIMS_FILE = "claims.log"
MISSION_FILE = "mission.path"
MISSION_NAME = "mission.name"
S3_FILE = "s3.json"
MOUNT_RECORD = "mount.json"
SYNC_RESULT = "sync-result.json"
FLEET_CACHE = "fleet-manifests.json"
LOG_FILE = "missionfs.log"
HASH_DB = "hashes.sqlite"
INTENT_CACHE = "intent-s3.txt"


@dataclass(frozen=True)
class StateLayout:
    """The paths of one state dir (see the module docstring for who writes what)."""

    root: Path

    # -- directories --------------------------------------------------------------------------
    @property
    def tiles(self) -> Path:
        return self.root / WITNESS_DIR

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def conflicts(self) -> Path:
        return self.root / "conflicts"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    # -- files in index/ (besides the FactIndex sets, named by index.py) ----------------------
    @property
    def hash_cache(self) -> Path:
        return self.index / HASH_DB

    @property
    def intent_cache(self) -> Path:
        return self.index / INTENT_CACHE

    @property
    def fact_log(self) -> Path:
        return self.index / "fact-log.json"

    # -- files at the top ---------------------------------------------------------------------
    @property
    def claims_log(self) -> Path:
        return self.root / CLAIMS_FILE

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def worker_id(self) -> Path:
        return self.root / "worker-id"

    @property
    def mission_path(self) -> Path:
        return self.root / MISSION_FILE

    @property
    def mission_name(self) -> Path:
        return self.root / MISSION_NAME

    @property
    def s3_options(self) -> Path:
        return self.root / S3_FILE

    @property
    def mount_record(self) -> Path:
        return self.root / MOUNT_RECORD

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def daemon_err(self) -> Path:
        return self.root / "daemon.err"

    @property
    def sync_result(self) -> Path:
        return self.root / SYNC_RESULT

    @property
    def fleet_cache(self) -> Path:
        return self.root / FLEET_CACHE

    def dirs(self) -> tuple[Path, ...]:
        """The directories a state dir always has (made by LocalStore.prepare)."""
        return (self.root, self.tiles, self.tmp, self.staging, self.rejected, self.index)

    def names(self) -> set[str]:
        """Every top-level name this layout defines (tests: a mount creates nothing else)."""
        paths = [
            getattr(self, p)
            for p in dir(type(self))
            if isinstance(getattr(type(self), p), property)
        ]
        return {p.relative_to(self.root).parts[0] for p in paths}
