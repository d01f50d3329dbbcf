"""Checks on user-given paths, done before any compute: a missing local path says "not found"
(not the hub's "Repo id must be in the form ..."), and an output that cannot be written fails
before the work that would have filled it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..errors import UserError

# A hub id is `name` or `namespace/name` of letters, digits, `-`, `_`, `.` (huggingface_hub's rule).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def check_local_or_hub(name: str, what: str) -> None:
    """`name` must be an existing local path or something that can be a hub id."""
    if not name:
        raise UserError(f"{what} is empty; give a hub id or a local directory")
    path = Path(name).expanduser()
    if path.exists():
        return
    if name.startswith((".", "/", "~")) or not HUB_ID_RE.match(name) or name.count("/") > 1:
        raise UserError(f"{name}: cannot load {what} (not found: no such local path, and not a hub id)")


def writable_dir(path: str | Path, what: str) -> Path:
    """Create `path` if needed and prove it takes files; one line naming it otherwise."""
    if not str(path).strip():
        raise UserError(f"{what} is empty; give a directory")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: {what} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{path}: {what} is not writable ({exc.strerror or exc})") from None
    return path


def writable_file(path: str | Path, what: str) -> Path:
    """A file path whose directory exists (or can be made) and takes files, and that is no directory."""
    if not str(path).strip():
        raise UserError(f"{what} is empty; give a file path")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: {what} is a directory, not a file")
    writable_dir(path.parent, f"the directory of {what}")
    return path
