"""Collators: padded and packed batches carry the same rows, and packed rows stay independent.

Packing is only correct if every row sees exactly what it would see alone. transformers detects
packed rows from `position_ids` that restart at 0 *when no KV cache is passed*; with
`use_cache=True` the model builds a cache, skips that detection and lets rows attend to each
other. These tests pin both facts, and that our training path never turns the cache on.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from sft_recipe.recipe.config import SFTConfig
from sft_recipe.data.collate import PackingCollator, PaddingCollator, make_collator
from sft_recipe.data.mask import IGNORE_INDEX
from sft_recipe.training.trainer import SFTTrainer
from sft_recipe.training.arguments import to_training_arguments

VOCAB = 400


def make_rows(lengths: list[int], prompt: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        p = min(prompt, n - 1)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * p + ids[p:]})
    return rows


ROWS = make_rows([7, 3, 11, 5])


def model_with(model_type: str, attention: str):
    model = tiny_model(model_type, VOCAB)  # config.use_cache is True, as in most checkpoints
    model.set_attn_implementation(attention)
    return model.eval()


def row_logits_alone(model, rows) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(input_ids=torch.tensor([r["input_ids"]]), use_cache=False).logits[0] for r in rows]


def split_packed(logits: torch.Tensor, rows) -> list[torch.Tensor]:
    return list(torch.split(logits[0], [len(r["input_ids"]) for r in rows]))


def row_loss(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), ignore_index=IGNORE_INDEX,
                                             reduction="sum")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_equal_rows_run_alone(model_type, attention):
    model = model_with(model_type, attention)
    batch = PackingCollator()(ROWS)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**batch, use_cache=False)
    alone = row_logits_alone(model, ROWS)
    for got, expected in zip(split_packed(packed.logits, ROWS), alone):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The batch loss is the token-weighted mean of the rows' losses: no cross-row targets.
    total = sum(row_loss(logits, r["labels"]) for logits, r in zip(alone, ROWS))
    count = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in ROWS)
    torch.testing.assert_close(packed.loss, total / count, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("use_cache", [True, None], ids=["use_cache=True", "config-default"])
def test_with_a_kv_cache_packed_rows_contaminate_each_other(model_type, use_cache):
    """Why training must run with use_cache=False: transformers v5 only detects packed rows when
    no cache is passed, so with one the mask is a plain causal mask over the whole pack. Left
    unset, `use_cache` falls back to `config.use_cache`, which checkpoints ship as True."""
    model = model_with(model_type, "sdpa")
    batch = PackingCollator()(ROWS)
    with torch.no_grad():
        cached = model(**batch, **({} if use_cache is None else {"use_cache": use_cache})).logits
    alone = row_logits_alone(model, ROWS)
    first, *later = zip(split_packed(cached, ROWS), alone)
    torch.testing.assert_close(*first, atol=1e-5, rtol=1e-5)  # the first row has nothing before it
    assert all((got - expected).abs().max() > 1e-3 for got, expected in later)


@pytest.mark.parametrize("loss_chunk_size", [0, 16])
def test_the_training_path_runs_packed_rows_without_a_cache(loss_chunk_size, tmp_path):
    """Recipe -> TrainingArguments(use_cache=False) -> the Trainer turns the model's cache off, and
    the chunked loss passes use_cache=False itself: the packed loss is the per-row loss."""
    model = model_with("llama", "sdpa").train()
    model.config.use_cache = True  # as a pretrained checkpoint usually ships
    config = SFTConfig(dataset="unused.jsonl", model_name="unused", output_dir=str(tmp_path / "out"),
                       packing=True, loss_chunk_size=loss_chunk_size, callbacks=[])
    args = to_training_arguments(config, report_to="none", eval_strategy="no", save_strategy="no",
                                 load_best_model_at_end=False)
    assert args.use_cache is False
    trainer = SFTTrainer(model=model, args=args, data_collator=PackingCollator(), loss_chunk_size=loss_chunk_size)
    assert model.config.use_cache is False
    seen: list[dict] = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        with torch.no_grad():
            loss = trainer.compute_loss(model, PackingCollator()(ROWS))
    finally:
        handle.remove()
    if loss_chunk_size:
        assert seen[0]["use_cache"] is False
    alone = row_logits_alone(model, ROWS)
    total = sum(row_loss(logits, r["labels"]) for logits, r in zip(alone, ROWS))
    count = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in ROWS)
    torch.testing.assert_close(loss, total / count, atol=1e-5, rtol=1e-5)


row_lists = st.lists(
    st.lists(st.tuples(st.integers(3, 50), st.booleans()), min_size=1, max_size=9), min_size=1, max_size=5
)


@settings(max_examples=50, deadline=None)
@given(row_lists)
def test_collators_keep_every_label_aligned_with_its_token(spec):
    """Never shifted: every label is -100 or the input id at the same position, and every
    trainable label of a row survives (except a packed row's first, which must not see the
    previous row)."""
    rows = [{"input_ids": [t for t, _ in r], "labels": [t if keep else IGNORE_INDEX for t, keep in r]}
            for r in spec]
    padded = PaddingCollator(pad_token_id=0)(rows)
    packed = PackingCollator()(rows)
    for batch in (padded, packed):
        ids, labels = batch["input_ids"], batch["labels"]
        assert ((labels == IGNORE_INDEX) | (labels == ids)).all()
    assert int((padded["labels"] != IGNORE_INDEX).sum()) == sum(
        sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows)
    starts = torch.tensor([0] + [len(r["input_ids"]) for r in rows]).cumsum(0)[:-1]
    assert (packed["labels"][0, starts] == IGNORE_INDEX).all()
    assert packed["position_ids"][0].tolist() == [i for r in rows for i in range(len(r["input_ids"]))]
    assert packed["input_ids"][0].tolist() == [t for r in rows for t in r["input_ids"]]


def test_flash_attention_collator_returns_varlen_kwargs():
    """For flash-attention's varlen kernel the collator also returns cumulative sequence lengths."""
    batch = make_collator(packing=True, pad_token_id=0, flash_attention=True)(ROWS)
    lengths = [len(r["input_ids"]) for r in ROWS]
    expected = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    assert batch["cu_seq_lens_q"].tolist() == expected.tolist()
    assert batch["cu_seq_lens_k"].tolist() == expected.tolist()
    assert batch["max_length_q"] == max(lengths)
