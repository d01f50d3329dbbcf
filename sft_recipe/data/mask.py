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

Conversations (`span_labels`, `fit_turns`; `chat_turns.py` locates the turns in the rendering):
5. An assistant turn is trained from the end of its role header to the end of the end-of-turn
   marker after it (`<|im_end|>`, `<|eot_id|>`, `</s>`...), so the model learns to stop; its tool
   calls and any reasoning the template renders in the turn are part of it. Whitespace after the
   marker, an EOS a template appends after the last turn, system, user and tool turns, role
   headers and the tool list are never trained. Tokens are those of the whole rendering.
6. `train_on: all_assistant` trains every assistant turn; `last_assistant` only the final one.
   Empty or whitespace-only assistant turns (without tool calls) stay as context but are never
   trained; a conversation with no trainable turn left is dropped (`dropped_empty`), and so is
   one that ends on a user, system or tool turn (`dropped_other`).
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

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import pyarrow as pa

from ..errors import DataError
from .literal import merge_spans

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
    kept = completion_ids[:room]
    return Example(prompt_ids + kept, [IGNORE_INDEX] * len(prompt_ids) + kept, truncated=len(completion_ids) > room)


def span_labels(text: str, ids: list[int], offsets: Sequence[tuple[int, int]],
                spans: list[tuple[int, int]]) -> list[int]:
    """Labels for the tokens of `text` (ids with character `offsets`): a token is trained when it
    overlaps a trained character span (rule 5), except a token that starts before the span (in the
    role header) and carries only whitespace of the answer. That covers a header newline merged
    with an answer's leading newline into one token, and headers such as Phi-3's `<|assistant|>`
    that absorb the whitespace after them: at generation time the prompt already ends with such a
    token, so the model could never produce it; training it would teach the header as output."""
    labels = [IGNORE_INDEX] * len(ids)
    # Overlapping spans merged (the same tokens qualify), then only the spans ending after a token
    # starts and starting before it ends can hold it, found by bisection: a long conversation costs
    # tokens x log(turns), not tokens x turns.
    spans = merge_spans(spans)
    ends = [e for _, e in spans]
    for n, (a, b) in enumerate(offsets):
        j = bisect.bisect_right(ends, a)
        while j < len(spans) and spans[j][0] < max(b, a + 1):
            if _in_span(text, a, b, *spans[j]):
                labels[n] = ids[n]
                break
            j += 1
    return labels


def _in_span(text: str, a: int, b: int, s: int, e: int) -> bool:
    if a == b:  # zero-width (e.g. an added special token without text): inside or not
        return s <= a < e
    if not (a < e and b > s):
        return False
    return a >= s or bool(text[s:min(b, e)].strip())


def fit_turns(input_ids: list[int], labels: list[int], max_length: int) -> tuple[Example | None, str]:
    """A conversation row cut to `max_length` by rule 7, or (None, drop reason). A trained turn is a
    maximal run of trained labels (turns are always separated by an untrained header)."""
    trained = [label != IGNORE_INDEX for label in labels]
    if not any(trained):
        return None, DROP_EMPTY
    if len(input_ids) <= max_length:
        return Example(list(input_ids), list(labels), truncated=False), ""
    whole = [n for n in range(1, max_length + 1) if trained[n - 1] and not trained[n]]  # turn ends that fit
    if whole:
        cut = whole[-1]
    elif trained.index(True) < max_length:
        cut = max_length  # a half turn: the only way to keep any trainable token
    else:
        return None, DROP_TOO_LONG
    return Example(list(input_ids[:cut]), list(labels[:cut]), truncated=True), ""


def to_blocks(ids, max_length: int, name: str, allow_empty: bool = False):
    """`[n_blocks, max_length]` rows with labels == input_ids, sharing one Arrow buffer."""
    n_blocks = len(ids) // max_length
    if n_blocks == 0 and not allow_empty:
        raise DataError(f"the {name} split has {len(ids)} tokens, fewer than one block of max_length={max_length}; "
                        "use more text, a smaller max_length or a different eval_fraction")
    flat = pa.array(ids.slice(0, n_blocks * max_length).to_numpy(zero_copy_only=False), pa.int64())
    blocks = pa.FixedSizeListArray.from_arrays(flat, max_length)
    return datasets.Dataset(pa.table({"input_ids": blocks, "labels": blocks}))
