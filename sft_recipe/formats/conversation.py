"""Conversations as data: validate a row's `messages` (and `tools`) and return clean objects.

Roles are system, user, assistant and tool. An assistant message may carry `reasoning_content`
(aliases `reasoning`, `thinking`) and OpenAI-format `tool_calls`
(`[{"type": "function", "function": {"name": ..., "arguments": {...}}}]`, arguments a mapping or a
JSON string); a tool message may carry `tool_call_id` and `name`. A row's `tools` is a list of
JSON schemas (or a JSON string of one).

`content` may also be a list of OpenAI-style content parts (`[{"type": "text", "text": ...}]`, as
the OpenAI chat format and exported chat logs write it). The text parts are joined in order with
"\n", as vLLM's OpenAI server does for templates that take a string, here, before any template:
every template then gets the same string at training and at inference (left to themselves, the
templates differ: Mistral's join the parts, Qwen3's renders the turn empty, Llama 3.2's prints the
list's Python repr, and Qwen2.5, Phi-3, SmolLM2 and DeepSeek-R1's raise). A part of any other type
(an image, audio) cannot be trained on text: it is refused in one line naming the message and part.

Keys whose value is None are dropped, recursively: Hugging Face `datasets` unifies struct fields
across rows, so mapping-valued arguments and tool schemas arrive with every other row's keys set
to None. List items that are None are the user's and stay. JSON strings are parsed after that, so a
dataset that needs an explicit null argument passes its arguments (or tools) as JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .base import kind

ROLES = ("system", "user", "assistant", "tool")
TEXT_PARTS = ("text", "input_text", "output_text")  # the chat format's, and the Responses API's
REASONING_ALIASES = ("reasoning_content", "reasoning", "thinking")


def _drop_none(value: Any) -> Any:
    """None-valued *keys* are what `datasets` adds when it unifies structs across rows; a None *item*
    of a list is the user's own null (`"ids": [1, null, 3]`) and stays."""
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def _json_object(value: Any, where: str, what: str = "an object") -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"key '{where}' is not valid JSON: {exc.msg} (line {exc.lineno} col {exc.colno})") from None
        return value
    return _drop_none(value)


def _normalise_tools(tools: Any) -> list[dict] | None:
    if tools is None:
        return None
    from_json = isinstance(tools, str)
    if from_json:
        tools = _json_object(tools, "tools")  # explicit nulls kept
    if not isinstance(tools, (list, tuple)):
        raise DataError(f"key 'tools' must be a list of JSON schemas (or a JSON string of one), "
                        f"got {type(tools).__name__}")
    out = []
    for k, tool in enumerate(tools):
        tool = tool if from_json else _json_object(tool, f"tools[{k}]")
        if not isinstance(tool, dict):
            raise DataError(f"key 'tools[{k}]' must be an object (a JSON schema), got {type(tool).__name__}")
        out.append(tool)
    return out or None


def _normalise_tool_calls(calls: Any, where: str, keep_text_arguments: bool = False) -> list[dict]:
    if not isinstance(calls, (list, tuple)):
        raise DataError(f"key '{where}' must be a list, got {type(calls).__name__}")
    out = []
    for k, call in enumerate(calls):
        w = f"{where}[{k}]"
        if isinstance(call, str):
            call = _json_object(call, w)
        if not isinstance(call, Mapping):
            raise DataError(f"key '{w}' must be an object, got {type(call).__name__}")
        call = _drop_none(call)
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise DataError(f"key '{w}.function' must be an object with name and arguments")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError(f"key '{w}.function.name' must be a string")
        text = fn.get("arguments", {})
        args = _json_object(text, f"{w}.function.arguments")
        if not isinstance(args, dict):
            raise DataError(f"key '{w}.function.arguments' must be an object (or a JSON string of one)")
        if keep_text_arguments and isinstance(text, str):
            args = text  # checked above; the template gets the JSON text it renders faithfully
        if not isinstance(call.get("type", "function"), str):
            raise DataError(f"key '{w}.type' must be a string")
        if "id" in call and not isinstance(call["id"], str):
            raise DataError(f"key '{w}.id' must be a string")
        out.append({**call, "type": call.get("type", "function"), "function": {**fn, "arguments": args}})
    return out


def join_content_parts(content: Any, where: str) -> Any:
    """A list of content parts -> its text parts joined with "\n" (module docstring); anything else as is."""
    if not isinstance(content, (list, tuple)):
        return content
    texts = []
    for k, part in enumerate(content):
        part = _drop_none(part)
        if not isinstance(part, Mapping):
            raise DataError(f"key '{where}.content[{k}]' must be a content part {{type: text, text}}, got {kind(part)}")
        if part.get("type") not in TEXT_PARTS:
            raise DataError(f"key '{where}.content[{k}].type': a {part.get('type')!r} part cannot be trained on; only "
                            f"text parts ({', '.join(TEXT_PARTS)}) can: drop the row or its other parts")
        if not isinstance(part.get("text"), str):
            raise DataError(f"key '{where}.content[{k}].text' must be a string, got {kind(part.get('text'))}")
        texts.append(part["text"])
    return "\n".join(texts)


def with_joined_parts(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`row` with the content parts of the message lists under `keys` joined (the same object when
    there are none), so that a file mixing string and list contents has one type per field."""
    out = row
    for key in keys:
        messages = row.get(key)
        if isinstance(messages, list) and any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                              for m in messages):
            out = {**out, key: [{**m, "content": join_content_parts(m["content"], f"{key}[{i}]")}
                                if isinstance(m, dict) and isinstance(m.get("content"), list) else m
                                for i, m in enumerate(messages)]}
    return out


def normalise_messages(messages: Any, tools: Any = None, keep_text_arguments: bool = False
                       ) -> tuple[list[dict], list[dict] | None]:
    """Validate a conversation and return clean Python objects: (messages, tools).

    Drops None-valued keys recursively, parses JSON-string arguments/tools, maps reasoning aliases to
    `reasoning_content`, drops empty `tool_calls`. Raises DataError naming the offending key
    (the caller adds the file and row). `keep_text_arguments`: JSON-string arguments are checked but
    stay text (`data.chat_rows` gives a template the form it renders faithfully)."""
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"key 'messages' must be a list of {{role, content}}, got {kind(messages)}")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise DataError(f"key '{where}' must be an object with role and content, got {type(message).__name__}")
        m = _drop_none(message)
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"key '{where}.role' must be one of {', '.join(ROLES)}, got {role!r}")
        reasoning = next((m.pop(k) for k in REASONING_ALIASES if k in m), None)
        for k in REASONING_ALIASES:
            m.pop(k, None)
        if reasoning is not None:
            if role != "assistant":
                raise DataError(f"key '{where}.reasoning_content' is only allowed on assistant messages")
            if not isinstance(reasoning, str):
                raise DataError(f"key '{where}.reasoning_content' must be a string")
            m["reasoning_content"] = reasoning
        if "tool_calls" in m:
            if role != "assistant":
                raise DataError(f"key '{where}.tool_calls' is only allowed on assistant messages")
            m["tool_calls"] = _normalise_tool_calls(m["tool_calls"], f"{where}.tool_calls", keep_text_arguments)
            if not m["tool_calls"]:
                del m["tool_calls"]
        if "content" in m:
            m["content"] = join_content_parts(m["content"], where)
        content = m.get("content")
        if "tool_calls" in m and content == "":
            del m["content"]  # OpenAI convention: a tool-call turn has no content
        elif not isinstance(content, str):
            if not (role == "assistant" and "tool_calls" in m and content is None):
                raise DataError(f"key '{where}.content' must be a string, got {kind(content)}")
        for key in ("tool_call_id", "name"):
            if key in m and not isinstance(m[key], str):
                raise DataError(f"key '{where}.{key}' must be a string")
        out.append(m)
    return out, _normalise_tools(tools)
