"""Throughput and memory: sft-recipe vs a naive loop vs a plain `transformers.Trainer`.

    python benchmarks/throughput.py --data /path/to/alpaca.json --tokenizer /path/to/gpt2-tokenizer

Each contender runs in its own fresh subprocess (fresh caches, so nobody reuses another's
tokenization) on the same model (a GPT-2 built from config), the same training rows, batch size,
accumulation, learning-rate schedule and number of optimizer steps:

1. `naive`: a hand-written loop that pads every row to `max_length` and projects every position
   onto the vocabulary (the textbook loop);
2. `trainer`: a plain `transformers.Trainer` with `DataCollatorForSeq2Seq` (dynamic padding);
3. `sft_recipe`: this project through its real command line (`sft_recipe.cli.main`), defaults
   unchanged, except the step count and an evaluation schedule that never fires mid-run;
4. `sft_recipe_tiled`: the same plus `mlp_tile_tokens: 256` (each decoder MLP runs over tiles of 256
   tokens, recomputed in backward: one more MLP forward for a tile's activations instead of the batch's);
5. `sft_recipe_lowmem`: tiles plus `gradient_checkpointing: true` (both trade time for memory, off
   by default on the CPU).

Rows are `--rows` training rows plus a few held-out rows; every contender trains on the same
`--rows` (the split is the recipe's seeded split) for exactly one epoch:
steps = rows / (batch x accum). Reported per contender: rows/s and trainable tokens/s over the
training loop, wall time of the whole process (imports, tokenization, model build, training,
saving), peak resident memory of the process (`ru_maxrss`) and peak GPU memory on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED = 42
LEARNING_RATE = 3e-4
WARMUP_STEPS = 2
# Model shapes: a small GPT-2, and Qwen2.5-0.5B's head and embedding (vocabulary 151,936, hidden 896,
# tied) on 2 decoder layers, where the loss head is most of the memory and time of a step.
SHAPES = {
    "gpt2": dict(model_type="gpt2", n_layer=4, n_embd=256, n_head=4, n_positions=1024, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0),
    "qwen2.5-0.5b-head": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=2,
                              num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                              tie_word_embeddings=True, max_position_embeddings=4096),
}
MODEL = SHAPES["gpt2"]
CONTENDERS = ("naive", "trainer", "trl", "sft_recipe", "sft_recipe_tiled", "sft_recipe_lowmem")
TILED = dict(mlp_tile_tokens=256)
LOW_MEMORY = dict(gradient_checkpointing=True, mlp_tile_tokens=256)


# --- shared by the baselines: the same rows, tokenized the plain way ----------------------

def write_rows(args, path: Path) -> None:
    """The first rows + eval_rows rows of the data file, as JSON lines; with `--join k`, each row's
    output is k consecutive rows' worked answers (long rows, as real SFT data has)."""
    source = json.loads(Path(args.data).read_text(encoding="utf-8"))
    if args.join > 1:
        source = [{"instruction": source[i]["instruction"], "input": source[i].get("input", ""),
                   "output": "\n\n".join(r["instruction"] + "\n" + r["output"] for r in source[i:i + args.join])}
                  for i in range(0, len(source) - args.join, args.join)]
    rows = source[: args.rows + args.eval_rows]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def baseline_rows(args, tokenizer) -> list[dict]:
    """The training rows as a user would tokenize them by hand: Alpaca prompt, completion + EOS,
    labels -100 on the prompt, cut at max_length. Same split and same masking as the recipe."""
    import datasets

    from sft_recipe.formats.alpaca import alpaca_prompt

    raw = datasets.load_dataset("json", data_files=args.jsonl, split="train")
    train = raw.train_test_split(test_size=args.eval_rows / len(raw), seed=SEED)["train"]
    rows = []
    for r in train:
        prompt = tokenizer(alpaca_prompt(r["instruction"], r.get("input") or ""))["input_ids"]
        completion = tokenizer(r["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + completion)[: args.max_length]
        labels = ([-100] * len(prompt) + completion)[: args.max_length]
        if len(prompt) < args.max_length:
            rows.append({"input_ids": ids, "labels": labels})
    return rows


def model_config(args, vocab_size: int) -> dict:
    shape = dict(SHAPES[args.shape])
    shape.setdefault("vocab_size", vocab_size)
    return shape


def build_model(args, vocab_size: int, eos: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(SEED)
    shape = model_config(args, vocab_size)
    config = AutoConfig.for_model(shape.pop("model_type"), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                                  **shape)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device())


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def steps_for(args) -> int:
    return args.rows // (args.batch * args.accum)


# --- contender 1: the naive loop ----------------------------------------------------------

def run_naive(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = baseline_rows(args, tokenizer)
    model = build_model(args, len(tokenizer), tokenizer.eos_token_id)
    pad = tokenizer.eos_token_id
    n = len(rows)
    input_ids = torch.full((n, args.max_length), pad, dtype=torch.long)
    labels = torch.full((n, args.max_length), -100, dtype=torch.long)
    attention = torch.zeros((n, args.max_length), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        attention[i, : len(r["input_ids"])] = 1
    steps = steps_for(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / WARMUP_STEPS, max(0.0, (steps - s) / max(1, steps - WARMUP_STEPS))))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for micro in range(args.accum):
            first = (step * args.accum + micro) * args.batch
            idx = order[first: first + args.batch]
            batch = {"input_ids": input_ids[idx], "attention_mask": attention[idx], "labels": labels[idx]}
            batch = {k: v.to(device()) for k, v in batch.items()}
            loss = model(**batch).loss / args.accum  # mean per micro-batch, as the textbook does
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - start
    used = order[: steps * args.accum * args.batch]
    return result(seconds, len(used), int((labels[used] != -100).sum()), float(loss) * args.accum)


# --- contender 2: a plain Trainer ---------------------------------------------------------

def run_trainer(args) -> dict:
    import datasets
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    rows = baseline_rows(args, tokenizer)
    model = build_model(args, len(tokenizer), tokenizer.eos_token_id)
    training_args = TrainingArguments(
        output_dir=args.workdir, per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
        learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, weight_decay=0.01, max_grad_norm=1.0,
        max_steps=steps_for(args), seed=SEED, logging_steps=10, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, **gpu_training_args(),
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=datasets.Dataset.from_list(rows),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    output = trainer.train()
    sync()
    trainable = sum(sum(label != -100 for label in r["labels"]) for r in rows)
    return result(output.metrics["train_runtime"], len(rows), trainable, output.training_loss)


# --- contender: TRL's SFTTrainer with its defaults --------------------------------------------

def run_trl(args) -> dict:
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sft_recipe.formats.alpaca import alpaca_prompt

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [json.loads(line) for line in Path(args.jsonl).read_text(encoding="utf-8").splitlines()][: args.rows]
    train = datasets.Dataset.from_list([{"prompt": alpaca_prompt(r["instruction"], r.get("input")),
                                         "completion": r["output"]} for r in rows])
    model = build_model(args, len(tokenizer), tokenizer.eos_token_id)
    config = SFTConfig(
        output_dir=args.workdir, per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
        learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, weight_decay=0.01, max_grad_norm=1.0,
        max_steps=steps_for(args), seed=SEED, logging_steps=10, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, max_length=args.max_length,
        **(gpu_training_args() if device() == "cuda" else {"bf16": False}))  # TRL defaults to bf16; fp32 like the rest on the CPU
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    output = trainer.train()
    sync()
    trainable = sum(sum(label != -100 for label in r["labels"]) for r in trainer.train_dataset)  # TRL 1.16 builds labels
    return result(output.metrics["train_runtime"], len(rows), int(trainable), output.training_loss)


def gpu_training_args() -> dict:
    """The plain Trainer gets the same GPU precision as the recipe, so only the method differs."""
    import torch

    return dict(bf16=True) if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else {}


# --- contender 3: this project, through its command line ----------------------------------

def run_sft_recipe(args, **keys) -> dict:
    import yaml

    from sft_recipe.cli import main

    recipe = dict(**keys,
        from_scratch=True, model_config=model_config(args, 0) if args.shape != "gpt2" else dict(MODEL),
        tokenizer_name=args.tokenizer,
        dataset=args.jsonl, dataset_format="alpaca", eval_fraction=args.eval_rows / (args.rows + args.eval_rows),
        max_length=args.max_length, batch_size=args.batch, gradient_accumulation_steps=args.accum,
        learning_rate=LEARNING_RATE, warmup_steps=WARMUP_STEPS, max_steps=steps_for(args),
        eval_steps=10_000, save_steps=10_000, logging_steps=10, seed=SEED,
        output_dir=str(Path(args.workdir) / "run"),
    )
    path = Path(args.workdir) / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    code = main(["train", str(path), *args.recipe_overrides])
    if code:
        raise SystemExit(code)
    train = json.loads((Path(args.workdir) / "run" / "train_results.json").read_text())
    data = train["data_train"]
    return result(train["train_runtime"], data["kept"], data["trainable_tokens"], train["train_loss"])


# --- measurement ----------------------------------------------------------------------------

def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def result(seconds: float, rows: int, trainable: int, loss: float) -> dict:
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"train_seconds": seconds, "rows": rows, "trainable_tokens": trainable, "loss": loss,
            "gpu_peak_mib": gpu}


def child(args) -> None:
    """Run one contender in this process and write its numbers to `args.out`."""
    runner = {"naive": run_naive, "trainer": run_trainer, "trl": run_trl, "sft_recipe": run_sft_recipe,
              "sft_recipe_tiled": functools.partial(run_sft_recipe, **TILED),
              "sft_recipe_lowmem": functools.partial(run_sft_recipe, **LOW_MEMORY)}[args.child]
    Path(args.out).write_text(json.dumps(runner(args)))


def launch(name: str, args, jsonl: Path) -> dict:
    """One contender in a fresh process with fresh caches; whole-process wall time and peak RSS."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        out = Path(workdir) / "result.json"
        env = {**os.environ, "HF_HOME": str(Path(workdir) / "hf"), "SFT_RECIPE_CACHE": str(Path(workdir) / "c"),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "WANDB_MODE": "disabled"}
        if args.threads:  # read by torch when it loads; the recipe's command line loads torch itself
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--child", name, "--out", str(out), "--workdir", workdir,
               "--jsonl", str(jsonl), "--rows", str(args.rows), "--max_length", str(args.max_length),
               "--batch", str(args.batch), "--accum", str(args.accum), "--data", args.data, "--eval_rows", str(args.eval_rows),
               "--tokenizer", args.tokenizer, "--threads", str(args.threads), "--shape", args.shape,
               "--join", str(args.join), "--", *args.recipe_overrides]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL if not args.verbose else None)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)})")
        numbers = json.loads(out.read_text())
    # CPU seconds (user + system) are steadier than wall time on a shared machine.
    numbers.update(wall_seconds=wall, cpu_seconds=usage.ru_utime + usage.ru_stime,
                   peak_rss_mib=usage.ru_maxrss / 1024)  # Linux: KiB
    return numbers


def report(results: dict[str, dict]) -> str:
    lines = [f"{'run':<17} {'rows/s':>7} {'train tok/s':>11} {'loop s':>7} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>12} "
             f"{'GPU MiB':>8} {'loss':>6}"]
    for name, r in results.items():
        gpu = f"{r['gpu_peak_mib']:.0f}" if r["gpu_peak_mib"] is not None else "-"
        lines.append(f"{name:<17} {r['rows'] / r['train_seconds']:>7.2f} "
                     f"{r['trainable_tokens'] / r['train_seconds']:>11.0f} {r['train_seconds']:>7.1f} "
                     f"{r['wall_seconds']:>7.1f} {r['cpu_seconds']:>7.1f} {r['peak_rss_mib']:>12.0f} {gpu:>8} {r['loss']:>6.3f}")
    for name in ("sft_recipe", "sft_recipe_tiled", "sft_recipe_lowmem"):
        ours = results.get(name)
        if not ours:
            continue
        for base in ("naive", "trainer", "trl"):
            if base in results:
                b = results[base]
                lines.append(
                    f"{name} vs {base}: rows/s x{(ours['rows'] / ours['train_seconds']) / (b['rows'] / b['train_seconds']):.2f}, "
                    f"wall time x{b['wall_seconds'] / ours['wall_seconds']:.2f} faster "
                    f"(CPU time x{b['cpu_seconds'] / ours['cpu_seconds']:.2f}), "
                    f"peak RSS x{ours['peak_rss_mib'] / b['peak_rss_mib']:.2f}"
                    + (f", peak GPU x{ours['gpu_peak_mib'] / b['gpu_peak_mib']:.2f}" if ours["gpu_peak_mib"] else ""))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="Alpaca-format .json file (a list of rows).")
    parser.add_argument("--tokenizer", required=True, help="Tokenizer directory (GPT-2's, 50257 tokens).")
    parser.add_argument("--rows", type=int, default=512, help="Training rows (one epoch).")
    parser.add_argument("--max_length", type=int, default=256, help="Longest row in tokens.")
    parser.add_argument("--eval_rows", type=int, default=8,
                        help="Rows held out (the recipe evaluates them at the end to pick best/; the baselines do not).")
    parser.add_argument("--batch", type=int, default=4, help="Rows per micro-batch.")
    parser.add_argument("--accum", type=int, default=4, help="Micro-batches per optimizer step.")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=["naive", "trainer", "sft_recipe", "sft_recipe_tiled"],
                        help="Contenders to run (trl needs `pip install trl`).")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2", help="Model shape (see SHAPES).")
    parser.add_argument("--join", type=int, default=1, help="Answers joined per row (long rows).")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto",
                        help="cpu hides GPUs from the children; auto uses a GPU when there is one.")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every run (0: torch's default); 1 is steadiest on a shared machine.")
    parser.add_argument("--verbose", action="store_true", help="Show the children's output.")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--jsonl", help=argparse.SUPPRESS)
    parser.add_argument("recipe_overrides", nargs="*",
                        help="After --: extra recipe keys for the sft_recipe run, e.g. -- --packing true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    steps = steps_for(args)
    assert steps * args.batch * args.accum == args.rows, "--rows must be a multiple of batch x accum"
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        jsonl = Path(tmp) / "rows.jsonl"
        write_rows(args, jsonl)
        print(f"{args.rows} rows (+{args.eval_rows} held out), max_length {args.max_length}, batch {args.batch} x "
              f"accum {args.accum} = {steps} optimizer steps; model {args.shape}",
              flush=True)
        results = {}
        for name in args.only:
            results[name] = launch(name, args, jsonl)
            print(f"  {name}: {math.ceil(results[name]['wall_seconds'])} s", flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
