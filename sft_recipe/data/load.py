"""Raw data in: a hub dataset, a local file or a directory, through `datasets.load_dataset`.

Malformed files get a precise one-line `DataError` (file, line, key) instead of the library's
long message: JSON files are re-read to find the culprit when `datasets` rejects them.
"""

from __future__ import annotations

import codecs
import json
import mmap
import re
from pathlib import Path
from typing import Any, Iterator

import datasets

from ..recipe.config import SFTConfig
from ..errors import DataError, one_line
from ..formats import get_format
from .builtin import is_builtin, materialise_dataset

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def load_source(source: str, config: SFTConfig):
    """`load_dataset` on a local file/directory or a hub id; malformed files get a precise error."""
    if is_builtin(source):
        source = str(materialise_dataset(source))
    path = Path(source).expanduser()
    looks_local = path.suffix.lower() in LOCAL_BUILDERS or source.startswith((".", "/", "~"))
    if looks_local and not path.exists():
        raise DataError(f"{source}: dataset file not found")
    files = data_files(path) if path.is_dir() else [path] if path.is_file() else []
    for file in files:
        check_text_file(file)
    try:
        if path.is_file():
            builder = LOCAL_BUILDERS[path.suffix.lower()]
            kwargs = {"keep_linebreaks": True} if builder == "text" else {}
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        if path.is_dir():
            return datasets.load_dataset(str(path), split=config.dataset_split)
        return datasets.load_dataset(source, config.dataset_config, split=config.dataset_split)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow errors are long; find the real culprit ourselves
        for file in files:
            if file.suffix.lower() in (".json", ".jsonl"):
                diagnose_json(file, config.dataset_format)
        raise DataError(f"{source}: could not load dataset: {one_line(exc)}") from None


def data_files(directory: Path) -> list[Path]:
    """The data files of a dataset directory, all of one type: `datasets` would load only the most
    common type and silently drop the rest, so a mix (or a file of unknown type) is refused."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not _ignored(p.relative_to(directory)))
    unknown = [p for p in files if p.suffix.lower() not in LOCAL_BUILDERS]
    if unknown:
        raise DataError(f"{unknown[0]}: unsupported file type '{unknown[0].suffix}' in the dataset directory "
                        f"(use one of {', '.join(sorted(LOCAL_BUILDERS))})")
    kinds = sorted({LOCAL_BUILDERS[p.suffix.lower()] for p in files})
    if len(kinds) > 1:
        counts = ", ".join(f"{k}: {sum(LOCAL_BUILDERS[p.suffix.lower()] == k for p in files)}" for k in kinds)
        raise DataError(f"{directory}: mixed file types ({counts} files); a dataset directory must hold one "
                        "format, so that no file is left out: convert them, or point dataset at one file")
    if not files:
        raise DataError(f"{directory}: no data files (use one of {', '.join(sorted(LOCAL_BUILDERS))})")
    return files


def _ignored(relative: Path) -> bool:
    """Hidden files and the documentation a dataset directory may carry."""
    return any(part.startswith(".") for part in relative.parts) or \
        relative.name.upper().startswith(("README", "LICENSE"))


def check_text_file(path: Path) -> None:
    """An empty or non-UTF-8 text file would reach the library as StopIteration or "An error
    occurred while generating the dataset": say what is wrong, with the line."""
    builder = LOCAL_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use one of "
                        f"{', '.join(sorted(LOCAL_BUILDERS))})")
    if builder == "parquet":
        return
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    decoder = codecs.getincrementaldecoder("utf-8")()
    seen, lines, blank = 0, 1, True
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line = lines + exc.object[:exc.start].count(b"\n")
                raise DataError(f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                                "convert the file to UTF-8") from None
            seen += len(chunk)
            lines += chunk.count(b"\n")
            blank = blank and not text.strip()
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: line {lines}: not UTF-8 text (the file ends inside a character)") from None
    if blank:
        raise DataError(f"{path}: the file is empty (only whitespace)")
    if builder == "json":
        reject_non_object_lines(path)


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
    adapter = get_format(dataset_format)
    for where, row in iter_json_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(row).__name__}")
        for key in adapter.string_columns:
            if key in row and row[key] is not None and not isinstance(row[key], str):
                raise DataError(f"{path}: {where}: key '{key}' must be a string, got "
                                f"{type(row[key]).__name__}")
