"""Resume: the last *complete* checkpoint is picked up, half-written ones never are, and a run
killed with SIGKILL and re-run ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import base_recipe, write_recipe
from safetensors.torch import save_file

from sft_recipe.rundir.layout import COMPLETE_MARKER
from sft_recipe.rundir.checkpoints import last_complete_checkpoint, prepare_output_dir
from sft_recipe.cli import main
from sft_recipe.recipe.files import load_recipe

MAIN_PROCESS = SimpleNamespace(process_index=0)


def make_checkpoint(out: Path, step: int, state: bool = True, marker: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    # a readable weights file: resume checks the headers of a complete checkpoint's files
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        (path / COMPLETE_MARKER).write_text(f"step {step}\n")
    return path


def config_for(tmp_path: Path, alpaca_file: Path, bpe_tokenizer_dir: Path, **overrides):
    path = write_recipe(tmp_path / "recipe.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, **overrides))
    return load_recipe(path)


def test_resume_skips_and_removes_half_written_checkpoints(tmp_path, alpaca_file, bpe_tokenizer_dir, caplog):
    config = config_for(tmp_path, alpaca_file, bpe_tokenizer_dir)
    out = Path(config.output_dir)
    make_checkpoint(out, 3)
    make_checkpoint(out, 10)  # step 10 > 9: numeric order, not string order
    killed_before_marker = make_checkpoint(out, 12, marker=False)  # weights and state, no marker
    killed_early = make_checkpoint(out, 15, state=False, marker=False)  # weights only
    (out / "checkpoint-x").mkdir()  # not a checkpoint name: left alone

    with caplog.at_level("WARNING", logger="sft_recipe"):
        resume = prepare_output_dir(config, MAIN_PROCESS)

    assert resume == str(out / "checkpoint-10")
    assert not killed_before_marker.exists() and not killed_early.exists()
    assert (out / "checkpoint-3").exists() and (out / "checkpoint-x").exists()
    assert f"resuming from {out / 'checkpoint-10'}" in caplog.text
    assert "removing incomplete checkpoint" in caplog.text


def test_marker_without_trainer_state_is_not_complete(tmp_path):
    make_checkpoint(tmp_path, 5, state=False, marker=True)
    assert last_complete_checkpoint(tmp_path) is None


def test_overwrite_output_dir_starts_fresh(tmp_path, alpaca_file, bpe_tokenizer_dir):
    config = config_for(tmp_path, alpaca_file, bpe_tokenizer_dir, overwrite_output_dir=True)
    out = Path(config.output_dir)
    make_checkpoint(out, 3)
    assert prepare_output_dir(config, MAIN_PROCESS) is None
    assert not (out / "checkpoint-3").exists()


def test_other_ranks_do_not_delete(tmp_path, alpaca_file, bpe_tokenizer_dir):
    config = config_for(tmp_path, alpaca_file, bpe_tokenizer_dir)
    out = Path(config.output_dir)
    partial = make_checkpoint(out, 6, marker=False)
    assert prepare_output_dir(config, SimpleNamespace(process_index=1)) is None
    assert partial.exists()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.05)


def eval_loss(output_dir: Path) -> float:
    return json.loads((output_dir / "eval_results.json").read_text())["eval_loss"]


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path, alpaca_file, bpe_tokenizer_dir, capsys):
    """Same data order, RNG state, LR schedule and step count after a hard kill."""
    common = dict(max_steps=12, batch_size=4, eval_steps=3, save_steps=3, logging_steps=3,
                  save_total_limit=None, warmup_steps=2)
    straight = tmp_path / "straight"
    recipe = write_recipe(tmp_path / "straight.yaml",
                          base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(straight), **common))
    assert main(["train", str(recipe)]) == 0

    killed = tmp_path / "killed"
    recipe = write_recipe(tmp_path / "killed.yaml",
                          base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(killed), **common))
    command = [sys.executable, "-m", "sft_recipe", "train", str(recipe)]
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: last_complete_checkpoint(killed) is not None, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    first = last_complete_checkpoint(killed)
    assert first is not None and first.name != "checkpoint-12"

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from" in rerun.stdout + rerun.stderr
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    assert eval_loss(killed) == pytest.approx(eval_loss(straight), abs=1e-3)
