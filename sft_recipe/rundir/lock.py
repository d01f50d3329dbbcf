"""A run owns its output_dir: `output_dir/.sft_recipe.lock` names the holder (host, pid, start time).

Two runs on one directory would resume from each other's checkpoints and overwrite each other's
`best/`, so the second one stops with one line naming the holder. The lock is created atomically
(written to a private file, then hard-linked to the lock name, which fails if it exists; O_EXCL
where links are not supported), so nobody ever reads a half-written one.

A lock left by a process that died (SIGKILL, power loss) on *this* host is taken over, with a log
line; a process counts as alive only if its pid exists with the same start time (pids are
reused). A lock from another host cannot be checked from here: the run refuses and the message
says to delete the file once that run is known to be dead. Under a multi-process launch only the
main process locks (the others never touch output_dir on their own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from .layout import LOCK_FILENAME
from ..errors import UserError

log = logging.getLogger("sft_recipe")


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot, Linux), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


def holder_text(info: dict[str, Any]) -> str:
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started', 'at an unknown time')}"


def read_lock(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists (atomically); True if we created it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def acquire(output_dir: str | Path) -> dict[str, Any]:
    """Take the lock of `output_dir` or raise a UserError naming its holder."""
    path = Path(output_dir) / LOCK_FILENAME
    me = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    for _ in range(3):
        if _create(path, json.dumps(me)):
            return me
        info = read_lock(path)
        if info is None:  # released meanwhile
            continue
        if info.get("host") == me["host"] and isinstance(info.get("pid"), int) and \
                not is_alive(info["pid"], info.get("start")):
            stale = path.with_name(f"{path.name}.stale.{os.getpid()}")
            try:
                os.replace(path, stale)  # one taker wins; the others find no lock or a new one
            except FileNotFoundError:
                continue
            if read_lock(stale) != info:  # another taker won and locked meanwhile: give its lock back
                with contextlib.suppress(OSError):
                    os.link(stale, path)
                stale.unlink(missing_ok=True)
                continue
            stale.unlink(missing_ok=True)
            log.warning("%s: taking over the lock of a run that is no longer alive (%s)", output_dir, holder_text(info))
            continue
        if not info:
            raise UserError(f"{path}: unreadable lock file; another run may be using {output_dir}; delete "
                            "the file if none is")
        raise UserError(f"{output_dir} is in use by another run ({holder_text(info)}); wait for it, use another "
                        f"output_dir, or delete {path} if that run is dead")
    raise UserError(f"{path}: could not take the lock of {output_dir}; try again")


def release(output_dir: str | Path, me: dict[str, Any]) -> None:
    """Remove the lock if it is still ours."""
    path = Path(output_dir) / LOCK_FILENAME
    info = read_lock(path)
    if info and info.get("pid") == me["pid"] and info.get("host") == me["host"]:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path, main_process: bool = True) -> Iterator[None]:
    """Hold the lock of `output_dir` for the duration (main process only)."""
    if not main_process:
        yield
        return
    me = acquire(output_dir)
    try:
        yield
    finally:
        release(output_dir, me)
