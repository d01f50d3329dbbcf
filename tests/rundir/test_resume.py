"""Resume is honest (resume.py), a run owns its output_dir (lock.py), damage is survivable
(checkpoints.py): one trained run, copied for each way of re-running it."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
from conftest import base_recipe, write_recipe

from sft_recipe.rundir.layout import FINISHED_FILENAME, LOCK_FILENAME, RECIPE_FILENAME
from sft_recipe.cli import main
from sft_recipe.rundir.lock import process_start


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sft-recipe: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, bpe_tokenizer_dir):
    """A finished 6-step run (checkpoints 3 and 6), and its stdout."""
    import io
    from contextlib import redirect_stdout

    from conftest import alpaca_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("run")
    data = write_jsonl(tmp / "alpaca.jsonl", alpaca_rows())
    recipe = write_recipe(tmp / "recipe.yaml", base_recipe(tmp, data, bpe_tokenizer_dir, save_total_limit=3))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["train", str(recipe)]) == 0
    return tmp, out.getvalue()


@pytest.fixture
def run_copy(finished_run, tmp_path, bpe_tokenizer_dir, capsys):
    """A private copy of the finished run; returns `train(*overrides) -> (code, stdout, stderr)`."""
    source, _ = finished_run
    shutil.copytree(source / "out", tmp_path / "out")
    recipe_values = base_recipe(tmp_path, source / "alpaca.jsonl", bpe_tokenizer_dir, save_total_limit=3)
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_values)
    capsys.readouterr()

    def train(*overrides: str) -> tuple[int, str, str]:
        code = main(["train", str(recipe), *overrides])
        out, err = capsys.readouterr()
        return code, out, err

    return train


def test_every_checkpoint_carries_the_recipe_and_no_tied_weights_warning(finished_run):
    tmp, out = finished_run
    for step in (3, 6):
        assert (tmp / "out" / f"checkpoint-{step}" / RECIPE_FILENAME).is_file()
    assert "missing keys" not in out
    assert not (tmp / "out" / LOCK_FILENAME).exists()  # released at the end


def test_finished_run_run_again_does_nothing(run_copy, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    code, out, err = run_copy()
    assert code == 0, err
    assert "already finished at step 6" in out and f"{tmp_path / 'out' / 'best'}" in out
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    assert not (tmp_path / "out" / "checkpoint-7").exists()


def test_changed_trajectory_setting_is_refused(run_copy):
    code, _, err = run_copy("--learning_rate", "1e-2")
    line = error_line(err)
    assert code == 2 and "learning_rate" in line and "--overwrite_output_dir true" in line


def test_changed_cadence_is_allowed(run_copy):
    code, out, err = run_copy("--logging_steps", "2")
    assert code == 0, err
    assert "already finished" in out


def test_extending_max_steps_trains_on(run_copy, tmp_path):
    code, out, err = run_copy("--max_steps", "9")
    assert code == 0, err
    assert (tmp_path / "out" / "checkpoint-9").is_dir()
    assert json.loads((tmp_path / "out" / FINISHED_FILENAME).read_text())["global_step"] == 9


def test_damaged_newest_checkpoint_falls_back_to_the_previous(run_copy, tmp_path):
    out = tmp_path / "out"
    weights = out / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, yet marked complete
    code, stdout, err = run_copy()
    assert code == 0, err
    assert "skipping" in stdout and "model.safetensors is " in stdout and "checkpoint-3" in stdout
    assert (out / "damaged-checkpoint-6").is_dir() and (out / "checkpoint-6").is_dir()  # retrained


def test_no_usable_checkpoint_is_one_line(run_copy, tmp_path):
    for step in (3, 6):
        (tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").write_text("{trunc")
    code, _, err = run_copy()
    assert code == 2 and "no usable checkpoint" in error_line(err)


def test_second_run_on_the_same_output_dir_is_refused(run_copy, tmp_path):
    lock = tmp_path / "out" / LOCK_FILENAME
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
              "started": "2025-01-01 00:00:00"}
    lock.write_text(json.dumps(holder))
    code, _, err = run_copy()
    line = error_line(err)
    assert code == 2 and f"pid {os.getpid()}" in line and "in use by another run" in line
    assert lock.exists()  # still the holder's


def test_stale_lock_of_a_dead_process_is_taken_over(run_copy, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "out" / LOCK_FILENAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "start": "1"}))
    code, out, err = run_copy()
    assert code == 0, err
    assert "taking over the lock" in out and not lock.exists()


def test_lock_of_another_host_is_never_taken(run_copy, tmp_path):
    lock = tmp_path / "out" / LOCK_FILENAME
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    code, _, err = run_copy()
    assert code == 2 and "host elsewhere" in error_line(err)


def test_generate_on_a_checkpoint_uses_the_prompt_template(finished_run, monkeypatch, capsys):
    import sft_recipe.commands.chat as generate_module  # `generate` is a command of commands/chat.py

    tmp, _ = finished_run
    seen = []

    def fake(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return ["ok"]

    monkeypatch.setattr(generate_module, "generate_answers", fake)
    for model_dir in (tmp / "out" / "checkpoint-3", tmp / "out" / "best"):
        assert main(["generate", str(model_dir), "Say yes."]) == 0
    assert len(seen) == 2 and seen[0] == seen[1] and "### Instruction:\nSay yes." in seen[0]


@pytest.mark.parametrize("failure", ["torch", "safetensors", "oserror"])
def test_any_save_failure_is_one_line_and_never_resumed_from(tmp_path, alpaca_file, bpe_tokenizer_dir,
                                                             monkeypatch, capsys, failure):
    import safetensors
    import torch

    from sft_recipe.rundir.checkpoints import last_complete_checkpoint

    def broken(*args, **kwargs):
        target = str(args[1] if len(args) > 1 else kwargs.get("f", kwargs.get("filename", "")))
        if "checkpoint-3" in target:
            if failure == "torch":
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 123")
            if failure == "safetensors":
                raise safetensors.SafetensorError("Error while serializing: IoError")
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    if failure == "safetensors":
        import transformers.modeling_utils as modeling_utils

        real = modeling_utils.safe_save_file
        monkeypatch.setattr(modeling_utils, "safe_save_file", broken)
    else:
        real = torch.save
        monkeypatch.setattr(torch, "save", broken)
    recipe = write_recipe(tmp_path / "recipe.yaml", base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir))
    assert main(["train", str(recipe)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'out' / 'checkpoint-3'}" in line and "saving failed" in line
    assert last_complete_checkpoint(tmp_path / "out") is None
    assert not (tmp_path / "out" / LOCK_FILENAME).exists()
