# layer: cli
"""`mount.fuse.missionfs`: the mount(8) helper, so a mission mounts from /etc/fstab at boot.

mount(8) runs `/sbin/mount.fuse.missionfs SOURCE DIR [-s] [-f] [-n] [-v] [-o OPTIONS]` for
`mount -t fuse.missionfs SOURCE DIR -o OPTIONS` and for an fstab line of that type (the
`TYPE#SOURCE` form of mount.fuse3 runs the same command: `-t fuse`,
`mount.fuse.missionfs#/etc/missionfs/m.toml`). SOURCE is the MISSION.toml.

Every `missionfs mount` flag is a `-o` option: `--endpoint-url X` is `endpoint_url=X`
(`endpoint-url=X` too), `--allow-other` is `allow_other`, `--foreground` is `foreground` (what a
systemd unit uses). The flags are read from the `mount` command's own parser, so a new flag is
an option without a change here. The options mount(8), systemd and FUSE users put in fstab
(`defaults`, `rw`, `_netdev`, `nofail`, `noauto`, `x-systemd.*`, ...) are accepted and ignored;
`ro` is refused (workers must write). Two options exist only here, for boot-time mounts that
have no shell to set the environment: `env_file=PATH` (KEY=VALUE lines, e.g. AWS credentials)
and `aws_profile=NAME`.

An unknown or malformed option is one line and exit status 2, like the CLI; with `-s`
(sloppy) unknown options are ignored with a warning instead. `-f` (fake) prints the command and
mounts nothing; `-v` prints it and mounts; `-n` (no mtab) has nothing to skip.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROG = "mount.fuse.missionfs"
HELPER_DIR = Path("/usr/sbin")  # /sbin on merged-/usr systems (Debian 12): where mount(8) looks

# Accepted and ignored: generic mount(8) options, systemd's fstab options (x-*, also stripped
# by mount(8) itself), and FUSE options the daemon already sets (default_permissions with
# allow_other) or that do not apply to a FUSE filesystem started by root.
IGNORED = frozenset(
    [
        "defaults",
        "rw",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "dev",
        "nodev",
        "suid",
        "nosuid",
        "exec",
        "noexec",
        "async",
        "sync",
        "atime",
        "noatime",
        "relatime",
        "norelatime",
        "strictatime",
        "nodiratime",
        "diratime",
        "lazytime",
        "nolazytime",
        "_netdev",
        "netdev",
        "nofail",
        "loud",
        "silent",
        "default_permissions",
    ]
)
IGNORED_PREFIXES = ("x-", "X-", "comment=", "fsname=", "subtype=")
HELPER_ONLY = ("env_file", "aws_profile")


class OptionError(ValueError):
    """A wrong option: printed as one line, exit status 2."""


@dataclass
class Invocation:
    """What mount(8) asked for, translated into `missionfs mount` arguments."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    fake: bool = False
    verbose: bool = False


def _mount_parser() -> argparse.ArgumentParser:
    """The `missionfs mount` parser (its flags are our options)."""
    from fusefs.cli import _parser

    root = _parser()
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["mount"]
    raise RuntimeError("missionfs has no mount command")


def mount_flags() -> dict[str, argparse.Action]:
    """`-o` name (foo_bar) -> the action of `--foo-bar`, for every long mount flag."""
    flags: dict[str, argparse.Action] = {}
    for action in _mount_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                flags[opt[2:].replace("-", "_")] = action
    return flags


def split_options(text: str) -> list[str]:
    """Comma-separated options; a value may be double-quoted to hold commas (as libmount)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise OptionError(f"unbalanced quote in options {text!r}")
    out.append("".join(cur))
    return [o for o in (s.strip() for s in out) if o]


def translate(source: str, mountpoint: str, options: list[str], sloppy: bool) -> Invocation:
    """`-o` options -> `missionfs mount SOURCE DIR --flag value ...` (pure: no IO)."""
    flags = mount_flags()
    inv = Invocation(["mount", source, mountpoint])
    for opt in options:
        name, eq, value = opt.partition("=")
        key = name.replace("-", "_")
        if opt in IGNORED or name in IGNORED or opt.startswith(IGNORED_PREFIXES):
            inv.ignored.append(opt)
        elif opt == "ro":
            raise OptionError("option ro: a mission mount is read-write (workers commit to it)")
        elif key in HELPER_ONLY:
            if not eq or not value:
                raise OptionError(f"option {name} needs a value: {name}=...")
            inv.env[key] = value
        elif key in flags:
            action = flags[key]
            if action.nargs == 0:  # a boolean flag (store_true)
                if eq:
                    raise OptionError(f"option {name} takes no value (write just {name})")
                inv.argv.append(action.option_strings[-1])
            else:
                if not eq or value == "":
                    raise OptionError(f"option {name} needs a value: {name}=...")
                inv.argv += [action.option_strings[-1], value]
        elif sloppy:
            inv.ignored.append(opt)
            print(f"{PROG}: warning: ignoring unknown option {opt!r} (-s)", file=sys.stderr)
        else:
            known = ", ".join(sorted(flags))
            raise OptionError(f"unknown option {name!r} (missionfs options: {known})")
    return inv


def parse_command_line(argv: list[str]) -> Invocation:
    """`SOURCE DIR [-s] [-f] [-n] [-v] [-N NS] [-o OPTS] [-t TYPE]`, in any order (mount(8))."""
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = verbose = False
    it = iter(argv)
    for arg in it:
        if arg in ("-o", "-t", "-N"):
            value = next(it, None)
            if value is None:
                raise OptionError(f"{arg} needs an argument")
            if arg == "-o":
                options += split_options(value)
        elif arg.startswith("-o") and len(arg) > 2:
            options += split_options(arg[2:])
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvwri"):
            sloppy |= "s" in arg
            fake |= "f" in arg
            verbose |= "v" in arg
            if "r" in arg:
                raise OptionError("-r (read-only): a mission mount is read-write")
        elif arg.startswith("-") and arg != "-":
            raise OptionError(f"unknown flag {arg!r} (usage: {PROG} MISSION.toml DIR -o OPTIONS)")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise OptionError(f"usage: {PROG} MISSION.toml DIR [-o OPTIONS]")
    inv = translate(positional[0], positional[1], options, sloppy)
    inv.fake, inv.verbose = fake, verbose
    return inv


def _check_argv(argv: list[str]) -> None:
    """Let the mount parser check values (types, choices) now: its two-line usage error
    becomes our one line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            _mount_parser().parse_args(argv[1:])
        except SystemExit:
            msg = err.getvalue().strip().splitlines()
            detail = msg[-1].split("error: ", 1)[-1] if msg else "invalid options"
            raise OptionError(detail.replace("argument --", "option ")) from None


def load_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (systemd EnvironmentFile style: # comments, optional quotes)."""
    env: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise OptionError(f"option env_file={path}: {e.strerror}") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, eq, value = line.removeprefix("export ").partition("=")
        if not eq or not key.strip().isidentifier():
            raise OptionError(f"option env_file={path}: line {n} is not KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def main(argv: list[str] | None = None) -> int:
    """The helper: translate, check, then run `missionfs mount` in this process."""
    from fusefs.cli import main as cli_main

    args = sys.argv[1:] if argv is None else argv
    try:
        inv = parse_command_line(args)
        _check_argv(inv.argv)
        if "env_file" in inv.env:
            os.environ.update(load_env_file(inv.env["env_file"]))
        if "aws_profile" in inv.env:
            os.environ["AWS_PROFILE"] = inv.env["aws_profile"]
    except OptionError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if inv.fake or inv.verbose:
        print(f"{PROG}: missionfs {shlex.join(inv.argv)}", file=sys.stderr)
    if inv.fake:
        return 0
    return cli_main(inv.argv)


# -- `missionfs install-mount-helper` -------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install-mount-helper",
        help=f"link {PROG} into /usr/sbin so mount(8) and /etc/fstab can mount missions",
    )
    p.add_argument("--dir", type=Path, default=HELPER_DIR, help=f"where to link it ({HELPER_DIR})")
    p.add_argument(
        "--force", action="store_true", help="replace a file there that is not a symlink"
    )
    p.set_defaults(func=cmd_install)


def helper_script() -> Path:
    """This installation's console script (beside the Python running us: the venv's bin/)."""
    return Path(sys.executable).parent / PROG


def cmd_install(args: argparse.Namespace) -> int:
    from fusefs.cli.common import UserError

    src = helper_script()
    if not src.exists():
        raise UserError(f"{src} not found: reinstall missionfs (pip install -e .)")
    dest: Path = args.dir / PROG
    if dest.is_symlink() and Path(os.readlink(dest)) == src:
        print(f"missionfs: {dest} -> {src} (already)")
        return 0
    if dest.exists() and not dest.is_symlink() and not args.force:
        raise UserError(f"{dest} exists and is not a symlink; use --force to replace it")
    tmp = dest.with_name(f".{PROG}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(src)
        tmp.replace(dest)  # atomic: a concurrent mount(8) sees the old or the new helper
    except OSError as e:
        raise UserError(f"cannot link {dest}: {e.strerror} (run as root)") from None
    print(f"missionfs: {dest} -> {src}")
    return 0
