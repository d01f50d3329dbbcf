"""Conversations: chat templates, assistant-only labels over every turn, and the chat loop.

How a conversation becomes `(input_ids, labels)`:
1. The chat template renders the conversation prefix by prefix: for assistant turn i, the history
   before it with the generation prompt (`add_generation_prompt=True`), then the history
   including it. Each rendering must start with the previous one, otherwise the template
   re-renders history differently (e.g. it strips reasoning from earlier turns) and the run stops
   with an error naming the template. This works for every template, with or without
   `{% generation %}` blocks.
2. The text an assistant turn adds is its content plus the template's end-of-turn marker
   (`<|im_end|>` for ChatML). That is trained, marker included, so the model learns to stop;
   whitespace the template puts after the marker (ChatML's `\\n`) is not. System and user turns,
   role headers and the generation prompt are never trained.
3. The pieces are tokenized separately with `add_special_tokens=False`: the template writes any
   BOS itself, so there is exactly one, and a turn boundary never moves inside a merged token.
   A tokenizer for which that differs from tokenizing the whole conversation (SentencePiece with
   a prefix space per call) gets a warning; `sft-recipe preprocess` shows the rows to check.
4. `train_on: all_assistant` trains every assistant turn; `last_assistant` only the final one.

Rows that are dropped (and counted in `TokenStats`) instead of trained:
- a conversation that ends on a user (or system) turn: there is no answer to learn (`dropped_other`);
- empty or whitespace-only assistant turns stay as context but are never trained (learning to
  answer nothing is not useful); a conversation with no trainable turn left is dropped
  (`dropped_empty`).

Truncation to `max_length` cuts after the last trainable turn that fits whole, end marker
included, so no row ends in a half-trained turn. Only when not even the first trainable turn fits
is that turn cut mid-way (the one way to keep any trainable token); when its header alone does not
fit, the row is dropped (`dropped_too_long`). Rows that lost tokens are counted as `truncated`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from .config import SFTConfig
from .errors import DataError, RecipeError
from .mask import IGNORE_INDEX, Example
from .tokenize import TokenStats, examples_to_columns, resolve_num_proc

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
# Control tokens written into templates as literals, e.g. <|im_start|> or <|eot_id|>.
TEMPLATE_TOKEN_RE = re.compile(r"<\|[A-Za-z0-9_]+\|>")
DROP_UNANSWERED, DROP_EMPTY, DROP_TOO_LONG = "unanswered", "empty", "too_long"


# --- data formats -------------------------------------------------------------------------

def sharegpt_to_messages(row: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT `conversations: [{from, value}]` -> `messages: [{role, content}]` (for datasets.map).

    Unknown `from` values pass through unchanged so that validation reports them with the row.
    """
    turns = row.get("conversations")
    if not isinstance(turns, list):
        return {"messages": turns}
    return {"messages": [
        {"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")) if isinstance(t, dict) else None,
         "content": t.get("value") if isinstance(t, dict) else t}
        for t in turns
    ]}


def prompt_completion_to_messages(row: dict[str, Any]) -> dict[str, Any]:
    """Conversational prompt/completion (both message lists) -> one `messages` list.

    A plain-string completion becomes one assistant turn. Assistant turns inside the prompt are
    trained under `train_on: all_assistant`; use `last_assistant` to train the completion only.
    """
    completion = row["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return {"messages": list(row["prompt"]) + list(completion or [])}


def validate_conversations(dataset, source: str):
    """Every row must be a list of {role, content} with a known role and string content; the first
    turn may not be an assistant's (a template cannot render the prompt before it)."""
    rows = (m for batch in dataset.select_columns(["messages"]).iter(batch_size=1000) for m in batch["messages"])
    for i, messages in enumerate(rows):  # streamed in batches: a large dataset never sits in Python at once
        where = f"{source}: row {i + 1}"
        if not isinstance(messages, list):
            kind = "null" if messages is None else type(messages).__name__
            raise DataError(f"{where}: key 'messages' must be a list of {{role, content}}, got {kind}")
        for j, message in enumerate(messages):
            if not isinstance(message, dict):
                raise DataError(f"{where}: key 'messages[{j}]' must be an object with role and content, "
                                f"got {type(message).__name__}")
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise DataError(f"{where}: key 'messages[{j}].role' must be one of {', '.join(ROLES)}, "
                                f"got {role!r}")
            if not isinstance(content, str):
                kind = "null" if content is None else type(content).__name__
                raise DataError(f"{where}: key 'messages[{j}].content' must be a string, got {kind}")
        if messages and messages[0]["role"] == "assistant":
            raise DataError(f"{where}: key 'messages[0].role': a conversation cannot start with an "
                            "assistant turn; put a user (or system) turn first")
    return dataset.select_columns(["messages"])


# --- templates ----------------------------------------------------------------------------

def setup_chat_template(tokenizer, config: SFTConfig) -> None:
    """Install the recipe's `chat_template` (a .jinja file or a built-in name) on the tokenizer and
    add the control tokens it writes as `<|name|>` literals (e.g. `<|im_start|>`) that the
    vocabulary lacks, as special tokens. Call before the model is built: it gets `len(tokenizer)` embeddings. The template is
    saved with the tokenizer (`chat_template.jinja`), so `generate` and `chat` use it too."""
    if config.chat_template is None:
        return
    text = read_template(config.chat_template)
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
        return path.read_text(encoding="utf-8")
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
    import jinja2

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


# --- conversation -> training row -----------------------------------------------------------

def conversation_segments(messages: list[dict], prompts: list[str], fulls: list[str], train_on: str,
                          name: str) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, trained) pieces, checking prefix stability.

    `prompts[k]`/`fulls[k]` are the renderings before/including the k-th assistant turn.
    """
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    segments: list[tuple[str, bool]] = []
    done, pending = "", ""  # text rendered so far; untrained text waiting for the next piece
    for k, (index, prompt, full) in enumerate(zip(assistants, prompts, fulls)):
        if not prompt.startswith(done) or not full.startswith(prompt):
            turn = index + 1
            raise DataError(
                f"{name}: rendering is not prefix-stable at message {turn} (the template renders earlier turns "
                "differently once later ones follow, or its generation prompt differs from the assistant "
                "header), so per-turn labels would be wrong; use a template that renders history unchanged"
            )
        span = full[len(prompt):]
        body = span.rstrip()  # the content and end-of-turn marker; trailing newlines stay untrained
        trained = bool(messages[index]["content"].strip()) and (train_on == "all_assistant" or k == len(assistants) - 1)
        segments += [(pending + prompt[len(done):], False), (body, trained)]
        pending, done = span[len(body):], full
    segments.append((pending, False))
    return segments


def check_turn_tokenization(tokenizer, name: str) -> bool:
    """Warn when tokenizing turn by turn gives other ids than tokenizing the whole conversation,
    as with SentencePiece tokenizers that prepend a space to every call: earlier turns would then
    be trained on ids that a generation prompt spells differently. Returns True when they agree."""
    probe = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Fine, thanks."},
             {"role": "user", "content": "And you?"}, {"role": "assistant", "content": "Good."}]
    prompts = render(tokenizer, [probe[:1], probe[:3]], True, name)
    fulls = render(tokenizer, [probe[:2], probe[:4]], False, name)
    try:
        texts = [text for text, _ in conversation_segments(probe, prompts, fulls, "all_assistant", name)]
    except DataError:  # not prefix-stable over two turns: the data will say so if it has two turns
        return True
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"]
    whole = tokenizer("".join(texts), add_special_tokens=False)["input_ids"]
    if [i for piece in pieces for i in piece] == whole:
        return True
    log.warning("%s: tokenizing turn by turn gives other ids than tokenizing the whole conversation (a tokenizer "
                "that adds a prefix space per call?); rows use the turn-by-turn ids, check them with "
                "`sft-recipe preprocess`", name)
    return False


def fit_segments(pieces: list[tuple[list[int], bool]], max_length: int) -> tuple[Example | None, str]:
    """Join tokenized pieces into a row, truncating by the policy in the module docstring."""
    ids = [i for piece, _ in pieces for i in piece]
    labels = [i if trained else IGNORE_INDEX for piece, trained in pieces for i in piece]
    if not any(trained and piece for piece, trained in pieces):
        return None, DROP_EMPTY
    if len(ids) <= max_length:
        return Example(ids, labels, truncated=False), ""
    ends, start, first_start = [], 0, None
    for piece, trained in pieces:
        if trained and piece:
            first_start = start if first_start is None else first_start
            ends.append(start + len(piece))
        start += len(piece)
    whole = [end for end in ends if end <= max_length]
    if whole:
        cut = whole[-1]
    elif first_start is not None and first_start < max_length:
        cut = max_length  # a half turn: the only way to keep any trainable token
    else:
        return None, DROP_TOO_LONG
    return Example(ids[:cut], labels[:cut], truncated=True), ""


def tokenize_messages(dataset, tokenizer, config: SFTConfig):
    """Conversations -> masked training rows plus counts (batched map; see the module docstring)."""
    import datasets

    require_template(tokenizer, config)
    name = template_name(config)
    end_of_turn_ids(tokenizer, name)  # fail now, not after a run that never learned to stop
    check_turn_tokenization(tokenizer, name)
    where = config.dataset or "dataset"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        rows = [[{"role": m["role"], "content": m["content"]} for m in messages] for messages in batch["messages"]]
        answered = [bool(m) and m[-1]["role"] == "assistant" for m in rows]
        cuts = [[i for i, m in enumerate(msgs) if m["role"] == "assistant"] if ok else []
                for msgs, ok in zip(rows, answered)]
        prompts = iter(render(tokenizer, [m[:i] for m, c in zip(rows, cuts) for i in c], True, where))
        fulls = iter(render(tokenizer, [m[:i + 1] for m, c in zip(rows, cuts) for i in c], False, where))
        all_segments = [
            conversation_segments(m, [next(prompts) for _ in c], [next(fulls) for _ in c], config.train_on, name)
            for m, c in zip(rows, cuts)
        ]
        flat = [text for segments in all_segments for text, _ in segments]
        flat_ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
        examples, reasons = [], []
        for ok, segments in zip(answered, all_segments):
            pieces = [(next(flat_ids), trained) for _, trained in segments]
            example, reason = fit_segments(pieces, config.max_length) if ok else (None, DROP_UNANSWERED)
            examples.append(example)
            reasons.append(reason)
        placeholder = Example([], [], False)  # dropped rows are filtered out below, after counting
        columns = examples_to_columns([e or placeholder for e in examples])
        return {**columns, "drop": reasons}

    int_list = datasets.List(datasets.Value("int64"))
    features = datasets.Features({"input_ids": int_list, "labels": int_list, "length": datasets.Value("int64"),
                                  "truncated": datasets.Value("bool"), "trainable": datasets.Value("int64"),
                                  "drop": datasets.Value("string")})
    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, features=features,
                            num_proc=resolve_num_proc(config.num_proc, len(dataset)), desc="Tokenizing")
    reasons = Counter(tokenized["drop"])
    kept = tokenized.filter(lambda drop: [d == "" for d in drop], input_columns="drop", batched=True)
    kept = kept.remove_columns("drop")
    stats = TokenStats(
        rows=len(dataset), kept=len(kept), truncated=int(sum(kept["truncated"])),
        dropped_empty=reasons[DROP_EMPTY], dropped_too_long=reasons[DROP_TOO_LONG],
        dropped_other=reasons[DROP_UNANSWERED], tokens=int(sum(kept["length"])),
        trainable_tokens=int(sum(kept["trainable"])),
    )
    if reasons[DROP_UNANSWERED]:
        log.warning("dropped %d conversations that end on a user turn (no answer to learn)", reasons[DROP_UNANSWERED])
    if reasons[DROP_EMPTY]:
        log.warning("dropped %d conversations whose assistant turns are all empty", reasons[DROP_EMPTY])
    return kept, stats


# --- interactive chat ---------------------------------------------------------------------

def chat_loop(model, tokenizer, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, *,
              max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
              system: str | None = None) -> list[dict[str, str]]:
    """Read user lines, answer each with the whole history; `/reset` forgets it, `/exit` or EOF ends.
    Returns the final history (for tests)."""
    from .generate import generate_answers

    stops = stop_token_ids(tokenizer)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = stdin.isatty()
    print("chat: /reset clears the history, /exit (or Ctrl-D) quits", file=stdout, flush=True)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return history
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            history = list(start)
            print("(history cleared)", file=stdout, flush=True)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        (answer,) = generate_answers(model, tokenizer, [chat_prompt(tokenizer, history)],
                                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     stop_token_ids=stops, add_special_tokens=False)
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}", file=stdout, flush=True)


def last_turn_prompts(rows, tokenizer):
    """Held-out conversations -> `prompt` (history rendered up to the final answer, with the
    generation prompt) and `completion` (that answer), plus the generation settings for chat,
    for `generation_eval_samples`. Conversations that do not end on an answer are skipped."""
    import datasets

    answered = [m for m in rows["messages"] if m and m[-1]["role"] == "assistant" and m[-1]["content"].strip()]
    prompts = render(tokenizer, [m[:-1] for m in answered], True, "generation check")
    table = datasets.Dataset.from_dict({"prompt": prompts, "completion": [m[-1]["content"] for m in answered]})
    return table, {"stop_token_ids": stop_token_ids(tokenizer), "add_special_tokens": False}
