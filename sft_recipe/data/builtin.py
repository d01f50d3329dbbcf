"""The embedded offline default: instruction data and a tokenizer that sft-recipe makes itself.

`dataset: builtin:tasks` generates Alpaca-format instruction tasks whose answers can be checked
exactly (sorting, reversing, counting, arithmetic, lookups), half of them using the `input`
field; `builtin:tasks-chat` is the same rows as one-turn `messages` conversations (the demo's
choice: a chat template costs ~30 tokens a row where the Alpaca preamble costs ~58, so the
same minutes train twice the rows). `tokenizer_name: builtin:tasks-bpe` trains a small byte-level
BPE on that data. Both are written to files once and then loaded with the ordinary `load_dataset` /
`from_pretrained` code, so the demo exercises the same paths as real data. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .tokenizer_train import train_bpe
from ..formats.alpaca import ALPACA_NO_INPUT, ALPACA_WITH_INPUT

BUILTIN_PREFIX = "builtin:"

DEMO_ROWS = 6000
DEMO_SEED = 1234
DEMO_VOCAB = 640
DEMO_VERSION = 2  # bump when the generator changes, so cached files are rebuilt
EXAMPLE_PROMPT = ("Reverse the order of the words.", "apple river stone")  # instruction, input: for "next:"

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "ocean", "candle", "forest",
         "rocket", "garden", "silver", "window", "dragon", "pepper"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]


def _numbers(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]


def _task_sort(rng: random.Random) -> dict[str, str]:
    xs = _numbers(rng)
    return {"instruction": "Sort the numbers in ascending order.", "input": " ".join(map(str, xs)),
            "output": " ".join(map(str, sorted(xs)))}


def _task_reverse(rng: random.Random) -> dict[str, str]:
    xs = rng.sample(WORDS, rng.randint(2, 4))
    return {"instruction": "Reverse the order of the words.", "input": " ".join(xs), "output": " ".join(reversed(xs))}


def _task_count(rng: random.Random) -> dict[str, str]:
    xs = [rng.choice(COLORS) for _ in range(rng.randint(1, 7))]
    return {"instruction": "How many words are in the input?", "input": " ".join(xs), "output": str(len(xs))}


def _task_add(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return {"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}


def _task_next_day(rng: random.Random) -> dict[str, str]:
    i = rng.randrange(7)
    return {"instruction": f"Which day comes after {DAYS[i]}?", "input": "", "output": DAYS[(i + 1) % 7]}


def _task_repeat(rng: random.Random) -> dict[str, str]:
    word, n = rng.choice(WORDS), rng.randint(1, 4)
    return {"instruction": f"Repeat the word {word} {n} times.", "input": "", "output": " ".join([word] * n)}


TASKS: list[Callable[[random.Random], dict[str, str]]] = [_task_sort, _task_reverse, _task_count, _task_add,
                                                          _task_next_day, _task_repeat]


def make_rows(n: int = DEMO_ROWS, seed: int = DEMO_SEED) -> list[dict[str, str]]:
    """`n` distinct generated rows, cycling through the task kinds; deterministic for a seed.

    Rows are distinct so that a held-out split really is held out; task kinds with few
    possible rows (the next day has 7) simply stop contributing once exhausted.
    """
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(rows) < n and attempts < 50 * n:
        row = TASKS[attempts % len(TASKS)](rng)
        attempts += 1
        key = (row["instruction"], row["input"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def cache_dir() -> Path:
    root = os.environ.get("SFT_RECIPE_CACHE") or Path.home() / ".cache" / "sft_recipe"
    path = Path(root) / "builtin"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        write(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process (DDP rank) won the race; its copy is identical
            if not path.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return path


def as_conversation(row: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """An Alpaca row as a one-turn chat: the instruction, then the input on its own line."""
    question = row["instruction"] + (f"\n{row['input']}" if row["input"] else "")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["output"]}]}


BUILTIN_DATASETS: dict[str, Callable[[dict[str, str]], dict]] = {
    "builtin:tasks": lambda row: row,
    "builtin:tasks-chat": as_conversation,
}


def materialise_dataset(name: str) -> Path:
    """`builtin:tasks` / `builtin:tasks-chat` -> path of a generated .jsonl file."""
    if name not in BUILTIN_DATASETS:
        raise UserError(f"{name}: unknown built-in dataset (available: {', '.join(BUILTIN_DATASETS)})")
    convert = BUILTIN_DATASETS[name]

    def write(tmp: Path) -> None:
        tmp.write_text("".join(json.dumps(convert(r)) + "\n" for r in make_rows()), encoding="utf-8")

    stem = name.removeprefix(BUILTIN_PREFIX)
    return _write_atomically(cache_dir() / f"{stem}-v{DEMO_VERSION}-{DEMO_ROWS}-{DEMO_SEED}.jsonl", write)


def materialise_tokenizer(name: str) -> Path:
    """`builtin:tasks-bpe` -> directory of a byte-level BPE trained on the demo data."""
    if name != "builtin:tasks-bpe":
        raise UserError(f"{name}: unknown built-in tokenizer (available: builtin:tasks-bpe)")
    def write(tmp: Path) -> None:
        texts = [ALPACA_WITH_INPUT, ALPACA_NO_INPUT] * 50
        texts += [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in make_rows()]
        train_bpe(texts, vocab_size=DEMO_VOCAB, output_dir=tmp)

    return _write_atomically(cache_dir() / f"tasks-bpe-v{DEMO_VERSION}-{DEMO_VOCAB}", write)


def is_builtin(name: str | None) -> bool:
    """True for `builtin:...` names, which sft-recipe generates instead of loading."""
    return bool(name) and name.startswith(BUILTIN_PREFIX)  # type: ignore[union-attr]
