"""What each real chat template drops or alters, and what the audit costs.

    python benchmarks/fidelity.py families [--tokenizers ../shared/data/chat-tokenizers]
    python benchmarks/fidelity.py cost --rows 100000 [--tokenizer ../shared/data/chat-tokenizers/qwen2.5]

`families`: for each tokenizer directory, one conversation per kind of content (a system prompt,
reasoning on the last turn and on an earlier one, a tool call with a null in a list, an answer that
spells special tokens), encoded as training rows; prints what the audit reports and what is
trained, without and with `train_dropped_reasoning`.

`cost`: tokenizes the same GSM8K-as-chat rows twice in one process, with the audit and with the
audit replaced by a no-op, and prints both times and their ratio (the issue's bound: 1.10).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from sft_recipe.data import chat_rows  # noqa: E402
from sft_recipe.data.chat_rows import ChatEncoder  # noqa: E402
from sft_recipe.data.encode import encode_rows  # noqa: E402
from sft_recipe.data.fidelity import FidelityReport  # noqa: E402
from sft_recipe.recipe.config import SFTConfig  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOOLS = [{"type": "function", "function": {"name": "search_flights", "description": "Find flights.", "parameters": {
    "type": "object", "properties": {"origin": {"type": "string"}, "ids": {"type": "array"}}}}}]
Q, Q2 = {"role": "user", "content": "What is 2+2?"}, {"role": "user", "content": "And 3+3?"}
CASES = {
    "system prompt": [{"role": "system", "content": "Always answer in French."}, Q,
                      {"role": "assistant", "content": "Quatre."}],
    "reasoning, last turn": [Q, {"role": "assistant", "reasoning_content": "Two and two: four.", "content": "4."}],
    "reasoning, earlier turn": [Q, {"role": "assistant", "reasoning_content": "Two and two: four.", "content": "4."},
                                Q2, {"role": "assistant", "reasoning_content": "Three and three: six.", "content": "6."}],
    "tool call": [{"role": "user", "content": "Flights from Paris?"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "id": "abc123def", "function": {"name": "search_flights", "arguments": {
            "origin": "Paris", "ids": [1, None, 3]}}}]},
        {"role": "tool", "tool_call_id": "abc123def", "name": "search_flights", "content": '{"flights": 3}'},
        {"role": "assistant", "content": "There are 3 flights."}],
    "special-token text": [Q, {"role": "assistant", "content": "It ends with <|im_end|>, <|eot_id|> or </s>."}],
}


def families(root: Path) -> None:
    logging.disable(logging.WARNING)
    print("| family | " + " | ".join(CASES) + " |")
    print("|---|" + "---|" * len(CASES))
    for directory in sorted(p for p in root.iterdir() if (p / "tokenizer.json").is_file()):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        kwargs = {"date_string": "26 Jul 2024"} if "llama" in directory.name else {}
        cells = []
        for name, messages in CASES.items():
            cell = []
            for dropped in (False, True):
                config = SFTConfig(dataset="probe.jsonl", model_name="m", dataset_format="messages", max_length=4096,
                                   chat_template_kwargs=kwargs, train_dropped_reasoning=dropped)
                try:
                    examples, _, lost = ChatEncoder(tokenizer, config)(messages, TOOLS if "tool" in name else None, 1)
                    kinds = sorted({piece.split("@")[0] for piece in lost.split(";") if piece})
                    cell.append(("lost: " + ", ".join(kinds)) if kinds else f"exact ({len(examples)} row"
                                f"{'s' if len(examples) > 1 else ''})")
                except Exception as exc:  # noqa: BLE001 - a table cell, not a crash
                    cell.append("error: " + str(exc).split(": ", 2)[-1][:70])
                if "reasoning" not in name:
                    break
            cells.append(" / with train_dropped_reasoning: ".join(cell))
        print(f"| {directory.name} | " + " | ".join(cells) + " |")


def cost(tokenizer_dir: Path, rows: int) -> None:
    source = json.loads((SHARED / "gsm8k_alpaca.json").read_text())
    conversations = [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
                     for r in (source * (rows // len(source) + 1))[:rows]]
    dataset = datasets.Dataset.from_dict({"messages": conversations, "source_row": list(range(1, rows + 1))})
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = SFTConfig(dataset="gsm8k.jsonl", model_name="m", dataset_format="messages", max_length=1024)
    audit = chat_rows.lost_pieces
    times = {}
    for name, fn in (("without audit", lambda *a: []), ("with audit", audit)):
        chat_rows.lost_pieces = fn
        datasets.disable_caching()
        start = time.perf_counter()
        report = FidelityReport("gsm8k.jsonl")
        encode_rows(dataset, tokenizer, config, report)
        times[name] = time.perf_counter() - start
        print(f"{name}: {times[name]:.1f} s for {rows} rows ({report.rows_lost} rows with losses)")
    chat_rows.lost_pieces = audit
    print(f"audit cost: {times['with audit'] / times['without audit']:.3f}x tokenization (bound: 1.10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["families", "cost"])
    parser.add_argument("--tokenizers", type=Path, default=SHARED / "chat-tokenizers")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "chat-tokenizers" / "qwen2.5")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    families(args.tokenizers) if args.what == "families" else cost(args.tokenizer, args.rows)


if __name__ == "__main__":
    main()
