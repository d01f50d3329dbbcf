"""Per-task exact match of a demo model on fresh generated rows that are in neither split of the demo
data: the validation set to tune the demo against, so the 100 held-out prompts are never looked at.

    python benchmarks/demo_validation.py outputs/demo/best [THREADS]

The add, repeat and next-day tasks have no fresh rows left (the demo data holds all of them), so
only sort, reverse and count are scored here.
"""
import collections
import random
import sys

import torch

from sft_recipe.data.builtin import TASKS, as_conversation, make_rows
from sft_recipe.data.chat_template import chat_prompt, stop_token_ids
from sft_recipe.formats.alpaca import alpaca_prompt
from sft_recipe.model.generate import generate_answers
from sft_recipe.commands.metrics import normalise_answer
from sft_recipe.model.load import load_for_inference

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
seen = {(r["instruction"], r["input"]) for r in make_rows()}
rng = random.Random(999)
val, attempts = [], 0
while len(val) < 300 and attempts < 100000:
    task = TASKS[attempts % len(TASKS)]; attempts += 1
    r = task(rng)
    if (r["instruction"], r["input"]) not in seen:
        seen.add((r["instruction"], r["input"])); val.append((task.__name__, r))
model, tok = load_for_inference(sys.argv[1])
if tok.chat_template:  # the demo's `builtin:tasks-chat`: the rows as one-turn conversations
    prompts = [chat_prompt(tok, as_conversation(r)["messages"][:1]) for _, r in val]
    answers = generate_answers(model, tok, prompts, max_new_tokens=16, stop_token_ids=stop_token_ids(tok),
                               add_special_tokens=False)
else:
    answers = generate_answers(model, tok, [alpaca_prompt(r["instruction"], r["input"]) for _, r in val],
                               max_new_tokens=16)
per = collections.defaultdict(lambda: [0, 0])
for (name, r), a in zip(val, answers):
    per[name][1] += 1; per[name][0] += normalise_answer(a) == normalise_answer(r["output"])
tot = sum(c for c, _ in per.values()) / sum(n for _, n in per.values())
print(f"validation exact match {tot:.1%}", {k: f"{c}/{n}" for k, (c, n) in per.items()})
