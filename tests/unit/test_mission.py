"""Mission files: exact grids, intent trees, and one clear line for every bad file."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from fusefs.model.mission import MissionError, load_mission
from tests.support.mounts import MISSIONFS, ROOT, write_mission


def test_demo_grid(tmp_path: Path) -> None:
    m = load_mission(write_mission(tmp_path / "m.toml"))
    assert m.name == "test-mission"
    assert (m.space.lat.n, m.space.lon.n, m.space.nphr) == (3, 4, 2)
    assert len(m.intent) == 24
    rels = sorted(m.space.rel(t) for t in m.intent)
    assert rels[0] == "40.70/-73.98/coffee shop.csv" or rels[0].startswith("40.70/")
    assert {r.split("/")[1] for r in rels} == {"-74.02", "-74.01", "-74.00", "-73.99"}


def test_no_float_drift_on_ten_million_tiles(tmp_path: Path) -> None:
    # 3163 x 3163 tiles of 0.001 degrees: float accumulation would drift in the last digit.
    m = load_mission(
        write_mission(
            tmp_path / "m.toml",
            south="-1.581",
            west="-1.581",
            north="1.582",
            east="1.582",
            step="0.001",
            phrases=("x",),
        )
    )
    assert m.space.lat.n == 3163 and m.space.lon.n == 3163
    assert len(m.intent) == 3163 * 3163
    names = [m.space.lat.name(i) for i in range(m.space.lat.n)]
    assert names[0] == "-1.581" and names[-1] == "1.581"
    assert "0.000" in names and "-0.000" not in names
    assert all(len(n.split(".")[1]) == 3 for n in names)


def test_partial_last_tile_is_included(tmp_path: Path) -> None:
    m = load_mission(
        write_mission(
            tmp_path / "m.toml",
            south="0",
            west="0",
            north="0.25",
            east="0.1",
            step="0.1",
            phrases=("a",),
        )
    )
    assert [m.space.lat.name(i) for i in range(m.space.lat.n)] == ["0.0", "0.1", "0.2"]


def test_intent_tree_is_united_with_the_grid(tmp_path: Path) -> None:
    tree = tmp_path / "intent"
    (tree / "40.75" / "-74.02").mkdir(parents=True)
    (tree / "40.75" / "-74.02" / "tea room.csv").touch()
    (tree / "40.70" / "-74.02").mkdir(parents=True)
    (tree / "40.70" / "-74.02" / "plumber.csv").touch()
    m = load_mission(write_mission(tmp_path / "m.toml", extra='[intent]\ndir = "intent"\n'))
    assert m.space.phrases == ("coffee shop", "plumber", "tea room")
    rels = {m.space.rel(t) for t in m.intent}
    assert "40.75/-74.02/tea room.csv" in rels
    assert "40.75/-74.02/plumber.csv" not in rels  # only what the tree names
    assert "40.74/-74.02/plumber.csv" not in rels  # the gap row is in the universe, not the intent
    assert len(rels) == 24 + 1


def test_intent_tree_alone(tmp_path: Path) -> None:
    tree = tmp_path / "intent"
    (tree / "1.5" / "2.0").mkdir(parents=True)
    (tree / "1.5" / "2.0" / "a%2Fb.csv").touch()
    p = tmp_path / "m.toml"
    p.write_text('name = "t"\n[intent]\ndir = "intent"\nstep = 0.5\n')
    m = load_mission(p)
    assert [m.space.rel(t) for t in m.intent] == ["1.5/2.0/a%2Fb.csv"]
    assert m.space.phrases == ("a/b",)


BAD = [
    ("name = 3\n", "name = 3: must be a string"),
    ('name = "Bad Name"\n', "name = 'Bad Name': must match"),
    ('name = "x"\n', "a mission needs a [grid] table"),
    ('name = "x"\ncolour = 1\n', "colour = 1: unknown key"),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0\nphrases = ["a"]\n',
        "grid.step = 0: must be positive",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = -0.5\nphrases = ["a"]\n',
        "grid.step = -0.5: must be positive",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1.005\nwest = 1\nnorth = 2\neast = 2\nstep = 0.01\nphrases = ["a"]\n',
        "grid.south = 1.005: has more decimals than step",
    ),
    (
        'name = "x"\n[grid]\nsouth = 2\nwest = 1\nnorth = 1\neast = 2\nstep = 0.5\nphrases = ["a"]\n',
        "grid.south = 2: need -90 <= south < north <= 90",
    ),
    (
        'name = "x"\n[grid]\nsouth = 80\nwest = 1\nnorth = 91\neast = 2\nstep = 0.5\nphrases = ["a"]\n',
        "need -90 <= south < north <= 90",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 170\nnorth = 2\neast = 181\nstep = 0.5\nphrases = ["a"]\n',
        "grid.west = 170: need -180 <= west < east <= 180",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\n',
        "grid.phrases = (missing): required",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = []\n',
        "grid.phrases = []: must be a non-empty list",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = ["a", "a"]\n',
        "grid.phrases = 'a': listed twice",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = [" "]\n',
        "each phrase must be a non-empty string",
    ),
    (
        'name = "x"\n[grid]\nsouth = "1"\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = ["a"]\n',
        "grid.south = '1': must be a number",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = ["a"]\n'
        "stpe = 1\n",
        "grid.stpe = 1: unknown key",
    ),
    (
        'name = "x"\n[grid]\nsouth = 1\nwest = 1\nnorth = 2\neast = 2\nstep = 0.5\nphrases = ["a"]\n'
        '[store]\ns3 = "http://x"\n',
        "store.s3 = 'http://x': must look like s3://bucket",
    ),
    (
        'name = "x"\n[grid]\nsouth = -90\nwest = -180\nnorth = 90\neast = 180\nstep = 0.001\n'
        'phrases = ["a"]\n',
        "tasks is more than the supported",
    ),
    ('name = "x"\n[grid\n', "not valid TOML"),
    (
        'name = "x"\n[intent]\ndir = "nowhere"\nstep = 1\n',
        "intent.dir = 'nowhere': is not a directory",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_mission_files_are_refused_with_key_value_and_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(MissionError) as e:
        load_mission(p)
    msg = str(e.value)
    assert message in msg
    assert msg.startswith(str(p))
    assert "\n" not in msg


def test_bad_intent_tree_entries(tmp_path: Path) -> None:
    tree = tmp_path / "intent"
    (tree / "40.755" / "-74.02").mkdir(parents=True)
    p = write_mission(tmp_path / "m.toml", extra='[intent]\ndir = "intent"\n')
    with pytest.raises(MissionError, match=r"40\.755 is not a directory named with 2 decimals"):
        load_mission(p)
    (tree / "40.755" / "-74.02").rmdir()
    (tree / "40.755").rmdir()
    (tree / "40.70" / "-74.02").mkdir(parents=True)
    (tree / "40.70" / "-74.02" / "notes.txt").touch()
    with pytest.raises(MissionError, match=r"notes\.txt is not a PHRASE\.csv marker file"):
        load_mission(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissionError, match="no such mission file"):
        load_mission(tmp_path / "nope.toml")


GRID = 'name = "x"\n[grid]\nsouth = 40\nwest = -74\nnorth = 41\neast = -73\nphrases = ["a"]\n'
HOSTILE = {
    "deep-array": 'name = "x"\nx = ' + "[" * 5000 + "]" * 5000 + "\n",
    "deep-table": 'name = "x"\nx = ' + "{a = " * 5000 + "1" + "}" * 5000 + "\n",
    "step-1e99999999": GRID + "step = 1e99999999\n",
    "step-minus-1e99999999": GRID + "step = -1e99999999\n",
    "step-1e-99999999": GRID + "step = 1e-99999999\n",
    "step-nan": GRID + "step = nan\n",
    "step-inf": GRID + "step = inf\n",
    "south-1e99999999": GRID.replace("south = 40", "south = 1e99999999") + "step = 1\n",
    "int-5000-digits": GRID + "step = 1" + "0" * 5000 + "\n",
    "huge-grid": GRID.replace("south = 40", "south = -90")
    .replace("north = 41", "north = 90")
    .replace("west = -74", "west = -180")
    .replace("east = -73", "east = 180")
    + "step = 0.000000001\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_mission_files_are_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    """Whatever the file holds, the command answers within seconds with `missionfs: FILE: ...`
    on one line and status 2: never a traceback, never a hang building giant numbers."""
    p = tmp_path / f"{name}.toml"
    p.write_text(HOSTILE[name])
    _refused_in_one_line(p, tmp_path)


def test_a_huge_mission_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """A 4 GiB (sparse) file under a 1 GiB address-space limit: only its first 16 MiB are read."""
    p = tmp_path / "huge.toml"
    with open(p, "wb") as f:
        f.write(b'name = "x"\n# ')
        f.truncate(4 * 2**30)
    err = _refused_in_one_line(p, tmp_path, limit_bytes=2**30)
    assert "larger than 16 MiB" in err


def _refused_in_one_line(p: Path, tmp_path: Path, limit_bytes: int | None = None) -> str:
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    res = subprocess.run(
        [*MISSIONFS, "pending", str(p), "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=limit,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stdout == ""
    assert res.stderr.startswith(f"missionfs: {p}: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr
