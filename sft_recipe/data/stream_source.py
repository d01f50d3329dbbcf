"""`streaming: true` sources: a file, a directory of (compressed) shards or a hub id, read lazily.

A source becomes a `datasets.IterableDataset` (`load_dataset(..., streaming=True)`); nothing is
materialised beyond what `datasets` itself caches. Rows are mapped onto their form one at a time
(`formats.canonical_row`: the same adapter and column mapping as in memory), since a stream cannot
be validated up front: a bad row stops the run with one line naming the source and the row's
position in the stream.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node

from ..recipe.config import SFTConfig
from ..errors import DataError, one_line
from .builtin import is_builtin, materialise_dataset
from .load import LOCAL_BUILDERS, _ignored

# Compression `datasets` decompresses on the fly in streaming mode (fsspec), and the module each needs.
COMPRESSIONS = {".gz": None, ".bz2": None, ".xz": None, ".zst": "zstandard", ".lz4": "lz4"}


def builder_of(path: Path) -> str | None:
    """`datasets` builder of a data file, looking through one compression suffix (`a.jsonl.gz` -> json)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    return LOCAL_BUILDERS.get(suffixes[-1]) if suffixes else None


def stream_files(path: Path) -> list[Path]:
    """The data files of a file or directory, in name order (the stream's order), all of one builder."""
    files = [path] if path.is_file() else \
        sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p.relative_to(path)))
    if not files:
        raise DataError(f"{path}: no data files (use .txt, .jsonl, .json, .csv or .parquet, optionally .gz/.zst)")
    for file in files:
        if builder_of(file) is None:
            raise DataError(f"{file}: unsupported file type '{''.join(file.suffixes)}' for streaming (use "
                            f"{', '.join(sorted(LOCAL_BUILDERS))}, optionally compressed: .gz, .bz2, .xz, .zst)")
        module = COMPRESSIONS.get(file.suffix.lower())
        if module is not None and not _importable(module):
            raise DataError(f"{file}: reading {file.suffix} files needs the '{module}' package (pip install {module})")
    kinds = sorted({builder_of(f) or "" for f in files})
    if len(kinds) > 1:
        raise DataError(f"{path}: mixed file types ({', '.join(kinds)}); a dataset directory must hold one format")
    return files


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def open_stream(config: SFTConfig) -> datasets.IterableDataset:
    """The source's raw rows as an IterableDataset, in file order (never shuffled: a shuffle buffer
    is not part of `state_dict`, so a resume could not continue at the same row)."""
    source = config.dataset or ""
    if is_builtin(source):
        source = str(materialise_dataset(source))
    path = Path(source).expanduser()
    try:
        if path.exists():
            files = stream_files(path)
            builder = builder_of(files[0]) or ""
            kwargs = {"keep_linebreaks": True} if builder == "text" else {}
            return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                         streaming=True, **kwargs)
        if source.startswith((".", "/", "~")) or builder_of(path):
            raise DataError(f"{source}: dataset file not found")
        return datasets.load_dataset(source, config.dataset_config, split=config.dataset_split, streaming=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{source}: could not open the dataset as a stream: {one_line(exc)}") from None


def node_share(stream: datasets.IterableDataset, held_out_rows: int, rank: int, world: int):
    """This process's training rows: the stream minus its first `held_out_rows` rows, then every
    `world`-th row from `rank` (`split_dataset_by_node` by examples, so that any number of files
    splits over any number of processes, and the held-out rows are the same on every process)."""
    rest = stream.skip(held_out_rows) if held_out_rows else stream
    return split_dataset_by_node(rest, rank=rank, world_size=world, strategy="examples") if world > 1 else rest
