"""Padding vs per-batch concatenation vs best-fit-decreasing bins, on a mixture of real data.

    python benchmarks/packing.py --gsm8k ../shared/data/gsm8k_alpaca.json \
        --roleplay ../shared/data/roleplay_alpaca.json --tokenizer ../shared/data/gpt2-tokenizer

One process, one run: the mixture (GSM8K weight 2, role-play weight 1, `max_examples` per source)
is prepared once per mode by `sft_recipe.data.prepare.prepare_data` (the real path, bins included)
and each mode trains the same GPT-2 built from config (same seed) with the real `SFTTrainer`
until it has seen `--tokens` trainable tokens, then scores the same held-out rows:

- `padding`: rows padded to the longest of each micro-batch (`packing: false`);
- `batch_concat`: each micro-batch's rows concatenated, position_ids restarting (`packing: batch_concat`);
- `bfd`: rows packed into bins of `max_length` by best-fit decreasing (`packing: bfd`).

Rows per micro-batch: `--batch` for the row modes; for bfd as many bins as hold about the same
number of tokens (bins are nearly full, rows are not). Reported: padding share (pad positions /
positions the model computed), trainable tokens/s over the training loop, the eval loss after
equal trainable tokens, and each as a ratio to `padding`.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from sft_recipe.commands.build import collator_for
from sft_recipe.data.prepare import eval_rows_and_parts, prepare_data
from sft_recipe.model.load import load_tokenizer
from sft_recipe.recipe.files import build_config
from sft_recipe.training.trainer import SFTTrainer
from sft_recipe.training.arguments import loss_chunk_size, to_training_arguments

MODES = ("padding", "batch_concat", "bfd")
MODEL = dict(n_layer=2, n_embd=128, n_head=4, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class TokenBudget(TrainerCallback):
    """Stop once `budget` trainable tokens were trained on; count padded positions on the way."""

    def __init__(self, trainer: SFTTrainer, budget: int) -> None:
        self.trainer, self.budget = trainer, budget
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if int(self.trainer.trainable_tokens_seen) >= self.budget:
            control.should_training_stop = True


class CountingCollator:
    """The mode's collator, counting positions and padded positions of every batch."""

    def __init__(self, collate) -> None:
        self.collate, self.positions, self.padding = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.positions += batch["input_ids"].numel()
        if "attention_mask" in batch:
            self.padding += int((batch["attention_mask"] == 0).sum())
        return batch


def run(mode: str, args) -> dict:
    packing = {"padding": False, "batch_concat": "batch_concat", "bfd": "bfd"}[mode]
    sources = [{"path": args.gsm8k, "format": "alpaca", "weight": 2, "max_examples": args.rows, "name": "gsm8k"},
               {"path": args.roleplay, "format": "alpaca", "weight": 1, "max_examples": args.rows // 2,
                "name": "roleplay", "columns": {"instruction": "instruction", "input": "input", "output": "output"}}]
    config = build_config(dict(datasets=sources, model_name="gpt2-from-config", tokenizer_name=args.tokenizer,
                               max_length=args.max_length, packing=packing, batch_size=args.batch, seed=0,
                               learning_rate=1e-3, max_steps=10_000, warmup_steps=0, lr_scheduler_type="constant",
                               eval_steps=10_000, save_steps=10_000, logging_steps=10_000, callbacks=[],
                               eval_fraction=0.05, max_eval_samples=args.eval_rows,
                               output_dir=f"{args.out}/{mode}"), "benchmark")
    tokenizer = load_tokenizer(config.resolved_tokenizer_name)
    data = prepare_data(config, tokenizer)
    if mode == "bfd":  # bins per micro-batch holding about as many tokens as `batch` rows do
        mean_row = data.stats["train"]["tokens"] / max(1, data.stats["train"]["kept"])
        config.batch_size = max(1, round(args.batch * mean_row / args.max_length))
    training_args = to_training_arguments(config, report_to="none", disable_tqdm=True, save_strategy="no",
                                          eval_strategy="no", load_best_model_at_end=False)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=tokenizer.eos_token_id, **MODEL))
    collate = CountingCollator(collator_for(config, model, tokenizer))
    eval_rows, eval_parts = eval_rows_and_parts(data, config.max_eval_samples, config.seed)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=eval_rows,
                         data_collator=collate, processing_class=tokenizer, loss_chunk_size=loss_chunk_size(config),
                         eval_parts=eval_parts)
    budget = TokenBudget(trainer, args.tokens)
    trainer.add_callback(budget)
    trainer.train()
    seconds = time.perf_counter() - budget.start
    positions, padding = collate.positions, collate.padding
    metrics = trainer.evaluate()
    trained = int(trainer.trainable_tokens_seen)
    return {"mode": mode, "steps": trainer.state.global_step, "rows_or_bins_per_batch": config.batch_size,
            "padding_share": padding / positions if positions else 0.0, "trainable_tokens": trained,
            "trainable_tokens_per_s": trained / seconds, "eval_loss": metrics["eval_loss"],
            **{k: v for k, v in metrics.items() if k.endswith("_loss") and k != "eval_loss"},
            "fill": data.stats.get("packing", {}).get("fill")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm8k", required=True)
    parser.add_argument("--roleplay", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--rows", type=int, default=1200, help="GSM8K rows (role-play: half as many)")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="rows per micro-batch (padding, batch_concat)")
    parser.add_argument("--tokens", type=int, default=60_000, help="trainable tokens per mode")
    parser.add_argument("--eval_rows", type=int, default=64, help="held-out rows per source")
    parser.add_argument("--out", default="/tmp/sft-recipe-packing-benchmark")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [run(mode, args) for mode in MODES]
    base = results[0]
    print(f"\n{'mode':13s} {'steps':>5s} {'batch':>5s} {'padding':>8s} {'train tok/s':>11s} {'x':>5s} "
          f"{'eval loss':>9s} {'x':>5s} {'gsm8k':>6s} {'roleplay':>8s}")
    for r in results:
        print(f"{r['mode']:13s} {r['steps']:5d} {r['rows_or_bins_per_batch']:5d} {r['padding_share']:8.1%} "
              f"{r['trainable_tokens_per_s']:11.0f} {r['trainable_tokens_per_s'] / base['trainable_tokens_per_s']:5.2f} "
              f"{r['eval_loss']:9.4f} {r['eval_loss'] / base['eval_loss']:5.3f} {r['eval_gsm8k_loss']:6.3f} "
              f"{r['eval_roleplay_loss']:8.3f}")
    print(f"trainable tokens per mode: {', '.join(str(r['trainable_tokens']) for r in results)}; "
          f"bfd bins {results[2]['fill']:.1%} full")


if __name__ == "__main__":
    main()
