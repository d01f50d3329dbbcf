"""One conversation -> its training rows: what the user wrote, or one clear account of what not.

- Tool-call arguments go to the template in the form it renders faithfully: a mapping or a JSON
  string, found by probing the template once (mistral-common's template HTML-escapes mappings).
- Every rendering is audited (`fidelity.lost_pieces`); `data_fidelity` decides whether a loss is an
  error (default) or a warning.
- `train_dropped_reasoning: true`: an assistant turn whose reasoning the conversation's rendering
  drops (Qwen3 before the last user turn, DeepSeek-R1 everywhere) becomes a row of its own, written
  as the model meets it at inference: the generation prompt for the turn, then the reasoning and
  the answer as the template writes a final turn, or, where even that drops it, inside the
  tokenizer's own `<think>`/`</think>` tokens. That turn is then not trained again in the whole
  conversation. A template and tokenizer with no way to write reasoning is an error.
A conversation may give several rows; `encode.py` runs this over a dataset or a stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..errors import DataError, RecipeError
from ..formats.conversation import normalise_messages
from ..recipe.config import SFTConfig
from .chat_template import (end_of_turn_markers, render, require_template, supports_tools, template_name,
                            template_notes, template_source)
from .chat_turns import Turn, locate_turns, tokenize_turns
from .fidelity import encode_lost, lost_pieces, squeeze
from .mask import DROP_EMPTY, DROP_UNANSWERED, Example, fit_turns

log = logging.getLogger("sft_recipe")
_NOTED: set[str] = set()  # template notes already said in this process
PROBE_TOOLS = [{"type": "function", "function": {
    "name": "probe_lookup", "description": "Look a place up.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "ids": {"type": "array"}}}}}]
PROBE_ARGUMENTS = {"city": 'Saint "Paul" & <Co>', "ids": [1, None, 3]}
THINK_TAGS = [("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"), ("<thinking>", "</thinking>")]


def arguments_as_text(tokenizer, kwargs: dict) -> bool:
    """Whether the template renders tool-call arguments faithfully only when given as a JSON string."""
    if not supports_tools(template_source(tokenizer, kwargs)):
        return False

    def faithful(arguments: Any) -> bool:
        conversation = [{"role": "user", "content": "Where?"}, {"role": "assistant", "tool_calls": [
            {"type": "function", "id": "a1b2c3d4e", "function": {"name": "probe_lookup", "arguments": arguments}}]}]
        try:
            whole = render(tokenizer, conversation, tools=PROBE_TOOLS, chat_template_kwargs=kwargs)
        except DataError:
            return False
        conversation[1]["tool_calls"][0]["function"]["arguments"] = PROBE_ARGUMENTS
        return not any(kind in ("tool call arguments", "escaped markup")
                       for kind, _ in lost_pieces(whole, conversation, PROBE_TOOLS))

    return not faithful(PROBE_ARGUMENTS) and faithful(json.dumps(PROBE_ARGUMENTS, ensure_ascii=False))


def think_tags(tokenizer) -> tuple[str, str] | None:
    """The reasoning delimiters the tokenizer has as tokens of their own, if any."""
    vocabulary = tokenizer.get_vocab()
    return next(((a, b) for a, b in THINK_TAGS if a in vocabulary and b in vocabulary), None)


def with_text_arguments(messages: list[dict]) -> list[dict]:
    return [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(
        c["function"]["arguments"], ensure_ascii=False)}} for c in m["tool_calls"]]} if m.get("tool_calls") else m
            for m in messages]


class ChatEncoder:
    """`(messages, tools, row) -> (examples, drop reason, what was lost)`: one conversation, for
    `encode.RowEncoder`. Checks the template once, up front."""

    def __init__(self, tokenizer, config: SFTConfig) -> None:
        require_template(tokenizer, config)
        self.tokenizer, self.config = tokenizer, config
        self.kwargs = dict(config.chat_template_kwargs)
        try:
            self.markers = end_of_turn_markers(tokenizer, self.kwargs)  # fail now, not after a run that never stops
        except RecipeError as exc:
            raise RecipeError(f"{template_name(config)}: {exc}") from None
        for note in template_notes(tokenizer, self.kwargs):
            if note not in _NOTED:  # once per run, however many sources share the template
                _NOTED.add(note)
                log.warning("%s: %s", template_name(config), note)
        self.text_arguments = arguments_as_text(tokenizer, self.kwargs)
        self.where = config.dataset or "dataset"

    def __call__(self, messages: Any, tools: Any, row: int) -> tuple[list[Example], str, str]:
        try:
            messages, tools = normalise_messages(messages, tools)
            if not messages or messages[-1]["role"] != "assistant":
                return [], DROP_UNANSWERED, ""
            return self.encode(messages, tools)
        except DataError as exc:
            raise DataError(f"{self.where}: row {row}: {exc}") from None

    def encode(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[Example], str, str]:
        shown = with_text_arguments(messages) if self.text_arguments else messages
        locate = dict(tools=tools, train_on=self.config.train_on, chat_template_kwargs=self.kwargs,
                      text_arguments=self.text_arguments)
        whole, turns = locate_turns(self.tokenizer, shown, **locate)
        lost = lost_pieces(whole, messages, tools)
        own_rows = []
        if self.config.train_dropped_reasoning:
            dropped = {int(key.split("[")[1].split("]")[0]) for kind, key in lost if kind == "reasoning"}
            dropped &= {t.message_index for t in turns if t.trained}
            own_rows = [self.reasoning_row(shown, tools, i) for i in sorted(dropped)]
            if dropped:
                lost = [(kind, key) for kind, key in lost if not (kind == "reasoning" and int(key.split("[")[1].split(
                    "]")[0]) in dropped)]
                whole, turns = locate_turns(self.tokenizer, shown, untrained=frozenset(dropped), **locate)
        rows = [tokenize_turns(self.tokenizer, whole, turns, shown)] if any(t.trained for t in turns) else []
        examples, reason = [], DROP_EMPTY
        for ids, labels in rows + own_rows:
            example, reason = fit_turns(ids, labels, self.config.max_length)
            if example is not None:
                examples.append(example)
        return examples, "" if examples else reason, encode_lost(lost)

    def reasoning_row(self, messages: list[dict], tools, i: int) -> tuple[list[int], list[int]]:
        """Assistant turn `i` with its reasoning, as the model meets it at inference (module docstring)."""
        reasoning = messages[i]["reasoning_content"]
        alone, turns = locate_turns(self.tokenizer, messages[:i + 1], tools=tools, train_on="last_assistant",
                                    chat_template_kwargs=self.kwargs, text_arguments=self.text_arguments)
        turn = turns[-1]
        if squeeze(reasoning) in squeeze(alone[turn.start:turn.end]):
            return tokenize_turns(self.tokenizer, alone, [turn], messages[:i + 1])
        tags = think_tags(self.tokenizer)
        if tags is None:
            raise DataError(f"key 'messages[{i}].reasoning_content': the chat template drops reasoning and the "
                            f"tokenizer has no <think>-style tokens to write it with, so train_dropped_reasoning "
                            f"cannot train it (set data_fidelity: warn to train the answers without it)")
        prompt = render(self.tokenizer, messages[:i], tools=tools, add_generation_prompt=True,
                        chat_template_kwargs=self.kwargs)
        opening = "" if prompt.rstrip().endswith(tags[0]) else tags[0] + "\n"
        whole = (f"{prompt}{opening}{reasoning.strip()}\n{tags[1]}\n\n{(messages[i].get('content') or '').strip()}"
                 f"{self.markers[0]}")
        return tokenize_turns(self.tokenizer, whole, [Turn(i, len(prompt), len(whole), True)], messages[:i + 1])
