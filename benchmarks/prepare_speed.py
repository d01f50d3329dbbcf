"""Data preparation against a plain batched `datasets.map`, whole process, at several sizes.

    python benchmarks/prepare_speed.py --rows 10000 100000 [--tokenizer ../shared/data/gpt2-tokenizer]

For each size, in fresh processes (the datasets cache and the prepared-rows cache in new
directories): `sft-recipe preprocess` (load, validate, split, tokenize, write) against the plain
way (`load_dataset("json")`, the Alpaca template and the fast tokenizer in one batched map on the
same number of processes, `save_to_disk`). Prints seconds, peak RSS and the ratio per size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PLAIN = r'''
import sys, datasets
from transformers import AutoTokenizer
from sft_recipe.formats.alpaca import alpaca_prompt
data, tok_dir, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(tok_dir)
rows = datasets.load_dataset("json", data_files=data, split="train")
def encode(batch):
    prompts = [alpaca_prompt(i, x) for i, x in zip(batch["instruction"], batch["input"])]
    p = tok(prompts)["input_ids"]
    c = tok(batch["output"], add_special_tokens=False)["input_ids"]
    ids = [(a + b + [tok.eos_token_id])[:512] for a, b in zip(p, c)]
    labels = [([-100] * len(a) + b + [tok.eos_token_id])[:512] for a, b in zip(p, c)]
    return {"input_ids": ids, "labels": labels}
rows.map(encode, batched=True, remove_columns=rows.column_names, num_proc=2).save_to_disk(out)
'''


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{cmd[:4]} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer")
    args = parser.parse_args()
    source = json.loads((SHARED / "gsm8k_alpaca.json").read_text())
    print(f"{'rows':>9} {'plain map s':>12} {'sft-recipe s':>13} {'ratio':>6} {'plain MiB':>10} {'ours MiB':>9}")
    for n in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-prep-") as tmp:
            data = Path(tmp) / "rows.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in (source * (n // len(source) + 1))[:n]))
            recipe = Path(tmp) / "r.yaml"
            recipe.write_text(json.dumps({"dataset": str(data), "model_name": "unused", "tokenizer_name": str(args.tokenizer),
                                          "max_length": 512, "num_proc": 2, **({"cache_prepared_data": False} if os.environ.get("NO_CACHE") else {})}))
            times = {}
            for name, cmd in (("plain", [sys.executable, "-c", PLAIN, str(data), str(args.tokenizer), f"{tmp}/plain"]),
                              ("ours", [sys.executable, "-m", "sft_recipe", "preprocess", str(recipe), "--output",
                                        f"{tmp}/ours", "--show", "0"])):
                env = {**os.environ, "HF_HOME": f"{tmp}/hf-{name}", "SFT_RECIPE_CACHE": f"{tmp}/c-{name}",
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
                times[name] = run(cmd, env)
        (plain, plain_rss), (ours, ours_rss) = times["plain"], times["ours"]
        print(f"{n:>9} {plain:>12.1f} {ours:>13.1f} {ours / plain:>6.2f} {plain_rss:>10.0f} {ours_rss:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
