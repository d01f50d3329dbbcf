"""Byte-level BPE training (`sft_recipe.data.tokenizer_train`) and `sft-recipe tokenizer train`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.cli import main
from sft_recipe.errors import UserError
from sft_recipe.data.tokenizer_train import EOS, MIN_VOCAB_SIZE, PAD, iter_corpus, train_bpe

CORPUS = "the cat sat on the mat.\nthe dog ran to the big red mat!\n\n  Ünïcödé ok 😀\n" * 50


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_bpe([CORPUS], vocab_size=300, output_dir=out)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_unicode_text_round_trips(trained, text):
    assert trained.decode(trained(text, add_special_tokens=False)["input_ids"]) == text


def test_saved_tokenizer_has_distinct_eos_and_pad_and_learned_merges(trained):
    assert len(trained) == 300
    assert trained.eos_token == EOS and trained.pad_token == PAD
    assert trained.eos_token_id != trained.pad_token_id
    # merges were learned: a frequent word is one token, not one per byte
    assert len(trained("the", add_special_tokens=False)["input_ids"]) == 1
    # no BOS/EOS is added silently: the text path adds EOS itself where documents end
    assert trained("the cat")["input_ids"] == trained("the cat", add_special_tokens=False)["input_ids"]


def test_vocab_size_below_bytes_plus_specials_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=str(MIN_VOCAB_SIZE)):
        train_bpe([CORPUS], vocab_size=MIN_VOCAB_SIZE - 1, output_dir=tmp_path)


def test_iter_corpus_reads_a_file_or_every_txt_in_a_directory_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first ", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text", encoding="utf-8")
    assert "".join(iter_corpus(tmp_path)) == "first second"
    assert list(iter_corpus(tmp_path / "b.txt", chunk_chars=4)) == ["seco", "nd"]
    with pytest.raises(UserError, match="corpus not found"):
        list(iter_corpus(tmp_path / "missing.txt"))


def test_cli_trains_a_tokenizer_that_autotokenizer_loads(tmp_path, capsys):
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(corpus), "--vocab_size", "280", "--output", str(out),
                 "--min_frequency", "3"]) == 0
    assert "280 tokens" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) == 280
    assert tokenizer.decode(tokenizer("the big red mat")["input_ids"]) == "the big red mat"


def test_cli_reports_a_missing_corpus_as_a_user_error(tmp_path, capsys):
    code = main(["tokenizer", "train", str(tmp_path / "nope.txt"), "--vocab_size", "300", "--output",
                 str(tmp_path / "tok")])
    assert code == 2
    assert "nope.txt: corpus not found" in capsys.readouterr().err
