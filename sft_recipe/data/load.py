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
from pathlib import Path
from typing import Any

import datasets

from ..recipe.config import SFTConfig
from ..errors import DataError, one_line
from ..formats import Format, get_format
from .builtin import is_builtin, materialise_dataset
from .json_rows import diagnose_json, own_json_rows, own_json_stream, reject_non_object_lines

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
    split = config.dataset_split if path.is_dir() else "train"
    chat_json = builder_of(files[0]) == "json" and get_format(config.dataset_format).uniform is not Format.uniform
    if chat_json and streaming and not any(f.suffix.lower() in COMPRESSIONS for f in files):
        return own_json_stream(split_files(path, split), config)  # rows made uniform before Arrow types them
    try:
        if path.is_dir():
            dataset = load_or_explain(str(path), files, config, streaming, split=split, **kwargs)
        else:
            dataset = load_or_explain(builder_of(path) or "", files, config, streaming, data_files=[str(path)],
                                      split=split, **kwargs)
    except DataError as exc:  # values of several JSON types in one field, such as content parts beside strings
        own = own_json_rows(split_files(path, split), config) if chat_json and not streaming else None
        if own is None:
            raise exc from None
        return own
    if chat_json and not streaming and "Json(" in repr(dataset.features):  # `datasets` typed a field of mixed
        return own_json_rows(split_files(path, split), config) or dataset  # types as Json: "007" comes back as 7
    return dataset


def split_files(path: Path, split: str | None) -> list[Path]:
    """The files of one split: a file is its own; a directory's split as `datasets` resolves names
    (`train.jsonl`, `test/`...)."""
    if path.is_file():
        return [path]
    patterns = datasets.data_files.get_data_patterns(str(path))
    resolved = datasets.data_files.DataFilesDict.from_patterns(patterns, base_path=str(path))
    if split not in resolved:
        raise DataError(f"{path}: no split '{split}' (splits: {', '.join(map(str, resolved))})")
    return [Path(f) for f in resolved[split]]


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
