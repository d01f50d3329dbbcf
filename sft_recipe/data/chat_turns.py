"""Where each assistant turn sits in a conversation rendered ONCE, as the model will see it.

A row's ids are the whole rendering tokenized with `add_special_tokens=False` (the template writes
any BOS), so there are no per-piece artefacts such as SentencePiece's prefix space. Each assistant
turn is located as a character span of that rendering; `mask.span_labels` maps spans to tokens.

The span of a turn runs from the end of its role header (the generation prompt) to the end of the
first end-of-turn marker after its content: what the template writes between header and content
that the model must produce itself (Qwen3's `<think>...</think>`, `<tool_call>` wrappers,
Mistral's leading space, `[TOOL_CALLS]`) is inside it. Turn starts are found, for any template:
  a. from `{% generation %}` blocks when the template has one per assistant message (extended to
     the end-of-turn marker after the block);
  b. else by prefix: `render(messages[:i], add_generation_prompt=True)` when the whole rendering
     starts with it (most templates);
  c. else (the template rewrites history: Mistral moves or drops the system prompt, DeepSeek-R1
     writes `<think>\\n` in the generation prompt only) with sentinels: the conversation rendered
     again with every message's content, reasoning and tool-call names replaced by unique ASCII
     markers; the literal text between markers, matched against the real rendering, gives where
     each turn's content sits (robust to a user quoting the answer), and the turn starts at its
     content or earlier by the "lead" the template writes between header and content;
  d. last resort: the first occurrence of the turn's text after the previous turn.
Steps b and c per turn cost a rendering of the conversation so far per turn (quadratic in turns);
`turn_location.Anchors` locates the last turn that way and every other turn by the same template
text before its content, at a fixed number of renderings per conversation (linear), falling back
to b-d per turn where the anchors do not match. A turn ends at the first end-of-turn marker after
its content *as rendered* (from the sentinel rendering), so an answer quoting the marker is
trained whole even where the template trims it. A turn that cannot be located is a DataError
naming the message, unless its only text is reasoning the template drops (never trained; the
fidelity audit reports the loss).

History rewriting: each turn is trained exactly as it appears in the single whole rendering. So
Qwen3 trains earlier answers without their reasoning (its template drops it) and the answers after
the last user message with it; the DeepSeek-R1 template strips reasoning from every turn, so no
reasoning is trained with it; Mistral's v0.3 template writes the system prompt only into a
generation prompt, so training rows never contain it. A valid conversation never errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from transformers.utils.chat_template_utils import render_jinja_template

from ..errors import DataError, one_line
from .chat_template import check_tool_support, end_of_turn_markers, render, template_source
from .literal import encode as encode_literal, literal_spans, message_texts, special_pattern
from .mask import span_labels
from .turn_location import Anchors, TurnLocator
from ..formats.conversation import normalise_messages

TRAIN_ON = ("all_assistant", "last_assistant")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Turn:
    """One assistant message located in the rendering: characters [start, end) are its trained span
    (end includes the end-of-turn marker); `trained` says whether `train_on` and content select it."""
    message_index: int
    start: int
    end: int
    trained: bool


def _next_marker(whole: str, markers: Sequence[str], start: int) -> tuple[int, int] | None:
    found = [(p, p + len(m)) for m in markers if (p := whole.find(m, start)) >= 0]
    return min(found) if found else None


def _generation_spans(tokenizer, messages, tools, kwargs, template) -> tuple[str, list[tuple[int, int]]] | None:
    try:
        rendered, indices = render_jinja_template(
            conversations=[messages], tools=tools, chat_template=template, return_assistant_tokens_mask=True,
            add_generation_prompt=False, **{**tokenizer.special_tokens_map, **{k: v for k, v in kwargs.items()
                                                                            if k != "chat_template"}})
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise DataError(f"the chat template failed on this conversation: {one_line(exc)}") from None
    return rendered[0], [tuple(s) for s in indices[0]]


def locate_turns(tokenizer, messages: Any, *, tools: Any = None, train_on: str = "all_assistant",
                 chat_template_kwargs: Mapping | None = None, untrained: frozenset[int] = frozenset(),
                 text_arguments: bool = False, by_anchor: bool = True) -> tuple[str, list[Turn]]:
    """The whole rendering and every assistant turn's trained span in it (see the module docstring).
    Turns whose message index is in `untrained` are located but not trained (they are trained in a
    row of their own: `chat_rows`); `text_arguments` keeps JSON-string tool-call arguments as text.
    `by_anchor=False` locates every turn by its own prefix rendering (quadratic in the number of
    turns; the reference the tests compare the anchored location with)."""
    if train_on not in TRAIN_ON:
        raise DataError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    messages, tools = normalise_messages(messages, tools, keep_text_arguments=text_arguments)
    kwargs = dict(chat_template_kwargs or {})
    template = template_source(tokenizer, kwargs)
    check_tool_support(template, messages, tools)
    markers = end_of_turn_markers(tokenizer, kwargs)
    whole = render(tokenizer, messages, tools=tools, chat_template_kwargs=kwargs)
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]

    def rend(msgs, gen):
        return render(tokenizer, msgs, tools=tools, add_generation_prompt=gen, chat_template_kwargs=kwargs)

    spans: list[tuple[int, int]] = []
    blocks = None
    if _GENERATION_RE.search(template):
        text, blocks = _generation_spans(tokenizer, messages, tools, kwargs, template)
        if text != whole or len(blocks) != len(assistants):
            blocks = None
    if blocks is not None:
        for s, e in blocks:
            inside = _next_marker(whole[:e], markers, s)
            end = inside[1] if inside else (_next_marker(whole, markers, e) or (None, None))[1]
            if end is None:
                raise DataError(f"assistant turn at characters {s}..{e} is not closed by an end-of-turn marker "
                                 f"({' '.join(markers)})")
            spans.append((s, end))
    else:
        pos = 0
        locator = TurnLocator(whole, messages, rend)
        anchors = Anchors.build(whole, messages, assistants, locator) if by_anchor else None
        for i in assistants:
            at = anchors.start(whole, i, pos) if anchors is not None else None
            found = (at, at) if at is not None else locator.locate(i, pos)
            if found is None and _has_text(messages[i], reasoning=False):
                found = _search_turn(whole, messages[i], i, pos, locator.prefix(i, True), locator.prefix(i, False))
            # Reasoning alone that neither rendering places: nothing to train, and searching for its
            # text could match a later message; the fidelity audit reports a template that drops it.
            if found is None:
                spans.append((pos, pos))  # nothing to locate and never trained: leave pos where it is
                continue
            start, content_end = found
            region = locator.regions.get(i) if locator.regions else None
            if region is not None and region[0] >= start and region[1] >= content_end:
                content_end = region[1]  # the content as rendered, even where the template trims a quoted marker
            else:
                content_end = _past_own_text(whole, messages[i], content_end, markers)
            marker = _next_marker(whole, markers, content_end)
            if marker is None:
                raise DataError(f"key 'messages[{i}]': the assistant turn is not closed by an end-of-turn marker "
                                 f"({' '.join(markers)}) in the rendering")
            spans.append((start, marker[1]))
            pos = marker[1]
    turns = []
    for n, (i, (s, e)) in enumerate(zip(assistants, spans)):
        selected = (train_on == "all_assistant" or n == len(assistants) - 1) and i not in untrained
        turns.append(Turn(i, s, e, _has_text(messages[i], reasoning=False) and selected and e > s))
    return whole, turns


def _past_own_text(whole: str, message: dict, content_end: int, markers: Sequence[str]) -> int:
    """Where the turn's own text ends, when that text spells an end-of-turn marker (an answer quoting
    `<|im_end|>`): the turn's end is the first marker after it, not the quoted one."""
    for text in (message.get("reasoning_content"), message.get("content")):
        if isinstance(text, str) and any(m in text for m in markers):
            at = whole.find(text, content_end)
            if at >= 0:
                content_end = at + len(text)
    return content_end


def _has_text(message: dict, reasoning: bool = True) -> bool:
    """Whether an assistant message has something to train: non-blank content or tool calls
    (`reasoning`: count non-blank reasoning too, for locating)."""
    return bool((message.get("content") or "").strip() or message.get("tool_calls")
                or (reasoning and (message.get("reasoning_content") or "").strip()))


def _search_turn(whole: str, message: dict, i: int, pos: int, prompt: str, history: str) -> tuple[int, int]:
    """Last resort: first occurrence of the turn's text after `pos` (after the generation-prompt text
    when that is found there). Returns (start, content_end)."""
    header = prompt[len(history):] if prompt.startswith(history) else ""
    after = pos
    if header.strip():
        h = whole.find(header, pos)
        if h >= 0:
            after = h + len(header)
    keys = [(message.get("reasoning_content") or "").strip(), (message.get("content") or "").strip()]
    keys += [c["function"]["name"] for c in message.get("tool_calls", [])]
    key = next((k for k in keys if k), "")
    if not key:
        return after, after
    at = whole.find(key, after)
    if at < 0:
        raise DataError(f"key 'messages[{i}]': cannot locate the assistant turn in the template's rendering "
                         "(the template changes it beyond recognition)")
    return (after if after > pos else at), at + len(key)


def tokenize_turns(tokenizer, whole: str, turns: Sequence[Turn],
                   messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a rendering; special-token spellings inside the messages stay text."""
    literal = literal_spans(whole, message_texts(messages), special_pattern(tokenizer))
    ids, offsets = encode_literal(tokenizer, whole, literal)
    return ids, span_labels(whole, ids, offsets, [(t.start, t.end) for t in turns if t.trained])
