"""missionfs: a scraping mission mounted as a filesystem (pending = intent - fact, no
coordinator). One module per command in this package; this one parses, dispatches, and turns
every refusal into one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from fusefs.cli.common import UserError, closed_pipe
from fusefs.model.mission import MissionError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    umask = getattr(args, "umask", None)
    # Before any state file is made (the spawned daemon gets it too); given back on return, so
    # an in-process caller (tests, benchmarks) keeps its own umask for what it creates later.
    previous = os.umask(umask) if umask is not None else None
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's exit
        return status
    except (UserError, MissionError) as e:
        print(f"missionfs: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `missionfs log M | head -1`: the reader has all it wanted
        return closed_pipe()
    finally:
        if previous is not None:
            os.umask(previous)


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are refusals like any other: one line (`missionfs CMD: ...; see
    missionfs CMD --help`) and exit status 2, not argparse's usage block. Subcommand parsers
    inherit the class (argparse makes them with the parent's type)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    from fusefs.cli import digest, fleet, fsck, mount, mounthelper, status, sync, watch
    from fusefs.cli import log as log_cmd
    from fusefs.cli import map as map_cmd

    p = OneLineParser(
        prog="missionfs",
        description="A scraping mission mounted as a filesystem: pending = intent - fact.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    mount.add_parser(sub)
    s = status.add_parser(sub)
    watch.add_options(s)
    sync.add_parser(sub)
    log_cmd.add_parser(sub)
    digest.add_commands(sub)
    fsck.add_commands(sub)
    map_cmd.add_parser(sub)
    fleet.add_parser(sub)
    mounthelper.add_parser(sub)
    return p
