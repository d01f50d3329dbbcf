"""Model FLOPs utilisation of the recipe's training step on a GPU: a ~0.5B Llama, bf16, packing.

    python benchmarks/mfu.py --steps 20 --batch 16 --max_length 2048

The model is built from config (random weights, nothing downloaded) and trained through the
recipe's own pieces: `to_training_arguments` (bf16, TF32, fused AdamW on GPU), `PackingCollator`
(flash-attention varlen kwargs when flash-attn is installed) and `SFTTrainer` (trainable-token
loss). Rows are random token ids with random lengths, the first half of each row masked as prompt.

FLOP arithmetic (forward + backward = 3 x forward; a multiply-add is 2 FLOPs):

* every weight matrix of the decoder (q, k, v, o, gate, up, down) is used once per token:
  6 x (decoder matmul parameters) FLOPs per token;
* the LM head (vocab x hidden) the same way, but `SFTTrainer` projects only the tokens whose next
  token is trainable: 6 x vocab x hidden per *trainable* token. The usual count (`mfu_standard`,
  what a plain Trainer is credited with) projects every token;
* attention scores and the weighted sum: per layer, 2 x 2 x n^2 x hidden forward for a row of
  n tokens (the full square, as in the PaLM paper's 12 x layers x hidden x n per token; causal
  kernels skip about half, so this slightly flatters every method equally). Packed rows only
  attend within themselves, so it is a sum over rows, not over the pack.

Embedding lookups, norms, activations and the optimizer are not counted (they are memory-bound).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

# A Llama with ~0.5B parameters: 24 layers of width 1280, 20 heads (4 KV heads), 32k vocabulary.
LLAMA_05B = dict(model_type="llama", hidden_size=1280, intermediate_size=3456, num_hidden_layers=24,
                 num_attention_heads=20, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096,
                 tie_word_embeddings=False)

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendor data sheets.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def decoder_matmul_params(config: dict[str, Any]) -> int:
    """Weights of the decoder's linear layers (no embeddings, norms or LM head), Llama layout."""
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or d // heads
    attention = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q, o; k, v
    mlp = 3 * d * config["intermediate_size"]  # gate, up, down
    return config["num_hidden_layers"] * (attention + mlp)


def step_flops(config: dict[str, Any], row_lengths: list[int], trainable_tokens: int) -> dict[str, float]:
    """FLOPs of one forward + backward over packed rows, for our loss and for the usual count."""
    tokens = sum(row_lengths)
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or d // config["num_attention_heads"]
    attention_width = config["num_attention_heads"] * head_dim
    decoder = 6 * decoder_matmul_params(config) * tokens
    attention = 3 * layers * 4 * attention_width * sum(n * n for n in row_lengths)
    head = 6 * config["vocab_size"] * d
    return {"ours": decoder + attention + head * trainable_tokens, "standard": decoder + attention + head * tokens}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main(argv=None) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    from sft_recipe.recipe.config import SFTConfig
    from sft_recipe.data.collate import make_collator
    from sft_recipe.model.hardware import default_attention
    from sft_recipe.training.trainer import SFTTrainer
    from sft_recipe.training.arguments import loss_chunk_size, to_training_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps (the first 5 are warm-up).")
    parser.add_argument("--batch", type=int, default=16, help="Rows per micro-batch (packed into one row).")
    parser.add_argument("--max_length", type=int, default=2048, help="Longest row; lengths are uniform in [64, max].")
    parser.add_argument("--peak_tflops", type=float, help="The GPU's dense bf16 peak; default: from its name.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (the recipe's torch_compile).")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="The recipe's default; off here because MFU counts the model's FLOPs only, "
                             "and the recomputed forward would be uncounted work (a 0.5B model fits without it).")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("mfu.py measures a GPU; none is available")
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(name)
    if peak is None:
        raise SystemExit(f"unknown peak for {name}; pass --peak_tflops")

    g = torch.Generator().manual_seed(0)
    n_rows = args.steps * args.batch
    lengths = torch.randint(64, args.max_length + 1, (n_rows,), generator=g).tolist()
    rows = []
    for n in lengths:
        ids = torch.randint(3, LLAMA_05B["vocab_size"], (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:]})

    import datasets

    dataset = datasets.Dataset.from_list(rows)
    kwargs = {k: v for k, v in LLAMA_05B.items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **kwargs),
                                             attn_implementation=default_attention(), dtype=torch.float32)
    config = SFTConfig(dataset="synthetic", model_name="synthetic", batch_size=args.batch, packing=True,
                       max_steps=args.steps, learning_rate=1e-4, torch_compile=args.compile, callbacks=[],
                       gradient_checkpointing=args.gradient_checkpointing)
    training_args = to_training_arguments(config, eval_strategy="no", save_strategy="no",
                                          load_best_model_at_end=False, report_to="none", output_dir="/tmp/mfu",
                                          train_sampling_strategy="sequential")
    collator = make_collator(True, 0, flash_attention=model.config._attn_implementation == "flash_attention_2")

    class Timer(TrainerCallback):
        """Times steps after the first five (compilation, allocator warm-up)."""

        def __init__(self):
            self.start, self.steps = None, 0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 5:
                torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self.start is not None:
                self.steps += 1

    timer = Timer()
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                         loss_chunk_size=loss_chunk_size(config), callbacks=[timer])
    trainer.train()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - timer.start
    timed = rows[5 * args.batch:]
    flops = step_flops(LLAMA_05B, [len(r["input_ids"]) for r in timed],
                       sum(sum(x != -100 for x in r["labels"][1:]) for r in timed))
    tokens = sum(len(r["input_ids"]) for r in timed)
    print(f"{name}: {timer.steps} steps, {tokens / seconds:,.0f} tokens/s, "
          f"{flops['ours'] / seconds / 1e12:.1f} TFLOP/s; MFU {flops['ours'] / seconds / 1e12 / peak:.1%} "
          f"(standard count, head on every token: {flops['standard'] / seconds / 1e12 / peak:.1%}); "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
