"""The real-shape comparison on a GPU, in one invocation; on a machine without CUDA it prints what it
would run and exits 0.

    python benchmarks/gpu.py --data gsm8k_alpaca.json --tokenizer chat-tokenizers/qwen2.5

Contenders (each in its own process, same model, rows, steps: `throughput.py`): a plain `Trainer`,
TRL's `SFTTrainer` (defaults), and sft-recipe with its defaults (bf16, SDPA or flash-attention 2,
fused AdamW, gradient checkpointing), with `packing: bfd`, and with `torch_compile: true`. Model:
Qwen2.5-0.5B's head and vocabulary on 2 layers. Not yet here: TRL with Liger (its flag would need a
`throughput.py` option for the TRL contender) and the full 24-layer shape.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plan(args) -> list[list[str]]:
    base = [sys.executable, str(HERE / "throughput.py"), "--data", args.data, "--tokenizer", args.tokenizer,
            "--shape", "qwen2.5-0.5b-head", "--join", "5", "--rows", str(args.rows), "--batch", "4", "--accum", "1",
            "--max_length", "2048"]
    runs = [base + ["--only", "trainer", "trl", "sft_recipe"]]
    runs.append(base + ["--only", "sft_recipe", "--", "--packing", "bfd"])
    runs.append(base + ["--only", "sft_recipe", "--", "--torch_compile", "true"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/gsm8k_alpaca.json")
    parser.add_argument("--tokenizer", default="../shared/data/chat-tokenizers/qwen2.5")
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args()
    import torch

    runs = plan(args)
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark would run, in order:")
        for cmd in runs:
            print("  " + " ".join(cmd[1:]))
        return
    for cmd in runs:
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
