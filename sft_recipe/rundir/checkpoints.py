"""Output directory handling: resume detection before training, complete checkpoints during it,
and damage to them. `best.py` writes `best/` after it.

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
import json
import logging
import re
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

from accelerate import PartialState
from transformers import TrainerCallback

from .layout import (CHECKPOINT_PREFIX, COMPLETE_MARKER, FINISHED_FILENAME, TRAINER_STATE_FILENAME, save_recipe,
                     write_atomically)
from ..recipe.config import SFTConfig
from ..errors import UserError, one_line
from .paths import writable_dir

log = logging.getLogger("sft_recipe")
CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO}


def prepare_output_dir(config: SFTConfig, args) -> str | None:
    """Make sure `output_dir` is writable; return the checkpoint to resume from, if any.

    Re-running a recipe with the same `output_dir` resumes from its last *complete* checkpoint;
    `overwrite_output_dir: true` deletes old checkpoints and starts fresh.
    """
    out = writable_dir(config.output_dir, "output_dir")
    main = args.process_index == 0
    if config.overwrite_output_dir:
        if main:
            for checkpoint in checkpoint_dirs(out):
                shutil.rmtree(checkpoint, ignore_errors=True)
            (out / FINISHED_FILENAME).unlink(missing_ok=True)
        return None
    checkpoint = usable_checkpoint(out, main)
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


def usable_checkpoint(out: Path, main: bool) -> Path | None:
    """The newest complete checkpoint whose files read back; damaged newer ones are moved aside
    (`damaged-checkpoint-N`, so no later save mixes with them) with one line each."""
    complete = [p for p in checkpoint_dirs(out) if is_complete(p)]
    problems = []
    for checkpoint in reversed(complete):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        problems.append(f"{checkpoint.name}: {problem}")
        if main:
            aside = checkpoint.with_name(f"damaged-{checkpoint.name}")
            shutil.rmtree(aside, ignore_errors=True)
            checkpoint.rename(aside)
            log.warning("skipping %s: %s; moved it to %s", checkpoint, problem, aside)
    if problems:
        raise UserError(f"{out}: no usable checkpoint to resume from ({'; '.join(problems)}); pass "
                        "--overwrite_output_dir true to start over")
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a truncated or garbled file), or None. Cheap: reads
    headers and zip directories only, never the tensors."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE_FILENAME).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            return f"{TRAINER_STATE_FILENAME} has no global_step"
    except (OSError, ValueError) as exc:
        return f"{TRAINER_STATE_FILENAME} is unreadable ({one_line(exc)})"
    for file in sorted(checkpoint.iterdir()):
        suffix = file.suffix.lower()
        try:
            if suffix == ".safetensors":
                with open(file, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    if size + 8 > file.stat().st_size:
                        return f"{file.name} is truncated"
                    header = json.loads(f.read(size))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                if file.stat().st_size != 8 + size + max(ends, default=0):
                    return f"{file.name} is truncated"
            elif suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(file).close()
        except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
            return f"{file.name} is unreadable (truncated or corrupt)"
    return None


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every process has written its share of it.

    `on_save` runs right after `Trainer._save_checkpoint`; the barrier waits for the other ranks'
    RNG states and optimizer shards, then the main process writes the resolved recipe (so that
    a checkpoint is self-describing: resume checks it, `generate` uses its prompt template) and
    the marker (via a rename, so the marker itself is never half-written).
    """

    def __init__(self, config: SFTConfig | None = None) -> None:
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if self.config is not None:
                with saving(checkpoint, self.config):
                    save_recipe(self.config, checkpoint)
            write_atomically(checkpoint / COMPLETE_MARKER, f"step {state.global_step}\n", durable=True)
        return control


@contextlib.contextmanager
def saving(path: str | Path, config: SFTConfig) -> Iterator[None]:
    """Any failure while writing `path` (torch.save's RuntimeError, safetensors' errors, OSError ...)
    is one line naming the path: the save cannot be trusted, and the checkpoint it belonged to
    never gets its completion marker, so resume never picks it."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise UserError(f"{path}: saving failed ({reason}); free space or fix permissions, then re-run the "
                        f"same command ({resume_hint(config)})") from None


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
        raise UserError(f"{config.output_dir}: cannot write ({exc.strerror or exc}) while saving; free space or fix "
                        f"permissions, then re-run the same command ({resume_hint(config)})") from None


def resume_hint(config: SFTConfig) -> str:
    last = last_complete_checkpoint(Path(config.output_dir))
    return f"re-running resumes from {last}" if last else "no complete checkpoint was written yet"
