"""Two processes at batch 2 each reach the same eval loss as one process at batch 4.

Same seed, same global batches (accelerate hands process i the i-th slice of each global batch),
dropout 0, and a loss normalised by the trainable tokens of the whole step across processes: the
runs differ only by float summation order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import base_recipe, tiny_model_config, write_recipe

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_loss(output_dir) -> float:
    return json.loads((output_dir / "eval_results.json").read_text())["eval_loss"]


@pytest.mark.parametrize("tied,accum", [(False, 1), (True, 2)], ids=["untied", "tied-head-accumulated"])
def test_two_processes_match_one(tmp_path, alpaca_file, bpe_tokenizer_dir, tied, accum):
    """Tied: the head's gradient is added into `.grad` during the loss's forward and the embedding's
    part arrives sparse; DDP must still average the whole of it, over accumulated micro-batches too."""
    model_config = tiny_model_config(attention_dropout=0.0, tie_word_embeddings=tied)
    model_config.pop("vocab_size")
    common = dict(model_config=model_config, max_steps=4, eval_steps=4, save_steps=4, logging_steps=1,
                  eval_batch_size=4, group_by_length=False, warmup_steps=0, gradient_accumulation_steps=accum)

    one = tmp_path / "one"
    recipe = write_recipe(tmp_path / "one.yaml", base_recipe(
        tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(one), batch_size=4, **common))
    proc = subprocess.run([sys.executable, "-m", "sft_recipe", "train", str(recipe)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    two = tmp_path / "two"
    recipe = write_recipe(tmp_path / "two.yaml", base_recipe(
        tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(two), batch_size=2, **common))
    # `accelerate launch --cpu` starts a single process (its simple launcher); `--multi_gpu` with CUDA
    # hidden starts real ranks that fall back to CPU and gloo.
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), "-m", "sft_recipe", "train", str(recipe)],
        capture_output=True, text=True, timeout=400, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]

    checkpoint = two / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    # main process only: one summary block, one best/ directory
    assert output.count("done in ") == 1 and output.count(f"saved        {two / 'best'}/") == 1
    assert (two / "best" / "model.safetensors").is_file()
    assert json.loads((two / "trainer_state.json").read_text())["global_step"] == 4
    # the same optimizer steps: per-step training losses (gathered over ranks) and gradient norms
    assert train_log(two) == pytest.approx(train_log(one), abs=1e-3)
    # the same eval loss: the mean over all held-out trainable tokens, gathered over ranks
    assert eval_loss(two) == pytest.approx(eval_loss(one), abs=0.05)


def train_log(output_dir) -> list[float]:
    """[loss, grad_norm, loss, grad_norm, ...] for every logged step."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [value for h in history if "loss" in h for value in (h["loss"], h["grad_norm"])]
