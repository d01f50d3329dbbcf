"""Done-criterion: one tiny offline run through the real CLI with every integration switched on.

wandb (offline run with the recipe config, eval metrics and a generations table), samples, loss
curve, model card, push to a local fake hub with a sentinel HF_TOKEN that must appear nowhere,
then `sft-recipe generate` and `sft-recipe eval` on the saved best/.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_recipe, write_recipe
from hub_server import start_fake_hub

SENTINEL = "hf_SENTINELtoken0123456789"


def wandb_records(run_dir: Path):
    """The records of an offline run's `run-*.wandb` file (a LevelDB-style log of protobufs:
    7-byte header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_contents(run_dir: Path) -> tuple[dict, dict]:
    """(config updates by key, history values by key -> list of values) of an offline run."""
    config, history = {}, {}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return config, history


@pytest.mark.slow
def test_wandb_card_hub_generate_and_eval_end_to_end(tmp_path, alpaca_file, bpe_tokenizer_dir, capsys):
    from sft_recipe.cli import main

    hub, server = start_fake_hub()
    out = tmp_path / "out"
    recipe = base_recipe(tmp_path, alpaca_file, bpe_tokenizer_dir, report_to=["wandb"],
                         callbacks=["nan_guard", "throughput", "loss_curve", "samples"], sample_prompts=[],
                         generation_eval_samples=4, max_new_tokens=6, push_to_hub=True, hub_model_id="me/tiny-sft")
    path = write_recipe(tmp_path / "recipe.yaml", recipe)
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": SENTINEL,
           "WANDB_DIR": str(tmp_path / "wandb"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    (tmp_path / "wandb").mkdir()
    try:
        proc = subprocess.run([sys.executable, "-m", "sft_recipe", "train", str(path)], env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]

    # wandb: the recipe is in the run config, eval metrics and the samples table in the history
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    config, history = wandb_contents(run_dir)
    assert config["recipe"]["hub_model_id"] == "me/tiny-sft"
    assert config["recipe"]["model_config"]["model_type"] == "llama"
    assert "learning_rate" in config  # the Trainer's own TrainingArguments dump is still there
    for key in ("eval/loss", "eval/perplexity", "eval/token_accuracy", "eval/exact_match", "eval/rouge_l",
                "train/loss", "train/learning_rate", "train/tokens_per_second", "train/trainable_tokens_per_second",
                "train/eta_seconds", "train/peak_rss_gb"):
        assert key in history, key
    # steps 3 and 6, and the best model again only if it is not the last step (else step 6 is its evaluation)
    evaluations = 2 + (json.loads((out / "trainer_state.json").read_text())["best_global_step"] != 6)
    assert len(history["eval/loss"]) == evaluations
    tables = sorted((run_dir / "files" / "media" / "table" / "eval").glob("samples_*.table.json"),
                    key=lambda p: int(p.name.split("_")[1]))  # samples_<wandb step>_<hash>.table.json
    assert len(tables) == evaluations
    last = json.loads(tables[-1].read_text())
    assert last["columns"] == ["step", "prompt", "generation"]
    assert [row[0] for row in last["data"]] == [3] * 3 + [6] * 3 * (evaluations - 1)

    # best/: weights, card with metrics and the loss curve next to it
    best = out / "best"
    card = (best / "README.md").read_text()
    assert "## Results" in card and "| exact_match |" in card and "![Train and eval loss](loss_curve.png)" in card
    for png in (out / "loss_curve.png", best / "loss_curve.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"

    # the push: every file of best/ arrived, byte for byte, authenticated with the token
    assert hub.files["me/tiny-sft"] == {p.name: p.read_bytes() for p in best.iterdir() if not p.name.startswith(".")}
    assert {"model.safetensors", "README.md", "sft_recipe.yaml", "tokenizer.json"} <= set(hub.files["me/tiny-sft"])

    # the token appears nowhere: console, output dir, wandb run
    assert SENTINEL not in proc.stdout + proc.stderr
    for file in [*out.rglob("*"), *(tmp_path / "wandb").rglob("*")]:
        if file.is_file():
            assert SENTINEL.encode() not in file.read_bytes(), file

    # generate and eval answer from best/
    capsys.readouterr()
    assert main(["generate", str(best), "What is 2 plus 3?", "--max_new_tokens", "4"]) == 0
    from sft_recipe.formats.alpaca import alpaca_prompt
    from sft_recipe.model.generate import generate_answers
    from sft_recipe.model.load import load_for_inference

    model, tokenizer = load_for_inference(best)
    (expected,) = generate_answers(model, tokenizer, [alpaca_prompt("What is 2 plus 3?")], max_new_tokens=4)
    assert capsys.readouterr().out == expected + "\n"  # the saved model, in its training template
    assert main(["eval", str(best), "--output", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    final = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-4)
    assert metrics["eval_token_accuracy"] == pytest.approx(final["eval_token_accuracy"])
    assert metrics["eval_exact_match"] == final["eval_exact_match"]
    assert metrics["eval_rouge_l"] == pytest.approx(final["eval_rouge_l"])
