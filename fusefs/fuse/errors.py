"""The FUSEError of a refusal, with its reason logged (said once, then counted: ratelog.py)."""

from __future__ import annotations

import errno
import logging

import pyfuse3

from fusefs.statedir.ratelog import log_coalesced

log = logging.getLogger("missionfs")


def fuse_error(code: int, message: str | None = None) -> pyfuse3.FUSEError:
    if message:  # a retry loop repeats it: said once, then counted (ratelog.py)
        log_coalesced(log, logging.WARNING, f"{message} ({errno.errorcode.get(code, code)})")
    return pyfuse3.FUSEError(code)
