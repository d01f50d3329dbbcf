"""Tokenize normalised rows into training rows (`input_ids`, `labels`, `length`), with counts.

All tokenization runs in batched `datasets.map` calls: fast tokenizers encode a whole batch in
Rust, `num_proc` spreads large datasets over cores, and the map cache means a second run of the
same recipe does not tokenize again. Which tokens are trained is decided in `mask.py`.

Conversations are rendered once each and masked by the turns `chat_turns.py` locates.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any, Callable

import datasets

from ..recipe.config import SFTConfig
from ..errors import DataError, RecipeError
from .chat_template import end_of_turn_markers, require_template, template_name, template_notes
from .chat_turns import encode_conversation
from .mask import (
    DROP_EMPTY,
    DROP_TOO_LONG,
    DROP_UNANSWERED,
    Example,
    build_example,
    fit_turns,
    to_blocks,
)
from ..formats.conversation import normalise_messages
from .stats import TokenStats

log = logging.getLogger(__name__)

# Below this many rows, process start-up costs more than it saves.
PARALLEL_MIN_ROWS = 20_000


def resolve_num_proc(num_proc: int | None, rows: int) -> int | None:
    if num_proc is None:
        num_proc = min(os.cpu_count() or 1, 8) if rows >= PARALLEL_MIN_ROWS else 1
    if num_proc > 1:
        # Each worker process tokenizes its own shard; Rust threads inside forks only contend.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        return num_proc
    return None


def prompt_ids_without_eos(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """Tokenize prompts with the tokenizer's own special tokens (BOS), minus a trailing EOS that
    some tokenizers (`add_eos_token=True`) append: EOS belongs after the completion only."""
    eos = tokenizer.eos_token_id
    adds_eos = tokenizer("a", add_special_tokens=True)["input_ids"][-1:] == [eos]

    def encode(prompts: list[str]) -> list[list[int]]:
        ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        return [p[:-1] if adds_eos and p[-1:] == [eos] else p for p in ids]

    return encode


def examples_to_columns(examples: list[Example | None]) -> dict[str, list]:
    kept = [e for e in examples if e is not None]
    return {
        "input_ids": [e.input_ids for e in kept],
        "labels": [e.labels for e in kept],
        "length": [len(e.input_ids) for e in kept],
        "truncated": [e.truncated for e in kept],
        "trainable": [e.num_trainable for e in kept],
    }


def tokenize_prompt_completion(dataset, tokenizer, max_length: int, num_proc: int | None = None):
    """Rows with `prompt`/`completion` strings -> masked training rows (see mask.py for the rules)."""
    return map_rows(dataset, prompt_completion_encoder(tokenizer, max_length), num_proc)


def prompt_completion_encoder(tokenizer, max_length: int) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batch function behind `tokenize_prompt_completion`, shared with streaming (`streaming.py`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token; set one so the model can learn to stop")
    encode_prompts = prompt_ids_without_eos(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        prompts = encode_prompts(batch["prompt"])
        completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        return examples_to_columns([build_example(p, c + [eos], max_length) for p, c in zip(prompts, completions)])

    return encode


def map_rows(dataset, encode: Callable[[dict[str, list]], dict[str, list]], num_proc: int | None):
    return dataset.map(
        encode, batched=True, remove_columns=dataset.column_names,
        num_proc=resolve_num_proc(num_proc, len(dataset)), desc="Tokenizing",
    )


def tokenize_text(dataset, tokenizer, max_length: int, eval_fraction: float, *, add_eos: bool,
                  num_proc: int | None = None):
    """Whole-corpus tokenization, a split by token position, and fixed-size blocks.

    The last `eval_fraction` of the token stream is validation (by position, like the classic
    tutorial, so no validation text leaks into training through shuffled lines). Each split is
    cut into `max_length` blocks with labels == input_ids; the model shifts them itself. The
    partial block at the end of each split is dropped and counted.
    """
    stream = token_stream(dataset, tokenizer, add_eos=add_eos, num_proc=num_proc)
    split = int(len(stream) * (1.0 - eval_fraction))
    parts, stats = {}, {}
    for name, ids in (("train", stream[:split]), ("eval", stream[split:])):
        parts[name] = to_blocks(ids, max_length, name)
        n_tokens = len(parts[name]) * max_length
        stats[name] = TokenStats(
            rows=len(parts[name]), kept=len(parts[name]), tokens=n_tokens, trainable_tokens=n_tokens,
            dropped_tokens=len(ids) - n_tokens,  # the partial block at the end
        )
        log.info("%s: %d tokens -> %d blocks of %d (%d tokens in the partial block dropped)",
                 name, len(ids), len(parts[name]), max_length, len(ids) - n_tokens)
    return parts["train"], parts["eval"], stats


def token_stream(dataset, tokenizer, *, add_eos: bool, num_proc: int | None = None):
    """The corpus as one pyarrow array of token ids, in order."""
    tokenized = encode_text(dataset, tokenizer, add_eos=add_eos, num_proc=num_proc)
    return tokenized.data.column("ids").combine_chunks().flatten()


def encode_text(dataset, tokenizer, *, add_eos: bool, num_proc: int | None = None):
    """Rows (lines of a .txt, documents of a .jsonl) -> an `ids` column, in a batched `datasets.map`
    whose cache a second run of the same recipe reuses.

    For a .txt read line by line (`keep_linebreaks`), the only difference from tokenizing the file
    in one piece is that a run of newlines is split at line ends: BPE merges never cross a row.
    """
    return map_rows(dataset, text_encoder(tokenizer, add_eos), num_proc)


def text_encoder(tokenizer, add_eos: bool) -> Callable[[dict[str, list]], dict[str, list]]:
    """`{"text": [...]}` -> `{"ids": [...]}` (EOS after each document when `add_eos`); also used by streaming."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents; set one")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        ids = tokenizer(batch["text"], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return {"ids": [row + [eos] for row in ids] if add_eos else ids}

    return encode


# --- conversations ---------------------------------------------------------------------------

_NOTED: set[str] = set()  # template notes already said in this process


def tokenize_messages(dataset, tokenizer, config: SFTConfig):
    """Conversations -> masked training rows plus counts (batched map; rules in mask.py, turn
    location in chat_turns.py). Errors name the source row (`source_row`, set by validation)."""
    encode_one = conversation_encoder(tokenizer, config)
    has_tools = "tools" in dataset.column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        examples, reasons = [], []
        tools_column = batch["tools"] if has_tools else [None] * len(batch["messages"])
        for messages, tools, row in zip(batch["messages"], tools_column, batch["source_row"]):
            example, reason = encode_one(messages, tools, row)
            examples.append(example)
            reasons.append(reason)
        placeholder = Example([], [], False)  # dropped rows are filtered out below, after counting
        columns = examples_to_columns([e or placeholder for e in examples])
        return {**columns, "drop": reasons}

    int_list = datasets.List(datasets.Value("int64"))
    features = datasets.Features({"input_ids": int_list, "labels": int_list, "length": datasets.Value("int64"),
                                  "truncated": datasets.Value("bool"), "trainable": datasets.Value("int64"),
                                  "drop": datasets.Value("string")})
    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, features=features,
                            num_proc=resolve_num_proc(config.num_proc, len(dataset)), desc="Tokenizing")
    reasons = Counter(tokenized["drop"])
    kept = tokenized.filter(lambda drop: [d == "" for d in drop], input_columns="drop", batched=True)
    kept = kept.remove_columns("drop")
    stats = TokenStats(
        rows=len(dataset), kept=len(kept), truncated=int(sum(kept["truncated"])),
        dropped_empty=reasons[DROP_EMPTY], dropped_too_long=reasons[DROP_TOO_LONG],
        dropped_other=reasons[DROP_UNANSWERED], tokens=int(sum(kept["length"])),
        trainable_tokens=int(sum(kept["trainable"])),
    )
    if reasons[DROP_UNANSWERED]:
        log.warning("dropped %d conversations that do not end on an assistant turn (no answer to learn)",
                    reasons[DROP_UNANSWERED])
    if reasons[DROP_EMPTY]:
        log.warning("dropped %d conversations whose assistant turns are all empty", reasons[DROP_EMPTY])
    return kept, stats


def conversation_encoder(tokenizer, config: SFTConfig) -> Callable[..., tuple[Example | None, str]]:
    """`(messages, tools, row) -> (example or None, drop reason)`: one conversation, as `tokenize_messages`
    and streaming (`streaming.py`) both encode it. Checks the template once, up front."""
    require_template(tokenizer, config)
    kwargs = dict(config.chat_template_kwargs)
    try:
        end_of_turn_markers(tokenizer, kwargs)  # fail now, not after a run that never learned to stop
    except RecipeError as exc:
        raise RecipeError(f"{template_name(config)}: {exc}") from None
    for note in template_notes(tokenizer, kwargs):
        if note not in _NOTED:  # once per run, however many sources share the template
            _NOTED.add(note)
            log.warning("%s: %s", template_name(config), note)
    where = config.dataset or "dataset"

    def encode(messages: Any, tools: Any, row: int) -> tuple[Example | None, str]:
        try:
            messages, tools = normalise_messages(messages, tools)
            if not messages or messages[-1]["role"] != "assistant":
                return None, DROP_UNANSWERED
            ids, labels = encode_conversation(tokenizer, messages, tools=tools, train_on=config.train_on,
                                              chat_template_kwargs=kwargs)
        except DataError as exc:
            raise DataError(f"{where}: row {row}: {exc}") from None
        return fit_turns(ids, labels, config.max_length)

    return encode
