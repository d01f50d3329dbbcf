"""Masking rules for prompt/completion rows: golden ids checkable by hand, then properties.

Toy vocabulary (tests/conftest.py): <pad>=0 </s>=1 <s>=2 Q:=3 A:=4 the=5 cat=6 sat=7 on=8 mat=9
a=10 dog=11 ran=12 to=13 big=14 red=15 blue=16 yes=17 no=18 one=19 two=20 three=21 four=22.
"""

from __future__ import annotations

import datasets
from conftest import TOY_WORDS, make_toy_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.data.collate import PaddingCollator
from sft_recipe.data.mask import IGNORE_INDEX, build_example
from sft_recipe.data.encode import encode_rows
from sft_recipe.recipe.config import SFTConfig

M = IGNORE_INDEX


def tokenize(rows: list[tuple[str, str]], tokenizer, max_length: int = 64):
    ds = datasets.Dataset.from_dict({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})
    return encode_rows(ds, tokenizer, SFTConfig(dataset="x", model_name="x", max_length=max_length, callbacks=[]))[0]


# --- golden rows -----------------------------------------------------------------------------

def test_golden_prompt_masked_completion_and_eos_trained():
    out = tokenize([("Q: the cat A:", "sat on the mat")], make_toy_tokenizer())
    assert out[0]["input_ids"] == [3, 5, 6, 4, 7, 8, 5, 9, 1]
    assert out[0]["labels"] == [M, M, M, M, 7, 8, 5, 9, 1]
    assert out[0]["length"] == 9 and out[0]["truncated"] is False and out[0]["trainable"] == 5


def test_golden_eos_trained_when_pad_is_eos():
    tokenizer = make_toy_tokenizer(pad_is_eos=True)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    rows = tokenize([("Q: a dog A:", "ran"), ("Q: the big red dog A:", "yes")], tokenizer)
    assert rows[0]["labels"] == [M, M, M, M, 12, 1]
    batch = PaddingCollator(pad_token_id=1)([rows[0], rows[1]])
    # Row 0 is padded with id 1 (== EOS), but its own EOS label survives; the padding does not.
    assert batch["input_ids"].tolist() == [[3, 10, 11, 4, 12, 1, 1, 1], [3, 5, 14, 15, 11, 4, 17, 1]]
    assert batch["labels"].tolist() == [[M, M, M, M, 12, 1, M, M], [M, M, M, M, M, M, 17, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8]


def test_golden_bos_only_at_the_start():
    out = tokenize([("Q: the cat A:", "yes")], make_toy_tokenizer(add_bos=True))
    assert out[0]["input_ids"] == [2, 3, 5, 6, 4, 17, 1]
    assert out[0]["labels"] == [M, M, M, M, M, 17, 1]


def test_golden_truncation_cuts_the_completion_end():
    tokenizer = make_toy_tokenizer()
    out = tokenize([("Q: the cat A:", "sat on the mat")], tokenizer, max_length=6)
    assert out[0]["input_ids"] == [3, 5, 6, 4, 7, 8]
    assert out[0]["labels"] == [M, M, M, M, 7, 8]
    assert out[0]["truncated"] is True


def test_golden_prompt_filling_max_length_is_dropped_not_fully_masked():
    tokenizer = make_toy_tokenizer()
    rows = [("Q: the cat A:", "yes"), ("Q: a A:", "no")]
    out = tokenize(rows, tokenizer, max_length=4)  # the first prompt alone is 4 tokens
    assert len(out) == 1
    assert out[0]["input_ids"] == [3, 10, 4, 18] and out[0]["labels"] == [M, M, M, 18]


def test_build_example_edges():
    assert build_example([3, 4], [7, 1], max_length=2) is None  # no room for one trained token
    assert build_example([3, 4], [], max_length=8) is None
    ex = build_example([3, 4], [7, 1], max_length=3)
    assert ex is not None and ex.input_ids == [3, 4, 7] and ex.labels == [M, M, 7] and ex.truncated


# --- properties ------------------------------------------------------------------------------

words = st.lists(st.sampled_from(TOY_WORDS[2:]), min_size=1, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(words, words), min_size=1, max_size=6), max_length=st.integers(2, 20),
       pad_is_eos=st.booleans(), add_bos=st.booleans())
def test_masking_invariants(rows, max_length, pad_is_eos, add_bos):
    tokenizer = make_toy_tokenizer(pad_is_eos=pad_is_eos, add_bos=add_bos)
    out = tokenize(rows, tokenizer, max_length)
    kept = iter(out)
    for prompt, completion in rows:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [1]
        if len(prompt_ids) >= max_length:
            continue  # dropped, never fully masked
        row = next(kept)
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) <= max_length
        assert all(label in (M, tok) for label, tok in zip(labels, ids))  # no shift, no foreign ids
        assert ids[: len(prompt_ids)] == prompt_ids  # no boundary drift: prompt as at generation
        assert labels[: len(prompt_ids)] == [M] * len(prompt_ids)
        trained = [label for label in labels if label != M]
        assert trained and trained == completion_ids[: len(trained)]
        if not row["truncated"]:
            assert trained == completion_ids  # completion + EOS, EOS trained even if pad == eos
            assert tokenizer.decode(trained) == completion + " </s>"
    assert next(kept, None) is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40)),
                min_size=1, max_size=4))
def test_byte_level_completion_round_trips(bpe_tokenizer, rows):
    """On a real byte-level BPE the trainable tokens decode exactly to the completion + EOS; a
    whitespace-only completion (`encode.has_response`) is dropped, never trained as EOS alone."""
    out = tokenize(rows, bpe_tokenizer, max_length=512)
    kept = [(prompt, completion) for prompt, completion in rows if completion.strip()]
    assert len(out) == len(kept)
    for (prompt, completion), row in zip(kept, out):
        n_prompt = len(bpe_tokenizer(prompt)["input_ids"])
        trained = [label for label in row["labels"] if label != M]
        assert row["labels"][:n_prompt] == [M] * n_prompt
        assert trained[-1] == bpe_tokenizer.eos_token_id
        assert bpe_tokenizer.decode(trained[:-1]) == completion
