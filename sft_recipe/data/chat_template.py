"""Chat templates: install one, render conversations with it, and read its stop tokens.

A recipe's `chat_template` (a .jinja file or a built-in name from `chat_templates/`) replaces the
tokenizer's own; the control tokens it writes as `<|name|>` literals are added to the vocabulary.
The template is saved with the tokenizer, so `generate`, `chat` and `eval` render prompts exactly
as training did. To add a built-in template, drop `NAME.jinja` into `chat_templates/`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets
import jinja2
from transformers.utils.chat_template_utils import _compile_jinja_template

from ..config import SFTConfig
from ..errors import DataError, RecipeError

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
# Control tokens written into templates as literals, e.g. <|im_start|> or <|eot_id|>.
TEMPLATE_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def setup_chat_template(tokenizer, config: SFTConfig) -> None:
    """Install the recipe's `chat_template` (a .jinja file or a built-in name) on the tokenizer and
    add the control tokens it writes as `<|name|>` literals (e.g. `<|im_start|>`) that the
    vocabulary lacks, as special tokens. Call before the model is built: it gets `len(tokenizer)` embeddings. The template is
    saved with the tokenizer (`chat_template.jinja`), so `generate` and `chat` use it too."""
    if config.chat_template is None:
        return
    text = read_template(config.chat_template)
    try:  # a syntax error is the recipe's mistake: say where, before any row is rendered
        _compile_jinja_template(text)  # transformers' own environment ({% generation %} included)
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"chat_template: {config.chat_template}: line {exc.lineno}: {exc.message}") from None
    tokenizer.chat_template = text
    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(TEMPLATE_TOKEN_RE.findall(text)) if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
        log.info("chat template %s: added special tokens %s (vocabulary now %d)",
                 config.chat_template, " ".join(missing), len(tokenizer))


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
        raise RecipeError(
            f"{config.resolved_tokenizer_name}: the tokenizer has no chat template; set "
            "chat_template: chatml (built-in) or the path of a .jinja file"
        ) from None


def render(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool, where: str) -> list[str]:
    if not conversations:
        return []
    try:
        return tokenizer.apply_chat_template(conversations, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise DataError(f"{where}: the chat template failed on a conversation: {exc}") from None


def special_ids(tokenizer) -> set[int]:
    """Ids of all special tokens, including added ones (`all_special_ids` misses those in v5)."""
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return set(tokenizer.all_special_ids) | added


def end_of_turn_ids(tokenizer, name: str = "the chat template") -> list[int]:
    """The special token(s) that close an assistant turn, read off a rendered probe turn.

    A template whose assistant turns end without a special token could never teach the model to
    stop, so that is an error rather than a model that rambles.
    """
    answer = "PROBE ANSWER"
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]
    body = render(tokenizer, [probe], False, name)[0].rstrip()
    after = body[body.rfind(answer) + len(answer):] if answer in body else body
    specials = special_ids(tokenizer)
    markers = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in specials]
    if not markers:
        raise RecipeError(f"{name}: assistant turns end without a special token (such as <|im_end|> or the "
                          "EOS token), so the model could never learn to stop; add one to the template")
    return markers


def stop_token_ids(tokenizer) -> list[int]:
    """End-of-turn id(s) plus EOS: generation stops at whichever comes first."""
    stops = end_of_turn_ids(tokenizer)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    return stops


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The rendered history plus the generation prompt; tokenize it with add_special_tokens=False."""
    return render(tokenizer, [messages], True, "chat")[0]


def last_turn_prompts(rows, tokenizer):
    """Held-out conversations -> `prompt` (history rendered up to the final answer, with the
    generation prompt) and `completion` (that answer), plus the generation settings for chat,
    for `generation_eval_samples`. Conversations that do not end on an answer are skipped."""
    answered = [m for m in rows["messages"] if m and m[-1]["role"] == "assistant" and m[-1]["content"].strip()]
    prompts = render(tokenizer, [m[:-1] for m in answered], True, "generation check")
    table = datasets.Dataset.from_dict({"prompt": prompts, "completion": [m[-1]["content"] for m in answered]})
    return table, {"stop_token_ids": stop_token_ids(tokenizer), "add_special_tokens": False}
