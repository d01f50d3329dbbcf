"""`sft-recipe chat`: talk to a trained chat model in the terminal.

With `--tools FILE.json` the tool schemas are rendered by the model's own template (as in
training); a tool call the model makes is shown as the text it generated.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..data.chat_template import chat_prompt, stop_token_ids
from ..formats.conversation import normalise_messages
from ..errors import UserError
from ..formats import Form, get_format
from ..model.generate import generate_answers
from ..model.load import load_for_inference
from ..rundir.layout import read_saved_recipe


def read_tools(path: str | None) -> list[dict] | None:
    """`--tools FILE.json`: a JSON list of tool schemas (OpenAI function format), validated."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the tools file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: malformed JSON: {exc.msg}") from None
    try:
        _, tools = normalise_messages([], tools)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    return tools


def chat_loop(model, tokenizer, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, *,
              max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
              system: str | None = None, tools: list[dict] | None = None,
              chat_template_kwargs: Mapping | None = None) -> list[dict[str, str]]:
    """Read user lines, answer each with the whole history; `/reset` forgets it, `/exit` or EOF ends.
    A line ending with a backslash continues on the next line (an instruction and its input, as the
    demo's tasks are written). Returns the final history (for tests)."""
    stops = stop_token_ids(tokenizer, chat_template_kwargs)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = stdin.isatty()
    print("chat: /reset clears the history, /exit (or Ctrl-D) quits, a line ending with \\ continues on the next",
          file=stdout, flush=True)
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return history
        text = line.rstrip("\n")
        while text.endswith("\\"):
            if interactive:
                print("...> ", end="", file=stdout, flush=True)
            more = stdin.readline()
            text = text[:-1] + ("\n" + more.rstrip("\n") if more else "")
            if not more:
                break
        if text.strip() == "/reset":
            history = list(start)
            print("(history cleared)", file=stdout, flush=True)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        try:
            prompt = chat_prompt(tokenizer, history, tools, chat_template_kwargs)
            (answer,) = generate_answers(model, tokenizer, [prompt], max_new_tokens=max_new_tokens,
                                         temperature=temperature, top_p=top_p, stop_token_ids=stops,
                                         add_special_tokens=False,
                                         user_text=[m["content"] for m in history if isinstance(m.get("content"), str)])
        except UserError as exc:  # e.g. the history outgrew the context: the conversation can go on
            history.pop()
            print(f"({exc}; /reset to start over)", file=stdout, flush=True)
            continue
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}", file=stdout, flush=True)


def generate_command(args: Any) -> int:
    """`sft-recipe generate MODEL_DIR TEXT`: one answer, in the template the model was trained with."""
    if args.raw and not args.text.strip():
        raise UserError("command line: --raw needs some text to continue, got an empty one")
    tools = read_tools(args.tools)
    model, tokenizer = load_for_inference(args.model_dir)
    recipe = read_saved_recipe(args.model_dir)
    # A model without a saved recipe (a plain hub or save_pretrained model) continues raw text.
    fmt = None if args.raw or "dataset_format" not in recipe else get_format(recipe["dataset_format"])
    chat = fmt is not None and fmt.form is Form.CHAT
    if tools and not chat:
        raise UserError(f"--tools: {args.model_dir} was not trained on chat data (dataset_format "
                        f"{fmt.name if fmt else 'text'}); tools are rendered by a chat template")
    if chat:
        kwargs = recipe.get("chat_template_kwargs") or {}
        content = args.text + (f"\n{args.input}" if args.input else "")  # as builtin:tasks-chat writes it
        prompt = chat_prompt(tokenizer, [{"role": "user", "content": content}], tools, kwargs)
        stops = stop_token_ids(tokenizer, kwargs)
    else:
        prompt, stops = (fmt.prompt(args.text, args.input) if fmt else args.text), None
    (answer,) = generate_answers(model, tokenizer, [prompt], max_new_tokens=args.max_new_tokens,
                                 user_text=[args.text, args.input or ""] if chat else [],
                                 temperature=args.temperature, top_p=args.top_p, stop_token_ids=stops,
                                 add_special_tokens=not chat)  # the template has BOS
    print(args.text + answer if args.raw else answer)
    return 0
