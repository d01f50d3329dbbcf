"""Every label rule, in one place: which tokens carry loss, for each kind of row.

Prompt/completion rows (each rule has a golden test in tests/data/test_mask.py):
1. Prompt and completion are tokenized *separately* and concatenated, so the boundary never
   drifts: the ids the model is trained on are exactly the ids it will see at generation time
   (prompt alone), followed by the completion.
2. EOS is appended to every completion and is trained, even when pad == eos: padding is
   handled by position in the collator, never by matching the pad id.
3. Labels are -100 on the prompt and equal to `input_ids` on the completion (no shifting:
   the model shifts internally).
4. Too long: the completion is cut from its end. A prompt that leaves no room for a single
   completion token is dropped, so no row is ever fully masked.

Conversations (`conversation_segments`, `fit_segments`; the rendering is `chat_template.py`'s):
5. The text an assistant turn adds is its content plus the template's end-of-turn marker
   (`<|im_end|>` for ChatML). That is trained, marker included, so the model learns to stop;
   whitespace the template puts after the marker (ChatML's `\\n`) is not. System and user turns,
   role headers and the generation prompt are never trained.
6. `train_on: all_assistant` trains every assistant turn; `last_assistant` only the final one.
   Empty or whitespace-only assistant turns stay as context but are never trained; a
   conversation with no trainable turn left is dropped (`dropped_empty`), and so is one that
   ends on a user (or system) turn (`dropped_other`).
7. Truncation to `max_length` cuts after the last trainable turn that fits whole, end marker
   included, so no row ends in a half-trained turn. Only when not even the first trainable turn
   fits is that turn cut mid-way (the one way to keep any trainable token); when its header alone
   does not fit, the row is dropped (`dropped_too_long`).

Raw text (`to_blocks`):
8. Fixed-size blocks with labels == input_ids: every token is trained (the model shifts).

Batching adds one more rule in `collate.py`: padding is labelled -100 by position, and a packed
row's first label is -100 so no row learns to predict the next row's first token.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import pyarrow as pa

from ..errors import DataError

IGNORE_INDEX = -100
DROP_UNANSWERED, DROP_EMPTY, DROP_TOO_LONG = "unanswered", "empty", "too_long"


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


def conversation_segments(messages: list[dict], prompts: list[str], fulls: list[str], train_on: str,
                          name: str) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, trained) pieces, checking prefix stability.

    `prompts[k]`/`fulls[k]` are the renderings before/including the k-th assistant turn.
    """
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    segments: list[tuple[str, bool]] = []
    done, pending = "", ""  # text rendered so far; untrained text waiting for the next piece
    for k, (index, prompt, full) in enumerate(zip(assistants, prompts, fulls)):
        if not prompt.startswith(done) or not full.startswith(prompt):
            turn = index + 1
            raise DataError(
                f"{name}: rendering is not prefix-stable at message {turn} (the template renders earlier turns "
                "differently once later ones follow, or its generation prompt differs from the assistant "
                "header), so per-turn labels would be wrong; use a template that renders history unchanged"
            )
        span = full[len(prompt):]
        body = span.rstrip()  # the content and end-of-turn marker; trailing newlines stay untrained
        trained = bool(messages[index]["content"].strip()) and (train_on == "all_assistant" or k == len(assistants) - 1)
        segments += [(pending + prompt[len(done):], False), (body, trained)]
        pending, done = span[len(body):], full
    segments.append((pending, False))
    return segments


def fit_segments(pieces: list[tuple[list[int], bool]], max_length: int) -> tuple[Example | None, str]:
    """Join tokenized pieces into a row, truncating by the policy in the module docstring."""
    ids = [i for piece, _ in pieces for i in piece]
    labels = [i if trained else IGNORE_INDEX for piece, trained in pieces for i in piece]
    if not any(trained and piece for piece, trained in pieces):
        return None, DROP_EMPTY
    if len(ids) <= max_length:
        return Example(ids, labels, truncated=False), ""
    ends, start, first_start = [], 0, None
    for piece, trained in pieces:
        if trained and piece:
            first_start = start if first_start is None else first_start
            ends.append(start + len(piece))
        start += len(piece)
    whole = [end for end in ends if end <= max_length]
    if whole:
        cut = whole[-1]
    elif first_start is not None and first_start < max_length:
        cut = max_length  # a half turn: the only way to keep any trainable token
    else:
        return None, DROP_TOO_LONG
    return Example(ids[:cut], labels[:cut], truncated=True), ""


def to_blocks(ids, max_length: int, name: str):
    """`[n_blocks, max_length]` rows with labels == input_ids, sharing one Arrow buffer."""
    n_blocks = len(ids) // max_length
    if n_blocks == 0:
        raise DataError(
            f"the {name} split has {len(ids)} tokens, fewer than one block of max_length={max_length}; "
            "use more text, a smaller max_length or a different eval_fraction"
        )
    flat = pa.array(ids.slice(0, n_blocks * max_length).to_numpy(zero_copy_only=False), pa.int64())
    blocks = pa.FixedSizeListArray.from_arrays(flat, max_length)
    return datasets.Dataset(pa.table({"input_ids": blocks, "labels": blocks}))
