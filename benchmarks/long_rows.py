"""Long rows in a fixed budget: the longest row each system trains for one optimizer step within a
peak RSS of 6 GiB, with the same rows.

Model: Qwen2.5-0.5B's head and width (hidden 896, 14 heads, 2 KV heads, intermediate 4,864, a
151,936-token tied vocabulary) on 2 decoder layers, `max_position_embeddings` 131,072, fp32, SDPA,
batch 1, no padding mask, AdamW, evaluation off. Rows: a long prompt (text of the corpus) and a
256-token answer, `max_length` set to the row length, the loss on the answer only. Each system and
length runs in a fresh process; its peak RSS is the process's VmHWM.

- `sft-recipe`: `sft-recipe train` with only `memory_budget: 6GiB` and `max_length` set (and the
  model, data and evaluation off; the data cache on, as by default, so the plan is for the prepared
  rows). The memory plan decides before training: a length it cannot fit stops with one line, and
  that is the end of its ladder.
- `trainer`: the plain `transformers.Trainer` with `DataCollatorForSeq2Seq`.
- `trl`: TRL's `SFTTrainer` with its defaults (prompt-completion rows; `bf16` off, as everything
  here runs in fp32 on the CPU).

A baseline's ladder ends at its first length over the budget (or killed for memory).

    python benchmarks/long_rows.py ../shared/data/chat-tokenizers/qwen2.5 ../shared/data/tinyshakespeare.txt \
        [--systems sft-recipe,trainer,trl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BUDGET_MIB = 6 * 1024
ANSWER = 256
LADDERS = {"sft-recipe": [16384, 32768, 40960, 49152], "trainer": [1024, 2048, 2304, 2560, 3072],
           "trl": [2048, 3072, 3584, 3840, 4096]}
MODEL = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 2,
         "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 131072,
         "tie_word_embeddings": True, "rope_theta": 1000000.0}
PEAK = "print('VMHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], flush=True)"


def rows_file(folder: Path, tokenizer_dir: str, corpus: str, length: int) -> Path:
    """Rows of a prompt of about `length - ANSWER` tokens and an answer of about ANSWER, cut from the corpus."""
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


def ours(folder: Path, tokenizer_dir: str, rows: Path, length: int) -> list[str]:
    recipe = {"model_name": None, "from_scratch": True, "model_config": MODEL, "tokenizer_name": tokenizer_dir,
              "dataset": str(rows), "dataset_format": "prompt_completion", "max_length": length,
              "memory_budget": f"{BUDGET_MIB}MiB", "eval_fraction": 0, "max_steps": 1, "batch_size": 1,
              "save_steps": 1000, "logging_steps": 1, "callbacks": [],
              "output_dir": str(folder / f"out-{length}"), "overwrite_output_dir": True, "attn_implementation": "sdpa"}
    path = folder / f"r-{length}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = ("import runpy, sys; sys.argv = ['sft-recipe', 'train', %r]; code = 0\ntry:\n"
            "    runpy.run_module('sft_recipe', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code or 0\n"
            "%s\nsys.exit(code)") % (str(path), PEAK)
    return [sys.executable, "-c", code]


def baseline(system: str, tokenizer_dir: str, rows: Path, length: int, out: Path) -> None:
    """One optimizer step of a baseline, in this (fresh) process."""
    import torch
    from datasets import load_dataset
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    kwargs = dict(MODEL)
    config = AutoConfig.for_model(kwargs.pop("model_type"), vocab_size=len(tokenizer), **kwargs)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    data = load_dataset("json", data_files=str(rows), split="train")
    common = dict(output_dir=str(out), per_device_train_batch_size=1, max_steps=1, eval_strategy="no",
                  save_strategy="no", report_to="none", logging_steps=1, use_cpu=True, optim="adamw_torch")
    if system == "trl":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(**common, max_length=length, bf16=False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        def encode(row: dict) -> dict:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = (prompt + answer)[:length]
            return {"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": ([-100] * len(prompt) + answer)[:length]}

        data = data.map(encode, remove_columns=data.column_names)
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data,
                          data_collator=DataCollatorForSeq2Seq(tokenizer))
    result = trainer.train()
    print(f"STEP_SECONDS {result.metrics['train_runtime']:.1f}", flush=True)


def seconds_of(text: str) -> float | None:
    """The training time `sft-recipe train` reports ("trained 1 steps in 2m 12s")."""
    match = re.search(r"trained\s+\d+ steps in ([^,]+)", text)
    if not match:
        return None
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)\s*([hms])", match.group(1)))


def run(system: str, folder: Path, tokenizer_dir: str, rows: Path, length: int) -> dict:
    if system == "sft-recipe":
        command = ours(folder, tokenizer_dir, rows, length)
    else:
        code = ("import sys; sys.path.insert(0, %r); import long_rows; code = 0\ntry:\n"
                "    long_rows.baseline(%r, %r, __import__('pathlib').Path(%r), %d, __import__('pathlib').Path(%r))\n"
                "except Exception as e:\n    print('FAILED', type(e).__name__, str(e)[:200]); code = 1\n%s\nsys.exit(code)"
                % (str(Path(__file__).parent), system, tokenizer_dir, str(rows), length, str(folder / system), PEAK))
        command = [sys.executable, "-c", code]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=7200,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                              "SFT_RECIPE_CACHE": str(folder / "cache")})  # the data cache on, as by default
    wall = time.perf_counter() - started
    text = out.stdout + out.stderr
    peak = next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VMHWM")), None)
    step = next((float(line.split()[1]) for line in text.splitlines() if line.startswith("STEP_SECONDS")), None)
    chosen = next((line.split("memory plan: ", 1)[1] for line in text.splitlines() if "memory plan: " in line), "")
    error = next((line for line in text.splitlines() if line.startswith(("sft-recipe: error", "FAILED"))), "")
    if out.returncode < 0:
        error = f"killed by signal {-out.returncode}"
    return {"system": system, "length": length, "code": out.returncode, "peak_mib": peak, "wall_s": wall,
            "step_s": step if step is not None else seconds_of(text), "plan": chosen, "error": error}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer")
    parser.add_argument("corpus")
    parser.add_argument("--systems", default="sft-recipe,trainer,trl")
    args = parser.parse_args()
    print(f"budget {BUDGET_MIB:,} MiB peak RSS; Qwen2.5-0.5B head and width, 2 layers; one optimizer step per "
          f"length, batch 1, fp32, SDPA, evaluation off")
    longest = {}
    with tempfile.TemporaryDirectory() as tmp:
        for system in args.systems.split(","):
            for length in LADDERS[system]:
                rows = rows_file(Path(tmp), args.tokenizer, args.corpus, length)
                result = run(system, Path(tmp), args.tokenizer, rows, length)
                fits = result["code"] == 0 and result["peak_mib"] is not None and result["peak_mib"] <= BUDGET_MIB
                print(json.dumps(result), flush=True)
                print(f"{system:>10} {length:>7} tokens: exit {result['code']}, peak {result['peak_mib'] or 0:,.0f} "
                      f"MiB, step {result['step_s'] or 0:.0f} s (wall {result['wall_s']:.0f} s), "
                      f"{'within' if fits else 'NOT within'} budget; {result['plan'] or result['error']}", flush=True)
                if not fits:
                    break
                longest[system] = (length, result["step_s"])
    for system, (length, step) in longest.items():
        print(f"longest within budget: {system} {length:,} tokens, {step or 0:.0f} s per step")
    if "sft-recipe" in longest:
        for other in ("trainer", "trl"):
            if other in longest:
                print(f"sft-recipe / {other}: {longest['sft-recipe'][0] / longest[other][0]:.1f}x longer rows")


if __name__ == "__main__":
    main()
