"""Train a byte-level BPE tokenizer with the `tokenizers` library, saved for `AutoTokenizer`.

Byte-level means every string round-trips (no unknown tokens); EOS and pad are real special
tokens, so padding never collides with the EOS the model must learn to emit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..errors import UserError

EOS, PAD = "<|endoftext|>", "<|pad|>"
MIN_VOCAB_SIZE = 256 + 2  # every byte, EOS and pad


def train_bpe(texts: Iterable[str], vocab_size: int, output_dir: str | Path, min_frequency: int = 2):
    """Train on `texts`, save to `output_dir`, and return the `PreTrainedTokenizerFast`."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 2 special tokens), "
                        f"got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    fast.save_pretrained(str(output_dir))
    return fast


def iter_corpus(path: str | Path, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Stream a text file (or every .txt under a directory) in ~1 MB pieces."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"{path}: corpus not found (give a .txt file or a directory of them)")
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as handle:
            while chunk := handle.read(chunk_chars):
                yield chunk
