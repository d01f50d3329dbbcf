"""Manual check of the chat masks on the REAL tokenizers and chat templates of eight model families.

    python benchmarks/chat_families.py [CHAT_TOKENIZERS_DIR]   # default: ../shared/data/chat-tokenizers

Prints the trained segments per family and exits non-zero on a mismatch. The tokenizer files are not
part of this repository (tests use compact hermetic templates instead: tests/data/test_chat_families.py).

For every family and conversation it asserts that
- input_ids == tokenizer(whole rendering, add_special_tokens=False) and BOS is not doubled;
- the trained tokens form one run per trained assistant turn, each run decodes to the expected text
  (hand-written below for the 2-turn conversation with a system prompt; otherwise: ends with the
  family's end-of-turn marker and contains the answer), and no run contains user/system/tool text.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from sft_recipe.data.chat_template import end_of_turn_markers, stop_token_ids
from sft_recipe.data.chat_turns import encode_conversation
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.formats.conversation import normalise_messages
from sft_recipe.errors import UserError

hf_logging.set_verbosity_error()
ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared/data/chat-tokenizers")
FAMILIES = ["qwen2.5", "qwen3", "llama3", "mistral", "mistral-common", "phi3", "smollm2", "deepseek-r1-distill-qwen"]
MARKER = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>",
          "mistral-common": "</s>", "phi3": "<|end|>", "smollm2": "<|im_end|>",
          "deepseek-r1-distill-qwen": "<｜end▁of▁sentence｜>"}

SYS = {"role": "system", "content": "Be brief."}
U1 = {"role": "user", "content": "Capital of France? Say Paris or No."}
A1 = {"role": "assistant", "content": "Paris"}
U2 = {"role": "user", "content": "Is it big?"}
A2 = {"role": "assistant", "content": "No, not very."}

# Trained segments of [SYS, U1, A1, U2, A2], decoded, checked by hand against each template.
GOLDEN_SYS = {
    "qwen2.5": ["Paris<|im_end|>", "No, not very.<|im_end|>"],
    # Qwen3: the last turn (after the last user query) gets the empty think block, earlier ones do not
    "qwen3": ["Paris<|im_end|>", "<think>\n\n</think>\n\nNo, not very.<|im_end|>"],
    "llama3": ["Paris<|eot_id|>", "No, not very.<|eot_id|>"],
    # SentencePiece: the answer after [/INST] is " Paris" -> "▁Paris" (checked via FIRST_TOKEN below);
    # decode() drops the leading space of a piece that starts with "▁"
    "mistral": ["Paris</s>", "No, not very.</s>"],
    "mistral-common": ["Paris</s>", "No, not very.</s>"],
    "phi3": ["Paris<|end|>", "No, not very.<|end|>"],
    "smollm2": ["Paris<|im_end|>", "No, not very.<|im_end|>"],
    "deepseek-r1-distill-qwen": ["Paris<｜end▁of▁sentence｜>", "No, not very.<｜end▁of▁sentence｜>"],
}

# First trained token of each turn of [SYS, U1, A1, U2, A2]: no prefix-space drift (Phi-3 "No", not "▁No")
FIRST_TOKEN = {"mistral": ["▁Paris", "▁No"], "mistral-common": ["▁Paris", "▁No"], "phi3": ["Paris", "No"],
               "llama3": ["Paris", "No"], "qwen2.5": ["Paris", "No"]}
FIRST_TOKEN["phi3"] = ["Par", "No"]  # Phi-3 splits "Paris" with no prefix space; the point is: no "▁"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call00001"},
    {"role": "assistant", "content": "It is 21 degrees."},
]
GOLDEN_TOOLS = {
    "qwen2.5": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                "It is 21 degrees.<|im_end|>"],
    "llama3": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
               "It is 21 degrees.<|eot_id|>"],
}
REASONING = [U1, {"role": "assistant", "content": "Paris", "reasoning_content": "France's capital is Paris."},
             U2, {"role": "assistant", "content": "No, not very.", "reasoning_content": "About 105 km2."}]
GOLDEN_REASONING = {
    # earlier turn: reasoning dropped by the template; last turn: rendered with it
    "qwen3": ["Paris<|im_end|>", "<think>\nAbout 105 km2.\n</think>\n\nNo, not very.<|im_end|>"],
}


def runs(labels):
    out, n = [], 0
    while n < len(labels):
        if labels[n] != IGNORE_INDEX:
            s = n
            while n < len(labels) and labels[n] != IGNORE_INDEX:
                n += 1
            out.append((s, n))
        else:
            n += 1
    return out


def check(tok, family, name, messages, tools=None, golden=None, train_on="all_assistant", first=None):
    ids, labels = encode_conversation(tok, messages, tools=tools, train_on=train_on)
    clean, clean_tools = normalise_messages(messages, tools)  # JSON-string arguments parsed into dicts
    whole = tok.apply_chat_template(clean, tools=clean_tools, tokenize=False)
    assert ids == tok(whole, add_special_tokens=False)["input_ids"], "ids differ from the whole rendering"
    if tok.bos_token_id is not None:
        assert ids[:2] != [tok.bos_token_id] * 2, "doubled BOS"
    segs = [tok.decode(ids[s:e], skip_special_tokens=False) for s, e in runs(labels)]
    print(f"  {name}:")
    for seg, (s, e) in zip(segs, runs(labels)):
        print(f"    {seg!r}  tokens {tok.convert_ids_to_tokens(ids[s:e])[:3]}...")
    answers = [m for m in messages if m["role"] == "assistant"]
    if train_on == "last_assistant":
        answers = answers[-1:]
    assert len(segs) == len(answers), f"{len(segs)} trained runs for {len(answers)} assistant turns"
    for seg, m in zip(segs, answers):
        assert seg.endswith(MARKER[family]), f"segment does not end with {MARKER[family]}: {seg!r}"
        for other in messages:
            if other["role"] != "assistant" and other["content"].strip() in seg:
                raise AssertionError(f"{other['role']} text trained: {seg!r}")
        if m.get("content"):
            assert m["content"].strip() in seg, f"answer {m['content']!r} not in {seg!r}"
    if first is not None:
        got = [tok.convert_ids_to_tokens(ids[s]) for s, _ in runs(labels)]
        assert got == first, f"first trained tokens {got}, expected {first}"
    if golden is not None:
        assert segs == golden, f"\n got      {segs}\n expected {golden}"


def main() -> int:
    failures = 0
    for family in FAMILIES:
        tok = AutoTokenizer.from_pretrained(ROOT / family)
        print(f"== {family}: end-of-turn {end_of_turn_markers(tok)}, stop ids {stop_token_ids(tok)}")
        cases = [("2 turns", [U1, A1, U2, A2], None, None),
                 ("2 turns + system", [SYS, U1, A1, U2, A2], None, GOLDEN_SYS[family])]
        if family in ("mistral", "mistral-common"):  # extra: sentinel path with a [TOOL_CALLS] lead
            cases.append(("tool call + system (extra)", [SYS] + TOOL_CONV, [WEATHER], None))
        if family in GOLDEN_TOOLS:
            cases.append(("tool call", TOOL_CONV, [WEATHER], GOLDEN_TOOLS[family]))
            cases.append(("tool call + system", [SYS] + TOOL_CONV, [WEATHER], GOLDEN_TOOLS[family]))
        if family in GOLDEN_REASONING:
            cases.append(("reasoning", REASONING, None, GOLDEN_REASONING[family]))
        for name, messages, tools, golden in cases:
            try:
                check(tok, family, name, messages, tools, golden,
                      first=FIRST_TOKEN.get(family) if name == "2 turns + system" else None)
            except (AssertionError, ValueError, UserError) as exc:
                failures += 1
                print(f"  FAIL {name}: {exc}")
        try:
            check(tok, family, "2 turns + system, last_assistant", [SYS, U1, A1, U2, A2], None,
                  GOLDEN_SYS[family][-1:], train_on="last_assistant")
        except (AssertionError, ValueError, UserError) as exc:
            failures += 1
            print(f"  FAIL last_assistant: {exc}")
    print("OK" if not failures else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
