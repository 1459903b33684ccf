"""Fixtures that start real daemons on real FUSE mounts and always clean them up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.mounts import Mount, write_mission
from tests.support.s3_servers import MotoServer, SeaweedServer
from tests.support.scraper_util import OverpassStub, overpass_stub


@pytest.fixture
def mission(tmp_path: Path) -> Path:
    return write_mission(tmp_path / "mission.toml")


@pytest.fixture
def make_mount(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []

    def make(
        mission: Path,
        name: str = "m",
        args: tuple[str, ...] = (),
        start: bool = True,
        env: dict[str, str] | None = None,
    ) -> Mount:
        m = Mount(
            mission, tmp_path / f"{name}.mnt", tmp_path / f"{name}.state", args=list(args), env=env
        )
        mounts.append(m)
        if start:
            m.start()
        return m

    yield make
    for m in mounts:
        m.cleanup()


@pytest.fixture
def mount(make_mount: Callable[..., Mount], mission: Path) -> Mount:
    return make_mount(mission)


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def stub() -> Iterator[OverpassStub]:
    """A local Overpass server on 127.0.0.1 serving recorded answers (scraper tests)."""
    with overpass_stub() as s:
        yield s
