"""Output directory handling: resume detection before training, complete checkpoints during it,
and damage to them. `save.py` writes `best/` after it.

Trainer writes `checkpoint-N/` in place (no temporary directory and rename): weights, optimizer,
scheduler, one RNG file per process, and `trainer_state.json` last, from the main process only.
A kill in the middle leaves a directory that looks like a checkpoint but is not one. So a
checkpoint counts as complete only once `CheckpointCompleteCallback` has written
`COMPLETE_MARKER` into it, after every process finished its part; resume picks the newest
complete one and deletes the incomplete ones, which the resumed run would otherwise write over.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from accelerate import PartialState
from transformers import TrainerCallback

from .artifacts import CHECKPOINT_PREFIX, COMPLETE_MARKER, TRAINER_STATE_FILENAME
from .config import SFTConfig
from .errors import UserError

log = logging.getLogger("sft_recipe")
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


def prepare_output_dir(config: SFTConfig, args) -> str | None:
    """Make sure `output_dir` is writable; return the checkpoint to resume from, if any.

    Re-running a recipe with the same `output_dir` resumes from its last *complete* checkpoint;
    `overwrite_output_dir: true` deletes old checkpoints and starts fresh.
    """
    out = Path(config.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"{out}: output_dir is not writable ({exc.strerror or exc})") from None
    main = args.process_index == 0
    if config.overwrite_output_dir:
        if main:
            for checkpoint in checkpoint_dirs(out):
                shutil.rmtree(checkpoint, ignore_errors=True)
        return None
    checkpoint = last_complete_checkpoint(out)
    if main:
        for partial in checkpoint_dirs(out):
            if not is_complete(partial):
                log.warning("removing incomplete checkpoint %s (its save never finished)", partial)
                shutil.rmtree(partial, ignore_errors=True)
        if checkpoint is not None:
            log.warning("resuming from %s (pass --overwrite_output_dir true to start fresh)", checkpoint)
    return str(checkpoint) if checkpoint else None


def checkpoint_dirs(out: Path) -> list[Path]:
    """`checkpoint-N` directories in `out`, oldest step first."""
    found = [(int(m.group(1)), p) for p in out.glob(f"{CHECKPOINT_PREFIX}*")
             if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file() and (checkpoint / TRAINER_STATE_FILENAME).is_file()


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest `checkpoint-N` whose save finished on every process (see the module docstring)."""
    complete = [p for p in checkpoint_dirs(out) if is_complete(p)]
    return complete[-1] if complete else None


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every process has written its share of it.

    `on_save` runs right after `Trainer._save_checkpoint`; the barrier waits for the other ranks'
    RNG states and optimizer shards, then the main process writes the marker (via a rename, so
    the marker itself is never half-written).
    """

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"step {state.global_step}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, checkpoint / COMPLETE_MARKER)
        return control


@contextlib.contextmanager
def disk_errors(config: SFTConfig) -> Iterator[None]:
    """Turn a full disk (or a directory that became read-only) while saving into one clear line.

    The checkpoint being written has no completion marker, so a later run never resumes from it.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        last = last_complete_checkpoint(Path(config.output_dir))
        resume = f"re-running resumes from {last}" if last else "no complete checkpoint was written yet"
        raise UserError(
            f"{config.output_dir}: cannot write ({exc.strerror or exc}) while saving; free space or fix "
            f"permissions, then re-run the same command ({resume})"
        ) from None
