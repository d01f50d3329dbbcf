"""JSON files read by Python's `json`, where `datasets` cannot be trusted with them.

- **Checks and diagnosis:** JSON lines that are not objects are refused before pyarrow reads the
  file (a NaN line beside objects segfaulted its reader); a file `datasets` rejects is re-read to
  name the first row and key that is wrong.
- **Uniform rows:** a field whose values have several JSON types across rows (chat content given
  as a string in one message and as content parts in another) is typed by `datasets` as `Json`,
  which decodes the string "007" back as the number 7. Such files are read here instead, each row
  made uniform by its format (`Format.uniform`), in memory or as a resumable stream.
"""

from __future__ import annotations

import json
import mmap
import re
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..errors import DataError, one_line
from ..formats import get_format
from ..recipe.config import SFTConfig


def uniform_json_rows(files: list[Path], config: SFTConfig, changed: Any = None) -> Iterator[Any]:
    """The files' JSON rows, each made uniform by its format (chat content parts joined), so that Arrow
    gives every field one type; a row that is not an object, or that the format refuses, is one line.
    With `changed(before, after)`, yields (row, whether the format changed it)."""
    adapter = get_format(config.dataset_format)
    for file in files:
        for where, row in iter_json_rows(file):
            if not isinstance(row, dict):
                raise DataError(f"{file}: {where}: expected a JSON object, got {type(row).__name__}")
            try:
                uniform = adapter.uniform(row)
            except DataError as exc:
                raise DataError(f"{file}: {where}: {exc}") from None
            yield (uniform, changed(row, uniform)) if changed else uniform


def own_json_rows(files: list[Path], config: SFTConfig):
    """A JSON dataset read by Python's `json`, its rows made uniform by their format (what `datasets`
    could not type faithfully), or None when no row needed it (the caller keeps its own diagnosis)."""
    changed = False
    rows = []
    for row in uniform_json_rows(files, config, lambda before, after: before is not after):
        changed |= row[1]
        rows.append(row[0])
    if not changed:
        return None
    try:
        return datasets.Dataset.from_list(rows)
    except Exception as exc:
        raise DataError(f"{files[0]}: a field holds values of different JSON types across rows ({one_line(exc)}); "
                        "give every row the same types") from None


def own_json_stream(files: list[Path], config: SFTConfig):
    """The same rows as `own_json_rows`, streamed (resumable: `datasets` counts the rows of each file)."""
    return datasets.IterableDataset.from_generator(
        _generate_uniform, gen_kwargs={"files": [str(f) for f in files], "config": [config] * len(files)})


def _generate_uniform(files: list[str], config: list[SFTConfig]) -> Iterator[dict[str, Any]]:
    yield from uniform_json_rows([Path(f) for f in files], config[0])


_NON_BLANK = re.compile(rb"[^ \t\r\n]")
_NON_OBJECT_LINE = re.compile(rb"\n[ \t\r]*([^{ \t\r\n])")  # a later line that does not start an object


def reject_non_object_lines(path: Path) -> None:
    """In JSON lines, a line that is not an object (`null`, `NaN`, a string, a number, an array)
    can crash pyarrow's JSON reader (a segfault, no exception; found by fuzzing: `NaN`, then a
    string, then an object), so look for one first: a regex over the memory-mapped file costs little
    even for large files. A .json file that is an array, or one object over several lines, is JSON,
    not JSON lines, and is left to `datasets`; any other .json file is checked like JSON lines."""
    if path.stat().st_size == 0:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # past a UTF-8 byte-order mark (which `datasets` reads past) and leading blank lines
        first = _NON_BLANK.search(data, 3 if data[:3] == b"\xef\xbb\xbf" else 0)
        if first is None:
            return
        at = first.start()
        if path.suffix.lower() == ".json" and (data[at:at + 1] == b"[" or (
                data[at:at + 1] == b"{" and not _is_object(_line_at(data, at)))):
            return  # an array, or one object over several lines: JSON, not JSON lines
        if data[at:at + 1] == b"{":
            later = _NON_OBJECT_LINE.search(data, at)
            if later is None:
                return
            at = later.start(1)
        lineno = data[:at].count(b"\n") + 1
        line = _line_at(data, at).decode("utf-8", "replace")
        try:
            what = type(json.loads(line)).__name__.replace("NoneType", "null")
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from None
        raise DataError(f"{path}: line {lineno}: expected a JSON object, got {what}")


def _line_at(data, at: int) -> bytes:
    end = data.find(b"\n", at)
    return data[at:end if end >= 0 else len(data)]


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def iter_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (location, row) for a .json array/object file or a .jsonl file, with line numbers (JSON
    lines are read one at a time: a stream never holds the file)."""
    if path.suffix.lower() == ".json":
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096).lstrip()
        if head.startswith(("[", "{")):
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if not head.startswith("{"):  # a broken array: no way to guess rows
                    raise DataError(f"{path}: line {exc.lineno}: malformed JSON: {exc.msg}") from None
            else:
                rows = data if isinstance(data, list) else [data]
                for i, row in enumerate(rows):
                    yield f"row {i + 1}", row
                return
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from None


def diagnose_json(path: Path, dataset_format: str) -> None:
    """Re-read a JSON file that `datasets` rejected and raise the first concrete problem."""
    adapter = get_format(dataset_format)
    for where, row in iter_json_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
        for key in adapter.string_columns:
            if key in row and row[key] is not None and not isinstance(row[key], str):
                raise DataError(f"{path}: {where}: key '{key}' must be a string, got "
                                f"{type(row[key]).__name__}")
