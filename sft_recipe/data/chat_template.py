"""Chat templates: install one, render conversations with it, and read its stop tokens.

A recipe's `chat_template` (a .jinja file or a built-in name from `chat_templates/`) replaces the
tokenizer's own; the control tokens it writes as `<|name|>` literals are added to the vocabulary.
The template is saved with the tokenizer, so `generate`, `chat` and `eval` render prompts exactly
as training did. To add a built-in template, drop `NAME.jinja` into `chat_templates/`.

The template decides BOS: whatever it writes is kept, once; rendered text is always tokenized with
`add_special_tokens=False`, in training rows and generation prompts alike. A template "supports
tools" when its source refers to `tools` (a row's tool list) or `tool_calls`; rows with tools on a
template without that support are refused rather than silently losing their tools.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import jinja2
# private (checked on transformers 5.25.0): no public call compiles a template without rendering it,
# in the environment (with its `{% generation %}` tag) that `apply_chat_template` renders it in
from transformers.utils.chat_template_utils import _compile_jinja_template

from ..recipe.config import SFTConfig
from ..formats import Form
from ..errors import DataError, RecipeError, one_line
from ..formats.conversation import normalise_messages

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
# Control tokens written into templates as literals, e.g. <|im_start|> or <|eot_id|>.
TEMPLATE_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")
_TOOLS_RE = re.compile(r"\btools\b")
_TOOL_CALLS_RE = re.compile(r"\btool_calls\b")
_PROBE_Q, _PROBE_A, _PROBE_TOOL = "PROBE QUESTION", "PROBE ANSWER", "probe_tool_name"
_PROBE = [{"role": "user", "content": _PROBE_Q}, {"role": "assistant", "content": _PROBE_A}]


def setup_chat_template(tokenizer, config: SFTConfig) -> list[int]:
    """Install the recipe's `chat_template` (a .jinja file or a built-in name) on the tokenizer and
    add the control tokens it writes as `<|name|>` literals (e.g. `<|im_start|>`) that the
    vocabulary lacks, as special tokens; returns their ids, whose embeddings `model.load_model`
    initialises. Call before the model is built. The template is saved with the tokenizer
    (`chat_template.jinja`), so `generate` and `chat` use it too."""
    if config.chat_template is None:
        if config.form is Form.CHAT:
            require_template(tokenizer, config)  # before any data is prepared, not at the first conversation
        return []
    text = read_template(config.chat_template)
    check_syntax(text, config.chat_template)
    tokenizer.chat_template = text
    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(TEMPLATE_TOKEN_RE.findall(text)) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        log.info("chat template %s: added special tokens %s (vocabulary now %d)",
                 config.chat_template, " ".join(missing), len(tokenizer))
    return tokenizer.convert_tokens_to_ids(missing)


def read_template(name: str) -> str:
    builtins = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))
    if name in builtins:
        return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    path = Path(name).expanduser()
    if path.suffix == ".jinja" or path.exists() or "/" in name:
        if not path.is_file():
            raise RecipeError(f"chat_template: {name}: template file not found")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecipeError(f"chat_template: {name}: not UTF-8 text") from None
    raise RecipeError(f"chat_template: unknown built-in template '{name}' (built-ins: {', '.join(builtins)}; "
                      "or give the path of a .jinja file)")


def template_name(config: SFTConfig) -> str:
    return config.chat_template or f"the chat template of {config.resolved_tokenizer_name}"


def require_template(tokenizer, config: SFTConfig) -> None:
    try:
        tokenizer.get_chat_template()
    except ValueError:
        raise RecipeError(f"{config.resolved_tokenizer_name}: the tokenizer has no chat template; set "
                          "chat_template: chatml (built-in) or the path of a .jinja file") from None


def check_syntax(text: str, name: str) -> None:
    """A template with a Jinja syntax error fails at install time, with its line number. Compiled in
    transformers' own environment, which knows its `{% generation %}` tag."""
    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"chat_template: {name}: line {exc.lineno}: {exc.message}") from None


def template_source(tokenizer, chat_template_kwargs: Mapping | None = None) -> str:
    try:
        return tokenizer.get_chat_template((chat_template_kwargs or {}).get("chat_template"))
    except ValueError:
        raise RecipeError("the tokenizer has no chat template; set chat_template: chatml (built-in) or the path "
                          "of a .jinja file") from None


def supports_tools(template: str) -> bool:
    return bool(_TOOLS_RE.search(template) or _TOOL_CALLS_RE.search(template))


def render(tokenizer, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = False,
           chat_template_kwargs: Mapping | None = None) -> str:
    """The template's rendering (as `apply_chat_template(tokenize=False)`); errors -> ValueError."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt,
                                             **dict(chat_template_kwargs or {}))
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise DataError(f"the chat template failed on this conversation: {one_line(exc)}") from None


def special_tokens(tokenizer) -> dict[str, int]:
    """All special tokens (including added ones flagged special) -> id."""
    out = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    return {**out, **{tok.content: i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special}}


def _first_special_after(text: str, specials: Sequence[str]) -> str | None:
    best: tuple[int, int, str] | None = None
    for s in specials:
        p = text.find(s)
        if p >= 0 and (best is None or (p, -len(s)) < best[:2]):
            best = (p, -len(s), s)
    return best[2] if best else None


_MARKER_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def end_of_turn_markers(tokenizer, chat_template_kwargs: Mapping | None = None) -> list[str]:
    """The special token(s) closing an assistant turn: the FIRST special token after a probe answer
    (and after a probe tool call, when the template supports tools). ValueError if there is none."""
    template = template_source(tokenizer, chat_template_kwargs)
    try:
        cache = _MARKER_CACHE.setdefault(tokenizer, {})
    except TypeError:
        cache = {}
    if template in cache:
        return list(cache[template])
    specials = list(special_tokens(tokenizer))
    text = render(tokenizer, _PROBE, chat_template_kwargs=chat_template_kwargs)
    at = text.rfind(_PROBE_A)
    first = _first_special_after(text[at + len(_PROBE_A):], specials) if at >= 0 else None
    if first is None:
        raise RecipeError("assistant turns end without a special token (such as <|im_end|> or the EOS token), so "
                          "the model could never learn to stop; add one to the template")
    markers = [first]
    if supports_tools(template):
        call = {"role": "assistant", "tool_calls": [
            {"type": "function", "id": "abcdefghi", "function": {"name": _PROBE_TOOL, "arguments": {"x": 1}}}]}
        try:
            text = render(tokenizer, _PROBE[:1] + [call], chat_template_kwargs=chat_template_kwargs)
        except DataError:  # a template that cannot render a bare tool call: no separate marker to find
            text = ""
        at = text.rfind(_PROBE_TOOL)
        other = _first_special_after(text[at:], specials) if at >= 0 else None
        if other and other not in markers:
            markers.append(other)
    cache[template] = markers
    return list(markers)


def end_of_turn_ids(tokenizer, chat_template_kwargs: Mapping | None = None) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(m) for m in end_of_turn_markers(tokenizer, chat_template_kwargs)]


def stop_token_ids(tokenizer, chat_template_kwargs: Mapping | None = None) -> list[int]:
    """End-of-turn id(s) plus EOS: generation stops at whichever comes first."""
    stops = end_of_turn_ids(tokenizer, chat_template_kwargs)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


# First characters of answers that a tokenizer may glue onto the end of the assistant header.
_ANSWER_STARTS = ("<tool_call>", "{", "[", '"', "<", "(", "-", "*", "#", "1", "A", "a", "\u4f60")


def header_merges(tokenizer, chat_template_kwargs: Mapping | None = None) -> list[tuple[str, list[str], list[str]]]:
    """(answer start, the generation prompt's last tokens, the same text's tokens in a conversation)
    wherever a conversation does not begin with the generation prompt's own tokens: a tokenizer that
    glues the header's last character onto the answer (`\\n<` as one token), or spells the header's
    trailing whitespace differently when text follows (`\\n\\n` alone vs `\\n` `\\n`). At inference
    the model then continues from tokens it never saw there in training. Answers that start with
    whitespace are the documented case of `mask.span_labels`."""
    question = _PROBE[:1]
    prompt = render(tokenizer, question, add_generation_prompt=True, chat_template_kwargs=chat_template_kwargs)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    merges = []
    for start in _ANSWER_STARTS:
        try:
            whole = render(tokenizer, question + [{"role": "assistant", "content": start + " probe"}],
                           chat_template_kwargs=chat_template_kwargs)
        except DataError:
            continue
        if not whole.startswith(prompt):
            return []  # the template renders the last turn differently: no stable prefix to compare
        ids = tokenizer(whole, add_special_tokens=False)["input_ids"]
        if ids[:len(prompt_ids)] != prompt_ids:
            n = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), len(prompt_ids) - 1)
            tail = tokenizer.convert_ids_to_tokens(prompt_ids[n:])
            merges.append((start, tail, tokenizer.convert_ids_to_tokens(ids[n:n + len(tail) + 1])))
    return merges


def template_notes(tokenizer, chat_template_kwargs: Mapping | None = None) -> list[str]:
    """Things worth a human look (not errors): a BOS the tokenizer adds that the template omits, and
    a tokenizer that glues the end of the assistant header onto answers (`header_merges`)."""
    notes = []
    merges = header_merges(tokenizer, chat_template_kwargs)
    if merges:
        start, tail, inside = merges[0]
        starts = ", ".join(repr(m[0]) for m in merges)
        notes.append(f"the generation prompt ends with tokens {tail} but a conversation spells that text as "
                     f"{inside} before an answer starting {start!r} (also before {starts}): at inference the model "
                     "continues from tokens it was never trained after; use a tokenizer that keeps the header's "
                     "last characters (usually newlines) apart, as most real tokenizers do")
    added = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and added[:1] == [bos] and bare[:1] != [bos]:
        text = render(tokenizer, _PROBE, chat_template_kwargs=chat_template_kwargs)
        if not text.startswith(tokenizer.bos_token):
            notes.append(f"the tokenizer adds BOS {tokenizer.bos_token} but the chat template does not write it; "
                         "rows and prompts follow the template (no BOS)")
    return notes


def check_tool_support(template: str, messages: list[dict], tools: list[dict] | None) -> None:
    uses_calls = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if tools and not _TOOLS_RE.search(template):
        raise DataError("the chat template does not support tools (its source never references `tools`), "
                         "so this row's tool definitions would be silently dropped")
    if uses_calls and not supports_tools(template):
        raise DataError("the chat template does not support tools (its source never references `tools` or "
                         "`tool_calls`), but the conversation has tool calls or tool messages")


def chat_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                chat_template_kwargs: Mapping | None = None) -> str:
    """The rendered history plus the generation prompt; tokenize it with add_special_tokens=False."""
    check_tool_support(template_source(tokenizer, chat_template_kwargs), messages, tools)
    return render(tokenizer, messages, tools=tools, add_generation_prompt=True,
                  chat_template_kwargs=chat_template_kwargs)


def last_turn_prompts(rows, tokenizer, chat_template_kwargs: Mapping | None = None):
    """Held-out conversations -> `prompt` (history rendered up to the final answer, with the
    generation prompt) and `completion` (that answer), plus the generation settings for chat,
    for `generation_eval_samples`, and `shown` (the last user message, for the console).
    Conversations that do not end on a plain answer are skipped."""
    prompts, answers, shown = [], [], []
    tools_column = rows["tools"] if "tools" in rows.column_names else [None] * len(rows)
    for messages, tools in zip(rows["messages"], tools_column):
        from_row, tools = normalise_messages(messages, tools)
        last = from_row[-1] if from_row else {}
        if last.get("role") != "assistant" or not (last.get("content") or "").strip() or last.get("tool_calls"):
            continue
        prompts.append(chat_prompt(tokenizer, from_row[:-1], tools, chat_template_kwargs))
        answers.append(last["content"])
        users = [m.get("content") or "" for m in from_row if m.get("role") == "user"]
        shown.append(users[-1] if users else "")
    table = datasets.Dataset.from_dict({"prompt": prompts, "completion": answers, "shown": shown})
    return table, {"stop_token_ids": stop_token_ids(tokenizer, chat_template_kwargs), "add_special_tokens": False}
