"""Raw data: load a hub or local dataset, validate every row, and normalise it per format.

After this step a dataset has exactly one schema per format, whatever the source looked like:
- alpaca / prompt_completion -> `prompt`, `completion` (strings; the Alpaca template applied);
- messages -> `messages` (a list of {role, content});
- text -> `text`.
Problems are raised as one-line `DataError`s naming the file, the row (1-based) and the key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from .config import SFTConfig
from .errors import DataError
from .templates import alpaca_prompt

log = logging.getLogger(__name__)

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
REQUIRED_COLUMNS = {
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "messages": ("messages",),
}
OPTIONAL_STRING_COLUMNS = {"alpaca": ("input",)}


def load_raw(config: SFTConfig):
    """Load the configured dataset split; return it normalised, plus the count of rows dropped
    for an empty response."""
    source = config.dataset
    assert source is not None
    dataset = load_source(source, config)
    if config.max_examples is not None:
        dataset = dataset.select(range(min(config.max_examples, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset is empty")
    dataset = normalise(dataset, config.dataset_format, source)
    if "completion" in dataset.column_names:
        return drop_empty_completions(dataset, source)
    return dataset, 0


def load_source(source: str, config: SFTConfig):
    """`load_dataset` on a local file/directory or a hub id; malformed files get a precise error."""
    import datasets

    if source.startswith("builtin:"):
        from .demo import materialise_dataset

        source = str(materialise_dataset(source))
    path = Path(source).expanduser()
    looks_local = path.suffix.lower() in LOCAL_BUILDERS or source.startswith((".", "/", "~"))
    if looks_local and not path.exists():
        raise DataError(f"{source}: dataset file not found")
    try:
        if path.is_file():
            builder = LOCAL_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: unsupported file type '{path.suffix}' (use one of "
                                f"{', '.join(sorted(LOCAL_BUILDERS))})")
            kwargs = {"keep_linebreaks": True} if builder == "text" else {}
            if builder == "json":
                reject_null_lines(path)
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        if path.is_dir():
            return datasets.load_dataset(str(path), split=config.dataset_split)
        return datasets.load_dataset(source, config.dataset_config, split=config.dataset_split)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow errors are long; find the real culprit ourselves
        if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
            diagnose_json(path, config.dataset_format)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{source}: could not load dataset: {first_line}") from None


def reject_null_lines(path: Path) -> None:
    """A JSON line that is a bare `null` crashes pyarrow's JSON reader (a segfault, no exception),
    so look for one first; a regex over the memory-mapped file costs little even for large files."""
    import mmap
    import re

    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        match = re.search(rb"^[ \t\r]*null[ \t\r]*$", data, re.MULTILINE)
        if match:
            lineno = data[:match.start()].count(b"\n") + 1
            raise DataError(f"{path}: line {lineno}: expected a JSON object, got null")


def iter_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) for a .json array/object file or a .jsonl file, with line numbers."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not stripped.startswith("{"):  # a broken array: no way to guess rows
                raise DataError(f"{path}: line {exc.lineno}: malformed JSON: {exc.msg}") from None
        else:
            rows = data if isinstance(data, list) else [data]
            for i, row in enumerate(rows):
                yield f"row {i + 1}", row
            return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from None


def diagnose_json(path: Path, dataset_format: str) -> None:
    """Re-read a JSON file that `datasets` rejected and raise the first concrete problem."""
    required = REQUIRED_COLUMNS[dataset_format]
    for where, row in iter_json_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
        for key in required + OPTIONAL_STRING_COLUMNS.get(dataset_format, ()):
            if key in row and row[key] is not None and dataset_format != "messages" \
                    and not isinstance(row[key], str):
                raise DataError(f"{path}: {where}: key '{key}' must be a string, got "
                                f"{type(row[key]).__name__}")


def normalise(dataset, dataset_format: str, source: str):
    """Check columns and field types, then map every format onto its canonical columns."""
    columns = set(dataset.column_names)
    if dataset_format == "messages" and "messages" not in columns and "conversations" in columns:
        from .chat import sharegpt_to_messages

        dataset = dataset.map(sharegpt_to_messages, remove_columns=["conversations"])
        columns = set(dataset.column_names)
    if dataset_format == "prompt_completion" and columns >= {"prompt", "completion"} and \
            _is_message_list(dataset[0]["prompt"]):
        dataset_format = "messages"  # conversational prompt/completion: handled by the chat rules
        from .chat import prompt_completion_to_messages

        dataset = dataset.map(prompt_completion_to_messages, remove_columns=sorted(columns))
        columns = set(dataset.column_names)
    missing = [c for c in REQUIRED_COLUMNS[dataset_format] if c not in columns]
    if missing:
        raise DataError(
            f"{source}: missing column '{missing[0]}' for dataset_format '{dataset_format}' "
            f"(columns present: {', '.join(sorted(columns)) or 'none'})"
        )
    if dataset_format == "messages":
        from .chat import validate_conversations

        return validate_conversations(dataset, source)
    if dataset_format == "text":
        check_strings(dataset, ("text",), source, allow_null=())
        return dataset.select_columns(["text"])
    # A `map` (not a new in-memory Dataset) keeps the rows backed by the datasets cache, so the
    # tokenization after it is cached too: under `main_process_first` the other ranks reuse it.
    if dataset_format == "alpaca":
        optional = [c for c in OPTIONAL_STRING_COLUMNS["alpaca"] if c in columns]
        check_strings(dataset, ("instruction", "output", *optional), source, allow_null=("input",))
        return dataset.map(alpaca_to_prompt_completion, batched=True, remove_columns=dataset.column_names,
                           desc="Formatting")
    check_strings(dataset, ("prompt", "completion"), source, allow_null=())
    return dataset.select_columns(["prompt", "completion"])


def alpaca_to_prompt_completion(batch: dict[str, list]) -> dict[str, list]:
    inputs = batch.get("input") or [""] * len(batch["instruction"])
    return {"prompt": [alpaca_prompt(ins, inp) for ins, inp in zip(batch["instruction"], inputs)],
            "completion": batch["output"]}


def check_strings(dataset, keys: tuple[str, ...], source: str, allow_null: tuple[str, ...]) -> None:
    """Every value of `keys` must be a string (or null, for `allow_null` keys)."""
    for key in keys:
        for i, value in enumerate(dataset[key]):
            if isinstance(value, str) or (value is None and key in allow_null):
                continue
            kind = "null" if value is None else type(value).__name__
            raise DataError(f"{source}: row {i + 1}: key '{key}' must be a string, got {kind}")


def _is_message_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def drop_empty_completions(dataset, source: str):
    """Empty or whitespace-only responses teach nothing but EOS: drop them, count them, and
    fail if nothing is left."""
    keep = [i for i, c in enumerate(dataset["completion"]) if c.strip()]
    dropped = len(dataset) - len(keep)
    if not keep:
        raise DataError(f"{source}: every response is empty; nothing to train on")
    if dropped:
        log.warning("dropped %d rows with an empty response", dropped)
        dataset = dataset.select(keep)
    return dataset, dropped


def split_rows(dataset, eval_fraction: float, seed: int, source: str):
    """Hold out a seeded random `eval_fraction` of rows (text data is split by position instead)."""
    if len(dataset) < 2:
        raise DataError(f"{source}: need at least 2 rows to hold out an eval split, got {len(dataset)}")
    parts = dataset.train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]
