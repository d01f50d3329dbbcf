"""End-to-end `train()` on a mixture: per-source counts in the data line, per-source eval losses
whose token-weighted mean is the overall eval loss, `packing: bfd`; what a run imports."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from conftest import alpaca_rows, tiny_model_config, write_jsonl

from sft_recipe.recipe.files import build_config
from sft_recipe.commands.train import train

CHAT = [{"role": "user", "content": "count: cat cat"}, {"role": "assistant", "content": "two"}]


def test_mixture_trains_with_bfd_and_reports_every_source(tmp_path, bpe_tokenizer_dir, caplog):
    packing = "bfd"
    qa = [{"question": r["instruction"], "answer": r["output"]} for r in alpaca_rows(40, seed=1)]
    sources = [
        {"path": str(write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(40))), "format": "alpaca", "weight": 2},
        {"path": str(write_jsonl(tmp_path / "qa.jsonl", qa)), "format": "alpaca", "name": "qa",
         "columns": {"instruction": "question", "output": "answer"}},
        {"path": str(write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}] * 20)), "format": "messages"},
    ]
    model_config = tiny_model_config()
    model_config.pop("vocab_size")
    config = build_config(dict(
        datasets=sources, from_scratch=True, model_config=model_config, tokenizer_name=str(bpe_tokenizer_dir),
        chat_template="chatml", max_length=256, packing=packing, batch_size=2, max_steps=2, eval_steps=2,
        save_steps=2, logging_steps=1, learning_rate=3e-3, output_dir=str(tmp_path / "out"), seed=0,
        eval_fraction=0.2, callbacks=[]), "test")
    with caplog.at_level(logging.INFO, logger="sft_recipe"):
        metrics = train(config)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data: "))
    assert "sources: alpaca " in line and "; qa " in line and "; chat " in line
    assert ("packed " in line) == (packing == "bfd")
    parts = {name: metrics[f"eval_{name}_loss"] for name in ("alpaca", "qa", "chat")}
    # The overall loss is the mean over every held-out trainable token: the token-weighted mean of the
    # parts (every held-out row starts with a masked prompt token, so the counts are the stats' counts).
    saved = json.loads((tmp_path / "out" / "train_results.json").read_text())["data_sources"]
    tokens = {name: saved[name]["eval"]["trainable_tokens"] for name in parts}
    weighted = sum(parts[n] * tokens[n] for n in parts) / sum(tokens.values())
    assert metrics["eval_loss"] == pytest.approx(weighted, rel=1e-6)
    assert (tmp_path / "out" / "best" / "model.safetensors").is_file()


def test_a_run_without_generation_metrics_does_not_import_evaluate():
    """`evaluate` pulls in scipy.stats (25 MiB resident for the whole run): the training path must
    not import it; the command line hands `generation_check` over only when the recipe asks."""
    code = "import sys, sft_recipe.cli, sft_recipe.commands.train; print('evaluate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


def test_generation_metrics_without_the_check_are_refused(tmp_path):
    config = build_config(dict(model_name=str(tmp_path / "m"), dataset=str(tmp_path / "d.jsonl"),
                               output_dir=str(tmp_path / "out"), generation_eval_samples=2), "test")
    with pytest.raises(ValueError, match="generation_check"):
        train(config)


def test_mlp_tiles_train_the_same_steps(tmp_path, bpe_tokenizer_dir, caplog):
    """`mlp_tile_tokens` through the real run: the same losses step by step, and the log says so."""
    model_config = tiny_model_config()
    model_config.pop("vocab_size")
    rows = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(24))
    losses = {}
    for tiles in (0, 8):
        config = build_config(dict(
            dataset=str(rows), dataset_format="alpaca", from_scratch=True, model_config=model_config,
            tokenizer_name=str(bpe_tokenizer_dir), max_length=256, batch_size=4, max_steps=3, eval_steps=3,
            save_steps=3, logging_steps=1, learning_rate=3e-3, output_dir=str(tmp_path / f"out{tiles}"), seed=0,
            eval_fraction=0.2, callbacks=[], mlp_tile_tokens=tiles), "test")
        with caplog.at_level(logging.INFO, logger="sft_recipe"):
            train(config)
        log = [json.loads(line) for line in (tmp_path / f"out{tiles}" / "train_log.jsonl").read_text().splitlines()]
        losses[tiles] = [entry["loss"] for entry in log if "loss" in entry]
    assert "mlp_tile_tokens: 2 LlamaMLP run in tiles of 8 tokens" in caplog.text
    assert len(losses[0]) == 3 and losses[8] == pytest.approx(losses[0], rel=1e-5)
