"""The masking rules for prompt/completion rows, as plain functions on token ids.

Rules (each has a golden test in tests/test_mask.py):
1. Prompt and completion are tokenized *separately* and concatenated, so the boundary never
   drifts: the ids the model is trained on are exactly the ids it will see at generation time
   (prompt alone), followed by the completion.
2. EOS is appended to every completion and is trained, even when pad == eos: padding is
   handled by position in the collator, never by matching the pad id.
3. Labels are -100 on the prompt and equal to `input_ids` on the completion (no shifting:
   the model shifts internally).
4. Too long: the completion is cut from its end. A prompt that leaves no room for a single
   completion token is dropped, so no row is ever fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def num_trainable(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def build_example(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> Example | None:
    """Join prompt and completion ids (completion already ends with EOS); None means drop the row."""
    room = max_length - len(prompt_ids)
    if room < 1 or not completion_ids:
        return None
    truncated = len(completion_ids) > room
    completion_ids = completion_ids[:room]
    return Example(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        truncated=truncated,
    )
