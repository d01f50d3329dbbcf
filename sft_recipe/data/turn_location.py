"""Where each assistant turn starts, when the template has no `{% generation %}` blocks: steps b and
c of `chat_turns` per turn (`TurnLocator`), and linear location from two anchors (`Anchors`).

Locating every turn by its own prefix rendering costs a rendering of the conversation so far per
turn: quadratic in the number of turns (0.19 ms per turn at 8 turns, 0.33 at 32 on Qwen2.5). The
anchors need three renderings per conversation, whatever its length: the whole conversation with
sentinels in place of every text (where each message's content sits), and the prefix of the last
assistant turn, located by the per-turn method. From that turn they take the template text that
runs from the end of the previous message's content to the turn's start (the previous message's
closing and the generation prompt), and the generation prompt alone. Every other turn starts where
the same text ends before its content; a turn where neither anchor matches is located by the
per-turn method, as before. `tests/data/test_turn_location.py` checks that both give the same spans.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

_SENTINEL_RE = re.compile(r"ZQXSNT(\d+)([a-z])(\d+)QZX")


def sentinel(j: int, kind: str, k: int = 0) -> str:
    return f"ZQXSNT{j}{kind}{k}QZX"


def with_sentinels(message: dict, j: int) -> dict:
    """The message with its non-blank content (any role), reasoning and tool-call names replaced by
    unique ASCII sentinels (unchanged by trim/strip/tojson)."""
    m = dict(message)
    if isinstance(m.get("content"), str) and m["content"].strip():
        m["content"] = sentinel(j, "c")
    if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"].strip():
        m["reasoning_content"] = sentinel(j, "r")
    if m.get("tool_calls"):
        m["tool_calls"] = [{**c, "function": {**c["function"], "name": sentinel(j, "t", k)}}
                           for k, c in enumerate(m["tool_calls"])]
    return m


def _tail_after_last_sentinel(text: str) -> str:
    return text[max((m.end() for m in _SENTINEL_RE.finditer(text)), default=0):]


def _ambiguous(whole: str, literals: list[str]) -> bool:
    """Whether a message's text spells a piece of the template that separates two messages (a user
    quoting `<|im_end|>\n<|im_start|>assistant\n`, an answer quoting the next turn's header): the
    match above would then end that message where the quote starts, and every region after it would
    be off. The first and last pieces are pinned to the ends of the rendering, so a text may quote
    them (an answer quoting the final end-of-turn marker)."""
    inner = literals[1:-1]
    text = whole[len(literals[0]):len(whole) - len(literals[-1])] if len(literals) > 1 else ""
    return any(text.count(piece) != sum(x.count(piece) for x in inner) for piece in set(inner) if piece)


def sentinel_regions(whole: str, sentinel_text: str) -> dict[int, tuple[int, int]] | None:
    """Match the real rendering against the sentinel rendering; {message index: (start, end)} of
    each message's rendered text, or None when the two renderings do not align, or align in more
    than one way (`_ambiguous`)."""
    keys, literals, last = [], [], 0
    for m in _SENTINEL_RE.finditer(sentinel_text):
        literals.append(sentinel_text[last:m.start()])
        keys.append(m.group(0))
        last = m.end()
    literals.append(sentinel_text[last:])
    if len(set(keys)) != len(keys):
        return None
    pattern = "(.*?)".join(re.escape(lit) for lit in literals)
    match = re.fullmatch(pattern, whole, re.DOTALL)
    if match is None or _ambiguous(whole, literals):
        return None
    regions: dict[int, tuple[int, int]] = {}
    for g, key in enumerate(keys, start=1):
        j = int(_SENTINEL_RE.fullmatch(key).group(1))
        s, e = match.span(g)
        if j in regions:
            s, e = min(s, regions[j][0]), max(e, regions[j][1])
        regions[j] = (s, e)
    return regions


def lead(probe: str, prompt: str, i: int) -> str:
    """What the template writes in assistant turn i before its first sentinel, beyond its generation
    prompt: both renderings (all contents as sentinels) are cut after their last earlier sentinel; the
    lead is the probe's tail minus the prompt's tail when the one starts with the other, else ""."""
    first = min((m.start() for m in _SENTINEL_RE.finditer(probe) if int(m.group(1)) == i), default=None)
    if first is None:
        return ""
    tail, prompt_tail = _tail_after_last_sentinel(probe[:first]), _tail_after_last_sentinel(prompt)
    return tail[len(prompt_tail):] if tail.startswith(prompt_tail) else ""


Render = Callable[[list, bool], str]  # (messages, add_generation_prompt) -> the template's text


@dataclass
class TurnLocator:
    """Per-turn location: (start, content end) of assistant turn i at or after `pos`, by its prefix
    rendering (step b), or else in the sentinel rendering: after the generation prompt where it
    precedes the turn's text, or by the template's lead (step c); None otherwise.
    The sentinel rendering is made once, when first needed."""
    whole: str
    messages: list[dict]
    rend: Render
    _regions: dict[int, tuple[int, int]] | None | bool = field(default=False, repr=False)
    _prefixes: dict[tuple[int, bool], str] = field(default_factory=dict, repr=False)

    def prefix(self, i: int, generation: bool) -> str:
        """The rendering of the messages before i (with the generation prompt), made once."""
        if (i, generation) not in self._prefixes:
            self._prefixes[i, generation] = self.rend(self.messages[:i], generation)
        return self._prefixes[i, generation]

    @cached_property
    def marked(self) -> list[dict]:
        return [with_sentinels(m, j) for j, m in enumerate(self.messages)]

    def generation(self, i: int) -> str:
        """What the template adds for the generation prompt after the messages before i ("" when the
        rendering with it does not extend the rendering without it)."""
        prompt, history = self.prefix(i, True), self.prefix(i, False)
        return prompt[len(history):] if prompt.startswith(history) else ""

    @property
    def regions(self) -> dict[int, tuple[int, int]] | None:
        """{message index: (start, end) of its rendered text}, or None when the renderings do not align."""
        if self._regions is False:
            self._regions = sentinel_regions(self.whole, self.rend(self.marked, False))
        return self._regions  # type: ignore[return-value]

    def locate(self, i: int, pos: int) -> tuple[int, int] | None:
        prompt = self.prefix(i, True)
        if self.whole.startswith(prompt) and len(prompt) >= pos:
            return len(prompt), len(prompt)
        regions = self.regions
        if not regions or i not in regions or regions[i][0] < pos:
            return None
        rs, content_end = regions[i]
        # The generation prompt, where the rendering has it right before this turn's text (Qwen3 writes
        # an empty think block into the prefix's last answer, so the prefix is not a prefix).
        generation = self.generation(i)
        before = max(pos, regions[i - 1][1]) if i - 1 in regions else pos
        if generation.strip() and (at := self.whole.rfind(generation, before, rs)) >= 0:
            return at + len(generation), content_end
        marked = self.marked
        lead_text = lead(self.rend(marked[:i + 1], False), self.rend(marked[:i], True), i)
        fits = lead_text and rs - len(lead_text) >= pos and self.whole[rs - len(lead_text):rs] == lead_text
        return (rs - len(lead_text) if fits else rs), content_end


@dataclass
class Anchors:
    """The two anchors of the module docstring, taken from the last assistant turn."""
    regions: dict[int, tuple[int, int]]
    lead_in: str
    generation: str

    @classmethod
    def build(cls, whole: str, messages: list[dict], assistants: list[int], locator: TurnLocator) -> Anchors | None:
        regions = locator.regions
        last = assistants[-1] if assistants else None
        if not regions or last not in regions or last - 1 not in regions:
            return None
        found = locator.locate(last, 0)
        if found is None or not regions[last - 1][1] <= found[0] <= regions[last][0]:
            return None
        return cls(regions, whole[regions[last - 1][1]:found[0]], locator.generation(last))

    def start(self, whole: str, i: int, pos: int) -> int | None:
        """Where turn i's trained span starts, or None when the anchors do not tell: only between
        the text of the message right before it and its own (a message with no text between them,
        such as an empty answer, leaves the turn to the per-turn method)."""
        if i not in self.regions or i - 1 not in self.regions:
            return None
        before, content = self.regions[i - 1][1], self.regions[i][0]
        if self.lead_in and whole.startswith(self.lead_in, before) and pos <= before + len(self.lead_in) <= content:
            return before + len(self.lead_in)
        if self.generation.strip():
            at = whole.rfind(self.generation, max(before, pos), content)
            if at >= 0:
                return at + len(self.generation)
        return None
