"""Nothing the user wrote is lost on the way to the tokens: an audit of every rendered conversation.

A chat template may drop or alter parts of a row without a word: Mistral v0.3 writes the system
prompt only into a generation prompt, DeepSeek-R1 and Phi-3 drop reasoning, Qwen3 keeps it only
after the last user turn, mistral-common's template HTML-escapes mapping-valued tool arguments.
`lost_pieces` checks, for one rendering, that every piece of the row appears in it: the system
prompt, each message's content, each reasoning field, each tool's name, each call's name and
arguments (as JSON, whitespace aside), and each tool result. It is a handful of substring searches
on text the template already produced, so it costs little next to rendering and tokenizing.

`FidelityReport` counts what is lost per kind over a dataset and keeps one example (file, row,
what); `data_fidelity: error` (the default) stops before training with one line, `warn` says it
in one block and trains what the template wrote.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError

log = logging.getLogger("sft_recipe")
_SPACE = re.compile(r"\s+")
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|quot|amp|lt|gt|apos);")
SEPARATOR = ";"


def squeeze(text: str) -> str:
    """Whitespace removed: templates trim, indent and re-wrap; they must not change the rest."""
    return _SPACE.sub("", text)


def argument_forms(arguments: Any) -> list[str]:
    """A call's arguments as JSON, in the user's key order and sorted, with and without escaping
    non-ASCII characters (templates differ), whitespace removed."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return [squeeze(arguments)]
    return [squeeze(json.dumps(arguments, ensure_ascii=ascii_, sort_keys=sort))
            for ascii_ in (False, True) for sort in (False, True)]


def collapse(text: str) -> str:
    """Runs of whitespace as one space, ends trimmed: templates trim and re-wrap, never join words."""
    return _SPACE.sub(" ", text).strip()


class Reader:
    """Finds the row's texts in a rendering in the order they were written, so that a short piece
    ("a d") is not "found" inside the template's own words ("header"); a piece the template moved
    (Mistral writes the system prompt into the last user turn) is still found where it went."""

    def __init__(self, whole: str) -> None:
        self.text, self.at = collapse(whole), 0

    def find(self, piece: str) -> bool:
        # As written, or JSON-escaped (Llama 3 writes tool results with `tojson`: the same text,
        # losslessly quoted, at training and at inference alike).
        forms = [collapse(piece), collapse(json.dumps(piece, ensure_ascii=False)[1:-1])]
        for form in forms:
            p = self.text.find(form, self.at)
            if p >= 0:
                self.at = p + len(form)
                return True
        return any(form in self.text for form in forms)


def lost_pieces(whole: str, messages: list[dict], tools: list[dict] | None) -> list[tuple[str, str]]:
    """(kind, key) of every piece of the conversation that the rendering `whole` does not contain,
    and HTML-escaped markup (`&#34;`) that the row never wrote (the model would learn to emit it)."""
    flat, reader = squeeze(whole), Reader(whole)
    lost: list[tuple[str, str]] = []
    if _ENTITY.search(whole):  # rare: only then is what the row wrote worth serialising
        written = " ".join(json.dumps(m, ensure_ascii=False) for m in messages) + json.dumps(tools or [])
        entities = sorted({e for e in _ENTITY.findall(whole) if e not in written})
        if entities:
            lost.append(("escaped markup", f"the rendering ({' '.join(entities)})"))
    for i, message in enumerate(messages):
        role, content = message["role"], message.get("content")
        reasoning = message.get("reasoning_content")  # written before the answer
        if isinstance(reasoning, str) and reasoning.strip() and not reader.find(reasoning):
            lost.append(("reasoning", f"messages[{i}].reasoning_content"))
        if isinstance(content, str) and content.strip() and not reader.find(content):
            kind = {"system": "system prompt", "tool": "tool result"}.get(role, "message content")
            lost.append((kind, f"messages[{i}].content"))
        for k, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            if fn.get("name") and squeeze(fn["name"]) not in flat:
                lost.append(("tool call name", f"messages[{i}].tool_calls[{k}].function.name"))
            arguments = fn.get("arguments")
            if arguments and not any(form in flat for form in argument_forms(arguments)):
                lost.append(("tool call arguments", f"messages[{i}].tool_calls[{k}].function.arguments"))
    for k, tool in enumerate(tools or []):
        spec = tool.get("function", tool) if isinstance(tool, dict) else {}
        name = spec.get("name") if isinstance(spec, dict) else None
        if isinstance(name, str) and name and squeeze(name) not in flat:
            lost.append(("tool list", f"tools[{k}]"))
    return lost


def encode_lost(lost: list[tuple[str, str]]) -> str:
    """As one string column of a `datasets.map` (empty: nothing lost)."""
    return SEPARATOR.join(f"{kind}@{key}" for kind, key in lost)


@dataclass
class FidelityReport:
    """What a template dropped or altered over one dataset, per kind, with the first example."""

    source: str
    rows: int = 0
    rows_lost: int = 0
    counts: Counter = field(default_factory=Counter)
    example: str = ""

    def add(self, row: int, lost: str | list[tuple[str, str]]) -> None:
        self.rows += 1
        pieces = [tuple(p.split("@", 1)) for p in lost.split(SEPARATOR)] if isinstance(lost, str) and lost \
            else list(lost or [])
        if not pieces:
            return
        self.rows_lost += 1
        self.counts.update(kind for kind, _ in pieces)
        if not self.example:
            kind, key = pieces[0]
            self.example = f"{self.source}: row {row}: {key} ({kind}) is not in what the template wrote"

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.counts.most_common())
        return (f"the chat template drops or alters what {self.rows_lost} of {self.rows} rows wrote ({kinds}); "
                f"e.g. {self.example}")

    def enforce(self, mode: str, template: str, hints: str = "") -> None:
        """`error`: one line, exit 2 (before any training); `warn`: one block, then train what was written."""
        if not self.rows_lost:
            return
        if mode == "error":
            raise DataError(f"{template}: {self.summary()}; {hints}set data_fidelity: warn to train what the "
                            f"template writes")
        log.warning("data fidelity (%s): %s; training what the template writes (data_fidelity: warn)",
                    template, self.summary())
