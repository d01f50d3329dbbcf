"""Cost of a conversation against its number of turns, on real chat templates, one process.

    python benchmarks/long_conversations.py [--families qwen2.5 llama3 ...] [--turns 2 8 32 64]

Each family's real tokenizer and template from `../shared/data/chat-tokenizers` (not part of the
repository). Conversations are a system prompt then N user/assistant turns of GSM8K questions and
worked answers; for each N the script encodes the same number of *turns* in total (so each row
count is N-independent work), through `ChatEncoder` as `preprocess` does (rendering, turn location,
fidelity audit, tokenization), and prints milliseconds per turn. Linear cost means a flat
ms-per-turn column; `locate` is the turn-location share alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import AutoTokenizer

from sft_recipe.data.chat_rows import ChatEncoder
from sft_recipe.data.chat_turns import locate_turns
from sft_recipe.recipe.config import SFTConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TURNS_PER_SIZE = 256  # turns encoded per size: 128 conversations of 2 turns, 4 of 64


def conversations(pairs: list[dict], turns: int, count: int) -> list[list[dict]]:
    out, k = [], 0
    for _ in range(count):
        messages = [{"role": "system", "content": "You are a careful maths tutor."}]
        for _ in range(turns):
            row = pairs[k % len(pairs)]
            k += 1
            messages += [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        out.append(messages)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=SHARED / "chat-tokenizers")
    parser.add_argument("--families", nargs="+", default=["qwen2.5", "qwen3", "llama3", "mistral", "phi3", "smollm2",
                                                           "deepseek-r1-distill-qwen"])
    parser.add_argument("--turns", type=int, nargs="+", default=[2, 8, 32, 64])
    args = parser.parse_args()
    pairs = json.loads((SHARED / "gsm8k_alpaca.json").read_text(encoding="utf-8"))[:2000]
    print(f"{'family':<26} " + " ".join(f"{n:>5} turns" for n in args.turns) + "   (ms per turn: whole encode / locate only)")
    for family in args.families:
        tokenizer = AutoTokenizer.from_pretrained(args.root / family)
        config = SFTConfig(dataset="bench.jsonl", model_name=str(args.root / family), max_length=1_000_000,
                           data_fidelity="warn")
        encode = ChatEncoder(tokenizer, config)
        cells = []
        for n in args.turns:
            batch = conversations(pairs, n, max(1, TURNS_PER_SIZE // n))
            encode(batch[0], None, 1)  # warm the template cache
            start = time.perf_counter()
            for row, messages in enumerate(batch):
                encode(messages, None, row)
            whole = (time.perf_counter() - start) * 1000 / (len(batch) * n)
            start = time.perf_counter()
            for messages in batch:
                locate_turns(tokenizer, messages, chat_template_kwargs=config.chat_template_kwargs)
            located = (time.perf_counter() - start) * 1000 / (len(batch) * n)
            cells.append(f"{whole:5.2f}/{located:4.2f}")
        print(f"{family:<26} " + " ".join(f"{c:>11}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
