"""`streaming: true`: training rows made on the fly from a stream, with a position that survives a kill.

- **Held out:** the first `streaming_eval_examples` rows of the source (blocks, for text) are the
  eval set, read the same way on every process and kept in memory as a normal `Dataset`, so
  evaluation is unchanged; the rows they came from are skipped by the training stream.
- **Per process:** each process trains on every `world`-th remaining row (`stream_source.node_share`).
- **Tokenized on the fly:** SFT rows as in `tokenization.py`; text as one running token stream cut
  into full `max_length` blocks (the partial block of one row carries over into the next).
- **Endless:** at the end of the source it starts again (the Trainer stops at `max_steps`).
- **Resumable:** `TokenStream` remembers, for each of its last items, the source's `state_dict()`
  after the row the item came from (and, for text, the tokens carried over). The Trainer's loader
  reads ahead, so the position saved with checkpoint N is that of the last item training consumed
  (`state_at`), and a resume `load_state`s it: the stream is never replayed from the start.
"""

from __future__ import annotations

import collections
import copy
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import torch
from accelerate import PartialState

from ..recipe.config import SFTConfig
from ..errors import DataError, UserError, one_line
from ..formats import Form, canonical_row
from .mask import Example
from .stats import TokenStats
from .stream_source import builder_of, node_share, open_stream
from .chat_rows import ChatEncoder
from .chat_template import template_name
from .fidelity import FidelityReport
from .tokenization import prompt_completion_encoder, text_encoder

log = logging.getLogger(__name__)

Encode = Callable[[dict[str, Any], int], list[list[int]] | list[Example]]


class TokenStream(torch.utils.data.IterableDataset):
    """Training items (`input_ids`, `labels`) from `source`, endlessly, with a resumable position.

    `encode(row, n)` turns the n-th raw row into token ids (text, `block` set) or Examples (SFT).
    """

    def __init__(self, source: datasets.IterableDataset, encode: Encode, block: int | None, history: int = 4096,
                 where: str = "dataset") -> None:
        self.source, self.encode, self.block, self.where = source, encode, block, where
        self.items = 0  # items yielded so far, over all sessions
        self.history: collections.deque = collections.deque(maxlen=history)
        self._resume: dict[str, Any] | None = None

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue after the item `state` was saved at (see `state_at`)."""
        self._resume = state
        self.items = int(state["items"])
        # Known again at once: the loader may read past this source before training saves its position.
        self.history.append((self.items, state["epoch"], state["row"], state["source"], list(state["carry"]), 0))

    def state_at(self, items: int) -> dict[str, Any]:
        """The position right after item number `items` (1-based), JSON-serialisable."""
        if items == self.items and not self.history and self._resume is not None:
            return self._resume  # nothing consumed since the resume
        for n, epoch, row, source_state, buffer, start in reversed(self.history):
            if n == items:
                return {"items": n, "epoch": epoch, "row": row, "source": source_state,
                        "carry": list(buffer[start:]) if buffer is not None else []}
        raise UserError(f"streaming: the position after item {items} is no longer known (kept: the last "
                        f"{self.history.maxlen}); raise the history or lower dataloader read-ahead")

    def save_to_disk(self, path: str) -> None:
        """`sft-recipe preprocess` writes the training rows; a stream has no end to write up to."""
        raise UserError(f"{path}: a stream has no end to save; run preprocess with --streaming false "
                        "(and --max_examples N for a sample)")

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        resume, self._resume = self._resume, None
        epoch = resume["epoch"] if resume else 0
        while True:
            source = self.source
            carry: list[int] = []
            row = 0
            whole_pass = not resume  # a resumed pass starts mid-way: its rest may hold no usable row
            if resume:
                source = copy.deepcopy(self.source)
                source.load_state_dict(resume["source"])
                carry, row = list(resume["carry"]), int(resume["row"])
                resume = None
            produced = False
            for raw in read_rows(source, self.where):
                row += 1
                state = source.state_dict()
                encoded = self.encode(raw, row)
                if self.block is None:
                    for example in encoded:
                        produced = True
                        yield self._item(example.input_ids, example.labels, epoch, row, state, None, 0)
                    continue
                buffer, start = carry + encoded, 0
                while len(buffer) - start >= self.block:
                    ids = buffer[start:start + self.block]
                    start += self.block
                    produced = True
                    yield self._item(ids, ids, epoch, row, state, buffer, start)
                carry = buffer[start:]
            if not produced and row == 0:
                raise DataError(f"{self.where}: the training stream is empty (all its rows are held out for "
                                "evaluation?); lower streaming_eval_examples or add data")
            if not produced and whole_pass:  # else the next pass would be as empty, forever
                raise DataError(f"{self.where}: none of the {row} training rows gave a training item (empty answers, "
                                "prompts longer than max_length, or text shorter than one block)")
            epoch += 1
            log.info("%s: end of the stream, starting over (pass %d)", self.where, epoch + 1)

    def _item(self, ids: list[int], labels: list[int], epoch: int, row: int, state: dict, buffer: Any,
              start: int) -> dict[str, list[int]]:
        self.items += 1
        self.history.append((self.items, epoch, row, state, buffer, start))
        return {"input_ids": ids, "labels": labels}


def read_rows(source: datasets.IterableDataset, where: str) -> Iterator[dict[str, Any]]:
    """The source's rows; a read error (a malformed file deep in the stream) is one line."""
    iterator = iter(source)
    while True:
        try:
            raw = next(iterator)
        except StopIteration:
            return
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{where}: reading the stream failed: {one_line(exc)}") from None
        yield raw


def row_encoder(config: SFTConfig, tokenizer, where: str) -> Encode:
    """The per-row tokenization of the rows' form (the same functions as without streaming)."""
    fmt, columns = config.dataset_format, config.columns
    if config.form is Form.TEXT:
        add_eos = builder_of(Path(config.dataset or "")) != "text"  # as without streaming: a .txt is one text
        encode_text = text_encoder(tokenizer, add_eos)
        return lambda raw, n: encode_text({"text": [canonical_row(raw, fmt, columns, f"{where}: row {n}")["text"]]})["ids"][0]
    pc = prompt_completion_encoder(tokenizer, config.max_length)
    chat: list[Any] = []  # built on the first conversation: plain prompt/completion needs no template

    def encode(raw: dict[str, Any], n: int) -> list[Example]:
        row = canonical_row(raw, fmt, columns, f"{where}: row {n}")
        if "messages" in row:
            if not chat:
                chat.append(ChatEncoder(tokenizer, config))
            examples, _, lost = chat[0](row["messages"], row["tools"], n)
            if lost:  # a stream is audited row by row: the first loss is said (or is the error) at once
                report = FidelityReport(f"{where}")
                report.add(n, lost)
                report.enforce(config.data_fidelity, template_name(config))
            return examples
        if not row["completion"].strip():
            return []
        out = pc({"prompt": [row["prompt"]], "completion": [row["completion"]]})
        return [Example(ids, labels, truncated) for ids, labels, truncated
                in zip(out["input_ids"], out["labels"], out["truncated"])]

    return encode


def held_out(stream: datasets.IterableDataset, encode: Encode, config: SFTConfig, where: str):
    """The first `streaming_eval_examples` rows (blocks, for text) as an in-memory eval set, the raw
    canonical rows (SFT), and how many source rows they used (the training stream skips them)."""
    wanted, block = config.streaming_eval_examples, config.max_length
    ids: list[list[int]] = []
    labels: list[list[int]] = []
    raw_rows, carry, used = [], [], 0
    for raw in read_rows(stream, where):
        if len(ids) >= wanted:
            break
        used += 1
        encoded = encode(raw, used)
        if config.form is Form.TEXT:
            carry += encoded
            while len(carry) >= block and len(ids) < wanted:
                ids.append(carry[:block])
                labels.append(carry[:block])
                carry = carry[block:]
            continue  # the rest of the last held-out row is not trained either
        raw_rows.append(canonical_row(raw, config.dataset_format, config.columns, where))
        for example in encoded:
            ids.append(example.input_ids)
            labels.append(example.labels)
    if not ids:
        raise DataError(f"{where}: the stream gave no evaluation rows ({used} rows read, all dropped: empty "
                        f"answers, prompts longer than max_length={block}, or text shorter than one block)")
    rows = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels, "length": [len(i) for i in ids]})
    try:
        eval_raw = datasets.Dataset.from_list(raw_rows) if raw_rows and "prompt" in raw_rows[0] else None
    except Exception:  # rows whose types do not unify: generation checks are skipped
        eval_raw = None
    return rows, eval_raw, used


def history_size(config: SFTConfig) -> int:
    """Positions a stream keeps: the loader reads up to a few optimizer steps ahead of training."""
    return max(4096, 4 * config.batch_size * config.gradient_accumulation_steps)


def prepare_stream(config: SFTConfig, tokenizer) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(training TokenStream, eval rows, held-out raw rows, stats) for one streamed source (a mixture
    calls this once per source: `stream_mixture.py`)."""
    where = config.dataset or "dataset"
    stream = open_stream(config)
    if config.max_examples is not None:
        stream = stream.take(config.max_examples)
    encode = row_encoder(config, tokenizer, where)
    eval_rows, eval_raw, used = held_out(stream, encode, config, where)
    state = PartialState()
    train_source = node_share(stream, used, state.process_index, state.num_processes)
    train = TokenStream(train_source, encode, config.max_length if config.form is Form.TEXT else None,
                        history=history_size(config), where=where)
    tokens = sum(len(i) for i in eval_rows["input_ids"])
    trainable = sum(sum(1 for t in lab if t != -100) for lab in eval_rows["labels"])
    dropped = 0 if config.form is Form.TEXT else used - len(eval_rows)
    stats = {"eval": TokenStats(rows=used, kept=len(eval_rows), dropped_other=dropped, tokens=tokens,
                                trainable_tokens=trainable).to_dict(),
             "streaming": {"held_out_source_rows": used, "processes": state.num_processes}}
    log.info("streaming %s: %d held-out %s from the first %d rows; process %d of %d trains on one row in %d "
             "after them", where, len(eval_rows), "blocks" if config.form is Form.TEXT else "rows", used,
             state.process_index, state.num_processes, state.num_processes)
    return train, eval_rows, eval_raw, stats
