"""`streaming: true`: training rows made on the fly from a stream, with a position that survives a kill.

- **Held out:** the first `streaming_eval_examples` rows of the source (blocks, for text) are the
  eval set (none with an `eval_dataset`, read whole in memory instead, or with 0: no evaluation),
  read the same way on every process and kept in memory as a normal `Dataset`, so evaluation is
  unchanged; the rows they came from are skipped by the training stream.
- **Per process:** each process trains on every `world`-th remaining row (`node_share`).
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
from typing import Any, Callable, Iterator

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from accelerate import PartialState

from ..recipe.config import SFTConfig
from ..errors import DataError, UserError, one_line
from ..formats import Form, canonical_row
from .encode import FEATURES, Encoded, RowEncoder, enforce_fidelity, summarise, to_columns
from .fidelity import FidelityReport
from .load import is_one_text, load_source
from .stats import TokenStats
from .tokenization import text_encoder

log = logging.getLogger(__name__)

Encode = Callable[[dict[str, Any], int], Any]  # token ids (text) or an `encode.Encoded`


class TokenStream(torch.utils.data.IterableDataset):
    """Training items (`input_ids`, `labels`) from `source`, endlessly, with a resumable position.

    `encode(row, n)` turns the n-th raw row into token ids (text, `block` set) or an `Encoded` (SFT).
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
                    for example in encoded.examples:
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
    """One streamed row -> token ids (text) or an `Encoded`: the same adapter and encoder as in memory
    (`encode.RowEncoder`)."""
    fmt, columns = config.dataset_format, config.columns
    if config.form is Form.TEXT:
        encode_text = text_encoder(tokenizer, not is_one_text(config.dataset or ""))
        return lambda raw, n: encode_text(
            {"text": [canonical_row(raw, fmt, columns, f"{where}: row {n}")["text"]]})["ids"][0]
    encoder = RowEncoder(tokenizer, config)
    return lambda raw, n: encoder(canonical_row(raw, fmt, columns, f"{where}: row {n}"), n)


def audited(encode: Encode, config: SFTConfig, report: FidelityReport) -> Encode:
    """Training rows of a stream cannot be audited up front: what a template loses is counted in
    `report` row by row, and the first loss is said (or is the error) at once, once per stream."""
    def run(raw: dict[str, Any], n: int) -> Any:
        result = encode(raw, n)
        if isinstance(result, Encoded) and result.lost:
            first = not report.rows_lost
            report.add(n, result.lost)
            if first:
                enforce_fidelity(report, config)
        return result

    return run


def held_out(stream: datasets.IterableDataset, encode: Encode, config: SFTConfig, where: str):
    """The first `streaming_eval_examples` rows (blocks, for text) as an in-memory eval set, the raw
    canonical rows (SFT), how many source rows they used (the training stream skips them), and their
    counts (`encode.summarise`, as in memory)."""
    wanted, block = config.streaming_eval_examples, config.max_length
    blocks: list[list[int]] = []
    results: list[Encoded] = []
    raw_rows, carry, used, items = [], [], 0, 0
    for raw in read_rows(stream, where):
        if max(items, len(blocks)) >= wanted:
            break
        used += 1
        encoded = encode(raw, used)
        if config.form is Form.TEXT:
            carry += encoded
            while len(carry) >= block and len(blocks) < wanted:
                blocks.append(carry[:block])
                carry = carry[block:]
            continue  # the rest of the last held-out row is not trained either
        raw_rows.append(canonical_row(raw, config.dataset_format, config.columns, where))
        results.append(encoded)
        items += len(encoded.examples)
    if config.form is Form.TEXT:
        rows = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks, "length": [block] * len(blocks)})
        stats = TokenStats(rows=len(rows), kept=len(rows), tokens=block * len(rows), trainable_tokens=block * len(rows),
                           dropped_tokens=len(carry))  # as in memory: blocks are the rows; the rest is not trained
    else:
        report = FidelityReport(where)
        numbers = list(range(1, used + 1))
        rows, stats = summarise(datasets.Dataset.from_dict(to_columns(results, numbers), features=FEATURES), used,
                                report)
        enforce_fidelity(report, config)  # over the held-out rows at once, as in memory
        rows = rows.select_columns(["input_ids", "labels", "length"])
    if not len(rows):
        raise DataError(f"{where}: the stream gave no evaluation rows ({used} rows read, all dropped: empty "
                        f"answers, prompts longer than max_length={block}, or text shorter than one block)")
    try:
        eval_raw = datasets.Dataset.from_list(raw_rows) if raw_rows and "prompt" in raw_rows[0] else None
    except Exception:  # rows whose types do not unify: generation checks are skipped
        eval_raw = None
    return rows, eval_raw, used, stats


def history_size(config: SFTConfig) -> int:
    """Positions a stream keeps: the loader reads up to a few optimizer steps ahead of training."""
    return max(4096, 4 * config.batch_size * config.gradient_accumulation_steps)


def prepare_stream(config: SFTConfig, tokenizer) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(training TokenStream, eval rows, held-out raw rows, stats) for one streamed source (a mixture
    calls this once per source: `stream_mixture.py`)."""
    where = config.dataset or "dataset"
    stream = load_source(config.dataset or "", config, streaming=True)
    if config.max_examples is not None:
        stream = stream.take(config.max_examples)
    encode = row_encoder(config, tokenizer, where)
    if config.streaming_eval_examples and not config.eval_sets:
        eval_rows, eval_raw, used, eval_stats = held_out(stream, encode, config, where)
    else:  # evaluation rows of their own (an eval_dataset, read whole), or none: nothing is held out
        eval_rows, eval_raw, used, eval_stats = datasets.Dataset.from_dict(
            {"input_ids": [], "labels": [], "length": []}, features=datasets.Features(
                {name: FEATURES[name] for name in ("input_ids", "labels", "length")})), None, 0, TokenStats()
    state = PartialState()
    train_source = node_share(stream, used, state.process_index, state.num_processes)
    train = TokenStream(train_source, audited(encode, config, FidelityReport(where)),
                        config.max_length if config.form is Form.TEXT else None,
                        history=history_size(config), where=where)
    stats = {"eval": eval_stats.to_dict(),
             "streaming": {"held_out_source_rows": used, "processes": state.num_processes}}
    log.info("streaming %s: %d held-out %s from the first %d rows; process %d of %d trains on one row in %d "
             "after them", where, len(eval_rows), "blocks" if config.form is Form.TEXT else "rows", used,
             state.process_index, state.num_processes, state.num_processes)
    return train, eval_rows, eval_raw, stats


def node_share(stream: datasets.IterableDataset, held_out_rows: int, rank: int, world: int):
    """This process's training rows: the stream minus its first `held_out_rows` rows, then every
    `world`-th row from `rank` (`split_dataset_by_node` by examples, so that any number of files
    splits over any number of processes, and the held-out rows are the same on every process)."""
    rest = stream.skip(held_out_rows) if held_out_rows else stream
    return split_dataset_by_node(rest, rank=rank, world_size=world, strategy="examples") if world > 1 else rest
