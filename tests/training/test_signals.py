"""SIGTERM / SIGINT during training: save at the next step end, stop, exit 128 + signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import base_recipe, write_recipe
from transformers import TrainerControl

from sft_recipe.rundir.checkpoints import last_complete_checkpoint
from sft_recipe.training.signals import StopOnSignal, TrainingInterrupted

ONE_PROCESS = SimpleNamespace(world_size=1)


def test_handlers_only_inside_the_block_and_restored_after():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = StopOnSignal()
    with stop.handling_signals():
        assert signal.getsignal(signal.SIGTERM) not in (before[signal.SIGTERM], signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM)
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_asks_trainer_to_save_and_stop_at_step_end(sig, code, tmp_path):
    stop = StopOnSignal()
    control = TrainerControl()
    with stop.handling_signals():
        stop.on_step_end(ONE_PROCESS, None, control)
        assert not (control.should_save or control.should_training_stop)
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
        stop.on_step_end(ONE_PROCESS, None, control)
    assert control.should_save and control.should_training_stop
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(sig).name}") as info:
        stop.raise_if_stopped(str(tmp_path))
    assert info.value.exit_code == code


def test_no_signal_no_stop(tmp_path):
    StopOnSignal().raise_if_stopped(str(tmp_path))  # returns quietly


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits_143(tmp_path, alpaca_file, bpe_tokenizer_dir):
    out = tmp_path / "out"
    # save_steps 30 > the step we signal at: the checkpoint that appears is the one SIGTERM asked for
    recipe = write_recipe(tmp_path / "recipe.yaml", base_recipe(
        tmp_path, alpaca_file, bpe_tokenizer_dir, output_dir=str(out), max_steps=60, batch_size=4,
        eval_steps=30, save_steps=30, logging_steps=1))
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sft_recipe", "train", str(recipe)],
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "| loss " not in log_path.read_text():  # training is under way (a step line)
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    output = log_path.read_text()
    checkpoint = last_complete_checkpoint(out)
    assert checkpoint is not None and int(checkpoint.name.split("-")[1]) < 30, output
    assert f"stopped by SIGTERM; checkpoint saved to {checkpoint}" in output
    assert "re-run the same command" in output
    assert "Traceback" not in output
    assert not (out / "best").exists()
