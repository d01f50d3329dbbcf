"""The one encoder: a normalised row -> its training rows, the same for rows in memory and streamed.

Each per-row rule is written once, here or in the module it names:
- an empty or whitespace-only response teaches nothing but EOS: the row is dropped (`has_response`);
- prompt/completion rows are masked by `mask.build_example`, conversations by `chat_rows.ChatEncoder`
  (which also audits what the template lost), text by `tokenization.text_encoder` with the EOS rule
  of `load.is_one_text`;
- every row's result carries why it gave nothing (`mask.DROP_*`) and what the template lost, so that
  the counts, the warnings and the fidelity verdict come from one function (`summarise`) whichever
  way the rows arrived.
In memory the encoder runs inside a batched `datasets.map` (`encode_rows`); a stream calls it row by
row (`streaming.TokenStream`) and puts its held-out rows through `summarise` as in memory.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import pyarrow.compute as pc

from ..errors import DataError
from ..recipe.config import SFTConfig
from .chat_rows import ChatEncoder
from .chat_template import template_name
from .fidelity import FidelityReport
from .mask import DROP_EMPTY, DROP_TOO_LONG, DROP_UNANSWERED, Example, build_example
from .prepared import map_fingerprint
from .stats import TokenStats
from .tokenization import prompt_ids_without_eos, resolve_num_proc

log = logging.getLogger("sft_recipe")
INT_LIST = datasets.List(datasets.Value("int64"))
# One output row per training row, plus one placeholder per source row that gave none (its `drop` reason).
FEATURES = datasets.Features({"input_ids": INT_LIST, "labels": INT_LIST, "length": datasets.Value("int64"),
                              "truncated": datasets.Value("bool"), "trainable": datasets.Value("int64"),
                              "drop": datasets.Value("string"), "lost": datasets.Value("string"),
                              "row": datasets.Value("int64")})
BOOKKEEPING = ["drop", "lost", "row"]


def has_response(completion: str) -> bool:
    return bool(completion.strip())


@dataclass
class Encoded:
    """One source row's training rows, or why it gave none, and what its template lost."""

    examples: list[Example] = field(default_factory=list)
    drop: str = ""
    lost: str = ""


class RowEncoder:
    """`encode(columns, numbers)`: one `Encoded` per row of a batch (prompt/completion rows are
    tokenized a batch at a time; conversations one by one). `numbers` name rows in errors."""

    def __init__(self, tokenizer, config: SFTConfig) -> None:
        self.tokenizer, self.config = tokenizer, config
        self._chat: ChatEncoder | None = None  # built on the first conversation: plain rows need no template
        self._prompts = None

    def encode(self, rows: dict[str, list], numbers: list[int]) -> list[Encoded]:
        if "messages" in rows:  # conversations, and prompt/completion given as message lists
            if self._chat is None:
                self._chat = ChatEncoder(self.tokenizer, self.config)
            tools = rows.get("tools") or [None] * len(numbers)
            return [Encoded(*self._chat(m, t, n)) for m, t, n in zip(rows["messages"], tools, numbers)]
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise DataError("the tokenizer has no EOS token; set one so the model can learn to stop")
        if self._prompts is None:
            self._prompts = prompt_ids_without_eos(self.tokenizer)
        keep = [i for i, c in enumerate(rows["completion"]) if has_response(c)]
        out = [Encoded(drop=DROP_EMPTY) for _ in numbers]
        if keep:
            prompts = self._prompts([rows["prompt"][i] for i in keep])
            answers = self.tokenizer([rows["completion"][i] for i in keep], add_special_tokens=False)["input_ids"]
            for i, p, c in zip(keep, prompts, answers):
                example = build_example(p, c + [eos], self.config.max_length)
                out[i] = Encoded([example]) if example is not None else Encoded(drop=DROP_TOO_LONG)
        return out

    def __call__(self, row: dict[str, Any], number: int) -> Encoded:
        return self.encode({k: [v] for k, v in row.items()}, [number])[0]


def to_columns(results: list[Encoded], numbers: list[int]) -> dict[str, list]:
    """The rows of `FEATURES`: every training row, and a placeholder for a source row that gave none."""
    out: dict[str, list] = {name: [] for name in FEATURES}
    for result, number in zip(results, numbers):
        for n, e in enumerate(result.examples or [Example([], [], False)]):
            out["input_ids"].append(e.input_ids)
            out["labels"].append(e.labels)
            out["length"].append(len(e.input_ids))
            out["truncated"].append(e.truncated)
            out["trainable"].append(e.num_trainable)
            out["drop"].append(result.drop if not result.examples else "")
            out["lost"].append(result.lost if n == 0 else "")
            out["row"].append(number if n == 0 else 0)
    return out


def encode_rows(dataset, tokenizer, config: SFTConfig, report: FidelityReport | None = None):
    """Normalised rows -> (masked training rows, counts), in a batched map whose cache a second run reuses."""
    if len(dataset) == 0:  # nothing held out (eval_fraction: 0) or nothing left to train: no map to run
        return summarise(datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES), 0, report)
    encoder = RowEncoder(tokenizer, config)
    numbered = "source_row" in dataset.column_names  # set by validation: the row as the file numbers it

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        numbers = batch["source_row"] if numbered else [i + 1 for i in indices]
        return to_columns(encoder.encode(batch, numbers), numbers)

    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("goes") == "data"}
    tokenized = dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                            features=FEATURES, num_proc=resolve_num_proc(config.num_proc, len(dataset)),
                            desc="Tokenizing", new_fingerprint=map_fingerprint(dataset, tokenizer, "rows", settings))
    return summarise(tokenized, len(dataset), report)


def summarise(tokenized, rows: int, report: FidelityReport | None = None):
    """(the training rows, their counts): placeholders counted by reason and removed, what the template
    lost added to `report`, drops said once."""
    columns = tokenized.select_columns(BOOKKEEPING).to_dict() if len(tokenized) else {"drop": [], "lost": [], "row": []}
    if report is not None:
        for lost, row in zip(columns["lost"], columns["row"]):
            if row:
                report.add(row, lost)
    reasons = Counter(columns["drop"])
    kept = tokenized
    if len(tokenized) and set(reasons) != {""}:
        kept = tokenized.filter(lambda drop: [d == "" for d in drop], input_columns="drop", batched=True)
    kept = kept.remove_columns(BOOKKEEPING)
    sums = kept.with_format("arrow")

    def total(name: str) -> int:
        return int(pc.sum(pc.cast(sums[name], "int64")).as_py() or 0) if len(kept) else 0

    stats = TokenStats(rows=rows, kept=len(kept), truncated=total("truncated"), dropped_empty=reasons[DROP_EMPTY],
                       dropped_too_long=reasons[DROP_TOO_LONG], dropped_other=reasons[DROP_UNANSWERED],
                       tokens=total("length"), trainable_tokens=total("trainable"))
    say_drops(reasons)
    return kept, stats


def say_drops(reasons: Counter) -> None:
    """One warning per kind of row dropped before training."""
    if reasons[DROP_UNANSWERED]:
        log.warning("dropped %d conversations that do not end on an assistant turn (no answer to learn)",
                    reasons[DROP_UNANSWERED])
    if reasons[DROP_EMPTY]:
        log.warning("dropped %d rows with an empty response (or only empty assistant turns)", reasons[DROP_EMPTY])


def enforce_fidelity(report: FidelityReport, config: SFTConfig) -> None:
    """What the template lost, over the rows seen so far: an error (the default) or one warning."""
    hint = "set train_dropped_reasoning: true to train the reasoning it drops, or " \
        if report.counts["reasoning"] and not config.train_dropped_reasoning else ""
    report.enforce(config.data_fidelity, template_name(config), hint)
