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

from sft_recipe.rundir.checkpoints import last_complete_checkpoint

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


def kill_mid_stream_and_rerun(tmp_path, recipe: dict) -> tuple:
    """Train `recipe` straight through, and again with a SIGKILL after the first complete checkpoint and a
    rerun of the same command; returns (straight output dir, killed-and-resumed output dir)."""
    straight = tmp_path / "straight"
    path = write_recipe(tmp_path / "straight.yaml", {**recipe, "output_dir": str(straight)})
    proc = subprocess.run(train_command(path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    killed = tmp_path / "killed"
    path = write_recipe(tmp_path / "killed.yaml", {**recipe, "output_dir": str(killed)})
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(train_command(path), stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: last_complete_checkpoint(killed) is not None, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    first = last_complete_checkpoint(killed)
    assert first is not None and first.name != f"checkpoint-{recipe['max_steps']}"
    assert (first / "stream_state_0.json").is_file()

    rerun = subprocess.run(train_command(path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-5000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == recipe["max_steps"]
    assert train_log(killed)[-2:] == pytest.approx(train_log(straight)[-2:], abs=1e-3)
    assert eval_loss(killed) == pytest.approx(eval_loss(straight), abs=1e-3)
    return straight, killed


def test_sigkill_mid_stream_then_rerun_matches_uninterrupted_run(tmp_path, bpe_tokenizer_dir):
    """The stream has fewer rows than the run needs, so the resume also crosses the stream's restart."""
    data = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(48))
    kill_mid_stream_and_rerun(tmp_path, base_recipe(
        tmp_path, data, bpe_tokenizer_dir, max_steps=12, batch_size=4, eval_steps=3, save_steps=3, logging_steps=3,
        save_total_limit=None, warmup_steps=2, streaming=True, streaming_eval_examples=8))


def test_streamed_mixture_reports_every_source_and_resumes_after_sigkill(tmp_path, bpe_tokenizer_dir):
    """Alpaca rows under their own column names (weight 2) and plain text (weight 1), streamed: the
    data line names both, each has its eval loss, and a killed run resumes to the straight run's losses."""
    renamed = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in alpaca_rows(60)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"the cat sat on the mat {i}\n" for i in range(80)), encoding="utf-8")
    recipe = base_recipe(tmp_path, tmp_path / "unused", bpe_tokenizer_dir, max_steps=9, batch_size=4, eval_steps=3,
                         save_steps=3, logging_steps=3, save_total_limit=None, warmup_steps=2, streaming=True,
                         streaming_eval_examples=4, max_length=128, datasets=[
                             {"path": str(write_jsonl(tmp_path / "tasks.jsonl", renamed)), "format": "alpaca",
                              "weight": 2, "columns": {"instruction": "question", "input": "context",
                                                       "output": "answer"}},
                             {"path": str(corpus), "format": "text", "name": "corpus"}])
    recipe.pop("dataset")
    straight, killed = kill_mid_stream_and_rerun(tmp_path, recipe)
    results = json.loads((straight / "eval_results.json").read_text())
    assert {"eval_tasks_loss", "eval_corpus_loss", "eval_loss"} <= set(results)
    position = json.loads((killed / "checkpoint-9" / "stream_state_0.json").read_text())
    assert position["per_source"] == {"tasks": 24, "corpus": 12}  # 9 steps x 4 items, 2:1
