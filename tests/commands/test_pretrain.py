"""The pretraining path: raw text -> blocks -> a from-scratch model -> best/ -> SFT -> generate."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from conftest import (
    alpaca_rows,
    base_recipe,
    tiny_model,
    tiny_model_config,
    write_jsonl,
    write_recipe,
)

from sft_recipe.cli import main
from sft_recipe.data.prepare import (
    TRAIN_SAMPLE_MAX_ROWS,
    fixed_sample,
    sample_train_rows,
)
from sft_recipe.data.tokenization import encode_text, tokenize_text
from sft_recipe.errors import DataError

WORDS = ["the", "cat", "sat", "on", "a", "big", "red", "mat", "dog", "ran", "to", "blue", "one", "two"]


def position_tokenizer(n: int):
    """Word-level: 'p0' -> 2, 'p1' -> 3, ...: a token's id minus 2 is its position in the corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"p{i}": i + 2 for i in range(n)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")


def position_corpus(n: int, words_per_line: int = 7) -> datasets.Dataset:
    lines = [" ".join(f"p{i}" for i in range(start, min(start + words_per_line, n))) + "\n"
             for start in range(0, n, words_per_line)]
    return datasets.Dataset.from_dict({"text": lines})


def write_corpus(path, n_lines: int = 400, seed: int = 0):
    """A .txt of short, repetitive sentences: learnable in a few dozen steps by a tiny model."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + ".\n" for _ in range(n_lines)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


# --- blocks and the split ------------------------------------------------------------------

@pytest.mark.parametrize("n,max_length,eval_fraction", [(1000, 16, 0.1), (997, 10, 0.25), (64, 8, 0.5)])
def test_split_is_by_position_into_full_blocks_without_overlap(n, max_length, eval_fraction):
    train, eval_, stats = tokenize_text(position_corpus(n), position_tokenizer(n), max_length, eval_fraction,
                                        add_eos=False)
    split = int(n * (1 - eval_fraction))
    train_pos = np.array(train["input_ids"]) - 2
    eval_pos = np.array(eval_["input_ids"]) - 2
    # every block is max_length long, labels == input_ids (the model shifts), positions consecutive
    for part in (train, eval_):
        assert all(len(row) == max_length for row in part["input_ids"])
        assert part["labels"] == part["input_ids"]
    assert (np.diff(train_pos, axis=1) == 1).all() and (np.diff(eval_pos, axis=1) == 1).all()
    # train is the head of the stream, eval the tail starting exactly at the split; the partial
    # block at the end of each split is dropped and counted
    assert train_pos.ravel().tolist() == list(range(len(train) * max_length))
    assert eval_pos.ravel().tolist() == list(range(split, split + len(eval_) * max_length))
    assert stats["train"].dropped_tokens == split % max_length
    assert stats["eval"].dropped_tokens == (n - split) % max_length
    assert stats["train"].tokens == stats["train"].trainable_tokens == len(train) * max_length


def test_documents_end_with_eos_but_a_running_text_does_not():
    tokenizer = position_tokenizer(8)
    docs = datasets.Dataset.from_dict({"text": ["p0 p1", "p2", "p3 p4 p5"]})
    assert sum(encode_text(docs, tokenizer, add_eos=True)["ids"], []) == [2, 3, 1, 4, 1, 5, 6, 7, 1]
    assert sum(encode_text(docs, tokenizer, add_eos=False)["ids"], []) == [2, 3, 4, 5, 6, 7]


def test_a_split_shorter_than_one_block_is_a_data_error():
    with pytest.raises(DataError, match="the eval split has 5 tokens, fewer than one block of max_length=8"):
        tokenize_text(position_corpus(50), position_tokenizer(50), 8, 0.1, add_eos=False)


@pytest.mark.slow  # one subprocess
def test_txt_tokenization_is_cached_with_a_stable_fingerprint(tmp_path, bpe_tokenizer_dir):
    """A second run of the same recipe (a fresh tokenizer, even a fresh process) reuses the map cache."""
    from sft_recipe.data.load import load_source
    from sft_recipe.model.load import load_tokenizer
    from sft_recipe.recipe.files import build_config

    corpus = write_corpus(tmp_path / "corpus.txt")
    config = build_config(dict(dataset=str(corpus), dataset_format="text", from_scratch=True,
                               model_config={"model_type": "gpt2"}, tokenizer_name=str(bpe_tokenizer_dir)), "test")

    def encode():
        return encode_text(load_source(str(corpus), config), load_tokenizer(str(bpe_tokenizer_dir)), add_eos=False)

    first, second = encode(), encode()
    assert first.cache_files and first.cache_files == second.cache_files
    assert first._fingerprint == second._fingerprint
    # a new process with the same environment (this session's caches) computes the same fingerprint
    script = (
        "from sft_recipe.data.load import load_source; from sft_recipe.model.load import load_tokenizer\n"
        "from sft_recipe.recipe.files import build_config; from sft_recipe.data.tokenization import encode_text\n"
        f"config = build_config({config.to_dict()!r}, 'test')\n"
        f"print(encode_text(load_source({str(corpus)!r}, config), load_tokenizer({str(bpe_tokenizer_dir)!r}), "
        "add_eos=False)._fingerprint)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == first._fingerprint


# --- evaluation: validation loss, perplexity and the fixed train sample --------------------

def test_fixed_train_sample_is_seeded_sorted_and_capped():
    rows = datasets.Dataset.from_dict({"i": list(range(3000))})
    a, b = sample_train_rows(rows, 50, seed=1), sample_train_rows(rows, 50, seed=1)
    assert a["i"] == b["i"] and len(a) == 50 and a["i"] == sorted(set(a["i"]))
    assert sample_train_rows(rows, 50, seed=2)["i"] != a["i"]
    assert len(sample_train_rows(rows, 5000, seed=1)) == TRAIN_SAMPLE_MAX_ROWS
    assert fixed_sample(rows.select(range(10)), 20, seed=0)["i"] == list(range(10))


def test_eval_scores_validation_and_train_sample_with_the_models_own_loss(tmp_path):
    """eval_loss is the validation loss (best-model metric); train_sample_* the same computation on
    the train sample; both equal the model's own mean next-token loss."""
    from sft_recipe.data.collate import PaddingCollator
    from sft_recipe.recipe.files import build_config
    from sft_recipe.training.trainer import SFTTrainer
    from sft_recipe.training.arguments import to_training_arguments

    rng = np.random.default_rng(0)
    valid = rng.integers(3, 40, size=(8, 64)).tolist()  # few distinct ids: some argmax hits
    train = rng.integers(3, 40, size=(4, 64)).tolist()
    model = tiny_model("gpt2")
    config = build_config(dict(dataset="x.txt", dataset_format="text", from_scratch=True,
                               model_config={"model_type": "gpt2"}, tokenizer_name="t",
                               output_dir=str(tmp_path), eval_batch_size=4), "test")
    trainer = SFTTrainer(
        model=model, args=to_training_arguments(config), data_collator=PaddingCollator(0),
        eval_dataset=datasets.Dataset.from_dict({"input_ids": valid, "labels": valid}),
        train_sample=datasets.Dataset.from_dict({"input_ids": train, "labels": train}),
    )
    metrics = trainer.evaluate()

    def own_loss_and_accuracy(rows):
        ids = torch.tensor(rows)
        with torch.no_grad():
            out = model(input_ids=ids, labels=ids)
        return out.loss.item(), (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).float().mean().item()

    valid_loss, valid_accuracy = own_loss_and_accuracy(valid)
    train_loss, train_accuracy = own_loss_and_accuracy(train)
    assert metrics["eval_loss"] == pytest.approx(valid_loss, abs=1e-4)
    assert metrics["train_sample_loss"] == pytest.approx(train_loss, abs=1e-4)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    assert valid_accuracy > 0 and metrics["eval_token_accuracy"] == pytest.approx(valid_accuracy)
    assert metrics["train_sample_token_accuracy"] == pytest.approx(train_accuracy)


def test_untrained_model_starts_near_uniform_loss(bpe_tokenizer):
    """A from-scratch model's first eval loss is ~ln(vocab): anything far off means a broken init
    or a label shift bug."""
    from sft_recipe.model.load import load_model
    from sft_recipe.recipe.files import build_config

    config = build_config(dict(dataset="x.txt", dataset_format="text", from_scratch=True, tokenizer_name="t",
                               model_config={**tiny_model_config("gpt2"), "vocab_size": len(bpe_tokenizer)}),
                          "test")
    model = load_model(config, bpe_tokenizer).eval()
    ids = torch.tensor(bpe_tokenizer(["the cat sat on the big red mat. " * 8] * 4)["input_ids"])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(loss - math.log(len(bpe_tokenizer))) < 0.5


def test_text_recipes_sample_randomly_instead_of_grouping_equal_length_blocks():
    from sft_recipe.recipe.files import build_config
    from sft_recipe.training.arguments import to_training_arguments

    common = dict(dataset="x", from_scratch=True, model_config={"model_type": "gpt2"}, tokenizer_name="t",
                  group_by_length=True)
    text = build_config(dict(common, dataset_format="text"), "test")
    alpaca = build_config(dict(common, dataset_format="alpaca"), "test")
    assert text.resolved_eval_train_sample and not alpaca.resolved_eval_train_sample
    assert to_training_arguments(text).train_sampling_strategy == "random"
    assert to_training_arguments(alpaca).train_sampling_strategy == "group_by_length"


# --- end to end: pretrain -> best/ -> SFT -> generate --------------------------------------

@pytest.mark.slow
def test_pretrain_then_sft_then_generate(tmp_path, bpe_tokenizer_dir, capsys):
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=600)
    scratch = base_recipe(
        tmp_path, corpus, bpe_tokenizer_dir, dataset_format="text", model_config=tiny_model_config("gpt2"),
        max_length=32, batch_size=8, max_steps=30, eval_steps=10, save_steps=10, eval_on_start=True,
        output_dir=str(tmp_path / "scratch"),
    )
    scratch["model_config"].pop("vocab_size")
    assert main(["train", str(write_recipe(tmp_path / "scratch.yaml", scratch))]) == 0
    printed = capsys.readouterr().out

    # the table: one line per eval (steps 0, 10, 20, 30)
    rows = [line for line in printed.splitlines() if line.startswith("Step: ")]
    assert [r.split(",")[0] for r in rows] == ["Step: 0", "Step: 10", "Step: 20", "Step: 30"]
    assert all("Training Loss: " in r and "Validation Loss: " in r for r in rows)
    state = json.loads((tmp_path / "scratch" / "trainer_state.json").read_text())
    # the best model is evaluated again only when it is not the last step (else that row is its evaluation)
    best_rows = [line for line in printed.splitlines() if line.startswith("Best model (step ")]
    assert len(best_rows) == (state["best_global_step"] != 30)
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evals[:4]] == [0, 10, 20, 30]
    vocab = 400
    assert abs(evals[0]["eval_loss"] - math.log(vocab)) < 0.5
    assert abs(evals[0]["train_sample_loss"] - math.log(vocab)) < 0.5
    assert evals[3]["eval_loss"] < evals[0]["eval_loss"] - 1.0
    # the best checkpoint is chosen on the validation loss, not on the train sample
    assert state["best_metric"] == pytest.approx(min(e["eval_loss"] for e in evals[:4]))

    best = tmp_path / "scratch" / "best"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sft_recipe.yaml"):
        assert (best / name).is_file(), name
    assert main(["generate", str(best), "the cat", "--raw", "--temperature", "0.8", "--top_p", "0.9",
                 "--max_new_tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("the cat")

    # stage 2: the pretrained checkpoint (and its tokenizer) as the base of an SFT recipe
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", alpaca_rows(48))
    sft = base_recipe(tmp_path, alpaca, bpe_tokenizer_dir, output_dir=str(tmp_path / "sft"), max_steps=4,
                      eval_steps=2, save_steps=2)
    for key in ("from_scratch", "model_config", "tokenizer_name"):
        sft.pop(key)
    sft["model_name"] = str(best)
    assert main(["train", str(write_recipe(tmp_path / "sft.yaml", sft))]) == 0
    sft_best = tmp_path / "sft" / "best"
    assert (sft_best / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["generate", str(sft_best), "Reverse the words.", "--input", "red cat",
                 "--max_new_tokens", "8"]) == 0
    assert main(["generate", str(sft_best), "the", "--raw", "--temperature", "0.8", "--top_p", "0.9",
                 "--max_new_tokens", "4"]) == 0
