"""Generation metrics shipped as `evaluate` modules, and the trainer's eval perplexity / token accuracy."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.commands.metrics import METRICS_DIR, load_metric, score_generations


def metric_module(name: str):
    spec = importlib.util.spec_from_file_location(name, METRICS_DIR / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rouge = metric_module("rouge_l")


def test_exact_match_via_evaluate_load_by_path_ignores_whitespace_only():
    metric = load_metric("exact_match")
    result = metric.compute(predictions=["1 2  3\n", "Tuesday", "tuesday", ""], references=["1 2 3", "Tuesday",
                                                                                            "Tuesday", "x"])
    assert result == {"exact_match": 0.5}  # case matters; whitespace does not
    assert metric.compute(predictions=[], references=[]) == {"exact_match": 0.0}


def test_rouge_l_golden_values():
    # "the cat sat" vs "the cat on the mat": LCS "the cat" = 2, P = 2/3, R = 2/5, F1 = 0.5
    assert rouge.rouge_l_f1("the cat sat", "the cat on the mat") == pytest.approx(0.5)
    # punctuation and case are separators, as in rouge_score's tokenizer
    assert rouge.rouge_l_f1("Apple, river!", "apple river") == 1.0
    assert rouge.rouge_l_f1("a b c d", "d c b a") == pytest.approx(0.25)  # LCS 1 of 4
    assert rouge.rouge_l_f1("", "anything") == 0.0
    result = load_metric("rouge_l").compute(predictions=["the cat sat", "x"], references=["the cat on the mat", "y"])
    assert result == {"rouge_l": pytest.approx(0.25)}


def test_score_generations_reports_eval_prefixed_metrics():
    scores = score_generations(["3 4", "Monday"], ["3 4", "Sunday"])
    assert scores == {"eval_exact_match": 0.5, "eval_rouge_l": 0.5}


words = st.lists(st.sampled_from(["a", "b", "c", "dog", "7"]), max_size=8)


@settings(max_examples=60, deadline=None)
@given(words, words)
def test_lcs_is_symmetric_bounded_and_a_subsequence_length(a, b):
    n = rouge.lcs_length(a, b)
    assert n == rouge.lcs_length(b, a)
    assert 0 <= n <= min(len(a), len(b))
    f1 = rouge.rouge_l_f1(" ".join(a), " ".join(b))
    assert 0.0 <= f1 <= 1.0
    if a:
        assert rouge.rouge_l_f1(" ".join(a), " ".join(a)) == 1.0


def test_eval_perplexity_and_token_accuracy_count_trainable_tokens_only(toy_tokenizer, tmp_path):
    """Two rows with hand-made labels: the trainer's metrics equal a direct computation on the
    positions whose label is not -100 (shifted, as the model predicts the next token)."""
    from datasets import Dataset

    from sft_recipe.recipe.config import SFTConfig
    from sft_recipe.data.collate import make_collator
    from sft_recipe.training.trainer import SFTTrainer
    from sft_recipe.training.arguments import to_training_arguments

    model = tiny_model(vocab_size=len(toy_tokenizer))
    rows = {"input_ids": [[3, 5, 6, 4, 14, 1], [3, 8, 9, 4, 15, 16, 1]],
            "labels": [[-100, -100, -100, -100, 14, 1], [-100, -100, -100, -100, 15, 16, 1]]}
    data = Dataset.from_dict(rows)
    config = SFTConfig(dataset="x", model_name="x", output_dir=str(tmp_path), batch_size=2)
    args = to_training_arguments(config, report_to="none")
    trainer = SFTTrainer(model=model, args=args, eval_dataset=data, processing_class=toy_tokenizer,
                         data_collator=make_collator(False, toy_tokenizer.pad_token_id, None))
    metrics = trainer.evaluate()

    losses, hits = [], []
    with torch.no_grad():
        for ids, labels in zip(rows["input_ids"], rows["labels"]):
            logits = model(torch.tensor([ids])).logits[0]
            for pos in range(1, len(ids)):
                if labels[pos] != -100:
                    losses.append(torch.nn.functional.cross_entropy(logits[pos - 1], torch.tensor(labels[pos])))
                    hits.append(int(logits[pos - 1].argmax()) == labels[pos])
    expected_loss = float(torch.stack(losses).mean())
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-4)
    assert metrics["eval_token_accuracy"] == pytest.approx(sum(hits) / len(hits))  # 5 trainable tokens
    assert len(hits) == 5
