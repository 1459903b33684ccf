"""Placeholder: `missionfs fsck` is being written (issue 8)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    """Register this module's subcommands on the `missionfs` argument parser."""
    del sub
    _ = argparse
