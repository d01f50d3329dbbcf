"""Raw data in, one way for both kinds of dataset: a hub id, a local file or a directory, through
`datasets.load_dataset`, as a `Dataset` in memory or an `IterableDataset` with `streaming: true`.

- **Files:** `.txt`, `.jsonl`, `.json`, `.csv`, `.parquet`, optionally compressed (`.gz`, `.bz2`,
  `.xz`, `.zst`, `.lz4`). Text is read line by line with its line breaks kept, in memory and streamed.
- **Directories:** every data file of one type (a mix would be loaded partly: refused), hidden files
  and README/LICENSE ignored, files in name order; files named after splits (`train.jsonl`,
  `test.jsonl`) are those splits (`dataset_split`), as on the hub.
- **Checks:** in memory, before `datasets` reads them, each file is checked (empty, not UTF-8, JSON
  lines that are not objects) and a file `datasets` rejects is re-read to name the line and key. A
  stream cannot be checked up front: a bad row stops the run with one line when it is reached.
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
# Compression `datasets` decompresses on the fly (fsspec), and the module each needs beyond the standard library.
COMPRESSIONS = {".gz": None, ".bz2": None, ".xz": None, ".zst": "zstandard", ".lz4": "lz4"}
SUPPORTED = f"{', '.join(sorted(LOCAL_BUILDERS))}, optionally compressed: {', '.join(COMPRESSIONS)}"


def builder_of(path: Path) -> str | None:
    """`datasets` builder of a data file, looking through one compression suffix (`a.jsonl.gz` -> json)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return LOCAL_BUILDERS.get(suffixes[-1]) if suffixes else None


def is_one_text(source: str) -> bool:
    """A single text file (`.txt`, compressed or not) is one running text: its lines are not
    documents, so no EOS goes between them. Every other source's rows are documents, EOS after each."""
    if is_builtin(source):
        return False
    path = Path(source).expanduser()
    return not path.is_dir() and builder_of(path) == "text"


def load_source(source: str, config: SFTConfig, streaming: bool = False):
    """`load_dataset` on a local file or directory, or a hub id; malformed files get a precise error."""
    if is_builtin(source):
        source = str(materialise_dataset(source))
    path = Path(source).expanduser()
    if not path.exists():
        if builder_of(path) or source.startswith((".", "/", "~")):
            raise DataError(f"{source}: dataset file not found")
        return load_or_explain(source, [], config, streaming, name=config.dataset_config, split=config.dataset_split)
    files = source_files(path)
    if not streaming:
        for file in files:
            check_text_file(file)
    kwargs: dict[str, Any] = {"keep_linebreaks": True} if builder_of(files[0]) == "text" else {}
    if path.is_dir():
        return load_or_explain(str(path), files, config, streaming, split=config.dataset_split, **kwargs)
    return load_or_explain(builder_of(path) or "", files, config, streaming, data_files=[str(path)], split="train",
                           **kwargs)


def load_or_explain(name: str, files: list[Path], config: SFTConfig, streaming: bool, **kwargs: Any):
    try:
        return datasets.load_dataset(name, streaming=streaming, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow errors are long; find the real culprit ourselves
        for file in files:
            if file.suffix.lower() in (".json", ".jsonl"):
                diagnose_json(file, config.dataset_format)
        verb = "open the dataset as a stream" if streaming else "load dataset"
        raise DataError(f"{name if not files else files[0] if len(files) == 1 else files[0].parent}: could not "
                        f"{verb}: {one_line(exc)}") from None


def source_files(path: Path) -> list[Path]:
    """The data files of a file or a dataset directory, all of one type: `datasets` would load only the
    most common type and silently drop the rest, so a mix (or a file of unknown type) is refused."""
    files = [path] if path.is_file() else \
        sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p.relative_to(path)))
    if not files:
        raise DataError(f"{path}: no data files (use {SUPPORTED})")
    for file in files:
        if builder_of(file) is None:
            where = " in the dataset directory" if file != path else ""
            shown = "".join(file.suffixes[-2:]) if file.suffix.lower() in COMPRESSIONS else file.suffix or file.name
            raise DataError(f"{file}: unsupported file type '{shown}'{where} "
                            f"(use {SUPPORTED})")
        module = COMPRESSIONS.get(file.suffix.lower())
        if module is not None and not _importable(module):
            raise DataError(f"{file}: reading {file.suffix} files needs the '{module}' package (pip install {module})")
    kinds = sorted({builder_of(f) or "" for f in files})
    if len(kinds) > 1:
        counts = ", ".join(f"{k}: {sum(builder_of(f) == k for f in files)}" for k in kinds)
        raise DataError(f"{path}: mixed file types ({counts} files); a dataset directory must hold one "
                        "format, so that no file is left out: convert them, or point dataset at one file")
    return files


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _ignored(relative: Path) -> bool:
    """Hidden files and the documentation a dataset directory may carry."""
    return any(part.startswith(".") for part in relative.parts) or \
        relative.name.upper().startswith(("README", "LICENSE"))


def check_text_file(path: Path) -> None:
    """An empty or non-UTF-8 text file would reach the library as StopIteration or "An error
    occurred while generating the dataset": say what is wrong, with the line."""
    builder = builder_of(path)
    if builder == "parquet" or path.suffix.lower() in COMPRESSIONS:  # binary: datasets reads and checks it
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
