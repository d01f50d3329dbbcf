"""Text in a message is text: a special token's spelling inside what a user wrote stays characters.

A fast tokenizer reads every occurrence of a special token's string as that token, wherever it
comes from. An answer that quotes `<|im_end|>` (chat logs, code about chat formats, scraped pages)
would then hold the real end-of-turn token: the turn would be cut there and its real end marker
left untrained, and `generate` would stop mid-answer. Here the rendering is tokenized as usual
except at the spans that lie inside a message's own text, which are tokenized with
`split_special_tokens=True`. A special token's string is a segment boundary for the tokenizer
anyway, so the text around it tokenizes exactly as before; only the quoted marker becomes text.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence

_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_pattern(tokenizer) -> re.Pattern[str] | None:
    """One regex for every string the tokenizer reads as a special token, longest first (built once
    per tokenizer and vocabulary size: a chat template may add tokens); None if it has none."""
    key = len(tokenizer)
    cached = _SPECIALS.get(tokenizer)
    if cached is None or cached[0] != key:
        strings = set(tokenizer.all_special_tokens)
        strings |= {tok.content for tok in tokenizer.added_tokens_decoder.values() if tok.special}
        ordered = sorted((s for s in strings if s), key=len, reverse=True)
        cached = (key, re.compile("|".join(map(re.escape, ordered))) if ordered else None)
        _SPECIALS[tokenizer] = cached
    return cached[1]


def literal_spans(rendering: str, texts: Iterable[str], specials: re.Pattern[str] | None) -> list[tuple[int, int]]:
    """Character spans of special-token strings that `rendering` has inside one of `texts` (what the
    user wrote); the template's own markup outside them keeps its special tokens."""
    if specials is None:
        return []
    spans: set[tuple[int, int]] = set()
    for text in {t for t in texts if t and specials.search(t)}:
        inside = [m.span() for m in specials.finditer(text)]
        at = rendering.find(text)
        while at >= 0:
            spans.update((at + a, at + b) for a, b in inside)
            at = rendering.find(text, at + 1)
    return merge_spans(spans)  # a text found twice, overlapping itself: one span


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans in order, overlapping ones joined into one."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def encode(tokenizer, text: str, literal: Sequence[tuple[int, int]] = ()) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) of `text` without added special tokens; `literal` spans as text."""
    if not literal:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cuts = [0] + [p for span in literal for p in span] + [len(text)]
    for n, (start, end) in enumerate(zip(cuts, cuts[1:])):
        if start == end:
            continue
        piece_ids, piece_offsets = _piece(tokenizer, text[start:end], as_text=n % 2 == 1, first=start == 0)
        ids += piece_ids
        offsets += [(a + start, b + start) for a, b in piece_offsets]
    return ids, offsets


def _piece(tokenizer, piece: str, as_text: bool, first: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """One segment's tokens. A segment that does not start the text is tokenized behind an anchor
    character whose tokens are then dropped: SentencePiece-style tokenizers would otherwise give it
    the prefix space of a text's first word."""
    anchor = "" if first else "\n"
    enc = tokenizer(anchor + piece, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=as_text)
    pairs = list(zip(enc["input_ids"], enc["offset_mapping"]))
    if anchor and any(a < len(anchor) < b for _, (a, b) in pairs):  # the anchor merged into the piece
        enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=as_text)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    kept = [(i, (a - len(anchor), b - len(anchor))) for i, (a, b) in pairs
            if b > len(anchor) or a >= len(anchor) and b > a]
    return [i for i, _ in kept], [o for _, o in kept]


def message_texts(messages: Sequence[dict]) -> list[str]:
    """What a user wrote in a conversation: contents, reasoning and tool-call arguments given as text."""
    texts = []
    for m in messages:
        texts += [m.get("content"), m.get("reasoning_content")]
        texts += [c["function"].get("arguments") for c in m.get("tool_calls") or []]
    return [t for t in texts if isinstance(t, str)]
