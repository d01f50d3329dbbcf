"""Pretraining with the recipe vs the hand-written loop of the "transformer from scratch" tutorial.

    python benchmarks/pretrain_tutorial.py [--corpus FILE.txt] [--tokenizer DIR] [--max_steps 500]

Runs, each in its own process, one after the other:
1. the tutorial's loop: random 128-token windows x and y = x shifted by one, AdamW at a constant
   1e-3 (torch defaults otherwise), every `eval_interval` steps the mean loss of `eval_iters`
   random batches of each split; on the *same* GPT-2 the recipe builds (model_config of
   recipes/scratch-tiny.yaml, built with transformers from config, same seed);
2. `sft-recipe train recipes/scratch-tiny.yaml --dataset CORPUS --tokenizer_name TOKENIZER`.

It prints both train/valid tables, then scores both final models on the *whole* held-out tail
(the last 10% of the tokens, the same blocks for both) and prints the wall-time ratio. Timings
are whole-process wall times (imports and tokenization included) and are noisy on a shared
machine. Run it by hand; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "scratch-tiny.yaml"
TABLE_ROW = re.compile(r"^Step: (\d+), Training Loss: ([\d.]+), Validation Loss: ([\d.]+)")


def load_recipe_settings() -> dict:
    import yaml

    return yaml.safe_load(RECIPE.read_text(encoding="utf-8"))


def build_model(recipe: dict, tokenizer):
    """The recipe's GPT-2, built exactly as `sft_recipe.model.load.load_model` builds it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(recipe["model_config"])
    model_type = kwargs.pop("model_type")
    kwargs.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    torch.manual_seed(recipe["seed"])
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kwargs), attn_implementation="sdpa")


def tutorial_loop(corpus: str, tokenizer_dir: str, max_steps: int, out_dir: str) -> None:
    """The tutorial's training loop, written the way the tutorial writes it."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    recipe = load_recipe_settings()
    context_length, batch_size = recipe["max_length"], recipe["batch_size"]
    eval_interval, eval_iters = recipe["eval_steps"], recipe["max_eval_samples"] // batch_size
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = Path(corpus).read_text(encoding="utf-8")
    data = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    split = int(len(data) * (1 - recipe["eval_fraction"]))
    splits = {"train": data[:split], "valid": data[split:]}

    model = build_model(recipe, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"])

    def get_batch(name: str):
        ids = splits[name]
        starts = torch.randint(len(ids) - context_length - 1, (batch_size,))
        x = torch.stack([ids[i:i + context_length] for i in starts])
        y = torch.stack([ids[i + 1:i + context_length + 1] for i in starts])
        return x, y

    def loss_of(x, y):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {name: sum(loss_of(*get_batch(name)).item() for _ in range(eval_iters)) / eval_iters
               for name in splits}
        model.train()
        return out

    start = time.perf_counter()
    for step in range(max_steps + 1):
        if step % eval_interval == 0 or step == max_steps:
            losses = estimate_loss()
            print(f"Step: {step}, Training Loss: {losses['train']:.3f}, Validation Loss: {losses['valid']:.3f}",
                  flush=True)
        if step == max_steps:
            break
        loss = loss_of(*get_batch("train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"train_runtime {time.perf_counter() - start:.1f}", flush=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def run_all(commands: dict[str, list[str]], work: Path, threads: int | None,
            parallel: bool) -> dict[str, tuple[float, str]]:
    """Each command in its own process: one after the other, or all at once (`parallel`), which
    on a shared machine at least gives both runs the same background load. Output goes to files
    in `work` (a full pipe would stall a run). Returns label -> (wall seconds, stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    results, running = {}, {}
    for label, cmd in commands.items():
        print(f"=== {label}: {' '.join(cmd)}", flush=True)
        log = work / f"{label.replace(' ', '_')}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        running[label] = (time.perf_counter(), proc, log)
        if not parallel:
            results[label] = finish(label, *running.pop(label))
    while running:  # record each wall time when that process ends, not when we get to it
        time.sleep(0.2)
        for label in [label for label, (_, proc, _) in running.items() if proc.poll() is not None]:
            results[label] = finish(label, *running.pop(label))
    return results


def finish(label: str, start: float, proc: subprocess.Popen, log: Path) -> tuple[float, str]:
    proc.wait()
    wall = time.perf_counter() - start
    output = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{label} failed (exit {proc.returncode}), see {log}:\n{output[-3000:]}")
    return wall, output


def table(stdout: str) -> list[tuple[int, float, float]]:
    rows = [m.groups() for line in stdout.splitlines() if (m := TABLE_ROW.match(line))]
    return [(int(s), float(t), float(v)) for s, t, v in rows]


def heldout_loss(model_dir: str, corpus: str, tokenizer_dir: str) -> float:
    """Mean next-token loss of a saved model on every block of the held-out tail, as the recipe
    cuts it (`sft_recipe.data.tokenization.tokenize_text`)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    from sft_recipe.data.tokenization import tokenize_text
    from sft_recipe.model.load import load_tokenizer

    recipe = load_recipe_settings()
    tokenizer = load_tokenizer(tokenizer_dir)
    raw = datasets.load_dataset("text", data_files=corpus, split="train", keep_linebreaks=True)
    _, heldout, _ = tokenize_text(raw, tokenizer, recipe["max_length"], recipe["eval_fraction"], add_eos=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    blocks = torch.tensor(heldout["input_ids"])
    with torch.no_grad():
        losses = [model(input_ids=b, labels=b).loss.item() for b in blocks.split(16)]
    return sum(losses) / len(losses)  # equal-sized batches except the last: close enough to report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="../shared/data/sales_textbook.txt", help="a raw .txt corpus")
    parser.add_argument("--tokenizer", default="../shared/data/gpt2-tokenizer", help="a tokenizer directory")
    parser.add_argument("--max_steps", type=int, default=500, help="optimizer steps for both runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both runs (1 is fastest on a busy machine); default: torch's")
    parser.add_argument("--parallel", action="store_true",
                        help="run both at once (fairer timing on a busy shared machine)")
    parser.add_argument("--loop", metavar="OUT_DIR", help=argparse.SUPPRESS)  # internal: run the loop only
    args = parser.parse_args()
    corpus, tokenizer_dir = str(Path(args.corpus).resolve()), str(Path(args.tokenizer).resolve())
    if args.loop:
        tutorial_loop(corpus, tokenizer_dir, args.max_steps, args.loop)
        return

    work = Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
    results = run_all({
        "tutorial loop": [sys.executable, __file__, "--loop", str(work / "loop"), "--corpus", corpus,
                          "--tokenizer", tokenizer_dir, "--max_steps", str(args.max_steps)],
        "recipe": [sys.executable, "-m", "sft_recipe", "train", str(RECIPE), "--dataset", corpus,
                   "--tokenizer_name", tokenizer_dir, "--max_steps", str(args.max_steps),
                   "--output_dir", str(work / "recipe")],
    }, work, args.threads, args.parallel)
    (loop_wall, loop_out), (recipe_wall, recipe_out) = results["tutorial loop"], results["recipe"]

    loop_rows, recipe_rows = table(loop_out), table(recipe_out)
    recipe_runtime = next((json.loads(m.group(1).replace("'", '"')).get("train_runtime")
                           for m in re.finditer(r"(\{'train_runtime'.*?\})", recipe_out)), None)
    loop_runtime = float(re.search(r"train_runtime ([\d.]+)", loop_out).group(1))
    print(f"\n{'step':>5} | {'loop train':>10} {'loop valid':>10} | {'recipe train':>12} {'recipe valid':>12}")
    recipe_by_step = {s: (t, v) for s, t, v in recipe_rows}
    for step, train, valid in loop_rows:
        r_train, r_valid = recipe_by_step.get(step, (math.nan, math.nan))
        print(f"{step:>5} | {train:>10.3f} {valid:>10.3f} | {r_train:>12.3f} {r_valid:>12.3f}")
    vocab = len(__import__("transformers").AutoTokenizer.from_pretrained(tokenizer_dir))
    print(f"\nln(vocab) = ln({vocab}) = {math.log(vocab):.3f}")
    loop_heldout = heldout_loss(str(work / "loop"), corpus, tokenizer_dir)
    recipe_heldout = heldout_loss(str(work / "recipe" / "best"), corpus, tokenizer_dir)
    print(f"loss on the whole held-out tail: loop (final) {loop_heldout:.3f}, recipe (best/) {recipe_heldout:.3f}")
    print(f"wall time, whole process: loop {loop_wall:.1f} s, recipe {recipe_wall:.1f} s, "
          f"recipe/loop = {recipe_wall / loop_wall:.2f}")
    if recipe_runtime is not None:
        print(f"training loop only (evals included): loop {loop_runtime:.1f} s, recipe {float(recipe_runtime):.1f} s "
              f"(Trainer train_runtime, checkpoint saves included), recipe/loop = "
              f"{float(recipe_runtime) / loop_runtime:.2f}")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
