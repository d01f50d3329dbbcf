"""`streaming: true` end to end: two processes train like one, and a SIGKILLed run resumes mid-stream
to the uninterrupted run's eval loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import (
    alpaca_rows,
    base_recipe,
    tiny_model_config,
    write_jsonl,
    write_recipe,
)
from test_checkpoints import wait_for
from test_distributed import free_port, train_log

from sft_recipe.checkpoints import last_complete_checkpoint

pytestmark = pytest.mark.slow


def eval_loss(output_dir) -> float:
    return json.loads((output_dir / "eval_results.json").read_text())["eval_loss"]


def train_command(recipe) -> list[str]:
    return [sys.executable, "-m", "sft_recipe", "train", str(recipe)]


def test_two_processes_stream_like_one(tmp_path, bpe_tokenizer_dir):
    """Process r trains on rows held_out + r, + r + 2, ...: when no row is dropped (max_length 256 drops
    none here), the global batches of 2 processes at batch 2 are the batches of 1 process at batch 4,
    so the steps match; and the eval loss is that of the non-streaming run (other rows held out,
    another order) within 0.05."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(320))
    model_config = tiny_model_config(attention_dropout=0.0)
    model_config.pop("vocab_size")
    common = dict(model_config=model_config, max_length=256, max_steps=16, eval_steps=16, save_steps=16,
                  logging_steps=1, eval_batch_size=8, warmup_steps=0, eval_fraction=0.25)  # 80 held-out rows each
    stream = dict(streaming=True, streaming_eval_examples=80)
    runs = {}
    for name, batch, extra in (("plain", 4, {}), ("one", 4, stream), ("two", 2, stream)):
        out = tmp_path / name
        recipe = write_recipe(tmp_path / f"{name}.yaml", base_recipe(
            tmp_path, data, bpe_tokenizer_dir, output_dir=str(out), batch_size=batch, **common, **extra))
        command = train_command(recipe)
        if name == "two":
            command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "--main_process_port", str(free_port()), "-m", "sft_recipe", "train", str(recipe)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=400,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        runs[name] = out
    assert sorted(p.name for p in (runs["two"] / "checkpoint-16").glob("stream_state_*")) == \
        ["stream_state_0.json", "stream_state_1.json"]
    assert train_log(runs["two"]) == pytest.approx(train_log(runs["one"]), abs=1e-3)
    assert eval_loss(runs["two"]) == pytest.approx(eval_loss(runs["one"]), abs=0.01)  # summation order, 16 steps
    assert eval_loss(runs["two"]) == pytest.approx(eval_loss(runs["plain"]), abs=0.05)


def test_sigkill_mid_stream_then_rerun_matches_uninterrupted_run(tmp_path, bpe_tokenizer_dir):
    """The stream has fewer rows than the run needs, so the resume also crosses the stream's restart."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(48))
    common = dict(max_steps=12, batch_size=4, eval_steps=3, save_steps=3, logging_steps=3, save_total_limit=None,
                  warmup_steps=2, streaming=True, streaming_eval_examples=8)
    straight = tmp_path / "straight"
    recipe = write_recipe(tmp_path / "straight.yaml",
                          base_recipe(tmp_path, data, bpe_tokenizer_dir, output_dir=str(straight), **common))
    proc = subprocess.run(train_command(recipe), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    killed = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "killed.yaml",
                          base_recipe(tmp_path, data, bpe_tokenizer_dir, output_dir=str(killed), **common))
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(train_command(recipe), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: last_complete_checkpoint(killed) is not None, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    first = last_complete_checkpoint(killed)
    assert first is not None and first.name != "checkpoint-12"
    assert (first / "stream_state_0.json").is_file()

    rerun = subprocess.run(train_command(recipe), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-5000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 12
    assert train_log(killed)[-2:] == pytest.approx(train_log(straight)[-2:], abs=1e-3)
    assert eval_loss(killed) == pytest.approx(eval_loss(straight), abs=1e-3)
