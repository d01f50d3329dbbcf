"""A streamed run's data position in every checkpoint, and back at resume.

`torchdata`'s stateful loader is not a dependency, so each process writes its own `TokenStream`
position (`state_at`: the `datasets` stream's `state_dict()` after the last row training consumed,
plus text tokens carried into the next block) to `checkpoint-N/stream_state_<rank>.json`, before
the checkpoint is marked complete. At resume each process loads its file and the Trainer is told
not to skip batches (`ignore_data_skip`): the stream continues where it stood, it is not replayed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import TrainerCallback

from .layout import CHECKPOINT_PREFIX, STREAM_STATE_FILENAME, write_atomically
from ..errors import UserError


def consumed_items(global_step: int, args) -> int:
    """Items this process's training has taken from its stream after `global_step` optimizer steps."""
    return global_step * args.gradient_accumulation_steps * args.per_device_train_batch_size


class StreamStateCallback(TrainerCallback):
    """Writes this process's stream position into each checkpoint (listed before the completion marker)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def on_save(self, args, state, control, **kwargs):
        rank, world = PartialState().process_index, PartialState().num_processes
        position = self.stream.state_at(consumed_items(state.global_step, args))
        path = Path(args.output_dir, f"{CHECKPOINT_PREFIX}{state.global_step}", STREAM_STATE_FILENAME.format(rank=rank))
        write_atomically(path, json.dumps({"processes": world, **position}), durable=True)
        return control


def restore_stream(stream: Any, checkpoint: str, args) -> None:
    """Put `stream` at the position saved in `checkpoint` for this process; one line if it cannot be."""
    rank, world = PartialState().process_index, PartialState().num_processes
    path = Path(checkpoint) / STREAM_STATE_FILENAME.format(rank=rank)
    try:
        position = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot resume the stream ({exc.__class__.__name__}); the checkpoint was not "
                        "written by a streaming run, or is damaged: pass --overwrite_output_dir true") from None
    if position.get("processes") != world:
        raise UserError(f"{checkpoint}: written by {position.get('processes')} processes, resumed with {world}: "
                        "each process streams its own share of the rows, so resume with the same number")
    expected = consumed_items(int(Path(checkpoint).name.removeprefix(CHECKPOINT_PREFIX)), args)
    if int(position.get("items", -1)) != expected:
        raise UserError(f"{path}: the stream position is for item {position.get('items')}, the checkpoint's step "
                        f"needs {expected} (batch size or accumulation changed?)")
    stream.load_state(position)
