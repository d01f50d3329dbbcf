"""Raw data in: a hub dataset, a local file or a directory, through `datasets.load_dataset`.

Malformed files get a precise one-line `DataError` (file, line, key) instead of the library's
long message: JSON files are re-read to find the culprit when `datasets` rejects them.
"""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..config import SFTConfig
from ..errors import DataError
from .builtin import is_builtin, materialise_dataset
from .formats import OPTIONAL_STRING_COLUMNS, REQUIRED_COLUMNS

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_source(source: str, config: SFTConfig):
    """`load_dataset` on a local file/directory or a hub id; malformed files get a precise error."""
    if is_builtin(source):
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
