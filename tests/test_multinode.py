"""Two "machines" on loopback (`sft-recipe launch` with accelerate's multi-node flags, one process
each, one shared output_dir) train exactly like one machine with two processes; losing one machine
mid-run ends the other at once in one line, and the next launch resumes to the same final loss."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alpaca_rows, base_recipe, write_jsonl, write_recipe

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
LOST_BOUND_SECONDS = 180  # the documented bound on the CPU (docs/scaling.md) (gloo notices a dead peer at once)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_command(recipe: Path, machines: int, rank: int, port: int) -> list[str]:
    """Exactly the command in docs/scaling.md, with the test's port."""
    return [sys.executable, "-m", "sft_recipe", "launch", "--multi_gpu", "--num_machines", str(machines),
            "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
            "train", str(recipe)]


def run_machines(recipe: Path, machines: int, lose_at: int | None = None,
                 local_caches: Path | None = None) -> list[tuple[int, str, float]]:
    """Start every machine (each in its own process group), wait; (exit code, output, seconds) each.
    The caches are shared (the test session's), or each machine's own under `local_caches`."""
    port, procs, start = free_port(), [], time.time()
    for rank in range(machines):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TESTS)}
        if local_caches is not None:
            env.update(HF_HOME=str(local_caches / f"machine{rank}" / "hf"),
                       SFT_RECIPE_CACHE=str(local_caches / f"machine{rank}" / "sft_recipe"))
        if lose_at is not None and rank == 1:
            env["LOSE_MACHINE_AT_STEP"] = str(lose_at)
        procs.append(subprocess.Popen(machine_command(recipe, machines, rank, port), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True))
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append((p.returncode, out, time.time() - start))
    return results


def final_loss(out: Path) -> float:
    return json.loads((out / "eval_results.json").read_text())["eval_loss"]


@pytest.fixture
def recipe_for(tmp_path, bpe_tokenizer_dir):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(160))

    def make(name: str) -> Path:
        recipe = base_recipe(tmp_path, data, bpe_tokenizer_dir, output_dir=str(tmp_path / name), batch_size=2,
                             max_steps=40, eval_steps=10, save_steps=10, logging_steps=5, eval_batch_size=4,
                             callbacks=["lose_machine.LoseMachine"], ddp_timeout=60)
        recipe["model_config"]["attention_dropout"] = 0.0
        return write_recipe(tmp_path / f"{name}.yaml", recipe)

    return make


def test_two_machines_train_like_one_machine_with_two_processes(recipe_for, tmp_path):
    """Shared caches here (HF_DATASETS_CACHE and the prepared rows, both machines at once)."""
    (code0, out0, _), (code1, out1, _) = run_machines(recipe_for("two_machines"), 2)
    assert code0 == 0 and code1 == 0, out0[-3000:] + out1[-3000:]
    ((code, out, _),) = run_machines(recipe_for("one_machine"), 1)
    assert code == 0, out[-3000:]
    assert final_loss(tmp_path / "two_machines") == pytest.approx(final_loss(tmp_path / "one_machine"), rel=1e-6)
    # one best/, checkpoints with both ranks' states, written once; one console: machine 1 prints nothing
    shared = tmp_path / "two_machines"
    assert (shared / "best" / "model.safetensors").is_file()
    assert sorted(p.name for p in (shared / "checkpoint-40").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert out0.count("best model ") == 1 and "step 40/40" in out0
    assert out1.strip() == "", out1
    for output in (out0, out1):  # no warning lines (find_unused_parameters, wandb, c10d sockets)
        assert not [line for line in output.splitlines() if "warn" in line.lower() or line.startswith("[W")], output


def test_a_lost_machine_ends_the_run_in_one_line_and_the_next_launch_resumes(recipe_for, tmp_path):
    """Node-local caches here: each machine prepares its own data."""
    recipe = recipe_for("lost")
    (code0, out0, seconds), (code1, _, _) = run_machines(recipe, 2, lose_at=25, local_caches=tmp_path / "nodes")
    assert code0 == 3 and code1 != 0
    assert seconds < LOST_BOUND_SECONDS
    assert "Traceback" not in out0 and "ChildFailedError" not in out0, out0
    lines = [line for line in out0.splitlines() if line.startswith("sft-recipe: error:")]
    assert len(lines) == 1 and "lost the process at 127.0.0.1" in lines[0], out0
    assert f"resumes from {tmp_path / 'lost' / 'checkpoint-20'}" in lines[0]
    (code0, out0, _), (code1, out1, _) = run_machines(recipe, 2, local_caches=tmp_path / "nodes")  # the same command
    assert code0 == 0 and code1 == 0, out0[-3000:] + out1[-3000:]
    ((code, out, _),) = run_machines(recipe_for("uninterrupted"), 1)
    assert code == 0, out[-3000:]
    assert final_loss(tmp_path / "lost") == pytest.approx(final_loss(tmp_path / "uninterrupted"), abs=1e-3)
