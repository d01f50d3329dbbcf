"""Long rows in a fixed budget: the longest row this project trains for one optimizer step within a
peak RSS of 6 GiB, with only `memory_budget: 6GiB` and `max_length` set.

Model: Qwen2.5-0.5B's head and width (hidden 896, 14 heads, 2 KV heads, intermediate 4,864, a
151,936-token tied vocabulary) on 2 decoder layers, `max_position_embeddings` 131,072, fp32, SDPA,
batch 1, AdamW, evaluation off (`eval_fraction: 0`). Rows: a long prompt (text of the corpus) and a
256-token answer, `max_length` set to the row length. Each length runs in a fresh process
(`sft-recipe train`); its peak RSS is the process's VmHWM. The memory plan decides before training:
a length it cannot fit stops with one line, and that is the end of the ladder.

    python benchmarks/long_rows.py ../shared/data/chat-tokenizers/qwen2.5 ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BUDGET = "6GiB"
ANSWER = 256
LADDER = [16384, 32768, 40960, 49152]
MODEL = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 2,
         "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 131072,
         "tie_word_embeddings": True, "rope_theta": 1000000.0}


def rows_file(folder: Path, tokenizer_dir: str, corpus: str, length: int) -> Path:
    """One row: a prompt of `length - ANSWER` tokens and an answer of ANSWER tokens, cut from the corpus."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(Path(corpus).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    while len(ids) < length + 8:
        ids = ids + ids
    prompt = tokenizer.decode(ids[:length - ANSWER - 8])
    answer = tokenizer.decode(ids[length:length + ANSWER - 8])
    path = folder / f"rows-{length}.jsonl"
    path.write_text("".join(json.dumps({"prompt": prompt, "completion": answer}) + "\n" for _ in range(2)))
    return path


def run(folder: Path, tokenizer_dir: str, corpus: str, length: int) -> dict:
    recipe = {"model_name": None, "from_scratch": True, "model_config": MODEL, "tokenizer_name": tokenizer_dir,
              "dataset": str(rows_file(folder, tokenizer_dir, corpus, length)), "dataset_format": "prompt_completion",
              "max_length": length, "memory_budget": BUDGET, "eval_fraction": 0, "max_steps": 1, "batch_size": 1,
              "save_steps": 1000, "eval_steps": 1000, "logging_steps": 1, "callbacks": [], "cache_prepared_data": False,
              "output_dir": str(folder / f"out-{length}"), "overwrite_output_dir": True, "attn_implementation": "sdpa"}
    path = folder / f"r-{length}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    probe = ("import resource, runpy, sys; sys.argv = ['sft-recipe', 'train', %r]; "
             "code = 0\ntry:\n    runpy.run_module('sft_recipe', run_name='__main__')\nexcept SystemExit as e:\n"
             "    code = e.code or 0\nprint('VMHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]"
             ".split()[1], flush=True)\nsys.exit(code)") % str(path)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=3600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    text = out.stdout + out.stderr
    peak = next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VMHWM")), None)
    chosen = next((line.split("memory plan: ", 1)[1] for line in text.splitlines() if "memory plan: " in line), "")
    error = next((line for line in text.splitlines() if line.startswith("sft-recipe: error")), "")
    return {"length": length, "code": out.returncode, "peak_mib": peak, "seconds": seconds, "plan": chosen,
            "error": error}


def main(tokenizer_dir: str, corpus: str) -> None:
    print(f"budget {BUDGET} peak RSS; Qwen2.5-0.5B head and width, 2 layers; one optimizer step per length")
    with tempfile.TemporaryDirectory() as tmp:
        for length in LADDER:
            result = run(Path(tmp), tokenizer_dir, corpus, length)
            fits = result["code"] == 0 and result["peak_mib"] is not None and result["peak_mib"] <= 6 * 1024
            print(f"{length:>7} tokens: exit {result['code']}, peak {result['peak_mib'] or 0:,.0f} MiB, "
                  f"{result['seconds']:.0f} s, {'within' if fits else 'NOT within'} budget; "
                  f"{result['plan'] or result['error']}", flush=True)
            if result["code"] != 0:
                break


if __name__ == "__main__":
    main(*sys.argv[1:3])
