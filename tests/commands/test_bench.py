"""`sft-recipe bench`: lm-evaluation-harness scores a trained model exactly as the project's own check does.

A small model is trained on the demo's tasks; the harness's own `HFLM`, `generate_until` and
`exact_match` score it on a local task built from the same held-out prompts. With the model's chat
template applied as at training, greedy decoding and the end-of-turn marker as `until`, every
generation must equal the project's `generation_eval_samples` answer, prompt by prompt, and so must
the score.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_recipe

from sft_recipe.cli import main
from sft_recipe.commands.bench import bench, with_model_index
from sft_recipe.commands.metrics import score_generations
from sft_recipe.data.chat_template import last_turn_prompts
from sft_recipe.data.prepare import prepare_data
from sft_recipe.model.generate import generate_answers
from sft_recipe.model.load import load_for_inference
from sft_recipe.recipe.files import load_recipe

lm_eval = pytest.importorskip("lm_eval")  # the `bench` extra; the `dev` extra installs it, so CI runs this
SAMPLES = 24
MAX_NEW_TOKENS = 16


def demo_recipe(root: Path, **overrides) -> dict:
    recipe = {
        "model_name": None, "from_scratch": True, "tokenizer_name": "builtin:tasks-bpe",
        "model_config": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 4, "intermediate_size": 192, "max_position_embeddings": 256,
                         "tie_word_embeddings": True},
        "dataset": "builtin:tasks-chat", "dataset_format": "messages", "chat_template": "chatml",
        "max_examples": 2400, "eval_fraction": 0.05, "max_length": 128, "batch_size": 32, "learning_rate": 3e-3,
        "warmup_steps": 20, "max_steps": 200, "weight_decay": 0.0, "logging_steps": 100, "eval_steps": 200,
        "save_steps": 200, "save_total_limit": 1, "output_dir": str(root / "out"), "callbacks": [],
        "generation_eval_samples": SAMPLES, "max_new_tokens": MAX_NEW_TOKENS,
    }
    return {**recipe, **overrides}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(best/, recipe) of a small model trained briefly on the demo's tasks (chat, chatml)."""
    root = tmp_path_factory.mktemp("bench")
    path = write_recipe(root / "recipe.yaml", demo_recipe(root))
    assert main(["train", str(path)]) == 0
    return root / "out" / "best", path


def local_task(folder: Path, rows) -> Path:
    """A harness task over `rows` (last user turn -> answer), read from local JSON: no download."""
    folder.mkdir(exist_ok=True)
    data = folder / "held_out.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in zip(rows["shown"], rows["completion"])), encoding="utf-8")
    (folder / "demo_tasks.yaml").write_text(yaml.safe_dump({
        "task": "demo_tasks", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["<|im_end|>"], "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS},
        # the project's normalisation (`normalise_answer`): surrounding whitespace does not count
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "regexes_to_ignore": ["^\\s+", "\\s+$"]}],
    }), encoding="utf-8")
    return folder


def test_the_harness_agrees_with_the_projects_exact_match(trained, tmp_path):
    best, recipe_path = trained
    config = load_recipe(str(recipe_path), [])
    model, tokenizer = load_for_inference(best)
    data = prepare_data(config, tokenizer)  # the same held-out rows the run scored (the cache: no tokenizing)
    rows, chat_kwargs = last_turn_prompts(data.eval_raw.select(range(SAMPLES)), tokenizer)
    ours = generate_answers(model, tokenizer, rows["prompt"], max_new_tokens=MAX_NEW_TOKENS, **chat_kwargs)
    our_score = score_generations(ours, rows["completion"])["eval_exact_match"]
    results = json.loads((best.parent / "eval_results.json").read_text())
    assert results["eval_exact_match"] == pytest.approx(our_score)  # what the run itself reported

    out = bench(best, ["demo_tasks"], include_path=str(local_task(tmp_path / "tasks", rows)), log_samples=True)
    assert out["chat_template"] is True  # trained on conversations: the model's own template, as at training
    by_question = {s["doc"]["question"]: s["resps"][0][0] for s in out["samples"]["demo_tasks"]}
    theirs = [by_question[q] for q in rows["shown"]]
    assert [t.strip() for t in theirs] == [o.strip() for o in ours]  # the same text, prompt by prompt
    assert out["scores"]["demo_tasks"]["exact_match"] == pytest.approx(our_score)
    assert 0 < our_score  # the model learned something, so agreement is not 0 == 0


def test_bench_command_records_scores_in_results_and_card(trained, tmp_path, capsys):
    best, _ = trained
    model, tokenizer = load_for_inference(best)
    rows = {"shown": ["repeat: a b", "reverse: a b"], "completion": ["a b a b", "b a"]}
    tasks = local_task(tmp_path / "tasks", rows)
    assert main(["bench", str(best), "--tasks", "demo_tasks", "--include_path", str(tasks), "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    assert "demo_tasks" in printed and "exact_match" in printed
    results = json.loads((best / "eval_results.json").read_text())
    assert "exact_match" in results["bench"]["demo_tasks"]
    card = (best / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["model-index"][0]["results"][0]["task"]["name"] == "demo_tasks"


@pytest.mark.parametrize("argv,expected", [
    (["--tasks", "no_such_task_xyz"], "unknown harness task 'no_such_task_xyz'"),
    (["--tasks", "demo_tasks", "--include_path", "/nonexistent/tasks"], "--include_path must be a folder"),
], ids=["unknown-task", "missing-include-path"])
def test_bad_bench_input_is_one_line(trained, capsys, argv, expected):
    best, _ = trained
    assert main(["bench", str(best), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err


def test_model_index_keeps_the_rest_of_the_front_matter():
    card = "---\nlibrary_name: transformers\ntags:\n- sft-recipe\n---\n\n# model\n"
    out = with_model_index(card, {"t": {"exact_match": 0.5}}, "m")
    meta = yaml.safe_load(out.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.5
    assert out.endswith("# model\n")


def test_bench_tasks_run_after_training_and_reach_results_card_and_summary(tmp_path, capsys):
    tasks = local_task(tmp_path / "tasks", {"shown": ["repeat: a b", "reverse: a b"], "completion": ["a b a b", "b a"]})
    recipe = demo_recipe(tmp_path, max_steps=4, eval_steps=4, save_steps=4, generation_eval_samples=0,
                         bench_tasks=["demo_tasks"], bench_include_path=str(tasks), max_examples=400)
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = capsys.readouterr().out
    assert "bench        demo_tasks: exact_match" in out
    best = tmp_path / "out" / "best"
    assert "demo_tasks" in json.loads((tmp_path / "out" / "eval_results.json").read_text())["bench"]
    assert "demo_tasks" in json.loads((best / "eval_results.json").read_text())["bench"]
    assert "model-index" in (best / "README.md").read_text()


def test_an_unknown_bench_task_stops_before_training(tmp_path, capsys):
    recipe = demo_recipe(tmp_path, max_steps=4, bench_tasks=["no_such_task_xyz"])
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown harness task 'no_such_task_xyz'" in err
    assert not (tmp_path / "out" / "best").exists()


def test_without_the_harness_bench_is_one_line(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the extra were not installed
    assert main(["bench", str(tmp_path), "--tasks", "x"]) == 2
    assert "pip install -e \".[bench]\"" in capsys.readouterr().err
